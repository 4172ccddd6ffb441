-- Which incarnation of the topic the stored offsets belong to: Kafka's topic id (Metadata v10+).
-- A topic deleted and re-created (or a broker that lost its data) gets a new id, and offsets
-- kept for the old one must not be applied to the new log. NULL: written before this column
-- existed, or by a broker that reports no ids.
ALTER TABLE public.streamlab_offsets ADD COLUMN IF NOT EXISTS topic_id text;

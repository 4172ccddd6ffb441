-- streamlab schema for PostgreSQL. Column names follow the seeds, so their SQL runs unchanged:
--   SELECT COUNT(*) AS rows, MAX(ts) AS latest_ts FROM public.sales_events;

CREATE TABLE IF NOT EXISTS public.sales_events (
    id              uuid           PRIMARY KEY,
    ts              timestamptz    NOT NULL,
    store_id        text           NOT NULL,
    amount_usd      numeric(12,2)  NOT NULL,
    channel         text           NOT NULL,
    -- provenance: where the row came from and when it landed
    kafka_partition integer        NOT NULL,
    kafka_offset    bigint         NOT NULL,
    ingested_at     timestamptz    NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS sales_events_ts_idx ON public.sales_events (ts);

CREATE TABLE IF NOT EXISTS public.sensor_logs (
    id              uuid             PRIMARY KEY,
    sensor_id       text             NOT NULL,
    val             double precision NOT NULL,
    unit            text             NOT NULL,
    status          text             NOT NULL,
    ts              timestamptz      NOT NULL,
    kafka_partition integer          NOT NULL,
    kafka_offset    bigint           NOT NULL,
    ingested_at     timestamptz      NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS sensor_logs_ts_idx ON public.sensor_logs (ts);

-- The next offset to read, per consumer group and partition. Written in the same transaction
-- as the rows, so rows and position can never disagree.
CREATE TABLE IF NOT EXISTS public.streamlab_offsets (
    consumer_group  text        NOT NULL,
    topic           text        NOT NULL,
    kafka_partition integer     NOT NULL,
    next_offset     bigint      NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, kafka_partition)
);

-- Records that could not be stored, kept byte for byte with the reason.
CREATE TABLE IF NOT EXISTS public.dead_letters (
    id              bigserial   PRIMARY KEY,
    topic           text        NOT NULL,
    kafka_partition integer     NOT NULL,
    kafka_offset    bigint      NOT NULL,
    record_key      bytea,
    payload         bytea,
    error           text        NOT NULL,
    failed_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (topic, kafka_partition, kafka_offset)
);

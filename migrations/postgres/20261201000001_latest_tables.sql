-- A topic as a table (`consume --upsert`): one row per record key, the newest value by log order.
-- A record with no value (a tombstone) deletes its key's row. kafka_partition/kafka_offset are the
-- record the row holds: a record only replaces (or deletes) a row from an earlier offset of its
-- partition, so replaying older records leaves the table as it is.
CREATE TABLE IF NOT EXISTS public.sales_latest (
    key             text           PRIMARY KEY,
    id              uuid           NOT NULL,
    ts              timestamptz    NOT NULL,
    store_id        text           NOT NULL,
    amount_usd      numeric(12,2)  NOT NULL,
    channel         text           NOT NULL,
    kafka_partition integer        NOT NULL,
    kafka_offset    bigint         NOT NULL,
    ingested_at     timestamptz    NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.sensor_latest (
    key             text             PRIMARY KEY,
    id              uuid             NOT NULL,
    sensor_id       text             NOT NULL,
    val             double precision NOT NULL,
    unit            text             NOT NULL,
    status          text             NOT NULL,
    ts              timestamptz      NOT NULL,
    kafka_partition integer          NOT NULL,
    kafka_offset    bigint           NOT NULL,
    ingested_at     timestamptz      NOT NULL DEFAULT now()
);

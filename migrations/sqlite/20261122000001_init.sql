-- streamlab schema for SQLite. Timestamps are RFC 3339 UTC text with milliseconds
-- ('2026-11-22T14:36:36.123Z'), which sorts correctly as text; ids are UUID text.

CREATE TABLE IF NOT EXISTS sales_events (
    id              TEXT    PRIMARY KEY NOT NULL,
    ts              TEXT    NOT NULL,
    store_id        TEXT    NOT NULL,
    amount_usd      REAL    NOT NULL,
    channel         TEXT    NOT NULL,
    kafka_partition INTEGER NOT NULL,
    kafka_offset    INTEGER NOT NULL,
    ingested_at     TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX IF NOT EXISTS sales_events_ts_idx ON sales_events (ts);

CREATE TABLE IF NOT EXISTS sensor_logs (
    id              TEXT    PRIMARY KEY NOT NULL,
    sensor_id       TEXT    NOT NULL,
    val             REAL    NOT NULL,
    unit            TEXT    NOT NULL,
    status          TEXT    NOT NULL,
    ts              TEXT    NOT NULL,
    kafka_partition INTEGER NOT NULL,
    kafka_offset    INTEGER NOT NULL,
    ingested_at     TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX IF NOT EXISTS sensor_logs_ts_idx ON sensor_logs (ts);

CREATE TABLE IF NOT EXISTS streamlab_offsets (
    consumer_group  TEXT    NOT NULL,
    topic           TEXT    NOT NULL,
    kafka_partition INTEGER NOT NULL,
    next_offset     INTEGER NOT NULL,
    updated_at      TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (consumer_group, topic, kafka_partition)
);

CREATE TABLE IF NOT EXISTS dead_letters (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    topic           TEXT    NOT NULL,
    kafka_partition INTEGER NOT NULL,
    kafka_offset    INTEGER NOT NULL,
    record_key      BLOB,
    payload         BLOB,
    error           TEXT    NOT NULL,
    failed_at       TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (topic, kafka_partition, kafka_offset)
);

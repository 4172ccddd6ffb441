-- A topic as a table (`consume --upsert`): one row per record key, the newest value by log order.
-- A record with no value (a tombstone) deletes its key's row. kafka_partition/kafka_offset are the
-- record the row holds: a record only replaces (or deletes) a row from an earlier offset of its
-- partition, so replaying older records leaves the table as it is.
CREATE TABLE IF NOT EXISTS sales_latest (
    key             TEXT    PRIMARY KEY NOT NULL,
    id              TEXT    NOT NULL,
    ts              TEXT    NOT NULL,
    store_id        TEXT    NOT NULL,
    amount_usd      REAL    NOT NULL,
    channel         TEXT    NOT NULL,
    kafka_partition INTEGER NOT NULL,
    kafka_offset    INTEGER NOT NULL,
    ingested_at     TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE IF NOT EXISTS sensor_latest (
    key             TEXT    PRIMARY KEY NOT NULL,
    id              TEXT    NOT NULL,
    sensor_id       TEXT    NOT NULL,
    val             REAL    NOT NULL,
    unit            TEXT    NOT NULL,
    status          TEXT    NOT NULL,
    ts              TEXT    NOT NULL,
    kafka_partition INTEGER NOT NULL,
    kafka_offset    INTEGER NOT NULL,
    ingested_at     TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

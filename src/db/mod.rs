//! The database layer: where consumed events land, and what `check`, `watch` and
//! `topic describe` read back. Nothing here knows the command line.
//!
//! - [`Target`] (`target.rs`): which database, settled once from a kind and/or a URL before
//!   anything connects; [`redact`] shows its URL without the password.
//! - [`Database`] (`database.rs`): the writer a target names, chosen once — an enum over the two
//!   [`Writer`]s (tansu's `StorageContainer` shape), so a consumer is one type whatever the
//!   database.
//! - [`write`] / [`write_isolating`] (`write.rs`): a batch — rows, dead letters and fenced
//!   offsets — in one transaction, so a crash at any instant neither loses nor duplicates an
//!   event. [`Writer`] runs the steps ([`Sink`], [`SinkTx`]) the same way for both databases;
//!   each database's file (`pg.rs`, `sqlite.rs`: a [`Dialect`]) holds only what differs —
//!   connecting, beginning, and how rows go in (UNNEST arrays, multi-row VALUES).
//! - `offsets.rs`: every statement on the bookkeeping tables, `streamlab_offsets` and
//!   `streamlab_members`, for the writer and the reader alike.
//! - [`Reader`] (`read.rs`): the read side `check` and `watch` share; `members.rs`: a group's
//!   members as the coordinator describes them, completed by what the database recorded.
//! - [`Deadline`] (`deadline.rs`) gives every statement of a sink a deadline; `error.rs` says
//!   what a database error means: retry, set the rows aside, or stop.
//! - `room.rs`: the connection budget — how many writers a PostgreSQL server has connections
//!   to spare for.
//! - [`measure`]: what `bench` asks of a database besides writing to it.

mod database;
mod deadline;
pub mod dlq;
mod error;
pub mod measure;
pub mod members;
#[cfg(test)]
pub mod memory;
mod offsets;
pub mod pg;
mod pg_copy;
mod read;
mod room;
pub mod sqlite;
mod target;
mod upsert;
mod write;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use crate::events::{Event, EventKind, Sale, SensorReading};

pub use database::{Database, DatabaseTx};
pub use deadline::Deadline;
pub(crate) use error::is_transient;
pub use error::{classify, postgres_verdict, sqlite_verdict, SinkError, Verdict};
pub use pg::{bulk_upsert_sales, UpsertWay};
pub use pg_copy::{bulk_load_sales, copy_streams, create_upsert_stage, Upserted};
pub use read::{Offending, Reader, Rows, Share, Throughput};
pub use target::{redact, Kind, Target, TargetError};
pub use upsert::{latest_per_key, table_key, Change, Folded, Mode, Tombstone, MAX_KEY_BYTES};
pub use write::{write, write_isolating, Dialect, Writer, WriterTx};

/// The columns of `sales_events` a consumer fills, in the order both dialects insert them (and
/// `bench` copies them in).
pub const SALES_COLUMNS: &str =
    "id, ts, store_id, amount_usd, channel, kafka_partition, kafka_offset";

/// The columns of `sensor_logs` a consumer fills, in the order both dialects insert them.
pub const SENSOR_COLUMNS: &str =
    "id, sensor_id, val, unit, status, ts, kafka_partition, kafka_offset";

/// The columns of `sales_latest` (`consume --upsert`) a consumer fills: the record key, then
/// [`SALES_COLUMNS`].
pub const SALES_LATEST_COLUMNS: &str =
    "key, id, ts, store_id, amount_usd, channel, kafka_partition, kafka_offset";

/// The columns of `sensor_latest` a consumer fills: the record key, then [`SENSOR_COLUMNS`].
pub const SENSOR_LATEST_COLUMNS: &str =
    "key, id, sensor_id, val, unit, status, ts, kafka_partition, kafka_offset";

/// The columns of `dead_letters` a consumer fills, in the order both dialects insert them.
pub const DEAD_LETTER_COLUMNS: &str =
    "topic, kafka_partition, kafka_offset, record_key, payload, error";

/// The columns a consumer fills in `kind`'s table, or (`upsert`) its `_latest` table.
pub(crate) fn columns(kind: EventKind, upsert: bool) -> &'static str {
    match (kind, upsert) {
        (EventKind::Sales, false) => SALES_COLUMNS,
        (EventKind::Sensor, false) => SENSOR_COLUMNS,
        (EventKind::Sales, true) => SALES_LATEST_COLUMNS,
        (EventKind::Sensor, true) => SENSOR_LATEST_COLUMNS,
    }
}

/// An event decoded from `partition`/`offset`, with the record's key and value as they came:
/// if the database refuses the event, they are what its dead letter keeps.
#[derive(Debug, Clone)]
pub struct Landed {
    pub event: Event,
    pub partition: i32,
    pub offset: i64,
    /// The record's key and value as fetched (shared, not copied): kept for a dead letter
    /// should the database refuse the event.
    pub key: Option<bytes::Bytes>,
    pub value: bytes::Bytes,
}

impl Landed {
    /// The record key as text (`consume --upsert` checked it with [`table_key`]).
    pub fn key_text(&self) -> Option<&str> {
        table_key(self.key.as_deref()).ok()
    }
}

/// A record that could not be stored, kept byte for byte with the reason.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub error: String,
}

/// Move a partition's stored position from `from` (None: no row yet) to `to`.
/// The write is fenced: it only succeeds if the stored value is still `from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetAdvance {
    pub partition: i32,
    pub from: Option<i64>,
    pub to: i64,
}

#[derive(Debug, Default)]
pub struct Batch {
    pub group: String,
    pub topic: String,
    /// Kafka's id of the topic these offsets belong to, stored with them (None: the broker
    /// reports no ids; the stored id is then left as it is).
    pub topic_id: Option<String>,
    /// How the events are stored: appended (the default) or upserted by record key.
    pub mode: Mode,
    /// Appended: every event decoded. Upserted: the last value of each key whose last change
    /// in the batch is a value ([`latest_per_key`]).
    pub events: Vec<Landed>,
    /// Upserted: the keys whose last change in the batch is a tombstone.
    pub deletes: Vec<Tombstone>,
    /// Upserted: changes a later change of the same key in this batch replaced.
    pub superseded: u64,
    pub dead_letters: Vec<DeadLetter>,
    pub offsets: Vec<OffsetAdvance>,
}

impl Batch {
    /// Records this batch consumes: events, tombstones and the changes they replaced, dead
    /// letters.
    pub fn records(&self) -> u64 {
        (self.events.len() + self.deletes.len() + self.dead_letters.len()) as u64 + self.superseded
    }
}

/// What a committed batch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Written {
    /// Rows inserted (upserted: inserted or updated).
    pub inserted: u64,
    /// Events whose id was already stored (replays, re-produced events). Upserted: values the
    /// table already held as new or newer (a replay).
    pub duplicates: u64,
    /// Upserted: rows the batch's tombstones deleted.
    pub deleted: u64,
    /// Rows added to `dead_letters` (the batch's own and the refused events).
    pub dead_lettered: u64,
    /// Events the database refused, stored as dead letters instead: partition, offset, reason.
    pub refused: Vec<(i32, i64, String)>,
}

/// A database a consumer writes to: PostgreSQL or SQLite. A clone writes over the same
/// connections (a pool): each transaction takes one of its own, so clones write side by side.
pub trait Sink: Send + Clone + 'static {
    /// A transaction in progress; dropped without [`SinkTx::commit`], it is rolled back.
    type Tx: SinkTx;

    /// Begin a transaction.
    fn begin(&mut self) -> impl Future<Output = Result<Self::Tx, SinkError>> + Send;

    /// Stored `partition → next offset` of `group` for `topic`.
    fn load_offsets(
        &mut self,
        group: &str,
        topic: &str,
    ) -> impl Future<Output = Result<BTreeMap<i32, i64>, SinkError>> + Send;

    /// `partition → topic id` stored with `group`'s offsets for `topic` (rows stored without
    /// an id are left out).
    fn stored_topic_ids(
        &mut self,
        group: &str,
        topic: &str,
    ) -> impl Future<Output = Result<BTreeMap<i32, String>, SinkError>> + Send;

    /// Record (`Some`) or remove (`None`, on leaving) what a group member holds, for
    /// `streamlab check`. Informational: the coordinator decides, the offsets fence writes.
    fn record_member(
        &mut self,
        member: &MemberRecord,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;
}

/// The steps of writing a batch, each one statement (or one per table) of the backend's SQL.
pub trait SinkTx: Send {
    /// Insert the events, skipping ids already stored; returns how many rows are new.
    fn insert_events(
        &mut self,
        events: &[Landed],
    ) -> impl Future<Output = Result<u64, SinkError>> + Send;

    /// Upsert the events into their kind's `_latest` table by record key (one event per key),
    /// each only over an older row; returns how many rows were inserted or updated.
    fn upsert_events(
        &mut self,
        events: &[Landed],
    ) -> impl Future<Output = Result<u64, SinkError>> + Send;

    /// Delete the tombstones' keys from `kind`'s `_latest` table, each only over an older row;
    /// returns how many rows went.
    fn delete_keys(
        &mut self,
        kind: EventKind,
        deletes: &[Tombstone],
    ) -> impl Future<Output = Result<u64, SinkError>> + Send;

    /// Insert dead letters of `topic`, skipping records already there; returns how many are new.
    fn insert_dead_letters(
        &mut self,
        topic: &str,
        letters: &[DeadLetter],
    ) -> impl Future<Output = Result<u64, SinkError>> + Send;

    /// Move each partition's stored offset of the batch if it still is the advance's `from`,
    /// recording the topic id it belongs to (when known); the first advance that did not move
    /// (the fence refused it), or None.
    fn advance<'b>(
        &mut self,
        batch: &'b Batch,
    ) -> impl Future<Output = Result<Option<&'b OffsetAdvance>, SinkError>> + Send;

    /// Set, release or roll back to the savepoint (the same SQL in both dialects).
    fn savepoint(&mut self, step: Savepoint) -> impl Future<Output = Result<(), SinkError>> + Send;

    fn commit(self) -> impl Future<Output = Result<(), SinkError>> + Send;
}

/// The one savepoint [`write_isolating`] uses, around each slice of events it tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Savepoint {
    Set,
    Release,
    RollBack,
}

impl Savepoint {
    pub fn sql(self) -> &'static str {
        match self {
            Savepoint::Set => "SAVEPOINT streamlab_slice",
            Savepoint::Release => "RELEASE SAVEPOINT streamlab_slice",
            Savepoint::RollBack => "ROLLBACK TO SAVEPOINT streamlab_slice",
        }
    }
}

/// A row of `streamlab_members`.
#[derive(Debug, Clone)]
pub struct MemberRecord {
    pub group: String,
    pub topic: String,
    pub member_id: String,
    /// `None`: the member left; its row is deleted.
    pub holding: Option<Holding>,
}

#[derive(Debug, Clone)]
pub struct Holding {
    pub generation: i32,
    pub partitions: Vec<i32>,
}

impl Holding {
    /// The `partitions` column: '0,1'.
    pub fn partitions_text(&self) -> String {
        let list: Vec<String> = self.partitions.iter().map(i32::to_string).collect();
        list.join(",")
    }
}

/// Who this process is, for the `client` column: host and process id.
pub fn client_identity() -> String {
    // Linux keeps the name in /proc; elsewhere the shell's variables carry it (HOSTNAME on
    // macOS shells, COMPUTERNAME on Windows).
    #[cfg(target_os = "linux")]
    let from_proc = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
    #[cfg(not(target_os = "linux"))]
    let from_proc: Option<String> = None;
    let host = from_proc
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string());
    format!("{host} pid {}", std::process::id())
}

/// How long to wait for a busy database or a free connection.
pub fn connect_timeout(timeout: Duration) -> Duration {
    timeout.max(Duration::from_secs(1))
}

/// Remove NUL characters, which Postgres text cannot hold (error texts may quote input).
pub(crate) fn clean_text(s: &str) -> String {
    s.replace('\0', "\u{FFFD}")
}

/// An event with the partition and offset it came from: what a row is made of.
#[derive(Debug)]
pub struct Row<'a, E> {
    pub event: &'a E,
    /// The record key as fetched.
    pub record_key: Option<&'a [u8]>,
    pub partition: i32,
    pub offset: i64,
}

impl<'a, E> Row<'a, E> {
    /// The record key as text, for an upsert (None: no key, or one that is no table key).
    /// Checked only when asked: appending rows never needs it.
    pub fn key(&self) -> Option<&'a str> {
        table_key(self.record_key).ok()
    }
}

/// Split a batch's events into the two kinds (a consumer reads one kind, but the type allows both).
pub(crate) fn split_kinds(events: &[Landed]) -> (Vec<Row<'_, Sale>>, Vec<Row<'_, SensorReading>>) {
    let sale_count = events
        .iter()
        .filter(|l| matches!(l.event, Event::Sale(_)))
        .count();
    let mut sales = Vec::with_capacity(sale_count);
    let mut sensors = Vec::with_capacity(events.len() - sale_count);
    for landed in events {
        let (partition, offset) = (landed.partition, landed.offset);
        match &landed.event {
            Event::Sale(event) => sales.push(Row {
                event,
                record_key: landed.key.as_deref(),
                partition,
                offset,
            }),
            Event::Sensor(event) => sensors.push(Row {
                event,
                record_key: landed.key.as_deref(),
                partition,
                offset,
            }),
        }
    }
    (sales, sensors)
}

//! Where consumed events land. A batch — rows, dead letters and the new offsets — is written in
//! one transaction ([`write`]), so a crash at any instant neither loses nor duplicates an event.
//!
//! One file per backend (`pg.rs`, `sqlite.rs`) holds the SQL of each step ([`Sink`],
//! [`SinkTx`]); how the steps make a batch — the offset fence, and setting aside the events the
//! database refuses ([`write_isolating`]) — is written once, here. [`Deadline`] gives every
//! statement of any sink a deadline.

pub mod dlq;
pub mod pg;
pub mod sinks;
pub mod sqlite;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::events::Event;

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
    pub events: Vec<Landed>,
    pub dead_letters: Vec<DeadLetter>,
    pub offsets: Vec<OffsetAdvance>,
}

/// What a committed batch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Written {
    pub inserted: u64,
    /// Events whose id was already stored (replays, re-produced events).
    pub duplicates: u64,
    /// Rows added to `dead_letters` (the batch's own and the refused events).
    pub dead_lettered: u64,
    /// Events the database refused, stored as dead letters instead: partition, offset, reason.
    pub refused: Vec<(i32, i64, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Someone else moved the stored offset: another consumer on the same group and sink.
    #[error(
        "the stored offset of {topic}/{partition} for group '{group}' is no longer {expected}: \
         another consumer is writing this group into the same database; stopping without writing \
         (--assign all and --partition read alone; without them, the members of a --group share \
         its partitions)"
    )]
    Fenced {
        group: String,
        topic: String,
        partition: i32,
        expected: String,
    },
    /// A statement got no answer within its deadline: the connection is frozen, or the server.
    #[error("{database} did not answer within {}", humantime::format_duration(*.after))]
    TimedOut { database: String, after: Duration },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl SinkError {
    /// Worth retrying: the connection or the server went away, a lock was busy, or no answer
    /// came in time (on a new connection the next attempt may get one).
    pub fn is_transient(&self) -> bool {
        match self {
            SinkError::Database(e) => is_transient(e),
            SinkError::TimedOut { .. } => true,
            SinkError::Fenced { .. } => false,
        }
    }

    pub fn is_fenced(&self) -> bool {
        matches!(self, SinkError::Fenced { .. })
    }

    pub fn is_timed_out(&self) -> bool {
        matches!(self, SinkError::TimedOut { .. })
    }

    /// The database's reason, when it refused the data itself (a data exception, a constraint):
    /// the rows at fault belong in the dead letters, not in an error that stops the stream.
    pub fn refusal(&self) -> Option<String> {
        let SinkError::Database(sqlx::Error::Database(db)) = self else {
            return None;
        };
        (verdict(db.as_ref()) == Verdict::Refused).then(|| match db.code() {
            Some(code)
                if db
                    .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                    .is_some() =>
            {
                format!("{} (SQLSTATE {code})", db.message())
            }
            Some(code) => format!("{} (SQLite code {code})", db.message()),
            None => db.message().to_string(),
        })
    }

    pub(crate) fn fenced(batch: &Batch, advance: &OffsetAdvance) -> Self {
        SinkError::Fenced {
            group: batch.group.clone(),
            topic: batch.topic.clone(),
            partition: advance.partition,
            expected: advance
                .from
                .map_or_else(|| "absent".to_string(), |f| f.to_string()),
        }
    }
}

/// A database a consumer writes to: PostgreSQL or SQLite.
pub trait Sink: Send {
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

    /// Insert dead letters of `topic`, skipping records already there; returns how many are new.
    fn insert_dead_letters(
        &mut self,
        topic: &str,
        letters: &[DeadLetter],
    ) -> impl Future<Output = Result<u64, SinkError>> + Send;

    /// Move a partition's stored offset if it still is `advance.from`, recording the topic id
    /// it belongs to (when known); whether it moved.
    fn advance(
        &mut self,
        batch: &Batch,
        advance: &OffsetAdvance,
    ) -> impl Future<Output = Result<bool, SinkError>> + Send;

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

/// Write the batch in one transaction — rows, dead letters, fenced offsets: all of it, or (on
/// error) none of it.
pub async fn write<S: Sink>(sink: &mut S, batch: &Batch) -> Result<Written, SinkError> {
    let mut tx = sink.begin().await?;
    let inserted = tx.insert_events(&batch.events).await?;
    finish(tx, batch, inserted, batch.events.len(), Vec::new()).await
}

/// [`write`] for a batch the database refused ([`SinkError::refusal`]): still one transaction,
/// but the events go in slice by slice, each under a savepoint. A slice the database refuses is
/// rolled back to its savepoint and split in two, until each refused event is alone; those
/// become dead letters with the database's reason, everything else is stored, and the offsets
/// move past all of them. Each slice goes in on top of the ones accepted before it, so what is
/// committed is exactly what the database accepted together.
pub async fn write_isolating<S: Sink>(sink: &mut S, batch: &Batch) -> Result<Written, SinkError> {
    let mut tx = sink.begin().await?;
    let (mut inserted, mut accepted) = (0, 0);
    let mut refused = Vec::new();
    // Slices still to try, the next on top (a stack instead of recursion in an async fn).
    let mut pending: Vec<&[Landed]> = halves(&batch.events);
    while let Some(slice) = pending.pop() {
        tx.savepoint(Savepoint::Set).await?;
        match tx.insert_events(slice).await {
            Ok(n) => {
                tx.savepoint(Savepoint::Release).await?;
                inserted += n;
                accepted += slice.len();
            }
            Err(e) => {
                let Some(reason) = e.refusal() else {
                    return Err(e);
                };
                tx.savepoint(Savepoint::RollBack).await?;
                match slice {
                    [one] => refused.push(DeadLetter {
                        partition: one.partition,
                        offset: one.offset,
                        key: one.key.as_deref().map(<[u8]>::to_vec),
                        payload: Some(one.value.to_vec()),
                        error: format!("refused by the database: {reason}"),
                    }),
                    _ => pending.extend(halves(slice)),
                }
            }
        }
    }
    finish(tx, batch, inserted, accepted, refused).await
}

/// `events` in two halves, the first half last (so it is popped first); one slice if it cannot
/// be split, none if empty.
fn halves(events: &[Landed]) -> Vec<&[Landed]> {
    match events.len() {
        0 => Vec::new(),
        1 => vec![events],
        n => {
            let (first, second) = events.split_at(n / 2);
            vec![second, first]
        }
    }
}

/// The rest of a batch's transaction once its events are in: dead letters, the fenced offsets,
/// COMMIT.
async fn finish<T: SinkTx>(
    mut tx: T,
    batch: &Batch,
    inserted: u64,
    accepted: usize,
    refused: Vec<DeadLetter>,
) -> Result<Written, SinkError> {
    let dead_lettered = tx
        .insert_dead_letters(&batch.topic, &batch.dead_letters)
        .await?
        + tx.insert_dead_letters(&batch.topic, &refused).await?;
    for advance in &batch.offsets {
        if !tx.advance(batch, advance).await? {
            // Dropping the transaction rolls it back: nothing of this batch is kept.
            return Err(SinkError::fenced(batch, advance));
        }
    }
    tx.commit().await?;
    Ok(Written {
        inserted,
        duplicates: accepted as u64 - inserted,
        dead_lettered,
        refused: refused
            .into_iter()
            .map(|d| (d.partition, d.offset, d.error))
            .collect(),
    })
}

/// A sink whose every statement has a deadline: a database that stops answering — a frozen
/// connection keeps its TCP session open for the quarter of an hour TCP takes to give up —
/// gets [`SinkError::TimedOut`] instead of a consumer hung for good.
///
/// The statement's future is dropped on timeout. sqlx then rolls back a transaction left open
/// and pings the connection before the pool hands it out again; a frozen connection never
/// answers that ping, so it is never reused (it keeps its pool slot until the process ends).
pub struct Deadline<S> {
    inner: S,
    limit: Duration,
    /// "PostgreSQL at postgres://…", for the error (URL without its password).
    database: Arc<str>,
}

impl<S> Deadline<S> {
    pub fn new(inner: S, limit: Duration, database: impl Into<String>) -> Self {
        Self {
            inner,
            limit,
            database: database.into().into(),
        }
    }

    fn wrap<T>(&self, inner: T) -> Deadline<T> {
        Deadline {
            inner,
            limit: self.limit,
            database: Arc::clone(&self.database),
        }
    }
}

/// `operation`, or [`SinkError::TimedOut`] once `limit` has passed without its answer. The
/// pool's own wait for a connection ends after the same time (its acquire timeout): a pool with
/// no connection to give within the deadline is a database that did not answer either.
async fn within<T>(
    limit: Duration,
    database: &str,
    operation: impl Future<Output = Result<T, SinkError>>,
) -> Result<T, SinkError> {
    let timed_out = || SinkError::TimedOut {
        database: database.to_string(),
        after: limit,
    };
    match tokio::time::timeout(limit, operation).await {
        Ok(Err(SinkError::Database(sqlx::Error::PoolTimedOut))) | Err(_) => Err(timed_out()),
        Ok(result) => result,
    }
}

impl<S: Sink> Sink for Deadline<S> {
    type Tx = Deadline<S::Tx>;

    async fn begin(&mut self) -> Result<Self::Tx, SinkError> {
        let tx = within(self.limit, &self.database, self.inner.begin()).await?;
        Ok(self.wrap(tx))
    }

    async fn load_offsets(
        &mut self,
        group: &str,
        topic: &str,
    ) -> Result<BTreeMap<i32, i64>, SinkError> {
        let operation = self.inner.load_offsets(group, topic);
        within(self.limit, &self.database, operation).await
    }

    async fn stored_topic_ids(
        &mut self,
        group: &str,
        topic: &str,
    ) -> Result<BTreeMap<i32, String>, SinkError> {
        let operation = self.inner.stored_topic_ids(group, topic);
        within(self.limit, &self.database, operation).await
    }

    async fn record_member(&mut self, member: &MemberRecord) -> Result<(), SinkError> {
        let operation = self.inner.record_member(member);
        within(self.limit, &self.database, operation).await
    }
}

impl<T: SinkTx> SinkTx for Deadline<T> {
    async fn insert_events(&mut self, events: &[Landed]) -> Result<u64, SinkError> {
        let operation = self.inner.insert_events(events);
        within(self.limit, &self.database, operation).await
    }

    async fn insert_dead_letters(
        &mut self,
        topic: &str,
        letters: &[DeadLetter],
    ) -> Result<u64, SinkError> {
        let operation = self.inner.insert_dead_letters(topic, letters);
        within(self.limit, &self.database, operation).await
    }

    async fn advance(&mut self, batch: &Batch, advance: &OffsetAdvance) -> Result<bool, SinkError> {
        let operation = self.inner.advance(batch, advance);
        within(self.limit, &self.database, operation).await
    }

    async fn savepoint(&mut self, step: Savepoint) -> Result<(), SinkError> {
        let operation = self.inner.savepoint(step);
        within(self.limit, &self.database, operation).await
    }

    async fn commit(self) -> Result<(), SinkError> {
        let (limit, database) = (self.limit, Arc::clone(&self.database));
        within(limit, &database, self.inner.commit()).await
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

/// What to do about a database error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Try again: the connection or the server went away, a lock was busy, resources ran short.
    Transient,
    /// The database refused the data (a data exception, a constraint): the rows are at fault.
    Refused,
    /// Neither: stop and say so.
    Fatal,
}

/// Worth retrying: the connection or the server went away, or a lock was busy.
pub(crate) fn is_transient(e: &sqlx::Error) -> bool {
    classify(e) == Verdict::Transient
}

pub fn classify(e: &sqlx::Error) -> Verdict {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_)
        | sqlx::Error::Tls(_) => Verdict::Transient,
        sqlx::Error::Database(db) => verdict(db.as_ref()),
        sqlx::Error::Migrate(m) => match m.as_ref() {
            sqlx::migrate::MigrateError::Execute(e) => classify(e),
            _ => Verdict::Fatal,
        },
        _ => Verdict::Fatal,
    }
}

/// Each dialect by its own codes: a Postgres SQLSTATE is five characters whose first two are
/// the class; a SQLite result code is a number whose low byte is the primary code.
fn verdict(db: &dyn sqlx::error::DatabaseError) -> Verdict {
    if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        postgres_verdict(pg.code())
    } else if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        db.code()
            .and_then(|c| c.parse().ok())
            .map_or(Verdict::Fatal, sqlite_verdict)
    } else {
        Verdict::Fatal
    }
}

/// By SQLSTATE class (and a few codes of mixed classes).
pub fn postgres_verdict(sqlstate: &str) -> Verdict {
    match sqlstate.get(..2).unwrap_or_default() {
        // connection exception; transaction rollback (serialization failure, deadlock);
        // insufficient resources (too many connections, out of memory, disk full)
        "08" | "40" | "53" => Verdict::Transient,
        // data exception; integrity constraint violation (the id conflict never gets here:
        // the inserts skip it with ON CONFLICT (id) DO NOTHING)
        "22" | "23" => Verdict::Refused,
        _ => match sqlstate {
            // admin/crash shutdown, cannot connect now, idle session timeout; query canceled
            // (statement_timeout, pg_cancel_backend); lock_timeout; our session ended by
            // idle_in_transaction_session_timeout
            "57P01" | "57P02" | "57P03" | "57P05" | "57014" | "55P03" | "25P03" => {
                Verdict::Transient
            }
            _ => Verdict::Fatal,
        },
    }
}

/// By SQLite result code, extended or primary: the primary code is the low byte.
pub fn sqlite_verdict(code: i32) -> Verdict {
    const BUSY: i32 = 5;
    const LOCKED: i32 = 6;
    const PROTOCOL: i32 = 15;
    const TOOBIG: i32 = 18;
    const CONSTRAINT: i32 = 19;
    const MISMATCH: i32 = 20;
    match code & 0xff {
        BUSY | LOCKED | PROTOCOL => Verdict::Transient,
        // Every constraint (CHECK, NOT NULL, UNIQUE, FOREIGN KEY, a trigger's RAISE…); the id
        // conflict is skipped with ON CONFLICT (id) DO NOTHING and never gets here.
        CONSTRAINT | MISMATCH | TOOBIG => Verdict::Refused,
        _ => Verdict::Fatal,
    }
}

/// How long to wait for a busy database or a free connection.
pub fn connect_timeout(timeout: Duration) -> Duration {
    timeout.max(Duration::from_secs(1))
}

/// A database URL safe to print: the password after `user:`, query parameters that carry one
/// (`password`, `sslpassword`, any case) and any `#fragment` shown as `***`. A URL that does not
/// parse is not shown at all (where its password would be cannot be known).
pub fn redact(url: &str) -> String {
    let parsed = url::Url::parse(url)
        // `scheme:anything` parses as an opaque path; only SQLite's short forms are database
        // URLs (and they carry a file path, nothing secret).
        .ok()
        .filter(|u| !u.cannot_be_a_base() || u.scheme() == "sqlite");
    let Some(mut parsed) = parsed else {
        let scheme = url.split_once(':').map(|(scheme, _)| scheme).filter(|s| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        });
        return match scheme {
            Some(scheme) => format!("<unparsable {scheme} URL>"),
            None => "<unparsable database URL>".to_string(),
        };
    };
    let mut changed = false;
    if parsed.password().is_some() {
        changed |= parsed.set_password(Some("***")).is_ok();
    }
    if let Some(query) = parsed.query() {
        if let Some(masked) = redact_query(query) {
            parsed.set_query(Some(&masked));
            changed = true;
        }
    }
    // A fragment means nothing to a database; it can only be a password that was not
    // percent-encoded ('#' in it) spilling over.
    if parsed.fragment().is_some() {
        parsed.set_fragment(Some("***"));
        changed = true;
    }
    if changed {
        parsed.to_string()
    } else {
        url.to_string()
    }
}

/// The query with the value of every password-carrying parameter replaced by `***`, other
/// parameters byte for byte; `None` when there is none.
fn redact_query(query: &str) -> Option<String> {
    let mut changed = false;
    let pieces: Vec<String> = query
        .split('&')
        .map(|piece| {
            // The key as sqlx reads it (percent-decoded, '+' as space).
            let key = url::form_urlencoded::parse(piece.as_bytes())
                .next()
                .map(|(k, _)| k.into_owned())
                .unwrap_or_default();
            if is_secret_parameter(&key) {
                changed = true;
                let raw_key = piece.split_once('=').map_or(piece, |(k, _)| k);
                format!("{raw_key}=***")
            } else {
                piece.to_string()
            }
        })
        .collect();
    changed.then(|| pieces.join("&"))
}

/// `password`, `sslpassword` (libpq's key file passphrase) and any other key naming a password.
fn is_secret_parameter(key: &str) -> bool {
    let key = key.trim().to_ascii_lowercase();
    key.contains("password") || key.contains("passwd") || key == "pwd"
}

/// Remove NUL characters, which Postgres text cannot hold (error texts may quote input).
pub(crate) fn clean_text(s: &str) -> String {
    s.replace('\0', "\u{FFFD}")
}

pub(crate) type SaleRow<'a> = (&'a crate::events::Sale, &'a Landed);
pub(crate) type SensorRow<'a> = (&'a crate::events::SensorReading, &'a Landed);

/// Split a batch's events into the two kinds (a consumer reads one kind, but the type allows both).
pub(crate) fn split_kinds(events: &[Landed]) -> (Vec<SaleRow<'_>>, Vec<SensorRow<'_>>) {
    let mut sales = Vec::new();
    let mut sensors = Vec::new();
    for landed in events {
        match &landed.event {
            Event::Sale(s) => sales.push((s, landed)),
            Event::Sensor(r) => sensors.push((r, landed)),
        }
    }
    (sales, sensors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_the_logs() {
        let shown = redact("postgres://app:s3cret@db.example:5432/streamlab");
        assert_eq!(shown, "postgres://app:***@db.example:5432/streamlab");
        assert_eq!(redact("sqlite://warehouse.db"), "sqlite://warehouse.db");
        assert_eq!(
            redact("postgres://app@db/streamlab?sslmode=disable&application_name=x"),
            "postgres://app@db/streamlab?sslmode=disable&application_name=x",
            "nothing to hide: shown as given"
        );
        assert!(!redact("postgres://a:b c@").contains("b c"));
    }

    #[test]
    fn postgres_errors_are_classified_by_sqlstate_class() {
        use Verdict::*;
        for (code, expected) in [
            ("08006", Transient), // connection failure
            ("08P01", Transient), // protocol violation
            ("40001", Transient), // serialization failure
            ("40P01", Transient), // deadlock
            ("53300", Transient), // too many connections
            ("57P01", Transient), // admin shutdown
            ("57014", Transient), // query canceled
            ("55P03", Transient), // lock not available
            ("22021", Refused),   // invalid byte sequence (a NUL in text)
            ("22003", Refused),   // numeric value out of range
            ("23514", Refused),   // check violation
            ("23502", Refused),   // not null violation
            ("23505", Refused),   // unique violation (not the id: that one is skipped)
            ("42501", Fatal),     // insufficient privilege
            ("42P01", Fatal),     // undefined table
            ("57P04", Fatal),     // database dropped
            ("XX000", Fatal),     // internal error
        ] {
            assert_eq!(postgres_verdict(code), expected, "SQLSTATE {code}");
        }
        // The low byte of a SQLSTATE read as a number means nothing: 22021 and 42501 both end
        // in 0x05, SQLITE_BUSY's code, and once passed for transient.
        assert_eq!(22021 & 0xff, 5);
        assert_eq!(42501 & 0xff, 5);
    }

    #[test]
    fn sqlite_errors_are_classified_by_result_code() {
        use Verdict::*;
        for (code, expected) in [
            (5, Transient),   // SQLITE_BUSY
            (261, Transient), // SQLITE_BUSY_RECOVERY
            (517, Transient), // SQLITE_BUSY_SNAPSHOT
            (6, Transient),   // SQLITE_LOCKED
            (262, Transient), // SQLITE_LOCKED_SHAREDCACHE
            (19, Refused),    // SQLITE_CONSTRAINT
            (275, Refused),   // SQLITE_CONSTRAINT_CHECK
            (1299, Refused),  // SQLITE_CONSTRAINT_NOTNULL
            (1811, Refused),  // SQLITE_CONSTRAINT_TRIGGER
            (2067, Refused),  // SQLITE_CONSTRAINT_UNIQUE
            (20, Refused),    // SQLITE_MISMATCH
            (18, Refused),    // SQLITE_TOOBIG
            (1, Fatal),       // SQLITE_ERROR (a missing table, a syntax error)
            (8, Fatal),       // SQLITE_READONLY
            (13, Fatal),      // SQLITE_FULL
            (266, Fatal),     // SQLITE_IOERR_READ
        ] {
            assert_eq!(sqlite_verdict(code), expected, "SQLite code {code}");
        }
    }

    /// Real errors from a real SQLite: the dialect is recognised and its reason kept.
    #[tokio::test]
    async fn a_constraint_sqlite_enforces_is_a_refusal_with_its_reason() {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect("sqlite::memory:")
            .await
            .unwrap();
        sqlx::query("CREATE TABLE t (n INTEGER CHECK (n > 0))")
            .execute(&mut conn)
            .await
            .unwrap();
        let err = SinkError::from(
            sqlx::query("INSERT INTO t VALUES (-1)")
                .execute(&mut conn)
                .await
                .unwrap_err(),
        );
        assert!(!err.is_transient());
        let reason = err.refusal().expect("a CHECK violation is a refusal");
        assert!(reason.contains("CHECK constraint failed"), "{reason}");
        assert!(reason.contains("SQLite code 275"), "{reason}");
        let missing = SinkError::from(
            sqlx::query("INSERT INTO nowhere VALUES (1)")
                .execute(&mut conn)
                .await
                .unwrap_err(),
        );
        assert_eq!(missing.refusal(), None);
        assert!(!missing.is_transient());
    }

    #[test]
    fn password_parameters_are_masked_in_any_case_and_position() {
        for (url, shown) in [
            (
                "postgres://app@db/s?password=s3cret",
                "postgres://app@db/s?password=***",
            ),
            (
                "postgres://app@db/s?sslmode=require&password=s3cret&application_name=x",
                "postgres://app@db/s?sslmode=require&password=***&application_name=x",
            ),
            (
                "postgres://app@db/s?PassWord=s3cret&SSLPASSWORD=s3cret",
                "postgres://app@db/s?PassWord=***&SSLPASSWORD=***",
            ),
            (
                "postgres://app:s3cret@db/s?sslpassword=s3cret",
                "postgres://app:***@db/s?sslpassword=***",
            ),
            // Percent-encoded key, as sqlx decodes it.
            (
                "postgres://app@db/s?pass%77ord=s3cret",
                "postgres://app@db/s?pass%77ord=***",
            ),
            // A value that is itself encoded, or empty.
            (
                "postgres://app@db/s?password=s3%63ret+x&password=",
                "postgres://app@db/s?password=***&password=***",
            ),
            (
                "sqlite://w.db?password=s3cret",
                "sqlite://w.db?password=***",
            ),
            // Unencoded '@' and '#' in the password: the URL reads "p" as the password, "ss"
            // as the host and the rest as a fragment; neither is shown.
            ("postgres://app:p@ss#cret@db/s", "postgres://app:***@ss#***"),
        ] {
            let got = redact(url);
            assert!(!got.contains("cret"), "{url} → {got}");
            assert_eq!(got, shown, "{url}");
        }
    }

    #[test]
    fn an_unparsable_url_is_not_echoed() {
        for url in [
            "postgres://app:s3cret@db:notaport/s",
            "postgres://app:s3/cret@db/s",
            "postgres://app:s3cret@[::1/s",
        ] {
            let got = redact(url);
            assert!(!got.contains("cret"), "{url} → {got}");
            assert_eq!(got, "<unparsable postgres URL>");
        }
        assert_eq!(redact("s3cret"), "<unparsable database URL>");
        assert_eq!(redact(":s3cret"), "<unparsable database URL>");
        // Parses (scheme "user", an opaque path), but is no database URL: its path is not shown.
        assert_eq!(redact("user:s3cret@host"), "<unparsable user URL>");
        // SQLite's short forms are paths, shown as given.
        assert_eq!(redact("sqlite:warehouse.db"), "sqlite:warehouse.db");
        assert_eq!(redact("sqlite::memory:"), "sqlite::memory:");
    }
}

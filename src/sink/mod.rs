//! Where consumed events land. A [`Sink`] writes one [`Batch`] — rows, dead letters and the new
//! offsets — in one transaction, so a crash at any instant neither loses nor duplicates an event.
//!
//! One file per backend (`pg.rs`, `sqlite.rs`); they differ only where the SQL dialects force it.

pub mod pg;
pub mod sqlite;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use crate::events::Event;

/// An event decoded from `partition`/`offset`.
#[derive(Debug, Clone)]
pub struct Landed {
    pub event: Event,
    pub partition: i32,
    pub offset: i64,
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
    pub events: Vec<Landed>,
    pub dead_letters: Vec<DeadLetter>,
    pub offsets: Vec<OffsetAdvance>,
}

/// What a committed batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub inserted: u64,
    /// Events whose id was already stored (replays, re-produced events).
    pub duplicates: u64,
    pub dead_lettered: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Someone else moved the stored offset: another consumer on the same group and sink.
    #[error(
        "the stored offset of {topic}/{partition} for group '{group}' is no longer {expected}: \
         another consumer is writing this group into the same database; stopping without writing \
         (to share a topic's partitions between consumers, start each with --join-group)"
    )]
    Fenced {
        group: String,
        topic: String,
        partition: i32,
        expected: String,
    },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl SinkError {
    /// Worth retrying: the connection or the server went away, or a lock was busy.
    pub fn is_transient(&self) -> bool {
        match self {
            SinkError::Database(e) => is_transient(e),
            SinkError::Fenced { .. } => false,
        }
    }

    pub fn is_fenced(&self) -> bool {
        matches!(self, SinkError::Fenced { .. })
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

pub trait Sink: Send {
    /// Stored `partition → next offset` of `group` for `topic`.
    fn load_offsets(
        &mut self,
        group: &str,
        topic: &str,
    ) -> impl Future<Output = Result<BTreeMap<i32, i64>, SinkError>> + Send;

    /// Write the batch in one transaction: all of it, or (on error) none of it.
    fn write(&mut self, batch: &Batch) -> impl Future<Output = Result<Written, SinkError>> + Send;

    /// Record (`Some`) or remove (`None`, on leaving) what a group member holds, for
    /// `streamlab check`. Informational: the coordinator decides, the offsets fence writes.
    fn record_member(
        &mut self,
        member: &MemberRecord,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;
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
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string());
    format!("{host} pid {}", std::process::id())
}

/// Worth retrying: the connection or the server went away, or a lock was busy.
pub(crate) fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_)
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // Postgres: connection exceptions (08…), shutdown (57P0x), serialization and
            // deadlock (40…). SQLite: SQLITE_BUSY (5) and SQLITE_LOCKED (6), extended too.
            code.starts_with("08")
                || code.starts_with("57P")
                || code.starts_with("40")
                || code.parse::<i32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6))
        }
        sqlx::Error::Migrate(m) => match m.as_ref() {
            sqlx::migrate::MigrateError::Execute(e) => is_transient(e),
            _ => false,
        },
        _ => false,
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

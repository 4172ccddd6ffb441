//! A sink of either backend, chosen when the command runs (the operator commands; `consume` is
//! generic over [`Sink`]). Every statement has `--timeout` as its deadline ([`Deadline`]).

use std::time::Duration;

use super::pg::PgSink;
use super::sqlite::SqliteSink;
use super::{connect_timeout, redact, Deadline};

/// PostgreSQL or SQLite, opened (and migrated) for writing.
pub enum AnySink {
    Pg(Deadline<PgSink>),
    Sqlite(Deadline<SqliteSink>),
}

impl AnySink {
    /// Connect to `url` (`sqlite`: a SQLite URL, else PostgreSQL) and apply the migrations.
    pub async fn open(url: &str, sqlite: bool, timeout: Duration) -> anyhow::Result<Self> {
        let (limit, shown) = (connect_timeout(timeout), redact(url));
        Ok(if sqlite {
            let sink = SqliteSink::connect(url, timeout).await?;
            AnySink::Sqlite(Deadline::new(sink, limit, format!("SQLite at {shown}")))
        } else {
            let sink = PgSink::connect(url, timeout).await?;
            AnySink::Pg(Deadline::new(sink, limit, format!("PostgreSQL at {shown}")))
        })
    }
}

/// `each!(sink, s => expression using s)`: the expression on whichever backend `sink` holds
/// (it is generic over [`super::Sink`], so it is written once).
macro_rules! each {
    ($sink:expr, $s:ident => $body:expr) => {
        match $sink {
            $crate::db::sinks::AnySink::Pg($s) => $body,
            $crate::db::sinks::AnySink::Sqlite($s) => $body,
        }
    };
}
pub(crate) use each;

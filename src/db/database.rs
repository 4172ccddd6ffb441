//! [`Database`]: the writer a [`Target`] names, chosen once from it.
//!
//! An enum over the two [`Writer`]s that is itself a [`Sink`] (tansu's `StorageContainer`
//! shape): the consumer is written, and compiled, once for both databases, and nothing above
//! this file matches on the kind of database to write to.

use std::collections::BTreeMap;
use std::time::Duration;

use sqlx::{Postgres, Sqlite};

use super::room;
use super::{
    Batch, DeadLetter, Kind, Landed, MemberRecord, OffsetAdvance, Savepoint, Sink, SinkError,
    SinkTx, Target, Tombstone, Writer, WriterTx,
};
use crate::events::EventKind;

/// The database a consumer writes to.
#[derive(Clone)]
pub enum Database {
    Postgres(Writer<Postgres>),
    Sqlite(Writer<Sqlite>),
}

/// A batch's transaction on a [`Database`].
pub enum DatabaseTx {
    Postgres(WriterTx<Postgres>),
    Sqlite(WriterTx<Sqlite>),
}

/// `$call` on the writer (or transaction) inside `$value`, whichever database it is.
macro_rules! on_either {
    ($enum:ident, $value:expr, $inner:ident => $call:expr) => {
        match $value {
            $enum::Postgres($inner) => $call,
            $enum::Sqlite($inner) => $call,
        }
    };
}

impl Database {
    /// Connect to the target (creating the database, or the file, if it does not exist yet)
    /// and apply the migrations.
    pub async fn connect(target: &Target, timeout: Duration) -> anyhow::Result<Self> {
        let url = &target.url;
        Ok(match target.kind {
            Kind::Postgres => Database::Postgres(Writer::connect(url, timeout).await?),
            Kind::Sqlite => Database::Sqlite(Writer::connect(url, timeout).await?),
        })
    }
}

impl Database {
    /// The most writers side by side this database takes from this consumer: SQLite writes one
    /// transaction at a time (1); PostgreSQL as many as it has connections to spare — or, when
    /// `chosen` writers do not fit, the one-line error naming the numbers (`database`: how
    /// to name it).
    pub async fn writer_cap(&self, chosen: Option<usize>, database: &str) -> anyhow::Result<usize> {
        let Database::Postgres(writer) = self else {
            return Ok(1);
        };
        let mut conn = writer.pool.acquire().await?;
        let ours = i64::from(writer.pool.size());
        let room = room::room(&mut conn, ours).await?;
        room.writers(chosen, database).map_err(anyhow::Error::msg)
    }
}

impl Sink for Database {
    type Tx = DatabaseTx;

    async fn begin(&mut self) -> Result<DatabaseTx, SinkError> {
        Ok(match self {
            Database::Postgres(writer) => DatabaseTx::Postgres(writer.begin().await?),
            Database::Sqlite(writer) => DatabaseTx::Sqlite(writer.begin().await?),
        })
    }

    async fn load_offsets(
        &mut self,
        group: &str,
        topic: &str,
    ) -> Result<BTreeMap<i32, i64>, SinkError> {
        on_either!(Database, self, writer => writer.load_offsets(group, topic).await)
    }

    async fn stored_topic_ids(
        &mut self,
        group: &str,
        topic: &str,
    ) -> Result<BTreeMap<i32, String>, SinkError> {
        on_either!(Database, self, writer => writer.stored_topic_ids(group, topic).await)
    }

    async fn record_member(&mut self, member: &MemberRecord) -> Result<(), SinkError> {
        on_either!(Database, self, writer => writer.record_member(member).await)
    }
}

impl SinkTx for DatabaseTx {
    async fn insert_events(&mut self, events: &[Landed]) -> Result<u64, SinkError> {
        on_either!(DatabaseTx, self, tx => tx.insert_events(events).await)
    }

    async fn upsert_events(&mut self, events: &[Landed]) -> Result<u64, SinkError> {
        on_either!(DatabaseTx, self, tx => tx.upsert_events(events).await)
    }

    async fn delete_keys(
        &mut self,
        kind: EventKind,
        deletes: &[Tombstone],
    ) -> Result<u64, SinkError> {
        on_either!(DatabaseTx, self, tx => tx.delete_keys(kind, deletes).await)
    }

    async fn insert_dead_letters(
        &mut self,
        topic: &str,
        letters: &[DeadLetter],
    ) -> Result<u64, SinkError> {
        on_either!(DatabaseTx, self, tx => tx.insert_dead_letters(topic, letters).await)
    }

    async fn advance<'b>(
        &mut self,
        batch: &'b Batch,
    ) -> Result<Option<&'b OffsetAdvance>, SinkError> {
        on_either!(DatabaseTx, self, tx => tx.advance(batch).await)
    }

    async fn savepoint(&mut self, step: Savepoint) -> Result<(), SinkError> {
        on_either!(DatabaseTx, self, tx => tx.savepoint(step).await)
    }

    async fn commit(self) -> Result<(), SinkError> {
        on_either!(DatabaseTx, self, tx => tx.commit().await)
    }
}

//! [`Deadline`]: every statement of a sink with a deadline.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::{
    Batch, DeadLetter, Landed, MemberRecord, OffsetAdvance, Savepoint, Sink, SinkError, SinkTx,
    Tombstone,
};
use crate::events::EventKind;

/// A sink whose every statement has a deadline: a database that stops answering — a frozen
/// connection keeps its TCP session open for the quarter of an hour TCP takes to give up —
/// gets [`SinkError::TimedOut`] instead of a consumer hung for good.
///
/// The statement's future is dropped on timeout. sqlx then rolls back a transaction left open
/// and checks the connection before the pool hands it out again (PostgreSQL's, whether it is
/// still in step with its answers: `pg::in_step`); a frozen connection never answers that check,
/// so it is never reused (it keeps its pool slot until the process ends).
#[derive(Clone)]
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
/// The [`Reader`](super::Reader)'s queries and the writer's connecting and migrating get the
/// same deadline from here.
pub(super) async fn within<T>(
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

    async fn upsert_events(&mut self, events: &[Landed]) -> Result<u64, SinkError> {
        let operation = self.inner.upsert_events(events);
        within(self.limit, &self.database, operation).await
    }

    async fn delete_keys(
        &mut self,
        kind: EventKind,
        deletes: &[Tombstone],
    ) -> Result<u64, SinkError> {
        let operation = self.inner.delete_keys(kind, deletes);
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

    async fn advance<'b>(
        &mut self,
        batch: &'b Batch,
    ) -> Result<Option<&'b OffsetAdvance>, SinkError> {
        let operation = self.inner.advance(batch);
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

impl<T: super::dlq::Statements> super::dlq::Statements for Deadline<T> {
    async fn execute(&mut self, sql: &str) -> Result<u64, SinkError> {
        let operation = self.inner.execute(sql);
        within(self.limit, &self.database, operation).await
    }
}

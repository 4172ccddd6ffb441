//! The `dead_letters` table, for `streamlab dlq`: reading it with filters, purging it, and taking
//! letters out — into the event tables (replay), or after they were produced again — in one
//! transaction that removes exactly the letters it was given, or nothing.
//!
//! Reads and purges go through the [`Reader`] (sqlx's `Any` driver); taking letters out goes
//! through the write side, so replayed events are inserted by the same statements (and
//! `ON CONFLICT (id) DO NOTHING`) as consumed ones.

use anyhow::Result;
use serde::Serialize;
use sqlx::Row;
use std::future::Future;
use time::OffsetDateTime;

use super::offsets::Statement;
use super::{DatabaseTx, Dialect, Kind, Landed, Reader, Sink, SinkError, SinkTx, WriterTx};
use crate::events::ts_millis;

/// Which dead letters; every condition given must hold.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub topic: Option<String>,
    /// Failed at or after this.
    pub since: Option<OffsetDateTime>,
    /// Failed before this.
    pub before: Option<OffsetDateTime>,
    /// The reason contains this text.
    pub reason: Option<String>,
    /// Only these ids (empty: any).
    pub ids: Vec<i64>,
}

impl Filter {
    /// ` WHERE …` (or nothing) and the text values it binds, in order.
    fn sql(&self, reader: &Reader) -> (String, Vec<String>) {
        let mut conditions = Vec::new();
        let mut binds = Vec::new();
        let mut bind = |value: String| {
            binds.push(value);
            format!("${}", binds.len())
        };
        if let Some(topic) = &self.topic {
            conditions.push(format!("topic = {}", bind(topic.clone())));
        }
        // PostgreSQL compares timestamptz values (the text bound is cast); SQLite stores
        // failed_at as RFC 3339 UTC text with milliseconds, which orders as the times do.
        let moment = |placeholder: String| match reader.kind {
            Kind::Postgres => format!("CAST({placeholder} AS timestamptz)"),
            Kind::Sqlite => placeholder,
        };
        if let Some(since) = self.since {
            let at = moment(bind(ts_millis::format(since)));
            conditions.push(format!("failed_at >= {at}"));
        }
        if let Some(before) = self.before {
            let at = moment(bind(ts_millis::format(before)));
            conditions.push(format!("failed_at < {at}"));
        }
        if let Some(reason) = &self.reason {
            let needle = bind(reason.clone());
            conditions.push(match reader.kind {
                Kind::Sqlite => format!("instr(error, {needle}) > 0"),
                Kind::Postgres => format!("strpos(error, {needle}) > 0"),
            });
        }
        if !self.ids.is_empty() {
            conditions.push(format!("id IN ({})", id_list(&self.ids)));
        }
        if conditions.is_empty() {
            (String::new(), binds)
        } else {
            (format!(" WHERE {}", conditions.join(" AND ")), binds)
        }
    }
}

fn id_list(ids: &[i64]) -> String {
    ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
}

/// A row of `dead_letters`.
#[derive(Debug, Clone, Serialize)]
pub struct Letter {
    pub id: i64,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    #[serde(skip)]
    pub key: Option<Vec<u8>>,
    /// Only read when asked for ([`select`]'s `payloads`).
    #[serde(skip)]
    pub payload: Option<Vec<u8>>,
    /// The payload's size (`None`: the record had no value).
    pub payload_bytes: Option<i64>,
    pub error: String,
    pub failed_at: String,
}

/// Which end of the table [`select`] starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    NewestFirst,
    OldestFirst,
}

impl Reader {
    /// The dead letters `filter` matches, at most `limit`, with their key and payload bytes
    /// when `payloads` (else without: listing a table of large payloads stays cheap).
    pub async fn dead_letter_rows(
        &self,
        filter: &Filter,
        order: Order,
        limit: Option<u32>,
        payloads: bool,
    ) -> Result<Vec<Letter>> {
        let (conditions, binds) = filter.sql(self);
        let bytes = if payloads {
            "record_key, payload"
        } else {
            "NULL, NULL"
        };
        let mut sql = format!(
            "SELECT {}, topic, {}, {}, {bytes}, {}, error, {} FROM dead_letters{conditions} \
             ORDER BY id {}",
            self.int("id"),
            self.int("kafka_partition"),
            self.int("kafka_offset"),
            self.int("length(payload)"),
            self.ts_text("failed_at"),
            if order == Order::NewestFirst {
                "DESC"
            } else {
                "ASC"
            }
        );
        if let Some(limit) = limit {
            sql.push_str(&format!(" LIMIT {limit}"));
        }
        let query = binds
            .into_iter()
            .fold(sqlx::query(&sql), |query, value| query.bind(value));
        let rows = self.within(query.fetch_all(&self.pool)).await?;
        rows.iter()
            .map(|r| {
                Ok(Letter {
                    id: r.try_get(0)?,
                    topic: r.try_get(1)?,
                    partition: i32::try_from(r.try_get::<i64, _>(2)?)?,
                    offset: r.try_get(3)?,
                    key: r.try_get(4)?,
                    payload: r.try_get(5)?,
                    payload_bytes: r.try_get(6)?,
                    error: r.try_get(7)?,
                    failed_at: r.try_get(8)?,
                })
            })
            .collect()
    }

    /// Delete the dead letters `filter` matches; their ids, in order.
    pub async fn purge_dead_letters(&self, filter: &Filter) -> Result<Vec<i64>> {
        let (conditions, binds) = filter.sql(self);
        let sql = format!(
            "DELETE FROM dead_letters{conditions} RETURNING {}",
            self.int("id")
        );
        let query = binds
            .into_iter()
            .fold(sqlx::query(&sql), |query, value| query.bind(value));
        let mut ids: Vec<i64> = self
            .within(query.fetch_all(&self.pool))
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        ids.sort_unstable();
        Ok(ids)
    }
}

/// Why letters could not be taken out.
#[derive(Debug, thiserror::Error)]
pub enum TakeError {
    /// Some of the letters were no longer there when the transaction removed them: another
    /// replay or purge took them first. Nothing was changed.
    #[error(
        "{missing} of the {asked} dead letters were taken meanwhile (another replay or purge?); \
         nothing was changed: run it again"
    )]
    Changed { asked: usize, missing: usize },
    /// Producing the claimed letters failed: the transaction was rolled back, every letter
    /// stays (some records may have reached the topic before the failure).
    #[error("{0:#}; the dead letters were kept (records acknowledged before the failure may be in the topic)")]
    Produce(anyhow::Error),
    /// COMMIT failed or did not answer: the letters may or may not have been taken.
    #[error(
        "committing: {0}; the replay may have been committed: `streamlab dlq list` shows whether \
         the letters are still there"
    )]
    Commit(SinkError),
    /// A statement before COMMIT failed (or did not answer within the deadline): rolled back,
    /// nothing was changed.
    #[error("{0}; nothing was changed")]
    Sink(#[from] SinkError),
}

/// What [`take`] did with the events it was given.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Taken {
    pub inserted: u64,
    /// Events whose id was already stored.
    pub duplicates: u64,
    /// The letters whose event the database refused, by id, with its reason: kept in
    /// `dead_letters`.
    #[serde(skip)]
    pub refused: Vec<(i64, String)>,
}

/// In one transaction: insert `events` — each event with the id of the letter it came from —
/// isolating those the database refuses ([`super::write::insert_isolating`]), and remove the
/// letters of the events it accepted. If any of those letters is already gone, nothing is
/// changed ([`TakeError::Changed`]), so no letter is replayed twice; the refused letters stay,
/// listed in [`Taken::refused`]. `sink` gives every statement its deadline ([`super::Deadline`]).
pub async fn take<S: Sink>(sink: &mut S, events: &[(i64, Landed)]) -> Result<Taken, TakeError>
where
    S::Tx: Statements,
{
    let mut tx = sink.begin().await?;
    let landed: Vec<Landed> = events.iter().map(|(_, e)| e.clone()).collect();
    let isolated = super::write::insert_isolating(&mut tx, super::Mode::Append, &landed).await?;
    let refused: Vec<(i64, String)> = isolated
        .refused
        .into_iter()
        .map(|(at, reason)| (events[at].0, reason))
        .collect();
    let ids: Vec<i64> = events
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| !refused.iter().any(|(r, _)| r == id))
        .collect();
    remove(&mut tx, &ids).await?;
    tx.commit().await.map_err(TakeError::Commit)?;
    Ok(Taken {
        inserted: isolated.inserted,
        duplicates: isolated.accepted as u64 - isolated.inserted,
        refused,
    })
}

/// Claim the letters `ids` — remove them in a transaction, all of them or nothing — then run
/// `produce`, and commit only once it succeeded: a second replay of the same letters waits for
/// this one and then finds them gone ([`TakeError::Changed`]) instead of producing them again;
/// a failed `produce` rolls the claim back. Only a COMMIT that fails after `produce` succeeded
/// leaves records produced while their letters stay ([`TakeError::Commit`]).
pub async fn claim_then<S, F>(sink: &mut S, ids: &[i64], produce: F) -> Result<(), TakeError>
where
    S: Sink,
    S::Tx: Statements,
    F: Future<Output = anyhow::Result<()>>,
{
    let mut tx = sink.begin().await?;
    remove(&mut tx, ids).await?;
    // Dropping the transaction on failure rolls the claim back.
    produce.await.map_err(TakeError::Produce)?;
    tx.commit().await.map_err(TakeError::Commit)
}

/// Delete the letters `ids` in `tx`; [`TakeError::Changed`] unless every one was there.
async fn remove<T: Statements>(tx: &mut T, ids: &[i64]) -> Result<(), TakeError> {
    let mut removed = 0;
    for chunk in ids.chunks(1000) {
        let sql = format!("DELETE FROM dead_letters WHERE id IN ({})", id_list(chunk));
        removed += tx.execute(&sql).await?;
    }
    if removed != ids.len() as u64 {
        // Dropping the transaction rolls it back.
        return Err(TakeError::Changed {
            asked: ids.len(),
            missing: ids.len() - removed as usize,
        });
    }
    Ok(())
}

/// A statement of our own inside a sink's transaction.
pub trait Statements: SinkTx {
    /// Run `sql` (no parameters); the rows it affected.
    fn execute(&mut self, sql: &str) -> impl Future<Output = Result<u64, SinkError>> + Send;
}

impl<D: Dialect> Statements for WriterTx<D> {
    async fn execute(&mut self, sql: &str) -> Result<u64, SinkError> {
        Ok(D::execute(&mut self.0, &Statement::from(sql)).await?)
    }
}

impl Statements for DatabaseTx {
    async fn execute(&mut self, sql: &str) -> Result<u64, SinkError> {
        match self {
            DatabaseTx::Postgres(tx) => tx.execute(sql).await,
            DatabaseTx::Sqlite(tx) => tx.execute(sql).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::db::memory::{Faults, MemorySink};
    use crate::db::Deadline;

    async fn claim(faults: Faults, produced: anyhow::Result<()>) -> Result<(), TakeError> {
        let db = MemorySink::with(faults);
        let mut sink = Deadline::new(db, Duration::from_millis(200), "SQLite at x.db");
        claim_then(&mut sink, &[1, 2], async { produced }).await
    }

    #[tokio::test]
    async fn each_step_of_a_claim_says_what_became_of_the_letters() {
        let fine = Faults {
            affects: 2,
            ..Faults::default()
        };
        assert!(claim(fine, Ok(())).await.is_ok());
        let taken = claim(Faults { affects: 1, ..fine }, Ok(()))
            .await
            .unwrap_err();
        assert!(
            matches!(
                taken,
                TakeError::Changed {
                    asked: 2,
                    missing: 1
                }
            ),
            "{taken}"
        );
        let failed = claim(fine, Err(anyhow::anyhow!("producing to t/0: refused")))
            .await
            .unwrap_err();
        assert_eq!(
            failed.to_string(),
            "producing to t/0: refused; the dead letters were kept (records acknowledged before \
             the failure may be in the topic)"
        );
        let silent = Faults {
            hang_statements: true,
            ..fine
        };
        let unanswered = claim(silent, Ok(())).await.unwrap_err();
        assert_eq!(
            unanswered.to_string(),
            "SQLite at x.db did not answer within 200ms; nothing was changed"
        );
        let commit = Faults {
            hang_commit: true,
            ..fine
        };
        let maybe = claim(commit, Ok(())).await.unwrap_err();
        assert_eq!(
            maybe.to_string(),
            "committing: SQLite at x.db did not answer within 200ms; the replay may have been \
             committed: `streamlab dlq list` shows whether the letters are still there"
        );
    }
}

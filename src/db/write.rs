//! Writing a batch: the steps, once for both databases.
//!
//! [`write`] and [`write_isolating`] make a batch out of the steps of any [`Sink`] — the offset
//! fence, and setting aside the events the database refuses. [`Writer`] is the sink of either
//! database: its steps (begin, insert events and dead letters, advance the fenced offsets, record
//! members, commit) are the same for both, and ask the database's [`Dialect`] only for what
//! differs — connecting, beginning a transaction, and how rows go in.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use sqlx::{Pool, Transaction};

use super::offsets::{self, Driver, Statement, StoredOffset};
use super::{
    split_kinds, Batch, DeadLetter, Kind, Landed, MemberRecord, Mode, OffsetAdvance, Row,
    Savepoint, Sink, SinkError, SinkTx, Tombstone, Written,
};
use crate::events::{EventKind, Sale, SensorReading};

/// Write the batch in one transaction — rows, dead letters, fenced offsets: all of it, or (on
/// error) none of it.
pub async fn write<S: Sink>(sink: &mut S, batch: &Batch) -> Result<Written, SinkError> {
    let mut tx = sink.begin().await?;
    let inserted = store(&mut tx, batch.mode, &batch.events).await?;
    finish(tx, batch, inserted, batch.events.len(), Vec::new()).await
}

/// Store `events` as `mode` says: appended, or upserted by record key.
async fn store<T: SinkTx>(tx: &mut T, mode: Mode, events: &[Landed]) -> Result<u64, SinkError> {
    match mode {
        Mode::Append => tx.insert_events(events).await,
        Mode::Upsert(_) => tx.upsert_events(events).await,
    }
}

/// [`write`] for a batch the database refused ([`SinkError::refusal`]): still one transaction,
/// but the events go in slice by slice, each under a savepoint. A slice the database refuses is
/// rolled back to its savepoint and split in two, until each refused event is alone; those
/// become dead letters with the database's reason, everything else is stored, and the offsets
/// move past all of them. Each slice goes in on top of the ones accepted before it, so what is
/// committed is exactly what the database accepted together.
pub async fn write_isolating<S: Sink>(sink: &mut S, batch: &Batch) -> Result<Written, SinkError> {
    let mut tx = sink.begin().await?;
    let isolated = insert_isolating(&mut tx, batch.mode, &batch.events).await?;
    let refused = isolated
        .refused
        .into_iter()
        .map(|(at, reason)| {
            let one = &batch.events[at];
            DeadLetter {
                partition: one.partition,
                offset: one.offset,
                key: one.key.as_deref().map(<[u8]>::to_vec),
                payload: Some(one.value.to_vec()),
                error: format!("refused by the database: {reason}"),
            }
        })
        .collect();
    finish(tx, batch, isolated.inserted, isolated.accepted, refused).await
}

/// What [`insert_isolating`] did.
#[derive(Debug, Default)]
pub(crate) struct Isolated {
    /// Rows that are new.
    pub inserted: u64,
    /// Events the database accepted (new or already stored).
    pub accepted: usize,
    /// The events it refused, by index into the events given, with its reason.
    pub refused: Vec<(usize, String)>,
}

/// Insert `events` in `tx` slice by slice, each under a savepoint, halving a refused slice until
/// each refused event is alone (the isolation of [`write_isolating`], also used by `dlq replay`).
pub(crate) async fn insert_isolating<T: SinkTx>(
    tx: &mut T,
    mode: Mode,
    events: &[Landed],
) -> Result<Isolated, SinkError> {
    let mut done = Isolated::default();
    // Ranges still to try, the next on top (a stack instead of recursion in an async fn).
    let mut pending = halves(0..events.len());
    while let Some(range) = pending.pop() {
        tx.savepoint(Savepoint::Set).await?;
        match store(tx, mode, &events[range.clone()]).await {
            Ok(n) => {
                tx.savepoint(Savepoint::Release).await?;
                done.inserted += n;
                done.accepted += range.len();
            }
            Err(e) => {
                let Some(reason) = e.refusal() else {
                    return Err(e);
                };
                tx.savepoint(Savepoint::RollBack).await?;
                if range.len() == 1 {
                    done.refused.push((range.start, reason));
                } else {
                    pending.extend(halves(range));
                }
            }
        }
    }
    Ok(done)
}

/// `range` in two halves, the first half last (so it is popped first); one range if it cannot
/// be split, none if empty.
fn halves(range: std::ops::Range<usize>) -> Vec<std::ops::Range<usize>> {
    match range.len() {
        0 => Vec::new(),
        1 => vec![range],
        n => {
            let middle = range.start + n / 2;
            vec![middle..range.end, range.start..middle]
        }
    }
}

/// The rest of a batch's transaction once its events are in: deletions, dead letters, the
/// fenced offsets, COMMIT.
async fn finish<T: SinkTx>(
    mut tx: T,
    batch: &Batch,
    inserted: u64,
    accepted: usize,
    refused: Vec<DeadLetter>,
) -> Result<Written, SinkError> {
    let deleted = match batch.mode {
        Mode::Upsert(kind) if !batch.deletes.is_empty() => {
            tx.delete_keys(kind, &batch.deletes).await?
        }
        _ => 0,
    };
    let dead_lettered = tx
        .insert_dead_letters(&batch.topic, &batch.dead_letters)
        .await?
        + tx.insert_dead_letters(&batch.topic, &refused).await?;
    if let Some(refused) = tx.advance(batch).await? {
        // Dropping the transaction rolls it back: nothing of this batch is kept.
        return Err(SinkError::fenced(batch, refused));
    }
    tx.commit().await?;
    Ok(Written {
        inserted,
        duplicates: accepted as u64 - inserted,
        deleted,
        dead_lettered,
        refused: refused
            .into_iter()
            .map(|d| (d.partition, d.offset, d.error))
            .collect(),
    })
}

/// What differs between the databases on the write side; the rest is [`Writer`]'s, once.
/// Implemented by sqlx's `Postgres` (`pg.rs`) and `Sqlite` (`sqlite.rs`); the shared statements
/// run on either as a [`Driver`].
pub trait Dialect: Driver {
    const KIND: Kind;

    /// Connect (creating the database if it does not exist yet) and apply the migrations.
    /// (Not `Send`: sqlx's SQLite migrator is not, and connecting happens before any task is
    /// spawned.)
    fn connect(url: &str, timeout: Duration) -> impl Future<Output = anyhow::Result<Pool<Self>>>;

    /// Begin a batch's transaction.
    fn begin(
        pool: &Pool<Self>,
    ) -> impl Future<Output = Result<Transaction<'static, Self>, sqlx::Error>> + Send;

    /// Insert sales (at least one), skipping ids already stored; how many rows are new.
    /// `upsert`: into `sales_latest` by record key (one row per key), each only over
    /// an older row; how many rows were inserted or updated. `first`: nothing else has been
    /// sent in the transaction, so a way that may fail can roll all of it back and begin
    /// again instead of setting a savepoint first.
    fn insert_sales(
        conn: &mut Self::Connection,
        rows: &[Row<'_, Sale>],
        upsert: bool,
        first: bool,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;

    /// Insert sensor readings (at least one) as [`Dialect::insert_sales`] does sales.
    fn insert_sensors(
        conn: &mut Self::Connection,
        rows: &[Row<'_, SensorReading>],
        upsert: bool,
        first: bool,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;

    /// Delete the tombstones' keys (at least one) from `table`, each only where the stored row
    /// is older ([`super::upsert::STORED_IS_OLDER`]); how many rows went.
    fn delete_keys(
        conn: &mut Self::Connection,
        table: &str,
        deletes: &[Tombstone],
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;

    /// Insert dead letters (at least one) of `topic`, skipping records already there; how many
    /// are new.
    fn insert_dead_letters(
        conn: &mut Self::Connection,
        topic: &str,
        letters: &[DeadLetter],
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;
}

/// The sink of a database of dialect `D` ([`super::pg::PgSink`], [`super::sqlite::SqliteSink`]).
pub struct Writer<D: Dialect> {
    pub(super) pool: Pool<D>,
}

impl<D: Dialect> Clone for Writer<D> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
        }
    }
}

impl<D: Dialect> Writer<D> {
    /// Connect (creating the database if it does not exist yet) and apply the migrations.
    pub async fn connect(url: &str, timeout: Duration) -> anyhow::Result<Self> {
        Ok(Self {
            pool: D::connect(url, timeout).await?,
        })
    }

    /// The stored rows of `group` for `topic`.
    async fn stored(&self, group: &str, topic: &str) -> Result<Vec<StoredOffset>, SinkError> {
        let mut conn = self.pool.acquire().await?;
        let statement = offsets::stored(D::KIND, group, topic);
        Ok(D::fetch_stored(&mut conn, &statement).await?)
    }
}

impl<D: Dialect> Sink for Writer<D> {
    type Tx = WriterTx<D>;

    async fn begin(&mut self) -> Result<WriterTx<D>, SinkError> {
        Ok(WriterTx(D::begin(&self.pool).await?, true))
    }

    async fn load_offsets(
        &mut self,
        group: &str,
        topic: &str,
    ) -> Result<BTreeMap<i32, i64>, SinkError> {
        let stored = self.stored(group, topic).await?;
        let offsets = stored
            .into_iter()
            .map(|(partition, next, _)| (partition, next));
        Ok(offsets.collect())
    }

    async fn stored_topic_ids(
        &mut self,
        group: &str,
        topic: &str,
    ) -> Result<BTreeMap<i32, String>, SinkError> {
        let stored = self.stored(group, topic).await?;
        let ids = stored
            .into_iter()
            .filter_map(|(partition, _, id)| Some((partition, id?)));
        Ok(ids.collect())
    }

    async fn record_member(&mut self, member: &MemberRecord) -> Result<(), SinkError> {
        let mut conn = self.pool.acquire().await?;
        D::execute(&mut conn, &offsets::record_member(D::KIND, member)).await?;
        Ok(())
    }
}

/// A batch's transaction, and whether nothing has been sent in it yet.
pub struct WriterTx<D: Dialect>(pub(super) Transaction<'static, D>, bool);

impl<D: Dialect> WriterTx<D> {
    /// Each kind's events into its table, or (`upsert`) its `_latest` table.
    async fn store(&mut self, events: &[Landed], upsert: bool) -> Result<u64, SinkError> {
        let (sales, sensors) = split_kinds(events);
        let mut stored = 0;
        if !sales.is_empty() {
            let first = std::mem::replace(&mut self.1, false);
            stored += D::insert_sales(&mut self.0, &sales, upsert, first).await?;
        }
        if !sensors.is_empty() {
            let first = std::mem::replace(&mut self.1, false);
            stored += D::insert_sensors(&mut self.0, &sensors, upsert, first).await?;
        }
        Ok(stored)
    }
}

impl<D: Dialect> SinkTx for WriterTx<D> {
    async fn insert_events(&mut self, events: &[Landed]) -> Result<u64, SinkError> {
        self.store(events, false).await
    }

    async fn upsert_events(&mut self, events: &[Landed]) -> Result<u64, SinkError> {
        self.store(events, true).await
    }

    async fn delete_keys(
        &mut self,
        kind: EventKind,
        deletes: &[Tombstone],
    ) -> Result<u64, SinkError> {
        if deletes.is_empty() {
            return Ok(0);
        }
        Ok(D::delete_keys(&mut self.0, kind.latest_table(), deletes).await?)
    }

    async fn insert_dead_letters(
        &mut self,
        topic: &str,
        letters: &[DeadLetter],
    ) -> Result<u64, SinkError> {
        if letters.is_empty() {
            return Ok(0);
        }
        Ok(D::insert_dead_letters(&mut self.0, topic, letters).await?)
    }

    /// A new row per partition without one; the rows that exist moved in one statement.
    async fn advance<'b>(
        &mut self,
        batch: &'b Batch,
    ) -> Result<Option<&'b OffsetAdvance>, SinkError> {
        let (existing, new): (Vec<&OffsetAdvance>, Vec<&OffsetAdvance>) =
            batch.offsets.iter().partition(|a| a.from.is_some());
        for advance in new {
            let statement = offsets::advance(D::KIND, batch, advance);
            if D::execute(&mut self.0, &statement).await? != 1 {
                return Ok(Some(advance));
            }
        }
        if existing.is_empty() {
            return Ok(None);
        }
        let statement = offsets::advance_existing(D::KIND, batch, &existing);
        let moved: Vec<i32> = D::fetch_stored(&mut self.0, &statement)
            .await?
            .into_iter()
            .map(|(partition, _, _)| partition)
            .collect();
        Ok(existing.into_iter().find(|a| !moved.contains(&a.partition)))
    }

    async fn savepoint(&mut self, step: Savepoint) -> Result<(), SinkError> {
        self.1 = false;
        D::execute(&mut self.0, &Statement::from(step.sql())).await?;
        Ok(())
    }

    async fn commit(self) -> Result<(), SinkError> {
        Ok(self.0.commit().await?)
    }
}

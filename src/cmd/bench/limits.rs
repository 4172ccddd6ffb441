//! The limits the pipeline is held to: the same rows loaded straight into each database (binary
//! COPY, upserts, SQLite's multi-row INSERT), and the events both they and `produce` make.

use std::ops::Range;
use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use sqlx::{Connection, Postgres, Sqlite};
use time::OffsetDateTime;

use super::cpu::process_cpu_secs;
use super::{pg_database_url, remove_sqlite, Ctx, LIMIT_TIMEOUT};
use crate::cmd::consume::{lane_for, DEFAULT_BATCH_SIZE};
use crate::db::{self, Change, Dialect, Folded, Landed, Row, Tombstone, UpsertWay};
use crate::events::{Event, EventKind, Generator, Sale};
use crate::kafka::partitioner::partition_for_key;

/// Keys of the upsert measurement's updates, the share of them that are tombstones (percent),
/// and the seed both its `produce` and its limit generate them from.
pub(super) const UPSERT_KEYS: u64 = 10_000;
pub(super) const UPSERT_TOMBSTONE_PERCENT: u32 = 5;
pub(super) const UPSERT_SEED: u64 = 27;

/// The `n` updates `produce --keys UPSERT_KEYS --tombstones UPSERT_TOMBSTONE_PERCENT% --seed
/// UPSERT_SEED` makes, as `consume --upsert` with `writers` writers writes them: partitions as
/// produce's partitioner puts the keys (each partition's offsets from 0), shared among the
/// writers' lanes as consume shares them ([`lane_for`]); each lane's changes in batches of
/// consume's default size, each folded to the last change per key.
pub(super) fn upsert_lanes(n: u64, partitions: i32, writers: usize) -> Vec<Vec<Folded>> {
    let mut g = Generator::new(EventKind::Sales, Some(UPSERT_SEED));
    let tombstones = f64::from(UPSERT_TOMBSTONE_PERCENT) / 100.0;
    let mut next = vec![0i64; partitions.max(1) as usize];
    let writers = writers.clamp(1, next.len());
    let now = OffsetDateTime::now_utc();
    let mut lanes: Vec<Vec<Change>> = vec![Vec::new(); writers];
    for _ in 0..n {
        let (key, event) = g.next_update(UPSERT_KEYS, tombstones, now);
        let at = partition_for_key(key.as_bytes(), next.len());
        let (partition, offset) = (at as i32, next[at]);
        next[at] += 1;
        let change = match event {
            None => Change::Delete(Tombstone {
                key,
                partition,
                offset,
            }),
            Some(event) => {
                let record_key = Some(key.clone().into_bytes().into());
                let landed = Landed {
                    event,
                    partition,
                    offset,
                    key: record_key,
                    value: Default::default(),
                };
                Change::Put(key, landed)
            }
        };
        lanes[lane_for(at, writers)].push(change);
    }
    let batch = DEFAULT_BATCH_SIZE as usize;
    lanes
        .into_iter()
        .map(|changes| {
            let mut changes = changes.into_iter().peekable();
            let mut batches = Vec::new();
            while changes.peek().is_some() {
                batches.push(db::latest_per_key(changes.by_ref().take(batch).collect()));
            }
            batches
        })
        .collect()
}

pub(super) fn generate(n: u64) -> Vec<Sale> {
    // Unseeded: time-ordered v7 ids, like the events consume writes (random ids would make the
    // primary-key index the bottleneck and understate the limit).
    // Timestamps a few microseconds apart, as a fast producer stamps them: a million equal
    // timestamps would make the index on ts a pile of duplicates and understate the limit.
    let mut g = Generator::new(EventKind::Sales, None);
    let start = OffsetDateTime::now_utc();
    (0..n)
        .map(
            |i| match g.next_event(start + time::Duration::microseconds(2 * i as i64)) {
                Event::Sale(s) => s,
                Event::Sensor(_) => unreachable!("a sales generator makes sales"),
            },
        )
        .collect()
}

/// The PostgreSQL write limit: binary COPY of the rows into `sales_events` of a fresh database
/// (migrated as `consume`'s are), encoded as `consume` encodes them, loaded on one connection
/// and on `writers` side by side (a contiguous share each) — each way in one transaction per
/// connection and as COPYs of `consume`'s default batch size, a transaction each — whichever is
/// fastest. Also the CPU-seconds per million rows its backends spent (Linux, local server).
pub(super) async fn pg_copy_limit(
    ctx: &Ctx,
    round: u32,
    rows: &[Sale],
    writers: usize,
) -> Result<(f64, Option<f64>)> {
    let rows = as_rows(rows);
    let per_batch = DEFAULT_BATCH_SIZE as usize;
    let one = [Load::Copy(&rows)];
    let mut best = pg_limit(ctx, &format!("{round}_copy"), &one, per_batch).await?;
    tracing::info!("bench: COPY limit on one connection {:.0} rows/s", best.0);
    if writers > 1 {
        let share = rows.len().div_ceil(writers).max(1);
        let side_by_side: Vec<Load<'_>> = rows.chunks(share).map(Load::Copy).collect();
        let what = format!("{round}_copy_{writers}");
        let many = pg_limit(ctx, &what, &side_by_side, per_batch).await?;
        tracing::info!(
            "bench: COPY limit on {writers} connections {:.0} rows/s",
            many.0
        );
        if many.0 > best.0 {
            best = many;
        }
    }
    Ok(best)
}

/// What a PostgreSQL limit loads, in units a transaction takes one or more of: rows, by one
/// binary COPY into `sales_events`; or upsert batches, each by [`db::bulk_upsert_sales`].
pub(super) enum Load<'a> {
    Copy(&'a [Row<'a, Sale>]),
    Upsert(&'a [Folded], UpsertWay),
}

impl Load<'_> {
    fn len(&self) -> usize {
        match self {
            Load::Copy(rows) => rows.len(),
            Load::Upsert(batches, _) => batches.len(),
        }
    }

    /// Before the clock starts: the upsert's staging table.
    async fn prepare(&self, conn: &mut sqlx::PgConnection) -> Result<()> {
        if let Load::Upsert(_, UpsertWay::Staged) = self {
            db::create_upsert_stage(conn, EventKind::Sales).await?;
        }
        Ok(())
    }

    /// Load all units, `per_transaction` a transaction (None: all in one): how many events.
    async fn apply_all(
        &self,
        conn: &mut sqlx::PgConnection,
        per_transaction: Option<usize>,
    ) -> Result<u64> {
        let (len, mut loaded) = (self.len(), 0);
        let per_transaction = per_transaction.unwrap_or(len).max(1);
        for start in (0..len).step_by(per_transaction) {
            let mut tx = conn.begin().await?;
            loaded += self
                .apply(&mut tx, start..len.min(start + per_transaction))
                .await?;
            tx.commit().await?;
        }
        Ok(loaded)
    }

    /// Load the units `range` in the caller's transaction: how many events they hold.
    async fn apply(&self, conn: &mut sqlx::PgConnection, range: Range<usize>) -> Result<u64> {
        match self {
            Load::Copy(rows) => Ok(db::bulk_load_sales(conn, &rows[range]).await?),
            Load::Upsert(batches, way) => {
                let mut events = 0;
                for folded in &batches[range] {
                    db::bulk_upsert_sales(conn, folded, *way).await?;
                    events += (folded.puts.len() + folded.deletes.len()) as u64 + folded.superseded;
                }
                Ok(events)
            }
        }
    }
}

/// A PostgreSQL limit: `lanes` — each a load on a connection of its own, side by side — into
/// fresh databases (migrated as `consume`'s are) two ways — each lane's units in one
/// transaction, and `per_batch` units a transaction each — whichever is faster, with the
/// CPU-seconds per million events its backends spent (Linux, local server).
pub(super) async fn pg_limit(
    ctx: &Ctx,
    what: &str,
    lanes: &[Load<'_>],
    per_batch: usize,
) -> Result<(f64, Option<f64>)> {
    let whole = pg_load(ctx, what, lanes, None).await?;
    let batched = pg_load(ctx, &format!("{what}_tx"), lanes, Some(per_batch)).await?;
    Ok(if batched.0 > whole.0 { batched } else { whole })
}

/// One way of loading for [`pg_limit`]: each lane on a connection of its own, side by side,
/// `per_transaction` units a transaction (None: all of a lane's), into a fresh database named
/// after `what`.
async fn pg_load(
    ctx: &Ctx,
    what: &str,
    lanes: &[Load<'_>],
    per_transaction: Option<usize>,
) -> Result<(f64, Option<f64>)> {
    let name = format!("streamlab_bench_{}_{what}", ctx.stamp);
    let pool =
        <Postgres as Dialect>::connect(&pg_database_url(&ctx.pg_admin, &name)?, LIMIT_TIMEOUT)
            .await?;
    let (mut conns, mut backends) = (Vec::new(), Vec::new());
    for load in lanes {
        let mut conn = pool.acquire().await?;
        load.prepare(&mut conn).await?;
        backends.push(db::measure::pg_backend_pid(&mut conn).await? as u32);
        conns.push(conn);
    }
    let cpu = || -> Option<f64> { backends.iter().map(|&pid| process_cpu_secs(pid)).sum() };
    let cpu_before = cpu();
    let started = Instant::now();
    let loading = conns
        .iter_mut()
        .zip(lanes)
        .map(|(conn, load)| load.apply_all(conn, per_transaction));
    let loaded: u64 = futures::future::try_join_all(loading)
        .await?
        .into_iter()
        .sum();
    let rate = loaded as f64 / started.elapsed().as_secs_f64();
    let cpu = cpu_before
        .zip(cpu())
        .map(|(before, after)| (after - before) * 1e6 / loaded.max(1) as f64);
    drop(conns);
    pool.close().await;
    db::measure::pg_drop_database(&ctx.pg_admin, &name).await;
    Ok((rate, cpu))
}

/// The rows as a consumer would write them from partition 0, offsets 0, 1, 2…
fn as_rows(rows: &[Sale]) -> Vec<Row<'_, Sale>> {
    rows.iter()
        .enumerate()
        .map(|(i, event)| Row {
            event,
            record_key: None,
            partition: 0,
            offset: i as i64,
        })
        .collect()
}

/// The rows inserted into a fresh SQLite file (migrated as `consume`'s are) in one
/// transaction, with the statement `consume` uses (one prepared multi-row INSERT, a thousand
/// rows at a time): the SQLite limit. Also the CPU-seconds per million rows it took (Linux:
/// this process, where SQLite runs on sqlx's worker thread and the statements are bound).
pub(super) async fn sqlite_bulk_limit(workdir: &Path, rows: &[Sale]) -> Result<(f64, Option<f64>)> {
    let path = workdir.join("limit.db");
    remove_sqlite(&path);
    let pool = <Sqlite as Dialect>::connect(&format!("sqlite://{}", path.display()), LIMIT_TIMEOUT)
        .await?;
    let mut conn = pool.acquire().await?;
    db::measure::sqlite_large_cache(&mut conn).await?;
    let rows = as_rows(rows);
    let cpu = || process_cpu_secs(std::process::id());
    let (started, cpu_before) = (Instant::now(), cpu());
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    Sqlite::insert_sales(&mut tx, &rows, false, true).await?;
    tx.commit().await?;
    let rate = rows.len() as f64 / started.elapsed().as_secs_f64();
    let per_million = cpu_before
        .zip(cpu())
        .map(|(before, after)| (after - before) * 1e6 / rows.len().max(1) as f64);
    drop(conn);
    pool.close().await;
    remove_sqlite(&path);
    Ok((rate, per_million))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// The upsert limit's lanes hold every update once, each lane only the partitions consume
    /// gives its writer, in offset order, in batches no larger than consume's.
    #[test]
    fn upsert_lanes_share_the_updates_as_consume_shares_the_partitions() {
        let (n, partitions, writers) = (12_345, 4, 2);
        let lanes = upsert_lanes(n, partitions, writers);
        assert_eq!(lanes.len(), writers);
        let mut total = 0;
        for (lane, batches) in lanes.iter().enumerate() {
            // Per partition, the last offset of the batches before.
            let mut before: BTreeMap<i32, i64> = BTreeMap::new();
            for folded in batches {
                let size = (folded.puts.len() + folded.deletes.len()) as u64 + folded.superseded;
                assert!(size <= DEFAULT_BATCH_SIZE as u64, "{size}");
                total += size;
                let puts = folded.puts.iter().map(|l| (l.partition, l.offset));
                let deletes = folded.deletes.iter().map(|t| (t.partition, t.offset));
                let mut this: BTreeMap<i32, i64> = BTreeMap::new();
                for (partition, offset) in puts.chain(deletes) {
                    assert_eq!(lane_for(partition as usize, writers), lane);
                    assert!(before.get(&partition).is_none_or(|&b| b < offset));
                    let last = this.entry(partition).or_insert(offset);
                    *last = (*last).max(offset);
                }
                before.extend(this);
            }
        }
        assert_eq!(total, n);
    }
}

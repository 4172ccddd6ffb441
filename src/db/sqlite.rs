//! SQLite's [`Dialect`]: WAL, `synchronous=NORMAL`, multi-row prepared inserts; the rest of a
//! batch (one transaction, begun IMMEDIATE) is [`Writer`]'s.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;

use sqlx::query_builder::Separated;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Connection, QueryBuilder, Sqlite, Transaction};

use super::upsert::{on_conflict_newer, STORED_IS_OLDER};
use super::{
    clean_text, columns, redact, DeadLetter, Dialect, Kind, Row, Tombstone, Writer,
    DEAD_LETTER_COLUMNS,
};
use crate::events::{cents, ts_millis, EventKind, Sale, SensorReading};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// Rows per INSERT statement: 10 bound values a row at most stays well under SQLite's 32766 limit.
/// Only full-size statements are kept prepared: caching one statement per remainder size would
/// fill sqlx's statement cache with large statements and make memory grow with the backlog.
const ROWS_PER_STATEMENT: usize = 1000;

async fn open(
    options: SqliteConnectOptions,
    timeout: Duration,
) -> Result<SqlitePool, (sqlx::Error, &'static str)> {
    let pool = SqlitePoolOptions::new()
        .max_connections(2)
        .acquire_timeout(super::connect_timeout(timeout))
        .connect_with(options)
        .await
        .map_err(|e| (e, "cannot open SQLite database"))?;
    migrate(&pool)
        .await
        .map_err(|e| (e, "applying migrations to"))?;
    Ok(pool)
}

/// Apply the migrations under SQLite's write lock. sqlx takes no lock on SQLite, so two
/// processes opening a new file together would both read "not applied" and both run a
/// migration: harmless for `CREATE … IF NOT EXISTS`, fatal for `ALTER TABLE … ADD COLUMN`.
/// `BEGIN IMMEDIATE` makes the second wait (within the busy timeout) and then find them applied.
async fn migrate(pool: &SqlitePool) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    MIGRATOR.run(&mut *tx).await?;
    tx.commit().await
}

/// WAL pages (4 KiB each) past which the writer checkpoints itself, in its own commit: only when
/// [`checkpointer`] fell behind.
const WRITER_CHECKPOINT_PAGES: &str = "10000";

/// How long [`checkpointer`] waits between checkpoints while the WAL grows, and at most when it
/// does not (the wait doubles while nothing is written).
const CHECKPOINT_BUSY: Duration = Duration::from_millis(10);
const CHECKPOINT_IDLE: Duration = Duration::from_secs(1);

/// Copy the WAL's committed pages into the database file on a connection of its own, until the
/// pool closes.
///
/// A checkpoint copies pages and syncs the file: done by the writer in its commit (SQLite's
/// automatic checkpoint), the batch waits for it — about an eighth of a SQLite consumer's time.
/// A PASSIVE checkpoint here never blocks the writer. A busy writer never leaves it caught up at
/// the start of a transaction (which is when SQLite starts the WAL again from its beginning), so
/// the writer's own checkpoint at [`WRITER_CHECKPOINT_PAGES`] still comes — and finds little
/// left to copy: the WAL stays at about 45 MB, and no batch waits long.
async fn checkpointer(options: SqliteConnectOptions, pool: SqlitePool) {
    let Ok(mut conn) = SqliteConnection::connect_with(&options).await else {
        return;
    };
    let closed = pool.close_event();
    tokio::pin!(closed);
    let (mut wait, mut before) = (CHECKPOINT_BUSY, None);
    loop {
        let checkpoint: Result<(i64, i64, i64), _> =
            sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
                .fetch_one(&mut conn)
                .await;
        // (busy, pages in the WAL, pages copied): the WAL changed since the last look while
        // the database is being written.
        let log = checkpoint.ok().map(|(_, log, _)| log);
        wait = if log.is_some() && log != before {
            CHECKPOINT_BUSY
        } else {
            (wait * 2).min(CHECKPOINT_IDLE)
        };
        before = log;
        tokio::select! {
            _ = &mut closed => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    let _ = conn.close().await;
}

/// The sink of a SQLite database.
pub type SqliteSink = Writer<Sqlite>;

impl Dialect for Sqlite {
    const KIND: Kind = Kind::Sqlite;

    async fn connect(url: &str, timeout: Duration) -> anyhow::Result<SqlitePool> {
        let shown = redact(url);
        let options = SqliteConnectOptions::from_str(url)
            .with_context(|| format!("invalid SQLite URL {shown}"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            // Checkpoints are the background checkpointer's ([`checkpointer`]); the writer
            // checkpoints itself only if that one falls this far behind.
            .pragma("wal_autocheckpoint", WRITER_CHECKPOINT_PAGES)
            // 16 MiB of page cache (default 2 MB): the B-tree pages a batch touches stay in it.
            .pragma("cache_size", "-16384")
            .busy_timeout(super::connect_timeout(timeout));
        // Several consumers started at once on a new file race to switch it to WAL; the losers get
        // SQLITE_BUSY at once (the busy timeout does not cover that step). Retry within --timeout:
        // the winner's work is then simply there.
        let started = std::time::Instant::now();
        loop {
            match open(options.clone(), timeout).await {
                Ok(pool) => {
                    tokio::spawn(checkpointer(options, pool.clone()));
                    return Ok(pool);
                }
                Err((e, _)) if super::is_transient(&e) && started.elapsed() < timeout => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err((e, what)) => {
                    return Err(anyhow::Error::new(e).context(format!("{what} {shown}")))
                }
            }
        }
    }

    async fn begin(pool: &SqlitePool) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        // BEGIN IMMEDIATE takes the write lock up front, so a busy database is noticed (and
        // retried) before any work is done rather than at COMMIT.
        pool.begin_with("BEGIN IMMEDIATE").await
    }

    async fn insert_sales(
        conn: &mut SqliteConnection,
        sales: &[Row<'_, Sale>],
        upsert: bool,
        _first: bool,
    ) -> Result<u64, sqlx::Error> {
        let into = Into::of(EventKind::Sales, upsert);
        insert_rows(conn, into, sales, |row, r| {
            let s = r.event;
            row.push_bind(s.id.to_string())
                .push_bind(ts_millis::format(s.ts))
                .push_bind(s.store_id.as_str())
                .push_bind(cents(s.amount_usd) as f64 / 100.0)
                .push_bind(s.channel.as_str());
        })
        .await
    }

    async fn insert_sensors(
        conn: &mut SqliteConnection,
        readings: &[Row<'_, SensorReading>],
        upsert: bool,
        _first: bool,
    ) -> Result<u64, sqlx::Error> {
        let into = Into::of(EventKind::Sensor, upsert);
        insert_rows(conn, into, readings, |row, r| {
            let s = r.event;
            row.push_bind(s.id.to_string())
                .push_bind(s.sensor_id.as_str())
                .push_bind(s.val)
                .push_bind(s.unit.as_str())
                .push_bind(s.status.as_str())
                .push_bind(ts_millis::format(s.ts));
        })
        .await
    }

    async fn delete_keys(
        conn: &mut SqliteConnection,
        table: &str,
        deletes: &[Tombstone],
    ) -> Result<u64, sqlx::Error> {
        let mut deleted = 0;
        for chunk in deletes.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<Sqlite>::new("WITH d(key, p, o) AS (");
            q.push_values(chunk, |mut row, d| {
                row.push_bind(&d.key)
                    .push_bind(d.partition)
                    .push_bind(d.offset);
            });
            q.push(format!(
                ") DELETE FROM {table} AS t WHERE EXISTS \
                 (SELECT 1 FROM d WHERE d.key = t.key AND {STORED_IS_OLDER})"
            ));
            deleted += q.build().execute(&mut *conn).await?.rows_affected();
        }
        Ok(deleted)
    }

    async fn insert_dead_letters(
        conn: &mut SqliteConnection,
        topic: &str,
        letters: &[DeadLetter],
    ) -> Result<u64, sqlx::Error> {
        let mut inserted = 0;
        for chunk in letters.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<Sqlite>::new(format!(
                "INSERT INTO dead_letters ({DEAD_LETTER_COLUMNS}) "
            ));
            q.push_values(chunk, |mut row, d| {
                row.push_bind(topic)
                    .push_bind(d.partition)
                    .push_bind(d.offset)
                    .push_bind(d.key.as_deref())
                    .push_bind(d.payload.as_deref())
                    .push_bind(clean_text(&d.error));
            });
            q.push(" ON CONFLICT (topic, kafka_partition, kafka_offset) DO NOTHING");
            inserted += q.build().execute(&mut *conn).await?.rows_affected();
        }
        Ok(inserted)
    }
}

/// Where [`insert_rows`] writes: a kind's table (ids already stored skipped), or its `_latest`
/// table (one row per record key, each only over an older row).
struct Into {
    table: &'static str,
    columns: &'static str,
    upsert: bool,
}

impl Into {
    fn of(kind: EventKind, upsert: bool) -> Self {
        let table = if upsert {
            kind.latest_table()
        } else {
            kind.table()
        };
        Self {
            table,
            columns: columns(kind, upsert),
            upsert,
        }
    }

    fn on_conflict(&self) -> String {
        if self.upsert {
            on_conflict_newer(self.columns, NOW)
        } else {
            "ON CONFLICT (id) DO NOTHING".into()
        }
    }
}

/// The current time as SQLite columns store it (RFC 3339 UTC with milliseconds).
const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

/// Insert events [`ROWS_PER_STATEMENT`] to a statement as `into` says: the record key first
/// when upserting, then the event's columns (`fill` binds them), then its partition and offset.
///
/// SQLite runs on sqlx's worker thread: while it executes one statement, this task binds the
/// next one's values, so neither waits for the other.
async fn insert_rows<'r, E: Sync>(
    conn: &mut SqliteConnection,
    into: Into,
    rows: &'r [Row<'r, E>],
    fill: impl Fn(&mut Separated<'_, 'r, Sqlite, &'static str>, &'r Row<'r, E>),
) -> Result<u64, sqlx::Error> {
    let on_conflict = into.on_conflict();
    let statement = |chunk: &'r [Row<'r, E>]| {
        let mut q = QueryBuilder::<'r, Sqlite>::new(format!(
            "INSERT INTO {} AS t ({}) ",
            into.table, into.columns
        ));
        q.push_values(chunk, |mut row, r| {
            if into.upsert {
                row.push_bind(r.key());
            }
            fill(&mut row, r);
            row.push_bind(r.partition).push_bind(r.offset);
        });
        q.push(" ");
        q.push(&on_conflict);
        q
    };
    let mut chunks = rows.chunks(ROWS_PER_STATEMENT);
    let mut next = chunks.next().map(|c| (c.len(), statement(c)));
    let mut inserted = 0;
    while let Some((len, mut q)) = next.take() {
        let executing = q
            .build()
            .persistent(len == ROWS_PER_STATEMENT)
            .execute(&mut *conn);
        let binding = async { chunks.next().map(|c| (c.len(), statement(c))) };
        let (done, built) = futures::future::join(executing, binding).await;
        inserted += done?.rows_affected();
        next = built;
    }
    Ok(inserted)
}

//! SQLite sink: WAL, `synchronous=NORMAL`, multi-row prepared inserts, one transaction per batch.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection, QueryBuilder, Sqlite, Transaction};

use super::{
    clean_text, client_identity, redact, split_kinds, Batch, DeadLetter, Landed, MemberRecord,
    OffsetAdvance, SaleRow, Savepoint, SensorRow, Sink, SinkError, SinkTx,
};
use crate::events::{cents, ts_millis};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// Rows per INSERT statement: 9 bound values a row stays well under SQLite's 32766 limit.
/// Only full-size statements are kept prepared: caching one statement per remainder size would
/// fill sqlx's statement cache with large statements and make memory grow with the backlog.
const ROWS_PER_STATEMENT: usize = 1000;

/// Open (creating the file if missing) and apply the migrations.
pub async fn connect(url: &str, timeout: Duration) -> anyhow::Result<SqlitePool> {
    let shown = redact(url);
    let options = SqliteConnectOptions::from_str(url)
        .with_context(|| format!("invalid SQLite URL {shown}"))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(super::connect_timeout(timeout));
    // Several consumers started at once on a new file race to switch it to WAL; the losers get
    // SQLITE_BUSY at once (the busy timeout does not cover that step). Retry within --timeout:
    // the winner's work is then simply there.
    let started = std::time::Instant::now();
    loop {
        match open(options.clone(), timeout).await {
            Ok(pool) => return Ok(pool),
            Err((e, _)) if super::is_transient(&e) && started.elapsed() < timeout => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err((e, what)) => return Err(anyhow::Error::new(e).context(format!("{what} {shown}"))),
        }
    }
}

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

pub struct SqliteSink {
    pool: SqlitePool,
}

impl SqliteSink {
    pub async fn connect(url: &str, timeout: Duration) -> anyhow::Result<Self> {
        Ok(Self {
            pool: connect(url, timeout).await?,
        })
    }
}

/// A batch's transaction.
pub struct SqliteTx(pub(super) Transaction<'static, Sqlite>);

impl SinkTx for SqliteTx {
    async fn insert_events(&mut self, events: &[Landed]) -> Result<u64, SinkError> {
        let (sales, sensors) = split_kinds(events);
        Ok(Self::insert_sales(&mut self.0, &sales).await?
            + Self::insert_sensors(&mut self.0, &sensors).await?)
    }

    async fn insert_dead_letters(
        &mut self,
        topic: &str,
        letters: &[DeadLetter],
    ) -> Result<u64, SinkError> {
        Ok(Self::insert_dead_letter_rows(&mut self.0, topic, letters).await?)
    }

    async fn advance(&mut self, batch: &Batch, advance: &OffsetAdvance) -> Result<bool, SinkError> {
        let done = match advance.from {
            None => {
                sqlx::query(
                    "INSERT INTO streamlab_offsets
                     (consumer_group, topic, kafka_partition, next_offset, topic_id)
                 VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                )
                .bind(&batch.group)
                .bind(&batch.topic)
                .bind(advance.partition)
                .bind(advance.to)
                .bind(&batch.topic_id)
                .execute(&mut *self.0)
                .await?
            }
            Some(from) => {
                sqlx::query(
                    "UPDATE streamlab_offsets
                 SET next_offset = ?, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
                     topic_id = COALESCE(?, topic_id)
                 WHERE consumer_group = ? AND topic = ? AND kafka_partition = ?
                   AND next_offset = ?",
                )
                .bind(advance.to)
                .bind(&batch.topic_id)
                .bind(&batch.group)
                .bind(&batch.topic)
                .bind(advance.partition)
                .bind(from)
                .execute(&mut *self.0)
                .await?
            }
        };
        Ok(done.rows_affected() == 1)
    }

    async fn savepoint(&mut self, step: Savepoint) -> Result<(), SinkError> {
        sqlx::query(step.sql()).execute(&mut *self.0).await?;
        Ok(())
    }

    async fn commit(self) -> Result<(), SinkError> {
        Ok(self.0.commit().await?)
    }
}

impl SqliteTx {
    async fn insert_sales(
        tx: &mut Transaction<'_, Sqlite>,
        sales: &[SaleRow<'_>],
    ) -> Result<u64, sqlx::Error> {
        let mut inserted = 0;
        for chunk in sales.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO sales_events
                     (id, ts, store_id, amount_usd, channel, kafka_partition, kafka_offset) ",
            );
            q.push_values(chunk, |mut row, (s, landed)| {
                row.push_bind(s.id.to_string())
                    .push_bind(ts_millis::format(s.ts))
                    .push_bind(&s.store_id)
                    .push_bind(cents(s.amount_usd) as f64 / 100.0)
                    .push_bind(&s.channel)
                    .push_bind(landed.partition)
                    .push_bind(landed.offset);
            });
            q.push(" ON CONFLICT (id) DO NOTHING");
            inserted += q
                .build()
                .persistent(chunk.len() == ROWS_PER_STATEMENT)
                .execute(&mut **tx)
                .await?
                .rows_affected();
        }
        Ok(inserted)
    }

    async fn insert_sensors(
        tx: &mut Transaction<'_, Sqlite>,
        readings: &[SensorRow<'_>],
    ) -> Result<u64, sqlx::Error> {
        let mut inserted = 0;
        for chunk in readings.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO sensor_logs
                     (id, sensor_id, val, unit, status, ts, kafka_partition, kafka_offset) ",
            );
            q.push_values(chunk, |mut row, (r, landed)| {
                row.push_bind(r.id.to_string())
                    .push_bind(&r.sensor_id)
                    .push_bind(r.val)
                    .push_bind(&r.unit)
                    .push_bind(&r.status)
                    .push_bind(ts_millis::format(r.ts))
                    .push_bind(landed.partition)
                    .push_bind(landed.offset);
            });
            q.push(" ON CONFLICT (id) DO NOTHING");
            inserted += q
                .build()
                .persistent(chunk.len() == ROWS_PER_STATEMENT)
                .execute(&mut **tx)
                .await?
                .rows_affected();
        }
        Ok(inserted)
    }

    async fn insert_dead_letter_rows(
        tx: &mut Transaction<'_, Sqlite>,
        topic: &str,
        letters: &[DeadLetter],
    ) -> Result<u64, sqlx::Error> {
        let mut inserted = 0;
        for chunk in letters.chunks(ROWS_PER_STATEMENT) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO dead_letters
                     (topic, kafka_partition, kafka_offset, record_key, payload, error) ",
            );
            q.push_values(chunk, |mut row, d| {
                row.push_bind(topic)
                    .push_bind(d.partition)
                    .push_bind(d.offset)
                    .push_bind(d.key.as_deref())
                    .push_bind(d.payload.as_deref())
                    .push_bind(clean_text(&d.error));
            });
            q.push(" ON CONFLICT (topic, kafka_partition, kafka_offset) DO NOTHING");
            inserted += q.build().execute(&mut **tx).await?.rows_affected();
        }
        Ok(inserted)
    }
}

impl Sink for SqliteSink {
    type Tx = SqliteTx;

    async fn load_offsets(
        &mut self,
        group: &str,
        topic: &str,
    ) -> Result<BTreeMap<i32, i64>, SinkError> {
        let rows: Vec<(i32, i64)> = sqlx::query_as(
            "SELECT kafka_partition, next_offset FROM streamlab_offsets
             WHERE consumer_group = ? AND topic = ?",
        )
        .bind(group)
        .bind(topic)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().collect())
    }

    async fn begin(&mut self) -> Result<SqliteTx, SinkError> {
        // BEGIN IMMEDIATE takes the write lock up front, so a busy database is noticed (and
        // retried) before any work is done rather than at COMMIT.
        Ok(SqliteTx(self.pool.begin_with("BEGIN IMMEDIATE").await?))
    }

    async fn stored_topic_ids(
        &mut self,
        group: &str,
        topic: &str,
    ) -> Result<BTreeMap<i32, String>, SinkError> {
        let rows: Vec<(i32, String)> = sqlx::query_as(
            "SELECT kafka_partition, topic_id FROM streamlab_offsets
             WHERE consumer_group = ? AND topic = ? AND topic_id IS NOT NULL",
        )
        .bind(group)
        .bind(topic)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().collect())
    }

    async fn record_member(&mut self, m: &MemberRecord) -> Result<(), SinkError> {
        match &m.holding {
            Some(h) => sqlx::query(
                "INSERT INTO streamlab_members
                     (consumer_group, topic, member_id, generation, partitions, client)
                 VALUES (?, ?, ?, ?, ?, ?)
                 ON CONFLICT (consumer_group, topic, member_id) DO UPDATE
                 SET generation = excluded.generation, partitions = excluded.partitions,
                     client = excluded.client,
                     assigned_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
            )
            .bind(&m.group)
            .bind(&m.topic)
            .bind(&m.member_id)
            .bind(h.generation)
            .bind(h.partitions_text())
            .bind(client_identity()),
            None => sqlx::query(
                "DELETE FROM streamlab_members
                 WHERE consumer_group = ? AND topic = ? AND member_id = ?",
            )
            .bind(&m.group)
            .bind(&m.topic)
            .bind(&m.member_id),
        }
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

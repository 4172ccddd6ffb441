//! PostgreSQL sink: one round trip per table per batch (UNNEST arrays into
//! `INSERT … SELECT … ON CONFLICT (id) DO NOTHING`), all inside one transaction.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    clean_text, client_identity, redact, split_kinds, Batch, DeadLetter, Landed, MemberRecord,
    OffsetAdvance, SaleRow, Savepoint, SensorRow, Sink, SinkError, SinkTx,
};
use crate::events::cents;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// Connect (creating the database if it does not exist yet) and apply the migrations.
pub async fn connect(url: &str, timeout: Duration) -> anyhow::Result<PgPool> {
    let shown = redact(url);
    // A session of ours left idle inside a transaction for longer than a statement's deadline
    // has been given up by this process (its connection froze, or the process was stopped):
    // the server ends it rather than hold its locks — the offset rows a successor must update,
    // the ids it must insert — until TCP notices, which it may never do.
    let idle_limit = super::connect_timeout(timeout).as_millis().to_string();
    let options = PgConnectOptions::from_str(url)
        .with_context(|| format!("invalid PostgreSQL URL {shown}"))?
        .options([("idle_in_transaction_session_timeout", idle_limit)]);
    warn_unrecognized_parameters(url);
    let exists = tokio::time::timeout(timeout, Postgres::database_exists(url))
        .await
        .map_err(|_| anyhow::anyhow!("cannot reach PostgreSQL at {shown} within {timeout:?}"))?
        .with_context(|| format!("cannot connect to PostgreSQL at {shown}"))?;
    if !exists {
        match Postgres::create_database(url).await {
            Ok(()) => tracing::info!("created database {shown}"),
            // Another consumer started at the same moment created it first.
            Err(_) if Postgres::database_exists(url).await.unwrap_or(false) => {}
            Err(e) => {
                return Err(
                    anyhow::Error::new(e).context(format!("creating the database of {shown}"))
                )
            }
        }
    }
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(super::connect_timeout(timeout))
        .connect_with(options)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {shown}"))?;
    MIGRATOR
        .run(&pool)
        .await
        .with_context(|| format!("applying migrations to {shown}"))?;
    Ok(pool)
}

/// Warn about URL parameters sqlx ignores, by name only. sqlx's own warning shows the value
/// (which may be a password: `sslpassword=…` is not read by sqlx), so it is silenced in
/// `logging`. The keys are those sqlx 0.8 reads (`PgConnectOptions::parse_from_url`).
pub(crate) fn warn_unrecognized_parameters(url: &str) {
    let Ok(parsed) = url::Url::parse(url) else {
        return;
    };
    for (key, _) in parsed.query_pairs() {
        let known = matches!(
            &*key,
            "sslmode"
                | "ssl-mode"
                | "sslrootcert"
                | "ssl-root-cert"
                | "ssl-ca"
                | "sslcert"
                | "ssl-cert"
                | "sslkey"
                | "ssl-key"
                | "statement-cache-capacity"
                | "host"
                | "hostaddr"
                | "port"
                | "dbname"
                | "user"
                | "password"
                | "application_name"
                | "options"
        ) || key.starts_with("options[");
        if !known {
            tracing::warn!("ignoring unrecognized parameter '{key}' in the PostgreSQL URL");
        }
    }
}

pub struct PgSink {
    pool: PgPool,
}

impl PgSink {
    pub async fn connect(url: &str, timeout: Duration) -> anyhow::Result<Self> {
        Ok(Self {
            pool: connect(url, timeout).await?,
        })
    }
}

/// A batch's transaction.
pub struct PgTx(pub(super) Transaction<'static, Postgres>);

impl SinkTx for PgTx {
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
                    "INSERT INTO public.streamlab_offsets
                         (consumer_group, topic, kafka_partition, next_offset, topic_id)
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
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
                    "UPDATE public.streamlab_offsets SET next_offset = $4, updated_at = now(),
                            topic_id = COALESCE($6, topic_id)
                     WHERE consumer_group = $1 AND topic = $2 AND kafka_partition = $3
                       AND next_offset = $5",
                )
                .bind(&batch.group)
                .bind(&batch.topic)
                .bind(advance.partition)
                .bind(advance.to)
                .bind(from)
                .bind(&batch.topic_id)
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

impl PgTx {
    async fn insert_sales(
        tx: &mut Transaction<'_, Postgres>,
        sales: &[SaleRow<'_>],
    ) -> Result<u64, sqlx::Error> {
        if sales.is_empty() {
            return Ok(0);
        }
        let ids: Vec<Uuid> = sales.iter().map(|(s, _)| s.id).collect();
        let ts: Vec<OffsetDateTime> = sales.iter().map(|(s, _)| s.ts).collect();
        let stores: Vec<&str> = sales.iter().map(|(s, _)| s.store_id.as_str()).collect();
        let amounts: Vec<i64> = sales.iter().map(|(s, _)| cents(s.amount_usd)).collect();
        let channels: Vec<&str> = sales.iter().map(|(s, _)| s.channel.as_str()).collect();
        let partitions: Vec<i32> = sales.iter().map(|(_, l)| l.partition).collect();
        let offsets: Vec<i64> = sales.iter().map(|(_, l)| l.offset).collect();
        let done = sqlx::query(
            "INSERT INTO public.sales_events
                 (id, ts, store_id, amount_usd, channel, kafka_partition, kafka_offset)
             SELECT id, ts, store_id, cents::numeric / 100, channel, p, o
             FROM UNNEST($1::uuid[], $2::timestamptz[], $3::text[], $4::int8[], $5::text[],
                         $6::int4[], $7::int8[]) AS t(id, ts, store_id, cents, channel, p, o)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(ids)
        .bind(ts)
        .bind(stores)
        .bind(amounts)
        .bind(channels)
        .bind(partitions)
        .bind(offsets)
        .execute(&mut **tx)
        .await?;
        Ok(done.rows_affected())
    }

    async fn insert_sensors(
        tx: &mut Transaction<'_, Postgres>,
        readings: &[SensorRow<'_>],
    ) -> Result<u64, sqlx::Error> {
        if readings.is_empty() {
            return Ok(0);
        }
        let ids: Vec<Uuid> = readings.iter().map(|(r, _)| r.id).collect();
        let sensors: Vec<&str> = readings.iter().map(|(r, _)| r.sensor_id.as_str()).collect();
        let vals: Vec<f64> = readings.iter().map(|(r, _)| r.val).collect();
        let units: Vec<&str> = readings.iter().map(|(r, _)| r.unit.as_str()).collect();
        let statuses: Vec<&str> = readings.iter().map(|(r, _)| r.status.as_str()).collect();
        let ts: Vec<OffsetDateTime> = readings.iter().map(|(r, _)| r.ts).collect();
        let partitions: Vec<i32> = readings.iter().map(|(_, l)| l.partition).collect();
        let offsets: Vec<i64> = readings.iter().map(|(_, l)| l.offset).collect();
        let done = sqlx::query(
            "INSERT INTO public.sensor_logs
                 (id, sensor_id, val, unit, status, ts, kafka_partition, kafka_offset)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::float8[], $4::text[], $5::text[],
                                  $6::timestamptz[], $7::int4[], $8::int8[])
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(ids)
        .bind(sensors)
        .bind(vals)
        .bind(units)
        .bind(statuses)
        .bind(ts)
        .bind(partitions)
        .bind(offsets)
        .execute(&mut **tx)
        .await?;
        Ok(done.rows_affected())
    }

    async fn insert_dead_letter_rows(
        tx: &mut Transaction<'_, Postgres>,
        topic: &str,
        d: &[DeadLetter],
    ) -> Result<u64, sqlx::Error> {
        if d.is_empty() {
            return Ok(0);
        }
        let partitions: Vec<i32> = d.iter().map(|x| x.partition).collect();
        let offsets: Vec<i64> = d.iter().map(|x| x.offset).collect();
        let keys: Vec<Option<Vec<u8>>> = d.iter().map(|x| x.key.clone()).collect();
        let payloads: Vec<Option<Vec<u8>>> = d.iter().map(|x| x.payload.clone()).collect();
        let errors: Vec<String> = d.iter().map(|x| clean_text(&x.error)).collect();
        let done = sqlx::query(
            "INSERT INTO public.dead_letters
                 (topic, kafka_partition, kafka_offset, record_key, payload, error)
             SELECT $1, * FROM UNNEST($2::int4[], $3::int8[], $4::bytea[], $5::bytea[], $6::text[])
             ON CONFLICT (topic, kafka_partition, kafka_offset) DO NOTHING",
        )
        .bind(topic)
        .bind(partitions)
        .bind(offsets)
        .bind(keys)
        .bind(payloads)
        .bind(errors)
        .execute(&mut **tx)
        .await?;
        Ok(done.rows_affected())
    }
}

impl Sink for PgSink {
    type Tx = PgTx;

    async fn load_offsets(
        &mut self,
        group: &str,
        topic: &str,
    ) -> Result<BTreeMap<i32, i64>, SinkError> {
        let rows: Vec<(i32, i64)> = sqlx::query_as(
            "SELECT kafka_partition, next_offset FROM public.streamlab_offsets
             WHERE consumer_group = $1 AND topic = $2",
        )
        .bind(group)
        .bind(topic)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().collect())
    }

    async fn begin(&mut self) -> Result<PgTx, SinkError> {
        Ok(PgTx(self.pool.begin().await?))
    }

    async fn stored_topic_ids(
        &mut self,
        group: &str,
        topic: &str,
    ) -> Result<BTreeMap<i32, String>, SinkError> {
        let rows: Vec<(i32, String)> = sqlx::query_as(
            "SELECT kafka_partition, topic_id FROM public.streamlab_offsets
             WHERE consumer_group = $1 AND topic = $2 AND topic_id IS NOT NULL",
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
                "INSERT INTO public.streamlab_members
                     (consumer_group, topic, member_id, generation, partitions, client)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (consumer_group, topic, member_id) DO UPDATE
                 SET generation = EXCLUDED.generation, partitions = EXCLUDED.partitions,
                     client = EXCLUDED.client, assigned_at = now()",
            )
            .bind(&m.group)
            .bind(&m.topic)
            .bind(&m.member_id)
            .bind(h.generation)
            .bind(h.partitions_text())
            .bind(client_identity()),
            None => sqlx::query(
                "DELETE FROM public.streamlab_members
                 WHERE consumer_group = $1 AND topic = $2 AND member_id = $3",
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

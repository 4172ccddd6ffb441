//! PostgreSQL's [`Dialect`]: events go in by binary `COPY` under a savepoint ([`super::pg_copy`]);
//! a batch COPY cannot take (an id already stored, a refused value) goes in by one round trip per
//! table (UNNEST arrays into `INSERT … SELECT … ON CONFLICT (id) DO NOTHING`). The rest of a
//! batch is [`Writer`]'s.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};
use time::OffsetDateTime;
use uuid::Uuid;

use super::pg_copy::{bulk_upsert, copy_rows, Copied, CopyRow, Upserted};
use super::upsert::{on_conflict_newer, STORED_IS_OLDER};
use super::{
    clean_text, columns, redact, split_kinds, DeadLetter, Dialect, Folded, Kind, Row, Tombstone,
    Writer, DEAD_LETTER_COLUMNS,
};
use crate::events::{cents, EventKind, Sale, SensorReading};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

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

/// Connections a consumer may open: one per `--writers` (at most 8), and one for the rest.
const MAX_CONNECTIONS: u32 = 9;

/// Fewer rows than this go straight in with ON CONFLICT: one round trip, where COPY may take two
/// (savepoint, copy) — a caught-up consumer writes small batches, and waits on them.
const COPY_MIN_ROWS: usize = 64;

/// Create the database of `url`, within `limit`. Another consumer started at the same moment
/// may have created it first, which is as good.
async fn create_database(url: &str, limit: Duration) -> anyhow::Result<()> {
    let shown = redact(url);
    let creating = tokio::time::timeout(limit, Postgres::create_database(url));
    let silent = || silent(&format!("creating the database of {shown}"), limit, "");
    match creating.await.map_err(|_| silent())? {
        Ok(()) => tracing::info!("created database {shown}"),
        Err(_) if database_exists_within(url, limit).await => {}
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("creating the database of {shown}")))
        }
    }
    Ok(())
}

/// Whether the database exists, false also when the server does not say so within `limit`.
async fn database_exists_within(url: &str, limit: Duration) -> bool {
    let asking = tokio::time::timeout(limit, Postgres::database_exists(url));
    matches!(asking.await, Ok(Ok(true)))
}

/// Apply the migrations, within `limit`: the migrator waits for an advisory lock another
/// process may hold for good.
async fn migrate(pool: &PgPool, shown: &str, limit: Duration) -> anyhow::Result<()> {
    let doing = format!("applying migrations to {shown}");
    tokio::time::timeout(limit, MIGRATOR.run(pool))
        .await
        .map_err(|_| {
            silent(
                &doing,
                limit,
                " (is another process holding the migration lock?)",
            )
        })?
        .context(doing)
}

/// Whether a connection handed back to the pool still reads the answers to its own requests.
///
/// A statement's future dropped mid-way — a write lane given up at its deadline, a COPY whose
/// server was frozen — leaves sqlx's count of pending answers behind the server's: the rest of
/// the COPY's answer is still on the wire, and the next request on the connection would read it
/// as its own (a BEGIN that finds the connection idle: "unexpected connection status after
/// attempting to begin transaction"). sqlx's own check on release (an empty Sync) cannot tell,
/// so the pool asks a question with a known answer and closes a connection that gets another.
async fn in_step(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    let answer: Option<i32> = sqlx::query_scalar("SELECT 1")
        .fetch_optional(&mut *conn)
        .await?;
    let in_step = answer == Some(1);
    if !in_step {
        tracing::debug!("closing a PostgreSQL connection out of step with its answers");
    }
    Ok(in_step)
}

/// "cannot connect to PostgreSQL at URL: why", a refused certificate said in words.
fn connect_failed(shown: &str, e: sqlx::Error) -> anyhow::Error {
    let doing = format!("cannot connect to PostgreSQL at {shown}");
    match super::error::tls_refusal(&e) {
        Some(refusal) => anyhow::anyhow!("{doing}: {refusal}"),
        None => anyhow::Error::new(e).context(doing),
    }
}

/// "`doing`: no answer within 10s`hint`".
fn silent(doing: &str, limit: Duration, hint: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{doing}: no answer within {}{hint}",
        humantime::format_duration(limit)
    )
}

/// The sink of a PostgreSQL database.
pub type PgSink = Writer<Postgres>;

impl Dialect for Postgres {
    const KIND: Kind = Kind::Postgres;

    async fn connect(url: &str, timeout: Duration) -> anyhow::Result<PgPool> {
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
            .map_err(|e| connect_failed(&shown, e))?;
        let limit = super::connect_timeout(timeout);
        if !exists {
            create_database(url, limit).await?;
        }
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(limit)
            .after_release(|conn, _| Box::pin(in_step(conn)))
            .connect_with(options)
            .await
            .map_err(|e| connect_failed(&shown, e))?;
        migrate(&pool, &shown, limit).await?;
        Ok(pool)
    }

    async fn begin(pool: &PgPool) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        pool.begin().await
    }

    async fn insert_sales(
        conn: &mut PgConnection,
        sales: &[Row<'_, Sale>],
        upsert: bool,
        first: bool,
    ) -> Result<u64, sqlx::Error> {
        if upsert {
            return insert_sales_on_conflict(conn, sales, true).await;
        }
        insert_events(conn, sales, first).await
    }

    async fn insert_sensors(
        conn: &mut PgConnection,
        readings: &[Row<'_, SensorReading>],
        upsert: bool,
        first: bool,
    ) -> Result<u64, sqlx::Error> {
        if upsert {
            return insert_sensors_on_conflict(conn, readings, true).await;
        }
        insert_events(conn, readings, first).await
    }

    async fn delete_keys(
        conn: &mut PgConnection,
        table: &str,
        deletes: &[Tombstone],
    ) -> Result<u64, sqlx::Error> {
        let keys: Vec<&str> = deletes.iter().map(|d| d.key.as_str()).collect();
        let (partitions, offsets): (Vec<i32>, Vec<i64>) =
            deletes.iter().map(|d| (d.partition, d.offset)).unzip();
        let done = sqlx::query(&format!(
            "DELETE FROM public.{table} AS t
             USING UNNEST($1::text[], $2::int4[], $3::int8[]) AS d(key, p, o)
             WHERE t.key = d.key AND {STORED_IS_OLDER}"
        ))
        .bind(keys)
        .bind(partitions)
        .bind(offsets)
        .execute(conn)
        .await?;
        Ok(done.rows_affected())
    }

    async fn insert_dead_letters(
        conn: &mut PgConnection,
        topic: &str,
        d: &[DeadLetter],
    ) -> Result<u64, sqlx::Error> {
        let partitions: Vec<i32> = d.iter().map(|x| x.partition).collect();
        let offsets: Vec<i64> = d.iter().map(|x| x.offset).collect();
        let keys: Vec<Option<&[u8]>> = d.iter().map(|x| x.key.as_deref()).collect();
        let payloads: Vec<Option<&[u8]>> = d.iter().map(|x| x.payload.as_deref()).collect();
        let errors: Vec<String> = d.iter().map(|x| clean_text(&x.error)).collect();
        let done = sqlx::query(&format!(
            "INSERT INTO public.dead_letters ({DEAD_LETTER_COLUMNS})
             SELECT $1, * FROM UNNEST($2::int4[], $3::int8[], $4::bytea[], $5::bytea[], $6::text[])
             ON CONFLICT (topic, kafka_partition, kafka_offset) DO NOTHING"
        ))
        .bind(topic)
        .bind(partitions)
        .bind(offsets)
        .bind(keys)
        .bind(payloads)
        .bind(errors)
        .execute(conn)
        .await?;
        Ok(done.rows_affected())
    }
}

/// A way to apply a batch's upserts (`bench` measures `consume --upsert` against the faster).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpsertWay {
    /// Binary COPY of values and tombstones into a staging table, then one round trip of
    /// INSERT … SELECT … ON CONFLICT and DELETE … USING the stage.
    Staged,
    /// consume's own statements: UNNEST arrays into INSERT … ON CONFLICT, DELETE … USING UNNEST.
    Unnest,
}

/// A batch of sales changes folded by [`super::latest_per_key`], applied to `sales_latest`
/// `way` (the staged way needs [`super::create_upsert_stage`] on this connection first): what
/// `bench` measures `consume --upsert` against, without its fenced offsets and dead letters.
pub async fn bulk_upsert_sales(
    conn: &mut PgConnection,
    folded: &Folded,
    way: UpsertWay,
) -> Result<Upserted, sqlx::Error> {
    let (sales, _) = split_kinds(&folded.puts);
    if way == UpsertWay::Staged {
        return bulk_upsert(conn, &sales, &folded.deletes).await;
    }
    let mut done = Upserted::default();
    if !sales.is_empty() {
        done.upserted = insert_sales_on_conflict(conn, &sales, true).await?;
    }
    if !folded.deletes.is_empty() {
        let table = EventKind::Sales.latest_table();
        done.deleted = Postgres::delete_keys(conn, table, &folded.deletes).await?;
    }
    Ok(done)
}

/// Events of one table: COPY first (batches of [`COPY_MIN_ROWS`] or more), the careful way
/// when the batch is small or COPY is refused (`first`: by then in a new transaction).
async fn insert_events<R: EventRows>(
    conn: &mut PgConnection,
    rows: &[R],
    first: bool,
) -> Result<u64, sqlx::Error> {
    if rows.len() >= COPY_MIN_ROWS {
        if let Copied::Inserted(n) = copy_rows(conn, rows, first).await? {
            return Ok(n);
        }
    }
    R::on_conflict(conn, rows).await
}

/// Rows with a careful insert beside their COPY encoding.
trait EventRows: CopyRow {
    /// Insert `rows`, skipping ids already stored: any duplicate, any refusal, one round trip.
    fn on_conflict<'c>(
        conn: &'c mut PgConnection,
        rows: &'c [Self],
    ) -> impl std::future::Future<Output = Result<u64, sqlx::Error>> + Send + 'c;
}

impl EventRows for Row<'_, Sale> {
    fn on_conflict<'c>(
        conn: &'c mut PgConnection,
        rows: &'c [Self],
    ) -> impl std::future::Future<Output = Result<u64, sqlx::Error>> + Send + 'c {
        insert_sales_on_conflict(conn, rows, false)
    }
}

impl EventRows for Row<'_, SensorReading> {
    fn on_conflict<'c>(
        conn: &'c mut PgConnection,
        rows: &'c [Self],
    ) -> impl std::future::Future<Output = Result<u64, sqlx::Error>> + Send + 'c {
        insert_sensors_on_conflict(conn, rows, false)
    }
}

/// The rows' partitions and offsets, as two arrays.
fn positions<E>(rows: &[Row<'_, E>]) -> (Vec<i32>, Vec<i64>) {
    rows.iter().map(|r| (r.partition, r.offset)).unzip()
}

/// `INSERT … SELECT <select> FROM UNNEST($1::text[] (the keys), <arrays>) AS u(k, <names>)`
/// into the kind's table, skipping ids already stored, or (`upsert`) into its `_latest` table by
/// key, each row only over an older one.
fn unnest_insert(kind: EventKind, upsert: bool, select: &str, arrays: &str, names: &str) -> String {
    let columns = columns(kind, upsert);
    let (table, key, conflict) = if upsert {
        let conflict = on_conflict_newer(columns, "now()");
        (kind.latest_table(), "k, ", conflict)
    } else {
        let conflict = "ON CONFLICT (id) DO NOTHING".to_string();
        (kind.table(), "", conflict)
    };
    format!(
        "INSERT INTO public.{table} AS t ({columns})
             SELECT {key}{select} FROM UNNEST($1::text[], {arrays}) AS u(k, {names})
             {conflict}"
    )
}

/// Sales, skipping ids already stored (the careful way: any duplicate, any refusal), or
/// upserted by key.
async fn insert_sales_on_conflict(
    conn: &mut PgConnection,
    sales: &[Row<'_, Sale>],
    upsert: bool,
) -> Result<u64, sqlx::Error> {
    let keys: Vec<Option<&str>> = sales.iter().map(Row::key).collect();
    let ids: Vec<Uuid> = sales.iter().map(|r| r.event.id).collect();
    let ts: Vec<OffsetDateTime> = sales.iter().map(|r| r.event.ts).collect();
    let stores: Vec<&str> = sales.iter().map(|r| r.event.store_id.as_str()).collect();
    let amounts: Vec<i64> = sales.iter().map(|r| cents(r.event.amount_usd)).collect();
    let channels: Vec<&str> = sales.iter().map(|r| r.event.channel.as_str()).collect();
    let (partitions, offsets) = positions(sales);
    let statement = unnest_insert(
        EventKind::Sales,
        upsert,
        "id, ts, store_id, cents::numeric / 100, channel, p, o",
        "$2::uuid[], $3::timestamptz[], $4::text[], $5::int8[], $6::text[], $7::int4[], $8::int8[]",
        "id, ts, store_id, cents, channel, p, o",
    );
    let done = sqlx::query(&statement)
        .bind(keys)
        .bind(ids)
        .bind(ts)
        .bind(stores)
        .bind(amounts)
        .bind(channels)
        .bind(partitions)
        .bind(offsets)
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}

/// Sensor readings, skipping ids already stored (the careful way), or upserted by key.
async fn insert_sensors_on_conflict(
    conn: &mut PgConnection,
    readings: &[Row<'_, SensorReading>],
    upsert: bool,
) -> Result<u64, sqlx::Error> {
    let keys: Vec<Option<&str>> = readings.iter().map(Row::key).collect();
    let ids: Vec<Uuid> = readings.iter().map(|r| r.event.id).collect();
    let sensors: Vec<&str> = readings
        .iter()
        .map(|r| r.event.sensor_id.as_str())
        .collect();
    let vals: Vec<f64> = readings.iter().map(|r| r.event.val).collect();
    let units: Vec<&str> = readings.iter().map(|r| r.event.unit.as_str()).collect();
    let statuses: Vec<&str> = readings.iter().map(|r| r.event.status.as_str()).collect();
    let ts: Vec<OffsetDateTime> = readings.iter().map(|r| r.event.ts).collect();
    let (partitions, offsets) = positions(readings);
    let names = "id, sensor_id, val, unit, status, ts, p, o";
    let statement = unnest_insert(
        EventKind::Sensor,
        upsert,
        names,
        "$2::uuid[], $3::text[], $4::float8[], $5::text[], $6::text[], $7::timestamptz[], \
         $8::int4[], $9::int8[]",
        names,
    );
    let done = sqlx::query(&statement)
        .bind(keys)
        .bind(ids)
        .bind(sensors)
        .bind(vals)
        .bind(units)
        .bind(statuses)
        .bind(ts)
        .bind(partitions)
        .bind(offsets)
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}

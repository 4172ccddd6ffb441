//! What `streamlab bench` asks of a database besides what `consume` writes: which PostgreSQL
//! backends serve a database (their CPU is measured), the latency of stored rows, a scratch
//! database dropped, SQLite's page cache for a bulk load.

use sqlx::{Connection, PgConnection, SqliteConnection};

/// The pids of the PostgreSQL backends connected to database `name`.
pub async fn pg_backend_pids(conn: &mut PgConnection, name: &str) -> sqlx::Result<Vec<i32>> {
    sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE datname = $1")
        .bind(name)
        .fetch_all(conn)
        .await
}

/// The pid of the PostgreSQL backend serving `conn`.
pub async fn pg_backend_pid(conn: &mut PgConnection) -> sqlx::Result<i32> {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(conn)
        .await
}

/// p50 and p99, in milliseconds, of (row written − event ts) over `sales_events`; `None` when
/// the table is empty.
pub async fn pg_ingest_latency_ms(
    conn: &mut PgConnection,
) -> sqlx::Result<(Option<f64>, Option<f64>)> {
    // ingested_at is now() of the writing transaction, which commits right after.
    sqlx::query_as(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)
         FROM (SELECT EXTRACT(EPOCH FROM ingested_at - ts) * 1000 AS ms FROM sales_events) AS l",
    )
    .fetch_one(conn)
    .await
}

/// Drop database `name` on the server `admin_url` reaches, its connections too; a failure is
/// ignored (a scratch database left behind costs nothing but space).
pub async fn pg_drop_database(admin_url: &str, name: &str) {
    if let Ok(mut conn) = PgConnection::connect(admin_url).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut conn)
            .await;
    }
}

/// A page cache big enough for a whole bulk-load transaction (256 MiB): with SQLite's default
/// 2 MB, a million-row transaction spills pages mid-way and measures the spill, not the database.
pub async fn sqlite_large_cache(conn: &mut SqliteConnection) -> sqlx::Result<()> {
    sqlx::query("PRAGMA cache_size = -262144")
        .execute(conn)
        .await
        .map(drop)
}

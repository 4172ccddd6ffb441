//! The read side: what `check` and `watch` ask of a database — the rows that landed, the dead
//! letters, the stored offsets and recorded members — through one read-only pool of sqlx's
//! `Any` driver.
//!
//! Each query is written once; the few fragments where PostgreSQL and SQLite differ
//! (timestamps as text, casts, the catalog) are chosen by the [`Kind`]. The bookkeeping
//! queries are `offsets.rs`'s, shared with the writer.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Row};

use super::members::Recorded;
use super::{offsets, redact, Kind, SinkError, Target};
use crate::events::EventKind;

/// A read-only connection to either database. Every query has a deadline, `--timeout`, as the
/// writer's statements do ([`Reader::within`]): a frozen database or a lock held elsewhere ends
/// a read in one line instead of hanging it.
pub struct Reader {
    pub(super) pool: AnyPool,
    pub(super) kind: Kind,
    limit: Duration,
    /// "PostgreSQL at postgres://app:***@…", for the error.
    database: String,
}

/// How many rows a table holds and its newest `ts` (RFC 3339 UTC, milliseconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rows {
    pub count: i64,
    pub newest_ts: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Throughput {
    /// Rows landed (by ingestion time) per second over the last minute.
    pub last_1m_per_sec: f64,
    /// … and over the last five minutes.
    pub last_5m_per_sec: f64,
}

/// How many rows hold a value.
#[derive(Debug, Serialize)]
pub struct Share {
    pub value: String,
    pub rows: i64,
}

/// What a check on a table's rows counts: zero is healthy.
#[derive(Debug, Clone, Copy)]
pub enum Offending<'a> {
    /// 1 when this column (`id`; `key` in an upsert table) is not the table's primary key
    /// (duplicates cannot be prevented), else 0.
    NoPrimaryKeyOn(&'a str),
    /// Values of this column that appear more than once.
    Duplicates(&'a str),
    /// Rows whose `ts` is more than this many minutes in the future.
    FutureTs { minutes: i64 },
    /// Rows with a negative `amount_usd`.
    NegativeAmounts,
    /// Rows whose `column` holds none of `known`.
    Unknown {
        column: &'a str,
        known: &'a [&'a str],
    },
}

impl Reader {
    /// A read-only pool over the target: it must exist already (reading creates nothing).
    pub async fn connect(target: &Target, timeout: Duration) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let url = &target.url;
        let shown = redact(url);
        let unreachable =
            |e: &dyn std::fmt::Display| anyhow::anyhow!("cannot reach the database {shown}: {e}");
        match target.kind {
            Kind::Postgres => super::pg::warn_unrecognized_parameters(url),
            Kind::Sqlite => {
                let path = url
                    .trim_start_matches("sqlite://")
                    .trim_start_matches("sqlite:");
                let path = path.split('?').next().unwrap_or_default();
                if path != ":memory:" && !std::path::Path::new(path).exists() {
                    return Err(unreachable(&"no such file (run `streamlab consume` first)"));
                }
            }
        }
        let connecting = AnyPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(timeout)
            .connect(url);
        match tokio::time::timeout(timeout, connecting).await {
            Ok(Ok(pool)) => Ok(Self {
                pool,
                kind: target.kind,
                limit: super::connect_timeout(timeout),
                database: target.describe(),
            }),
            Ok(Err(e)) => Err(match super::error::tls_refusal(&e) {
                Some(refusal) => unreachable(&refusal),
                None => unreachable(&e),
            }),
            Err(_) => Err(unreachable(&"no answer in time")),
        }
    }

    /// `query`'s answer, or "PostgreSQL at … did not answer within 10s" once the deadline has
    /// passed without it (the deadline the writer's statements have: [`super::deadline`]).
    pub(super) async fn within<T>(
        &self,
        query: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, SinkError> {
        let answer = async { Ok(query.await?) };
        super::deadline::within(self.limit, &self.database, answer).await
    }

    /// Whether `table` exists (in `public`, on PostgreSQL).
    pub async fn has_table(&self, table: &str) -> Result<bool> {
        let sql = match self.kind {
            Kind::Sqlite => "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = $1",
            Kind::Postgres => {
                "SELECT COUNT(*) FROM information_schema.tables
                 WHERE table_schema = 'public' AND table_name = $1"
            }
        };
        let row = self
            .within(sqlx::query(sql).bind(table).fetch_one(&self.pool))
            .await?;
        Ok(row.try_get::<i64, _>(0)? > 0)
    }

    /// How many rows `table` holds, and its newest `ts`.
    pub async fn rows(&self, table: &str) -> Result<Rows> {
        let sql = format!(
            "SELECT {}, {} FROM {table}",
            self.int("COUNT(*)"),
            self.ts_text("MAX(ts)")
        );
        let row = self.within(sqlx::query(&sql).fetch_one(&self.pool)).await?;
        Ok(Rows {
            count: row.try_get(0)?,
            newest_ts: row.try_get(1)?,
        })
    }

    /// How many rows of `table` (an events table) a check finds at fault.
    pub async fn offending(&self, table: &str, what: Offending<'_>) -> Result<i64> {
        let sql = match what {
            Offending::NoPrimaryKeyOn(column) => {
                format!("SELECT 1 - ({})", self.primary_key_on(table, column))
            }
            Offending::Duplicates(column) => format!(
                "SELECT COUNT(*) FROM (SELECT {column} FROM {table} GROUP BY {column} \
                 HAVING COUNT(*) > 1) AS dup"
            ),
            Offending::FutureTs { minutes } => format!(
                "SELECT COUNT(*) FROM {table} WHERE ts > {}",
                self.now_plus_minutes(minutes)
            ),
            Offending::NegativeAmounts => {
                format!("SELECT COUNT(*) FROM {table} WHERE amount_usd < 0")
            }
            Offending::Unknown { column, known } => {
                let known: Vec<String> = known.iter().map(|v| format!("'{v}'")).collect();
                format!(
                    "SELECT COUNT(*) FROM {table} WHERE {column} NOT IN ({})",
                    known.join(", ")
                )
            }
        };
        self.count(&sql).await
    }

    /// How many records were dead-lettered, of `topic` or of any. (The letters themselves are
    /// read by [`Reader::dead_letter_rows`].)
    pub async fn dead_letter_count(&self, topic: Option<&str>) -> Result<i64> {
        let mut sql = format!("SELECT {} FROM dead_letters", self.int("COUNT(*)"));
        if topic.is_some() {
            sql.push_str(" WHERE topic = $1");
        }
        let query = topic.into_iter().fold(sqlx::query(&sql), |q, t| q.bind(t));
        let row = self.within(query.fetch_one(&self.pool)).await?;
        Ok(row.try_get(0)?)
    }

    /// The ten newest rows of `table`, of `kind`'s columns, column by column (numbers as
    /// numbers), in the table's column order.
    pub async fn newest(
        &self,
        kind: EventKind,
        table: &str,
    ) -> Result<Vec<serde_json::Map<String, serde_json::Value>>> {
        let columns = self.newest_columns(kind);
        let select: Vec<&str> = columns.iter().map(|(_, sql, _)| sql.as_str()).collect();
        let sql = format!(
            "SELECT {} FROM {table} ORDER BY ts DESC LIMIT 10",
            select.join(", ")
        );
        let rows = self.within(sqlx::query(&sql).fetch_all(&self.pool)).await?;
        rows.iter().map(|row| row_to_map(row, &columns)).collect()
    }

    /// Each row's key and the record it holds (`--upsert` tables): key → (partition, offset).
    pub async fn latest_positions(&self, table: &str) -> Result<BTreeMap<String, (i32, i64)>> {
        let sql = format!(
            "SELECT key, {}, {} FROM {table}",
            self.int("kafka_partition"),
            self.int("kafka_offset")
        );
        let rows = self.within(sqlx::query(&sql).fetch_all(&self.pool)).await?;
        rows.iter()
            .map(|row| {
                let (partition, offset): (i64, i64) = (row.try_get(1)?, row.try_get(2)?);
                Ok((row.try_get(0)?, (partition as i32, offset)))
            })
            .collect()
    }

    /// Rows of `table` landed over the last minute and the last five, per second.
    pub async fn throughput(&self, table: &str) -> Result<Throughput> {
        let landed_within = |minutes: i64| {
            self.int(&format!(
                "COALESCE(SUM(CASE WHEN ingested_at > {} THEN 1 ELSE 0 END), 0)",
                self.now_plus_minutes(-minutes)
            ))
        };
        let sql = format!(
            "SELECT {}, {} FROM {table}",
            landed_within(1),
            landed_within(5)
        );
        let row = self.within(sqlx::query(&sql).fetch_one(&self.pool)).await?;
        Ok(Throughput {
            last_1m_per_sec: row.try_get::<i64, _>(0)? as f64 / 60.0,
            last_5m_per_sec: row.try_get::<i64, _>(1)? as f64 / 300.0,
        })
    }

    /// Rows of `table` per value of `column`, most first (ties by value), at most `limit`.
    pub async fn shares(
        &self,
        table: &str,
        column: &str,
        limit: Option<u32>,
    ) -> Result<Vec<Share>> {
        let mut sql =
            format!("SELECT {column}, COUNT(*) FROM {table} GROUP BY {column} ORDER BY 2 DESC, 1");
        if let Some(limit) = limit {
            sql.push_str(&format!(" LIMIT {limit}"));
        }
        let rows = self.within(sqlx::query(&sql).fetch_all(&self.pool)).await?;
        rows.iter()
            .map(|r| {
                Ok(Share {
                    value: r.try_get(0)?,
                    rows: r.try_get(1)?,
                })
            })
            .collect()
    }

    /// `group`'s stored `(topic, partition, next offset)` rows, of one topic or of all, in order.
    pub async fn stored_offsets(
        &self,
        group: &str,
        topic: Option<&str>,
    ) -> Result<Vec<(String, i32, i64)>> {
        let statement = offsets::positions(self.kind, group, topic);
        let rows = self
            .within(statement.query::<Any>().fetch_all(&self.pool))
            .await?;
        rows.iter()
            .map(|r| {
                let partition = i32::try_from(r.try_get::<i64, _>(1)?)?;
                Ok((r.try_get(0)?, partition, r.try_get(2)?))
            })
            .collect()
    }

    /// The `streamlab_members` rows of `group` and `topic`, by member id. A database from before
    /// the table existed simply has none to offer; any other error is an error (a caller
    /// deciding whether a group is empty must not read "no members" into it).
    pub async fn recorded_members(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<BTreeMap<String, Recorded>> {
        let statement = offsets::members(self.kind, group, topic);
        let rows = match self
            .within(statement.query::<Any>().fetch_all(&self.pool))
            .await
        {
            Ok(rows) => rows,
            Err(SinkError::Database(sqlx::Error::Database(e)))
                if e.code().as_deref() == Some("42P01")
                    || e.message().contains("no such table") =>
            {
                Vec::new()
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "reading the members recorded for group '{group}' and topic '{topic}'"
                )))
            }
        };
        rows.iter()
            .map(|r| {
                // Partitions are stored comma-separated, '' for none.
                let list: String = r.try_get(2)?;
                let partitions = list.split(',').filter_map(|p| p.parse().ok()).collect();
                let recorded = Recorded {
                    generation: r.try_get(1)?,
                    partitions,
                    client: r.try_get(3)?,
                };
                Ok((r.try_get(0)?, recorded))
            })
            .collect()
    }

    /// A single number, the SQL named in the error should it fail.
    async fn count(&self, sql: &str) -> Result<i64> {
        let row = match self.within(sqlx::query(sql).fetch_one(&self.pool)).await {
            Ok(row) => row,
            // No statement in a line that says the database did not answer.
            Err(e @ SinkError::TimedOut { .. }) => return Err(e.into()),
            Err(e) => return Err(anyhow::Error::new(e).context(sql.to_string())),
        };
        Ok(row.try_get::<i64, _>(0)?)
    }

    fn sqlite(&self) -> bool {
        self.kind == Kind::Sqlite
    }

    /// A timestamp column as RFC 3339 UTC text with milliseconds.
    pub(super) fn ts_text(&self, expr: &str) -> String {
        if self.sqlite() {
            expr.to_string()
        } else {
            format!("to_char({expr} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')")
        }
    }

    /// "now plus `minutes`", comparable with the ts columns.
    fn now_plus_minutes(&self, minutes: i64) -> String {
        if self.sqlite() {
            format!("strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '{minutes:+} minutes')")
        } else {
            format!("(now() + interval '{minutes} minutes')")
        }
    }

    fn real(&self, expr: &str) -> String {
        if self.sqlite() {
            format!("CAST({expr} AS REAL)")
        } else {
            format!("CAST({expr} AS DOUBLE PRECISION)")
        }
    }

    pub(super) fn int(&self, expr: &str) -> String {
        format!("CAST({expr} AS BIGINT)")
    }

    /// 1 when `id` is `table`'s primary key, else 0.
    fn primary_key_on(&self, table: &str, column: &str) -> String {
        if self.sqlite() {
            format!(
                "SELECT COUNT(*) FROM pragma_table_info('{table}') WHERE name = '{column}' AND pk = 1"
            )
        } else {
            format!(
                "SELECT COUNT(*) FROM information_schema.table_constraints tc
                 JOIN information_schema.key_column_usage k
                   ON k.constraint_name = tc.constraint_name AND k.table_schema = tc.table_schema
                 WHERE tc.table_schema = 'public' AND tc.table_name = '{table}'
                   AND tc.constraint_type = 'PRIMARY KEY' AND k.column_name = '{column}'"
            )
        }
    }

    /// Columns shown for the newest rows: name, the SQL that renders it, whether a number.
    fn newest_columns(&self, kind: EventKind) -> Vec<(&'static str, String, bool)> {
        let ts = self.ts_text("ts");
        match kind {
            EventKind::Sales => vec![
                ("id", "CAST(id AS TEXT)".into(), false),
                ("ts", ts, false),
                ("store_id", "store_id".into(), false),
                ("amount_usd", self.real("amount_usd"), true),
                ("channel", "channel".into(), false),
            ],
            EventKind::Sensor => vec![
                ("id", "CAST(id AS TEXT)".into(), false),
                ("sensor_id", "sensor_id".into(), false),
                ("val", self.real("val"), true),
                ("unit", "unit".into(), false),
                ("status", "status".into(), false),
                ("ts", ts, false),
            ],
        }
    }
}

fn row_to_map(
    row: &AnyRow,
    columns: &[(&'static str, String, bool)],
) -> Result<serde_json::Map<String, serde_json::Value>> {
    // Columns keep the table's order (serde_json's preserve_order).
    let mut map = serde_json::Map::new();
    for (i, (name, _, numeric)) in columns.iter().enumerate() {
        let value = if *numeric {
            serde_json::json!(row.try_get::<f64, _>(i)?)
        } else {
            serde_json::json!(row.try_get::<String, _>(i)?)
        };
        map.insert(name.to_string(), value);
    }
    Ok(map)
}

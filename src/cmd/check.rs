//! `streamlab check`: the seeds' sanity queries and more, with a plain verdict.
//!
//! The queries are written once against sqlx's `Any` driver; [`Dialect`] supplies the few
//! fragments where PostgreSQL and SQLite differ (timestamps, casts, placeholders).

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crate::cli::{CheckArgs, DbTarget, Format, SinkKind};
use crate::db::redact;
use crate::events::EventKind;
use crate::kafka::admin::GroupCoordinator;
use crate::{kafka, render};

/// How far in the future a `ts` may be before it counts as impossible (clock skew allowance).
const FUTURE_SKEW_MINUTES: i64 = 5;

#[derive(Debug, Serialize)]
pub struct Report {
    pub database: String,
    pub table: String,
    pub healthy: bool,
    pub rows: i64,
    pub latest_ts: Option<String>,
    pub checks: Vec<CheckResult>,
    pub newest: Vec<serde_json::Map<String, serde_json::Value>>,
    pub dead_letters: DeadLetters,
    pub partitions: Vec<PartitionLag>,
    pub total_lag: Option<i64>,
    /// With --topic: the consumer group's live members and what each holds.
    pub group: Option<GroupView>,
    pub throughput: Throughput,
    pub breakdown: Vec<Share>,
    pub top_keys: Vec<Share>,
}

#[derive(Debug, Serialize)]
pub struct CheckResult {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct DeadLetters {
    pub count: i64,
    pub newest: Vec<DeadLetterSummary>,
}

#[derive(Debug, Serialize)]
pub struct DeadLetterSummary {
    pub topic: String,
    pub partition: i64,
    pub offset: i64,
    pub error: String,
    pub failed_at: String,
}

#[derive(Debug, Serialize)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: i64,
    /// Next offset to read, from the sink's offsets table (None: never consumed).
    pub stored_offset: Option<i64>,
    /// The first offset the log still holds (only with --topic): read, not only listed, so it
    /// moves on brokers that delete without moving their log start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub earliest_offset: Option<i64>,
    /// The broker's latest offset (only with --topic).
    pub latest_offset: Option<i64>,
    pub lag: Option<i64>,
    /// The stored offset is past the log end by this much (only with --topic): the topic was
    /// re-created or the broker lost data. Never healthy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ahead: Option<i64>,
    /// Records between the stored offset and the log start: removed by retention before they
    /// were consumed (only with --topic). Never healthy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removed_unread: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct Throughput {
    /// Rows landed (by ingestion time) per second over the last minute.
    pub last_1m_per_sec: f64,
    /// … and over the last five minutes.
    pub last_5m_per_sec: f64,
}

#[derive(Debug, Serialize)]
pub struct Share {
    pub value: String,
    pub rows: i64,
}

/// The SQL fragments that differ between the two databases.
pub(crate) struct Dialect {
    sqlite: bool,
}

impl Dialect {
    pub(crate) fn of(sink: SinkKind) -> Self {
        Self {
            sqlite: sink == SinkKind::Sqlite,
        }
    }

    /// Bind placeholder number `n` (1-based).
    pub(crate) fn param(&self, n: usize) -> String {
        if self.sqlite {
            format!("?{n}")
        } else {
            format!("${n}")
        }
    }

    /// A timestamp column as RFC 3339 UTC text with milliseconds.
    pub(crate) fn ts_text(&self, expr: &str) -> String {
        if self.sqlite {
            expr.to_string()
        } else {
            format!("to_char({expr} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')")
        }
    }

    /// "now plus `minutes`", comparable with the ts columns.
    fn now_plus_minutes(&self, minutes: i64) -> String {
        if self.sqlite {
            format!("strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '{minutes:+} minutes')")
        } else {
            format!("(now() + interval '{minutes} minutes')")
        }
    }

    fn real(&self, expr: &str) -> String {
        if self.sqlite {
            format!("CAST({expr} AS REAL)")
        } else {
            format!("CAST({expr} AS DOUBLE PRECISION)")
        }
    }

    pub(crate) fn int(&self, expr: &str) -> String {
        format!("CAST({expr} AS BIGINT)")
    }

    /// Whether the text `haystack` contains the text `needle` (case-sensitive, no wildcards).
    pub(crate) fn contains(&self, haystack: &str, needle: &str) -> String {
        if self.sqlite {
            format!("instr({haystack}, {needle}) > 0")
        } else {
            format!("strpos({haystack}, {needle}) > 0")
        }
    }

    fn table_exists(&self) -> String {
        if self.sqlite {
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1".into()
        } else {
            "SELECT COUNT(*) FROM information_schema.tables
             WHERE table_schema = 'public' AND table_name = $1"
                .into()
        }
    }

    fn primary_key_on_id(&self, table: &str) -> String {
        if self.sqlite {
            format!(
                "SELECT COUNT(*) FROM pragma_table_info('{table}') WHERE name = 'id' AND pk = 1"
            )
        } else {
            format!(
                "SELECT COUNT(*) FROM information_schema.table_constraints tc
                 JOIN information_schema.key_column_usage k
                   ON k.constraint_name = tc.constraint_name AND k.table_schema = tc.table_schema
                 WHERE tc.table_schema = 'public' AND tc.table_name = '{table}'
                   AND tc.constraint_type = 'PRIMARY KEY' AND k.column_name = 'id'"
            )
        }
    }
}

/// Columns shown for the newest rows, with the SQL that renders each as text or a number.
fn newest_columns(kind: EventKind, d: &Dialect) -> Vec<(&'static str, String, bool)> {
    let ts = d.ts_text("ts");
    match kind {
        EventKind::Sales => vec![
            ("id", "CAST(id AS TEXT)".into(), false),
            ("ts", ts, false),
            ("store_id", "store_id".into(), false),
            ("amount_usd", d.real("amount_usd"), true),
            ("channel", "channel".into(), false),
        ],
        EventKind::Sensor => vec![
            ("id", "CAST(id AS TEXT)".into(), false),
            ("sensor_id", "sensor_id".into(), false),
            ("val", d.real("val"), true),
            ("unit", "unit".into(), false),
            ("status", "status".into(), false),
            ("ts", ts, false),
        ],
    }
}

fn sql_list(values: &[&str]) -> String {
    values
        .iter()
        .map(|v| format!("'{v}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn count(pool: &AnyPool, sql: &str) -> Result<i64> {
    let row = sqlx::query(sql)
        .fetch_one(pool)
        .await
        .with_context(|| sql.to_string())?;
    Ok(row.try_get::<i64, _>(0)?)
}

/// A read-only pool over either database.
pub(crate) async fn connect(db: &DbTarget, timeout: std::time::Duration) -> Result<AnyPool> {
    sqlx::any::install_default_drivers();
    let url = &db.url;
    let shown = redact(url);
    let unreachable =
        |e: &dyn std::fmt::Display| anyhow::anyhow!("cannot reach the database {shown}: {e}");
    if db.kind == SinkKind::Pg {
        crate::db::pg::warn_unrecognized_parameters(url);
    }
    if db.kind == SinkKind::Sqlite {
        let path = url
            .trim_start_matches("sqlite://")
            .trim_start_matches("sqlite:");
        let path = path.split('?').next().unwrap_or_default();
        if path != ":memory:" && !std::path::Path::new(path).exists() {
            return Err(unreachable(&"no such file (run `streamlab consume` first)"));
        }
    }
    let connecting = AnyPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(timeout)
        .connect(url);
    match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(pool)) => Ok(pool),
        Ok(Err(e)) => Err(unreachable(&e)),
        Err(_) => Err(unreachable(&"no answer in time")),
    }
}

/// `check`: the report, then exit 1 when it is unhealthy.
pub async fn run(args: CheckArgs) -> Result<(), crate::exit::Error> {
    let report = report(&args).await?;
    if report.healthy {
        return Ok(());
    }
    let failed = report.checks.iter().filter(|c| !c.ok);
    Err(crate::exit::Error::Unhealthy(
        failed.map(|c| c.name.to_string()).collect(),
    ))
}

/// Build the report and print it.
async fn report(args: &CheckArgs) -> Result<Report> {
    let target = args.db.target()?;
    let pool = connect(&target, args.kafka.timeout).await?;
    let d = Dialect::of(target.kind);
    let table = args.kind.table();
    let exists: i64 = sqlx::query(&d.table_exists())
        .bind(table)
        .fetch_one(&pool)
        .await?
        .try_get(0)?;
    if exists == 0 {
        anyhow::bail!(
            "table {table} does not exist in {}: run `streamlab consume` or `streamlab migrate` first",
            redact(&target.url)
        );
    }
    let report = build_report(args, &target, &pool, &d).await?;
    match args.format {
        Format::Json => render::json(&report)?,
        Format::Table => print_table(&report)?,
    }
    Ok(report)
}

/// A check over the rows: its SQL counts what is wrong, and zero is healthy.
struct RowRule {
    name: &'static str,
    sql: String,
    ok: String,
    /// What is wrong, with `{n}` for the count.
    bad: String,
}

impl RowRule {
    fn judge(self, offending: i64) -> CheckResult {
        CheckResult {
            name: self.name,
            ok: offending == 0,
            detail: if offending == 0 {
                self.ok
            } else {
                self.bad.replace("{n}", &offending.to_string())
            },
        }
    }
}

/// The seeds' checks on what landed, in the order they are reported.
fn row_rules(kind: EventKind, table: &str, d: &Dialect) -> Vec<RowRule> {
    let rule = |name, sql: String, ok: String, bad: String| RowRule { name, sql, ok, bad };
    let mut rules = vec![
        rule(
            "primary_key",
            format!("SELECT 1 - ({})", d.primary_key_on_id(table)),
            format!("{table}.id is the primary key"),
            format!("{table} has no primary key on id: duplicates cannot be prevented"),
        ),
        rule(
            "unique_ids",
            format!(
                "SELECT COUNT(*) FROM (SELECT id FROM {table} GROUP BY id HAVING COUNT(*) > 1) AS dup"
            ),
            "no id appears twice".into(),
            "{n} ids appear more than once".into(),
        ),
        rule(
            "timestamps",
            format!(
                "SELECT COUNT(*) FROM {table} WHERE ts > {}",
                d.now_plus_minutes(FUTURE_SKEW_MINUTES)
            ),
            format!("no ts more than {FUTURE_SKEW_MINUTES} minutes in the future"),
            format!("{{n}} rows have a ts more than {FUTURE_SKEW_MINUTES} minutes in the future"),
        ),
    ];
    if kind == EventKind::Sales {
        rules.push(rule(
            "amounts",
            format!("SELECT COUNT(*) FROM {table} WHERE amount_usd < 0"),
            "no negative amounts".into(),
            "{n} rows have a negative amount_usd".into(),
        ));
    }
    let (category, known) = kind.category();
    rules.push(rule(
        if kind == EventKind::Sales {
            "channels"
        } else {
            "statuses"
        },
        format!(
            "SELECT COUNT(*) FROM {table} WHERE {category} NOT IN ({})",
            sql_list(known)
        ),
        format!("every {category} is one of {}", known.join("/")),
        format!("{{n}} rows have an unknown {category}"),
    ));
    rules
}

async fn build_report(
    args: &CheckArgs,
    target: &DbTarget,
    pool: &AnyPool,
    d: &Dialect,
) -> Result<Report> {
    let table = args.kind.table();
    let mut checks = Vec::new();

    // The seed's check: SELECT COUNT(*) AS rows, MAX(ts) AS latest_ts FROM sales_events;
    let row = sqlx::query(&format!(
        "SELECT COUNT(*), {} FROM {table}",
        d.ts_text("MAX(ts)")
    ))
    .fetch_one(pool)
    .await?;
    let rows: i64 = row.try_get(0)?;
    let latest_ts: Option<String> = row.try_get(1)?;

    for rule in row_rules(args.kind, table, d) {
        let offending = count(pool, &rule.sql).await?;
        checks.push(rule.judge(offending));
    }

    let dead_letters = dead_letters(pool, d).await?;
    checks.push(CheckResult {
        name: "dead_letters",
        ok: dead_letters.count == 0,
        detail: match dead_letters.newest.first() {
            None => "no records were dead-lettered".into(),
            Some(newest) => format!(
                "{} records could not be stored; newest: {}/{}@{}: {}",
                dead_letters.count, newest.topic, newest.partition, newest.offset, newest.error
            ),
        },
    });

    let (partitions, total_lag) = lag(args, pool, d).await?;
    let group = match &args.topic {
        Some(topic) => {
            let mut admin = kafka::admin::Admin::connect(&args.kafka).await?;
            let mut coordinator = admin.group_coordinator(&args.group).await?;
            group_view_or_none(&mut coordinator, Some((pool, d)), topic).await
        }
        None => None,
    };
    checks.extend(offset_checks(&partitions));
    if let Some(total) = total_lag {
        let ok = args.max_lag.is_none_or(|max| total <= max);
        checks.push(CheckResult {
            name: "lag",
            ok,
            detail: match args.max_lag {
                Some(max) => format!("total lag {total} (max {max})"),
                None => format!("total lag {total}"),
            },
        });
    }

    let newest = newest_rows(args.kind, table, pool, d).await?;
    let throughput = throughput(table, pool, d).await?;
    let (category, _) = args.kind.category();
    let breakdown = shares(
        pool,
        &format!("SELECT {category}, COUNT(*) FROM {table} GROUP BY {category} ORDER BY 2 DESC, 1"),
    )
    .await?;
    let key = args.kind.key_column();
    let top_keys = shares(
        pool,
        &format!("SELECT {key}, COUNT(*) FROM {table} GROUP BY {key} ORDER BY 2 DESC, 1 LIMIT 5"),
    )
    .await?;

    Ok(Report {
        database: redact(&target.url),
        table: table.to_string(),
        healthy: checks.iter().all(|c| c.ok),
        rows,
        latest_ts,
        checks,
        newest,
        dead_letters,
        partitions,
        total_lag,
        group,
        throughput,
        breakdown,
        top_keys,
    })
}

/// Stored offsets the log does not hold: records retention removed before they were read, or
/// positions past the log end. Either is unhealthy.
fn offset_checks(partitions: &[PartitionLag]) -> Vec<CheckResult> {
    let removed = partitions.iter().filter_map(|p| {
        p.removed_unread.map(|n| {
            format!(
                "partition {}: {n} records (offsets {}..{}) removed before they were consumed",
                p.partition,
                p.stored_offset.unwrap_or_default(),
                p.earliest_offset.unwrap_or_default()
            )
        })
    });
    let ahead = partitions.iter().filter_map(|p| {
        p.ahead.map(|n| {
            format!(
                "partition {} stored at {} is {n} past the log end {}",
                p.partition,
                p.stored_offset.unwrap_or_default(),
                p.latest_offset.unwrap_or_default()
            )
        })
    });
    [
        failing(
            "retention",
            removed,
            "consume more often, or keep records longer: `topic retention --set`",
        ),
        failing(
            "offsets within the log",
            ahead,
            "the topic was re-created or the broker lost data; `consume` resets them for a new \
             topic, or with --reset-offsets-ahead",
        ),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// A failed check naming every finding and what to do, or nothing when there are none.
fn failing(
    name: &'static str,
    findings: impl Iterator<Item = String>,
    advice: &str,
) -> Option<CheckResult> {
    let findings: Vec<String> = findings.collect();
    (!findings.is_empty()).then(|| CheckResult {
        name,
        ok: false,
        detail: format!("{} ({advice})", findings.join("; ")),
    })
}

/// The ten newest rows, rendered per column.
async fn newest_rows(
    kind: EventKind,
    table: &str,
    pool: &AnyPool,
    d: &Dialect,
) -> Result<Vec<serde_json::Map<String, serde_json::Value>>> {
    let columns = newest_columns(kind, d);
    let select: Vec<&str> = columns.iter().map(|(_, sql, _)| sql.as_str()).collect();
    let newest_rows = sqlx::query(&format!(
        "SELECT {} FROM {table} ORDER BY ts DESC LIMIT 10",
        select.join(", ")
    ))
    .fetch_all(pool)
    .await?;
    newest_rows
        .iter()
        .map(|row| row_to_map(row, &columns))
        .collect()
}

/// Rows landed over the last minute and the last five, per second.
async fn throughput(table: &str, pool: &AnyPool, d: &Dialect) -> Result<Throughput> {
    let since = |m: i64| d.now_plus_minutes(-m);
    let row = sqlx::query(&format!(
        "SELECT {}, {} FROM {table}",
        d.int(&format!(
            "COALESCE(SUM(CASE WHEN ingested_at > {} THEN 1 ELSE 0 END), 0)",
            since(1)
        )),
        d.int(&format!(
            "COALESCE(SUM(CASE WHEN ingested_at > {} THEN 1 ELSE 0 END), 0)",
            since(5)
        )),
    ))
    .fetch_one(pool)
    .await?;
    Ok(Throughput {
        last_1m_per_sec: row.try_get::<i64, _>(0)? as f64 / 60.0,
        last_5m_per_sec: row.try_get::<i64, _>(1)? as f64 / 300.0,
    })
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

async fn shares(pool: &AnyPool, sql: &str) -> Result<Vec<Share>> {
    let rows = sqlx::query(sql).fetch_all(pool).await?;
    rows.iter()
        .map(|r| {
            Ok(Share {
                value: r.try_get(0)?,
                rows: r.try_get(1)?,
            })
        })
        .collect()
}

async fn dead_letters(pool: &AnyPool, d: &Dialect) -> Result<DeadLetters> {
    let count = count(pool, "SELECT COUNT(*) FROM dead_letters").await?;
    let rows = sqlx::query(&format!(
        "SELECT topic, {}, {}, error, {} FROM dead_letters ORDER BY id DESC LIMIT 5",
        d.int("kafka_partition"),
        d.int("kafka_offset"),
        d.ts_text("failed_at")
    ))
    .fetch_all(pool)
    .await?;
    let newest = rows
        .iter()
        .map(|r| {
            Ok(DeadLetterSummary {
                topic: r.try_get(0)?,
                partition: r.try_get(1)?,
                offset: r.try_get(2)?,
                error: r.try_get(3)?,
                failed_at: r.try_get(4)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(DeadLetters { count, newest })
}

/// The group's stored `(topic, partition, next offset)` rows, of one topic or of all, in order.
pub(crate) async fn stored_offsets(
    pool: &AnyPool,
    d: &Dialect,
    group: &str,
    topic: Option<&str>,
) -> Result<Vec<(String, i64, i64)>> {
    let mut sql = format!(
        "SELECT topic, {}, {} FROM streamlab_offsets WHERE consumer_group = {}",
        d.int("kafka_partition"),
        d.int("next_offset"),
        d.param(1)
    );
    if topic.is_some() {
        sql.push_str(&format!(" AND topic = {}", d.param(2)));
    }
    sql.push_str(" ORDER BY topic, 2");
    let mut query = sqlx::query(&sql).bind(group);
    if let Some(topic) = topic {
        query = query.bind(topic);
    }
    query
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect()
}

/// A consumer group's members and their partitions of one topic.
#[derive(Debug, Serialize)]
pub struct GroupView {
    pub group: String,
    pub state: String,
    pub members: Vec<MemberView>,
}

#[derive(Debug, Serialize)]
pub struct MemberView {
    pub member_id: String,
    /// Host and process (streamlab members), or the client id the broker reports.
    pub client: String,
    pub generation: Option<i32>,
    /// `None`: unknown (a member that is not streamlab, on a broker that does not report
    /// assignments).
    pub partitions: Option<Vec<i32>>,
}

/// [`group_view`] for a report: a group the broker cannot describe is shown as the database
/// last recorded it, or without members, with a warning.
pub(crate) async fn group_view_or_none(
    coordinator: &mut GroupCoordinator,
    recorded_in: Option<(&AnyPool, &Dialect)>,
    topic: &str,
) -> Option<GroupView> {
    let (view, failed) = described_or_recorded(coordinator, recorded_in, topic).await;
    if let Some(e) = failed {
        match &view {
            Some(v) => tracing::warn!(
                "the broker could not describe the group ({e:#}): members as {}",
                v.state
            ),
            None => {
                tracing::warn!("the broker could not describe the group ({e:#}): members not shown")
            }
        }
    }
    view
}

/// The group as the coordinator describes it ([`group_view`]); when it cannot — tansu 0.6's
/// SQLite engine fails DescribeGroups for every group it stored, unable to read back its own
/// JSON — the members of the newest generation the database recorded. The error, when there
/// was one, comes back beside the view, for the caller to report or not.
pub(crate) async fn described_or_recorded(
    coordinator: &mut GroupCoordinator,
    recorded_in: Option<(&AnyPool, &Dialect)>,
    topic: &str,
) -> (Option<GroupView>, Option<anyhow::Error>) {
    let e = match group_view(coordinator, recorded_in, topic).await {
        Ok(view) => return (view, None),
        Err(e) => e,
    };
    let recorded = match recorded_in {
        Some((pool, d)) => recorded_view(pool, d, coordinator.group(), topic).await,
        None => None,
    };
    (recorded, Some(e))
}

/// The members of the newest generation the database recorded for `group` and `topic`.
async fn recorded_view(pool: &AnyPool, d: &Dialect, group: &str, topic: &str) -> Option<GroupView> {
    let recorded = recorded_members(pool, d, group, topic).await;
    let newest = recorded
        .values()
        .map(|(generation, _, _)| *generation)
        .max()?;
    let members = recorded
        .into_iter()
        .filter(|(_, (generation, _, _))| *generation == newest)
        .map(|(member_id, (generation, partitions, client))| MemberView {
            member_id,
            client,
            generation: Some(generation),
            partitions: Some(partitions),
        })
        .collect();
    Some(GroupView {
        group: group.to_string(),
        state: format!("recorded for generation {newest}"),
        members,
    })
}

/// Live members come from the coordinator (DescribeGroups). Their partitions come from the
/// coordinator when it reports them (Apache Kafka), else from the `streamlab_members` rows the
/// members wrote (tansu reports member ids only). Rows of members the coordinator no longer
/// knows are stale and left out. `None` when the group has no members.
async fn group_view(
    coordinator: &mut GroupCoordinator,
    recorded_in: Option<(&AnyPool, &Dialect)>,
    topic: &str,
) -> Result<Option<GroupView>> {
    let described = coordinator.describe().await?;
    if described.members.is_empty() {
        return Ok(None);
    }
    let recorded = match recorded_in {
        Some((pool, d)) => recorded_members(pool, d, &described.group, topic).await,
        None => BTreeMap::new(),
    };
    let members = described
        .members
        .into_iter()
        .map(|m| {
            let row = recorded.get(&m.member_id);
            let from_broker = m
                .partitions
                .map(|ps| ps.get(topic).cloned().unwrap_or_default());
            MemberView {
                client: row
                    .map(|(_, _, client)| client.clone())
                    .unwrap_or(m.client_id),
                generation: row.map(|(generation, _, _)| *generation),
                partitions: from_broker.or_else(|| row.map(|(_, list, _)| list.clone())),
                member_id: m.member_id,
            }
        })
        .collect();
    Ok(Some(GroupView {
        group: described.group,
        state: described.state,
        members,
    }))
}

/// `streamlab_members` rows of a group and topic: member id → (generation, partitions, client).
/// A database from before the table existed simply has no rows to offer.
pub(crate) async fn recorded_members(
    pool: &AnyPool,
    d: &Dialect,
    group: &str,
    topic: &str,
) -> BTreeMap<String, (i32, Vec<i32>, String)> {
    let sql = format!(
        "SELECT member_id, generation, partitions, client FROM streamlab_members \
         WHERE consumer_group = {} AND topic = {}",
        d.param(1),
        d.param(2)
    );
    sqlx::query(&sql)
        .bind(group)
        .bind(topic)
        .fetch_all(pool)
        .await
        .unwrap_or_default()
        .iter()
        .filter_map(|r| {
            // Partitions are stored comma-separated, '' for none.
            let list: String = r.try_get(2).ok()?;
            let partitions = list.split(',').filter_map(|p| p.parse().ok()).collect();
            Some((
                r.try_get(0).ok()?,
                (r.try_get(1).ok()?, partitions, r.try_get(3).ok()?),
            ))
        })
        .collect()
}

/// The members table shared by `check` and `topic describe`.
pub(crate) fn members_table(members: &[MemberView]) -> comfy_table::Table {
    let mut t = render::table(["MEMBER", "CLIENT", "GENERATION", "PARTITIONS"]);
    for m in members {
        t.add_row(vec![
            m.member_id.clone(),
            if m.client.is_empty() {
                "-".to_string()
            } else {
                m.client.clone()
            },
            m.generation.map_or("-".to_string(), |g| g.to_string()),
            match &m.partitions {
                Some(ps) if ps.is_empty() => "none".to_string(),
                Some(ps) => ps.iter().map(i32::to_string).collect::<Vec<_>>().join(","),
                None => "? (not reported by the broker)".to_string(),
            },
        ]);
    }
    t
}

/// Stored positions of the group; with --topic, compared with the broker's latest offsets.
async fn lag(
    args: &CheckArgs,
    pool: &AnyPool,
    d: &Dialect,
) -> Result<(Vec<PartitionLag>, Option<i64>)> {
    let stored = stored_offsets(pool, d, &args.group, args.topic.as_deref()).await?;

    let Some(topic) = &args.topic else {
        let partitions = stored
            .into_iter()
            .map(|(topic, partition, next)| PartitionLag {
                topic,
                partition,
                stored_offset: Some(next),
                earliest_offset: None,
                latest_offset: None,
                lag: None,
                ahead: None,
                removed_unread: None,
            })
            .collect();
        return Ok((partitions, None));
    };

    let by_partition: BTreeMap<i64, i64> = stored.iter().map(|(_, p, n)| (*p, *n)).collect();
    let mut partitions = Vec::new();
    let mut total = 0;
    let ranges = kafka::fetch::TopicReaders::open(&args.kafka, topic)
        .await?
        .ranges()
        .await?;
    for (&partition, &(earliest, latest)) in &ranges {
        let stored_offset = by_partition.get(&i64::from(partition)).copied();
        let lag = kafka::Lag::of(earliest, latest, stored_offset);
        total += lag.behind();
        partitions.push(PartitionLag {
            topic: topic.clone(),
            partition: i64::from(partition),
            stored_offset,
            earliest_offset: Some(earliest),
            latest_offset: Some(latest),
            lag: Some(lag.behind()),
            ahead: lag.ahead(),
            removed_unread: stored_offset
                .filter(|&s| s < earliest)
                .map(|s| earliest - s),
        });
    }
    Ok((partitions, Some(total)))
}

fn print_table(r: &Report) -> Result<()> {
    let paint = |ok: bool| render::verdict(if ok { "ok" } else { "FAIL" }, ok);
    render::line(format!("streamlab check · {} · {}", r.database, r.table))?;
    render::line(format!(
        "rows {} · latest ts {} · verdict {}",
        r.rows,
        r.latest_ts.as_deref().unwrap_or("-"),
        if r.healthy { paint(true) } else { paint(false) }
    ))?;
    let mut checks = render::table(["CHECK", "STATUS", "DETAIL"]);
    for c in &r.checks {
        checks.add_row(vec![c.name.to_string(), paint(c.ok), c.detail.clone()]);
    }
    render::line(format!("\n{checks}"))?;

    if !r.partitions.is_empty() {
        let mut t = render::table(["TOPIC", "PARTITION", "EARLIEST", "STORED", "LATEST", "LAG"]);
        let show = |v: Option<i64>| v.map_or("-".to_string(), |v| v.to_string());
        for p in &r.partitions {
            t.add_row(vec![
                p.topic.clone(),
                p.partition.to_string(),
                show(p.earliest_offset),
                show(p.stored_offset),
                show(p.latest_offset),
                show(p.lag),
            ]);
        }
        render::line(format!("\n{t}"))?;
    }

    if let Some(g) = &r.group {
        render::line(format!(
            "\ngroup '{}' · {} · {} member(s)\n{}",
            g.group,
            g.state,
            g.members.len(),
            members_table(&g.members)
        ))?;
    }

    render::line(format!(
        "\nlanded: {:.1} rows/s over the last minute, {:.1} rows/s over five minutes",
        r.throughput.last_1m_per_sec, r.throughput.last_5m_per_sec
    ))?;
    let total = r.rows.max(1) as f64;
    let shares: Vec<String> = r
        .breakdown
        .iter()
        .map(|s| {
            format!(
                "{} {} ({:.0}%)",
                s.value,
                s.rows,
                100.0 * s.rows as f64 / total
            )
        })
        .collect();
    render::line(format!("breakdown: {}", shares.join(" · ")))?;
    let top: Vec<String> = r
        .top_keys
        .iter()
        .map(|s| format!("{} {}", s.value, s.rows))
        .collect();
    render::line(format!("top: {}", top.join(" · ")))?;

    if let Some(first) = r.newest.first() {
        let names: Vec<&String> = first.keys().collect();
        let mut t = comfy_table::Table::new();
        t.load_preset(comfy_table::presets::NOTHING)
            .set_header(names.iter().map(|n| n.to_uppercase()));
        for row in &r.newest {
            t.add_row(row.values().map(|v| match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            }));
        }
        render::line(format!("\nnewest rows:\n{t}"))?;
    }
    Ok(())
}

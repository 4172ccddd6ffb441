//! `streamlab check`: the seeds' sanity queries and more, with a plain verdict.
//!
//! What is asked of the database is [`db::Reader`]'s; here are the verdicts and their words.

use std::collections::BTreeMap;

use anyhow::Result;
use serde::Serialize;

use super::members::{self, GroupView};
use crate::db::dlq::{self, Letter};
use crate::db::{self, redact, Offending, Reader, Share, Throughput};
use crate::events::{self, EventKind};
use crate::kafka::{self, Position};
use crate::render::{self, Format};

/// How far in the future a `ts` may be before it counts as impossible (clock skew allowance).
const FUTURE_SKEW_MINUTES: i64 = 5;

#[derive(Debug, Serialize)]
pub struct Report {
    pub database: String,
    pub table: String,
    pub kind: EventKind,
    /// Other tables that hold rows, and how to check them (one line), when the choice of table
    /// may not be what was meant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub healthy: bool,
    pub rows: i64,
    pub latest_ts: Option<String>,
    pub checks: Vec<CheckResult>,
    pub newest: Vec<serde_json::Map<String, serde_json::Value>>,
    pub dead_letters: DeadLetters,
    /// With --topic: each partition's log and the group's position in it.
    pub partitions: Vec<Position>,
    /// Without --topic: the offsets the database holds, topic by topic.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stored_offsets: Vec<StoredOffset>,
    pub total_lag: Option<i64>,
    /// With --topic: the consumer group's live members and what each holds.
    pub group: Option<GroupView>,
    pub throughput: Throughput,
    pub breakdown: Vec<Share>,
    pub top_keys: Vec<Share>,
}

/// How many records were dead-lettered, and the five newest.
#[derive(Debug, Serialize)]
pub struct DeadLetters {
    pub count: i64,
    pub newest: Vec<Letter>,
}

#[derive(Debug, Serialize)]
pub struct CheckResult {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// An offset the database holds, without the log it applies to (`check` without --topic).
#[derive(Debug, Serialize)]
pub struct StoredOffset {
    pub topic: String,
    pub partition: i32,
    /// The next offset the group reads.
    pub committed: i64,
}

/// `check`, settled: which database and table, and what else to compare.
pub struct Config {
    pub kafka: kafka::Config,
    pub target: db::Target,
    /// The kind's table to check; `None`: the one that holds rows.
    pub kind: Option<EventKind>,
    /// Check the `_latest` table `consume --upsert` keeps.
    pub upsert: bool,
    /// Compare each key's newest record in the topic with its row (with `upsert` and `topic`).
    pub verify_log: bool,
    /// Also compare the stored offsets with this topic's log.
    pub topic: Option<String>,
    pub group: String,
    pub format: Format,
    /// Unhealthy when total lag exceeds this.
    pub max_lag: Option<i64>,
}

/// `check`: the report, then exit 1 when it is unhealthy.
pub async fn run(args: Config) -> Result<(), crate::exit::Error> {
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
async fn report(args: &Config) -> Result<Report> {
    let target = &args.target;
    let reader = Reader::connect(target, args.kafka.timeout).await?;
    let subject = Subject::choose(args, &reader).await.map_err(|e| match e {
        Missing(table) => anyhow::anyhow!(
            "table {table} does not exist in {}: run `streamlab consume` or `streamlab migrate` first",
            redact(&target.url)
        ),
        Failed(e) => e,
    })?;
    let report = build_report(args, &subject, target, &reader).await?;
    match args.format {
        Format::Json => render::json(&report)?,
        Format::Table => print_table(&report)?,
    }
    Ok(report)
}

/// A check over the rows: the database counts what is wrong, and zero is healthy.
struct RowRule {
    name: &'static str,
    counts: Offending<'static>,
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

/// The table checked: the kind's, or (`--upsert`) its `_latest` table.
fn table_of(kind: EventKind, upsert: bool) -> &'static str {
    if upsert {
        kind.latest_table()
    } else {
        kind.table()
    }
}

/// What is checked: a kind's table (or its `_latest` table with `--upsert`), and a note naming
/// other tables that hold rows when the choice may not be what was meant.
struct Subject {
    kind: EventKind,
    table: &'static str,
    note: Option<String>,
}

/// Why no table could be chosen.
enum ChooseError {
    /// The table to check does not exist (nothing was migrated).
    Missing(&'static str),
    Failed(anyhow::Error),
}
use ChooseError::{Failed, Missing};

impl From<anyhow::Error> for ChooseError {
    fn from(e: anyhow::Error) -> Self {
        Failed(e)
    }
}

impl Subject {
    /// `--kind` when given; else the kind whose table holds rows (sales when both or neither
    /// do). When the table checked is empty, or another kind's holds rows too, the note names the
    /// tables that hold rows and the flags that check them.
    async fn choose(args: &Config, reader: &Reader) -> Result<Self, ChooseError> {
        // Every events table that exists, with its row count: the chosen shape's first.
        let mut holding = Vec::new();
        for upsert in [args.upsert, !args.upsert] {
            for kind in EventKind::ALL {
                let table = table_of(kind, upsert);
                if reader.has_table(table).await? {
                    holding.push((kind, upsert, table, reader.rows(table).await?.count));
                }
            }
        }
        let kind = args.kind.unwrap_or_else(|| {
            holding
                .iter()
                .find(|&&(_, upsert, _, rows)| upsert == args.upsert && rows > 0)
                .map_or(EventKind::Sales, |&(kind, ..)| kind)
        });
        let table = table_of(kind, args.upsert);
        let Some(&(.., rows)) = holding.iter().find(|(_, _, t, _)| *t == table) else {
            return Err(Missing(table));
        };
        // Worth naming: with an empty table, every other that holds rows; else (the kind was
        // chosen here) the other kind's table of the same shape.
        let others: Vec<String> = holding
            .iter()
            .filter(|&&(k, upsert, t, n)| {
                t != table
                    && n > 0
                    && (rows == 0 || (args.kind.is_none() && upsert == args.upsert && k != kind))
            })
            .map(|&(k, upsert, t, n)| {
                let flags = format!(
                    "--kind {}{}",
                    k.name(),
                    if upsert { " --upsert" } else { "" }
                );
                format!("{t} holds {n} rows (`streamlab check {flags}`)")
            })
            .collect();
        let note = (!others.is_empty()).then(|| {
            let lead = if rows == 0 {
                format!("{table} is empty; ")
            } else {
                String::new()
            };
            format!("{lead}{}", others.join("; "))
        });
        Ok(Subject { kind, table, note })
    }
}

/// The seeds' checks on what landed, in the order they are reported. An upsert table holds one
/// row per `key` instead of one per `id`.
fn row_rules(kind: EventKind, table: &str, upsert: bool) -> Vec<RowRule> {
    let rule = |name, counts, ok: String, bad: String| RowRule {
        name,
        counts,
        ok,
        bad,
    };
    let (unique, column) = if upsert {
        ("unique_keys", "key")
    } else {
        ("unique_ids", "id")
    };
    let mut rules = vec![
        rule(
            "primary_key",
            Offending::NoPrimaryKeyOn(column),
            format!("{table}.{column} is the primary key"),
            format!("{table} has no primary key on {column}: duplicates cannot be prevented"),
        ),
        rule(
            unique,
            Offending::Duplicates(column),
            format!("no {column} appears twice"),
            format!("{{n}} {column}s appear more than once"),
        ),
        rule(
            "timestamps",
            Offending::FutureTs {
                minutes: FUTURE_SKEW_MINUTES,
            },
            format!("no ts more than {FUTURE_SKEW_MINUTES} minutes in the future"),
            format!("{{n}} rows have a ts more than {FUTURE_SKEW_MINUTES} minutes in the future"),
        ),
    ];
    if kind == EventKind::Sales {
        rules.push(rule(
            "amounts",
            Offending::NegativeAmounts,
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
        Offending::Unknown {
            column: category,
            known,
        },
        format!("every {category} is one of {}", known.join("/")),
        format!("{{n}} rows have an unknown {category}"),
    ));
    rules
}

async fn build_report(
    args: &Config,
    subject: &Subject,
    target: &db::Target,
    reader: &Reader,
) -> Result<Report> {
    let (kind, table) = (subject.kind, subject.table);
    let mut checks = Vec::new();

    // The seed's check: SELECT COUNT(*) AS rows, MAX(ts) AS latest_ts FROM sales_events;
    let landed = reader.rows(table).await?;

    for rule in row_rules(kind, table, args.upsert) {
        let offending = reader.offending(table, rule.counts).await?;
        checks.push(rule.judge(offending));
    }

    let dead_letters = DeadLetters {
        count: reader.dead_letter_count(None).await?,
        newest: reader
            .dead_letter_rows(
                &dlq::Filter::default(),
                dlq::Order::NewestFirst,
                Some(5),
                false,
            )
            .await?,
    };
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

    let (partitions, stored_offsets) = positions(args, reader).await?;
    let total_lag = args
        .topic
        .is_some()
        .then(|| partitions.iter().map(|p| p.lag).sum::<i64>());
    let group = match &args.topic {
        Some(topic) => {
            let mut admin = kafka::admin::Admin::connect(&args.kafka).await?;
            let mut coordinator = admin.group_coordinator(&args.group).await?;
            members::group_view_or_none(&mut coordinator, Some(reader), topic).await
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

    if args.verify_log {
        checks.push(verify_log(args, subject, reader, &partitions).await?);
    }
    let newest = reader.newest(kind, table).await?;
    let throughput = reader.throughput(table).await?;
    let (category, _) = kind.category();
    let breakdown = reader.shares(table, category, None).await?;
    let top_keys = reader.shares(table, kind.key_column(), Some(5)).await?;

    Ok(Report {
        database: redact(&target.url),
        table: table.to_string(),
        kind,
        note: subject.note.clone(),
        healthy: checks.iter().all(|c| c.ok),
        rows: landed.count,
        latest_ts: landed.newest_ts,
        checks,
        newest,
        dead_letters,
        partitions,
        stored_offsets,
        total_lag,
        group,
        throughput,
        breakdown,
        top_keys,
    })
}

/// `--verify-log`: each key's newest record in the log, up to the group's stored offsets (a
/// value that decodes, or a tombstone), against the table's row for it.
async fn verify_log(
    args: &Config,
    subject: &Subject,
    reader: &Reader,
    partitions: &[Position],
) -> Result<CheckResult> {
    let topic = args.topic.as_deref().unwrap_or_default();
    let mut readers = kafka::fetch::TopicReaders::open(&args.kafka, topic).await?;
    // key → the newest record's (partition, offset), None for a tombstone.
    let mut newest: BTreeMap<String, Option<(i32, i64)>> = BTreeMap::new();
    for reader in &mut readers.readers {
        let p = reader.partition();
        let Some(position) = partitions.iter().find(|pos| pos.partition == p) else {
            continue;
        };
        let upto = position.committed.unwrap_or(position.log_start);
        reader
            .read_range(position.log_start, upto, |r| {
                let Ok(key) = db::table_key(r.key.as_deref()) else {
                    return;
                };
                let value = r.value.as_deref();
                let change = match value {
                    None => None,
                    Some(_) if events::decode(subject.kind, value).is_ok() => Some((p, r.offset)),
                    Some(_) => return,
                };
                newest.insert(key.to_string(), change);
            })
            .await?;
    }
    let stored = reader.latest_positions(subject.table).await?;
    let differing = log_differences(&newest, &stored);
    Ok(CheckResult {
        name: "log",
        ok: differing.is_empty(),
        detail: if differing.is_empty() {
            format!(
                "every key's newest record in '{topic}' (up to the stored offsets) is its row: {} rows",
                stored.len()
            )
        } else {
            let named: Vec<&str> = differing.iter().take(10).map(String::as_str).collect();
            format!(
                "{} keys differ from their newest record in '{topic}': {}{}",
                differing.len(),
                named.join(", "),
                if differing.len() > 10 { ", …" } else { "" }
            )
        },
    })
}

/// The keys whose row is not their newest record: `newest` key → record (None: a tombstone),
/// `stored` key → the record its row holds.
fn log_differences(
    newest: &BTreeMap<String, Option<(i32, i64)>>,
    stored: &BTreeMap<String, (i32, i64)>,
) -> Vec<String> {
    let from_log = newest
        .iter()
        .filter(|(key, record)| stored.get(*key) != record.as_ref())
        .map(|(key, _)| key.clone());
    let unknown = stored
        .keys()
        .filter(|key| !newest.contains_key(*key))
        .cloned();
    from_log.chain(unknown).collect()
}

/// Stored offsets the log does not hold: records retention removed before they were read, or
/// positions past the log end. Either is unhealthy.
fn offset_checks(partitions: &[Position]) -> Vec<CheckResult> {
    let removed = partitions.iter().filter_map(|p| {
        let (n, stored) = (p.removed_unread?, p.committed.unwrap_or_default());
        Some(format!(
            "partition {}: {n} records (offsets {stored}..{}) removed before they were consumed",
            p.partition, p.log_start
        ))
    });
    let ahead = partitions.iter().filter_map(|p| {
        let (n, stored) = (p.ahead?, p.committed.unwrap_or_default());
        Some(format!(
            "partition {} stored at {stored} is {n} past the log end {}",
            p.partition, p.log_end
        ))
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

/// With --topic, the group's stored positions in the topic's logs; without, the offsets the
/// database holds for the group.
async fn positions(args: &Config, reader: &Reader) -> Result<(Vec<Position>, Vec<StoredOffset>)> {
    let stored = reader
        .stored_offsets(&args.group, args.topic.as_deref())
        .await?;
    let Some(topic) = &args.topic else {
        let stored = stored
            .into_iter()
            .map(|(topic, partition, committed)| StoredOffset {
                topic,
                partition,
                committed,
            })
            .collect();
        return Ok((Vec::new(), stored));
    };
    let by_partition: BTreeMap<i32, i64> = stored.iter().map(|(_, p, n)| (*p, *n)).collect();
    let ranges = kafka::fetch::TopicReaders::open(&args.kafka, topic)
        .await?
        .ranges()
        .await?;
    let positions = ranges
        .iter()
        .map(|(&p, &range)| Position::new(p, range, by_partition.get(&p).copied()))
        .collect();
    Ok((positions, Vec::new()))
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
    if let Some(note) = &r.note {
        render::line(format!("note: {note}"))?;
    }
    let mut checks = render::table(["CHECK", "STATUS", "DETAIL"]);
    for c in &r.checks {
        checks.add_row(vec![c.name.to_string(), paint(c.ok), c.detail.clone()]);
    }
    render::line(format!("\n{checks}"))?;

    if !r.partitions.is_empty() {
        render::line(format!("\n{}", super::positions_table(&r.partitions)))?;
    }
    if !r.stored_offsets.is_empty() {
        let mut t = render::table(["TOPIC", "PARTITION", "COMMITTED"]);
        for s in &r.stored_offsets {
            t.add_row(vec![
                s.topic.clone(),
                s.partition.to_string(),
                s.committed.to_string(),
            ]);
        }
        render::line(format!("\n{t}"))?;
    }

    if let Some(g) = &r.group {
        render::line(super::group_lines(g))?;
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
    if !shares.is_empty() {
        render::line(format!("breakdown: {}", shares.join(" · ")))?;
    }
    let top: Vec<String> = r
        .top_keys
        .iter()
        .map(|s| format!("{} {}", s.value, s.rows))
        .collect();
    if !top.is_empty() {
        render::line(format!("top: {}", top.join(" · ")))?;
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_must_hold_its_keys_newest_record_and_a_tombstone_none() {
        let newest: BTreeMap<String, Option<(i32, i64)>> = [
            ("same", Some((0, 5))),
            ("older_row", Some((0, 9))),
            ("missing", Some((1, 2))),
            ("deleted", None),
            ("deleted_and_gone", None),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let stored: BTreeMap<String, (i32, i64)> = [
            ("same", (0, 5)),
            ("older_row", (0, 7)),
            ("deleted", (0, 1)),
            ("not_in_log", (2, 3)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(
            log_differences(&newest, &stored),
            ["deleted", "missing", "older_row", "not_in_log"]
        );
    }
}

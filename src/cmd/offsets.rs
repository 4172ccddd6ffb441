//! `streamlab offsets reset`: move a consumer group's offsets for a topic, as
//! `kafka-consumer-groups --reset-offsets` does — but where streamlab keeps them, in the database.
//!
//! The plan (partition, current, new) is computed from the database's offsets and the log, and
//! printed; with `--execute` it is written in one transaction through the same fence as
//! consume's batches (each partition moves only from the value read), then mirrored to the
//! Kafka group. A group with live members is refused, as Kafka's tool refuses one that is not
//! empty: they would go on from positions of their own.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use time::OffsetDateTime;

use super::members;
use crate::db::{self, redact, Batch, Database, Deadline, OffsetAdvance, Reader, SinkError};
use crate::events::ts_millis;
use crate::kafka;
use crate::kafka::admin::{Admin, GroupCoordinator};
use crate::kafka::fetch::{self, PartitionReader};
use crate::render::{self, Format};

/// `offsets reset`, settled: whose offsets, where they go, and whether to move them.
pub struct Reset {
    pub kafka: kafka::Config,
    /// The database that holds the group's offsets.
    pub target: db::Target,
    pub group: String,
    pub topic: String,
    /// Only these partitions; empty: all.
    pub partitions: Vec<i32>,
    pub to: To,
    /// Apply the plan (otherwise only print it).
    pub execute: bool,
    /// Set aside the members the database records where the broker cannot describe the group.
    pub force: bool,
    pub format: Format,
}

/// Where the offsets go.
#[derive(Debug, Clone, Copy)]
pub enum To {
    Earliest,
    Latest,
    Datetime(OffsetDateTime),
    Offset(i64),
    Shift(i64),
}

impl To {
    fn describe(self) -> String {
        match self {
            To::Earliest => "earliest".into(),
            To::Latest => "latest".into(),
            To::Datetime(at) => format!("datetime {}", ts_millis::format(at)),
            To::Offset(offset) => format!("offset {offset}"),
            To::Shift(by) => format!("shift by {by:+}"),
        }
    }
}

#[derive(Serialize)]
struct Plan {
    group: String,
    topic: String,
    database: String,
    target: String,
    /// Whether the plan was applied (`--execute`).
    executed: bool,
    partitions: Vec<Move>,
}

#[derive(Debug, Serialize)]
struct Move {
    partition: i32,
    /// The offset stored in the database (`None`: none yet).
    current: Option<i64>,
    new: i64,
    log_start: i64,
    log_end: i64,
    /// Why `new` is not exactly what was asked (kept within the log).
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

pub async fn run(args: Reset) -> Result<()> {
    let (target, to) = (&args.target, args.to);
    let (group, topic) = (args.group.as_str(), args.topic.as_str());
    let reader = Reader::connect(target, args.kafka.timeout).await?;
    let shown = redact(&target.url);

    let mut admin = Admin::connect(&args.kafka).await?;
    let metadata = admin.topic(topic).await?;
    let partitions = if args.partitions.is_empty() {
        metadata.partition_ids()
    } else {
        metadata.only(&args.partitions)?
    };
    let stored = stored_offsets(&reader, group, topic, &shown).await?;
    let mut coordinator = admin.group_coordinator(group).await?;
    refuse_live_members(&mut coordinator, &reader, topic, args.force).await?;

    let mut readers = fetch::readers(&args.kafka, &metadata, &partitions);
    let ranges = fetch::offset_ranges(&mut readers).await?;
    let moves = plan(to, &stored, &ranges, &mut readers).await?;
    let plan = Plan {
        group: group.to_string(),
        topic: topic.to_string(),
        database: shown,
        target: to.describe(),
        executed: args.execute,
        partitions: moves,
    };
    if args.execute {
        let topic_id = metadata.topic_id.map(|id| id.to_string());
        execute(&plan, target, topic_id, args.kafka.timeout).await?;
    }
    // The plan first: what the database now holds is shown even if mirroring fails.
    match args.format {
        Format::Json => render::json(&plan)?,
        Format::Table => print_plan(&plan)?,
    }
    if args.execute {
        mirror(&plan, coordinator).await?;
    }
    Ok(())
}

/// The offsets the database holds for `group` in `topic`; none is an error (nothing to reset).
async fn stored_offsets(
    reader: &Reader,
    group: &str,
    topic: &str,
    shown: &str,
) -> Result<BTreeMap<i32, i64>> {
    let stored: BTreeMap<i32, i64> = reader
        .stored_offsets(group, Some(topic))
        .await?
        .into_iter()
        .map(|(_, p, o)| (p, o))
        .collect();
    if stored.is_empty() {
        bail!(
            "group '{group}' has no offsets for topic '{topic}' in {shown}: nothing to reset \
             (`streamlab group describe --group {group} -D …` shows what it has; consume \
             stores them)"
        );
    }
    Ok(stored)
}

/// Write the plan's moves as one fenced batch, every statement within `timeout`, as consume does.
async fn execute(
    plan: &Plan,
    target: &db::Target,
    topic_id: Option<String>,
    timeout: std::time::Duration,
) -> Result<()> {
    let database = Database::connect(target, timeout).await?;
    let limit = db::connect_timeout(timeout);
    let mut sink = Deadline::new(database, limit, target.describe());
    let batch = Batch {
        group: plan.group.clone(),
        topic: plan.topic.clone(),
        topic_id,
        offsets: plan
            .partitions
            .iter()
            .filter(|m| m.current != Some(m.new))
            .map(|m| OffsetAdvance {
                partition: m.partition,
                from: m.current,
                to: m.new,
            })
            .collect(),
        ..Batch::default()
    };
    let topic = &plan.topic;
    db::write(&mut sink, &batch).await.map_err(|e| match e {
        SinkError::Fenced { partition, .. } => anyhow::anyhow!(
            "the stored offset of {topic}/{partition} changed while resetting: a consumer \
             is writing it — one reading alone (--assign all or --partition), which the \
             member check cannot see, or a member that joined after the check; nothing was \
             changed: stop it and run the reset again"
        ),
        e => anyhow::Error::new(e).context("writing the new offsets"),
    })?;
    Ok(())
}

/// Copy the new offsets to the Kafka group; a failure leaves the database's (the truth) as is.
async fn mirror(plan: &Plan, mut coordinator: GroupCoordinator) -> Result<()> {
    let group = &plan.group;
    let offsets: BTreeMap<i32, i64> = plan
        .partitions
        .iter()
        .map(|m| (m.partition, m.new))
        .collect();
    // A moved coordinator (or a connection DescribeGroups dropped) is found again.
    let mirrored = coordinator.commit(&plan.topic, &offsets, None).await;
    if let Err(e) = mirrored {
        tracing::warn!(
            "the database was changed (the offsets above are stored), but Kafka group \
             '{group}' was not: mirroring failed ({e:#}); consume mirrors them on its next run"
        );
        bail!(
            "offsets reset in the database only: Kafka's copy of group '{group}' was not changed"
        );
    }
    Ok(())
}

/// Refuse while the group has members: Kafka's DescribeGroups says who; where the broker cannot
/// describe the group (tansu's SQLite engine), the members the database recorded for `topic`.
///
/// The database's rows are not dated by a heartbeat: a member that crashed leaves its row until
/// it runs again. `force` sets the recorded rows aside (Kafka's live members still refuse).
async fn refuse_live_members(
    coordinator: &mut GroupCoordinator,
    reader: &Reader,
    topic: &str,
    force: bool,
) -> Result<()> {
    let group = coordinator.group().to_string();
    // Fail closed: a database that cannot say who is recorded is not "no members".
    let topics = BTreeSet::from([topic.to_string()]);
    let recorded = members::recorded(reader, &group, &topics).await?;
    let (members, source): (Vec<String>, String) = match coordinator.describe().await {
        Ok(described) => (
            members::merge(Some(described.members), &recorded)
                .into_iter()
                .map(|m| {
                    let client = m
                        .recorded_client
                        .unwrap_or_else(|| format!("{} at {}", m.client_id, m.host));
                    format!("{} ({client})", m.member_id)
                })
                .collect(),
            "live member(s)".into(),
        ),
        Err(e) if force => {
            tracing::warn!(
                "the broker could not describe group '{group}' ({e:#}); --force: not relying on \
                 the {} member(s) the database recorded (the offset fence still stops a writer)",
                recorded[topic].len()
            );
            (Vec::new(), String::new())
        }
        Err(e) => {
            tracing::warn!(
                "the broker could not describe group '{group}' ({e:#}): relying on the members \
                 the database recorded"
            );
            // Every row, not only the newest generation: any of them may still be running.
            (
                recorded[topic]
                    .iter()
                    .map(|(id, row)| format!("{id} ({})", row.client))
                    .collect(),
                format!("member(s) recorded in the database for '{topic}' (the broker cannot say)"),
            )
        }
    };
    if members.is_empty() {
        return Ok(());
    }
    let crashed = if source.starts_with("live") {
        ""
    } else {
        "; a member that crashed leaves its row: if none of them runs any more, add --force"
    };
    bail!(
        "group '{group}' has {} {source}: {}; stop them first (offsets are reset only while the \
         group is empty){crashed}",
        members.len(),
        members.join(", ")
    )
}

/// Each partition's move, or one error naming every partition the target cannot apply to.
async fn plan(
    to: To,
    stored: &BTreeMap<i32, i64>,
    ranges: &BTreeMap<i32, (i64, i64)>,
    readers: &mut [PartitionReader],
) -> Result<Vec<Move>> {
    let mut moves = Vec::new();
    let mut refused = Vec::new();
    for reader in readers.iter_mut() {
        let partition = reader.partition();
        let (start, end) = ranges[&partition];
        let current = stored.get(&partition).copied();
        match new_offset(to, current, start, end, reader).await? {
            Landing::At(new, mut note) => {
                if new < end && matches!(to, To::Offset(_) | To::Shift(_) | To::Datetime(_)) {
                    note = note.or(skipped_from(reader, new).await?);
                }
                moves.push(Move {
                    partition,
                    current,
                    new,
                    log_start: start,
                    log_end: end,
                    note,
                })
            }
            Landing::Refused(why) => refused.push(format!("partition {partition}: {why}")),
        }
    }
    if !refused.is_empty() {
        let hint = match to {
            To::Datetime(_) => " (--to-earliest replays all the log holds)",
            _ => "",
        };
        bail!(
            "cannot reset: {}; nothing was changed{hint}",
            refused.join("; ")
        );
    }
    Ok(moves)
}

/// Where one partition goes, or why it cannot.
enum Landing {
    /// This offset, with a note when it was kept within the log.
    At(i64, Option<String>),
    Refused(String),
}

/// Where one partition goes ([`Landing`]); an error only when the broker could not be read.
async fn new_offset(
    to: To,
    current: Option<i64>,
    start: i64,
    end: i64,
    reader: &mut PartitionReader,
) -> Result<Landing> {
    let within = |wanted: i64| {
        if wanted < start {
            let note = format!("{wanted} is before the log start: kept at {start}");
            Landing::At(start, Some(note))
        } else if wanted > end {
            Landing::At(
                end,
                Some(format!("{wanted} is past the log end: kept at {end}")),
            )
        } else {
            Landing::At(wanted, None)
        }
    };
    Ok(match to {
        To::Earliest => Landing::At(start, None),
        To::Latest => Landing::At(end, None),
        To::Offset(offset) if offset < start || offset > end => Landing::Refused(format!(
            "offset {offset} is outside its log ({start}..={end})"
        )),
        To::Offset(offset) => Landing::At(offset, None),
        To::Shift(by) => match current {
            Some(current) => within(current.saturating_add(by)),
            None => Landing::Refused(
                "no stored offset to shift from (use --to-offset or --to-earliest)".into(),
            ),
        },
        To::Datetime(at) => {
            let ms = i64::try_from(at.unix_timestamp_nanos() / 1_000_000)?;
            // Records before the log start were removed (retention): a time older than the first
            // record left asks for records that are gone.
            if start > 0 && start < end {
                if let Some(first) = reader.timestamp_at(start).await? {
                    if ms < first {
                        return Ok(Landing::Refused(format!(
                            "{} is before its log start (records before offset {start} were \
                             removed; the first left is from {})",
                            ts_millis::format(at),
                            millis_text(first)
                        )));
                    }
                }
            }
            match reader.offset_for_time(ms).await? {
                Some(offset) => within(offset),
                // No record that recent: the end, as Kafka's tool does.
                None => Landing::At(end, None),
            }
        }
    })
}

/// A note when a read from `offset` would not start there: the broker answers a fetch inside a
/// record batch with the batches after it (tansu 0.6's in-memory engine; Kafka and tansu's
/// SQLite engine return the batch that holds the offset).
async fn skipped_from(reader: &mut PartitionReader, offset: i64) -> Result<Option<String>> {
    let fetch = reader
        .fetch(offset, 1, 0)
        .await
        .map_err(|e| anyhow::anyhow!(e))
        .with_context(|| {
            format!(
                "reading {}/{} at {offset}",
                reader.topic(),
                reader.partition()
            )
        })?;
    Ok(fetch.removed_before(offset).map(|gone| {
        format!(
            "the broker serves it from {} only ({offset} is inside a record batch): {} \
             record(s) skipped",
            gone.end,
            gone.end - gone.start
        )
    }))
}

fn millis_text(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map(ts_millis::format)
        .unwrap_or_else(|_| format!("{ms} ms"))
}

fn print_plan(plan: &Plan) -> Result<()> {
    let mut t = render::table(["GROUP", "TOPIC", "PARTITION", "CURRENT", "NEW", "NOTE"]);
    for m in &plan.partitions {
        t.add_row(vec![
            plan.group.clone(),
            plan.topic.clone(),
            m.partition.to_string(),
            m.current.map_or("-".to_string(), |c| c.to_string()),
            m.new.to_string(),
            m.note.clone().unwrap_or_default(),
        ]);
    }
    render::line(t)?;
    if plan.executed {
        render::note(format!(
            "reset to {}: written to {}; mirrored to Kafka group '{}' next",
            plan.target, plan.database, plan.group
        ))?;
    } else {
        render::note(format!(
            "dry run (reset to {}): nothing changed; add --execute to apply",
            plan.target
        ))?;
    }
    Ok(())
}

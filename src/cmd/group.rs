//! `streamlab group list|describe`: consumer groups as Kafka sees them — members, committed
//! offsets, log ends, lag — and, with `--sink/-D`, the offsets the database holds beside them
//! (the database is where consume keeps them; Kafka's are its mirror).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Result};
use serde::Serialize;

use super::members::{self, Member};
use crate::db::{self, redact, Reader};
use crate::kafka::admin::Admin;
use crate::kafka::group::GroupDescription;
use crate::kafka::{self, Position};
use crate::render::{self, Format};

/// A `group` subcommand, settled.
pub enum Job {
    List(List),
    Describe(Describe),
}

/// `group list`, settled.
pub struct List {
    pub kafka: kafka::Config,
    pub format: Format,
}

/// `group describe`, settled.
pub struct Describe {
    pub kafka: kafka::Config,
    pub group: String,
    /// Only this topic; `None`: every topic the group has offsets for or is assigned.
    pub topic: Option<String>,
    /// Also the offsets stored in this database, side by side with Kafka's.
    pub target: Option<db::Target>,
    pub format: Format,
}

pub async fn run(job: Job) -> Result<()> {
    match job {
        Job::List(args) => list(args).await,
        Job::Describe(args) => describe(args).await,
    }
}

#[derive(Serialize)]
struct GroupSummary {
    group: String,
    protocol_type: String,
    state: String,
    /// `None` when the broker could not describe the group.
    members: Option<usize>,
}

async fn list(args: List) -> Result<()> {
    let mut admin = Admin::connect(&args.kafka).await?;
    let mut groups = Vec::new();
    for listed in admin.list_groups().await? {
        // ListGroups' state is optional (tansu says "Unknown"); the coordinator knows.
        let (state, members) = match describe_group(&mut admin, &listed.group).await {
            Ok(d) => (d.state, Some(d.members.len())),
            Err(e) => {
                tracing::debug!("describing group '{}': {e:#}", listed.group);
                (listed.state, None)
            }
        };
        groups.push(GroupSummary {
            group: listed.group,
            protocol_type: listed.protocol_type,
            state,
            members,
        });
    }
    match args.format {
        Format::Json => render::json(&groups),
        Format::Table => {
            let mut table = render::table(["GROUP", "TYPE", "STATE", "MEMBERS"]);
            for g in &groups {
                table.add_row(vec![
                    g.group.clone(),
                    g.protocol_type.clone(),
                    g.state.clone(),
                    g.members.map_or("?".into(), |n| n.to_string()),
                ]);
            }
            render::line(table)?;
            Ok(())
        }
    }
}

async fn describe_group(admin: &mut Admin, group: &str) -> Result<GroupDescription> {
    admin.group_coordinator(group).await?.describe().await
}

#[derive(Serialize)]
struct GroupReport {
    group: String,
    state: String,
    /// With --sink/-D: the database the offsets beside Kafka's were read from.
    #[serde(skip_serializing_if = "Option::is_none")]
    database: Option<String>,
    members: Vec<Member>,
    topics: Vec<TopicReport>,
    /// With --sink/-D: partitions whose offset in the database differs from Kafka's.
    #[serde(skip_serializing_if = "Option::is_none")]
    disagreements: Option<usize>,
}

#[derive(Serialize)]
struct TopicReport {
    topic: String,
    /// False when the topic no longer exists (offsets outlive their topic).
    exists: bool,
    partitions: Vec<PartitionReport>,
    total_lag: i64,
}

#[derive(Serialize)]
struct PartitionReport {
    /// The group's committed offset in Kafka, in the partition's log.
    #[serde(flatten)]
    at: At,
    /// The member holding the partition, when known.
    member: Option<String>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    database: Option<DatabaseSide>,
}

/// Where a partition's committed offset stands: in its log, or alone when the topic is gone.
#[derive(Serialize)]
#[serde(untagged)]
enum At {
    Log(Position),
    /// The topic no longer exists (offsets outlive their topic).
    Gone {
        partition: i32,
        committed: Option<i64>,
    },
}

impl At {
    fn committed(&self) -> Option<i64> {
        match self {
            At::Log(p) => p.committed,
            At::Gone { committed, .. } => *committed,
        }
    }

    fn lag(&self) -> i64 {
        match self {
            At::Log(p) => p.lag,
            At::Gone { .. } => 0,
        }
    }
}

#[derive(Serialize)]
struct DatabaseSide {
    /// The offset stored in the database (`None`: none).
    database_offset: Option<i64>,
    /// Whether it equals Kafka's committed offset.
    agrees: bool,
}

async fn describe(args: Describe) -> Result<()> {
    let db = match &args.target {
        Some(target) => {
            let reader = Reader::connect(target, args.kafka.timeout).await?;
            Some((reader, redact(&target.url)))
        }
        None => None,
    };
    let mut admin = Admin::connect(&args.kafka).await?;
    let mut coordinator = admin.group_coordinator(&args.group).await?;
    let described = coordinator.describe().await;
    // (A broker that failed DescribeGroups may have dropped the connection: it is found again.)
    let committed = coordinator.fetch_all().await?;
    let stored: BTreeMap<(String, i32), i64> = match &db {
        Some((reader, _)) => reader
            .stored_offsets(&args.group, args.topic.as_deref())
            .await?
            .into_iter()
            .map(|(topic, p, o)| ((topic, p), o))
            .collect(),
        None => BTreeMap::new(),
    };
    let (state, described) = state_and_members(described, &args.group);
    // The broker's members first: they name topics of their own.
    let mut members = members::merge(described.clone(), &Default::default());
    let mut topics: BTreeSet<String> = committed.keys().cloned().collect();
    topics.extend(stored.keys().map(|(t, _)| t.clone()));
    for m in &members {
        topics.extend(m.partitions.iter().flat_map(|p| p.keys().cloned()));
    }
    let known = !(members.is_empty() && topics.is_empty());
    if !known && state != "unknown" {
        bail!(
            "consumer group '{}' does not exist: Kafka knows no member or offset of it{} \
             (`streamlab group list` shows the groups)",
            args.group,
            db.as_ref()
                .map(|(_, url)| format!(", and {url} stores none"))
                .unwrap_or_default()
        );
    }
    if let Some(topic) = &args.topic {
        topics = BTreeSet::from([topic.clone()]);
    }
    if let Some((reader, _)) = &db {
        let recorded = members::recorded(reader, &args.group, &topics).await?;
        members = members::merge(described, &recorded);
    }
    let (reports, disagreements) = topic_reports(
        &args,
        &topics,
        &committed,
        db.as_ref().map(|_| &stored),
        &members,
    )
    .await?;
    let report = GroupReport {
        group: args.group,
        state,
        database: db.map(|(_, url)| url),
        members,
        topics: reports,
        disagreements,
    };
    match args.format {
        Format::Json => render::json(&report),
        Format::Table => print_report(&report),
    }
}

/// The group's state and members as the broker describes them; "unknown" and none, with a
/// warning, where it cannot (tansu's SQLite engine).
fn state_and_members(
    described: Result<GroupDescription>,
    group: &str,
) -> (String, Option<Vec<kafka::group::MemberDescription>>) {
    match described {
        Ok(d) => (d.state, Some(d.members)),
        Err(e) => {
            tracing::warn!(
                "the broker could not describe group '{group}' ({e:#}): members as the database \
                 recorded them, if given one"
            );
            ("unknown".to_string(), None)
        }
    }
}

/// A report per topic, and with a database how many partitions it disagrees with Kafka on.
async fn topic_reports(
    args: &Describe,
    topics: &BTreeSet<String>,
    committed: &BTreeMap<String, BTreeMap<i32, i64>>,
    stored: Option<&BTreeMap<(String, i32), i64>>,
    members: &[Member],
) -> Result<(Vec<TopicReport>, Option<usize>)> {
    let mut reports = Vec::new();
    for topic in topics {
        let in_kafka = committed.get(topic).cloned().unwrap_or_default();
        let in_db: Option<BTreeMap<i32, i64>> = stored.map(|stored| {
            stored
                .iter()
                .filter(|((t, _), _)| t == topic)
                .map(|((_, p), o)| (*p, *o))
                .collect()
        });
        reports.push(topic_report(&args.kafka, topic, &in_kafka, in_db.as_ref(), members).await?);
    }
    let disagreements = stored.map(|_| {
        reports
            .iter()
            .flat_map(|t| &t.partitions)
            .filter(|p| p.database.as_ref().is_some_and(|d| !d.agrees))
            .count()
    });
    Ok((reports, disagreements))
}

/// One topic's partitions: Kafka's committed offsets against the log, the database's beside.
async fn topic_report(
    opts: &kafka::Config,
    topic: &str,
    committed: &BTreeMap<i32, i64>,
    stored: Option<&BTreeMap<i32, i64>>,
    members: &[Member],
) -> Result<TopicReport> {
    let ranges = match kafka::fetch::TopicReaders::open(opts, topic).await {
        Ok(mut readers) => Some(readers.ranges().await?),
        Err(e) if matches!(kafka::Error::of(&e), Some(kafka::Error::UnknownTopic(_))) => None,
        Err(e) => return Err(e),
    };
    let mut ids: BTreeSet<i32> = committed.keys().copied().collect();
    ids.extend(stored.iter().flat_map(|s| s.keys().copied()));
    ids.extend(ranges.iter().flat_map(|r| r.keys().copied()));
    let owner = |p: i32| {
        members
            .iter()
            .find(|m| {
                m.partitions
                    .as_ref()
                    .and_then(|ps| ps.get(topic))
                    .is_some_and(|ps| ps.contains(&p))
            })
            .map(|m| m.member_id.clone())
    };
    let partitions: Vec<PartitionReport> = ids
        .into_iter()
        .map(|p| {
            let committed = committed.get(&p).copied();
            let at = match ranges.as_ref().and_then(|r| r.get(&p).copied()) {
                Some(range) => At::Log(Position::new(p, range, committed)),
                None => At::Gone {
                    partition: p,
                    committed,
                },
            };
            PartitionReport {
                at,
                member: owner(p),
                database: stored.map(|s| {
                    let database_offset = s.get(&p).copied();
                    DatabaseSide {
                        database_offset,
                        agrees: database_offset == committed,
                    }
                }),
            }
        })
        .collect();
    Ok(TopicReport {
        topic: topic.to_string(),
        exists: ranges.is_some(),
        total_lag: partitions.iter().map(|p| p.at.lag()).sum(),
        partitions,
    })
}

fn print_report(r: &GroupReport) -> Result<()> {
    let show = super::offset_text;
    let mut title = super::group_heading(&r.group, &r.state, r.members.len());
    if let Some(db) = &r.database {
        title.push_str(&format!(" · offsets beside those of {db}"));
    }
    render::line(title)?;
    if !r.members.is_empty() {
        let mut t = render::table(["MEMBER", "CLIENT", "HOST", "PARTITIONS"]);
        for m in &r.members {
            t.add_row(vec![
                m.member_id.clone(),
                m.recorded_client
                    .clone()
                    .unwrap_or_else(|| m.client_id.clone()),
                m.host.clone(),
                match &m.partitions {
                    None => "? (not reported by the broker)".to_string(),
                    Some(ps) if ps.values().all(Vec::is_empty) => "none".to_string(),
                    Some(ps) => ps
                        .iter()
                        .filter(|(_, list)| !list.is_empty())
                        .map(|(topic, list)| {
                            let list: Vec<String> = list.iter().map(i32::to_string).collect();
                            format!("{topic}:{}", list.join(","))
                        })
                        .collect::<Vec<_>>()
                        .join(" "),
                },
            ]);
        }
        render::line(format!("\n{t}"))?;
    }
    let with_db = r.database.is_some();
    let mut header = vec!["TOPIC", "PARTITION", "COMMITTED"];
    if with_db {
        header.extend(["DATABASE", "AGREE"]);
    }
    header.extend(["LOG START", "LOG END", "LAG", "MEMBER"]);
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING)
        .set_header(header);
    for topic in &r.topics {
        let name = if topic.exists {
            topic.topic.clone()
        } else {
            format!("{} (deleted)", topic.topic)
        };
        for p in &topic.partitions {
            let (partition, log) = match &p.at {
                At::Log(pos) => (pos.partition, Some(pos)),
                At::Gone { partition, .. } => (*partition, None),
            };
            let mut row = vec![name.clone(), partition.to_string(), show(p.at.committed())];
            if let Some(db) = &p.database {
                row.push(show(db.database_offset));
                row.push(render::verdict(
                    if db.agrees { "yes" } else { "NO" },
                    db.agrees,
                ));
            }
            let lag = log.map_or("-".to_string(), super::lag_text);
            row.extend([
                show(log.map(|pos| pos.log_start)),
                show(log.map(|pos| pos.log_end)),
                lag,
                p.member.clone().unwrap_or_else(|| "-".into()),
            ]);
            t.add_row(row);
        }
        let mut total = vec![name, "total".to_string(), String::new()];
        if with_db {
            total.extend([String::new(), String::new()]);
        }
        total.extend([String::new(), String::new(), topic.total_lag.to_string()]);
        t.add_row(total);
    }
    render::line(format!("\n{t}"))?;
    if let Some(n) = r.disagreements.filter(|&n| n > 0) {
        render::line(format!(
            "\n{n} partition(s) where the database and Kafka disagree: the database is the \
             truth (it is written with the rows); consume mirrors it to Kafka as it commits"
        ))?;
    }
    Ok(())
}

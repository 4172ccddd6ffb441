//! `streamlab topic …`: create, retention, list, describe, delete, config.

use std::collections::BTreeMap;

use anyhow::Result;
use serde::Serialize;

use super::members;
use crate::duration::human_ms;
use crate::kafka;
use crate::kafka::admin::{Admin, ConfigChange, ConfigEntry, Created, Deleted};
use crate::render::{self, Format};

const RETENTION_MS: &str = "retention.ms";
const CLEANUP_POLICY: &str = "cleanup.policy";

/// Kafka's default `cleanup.policy`, made explicit where retention is set and the user chose no
/// policy: some brokers (tansu) delete old records only where the topic says `delete`.
const DELETE: &str = "delete";

/// Whether `configs` set a retention limit without saying what happens at it: then `delete`,
/// Kafka's default, is sent explicitly.
fn needs_explicit_delete<'a>(keys: impl Iterator<Item = &'a str>) -> bool {
    let (mut retention, mut policy) = (false, false);
    for key in keys {
        retention |= key == RETENTION_MS || key == "retention.bytes";
        policy |= key == CLEANUP_POLICY;
    }
    retention && !policy
}

/// A `topic` subcommand, settled.
pub enum Job {
    Create(Create),
    Retention(Retention),
    List(List),
    Describe(Describe),
    Delete(Delete),
    Config(Configs),
}

/// `topic create`, settled.
pub struct Create {
    pub kafka: kafka::Config,
    pub topic: String,
    pub partitions: i32,
    pub replication_factor: i16,
    /// Topic configs applied at creation, in the order given.
    pub configs: Vec<(String, String)>,
    pub if_not_exists: bool,
}

/// `topic retention`, settled.
pub struct Retention {
    pub kafka: kafka::Config,
    pub topic: String,
    /// The new `retention.ms`; `None` shows the current one.
    pub set_ms: Option<i64>,
}

/// `topic list`, settled.
pub struct List {
    pub kafka: kafka::Config,
    pub format: Format,
}

/// `topic describe`, settled.
pub struct Describe {
    pub kafka: kafka::Config,
    pub topic: String,
    /// Also this group's members and their partitions.
    pub group: Option<String>,
    pub format: Format,
}

/// `topic delete`, settled.
pub struct Delete {
    pub kafka: kafka::Config,
    pub topic: String,
    pub if_exists: bool,
}

/// `topic config`, settled.
pub struct Configs {
    pub kafka: kafka::Config,
    pub topic: String,
    /// The changes asked for, each key at most once (none: only show the configs).
    pub changes: Vec<ConfigChange>,
    pub format: Format,
}

pub async fn run(job: Job) -> Result<()> {
    match job {
        Job::Create(args) => create(args).await,
        Job::Retention(args) => retention(args).await,
        Job::List(args) => list(args).await,
        Job::Describe(args) => describe(args).await,
        Job::Delete(args) => delete(args).await,
        Job::Config(args) => config(args).await,
    }
}

async fn delete(args: Delete) -> Result<()> {
    let mut admin = Admin::connect(&args.kafka).await?;
    match admin.delete_topic(&args.topic).await? {
        Deleted::Deleted => render::note(format!("deleted topic '{}'", args.topic))?,
        Deleted::Unknown if args.if_exists => {
            render::note(format!("topic '{}' does not exist", args.topic))?
        }
        Deleted::Unknown => anyhow::bail!(
            "topic '{}' does not exist (pass --if-exists to accept that)",
            args.topic
        ),
    }
    Ok(())
}

/// A topic's configs before and after `topic config` changed them.
#[derive(Serialize)]
struct ConfigReport {
    topic: String,
    /// Every config the broker reports (after the changes, when there were any).
    configs: Vec<ConfigEntry>,
    /// What was changed: key, value before, value after (`None`: not set on the topic).
    changed: Vec<ConfigChanged>,
}

#[derive(Serialize)]
struct ConfigChanged {
    name: String,
    old: Option<String>,
    new: Option<String>,
}

async fn config(args: Configs) -> Result<()> {
    let changes = args.changes;
    let mut admin = Admin::connect(&args.kafka).await?;
    // Some brokers (tansu) describe the configs of a topic that does not exist as empty.
    admin.topic(&args.topic).await?;
    let before = admin.describe_topic_configs(&args.topic).await?;
    let configs = if changes.is_empty() {
        before.clone()
    } else {
        admin.alter_topic_configs(&args.topic, &changes).await?;
        admin.describe_topic_configs(&args.topic).await?
    };
    // The value set on the topic, if any (a default shows as no value of the topic's own).
    let own = |entries: &[ConfigEntry], key: &str| {
        entries
            .iter()
            .find(|c| c.name == key && !c.is_default)
            .and_then(|c| c.value.clone())
    };
    let changed = changes
        .iter()
        .map(|change| ConfigChanged {
            name: change.key().to_string(),
            old: own(&before, change.key()),
            new: own(&configs, change.key()),
        })
        .collect();
    let report = ConfigReport {
        topic: args.topic,
        configs,
        changed,
    };
    match args.format {
        Format::Json => render::json(&report),
        Format::Table => {
            let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(default)".into());
            for c in &report.changed {
                render::line(format!(
                    "{} of '{}': {} → {}",
                    c.name,
                    report.topic,
                    show(&c.old),
                    show(&c.new)
                ))?;
            }
            if report.changed.is_empty() {
                let mut table = render::table(["CONFIG", "VALUE", "SOURCE"]);
                for c in &report.configs {
                    table.add_row(vec![
                        c.name.clone(),
                        c.value.clone().unwrap_or_else(|| "-".into()),
                        if c.is_default { "default" } else { "topic" }.to_string(),
                    ]);
                }
                render::line(format!("topic '{}'\n{table}", report.topic))?;
            }
            Ok(())
        }
    }
}

async fn create(args: Create) -> Result<()> {
    let mut admin = Admin::connect(&args.kafka).await?;
    let mut configs = args.configs.clone();
    if needs_explicit_delete(configs.iter().map(|(k, _)| k.as_str())) {
        configs.push((CLEANUP_POLICY.into(), DELETE.into()));
    }
    let outcome = admin
        .create_topic(
            &args.topic,
            args.partitions,
            args.replication_factor,
            &configs,
        )
        .await?;
    match outcome {
        Created::Created => {
            let configs: Vec<String> = configs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let configs = if configs.is_empty() {
                String::new()
            } else {
                format!(" with {}", configs.join(", "))
            };
            render::note(format!(
                "created topic '{}': {} partition(s), replication factor {}{configs}",
                args.topic, args.partitions, args.replication_factor
            ))?;
            Ok(())
        }
        Created::AlreadyExists if args.if_not_exists => {
            render::note(format!("topic '{}' already exists", args.topic))?;
            Ok(())
        }
        Created::AlreadyExists => anyhow::bail!(
            "topic '{}' already exists (pass --if-not-exists to accept that)",
            args.topic
        ),
    }
}

/// A topic's `retention.ms`: its value (None when the broker does not report one, i.e. it is
/// not set on the topic) and whether it is the broker's default rather than a topic override.
#[derive(Debug, Clone, Copy, Serialize)]
struct CurrentRetention {
    ms: Option<i64>,
    is_default: bool,
}

impl std::fmt::Display for CurrentRetention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.ms {
            None => write!(f, "not set on the topic (the broker default applies)"),
            Some(ms) if self.is_default => write!(f, "{ms} ({}, broker default)", human_ms(ms)),
            Some(ms) => write!(f, "{ms} ({})", human_ms(ms)),
        }
    }
}

async fn current_retention(admin: &mut Admin, topic: &str) -> Result<CurrentRetention> {
    let configs = admin.describe_topic_configs(topic).await?;
    let Some(entry) = configs.into_iter().find(|c| c.name == RETENTION_MS) else {
        return Ok(CurrentRetention {
            ms: None,
            is_default: true,
        });
    };
    let value = entry.value.as_deref().unwrap_or("-1");
    let ms = value
        .parse::<i64>()
        .map_err(|_| anyhow::anyhow!("the broker reported {RETENTION_MS}={value}, not a number"))?;
    Ok(CurrentRetention {
        ms: Some(ms),
        is_default: entry.is_default,
    })
}

async fn retention(args: Retention) -> Result<()> {
    let mut admin = Admin::connect(&args.kafka).await?;
    // Some brokers (tansu) describe the configs of a topic that does not exist as empty;
    // metadata says plainly whether it exists.
    admin.metadata(Some(&[args.topic.as_str()])).await?;
    let old = current_retention(&mut admin, &args.topic).await?;
    match args.set_ms {
        None => render::line(format!("{RETENTION_MS} of '{}': {old}", args.topic))?,
        Some(new_ms) => {
            let mut changes = vec![ConfigChange::Set(RETENTION_MS.into(), new_ms.to_string())];
            // A topic without a cleanup.policy of its own gets Kafka's default, `delete`,
            // explicitly — unless the broker's default is another policy (compaction).
            let configs = admin.describe_topic_configs(&args.topic).await?;
            let policy = configs.iter().find(|c| c.name == CLEANUP_POLICY);
            let own_keys = configs.iter().filter(|c| !c.is_default);
            let default_deletes = policy
                .and_then(|c| c.value.as_deref())
                .is_none_or(|p| p.contains(DELETE));
            let set_policy = default_deletes
                && needs_explicit_delete(own_keys.map(|c| c.name.as_str()).chain([RETENTION_MS]));
            if set_policy {
                changes.push(ConfigChange::Set(CLEANUP_POLICY.into(), DELETE.into()));
            }
            admin.alter_topic_configs(&args.topic, &changes).await?;
            let now = current_retention(&mut admin, &args.topic).await?;
            render::line(format!("{RETENTION_MS} of '{}': {old} → {now}", args.topic))?;
            if set_policy {
                render::note(format!(
                    "{CLEANUP_POLICY} of '{}': set to {DELETE} (Kafka's default, explicit so that \
                     every broker deletes records older than {RETENTION_MS})",
                    args.topic
                ))?;
            }
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct TopicSummary {
    name: String,
    partitions: usize,
}

async fn list(args: List) -> Result<()> {
    let mut admin = Admin::connect(&args.kafka).await?;
    let topics: Vec<TopicSummary> = admin
        .metadata(None)
        .await?
        .into_iter()
        .filter(|t| !t.internal)
        .map(|t| TopicSummary {
            name: t.name,
            partitions: t.partitions.len(),
        })
        .collect();
    match args.format {
        Format::Json => render::json(&topics),
        Format::Table => {
            let mut table = render::table(["TOPIC", "PARTITIONS"]);
            for t in &topics {
                table.add_row(vec![t.name.clone(), t.partitions.to_string()]);
            }
            render::line(table)?;
            Ok(())
        }
    }
}

#[derive(Serialize)]
struct PartitionDescription {
    partition: i32,
    leader: i32,
    replicas: Vec<i32>,
    /// The first offset the log still holds, and the next one to be written.
    log_start: i64,
    log_end: i64,
    /// Records a reader finds between them: fewer than the offsets spanned where compaction
    /// (or retention, on a broker that does not move its log start) removed some. Counted by
    /// reading on a compacted topic; elsewhere the offsets spanned.
    records_present: i64,
    /// Offsets the records present are spread over: from 0 on a topic that only compacts (its
    /// log never starts later), else from the log start; compacted away = spanned − present.
    offsets_spanned: i64,
}

/// The partitions of `topic describe`; on a compacted topic, with the records a reader finds
/// and the share of the offsets compaction removed.
fn partitions_table(partitions: &[PartitionDescription], compacted: bool) -> comfy_table::Table {
    let header = ["PARTITION", "LEADER", "LOG START", "LOG END", "RECORDS"];
    let mut table = if compacted {
        let [a, b, c, d, e] = header;
        render::table([a, b, c, d, e, "COMPACTED AWAY"])
    } else {
        render::table(header)
    };
    for p in partitions {
        let spanned = p.offsets_spanned;
        let mut row = vec![
            p.partition.to_string(),
            p.leader.to_string(),
            p.log_start.to_string(),
            p.log_end.to_string(),
            p.records_present.to_string(),
        ];
        if compacted {
            let removed = spanned - p.records_present;
            let share = 100.0 * removed as f64 / spanned.max(1) as f64;
            row.push(format!("{removed} of {spanned} offsets ({share:.0}%)"));
        }
        table.add_row(row);
    }
    table
}

/// Records present and offsets spanned per partition: on a compacted topic (its log has
/// gaps) the records are read and counted, over offsets from 0 when the topic only compacts
/// (nothing moves its start; tansu reports the first record left as the start); elsewhere both
/// are the offsets from the log start to its end.
async fn records_present(
    topic: &mut kafka::fetch::TopicReaders,
    ranges: &BTreeMap<i32, (i64, i64)>,
    policy: Option<&str>,
) -> Result<BTreeMap<i32, (i64, i64)>> {
    let compacted = policy.is_some_and(kafka::compacts);
    let only_compacts = compacted && !policy.is_some_and(|p| p.contains("delete"));
    let mut present = BTreeMap::new();
    for reader in &mut topic.readers {
        let (start, end) = ranges.get(&reader.partition()).copied().unwrap_or((0, 0));
        let counted = if compacted {
            let read = reader.read_range(start, end, |_| {}).await? as i64;
            (read, if only_compacts { end } else { end - start })
        } else {
            (end - start, end - start)
        };
        present.insert(reader.partition(), counted);
    }
    Ok(present)
}

#[derive(Serialize)]
struct TopicDescription {
    topic: String,
    /// None: not set on the topic, the broker default applies.
    retention_ms: Option<i64>,
    retention_is_default: bool,
    /// `cleanup.policy` (None: not reported, the broker default applies).
    cleanup_policy: Option<String>,
    partitions: Vec<PartitionDescription>,
    /// With --group: its members and their partitions of this topic.
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<members::GroupView>,
}

async fn describe(args: Describe) -> Result<()> {
    let mut admin = Admin::connect(&args.kafka).await?;
    let metadata = admin.topic(&args.topic).await?;
    let mut topic = kafka::fetch::TopicReaders::of(&args.kafka, metadata);
    let retention = current_retention(&mut admin, &args.topic).await?;
    let cleanup_policy = admin.cleanup_policy(&args.topic).await?;
    let ranges = topic.ranges().await?;
    let compacted = cleanup_policy.as_deref().is_some_and(kafka::compacts);
    let present = records_present(&mut topic, &ranges, cleanup_policy.as_deref()).await?;
    let metadata = topic.metadata;
    let group = match &args.group {
        Some(group) => {
            let mut coordinator = admin.group_coordinator(group).await?;
            // No database here: partitions are what the broker reports.
            let view = members::group_view_or_none(&mut coordinator, None, &args.topic).await;
            Some(view.unwrap_or_else(|| members::GroupView {
                group: group.clone(),
                state: "Empty".to_string(),
                members: Vec::new(),
                note: None,
            }))
        }
        None => None,
    };
    let description = TopicDescription {
        topic: args.topic.clone(),
        retention_ms: retention.ms,
        retention_is_default: retention.is_default,
        cleanup_policy,
        partitions: metadata
            .partitions
            .into_iter()
            .map(|p| {
                let (earliest, latest) = ranges.get(&p.partition).copied().unwrap_or((0, 0));
                PartitionDescription {
                    partition: p.partition,
                    leader: p.leader,
                    replicas: p.replicas,
                    log_start: earliest,
                    log_end: latest,
                    records_present: present.get(&p.partition).map_or(0, |c| c.0),
                    offsets_spanned: present.get(&p.partition).map_or(0, |c| c.1),
                }
            })
            .collect(),
        group,
    };
    match args.format {
        Format::Json => render::json(&description),
        Format::Table => {
            let policy = match &description.cleanup_policy {
                Some(policy) => format!(" · cleanup.policy {policy}"),
                None => String::new(),
            };
            render::line(format!(
                "topic '{}' · {} partition(s) · retention {retention}{policy}",
                description.topic,
                description.partitions.len(),
            ))?;
            render::line(partitions_table(&description.partitions, compacted))?;
            if let Some(g) = &description.group {
                render::line(super::group_lines(g))?;
            }
            Ok(())
        }
    }
}

//! `streamlab consume`: every partition of a topic into a database, exactly once per event.
//!
//! One fetch task per partition feeds a bounded channel (backpressure: memory does not grow with
//! the backlog); this task turns what arrives into batches and writes each batch — rows, dead
//! letters and new offsets — in one database transaction. Only then are the offsets mirrored to
//! the Kafka consumer group, so Kafka tooling sees the position; the database stays the truth.
//!
//! A consumer is one member of its `--group` ([`crate::kafka::group`]) and runs that loop once
//! per generation, over the partitions the group gave it. With `--assign all` it reads every
//! partition alone, with `--partition N…` only those. A member, and a consumer of every
//! partition, re-reads the topic's metadata every `--metadata-refresh` and picks up partitions
//! added meanwhile (a member rejoins, so the leader assigns them).
//!
//! Before reading, the stored offsets are checked against the log they are applied to: offsets
//! of an earlier incarnation of the topic (another topic id) are reset per `--from`, offsets
//! past the log end stop the run unless `--reset-offsets-ahead` says where to go.

mod batches;
pub(crate) use batches::{build_batch, BatchRules};
mod fetcher;
mod lanes;
pub(crate) use lanes::{cores, lane_for, writer_count};
mod member;
mod mirror;
mod plan;
mod show;
mod write;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::db::{self, Database, Deadline, Sink};
use crate::events::EventKind;
use crate::kafka::admin::TopicMetadata;
use crate::kafka::group::Membership;
use crate::kafka::records::{CorruptBatch, FetchedRecord};
use crate::kafka::{self, Position, StartFrom};
use crate::progress::Progress;
use crate::shutdown;
use mirror::GroupMirror;

/// `consume --batch-size` unless given (also the batch `bench` loads its PostgreSQL limit in).
pub const DEFAULT_BATCH_SIZE: u32 = 5000;

pub async fn run(mut args: Config) -> Result<()> {
    crate::metrics::serve(args.metrics_addr)?;
    args.compacted = compacted(&args).await?;
    let timeout = args.kafka.timeout;
    let database = Database::connect(&args.target, timeout).await?;
    args.writer_cap = database
        .writer_cap(args.writers, &args.target.describe())
        .await?;
    // Every statement gets --timeout: a database that stops answering must not hang the run.
    let limit = db::connect_timeout(timeout);
    let described = args.target.describe();
    consume(&args, Deadline::new(database, limit, described)).await
}

/// What a consume run is asked to do: the command line, settled (by `cli`). The loop below
/// `run` reads this, never clap's arguments.
pub struct Config {
    pub kafka: kafka::Config,
    /// The database written to.
    pub target: db::Target,
    /// Serve Prometheus metrics here while running.
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub topic: String,
    pub group: String,
    /// As a member, every partition alone, or the named ones (checked against the topic later).
    pub reading: Reading,
    pub membership: Membership,
    pub kind: EventKind,
    /// `--upsert`: one row per record key in the kind's `_latest` table.
    pub upsert: bool,
    /// The topic's `cleanup.policy` compacts it: gaps in its log are not records lost.
    pub compacted: bool,
    /// Where a partition with no stored offset starts.
    pub from: StartFrom,
    /// Where offsets stored past the log end move to; `None` stops the run instead.
    pub reset_offsets_ahead: Option<StartFrom>,
    pub skip_corrupt_batches: bool,
    pub metadata_refresh: Duration,
    pub stop_at_end: bool,
    /// Most events in one transaction.
    pub batch_size: usize,
    /// Writers side by side, each over its own partitions (1 with --throttle); None: chosen
    /// from the partitions held and the cores ([`lanes::writer_count`]).
    pub writers: Option<usize>,
    /// Most writers the database takes side by side: 1 on SQLite, the connections to spare
    /// on PostgreSQL (settled once connected).
    pub writer_cap: usize,
    pub print_each: bool,
    /// `--format json`: the summary as one JSON document.
    pub json: bool,
    pub max_event_bytes: usize,
    /// Events per second at most (a deliberately slow sink).
    pub throttle: Option<u32>,
}

/// Whether the topic is compacted (read once: there, gaps in the log are records compaction
/// replaced). A broker that answers but will not say (DescribeConfigs not allowed, say) costs a
/// warning; one that cannot be reached or refuses us ends the run here, with its own one line.
async fn compacted(args: &Config) -> Result<bool> {
    let answered = kafka::retry::BrokerError::code_in;
    match kafka::is_compacted(&args.kafka, &args.topic).await {
        Ok(compacted) => Ok(compacted),
        // An unknown topic is named by what comes next, in its own words.
        Err(e)
            if answered(&e)
                == Some(kafka_protocol::error::ResponseError::UnknownTopicOrPartition) =>
        {
            Ok(false)
        }
        Err(e) if answered(&e).is_some() => {
            tracing::warn!(
                "cannot read the cleanup.policy of '{}' ({e:#}); treating gaps in its log as \
                 records removed by retention",
                args.topic
            );
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// What one fetch of one partition moves forward.
pub(crate) struct Fetched {
    partition: i32,
    records: Vec<FetchedRecord>,
    /// Where the partition's position moves once this is written: past control batches,
    /// aborted transactions, records retention removed, or a skipped corrupt batch.
    next_offset: i64,
    /// The end a `read_committed` reader can reach, as the broker last reported it.
    stable_end: i64,
    /// A corrupt batch skipped with `--skip-corrupt-batches`: stored as a dead letter.
    skipped: Option<CorruptBatch>,
}

impl Fetched {
    /// `records` of `partition` read up to `next_offset`, nothing stepped over
    /// (`bench --cost`'s consume path).
    pub(crate) fn records(partition: i32, records: Vec<FetchedRecord>, next_offset: i64) -> Self {
        Self {
            partition,
            records,
            next_offset,
            stable_end: next_offset,
            skipped: None,
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct ConsumeSummary {
    pub consumed: u64,
    pub inserted: u64,
    pub duplicates: u64,
    /// `--upsert`: rows deleted by tombstones.
    pub deleted: u64,
    /// `--upsert`: changes a later change of the same key in the same batch replaced.
    pub superseded: u64,
    pub dead_lettered: u64,
    pub elapsed_secs: f64,
    /// Per partition: where the run left it (`committed`: the next offset to read) and the lag
    /// behind the last stable end it saw.
    pub partitions: BTreeMap<i32, Position>,
    /// As a group member: each assignment the group gave it, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub assignments: Vec<Assigned>,
}

/// One assignment a group member was given.
#[derive(Debug, Serialize)]
pub struct Assigned {
    pub generation: i32,
    pub partitions: Vec<i32>,
    /// It led the group (and computed the assignment).
    pub leader: bool,
}

/// How a consumer gets its partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reading {
    /// As a member of `--group`: the partitions the group assigns (the default).
    Member,
    /// `--assign all`: every partition, alone.
    All,
    /// `--partition N…`: these partitions (sorted, each once), alone.
    Only(Vec<i32>),
}

impl Reading {
    /// What was asked, checked against the topic: partitions it does not have are an error.
    fn checked(&self, topic: &TopicMetadata) -> Result<Self> {
        match self {
            Self::Only(asked) => Ok(Self::Only(topic.only(asked)?)),
            _ => Ok(self.clone()),
        }
    }
}

async fn consume<S: Sink>(args: &Config, sink: S) -> Result<()> {
    let shutdown = shutdown::on_signal();
    let topic = kafka::topic_metadata(&args.kafka, &args.topic).await?;
    let reading = args.reading.checked(&topic)?;
    let partitions = match &reading {
        Reading::Only(only) => only.clone(),
        Reading::Member | Reading::All => topic.partition_ids(),
    };
    let mut consumer = Consumer {
        args,
        sink,
        rules: BatchRules::of(args, &topic),
        topic,
        added: BTreeSet::new(),
        mirror: GroupMirror::new(&args.kafka, &args.group),
        summary: ConsumeSummary::default(),
        progress: Progress::new(),
        started: Instant::now(),
    };
    let mut stored = consumer
        .sink
        .load_offsets(&args.group, &args.topic)
        .await
        .context("reading stored offsets")?;
    stored.retain(|p, _| partitions.contains(p));
    consumer
        .mirror
        .compare(&args.topic, &partitions, &stored)
        .await;

    let result = match &reading {
        Reading::Member => consumer.as_group_member(&shutdown).await,
        Reading::All => consumer.alone(&shutdown).await,
        Reading::Only(only) => consumer.only(only, &shutdown).await,
    };

    consumer.progress.finish();
    consumer.summary.elapsed_secs = consumer.started.elapsed().as_secs_f64();
    show::summary(args, &consumer.summary)?;
    result
}

/// Why consuming a set of partitions ended.
enum Ended {
    /// Ctrl-C or SIGTERM.
    Shutdown,
    /// `--stop-at-end` reached, or there was nothing to read.
    ReachedEnd,
    /// The group took the partitions back (rebalance, or this member was dropped), or the
    /// topic gained partitions.
    Revoked,
    /// The database's offset fence refused a batch: someone else wrote one of these partitions.
    Fenced(anyhow::Error),
}

/// One consume run: the sink and the running totals, across generations.
struct Consumer<'a, S> {
    args: &'a Config,
    sink: S,
    /// What `build_batch` needs of the command line and the topic.
    rules: BatchRules,
    /// The topic as the broker last described it: partitions, their leaders, its id.
    topic: TopicMetadata,
    /// Partitions that appeared while this run went on: read from their start, whatever
    /// `--from` says (they were created after the run began, so all of them is new).
    added: BTreeSet<i32>,
    mirror: GroupMirror,
    summary: ConsumeSummary,
    progress: Progress,
    started: Instant,
}

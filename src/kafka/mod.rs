//! Everything that talks to Kafka lives here.
//!
//! rskafka does the data path (produce, fetch, list offsets, metadata). What it lacks — topic
//! configs, consumer-group offsets, per-partition leaders — goes through [`wire`], a small framed
//! connection that speaks `kafka-protocol` messages at versions negotiated with ApiVersions.

pub mod admin;
pub mod assign;
pub mod bounds;
mod error;
#[cfg(test)]
mod fake;
pub mod fetch;
pub mod group;
pub mod names;
pub mod partitioner;
pub mod produce;
pub mod records;
pub mod retry;
mod sasl;
pub mod security;
pub mod wire;

pub use error::Error;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use rskafka::client::partition::{PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::BackoffConfig;

/// How to reach Kafka. The command line (`cli::KafkaOpts`) is turned into this once; nothing
/// below the commands sees clap's types.
#[derive(Debug, Clone)]
pub struct Config {
    /// Bootstrap addresses, `host:port`.
    pub brokers: Vec<String>,
    /// How long a broker may stay silent before an operation gives up.
    pub timeout: Duration,
    /// TLS and SASL for every connection: bootstrap, leaders, coordinators alike.
    pub security: security::Security,
    /// What was learnt about the cluster while running (shared by clones).
    pub cluster: Arc<retry::Cluster>,
}

/// Where a broker is looked for when nothing says otherwise.
pub const DEFAULT_BROKERS: &str = "localhost:9092";

impl Default for Config {
    fn default() -> Self {
        Self {
            brokers: vec![DEFAULT_BROKERS.into()],
            timeout: Duration::from_secs(10),
            security: security::Security::default(),
            cluster: Arc::default(),
        }
    }
}

/// Bytes asked for per fetch request and partition. Also bounds consume's memory: at most a few
/// of these are in flight or queued per partition.
pub const FETCH_BYTES: i32 = 256 * 1024;

/// How long a fetch may wait on the broker for new records when a partition has been quiet
/// for a while. Short, because tansu 0.6 reads a partition once, when a fetch arrives, and
/// answers only when the wait is over — records that arrive meanwhile wait for the next fetch
/// (Apache Kafka answers as soon as they arrive).
pub const FETCH_MAX_WAIT_MS: i32 = 20;

/// The wait of a consumer's fetch while records flow but the last answer was empty: with tansu,
/// the longest a new record waits to be fetched (see [`FETCH_MAX_WAIT_MS`]). After an answer
/// with records the next fetch does not wait at all.
pub const FETCH_POLL_MS: i32 = 5;

/// Retries with a deadline: rskafka's default backoff retries forever, which turns a typo in
/// `--bootstrap-server` into a hang.
pub fn backoff(deadline: Duration) -> BackoffConfig {
    BackoffConfig {
        init_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(2),
        base: 2.0,
        deadline: Some(deadline),
    }
}

/// Connect the data-path client, failing within `--timeout` with the address in the message.
///
/// The first bootstrap broker that answers is asked first over [`wire`], with the same security
/// settings: a wrong password, an untrusted certificate or a TLS/plaintext mismatch then ends in
/// one line naming it, rather than in rskafka's retries until the deadline.
pub async fn connect(opts: &Config) -> Result<Client> {
    let brokers = opts.brokers.clone();
    if brokers.is_empty() {
        anyhow::bail!("no broker address to connect to");
    }
    match admin::Admin::connect(opts).await {
        Ok(admin) => drop(admin),
        Err(e) if Error::is_refused(&e) => return Err(e),
        // Unreachable or not up yet: rskafka retries until the deadline.
        Err(_) => {}
    }
    let mut builder = ClientBuilder::new(brokers.clone())
        .client_id("streamlab")
        .max_message_size(100 * 1024 * 1024)
        .backoff_config(backoff(opts.timeout));
    if let Some(tls) = &opts.security.tls {
        builder = builder.tls_config(tls.config.clone());
    }
    if let Some(sasl) = opts.security.rskafka_sasl() {
        builder = builder.sasl_config(sasl);
    }
    match tokio::time::timeout(opts.timeout + Duration::from_secs(1), builder.build()).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(anyhow!(
            "cannot reach Kafka at {} within {}: {e}",
            brokers.join(","),
            humantime::format_duration(opts.timeout)
        )),
        Err(_) => Err(anyhow!(
            "cannot reach Kafka at {} within {}",
            brokers.join(","),
            humantime::format_duration(opts.timeout)
        )),
    }
}

/// The partitions of `topic`, or a clear error that offers to create it.
pub async fn partitions_of(client: &Client, topic: &str) -> Result<Vec<i32>> {
    let topics = client.list_topics().await.context("listing topics")?;
    match topics.into_iter().find(|t| t.name == topic) {
        Some(t) if !t.partitions.is_empty() => Ok(t.partitions.into_iter().collect()),
        _ => Err(Error::UnknownTopic(topic.to_string()).into()),
    }
}

/// One client per partition, each bound to that partition's leader.
///
/// rskafka follows a moving leader itself: a produce answered NOT_LEADER_OR_FOLLOWER or
/// LEADER_NOT_AVAILABLE, or a connection that broke, invalidates its cached leader and metadata
/// and retries within [`backoff`]'s deadline (`--timeout`). UNKNOWN_TOPIC_OR_PARTITION is
/// retried too (`UnknownTopicHandling::Retry`): the caller checked the topic exists
/// ([`partitions_of`]), so here it means a broker that does not (yet) know it leads the
/// partition. A produce that still fails is not acknowledged: the caller reports it, never
/// counts it.
pub async fn partition_clients(
    client: &Client,
    topic: &str,
    partitions: &[i32],
) -> Result<Vec<Arc<PartitionClient>>> {
    let mut out = Vec::with_capacity(partitions.len());
    for &p in partitions {
        let pc = client
            .partition_client(topic, p, UnknownTopicHandling::Retry)
            .await
            .with_context(|| format!("connecting to the leader of {topic}/{p}"))?;
        out.push(Arc::new(pc));
    }
    Ok(out)
}

/// The topic's metadata (partitions, leaders, id), or [`Error::UnknownTopic`].
pub async fn topic_metadata(opts: &Config, topic: &str) -> Result<admin::TopicMetadata> {
    admin::Admin::connect(opts).await?.topic(topic).await
}

/// Whether `topic`'s `cleanup.policy` compacts it (`compact` or `compact,delete`): its log then
/// has gaps wherever older records of a key were removed, which are not records lost.
pub async fn is_compacted(opts: &Config, topic: &str) -> Result<bool> {
    let policy = admin::Admin::connect(opts)
        .await?
        .cleanup_policy(topic)
        .await?;
    Ok(policy.as_deref().is_some_and(compacts))
}

/// Whether a `cleanup.policy` value compacts: `compact`, `compact,delete`, `delete,compact`.
pub fn compacts(policy: &str) -> bool {
    policy.split(',').any(|p| p.trim() == "compact")
}

/// Where a reader with no usable stored position starts: Kafka's `auto.offset.reset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    Earliest,
    Latest,
}

impl StartFrom {
    /// The offset this means in a log spanning `earliest..end`.
    pub fn offset(self, earliest: i64, end: i64) -> i64 {
        match self {
            StartFrom::Earliest => earliest,
            StartFrom::Latest => end,
        }
    }

    /// As the command line spells it.
    pub fn name(self) -> &'static str {
        match self {
            StartFrom::Earliest => "earliest",
            StartFrom::Latest => "latest",
        }
    }
}

/// One partition's log and a consumer's place in it: the one position type `consume`, `check`,
/// `watch` and `group describe` report (in JSON under these names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Position {
    pub partition: i32,
    /// The first offset the log still holds: read, not only listed, so it moves on brokers that
    /// delete without moving their log start.
    pub log_start: i64,
    /// The end a `read_committed` reader can reach (the last stable offset).
    pub log_end: i64,
    /// The next offset the consumer reads (None: it never committed this partition).
    pub committed: Option<i64>,
    /// Records left to read ([`Lag`]): never negative, never counting what retention removed.
    pub lag: i64,
    /// The position is past the log end by this much (the topic was re-created or the broker
    /// lost data): never healthy, whatever `lag` says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ahead: Option<i64>,
    /// Records between the position and the log start: removed by retention before they were
    /// consumed. Never healthy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removed_unread: Option<i64>,
}

impl Position {
    /// `committed` in a log spanning `log_start..log_end`.
    pub fn new(partition: i32, (log_start, log_end): (i64, i64), committed: Option<i64>) -> Self {
        let lag = Lag::of(log_start, log_end, committed);
        Self {
            partition,
            log_start,
            log_end,
            committed,
            lag: lag.behind(),
            ahead: lag.ahead(),
            removed_unread: committed.filter(|&c| c < log_start).map(|c| log_start - c),
        }
    }

    /// The same partition after the consumer moved to `committed` and the log's end was seen at
    /// `log_end`.
    pub fn moved(self, committed: i64, log_end: i64) -> Self {
        Self::new(self.partition, (self.log_start, log_end), Some(committed))
    }

    /// Where reading goes on: the committed offset, or the log start when there is none.
    pub fn next_offset(&self) -> i64 {
        self.committed.unwrap_or(self.log_start)
    }
}

/// How far a consumer's position is from the end of a partition. The one definition `consume`,
/// `check` and `watch` share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lag {
    /// Records still to read: from the position — or the log start, when retention already
    /// removed what lies before it — to the log end. Never negative.
    Behind(i64),
    /// The position is past the log end by this many offsets: the topic was re-created, or the
    /// broker lost data. Never healthy; `consume` refuses to go on from there.
    Ahead(i64),
}

impl Lag {
    /// `committed`: the next offset to read (None: nothing committed, so the whole log is left).
    pub fn of(log_start: i64, log_end: i64, committed: Option<i64>) -> Self {
        let position = committed.unwrap_or(log_start);
        if position > log_end {
            Lag::Ahead(position - log_end)
        } else {
            Lag::Behind((log_end - position.max(log_start)).max(0))
        }
    }

    /// Records left to read (0 when ahead: nothing can be read until the log grows past it).
    pub fn behind(self) -> i64 {
        match self {
            Lag::Behind(n) => n,
            Lag::Ahead(_) => 0,
        }
    }

    pub fn ahead(self) -> Option<i64> {
        match self {
            Lag::Ahead(n) => Some(n),
            Lag::Behind(_) => None,
        }
    }
}

#[cfg(test)]
mod lag_tests {
    use super::Lag;

    #[test]
    fn lag_counts_what_is_left_and_flags_a_position_past_the_end() {
        assert_eq!(Lag::of(0, 100, Some(60)), Lag::Behind(40));
        assert_eq!(Lag::of(0, 100, None), Lag::Behind(100));
        // Retention removed 0..50 before they were read: they are gone, not lag.
        assert_eq!(Lag::of(50, 100, Some(20)), Lag::Behind(50));
        assert_eq!(Lag::of(50, 100, None), Lag::Behind(50));
        assert_eq!(Lag::of(0, 100, Some(100)), Lag::Behind(0));
        // A re-created topic: the stored position is past the new log's end.
        assert_eq!(Lag::of(0, 500, Some(1000)), Lag::Ahead(500));
        assert_eq!(Lag::of(0, 500, Some(1000)).behind(), 0);
    }
}

//! Everything that talks to Kafka lives here.
//!
//! rskafka does the data path (produce, fetch, list offsets, metadata). What it lacks — topic
//! configs, consumer-group offsets, per-partition leaders — goes through [`wire`], a small framed
//! connection that speaks `kafka-protocol` messages at versions negotiated with ApiVersions.

pub mod admin;
pub mod bounds;
pub mod group;
pub mod partitioner;
pub mod wire;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use rskafka::client::partition::{OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::BackoffConfig;

use crate::cli::KafkaOpts;

/// Bytes asked for per fetch request and partition. Also bounds consume's memory: at most a few
/// of these are in flight or queued per partition.
pub const FETCH_BYTES: i32 = 256 * 1024;

/// How long a fetch may wait on the broker for new records. Short, because tansu 0.6 holds a
/// fetch for this long even when records are already there (it does not honour min_bytes), so
/// this is added to every event's end-to-end latency.
pub const FETCH_MAX_WAIT_MS: i32 = 20;

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
pub async fn connect(opts: &KafkaOpts) -> Result<Client> {
    let brokers = opts.brokers();
    if brokers.is_empty() {
        return Err(crate::exit::usage("--bootstrap-server is empty"));
    }
    let build = ClientBuilder::new(brokers.clone())
        .client_id("streamlab")
        .max_message_size(100 * 1024 * 1024)
        .backoff_config(backoff(opts.timeout))
        .build();
    match tokio::time::timeout(opts.timeout + Duration::from_secs(1), build).await {
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
        _ => Err(admin::UnknownTopic(topic.to_string()).into()),
    }
}

/// One client per partition, each bound to that partition's leader.
pub async fn partition_clients(
    client: &Client,
    topic: &str,
    partitions: &[i32],
) -> Result<Vec<Arc<PartitionClient>>> {
    let mut out = Vec::with_capacity(partitions.len());
    for &p in partitions {
        let pc = client
            .partition_client(topic, p, UnknownTopicHandling::Error)
            .await
            .with_context(|| format!("connecting to the leader of {topic}/{p}"))?;
        out.push(Arc::new(pc));
    }
    Ok(out)
}

/// The log end offset (high watermark) of a partition: the offset the next record will get.
///
/// ListOffsets(latest) alone is not enough: tansu 0.6 answers it with the base offset of the
/// last record batch. A fetch at that offset returns the true high watermark on every broker,
/// so this asks both and believes the fetch.
pub async fn end_offset(client: &PartitionClient) -> Result<i64> {
    let listed = client.get_offset(OffsetAt::Latest).await?;
    let (_, high_watermark) = client.fetch_records(listed, 1..1024, 0).await?;
    Ok(high_watermark.max(listed))
}

/// Earliest and end offset of every partition, asked concurrently.
pub async fn offset_ranges(clients: &[Arc<PartitionClient>]) -> Result<BTreeMap<i32, (i64, i64)>> {
    let lookups = clients.iter().map(|pc| async move {
        let earliest = pc.get_offset(OffsetAt::Earliest).await?;
        let end = end_offset(pc).await?;
        Ok::<_, anyhow::Error>((pc.partition(), (earliest, end)))
    });
    futures::future::try_join_all(lookups)
        .await
        .map(|v| v.into_iter().collect())
}

//! The broker's side: a topic read back to its end with consume's reader (the fetch limit, the
//! bytes each codec stores), the durable broker, and the topics bench leaves behind deleted.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;

use super::children::{produce_unlimited, run_child};
use super::report::{median, CodecCost};
use crate::kafka::{self, admin::Admin};

/// What reading a whole topic found.
#[derive(Debug, Default)]
pub(super) struct Drained {
    pub(super) records: u64,
    /// Keys and values, uncompressed.
    pub(super) payload_bytes: u64,
    /// Record batches as the log stores them (compressed).
    pub(super) batch_bytes: u64,
}

/// Read every partition of `topic` to its end with consume's reader, keeping nothing.
pub(super) async fn drain(opts: &kafka::Config, topic: &str) -> Result<Drained> {
    let mut topic = kafka::fetch::TopicReaders::open(opts, topic).await?;
    let reads = topic.readers.iter_mut().map(|reader| async move {
        let end = reader.end_offset().await?;
        let (mut offset, mut d) = (0i64, Drained::default());
        while offset < end {
            let fetch = reader
                .fetch(offset, kafka::FETCH_BYTES, kafka::FETCH_MAX_WAIT_MS)
                .await?;
            if fetch.next_offset <= offset {
                break;
            }
            offset = fetch.next_offset;
            d.records += fetch.records.len() as u64;
            d.batch_bytes += fetch.batch_bytes;
            d.payload_bytes += fetch
                .records
                .iter()
                .map(|r| {
                    (r.key.as_ref().map_or(0, |k| k.len())
                        + r.value.as_ref().map_or(0, |v| v.len())) as u64
                })
                .sum::<u64>();
        }
        Ok::<_, anyhow::Error>(d)
    });
    let parts = futures::future::try_join_all(reads).await?;
    Ok(parts.into_iter().fold(Drained::default(), |a, b| Drained {
        records: a.records + b.records,
        payload_bytes: a.payload_bytes + b.payload_bytes,
        batch_bytes: a.batch_bytes + b.batch_bytes,
    }))
}

/// Produce (unlimited) and read back a quarter of the events on the durable broker: medians over
/// the repeats, as for the in-memory figures.
pub(super) async fn durable_engine(
    exe: &Path,
    args: &super::Config,
    brokers: &str,
    stamp: i64,
    n: u64,
) -> Result<(f64, f64)> {
    let opts = kafka::Config {
        brokers: vec![brokers.to_string()],
        // Another broker: nothing learnt about the first one applies.
        cluster: Default::default(),
        ..args.kafka.clone()
    };
    let mut admin = Admin::connect(&opts).await?;
    let events = (n / 4).max(10_000);
    let count = events.to_string();
    let (mut produce, mut fetch) = (vec![], vec![]);
    for round in 0..args.repeats {
        let topic = format!("bench-{stamp}-{round}-durable");
        admin.create_topic(&topic, args.partitions, 1, &[]).await?;
        let run = run_child(exe, brokers, &produce_unlimited(&topic, &count, &[])).await?;
        produce.push(events as f64 / run.secs);
        let started = Instant::now();
        let drained = drain(&opts, &topic).await?;
        fetch.push(drained.records as f64 / started.elapsed().as_secs_f64());
        delete_topic(&mut admin, &topic).await;
    }
    Ok((median(produce), median(fetch)))
}

/// Produce the same number of sales events once per codec onto fresh topics, then read each log
/// back to see how many bytes it holds.
pub(super) async fn codec_costs(
    exe: &Path,
    args: &super::Config,
    admin: &mut Admin,
    stamp: i64,
    events: u64,
) -> Result<Vec<CodecCost>> {
    let brokers = args.kafka.brokers.join(",");
    let count = events.to_string();
    let mut costs = Vec::new();
    for codec in ["none", "lz4", "zstd", "snappy", "gzip"] {
        let topic = format!("bench-{stamp}-codec-{codec}");
        admin.create_topic(&topic, args.partitions, 1, &[]).await?;
        let produce = produce_unlimited(&topic, &count, &["--seed", "7", "--compression", codec]);
        let run = run_child(exe, &brokers, &produce).await?;
        let stored = drain(&args.kafka, &topic).await?;
        delete_topic(admin, &topic).await;
        costs.push(CodecCost {
            codec: codec.into(),
            produce_per_sec: events as f64 / run.secs,
            stored_bytes_per_event: stored.batch_bytes as f64 / stored.records.max(1) as f64,
        });
    }
    Ok(costs)
}

/// Delete a topic bench created once it is measured: a run leaves no topics behind (a failure
/// costs a warning, not the run).
pub(super) async fn delete_topic(admin: &mut Admin, topic: &str) {
    if let Err(e) = admin.delete_topic(topic).await {
        tracing::warn!("bench: cannot delete its topic '{topic}': {e:#}");
    }
}

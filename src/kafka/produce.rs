//! Records as rskafka sends them, and the one-shot way to send a set of them: what `produce`
//! and `dlq replay --to-topic` share (a command's own pacing and batching stays with it).

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use rskafka::chrono::{DateTime, Utc};
use rskafka::client::partition::Compression;
use rskafka::record::Record;
use time::OffsetDateTime;

use super::{partitioner, Config};

/// Largest produce request [`send_placed`] sends to one partition, in bytes (produce's
/// `--batch-bytes` default).
pub const REQUEST_BYTES: usize = 1 << 20;

/// A record with `key` and `value` (`None`: a tombstone) stamped `at`, to the millisecond.
pub fn record(key: Option<Vec<u8>>, value: Option<Vec<u8>>, at: OffsetDateTime) -> Record {
    Record {
        key,
        value,
        headers: Default::default(),
        timestamp: timestamp(at),
    }
}

fn timestamp(at: OffsetDateTime) -> DateTime<Utc> {
    let ms = (at.unix_timestamp_nanos() / 1_000_000) as i64;
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// Send `records` to `topic`, placed as Kafka's default partitioner places keyed records
/// (round robin without a key), in requests of at most [`REQUEST_BYTES`] per partition;
/// returns once the broker acknowledged every one, each request within `--timeout`.
pub async fn send_placed(opts: &Config, topic: &str, records: Vec<Record>) -> Result<()> {
    let client = super::connect(opts).await?;
    let partitions = super::partitions_of(&client, topic).await?;
    let clients = super::partition_clients(&client, topic, &partitions).await?;
    let mut by_partition: BTreeMap<usize, Vec<Record>> = BTreeMap::new();
    for (i, record) in records.into_iter().enumerate() {
        let at = match &record.key {
            Some(key) => partitioner::partition_for_key(key, partitions.len()),
            None => i % partitions.len(),
        };
        by_partition.entry(at).or_default().push(record);
    }
    for (at, records) in by_partition {
        for request in requests(records, REQUEST_BYTES) {
            let produced = clients[at].produce(request, Compression::NoCompression);
            tokio::time::timeout(opts.timeout, produced)
                .await
                .map_err(|_| {
                    anyhow::anyhow!(
                        "producing to {topic}/{}: no answer within {:?}",
                        partitions[at],
                        opts.timeout
                    )
                })?
                .with_context(|| format!("producing to {topic}/{}", partitions[at]))?;
        }
    }
    Ok(())
}

/// `records` in order, cut into requests of at most `max_bytes` (a larger record goes alone).
fn requests(records: Vec<Record>, max_bytes: usize) -> Vec<Vec<Record>> {
    let mut requests: Vec<Vec<Record>> = Vec::new();
    let mut size = 0;
    for record in records {
        let bytes = record.approximate_size();
        match requests.last_mut() {
            Some(last) if size + bytes <= max_bytes => last.push(record),
            _ => {
                requests.push(vec![record]);
                size = 0;
            }
        }
        size += bytes;
    }
    requests
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_stay_within_the_byte_limit_and_in_order() {
        let sizes = [400_000, 400_000, 400_000, 2_000_000, 10];
        let now = OffsetDateTime::now_utc();
        let records = sizes
            .iter()
            .map(|&n| record(None, Some(vec![b'x'; n]), now));
        let cut = requests(records.collect(), REQUEST_BYTES);
        let lens: Vec<Vec<usize>> = cut
            .iter()
            .map(|r| r.iter().map(|x| x.value.as_ref().unwrap().len()).collect())
            .collect();
        assert_eq!(
            lens,
            [
                vec![400_000, 400_000],
                vec![400_000],
                vec![2_000_000],
                vec![10]
            ]
        );
    }

    #[test]
    fn timestamps_keep_the_millisecond() {
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789).unwrap();
        assert_eq!(timestamp(at).timestamp_millis(), 1_700_000_000_123);
    }
}

//! Reading a partition: Fetch and ListOffsets over our own connection to the partition's leader.
//!
//! rskafka's fetch cannot be used for an exactly-once sink: it drops the fetch response's list
//! of aborted transactions (so records of aborted transactions would be stored), hides the last
//! stable offset (so `--stop-at-end` could wait on an open transaction forever), returns nothing
//! for a response made only of control batches (so the reader would ask for the same offset
//! again and again), and rejects a corrupt batch without saying which offsets it covers. Here
//! the response is read with `kafka-protocol` instead, in `read_committed` isolation, and its
//! record batches are checked and decoded by [`super::records`].

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{BrokerId, FetchRequest, ListOffsetsRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::admin::{Admin, TopicMetadata};
use super::records::{read_partition, Fetch, FetchedRecord};
use super::retry::{BrokerError, Retry, Retrying};
use super::wire::WireConnection;
use super::Config;

/// Fetch v11: names topics (v13+ wants topic ids) and carries everything read_committed needs
/// (aborted transactions, last stable offset, log start). Apache Kafka 4 accepts 4..=17. Not
/// v12: tansu 0.6 answers it with a tagged field that is not defined until v16.
const FETCH_VERSION_CAP: i16 = 11;
/// ListOffsets v1+ (v0 was removed in Kafka 4); v2 added the isolation level.
const LIST_OFFSETS_VERSION_CAP: i16 = 7;
const READ_COMMITTED: i8 = 1;
/// ListOffsets timestamps that mean "the log start" and "the log end".
pub const EARLIEST: i64 = -2;
pub const LATEST: i64 = -1;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The requested offset is outside the log (below its start or past its end).
    #[error("offset out of range")]
    OffsetOutOfRange,
    /// Worth retrying on a fresh connection: leadership moved, the connection broke, no answer.
    #[error("{0:#}")]
    Retriable(anyhow::Error),
    /// The broker refused for good (authorization, unknown topic after retries…).
    #[error("{0:#}")]
    Fatal(anyhow::Error),
}

/// What [`PartitionReader::fetch`] asks for when an answer held no batch below the stable end.
const GAP_PROBE_BYTES: i32 = 16 << 20;

/// What [`PartitionReader::range`] reads at the listed log start to see where records begin.
const START_PROBE_BYTES: i32 = 64 << 10;

/// One partition's reader: its own connection to the partition's leader, looked up (again)
/// whenever the connection is missing or was abandoned half way.
///
/// It follows the leader: a Fetch or ListOffsets answered NOT_LEADER_OR_FOLLOWER,
/// UNKNOWN_TOPIC_OR_PARTITION, LEADER_NOT_AVAILABLE (…, see [`Retry::Refresh`]) or a connection
/// that broke or was refused drops the connection, the leader is looked up in fresh metadata and
/// the request sent again — for up to `--timeout` after the first failure. A leader found
/// somewhere else than before is said once per process, as a WARN.
pub struct PartitionReader {
    opts: Config,
    topic: String,
    partition: i32,
    /// The leader's address from metadata the caller already holds: used for the first
    /// connection only (leadership may move; later connections look it up afresh).
    leader_hint: Option<String>,
    conn: Option<WireConnection>,
}

impl PartitionReader {
    pub fn new(opts: &Config, topic: &str, partition: i32) -> Self {
        Self {
            opts: opts.clone(),
            topic: topic.to_string(),
            partition,
            leader_hint: None,
            conn: None,
        }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// Forget the connection: the next call looks the leader up again.
    pub fn reset(&mut self) {
        self.conn = None;
    }

    async fn connection(&mut self) -> Result<&mut WireConnection> {
        if self.conn.as_ref().is_some_and(|c| !c.is_broken()) {
            return Ok(self.conn.as_mut().expect("checked"));
        }
        self.conn = None;
        let addr = match self.leader_hint.take() {
            Some(addr) => addr,
            None => {
                let mut admin = Admin::connect(&self.opts).await?;
                let topics = admin.metadata(Some(&[self.topic.as_str()])).await?;
                // Between two leaders (an election): LEADER_NOT_AVAILABLE, which is retried.
                leader_of(&topics, self.partition).ok_or_else(|| {
                    super::Error::Broker(BrokerError {
                        code: ResponseError::LeaderNotAvailable,
                        what: format!("no leader is known for {}/{}", self.topic, self.partition),
                        detail: String::new(),
                    })
                })?
            }
        };
        let conn = WireConnection::connect(&addr, &self.opts).await?;
        let key = format!("{}/{}", self.topic, self.partition);
        if let Some(before) = self.opts.cluster.found(&key, &addr) {
            tracing::warn!(
                "the leader of {key} moved (broker {before} is not it any more); following it"
            );
        }
        Ok(self.conn.insert(conn))
    }

    /// After a failed request: drop the connection unless the broker only asked to wait, pause,
    /// and go on — or the error back, when it is not retriable or `retrying` ran out.
    async fn follow(&mut self, retrying: &mut Retrying, err: anyhow::Error) -> Result<()> {
        tracing::debug!("{}/{}: {err:#}; retrying", self.topic, self.partition);
        if retrying.after(err).await? != Retry::Wait {
            self.conn = None;
        }
        Ok(())
    }

    /// Fetch from `offset`: at most `max_bytes` (at least one whole batch), waiting up to
    /// `max_wait_ms` for records to arrive.
    ///
    /// Kafka always answers with at least one batch when there is one; tansu answers nothing
    /// when the first record is larger than `max_bytes`. So an answer without a batch below
    /// the stable end is asked again once with [`GAP_PROBE_BYTES`]: still nothing means the
    /// records there are gone ([`Fetch::removed_before`]), not that they were too big.
    pub async fn fetch(
        &mut self,
        offset: i64,
        max_bytes: i32,
        max_wait_ms: i32,
    ) -> Result<Fetch, FetchError> {
        self.fetch_following(offset, (max_bytes, max_wait_ms), true)
            .await
    }

    /// [`fetch`](Self::fetch) (`probe`: with its second look at an empty answer), following the
    /// leader when it moves.
    async fn fetch_following(
        &mut self,
        offset: i64,
        (max_bytes, max_wait_ms): (i32, i32),
        probe: bool,
    ) -> Result<Fetch, FetchError> {
        let mut retrying = Retrying::new(self.opts.timeout);
        loop {
            let fetched = if probe {
                self.fetch_probed(offset, max_bytes, max_wait_ms).await
            } else {
                self.fetch_once(offset, max_bytes, max_wait_ms).await
            };
            match fetched {
                Err(FetchError::Retriable(e)) => self
                    .follow(&mut retrying, e)
                    .await
                    .map_err(FetchError::Retriable)?,
                done => return done,
            }
        }
    }

    async fn fetch_probed(
        &mut self,
        offset: i64,
        max_bytes: i32,
        max_wait_ms: i32,
    ) -> Result<Fetch, FetchError> {
        let fetch = self.fetch_once(offset, max_bytes, max_wait_ms).await?;
        if fetch.first_offset.is_some()
            || offset >= fetch.stable_end
            || max_bytes >= GAP_PROBE_BYTES
        {
            return Ok(fetch);
        }
        // The probe waits too: an answer that did not wait may be empty only because the
        // broker is still appending there, and "gone" must not be concluded from that.
        self.fetch_once(
            offset,
            GAP_PROBE_BYTES,
            max_wait_ms.max(super::FETCH_MAX_WAIT_MS),
        )
        .await
    }

    async fn fetch_once(
        &mut self,
        offset: i64,
        max_bytes: i32,
        max_wait_ms: i32,
    ) -> Result<Fetch, FetchError> {
        let request = fetch_request(&self.topic, self.partition, offset, max_bytes, max_wait_ms);
        let wait = Duration::from_millis(u64::try_from(max_wait_ms).unwrap_or(0));
        let timeout = self.opts.timeout + wait;
        let conn = self.connection().await.map_err(FetchError::Retriable)?;
        let response = conn
            .call_within(request, FETCH_VERSION_CAP, timeout)
            .await
            .map_err(FetchError::Retriable)?;
        if let Some(err) = ResponseError::try_from_code(response.error_code) {
            return Err(classify(err, || format!("fetching {}", self.topic)));
        }
        let data = response
            .responses
            .into_iter()
            .filter(|t| t.topic.0.as_str() == self.topic)
            .flat_map(|t| t.partitions)
            .find(|p| p.partition_index == self.partition)
            .ok_or_else(|| {
                FetchError::Retriable(anyhow!(
                    "the fetch answer for {}/{} did not include that partition",
                    self.topic,
                    self.partition
                ))
            })?;
        if let Some(err) = ResponseError::try_from_code(data.error_code) {
            return Err(classify(err, || {
                format!("fetching {}/{} at {offset}", self.topic, self.partition)
            }));
        }
        Ok(read_partition(data, offset))
    }

    /// Read every record from `from` up to `end`, in order, handing each to `each`; how many
    /// there were. Offsets the log no longer holds (compaction, retention) are stepped over.
    pub async fn read_range(
        &mut self,
        from: i64,
        end: i64,
        mut each: impl FnMut(&FetchedRecord),
    ) -> Result<u64> {
        let (mut offset, mut read) = (from, 0);
        while offset < end {
            let fetch = self
                .fetch(offset, super::FETCH_BYTES, 0)
                .await
                .with_context(|| {
                    format!("reading {}/{} at {offset}", self.topic, self.partition)
                })?;
            if let Some(corrupt) = &fetch.corrupt {
                anyhow::bail!("{}/{}: {corrupt}", self.topic, self.partition);
            }
            fetch.records.iter().for_each(&mut each);
            read += fetch.records.len() as u64;
            let gone = fetch.removed_before(offset).map_or(offset, |g| g.end);
            let next = fetch.next_offset.max(gone);
            if next <= offset {
                break;
            }
            offset = next;
        }
        Ok(read)
    }

    /// ListOffsets at `timestamp` ([`EARLIEST`], [`LATEST`], or milliseconds since the epoch).
    pub async fn list_offset(&mut self, timestamp: i64) -> Result<i64> {
        Ok(self.list(timestamp).await?.0)
    }

    /// The first offset whose record was written at or after `ms` (milliseconds since the
    /// epoch; ListOffsets by timestamp), or `None` when no record in the log is that recent.
    ///
    /// Apache Kafka answers "none" with offset -1; tansu 0.6 with offset 0 and timestamp -1
    /// (and it compares the time each batch was stored, not the records' own timestamps).
    /// Either way a found record has a timestamp, so an answer without one means none.
    pub async fn offset_for_time(&mut self, ms: i64) -> Result<Option<i64>> {
        let (offset, timestamp) = self.list(ms).await?;
        Ok((offset >= 0 && timestamp >= 0).then_some(offset))
    }

    /// The timestamp of the first record at or after `offset` that a `read_committed` reader
    /// sees, or `None` when there is none below the end.
    pub async fn timestamp_at(&mut self, offset: i64) -> Result<Option<i64>> {
        match self.fetch(offset, START_PROBE_BYTES, 0).await {
            Ok(fetch) => Ok(fetch.records.first().map(|r| r.timestamp)),
            Err(FetchError::OffsetOutOfRange) => Ok(None),
            Err(e) => {
                self.conn = None;
                Err(anyhow!(e).context(format!(
                    "reading the record at {}/{}@{offset}",
                    self.topic, self.partition
                )))
            }
        }
    }

    /// ListOffsets: the offset and timestamp the broker answers for `timestamp`, following the
    /// leader when it moves.
    async fn list(&mut self, timestamp: i64) -> Result<(i64, i64)> {
        let mut retrying = Retrying::new(self.opts.timeout);
        loop {
            match self.list_once(timestamp).await {
                Err(e) => self.follow(&mut retrying, e).await?,
                done => return done,
            }
        }
    }

    async fn list_once(&mut self, timestamp: i64) -> Result<(i64, i64)> {
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_isolation_level(READ_COMMITTED)
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(TopicName(StrBytes::from_string(self.topic.clone())))
                .with_partitions(vec![ListOffsetsPartition::default()
                    .with_partition_index(self.partition)
                    .with_current_leader_epoch(-1)
                    .with_timestamp(timestamp)])]);
        let (topic, partition) = (self.topic.clone(), self.partition);
        let conn = self.connection().await?;
        let response = conn.call_capped(request, LIST_OFFSETS_VERSION_CAP).await?;
        let answer = response
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .find(|p| p.partition_index == partition)
            .ok_or_else(|| anyhow!("ListOffsets did not answer for {topic}/{partition}"))?;
        BrokerError::check(answer.error_code, None, || {
            format!("listing offsets of {topic}/{partition}")
        })?;
        Ok((answer.offset, answer.timestamp))
    }

    /// The end a consumer can reach: the last stable offset (the high watermark when no
    /// transaction is open).
    ///
    /// ListOffsets(latest) alone is not enough: tansu 0.6 answers it with the base offset of
    /// the last record batch. A fetch at that offset reports the true ends on every broker.
    pub async fn end_offset(&mut self) -> Result<i64> {
        let listed = self.list_offset(LATEST).await?;
        let at = listed.max(0);
        // Only the answer's offsets matter here, not its records.
        match self.fetch_following(at, (1, 0), false).await {
            Ok(fetch) => Ok(fetch.stable_end.max(listed)),
            Err(FetchError::OffsetOutOfRange) => Ok(listed),
            Err(e) => {
                self.conn = None;
                Err(anyhow!(e).context(format!(
                    "reading the end of {}/{}",
                    self.topic, self.partition
                )))
            }
        }
    }

    /// The first offset still in the log and the end a consumer can reach.
    ///
    /// The start is read, not only listed: a broker that deletes old records without moving
    /// its log start (tansu) still lists the old start, and only a fetch there shows where the
    /// records it kept begin.
    pub async fn range(&mut self) -> Result<(i64, i64)> {
        let listed = self.list_offset(EARLIEST).await?;
        let end = self.end_offset().await?.max(listed);
        if listed >= end {
            return Ok((listed, end));
        }
        let start = match self.fetch(listed, START_PROBE_BYTES, 0).await {
            Ok(fetch) => fetch.removed_before(listed).map_or(listed, |gone| gone.end),
            Err(FetchError::OffsetOutOfRange) => listed,
            Err(e) => {
                self.conn = None;
                return Err(anyhow!(e).context(format!(
                    "reading the start of {}/{}",
                    self.topic, self.partition
                )));
            }
        };
        Ok((start.min(end), end))
    }
}

/// The advertised address of `partition`'s leader, as `topics` report it.
fn leader_of(topics: &[TopicMetadata], partition: i32) -> Option<String> {
    topics
        .iter()
        .flat_map(|t| &t.partitions)
        .find(|p| p.partition == partition)
        .and_then(|p| p.leader_addr.clone())
}

/// One reader for each of `partitions` of `topic`, each first connecting to the leader that
/// `topic` names (no further metadata request).
pub fn readers(opts: &Config, topic: &TopicMetadata, partitions: &[i32]) -> Vec<PartitionReader> {
    let known = std::slice::from_ref(topic);
    partitions
        .iter()
        .map(|&p| PartitionReader {
            leader_hint: leader_of(known, p),
            ..PartitionReader::new(opts, &topic.name, p)
        })
        .collect()
}

/// A topic opened for reading: its metadata and one reader per partition, each first connecting
/// to the leader the metadata names. Where every command that reads offsets or records starts.
pub struct TopicReaders {
    pub metadata: TopicMetadata,
    pub readers: Vec<PartitionReader>,
}

impl TopicReaders {
    pub async fn open(opts: &Config, topic: &str) -> Result<Self> {
        Ok(Self::of(opts, super::topic_metadata(opts, topic).await?))
    }

    /// Readers for a topic whose metadata is already at hand.
    pub fn of(opts: &Config, metadata: TopicMetadata) -> Self {
        let readers = readers(opts, &metadata, &metadata.partition_ids());
        Self { metadata, readers }
    }

    /// Earliest and end offset of every partition, asked concurrently.
    pub async fn ranges(&mut self) -> Result<BTreeMap<i32, (i64, i64)>> {
        offset_ranges(&mut self.readers).await
    }
}

/// Earliest and end offset of every partition, asked concurrently.
pub async fn offset_ranges(readers: &mut [PartitionReader]) -> Result<BTreeMap<i32, (i64, i64)>> {
    let lookups = readers.iter_mut().map(|r| async move {
        let range = r
            .range()
            .await
            .with_context(|| format!("offsets of {}/{}", r.topic, r.partition))?;
        Ok::<_, anyhow::Error>((r.partition, range))
    });
    futures::future::try_join_all(lookups)
        .await
        .map(|v| v.into_iter().collect())
}

/// A fetch answer's error code: out of range, worth another look ([`Retry`] says which), or
/// the end of the run. Typed ([`super::Error::Broker`]) so the reader can tell a moved leader.
fn classify(err: ResponseError, what: impl FnOnce() -> String) -> FetchError {
    let error = || {
        anyhow!(super::Error::Broker(BrokerError {
            code: err,
            what: what(),
            detail: String::new(),
        }))
    };
    match err {
        ResponseError::OffsetOutOfRange => FetchError::OffsetOutOfRange,
        // A coordinator code has no business here; another look does no harm.
        _ if Retry::of_code(err) != Retry::Fatal || err == ResponseError::NotCoordinator => {
            FetchError::Retriable(error())
        }
        _ => FetchError::Fatal(error()),
    }
}

fn fetch_request(
    topic: &str,
    partition: i32,
    offset: i64,
    max_bytes: i32,
    max_wait_ms: i32,
) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(max_bytes)
        .with_isolation_level(READ_COMMITTED)
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(partition)
                .with_current_leader_epoch(-1)
                .with_fetch_offset(offset)
                .with_last_fetched_epoch(-1)
                .with_log_start_offset(-1)
                .with_partition_max_bytes(max_bytes)])])
}

#[cfg(test)]
mod tests;

//! One partition's fetch loop.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Config, Fetched};
use crate::kafka;
use crate::kafka::fetch::{FetchError, PartitionReader};

/// A partition without records for this long is quiet: its fetches wait the full
/// [`kafka::FETCH_MAX_WAIT_MS`] instead of polling every [`kafka::FETCH_POLL_MS`].
const QUIET_AFTER: Duration = Duration::from_secs(1);

/// How long a gap in the log must persist before it counts as records removed by retention.
///
/// tansu's in-memory engine raises a partition's high watermark before it stores the batch
/// (and two producers' batches can be stored out of order), so a fetch can find nothing — or a
/// later batch — below the end for a moment. Records really removed stay removed: a gap seen
/// again this much later is a deletion, a gap that fills in was an append in progress.
const GAP_CONFIRM: Duration = Duration::from_secs(1);

/// One partition's fetch loop: from `offset` until `end` (when given) or cancellation.
///
/// Every broker call has a deadline (the reader's `--timeout`): a call that fails or goes
/// unanswered is retried on a fresh connection, with a warning; failures lasting longer than
/// `timeout` end the run with an error naming the partition and offset.
pub(super) struct Fetcher {
    reader: PartitionReader,
    offset: i64,
    end: Option<i64>,
    timeout: Duration,
    skip_corrupt: bool,
    /// The topic is compacted: a gap before records, once confirmed, is what compaction
    /// removed, skipped silently.
    compacted: bool,
    pace: Pace,
}

impl Fetcher {
    pub(super) fn new(
        reader: PartitionReader,
        offset: i64,
        end: Option<i64>,
        args: &Config,
    ) -> Self {
        Self {
            reader,
            offset,
            end,
            timeout: args.kafka.timeout,
            skip_corrupt: args.skip_corrupt_batches,
            compacted: args.compacted,
            pace: Pace::default(),
        }
    }

    pub(super) async fn run(
        mut self,
        tx: mpsc::Sender<Result<Fetched>>,
        cancel: CancellationToken,
    ) {
        let mut failing_since: Option<Instant> = None;
        while self.end.is_none_or(|e| self.offset < e) {
            let step = tokio::select! {
                _ = cancel.cancelled() => return,
                step = self.step() => step,
            };
            let error = match step {
                Ok(None) => {
                    failing_since = None;
                    continue;
                }
                Ok(Some(chunk)) => {
                    failing_since = None;
                    self.offset = chunk.next_offset;
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        sent = tx.send(Ok(chunk)) => if sent.is_err() { return },
                    }
                    continue;
                }
                Err(Step::Retry(e)) => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() < self.timeout {
                        tracing::warn!(
                            "{}/{}: {e:#}; retrying on a new connection",
                            self.reader.topic(),
                            self.reader.partition()
                        );
                        self.reader.reset();
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        }
                        continue;
                    }
                    e.context(format!(
                        "the broker failed for {}",
                        humantime::format_duration(Duration::from_secs(since.elapsed().as_secs()))
                    ))
                }
                Err(Step::Fail(e)) => e,
            };
            let _ = tx
                .send(Err(error.context(format!(
                    "fetching {}/{} at offset {}",
                    self.reader.topic(),
                    self.reader.partition(),
                    self.offset
                ))))
                .await;
            return;
        }
    }

    /// Records between `gone` were deleted before this consumer read them: one warning.
    fn say_removed(&self, gone: std::ops::Range<i64>) {
        tracing::warn!(
            "{}/{}: offsets {}..{} were removed by retention before they were consumed",
            self.reader.topic(),
            self.reader.partition(),
            gone.start,
            gone.end
        );
    }

    /// One fetch. `Ok(None)`: nothing new yet.
    async fn step(&mut self) -> Result<Option<Fetched>, Step> {
        let wait = self.pace.wait_ms(Instant::now());
        let fetch = match self
            .reader
            .fetch(self.offset, kafka::FETCH_BYTES, wait)
            .await
        {
            Ok(f) => f,
            Err(FetchError::OffsetOutOfRange) => return self.out_of_range().await,
            Err(FetchError::Retriable(e)) => return Err(Step::Retry(e)),
            Err(FetchError::Fatal(e)) => return Err(Step::Fail(e)),
        };
        let partition = self.reader.partition();
        let removed = match self.pace.judge(&fetch, self.offset, Instant::now()) {
            Gap::None => None,
            Gap::Unconfirmed => {
                // Perhaps an append in progress: nothing beyond the gap is taken until it is
                // filled or confirmed; the next fetch polls again shortly.
                tokio::time::sleep(Duration::from_millis(kafka::FETCH_POLL_MS as u64)).await;
                return Ok(None);
            }
            Gap::Removed(gone) => Some(gone),
        };
        let mut chunk = Fetched {
            partition,
            records: fetch.records,
            next_offset: fetch.next_offset,
            stable_end: fetch.stable_end,
            skipped: None,
        };
        if let Some(gone) = removed {
            // A gap is believed only once `judge` confirmed it (a reported log start, or one
            // that lasted): on a compacted topic, a confirmed gap before records is what
            // compaction removed — older records of keys written again later — and is skipped
            // silently. Anywhere else the broker deleted them without moving its log start
            // (tansu): same as an OFFSET_OUT_OF_RANGE below the log start, said the same way.
            if !(self.compacted && fetch.first_offset.is_some()) {
                self.say_removed(gone.clone());
            }
            chunk.next_offset = chunk.next_offset.max(gone.end);
        }
        self.pace
            .answered(!chunk.records.is_empty(), Instant::now());
        if let Some(corrupt) = fetch.corrupt {
            if !chunk.records.is_empty() || chunk.next_offset > self.offset {
                // Deliver what came before it; the next fetch starts at the bad batch.
                return Ok(Some(chunk));
            }
            if !self.skip_corrupt {
                return Err(Step::Fail(anyhow!(
                    "{corrupt}; rerun with --skip-corrupt-batches to store it as a dead letter \
                     and go on after offset {}",
                    corrupt.last_offset
                )));
            }
            tracing::warn!(
                "{}/{partition}: {corrupt}; dead-lettered and skipped (--skip-corrupt-batches)",
                self.reader.topic()
            );
            chunk.next_offset = corrupt.last_offset + 1;
            chunk.skipped = Some(corrupt);
        }
        if chunk.records.is_empty() && chunk.next_offset <= self.offset && chunk.skipped.is_none() {
            return Ok(None);
        }
        Ok(Some(chunk))
    }

    /// The broker says `offset` is outside the log: retention removed what we had not read
    /// (move to the log start, and say so), or the log is shorter than our position (stop).
    async fn out_of_range(&mut self) -> Result<Option<Fetched>, Step> {
        let partition = self.reader.partition();
        let range = tokio::time::timeout(self.timeout, self.reader.range()).await;
        let (earliest, end) = match range {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(Step::Retry(e.context("looking up the log's range"))),
            Err(_) => {
                return Err(Step::Retry(anyhow!(
                    "no answer to a ListOffsets within {}",
                    humantime::format_duration(self.timeout)
                )))
            }
        };
        if self.offset < earliest {
            self.say_removed(self.offset..earliest);
            return Ok(Some(Fetched {
                partition,
                records: Vec::new(),
                next_offset: earliest,
                stable_end: end,
                skipped: None,
            }));
        }
        if self.offset > end {
            return Err(Step::Fail(anyhow!(
                "the position {} is past the end of the log ({end}): the broker lost data or \
                 the topic was re-created; restart consume to check the stored offsets",
                self.offset
            )));
        }
        Err(Step::Retry(anyhow!(
            "offset {} was out of range, though the log now spans {earliest}..{end}",
            self.offset
        )))
    }
}

/// How a partition's fetches are paced, and which gaps in its log are believed.
#[derive(Debug, Default)]
struct Pace {
    /// When the last answer with records came (`None`: none yet).
    flowing: Option<Instant>,
    /// The last answer had records.
    just_read: bool,
    /// A gap seen at the current offset (where the log resumes, and when it was first seen),
    /// not yet confirmed as a deletion.
    gap: Option<(i64, Instant)>,
}

impl Pace {
    /// How long the next fetch waits on the broker: not at all right after records came, a
    /// short poll while they flow, the full wait once the partition is quiet.
    fn wait_ms(&self, now: Instant) -> i32 {
        match self.flowing {
            _ if self.just_read => 0,
            Some(at) if now.duration_since(at) < QUIET_AFTER => kafka::FETCH_POLL_MS,
            _ => kafka::FETCH_MAX_WAIT_MS,
        }
    }

    /// An answer without a gap came, with records or without.
    fn answered(&mut self, records: bool, now: Instant) {
        self.gap = None;
        self.just_read = records;
        if records {
            self.flowing = Some(now);
        }
    }

    /// Whether a gap up to `resumes_at` is a deletion: the same gap seen again at least
    /// [`GAP_CONFIRM`] after it was first seen. Until then, the next fetch polls.
    fn gap_confirmed(&mut self, resumes_at: i64, now: Instant) -> bool {
        self.just_read = false;
        match self.gap {
            Some((end, since)) if end == resumes_at => {
                let confirmed = now.duration_since(since) >= GAP_CONFIRM;
                if confirmed {
                    self.gap = None;
                }
                confirmed
            }
            _ => {
                self.gap = Some((resumes_at, now));
                self.flowing.get_or_insert(now);
                false
            }
        }
    }
}

/// What a fetch answer says about records missing before the first it holds.
#[derive(Debug, PartialEq, Eq)]
enum Gap {
    /// None missing: take the answer as it is.
    None,
    /// Missing, but not for long enough to be believed: take nothing beyond it yet.
    Unconfirmed,
    /// Removed: step over these offsets.
    Removed(std::ops::Range<i64>),
}

impl Pace {
    /// The gap rule. A gap the broker reports (a log start past `requested`) is believed at once;
    /// any other (tansu: records deleted without moving the log start, or an append in progress)
    /// only once it lasts [`GAP_CONFIRM`]. An answer that holds the requested offset — every
    /// answer of Apache Kafka, which refuses an offset below its log start — has no gap.
    fn judge(&mut self, fetch: &kafka::records::Fetch, requested: i64, now: Instant) -> Gap {
        match fetch.removed_before(requested) {
            None => Gap::None,
            Some(gone) if fetch.gap_reported(requested) => Gap::Removed(gone),
            Some(gone) if self.gap_confirmed(gone.end, now) => Gap::Removed(gone),
            Some(_) => Gap::Unconfirmed,
        }
    }
}

/// How a fetch step failed.
enum Step {
    /// Worth another try on a fresh connection, within `--timeout`.
    Retry(anyhow::Error),
    /// Ends the run.
    Fail(anyhow::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetches_do_not_wait_after_records_poll_while_they_flow_and_wait_when_quiet() {
        let t0 = Instant::now();
        let mut pace = Pace::default();
        assert_eq!(pace.wait_ms(t0), kafka::FETCH_MAX_WAIT_MS);
        pace.answered(true, t0);
        assert_eq!(pace.wait_ms(t0), 0);
        pace.answered(false, t0 + Duration::from_millis(1));
        assert_eq!(
            pace.wait_ms(t0 + Duration::from_millis(2)),
            kafka::FETCH_POLL_MS
        );
        assert_eq!(pace.wait_ms(t0 + QUIET_AFTER), kafka::FETCH_MAX_WAIT_MS);
    }

    /// A fetch answer at `requested` holding records `first..end`, the broker reporting
    /// `log_start`.
    fn answer(log_start: i64, first: i64, end: i64, requested: i64) -> kafka::records::Fetch {
        use kafka_protocol::messages::fetch_response::PartitionData;
        use kafka_protocol::records::{
            Compression, Record, RecordBatchEncoder, RecordEncodeOptions,
        };
        let records: Vec<Record> = (first..end)
            .map(|offset| {
                let value = bytes::Bytes::from_static(b"{}");
                kafka::records::plain_record(first, offset, 0, None, Some(value))
            })
            .collect();
        let mut buf = bytes::BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        };
        RecordBatchEncoder::encode(&mut buf, records.iter(), &options).unwrap();
        let data = PartitionData::default()
            .with_high_watermark(end)
            .with_last_stable_offset(end)
            .with_log_start_offset(log_start)
            .with_records(Some(buf.freeze()));
        kafka::records::read_partition(data, requested)
    }

    #[test]
    fn the_gap_rule_never_skips_records_the_answer_holds() {
        let t0 = Instant::now();
        let mut pace = Pace::default();
        // A Kafka-like answer: log start reported, the first batch at the requested offset.
        let at = answer(0, 10, 15, 10);
        assert_eq!(at.records.len(), 5);
        assert_eq!(pace.judge(&at, 10, t0), Gap::None);
        // Or holding it inside a batch that starts before it.
        let inside = answer(0, 8, 15, 10);
        assert_eq!(inside.records.first().map(|r| r.offset), Some(10));
        assert_eq!(pace.judge(&inside, 10, t0 + GAP_CONFIRM * 5), Gap::None);
        // However long since: with the records there, nothing is ever skipped.
        for later in 0..5 {
            assert_eq!(pace.judge(&at, 10, t0 + GAP_CONFIRM * later), Gap::None);
        }
    }

    #[test]
    fn only_a_reported_log_start_past_the_request_is_believed_at_once() {
        let t0 = Instant::now();
        let mut pace = Pace::default();
        // The broker says its log starts at 40: 10..40 are gone, at once.
        let reported = answer(40, 40, 45, 10);
        assert_eq!(pace.judge(&reported, 10, t0), Gap::Removed(10..40));
        // tansu: the log start still says 0, the first batch is at 40. Not believed at first
        // sight, only when it is still there GAP_CONFIRM later.
        let unreported = answer(0, 40, 45, 10);
        assert_eq!(pace.judge(&unreported, 10, t0), Gap::Unconfirmed);
        assert_eq!(
            pace.judge(&unreported, 10, t0 + GAP_CONFIRM / 2),
            Gap::Unconfirmed
        );
        assert_eq!(
            pace.judge(&unreported, 10, t0 + GAP_CONFIRM),
            Gap::Removed(10..40)
        );
    }

    #[test]
    fn a_gap_is_a_deletion_only_when_it_lasts() {
        let t0 = Instant::now();
        let mut pace = Pace::default();
        assert!(!pace.gap_confirmed(50, t0));
        assert_eq!(pace.wait_ms(t0), kafka::FETCH_POLL_MS);
        assert!(!pace.gap_confirmed(50, t0 + GAP_CONFIRM / 2));
        // The batch being appended showed up: the gap is forgotten.
        pace.answered(true, t0 + GAP_CONFIRM / 2);
        assert!(!pace.gap_confirmed(50, t0 + GAP_CONFIRM));
        // A different gap starts its own clock.
        assert!(!pace.gap_confirmed(60, t0 + GAP_CONFIRM * 2));
        assert!(pace.gap_confirmed(60, t0 + GAP_CONFIRM * 3));
        assert!(!pace.gap_confirmed(60, t0 + GAP_CONFIRM * 3));
    }
}

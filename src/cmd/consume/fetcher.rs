//! One partition's fetch loop.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Fetched;
use crate::kafka;
use crate::kafka::fetch::{FetchError, PartitionReader};

/// One partition's fetch loop: from `offset` until `end` (when given) or cancellation.
///
/// Every broker call has a deadline (the reader's `--timeout`): a call that fails or goes
/// unanswered is retried on a fresh connection, with a warning; failures lasting longer than
/// `timeout` end the run with an error naming the partition and offset.
pub(super) struct Fetcher {
    pub(super) reader: PartitionReader,
    pub(super) offset: i64,
    pub(super) end: Option<i64>,
    pub(super) timeout: Duration,
    pub(super) skip_corrupt: bool,
}

impl Fetcher {
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
        // Always a waiting fetch. Fetching without a wait while records flowed (for latency) made
        // group tests under load end two records short, twice in two full runs: an answer that
        // did not wait can be empty below the stable end while the broker is still appending,
        // which reads as records removed by retention.
        let wait = kafka::FETCH_MAX_WAIT_MS;
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
        let removed = fetch.removed_before(self.offset);
        let mut chunk = Fetched {
            partition,
            records: fetch.records,
            next_offset: fetch.next_offset,
            stable_end: fetch.stable_end,
            skipped: None,
        };
        if let Some(gone) = removed {
            // The broker deleted them without moving its log start (tansu): same as an
            // OFFSET_OUT_OF_RANGE below the log start, said the same way.
            self.say_removed(gone.clone());
            chunk.next_offset = chunk.next_offset.max(gone.end);
        }
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

/// How a fetch step failed.
enum Step {
    /// Worth another try on a fresh connection, within `--timeout`.
    Retry(anyhow::Error),
    /// Ends the run.
    Fail(anyhow::Error),
}

//! Writing a batch: retried, isolated when the database refuses rows, abandoned when it does not answer.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};

use crate::db::{self, Batch, Sink, SinkError, Written};

/// Write a batch, retrying transient database failures with bounded exponential backoff for up
/// to `timeout` from the first failure. A statement left unanswered for its deadline is one: its
/// connection is abandoned and the retry takes another — a single dead connection costs one
/// deadline, a frozen database two. The batch is one transaction, so a retry can neither lose
/// nor duplicate anything.
///
/// Events the database refuses (a data exception, a constraint) do not stop the stream: the
/// batch is written again with them set aside as dead letters ([`db::write_isolating`]).
pub(super) async fn write_with_retry<S: Sink>(
    sink: &mut S,
    batch: &Batch,
    timeout: Duration,
) -> Result<Written> {
    let mut first_failure: Option<Instant> = None;
    let mut delay = Duration::from_millis(100);
    // Set once an attempt failed in a way that leaves its outcome unknown: a connection lost
    // (or a statement unanswered) during COMMIT may have committed on the server.
    let mut maybe_committed = false;
    let mut isolate = false;
    loop {
        let attempt = if isolate {
            db::write_isolating(sink, batch).await
        } else {
            db::write(sink, batch).await
        };
        let e = match attempt {
            Ok(w) => {
                if let Some((partition, offset, reason)) = w.refused.first() {
                    tracing::warn!(
                        "{}: the database refused {} events, kept in dead_letters ({partition}/\
                         {offset}: {reason}{})",
                        batch.topic,
                        w.refused.len(),
                        if w.refused.len() > 1 { "; …" } else { "" }
                    );
                }
                return Ok(w);
            }
            Err(e) => e,
        };
        if !isolate && e.refusal().is_some() {
            tracing::debug!("the database refused part of a batch ({e}); setting it aside");
            isolate = true;
            continue;
        }
        let failing = first_failure.get_or_insert_with(Instant::now).elapsed();
        if e.is_transient() && failing < timeout {
            let elsewhere = if e.is_timed_out() {
                " on another connection"
            } else {
                ""
            };
            tracing::warn!("database write failed ({e}); retrying in {delay:?}{elsewhere}");
            maybe_committed = true;
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
            continue;
        }
        return Err(match e {
            SinkError::Fenced { .. } if maybe_committed && committed_earlier(sink, batch).await => {
                tracing::info!(
                    "the attempt that lost its connection had committed this batch; going on"
                );
                // Every row of it was new when that attempt ran (the fence proves nobody else
                // wrote this range), so all of it counts as inserted (or refused: which it was
                // is no longer known).
                return Ok(Written {
                    inserted: batch.events.len() as u64,
                    duplicates: 0,
                    deleted: batch.deletes.len() as u64,
                    dead_lettered: batch.dead_letters.len() as u64,
                    refused: Vec::new(),
                });
            }
            SinkError::Fenced { .. } => e.into(),
            SinkError::TimedOut { .. } => Unanswered(e).into(),
            // Not an event's fault: every event was tried on its own already.
            _ if e.refusal().is_some() => {
                anyhow!(e).context("the database refused a batch's dead letters or offsets")
            }
            _ => anyhow!(e).context(format!(
                "database unavailable for {:.1}s; nothing after the last committed batch was \
                 written, restart to resume",
                failing.as_secs_f64()
            )),
        });
    }
}

/// A batch given up because the database did not answer in time. Nothing of it was committed —
/// unless the COMMIT itself went unanswered, and then the stored offsets say so on restart.
/// One line: "PostgreSQL at … did not answer within 10s; nothing after …".
#[derive(Debug, thiserror::Error)]
#[error("{0}; nothing after the last committed batch was written, restart to resume")]
struct Unanswered(SinkError);

/// Whether `e` ended the run because the database did not answer a statement in time.
pub(super) fn database_unanswered(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.downcast_ref::<Unanswered>().is_some()
            || cause
                .downcast_ref::<SinkError>()
                .is_some_and(SinkError::is_timed_out)
    })
}

/// Whether the stored offsets already sit exactly where `batch` would move them: then an
/// earlier attempt whose reply was lost committed it, rows and offsets together.
async fn committed_earlier<S: Sink>(sink: &mut S, batch: &Batch) -> bool {
    match sink.load_offsets(&batch.group, &batch.topic).await {
        Ok(stored) => batch
            .offsets
            .iter()
            .all(|advance| stored.get(&advance.partition) == Some(&advance.to)),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::memory::{Faults, MemorySink};
    use crate::db::{Deadline, OffsetAdvance};
    use std::collections::BTreeMap;

    fn batch(from: Option<i64>, to: i64) -> Batch {
        Batch {
            group: "g".into(),
            topic: "t".into(),
            offsets: vec![OffsetAdvance {
                partition: 0,
                from,
                to,
            }],
            ..Batch::default()
        }
    }

    #[tokio::test]
    async fn a_commit_whose_reply_was_lost_is_recognised_not_fenced() {
        let mut sink = MemorySink::with(Faults {
            lose_first_reply: true,
            ..Faults::default()
        });
        let written = write_with_retry(&mut sink, &batch(None, 10), Duration::from_secs(5))
            .await
            .expect("the retry sees its own commit");
        assert_eq!(written.dead_lettered, 0);
        assert_eq!(sink.offsets()[&0], 10);
        // A genuine competitor is still fenced.
        let err = write_with_retry(&mut sink, &batch(Some(3), 7), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("another consumer"), "{err}");
    }

    #[tokio::test]
    async fn a_database_that_stops_answering_ends_the_write_after_two_deadlines() {
        let timeout = Duration::from_millis(300);
        let frozen = MemorySink::with(Faults {
            hang_statements: true,
            ..Faults::default()
        });
        let mut sink = Deadline::new(frozen, timeout, "PostgreSQL at postgres://db/x");
        let started = Instant::now();
        let err = write_with_retry(&mut sink, &batch(None, 10), timeout)
            .await
            .unwrap_err();
        // The first deadline, then a retry on another connection for the second.
        let took = started.elapsed();
        assert!(took >= timeout * 2 && took < timeout * 4, "{took:?}");
        assert_eq!(
            format!("{err:#}"),
            "PostgreSQL at postgres://db/x did not answer within 300ms; nothing after the last \
             committed batch was written, restart to resume"
        );
        assert!(database_unanswered(&err));
        assert!(
            sink_offsets(&mut sink).await.is_empty(),
            "nothing committed"
        );
    }

    async fn sink_offsets<S: Sink>(sink: &mut S) -> BTreeMap<i32, i64> {
        sink.load_offsets("g", "t").await.unwrap()
    }
}

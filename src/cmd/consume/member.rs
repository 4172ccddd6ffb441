//! A consumer's ways of holding partitions: as a group member, alone, or named ones.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::write::database_unanswered;
use super::{Assigned, Consumer, Ended};
use crate::db::{Holding, MemberRecord, Sink};
use crate::kafka;
use crate::kafka::admin::TopicMetadata;
use crate::kafka::group::{Assignment, GroupMember};
use crate::kafka::StartFrom;

impl<S: Sink> Consumer<'_, S> {
    /// `--partition N…`: those partitions alone, for as long as the run lasts.
    pub(super) async fn only(
        &mut self,
        partitions: &[i32],
        shutdown: &CancellationToken,
    ) -> Result<()> {
        match self
            .consume_partitions(partitions, shutdown, shutdown)
            .await?
        {
            Ended::Fenced(e) => Err(e),
            Ended::Shutdown | Ended::ReachedEnd | Ended::Revoked => Ok(()),
        }
    }

    /// `--assign all`: every partition alone, for as long as the run lasts; partitions the
    /// topic gains meanwhile are added.
    pub(super) async fn alone(&mut self, shutdown: &CancellationToken) -> Result<()> {
        loop {
            let run = shutdown.child_token();
            let watch = self.watch_partitions(&run);
            let partitions = self.topic.partition_ids();
            let ended = self.consume_partitions(&partitions, &run, shutdown).await;
            run.cancel();
            let grown = finish_watch(watch).await;
            match (ended?, grown) {
                (Ended::Fenced(e), _) => return Err(e),
                (Ended::Revoked, Some(grown)) => self.take_grown(grown),
                _ => return Ok(()),
            }
        }
    }

    /// The topic gained partitions: read the new ones from their start from now on.
    fn take_grown(&mut self, grown: TopicMetadata) {
        let known = self.topic.partition_ids();
        self.added.extend(
            grown
                .partition_ids()
                .into_iter()
                .filter(|p| !known.contains(p)),
        );
        self.topic = grown;
    }

    /// Re-read the topic's metadata every `--metadata-refresh`; when it has more partitions
    /// than now, cancel `run` and hand the new metadata back. Not with `--stop-at-end`, whose
    /// ends are fixed when it starts.
    fn watch_partitions(
        &self,
        run: &CancellationToken,
    ) -> Option<JoinHandle<Option<TopicMetadata>>> {
        if self.args.stop_at_end {
            return None;
        }
        let known = self.topic.partitions.len();
        let (opts, topic) = (self.args.kafka.clone(), self.args.topic.clone());
        let (every, run) = (self.args.metadata_refresh, run.clone());
        Some(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = run.cancelled() => return None,
                    _ = tokio::time::sleep(every) => {}
                }
                match kafka::topic_metadata(&opts, &topic).await {
                    Ok(t) if t.partitions.len() > known => {
                        tracing::info!(
                            "'{topic}' now has {} partitions (was {known}); reading the new ones \
                             from their start",
                            t.partitions.len()
                        );
                        run.cancel();
                        return Some(t);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!("refreshing the metadata of '{topic}': {e:#}"),
                }
            }
        }))
    }

    /// As a member of `--group` (the default): consume what the group assigns, generation after
    /// generation, until Ctrl-C (or `--stop-at-end`), then leave so the others take over at once.
    pub(super) async fn as_group_member(&mut self, shutdown: &CancellationToken) -> Result<()> {
        let args = self.args;
        let mut member = GroupMember::new(&args.kafka, &args.group, &args.topic, args.membership);
        // `--stop-at-end`: every partition's range now, the group's backlog to finish together.
        let backlog = if args.stop_at_end {
            Some(self.every_range(shutdown).await?)
        } else {
            None
        };
        // The member id last written to `streamlab_members` (it changes when we rejoin afresh).
        let mut recorded: Option<String> = None;
        let result = loop {
            let assignment = match member.join(shutdown).await {
                Ok(Some(a)) => a,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            };
            // Heartbeats first: tansu counts nothing else as a sign of life. The heartbeat task
            // cancels `generation` when the group wants the partitions back, and beats on until
            // `released`: the batch in flight is finished and committed first.
            let generation = shutdown.child_token();
            let released = CancellationToken::new();
            let heartbeats =
                tokio::spawn(member.heartbeat_until(generation.clone(), released.clone()));
            let watch = self.watch_partitions(&generation);
            self.mirror.member = Some((assignment.member_id.clone(), assignment.generation));
            self.record_holding(&mut recorded, &assignment).await;
            self.summary.assignments.push(Assigned {
                generation: assignment.generation,
                partitions: assignment.partitions.clone(),
                leader: assignment.leader,
            });
            tracing::info!(
                "group '{}' generation {}: partitions {:?} of '{}'{}",
                args.group,
                assignment.generation,
                assignment.partitions,
                args.topic,
                if assignment.leader {
                    " (this member leads the group)"
                } else {
                    ""
                }
            );

            let ended = loop {
                match self
                    .consume_partitions(&assignment.partitions, &generation, shutdown)
                    .await
                {
                    Ok(Ended::Fenced(e)) if !generation.is_cancelled() => {
                        // Someone wrote one of our partitions: a member that has not noticed it
                        // lost it, or a consumer outside the group. The database kept the
                        // rows and offsets consistent; resume from what it now holds.
                        tracing::warn!("{e:#}; reloading the stored offsets");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    other => break other,
                }
            };
            let ended = match (ended, &backlog) {
                (Ok(Ended::ReachedEnd), Some(backlog)) => {
                    self.until_the_group_is_done(backlog, &generation, shutdown)
                        .await
                }
                (ended, _) => ended,
            };
            generation.cancel();
            released.cancel();
            member = heartbeats.await.context("heartbeat task")?;
            if let Some(grown) = finish_watch(watch).await {
                // The leader assigns from the metadata it sees when the group forms: make the
                // group form again.
                self.take_grown(grown);
                member.rejoin_as_new_generation();
            }
            match ended {
                Ok(Ended::Revoked) | Ok(Ended::Fenced(_)) => continue,
                Ok(Ended::Shutdown) | Ok(Ended::ReachedEnd) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        // Leave before anything else, even (above all) after an error: the heartbeat task has
        // stopped, and the others take this member's partitions over at once.
        member.leave().await;
        let unanswered = result.as_ref().is_err_and(database_unanswered);
        match recorded {
            // A database that did not answer would only make us wait for it once more.
            Some(id) if unanswered => {
                tracing::debug!("not removing member {id} from streamlab_members: no answer")
            }
            Some(id) => self.record_member(id, None).await,
            None => {}
        }
        result
    }

    /// Every partition's offset range (earliest, end), as a plan reads them.
    async fn every_range(&self, shutdown: &CancellationToken) -> Result<BTreeMap<i32, (i64, i64)>> {
        let partitions = self.topic.partition_ids();
        let mut readers = kafka::fetch::readers(&self.args.kafka, &self.topic, &partitions);
        let ranges = super::plan::ranges_within(self.args, &mut readers, shutdown);
        Ok(ranges.await?.unwrap_or_default())
    }

    /// This member's partitions reached their end (`--stop-at-end`). It stays in the group —
    /// heartbeating, ready for a rebalance — until the stored offsets show every partition of
    /// `backlog` finished: members started together may otherwise all leave while a partition
    /// is assigned to one that already left, and nobody would read it. A rebalance ends the
    /// wait (the member rejoins and may be given that partition); so does `--timeout` without
    /// progress, with a warning naming what is left.
    async fn until_the_group_is_done(
        &mut self,
        backlog: &BTreeMap<i32, (i64, i64)>,
        generation: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> Result<Ended> {
        let args = self.args;
        let (mut seen, mut since) = (BTreeMap::new(), Instant::now());
        loop {
            let stored = self
                .sink
                .load_offsets(&args.group, &args.topic)
                .await
                .context("reading stored offsets")?;
            let left = unfinished(backlog, &stored, args.from);
            if left.is_empty() {
                return Ok(Ended::ReachedEnd);
            }
            // Where the unfinished partitions stand: the wait gives up only if none moves.
            let now: BTreeMap<i32, Option<i64>> =
                left.iter().map(|p| (*p, stored.get(p).copied())).collect();
            if now != seen {
                (seen, since) = (now, Instant::now());
            } else if since.elapsed() >= args.kafka.timeout {
                tracing::warn!(
                    "partitions {left:?} of '{}' have not reached their end and no member has \
                     moved them for {}; leaving them (consume again to finish them)",
                    args.topic,
                    humantime::format_duration(args.kafka.timeout)
                );
                return Ok(Ended::ReachedEnd);
            }
            tokio::select! {
                _ = generation.cancelled() => return Ok(Ended::Revoked),
                _ = shutdown.cancelled() => return Ok(Ended::Shutdown),
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    /// Note in the database what this member now holds, replacing its row under an older id.
    async fn record_holding(&mut self, recorded: &mut Option<String>, assignment: &Assignment) {
        if let Some(old) = recorded.take_if(|old| *old != assignment.member_id) {
            self.record_member(old, None).await;
        }
        let holding = Holding {
            generation: assignment.generation,
            partitions: assignment.partitions.clone(),
        };
        self.record_member(assignment.member_id.clone(), Some(holding))
            .await;
        *recorded = Some(assignment.member_id.clone());
    }

    /// Best effort: the table only informs `streamlab check`.
    async fn record_member(&mut self, member_id: String, holding: Option<Holding>) {
        let record = MemberRecord {
            group: self.args.group.clone(),
            topic: self.args.topic.clone(),
            member_id,
            holding,
        };
        if let Err(e) = self.sink.record_member(&record).await {
            tracing::warn!("cannot record group membership in the database: {e}");
        }
    }
}

/// Wait for a partition watch to finish; the topic's new metadata if it saw it grow.
async fn finish_watch(watch: Option<JoinHandle<Option<TopicMetadata>>>) -> Option<TopicMetadata> {
    match watch {
        Some(w) => w.await.ok().flatten(),
        None => None,
    }
}

/// The partitions of `backlog` (each one's earliest offset and the end it had) whose stored
/// offset has not reached that end. A partition with no stored offset is finished only if a
/// consumer starting `from` would start at its end (nothing to read).
fn unfinished(
    backlog: &BTreeMap<i32, (i64, i64)>,
    stored: &BTreeMap<i32, i64>,
    from: StartFrom,
) -> Vec<i32> {
    backlog
        .iter()
        .filter(|&(p, &(earliest, end))| {
            stored
                .get(p)
                .map_or(from.offset(earliest, end) < end, |&next| next < end)
        })
        .map(|(&p, _)| p)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_is_unfinished_until_its_stored_offset_reaches_the_end_it_had() {
        let backlog = BTreeMap::from([(0, (0, 100)), (1, (0, 50)), (2, (20, 20)), (3, (0, 7))]);
        let stored = BTreeMap::from([(0, 100), (1, 49)]);
        // 1 is one short; 2 is empty (nothing to read); 3 was never written.
        assert_eq!(unfinished(&backlog, &stored, StartFrom::Earliest), [1, 3]);
        // Read from the latest offset, a partition nobody wrote has nothing to read.
        assert_eq!(unfinished(&backlog, &stored, StartFrom::Latest), [1]);
        // Records produced after the ends were taken are not waited for.
        let past = BTreeMap::from([(0, 130), (1, 50), (3, 7)]);
        assert!(unfinished(&backlog, &past, StartFrom::Earliest).is_empty());
    }
}

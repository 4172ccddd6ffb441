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

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cli::{AssignAll, ConsumeArgs, Format, SinkKind, StartFrom};
use crate::db::pg::PgSink;
use crate::db::sqlite::SqliteSink;
use crate::db::{
    self, Batch, DeadLetter, Deadline, Holding, Landed, MemberRecord, OffsetAdvance, Sink,
    SinkError, Written,
};
use crate::events::{self, ts_millis, EventKind};
use crate::kafka;
use crate::kafka::admin::{GroupCoordinator, TopicMetadata};
use crate::kafka::fetch::{CorruptBatch, FetchError, FetchedRecord, PartitionReader};
use crate::kafka::group::{Assignment, GroupMember, Membership};
use crate::progress::Progress;
use crate::{render, shutdown};

/// How often the group's offsets are mirrored to Kafka while running (and always at the end).
const MIRROR_EVERY: Duration = Duration::from_millis(500);

pub async fn run(args: ConsumeArgs) -> Result<()> {
    let target = args.db.target()?;
    crate::metrics::serve(&args.metrics)?;
    let url = target.url;
    let timeout = args.kafka.timeout;
    // Every statement gets --timeout: a database that stops answering must not hang the run.
    let limit = db::connect_timeout(timeout);
    let shown = db::redact(&url);
    let within = |name: &str| (limit, format!("{name} at {shown}"));
    match target.kind {
        SinkKind::Pg => {
            let (limit, database) = within("PostgreSQL");
            let pg = PgSink::connect(&url, timeout).await?;
            consume(&args, Deadline::new(pg, limit, database)).await
        }
        SinkKind::Sqlite => {
            let (limit, database) = within("SQLite");
            let sqlite = SqliteSink::connect(&url, timeout).await?;
            consume(&args, Deadline::new(sqlite, limit, database)).await
        }
    }
}

/// What one fetch of one partition moves forward.
struct Fetched {
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

#[derive(Debug, Default, Serialize)]
pub struct ConsumeSummary {
    pub consumed: u64,
    pub inserted: u64,
    pub duplicates: u64,
    pub dead_lettered: u64,
    pub elapsed_secs: f64,
    /// Per partition: stored next offset and lag behind the latest high watermark seen.
    pub partitions: BTreeMap<i32, PartitionPosition>,
}

#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct PartitionPosition {
    pub next_offset: i64,
    pub lag: i64,
}

/// How a consumer gets its partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reading {
    /// As a member of `--group`: the partitions the group assigns (the default).
    Member,
    /// `--assign all`: every partition, alone.
    All,
    /// `--partition N…`: these partitions (sorted, each once), alone.
    Only(Vec<i32>),
}

impl Reading {
    /// What the command line asks for; partitions the topic does not have are an error.
    fn of(args: &ConsumeArgs, topic: &TopicMetadata) -> Result<Self> {
        if args.assign == Some(AssignAll::All) {
            return Ok(Self::All);
        }
        if args.partitions.is_empty() {
            return Ok(Self::Member);
        }
        let known = topic.partition_ids();
        let mut only = args.partitions.clone();
        only.sort_unstable();
        only.dedup();
        let missing: Vec<String> = only
            .iter()
            .filter(|p| !known.contains(p))
            .map(i32::to_string)
            .collect();
        if !missing.is_empty() {
            bail!(
                "'{}' has no partition{} {} (its partitions are {})",
                args.topic,
                if missing.len() > 1 { "s" } else { "" },
                missing.join(", "),
                describe_ids(&known)
            );
        }
        Ok(Self::Only(only))
    }
}

/// `0..=5`, or a list when the ids have gaps.
fn describe_ids(ids: &[i32]) -> String {
    match (ids.first(), ids.last()) {
        (Some(&first), Some(&last))
            if (last - first + 1) as usize == ids.len() && first != last =>
        {
            format!("{first} to {last}")
        }
        _ => ids
            .iter()
            .map(i32::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    }
}

async fn consume<S: Sink>(args: &ConsumeArgs, sink: S) -> Result<()> {
    let shutdown = shutdown::on_signal();
    if args.join_group {
        tracing::warn!(
            "--join-group is no longer needed: consume joins its --group unless told --assign \
             all or --partition"
        );
    }
    let topic = kafka::topic_metadata(&args.kafka, &args.topic).await?;
    let reading = Reading::of(args, &topic)?;
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
    print_summary(args, &consumer.summary)?;
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
    args: &'a ConsumeArgs,
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

/// Where each partition starts, and what the run tracks while it goes.
struct Plan {
    readers: Vec<(PartitionReader, i64)>,
    /// The fence: the stored offset each partition's next write moves from.
    committed: BTreeMap<i32, Option<i64>>,
    positions: BTreeMap<i32, PartitionPosition>,
    /// For `--stop-at-end`: the stable end each partition had at the start.
    ends: BTreeMap<i32, i64>,
}

impl Plan {
    fn reached_end(&self) -> bool {
        self.positions
            .iter()
            .all(|(p, pos)| pos.next_offset >= self.ends[p])
    }
    /// An empty chunk for each partition whose start is past its stored offset (the records
    /// between were removed by retention): writing it moves the stored offset to the start.
    fn overtaken_by_retention(&self) -> Vec<Fetched> {
        self.positions
            .iter()
            .filter(|(p, pos)| {
                matches!(self.committed.get(p), Some(Some(stored)) if *stored < pos.next_offset)
            })
            .map(|(&partition, pos)| Fetched {
                partition,
                records: Vec::new(),
                next_offset: pos.next_offset,
                stable_end: self.ends[&partition],
                skipped: None,
            })
            .collect()
    }
}

impl<S: Sink> Consumer<'_, S> {
    /// `--partition N…`: those partitions alone, for as long as the run lasts.
    async fn only(&mut self, partitions: &[i32], shutdown: &CancellationToken) -> Result<()> {
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
    async fn alone(&mut self, shutdown: &CancellationToken) -> Result<()> {
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
    async fn as_group_member(&mut self, shutdown: &CancellationToken) -> Result<()> {
        let args = self.args;
        let membership = Membership {
            session_timeout: args.session_timeout,
            rebalance_timeout: args.rebalance_timeout,
        };
        let mut member = GroupMember::new(&args.kafka, &args.group, &args.topic, membership);
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

    /// Readers, start offsets and ends for `partitions`, after checking the stored offsets
    /// against the log. `None`: `stop` fired first.
    async fn plan(&mut self, partitions: &[i32], stop: &CancellationToken) -> Result<Option<Plan>> {
        let args = self.args;
        // Read again every time: the previous owner of a partition may have just written it.
        let stored = self
            .sink
            .load_offsets(&args.group, &args.topic)
            .await
            .context("reading stored offsets")?;
        let mut readers = kafka::fetch::readers(&args.kafka, &self.topic, partitions);
        // The whole lookup has a deadline, and gives way at once to a rebalance or Ctrl-C.
        let deadline = args.kafka.timeout * 2;
        let ranges = tokio::select! {
            _ = stop.cancelled() => return Ok(None),
            found = tokio::time::timeout(deadline, kafka::fetch::offset_ranges(&mut readers)) => {
                found.map_err(|_| {
                    anyhow!(
                        "the leaders of '{}' partitions {partitions:?} did not answer within {}",
                        args.topic,
                        humantime::format_duration(deadline)
                    )
                })??
            }
        };
        let stored = self.reconcile(stored, &ranges).await?;

        let mut plan = Plan {
            readers: Vec::new(),
            committed: BTreeMap::new(),
            positions: BTreeMap::new(),
            ends: BTreeMap::new(),
        };
        for reader in readers {
            let p = reader.partition();
            let (earliest, latest) = ranges[&p];
            let start = match stored.get(&p) {
                Some(&next) if next < earliest => {
                    tracing::warn!(
                        "{}/{p}: stored offset {next} was removed by retention; resuming at \
                         {earliest} ({} records were never consumed)",
                        args.topic,
                        earliest - next
                    );
                    earliest
                }
                Some(&next) => next,
                None if self.added.contains(&p) => earliest,
                None => start_from(args.from, earliest, latest),
            };
            plan.committed.insert(p, stored.get(&p).copied());
            let lag = kafka::Lag::of(earliest, latest, Some(start)).behind();
            plan.positions.insert(
                p,
                PartitionPosition {
                    next_offset: start,
                    lag,
                },
            );
            plan.ends.insert(p, latest);
            tracing::debug!(
                "{}/{p}: start at {start} (earliest {earliest}, end {latest})",
                args.topic
            );
            plan.readers.push((reader, start));
        }
        Ok(Some(plan))
    }

    /// Check the stored offsets of the partitions in `ranges` against their logs; returns the
    /// offsets to go on from.
    ///
    /// Offsets stored for another topic id belong to an earlier incarnation of the topic (it was
    /// deleted and re-created, or the broker lost its data): they are moved to where `--from`
    /// says, with one warning. Offsets past the log end of the same topic stop the run, unless
    /// `--reset-offsets-ahead` says where to go. Either move is one fenced transaction.
    async fn reconcile(
        &mut self,
        stored: BTreeMap<i32, i64>,
        ranges: &BTreeMap<i32, (i64, i64)>,
    ) -> Result<BTreeMap<i32, i64>> {
        let args = self.args;
        let ids = self
            .sink
            .stored_topic_ids(&args.group, &args.topic)
            .await
            .context("reading stored offsets")?;
        let mut recreated = Vec::new();
        let mut ahead = Vec::new();
        for (&p, &next) in &stored {
            let Some(&(earliest, end)) = ranges.get(&p) else {
                continue;
            };
            let other_incarnation = match (ids.get(&p), &self.rules.topic_id) {
                (Some(old), Some(new)) => old != new,
                _ => false,
            };
            if other_incarnation {
                recreated.push((p, next, start_from(args.from, earliest, end)));
            } else if let kafka::Lag::Ahead(_) = kafka::Lag::of(earliest, end, Some(next)) {
                ahead.push((p, next, end, earliest));
            }
        }
        let mut moves = Vec::new();
        if !recreated.is_empty() {
            let old = recreated.first().and_then(|(p, ..)| ids.get(p)).cloned();
            tracing::warn!(
                "'{}' is a new topic (id {} → {}): the offsets stored for group '{}' belong to \
                 the one before it; reading partitions {:?} from their {} (rows already stored \
                 are kept)",
                args.topic,
                old.unwrap_or_default(),
                self.rules.topic_id.clone().unwrap_or_default(),
                args.group,
                recreated.iter().map(|r| r.0).collect::<Vec<_>>(),
                match args.from {
                    StartFrom::Earliest => "start",
                    StartFrom::Latest => "end",
                }
            );
            moves.extend(recreated.iter().map(|&(p, from, to)| (p, from, to)));
        }
        if !ahead.is_empty() {
            let Some(reset) = args.reset_offsets_ahead else {
                return Err(ahead_error(&args.topic, &args.group, &ahead));
            };
            tracing::warn!(
                "{}; --reset-offsets-ahead {} moves them",
                ahead_error(&args.topic, &args.group, &ahead),
                match reset {
                    StartFrom::Earliest => "earliest",
                    StartFrom::Latest => "latest",
                }
            );
            moves.extend(
                ahead
                    .iter()
                    .map(|&(p, next, end, earliest)| (p, next, start_from(reset, earliest, end))),
            );
        }
        let mut stored = stored;
        if !moves.is_empty() {
            let batch = Batch {
                group: args.group.clone(),
                topic: args.topic.clone(),
                topic_id: self.rules.topic_id.clone(),
                offsets: moves
                    .iter()
                    .map(|&(partition, from, to)| OffsetAdvance {
                        partition,
                        from: Some(from),
                        to,
                    })
                    .collect(),
                ..Batch::default()
            };
            write_with_retry(&mut self.sink, &batch, args.kafka.timeout).await?;
            stored.extend(moves.iter().map(|&(p, _, to)| (p, to)));
        }
        Ok(stored)
    }

    /// Consume `partitions` from the sink's stored offsets until `stop` (or `--stop-at-end`).
    ///
    /// One fetch task per partition feeds a bounded channel; each batch — rows, dead letters and
    /// new offsets — is written in one transaction before the next is taken, so stopping between
    /// batches leaves nothing half done.
    async fn consume_partitions(
        &mut self,
        partitions: &[i32],
        stop: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> Result<Ended> {
        let args = self.args;
        let ended_early = || {
            if shutdown.is_cancelled() {
                Ended::Shutdown
            } else {
                Ended::Revoked
            }
        };
        if partitions.is_empty() && !args.stop_at_end {
            // A group with more members than partitions: this one idles, still a member, ready
            // to take over when another leaves.
            stop.cancelled().await;
            return Ok(ended_early());
        }
        let Some(mut plan) = self.plan(partitions, stop).await? else {
            return Ok(ended_early());
        };
        // Stored positions that retention overtook move up to the log start now, fenced like
        // any advance: said once, and `check` no longer counts them as unread.
        let overtaken = plan.overtaken_by_retention();
        if !overtaken.is_empty() {
            self.write_chunks(&overtaken, &mut plan, stop).await?;
        }

        let (tx, mut rx) = mpsc::channel::<Result<Fetched>>(plan.readers.len().max(1));
        let stop_fetching = stop.child_token();
        let mut fetchers = Vec::new();
        let readers = std::mem::take(&mut plan.readers);
        if !(args.stop_at_end && plan.reached_end()) {
            for (reader, start) in readers {
                let end = args.stop_at_end.then(|| plan.ends[&reader.partition()]);
                let fetcher = Fetcher {
                    reader,
                    offset: start,
                    end,
                    timeout: args.kafka.timeout,
                    skip_corrupt: args.skip_corrupt_batches,
                };
                fetchers.push(tokio::spawn(fetcher.run(tx.clone(), stop_fetching.clone())));
            }
        }
        drop(tx);

        let mut failure: Option<anyhow::Error> = None;
        // Throttled, batches stay small (a quarter second's worth) so the pace is even.
        let batch_limit = match args.throttle {
            Some(t) => (args.batch_size as usize).min((t as usize / 4).max(1)),
            None => args.batch_size as usize,
        };
        let mut at_end = false;
        loop {
            if args.stop_at_end && plan.reached_end() {
                at_end = true;
                break;
            }
            let Some(first) = next_fetched(&mut rx, stop).await else {
                at_end = !stop.is_cancelled();
                break;
            };
            let mut chunks = Vec::new();
            match first {
                Ok(f) => chunks.push(f),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
            // Fill the batch with what is already fetched, without waiting: under a backlog the
            // channel is full and batches fill up; when caught up, each event is written at once.
            let mut pending: usize = chunks.iter().map(|c| c.records.len()).sum();
            while pending < batch_limit {
                match rx.try_recv() {
                    Ok(Ok(f)) => {
                        pending += f.records.len();
                        chunks.push(f);
                    }
                    Ok(Err(e)) => {
                        failure = Some(e);
                        break;
                    }
                    Err(_) => break,
                }
            }

            if let Err(e) = self.write_chunks(&chunks, &mut plan, stop).await {
                failure = Some(e);
                break;
            }
            if failure.is_some() {
                break;
            }
        }

        // Stop the fetchers and drop what they hold: one blocked on a full channel would otherwise
        // wait forever for this loop to receive again.
        stop_fetching.cancel();
        drop(rx);
        for f in fetchers {
            let _ = f.await;
        }
        self.mirror
            .maybe_commit(&args.topic, &plan.committed, true)
            .await;
        self.summary.partitions.extend(plan.positions);
        Ok(match failure {
            Some(e)
                if e.downcast_ref::<SinkError>()
                    .is_some_and(SinkError::is_fenced) =>
            {
                Ended::Fenced(e)
            }
            Some(e) => return Err(e),
            None if shutdown.is_cancelled() => Ended::Shutdown,
            None if at_end => Ended::ReachedEnd,
            None => Ended::Revoked,
        })
    }

    /// Write one batch made of `chunks`, then move the positions, totals, metrics and mirror.
    async fn write_chunks(
        &mut self,
        chunks: &[Fetched],
        plan: &mut Plan,
        stop: &CancellationToken,
    ) -> Result<()> {
        let args = self.args;
        let batch = build_batch(&self.rules, chunks, &plan.committed);
        let write_started = Instant::now();
        let written = write_with_retry(&mut self.sink, &batch, args.kafka.timeout).await?;
        for advance in &batch.offsets {
            plan.committed.insert(advance.partition, Some(advance.to));
        }
        for chunk in chunks {
            let pos = plan
                .positions
                .get_mut(&chunk.partition)
                .expect("known partition");
            pos.next_offset = pos.next_offset.max(chunk.next_offset);
            pos.lag = kafka::Lag::of(0, chunk.stable_end, Some(pos.next_offset)).behind();
        }
        record_metrics(
            &args.topic,
            &batch,
            &written,
            write_started,
            &plan.positions,
        );
        let summary = &mut self.summary;
        summary.consumed += (batch.events.len() + batch.dead_letters.len()) as u64;
        summary.inserted += written.inserted;
        summary.duplicates += written.duplicates;
        summary.dead_lettered += (batch.dead_letters.len() + written.refused.len()) as u64;
        if args.print_each {
            print_each(&batch, &written)?;
        }
        self.mirror
            .maybe_commit(&args.topic, &plan.committed, false)
            .await;
        let started = self.started;
        self.progress
            .update(|| status_line(summary, &plan.positions, started));
        if let Some(throttle) = args.throttle {
            // A deliberately slow sink: event i may be written no sooner than i/throttle.
            let due = self.started
                + Duration::from_secs_f64(summary.consumed as f64 / f64::from(throttle));
            tokio::select! {
                _ = tokio::time::sleep_until(due.into()) => {}
                _ = stop.cancelled() => {}
            }
        }
        Ok(())
    }
}

/// Where a partition with no usable stored offset starts.
fn start_from(from: StartFrom, earliest: i64, end: i64) -> i64 {
    match from {
        StartFrom::Earliest => earliest,
        StartFrom::Latest => end,
    }
}

/// Stored offsets past the log end: one line that says where, why, and how to move on.
fn ahead_error(topic: &str, group: &str, ahead: &[(i32, i64, i64, i64)]) -> anyhow::Error {
    let list = |f: fn(&(i32, i64, i64, i64)) -> i64| {
        ahead
            .iter()
            .map(|a| f(a).to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    anyhow!(
        "the offsets stored for group '{group}' are past the end of '{topic}': partitions {} \
         stored at {}, log ends at {} (the broker lost data, or the topic was re-created on a \
         broker that reports no topic ids); rerun with --reset-offsets-ahead earliest to read \
         each log from its start (stored events count as duplicates) or latest to skip to its end",
        list(|a| i64::from(a.0)),
        list(|a| a.1),
        list(|a| a.2),
    )
}

/// Wait for a partition watch to finish; the topic's new metadata if it saw it grow.
async fn finish_watch(watch: Option<JoinHandle<Option<TopicMetadata>>>) -> Option<TopicMetadata> {
    match watch {
        Some(w) => w.await.ok().flatten(),
        None => None,
    }
}

/// Counters, the write-time histogram and lag gauges for `--metrics-addr` (no-ops without it).
fn record_metrics(
    topic: &str,
    batch: &Batch,
    written: &Written,
    write_started: Instant,
    positions: &BTreeMap<i32, PartitionPosition>,
) {
    use crate::metrics as m;
    let topic_label = [("topic", topic.to_string())];
    let consumed = (batch.events.len() + batch.dead_letters.len()) as u64;
    metrics::counter!(m::CONSUMED, &topic_label).increment(consumed);
    metrics::counter!(m::INSERTED, &topic_label).increment(written.inserted);
    metrics::counter!(m::DUPLICATES, &topic_label).increment(written.duplicates);
    let dead_lettered = batch.dead_letters.len() + written.refused.len();
    metrics::counter!(m::DEAD_LETTERED, &topic_label).increment(dead_lettered as u64);
    metrics::histogram!(m::BATCH_WRITE_SECONDS, &topic_label)
        .record(write_started.elapsed().as_secs_f64());
    for (partition, position) in positions {
        let labels = [
            ("topic", topic.to_string()),
            ("partition", partition.to_string()),
        ];
        metrics::gauge!(m::LAG, &labels).set(position.lag as f64);
    }
}

/// The next fetched chunk, or None when every fetcher is done or Ctrl-C was pressed.
async fn next_fetched(
    rx: &mut mpsc::Receiver<Result<Fetched>>,
    cancel: &CancellationToken,
) -> Option<Result<Fetched>> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => None,
        item = rx.recv() => item,
    }
}

/// What `build_batch` needs of the command line, and the id of the topic the offsets belong
/// to (None: the broker reports no ids). Made once per run.
struct BatchRules {
    group: String,
    topic: String,
    topic_id: Option<String>,
    kind: EventKind,
    max_event_bytes: usize,
}

impl BatchRules {
    fn of(args: &ConsumeArgs, topic: &TopicMetadata) -> Self {
        Self {
            group: args.group.clone(),
            topic: args.topic.clone(),
            topic_id: topic.topic_id.map(|id| id.to_string()),
            kind: args.kind,
            max_event_bytes: args.max_event_bytes,
        }
    }
}

/// Decode every record; what cannot be stored becomes a dead letter. Offsets advance past both,
/// and past whatever else each chunk stepped over.
fn build_batch(
    rules: &BatchRules,
    chunks: &[Fetched],
    committed: &BTreeMap<i32, Option<i64>>,
) -> Batch {
    let mut batch = Batch {
        group: rules.group.clone(),
        topic: rules.topic.clone(),
        topic_id: rules.topic_id.clone(),
        ..Batch::default()
    };
    let mut advances: BTreeMap<i32, OffsetAdvance> = BTreeMap::new();
    for chunk in chunks {
        for r in &chunk.records {
            let value = r.value.as_deref();
            let decoded = match value {
                Some(v) if v.len() > rules.max_event_bytes => Err(format!(
                    "record value is {} bytes, larger than --max-event-bytes {}",
                    v.len(),
                    rules.max_event_bytes
                )),
                _ => events::decode(rules.kind, value),
            };
            match decoded {
                Ok(event) => batch.events.push(Landed {
                    event,
                    partition: chunk.partition,
                    offset: r.offset,
                    key: r.key.clone(),
                    value: r.value.clone().unwrap_or_default(),
                }),
                Err(error) => batch.dead_letters.push(DeadLetter {
                    partition: chunk.partition,
                    offset: r.offset,
                    key: r.key.as_ref().map(|k| k.to_vec()),
                    payload: value.map(<[u8]>::to_vec),
                    error,
                }),
            }
        }
        if let Some(corrupt) = &chunk.skipped {
            batch.dead_letters.push(DeadLetter {
                partition: chunk.partition,
                offset: corrupt.first_offset,
                key: None,
                payload: Some(corrupt.raw.to_vec()),
                error: format!("skipped with --skip-corrupt-batches: {corrupt}"),
            });
        }
        let advance = advances.entry(chunk.partition).or_insert(OffsetAdvance {
            partition: chunk.partition,
            from: committed.get(&chunk.partition).copied().flatten(),
            to: 0,
        });
        advance.to = advance.to.max(chunk.next_offset);
    }
    batch.offsets = advances
        .into_values()
        .filter(|a| a.from != Some(a.to))
        .collect();
    batch
}

/// Write a batch, retrying transient database failures with bounded exponential backoff for up
/// to `timeout` from the first failure. A statement left unanswered for its deadline is one: its
/// connection is abandoned and the retry takes another — a single dead connection costs one
/// deadline, a frozen database two. The batch is one transaction, so a retry can neither lose
/// nor duplicate anything.
///
/// Events the database refuses (a data exception, a constraint) do not stop the stream: the
/// batch is written again with them set aside as dead letters ([`db::write_isolating`]).
async fn write_with_retry<S: Sink>(
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
fn database_unanswered(e: &anyhow::Error) -> bool {
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

/// One partition's fetch loop: from `offset` until `end` (when given) or cancellation.
///
/// Every broker call has a deadline (the reader's `--timeout`): a call that fails or goes
/// unanswered is retried on a fresh connection, with a warning; failures lasting longer than
/// `timeout` end the run with an error naming the partition and offset.
struct Fetcher {
    reader: PartitionReader,
    offset: i64,
    end: Option<i64>,
    timeout: Duration,
    skip_corrupt: bool,
}

impl Fetcher {
    async fn run(mut self, tx: mpsc::Sender<Result<Fetched>>, cancel: CancellationToken) {
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

/// Mirrors the database's offsets to the Kafka consumer group, best effort: a broker that
/// refuses costs a warning, never a row.
struct GroupMirror {
    opts: kafka::Config,
    group: String,
    coordinator: Option<GroupCoordinator>,
    last_commit: Option<Instant>,
    last_sent: BTreeMap<i32, i64>,
    warned: bool,
    /// As a group member: member id and generation, which Kafka requires on the commits of a
    /// group that has members.
    member: Option<(String, i32)>,
}

impl GroupMirror {
    fn new(opts: &kafka::Config, group: &str) -> Self {
        Self {
            opts: opts.clone(),
            group: group.to_string(),
            coordinator: None,
            last_commit: None,
            last_sent: BTreeMap::new(),
            warned: false,
            member: None,
        }
    }

    async fn coordinator(&mut self) -> Result<&mut GroupCoordinator> {
        GroupCoordinator::reuse_or_find(&mut self.coordinator, &self.opts, &self.group).await
    }

    /// Log when Kafka's view of the group differs from the database's (the database wins).
    async fn compare(&mut self, topic: &str, partitions: &[i32], stored: &BTreeMap<i32, i64>) {
        let group = self.group.clone();
        let fetched = match self.coordinator().await {
            Ok(c) => c.fetch(topic, partitions).await,
            Err(e) => Err(e),
        };
        match fetched {
            Ok(in_kafka) if !in_kafka.is_empty() && &in_kafka != stored => tracing::info!(
                "group '{group}': Kafka has offsets {in_kafka:?}, the database {stored:?}; \
                 using the database's (it is written with the rows)"
            ),
            Ok(_) => {}
            Err(e) => {
                self.coordinator = None;
                tracing::warn!("cannot read group '{group}' offsets from Kafka: {e:#}");
            }
        }
    }

    async fn maybe_commit(
        &mut self,
        topic: &str,
        committed: &BTreeMap<i32, Option<i64>>,
        force: bool,
    ) {
        if !force && self.last_commit.is_some_and(|t| t.elapsed() < MIRROR_EVERY) {
            return;
        }
        let offsets: BTreeMap<i32, i64> = committed
            .iter()
            .filter_map(|(&p, &o)| o.map(|o| (p, o)))
            .collect();
        if offsets.is_empty() || offsets == self.last_sent {
            return;
        }
        self.last_commit = Some(Instant::now());
        let member = self.member.clone();
        let member = member
            .as_ref()
            .map(|(id, generation)| (id.as_str(), *generation));
        let result = match self.coordinator().await {
            Ok(c) => c.commit(topic, &offsets, member).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                self.last_sent = offsets;
                self.warned = false;
            }
            Err(e) => {
                self.coordinator = None;
                if !self.warned {
                    self.warned = true;
                    tracing::warn!(
                        "cannot mirror offsets to Kafka group '{}' ({e:#}); the database keeps \
                         them, will retry",
                        self.group
                    );
                }
            }
        }
    }
}

fn print_each(batch: &Batch, written: &Written) -> Result<()> {
    let refused = |l: &&Landed| {
        written
            .refused
            .iter()
            .any(|(p, o, _)| (*p, *o) == (l.partition, l.offset))
    };
    for landed in batch.events.iter().filter(|l| !refused(l)) {
        render::line(format!(
            "Stored: {} at {}",
            landed.event.key(),
            ts_millis::format(landed.event.ts())
        ))?;
    }
    Ok(())
}

fn status_line(
    summary: &ConsumeSummary,
    positions: &BTreeMap<i32, PartitionPosition>,
    started: Instant,
) -> String {
    let rate = summary.consumed as f64 / started.elapsed().as_secs_f64().max(1e-9);
    let lags: Vec<String> = positions
        .iter()
        .map(|(p, pos)| format!("{p}:{}", pos.lag))
        .collect();
    format!(
        "consumed {} · inserted {} · duplicates {} · dead letters {} · {:.0} events/s · lag {}",
        summary.consumed,
        summary.inserted,
        summary.duplicates,
        summary.dead_lettered,
        rate,
        lags.join(" ")
    )
}

fn print_summary(args: &ConsumeArgs, summary: &ConsumeSummary) -> Result<()> {
    if args.format == Format::Json {
        return render::json(summary);
    }
    let kind = match args.kind {
        EventKind::Sales => "sales",
        EventKind::Sensor => "sensor",
    };
    render::note(format!(
        "consumed {} {kind} records from '{}' in {:.2}s ({:.1} events/s): {} inserted, {} duplicates skipped, {} dead-lettered",
        summary.consumed,
        args.topic,
        summary.elapsed_secs,
        summary.consumed as f64 / summary.elapsed_secs.max(1e-9),
        summary.inserted,
        summary.duplicates,
        summary.dead_lettered
    ))?;
    for (p, pos) in &summary.partitions {
        render::note(format!(
            "  partition {p}: next offset {}, lag {}",
            pos.next_offset, pos.lag
        ))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::OffsetAdvance;
    use std::sync::Arc;

    /// A sink in memory. `lose_first_reply`: the first COMMIT commits and then loses its
    /// reply, as a connection dropped during COMMIT does. `frozen`: no statement ever answers.
    #[derive(Default)]
    struct MemSink {
        state: Arc<std::sync::Mutex<MemState>>,
        lose_first_reply: bool,
        frozen: bool,
    }

    #[derive(Default)]
    struct MemState {
        offsets: BTreeMap<i32, i64>,
        commits: usize,
    }

    struct MemTx {
        state: Arc<std::sync::Mutex<MemState>>,
        staged: Vec<(i32, i64)>,
        lose_first_reply: bool,
        frozen: bool,
    }

    impl MemTx {
        async fn answer(&self) {
            if self.frozen {
                std::future::pending::<()>().await;
            }
        }
    }

    impl Sink for MemSink {
        type Tx = MemTx;

        async fn begin(&mut self) -> Result<MemTx, SinkError> {
            Ok(MemTx {
                state: Arc::clone(&self.state),
                staged: Vec::new(),
                lose_first_reply: self.lose_first_reply,
                frozen: self.frozen,
            })
        }

        async fn load_offsets(
            &mut self,
            _: &str,
            _: &str,
        ) -> Result<BTreeMap<i32, i64>, SinkError> {
            Ok(self.state.lock().unwrap().offsets.clone())
        }

        async fn stored_topic_ids(
            &mut self,
            _: &str,
            _: &str,
        ) -> Result<BTreeMap<i32, String>, SinkError> {
            Ok(BTreeMap::new())
        }

        async fn record_member(&mut self, _: &MemberRecord) -> Result<(), SinkError> {
            Ok(())
        }
    }

    impl db::SinkTx for MemTx {
        async fn insert_events(&mut self, events: &[Landed]) -> Result<u64, SinkError> {
            self.answer().await;
            Ok(events.len() as u64)
        }

        async fn insert_dead_letters(
            &mut self,
            _: &str,
            letters: &[DeadLetter],
        ) -> Result<u64, SinkError> {
            Ok(letters.len() as u64)
        }

        async fn advance(&mut self, _: &Batch, advance: &OffsetAdvance) -> Result<bool, SinkError> {
            let stored = self
                .state
                .lock()
                .unwrap()
                .offsets
                .get(&advance.partition)
                .copied();
            self.staged.push((advance.partition, advance.to));
            Ok(stored == advance.from)
        }

        async fn savepoint(&mut self, _: db::Savepoint) -> Result<(), SinkError> {
            Ok(())
        }

        async fn commit(self) -> Result<(), SinkError> {
            let mut state = self.state.lock().unwrap();
            state.offsets.extend(self.staged);
            state.commits += 1;
            if self.lose_first_reply && state.commits == 1 {
                let lost = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "reply lost");
                return Err(SinkError::Database(sqlx::Error::Io(lost)));
            }
            Ok(())
        }
    }

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
        let mut sink = MemSink {
            lose_first_reply: true,
            ..MemSink::default()
        };
        let written = write_with_retry(&mut sink, &batch(None, 10), Duration::from_secs(5))
            .await
            .expect("the retry sees its own commit");
        assert_eq!(written.dead_lettered, 0);
        assert_eq!(sink.state.lock().unwrap().offsets[&0], 10);
        // A genuine competitor is still fenced.
        let err = write_with_retry(&mut sink, &batch(Some(3), 7), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("another consumer"), "{err}");
    }

    #[tokio::test]
    async fn a_database_that_stops_answering_ends_the_write_after_two_deadlines() {
        let timeout = Duration::from_millis(300);
        let frozen = MemSink {
            frozen: true,
            ..MemSink::default()
        };
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

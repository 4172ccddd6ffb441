//! `streamlab consume`: every partition of a topic into a database, exactly once per event.
//!
//! One fetch task per partition feeds a bounded channel (backpressure: memory does not grow with
//! the backlog); this task turns what arrives into batches and writes each batch — rows, dead
//! letters and new offsets — in one database transaction. Only then are the offsets mirrored to
//! the Kafka consumer group, so Kafka tooling sees the position; the database stays the truth.
//!
//! Alone, a consumer reads every partition. With `--join-group` it is one member of the group
//! ([`crate::kafka::group`]) and runs the same loop once per generation, over the partitions the
//! group gave it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use rskafka::client::error::{Error as KafkaError, ProtocolError};
use rskafka::client::partition::{OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::Client;
use rskafka::record::RecordAndOffset;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cli::{ConsumeArgs, KafkaOpts, SinkKind, StartFrom};
use crate::events::{self, ts_millis, EventKind};
use crate::kafka::group::{Assignment, GroupMember, Membership};
use crate::kafka::{self, admin::GroupCoordinator};
use crate::progress::Progress;
use crate::sink::pg::PgSink;
use crate::sink::sqlite::SqliteSink;
use crate::sink::{
    self, Batch, DeadLetter, Deadline, Holding, Landed, MemberRecord, OffsetAdvance, Sink,
    SinkError, Written,
};
use crate::{output, shutdown};

/// How often the group's offsets are mirrored to Kafka while running (and always at the end).
const MIRROR_EVERY: Duration = Duration::from_millis(500);

pub async fn run(args: ConsumeArgs) -> Result<()> {
    crate::metrics::serve(&args.metrics)?;
    let url = args.db.url();
    let timeout = args.kafka.timeout;
    // Every statement gets --timeout: a database that stops answering must not hang the run.
    let limit = sink::connect_timeout(timeout);
    let shown = sink::redact(&url);
    match args.db.sink {
        SinkKind::Pg => {
            let pg = PgSink::connect(&url, timeout).await?;
            consume(
                &args,
                Deadline::new(pg, limit, format!("PostgreSQL at {shown}")),
            )
            .await
        }
        SinkKind::Sqlite => {
            let sqlite = SqliteSink::connect(&url, timeout).await?;
            consume(
                &args,
                Deadline::new(sqlite, limit, format!("SQLite at {shown}")),
            )
            .await
        }
    }
}

/// Records fetched from one partition.
struct Fetched {
    partition: i32,
    records: Vec<RecordAndOffset>,
    high_watermark: i64,
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

async fn consume<S: Sink>(args: &ConsumeArgs, sink: S) -> Result<()> {
    let shutdown = shutdown::on_signal();
    let client = Arc::new(kafka::connect(&args.kafka).await?);
    let partitions = kafka::partitions_of(&client, &args.topic).await?;
    let mut consumer = Consumer {
        args,
        sink,
        client,
        mirror: GroupMirror::new(&args.kafka, &args.group),
        summary: ConsumeSummary::default(),
        progress: Progress::new(),
        started: Instant::now(),
    };
    let stored = consumer
        .sink
        .load_offsets(&args.group, &args.topic)
        .await
        .context("reading stored offsets")?;
    consumer
        .mirror
        .compare(&args.topic, &partitions, &stored)
        .await;

    let result = if args.join_group {
        consumer.as_group_member(&shutdown).await
    } else {
        // Alone: every partition, for as long as the run lasts.
        consumer
            .consume_partitions(&partitions, &shutdown, &shutdown)
            .await
            .and_then(|ended| match ended {
                Ended::Fenced(e) => Err(e),
                _ => Ok(()),
            })
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
    /// The group took the partitions back (rebalance, or this member was dropped).
    Revoked,
    /// The database's offset fence refused a batch: someone else wrote one of these partitions.
    Fenced(anyhow::Error),
}

/// One consume run: the sink, the Kafka client and the running totals, across generations.
struct Consumer<'a, S> {
    args: &'a ConsumeArgs,
    sink: S,
    client: Arc<Client>,
    mirror: GroupMirror,
    summary: ConsumeSummary,
    progress: Progress,
    started: Instant,
}

impl<S: Sink> Consumer<'_, S> {
    /// `--join-group`: consume what the group assigns, generation after generation, until
    /// Ctrl-C (or `--stop-at-end`), then leave so the others take over at once.
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
        // Read again every time: the previous owner of a partition may have just written it.
        let stored = self
            .sink
            .load_offsets(&args.group, &args.topic)
            .await
            .context("reading stored offsets")?;
        // rskafka's retries end at --timeout per call; the whole lookup gets a deadline too, and
        // gives way at once to a rebalance or Ctrl-C.
        let lookup = async {
            let clients = kafka::partition_clients(&self.client, &args.topic, partitions).await?;
            let ranges = kafka::offset_ranges(&clients).await?;
            Ok::<_, anyhow::Error>((clients, ranges))
        };
        let deadline = args.kafka.timeout * 2;
        let (clients, ranges) = tokio::select! {
            _ = stop.cancelled() => return Ok(ended_early()),
            found = tokio::time::timeout(deadline, lookup) => found.map_err(|_| {
                anyhow!(
                    "the leaders of '{}' partitions {partitions:?} did not answer within {}",
                    args.topic,
                    humantime::format_duration(deadline)
                )
            })??,
        };

        // Where each partition starts, and (for --stop-at-end) where it ends.
        let mut committed: BTreeMap<i32, Option<i64>> = BTreeMap::new();
        let mut positions: BTreeMap<i32, PartitionPosition> = BTreeMap::new();
        let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
        let mut starts = Vec::new();
        for pc in &clients {
            let p = pc.partition();
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
                None => match args.from {
                    StartFrom::Earliest => earliest,
                    StartFrom::Latest => latest,
                },
            };
            committed.insert(p, stored.get(&p).copied());
            positions.insert(
                p,
                PartitionPosition {
                    next_offset: start,
                    lag: latest - start,
                },
            );
            ends.insert(p, latest);
            starts.push((Arc::clone(pc), start));
            tracing::debug!(
                "{}/{p}: start at {start} (earliest {earliest}, latest {latest})",
                args.topic
            );
        }
        let reached_end = |positions: &BTreeMap<i32, PartitionPosition>| {
            positions.iter().all(|(p, pos)| pos.next_offset >= ends[p])
        };

        let (tx, mut rx) = mpsc::channel::<Result<Fetched>>(clients.len().max(1));
        let stop_fetching = stop.child_token();
        let mut fetchers = Vec::new();
        if !(args.stop_at_end && reached_end(&positions)) {
            for (pc, start) in starts {
                let end = args.stop_at_end.then(|| ends[&pc.partition()]);
                fetchers.push(tokio::spawn(fetch_partition(
                    Arc::clone(&self.client),
                    pc,
                    start,
                    end,
                    args.kafka.timeout,
                    tx.clone(),
                    stop_fetching.clone(),
                )));
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
            if args.stop_at_end && reached_end(&positions) {
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

            let batch = build_batch(args, &mut chunks, &committed);
            let write_started = Instant::now();
            let written = match write_with_retry(&mut self.sink, &batch, args.kafka.timeout).await {
                Ok(w) => w,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            for advance in &batch.offsets {
                committed.insert(advance.partition, Some(advance.to));
            }
            for chunk in &chunks {
                let pos = positions
                    .get_mut(&chunk.partition)
                    .expect("known partition");
                if let Some(last) = chunk.records.last() {
                    pos.next_offset = pos.next_offset.max(last.offset + 1);
                }
                pos.lag = (chunk.high_watermark - pos.next_offset).max(0);
            }
            record_metrics(&args.topic, &batch, &written, write_started, &positions);
            let summary = &mut self.summary;
            summary.consumed += (batch.events.len() + batch.dead_letters.len()) as u64;
            summary.inserted += written.inserted;
            summary.duplicates += written.duplicates;
            summary.dead_lettered += (batch.dead_letters.len() + written.refused.len()) as u64;
            if args.print_each {
                print_each(&batch, &written)?;
            }
            self.mirror
                .maybe_commit(&args.topic, &committed, false)
                .await;
            let started = self.started;
            self.progress
                .update(|| status_line(summary, &positions, started));
            if let Some(throttle) = args.throttle {
                // A deliberately slow sink: event i may be written no sooner than i/throttle.
                let due = self.started
                    + Duration::from_secs_f64(summary.consumed as f64 / f64::from(throttle));
                tokio::select! {
                    _ = tokio::time::sleep_until(due.into()) => {}
                    _ = stop.cancelled() => {}
                }
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
            .maybe_commit(&args.topic, &committed, true)
            .await;
        self.summary.partitions.extend(positions);
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

/// Decode every record; what cannot be stored becomes a dead letter. Offsets advance past both.
/// Record keys and values move into the batch (a refused event's dead letter keeps them).
fn build_batch(
    args: &ConsumeArgs,
    chunks: &mut [Fetched],
    committed: &BTreeMap<i32, Option<i64>>,
) -> Batch {
    let mut batch = Batch {
        group: args.group.clone(),
        topic: args.topic.clone(),
        ..Batch::default()
    };
    let mut advances: BTreeMap<i32, OffsetAdvance> = BTreeMap::new();
    for chunk in chunks.iter_mut() {
        for r in &mut chunk.records {
            let value = r.record.value.as_deref();
            let decoded = match value {
                Some(v) if v.len() > args.max_event_bytes => Err(format!(
                    "record value is {} bytes, larger than --max-event-bytes {}",
                    v.len(),
                    args.max_event_bytes
                )),
                _ => events::decode(args.kind, value),
            };
            let (key, value) = (r.record.key.take(), r.record.value.take());
            match decoded {
                Ok(event) => batch.events.push(Landed {
                    event,
                    partition: chunk.partition,
                    offset: r.offset,
                    key,
                    value: value.unwrap_or_default(),
                }),
                Err(error) => batch.dead_letters.push(DeadLetter {
                    partition: chunk.partition,
                    offset: r.offset,
                    key,
                    payload: value,
                    error,
                }),
            }
        }
        if let Some(last) = chunk.records.last() {
            let advance = advances.entry(chunk.partition).or_insert(OffsetAdvance {
                partition: chunk.partition,
                from: committed.get(&chunk.partition).copied().flatten(),
                to: 0,
            });
            advance.to = advance.to.max(last.offset + 1);
        }
    }
    batch.offsets = advances.into_values().collect();
    batch
}

/// Write a batch, retrying transient database failures with bounded exponential backoff for up
/// to `timeout` from the first failure. A statement left unanswered for its deadline is one: its
/// connection is abandoned and the retry takes another — a single dead connection costs one
/// deadline, a frozen database two. The batch is one transaction, so a retry can neither lose
/// nor duplicate anything.
///
/// Events the database refuses (a data exception, a constraint) do not stop the stream: the
/// batch is written again with them set aside as dead letters ([`sink::write_isolating`]).
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
            sink::write_isolating(sink, batch).await
        } else {
            sink::write(sink, batch).await
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

/// Fetch one partition from `start`, until `end` (when given) or cancellation.
///
/// Every fetch has a deadline: rskafka has no request timeout, so a broker or connection that
/// goes silent (a half-open TCP connection, a stuck broker) would otherwise stall this
/// partition for good. A fetch that goes unanswered is retried on a fresh connection; silence
/// or errors lasting longer than `timeout` end the run with an error.
async fn fetch_partition(
    kafka_client: Arc<Client>,
    mut client: Arc<PartitionClient>,
    start: i64,
    end: Option<i64>,
    timeout: Duration,
    tx: mpsc::Sender<Result<Fetched>>,
    cancel: CancellationToken,
) {
    let (topic, partition) = (client.topic().to_string(), client.partition());
    let answer_within = Duration::from_millis(kafka::FETCH_MAX_WAIT_MS as u64) + timeout;
    let mut offset = start;
    let mut failing_since: Option<Instant> = None;
    while end.is_none_or(|e| offset < e) {
        let fetch = client.fetch_records(offset, 1..kafka::FETCH_BYTES, kafka::FETCH_MAX_WAIT_MS);
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            r = tokio::time::timeout(answer_within, fetch) => r,
        };
        let error = match result {
            Ok(Ok((records, high_watermark))) => {
                failing_since = None;
                let Some(last) = records.last() else { continue };
                tracing::trace!(
                    "{topic}/{partition}: fetched {} records at {offset}",
                    records.len()
                );
                offset = last.offset + 1;
                let chunk = Fetched {
                    partition,
                    records,
                    high_watermark,
                };
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    sent = tx.send(Ok(chunk)) => if sent.is_err() { return },
                }
                continue;
            }
            Ok(Err(KafkaError::ServerError {
                protocol_error: ProtocolError::OffsetOutOfRange,
                ..
            })) => {
                // Retention removed records we had not read yet: say so and move on.
                match client.get_offset(OffsetAt::Earliest).await {
                    Ok(earliest) if earliest > offset => {
                        tracing::warn!(
                            "{topic}/{partition}: offsets {offset}..{earliest} were removed by \
                             retention before they were consumed"
                        );
                        offset = earliest;
                    }
                    _ => tokio::time::sleep(Duration::from_millis(200)).await,
                }
                continue;
            }
            // rskafka already retried this one within our backoff deadline.
            Ok(Err(e)) => anyhow!(e),
            Err(_) => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() < timeout {
                    tracing::warn!(
                        "{topic}/{partition}: no answer to a fetch within {answer_within:?}; \
                         retrying on a new connection"
                    );
                    match kafka_client
                        .partition_client(&topic, partition, UnknownTopicHandling::Error)
                        .await
                    {
                        Ok(fresh) => client = Arc::new(fresh),
                        Err(e) => tracing::warn!("{topic}/{partition}: reconnecting: {e}"),
                    }
                    continue;
                }
                anyhow!(
                    "the broker did not answer fetches for {:?}",
                    since.elapsed()
                )
            }
        };
        let _ = tx
            .send(Err(error.context(format!(
                "fetching {topic}/{partition} at offset {offset}"
            ))))
            .await;
        return;
    }
}

/// Mirrors the database's offsets to the Kafka consumer group, best effort: a broker that
/// refuses costs a warning, never a row.
struct GroupMirror {
    opts: KafkaOpts,
    group: String,
    coordinator: Option<GroupCoordinator>,
    last_commit: Option<Instant>,
    last_sent: BTreeMap<i32, i64>,
    warned: bool,
    /// As a group member (`--join-group`): member id and generation, which Kafka requires on
    /// the commits of a group that has members.
    member: Option<(String, i32)>,
}

impl GroupMirror {
    fn new(opts: &KafkaOpts, group: &str) -> Self {
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
        output::line(format!(
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
    let kind = match args.kind {
        EventKind::Sales => "sales",
        EventKind::Sensor => "sensor",
    };
    output::line(format!(
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
        output::line(format!(
            "  partition {p}: next offset {}, lag {}",
            pos.next_offset, pos.lag
        ))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::OffsetAdvance;

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

        async fn record_member(&mut self, _: &MemberRecord) -> Result<(), SinkError> {
            Ok(())
        }
    }

    impl sink::SinkTx for MemTx {
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

        async fn advance(
            &mut self,
            _: &str,
            _: &str,
            advance: &OffsetAdvance,
        ) -> Result<bool, SinkError> {
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

        async fn savepoint(&mut self, _: sink::Savepoint) -> Result<(), SinkError> {
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

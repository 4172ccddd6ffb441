//! The batch loop: fetched chunks become one transaction each.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::fetcher::Fetcher;
use super::plan::Plan;
use super::show;
use super::write::write_with_retry;
use super::{Config, Consumer, Ended, Fetched};
use crate::db::{
    self, Batch, Change, DeadLetter, Landed, Mode, OffsetAdvance, Sink, SinkError, Tombstone,
    Written,
};
use crate::events::{self, EventKind};
use crate::kafka::admin::TopicMetadata;
use crate::kafka::records::FetchedRecord;
use crate::kafka::Position;

impl<S: Sink> Consumer<'_, S> {
    /// Consume `partitions` from the sink's stored offsets until `stop` (or `--stop-at-end`).
    ///
    /// One fetch task per partition feeds a bounded channel; each batch — rows, dead letters and
    /// new offsets — is written in one transaction before the next is taken, so stopping between
    /// batches leaves nothing half done.
    pub(super) async fn consume_partitions(
        &mut self,
        partitions: &[i32],
        stop: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> Result<Ended> {
        let ended_early = || {
            if shutdown.is_cancelled() {
                Ended::Shutdown
            } else {
                Ended::Revoked
            }
        };
        if partitions.is_empty() && !self.args.stop_at_end {
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
        let mut fetchers = Fetchers::spawn(self.args, &mut plan, stop);
        let outcome = self.batches(&mut fetchers, &mut plan, stop).await;
        fetchers.stop().await;
        let fenced = outcome.as_ref().is_err_and(|e| {
            e.downcast_ref::<SinkError>()
                .is_some_and(SinkError::is_fenced)
        });
        if !fenced {
            // Fenced, these positions are no longer ours (someone else — a reset, another
            // consumer — moved them): Kafka must not be told them.
            self.mirror
                .maybe_commit(&self.args.topic, &plan.committed, true)
                .await;
        }
        self.summary.partitions.extend(plan.positions);
        Ok(match outcome {
            Err(e) if fenced => Ended::Fenced(e),
            Err(e) => return Err(e),
            Ok(()) if shutdown.is_cancelled() => Ended::Shutdown,
            Ok(()) if fetchers.at_end => Ended::ReachedEnd,
            Ok(()) => Ended::Revoked,
        })
    }

    /// Take what the fetchers deliver until the end, `stop`, or a failure, and write it with
    /// `--writers` writers side by side.
    ///
    /// Each writer (a lane) owns a share of the partitions and writes its batches one after
    /// another, each in one transaction on a connection of its own, fenced from the end of the
    /// lane's previous batch — so batches of one partition commit in order, and lanes never
    /// touch each other's offsets. While a lane's batch is being written, its next one is
    /// fetched (with one writer, decoded too). A lane that is idle takes whatever has arrived
    /// at once (when caught up, each event is written as soon as it is fetched); under a
    /// backlog batches fill up to `--batch-size`, and a lane holding its next batch stops the
    /// intake (backpressure).
    async fn batches(
        &mut self,
        fetchers: &mut Fetchers,
        plan: &mut Plan,
        stop: &CancellationToken,
    ) -> Result<()> {
        let args = self.args;
        // Throttled, batches stay small (a quarter second's worth) so the pace is even.
        let batch_limit = match args.throttle {
            Some(t) => args.batch_size.min((t as usize / 4).max(1)),
            None => args.batch_size,
        };
        let writers = args.writers.clamp(1, plan.positions.len().max(1));
        let lane_of: BTreeMap<i32, usize> = plan
            .positions
            .keys()
            .enumerate()
            .map(|(i, &partition)| (partition, i % writers))
            .collect();
        let mut lanes: Vec<Lane> = (0..writers).map(|_| Lane::default()).collect();
        // One writer decodes its next batch while the current one is written; with several,
        // the others' writes overlap the decoding, and building ahead would only cost memory.
        let prebuild = writers == 1;
        // Where each partition's next batch is fenced from: the end of the last one handed to
        // its lane (which commits, or the run ends, before the next is written).
        let mut handed = plan.committed.clone();
        let mut writing = FuturesUnordered::new();
        // The channel still delivers; a fetch failure, reported once what came before it is in.
        let (mut open, mut failure) = (true, None);
        loop {
            if !stop.is_cancelled() {
                for (i, lane) in lanes.iter_mut().enumerate() {
                    if lane.ready.is_none()
                        && !lane.pending.is_empty()
                        && (!lane.busy || (prebuild && lane.records >= batch_limit))
                    {
                        let chunks = std::mem::take(&mut lane.pending);
                        lane.records = 0;
                        let batch = build_batch(&self.rules, &chunks, &handed);
                        for advance in &batch.offsets {
                            handed.insert(advance.partition, Some(advance.to));
                        }
                        lane.ready = Some((chunks, batch));
                    }
                    if !lane.busy {
                        if let Some((chunks, batch)) = lane.ready.take() {
                            lane.busy = true;
                            let sink = self.sink.clone();
                            writing.push(write_lane(i, sink, chunks, batch, args.kafka.timeout));
                        }
                    }
                }
            }
            if writing.is_empty() {
                if args.stop_at_end && plan.reached_end() {
                    fetchers.at_end = true;
                    return Ok(());
                }
                if stop.is_cancelled() {
                    return Ok(());
                }
                if !open || failure.is_some() {
                    fetchers.at_end = failure.is_none();
                    return failure.map_or(Ok(()), Err);
                }
            }
            // A lane holds at most the batch it writes and the next one: memory stays bounded
            // by the writers, not the backlog.
            let intake = open
                && failure.is_none()
                && !stop.is_cancelled()
                && !lanes
                    .iter()
                    .any(|l| l.ready.is_some() || (l.busy && l.records >= batch_limit));
            tokio::select! {
                biased;
                _ = stop.cancelled(), if !stop.is_cancelled() => {}
                Some((lane, chunks, batch, started, written)) = writing.next(),
                    if !writing.is_empty() =>
                {
                    lanes[lane].busy = false;
                    self.written(&chunks, &batch, &written?, started, plan, stop)
                        .await?;
                }
                item = fetchers.rx.recv(), if intake => {
                    open = item.is_some();
                    let mut next = item;
                    while let Some(item) = next.take() {
                        let fetched = match item {
                            Ok(fetched) => fetched,
                            Err(e) => {
                                failure = Some(e);
                                break;
                            }
                        };
                        let lane = &mut lanes[lane_of[&fetched.partition]];
                        lane.records += fetched.records.len();
                        lane.pending.push(fetched);
                        if lane.records >= batch_limit {
                            break;
                        }
                        // What is already fetched joins without waiting.
                        next = match fetchers.rx.try_recv() {
                            Ok(item) => Some(item),
                            Err(mpsc::error::TryRecvError::Empty) => None,
                            Err(mpsc::error::TryRecvError::Disconnected) => {
                                open = false;
                                None
                            }
                        };
                    }
                }
            }
        }
    }

    /// Write one batch made of `chunks`, then move the positions, totals, metrics and mirror.
    pub(super) async fn write_chunks(
        &mut self,
        chunks: &[Fetched],
        plan: &mut Plan,
        stop: &CancellationToken,
    ) -> Result<()> {
        let batch = build_batch(&self.rules, chunks, &plan.committed);
        let write_started = Instant::now();
        let written = write_with_retry(&mut self.sink, &batch, self.args.kafka.timeout).await?;
        self.written(chunks, &batch, &written, write_started, plan, stop)
            .await
    }

    /// A batch made of `chunks` is committed: move the positions, totals, metrics and mirror.
    async fn written(
        &mut self,
        chunks: &[Fetched],
        batch: &Batch,
        written: &Written,
        write_started: Instant,
        plan: &mut Plan,
        stop: &CancellationToken,
    ) -> Result<()> {
        let args = self.args;
        for advance in &batch.offsets {
            plan.committed.insert(advance.partition, Some(advance.to));
        }
        for chunk in chunks {
            let pos = plan
                .positions
                .get_mut(&chunk.partition)
                .expect("known partition");
            *pos = pos.moved(pos.next_offset().max(chunk.next_offset), chunk.stable_end);
        }
        record_metrics(&args.topic, batch, written, write_started, &plan.positions);
        let summary = &mut self.summary;
        summary.consumed += batch.records();
        summary.inserted += written.inserted;
        summary.duplicates += written.duplicates;
        summary.deleted += written.deleted;
        summary.superseded += batch.superseded;
        summary.dead_lettered += (batch.dead_letters.len() + written.refused.len()) as u64;
        if args.print_each {
            show::each(batch, written)?;
        }
        self.mirror
            .maybe_commit(&args.topic, &plan.committed, false)
            .await;
        let started = self.started;
        self.progress
            .update(|| show::status_line(args, summary, &plan.positions, started));
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

/// The fetch tasks of one set of partitions, and the channel they feed.
struct Fetchers {
    rx: mpsc::Receiver<Result<Fetched>>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    /// Whether the loop ended because the partitions reached their end (or had none to read).
    at_end: bool,
}

impl Fetchers {
    /// One task per reader of `plan`, from its start (none when `--stop-at-end` is already met).
    fn spawn(args: &Config, plan: &mut Plan, stop: &CancellationToken) -> Self {
        let readers = std::mem::take(&mut plan.readers);
        let (tx, rx) = mpsc::channel::<Result<Fetched>>(readers.len().max(1));
        let stop = stop.child_token();
        let mut tasks = Vec::new();
        if !(args.stop_at_end && plan.reached_end()) {
            for (reader, start) in readers {
                let end = args.stop_at_end.then(|| plan.ends[&reader.partition()]);
                let fetcher = Fetcher::new(reader, start, end, args);
                tasks.push(tokio::spawn(fetcher.run(tx.clone(), stop.clone())));
            }
        }
        Self {
            rx,
            stop,
            tasks,
            at_end: false,
        }
    }

    /// Stop the tasks and drop what they hold: one blocked on a full channel would otherwise
    /// wait forever for the loop to receive again.
    async fn stop(&mut self) {
        self.stop.cancel();
        self.rx.close();
        while self.rx.try_recv().is_ok() {}
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

/// Counters, the write-time histogram and lag gauges for `--metrics-addr` (no-ops without it).
fn record_metrics(
    topic: &str,
    batch: &Batch,
    written: &Written,
    write_started: Instant,
    positions: &BTreeMap<i32, Position>,
) {
    use crate::metrics as m;
    let topic_label = [("topic", topic.to_string())];
    let consumed = batch.records();
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

/// One writer's share of the batch loop: what it has fetched, the batch built from it, and
/// whether its previous batch is still being written.
#[derive(Default)]
struct Lane {
    /// Fetched, not yet in a batch, and how many records that is.
    pending: Vec<Fetched>,
    records: usize,
    /// Built (decoded, fenced from the lane's batch before it), waiting for the lane's write.
    ready: Option<(Vec<Fetched>, Batch)>,
    busy: bool,
}

/// Write lane `lane`'s batch on a clone of the sink (a connection of its own).
async fn write_lane<S: Sink>(
    lane: usize,
    mut sink: S,
    chunks: Vec<Fetched>,
    batch: Batch,
    timeout: Duration,
) -> (usize, Vec<Fetched>, Batch, Instant, Result<Written>) {
    let started = Instant::now();
    let written = write_with_retry(&mut sink, &batch, timeout).await;
    (lane, chunks, batch, started, written)
}

/// What `build_batch` needs of the command line, and the id of the topic the offsets belong
/// to (None: the broker reports no ids). Made once per run.
pub(super) struct BatchRules {
    group: String,
    topic: String,
    pub(super) topic_id: Option<String>,
    kind: EventKind,
    mode: Mode,
    max_event_bytes: usize,
}

impl BatchRules {
    pub(super) fn of(args: &Config, topic: &TopicMetadata) -> Self {
        Self {
            group: args.group.clone(),
            topic: args.topic.clone(),
            topic_id: topic.topic_id.map(|id| id.to_string()),
            kind: args.kind,
            mode: if args.upsert {
                Mode::Upsert(args.kind)
            } else {
                Mode::Append
            },
            max_event_bytes: args.max_event_bytes,
        }
    }

    /// The record as an event, or the dead letter saying why it is none.
    fn landed(&self, partition: i32, r: &FetchedRecord) -> Result<Landed, DeadLetter> {
        let value = r.value.as_deref();
        match events::decode_record(self.kind, value, self.max_event_bytes) {
            Ok(event) => Ok(Landed {
                event,
                partition,
                offset: r.offset,
                key: r.key.clone(),
                value: r.value.clone().unwrap_or_default(),
            }),
            Err(error) => Err(DeadLetter {
                partition,
                offset: r.offset,
                key: r.key.as_ref().map(|k| k.to_vec()),
                payload: value.map(<[u8]>::to_vec),
                error: error.into(),
            }),
        }
    }

    /// The record as a change of its key's row (`--upsert`): a new value, or — no value, a
    /// tombstone — the row's deletion; a record without a usable key is a dead letter.
    fn change(&self, partition: i32, r: &FetchedRecord) -> Result<Change, DeadLetter> {
        let key = match db::table_key(r.key.as_deref()) {
            Ok(key) => key.to_string(),
            Err(error) => {
                return Err(DeadLetter {
                    partition,
                    offset: r.offset,
                    key: r.key.as_ref().map(|k| k.to_vec()),
                    payload: r.value.as_ref().map(|v| v.to_vec()),
                    error: error.into(),
                })
            }
        };
        match r.value {
            None => Ok(Change::Delete(Tombstone {
                key,
                partition,
                offset: r.offset,
            })),
            Some(_) => Ok(Change::Put(key, self.landed(partition, r)?)),
        }
    }
}

/// Decode every record; what cannot be stored becomes a dead letter. Upserting, only the last
/// change of each key is kept. Offsets advance past all of them, and past whatever else each
/// chunk stepped over.
pub(super) fn build_batch(
    rules: &BatchRules,
    chunks: &[Fetched],
    committed: &BTreeMap<i32, Option<i64>>,
) -> Batch {
    let mut batch = Batch {
        group: rules.group.clone(),
        topic: rules.topic.clone(),
        topic_id: rules.topic_id.clone(),
        mode: rules.mode,
        ..Batch::default()
    };
    let mut changes = Vec::new();
    let mut advances: BTreeMap<i32, OffsetAdvance> = BTreeMap::new();
    for chunk in chunks {
        for r in &chunk.records {
            let decoded = match rules.mode {
                Mode::Append => rules
                    .landed(chunk.partition, r)
                    .map(|l| batch.events.push(l)),
                Mode::Upsert(_) => rules.change(chunk.partition, r).map(|c| changes.push(c)),
            };
            if let Err(letter) = decoded {
                batch.dead_letters.push(letter);
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
    if !changes.is_empty() {
        let folded = db::latest_per_key(changes);
        (batch.events, batch.deletes) = (folded.puts, folded.deletes);
        batch.superseded = folded.superseded;
    }
    batch.offsets = advances
        .into_values()
        .filter(|a| a.from != Some(a.to))
        .collect();
    batch
}

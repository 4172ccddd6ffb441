//! The batch loop: fetched chunks become one transaction each.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::fetcher::Fetcher;
use super::lanes::{batch_limit, cores, writer_count, Lanes, Write};
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
    /// `--writers` writers side by side, each batch in one transaction on a connection of its
    /// own. Which lane writes what and when is [`Lanes`]' business; this only awaits the
    /// fetch channel and the writes and tells it what happened.
    async fn batches(
        &mut self,
        fetchers: &mut Fetchers,
        plan: &mut Plan,
        stop: &CancellationToken,
    ) -> Result<()> {
        let args = self.args;
        let partitions: Vec<i32> = plan.positions.keys().copied().collect();
        let limit = batch_limit(args.batch_size, args.throttle);
        let (writers, chosen) =
            writer_count(args.writers, partitions.len(), cores(), args.writer_cap);
        if let Some(chosen) = chosen {
            tracing::info!("{chosen}");
        }
        let mut lanes = Lanes::new(&partitions, plan.committed.clone(), writers, limit);
        let mut writing = FuturesUnordered::new();
        loop {
            if !stop.is_cancelled() {
                let rules = &self.rules;
                for due in lanes.due(|chunks, handed| build_batch(rules, chunks, handed)) {
                    let sink = self.sink.clone();
                    writing.push(Lane(tokio::spawn(write_lane(
                        due,
                        sink,
                        args.kafka.timeout,
                    ))));
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
                if !fetchers.delivering() {
                    fetchers.at_end = fetchers.failure.is_none();
                    return fetchers.failure.take().map_or(Ok(()), Err);
                }
            }
            let intake = fetchers.delivering() && !stop.is_cancelled() && lanes.wants_intake();
            tokio::select! {
                biased;
                _ = stop.cancelled(), if !stop.is_cancelled() => {}
                Some((due, started, written)) = writing.next(), if !writing.is_empty() => {
                    lanes.written(due.lane);
                    let counted = match written {
                        Ok(w) => self.written(&due.chunks, &due.batch, &w, started, plan, stop).await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = counted {
                        self.settle(&mut writing, &mut lanes, plan, stop).await;
                        return Err(e);
                    }
                }
                item = fetchers.rx.recv(), if intake => fetchers.deliver(item, &mut lanes),
            }
        }
    }

    /// After a failure, let the other lanes' writes run to their end, and count what they
    /// committed: a write dropped mid-statement would leave its connection out of step, and a
    /// batch committed but not counted would be read again.
    async fn settle<W>(
        &mut self,
        writing: &mut FuturesUnordered<W>,
        lanes: &mut Lanes,
        plan: &mut Plan,
        stop: &CancellationToken,
    ) where
        W: std::future::Future<Output = (Write, Instant, Result<Written>)>,
    {
        while let Some((due, started, written)) = writing.next().await {
            lanes.written(due.lane);
            if let Ok(w) = written {
                let counted = self.written(&due.chunks, &due.batch, &w, started, plan, stop);
                if let Err(e) = counted.await {
                    tracing::debug!("after a failed write, counting another lane's: {e:#}");
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
    /// The channel still delivers.
    open: bool,
    /// A fetch failure, reported once what came before it is in.
    failure: Option<anyhow::Error>,
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
            open: true,
            failure: None,
            at_end: false,
        }
    }

    /// Whether more may come: the channel is open and no fetch failed.
    fn delivering(&self) -> bool {
        self.open && self.failure.is_none()
    }

    /// Hand `item`, and whatever else has already arrived, to the lanes: until a lane is full,
    /// the channel closes, or a fetch fails.
    fn deliver(&mut self, item: Option<Result<Fetched>>, lanes: &mut Lanes) {
        self.open = item.is_some();
        let mut next = item;
        while let Some(item) = next.take() {
            let full = match item {
                Ok(fetched) => lanes.take(fetched),
                Err(e) => {
                    self.failure = Some(e);
                    break;
                }
            };
            if full {
                break;
            }
            // What is already fetched joins without waiting.
            next = match self.rx.try_recv() {
                Ok(item) => Some(item),
                Err(mpsc::error::TryRecvError::Empty) => None,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.open = false;
                    None
                }
            };
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

/// A lane's write, running as a task of its own: its statements go out while the batch loop
/// decodes the next batch (polled only by the loop, a write would wait for each decoding to end
/// before sending its next statement). Dropped, the task still runs to its end.
struct Lane(JoinHandle<(Write, Instant, Result<Written>)>);

impl std::future::Future for Lane {
    type Output = (Write, Instant, Result<Written>);

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|done| match done {
                Ok(done) => done,
                // A write that panicked: the panic goes on here, as if the write were not a task.
                Err(e) => match e.try_into_panic() {
                    Ok(panic) => std::panic::resume_unwind(panic),
                    // Only a runtime shutting down cancels it, and then nothing polls this.
                    Err(e) => panic!("a write task was cancelled: {e}"),
                },
            })
    }
}

/// Write `due`'s batch on a clone of the sink (a connection of its own).
async fn write_lane<S: Sink>(
    due: Write,
    mut sink: S,
    timeout: Duration,
) -> (Write, Instant, Result<Written>) {
    let started = Instant::now();
    let written = write_with_retry(&mut sink, &due.batch, timeout).await;
    (due, started, written)
}

/// What `build_batch` needs of the command line, and the id of the topic the offsets belong
/// to (None: the broker reports no ids). Made once per run.
pub(crate) struct BatchRules {
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

    /// Appending `kind` events of at most `max_event_bytes` (`bench --cost`'s consume path).
    pub(crate) fn append(kind: EventKind, max_event_bytes: usize) -> Self {
        Self {
            group: String::new(),
            topic: String::new(),
            topic_id: None,
            kind,
            mode: Mode::Append,
            max_event_bytes,
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
pub(crate) fn build_batch(
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
    // Sized once: a batch's events are a megabyte or more, and growing by doubling would copy
    // them several times over.
    let records = chunks.iter().map(|c| c.records.len()).sum();
    let mut changes = Vec::new();
    match rules.mode {
        Mode::Append => batch.events.reserve_exact(records),
        Mode::Upsert(_) => changes.reserve_exact(records),
    }
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

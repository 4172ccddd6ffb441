//! `streamlab produce`: a paced firehose of mock events, one batching sender per partition.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rskafka::client::partition::{Compression, PartitionClient};
use rskafka::record::Record;
use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::mpsc;

use crate::events::{to_millis, Event, EventKind, Generator};
use crate::kafka::{self, partitioner};
use crate::progress::Progress;
use crate::render::{self, Format};
use crate::shutdown;

/// How long a sender waits for more records before sending a partial batch.
const LINGER: Duration = Duration::from_millis(5);
/// Records queued per partition before the generator waits (backpressure, bounded memory).
const QUEUE_PER_PARTITION: usize = 8192;

#[derive(Debug, Serialize)]
pub struct ProduceSummary {
    pub topic: String,
    pub sent: u64,
    /// Of those, tombstones (`--keys` with `--tombstones`).
    pub tombstones: u64,
    pub per_partition: Vec<u64>,
    pub elapsed_secs: f64,
    pub rate: f64,
}

/// `produce`, settled: what to send, where, how fast, for how long.
pub struct Config {
    pub kafka: kafka::Config,
    /// Serve Prometheus metrics here while running.
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub topic: String,
    pub kind: EventKind,
    /// Events per second, finite and not negative; 0: as fast as possible.
    pub rate: f64,
    pub count: Option<u64>,
    pub duration: Option<Duration>,
    pub seed: Option<u64>,
    /// Keyed updates of this many keys instead of events.
    pub keys: Option<u64>,
    /// With `keys`: the share of records that are tombstones, 0..=1.
    pub tombstones: f64,
    pub compression: Compression,
    pub partitioner: Partitioner,
    pub format: Format,
    /// Largest record batch sent to one partition in one request, in bytes.
    pub batch_bytes: usize,
}

/// How keyed events are spread over partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partitioner {
    /// Apache Kafka's default for keyed records: murmur2(key) % partitions.
    Murmur2,
    /// Evenly, regardless of key.
    RoundRobin,
}

pub async fn run(args: Config) -> Result<()> {
    crate::metrics::serve(args.metrics_addr)?;
    let cancel = shutdown::on_signal();
    let client = kafka::connect(&args.kafka).await?;
    let partitions = kafka::partitions_of(&client, &args.topic).await?;
    let clients = kafka::partition_clients(&client, &args.topic, &partitions).await?;
    let acked: Arc<Vec<AtomicU64>> =
        Arc::new(partitions.iter().map(|_| AtomicU64::new(0)).collect());
    let tombstones = Arc::new(AtomicU64::new(0));
    let (queues, senders) = spawn_senders(clients, &args, &acked, &tombstones);

    let start = Instant::now();
    let mut progress = Progress::new();
    let stopped_sender = generate(&args, &queues, &acked, &cancel, start, &mut progress).await;

    // Closing the queues tells every sender to flush what it holds and stop.
    drop(queues);
    let failure = join_senders(senders).await?;
    progress.finish();

    let elapsed = start.elapsed().as_secs_f64();
    let per_partition: Vec<u64> = acked.iter().map(|a| a.load(Ordering::Relaxed)).collect();
    let sent: u64 = per_partition.iter().sum();
    let summary = ProduceSummary {
        topic: args.topic.clone(),
        sent,
        tombstones: tombstones.load(Ordering::Relaxed),
        per_partition,
        elapsed_secs: elapsed,
        rate: sent as f64 / elapsed.max(1e-9),
    };
    match args.format {
        Format::Json => render::json(&summary)?,
        Format::Table => print_summary(&summary, &partitions)?,
    }
    match failure {
        Some(e) => Err(e.context(format!(
            "stopped after {} acknowledged events",
            summary.sent
        ))),
        None if stopped_sender => anyhow::bail!("a partition sender stopped early"),
        None => Ok(()),
    }
}

type Senders = Vec<tokio::task::JoinHandle<Result<()>>>;

/// One bounded queue and one sender task per partition.
fn spawn_senders(
    clients: Vec<Arc<PartitionClient>>,
    args: &Config,
    acked: &Arc<Vec<AtomicU64>>,
    tombstones: &Arc<AtomicU64>,
) -> (Vec<mpsc::Sender<Record>>, Senders) {
    let mut queues = Vec::with_capacity(clients.len());
    let mut senders = Vec::with_capacity(clients.len());
    for (index, pc) in clients.into_iter().enumerate() {
        let (tx, rx) = mpsc::channel(QUEUE_PER_PARTITION);
        queues.push(tx);
        let acked = Arc::clone(acked);
        let tombstones = Arc::clone(tombstones);
        let compression = args.compression;
        let batch_bytes = args.batch_bytes;
        senders.push(tokio::spawn(async move {
            let acked = (&acked[index], &*tombstones);
            send_partition(pc, rx, compression, batch_bytes, acked).await
        }));
    }
    (queues, senders)
}

/// The first error of any sender, once all have stopped.
async fn join_senders(senders: Senders) -> Result<Option<anyhow::Error>> {
    let mut failure = None;
    for sender in senders {
        if let Err(e) = sender.await.context("a partition sender panicked")? {
            failure = failure.or(Some(e));
        }
    }
    Ok(failure)
}

/// How many events are due by now: event i is due at start + i/rate, so a run is evenly spread
/// instead of a second's worth in one burst (`--rate 0`: the next thousand, at once).
fn due(args: &Config, start: Instant, generated: u64, limit: u64) -> u64 {
    let due = if args.rate == 0.0 {
        generated + 1024
    } else {
        (start.elapsed().as_secs_f64() * args.rate) as u64 + 1
    };
    due.min(limit)
}

/// Generate events into the partitions' queues until the count, the duration or a signal says
/// stop. `true`: a sender stopped taking records (its join reports why).
async fn generate(
    args: &Config,
    queues: &[mpsc::Sender<Record>],
    acked: &[AtomicU64],
    cancel: &tokio_util::sync::CancellationToken,
    start: Instant,
    progress: &mut Progress,
) -> bool {
    let mut generator = Generator::new(args.kind, args.seed);
    let mut generated: u64 = 0;
    let mut round_robin = 0usize;
    let limit = args.count.unwrap_or(u64::MAX);
    loop {
        if cancel.is_cancelled() || generated >= limit {
            return false;
        }
        if args.duration.is_some_and(|d| start.elapsed() >= d) {
            return false;
        }
        let due = due(args, start, generated, limit);
        if generated >= due {
            let next_at = start + Duration::from_secs_f64(generated as f64 / args.rate);
            let next_at = match args.duration {
                Some(d) => next_at.min(start + d),
                None => next_at,
            };
            tokio::select! {
                _ = tokio::time::sleep_until(next_at.into()) => {}
                _ = cancel.cancelled() => {}
            }
            continue;
        }
        while generated < due {
            let record = next_record(args, &mut generator);
            let key = record.key.as_deref().unwrap_or_default();
            let index = match args.partitioner {
                Partitioner::Murmur2 => partitioner::partition_for_key(key, queues.len()),
                Partitioner::RoundRobin => {
                    round_robin = (round_robin + 1) % queues.len();
                    round_robin
                }
            };
            if queues[index].send(record).await.is_err() {
                return true;
            }
            generated += 1;
        }
        progress.update(|| {
            let sent: u64 = acked.iter().map(|a| a.load(Ordering::Relaxed)).sum();
            let secs = start.elapsed().as_secs_f64().max(1e-9);
            format!(
                "sent {sent} · {:.0} events/s · queued {}",
                sent as f64 / secs,
                generated - sent
            )
        });
    }
}

/// The next record: an event keyed by its store or sensor, or with `--keys` an update of one of
/// the keys (a tombstone, no value, at the `--tombstones` rate).
fn next_record(args: &Config, generator: &mut Generator) -> Record {
    let now = OffsetDateTime::now_utc();
    let (key, event) = match args.keys {
        Some(keys) => generator.next_update(keys, args.tombstones, now),
        None => {
            let event = generator.next_event(now);
            (event.key().to_string(), Some(event))
        }
    };
    let value = event.as_ref().map(Event::to_json);
    let at = event.map_or_else(|| to_millis(now), |e| e.ts());
    kafka::produce::record(Some(key.into_bytes()), value, at)
}

fn print_summary(summary: &ProduceSummary, partitions: &[i32]) -> Result<()> {
    let tombstones = match summary.tombstones {
        0 => String::new(),
        n => format!(", {n} of them tombstones"),
    };
    render::note(format!(
        "produced {} events to '{}' in {:.2}s ({:.1} events/s){tombstones}",
        summary.sent, summary.topic, summary.elapsed_secs, summary.rate
    ))?;
    for (p, n) in partitions.iter().zip(&summary.per_partition) {
        render::note(format!("  partition {p}: {n}"))?;
    }
    Ok(())
}

/// Batch records for one partition: send as soon as a batch is full or has lingered briefly.
/// Counts a record only once the broker has acknowledged it.
async fn send_partition(
    client: Arc<PartitionClient>,
    mut queue: mpsc::Receiver<Record>,
    compression: Compression,
    batch_bytes: usize,
    (acked, tombstones): (&AtomicU64, &AtomicU64),
) -> Result<()> {
    let mut batch: Vec<Record> = Vec::new();
    while let Some(first) = queue.recv().await {
        let mut size = first.approximate_size();
        batch.push(first);
        let linger_until = tokio::time::Instant::now() + LINGER;
        while size < batch_bytes {
            let record = match queue.try_recv() {
                Ok(r) => Some(r),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
                Err(mpsc::error::TryRecvError::Empty) => {
                    // Err: the linger elapsed; Ok(None): the queue closed.
                    tokio::time::timeout_at(linger_until, queue.recv())
                        .await
                        .ok()
                        .flatten()
                }
            };
            match record {
                Some(r) => {
                    size += r.approximate_size();
                    batch.push(r);
                }
                None => break,
            }
        }
        let n = batch.len() as u64;
        let deletions = batch.iter().filter(|r| r.value.is_none()).count() as u64;
        // rskafka retries transient failures with our bounded backoff (`--timeout`).
        let labels = [
            ("topic", client.topic().to_string()),
            ("partition", client.partition().to_string()),
        ];
        if let Err(e) = client
            .produce(std::mem::take(&mut batch), compression)
            .await
        {
            metrics::counter!(crate::metrics::PRODUCE_ERRORS, &labels).increment(1);
            return Err(anyhow::Error::new(e).context(format!(
                "producing to {}/{}",
                client.topic(),
                client.partition()
            )));
        }
        acked.fetch_add(n, Ordering::Relaxed);
        tombstones.fetch_add(deletions, Ordering::Relaxed);
        metrics::counter!(crate::metrics::PRODUCED, &labels).increment(n);
    }
    Ok(())
}

//! `bench --cost PATH`: one hot path of the pipeline without broker or database, for callgrind.
//!
//! Why: `bench`'s rates swing by 2× between runs on our shared machines; the instructions a path
//! executes per event do not. `scripts/cost` runs this under `valgrind --tool=callgrind`,
//! collecting only inside [`consume_pass`] or [`produce_pass`] (`--toggle-collect`), so building
//! the input is not counted, at two sizes, and reports the difference per event (which also
//! removes what a pass spends once).
//!
//! Each pass calls what the binary runs, in the shape it runs it:
//! - consume: a Fetch answer's bytes decoded as the connection decodes them, its record batch
//!   read by [`kafka::records::read_partition`], the records made into batches of
//!   [`DEFAULT_BATCH_SIZE`] by consume's own [`build_batch`] (each value decoded and validated
//!   into a [`Landed`], offsets advanced), and every batch encoded into the binary COPY stream
//!   consume sends ([`db::copy_streams`]);
//! - produce: [`Generator::next_event`], its key and [`Event::to_json`], and the records
//!   encoded as a v2 record batch. rskafka's own batch encoder is private to it, so
//!   kafka-protocol's encoder (the same format, CRC-32C included) stands in for it.

use std::collections::BTreeMap;
use std::hint::black_box;

use anyhow::{bail, Context, Result};
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchResponse, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions};
use time::{Duration, OffsetDateTime};

use crate::cmd::consume::{build_batch, BatchRules, Fetched, DEFAULT_BATCH_SIZE};
use crate::db::{self, Landed};
use crate::events::{Event, EventKind, Generator};
use crate::kafka;

/// Records per record batch: one batch per fetch answer.
const RECORDS_PER_BATCH: usize = 1000;
/// The Fetch version answers are encoded and decoded at (the highest consume asks for).
const FETCH_VERSION: i16 = 11;
/// consume's default `--max-event-bytes`.
const MAX_EVENT_BYTES: usize = 64 * 1024;
const SEED: u64 = 30;
const TOPIC: &str = "cost";

/// Run `path` over `events` events and print what it produced (bytes), so nothing is optimised
/// away and a change of output shows.
pub fn run(path: &str, events: u64) -> Result<()> {
    let n = usize::try_from(events).context("--events is too large")?;
    let (direction, kind) = path
        .split_once('-')
        .context("a cost path is DIRECTION-KIND")?;
    let kind = match kind {
        "sales" => EventKind::Sales,
        "sensor" => EventKind::Sensor,
        other => bail!("unknown event kind '{other}' in cost path '{path}'"),
    };
    let bytes = match direction {
        "consume" => consume_pass(kind, fetch_answers(kind, n)?)?,
        "produce" => produce_pass(kind, n)?,
        other => bail!("unknown direction '{other}' in cost path '{path}'"),
    };
    println!("{path}: {n} events, {bytes} bytes");
    Ok(())
}

/// The events of a run: seeded, one millisecond apart from a fixed instant (so every run of a
/// size handles the same bytes).
fn event_at(generator: &mut Generator, i: usize) -> Event {
    let start = OffsetDateTime::from_unix_timestamp(1_790_000_000).expect("a valid instant");
    generator.next_event(start + Duration::milliseconds(i as i64))
}

/// A record as produce sends it: keyed by the event's store or sensor, stamped with its `ts`.
fn record(event: &Event, batch_start: i64, offset: i64) -> Record {
    kafka::records::plain_record(
        batch_start,
        offset,
        (event.ts().unix_timestamp_nanos() / 1_000_000) as i64,
        Some(Bytes::from(event.key().to_string())),
        Some(Bytes::from(event.to_json())),
    )
}

fn encode_batch(records: &[Record], out: &mut BytesMut) -> Result<()> {
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(out, records.iter(), &options).context("encoding a record batch")
}

/// `n` events of `kind` as the Fetch answers a broker sends consume: one batch each.
fn fetch_answers(kind: EventKind, n: usize) -> Result<Vec<Bytes>> {
    let mut generator = Generator::new(kind, Some(SEED));
    let mut answers = Vec::new();
    let mut first = 0;
    while first < n {
        let last = (first + RECORDS_PER_BATCH).min(n);
        let records: Vec<Record> = (first..last)
            .map(|i| record(&event_at(&mut generator, i), first as i64, i as i64))
            .collect();
        let mut batch = BytesMut::new();
        encode_batch(&records, &mut batch)?;
        let partition = PartitionData::default()
            .with_high_watermark(n as i64)
            .with_last_stable_offset(n as i64)
            .with_log_start_offset(0)
            .with_records(Some(batch.freeze()));
        let topic = FetchableTopicResponse::default()
            .with_topic(TopicName(StrBytes::from_static_str(TOPIC)))
            .with_partitions(vec![partition]);
        let mut answer = BytesMut::new();
        FetchResponse::default()
            .with_responses(vec![topic])
            .encode(&mut answer, FETCH_VERSION)
            .context("encoding a fetch answer")?;
        answers.push(answer.freeze());
        first = last;
    }
    Ok(answers)
}

/// Counted: the answers decoded, read, their records made into consume's batches (each value
/// decoded and validated, offsets advanced) and every batch COPY-encoded. Returns the bytes of
/// COPY stream.
#[inline(never)]
fn consume_pass(kind: EventKind, answers: Vec<Bytes>) -> Result<u64> {
    let batch_size = DEFAULT_BATCH_SIZE as usize;
    let rules = BatchRules::append(kind, MAX_EVENT_BYTES);
    let (mut offset, mut copied) = (0, 0);
    let mut committed = BTreeMap::from([(0, None)]);
    let (mut chunks, mut pending) = (Vec::new(), 0);
    let mut write = |chunks: &mut Vec<Fetched>, committed: &mut BTreeMap<i32, Option<i64>>| {
        let batch = build_batch(&rules, chunks, committed);
        if let Some(bad) = batch.dead_letters.first() {
            bail!("offset {}: {}", bad.offset, bad.error);
        }
        committed.extend(batch.offsets.iter().map(|a| (a.partition, Some(a.to))));
        copied += copy_bytes(&batch.events);
        chunks.clear();
        Ok(())
    };
    for mut answer in answers {
        let response = FetchResponse::decode(&mut answer, FETCH_VERSION)?;
        let data = response
            .responses
            .into_iter()
            .flat_map(|t| t.partitions)
            .next()
            .context("an answer without its partition")?;
        let fetch = kafka::records::read_partition(data, offset);
        offset = fetch.next_offset;
        pending += fetch.records.len();
        chunks.push(Fetched::records(0, fetch.records, offset));
        if pending >= batch_size {
            write(&mut chunks, &mut committed)?;
            pending = 0;
        }
    }
    write(&mut chunks, &mut committed)?;
    Ok(copied)
}

fn copy_bytes(events: &[Landed]) -> u64 {
    db::copy_streams(black_box(events))
        .iter()
        .flatten()
        .map(|data| data.len() as u64)
        .sum()
}

/// Counted: `n` events generated, keyed and JSON-encoded, as records encoded in batches.
/// Returns the bytes of record batch.
#[inline(never)]
fn produce_pass(kind: EventKind, n: usize) -> Result<u64> {
    let mut generator = Generator::new(kind, Some(SEED));
    let mut records = Vec::with_capacity(RECORDS_PER_BATCH);
    let mut out = BytesMut::new();
    let mut encoded = 0;
    for i in 0..n {
        records.push(record(
            &event_at(&mut generator, i),
            0,
            records.len() as i64,
        ));
        if records.len() == RECORDS_PER_BATCH || i + 1 == n {
            encode_batch(&records, &mut out)?;
            encoded += black_box(&out).len() as u64;
            out.clear();
            records.clear();
        }
    }
    Ok(encoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_consume_pass_reads_every_event_into_copy_batches_of_the_default_size() {
        let n = DEFAULT_BATCH_SIZE as usize + 1001;
        for kind in EventKind::ALL {
            let in_batches = consume_pass(kind, fetch_answers(kind, n).unwrap()).unwrap();
            // The same events as one COPY stream: one header and trailer (19 + 2 bytes) fewer.
            let mut generator = Generator::new(kind, Some(SEED));
            let all: Vec<Landed> = (0..n)
                .map(|i| Landed {
                    event: event_at(&mut generator, i),
                    partition: 0,
                    offset: i as i64,
                    key: None,
                    value: Bytes::new(),
                })
                .collect();
            assert_eq!(in_batches, copy_bytes(&all) + 21, "{kind:?}");
        }
    }

    /// The passes count what a real fetch carries: batches of many records (a batch per
    /// record would count per-batch work — checksum, header, allocation — a thousand times).
    #[test]
    fn each_fetch_answer_holds_one_batch_of_its_records() {
        use kafka_protocol::records::RecordBatchDecoder;
        let n = RECORDS_PER_BATCH * 2 + 7;
        let answers = fetch_answers(EventKind::Sales, n).unwrap();
        let mut counts = Vec::new();
        for mut answer in answers {
            let response = FetchResponse::decode(&mut answer, FETCH_VERSION).unwrap();
            let partition = &response.responses[0].partitions[0];
            let mut records = partition.records.clone().unwrap();
            let batches = RecordBatchDecoder::decode_batch_info(&mut records).unwrap();
            counts.push(batches.iter().map(|b| b.record_count).collect::<Vec<_>>());
        }
        let full = RECORDS_PER_BATCH as i32;
        assert_eq!(counts, vec![vec![full], vec![full], vec![7]]);
    }

    #[test]
    fn a_path_is_a_direction_and_a_kind() {
        assert!(run("consume-sales", 3).is_ok());
        assert!(run("produce-sensor", 3).is_ok());
        assert_eq!(
            run("consume-orders", 3).unwrap_err().to_string(),
            "unknown event kind 'orders' in cost path 'consume-orders'"
        );
        assert_eq!(
            run("import-sales", 3).unwrap_err().to_string(),
            "unknown direction 'import' in cost path 'import-sales'"
        );
    }
}

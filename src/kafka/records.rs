//! Record batches as a `read_committed` consumer reads them: one partition's fetch answer in,
//! records out, no I/O. Each record batch is checked before it is decoded:
//!
//! - a record count, header count or length larger than the bytes that carry it is refused
//!   before anything is allocated (kafka-protocol sizes its vectors from those counts);
//! - a batch that fails its CRC or cannot be decoded becomes a [`CorruptBatch`] naming its
//!   offset range, which the consumer either stops at or dead-letters (`--skip-corrupt-batches`);
//! - batches of aborted transactions and control batches are stepped over, and the position
//!   moves past them ([`Fetch::next_offset`]).

use std::collections::HashSet;

use bytes::{Buf, Bytes};
use kafka_protocol::compression::{Decompressor, Gzip, Lz4, Snappy, Zstd};
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::records::{Compression, Record, RecordBatchDecoder, TimestampType};

use super::bounds::Malformed;

/// The fixed part of a v2 record batch, from its base offset to its record count.
const BATCH_HEADER: usize = 61;
/// Bytes before `batch_length` counts: base offset (8) and the length itself (4).
const LOG_OVERHEAD: usize = 12;

/// A record as the consumer sees it.
#[derive(Debug, Clone)]
pub struct FetchedRecord {
    pub offset: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    /// Milliseconds since the epoch (the producer's or the broker's, per the topic's setting).
    pub timestamp: i64,
}

/// What one fetch of one partition yielded.
#[derive(Debug, Clone, Default)]
pub struct Fetch {
    /// The committed records at or after the requested offset, in order.
    pub records: Vec<FetchedRecord>,
    /// Where the next fetch starts: past every batch this response held, including control
    /// batches and aborted transactions (so it can be ahead of the last record + 1).
    pub next_offset: i64,
    pub high_watermark: i64,
    /// The end a `read_committed` reader can reach: the last stable offset where the broker
    /// reports one, else the high watermark.
    pub stable_end: i64,
    /// The first offset still in the log, where the broker reports it (-1 otherwise).
    pub log_start_offset: i64,
    /// A batch that could not be read, with the offsets it covers; `records` holds what came
    /// before it.
    pub corrupt: Option<CorruptBatch>,
    /// Bytes of the record batches read, as stored (compressed): what the log holds.
    pub batch_bytes: u64,
    /// The first offset at or after the requested one that the log still holds (any batch,
    /// control batches included); `None` when the answer held no batch. Above the requested
    /// offset, the records in between are gone: removed by retention on a broker that does
    /// not move its log start (tansu), or by compaction.
    pub first_offset: Option<i64>,
}

impl Fetch {
    /// Offsets from the requested one up to the first the log still holds: records that were
    /// removed, though the broker's log start (or the lack of an OFFSET_OUT_OF_RANGE) did not
    /// say so. An answer holding nothing below the stable end means all of them are gone.
    ///
    /// The broker behaviour this answers: tansu 0.6's SQLite engine deletes records by
    /// retention without moving its log start, and a fetch there skips to the first record left
    /// (or answers nothing below the high watermark). Apache Kafka answers such a fetch
    /// OFFSET_OUT_OF_RANGE instead, and otherwise returns the batch that holds the requested
    /// offset (always at least one), so on Kafka this is `None` except where compaction removed
    /// records — which are not there to be read either. Unless the broker itself reported a log
    /// start past the request ([`Fetch::gap_reported`]), the consumer believes a gap only when it
    /// lasts (`consume/fetcher.rs`, `GAP_CONFIRM`): tansu's in-memory engine shows one for a
    /// moment while it appends.
    pub fn removed_before(&self, requested: i64) -> Option<std::ops::Range<i64>> {
        let first = match self.first_offset {
            Some(first) => first,
            None if self.corrupt.is_none() && requested < self.stable_end => self.stable_end,
            None => return None,
        };
        (first > requested).then_some(requested..first)
    }
}

impl Fetch {
    /// Whether the broker itself says the records before the first it returned are gone: it
    /// reports a log start past `requested`. The only gap believed at once.
    pub fn gap_reported(&self, requested: i64) -> bool {
        self.log_start_offset > requested
    }
}

/// A record batch that failed its checks: which offsets it covers, why, and its raw bytes.
#[derive(Debug, Clone)]
pub struct CorruptBatch {
    pub first_offset: i64,
    pub last_offset: i64,
    pub reason: Malformed,
    pub raw: Bytes,
}

impl std::fmt::Display for CorruptBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "record batch at offsets {}..={} is unreadable: {}",
            self.first_offset, self.last_offset, self.reason
        )
    }
}

/// Turn one partition's fetch answer into records, as a `read_committed` consumer sees them.
///
/// Records of aborted transactions are dropped (Kafka's algorithm: a producer listed in the
/// answer's aborted transactions is skipped from that transaction's first offset until its
/// ABORT marker), control batches are stepped over, and records before `from` (a batch is
/// returned whole) are left out. A batch that fails its checks ends the reading; what came
/// before it is kept.
pub fn read_partition(data: PartitionData, from: i64) -> Fetch {
    let mut out = Fetch {
        next_offset: from,
        high_watermark: data.high_watermark,
        stable_end: if data.last_stable_offset >= 0 {
            data.last_stable_offset.min(data.high_watermark)
        } else {
            data.high_watermark
        },
        log_start_offset: data.log_start_offset,
        ..Fetch::default()
    };
    let mut aborted: Vec<(i64, i64)> = data
        .aborted_transactions
        .unwrap_or_default()
        .iter()
        .map(|a| (a.first_offset, a.producer_id.0))
        .collect();
    aborted.sort_unstable();
    let mut pending_aborts = aborted.into_iter().peekable();
    let mut aborting: HashSet<i64> = HashSet::new();

    let mut buf = data.records.unwrap_or_default();
    while buf.remaining() >= LOG_OVERHEAD {
        let header = match BatchHeader::peek(&buf) {
            Ok(Some(h)) => h,
            // A batch cut short by the size limit: the next fetch starts there.
            Ok(None) => break,
            Err(reason) => {
                let at = peek_i64(&buf, 0).max(from);
                out.first_offset.get_or_insert(at);
                out.corrupt = Some(CorruptBatch {
                    first_offset: at,
                    last_offset: at,
                    reason,
                    raw: buf.clone(),
                });
                break;
            }
        };
        let raw = buf.split_to(header.total_len);
        out.batch_bytes += header.total_len as u64;
        if header.last_offset < from {
            continue;
        }
        out.first_offset.get_or_insert(header.base_offset.max(from));
        while let Some(&(first, producer)) = pending_aborts.peek() {
            if first > header.last_offset {
                break;
            }
            aborting.insert(producer);
            pending_aborts.next();
        }
        let keep = if header.control {
            if header.transactional && is_abort_marker(&header, &raw) {
                aborting.remove(&header.producer_id);
            }
            false
        } else {
            !(header.transactional && aborting.contains(&header.producer_id))
        };
        if keep {
            match decode_batch(&header, raw.clone(), from) {
                // The first batch's records are moved, not copied.
                Ok(records) if out.records.is_empty() => out.records = records,
                Ok(records) => out.records.extend(records),
                Err(reason) => {
                    out.corrupt = Some(CorruptBatch {
                        first_offset: header.base_offset.max(from),
                        last_offset: header.last_offset,
                        reason,
                        raw,
                    });
                    break;
                }
            }
        }
        out.next_offset = out.next_offset.max(header.last_offset + 1);
    }
    out
}

/// The fields of a v2 record batch header that decide what to do with it.
#[derive(Debug)]
struct BatchHeader {
    base_offset: i64,
    last_offset: i64,
    total_len: usize,
    compressed: bool,
    transactional: bool,
    control: bool,
    producer_id: i64,
    record_count: i32,
}

impl BatchHeader {
    /// `Ok(None)`: the batch is not all there (cut by the fetch size limit).
    fn peek(buf: &Bytes) -> Result<Option<Self>, Malformed> {
        let batch_length = peek_i32(buf, 8);
        let total_len = usize::try_from(batch_length)
            .ok()
            .filter(|&l| l + LOG_OVERHEAD >= BATCH_HEADER)
            .map(|l| l + LOG_OVERHEAD)
            .ok_or_else(|| Malformed(format!("impossible batch length {batch_length}")))?;
        if buf.len() < total_len {
            return Ok(None);
        }
        let magic = buf[16] as i8;
        if magic != 2 {
            return Err(Malformed(format!(
                "message format v{magic} (only v2 record batches are read)"
            )));
        }
        let attributes = peek_i16(buf, 21);
        let base_offset = peek_i64(buf, 0);
        let last_offset_delta = peek_i32(buf, 23);
        let record_count = peek_i32(buf, 57);
        if last_offset_delta < 0 || record_count < 0 {
            return Err(Malformed(format!(
                "negative record count {record_count} or offset delta {last_offset_delta}"
            )));
        }
        Ok(Some(Self {
            base_offset,
            last_offset: base_offset + i64::from(last_offset_delta),
            total_len,
            compressed: attributes & 0x7 != 0,
            transactional: attributes & (1 << 4) != 0,
            control: attributes & (1 << 5) != 0,
            producer_id: peek_i64(buf, 43),
            record_count,
        }))
    }
}

fn peek_i64(buf: &[u8], at: usize) -> i64 {
    buf.get(at..at + 8)
        .map_or(-1, |b| i64::from_be_bytes(b.try_into().expect("8 bytes")))
}

fn peek_i32(buf: &[u8], at: usize) -> i32 {
    buf.get(at..at + 4)
        .map_or(-1, |b| i32::from_be_bytes(b.try_into().expect("4 bytes")))
}

fn peek_i16(buf: &[u8], at: usize) -> i16 {
    buf.get(at..at + 2)
        .map_or(0, |b| i16::from_be_bytes(b.try_into().expect("2 bytes")))
}

/// A control batch's record key is (version i16, type i16); type 0 is ABORT, 1 is COMMIT.
fn is_abort_marker(header: &BatchHeader, raw: &Bytes) -> bool {
    decode_batch(header, raw.clone(), i64::MIN).is_ok_and(|records| {
        records.first().is_some_and(|r| {
            r.key
                .as_ref()
                .is_some_and(|k| k.len() >= 4 && i16::from_be_bytes([k[2], k[3]]) == 0)
        })
    })
}

/// Decode one batch's records at or after `from`, after checking every count in it against
/// the bytes that carry it (kafka-protocol allocates from those counts).
fn decode_batch(
    header: &BatchHeader,
    mut raw: Bytes,
    from: i64,
) -> Result<Vec<FetchedRecord>, Malformed> {
    let count = header.record_count;
    if !header.compressed {
        check_records(&raw[BATCH_HEADER..], count)?;
    }
    // kafka-protocol calls this for every batch, compressed or not: only a decompressed body
    // is checked here (a plain one was, above).
    let decompress = |body: &mut Bytes, compression: Compression| -> anyhow::Result<Bytes> {
        let plain = match compression {
            Compression::None => body.clone(),
            Compression::Gzip => Gzip::decompress(body, |b: &mut Bytes| Ok(b.clone()))?,
            Compression::Snappy => Snappy::decompress(body, |b: &mut Bytes| Ok(b.clone()))?,
            Compression::Lz4 => Lz4::decompress(body, |b: &mut Bytes| Ok(b.clone()))?,
            Compression::Zstd => Zstd::decompress(body, |b: &mut Bytes| Ok(b.clone()))?,
        };
        if compression != Compression::None {
            check_records(&plain, count)?;
        }
        Ok(plain)
    };
    let set = RecordBatchDecoder::decode_with_custom_compression(&mut raw, Some(decompress))
        .map_err(|e| Malformed(format!("{e:#}")))?;
    Ok(set
        .records
        .into_iter()
        .filter(|r| r.offset >= from)
        .map(|r| FetchedRecord {
            offset: r.offset,
            key: r.key,
            value: r.value,
            timestamp: r.timestamp,
        })
        .collect())
}

/// Walk `count` v2 records in `buf` and refuse any length or count larger than what is left.
fn check_records(mut buf: &[u8], count: i32) -> Result<(), Malformed> {
    // The smallest record: length, attributes, timestamp and offset deltas, key and value
    // lengths, header count — a byte each.
    if usize::try_from(count).unwrap_or(usize::MAX) > buf.len() / 7 + 1 {
        return Err(Malformed(format!(
            "the batch announces {count} records in {} bytes",
            buf.len()
        )));
    }
    for _ in 0..count {
        let len = varint(&mut buf)?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= buf.len())
            .ok_or_else(|| {
                Malformed(format!(
                    "a record announces {len} bytes, {} are left",
                    buf.len()
                ))
            })?;
        let (mut record, rest) = buf.split_at(len);
        buf = rest;
        record = record
            .get(1..)
            .ok_or_else(|| Malformed("an empty record".into()))?; // attributes
        varint(&mut record)?; // timestamp delta
        varint(&mut record)?; // offset delta
        skip_bytes(&mut record, "key")?;
        skip_bytes(&mut record, "value")?;
        let headers = varint(&mut record)?;
        if headers < 0 || headers as u64 > record.len() as u64 {
            return Err(Malformed(format!(
                "a record announces {headers} headers in {} bytes",
                record.len()
            )));
        }
    }
    Ok(())
}

fn skip_bytes(buf: &mut &[u8], what: &str) -> Result<(), Malformed> {
    let len = varint(buf)?;
    if len < -1 || len > buf.len() as i64 {
        return Err(Malformed(format!(
            "a record {what} announces {len} bytes, {} are left",
            buf.len()
        )));
    }
    *buf = &buf[usize::try_from(len.max(0)).expect("checked")..];
    Ok(())
}

/// A zig-zag varint (Kafka's varint and varlong).
fn varint(buf: &mut &[u8]) -> Result<i64, Malformed> {
    // One byte: most of a record's varints (deltas, key length, header count).
    if let Some((&byte, rest)) = buf.split_first().filter(|(b, _)| **b & 0x80 == 0) {
        *buf = rest;
        return Ok(i64::from(byte >> 1) ^ -i64::from(byte & 1));
    }
    let mut value: u64 = 0;
    for shift in (0..70).step_by(7) {
        let (&byte, rest) = buf
            .split_first()
            .ok_or_else(|| Malformed("a record ends inside a varint".into()))?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift.min(63);
        if byte & 0x80 == 0 {
            return Ok((value >> 1) as i64 ^ -((value & 1) as i64));
        }
    }
    Err(Malformed("a varint longer than 10 bytes".into()))
}

/// A plain record — no transaction, no headers, stamped at creation — as a producer without
/// idempotence writes it, in a batch whose first record is at `batch_start`: what `bench --cost`
/// and the tests encode into record batches.
///
/// kafka-protocol's encoder puts consecutive records in one batch only while offset − sequence
/// stays the same; a producer without idempotence has no sequence (the batch says -1), so the
/// sequence counts from -1 at the batch's first record. A constant -1 would encode one batch
/// per record.
pub fn plain_record(
    batch_start: i64,
    offset: i64,
    timestamp: i64,
    key: Option<Bytes>,
    value: Option<Bytes>,
) -> Record {
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: 0,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset,
        sequence: (offset - batch_start - 1) as i32,
        timestamp,
        key,
        value,
        headers: Default::default(),
    }
}

#[cfg(test)]
mod tests;

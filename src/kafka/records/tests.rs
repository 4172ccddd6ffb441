//! Hand-built fetch answers: what a `read_committed` reader keeps, skips and refuses.
//! (The local broker cannot abort a transaction, so this is where aborted and control batches
//! are proven.)

use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::fetch_response::{AbortedTransaction, PartitionData};
use kafka_protocol::messages::ProducerId;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use super::*;

const PLAIN: i64 = -1;

/// One record batch: records `first..first+count` of `producer` (PLAIN: not transactional).
fn batch(first: i64, count: i64, producer: i64, compression: Compression) -> Bytes {
    let records: Vec<Record> = (first..first + count)
        .map(|offset| Record {
            transactional: producer != PLAIN,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: producer,
            producer_epoch: if producer == PLAIN { -1 } else { 0 },
            timestamp_type: TimestampType::Creation,
            offset,
            sequence: offset as i32,
            timestamp: 1_700_000_000_000 + offset,
            key: Some(Bytes::from(format!("k{offset}"))),
            value: Some(Bytes::from(format!("{{\"n\":{offset}}}"))),
            headers: IndexMap::new(),
        })
        .collect();
    encode(&records, compression)
}

/// A transaction marker of `producer` at `offset`: ABORT or COMMIT.
fn marker(offset: i64, producer: i64, commit: bool) -> Bytes {
    let record = Record {
        transactional: true,
        control: true,
        delete_horizon: false,
        partition_leader_epoch: 0,
        producer_id: producer,
        producer_epoch: 0,
        timestamp_type: TimestampType::Creation,
        offset,
        sequence: -1,
        timestamp: 1_700_000_000_000,
        key: Some(Bytes::from(vec![0, 0, 0, u8::from(commit)])),
        value: Some(Bytes::from(vec![0, 0, 0, 0, 0, 0])),
        headers: IndexMap::new(),
    };
    encode(&[record], Compression::None)
}

fn encode(records: &[Record], compression: Compression) -> Bytes {
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression,
    };
    RecordBatchEncoder::encode(&mut buf, records.iter(), &options).unwrap();
    buf.freeze()
}

fn answer(batches: &[Bytes], aborted: &[(i64, i64)], hw: i64, lso: i64) -> PartitionData {
    let mut records = BytesMut::new();
    for b in batches {
        records.extend_from_slice(b);
    }
    PartitionData::default()
        .with_high_watermark(hw)
        .with_last_stable_offset(lso)
        .with_log_start_offset(0)
        .with_aborted_transactions(Some(
            aborted
                .iter()
                .map(|&(producer, first)| {
                    AbortedTransaction::default()
                        .with_producer_id(ProducerId(producer))
                        .with_first_offset(first)
                })
                .collect(),
        ))
        .with_records(Some(records.freeze()))
}

fn offsets(fetch: &Fetch) -> Vec<i64> {
    fetch.records.iter().map(|r| r.offset).collect()
}

#[test]
fn plain_batches_are_read_from_the_requested_offset() {
    let data = answer(
        &[
            batch(0, 5, PLAIN, Compression::None),
            batch(5, 3, PLAIN, Compression::Lz4),
        ],
        &[],
        8,
        8,
    );
    let fetch = read_partition(data, 3);
    assert_eq!(offsets(&fetch), vec![3, 4, 5, 6, 7]);
    assert_eq!(fetch.next_offset, 8);
    assert_eq!(fetch.stable_end, 8);
    assert_eq!(
        fetch.records[0].value.as_deref(),
        Some(&b"{\"n\":3}"[..]),
        "values come through byte for byte"
    );
    assert!(fetch.corrupt.is_none());
}

#[test]
fn records_the_broker_deleted_without_moving_its_log_start_show_as_removed() {
    // Asked for 10, the log holds 40.. (tansu after retention): 10..40 are gone.
    let fetch = read_partition(
        answer(&[batch(40, 5, PLAIN, Compression::None)], &[], 45, 45),
        10,
    );
    assert_eq!(fetch.first_offset, Some(40));
    assert_eq!(fetch.removed_before(10), Some(10..40));
    assert_eq!(offsets(&fetch), vec![40, 41, 42, 43, 44]);
    // Nothing at all below the stable end: everything up to it is gone.
    let empty = read_partition(answer(&[], &[], 45, 45), 10);
    assert_eq!(empty.removed_before(10), Some(10..45));
    // At the end, or from inside the first batch, nothing was removed.
    assert_eq!(
        read_partition(answer(&[], &[], 45, 45), 45).removed_before(45),
        None
    );
    let inside = read_partition(
        answer(&[batch(40, 5, PLAIN, Compression::None)], &[], 45, 45),
        42,
    );
    assert_eq!(inside.removed_before(42), None);
    // A control batch first is still a batch the log holds.
    let control = read_partition(answer(&[marker(10, 7, true)], &[], 11, 11), 10);
    assert_eq!(control.removed_before(10), None);
}

#[test]
fn aborted_transactions_are_dropped_and_committed_ones_kept() {
    // Producer 7's transaction (offsets 0..=2) is aborted at 5; producer 8's (3..=4) commits
    // at 6; 7..=8 are plain; producer 7 aborts again (9..=10, marker 11) after a committed
    // run of its own (12..=13, marker 14).
    let data = answer(
        &[
            batch(0, 3, 7, Compression::None),
            batch(3, 2, 8, Compression::Gzip),
            marker(5, 7, false),
            marker(6, 8, true),
            batch(7, 2, PLAIN, Compression::None),
            batch(9, 2, 7, Compression::Snappy),
            marker(11, 7, false),
            batch(12, 2, 7, Compression::Zstd),
            marker(14, 7, true),
        ],
        &[(7, 0), (7, 9)],
        15,
        15,
    );
    let fetch = read_partition(data, 0);
    assert_eq!(offsets(&fetch), vec![3, 4, 7, 8, 12, 13]);
    assert_eq!(fetch.next_offset, 15, "past the last marker");
}

#[test]
fn a_response_of_control_batches_only_moves_the_position_on() {
    let data = answer(&[marker(20, 9, true), marker(21, 10, false)], &[], 22, 22);
    let fetch = read_partition(data, 20);
    assert!(fetch.records.is_empty());
    assert_eq!(fetch.next_offset, 22, "no tight re-fetch at 20");
}

#[test]
fn the_stable_end_stops_at_an_open_transaction() {
    let data = answer(&[batch(0, 4, PLAIN, Compression::None)], &[], 10, 4);
    let fetch = read_partition(data, 0);
    assert_eq!(fetch.stable_end, 4);
    assert_eq!(fetch.high_watermark, 10);
    // A broker that reports no stable offset: the high watermark.
    let data = answer(&[batch(0, 4, PLAIN, Compression::None)], &[], 4, -1);
    assert_eq!(read_partition(data, 0).stable_end, 4);
}

#[test]
fn a_batch_cut_by_the_size_limit_is_left_for_the_next_fetch() {
    let whole = batch(0, 2, PLAIN, Compression::None);
    let next = batch(2, 2, PLAIN, Compression::None);
    let cut = next.slice(..next.len() - 5);
    let fetch = read_partition(answer(&[whole, cut], &[], 4, 4), 0);
    assert_eq!(offsets(&fetch), vec![0, 1]);
    assert_eq!(fetch.next_offset, 2);
    assert!(fetch.corrupt.is_none());
}

#[test]
fn a_crc_mismatch_names_the_batch_and_keeps_what_came_before() {
    let good = batch(0, 2, PLAIN, Compression::None);
    let mut bad = BytesMut::from(&batch(2, 3, PLAIN, Compression::None)[..]);
    let at = bad.len() - 2;
    bad[at] ^= 0xff; // the last byte of the last record's value
    let fetch = read_partition(answer(&[good, bad.freeze()], &[], 5, 5), 0);
    assert_eq!(offsets(&fetch), vec![0, 1]);
    assert_eq!(fetch.next_offset, 2);
    let corrupt = fetch.corrupt.expect("the bad batch is reported");
    assert_eq!((corrupt.first_offset, corrupt.last_offset), (2, 4));
    assert!(
        corrupt.reason.to_string().contains("Cyclic redundancy"),
        "{corrupt}"
    );
}

#[test]
fn hostile_counts_are_refused_before_anything_is_allocated() {
    // The record count field (bytes 57..61) claims i32::MAX records.
    let mut hostile = BytesMut::from(&batch(0, 1, PLAIN, Compression::None)[..]);
    hostile[57..61].copy_from_slice(&i32::MAX.to_be_bytes());
    let fetch = read_partition(answer(&[hostile.freeze()], &[], 1, 1), 0);
    let corrupt = fetch.corrupt.expect("refused");
    assert!(
        corrupt.reason.to_string().contains("2147483647 records"),
        "{corrupt}"
    );

    // A record that announces 2^31 headers.
    let mut record = vec![];
    record.extend_from_slice(&[0, 0, 0, 2, b'k', 0]); // attrs, ts, offset, key "k", value len 0
    record.extend_from_slice(&[0xfe, 0xff, 0xff, 0xff, 0x0f]); // zig-zag i32::MAX headers
    let mut buf = vec![(record.len() as u8) << 1];
    buf.extend_from_slice(&record);
    let err = check_records(&buf, 1).unwrap_err();
    assert!(err.to_string().contains("2147483647 headers"), "{err}");

    // A key longer than the record.
    let err = check_records(&[10, 0, 0, 0, 0xfe, 0x0f], 1).unwrap_err();
    assert!(err.to_string().contains("announces"), "{err}");

    // An impossible batch length.
    let mut short = BytesMut::from(&batch(0, 1, PLAIN, Compression::None)[..]);
    short[8..12].copy_from_slice(&(-5i32).to_be_bytes());
    let fetch = read_partition(answer(&[short.freeze()], &[], 1, 1), 0);
    assert!(fetch
        .corrupt
        .expect("refused")
        .reason
        .to_string()
        .contains("batch length"));
}

#[test]
fn varints_decode_as_kafka_writes_them() {
    for (bytes, value) in [
        (&[0x00][..], 0i64),
        (&[0x01], -1),
        (&[0x02], 1),
        (&[0xfe, 0xff, 0xff, 0xff, 0x0f], i64::from(i32::MAX)),
        (&[0x80, 0x01], 64),
    ] {
        let mut buf = bytes;
        assert_eq!(varint(&mut buf).unwrap(), value, "{bytes:?}");
        assert!(buf.is_empty());
    }
    assert!(varint(&mut &[0x80][..]).is_err(), "truncated");
}

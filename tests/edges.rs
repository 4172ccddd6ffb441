//! The edges of exactly-once, against the real broker and databases: a log that restarts from
//! nothing under stored offsets, offsets past the log end, a corrupt record batch, partitions
//! added while consuming.

use std::collections::BTreeSet;

use crate::support::*;
use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ProduceRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use streamlab::kafka::wire::WireConnection;

/// `consume --assign all -b BROKERS --topic T --sink S -D URL --stop-at-end`.
fn consume_via(db: &TestDb, brokers: &str, topic: &str) -> Cmd {
    drain(topic, db).brokers(brokers)
}

fn create(brokers: &str, topic: &str, partitions: u32) {
    streamlab("topic create")
        .brokers(brokers)
        .topic(topic)
        .partitions(partitions)
        .ok();
}

fn union(a: BTreeSet<String>, b: BTreeSet<String>) -> BTreeSet<String> {
    a.into_iter().chain(b).collect()
}

#[test]
fn a_broker_that_comes_back_empty_is_a_new_topic_not_a_silent_stall() {
    let mut broker = Tansu::behind_proxy();
    let b = broker.address();
    for db in TestDb::both() {
        create(&b, "reborn", 3);
        produce_and_wait(&b, "reborn", 1000, 41);
        consume_via(&db, &b, "reborn").ok();
        assert_eq!(db.sales_ids(), seeded_ids(41, 1000));

        broker.restart(); // in memory: every topic and record is gone
        create(&b, "reborn", 3);
        produce_and_wait(&b, "reborn", 500, 42);
        let out = consume_via(&db, &b, "reborn").run().success();
        assert!(
            out.stderr.contains("is a new topic"),
            "one WARN line: {}",
            out.stderr
        );
        assert_eq!(
            db.sales_ids(),
            union(seeded_ids(41, 1000), seeded_ids(42, 500)),
            "the new log's 500 are stored, the first 1000 kept"
        );
        assert_eq!(db.stored_offsets("reborn"), end_offsets_via(&b, "reborn"));
        streamlab("check")
            .brokers(&b)
            .db(&db)
            .topic("reborn")
            .max_lag(0)
            .ok();
        broker.restart(); // the next database starts from an empty broker too
    }
}

#[test]
fn offsets_past_the_log_end_stop_the_run_until_the_operator_says_where_to_go() {
    for db in TestDb::both() {
        let b = brokers();
        let topic = topic(2);
        produce_and_wait(&b, &topic, 300, 43);
        consume_via(&db, &b, &topic).ok();
        let ends = end_offsets(&topic);
        // The broker "lost" 1000 offsets of each partition: the stored positions are past its end.
        db.exec(&format!(
            "UPDATE streamlab_offsets SET next_offset = next_offset + 1000 WHERE topic = '{topic}'"
        ));

        let stderr = consume_via(&db, &b, &topic).fails(
            1,
            &["past the end of", "--reset-offsets-ahead"],
            &[],
        );
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "one line: {stderr}");
        assert!(errors[0].contains("stored at 1150, 1150"), "{}", errors[0]);
        let check = streamlab("check").db(&db).topic(&topic).json().run();
        assert_eq!(check.code, Some(1), "never healthy");
        let report = check.json();
        for p in report["partitions"].as_array().unwrap() {
            assert_eq!(p["ahead"].as_i64(), Some(1000), "{p}");
            assert_eq!(p["lag"].as_i64(), Some(0), "{p}");
        }
        let snapshot = streamlab("watch").topic(&topic).db(&db).count(1).ok_json();
        assert!(snapshot["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["ahead"].as_i64() == Some(1000)));

        let out = consume_via(&db, &b, &topic)
            .args(["--reset-offsets-ahead", "earliest"])
            .json()
            .ok_json();
        assert_eq!(
            (counted(&out, "inserted"), counted(&out, "duplicates")),
            (0, 300),
            "{out}"
        );
        assert_eq!(db.sales_ids(), seeded_ids(43, 300));
        assert_eq!(db.stored_offsets(&topic), ends);
    }
}

/// One record batch of sales-looking values at `first..first+count`, written straight to the
/// broker; `corrupt` flips a byte inside the last value after the CRC was computed.
fn produce_batch(topic: &str, first_value: usize, count: usize, corrupt: bool) {
    let records: Vec<Record> = (0..count)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: -1,
            timestamp: 1_700_000_000_000,
            key: Some(Bytes::from(format!("k{}", first_value + i))),
            value: Some(Bytes::from(format!("not-an-event-{}", first_value + i))),
            headers: IndexMap::new(),
        })
        .collect();
    let mut batch = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut batch, records.iter(), &options).unwrap();
    if corrupt {
        let at = batch.len() - 2;
        batch[at] ^= 0x20;
    }
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(batch.freeze()))])]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut conn = WireConnection::connect(&brokers(), &streamlab::kafka::Config::default())
            .await
            .unwrap();
        let response = conn.call_capped(request, 9).await.unwrap();
        let code = response.responses[0].partition_responses[0].error_code;
        assert_eq!(code, 0, "the broker took the batch");
    });
}

#[test]
fn a_corrupt_record_batch_stops_the_run_by_name_or_is_dead_lettered_on_request() {
    for db in TestDb::both() {
        let topic = topic(1);
        produce_batch(&topic, 0, 3, false); // offsets 0..=2
        produce_batch(&topic, 3, 4, true); // offsets 3..=6, CRC no longer matches
        produce_batch(&topic, 7, 2, false); // offsets 7..=8
        let b = brokers();
        let stderr = consume_via(&db, &b, &topic).fails(
            1,
            &[
                &format!("{topic}/0"),
                "is unreadable: Cyclic redundancy",
                "--skip-corrupt-batches",
            ],
            &[],
        );
        // The batch as the broker serves it, "record batch at offsets A..=B is unreadable"
        // (tansu may serve part of a stored batch re-encoded, the rest from a later offset).
        let range = stderr
            .split("record batch at offsets ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .expect("the offsets are named");
        let (first, last) = range.split_once("..=").unwrap();
        let (first, last): (i64, i64) = (first.parse().unwrap(), last.parse().unwrap());
        assert!((3..=6).contains(&first) && last == 6, "{range}");
        assert_eq!(
            db.stored_offsets(&topic).get(&0),
            Some(&first),
            "everything before the bad batch is stored (as dead letters: these are not events)"
        );
        consume_via(&db, &b, &topic)
            .arg("--skip-corrupt-batches")
            .ok();
        assert_eq!(db.stored_offsets(&topic), end_offsets(&topic));
        let dead = db.lines(&format!(
            "SELECT kafka_offset || ':' || substr(error, 1, 40) FROM dead_letters \
             WHERE topic = '{topic}' ORDER BY kafka_offset"
        ));
        let skipped: Vec<&String> = dead.iter().filter(|d| d.contains("skipped")).collect();
        assert_eq!(skipped.len(), 1, "{dead:?}");
        assert!(skipped[0].starts_with(&format!("{first}:skipped with --skip-corrupt-batches")));
        assert_eq!(
            dead.len() as i64,
            9 - (last - first + 1) + 1,
            "every other record is a dead letter of its own: {dead:?}"
        );
    }
}

#[test]
fn partitions_added_while_consuming_are_picked_up_without_a_restart() {
    // tansu has no CreatePartitions: the topic has four partitions, and a front shows clients
    // two of them until the test "adds" the other two.
    let db = TestDb::sqlite();
    let topic = topic(4);
    let front = front::PartitionFront::start(&brokers(), 2);
    let f = front.address();
    let consumer = streamlab("consume")
        .assign_all()
        .brokers(&f)
        .topic(&topic)
        .db(&db)
        .args(["--metadata-refresh", "1s"])
        .spawn();
    produce_and_wait(&f, &topic, 200, 44); // the producer sees two partitions too
    assert!(wait_until(30, || db.count("sales_events") == 200));
    let before = end_offsets(&topic);
    assert_eq!((before[&2], before[&3]), (0, 0), "{before:?}");

    front.show(4);
    produce_and_wait(&brokers(), &topic, 400, 45); // murmur2 spreads these over all four
    let ends = end_offsets(&topic);
    assert!(
        ends[&2] > 0 && ends[&3] > 0,
        "the new partitions have records: {ends:?}"
    );
    assert!(
        wait_until(30, || db.stored_offsets(&topic) == ends),
        "the new partitions were consumed: {:?} vs {ends:?}",
        db.stored_offsets(&topic)
    );
    let out = consumer.terminate();
    assert!(out.succeeded(), "{}", out.stderr);
    assert!(
        out.stderr.contains("now has 4 partitions (was 2)"),
        "{}",
        out.stderr
    );
    assert_eq!(
        db.sales_ids(),
        union(seeded_ids(44, 200), seeded_ids(45, 400))
    );
}

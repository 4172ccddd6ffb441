//! The durable local broker (`just broker`: tansu's SQLite engine): a restart keeps records and
//! group offsets, and retention deletes old records — which every command then reports, though
//! tansu does not move its log start.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::support::*;

/// The Kafka group's committed offsets, as `watch` reads them without a database.
fn kafka_committed(brokers: &str, topic: &str, group: &str) -> BTreeMap<i64, Option<i64>> {
    let snapshot = streamlab("watch")
        .brokers(brokers)
        .topic(topic)
        .group(group)
        .count(1)
        .ok_json();
    snapshot["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["partition"].as_i64().unwrap(), p["committed"].as_i64()))
        .collect()
}

#[test]
fn a_killed_durable_broker_comes_back_with_records_and_group_offsets() {
    let mut broker = Tansu::durable();
    let b = broker.address();
    let topic = topic_via(&b, "durable", 3, &[]);
    produce_and_wait(&b, &topic, 500, 11);
    let db = TestDb::sqlite();
    assert_eq!(consume_json(&b, &topic, &db.url).ok_json()["inserted"], 500);
    let ends = end_offsets_via(&b, &topic);
    let committed: BTreeMap<i64, Option<i64>> =
        ends.iter().map(|(&p, &end)| (p, Some(end))).collect();
    assert_eq!(kafka_committed(&b, &topic, "streamlab"), committed);

    broker.restart();
    assert_eq!(
        end_offsets_via(&b, &topic),
        ends,
        "every record is still there"
    );
    assert_eq!(
        kafka_committed(&b, &topic, "streamlab"),
        committed,
        "the group's offsets too"
    );
    produce_and_wait(&b, &topic, 300, 12);
    let rest = consume_json(&b, &topic, &db.url).ok_json();
    assert_eq!(rest["inserted"], 300, "{rest}");
    assert_eq!(rest["duplicates"], 0, "{rest}");
    assert_eq!(db.stored_offsets(&topic), end_offsets_via(&b, &topic));
    let mut expected = seeded_ids(11, 500);
    expected.extend(seeded_ids(12, 300));
    assert_eq!(db.sales_ids(), expected);
}

#[test]
fn retention_removes_records_and_every_command_says_so() {
    let broker = Tansu::durable();
    let b = broker.address();
    let topic = topic_via(
        &b,
        "retention",
        2,
        &["retention.ms=3000", "cleanup.policy=delete"],
    );
    produce_and_wait(&b, &topic, 100, 21);
    let db = TestDb::sqlite();
    assert_eq!(consume_json(&b, &topic, &db.url).ok_json()["inserted"], 100);
    produce_and_wait(&b, &topic, 100, 22);
    let ends = end_offsets_via(&b, &topic);

    // topic describe: the log start moves up to the end once retention has run.
    let gone = wait_until(60, || {
        offsets_via(&b, &topic)
            .iter()
            .all(|(p, &(start, end))| start == end && end == ends[p])
    });
    assert!(
        gone,
        "retention never removed the records: {:?}",
        offsets_via(&b, &topic)
    );

    // check: the 100 records never consumed are reported, and the pipeline is unhealthy.
    let check = || streamlab("check").brokers(&b).url(&db.url).topic(&topic);
    let out = check().json().run();
    assert_eq!(out.code, Some(1));
    let report = out.json();
    let removed: i64 = report["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["removed_unread"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(removed, 100, "{report}");

    // watch: log start equals log end on every partition.
    let snapshot = streamlab("watch")
        .brokers(&b)
        .topic(&topic)
        .url(&db.url)
        .count(1)
        .ok_json();
    for p in snapshot["partitions"].as_array().unwrap() {
        assert_eq!(p["log_start"], p["log_end"], "{snapshot}");
    }

    // consume: says so, moves on to the end and stops there, promptly.
    let started = Instant::now();
    let out = consume_json(&b, &topic, &db.url).run().success();
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(
        out.stderr.contains("removed by retention"),
        "{}",
        out.stderr
    );
    assert_eq!(out.json()["consumed"], 0);
    assert_eq!(db.stored_offsets(&topic), ends);
    assert_eq!(db.sales_ids(), seeded_ids(21, 100));
    check().max_lag(0).ok();

    // A group that never read the topic finishes at once on the fully expired log too.
    let fresh = TestDb::sqlite();
    let summary = consume_json(&b, &topic, &fresh.url).group("late").ok_json();
    assert_eq!(summary["consumed"], 0, "{summary}");
    assert_eq!(
        next_offsets(&summary),
        ends,
        "it starts at the log end: nothing is left before it"
    );
}

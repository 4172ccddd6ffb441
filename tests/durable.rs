//! The durable local broker (`just broker`: tansu's SQLite engine): a restart keeps records and
//! group offsets, and retention deletes old records — which every command then reports, though
//! tansu does not move its log start.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;

/// The Kafka group's committed offsets, as `watch` reads them without a database.
fn kafka_committed(brokers: &str, topic: &str, group: &str) -> BTreeMap<i64, Option<i64>> {
    let snapshot: serde_json::Value = serde_json::from_str(&ok(&[
        "watch", "-b", brokers, "--topic", topic, "--group", group, "--count", "1",
    ]))
    .unwrap();
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
    assert_eq!(consume_json(&b, &topic, &db.url, &[])["inserted"], 500);
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
    let rest = consume_json(&b, &topic, &db.url, &[]);
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
    assert_eq!(consume_json(&b, &topic, &db.url, &[])["inserted"], 100);
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
    let out = streamlab(&[
        "check", "-b", &b, "-D", &db.url, "--topic", &topic, "--format", "json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let removed: i64 = report["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["removed_unread"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(removed, 100, "{report}");

    // watch: log start equals log end on every partition.
    let snapshot: serde_json::Value = serde_json::from_str(&ok(&[
        "watch", "-b", &b, "--topic", &topic, "-D", &db.url, "--count", "1",
    ]))
    .unwrap();
    for p in snapshot["partitions"].as_array().unwrap() {
        assert_eq!(p["log_start"], p["log_end"], "{snapshot}");
    }

    // consume: says so, moves on to the end and stops there, promptly.
    let started = Instant::now();
    let out = streamlab(&[
        "consume",
        "-b",
        &b,
        "--topic",
        &topic,
        "-D",
        &db.url,
        "--stop-at-end",
        "--format",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("removed by retention"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["consumed"], 0);
    assert_eq!(db.stored_offsets(&topic), ends);
    assert_eq!(db.sales_ids(), seeded_ids(21, 100));
    ok(&[
        "check",
        "-b",
        &b,
        "-D",
        &db.url,
        "--topic",
        &topic,
        "--max-lag",
        "0",
    ]);

    // A group that never read the topic finishes at once on the fully expired log too.
    let fresh = TestDb::sqlite();
    let summary = consume_json(&b, &topic, &fresh.url, &["--group", "late"]);
    assert_eq!(summary["consumed"], 0, "{summary}");
    let at_end: BTreeMap<String, i64> = summary["partitions"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(p, pos)| (p.clone(), pos["next_offset"].as_i64().unwrap()))
        .collect();
    let expected: BTreeMap<String, i64> = ends.iter().map(|(p, e)| (p.to_string(), *e)).collect();
    assert_eq!(
        at_end, expected,
        "it starts at the log end: nothing is left before it"
    );
}

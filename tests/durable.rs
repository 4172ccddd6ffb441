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
    the_check_says_the_group_could_not_be_described(&b, &topic, &db.url);

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
    wait_until_expired(&b, &topic, &ends);

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

/// This engine cannot describe a group it stored: `check` says so in its report — the group's
/// state unknown, no member recorded as live (the consumer left) — and warns of nothing.
fn the_check_says_the_group_could_not_be_described(brokers: &str, topic: &str, url: &str) {
    let check = || streamlab("check").brokers(brokers).url(url).topic(topic);
    let out = check().json().run().success();
    let group = &out.json()["group"];
    assert_eq!(group["state"], "unknown", "{group}");
    assert_eq!(group["members"], serde_json::json!([]), "{group}");
    let note = group["note"].as_str().unwrap_or_default();
    assert!(
        note.starts_with("the broker could not describe the group ("),
        "{group}"
    );
    assert!(
        note.ends_with("; the database records no member as live"),
        "{group}"
    );
    assert!(!out.stderr.contains("WARN"), "{}", out.stderr);
    let text = check().run().success().stdout;
    assert!(text.contains("group 'streamlab' · unknown · 0 member(s)\nnote: the broker could not describe the group ("), "{text}");
}

/// Poll `topic describe` until the log start is the end (`ends`) on every partition: retention
/// removed every record. Fails the test after 60 s.
fn wait_until_expired(brokers: &str, topic: &str, ends: &BTreeMap<i64, i64>) {
    let gone = wait_until(60, || {
        offsets_via(brokers, topic)
            .iter()
            .all(|(p, &(start, end))| start == end && end == ends[p])
    });
    assert!(
        gone,
        "retention never removed the records of {topic}: {:?}",
        offsets_via(brokers, topic)
    );
}

/// `topic describe --format json` of `topic` on `brokers`: its `cleanup.policy`.
fn cleanup_policy(brokers: &str, topic: &str) -> serde_json::Value {
    streamlab("topic describe")
        .brokers(brokers)
        .topic(topic)
        .json()
        .ok_json()["cleanup_policy"]
        .clone()
}

#[test]
fn retention_ms_alone_deletes_as_on_kafka() {
    let broker = Tansu::durable();
    let b = broker.address();
    // As the seed's tip has it: retention.ms at creation, no cleanup.policy.
    let created = topic_via(&b, "ret-create", 2, &["retention.ms=2000"]);
    // Or set later, on a topic created with nothing.
    let later = topic_via(&b, "ret-set", 2, &[]);
    let set = streamlab("topic retention")
        .brokers(&b)
        .topic(&later)
        .args(["--set", "2s"])
        .ok();
    assert!(
        set.contains("→ 2000 (2s)")
            && set.contains("cleanup.policy of '")
            && set.contains("set to delete"),
        "{set}"
    );
    // A policy of the topic's own is left as it is.
    let compacted = topic_via(&b, "ret-compact", 1, &["cleanup.policy=compact"]);
    let set = streamlab("topic retention")
        .brokers(&b)
        .topic(&compacted)
        .args(["--set", "2s"])
        .ok();
    assert!(!set.contains("cleanup.policy"), "{set}");
    assert_eq!(cleanup_policy(&b, &compacted), "compact");

    for (seed, topic) in [(31, &created), (32, &later)] {
        assert_eq!(cleanup_policy(&b, topic), "delete");
        produce_and_wait(&b, topic, 100, seed);
        let ends = end_offsets_via(&b, topic);
        assert_eq!(ends.values().sum::<i64>(), 100);
        wait_until_expired(&b, topic, &ends);
    }
}

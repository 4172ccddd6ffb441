//! `streamlab consume` into both sinks: exactly once, across re-runs, replays, poison records
//! and SIGKILL, with offsets in the database and mirrored to the Kafka group.
//!
//! Each test's consumers are members of a group of its own (`group_of`), as `consume` is by
//! default; tests run in parallel, and members of one group share it whatever their topic.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;

/// The group this test's consumers of `topic` belong to.
fn group_of(topic: &str) -> String {
    format!("g-{topic}")
}

/// `consume --stop-at-end` as the one member of `topic`'s group.
fn consume(db: &TestDb, topic: &str, extra: &[&str]) -> String {
    let group = group_of(topic);
    let mut args = vec![
        "consume",
        "--topic",
        topic,
        "--group",
        &group,
        "--sink",
        db.sink,
        "-D",
        &db.url,
        "--stop-at-end",
    ];
    args.extend_from_slice(extra);
    ok(&args)
}

#[test]
fn every_event_lands_exactly_once_across_reruns_and_replays() {
    for db in TestDb::both() {
        let topic = topic(3);
        ok(&[
            "produce", "--topic", &topic, "--count", "500", "--rate", "0", "--seed", "11",
        ]);

        let out = consume(&db, &topic, &[]);
        assert!(
            out.contains("consumed 500") && out.contains("500 inserted"),
            "{}: {out}",
            db.sink
        );
        assert_eq!(db.scalar("SELECT COUNT(*) FROM sales_events"), 500);
        assert_eq!(db.stored_offsets(&topic), end_offsets(&topic));

        // Nothing new: nothing consumed, nothing inserted.
        let out = consume(&db, &topic, &[]);
        assert!(out.contains("consumed 0"), "{out}");

        // The same events produced again (same seed → same ids): consumed, none inserted.
        ok(&[
            "produce", "--topic", &topic, "--count", "500", "--rate", "0", "--seed", "11",
        ]);
        let out = consume(&db, &topic, &[]);
        assert!(
            out.contains("consumed 500")
                && out.contains("0 inserted")
                && out.contains("500 duplicates"),
            "{out}"
        );
        assert_eq!(db.scalar("SELECT COUNT(*) FROM sales_events"), 500);
        assert_eq!(
            db.scalar("SELECT COUNT(DISTINCT id) FROM sales_events"),
            500
        );
        assert_eq!(db.stored_offsets(&topic), end_offsets(&topic));

        // Ordinary Kafka tooling sees the group's position: librdkafka reads the commit.
        let committed: BTreeMap<String, i64> = serde_json::from_str(&python(
            "rdkafka_client.py",
            &["committed", &group_of(&topic), &topic],
        ))
        .unwrap();
        let expected: BTreeMap<String, i64> = end_offsets(&topic)
            .into_iter()
            .map(|(p, o)| (p.to_string(), o))
            .collect();
        assert_eq!(committed, expected, "{}", db.sink);
    }
}

#[test]
fn poison_records_become_dead_letters_and_the_stream_goes_on() {
    for db in TestDb::both() {
        let topic = topic(1);
        ok(&[
            "produce", "--topic", &topic, "--count", "20", "--rate", "0", "--kind", "sensor",
        ]);
        let poison: Vec<Option<Vec<u8>>> = vec![
            None,
            Some(vec![]),
            Some(vec![0xff, 0xfe, 0x00]),
            Some(b"not json".to_vec()),
            Some(br#"{"id":"0190d7a4-8a8e-7cc0-8d1c-2b7d8f3a9e10","sensor_id":"s","val":"hot","unit":"C","status":"ok","ts":"2026-01-01T00:00:00Z"}"#.to_vec()),
            Some(br#"{"id":"0190d7a4-8a8e-7cc0-8d1c-2b7d8f3a9e11","sensor_id":"s","val":1e999,"unit":"C","status":"ok","ts":"2026-01-01T00:00:00Z"}"#.to_vec()),
            Some(br#"{"id":"0190d7a4-8a8e-7cc0-8d1c-2b7d8f3a9e12","sensor_id":"'); DROP TABLE sensor_logs; --","val":1,"unit":"C","status":"ok","ts":"never"}"#.to_vec()),
            Some(vec![b'x'; 1024 * 1024]),
        ];
        let n_poison = poison.len() as i64;
        produce_raw(&topic, 0, b"poison", poison);
        ok(&[
            "produce", "--topic", &topic, "--count", "20", "--rate", "0", "--kind", "sensor",
        ]);

        let out = consume(&db, &topic, &["--kind", "sensor"]);
        assert!(out.contains(&format!("{n_poison} dead-lettered")), "{out}");
        assert_eq!(db.scalar("SELECT COUNT(*) FROM sensor_logs"), 40);
        assert_eq!(db.scalar("SELECT COUNT(*) FROM dead_letters"), n_poison);
        assert_eq!(
            db.scalar("SELECT COUNT(*) FROM dead_letters WHERE error = ''"),
            0
        );
        // The oversize record is kept byte for byte.
        assert_eq!(
            db.scalar("SELECT MAX(LENGTH(payload)) FROM dead_letters"),
            1024 * 1024
        );
        assert_eq!(db.stored_offsets(&topic), end_offsets(&topic));
        // A second pass does not dead-letter them again.
        consume(&db, &topic, &["--kind", "sensor"]);
        assert_eq!(db.scalar("SELECT COUNT(*) FROM dead_letters"), n_poison);
    }
}

#[test]
fn a_consumer_killed_with_sigkill_resumes_without_loss_or_duplicates() {
    for db in TestDb::both() {
        let topic = topic(3);
        let n = 30_000;
        ok(&[
            "produce",
            "--topic",
            &topic,
            "--count",
            &n.to_string(),
            "--rate",
            "0",
            "--seed",
            "11",
        ]);
        migrate(&db);
        let group = group_of(&topic);
        for _ in 0..4 {
            // Alone: a SIGKILLed group member stays in the group until its session expires, and
            // the next one would wait for that (tests/group.rs kills members).
            let child = spawn(&[
                "consume",
                "--assign",
                "all",
                "--group",
                &group,
                "--topic",
                &topic,
                "--sink",
                db.sink,
                "-D",
                &db.url,
                "--batch-size",
                "300",
            ]);
            // Kill it at a random moment once it is writing (or has finished).
            let before = db.scalar("SELECT COUNT(*) FROM sales_events");
            wait_until(20, || {
                db.scalar("SELECT COUNT(*) FROM sales_events") != before
            });
            std::thread::sleep(Duration::from_millis(rand::random_range(0..200)));
            signal(&child, "KILL");
            let _ = child.wait_with_output();
        }
        consume(&db, &topic, &[]);
        assert_eq!(db.sales_ids(), seeded_ids(11, n), "{}", db.sink);
        assert_eq!(
            db.scalar("SELECT COUNT(*) FROM sales_events"),
            n as i64,
            "{}",
            db.sink
        );
        assert_eq!(db.stored_offsets(&topic), end_offsets(&topic));
        // Every row's provenance matches a distinct Kafka position.
        assert_eq!(
            db.scalar("SELECT COUNT(*) FROM (SELECT DISTINCT kafka_partition, kafka_offset FROM sales_events) AS p"),
            n as i64
        );
    }
}

fn migrate(db: &TestDb) {
    ok(&["migrate", "--sink", db.sink, "-D", &db.url]);
}

#[test]
fn sigterm_finishes_the_batch_commits_and_exits_zero() {
    for db in TestDb::both() {
        let topic = topic(2);
        let producer = spawn(&["produce", "--topic", &topic, "--rate", "500"]);
        let group = group_of(&topic);
        let consumer = spawn(&[
            "consume", "--topic", &topic, "--group", &group, "--sink", db.sink, "-D", &db.url,
        ]);
        std::thread::sleep(Duration::from_secs(2));
        signal(&producer, "TERM");
        assert!(producer.wait_with_output().unwrap().status.success());
        std::thread::sleep(Duration::from_millis(500));
        signal(&consumer, "TERM");
        let out = consumer.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("consumed"));
        // Whatever it committed is consistent: rows = stored offsets, and a resume completes it.
        let rows = db.scalar("SELECT COUNT(*) FROM sales_events");
        let stored: i64 = db.stored_offsets(&topic).values().sum();
        assert_eq!(rows, stored, "{}", db.sink);
        consume(&db, &topic, &[]);
        let total: i64 = end_offsets(&topic).values().sum();
        assert_eq!(db.scalar("SELECT COUNT(*) FROM sales_events"), total);
    }
}

#[test]
fn print_each_prints_the_seed_line() {
    let db = TestDb::sqlite();
    let topic = topic(1);
    ok(&[
        "produce", "--topic", &topic, "--count", "5", "--rate", "0", "--kind", "sensor",
    ]);
    let out = consume(&db, &topic, &["--kind", "sensor", "--print-each"]);
    let stored: Vec<&str> = out.lines().filter(|l| l.starts_with("Stored: ")).collect();
    assert_eq!(stored.len(), 5, "{out}");
    assert!(
        stored
            .iter()
            .all(|l| l.contains(" at 20") && l.ends_with('Z')),
        "{out}"
    );
}

#[test]
fn database_problems_are_clear_and_never_print_the_password() {
    let topic = topic(1);
    let unreachable = "postgres://streamlab:hunter2@127.0.0.1:1/streamlab";
    fails(
        &[
            "consume",
            "--topic",
            &topic,
            "--sink",
            "pg",
            "-D",
            unreachable,
            "--timeout",
            "2s",
        ],
        1,
        &["127.0.0.1:1"],
        &["hunter2"],
    );
    let unwritable = "sqlite:///proc/nope/x.db";
    fails(
        &[
            "consume", "--topic", &topic, "--sink", "sqlite", "-D", unwritable,
        ],
        1,
        &["/proc/nope/x.db"],
        &[],
    );
}

#[test]
fn partition_reads_only_that_partition_alone_and_assign_all_reads_every_partition() {
    let db = TestDb::sqlite();
    let topic = topic(3);
    let group = group_of(&topic);
    // Known events written straight to each partition: partition → their ids.
    let mut generator =
        streamlab::events::Generator::new(streamlab::events::EventKind::Sales, Some(28));
    let mut ids: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
    for p in 0..3 {
        let events: Vec<_> = (0..200 + 100 * p)
            .map(|_| generator.next_event(time::OffsetDateTime::now_utc()))
            .collect();
        ids.insert(
            i64::from(p),
            events.iter().map(|e| e.id().to_string()).collect(),
        );
        produce_raw(
            &topic,
            p,
            b"k",
            events.iter().map(|e| Some(e.to_json())).collect(),
        );
    }
    let ends = end_offsets(&topic);
    let base = [
        "consume",
        "--topic",
        &topic,
        "--group",
        &group,
        "--sink",
        db.sink,
        "-D",
        &db.url,
        "--stop-at-end",
    ];
    let run = |extra: &[&str]| {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let out = streamlab(&args);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(out.status.success(), "{args:?}: {stdout}\n{stderr}");
        // Alone: the group was not joined.
        assert!(!stderr.contains(" generation "), "{stderr}");
        stdout
    };

    // Partition 1 only (named twice: once is enough): its events, its offset, nothing else.
    let out = run(&["--partition", "1", "--partition", "1"]);
    assert!(
        out.contains("consumed 300 ") && out.contains("300 inserted"),
        "{out}"
    );
    assert_eq!(db.sales_ids(), ids[&1]);
    assert_eq!(db.stored_offsets(&topic), BTreeMap::from([(1, ends[&1])]));

    // Every partition alone: the other two from their start, partition 1 from where it is.
    let out = run(&["--assign", "all"]);
    assert!(
        out.contains("consumed 600 ") && out.contains("600 inserted"),
        "{out}"
    );
    let all: BTreeSet<String> = ids.values().flatten().cloned().collect();
    assert_eq!(db.sales_ids(), all);
    assert_eq!(db.stored_offsets(&topic), ends);

    // A partition the topic does not have is one line, not a panic; flags only a group member
    // has are usage errors next to --partition.
    let mut args = base.to_vec();
    args.extend(["--partition", "0,3"]);
    let stderr = fails(&args, 1, &["has no partition 3", "0 to 2"], &["panicked"]);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    let mut args = base.to_vec();
    args.extend(["--partition", "1", "--session-timeout", "6s"]);
    fails(&args, 2, &["--session-timeout"], &["panicked"]);
    let mut args = base.to_vec();
    args.extend(["--partition", "1", "--assign", "all"]);
    fails(&args, 2, &["--assign"], &["panicked"]);
}

//! `streamlab consume` into both sinks: exactly once, across re-runs, replays, poison records
//! and SIGKILL, with offsets in the database and mirrored to the Kafka group.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;

fn consume(db: &TestDb, topic: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "consume",
        "--topic",
        topic,
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
            &["committed", "streamlab", &topic],
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
        for _ in 0..4 {
            let child = spawn(&[
                "consume",
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
        let consumer = spawn(&[
            "consume", "--topic", &topic, "--sink", db.sink, "-D", &db.url,
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

//! `streamlab consume` into both sinks: exactly once, across re-runs, replays, poison records
//! and SIGKILL, with offsets in the database and mirrored to the Kafka group.
//!
//! Each test's consumers are members of a group of its own (`group_of`), as `consume` is by
//! default; tests run in parallel, and members of one group share it whatever their topic.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::support::*;

/// The group this test's consumers of `topic` belong to.
fn group_of(topic: &str) -> String {
    format!("g-{topic}")
}

/// `consume --topic T --group G --sink S -D URL`: a member of `topic`'s group, into `db`.
fn member(db: &TestDb, topic: &str) -> Cmd {
    streamlab("consume")
        .topic(topic)
        .group(&group_of(topic))
        .db(db)
}

/// `consume --stop-at-end --format json` as the one member of `topic`'s group: its summary.
fn consume(db: &TestDb, topic: &str) -> Cmd {
    member(db, topic).stop_at_end().json()
}

#[test]
fn every_event_lands_exactly_once_across_reruns_and_replays() {
    for db in TestDb::both() {
        let topic = topic(3);
        produce(&topic, 500).seed(11).ok();

        let out = consume(&db, &topic).ok_json();
        assert_eq!(
            (counted(&out, "consumed"), counted(&out, "inserted")),
            (500, 500),
            "{}: {out}",
            db.sink
        );
        assert_eq!(db.sales_ids(), seeded_ids(11, 500), "{}", db.sink);
        assert_eq!(db.count("sales_events"), 500);
        assert_eq!(db.stored_offsets(&topic), end_offsets(&topic));

        // Nothing new: nothing consumed, nothing inserted.
        let out = consume(&db, &topic).ok_json();
        assert_eq!(counted(&out, "consumed"), 0, "{out}");

        // The same events produced again (same seed → same ids): consumed, none inserted.
        produce(&topic, 500).seed(11).ok();
        let out = consume(&db, &topic).ok_json();
        assert_eq!(
            (
                counted(&out, "consumed"),
                counted(&out, "inserted"),
                counted(&out, "duplicates")
            ),
            (500, 0, 500),
            "{out}"
        );
        // Exactly the first run's ids, each once: nothing added, nothing lost.
        assert_eq!(db.sales_ids(), seeded_ids(11, 500), "{}", db.sink);
        assert_eq!(db.count("sales_events"), 500);
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
        produce(&topic, 20).kind("sensor").ok();
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
        produce(&topic, 20).kind("sensor").ok();

        let out = consume(&db, &topic).kind("sensor").ok_json();
        assert_eq!(counted(&out, "dead_lettered"), n_poison as u64, "{out}");
        assert_eq!(db.count("sensor_logs"), 40);
        assert_eq!(db.count("dead_letters"), n_poison);
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
        consume(&db, &topic).kind("sensor").ok();
        assert_eq!(db.count("dead_letters"), n_poison);
    }
}

#[test]
fn a_consumer_killed_with_sigkill_resumes_without_loss_or_duplicates() {
    for db in TestDb::both() {
        let topic = topic(3);
        let n = 30_000;
        produce(&topic, n).seed(11).ok();
        streamlab("migrate").db(&db).ok();
        let rows = || db.count("sales_events");
        for kill in 1..=4 {
            // Alone: a SIGKILLed group member stays in the group until its session expires, and
            // the next one would wait for that (tests/group.rs kills members). Throttled, so the
            // stream is still going when the kill comes (the resume below is not).
            let child = member(&db, &topic)
                .assign_all()
                .batch_size(300)
                .throttle(5000)
                .spawn();
            // Kill it at a random moment once it is writing.
            let before = rows();
            wait_for_rows(20, &format!("kill {kill}: a batch"), rows, before + 1);
            std::thread::sleep(Duration::from_millis(rand::random_range(0..200)));
            child.kill();
            // The kill landed mid-stream: this run had written, and not everything.
            assert_mid_stream(&format!("kill {kill} ({})", db.sink), rows(), before, n);
        }
        consume(&db, &topic).ok();
        assert_eq!(db.sales_ids(), seeded_ids(11, n), "{}", db.sink);
        assert_eq!(db.count("sales_events"), n as i64, "{}", db.sink);
        assert_eq!(db.stored_offsets(&topic), end_offsets(&topic));
        // Every row's provenance is a distinct Kafka position, and every position is a row.
        assert_eq!(
            db.sales_positions(),
            every_position(&end_offsets(&topic)),
            "{}",
            db.sink
        );
    }
}

#[test]
fn sigterm_finishes_the_batch_commits_and_exits_zero() {
    for db in TestDb::both() {
        let topic = topic(2);
        let n = 6000;
        produce(&topic, n).seed(12).ok();
        streamlab("migrate").db(&db).ok();
        // Throttled to 1,000 events a second in batches of 500: a stream of several seconds.
        let consumer = member(&db, &topic)
            .batch_size(500)
            .throttle(1000)
            .json()
            .spawn();
        let rows = || db.count("sales_events");
        wait_for_rows(30, &format!("a first batch ({})", db.sink), rows, 1);
        consumer.signal("TERM");
        // The signal came mid-stream: rows written, and more to come.
        let at_signal = rows();
        assert_mid_stream(&format!("SIGTERM ({})", db.sink), at_signal, 0, n);
        let out = consumer.exit_within(Duration::from_secs(30), "consume after SIGTERM");
        assert!(out.succeeded(), "{}", out.stderr);
        // It committed what it reports, and stopped early: what it consumed is exactly what
        // is stored, rows and offsets.
        let summary = out.json();
        let stored = db.count("sales_events");
        assert!(stored >= at_signal && stored < n as i64, "{stored} of {n}");
        assert_eq!(counted(&summary, "inserted") as i64, stored, "{summary}");
        assert_eq!(counted(&summary, "consumed") as i64, stored, "{summary}");
        let reported: BTreeMap<i64, i64> = next_offsets(&summary)
            .into_iter()
            .filter(|(_, next)| *next > 0)
            .collect();
        assert_eq!(reported, db.stored_offsets(&topic), "{summary}");
        assert_eq!(db.stored_offsets(&topic).values().sum::<i64>(), stored);
        // A resume completes it: exactly the produced ids, offsets at the log ends.
        consume(&db, &topic).ok();
        assert_eq!(db.sales_ids(), seeded_ids(12, n), "{}", db.sink);
        assert_eq!(db.stored_offsets(&topic), end_offsets(&topic));
    }
}

#[test]
fn print_each_prints_the_seed_line() {
    let db = TestDb::sqlite();
    let topic = topic(1);
    produce(&topic, 5).kind("sensor").ok();
    // For people (no --format json): a line per stored event, then the summary.
    let out = member(&db, &topic)
        .stop_at_end()
        .kind("sensor")
        .arg("--print-each")
        .ok();
    let stored: Vec<&str> = out.lines().filter(|l| l.starts_with("Stored: ")).collect();
    assert_eq!(stored.len(), 5, "{out}");
    assert!(
        stored
            .iter()
            .all(|l| l.contains(" at 20") && l.ends_with('Z')),
        "{out}"
    );
    assert!(
        out.contains(&format!("consumed 5 sensor records from '{topic}'"))
            && out.contains("5 inserted, 0 duplicates skipped, 0 dead-lettered")
            && out.contains("  partition 0: next offset 5, lag 0"),
        "{out}"
    );
}

#[test]
fn database_problems_are_clear_and_never_print_the_password() {
    let topic = topic(1);
    streamlab("consume")
        .topic(&topic)
        .sink("pg")
        .url("postgres://streamlab:hunter2@127.0.0.1:1/streamlab")
        .timeout("2s")
        .fails(1, &["127.0.0.1:1"], &["hunter2"]);
    streamlab("consume")
        .topic(&topic)
        .sink("sqlite")
        .url("sqlite:///proc/nope/x.db")
        .fails(1, &["/proc/nope/x.db"], &[]);
}

#[test]
fn partition_reads_only_that_partition_alone_and_assign_all_reads_every_partition() {
    let db = TestDb::sqlite();
    let topic = topic(3);
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
    let base = || member(&db, &topic).stop_at_end();
    let run = |cmd: Cmd| {
        let out = cmd.json().run().success();
        // Alone: the group was not joined.
        assert!(!out.stderr.contains(" generation "), "{}", out.stderr);
        out.json()
    };

    // Partition 1 only (named twice: once is enough): its events, its offset, nothing else.
    let out = run(base().args(["--partition", "1", "--partition", "1"]));
    assert_eq!(
        (counted(&out, "consumed"), counted(&out, "inserted")),
        (300, 300),
        "{out}"
    );
    assert_eq!(db.sales_ids(), ids[&1]);
    assert_eq!(db.stored_offsets(&topic), BTreeMap::from([(1, ends[&1])]));

    // Every partition alone: the other two from their start, partition 1 from where it is.
    let out = run(base().assign_all());
    assert_eq!(
        (counted(&out, "consumed"), counted(&out, "inserted")),
        (600, 600),
        "{out}"
    );
    let all: BTreeSet<String> = ids.values().flatten().cloned().collect();
    assert_eq!(db.sales_ids(), all);
    assert_eq!(db.stored_offsets(&topic), ends);

    // A partition the topic does not have is one line, not a panic; flags only a group member
    // has are usage errors next to --partition.
    let stderr = base().args(["--partition", "0,3"]).fails(
        1,
        &["has no partition 3", "0 to 2"],
        &["panicked"],
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    base()
        .args(["--partition", "1"])
        .session_timeout("6s")
        .fails(2, &["--session-timeout"], &["panicked"]);
    base()
        .args(["--partition", "1"])
        .assign_all()
        .fails(2, &["--assign"], &["panicked"]);
}

#[test]
fn several_writers_store_every_event_once_each_over_its_own_partitions() {
    for db in TestDb::both() {
        let topic = topic(5);
        produce(&topic, 3000).seed(31).ok();
        let out = consume(&db, &topic)
            .args(["--writers", "3"])
            .batch_size(200)
            .ok_json();
        assert_eq!(
            (counted(&out, "consumed"), counted(&out, "inserted")),
            (3000, 3000),
            "{}: {out}",
            db.sink
        );
        assert_eq!(db.sales_ids(), seeded_ids(31, 3000), "{}", db.sink);
        assert_eq!(db.count("sales_events"), 3000);
        assert_eq!(db.stored_offsets(&topic), end_offsets(&topic));

        // Replays and new events together, more writers than before: duplicates counted.
        produce(&topic, 3000).seed(31).ok();
        produce(&topic, 1000).seed(32).ok();
        let out = consume(&db, &topic)
            .args(["--writers", "4"])
            .batch_size(300)
            .ok_json();
        assert_eq!(
            (
                counted(&out, "consumed"),
                counted(&out, "inserted"),
                counted(&out, "duplicates")
            ),
            (4000, 1000, 3000),
            "{}: {out}",
            db.sink
        );
        // Exactly the ids of both seeds, each once.
        let both: BTreeSet<String> = seeded_ids(31, 3000)
            .into_iter()
            .chain(seeded_ids(32, 1000))
            .collect();
        assert_eq!(db.sales_ids(), both, "{}", db.sink);
        assert_eq!(db.count("sales_events"), 4000);
        assert_eq!(db.stored_offsets(&topic), end_offsets(&topic));
    }
}

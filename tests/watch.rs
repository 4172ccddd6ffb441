//! `streamlab watch` piped: one JSON snapshot per interval, read against the real broker, a
//! running consume and the database it writes.

mod common;

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use common::*;

fn snapshots(args: &[&str]) -> Vec<serde_json::Value> {
    ok(args)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn json_snapshots_follow_a_running_consume_to_zero_lag() {
    let db = TestDb::sqlite();
    let topic = topic(3);
    ok(&[
        "produce", "--topic", &topic, "--count", "2000", "--rate", "0", "--seed", "31",
    ]);
    let consumer = spawn(&[
        "consume",
        "--assign",
        "all",
        "--topic",
        &topic,
        "--sink",
        "sqlite",
        "-D",
        &db.url,
        "--throttle",
        "1000",
    ]);

    // watch reads a database that exists: wait for the consumer to create it.
    let file = db.url.trim_start_matches("sqlite://").to_string();
    assert!(wait_until(10, || std::path::Path::new(&file).exists()));
    // While the throttled consumer works, the group's position moves and lag shrinks.
    let mut watch = command(&[
        "watch",
        "--topic",
        &topic,
        "--sink",
        "sqlite",
        "-D",
        &db.url,
        "--interval",
        "300ms",
    ])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let mut seen = Vec::new();
    for line in BufReader::new(watch.stdout.take().unwrap()).lines() {
        let snapshot: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        let lag = snapshot["total"]["lag"].as_i64().unwrap();
        seen.push(snapshot);
        if lag == 0 {
            break;
        }
        assert!(seen.len() < 100, "lag never reached 0: {:?}", seen.last());
    }
    signal(&watch, "TERM");
    let status = watch.wait().unwrap();
    assert!(
        status.success(),
        "Ctrl-C/SIGTERM ends watch cleanly: {status:?} after {seen:?}"
    );
    signal(&consumer, "TERM");
    assert!(consumer.wait_with_output().unwrap().status.success());

    let last = seen.last().unwrap();
    assert_eq!(last["position_source"], "database");
    assert_eq!(last["total"]["records"], 2000);
    assert_eq!(last["total"]["committed"], 2000);
    assert_eq!(last["sink"]["rows"], 2000);
    assert_eq!(last["sink"]["dead_letters"], 0);
    assert!(last["sink"]["delay_ms"].as_i64().unwrap() >= 0);
    assert_eq!(last["partitions"].as_array().unwrap().len(), 3);
    let ends: i64 = offsets(&topic).values().map(|(_, end)| end).sum();
    assert_eq!(ends, 2000);
    // The throttle made the drain visible: some snapshot saw lag and a consume rate.
    assert!(seen.len() >= 2, "{seen:?}");
    assert!(seen.iter().any(|s| s["total"]["lag"].as_i64().unwrap() > 0));
    assert!(seen
        .iter()
        .any(|s| s["consume_rate"].as_f64().unwrap() > 0.0));
}

#[test]
fn without_a_sink_the_position_is_the_kafka_groups() {
    let db = TestDb::sqlite();
    let topic = topic(2);
    let out = snapshots(&["watch", "--topic", &topic, "--count", "1"]);
    assert_eq!(out[0]["total"]["lag"], 0);
    assert!(
        out[0]["partitions"][0]["committed"].is_null(),
        "nothing committed yet"
    );

    ok(&[
        "produce", "--topic", &topic, "--count", "500", "--rate", "0",
    ]);
    let out = snapshots(&["watch", "--topic", &topic, "--count", "1"]);
    assert_eq!(
        out[0]["total"]["lag"], 500,
        "never committed: everything is lag"
    );

    ok(&[
        "consume",
        "--assign",
        "all",
        "--topic",
        &topic,
        "--sink",
        "sqlite",
        "-D",
        &db.url,
        "--stop-at-end",
    ]);
    let out = snapshots(&[
        "watch",
        "--topic",
        &topic,
        "--count",
        "2",
        "--interval",
        "100ms",
    ]);
    assert_eq!(out.len(), 2);
    assert_eq!(out[1]["position_source"], "kafka");
    assert_eq!(out[1]["total"]["committed"], 500);
    assert_eq!(out[1]["total"]["lag"], 0);
    assert!(out[1]["sink"].is_null());
}

#[test]
fn throttle_paces_the_sink() {
    let db = TestDb::sqlite();
    let topic = topic(1);
    ok(&[
        "produce", "--topic", &topic, "--count", "600", "--rate", "0",
    ]);
    let started = Instant::now();
    let out = ok(&[
        "consume",
        "--assign",
        "all",
        "--topic",
        &topic,
        "--sink",
        "sqlite",
        "-D",
        &db.url,
        "--stop-at-end",
        "--throttle",
        "300",
    ]);
    // 600 events at 300/s cannot be written in much under 2 s (the last batch is not waited for).
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert!(out.contains("600 inserted"), "{out}");
}

#[test]
fn an_unknown_topic_is_named() {
    let out = streamlab(&["watch", "--topic", "no-such-topic-here", "--count", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-topic-here"));
}

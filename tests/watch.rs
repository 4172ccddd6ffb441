//! `streamlab watch` piped: one JSON snapshot per interval, read against the real broker, a
//! running consume and the database it writes.

use std::time::{Duration, Instant};

use crate::support::*;

#[test]
fn json_snapshots_follow_a_running_consume_to_zero_lag() {
    let db = TestDb::sqlite();
    let topic = topic(3);
    produce(&topic, 2000).seed(31).ok();
    let consumer = streamlab("consume")
        .assign_all()
        .topic(&topic)
        .db(&db)
        .throttle(1000)
        .spawn();

    // watch reads a database that exists: wait for the consumer to create it.
    assert!(wait_until(10, || std::path::Path::new(db.path()).exists()));
    // While the throttled consumer works, the group's position moves and lag shrinks.
    let watch = streamlab("watch")
        .topic(&topic)
        .db(&db)
        .interval("300ms")
        .spawn();
    let lag = |line: &String| {
        let snapshot: serde_json::Value = serde_json::from_str(line).unwrap();
        snapshot["total"]["lag"].as_i64().unwrap()
    };
    // Snapshots up to the first at lag 0 (at most 100 of them).
    let mut seen: Vec<serde_json::Value> = Vec::new();
    let drained = wait_until(60, || {
        let lines = watch.stdout_lines();
        let upto = match lines.iter().position(|l| lag(l) == 0) {
            Some(at) => at + 1,
            None => lines.len(),
        };
        seen = lines[..upto.min(100)]
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        seen.last().is_some_and(|s| s["total"]["lag"] == 0) || seen.len() >= 100
    });
    assert!(
        drained && seen.last().unwrap()["total"]["lag"] == 0,
        "lag never reached 0: {:?}",
        seen.last()
    );
    let status = watch.terminate();
    assert!(
        status.succeeded(),
        "Ctrl-C/SIGTERM ends watch cleanly: {status:?} after {seen:?}"
    );
    assert!(consumer.terminate().succeeded());

    let last = seen.last().unwrap();
    assert_eq!(last["position_source"], "database");
    assert_eq!(last["total"]["records"], 2000);
    assert_eq!(last["total"]["committed"], 2000);
    assert_eq!(last["sink"]["rows"], 2000);
    assert_eq!(last["sink"]["dead_letters"], 0);
    assert!(last["sink"]["delay_ms"].as_i64().unwrap() >= 0);
    assert_eq!(last["partitions"].as_array().unwrap().len(), 3);
    assert_eq!(total_records(&topic), 2000);
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
    let watch = streamlab("watch").topic(&topic);
    let out = watch.clone().count(1).run().success().json_lines();
    assert_eq!(out[0]["total"]["lag"], 0);
    assert!(
        out[0]["partitions"][0]["committed"].is_null(),
        "nothing committed yet"
    );

    produce(&topic, 500).ok();
    let out = watch.clone().count(1).run().success().json_lines();
    assert_eq!(
        out[0]["total"]["lag"], 500,
        "never committed: everything is lag"
    );

    drain(&topic, &db).ok();
    let out = watch
        .count(2)
        .interval("100ms")
        .run()
        .success()
        .json_lines();
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
    produce(&topic, 600).ok();
    let started = Instant::now();
    let out = drain(&topic, &db).throttle(300).json().ok_json();
    // 600 events at 300/s cannot be written in much under 2 s (the last batch is not waited for).
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(counted(&out, "inserted"), 600, "{out}");
}

#[test]
fn an_unknown_topic_is_named() {
    streamlab("watch")
        .topic("no-such-topic-here")
        .count(1)
        .fails(1, &["no-such-topic-here"], &[]);
}

//! `streamlab topic …` against the real broker, cross-checked with librdkafka.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::support::*;

fn describe(topic: &str) -> serde_json::Value {
    streamlab("topic describe").topic(topic).json().ok_json()
}

#[test]
fn create_makes_the_partitions_and_configs_an_independent_client_sees() {
    let name = unique("create");
    let out = streamlab("topic create")
        .topic(&name)
        .partitions(4)
        .config("retention.ms=86400000")
        .ok();
    assert!(out.contains(&format!("created topic '{name}'")), "{out}");

    let seen: serde_json::Value =
        serde_json::from_str(&python("rdkafka_client.py", &["topic", &name])).unwrap();
    assert_eq!(seen["partitions"], 4);
    assert_eq!(seen["retention_ms"], "86400000");

    let described = describe(&name);
    assert_eq!(described["partitions"].as_array().unwrap().len(), 4);
    assert_eq!(described["retention_ms"], 86_400_000);
    assert_eq!(described["retention_is_default"], false);

    let listed = streamlab("topic list").json().ok_json();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == name.as_str() && t["partitions"] == 4),
        "{listed}"
    );
    // For people: a table row per topic.
    let table = streamlab("topic list").ok();
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == [name.as_str(), "4"]),
        "{table}"
    );
}

#[test]
fn an_existing_topic_is_an_error_unless_if_not_exists() {
    let name = topic(2);
    let create = streamlab("topic create").topic(&name);
    create.fails(1, &["already exists", "--if-not-exists"], &[]);

    let out = create.arg("--if-not-exists").ok();
    assert!(out.contains("already exists"), "{out}");
}

#[test]
fn retention_is_set_incrementally_and_read_back() {
    let name = unique("retention");
    streamlab("topic create")
        .topic(&name)
        .partitions(1)
        .config("cleanup.policy=delete")
        .ok();
    let retention = streamlab("topic retention").topic(&name);

    let shown = retention.ok();
    assert!(shown.contains("broker default"), "{shown}");
    assert_eq!(describe(&name)["retention_is_default"], true);

    let changed = retention.clone().args(["--set", "36h"]).ok();
    assert!(changed.contains("→ 129600000 (36h)"), "{changed}");

    let shown = retention.ok();
    assert!(
        shown.contains("129600000 (36h)") && !shown.contains("default"),
        "{shown}"
    );
    let seen: serde_json::Value =
        serde_json::from_str(&python("rdkafka_client.py", &["topic", &name])).unwrap();
    assert_eq!(seen["retention_ms"], "129600000");
    let described = describe(&name);
    assert_eq!(
        (
            &described["retention_ms"],
            &described["retention_is_default"]
        ),
        (&serde_json::json!(129_600_000), &serde_json::json!(false)),
        "{described}"
    );

    retention.clone().args(["--set", "500"]).ok();
    let shown = retention.ok();
    assert!(shown.contains("500 (500ms)"), "{shown}");
}

#[test]
fn an_unreachable_broker_fails_fast_with_its_address() {
    let started = Instant::now();
    let stderr = streamlab("topic list")
        .timeout("3s")
        .env("STREAMLAB_BROKERS", "127.0.0.1:1")
        .fails(1, &["127.0.0.1:1"], &[]);
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "one line, no backtrace: {stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));

    streamlab("produce")
        .topic("x")
        .count(1)
        .timeout("2s")
        .env("STREAMLAB_BROKERS", "127.0.0.1:1")
        .fails(1, &["127.0.0.1:1"], &[]);
}

#[test]
fn usage_errors_exit_2_with_a_reason() {
    for (cmd, needle) in [
        (streamlab("topic create").topic("bad name"), "not allowed"),
        (
            streamlab("topic create").topic("ok").partitions(0),
            "partitions",
        ),
        (
            streamlab("topic retention")
                .topic("ok")
                .args(["--set", "soon"]),
            "invalid duration",
        ),
        (streamlab("topic describe"), "--topic"),
    ] {
        cmd.fails(2, &[needle], &[]);
    }
}

#[test]
fn unknown_topics_are_named() {
    let missing = unique("missing");
    for cmd in [
        streamlab("topic describe").topic(&missing),
        streamlab("topic retention").topic(&missing),
        streamlab("produce").topic(&missing).count(1),
    ] {
        cmd.fails(1, &[&missing, "topic create"], &[]);
    }
}

#[test]
fn help_teaches_the_commands() {
    let help = streamlab("--help").ok();
    for cmd in ["topic", "produce", "consume", "check", "migrate"] {
        assert!(help.contains(cmd), "{help}");
    }
    let help = streamlab("topic create --help").ok();
    for flag in [
        "--partitions",
        "--replication-factor",
        "--config",
        "--if-not-exists",
        "--bootstrap-server",
        "STREAMLAB_BROKERS",
    ] {
        assert!(help.contains(flag), "{flag}: {help}");
    }
}

#[test]
fn config_changes_any_key_at_once_and_delete_removes_the_topic() {
    let name = unique("cfg");
    streamlab("topic create")
        .topic(&name)
        .partitions(2)
        .config("retention.ms=1000")
        .ok();
    let config = || streamlab("topic config").topic(&name);
    // The configs set on the topic itself (brokers also list their defaults).
    let own = |report: &serde_json::Value| -> BTreeMap<String, String> {
        report["configs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["is_default"] == false)
            .map(|c| {
                (
                    c["name"].as_str().unwrap().into(),
                    c["value"].as_str().unwrap().into(),
                )
            })
            .collect()
    };
    let shown = config().json().ok_json();
    assert_eq!(own(&shown)["retention.ms"], "1000");
    assert_eq!(shown["changed"], serde_json::json!([]));

    let changed = config()
        .args([
            "--set",
            "retention.ms=86400000",
            "--set",
            "cleanup.policy=delete",
        ])
        .args(["--set", "max.message.bytes=2000000"])
        .json()
        .ok_json();
    let mine = own(&changed);
    assert_eq!(mine["retention.ms"], "86400000");
    assert_eq!(mine["cleanup.policy"], "delete");
    assert_eq!(mine["max.message.bytes"], "2000000");
    assert_eq!(
        changed["changed"][0],
        serde_json::json!({"name": "retention.ms", "old": "1000", "new": "86400000"})
    );
    let seen: serde_json::Value =
        serde_json::from_str(&python("rdkafka_client.py", &["topic", &name])).unwrap();
    assert_eq!(seen["retention_ms"], "86400000");

    let out = config().args(["--delete", "max.message.bytes"]).ok();
    assert_eq!(
        out.trim(),
        format!("max.message.bytes of '{name}': 2000000 → (default)")
    );
    let after = own(&config().json().ok_json());
    assert!(!after.contains_key("max.message.bytes"), "{after:?}");
    assert_eq!(after["retention.ms"], "86400000", "other overrides kept");
    // The friendly shortcut reads the same value.
    let retention = streamlab("topic retention").topic(&name).ok();
    assert!(retention.contains("86400000 (1d)"), "{retention}");

    for (args, says) in [
        (&["--set", "retention.ms"][..], "expected KEY=VALUE"),
        (
            &["--set", "a=1", "--delete", "a"][..],
            "named more than once",
        ),
        (
            &["--set", "a=1", "--set", "a=2"][..],
            "named more than once",
        ),
        (&["--delete", ""][..], "expected a config name"),
        (&["--delete", "a=1"][..], "expected a config name"),
        (&["--format", "xml"][..], "--format"),
    ] {
        config().args(args).fails(2, &[says], &[]);
    }
    streamlab("topic config").topic("no-such-topic-y").fails(
        1,
        &["topic 'no-such-topic-y' does not exist"],
        &[],
    );

    let delete = || streamlab("topic delete").topic(&name);
    assert_eq!(delete().ok().trim(), format!("deleted topic '{name}'"));
    let gone = wait_until(30, || {
        let listed = streamlab("topic list").json().ok_json();
        !listed
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == name.as_str())
    });
    assert!(gone, "{name} is still listed");
    delete().fails(1, &["does not exist", "--if-exists"], &[]);
    let out = delete().arg("--if-exists").ok();
    assert_eq!(out.trim(), format!("topic '{name}' does not exist"));
    streamlab("topic delete").fails(2, &["--topic"], &[]);
    streamlab("topic delete")
        .topic("bad name!")
        .fails(2, &["--topic"], &[]);
}

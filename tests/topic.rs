//! `streamlab topic …` against the real broker, cross-checked with librdkafka.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn create_makes_the_partitions_and_configs_an_independent_client_sees() {
    let name = unique("create");
    let out = ok(&[
        "topic",
        "create",
        "--topic",
        &name,
        "--partitions",
        "4",
        "--config",
        "retention.ms=86400000",
    ]);
    assert!(out.contains(&format!("created topic '{name}'")), "{out}");

    let seen: serde_json::Value =
        serde_json::from_str(&python("rdkafka_client.py", &["topic", &name])).unwrap();
    assert_eq!(seen["partitions"], 4);
    assert_eq!(seen["retention_ms"], "86400000");

    let described: serde_json::Value = serde_json::from_str(&ok(&[
        "topic", "describe", "--topic", &name, "--format", "json",
    ]))
    .unwrap();
    assert_eq!(described["partitions"].as_array().unwrap().len(), 4);
    assert_eq!(described["retention_ms"], 86_400_000);
    assert_eq!(described["retention_is_default"], false);

    let listed = ok(&["topic", "list"]);
    assert!(
        listed
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == [name.as_str(), "4"]),
        "{listed}"
    );
}

#[test]
fn an_existing_topic_is_an_error_unless_if_not_exists() {
    let name = topic(2);
    let again = streamlab(&["topic", "create", "--topic", &name]);
    assert_eq!(again.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("already exists") && stderr.contains("--if-not-exists"),
        "{stderr}"
    );

    let out = ok(&["topic", "create", "--topic", &name, "--if-not-exists"]);
    assert!(out.contains("already exists"), "{out}");
}

#[test]
fn retention_is_set_incrementally_and_read_back() {
    let name = unique("retention");
    ok(&[
        "topic",
        "create",
        "--topic",
        &name,
        "--partitions",
        "1",
        "--config",
        "cleanup.policy=delete",
    ]);

    let shown = ok(&["topic", "retention", "--topic", &name]);
    assert!(shown.contains("broker default"), "{shown}");

    let changed = ok(&["topic", "retention", "--topic", &name, "--set", "36h"]);
    assert!(changed.contains("→ 129600000 (36h)"), "{changed}");

    let shown = ok(&["topic", "retention", "--topic", &name]);
    assert!(
        shown.contains("129600000 (36h)") && !shown.contains("default"),
        "{shown}"
    );
    let seen: serde_json::Value =
        serde_json::from_str(&python("rdkafka_client.py", &["topic", &name])).unwrap();
    assert_eq!(seen["retention_ms"], "129600000");

    ok(&["topic", "retention", "--topic", &name, "--set", "500"]);
    let shown = ok(&["topic", "retention", "--topic", &name]);
    assert!(shown.contains("500 (500ms)"), "{shown}");
}

#[test]
fn an_unreachable_broker_fails_fast_with_its_address() {
    let started = Instant::now();
    let out = command(&["topic", "list", "--timeout", "3s"])
        .env("STREAMLAB_BROKERS", "127.0.0.1:1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("127.0.0.1:1"), "{stderr}");
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "one line, no backtrace: {stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));

    let out = command(&["produce", "--topic", "x", "--count", "1", "--timeout", "2s"])
        .env("STREAMLAB_BROKERS", "127.0.0.1:1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("127.0.0.1:1"));
}

#[test]
fn usage_errors_exit_2_with_a_reason() {
    for (args, needle) in [
        (
            vec!["topic", "create", "--topic", "bad name"],
            "not allowed",
        ),
        (
            vec!["topic", "create", "--topic", "ok", "--partitions", "0"],
            "partitions",
        ),
        (
            vec!["topic", "retention", "--topic", "ok", "--set", "soon"],
            "invalid duration",
        ),
        (vec!["topic", "describe"], "--topic"),
    ] {
        let out = streamlab(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

#[test]
fn unknown_topics_are_named() {
    let missing = unique("missing");
    for args in [
        vec!["topic", "describe", "--topic", missing.as_str()],
        vec!["topic", "retention", "--topic", missing.as_str()],
        vec!["produce", "--topic", missing.as_str(), "--count", "1"],
    ] {
        let out = streamlab(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&missing) && stderr.contains("topic create"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn help_teaches_the_commands() {
    let help = ok(&["--help"]);
    for cmd in ["topic", "produce", "consume", "check", "migrate"] {
        assert!(help.contains(cmd), "{help}");
    }
    let help = ok(&["topic", "create", "--help"]);
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

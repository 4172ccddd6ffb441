//! The operator's toolkit against the real broker and both databases: `offsets reset`,
//! `group list|describe`, `topic delete|config`, `dlq list|show|replay|purge` — exact outcomes,
//! refusals and usage errors.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use serde_json::Value;

fn json(args: &[&str]) -> Value {
    serde_json::from_str(&ok(args)).unwrap()
}

/// `offsets reset … --format json` (plus `extra`): the plan, as partition → (current, new).
fn reset(db: &TestDb, group: &str, topic: &str, extra: &[&str]) -> BTreeMap<i64, (Value, i64)> {
    let mut args = vec![
        "offsets", "reset", "--group", group, "--topic", topic, "-D", &db.url, "--format", "json",
    ];
    args.extend_from_slice(extra);
    let plan = json(&args);
    assert_eq!(plan["executed"], extra.contains(&"--execute"), "{plan}");
    plan["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let current = p["current"].clone();
            (
                p["partition"].as_i64().unwrap(),
                (current, p["new"].as_i64().unwrap()),
            )
        })
        .collect()
}

/// Kafka's committed offsets of `group` for `topic`, read by librdkafka.
fn kafka_committed(group: &str, topic: &str) -> BTreeMap<i64, i64> {
    let seen: BTreeMap<String, i64> =
        serde_json::from_str(&python("rdkafka_client.py", &["committed", group, topic])).unwrap();
    seen.into_iter()
        .map(|(p, o)| (p.parse().unwrap(), o))
        .filter(|(_, o)| *o >= 0)
        .collect()
}

fn consume(db: &TestDb, topic: &str, group: &str) -> Value {
    consume_json(&brokers(), topic, &db.url, &["--group", group])
}

fn sum(offsets: &BTreeMap<i64, i64>) -> i64 {
    offsets.values().sum()
}

#[test]
fn offsets_reset_prints_a_plan_then_moves_the_database_and_the_kafka_group() {
    for db in TestDb::both() {
        let topic = topic(3);
        let group = unique("g");
        // One record per batch: tansu's in-memory engine cannot serve a batch from its middle
        // (see the Broker notes), and this test moves offsets to any record.
        ok(&[
            "produce",
            "--topic",
            &topic,
            "--count",
            "300",
            "--rate",
            "0",
            "--seed",
            "11",
            "--batch-bytes",
            "1",
        ]);
        assert_eq!(consume(&db, &topic, &group)["inserted"], 300);
        let ends = end_offsets(&topic);
        assert_eq!(db.stored_offsets(&topic), ends);

        // A dry run changes nothing.
        let plan = reset(&db, &group, &topic, &["--to-earliest"]);
        for (p, end) in &ends {
            assert_eq!(plan[p], (Value::from(*end), 0), "{}", db.sink);
        }
        assert_eq!(db.stored_offsets(&topic), ends, "dry run");
        assert_eq!(kafka_committed(&group, &topic), ends, "dry run");

        // Executed: the database, then the Kafka group; the replay counts as duplicates.
        reset(&db, &group, &topic, &["--to-earliest", "--execute"]);
        let zeros: BTreeMap<i64, i64> = ends.keys().map(|&p| (p, 0)).collect();
        assert_eq!(db.stored_offsets(&topic), zeros);
        assert_eq!(kafka_committed(&group, &topic), zeros);
        let again = consume(&db, &topic, &group);
        assert_eq!(
            (&again["inserted"], &again["duplicates"]),
            (&0.into(), &300.into())
        );
        assert_eq!(db.stored_offsets(&topic), ends);

        // One partition back by 10.
        let plan = reset(
            &db,
            &group,
            &topic,
            &["--shift-by", "-10", "--partition", "1", "--execute"],
        );
        assert_eq!(plan.keys().copied().collect::<Vec<_>>(), [1]);
        assert_eq!(plan[&1], (Value::from(ends[&1]), ends[&1] - 10));
        let notes = json(&[
            "offsets",
            "reset",
            "--group",
            &group,
            "--topic",
            &topic,
            "-D",
            &db.url,
            "--shift-by",
            "-10",
            "--format",
            "json",
        ]);
        for p in notes["partitions"].as_array().unwrap() {
            assert!(p.get("note").is_none(), "{notes}");
        }
        let mut expected = ends.clone();
        expected.insert(1, ends[&1] - 10);
        assert_eq!(db.stored_offsets(&topic), expected);
        assert_eq!(kafka_committed(&group, &topic), expected);
        assert_eq!(consume(&db, &topic, &group)["duplicates"], 10);

        // A shift past the end is kept at the end, and says so.
        let out = ok(&[
            "offsets",
            "reset",
            "--group",
            &group,
            "--topic",
            &topic,
            "-D",
            &db.url,
            "--shift-by",
            "+1000",
        ]);
        assert!(out.contains("past the log end"), "{out}");
        assert!(out.contains("dry run"), "{out}");

        // An exact offset, then the end.
        let half = ends[&0] / 2;
        let half_text = half.to_string();
        reset(
            &db,
            &group,
            &topic,
            &["--to-offset", &half_text, "--partition", "0", "--execute"],
        );
        assert_eq!(db.stored_offsets(&topic)[&0], half);
        reset(&db, &group, &topic, &["--to-latest", "--execute"]);
        assert_eq!(db.stored_offsets(&topic), ends);
        assert_eq!(kafka_committed(&group, &topic), ends);
    }
}

#[test]
fn offsets_reset_to_a_datetime_rewinds_to_the_first_record_written_since() {
    for db in TestDb::both() {
        let topic = topic(2);
        let group = unique("g");
        produce_and_wait(&brokers(), &topic, 200, 21);
        let first = end_offsets(&topic);
        std::thread::sleep(Duration::from_millis(1100));
        let at = time::OffsetDateTime::now_utc();
        let at = at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        produce_and_wait(&brokers(), &topic, 200, 22);
        let ends = end_offsets(&topic);
        assert_eq!(consume(&db, &topic, &group)["inserted"], 400);

        let plan = reset(&db, &group, &topic, &["--to-datetime", &at, "--execute"]);
        for (p, end) in &ends {
            assert_eq!(plan[p], (Value::from(*end), first[p]), "{} {at}", db.sink);
        }
        assert_eq!(db.stored_offsets(&topic), first);
        assert_eq!(kafka_committed(&group, &topic), first);
        let replayed = consume(&db, &topic, &group);
        assert_eq!(replayed["duplicates"], sum(&ends) - sum(&first));
        assert_eq!(replayed["inserted"], 0);

        // A time after every record: the end. Before every record (none was ever removed):
        // the start.
        let later = "2999-01-01T00:00:00Z";
        let plan = reset(&db, &group, &topic, &["--to-datetime", later]);
        assert!(plan.iter().all(|(p, (_, new))| *new == ends[p]), "{plan:?}");
        let plan = reset(
            &db,
            &group,
            &topic,
            &["--to-datetime", "2001-01-01T00:00:00Z"],
        );
        assert!(plan.values().all(|(_, new)| *new == 0), "{plan:?}");
    }
}

#[test]
fn offsets_reset_refuses_what_it_cannot_do_and_changes_nothing() {
    let db = TestDb::sqlite();
    let topic = topic(3);
    let group = unique("g");
    produce_and_wait(&brokers(), &topic, 90, 31);
    // Partition 0 only: 1 and 2 have no stored offset.
    consume_json(
        &brokers(),
        &topic,
        &db.url,
        &["--group", &group, "--partition", "0"],
    );
    let stored = db.stored_offsets(&topic);
    assert_eq!(stored.keys().copied().collect::<Vec<_>>(), [0]);
    let base = [
        "offsets", "reset", "--group", &group, "--topic", &topic, "-D", &db.url,
    ];
    let with = |extra: &[&str]| -> Vec<String> {
        base.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let refuse = |extra: &[&str], says: &[&str]| {
        let args = with(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fails(&args, 1, says, &[]);
        assert_eq!(
            db.stored_offsets(&topic),
            stored,
            "{extra:?} changed nothing"
        );
    };

    refuse(
        &["--to-offset", "100000", "--execute"],
        &["outside its log"],
    );
    refuse(
        &["--shift-by", "-1", "--execute"],
        &["partition 1: no stored offset to shift from"],
    );
    refuse(
        &["--to-earliest", "--partition", "7"],
        &["has no partition 7"],
    );
    let other = unique("nobody");
    fails(
        &[
            "offsets",
            "reset",
            "--group",
            &other,
            "--topic",
            &topic,
            "-D",
            &db.url,
            "--to-earliest",
        ],
        1,
        &[&format!(
            "group '{other}' has no offsets for topic '{topic}'"
        )],
        &[],
    );
    fails(
        &[
            "offsets",
            "reset",
            "--group",
            &group,
            "--topic",
            "no-such-topic-x",
            "-D",
            &db.url,
            "--to-earliest",
        ],
        1,
        &["topic 'no-such-topic-x' does not exist"],
        &[],
    );

    // A live member: refused, naming it.
    let mut member = spawn(&[
        "consume", "--topic", &topic, "-D", &db.url, "--group", &group,
    ]);
    let member_id = {
        let mut id = None;
        assert!(wait_until(30, || {
            let described = json(&["group", "describe", "--group", &group, "--format", "json"]);
            id = described["members"][0]["member_id"]
                .as_str()
                .map(String::from);
            id.is_some()
        }));
        id.unwrap()
    };
    // It reads partitions 1 and 2 from their start; once it has, nothing moves.
    let ends = end_offsets(&topic);
    assert!(wait_until(30, || db.stored_offsets(&topic) == ends));
    let stored = db.stored_offsets(&topic);
    let args = with(&["--to-earliest", "--execute"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    fails(
        &args,
        1,
        &["1 live member(s)", &member_id, "stop them first"],
        &[],
    );
    assert_eq!(db.stored_offsets(&topic), stored);
    signal(&member, "TERM");
    assert!(member.wait().unwrap().success());
    let plan = reset(&db, &group, &topic, &["--to-earliest", "--execute"]);
    assert_eq!(plan.len(), 3);
    assert!(db.stored_offsets(&topic).values().all(|&o| o == 0));

    // Bad input to every flag: exit 2 before anything connects.
    for (extra, says) in [
        (&[][..], "required arguments were not provided"),
        (&["--to-earliest", "--to-latest"][..], "cannot be used with"),
        (
            &["--to-datetime", "yesterday"][..],
            "not an RFC 3339 date and time",
        ),
        (
            &["--to-datetime", "2026-13-01T00:00:00Z"][..],
            "not an RFC 3339",
        ),
        (&["--to-offset", "-1"][..], "--to-offset"),
        (&["--to-offset", "ten"][..], "--to-offset"),
        (&["--shift-by", "back"][..], "--shift-by"),
        (&["--to-earliest", "--partition", "-1"][..], "--partition"),
        (&["--to-earliest", "--partition", "x"][..], "--partition"),
        (&["--to-earliest", "--format", "xml"][..], "--format"),
        (
            &["--to-earliest", "--sink", "pg"][..],
            "does not fit the database URL",
        ),
    ] {
        let args = with(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fails(&args, 2, &[says], &[]);
    }
    fails(
        &[
            "offsets",
            "reset",
            "--topic",
            &topic,
            "-D",
            &db.url,
            "--to-earliest",
        ],
        2,
        &["--group"],
        &[],
    );
    fails(
        &[
            "offsets",
            "reset",
            "--group",
            &group,
            "-D",
            &db.url,
            "--to-earliest",
        ],
        2,
        &["--topic"],
        &[],
    );
    fails(
        &[
            "offsets",
            "reset",
            "--group",
            &group,
            "--topic",
            "bad name!",
            "-D",
            &db.url,
            "--to-earliest",
        ],
        2,
        &["--topic"],
        &[],
    );
    fails(
        &[
            "offsets",
            "reset",
            "--group",
            &group,
            "--topic",
            &topic,
            "--to-earliest",
        ],
        2,
        &["say which database"],
        &[],
    );
}

#[test]
fn group_list_and_describe_show_kafkas_view_and_the_database_beside_it() {
    for db in TestDb::both() {
        let topic = topic(2);
        let group = unique("g");
        produce_and_wait(&brokers(), &topic, 100, 41);
        consume(&db, &topic, &group);
        let ends = end_offsets(&topic);

        let listed = json(&["group", "list", "--format", "json"]);
        let mine: Vec<&Value> = listed
            .as_array()
            .unwrap()
            .iter()
            .filter(|g| g["group"] == group.as_str())
            .collect();
        assert_eq!(mine.len(), 1, "{listed}");
        assert_eq!(mine[0]["members"], 0);
        assert_eq!(mine[0]["state"], "Empty");

        // 50 more: lag from Kafka alone.
        produce_and_wait(&brokers(), &topic, 50, 42);
        let now = end_offsets(&topic);
        let described = json(&["group", "describe", "--group", &group, "--format", "json"]);
        assert_eq!(described["members"].as_array().unwrap().len(), 0);
        assert!(described.get("database").is_none());
        let t = &described["topics"][0];
        assert_eq!(t["topic"], topic.as_str());
        assert_eq!(t["total_lag"], 50);
        for p in t["partitions"].as_array().unwrap() {
            let id = p["partition"].as_i64().unwrap();
            assert_eq!(p["committed"], ends[&id]);
            assert_eq!(p["log_end"], now[&id]);
            assert_eq!(p["lag"], now[&id] - ends[&id]);
            assert!(p.get("database_offset").is_none());
        }

        // Beside the database: agreement, then a disagreement flagged.
        let beside = json(&[
            "group", "describe", "--group", &group, "-D", &db.url, "--format", "json",
        ]);
        assert_eq!(beside["disagreements"], 0);
        db.exec(&format!(
            "UPDATE streamlab_offsets SET next_offset = 1 WHERE topic = '{topic}' AND kafka_partition = 0"
        ));
        let beside = json(&[
            "group", "describe", "--group", &group, "-D", &db.url, "--format", "json",
        ]);
        assert_eq!(beside["disagreements"], 1);
        let p0 = &beside["topics"][0]["partitions"][0];
        assert_eq!(
            (&p0["database_offset"], &p0["agrees"]),
            (&1.into(), &false.into())
        );
        assert_eq!(p0["committed"], ends[&0]);
        let table = ok(&["group", "describe", "--group", &group, "-D", &db.url]);
        assert!(table.contains("disagree"), "{table}");

        // A member: who it is and what it holds (the database's record where the broker does
        // not report assignments).
        let mut member = spawn(&[
            "consume", "--topic", &topic, "-D", &db.url, "--group", &group,
        ]);
        let mut seen = Value::Null;
        assert!(
            wait_until(30, || {
                seen = json(&[
                    "group", "describe", "--group", &group, "-D", &db.url, "--format", "json",
                ]);
                seen["members"][0]["partitions"][&topic] == serde_json::json!([0, 1])
            }),
            "{seen}"
        );
        assert_eq!(seen["members"].as_array().unwrap().len(), 1);
        assert_eq!(seen["state"], "Stable");
        let member_id = seen["members"][0]["member_id"]
            .as_str()
            .unwrap()
            .to_string();
        for p in seen["topics"][0]["partitions"].as_array().unwrap() {
            assert_eq!(p["member"], member_id.as_str());
        }
        signal(&member, "TERM");
        assert!(member.wait().unwrap().success());
    }

    let nobody = unique("nobody");
    fails(
        &["group", "describe", "--group", &nobody],
        1,
        &[&format!("consumer group '{nobody}' does not exist")],
        &[],
    );
    fails(&["group", "describe"], 2, &["--group"], &[]);
    fails(
        &["group", "describe", "--group", "g", "--format", "xml"],
        2,
        &["--format"],
        &[],
    );
    fails(
        &["group", "describe", "--group", "g", "-D", "mysql://x"],
        2,
        &["not a database"],
        &[],
    );
    fails(&["group", "list", "--format", "xml"], 2, &["--format"], &[]);
}

#[test]
fn topic_config_changes_any_key_and_topic_delete_removes_the_topic() {
    let name = unique("cfg");
    ok(&[
        "topic",
        "create",
        "--topic",
        &name,
        "--partitions",
        "2",
        "--config",
        "retention.ms=1000",
    ]);
    let own = |report: &Value| -> BTreeMap<String, String> {
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
    let shown = json(&["topic", "config", "--topic", &name, "--format", "json"]);
    assert_eq!(own(&shown)["retention.ms"], "1000");
    assert_eq!(shown["changed"], serde_json::json!([]));

    let changed = json(&[
        "topic",
        "config",
        "--topic",
        &name,
        "--set",
        "retention.ms=86400000",
        "--set",
        "cleanup.policy=delete",
        "--set",
        "max.message.bytes=2000000",
        "--format",
        "json",
    ]);
    let mine = own(&changed);
    assert_eq!(mine["retention.ms"], "86400000");
    assert_eq!(mine["cleanup.policy"], "delete");
    assert_eq!(mine["max.message.bytes"], "2000000");
    assert_eq!(
        changed["changed"][0],
        serde_json::json!({"name": "retention.ms", "old": "1000", "new": "86400000"})
    );
    let seen: Value =
        serde_json::from_str(&python("rdkafka_client.py", &["topic", &name])).unwrap();
    assert_eq!(seen["retention_ms"], "86400000");

    let out = ok(&[
        "topic",
        "config",
        "--topic",
        &name,
        "--delete",
        "max.message.bytes",
    ]);
    assert!(
        out.contains("max.message.bytes of '") && out.contains("2000000 → (default)"),
        "{out}"
    );
    let after = own(&json(&[
        "topic", "config", "--topic", &name, "--format", "json",
    ]));
    assert!(!after.contains_key("max.message.bytes"), "{after:?}");
    assert_eq!(after["retention.ms"], "86400000", "other overrides kept");
    // The friendly shortcut reads the same value.
    assert!(ok(&["topic", "retention", "--topic", &name]).contains("86400000 (1d)"));

    for (args, says) in [
        (vec!["--set", "retention.ms"], "expected KEY=VALUE"),
        (
            vec!["--set", "a=1", "--delete", "a"],
            "named more than once",
        ),
        (vec!["--set", "a=1", "--set", "a=2"], "named more than once"),
        (vec!["--delete", ""], "expected a config name"),
        (vec!["--delete", "a=1"], "expected a config name"),
        (vec!["--format", "xml"], "--format"),
    ] {
        let mut full = vec!["topic", "config", "--topic", name.as_str()];
        full.extend(args);
        fails(&full, 2, &[says], &[]);
    }
    fails(
        &["topic", "config", "--topic", "no-such-topic-y"],
        1,
        &["does not exist"],
        &[],
    );

    ok(&["topic", "delete", "--topic", &name]);
    assert!(wait_until(30, || {
        !ok(&["topic", "list"])
            .lines()
            .any(|l| l.split_whitespace().next() == Some(name.as_str()))
    }));
    fails(
        &["topic", "delete", "--topic", &name],
        1,
        &["does not exist", "--if-exists"],
        &[],
    );
    let out = ok(&["topic", "delete", "--topic", &name, "--if-exists"]);
    assert!(out.contains("does not exist"), "{out}");
    fails(&["topic", "delete"], 2, &["--topic"], &[]);
    fails(
        &["topic", "delete", "--topic", "bad name!"],
        2,
        &["--topic"],
        &[],
    );
}

/// Ids of a `dlq list --format json`, in its order.
fn listed(db: &TestDb, extra: &[&str]) -> Vec<i64> {
    let mut args = vec!["dlq", "list", "-D", &db.url, "--format", "json"];
    args.extend_from_slice(extra);
    let listing = json(&args);
    let ids: Vec<i64> = listing["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_i64().unwrap())
        .collect();
    assert_eq!(listing["count"], ids.len());
    ids
}

fn replay(db: &TestDb, extra: &[&str]) -> Value {
    let mut args = vec!["dlq", "replay", "-D", &db.url, "--format", "json"];
    args.extend_from_slice(extra);
    json(&args)
}

#[test]
fn dlq_lists_shows_replays_exactly_once_and_purges_on_both_databases() {
    for db in TestDb::both() {
        let topic = topic(1);
        // Offsets 0..4: four sales events larger than 100 bytes; 4: not JSON; 5: no value.
        produce_and_wait(&brokers(), &topic, 4, 51);
        produce_raw(&topic, 0, b"bad", vec![Some(b"not json".to_vec()), None]);
        let consumed = consume_json(&brokers(), &topic, &db.url, &["--max-event-bytes", "100"]);
        assert_eq!(consumed["dead_lettered"], 6);

        assert_eq!(listed(&db, &[]), [6, 5, 4, 3, 2, 1]);
        assert_eq!(listed(&db, &["--limit", "2"]), [6, 5]);
        assert_eq!(listed(&db, &["--reason", "not a sales event"]), [5]);
        assert_eq!(
            listed(&db, &["--reason", "larger than --max-event-bytes 100"]),
            [4, 3, 2, 1]
        );
        assert_eq!(
            listed(&db, &["--topic", &topic, "--since", "1h"]),
            [6, 5, 4, 3, 2, 1]
        );
        assert_eq!(
            listed(&db, &["--since", "2999-01-01T00:00:00Z"]),
            Vec::<i64>::new()
        );
        assert_eq!(listed(&db, &["--topic", "other-topic"]), Vec::<i64>::new());
        assert_eq!(listed(&db, &["--id", "2,5"]), [5, 2]);

        let shown = json(&[
            "dlq", "show", "-D", &db.url, "--id", "5", "--format", "json",
        ]);
        assert_eq!(shown["payload"]["utf8"], "not json");
        assert_eq!(shown["payload"]["hex"], "6e6f74206a736f6e");
        assert_eq!(shown["key"]["utf8"], "bad");
        assert_eq!(
            (&shown["partition"], &shown["offset"]),
            (&0.into(), &4.into())
        );
        let shown = json(&[
            "dlq", "show", "-D", &db.url, "--id", "6", "--format", "json",
        ]);
        assert_eq!(shown["payload"], Value::Null);
        assert!(
            shown["error"].as_str().unwrap().contains("null payload"),
            "{shown}"
        );
        let text = ok(&["dlq", "show", "-D", &db.url, "--id", "5"]);
        assert!(text.contains("not json") && text.contains("bad"), "{text}");
        fails(
            &["dlq", "show", "-D", &db.url, "--id", "99"],
            1,
            &["no dead letter with id 99"],
            &[],
        );

        // Today's rules still refuse them: nothing moves.
        let same = replay(&db, &["--id", "1", "--max-event-bytes", "100"]);
        assert_eq!(same["replayed"], serde_json::json!([]));
        assert_eq!(same["still_failing"][0]["id"], 1);
        assert_eq!(listed(&db, &[]).len(), 6);

        // The default limit lets the four events in, exactly once.
        let done = replay(&db, &[]);
        assert_eq!(done["replayed"], serde_json::json!([1, 2, 3, 4]));
        assert_eq!(
            done["stored"],
            serde_json::json!({"inserted": 4, "duplicates": 0})
        );
        let failing: Vec<i64> = done["still_failing"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["id"].as_i64().unwrap())
            .collect();
        assert_eq!(failing, [5, 6]);
        assert_eq!(db.sales_ids(), seeded_ids(51, 4));
        assert_eq!(listed(&db, &[]), [6, 5]);
        let again = replay(&db, &[]);
        assert_eq!(again["replayed"], serde_json::json!([]));
        assert_eq!(
            again["stored"],
            serde_json::json!({"inserted": 0, "duplicates": 0})
        );
        assert_eq!(db.sales_ids().len(), 4);

        // The same events produced again and dead-lettered: replayed, they are duplicates.
        produce_and_wait(&brokers(), &topic, 4, 51);
        consume_json(&brokers(), &topic, &db.url, &["--max-event-bytes", "100"]);
        assert_eq!(listed(&db, &[]), [10, 9, 8, 7, 6, 5]);
        let dup = replay(&db, &["--reason", "larger than"]);
        assert_eq!(dup["replayed"], serde_json::json!([7, 8, 9, 10]));
        assert_eq!(
            dup["stored"],
            serde_json::json!({"inserted": 0, "duplicates": 4})
        );

        // The raw record re-produced, key and all, to another topic; its letter is gone.
        let fixed = common::topic(1);
        let out = replay(&db, &["--id", "5", "--to-topic", &fixed]);
        assert_eq!(out["replayed"], serde_json::json!([5]));
        let records = read_back_raw(&fixed);
        assert_eq!(
            records,
            [(Some("bad".to_string()), Some("not json".to_string()))]
        );
        assert_eq!(listed(&db, &[]), [6]);

        // Purge: what failed before a moment goes, what failed after stays.
        std::thread::sleep(Duration::from_millis(1100));
        let cut = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        produce_raw(&topic, 0, b"late", vec![Some(b"{\"late\": true}".to_vec())]);
        consume_json(&brokers(), &topic, &db.url, &[]);
        assert_eq!(listed(&db, &[]), [11, 6]);
        let purged = json(&[
            "dlq", "purge", "-D", &db.url, "--before", &cut, "--format", "json",
        ]);
        assert_eq!(
            (&purged["purged"], &purged["ids"]),
            (&1.into(), &serde_json::json!([6]))
        );
        assert_eq!(listed(&db, &[]), [11]);
        let purged = json(&[
            "dlq", "purge", "-D", &db.url, "--before", &cut, "--format", "json",
        ]);
        assert_eq!(purged["purged"], 0);
        let out = ok(&[
            "dlq",
            "purge",
            "-D",
            &db.url,
            "--before",
            "2999-01-01T00:00:00Z",
            "--reason",
            "not a sales",
        ]);
        assert_eq!(out.trim(), "purged 1 dead letter(s): ids 11");
        assert_eq!(listed(&db, &[]), Vec::<i64>::new());
    }

    let db = TestDb::sqlite();
    fails(&["dlq", "list", "-D", &db.url], 1, &["no such file"], &[]);
    for args in [
        vec!["dlq", "list"],
        vec!["dlq", "list", "-D", &db.url, "--since", "soonish"],
        vec!["dlq", "list", "-D", &db.url, "--limit", "0"],
        vec!["dlq", "list", "-D", &db.url, "--id", "x"],
        vec!["dlq", "list", "-D", &db.url, "--topic", "bad name!"],
        vec!["dlq", "show", "-D", &db.url],
        vec!["dlq", "show", "-D", &db.url, "--id", "0"],
        vec!["dlq", "show", "-D", &db.url, "--id", "-3"],
        vec!["dlq", "replay", "-D", &db.url, "--to-topic", "bad name!"],
        vec![
            "dlq",
            "replay",
            "-D",
            &db.url,
            "--to-topic",
            "t",
            "--kind",
            "sensor",
        ],
        vec!["dlq", "replay", "-D", &db.url, "--max-event-bytes", "-1"],
        vec!["dlq", "purge", "-D", &db.url],
        vec!["dlq", "purge", "-D", &db.url, "--before", "last tuesday"],
        vec![
            "dlq", "purge", "-D", &db.url, "--before", "1h", "--format", "xml",
        ],
    ] {
        fails(&args, 2, &[], &[]);
    }
}

/// Every record of `topic` as (key, value) text, read with librdkafka.
fn read_back_raw(topic: &str) -> Vec<(Option<String>, Option<String>)> {
    python("rdkafka_client.py", &["read", topic])
        .lines()
        .map(|l| {
            let r: Value = serde_json::from_str(l).unwrap();
            (
                r["key"].as_str().map(String::from),
                r["value"].as_str().map(String::from),
            )
        })
        .collect()
}

#[test]
fn every_new_command_explains_itself() {
    for command in [
        &["offsets", "reset"][..],
        &["group", "list"][..],
        &["group", "describe"][..],
        &["topic", "delete"][..],
        &["topic", "config"][..],
        &["dlq", "list"][..],
        &["dlq", "show"][..],
        &["dlq", "replay"][..],
        &["dlq", "purge"][..],
    ] {
        let mut args = command.to_vec();
        args.push("--help");
        let out = ok(&args);
        assert!(out.contains("Usage: streamlab"), "{command:?}: {out}");
    }
}

fn rfc3339_now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// On tansu's durable (SQLite) engine, as `just broker` runs it: retention really removes records,
/// and the broker cannot describe a group it stored, so the database's record of the members
/// decides.
#[test]
fn offsets_reset_refuses_a_time_retention_removed_and_members_the_database_recorded() {
    let broker = Tansu::durable();
    let b = broker.address();
    let db = TestDb::sqlite();
    let group = unique("g");

    // Records before the log start were removed: a time before what is left is refused.
    let topic = topic_via(
        &b,
        "expire",
        1,
        &["retention.ms=10000", "cleanup.policy=delete"],
    );
    let before = rfc3339_now();
    std::thread::sleep(Duration::from_millis(1100));
    produce_and_wait(&b, &topic, 50, 61);
    assert!(
        wait_until(60, || offsets_via(&b, &topic)[&0] == (50, 50)),
        "retention never removed the records: {:?}",
        offsets_via(&b, &topic)
    );
    produce_and_wait(&b, &topic, 50, 62);
    assert_eq!(
        consume_json(&b, &topic, &db.url, &["--group", &group])["inserted"],
        50
    );
    let stored = db.stored_offsets(&topic);
    assert_eq!(stored[&0], 100);
    fails(
        &[
            "offsets",
            "reset",
            "-b",
            &b,
            "--group",
            &group,
            "--topic",
            &topic,
            "-D",
            &db.url,
            "--to-datetime",
            &before,
            "--execute",
        ],
        1,
        &[
            "partition 0",
            "before its log start",
            "records before offset 50 were removed",
            "--to-earliest",
        ],
        &[],
    );
    assert_eq!(db.stored_offsets(&topic), stored);

    // A live member the broker cannot describe: the database's record names it.
    let topic = topic_via(&b, "kept", 2, &[]);
    produce_and_wait(&b, &topic, 40, 63);
    let mut member = spawn(&[
        "consume", "-b", &b, "--topic", &topic, "-D", &db.url, "--group", &group,
    ]);
    let recorded = || {
        db.lines(&format!(
            "SELECT member_id FROM streamlab_members WHERE topic = '{topic}'"
        ))
    };
    assert!(wait_until(30, || recorded().len() == 1));
    let member_id = recorded()[0].clone();
    let ends = end_offsets_via(&b, &topic);
    assert!(wait_until(30, || db.stored_offsets(&topic) == ends));
    let reset_all = [
        "offsets",
        "reset",
        "-b",
        &b,
        "--group",
        &group,
        "--topic",
        &topic,
        "-D",
        &db.url,
        "--to-earliest",
        "--execute",
        "--format",
        "json",
    ];
    fails(
        &reset_all,
        1,
        &["recorded in the database", &member_id, "stop them first"],
        &[],
    );
    assert_eq!(db.stored_offsets(&topic), ends);
    signal(&member, "TERM");
    assert!(member.wait().unwrap().success());
    assert!(
        recorded().is_empty(),
        "a member that leaves deletes its row"
    );
    ok(&reset_all);
    assert!(db.stored_offsets(&topic).values().all(|&o| o == 0));
    let replayed = consume_json(&b, &topic, &db.url, &["--group", &group]);
    assert_eq!(replayed["duplicates"], 40);
}

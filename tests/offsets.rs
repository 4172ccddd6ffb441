//! `streamlab offsets reset`: the plan, the database's offsets moved through the fence and
//! mirrored to the Kafka group (read back by librdkafka), replays counted as duplicates, and
//! every refusal — live members, an unknown group, a time retention removed, bad input.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

/// `offsets reset --group G --topic T --sink S -D URL --format json`; add the target and
/// `.execute()`.
fn reset(db: &TestDb, group: &str, topic: &str) -> Cmd {
    streamlab("offsets reset")
        .group(group)
        .topic(topic)
        .db(db)
        .json()
}

/// A plan's partitions: partition → (current, new).
fn moves(plan: &Value) -> BTreeMap<i64, (Value, i64)> {
    plan["partitions"]
        .as_array()
        .unwrap_or_else(|| panic!("not a plan: {plan}"))
        .iter()
        .map(|p| {
            (
                p["partition"].as_i64().unwrap(),
                (p["current"].clone(), p["new"].as_i64().unwrap()),
            )
        })
        .collect()
}

/// `consume --group G --stop-at-end --format json` into `db`: its summary.
fn consume(db: &TestDb, topic: &str, group: &str) -> Value {
    consume_json(&brokers(), topic, &db.url)
        .group(group)
        .ok_json()
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

#[test]
fn a_plan_is_printed_then_executed_into_the_database_and_the_kafka_group() {
    for db in TestDb::both() {
        let topic = topic(3);
        let group = unique("g");
        // One record per batch: tansu's in-memory engine cannot serve a batch from its middle
        // (docs/broker-notes.md), and this test moves offsets to any record.
        produce(&topic, 300)
            .seed(11)
            .args(["--batch-bytes", "1"])
            .ok();
        assert_eq!(consume(&db, &topic, &group)["inserted"], 300);
        let ends = end_offsets(&topic);
        assert_eq!(db.stored_offsets(&topic), ends);

        // A dry run changes nothing.
        let plan = reset(&db, &group, &topic).arg("--to-earliest").ok_json();
        assert_eq!(plan["executed"], false);
        let planned = moves(&plan);
        for (p, end) in &ends {
            assert_eq!(planned[p], (Value::from(*end), 0), "{}", db.sink);
        }
        assert_eq!(db.stored_offsets(&topic), ends, "dry run");
        assert_eq!(committed_in_kafka(&group, &topic), ends, "dry run");

        // Executed: the database, then the Kafka group; the replay counts as duplicates.
        let plan = reset(&db, &group, &topic)
            .arg("--to-earliest")
            .execute()
            .ok_json();
        assert_eq!(plan["executed"], true);
        let zeros: BTreeMap<i64, i64> = ends.keys().map(|&p| (p, 0)).collect();
        assert_eq!(db.stored_offsets(&topic), zeros);
        assert_eq!(committed_in_kafka(&group, &topic), zeros);
        let again = consume(&db, &topic, &group);
        assert_eq!(
            (counted(&again, "inserted"), counted(&again, "duplicates")),
            (0, 300)
        );
        assert_eq!(db.stored_offsets(&topic), ends);

        // One partition back by 10, with nothing in the way (no note).
        let shift = reset(&db, &group, &topic)
            .args(["--shift-by", "-10"])
            .partition(1);
        let plan = shift.clone().ok_json();
        assert_eq!(
            moves(&plan),
            BTreeMap::from([(1, (Value::from(ends[&1]), ends[&1] - 10))])
        );
        assert!(plan["partitions"][0].get("note").is_none(), "{plan}");
        shift.execute().ok_json();
        let mut expected = ends.clone();
        expected.insert(1, ends[&1] - 10);
        assert_eq!(db.stored_offsets(&topic), expected);
        assert_eq!(committed_in_kafka(&group, &topic), expected);
        assert_eq!(counted(&consume(&db, &topic, &group), "duplicates"), 10);

        // A shift past the end is kept at the end, and says so.
        let out = streamlab("offsets reset")
            .group(&group)
            .topic(&topic)
            .db(&db)
            .args(["--shift-by", "+1000"])
            .ok();
        assert!(out.contains("past the log end: kept at"), "{out}");
        assert!(
            out.contains("dry run (reset to shift by +1000): nothing changed"),
            "{out}"
        );

        // An exact offset, then the end.
        let half = ends[&0] / 2;
        reset(&db, &group, &topic)
            .args(["--to-offset", &half.to_string()])
            .partition(0)
            .execute()
            .ok_json();
        assert_eq!(db.stored_offsets(&topic)[&0], half);
        reset(&db, &group, &topic)
            .arg("--to-latest")
            .execute()
            .ok_json();
        assert_eq!(db.stored_offsets(&topic), ends);
        assert_eq!(committed_in_kafka(&group, &topic), ends);
    }
}

#[test]
fn to_a_datetime_rewinds_to_the_first_record_written_since() {
    for db in TestDb::both() {
        let topic = topic(2);
        let group = unique("g");
        produce(&topic, 200).seed(21).ok();
        let first = end_offsets(&topic);
        std::thread::sleep(Duration::from_millis(1100));
        let at = now_rfc3339();
        std::thread::sleep(Duration::from_millis(1100));
        produce(&topic, 200).seed(22).ok();
        let ends = end_offsets(&topic);
        assert_eq!(consume(&db, &topic, &group)["inserted"], 400);

        let plan = reset(&db, &group, &topic)
            .args(["--to-datetime", &at])
            .execute()
            .ok_json();
        let planned = moves(&plan);
        for (p, end) in &ends {
            assert_eq!(
                planned[p],
                (Value::from(*end), first[p]),
                "{} {at}",
                db.sink
            );
        }
        assert_eq!(db.stored_offsets(&topic), first);
        assert_eq!(committed_in_kafka(&group, &topic), first);
        let replayed = consume(&db, &topic, &group);
        let second: i64 = ends.values().sum::<i64>() - first.values().sum::<i64>();
        assert_eq!(counted(&replayed, "duplicates"), second as u64);
        assert_eq!(counted(&replayed, "inserted"), 0);

        // A time after every record: the end. Before every record, none ever removed: the
        // start.
        let later = reset(&db, &group, &topic)
            .args(["--to-datetime", "2999-01-01T00:00:00Z"])
            .ok_json();
        assert!(
            moves(&later).iter().all(|(p, (_, new))| *new == ends[p]),
            "{later}"
        );
        let earlier = reset(&db, &group, &topic)
            .args(["--to-datetime", "2001-01-01T00:00:00Z"])
            .ok_json();
        assert!(
            moves(&earlier).values().all(|(_, new)| *new == 0),
            "{earlier}"
        );
    }
}

#[test]
fn what_cannot_be_done_is_refused_and_changes_nothing() {
    let db = TestDb::sqlite();
    let topic = topic(3);
    let group = unique("g");
    produce(&topic, 90).seed(31).ok();
    // Partition 0 only: 1 and 2 have no stored offset.
    consume(&db, &topic, &group);
    let base = || reset(&db, &group, &topic);
    db.exec(&format!(
        "DELETE FROM streamlab_offsets WHERE topic = '{topic}' AND kafka_partition <> 0"
    ));
    let stored = db.stored_offsets(&topic);
    assert_eq!(stored.keys().copied().collect::<Vec<_>>(), [0]);
    let refused = |cmd: Cmd, says: &[&str]| {
        cmd.execute().fails(1, says, &[]);
        assert_eq!(db.stored_offsets(&topic), stored, "nothing changed");
    };
    refused(
        base().args(["--to-offset", "100000"]),
        &["cannot reset: partition 0: offset 100000 is outside its log (0..="],
    );
    refused(
        base().args(["--shift-by", "-1"]),
        &["partition 1: no stored offset to shift from"],
    );
    refused(
        base().arg("--to-earliest").partition(7),
        &["has no partition 7", "0 to 2"],
    );
    let nobody = unique("nobody");
    refused(
        reset(&db, &nobody, &topic).arg("--to-earliest"),
        &[&format!(
            "group '{nobody}' has no offsets for topic '{topic}'"
        )],
    );
    refused(
        reset(&db, &group, "no-such-topic-x").arg("--to-earliest"),
        &["topic 'no-such-topic-x' does not exist"],
    );

    refused_while_a_member_lives(&db, &topic, &group);
}

/// A live member: refused, naming it; once it stopped, the reset goes through (a partition with
/// no stored row gets one); a database that cannot say whom it recorded fails closed.
fn refused_while_a_member_lives(db: &TestDb, topic: &str, group: &str) {
    let base = || reset(db, group, topic);
    let member = streamlab("consume")
        .topic(topic)
        .db(db)
        .group(group)
        .spawn();
    let mut member_id = String::new();
    assert!(wait_until(30, || {
        let described = streamlab("group describe").group(group).json().ok_json();
        member_id = described["members"][0]["member_id"]
            .as_str()
            .unwrap_or_default()
            .into();
        !member_id.is_empty()
    }));
    // It reads partitions 1 and 2 from their start; once it has, nothing moves.
    let ends = end_offsets(topic);
    assert!(wait_until(30, || db.stored_offsets(topic) == ends));
    base().arg("--to-earliest").execute().fails(
        1,
        &["has 1 live member(s)", &member_id, "stop them first"],
        &[],
    );
    assert_eq!(db.stored_offsets(topic), ends);
    assert!(member.terminate().succeeded());
    let plan = base().arg("--to-earliest").execute().ok_json();
    assert_eq!(moves(&plan).len(), 3);
    assert!(db.stored_offsets(topic).values().all(|&o| o == 0));
    // A partition with no stored row gets one (the fence: it must still be absent).
    db.exec(&format!(
        "DELETE FROM streamlab_offsets WHERE topic = '{topic}' AND kafka_partition = 2"
    ));
    let plan = base().arg("--to-latest").partition(2).execute().ok_json();
    assert_eq!(moves(&plan), BTreeMap::from([(2, (Value::Null, ends[&2]))]));
    assert_eq!(
        db.stored_offsets(topic),
        BTreeMap::from([(0, 0), (1, 0), (2, ends[&2])])
    );
    assert_eq!(committed_in_kafka(group, topic)[&2], ends[&2]);

    // A database that cannot say whom it recorded is not "no members": refused (fail closed).
    let now = db.stored_offsets(topic);
    db.exec("ALTER TABLE streamlab_members RENAME TO members_kept");
    db.exec(&format!(
        "CREATE VIEW streamlab_members AS SELECT '{group}' AS consumer_group, \
         '{topic}' AS topic, 'm' AS member_id, abs(-9223372036854775808) AS generation, \
         '' AS partitions, 'c' AS client"
    ));
    base().arg("--to-earliest").execute().fails(
        1,
        &["reading the members recorded for group", "integer overflow"],
        &[],
    );
    assert_eq!(db.stored_offsets(topic), now);
    db.exec("DROP VIEW streamlab_members");
    db.exec("ALTER TABLE members_kept RENAME TO streamlab_members");
}

/// Bad input to every flag: exit 2 before anything connects (the topic and group need not exist).
#[test]
fn bad_input_to_every_flag_is_a_usage_error() {
    let db = TestDb::sqlite();
    let (topic, group) = (unique("t"), unique("g"));
    let base = || reset(&db, &group, &topic);
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
    ] {
        base().args(extra).fails(2, &[says], &[]);
    }
    base()
        .arg("--to-earliest")
        .sink("pg")
        .fails(2, &["does not fit the database URL"], &[]);
    let bare = || streamlab("offsets reset").arg("--to-earliest");
    bare()
        .topic(&topic)
        .url(&db.url)
        .fails(2, &["--group"], &[]);
    bare()
        .group(&group)
        .url(&db.url)
        .fails(2, &["--topic"], &[]);
    bare()
        .group(&group)
        .topic("bad name!")
        .url(&db.url)
        .fails(2, &["--topic"], &[]);
    bare()
        .group(&group)
        .topic(&topic)
        .fails(2, &["say which database"], &[]);
}

/// On tansu's durable (SQLite) engine, as `just broker` runs it: retention really removes records,
/// and the broker cannot describe a group it stored, so the database's record of the members
/// decides (for `group describe` too).
#[test]
fn a_time_retention_removed_and_members_only_the_database_recorded_are_refused() {
    let broker = Tansu::durable();
    let b = broker.address();
    let db = TestDb::sqlite();
    let group = unique("g");
    let reset = |topic: &str| reset(&db, &group, topic).brokers(&b);

    // Records before the log start were removed: a time before what is left is refused.
    let topic = topic_via(
        &b,
        "expire",
        1,
        &["retention.ms=10000", "cleanup.policy=delete"],
    );
    let before = now_rfc3339();
    std::thread::sleep(Duration::from_millis(1100));
    produce_and_wait(&b, &topic, 50, 61);
    assert!(
        wait_until(60, || offsets_via(&b, &topic)[&0] == (50, 50)),
        "retention never removed the records: {:?}",
        offsets_via(&b, &topic)
    );
    produce_and_wait(&b, &topic, 50, 62);
    let consumed = consume_json(&b, &topic, &db.url).group(&group).ok_json();
    assert_eq!(counted(&consumed, "inserted"), 50);
    let stored = db.stored_offsets(&topic);
    assert_eq!(stored[&0], 100);
    reset(&topic)
        .args(["--to-datetime", &before])
        .execute()
        .fails(
            1,
            &[
                "partition 0",
                "before its log start (records before offset 50 were removed",
                "--to-earliest replays all the log holds",
            ],
            &[],
        );
    assert_eq!(db.stored_offsets(&topic), stored);

    // A live member the broker cannot describe: the database's record names it.
    let topic = topic_via(&b, "kept", 2, &[]);
    produce_and_wait(&b, &topic, 40, 63);
    let member = streamlab("consume")
        .brokers(&b)
        .topic(&topic)
        .db(&db)
        .group(&group)
        .spawn();
    let recorded = || {
        db.lines(&format!(
            "SELECT member_id FROM streamlab_members WHERE topic = '{topic}'"
        ))
    };
    assert!(wait_until(30, || recorded().len() == 1));
    let member_id = recorded()[0].clone();
    let ends = end_offsets_via(&b, &topic);
    assert!(wait_until(30, || db.stored_offsets(&topic) == ends));
    // group describe shows it as the database recorded it, too.
    let described = streamlab("group describe")
        .brokers(&b)
        .group(&group)
        .topic(&topic)
        .db(&db)
        .json()
        .ok_json();
    assert_eq!(described["state"], "unknown");
    assert_eq!(described["members"][0]["member_id"], member_id.as_str());
    assert_eq!(
        described["members"][0]["partitions"][&topic],
        serde_json::json!([0, 1])
    );
    reset(&topic).arg("--to-earliest").execute().fails(
        1,
        &["recorded in the database", &member_id, "stop them first"],
        &[],
    );
    assert_eq!(db.stored_offsets(&topic), ends);
    assert!(member.terminate().succeeded());
    assert!(
        recorded().is_empty(),
        "a member that leaves deletes its row"
    );
    // A member that crashed leaves its row: refused, saying how to go on; --force sets the
    // rows aside (the broker cannot describe the group, so only they could refuse).
    db.exec(&format!(
        "INSERT INTO streamlab_members \
         (consumer_group, topic, member_id, generation, partitions, client) \
         VALUES ('{group}', '{topic}', 'crashed-1', 9, '0,1', 'gone pid 1')"
    ));
    reset(&topic).arg("--to-earliest").execute().fails(
        1,
        &[
            "crashed-1 (gone pid 1)",
            "a member that crashed leaves its row",
            "--force",
        ],
        &[],
    );
    assert_eq!(db.stored_offsets(&topic), ends);
    reset(&topic)
        .args(["--to-earliest", "--force"])
        .execute()
        .ok_json();
    assert!(db.stored_offsets(&topic).values().all(|&o| o == 0));
    let replayed = consume_json(&b, &topic, &db.url).group(&group).ok_json();
    assert_eq!(counted(&replayed, "duplicates"), 40);
}

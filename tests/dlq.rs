//! `streamlab dlq list|show|replay|purge` over `dead_letters`, on both databases: filters, the
//! payload byte for byte, replays that store each letter exactly once (or re-produce the raw
//! record), purges that remove exactly what failed before a moment.

use std::time::Duration;

use serde_json::Value;

use crate::support::*;

fn dlq(command: &str, db: &TestDb) -> Cmd {
    streamlab(&format!("dlq {command}")).db(db).json()
}

/// The ids `dlq list` shows (newest first), with `filters`.
fn listed(db: &TestDb, filters: &[&str]) -> Vec<i64> {
    let listing = dlq("list", db).args(filters).ok_json();
    let ids: Vec<i64> = listing["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_i64().unwrap())
        .collect();
    assert_eq!(listing["count"], ids.len());
    ids
}

fn ids(value: &Value) -> Vec<i64> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {value}"))
        .iter()
        .map(|v| v.as_i64().or_else(|| v["id"].as_i64()).unwrap())
        .collect()
}

/// Every record of `topic` as (key, value), read with librdkafka.
fn raw_records(topic: &str) -> Vec<(Value, Value)> {
    python("rdkafka_client.py", &["read", topic])
        .lines()
        .map(|l| {
            let r: Value = serde_json::from_str(l).unwrap();
            (r["key"].clone(), r["value"].clone())
        })
        .collect()
}

#[test]
fn dead_letters_are_listed_shown_replayed_exactly_once_and_purged() {
    for db in TestDb::both() {
        let (topic, strict) = six_dead_letters(&db);
        list_and_show(&db, &topic);
        replay_exactly_once(&db, &topic, &strict);
        purge_what_failed_before(&db, &topic);
    }
}

/// Offsets 0..4 of a new topic: four sales events (each over 100 bytes); 4: not JSON; 5: no
/// value — all six dead letters of a consume with `--max-event-bytes 100` (returned).
fn six_dead_letters(db: &TestDb) -> (String, Cmd) {
    let topic = topic(1);
    produce(&topic, 4).seed(51).ok();
    produce_raw(&topic, 0, b"bad", vec![Some(b"not json".to_vec()), None]);
    let strict = consume_json(&brokers(), &topic, &db.url).args(["--max-event-bytes", "100"]);
    assert_eq!(counted(&strict.ok_json(), "dead_lettered"), 6);
    (topic, strict)
}

fn list_and_show(db: &TestDb, topic: &str) {
    assert_eq!(listed(db, &[]), [6, 5, 4, 3, 2, 1]);
    assert_eq!(listed(db, &["--limit", "2"]), [6, 5]);
    assert_eq!(listed(db, &["--reason", "not a sales event"]), [5]);
    assert_eq!(
        listed(db, &["--reason", "than --max-event-bytes 100"]),
        [4, 3, 2, 1]
    );
    assert_eq!(
        listed(db, &["--topic", topic, "--since", "1h"]),
        [6, 5, 4, 3, 2, 1]
    );
    assert_eq!(listed(db, &["--since", "2999-01-01T00:00:00Z"]), [0i64; 0]);
    assert_eq!(listed(db, &["--topic", "other-topic"]), [0i64; 0]);
    assert_eq!(listed(db, &["--id", "2,5"]), [5, 2]);
    let table = streamlab("dlq list").db(db).ok();
    assert!(table.contains("6 dead letter(s)"), "{table}");

    let shown = dlq("show", db).id(5).ok_json();
    assert_eq!(shown["payload"]["utf8"], "not json");
    assert_eq!(shown["payload"]["hex"], "6e6f74206a736f6e");
    assert_eq!(shown["key"]["utf8"], "bad");
    assert_eq!(
        (&shown["partition"], &shown["offset"]),
        (&0.into(), &4.into())
    );
    let shown = dlq("show", db).id(6).ok_json();
    assert_eq!(shown["payload"], Value::Null);
    assert!(
        shown["error"].as_str().unwrap().contains("null payload"),
        "{shown}"
    );
    let text = streamlab("dlq show").db(db).id(5).ok();
    assert!(
        text.contains("payload: (8 bytes, UTF-8)\nnot json"),
        "{text}"
    );
    streamlab("dlq show")
        .db(db)
        .id(99)
        .fails(1, &["no dead letter with id 99"], &[]);
}

fn replay_exactly_once(db: &TestDb, topic: &str, strict: &Cmd) {
    // Today's rules still refuse them: nothing moves.
    let same = dlq("replay", db)
        .id(1)
        .args(["--max-event-bytes", "100"])
        .ok_json();
    assert_eq!(ids(&same["replayed"]), [0i64; 0]);
    assert_eq!(ids(&same["still_failing"]), [1]);
    assert_eq!(listed(db, &[]).len(), 6);

    // The default limit lets the four events in, exactly once.
    let done = dlq("replay", db).ok_json();
    assert_eq!(ids(&done["replayed"]), [1, 2, 3, 4]);
    assert_eq!(
        done["stored"],
        serde_json::json!({"inserted": 4, "duplicates": 0})
    );
    assert_eq!(ids(&done["still_failing"]), [5, 6]);
    assert_eq!(db.sales_ids(), seeded_ids(51, 4));
    assert_eq!(listed(db, &[]), [6, 5]);
    let again = dlq("replay", db).ok_json();
    assert_eq!(ids(&again["replayed"]), [0i64; 0]);
    assert_eq!(
        again["stored"],
        serde_json::json!({"inserted": 0, "duplicates": 0})
    );
    assert_eq!(db.sales_ids().len(), 4);

    // The same events produced again and dead-lettered: replayed, they are duplicates.
    produce(topic, 4).seed(51).ok();
    strict.ok_json();
    assert_eq!(listed(db, &[]), [10, 9, 8, 7, 6, 5]);
    let dup = dlq("replay", db)
        .args(["--reason", "larger than"])
        .ok_json();
    assert_eq!(ids(&dup["replayed"]), [7, 8, 9, 10]);
    assert_eq!(
        dup["stored"],
        serde_json::json!({"inserted": 0, "duplicates": 4})
    );

    // The raw record re-produced, key and all, to another topic; its letter is gone.
    let fixed = crate::support::topic(1);
    let out = dlq("replay", db)
        .id(5)
        .args(["--to-topic", &fixed])
        .ok_json();
    assert_eq!(ids(&out["replayed"]), [5]);
    assert_eq!(
        raw_records(&fixed),
        [(Value::from("bad"), Value::from("not json"))]
    );
    assert_eq!(listed(db, &[]), [6]);
}

fn purge_what_failed_before(db: &TestDb, topic: &str) {
    // Purge: what failed before a moment goes, what failed after stays.
    std::thread::sleep(Duration::from_millis(1100));
    let cut = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    produce_raw(topic, 0, b"late", vec![Some(b"{\"late\": true}".to_vec())]);
    consume_json(&brokers(), topic, &db.url).ok_json();
    assert_eq!(listed(db, &[]), [11, 6]);
    let purged = dlq("purge", db)
        .args(["--before", &cut, "--execute"])
        .ok_json();
    assert_eq!(
        (&purged["purged"], ids(&purged["ids"])),
        (&1.into(), vec![6])
    );
    assert_eq!(listed(db, &[]), [11]);
    let none = dlq("purge", db)
        .args(["--before", &cut, "--execute"])
        .ok_json();
    assert_eq!(none["purged"], 0);
    let out = streamlab("dlq purge")
        .db(db)
        .args([
            "--before",
            "2999-01-01T00:00:00Z",
            "--reason",
            "not a sales",
            "--execute",
        ])
        .ok();
    assert_eq!(out.trim(), "purged 1 dead letter(s): ids 11");
    assert_eq!(listed(db, &[]), [0i64; 0]);
}

#[test]
fn bad_input_to_every_flag_is_a_usage_error() {
    let db = TestDb::sqlite();
    streamlab("dlq list")
        .db(&db)
        .fails(1, &["no such file (run `streamlab consume` first)"], &[]);
    for (command, args) in [
        ("list", &["--since", "soonish"][..]),
        ("list", &["--limit", "0"][..]),
        ("list", &["--id", "x"][..]),
        ("list", &["--id", "0"][..]),
        ("list", &["--topic", "bad name!"][..]),
        ("list", &["--format", "xml"][..]),
        ("show", &[][..]),
        ("show", &["--id", "-3"][..]),
        ("replay", &["--to-topic", "bad name!"][..]),
        ("replay", &["--to-topic", "t", "--kind", "sensor"][..]),
        ("replay", &["--max-event-bytes", "-1"][..]),
        ("replay", &["--kind", "orders"][..]),
        ("purge", &[][..]),
        ("purge", &["--before", "last tuesday"][..]),
    ] {
        streamlab(&format!("dlq {command}"))
            .db(&db)
            .args(args)
            .fails(2, &[], &[]);
    }
    streamlab("dlq list").fails(2, &["say which database"], &[]);
}

/// The id of the `nth` event (from 0) a seeded `produce --kind sales --seed SEED` sends.
fn nth_sale_id(seed: u64, nth: usize) -> String {
    let mut g = streamlab::events::Generator::new(streamlab::events::EventKind::Sales, Some(seed));
    let now = time::OffsetDateTime::now_utc();
    (0..nth).for_each(|_| drop(g.next_event(now)));
    g.next_event(now).id().to_string()
}

#[test]
fn replay_keeps_what_the_database_refuses_leaves_corrupt_batches_alone_and_claims_before_producing()
{
    for db in TestDb::both() {
        let topic = topic(1);
        // Letters 1..=4: four sales over 100 bytes.
        produce(&topic, 4).seed(53).ok();
        let strict = consume_json(&brokers(), &topic, &db.url).args(["--max-event-bytes", "100"]);
        assert_eq!(counted(&strict.ok_json(), "dead_lettered"), 4);
        // Letter 5: a corrupt batch as consume --skip-corrupt-batches stores it (the payload is
        // a raw record batch); letter 6: a reason with an escape sequence and a newline.
        let (bytes, chr) = match db.sink {
            "pg" => ("'\\x00010203'::bytea", "chr"),
            _ => ("X'00010203'", "char"),
        };
        db.exec(&format!(
            "INSERT INTO dead_letters (topic, kafka_partition, kafka_offset, payload, error) \
             VALUES ('{topic}', 0, 90, {bytes}, \
                     'skipped with --skip-corrupt-batches: CRC mismatch'), \
                    ('{topic}', 0, 91, NULL, 'a' || {chr}(27) || '[31mred' || {chr}(10) || 'b')"
        ));
        let table = streamlab("dlq list").db(&db).ok();
        assert!(table.contains("a\\u{1b}[31mred\\nb"), "{table}");
        assert!(!table.contains('\u{1b}'), "{table}");
        let shown = streamlab("dlq show").db(&db).id(6).ok();
        assert!(shown.contains("error: a\\u{1b}[31mred\\nb\n"), "{shown}");
        // JSON stays exact.
        let exact = dlq("show", &db).id(6).ok_json();
        assert_eq!(exact["error"], "a\u{1b}[31mred\nb");

        // --limit: the oldest first.
        let first = dlq("replay", &db).args(["--limit", "1"]).ok_json();
        assert_eq!(ids(&first["replayed"]), [1]);
        assert_eq!(ids(&first["corrupt_batches"]), [5]);
        assert_eq!(listed(&db, &[]), [6, 5, 4, 3, 2]);

        // The database refuses the event of letter 3: it stays, the others go in.
        let refused = nth_sale_id(53, 2);
        match db.sink {
            "pg" => db.exec(&format!(
                "ALTER TABLE sales_events ADD CONSTRAINT not_this_one \
                 CHECK (id <> '{refused}'::uuid)"
            )),
            _ => db.exec(&format!(
                "CREATE TRIGGER not_this_one BEFORE INSERT ON sales_events \
                 WHEN NEW.id = '{refused}' BEGIN SELECT RAISE(ABORT, 'not this one'); END"
            )),
        }
        let done = dlq("replay", &db).ok_json();
        assert_eq!(ids(&done["replayed"]), [2, 4]);
        assert_eq!(
            done["stored"],
            serde_json::json!({"inserted": 2, "duplicates": 0})
        );
        assert_eq!(ids(&done["still_failing"]), [3, 6]);
        let why = done["still_failing"][0]["error"].as_str().unwrap();
        assert!(why.starts_with("refused by the database"), "{why}");
        assert_eq!(ids(&done["corrupt_batches"]), [5]);
        assert_eq!(db.sales_ids().len(), 3);
        assert_eq!(listed(&db, &[]), [6, 5, 3]);
        let text = streamlab("dlq replay").db(&db).ok();
        assert!(
            text.contains(
                "1 corrupt-batch letter(s) left alone: they hold a raw record batch, not a record"
            ),
            "{text}"
        );

        // --to-topic: a corrupt batch is never produced; a failed produce keeps the letters.
        let missing = unique("never-created");
        streamlab("dlq replay")
            .db(&db)
            .args(["--to-topic", &missing, "--id", "3,5"])
            .fails(1, &["the dead letters were kept"], &[]);
        assert_eq!(listed(&db, &[]), [6, 5, 3]);
        let fixed = crate::support::topic(1);
        let out = dlq("replay", &db)
            .args(["--to-topic", &fixed, "--id", "3,5"])
            .ok_json();
        assert_eq!(ids(&out["replayed"]), [3]);
        assert_eq!(ids(&out["corrupt_batches"]), [5]);
        assert_eq!(raw_records(&fixed).len(), 1);
        assert_eq!(listed(&db, &[]), [6, 5]);

        // purge: a dry run without --execute.
        let plan = dlq("purge", &db)
            .args(["--before", "2999-01-01T00:00:00Z"])
            .ok_json();
        assert_eq!(
            (&plan["executed"], &plan["purged"], ids(&plan["ids"])),
            (&false.into(), &0.into(), vec![5, 6])
        );
        let text = streamlab("dlq purge")
            .db(&db)
            .args(["--before", "2999-01-01T00:00:00Z"])
            .ok();
        assert!(
            text.contains("would purge 2 dead letter(s): ids 5, 6"),
            "{text}"
        );
        assert_eq!(listed(&db, &[]), [6, 5]);
        let gone = dlq("purge", &db)
            .args(["--before", "2999-01-01T00:00:00Z", "--execute"])
            .ok_json();
        assert_eq!(
            (&gone["executed"], &gone["purged"], ids(&gone["ids"])),
            (&true.into(), &2.into(), vec![5, 6])
        );
        assert_eq!(listed(&db, &[]), [0i64; 0]);
    }
}

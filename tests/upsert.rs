//! `consume --upsert`: a topic read as a table, against the real broker and both databases.
//!
//! The updates and tombstones are produced by librdkafka (tests/py/rdkafka_client.py
//! `updates`), which also says which value each key ends with; the same table is computed again
//! by reading the topic back with librdkafka (`table`). The sink's table must equal it exactly —
//! every key, the id and the amount (or reading) of its newest value, no deleted key — and the
//! stored offsets must equal the log ends.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

const UPDATES: usize = 20_000;
const KEYS: usize = 500;
const TOMBSTONE_PERCENT: &str = "5";

/// A table as compared: key → "id|value in hundredths" (amount_usd or val).
type Table = BTreeMap<String, String>;

/// The row a value of `kind` makes, as [`stored`] reads it back.
fn row_of(kind: &str, value: &Value) -> String {
    let field = if kind == "sales" { "amount_usd" } else { "val" };
    let hundredths = (value[field].as_f64().unwrap() * 100.0).round() as i64;
    format!("{}|{hundredths}", value["id"].as_str().unwrap())
}

fn table_of(kind: &str, json: &Value) -> Table {
    json["table"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(key, value)| (key.clone(), row_of(kind, value)))
        .collect()
}

/// Produce the updates with librdkafka through `brokers`; the table they leave.
fn produce_updates(brokers: &str, topic: &str, kind: &str, seed: u64) -> Table {
    let (count, keys, seed) = (UPDATES.to_string(), KEYS.to_string(), seed.to_string());
    let args = [
        "updates",
        topic,
        &count,
        &keys,
        TOMBSTONE_PERCENT,
        &seed,
        kind,
    ];
    let out: Value =
        serde_json::from_str(&python_via(brokers, "rdkafka_client.py", &args)).unwrap();
    assert_eq!(out["sent"].as_u64(), Some(UPDATES as u64));
    let expected = table_of(kind, &out);
    assert!(
        expected.len() > KEYS * 8 / 10,
        "{} keys live",
        expected.len()
    );
    expected
}

/// The topic read back by librdkafka: records readable, and each key's newest value.
fn read_table(brokers: &str, topic: &str, kind: &str) -> (u64, Table) {
    let out: Value =
        serde_json::from_str(&python_via(brokers, "rdkafka_client.py", &["table", topic])).unwrap();
    (out["records"].as_u64().unwrap(), table_of(kind, &out))
}

fn latest_table(kind: &str) -> &'static str {
    if kind == "sales" {
        "sales_latest"
    } else {
        "sensor_latest"
    }
}

/// The sink's `_latest` table of `kind`, as [`row_of`] spells rows.
fn stored(db: &TestDb, kind: &str) -> Table {
    let value = if kind == "sales" { "amount_usd" } else { "val" };
    db.lines(&format!(
        "SELECT key, id, CAST(ROUND({value} * 100) AS INTEGER) FROM {}",
        latest_table(kind)
    ))
    .into_iter()
    .map(|line| {
        let (key, row) = line.split_once('|').unwrap();
        (key.to_string(), row.to_string())
    })
    .collect()
}

/// Every column that says where a row came from: key → partition/offset.
fn provenance(db: &TestDb, kind: &str) -> Vec<String> {
    db.lines(&format!(
        "SELECT key, id, kafka_partition, kafka_offset FROM {} ORDER BY key",
        latest_table(kind)
    ))
}

/// `consume --upsert --kind K --group G` of `topic` into `db`.
fn upsert(db: &TestDb, topic: &str, kind: &str, group: &str) -> Cmd {
    streamlab("consume")
        .topic(topic)
        .group(group)
        .kind(kind)
        .db(db)
        .arg("--upsert")
}

fn pairs() -> [(TestDb, &'static str); 4] {
    [
        (TestDb::sqlite(), "sales"),
        (TestDb::pg(), "sensor"),
        (TestDb::sqlite(), "sensor"),
        (TestDb::pg(), "sales"),
    ]
}

#[test]
fn the_table_holds_each_keys_newest_value_and_a_replay_leaves_it_identical() {
    for (db, kind) in pairs() {
        let topic = topic(3);
        let expected = produce_updates(&brokers(), &topic, kind, 11);
        let (records, read) = read_table(&brokers(), &topic, kind);
        assert_eq!((records, &read), (UPDATES as u64, &expected));

        let out = upsert(&db, &topic, kind, "g1")
            .stop_at_end()
            .json()
            .ok_json();
        assert_eq!(counted(&out, "consumed"), UPDATES as u64, "{out}");
        assert_eq!(counted(&out, "dead_lettered"), 0, "{out}");
        assert_eq!(stored(&db, kind), expected, "{} {kind}", db.sink);
        assert_eq!(db.stored_offsets(&topic), end_offsets(&topic));
        let first = provenance(&db, kind);

        // Another group replays the whole log, in other batch boundaries, into the same table.
        let out = upsert(&db, &topic, kind, "g2")
            .batch_size(700)
            .stop_at_end()
            .json()
            .ok_json();
        assert_eq!(counted(&out, "consumed"), UPDATES as u64, "{out}");
        assert_eq!(
            provenance(&db, kind),
            first,
            "{} {kind}: replay by g2",
            db.sink
        );

        // The first group rewound to the start and read again.
        streamlab("offsets reset")
            .group("g1")
            .topic(&topic)
            .db(&db)
            .arg("--to-earliest")
            .execute()
            .ok();
        upsert(&db, &topic, kind, "g1").stop_at_end().ok();
        assert_eq!(
            provenance(&db, kind),
            first,
            "{} {kind}: after offsets reset",
            db.sink
        );
    }
}

#[test]
fn a_consumer_killed_mid_run_resumes_to_the_same_table() {
    for db in TestDb::both() {
        let topic = topic(3);
        let expected = produce_updates(&brokers(), &topic, "sales", 12);
        streamlab("migrate").db(&db).ok();
        // Throttled to about four seconds' work, so the kill lands while it writes.
        let child = upsert(&db, &topic, "sales", "g")
            .assign_all()
            .batch_size(250)
            .throttle(5000)
            .spawn();
        assert!(wait_until(30, || db.count("sales_latest") > 0));
        child.kill();
        let rows_before = db.count("sales_latest");
        let stored_before: i64 = db.stored_offsets(&topic).values().sum();
        assert!(rows_before > 0, "{}: rows before the kill", db.sink);
        assert!(
            stored_before > 0 && stored_before < UPDATES as i64,
            "{}: killed mid-run: {stored_before} of {UPDATES} offsets stored",
            db.sink
        );

        let out = upsert(&db, &topic, "sales", "g")
            .stop_at_end()
            .json()
            .ok_json();
        assert_eq!(
            counted(&out, "consumed") as i64,
            UPDATES as i64 - stored_before,
            "{out}"
        );
        assert_eq!(stored(&db, "sales"), expected, "{}", db.sink);
        assert_eq!(db.stored_offsets(&topic), end_offsets(&topic));
    }
}

#[test]
fn two_group_members_build_one_table() {
    for db in TestDb::both() {
        let topic = topic(4);
        let expected = produce_updates(&brokers(), &topic, "sensor", 13);
        streamlab("migrate").db(&db).ok();
        // Throttled, so that both are members long before the backlog is done.
        let members: Vec<Running> = (0..2)
            .map(|_| {
                upsert(&db, &topic, "sensor", "g")
                    .throttle(4000)
                    .stop_at_end()
                    .json()
                    .spawn()
            })
            .collect();
        let runs: Vec<Value> = members
            .into_iter()
            .map(|m| {
                m.exit_within(Duration::from_secs(90), "a member")
                    .success()
                    .json()
            })
            .collect();
        for out in &runs {
            assert!(counted(out, "consumed") > 0, "each member wrote: {out}");
        }
        assert_eq!(stored(&db, "sensor"), expected, "{}", db.sink);
        assert_eq!(db.stored_offsets(&topic), end_offsets(&topic));
    }
}

#[test]
fn a_compacted_log_reads_as_the_same_table_with_its_gaps_skipped_silently() {
    let tansu = Tansu::durable();
    let brokers = tansu.address();
    for db in TestDb::both() {
        let topic = topic_via(&brokers, "compact", 3, &["cleanup.policy=compact"]);
        let expected = produce_updates(&brokers, &topic, "sales", 14);
        // The broker's maintenance pass compacts the log: fewer records than offsets (counted
        // by `topic describe`, which reads them).
        let present = || -> (i64, i64) {
            let described = streamlab("topic describe")
                .brokers(&brokers)
                .topic(&topic)
                .json()
                .ok_json();
            let partitions = described["partitions"].as_array().unwrap().clone();
            let sum = |field: &str| partitions.iter().map(|p| p[field].as_i64().unwrap()).sum();
            (sum("records_present"), sum("offsets_spanned"))
        };
        assert!(wait_until(120, || present().0 < UPDATES as i64));
        let run = upsert(&db, &topic, "sales", "g")
            .brokers(&brokers)
            .stop_at_end()
            .json()
            .run()
            .success();
        assert!(!run.stderr.contains("removed"), "{}", run.stderr);
        assert!(counted(&run.json(), "consumed") < UPDATES as u64);
        assert_eq!(stored(&db, "sales"), expected, "{}", db.sink);
        assert_eq!(db.stored_offsets(&topic), end_offsets_via(&brokers, &topic));

        let (records, spanned) = present();
        assert_eq!(spanned, UPDATES as i64);
        assert!(records < spanned, "{records} records of {spanned} offsets");
    }
}

#[test]
fn produce_keys_sends_reproducible_updates_and_tombstones() {
    let topics = [topic(2), topic(2)];
    let summaries: Vec<Value> = topics
        .iter()
        .map(|t| {
            produce(t, 3000)
                .seed(5)
                .args(["--keys", "40", "--tombstones", "10%"])
                .json()
                .ok_json()
        })
        .collect();
    let tombstones = summaries[0]["tombstones"].as_u64().unwrap();
    assert!((200..400).contains(&tombstones), "{}", summaries[0]);
    assert_eq!(summaries[1]["tombstones"].as_u64(), Some(tombstones));
    let records: Vec<Vec<Value>> = topics
        .iter()
        .map(|t| {
            python("rdkafka_client.py", &["read", t])
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        })
        .collect();
    let nulls = records[0].iter().filter(|r| r["value"].is_null()).count();
    assert_eq!(nulls as u64, tombstones, "tombstones are null values");
    for r in &records[0] {
        let key = r["key"].as_str().unwrap();
        let k: u32 = key.strip_prefix("store-").unwrap().parse().unwrap();
        assert!(k < 40, "{key}");
        if let Some(value) = r["value"].as_str() {
            let event: Value = serde_json::from_str(value).unwrap();
            assert_eq!(
                event["store_id"].as_str(),
                Some(key),
                "the value is the key's"
            );
        }
    }
    // The same seed, the same stream: keys, tombstones and ids.
    let shape = |rs: &[Value]| -> Vec<(String, Option<String>)> {
        let mut v: Vec<_> = rs
            .iter()
            .map(|r| {
                let id = r["value"]
                    .as_str()
                    .map(|v| serde_json::from_str::<Value>(v).unwrap()["id"].to_string());
                (r["key"].as_str().unwrap().to_string(), id)
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(shape(&records[0]), shape(&records[1]));
    streamlab("produce")
        .topic(&topics[0])
        .args(["--tombstones", "5%"])
        .fails(2, &["--keys"], &[]);
    streamlab("produce")
        .topic(&topics[0])
        .args(["--keys", "3", "--tombstones", "120%"])
        .fails(2, &["120%"], &[]);
}

#[test]
fn records_without_a_usable_key_are_dead_letters_with_the_reason() {
    for db in TestDb::both() {
        let topic = topic(1);
        produce(&topic, 50).seed(3).ok();
        let value = br#"{"id":"0190d7a4-8a8e-7cc0-8d1c-2b7d8f3a9e10","ts":"2026-01-01T00:00:00Z","store_id":"s","amount_usd":1,"channel":"online"}"#;
        produce_raw_keyed(&topic, 0, None, vec![Some(value.to_vec()), None]);
        produce_raw(&topic, 0, b"", vec![Some(value.to_vec())]);
        produce_raw(&topic, 0, b"\xff\xfe", vec![Some(value.to_vec())]);
        let out = upsert(&db, &topic, "sales", "g")
            .stop_at_end()
            .json()
            .ok_json();
        assert_eq!(counted(&out, "dead_lettered"), 4, "{out}");
        let reasons = db.lines("SELECT error FROM dead_letters ORDER BY kafka_offset");
        assert!(reasons[0].contains("record has no key"), "{reasons:?}");
        assert!(reasons[1].contains("record has no key"), "{reasons:?}");
        assert!(reasons[2].contains("record key is empty"), "{reasons:?}");
        assert!(reasons[3].contains("not UTF-8"), "{reasons:?}");
        // 12 stores: one row each, the newest of its key.
        assert_eq!(db.count("sales_latest"), 12);
        assert_eq!(db.stored_offsets(&topic), end_offsets(&topic));
    }
}

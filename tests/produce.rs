//! `streamlab produce` against the real broker; what landed is read back with librdkafka.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use streamlab::kafka::partitioner::partition_for_key;

#[test]
fn produced_sales_land_keyed_by_murmur2_with_valid_json() {
    let topic = topic(3);
    let out = ok(&[
        "produce", "--topic", &topic, "--count", "300", "--rate", "0",
    ]);
    assert!(out.contains("produced 300 events"), "{out}");

    let records = read_back(&topic);
    assert_eq!(records.len(), 300);
    for r in &records {
        let key = r["key"].as_str().unwrap();
        assert_eq!(
            r["partition"].as_u64().unwrap() as usize,
            partition_for_key(key.as_bytes(), 3)
        );
        let value: serde_json::Value = serde_json::from_str(r["value"].as_str().unwrap()).unwrap();
        assert_eq!(value["store_id"], key);
        assert!(uuid::Uuid::parse_str(value["id"].as_str().unwrap()).is_ok());
        assert!(value["amount_usd"].as_f64().unwrap() > 0.0);
        assert!(["online", "store", "mobile"].contains(&value["channel"].as_str().unwrap()));
        // The Kafka record timestamp is the event's ts.
        let ts = time::OffsetDateTime::parse(
            value["ts"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        assert_eq!(
            (ts.unix_timestamp_nanos() / 1_000_000) as i64,
            r["timestamp"].as_i64().unwrap()
        );
    }
    // Per-partition counts in the summary match what the broker holds.
    let offsets = offsets(&topic);
    for (p, (_, latest)) in offsets {
        assert!(out.contains(&format!("partition {p}: {latest}")), "{out}");
    }
}

#[test]
fn librdkafka_puts_every_key_in_the_same_partition() {
    let ours = topic(6);
    ok(&[
        "produce", "--topic", &ours, "--kind", "sensor", "--count", "200", "--rate", "0",
    ]);
    let mut placement: BTreeMap<String, u64> = BTreeMap::new();
    for r in read_back(&ours) {
        placement.insert(
            r["key"].as_str().unwrap().into(),
            r["partition"].as_u64().unwrap(),
        );
    }
    let theirs = topic(6);
    let mut args = vec!["place", theirs.as_str()];
    args.extend(placement.keys().map(String::as_str));
    let placed: BTreeMap<String, u64> =
        serde_json::from_str(&python("rdkafka_client.py", &args)).unwrap();
    assert_eq!(placed, placement);
}

#[test]
fn sensor_events_have_the_seed_fields() {
    let topic = topic(2);
    ok(&[
        "produce", "--topic", &topic, "--kind", "sensor", "--count", "50", "--rate", "0",
    ]);
    for r in read_back(&topic) {
        let v: serde_json::Value = serde_json::from_str(r["value"].as_str().unwrap()).unwrap();
        let obj = v.as_object().unwrap();
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["id", "sensor_id", "status", "ts", "unit", "val"]);
        assert!(v["val"].is_f64());
        assert!(["ok", "warn", "fail"].contains(&v["status"].as_str().unwrap()));
        assert_eq!(r["key"], v["sensor_id"]);
    }
}

#[test]
fn a_seed_reproduces_the_events() {
    let (a, b) = (topic(1), topic(1));
    ok(&[
        "produce", "--topic", &a, "--count", "40", "--rate", "0", "--seed", "42",
    ]);
    ok(&[
        "produce", "--topic", &b, "--count", "40", "--rate", "0", "--seed", "42",
    ]);
    let strip = |records: Vec<serde_json::Value>| -> Vec<serde_json::Value> {
        records
            .into_iter()
            .map(|r| {
                let mut v: serde_json::Value =
                    serde_json::from_str(r["value"].as_str().unwrap()).unwrap();
                v.as_object_mut().unwrap().remove("ts");
                v
            })
            .collect()
    };
    let (ea, eb) = (strip(read_back(&a)), strip(read_back(&b)));
    assert_eq!(ea.len(), 40);
    assert_eq!(ea, eb);
}

#[test]
fn a_rate_limited_run_sends_rate_times_duration() {
    let topic = topic(3);
    let out = ok(&[
        "produce",
        "--topic",
        &topic,
        "--rate",
        "400",
        "--duration",
        "2s",
    ]);
    let sent = produced_count(out.as_bytes());
    assert!((792..=808).contains(&sent), "sent {sent}: {out}");
    let total: i64 = offsets(&topic).values().map(|(_, l)| l).sum();
    assert_eq!(total as u64, sent);
}

#[test]
fn sigterm_flushes_and_reports_exactly_what_was_acknowledged() {
    let topic = topic(3);
    let child = spawn(&["produce", "--topic", &topic, "--rate", "300"]);
    std::thread::sleep(Duration::from_millis(1500));
    signal(&child, "TERM");
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let sent = produced_count(&out.stdout) as i64;
    assert!(sent > 100, "{stdout}");
    let total: i64 = offsets(&topic).values().map(|(_, l)| l).sum();
    assert_eq!(total, sent, "{stdout}");
}

/// The sensors seed's own client, kafka-python installed as its README says (no lz4 package),
/// reads what `produce` sends by default: uncompressed, as Kafka's producer default.
#[test]
fn kafka_python_without_compression_extras_reads_the_default_stream() {
    let topic = topic(2);
    produce_and_wait(&brokers(), &topic, 60, 77);
    let ids: std::collections::BTreeSet<String> =
        serde_json::from_str(&python("kafka_python_read.py", &[&topic, "60"])).unwrap();
    assert_eq!(ids, seeded_ids(77, 60));
}

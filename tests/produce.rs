//! `streamlab produce` against the real broker; what landed is read back with librdkafka.

use std::collections::BTreeMap;

use crate::support::*;
use streamlab::kafka::partitioner::partition_for_key;

/// A `produce --format json` summary's count of events the broker acknowledged.
fn sent(summary: &serde_json::Value) -> u64 {
    summary["sent"]
        .as_u64()
        .unwrap_or_else(|| panic!("not a produce summary: {summary}"))
}

#[test]
fn produced_sales_land_keyed_by_murmur2_with_valid_json() {
    let topic = topic(3);
    let summary = produce(&topic, 300).json().ok_json();
    assert_eq!(sent(&summary), 300, "{summary}");

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
    let per_partition: BTreeMap<i64, i64> = summary["per_partition"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(p, n)| (p as i64, n.as_i64().unwrap()))
        .collect();
    assert_eq!(per_partition, end_offsets(&topic), "{summary}");
}

#[test]
fn librdkafka_puts_every_key_in_the_same_partition() {
    let ours = topic(6);
    produce(&ours, 200).kind("sensor").ok();
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
    produce(&topic, 50).kind("sensor").ok();
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
    // For people (no --format json): the summary says what was sent, and where.
    let out = produce(&a, 40).seed(42).ok();
    assert!(
        out.contains(&format!("produced 40 events to '{a}'")) && out.contains("  partition 0: 40"),
        "{out}"
    );
    assert_eq!(sent(&produce(&b, 40).seed(42).json().ok_json()), 40);
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
    let summary = streamlab("produce")
        .topic(&topic)
        .rate(400)
        .args(["--duration", "2s"])
        .json()
        .ok_json();
    let sent = sent(&summary);
    // Event i is due at start + i/rate, so 2 s at 400/s is at most 801 (808: a preemption
    // between the clock's two readings); a busy machine's stalls may cost some at the end, and
    // 600 still proves the rate paces the run rather than starves it. Speed is `just bench`'s.
    assert!((600..=808).contains(&sent), "sent {sent}: {summary}");
    assert_eq!(total_records(&topic) as u64, sent);
}

#[test]
fn sigterm_flushes_and_reports_exactly_what_was_acknowledged() {
    let topic = topic(3);
    let child = streamlab("produce").topic(&topic).rate(300).json().spawn();
    // Mid-stream: records on the broker, the producer still sending.
    let mid_stream = wait_until(30, || total_records(&topic) > 100);
    let out = child.terminate();
    assert!(mid_stream, "no records on the broker:\n{}", out.stderr);
    assert!(out.succeeded(), "{}", out.stderr);
    let sent = sent(&out.json()) as i64;
    assert!(sent > 100, "{}", out.stdout);
    assert_eq!(total_records(&topic), sent, "{}", out.stdout);
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

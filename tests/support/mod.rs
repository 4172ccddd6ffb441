//! What every test module shares: the command builder ([`streamlab`]), fresh topics and
//! databases, the broker's offsets, the independent Python clients, brokers of a test's own.
//!
//! The broker address comes from STREAMLAB_BROKERS, the PostgreSQL server from
//! STREAMLAB_TEST_PG and the Python with confluent-kafka from STREAMLAB_TEST_PYTHON (all three
//! set by `just test`, see scripts/test). Every test works on its own fresh topic and database,
//! so tests run in parallel.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use rand::Rng;

pub mod cluster;
mod cmd;
mod db;
pub mod front;
pub mod metrics;
pub mod proxy;
pub mod secure;
mod tansu;

pub use cmd::{describe_members, streamlab, Cmd, Run, Running};
pub use db::{psql, TestDb};
pub use tansu::Tansu;

pub fn brokers() -> String {
    std::env::var("STREAMLAB_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn pg_admin_url() -> String {
    std::env::var("STREAMLAB_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Where the PostgreSQL server of `pg_admin_url` listens (for a proxy in front of it).
pub fn pg_address() -> std::net::SocketAddr {
    use std::net::ToSocketAddrs;
    let url = url::Url::parse(&pg_admin_url()).expect("STREAMLAB_TEST_PG is not a URL");
    let host = url.host_str().unwrap_or("127.0.0.1");
    (host, url.port().unwrap_or(5432))
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| panic!("cannot resolve the host {host} of STREAMLAB_TEST_PG"))
}

/// `url` (a database of the test server) with its port replaced by `port`.
pub fn with_port(url: &str, port: u16) -> String {
    let mut url = url::Url::parse(url).unwrap();
    url.set_port(Some(port)).unwrap();
    url.to_string()
}

/// The test server's PostgreSQL, reached through a proxy the test can take down or freeze:
/// the proxy and `db`'s URL through it.
pub fn pg_behind_proxy(db: &TestDb) -> (proxy::Proxy, String) {
    let proxy = proxy::Proxy::start(pg_address());
    let url = with_port(&db.url, proxy.port);
    assert_ne!(url, db.url);
    (proxy, url)
}

/// A fresh name, so tests never see each other's data.
pub fn unique(prefix: &str) -> String {
    let n: u64 = rand::rng().random();
    format!("{prefix}-{n:016x}")
}

/// A port nothing listens on on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Wait until `f` holds, up to `secs` seconds.
pub fn wait_until(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    false
}

/// Wait up to `secs` seconds until `rows()` reaches `at_least` (a process is writing), failing
/// the test, naming `what`, if it does not; returns the rows then.
pub fn wait_for_rows(secs: u64, what: &str, mut rows: impl FnMut() -> i64, at_least: i64) -> i64 {
    let mut seen = 0;
    let reached = wait_until(secs, || {
        seen = rows();
        seen >= at_least
    });
    assert!(
        reached,
        "{what}: {seen} rows after {secs} s, waited for {at_least}"
    );
    seen
}

/// A fault that must land mid-stream did: `rows` (counted right after it) are more than the
/// `before` the process started with, and fewer than the `total` the stream holds.
pub fn assert_mid_stream(what: &str, rows: i64, before: i64, total: usize) {
    assert!(
        before < rows && rows < total as i64,
        "{what} did not land mid-stream: {rows} rows at it ({before} before it, {total} in all)"
    );
}

/// Every position `(partition, offset)` below the `ends` (from the start of each log).
pub fn every_position(ends: &BTreeMap<i64, i64>) -> BTreeSet<(i64, i64)> {
    ends.iter()
        .flat_map(|(&p, &end)| (0..end).map(move |o| (p, o)))
        .collect()
}

// --- Topics and what they hold -------------------------------------------------------------------

/// A new topic with `partitions` partitions.
pub fn topic(partitions: u32) -> String {
    let name = unique("t");
    streamlab("topic create")
        .topic(&name)
        .partitions(partitions)
        .ok();
    name
}

/// A fresh topic named `prefix-…` on `brokers`, with topic configs (`key=value`).
pub fn topic_via(brokers: &str, prefix: &str, partitions: u32, configs: &[&str]) -> String {
    let name = unique(prefix);
    let create = streamlab("topic create")
        .brokers(brokers)
        .topic(&name)
        .partitions(partitions);
    configs
        .iter()
        .fold(create, |create, config| create.config(config))
        .ok();
    name
}

/// `produce --topic T --count N --rate 0`: N events as fast as the broker takes them (add
/// `.seed(S)` for known ids, `.brokers(B)` for another broker).
pub fn produce(topic: &str, count: usize) -> Cmd {
    streamlab("produce").topic(topic).count(count).rate(0)
}

/// `produce --count N --rate 0 --seed SEED` to `topic` through `brokers`, to completion.
pub fn produce_and_wait(brokers: &str, topic: &str, count: usize, seed: u64) {
    produce(topic, count).brokers(brokers).seed(seed).ok();
}

/// `consume --assign all --topic T --sink S -D URL --stop-at-end`: every partition of `topic`,
/// alone, up to its end, into `db`.
pub fn drain(topic: &str, db: &TestDb) -> Cmd {
    streamlab("consume")
        .assign_all()
        .topic(topic)
        .db(db)
        .stop_at_end()
}

/// `consume --stop-at-end --format json` of `topic` on `brokers` into `db_url` (the default
/// group, as a member): its summary.
pub fn consume_json(brokers: &str, topic: &str, db_url: &str) -> Cmd {
    streamlab("consume")
        .brokers(brokers)
        .topic(topic)
        .url(db_url)
        .stop_at_end()
        .json()
}

/// Send raw record values (each keyed `key`) to `partition`, bypassing streamlab's producer.
pub fn produce_raw(topic: &str, partition: i32, key: &[u8], values: Vec<Option<Vec<u8>>>) {
    produce_raw_keyed(topic, partition, Some(key), values)
}

/// [`produce_raw`] with any key, or none.
pub fn produce_raw_keyed(
    topic: &str,
    partition: i32,
    key: Option<&[u8]>,
    values: Vec<Option<Vec<u8>>>,
) {
    use rskafka::client::partition::{Compression, UnknownTopicHandling};
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = rskafka::client::ClientBuilder::new(vec![brokers()])
            .build()
            .await
            .unwrap();
        let pc = client
            .partition_client(topic, partition, UnknownTopicHandling::Retry)
            .await
            .unwrap();
        let records = values
            .into_iter()
            .map(|value| rskafka::record::Record {
                key: key.map(<[u8]>::to_vec),
                value,
                headers: Default::default(),
                timestamp: rskafka::chrono::DateTime::from_timestamp_millis(
                    time::OffsetDateTime::now_utc().unix_timestamp() * 1000,
                )
                .unwrap(),
            })
            .collect();
        pc.produce(records, Compression::NoCompression)
            .await
            .unwrap();
    });
}

/// Earliest and latest offsets per partition of `topic` on `brokers`, from `topic describe
/// --format json`.
pub fn offsets_via(brokers: &str, topic: &str) -> BTreeMap<i64, (i64, i64)> {
    let described = streamlab("topic describe")
        .brokers(brokers)
        .topic(topic)
        .json()
        .ok_json();
    described["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["partition"].as_i64().unwrap(),
                (
                    p["log_start"].as_i64().unwrap(),
                    p["log_end"].as_i64().unwrap(),
                ),
            )
        })
        .collect()
}

/// The end offset (next offset to be written) per partition.
pub fn end_offsets(topic: &str) -> BTreeMap<i64, i64> {
    end_offsets_via(&brokers(), topic)
}

pub fn end_offsets_via(brokers: &str, topic: &str) -> BTreeMap<i64, i64> {
    offsets_via(brokers, topic)
        .into_iter()
        .map(|(p, (_, end))| (p, end))
        .collect()
}

/// Every record on the broker: the sum of the end offsets.
pub fn total_records(topic: &str) -> i64 {
    end_offsets(topic).values().sum()
}

/// A `consume --format json` summary's next offset per partition.
pub fn next_offsets(summary: &serde_json::Value) -> BTreeMap<i64, i64> {
    summary["partitions"]
        .as_object()
        .unwrap_or_else(|| panic!("not a consume summary: {summary}"))
        .iter()
        .map(|(p, pos)| (p.parse().unwrap(), pos["committed"].as_i64().unwrap()))
        .collect()
}

/// A `consume --format json` summary's counter `name` (consumed, inserted, duplicates,
/// dead_lettered).
pub fn counted(summary: &serde_json::Value, name: &str) -> u64 {
    summary[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no {name} in {summary}"))
}

/// The ids a seeded `produce --kind sales --seed SEED --count N` sends, in order.
pub fn seeded_ids(seed: u64, n: usize) -> BTreeSet<String> {
    let mut g = streamlab::events::Generator::new(streamlab::events::EventKind::Sales, Some(seed));
    (0..n)
        .map(|_| {
            g.next_event(time::OffsetDateTime::now_utc())
                .id()
                .to_string()
        })
        .collect()
}

// --- The independent clients (Python) ------------------------------------------------------------

/// The Python the tests run: STREAMLAB_TEST_PYTHON (`just test` sets it to target/test-venv's,
/// which has confluent-kafka), else `python3`.
pub fn python_bin() -> String {
    std::env::var("STREAMLAB_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// `python_bin()`, once checked to import confluent-kafka (the independent client): without it,
/// every cross-check fails with one line that says what to do instead of a traceback.
pub fn rdkafka_python() -> String {
    static CHECKED: std::sync::OnceLock<Result<String, String>> = std::sync::OnceLock::new();
    let checked = CHECKED.get_or_init(|| {
        let python = python_bin();
        match Command::new(&python)
            .args(["-c", "import confluent_kafka"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
        {
            Ok(status) if status.success() => Ok(python),
            Ok(_) => Err(format!(
                "{python} cannot import confluent_kafka: run the tests with `just test` (it installs confluent-kafka into target/test-venv)"
            )),
            Err(e) => Err(format!(
                "cannot run {python} ({e}): run the tests with `just test` (it sets up target/test-venv)"
            )),
        }
    });
    match checked {
        Ok(python) => python.clone(),
        Err(message) => panic!("{message}"),
    }
}

/// tests/py/`script`.
pub fn py_script(script: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(script)
}

/// Run a helper script with the independent client (librdkafka via confluent-kafka).
pub fn python(script: &str, args: &[&str]) -> String {
    python_via(&brokers(), script, args)
}

/// [`python`] against `brokers`.
pub fn python_via(brokers: &str, script: &str, args: &[&str]) -> String {
    let out = Command::new(rdkafka_python())
        .arg(py_script(script))
        .args(args)
        .env("STREAMLAB_BROKERS", brokers)
        .output()
        .expect("run the test Python");
    assert!(
        out.status.success(),
        "{script} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The Kafka group's committed offsets for `topic`, as librdkafka reads them (partitions
/// without one left out).
pub fn committed_in_kafka(group: &str, topic: &str) -> BTreeMap<i64, i64> {
    let seen: BTreeMap<String, i64> =
        serde_json::from_str(&python("rdkafka_client.py", &["committed", group, topic])).unwrap();
    seen.into_iter()
        .map(|(p, o)| (p.parse().unwrap(), o))
        .filter(|(_, o)| *o >= 0)
        .collect()
}

/// The event ids in records read back by the Python clients (their `value` is an event's JSON).
pub fn event_ids(records: &[serde_json::Value]) -> Vec<String> {
    records
        .iter()
        .map(|r| {
            let value: serde_json::Value =
                serde_json::from_str(r["value"].as_str().unwrap()).unwrap();
            value["id"].as_str().unwrap().to_string()
        })
        .collect()
}

/// Every record's JSON value in `topic`, read with librdkafka (a client nobody here wrote).
pub fn read_back(topic: &str) -> Vec<serde_json::Value> {
    python("rdkafka_client.py", &["read", topic])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

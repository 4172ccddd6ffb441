//! Shared helpers: run the real `streamlab` binary against the real broker and databases.
//!
//! The broker address comes from STREAMLAB_BROKERS, the PostgreSQL server from
//! STREAMLAB_TEST_PG and the Python with confluent-kafka from STREAMLAB_TEST_PYTHON (all three
//! set by `just test`, see scripts/test). Every test works on its own fresh topic and database,
//! so tests run in parallel.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

use rand::Rng;

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

/// A fresh name, so tests never see each other's data.
pub fn unique(prefix: &str) -> String {
    let n: u64 = rand::rng().random();
    format!("{prefix}-{n:016x}")
}

pub fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_streamlab"));
    cmd.args(args)
        .env("STREAMLAB_BROKERS", brokers())
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "streamlab=info");
    cmd
}

/// Run `streamlab ARGS…` to completion.
pub fn streamlab(args: &[&str]) -> Output {
    command(args).output().expect("run streamlab")
}

/// Run and require success; returns stdout.
pub fn ok(args: &[&str]) -> String {
    let out = streamlab(args);
    assert!(
        out.status.success(),
        "streamlab {args:?} failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// Run a command that must fail with exit `code`, its stderr naming everything in `says` and
/// showing nothing in `never` (passwords); returns stderr.
pub fn fails(args: &[&str], code: i32, says: &[&str], never: &[&str]) -> String {
    let out = streamlab(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "streamlab {args:?}: {stderr}"
    );
    for text in says {
        assert!(stderr.contains(text), "stderr lacks {text:?}: {stderr}");
    }
    for secret in never {
        assert!(
            !stderr.contains(secret),
            "stderr shows {secret:?}: {stderr}"
        );
    }
    stderr
}

pub fn spawn(args: &[&str]) -> Child {
    command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn streamlab")
}

pub fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([format!("-{sig}"), child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// `produce --count N --rate 0 --seed SEED` to `topic` through `brokers`, to completion.
pub fn produce_and_wait(brokers: &str, topic: &str, count: usize, seed: u64) {
    ok(&[
        "produce",
        "-b",
        brokers,
        "--topic",
        topic,
        "--count",
        &count.to_string(),
        "--rate",
        "0",
        "--seed",
        &seed.to_string(),
    ]);
}

/// Send raw record values (each keyed `key`) to `partition`, bypassing streamlab's producer.
pub fn produce_raw(topic: &str, partition: i32, key: &[u8], values: Vec<Option<Vec<u8>>>) {
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
                key: Some(key.to_vec()),
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

/// A new topic with `partitions` partitions.
pub fn topic(partitions: u32) -> String {
    let name = unique("t");
    ok(&[
        "topic",
        "create",
        "--topic",
        &name,
        "--partitions",
        &partitions.to_string(),
    ]);
    name
}

/// A fresh topic named `prefix-…` on `brokers`, with topic configs (`key=value`).
pub fn topic_via(brokers: &str, prefix: &str, partitions: u32, configs: &[&str]) -> String {
    let name = unique(prefix);
    let partitions = partitions.to_string();
    let mut args = vec![
        "topic",
        "create",
        "-b",
        brokers,
        "--topic",
        &name,
        "--partitions",
        &partitions,
    ];
    for config in configs {
        args.extend(["--config", config]);
    }
    ok(&args);
    name
}

/// `consume --stop-at-end --format json` of `topic` on `brokers` into `db_url`: its summary.
pub fn consume_json(brokers: &str, topic: &str, db_url: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "consume",
        "-b",
        brokers,
        "--topic",
        topic,
        "-D",
        db_url,
        "--stop-at-end",
        "--format",
        "json",
    ];
    args.extend_from_slice(extra);
    serde_json::from_str(&ok(&args)).unwrap()
}

/// Run `cmd` (built with [`command`]) and require success; returns stdout.
pub fn ok_output(mut cmd: Command) -> Vec<u8> {
    let out = cmd.output().expect("run streamlab");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Run a helper script with the independent client (librdkafka via confluent-kafka).
pub fn python(script: &str, args: &[&str]) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(script);
    let out = Command::new(rdkafka_python())
        .arg(path)
        .args(args)
        .env("STREAMLAB_BROKERS", brokers())
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

/// Every record's JSON value in `topic`, read with librdkafka (a client nobody here wrote).
pub fn read_back(topic: &str) -> Vec<serde_json::Value> {
    python("rdkafka_client.py", &["read", topic])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Earliest and latest offsets per partition, from `topic describe --format json`.
pub fn offsets(topic: &str) -> BTreeMap<i64, (i64, i64)> {
    offsets_via(&brokers(), topic)
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

/// The event count of a `produce` summary ("produced N events to …").
pub fn produced_count(stdout: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(stdout);
    text.split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a produce summary: {text}"))
}

pub fn offsets_via(brokers: &str, topic: &str) -> BTreeMap<i64, (i64, i64)> {
    let json: serde_json::Value = serde_json::from_str(&ok(&[
        "topic", "describe", "-b", brokers, "--topic", topic, "--format", "json",
    ]))
    .unwrap();
    json["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["partition"].as_i64().unwrap(),
                (
                    p["earliest_offset"].as_i64().unwrap(),
                    p["latest_offset"].as_i64().unwrap(),
                ),
            )
        })
        .collect()
}

/// A database for one test: a fresh PostgreSQL database or SQLite file, removed afterwards.
pub struct TestDb {
    pub sink: &'static str,
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    pg_name: Option<String>,
}

impl TestDb {
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("warehouse.db").display());
        Self {
            sink: "sqlite",
            url,
            _dir: Some(dir),
            pg_name: None,
        }
    }

    pub fn pg() -> Self {
        let name = unique("streamlab_test").replace('-', "_");
        let admin = pg_admin_url();
        psql(&admin, &format!("CREATE DATABASE {name}"));
        let base = admin.rsplit_once('/').unwrap().0;
        Self {
            sink: "pg",
            url: format!("{base}/{name}"),
            _dir: None,
            pg_name: Some(name),
        }
    }

    pub fn both() -> [TestDb; 2] {
        [TestDb::sqlite(), TestDb::pg()]
    }

    /// A single number from SQL (the sink's own dialect).
    pub fn scalar(&self, sql: &str) -> i64 {
        let out = match self.sink {
            "pg" => psql(&self.url, sql),
            _ => sqlite(&self.url, sql),
        };
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{sql} gave {out:?}"))
    }

    pub fn lines(&self, sql: &str) -> Vec<String> {
        let out = match self.sink {
            "pg" => psql(&self.url, sql),
            _ => sqlite(&self.url, sql),
        };
        out.lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// Stored next offsets per partition for `topic`.
    pub fn stored_offsets(&self, topic: &str) -> BTreeMap<i64, i64> {
        self.lines(&format!(
            "SELECT kafka_partition, next_offset FROM streamlab_offsets WHERE topic = '{topic}' ORDER BY 1"
        ))
        .iter()
        .map(|l| {
            let (p, o) = l.split_once('|').unwrap();
            (p.parse().unwrap(), o.parse().unwrap())
        })
        .collect()
    }

    /// Every stored sales id.
    pub fn sales_ids(&self) -> std::collections::BTreeSet<String> {
        self.lines("SELECT id FROM sales_events")
            .into_iter()
            .collect()
    }

    pub fn exec(&self, sql: &str) {
        match self.sink {
            "pg" => psql(&self.url, sql),
            _ => sqlite(&self.url, sql),
        };
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = &self.pg_name {
            let _ = Command::new("psql")
                .args([
                    &pg_admin_url(),
                    "-qAtc",
                    &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                ])
                .output();
        }
    }
}

pub fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-qAt", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// SQLite through Python's sqlite3 (no sqlite3 CLI needed).
pub fn sqlite(url: &str, sql: &str) -> String {
    let path = url.trim_start_matches("sqlite://");
    let script = "import sqlite3,sys\nc=sqlite3.connect(sys.argv[1])\nfor r in c.execute(sys.argv[2]): print('|'.join('' if v is None else str(v) for v in r))\nc.commit()";
    let out = Command::new(python_bin())
        .args(["-c", script, path, sql])
        .output()
        .expect("run the test Python");
    assert!(
        out.status.success(),
        "sqlite {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub mod front;
pub mod proxy;
pub mod secure;

/// A tansu broker of a test's own, reachable only through `proxy` (it advertises the proxy's
/// port, so every client connection — bootstrap and leader alike — goes through it).
pub struct Tansu {
    child: Child,
    port: u16,
    pub proxy: proxy::Proxy,
    /// `memory://tansu/`, or a SQLite engine file in `dir`.
    storage: String,
    dir: Option<tempfile::TempDir>,
}

impl Tansu {
    /// In memory: fast, and a restart comes back empty.
    pub fn behind_proxy() -> Self {
        Self::with_storage("memory://tansu/".into(), None)
    }

    /// tansu's SQLite engine in a directory of its own, maintenance (retention) every second:
    /// a restart keeps everything, as `just broker` does.
    pub fn durable() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::with_storage(
            "sqlite://tansu.db?maintenance_interval=1s".into(),
            Some(dir),
        )
    }

    fn with_storage(storage: String, dir: Option<tempfile::TempDir>) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let proxy = proxy::Proxy::start(format!("127.0.0.1:{port}").parse().unwrap());
        let mut tansu = Self {
            child: Command::new("true").spawn().unwrap(),
            port,
            proxy,
            storage,
            dir,
        };
        tansu.child = tansu.start();
        tansu
    }

    /// SIGKILL the broker and start a new one on the same port and storage: in memory it comes
    /// back empty (a topic created again gets a new id), as a broker that lost its data would;
    /// durable, it comes back with everything.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = self.start();
    }

    fn start(&self) -> Child {
        let mut cmd = Command::new("tansu");
        cmd.args([
            "broker",
            "--listener-url",
            &format!("tcp://127.0.0.1:{}", self.port),
            "--advertised-listener-url",
            &format!("tcp://127.0.0.1:{}", self.proxy.port),
            "--storage-engine",
            &self.storage,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if let Some(dir) = &self.dir {
            cmd.current_dir(dir.path());
        }
        let child = cmd
            .spawn()
            .expect("tansu must be installed (just install-broker)");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "tansu did not start");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        child
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.proxy.port)
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The ids a seeded `produce --kind sales --seed SEED --count N` sends, in order.
pub fn seeded_ids(seed: u64, n: usize) -> std::collections::BTreeSet<String> {
    let mut g = streamlab::events::Generator::new(streamlab::events::EventKind::Sales, Some(seed));
    (0..n)
        .map(|_| {
            g.next_event(time::OffsetDateTime::now_utc())
                .id()
                .to_string()
        })
        .collect()
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

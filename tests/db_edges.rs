//! The edges of exactly-once: a database that stops answering (the connection stays open, no
//! byte comes back), and rows the database refuses. Each scenario knows the id set it produced
//! and requires exactly that in the sink — no loss, no duplicate — with the stored offsets equal
//! to the end offsets.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use streamlab::events::{Event, EventKind, Generator, Sale};

/// `--timeout` of the consumers whose database freezes.
const TIMEOUT: Duration = Duration::from_secs(3);

/// Wait up to `within` for `child` to exit; kill it (and fail) if it does not.
fn exit_within(mut child: Child, within: Duration, what: &str) -> Output {
    let deadline = Instant::now() + within;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            signal(&child, "KILL");
            let out = child.wait_with_output().unwrap();
            panic!(
                "{what} still running {within:?} later:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// The one line a consumer whose database froze ends with.
fn frozen_line(url: &str) -> String {
    format!(
        "error: PostgreSQL at {url} did not answer within {}s; nothing after the last committed \
         batch was written, restart to resume",
        TIMEOUT.as_secs()
    )
}

fn error_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.starts_with("error")).collect()
}

#[test]
fn a_database_that_stops_answering_ends_consume_within_its_timeout_and_loses_nothing() {
    let db = TestDb::pg();
    let (pg, via_proxy) = pg_behind_proxy(&db);
    let topic = topic(3);
    let n = 6000;
    ok(&["migrate", "--sink", "pg", "-D", &db.url]);
    let producer = spawn(&[
        "produce",
        "--topic",
        &topic,
        "--count",
        &n.to_string(),
        "--rate",
        "1500",
        "--seed",
        "41",
    ]);
    let timeout = format!("{}s", TIMEOUT.as_secs());
    let consumer = spawn(&[
        "consume",
        "--assign",
        "all",
        "--topic",
        &topic,
        "--sink",
        "pg",
        "-D",
        &via_proxy,
        "--timeout",
        &timeout,
        "--batch-size",
        "200",
    ]);
    // Freeze once the consumer writes (so it holds connections, and is writing, when it hits).
    assert!(wait_until(30, || db
        .scalar("SELECT COUNT(*) FROM sales_events")
        > 0));
    pg.freeze();
    let frozen = Instant::now();
    let out = exit_within(consumer, TIMEOUT * 4, "consume after the freeze");
    let took = frozen.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("consume exited {took:?} after the freeze:\n{stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // One deadline, one retry on a new connection with another, then out.
    assert!(
        took < TIMEOUT * 2 + Duration::from_secs(3),
        "took {took:?}: {stderr}"
    );
    assert_eq!(
        error_lines(&stderr),
        vec![frozen_line(&via_proxy)],
        "{stderr}"
    );
    let stored = db.scalar("SELECT COUNT(*) FROM sales_events");
    assert!(
        stored < n as i64,
        "the freeze came too late to test anything"
    );

    // Bytes flow again (the frozen sessions see their client gone and roll back); a rerun
    // resumes from the last committed batch.
    assert!(producer.wait_with_output().unwrap().status.success());
    pg.thaw();
    ok(&[
        "consume",
        "--assign",
        "all",
        "--topic",
        &topic,
        "--sink",
        "pg",
        "-D",
        &via_proxy,
        "--stop-at-end",
    ]);
    assert_eq!(db.sales_ids(), seeded_ids(41, n));
    assert_eq!(db.stored_offsets(&topic), end_offsets(&topic));
}

/// A consumer running in the background, its output collected line by line.
struct Running {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Running {
    fn start(args: &[&str]) -> Self {
        let mut child = command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn streamlab");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let streams: [Box<dyn std::io::Read + Send>; 2] = [
            Box::new(child.stdout.take().unwrap()),
            Box::new(child.stderr.take().unwrap()),
        ];
        for stream in streams {
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            });
        }
        Self { child, lines }
    }

    fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// The latest "generation N: partitions [...]" this member logged.
    fn assignment(&self) -> Option<(i32, BTreeSet<i32>)> {
        let lines = self.lines.lock().unwrap();
        lines.iter().rev().find_map(|line| {
            let rest = line.split_once(" generation ")?.1;
            let (generation, rest) = rest.split_once(": partitions [")?;
            let list = rest.split_once(']')?.0;
            let partitions = list
                .split(',')
                .filter_map(|p| p.trim().parse().ok())
                .collect();
            Some((generation.parse().ok()?, partitions))
        })
    }

    /// Wait up to `within` for the exit; kill (and fail) otherwise. Returns code and output.
    fn exit_within(mut self, within: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + within;
        while self.child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                signal(&self.child, "KILL");
                let _ = self.child.wait();
                panic!("still running {within:?} later:\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let status = self.child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(200)); // let the readers drain the pipes
        (status.code(), self.output())
    }
}

fn group_members(topic: &str, group: &str) -> usize {
    let described: serde_json::Value = serde_json::from_str(&ok(&[
        "topic", "describe", "--topic", topic, "--group", group, "--format", "json",
    ]))
    .unwrap();
    described["group"]["members"]
        .as_array()
        .map_or(0, |members| members.len())
}

#[test]
fn a_group_member_whose_database_stops_answering_leaves_the_group_and_exits_1() {
    let db = TestDb::pg();
    let (pg, via_proxy) = pg_behind_proxy(&db);
    let topic = topic(2);
    let group = unique("g");
    let n = 8000;
    ok(&["migrate", "--sink", "pg", "-D", &db.url]);
    let producer = spawn(&[
        "produce",
        "--topic",
        &topic,
        "--count",
        &n.to_string(),
        "--rate",
        "800",
        "--seed",
        "42",
    ]);
    let member = |url: &str, timeout: &str| {
        Running::start(&[
            "consume",
            "--topic",
            &topic,
            "--sink",
            "pg",
            "-D",
            url,
            "--group",
            &group,
            // Long: the member must be gone at once because it left, not because it expired.
            "--session-timeout",
            "30s",
            "--timeout",
            timeout,
            "--batch-size",
            "200",
        ])
    };
    let a = member(&via_proxy, &format!("{}s", TIMEOUT.as_secs()));
    assert!(
        wait_until(30, || a.assignment().is_some()),
        "{}",
        a.output()
    );
    // b waits out a's frozen transaction (its locks) without giving up.
    let b = member(&db.url, "30s");
    let settled = |a: &Running, b: &Running| match (a.assignment(), b.assignment()) {
        (Some((ga, pa)), Some((gb, pb))) => ga == gb && pa.len() == 1 && pb.len() == 1,
        _ => false,
    };
    assert!(
        wait_until(45, || settled(&a, &b)),
        "a:\n{}\nb:\n{}",
        a.output(),
        b.output()
    );
    let (generation, held_by_a) = a.assignment().unwrap();
    let written_by_a = || {
        let p = held_by_a.iter().next().unwrap();
        db.scalar(&format!(
            "SELECT COUNT(*) FROM streamlab_offsets WHERE topic = '{topic}' AND kafka_partition = {p}"
        )) > 0
    };
    assert!(wait_until(30, written_by_a), "{}", a.output());
    assert_eq!(group_members(&topic, &group), 2);

    pg.freeze();
    let frozen = Instant::now();
    let (code, out) = a.exit_within(TIMEOUT * 4);
    let took = frozen.elapsed();
    eprintln!("member a exited {took:?} after the freeze:\n{out}");
    assert_eq!(code, Some(1), "{out}");
    assert!(
        took < TIMEOUT * 2 + Duration::from_secs(4),
        "took {took:?}: {out}"
    );
    assert_eq!(error_lines(&out), vec![frozen_line(&via_proxy)], "{out}");

    // a left: b gets both partitions in a new generation, and a is no longer listed, long
    // before a's 30 s session would have expired.
    let left = Instant::now();
    assert!(
        wait_until(15, || b
            .assignment()
            .is_some_and(|(g, ps)| g > generation && ps.len() == 2)),
        "b:\n{}",
        b.output()
    );
    assert!(wait_until(10, || group_members(&topic, &group) == 1));
    assert!(
        left.elapsed() < Duration::from_secs(20),
        "{:?}",
        left.elapsed()
    );

    pg.thaw();
    assert!(producer.wait_with_output().unwrap().status.success());
    assert!(
        wait_until(60, || db.scalar("SELECT COUNT(*) FROM sales_events")
            as usize
            >= n),
        "b stored {} of {n}:\n{}",
        db.scalar("SELECT COUNT(*) FROM sales_events"),
        b.output()
    );
    signal(&b.child, "TERM");
    let (code, out) = b.exit_within(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(db.sales_ids(), seeded_ids(42, n));
    let written: BTreeMap<i64, i64> = end_offsets(&topic)
        .into_iter()
        .filter(|(_, end)| *end > 0)
        .collect();
    assert_eq!(db.stored_offsets(&topic), written);
}

/// The sales a seeded `produce --seed SEED --count N` sends, in order.
fn seeded_sales(seed: u64, n: usize) -> Vec<Sale> {
    let mut g = Generator::new(EventKind::Sales, Some(seed));
    (0..n)
        .map(|_| match g.next_event(time::OffsetDateTime::now_utc()) {
            Event::Sale(s) => s,
            Event::Sensor(_) => unreachable!("sales generator"),
        })
        .collect()
}

fn raw_sale(id: &str, store_id: &str) -> Vec<u8> {
    serde_json::json!({
        "id": id,
        "ts": "2026-01-01T00:00:00Z",
        "store_id": store_id,
        "amount_usd": 12.5,
        "channel": "online",
    })
    .to_string()
    .into_bytes()
}

#[test]
fn events_the_database_refuses_become_dead_letters_and_the_stream_goes_on() {
    for db in TestDb::both() {
        let topic = topic(2);
        let n = 3000;
        produce_and_wait(&brokers(), &topic, n, 43);
        let sales = seeded_sales(43, n);
        let closed = Generator::new(EventKind::Sales, Some(43)).stores()[4].clone();
        // A sale of the closed store, and one whose store_id holds a NUL (valid JSON, valid
        // UTF-8, a valid event; PostgreSQL text cannot hold it, SQLite's can).
        let (closed_id, nul_id) = (
            "0190d7a4-8a8e-7cc0-8d1c-2b7d8f3a9e20",
            "0190d7a4-8a8e-7cc0-8d1c-2b7d8f3a9e21",
        );
        produce_raw(
            &topic,
            1,
            b"raw",
            vec![
                Some(raw_sale(closed_id, &closed)),
                Some(raw_sale(nul_id, "nul\0store")),
            ],
        );
        ok(&["migrate", "--sink", db.sink, "-D", &db.url]);
        let reason = match db.sink {
            "pg" => {
                db.exec(&format!(
                    "ALTER TABLE sales_events ADD CONSTRAINT no_closed_store \
                     CHECK (store_id <> '{closed}')"
                ));
                "no_closed_store"
            }
            _ => {
                db.exec(&format!(
                    "CREATE TRIGGER no_closed_store BEFORE INSERT ON sales_events \
                     WHEN NEW.store_id = '{closed}' \
                     BEGIN SELECT RAISE(ABORT, 'store {closed} is closed'); END"
                ));
                "is closed"
            }
        };

        let out = ok(&[
            "consume",
            "--assign",
            "all",
            "--topic",
            &topic,
            "--sink",
            db.sink,
            "-D",
            &db.url,
            "--stop-at-end",
            "--batch-size",
            "500",
        ]);

        let mut refused: BTreeSet<String> = sales
            .iter()
            .filter(|s| s.store_id == closed)
            .map(|s| s.id.to_string())
            .collect();
        refused.insert(closed_id.to_string());
        if db.sink == "pg" {
            refused.insert(nul_id.to_string());
        }
        let mut all: BTreeSet<String> = sales.iter().map(|s| s.id.to_string()).collect();
        all.extend([closed_id.to_string(), nul_id.to_string()]);
        let stored: BTreeSet<String> = all.difference(&refused).cloned().collect();
        assert!(refused.len() > 100, "{}", refused.len());
        assert!(
            out.contains(&format!("consumed {} ", n + 2))
                && out.contains(&format!("{} inserted", stored.len()))
                && out.contains(&format!("{} dead-lettered", refused.len())),
            "{}: {out}",
            db.sink
        );
        assert_eq!(db.sales_ids(), stored, "{}", db.sink);

        // Each refused record is in dead_letters once, byte for byte, with the database's reason.
        let payload = match db.sink {
            "pg" => "convert_from(payload, 'UTF8')",
            _ => "CAST(payload AS TEXT)",
        };
        let letters = db.lines(&format!(
            "SELECT {payload} FROM dead_letters WHERE topic = '{topic}'"
        ));
        let ids: Vec<String> = letters
            .iter()
            .map(|json| {
                let value: serde_json::Value = serde_json::from_str(json).unwrap();
                value["id"].as_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(ids.len(), refused.len(), "{}", db.sink);
        assert_eq!(ids.into_iter().collect::<BTreeSet<_>>(), refused);
        assert_eq!(
            db.scalar(&format!(
                "SELECT COUNT(*) FROM dead_letters WHERE error LIKE '%{reason}%'"
            )) as usize,
            refused.len() - usize::from(db.sink == "pg"),
            "{}",
            db.sink
        );
        if db.sink == "pg" {
            // 22021: its low byte, 5, once passed for SQLite's BUSY and stalled the stream.
            assert_eq!(
                db.scalar("SELECT COUNT(*) FROM dead_letters WHERE error LIKE '%22021%'"),
                1
            );
        }
        assert_eq!(
            db.stored_offsets(&topic),
            end_offsets(&topic),
            "{}",
            db.sink
        );

        // Nothing left to do on a second pass.
        let out = ok(&[
            "consume",
            "--assign",
            "all",
            "--topic",
            &topic,
            "--sink",
            db.sink,
            "-D",
            &db.url,
            "--stop-at-end",
        ]);
        assert!(out.contains("consumed 0 "), "{out}");
    }
}

//! The edges of exactly-once: a database that stops answering (the connection stays open, no
//! byte comes back), rows the database refuses, and a server without connections to spare. Each scenario knows the id set it produced
//! and requires exactly that in the sink — no loss, no duplicate — with the stored offsets equal
//! to the end offsets.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::support::*;
use streamlab::events::{Event, EventKind, Generator, Sale};

/// `--timeout` of the consumers whose database freezes.
const TIMEOUT: Duration = Duration::from_secs(3);

/// The one line a consumer whose database froze ends with.
fn frozen_line(url: &str) -> String {
    format!(
        "error: PostgreSQL at {url} did not answer within {}s; nothing after the last committed \
         batch was written, restart to resume",
        TIMEOUT.as_secs()
    )
}

/// Ended by `deadlines` of --timeout TIMEOUT: at least one whole deadline, at most `deadlines`
/// of them and 6 s (process start and connections on two busy cores) — under `deadlines` of
/// the 10 s default, and far under the 60 s the lock holder sleeps, so it is our --timeout that
/// ended it.
fn assert_ended_by_the_timeout(took: Duration, deadlines: u32, output: &str) {
    let (least, most) = (TIMEOUT, TIMEOUT * deadlines + Duration::from_secs(6));
    assert!(
        most < Duration::from_secs(10) * deadlines,
        "the bound no longer tells TIMEOUT from the default"
    );
    assert!(
        least <= took && took < most,
        "took {took:?}, not within {least:?}..{most:?}: {output}"
    );
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
    streamlab("migrate").sink("pg").url(&db.url).ok();
    let producer = produce(&topic, n).rate(1500).seed(41).spawn();
    let consume = || streamlab("consume").assign_all().topic(&topic).sink("pg");
    let consumer = consume()
        .url(&via_proxy)
        .timeout(&format!("{}s", TIMEOUT.as_secs()))
        .batch_size(200)
        .spawn();
    // Freeze once the consumer writes (so it holds connections, and is writing, when it hits).
    assert!(wait_until(30, || db.count("sales_events") > 0));
    pg.freeze();
    let frozen = Instant::now();
    let out = consumer.exit_within(Duration::from_secs(40), "consume after the freeze");
    let took = frozen.elapsed();
    let stderr = &out.stderr;
    eprintln!("consume exited {took:?} after the freeze:\n{stderr}");
    assert_eq!(out.code, Some(1), "{stderr}");
    // One deadline, one retry on a new connection with another, then out: at least a whole
    // deadline after the freeze, and two plus a margin for a busy machine — below the two of
    // the 10 s default, so it is --timeout that ended it (how fast belongs to `just bench`).
    assert_ended_by_the_timeout(took, 2, stderr);
    assert_eq!(
        error_lines(stderr),
        vec![frozen_line(&via_proxy)],
        "{stderr}"
    );
    let stored = db.count("sales_events");
    assert!(
        stored < n as i64,
        "the freeze came too late to test anything"
    );

    // Bytes flow again (the frozen sessions see their client gone and roll back); a rerun
    // resumes from the last committed batch.
    assert!(producer.wait().succeeded());
    pg.thaw();
    consume().url(&via_proxy).stop_at_end().ok();
    assert_eq!(db.sales_ids(), seeded_ids(41, n));
    assert_eq!(db.stored_offsets(&topic), end_offsets(&topic));
}

fn group_members(topic: &str, group: &str) -> usize {
    let described = streamlab("topic describe")
        .topic(topic)
        .group(group)
        .json()
        .ok_json();
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
    streamlab("migrate").sink("pg").url(&db.url).ok();
    let producer = produce(&topic, n).rate(800).seed(42).spawn();
    let member = |url: &str, timeout: &str| {
        streamlab("consume")
            .topic(&topic)
            .sink("pg")
            .url(url)
            .group(&group)
            // Long: the member must be gone at once because it left, not because it expired.
            .session_timeout("30s")
            .timeout(timeout)
            .batch_size(200)
            .spawn()
    };
    let held = |m: &Running| m.assignment_in(&group, &topic, &db);
    let a = member(&via_proxy, &format!("{}s", TIMEOUT.as_secs()));
    assert!(wait_until(30, || held(&a).is_some()), "{}", a.output());
    // b waits out a's frozen transaction (its locks) without giving up.
    let b = member(&db.url, "30s");
    let settled = |a: &Running, b: &Running| match (held(a), held(b)) {
        (Some((ga, pa)), Some((gb, pb))) => ga == gb && pa.len() == 1 && pb.len() == 1,
        _ => false,
    };
    assert!(
        wait_until(45, || settled(&a, &b)),
        "a:\n{}\nb:\n{}",
        a.output(),
        b.output()
    );
    let (generation, held_by_a) = held(&a).unwrap();
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
    let exited = a.exit_within(Duration::from_secs(40), "member a after the freeze");
    let took = frozen.elapsed();
    let (code, out) = (exited.code, format!("{}{}", exited.stdout, exited.stderr));
    eprintln!("member a exited {took:?} after the freeze:\n{out}");
    assert_eq!(code, Some(1), "{out}");
    assert_ended_by_the_timeout(took, 2, &out);
    assert_eq!(error_lines(&out), vec![frozen_line(&via_proxy)], "{out}");

    // a left: b gets both partitions in a new generation, and a is no longer listed, long
    // before a's 30 s session would have expired.
    let left = Instant::now();
    assert!(
        wait_until(25, || held(&b)
            .is_some_and(|(g, ps)| g > generation && ps.len() == 2)),
        "b:\n{}",
        b.output()
    );
    assert!(wait_until(25, || group_members(&topic, &group) == 1));
    // Any time under the 30 s session proves a left; the margin is for a busy machine.
    assert!(
        left.elapsed() < Duration::from_secs(25),
        "{:?}",
        left.elapsed()
    );

    pg.thaw();
    assert!(producer.wait().succeeded());
    assert!(
        wait_until(60, || db.count("sales_events") as usize >= n),
        "b stored {} of {n}:\n{}",
        db.count("sales_events"),
        b.output()
    );
    b.signal("TERM");
    let out = b.exit_within(Duration::from_secs(30), "member b after SIGTERM");
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
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
        streamlab("migrate").db(&db).ok();
        let reason = db.refuse_sales_of(&closed);

        let out = drain(&topic, &db).batch_size(500).json().ok_json();

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
        assert_eq!(
            (
                counted(&out, "consumed"),
                counted(&out, "inserted"),
                counted(&out, "dead_lettered")
            ),
            (n as u64 + 2, stored.len() as u64, refused.len() as u64),
            "{}: {out}",
            db.sink
        );
        assert_eq!(db.sales_ids(), stored, "{}", db.sink);

        // Each refused record is in dead_letters once, byte for byte, with the database's reason.
        let payload = db.payload_as_text();
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
        let out = drain(&topic, &db).json().ok_json();
        assert_eq!(counted(&out, "consumed"), 0, "{out}");
    }
}

/// Another session holding `table` (ACCESS EXCLUSIVE) until killed: every read of it waits, as
/// on a frozen server.
fn hold_lock(db: &TestDb, table: &str) -> std::process::Child {
    let holder = std::process::Command::new("psql")
        .args([
            &db.url,
            "-qAt",
            "-c",
            &format!(
                "BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(60); COMMIT;"
            ),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("psql");
    assert!(wait_until(10, || db.scalar(&format!(
        "SELECT COUNT(*) FROM pg_locks WHERE relation = '{table}'::regclass \
         AND mode = 'AccessExclusiveLock' AND granted"
    )) == 1));
    holder
}

/// `cmd` with --timeout TIMEOUT: its run, and how long it took.
fn timed(cmd: Cmd, what: &str) -> (Run, Duration) {
    let started = Instant::now();
    let out = cmd
        .timeout(&format!("{}s", TIMEOUT.as_secs()))
        .spawn()
        .exit_within(Duration::from_secs(40), what);
    (out, started.elapsed())
}

/// `cmd` (with --timeout TIMEOUT) run while another session holds `table`: it must exit 1
/// within the timeout (and a margin) with `error` as its one error line.
fn ends_behind_a_lock(db: &TestDb, table: &str, cmd: Cmd, error: &str) {
    let mut holder = hold_lock(db, table);
    let (out, took) = timed(cmd, &format!("{error} (behind a lock on {table})"));
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert_ended_by_the_timeout(took, 1, &out.stderr);
    assert_eq!(error_lines(&out.stderr), vec![error], "{}", out.stderr);
}

#[test]
fn check_against_a_table_locked_elsewhere_ends_within_its_timeout_in_one_line() {
    let db = TestDb::pg();
    streamlab("migrate").sink("pg").url(&db.url).ok();
    let error = format!(
        "error: PostgreSQL at {} did not answer within {}s",
        db.url,
        TIMEOUT.as_secs()
    );
    let check = streamlab("check").sink("pg").url(&db.url);
    ends_behind_a_lock(&db, "sales_events", check, &error);
}

#[test]
fn migrations_held_up_by_another_session_end_within_the_timeout_in_one_line() {
    let db = TestDb::pg();
    streamlab("migrate").sink("pg").url(&db.url).ok();
    let error = format!(
        "error: applying migrations to {}: no answer within {}s (is another process holding \
         the migration lock?)",
        db.url,
        TIMEOUT.as_secs()
    );
    let migrate = streamlab("migrate").sink("pg").url(&db.url);
    ends_behind_a_lock(&db, "_sqlx_migrations", migrate, &error);
}

/// The connection budget is checked once connected: a role allowed two connections runs the
/// default writer count cut down to one (and says so), and refuses `--writers 4` in one line
/// naming the numbers, before writing anything.
#[test]
fn writers_beyond_the_connection_budget_are_refused_at_start_and_the_default_fits_it() {
    let db = TestDb::pg();
    let topic = topic(4);
    produce_and_wait(&brokers(), &topic, 200, 61);
    streamlab("migrate").db(&db).ok();
    let role = unique("streamlab_budget").replace('-', "_");
    let admin = pg_admin_url();
    psql(
        &admin,
        &format!("CREATE ROLE {role} LOGIN CONNECTION LIMIT 2"),
    );
    psql(
        &admin,
        &format!("GRANT pg_read_all_data, pg_write_all_data TO {role}"),
    );
    // The migrator creates its table if missing, which asks for CREATE even when it exists.
    psql(&db.url, &format!("GRANT CREATE ON SCHEMA public TO {role}"));
    let (before, after) = db.url.split_once("postgres@").expect("a postgres@ URL");
    let limited = format!("{before}{role}@{after}");
    let drain_as_role = || {
        streamlab("consume")
            .assign_all()
            .topic(&topic)
            .sink("pg")
            .url(&limited)
            .stop_at_end()
    };

    let refused = drain_as_role().args(["--writers", "4"]).run().fails(
        1,
        &[&format!(
            "error: PostgreSQL at {limited} leaves this consumer 2 connections (role {role} has \
             CONNECTION LIMIT 2, 0 in use by others); --writers 4 needs 5 (a connection per \
             writer and one more): lower --writers, or stop other clients, or raise the limit\n"
        )],
        &[],
    );
    assert_eq!(error_lines(&refused).len(), 1, "{refused}");
    assert_eq!(db.count("sales_events"), 0);

    let run = drain_as_role().json().run().success();
    assert!(
        run.stderr.contains("1 writer for 4 partitions ("),
        "{}",
        run.stderr
    );
    assert!(run
        .stderr
        .contains(", at most 1 here; --writers to choose)"));
    assert_eq!(counted(&run.json(), "inserted"), 200);
    assert_eq!(db.count("sales_events"), 200);
    drop(db);
    psql(&admin, &format!("DROP ROLE {role}"));
}

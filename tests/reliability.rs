//! Faults on purpose, Jepsen-style: each scenario produces a known id set, breaks something while
//! `consume` runs, lets it recover, and requires exactly that id set in the sink — no loss, no
//! duplicate — with the stored offsets equal to the end offsets.

use std::time::Duration;

use crate::support::*;

#[test]
fn the_broker_lost_for_seconds_mid_stream() {
    let broker = Tansu::behind_proxy();
    let b = broker.address();
    let db = TestDb::sqlite();
    let n = 9000;
    streamlab("migrate").db(&db).ok();
    streamlab("topic create")
        .brokers(&b)
        .topic("lossy")
        .partitions(3)
        .ok();
    // 1,500 a second: the stream lasts about 6 s, and the cut comes while it runs.
    let producer = produce("lossy", n)
        .brokers(&b)
        .rate(1500)
        .seed(5)
        .timeout("30s")
        .json()
        .spawn();
    let consumer = streamlab("consume")
        .assign_all()
        .brokers(&b)
        .topic("lossy")
        .db(&db)
        .timeout("30s")
        .spawn();
    let rows = || db.count("sales_events");
    // Cut once the consumer is writing, and before it is done.
    wait_for_rows(30, "rows before the cut", rows, 1);
    broker.proxy.down(); // connections reset, then refused
    assert_mid_stream("the cut", rows(), 0, n);
    std::thread::sleep(Duration::from_secs(6)); // the outage
    broker.proxy.up();
    // Nothing new could be read during the outage: what is missing comes after it.
    let at_up = rows();
    assert!(
        (at_up as usize) < n,
        "all {n} stored before the broker came back"
    );

    let produced = producer.wait();
    assert!(produced.succeeded(), "{}", produced.stderr);
    assert_eq!(
        produced.json()["sent"].as_u64(),
        Some(n as u64),
        "the summary counts what the broker acknowledged"
    );
    wait_for_rows(60, "rows after the broker came back", rows, n as i64);
    let consumed = consumer.terminate();
    assert!(consumed.succeeded(), "{}", consumed.stderr);

    assert_eq!(db.sales_ids(), seeded_ids(5, n));
    assert_eq!(db.stored_offsets("lossy"), end_offsets_via(&b, "lossy"));
}

#[test]
fn the_database_lost_for_seconds_mid_stream() {
    let db = TestDb::pg();
    let (pg, via_proxy) = pg_behind_proxy(&db);
    let topic = topic(3);
    let n = 8000;
    streamlab("migrate").sink("pg").url(&db.url).ok();
    let producer = produce(&topic, n).rate(2000).seed(6).spawn();
    let consumer = streamlab("consume")
        .assign_all()
        .topic(&topic)
        .sink("pg")
        .url(&via_proxy)
        .timeout("30s")
        .batch_size(500)
        .spawn();
    // Take PostgreSQL away once the consumer has written (so it holds connections to lose).
    let rows = || db.count("sales_events");
    wait_for_rows(30, "rows before the outage", rows, 1);
    let before = pg.accepted();
    pg.down();
    assert_mid_stream("the outage", rows(), 0, n);
    std::thread::sleep(Duration::from_secs(4)); // the outage
    pg.up();

    assert!(producer.wait().succeeded());
    if !wait_until(60, || db.count("sales_events") as usize >= n) {
        let out = consumer.kill();
        panic!("consumer stalled:\n{}", out.stderr);
    }
    let consumed = consumer.terminate();
    let stderr = &consumed.stderr;
    assert!(consumed.succeeded(), "{stderr}");
    // Whether the outage hit a query ("retrying") or a connection attempt (the pool waits),
    // the consumer had to reconnect to get its rows in.
    assert!(
        pg.accepted() > before,
        "no reconnection after the outage: {stderr}"
    );

    assert_eq!(db.sales_ids(), seeded_ids(6, n));
    assert_eq!(db.stored_offsets(&topic), end_offsets(&topic));
}

#[test]
fn a_database_that_stays_down_ends_the_run_with_exit_1_and_loses_nothing() {
    let db = TestDb::pg();
    let (pg, via_proxy) = pg_behind_proxy(&db);
    let topic = topic(1);
    produce(&topic, 3000).rate(1000).seed(7).ok();
    streamlab("migrate").sink("pg").url(&via_proxy).ok();
    pg.down();
    let consume = || streamlab("consume").assign_all().topic(&topic).sink("pg");
    let out = consume().url(&via_proxy).timeout("2s").run();
    assert_eq!(out.code, Some(1));
    pg.up();
    consume().url(&via_proxy).stop_at_end().ok();
    assert_eq!(db.sales_ids(), seeded_ids(7, 3000));
    assert_eq!(db.stored_offsets(&topic), end_offsets(&topic));
}

#[test]
fn a_sqlite_file_locked_by_another_writer_makes_consume_wait() {
    let db = TestDb::sqlite();
    let topic = topic(2);
    streamlab("migrate").sink("sqlite").url(&db.url).ok();
    produce(&topic, 4000).seed(8).ok();
    /// How long the other writer holds the file.
    const HELD: Duration = Duration::from_secs(3);
    // The other writer: BEGIN EXCLUSIVE, the rows it sees then and just before it lets go.
    let mut locker = std::process::Command::new(python_bin());
    locker.args([
        "-c",
        "import sqlite3,sys,time\nc=sqlite3.connect(sys.argv[1],isolation_level=None)\nc.execute('BEGIN EXCLUSIVE')\nn=lambda: c.execute('SELECT COUNT(*) FROM sales_events').fetchone()[0]\nprint('locked',n(),flush=True)\ntime.sleep(float(sys.argv[2]))\nprint('releasing',n(),flush=True)\nc.execute('COMMIT')",
        db.path(),
        &HELD.as_secs_f64().to_string(),
    ]);
    let locker = Running::start(locker, false);
    assert!(
        wait_until(10, || locker
            .stdout_lines()
            .iter()
            .any(|l| l.starts_with("locked"))),
        "the lock was not taken: {}",
        locker.output()
    );
    let locked = std::time::Instant::now();
    let out = drain(&topic, &db).timeout("20s").json().ok_json();
    let waited = locked.elapsed();
    let held = locker.wait();
    assert!(held.succeeded(), "{}", held.stderr);
    // consume waited for the lock instead of failing: nothing was written while it was held,
    // and it finished only after the lock was let go (HELD after it was taken).
    assert_eq!(held.stdout, "locked 0\nreleasing 0\n");
    assert!(
        waited >= HELD - Duration::from_millis(200),
        "done {waited:?} after the lock"
    );
    assert_eq!(counted(&out, "inserted"), 4000, "{out}");
    assert_eq!(db.sales_ids(), seeded_ids(8, 4000));
    assert_eq!(db.stored_offsets(&topic), end_offsets(&topic));
}

/// Two consumers that each read every partition alone (`--assign all`) on one group and database
/// do not share: the offset fence stops one of them, and nothing is written twice. (Without
/// `--assign` they would be members of the group and share the partitions: `tests/group.rs`.)
#[test]
fn two_consumers_reading_every_partition_alone_on_one_group_never_duplicate() {
    for db in TestDb::both() {
        let topic = topic(3);
        let n = 20_000;
        produce(&topic, n).seed(9).ok();
        streamlab("migrate").db(&db).ok();
        let consume = drain(&topic, &db).batch_size(500);
        let (a, b) = (consume.spawn(), consume.spawn());
        for out in [a.wait(), b.wait()] {
            if !out.succeeded() {
                assert!(
                    out.stderr.contains("another consumer"),
                    "only the fence may stop one: {}",
                    out.stderr
                );
            }
        }
        consume.ok();
        assert_eq!(db.count("sales_events") as usize, n, "{}", db.sink);
        assert_eq!(db.sales_ids(), seeded_ids(9, n));
        assert_eq!(db.stored_offsets(&topic), end_offsets(&topic));
    }
}

#[test]
fn hostile_configuration_gets_a_clear_error_and_no_password() {
    let topic = topic(1);
    let mut wrong_credentials = url::Url::parse(&pg_admin_url()).unwrap();
    wrong_credentials.set_username("nobody").unwrap();
    wrong_credentials.set_password(Some("s3cr3t-pw")).unwrap();
    wrong_credentials.set_path("/streamlab_nobody");
    streamlab("consume")
        .topic(&topic)
        .sink("pg")
        .url(wrong_credentials.as_str())
        .timeout("3s")
        .fails(1, &["nobody"], &["s3cr3t-pw"]);
    streamlab("consume")
        .topic("no such topic")
        .sink("sqlite")
        .fails(2, &[], &[]);
    streamlab("consume")
        .topic(&topic)
        .sink("pg")
        .url("mysql://x")
        .fails(2, &["mysql://x is not a database streamlab writes to"], &[]);
}

const SECRET: &str = "s3cr3tpw";

/// Run with `DATABASE_URL=url` (and `STREAMLAB_TEST_PG`, read by `bench`); `trace` logs
/// everything of every crate. Fails the test if `secret` shows anywhere.
fn run_hiding(cmd: &Cmd, url: &str, secret: &str, trace: bool) -> Run {
    let mut cmd = cmd
        .clone()
        .env("DATABASE_URL", url)
        .env("STREAMLAB_TEST_PG", url);
    if trace {
        cmd = cmd.env("RUST_LOG", "trace");
    } else if cmd.argv().iter().any(|a| a == "-vv") {
        cmd = cmd.env_remove("RUST_LOG"); // let -vv choose the levels
    }
    let out = cmd.run();
    for (stream, text) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        assert!(
            !text.contains(secret),
            "streamlab {:?} with DATABASE_URL={url} shows the password on {stream}:\n{text}",
            cmd.argv()
        );
    }
    out
}

fn failed(out: &Run) -> bool {
    !out.succeeded() && !out.stderr.contains("panicked")
}

/// `-vv` first, then `cmd`'s arguments.
fn verbose(cmd: &Cmd) -> Cmd {
    streamlab("").arg("-vv").args(cmd.argv())
}

/// A password, wherever a database URL carries it, appears in no output: not in `--help` (which
/// would show `[env: DATABASE_URL=…]`), not in errors, not at `-vv` or with everything traced.
#[test]
fn a_database_password_appears_in_no_output_when_the_database_is_unreachable() {
    let run = run_hiding;
    let topic = topic(1);
    // Nothing listens on port 1: every connection attempt fails, so errors are printed.
    let unreachable = [
        format!("postgres://u:{SECRET}@127.0.0.1:1/db"),
        format!("postgres://u@127.0.0.1:1/db?password={SECRET}"),
        format!("postgres://u@127.0.0.1:1/db?sslmode=disable&password={SECRET}"),
        // sqlx does not read these two and would log them with their values.
        format!("postgres://u@127.0.0.1:1/db?sslpassword={SECRET}&PassWord={SECRET}"),
        format!("postgres://u:{SECRET}@127.0.0.1:notaport/db"),
    ];
    for url in &unreachable {
        for command in ["consume", "check", "migrate", "watch", "bench"] {
            let out = run(&streamlab(command).arg("--help"), url, SECRET, false);
            assert!(out.succeeded());
            if command != "bench" {
                assert!(out.stdout.contains("[env: DATABASE_URL]"), "{}", out.stdout);
            }
        }
        let consume = streamlab("consume").topic(&topic).sink("pg").timeout("2s");
        assert!(failed(&run(&consume, url, SECRET, false)));
        assert!(failed(&run(
            &verbose(&consume).url(url),
            url,
            SECRET,
            false
        )));
        assert!(failed(&run(&consume, url, SECRET, true)));
        let check = streamlab("check").sink("pg").json().timeout("2s");
        assert!(failed(&run(&check, url, SECRET, false)));
        assert!(failed(&run(&check, url, SECRET, true)));
        let migrate = streamlab("migrate").sink("pg");
        assert!(failed(&run(&verbose(&migrate), url, SECRET, false)));
    }
}

/// The same with a database that answers: nor in `migrate`'s, `consume`'s or `check`'s output,
/// `check`'s JSON included.
#[test]
fn a_database_password_appears_in_no_output_when_the_database_answers() {
    let run = run_hiding;
    let topic = topic(1);
    // A reachable database, its password in each place a URL can carry one. The local server
    // trusts 127.0.0.1 and ignores passwords, so SECRET serves; a STREAMLAB_TEST_PG with a
    // password of its own (a server that checks it) is tested with that password instead.
    let db = TestDb::pg();
    let mut without = url::Url::parse(&db.url).unwrap();
    let secret = without.password().unwrap_or(SECRET).to_string();
    assert!(
        secret
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c)),
        "STREAMLAB_TEST_PG's password has characters a URL encodes: this test looks for it as \
         written; give the test server a password of letters and digits"
    );
    without.set_password(None).unwrap();
    assert!(
        !without.as_str().contains(&secret),
        "STREAMLAB_TEST_PG's password {secret:?} is also elsewhere in its URL {without}: this \
         test cannot tell it from the rest; give the test server a password of its own"
    );
    let mut with_userinfo = without.clone();
    with_userinfo.set_password(Some(&secret)).unwrap();
    let query = |pairs: &[(&str, &str)]| {
        let mut url = without.clone();
        url.query_pairs_mut().extend_pairs(pairs);
        url.to_string()
    };
    let reachable = [
        with_userinfo.to_string(),
        query(&[("password", &secret)]),
        query(&[("application_name", "x"), ("password", &secret)]),
    ];
    produce(&topic, 20).seed(31).ok();
    for url in &reachable {
        let out = run(
            &verbose(&streamlab("migrate").sink("pg")),
            url,
            &secret,
            false,
        );
        assert!(out.succeeded(), "{out:?}");
        assert!(out.stdout.contains("***"));
        let consume = streamlab("consume")
            .topic(&topic)
            .sink("pg")
            .stop_at_end()
            .group("secret");
        assert!(run(&verbose(&consume), url, &secret, false).succeeded());
        assert!(run(&consume, url, &secret, true).succeeded());
        let check = streamlab("check").sink("pg").json().group("secret");
        let out = run(&check, url, &secret, false);
        assert!(out.succeeded(), "{out:?}");
        let report = out.json();
        assert_eq!(report["rows"], 20);
        let shown = report["database"].as_str().unwrap();
        assert!(shown.contains("***"), "{shown}");
        assert!(run(&verbose(&check).topic(&topic), url, &secret, true).succeeded());
    }
}

#[test]
fn a_producer_killed_with_sigkill_left_at_least_what_it_reported_and_no_duplicates() {
    use crate::support::metrics::{scrape, total};
    let topic = topic(3);
    let rate = 2000;
    let port = free_port();
    let started = std::time::Instant::now();
    let producer = streamlab("produce")
        .topic(&topic)
        .rate(rate)
        .seed(10)
        .metrics_addr(&format!("127.0.0.1:{port}"))
        .spawn();
    // Killed, it prints no summary: what it reported is its acknowledged count, scraped (the
    // last scrape before the kill is a lower bound of what the broker holds).
    let mut reported = 0.0;
    let mid_stream = wait_until(30, || {
        reported = scrape(port).map_or(0.0, |s| total(&s, "streamlab_events_produced_total"));
        reported >= 1000.0
    });
    let out = producer.kill();
    let ran = started.elapsed();
    assert!(mid_stream, "{reported} acknowledged, then:\n{}", out.stderr);
    let reported = reported as usize;

    let on_broker = event_ids(&read_back(&topic));
    let distinct: std::collections::BTreeSet<String> = on_broker.iter().cloned().collect();
    assert_eq!(
        distinct.len(),
        on_broker.len(),
        "a SIGKILL must not duplicate records"
    );
    assert!(
        on_broker.len() >= reported,
        "{} on the broker, {reported} reported",
        on_broker.len()
    );
    // Nothing beyond what could be generated before the kill: the rate times its run, and one.
    let generated = (ran.as_secs_f64() * rate as f64) as usize + 1;
    assert!(distinct.is_subset(&seeded_ids(10, generated)));
    assert_eq!(total_records(&topic) as usize, on_broker.len());
}

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
    streamlab("topic create")
        .brokers(&b)
        .topic("lossy")
        .partitions(3)
        .ok();
    let producer = produce("lossy", n)
        .brokers(&b)
        .rate(3000)
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
    std::thread::sleep(Duration::from_millis(1200));
    broker.proxy.down(); // connections reset, then refused
    std::thread::sleep(Duration::from_secs(6));
    broker.proxy.up();

    let produced = producer.wait();
    assert!(produced.succeeded(), "{}", produced.stderr);
    assert_eq!(
        produced.json()["sent"].as_u64(),
        Some(n as u64),
        "the summary counts what the broker acknowledged"
    );
    assert!(wait_until(60, || db.count("sales_events") as usize >= n));
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
    assert!(wait_until(30, || db.count("sales_events") > 0));
    let before = pg.accepted();
    pg.down();
    std::thread::sleep(Duration::from_secs(4));
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
}

#[test]
fn a_sqlite_file_locked_by_another_writer_makes_consume_wait() {
    let db = TestDb::sqlite();
    let topic = topic(2);
    streamlab("migrate").sink("sqlite").url(&db.url).ok();
    produce(&topic, 4000).seed(8).ok();
    let locker = std::process::Command::new(python_bin())
        .args([
            "-c",
            "import sqlite3,sys,time\nc=sqlite3.connect(sys.argv[1],isolation_level=None)\nc.execute('BEGIN EXCLUSIVE')\nprint('locked',flush=True)\ntime.sleep(3)\nc.execute('COMMIT')",
            db.path(),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let out = drain(&topic, &db).timeout("20s").json().ok_json();
    assert!(locker.wait_with_output().unwrap().status.success());
    assert_eq!(counted(&out, "inserted"), 4000, "{out}");
    assert_eq!(db.sales_ids(), seeded_ids(8, 4000));
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

/// A password, wherever a database URL carries it, appears in no output: not in `--help` (which
/// would show `[env: DATABASE_URL=…]`), not in errors, not in `check`'s JSON, not at `-vv` or
/// with everything traced.
#[test]
fn a_database_password_appears_in_no_output() {
    const SECRET: &str = "s3cr3tpw";
    /// Run with `DATABASE_URL=url` (and `STREAMLAB_TEST_PG`, read by `bench`); `trace` logs
    /// everything of every crate. Fails the test if the secret shows anywhere.
    fn run(cmd: &Cmd, url: &str, trace: bool) -> Run {
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
                !text.contains(SECRET),
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
            let out = run(&streamlab(command).arg("--help"), url, false);
            assert!(out.succeeded());
            if command != "bench" {
                assert!(out.stdout.contains("[env: DATABASE_URL]"), "{}", out.stdout);
            }
        }
        let consume = streamlab("consume").topic(&topic).sink("pg").timeout("2s");
        assert!(failed(&run(&consume, url, false)));
        assert!(failed(&run(&verbose(&consume).url(url), url, false)));
        assert!(failed(&run(&consume, url, true)));
        let check = streamlab("check").sink("pg").json().timeout("2s");
        assert!(failed(&run(&check, url, false)));
        assert!(failed(&run(&check, url, true)));
        let migrate = streamlab("migrate").sink("pg");
        assert!(failed(&run(&verbose(&migrate), url, false)));
    }

    // A reachable database: the local server trusts 127.0.0.1 and ignores passwords, so the
    // URL may carry one and everything succeeds (and logs, and prints the URL).
    let db = TestDb::pg();
    let mut with_userinfo = url::Url::parse(&db.url).unwrap();
    if with_userinfo.password().is_some() {
        eprintln!("STREAMLAB_TEST_PG carries a password; the reachable half is skipped");
        return;
    }
    with_userinfo.set_password(Some(SECRET)).unwrap();
    let separator = if db.url.contains('?') { '&' } else { '?' };
    let reachable = [
        with_userinfo.to_string(),
        format!("{}{separator}password={SECRET}", db.url),
        format!("{}{separator}application_name=x&password={SECRET}", db.url),
    ];
    produce(&topic, 20).seed(31).ok();
    for url in &reachable {
        let out = run(&verbose(&streamlab("migrate").sink("pg")), url, false);
        assert!(out.succeeded(), "{out:?}");
        assert!(out.stdout.contains("***"));
        let consume = streamlab("consume")
            .topic(&topic)
            .sink("pg")
            .stop_at_end()
            .group("secret");
        assert!(run(&verbose(&consume), url, false).succeeded());
        assert!(run(&consume, url, true).succeeded());
        let check = streamlab("check").sink("pg").json().group("secret");
        let out = run(&check, url, false);
        assert!(out.succeeded(), "{out:?}");
        let report = out.json();
        assert_eq!(report["rows"], 20);
        let shown = report["database"].as_str().unwrap();
        assert!(shown.contains("***"), "{shown}");
        assert!(run(&verbose(&check).topic(&topic), url, true).succeeded());
    }
}

#[test]
fn a_producer_killed_with_sigkill_left_at_least_what_it_reported_and_no_duplicates() {
    let topic = topic(3);
    let rate = 2000;
    let producer = streamlab("produce")
        .topic(&topic)
        .rate(rate)
        .seed(10)
        .spawn();
    // Off a terminal, progress ("sent N …", counted on acknowledgement) is logged every 5 s.
    // Killed, it prints no summary: the progress line is all there is to read.
    std::thread::sleep(Duration::from_millis(6500));
    let out = producer.kill();
    let stderr = &out.stderr;
    let reported: usize = stderr
        .rsplit("sent ")
        .next()
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no progress line before the kill: {stderr}"));
    assert!(reported > 0, "{stderr}");

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
    // Nothing beyond what was generated before the kill (7 s at the rate, with slack).
    assert!(distinct.is_subset(&seeded_ids(10, rate * 7)));
    assert_eq!(total_records(&topic) as usize, on_broker.len());
}

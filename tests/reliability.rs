//! Faults on purpose, Jepsen-style: each scenario produces a known id set, breaks something while
//! `consume` runs, lets it recover, and requires exactly that id set in the sink — no loss, no
//! duplicate — with the stored offsets equal to the end offsets.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn the_broker_lost_for_seconds_mid_stream() {
    let broker = Tansu::behind_proxy();
    let b = broker.address();
    let db = TestDb::sqlite();
    let n = 9000;
    ok(&[
        "topic",
        "create",
        "-b",
        &b,
        "--topic",
        "lossy",
        "--partitions",
        "3",
    ]);
    let producer = spawn(&[
        "produce",
        "-b",
        &b,
        "--topic",
        "lossy",
        "--count",
        &n.to_string(),
        "--rate",
        "3000",
        "--seed",
        "5",
        "--timeout",
        "30s",
    ]);
    let consumer = spawn(&[
        "consume",
        "--assign",
        "all",
        "-b",
        &b,
        "--topic",
        "lossy",
        "--sink",
        db.sink,
        "-D",
        &db.url,
        "--timeout",
        "30s",
    ]);
    std::thread::sleep(Duration::from_millis(1200));
    broker.proxy.down(); // connections reset, then refused
    std::thread::sleep(Duration::from_secs(6));
    broker.proxy.up();

    let produced = producer.wait_with_output().unwrap();
    assert!(
        produced.status.success(),
        "{}",
        String::from_utf8_lossy(&produced.stderr)
    );
    assert_eq!(
        produced_count(&produced.stdout) as usize,
        n,
        "the summary counts what the broker acknowledged"
    );
    assert!(wait_until(
        60,
        || db.scalar("SELECT COUNT(*) FROM sales_events") as usize >= n
    ));
    signal(&consumer, "TERM");
    let consumed = consumer.wait_with_output().unwrap();
    assert!(
        consumed.status.success(),
        "{}",
        String::from_utf8_lossy(&consumed.stderr)
    );

    assert_eq!(db.sales_ids(), seeded_ids(5, n));
    assert_eq!(db.stored_offsets("lossy"), end_offsets_via(&b, "lossy"));
}

#[test]
fn the_database_lost_for_seconds_mid_stream() {
    let db = TestDb::pg();
    let (pg, via_proxy) = pg_behind_proxy(&db);
    let topic = topic(3);
    let n = 8000;
    ok(&["migrate", "--sink", "pg", "-D", &db.url]);
    let producer = spawn(&[
        "produce",
        "--topic",
        &topic,
        "--count",
        &n.to_string(),
        "--rate",
        "2000",
        "--seed",
        "6",
    ]);
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
        "30s",
        "--batch-size",
        "500",
    ]);
    // Take PostgreSQL away once the consumer has written (so it holds connections to lose).
    assert!(wait_until(30, || db
        .scalar("SELECT COUNT(*) FROM sales_events")
        > 0));
    let before = pg.accepted();
    pg.down();
    std::thread::sleep(Duration::from_secs(4));
    pg.up();

    assert!(producer.wait_with_output().unwrap().status.success());
    if !wait_until(60, || {
        db.scalar("SELECT COUNT(*) FROM sales_events") as usize >= n
    }) {
        signal(&consumer, "KILL");
        let out = consumer.wait_with_output().unwrap();
        panic!(
            "consumer stalled:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    signal(&consumer, "TERM");
    let consumed = consumer.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&consumed.stderr);
    assert!(consumed.status.success(), "{stderr}");
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
    ok(&[
        "produce", "--topic", &topic, "--count", "3000", "--rate", "1000", "--seed", "7",
    ]);
    ok(&["migrate", "--sink", "pg", "-D", &via_proxy]);
    pg.down();
    let out = streamlab(&[
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
        "2s",
    ]);
    assert_eq!(out.status.code(), Some(1));
    pg.up();
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
    assert_eq!(db.sales_ids(), seeded_ids(7, 3000));
}

#[test]
fn a_sqlite_file_locked_by_another_writer_makes_consume_wait() {
    let db = TestDb::sqlite();
    let topic = topic(2);
    ok(&["migrate", "--sink", "sqlite", "-D", &db.url]);
    ok(&[
        "produce", "--topic", &topic, "--count", "4000", "--rate", "0", "--seed", "8",
    ]);
    let path = db.url.trim_start_matches("sqlite://").to_string();
    let locker = std::process::Command::new(python_bin())
        .args([
            "-c",
            "import sqlite3,sys,time\nc=sqlite3.connect(sys.argv[1],isolation_level=None)\nc.execute('BEGIN EXCLUSIVE')\nprint('locked',flush=True)\ntime.sleep(3)\nc.execute('COMMIT')",
            &path,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let out = ok(&[
        "consume",
        "--assign",
        "all",
        "--topic",
        &topic,
        "--sink",
        "sqlite",
        "-D",
        &db.url,
        "--stop-at-end",
        "--timeout",
        "20s",
    ]);
    assert!(locker.wait_with_output().unwrap().status.success());
    assert!(out.contains("4000 inserted"), "{out}");
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
        ok(&[
            "produce",
            "--topic",
            &topic,
            "--count",
            &n.to_string(),
            "--rate",
            "0",
            "--seed",
            "9",
        ]);
        ok(&["migrate", "--sink", db.sink, "-D", &db.url]);
        let args = [
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
        ];
        let (a, b) = (spawn(&args), spawn(&args));
        for out in [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()] {
            if !out.status.success() {
                let stderr = String::from_utf8_lossy(&out.stderr);
                assert!(
                    stderr.contains("another consumer"),
                    "only the fence may stop one: {stderr}"
                );
            }
        }
        ok(&args);
        assert_eq!(
            db.scalar("SELECT COUNT(*) FROM sales_events") as usize,
            n,
            "{}",
            db.sink
        );
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
    let wrong_credentials = wrong_credentials.as_str();
    fails(
        &[
            "consume",
            "--topic",
            &topic,
            "--sink",
            "pg",
            "-D",
            wrong_credentials,
            "--timeout",
            "3s",
        ],
        1,
        &["nobody"],
        &["s3cr3t-pw"],
    );
    fails(
        &["consume", "--topic", "no such topic", "--sink", "sqlite"],
        2,
        &[],
        &[],
    );
    fails(
        &[
            "consume",
            "--topic",
            &topic,
            "--sink",
            "pg",
            "-D",
            "mysql://x",
        ],
        2,
        &["mysql://x is not a database streamlab writes to"],
        &[],
    );
}

/// A password, wherever a database URL carries it, appears in no output: not in `--help` (which
/// would show `[env: DATABASE_URL=…]`), not in errors, not in `check`'s JSON, not at `-vv` or
/// with everything traced.
#[test]
fn a_database_password_appears_in_no_output() {
    const SECRET: &str = "s3cr3tpw";
    /// Run with `DATABASE_URL=url` (and `STREAMLAB_TEST_PG`, read by `bench`); `trace` logs
    /// everything of every crate. Fails the test if the secret shows anywhere.
    fn run(args: &[&str], url: &str, trace: bool) -> std::process::Output {
        let mut cmd = command(args);
        cmd.env("DATABASE_URL", url).env("STREAMLAB_TEST_PG", url);
        if trace {
            cmd.env("RUST_LOG", "trace");
        } else if args.contains(&"-vv") {
            cmd.env_remove("RUST_LOG"); // let -vv choose the levels
        }
        let out = cmd.output().expect("run streamlab");
        for (stream, text) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
            let text = String::from_utf8_lossy(text);
            assert!(
                !text.contains(SECRET),
                "streamlab {args:?} with DATABASE_URL={url} shows the password on {stream}:\n{text}"
            );
        }
        out
    }
    fn failed(out: &std::process::Output) -> bool {
        !out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("panicked")
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
            let out = run(&[command, "--help"], url, false);
            assert!(out.status.success());
            let help = String::from_utf8_lossy(&out.stdout);
            if command != "bench" {
                assert!(help.contains("[env: DATABASE_URL]"), "{help}");
            }
        }
        let consume = [
            "consume",
            "--topic",
            &topic,
            "--sink",
            "pg",
            "--timeout",
            "2s",
        ];
        assert!(failed(&run(&consume, url, false)));
        let mut verbose = vec!["-vv"];
        verbose.extend(consume);
        verbose.extend(["-D", url.as_str()]);
        assert!(failed(&run(&verbose, url, false)));
        assert!(failed(&run(&consume, url, true)));
        let check = [
            "check",
            "--sink",
            "pg",
            "--format",
            "json",
            "--timeout",
            "2s",
        ];
        assert!(failed(&run(&check, url, false)));
        assert!(failed(&run(&check, url, true)));
        assert!(failed(&run(
            &["-vv", "migrate", "--sink", "pg"],
            url,
            false
        )));
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
    ok(&[
        "produce", "--topic", &topic, "--count", "20", "--rate", "0", "--seed", "31",
    ]);
    for url in &reachable {
        let out = run(&["-vv", "migrate", "--sink", "pg"], url, false);
        assert!(out.status.success(), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("***"));
        let consume = [
            "consume",
            "--topic",
            &topic,
            "--sink",
            "pg",
            "--stop-at-end",
            "--group",
            "secret",
        ];
        let mut verbose = vec!["-vv"];
        verbose.extend(consume);
        assert!(run(&verbose, url, false).status.success());
        assert!(run(&consume, url, true).status.success());
        let check = [
            "check", "--sink", "pg", "--format", "json", "--group", "secret",
        ];
        let out = run(&check, url, false);
        assert!(out.status.success(), "{out:?}");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["rows"], 20);
        let shown = report["database"].as_str().unwrap();
        assert!(shown.contains("***"), "{shown}");
        let mut verbose = vec!["-vv"];
        verbose.extend(check);
        verbose.extend(["--topic", &topic]);
        assert!(run(&verbose, url, true).status.success());
    }
}

#[test]
fn a_producer_killed_with_sigkill_left_at_least_what_it_reported_and_no_duplicates() {
    let topic = topic(3);
    let rate = 2000;
    let producer = spawn(&[
        "produce",
        "--topic",
        &topic,
        "--rate",
        &rate.to_string(),
        "--seed",
        "10",
    ]);
    // Off a terminal, progress ("sent N …", counted on acknowledgement) is logged every 5 s.
    std::thread::sleep(Duration::from_millis(6500));
    signal(&producer, "KILL");
    let out = producer.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let reported: usize = stderr
        .rsplit("sent ")
        .next()
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no progress line before the kill: {stderr}"));
    assert!(reported > 0, "{stderr}");

    let on_broker: Vec<String> = read_back(&topic)
        .iter()
        .map(|r| {
            let value: serde_json::Value =
                serde_json::from_str(r["value"].as_str().unwrap()).unwrap();
            value["id"].as_str().unwrap().to_string()
        })
        .collect();
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
    let total: i64 = offsets(&topic).values().map(|(_, end)| end).sum();
    assert_eq!(total as usize, on_broker.len());
}

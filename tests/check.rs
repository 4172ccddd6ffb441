//! `streamlab check` against both sinks: each check passing and failing, JSON, exit codes.

mod common;

use common::*;

fn check(db: &TestDb, extra: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let mut args = vec![
        "check", "--sink", db.sink, "-D", &db.url, "--format", "json",
    ];
    args.extend_from_slice(extra);
    let out = streamlab(&args);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let json = serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null);
    (
        out.status.code(),
        json,
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn failed(report: &serde_json::Value) -> Vec<String> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_healthy_pipeline_passes_and_each_fault_fails_its_check() {
    for db in TestDb::both() {
        let topic = topic(3);
        ok(&[
            "produce", "--topic", &topic, "--count", "200", "--rate", "0",
        ]);
        ok(&[
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

        let (code, report, stderr) = check(&db, &["--topic", &topic, "--max-lag", "0"]);
        assert_eq!(code, Some(0), "{}: {stderr} {report}", db.sink);
        assert_eq!(report["healthy"], true);
        assert_eq!(report["rows"], 200);
        assert_eq!(report["total_lag"], 0);
        assert_eq!(report["newest"].as_array().unwrap().len(), 10);
        assert!(report["latest_ts"].as_str().unwrap().ends_with('Z'));
        assert!(report["throughput"]["last_1m_per_sec"].as_f64().unwrap() > 0.0);
        let shares: i64 = report["breakdown"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["rows"].as_i64().unwrap())
            .sum();
        assert_eq!(shares, 200);

        // Table output for people, same verdict.
        let table = ok(&["check", "--sink", db.sink, "-D", &db.url, "--topic", &topic]);
        assert!(
            table.contains("primary_key") && table.contains("verdict ok"),
            "{table}"
        );

        // Lag: more events than the sink has seen.
        ok(&["produce", "--topic", &topic, "--count", "7", "--rate", "0"]);
        let (code, report, _) = check(&db, &["--topic", &topic, "--max-lag", "5"]);
        assert_eq!(code, Some(1));
        assert_eq!(failed(&report), ["lag"]);
        assert_eq!(report["total_lag"], 7);
        let (code, _, _) = check(&db, &["--topic", &topic, "--max-lag", "7"]);
        assert_eq!(code, Some(0));

        // Impossible values, crafted the way the schema allows.
        let (future, negative) = match db.sink {
            "pg" => (
                "UPDATE sales_events SET ts = now() + interval '1 day' WHERE id = (SELECT id FROM sales_events LIMIT 1)",
                "UPDATE sales_events SET amount_usd = -5 WHERE id = (SELECT id FROM sales_events ORDER BY id DESC LIMIT 1)",
            ),
            _ => (
                "UPDATE sales_events SET ts = '2999-01-01T00:00:00.000Z' WHERE id = (SELECT id FROM sales_events LIMIT 1)",
                "UPDATE sales_events SET amount_usd = -5 WHERE id = (SELECT id FROM sales_events ORDER BY id DESC LIMIT 1)",
            ),
        };
        db.exec(future);
        let (code, report, _) = check(&db, &[]);
        assert_eq!(
            (code, failed(&report)),
            (Some(1), vec!["timestamps".to_string()])
        );
        db.exec(negative);
        db.exec("UPDATE sales_events SET channel = 'fax' WHERE id = (SELECT id FROM sales_events ORDER BY id LIMIT 1 OFFSET 5)");
        let (code, report, stderr) = check(&db, &[]);
        assert_eq!(code, Some(1));
        assert_eq!(failed(&report), ["timestamps", "amounts", "channels"]);
        assert!(stderr.contains("timestamps, amounts, channels"), "{stderr}");
    }
}

#[test]
fn dead_letters_fail_the_check_with_the_newest_reason() {
    for db in TestDb::both() {
        let topic = topic(1);
        ok(&[
            "produce", "--topic", &topic, "--count", "10", "--rate", "0", "--kind", "sensor",
        ]);
        // Sensor events read as sales: every one is the wrong kind.
        ok(&[
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
            "--kind",
            "sales",
        ]);
        ok(&[
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
            "--kind",
            "sensor",
            "--group",
            "sensors",
        ]);
        let (code, report, _) = check(
            &db,
            &["--kind", "sensor", "--group", "sensors", "--topic", &topic],
        );
        assert_eq!(code, Some(1));
        assert_eq!(failed(&report), ["dead_letters"]);
        assert_eq!(report["dead_letters"]["count"], 10);
        assert!(report["dead_letters"]["newest"][0]["error"]
            .as_str()
            .unwrap()
            .contains("not a sales event"));
        assert_eq!(report["rows"], 10);
        let statuses: Vec<&str> = report["breakdown"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["value"].as_str().unwrap())
            .collect();
        assert!(statuses.iter().all(|s| ["ok", "warn", "fail"].contains(s)));
    }
}

#[test]
fn the_seeds_sql_runs_unchanged_on_postgres() {
    let db = TestDb::pg();
    let topic = topic(3);
    ok(&["produce", "--topic", &topic, "--count", "25", "--rate", "0"]);
    ok(&[
        "consume",
        "--assign",
        "all",
        "--topic",
        &topic,
        "--sink",
        "pg",
        "-D",
        &db.url,
        "--stop-at-end",
    ]);
    let out = psql(
        &db.url,
        "SELECT COUNT(*) AS rows, MAX(ts) AS latest_ts FROM public.sales_events;",
    );
    assert!(out.starts_with("25|20"), "{out}");
    let out = psql(
        &db.url,
        "SELECT * FROM public.sales_events ORDER BY ts DESC LIMIT 10;",
    );
    assert_eq!(out.lines().count(), 10);
}

#[test]
fn an_unreachable_database_exits_1_without_the_password() {
    let db = TestDb::sqlite();
    let missing = format!("{}.missing", db.url);
    fails(
        &["check", "--sink", "sqlite", "-D", &missing],
        1,
        &["no such file"],
        &[],
    );
    let unreachable = "postgres://u:hunter2@127.0.0.1:1/x";
    fails(
        &[
            "check",
            "--sink",
            "pg",
            "-D",
            unreachable,
            "--timeout",
            "2s",
        ],
        1,
        &["cannot reach the database"],
        &["hunter2"],
    );
}

//! `streamlab check` against both sinks: each check passing and failing, JSON, exit codes.

use crate::support::*;

/// `check --sink S -D URL` of `db`.
fn check(db: &TestDb) -> Cmd {
    streamlab("check").db(db)
}

/// Run `check` with `--format json`: its exit code, report (Null if none) and stderr.
fn verdict(check: Cmd) -> (Option<i32>, serde_json::Value, String) {
    let run = check.json().run();
    let json = serde_json::from_str(&run.stdout).unwrap_or(serde_json::Value::Null);
    (run.code, json, run.stderr)
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
        produce(&topic, 200).ok();
        drain(&topic, &db).ok();

        let (code, report, stderr) = verdict(check(&db).topic(&topic).max_lag(0));
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
        let table = check(&db).topic(&topic).ok();
        assert!(
            table.contains("primary_key") && table.contains("verdict ok"),
            "{table}"
        );

        // Lag: more events than the sink has seen.
        produce(&topic, 7).ok();
        let (code, report, _) = verdict(check(&db).topic(&topic).max_lag(5));
        assert_eq!(code, Some(1));
        assert_eq!(failed(&report), ["lag"]);
        assert_eq!(report["total_lag"], 7);
        let (code, _, _) = verdict(check(&db).topic(&topic).max_lag(7));
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
        let (code, report, _) = verdict(check(&db));
        assert_eq!(
            (code, failed(&report)),
            (Some(1), vec!["timestamps".to_string()])
        );
        db.exec(negative);
        db.exec("UPDATE sales_events SET channel = 'fax' WHERE id = (SELECT id FROM sales_events ORDER BY id LIMIT 1 OFFSET 5)");
        let (code, report, stderr) = verdict(check(&db));
        assert_eq!(code, Some(1));
        assert_eq!(failed(&report), ["timestamps", "amounts", "channels"]);
        assert!(stderr.contains("timestamps, amounts, channels"), "{stderr}");
    }
}

#[test]
fn dead_letters_fail_the_check_with_the_newest_reason() {
    for db in TestDb::both() {
        let topic = topic(1);
        produce(&topic, 10).kind("sensor").ok();
        // Sensor events read as sales: every one is the wrong kind.
        drain(&topic, &db).kind("sales").ok();
        drain(&topic, &db).kind("sensor").group("sensors").ok();
        let (code, report, _) = verdict(check(&db).kind("sensor").group("sensors").topic(&topic));
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
    produce(&topic, 25).ok();
    drain(&topic, &db).ok();
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
    streamlab("check")
        .sink("sqlite")
        .url(&missing)
        .fails(1, &["no such file"], &[]);
    streamlab("check")
        .sink("pg")
        .url("postgres://u:hunter2@127.0.0.1:1/x")
        .timeout("2s")
        .fails(1, &["cannot reach the database"], &["hunter2"]);
}

#[test]
fn without_kind_check_finds_the_table_that_holds_rows_and_names_the_others() {
    for db in TestDb::both() {
        let topic = topic(3);
        produce(&topic, 300).kind("sensor").ok();
        drain(&topic, &db).kind("sensor").ok();

        // The sensors seed's pipeline, checked as a newcomer would: no --kind.
        let (code, report, stderr) = verdict(check(&db).topic(&topic));
        assert_eq!(code, Some(0), "{}: {stderr} {report}", db.sink);
        assert_eq!(
            (&report["table"], &report["kind"], &report["rows"]),
            (&"sensor_logs".into(), &"sensor".into(), &300.into())
        );
        assert!(report.get("note").is_none(), "{report}");
        let table = check(&db).ok();
        assert!(
            table.contains("sensor_logs") && table.contains("rows 300"),
            "{table}"
        );
        assert!(
            table.contains("breakdown: ok ") && table.contains("\ntop: "),
            "{table}"
        );

        // Asked for the empty kind: one line says which kind holds rows and how to ask for it;
        // no empty breakdown/top lines.
        let table = check(&db).kind("sales").ok();
        assert!(table.contains("rows 0"), "{table}");
        assert!(
            table.contains(
                "note: sales_events is empty; sensor_logs holds 300 rows (`streamlab check --kind sensor`)"
            ),
            "{table}"
        );
        assert!(
            !table.contains("breakdown:") && !table.contains("top:"),
            "{table}"
        );

        // The upsert tables: asked for with --upsert, named when they are the ones holding rows.
        streamlab("consume")
            .topic(&topic)
            .db(&db)
            .kind("sensor")
            .group("latest")
            .arg("--upsert")
            .stop_at_end()
            .ok();
        db.exec("DELETE FROM sensor_logs");
        let (_, report, _) = verdict(check(&db));
        assert_eq!(report["rows"], 0);
        assert_eq!(
            report["note"],
            "sales_events is empty; sensor_latest holds 15 rows (`streamlab check --kind sensor --upsert`)"
        );
        let (code, report, stderr) = verdict(check(&db).arg("--upsert"));
        assert_eq!(code, Some(0), "{stderr} {report}");
        assert_eq!(
            (&report["table"], &report["rows"]),
            (&"sensor_latest".into(), &15.into())
        );
    }
}

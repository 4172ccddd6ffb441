//! Kafka users' habits, tried as a user would: global options on either side of the subcommand,
//! `-q`, `--format json` summaries, completions, colour rules, exit codes, one-line errors, the
//! database settled before anything connects, and `watch` giving the terminal back on Ctrl-C.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn connection_options_work_before_and_after_the_subcommand() {
    let topic = unique("t");
    let real = brokers();
    // Before the subcommand, with no environment to fall back on.
    let mut create = command(&[
        "-b",
        &real,
        "--timeout",
        "5s",
        "topic",
        "create",
        "--topic",
        &topic,
    ]);
    create.env_remove("STREAMLAB_BROKERS");
    ok_output(create);
    // After it.
    let mut list = command(&["topic", "list", "--format", "json", "-b", &real]);
    list.env_remove("STREAMLAB_BROKERS");
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&ok_output(list)).unwrap();
    assert!(
        listed.iter().any(|t| t["name"] == topic.as_str()),
        "{listed:?}"
    );
    // The flag wins over the environment, on either side, and --timeout bounds the wait.
    for args in [
        vec!["-b", "127.0.0.1:1", "--timeout", "1s", "topic", "list"],
        vec!["topic", "list", "-b", "127.0.0.1:1", "--timeout", "1s"],
    ] {
        let started = Instant::now();
        fails(&args, 1, &["127.0.0.1:1"], &[]);
        assert!(started.elapsed() < Duration::from_secs(5), "{args:?}");
    }
}

#[test]
fn quiet_runs_print_nothing_and_json_summaries_carry_the_counts() {
    let topic = topic(3);
    let quiet = ok(&[
        "-q", "produce", "--topic", &topic, "--count", "40", "--rate", "0",
    ]);
    assert_eq!(quiet, "", "-q prints no summary");
    let produced: serde_json::Value = serde_json::from_str(&ok(&[
        "produce", "--topic", &topic, "--count", "60", "--rate", "0", "--format", "json",
    ]))
    .unwrap();
    assert_eq!(produced["sent"], 60);
    let per_partition: u64 = produced["per_partition"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(per_partition, 60);

    let db = TestDb::sqlite();
    let consumed = consume_json(&brokers(), &topic, &db.url, &[]);
    assert_eq!(consumed["consumed"], 100);
    assert_eq!(consumed["inserted"], 100);
    assert_eq!(consumed["duplicates"], 0);
    let positions: BTreeMap<i64, i64> = consumed["partitions"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(p, pos)| (p.parse().unwrap(), pos["next_offset"].as_i64().unwrap()))
        .collect();
    assert_eq!(
        positions,
        end_offsets(&topic),
        "next offsets are the log ends"
    );
    assert_eq!(db.scalar("SELECT COUNT(*) FROM sales_events"), 100);
}

#[test]
fn completion_scripts_for_every_shell_know_the_commands_and_global_flags() {
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let script = ok(&["completions", shell]);
        for word in ["consume", "topic", "bootstrap-server"] {
            assert!(script.contains(word), "{shell} script lacks {word}");
        }
    }
    fails(&["completions", "tcsh"], 2, &["tcsh"], &[]);
}

#[test]
fn colour_only_on_request_and_never_with_no_color() {
    let db = TestDb::sqlite();
    let topic = topic(1);
    produce_and_wait(&brokers(), &topic, 10, 3);
    ok(&["consume", "--topic", &topic, "-D", &db.url, "--stop-at-end"]);
    let check = |env: &[(&str, &str)]| {
        let mut cmd = command(&["check", "-D", &db.url]);
        cmd.env_remove("NO_COLOR").env_remove("CLICOLOR_FORCE");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(!check(&[]).contains('\x1b'), "piped output has no escapes");
    assert!(
        check(&[("CLICOLOR_FORCE", "1")]).contains("\x1b[32m"),
        "forced colour"
    );
    let no_color = check(&[("CLICOLOR_FORCE", "1"), ("NO_COLOR", "1")]);
    assert!(!no_color.contains('\x1b'), "NO_COLOR wins: {no_color}");
}

#[test]
fn the_database_is_settled_from_sink_and_url_before_anything_connects() {
    // 10.255.255.1 never answers: a usage error must come before any attempt to connect.
    let unanswering = "postgres://u:hunter2@10.255.255.1:5432/x";
    for (args, says) in [
        (
            vec![
                "consume",
                "--topic",
                "t",
                "--sink",
                "sqlite",
                "-D",
                unanswering,
            ],
            "--sink sqlite does not fit",
        ),
        (
            vec!["check", "--sink", "sqlite", "-D", unanswering],
            "--sink sqlite does not fit",
        ),
        (
            vec!["migrate", "-D", "mysql://u:hunter2@10.255.255.1/x"],
            "is not a database streamlab writes to",
        ),
        (vec!["consume", "--topic", "t"], "say which database"),
    ] {
        let started = Instant::now();
        let stderr = fails(&args, 2, &[says], &["hunter2"]);
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(started.elapsed() < Duration::from_secs(2), "{args:?}");
    }
    // The URL alone is enough.
    let db = TestDb::sqlite();
    let out = ok(&["migrate", "-D", &db.url]);
    assert!(out.contains("migrations applied"), "{out}");
}

#[test]
fn errors_name_each_cause_once_on_one_line_with_documented_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let unopenable = format!("sqlite://{}/no/such/dir/w.db", dir.path().display());
    let stderr = fails(
        &["migrate", "-D", &unopenable],
        1,
        &["cannot open SQLite database"],
        &[],
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert_eq!(
        stderr.matches("unable to open database file").count(),
        1,
        "{stderr}"
    );
    // A database that cannot be reached is a runtime failure (1), not a usage error (2).
    fails(
        &[
            "check",
            "-D",
            "postgres://u:hunter2@127.0.0.1:1/x",
            "--timeout",
            "2s",
        ],
        1,
        &["cannot reach the database"],
        &["hunter2"],
    );
    fails(
        &["topic", "create", "--topic", "bad name!"],
        2,
        &["bad name!"],
        &[],
    );
}

#[test]
fn watch_quits_on_ctrl_c_and_gives_the_terminal_back() {
    let topic = topic(2);
    produce_and_wait(&brokers(), &topic, 20, 5);
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/pty_keys.py");
    let out = std::process::Command::new(python_bin())
        .arg(script)
        .args(["log start", "\\x03", "--"])
        .arg(env!("CARGO_BIN_EXE_streamlab"))
        .args(["watch", "--topic", &topic, "--interval", "200ms"])
        .env("STREAMLAB_BROKERS", brokers())
        .output()
        .expect("the test python");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(report["shown"], true, "the dashboard showed: {report}");
    assert_eq!(report["exit"], 0, "{report}");
    assert!(report["seconds"].as_f64().unwrap() < 3.0, "{report}");
    assert_eq!(report["left_alternate_screen"], true, "{report}");
    assert_eq!(report["cursor_shown"], true, "{report}");
    assert_eq!(report["canonical_and_echo"], true, "{report}");
}

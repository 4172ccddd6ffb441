//! Kafka users' habits, tried as a user would: global options on either side of the subcommand,
//! `-q`, `--format json` summaries, completions, colour rules, exit codes, one-line errors, the
//! database settled before anything connects, and `watch` giving the terminal back on Ctrl-C.

use std::time::{Duration, Instant};

use crate::support::*;

#[test]
fn connection_options_work_before_and_after_the_subcommand() {
    let topic = unique("t");
    let real = brokers();
    // Before the subcommand, with no environment to fall back on.
    streamlab("")
        .brokers(&real)
        .timeout("5s")
        .args(["topic", "create"])
        .topic(&topic)
        .env_remove("STREAMLAB_BROKERS")
        .ok();
    // After it.
    let listed = streamlab("topic list")
        .json()
        .brokers(&real)
        .env_remove("STREAMLAB_BROKERS")
        .ok_json();
    let listed = listed.as_array().unwrap();
    assert!(
        listed.iter().any(|t| t["name"] == topic.as_str()),
        "{listed:?}"
    );
    // The flag wins over the environment, on either side, and --timeout bounds the wait.
    let unreachable = || streamlab("").brokers("127.0.0.1:1").timeout("1s");
    for cmd in [
        unreachable().args(["topic", "list"]),
        streamlab("topic list").args(unreachable().argv()),
    ] {
        let started = Instant::now();
        cmd.fails(1, &["127.0.0.1:1"], &[]);
        // Under the 10 s default with room for a busy machine: the flag's 1 s bounded it.
        assert!(started.elapsed() < Duration::from_secs(8), "{cmd:?}");
    }
}

#[test]
fn quiet_runs_print_nothing_and_json_summaries_carry_the_counts() {
    let topic = topic(3);
    let quiet = streamlab("").quiet().args(produce(&topic, 40).argv()).ok();
    assert_eq!(quiet, "", "-q prints no summary");
    let produced = produce(&topic, 60).json().ok_json();
    assert_eq!(produced["sent"], 60);
    let per_partition: u64 = produced["per_partition"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(per_partition, 60);

    let db = TestDb::sqlite();
    let consumed = consume_json(&brokers(), &topic, &db.url).ok_json();
    assert_eq!(consumed["consumed"], 100);
    assert_eq!(consumed["inserted"], 100);
    assert_eq!(consumed["duplicates"], 0);
    assert_eq!(
        next_offsets(&consumed),
        end_offsets(&topic),
        "next offsets are the log ends"
    );
    assert_eq!(db.count("sales_events"), 100);
}

#[test]
fn completion_scripts_for_every_shell_know_the_commands_and_global_flags() {
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let script = streamlab("completions").arg(shell).ok();
        for word in ["consume", "topic", "bootstrap-server"] {
            assert!(script.contains(word), "{shell} script lacks {word}");
        }
    }
    streamlab("completions tcsh").fails(2, &["tcsh"], &[]);
}

#[test]
fn colour_only_on_request_and_never_with_no_color() {
    let db = TestDb::sqlite();
    let topic = topic(1);
    produce_and_wait(&brokers(), &topic, 10, 3);
    streamlab("consume")
        .topic(&topic)
        .url(&db.url)
        .stop_at_end()
        .ok();
    let check = |env: &[(&str, &str)]| {
        let check = streamlab("check")
            .url(&db.url)
            .env_remove("NO_COLOR")
            .env_remove("CLICOLOR_FORCE");
        env.iter().fold(check, |check, (k, v)| check.env(k, v)).ok()
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
    for (cmd, says) in [
        (
            streamlab("consume")
                .topic("t")
                .sink("sqlite")
                .url(unanswering),
            "--sink sqlite does not fit",
        ),
        (
            streamlab("check").sink("sqlite").url(unanswering),
            "--sink sqlite does not fit",
        ),
        (
            streamlab("migrate").url("mysql://u:hunter2@10.255.255.1/x"),
            "is not a database streamlab writes to",
        ),
        (streamlab("consume").topic("t"), "say which database"),
    ] {
        let started = Instant::now();
        let stderr = cmd.fails(2, &[says], &["hunter2"]);
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        // A connection attempt to 10.255.255.1 would wait out the 10 s default --timeout.
        assert!(started.elapsed() < Duration::from_secs(8), "{cmd:?}");
    }
    // The URL alone is enough.
    let db = TestDb::sqlite();
    let out = streamlab("migrate").url(&db.url).ok();
    assert!(out.contains("migrations applied"), "{out}");
}

#[test]
fn errors_name_each_cause_once_on_one_line_with_documented_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let unopenable = format!("sqlite://{}/no/such/dir/w.db", dir.path().display());
    let stderr =
        streamlab("migrate")
            .url(&unopenable)
            .fails(1, &["cannot open SQLite database"], &[]);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert_eq!(
        stderr.matches("unable to open database file").count(),
        1,
        "{stderr}"
    );
    // A database that cannot be reached is a runtime failure (1), not a usage error (2).
    streamlab("check")
        .url("postgres://u:hunter2@127.0.0.1:1/x")
        .timeout("2s")
        .fails(1, &["cannot reach the database"], &["hunter2"]);
    streamlab("topic create")
        .topic("bad name!")
        .fails(2, &["bad name!"], &[]);
}

#[test]
fn watch_quits_on_ctrl_c_and_gives_the_terminal_back() {
    let topic = topic(2);
    produce_and_wait(&brokers(), &topic, 20, 5);
    let watch = streamlab("watch").topic(&topic).interval("200ms");
    let out = std::process::Command::new(python_bin())
        .arg(py_script("pty_keys.py"))
        .args(["log start", "\\x03", "--"])
        .arg(env!("CARGO_BIN_EXE_streamlab"))
        .args(watch.argv())
        .env("STREAMLAB_BROKERS", brokers())
        .output()
        .expect("the test python");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(report["shown"], true, "the dashboard showed: {report}");
    assert_eq!(report["exit"], 0, "{report}");
    // Quit on the key, not at some later moment (pty_keys gives up after 10 s); the margin is
    // for a busy machine.
    assert!(report["seconds"].as_f64().unwrap() < 5.0, "{report}");
    assert_eq!(report["left_alternate_screen"], true, "{report}");
    assert_eq!(report["cursor_shown"], true, "{report}");
    assert_eq!(report["canonical_and_echo"], true, "{report}");
}

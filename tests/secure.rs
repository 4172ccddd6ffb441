//! Secured clusters: every subcommand through SASL_SSL, each SASL mechanism, TLS alone, the
//! failures (wrong password, untrusted certificate, plaintext against TLS and the reverse) as one
//! line within --timeout, librdkafka through the same front, and PostgreSQL over TLS.
//!
//! The brokers are tansu instances of the tests' own behind [`SecureFront`](crate::support::secure::SecureFront) (TLS and
//! SASL terminated in front of the broker, real PLAIN/SCRAM server side from rsasl); the TLS
//! PostgreSQL is a throwaway cluster ([`TlsPostgres`]).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::secure::{Certs, Guard, SecureTansu, TlsPostgres, PASSWORD, USER};
use crate::support::*;

/// A properties file for `protocol` and `mechanism`, trusting `ca`; the password is not in it
/// (it comes from STREAMLAB_SASL_PASSWORD).
fn properties(
    certs: &Certs,
    protocol: &str,
    mechanism: Option<&str>,
    ca: Option<&PathBuf>,
) -> PathBuf {
    let mut text = format!("# written by tests/secure.rs\nsecurity.protocol={protocol}\n");
    if let Some(mechanism) = mechanism {
        text.push_str(&format!(
            "sasl.mechanism={mechanism}\nsasl.username={USER}\n"
        ));
    }
    if let Some(ca) = ca {
        text.push_str(&format!("ssl.ca.location={}\n", ca.display()));
    }
    let path = certs
        .dir
        .path()
        .join(format!("{}.properties", unique("client")));
    std::fs::write(&path, text).unwrap();
    path
}

/// `streamlab ARGS… -b BROKER --command-config FILE` with `password` in the environment.
fn secured(args: &[&str], broker: &str, config: &std::path::Path, password: &str) -> Cmd {
    streamlab("")
        .args(args)
        .brokers(broker)
        .command_config(config)
        .env("STREAMLAB_SASL_PASSWORD", password)
}

/// Run to completion; stdout and stderr must never show `secret`.
/// `streamlab ARGS…` as they are.
fn raw(args: &[&str]) -> Cmd {
    streamlab("").args(args)
}

/// Require exit 0; stdout.
fn succeeded(run: &Run, what: &str) -> String {
    assert!(
        run.succeeded(),
        "{what} failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        run.code,
        run.stdout,
        run.stderr
    );
    run.stdout.clone()
}

fn run(cmd: impl std::borrow::Borrow<Cmd>, secret: &str) -> Run {
    let run = cmd.borrow().run();
    for (name, text) in [("stdout", &run.stdout), ("stderr", &run.stderr)] {
        assert!(!text.contains(secret), "{name} shows the password:\n{text}");
    }
    run
}

/// Exit 1 with one line on stderr naming every one of `says`, within `limit`.
fn refused(
    cmd: impl std::borrow::Borrow<Cmd>,
    secret: &str,
    limit: Duration,
    says: &[&str],
) -> String {
    let started = Instant::now();
    let out = run(cmd, secret);
    let took = started.elapsed();
    let stderr = out.fails(1, says, &[secret]);
    assert!(took < limit, "took {took:?} (limit {limit:?}): {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line, got:\n{stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    stderr
}

#[test]
fn every_subcommand_runs_through_sasl_ssl() {
    let certs = Certs::new();
    let kafka = SecureTansu::start(Guard::SaslTls, &certs);
    let broker = kafka.address();
    let config = properties(&certs, "SASL_SSL", Some("SCRAM-SHA-512"), Some(&certs.ca));
    let sl = |args: &[&str]| {
        let out = run(secured(args, &broker, &config, PASSWORD), PASSWORD);
        succeeded(&out, &format!("{args:?}"))
    };
    let topic = unique("secure");
    sl(&["topic", "create", "--topic", &topic, "--partitions", "2"]);
    assert!(sl(&["topic", "list"]).lines().any(|l| l.contains(&topic)));
    sl(&["topic", "retention", "--topic", &topic, "--set", "2h"]);
    let described: serde_json::Value = serde_json::from_str(&sl(&[
        "topic", "describe", "--topic", &topic, "--format", "json",
    ]))
    .unwrap();
    assert_eq!(
        described["partitions"].as_array().unwrap().len(),
        2,
        "{described}"
    );

    // -vv: rskafka's own debug logs, where a password could leak, are on.
    sl(&[
        "-vv", "produce", "--topic", &topic, "--count", "300", "--rate", "0", "--seed", "21",
    ]);
    let db = TestDb::sqlite();
    let consumed: serde_json::Value = serde_json::from_str(&sl(&[
        "-vv",
        "consume",
        "--topic",
        &topic,
        "-D",
        &db.url,
        "--stop-at-end",
        "--format",
        "json",
    ]))
    .unwrap();
    assert_eq!(consumed["inserted"], 300, "{consumed}");
    assert_eq!(db.sales_ids(), seeded_ids(21, 300));
    assert_eq!(db.stored_offsets(&topic).values().sum::<i64>(), 300);

    let check: serde_json::Value = serde_json::from_str(&sl(&[
        "check", "--sink", "sqlite", "-D", &db.url, "--topic", &topic, "--format", "json",
    ]))
    .unwrap();
    assert_eq!(check["healthy"], true, "{check}");
    sl(&["watch", "--topic", &topic, "-D", &db.url, "--count", "1"]);
    sl(&["migrate", "-D", &TestDb::sqlite().url]);
    let pg = pg_admin_url();
    sl(&[
        "bench",
        "-n",
        "2000",
        "--repeats",
        "1",
        "--partitions",
        "1",
        "--latency",
        "0",
        "--pg-url",
        &pg,
    ]);
}

#[test]
fn each_mechanism_and_tls_alone_carry_a_pipeline() {
    let certs = Certs::new();
    let cases = [
        (Guard::Sasl, "SASL_PLAINTEXT", Some("PLAIN")),
        (Guard::SaslTls, "SASL_SSL", Some("SCRAM-SHA-256")),
        (Guard::SaslTls, "SASL_SSL", Some("PLAIN")),
        (Guard::Tls, "SSL", None),
    ];
    for (guard, protocol, mechanism) in cases {
        let kafka = SecureTansu::start(guard, &certs);
        let broker = kafka.address();
        let ca = protocol.ends_with("SSL").then_some(&certs.ca);
        let config = properties(&certs, protocol, mechanism, ca);
        let sl = |args: &[&str]| {
            let out = run(secured(args, &broker, &config, PASSWORD), PASSWORD);
            succeeded(&out, &format!("{protocol} {mechanism:?} {args:?}"))
        };
        let topic = unique("mech");
        sl(&["topic", "create", "--topic", &topic, "--partitions", "1"]);
        sl(&[
            "produce", "--topic", &topic, "--count", "50", "--rate", "0", "--seed", "5",
        ]);
        let db = TestDb::sqlite();
        sl(&["consume", "--topic", &topic, "-D", &db.url, "--stop-at-end"]);
        assert_eq!(
            db.sales_ids(),
            seeded_ids(5, 50),
            "{protocol} {mechanism:?}"
        );
    }
}

#[test]
fn settings_given_with_x_work_and_hostname_checks_can_be_relaxed() {
    let certs = Certs::new();
    let kafka = SecureTansu::start(Guard::SaslTls, &certs);
    // Reached as localhost (a name the certificate lists) with everything on the command line.
    let broker = format!("localhost:{}", kafka.front.port);
    let ca = format!("ssl.ca.location={}", certs.ca.display());
    let password = format!("sasl.password={PASSWORD}");
    let out = run(
        raw(&[
            "topic",
            "list",
            "-b",
            &broker,
            "-X",
            "security.protocol=SASL_SSL",
            "-X",
            "sasl.mechanism=SCRAM-SHA-256",
            "-X",
            &format!("sasl.username={USER}"),
            "-X",
            &password,
            "-X",
            &ca,
            "-X",
            "ssl.endpoint.identification.algorithm=none",
        ]),
        PASSWORD,
    );
    succeeded(&out, "topic list with -X");
}

#[test]
fn wrong_credentials_end_in_one_line_naming_the_user_within_the_timeout() {
    let certs = Certs::new();
    let kafka = SecureTansu::start(Guard::SaslTls, &certs);
    let broker = kafka.address();
    let wrong = "wrong-Pa55word-must-not-show";
    // --timeout 3s and a margin for TLS handshakes on a busy machine: under the 10 s default.
    let limit = Duration::from_secs(7);
    for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
        let config = properties(&certs, "SASL_SSL", Some(mechanism), Some(&certs.ca));
        let topic = unique("denied");
        for args in [
            vec!["topic", "list"],
            vec!["produce", "--topic", topic.as_str(), "--count", "1"],
            vec![
                "consume",
                "--topic",
                topic.as_str(),
                "--sink",
                "sqlite",
                "--stop-at-end",
            ],
        ] {
            let mut full = vec!["--timeout", "3s"];
            full.extend(&args);
            refused(
                secured(&full, &broker, &config, wrong),
                wrong,
                limit,
                &["authentication failed", USER, mechanism],
            );
        }
    }
}

#[test]
fn untrusted_certificates_and_tls_mismatches_end_in_one_line_within_the_timeout() {
    let certs = Certs::new();
    let kafka = SecureTansu::start(Guard::Tls, &certs);
    // --timeout 3s and a margin for TLS handshakes on a busy machine: under the 10 s default.
    let limit = Duration::from_secs(7);
    let timeout = ["--timeout", "3s"];
    let with = |broker: &str, props: &[String], args: &[&str]| {
        let mut cmd = raw(&timeout).args(args).brokers(broker);
        for p in props {
            cmd = cmd.setting(p);
        }
        cmd
    };
    let ssl = "security.protocol=SSL".to_string();
    let other_ca = format!("ssl.ca.location={}", certs.other_ca.display());
    for args in [
        &["topic", "list"][..],
        &["produce", "--topic", "t", "--count", "1"][..],
    ] {
        // A CA that did not sign the broker's certificate, then the system's (which has not
        // heard of the test CA either).
        refused(
            with(&kafka.address(), &[ssl.clone(), other_ca.clone()], args),
            PASSWORD,
            limit,
            &["not trusted", "ssl.ca.location"],
        );
        refused(
            with(&kafka.address(), std::slice::from_ref(&ssl), args),
            PASSWORD,
            limit,
            &["not trusted"],
        );
        // Plaintext to the TLS front.
        refused(
            with(&kafka.address(), &[], args),
            PASSWORD,
            limit,
            &["TLS listener", "security.protocol=SSL"],
        );
        // TLS to the broker's own plaintext port.
        refused(
            with(
                &kafka.plain_address(),
                &[
                    ssl.clone(),
                    format!("ssl.ca.location={}", certs.ca.display()),
                ],
                args,
            ),
            PASSWORD,
            limit,
            &["plaintext listener"],
        );
    }
}

#[test]
fn bad_settings_are_usage_errors_that_name_the_key_and_never_the_password() {
    let secret = "p4ss-in-a-bad-setting";
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["-X".into(), format!("sasl.pasword={secret}")],
            "unknown Kafka setting 'sasl.pasword'",
        ),
        (
            vec!["-X".into(), "security.protocol".into()],
            "-X expects KEY=VALUE",
        ),
        (
            vec!["-X".into(), "security.protocol=SASL_SSL".into()],
            "no sasl.username",
        ),
        (
            vec!["-X".into(), format!("sasl.password={secret}")],
            "sasl.password is set but security.protocol is PLAINTEXT",
        ),
        (
            vec![
                "--command-config".into(),
                "/nonexistent/client.properties".into(),
            ],
            "/nonexistent/client.properties",
        ),
        (
            vec![
                "-X".into(),
                "security.protocol=SSL".into(),
                "-X".into(),
                "ssl.ca.location=/nonexistent/ca.pem".into(),
            ],
            "ssl.ca.location /nonexistent/ca.pem",
        ),
    ];
    for (flags, says) in cases {
        let mut args: Vec<&str> = vec!["topic", "list"];
        args.extend(flags.iter().map(String::as_str));
        raw(&args).fails(2, &[says], &[secret]);
    }
}

#[test]
fn librdkafka_speaks_through_the_same_sasl_ssl_front() {
    let certs = Certs::new();
    let kafka = SecureTansu::start(Guard::SaslTls, &certs);
    let broker = kafka.address();
    let config = properties(&certs, "SASL_SSL", Some("SCRAM-SHA-512"), Some(&certs.ca));
    let security = serde_json::json!({
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "SCRAM-SHA-512",
        "sasl.username": USER,
        "sasl.password": PASSWORD,
        "ssl.ca.location": certs.ca,
    })
    .to_string();
    let rdkafka = |args: &[&str]| {
        let script = py_script("rdkafka_secure.py");
        let out = Command::new(rdkafka_python())
            .arg(script)
            .args(args)
            .env("STREAMLAB_BROKERS", &broker)
            .env("STREAMLAB_RDKAFKA_SECURITY", &security)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "rdkafka_secure.py {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let sl = |args: &[&str]| {
        succeeded(
            &run(secured(args, &broker, &config, PASSWORD), PASSWORD),
            "streamlab",
        )
    };

    // streamlab writes, librdkafka reads back every record.
    let topic = unique("xsecure");
    sl(&["topic", "create", "--topic", &topic, "--partitions", "2"]);
    sl(&[
        "produce", "--topic", &topic, "--count", "100", "--rate", "0", "--seed", "9",
    ]);
    let read: Vec<serde_json::Value> = rdkafka(&["read", &topic])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(read.len(), 100);
    let ids: std::collections::BTreeSet<String> = event_ids(&read).into_iter().collect();
    assert_eq!(ids, seeded_ids(9, 100));

    // librdkafka writes, streamlab's topic describe sees every record.
    let theirs = unique("xsecure");
    sl(&["topic", "create", "--topic", &theirs, "--partitions", "1"]);
    rdkafka(&["produce", &theirs, "40"]);
    let described: serde_json::Value = serde_json::from_str(&sl(&[
        "topic", "describe", "--topic", &theirs, "--format", "json",
    ]))
    .unwrap();
    assert_eq!(described["partitions"][0]["log_end"], 40, "{described}");
}

#[test]
fn postgres_over_tls_verifies_as_libpq_does() {
    let certs = Certs::new();
    let pg = TlsPostgres::start(&certs);
    let ca = certs.ca.display().to_string();
    let db = "streamlab_tls";
    // migrate's --timeout 5s and a margin for a busy machine: under the 10 s default.
    let limit = Duration::from_secs(9);
    let full = pg.url(db, &format!("sslmode=verify-full&sslrootcert={ca}"));

    // verify-full with the CA: the whole pipeline (the broker is the plain test broker).
    let topic = topic(1);
    produce_and_wait(&brokers(), &topic, 30, 3);
    succeeded(
        &run(
            raw(&["consume", "--topic", &topic, "-D", &full, "--stop-at-end"]),
            PASSWORD,
        ),
        "consume",
    );
    let check: serde_json::Value = serde_json::from_str(&succeeded(
        &run(
            raw(&["check", "-D", &full, "--topic", &topic, "--format", "json"]),
            PASSWORD,
        ),
        "check",
    ))
    .unwrap();
    assert_eq!(check["healthy"], true, "{check}");
    // The default (prefer, as libpq) and require take TLS too; verify-ca checks the chain only.
    for query in [
        "",
        "sslmode=require",
        &format!("sslmode=verify-ca&sslrootcert={ca}"),
    ] {
        succeeded(
            &run(raw(&["migrate", "-D", &pg.url(db, query)]), PASSWORD),
            query,
        );
    }

    let migrate = |url: String| raw(&["migrate", "--timeout", "5s", "-D", &url]);
    // Without the CA, or with another one, the certificate is not trusted.
    refused(
        migrate(pg.url(db, "sslmode=verify-full")),
        PASSWORD,
        limit,
        &["certificate"],
    );
    refused(
        migrate(pg.url(
            db,
            &format!(
                "sslmode=verify-full&sslrootcert={}",
                certs.other_ca.display()
            ),
        )),
        PASSWORD,
        limit,
        &["certificate"],
    );
    // verify-full checks the name: `localhost` is in the certificate, so that passes too.
    succeeded(
        &run(migrate(full.replace("127.0.0.1", "localhost")), PASSWORD),
        "verify-full via localhost",
    );
    // A plaintext client where only TLS is allowed.
    refused(
        migrate(pg.url(db, "sslmode=disable")),
        PASSWORD,
        limit,
        &["no encryption"],
    );
    // TLS required of a server that has none.
    pg.without_tls();
    refused(
        migrate(pg.url(db, "sslmode=require")),
        PASSWORD,
        limit,
        &["server does not support TLS"],
    );
}

/// No rustls `Debug` text in an error: words only.
const DEBUG_TEXT: &[&str] = &["Other(", "OtherError", "CaUsedAsEndEntity"];

#[test]
fn a_self_signed_ca_certificate_is_trusted_where_it_is_the_ca_file_as_openssl_does() {
    // As `openssl req -x509` makes it: self-signed, CA:TRUE, the servers' own certificate.
    let certs = Certs::self_signed_ca(&["localhost", "127.0.0.1"]);
    let kafka = SecureTansu::start(Guard::Tls, &certs);
    let limit = Duration::from_secs(5);
    let tls = |ca: &PathBuf, args: &[&str]| {
        raw(&["--timeout", "3s"])
            .args(args)
            .brokers(&kafka.address())
            .setting("security.protocol=SSL")
            .setting(&format!("ssl.ca.location={}", ca.display()))
    };
    // The certificate's own file, alone or in a bundle with another CA: the whole pipeline.
    let bundle = certs.dir.path().join("bundle.pem");
    let text = std::fs::read_to_string(&certs.other_ca).unwrap()
        + &std::fs::read_to_string(&certs.cert).unwrap();
    std::fs::write(&bundle, text).unwrap();
    let db = TestDb::sqlite();
    for (ca, n) in [(&certs.ca, "30"), (&bundle, "20")] {
        let topic = unique("selfsigned");
        let ok = |args: &[&str]| succeeded(&run(tls(ca, args), PASSWORD), args[0]);
        ok(&["topic", "create", "--topic", &topic]);
        ok(&["produce", "--topic", &topic, "--count", n, "--rate", "0"]);
        let (on_topic, into_db) = (["--topic", &topic, "--group", &topic], ["-D", &db.url]);
        ok(&[&["consume", "--stop-at-end"][..], &on_topic, &into_db].concat());
        ok(&[&["check", "--max-lag", "0"][..], &on_topic, &into_db].concat());
    }
    assert_eq!(db.sales_ids().len(), 50);

    // Another CA only: one line that says what to do, no Debug text.
    let stderr = refused(
        tls(&certs.other_ca, &["topic", "list"]),
        PASSWORD,
        limit,
        &["CA:TRUE", "ssl.ca.location"],
    );
    for debug in DEBUG_TEXT {
        assert!(!stderr.contains(debug), "{stderr}");
    }

    // The name is still checked: a certificate naming another host is refused, unless
    // ssl.endpoint.identification.algorithm=none.
    let elsewhere = Certs::self_signed_ca(&["elsewhere.example"]);
    let kafka = SecureTansu::start(Guard::Tls, &elsewhere);
    let list = raw(&["--timeout", "3s", "topic", "list"])
        .brokers(&kafka.address())
        .setting("security.protocol=SSL")
        .setting(&format!("ssl.ca.location={}", elsewhere.ca.display()));
    refused(list.clone(), PASSWORD, limit, &["does not name that host"]);
    succeeded(
        &run(
            list.setting("ssl.endpoint.identification.algorithm=none"),
            PASSWORD,
        ),
        "topic list, any host name",
    );

    // PostgreSQL serving the same certificate, sslrootcert naming it: sqlx's rustls cannot be
    // given a verifier, so it is refused — in one line that says what to do.
    let pg = TlsPostgres::start(&certs);
    let ca = certs.ca.display();
    for mode in ["verify-full", "verify-ca"] {
        let url = pg.url("streamlab_tls", &format!("sslmode={mode}&sslrootcert={ca}"));
        for command in ["migrate", "check"] {
            let stderr = refused(
                raw(&[command, "--timeout", "5s", "-D", &url]),
                PASSWORD,
                Duration::from_secs(8),
                &["CA:TRUE", "sslrootcert", "CA:FALSE"],
            );
            for debug in DEBUG_TEXT {
                assert!(!stderr.contains(debug), "{stderr}");
            }
        }
    }
}

//! `--metrics-addr`: Prometheus text served while `produce` and `consume` run, scraped over
//! plain HTTP and compared with what the broker and the database hold.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn scrape(port: u16) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.starts_with("HTTP/1.1 200").then_some(response)
}

/// The sum of every sample of `name` (across its label sets) in a scrape.
fn total(scraped: &str, name: &str) -> f64 {
    scraped
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn consume_serves_its_counters_lag_and_write_latency() {
    let db = TestDb::sqlite();
    let topic = topic(3);
    let n = 3000.0;
    ok(&[
        "produce", "--topic", &topic, "--count", "3000", "--rate", "0", "--seed", "21",
    ]);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let consumer = spawn(&[
        "consume",
        "--assign",
        "all",
        "--topic",
        &topic,
        "--sink",
        "sqlite",
        "-D",
        &db.url,
        "--metrics-addr",
        &addr,
    ]);

    let mut last = String::new();
    let caught_up = wait_until(30, || {
        last = scrape(port).unwrap_or_default();
        total(&last, "streamlab_events_inserted_total") == n
    });
    signal(&consumer, "TERM");
    let out = consumer.wait_with_output().unwrap();
    assert!(
        caught_up,
        "{last}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success());

    assert_eq!(total(&last, "streamlab_events_consumed_total"), n);
    assert_eq!(total(&last, "streamlab_events_duplicate_total"), 0.0);
    assert_eq!(db.scalar("SELECT COUNT(*) FROM sales_events") as f64, n);
    let lag_lines = last
        .lines()
        .filter(|l| l.starts_with("streamlab_lag_events{"))
        .count();
    assert_eq!(lag_lines, 3, "one lag gauge per partition: {last}");
    assert_eq!(total(&last, "streamlab_lag_events"), 0.0);
    assert!(
        total(&last, "streamlab_batch_write_seconds_count") >= 1.0,
        "{last}"
    );
    assert!(
        last.contains("# TYPE streamlab_batch_write_seconds histogram"),
        "{last}"
    );
}

#[test]
fn produce_serves_what_the_broker_acknowledged() {
    let topic = topic(2);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let producer = spawn(&[
        "produce",
        "--topic",
        &topic,
        "--rate",
        "500",
        "--metrics-addr",
        &addr,
    ]);
    let mut scraped = 0.0;
    assert!(wait_until(20, || {
        scraped = scrape(port).map_or(0.0, |s| total(&s, "streamlab_events_produced_total"));
        scraped >= 200.0
    }));
    signal(&producer, "TERM");
    let out = producer.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent = produced_count(&out.stdout) as f64;
    let on_broker: i64 = offsets(&topic).values().map(|(_, end)| end).sum();
    assert!(
        scraped <= sent,
        "a scrape never runs ahead of the acknowledgements"
    );
    assert_eq!(on_broker as f64, sent);
}

#[test]
fn a_metrics_address_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = streamlab(&[
        "produce",
        "--topic",
        &topic(1),
        "--count",
        "1",
        "--metrics-addr",
        &addr,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot serve metrics on {addr}")),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

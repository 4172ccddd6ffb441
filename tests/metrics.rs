//! `--metrics-addr`: Prometheus text served while `produce` and `consume` run, scraped over
//! plain HTTP and compared with what the broker and the database hold.

use std::io::{Read, Write};
use std::net::TcpStream;

use crate::support::*;

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
    produce(&topic, 3000).seed(21).ok();
    let port = free_port();
    let consumer = streamlab("consume")
        .assign_all()
        .topic(&topic)
        .db(&db)
        .metrics_addr(&format!("127.0.0.1:{port}"))
        .spawn();

    let mut last = String::new();
    let caught_up = wait_until(30, || {
        last = scrape(port).unwrap_or_default();
        total(&last, "streamlab_events_inserted_total") == n
    });
    let out = consumer.terminate();
    assert!(caught_up, "{last}\n{}", out.stderr);
    assert!(out.succeeded());

    assert_eq!(total(&last, "streamlab_events_consumed_total"), n);
    assert_eq!(total(&last, "streamlab_events_duplicate_total"), 0.0);
    assert_eq!(db.count("sales_events") as f64, n);
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
    let producer = streamlab("produce")
        .topic(&topic)
        .rate(500)
        .metrics_addr(&format!("127.0.0.1:{port}"))
        .json()
        .spawn();
    let mut scraped = 0.0;
    assert!(wait_until(20, || {
        scraped = scrape(port).map_or(0.0, |s| total(&s, "streamlab_events_produced_total"));
        scraped >= 200.0
    }));
    let out = producer.terminate();
    assert!(out.succeeded(), "{}", out.stderr);
    let sent = out.json()["sent"].as_u64().unwrap() as f64;
    let on_broker = total_records(&topic);
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
    streamlab("produce")
        .topic(&topic(1))
        .count(1)
        .metrics_addr(&addr)
        .fails(
            1,
            &[&format!("cannot serve metrics on {addr}")],
            &["panicked"],
        );
}

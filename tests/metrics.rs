//! `--metrics-addr`: Prometheus text served while `produce` and `consume` run, scraped over
//! plain HTTP and compared with what the broker and the database hold.

use crate::support::metrics::{scrape, total};
use crate::support::*;

#[test]
fn consume_serves_its_counters_lag_and_write_latency() {
    let db = TestDb::sqlite();
    let topic = topic(3);
    let n = 3000;
    produce(&topic, n).seed(21).ok();
    // Records no event can be made of: each one is a dead letter.
    let poison: Vec<Option<Vec<u8>>> = vec![None, Some(b"not json".to_vec()), Some(vec![0xff])];
    let n_poison = poison.len();
    produce_raw(&topic, 1, b"poison", poison);
    let records = (n + n_poison) as f64;
    let port = free_port();
    let consumer = streamlab("consume")
        .assign_all()
        .topic(&topic)
        .db(&db)
        .metrics_addr(&format!("127.0.0.1:{port}"))
        .spawn();

    // Counted after COMMIT: once every record is counted, the run is done and the scrape final.
    let mut last = String::new();
    let caught_up = wait_until(30, || {
        last = scrape(port).unwrap_or_default();
        total(&last, "streamlab_events_consumed_total") == records
    });
    let out = consumer.terminate();
    assert!(caught_up, "{last}\n{}", out.stderr);
    assert!(out.succeeded());

    assert_eq!(total(&last, "streamlab_events_inserted_total"), n as f64);
    assert_eq!(total(&last, "streamlab_events_duplicate_total"), 0.0);
    assert_eq!(
        total(&last, "streamlab_events_dead_lettered_total"),
        n_poison as f64,
        "{last}"
    );
    assert_eq!(db.sales_ids(), seeded_ids(21, n));
    assert_eq!(db.count("dead_letters"), n_poison as i64);
    assert_eq!(db.stored_offsets(&topic), end_offsets(&topic));
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
    // One event a second: between two acknowledgements the counter stands still for most of a
    // second, so a scrape taken just after one is final if the producer stops right then.
    let producer = streamlab("produce")
        .topic(&topic)
        .rate(1)
        .seed(22)
        .metrics_addr(&format!("127.0.0.1:{port}"))
        .json()
        .spawn();
    let mut last = String::new();
    let mut scraped = 0.0;
    let mut previous = 0.0;
    // The event: a scrape showing a new acknowledgement, the third or later.
    let acknowledged = wait_until(30, || {
        last = scrape(port).unwrap_or_default();
        scraped = total(&last, "streamlab_events_produced_total");
        let fresh = scraped != previous;
        previous = scraped;
        fresh && scraped >= 3.0
    });
    let out = producer.terminate();
    assert!(acknowledged, "{last}\n{}", out.stderr);
    assert!(out.succeeded(), "{}", out.stderr);
    let sent = out.json()["sent"].as_u64().unwrap();
    // What was scraped is what the broker acknowledged, and the broker holds exactly that.
    assert_eq!(
        scraped, sent as f64,
        "scrape {last}\nsummary {}",
        out.stdout
    );
    assert_eq!(total_records(&topic), sent as i64);
    let on_broker: std::collections::BTreeSet<String> =
        event_ids(&read_back(&topic)).into_iter().collect();
    assert_eq!(on_broker, seeded_ids(22, sent as usize));
    // A healthy run: no request failed.
    assert_eq!(
        total(&last, "streamlab_produce_errors_total"),
        0.0,
        "{last}"
    );
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

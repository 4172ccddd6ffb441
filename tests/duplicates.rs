//! Duplicates by id against the real databases: counted, never stored twice — inside one batch,
//! against rows already stored, and against another writer racing for the same id. PostgreSQL
//! writes a batch of 64 rows or more by COPY first and falls back to ON CONFLICT, a smaller one
//! by ON CONFLICT alone: each test runs small batches and batches padded with new events.

use std::time::Duration;

use crate::sink::landed;
use crate::support::TestDb;
use streamlab::db::pg::PgSink;
use streamlab::db::sqlite::SqliteSink;
use streamlab::db::{self, Batch, Landed, OffsetAdvance, Sink, SinkTx};
use streamlab::events::{cents, Event, EventKind, Generator};
use time::OffsetDateTime;

const TIMEOUT: Duration = Duration::from_secs(10);

fn events(kind: EventKind, seed: u64, n: usize) -> Vec<Event> {
    let mut g = Generator::new(kind, Some(seed));
    (0..n)
        .map(|_| g.next_event(OffsetDateTime::now_utc()))
        .collect()
}

/// A batch of `events` on `partition`, from offset `from` on, fenced from `fenced_from`.
fn batch_of(events: &[&Event], partition: i32, first: i64, fenced_from: Option<i64>) -> Batch {
    let landed: Vec<Landed> = events
        .iter()
        .enumerate()
        .map(|(i, e)| Landed {
            partition,
            ..landed((*e).clone(), first + i as i64)
        })
        .collect();
    let to = first + landed.len() as i64;
    Batch {
        group: "g".into(),
        topic: "t".into(),
        events: landed,
        offsets: vec![OffsetAdvance {
            partition,
            from: fenced_from,
            to,
        }],
        ..Batch::default()
    }
}

/// `events` followed by the new events `pad`.
fn padded<'e>(events: &[&'e Event], pad: &'e [Event]) -> Vec<&'e Event> {
    events.iter().copied().chain(pad).collect()
}

async fn in_batch_and_stored<S: Sink>(mut sink: S, db: &TestDb, kind: EventKind, pad: usize) {
    let table = match kind {
        EventKind::Sales => "sales_events",
        EventKind::Sensor => "sensor_logs",
    };
    let e = events(kind, 19, 6);
    let fill = events(kind, 77, 2 * pad);
    let (fill1, fill2) = fill.split_at(pad);
    let n = pad as u64;
    // e1 and e3 twice in one batch: the first occurrence is stored, the second counted.
    let first = padded(&[&e[0], &e[1], &e[2], &e[1], &e[3], &e[4], &e[3]], fill1);
    let w = db::write(&mut sink, &batch_of(&first, 0, 0, None))
        .await
        .unwrap();
    assert_eq!((w.inserted, w.duplicates), (5 + n, 2), "{}", db.sink);
    assert_eq!(db.count(table), 5 + pad as i64);
    if let Event::Sale(sale) = &e[4] {
        // Values go in exactly as the careful way stores them (PostgreSQL's COPY is binary).
        let stored = db.scalar(&format!(
            "SELECT CAST(amount_usd * 100 AS INTEGER) FROM {table} WHERE id = '{}'",
            sale.id
        ));
        assert_eq!(stored, cents(sale.amount_usd));
        if db.sink == "pg" {
            let millis = db.scalar(&format!(
                "SELECT CAST(EXTRACT(EPOCH FROM ts) * 1000 AS BIGINT) FROM {table} WHERE id = '{}'",
                sale.id
            ));
            assert_eq!(
                i128::from(millis),
                sale.ts.unix_timestamp_nanos() / 1_000_000
            );
        }
    }
    assert_eq!(
        db.scalar(&format!(
            "SELECT kafka_offset FROM {table} WHERE id = '{}'",
            e[3].id()
        )),
        4,
        "the first occurrence is the one stored"
    );
    // e2 already stored, e5 new and twice.
    let at = first.len() as i64;
    let second = padded(&[&e[2], &e[5], &e[5]], fill2);
    let w = db::write(&mut sink, &batch_of(&second, 0, at, Some(at)))
        .await
        .unwrap();
    assert_eq!((w.inserted, w.duplicates), (1 + n, 2), "{}", db.sink);
    assert_eq!(db.count(table), 6 + 2 * pad as i64);
    // A whole batch already stored.
    let at = at + second.len() as i64;
    let third = padded(&[&e[0], &e[1], &e[5]], fill1);
    let w = db::write(&mut sink, &batch_of(&third, 0, at, Some(at)))
        .await
        .unwrap();
    assert_eq!((w.inserted, w.duplicates), (0, 3 + n), "{}", db.sink);
    assert_eq!(db.count(table), 6 + 2 * pad as i64);
    let end = at + third.len() as i64;
    assert_eq!(db.stored_offsets("t").get(&0), Some(&end));
}

#[tokio::test]
async fn duplicates_inside_a_batch_and_already_stored_are_counted_not_stored() {
    for kind in [EventKind::Sales, EventKind::Sensor] {
        for pad in [0, 100] {
            let [sqlite, pg] = TestDb::both();
            let sink = SqliteSink::connect(&sqlite.url, TIMEOUT).await.unwrap();
            in_batch_and_stored(sink, &sqlite, kind, pad).await;
            let sink = PgSink::connect(&pg.url, TIMEOUT).await.unwrap();
            in_batch_and_stored(sink, &pg, kind, pad).await;
        }
    }
}

/// Wait until a session of `db` is waiting for a lock (the racing COPY or INSERT).
async fn someone_waits_for_a_lock(db: &TestDb) {
    for _ in 0..100 {
        let waiting = db.scalar(
            "SELECT COUNT(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        );
        if waiting > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the second writer never waited for the first");
}

/// Writer A holds id x uncommitted; writer B (its own connection, transaction and partition)
/// writes x and y. When A commits, x is a duplicate for B; when A rolls back, B stores both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_writer_racing_for_an_id_never_stores_it_twice() {
    for (a_commits, pad) in [(true, 0), (false, 0), (true, 100), (false, 100)] {
        let pg = TestDb::pg();
        let e = events(EventKind::Sales, 23, 2);
        let (x, y) = (&e[0], &e[1]);
        let fill = events(EventKind::Sales, 29, pad);
        let mut a = PgSink::connect(&pg.url, TIMEOUT).await.unwrap();
        let mut b = PgSink::connect(&pg.url, TIMEOUT).await.unwrap();
        let mut tx = a.begin().await.unwrap();
        let a_batch = batch_of(&[x], 0, 0, None);
        assert_eq!(tx.insert_events(&a_batch.events).await.unwrap(), 1);
        let b_events = padded(&[x, y], &fill);
        let b_batch = batch_of(&b_events, 1, 0, None);
        let racing = tokio::spawn(async move { db::write(&mut b, &b_batch).await });
        someone_waits_for_a_lock(&pg).await;
        if a_commits {
            tx.commit().await.unwrap();
        } else {
            drop(tx);
        }
        let w = racing.await.unwrap().unwrap();
        let n = pad as u64;
        let expected = if a_commits { (1 + n, 1) } else { (2 + n, 0) };
        assert_eq!(
            (w.inserted, w.duplicates),
            expected,
            "A commits: {a_commits}, {pad}"
        );
        assert_eq!(pg.count("sales_events"), 2 + pad as i64);
        assert_eq!(
            pg.scalar(&format!(
                "SELECT kafka_partition FROM sales_events WHERE id = '{}'",
                x.id()
            )),
            if a_commits { 0 } else { 1 }
        );
        assert_eq!(pg.stored_offsets("t").get(&1), Some(&(2 + pad as i64)));
    }
}

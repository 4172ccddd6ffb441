//! The `Sink` trait against both real databases: atomic batches, idempotent rows, fenced offsets.

use crate::support::TestDb;
use streamlab::db::pg::PgSink;
use streamlab::db::sqlite::SqliteSink;
use streamlab::db::{
    self, Batch, DeadLetter, Deadline, Landed, OffsetAdvance, Sink, SinkError, SinkTx,
};
use streamlab::events::Event;
use streamlab::events::{EventKind, Generator};
use time::OffsetDateTime;

fn batch(events: usize, from: Option<i64>, to: i64, seed: u64) -> Batch {
    let mut g = Generator::new(EventKind::Sales, Some(seed));
    Batch {
        group: "g".into(),
        topic: "t".into(),
        topic_id: None,
        events: (0..events)
            .map(|i| landed(g.next_event(OffsetDateTime::now_utc()), i as i64))
            .collect(),
        dead_letters: vec![DeadLetter {
            partition: 0,
            offset: to - 1,
            key: None,
            payload: Some(b"\x00bad".to_vec()),
            error: "not json\0".into(),
        }],
        offsets: vec![OffsetAdvance {
            partition: 0,
            from,
            to,
        }],
        ..Batch::default()
    }
}

pub(crate) fn landed(event: Event, offset: i64) -> Landed {
    Landed {
        value: event.to_json().into(),
        key: Some(event.key().as_bytes().to_vec().into()),
        event,
        partition: 0,
        offset,
    }
}

async fn exercise<S: Sink>(mut sink: S, db: &TestDb) {
    let first = db::write(&mut sink, &batch(10, None, 11, 1)).await.unwrap();
    assert_eq!(
        (first.inserted, first.duplicates, first.dead_lettered),
        (10, 0, 1)
    );
    assert_eq!(
        sink.load_offsets("g", "t").await.unwrap().get(&0),
        Some(&11)
    );

    // A writer that believes the partition is fresh, or at another offset, is fenced, and
    // nothing of its batch is kept.
    for stale in [None, Some(5)] {
        let err = db::write(&mut sink, &batch(10, stale, 21, 2))
            .await
            .unwrap_err();
        assert!(matches!(err, SinkError::Fenced { .. }), "{err}");
        assert!(!err.is_transient());
    }
    assert_eq!(db.count("sales_events"), 10);

    // The rightful writer goes on; replayed events are duplicates, not rows.
    let again = db::write(&mut sink, &batch(10, Some(11), 21, 1))
        .await
        .unwrap();
    assert_eq!((again.inserted, again.duplicates), (0, 10));
    let new = db::write(&mut sink, &batch(10, Some(21), 31, 3))
        .await
        .unwrap();
    assert_eq!(new.inserted, 10);
    assert_eq!(db.count("sales_events"), 20);
    assert_eq!(
        sink.load_offsets("g", "t").await.unwrap().get(&0),
        Some(&31)
    );
    assert_eq!(db.count("dead_letters"), 3);
}

#[tokio::test]
async fn both_sinks_write_atomically_and_fence_offsets() {
    let timeout = std::time::Duration::from_secs(10);
    let db = TestDb::sqlite();
    exercise(SqliteSink::connect(&db.url, timeout).await.unwrap(), &db).await;
    let db = TestDb::pg();
    exercise(PgSink::connect(&db.url, timeout).await.unwrap(), &db).await;
}

/// Events the database refuses — a constraint added to the table, a NUL PostgreSQL text cannot
/// hold — are set aside as dead letters with the database's reason, byte for byte, while the
/// rest of the batch and its offsets commit together.
async fn isolate<S: Sink>(sink: S, db: &TestDb) {
    let mut sink = Deadline::new(
        sink,
        std::time::Duration::from_secs(10),
        "the test database",
    );
    let mut g = Generator::new(EventKind::Sales, Some(31));
    let closed = g.stores()[4].clone();
    let reason = db.refuse_sales_of(&closed);
    let mut events: Vec<Landed> = (0..300)
        .map(|i| landed(g.next_event(OffsetDateTime::now_utc()), i))
        .collect();
    // A NUL in a text field: PostgreSQL refuses it (22021), SQLite stores it.
    if let Event::Sale(s) = &mut events[10].event {
        s.store_id = "nul\0store".into();
    }
    let refused: Vec<i64> = events
        .iter()
        .filter(|l| match &l.event {
            Event::Sale(s) => {
                s.store_id == closed || (db.sink == "pg" && s.store_id.contains('\0'))
            }
            Event::Sensor(_) => false,
        })
        .map(|l| l.offset)
        .collect();
    assert!(refused.len() > 10, "{refused:?}");
    let batch = Batch {
        group: "g".into(),
        topic: "t".into(),
        topic_id: None,
        events,
        dead_letters: vec![DeadLetter {
            partition: 0,
            offset: 300,
            key: None,
            payload: Some(b"not json".to_vec()),
            error: "not json".into(),
        }],
        offsets: vec![OffsetAdvance {
            partition: 0,
            from: None,
            to: 301,
        }],
        ..Batch::default()
    };

    let err = db::write(&mut sink, &batch).await.unwrap_err();
    assert!(err.refusal().is_some(), "{err}");
    assert!(!err.is_transient(), "{err}");
    assert_eq!(db.count("sales_events"), 0);

    let written = db::write_isolating(&mut sink, &batch).await.unwrap();
    let n = (300 - refused.len()) as u64;
    assert_eq!(
        (written.inserted, written.duplicates),
        (n, 0),
        "{}",
        db.sink
    );
    assert_eq!(written.dead_lettered, refused.len() as u64 + 1);
    let offsets: Vec<i64> = written.refused.iter().map(|r| r.1).collect();
    assert_eq!(offsets, refused);
    assert!(
        written.refused.iter().any(|r| r.2.contains(reason)),
        "{written:?}"
    );
    if db.sink == "pg" {
        assert!(
            written
                .refused
                .iter()
                .any(|r| r.2.contains("0x00") && r.2.contains("22021")),
            "{written:?}"
        );
    }

    // Stored: everything else once; refused: each in dead_letters with the record's own bytes.
    assert_eq!(db.count("sales_events") as u64, n);
    let ids: std::collections::BTreeSet<String> = batch
        .events
        .iter()
        .filter(|l| !refused.contains(&l.offset))
        .map(|l| l.event.id().to_string())
        .collect();
    assert_eq!(db.sales_ids(), ids);
    let kept = db.lines(&format!(
        "SELECT kafka_offset FROM dead_letters WHERE error LIKE '%{reason}%' ORDER BY 1"
    ));
    assert!(!kept.is_empty());
    for line in &kept {
        let offset: i64 = line.parse().unwrap();
        let original = String::from_utf8(batch.events[offset as usize].value.to_vec()).unwrap();
        let stored = db.lines(&format!(
            "SELECT {} FROM dead_letters WHERE kafka_offset = {offset}",
            db.payload_as_text()
        ));
        assert_eq!(stored, vec![original]);
    }
    assert_eq!(db.count("dead_letters") as usize, refused.len() + 1);
    assert_eq!(
        sink.load_offsets("g", "t").await.unwrap().get(&0),
        Some(&301)
    );
}

#[tokio::test]
async fn both_sinks_set_refused_events_aside_and_commit_the_rest() {
    let timeout = std::time::Duration::from_secs(10);
    let db = TestDb::sqlite();
    isolate(SqliteSink::connect(&db.url, timeout).await.unwrap(), &db).await;
    let db = TestDb::pg();
    isolate(PgSink::connect(&db.url, timeout).await.unwrap(), &db).await;
}

/// A write whose future is dropped while its COPY waits on the server — a lane given up at its
/// deadline, the other lanes' writes when one fails — must not leave a connection out of step
/// with its answers in the pool: the COPY's late answer would be read by the next BEGIN on that
/// connection ("unexpected connection status after attempting to begin transaction"). Every
/// later write on the pool goes in, exactly.
#[tokio::test]
async fn a_write_dropped_while_its_copy_waits_leaves_the_pool_in_step() {
    let timeout = std::time::Duration::from_secs(10);
    let db = TestDb::pg();
    let mut sink = PgSink::connect(&db.url, timeout).await.unwrap();
    let victim = batch(200, None, 201, 7);
    // Another transaction holds the batch's first id, uncommitted: the COPY waits for it.
    let mut holder = sink.clone();
    let mut held = holder.begin().await.unwrap();
    held.insert_events(&victim.events[..1]).await.unwrap();
    let waiting = "SELECT count(*) FROM pg_stat_activity \
                   WHERE datname = current_database() AND wait_event_type = 'Lock' \
                   AND query LIKE 'COPY%'";
    {
        let writing = db::write(&mut sink, &victim);
        tokio::pin!(writing);
        while db.scalar(waiting) == 0 {
            tokio::select! {
                done = &mut writing => panic!("the COPY did not wait: {done:?}"),
                () = tokio::time::sleep(std::time::Duration::from_millis(20)) => {}
            }
        }
    }
    // The write is dropped mid-COPY; the holder rolls back, so the COPY completes on the server
    // and its answer arrives on a connection whose reader is gone.
    drop(held);
    let mut from = None;
    for round in 0..12u64 {
        let to = 10 * (round as i64 + 1) + 1;
        let written = db::write(&mut sink, &batch(10, from, to, 100 + round))
            .await
            .unwrap_or_else(|e| panic!("write {round} after the dropped one: {e}"));
        assert_eq!(written.inserted, 10);
        from = Some(to);
    }
    assert_eq!(db.count("sales_events"), 120);
    assert_eq!(db.stored_offsets("t").get(&0), Some(&121));
}

/// SQLite: a committed batch reaches the database file itself while the WAL is far below the
/// writer's own checkpoint threshold (10,000 pages) — the background checkpointer copied it,
/// so the writer never waits on a checkpoint. Read with `immutable=1`, SQLite ignores the WAL
/// and sees only the file.
#[tokio::test]
async fn sqlite_batches_are_checkpointed_in_the_background() {
    use sqlx::sqlite::SqliteConnectOptions;
    use sqlx::{ConnectOptions, Connection};
    let timeout = std::time::Duration::from_secs(10);
    let db = TestDb::sqlite();
    let mut sink = SqliteSink::connect(&db.url, timeout).await.unwrap();
    db::write(&mut sink, &batch(10, None, 11, 1)).await.unwrap();
    let file_only = SqliteConnectOptions::new()
        .filename(db.path())
        .read_only(true)
        .immutable(true);
    let in_file = || async {
        // Read while pages are being copied, the file may not parse yet: not there yet.
        let mut conn = file_only.connect().await.ok()?;
        let rows = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM sales_events")
            .fetch_one(&mut conn)
            .await
            .ok();
        let _ = conn.close().await;
        rows
    };
    let deadline = std::time::Instant::now() + timeout;
    let mut seen = None;
    while seen != Some(10) && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        seen = in_file().await;
    }
    assert_eq!(seen, Some(10), "the rows in the database file, WAL aside");
    // The writer still writes (the checkpointer never holds it up).
    db::write(&mut sink, &batch(10, Some(11), 21, 3))
        .await
        .unwrap();
    assert_eq!(db.count("sales_events"), 20);
}

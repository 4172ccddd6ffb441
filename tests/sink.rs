//! The `Sink` trait against both real databases: atomic batches, idempotent rows, fenced offsets.

mod common;

use common::TestDb;
use streamlab::events::{EventKind, Generator};
use streamlab::sink::pg::PgSink;
use streamlab::sink::sqlite::SqliteSink;
use streamlab::sink::{Batch, DeadLetter, Landed, OffsetAdvance, Sink, SinkError};
use time::OffsetDateTime;

fn batch(events: usize, from: Option<i64>, to: i64, seed: u64) -> Batch {
    let mut g = Generator::new(EventKind::Sales, Some(seed));
    Batch {
        group: "g".into(),
        topic: "t".into(),
        topic_id: None,
        events: (0..events)
            .map(|i| Landed {
                event: g.next_event(OffsetDateTime::now_utc()),
                partition: 0,
                offset: i as i64,
            })
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
    }
}

async fn exercise<S: Sink>(mut sink: S, db: &TestDb) {
    let first = sink.write(&batch(10, None, 11, 1)).await.unwrap();
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
        let err = sink.write(&batch(10, stale, 21, 2)).await.unwrap_err();
        assert!(matches!(err, SinkError::Fenced { .. }), "{err}");
        assert!(!err.is_transient());
    }
    assert_eq!(db.scalar("SELECT COUNT(*) FROM sales_events"), 10);

    // The rightful writer goes on; replayed events are duplicates, not rows.
    let again = sink.write(&batch(10, Some(11), 21, 1)).await.unwrap();
    assert_eq!((again.inserted, again.duplicates), (0, 10));
    let new = sink.write(&batch(10, Some(21), 31, 3)).await.unwrap();
    assert_eq!(new.inserted, 10);
    assert_eq!(db.scalar("SELECT COUNT(*) FROM sales_events"), 20);
    assert_eq!(
        sink.load_offsets("g", "t").await.unwrap().get(&0),
        Some(&31)
    );
    assert_eq!(db.scalar("SELECT COUNT(*) FROM dead_letters"), 3);
}

#[tokio::test]
async fn both_sinks_write_atomically_and_fence_offsets() {
    let timeout = std::time::Duration::from_secs(10);
    let db = TestDb::sqlite();
    exercise(SqliteSink::connect(&db.url, timeout).await.unwrap(), &db).await;
    let db = TestDb::pg();
    exercise(PgSink::connect(&db.url, timeout).await.unwrap(), &db).await;
}

//! One database in memory for unit tests: the [`Sink`] contract (stored offsets, the fence, a
//! transaction that commits or is dropped) without a server, with the faults the tests need —
//! a COMMIT whose reply is lost, statements or a COMMIT that never answer. Every unit test that
//! needs a sink uses this one, so the double cannot drift from the contract in two ways.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::dlq::Statements;
use super::{
    Batch, DeadLetter, Landed, MemberRecord, OffsetAdvance, Savepoint, Sink, SinkError, SinkTx,
    Tombstone,
};
use crate::events::EventKind;

/// What goes wrong, on purpose.
#[derive(Clone, Copy, Default)]
pub struct Faults {
    /// The first COMMIT commits and then loses its reply, as a connection dropped during
    /// COMMIT does.
    pub lose_first_reply: bool,
    /// No statement (inserts, deletes, our own statements) ever answers.
    pub hang_statements: bool,
    /// COMMIT never answers.
    pub hang_commit: bool,
    /// How many rows each of our own statements ([`Statements::execute`]) says it affected.
    pub affects: u64,
}

/// What has been committed.
#[derive(Default)]
pub struct Stored {
    pub offsets: BTreeMap<i32, i64>,
    pub commits: usize,
}

/// The database; clones share what is stored, as a pool's connections do.
#[derive(Clone, Default)]
pub struct MemorySink {
    pub stored: Arc<Mutex<Stored>>,
    pub faults: Faults,
}

impl MemorySink {
    pub fn with(faults: Faults) -> Self {
        Self {
            faults,
            ..Self::default()
        }
    }

    /// The committed `partition → next offset`.
    pub fn offsets(&self) -> BTreeMap<i32, i64> {
        self.stored.lock().unwrap().offsets.clone()
    }
}

/// A transaction: offsets staged until COMMIT.
pub struct MemoryTx {
    stored: Arc<Mutex<Stored>>,
    staged: Vec<(i32, i64)>,
    faults: Faults,
}

impl MemoryTx {
    async fn answer(&self) {
        if self.faults.hang_statements {
            std::future::pending::<()>().await;
        }
    }
}

impl Sink for MemorySink {
    type Tx = MemoryTx;

    async fn begin(&mut self) -> Result<MemoryTx, SinkError> {
        Ok(MemoryTx {
            stored: Arc::clone(&self.stored),
            staged: Vec::new(),
            faults: self.faults,
        })
    }

    async fn load_offsets(&mut self, _: &str, _: &str) -> Result<BTreeMap<i32, i64>, SinkError> {
        Ok(self.offsets())
    }

    async fn stored_topic_ids(
        &mut self,
        _: &str,
        _: &str,
    ) -> Result<BTreeMap<i32, String>, SinkError> {
        Ok(BTreeMap::new())
    }

    async fn record_member(&mut self, _: &MemberRecord) -> Result<(), SinkError> {
        Ok(())
    }
}

impl SinkTx for MemoryTx {
    async fn insert_events(&mut self, events: &[Landed]) -> Result<u64, SinkError> {
        self.answer().await;
        Ok(events.len() as u64)
    }

    async fn upsert_events(&mut self, events: &[Landed]) -> Result<u64, SinkError> {
        self.insert_events(events).await
    }

    async fn delete_keys(&mut self, _: EventKind, d: &[Tombstone]) -> Result<u64, SinkError> {
        self.answer().await;
        Ok(d.len() as u64)
    }

    async fn insert_dead_letters(&mut self, _: &str, l: &[DeadLetter]) -> Result<u64, SinkError> {
        self.answer().await;
        Ok(l.len() as u64)
    }

    /// The fence: the stored offset must be where the batch says it starts.
    async fn advance<'b>(
        &mut self,
        batch: &'b Batch,
    ) -> Result<Option<&'b OffsetAdvance>, SinkError> {
        let stored = self.stored.lock().unwrap();
        for advance in &batch.offsets {
            let at = stored.offsets.get(&advance.partition).copied();
            self.staged.push((advance.partition, advance.to));
            if at != advance.from {
                return Ok(Some(advance));
            }
        }
        Ok(None)
    }

    async fn savepoint(&mut self, _: Savepoint) -> Result<(), SinkError> {
        Ok(())
    }

    async fn commit(self) -> Result<(), SinkError> {
        if self.faults.hang_commit {
            std::future::pending::<()>().await;
        }
        let mut stored = self.stored.lock().unwrap();
        stored.offsets.extend(self.staged);
        stored.commits += 1;
        if self.faults.lose_first_reply && stored.commits == 1 {
            let lost = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "reply lost");
            return Err(SinkError::Database(sqlx::Error::Io(lost)));
        }
        Ok(())
    }
}

impl Statements for MemoryTx {
    async fn execute(&mut self, _: &str) -> Result<u64, SinkError> {
        self.answer().await;
        Ok(self.faults.affects)
    }
}

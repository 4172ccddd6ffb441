//! The writer lanes of the batch loop, as decisions without I/O: which lane a fetched chunk
//! joins, when a lane's chunks become a batch and what it is fenced from, when a built batch
//! may be written, and whether the loop takes more from the fetchers.
//!
//! The loop in `batches.rs` only awaits (the fetch channel, the writes) and tells [`Lanes`]
//! what happened; kept apart, these rules are unit-tested with canned chunks instead of only
//! by an end-to-end run.
//!
//! Each writer (a lane) owns a share of the partitions and writes its batches one after
//! another, each fenced from the end of the lane's previous batch — so batches of one
//! partition commit in order, and lanes never touch each other's offsets. A lane that is idle
//! takes whatever has arrived at once (when caught up, each event is written as soon as it is
//! fetched); under a backlog batches fill up to the batch limit, and a lane holding its next
//! batch stops the intake (backpressure): memory stays bounded by the writers, not the backlog.

use std::collections::BTreeMap;

use super::Fetched;
use crate::db::Batch;

/// Per partition, the stored offset a batch's advance moves from (None: no row yet).
pub(super) type Fences = BTreeMap<i32, Option<i64>>;

/// The lanes of one run of the batch loop.
pub(super) struct Lanes {
    lanes: Vec<Lane>,
    lane_of: BTreeMap<i32, usize>,
    /// Records at which a lane's pending chunks make a full batch.
    batch_limit: usize,
    /// One writer decodes its next batch while the current one is written; with several,
    /// the others' writes overlap the decoding, and building ahead would only cost memory.
    prebuild: bool,
    /// Where each partition's next batch is fenced from: the end of the last one handed to
    /// its lane (which commits, or the run ends, before the next is written).
    handed: Fences,
}

/// One writer's share: what it has fetched, the batch built from it, and whether its previous
/// batch is still being written.
#[derive(Default)]
struct Lane {
    /// Fetched, not yet in a batch, and how many records that is.
    pending: Vec<Fetched>,
    records: usize,
    /// Built (decoded, fenced from the lane's batch before it), waiting for the lane's write.
    ready: Option<(Vec<Fetched>, Batch)>,
    /// A write of this lane is in flight (never more than one).
    busy: bool,
}

/// A batch to write now on lane `lane`, and the chunks it was built from.
pub(super) struct Write {
    pub(super) lane: usize,
    pub(super) chunks: Vec<Fetched>,
    pub(super) batch: Batch,
}

/// Records per batch at most: `batch_size`, or — throttled to `throttle` events a second — a
/// quarter second's worth, so the pace is even.
pub(super) fn batch_limit(batch_size: usize, throttle: Option<u32>) -> usize {
    match throttle {
        Some(t) => batch_size.min((t as usize / 4).max(1)),
        None => batch_size,
    }
}

/// How many writers (lanes) to write `partitions` partitions with: `chosen` (`--writers N`), or
/// — `None`, the default — one per core (at least two: a second writer's COPY overlaps the first
/// one's round trips and commit even on one core), never more than the partitions nor `cap`
/// (1 where writers cannot write side by side, as on SQLite; fewer where the database has no
/// connections to spare), nor 8. The count, and the INFO line that says how it was chosen.
pub(crate) fn writer_count(
    chosen: Option<usize>,
    partitions: usize,
    cores: usize,
    cap: usize,
) -> (usize, Option<String>) {
    if let Some(chosen) = chosen {
        return (chosen, None);
    }
    let per_cores = cores.clamp(2, 8);
    let writers = per_cores.min(cap).min(partitions).max(1);
    let why = format!(
        "{writers} writer{} for {partitions} partition{} ({cores} core{}{}; --writers to choose)",
        plural(writers),
        plural(partitions),
        plural(cores),
        if cap < per_cores {
            format!(", at most {cap} here")
        } else {
            String::new()
        }
    );
    (writers, Some(why))
}

/// The cores this process may run on, as [`writer_count`] counts them.
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The lane of the `index`-th partition a run holds (in order), of `writers`: in turn.
pub(crate) fn lane_for(index: usize, writers: usize) -> usize {
    index % writers.max(1)
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

impl Lanes {
    /// `writers` lanes (at least one, at most one per partition) sharing `partitions` in turn,
    /// their first batches fenced from `committed`.
    pub(super) fn new(
        partitions: &[i32],
        committed: Fences,
        writers: usize,
        batch_limit: usize,
    ) -> Self {
        let writers = writers.clamp(1, partitions.len().max(1));
        Self {
            lanes: (0..writers).map(|_| Lane::default()).collect(),
            lane_of: partitions
                .iter()
                .enumerate()
                .map(|(i, &partition)| (partition, lane_for(i, writers)))
                .collect(),
            batch_limit,
            prebuild: writers == 1,
            handed: committed,
        }
    }

    /// A fetched chunk joins its partition's lane. True when that lane now holds a full batch:
    /// the loop stops taking what has already arrived.
    pub(super) fn take(&mut self, chunk: Fetched) -> bool {
        let lane = &mut self.lanes[self.lane_of[&chunk.partition]];
        lane.records += chunk.records.len();
        lane.pending.push(chunk);
        lane.records >= self.batch_limit
    }

    /// Lane by lane, build the batches that are due and hand out the writes that may start.
    ///
    /// A lane's pending chunks become a batch when it has none built yet and either nothing
    /// in flight, or (one writer) a full batch waiting behind the one in flight. `build` makes
    /// the batch of chunks, fenced from the given offsets; the batch's advances are where the
    /// lane's next batch is fenced from. A built batch is written once its lane is idle.
    pub(super) fn due(
        &mut self,
        mut build: impl FnMut(&[Fetched], &Fences) -> Batch,
    ) -> Vec<Write> {
        let mut writes = Vec::new();
        for (i, lane) in self.lanes.iter_mut().enumerate() {
            if lane.ready.is_none()
                && !lane.pending.is_empty()
                && (!lane.busy || (self.prebuild && lane.records >= self.batch_limit))
            {
                let chunks = std::mem::take(&mut lane.pending);
                lane.records = 0;
                let batch = build(&chunks, &self.handed);
                for advance in &batch.offsets {
                    self.handed.insert(advance.partition, Some(advance.to));
                }
                lane.ready = Some((chunks, batch));
            }
            if !lane.busy {
                if let Some((chunks, batch)) = lane.ready.take() {
                    lane.busy = true;
                    writes.push(Write {
                        lane: i,
                        chunks,
                        batch,
                    });
                }
            }
        }
        writes
    }

    /// Lane `lane`'s write finished: it may start its next.
    pub(super) fn written(&mut self, lane: usize) {
        self.lanes[lane].busy = false;
    }

    /// Whether to take more from the fetchers: not while a lane holds its next batch, built or
    /// full (a lane holds at most the batch it writes and the next one).
    pub(super) fn wants_intake(&self) -> bool {
        !self
            .lanes
            .iter()
            .any(|l| l.ready.is_some() || (l.busy && l.records >= self.batch_limit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::OffsetAdvance;
    use crate::kafka::records::FetchedRecord;

    /// `count` records of `partition` from offset `from`.
    fn chunk(partition: i32, from: i64, count: i64) -> Fetched {
        Fetched {
            partition,
            records: (from..from + count)
                .map(|offset| FetchedRecord {
                    offset,
                    key: None,
                    value: None,
                    timestamp: 0,
                })
                .collect(),
            next_offset: from + count,
            stable_end: from + count,
            skipped: None,
        }
    }

    /// What `build` was asked for: per call, the chunks (partition, first offset, end) and the
    /// fences it was given.
    type Built = Vec<(Vec<(i32, i64, i64)>, Fences)>;

    /// A batch of nothing but offset advances (from each partition's fence to its last
    /// chunk's end), as `build_batch` makes them; every call is logged in `built`.
    fn builder(built: &mut Built) -> impl FnMut(&[Fetched], &Fences) -> Batch + '_ {
        |chunks, fences| {
            let mut advances: BTreeMap<i32, OffsetAdvance> = BTreeMap::new();
            for c in chunks {
                let advance = advances.entry(c.partition).or_insert(OffsetAdvance {
                    partition: c.partition,
                    from: fences.get(&c.partition).copied().flatten(),
                    to: 0,
                });
                advance.to = advance.to.max(c.next_offset);
            }
            let seen = chunks
                .iter()
                .map(|c| (c.partition, c.records[0].offset, c.next_offset))
                .collect();
            built.push((seen, fences.clone()));
            Batch {
                offsets: advances.into_values().collect(),
                ..Batch::default()
            }
        }
    }

    /// A batch's advances as (partition, from, to).
    type Advances = Vec<(i32, Option<i64>, i64)>;

    /// Lane and advances of each write.
    fn summary(writes: &[Write]) -> Vec<(usize, Advances)> {
        writes
            .iter()
            .map(|w| {
                let advances = w.batch.offsets.iter();
                (
                    w.lane,
                    advances.map(|a| (a.partition, a.from, a.to)).collect(),
                )
            })
            .collect()
    }

    fn fences(of: &[(i32, Option<i64>)]) -> Fences {
        of.iter().copied().collect()
    }

    #[test]
    fn the_batch_limit_is_the_batch_size_or_a_quarter_second_of_the_throttle() {
        assert_eq!(batch_limit(500, None), 500);
        assert_eq!(batch_limit(500, Some(100)), 25);
        assert_eq!(batch_limit(10, Some(100)), 10);
        assert_eq!(batch_limit(500, Some(2)), 1);
    }

    #[test]
    fn the_default_writer_count_follows_the_cores_partitions_and_cap() {
        // Chosen: as given, nothing said.
        assert_eq!(writer_count(Some(3), 4, 2, 8), (3, None));
        let auto = |partitions, cores, cap| writer_count(None, partitions, cores, cap);
        assert_eq!(
            auto(4, 2, 8),
            (
                2,
                Some("2 writers for 4 partitions (2 cores; --writers to choose)".into())
            )
        );
        // One core still gets two; eight cores, eight; never more than the partitions.
        assert_eq!(auto(4, 1, 8).0, 2);
        assert_eq!(auto(12, 8, 8).0, 8);
        assert_eq!(auto(12, 32, 8).0, 8);
        assert_eq!(auto(3, 8, 8).0, 3);
        assert_eq!(
            auto(1, 8, 8),
            (
                1,
                Some("1 writer for 1 partition (8 cores; --writers to choose)".into())
            )
        );
        // No partitions yet: one.
        assert_eq!(auto(0, 2, 8).0, 1);
        // SQLite (one writer at a time), or few spare connections.
        assert_eq!(
            auto(4, 2, 1),
            (
                1,
                Some(
                    "1 writer for 4 partitions (2 cores, at most 1 here; --writers to choose)"
                        .into()
                )
            )
        );
    }

    #[test]
    fn writers_are_clamped_to_the_partitions_and_share_them_in_turn() {
        let lanes = Lanes::new(&[0, 1], Fences::new(), 8, 10);
        assert_eq!(lanes.lanes.len(), 2);
        assert!(!lanes.prebuild);
        let lanes = Lanes::new(&[], Fences::new(), 0, 10);
        assert_eq!(lanes.lanes.len(), 1);
        assert!(lanes.prebuild);
        let lanes = Lanes::new(&[3, 5, 7, 9, 11], Fences::new(), 2, 10);
        let lane_of: Vec<(i32, usize)> = lanes.lane_of.into_iter().collect();
        assert_eq!(lane_of, [(3, 0), (5, 1), (7, 0), (9, 1), (11, 0)]);
    }

    #[test]
    fn an_idle_lane_takes_what_arrived_at_once() {
        let mut built = Built::new();
        let mut lanes = Lanes::new(&[0, 1], fences(&[(0, Some(5))]), 2, 100);
        assert!(!lanes.take(chunk(0, 5, 3)));
        assert!(!lanes.take(chunk(1, 0, 2)));
        let writes = lanes.due(builder(&mut built));
        assert_eq!(
            summary(&writes),
            [(0, vec![(0, Some(5), 8)]), (1, vec![(1, None, 2)])]
        );
        assert!(lanes.due(builder(&mut built)).is_empty());
        assert!(lanes.wants_intake());
    }

    #[test]
    fn batches_of_a_partition_are_written_in_order_each_fenced_from_the_last() {
        let mut built = Built::new();
        let mut lanes = Lanes::new(&[0, 1], fences(&[(0, Some(5))]), 2, 100);
        lanes.take(chunk(0, 5, 3));
        assert_eq!(summary(&lanes.due(builder(&mut built))).len(), 1);
        // Lane 0 writes: what arrives for it waits, unbuilt (several writers build no ahead).
        lanes.take(chunk(0, 8, 2));
        lanes.take(chunk(0, 10, 1));
        assert!(lanes.due(builder(&mut built)).is_empty());
        lanes.written(0);
        let writes = lanes.due(builder(&mut built));
        assert_eq!(summary(&writes), [(0, vec![(0, Some(8), 11)])]);
        assert_eq!(
            built,
            [
                (vec![(0, 5, 8)], fences(&[(0, Some(5))])),
                (vec![(0, 8, 10), (0, 10, 11)], fences(&[(0, Some(8))])),
            ]
        );
    }

    #[test]
    fn a_lane_never_has_two_writes_in_flight() {
        let mut built = Built::new();
        let mut lanes = Lanes::new(&[0], Fences::new(), 1, 2);
        lanes.take(chunk(0, 0, 1));
        assert_eq!(lanes.due(builder(&mut built)).len(), 1);
        // Full and built ahead, but not written while the first is in flight.
        assert!(lanes.take(chunk(0, 1, 2)));
        assert!(lanes.due(builder(&mut built)).is_empty());
        assert!(lanes.due(builder(&mut built)).is_empty());
        assert_eq!(built.len(), 2);
        lanes.written(0);
        let writes = lanes.due(builder(&mut built));
        assert_eq!(summary(&writes), [(0, vec![(0, Some(1), 3)])]);
        assert!(lanes.due(builder(&mut built)).is_empty());
    }

    #[test]
    fn one_writer_prebuilds_its_next_batch_once_full() {
        let mut built = Built::new();
        let mut lanes = Lanes::new(&[0], Fences::new(), 1, 3);
        lanes.take(chunk(0, 0, 1));
        assert_eq!(lanes.due(builder(&mut built)).len(), 1);
        // Not full: waits for more while the first batch is written.
        assert!(!lanes.take(chunk(0, 1, 2)));
        assert!(lanes.due(builder(&mut built)).is_empty());
        assert_eq!(built.len(), 1);
        assert!(lanes.wants_intake());
        // Full: built now, fenced from the batch in flight, and the intake stops.
        assert!(lanes.take(chunk(0, 3, 1)));
        assert!(!lanes.wants_intake());
        assert!(lanes.due(builder(&mut built)).is_empty());
        assert_eq!(
            built[1],
            (vec![(0, 1, 3), (0, 3, 4)], fences(&[(0, Some(1))]))
        );
        assert!(!lanes.wants_intake());
        lanes.written(0);
        let writes = lanes.due(builder(&mut built));
        assert_eq!(summary(&writes), [(0, vec![(0, Some(1), 4)])]);
        assert!(lanes.wants_intake());
    }

    #[test]
    fn several_writers_build_nothing_ahead_but_a_full_lane_stops_the_intake() {
        let mut built = Built::new();
        let mut lanes = Lanes::new(&[0, 1], Fences::new(), 2, 2);
        lanes.take(chunk(0, 0, 1));
        assert_eq!(lanes.due(builder(&mut built)).len(), 1);
        assert!(lanes.take(chunk(0, 1, 2)));
        assert!(lanes.due(builder(&mut built)).is_empty());
        assert_eq!(built.len(), 1);
        assert!(!lanes.wants_intake());
        lanes.written(0);
        assert_eq!(
            summary(&lanes.due(builder(&mut built))),
            [(0, vec![(0, Some(1), 3)])]
        );
        assert!(lanes.wants_intake());
    }

    #[test]
    fn a_lane_holding_a_ready_batch_stops_the_intake() {
        let mut built = Built::new();
        let mut lanes = Lanes::new(&[0], Fences::new(), 1, 1);
        assert!(lanes.take(chunk(0, 0, 1)));
        assert_eq!(lanes.due(builder(&mut built)).len(), 1);
        // Written: the intake goes on.
        assert!(lanes.wants_intake());
        lanes.take(chunk(0, 1, 1));
        lanes.due(builder(&mut built));
        // Built, waiting for the write in flight: the pending chunks are empty, yet the intake
        // stops until the lane writes it.
        assert!(lanes.lanes[0].ready.is_some() && lanes.lanes[0].pending.is_empty());
        assert!(!lanes.wants_intake());
        lanes.written(0);
        assert!(!lanes.wants_intake());
        assert_eq!(lanes.due(builder(&mut built)).len(), 1);
        assert!(lanes.wants_intake());
    }
}

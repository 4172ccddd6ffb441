//! Where each partition starts: the stored offsets checked against the log.

use std::collections::BTreeMap;

use anyhow::{anyhow, Context, Result};
use tokio_util::sync::CancellationToken;

use super::write::write_with_retry;
use super::{Config, Consumer, Fetched};
use crate::db::{Batch, OffsetAdvance, Sink};
use crate::kafka::{self, fetch::PartitionReader, Position, StartFrom};

/// Where each partition starts, and what the run tracks while it goes.
pub(super) struct Plan {
    pub(super) readers: Vec<(PartitionReader, i64)>,
    /// The fence: the stored offset each partition's next write moves from.
    pub(super) committed: BTreeMap<i32, Option<i64>>,
    pub(super) positions: BTreeMap<i32, Position>,
    /// For `--stop-at-end`: the stable end each partition had at the start.
    pub(super) ends: BTreeMap<i32, i64>,
}

impl Plan {
    pub(super) fn reached_end(&self) -> bool {
        self.positions
            .iter()
            .all(|(p, pos)| pos.next_offset() >= self.ends[p])
    }
    /// An empty chunk for each partition whose start is past its stored offset (the records
    /// between were removed by retention): writing it moves the stored offset to the start.
    pub(super) fn overtaken_by_retention(&self) -> Vec<Fetched> {
        self.positions
            .iter()
            .filter(|(p, pos)| {
                matches!(self.committed.get(p), Some(Some(stored)) if *stored < pos.next_offset())
            })
            .map(|(&partition, pos)| Fetched {
                partition,
                records: Vec::new(),
                next_offset: pos.next_offset(),
                stable_end: self.ends[&partition],
                skipped: None,
            })
            .collect()
    }
}

/// The offset range (earliest, end) of each of `readers`' partitions. The whole lookup has a
/// deadline (twice `--timeout`), and gives way at once to a rebalance or Ctrl-C (`stop`: None).
pub(super) async fn ranges_within(
    args: &Config,
    readers: &mut [PartitionReader],
    stop: &CancellationToken,
) -> Result<Option<BTreeMap<i32, (i64, i64)>>> {
    let partitions: Vec<i32> = readers.iter().map(PartitionReader::partition).collect();
    let deadline = args.kafka.timeout * 2;
    tokio::select! {
        _ = stop.cancelled() => Ok(None),
        found = tokio::time::timeout(deadline, kafka::fetch::offset_ranges(readers)) => {
            let ranges = found.map_err(|_| {
                anyhow!(
                    "the leaders of '{}' partitions {partitions:?} did not answer within {}",
                    args.topic,
                    humantime::format_duration(deadline)
                )
            })??;
            Ok(Some(ranges))
        }
    }
}

impl<S: Sink> Consumer<'_, S> {
    /// Readers, start offsets and ends for `partitions`, after checking the stored offsets
    /// against the log. `None`: `stop` fired first.
    pub(super) async fn plan(
        &mut self,
        partitions: &[i32],
        stop: &CancellationToken,
    ) -> Result<Option<Plan>> {
        let args = self.args;
        // Read again every time: the previous owner of a partition may have just written it.
        let stored = self
            .sink
            .load_offsets(&args.group, &args.topic)
            .await
            .context("reading stored offsets")?;
        let mut readers = kafka::fetch::readers(&args.kafka, &self.topic, partitions);
        let Some(ranges) = ranges_within(args, &mut readers, stop).await? else {
            return Ok(None);
        };
        let stored = self.reconcile(stored, &ranges).await?;

        let mut plan = Plan {
            readers: Vec::new(),
            committed: BTreeMap::new(),
            positions: BTreeMap::new(),
            ends: BTreeMap::new(),
        };
        for reader in readers {
            let p = reader.partition();
            let (earliest, latest) = ranges[&p];
            let start = match stored.get(&p) {
                Some(&next) if next < earliest && args.compacted => {
                    tracing::debug!(
                        "{}/{p}: the log starts at {earliest}, after the stored offset {next} \
                         (compaction or retention removed the records between); resuming there",
                        args.topic
                    );
                    earliest
                }
                Some(&next) if next < earliest => {
                    tracing::warn!(
                        "{}/{p}: stored offset {next} was removed by retention; resuming at \
                         {earliest} ({} records were never consumed)",
                        args.topic,
                        earliest - next
                    );
                    earliest
                }
                Some(&next) => next,
                None if self.added.contains(&p) => earliest,
                None => args.from.offset(earliest, latest),
            };
            plan.committed.insert(p, stored.get(&p).copied());
            plan.positions
                .insert(p, Position::new(p, (earliest, latest), Some(start)));
            plan.ends.insert(p, latest);
            tracing::debug!(
                "{}/{p}: start at {start} (earliest {earliest}, end {latest})",
                args.topic
            );
            plan.readers.push((reader, start));
        }
        Ok(Some(plan))
    }

    /// Check the stored offsets of the partitions in `ranges` against their logs; returns the
    /// offsets to go on from.
    ///
    /// Offsets stored for another topic id belong to an earlier incarnation of the topic (it was
    /// deleted and re-created, or the broker lost its data): they are moved to where `--from`
    /// says, with one warning. Offsets past the log end of the same topic stop the run, unless
    /// `--reset-offsets-ahead` says where to go. Either move is one fenced transaction.
    async fn reconcile(
        &mut self,
        mut stored: BTreeMap<i32, i64>,
        ranges: &BTreeMap<i32, (i64, i64)>,
    ) -> Result<BTreeMap<i32, i64>> {
        let args = self.args;
        let ids = self
            .sink
            .stored_topic_ids(&args.group, &args.topic)
            .await
            .context("reading stored offsets")?;
        let found = Misplaced::find(&stored, ranges, &ids, self.rules.topic_id.as_deref());
        let mut moves = found.recreated_moves(args, &ids, self.rules.topic_id.as_deref());
        moves.extend(found.ahead_moves(args)?);
        if !moves.is_empty() {
            let batch = Batch {
                group: args.group.clone(),
                topic: args.topic.clone(),
                topic_id: self.rules.topic_id.clone(),
                offsets: moves.clone(),
                ..Batch::default()
            };
            write_with_retry(&mut self.sink, &batch, args.kafka.timeout).await?;
            stored.extend(moves.iter().map(|m| (m.partition, m.to)));
        }
        Ok(stored)
    }
}

/// Stored offsets that do not fit the log they would be applied to.
#[derive(Default)]
struct Misplaced {
    /// Stored for another incarnation of the topic: (partition, stored, earliest, end).
    recreated: Vec<(i32, i64, i64, i64)>,
    /// Past the end of this log: (partition, stored, end, earliest).
    ahead: Vec<(i32, i64, i64, i64)>,
}

impl Misplaced {
    fn find(
        stored: &BTreeMap<i32, i64>,
        ranges: &BTreeMap<i32, (i64, i64)>,
        ids: &BTreeMap<i32, String>,
        topic_id: Option<&str>,
    ) -> Self {
        let mut found = Self::default();
        for (&p, &next) in stored {
            let Some(&(earliest, end)) = ranges.get(&p) else {
                continue;
            };
            let other_incarnation = matches!(
                (ids.get(&p), topic_id),
                (Some(old), Some(new)) if old != new
            );
            if other_incarnation {
                found.recreated.push((p, next, earliest, end));
            } else if let kafka::Lag::Ahead(_) = kafka::Lag::of(earliest, end, Some(next)) {
                found.ahead.push((p, next, end, earliest));
            }
        }
        found
    }

    /// Offsets of an earlier incarnation go where `--from` says, with one warning.
    fn recreated_moves(
        &self,
        args: &Config,
        ids: &BTreeMap<i32, String>,
        topic_id: Option<&str>,
    ) -> Vec<OffsetAdvance> {
        let Some(&(first, ..)) = self.recreated.first() else {
            return Vec::new();
        };
        tracing::warn!(
            "'{}' is a new topic (id {} → {}): the offsets stored for group '{}' belong to the \
             one before it; reading partitions {:?} from their {} (rows already stored are kept)",
            args.topic,
            ids.get(&first).map_or("", String::as_str),
            topic_id.unwrap_or_default(),
            args.group,
            self.recreated.iter().map(|r| r.0).collect::<Vec<_>>(),
            match args.from {
                StartFrom::Earliest => "start",
                StartFrom::Latest => "end",
            }
        );
        self.recreated
            .iter()
            .map(|&(partition, from, earliest, end)| OffsetAdvance {
                partition,
                from: Some(from),
                to: args.from.offset(earliest, end),
            })
            .collect()
    }

    /// Offsets past the log end stop the run, unless `--reset-offsets-ahead` says where to go.
    fn ahead_moves(&self, args: &Config) -> Result<Vec<OffsetAdvance>> {
        if self.ahead.is_empty() {
            return Ok(Vec::new());
        }
        let Some(reset) = args.reset_offsets_ahead else {
            return Err(ahead_error(&args.topic, &args.group, &self.ahead));
        };
        tracing::warn!(
            "{}; --reset-offsets-ahead {} moves them",
            ahead_error(&args.topic, &args.group, &self.ahead),
            reset.name()
        );
        Ok(self
            .ahead
            .iter()
            .map(|&(partition, from, end, earliest)| OffsetAdvance {
                partition,
                from: Some(from),
                to: reset.offset(earliest, end),
            })
            .collect())
    }
}

/// Stored offsets past the log end: one line that says where, why, and how to move on.
fn ahead_error(topic: &str, group: &str, ahead: &[(i32, i64, i64, i64)]) -> anyhow::Error {
    let list = |f: fn(&(i32, i64, i64, i64)) -> i64| {
        ahead
            .iter()
            .map(|a| f(a).to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    anyhow!(
        "the offsets stored for group '{group}' are past the end of '{topic}': partitions {} \
         stored at {}, log ends at {} (the broker lost data, or the topic was re-created on a \
         broker that reports no topic ids); rerun with --reset-offsets-ahead earliest to read \
         each log from its start (stored events count as duplicates) or latest to skip to its end",
        list(|a| i64::from(a.0)),
        list(|a| a.1),
        list(|a| a.2),
    )
}

//! The database's offsets mirrored to the Kafka consumer group.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::kafka;
use crate::kafka::admin::GroupCoordinator;

/// How often the group's offsets are mirrored to Kafka while running (and always at the end).
const MIRROR_EVERY: Duration = Duration::from_millis(500);

/// Mirrors the database's offsets to the Kafka consumer group, best effort: a broker that
/// refuses costs a warning, never a row.
pub(super) struct GroupMirror {
    group: String,
    /// Follows the coordinator when it moves (see [`GroupCoordinator`]).
    coordinator: GroupCoordinator,
    last_commit: Option<Instant>,
    last_sent: BTreeMap<i32, i64>,
    warned: bool,
    /// As a group member: member id and generation, which Kafka requires on the commits of a
    /// group that has members.
    pub(super) member: Option<(String, i32)>,
}

impl GroupMirror {
    pub(super) fn new(opts: &kafka::Config, group: &str) -> Self {
        Self {
            group: group.to_string(),
            coordinator: GroupCoordinator::new(opts, group),
            last_commit: None,
            last_sent: BTreeMap::new(),
            warned: false,
            member: None,
        }
    }

    /// Log when Kafka's view of the group differs from the database's (the database wins).
    pub(super) async fn compare(
        &mut self,
        topic: &str,
        partitions: &[i32],
        stored: &BTreeMap<i32, i64>,
    ) {
        let group = self.group.clone();
        let fetched = self.coordinator.fetch(topic, partitions).await;
        match fetched {
            Ok(in_kafka) if !in_kafka.is_empty() && &in_kafka != stored => tracing::info!(
                "group '{group}': Kafka has offsets {in_kafka:?}, the database {stored:?}; \
                 using the database's (it is written with the rows)"
            ),
            Ok(_) => {}
            Err(e) => {
                self.coordinator.forget();
                tracing::warn!("cannot read group '{group}' offsets from Kafka: {e:#}");
            }
        }
    }

    pub(super) async fn maybe_commit(
        &mut self,
        topic: &str,
        committed: &BTreeMap<i32, Option<i64>>,
        force: bool,
    ) {
        if !force && self.last_commit.is_some_and(|t| t.elapsed() < MIRROR_EVERY) {
            return;
        }
        let offsets: BTreeMap<i32, i64> = committed
            .iter()
            .filter_map(|(&p, &o)| o.map(|o| (p, o)))
            .collect();
        if offsets.is_empty() || offsets == self.last_sent {
            return;
        }
        self.last_commit = Some(Instant::now());
        let member = self.member.clone();
        let member = member
            .as_ref()
            .map(|(id, generation)| (id.as_str(), *generation));
        // A moved coordinator or a dropped connection is followed and the commit sent again,
        // for up to `--timeout`: also the last one, at exit.
        let result = self.coordinator.commit(topic, &offsets, member).await;
        match result {
            Ok(()) => {
                self.last_sent = offsets;
                self.warned = false;
            }
            Err(e) if force => {
                self.coordinator.forget();
                self.warned = true;
                tracing::warn!(
                    "cannot mirror the final offsets {offsets:?} of {topic} to Kafka group '{}' \
                     ({e:#}); the database keeps them, the next run mirrors them",
                    self.group
                );
            }
            Err(e) => {
                self.coordinator.forget();
                if !self.warned {
                    self.warned = true;
                    tracing::warn!(
                        "cannot mirror offsets to Kafka group '{}' ({e:#}); the database keeps \
                         them, will retry",
                        self.group
                    );
                }
            }
        }
    }
}

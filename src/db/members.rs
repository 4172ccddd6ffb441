//! A consumer group's members and the partitions each holds of a topic, as `check`, `watch` and
//! `topic describe` show them: live members from the coordinator (DescribeGroups), their
//! partitions from the coordinator when it reports them (Apache Kafka), else from the
//! `streamlab_members` rows the members recorded (tansu reports member ids only). When the
//! coordinator cannot describe the group at all, the members as the database last recorded them.

use std::collections::BTreeMap;

use anyhow::Result;
use serde::Serialize;

use super::Reader;
use crate::kafka::admin::GroupCoordinator;

/// A consumer group's members and their partitions of one topic.
#[derive(Debug, Serialize)]
pub struct GroupView {
    pub group: String,
    pub state: String,
    pub members: Vec<MemberView>,
}

#[derive(Debug, Serialize)]
pub struct MemberView {
    pub member_id: String,
    /// Host and process (streamlab members), or the client id the broker reports.
    pub client: String,
    pub generation: Option<i32>,
    /// `None`: unknown (a member that is not streamlab, on a broker that does not report
    /// assignments).
    pub partitions: Option<Vec<i32>>,
}

/// A member's `streamlab_members` row: what it last recorded holding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub generation: i32,
    pub partitions: Vec<i32>,
    /// Host and process id.
    pub client: String,
}

/// [`described_or_recorded`] for a report: a group the broker cannot describe is shown as the
/// database last recorded it, or without members, with a warning.
pub async fn group_view_or_none(
    coordinator: &mut GroupCoordinator,
    recorded_in: Option<&Reader>,
    topic: &str,
) -> Option<GroupView> {
    let (view, failed) = described_or_recorded(coordinator, recorded_in, topic).await;
    if let Some(e) = failed {
        match &view {
            Some(v) => tracing::warn!(
                "the broker could not describe the group ({e:#}): members as {}",
                v.state
            ),
            None => {
                tracing::warn!("the broker could not describe the group ({e:#}): members not shown")
            }
        }
    }
    view
}

/// The group as the coordinator describes it ([`group_view`]); when it cannot — tansu 0.6's
/// SQLite engine fails DescribeGroups for every group it stored, unable to read back its own
/// JSON — the members of the newest generation the database recorded. The error, when there
/// was one, comes back beside the view, for the caller to report or not.
pub async fn described_or_recorded(
    coordinator: &mut GroupCoordinator,
    recorded_in: Option<&Reader>,
    topic: &str,
) -> (Option<GroupView>, Option<anyhow::Error>) {
    let e = match group_view(coordinator, recorded_in, topic).await {
        Ok(view) => return (view, None),
        Err(e) => e,
    };
    let recorded = match recorded_in {
        Some(reader) => recorded_view(reader, coordinator.group(), topic).await,
        None => None,
    };
    (recorded, Some(e))
}

/// The members of the newest generation the database recorded for `group` and `topic`.
async fn recorded_view(reader: &Reader, group: &str, topic: &str) -> Option<GroupView> {
    let recorded = reader
        .recorded_members(group, topic)
        .await
        .inspect_err(|e| tracing::warn!("{e:#}"))
        .ok()?;
    let newest = recorded.values().map(|r| r.generation).max()?;
    let members = recorded
        .into_iter()
        .filter(|(_, r)| r.generation == newest)
        .map(|(member_id, r)| MemberView {
            member_id,
            client: r.client,
            generation: Some(r.generation),
            partitions: Some(r.partitions),
        })
        .collect();
    Some(GroupView {
        group: group.to_string(),
        state: format!("recorded for generation {newest}"),
        members,
    })
}

/// Live members come from the coordinator (DescribeGroups). Their partitions come from the
/// coordinator when it reports them (Apache Kafka), else from the `streamlab_members` rows the
/// members wrote (tansu reports member ids only). Rows of members the coordinator no longer
/// knows are stale and left out. `None` when the group has no members.
async fn group_view(
    coordinator: &mut GroupCoordinator,
    recorded_in: Option<&Reader>,
    topic: &str,
) -> Result<Option<GroupView>> {
    let described = coordinator.describe().await?;
    if described.members.is_empty() {
        return Ok(None);
    }
    let recorded = match recorded_in {
        // For a report: members without what the database recorded, with a warning.
        Some(reader) => reader
            .recorded_members(&described.group, topic)
            .await
            .inspect_err(|e| tracing::warn!("{e:#}"))
            .unwrap_or_default(),
        None => BTreeMap::new(),
    };
    let members = described
        .members
        .into_iter()
        .map(|m| {
            let row = recorded.get(&m.member_id);
            let from_broker = m
                .partitions
                .map(|ps| ps.get(topic).cloned().unwrap_or_default());
            MemberView {
                client: row.map(|r| r.client.clone()).unwrap_or(m.client_id),
                generation: row.map(|r| r.generation),
                partitions: from_broker.or_else(|| row.map(|r| r.partitions.clone())),
                member_id: m.member_id,
            }
        })
        .collect();
    Ok(Some(GroupView {
        group: described.group,
        state: described.state,
        members,
    }))
}

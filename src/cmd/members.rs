//! A consumer group's members and the partitions each holds, merged once from the two places
//! that know: the coordinator (DescribeGroups: who is live; their partitions where the broker
//! reports assignments, as Apache Kafka does) and the `streamlab_members` rows the members
//! recorded in the database (their host and process, and their partitions where the broker
//! reports member ids only, as tansu does). When the coordinator cannot describe the group at
//! all (tansu's SQLite engine), the members of the newest generation the database recorded.
//!
//! Used by `check`, `watch`, `topic describe`, `group describe` and `offsets reset`; the
//! database side is only read here (`db::Reader::recorded_members`).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;
use serde::Serialize;

use crate::db::members::Recorded;
use crate::db::Reader;
use crate::kafka::admin::GroupCoordinator;
use crate::kafka::group::MemberDescription;

/// Topic → member id → its `streamlab_members` row.
pub type RecordedRows = BTreeMap<String, BTreeMap<String, Recorded>>;

/// A member, merged.
#[derive(Debug, Clone, Serialize)]
pub struct Member {
    pub member_id: String,
    /// The client id the broker reports ("" for a member only the database knows).
    pub client_id: String,
    pub host: String,
    /// Host and process of a streamlab member, as it recorded itself in the database.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorded_client: Option<String>,
    /// The generation it recorded (None: not recorded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<i32>,
    /// Topic → partitions (from the broker, else from the database's record); `None`: unknown.
    pub partitions: Option<BTreeMap<String, Vec<i32>>>,
}

/// The `streamlab_members` rows of `group` for each of `topics` (each topic read once).
pub async fn recorded(
    reader: &Reader,
    group: &str,
    topics: &BTreeSet<String>,
) -> Result<RecordedRows> {
    let mut by_topic = BTreeMap::new();
    for topic in topics {
        by_topic.insert(topic.clone(), reader.recorded_members(group, topic).await?);
    }
    Ok(by_topic)
}

/// Merge the members the coordinator described (`None`: it could not describe the group) with
/// the rows the database recorded. Described members keep the broker's partitions for the topics
/// it reports and take the recorded ones for the others; rows of members the coordinator no
/// longer knows are stale and left out. Without a description, the members of each topic's
/// newest recorded generation.
pub fn merge(described: Option<Vec<MemberDescription>>, recorded: &RecordedRows) -> Vec<Member> {
    let mut members: Vec<Member> = match described {
        Some(described) => described
            .into_iter()
            .map(|m| Member {
                member_id: m.member_id,
                client_id: m.client_id,
                host: m.client_host,
                recorded_client: None,
                generation: None,
                partitions: m.partitions,
            })
            .collect(),
        None => {
            let mut newest: BTreeMap<String, Member> = BTreeMap::new();
            for rows in recorded.values() {
                let generation = rows.values().map(|r| r.generation).max();
                for member_id in rows
                    .iter()
                    .filter(|(_, r)| Some(r.generation) == generation)
                    .map(|(id, _)| id)
                {
                    newest.entry(member_id.clone()).or_insert(Member {
                        member_id: member_id.clone(),
                        client_id: String::new(),
                        host: String::new(),
                        recorded_client: None,
                        generation: None,
                        partitions: None,
                    });
                }
            }
            newest.into_values().collect()
        }
    };
    for (topic, rows) in recorded {
        for m in members.iter_mut() {
            let Some(row) = rows.get(&m.member_id) else {
                continue;
            };
            m.recorded_client = Some(row.client.clone());
            m.generation = Some(row.generation);
            if !m.partitions.as_ref().is_some_and(|p| p.contains_key(topic)) {
                m.partitions
                    .get_or_insert_with(BTreeMap::new)
                    .insert(topic.clone(), row.partitions.clone());
            }
        }
    }
    members
}

/// A consumer group's members and their partitions of one topic.
#[derive(Debug, Serialize)]
pub struct GroupView {
    pub group: String,
    pub state: String,
    pub members: Vec<MemberView>,
    /// Why these members are not the coordinator's word: it could not describe the group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
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

impl MemberView {
    fn of(m: Member, topic: &str) -> Self {
        MemberView {
            client: m.recorded_client.unwrap_or(m.client_id),
            generation: m.generation,
            partitions: m
                .partitions
                .map(|ps| ps.get(topic).cloned().unwrap_or_default()),
            member_id: m.member_id,
        }
    }
}

/// [`described_or_recorded`] for a report: a group the broker cannot describe is shown as the
/// database last recorded it, or without members, and the view's note says why (a report line,
/// not a warning: tansu's SQLite engine fails every stored group, and the report is still whole).
pub async fn group_view_or_none(
    coordinator: &mut GroupCoordinator,
    recorded_in: Option<&Reader>,
    topic: &str,
) -> Option<GroupView> {
    let group = coordinator.group().to_string();
    let (view, failed) = described_or_recorded(coordinator, recorded_in, topic).await;
    let Some(e) = failed else { return view };
    let why = format!("the broker could not describe the group ({e:#})");
    Some(match view {
        Some(view) => GroupView {
            note: Some(format!("{why}: members as the database last recorded them")),
            ..view
        },
        None => GroupView {
            group,
            state: "unknown".to_string(),
            members: Vec::new(),
            note: Some(match recorded_in {
                Some(_) => format!("{why}; the database records no member as live"),
                None => format!("{why}: members unknown"),
            }),
        },
    })
}

/// The group's members for `topic`, merged ([`merge`]); `None` when it has none. The
/// coordinator's error, when it could not describe the group, comes back beside the view, for
/// the caller to report or not. For a report: rows the database cannot give are left out, with
/// a warning.
pub async fn described_or_recorded(
    coordinator: &mut GroupCoordinator,
    recorded_in: Option<&Reader>,
    topic: &str,
) -> (Option<GroupView>, Option<anyhow::Error>) {
    let group = coordinator.group().to_string();
    let described = coordinator.describe().await;
    let recorded = match recorded_in {
        Some(reader) => recorded(reader, &group, &BTreeSet::from([topic.to_string()]))
            .await
            .inspect_err(|e| tracing::warn!("{e:#}"))
            .unwrap_or_default(),
        None => RecordedRows::new(),
    };
    let (state, members, failed) = match described {
        Ok(d) => (d.state, merge(Some(d.members), &recorded), None),
        Err(e) => {
            let members = merge(None, &recorded);
            let newest = members.iter().filter_map(|m| m.generation).max();
            let state = newest.map(|g| format!("recorded for generation {g}"));
            (state.unwrap_or_default(), members, Some(e))
        }
    };
    let view = (!members.is_empty()).then(|| GroupView {
        group,
        state,
        members: members
            .into_iter()
            .map(|m| MemberView::of(m, topic))
            .collect(),
        note: None,
    });
    (view, failed)
}

//! Kafka's classic consumer-group protocol: join a group, get partitions, keep them with
//! heartbeats, hand them back on leave.
//!
//! One member is the group's leader; it computes every member's partitions (here with the
//! range assignor, which every Kafka client also offers) and the coordinator hands them out.
//! The subscription and assignment bytes use Kafka's consumer protocol (they and the assignor are
//! in [`super::assign`]), so librdkafka and Java consumers can share a group with
//! `streamlab consume --group`.
//!
//! The coordinator only decides who owns what. Which offset a partition resumes from is still the
//! sink's business: the database is the source of truth, and its offset update is conditional on
//! the value this member last read, so a member that lost a partition cannot write over its
//! successor even if it has not noticed yet.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    DescribeGroupsRequest, GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest,
    JoinGroupResponse, LeaveGroupRequest, SyncGroupRequest, SyncGroupResponse,
};
use kafka_protocol::protocol::{Request, StrBytes};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::admin::{coordinator_error, Admin, GroupCoordinator};
use super::assign::{
    decode_assignment, decode_subscription, encode_assignment, encode_subscription, range_assign,
    Subscription,
};
use super::retry::{BrokerError, Retry};
use super::wire::WireConnection;
use super::Config;

/// The protocol type of consumer groups; other group kinds (Kafka Connect, …) use their own.
pub const PROTOCOL_TYPE: &str = "consumer";
/// The one assignor offered. Every Kafka client supports it, so mixed groups agree on it.
pub const RANGE: &str = "range";

/// Timeouts that govern membership. See `consume --help` for what each means to a user.
#[derive(Debug, Clone, Copy)]
pub struct Membership {
    /// Without a heartbeat for this long, the coordinator drops the member.
    pub session_timeout: Duration,
    /// How long members have to rejoin once a rebalance starts.
    pub rebalance_timeout: Duration,
}

impl Membership {
    /// A sixth of the session timeout: Kafka suggests at most a third, and tansu 0.6 counts
    /// only heartbeats as signs of life (not JoinGroup, which it holds 3 s for followers), so
    /// a rebalance must not eat most of the session.
    pub fn heartbeat_interval(&self) -> Duration {
        (self.session_timeout / 6).clamp(Duration::from_millis(100), Duration::from_secs(3))
    }
}

/// What this member got in one generation of the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub generation: i32,
    pub member_id: String,
    pub leader: bool,
    /// Partitions of the subscribed topic, sorted.
    pub partitions: Vec<i32>,
}

/// How one JoinGroup + SyncGroup round ended.
enum Round {
    Assigned(Assignment),
    /// Not assigned yet: try again after a short pause.
    Again,
    /// Not assigned yet, and the next request can go at once.
    AgainAtOnce,
}

/// A request's answer to go on with, or the round the coordinator asks for instead.
enum Step<T> {
    Go(T),
    Stop(Round),
}

/// How a heartbeat went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// Still a member of this generation.
    Alive,
    /// The group is rebalancing: give the partitions back and rejoin.
    Rebalance,
    /// The coordinator no longer knows this member or generation: rejoin from scratch.
    Expelled,
}

/// One member of a consumer group, subscribed to one topic, asking the cluster through `C`.
pub struct GroupMember<C = Coordinator> {
    opts: Config,
    group: String,
    topic: String,
    membership: Membership,
    /// Where requests go: the real coordinator is found again on its own whenever it moves.
    coordinator: C,
    member_id: String,
    generation: i32,
    protocol_name: String,
    /// Leave before the next join, so the coordinator has to start a new generation.
    force_new_generation: bool,
    /// The coordinator announced a rebalance: the next join must end in a new generation.
    expect_new_generation: bool,
    /// SyncGroup last gave this member no assignment bytes at all (see `join_once`).
    got_no_assignment: bool,
    /// The leader JoinGroup named when SyncGroup last refused this follower (see
    /// `take_over_a_departed_leader`).
    awaited_leader: Option<String>,
    /// Members whose subscription could not be read, already warned about (as leader).
    unreadable_members: BTreeSet<String>,
}

impl GroupMember {
    pub fn new(opts: &Config, group: &str, topic: &str, membership: Membership) -> Self {
        let coordinator = Coordinator {
            opts: opts.clone(),
            coordinator: GroupCoordinator::new(opts, group),
        };
        Self::asking(coordinator, opts, group, topic, membership)
    }
}

impl<C: GroupRequests> GroupMember<C> {
    /// A member that sends its requests to `coordinator`.
    fn asking(
        coordinator: C,
        opts: &Config,
        group: &str,
        topic: &str,
        membership: Membership,
    ) -> Self {
        Self {
            opts: opts.clone(),
            group: group.to_string(),
            topic: topic.to_string(),
            membership,
            coordinator,
            member_id: String::new(),
            generation: -1,
            protocol_name: RANGE.to_string(),
            force_new_generation: false,
            expect_new_generation: false,
            got_no_assignment: false,
            awaited_leader: None,
            unreadable_members: BTreeSet::new(),
        }
    }

    /// Make the next join end in a new generation (leave first): the leader then assigns from
    /// fresh metadata, e.g. after the topic gained partitions.
    pub fn rejoin_as_new_generation(&mut self) {
        self.force_new_generation = true;
    }

    pub fn member_id(&self) -> &str {
        &self.member_id
    }

    pub fn generation(&self) -> i32 {
        self.generation
    }

    /// Join (or rejoin) the group and wait for this member's partitions.
    ///
    /// Returns `None` when `cancel` fires first. Fails when the group cannot be joined within the
    /// rebalance timeout plus `--timeout`, or when the group is used with another protocol.
    pub async fn join(&mut self, cancel: &CancellationToken) -> Result<Option<Assignment>> {
        tokio::select! {
            _ = cancel.cancelled() => Ok(None),
            joined = self.join_until_assigned() => joined.map(Some),
        }
    }

    async fn join_until_assigned(&mut self) -> Result<Assignment> {
        if std::mem::take(&mut self.force_new_generation) {
            self.leave().await;
        }
        let deadline = Instant::now() + self.membership.rebalance_timeout + self.opts.timeout;
        // Only a rebalance the coordinator announced promises a new generation. After silence
        // (our own network trouble) Apache Kafka may rightly take a follower back into the
        // generation it never left.
        let previous_generation = if std::mem::take(&mut self.expect_new_generation) {
            self.generation
        } else {
            -1
        };
        let mut first_attempt = true;
        let mut rejoined_at_once = false;
        let mut last_error: Option<anyhow::Error> = None;
        loop {
            if Instant::now() >= deadline {
                let why = last_error.map(|e| format!(": {e:#}")).unwrap_or_default();
                bail!(
                    "could not join consumer group '{}' within {}{why}",
                    self.group,
                    humantime::format_duration(
                        self.membership.rebalance_timeout + self.opts.timeout
                    )
                );
            }
            match self.join_once(previous_generation, first_attempt).await {
                Ok(Round::Assigned(assignment)) => return Ok(assignment),
                // Once per join: a broker that keeps asking must not make this a busy loop.
                Ok(Round::AgainAtOnce) if !std::mem::replace(&mut rejoined_at_once, true) => {
                    continue
                }
                Ok(Round::AgainAtOnce) => {}
                Ok(Round::Again) => {}
                Err(e) if matches!(super::Error::of(&e), Some(Fatal(_))) => return Err(e),
                Err(e) => {
                    tracing::debug!("joining group '{}': {e:#}", self.group);
                    // The connection may be what failed; the next attempt opens a new one.
                    self.coordinator.forget();
                    last_error = Some(e);
                }
            }
            first_attempt = false;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// One JoinGroup + SyncGroup round.
    /// One JoinGroup + SyncGroup round. The coordinator may ask for another (`Round::Again…`).
    async fn join_once(&mut self, previous_generation: i32, first_attempt: bool) -> Result<Round> {
        let joined = match self.send_join().await? {
            Step::Go(joined) => joined,
            Step::Stop(round) => return Ok(round),
        };
        self.member_id = joined.member_id.to_string();
        let leader = joined.leader.as_str() == self.member_id;

        // A rebalance that does not move the generation cannot move partitions either. Apache
        // Kafka always starts a new generation; tansu 0.6 can keep the old one (and the old
        // assignments) after it drops a member that stopped heartbeating — orphaning that
        // member's partitions. Leaving and joining afresh forces the new generation.
        if first_attempt && previous_generation >= 0 && joined.generation_id == previous_generation
        {
            tracing::info!(
                "group '{}' asked for a rebalance but kept generation {previous_generation}; \
                 leaving and rejoining to force a new one",
                self.group
            );
            self.leave().await;
            return Ok(Round::Again);
        }
        self.generation = joined.generation_id;
        if let Some(name) = &joined.protocol_name {
            self.protocol_name = name.to_string();
        }

        let assignments = if leader {
            let members: Vec<(String, Subscription)> = joined
                .members
                .iter()
                .map(|m| {
                    let id = m.member_id.to_string();
                    let subscription = self.read_subscription(&id, &m.metadata);
                    (id, subscription)
                })
                .collect();
            self.assign(&members).await?
        } else {
            Vec::new()
        };

        let synced = match self
            .send_sync(assignments, leader, joined.leader.as_str())
            .await?
        {
            Step::Go(synced) => synced,
            Step::Stop(round) => return Ok(round),
        };
        self.take_assignment(&synced.assignment, leader).await
    }

    /// JoinGroup: the coordinator's answer, or the round it asks for instead.
    async fn send_join(&mut self) -> Result<Step<JoinGroupResponse>> {
        let metadata = encode_subscription(&self.topic);
        let request = JoinGroupRequest::default()
            .with_group_id(GroupId(str_bytes(&self.group)))
            .with_session_timeout_ms(millis(self.membership.session_timeout))
            .with_rebalance_timeout_ms(millis(self.membership.rebalance_timeout))
            .with_member_id(str_bytes(&self.member_id))
            .with_protocol_type(str_bytes(PROTOCOL_TYPE))
            .with_protocols(vec![JoinGroupRequestProtocol::default()
                .with_name(str_bytes(RANGE))
                .with_metadata(metadata)]);
        // The coordinator holds a JoinGroup until every member has rejoined or the largest
        // rebalance timeout among them has passed — Java consumers send 5 minutes — so the
        // answer may take that long without anything being wrong.
        let join_wait = self
            .membership
            .rebalance_timeout
            .max(JAVA_REBALANCE_TIMEOUT)
            + self.opts.timeout;
        let joined = self.coordinator.join(request, join_wait).await?;
        match ResponseError::try_from_code(joined.error_code) {
            None => {}
            Some(ResponseError::MemberIdRequired) => {
                // Kafka hands out the member id first and expects the same request again with it:
                // part of every first join, so at once (a pause here would delay every start).
                self.member_id = joined.member_id.to_string();
                return Ok(Step::Stop(Round::AgainAtOnce));
            }
            Some(ResponseError::UnknownMemberId) => {
                self.member_id.clear();
                return Ok(Step::Stop(Round::Again));
            }
            Some(ResponseError::InconsistentGroupProtocol) => {
                return Err(anyhow!(Fatal(format!(
                    "consumer group '{}' is in use by members that do not speak the consumer \
                     protocol with the range assignor (its protocol is {:?}); use another --group",
                    self.group,
                    joined
                        .protocol_name
                        .map(|p| p.to_string())
                        .unwrap_or_default()
                ))))
            }
            Some(ResponseError::GroupAuthorizationFailed) => {
                return Err(anyhow!(Fatal(format!(
                    "not authorised to join consumer group '{}'",
                    self.group
                ))))
            }
            Some(e) if e.is_retriable() || is_rejoin(e) => {
                tracing::debug!("JoinGroup '{}': {e}; retrying", self.group);
                return Ok(Step::Stop(Round::Again));
            }
            // Nothing a retry changes: a session timeout outside the broker's range, a full
            // group, a protocol error.
            Some(e) => {
                return Err(anyhow!(Fatal(format!(
                    "joining consumer group '{}': {e}",
                    self.group
                ))))
            }
        }
        Ok(Step::Go(joined))
    }

    /// SyncGroup: this member's assignment bytes, or the round the coordinator asks for instead.
    async fn send_sync(
        &mut self,
        assignments: Vec<SyncGroupRequestAssignment>,
        leader: bool,
        named_leader: &str,
    ) -> Result<Step<SyncGroupResponse>> {
        let request = SyncGroupRequest::default()
            .with_group_id(GroupId(str_bytes(&self.group)))
            .with_generation_id(self.generation)
            .with_member_id(str_bytes(&self.member_id))
            .with_protocol_type(Some(str_bytes(PROTOCOL_TYPE)))
            .with_protocol_name(Some(str_bytes(&self.protocol_name)))
            .with_assignments(assignments);
        let wait = self.membership.rebalance_timeout + self.opts.timeout;
        let synced = self.coordinator.sync(request, wait).await?;
        match ResponseError::try_from_code(synced.error_code) {
            None => {}
            Some(ResponseError::UnknownMemberId) => {
                self.member_id.clear();
                return Ok(Step::Stop(Round::Again));
            }
            Some(e) if e.is_retriable() || is_rejoin(e) => {
                // tansu answers followers with REBALANCE_IN_PROGRESS until the leader has sent
                // the assignments. Heartbeat meanwhile: tansu only counts heartbeats as signs of
                // life, and this wait may be longer than the session timeout.
                tracing::debug!("SyncGroup '{}': {e}; rejoining", self.group);
                let _ = self.heartbeat().await;
                if e == ResponseError::RebalanceInProgress && !leader {
                    self.take_over_a_departed_leader(named_leader).await;
                }
                return Ok(Step::Stop(Round::Again));
            }
            Some(e) => {
                return Err(anyhow!(Fatal(format!(
                    "syncing consumer group '{}': {e}",
                    self.group
                ))))
            }
        }
        Ok(Step::Go(synced))
    }

    /// What this member holds from a synced generation (or a new round, when it got no bytes).
    async fn take_assignment(&mut self, assignment: &Bytes, leader: bool) -> Result<Round> {
        if assignment.is_empty() && !self.got_no_assignment {
            // Java and librdkafka leaders send every member an encoded assignment, even an
            // empty one. No bytes at all usually means the coordinator formed the group without
            // a real leader's plan (tansu 0.6 accepts a follower's SyncGroup once its leader has
            // expired): start a new generation, once. Some leaders (Sarama) do omit members
            // with nothing to do, so a second empty answer in a row is taken at its word — an
            // idle member, for as long as they keep coming — rather than forcing rebalance after
            // rebalance.
            tracing::debug!(
                "group '{}' generation {} has no assignment for this member; forcing a new one",
                self.group,
                self.generation
            );
            self.got_no_assignment = true;
            self.leave().await;
            return Ok(Round::Again);
        }
        self.awaited_leader = None;
        self.got_no_assignment = assignment.is_empty();
        let partitions = decode_assignment(assignment)
            .with_context(|| format!("the assignment from group '{}'", self.group))?
            .remove(&self.topic)
            .unwrap_or_default();
        Ok(Round::Assigned(Assignment {
            generation: self.generation,
            member_id: self.member_id.clone(),
            leader,
            partitions,
        }))
    }

    /// tansu 0.6 keeps naming a leader that sent LeaveGroup while the group was forming (a new
    /// member had joined, or another had left): the group can then never form, and its followers
    /// are refused by SyncGroup for good — members started together with `--stop-at-end` leave
    /// like that. When two rounds in a row name the same leader and the coordinator no longer
    /// lists it among the members, this member leaves and joins again under that leader's id,
    /// which tansu accepts: it then leads, and the group forms. The departed member never uses
    /// its id again (a member that leaves rejoins under a new one). Apache Kafka only names a
    /// current member, so this never triggers there.
    async fn take_over_a_departed_leader(&mut self, named: &str) {
        if named.is_empty() || self.awaited_leader.as_deref() != Some(named) {
            self.awaited_leader = Some(named.to_string());
            return;
        }
        let gone = match self.coordinator.describe().await {
            Ok(g) => g.members.iter().all(|m| m.member_id != named),
            Err(e) => {
                tracing::debug!("describing group '{}': {e:#}", self.group);
                false
            }
        };
        if !gone {
            return;
        }
        tracing::info!(
            "group '{}' still names {named} its leader, which has left; rejoining under that id \
             to lead it (tansu 0.6 keeps a leader that leaves while the group forms)",
            self.group
        );
        self.awaited_leader = None;
        self.leave().await;
        self.member_id = named.to_string();
    }

    /// A member's subscription as the leader reads it. Bytes that cannot be a subscription
    /// (a hostile or broken client: an impossible count, cut short) count as subscribing to
    /// nothing: that member is given no partitions and the rest of the group goes on — failing
    /// the round instead would stop every member for as long as it stays. Warned about once per
    /// member.
    fn read_subscription(&mut self, member_id: &str, metadata: &[u8]) -> Subscription {
        match decode_subscription(metadata) {
            Ok(subscription) => subscription,
            Err(e) => {
                if self.unreadable_members.insert(member_id.to_string()) {
                    tracing::warn!(
                        "group '{}': member {member_id} sent {e:#}; it is given no partitions",
                        self.group
                    );
                } else {
                    tracing::debug!(
                        "group '{}': member {member_id} sent {e:#} again",
                        self.group
                    );
                }
                Subscription::default()
            }
        }
    }

    /// The leader's job: give every member its range of each topic it subscribes to.
    async fn assign(
        &mut self,
        members: &[(String, Subscription)],
    ) -> Result<Vec<SyncGroupRequestAssignment>> {
        // One Metadata request for every topic subscribed to, however many a member names;
        // names that cannot be topics are not asked about (a broker may refuse them).
        let names: Vec<&str> = members
            .iter()
            .flat_map(|(_, s)| s.topics.iter().map(String::as_str))
            .filter(|t| crate::kafka::names::parse_topic_name(t).is_ok())
            .collect::<BTreeSet<&str>>()
            .into_iter()
            .collect();
        let partitions = if names.is_empty() {
            BTreeMap::new()
        } else {
            // A topic that is gone is left out (its subscribers get nothing of it). Anything
            // else (a broker that did not answer) must not become an empty plan, which would
            // idle every member: fail this round and join again.
            self.coordinator.partitions_of(&names).await?
        };
        let plan = range_assign(members, &partitions);
        tracing::debug!("group '{}' leader assigns {plan:?}", self.group);
        Ok(members
            .iter()
            .map(|(id, _)| {
                let empty = BTreeMap::new();
                SyncGroupRequestAssignment::default()
                    .with_member_id(str_bytes(id))
                    .with_assignment(encode_assignment(plan.get(id).unwrap_or(&empty)))
            })
            .collect())
    }

    /// Tell the coordinator this member is alive.
    pub async fn heartbeat(&mut self) -> Result<Beat> {
        let request = HeartbeatRequest::default()
            .with_group_id(GroupId(str_bytes(&self.group)))
            .with_generation_id(self.generation)
            .with_member_id(str_bytes(&self.member_id));
        let response = self.coordinator.heartbeat(request).await?;
        match ResponseError::try_from_code(response.error_code) {
            None => Ok(Beat::Alive),
            Some(ResponseError::RebalanceInProgress) => Ok(Beat::Rebalance),
            Some(ResponseError::UnknownMemberId) => {
                self.member_id.clear();
                self.generation = -1;
                Ok(Beat::Expelled)
            }
            Some(ResponseError::IllegalGeneration | ResponseError::FencedInstanceId) => {
                self.generation = -1;
                Ok(Beat::Expelled)
            }
            Some(e) => Err(anyhow!("heartbeat to group '{}': {e}", self.group)),
        }
    }

    /// Keep this member alive while it holds a generation's partitions.
    ///
    /// Cancels `revoke` when the partitions must be given back (the group rebalances, this
    /// member was dropped, or the coordinator has been silent for a whole session timeout — by
    /// then it has given them to someone else), so the consumer stops writing them. Beats on
    /// until `released`: finishing the batch in flight may take a while, and tansu 0.6 drops a
    /// member whose heartbeats stop, even mid-rebalance.
    pub async fn heartbeat_until(
        mut self,
        revoke: CancellationToken,
        released: CancellationToken,
    ) -> Self {
        let interval = self.membership.heartbeat_interval();
        let mut last_alive = Instant::now();
        // The first beat goes at once: the join that got us here sent none.
        let mut wait = Duration::ZERO;
        loop {
            tokio::select! {
                _ = released.cancelled() => return self,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = interval;
            let beat = self.heartbeat().await;
            if revoke.is_cancelled() {
                // Only keeping the session alive until the consumer lets go.
                if matches!(beat, Ok(Beat::Expelled)) {
                    return self.wait_released(released).await;
                }
                continue;
            }
            match beat {
                Ok(Beat::Alive) => last_alive = Instant::now(),
                Ok(beat) => {
                    // tansu 0.6 drops a member whose session expired without starting a new
                    // generation: it answers one heartbeat with REBALANCE_IN_PROGRESS and the
                    // next with success, and would hand everyone their old partitions again,
                    // orphaning the dead member's. A second heartbeat tells the two apart
                    // (in a real rebalance it is refused too); then leaving and rejoining forces
                    // the new generation at once.
                    if beat == Beat::Rebalance {
                        if matches!(self.heartbeat().await, Ok(Beat::Alive)) {
                            tracing::debug!(
                                "group '{}' dropped a member but kept generation {}; forcing a new one",
                                self.group,
                                self.generation
                            );
                            self.force_new_generation = true;
                        } else {
                            self.expect_new_generation = true;
                        }
                    }
                    tracing::info!(
                        "group '{}': {} in generation {}; giving partitions back",
                        self.group,
                        match beat {
                            Beat::Rebalance => "rebalance",
                            _ => "this member was dropped",
                        },
                        self.generation
                    );
                    revoke.cancel();
                    if beat == Beat::Expelled {
                        return self.wait_released(released).await;
                    }
                }
                Err(e) if last_alive.elapsed() >= self.membership.session_timeout => {
                    tracing::warn!(
                        "group '{}': no heartbeat answered for {:?} ({e:#}); giving partitions back",
                        self.group,
                        last_alive.elapsed()
                    );
                    revoke.cancel();
                }
                Err(e) => tracing::debug!("group '{}': heartbeat failed: {e:#}", self.group),
            }
        }
    }

    /// Nothing left to keep alive: just wait for the consumer to let go.
    async fn wait_released(self, released: CancellationToken) -> Self {
        released.cancelled().await;
        self
    }

    /// Leave the group so the others take over this member's partitions at once instead of
    /// after the session timeout. Best effort: a coordinator that is gone has forgotten us anyway.
    pub async fn leave(&mut self) {
        if self.member_id.is_empty() {
            return;
        }
        match self.coordinator.leave(&self.member_id).await {
            Ok(_) => tracing::debug!("left group '{}' as {}", self.group, self.member_id),
            Err(e) => tracing::debug!("leaving group '{}': {e:#}", self.group),
        }
        self.member_id.clear();
        self.generation = -1;
    }
}

/// What a member asks of the cluster: its group's coordinator, and — as leader — the partitions
/// of its members' topics. Answers come back with their error codes, which are the member's
/// business, except those saying the coordinator moved: the real one follows it
/// ([`GroupCoordinator::call`]). A trait so that the member's state machine is tested against
/// canned answers.
pub trait GroupRequests: Send {
    /// JoinGroup, answered within `wait` (the coordinator holds it until the group forms).
    fn join(
        &mut self,
        request: JoinGroupRequest,
        wait: Duration,
    ) -> impl Future<Output = Result<JoinGroupResponse>> + Send;
    /// SyncGroup, answered within `wait`.
    fn sync(
        &mut self,
        request: SyncGroupRequest,
        wait: Duration,
    ) -> impl Future<Output = Result<SyncGroupResponse>> + Send;
    fn heartbeat(
        &mut self,
        request: HeartbeatRequest,
    ) -> impl Future<Output = Result<HeartbeatResponse>> + Send;
    /// LeaveGroup for `member_id`; an error code is an error.
    fn leave(&mut self, member_id: &str) -> impl Future<Output = Result<()>> + Send;
    fn describe(&mut self) -> impl Future<Output = Result<GroupDescription>> + Send;
    /// The partition ids of each of `topics` that exists (see [`Admin::partitions_of`]).
    fn partitions_of(
        &mut self,
        topics: &[&str],
    ) -> impl Future<Output = Result<BTreeMap<String, Vec<i32>>>> + Send;
    /// Drop the connection: the next request opens a new one.
    fn forget(&mut self);
}

/// The real cluster behind a member: its group's coordinator, followed wherever it moves (with
/// the same member id: the group lives on there), and any live broker for the leader's
/// Metadata.
pub struct Coordinator {
    opts: Config,
    coordinator: GroupCoordinator,
}

/// A group request whose answer carries one error code: how high a version we fill, and what
/// the request is called in errors.
trait Coded: Request + Clone + Send + Sync + 'static {
    const CAP: i16;
    const NAME: &'static str;
    fn code(answer: &Self::Response) -> i16;
}

impl Coded for JoinGroupRequest {
    const CAP: i16 = 9;
    const NAME: &'static str = "JoinGroup";
    fn code(answer: &JoinGroupResponse) -> i16 {
        answer.error_code
    }
}

impl Coded for SyncGroupRequest {
    const CAP: i16 = 5;
    const NAME: &'static str = "SyncGroup";
    fn code(answer: &SyncGroupResponse) -> i16 {
        answer.error_code
    }
}

impl Coded for HeartbeatRequest {
    const CAP: i16 = 4;
    const NAME: &'static str = "Heartbeat";
    fn code(answer: &HeartbeatResponse) -> i16 {
        answer.error_code
    }
}

impl Coordinator {
    /// `request` at the coordinator, answered within `wait` (else `--timeout`); a code saying
    /// the coordinator moved is followed ([`GroupCoordinator::call`]), any other comes back.
    async fn ask<R: Coded>(&mut self, request: R, wait: Option<Duration>) -> Result<R::Response>
    where
        R::Response: Send,
    {
        self.coordinator
            .call(|conn| {
                let request = request.clone();
                Box::pin(async move {
                    let answer = match wait {
                        Some(wait) => conn.call_within(request, R::CAP, wait).await?,
                        None => conn.call_capped(request, R::CAP).await?,
                    };
                    coordinator_error(R::code(&answer), || R::NAME.into())?;
                    Ok(answer)
                })
            })
            .await
    }
}

impl GroupRequests for Coordinator {
    async fn join(
        &mut self,
        request: JoinGroupRequest,
        wait: Duration,
    ) -> Result<JoinGroupResponse> {
        self.ask(request, Some(wait)).await
    }

    async fn sync(
        &mut self,
        request: SyncGroupRequest,
        wait: Duration,
    ) -> Result<SyncGroupResponse> {
        self.ask(request, Some(wait)).await
    }

    async fn heartbeat(&mut self, request: HeartbeatRequest) -> Result<HeartbeatResponse> {
        self.ask(request, None).await
    }

    async fn leave(&mut self, member_id: &str) -> Result<()> {
        let group = self.coordinator.group().to_string();
        self.coordinator
            .call(|conn| {
                let (group, member_id) = (group.clone(), member_id.to_string());
                Box::pin(async move { leave_group(conn, &group, &member_id).await })
            })
            .await
    }

    async fn describe(&mut self) -> Result<GroupDescription> {
        self.coordinator.describe().await
    }

    async fn partitions_of(&mut self, topics: &[&str]) -> Result<BTreeMap<String, Vec<i32>>> {
        Admin::connect(&self.opts)
            .await?
            .partitions_of(topics)
            .await
            .context("the group leader could not read its members' topics")
    }

    fn forget(&mut self) {
        self.coordinator.forget();
    }
}

/// LeaveGroup on `conn`: v3 replaced the single member id with a list of members.
async fn leave_group(conn: &mut WireConnection, group: &str, member_id: &str) -> Result<()> {
    let (group, member_id) = (GroupId(str_bytes(group)), str_bytes(member_id));
    let code = if conn.version_for::<LeaveGroupRequest>(5)? >= 3 {
        let request = LeaveGroupRequest::default()
            .with_group_id(group)
            .with_members(vec![MemberIdentity::default()
                .with_member_id(member_id)
                .with_reason(Some(StrBytes::from_static_str(
                    "streamlab consume stopped",
                )))]);
        conn.call_capped(request, 5).await?.error_code
    } else {
        let request = LeaveGroupRequest::default()
            .with_group_id(group)
            .with_member_id(member_id);
        conn.call_capped(request, 2).await?.error_code
    };
    coordinator_error(code, || "leaving the group".to_string())
}

/// A consumer group as its coordinator describes it.
#[derive(Debug, Clone, Serialize)]
pub struct GroupDescription {
    pub group: String,
    /// Stable, PreparingRebalance, CompletingRebalance, Empty or Dead (tansu: Stable/Empty).
    pub state: String,
    pub protocol: String,
    pub members: Vec<MemberDescription>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemberDescription {
    pub member_id: String,
    pub client_id: String,
    pub client_host: String,
    /// Topic → partitions, as the coordinator reports them. `None` when the broker does not
    /// report assignments (tansu 0.6 lists member ids only).
    pub partitions: Option<BTreeMap<String, Vec<i32>>>,
}

impl GroupCoordinator {
    /// DescribeGroups for this coordinator's group.
    pub async fn describe(&mut self) -> Result<GroupDescription> {
        let group = self.group().to_string();
        let request =
            DescribeGroupsRequest::default().with_groups(vec![GroupId(str_bytes(&group))]);
        // tansu's SQLite engine drops the connection on DescribeGroups of any group it stored:
        // a second drop in a row is taken as that broker's answer (a dead coordinator, which
        // drops it too, is followed by the first retry), so it costs one reconnection, not
        // `--timeout`.
        let dropped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let g = self
            .call(|conn| {
                let (request, group, dropped) = (request.clone(), group.clone(), dropped.clone());
                Box::pin(async move {
                    let response = match conn.call_capped(request, 5).await {
                        Err(e) if Retry::of(&e) == Retry::Refresh => {
                            if dropped.swap(true, std::sync::atomic::Ordering::Relaxed) {
                                // Not retried again: an error of no retriable type.
                                return Err(anyhow!("{e:#}"));
                            }
                            return Err(e);
                        }
                        response => response?,
                    };
                    let g = response
                        .groups
                        .into_iter()
                        .next()
                        .ok_or_else(|| anyhow!("DescribeGroups answered with no group"))?;
                    BrokerError::check(g.error_code, None, || {
                        format!("describing consumer group '{group}'")
                    })?;
                    Ok(g)
                })
            })
            .await?;
        let mut members: Vec<MemberDescription> = g
            .members
            .iter()
            .map(|m| MemberDescription {
                member_id: m.member_id.to_string(),
                client_id: m.client_id.to_string(),
                client_host: m.client_host.to_string(),
                partitions: if m.member_assignment.is_empty() {
                    None
                } else {
                    decode_assignment(&m.member_assignment).ok()
                },
            })
            .collect();
        members.sort_by(|a, b| a.member_id.cmp(&b.member_id));
        Ok(GroupDescription {
            group,
            state: g.group_state.to_string(),
            protocol: g.protocol_data.to_string(),
            members,
        })
    }
}

/// The rebalance timeout (max.poll.interval.ms) Java consumers send by default.
const JAVA_REBALANCE_TIMEOUT: Duration = Duration::from_secs(300);

/// Errors that no retry can fix: `Fatal(message)` makes a [`super::Error::Fatal`].
use super::Error::Fatal;

/// Answers that mean "the group moved on; join again".
fn is_rejoin(e: ResponseError) -> bool {
    matches!(
        e,
        ResponseError::RebalanceInProgress
            | ResponseError::IllegalGeneration
            | ResponseError::NotCoordinator
            | ResponseError::CoordinatorNotAvailable
            | ResponseError::CoordinatorLoadInProgress
    )
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

fn millis(d: Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests;

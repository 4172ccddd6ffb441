//! The member's state machine against canned coordinator answers: each test lists the
//! answers, then asserts the requests the member sent and what it made of them.

use std::collections::VecDeque;

use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;

use super::*;

/// A request as the tests compare them.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Sent {
    /// The member id, and each offered protocol with the topics it subscribes to.
    Join(String, Vec<(String, Vec<String>)>),
    /// Member id, generation, and the assignments sent (leader: member → topic → partitions).
    Sync(String, i32, BTreeMap<String, BTreeMap<String, Vec<i32>>>),
    Heartbeat(String, i32),
    Leave(String),
    Describe,
    Metadata(Vec<String>),
}

/// Canned answers, taken in order (a request with none left fails the test), and what was sent.
#[derive(Default)]
struct Canned {
    joins: VecDeque<JoinGroupResponse>,
    syncs: VecDeque<SyncGroupResponse>,
    /// Error codes (None: success).
    beats: VecDeque<Option<ResponseError>>,
    /// Members the coordinator describes.
    members: Vec<&'static str>,
    /// The topics' partitions the leader reads.
    partitions: BTreeMap<String, Vec<i32>>,
    sent: Vec<Sent>,
}

impl GroupRequests for Canned {
    async fn join(&mut self, request: JoinGroupRequest, _: Duration) -> Result<JoinGroupResponse> {
        let protocols = request.protocols.iter().map(|p| {
            let topics = decode_subscription(&p.metadata).unwrap().topics;
            (p.name.to_string(), topics)
        });
        let member_id = request.member_id.to_string();
        self.sent.push(Sent::Join(member_id, protocols.collect()));
        Ok(self.joins.pop_front().expect("an answer to JoinGroup"))
    }

    async fn sync(&mut self, request: SyncGroupRequest, _: Duration) -> Result<SyncGroupResponse> {
        let assignments = request.assignments.iter().map(|a| {
            let partitions = decode_assignment(&a.assignment).unwrap();
            (a.member_id.to_string(), partitions)
        });
        self.sent.push(Sent::Sync(
            request.member_id.to_string(),
            request.generation_id,
            assignments.collect(),
        ));
        Ok(self.syncs.pop_front().expect("an answer to SyncGroup"))
    }

    async fn heartbeat(&mut self, request: HeartbeatRequest) -> Result<HeartbeatResponse> {
        let member_id = request.member_id.to_string();
        self.sent
            .push(Sent::Heartbeat(member_id, request.generation_id));
        let code = self.beats.pop_front().expect("an answer to Heartbeat");
        Ok(HeartbeatResponse::default().with_error_code(code.map_or(0, |c| c.code())))
    }

    async fn leave(&mut self, member_id: &str) -> Result<()> {
        self.sent.push(Sent::Leave(member_id.to_string()));
        Ok(())
    }

    async fn describe(&mut self) -> Result<GroupDescription> {
        self.sent.push(Sent::Describe);
        let members = self.members.iter().map(|id| MemberDescription {
            member_id: id.to_string(),
            client_id: String::new(),
            client_host: String::new(),
            partitions: None,
        });
        Ok(GroupDescription {
            group: "g".into(),
            state: "PreparingRebalance".into(),
            protocol: RANGE.into(),
            members: members.collect(),
        })
    }

    async fn partitions_of(&mut self, topics: &[&str]) -> Result<BTreeMap<String, Vec<i32>>> {
        self.sent.push(Sent::Metadata(
            topics.iter().map(|t| t.to_string()).collect(),
        ));
        Ok(self.partitions.clone())
    }

    fn forget(&mut self) {}
}

/// A JoinGroup answer: `code` (None: success) for `member_id` in `generation` led by `leader`;
/// to the leader, `members` with the topic each subscribes to.
fn joined(
    code: Option<ResponseError>,
    member_id: &str,
    generation: i32,
    leader: &str,
    members: &[(&str, &str)],
) -> JoinGroupResponse {
    let members = members.iter().map(|(id, topic)| {
        JoinGroupResponseMember::default()
            .with_member_id(str_bytes(id))
            .with_metadata(encode_subscription(topic))
    });
    JoinGroupResponse::default()
        .with_error_code(code.map_or(0, |c| c.code()))
        .with_member_id(str_bytes(member_id))
        .with_generation_id(generation)
        .with_leader(str_bytes(leader))
        .with_protocol_name(Some(str_bytes(RANGE)))
        .with_members(members.collect())
}

/// A SyncGroup answer: `code` (None: success), and this member's partitions of `t`.
fn synced(code: Option<ResponseError>, partitions: &[i32]) -> SyncGroupResponse {
    let assignment = BTreeMap::from([("t".to_string(), partitions.to_vec())]);
    SyncGroupResponse::default()
        .with_error_code(code.map_or(0, |c| c.code()))
        .with_assignment(encode_assignment(&assignment))
}

/// A member of group `g` subscribed to `t`, answered from `canned`.
fn member(canned: Canned) -> GroupMember<Canned> {
    let membership = Membership {
        // Heartbeats every 3 s: no second beat comes while a test looks.
        session_timeout: Duration::from_secs(60),
        rebalance_timeout: Duration::from_secs(5),
    };
    GroupMember::asking(canned, &Config::default(), "g", "t", membership)
}

/// The join request's protocols: the range assignor, subscribing to `t`.
fn range() -> Vec<(String, Vec<String>)> {
    vec![(RANGE.to_string(), vec!["t".to_string()])]
}

fn join(id: &str) -> Sent {
    Sent::Join(id.to_string(), range())
}

fn follower_sync(id: &str, generation: i32) -> Sent {
    Sent::Sync(id.to_string(), generation, BTreeMap::new())
}

async fn join_group(member: &mut GroupMember<Canned>) -> Result<Assignment> {
    let joined = member.join(&CancellationToken::new()).await?;
    Ok(joined.expect("not cancelled"))
}

fn assigned(generation: i32, member_id: &str, leader: bool, partitions: &[i32]) -> Assignment {
    Assignment {
        generation,
        member_id: member_id.to_string(),
        leader,
        partitions: partitions.to_vec(),
    }
}

/// A follower `m1` assigned partition 2 in generation 1.
async fn follower() -> GroupMember<Canned> {
    let mut m = member(Canned {
        joins: [joined(None, "m1", 1, "m0", &[])].into(),
        syncs: [synced(None, &[2])].into(),
        ..Canned::default()
    });
    assert_eq!(
        join_group(&mut m).await.unwrap(),
        assigned(1, "m1", false, &[2])
    );
    m.coordinator.sent.clear();
    m
}

#[tokio::test]
async fn a_first_join_takes_the_given_id_and_the_leader_assigns_by_range() {
    let mut m = member(Canned {
        joins: [
            joined(Some(ResponseError::MemberIdRequired), "m1", -1, "", &[]),
            joined(None, "m1", 1, "m1", &[("m1", "t"), ("m2", "t")]),
        ]
        .into(),
        syncs: [synced(None, &[0, 1])].into(),
        partitions: BTreeMap::from([("t".to_string(), vec![0, 1, 2])]),
        ..Canned::default()
    });
    assert_eq!(
        join_group(&mut m).await.unwrap(),
        assigned(1, "m1", true, &[0, 1])
    );
    let plan = |partitions: &[i32]| BTreeMap::from([("t".to_string(), partitions.to_vec())]);
    let assignments = BTreeMap::from([("m1".into(), plan(&[0, 1])), ("m2".into(), plan(&[2]))]);
    assert_eq!(
        m.coordinator.sent,
        [
            join(""),
            join("m1"),
            Sent::Metadata(vec!["t".into()]),
            Sent::Sync("m1".into(), 1, assignments),
        ]
    );
    assert_eq!((m.member_id(), m.generation()), ("m1", 1));
}

#[tokio::test]
async fn a_follower_gets_its_partitions_from_sync_group() {
    let mut m = member(Canned {
        joins: [joined(None, "m2", 3, "m1", &[])].into(),
        syncs: [synced(None, &[2, 3])].into(),
        ..Canned::default()
    });
    assert_eq!(
        join_group(&mut m).await.unwrap(),
        assigned(3, "m2", false, &[2, 3])
    );
    assert_eq!(m.coordinator.sent, [join(""), follower_sync("m2", 3)]);
}

#[tokio::test]
async fn heartbeats_tell_alive_from_rebalance_from_expelled() {
    let mut m = follower().await;
    m.coordinator.beats = [
        None,
        Some(ResponseError::RebalanceInProgress),
        Some(ResponseError::IllegalGeneration),
    ]
    .into();
    assert_eq!(m.heartbeat().await.unwrap(), Beat::Alive);
    assert_eq!(m.heartbeat().await.unwrap(), Beat::Rebalance);
    assert_eq!((m.member_id(), m.generation()), ("m1", 1));
    // Another generation: the member keeps its id, not its generation.
    assert_eq!(m.heartbeat().await.unwrap(), Beat::Expelled);
    assert_eq!((m.member_id(), m.generation()), ("m1", -1));
    let beat = Sent::Heartbeat("m1".into(), 1);
    assert_eq!(m.coordinator.sent, [beat.clone(), beat.clone(), beat]);
}

/// `m` beating from `beats` until the partitions are revoked; `m` once released.
async fn beat_until_revoked(
    mut m: GroupMember<Canned>,
    beats: &[Option<ResponseError>],
) -> GroupMember<Canned> {
    m.coordinator.beats = beats.iter().copied().collect();
    let (revoke, released) = (CancellationToken::new(), CancellationToken::new());
    let beating = tokio::spawn(m.heartbeat_until(revoke.clone(), released.clone()));
    revoke.cancelled().await;
    // The next beat is 3 s away: released first.
    released.cancel();
    beating.await.unwrap()
}

#[tokio::test]
async fn a_rebalance_on_heartbeat_revokes_and_the_next_join_wants_a_new_generation() {
    let rebalance = Some(ResponseError::RebalanceInProgress);
    let mut m = beat_until_revoked(follower().await, &[rebalance, rebalance]).await;
    // The coordinator keeps generation 1 (tansu 0.6 after dropping a member): leave, rejoin.
    m.coordinator.joins = [
        joined(None, "m1", 1, "m0", &[]),
        joined(None, "m9", 2, "m0", &[]),
    ]
    .into();
    m.coordinator.syncs = [synced(None, &[3])].into();
    assert_eq!(
        join_group(&mut m).await.unwrap(),
        assigned(2, "m9", false, &[3])
    );
    let beat = Sent::Heartbeat("m1".into(), 1);
    assert_eq!(
        m.coordinator.sent,
        [
            beat.clone(),
            beat,
            join("m1"),
            Sent::Leave("m1".into()),
            join(""),
            follower_sync("m9", 2)
        ]
    );
}

#[tokio::test]
async fn a_rebalance_the_next_heartbeat_denies_forces_a_new_generation_at_once() {
    // tansu 0.6 dropping a member: one REBALANCE_IN_PROGRESS, then success.
    let beats = [Some(ResponseError::RebalanceInProgress), None];
    let mut m = beat_until_revoked(follower().await, &beats).await;
    m.coordinator.joins = [joined(None, "m9", 2, "m0", &[])].into();
    m.coordinator.syncs = [synced(None, &[3])].into();
    assert_eq!(
        join_group(&mut m).await.unwrap(),
        assigned(2, "m9", false, &[3])
    );
    let beat = Sent::Heartbeat("m1".into(), 1);
    assert_eq!(
        m.coordinator.sent,
        [
            beat.clone(),
            beat,
            Sent::Leave("m1".into()),
            join(""),
            follower_sync("m9", 2)
        ]
    );
}

#[tokio::test]
async fn an_unknown_member_rejoins_as_new() {
    let mut m = follower().await;
    m.coordinator.beats = [Some(ResponseError::UnknownMemberId)].into();
    assert_eq!(m.heartbeat().await.unwrap(), Beat::Expelled);
    assert_eq!((m.member_id(), m.generation()), ("", -1));
    m.coordinator.joins = [joined(None, "m5", 2, "m0", &[])].into();
    m.coordinator.syncs = [synced(None, &[0])].into();
    assert_eq!(
        join_group(&mut m).await.unwrap(),
        assigned(2, "m5", false, &[0])
    );
    assert_eq!(
        m.coordinator.sent,
        [
            Sent::Heartbeat("m1".into(), 1),
            join(""),
            follower_sync("m5", 2)
        ]
    );
}

#[tokio::test]
async fn after_an_illegal_generation_the_member_rejoins_under_its_id_or_anew_if_unknown() {
    let mut m = follower().await;
    m.coordinator.beats = [Some(ResponseError::IllegalGeneration)].into();
    assert_eq!(m.heartbeat().await.unwrap(), Beat::Expelled);
    m.coordinator.joins = [
        joined(Some(ResponseError::UnknownMemberId), "", -1, "", &[]),
        joined(None, "m7", 4, "m0", &[]),
    ]
    .into();
    m.coordinator.syncs = [synced(None, &[1])].into();
    assert_eq!(
        join_group(&mut m).await.unwrap(),
        assigned(4, "m7", false, &[1])
    );
    assert_eq!(
        m.coordinator.sent,
        [
            Sent::Heartbeat("m1".into(), 1),
            join("m1"),
            join(""),
            follower_sync("m7", 4)
        ]
    );
}

#[tokio::test]
async fn leaving_names_the_member_and_forgets_it() {
    let mut m = follower().await;
    m.leave().await;
    assert_eq!((m.member_id(), m.generation()), ("", -1));
    // Nothing to leave any more.
    m.leave().await;
    assert_eq!(m.coordinator.sent, [Sent::Leave("m1".into())]);
}

#[tokio::test]
async fn a_refused_join_ends_with_an_error_naming_why() {
    let inconsistent = joined(
        Some(ResponseError::InconsistentGroupProtocol),
        "",
        -1,
        "",
        &[],
    )
    .with_protocol_name(Some(str_bytes("roundrobin")));
    let cases = [
        (
            joined(
                Some(ResponseError::GroupAuthorizationFailed),
                "",
                -1,
                "",
                &[],
            ),
            "not authorised to join consumer group 'g'".to_string(),
        ),
        (
            inconsistent,
            "consumer group 'g' is in use by members that do not speak the consumer protocol \
             with the range assignor (its protocol is \"roundrobin\"); use another --group"
                .to_string(),
        ),
        (
            joined(Some(ResponseError::InvalidSessionTimeout), "", -1, "", &[]),
            format!(
                "joining consumer group 'g': {}",
                ResponseError::InvalidSessionTimeout
            ),
        ),
    ];
    for (answer, error) in cases {
        let mut m = member(Canned {
            joins: [answer].into(),
            ..Canned::default()
        });
        let err = join_group(&mut m).await.unwrap_err();
        assert_eq!(format!("{err:#}"), error);
        assert_eq!(m.coordinator.sent, [join("")]);
    }
}

#[tokio::test]
async fn a_follower_refused_twice_under_a_departed_leader_rejoins_under_its_id() {
    let rebalance = Some(ResponseError::RebalanceInProgress);
    let mut m = member(Canned {
        joins: [
            joined(None, "m1", 1, "m0", &[]),
            joined(None, "m1", 1, "m0", &[]),
            joined(None, "m0", 2, "m0", &[("m0", "t")]),
        ]
        .into(),
        syncs: [
            synced(rebalance, &[]),
            synced(rebalance, &[]),
            synced(None, &[0, 1]),
        ]
        .into(),
        beats: [None, None].into(),
        members: vec!["m1"],
        partitions: BTreeMap::from([("t".to_string(), vec![0, 1])]),
        ..Canned::default()
    });
    assert_eq!(
        join_group(&mut m).await.unwrap(),
        assigned(2, "m0", true, &[0, 1])
    );
    let all = BTreeMap::from([("t".to_string(), vec![0, 1])]);
    let beat = Sent::Heartbeat("m1".into(), 1);
    assert_eq!(
        m.coordinator.sent,
        [
            join(""),
            follower_sync("m1", 1),
            beat.clone(),
            // The same leader named twice, and no longer a member.
            join("m1"),
            follower_sync("m1", 1),
            beat,
            Sent::Describe,
            Sent::Leave("m1".into()),
            join("m0"),
            Sent::Metadata(vec!["t".into()]),
            Sent::Sync("m0".into(), 2, BTreeMap::from([("m0".into(), all)])),
        ]
    );
}

//! A three-broker Kafka cluster made of one tansu: [`Cluster`] listens as brokers 1, 2 and 3 on
//! three loopback ports and forwards to the test broker, answering the way a real cluster does
//! where one broker is not all of it:
//!
//! - Metadata lists the live brokers and spreads partition leaders over them (partition `p`'s
//!   preferred leader is broker `p % 3 + 1`), with a leader epoch that grows on every move;
//!   FindCoordinator names one broker per group.
//! - A Produce, Fetch or ListOffsets partition led elsewhere is answered NOT_LEADER_OR_FOLLOWER
//!   (the rest of the request is forwarded); a group request (JoinGroup, SyncGroup, Heartbeat,
//!   LeaveGroup, OffsetCommit, OffsetFetch, DescribeGroups) at a broker that is not the group's
//!   coordinator NOT_COORDINATOR, and COORDINATOR_LOAD_IN_PROGRESS or COORDINATOR_NOT_AVAILABLE
//!   on demand ([`Cluster::coordinator_trouble`]). ListGroups lists the groups a broker
//!   coordinates.
//! - A test moves a partition's leader or a group's coordinator, kills a broker (its port
//!   refuses, its connections drop, its partitions and groups move to live brokers) and revives
//!   it on the same port.
//!
//! Every routing decision is kept ([`Cluster::routes`]), so a test can assert that each request
//! went to the partition's leader or the group's coordinator. What the front cannot show:
//! replication (there is one copy of the log, in tansu), ISR shrinking, unclean elections.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_groups_response::DescribedGroup;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::MetadataResponseBroker;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::OffsetFetchResponseGroup;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    ApiKey, BrokerId, DescribeGroupsResponse, FetchResponse, FindCoordinatorRequest,
    FindCoordinatorResponse, HeartbeatResponse, JoinGroupResponse, LeaveGroupResponse,
    ListOffsetsResponse, MetadataResponse, OffsetCommitResponse, OffsetFetchResponse,
    ProduceResponse, RequestHeader, RequestKind, ResponseHeader, ResponseKind, SyncGroupResponse,
    TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// The brokers' node ids.
pub const NODES: [i32; 3] = [1, 2, 3];

/// One routing decision: a request naming a partition or a group, at a broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The broker the request came to.
    pub node: i32,
    pub api: ApiKey,
    /// `topic/partition` or `group:NAME`.
    pub target: String,
    /// Where it belonged: the partition's leader or the group's coordinator.
    pub owner: i32,
    /// What it was answered instead of being served, if it was not.
    pub refused: Option<ResponseError>,
    pub at: Instant,
}

impl Route {
    /// Sent to a broker that does not own the partition or group.
    pub fn misrouted(&self) -> bool {
        self.node != self.owner
    }
}

#[derive(Default)]
struct State {
    alive: [bool; 3],
    /// Where each broker listens.
    ports: [u16; 3],
    /// Leaders and coordinators set by a test or by a broker's death; the rest are preferred.
    leaders: HashMap<(String, i32), i32>,
    coordinators: HashMap<String, i32>,
    /// Leader epochs: bumped for a partition whenever its leader changes.
    epochs: HashMap<(String, i32), i32>,
    /// Bumped when a broker dies or comes back (every leader it led moves).
    changes: i32,
    /// The next N group requests at the coordinator are refused with this error.
    trouble: HashMap<String, (ResponseError, usize)>,
    /// Topic ids as Metadata answers named them (Fetch v13+ names topics by id).
    topic_ids: HashMap<uuid::Uuid, String>,
    routes: Vec<Route>,
    /// What a test did to the cluster, and when: `kill 1`, `revive 2`, `move t/0 to 3`, …
    history: Vec<(Instant, String)>,
}

impl State {
    fn live(&self, node: i32) -> bool {
        self.alive[(node - 1) as usize]
    }

    /// `preferred`, or the next live broker after it.
    fn live_from(&self, preferred: i32) -> i32 {
        (0..3)
            .map(|i| NODES[((preferred - 1 + i) % 3) as usize])
            .find(|&n| self.live(n))
            .unwrap_or(preferred)
    }

    fn leader(&self, topic: &str, partition: i32) -> i32 {
        let placed = self.leaders.get(&(topic.to_string(), partition)).copied();
        self.live_from(placed.unwrap_or(preferred_leader(partition)))
    }

    fn epoch(&self, topic: &str, partition: i32) -> i32 {
        self.epochs
            .get(&(topic.to_string(), partition))
            .copied()
            .unwrap_or(0)
            + self.changes
    }

    fn coordinator(&self, group: &str) -> i32 {
        let placed = self.coordinators.get(group).copied();
        self.live_from(placed.unwrap_or(preferred_coordinator(group)))
    }

    /// The error a group request at `node` gets, if any (and the owner, for the log).
    fn group_refusal(&mut self, node: i32, group: &str) -> (i32, Option<ResponseError>) {
        let owner = self.coordinator(group);
        if owner != node {
            return (owner, Some(ResponseError::NotCoordinator));
        }
        match self.trouble.get_mut(group) {
            Some((error, left)) if *left > 0 => {
                *left -= 1;
                (owner, Some(*error))
            }
            _ => (owner, None),
        }
    }
}

/// Partition `p`'s leader while every broker lives and no test moved it.
pub fn preferred_leader(partition: i32) -> i32 {
    NODES[partition.rem_euclid(3) as usize]
}

fn preferred_coordinator(group: &str) -> i32 {
    let hash = group
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
    NODES[(hash % 3) as usize]
}

struct Node {
    /// Cancelled when the broker is killed: its listener and every connection end.
    life: CancellationToken,
}

/// Three brokers in front of one tansu. Dropping it stops them.
pub struct Cluster {
    runtime: tokio::runtime::Runtime,
    upstream: String,
    state: Arc<Mutex<State>>,
    nodes: Mutex<Vec<Node>>,
}

impl Cluster {
    /// Brokers 1–3 on free loopback ports, forwarding to `upstream` (the test broker).
    pub fn start(upstream: &str) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listeners: Vec<TcpListener> = NODES
            .iter()
            .map(|_| runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap())
            .collect();
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        let state = Arc::new(Mutex::new(State {
            alive: [true; 3],
            ports: ports.try_into().unwrap(),
            ..State::default()
        }));
        let cluster = Self {
            runtime,
            upstream: upstream.to_string(),
            state,
            nodes: Mutex::new(Vec::new()),
        };
        for (node, listener) in NODES.into_iter().zip(listeners) {
            let life = cluster.serve(node, listener);
            cluster.nodes.lock().unwrap().push(Node { life });
        }
        cluster
    }

    /// Accept connections as broker `node` until it is killed.
    fn serve(&self, node: i32, listener: TcpListener) -> CancellationToken {
        let life = CancellationToken::new();
        let ctx = Ctx {
            node,
            upstream: self.upstream.clone(),
            state: Arc::clone(&self.state),
        };
        let token = life.clone();
        self.runtime.spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = token.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                if let Ok((client, _)) = accepted {
                    tokio::spawn(connection(ctx.clone(), client, token.clone()));
                }
            }
        });
        life
    }

    /// Every broker, as a bootstrap list: `127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`.
    pub fn bootstrap(&self) -> String {
        NODES.map(|n| self.address(n)).join(",")
    }

    /// Where broker `node` listens.
    pub fn address(&self, node: i32) -> String {
        format!("127.0.0.1:{}", self.port(node))
    }

    fn port(&self, node: i32) -> u16 {
        self.with(|s| s.ports[(node - 1) as usize])
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    pub fn leader(&self, topic: &str, partition: i32) -> i32 {
        self.with(|s| s.leader(topic, partition))
    }

    pub fn coordinator(&self, group: &str) -> i32 {
        self.with(|s| s.coordinator(group))
    }

    /// Make `node` the leader of `topic/partition` (a new leader epoch).
    pub fn move_leader(&self, topic: &str, partition: i32, node: i32) {
        self.with(|s| {
            let key = (topic.to_string(), partition);
            s.leaders.insert(key.clone(), node);
            *s.epochs.entry(key).or_default() += 1;
            s.history.push((
                Instant::now(),
                format!("move {topic}/{partition} to {node}"),
            ));
        });
    }

    /// Kafka's preferred leader election: every partition back to its preferred leader.
    pub fn elect_preferred_leaders(&self) {
        self.with(|s| {
            let moved: Vec<_> = s.leaders.drain().map(|(k, _)| k).collect();
            for key in moved {
                *s.epochs.entry(key).or_default() += 1;
            }
            s.history
                .push((Instant::now(), "elect preferred leaders".into()));
        });
    }

    /// Make `node` the coordinator of `group`.
    pub fn move_coordinator(&self, group: &str, node: i32) {
        self.with(|s| {
            s.coordinators.insert(group.to_string(), node);
            s.history
                .push((Instant::now(), format!("coordinator {group} to {node}")));
        });
    }

    /// The next `answers` group requests for `group` at its coordinator are refused with
    /// `error` (COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE, …), as a broker that
    /// just took the group over answers while it loads it.
    pub fn coordinator_trouble(&self, group: &str, error: ResponseError, answers: usize) {
        self.with(|s| s.trouble.insert(group.to_string(), (error, answers)));
    }

    /// Kill broker `node`: its port refuses, its connections drop, and its partitions and
    /// groups move to the next live broker.
    pub fn kill(&self, node: i32) {
        self.with(|s| {
            s.alive[(node - 1) as usize] = false;
            s.changes += 1;
            s.history.push((Instant::now(), format!("kill {node}")));
        });
        self.nodes.lock().unwrap()[(node - 1) as usize]
            .life
            .cancel();
    }

    /// Bring broker `node` back on its old port. Nothing moves to it by itself: move a leader
    /// or a coordinator there, or [`Cluster::elect_preferred_leaders`].
    pub fn revive(&self, node: i32) {
        let port = self.port(node);
        let listener = self
            .runtime
            .block_on(TcpListener::bind(("127.0.0.1", port)))
            .unwrap_or_else(|e| panic!("broker {node} cannot listen on {port} again: {e}"));
        self.with(|s| {
            s.alive[(node - 1) as usize] = true;
            s.changes += 1;
            s.history.push((Instant::now(), format!("revive {node}")));
        });
        let life = self.serve(node, listener);
        self.nodes.lock().unwrap()[(node - 1) as usize].life = life;
    }

    /// Every routing decision so far, in the order they were made.
    pub fn routes(&self) -> Vec<Route> {
        self.with(|s| s.routes.clone())
    }

    /// When the test last did `what` (`kill 1`, `move t/0 to 3`, …) to the cluster.
    pub fn when(&self, what: &str) -> Instant {
        self.with(|s| {
            s.history
                .iter()
                .rev()
                .find(|(_, done)| done == what)
                .map(|(at, _)| *at)
                .unwrap_or_else(|| panic!("the cluster never saw '{what}'"))
        })
    }

    /// The decisions where a request came to a broker that did not own its partition or group.
    pub fn misrouted(&self) -> Vec<Route> {
        self.routes().into_iter().filter(Route::misrouted).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in self.nodes.lock().unwrap().iter() {
            node.life.cancel();
        }
    }
}

// --- One client connection --------------------------------------------------------------------

#[derive(Clone)]
struct Ctx {
    node: i32,
    upstream: String,
    state: Arc<Mutex<State>>,
}

/// Changes the broker's answer before the client sees it.
type Change = Box<dyn FnOnce(&mut ResponseKind) + Send>;

/// The answer to one request, queued in request order: made here, or awaited from the broker
/// behind (and changed, if need be).
enum Reply {
    Ready(Bytes),
    Upstream(oneshot::Receiver<Bytes>, Option<(RequestHeader, Change)>),
}

/// Requests forwarded to the broker behind, by correlation id, waiting for its answer.
type Pending = Arc<Mutex<HashMap<i32, oneshot::Sender<Bytes>>>>;

/// What to do with one request.
struct Decision {
    /// None: no answer is owed (a Produce with acks=0).
    reply: Option<Reply>,
    /// The request to send on to the broker behind, if any.
    forward: Option<Bytes>,
}

async fn connection(ctx: Ctx, client: TcpStream, life: CancellationToken) {
    let Ok(server) = TcpStream::connect(&ctx.upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let pending: Pending = Arc::default();
    let (replies, mut ordered) = mpsc::unbounded_channel::<Reply>();

    let answers = {
        let pending = Arc::clone(&pending);
        async move {
            while let Some(frame) = read_frame(&mut server_read).await {
                let correlation = i32::from_be_bytes(frame[..4].try_into().unwrap());
                if let Some(tx) = pending.lock().unwrap().remove(&correlation) {
                    let _ = tx.send(frame);
                }
            }
        }
    };
    let writer = async move {
        while let Some(reply) = ordered.recv().await {
            let body = match reply {
                Reply::Ready(body) => body,
                Reply::Upstream(rx, change) => match (rx.await, change) {
                    (Ok(body), None) => body,
                    (Ok(body), Some((header, change))) => changed(&header, body, change),
                    (Err(_), _) => return,
                },
            };
            if write_frame(&mut client_write, &body).await.is_none() {
                return;
            }
        }
    };
    let reader = async move {
        while let Some(frame) = read_frame(&mut client_read).await {
            let Some(decision) = decide(&ctx, frame, &pending) else {
                return;
            };
            if let Some(body) = decision.forward {
                if write_frame(&mut server_write, &body).await.is_none() {
                    return;
                }
            }
            if let Some(reply) = decision.reply {
                if replies.send(reply).is_err() {
                    return;
                }
            }
        }
    };
    tokio::select! {
        _ = life.cancelled() => {}
        _ = answers => {}
        _ = writer => {}
        _ = reader => {}
    }
}

async fn read_frame(stream: &mut (impl AsyncReadExt + Unpin)) -> Option<Bytes> {
    let size = stream.read_i32().await.ok()?;
    let mut body = vec![0u8; usize::try_from(size).ok()?];
    stream.read_exact(&mut body).await.ok()?;
    Some(body.into())
}

async fn write_frame(stream: &mut (impl AsyncWriteExt + Unpin), body: &[u8]) -> Option<()> {
    stream.write_i32(body.len() as i32).await.ok()?;
    stream.write_all(body).await.ok()
}

fn api(header: &RequestHeader) -> ApiKey {
    ApiKey::try_from(header.request_api_key).expect("decoded requests have known keys")
}

/// The broker's answer to `header`'s request, changed by `change`.
fn changed(header: &RequestHeader, body: Bytes, change: Change) -> Bytes {
    let (key, version) = (api(header), header.request_api_version);
    let mut buf = body;
    let response_header = ResponseHeader::decode(&mut buf, key.response_header_version(version))
        .expect("the broker's answer has a header");
    let mut response =
        ResponseKind::decode(key, &mut buf, version).expect("the broker's answer decodes");
    change(&mut response);
    let mut out = BytesMut::new();
    response_header
        .encode(&mut out, key.response_header_version(version))
        .unwrap();
    response.encode(&mut out, version).unwrap();
    out.freeze()
}

/// An answer made here.
fn respond(header: &RequestHeader, response: &ResponseKind) -> Bytes {
    let (key, version) = (api(header), header.request_api_version);
    let mut out = BytesMut::new();
    ResponseHeader::default()
        .with_correlation_id(header.correlation_id)
        .encode(&mut out, key.response_header_version(version))
        .unwrap();
    response.encode(&mut out, version).unwrap();
    out.freeze()
}

fn encode_request(header: &RequestHeader, request: &RequestKind) -> Bytes {
    let (key, version) = (api(header), header.request_api_version);
    let mut out = BytesMut::new();
    header
        .encode(&mut out, key.request_header_version(version))
        .unwrap();
    request.encode(&mut out, version).unwrap();
    out.freeze()
}

/// Send `body` on and queue its answer, changed by `change`.
fn forward(
    pending: &Pending,
    header: RequestHeader,
    body: Bytes,
    change: Option<Change>,
) -> Decision {
    let (tx, rx) = oneshot::channel();
    pending.lock().unwrap().insert(header.correlation_id, tx);
    Decision {
        reply: Some(Reply::Upstream(rx, change.map(|c| (header, c)))),
        forward: Some(body),
    }
}

fn answer(header: &RequestHeader, response: ResponseKind) -> Decision {
    Decision {
        reply: Some(Reply::Ready(respond(header, &response))),
        forward: None,
    }
}

/// One request's fate. None: it cannot be read, and the connection ends (as Kafka ends it).
fn decide(ctx: &Ctx, frame: Bytes, pending: &Pending) -> Option<Decision> {
    let mut buf = frame.clone();
    let key = ApiKey::try_from(i16::from_be_bytes([*frame.first()?, *frame.get(1)?])).ok()?;
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let header = RequestHeader::decode(&mut buf, key.request_header_version(version)).ok()?;
    let Ok(request) = RequestKind::decode(key, &mut buf, version) else {
        // A version kafka-protocol cannot read: not ours to judge.
        return Some(forward(pending, header, frame, None));
    };
    let (node, shared) = (ctx.node, Arc::clone(&ctx.state));
    let mut state = ctx.state.lock().unwrap();
    Some(match request {
        RequestKind::Metadata(_) => forward(
            pending,
            header,
            frame,
            Some(Box::new(move |r| {
                if let ResponseKind::Metadata(m) = r {
                    shared.lock().unwrap().describe_cluster(m);
                }
            })),
        ),
        RequestKind::FindCoordinator(r) => {
            let response = state.find_coordinator(&r, version);
            answer(&header, ResponseKind::FindCoordinator(response))
        }
        RequestKind::ListGroups(_) => forward(
            pending,
            header,
            frame,
            Some(Box::new(move |r| {
                if let ResponseKind::ListGroups(l) = r {
                    let s = shared.lock().unwrap();
                    l.groups
                        .retain(|g| s.coordinator(g.group_id.as_str()) == node);
                }
            })),
        ),
        RequestKind::Produce(ref r) if r.acks == 0 => Decision {
            reply: None,
            forward: Some(frame),
        },
        request @ (RequestKind::Produce(_)
        | RequestKind::Fetch(_)
        | RequestKind::ListOffsets(_)) => {
            state.route_to_leaders(node, pending, header, frame, request)
        }
        request => match groups_of(&request) {
            None => forward(pending, header, frame, None),
            Some(groups) => match state.route_to_coordinator(node, key, &groups) {
                None => forward(pending, header, frame, None),
                Some(error) => answer(&header, group_error(&request, version, error)),
            },
        },
    })
}

// --- Partitions and their leaders ---------------------------------------------------------------

/// A partition a request names.
#[derive(Clone)]
struct Tp {
    topic: String,
    id: uuid::Uuid,
    partition: i32,
}

impl State {
    /// Serve the partitions led here; answer NOT_LEADER_OR_FOLLOWER for the others.
    fn route_to_leaders(
        &mut self,
        node: i32,
        pending: &Pending,
        header: RequestHeader,
        frame: Bytes,
        mut request: RequestKind,
    ) -> Decision {
        let key = api(&header);
        let named = partitions_named(&request, &self.topic_ids);
        let mut refused = Vec::new();
        for tp in &named {
            let owner = self.leader(&tp.topic, tp.partition);
            let error = (owner != node).then_some(ResponseError::NotLeaderOrFollower);
            self.routes.push(Route {
                node,
                api: key,
                target: format!("{}/{}", tp.topic, tp.partition),
                owner,
                refused: error,
                at: Instant::now(),
            });
            if error.is_some() {
                refused.push(tp.clone());
            }
        }
        if refused.is_empty() {
            return forward(pending, header, frame, None);
        }
        if refused.len() == named.len() {
            let mut response = empty_response(key);
            add_refusals(&mut response, &refused);
            return answer(&header, response);
        }
        let ids = self.topic_ids.clone();
        retain_partitions(
            &mut request,
            &|tp| !refused.iter().any(|r| same(r, tp)),
            &ids,
        );
        let body = encode_request(&header, &request);
        forward(
            pending,
            header,
            body,
            Some(Box::new(move |r| add_refusals(r, &refused))),
        )
    }

    /// Every live broker, and the leaders as this cluster places them.
    fn describe_cluster(&mut self, m: &mut MetadataResponse) {
        m.brokers = NODES
            .iter()
            .filter(|&&n| self.live(n))
            .map(|&n| {
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(n))
                    .with_host(StrBytes::from_static_str("127.0.0.1"))
                    .with_port(i32::from(self.ports[(n - 1) as usize]))
            })
            .collect();
        m.controller_id = BrokerId(self.live_from(1));
        for topic in &mut m.topics {
            let Some(name) = topic.name.as_ref().map(|n| n.as_str().to_string()) else {
                continue;
            };
            if !topic.topic_id.is_nil() {
                self.topic_ids.insert(topic.topic_id, name.clone());
            }
            for p in &mut topic.partitions {
                let leader = self.leader(&name, p.partition_index);
                p.leader_id = BrokerId(leader);
                p.leader_epoch = self.epoch(&name, p.partition_index);
                let mut replicas = vec![leader];
                replicas.extend(NODES.iter().filter(|&&n| n != leader));
                p.isr_nodes = replicas
                    .iter()
                    .filter(|&&n| self.live(n))
                    .map(|&n| BrokerId(n))
                    .collect();
                p.offline_replicas = replicas
                    .iter()
                    .filter(|&&n| !self.live(n))
                    .map(|&n| BrokerId(n))
                    .collect();
                p.replica_nodes = replicas.into_iter().map(BrokerId).collect();
            }
        }
    }
}

fn same(a: &Tp, b: &Tp) -> bool {
    a.partition == b.partition && (a.topic == b.topic || (!a.id.is_nil() && a.id == b.id))
}

/// A topic named in a request: by name, or by id (Fetch v13+) as Metadata answers named it.
fn topic_name(name: &str, id: uuid::Uuid, ids: &HashMap<uuid::Uuid, String>) -> String {
    if name.is_empty() {
        ids.get(&id).cloned().unwrap_or_default()
    } else {
        name.to_string()
    }
}

fn partitions_named(request: &RequestKind, ids: &HashMap<uuid::Uuid, String>) -> Vec<Tp> {
    let tp = |topic: &str, id, partition| Tp {
        topic: topic_name(topic, id, ids),
        id,
        partition,
    };
    match request {
        RequestKind::Produce(r) => r
            .topic_data
            .iter()
            .flat_map(|t| {
                t.partition_data
                    .iter()
                    .map(|p| tp(&t.name, t.topic_id, p.index))
            })
            .collect(),
        RequestKind::Fetch(r) => r
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|p| tp(&t.topic, t.topic_id, p.partition))
            })
            .collect(),
        RequestKind::ListOffsets(r) => r
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|p| tp(&t.name, uuid::Uuid::nil(), p.partition_index))
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Keep only the partitions `keep` accepts (and the topics left with any).
fn retain_partitions(
    request: &mut RequestKind,
    keep: &dyn Fn(&Tp) -> bool,
    ids: &HashMap<uuid::Uuid, String>,
) {
    let tp = |topic: &str, id, partition| Tp {
        topic: topic_name(topic, id, ids),
        id,
        partition,
    };
    match request {
        RequestKind::Produce(r) => {
            for t in &mut r.topic_data {
                let (name, id) = (t.name.to_string(), t.topic_id);
                t.partition_data.retain(|p| keep(&tp(&name, id, p.index)));
            }
            r.topic_data.retain(|t| !t.partition_data.is_empty());
        }
        RequestKind::Fetch(r) => {
            for t in &mut r.topics {
                let (name, id) = (t.topic.to_string(), t.topic_id);
                t.partitions.retain(|p| keep(&tp(&name, id, p.partition)));
            }
            r.topics.retain(|t| !t.partitions.is_empty());
        }
        RequestKind::ListOffsets(r) => {
            for t in &mut r.topics {
                let name = t.name.to_string();
                t.partitions
                    .retain(|p| keep(&tp(&name, uuid::Uuid::nil(), p.partition_index)));
            }
            r.topics.retain(|t| !t.partitions.is_empty());
        }
        _ => {}
    }
}

fn empty_response(key: ApiKey) -> ResponseKind {
    match key {
        ApiKey::Produce => ResponseKind::Produce(ProduceResponse::default()),
        ApiKey::Fetch => ResponseKind::Fetch(FetchResponse::default()),
        _ => ResponseKind::ListOffsets(ListOffsetsResponse::default()),
    }
}

/// Answer each of `refused` NOT_LEADER_OR_FOLLOWER, as Kafka answers a partition it does not
/// lead (the new leader left unnamed: the client asks Metadata).
fn add_refusals(response: &mut ResponseKind, refused: &[Tp]) {
    const NOT_LEADER: i16 = ResponseError::NotLeaderOrFollower.code();
    for tp in refused {
        let name = TopicName(StrBytes::from_string(tp.topic.clone()));
        match response {
            ResponseKind::Produce(r) => {
                let partition = PartitionProduceResponse::default()
                    .with_index(tp.partition)
                    .with_error_code(NOT_LEADER)
                    .with_base_offset(-1)
                    .with_log_append_time_ms(-1)
                    .with_log_start_offset(-1);
                match r
                    .responses
                    .iter_mut()
                    .find(|t| t.name == name && t.topic_id == tp.id)
                {
                    Some(t) => t.partition_responses.push(partition),
                    None => r.responses.push(
                        TopicProduceResponse::default()
                            .with_name(name)
                            .with_topic_id(tp.id)
                            .with_partition_responses(vec![partition]),
                    ),
                }
            }
            ResponseKind::Fetch(r) => {
                let partition = PartitionData::default()
                    .with_partition_index(tp.partition)
                    .with_error_code(NOT_LEADER)
                    .with_high_watermark(-1)
                    .with_records(None);
                match r
                    .responses
                    .iter_mut()
                    .find(|t| t.topic == name && t.topic_id == tp.id)
                {
                    Some(t) => t.partitions.push(partition),
                    None => r.responses.push(
                        FetchableTopicResponse::default()
                            .with_topic(name)
                            .with_topic_id(tp.id)
                            .with_partitions(vec![partition]),
                    ),
                }
            }
            ResponseKind::ListOffsets(r) => {
                let partition = ListOffsetsPartitionResponse::default()
                    .with_partition_index(tp.partition)
                    .with_error_code(NOT_LEADER)
                    .with_timestamp(-1)
                    .with_offset(-1)
                    .with_leader_epoch(-1);
                match r.topics.iter_mut().find(|t| t.name == name) {
                    Some(t) => t.partitions.push(partition),
                    None => r.topics.push(
                        ListOffsetsTopicResponse::default()
                            .with_name(name)
                            .with_partitions(vec![partition]),
                    ),
                }
            }
            _ => {}
        }
    }
}

// --- Groups and their coordinators --------------------------------------------------------------

impl State {
    /// FindCoordinator, answered here: the group's coordinator (transactions likewise).
    fn find_coordinator(
        &mut self,
        r: &FindCoordinatorRequest,
        version: i16,
    ) -> FindCoordinatorResponse {
        let place = |s: &mut Self, key: &str| -> (i16, i32) {
            let node = s.coordinator(key);
            let unavailable = matches!(
                s.trouble.get(key),
                Some((ResponseError::CoordinatorNotAvailable, left)) if *left > 0
            );
            if unavailable {
                if let Some((_, left)) = s.trouble.get_mut(key) {
                    *left -= 1;
                }
                (ResponseError::CoordinatorNotAvailable.code(), -1)
            } else {
                (0, node)
            }
        };
        let host = StrBytes::from_static_str("127.0.0.1");
        if version >= 4 {
            let coordinators = r
                .coordinator_keys
                .iter()
                .map(|key| {
                    let (error, node) = place(self, key.as_str());
                    Coordinator::default()
                        .with_key(key.clone())
                        .with_error_code(error)
                        .with_node_id(BrokerId(node))
                        .with_host(if node > 0 {
                            host.clone()
                        } else {
                            StrBytes::default()
                        })
                        .with_port(self.port_of(node))
                })
                .collect();
            FindCoordinatorResponse::default().with_coordinators(coordinators)
        } else {
            let (error, node) = place(self, r.key.as_str());
            FindCoordinatorResponse::default()
                .with_error_code(error)
                .with_node_id(BrokerId(node))
                .with_host(if node > 0 { host } else { StrBytes::default() })
                .with_port(self.port_of(node))
        }
    }

    fn port_of(&self, node: i32) -> i32 {
        if node > 0 {
            i32::from(self.ports[(node - 1) as usize])
        } else {
            -1
        }
    }

    /// The error a group request for `groups` at `node` is answered with, if it is not served;
    /// every decision logged.
    fn route_to_coordinator(
        &mut self,
        node: i32,
        api: ApiKey,
        groups: &[String],
    ) -> Option<ResponseError> {
        let mut first = None;
        for group in groups {
            let (owner, refused) = self.group_refusal(node, group);
            self.routes.push(Route {
                node,
                api,
                target: format!("group:{group}"),
                owner,
                refused,
                at: Instant::now(),
            });
            first = first.or(refused);
        }
        first
    }
}

/// The groups a group request names; None for requests that name none.
fn groups_of(request: &RequestKind) -> Option<Vec<String>> {
    let one = |g: &kafka_protocol::messages::GroupId| Some(vec![g.to_string()]);
    match request {
        RequestKind::JoinGroup(r) => one(&r.group_id),
        RequestKind::SyncGroup(r) => one(&r.group_id),
        RequestKind::Heartbeat(r) => one(&r.group_id),
        RequestKind::LeaveGroup(r) => one(&r.group_id),
        RequestKind::OffsetCommit(r) => one(&r.group_id),
        RequestKind::OffsetFetch(r) if r.groups.is_empty() => one(&r.group_id),
        RequestKind::OffsetFetch(r) => {
            Some(r.groups.iter().map(|g| g.group_id.to_string()).collect())
        }
        RequestKind::DescribeGroups(r) => Some(r.groups.iter().map(|g| g.to_string()).collect()),
        _ => None,
    }
}

/// `request` refused with `error`, as Kafka's coordinator refuses it.
fn group_error(request: &RequestKind, version: i16, error: ResponseError) -> ResponseKind {
    let code = error.code();
    match request {
        RequestKind::JoinGroup(r) => ResponseKind::JoinGroup(
            JoinGroupResponse::default()
                .with_error_code(code)
                .with_generation_id(-1)
                .with_member_id(r.member_id.clone()),
        ),
        RequestKind::SyncGroup(_) => {
            ResponseKind::SyncGroup(SyncGroupResponse::default().with_error_code(code))
        }
        RequestKind::Heartbeat(_) => {
            ResponseKind::Heartbeat(HeartbeatResponse::default().with_error_code(code))
        }
        RequestKind::LeaveGroup(_) => {
            ResponseKind::LeaveGroup(LeaveGroupResponse::default().with_error_code(code))
        }
        RequestKind::OffsetCommit(r) => ResponseKind::OffsetCommit(
            OffsetCommitResponse::default().with_topics(
                r.topics
                    .iter()
                    .map(|t| {
                        OffsetCommitResponseTopic::default()
                            .with_name(t.name.clone())
                            .with_topic_id(t.topic_id)
                            .with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|p| {
                                        OffsetCommitResponsePartition::default()
                                            .with_partition_index(p.partition_index)
                                            .with_error_code(code)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            ),
        ),
        RequestKind::OffsetFetch(r) if version >= 8 => ResponseKind::OffsetFetch(
            OffsetFetchResponse::default().with_groups(
                r.groups
                    .iter()
                    .map(|g| {
                        OffsetFetchResponseGroup::default()
                            .with_group_id(g.group_id.clone())
                            .with_error_code(code)
                    })
                    .collect(),
            ),
        ),
        RequestKind::OffsetFetch(_) => {
            ResponseKind::OffsetFetch(OffsetFetchResponse::default().with_error_code(code))
        }
        RequestKind::DescribeGroups(r) => ResponseKind::DescribeGroups(
            DescribeGroupsResponse::default().with_groups(
                r.groups
                    .iter()
                    .map(|g| {
                        DescribedGroup::default()
                            .with_group_id(g.clone())
                            .with_error_code(code)
                    })
                    .collect(),
            ),
        ),
        _ => unreachable!("groups_of names only group requests"),
    }
}

//! Admin and consumer-group requests that rskafka does not offer, sent over [`WireConnection`].

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context, Result};
use futures::future::BoxFuture;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::{
    CreateTopicsRequest, DeleteTopicsRequest, DescribeConfigsRequest, GroupId,
    IncrementalAlterConfigsRequest, ListGroupsRequest, MetadataRequest, OffsetCommitRequest,
    OffsetFetchRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use serde::Serialize;

use super::retry::{BrokerError, Retry, Retrying};
use super::wire::WireConnection;
use super::{Config, Error};

const RESOURCE_TOPIC: i8 = 2;
const CONFIG_OP_SET: i8 = 0;
const CONFIG_OP_DELETE: i8 = 1;
/// DescribeConfigs `config_source` of a value set on the topic itself (DYNAMIC_TOPIC_CONFIG);
/// every other source is some kind of default.
const SOURCE_TOPIC: i8 = 1;

pub struct Admin {
    conn: WireConnection,
    opts: Config,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Created {
    Created,
    AlreadyExists,
}

/// What DeleteTopics did.
#[derive(Debug, PartialEq, Eq)]
pub enum Deleted {
    Deleted,
    /// There was no such topic.
    Unknown,
}

/// One change of a topic config, as IncrementalAlterConfigs applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigChange {
    /// Set `key` to `value` on the topic.
    Set(String, String),
    /// Remove the topic's own value of `key`: the broker's default applies again.
    Delete(String),
}

impl ConfigChange {
    pub fn key(&self) -> &str {
        match self {
            ConfigChange::Set(key, _) | ConfigChange::Delete(key) => key,
        }
    }
}

impl std::fmt::Display for ConfigChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigChange::Set(key, value) => write!(f, "set {key}={value}"),
            ConfigChange::Delete(key) => write!(f, "delete {key}"),
        }
    }
}

/// A consumer group as ListGroups names it.
#[derive(Debug, Clone, Serialize)]
pub struct ListedGroup {
    pub group: String,
    /// `consumer` for Kafka consumers; other clients use groups for other protocols.
    pub protocol_type: String,
    /// As the broker lists it (ListGroups v4+); empty when it does not say.
    pub state: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConfigEntry {
    pub name: String,
    pub value: Option<String>,
    /// The value is the broker's (or the built-in) default rather than set on the topic.
    pub is_default: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct PartitionMetadata {
    pub partition: i32,
    pub leader: i32,
    pub replicas: Vec<i32>,
    /// Where the leader listens (its advertised `host:port`), when the broker named it.
    #[serde(skip)]
    pub leader_addr: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TopicMetadata {
    pub name: String,
    /// Kafka's topic id (Metadata v10+): a re-created topic gets a new one. `None` from brokers
    /// that do not report ids.
    pub topic_id: Option<uuid::Uuid>,
    pub internal: bool,
    pub partitions: Vec<PartitionMetadata>,
}

impl TopicMetadata {
    /// The partition ids, sorted.
    pub fn partition_ids(&self) -> Vec<i32> {
        self.partitions.iter().map(|p| p.partition).collect()
    }

    /// `asked` sorted, each once, if the topic has every one of them; else an error naming
    /// those it lacks and those it has.
    pub fn only(&self, asked: &[i32]) -> Result<Vec<i32>> {
        let known = self.partition_ids();
        let mut only = asked.to_vec();
        only.sort_unstable();
        only.dedup();
        let missing: Vec<String> = only
            .iter()
            .filter(|p| !known.contains(p))
            .map(i32::to_string)
            .collect();
        if !missing.is_empty() {
            bail!(
                "'{}' has no partition{} {} (its partitions are {})",
                self.name,
                if missing.len() > 1 { "s" } else { "" },
                missing.join(", "),
                describe_ids(&known)
            );
        }
        Ok(only)
    }
}

/// `0 to 5`, or a list when the ids have gaps.
fn describe_ids(ids: &[i32]) -> String {
    match (ids.first(), ids.last()) {
        (Some(&first), Some(&last))
            if (last - first + 1) as usize == ids.len() && first != last =>
        {
            format!("{first} to {last}")
        }
        _ => ids
            .iter()
            .map(i32::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// Metadata of `topics` (None: every topic), never creating one by asking.
fn metadata_request(topics: Option<&[&str]>) -> MetadataRequest {
    MetadataRequest::default()
        .with_allow_auto_topic_creation(false)
        .with_topics(topics.map(|names| {
            names
                .iter()
                .map(|n| MetadataRequestTopic::default().with_name(Some(TopicName(str_bytes(n)))))
                .collect()
        }))
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// `Err` ([`BrokerError`], typed so callers can tell what it calls for) when `code` is an error.
fn check(code: i16, message: Option<&StrBytes>, what: impl FnOnce() -> String) -> Result<()> {
    BrokerError::check(code, message.map(StrBytes::as_str), what)?;
    Ok(())
}

/// A topic's answer (error code and message): `done` on success, `expected.1` when the broker
/// answers `expected.0`, else the error with the broker's message.
fn outcome<T>(
    (code, message): (i16, Option<&StrBytes>),
    done: T,
    expected: (ResponseError, T),
    what: impl FnOnce() -> String,
) -> Result<T> {
    match ResponseError::try_from_code(code) {
        None => Ok(done),
        Some(e) if e == expected.0 => Ok(expected.1),
        Some(_) => {
            check(code, message, what)?;
            unreachable!("check returns Err for every error code")
        }
    }
}

impl Admin {
    /// Connect to the first broker that answers: the one that answered last, then the bootstrap
    /// brokers in order, then those metadata named. A refused connection (a dead broker) costs
    /// nothing; the next address is tried at once.
    pub async fn connect(opts: &Config) -> Result<Self> {
        let addresses = opts.cluster.addresses(&opts.brokers);
        if addresses.is_empty() {
            bail!("no broker address to connect to");
        }
        let mut last_error = None;
        for addr in &addresses {
            match WireConnection::connect(addr, opts).await {
                Ok(conn) => {
                    opts.cluster.answered(addr);
                    return Ok(Self {
                        conn,
                        opts: opts.clone(),
                    });
                }
                // A wrong password or certificate is the same at every broker.
                Err(e) if Error::is_refused(&e) => return Err(e),
                Err(e) => {
                    tracing::debug!("{e:#}");
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow!("no broker")))
    }

    pub async fn create_topic(
        &mut self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: &[(String, String)],
    ) -> Result<Created> {
        let topic = CreatableTopic::default()
            .with_name(TopicName(str_bytes(name)))
            .with_num_partitions(partitions)
            .with_replication_factor(replication_factor)
            .with_configs(
                configs
                    .iter()
                    .map(|(k, v)| {
                        CreatableTopicConfig::default()
                            .with_name(str_bytes(k))
                            .with_value(Some(str_bytes(v)))
                    })
                    .collect(),
            );
        let request = CreateTopicsRequest::default()
            .with_topics(vec![topic])
            .with_timeout_ms(self.timeout_ms());
        let response = self.conn.call(request).await?;
        let result = response
            .topics
            .first()
            .ok_or_else(|| anyhow!("CreateTopics answered with no topic"))?;
        outcome(
            (result.error_code, result.error_message.as_ref()),
            Created::Created,
            (ResponseError::TopicAlreadyExists, Created::AlreadyExists),
            || format!("cannot create topic '{name}'"),
        )
    }

    /// Topics with their partitions and leaders; `None` lists every topic.
    pub async fn metadata(&mut self, topics: Option<&[&str]>) -> Result<Vec<TopicMetadata>> {
        self.described(topics, false).await
    }

    /// [`Admin::metadata`]; with `skip_missing`, names that are not topics (unknown, invalid,
    /// not visible to us) are left out instead of failing with [`Error::UnknownTopic`].
    async fn described(
        &mut self,
        topics: Option<&[&str]>,
        skip_missing: bool,
    ) -> Result<Vec<TopicMetadata>> {
        let response = self.conn.call(metadata_request(topics)).await?;
        let brokers: BTreeMap<i32, String> = response
            .brokers
            .iter()
            .map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port)))
            .collect();
        self.opts.cluster.learn(brokers.values().cloned());
        let mut out = Vec::new();
        for topic in response.topics {
            let name = topic.name.map(|n| n.0.to_string()).unwrap_or_default();
            match ResponseError::try_from_code(topic.error_code) {
                Some(
                    ResponseError::UnknownTopicOrPartition
                    | ResponseError::InvalidTopicException
                    | ResponseError::TopicAuthorizationFailed,
                ) if skip_missing => continue,
                Some(ResponseError::UnknownTopicOrPartition) => bail!(Error::UnknownTopic(name)),
                _ => check(topic.error_code, None, || {
                    format!("metadata for topic '{name}'")
                })?,
            }
            let mut partitions: Vec<PartitionMetadata> = topic
                .partitions
                .iter()
                .map(|p| PartitionMetadata {
                    partition: p.partition_index,
                    leader: p.leader_id.0,
                    replicas: p.replica_nodes.iter().map(|b| b.0).collect(),
                    leader_addr: brokers.get(&p.leader_id.0).cloned(),
                })
                .collect();
            partitions.sort_by_key(|p| p.partition);
            out.push(TopicMetadata {
                name,
                topic_id: Some(topic.topic_id).filter(|id| !id.is_nil()),
                internal: topic.is_internal,
                partitions,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// One topic's metadata, or [`Error::UnknownTopic`].
    pub async fn topic(&mut self, name: &str) -> Result<TopicMetadata> {
        self.metadata(Some(&[name]))
            .await?
            .into_iter()
            .find(|t| t.name == name && !t.partitions.is_empty())
            .ok_or_else(|| Error::UnknownTopic(name.to_string()).into())
    }

    /// The partition ids of each of `names` that is a topic, in one request. Names that are not
    /// (unknown, invalid, not visible to us) are left out; any other error fails.
    pub async fn partitions_of(&mut self, names: &[&str]) -> Result<BTreeMap<String, Vec<i32>>> {
        let topics = self.described(Some(names), true).await?;
        Ok(topics
            .into_iter()
            .map(|t| {
                let partitions = t.partition_ids();
                (t.name, partitions)
            })
            .collect())
    }

    /// The topic's `cleanup.policy`, as the broker reports it (None: not reported).
    pub async fn cleanup_policy(&mut self, topic: &str) -> Result<Option<String>> {
        let configs = self.describe_topic_configs(topic).await?;
        Ok(configs
            .into_iter()
            .find(|c| c.name == "cleanup.policy")
            .and_then(|c| c.value))
    }

    /// A topic's configuration (DescribeConfigs).
    ///
    /// All configs are asked for (a null key list): tansu 0.6 cannot decode a request that names
    /// keys. Apache Kafka lists every config with its source; tansu lists only the configs set on
    /// the topic, all with source DEFAULT_CONFIG. A broker that omits `segment.bytes` (which Kafka
    /// always reports) is taken to list overrides only, so what it lists was set on the topic.
    pub async fn describe_topic_configs(&mut self, topic: &str) -> Result<Vec<ConfigEntry>> {
        let resource = DescribeConfigsResource::default()
            .with_resource_type(RESOURCE_TOPIC)
            .with_resource_name(str_bytes(topic))
            .with_configuration_keys(None);
        let request = DescribeConfigsRequest::default().with_resources(vec![resource]);
        let response = self.conn.call(request).await?;
        let result = response
            .results
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("DescribeConfigs answered with no resource"))?;
        if ResponseError::try_from_code(result.error_code)
            == Some(ResponseError::UnknownTopicOrPartition)
        {
            bail!(Error::UnknownTopic(topic.to_string()));
        }
        check(result.error_code, result.error_message.as_ref(), || {
            format!("cannot describe the configs of topic '{topic}'")
        })?;
        let lists_defaults = result
            .configs
            .iter()
            .any(|c| c.name.as_str() == "segment.bytes");
        Ok(result
            .configs
            .into_iter()
            .map(|c| ConfigEntry {
                name: c.name.to_string(),
                value: c.value.map(|v| v.to_string()),
                is_default: lists_defaults && c.config_source != SOURCE_TOPIC,
            })
            .collect())
    }

    /// Apply `changes` to a topic's configs in one IncrementalAlterConfigs request: the broker
    /// applies all of them or none. Configs not named are left as they are.
    pub async fn alter_topic_configs(
        &mut self,
        topic: &str,
        changes: &[ConfigChange],
    ) -> Result<()> {
        let configs = changes
            .iter()
            .map(|change| match change {
                ConfigChange::Set(key, value) => AlterableConfig::default()
                    .with_name(str_bytes(key))
                    .with_config_operation(CONFIG_OP_SET)
                    .with_value(Some(str_bytes(value))),
                ConfigChange::Delete(key) => AlterableConfig::default()
                    .with_name(str_bytes(key))
                    .with_config_operation(CONFIG_OP_DELETE)
                    .with_value(None),
            })
            .collect();
        let resource = AlterConfigsResource::default()
            .with_resource_type(RESOURCE_TOPIC)
            .with_resource_name(str_bytes(topic))
            .with_configs(configs);
        let request = IncrementalAlterConfigsRequest::default().with_resources(vec![resource]);
        let response = self.conn.call(request).await?;
        let result = response
            .responses
            .first()
            .ok_or_else(|| anyhow!("IncrementalAlterConfigs answered with no resource"))?;
        if ResponseError::try_from_code(result.error_code)
            == Some(ResponseError::UnknownTopicOrPartition)
        {
            bail!(Error::UnknownTopic(topic.to_string()));
        }
        check(result.error_code, result.error_message.as_ref(), || {
            let list: Vec<String> = changes.iter().map(ToString::to_string).collect();
            format!("cannot {} on topic '{topic}'", list.join(", "))
        })
    }

    /// Delete a topic (DeleteTopics), by name. Apache Kafka deletes in the background: the topic
    /// may still be listed for a moment after this returns.
    pub async fn delete_topic(&mut self, name: &str) -> Result<Deleted> {
        // v6 names topics in `topics` (by name or id), v1..=5 in `topic_names`.
        let version = self.conn.version_for::<DeleteTopicsRequest>(i16::MAX)?;
        let mut request = DeleteTopicsRequest::default().with_timeout_ms(self.timeout_ms());
        if version >= 6 {
            request.topics =
                vec![DeleteTopicState::default().with_name(Some(TopicName(str_bytes(name))))];
        } else {
            request.topic_names = vec![TopicName(str_bytes(name))];
        }
        let response = self.conn.call(request).await?;
        let result = response
            .responses
            .first()
            .ok_or_else(|| anyhow!("DeleteTopics answered with no topic"))?;
        outcome(
            (result.error_code, result.error_message.as_ref()),
            Deleted::Deleted,
            (ResponseError::UnknownTopicOrPartition, Deleted::Unknown),
            || format!("cannot delete topic '{name}'"),
        )
    }

    /// Every consumer group the cluster knows (ListGroups), sorted by name. Each broker lists
    /// the groups it coordinates, so every broker is asked.
    pub async fn list_groups(&mut self) -> Result<Vec<ListedGroup>> {
        let brokers = self.brokers().await?;
        let mut groups = BTreeMap::new();
        for addr in brokers {
            let mut conn = if addr == self.conn.addr() {
                None
            } else {
                match WireConnection::connect(&addr, &self.opts).await {
                    Ok(conn) => Some(conn),
                    // A broker that just died: its groups moved to one that is asked too.
                    Err(e) if Retry::of(&e) == Retry::Refresh => {
                        tracing::warn!("cannot list the groups of broker {addr}: {e:#}");
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            };
            let conn = conn.as_mut().unwrap_or(&mut self.conn);
            let response = conn.call(ListGroupsRequest::default()).await?;
            check(response.error_code, None, || {
                format!("listing the consumer groups of broker {addr}")
            })?;
            for g in response.groups {
                let group = g.group_id.0.to_string();
                groups.insert(
                    group.clone(),
                    ListedGroup {
                        group,
                        protocol_type: g.protocol_type.to_string(),
                        state: g.group_state.to_string(),
                    },
                );
            }
        }
        Ok(groups.into_values().collect())
    }

    /// The advertised `host:port` of every broker in the cluster.
    pub async fn brokers(&mut self) -> Result<Vec<String>> {
        let request = MetadataRequest::default()
            .with_allow_auto_topic_creation(false)
            .with_topics(Some(Vec::new()));
        let response = self.conn.call(request).await?;
        let mut brokers: Vec<String> = response
            .brokers
            .iter()
            .map(|b| format!("{}:{}", b.host.as_str(), b.port))
            .collect();
        brokers.sort();
        brokers.dedup();
        self.opts.cluster.learn(brokers.iter().cloned());
        if brokers.is_empty() {
            brokers.push(self.conn.addr().to_string());
        }
        Ok(brokers)
    }

    /// The coordinator of `group`, found now (FindCoordinator on this connection) when this
    /// broker can say; found again on its own, on first use and whenever it moves.
    pub async fn group_coordinator(&mut self, group: &str) -> Result<GroupCoordinator> {
        let mut coordinator = GroupCoordinator::new(&self.opts, group);
        match coordinator.find_with(&mut self.conn).await {
            Err(e) if Retry::of(&e) == Retry::Fatal => Err(e),
            _ => Ok(coordinator),
        }
    }

    /// How long the broker may take over a CreateTopics or DeleteTopics: three quarters of
    /// `--timeout`, which is how long we wait for its answer on the wire. Given the whole of it,
    /// the broker would answer "timed out" just as we stopped listening.
    fn timeout_ms(&self) -> i32 {
        broker_timeout_ms(self.opts.timeout)
    }
}

/// The advertised `host:port` of `group`'s coordinator, asked on `conn` (FindCoordinator).
async fn find_coordinator(conn: &mut WireConnection, group: &str) -> Result<String> {
    let version = conn.version_for::<FindCoordinatorRequest>(i16::MAX)?;
    let mut request = FindCoordinatorRequest::default().with_key_type(0);
    if version >= 4 {
        request.coordinator_keys = vec![str_bytes(group)];
    } else {
        request.key = str_bytes(group);
    }
    let response = conn.call(request).await?;
    let (code, message, host, port) = if version >= 4 {
        let c = response
            .coordinators
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("FindCoordinator answered with no coordinator"))?;
        (c.error_code, c.error_message, c.host, c.port)
    } else {
        (
            response.error_code,
            response.error_message,
            response.host,
            response.port,
        )
    };
    check(code, message.as_ref(), || {
        format!("cannot find the coordinator of group '{group}'")
    })?;
    Ok(format!("{}:{}", host.as_str(), port))
}

/// Three quarters of `wait` in milliseconds (at least 1): the time a request's `timeout_ms`
/// lets the broker take, leaving the rest of our wait for its answer to arrive.
fn broker_timeout_ms(wait: std::time::Duration) -> i32 {
    i32::try_from(wait.as_millis() * 3 / 4)
        .unwrap_or(i32::MAX)
        .max(1)
}

/// The broker that keeps a consumer group's offsets, and a connection to it.
///
/// Every request goes through [`GroupCoordinator::call`]: an answer that says the coordinator
/// moved or is not ready (NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE), a connection that broke
/// or was refused (the broker died) drop the connection, FindCoordinator is asked again (of a
/// live broker: [`Admin::connect`]) and the request sent again; COORDINATOR_LOAD_IN_PROGRESS is
/// retried where it is after a pause. For up to `--timeout` after the first failure, then the
/// error.
pub struct GroupCoordinator {
    opts: Config,
    group: String,
    conn: Option<WireConnection>,
}

impl GroupCoordinator {
    /// The coordinator of `group`, found on first use.
    pub fn new(opts: &Config, group: &str) -> Self {
        Self {
            opts: opts.clone(),
            group: group.to_string(),
            conn: None,
        }
    }

    /// The group this coordinator answers for.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Drop the connection: the next request finds the coordinator again.
    pub fn forget(&mut self) {
        self.conn = None;
    }

    /// Ask FindCoordinator on `via` and connect to the broker it names. A coordinator that is
    /// somewhere else than where this process last found it is said once, as a WARN.
    pub(super) async fn find_with(&mut self, via: &mut WireConnection) -> Result<()> {
        let addr = find_coordinator(via, &self.group).await?;
        let conn = WireConnection::connect(&addr, &self.opts)
            .await
            .with_context(|| format!("connecting to the coordinator of group '{}'", self.group))?;
        let key = format!("group '{}'", self.group);
        if let Some(before) = self.opts.cluster.found(&key, &addr) {
            tracing::warn!(
                "group '{}' coordinator moved to {addr} (it was {before}); following it",
                self.group
            );
        }
        self.conn = Some(conn);
        Ok(())
    }

    /// The connection to the coordinator, found (again) when there is none or it can no longer
    /// be trusted (a request abandoned half way: the next answer could be the old one).
    async fn connection(&mut self) -> Result<&mut WireConnection> {
        if self.conn.as_ref().is_none_or(WireConnection::is_broken) {
            self.conn = None;
            let mut admin = Admin::connect(&self.opts).await?;
            self.find_with(&mut admin.conn).await?;
        }
        Ok(self.conn.as_mut().expect("just found"))
    }

    /// `op` on the coordinator's connection, following the coordinator when it moves (see the
    /// type's doc). `op` turns an answer's coordinator error codes into [`BrokerError`]s
    /// ([`coordinator_error`]) for them to be retried; other codes are its own business.
    ///
    /// `op` owns what it sends (a clone per attempt): its future borrows only the connection.
    pub(super) async fn call<T>(
        &mut self,
        mut op: impl FnMut(&mut WireConnection) -> BoxFuture<'_, Result<T>>,
    ) -> Result<T> {
        let mut retrying = Retrying::new(self.opts.timeout);
        loop {
            let result = match self.connection().await {
                Ok(conn) => op(conn).await,
                Err(e) => Err(e),
            };
            let err = match result {
                Ok(answer) => return Ok(answer),
                Err(e) => e,
            };
            tracing::debug!("group '{}': {err:#}; retrying", self.group);
            if retrying.after(err).await? != Retry::Wait {
                self.conn = None;
            }
        }
    }

    /// Commit `partition → next offset` for `topic`. The database is the source of truth; this
    /// only makes the position visible to Kafka tooling. Without `member` it is a "simple"
    /// (generation -1) commit; a member of the group must name itself and its generation, or
    /// Apache Kafka refuses the commit.
    pub async fn commit(
        &mut self,
        topic: &str,
        offsets: &BTreeMap<i32, i64>,
        member: Option<(&str, i32)>,
    ) -> Result<()> {
        let (member_id, generation) = member.unwrap_or(("", -1));
        // v10 addresses topics by id; stay on the name-based versions.
        let partitions = offsets
            .iter()
            .map(|(&partition, &offset)| {
                OffsetCommitRequestPartition::default()
                    .with_partition_index(partition)
                    .with_committed_offset(offset)
                    .with_committed_leader_epoch(-1)
            })
            .collect();
        let request = OffsetCommitRequest::default()
            .with_group_id(GroupId(str_bytes(&self.group)))
            .with_generation_id_or_member_epoch(generation)
            .with_member_id(str_bytes(member_id))
            .with_retention_time_ms(-1)
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(TopicName(str_bytes(topic)))
                .with_partitions(partitions)]);
        let what = format!("committing offsets of group '{}' for {topic}", self.group);
        self.call(|conn| {
            let (request, what) = (request.clone(), what.clone());
            Box::pin(async move {
                let response = conn.call_capped(request, 9).await?;
                for t in &response.topics {
                    for p in &t.partitions {
                        check(p.error_code, None, || {
                            format!("{what}/{}", p.partition_index)
                        })?;
                    }
                }
                Ok(())
            })
        })
        .await
    }

    /// The group's committed `partition → next offset` for `topic` (absent when none).
    pub async fn fetch(&mut self, topic: &str, partitions: &[i32]) -> Result<BTreeMap<i32, i64>> {
        let rows = self.offset_fetch(Some((topic, partitions))).await?;
        Ok(rows
            .into_iter()
            .filter(|(t, _, _)| t == topic)
            .map(|(_, partition, offset)| (partition, offset))
            .collect())
    }

    /// Every committed offset of the group: topic → partition → next offset.
    pub async fn fetch_all(&mut self) -> Result<BTreeMap<String, BTreeMap<i32, i64>>> {
        let mut out: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
        for (topic, partition, offset) in self.offset_fetch(None).await? {
            out.entry(topic).or_default().insert(partition, offset);
        }
        Ok(out)
    }

    /// OffsetFetch of one topic's partitions, or of every topic (`None`): each committed
    /// `(topic, partition, next offset)` (partitions without one left out).
    async fn offset_fetch(
        &mut self,
        topic: Option<(&str, &[i32])>,
    ) -> Result<Vec<(String, i32, i64)>> {
        let group = self.group.clone();
        let topic = topic.map(|(t, ps)| (t.to_string(), ps.to_vec()));
        self.call(|conn| {
            let (group, topic) = (group.clone(), topic.clone());
            Box::pin(async move {
                let topic = topic.as_ref().map(|(t, ps)| (t.as_str(), ps.as_slice()));
                offset_fetch(conn, &group, topic).await
            })
        })
        .await
    }
}

/// `Err` ([`BrokerError`]) for the codes that say the coordinator moved or is not ready: for
/// [`GroupCoordinator::call`] to follow it. Every other code is left to the caller.
pub(super) fn coordinator_error(code: i16, what: impl FnOnce() -> String) -> Result<()> {
    match ResponseError::try_from_code(code) {
        Some(
            ResponseError::NotCoordinator
            | ResponseError::CoordinatorNotAvailable
            | ResponseError::CoordinatorLoadInProgress,
        ) => check(code, None, what),
        _ => Ok(()),
    }
}

/// OffsetFetch of `group` on `conn` (see [`GroupCoordinator::offset_fetch`]).
async fn offset_fetch(
    conn: &mut WireConnection,
    group: &str,
    topic: Option<(&str, &[i32])>,
) -> Result<Vec<(String, i32, i64)>> {
    let version = conn.version_for::<OffsetFetchRequest>(9)?;
    let name = |topic: &str| TopicName(str_bytes(topic));
    let mut request = OffsetFetchRequest::default();
    if version >= 8 {
        request.groups = vec![OffsetFetchRequestGroup::default()
            .with_group_id(GroupId(str_bytes(group)))
            .with_topics(topic.map(|(topic, partitions)| {
                vec![OffsetFetchRequestTopics::default()
                    .with_name(name(topic))
                    .with_partition_indexes(partitions.to_vec())]
            }))];
    } else {
        request.group_id = GroupId(str_bytes(group));
        request.topics = topic.map(|(topic, partitions)| {
            vec![OffsetFetchRequestTopic::default()
                .with_name(name(topic))
                .with_partition_indexes(partitions.to_vec())]
        });
    }
    let response = conn.call_capped(request, 9).await?;
    let what = || format!("fetching offsets of group '{group}'");
    // The same fields at every version, in a type of their own before v8.
    macro_rules! rows {
        ($topics:expr) => {
            $topics
                .into_iter()
                .flat_map(|t| {
                    let topic = t.name.0.to_string();
                    t.partitions.into_iter().map(move |p| {
                        (
                            topic.clone(),
                            p.partition_index,
                            p.committed_offset,
                            p.error_code,
                        )
                    })
                })
                .collect::<Vec<_>>()
        };
    }
    let mut rows = Vec::new();
    if version >= 8 {
        for g in response.groups {
            check(g.error_code, None, what)?;
            rows.extend(rows!(g.topics));
        }
    } else {
        check(response.error_code, None, what)?;
        rows = rows!(response.topics);
    }
    let mut out = Vec::new();
    for (topic, partition, offset, code) in rows {
        check(code, None, what)?;
        if offset >= 0 {
            out.push((topic, partition, offset));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod timeout_tests {
    use std::time::Duration;

    #[test]
    fn the_broker_gets_three_quarters_of_the_wait() {
        assert_eq!(super::broker_timeout_ms(Duration::from_secs(10)), 7500);
        assert_eq!(super::broker_timeout_ms(Duration::from_millis(1)), 1);
        assert_eq!(
            super::broker_timeout_ms(Duration::from_secs(1 << 40)),
            i32::MAX
        );
    }
}

#[cfg(test)]
mod coordinator_tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use kafka_protocol::messages::offset_commit_response::{
        OffsetCommitResponsePartition, OffsetCommitResponseTopic,
    };
    use kafka_protocol::messages::{
        ApiKey, BrokerId, FindCoordinatorResponse, OffsetCommitResponse,
    };

    use super::super::fake::{self, answer, Handler};
    use super::*;

    fn committed(code: i16, version: i16) -> fake::Answer {
        let partition = OffsetCommitResponsePartition::default()
            .with_partition_index(0)
            .with_error_code(code);
        let topic = OffsetCommitResponseTopic::default()
            .with_name(TopicName(str_bytes("t")))
            .with_partitions(vec![partition]);
        answer(
            &OffsetCommitResponse::default().with_topics(vec![topic]),
            version,
        )
    }

    /// A coordinator that takes every commit, counting them.
    fn takes_commits(count: Arc<AtomicUsize>) -> Handler {
        Arc::new(move |key, version| match key {
            ApiKey::OffsetCommit => {
                count.fetch_add(1, Ordering::SeqCst);
                Some(committed(0, version))
            }
            _ => None,
        })
    }

    /// The bootstrap broker: FindCoordinator names `coordinators` in turn (the last one for
    /// good); a commit sent to it is answered `refuse` (None: the connection dropped).
    fn bootstrap(coordinators: Vec<String>, refuse: Option<i16>) -> Handler {
        let asked = AtomicUsize::new(0);
        Arc::new(move |key, version| match key {
            ApiKey::FindCoordinator => {
                let n = asked
                    .fetch_add(1, Ordering::SeqCst)
                    .min(coordinators.len() - 1);
                let (host, port) = coordinators[n].rsplit_once(':').unwrap();
                let response = FindCoordinatorResponse::default()
                    .with_node_id(BrokerId(i32::try_from(n).unwrap()))
                    .with_host(str_bytes(host))
                    .with_port(port.parse().unwrap());
                Some(answer(&response, version))
            }
            ApiKey::OffsetCommit => refuse.map(|code| committed(code, version)),
            _ => None,
        })
    }

    fn opts(brokers: Vec<String>) -> Config {
        Config {
            brokers,
            timeout: Duration::from_secs(10),
            ..Config::default()
        }
    }

    /// Commit once through a fresh coordinator; how long it took.
    async fn commit(opts: &Config) -> Duration {
        let started = Instant::now();
        let mut coordinator = GroupCoordinator::new(opts, "g");
        coordinator
            .commit("t", &BTreeMap::from([(0, 5)]), None)
            .await
            .unwrap();
        started.elapsed()
    }

    #[tokio::test]
    async fn a_commit_answered_not_coordinator_goes_to_the_new_coordinator() {
        let count = Arc::new(AtomicUsize::new(0));
        let new = fake::broker(takes_commits(Arc::clone(&count))).await;
        // The bootstrap broker is the old coordinator: it names itself first.
        let old = fake::broker_knowing(|me| bootstrap(vec![me, new.clone()], Some(16))).await;
        let opts = opts(vec![old]);
        let took = commit(&opts).await;
        assert_eq!(
            count.load(Ordering::SeqCst),
            1,
            "committed at the new coordinator"
        );
        assert!(took < Duration::from_secs(2), "{took:?}");
        // The move was recorded (and said) once.
        assert_eq!(opts.cluster.found("group 'g'", &new), None);
    }

    #[tokio::test]
    async fn a_dropped_connection_or_a_dead_coordinator_is_found_again_at_once() {
        for refuse in [None, Some(16)] {
            let count = Arc::new(AtomicUsize::new(0));
            let new = fake::broker(takes_commits(Arc::clone(&count))).await;
            let dead = fake::dead().await;
            // First named: the bootstrap broker itself, which drops the connection on the
            // commit (an early EOF), or a dead broker (connection refused); then the live one.
            let boot = fake::broker_knowing(|me| {
                let first = if refuse.is_none() { me } else { dead.clone() };
                bootstrap(vec![first, new.clone()], refuse)
            })
            .await;
            // A dead first bootstrap broker costs one refused connection.
            let took = commit(&opts(vec![dead, boot])).await;
            assert_eq!(count.load(Ordering::SeqCst), 1, "{refuse:?}");
            assert!(took < Duration::from_secs(2), "{took:?}");
        }
    }

    #[tokio::test]
    async fn a_coordinator_that_never_takes_the_commit_fails_within_the_timeout() {
        let addr = fake::broker_knowing(|me| bootstrap(vec![me], Some(16))).await;
        let opts = Config {
            timeout: Duration::from_millis(600),
            ..opts(vec![addr])
        };
        let started = Instant::now();
        let err = GroupCoordinator::new(&opts, "g")
            .commit("t", &BTreeMap::from([(0, 5)]), None)
            .await
            .unwrap_err();
        assert_eq!(Retry::of(&err), Retry::Coordinator, "{err:#}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}

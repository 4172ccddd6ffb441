//! Kafka's consumer protocol, pure: the subscription and assignment bytes members and the
//! coordinator exchange (the same as librdkafka's and Java's), and the range assignor the group's
//! leader computes every member's partitions with. No I/O; `group.rs` sends and receives them.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedTopic;
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use super::bounds;

/// A member's subscription, as the leader reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscription {
    pub topics: Vec<String>,
}

/// Subscription version sent: v0 (topics and user data) is what every client can read.
const SUBSCRIPTION_VERSION: i16 = 0;
const ASSIGNMENT_VERSION: i16 = 0;

/// The consumer protocol's bytes are a big-endian i16 version, then the message at that version.
pub fn encode_subscription(topic: &str) -> Bytes {
    let subscription = ConsumerProtocolSubscription::default()
        .with_topics(vec![StrBytes::from_string(topic.to_string())])
        .with_user_data(None);
    let mut buf = BytesMut::new();
    buf.put_i16(SUBSCRIPTION_VERSION);
    subscription
        .encode(&mut buf, SUBSCRIPTION_VERSION)
        .expect("a subscription always encodes");
    buf.freeze()
}

/// A member's subscription. Its bytes come from another client of the group: every count and
/// length in them is checked against the bytes there before `kafka-protocol` sees them (see
/// [`bounds`]).
pub fn decode_subscription(bytes: &[u8]) -> Result<Subscription> {
    let Some((version, body)) = split_version(bytes) else {
        bail!("an empty subscription");
    };
    bounds::check_subscription(body, version).map_err(super::Error::from)?;
    let mut buf = Bytes::copy_from_slice(body);
    let s = ConsumerProtocolSubscription::decode(&mut buf, version)
        .context("an undecodable subscription")?;
    Ok(Subscription {
        topics: s.topics.iter().map(|t| t.to_string()).collect(),
    })
}

pub fn encode_assignment(partitions: &BTreeMap<String, Vec<i32>>) -> Bytes {
    let assignment = ConsumerProtocolAssignment::default()
        .with_assigned_partitions(
            partitions
                .iter()
                .map(|(topic, ps)| {
                    AssignedTopic::default()
                        .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
                        .with_partitions(ps.clone())
                })
                .collect(),
        )
        .with_user_data(None);
    let mut buf = BytesMut::new();
    buf.put_i16(ASSIGNMENT_VERSION);
    assignment
        .encode(&mut buf, ASSIGNMENT_VERSION)
        .expect("an assignment always encodes");
    buf.freeze()
}

/// Topic → sorted partitions. Empty bytes (a member the leader gave nothing) is no partitions.
/// The bytes come from the group's leader, another client: checked like a subscription's.
pub fn decode_assignment(bytes: &[u8]) -> Result<BTreeMap<String, Vec<i32>>> {
    let Some((version, body)) = split_version(bytes) else {
        return Ok(BTreeMap::new());
    };
    bounds::check_assignment(body).map_err(super::Error::from)?;
    let mut buf = Bytes::copy_from_slice(body);
    let a = ConsumerProtocolAssignment::decode(&mut buf, version)
        .context("an undecodable assignment")?;
    let mut out: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for t in a.assigned_partitions {
        out.entry(t.topic.0.to_string())
            .or_default()
            .extend(t.partitions);
    }
    for ps in out.values_mut() {
        ps.sort_unstable();
        ps.dedup();
    }
    Ok(out)
}

/// The consumer protocol's i16 version prefix and what follows it. Newer versions only add
/// fields at the end, so they are read as the newest version known; `None` when too short.
fn split_version(bytes: &[u8]) -> Option<(i16, &[u8])> {
    let (version, body) = bytes.split_first_chunk::<2>()?;
    Some((
        i16::from_be_bytes(*version).clamp(0, bounds::NEWEST_VERSION),
        body,
    ))
}

/// Kafka's range assignor: per topic, the subscribed members sorted by id each get a contiguous
/// run of partitions; the first `partitions % members` get one more.
pub fn range_assign(
    members: &[(String, Subscription)],
    partitions: &BTreeMap<String, Vec<i32>>,
) -> BTreeMap<String, BTreeMap<String, Vec<i32>>> {
    let mut plan: BTreeMap<String, BTreeMap<String, Vec<i32>>> = members
        .iter()
        .map(|(id, _)| (id.clone(), BTreeMap::new()))
        .collect();
    for (topic, topic_partitions) in partitions {
        let mut subscribers: Vec<&str> = members
            .iter()
            .filter(|(_, s)| s.topics.iter().any(|t| t == topic))
            .map(|(id, _)| id.as_str())
            .collect();
        subscribers.sort_unstable();
        subscribers.dedup();
        if subscribers.is_empty() {
            continue;
        }
        let mut sorted = topic_partitions.clone();
        sorted.sort_unstable();
        let (per_member, extra) = (
            sorted.len() / subscribers.len(),
            sorted.len() % subscribers.len(),
        );
        let mut next = 0;
        for (i, member) in subscribers.iter().enumerate() {
            let take = per_member + usize::from(i < extra);
            plan.get_mut(*member)
                .expect("every subscriber is a member")
                .insert(topic.clone(), sorted[next..next + take].to_vec());
            next += take;
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(topics: &[&str]) -> Subscription {
        Subscription {
            topics: topics.iter().map(|t| t.to_string()).collect(),
        }
    }

    #[test]
    fn range_gives_every_partition_to_exactly_one_member() {
        let members = vec![
            ("c".to_string(), sub(&["sales"])),
            ("a".to_string(), sub(&["sales", "sensors"])),
            ("b".to_string(), sub(&["sales"])),
        ];
        let partitions = BTreeMap::from([
            ("sales".to_string(), (0..7).collect::<Vec<_>>()),
            ("sensors".to_string(), vec![0, 1]),
        ]);
        let plan = range_assign(&members, &partitions);
        assert_eq!(plan["a"]["sales"], vec![0, 1, 2]);
        assert_eq!(plan["b"]["sales"], vec![3, 4]);
        assert_eq!(plan["c"]["sales"], vec![5, 6]);
        assert_eq!(plan["a"]["sensors"], vec![0, 1]);
        assert!(!plan["b"].contains_key("sensors"));
    }

    #[test]
    fn more_members_than_partitions_leaves_some_idle() {
        let members: Vec<_> = ["m1", "m2", "m3"]
            .iter()
            .map(|id| (id.to_string(), sub(&["t"])))
            .collect();
        let plan = range_assign(&members, &BTreeMap::from([("t".to_string(), vec![0, 1])]));
        let assigned: Vec<usize> = plan.values().map(|t| t["t"].len()).collect();
        assert_eq!(assigned, vec![1, 1, 0]);
    }

    #[test]
    fn subscription_and_assignment_bytes_round_trip_with_their_version_prefix() {
        let bytes = encode_subscription("sales");
        assert_eq!(&bytes[..2], &[0, 0], "version 0 first");
        assert_eq!(decode_subscription(&bytes).unwrap(), sub(&["sales"]));

        let plan = BTreeMap::from([("sales".to_string(), vec![4, 2])]);
        let decoded = decode_assignment(&encode_assignment(&plan)).unwrap();
        assert_eq!(decoded["sales"], vec![2, 4]);
        assert!(decode_assignment(&[]).unwrap().is_empty());
        assert!(decode_subscription(&[0]).is_err());
    }
}

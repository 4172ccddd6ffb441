//! The reader against a canned broker: where it goes when the leader moves.

mod leader {
    use std::sync::Arc;
    use std::time::Duration;

    use kafka_protocol::messages::list_offsets_response::{
        ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
    };
    use kafka_protocol::messages::metadata_response::{
        MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
    };
    use kafka_protocol::messages::{
        ApiKey, BrokerId, ListOffsetsResponse, MetadataResponse, TopicName,
    };
    use kafka_protocol::protocol::StrBytes;

    use crate::kafka::fake::{self, answer, Handler};
    use crate::kafka::fetch::PartitionReader;
    use crate::kafka::Config;

    fn listed(code: i16, offset: i64, version: i16) -> fake::Answer {
        let partition = ListOffsetsPartitionResponse::default()
            .with_partition_index(0)
            .with_error_code(code)
            .with_offset(offset)
            .with_timestamp(-1);
        let topic = ListOffsetsTopicResponse::default()
            .with_name(TopicName(StrBytes::from_static_str("t")))
            .with_partitions(vec![partition]);
        answer(
            &ListOffsetsResponse::default().with_topics(vec![topic]),
            version,
        )
    }

    /// Metadata naming `leader` (host:port) as node 2, the leader of t/0.
    fn metadata(leader: &str, version: i16) -> fake::Answer {
        let (host, port) = leader.rsplit_once(':').unwrap();
        let broker = MetadataResponseBroker::default()
            .with_node_id(BrokerId(2))
            .with_host(StrBytes::from_string(host.to_string()))
            .with_port(port.parse().unwrap());
        let partition = MetadataResponsePartition::default()
            .with_partition_index(0)
            .with_leader_id(BrokerId(2));
        let topic = MetadataResponseTopic::default()
            .with_name(Some(TopicName(StrBytes::from_static_str("t"))))
            .with_partitions(vec![partition]);
        let response = MetadataResponse::default()
            .with_brokers(vec![broker])
            .with_topics(vec![topic]);
        answer(&response, version)
    }

    #[tokio::test]
    async fn a_list_offsets_answered_not_leader_follows_the_new_leader() {
        let new: Handler = Arc::new(|key, version| match key {
            ApiKey::ListOffsets => Some(listed(0, 42, version)),
            _ => None,
        });
        let new = fake::broker(new).await;
        // The old leader, also the bootstrap broker: NOT_LEADER_OR_FOLLOWER (6), and metadata
        // naming the new one.
        let leader = new.clone();
        let old: Handler = Arc::new(move |key, version| match key {
            ApiKey::ListOffsets => Some(listed(6, -1, version)),
            ApiKey::Metadata => Some(metadata(&leader, version)),
            _ => None,
        });
        let old = fake::broker(old).await;
        let opts = Config {
            brokers: vec![old.clone()],
            timeout: Duration::from_secs(10),
            ..Config::default()
        };
        let mut reader = PartitionReader {
            leader_hint: Some(old.clone()),
            ..PartitionReader::new(&opts, "t", 0)
        };
        let started = std::time::Instant::now();
        assert_eq!(
            reader.list_offset(super::super::EARLIEST).await.unwrap(),
            42
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        // Where it is now is recorded: the move was said (once).
        assert_eq!(opts.cluster.found("t/0", &new), None);
        assert_eq!(opts.cluster.found("t/0", &old), Some(new));
    }
}

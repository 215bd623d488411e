//! Metadata and DescribeCluster: brokers, the controller, topics and partition leaders.

use std::sync::Arc;

use kafka_protocol::messages::{
    describe_cluster_response::DescribeClusterBroker,
    metadata_response::{MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic},
    BrokerId, DescribeClusterRequest, DescribeClusterResponse, MetadataRequest, MetadataResponse,
};
use kafka_protocol::ResponseError;
use uuid::Uuid;

use crate::state::{Broker, Partition, Topic};
use crate::topic_config::TopicConfig;

use super::{sb, topic_name};

pub(super) fn partition_metadata(broker: &Broker, p: &Partition) -> MetadataResponsePartition {
    let node = BrokerId(broker.node_id());
    let mut m = MetadataResponsePartition::default();
    m.partition_index = p.index;
    m.leader_id = node;
    m.leader_epoch = p.leader_epoch;
    m.replica_nodes = vec![node];
    m.isr_nodes = vec![node];
    m
}

pub(super) fn topic_metadata(broker: &Broker, t: &Topic) -> MetadataResponseTopic {
    let mut m = MetadataResponseTopic::default();
    m.name = Some(topic_name(&t.name));
    m.topic_id = t.id;
    m.is_internal = false;
    m.partitions = t
        .partitions()
        .iter()
        .map(|p| partition_metadata(broker, p))
        .collect();
    m
}

pub(super) fn topic_error(
    name: Option<&str>,
    id: Uuid,
    code: ResponseError,
) -> MetadataResponseTopic {
    let mut m = MetadataResponseTopic::default();
    m.name = name.map(topic_name);
    m.topic_id = id;
    m.error_code = code.code();
    m
}

pub(super) async fn metadata(
    broker: &Arc<Broker>,
    req: MetadataRequest,
    version: i16,
) -> MetadataResponse {
    let (host, port) = broker.advertised();
    let mut resp = MetadataResponse::default();
    let mut b = MetadataResponseBroker::default();
    b.node_id = BrokerId(broker.node_id());
    b.host = sb(host);
    b.port = port;
    resp.brokers = vec![b];
    resp.cluster_id = Some(sb(broker.cluster_id()));
    resp.controller_id = BrokerId(broker.node_id());
    // v0: an empty list means all topics; v1+: null means all, empty means none.
    let all = match &req.topics {
        None => true,
        Some(t) => t.is_empty() && version == 0,
    };
    if all {
        resp.topics = broker
            .topics()
            .iter()
            .map(|t| topic_metadata(broker, t))
            .collect();
        return resp;
    }
    let auto_create =
        broker.config().auto_create_topics && (version < 4 || req.allow_auto_topic_creation);
    for wanted in req.topics.unwrap_or_default() {
        let entry = match wanted.name.as_ref().map(|n| n.0.to_string()) {
            Some(name) => match broker.topic(&name) {
                Some(t) => topic_metadata(broker, &t),
                None if auto_create => {
                    match broker
                        .create_topic(
                            &name,
                            broker.config().default_partitions,
                            TopicConfig::default(),
                            false,
                        )
                        .await
                    {
                        Ok(t) => topic_metadata(broker, &t),
                        Err(e) if e.code == ResponseError::TopicAlreadyExists => broker
                            .topic(&name)
                            .map(|t| topic_metadata(broker, &t))
                            .unwrap_or_else(|| {
                                topic_error(
                                    Some(&name),
                                    Uuid::nil(),
                                    ResponseError::LeaderNotAvailable,
                                )
                            }),
                        Err(e) => topic_error(Some(&name), Uuid::nil(), e.code),
                    }
                }
                None => {
                    let code = match crate::state::validate_topic_name(&name) {
                        Ok(()) => ResponseError::UnknownTopicOrPartition,
                        Err(e) => e.code,
                    };
                    topic_error(Some(&name), Uuid::nil(), code)
                }
            },
            None => match broker.topic_by_id(wanted.topic_id) {
                Some(t) => topic_metadata(broker, &t),
                None => topic_error(None, wanted.topic_id, ResponseError::UnknownTopicId),
            },
        };
        resp.topics.push(entry);
    }
    resp
}

pub(super) fn describe_cluster(
    broker: &Arc<Broker>,
    req: DescribeClusterRequest,
) -> DescribeClusterResponse {
    let mut resp = DescribeClusterResponse::default();
    resp.cluster_id = sb(broker.cluster_id());
    resp.controller_id = BrokerId(broker.node_id());
    resp.endpoint_type = req.endpoint_type;
    if req.endpoint_type != 1 {
        resp.error_code = ResponseError::UnsupportedEndpointType.code();
        resp.error_message = Some(sb("only broker endpoints (type 1) are served"));
        return resp;
    }
    let (host, port) = broker.advertised();
    let mut b = DescribeClusterBroker::default();
    b.broker_id = BrokerId(broker.node_id());
    b.host = sb(host);
    b.port = port;
    resp.brokers = vec![b];
    resp
}

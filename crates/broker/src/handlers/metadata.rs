//! Metadata and DescribeCluster: brokers, the controller, topics and
//! partition leaders, all from the cluster image.

use std::sync::Arc;

use kafka_protocol::messages::{
    describe_cluster_response::DescribeClusterBroker,
    metadata_response::{MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic},
    BrokerId, DescribeClusterRequest, DescribeClusterResponse, MetadataRequest, MetadataResponse,
};
use kafka_protocol::ResponseError;
use strata_cluster::{ClusterImage, TopicRecord, NO_LEADER};
use uuid::Uuid;

use crate::cluster::TopicSpec;
use crate::state::Broker;

use super::{sb, topic_name};

/// The internal topic of committed offsets and groups.
pub(crate) const OFFSETS_TOPIC: &str = "__consumer_offsets";

fn partition_metadata(
    img: &ClusterImage,
    t: &TopicRecord,
    index: i32,
) -> MetadataResponsePartition {
    let mut m = MetadataResponsePartition::default();
    m.partition_index = index;
    match img.partition(t.id, index) {
        Some(s) => {
            let s = &s.value;
            m.leader_id = BrokerId(s.leader);
            m.leader_epoch = s.leader_epoch;
            m.replica_nodes = s.replicas.iter().copied().map(BrokerId).collect();
            m.isr_nodes = s.isr.iter().copied().map(BrokerId).collect();
            m.offline_replicas = s
                .replicas
                .iter()
                .copied()
                .filter(|b| !img.is_live(*b))
                .map(BrokerId)
                .collect();
            if s.leader == NO_LEADER {
                m.error_code = ResponseError::LeaderNotAvailable.code();
            }
        }
        None => {
            // Still being created.
            m.leader_id = BrokerId(NO_LEADER);
            m.leader_epoch = -1;
            m.error_code = ResponseError::LeaderNotAvailable.code();
        }
    }
    m
}

fn topic_metadata(img: &ClusterImage, t: &TopicRecord) -> MetadataResponseTopic {
    let mut m = MetadataResponseTopic::default();
    m.name = Some(topic_name(&t.name));
    m.topic_id = t.id;
    m.is_internal = t.name == OFFSETS_TOPIC;
    m.partitions = (0..t.partitions)
        .map(|i| partition_metadata(img, t, i))
        .collect();
    m
}

fn topic_error(name: Option<&str>, id: Uuid, code: ResponseError) -> MetadataResponseTopic {
    let mut m = MetadataResponseTopic::default();
    m.name = name.map(topic_name);
    m.topic_id = id;
    m.error_code = code.code();
    m
}

pub(super) async fn metadata(
    broker: &Arc<Broker>,
    ctx: &super::RequestContext,
    req: MetadataRequest,
) -> MetadataResponse {
    let version = ctx.version;
    let mut resp = MetadataResponse::default();
    // v0: an empty list means all topics; v1+: null means all, empty means none.
    let all = match &req.topics {
        None => true,
        Some(t) => t.is_empty() && version == 0,
    };
    let auto_create =
        broker.config().auto_create_topics && (version < 4 || req.allow_auto_topic_creation);
    let mut topics = Vec::new();
    if !all {
        for wanted in req.topics.unwrap_or_default() {
            let name = wanted.name.as_ref().map(|n| n.0.to_string());
            let img = broker.image();
            let known = match &name {
                Some(n) => img.topics.contains_key(n),
                None => img.topic_by_id(wanted.topic_id).is_some(),
            };
            if let (Some(n), false, true) = (&name, known, auto_create) {
                let spec = TopicSpec {
                    name: n.clone(),
                    partitions: -1,
                    replication_factor: -1,
                    ..TopicSpec::default()
                };
                match broker.create_topic(spec, false, true).await {
                    Ok(_) => {}
                    Err(e) if e.code == ResponseError::TopicAlreadyExists => {}
                    Err(e) => {
                        topics.push(Err(topic_error(Some(n), Uuid::nil(), e.code)));
                        continue;
                    }
                }
            }
            topics.push(Ok((name, wanted.topic_id)));
        }
    }
    let img = broker.image();
    resp.brokers = img
        .brokers
        .values()
        .map(|b| {
            let mut m = MetadataResponseBroker::default();
            let (host, port) = b.endpoint(&ctx.identity.listener);
            m.node_id = BrokerId(b.id);
            m.host = sb(host);
            m.port = port;
            m.rack = b.rack.clone().map(sb);
            m
        })
        .collect();
    resp.cluster_id = Some(sb(broker.cluster_id()));
    // Every broker takes controller-bound requests (topic changes) and
    // forwards them, so Metadata names the broker answering, as Kafka's KRaft
    // brokers name any live broker: a client's admin requests then never
    // wait on the controller's address, which changes when it fails.
    // DescribeCluster names the real controller.
    resp.controller_id = BrokerId(broker.node_id());
    if all {
        resp.topics = img
            .topics
            .values()
            .map(|t| topic_metadata(&img, t))
            .collect();
        return resp;
    }
    for entry in topics {
        resp.topics.push(match entry {
            Err(e) => e,
            Ok((Some(name), _)) => match img.topics.get(&name) {
                Some(t) => topic_metadata(&img, t),
                None => {
                    let code = match crate::state::validate_topic_name(&name) {
                        Ok(()) if auto_create => ResponseError::LeaderNotAvailable,
                        Ok(()) => ResponseError::UnknownTopicOrPartition,
                        Err(e) => e.code,
                    };
                    topic_error(Some(&name), Uuid::nil(), code)
                }
            },
            Ok((None, id)) => match img.topic_by_id(id) {
                Some(t) => topic_metadata(&img, t),
                None => topic_error(None, id, ResponseError::UnknownTopicId),
            },
        });
    }
    resp
}

pub(super) fn describe_cluster(
    broker: &Arc<Broker>,
    ctx: &super::RequestContext,
    req: DescribeClusterRequest,
) -> DescribeClusterResponse {
    let img = broker.image();
    let mut resp = DescribeClusterResponse::default();
    resp.cluster_id = sb(broker.cluster_id());
    resp.controller_id = BrokerId(img.controller.map_or(-1, |c| c.broker_id));
    resp.endpoint_type = req.endpoint_type;
    if req.endpoint_type != 1 {
        resp.error_code = ResponseError::UnsupportedEndpointType.code();
        resp.error_message = Some(sb("only broker endpoints (type 1) are served"));
        return resp;
    }
    resp.brokers = img
        .brokers
        .values()
        .map(|r| {
            let mut b = DescribeClusterBroker::default();
            let (host, port) = r.endpoint(&ctx.identity.listener);
            b.broker_id = BrokerId(r.id);
            b.host = sb(host);
            b.port = port;
            b.rack = r.rack.clone().map(sb);
            b.is_fenced = false;
            b
        })
        .collect();
    resp
}

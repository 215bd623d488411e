//! Kafka request handlers. Each turns a decoded request into a [`Reply`]; the
//! connection writes replies in request order.
//!
//! Requests are applied in the order they arrive on a connection. A produce
//! is queued on its partitions' append queues (see `appender`) before the
//! next request is read, and appended while the connection reads on; waiting,
//! for the append, an fsync or a fetch long poll, happens in the reply future,
//! so a pipelining client's produces overlap and share fsyncs.
//!
//! One module per API family: `metadata` (Metadata, DescribeCluster),
//! `produce`, `fetch`, `list_offsets`, `records` (DeleteRecords), `topics`
//! (CreateTopics, DeleteTopics, CreatePartitions), `configs` (Describe/Alter/IncrementalAlterConfigs),
//! `reassign` (Alter/ListPartitionReassignments) and `groups` (the group
//! coordinator's APIs and InitProducerId).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use kafka_protocol::messages::{
    api_versions_response::ApiVersion, ApiKey, ApiVersionsResponse, RequestKind, ResponseKind,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::{Broker, Partition, Topic};

mod authorize;
mod configs;
mod consumer_groups;
mod fetch;
pub(crate) mod groups;
pub(crate) mod list_offsets;
mod metadata;
mod produce;
mod reassign;
mod records;
mod security;
mod topics;

pub(crate) use list_offsets::lookup_offset;
pub(crate) use metadata::OFFSETS_TOPIC;

/// What the connection does with a request.
#[allow(clippy::large_enum_variant)] // built once per request and moved at once
pub enum Reply {
    /// Send this response.
    Now(ResponseKind),
    /// Send this response when the future completes (after earlier replies).
    Later(Pin<Box<dyn Future<Output = ResponseKind> + Send>>),
    /// Decide the reply when the future completes (after earlier replies):
    /// a produce whose outcome, with acks=0, may be to close the connection.
    Deferred(Pin<Box<dyn Future<Output = Reply> + Send>>),
    /// Send nothing (produce with acks=0).
    Nothing,
    /// Close the connection (the protocol has no way to answer).
    Close(String),
}

/// Who sent a request, and at which version.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// Request version.
    pub version: i16,
    /// The client's `client.id`.
    pub client_id: String,
    /// The client's address.
    pub peer: SocketAddr,
    /// The authenticated principal and the listener.
    pub identity: crate::security::Identity,
}

/// The APIs Strata answers, with the highest version of each where it is
/// below what the codec knows (`None`: every version the codec knows).
/// OffsetCommit v10 and OffsetFetch v10 name topics by id, which Strata does
/// not read yet (consumer-protocol clients use v9, by name).
pub const SUPPORTED_APIS: &[(ApiKey, Option<i16>)] = &[
    (ApiKey::Produce, None),
    (ApiKey::Fetch, None),
    (ApiKey::ListOffsets, None),
    (ApiKey::Metadata, None),
    (ApiKey::OffsetCommit, Some(9)),
    (ApiKey::OffsetFetch, Some(9)),
    (ApiKey::FindCoordinator, None),
    (ApiKey::JoinGroup, None),
    (ApiKey::Heartbeat, None),
    (ApiKey::LeaveGroup, None),
    (ApiKey::SyncGroup, None),
    (ApiKey::DescribeGroups, None),
    (ApiKey::ListGroups, None),
    (ApiKey::ApiVersions, None),
    (ApiKey::CreateTopics, None),
    (ApiKey::DeleteTopics, None),
    (ApiKey::InitProducerId, None),
    (ApiKey::DescribeConfigs, None),
    (ApiKey::AlterConfigs, None),
    (ApiKey::CreatePartitions, None),
    (ApiKey::DeleteGroups, None),
    (ApiKey::IncrementalAlterConfigs, None),
    (ApiKey::OffsetDelete, None),
    (ApiKey::DescribeCluster, None),
    (ApiKey::OffsetForLeaderEpoch, None),
    (ApiKey::AlterPartitionReassignments, None),
    (ApiKey::ListPartitionReassignments, None),
    (ApiKey::DeleteRecords, None),
    (ApiKey::ConsumerGroupHeartbeat, None),
    (ApiKey::ConsumerGroupDescribe, None),
    // v0 is advertised, as Kafka does (librdkafka's feature detection looks
    // for it), but its raw tokens after the handshake are not read: clients
    // that see v1 use it with SaslAuthenticate.
    (ApiKey::SaslHandshake, Some(1)),
    (ApiKey::SaslAuthenticate, None),
    (ApiKey::CreateAcls, None),
    (ApiKey::DescribeAcls, None),
    (ApiKey::DeleteAcls, None),
    (ApiKey::DescribeUserScramCredentials, None),
    (ApiKey::AlterUserScramCredentials, None),
];

/// Versions of `key` Strata answers, or `None` if it does not serve the API.
pub fn supported_versions(key: ApiKey) -> Option<(i16, i16)> {
    let (_, cap) = SUPPORTED_APIS.iter().find(|(k, _)| *k == key)?;
    let r = key.valid_versions();
    Some((r.min, cap.map_or(r.max, |c| c.min(r.max))))
}

fn sb(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

fn topic_name(s: &str) -> TopicName {
    TopicName(sb(s))
}

pub(crate) fn resolve_topic(
    broker: &Broker,
    name: &str,
    id: Uuid,
    by_id: bool,
) -> Result<Arc<Topic>, ApiError> {
    if by_id {
        broker.topic_by_id(id).ok_or_else(|| {
            ApiError::new(
                ResponseError::UnknownTopicId,
                format!("no topic has id {id}"),
            )
        })
    } else {
        broker
            .topic(name)
            .ok_or_else(|| ApiError::unknown_topic(name))
    }
}

/// Partition `index` of `topic` on this broker as its leader, or Kafka's
/// answer why not: UNKNOWN_TOPIC_OR_PARTITION for an index the topic does
/// not have; FENCED_LEADER_EPOCH or UNKNOWN_LEADER_EPOCH for a request made
/// under an older or a newer leader epoch than this replica's
/// (`current_epoch` -1: not checked); NOT_LEADER_OR_FOLLOWER where this
/// broker does not lead the partition.
pub(crate) fn leader_partition(
    topic: &Topic,
    index: i32,
    current_epoch: i32,
) -> Result<Arc<Partition>, ApiError> {
    if index < 0 || index >= topic.partition_count() {
        return Err(ApiError::new(
            ResponseError::UnknownTopicOrPartition,
            format!("topic '{}' has no partition {index}", topic.name),
        ));
    }
    let Some(p) = topic.partition(index) else {
        return Err(ApiError::new(
            ResponseError::NotLeaderOrFollower,
            format!(
                "this broker holds no replica of {}-{index}; refresh metadata and retry",
                topic.name
            ),
        ));
    };
    if current_epoch >= 0 {
        let epoch = p.leader_epoch();
        if current_epoch < epoch {
            return Err(ApiError::new(
                ResponseError::FencedLeaderEpoch,
                format!(
                    "leader epoch {current_epoch} of {}-{index} is older than the current {epoch}",
                    topic.name
                ),
            ));
        }
        if current_epoch > epoch {
            return Err(ApiError::new(
                ResponseError::UnknownLeaderEpoch,
                format!(
                    "leader epoch {current_epoch} of {}-{index} is newer than this replica's {epoch}",
                    topic.name
                ),
            ));
        }
    }
    if !p.is_leader() {
        return Err(crate::error::not_leader(&p));
    }
    Ok(p)
}

/// The current leader and leader epoch of a partition, for the hints
/// Produce and Fetch give with NOT_LEADER_OR_FOLLOWER (KIP-951).
pub(crate) fn leader_hint(
    img: &strata_cluster::ClusterImage,
    topic_id: Uuid,
    index: i32,
) -> Option<(i32, i32)> {
    img.partition(topic_id, index)
        .map(|s| (s.value.leader, s.value.leader_epoch))
}

/// Dispatches one request, checking ACLs first when the authorizer is on.
pub async fn handle(broker: &Arc<Broker>, ctx: &RequestContext, request: RequestKind) -> Reply {
    if !broker.authorizer().enabled() {
        return serve(broker, ctx, request).await;
    }
    match authorize::gate(broker, ctx, request) {
        authorize::Gate::Deny(resp) => Reply::Now(resp),
        authorize::Gate::Close(why) => Reply::Close(why),
        authorize::Gate::Pass(request, None) => serve(broker, ctx, request).await,
        authorize::Gate::Pass(request, Some(patch)) => {
            authorize::apply(serve(broker, ctx, request).await, patch)
        }
    }
}

async fn serve(broker: &Arc<Broker>, ctx: &RequestContext, request: RequestKind) -> Reply {
    use RequestKind as R;
    let version = ctx.version;
    // Topic changes from another broker were forwarded once already.
    let forward = !ctx
        .client_id
        .starts_with(crate::cluster::PEER_CLIENT_PREFIX);
    match request {
        R::ApiVersions(_) => Reply::Now(ResponseKind::ApiVersions(api_versions())),
        R::Metadata(r) => Reply::Now(ResponseKind::Metadata(
            metadata::metadata(broker, ctx, r).await,
        )),
        R::Produce(r) => produce::produce(broker, ctx, r).await,
        R::Fetch(r) => fetch::fetch(broker, ctx, r),
        R::ListOffsets(r) => {
            let b = broker.clone();
            Reply::Later(Box::pin(async move {
                ResponseKind::ListOffsets(list_offsets::list_offsets(&b, r, version).await)
            }))
        }
        R::DeleteRecords(r) => {
            let b = broker.clone();
            Reply::Later(Box::pin(async move {
                ResponseKind::DeleteRecords(records::delete_records(&b, r).await)
            }))
        }
        R::CreateTopics(r) => Reply::Now(ResponseKind::CreateTopics(
            topics::create_topics(broker, r, version, forward).await,
        )),
        R::DeleteTopics(r) => Reply::Now(ResponseKind::DeleteTopics(
            topics::delete_topics(broker, r, forward).await,
        )),
        R::CreatePartitions(r) => Reply::Now(ResponseKind::CreatePartitions(
            topics::create_partitions(broker, r, forward).await,
        )),
        R::DescribeConfigs(r) => Reply::Now(ResponseKind::DescribeConfigs(
            configs::describe_configs(broker, r),
        )),
        R::AlterConfigs(r) => Reply::Now(ResponseKind::AlterConfigs(
            configs::alter_configs(broker, r, forward).await,
        )),
        R::IncrementalAlterConfigs(r) => Reply::Now(ResponseKind::IncrementalAlterConfigs(
            configs::incremental_alter_configs(broker, r, forward).await,
        )),
        R::OffsetForLeaderEpoch(r) => Reply::Now(ResponseKind::OffsetForLeaderEpoch(
            list_offsets::offsets_for_leader_epoch(broker, r),
        )),
        R::AlterPartitionReassignments(r) => Reply::Now(ResponseKind::AlterPartitionReassignments(
            reassign::alter_partition_reassignments(broker, r, version, forward).await,
        )),
        R::ListPartitionReassignments(r) => Reply::Now(ResponseKind::ListPartitionReassignments(
            reassign::list_partition_reassignments(broker, r),
        )),
        R::DescribeCluster(r) => Reply::Now(ResponseKind::DescribeCluster(
            metadata::describe_cluster(broker, ctx, r),
        )),
        R::FindCoordinator(r) => Reply::Now(ResponseKind::FindCoordinator(
            groups::find_coordinator(broker, ctx, r).await,
        )),
        R::JoinGroup(r) => groups::join_group(broker, ctx, r),
        R::SyncGroup(r) => groups::sync_group(broker, ctx, r),
        R::Heartbeat(r) => Reply::Now(ResponseKind::Heartbeat(groups::heartbeat(broker, r))),
        R::LeaveGroup(r) => Reply::Now(ResponseKind::LeaveGroup(groups::leave_group(
            broker, r, version,
        ))),
        R::OffsetCommit(r) => groups::offset_commit(broker, r),
        R::OffsetFetch(r) => Reply::Now(ResponseKind::OffsetFetch(groups::offset_fetch(
            broker, r, version,
        ))),
        R::DescribeGroups(r) => Reply::Now(ResponseKind::DescribeGroups(groups::describe_groups(
            broker, r, version,
        ))),
        R::ListGroups(r) => Reply::Now(ResponseKind::ListGroups(groups::list_groups(
            broker, r, version,
        ))),
        R::DeleteGroups(r) => groups::delete_groups(broker, r),
        R::OffsetDelete(r) => groups::offset_delete(broker, r),
        R::InitProducerId(r) => groups::init_producer_id(broker, r),
        R::ConsumerGroupHeartbeat(r) => Reply::Now(ResponseKind::ConsumerGroupHeartbeat(
            consumer_groups::heartbeat(broker, ctx, r, version),
        )),
        R::ConsumerGroupDescribe(r) => Reply::Now(ResponseKind::ConsumerGroupDescribe(
            consumer_groups::describe(broker, r),
        )),
        R::CreateAcls(r) => Reply::Now(ResponseKind::CreateAcls(
            security::create_acls(broker, ctx, r).await,
        )),
        R::DescribeAcls(r) => Reply::Now(ResponseKind::DescribeAcls(security::describe_acls(
            broker, ctx, r,
        ))),
        R::DeleteAcls(r) => Reply::Now(ResponseKind::DeleteAcls(
            security::delete_acls(broker, ctx, r).await,
        )),
        R::DescribeUserScramCredentials(r) => Reply::Now(
            ResponseKind::DescribeUserScramCredentials(security::describe_scram(broker, ctx, r)),
        ),
        R::AlterUserScramCredentials(r) => Reply::Now(ResponseKind::AlterUserScramCredentials(
            security::alter_scram(broker, ctx, r).await,
        )),
        other => Reply::Close(format!("no handler for {other:?}")),
    }
}

/// The ApiVersions answer, also sent (as v0) for an unsupported ApiVersions version.
pub fn api_versions() -> ApiVersionsResponse {
    let mut resp = ApiVersionsResponse::default();
    resp.api_keys = SUPPORTED_APIS
        .iter()
        .map(|(k, _)| {
            let (min, max) = supported_versions(*k).expect("listed");
            let mut v = ApiVersion::default();
            v.api_key = *k as i16;
            v.min_version = min;
            v.max_version = max;
            v
        })
        .collect();
    resp
}

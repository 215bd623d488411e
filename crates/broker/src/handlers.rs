//! Kafka request handlers. Each turns a decoded request into a [`Reply`]; the
//! connection writes replies in request order.
//!
//! Requests are applied in the order they arrive on a connection (a produce is
//! appended before the next request is read), but waiting, for an fsync or a
//! fetch long poll, happens in the reply future, so a pipelining client's
//! produces share fsyncs.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    api_versions_response::ApiVersion,
    create_topics_response::{CreatableTopicConfigs, CreatableTopicResult},
    delete_topics_response::DeletableTopicResult,
    describe_cluster_response::DescribeClusterBroker,
    describe_configs_response::{DescribeConfigsResourceResult, DescribeConfigsResult},
    fetch_response::{FetchableTopicResponse, PartitionData},
    list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse},
    metadata_response::{MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic},
    produce_response::{PartitionProduceResponse, TopicProduceResponse},
    AlterConfigsRequest, AlterConfigsResponse, ApiKey, ApiVersionsResponse, BrokerId,
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse, DescribeClusterRequest, DescribeClusterResponse,
    DescribeConfigsRequest, DescribeConfigsResponse, FetchRequest, FetchResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse, ListOffsetsRequest,
    ListOffsetsResponse, MetadataRequest, MetadataResponse, ProduceRequest, ProduceResponse,
    RequestKind, ResponseKind, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::RecordBatchDecoder;
use kafka_protocol::ResponseError;
use strata_log::batch;
use tracing::{debug, warn};
use uuid::Uuid;

use crate::error::ApiError;
use crate::group_api;
use crate::state::{Broker, Partition, Topic};
use crate::topic_config::{validate_entry, TopicConfig, TOPIC_CONFIG_KEYS};

/// What the connection does with a request.
#[allow(clippy::large_enum_variant)] // built once per request and moved at once
pub enum Reply {
    /// Send this response.
    Now(ResponseKind),
    /// Send this response when the future completes (after earlier replies).
    Later(Pin<Box<dyn Future<Output = ResponseKind> + Send>>),
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
}

/// The APIs Strata answers, with the highest version of each where it is
/// below what the codec knows (`None`: every version the codec knows).
/// OffsetCommit v10 and OffsetFetch v10 name topics by id for the new
/// consumer protocol, which Strata does not serve.
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

/// Dispatches one request.
pub async fn handle(broker: &Arc<Broker>, ctx: &RequestContext, request: RequestKind) -> Reply {
    use RequestKind as R;
    let version = ctx.version;
    match request {
        R::ApiVersions(_) => Reply::Now(ResponseKind::ApiVersions(api_versions())),
        R::Metadata(r) => Reply::Now(ResponseKind::Metadata(metadata(broker, r, version).await)),
        R::Produce(r) => produce(broker, r, version).await,
        R::Fetch(r) => fetch(broker, r, version),
        R::ListOffsets(r) => {
            let b = broker.clone();
            Reply::Later(Box::pin(async move {
                ResponseKind::ListOffsets(list_offsets(&b, r, version).await)
            }))
        }
        R::CreateTopics(r) => Reply::Now(ResponseKind::CreateTopics(
            create_topics(broker, r, version).await,
        )),
        R::DeleteTopics(r) => {
            Reply::Now(ResponseKind::DeleteTopics(delete_topics(broker, r).await))
        }
        R::CreatePartitions(r) => Reply::Now(ResponseKind::CreatePartitions(
            create_partitions(broker, r).await,
        )),
        R::DescribeConfigs(r) => {
            Reply::Now(ResponseKind::DescribeConfigs(describe_configs(broker, r)))
        }
        R::AlterConfigs(r) => {
            Reply::Now(ResponseKind::AlterConfigs(alter_configs(broker, r).await))
        }
        R::IncrementalAlterConfigs(r) => Reply::Now(ResponseKind::IncrementalAlterConfigs(
            incremental_alter_configs(broker, r).await,
        )),
        R::DescribeCluster(r) => {
            Reply::Now(ResponseKind::DescribeCluster(describe_cluster(broker, r)))
        }
        R::FindCoordinator(r) => Reply::Now(ResponseKind::FindCoordinator(
            group_api::find_coordinator(broker, r, version),
        )),
        R::JoinGroup(r) => group_api::join_group(broker, ctx, r),
        R::SyncGroup(r) => group_api::sync_group(broker, ctx, r),
        R::Heartbeat(r) => Reply::Now(ResponseKind::Heartbeat(group_api::heartbeat(broker, r))),
        R::LeaveGroup(r) => Reply::Now(ResponseKind::LeaveGroup(group_api::leave_group(
            broker, r, version,
        ))),
        R::OffsetCommit(r) => group_api::offset_commit(broker, r),
        R::OffsetFetch(r) => Reply::Now(ResponseKind::OffsetFetch(group_api::offset_fetch(
            broker, r, version,
        ))),
        R::DescribeGroups(r) => Reply::Now(ResponseKind::DescribeGroups(
            group_api::describe_groups(broker, r, version),
        )),
        R::ListGroups(r) => Reply::Now(ResponseKind::ListGroups(group_api::list_groups(
            broker, r, version,
        ))),
        R::DeleteGroups(r) => group_api::delete_groups(broker, r),
        R::OffsetDelete(r) => group_api::offset_delete(broker, r),
        R::InitProducerId(r) => group_api::init_producer_id(broker, r),
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

// ---------------------------------------------------------------- Metadata

fn partition_metadata(broker: &Broker, p: &Partition) -> MetadataResponsePartition {
    let node = BrokerId(broker.node_id());
    let mut m = MetadataResponsePartition::default();
    m.partition_index = p.index;
    m.leader_id = node;
    m.leader_epoch = p.leader_epoch;
    m.replica_nodes = vec![node];
    m.isr_nodes = vec![node];
    m
}

fn topic_metadata(broker: &Broker, t: &Topic) -> MetadataResponseTopic {
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

fn topic_error(name: Option<&str>, id: Uuid, code: ResponseError) -> MetadataResponseTopic {
    let mut m = MetadataResponseTopic::default();
    m.name = name.map(topic_name);
    m.topic_id = id;
    m.error_code = code.code();
    m
}

async fn metadata(broker: &Arc<Broker>, req: MetadataRequest, version: i16) -> MetadataResponse {
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

// ---------------------------------------------------------------- Produce

fn resolve_topic(
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

fn resolve_partition(topic: &Topic, index: i32) -> Result<Arc<Partition>, ApiError> {
    topic.partition(index).ok_or_else(|| {
        ApiError::new(
            ResponseError::UnknownTopicOrPartition,
            format!("topic '{}' has no partition {index}", topic.name),
        )
    })
}

struct ProduceSlot {
    topic: usize,
    index: i32,
    outcome: Result<(Arc<Partition>, strata_log::AppendInfo), ApiError>,
}

async fn produce(broker: &Arc<Broker>, req: ProduceRequest, version: i16) -> Reply {
    let acks = req.acks;
    if !matches!(acks, -1..=1) {
        let mut resp = ProduceResponse::default();
        for t in &req.topic_data {
            let mut tr = TopicProduceResponse::default();
            tr.name = t.name.clone();
            tr.topic_id = t.topic_id;
            for p in &t.partition_data {
                let mut pr = PartitionProduceResponse::default();
                pr.index = p.index;
                pr.error_code = ResponseError::InvalidRequiredAcks.code();
                tr.partition_responses.push(pr);
            }
            resp.responses.push(tr);
        }
        return Reply::Now(ResponseKind::Produce(resp));
    }
    if req.transactional_id.is_some() {
        let mut resp = ProduceResponse::default();
        for t in &req.topic_data {
            let mut tr = TopicProduceResponse::default();
            tr.name = t.name.clone();
            tr.topic_id = t.topic_id;
            for p in &t.partition_data {
                let mut pr = PartitionProduceResponse::default();
                pr.index = p.index;
                pr.error_code = ResponseError::TransactionalIdAuthorizationFailed.code();
                pr.error_message = Some(sb("transactions are not supported by this broker"));
                tr.partition_responses.push(pr);
            }
            resp.responses.push(tr);
        }
        return Reply::Now(ResponseKind::Produce(resp));
    }
    let by_id = version >= 13;
    // The local disk policy: refuse (retriably) rather than fill the disk.
    let disk = broker.check_disk();
    // Resolve and copy the records (the log patches offsets in place).
    type Work = (usize, i32, Result<(Arc<Partition>, BytesMut), ApiError>);
    let mut work: Vec<Work> = Vec::new();
    for (ti, t) in req.topic_data.iter().enumerate() {
        let topic = resolve_topic(broker, &t.name.0, t.topic_id, by_id);
        for p in &t.partition_data {
            let target = topic
                .clone()
                .and_then(|topic| resolve_partition(&topic, p.index))
                .and_then(|part| disk.clone().map(|()| part));
            let item = target.and_then(|part| match &p.records {
                Some(r) if !r.is_empty() => Ok((part, BytesMut::from(&r[..]))),
                _ => Err(ApiError::new(
                    ResponseError::CorruptMessage,
                    "produce without records",
                )),
            });
            work.push((ti, p.index, item));
        }
    }
    // Keep at most one segment per tiered partition waiting for upload
    // (see Partition::should_wait_for_upload), for a bounded time.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for (_, _, item) in &work {
        if let Ok((part, bytes)) = item {
            while part.should_wait_for_upload(bytes.len()) && tokio::time::Instant::now() < deadline
            {
                part.tier.wait_for_upload(Duration::from_millis(50)).await;
            }
        }
    }
    let slots = tokio::task::spawn_blocking(move || {
        work.into_iter()
            .map(|(topic, index, item)| {
                let outcome = item.and_then(|(part, mut bytes)| {
                    let info = part.append(&mut bytes).map_err(ApiError::from)?;
                    Ok((part, info))
                });
                ProduceSlot {
                    topic,
                    index,
                    outcome,
                }
            })
            .collect::<Vec<_>>()
    })
    .await;
    let slots = match slots {
        Ok(s) => s,
        Err(e) => return Reply::Close(format!("produce task failed: {e}")),
    };
    for s in &slots {
        if let Err(e) = &s.outcome {
            warn!(
                topic = %req.topic_data[s.topic].name.0,
                partition = s.index,
                error = e.code().to_string(),
                message = %e.message,
                "produce rejected"
            );
        }
    }
    let broker = broker.clone();
    let durable = sync_appended(broker.clone(), &slots);
    if acks == 0 {
        if slots.iter().any(|s| s.outcome.is_err()) {
            // Kafka's answer to a failed acks=0 produce: close the connection.
            return Reply::Close("acks=0 produce failed".into());
        }
        tokio::spawn(durable);
        return Reply::Nothing;
    }
    let topics: Vec<(TopicName, Uuid)> = req
        .topic_data
        .iter()
        .map(|t| (t.name.clone(), t.topic_id))
        .collect();
    Reply::Later(Box::pin(async move {
        let sync_error = durable.await;
        let mut resp = ProduceResponse::default();
        resp.responses = topics
            .into_iter()
            .map(|(name, topic_id)| {
                let mut tr = TopicProduceResponse::default();
                tr.name = name;
                tr.topic_id = topic_id;
                tr
            })
            .collect();
        for s in slots {
            let mut pr = PartitionProduceResponse::default();
            pr.index = s.index;
            match s.outcome {
                Ok((part, info)) => match sync_error
                    .iter()
                    .find(|(t, i, _)| *t == part.topic && *i == part.index)
                {
                    Some((_, _, e)) => {
                        pr.error_code = e.code();
                        pr.error_message = Some(sb(e.message.clone()));
                    }
                    None => {
                        pr.base_offset = info.base_offset;
                        pr.log_append_time_ms = info.log_append_time.unwrap_or(-1);
                        pr.log_start_offset = part.offsets().log_start;
                    }
                },
                Err(e) => {
                    pr.error_code = e.code();
                    pr.error_message = Some(sb(e.message));
                }
            }
            resp.responses[s.topic].partition_responses.push(pr);
        }
        ResponseKind::Produce(resp)
    }))
}

/// Makes appended data durable where the flush policy asks for it, then wakes
/// fetchers. Resolves to the partitions whose fsync failed.
fn sync_appended(
    broker: Arc<Broker>,
    slots: &[ProduceSlot],
) -> impl Future<Output = Vec<(String, i32, ApiError)>> + Send + 'static {
    let targets: Vec<(Arc<Partition>, i64)> = slots
        .iter()
        .filter_map(|s| s.outcome.as_ref().ok())
        .filter(|(p, _)| p.flush_every_batch())
        .map(|(p, info)| (p.clone(), info.last_offset + 1))
        .collect();
    async move {
        let mut failed = Vec::new();
        if !targets.is_empty() {
            let res = tokio::task::spawn_blocking(move || {
                targets
                    .into_iter()
                    .filter_map(|(p, end)| {
                        p.sync_to(end)
                            .err()
                            .map(|e| (p.topic.clone(), p.index, ApiError::storage(e)))
                    })
                    .collect::<Vec<_>>()
            })
            .await;
            failed = res.unwrap_or_default();
        }
        broker.notify_data();
        failed
    }
}

// ---------------------------------------------------------------- Fetch

struct FetchTarget {
    topic: usize,
    index: i32,
    partition: Result<Arc<Partition>, ApiError>,
    offset: i64,
    max_bytes: usize,
}

fn fetch(broker: &Arc<Broker>, req: FetchRequest, version: i16) -> Reply {
    // Fetch sessions are refused correctly: a full fetch gets session id 0
    // (no session created, per KIP-227 the client keeps sending full fetches)
    // and an incremental fetch is told its session does not exist.
    if version >= 7 && (req.session_id != 0 || req.session_epoch > 0) {
        let mut resp = FetchResponse::default();
        resp.error_code = ResponseError::FetchSessionIdNotFound.code();
        return Reply::Now(ResponseKind::Fetch(resp));
    }
    let by_id = version >= 13;
    let mut topics = Vec::new();
    let mut targets = Vec::new();
    for (ti, t) in req.topics.iter().enumerate() {
        let topic = resolve_topic(broker, &t.topic.0, t.topic_id, by_id);
        topics.push((t.topic.clone(), t.topic_id));
        for p in &t.partitions {
            targets.push(FetchTarget {
                topic: ti,
                index: p.partition,
                partition: topic
                    .clone()
                    .and_then(|topic| resolve_partition(&topic, p.partition)),
                offset: p.fetch_offset,
                max_bytes: p.partition_max_bytes.max(0) as usize,
            });
        }
    }
    let max_bytes = if req.max_bytes <= 0 {
        i32::MAX as usize
    } else {
        req.max_bytes as usize
    };
    let min_bytes = req.min_bytes.max(0) as usize;
    let max_wait = Duration::from_millis(req.max_wait_ms.clamp(0, 300_000) as u64);
    let broker = broker.clone();
    let targets = Arc::new(targets);
    Reply::Later(Box::pin(async move {
        let deadline = tokio::time::Instant::now() + max_wait;
        loop {
            let notified = broker.data_available.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (parts, bytes, errors) = match read_all(&broker, &targets, max_bytes).await {
                Ok(r) => r,
                Err(e) => {
                    warn!(error = %e, "fetch read task failed");
                    let mut resp = FetchResponse::default();
                    resp.error_code = ResponseError::UnknownServerError.code();
                    return ResponseKind::Fetch(resp);
                }
            };
            let done = bytes >= min_bytes || errors || tokio::time::Instant::now() >= deadline;
            if done {
                let mut resp = FetchResponse::default();
                resp.session_id = 0;
                resp.responses = topics
                    .iter()
                    .map(|(name, id)| {
                        let mut tr = FetchableTopicResponse::default();
                        tr.topic = name.clone();
                        tr.topic_id = *id;
                        tr
                    })
                    .collect();
                for (ti, pd) in parts {
                    let n = pd.records.as_ref().map_or(0, |r| r.len());
                    if n > 0 {
                        let topic = resp.responses[ti].topic.0.to_string();
                        metrics::counter!("strata_topic_bytes_out_total", "topic" => topic)
                            .increment(n as u64);
                    }
                    resp.responses[ti].partitions.push(pd);
                }
                return ResponseKind::Fetch(resp);
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }))
}

/// A partition answer, or a cold read still to do for it.
enum Slot {
    Done(PartitionData),
    Cold {
        pd: PartitionData,
        partition: Arc<Partition>,
        offset: i64,
        limit: usize,
    },
}

/// Reads every fetched partition: local ones in one blocking pass, those
/// below the local log start from the object tier concurrently; then applies
/// the response byte limit in request order (the first partition with data
/// always keeps its first batch). Returns the answers, the bytes and whether
/// any partition has an error.
async fn read_all(
    broker: &Arc<Broker>,
    targets: &Arc<Vec<FetchTarget>>,
    max_bytes: usize,
) -> Result<(Vec<(usize, PartitionData)>, usize, bool), tokio::task::JoinError> {
    let t = targets.clone();
    let mut slots = tokio::task::spawn_blocking(move || read_partitions(&t, max_bytes)).await?;
    let cold: Vec<usize> = slots
        .iter()
        .enumerate()
        .filter(|(_, s)| matches!(s.1, Slot::Cold { .. }))
        .map(|(i, _)| i)
        .collect();
    if !cold.is_empty() {
        let timeout = Duration::from_millis(broker.config().tier.request_timeout_ms);
        let reads = cold.iter().map(|&i| {
            let (partition, offset, limit) = match &slots[i].1 {
                Slot::Cold {
                    partition,
                    offset,
                    limit,
                    ..
                } => (partition.clone(), *offset, *limit),
                Slot::Done(_) => unreachable!("filtered"),
            };
            let tier = broker.tier().clone();
            async move {
                let id = partition.remote_id();
                let r = tokio::time::timeout(timeout, tier.read(&id, offset, limit, true)).await;
                (i, r)
            }
        });
        for (i, r) in futures::future::join_all(reads).await {
            let Slot::Cold {
                mut pd,
                partition,
                offset,
                ..
            } = std::mem::replace(&mut slots[i].1, Slot::Done(PartitionData::default()))
            else {
                unreachable!("filtered");
            };
            match r {
                Ok(Ok(bytes)) => pd.records = Some(bytes),
                Ok(Err(e)) => {
                    warn!(topic = %partition.topic, partition = partition.index, offset, error = %e, "cold read failed");
                    pd.error_code = ResponseError::KafkaStorageError.code();
                    pd.records = Some(Bytes::new());
                }
                Err(_) => {
                    warn!(topic = %partition.topic, partition = partition.index, offset, "cold read timed out");
                    pd.error_code = ResponseError::KafkaStorageError.code();
                    pd.records = Some(Bytes::new());
                }
            }
            slots[i].1 = Slot::Done(pd);
        }
    }
    let mut total = 0usize;
    let mut any_error = false;
    let mut out = Vec::with_capacity(slots.len());
    for (topic, slot) in slots {
        let Slot::Done(mut pd) = slot else {
            unreachable!("cold reads are done");
        };
        if pd.error_code != 0 {
            any_error = true;
        }
        let len = pd.records.as_ref().map_or(0, |r| r.len());
        if len > 0 && total > 0 && total + len > max_bytes {
            pd.records = Some(Bytes::new());
        } else {
            total += len;
        }
        out.push((topic, pd));
    }
    Ok((out, total, any_error))
}

/// Reads the fetched partitions held locally; those only the object tier
/// holds become cold slots. Blocking.
fn read_partitions(targets: &[FetchTarget], max_bytes: usize) -> Vec<(usize, Slot)> {
    let mut out = Vec::with_capacity(targets.len());
    let mut total = 0usize;
    for t in targets {
        let mut pd = PartitionData::default();
        pd.partition_index = t.index;
        pd.aborted_transactions = None;
        let mut cold: Option<(Arc<Partition>, usize)> = None;
        let result = t.partition.clone().and_then(|p| {
            let offsets = p.offsets();
            pd.high_watermark = offsets.high_watermark;
            pd.last_stable_offset = offsets.high_watermark;
            pd.log_start_offset = offsets.log_start;
            if t.offset < offsets.log_start || t.offset > offsets.log_end {
                return Err(ApiError::new(
                    ResponseError::OffsetOutOfRange,
                    format!(
                        "offset {} is outside [{}, {}]",
                        t.offset, offsets.log_start, offsets.log_end
                    ),
                ));
            }
            if t.offset >= offsets.high_watermark || total >= max_bytes {
                return Ok(Bytes::new());
            }
            let limit = t.max_bytes.min(max_bytes - total);
            if t.offset < offsets.local_start {
                if offsets
                    .remote
                    .is_some_and(|(s, e)| s <= t.offset && t.offset < e)
                {
                    cold = Some((p.clone(), limit));
                    return Ok(Bytes::new());
                }
                return Err(ApiError::new(
                    ResponseError::OffsetOutOfRange,
                    format!(
                        "offset {} is neither on local disk nor in the object tier",
                        t.offset
                    ),
                ));
            }
            // The first batch of the response goes out whole even if larger
            // than the limits, so a consumer can always make progress (KIP-74).
            let min_one = total == 0;
            let plan = p
                .with_log(|l| l.read_plan(t.offset))
                .map_err(ApiError::from)?;
            plan.read(limit, min_one).map_err(ApiError::storage)
        });
        match (result, cold) {
            (Ok(_), Some((partition, limit))) => {
                out.push((
                    t.topic,
                    Slot::Cold {
                        pd,
                        partition,
                        offset: t.offset,
                        limit,
                    },
                ));
                continue;
            }
            (Ok(bytes), None) => {
                total += bytes.len();
                pd.records = Some(bytes);
            }
            (Err(e), _) => {
                debug!(partition = t.index, error = %e.message, "fetch partition error");
                pd.error_code = e.code();
                pd.records = Some(Bytes::new());
            }
        }
        out.push((t.topic, Slot::Done(pd)));
    }
    out
}

// ---------------------------------------------------------------- ListOffsets

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;
const LATEST_TIERED: i64 = -5;

/// The first record of `batch_bytes` with a timestamp at or after `ts`.
fn first_record_at_or_after(batch_bytes: &Bytes, ts: i64) -> Option<(i64, i64)> {
    let h = batch::parse_header(batch_bytes).ok()?;
    if h.log_append_time() {
        return Some((h.base_offset, h.max_timestamp));
    }
    if let Some(stamps) = batch::record_timestamps(batch_bytes) {
        return stamps
            .iter()
            .enumerate()
            .find(|(_, &t)| t >= ts)
            .map(|(i, &t)| (h.base_offset + i as i64, t));
    }
    let mut buf = batch_bytes.clone();
    let set = RecordBatchDecoder::decode(&mut buf).ok()?;
    set.records
        .iter()
        .find(|r| r.timestamp >= ts)
        .map(|r| (r.offset, r.timestamp))
}

/// Runs a blocking lookup on the partition's log.
async fn on_log<T: Send + 'static>(
    p: &Arc<Partition>,
    f: impl FnOnce(&mut strata_log::Log) -> Result<T, strata_log::Error> + Send + 'static,
) -> Result<T, ApiError> {
    let p = p.clone();
    tokio::task::spawn_blocking(move || p.with_log(f))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::from)
}

fn cold_error(p: &Partition, e: strata_tier::Error) -> ApiError {
    warn!(topic = %p.topic, partition = p.index, error = %e, "object tier lookup failed");
    ApiError::new(
        ResponseError::KafkaStorageError,
        format!("object tier: {e}"),
    )
}

pub(crate) async fn lookup_offset(
    broker: &Arc<Broker>,
    p: &Arc<Partition>,
    ts: i64,
) -> Result<(i64, i64), ApiError> {
    let offsets = p.offsets();
    match ts {
        LATEST => Ok((offsets.high_watermark, -1)),
        EARLIEST => Ok((offsets.log_start, -1)),
        EARLIEST_LOCAL => Ok((offsets.local_start, -1)),
        // KIP-1005: the highest offset the object tier holds.
        LATEST_TIERED => Ok((offsets.remote.map_or(-1, |(_, end)| end - 1), -1)),
        MAX_TIMESTAMP => {
            let local = on_log(p, |l| l.find_batch_with_max_timestamp())
                .await?
                .and_then(|b| {
                    let h = batch::parse_header(&b).ok()?;
                    first_record_at_or_after(&b, h.max_timestamp)
                });
            let remote_max = broker
                .tier()
                .loaded_partition(p.topic_id, p.index)
                .map(|rp| {
                    let m = rp.manifest();
                    let chunks = m.chunks.iter().map(|c| c.max_timestamp);
                    chunks
                        .chain(m.segments.iter().map(|s| s.max_timestamp))
                        .max()
                        .unwrap_or(-1)
                })
                .unwrap_or(-1);
            if remote_max >= 0 && local.is_none_or(|(_, t)| remote_max > t) {
                let b = broker
                    .tier()
                    .batch_for_timestamp(&p.remote_id(), remote_max)
                    .await
                    .map_err(|e| cold_error(p, e))?;
                if let Some(found) = b.and_then(|b| first_record_at_or_after(&b, remote_max)) {
                    return Ok(found);
                }
            }
            Ok(local.unwrap_or((-1, -1)))
        }
        ts if ts < 0 => Err(ApiError::new(
            ResponseError::InvalidRequest,
            format!("unknown special timestamp {ts}"),
        )),
        ts => {
            // The object tier holds the older history: look there first.
            if offsets
                .remote
                .is_some_and(|(start, _)| start < offsets.local_start)
            {
                let b = broker
                    .tier()
                    .batch_for_timestamp(&p.remote_id(), ts)
                    .await
                    .map_err(|e| cold_error(p, e))?;
                if let Some(b) = b {
                    let base = batch::parse_header(&b)
                        .map(|h| h.base_offset)
                        .unwrap_or(i64::MAX);
                    if base < offsets.local_start {
                        if let Some(found) = first_record_at_or_after(&b, ts) {
                            return Ok(found);
                        }
                    }
                }
            }
            let batch = on_log(p, move |l| l.find_batch_by_timestamp(ts)).await?;
            Ok(batch
                .and_then(|b| first_record_at_or_after(&b, ts))
                .unwrap_or((-1, -1)))
        }
    }
}

async fn list_offsets(
    broker: &Arc<Broker>,
    req: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    let mut resp = ListOffsetsResponse::default();
    for t in &req.topics {
        let topic = broker
            .topic(&t.name.0)
            .ok_or_else(|| ApiError::unknown_topic(&t.name.0));
        let mut tr = ListOffsetsTopicResponse::default();
        tr.name = t.name.clone();
        for p in &t.partitions {
            let mut pr = ListOffsetsPartitionResponse::default();
            pr.partition_index = p.partition_index;
            let part = topic
                .clone()
                .and_then(|topic| resolve_partition(&topic, p.partition_index));
            let found = match part {
                Ok(part) => lookup_offset(broker, &part, p.timestamp)
                    .await
                    .map(|r| (r, part.leader_epoch)),
                Err(e) => Err(e),
            };
            match found {
                Ok(((offset, ts), epoch)) => {
                    pr.offset = offset;
                    pr.timestamp = ts;
                    if version >= 4 {
                        pr.leader_epoch = epoch;
                    }
                }
                Err(e) => {
                    pr.error_code = e.code();
                    pr.offset = -1;
                    pr.timestamp = -1;
                }
            }
            tr.partitions.push(pr);
        }
        resp.topics.push(tr);
    }
    resp
}

// ---------------------------------------------------------------- Topics

fn config_pairs<'a>(
    pairs: impl IntoIterator<Item = (&'a StrBytes, Option<&'a StrBytes>)>,
) -> Result<TopicConfig, ApiError> {
    let mut map = std::collections::BTreeMap::new();
    for (k, v) in pairs {
        let v = v.ok_or_else(|| {
            ApiError::new(
                ResponseError::InvalidConfig,
                format!("config '{}' has a null value", k.as_str()),
            )
        })?;
        validate_entry(k, v).map_err(|e| ApiError::new(ResponseError::InvalidConfig, e))?;
        map.insert(k.to_string(), v.to_string());
    }
    Ok(TopicConfig(map))
}

async fn create_topics(
    broker: &Arc<Broker>,
    req: CreateTopicsRequest,
    version: i16,
) -> CreateTopicsResponse {
    let mut resp = CreateTopicsResponse::default();
    let mut seen = std::collections::HashSet::new();
    for t in req.topics {
        let name = t.name.0.to_string();
        let mut r = CreatableTopicResult::default();
        r.name = t.name.clone();
        let duplicate = !seen.insert(name.clone());
        let outcome = async {
            if duplicate {
                return Err(ApiError::new(
                    ResponseError::InvalidRequest,
                    format!("topic '{name}' appears more than once in the request"),
                ));
            }
            if t.replication_factor != -1 && t.replication_factor != 1 {
                return Err(ApiError::new(
                    ResponseError::InvalidReplicationFactor,
                    format!(
                        "replication factor {} is larger than the 1 available broker; use 1 or -1",
                        t.replication_factor
                    ),
                ));
            }
            let mut partitions = t.num_partitions;
            if !t.assignments.is_empty() {
                if t.assignments
                    .iter()
                    .any(|a| a.broker_ids != [BrokerId(broker.node_id())])
                {
                    return Err(ApiError::new(
                        ResponseError::InvalidReplicaAssignment,
                        format!(
                            "replicas can only be assigned to broker {}",
                            broker.node_id()
                        ),
                    ));
                }
                partitions = t.assignments.len() as i32;
            }
            let configs = config_pairs(t.configs.iter().map(|c| (&c.name, c.value.as_ref())))?;
            broker
                .create_topic(&name, partitions, configs, req.validate_only)
                .await
        }
        .await;
        match outcome {
            Ok(topic) => {
                r.topic_id = topic.id;
                r.num_partitions = if req.validate_only {
                    t.num_partitions.max(broker.config().default_partitions)
                } else {
                    topic.partition_count()
                };
                r.replication_factor = 1;
                if version >= 5 {
                    let cfg = topic.configs();
                    r.configs = Some(
                        TOPIC_CONFIG_KEYS
                            .iter()
                            .map(|k| {
                                let (value, is_default) =
                                    cfg.value_of(k.name, &broker.config().log);
                                let mut c = CreatableTopicConfigs::default();
                                c.name = sb(k.name);
                                c.value = Some(sb(value));
                                c.config_source = if is_default { 5 } else { 1 };
                                c
                            })
                            .collect(),
                    );
                }
            }
            Err(e) => {
                warn!(topic = %name, error = %e.message, "create topic refused");
                r.error_code = e.code();
                r.error_message = Some(sb(e.message));
                r.num_partitions = -1;
                r.replication_factor = -1;
            }
        }
        resp.topics.push(r);
    }
    resp
}

async fn delete_topics(broker: &Arc<Broker>, req: DeleteTopicsRequest) -> DeleteTopicsResponse {
    let mut wanted: Vec<(Option<String>, Uuid)> = req
        .topic_names
        .iter()
        .map(|n| (Some(n.0.to_string()), Uuid::nil()))
        .collect();
    wanted.extend(
        req.topics
            .iter()
            .map(|t| (t.name.as_ref().map(|n| n.0.to_string()), t.topic_id)),
    );
    let mut resp = DeleteTopicsResponse::default();
    for (name, id) in wanted {
        let mut r = DeletableTopicResult::default();
        r.topic_id = id;
        let resolved = match &name {
            Some(n) => broker
                .topic(n)
                .map(|t| t.name.clone())
                .ok_or_else(|| ApiError::unknown_topic(n)),
            None => broker
                .topic_by_id(id)
                .map(|t| t.name.clone())
                .ok_or_else(|| {
                    ApiError::new(
                        ResponseError::UnknownTopicId,
                        format!("no topic has id {id}"),
                    )
                }),
        };
        r.name = name.as_deref().map(topic_name);
        match resolved {
            Ok(n) => match broker.delete_topic(&n).await {
                Ok(deleted_id) => {
                    r.name = Some(topic_name(&n));
                    r.topic_id = deleted_id;
                }
                Err(e) => {
                    r.error_code = e.code();
                    r.error_message = Some(sb(e.message));
                }
            },
            Err(e) => {
                r.error_code = e.code();
                r.error_message = Some(sb(e.message));
            }
        }
        resp.responses.push(r);
    }
    resp
}

async fn create_partitions(
    broker: &Arc<Broker>,
    req: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let mut resp = CreatePartitionsResponse::default();
    for t in req.topics {
        let mut r = kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult::default();
        r.name = t.name.clone();
        if let Err(e) = broker
            .create_partitions(&t.name.0, t.count, req.validate_only)
            .await
        {
            r.error_code = e.code();
            r.error_message = Some(sb(e.message));
        }
        resp.results.push(r);
    }
    resp
}

// ---------------------------------------------------------------- Configs

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
const SOURCE_DYNAMIC_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;
const TYPE_STRING: i8 = 2;
const TYPE_INT: i8 = 3;
const TYPE_LONG: i8 = 5;
const TYPE_LIST: i8 = 7;
const TYPE_BOOLEAN: i8 = 1;

fn topic_config_type(name: &str) -> i8 {
    match name {
        "cleanup.policy" => TYPE_LIST,
        "compression.type"
        | "message.timestamp.type"
        | "lake.value.format"
        | "lake.value.schema"
        | "lake.value.schema.file" => TYPE_STRING,
        "index.interval.bytes" | "max.message.bytes" | "segment.bytes" => TYPE_INT,
        "remote.storage.enable" | "lake.enable" => TYPE_BOOLEAN,
        _ => TYPE_LONG,
    }
}

fn broker_configs(broker: &Broker) -> Vec<(&'static str, String, i8)> {
    let c = broker.config();
    vec![
        (
            "auto.create.topics.enable",
            c.auto_create_topics.to_string(),
            TYPE_BOOLEAN,
        ),
        ("broker.id", c.node_id.to_string(), TYPE_INT),
        (
            "log.index.interval.bytes",
            c.log.index_interval_bytes.to_string(),
            TYPE_INT,
        ),
        (
            "log.message.timestamp.type",
            c.log.message_timestamp_type.clone(),
            TYPE_STRING,
        ),
        (
            "log.retention.bytes",
            c.log.retention_bytes.to_string(),
            TYPE_LONG,
        ),
        (
            "log.retention.ms",
            c.log.retention_ms.to_string(),
            TYPE_LONG,
        ),
        ("log.roll.ms", c.log.segment_ms.to_string(), TYPE_LONG),
        (
            "log.segment.bytes",
            c.log.segment_bytes.to_string(),
            TYPE_INT,
        ),
        (
            "message.max.bytes",
            c.log.max_message_bytes.to_string(),
            TYPE_INT,
        ),
        ("num.partitions", c.default_partitions.to_string(), TYPE_INT),
        (
            "socket.request.max.bytes",
            c.socket_request_max_bytes.to_string(),
            TYPE_INT,
        ),
    ]
}

fn describe_configs(broker: &Arc<Broker>, req: DescribeConfigsRequest) -> DescribeConfigsResponse {
    let mut resp = DescribeConfigsResponse::default();
    for res in req.resources {
        let mut r = DescribeConfigsResult::default();
        r.resource_type = res.resource_type;
        r.resource_name = res.resource_name.clone();
        let wanted = |name: &str| {
            res.configuration_keys
                .as_ref()
                .is_none_or(|keys| keys.iter().any(|k| k.as_str() == name))
        };
        let entry =
            |name: &str, value: String, source: i8, read_only: bool, ty: i8, doc: Option<&str>| {
                let mut c = DescribeConfigsResourceResult::default();
                c.name = sb(name);
                c.value = Some(sb(value));
                c.config_source = source;
                c.read_only = read_only;
                c.config_type = ty;
                c.documentation = if req.include_documentation {
                    doc.map(sb)
                } else {
                    None
                };
                c
            };
        match res.resource_type {
            RESOURCE_TOPIC => match broker.topic(&res.resource_name) {
                Some(t) => {
                    let cfg = t.configs();
                    r.configs = TOPIC_CONFIG_KEYS
                        .iter()
                        .filter(|k| wanted(k.name))
                        .map(|k| {
                            let (value, is_default) = cfg.value_of(k.name, &broker.config().log);
                            let source = if is_default {
                                SOURCE_DEFAULT
                            } else {
                                SOURCE_DYNAMIC_TOPIC
                            };
                            entry(
                                k.name,
                                value,
                                source,
                                false,
                                topic_config_type(k.name),
                                Some(k.doc),
                            )
                        })
                        .collect();
                }
                None => {
                    r.error_code = ResponseError::UnknownTopicOrPartition.code();
                    r.error_message = Some(sb(format!(
                        "topic '{}' does not exist",
                        res.resource_name.as_str()
                    )));
                }
            },
            RESOURCE_BROKER => {
                let name = res.resource_name.as_str();
                if !name.is_empty() && name != broker.node_id().to_string() {
                    r.error_code = ResponseError::InvalidRequest.code();
                    r.error_message = Some(sb(format!(
                        "this is broker {}, not '{name}'",
                        broker.node_id()
                    )));
                } else {
                    r.configs = broker_configs(broker)
                        .into_iter()
                        .filter(|(k, _, _)| wanted(k))
                        .map(|(k, v, ty)| entry(k, v, SOURCE_STATIC_BROKER, true, ty, None))
                        .collect();
                }
            }
            other => {
                r.error_code = ResponseError::InvalidRequest.code();
                r.error_message = Some(sb(format!(
                    "resource type {other} has no configs here; use 2 (topic) or 4 (broker)"
                )));
            }
        }
        resp.results.push(r);
    }
    resp
}

fn broker_configs_are_static() -> ApiError {
    ApiError::new(
        ResponseError::InvalidRequest,
        "broker configs are static: set them in the config file and restart",
    )
}

async fn alter_configs(broker: &Arc<Broker>, req: AlterConfigsRequest) -> AlterConfigsResponse {
    let mut resp = AlterConfigsResponse::default();
    for res in req.resources {
        let mut r =
            kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse::default(
            );
        r.resource_type = res.resource_type;
        r.resource_name = res.resource_name.clone();
        let outcome = async {
            match res.resource_type {
                RESOURCE_TOPIC => {
                    // AlterConfigs replaces the whole set: keys not given return to defaults.
                    let configs = config_pairs(
                        res.configs
                            .iter()
                            .filter(|c| c.value.is_some())
                            .map(|c| (&c.name, c.value.as_ref())),
                    )?;
                    broker
                        .set_topic_configs(&res.resource_name, configs, req.validate_only)
                        .await
                }
                RESOURCE_BROKER => Err(broker_configs_are_static()),
                other => Err(ApiError::new(
                    ResponseError::InvalidRequest,
                    format!("resource type {other} has no configs"),
                )),
            }
        }
        .await;
        if let Err(e) = outcome {
            r.error_code = e.code();
            r.error_message = Some(sb(e.message));
        }
        resp.responses.push(r);
    }
    resp
}

const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
const OP_APPEND: i8 = 2;
const OP_SUBTRACT: i8 = 3;

async fn incremental_alter_configs(
    broker: &Arc<Broker>,
    req: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let mut resp = IncrementalAlterConfigsResponse::default();
    for res in req.resources {
        let mut r =
            kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse::default();
        r.resource_type = res.resource_type;
        r.resource_name = res.resource_name.clone();
        let outcome = async {
            match res.resource_type {
                RESOURCE_TOPIC => {
                    let topic = broker
                        .topic(&res.resource_name)
                        .ok_or_else(|| ApiError::unknown_topic(&res.resource_name))?;
                    let mut map = topic.configs().0;
                    for c in &res.configs {
                        let name = c.name.to_string();
                        let invalid = |m: String| ApiError::new(ResponseError::InvalidConfig, m);
                        if !TOPIC_CONFIG_KEYS.iter().any(|k| k.name == name) {
                            return Err(invalid(format!("unknown topic config '{name}'")));
                        }
                        let value = c.value.as_ref().map(|v| v.to_string());
                        match c.config_operation {
                            OP_SET => {
                                let v = value.ok_or_else(|| invalid(format!("SET of '{name}' needs a value")))?;
                                map.insert(name, v);
                            }
                            OP_DELETE => {
                                map.remove(&name);
                            }
                            OP_APPEND | OP_SUBTRACT if topic_config_type(&name) == TYPE_LIST => {
                                let current = topic.configs().value_of(&name, &broker.config().log).0;
                                let mut items: Vec<String> =
                                    current.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect();
                                for v in value.unwrap_or_default().split(',').filter(|s| !s.is_empty()) {
                                    if c.config_operation == OP_APPEND {
                                        if !items.iter().any(|i| i == v) {
                                            items.push(v.to_string());
                                        }
                                    } else {
                                        items.retain(|i| i != v);
                                    }
                                }
                                map.insert(name, items.join(","));
                            }
                            OP_APPEND | OP_SUBTRACT => {
                                return Err(invalid(format!("APPEND and SUBTRACT apply to list configs; '{name}' is not one")));
                            }
                            op => return Err(ApiError::new(ResponseError::InvalidRequest, format!("unknown config operation {op}"))),
                        }
                    }
                    let configs = TopicConfig::from_pairs(map.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                        .map_err(|e| ApiError::new(ResponseError::InvalidConfig, e))?;
                    broker.set_topic_configs(&res.resource_name, configs, req.validate_only).await
                }
                RESOURCE_BROKER => Err(broker_configs_are_static()),
                other => Err(ApiError::new(ResponseError::InvalidRequest, format!("resource type {other} has no configs"))),
            }
        }
        .await;
        if let Err(e) = outcome {
            r.error_code = e.code();
            r.error_message = Some(sb(e.message));
        }
        resp.responses.push(r);
    }
    resp
}

// ---------------------------------------------------------------- Cluster

fn describe_cluster(broker: &Arc<Broker>, req: DescribeClusterRequest) -> DescribeClusterResponse {
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

//! Produce: resolve, append, acknowledge.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use kafka_protocol::messages::{
    produce_response::{
        LeaderIdAndEpoch, NodeEndpoint, PartitionProduceResponse, TopicProduceResponse,
    },
    BrokerId, ProduceRequest, ProduceResponse, ResponseKind, TopicName,
};
use kafka_protocol::ResponseError;
use tracing::warn;
use uuid::Uuid;

use crate::appender;
use crate::error::ApiError;
use crate::state::{Broker, Partition};

use super::{leader_hint, leader_partition, resolve_topic, sb, Reply};

pub(super) struct ProduceSlot {
    topic: usize,
    index: i32,
    outcome: Result<(Arc<Partition>, strata_log::AppendInfo), ApiError>,
    /// The leader epoch the records were appended under.
    leader_epoch: i32,
}

/// The same error for every partition of a request.
fn refuse_all(req: &ProduceRequest, code: ResponseError, message: Option<&str>) -> ProduceResponse {
    let mut resp = ProduceResponse::default();
    for t in &req.topic_data {
        let mut tr = TopicProduceResponse::default();
        tr.name = t.name.clone();
        tr.topic_id = t.topic_id;
        for p in &t.partition_data {
            let mut pr = PartitionProduceResponse::default();
            pr.index = p.index;
            pr.error_code = code.code();
            pr.error_message = message.map(sb);
            tr.partition_responses.push(pr);
        }
        resp.responses.push(tr);
    }
    resp
}

pub(super) async fn produce(
    broker: &Arc<Broker>,
    ctx: &super::RequestContext,
    req: ProduceRequest,
) -> Reply {
    let version = ctx.version;
    let listener = ctx.identity.listener.clone();
    let acks = req.acks;
    if !matches!(acks, -1..=1) {
        return Reply::Now(ResponseKind::Produce(refuse_all(
            &req,
            ResponseError::InvalidRequiredAcks,
            None,
        )));
    }
    if req.transactional_id.is_some() {
        return Reply::Now(ResponseKind::Produce(refuse_all(
            &req,
            ResponseError::TransactionalIdAuthorizationFailed,
            Some("transactions are not supported by this broker"),
        )));
    }
    let by_id = version >= 13;
    // The local disk policy: refuse (retriably) rather than fill the disk.
    let disk = broker.check_disk();
    // Resolve and copy the records (the log patches offsets in place).
    type Work = (
        usize,
        i32,
        Result<(Arc<Partition>, i32, BytesMut), ApiError>,
    );
    let mut work: Vec<Work> = Vec::new();
    let mut topic_ids = Vec::with_capacity(req.topic_data.len());
    for (ti, t) in req.topic_data.iter().enumerate() {
        let topic = resolve_topic(broker, &t.name.0, t.topic_id, by_id);
        topic_ids.push(topic.as_ref().map_or(t.topic_id, |t| t.id));
        for p in &t.partition_data {
            let target = topic
                .clone()
                .and_then(|topic| leader_partition(&topic, p.index, -1))
                .and_then(|part| disk.clone().map(|()| part))
                .and_then(|part| {
                    if acks == -1 {
                        part.check_min_isr()?;
                    }
                    Ok(part)
                });
            let item = target.and_then(|part| match &p.records {
                Some(r) if !r.is_empty() => {
                    let epoch = part.leader_epoch();
                    Ok((part, epoch, BytesMut::from(&r[..])))
                }
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
        if let Ok((part, _, bytes)) = item {
            while part.should_wait_for_upload(bytes.len()) && tokio::time::Instant::now() < deadline
            {
                part.tier.wait_for_upload(Duration::from_millis(50)).await;
            }
        }
    }
    // Queue the appends; the connection reads on while they run.
    let mut appends = appender::Submission::appends();
    let queued: Vec<Queued> = work
        .into_iter()
        .map(|(topic, index, item)| {
            let item = item.map(|(part, epoch, bytes)| {
                let pending = appends.append(&part, bytes, epoch);
                (part, epoch, pending)
            });
            (topic, index, item)
        })
        .collect();
    appends.start();
    let waits = acks == -1
        || queued
            .iter()
            .any(|(_, _, q)| q.as_ref().is_ok_and(|(p, _, _)| p.flush_every_batch()));
    // For the log only: shares the request's bytes rather than copying them.
    let names: Vec<TopicName> = req.topic_data.iter().map(|t| t.name.clone()).collect();
    let appended = async move {
        let slots = collect_appends(queued).await;
        for s in &slots {
            if let Err(e) = &s.outcome {
                warn!(
                    topic = %names[s.topic].0,
                    partition = s.index,
                    error = e.code().to_string(),
                    message = %e.message,
                    "produce rejected"
                );
            }
        }
        slots
    };
    let broker = broker.clone();
    if acks == 0 {
        return Reply::Deferred(Box::pin(async move {
            let slots = appended.await;
            tokio::spawn(sync_appended(broker, &slots));
            if slots.iter().any(|s| s.outcome.is_err()) {
                // Kafka's answer to a failed acks=0 produce: close the connection.
                Reply::Close("acks=0 produce failed".into())
            } else {
                Reply::Nothing
            }
        }));
    }
    let topics: Vec<(TopicName, Uuid)> = req
        .topic_data
        .iter()
        .map(|t| (t.name.clone(), t.topic_id))
        .collect();
    let timeout = Duration::from_millis(req.timeout_ms.clamp(0, 300_000) as u64);
    let answer = async move {
        let slots = appended.await;
        let mut sync_error = sync_appended(broker.clone(), &slots).await;
        if acks == -1 {
            // acks=all: every in-sync replica has the records.
            let deadline = tokio::time::Instant::now() + timeout;
            let waits = slots.iter().filter_map(|s| {
                let (part, info) = s.outcome.as_ref().ok()?;
                if sync_error
                    .iter()
                    .any(|(t, i, _)| *t == part.topic && *i == part.index)
                {
                    return None;
                }
                let (part, end, epoch) = (part.clone(), info.last_offset + 1, s.leader_epoch);
                Some(async move {
                    part.wait_committed(end, epoch, deadline)
                        .await
                        .err()
                        .map(|e| (part.topic.clone(), part.index, e))
                })
            });
            sync_error.extend(futures::future::join_all(waits).await.into_iter().flatten());
        }
        let img = broker.image();
        let mut hinted = std::collections::BTreeSet::new();
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
                    if e.code == ResponseError::NotLeaderOrFollower && version >= 10 {
                        if let Some((leader, epoch)) =
                            leader_hint(&img, topic_ids[s.topic], s.index)
                        {
                            let mut hint = LeaderIdAndEpoch::default();
                            hint.leader_id = BrokerId(leader);
                            hint.leader_epoch = epoch;
                            pr.current_leader = hint;
                            hinted.insert(leader);
                        }
                    }
                }
            }
            resp.responses[s.topic].partition_responses.push(pr);
        }
        resp.node_endpoints = hinted
            .into_iter()
            .filter_map(|id| img.brokers.get(&id))
            .map(|b| {
                let mut n = NodeEndpoint::default();
                let (host, port) = b.endpoint(&listener);
                n.node_id = BrokerId(b.id);
                n.host = sb(host);
                n.port = port;
                n.rack = b.rack.clone().map(sb);
                n
            })
            .collect();
        ResponseKind::Produce(resp)
    };
    if !waits {
        return Reply::Later(Box::pin(answer));
    }
    // Its own task, so this request's fsync and acks=all wait start as soon
    // as its appends are done, not when the replies before it are sent.
    let answer = tokio::spawn(answer);
    Reply::Deferred(Box::pin(async move {
        match answer.await {
            Ok(resp) => Reply::Now(resp),
            Err(e) => Reply::Close(format!("produce task failed: {e}")),
        }
    }))
}

/// A partition's batch: queued, with the leader epoch it was routed by, or
/// refused before queueing.
type Queued = (
    usize,
    i32,
    Result<(Arc<Partition>, i32, appender::Pending), ApiError>,
);

/// Waits for every queued append's outcome, in request order.
async fn collect_appends(queued: Vec<Queued>) -> Vec<ProduceSlot> {
    let mut slots = Vec::with_capacity(queued.len());
    for (topic, index, item) in queued {
        let (outcome, leader_epoch) = match item {
            Ok((part, epoch, pending)) => match pending.await {
                Ok(Ok(info)) => (Ok((part, info)), epoch),
                Ok(Err(e)) => (Err(e), -1),
                Err(_) => (
                    Err(ApiError::new(
                        ResponseError::UnknownServerError,
                        "the append was abandoned",
                    )),
                    -1,
                ),
            },
            Err(e) => (Err(e), -1),
        };
        slots.push(ProduceSlot {
            topic,
            index,
            outcome,
            leader_epoch,
        });
    }
    slots
}

/// Makes appended data durable where the flush policy asks for it, then wakes
/// fetchers. Resolves to the partitions whose fsync failed.
pub(super) fn sync_appended(
    broker: Arc<Broker>,
    slots: &[ProduceSlot],
) -> impl Future<Output = Vec<(String, i32, ApiError)>> + Send + 'static {
    let targets: Vec<(Arc<Partition>, i64)> = slots
        .iter()
        .filter_map(|s| s.outcome.as_ref().ok())
        .filter(|(p, _)| p.flush_every_batch())
        .map(|(p, info)| (p.clone(), info.last_offset + 1))
        .collect();
    let mut syncs = appender::Submission::syncs();
    let waits: Vec<_> = targets
        .iter()
        .map(|(p, end)| (p.clone(), syncs.sync(p, *end)))
        .collect();
    syncs.start();
    async move {
        let mut failed = Vec::new();
        for (p, done) in waits {
            let outcome = done.await.unwrap_or_else(|_| {
                Err(ApiError::new(
                    ResponseError::UnknownServerError,
                    "the fsync was abandoned",
                ))
            });
            if let Err(e) = outcome {
                failed.push((p.topic.clone(), p.index, e));
            }
        }
        broker.notify_data();
        failed
    }
}

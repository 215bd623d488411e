//! Fetch: hot reads from local segments, cold reads through the object tier,
//! long polls; and followers' fetches (a replica id set), which read past the
//! high watermark to the log end, report the follower's log end (the fetch
//! offset) to the leader, and learn of a divergent tail through the
//! diverging epoch (KIP-595's fetch field, Kafka 2.7+).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::{
    fetch_response::{FetchableTopicResponse, NodeEndpoint, PartitionData},
    BrokerId, FetchRequest, FetchResponse, ResponseKind,
};
use kafka_protocol::ResponseError;
use tracing::{debug, warn};

use crate::error::ApiError;
use crate::state::{Broker, Partition};

use super::{leader_hint, leader_partition, resolve_topic, sb, Reply};

pub(super) struct FetchTarget {
    topic: usize,
    index: i32,
    partition: Result<Arc<Partition>, ApiError>,
    offset: i64,
    max_bytes: usize,
    /// The follower fetching (replica fetches only).
    replica: Option<i32>,
    /// The epoch of the follower's last record (-1: not given).
    last_fetched_epoch: i32,
}

/// An ISR a follower may now join, to propose.
pub(super) type IsrProposal = (Arc<Partition>, Vec<i32>);

pub(super) fn fetch(broker: &Arc<Broker>, ctx: &super::RequestContext, req: FetchRequest) -> Reply {
    let version = ctx.version;
    let listener = ctx.identity.listener.clone();
    // Fetch sessions are refused correctly: a full fetch gets session id 0
    // (no session created, per KIP-227 the client keeps sending full fetches)
    // and an incremental fetch is told its session does not exist.
    if version >= 7 && (req.session_id != 0 || req.session_epoch > 0) {
        let mut resp = FetchResponse::default();
        resp.error_code = ResponseError::FetchSessionIdNotFound.code();
        return Reply::Now(ResponseKind::Fetch(resp));
    }
    let by_id = version >= 13;
    let replica_id = if version >= 15 {
        req.replica_state.replica_id.0
    } else {
        req.replica_id.0
    };
    let replica = (replica_id >= 0).then_some(replica_id);
    let mut topics = Vec::new();
    let mut targets = Vec::new();
    for (ti, t) in req.topics.iter().enumerate() {
        let topic = resolve_topic(broker, &t.topic.0, t.topic_id, by_id);
        let id = topic.as_ref().map_or(t.topic_id, |t| t.id);
        topics.push((t.topic.clone(), t.topic_id, id));
        for p in &t.partitions {
            let epoch = if version >= 9 {
                p.current_leader_epoch
            } else {
                -1
            };
            targets.push(FetchTarget {
                topic: ti,
                index: p.partition,
                partition: topic
                    .clone()
                    .and_then(|topic| leader_partition(&topic, p.partition, epoch)),
                offset: p.fetch_offset,
                max_bytes: p.partition_max_bytes.max(0) as usize,
                replica,
                last_fetched_epoch: if version >= 12 {
                    p.last_fetched_epoch
                } else {
                    -1
                },
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
        for t in targets.iter() {
            if let Ok(p) = &t.partition {
                p.ensure_remote_loaded().await;
            }
        }
        loop {
            let notified = broker.data_available.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (parts, bytes, errors) = match read_all(&broker, &targets, max_bytes).await {
                Ok((parts, bytes, errors, proposals)) => {
                    for (p, isr) in proposals {
                        let b = broker.clone();
                        tokio::spawn(async move { b.propose_isr(&p, isr).await });
                    }
                    (parts, bytes, errors)
                }
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
                    .map(|(name, id, _)| {
                        let mut tr = FetchableTopicResponse::default();
                        tr.topic = name.clone();
                        tr.topic_id = *id;
                        tr
                    })
                    .collect();
                let img = broker.image();
                let mut hinted = std::collections::BTreeSet::new();
                for (ti, mut pd) in parts {
                    let moved = [
                        ResponseError::NotLeaderOrFollower.code(),
                        ResponseError::FencedLeaderEpoch.code(),
                    ];
                    if version >= 12 && moved.contains(&pd.error_code) {
                        if let Some((leader, epoch)) =
                            leader_hint(&img, topics[ti].2, pd.partition_index)
                        {
                            pd.current_leader.leader_id = BrokerId(leader);
                            pd.current_leader.leader_epoch = epoch;
                            hinted.insert(leader);
                        }
                    }
                    let n = pd.records.as_ref().map_or(0, |r| r.len());
                    if n > 0 {
                        let topic = resp.responses[ti].topic.0.to_string();
                        metrics::counter!("strata_topic_bytes_out_total", "topic" => topic)
                            .increment(n as u64);
                    }
                    resp.responses[ti].partitions.push(pd);
                }
                if version >= 16 {
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
pub(super) enum Slot {
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
#[allow(clippy::type_complexity)]
pub(super) async fn read_all(
    broker: &Arc<Broker>,
    targets: &Arc<Vec<FetchTarget>>,
    max_bytes: usize,
) -> Result<(Vec<(usize, PartitionData)>, usize, bool, Vec<IsrProposal>), tokio::task::JoinError> {
    let t = targets.clone();
    let (mut slots, proposals) =
        tokio::task::spawn_blocking(move || read_partitions(&t, max_bytes)).await?;
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
    Ok((out, total, any_error, proposals))
}

/// Reads the fetched partitions held locally; those only the object tier
/// holds become cold slots. Followers' fetches also move their leader's
/// bookkeeping (and may let them join the ISR: returned). Blocking.
pub(super) fn read_partitions(
    targets: &[FetchTarget],
    max_bytes: usize,
) -> (Vec<(usize, Slot)>, Vec<IsrProposal>) {
    let mut out = Vec::with_capacity(targets.len());
    let mut proposals = Vec::new();
    let mut total = 0usize;
    let now = crate::state::now_ms();
    for t in targets {
        let mut pd = PartitionData::default();
        pd.partition_index = t.index;
        pd.aborted_transactions = None;
        let mut cold: Option<(Arc<Partition>, usize)> = None;
        let result = t.partition.clone().and_then(|p| {
            // Leadership can move during a long poll.
            if !p.is_leader() {
                return Err(crate::error::not_leader(&p));
            }
            if let Some(follower) = t.replica {
                if t.last_fetched_epoch >= 0 {
                    let end = p.with_log(|l| l.end_offset_for_epoch(t.last_fetched_epoch));
                    if end.epoch < t.last_fetched_epoch || end.end_offset < t.offset {
                        // The follower's tail diverges from this log: it
                        // truncates to where its epoch ends here and asks again.
                        let offsets = p.offsets();
                        pd.high_watermark = offsets.high_watermark;
                        pd.log_start_offset = offsets.log_start;
                        pd.diverging_epoch.epoch = end.epoch;
                        pd.diverging_epoch.end_offset = end.end_offset;
                        return Ok(Bytes::new());
                    }
                }
                if let Some(isr) = p.record_follower_fetch(follower, t.offset, now) {
                    proposals.push((p.clone(), isr));
                }
            }
            let offsets = p.offsets();
            pd.high_watermark = offsets.high_watermark;
            pd.last_stable_offset = offsets.high_watermark;
            pd.log_start_offset = offsets.log_start;
            // Followers read to the log end; everyone else to the high watermark.
            let visible_end = if t.replica.is_some() {
                offsets.log_end
            } else {
                offsets.high_watermark
            };
            if t.offset < offsets.log_start || t.offset > offsets.log_end {
                return Err(ApiError::new(
                    ResponseError::OffsetOutOfRange,
                    format!(
                        "offset {} is outside [{}, {}]",
                        t.offset, offsets.log_start, offsets.log_end
                    ),
                ));
            }
            if t.offset >= visible_end || total >= max_bytes {
                return Ok(Bytes::new());
            }
            let limit = t.max_bytes.min(max_bytes - total);
            if t.offset < offsets.local_start {
                let remote = offsets
                    .remote
                    .is_some_and(|(s, e)| s <= t.offset && t.offset < e);
                if remote && t.replica.is_some() {
                    // A follower does not copy history the tier holds: it
                    // starts where this leader's local log does (KIP-405).
                    return Err(ApiError::new(
                        ResponseError::OffsetMovedToTieredStorage,
                        format!(
                            "offset {} is in the object tier; local data starts at {}",
                            t.offset, offsets.local_start
                        ),
                    ));
                }
                if remote {
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
                .with_log(|l| l.read_plan_to(t.offset, visible_end))
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
    (out, proposals)
}

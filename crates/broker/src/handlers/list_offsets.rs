//! ListOffsets (earliest, latest, by timestamp, locally and in the object
//! tier) and OffsetsForLeaderEpoch (where a leader epoch ends in the
//! leader's log: consumers validate their position with it after a leader
//! change, KIP-320).

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::{
    list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse},
    ListOffsetsRequest, ListOffsetsResponse,
};
use kafka_protocol::records::RecordBatchDecoder;
use kafka_protocol::ResponseError;
use strata_log::batch;
use tracing::warn;

use crate::error::ApiError;
use crate::state::{Broker, Partition};

use super::leader_partition;

pub(super) const LATEST: i64 = -1;
pub(super) const EARLIEST: i64 = -2;
pub(super) const MAX_TIMESTAMP: i64 = -3;
pub(super) const EARLIEST_LOCAL: i64 = -4;
pub(super) const LATEST_TIERED: i64 = -5;

/// The first record of `batch_bytes` with a timestamp at or after `ts`.
pub(super) fn first_record_at_or_after(batch_bytes: &Bytes, ts: i64) -> Option<(i64, i64)> {
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
pub(super) async fn on_log<T: Send + 'static>(
    p: &Arc<Partition>,
    f: impl FnOnce(&mut strata_log::Log) -> Result<T, strata_log::Error> + Send + 'static,
) -> Result<T, ApiError> {
    let p = p.clone();
    tokio::task::spawn_blocking(move || p.with_log(f))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::from)
}

pub(super) fn cold_error(p: &Partition, e: strata_tier::Error) -> ApiError {
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
    p.ensure_remote_loaded().await;
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
        ts => Ok(at_or_after_start(
            lookup_timestamp(broker, p, &offsets, ts).await?,
            offsets.log_start,
        )),
    }
}

/// A timestamp lookup's answer, never below the log start offset: a batch
/// may straddle the offset DeleteRecords moved the start to (Kafka searches
/// from the log start offset too).
fn at_or_after_start(found: (i64, i64), log_start: i64) -> (i64, i64) {
    match found {
        (offset, ts) if offset >= 0 && offset < log_start => (log_start, ts),
        other => other,
    }
}

async fn lookup_timestamp(
    broker: &Arc<Broker>,
    p: &Arc<Partition>,
    offsets: &crate::state::PartitionOffsets,
    ts: i64,
) -> Result<(i64, i64), ApiError> {
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

pub(super) async fn list_offsets(
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
            let epoch = if version >= 4 {
                p.current_leader_epoch
            } else {
                -1
            };
            let part = topic
                .clone()
                .and_then(|topic| leader_partition(&topic, p.partition_index, epoch));
            let found = match part {
                Ok(part) => lookup_offset(broker, &part, p.timestamp)
                    .await
                    .map(|r| (r, part.leader_epoch())),
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

/// OffsetsForLeaderEpoch: for each partition, the largest epoch at or below
/// the one asked about and where it ends in this leader's log (Kafka's
/// `endOffsetFor`: an epoch older than every known one ends where the first
/// starts; -1, -1 for an undefined epoch).
pub(super) fn offsets_for_leader_epoch(
    broker: &Arc<Broker>,
    req: kafka_protocol::messages::OffsetForLeaderEpochRequest,
) -> kafka_protocol::messages::OffsetForLeaderEpochResponse {
    use kafka_protocol::messages::offset_for_leader_epoch_response::{
        EpochEndOffset, OffsetForLeaderTopicResult,
    };
    let mut resp = kafka_protocol::messages::OffsetForLeaderEpochResponse::default();
    for t in req.topics {
        let topic = broker
            .topic(&t.topic.0)
            .ok_or_else(|| ApiError::unknown_topic(&t.topic.0));
        let mut tr = OffsetForLeaderTopicResult::default();
        tr.topic = t.topic.clone();
        for p in t.partitions {
            let mut r = EpochEndOffset::default();
            r.partition = p.partition;
            let found = topic.clone().and_then(|topic| {
                let part = leader_partition(&topic, p.partition, p.current_leader_epoch)?;
                Ok(part.with_log(|l| l.end_offset_for_epoch(p.leader_epoch)))
            });
            match found {
                Ok(end) => {
                    r.leader_epoch = end.epoch;
                    r.end_offset = end.end_offset;
                }
                Err(e) => {
                    r.error_code = e.code();
                    r.leader_epoch = -1;
                    r.end_offset = -1;
                }
            }
            tr.partitions.push(r);
        }
        resp.topics.push(tr);
    }
    resp
}

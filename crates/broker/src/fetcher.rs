//! Followers: one fetcher task per leader broker copies every partition this
//! broker follows there (Kafka's `ReplicaFetcherThread`).
//!
//! Each round is one Fetch request (version 15: topic ids, the replica id and
//! broker epoch, `last_fetched_epoch` for the diverging-epoch check) over a
//! connection of its own, long-polled by the leader. Per partition, the
//! answer is applied under the log lock and only if the partition still
//! follows that leader at that epoch:
//! - records are appended as they are ([`strata_log::Log::append_replica`]);
//! - the high watermark becomes the leader's (bounded by the local end);
//! - a diverging epoch truncates the local tail to where that epoch ends in
//!   both logs, and the next round fetches from there;
//! - OFFSET_OUT_OF_RANGE below the leader's start empties the log at it;
//!   above the leader's end truncates to the high watermark;
//! - OFFSET_MOVED_TO_TIERED_STORAGE (the leader's local log starts past this
//!   follower's end, the rest is in the object tier) restarts the log at the
//!   tier's end with the producer state uploaded with its last segment, so a
//!   new or wiped broker copies only the local part (KIP-1023).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_protocol::messages::{
    fetch_request::{FetchPartition, FetchTopic, ReplicaState},
    fetch_response::PartitionData,
    ApiKey, BrokerId, FetchRequest, RequestKind, ResponseKind,
};
use kafka_protocol::ResponseError;
use strata_cluster::NO_LEADER;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::peer::Peers;
use crate::state::{now_ms, Broker, Partition};

/// Fetch version followers use (ReplicaState with the broker epoch).
const FETCH_VERSION: i16 = 15;

/// The partitions this broker follows on one leader.
#[derive(Debug)]
struct Fetcher {
    partitions: Mutex<BTreeMap<(Uuid, i32), Arc<Partition>>>,
    wake: Notify,
    stop: CancellationToken,
}

/// Every fetcher of this broker, by leader.
#[derive(Debug, Default)]
pub(crate) struct Fetchers {
    by_leader: Mutex<HashMap<i32, Arc<Fetcher>>>,
}

impl Fetchers {
    /// Stops every fetcher.
    pub(crate) fn stop_all(&self) {
        for f in self.by_leader.lock().expect("fetchers lock").values() {
            f.stop.cancel();
        }
    }
}

/// What applying a fetched partition did.
enum Applied {
    Progress,
    Truncated,
    Idle,
    /// Wait for the metadata to change (not the leader any more...).
    Backoff,
    /// Restart from the object tier.
    FromTier,
}

impl Broker {
    /// Points each followed partition at a fetcher for its leader; starts
    /// and stops fetchers as leaders change. Called after every image.
    pub(crate) fn update_fetchers(self: &Arc<Self>) {
        let me = self.node_id();
        let mut wanted: HashMap<i32, BTreeMap<(Uuid, i32), Arc<Partition>>> = HashMap::new();
        for t in self.topics() {
            for p in t.partitions() {
                let s = p.replica_state();
                if s.leader != me && s.leader != NO_LEADER && s.replicas.contains(&me) {
                    wanted
                        .entry(s.leader)
                        .or_default()
                        .insert((p.topic_id, p.index), p);
                }
            }
        }
        let mut fetchers = self.fetchers.by_leader.lock().expect("fetchers lock");
        fetchers.retain(|leader, f| {
            if wanted.contains_key(leader) {
                true
            } else {
                f.stop.cancel();
                false
            }
        });
        for (leader, parts) in wanted {
            match fetchers.get(&leader) {
                Some(f) => {
                    *f.partitions.lock().expect("fetcher lock") = parts;
                    f.wake.notify_one();
                }
                None => {
                    let f = Arc::new(Fetcher {
                        partitions: Mutex::new(parts),
                        wake: Notify::new(),
                        stop: self.stopping.child_token(),
                    });
                    fetchers.insert(leader, f.clone());
                    debug!(leader, "starting a fetcher");
                    tokio::spawn(run(self.clone(), leader, f));
                }
            }
        }
    }
}

/// One partition's place in a fetch request.
struct Position {
    partition: Arc<Partition>,
    offset: i64,
    last_epoch: i32,
    leader_epoch: i32,
}

async fn run(broker: Arc<Broker>, leader: i32, f: Arc<Fetcher>) {
    let cfg = broker.config().cluster.clone();
    let me = broker.node_id();
    let peers = Peers::new(
        broker.endpoints().bind,
        format!("{}{me}-fetcher", crate::cluster::PEER_CLIENT_PREFIX),
        broker.peers.security().clone(),
    );
    let wait = Duration::from_millis(cfg.replica_fetch_wait_max_ms);
    let timeout = wait + Duration::from_millis(cfg.etcd_request_timeout_ms.max(5_000));
    let mut backoff = Duration::from_millis(50);
    loop {
        if f.stop.is_cancelled() {
            return;
        }
        let parts: Vec<Arc<Partition>> = f
            .partitions
            .lock()
            .expect("fetcher lock")
            .values()
            .cloned()
            .collect();
        if parts.is_empty() {
            tokio::select! {
                _ = f.stop.cancelled() => return,
                _ = f.wake.notified() => continue,
            }
        }
        let img = broker.image();
        let Some(target) = img.brokers.get(&leader).cloned() else {
            // The leader is not registered: the image will change.
            tokio::select! {
                _ = f.stop.cancelled() => return,
                _ = f.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            continue;
        };
        let positions: Vec<Position> = parts
            .into_iter()
            .map(|p| {
                let (offset, last_epoch) = p.with_log(|l| (l.log_end_offset(), l.latest_epoch()));
                let leader_epoch = p.leader_epoch();
                Position {
                    partition: p,
                    offset,
                    last_epoch,
                    leader_epoch,
                }
            })
            .collect();
        let req = request(
            &positions,
            me,
            broker.metadata().session().broker_epoch(),
            &cfg,
            wait,
        );
        let resp = tokio::select! {
            _ = f.stop.cancelled() => return,
            r = peers.call(&target.host, target.port, ApiKey::Fetch, FETCH_VERSION, &req, timeout) => r,
        };
        let resp = match resp {
            Ok(ResponseKind::Fetch(r)) if r.error_code == 0 => r,
            Ok(ResponseKind::Fetch(r)) => {
                debug!(leader, error = r.error_code, "replica fetch refused");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
            Ok(_) => continue,
            Err(e) => {
                debug!(leader, error = %e, "replica fetch failed");
                tokio::select! {
                    _ = f.stop.cancelled() => return,
                    _ = f.wake.notified() => {}
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let mut answers: HashMap<(Uuid, i32), PartitionData> = HashMap::new();
        for t in resp.responses {
            for pd in t.partitions {
                answers.insert((t.topic_id, pd.partition_index), pd);
            }
        }
        let b = broker.clone();
        let applied = tokio::task::spawn_blocking(move || {
            positions
                .into_iter()
                .filter_map(|pos| {
                    let pd = answers.remove(&(pos.partition.topic_id, pos.partition.index))?;
                    let outcome = apply(&pos, leader, &pd).unwrap_or_else(|e| {
                        warn!(topic = %pos.partition.topic, partition = pos.partition.index, error = %e, "cannot apply replicated data");
                        Applied::Backoff
                    });
                    Some((pos.partition, outcome))
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let mut progressed = false;
        let mut stuck = true;
        for (p, outcome) in applied {
            match outcome {
                Applied::Progress | Applied::Truncated => {
                    progressed = true;
                    stuck = false;
                }
                Applied::Idle => stuck = false,
                Applied::Backoff => {}
                Applied::FromTier => {
                    stuck = false;
                    if let Err(e) = b.restart_from_tier(&p).await {
                        warn!(topic = %p.topic, partition = p.index, error = %e, "cannot start the replica from the object tier");
                    }
                }
            }
        }
        if progressed {
            broker.notify_data();
        }
        if stuck {
            tokio::select! {
                _ = f.stop.cancelled() => return,
                _ = f.wake.notified() => {}
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(1));
        } else {
            backoff = Duration::from_millis(50);
        }
    }
}

fn request(
    positions: &[Position],
    me: i32,
    broker_epoch: i64,
    cfg: &strata_cluster::ClusterConfig,
    wait: Duration,
) -> RequestKind {
    let mut topics: BTreeMap<Uuid, FetchTopic> = BTreeMap::new();
    for pos in positions {
        let t = topics.entry(pos.partition.topic_id).or_insert_with(|| {
            let mut t = FetchTopic::default();
            t.topic_id = pos.partition.topic_id;
            t
        });
        let mut fp = FetchPartition::default();
        fp.partition = pos.partition.index;
        fp.current_leader_epoch = pos.leader_epoch;
        fp.fetch_offset = pos.offset;
        fp.last_fetched_epoch = pos.last_epoch;
        fp.log_start_offset = -1;
        fp.partition_max_bytes = cfg.replica_fetch_max_bytes as i32;
        t.partitions.push(fp);
    }
    let mut req = FetchRequest::default();
    let mut rs = ReplicaState::default();
    rs.replica_id = BrokerId(me);
    rs.replica_epoch = broker_epoch;
    req.replica_state = rs;
    req.max_wait_ms = wait.as_millis() as i32;
    req.min_bytes = 1;
    req.max_bytes = cfg.replica_fetch_response_max_bytes as i32;
    req.isolation_level = 0;
    req.session_id = 0;
    req.session_epoch = -1;
    req.topics = topics.into_values().collect();
    RequestKind::Fetch(req)
}

/// Applies one partition's answer, if the partition still follows `leader`
/// at the epoch the request was made under. Blocking.
fn apply(pos: &Position, leader: i32, pd: &PartitionData) -> anyhow::Result<Applied> {
    let p = &pos.partition;
    let s = p.replica_state();
    if s.leader != leader || s.leader_epoch != pos.leader_epoch {
        return Ok(Applied::Backoff);
    }
    let now = now_ms();
    let code = ResponseError::try_from_code(pd.error_code);
    let outcome = p.with_log(|log| -> anyhow::Result<Applied> {
        if log.log_end_offset() != pos.offset {
            // Changed since the request (a truncation): ask again.
            return Ok(Applied::Truncated);
        }
        match code {
            None => {
                if pd.diverging_epoch.epoch >= 0 || pd.diverging_epoch.end_offset >= 0 {
                    let to = truncation_point(log, pd.diverging_epoch.epoch, pd.diverging_epoch.end_offset);
                    info!(topic = %p.topic, partition = p.index, from = log.log_end_offset(), to,
                          leader_epoch = pd.diverging_epoch.epoch, "truncating a divergent tail");
                    log.truncate_to(to, now)?;
                    return Ok(Applied::Truncated);
                }
                let mut appended = false;
                if let Some(records) = pd.records.as_ref().filter(|r| !r.is_empty()) {
                    appended = log.append_replica(records, now)?.is_some();
                }
                log.set_high_watermark(pd.high_watermark);
                // The leader's log start moved (DeleteRecords or retention):
                // so does this replica's, as in Kafka.
                if pd.log_start_offset > log.log_start_offset() {
                    let start = pd.log_start_offset.min(log.log_end_offset());
                    log.delete_records_before(start, None, now)?;
                }
                Ok(if appended {
                    Applied::Progress
                } else {
                    Applied::Idle
                })
            }
            Some(ResponseError::OffsetOutOfRange) => {
                if pos.offset < pd.log_start_offset {
                    warn!(topic = %p.topic, partition = p.index, offset = pos.offset, leader_start = pd.log_start_offset,
                          "behind the leader's log start: starting over there");
                    log.truncate_fully_and_start_at(pd.log_start_offset, now)?;
                } else {
                    warn!(topic = %p.topic, partition = p.index, offset = pos.offset, hw = pd.high_watermark,
                          "beyond the leader's log end: truncating to the high watermark");
                    log.truncate_to(pd.high_watermark.max(0), now)?;
                }
                Ok(Applied::Truncated)
            }
            Some(ResponseError::OffsetMovedToTieredStorage) => Ok(Applied::FromTier),
            Some(other) => {
                debug!(topic = %p.topic, partition = p.index, error = ?other, "replica fetch partition error");
                Ok(Applied::Backoff)
            }
        }
    })?;
    Ok(outcome)
}

/// Where to cut a follower's log after its leader said its epoch `epoch`
/// ends at `end` (Kafka's `getOffsetTruncationState`): where that epoch
/// ends in both logs; if this log does not know the epoch, where its own
/// largest epoch below it ends (the next fetch checks again).
fn truncation_point(log: &strata_log::Log, epoch: i32, end: i64) -> i64 {
    let leo = log.log_end_offset();
    if end < 0 {
        return log.high_watermark();
    }
    if epoch < 0 {
        return end.min(leo);
    }
    let local = log.end_offset_for_epoch(epoch);
    if local.epoch < 0 {
        return end.min(leo);
    }
    if local.epoch == epoch {
        end.min(local.end_offset).min(leo)
    } else {
        local.end_offset.min(leo)
    }
}

impl Broker {
    /// Starts a follower's log over at the object tier's end (the leader's
    /// local log starts past this replica's end): the producer state
    /// uploaded with the tier's last segment, and that segment's leader epoch.
    pub(crate) async fn restart_from_tier(&self, p: &Arc<Partition>) -> anyhow::Result<()> {
        let id = p.remote_id();
        let tier = self.tier().clone();
        tier.forget_topic_partition(p.topic_id, p.index);
        let rp = tier.partition(&id).await?;
        let Some((offset, snapshot, epoch)) = tier.resume_point_with_epoch(&id).await? else {
            anyhow::bail!("the object tier holds nothing of {}-{}", p.topic, p.index);
        };
        drop(rp);
        let p2 = p.clone();
        tokio::task::spawn_blocking(move || {
            p2.with_log(|log| -> anyhow::Result<()> {
                if log.log_end_offset() >= offset {
                    return Ok(());
                }
                log.truncate_fully_and_start_at(offset, now_ms())?;
                if let Some(state) = strata_log::producer_state::ProducerState::decode(&snapshot) {
                    log.restore_producer_state(state);
                }
                log.begin_epoch(epoch)?;
                Ok(())
            })
        })
        .await??;
        info!(topic = %p.topic, partition = p.index, offset, "replica continues where the object tier ends");
        Ok(())
    }
}

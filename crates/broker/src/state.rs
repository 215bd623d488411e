//! The partition registry: topics, their partitions and logs, and the topic
//! operations (create, delete, add partitions, change configs).
//!
//! Order of effects, so a crash leaves a state a restart understands:
//! - create: metadata committed first, then partition directories; a
//!   directory without a topic in the metadata is removed at start-up.
//! - delete: metadata committed first, then directories renamed to
//!   `*-delete` and removed; leftovers are removed at start-up.
//!
//! Each partition directory holds `partition.metadata` with its topic id, so a
//! directory of a deleted topic is never adopted by a new topic of that name.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use kafka_protocol::ResponseError;
use strata_cluster::file::FileStore;
use strata_cluster::{
    BrokerId, BrokerRegistration, ClusterImage, MetadataStore, PartitionState, Session, TopicRecord,
};

use crate::replication::LeaderView;
use strata_log::{AppendInfo, Log, LogConfig};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

use crate::config::{BrokerConfig, FlushPolicy};
use crate::error::ApiError;
use crate::groups::{GroupCoordinator, OffsetStore};
use crate::topic_config::StoragePolicy;
use crate::topic_config::TopicConfig;
use strata_tier::{PartitionId, Tier};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

const PARTITION_METADATA: &str = "partition.metadata";
const MAX_TOPIC_NAME: usize = 249;

/// Checks a topic name the way Kafka does.
pub fn validate_topic_name(name: &str) -> Result<(), ApiError> {
    let bad = |why: String| Err(ApiError::new(ResponseError::InvalidTopicException, why));
    if name.is_empty() {
        return bad("topic name is empty".into());
    }
    if name == "." || name == ".." {
        return bad(format!("topic name cannot be '{name}'"));
    }
    if name.len() > MAX_TOPIC_NAME {
        return bad(format!(
            "topic name is {} characters, the limit is {MAX_TOPIC_NAME}",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return bad(format!(
            "topic name '{name}' has illegal character '{c}': use ASCII letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// One partition: its log and the state around it.
#[derive(Debug)]
pub struct Partition {
    /// Topic name.
    pub topic: String,
    /// Topic id.
    pub topic_id: Uuid,
    /// Partition index.
    pub index: i32,
    /// Its state in the cluster (replicas, ISR, leader and leader epoch), as
    /// last applied; changed only with the log locked, so an append's
    /// leadership check and its write are one step.
    replica: RwLock<PartitionState>,
    /// This broker's session: whether it may lead at all right now.
    session: Arc<Session>,
    /// While this broker leads: its followers' progress (lock order: log,
    /// replica, leader view).
    leader_view: Mutex<Option<LeaderView>>,
    /// An ISR change proposed by this leader and not yet decided.
    pub(crate) isr_pending: std::sync::atomic::AtomicBool,
    /// `min.insync.replicas` of the topic.
    min_isr: AtomicI32,
    /// Woken when the high watermark advances (acks=all waits here).
    hw_advanced: Notify,
    /// The broker's "new data" signal (fetch long polls wait on it).
    data_available: Arc<Notify>,
    log: Mutex<Log>,
    /// Produce batches waiting to be appended (see `appender`).
    pub(crate) appends: crate::appender::WorkQueue<crate::appender::Job>,
    /// fsyncs waiting (flush policy `every-batch`; see `appender`).
    pub(crate) syncs: crate::appender::WorkQueue<crate::appender::SyncJob>,
    /// Serializes fsyncs so concurrent producers share one (group commit).
    sync_lock: Mutex<()>,
    flush: FlushPolicy,
    policy: RwLock<StoragePolicy>,
    pub(crate) tier: Arc<Tier>,
    pub(crate) lake: Arc<strata_lake::Lake>,
    /// How values are typed in the lake, when the topic has `lake.enable`.
    lake_format: RwLock<Option<Arc<strata_lake::ValueFormat>>>,
    /// The broker-wide count of local segment bytes (the disk guard's input).
    local_bytes: Arc<std::sync::atomic::AtomicU64>,
    /// `strata_topic_bytes_in_total` and `strata_topic_messages_in_total`
    /// of the topic, registered once.
    bytes_in: metrics::Counter,
    messages_in: metrics::Counter,
    /// What the log cleaner did last (compacted topics).
    pub(crate) cleaner: Mutex<crate::cleaner::CleanerStatus>,
}

/// How a state change moved this broker's leadership of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Leadership {
    /// It leads now (newly, or under a new leader epoch).
    Gained,
    /// It led and does not any more.
    Lost,
    /// As before.
    Unchanged,
}

/// Offsets of a partition at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionOffsets {
    /// First offset held, locally or in the object tier.
    pub log_start: i64,
    /// First offset held on local disk.
    pub local_start: i64,
    /// Next offset to be written.
    pub log_end: i64,
    /// Readers see offsets below this.
    pub high_watermark: i64,
    /// Bytes on local disk.
    pub size_bytes: u64,
    /// The object tier's range `[start, end)`, when it holds anything.
    pub remote: Option<(i64, i64)>,
}

impl Partition {
    /// The current leader epoch.
    pub fn leader_epoch(&self) -> i32 {
        self.replica.read().expect("replica lock").leader_epoch
    }

    /// The partition's cluster state as last applied.
    pub fn replica_state(&self) -> PartitionState {
        self.replica.read().expect("replica lock").clone()
    }

    fn leads(&self, s: &PartitionState) -> bool {
        s.leader == self.session.broker_id()
            && s.leader_broker_epoch == self.session.broker_epoch()
            && self.session.can_lead()
    }

    /// Whether this broker leads the partition now: the cluster elected it
    /// with its current registration, and its session still stands.
    pub fn is_leader(&self) -> bool {
        self.leads(&self.replica.read().expect("replica lock"))
    }

    /// Applies the partition's new cluster state; returns how this broker's
    /// leadership changed by it. A leader starts its epoch in the log
    /// (Kafka's epoch cache entry at the log end) and a fresh view of its
    /// followers; a follower drops its view. With several replicas the high
    /// watermark is set by replication; a lone replica commits every write.
    pub(crate) fn set_replica_state(&self, next: PartitionState) -> Leadership {
        let mut log = self.log.lock().expect("log lock poisoned");
        let mut s = self.replica.write().expect("replica lock");
        if *s == next {
            return Leadership::Unchanged;
        }
        let was = self.leads(&s);
        let old_epoch = s.leader_epoch;
        *s = next;
        self.adopt_state(&mut log, &s);
        match (was, self.leads(&s)) {
            (false, true) => Leadership::Gained,
            (true, true) if s.leader_epoch != old_epoch => Leadership::Gained,
            (true, false) => Leadership::Lost,
            _ => Leadership::Unchanged,
        }
    }

    /// Brings the log and the leader view in line with `s` (locks held).
    fn adopt_state(&self, log: &mut Log, s: &PartitionState) {
        let me = self.session.broker_id();
        let mut view = self.leader_view.lock().expect("leader view lock");
        let elected = s.leader == me && s.leader_broker_epoch == self.session.broker_epoch();
        if s.replicas.len() > 1 {
            if !log.is_replicated() {
                let hw = log.high_watermark();
                log.set_high_watermark(hw);
            }
        } else {
            log.track_log_end();
        }
        if !elected {
            *view = None;
            return;
        }
        if view.as_ref().map(|v| v.leader_epoch) != Some(s.leader_epoch) {
            if let Err(e) = log.begin_epoch(s.leader_epoch) {
                warn!(topic = %self.topic, partition = self.index, error = %e, "cannot record the leader epoch");
            }
            *view = Some(LeaderView::new(
                me,
                s.leader_epoch,
                log.log_end_offset(),
                &s.replicas,
                &s.isr,
                now_ms(),
            ));
        } else if let Some(v) = view.as_mut() {
            v.set_replicas(me, &s.replicas);
            v.settle_joins(&s.isr);
        }
        if let Some(v) = view.as_ref() {
            self.advance_hw(log, s, v);
        }
    }

    /// Raises the high watermark to what the ISR allows (leader only, locks
    /// held); wakes acks=all waiters and readers when it moved.
    fn advance_hw(&self, log: &mut Log, s: &PartitionState, view: &LeaderView) {
        if !log.is_replicated() {
            return;
        }
        let current = log.replicated_high_watermark().unwrap_or(0);
        let next = view.high_watermark(log.log_end_offset(), &s.isr, current);
        if next > current {
            log.set_high_watermark(next);
            self.hw_advanced.notify_waiters();
            self.data_available.notify_waiters();
        }
    }

    /// A follower fetched at `fetch_offset`: its progress is recorded, the
    /// high watermark advanced, and the ISR it could join returned (to be
    /// proposed), if it may join.
    pub(crate) fn record_follower_fetch(
        &self,
        follower: BrokerId,
        fetch_offset: i64,
        now: i64,
    ) -> Option<Vec<BrokerId>> {
        let mut log = self.log.lock().expect("log lock poisoned");
        let s = self.replica.read().expect("replica lock");
        let mut view = self.leader_view.lock().expect("leader view lock");
        let v = view.as_mut()?;
        let end = log.log_end_offset();
        v.record_fetch(follower, fetch_offset, end, now);
        self.advance_hw(&mut log, &s, v);
        v.expand(follower, &s.isr, log.high_watermark())
    }

    /// The ISR without followers that have not caught up for `lag_ms`, if
    /// this leader must shrink it.
    pub(crate) fn isr_to_shrink(&self, now: i64, lag_ms: i64) -> Option<Vec<BrokerId>> {
        let s = self.replica.read().expect("replica lock");
        let mut view = self.leader_view.lock().expect("leader view lock");
        let v = view.as_mut()?;
        v.expire_joins(now, lag_ms);
        v.shrink(self.session.broker_id(), &s.isr, now, lag_ms)
    }

    /// The store refused the proposed ISR `isr` (it was not written): the
    /// joins it carried no longer hold the high watermark.
    pub(crate) fn abandon_isr_joins(&self, isr: &[BrokerId]) {
        if let Some(v) = self.leader_view.lock().expect("leader view lock").as_mut() {
            v.abandon_joins(isr);
        }
    }

    /// `min.insync.replicas` of the topic.
    pub fn min_insync_replicas(&self) -> i32 {
        self.min_isr.load(Ordering::Relaxed)
    }

    pub(crate) fn set_min_insync_replicas(&self, n: i32) {
        self.min_isr.store(n, Ordering::Relaxed);
    }

    /// NOT_ENOUGH_REPLICAS unless the ISR has `min.insync.replicas` members
    /// (checked before an acks=all append).
    pub(crate) fn check_min_isr(&self) -> Result<(), ApiError> {
        let isr = self.replica.read().expect("replica lock").isr.len() as i32;
        let min = self.min_insync_replicas();
        if isr < min {
            return Err(ApiError::new(
                ResponseError::NotEnoughReplicas,
                format!(
                    "{}-{} has {isr} in-sync replicas, below min.insync.replicas {min}",
                    self.topic, self.index
                ),
            ));
        }
        Ok(())
    }

    /// Waits until everything below `offset` is committed (the high
    /// watermark reached it: every ISR member has it), for an acks=all
    /// produce. NOT_ENOUGH_REPLICAS_AFTER_APPEND if the ISR is below
    /// `min.insync.replicas` when it is; NOT_LEADER_OR_FOLLOWER if leadership
    /// moved; REQUEST_TIMED_OUT at `deadline`.
    pub(crate) async fn wait_committed(
        &self,
        offset: i64,
        leader_epoch: i32,
        deadline: tokio::time::Instant,
    ) -> Result<(), ApiError> {
        // Only this leader's high watermark, in the epoch the records were
        // appended in, commits them: after losing the leadership this
        // replica's high watermark comes from the new leader, whose log may
        // hold other records at these offsets (this tail is truncated).
        let leading = || self.is_leader() && self.leader_epoch() == leader_epoch;
        loop {
            let advanced = self.hw_advanced.notified();
            tokio::pin!(advanced);
            advanced.as_mut().enable();
            if !leading() {
                return Err(crate::error::not_leader(self));
            }
            let hw = self.with_log(|l| l.high_watermark());
            // Leading at the same epoch before and after reading it: the
            // high watermark read was this leader's.
            if hw >= offset && leading() {
                let isr = self.replica.read().expect("replica lock").isr.len() as i32;
                if isr < self.min_insync_replicas() {
                    return Err(ApiError::new(
                        ResponseError::NotEnoughReplicasAfterAppend,
                        format!(
                            "{}-{}: written, but the ISR shrank to {isr}, below min.insync.replicas {}",
                            self.topic,
                            self.index,
                            self.min_insync_replicas()
                        ),
                    ));
                }
                return Ok(());
            }
            tokio::select! {
                _ = &mut advanced => {}
                // Leadership can lapse without any state change (the session).
                _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
                _ = tokio::time::sleep_until(deadline) => {
                    if self.with_log(|l| l.high_watermark()) >= offset {
                        continue;
                    }
                    return Err(ApiError::new(
                        ResponseError::RequestTimedOut,
                        format!(
                            "{}-{}: not every in-sync replica had the records in time",
                            self.topic, self.index
                        ),
                    ));
                }
            }
        }
    }

    /// Runs `f` with the log locked.
    pub fn with_log<T>(&self, f: impl FnOnce(&mut Log) -> T) -> T {
        let mut log = self.log.lock().expect("log lock poisoned");
        f(&mut log)
    }

    /// Current offsets.
    pub fn offsets(&self) -> PartitionOffsets {
        let remote = self.remote_range();
        self.with_log(|l| {
            let local_start = l.log_start_offset();
            let held = remote.map_or(local_start, |(s, _)| s.min(local_start));
            PartitionOffsets {
                // DeleteRecords' floor holds even where the object tier has
                // not recorded it yet.
                log_start: held.max(l.start_floor()),
                local_start,
                log_end: l.log_end_offset(),
                high_watermark: l.high_watermark(),
                size_bytes: l.size_bytes(),
                remote,
            }
        })
    }

    /// Loads the partition's remote manifest if it is tiered and not loaded
    /// yet (a replica that just became leader), so its log start and cold
    /// reads know what the object tier holds. A failure is left to the cold
    /// read that needs it.
    pub async fn ensure_remote_loaded(&self) {
        if self.policy().remote
            && self
                .tier
                .loaded_partition(self.topic_id, self.index)
                .is_none()
        {
            if let Err(e) = self.tier.partition(&self.remote_id()).await {
                warn!(topic = %self.topic, partition = self.index, error = %e, "cannot load the remote manifest");
            }
        }
    }

    /// The object tier's `[start, end)` for this partition, if it holds anything.
    pub fn remote_range(&self) -> Option<(i64, i64)> {
        let rp = self.tier.loaded_partition(self.topic_id, self.index)?;
        rp.manifest().readable_range()
    }

    /// Whether an append of `incoming` bytes should first wait for the
    /// object tier: the partition is tiered, uploads are healthy, a closed
    /// segment still awaits upload, and this append would close another.
    /// Waiting keeps at most one segment in flight, so the hot window holds
    /// while produce outpaces uploads (produce is slowed to the upload rate);
    /// while uploads fail, produce does not wait and the disk policy applies.
    pub fn should_wait_for_upload(&self, incoming: usize) -> bool {
        if !self.policy().remote || !self.tier.uploads_healthy(self.topic_id, self.index) {
            return false;
        }
        let Some(uploaded) = self.uploaded_until() else {
            return false;
        };
        self.with_log(|l| {
            l.closed_end_offset() > uploaded
                && l.closed_end_offset() > l.log_start_offset()
                && l.would_roll(incoming as u64, now_ms())
        })
    }

    /// Takes `bytes` off the broker's count of local segment bytes (the
    /// replica is being removed).
    pub(crate) fn release_size(&self, bytes: u64) {
        self.track_size(bytes, 0);
    }

    pub(crate) fn track_size(&self, before: u64, after: u64) {
        use std::sync::atomic::Ordering;
        if after >= before {
            self.local_bytes
                .fetch_add(after - before, Ordering::Relaxed);
        } else {
            let less = before - after;
            let _ = self
                .local_bytes
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                    Some(v.saturating_sub(less))
                });
        }
    }

    /// The offset below which everything is in the object tier (`None`
    /// until its manifest is loaded).
    pub fn uploaded_until(&self) -> Option<i64> {
        self.tier
            .loaded_partition(self.topic_id, self.index)
            .map(|rp| rp.next_offset())
    }

    /// The partition as the object tier names it.
    pub fn remote_id(&self) -> PartitionId {
        PartitionId {
            topic: self.topic.clone(),
            topic_id: self.topic_id,
            partition: self.index,
        }
    }

    /// Tiered-storage settings.
    pub fn policy(&self) -> StoragePolicy {
        *self.policy.read().expect("policy lock")
    }

    pub(crate) fn set_policy(&self, p: StoragePolicy) {
        *self.policy.write().expect("policy lock") = p;
    }

    /// The lake's value format, when the topic has `lake.enable`.
    pub fn lake_format(&self) -> Option<Arc<strata_lake::ValueFormat>> {
        self.lake_format.read().expect("lake lock").clone()
    }

    pub(crate) fn set_lake_format(&self, f: Option<strata_lake::ValueFormat>) {
        *self.lake_format.write().expect("lake lock") = f.map(Arc::new);
    }

    /// Appends a produce request's records as the leader of `leader_epoch`
    /// (the epoch the request was routed by): refused with
    /// NOT_LEADER_OR_FOLLOWER if leadership moved on meanwhile. Blocking
    /// (file I/O).
    pub fn append(&self, records: &mut [u8], leader_epoch: i32) -> Result<AppendInfo, ApiError> {
        let policy = self.policy();
        if policy.compact.is_some() {
            crate::cleaner::check_keys(records)?;
        }
        // compression.type: batches in another codec are recompressed first.
        let mut converted;
        let records = match policy.compression {
            crate::topic_config::TopicCompression::Codec(codec) => {
                match crate::recompress::to_codec(records, codec)
                    .map_err(|e| ApiError::new(ResponseError::CorruptMessage, e))?
                {
                    Some(bytes) => {
                        converted = bytes;
                        &mut converted[..]
                    }
                    None => records,
                }
            }
            crate::topic_config::TopicCompression::Producer => records,
        };
        let (info, rolled) = self.with_log(|l| {
            let state = self.replica.read().expect("replica lock");
            if !self.leads(&state) || state.leader_epoch != leader_epoch {
                return Err(crate::error::not_leader(self));
            }
            let (segments, size) = (l.segment_count(), l.size_bytes());
            let info = l
                .append(records, leader_epoch, now_ms())
                .map_err(ApiError::from)?;
            self.track_size(size, l.size_bytes());
            if let Some(v) = self.leader_view.lock().expect("leader view lock").as_ref() {
                self.advance_hw(l, &state, v);
            }
            Ok((info, l.segment_count() > segments))
        })?;
        // Followers' long polls wait for new data.
        self.data_available.notify_waiters();
        if rolled && self.policy().remote {
            self.tier.wake_offloader();
        }
        if !info.duplicate {
            self.bytes_in.increment(records.len() as u64);
            self.messages_in
                .increment((info.last_offset - info.base_offset + 1) as u64);
        }
        Ok(info)
    }

    /// Idle rolls, producer expiry and local retention: by `retention.*`, or
    /// for tiered topics by `local.retention.*` and only for segments the
    /// object tier holds. Blocking.
    pub fn apply_retention(&self, now: i64) -> Result<Vec<i64>, strata_log::Error> {
        let policy = self.policy();
        let delete_below = self.local_deletion_bound(&policy);
        let limits = if policy.remote {
            strata_log::RetentionLimits {
                retention_ms: policy.local_retention_ms,
                retention_bytes: policy.local_retention_bytes,
                delete_below,
            }
        } else if policy.delete {
            strata_log::RetentionLimits {
                retention_ms: policy.retention_ms,
                retention_bytes: policy.retention_bytes,
                delete_below,
            }
        } else {
            // cleanup.policy=compact alone: nothing expires.
            strata_log::RetentionLimits {
                retention_ms: -1,
                retention_bytes: -1,
                delete_below,
            }
        };
        let (rolled, deleted) = self.with_log(|l| {
            let before = l.segment_count();
            l.maybe_roll_idle(now)?;
            let rolled = l.segment_count() > before;
            l.expire_producers(now);
            l.close_unused_files();
            let size = l.size_bytes();
            let deleted = l.apply_retention_with(now, limits)?;
            self.track_size(size, l.size_bytes());
            Ok::<_, strata_log::Error>((rolled, deleted))
        })?;
        if rolled && policy.remote {
            self.tier.wake_offloader();
        }
        Ok(deleted)
    }

    /// The offset local segments may be deleted up to: with remote storage,
    /// what the object tier holds; for a lake-enabled topic without it, what
    /// the lake has turned into Parquet; otherwise anything.
    fn local_deletion_bound(&self, policy: &StoragePolicy) -> Option<i64> {
        if policy.remote {
            Some(self.uploaded_until().unwrap_or(i64::MIN))
        } else {
            self.lake_format().map(|_| {
                self.lake
                    .committed(self.topic_id, self.index)
                    .unwrap_or(i64::MIN)
            })
        }
    }

    /// DeleteRecords on the leader: moves the log start offset to `offset`
    /// (-1: the high watermark), locally and in the object tier, and returns
    /// the new log start offset (the low watermark). Followers follow from
    /// the log start offset in their fetch responses.
    pub async fn delete_records(self: &Arc<Self>, offset: i64) -> Result<i64, ApiError> {
        self.ensure_remote_loaded().await;
        let offsets = self.offsets();
        let offset = if offset == -1 {
            offsets.high_watermark
        } else {
            offset
        };
        if offset < 0 || offset > offsets.high_watermark {
            return Err(ApiError::new(
                ResponseError::OffsetOutOfRange,
                format!(
                    "cannot delete records before offset {offset}: {}-{} holds [{}, {}) (high watermark {})",
                    self.topic, self.index, offsets.log_start, offsets.log_end, offsets.high_watermark
                ),
            ));
        }
        let policy = self.policy();
        if !policy.delete {
            // Kafka's answer: records of a compact-only topic go by compaction.
            return Err(ApiError::new(
                ResponseError::PolicyViolation,
                format!(
                    "{} has cleanup.policy=compact: records cannot be deleted by offset",
                    self.topic
                ),
            ));
        }
        if offset <= offsets.log_start {
            return Ok(offsets.log_start);
        }
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let bound = me.local_deletion_bound(&policy);
            me.with_log(|l| {
                let size = l.size_bytes();
                l.delete_records_before(offset, bound, now_ms())?;
                me.track_size(size, l.size_bytes());
                Ok::<_, strata_log::Error>(())
            })
        })
        .await
        .map_err(ApiError::internal)??;
        if policy.remote {
            self.tier
                .delete_records(&**self, offset)
                .await
                .map_err(|e| {
                    warn!(topic = %self.topic, partition = self.index, error = %e, "DeleteRecords in the object tier failed");
                    ApiError::new(
                        ResponseError::KafkaStorageError,
                        format!("records were deleted locally but the object tier did not record it: {e}; retry"),
                    )
                })?;
        }
        Ok(self.offsets().log_start)
    }

    /// Rolls the active segment when it is older than `segment.ms` and not
    /// empty, waking the offloader for a tiered topic: the lake (and the
    /// object tier) see an idle partition's tail without waiting for the
    /// retention pass. Blocking.
    pub fn roll_if_idle(&self, now: i64) -> Result<bool, strata_log::Error> {
        let rolled = self.with_log(|l| {
            let before = l.segment_count();
            l.maybe_roll_idle(now)?;
            Ok::<_, strata_log::Error>(l.segment_count() > before)
        })?;
        if rolled && self.policy().remote {
            self.tier.wake_offloader();
        }
        Ok(rolled)
    }

    /// Makes everything below `offset` durable, sharing the fsync with
    /// concurrent callers. Blocking.
    pub fn sync_to(&self, offset: i64) -> Result<(), strata_log::Error> {
        let _turn = self.sync_lock.lock().expect("sync lock poisoned");
        let target = self.with_log(|l| {
            if l.flushed_offset() >= offset {
                Ok(None)
            } else {
                l.sync_target().map(Some)
            }
        })?;
        if let Some((file, end)) = target {
            file.sync_data()?;
            self.with_log(|l| l.mark_flushed(end));
        }
        Ok(())
    }

    /// Whether produce waits for an fsync.
    pub fn flush_every_batch(&self) -> bool {
        self.flush == FlushPolicy::EveryBatch
    }
}

/// A topic and its partitions.
#[derive(Debug)]
pub struct Topic {
    /// Name.
    pub name: String,
    /// Id given at creation.
    pub id: Uuid,
    configs: RwLock<TopicConfig>,
    /// Partitions the topic has in the cluster.
    partition_count: AtomicI32,
    /// The partitions with a replica on this broker.
    partitions: RwLock<BTreeMap<i32, Arc<Partition>>>,
}

impl Topic {
    pub(crate) fn new(rec: &TopicRecord) -> Self {
        Self {
            name: rec.name.clone(),
            id: rec.id,
            configs: RwLock::new(TopicConfig(rec.configs.clone())),
            partition_count: AtomicI32::new(rec.partitions),
            partitions: RwLock::new(BTreeMap::new()),
        }
    }

    /// The replica of partition `index` on this broker, if it holds one.
    pub fn partition(&self, index: i32) -> Option<Arc<Partition>> {
        self.partitions
            .read()
            .expect("partitions lock")
            .get(&index)
            .cloned()
    }

    /// The partitions with a replica on this broker, by index.
    pub fn partitions(&self) -> Vec<Arc<Partition>> {
        self.partitions
            .read()
            .expect("partitions lock")
            .values()
            .cloned()
            .collect()
    }

    /// Partition count (in the cluster, not only on this broker).
    pub fn partition_count(&self) -> i32 {
        self.partition_count.load(Ordering::SeqCst)
    }

    pub(crate) fn set_partition_count(&self, n: i32) {
        self.partition_count.store(n, Ordering::SeqCst);
    }

    pub(crate) fn insert_partition(&self, p: Arc<Partition>) {
        self.partitions
            .write()
            .expect("partitions lock")
            .insert(p.index, p);
    }

    pub(crate) fn remove_partition(&self, index: i32) -> Option<Arc<Partition>> {
        self.partitions
            .write()
            .expect("partitions lock")
            .remove(&index)
    }

    pub(crate) fn set_configs(&self, configs: TopicConfig) {
        *self.configs.write().expect("configs lock") = configs;
    }

    /// Config overrides.
    pub fn configs(&self) -> TopicConfig {
        self.configs.read().expect("configs lock").clone()
    }
}

/// The broker's state: topics and the shared machinery around them.
#[derive(Debug)]
pub struct Broker {
    config: BrokerConfig,
    /// Cluster metadata: the file store alone, etcd in a cluster.
    pub(crate) store: Arc<dyn MetadataStore>,
    /// The file store when running alone (its image is snapshotted to the tier).
    pub(crate) file_store: Option<Arc<FileStore>>,
    node_id: BrokerId,
    cluster_id: String,
    logs_dir: PathBuf,
    /// Every topic of the cluster, with this broker's replicas of it.
    topics: RwLock<HashMap<String, Arc<Topic>>>,
    /// Serializes topic changes this broker makes as controller.
    pub(crate) admin: tokio::sync::Mutex<()>,
    /// Serializes applying images to local replicas.
    pub(crate) applying: tokio::sync::Mutex<()>,
    /// Woken whenever a log grows or a high watermark advances (fetch long
    /// polls wait here).
    pub(crate) data_available: Arc<Notify>,
    endpoints: Endpoints,
    /// Consumer groups and committed offsets.
    groups: GroupCoordinator,
    /// Producer ids reserved from the metadata store and not yet handed out.
    producer_ids: tokio::sync::Mutex<std::ops::Range<i64>>,
    /// The object tier.
    tier: Arc<Tier>,
    /// The lake writer.
    lake: Arc<strata_lake::Lake>,
    /// Local disk use, refreshed at most every second, for the produce guard.
    pub(crate) disk: crate::tiering::DiskGuard,
    /// Bumped on every metadata change, so snapshots to the tier know when to run.
    pub(crate) metadata_version: std::sync::atomic::AtomicU64,
    /// Connections to the other brokers.
    pub(crate) peers: crate::peer::Peers,
    /// Followers' fetchers, one per leader broker.
    pub(crate) fetchers: crate::fetcher::Fetchers,
    /// `__consumer_offsets` partitions whose groups are being loaded.
    pub(crate) loading_offsets: Mutex<std::collections::HashSet<i32>>,
    /// Cancelled when the broker closes: ends its metadata tasks.
    pub(crate) stopping: CancellationToken,
    /// ACL enforcement.
    authorizer: crate::security::Authorizer,
}

/// Where this broker is reached, as it registers itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoints {
    /// Host clients connect to (advertised).
    pub host: String,
    /// Kafka port clients connect to (advertised).
    pub port: i32,
    /// `host:port` of the HTTP API, for the other brokers.
    pub http: String,
    /// The local address outgoing connections (to etcd, to other brokers)
    /// are bound to, when the listener binds a specific one.
    pub bind: Option<IpAddr>,
    /// Advertised `host:port` of every Kafka listener by name (`host` and
    /// `port` are the inter-broker listener's).
    pub listeners: std::collections::BTreeMap<String, String>,
}

/// Producer ids reserved from the metadata store at a time.
const PRODUCER_ID_BLOCK: i64 = 1000;

/// Consumer lag of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Committed offset (`None` when the group committed nothing here).
    pub committed: Option<i64>,
    /// The partition's high watermark.
    pub log_end: i64,
    /// `log_end - committed` (the whole partition when nothing is committed).
    pub lag: i64,
}

impl Broker {
    /// Connects to the object tier and the metadata store (restoring the
    /// single broker's metadata from the tier when the data directory is
    /// empty; registering in the cluster with etcd), then opens the
    /// partitions this broker holds (recovering those not closed cleanly; a
    /// partition with no local data continues where the object tier ends).
    pub async fn start(config: BrokerConfig, endpoints: Endpoints) -> anyhow::Result<Arc<Self>> {
        config.validate().map_err(anyhow::Error::msg)?;
        let config = config.resolved();
        let node_id = if config.cluster.enabled() {
            config
                .cluster
                .resolve_broker_id(&crate::cluster::host_name())
                .map_err(anyhow::Error::msg)?
        } else {
            config.node_id
        };
        let tier = Tier::open(config.tier.clone(), &config.data_dir)
            .await
            .map_err(|e| anyhow::anyhow!("object tier: {e}"))?;
        let meta_dir = config.data_dir.join("meta");
        let identity =
            crate::cluster::DataDirIdentity::load(&meta_dir, node_id, config.cluster.enabled())?;
        let me = BrokerRegistration {
            id: node_id,
            host: endpoints.host.clone(),
            port: endpoints.port,
            rack: (!config.cluster.rack.is_empty()).then(|| config.cluster.rack.clone()),
            http: endpoints.http.clone(),
            incarnation: identity.incarnation,
            shutting_down: false,
            listeners: endpoints.listeners.clone(),
            epoch: 0,
        };
        let (store, file_store): (Arc<dyn MetadataStore>, Option<Arc<FileStore>>) =
            if config.cluster.enabled() {
                let store = strata_cluster::etcd::EtcdStore::start(
                    config.cluster.clone(),
                    me,
                    identity.cluster_id.clone(),
                    endpoints.bind,
                )
                .await
                .map_err(|e| anyhow::anyhow!("cluster metadata: {e}"))?;
                (store, None)
            } else {
                crate::tiering::restore_metadata(&tier, &meta_dir).await?;
                let dir = meta_dir.clone();
                let store =
                    tokio::task::spawn_blocking(move || FileStore::open(&dir, me)).await??;
                let store = Arc::new(store);
                (store.clone(), Some(store))
            };
        let image = store.image();
        identity.save(&meta_dir, &image.cluster_id)?;
        let offsets = {
            let dir = meta_dir.clone();
            tokio::task::spawn_blocking(move || OffsetStore::open(&dir)).await??
        };
        let logs_dir = config.data_dir.join("logs");
        std::fs::create_dir_all(&logs_dir)?;
        let bind = endpoints.bind;
        let broker = Arc::new(Self {
            cluster_id: image.cluster_id.clone(),
            logs_dir,
            topics: RwLock::new(HashMap::new()),
            admin: tokio::sync::Mutex::new(()),
            applying: tokio::sync::Mutex::new(()),
            data_available: Arc::new(Notify::new()),
            endpoints,
            groups: GroupCoordinator::new(config.groups.clone(), offsets),
            producer_ids: tokio::sync::Mutex::new(0..0),
            disk: crate::tiering::DiskGuard::default(),
            metadata_version: std::sync::atomic::AtomicU64::new(1),
            lake: strata_lake::Lake::new(config.lake.clone(), tier.clone()),
            peers: crate::peer::Peers::new(
                bind,
                format!("strata-broker-{node_id}"),
                crate::peer::PeerSecurity::from_config(&config)
                    .map_err(|e| anyhow::anyhow!("inter-broker security: {e}"))?,
            ),
            authorizer: crate::security::Authorizer::new(&config.auth),
            fetchers: crate::fetcher::Fetchers::default(),
            loading_offsets: Mutex::new(Default::default()),
            stopping: CancellationToken::new(),
            tier,
            store,
            file_store,
            node_id,
            config,
        });
        if broker.store.is_cluster() {
            // Committed offsets go to the replicated __consumer_offsets topic first.
            broker
                .groups
                .store()
                .set_replicator(Arc::new(crate::offsets_log::OffsetsLog {
                    broker: Arc::downgrade(&broker),
                }));
        }
        crate::security::users::bootstrap(&broker).await?;
        let b = broker.clone();
        let img = image.clone();
        tokio::task::spawn_blocking(move || b.remove_stale_dirs(&img)).await??;
        broker.apply_image(&image).await?;
        info!(
            topics = image.topics.len(),
            partitions = broker.topics().iter().map(|t| t.partitions().len()).sum::<usize>(),
            broker = node_id,
            cluster_id = %broker.cluster_id,
            metadata = %broker.store.describe(),
            "metadata and logs loaded"
        );
        crate::tiering::load_remote_partitions(&broker).await;
        crate::cluster::spawn_tasks(&broker);
        Ok(broker)
    }

    /// The object tier.
    pub fn tier(&self) -> &Arc<Tier> {
        &self.tier
    }

    /// The lake writer.
    pub fn lake(&self) -> &Arc<strata_lake::Lake> {
        &self.lake
    }

    /// The cluster metadata store.
    pub fn metadata(&self) -> &Arc<dyn MetadataStore> {
        &self.store
    }

    /// The latest cluster image.
    pub fn image(&self) -> Arc<ClusterImage> {
        self.store.image()
    }

    /// Removes partition directories no topic of the image assigns to this
    /// broker (deleted topics, earlier incarnations, replicas moved away).
    fn remove_stale_dirs(&self, image: &ClusterImage) -> anyhow::Result<()> {
        for entry in std::fs::read_dir(&self.logs_dir)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let keep = name.rsplit_once('-').and_then(|(topic, p)| {
                let p: i32 = p.parse().ok()?;
                let rec = image.topics.get(topic)?;
                let id = std::fs::read_to_string(path.join(PARTITION_METADATA)).ok()?;
                let hosted = image
                    .partition(rec.id, p)
                    .is_none_or(|s| s.value.replicas.contains(&self.node_id));
                (p < rec.partitions && id.trim() == rec.id.to_string() && hosted).then_some(())
            });
            if keep.is_none() {
                warn!(dir = %path.display(), "removing partition directory that no topic assigns to this broker");
                std::fs::remove_dir_all(&path)?;
            }
        }
        Ok(())
    }

    pub(crate) fn partition_dir(&self, topic: &str, index: i32) -> PathBuf {
        self.logs_dir.join(format!("{topic}-{index}"))
    }

    pub(crate) fn logs_dir(&self) -> &Path {
        &self.logs_dir
    }

    /// Opens (or creates) this broker's replica of a partition. Blocking.
    pub(crate) fn open_partition(
        &self,
        rec: &TopicRecord,
        settings: &(LogConfig, StoragePolicy),
        index: i32,
        state: PartitionState,
        resume: Option<&(i64, bytes::Bytes)>,
    ) -> anyhow::Result<Arc<Partition>> {
        let dir = self.partition_dir(&rec.name, index);
        let marker = dir.join(PARTITION_METADATA);
        let fresh = !marker.exists();
        let (log_config, policy) = settings;
        let lake_format = TopicConfig(rec.configs.clone())
            .lake(&self.config.log)
            .map_err(anyhow::Error::msg)?
            .map(Arc::new);
        let log: Log = match resume {
            Some((offset, snapshot)) if fresh => {
                let mut log = Log::open_from(&dir, log_config.clone(), now_ms(), *offset)?;
                if let Some(state) = strata_log::producer_state::ProducerState::decode(snapshot) {
                    log.restore_producer_state(state);
                }
                info!(topic = %rec.name, partition = index, offset, "partition continues where the object tier ends");
                log
            }
            _ => Log::open(&dir, log_config.clone(), now_ms())?,
        };
        if fresh {
            write_file_synced(&marker, rec.id.to_string().as_bytes())?;
        }
        self.disk
            .used
            .fetch_add(log.size_bytes(), std::sync::atomic::Ordering::Relaxed);
        let min_isr = TopicConfig(rec.configs.clone())
            .min_insync_replicas(&self.config.log)
            .map_err(anyhow::Error::msg)?;
        let p = Arc::new(Partition {
            topic: rec.name.clone(),
            topic_id: rec.id,
            index,
            replica: RwLock::new(state.clone()),
            session: self.store.session().clone(),
            leader_view: Mutex::new(None),
            isr_pending: std::sync::atomic::AtomicBool::new(false),
            min_isr: AtomicI32::new(min_isr),
            hw_advanced: Notify::new(),
            data_available: self.data_available.clone(),
            log: Mutex::new(log),
            appends: Default::default(),
            syncs: Default::default(),
            sync_lock: Mutex::new(()),
            flush: self.config.log.flush,
            policy: RwLock::new(*policy),
            tier: self.tier.clone(),
            lake: self.lake.clone(),
            lake_format: RwLock::new(lake_format),
            local_bytes: self.disk.used.clone(),
            bytes_in: metrics::counter!("strata_topic_bytes_in_total", "topic" => rec.name.clone()),
            messages_in: metrics::counter!("strata_topic_messages_in_total", "topic" => rec.name.clone()),
            cleaner: Mutex::new(crate::cleaner::CleanerStatus::default()),
        });
        {
            let mut log = p.log.lock().expect("log lock poisoned");
            p.adopt_state(&mut log, &state);
        }
        Ok(p)
    }

    /// Broker settings.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// Cluster id.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// This broker's id.
    pub fn node_id(&self) -> i32 {
        self.node_id
    }

    /// Host and port given to clients.
    pub fn advertised(&self) -> (String, i32) {
        (self.endpoints.host.clone(), self.endpoints.port)
    }

    /// ACL enforcement.
    pub fn authorizer(&self) -> &crate::security::Authorizer {
        &self.authorizer
    }

    /// Where this broker is reached.
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// A topic by name.
    pub fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read().expect("topics lock").get(name).cloned()
    }

    /// A topic by id.
    pub fn topic_by_id(&self, id: Uuid) -> Option<Arc<Topic>> {
        self.topics
            .read()
            .expect("topics lock")
            .values()
            .find(|t| t.id == id)
            .cloned()
    }

    /// All topics, sorted by name.
    pub fn topics(&self) -> Vec<Arc<Topic>> {
        let mut all: Vec<_> = self
            .topics
            .read()
            .expect("topics lock")
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    pub(crate) fn insert_topic(&self, topic: Arc<Topic>) {
        self.topics
            .write()
            .expect("topics lock")
            .insert(topic.name.clone(), topic);
    }

    pub(crate) fn remove_topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.write().expect("topics lock").remove(name)
    }

    /// The group coordinator.
    pub fn groups(&self) -> &GroupCoordinator {
        &self.groups
    }

    /// Hands out a new producer id, reserving a block from the metadata store
    /// when the current one is used up.
    pub async fn next_producer_id(&self) -> Result<i64, ApiError> {
        let mut ids = self.producer_ids.lock().await;
        if ids.is_empty() {
            let first = self
                .store
                .allocate_producer_ids(PRODUCER_ID_BLOCK)
                .await
                .map_err(crate::error::store_error)?;
            *ids = first..first + PRODUCER_ID_BLOCK;
            // The next snapshot to the object tier must carry the new block.
            self.metadata_version
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(ids.next().expect("non-empty block"))
    }

    /// Consumer lag of a group on every partition it committed offsets for
    /// (committed offset against the high watermark).
    pub fn group_lag(&self, group_id: &str) -> Vec<PartitionLag> {
        let committed = self.groups.committed(group_id, None);
        let mut out = Vec::with_capacity(committed.len());
        for (topic, partition, value) in committed {
            let Some(p) = self.topic(&topic).and_then(|t| t.partition(partition)) else {
                continue;
            };
            let log_end = p.offsets().high_watermark;
            let committed = value.map(|v| v.offset);
            out.push(PartitionLag {
                lag: (log_end - committed.unwrap_or(0)).max(0),
                topic,
                partition,
                committed,
                log_end,
            });
        }
        out
    }

    /// Notes a metadata change, for the next snapshot to the object tier.
    pub(crate) fn metadata_changed(self: &Arc<Self>) {
        self.metadata_version
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if self.file_store.is_some() {
            let this = self.clone();
            tokio::spawn(async move { crate::tiering::snapshot_metadata(&this).await });
        }
    }

    /// Wakes fetches waiting for data.
    pub fn notify_data(&self) {
        self.data_available.notify_waiters();
    }

    /// One retention pass over every partition: idle rolls, then deletion of
    /// expired segments. Blocking.
    pub fn enforce_retention(&self) {
        let now = now_ms();
        for topic in self.topics() {
            for p in topic.partitions() {
                let res = p.apply_retention(now);
                if let Err(e) = res {
                    warn!(topic = %p.topic, partition = p.index, error = %e, "retention pass failed");
                }
            }
        }
    }

    /// Fsyncs every partition (the interval flush policy). Blocking.
    pub fn flush_all(&self) {
        let mut advanced = false;
        for topic in self.topics() {
            for p in topic.partitions() {
                let end = p.offsets().log_end;
                match p.sync_to(end) {
                    Ok(()) => advanced = true,
                    Err(e) => {
                        warn!(topic = %p.topic, partition = p.index, error = %e, "flush failed")
                    }
                }
            }
        }
        if advanced {
            self.notify_data();
        }
    }

    /// Flushes and closes every log, leaving clean-shutdown markers. Blocking.
    pub fn close(&self) {
        self.stopping.cancel();
        self.fetchers.stop_all();
        // Each close fsyncs a few files: with thousands of partitions they
        // run on several threads, so the disk's queue stays full.
        let parts: Vec<Arc<Partition>> =
            self.topics().iter().flat_map(|t| t.partitions()).collect();
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..CLOSE_THREADS.min(parts.len()) {
                s.spawn(|| {
                    while let Some(p) =
                        parts.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
                    {
                        if let Err(e) = p.with_log(|l| l.close()) {
                            warn!(topic = %p.topic, partition = p.index, error = %e, "closing log failed");
                        }
                    }
                });
            }
        });
        if let Err(e) = self.groups.store().checkpoint() {
            warn!(error = %e, "cannot checkpoint committed offsets");
        }
        info!("logs flushed and closed");
    }
}

/// Threads that close logs at shutdown.
const CLOSE_THREADS: usize = 8;

pub(crate) fn write_file_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        for ok in ["orders", "a.b_c-d", "__internal", &"x".repeat(249)] {
            validate_topic_name(ok).unwrap();
        }
        for bad in [
            "",
            ".",
            "..",
            "has space",
            "slash/",
            "ünï",
            &"x".repeat(250),
        ] {
            assert!(validate_topic_name(bad).is_err(), "{bad}");
        }
    }
}

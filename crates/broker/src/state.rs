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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use kafka_protocol::ResponseError;
use strata_log::{AppendInfo, Log, LogConfig};
use tokio::sync::Notify;
use tracing::{info, warn};
use uuid::Uuid;

use crate::config::{BrokerConfig, FlushPolicy};
use crate::error::ApiError;
use crate::groups::{GroupCoordinator, OffsetStore};
use crate::metadata::{FileMetadataStore, MetadataStore, TopicRecord};
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
    /// Leader epoch (constant on one broker, carried for the cluster model).
    pub leader_epoch: i32,
    log: Mutex<Log>,
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
            PartitionOffsets {
                log_start: remote.map_or(local_start, |(s, _)| s.min(local_start)),
                local_start,
                log_end: l.log_end_offset(),
                high_watermark: l.high_watermark(),
                size_bytes: l.size_bytes(),
                remote,
            }
        })
    }

    /// The object tier's `[start, end)` for this partition, if it holds anything.
    pub fn remote_range(&self) -> Option<(i64, i64)> {
        let rp = self.tier.loaded_partition(self.topic_id, self.index)?;
        let m = rp.manifest();
        (!m.is_empty()).then(|| (m.log_start_offset, m.next_offset()))
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

    fn track_size(&self, before: u64, after: u64) {
        use std::sync::atomic::Ordering;
        if after >= before {
            self.local_bytes
                .fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.local_bytes
                .fetch_sub(before - after, Ordering::Relaxed);
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

    /// Appends a produce request's records. Blocking (file I/O).
    pub fn append(&self, records: &mut [u8]) -> Result<AppendInfo, strata_log::Error> {
        let epoch = self.leader_epoch;
        let (info, rolled) = self.with_log(|l| {
            let (segments, size) = (l.segment_count(), l.size_bytes());
            let info = l.append(records, epoch, now_ms())?;
            self.track_size(size, l.size_bytes());
            Ok::<_, strata_log::Error>((info, l.segment_count() > segments))
        })?;
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
        let limits = if policy.remote {
            let uploaded = self.uploaded_until().unwrap_or(i64::MIN);
            strata_log::RetentionLimits {
                retention_ms: policy.local_retention_ms,
                retention_bytes: policy.local_retention_bytes,
                delete_below: Some(uploaded),
            }
        } else {
            // A lake-enabled topic without remote storage: keep what the
            // lake has not turned into Parquet yet.
            let lake_floor = self.lake_format().map(|_| {
                self.lake
                    .committed(self.topic_id, self.index)
                    .unwrap_or(i64::MIN)
            });
            strata_log::RetentionLimits {
                retention_ms: policy.retention_ms,
                retention_bytes: policy.retention_bytes,
                delete_below: lake_floor,
            }
        };
        let (rolled, deleted) = self.with_log(|l| {
            let before = l.segment_count();
            l.maybe_roll_idle(now)?;
            let rolled = l.segment_count() > before;
            l.expire_producers(now);
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
        let (file, end) = self
            .with_log(|l| {
                if l.flushed_offset() >= offset {
                    None
                } else {
                    Some(l.sync_target())
                }
            })
            .map_or((None, 0), |(f, e)| (Some(f), e));
        if let Some(file) = file {
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
    partitions: RwLock<Vec<Arc<Partition>>>,
}

impl Topic {
    /// A partition by index.
    pub fn partition(&self, index: i32) -> Option<Arc<Partition>> {
        if index < 0 {
            return None;
        }
        self.partitions
            .read()
            .expect("partitions lock")
            .get(index as usize)
            .cloned()
    }

    /// All partitions.
    pub fn partitions(&self) -> Vec<Arc<Partition>> {
        self.partitions.read().expect("partitions lock").clone()
    }

    /// Partition count.
    pub fn partition_count(&self) -> i32 {
        self.partitions.read().expect("partitions lock").len() as i32
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
    store: Arc<dyn MetadataStore>,
    cluster_id: String,
    logs_dir: PathBuf,
    topics: RwLock<HashMap<String, Arc<Topic>>>,
    /// Serializes topic operations.
    admin: tokio::sync::Mutex<()>,
    /// Woken whenever a high watermark advances (fetch long polls wait here).
    pub(crate) data_available: Notify,
    advertised: RwLock<(String, i32)>,
    /// Consumer groups and committed offsets.
    groups: GroupCoordinator,
    /// Producer ids reserved from the metadata store and not yet handed out.
    producer_ids: Mutex<std::ops::Range<i64>>,
    /// The object tier.
    tier: Arc<Tier>,
    /// The lake writer.
    lake: Arc<strata_lake::Lake>,
    /// Local disk use, refreshed at most every second, for the produce guard.
    pub(crate) disk: crate::tiering::DiskGuard,
    /// Bumped on every metadata change, so snapshots to the tier know when to run.
    pub(crate) metadata_version: std::sync::atomic::AtomicU64,
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
    /// Connects to the object tier, restores the broker's metadata from it
    /// when the data directory is empty, then opens the data directory:
    /// metadata, committed offsets and every partition's log (recovering
    /// those not closed cleanly; a partition with no local data continues
    /// where the object tier ends).
    pub async fn start(config: BrokerConfig) -> anyhow::Result<Arc<Self>> {
        config.validate().map_err(anyhow::Error::msg)?;
        let tier = Tier::open(config.tier.clone(), &config.data_dir)
            .await
            .map_err(|e| anyhow::anyhow!("object tier: {e}"))?;
        let meta_dir = config.data_dir.join("meta");
        crate::tiering::restore_metadata(&tier, &meta_dir).await?;
        let (store, offsets) = {
            let dir = meta_dir.clone();
            tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
                Ok((FileMetadataStore::open(&dir)?, OffsetStore::open(&dir)?))
            })
            .await??
        };
        let image = store.image();
        let logs_dir = config.data_dir.join("logs");
        std::fs::create_dir_all(&logs_dir)?;
        let resume = crate::tiering::resume_points(&tier, &image, &logs_dir, &config).await?;
        let broker = Arc::new(Self {
            cluster_id: image.cluster_id.clone(),
            logs_dir,
            topics: RwLock::new(HashMap::new()),
            admin: tokio::sync::Mutex::new(()),
            data_available: Notify::new(),
            advertised: RwLock::new((String::new(), 0)),
            store: Arc::new(store),
            groups: GroupCoordinator::new(config.groups.clone(), offsets),
            producer_ids: Mutex::new(0..0),
            disk: crate::tiering::DiskGuard::default(),
            metadata_version: std::sync::atomic::AtomicU64::new(1),
            lake: strata_lake::Lake::new(config.lake.clone(), tier.clone()),
            tier,
            config,
        });
        let b = broker.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            b.remove_stale_dirs(&image.topics)?;
            let mut topics = HashMap::new();
            for rec in image.topics.values() {
                let topic = b.open_topic(rec, &resume)?;
                topics.insert(rec.name.clone(), topic);
            }
            info!(
                topics = topics.len(),
                cluster_id = %b.cluster_id,
                "metadata and logs loaded"
            );
            *b.topics.write().expect("topics lock") = topics;
            Ok(())
        })
        .await??;
        crate::tiering::load_remote_partitions(&broker).await;
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

    fn remove_stale_dirs(
        &self,
        topics: &std::collections::BTreeMap<String, TopicRecord>,
    ) -> anyhow::Result<()> {
        for entry in std::fs::read_dir(&self.logs_dir)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let keep = name.rsplit_once('-').and_then(|(topic, p)| {
                let p: i32 = p.parse().ok()?;
                let rec = topics.get(topic)?;
                let id = std::fs::read_to_string(path.join(PARTITION_METADATA)).ok()?;
                (p < rec.partitions && id.trim() == rec.id.to_string()).then_some(())
            });
            if keep.is_none() {
                warn!(dir = %path.display(), "removing partition directory that no topic owns");
                std::fs::remove_dir_all(&path)?;
            }
        }
        Ok(())
    }

    fn partition_dir(&self, topic: &str, index: i32) -> PathBuf {
        self.logs_dir.join(format!("{topic}-{index}"))
    }

    fn open_partition(
        &self,
        rec: &TopicRecord,
        settings: &(LogConfig, StoragePolicy),
        index: i32,
        resume: &crate::tiering::ResumePoints,
    ) -> anyhow::Result<Arc<Partition>> {
        let dir = self.partition_dir(&rec.name, index);
        let marker = dir.join(PARTITION_METADATA);
        let fresh = !marker.exists();
        let (log_config, policy) = settings;
        let lake_format = TopicConfig(rec.configs.clone())
            .lake(&self.config.log)
            .map_err(anyhow::Error::msg)?
            .map(Arc::new);
        let log: Log = match resume.get(&(rec.id, index)) {
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
        Ok(Arc::new(Partition {
            topic: rec.name.clone(),
            topic_id: rec.id,
            index,
            leader_epoch: rec.leader_epochs.get(index as usize).copied().unwrap_or(0),
            log: Mutex::new(log),
            sync_lock: Mutex::new(()),
            flush: self.config.log.flush,
            policy: RwLock::new(*policy),
            tier: self.tier.clone(),
            lake: self.lake.clone(),
            lake_format: RwLock::new(lake_format),
            local_bytes: self.disk.used.clone(),
            bytes_in: metrics::counter!("strata_topic_bytes_in_total", "topic" => rec.name.clone()),
            messages_in: metrics::counter!("strata_topic_messages_in_total", "topic" => rec.name.clone()),
        }))
    }

    fn open_topic(
        &self,
        rec: &TopicRecord,
        resume: &crate::tiering::ResumePoints,
    ) -> anyhow::Result<Arc<Topic>> {
        let configs = TopicConfig(rec.configs.clone());
        let settings = configs
            .settings(&self.config.log)
            .map_err(anyhow::Error::msg)?;
        let partitions = (0..rec.partitions)
            .map(|i| self.open_partition(rec, &settings, i, resume))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Arc::new(Topic {
            name: rec.name.clone(),
            id: rec.id,
            configs: RwLock::new(configs),
            partitions: RwLock::new(partitions),
        }))
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
        self.config.node_id
    }

    /// Host and port given to clients.
    pub fn advertised(&self) -> (String, i32) {
        self.advertised.read().expect("advertised lock").clone()
    }

    /// Sets the host and port given to clients (once the listener is bound).
    pub fn set_advertised(&self, host: String, port: i32) {
        *self.advertised.write().expect("advertised lock") = (host, port);
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

    /// The group coordinator.
    pub fn groups(&self) -> &GroupCoordinator {
        &self.groups
    }

    /// Hands out a new producer id, reserving a block from the metadata store
    /// when the current one is used up. Blocking when it reserves.
    pub fn next_producer_id(&self) -> Result<i64, ApiError> {
        let mut ids = self.producer_ids.lock().expect("producer ids lock");
        if ids.is_empty() {
            let first = self
                .store
                .allocate_producer_ids(PRODUCER_ID_BLOCK)
                .map_err(ApiError::storage)?;
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
        let this = self.clone();
        tokio::spawn(async move { crate::tiering::snapshot_metadata(&this).await });
    }

    /// The metadata store's image (topics, ids, configs).
    pub fn metadata_image(&self) -> crate::metadata::MetadataImage {
        self.store.image()
    }

    /// Wakes fetches waiting for data.
    pub fn notify_data(&self) {
        self.data_available.notify_waiters();
    }

    /// Creates a topic. With `validate_only`, checks everything and changes nothing.
    pub async fn create_topic(
        self: &Arc<Self>,
        name: &str,
        partitions: i32,
        configs: TopicConfig,
        validate_only: bool,
    ) -> Result<Arc<Topic>, ApiError> {
        validate_topic_name(name)?;
        let partitions = if partitions == -1 {
            self.config.default_partitions
        } else {
            partitions
        };
        if partitions < 1 {
            return Err(ApiError::new(
                ResponseError::InvalidPartitions,
                format!("number of partitions must be at least 1, got {partitions}"),
            ));
        }
        if partitions > 100_000 {
            return Err(ApiError::new(
                ResponseError::InvalidPartitions,
                format!("{partitions} partitions is more than this broker allows (100000)"),
            ));
        }
        let settings = configs
            .settings(&self.config.log)
            .map_err(|e| ApiError::new(ResponseError::InvalidConfig, e))?;
        let _admin = self.admin.lock().await;
        if self.topic(name).is_some() {
            return Err(ApiError::new(
                ResponseError::TopicAlreadyExists,
                format!("topic '{name}' already exists"),
            ));
        }
        let rec = TopicRecord {
            name: name.to_string(),
            id: Uuid::new_v4(),
            partitions,
            leader_epochs: vec![0; partitions as usize],
            configs: configs.0.clone(),
        };
        if validate_only {
            return Ok(Arc::new(Topic {
                name: rec.name,
                id: rec.id,
                configs: RwLock::new(configs),
                partitions: RwLock::new(Vec::new()),
            }));
        }
        let this = self.clone();
        let topic = tokio::task::spawn_blocking(move || -> anyhow::Result<Arc<Topic>> {
            this.store.put_topic(rec.clone())?;
            let none = crate::tiering::ResumePoints::new();
            let parts = (0..rec.partitions)
                .map(|i| this.open_partition(&rec, &settings, i, &none))
                .collect::<anyhow::Result<Vec<_>>>()?;
            Ok(Arc::new(Topic {
                name: rec.name.clone(),
                id: rec.id,
                configs: RwLock::new(configs),
                partitions: RwLock::new(parts),
            }))
        })
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::storage)?;
        self.topics
            .write()
            .expect("topics lock")
            .insert(name.to_string(), topic.clone());
        info!(topic = name, partitions, id = %topic.id, "topic created");
        self.metadata_changed();
        Ok(topic)
    }

    /// Deletes a topic and its data.
    pub async fn delete_topic(self: &Arc<Self>, name: &str) -> Result<Uuid, ApiError> {
        let _admin = self.admin.lock().await;
        let topic = self
            .topic(name)
            .ok_or_else(|| ApiError::unknown_topic(name))?;
        let this = self.clone();
        let name_owned = name.to_string();
        let parts = topic.partitions();
        let id = topic.id;
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            this.store.delete_topic(&name_owned)?;
            this.topics.write().expect("topics lock").remove(&name_owned);
            for p in &parts {
                let size = p.offsets().size_bytes;
                p.track_size(size, 0);
                let dir = this.partition_dir(&name_owned, p.index);
                let doomed = this.logs_dir.join(format!("{name_owned}-{}.{id}-delete", p.index));
                if let Err(e) = std::fs::rename(&dir, &doomed) {
                    warn!(dir = %dir.display(), error = %e, "cannot rename deleted partition");
                    continue;
                }
                if let Err(e) = std::fs::remove_dir_all(&doomed) {
                    warn!(dir = %doomed.display(), error = %e, "cannot remove deleted partition; removed at next start");
                }
            }
            Ok(())
        })
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::storage)?;
        let this = self.clone();
        let name_owned = name.to_string();
        let _ = tokio::task::spawn_blocking(move || this.groups.topic_deleted(&name_owned)).await;
        self.notify_data();
        info!(topic = name, %id, "topic deleted");
        self.metadata_changed();
        // The object tier's copy goes in the background; a crash before it
        // finishes leaves objects the start-up garbage collection removes.
        let tier = self.tier.clone();
        let name_owned = name.to_string();
        let lake = self.lake.clone();
        tokio::spawn(async move {
            if let Err(e) = tier.delete_topic(&name_owned, id).await {
                warn!(topic = %name_owned, %id, error = %e, "cannot delete the topic's objects now; they are removed at next start");
            }
            if let Err(e) = lake.delete_topic(&name_owned).await {
                warn!(topic = %name_owned, error = %e, "cannot delete the topic's lake files");
            }
        });
        Ok(id)
    }

    /// Raises a topic's partition count to `count`.
    pub async fn create_partitions(
        self: &Arc<Self>,
        name: &str,
        count: i32,
        validate_only: bool,
    ) -> Result<(), ApiError> {
        let _admin = self.admin.lock().await;
        let topic = self
            .topic(name)
            .ok_or_else(|| ApiError::unknown_topic(name))?;
        let current = topic.partition_count();
        if count <= current {
            return Err(ApiError::new(
                ResponseError::InvalidPartitions,
                format!(
                    "topic '{name}' has {current} partitions; the new count {count} must be larger"
                ),
            ));
        }
        if count > 100_000 {
            return Err(ApiError::new(
                ResponseError::InvalidPartitions,
                format!("{count} partitions is more than this broker allows (100000)"),
            ));
        }
        if validate_only {
            return Ok(());
        }
        let this = self.clone();
        let topic2 = topic.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let configs = topic2.configs();
            let settings = configs
                .settings(&this.config.log)
                .map_err(anyhow::Error::msg)?;
            let rec = TopicRecord {
                name: topic2.name.clone(),
                id: topic2.id,
                partitions: count,
                leader_epochs: vec![0; count as usize],
                configs: configs.0.clone(),
            };
            this.store.put_topic(rec.clone())?;
            let mut parts = topic2.partitions.write().expect("partitions lock");
            let none = crate::tiering::ResumePoints::new();
            for i in current..count {
                parts.push(this.open_partition(&rec, &settings, i, &none)?);
            }
            Ok(())
        })
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::storage)?;
        info!(topic = name, from = current, to = count, "partitions added");
        self.metadata_changed();
        Ok(())
    }

    /// Replaces a topic's config overrides.
    pub async fn set_topic_configs(
        self: &Arc<Self>,
        name: &str,
        configs: TopicConfig,
        validate_only: bool,
    ) -> Result<(), ApiError> {
        let (log_config, policy) = configs
            .settings(&self.config.log)
            .map_err(|e| ApiError::new(ResponseError::InvalidConfig, e))?;
        let _admin = self.admin.lock().await;
        let topic = self
            .topic(name)
            .ok_or_else(|| ApiError::unknown_topic(name))?;
        let was_remote = topic
            .configs()
            .storage_policy(&self.config.log)
            .is_ok_and(|p| p.remote);
        if was_remote && !policy.remote {
            return Err(ApiError::new(
                ResponseError::InvalidConfig,
                format!("remote.storage.enable cannot be turned off for '{name}': its history is in the object tier"),
            ));
        }
        if validate_only {
            return Ok(());
        }
        let rec = TopicRecord {
            name: topic.name.clone(),
            id: topic.id,
            partitions: topic.partition_count(),
            leader_epochs: topic.partitions().iter().map(|p| p.leader_epoch).collect(),
            configs: configs.0.clone(),
        };
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.put_topic(rec))
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::storage)?;
        let lake_format = configs
            .lake(&self.config.log)
            .map_err(|e| ApiError::new(ResponseError::InvalidConfig, e))?;
        *topic.configs.write().expect("configs lock") = configs;
        for p in topic.partitions() {
            p.with_log(|l| l.set_config(log_config.clone()));
            p.set_policy(policy);
            p.set_lake_format(lake_format.clone());
        }
        info!(topic = name, "topic configs changed");
        self.metadata_changed();
        Ok(())
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
        for topic in self.topics() {
            for p in topic.partitions() {
                if let Err(e) = p.with_log(|l| l.close()) {
                    warn!(topic = %p.topic, partition = p.index, error = %e, "closing log failed");
                }
            }
        }
        if let Err(e) = self.groups.store().checkpoint() {
            warn!(error = %e, "cannot checkpoint committed offsets");
        }
        info!("logs flushed and closed");
    }
}

fn write_file_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
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

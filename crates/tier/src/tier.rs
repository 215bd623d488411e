//! The object tier of one broker: remote partitions and their manifests, the
//! offloader, remote retention, snapshots of broker metadata, and status.
//!
//! The broker hands the tier its partitions through [`LocalPartition`] and
//! [`TierHost`]; the tier never touches local files except to read closed
//! segments it uploads.

use std::collections::HashMap;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use object_store::path::Path;
use object_store::UpdateVersion;
use tokio::sync::{OnceCell, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::budget::ByteRate;
use crate::cache::{CacheStats, ChunkCache};
use crate::config::TierConfig;
use crate::faults;
use crate::keys;
use crate::manifest::{self, Location, ManifestChunk, PartitionManifest, RemoteSegment};
use crate::remote::{ConditionalPuts, Op, OpStats, Remote};
use crate::remote_index::RemoteIndex;
use crate::{Error, Result};

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Which partition (a topic incarnation and an index).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PartitionId {
    /// Topic name.
    pub topic: String,
    /// Topic id.
    pub topic_id: Uuid,
    /// Partition index.
    pub partition: i32,
}

impl PartitionId {
    fn manifest_key(&self) -> Path {
        keys::manifest(&self.topic, self.topic_id, self.partition)
    }
    pub(crate) fn log_key(&self, s: &RemoteSegment) -> Path {
        keys::segment_log(
            &self.topic,
            self.topic_id,
            self.partition,
            s.base_offset,
            s.next_offset,
        )
    }
    pub(crate) fn index_key(&self, s: &RemoteSegment) -> Path {
        keys::segment_index(
            &self.topic,
            self.topic_id,
            self.partition,
            s.base_offset,
            s.next_offset,
        )
    }
}

/// A closed local segment the offloader may upload.
#[derive(Debug, Clone)]
pub struct LocalSegment {
    /// First offset.
    pub base_offset: i64,
    /// Offset after it.
    pub next_offset: i64,
    /// Bytes.
    pub size_bytes: u64,
    /// Largest timestamp.
    pub max_timestamp: i64,
    /// The `.log` file.
    pub log_path: PathBuf,
}

/// Total retention of a partition (local plus remote).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// `retention.ms` (-1: none).
    pub retention_ms: i64,
    /// `retention.bytes` (-1: none).
    pub retention_bytes: i64,
    /// Segments ending above this offset are kept whatever their age or
    /// size: a reader (the lake writer) has not consumed them yet.
    pub keep_from: Option<i64>,
}

/// How many leading segments end at or below `floor` (all without one).
fn keepable(segments: &[RemoteSegment], floor: Option<i64>) -> usize {
    match floor {
        Some(f) => segments.iter().take_while(|s| s.next_offset <= f).count(),
        None => segments.len(),
    }
}

/// What the tier needs of a partition's local log.
pub trait LocalPartition: Send + Sync {
    /// Which partition.
    fn id(&self) -> PartitionId;
    /// `remote.storage.enable` of its topic.
    fn remote_storage_enabled(&self) -> bool;
    /// Closed segments, oldest first (never the active one).
    fn closed_segments(&self) -> Vec<LocalSegment>;
    /// A closed segment's offset and time indexes, in the log's encodings.
    fn segment_indexes(&self, base_offset: i64) -> Option<(Vec<u8>, Vec<u8>)>;
    /// The producer state snapshot taken when the segment ending at `offset` closed.
    fn producer_snapshot(&self, offset: i64) -> Option<Vec<u8>>;
    /// Current leader epoch.
    fn leader_epoch(&self) -> i32;
    /// Total retention.
    fn retention(&self) -> RetentionPolicy;
    /// Bytes of local segments at or after `offset` (not in the object tier).
    fn local_bytes_from(&self, offset: i64) -> u64;
    /// Called (on a blocking thread) after segments were uploaded and
    /// recorded, so the local copies beyond the hot window can go now rather
    /// than at the next retention pass.
    fn after_upload(&self) {}
}

/// The broker, as the tier's background tasks see it.
pub trait TierHost: Send + Sync {
    /// Partitions of topics with `remote.storage.enable`.
    fn tiered_partitions(&self) -> Vec<Arc<dyn LocalPartition>>;
}

/// Offloading progress and trouble of one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OffloadStatus {
    /// Segments uploaded since start.
    pub uploaded_segments: u64,
    /// Bytes uploaded since start.
    pub uploaded_bytes: u64,
    /// When the last upload finished (ms since the epoch, 0: never).
    pub last_upload_ms: i64,
    /// The last error, while uploads keep failing.
    pub last_error: Option<String>,
    /// Failures in a row.
    pub consecutive_failures: u32,
}

/// What the object tier holds of a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteStatus {
    /// First offset held remotely.
    pub log_start_offset: i64,
    /// Offset after the last one held remotely.
    pub next_offset: i64,
    /// Bytes held.
    pub size_bytes: u64,
    /// Segments held.
    pub segments: usize,
    /// Manifest generation.
    pub generation: u64,
    /// Offloader state.
    pub offload: OffloadStatus,
}

/// Cache counters.
pub type CacheStatus = CacheStats;

/// Object store counters and state.
#[derive(Debug, Clone)]
pub struct StoreStatus {
    /// Where it is.
    pub description: String,
    /// Whether it answered the last health check.
    pub reachable: bool,
    /// Whether manifests are compare-and-swap.
    pub conditional_puts: bool,
    /// Totals per operation.
    pub totals: Vec<(Op, OpStats)>,
    /// Counts per topic and operation.
    pub per_topic: Vec<(String, Op, OpStats)>,
}

/// A partition's remote state.
pub struct RemotePartition {
    /// Which partition.
    pub id: PartitionId,
    manifest: RwLock<Arc<PartitionManifest>>,
    /// Serializes commits; holds the version the next commit must replace.
    writer: tokio::sync::Mutex<Option<UpdateVersion>>,
    status: Mutex<OffloadStatus>,
    next_attempt: Mutex<Option<Instant>>,
    /// Keys in `pending_deletes` known to be deleted; the next commit drops them.
    deleted: Mutex<std::collections::HashSet<String>>,
    /// The leader epoch this broker has claimed the manifest with.
    claimed: Mutex<Option<i32>>,
}

impl std::fmt::Debug for RemotePartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemotePartition")
            .field("id", &self.id)
            .finish()
    }
}

impl RemotePartition {
    /// The last committed manifest.
    pub fn manifest(&self) -> Arc<PartitionManifest> {
        self.manifest.read().expect("manifest lock").clone()
    }

    /// Offset after the last remote segment: local segments below it may go.
    pub fn next_offset(&self) -> i64 {
        self.manifest().next_offset()
    }

    /// First offset held remotely, `None` when nothing is.
    pub fn log_start_offset(&self) -> Option<i64> {
        self.manifest().readable_range().map(|(start, _)| start)
    }

    fn set_manifest(&self, m: PartitionManifest) {
        *self.manifest.write().expect("manifest lock") = Arc::new(m);
    }

    fn record_failure(&self, e: &Error, max_backoff: Duration) -> u32 {
        let mut s = self.status.lock().expect("status lock");
        s.consecutive_failures += 1;
        s.last_error = Some(e.to_string());
        let n = s.consecutive_failures;
        let backoff = Duration::from_millis(250u64.saturating_mul(1 << n.min(16))).min(max_backoff);
        *self.next_attempt.lock().expect("attempt lock") = Some(Instant::now() + backoff);
        n
    }

    fn record_success(&self, segments: u64, bytes: u64) {
        let mut s = self.status.lock().expect("status lock");
        if segments > 0 {
            s.uploaded_segments += segments;
            s.uploaded_bytes += bytes;
            s.last_upload_ms = now_ms();
        }
        s.consecutive_failures = 0;
        s.last_error = None;
        *self.next_attempt.lock().expect("attempt lock") = None;
    }

    fn due(&self) -> bool {
        self.next_attempt
            .lock()
            .expect("attempt lock")
            .is_none_or(|t| Instant::now() >= t)
    }

    /// Current status.
    pub fn status(&self) -> RemoteStatus {
        let m = self.manifest();
        RemoteStatus {
            log_start_offset: m.readable_start(),
            next_offset: m.next_offset(),
            size_bytes: m.size_bytes(),
            segments: m.segment_count(),
            generation: m.generation,
            offload: self.status.lock().expect("status lock").clone(),
        }
    }
}

type PartitionSlot = Arc<OnceCell<Arc<RemotePartition>>>;

/// The broker's object tier.
pub struct Tier {
    pub(crate) config: TierConfig,
    pub(crate) remote: Arc<Remote>,
    pub(crate) cache: ChunkCache,
    pub(crate) indexes: moka::future::Cache<String, Arc<RemoteIndex>>,
    chunks: moka::future::Cache<String, Arc<ManifestChunk>>,
    partitions: Mutex<HashMap<(Uuid, i32), PartitionSlot>>,
    pub(crate) cold_gets: Semaphore,
    pub(crate) cold_bytes: Semaphore,
    pub(crate) prefetches: Arc<Semaphore>,
    /// Upload bandwidth (`upload_bytes_per_second`).
    limiter: ByteRate,
    /// Bytes cold reads may fetch from the object store per second.
    pub(crate) cold_rate: ByteRate,
    reachable: AtomicBool,
    wake: tokio::sync::Notify,
    uploaded: tokio::sync::Notify,
}

impl std::fmt::Debug for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tier")
            .field("remote", &self.remote)
            .finish()
    }
}

/// Permits of the cold-read byte budget are KiB.
pub(crate) fn kib(bytes: u64) -> u32 {
    bytes.div_ceil(1024).min(u32::MAX as u64) as u32
}

impl Tier {
    /// Connects to the object tier named by `config` (`data_dir` holds the
    /// embedded default store and the disk cache).
    pub async fn open(config: TierConfig, data_dir: &FsPath) -> Result<Arc<Self>> {
        config.validate().map_err(Error::Config)?;
        let remote = crate::store::connect(&config, &data_dir.join("tier")).await?;
        Self::with_remote(config, remote, data_dir)
    }

    /// A tier over an already connected store.
    pub fn with_remote(
        config: TierConfig,
        remote: Arc<Remote>,
        data_dir: &FsPath,
    ) -> Result<Arc<Self>> {
        let cache_dir = if config.cache_dir.is_empty() {
            data_dir.join("cache")
        } else {
            PathBuf::from(&config.cache_dir)
        };
        let cache = ChunkCache::new(
            config.cache_memory_bytes,
            (config.cache_disk_bytes > 0).then_some((cache_dir.as_path(), config.cache_disk_bytes)),
        )?;
        Ok(Arc::new(Self {
            cold_gets: Semaphore::new(config.cold_read_concurrency),
            cold_bytes: Semaphore::new(kib(config.cold_read_max_bytes_in_flight) as usize),
            prefetches: Arc::new(Semaphore::new(
                config.cold_read_concurrency.div_ceil(2).max(1),
            )),
            limiter: ByteRate::new(config.upload_bytes_per_second),
            cold_rate: ByteRate::new(config.cold_read_bytes_per_second),
            indexes: moka::future::Cache::builder()
                .max_capacity(64 << 20)
                .weigher(|_k: &String, v: &Arc<RemoteIndex>| {
                    (v.producer_snapshot.len() + 8 * 1024).min(u32::MAX as usize) as u32
                })
                .build(),
            chunks: moka::future::Cache::builder().max_capacity(64).build(),
            partitions: Mutex::new(HashMap::new()),
            reachable: AtomicBool::new(true),
            wake: tokio::sync::Notify::new(),
            uploaded: tokio::sync::Notify::new(),
            cache,
            remote,
            config,
        }))
    }

    /// Settings.
    pub fn config(&self) -> &TierConfig {
        &self.config
    }

    /// The store behind the tier (for the lake).
    pub fn remote(&self) -> &Arc<Remote> {
        &self.remote
    }

    /// Wakes the offloader (a segment was just closed).
    pub fn wake_offloader(&self) {
        self.wake.notify_one();
    }

    /// Waits until some partition records an upload, or `timeout`.
    pub async fn wait_for_upload(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.uploaded.notified()).await;
    }

    /// Whether uploads of a partition are working: the store answers and the
    /// partition's last upload did not fail. Produce waits for uploads only
    /// while this holds, so an outage never blocks it.
    pub fn uploads_healthy(&self, topic_id: Uuid, partition: i32) -> bool {
        self.is_reachable()
            && self
                .loaded_partition(topic_id, partition)
                .is_some_and(|rp| rp.status.lock().expect("status lock").consecutive_failures == 0)
    }

    /// Whether the object store answered its last health check.
    pub fn is_reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// Checks the store now and remembers the answer.
    pub async fn check_health(&self) -> bool {
        let ok = crate::store::check_reachable(&self.remote).await.is_ok();
        let was = self.reachable.swap(ok, Ordering::Relaxed);
        if was != ok {
            if ok {
                info!(
                    store = self.remote.description(),
                    "object tier reachable again"
                );
            } else {
                warn!(store = self.remote.description(), "object tier unreachable");
            }
        }
        ok
    }

    /// The remote state of a partition, loading its manifest on first use.
    /// Loading also deletes what a crash left behind: objects of uploads that
    /// were never committed and deletions that were never finished.
    pub async fn partition(&self, id: &PartitionId) -> Result<Arc<RemotePartition>> {
        let slot = {
            let mut map = self.partitions.lock().expect("partitions lock");
            map.entry((id.topic_id, id.partition)).or_default().clone()
        };
        slot.get_or_try_init(|| self.load_partition(id))
            .await
            .cloned()
    }

    /// The partition's remote state if it is already loaded.
    pub fn loaded_partition(&self, topic_id: Uuid, partition: i32) -> Option<Arc<RemotePartition>> {
        let map = self.partitions.lock().expect("partitions lock");
        map.get(&(topic_id, partition))
            .and_then(|s| s.get().cloned())
    }

    async fn load_partition(&self, id: &PartitionId) -> Result<Arc<RemotePartition>> {
        let key = id.manifest_key();
        let (manifest, version) = match self.remote.get_opt(&key).await? {
            Some((bytes, v)) => {
                let m: PartitionManifest =
                    serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
                        key: key.to_string(),
                        reason: e.to_string(),
                    })?;
                if m.version > manifest::MANIFEST_VERSION {
                    return Err(Error::Corrupt {
                        key: key.to_string(),
                        reason: format!(
                            "manifest version {} is newer than this broker understands",
                            m.version
                        ),
                    });
                }
                (m, Some(v))
            }
            None => (
                PartitionManifest::new(&id.topic, id.topic_id, id.partition),
                None,
            ),
        };
        debug!(
            topic = %id.topic,
            partition = id.partition,
            start = manifest.log_start_offset,
            next = manifest.next_offset(),
            generation = manifest.generation,
            "remote manifest loaded"
        );
        Ok(Arc::new(RemotePartition {
            id: id.clone(),
            manifest: RwLock::new(Arc::new(manifest)),
            writer: tokio::sync::Mutex::new(version),
            status: Mutex::new(OffloadStatus::default()),
            next_attempt: Mutex::new(None),
            deleted: Mutex::new(Default::default()),
            claimed: Mutex::new(None),
        }))
    }

    /// Claims the manifest of a partition this broker now leads (see
    /// [`Tier::claim`]): called when leadership arrives, so a deposed leader
    /// is fenced before the new leader's first upload rather than at it.
    pub async fn take_leadership(&self, local: &dyn LocalPartition) -> Result<()> {
        let rp = self.partition(&local.id()).await?;
        self.claim(&rp, local.leader_epoch()).await
    }

    /// Makes this broker, leading the partition at `epoch`, the manifest's
    /// writer: a manifest of an older epoch is rewritten with this one (so a
    /// deposed leader's next commit fails), one of a newer epoch means this
    /// broker was deposed ([`Error::Fenced`]). Then cleans up what crashes
    /// left: objects of uploads never committed (at or beyond the manifest's
    /// end) and deletions never finished. Only a leader does this, so no
    /// object another broker is still writing is deleted from under it.
    async fn claim(&self, rp: &RemotePartition, epoch: i32) -> Result<()> {
        if *rp.claimed.lock().expect("claim lock") == Some(epoch) {
            return Ok(());
        }
        let id = &rp.id;
        let key = id.manifest_key();
        let mut version = rp.writer.lock().await;
        for _attempt in 0..5 {
            let (mut m, v) = match self.remote.get_opt(&key).await? {
                Some((bytes, v)) => (
                    serde_json::from_slice::<PartitionManifest>(&bytes).map_err(|e| {
                        Error::Corrupt {
                            key: key.to_string(),
                            reason: e.to_string(),
                        }
                    })?,
                    Some(v),
                ),
                None => (
                    PartitionManifest::new(&id.topic, id.topic_id, id.partition),
                    None,
                ),
            };
            *version = v;
            if m.leader_epoch > epoch {
                rp.set_manifest(m.clone());
                return Err(Error::Fenced {
                    key: key.to_string(),
                    ours: epoch,
                    theirs: m.leader_epoch,
                });
            }
            if m.leader_epoch < epoch && version.is_some() {
                m.leader_epoch = epoch;
                m.generation += 1;
                let bytes = Bytes::from(serde_json::to_vec(&m).expect("manifest serializes"));
                match self.remote.put_if(&key, bytes, version.clone()).await {
                    Ok(v) => *version = v,
                    Err(Error::Conflict { .. }) => continue,
                    Err(e) => return Err(e),
                }
            } else {
                m.leader_epoch = epoch;
            }
            rp.set_manifest(m);
            break;
        }
        let m = rp.manifest();
        if m.leader_epoch != epoch {
            return Err(Error::Conflict {
                key: key.to_string(),
            });
        }
        drop(version);
        // Uploads that never made it into the manifest.
        let from = keys::segments_from(&id.topic, id.topic_id, id.partition, m.next_offset());
        let dir = keys::segments_dir(&id.topic, id.topic_id, id.partition);
        let leftovers: Vec<Path> = self
            .remote
            .list(&dir, Some(&from))
            .await?
            .into_iter()
            .map(|o| o.location)
            .filter(|k| keys::segment_base(k).is_some_and(|b| b >= m.next_offset()))
            .collect();
        if !leftovers.is_empty() {
            info!(topic = %id.topic, partition = id.partition, objects = leftovers.len(), "deleting objects of uploads that were never committed");
            self.remote.delete(&leftovers).await?;
        }
        if !m.pending_deletes.is_empty() {
            info!(topic = %id.topic, partition = id.partition, objects = m.pending_deletes.len(), "finishing deletions of expired objects");
        }
        self.finish_deletes(rp).await?;
        *rp.claimed.lock().expect("claim lock") = Some(epoch);
        debug!(topic = %id.topic, partition = id.partition, epoch, "manifest claimed");
        Ok(())
    }

    /// A sealed manifest chunk.
    pub(crate) async fn chunk(&self, key: &str) -> Result<Arc<ManifestChunk>> {
        let remote = self.remote.clone();
        let k = key.to_string();
        self.chunks
            .try_get_with(key.to_string(), async move {
                let (bytes, _) = remote.get(&Path::from(k.as_str())).await?;
                serde_json::from_slice::<ManifestChunk>(&bytes)
                    .map(Arc::new)
                    .map_err(|e| Error::Corrupt {
                        key: k.clone(),
                        reason: e.to_string(),
                    })
            })
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e.to_string())))
    }

    /// The remote segment holding `offset`.
    pub(crate) async fn segment_at(
        &self,
        rp: &RemotePartition,
        offset: i64,
    ) -> Result<Option<RemoteSegment>> {
        let m = rp.manifest();
        Ok(match m.locate(offset) {
            None => None,
            Some(Location::Tail(i)) => Some(m.segments[i].clone()),
            Some(Location::Chunk(i)) => {
                let chunk = self.chunk(&m.chunks[i].key).await?;
                let j = chunk.segments.partition_point(|s| s.next_offset <= offset);
                chunk.segments.get(j).cloned()
            }
        })
    }

    /// Up to `limit` remote segments holding offsets at or after `offset`,
    /// oldest first (loading sealed chunks as needed).
    pub async fn segments_from(
        &self,
        id: &PartitionId,
        offset: i64,
        limit: usize,
    ) -> Result<Vec<RemoteSegment>> {
        let rp = self.partition(id).await?;
        let m = rp.manifest();
        let mut out = Vec::new();
        for c in m.chunks.iter().filter(|c| c.next_offset > offset) {
            if out.len() >= limit {
                return Ok(out);
            }
            let chunk = self.chunk(&c.key).await?;
            out.extend(
                chunk
                    .segments
                    .iter()
                    .filter(|s| s.next_offset > offset && s.next_offset > m.log_start_offset)
                    .cloned(),
            );
        }
        out.extend(
            m.segments
                .iter()
                .filter(|s| s.next_offset > offset)
                .cloned(),
        );
        out.truncate(limit);
        Ok(out)
    }

    /// The first remote segment with a timestamp at or after `ts`.
    pub(crate) async fn segment_for_timestamp(
        &self,
        rp: &RemotePartition,
        ts: i64,
    ) -> Result<Option<RemoteSegment>> {
        let m = rp.manifest();
        Ok(match m.locate_timestamp(ts) {
            None => None,
            Some(Location::Tail(i)) => Some(m.segments[i].clone()),
            Some(Location::Chunk(i)) => {
                let chunk = self.chunk(&m.chunks[i].key).await?;
                chunk
                    .segments
                    .iter()
                    .find(|s| s.max_timestamp >= ts && s.next_offset > m.readable_start())
                    .cloned()
            }
        })
    }

    /// A segment's remote index.
    pub(crate) async fn remote_index(
        &self,
        id: &PartitionId,
        s: &RemoteSegment,
    ) -> Result<Arc<RemoteIndex>> {
        let key = id.index_key(s);
        let remote = self.remote.clone();
        self.indexes
            .try_get_with(key.to_string(), async move {
                let (bytes, _) = remote.get(&key).await?;
                RemoteIndex::decode(&bytes)
                    .map(Arc::new)
                    .map_err(|reason| Error::Corrupt {
                        key: key.to_string(),
                        reason,
                    })
            })
            .await
            .map_err(|e| match Arc::try_unwrap(e) {
                Ok(e) => e,
                Err(shared) => Error::Io(std::io::Error::other(shared.to_string())),
            })
    }

    /// Commits `next` (built from the current manifest) with a conditional
    /// put. On a lost race, `rebase` gets the winner's manifest and returns
    /// what to commit on top of it, or `None` if nothing is left to do.
    async fn commit(
        &self,
        rp: &RemotePartition,
        version: &mut Option<UpdateVersion>,
        mut next: PartitionManifest,
        rebase: impl Fn(PartitionManifest) -> Result<Option<PartitionManifest>>,
    ) -> Result<()> {
        let key = rp.id.manifest_key();
        for _attempt in 0..5 {
            let bytes = Bytes::from(serde_json::to_vec(&next).expect("manifest serializes"));
            match self.remote.put_if(&key, bytes, version.clone()).await {
                Ok(v) => {
                    *version = v;
                    rp.set_manifest(next);
                    return Ok(());
                }
                Err(Error::Conflict { .. }) => {
                    warn!(topic = %rp.id.topic, partition = rp.id.partition, "manifest changed by another writer; re-reading");
                    let (bytes, v) = self.remote.get(&key).await?;
                    let theirs: PartitionManifest =
                        serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
                            key: key.to_string(),
                            reason: e.to_string(),
                        })?;
                    *version = Some(v);
                    rp.set_manifest(theirs.clone());
                    if theirs.leader_epoch > next.leader_epoch {
                        *rp.claimed.lock().expect("claim lock") = None;
                        return Err(Error::Fenced {
                            key: key.to_string(),
                            ours: next.leader_epoch,
                            theirs: theirs.leader_epoch,
                        });
                    }
                    match rebase(theirs)? {
                        Some(m) => next = m,
                        None => return Ok(()),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict {
            key: key.to_string(),
        })
    }

    /// Uploads the closed segments the object tier does not hold yet, each
    /// recorded in the manifest before the next. Returns how many.
    pub async fn offload(&self, local: &dyn LocalPartition) -> Result<usize> {
        let id = local.id();
        let rp = self.partition(&id).await?;
        self.claim(&rp, local.leader_epoch()).await?;
        let mut uploaded = 0usize;
        let mut bytes = 0u64;
        for seg in local.closed_segments() {
            let m = rp.manifest();
            let next = m.next_offset();
            // A manifest never written takes the first local segment as its
            // start; afterwards uploads continue exactly where it ends.
            // (A DeleteRecords on a tier holding nothing yet commits only
            // `deleted_below`, leaving the start at 0.)
            let fresh = m.is_empty() && (m.generation == 0 || m.log_start_offset == 0);
            if !fresh && seg.next_offset <= next {
                continue;
            }
            if !fresh && seg.base_offset != next {
                return Err(Error::Corrupt {
                    key: id.manifest_key().to_string(),
                    reason: format!(
                        "local segment starts at {}, the object tier ends at {next}: history between them is missing",
                        seg.base_offset
                    ),
                });
            }
            let remote_seg = RemoteSegment {
                base_offset: seg.base_offset,
                next_offset: seg.next_offset,
                size_bytes: seg.size_bytes,
                max_timestamp: seg.max_timestamp,
                leader_epoch: local.leader_epoch(),
                uploaded_at_ms: now_ms(),
            };
            let (offset_index, time_index) =
                local.segment_indexes(seg.base_offset).ok_or_else(|| {
                    Error::Io(std::io::Error::other(format!(
                        "segment {} of {}-{} is gone",
                        seg.base_offset, id.topic, id.partition
                    )))
                })?;
            let snapshot = local.producer_snapshot(seg.next_offset).unwrap_or_default();
            self.remote
                .put_file(
                    &id.log_key(&remote_seg),
                    &seg.log_path,
                    seg.size_bytes,
                    |n| self.limiter.acquire(n),
                )
                .await?;
            let idx = RemoteIndex::encode(
                seg.base_offset,
                seg.next_offset,
                remote_seg.leader_epoch,
                seg.max_timestamp,
                seg.size_bytes,
                &offset_index,
                &time_index,
                &snapshot,
            );
            self.remote.put(&id.index_key(&remote_seg), idx).await?;
            faults::hit(faults::AFTER_UPLOAD);
            self.commit_append(&rp, remote_seg).await?;
            self.uploaded.notify_waiters();
            faults::hit(faults::AFTER_COMMIT);
            uploaded += 1;
            bytes += seg.size_bytes;
            debug!(
                topic = %id.topic,
                partition = id.partition,
                base = seg.base_offset,
                next = seg.next_offset,
                bytes = seg.size_bytes,
                "segment offloaded"
            );
        }
        rp.record_success(uploaded as u64, bytes);
        Ok(uploaded)
    }

    async fn commit_append(&self, rp: &RemotePartition, seg: RemoteSegment) -> Result<()> {
        let mut version = rp.writer.lock().await;
        let id = rp.id.clone();
        let build = |mut m: PartitionManifest| -> Result<Option<(PartitionManifest, Option<manifest::Seal>)>> {
            if m.next_offset() >= seg.next_offset && !m.is_empty() {
                return Ok(None); // already recorded (a retry after a lost answer)
            }
            // Deletions known to be done need not be listed any more.
            let done = rp.deleted.lock().expect("deleted lock");
            m.pending_deletes.retain(|k| !done.contains(k));
            drop(done);
            let seal = m
                .append(seg.clone(), |base, generation| {
                    keys::manifest_chunk(&id.topic, id.topic_id, id.partition, base, generation).to_string()
                })
                .map_err(|reason| Error::Corrupt {
                    key: id.manifest_key().to_string(),
                    reason,
                })?;
            m.generation += 1;
            Ok(Some((m, seal)))
        };
        let Some((next, seal)) = build((*rp.manifest()).clone())? else {
            return Ok(());
        };
        if let Some(seal) = &seal {
            self.put_chunk(seal).await?;
        }
        self.commit(rp, &mut version, next, |theirs| {
            match build(theirs)? {
                Some((m, None)) => Ok(Some(m)),
                // Sealing again on top of another writer's manifest would need a
                // new chunk object first: give up this round, retry later.
                Some((_, Some(_))) => Err(Error::Conflict {
                    key: id.manifest_key().to_string(),
                }),
                None => Ok(None),
            }
        })
        .await?;
        let listed = rp.manifest().pending_deletes.clone();
        rp.deleted
            .lock()
            .expect("deleted lock")
            .retain(|k| listed.contains(k));
        Ok(())
    }

    /// Deletes objects the manifest lists as pending and not yet known deleted.
    async fn finish_deletes(&self, rp: &RemotePartition) -> Result<()> {
        let pending: Vec<String> = {
            let done = rp.deleted.lock().expect("deleted lock");
            rp.manifest()
                .pending_deletes
                .iter()
                .filter(|k| !done.contains(*k))
                .cloned()
                .collect()
        };
        if pending.is_empty() {
            return Ok(());
        }
        let keys: Vec<Path> = pending.iter().map(|k| Path::from(k.as_str())).collect();
        for k in &pending {
            self.cache.forget_object(k);
        }
        self.remote.delete(&keys).await?;
        rp.deleted.lock().expect("deleted lock").extend(pending);
        Ok(())
    }

    async fn put_chunk(&self, seal: &manifest::Seal) -> Result<()> {
        let bytes = Bytes::from(serde_json::to_vec(&seal.chunk).expect("chunk serializes"));
        self.remote.put(&Path::from(seal.key.as_str()), bytes).await
    }

    /// Removes segments past `retention.ms` / `retention.bytes` from the
    /// manifest, then deletes their objects. Returns how many segments.
    pub async fn expire(&self, local: &dyn LocalPartition, now: i64) -> Result<usize> {
        let policy = local.retention();
        let id = local.id();
        let rp = self.partition(&id).await?;
        let m = rp.manifest();
        if policy.retention_ms < 0
            && policy.retention_bytes < 0
            && m.deleted_below <= m.log_start_offset
        {
            return Ok(0);
        }
        self.claim(&rp, local.leader_epoch()).await?;
        self.finish_deletes(&rp).await?;
        if rp.manifest().is_empty() {
            return Ok(0);
        }
        let mut version = rp.writer.lock().await;
        let mut m = (*rp.manifest()).clone();
        let next_offset = m.next_offset();
        let mut total = m.size_bytes() + local.local_bytes_from(next_offset);
        let mut removed: Vec<String> = Vec::new();
        let mut expired = 0usize;
        let generation = m.generation + 1;
        let deleted_below = m.deleted_below;
        let mut new_chunk: Option<manifest::Seal> = None;
        loop {
            if let Some(c) = m.chunks.first().cloned() {
                let chunk = self.chunk(&c.key).await?;
                let n = manifest::expired_prefix(
                    &chunk.segments,
                    now,
                    policy.retention_ms,
                    policy.retention_bytes,
                    deleted_below,
                    total,
                )
                .min(keepable(&chunk.segments, policy.keep_from));
                if n == 0 {
                    break;
                }
                for s in &chunk.segments[..n] {
                    total -= s.size_bytes;
                    removed.push(id.log_key(s).to_string());
                    removed.push(id.index_key(s).to_string());
                }
                expired += n;
                removed.push(c.key.clone());
                m.chunks.remove(0);
                if n < chunk.segments.len() {
                    let rest = chunk.segments[n..].to_vec();
                    let key = keys::manifest_chunk(
                        &id.topic,
                        id.topic_id,
                        id.partition,
                        rest[0].base_offset,
                        generation,
                    )
                    .to_string();
                    m.chunks.insert(
                        0,
                        manifest::ChunkRef {
                            key: key.clone(),
                            base_offset: rest[0].base_offset,
                            next_offset: rest.last().expect("non-empty").next_offset,
                            max_timestamp: rest.iter().map(|s| s.max_timestamp).max().unwrap_or(-1),
                            size_bytes: rest.iter().map(|s| s.size_bytes).sum(),
                            segments: rest.len(),
                        },
                    );
                    new_chunk = Some(manifest::Seal {
                        key,
                        chunk: ManifestChunk {
                            version: manifest::MANIFEST_VERSION,
                            segments: rest,
                        },
                    });
                    break;
                }
            } else {
                let n = manifest::expired_prefix(
                    &m.segments,
                    now,
                    policy.retention_ms,
                    policy.retention_bytes,
                    deleted_below,
                    total,
                )
                .min(keepable(&m.segments, policy.keep_from));
                for s in m.segments.drain(..n) {
                    removed.push(id.log_key(&s).to_string());
                    removed.push(id.index_key(&s).to_string());
                }
                expired += n;
                break;
            }
        }
        if expired == 0 {
            return Ok(0);
        }
        m.log_start_offset = m
            .chunks
            .first()
            .map(|c| c.base_offset)
            .or_else(|| m.segments.first().map(|s| s.base_offset))
            .unwrap_or(next_offset);
        if m.is_empty() {
            // Keep the end: the next upload continues from it.
            m.log_start_offset = next_offset;
            m.segments.clear();
        }
        m.pending_deletes.extend(removed.iter().cloned());
        m.generation = generation;
        if let Some(seal) = &new_chunk {
            self.put_chunk(seal).await?;
        }
        // A lost race: let the next pass start over from the winner's manifest.
        self.commit(&rp, &mut version, m, |_theirs| Ok(None))
            .await?;
        drop(version);
        self.finish_deletes(&rp).await?;
        info!(
            topic = %id.topic,
            partition = id.partition,
            segments = expired,
            log_start_offset = rp.manifest().log_start_offset,
            "remote retention deleted segments"
        );
        Ok(expired)
    }

    /// DeleteRecords in the object tier: readers see nothing below `offset`
    /// from this commit on, and segments wholly below it are removed now
    /// (those the lake has not read yet at a later retention pass). A lower
    /// offset than already recorded changes nothing.
    pub async fn delete_records(&self, local: &dyn LocalPartition, offset: i64) -> Result<()> {
        let id = local.id();
        let rp = self.partition(&id).await?;
        if offset <= rp.manifest().deleted_below {
            return Ok(());
        }
        self.claim(&rp, local.leader_epoch()).await?;
        {
            let mut version = rp.writer.lock().await;
            let mut m = (*rp.manifest()).clone();
            if offset <= m.deleted_below {
                return Ok(());
            }
            m.deleted_below = offset;
            m.generation += 1;
            self.commit(&rp, &mut version, m, |mut theirs| {
                Ok((theirs.deleted_below < offset).then(|| {
                    theirs.deleted_below = offset;
                    theirs.generation += 1;
                    theirs
                }))
            })
            .await?;
        }
        info!(topic = %id.topic, partition = id.partition, offset, "records deleted in the object tier");
        self.expire(local, now_ms()).await?;
        Ok(())
    }

    /// Deletes every object of a topic incarnation.
    pub async fn delete_topic(&self, topic: &str, topic_id: Uuid) -> Result<usize> {
        let dir = keys::topic_dir(topic, topic_id);
        let objects: Vec<Path> = self
            .remote
            .list(&dir, None)
            .await?
            .into_iter()
            .map(|o| o.location)
            .collect();
        for o in &objects {
            self.cache.forget_object(o.as_ref());
        }
        self.remote.delete(&objects).await?;
        self.partitions
            .lock()
            .expect("partitions lock")
            .retain(|(id, _), _| *id != topic_id);
        info!(topic, %topic_id, objects = objects.len(), "deleted the topic's objects from the object tier");
        Ok(objects.len())
    }

    /// Forgets a partition's loaded manifest (another broker writes it: the
    /// next use reads it afresh).
    pub fn forget_topic_partition(&self, topic_id: Uuid, partition: i32) {
        self.partitions
            .lock()
            .expect("partitions lock")
            .remove(&(topic_id, partition));
    }

    /// Forgets the remote state of a topic another broker deleted.
    pub fn forget_topic(&self, topic_id: Uuid) {
        self.partitions
            .lock()
            .expect("partitions lock")
            .retain(|(id, _), _| *id != topic_id);
    }

    /// The topic directories in the object tier (for garbage collection: list
    /// first, then read which topics exist).
    pub async fn list_topic_dirs(&self) -> Result<Vec<Path>> {
        self.remote.list_dirs(&Path::from(keys::TOPICS)).await
    }

    /// Deletes the objects of topics that no longer exist (a crash during a
    /// topic deletion). `live` lists every existing topic incarnation.
    pub async fn collect_garbage(&self, live: &[(String, Uuid)]) -> Result<usize> {
        let listed = self.list_topic_dirs().await?;
        self.collect_garbage_in(listed, live).await
    }

    /// Deletes the objects under the `listed` topic directories whose topic
    /// incarnation is not `live`. The listing must be older than `live`.
    pub async fn collect_garbage_in(
        &self,
        listed: Vec<Path>,
        live: &[(String, Uuid)],
    ) -> Result<usize> {
        let mut deleted = 0;
        for dir in listed {
            let probe = format!("{dir}/x");
            let Some((topic, id)) = keys::topic_of(&probe).map(|(t, i)| (t.to_string(), i)) else {
                continue;
            };
            if live.iter().any(|(t, i)| *t == topic && *i == id) {
                continue;
            }
            deleted += self.delete_topic(&topic, id).await?;
        }
        Ok(deleted)
    }

    /// Writes a broker snapshot (`cluster/metadata.json`, `cluster/offsets.json`).
    pub async fn put_snapshot(&self, key: &Path, bytes: Bytes) -> Result<()> {
        self.remote.put(key, bytes).await
    }

    /// Reads a broker snapshot, if there is one.
    pub async fn get_snapshot(&self, key: &Path) -> Result<Option<Bytes>> {
        Ok(self.remote.get_opt(key).await?.map(|(b, _)| b))
    }

    /// Like [`Tier::resume_point`], with the leader epoch the last segment
    /// was written in (-1 when the tier holds no segment).
    pub async fn resume_point_with_epoch(
        &self,
        id: &PartitionId,
    ) -> Result<Option<(i64, Bytes, i32)>> {
        let Some((offset, snapshot)) = self.resume_point(id).await? else {
            return Ok(None);
        };
        let rp = self.partition(id).await?;
        let m = rp.manifest();
        let epoch = match m.segments.last() {
            Some(s) => s.leader_epoch,
            None => match m.chunks.last() {
                Some(c) => self
                    .chunk(&c.key)
                    .await?
                    .segments
                    .last()
                    .map_or(-1, |s| s.leader_epoch),
                None => -1,
            },
        };
        Ok(Some((offset, snapshot, epoch)))
    }

    /// What the tier holds of the partition to continue it on an empty disk:
    /// the offset after the last remote segment and that segment's producer
    /// state snapshot.
    pub async fn resume_point(&self, id: &PartitionId) -> Result<Option<(i64, Bytes)>> {
        let rp = self.partition(id).await?;
        let m = rp.manifest();
        if m.is_empty() {
            return Ok((m.log_start_offset > 0).then(|| (m.log_start_offset, Bytes::new())));
        }
        let last = match m.segments.last() {
            Some(s) => s.clone(),
            None => {
                let c = m.chunks.last().expect("non-empty manifest");
                self.chunk(&c.key)
                    .await?
                    .segments
                    .last()
                    .cloned()
                    .expect("chunks are never empty")
            }
        };
        let idx = self.remote_index(id, &last).await?;
        Ok(Some((m.next_offset(), idx.producer_snapshot.clone())))
    }

    /// One pass of the offloader over `partitions`, `upload_concurrency` at
    /// a time, skipping partitions still backing off after failures (unless
    /// `force`). Returns the segments uploaded.
    pub async fn offload_all(
        self: &Arc<Self>,
        partitions: Vec<Arc<dyn LocalPartition>>,
        force: bool,
    ) -> usize {
        let slots = Arc::new(Semaphore::new(self.config.upload_concurrency));
        let mut tasks = tokio::task::JoinSet::new();
        for p in partitions {
            let this = self.clone();
            let slots = slots.clone();
            tasks.spawn(async move {
                let _slot = slots.acquire_owned().await.expect("never closed");
                let n = this.offload_one(p.as_ref(), force).await;
                if n > 0 {
                    let _ = tokio::task::spawn_blocking(move || p.after_upload()).await;
                }
                n
            });
        }
        let mut total = 0;
        while let Some(r) = tasks.join_next().await {
            total += r.unwrap_or(0);
        }
        total
    }

    async fn offload_one(&self, p: &dyn LocalPartition, force: bool) -> usize {
        let id = p.id();
        let max_backoff = Duration::from_millis(self.config.retry_max_backoff_ms);
        let rp = match self.partition(&id).await {
            Ok(rp) => rp,
            Err(e) => {
                warn!(topic = %id.topic, partition = id.partition, error = %e, "cannot load remote manifest");
                return 0;
            }
        };
        if !force && !rp.due() {
            return 0;
        }
        match self.offload(p).await {
            Ok(n) => n,
            Err(e) => {
                let n = rp.record_failure(&e, max_backoff);
                if n == 1 || n % 20 == 0 {
                    warn!(topic = %id.topic, partition = id.partition, failures = n, error = %e, "segment upload failed; will retry");
                }
                0
            }
        }
    }

    /// Remote retention over `partitions`.
    pub async fn expire_all(&self, partitions: Vec<Arc<dyn LocalPartition>>) {
        let now = now_ms();
        for p in partitions {
            if let Err(e) = self.expire(p.as_ref(), now).await {
                let id = p.id();
                warn!(topic = %id.topic, partition = id.partition, error = %e, "remote retention failed; will retry");
            }
        }
    }

    /// The offloader, remote retention and health checks, until cancelled.
    pub async fn run(
        self: Arc<Self>,
        host: Arc<dyn TierHost>,
        retention_interval: Duration,
        shutdown: CancellationToken,
    ) {
        let mut offload =
            tokio::time::interval(Duration::from_millis(self.config.offload_interval_ms));
        let mut retention = tokio::time::interval(retention_interval);
        let mut health = tokio::time::interval(Duration::from_secs(5));
        for t in [&mut offload, &mut retention, &mut health] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = offload.tick() => {
                    self.offload_all(host.tiered_partitions(), false).await;
                }
                _ = self.wake.notified() => {
                    self.offload_all(host.tiered_partitions(), false).await;
                }
                _ = retention.tick() => {
                    self.expire_all(host.tiered_partitions()).await;
                }
                _ = health.tick() => {
                    self.check_health().await;
                }
            }
        }
    }

    /// Status of a partition's remote side, if loaded.
    pub fn partition_status(&self, topic_id: Uuid, partition: i32) -> Option<RemoteStatus> {
        self.loaded_partition(topic_id, partition)
            .map(|rp| rp.status())
    }

    /// Cache counters and sizes.
    pub fn cache_status(&self) -> CacheStatus {
        self.cache.stats()
    }

    /// Object-store counters.
    pub fn store_status(&self) -> StoreStatus {
        StoreStatus {
            description: self.remote.description().to_string(),
            reachable: self.is_reachable(),
            conditional_puts: self.remote.conditional_puts() == ConditionalPuts::Enforced,
            totals: self.remote.totals(),
            per_topic: self.remote.per_topic(),
        }
    }
}

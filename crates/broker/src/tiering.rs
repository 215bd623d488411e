//! The broker's side of the object tier: its partitions as the tier sees
//! them, the hot-window bookkeeping, snapshots of broker metadata to the
//! tier and back, the tail upload at shutdown, and the local disk guard.
//!
//! # Local disk policy
//! Segments of a tiered topic leave local disk only after the object tier
//! holds them. When uploads cannot proceed (the object store is down) the
//! hot window therefore grows instead of data being deleted. Produce is
//! refused with the retriable KAFKA_STORAGE_ERROR while the data directory's
//! filesystem has less than `log.disk_free_min_bytes` free, or while all
//! partitions' local segments exceed `log.disk_usage_max_bytes` (when set);
//! clients retry, and produce resumes by itself once uploads catch up and
//! the hot window shrinks again. Fetches are never refused.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use kafka_protocol::ResponseError;
use strata_tier::{keys, LocalPartition, LocalSegment, PartitionId, RetentionPolicy, TierHost};
use tracing::{info, warn};
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::{now_ms, Broker, Partition};
use strata_cluster::file::FileImage;

/// How far the producer id counter jumps when metadata is restored from the
/// object tier (ids allocated after the last snapshot are not in it).
const PRODUCER_ID_SKIP_ON_RESTORE: i64 = 1 << 32;

impl LocalPartition for Partition {
    fn id(&self) -> PartitionId {
        self.remote_id()
    }

    fn remote_storage_enabled(&self) -> bool {
        self.policy().remote
    }

    fn closed_segments(&self) -> Vec<LocalSegment> {
        self.with_log(|l| {
            l.closed_segments()
                .into_iter()
                .map(|s| LocalSegment {
                    base_offset: s.base_offset,
                    next_offset: s.next_offset,
                    size_bytes: s.size_bytes,
                    max_timestamp: s.max_timestamp,
                    log_path: s.path,
                })
                .collect()
        })
    }

    fn segment_indexes(&self, base_offset: i64) -> Option<(Vec<u8>, Vec<u8>)> {
        self.with_log(|l| l.segment_index_bytes(base_offset))
    }

    fn producer_snapshot(&self, offset: i64) -> Option<Vec<u8>> {
        self.with_log(|l| l.producer_snapshot_at(offset))
    }

    fn leader_epoch(&self) -> i32 {
        Partition::leader_epoch(self)
    }

    fn retention(&self) -> RetentionPolicy {
        let p = self.policy();
        RetentionPolicy {
            retention_ms: p.retention_ms,
            retention_bytes: p.retention_bytes,
            // The lake reads the object tier's segments: keep what it has
            // not turned into Parquet yet.
            keep_from: self.lake_format().map(|_| {
                self.lake
                    .committed(self.topic_id, self.index)
                    .unwrap_or(i64::MIN)
            }),
        }
    }

    fn local_bytes_from(&self, offset: i64) -> u64 {
        self.with_log(|l| l.size_bytes_from(offset))
    }

    fn after_upload(&self) {
        if let Err(e) = self.apply_retention(now_ms()) {
            warn!(topic = %self.topic, partition = self.index, error = %e, "local retention after upload failed");
        }
    }
}

impl TierHost for Broker {
    /// Only a partition's leader uploads it and runs its remote retention.
    fn tiered_partitions(&self) -> Vec<Arc<dyn LocalPartition>> {
        self.topics()
            .into_iter()
            .flat_map(|t| t.partitions())
            .filter(|p| p.policy().remote && p.is_leader())
            .map(|p| p as Arc<dyn LocalPartition>)
            .collect()
    }
}

/// On an empty data directory, brings back the single broker's metadata and
/// committed offsets from their snapshots in the object tier. (In a cluster
/// the metadata lives in etcd.)
pub(crate) async fn restore_metadata(
    tier: &strata_tier::Tier,
    meta_dir: &Path,
) -> anyhow::Result<()> {
    let metadata = meta_dir.join("metadata.json");
    if metadata.exists() {
        return Ok(());
    }
    let Some(image) = tier.get_snapshot(&keys::metadata_snapshot()).await? else {
        return Ok(());
    };
    let mut parsed = FileImage::parse(&image).map_err(|e| {
        anyhow::anyhow!("the metadata snapshot in the object tier does not parse: {e}")
    })?;
    // Producer ids handed out after the last snapshot must never be handed
    // out again: skip well past them.
    parsed.skip_producer_ids(PRODUCER_ID_SKIP_ON_RESTORE);
    let image = parsed.to_bytes();
    std::fs::create_dir_all(meta_dir)?;
    let offsets = tier.get_snapshot(&keys::offsets_snapshot()).await?;
    if let Some(o) = &offsets {
        write_synced(&meta_dir.join("offsets.json"), o)?;
        let _ = std::fs::remove_file(meta_dir.join("offsets.journal"));
    }
    write_synced(&metadata, &image)?;
    info!(
        topics = parsed.topic_count(),
        cluster_id = %parsed.cluster_id(),
        offsets = offsets.is_some(),
        "data directory was empty: restored topics and committed offsets from the object tier"
    );
    Ok(())
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("restore.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl Broker {
    /// Re-reads the remote manifest of every tiered partition this broker
    /// follows (their leaders write them), so local retention drops only
    /// segments the object tier holds.
    pub(crate) async fn refresh_followed_manifests(&self) {
        let followed: Vec<Arc<Partition>> = self
            .topics()
            .into_iter()
            .flat_map(|t| t.partitions())
            .filter(|p| p.policy().remote && !p.is_leader())
            .collect();
        let tier = self.tier().clone();
        futures::stream::iter(followed)
            .for_each_concurrent(16, |p| {
                let tier = tier.clone();
                async move {
                    tier.forget_topic_partition(p.topic_id, p.index);
                    if let Err(e) = tier.partition(&p.remote_id()).await {
                        tracing::debug!(topic = %p.topic, partition = p.index, error = %e, "cannot read the remote manifest");
                    }
                }
            })
            .await;
    }
}

/// Loads the manifests of every tiered partition this broker leads, so reads
/// below the hot window and retention know what the object tier holds from
/// the start. The single broker then deletes objects of topics that no
/// longer exist (in a cluster the controller does).
pub(crate) async fn load_remote_partitions(broker: &Arc<Broker>) {
    let ids: Vec<PartitionId> = broker.tiered_partitions().iter().map(|p| p.id()).collect();
    let tier = broker.tier().clone();
    futures::stream::iter(ids)
        .for_each_concurrent(16, |id| {
            let tier = tier.clone();
            async move {
                if let Err(e) = tier.partition(&id).await {
                    warn!(topic = %id.topic, partition = id.partition, error = %e, "cannot load the remote manifest; retried by the offloader");
                }
            }
        })
        .await;
    if broker.file_store.is_none() {
        return;
    }
    let live: Vec<(String, Uuid)> = broker
        .topics()
        .iter()
        .map(|t| (t.name.clone(), t.id))
        .collect();
    let tier = broker.tier().clone();
    tokio::spawn(async move {
        match tier.collect_garbage(&live).await {
            Ok(0) => {}
            Ok(n) => info!(
                objects = n,
                "deleted objects of topics that no longer exist"
            ),
            Err(e) => warn!(error = %e, "object tier garbage collection failed"),
        }
    });
}

static SNAPSHOT_LOCK: tokio::sync::Mutex<(u64, u64)> = tokio::sync::Mutex::const_new((0, 0));

/// Writes the single broker's metadata and committed offsets to the object
/// tier when they changed since the last snapshot.
pub(crate) async fn snapshot_metadata(broker: &Arc<Broker>) {
    let Some(store) = &broker.file_store else {
        return;
    };
    let mut last = SNAPSHOT_LOCK.lock().await;
    let version = broker.metadata_version.load(Ordering::SeqCst);
    let metadata = Bytes::from(store.file_image().to_bytes());
    let offsets = Bytes::from(
        serde_json::to_vec(&broker.groups().store().image()).expect("image serializes"),
    );
    let offsets_crc = crc32c::crc32c(&offsets) as u64;
    let tier = broker.tier();
    if version != last.0 {
        if let Err(e) = tier
            .put_snapshot(&keys::metadata_snapshot(), metadata)
            .await
        {
            warn!(error = %e, "cannot snapshot metadata to the object tier; will retry");
            return;
        }
        last.0 = version;
    }
    if offsets_crc != last.1 {
        if let Err(e) = tier.put_snapshot(&keys::offsets_snapshot(), offsets).await {
            warn!(error = %e, "cannot snapshot committed offsets to the object tier; will retry");
            return;
        }
        last.1 = offsets_crc;
    }
}

/// At shutdown: closes the active segment of every tiered partition and
/// uploads everything the object tier does not hold yet, then snapshots the
/// metadata, so a broker started on an empty disk finds it all.
pub async fn flush_to_tier(broker: &Arc<Broker>, deadline: Duration) {
    let partitions = broker.tiered_partitions();
    if !partitions.is_empty() {
        let b = broker.clone();
        let rolled = tokio::task::spawn_blocking(move || {
            let now = now_ms();
            for t in b.topics() {
                for p in t.partitions() {
                    if p.policy().remote {
                        if let Err(e) = p.with_log(|l| l.roll(now)) {
                            warn!(topic = %p.topic, partition = p.index, error = %e, "cannot roll the active segment for upload");
                        }
                    }
                }
            }
        })
        .await;
        if rolled.is_ok() {
            let tier = broker.tier().clone();
            match tokio::time::timeout(deadline, tier.offload_all(partitions, true)).await {
                Ok(n) => info!(segments = n, "uploaded the tail of every tiered partition"),
                Err(_) => warn!(
                    timeout_ms = deadline.as_millis() as u64,
                    "tail upload did not finish before the shutdown deadline; the rest is uploaded at next start"
                ),
            }
        }
    }
    snapshot_metadata(broker).await;
}

/// The produce guard's view of local disk: bytes of local segments, kept
/// exact by every append and deletion, and free space, read at most ten
/// times a second.
#[derive(Debug, Default)]
pub struct DiskGuard {
    pub(crate) used: Arc<AtomicU64>,
    free: AtomicU64,
    free_checked_at_ms: AtomicI64,
    refusing: AtomicBool,
}

impl Broker {
    /// Whether produce may append: refused (retriably) while local disk is
    /// short, per the local disk policy above.
    pub(crate) fn check_disk(&self) -> Result<(), ApiError> {
        let log = &self.config().log;
        let now = now_ms();
        let last = self.disk.free_checked_at_ms.load(Ordering::Relaxed);
        if now - last >= 100
            && self
                .disk
                .free_checked_at_ms
                .compare_exchange(last, now, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
        {
            let free = nix::sys::statvfs::statvfs(&self.config().data_dir)
                .map(|s| s.blocks_available() * s.fragment_size())
                .unwrap_or(u64::MAX);
            self.disk.free.store(free, Ordering::Relaxed);
        }
        let free = self.disk.free.load(Ordering::Relaxed);
        let used = self.disk.used.load(Ordering::Relaxed);
        let problem = if free < log.disk_free_min_bytes {
            Some(format!(
                "local disk has {free} bytes free, below log.disk_free_min_bytes ({}): produce resumes when uploads to the object tier let old segments go",
                log.disk_free_min_bytes
            ))
        } else if log.disk_usage_max_bytes > 0 && used > log.disk_usage_max_bytes {
            Some(format!(
                "local segments take {used} bytes, above log.disk_usage_max_bytes ({}): produce resumes when uploads to the object tier let old segments go",
                log.disk_usage_max_bytes
            ))
        } else {
            None
        };
        let was = self
            .disk
            .refusing
            .swap(problem.is_some(), Ordering::Relaxed);
        match (problem, was) {
            (Some(p), false) => {
                warn!(reason = %p, "refusing produce");
                Err(ApiError::new(ResponseError::KafkaStorageError, p))
            }
            (Some(p), true) => Err(ApiError::new(ResponseError::KafkaStorageError, p)),
            (None, true) => {
                info!("local disk below its limits again; accepting produce");
                Ok(())
            }
            (None, false) => Ok(()),
        }
    }

    /// Bytes of local segments across partitions.
    pub fn local_bytes(&self) -> u64 {
        self.disk.used.load(Ordering::Relaxed)
    }
}

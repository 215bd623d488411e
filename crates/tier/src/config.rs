//! Object tier settings (`[tier]` in the broker's config file).
//!
//! The per-topic switches and hot window (`remote.storage.enable`,
//! `local.retention.ms`, `local.retention.bytes`) are topic configs with
//! broker defaults in `[log]`; this section says where the tier is and how
//! hard the broker may use it.

use serde::{Deserialize, Serialize};

/// `[tier]` settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TierConfig {
    /// Where the object tier is: `s3://bucket/prefix`, `file:///path` or
    /// `memory://`. Empty: a directory `tier` under the data directory.
    pub object_store: String,
    /// S3 region. Empty: `AWS_REGION` / `AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: String,
    /// S3 endpoint for S3-compatible servers (MinIO...). Empty:
    /// `AWS_ENDPOINT_URL`, else AWS. Path-style requests are used with an endpoint.
    pub endpoint: String,
    /// Allow plain `http://` endpoints that are not on a loopback address
    /// (loopback endpoints are always allowed).
    pub allow_http: bool,
    /// Create the bucket on start when it does not exist (S3 only).
    pub create_bucket: bool,
    /// Partitions uploading at once.
    pub upload_concurrency: usize,
    /// Upload bandwidth cap across the broker, bytes per second (0: none).
    pub upload_bytes_per_second: u64,
    /// How often the offloader looks for closed segments.
    pub offload_interval_ms: u64,
    /// Size of the ranges cold reads fetch and cache.
    pub chunk_bytes: u64,
    /// Chunks read ahead of a sequential cold reader (across segment ends).
    pub prefetch_chunks: usize,
    /// Memory cache for cold chunks, bytes.
    pub cache_memory_bytes: u64,
    /// Disk cache for cold chunks, bytes (0: no disk cache).
    pub cache_disk_bytes: u64,
    /// Disk cache directory. Empty: `cache` under the data directory. Emptied
    /// at start.
    pub cache_dir: String,
    /// Object-store GETs cold reads may have in flight.
    pub cold_read_concurrency: usize,
    /// Bytes cold reads may have in flight from the object store.
    pub cold_read_max_bytes_in_flight: u64,
    /// Bytes per second cold reads may fetch from the object store, across
    /// the broker (Kafka's `remote.log.manager.fetch.max.bytes.per.second`;
    /// 0: none). Cache hits do not count.
    pub cold_read_bytes_per_second: u64,
    /// Timeout of one object-store request.
    pub request_timeout_ms: u64,
    /// Largest wait between retries of a failing upload.
    pub retry_max_backoff_ms: u64,
    /// How often the broker's metadata and committed offsets are snapshotted
    /// to the object tier (also on every topic change and at shutdown).
    pub metadata_snapshot_interval_ms: u64,
    /// At shutdown, how long the broker may spend uploading the tail of each
    /// tiered partition (its active segment, rolled) so that a broker started
    /// on an empty disk finds everything in the object tier.
    pub shutdown_upload_timeout_ms: u64,
}

impl Default for TierConfig {
    fn default() -> Self {
        Self {
            object_store: String::new(),
            region: String::new(),
            endpoint: String::new(),
            allow_http: false,
            create_bucket: true,
            upload_concurrency: 4,
            upload_bytes_per_second: 0,
            offload_interval_ms: 1_000,
            chunk_bytes: 4 << 20,
            prefetch_chunks: 2,
            cache_memory_bytes: 256 << 20,
            cache_disk_bytes: 2 << 30,
            cache_dir: String::new(),
            cold_read_concurrency: 16,
            cold_read_max_bytes_in_flight: 128 << 20,
            cold_read_bytes_per_second: 64 << 20,
            request_timeout_ms: 30_000,
            retry_max_backoff_ms: 30_000,
            metadata_snapshot_interval_ms: 10_000,
            shutdown_upload_timeout_ms: 30_000,
        }
    }
}

impl TierConfig {
    /// Checks values that types cannot.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("upload_concurrency", self.upload_concurrency as u64),
            ("offload_interval_ms", self.offload_interval_ms),
            ("chunk_bytes", self.chunk_bytes),
            ("cold_read_concurrency", self.cold_read_concurrency as u64),
            ("request_timeout_ms", self.request_timeout_ms),
            ("retry_max_backoff_ms", self.retry_max_backoff_ms),
            (
                "metadata_snapshot_interval_ms",
                self.metadata_snapshot_interval_ms,
            ),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(format!("tier.{name} must be > 0"));
            }
        }
        if self.chunk_bytes < 64 << 10 || self.chunk_bytes > 64 << 20 {
            return Err(format!(
                "tier.chunk_bytes must be between 64 KiB and 64 MiB, got {}",
                self.chunk_bytes
            ));
        }
        if self.cold_read_max_bytes_in_flight < self.chunk_bytes {
            return Err(
                "tier.cold_read_max_bytes_in_flight must be at least tier.chunk_bytes".into(),
            );
        }
        if self.cache_memory_bytes < self.chunk_bytes {
            return Err("tier.cache_memory_bytes must be at least tier.chunk_bytes".into());
        }
        let url = self.object_store.trim();
        if !(url.is_empty()
            || url.starts_with("s3://")
            || url.starts_with("file://")
            || url.starts_with("memory://"))
        {
            return Err(format!(
                "tier.object_store '{url}' is not s3://bucket/prefix, file:///path or memory://"
            ));
        }
        Ok(())
    }
}

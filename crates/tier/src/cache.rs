//! The cold cache: chunks of remote segments in memory and on local disk,
//! each within a byte budget.
//!
//! Both levels admit with moka's TinyLFU, so one consumer replaying a month of
//! history does not evict the chunks everyone else keeps reading. Concurrent
//! requests for one chunk share one fetch. The disk level is a directory of
//! files, each written to a temporary name and renamed, emptied at start-up
//! (its index lives in memory only); a file carries its key, so a stale or
//! colliding file is a miss, never wrong data.

use std::future::Future;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use moka::notification::RemovalCause;
use tracing::{debug, warn};

use crate::{Error, Result};

/// A chunk: an object key and the chunk's index within it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChunkKey {
    /// Object key.
    pub object: Arc<str>,
    /// Chunk number (its first byte is `index * chunk_bytes`).
    pub index: u64,
}

/// Counters and sizes of the cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Served from memory.
    pub hits_memory: u64,
    /// Served from disk.
    pub hits_disk: u64,
    /// Fetched from the object store.
    pub misses: u64,
    /// Bytes fetched from the object store.
    pub fetched_bytes: u64,
    /// Bytes in memory now.
    pub memory_bytes: u64,
    /// Chunks in memory now.
    pub memory_entries: u64,
    /// Bytes on disk now.
    pub disk_bytes: u64,
    /// Chunks on disk now.
    pub disk_entries: u64,
    /// Memory budget.
    pub memory_budget: u64,
    /// Disk budget.
    pub disk_budget: u64,
}

struct DiskCache {
    dir: PathBuf,
    index: moka::sync::Cache<ChunkKey, u32>,
    budget: u64,
}

fn file_name(key: &ChunkKey) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    format!("{:016x}.chunk", h.finish())
}

impl DiskCache {
    fn open(dir: &Path, budget: u64) -> Result<Self> {
        // Start empty: the index of what is there is not persisted.
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        std::fs::create_dir_all(dir)?;
        let evict_dir = dir.to_path_buf();
        let index = moka::sync::Cache::builder()
            .max_capacity(budget)
            .weigher(|_k: &ChunkKey, size: &u32| *size)
            .eviction_listener(move |k: Arc<ChunkKey>, _v: u32, cause: RemovalCause| {
                if cause != RemovalCause::Replaced {
                    let _ = std::fs::remove_file(evict_dir.join(file_name(&k)));
                }
            })
            .build();
        Ok(Self {
            dir: dir.to_path_buf(),
            index,
            budget,
        })
    }

    async fn get(&self, key: &ChunkKey) -> Option<Bytes> {
        self.index.get(key)?;
        let path = self.dir.join(file_name(key));
        let want = key.clone();
        let read = tokio::task::spawn_blocking(move || -> std::io::Result<Option<Bytes>> {
            let bytes = std::fs::read(&path)?;
            let Some((head, body)) = bytes.split_at_checked(10) else {
                return Ok(None);
            };
            let key_len = u16::from_be_bytes([head[0], head[1]]) as usize;
            let index = u64::from_be_bytes(head[2..10].try_into().expect("8 bytes"));
            let Some((k, data)) = body.split_at_checked(key_len) else {
                return Ok(None);
            };
            if k != want.object.as_bytes() || index != want.index {
                return Ok(None);
            }
            Ok(Some(Bytes::copy_from_slice(data)))
        })
        .await;
        match read {
            Ok(Ok(Some(b))) => Some(b),
            _ => {
                self.index.invalidate(key);
                None
            }
        }
    }

    async fn put(&self, key: ChunkKey, data: Bytes) {
        if data.len() as u64 > self.budget {
            return;
        }
        let path = self.dir.join(file_name(&key));
        let k = key.clone();
        let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use std::io::Write;
            let tmp = path.with_extension("tmp");
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&(k.object.len() as u16).to_be_bytes())?;
            f.write_all(&k.index.to_be_bytes())?;
            f.write_all(k.object.as_bytes())?;
            f.write_all(&data)?;
            drop(f);
            std::fs::rename(&tmp, &path)
        })
        .await;
        match written {
            Ok(Ok(())) => {
                let size = std::fs::metadata(self.dir.join(file_name(&key)))
                    .map(|m| m.len() as u32)
                    .unwrap_or(0);
                self.index.insert(key, size);
                self.index.run_pending_tasks();
            }
            Ok(Err(e)) => {
                warn!(dir = %self.dir.display(), error = %e, "cannot write to the disk cache")
            }
            Err(e) => warn!(error = %e, "disk cache task failed"),
        }
    }
}

/// The two-level chunk cache.
pub struct ChunkCache {
    memory: moka::future::Cache<ChunkKey, Bytes>,
    disk: Option<DiskCache>,
    memory_budget: u64,
    hits_memory: AtomicU64,
    hits_disk: AtomicU64,
    misses: AtomicU64,
    fetched_bytes: AtomicU64,
}

impl std::fmt::Debug for ChunkCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkCache")
            .field("stats", &self.stats())
            .finish()
    }
}

impl ChunkCache {
    /// A cache with `memory_bytes` in memory and, when `disk` is given,
    /// `disk_bytes` in that directory (emptied now).
    pub fn new(memory_bytes: u64, disk: Option<(&Path, u64)>) -> Result<Self> {
        let memory = moka::future::Cache::builder()
            .max_capacity(memory_bytes)
            .weigher(|_k: &ChunkKey, v: &Bytes| v.len().min(u32::MAX as usize) as u32)
            .build();
        let disk = match disk {
            Some((dir, bytes)) if bytes > 0 => Some(DiskCache::open(dir, bytes)?),
            _ => None,
        };
        Ok(Self {
            memory,
            disk,
            memory_budget: memory_bytes,
            hits_memory: AtomicU64::new(0),
            hits_disk: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            fetched_bytes: AtomicU64::new(0),
        })
    }

    /// Whether the chunk is cached (memory or disk), without touching it.
    pub fn contains(&self, key: &ChunkKey) -> bool {
        self.memory.contains_key(key)
            || self
                .disk
                .as_ref()
                .is_some_and(|d| d.index.contains_key(key))
    }

    /// The chunk from memory, else disk, else `fetch` (shared by concurrent
    /// callers), keeping what it returns.
    pub async fn get_or_fetch<F>(&self, key: ChunkKey, fetch: F) -> Result<Bytes>
    where
        F: Future<Output = Result<Bytes>>,
    {
        if let Some(b) = self.memory.get(&key).await {
            self.hits_memory.fetch_add(1, Ordering::Relaxed);
            return Ok(b);
        }
        let k = key.clone();
        let loaded = self
            .memory
            .try_get_with(key, async move {
                if let Some(d) = &self.disk {
                    if let Some(b) = d.get(&k).await {
                        self.hits_disk.fetch_add(1, Ordering::Relaxed);
                        return Ok(b);
                    }
                }
                self.misses.fetch_add(1, Ordering::Relaxed);
                let b = fetch.await?;
                self.fetched_bytes
                    .fetch_add(b.len() as u64, Ordering::Relaxed);
                if let Some(d) = &self.disk {
                    d.put(k, b.clone()).await;
                }
                Ok::<Bytes, Error>(b)
            })
            .await;
        self.memory.run_pending_tasks().await;
        loaded.map_err(|e| match Arc::try_unwrap(e) {
            Ok(e) => e,
            Err(shared) => {
                debug!(error = %shared, "shared chunk fetch failed");
                clone_error(&shared)
            }
        })
    }

    /// Drops every chunk of `object` (its object was deleted).
    pub fn forget_object(&self, object: &str) {
        let o: Arc<str> = Arc::from(object);
        let _ = self.memory.invalidate_entries_if(move |k, _| k.object == o);
    }

    /// Counters and sizes.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits_memory: self.hits_memory.load(Ordering::Relaxed),
            hits_disk: self.hits_disk.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            fetched_bytes: self.fetched_bytes.load(Ordering::Relaxed),
            memory_bytes: self.memory.weighted_size(),
            memory_entries: self.memory.entry_count(),
            disk_bytes: self.disk.as_ref().map_or(0, |d| d.index.weighted_size()),
            disk_entries: self.disk.as_ref().map_or(0, |d| d.index.entry_count()),
            memory_budget: self.memory_budget,
            disk_budget: self.disk.as_ref().map_or(0, |d| d.budget),
        }
    }
}

/// Errors are shared between the callers of one fetch; each gets a copy
/// that keeps what matters (the kind and the message).
fn clone_error(e: &Error) -> Error {
    match e {
        Error::Timeout { op, key, after_ms } => Error::Timeout {
            op,
            key: key.clone(),
            after_ms: *after_ms,
        },
        Error::Corrupt { key, reason } => Error::Corrupt {
            key: key.clone(),
            reason: reason.clone(),
        },
        Error::OffsetNotRemote { offset, start, end } => Error::OffsetNotRemote {
            offset: *offset,
            start: *start,
            end: *end,
        },
        other => Error::Io(std::io::Error::other(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(o: &str, i: u64) -> ChunkKey {
        ChunkKey {
            object: Arc::from(o),
            index: i,
        }
    }

    #[tokio::test]
    async fn chunks_come_from_memory_then_disk_then_the_store() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("c")).unwrap();
        std::fs::write(dir.path().join("c/leftover.chunk"), b"old").unwrap();
        let cache = ChunkCache::new(1 << 20, Some((&dir.path().join("c"), 1 << 20))).unwrap();
        assert!(
            !dir.path().join("c/leftover.chunk").exists(),
            "cleaned at start"
        );
        let b = cache
            .get_or_fetch(key("a", 0), async { Ok(Bytes::from_static(b"data")) })
            .await
            .unwrap();
        assert_eq!(&b[..], b"data");
        let again = cache
            .get_or_fetch(key("a", 0), async { panic!("must not fetch twice") })
            .await
            .unwrap();
        assert_eq!(again, b);
        cache.memory.invalidate_all();
        cache.memory.run_pending_tasks().await;
        let from_disk = cache
            .get_or_fetch(key("a", 0), async { panic!("must come from disk") })
            .await
            .unwrap();
        assert_eq!(from_disk, b);
        let s = cache.stats();
        assert_eq!((s.misses, s.hits_memory, s.hits_disk), (1, 1, 1));
    }

    #[tokio::test]
    async fn both_levels_stay_within_their_budgets() {
        let dir = tempfile::tempdir().unwrap();
        let chunk = Bytes::from(vec![7u8; 64 << 10]);
        let cache = ChunkCache::new(1 << 20, Some((dir.path(), 2 << 20))).unwrap();
        for i in 0..200 {
            let c = chunk.clone();
            cache
                .get_or_fetch(key("big", i), async move { Ok(c) })
                .await
                .unwrap();
            let s = cache.stats();
            assert!(
                s.memory_bytes <= 1 << 20,
                "memory {} after {i}",
                s.memory_bytes
            );
            assert!(
                s.disk_bytes <= (2 << 20) + (64 << 10) + 64,
                "disk {} after {i}",
                s.disk_bytes
            );
        }
        let on_disk: u64 = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(
            on_disk <= (2 << 20) + (64 << 10) + 64,
            "files on disk: {on_disk}"
        );
    }

    #[tokio::test]
    async fn a_failed_fetch_is_not_cached() {
        let cache = ChunkCache::new(1 << 20, None).unwrap();
        let err = cache
            .get_or_fetch(key("x", 0), async {
                Err(Error::Timeout {
                    op: "get",
                    key: "x".into(),
                    after_ms: 1,
                })
            })
            .await;
        assert!(matches!(err, Err(Error::Timeout { .. })));
        let ok = cache
            .get_or_fetch(key("x", 0), async { Ok(Bytes::from_static(b"y")) })
            .await
            .unwrap();
        assert_eq!(&ok[..], b"y");
    }
}

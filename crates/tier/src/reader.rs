//! Cold reads: Fetch and ListOffsets for offsets only the object tier holds.
//!
//! A read finds the segment in the manifest, the batch position in the
//! segment's remote index, and reads chunk-aligned ranges of the `.log`
//! object through the cache, returning whole batches as they were stored.
//! After each read the chunks that follow (into the next segment when the
//! read reached the end of this one) are fetched ahead in the background, if
//! the prefetch budget allows. Every GET takes a permit of the cold-read
//! concurrency budget, the chunk's size from the bytes-in-flight budget and
//! its transmission time from the broker-wide cold-read byte rate
//! (`cold_read_bytes_per_second`, Kafka's
//! `remote.log.manager.fetch.max.bytes.per.second`), so replays queue behind
//! each other instead of crowding out produce and hot fetches.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use object_store::path::Path;
use strata_log::batch::{self, HEADER_LEN, LOG_OVERHEAD};
use tracing::debug;

use crate::cache::ChunkKey;
use crate::manifest::RemoteSegment;
use crate::tier::{kib, PartitionId, Tier};
use crate::{Error, Result};

/// Contiguous bytes of one object assembled from chunks.
struct Window {
    /// Absolute position of `chunks[0]`'s first byte.
    start: u64,
    chunks: Vec<Bytes>,
    len: u64,
}

impl Window {
    fn end(&self) -> u64 {
        self.start + self.len
    }

    fn push(&mut self, b: Bytes) {
        self.len += b.len() as u64;
        self.chunks.push(b);
    }

    /// Bytes `[from, to)` (absolute), zero-copy within one chunk.
    fn slice(&self, from: u64, to: u64) -> Bytes {
        let mut pos = self.start;
        let mut parts = Vec::new();
        for c in &self.chunks {
            let c_end = pos + c.len() as u64;
            if c_end > from && pos < to {
                let a = from.max(pos) - pos;
                let b = to.min(c_end) - pos;
                parts.push(c.slice(a as usize..b as usize));
            }
            pos = c_end;
        }
        match parts.len() {
            0 => Bytes::new(),
            1 => parts.pop().expect("one part"),
            _ => {
                let mut out = BytesMut::with_capacity((to - from) as usize);
                for p in parts {
                    out.extend_from_slice(&p);
                }
                out.freeze()
            }
        }
    }
}

impl Tier {
    fn chunk_bounds(&self, size: u64, index: u64) -> (u64, u64) {
        let c = self.config.chunk_bytes;
        (index * c, ((index + 1) * c).min(size))
    }

    /// One chunk of a `.log` object, from the cache or the store.
    async fn read_chunk(&self, object: &Path, size: u64, index: u64) -> Result<Bytes> {
        let (start, end) = self.chunk_bounds(size, index);
        if start >= end {
            return Ok(Bytes::new());
        }
        let key = ChunkKey {
            object: Arc::from(object.as_ref()),
            index,
        };
        self.cache
            .get_or_fetch(key, async {
                let _slot = self.cold_gets.acquire().await.expect("never closed");
                let _bytes = self
                    .cold_bytes
                    .acquire_many(kib(end - start))
                    .await
                    .expect("never closed");
                self.cold_rate.acquire(end - start).await;
                self.remote.get_range(object, start..end).await
            })
            .await
    }

    /// Reads whole batches from `offset` on, up to `max_bytes` (at least one
    /// batch when `min_one`), from the segment that holds it. Empty when the
    /// object tier does not hold `offset`.
    pub async fn read(
        self: &Arc<Self>,
        id: &PartitionId,
        offset: i64,
        max_bytes: usize,
        min_one: bool,
    ) -> Result<Bytes> {
        let rp = self.partition(id).await?;
        let Some(seg) = self.segment_at(&rp, offset).await? else {
            let m = rp.manifest();
            return Err(Error::OffsetNotRemote {
                offset,
                start: m.readable_start(),
                end: m.next_offset(),
            });
        };
        let idx = self.remote_index(id, &seg).await?;
        let object = id.log_key(&seg);
        let position = idx.offsets.lookup(offset).position;
        let (bytes, last_chunk) = self
            .read_batches(&object, seg.size_bytes, position, max_bytes, min_one, |h| {
                h.last_offset() >= offset
            })
            .await?;
        self.prefetch(id, &seg, last_chunk);
        Ok(bytes)
    }

    /// Scans batch headers from `position` to the first batch `wanted`
    /// accepts, then takes whole batches up to `max_bytes`. Returns them and
    /// the last chunk touched.
    async fn read_batches(
        &self,
        object: &Path,
        size: u64,
        position: u64,
        max_bytes: usize,
        min_one: bool,
        wanted: impl Fn(&batch::BatchHeader) -> bool,
    ) -> Result<(Bytes, u64)> {
        let c = self.config.chunk_bytes;
        let mut index = position / c;
        let first = self.read_chunk(object, size, index).await?;
        let mut w = Window {
            start: index * c,
            chunks: Vec::new(),
            len: 0,
        };
        w.push(first);
        let corrupt = |reason: String| Error::Corrupt {
            key: object.to_string(),
            reason,
        };
        let mut pos = position;
        let mut begin: Option<u64> = None;
        let mut end = position;
        while pos + LOG_OVERHEAD as u64 <= size {
            // Make sure the whole header, then the whole batch, is in the window.
            while w.end() < (pos + HEADER_LEN as u64).min(size) {
                index += 1;
                let next = self.read_chunk(object, size, index).await?;
                w.push(next);
            }
            let head = w.slice(pos, (pos + HEADER_LEN as u64).min(size));
            let h = batch::parse_header(&head).map_err(|e| corrupt(format!("at {pos}: {e}")))?;
            let batch_end = pos + h.size as u64;
            if batch_end > size {
                return Err(corrupt(format!(
                    "batch at {pos} runs past the object's end"
                )));
            }
            if begin.is_none() && !wanted(&h) {
                pos = batch_end;
                end = pos;
                continue;
            }
            let from = *begin.get_or_insert(pos);
            let taken = (batch_end - from) as usize;
            if taken > max_bytes && !(min_one && from == pos) {
                break;
            }
            while w.end() < batch_end {
                index += 1;
                let next = self.read_chunk(object, size, index).await?;
                w.push(next);
            }
            pos = batch_end;
            end = pos;
            if taken >= max_bytes {
                break;
            }
        }
        let bytes = match begin {
            Some(from) => w.slice(from, end),
            None => Bytes::new(),
        };
        Ok((bytes, index))
    }

    /// Fetches the chunks after `last_chunk` into the cache in the
    /// background: the rest of this segment, then the next one's start.
    fn prefetch(self: &Arc<Self>, id: &PartitionId, seg: &RemoteSegment, last_chunk: u64) {
        let n = self.config.prefetch_chunks as u64;
        if n == 0 {
            return;
        }
        let chunks_in = seg.size_bytes.div_ceil(self.config.chunk_bytes);
        let this = self.clone();
        let id = id.clone();
        let seg = seg.clone();
        let Ok(permit) = self.prefetches.clone().try_acquire_owned() else {
            return;
        };
        tokio::spawn(async move {
            let _permit = permit;
            let object = id.log_key(&seg);
            let mut left = n;
            for i in last_chunk + 1..chunks_in.min(last_chunk + 1 + n) {
                this.prefetch_one(&object, seg.size_bytes, i).await;
                left -= 1;
            }
            if left == 0 {
                return;
            }
            let Ok(rp) = this.partition(&id).await else {
                return;
            };
            if let Ok(Some(next)) = this.segment_at(&rp, seg.next_offset).await {
                let _ = this.remote_index(&id, &next).await;
                let object = id.log_key(&next);
                for i in 0..left.min(next.size_bytes.div_ceil(this.config.chunk_bytes)) {
                    this.prefetch_one(&object, next.size_bytes, i).await;
                }
            }
        });
    }

    async fn prefetch_one(&self, object: &Path, size: u64, index: u64) {
        let key = ChunkKey {
            object: Arc::from(object.as_ref()),
            index,
        };
        if self.cache.contains(&key) {
            return;
        }
        if let Err(e) = self.read_chunk(object, size, index).await {
            debug!(object = %object, chunk = index, error = %e, "prefetch failed");
        }
    }

    /// The first remote batch with a record at or after `ts` (the caller finds
    /// the record in it), or `None` if no remote segment has such a record.
    pub async fn batch_for_timestamp(
        self: &Arc<Self>,
        id: &PartitionId,
        ts: i64,
    ) -> Result<Option<Bytes>> {
        let rp = self.partition(id).await?;
        let Some(seg) = self.segment_for_timestamp(&rp, ts).await? else {
            return Ok(None);
        };
        let idx = self.remote_index(id, &seg).await?;
        let from = idx.times.scan_start(ts);
        let position = idx.offsets.lookup(from).position;
        let object = id.log_key(&seg);
        let (bytes, _) = self
            .read_batches(&object, seg.size_bytes, position, 1, true, |h| {
                h.max_timestamp >= ts
            })
            .await?;
        Ok((!bytes.is_empty()).then_some(bytes))
    }
}

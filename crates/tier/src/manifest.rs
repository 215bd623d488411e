//! The remote manifest of one partition: which segments the object tier
//! holds. Pure data and its rules; loading and committing live in
//! [`crate::tier`].
//!
//! To scale to months of history without holding every segment in memory, the
//! root manifest (`manifest.json`, rewritten on every commit) keeps only the
//! newest segments (its tail) and, for older history, one small [`ChunkRef`]
//! per [`SEGMENTS_PER_CHUNK`] segments. Each chunk is an immutable object
//! written before the root that first names it; a cold read or a retention
//! pass loads only the chunk it needs.
//!
//! Invariants:
//! - segments are contiguous: each starts at the previous one's next offset;
//! - chunks are older than the tail and in offset order;
//! - `log_start_offset` is the base of the oldest segment held (or the next
//!   offset when none is held);
//! - readers see offsets from [`PartitionManifest::readable_start`]: the log
//!   start, or `deleted_below` where DeleteRecords moved it further (the
//!   objects below it stay until the lake has read them);
//! - `generation` grows by one on every commit;
//! - `pending_deletes` names objects no longer referenced whose deletion may
//!   not have completed;
//! - `leader_epoch` is the epoch of the partition leader that wrote it last;
//!   a writer with an older epoch (a deposed leader) must not commit.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Format version of manifests written by this code.
pub const MANIFEST_VERSION: u32 = 1;

/// Segments per sealed manifest chunk.
pub const SEGMENTS_PER_CHUNK: usize = 1000;

/// One segment in the object tier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteSegment {
    /// First offset.
    pub base_offset: i64,
    /// Offset after the last record.
    pub next_offset: i64,
    /// Size of the `.log` object.
    pub size_bytes: u64,
    /// Largest record timestamp (-1 when unknown).
    pub max_timestamp: i64,
    /// Leader epoch the segment was written in.
    pub leader_epoch: i32,
    /// When it was uploaded (ms since the epoch).
    pub uploaded_at_ms: i64,
}

/// A sealed run of segments stored in its own object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// The chunk object's key (relative to the store's prefix).
    pub key: String,
    /// First offset of the first segment.
    pub base_offset: i64,
    /// Next offset of the last segment.
    pub next_offset: i64,
    /// Largest timestamp of any segment in it.
    pub max_timestamp: i64,
    /// Bytes of all its segments.
    pub size_bytes: u64,
    /// Number of segments.
    pub segments: usize,
}

/// The body of a chunk object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestChunk {
    /// Format version.
    pub version: u32,
    /// Its segments, oldest first.
    pub segments: Vec<RemoteSegment>,
}

/// The root manifest of a partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionManifest {
    /// Format version.
    pub version: u32,
    /// Commit number: one more on every commit.
    pub generation: u64,
    /// Topic name.
    pub topic: String,
    /// Topic id.
    pub topic_id: Uuid,
    /// Partition index.
    pub partition: i32,
    /// First offset the object tier holds.
    pub log_start_offset: i64,
    /// Sealed chunks, oldest first.
    #[serde(default)]
    pub chunks: Vec<ChunkRef>,
    /// The newest segments, oldest first.
    #[serde(default)]
    pub segments: Vec<RemoteSegment>,
    /// Keys removed from the manifest whose objects may still exist.
    #[serde(default)]
    pub pending_deletes: Vec<String>,
    /// Leader epoch of the broker that committed it (0 in manifests written
    /// before epochs were recorded).
    #[serde(default)]
    pub leader_epoch: i32,
    /// DeleteRecords: offsets below this are deleted for readers; segments
    /// wholly below it go at the next retention pass (0: never set).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub deleted_below: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// Where a segment is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// In the root's tail, at this index.
    Tail(usize),
    /// In the chunk at this index of `chunks`.
    Chunk(usize),
}

/// A chunk to write before committing the root that names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seal {
    /// Where to write it.
    pub key: String,
    /// What to write.
    pub chunk: ManifestChunk,
}

impl PartitionManifest {
    /// An empty manifest.
    pub fn new(topic: &str, topic_id: Uuid, partition: i32) -> Self {
        Self {
            version: MANIFEST_VERSION,
            generation: 0,
            topic: topic.to_string(),
            topic_id,
            partition,
            log_start_offset: 0,
            chunks: Vec::new(),
            segments: Vec::new(),
            pending_deletes: Vec::new(),
            leader_epoch: 0,
            deleted_below: 0,
        }
    }

    /// The first offset readers may read (see `deleted_below`).
    pub fn readable_start(&self) -> i64 {
        self.log_start_offset.max(self.deleted_below)
    }

    /// The readable range `[start, end)`, `None` when nothing is readable.
    pub fn readable_range(&self) -> Option<(i64, i64)> {
        let (start, end) = (self.readable_start(), self.next_offset());
        (!self.is_empty() && start < end).then_some((start, end))
    }

    /// Whether it holds no segment.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty() && self.segments.is_empty()
    }

    /// The offset after the last segment held (where the next upload starts).
    pub fn next_offset(&self) -> i64 {
        self.segments
            .last()
            .map(|s| s.next_offset)
            .or_else(|| self.chunks.last().map(|c| c.next_offset))
            .unwrap_or(self.log_start_offset)
    }

    /// Bytes of every segment held.
    pub fn size_bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.size_bytes).sum::<u64>()
            + self.segments.iter().map(|s| s.size_bytes).sum::<u64>()
    }

    /// Number of segments held.
    pub fn segment_count(&self) -> usize {
        self.chunks.iter().map(|c| c.segments).sum::<usize>() + self.segments.len()
    }

    /// Records an uploaded segment. It must start where the manifest ends
    /// (anywhere, when the manifest is empty). Returns a chunk to seal when the
    /// tail has grown to two chunks' worth: write it, then commit.
    pub fn append(
        &mut self,
        segment: RemoteSegment,
        chunk_key: impl FnOnce(i64, u64) -> String,
    ) -> Result<Option<Seal>, String> {
        if segment.next_offset <= segment.base_offset {
            return Err(format!(
                "segment [{}, {}) is empty",
                segment.base_offset, segment.next_offset
            ));
        }
        if self.is_empty() {
            self.log_start_offset = segment.base_offset;
        } else if segment.base_offset != self.next_offset() {
            return Err(format!(
                "segment starts at {}, the manifest ends at {}",
                segment.base_offset,
                self.next_offset()
            ));
        }
        self.segments.push(segment);
        if self.segments.len() < 2 * SEGMENTS_PER_CHUNK {
            return Ok(None);
        }
        let sealed: Vec<RemoteSegment> = self.segments.drain(..SEGMENTS_PER_CHUNK).collect();
        let key = chunk_key(sealed[0].base_offset, self.generation + 1);
        self.chunks.push(ChunkRef {
            key: key.clone(),
            base_offset: sealed[0].base_offset,
            next_offset: sealed.last().expect("non-empty").next_offset,
            max_timestamp: sealed.iter().map(|s| s.max_timestamp).max().unwrap_or(-1),
            size_bytes: sealed.iter().map(|s| s.size_bytes).sum(),
            segments: sealed.len(),
        });
        Ok(Some(Seal {
            key,
            chunk: ManifestChunk {
                version: MANIFEST_VERSION,
                segments: sealed,
            },
        }))
    }

    /// Where the segment holding `offset` is, if the manifest holds it.
    pub fn locate(&self, offset: i64) -> Option<Location> {
        if offset < self.readable_start() || offset >= self.next_offset() {
            return None;
        }
        if let Some(first) = self.segments.first() {
            if offset >= first.base_offset {
                let i = self.segments.partition_point(|s| s.next_offset <= offset);
                return Some(Location::Tail(i));
            }
        }
        let i = self.chunks.partition_point(|c| c.next_offset <= offset);
        (i < self.chunks.len()).then_some(Location::Chunk(i))
    }

    /// Where the first segment with a timestamp at or after `ts` is.
    pub fn locate_timestamp(&self, ts: i64) -> Option<Location> {
        if let Some(i) = self.chunks.iter().position(|c| c.max_timestamp >= ts) {
            return Some(Location::Chunk(i));
        }
        self.segments
            .iter()
            .position(|s| s.max_timestamp >= ts)
            .map(Location::Tail)
    }
}

/// How many segments from the front of `segments` are past retention.
///
/// `total_bytes` is the partition's size counting these segments (and the
/// local segments not in the object tier); a segment expires by size while the
/// rest still holds at least `retention_bytes`, and by time when its newest
/// record is older than `retention_ms`. -1 disables either. Segments wholly
/// below `deleted_below` (DeleteRecords) expire too.
pub fn expired_prefix(
    segments: &[RemoteSegment],
    now_ms: i64,
    retention_ms: i64,
    retention_bytes: i64,
    deleted_below: i64,
    mut total_bytes: u64,
) -> usize {
    let mut n = 0;
    for s in segments {
        let by_bytes = retention_bytes >= 0
            && total_bytes.saturating_sub(s.size_bytes) >= retention_bytes as u64;
        let by_time =
            retention_ms >= 0 && s.max_timestamp >= 0 && now_ms - s.max_timestamp > retention_ms;
        let by_floor = s.next_offset <= deleted_below;
        if !(by_bytes || by_time || by_floor) {
            break;
        }
        total_bytes -= s.size_bytes;
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(base: i64, len: i64, ts: i64) -> RemoteSegment {
        RemoteSegment {
            base_offset: base,
            next_offset: base + len,
            size_bytes: len as u64 * 10,
            max_timestamp: ts,
            leader_epoch: 0,
            uploaded_at_ms: 0,
        }
    }

    fn key(base: i64, generation: u64) -> String {
        format!("chunk-{base}-{generation}")
    }

    #[test]
    fn segments_must_be_contiguous() {
        let mut m = PartitionManifest::new("t", Uuid::nil(), 0);
        m.append(seg(500, 10, 1), key).unwrap();
        assert_eq!((m.log_start_offset, m.next_offset()), (500, 510));
        assert!(m.append(seg(511, 10, 1), key).is_err());
        assert!(m.append(seg(505, 10, 1), key).is_err());
        m.append(seg(510, 5, 1), key).unwrap();
        assert_eq!(m.next_offset(), 515);
    }

    #[test]
    fn the_tail_is_sealed_into_chunks_and_lookups_find_both() {
        let mut m = PartitionManifest::new("t", Uuid::nil(), 0);
        let mut seals = Vec::new();
        for i in 0..(3 * SEGMENTS_PER_CHUNK as i64) {
            if let Some(s) = m.append(seg(i * 10, 10, i * 100), key).unwrap() {
                seals.push(s);
            }
        }
        assert_eq!(seals.len(), 2);
        assert_eq!(m.chunks.len(), 2);
        assert_eq!(m.segments.len(), SEGMENTS_PER_CHUNK);
        assert_eq!(m.segment_count(), 3 * SEGMENTS_PER_CHUNK);
        assert_eq!(
            seals[1].chunk.segments[0].base_offset,
            m.chunks[1].base_offset
        );
        assert_eq!(m.locate(0), Some(Location::Chunk(0)));
        assert_eq!(m.locate(10_005), Some(Location::Chunk(1)));
        assert_eq!(m.locate(20_000), Some(Location::Tail(0)));
        assert_eq!(
            m.locate(29_999),
            Some(Location::Tail(SEGMENTS_PER_CHUNK - 1))
        );
        assert_eq!(m.locate(30_000), None);
        assert_eq!(m.locate_timestamp(150_000), Some(Location::Chunk(1)));
        assert_eq!(m.locate_timestamp(250_050), Some(Location::Tail(501)));
        assert_eq!(m.locate_timestamp(10_000_000), None);
        assert_eq!(m.size_bytes(), 3 * SEGMENTS_PER_CHUNK as u64 * 100);
    }

    #[test]
    fn expiry_by_time_and_by_size_stops_at_the_first_kept_segment() {
        let segs: Vec<_> = (0..10)
            .map(|i| seg(i * 10, 10, 1_000 + i * 1_000))
            .collect();
        // Each segment is 100 bytes; 1000 in all plus 50 local.
        assert_eq!(expired_prefix(&segs, 0, -1, -1, 0, 1050), 0);
        assert_eq!(
            expired_prefix(&segs, 0, -1, 500, 0, 1050),
            5,
            "keep >= 500 bytes"
        );
        assert_eq!(
            expired_prefix(&segs, 5_500, 2_000, -1, 0, 1050),
            3,
            "newest record older than 2 s"
        );
        assert_eq!(expired_prefix(&segs, 5_500, 2_000, 100, 0, 1050), 9);
        let mut odd = segs.clone();
        odd[1].max_timestamp = 1_000_000; // a young segment blocks the ones behind it
        assert_eq!(expired_prefix(&odd, 5_500, 2_000, -1, 0, 1050), 1);
        // DeleteRecords at 45: segments ending at or below it go whatever else.
        assert_eq!(expired_prefix(&segs, 0, -1, -1, 45, 1050), 4);
        assert_eq!(expired_prefix(&segs, 0, -1, -1, 40, 1050), 4);
    }

    #[test]
    fn deleted_below_limits_what_readers_see_but_not_the_segments() {
        let mut m = PartitionManifest::new("t", Uuid::nil(), 0);
        for i in 0..3 {
            m.append(seg(i * 10, 10, 0), |_, _| unreachable!()).unwrap();
        }
        m.deleted_below = 15;
        assert_eq!((m.log_start_offset, m.readable_start()), (0, 15));
        assert_eq!(m.readable_range(), Some((15, 30)));
        assert_eq!(m.locate(14), None);
        assert_eq!(m.locate(15), Some(Location::Tail(1)));
        m.deleted_below = 30;
        assert_eq!(m.readable_range(), None, "nothing readable remotely");
    }

    #[test]
    fn version_one_manifests_keep_parsing() {
        let v1 = r#"{"version":1,"generation":7,"topic":"t","topic_id":"00000000-0000-0000-0000-000000000000",
            "partition":2,"log_start_offset":100,
            "segments":[{"base_offset":100,"next_offset":150,"size_bytes":999,"max_timestamp":5,"leader_epoch":0,"uploaded_at_ms":1}]}"#;
        let m: PartitionManifest = serde_json::from_str(v1).unwrap();
        assert_eq!(
            (m.generation, m.next_offset(), m.segment_count()),
            (7, 150, 1)
        );
        assert!(m.chunks.is_empty() && m.pending_deletes.is_empty());
    }
}

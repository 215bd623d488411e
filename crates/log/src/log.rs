//! A partition's log: an ordered set of segments, the last one active.
//!
//! # Consistency
//! Appends are validated whole before any byte is written, so a produce request
//! is appended entirely or not at all. The broker assigns offsets by patching
//! each batch's base offset, which lies outside the CRC.
//!
//! # Crash consistency
//! - A closed segment and its indexes are fsynced before the next segment is
//!   created, so only the active segment can be torn by a crash.
//! - On open, a log without its clean-shutdown marker rescans its last segment,
//!   truncates it at the first torn or corrupt batch and rebuilds its indexes.
//!   Closed segments whose index files are missing or do not fit are rescanned
//!   too.
//! - What is durable is what [`Log::sync`] covered; the broker decides when to
//!   call it (the flush policy) and, under the every-batch policy, readers only
//!   see synced data (the high watermark is the flushed offset).
//!
//! # Retention and DeleteRecords
//! Whole closed segments are deleted, oldest first; the active segment never is.
//! The log start offset is the base of the oldest remaining segment, or the
//! offset DeleteRecords advanced it to ([`Log::delete_records_before`]) when
//! that is inside a segment. That offset is checkpointed in `log-start-offset`
//! before anything is deleted, so a crash never brings deleted records back.
//!
//! # Replication
//! A leader appends with [`Log::append`] (offsets and its leader epoch
//! assigned here); a follower appends the leader's batches as they are with
//! [`Log::append_replica`]. Both keep the leader epoch cache
//! ([`crate::epochs`]) and the producer state. A follower whose tail diverged
//! from its new leader's cuts it with [`Log::truncate_to`]. The high
//! watermark (what readers see) is set by the broker from the replicas' log
//! ends ([`Log::set_high_watermark`]) and checkpointed in `high-watermark`
//! (at close and whenever [`Log::checkpoint_high_watermark`] is called), so a
//! restarted replica never shows readers more than was committed.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use tracing::{debug, info, warn};

use crate::batch::{self, BatchHeader, HEADER_LEN};
use crate::epochs::{EpochCache, EpochEnd, EpochEntry};
use crate::producer_state::{ProducerState, SequenceCheck};
use crate::segment::{self, Segment};
use crate::{Error, Result};

/// Name of the marker a clean close leaves in the partition directory.
const CLEAN_SHUTDOWN: &str = ".clean-shutdown";
/// Suffix of producer state snapshots (`{offset:020}.snapshot`).
const SNAPSHOT_SUFFIX: &str = ".snapshot";
/// The high watermark checkpoint in the partition directory.
const HW_CHECKPOINT: &str = "high-watermark";
/// The log start offset DeleteRecords set, in the partition directory.
const START_CHECKPOINT: &str = "log-start-offset";

/// Which timestamp a topic stores (`message.timestamp.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampType {
    /// The producer's timestamp is kept.
    CreateTime,
    /// The broker stamps each batch with its own clock on append.
    LogAppendTime,
}

/// Per-log settings (Kafka's topic configs of the same names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// `segment.bytes`: roll when the active segment would grow past this.
    pub segment_bytes: u64,
    /// `segment.ms`: roll when the active segment is older than this.
    pub segment_ms: i64,
    /// `retention.ms`: delete closed segments whose newest record is older; -1 keeps all.
    pub retention_ms: i64,
    /// `retention.bytes`: delete oldest closed segments above this size; -1 keeps all.
    pub retention_bytes: i64,
    /// `max.message.bytes`: largest batch accepted.
    pub max_message_bytes: usize,
    /// `message.timestamp.type`.
    pub timestamp_type: TimestampType,
    /// `index.interval.bytes`: bytes of log between offset index entries.
    pub index_interval_bytes: u64,
    /// Whether readers see only fsynced data (the every-batch flush policy).
    pub read_only_flushed: bool,
    /// `producer.id.expiration.ms`: idempotent producer state is forgotten
    /// this long after the producer's last batch.
    pub producer_expiration_ms: i64,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 3600 * 1000,
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            max_message_bytes: 1_048_588,
            timestamp_type: TimestampType::CreateTime,
            index_interval_bytes: 4096,
            read_only_flushed: true,
            producer_expiration_ms: 24 * 3600 * 1000,
        }
    }
}

/// Retention limits for [`Log::apply_retention_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionLimits {
    /// Delete segments whose newest record is older than this (-1: never).
    pub retention_ms: i64,
    /// Delete the oldest segments while the rest hold this much (-1: never).
    pub retention_bytes: i64,
    /// Never delete a segment holding this offset or a later one.
    pub delete_below: Option<i64>,
}

/// A closed segment, as the object tier uploads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// First offset.
    pub base_offset: i64,
    /// Offset after the last record.
    pub next_offset: i64,
    /// Bytes.
    pub size_bytes: u64,
    /// Largest timestamp (-1 when empty).
    pub max_timestamp: i64,
    /// The `.log` file.
    pub path: PathBuf,
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    /// Offset of the first record appended.
    pub base_offset: i64,
    /// Offset of the last record appended.
    pub last_offset: i64,
    /// The broker time stamped on the batches under LogAppendTime.
    pub log_append_time: Option<i64>,
    /// The request was a retry of batches already in the log: nothing was
    /// appended and the offsets are those of the earlier append.
    pub duplicate: bool,
}

/// A consistent view for reading outside the log's lock: the file of one
/// segment and the bytes of it that may be read.
#[derive(Debug, Clone)]
pub struct ReadPlan {
    file: Arc<File>,
    start_position: u64,
    end_position: u64,
    offset: i64,
    max_offset: i64,
}

impl ReadPlan {
    /// Reads whole batches starting with the one holding the planned offset,
    /// up to `max_bytes`, but at least one batch when `min_one` is set even if
    /// it is larger. Batches at or beyond the high watermark are left out.
    pub fn read(&self, max_bytes: usize, min_one: bool) -> io::Result<Bytes> {
        let Some((pos, first)) = Segment::find_position(
            &self.file,
            self.start_position,
            self.end_position,
            self.offset,
        )?
        else {
            return Ok(Bytes::new());
        };
        if first.base_offset >= self.max_offset {
            return Ok(Bytes::new());
        }
        let available = (self.end_position - pos) as usize;
        let want = if first.size > max_bytes {
            if !min_one {
                return Ok(Bytes::new());
            }
            first.size
        } else {
            max_bytes.min(available)
        };
        let mut buf = read_at(&self.file, want.min(available), pos)?;
        let mut keep = 0;
        for (at, h) in batch::headers(&buf) {
            if h.base_offset >= self.max_offset {
                break;
            }
            keep = at + h.size;
        }
        buf.truncate(keep);
        Ok(Bytes::from(buf))
    }
}

/// Reads `len` bytes at `pos` into a new buffer, without first zeroing it
/// (the buffer is as large as a fetch's response; zeroing it costs as much as
/// copying it).
fn read_at(file: &File, len: usize, pos: u64) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(len);
    while buf.len() < len {
        let at = pos + buf.len() as u64;
        // Fills spare capacity and extends the length by what was read.
        let n = rustix::io::pread(file, rustix::buffer::spare_capacity(&mut buf), at)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "segment ends before the indexed batch",
            ));
        }
    }
    buf.truncate(len);
    Ok(buf)
}

/// A partition's log.
#[derive(Debug)]
pub struct Log {
    pub(crate) dir: PathBuf,
    pub(crate) config: LogConfig,
    pub(crate) segments: BTreeMap<i64, Segment>,
    /// Offset up to which data is fsynced.
    flushed_offset: i64,
    /// Idempotent producers' sequences, as of the log end.
    producers: ProducerState,
    /// Leader epochs and where each starts.
    epochs: EpochCache,
    /// The high watermark set by replication (clamped to the log end);
    /// `None` for a lone replica, whose every write is committed.
    hw: Option<i64>,
    /// The high watermark last written to its checkpoint.
    hw_checkpointed: Option<i64>,
    /// Offsets below this are deleted for readers (DeleteRecords), even where
    /// a segment still holds them; 0 when never set.
    start_floor: i64,
    /// Grows whenever the log is cut (truncation): a compaction pass
    /// planned before refuses to swap in what it built from the old bytes.
    pub(crate) truncations: u64,
}

impl Log {
    /// Opens (or creates) the log in `dir`, recovering it if it was not closed
    /// cleanly.
    pub fn open(dir: &Path, config: LogConfig, now_ms: i64) -> Result<Self> {
        Self::open_from(dir, config, now_ms, 0)
    }

    /// Like [`Log::open`], but a log with no segments starts at
    /// `initial_offset` (a partition whose older history is elsewhere).
    pub fn open_from(
        dir: &Path,
        config: LogConfig,
        now_ms: i64,
        initial_offset: i64,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        crate::clean::recover_swaps(dir)?;
        let marker = dir.join(CLEAN_SHUTDOWN);
        let clean = marker.exists();
        let mut bases = Vec::new();
        let mut snapshots = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".tmp") {
                std::fs::remove_file(entry.path())?;
                continue;
            }
            if let Some(stem) = name.strip_suffix(SNAPSHOT_SUFFIX) {
                if let Ok(offset) = stem.parse::<i64>() {
                    snapshots.push(offset);
                }
                continue;
            }
            if let Some(stem) = name.strip_suffix(".log") {
                match stem.parse::<i64>() {
                    Ok(base) if stem.len() == 20 => bases.push(base),
                    _ => {
                        warn!(file = %entry.path().display(), "ignoring unexpected file in log directory")
                    }
                }
            }
        }
        bases.sort_unstable();
        let mut segments = BTreeMap::new();
        let last = bases.last().copied();
        for base in bases {
            let trust = clean || Some(base) != last;
            let seg = Segment::open(dir, base, now_ms, config.index_interval_bytes, trust)?;
            segments.insert(base, seg);
        }
        // A segment emptied by recovery that is not the last one is dropped so
        // offsets stay contiguous within the remaining segments. An empty
        // first segment is compaction's: it holds the log start offset.
        let first = segments.keys().next().copied();
        let empties: Vec<i64> = segments
            .iter()
            .filter(|(b, s)| s.size == 0 && Some(**b) != last && Some(**b) != first)
            .map(|(b, _)| *b)
            .collect();
        for b in empties {
            if let Some(s) = segments.remove(&b) {
                warn!(dir = %dir.display(), base = b, "removing empty closed segment");
                s.delete()?;
            }
        }
        if segments.is_empty() {
            segments.insert(
                initial_offset,
                Segment::create(dir, initial_offset, now_ms, config.index_interval_bytes)?,
            );
        }
        if clean {
            std::fs::remove_file(&marker)?;
            segment::sync_dir(dir)?;
        } else if let Some(active) = segments.values().next_back() {
            // What recovery kept is what readers may see: make it durable first.
            active.file.get()?.sync_data()?;
        }
        let next = segments.values().next_back().map_or(0, |s| s.next_offset);
        // Without a checkpoint (a lone replica, or a log from before
        // replication) everything written is committed.
        let hw = std::fs::read_to_string(dir.join(HW_CHECKPOINT))
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .map(|h| h.min(next));
        let start_floor = std::fs::read_to_string(dir.join(START_CHECKPOINT))
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .map_or(0, |f| f.min(next));
        let mut log = Self {
            dir: dir.to_path_buf(),
            config,
            segments,
            flushed_offset: next,
            producers: ProducerState::default(),
            epochs: EpochCache::default(),
            hw,
            hw_checkpointed: hw,
            start_floor,
            truncations: 0,
        };
        log.recover_producers(snapshots)?;
        log.recover_epochs()?;
        // Closed segments' files open again when read.
        let closed = log.segments.len() - 1;
        for seg in log.segments.values().take(closed) {
            seg.file.release();
        }
        debug!(
            dir = %dir.display(),
            clean,
            start = log.log_start_offset(),
            end = log.log_end_offset(),
            "log opened"
        );
        Ok(log)
    }

    /// Closes the files of closed segments not read since the previous call
    /// (a reader opens them again). Returns how many it closed.
    pub fn close_unused_files(&self) -> usize {
        let closed = self.segments.len() - 1;
        self.segments
            .values()
            .take(closed)
            .filter(|s| s.file.close_if_unused())
            .count()
    }

    /// Files of this log's segments open now.
    pub fn open_files(&self) -> usize {
        self.segments.values().filter(|s| s.file.is_open()).count()
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Current settings.
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Replaces the settings; they apply from the next append or retention pass.
    pub fn set_config(&mut self, config: LogConfig) {
        self.config = config;
    }

    /// First offset readers may read: the oldest segment's base, or where
    /// DeleteRecords moved it past that.
    pub fn log_start_offset(&self) -> i64 {
        self.first_base().max(self.start_floor)
    }

    /// The offset DeleteRecords last advanced the log start to (0: never).
    /// It may lie below the oldest segment, after retention went further.
    pub fn start_floor(&self) -> i64 {
        self.start_floor
    }

    /// Base offset of the oldest segment.
    fn first_base(&self) -> i64 {
        self.segments.values().next().map_or(0, |s| s.base)
    }

    /// Offset the next record will get.
    pub fn log_end_offset(&self) -> i64 {
        self.active().next_offset
    }

    /// The offset below which readers may see data: the replicated high
    /// watermark, and no further than what is fsynced when readers see only
    /// fsynced data.
    pub fn high_watermark(&self) -> i64 {
        let end = self.log_end_offset();
        let hw = self.hw.map_or(end, |h| h.min(end));
        if self.config.read_only_flushed {
            hw.min(self.flushed_offset)
        } else {
            hw
        }
    }

    /// Total bytes of all segments.
    pub fn size_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.size).sum()
    }

    /// Number of segments.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Whether appending `incoming` bytes now would close the active segment.
    pub fn would_roll(&self, incoming: u64, now_ms: i64) -> bool {
        self.should_roll(incoming, now_ms)
    }

    /// Offset after the newest closed segment (its base when there is none).
    pub fn closed_end_offset(&self) -> i64 {
        self.active().base
    }

    fn active(&self) -> &Segment {
        self.segments
            .values()
            .next_back()
            .expect("a log always has a segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments
            .values_mut()
            .next_back()
            .expect("a log always has a segment")
    }

    /// Validates `records` (one or more v2 batches), assigns offsets, stamps
    /// LogAppendTime if configured, and appends them. Nothing is written unless
    /// every batch is valid.
    pub fn append(
        &mut self,
        records: &mut [u8],
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<AppendInfo> {
        let mut headers: Vec<(usize, BatchHeader)> = Vec::new();
        let mut pos = 0;
        while pos < records.len() {
            let rest = &records[pos..];
            let size = batch::batch_size(rest)
                .ok_or_else(|| Error::Corrupt("record set ends inside a batch header".into()))?;
            if size > rest.len() {
                return Err(Error::Corrupt(format!(
                    "batch of {size} bytes, only {} present",
                    rest.len()
                )));
            }
            if size > self.config.max_message_bytes {
                return Err(Error::MessageTooLarge {
                    size,
                    max: self.config.max_message_bytes,
                });
            }
            let h = batch::validate(&rest[..size])?;
            headers.push((pos, h));
            pos += size;
        }
        if headers.is_empty() {
            return Err(Error::Corrupt("empty record set".into()));
        }
        if let Some(dup) = self.check_sequences(&headers)? {
            return Ok(dup);
        }
        if self.should_roll(records.len() as u64, now_ms) {
            self.roll(now_ms)?;
        }
        let mut next = self.log_end_offset();
        let base_offset = next;
        let append_time =
            (self.config.timestamp_type == TimestampType::LogAppendTime).then_some(now_ms);
        for (at, h) in headers.iter_mut() {
            let b = &mut records[*at..*at + h.size];
            batch::set_base_offset(b, next);
            batch::set_leader_epoch(b, leader_epoch);
            if let Some(t) = append_time {
                batch::set_log_append_time(b, t);
                h.max_timestamp = t;
            }
            h.base_offset = next;
            h.leader_epoch = leader_epoch;
            next = h.next_offset();
        }
        let seg = self.active_mut();
        if seg.size == 0 {
            seg.created_ms = now_ms;
        }
        seg.append(records, &headers)?;
        for (_, h) in &headers {
            self.producers.record(h);
        }
        self.assign_epoch(leader_epoch, base_offset)?;
        Ok(AppendInfo {
            base_offset,
            last_offset: next - 1,
            log_append_time: append_time,
            duplicate: false,
        })
    }

    /// Appends a leader's batches as they are (a follower): offsets, leader
    /// epochs, timestamps and producer fields unchanged. Every batch is
    /// validated (CRC, size, record count) and must continue the log
    /// exactly; batches below the log end (already held) are skipped.
    pub fn append_replica(&mut self, records: &[u8], now_ms: i64) -> Result<Option<AppendInfo>> {
        let mut headers: Vec<(usize, BatchHeader)> = Vec::new();
        let mut pos = 0;
        let mut expected = self.log_end_offset();
        let mut skip = 0;
        while pos < records.len() {
            let rest = &records[pos..];
            let Some(size) = batch::batch_size(rest) else {
                break; // a partial batch at the end of a fetch response
            };
            if size > rest.len() {
                break;
            }
            // The leader's batches may be compacted ones.
            let h = batch::validate_stored(&rest[..size])?;
            if h.next_offset() <= expected && headers.is_empty() {
                skip = pos + size;
                pos += size;
                continue;
            }
            // Later is a hole compaction left in the leader's log.
            if h.base_offset < expected {
                return Err(Error::Corrupt(format!(
                    "replicated batch starts at {}, the log ends at {expected}",
                    h.base_offset
                )));
            }
            expected = h.next_offset();
            headers.push((pos - skip, h));
            pos += size;
        }
        if headers.is_empty() {
            return Ok(None);
        }
        let bytes = &records[skip..pos];
        if self.should_roll(bytes.len() as u64, now_ms) {
            self.roll(now_ms)?;
        }
        let seg = self.active_mut();
        if seg.size == 0 {
            seg.created_ms = now_ms;
        }
        seg.append(bytes, &headers)?;
        for (_, h) in &headers {
            self.producers.record(h);
            self.assign_epoch(h.leader_epoch, h.base_offset)?;
        }
        Ok(Some(AppendInfo {
            base_offset: headers[0].1.base_offset,
            last_offset: expected - 1,
            log_append_time: None,
            duplicate: false,
        }))
    }

    fn assign_epoch(&mut self, epoch: i32, start: i64) -> Result<()> {
        if epoch >= 0 && self.epochs.assign(epoch, start) {
            self.epochs.save(&self.dir)?;
        }
        Ok(())
    }

    /// Starts leader epoch `epoch` at the log end (a replica becoming
    /// leader), so followers asking where the previous epoch ended learn it.
    pub fn begin_epoch(&mut self, epoch: i32) -> Result<()> {
        let end = self.log_end_offset();
        self.assign_epoch(epoch, end)
    }

    /// The latest leader epoch in the log (-1: none).
    pub fn latest_epoch(&self) -> i32 {
        self.epochs.latest_epoch()
    }

    /// The leader epoch cache's entries, oldest first.
    pub fn epoch_entries(&self) -> &[EpochEntry] {
        self.epochs.entries()
    }

    /// Where `epoch` ends in this log (OffsetsForLeaderEpoch).
    pub fn end_offset_for_epoch(&self, epoch: i32) -> EpochEnd {
        self.epochs.end_offset_for(epoch, self.log_end_offset())
    }

    /// Cuts the log at `offset`: everything from it on goes (segments, index
    /// entries, leader epochs, producer snapshots), the producer state is
    /// rebuilt, and the high watermark is lowered to it if above. An offset
    /// inside a batch cuts at that batch's start. No-op at or beyond the end.
    pub fn truncate_to(&mut self, offset: i64, now_ms: i64) -> Result<()> {
        if offset >= self.log_end_offset() {
            // Nothing to cut, but an epoch begun at the end (this replica led
            // it and wrote nothing) is not part of the leader's history.
            if self.epochs.truncate_from_end(offset) {
                self.epochs.save(&self.dir)?;
            }
            return Ok(());
        }
        if offset <= self.log_start_offset() {
            return self.truncate_fully_and_start_at(offset.max(self.log_start_offset()), now_ms);
        }
        let interval = self.config.index_interval_bytes;
        let (&base, _) = self
            .segments
            .range(..=offset)
            .next_back()
            .expect("offset above log start has a segment");
        let later: Vec<i64> = self.segments.range(base + 1..).map(|(b, _)| *b).collect();
        for b in later {
            if let Some(s) = self.segments.remove(&b) {
                s.delete()?;
            }
        }
        let seg = self.segments.get(&base).expect("present");
        let cut = Segment::find_position(
            &*seg.file.get()?,
            seg.index.lookup(offset).position,
            seg.size,
            offset,
        )?
        .map_or(seg.size, |(pos, _)| pos);
        if cut == 0 {
            let s = self.segments.remove(&base).expect("present");
            s.delete()?;
            let new = Segment::create(&self.dir, base, now_ms, interval)?;
            self.segments.insert(base, new);
        } else {
            let file = seg.file.get()?;
            file.set_len(cut)?;
            file.sync_all()?;
            seg.delete_indexes()?;
            let reopened = Segment::open(&self.dir, base, now_ms, interval, false)?;
            self.segments.insert(base, reopened);
        }
        segment::sync_dir(&self.dir)?;
        self.after_truncation()?;
        info!(dir = %self.dir.display(), offset = self.log_end_offset(), "log truncated");
        Ok(())
    }

    /// Deletes the whole log and starts it empty at `offset` (a replica too
    /// far behind its leader, or one continuing from the object tier).
    pub fn truncate_fully_and_start_at(&mut self, offset: i64, now_ms: i64) -> Result<()> {
        let interval = self.config.index_interval_bytes;
        for (_, s) in std::mem::take(&mut self.segments) {
            s.delete()?;
        }
        let new = Segment::create(&self.dir, offset, now_ms, interval)?;
        self.segments.insert(offset, new);
        segment::sync_dir(&self.dir)?;
        self.remove_snapshots_below(i64::MAX)?;
        self.producers = ProducerState::default();
        self.epochs = EpochCache::default();
        self.epochs.save(&self.dir)?;
        self.flushed_offset = offset;
        self.hw = self.hw.map(|_| offset);
        if self.start_floor > offset {
            self.save_start_floor(offset)?;
        }
        self.truncations += 1;
        self.clamp_cleaned_to(offset)?;
        info!(dir = %self.dir.display(), offset, "log emptied, continuing at offset");
        Ok(())
    }

    /// Brings the state that depends on the log end back in line after a cut.
    fn after_truncation(&mut self) -> Result<()> {
        let end = self.log_end_offset();
        self.flushed_offset = self.flushed_offset.min(end);
        self.hw = self.hw.map(|h| h.min(end));
        if self.start_floor > end {
            self.save_start_floor(end)?;
        }
        self.truncations += 1;
        self.clamp_cleaned_to(end)?;
        if self.epochs.truncate_from_end(end) {
            self.epochs.save(&self.dir)?;
        }
        let mut snapshots = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            if let Some(o) = name
                .to_str()
                .and_then(|n| n.strip_suffix(SNAPSHOT_SUFFIX))
                .and_then(|stem| stem.parse::<i64>().ok())
            {
                snapshots.push(o);
            }
        }
        self.producers = ProducerState::default();
        self.recover_producers(snapshots)
    }

    /// Loads the leader epoch cache, or rebuilds it from the batches when its
    /// checkpoint is missing or damaged, and fits it to the log's range.
    fn recover_epochs(&mut self) -> Result<()> {
        let (end, start) = (self.log_end_offset(), self.log_start_offset());
        let mut cache = match EpochCache::load(&self.dir) {
            Some(c) => c,
            None => {
                let mut c = EpochCache::default();
                self.for_each_header(start, |h| {
                    c.assign(h.leader_epoch, h.base_offset);
                })?;
                if !c.entries().is_empty() {
                    debug!(dir = %self.dir.display(), epochs = c.entries().len(), "leader epoch cache rebuilt from the log");
                }
                c
            }
        };
        // An epoch begun at the end (a leader that wrote nothing yet) stays.
        cache.truncate_from_end(end + 1);
        cache.truncate_from_start(start);
        if Some(&cache) != EpochCache::load(&self.dir).as_ref() {
            cache.save(&self.dir)?;
        }
        self.epochs = cache;
        Ok(())
    }

    /// Sets the high watermark (clamped to the log end): the leader from its
    /// replicas' log ends, a follower from its leader's.
    pub fn set_high_watermark(&mut self, hw: i64) {
        self.hw = Some(hw.min(self.log_end_offset()));
    }

    /// Makes every write committed at once (a lone replica).
    pub fn track_log_end(&mut self) {
        self.hw = None;
    }

    /// Whether the high watermark is set by replication.
    pub fn is_replicated(&self) -> bool {
        self.hw.is_some()
    }

    /// The high watermark replication set, before the flush bound (`None`
    /// for a lone replica).
    pub fn replicated_high_watermark(&self) -> Option<i64> {
        self.hw.map(|h| h.min(self.log_end_offset()))
    }

    /// Writes the high watermark to its checkpoint if it moved since the
    /// last (removes it for a lone replica).
    pub fn checkpoint_high_watermark(&mut self) -> Result<()> {
        let hw = self.hw.map(|h| h.min(self.log_end_offset()));
        if hw != self.hw_checkpointed {
            let path = self.dir.join(HW_CHECKPOINT);
            match hw {
                Some(h) => segment::write_synced(&path, h.to_string().as_bytes())?,
                None => match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                },
            }
            self.hw_checkpointed = hw;
        }
        Ok(())
    }

    /// Checks every batch's producer sequence. `Some` when the request is a
    /// retry of batches already appended (their offsets), `None` to append.
    fn check_sequences(&self, headers: &[(usize, BatchHeader)]) -> Result<Option<AppendInfo>> {
        for (_, h) in headers {
            if h.attributes & batch::ATTR_TRANSACTIONAL != 0
                || h.attributes & batch::ATTR_CONTROL != 0
            {
                return Err(Error::TransactionsUnsupported);
            }
        }
        let idempotent = headers.iter().filter(|(_, h)| h.producer_id >= 0).count();
        if idempotent == 0 {
            return Ok(None);
        }
        // Several batches of one producer in one request: each must follow
        // the one before it, so check against a copy that records them.
        let mut scratch = (idempotent > 1).then(|| self.producers.clone());
        for (_, h) in headers {
            let state = scratch.as_ref().unwrap_or(&self.producers);
            match state.check(h)? {
                SequenceCheck::Duplicate(b) => {
                    debug!(
                        dir = %self.dir.display(),
                        producer_id = h.producer_id,
                        first_seq = b.first_seq,
                        offset = b.first_offset,
                        "duplicate batch acknowledged with its original offset"
                    );
                    let append_time = (self.config.timestamp_type == TimestampType::LogAppendTime)
                        .then_some(b.timestamp);
                    return Ok(Some(AppendInfo {
                        base_offset: b.first_offset,
                        last_offset: b.last_offset,
                        log_append_time: append_time,
                        duplicate: true,
                    }));
                }
                SequenceCheck::Append => {
                    if let Some(s) = scratch.as_mut() {
                        s.record(h);
                    }
                }
            }
        }
        Ok(None)
    }

    /// Rebuilds the producer state: the newest readable snapshot at or below
    /// the log end, then every batch after it. Snapshots past the log end
    /// (the tail they describe was cut by recovery) are removed.
    fn recover_producers(&mut self, mut snapshots: Vec<i64>) -> Result<()> {
        let end = self.log_end_offset();
        snapshots.sort_unstable();
        let mut from = self.first_base();
        while let Some(offset) = snapshots.pop() {
            let path = self.snapshot_path(offset);
            if offset > end {
                warn!(snapshot = %path.display(), log_end = end, "removing producer snapshot beyond the log end");
                std::fs::remove_file(&path)?;
                continue;
            }
            match std::fs::read(&path)
                .ok()
                .and_then(|b| ProducerState::decode(&b))
            {
                Some(state) => {
                    self.producers = state;
                    from = offset.max(from);
                    break;
                }
                None => {
                    warn!(snapshot = %path.display(), "removing unreadable producer snapshot");
                    std::fs::remove_file(&path)?;
                }
            }
        }
        let mut replayed = 0usize;
        let mut producers = std::mem::take(&mut self.producers);
        self.for_each_header(from, |h| {
            producers.record(h);
            replayed += 1;
        })?;
        self.producers = producers;
        if replayed > 0 || !self.producers.is_empty() {
            debug!(
                dir = %self.dir.display(),
                from,
                replayed,
                producers = self.producers.len(),
                "producer state recovered"
            );
        }
        Ok(())
    }

    /// Calls `f` with the header of every batch from the one holding `from`
    /// to the log end. Reads headers only.
    fn for_each_header(&self, from: i64, mut f: impl FnMut(&BatchHeader)) -> Result<()> {
        let first = self
            .segments
            .range(..=from)
            .next_back()
            .map_or(self.log_start_offset(), |(b, _)| *b);
        let mut header = [0u8; HEADER_LEN];
        for seg in self.segments.range(first..).map(|(_, s)| s) {
            let mut pos = seg.index.lookup(from).position;
            let file = seg.file.get()?;
            while pos + HEADER_LEN as u64 <= seg.size {
                file.read_exact_at(&mut header, pos)?;
                let h = batch::parse_header(&header)?;
                if h.last_offset() >= from {
                    f(&h);
                }
                pos += h.size as u64;
            }
        }
        Ok(())
    }

    fn snapshot_path(&self, offset: i64) -> PathBuf {
        self.dir
            .join(format!("{}{SNAPSHOT_SUFFIX}", segment::stem(offset)))
    }

    /// Writes the producer state as of the log end beside the segments.
    fn write_producer_snapshot(&self) -> Result<()> {
        let path = self.snapshot_path(self.log_end_offset());
        segment::write_synced(&path, &self.producers.encode())?;
        Ok(())
    }

    /// The producer snapshot written when the segment ending before `offset`
    /// was closed (what the object tier uploads with that segment).
    pub fn producer_snapshot_at(&self, offset: i64) -> Option<Vec<u8>> {
        std::fs::read(self.snapshot_path(offset)).ok()
    }

    /// The idempotent producer state as of the log end.
    pub fn producer_state(&self) -> &ProducerState {
        &self.producers
    }

    /// Forgets producers idle for longer than `producer.id.expiration.ms`.
    pub fn expire_producers(&mut self, now_ms: i64) -> usize {
        self.producers
            .expire(now_ms, self.config.producer_expiration_ms)
    }

    fn should_roll(&self, incoming: u64, now_ms: i64) -> bool {
        let seg = self.active();
        if seg.size == 0 {
            return false;
        }
        seg.size + incoming > self.config.segment_bytes
            || now_ms - seg.created_ms >= self.config.segment_ms
            || seg.size + incoming > u32::MAX as u64
            || seg.next_offset - seg.base > (i32::MAX as i64) / 2
    }

    /// Closes the active segment and starts a new one at the log end offset.
    pub fn roll(&mut self, now_ms: i64) -> Result<()> {
        let next = self.log_end_offset();
        let interval = self.config.index_interval_bytes;
        let seg = self.active_mut();
        if seg.size == 0 {
            return Ok(());
        }
        seg.close()?;
        self.flushed_offset = self.flushed_offset.max(next);
        self.write_producer_snapshot()?;
        let new = Segment::create(&self.dir, next, now_ms, interval)?;
        self.segments.insert(next, new);
        debug!(dir = %self.dir.display(), base = next, "rolled segment");
        Ok(())
    }

    /// Rolls if the active segment is older than `segment.ms`, so time-based
    /// retention can reach data of a partition that stopped receiving.
    pub fn maybe_roll_idle(&mut self, now_ms: i64) -> Result<()> {
        let seg = self.active();
        if seg.size > 0 && now_ms - seg.created_ms >= self.config.segment_ms {
            self.roll(now_ms)?;
        }
        Ok(())
    }

    /// What a sync needs, taken under the lock: the active file and the end
    /// offset it will cover. Do the fsync outside the lock, then call
    /// [`Log::mark_flushed`]; concurrent producers share one fsync that way.
    pub fn sync_target(&self) -> Result<(Arc<File>, i64)> {
        Ok((self.active().file.get()?, self.log_end_offset()))
    }

    /// Records that everything below `offset` is durable.
    pub fn mark_flushed(&mut self, offset: i64) {
        self.flushed_offset = self.flushed_offset.max(offset);
    }

    /// Offset below which data is fsynced.
    pub fn flushed_offset(&self) -> i64 {
        self.flushed_offset
    }

    /// Fsyncs the active segment now (holding the lock).
    pub fn sync(&mut self) -> Result<()> {
        let (file, end) = self.sync_target()?;
        file.sync_data()?;
        self.mark_flushed(end);
        Ok(())
    }

    /// Plans a read at `offset`. Errors with [`Error::OffsetOutOfRange`] when
    /// the offset is below the log start or above the high watermark.
    pub fn read_plan(&self, offset: i64) -> Result<ReadPlan> {
        self.read_plan_to(offset, self.high_watermark())
    }

    /// Plans a read at `offset` of batches below `max_offset` (a follower's
    /// fetch reads to the log end, past the high watermark).
    pub fn read_plan_to(&self, offset: i64, max_offset: i64) -> Result<ReadPlan> {
        let hw = max_offset.min(self.log_end_offset());
        if offset < self.log_start_offset() || offset > hw {
            return Err(Error::OffsetOutOfRange {
                offset,
                start: self.log_start_offset(),
                end: hw,
            });
        }
        let mut seg = self
            .segments
            .range(..=offset)
            .next_back()
            .map(|(_, s)| s)
            .expect("offset at or above log start has a segment");
        // Compaction can leave a segment ending before the next one starts:
        // an offset in between is read from the next.
        if offset >= seg.next_offset {
            if let Some((_, next)) = self.segments.range(offset + 1..).next() {
                seg = next;
            }
        }
        Ok(ReadPlan {
            file: seg.file.get()?,
            start_position: seg.index.lookup(offset).position,
            end_position: seg.size,
            offset,
            max_offset: hw,
        })
    }

    /// Reads up to `max_bytes` of whole batches from `offset` (at least one
    /// batch when `min_one`). Convenience over [`Log::read_plan`].
    pub fn read(&self, offset: i64, max_bytes: usize, min_one: bool) -> Result<Bytes> {
        Ok(self.read_plan(offset)?.read(max_bytes, min_one)?)
    }

    /// The first batch whose max timestamp is at least `ts` (the batch that
    /// holds the first record at or after `ts`), or `None`.
    pub fn find_batch_by_timestamp(&self, ts: i64) -> Result<Option<Bytes>> {
        let hw = self.high_watermark();
        for seg in self.segments.values() {
            if seg.max_timestamp < ts {
                continue;
            }
            let start = seg.time_index.scan_start(ts);
            let mut pos = seg.index.lookup(start).position;
            let mut header = [0u8; HEADER_LEN];
            let file = seg.file.get()?;
            while pos + HEADER_LEN as u64 <= seg.size {
                file.read_exact_at(&mut header, pos)?;
                let h = batch::parse_header(&header)?;
                if h.base_offset >= hw {
                    return Ok(None);
                }
                if h.max_timestamp >= ts {
                    let buf = read_at(&file, h.size, pos)?;
                    return Ok(Some(Bytes::from(buf)));
                }
                pos += h.size as u64;
            }
        }
        Ok(None)
    }

    /// The batch holding the largest timestamp (ListOffsets MAX_TIMESTAMP).
    pub fn find_batch_with_max_timestamp(&self) -> Result<Option<Bytes>> {
        let Some(max) = self.segments.values().map(|s| s.max_timestamp).max() else {
            return Ok(None);
        };
        if max < 0 {
            return Ok(None);
        }
        self.find_batch_by_timestamp(max)
    }

    /// Deletes closed segments past `retention.ms` / `retention.bytes`.
    /// Returns the base offsets of the deleted segments.
    pub fn apply_retention(&mut self, now_ms: i64) -> Result<Vec<i64>> {
        let limits = RetentionLimits {
            retention_ms: self.config.retention_ms,
            retention_bytes: self.config.retention_bytes,
            delete_below: None,
        };
        self.apply_retention_with(now_ms, limits)
    }

    /// Deletes the oldest closed segments past `limits`, but never one that
    /// reaches `delete_below` or beyond (with tiered storage: segments the
    /// object tier does not hold yet). Returns the deleted base offsets.
    pub fn apply_retention_with(
        &mut self,
        now_ms: i64,
        limits: RetentionLimits,
    ) -> Result<Vec<i64>> {
        let mut deleted = Vec::new();
        let mut total = self.size_bytes() as i64;
        while self.segments.len() > 1 {
            let (&base, seg) = self.segments.iter().next().expect("non-empty");
            if limits.delete_below.is_some_and(|b| seg.next_offset > b) {
                break;
            }
            let by_bytes =
                limits.retention_bytes >= 0 && total - seg.size as i64 >= limits.retention_bytes;
            // An empty segment (one compaction emptied) holds nothing to keep.
            let by_time = limits.retention_ms >= 0
                && (seg.size == 0
                    || seg.max_timestamp >= 0 && now_ms - seg.max_timestamp > limits.retention_ms);
            // Wholly below the floor: the next segment starts at or below it
            // (a compacted segment may end before the next one starts).
            let end = self
                .segments
                .range(base + 1..)
                .next()
                .map_or(seg.next_offset, |(b, _)| *b);
            let by_floor = end <= self.start_floor;
            if !(by_bytes || by_time || by_floor) {
                break;
            }
            total -= seg.size as i64;
            let seg = self.segments.remove(&base).expect("present");
            seg.delete()?;
            deleted.push(base);
        }
        if !deleted.is_empty() {
            self.remove_snapshots_below(self.first_base())?;
            if self.epochs.truncate_from_start(self.log_start_offset()) {
                self.epochs.save(&self.dir)?;
            }
            info!(
                dir = %self.dir.display(),
                segments = deleted.len(),
                log_start_offset = self.log_start_offset(),
                "retention deleted segments"
            );
        }
        Ok(deleted)
    }

    /// DeleteRecords: makes `offset` the log start offset. Readers get
    /// OFFSET_OUT_OF_RANGE below it from now on, and closed segments wholly
    /// below it are deleted, except those reaching `delete_below` (with
    /// tiered storage: not uploaded yet; they go once uploaded). The new start
    /// is checkpointed before any file goes. `offset` may not pass the log
    /// end; at or below the current start it changes nothing. Returns the log
    /// start offset.
    pub fn delete_records_before(
        &mut self,
        offset: i64,
        delete_below: Option<i64>,
        now_ms: i64,
    ) -> Result<i64> {
        let end = self.log_end_offset();
        if offset < 0 || offset > end {
            return Err(Error::OffsetOutOfRange {
                offset,
                start: self.log_start_offset(),
                end,
            });
        }
        if offset <= self.log_start_offset() {
            return Ok(self.log_start_offset());
        }
        self.save_start_floor(offset)?;
        if self.epochs.truncate_from_start(offset) {
            self.epochs.save(&self.dir)?;
        }
        // Only the floor deletes here: time and size are the retention pass's.
        let limits = RetentionLimits {
            retention_ms: -1,
            retention_bytes: -1,
            delete_below,
        };
        self.apply_retention_with(now_ms, limits)?;
        info!(dir = %self.dir.display(), log_start_offset = offset, "records deleted below offset");
        Ok(self.log_start_offset())
    }

    fn save_start_floor(&mut self, offset: i64) -> Result<()> {
        segment::write_synced(
            &self.dir.join(START_CHECKPOINT),
            offset.to_string().as_bytes(),
        )?;
        self.start_floor = offset;
        Ok(())
    }

    /// Closed segments (every segment but the active one), oldest first.
    pub fn closed_segments(&self) -> Vec<SegmentInfo> {
        let n = self.segments.len().saturating_sub(1);
        let bases: Vec<i64> = self.segments.keys().copied().collect();
        // A closed segment ends where the next starts: compaction may have
        // removed its last records.
        self.segments
            .values()
            .take(n)
            .zip(bases.into_iter().skip(1))
            .map(|(s, end)| SegmentInfo {
                base_offset: s.base,
                next_offset: end,
                size_bytes: s.size,
                max_timestamp: s.max_timestamp,
                path: segment::log_path(&self.dir, s.base),
            })
            .collect()
    }

    /// A segment's offset and time indexes, encoded as on disk.
    pub fn segment_index_bytes(&self, base_offset: i64) -> Option<(Vec<u8>, Vec<u8>)> {
        let s = self.segments.get(&base_offset)?;
        Some((s.index.encode(), s.time_index.encode()))
    }

    /// Bytes of the segments that hold offsets at or after `offset`.
    pub fn size_bytes_from(&self, offset: i64) -> u64 {
        self.segments
            .values()
            .filter(|s| s.next_offset > offset || s.base >= offset)
            .map(|s| s.size)
            .sum()
    }

    /// Replaces the idempotent producer state (a log continued from another
    /// copy of its history, such as the object tier).
    pub fn restore_producer_state(&mut self, state: ProducerState) {
        self.producers = state;
    }

    fn remove_snapshots_below(&self, offset: i64) -> Result<()> {
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(SNAPSHOT_SUFFIX)) else {
                continue;
            };
            if stem.parse::<i64>().is_ok_and(|o| o < offset) {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }

    /// Flushes everything, writes the active segment's indexes and leaves the
    /// clean-shutdown marker so the next open skips recovery.
    pub fn close(&mut self) -> Result<()> {
        self.active_mut().close()?;
        let end = self.log_end_offset();
        self.mark_flushed(end);
        self.write_producer_snapshot()?;
        self.checkpoint_high_watermark()?;
        segment::write_synced(&self.dir.join(CLEAN_SHUTDOWN), b"")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::testing::{batch, idempotent_batch};
    use crate::producer_state::SequenceError;

    fn cfg() -> LogConfig {
        LogConfig {
            segment_bytes: 4096,
            index_interval_bytes: 256,
            read_only_flushed: false,
            ..LogConfig::default()
        }
    }

    fn append_n(log: &mut Log, batches: usize, ts0: i64) -> Vec<i64> {
        (0..batches)
            .map(|i| {
                let mut b = batch(3, 50, ts0 + i as i64 * 10);
                log.append(&mut b, 0, 1_000).unwrap().base_offset
            })
            .collect()
    }

    fn read_all(log: &Log) -> Vec<BatchHeader> {
        let mut out = Vec::new();
        let mut off = log.log_start_offset();
        while off < log.high_watermark() {
            let bytes = log.read(off, 1000, true).unwrap();
            assert!(!bytes.is_empty(), "no progress at {off}");
            for (_, h) in batch::headers(&bytes) {
                batch::validate(&bytes[..]).ok();
                out.push(h);
                off = h.next_offset();
            }
        }
        out
    }

    #[test]
    fn offsets_are_assigned_contiguously_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), cfg(), 0).unwrap();
        let bases = append_n(&mut log, 100, 0);
        assert_eq!(bases, (0..100).map(|i| i * 3).collect::<Vec<_>>());
        assert!(log.segment_count() > 1, "4 KiB segments roll");
        let hs = read_all(&log);
        assert_eq!(hs.len(), 100);
        for (i, h) in hs.iter().enumerate() {
            assert_eq!(h.base_offset, i as i64 * 3);
        }
        // A read in the middle of a batch starts with that batch.
        let b = log.read(4, 100_000, true).unwrap();
        assert_eq!(batch::parse_header(&b).unwrap().base_offset, 3);
    }

    #[test]
    fn closed_segments_hold_no_file_until_read_and_close_again_when_unused() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), cfg(), 0).unwrap();
        append_n(&mut log, 100, 0);
        let segments = log.segment_count();
        assert!(segments > 3);
        log.close().unwrap();
        let log = Log::open(dir.path(), cfg(), 0).unwrap();
        assert_eq!(
            log.open_files(),
            1,
            "only the active segment's file is open"
        );
        // Reading history opens its segment again.
        let b = log.read(4, 100_000, true).unwrap();
        assert_eq!(batch::parse_header(&b).unwrap().base_offset, 3);
        assert_eq!(log.open_files(), 2);
        assert_eq!(log.close_unused_files(), 0, "read since the last pass");
        assert_eq!(log.close_unused_files(), 1, "unused for a whole pass");
        assert_eq!(log.open_files(), 1);
        assert_eq!(
            read_all(&log).len(),
            100,
            "still readable, from any segment"
        );
        assert_eq!(log.close_unused_files(), 0);
        assert_eq!(log.close_unused_files(), segments - 1);
    }

    #[test]
    fn rolls_at_segment_bytes_and_segment_ms() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), cfg(), 0).unwrap();
        let one = batch(3, 50, 0).len() as u64;
        let per_segment = 4096 / one;
        append_n(&mut log, per_segment as usize, 0);
        assert_eq!(log.segment_count(), 1);
        append_n(&mut log, 1, 0);
        assert_eq!(log.segment_count(), 2);

        let mut c = cfg();
        c.segment_ms = 100;
        log.set_config(c);
        let mut b = batch(1, 1, 0);
        log.append(&mut b, 0, 1_050).unwrap();
        assert_eq!(log.segment_count(), 2, "segment is 50 ms old");
        let mut b = batch(1, 1, 0);
        log.append(&mut b, 0, 1_200).unwrap();
        assert_eq!(log.segment_count(), 3, "segment.ms elapsed");
    }

    #[test]
    fn reopen_after_clean_close_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), cfg(), 0).unwrap();
        append_n(&mut log, 50, 0);
        let end = log.log_end_offset();
        log.close().unwrap();
        drop(log);
        let log = Log::open(dir.path(), cfg(), 0).unwrap();
        assert_eq!(log.log_end_offset(), end);
        assert_eq!(read_all(&log).len(), 50);
    }

    #[test]
    fn recovery_truncates_a_tail_cut_at_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), cfg(), 0).unwrap();
        append_n(&mut log, 4, 0);
        let end_before_last = log.log_end_offset();
        let mut last = batch(3, 50, 99);
        log.append(&mut last, 0, 0).unwrap();
        log.sync().unwrap();
        drop(log); // a crash: no clean-shutdown marker
        let path = segment::log_path(dir.path(), 0);
        let full = std::fs::read(&path).unwrap();
        let last_start = full.len() - last.len();
        for cut in last_start..full.len() {
            std::fs::write(&path, &full[..cut]).unwrap();
            let mut log = Log::open(dir.path(), cfg(), 0).unwrap();
            assert_eq!(log.log_end_offset(), end_before_last, "cut at {cut}");
            assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, last_start);
            // The log takes new appends right after the valid prefix.
            let mut b = batch(1, 1, 0);
            assert_eq!(
                log.append(&mut b, 0, 0).unwrap().base_offset,
                end_before_last
            );
            assert_eq!(read_all(&log).len(), 5);
        }
    }

    #[test]
    fn recovery_cuts_at_a_corrupt_batch() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), cfg(), 0).unwrap();
        append_n(&mut log, 5, 0);
        drop(log);
        let path = segment::log_path(dir.path(), 0);
        let mut bytes = std::fs::read(&path).unwrap();
        let one = batch(3, 50, 0).len();
        bytes[2 * one + 70] ^= 0xff; // inside the third batch's records
        std::fs::write(&path, &bytes).unwrap();
        let log = Log::open(dir.path(), cfg(), 0).unwrap();
        assert_eq!(log.log_end_offset(), 6);
    }

    #[test]
    fn missing_or_bad_indexes_are_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), cfg(), 0).unwrap();
        append_n(&mut log, 100, 0);
        let end = log.log_end_offset();
        log.close().unwrap();
        drop(log);
        let mut n = 0;
        for e in std::fs::read_dir(dir.path()).unwrap() {
            let p = e.unwrap().path();
            match p.extension().and_then(|e| e.to_str()) {
                Some("index") if n % 2 == 0 => {
                    std::fs::remove_file(&p).unwrap();
                    n += 1;
                }
                Some("index") => {
                    std::fs::write(&p, b"garbage").unwrap();
                    n += 1;
                }
                _ => {}
            }
        }
        assert!(n > 2);
        let log = Log::open(dir.path(), cfg(), 0).unwrap();
        assert_eq!(log.log_end_offset(), end);
        assert_eq!(read_all(&log).len(), 100);
        for off in 0..end {
            let b = log.read(off, 10, true).unwrap();
            let h = batch::parse_header(&b).unwrap();
            assert!(h.base_offset <= off && off <= h.last_offset());
        }
    }

    #[test]
    fn retention_by_bytes_and_time_deletes_whole_closed_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg();
        c.retention_bytes = 8192;
        let mut log = Log::open(dir.path(), c.clone(), 0).unwrap();
        append_n(&mut log, 200, 0);
        let end = log.log_end_offset();
        let deleted = log.apply_retention(0).unwrap();
        assert!(!deleted.is_empty());
        assert!(log.size_bytes() <= 8192 + 4096);
        assert!(log.log_start_offset() > 0);
        assert_eq!(log.log_end_offset(), end);
        assert!(matches!(
            log.read(0, 100, true),
            Err(Error::OffsetOutOfRange { .. })
        ));
        assert_eq!(read_all(&log).last().unwrap().next_offset(), end);

        c.retention_bytes = -1;
        c.retention_ms = 1000;
        log.set_config(c);
        // The newest timestamp is 1992; at now=3000 every closed segment is past 1 s.
        log.apply_retention(3_000).unwrap();
        assert_eq!(log.segment_count(), 1, "only the active segment remains");
    }

    #[test]
    fn timestamp_lookup_finds_first_batch_at_or_after() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), cfg(), 0).unwrap();
        // Batch i holds timestamps 1000+10i .. 1000+10i+2.
        append_n(&mut log, 100, 1000);
        for (target, expect_base) in [
            (0, 0),
            (1000, 0),
            (1003, 3),
            (1010, 3),
            (1011, 3),
            (1013, 6),
            (1992, 297),
        ] {
            let b = log.find_batch_by_timestamp(target).unwrap().unwrap();
            assert_eq!(
                batch::parse_header(&b).unwrap().base_offset,
                expect_base,
                "ts {target}"
            );
        }
        assert!(log.find_batch_by_timestamp(1993).unwrap().is_none());
        let max = log.find_batch_with_max_timestamp().unwrap().unwrap();
        assert_eq!(batch::parse_header(&max).unwrap().base_offset, 297);
    }

    #[test]
    fn invalid_batches_append_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), cfg(), 0).unwrap();
        let mut good = batch(2, 5, 0);
        let mut bad = batch(2, 5, 0);
        bad[30] ^= 1;
        good.extend(&bad);
        assert!(matches!(
            log.append(&mut good, 0, 0),
            Err(Error::Corrupt(_))
        ));
        assert_eq!(log.log_end_offset(), 0);
        let mut big = batch(1, 5000, 0);
        assert!(matches!(
            {
                let mut c = cfg();
                c.max_message_bytes = 1000;
                log.set_config(c);
                log.append(&mut big, 0, 0)
            },
            Err(Error::MessageTooLarge { .. })
        ));
    }

    #[test]
    fn high_watermark_follows_flush_when_reads_are_flushed_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg();
        c.read_only_flushed = true;
        let mut log = Log::open(dir.path(), c, 0).unwrap();
        append_n(&mut log, 2, 0);
        assert_eq!(log.high_watermark(), 0);
        assert!(log.read(0, 1000, true).unwrap().is_empty());
        log.sync().unwrap();
        assert_eq!(log.high_watermark(), 6);
        assert_eq!(batch::headers(&log.read(0, 1000, true).unwrap()).count(), 2);
    }

    #[test]
    fn delete_records_moves_the_start_inside_a_segment_and_survives_crashes() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), cfg(), 0).unwrap();
        append_n(&mut log, 2, 0); // offsets 0..6
        produce(&mut log, 7, 0, 0).unwrap(); // 6..8, idempotent
        append_n(&mut log, 200, 0);
        let (end, segments) = (log.log_end_offset(), log.segment_count());
        let cut = log.closed_segments()[3].base_offset + 4; // inside segment 3

        assert_eq!(log.delete_records_before(cut, None, 0).unwrap(), cut);
        assert_eq!(log.log_start_offset(), cut);
        assert_eq!(
            log.segment_count(),
            segments - 3,
            "segments wholly below go"
        );
        assert!(matches!(
            log.read(cut - 1, 100, true),
            Err(Error::OffsetOutOfRange { start, .. }) if start == cut
        ));
        let b = log.read(cut, 100, true).unwrap();
        let h = batch::parse_header(&b).unwrap();
        assert!(h.base_offset <= cut && cut <= h.last_offset());
        assert_eq!(
            log.delete_records_before(cut - 2, None, 0).unwrap(),
            cut,
            "never back"
        );
        assert!(log.delete_records_before(end + 1, None, 0).is_err());

        // A crash (no close) keeps the new start.
        drop(log);
        let mut log = Log::open(dir.path(), cfg(), 0).unwrap();
        assert_eq!((log.log_start_offset(), log.log_end_offset()), (cut, end));
        // The idempotent producer whose batches went is still known: a retry
        // is recognised and a gap in its sequence refused.
        assert!(produce(&mut log, 7, 0, 0).unwrap().duplicate);
        assert!(produce(&mut log, 7, 0, 5).is_err());
        assert!(!produce(&mut log, 7, 0, 2).unwrap().duplicate);

        // Up to the end: a reader finds an empty log at the end.
        let end = log.log_end_offset();
        log.delete_records_before(end, None, 0).unwrap();
        log.close().unwrap();
        let log = Log::open(dir.path(), cfg(), 0).unwrap();
        assert_eq!((log.log_start_offset(), log.log_end_offset()), (end, end));
        assert_eq!(log.segment_count(), 1);
    }

    #[test]
    fn delete_records_keeps_segments_not_uploaded_yet() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), cfg(), 0).unwrap();
        append_n(&mut log, 200, 0);
        let closed = log.closed_segments();
        let uploaded = closed[1].next_offset;
        let cut = closed[4].base_offset;
        log.delete_records_before(cut, Some(uploaded), 0).unwrap();
        assert_eq!(log.log_start_offset(), cut);
        assert_eq!(
            log.closed_segments()[0].base_offset,
            uploaded,
            "kept for upload"
        );
        // Once uploaded, the next retention pass removes them.
        let limits = RetentionLimits {
            retention_ms: -1,
            retention_bytes: -1,
            delete_below: Some(cut),
        };
        log.apply_retention_with(0, limits).unwrap();
        assert_eq!(log.closed_segments()[0].base_offset, cut);
    }

    #[test]
    fn log_append_time_stamps_batches() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg();
        c.timestamp_type = TimestampType::LogAppendTime;
        let mut log = Log::open(dir.path(), c, 0).unwrap();
        let mut b = batch(2, 5, 7);
        let info = log.append(&mut b, 0, 55_555).unwrap();
        assert_eq!(info.log_append_time, Some(55_555));
        let read = log.read(0, 1000, true).unwrap();
        let h = batch::validate(&read).unwrap();
        assert!(h.log_append_time());
        assert_eq!(h.max_timestamp, 55_555);
    }

    fn produce(log: &mut Log, pid: i64, epoch: i16, seq: i32) -> Result<AppendInfo> {
        let mut b = idempotent_batch(2, 10, 1_000, pid, epoch, seq);
        log.append(&mut b, 0, 1_000)
    }

    #[test]
    fn retried_batches_are_acknowledged_with_their_original_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), cfg(), 0).unwrap();
        append_n(&mut log, 2, 0); // offsets 0..6, not idempotent
        let first = produce(&mut log, 42, 0, 0).unwrap();
        let second = produce(&mut log, 42, 0, 2).unwrap();
        assert_eq!((first.base_offset, second.base_offset), (6, 8));
        let end = log.log_end_offset();
        let retry = produce(&mut log, 42, 0, 0).unwrap();
        assert!(retry.duplicate);
        assert_eq!((retry.base_offset, retry.last_offset), (6, 7));
        assert_eq!(log.log_end_offset(), end, "a retry appends nothing");
        assert!(matches!(
            produce(&mut log, 42, 0, 7),
            Err(Error::Sequence(SequenceError::OutOfOrder {
                got: 7,
                last: 3,
                ..
            }))
        ));
        assert_eq!(log.log_end_offset(), end);
        let mut txn = idempotent_batch(1, 1, 0, 42, 0, 4);
        txn[21..23].copy_from_slice(&batch::ATTR_TRANSACTIONAL.to_be_bytes());
        let crc = crc32c::crc32c(&txn[21..]);
        txn[17..21].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(
            log.append(&mut txn, 0, 0),
            Err(Error::TransactionsUnsupported)
        ));
    }

    #[test]
    fn producer_state_survives_clean_restarts_and_crashes() {
        for crash in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let mut log = Log::open(dir.path(), cfg(), 0).unwrap();
            // Enough batches to roll several segments (snapshots at each roll).
            for seq in 0..200 {
                produce(&mut log, 7, 1, seq * 2).unwrap();
                append_n(&mut log, 1, 0);
            }
            assert!(log.segment_count() > 3);
            let state = log.producer_state().clone();
            if crash {
                log.sync().unwrap();
            } else {
                log.close().unwrap();
            }
            drop(log);
            let mut log = Log::open(dir.path(), cfg(), 0).unwrap();
            assert_eq!(log.producer_state(), &state, "crash={crash}");
            let retry = produce(&mut log, 7, 1, 398).unwrap();
            assert!(retry.duplicate, "crash={crash}");
            assert!(!produce(&mut log, 7, 1, 400).unwrap().duplicate);
        }
    }

    #[test]
    fn producer_state_is_rebuilt_when_snapshots_are_gone_or_stale() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), cfg(), 0).unwrap();
        for seq in 0..100 {
            produce(&mut log, 3, 0, seq * 2).unwrap();
        }
        let state = log.producer_state().clone();
        log.close().unwrap();
        drop(log);
        let mut snapshots = 0;
        for e in std::fs::read_dir(dir.path()).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|e| e == "snapshot") {
                std::fs::remove_file(p).unwrap();
                snapshots += 1;
            }
        }
        assert!(snapshots > 1);
        // A stale snapshot from beyond the end (a tail that was cut) is ignored.
        std::fs::write(
            dir.path().join(format!("{:020}.snapshot", 1_000_000)),
            ProducerState::default().encode(),
        )
        .unwrap();
        let log = Log::open(dir.path(), cfg(), 0).unwrap();
        assert_eq!(log.producer_state(), &state);
        assert!(!dir
            .path()
            .join(format!("{:020}.snapshot", 1_000_000))
            .exists());
    }

    #[test]
    fn an_empty_log_can_start_at_any_offset() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open_from(dir.path(), cfg(), 0, 5_000).unwrap();
        assert_eq!(
            (log.log_start_offset(), log.log_end_offset()),
            (5_000, 5_000)
        );
        let mut b = batch(2, 5, 0);
        assert_eq!(log.append(&mut b, 0, 0).unwrap().base_offset, 5_000);
        log.close().unwrap();
        drop(log);
        let log = Log::open_from(dir.path(), cfg(), 0, 0).unwrap();
        assert_eq!(
            (log.log_start_offset(), log.log_end_offset()),
            (5_000, 5_002)
        );
    }
}

#[cfg(test)]
mod replication_tests {
    use super::*;
    use crate::batch::testing::idempotent_batch;
    use proptest::prelude::*;

    fn cfg() -> LogConfig {
        LogConfig {
            segment_bytes: 2048,
            index_interval_bytes: 256,
            read_only_flushed: false,
            ..LogConfig::default()
        }
    }

    /// Batch `i`: a few records from producer `i % 3` under leader epoch `epoch`.
    fn append(log: &mut Log, i: usize, epoch: i32) -> AppendInfo {
        let pid = (i % 3) as i64;
        let seq = (i / 3) as i32 * 4;
        let mut b = idempotent_batch(4, 40 + i % 50, 1_000 + i as i64, pid, 0, seq);
        log.append(&mut b, epoch, 1_000).unwrap()
    }

    /// Every stored batch's bytes, in order.
    fn bytes(log: &Log) -> Vec<u8> {
        let mut out = Vec::new();
        let mut off = log.log_start_offset();
        while off < log.log_end_offset() {
            let b = log
                .read_plan_to(off, i64::MAX)
                .unwrap()
                .read(1 << 20, true)
                .unwrap();
            let (_, last) = batch::headers(&b).last().unwrap();
            off = last.next_offset();
            out.extend_from_slice(&b);
        }
        out
    }

    /// (batch count, epoch of each batch): a log built by a leader.
    fn leader(dir: &Path, epochs: &[i32]) -> Log {
        let mut log = Log::open(dir, cfg(), 0).unwrap();
        for (i, &e) in epochs.iter().enumerate() {
            append(&mut log, i, e);
        }
        log
    }

    #[test]
    fn a_follower_copies_the_leaders_bytes_epochs_and_producers() {
        let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let epochs: Vec<i32> = (0..120).map(|i| 1 + i / 40).collect();
        let leader = leader(ld.path(), &epochs);
        let mut follower = Log::open(fd.path(), cfg(), 0).unwrap();
        // Fetch as a follower does: from its end, in uneven chunks.
        let mut n = 0;
        while follower.log_end_offset() < leader.log_end_offset() {
            let chunk = leader
                .read_plan_to(follower.log_end_offset(), i64::MAX)
                .unwrap()
                .read(700 + n * 37 % 900, true)
                .unwrap();
            follower.append_replica(&chunk, 1_000).unwrap().unwrap();
            n += 1;
        }
        assert_eq!(bytes(&follower), bytes(&leader));
        assert_eq!(follower.epoch_entries(), leader.epoch_entries());
        assert_eq!(follower.epoch_entries().len(), 3);
        assert_eq!(follower.producer_state(), leader.producer_state());
        // A re-sent chunk is skipped; a batch further on (a hole compaction
        // left in the leader's log) is taken, as Kafka's followers do.
        let again = leader
            .read_plan_to(0, i64::MAX)
            .unwrap()
            .read(500, true)
            .unwrap();
        assert!(follower.append_replica(&again, 1_000).unwrap().is_none());
        let gap_dir = tempfile::tempdir().unwrap();
        let mut gap = Log::open(gap_dir.path(), cfg(), 0).unwrap();
        let later = leader
            .read_plan_to(40, i64::MAX)
            .unwrap()
            .read(500, true)
            .unwrap();
        let first = batch::parse_header(&later).unwrap();
        let info = gap.append_replica(&later, 1_000).unwrap().unwrap();
        assert_eq!(info.base_offset, first.base_offset);
        assert!(gap.log_end_offset() > first.base_offset);
    }

    #[test]
    fn epochs_survive_restarts_and_are_rebuilt_when_the_checkpoint_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = leader(dir.path(), &[1, 1, 2, 2, 5]);
        log.begin_epoch(6).unwrap();
        let entries = log.epoch_entries().to_vec();
        assert_eq!(entries.last().unwrap().epoch, 6);
        assert_eq!(log.end_offset_for_epoch(5).end_offset, log.log_end_offset());
        log.close().unwrap();
        drop(log);
        assert_eq!(
            Log::open(dir.path(), cfg(), 0).unwrap().epoch_entries(),
            &entries[..]
        );
        std::fs::remove_file(dir.path().join(crate::epochs::CHECKPOINT)).unwrap();
        let rebuilt = Log::open(dir.path(), cfg(), 0).unwrap();
        // Epoch 6 wrote nothing: only the batches' epochs come back.
        assert_eq!(rebuilt.epoch_entries(), &entries[..entries.len() - 1]);
    }

    #[test]
    fn truncating_at_the_end_drops_an_empty_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = leader(dir.path(), &[1, 1, 1]);
        let end = log.log_end_offset();
        log.begin_epoch(4).unwrap();
        assert_eq!(log.latest_epoch(), 4);
        log.truncate_to(end, 0).unwrap();
        assert_eq!(log.latest_epoch(), 1, "epoch 4 wrote nothing here");
        assert_eq!(log.log_end_offset(), end);
    }

    #[test]
    fn the_high_watermark_is_checkpointed_and_never_above_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = leader(dir.path(), &[1; 10]);
        assert_eq!(
            log.high_watermark(),
            log.log_end_offset(),
            "no checkpoint: all committed"
        );
        log.set_high_watermark(12);
        assert_eq!(log.high_watermark(), 12);
        log.checkpoint_high_watermark().unwrap();
        drop(log);
        let mut log = Log::open(dir.path(), cfg(), 0).unwrap();
        assert_eq!(
            log.high_watermark(),
            12,
            "a restart shows no more than was committed"
        );
        log.set_high_watermark(i64::MAX);
        assert_eq!(log.high_watermark(), log.log_end_offset());
        assert!(log.read(12, 100, true).is_ok());
    }

    proptest! {
        /// Truncating a log at any batch boundary leaves exactly the log a
        /// leader would have built from those batches: bytes, epochs,
        /// producers, and it goes on accepting appends; also after a reopen.
        #[test]
        fn truncation_leaves_the_prefix(n in 1usize..80, keep_frac in 0.0f64..1.0, bump in 1usize..40, crash: bool) {
            let epochs: Vec<i32> = (0..n).map(|i| 1 + (i / bump) as i32).collect();
            let keep = ((n as f64) * keep_frac) as usize;
            let (full_dir, prefix_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let mut full = leader(full_dir.path(), &epochs);
            let prefix = leader(prefix_dir.path(), &epochs[..keep]);
            let cut = prefix.log_end_offset();
            full.set_high_watermark(i64::MAX);
            full.truncate_to(cut, 2_000).unwrap();
            prop_assert_eq!(full.log_end_offset(), cut);
            prop_assert!(full.high_watermark() <= cut);
            prop_assert_eq!(bytes(&full), bytes(&prefix));
            prop_assert_eq!(full.epoch_entries(), prefix.epoch_entries());
            prop_assert_eq!(full.producer_state(), prefix.producer_state());
            if crash {
                drop(full);
            } else {
                full.close().unwrap();
                drop(full);
            }
            let mut full = Log::open(full_dir.path(), cfg(), 0).unwrap();
            prop_assert_eq!(bytes(&full), bytes(&prefix));
            prop_assert_eq!(full.epoch_entries(), prefix.epoch_entries());
            prop_assert_eq!(full.producer_state(), prefix.producer_state());
            let next = append(&mut full, keep, 99);
            prop_assert_eq!(next.base_offset, cut);
        }
    }
}

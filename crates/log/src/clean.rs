//! Log compaction of a partition's closed segments (the log cleaner's
//! work on one log). The pure parts are in [`crate::compact`]; this is the
//! I/O: a pass reads the dirty section to build the key map, rewrites
//! groups of closed segments into one cleaned file each, and swaps each in.
//!
//! # Crash safety
//! A group's cleaned file is written as `{base}.cleaned` and fsynced. The
//! swap renames it to `{base}-{end}.swap` (the range of offsets it
//! replaces), deletes the group's segments, and renames the swap file to
//! `{base}.log`. [`recover_swaps`] runs before a log opens: a `.cleaned`
//! file is deleted (the old segments stand); a `.swap` file means the swap
//! was decided, so any old segment left in its range is deleted and the swap
//! file becomes the segment. Either the old or the new segments are
//! visible, never both and never neither.
//!
//! Reads never wait for a pass: the map and the cleaned files are built
//! outside the log's lock from files closed segments never change, and the
//! lock is taken only to swap.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use crate::batch::{self, LOG_OVERHEAD};
use crate::compact::{self, Filtered, KeyMap};
use crate::log::Log;
use crate::segment::{self, Segment};
use crate::{Error, Result};

/// Where the cleaner has cleaned up to, in the partition directory.
const CLEANED_CHECKPOINT: &str = "cleaner-offset";

/// Crash points of a pass (see `STRATA_FAULT_POINTS` in the tier crate;
/// the log crate reads the same variable).
pub mod faults {
    /// After a cleaned file is written, before its swap.
    pub const BEFORE_SWAP: &str = "cleaner.before_swap";
    /// After the swap file is in place, before the old segments go.
    pub const AFTER_SWAP_FILE: &str = "cleaner.after_swap_file";
    /// After the old segments are gone, before the swap file is renamed.
    pub const AFTER_DELETE: &str = "cleaner.after_delete";

    /// Aborts the process at `name` when `STRATA_FAULT_POINTS` arms it
    /// (`name` or `name@n` for the n-th pass).
    pub fn hit(name: &str) {
        use std::collections::HashMap;
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::OnceLock;
        static TABLE: OnceLock<HashMap<String, (u64, AtomicU64)>> = OnceLock::new();
        let table = TABLE.get_or_init(|| {
            std::env::var("STRATA_FAULT_POINTS")
                .unwrap_or_default()
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| {
                    let (n, at) = s.trim().split_once('@').unwrap_or((s.trim(), "1"));
                    (n.to_string(), (at.parse().unwrap_or(1), AtomicU64::new(0)))
                })
                .collect()
        });
        if let Some((at, hits)) = table.get(name) {
            if hits.fetch_add(1, Ordering::SeqCst) + 1 == *at {
                eprintln!("fault point {name} reached: aborting");
                std::process::abort();
            }
        }
    }
}

/// Settings of one pass (Kafka's topic and broker configs).
#[derive(Debug, Clone, Copy)]
pub struct CleanConfig {
    /// `delete.retention.ms`: tombstones older than this go.
    pub delete_retention_ms: i64,
    /// `min.compaction.lag.ms`: records younger than this stay dirty.
    pub min_compaction_lag_ms: i64,
    /// `log.cleaner.dedupe.buffer.size`: memory for the key map.
    pub map_bytes: usize,
    /// `segment.bytes`: cleaned groups are at most this large.
    pub segment_bytes: u64,
    /// Segments reaching this offset are not cleaned (the lake has not
    /// read them yet); `i64::MAX` for none.
    pub keep_from: i64,
}

/// A closed segment as a pass sees it.
#[derive(Debug, Clone)]
pub struct PlannedSegment {
    /// Base offset.
    pub base: i64,
    /// Where the next segment starts (offsets up to it belong here).
    pub end: i64,
    /// Bytes.
    pub size: u64,
    /// Newest record's timestamp.
    pub max_timestamp: i64,
    /// When the file was last written (ms since the epoch): tombstones are
    /// kept `delete.retention.ms` from then, not from their own timestamps,
    /// which producers set.
    pub written_ms: i64,
    path: PathBuf,
}

/// What a pass will work on, taken under the log's lock.
#[derive(Debug, Clone)]
pub struct CleanPlan {
    dir: PathBuf,
    /// Closed segments up to the end of the cleanable section.
    pub segments: Vec<PlannedSegment>,
    /// Where the dirty (not yet cleaned) section starts.
    pub dirty_from: i64,
    /// Where the cleanable section ends (the active segment, the high
    /// watermark, or the first segment younger than `min.compaction.lag.ms`).
    pub clean_to: i64,
    /// The log's truncation count when planned.
    truncations: u64,
}

impl CleanPlan {
    /// Bytes of the dirty section.
    pub fn dirty_bytes(&self) -> u64 {
        self.segments
            .iter()
            .filter(|s| s.end > self.dirty_from)
            .map(|s| s.size)
            .sum()
    }

    /// Bytes of the whole cleanable section.
    pub fn total_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.size).sum()
    }
}

/// What a pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanStats {
    /// Bytes read (the map, then every segment rewritten).
    pub bytes_read: u64,
    /// Bytes before and after, of the segments rewritten.
    pub bytes_before: u64,
    /// Bytes after.
    pub bytes_after: u64,
    /// Records dropped.
    pub records_removed: u64,
    /// Where the cleaned section now ends.
    pub cleaned_to: i64,
    /// Bytes of the dirty section the pass covered.
    pub dirty_bytes: u64,
}

fn cleaned_path(dir: &Path, base: i64) -> PathBuf {
    dir.join(format!("{}.cleaned", segment::stem(base)))
}

fn swap_path(dir: &Path, base: i64, end: i64) -> PathBuf {
    dir.join(format!(
        "{}-{}.swap",
        segment::stem(base),
        segment::stem(end)
    ))
}

/// Finishes or undoes a pass a crash interrupted (before the log opens).
pub(crate) fn recover_swaps(dir: &Path) -> Result<()> {
    let mut logs = Vec::new();
    let mut swaps = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        if name.ends_with(".cleaned") {
            warn!(file = %entry.path().display(), "removing a cleaned segment that was never swapped in");
            std::fs::remove_file(entry.path())?;
        } else if let Some(stem) = name.strip_suffix(".swap") {
            if let Some((b, e)) = stem.split_once('-') {
                if let (Ok(b), Ok(e)) = (b.parse::<i64>(), e.parse::<i64>()) {
                    swaps.push((b, e, entry.path()));
                }
            }
        } else if let Some(stem) = name.strip_suffix(".log") {
            if let Ok(b) = stem.parse::<i64>() {
                logs.push(b);
            }
        }
    }
    for (base, end, path) in swaps {
        for old in logs.iter().filter(|b| **b >= base && **b < end) {
            for ext in ["log", "index", "timeindex"] {
                let p = dir.join(format!("{}.{ext}", segment::stem(*old)));
                match std::fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        std::fs::rename(&path, segment::log_path(dir, base))?;
        segment::sync_dir(dir)?;
        warn!(dir = %dir.display(), base, end, "completed an interrupted compaction swap");
    }
    Ok(())
}

/// Reads the whole batches of a segment file in order.
struct Batches {
    reader: BufReader<File>,
}

impl Batches {
    fn open(path: &Path) -> Result<Self> {
        Ok(Self {
            reader: BufReader::with_capacity(1 << 20, File::open(path)?),
        })
    }

    fn next_batch(&mut self) -> Result<Option<Vec<u8>>> {
        let mut head = [0u8; LOG_OVERHEAD];
        match self.reader.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let size = batch::batch_size(&head)
            .ok_or_else(|| Error::Corrupt("bad batch length in a closed segment".into()))?;
        let mut b = vec![0u8; size];
        b[..LOG_OVERHEAD].copy_from_slice(&head);
        self.reader.read_exact(&mut b[LOG_OVERHEAD..])?;
        Ok(Some(b))
    }
}

impl Log {
    /// The offset the cleaner has cleaned up to (0 before the first pass).
    pub fn cleaned_to(&self) -> i64 {
        std::fs::read_to_string(self.dir.join(CLEANED_CHECKPOINT))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// What a pass at `now` would cover, or `None` when nothing is dirty.
    pub fn clean_plan(
        &self,
        min_compaction_lag_ms: i64,
        keep_from: i64,
        now_ms: i64,
    ) -> Option<CleanPlan> {
        let closed = self.segments.len().saturating_sub(1);
        let bases: Vec<i64> = self.segments.keys().copied().collect();
        let mut segments = Vec::new();
        let mut clean_to = bases.last().copied().unwrap_or(0);
        // Never past the high watermark: uncommitted records may still be cut
        // by a truncation, and the values they replace must not go first.
        let hw = self.high_watermark();
        for (i, s) in self.segments.values().take(closed).enumerate() {
            let young = min_compaction_lag_ms > 0
                && s.max_timestamp >= 0
                && now_ms - s.max_timestamp < min_compaction_lag_ms;
            if young || bases[i + 1] > keep_from || bases[i + 1] > hw {
                clean_to = s.base;
                break;
            }
            let path = segment::log_path(&self.dir, s.base);
            let written_ms = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(now_ms, |d| d.as_millis() as i64);
            segments.push(PlannedSegment {
                base: s.base,
                end: bases[i + 1],
                size: s.size,
                max_timestamp: s.max_timestamp,
                written_ms,
                path,
            });
        }
        let dirty_from = self.cleaned_to().max(self.log_start_offset());
        (dirty_from < clean_to && !segments.is_empty()).then(|| CleanPlan {
            dir: self.dir.clone(),
            segments,
            dirty_from,
            clean_to,
            truncations: self.truncations,
        })
    }

    /// Swaps a cleaned group in: `cleaned` (written by [`clean_group`])
    /// replaces the segments `[group_base, group_end)`. Refused (the cleaned
    /// file removed) when the group changed meanwhile (retention deleted part
    /// of it). Returns whether it swapped.
    pub fn swap_in(
        &mut self,
        plan: &CleanPlan,
        planned: &[PlannedSegment],
        cleaned: Option<PathBuf>,
        now_ms: i64,
    ) -> Result<bool> {
        let active = self.segments.keys().next_back().copied();
        let group: Vec<i64> = planned.iter().map(|s| s.base).collect();
        let group_end = planned.last().map_or(0, |s| s.end);
        // Unchanged since planned: no truncation since, every segment still
        // there, closed and of the same size, and the next one where it was.
        let next_after = group
            .last()
            .and_then(|last| self.segments.range(last + 1..).next())
            .map(|(b, _)| *b);
        let present = plan.truncations == self.truncations
            && !group.is_empty()
            && next_after == Some(group_end)
            && planned.iter().all(|g| {
                Some(g.base) != active
                    && self.segments.get(&g.base).is_some_and(|s| s.size == g.size)
            });
        let group = &group[..];
        if !present {
            if let Some(p) = cleaned {
                std::fs::remove_file(p)?;
            }
            return Ok(false);
        }
        let base = group[0];
        let swap = swap_path(&self.dir, base, group_end);
        // The first segment of the log stays (empty if need be), so the log
        // start offset does not move.
        let keep_empty = Some(&base) == self.segments.keys().next();
        let cleaned = match cleaned {
            Some(p) => Some(p),
            None if keep_empty => {
                let p = cleaned_path(&self.dir, base);
                File::create(&p)?.sync_all()?;
                Some(p)
            }
            None => None,
        };
        faults::hit(faults::BEFORE_SWAP);
        if let Some(p) = &cleaned {
            std::fs::rename(p, &swap)?;
        } else {
            File::create(&swap)?.sync_all()?;
        }
        segment::sync_dir(&self.dir)?;
        faults::hit(faults::AFTER_SWAP_FILE);
        for b in group {
            if let Some(s) = self.segments.remove(b) {
                s.delete()?;
            }
        }
        segment::sync_dir(&self.dir)?;
        faults::hit(faults::AFTER_DELETE);
        if cleaned.is_some() {
            std::fs::rename(&swap, segment::log_path(&self.dir, base))?;
            segment::sync_dir(&self.dir)?;
            let mut seg = Segment::open(
                &self.dir,
                base,
                now_ms,
                self.config.index_interval_bytes,
                false,
            )?;
            seg.close()?;
            seg.file.release();
            self.segments.insert(base, seg);
        } else {
            std::fs::remove_file(&swap)?;
            segment::sync_dir(&self.dir)?;
        }
        Ok(true)
    }

    /// After a cut at `end`: what was cleaned beyond it is gone, and what
    /// comes there next is dirty.
    pub(crate) fn clamp_cleaned_to(&self, end: i64) -> Result<()> {
        if self.cleaned_to() > end {
            segment::write_synced(
                &self.dir.join(CLEANED_CHECKPOINT),
                end.to_string().as_bytes(),
            )?;
        }
        Ok(())
    }

    /// Records that the log is cleaned up to `offset`, unless it was cut
    /// since `plan` was made (the next pass starts from the checkpoint).
    pub fn set_cleaned_to(&self, plan: &CleanPlan, offset: i64) -> Result<()> {
        if plan.truncations != self.truncations {
            return Ok(());
        }
        segment::write_synced(
            &self.dir.join(CLEANED_CHECKPOINT),
            offset.to_string().as_bytes(),
        )?;
        Ok(())
    }
}

/// Builds the key map over the dirty section of `plan`. Returns where the
/// map ends: `plan.clean_to`, or earlier when the map filled up (the rest
/// stays dirty for the next pass). `pace` is called with the bytes read.
pub fn build_map(
    plan: &CleanPlan,
    map: &mut KeyMap,
    pace: &mut dyn FnMut(u64),
) -> Result<(i64, u64)> {
    let mut read = 0u64;
    for s in plan.segments.iter().filter(|s| s.end > plan.dirty_from) {
        let mut batches = Batches::open(&s.path)?;
        while let Some(b) = batches.next_batch()? {
            read += b.len() as u64;
            pace(b.len() as u64);
            let h = batch::parse_header(&b)?;
            if h.next_offset() <= plan.dirty_from || h.attributes & batch::ATTR_CONTROL != 0 {
                continue;
            }
            let plain = compact::plain_records(&b, &h).map_err(Error::Corrupt)?;
            for r in compact::records(&h, &plain).map_err(Error::Corrupt)? {
                if let Some(k) = r.key {
                    if !map.record(k, r.offset) {
                        // Full: the map covers the segments before this one.
                        return Ok((s.base.max(plan.dirty_from), read));
                    }
                }
            }
        }
    }
    Ok((plan.clean_to, read))
}

/// Groups consecutive segments of the plan below `to` whose sizes add up to
/// at most `segment_bytes` (each group becomes one cleaned segment).
pub fn groups(plan: &CleanPlan, to: i64, segment_bytes: u64) -> Vec<Vec<PlannedSegment>> {
    let mut out: Vec<Vec<PlannedSegment>> = Vec::new();
    let mut size = 0u64;
    for s in plan.segments.iter().filter(|s| s.end <= to) {
        match out.last_mut() {
            // Offsets within a segment are indexed relative to its base as
            // 32-bit numbers: a merged group spans at most i32::MAX.
            Some(g) if size + s.size <= segment_bytes && s.end - g[0].base <= i32::MAX as i64 => {
                size += s.size;
                g.push(s.clone());
            }
            _ => {
                size = s.size;
                out.push(vec![s.clone()]);
            }
        }
    }
    out
}

/// Writes the cleaned file of one group: every batch with the records the
/// map says to keep. `None` when nothing is kept. Stats are added to `stats`.
pub fn clean_group(
    plan: &CleanPlan,
    group: &[PlannedSegment],
    map: &KeyMap,
    cfg: &CleanConfig,
    now_ms: i64,
    stats: &mut CleanStats,
    pace: &mut dyn FnMut(u64),
) -> Result<Option<PathBuf>> {
    let dir = plan.dir.as_path();
    let path = cleaned_path(dir, group[0].base);
    let mut out = BufWriter::with_capacity(1 << 20, File::create(&path)?);
    let mut written = 0u64;
    for s in group {
        stats.bytes_before += s.size;
        // Tombstones go once their segment was written more than
        // delete.retention.ms ago (a cleaned segment counts from its cleaning,
        // so a reader has at least that long to see a delete), not by the
        // record timestamps producers set.
        let expired = now_ms - s.written_ms > cfg.delete_retention_ms;
        let mut batches = Batches::open(&s.path)?;
        while let Some(b) = batches.next_batch()? {
            stats.bytes_read += b.len() as u64;
            pace(b.len() as u64);
            let h = batch::parse_header(&b)?;
            let filtered = compact::filter_batch(&b, |r| compact::keep(r, map, expired))
                .map_err(Error::Corrupt)?;
            let kept: &[u8] = match &filtered {
                Filtered::Unchanged => &b,
                Filtered::Rewritten(nb) => nb,
                Filtered::Empty => {
                    stats.records_removed += h.records_count as u64;
                    continue;
                }
            };
            if let Filtered::Rewritten(nb) = &filtered {
                let after = batch::parse_header(nb)?.records_count;
                stats.records_removed += (h.records_count - after) as u64;
            }
            out.write_all(kept)?;
            written += kept.len() as u64;
        }
    }
    out.flush()?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    stats.bytes_after += written;
    if written == 0 {
        drop(file);
        std::fs::remove_file(&path)?;
        return Ok(None);
    }
    info!(dir = %dir.display(), base = group[0].base, segments = group.len(), bytes = written, "segment group cleaned");
    Ok(Some(path))
}

/// Access to a log behind its lock.
pub trait LogAccess {
    /// Runs `f` with the log locked.
    fn with_log<R>(&self, f: impl FnOnce(&mut Log) -> R) -> R;
}

impl LogAccess for std::sync::Mutex<Log> {
    fn with_log<R>(&self, f: impl FnOnce(&mut Log) -> R) -> R {
        f(&mut self.lock().expect("log lock"))
    }
}

/// One compaction pass over a log: plan (locked), key map and cleaned
/// groups (unlocked, paced by `pace` with the bytes read), each group
/// swapped in (locked), then the checkpoint. `None` when nothing was dirty.
pub fn compact(
    log: &impl LogAccess,
    cfg: &CleanConfig,
    now_ms: i64,
    pace: &mut dyn FnMut(u64),
) -> Result<Option<CleanStats>> {
    let Some(plan) =
        log.with_log(|l| l.clean_plan(cfg.min_compaction_lag_ms, cfg.keep_from, now_ms))
    else {
        return Ok(None);
    };
    let mut map = KeyMap::new(cfg.map_bytes);
    let (map_end, read) = build_map(&plan, &mut map, pace)?;
    let mut stats = CleanStats {
        bytes_read: read,
        cleaned_to: map_end,
        dirty_bytes: plan
            .segments
            .iter()
            .filter(|s| s.end > plan.dirty_from && s.end <= map_end)
            .map(|s| s.size)
            .sum(),
        ..CleanStats::default()
    };
    if map_end <= plan.dirty_from {
        warn!(dir = %plan.dir.display(), "the cleaner's key map cannot hold one segment's keys; raise log.cleaner.dedupe.buffer.size");
        return Ok(None);
    }
    for group in groups(&plan, map_end, cfg.segment_bytes) {
        let mut done = CleanStats::default();
        let cleaned = clean_group(&plan, &group, &map, cfg, now_ms, &mut done, pace)?;
        stats.bytes_read += done.bytes_read;
        if !log.with_log(|l| l.swap_in(&plan, &group, cleaned, now_ms))? {
            // Retention or a truncation changed the group meanwhile: stop
            // this pass; the next one plans again.
            return Ok(Some(stats));
        }
        stats.bytes_before += done.bytes_before;
        stats.bytes_after += done.bytes_after;
        stats.records_removed += done.records_removed;
    }
    log.with_log(|l| l.set_cleaned_to(&plan, map_end))?;
    Ok(Some(stats))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::testing::keyed_batch;
    use crate::log::LogConfig;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    fn cfg() -> LogConfig {
        LogConfig {
            segment_bytes: 2048,
            index_interval_bytes: 256,
            read_only_flushed: false,
            ..LogConfig::default()
        }
    }

    const CLEAN: CleanConfig = CleanConfig {
        delete_retention_ms: 1_000_000,
        min_compaction_lag_ms: 0,
        map_bytes: 1 << 20,
        segment_bytes: 8192,
        keep_from: i64::MAX,
    };

    /// Writes `n` updates over `keys` keys (every 20th a tombstone), one
    /// per batch so record `i` is at offset `i`; returns them.
    fn fill(log: &mut Log, n: usize, keys: usize) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        (0..n)
            .map(|i| {
                let key = format!("k{}", i % keys).into_bytes();
                let value = (i % 20 != 19).then(|| format!("v{i}").into_bytes());
                let mut b = keyed_batch(&[(Some(&key), value.as_deref())], i as i64);
                assert_eq!(log.append(&mut b, 0, 1_000).unwrap().base_offset, i as i64);
                (key, value)
            })
            .collect()
    }

    /// The latest record of every key below `to`: key -> (offset, value).
    fn latest_below(
        written: &[(Vec<u8>, Option<Vec<u8>>)],
        to: i64,
    ) -> BTreeMap<Vec<u8>, (i64, Option<Vec<u8>>)> {
        let mut out = BTreeMap::new();
        for (i, (k, v)) in written.iter().enumerate().take(to as usize) {
            out.insert(k.clone(), (i as i64, v.clone()));
        }
        out
    }

    /// Every record from the log start: (offset, key, value).
    fn read_all(log: &Log) -> Vec<(i64, Vec<u8>, Option<Vec<u8>>)> {
        let mut out = Vec::new();
        let mut off = log.log_start_offset();
        while off < log.high_watermark() {
            let bytes = log.read(off, 1 << 20, true).unwrap();
            assert!(!bytes.is_empty(), "no progress at {off}");
            for (at, h) in batch::headers(&bytes) {
                let b = &bytes[at..at + h.size];
                let plain = compact::plain_records(b, &h).unwrap();
                for r in compact::records(&h, &plain).unwrap() {
                    if r.offset >= off {
                        let body = r.raw;
                        let value = (!r.tombstone).then(|| {
                            let s = String::from_utf8_lossy(body);
                            let v = s
                                .split('v')
                                .next_back()
                                .unwrap_or("")
                                .trim_end_matches('\0');
                            format!("v{v}").into_bytes()
                        });
                        out.push((r.offset, r.key.unwrap().to_vec(), value));
                    }
                }
                off = h.next_offset();
            }
        }
        out
    }

    #[test]
    fn a_pass_keeps_the_latest_value_of_every_key_at_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), cfg(), 0).unwrap();
        let written = fill(&mut log, 2_000, 50);
        let end = log.log_end_offset();
        let segments = log.segment_count();
        let log = Mutex::new(log);
        let stats = compact(&log, &CLEAN, 10, &mut |_| {}).unwrap().unwrap();
        assert!(stats.records_removed > 1_500, "{stats:?}");
        assert!(stats.bytes_after < stats.bytes_before / 4);
        let log = log.into_inner().unwrap();
        assert!(
            log.segment_count() < segments,
            "small cleaned segments merge"
        );
        assert_eq!((log.log_start_offset(), log.log_end_offset()), (0, end));
        let records = read_all(&log);
        let offsets: Vec<i64> = records.iter().map(|r| r.0).collect();
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "offsets strictly increase"
        );
        // Each key once in the cleaned part, at its latest offset, with its
        // latest value (tombstones still within delete.retention.ms).
        let cleaned_to = log.cleaned_to();
        assert!(cleaned_to > end / 2, "most of the log is cleaned");
        let mut seen = BTreeMap::new();
        for (o, k, v) in records.iter().filter(|r| r.0 < cleaned_to) {
            assert!(
                seen.insert(k.clone(), (*o, v.is_some())).is_none(),
                "key {k:?} twice"
            );
        }
        let expected: BTreeMap<_, _> = latest_below(&written, cleaned_to)
            .into_iter()
            .map(|(k, (o, v))| (k, (o, v.is_some())))
            .collect();
        assert_eq!(
            seen, expected,
            "the latest record of each key, tombstones too"
        );
        // Beyond the cleaned section everything is as written.
        assert_eq!(
            records.iter().filter(|r| r.0 >= cleaned_to).count() as i64,
            end - cleaned_to
        );
        // A reopen (clean or not) finds the same.
        drop(log);
        let log = Log::open(dir.path(), cfg(), 0).unwrap();
        assert_eq!(read_all(&log), records);
    }

    #[test]
    fn segments_a_reader_has_not_consumed_are_not_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), cfg(), 0).unwrap();
        fill(&mut log, 1_000, 10);
        let plan = log.clean_plan(0, 300, 10).unwrap();
        assert!(plan.clean_to <= 300 && plan.segments.iter().all(|s| s.end <= 300));
        assert!(
            log.clean_plan(0, 0, 10).is_none(),
            "nothing read: nothing cleaned"
        );
    }

    #[test]
    fn a_pass_stops_at_the_high_watermark_and_a_truncation_voids_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), cfg(), 0).unwrap();
        fill(&mut log, 1_000, 10);
        log.set_high_watermark(400);
        let plan = log.clean_plan(0, i64::MAX, 10).unwrap();
        assert!(
            plan.segments.iter().all(|s| s.end <= 400),
            "nothing uncommitted is cleaned"
        );
        let mut map = KeyMap::new(1 << 20);
        let (to, _) = build_map(&plan, &mut map, &mut |_| {}).unwrap();
        let group = groups(&plan, to, 1 << 30).remove(0);
        let mut stats = CleanStats::default();
        let cleaned =
            clean_group(&plan, &group, &map, &CLEAN, 10, &mut stats, &mut |_| {}).unwrap();
        // A follower's truncation in the meantime: the swap is refused and
        // the checkpoint not moved.
        log.truncate_to(300, 10).unwrap();
        let before = read_all(&log);
        assert!(!log.swap_in(&plan, &group, cleaned, 10).unwrap());
        log.set_cleaned_to(&plan, to).unwrap();
        assert_eq!(log.cleaned_to(), 0);
        assert_eq!(read_all(&log), before);
        assert!(!dir.path().read_dir().unwrap().any(|e| {
            let name = e.unwrap().file_name().to_string_lossy().to_string();
            name.ends_with(".cleaned") || name.ends_with(".swap")
        }));
    }

    #[test]
    fn expired_tombstones_go_and_a_second_pass_changes_nothing_more() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = Log::open(dir.path(), cfg(), 0).unwrap();
        let written = fill(&mut log, 600, 10);
        let log = Mutex::new(log);
        let expire = CleanConfig {
            delete_retention_ms: 0,
            ..CLEAN
        };
        compact(&log, &expire, 10_000, &mut |_| {})
            .unwrap()
            .unwrap();
        let log = log.into_inner().unwrap();
        let cleaned_to = log.cleaned_to();
        let cleaned: Vec<_> = read_all(&log)
            .into_iter()
            .filter(|r| r.0 < cleaned_to)
            .collect();
        assert!(cleaned.iter().all(|r| r.2.is_some()), "no tombstone left");
        let live: Vec<i64> = latest_below(&written, cleaned_to)
            .into_values()
            .filter(|(_, v)| v.is_some())
            .map(|(o, _)| o)
            .collect();
        let mut got: Vec<i64> = cleaned.iter().map(|r| r.0).collect();
        got.sort_unstable();
        let mut live = live;
        live.sort_unstable();
        assert_eq!(got, live, "exactly the live keys' latest records");
        let log = Mutex::new(log);
        let again = compact(&log, &expire, 10_000, &mut |_| {}).unwrap();
        assert!(again.is_none_or(|s| s.records_removed == 0));
    }

    #[test]
    fn a_crash_at_any_step_of_a_swap_leaves_old_or_new_never_both() {
        for step in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let mut log = Log::open(dir.path(), cfg(), 0).unwrap();
            fill(&mut log, 400, 10);
            let before = read_all(&log);
            let plan = log.clean_plan(0, i64::MAX, 10).unwrap();
            let mut map = KeyMap::new(1 << 20);
            let (to, _) = build_map(&plan, &mut map, &mut |_| {}).unwrap();
            let group = groups(&plan, to, 1 << 30).remove(0);
            let mut stats = CleanStats::default();
            let cleaned = clean_group(&plan, &group, &map, &CLEAN, 10, &mut stats, &mut |_| {})
                .unwrap()
                .unwrap();
            let end = group.last().unwrap().end;
            // Simulate the crash: do the swap's file steps by hand up to `step`.
            drop(log);
            let swap = swap_path(dir.path(), group[0].base, end);
            if step >= 1 {
                std::fs::rename(&cleaned, &swap).unwrap();
            }
            if step >= 2 {
                for s in &group[..group.len() / 2] {
                    std::fs::remove_file(segment::log_path(dir.path(), s.base)).unwrap();
                }
            }
            let log = Log::open(dir.path(), cfg(), 0).unwrap();
            let after = read_all(&log);
            if step == 0 {
                assert_eq!(after, before, "not swapped: the old segments");
            } else {
                assert!(after.len() < before.len(), "swapped: the cleaned segment");
                let keys: std::collections::BTreeSet<_> =
                    after.iter().filter(|r| r.0 < end).map(|r| &r.1).collect();
                assert_eq!(
                    keys.len(),
                    after.iter().filter(|r| r.0 < end).count(),
                    "no key twice"
                );
            }
            let offsets: Vec<i64> = after.iter().map(|r| r.0).collect();
            assert!(offsets.windows(2).all(|w| w[0] < w[1]));
        }
    }
}

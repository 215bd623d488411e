//! The leader epoch cache: for each leader epoch seen in the log, the offset
//! of its first record (Kafka's `LeaderEpochFileCache`, KIP-101).
//!
//! It answers OffsetsForLeaderEpoch and the diverging-epoch check of a
//! follower's fetch: where does epoch E end in this log? A replica keeps it in
//! `leader-epoch-checkpoint` beside its segments, in Kafka's text format
//! (`0`, the entry count, then `epoch start` per line), rewritten through a
//! temp file, fsync and rename whenever it changes.
//!
//! Invariants: epochs strictly increase; start offsets never decrease (an
//! epoch in which nothing was appended starts where the next one does and is
//! replaced by it).

use std::io;
use std::path::{Path, PathBuf};

/// File name of the checkpoint in a partition directory.
pub const CHECKPOINT: &str = "leader-epoch-checkpoint";

/// One epoch and the offset of its first record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEntry {
    /// The leader epoch.
    pub epoch: i32,
    /// Offset of its first record.
    pub start_offset: i64,
}

/// Where an epoch ends in a log (`OffsetsForLeaderEpoch`'s answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEnd {
    /// The largest epoch at or below the one asked about (-1: none).
    pub epoch: i32,
    /// The offset after its last record: the start of the next epoch, or the
    /// log end for the latest (-1 when `epoch` is -1).
    pub end_offset: i64,
}

/// The entries, oldest first, and where they are kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochCache {
    entries: Vec<EpochEntry>,
}

impl EpochCache {
    /// A cache of these entries.
    pub fn new(entries: Vec<EpochEntry>) -> Self {
        let mut c = Self::default();
        for e in entries {
            c.assign(e.epoch, e.start_offset);
        }
        c
    }

    /// The entries, oldest first.
    pub fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    /// The latest epoch (-1 when empty).
    pub fn latest_epoch(&self) -> i32 {
        self.entries.last().map_or(-1, |e| e.epoch)
    }

    /// Records that `epoch` starts at `start_offset`. Returns whether the
    /// cache changed. An epoch older than the latest is ignored; one that
    /// starts where the latest starts replaces it (nothing was written in
    /// the latest).
    pub fn assign(&mut self, epoch: i32, start_offset: i64) -> bool {
        match self.entries.last() {
            Some(last) if epoch < last.epoch => return false,
            Some(last) if epoch == last.epoch => return false,
            Some(last) if start_offset < last.start_offset => {
                // A newer epoch cannot start before an older one: the older
                // ones beyond it were never written.
                self.entries.retain(|e| e.start_offset < start_offset);
            }
            Some(last) if start_offset == last.start_offset => {
                self.entries.pop();
            }
            _ => {}
        }
        self.entries.push(EpochEntry {
            epoch,
            start_offset,
        });
        true
    }

    /// Where `epoch` ends in a log ending at `log_end` (Kafka's
    /// `endOffsetFor`): the largest known epoch at or below it, and the start
    /// of the next epoch (the log end for the latest). An epoch older than
    /// every entry ends where the first known epoch starts (its records, if
    /// any, are gone from this log), as in Kafka: a follower that led an
    /// epoch in which nothing was written must not be told it diverges
    /// forever. An undefined epoch, or an empty cache, ends nowhere
    /// (`-1, -1`).
    pub fn end_offset_for(&self, epoch: i32, log_end: i64) -> EpochEnd {
        let none = EpochEnd {
            epoch: -1,
            end_offset: -1,
        };
        if epoch < 0 {
            return none;
        }
        let i = self.entries.partition_point(|e| e.epoch <= epoch);
        if i == 0 {
            return self.entries.first().map_or(none, |first| EpochEnd {
                epoch,
                end_offset: first.start_offset,
            });
        }
        let found = self.entries[i - 1];
        let end = self
            .entries
            .get(i)
            .map_or(log_end, |next| next.start_offset);
        EpochEnd {
            epoch: found.epoch,
            end_offset: end,
        }
    }

    /// The epoch of the record at `offset` (-1 when unknown).
    pub fn epoch_at(&self, offset: i64) -> i32 {
        let i = self.entries.partition_point(|e| e.start_offset <= offset);
        if i == 0 {
            -1
        } else {
            self.entries[i - 1].epoch
        }
    }

    /// Forgets epochs starting at or after `offset` (the log was truncated
    /// there). Returns whether the cache changed.
    pub fn truncate_from_end(&mut self, offset: i64) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| e.start_offset < offset);
        self.entries.len() != before
    }

    /// Moves the first kept epoch's start up to `offset` (records below it
    /// were deleted); epochs ending at or below it go. Returns whether the
    /// cache changed.
    pub fn truncate_from_start(&mut self, offset: i64) -> bool {
        let i = self.entries.partition_point(|e| e.start_offset <= offset);
        if i <= 1
            && self
                .entries
                .first()
                .is_none_or(|e| e.start_offset >= offset)
        {
            return false;
        }
        let keep_from = i - 1;
        self.entries.drain(..keep_from);
        if let Some(first) = self.entries.first_mut() {
            first.start_offset = first.start_offset.max(offset);
        }
        true
    }

    /// The checkpoint's text (Kafka's format).
    pub fn encode(&self) -> String {
        let mut s = format!("0\n{}\n", self.entries.len());
        for e in &self.entries {
            s.push_str(&format!("{} {}\n", e.epoch, e.start_offset));
        }
        s
    }

    /// Parses a checkpoint.
    pub fn decode(text: &str) -> Result<Self, String> {
        let mut lines = text.lines();
        match lines.next().map(str::trim) {
            Some("0") => {}
            other => return Err(format!("unknown checkpoint version {other:?}")),
        }
        let count: usize = lines
            .next()
            .and_then(|l| l.trim().parse().ok())
            .ok_or("no entry count")?;
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            let line = lines.next().ok_or("fewer entries than counted")?;
            let mut parts = line.split_whitespace();
            let epoch = parts.next().and_then(|p| p.parse().ok());
            let start = parts.next().and_then(|p| p.parse().ok());
            match (epoch, start) {
                (Some(epoch), Some(start_offset)) => entries.push(EpochEntry {
                    epoch,
                    start_offset,
                }),
                _ => return Err(format!("bad entry '{line}'")),
            }
        }
        Ok(Self::new(entries))
    }

    /// Reads `dir`'s checkpoint (empty when there is none or it is damaged:
    /// the log's batches rebuild it).
    pub fn load(dir: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(checkpoint_path(dir)).ok()?;
        Self::decode(&text).ok()
    }

    /// Writes `dir`'s checkpoint durably.
    pub fn save(&self, dir: &Path) -> io::Result<()> {
        crate::segment::write_synced(&checkpoint_path(dir), self.encode().as_bytes())
    }
}

fn checkpoint_path(dir: &Path) -> PathBuf {
    dir.join(CHECKPOINT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(pairs: &[(i32, i64)]) -> EpochCache {
        EpochCache::new(
            pairs
                .iter()
                .map(|&(epoch, start_offset)| EpochEntry {
                    epoch,
                    start_offset,
                })
                .collect(),
        )
    }

    #[test]
    fn end_offsets_follow_kafkas_rules() {
        let c = cache(&[(1, 0), (3, 100), (7, 250)]);
        let end = |e| c.end_offset_for(e, 400);
        // Older than every known epoch: it ends where the first one starts.
        assert_eq!(
            end(0),
            EpochEnd {
                epoch: 0,
                end_offset: 0
            }
        );
        assert_eq!(
            end(-1),
            EpochEnd {
                epoch: -1,
                end_offset: -1
            }
        );
        assert_eq!(
            cache(&[]).end_offset_for(2, 0),
            EpochEnd {
                epoch: -1,
                end_offset: -1
            }
        );
        assert_eq!(
            end(1),
            EpochEnd {
                epoch: 1,
                end_offset: 100
            }
        );
        assert_eq!(
            end(2),
            EpochEnd {
                epoch: 1,
                end_offset: 100
            },
            "the largest epoch at or below 2"
        );
        assert_eq!(
            end(3),
            EpochEnd {
                epoch: 3,
                end_offset: 250
            }
        );
        assert_eq!(
            end(7),
            EpochEnd {
                epoch: 7,
                end_offset: 400
            },
            "the latest ends at the log end"
        );
        assert_eq!(
            end(9),
            EpochEnd {
                epoch: 7,
                end_offset: 400
            }
        );
        assert_eq!(
            (c.epoch_at(99), c.epoch_at(100), c.epoch_at(1000)),
            (1, 3, 7)
        );
    }

    #[test]
    fn assignment_keeps_epochs_and_starts_increasing() {
        let mut c = cache(&[(1, 0)]);
        assert!(!c.assign(1, 50), "same epoch: nothing new");
        assert!(!c.assign(0, 60), "an older epoch is ignored");
        assert!(c.assign(2, 0), "epoch 1 wrote nothing: replaced");
        assert_eq!(
            c.entries(),
            &[EpochEntry {
                epoch: 2,
                start_offset: 0
            }]
        );
        assert!(c.assign(5, 10));
        assert!(
            c.assign(6, 5),
            "a newer epoch starting earlier drops what came after"
        );
        assert_eq!(
            c.entries(),
            &[
                EpochEntry {
                    epoch: 2,
                    start_offset: 0
                },
                EpochEntry {
                    epoch: 6,
                    start_offset: 5
                }
            ]
        );
    }

    #[test]
    fn truncation_from_either_end() {
        let mut c = cache(&[(1, 0), (3, 100), (7, 250)]);
        assert!(c.truncate_from_end(250));
        assert_eq!(c.latest_epoch(), 3);
        assert!(!c.truncate_from_end(500));
        assert!(c.truncate_from_start(150));
        assert_eq!(
            c.entries(),
            &[EpochEntry {
                epoch: 3,
                start_offset: 150
            }]
        );
        assert!(!c.truncate_from_start(120), "already past it");
    }

    #[test]
    fn the_checkpoint_round_trips_in_kafkas_format() {
        let c = cache(&[(1, 0), (3, 100)]);
        assert_eq!(c.encode(), "0\n2\n1 0\n3 100\n");
        assert_eq!(EpochCache::decode(&c.encode()).unwrap(), c);
        assert!(EpochCache::decode("1\n0\n").is_err());
        assert!(EpochCache::decode("0\n2\n1 0\n").is_err());
        let dir = tempfile::tempdir().unwrap();
        c.save(dir.path()).unwrap();
        assert_eq!(EpochCache::load(dir.path()).unwrap(), c);
    }
}

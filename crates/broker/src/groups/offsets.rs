//! Durable committed offsets: an in-memory image, a journal of changes and a
//! snapshot, in the metadata directory.
//!
//! In a cluster the journal is this broker's cache: every change is first
//! made durable through an [`OffsetReplicator`] (the group's partition of the
//! replicated `__consumer_offsets` topic), so a coordinator that takes over a
//! group rebuilds it from that partition ([`OffsetStore::replace_groups`]).
//!
//! # Crash consistency
//! - A change is durable when [`OffsetStore::apply`] returns: its journal
//!   frame (length, CRC-32C, JSON) is written and fsynced first.
//! - Opening loads `offsets.json` (the snapshot), then replays `offsets.journal`
//!   up to its first torn or corrupt frame, where the journal is cut.
//! - Compaction writes a new snapshot (temp file, fsync, rename, fsync of the
//!   directory) and only then empties the journal. A crash in between replays
//!   journal entries the snapshot already holds; replay is idempotent.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// A committed offset, as OffsetCommit carried it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedOffset {
    /// The next offset to consume.
    pub offset: i64,
    /// Leader epoch of the last consumed record, or -1.
    pub leader_epoch: i32,
    /// Client metadata.
    pub metadata: String,
    /// When it was committed (ms since the epoch).
    pub commit_timestamp: i64,
}

/// What is kept of a group across restarts besides its offsets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    /// The last generation, so a restarted coordinator continues above it.
    pub generation: i32,
    /// `consumer`, or empty for a group that only stores offsets.
    pub protocol_type: String,
}

/// A group's durable state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupOffsets {
    /// Generation and protocol type.
    pub record: GroupRecord,
    /// Committed offsets by topic, then partition.
    pub offsets: BTreeMap<String, BTreeMap<i32, CommittedOffset>>,
}

/// Everything the store holds (also the snapshot's format).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetsImage {
    /// Format version.
    pub version: u32,
    /// Groups by id.
    pub groups: BTreeMap<String, GroupOffsets>,
}

/// One change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum OffsetChange {
    /// An offset committed.
    Commit {
        /// Group id.
        group: String,
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// The offset.
        value: CommittedOffset,
    },
    /// An offset removed (OffsetDelete, expiration).
    Delete {
        /// Group id.
        group: String,
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
    },
    /// A group's generation or protocol type changed.
    Group {
        /// Group id.
        group: String,
        /// The new record.
        record: GroupRecord,
    },
    /// A group and all its offsets removed (DeleteGroups).
    DeleteGroup {
        /// Group id.
        group: String,
    },
    /// A topic's offsets removed from every group (the topic was deleted).
    DeleteTopic {
        /// Topic.
        topic: String,
    },
}

impl OffsetsImage {
    /// Applies a change.
    pub fn apply(&mut self, change: &OffsetChange) {
        match change {
            OffsetChange::Commit {
                group,
                topic,
                partition,
                value,
            } => {
                self.groups
                    .entry(group.clone())
                    .or_default()
                    .offsets
                    .entry(topic.clone())
                    .or_default()
                    .insert(*partition, value.clone());
            }
            OffsetChange::Delete {
                group,
                topic,
                partition,
            } => {
                if let Some(g) = self.groups.get_mut(group) {
                    if let Some(t) = g.offsets.get_mut(topic) {
                        t.remove(partition);
                        if t.is_empty() {
                            g.offsets.remove(topic);
                        }
                    }
                }
            }
            OffsetChange::Group { group, record } => {
                self.groups.entry(group.clone()).or_default().record = record.clone();
            }
            OffsetChange::DeleteGroup { group } => {
                self.groups.remove(group);
            }
            OffsetChange::DeleteTopic { topic } => {
                for g in self.groups.values_mut() {
                    g.offsets.remove(topic);
                }
            }
        }
    }

    /// A committed offset.
    pub fn get(&self, group: &str, topic: &str, partition: i32) -> Option<&CommittedOffset> {
        self.groups.get(group)?.offsets.get(topic)?.get(&partition)
    }
}

/// Errors of the offset store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OffsetStoreError {
    /// Reading or writing failed.
    #[error("offset store i/o at {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The snapshot does not parse.
    #[error("offset store snapshot {path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// The replicated copy could not be written (this broker no longer
    /// coordinates the group, or its replicas did not confirm in time).
    #[error("offsets not replicated: {0}")]
    Replication(String),
}

/// Makes offset changes durable beyond this broker before they apply.
pub trait OffsetReplicator: Send + Sync {
    /// Writes `changes` durably where every in-sync replica has them.
    /// Blocking.
    fn replicate(&self, changes: &[OffsetChange]) -> Result<(), String>;
}

const IMAGE_VERSION: u32 = 1;
const FRAME_HEADER: usize = 8;
/// Journal size above which it is folded into a new snapshot.
const COMPACT_AT_BYTES: u64 = 8 << 20;

struct Inner {
    image: OffsetsImage,
    journal: File,
    journal_len: u64,
}

/// The durable offset store.
pub struct OffsetStore {
    dir: PathBuf,
    inner: Mutex<Inner>,
    replicator: std::sync::RwLock<Option<std::sync::Arc<dyn OffsetReplicator>>>,
}

impl std::fmt::Debug for OffsetStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OffsetStore")
            .field("dir", &self.dir)
            .finish()
    }
}

impl OffsetStore {
    /// Opens the store in `dir`, recovering the journal.
    pub fn open(dir: &Path) -> Result<Self, OffsetStoreError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| OffsetStoreError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let snapshot_path = dir.join("offsets.json");
        let _ = std::fs::remove_file(dir.join("offsets.json.tmp"));
        let mut image = match std::fs::read(&snapshot_path) {
            Ok(bytes) => serde_json::from_slice::<OffsetsImage>(&bytes).map_err(|e| {
                OffsetStoreError::Corrupt {
                    path: snapshot_path.clone(),
                    reason: e.to_string(),
                }
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => OffsetsImage {
                version: IMAGE_VERSION,
                groups: BTreeMap::new(),
            },
            Err(e) => return Err(io(&snapshot_path)(e)),
        };
        let journal_path = dir.join("offsets.journal");
        let mut journal = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&journal_path)
            .map_err(io(&journal_path))?;
        let mut bytes = Vec::new();
        journal.read_to_end(&mut bytes).map_err(io(&journal_path))?;
        let (changes, valid) = parse_frames(&bytes);
        for c in &changes {
            image.apply(c);
        }
        if valid < bytes.len() {
            warn!(
                journal = %journal_path.display(),
                valid_bytes = valid,
                file_bytes = bytes.len(),
                "cutting torn offset journal tail"
            );
            journal.set_len(valid as u64).map_err(io(&journal_path))?;
            journal.sync_all().map_err(io(&journal_path))?;
        }
        info!(
            groups = image.groups.len(),
            replayed = changes.len(),
            "committed offsets loaded"
        );
        Ok(Self {
            dir: dir.to_path_buf(),
            inner: Mutex::new(Inner {
                image,
                journal,
                journal_len: valid as u64,
            }),
            replicator: std::sync::RwLock::new(None),
        })
    }

    /// Routes every later change through `replicator` first (a cluster).
    pub fn set_replicator(&self, replicator: std::sync::Arc<dyn OffsetReplicator>) {
        *self.replicator.write().expect("replicator lock") = Some(replicator);
    }

    /// Replaces every group matching `owned` with the groups `changes`
    /// build (a coordinator loading its partition of `__consumer_offsets`),
    /// locally only. Blocking.
    pub fn replace_groups(
        &self,
        owned: impl Fn(&str) -> bool,
        changes: &[OffsetChange],
    ) -> Result<(), OffsetStoreError> {
        let stale: Vec<OffsetChange> = self.read(|img| {
            img.groups
                .keys()
                .filter(|g| owned(g))
                .map(|g| OffsetChange::DeleteGroup { group: g.clone() })
                .collect()
        });
        self.apply_local(&stale)?;
        self.apply_local(changes)
    }

    /// A copy of the whole image.
    pub fn image(&self) -> OffsetsImage {
        self.inner.lock().expect("offset store lock").image.clone()
    }

    /// Runs `f` on the image.
    pub fn read<T>(&self, f: impl FnOnce(&OffsetsImage) -> T) -> T {
        f(&self.inner.lock().expect("offset store lock").image)
    }

    /// Makes `changes` durable (replicated first, in a cluster), then
    /// visible. Blocking (fsync).
    pub fn apply(&self, changes: &[OffsetChange]) -> Result<(), OffsetStoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let replicator = self.replicator.read().expect("replicator lock").clone();
        if let Some(r) = replicator {
            r.replicate(changes)
                .map_err(OffsetStoreError::Replication)?;
        }
        self.apply_local(changes)
    }

    /// Makes `changes` durable in this broker's journal, then visible.
    /// Blocking (fsync).
    pub fn apply_local(&self, changes: &[OffsetChange]) -> Result<(), OffsetStoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut frames = Vec::new();
        for c in changes {
            let payload = serde_json::to_vec(c).expect("offset change serializes");
            frames.extend((payload.len() as u32).to_be_bytes());
            frames.extend(crc32c::crc32c(&payload).to_be_bytes());
            frames.extend(payload);
        }
        let journal_path = self.dir.join("offsets.journal");
        let err = |source| OffsetStoreError::Io {
            path: journal_path.clone(),
            source,
        };
        let mut inner = self.inner.lock().expect("offset store lock");
        if let Err(e) = inner
            .journal
            .write_all(&frames)
            .and_then(|()| inner.journal.sync_data())
        {
            // Leave no partial frame behind for the next append.
            let len = inner.journal_len;
            let _ = inner.journal.set_len(len);
            return Err(err(e));
        }
        inner.journal_len += frames.len() as u64;
        for c in changes {
            inner.image.apply(c);
        }
        if inner.journal_len >= COMPACT_AT_BYTES {
            self.compact(&mut inner)?;
        }
        Ok(())
    }

    /// Folds the journal into a new snapshot. Blocking.
    pub fn checkpoint(&self) -> Result<(), OffsetStoreError> {
        let mut inner = self.inner.lock().expect("offset store lock");
        self.compact(&mut inner)
    }

    fn compact(&self, inner: &mut Inner) -> Result<(), OffsetStoreError> {
        let path = self.dir.join("offsets.json");
        let tmp = self.dir.join("offsets.json.tmp");
        let err = |p: &Path| {
            let p = p.to_path_buf();
            move |source| OffsetStoreError::Io { path: p, source }
        };
        let bytes = serde_json::to_vec(&inner.image).expect("offsets image serializes");
        let mut f = File::create(&tmp).map_err(err(&tmp))?;
        f.write_all(&bytes).map_err(err(&tmp))?;
        f.sync_all().map_err(err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(err(&path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(err(&self.dir))?;
        inner.journal.set_len(0).map_err(err(&path))?;
        inner.journal.sync_all().map_err(err(&path))?;
        inner.journal_len = 0;
        Ok(())
    }
}

/// Parses whole, valid frames from the front; returns them and the bytes used.
fn parse_frames(bytes: &[u8]) -> (Vec<OffsetChange>, usize) {
    let mut out = Vec::new();
    let mut pos = 0;
    while bytes.len() - pos >= FRAME_HEADER {
        let len = u32::from_be_bytes(bytes[pos..pos + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_be_bytes(bytes[pos + 4..pos + 8].try_into().expect("4 bytes"));
        let Some(payload) = bytes.get(pos + FRAME_HEADER..pos + FRAME_HEADER + len) else {
            break;
        };
        if crc32c::crc32c(payload) != crc {
            break;
        }
        let Ok(change) = serde_json::from_slice::<OffsetChange>(payload) else {
            break;
        };
        out.push(change);
        pos += FRAME_HEADER + len;
    }
    (out, pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(group: &str, partition: i32, offset: i64) -> OffsetChange {
        OffsetChange::Commit {
            group: group.into(),
            topic: "t".into(),
            partition,
            value: CommittedOffset {
                offset,
                leader_epoch: 3,
                metadata: format!("m{offset}"),
                commit_timestamp: 1000 + offset,
            },
        }
    }

    #[test]
    fn commits_survive_reopen_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let store = OffsetStore::open(dir.path()).unwrap();
        store
            .apply(&[commit("g", 0, 10), commit("g", 1, 20)])
            .unwrap();
        store
            .apply(&[OffsetChange::Group {
                group: "g".into(),
                record: GroupRecord {
                    generation: 7,
                    protocol_type: "consumer".into(),
                },
            }])
            .unwrap();
        store.checkpoint().unwrap();
        store
            .apply(&[commit("g", 0, 11), commit("h", 0, 5)])
            .unwrap();
        store
            .apply(&[OffsetChange::DeleteGroup { group: "h".into() }])
            .unwrap();
        let expected = store.image();
        drop(store);
        let store = OffsetStore::open(dir.path()).unwrap();
        assert_eq!(store.image(), expected);
        assert_eq!(store.read(|i| i.get("g", "t", 0).unwrap().offset), 11);
        assert_eq!(store.read(|i| i.groups["g"].record.generation), 7);
        assert!(store.read(|i| !i.groups.contains_key("h")));
    }

    #[test]
    fn a_torn_journal_tail_is_cut_at_the_last_whole_frame() {
        let dir = tempfile::tempdir().unwrap();
        let store = OffsetStore::open(dir.path()).unwrap();
        for i in 0..5 {
            store.apply(&[commit("g", 0, i)]).unwrap();
        }
        drop(store);
        let path = dir.path().join("offsets.journal");
        let full = std::fs::read(&path).unwrap();
        let (_, four) = parse_frames(&full[..full.len() - 1]);
        for cut in four..full.len() {
            std::fs::write(&path, &full[..cut]).unwrap();
            let store = OffsetStore::open(dir.path()).unwrap();
            assert_eq!(
                store.read(|i| i.get("g", "t", 0).unwrap().offset),
                3,
                "cut at {cut}"
            );
            // New commits land after the valid prefix and survive.
            store.apply(&[commit("g", 0, 9)]).unwrap();
            drop(store);
            let store = OffsetStore::open(dir.path()).unwrap();
            assert_eq!(store.read(|i| i.get("g", "t", 0).unwrap().offset), 9);
            drop(store);
            std::fs::write(&path, &full).unwrap();
        }
    }

    #[test]
    fn deleting_a_topic_removes_its_offsets_from_every_group() {
        let mut image = OffsetsImage::default();
        image.apply(&commit("a", 0, 1));
        image.apply(&commit("b", 0, 1));
        image.apply(&OffsetChange::DeleteTopic { topic: "t".into() });
        assert!(image.get("a", "t", 0).is_none() && image.get("b", "t", 0).is_none());
        assert!(image.groups.contains_key("a"), "the group itself stays");
    }
}

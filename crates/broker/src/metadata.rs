//! Durable cluster metadata: the cluster id, topics with their ids, partition
//! counts and config overrides.
//!
//! On one broker a local file serves ([`FileMetadataStore`]); the trait is what
//! a replicated (Raft) store implements when Strata runs as a cluster. Every
//! mutation is durable when the call returns: the file is written to a temp
//! name, fsynced, renamed over the old one, and the directory fsynced, so a
//! crash leaves either the old or the new image.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A topic as the metadata store records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRecord {
    /// Topic name.
    pub name: String,
    /// Given at creation; a topic deleted and created again gets a new one.
    pub id: Uuid,
    /// Partition count.
    pub partitions: i32,
    /// Leader epoch of each partition (one broker: bumped never, kept for the model).
    #[serde(default)]
    pub leader_epochs: Vec<i32>,
    /// Config overrides under Kafka's names.
    pub configs: BTreeMap<String, String>,
}

/// Everything the store holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataImage {
    /// Format version of this image.
    pub version: u32,
    /// Cluster id, generated on first start.
    pub cluster_id: String,
    /// Topics by name.
    pub topics: BTreeMap<String, TopicRecord>,
    /// Producer ids below this have been handed out.
    #[serde(default)]
    pub next_producer_id: i64,
}

/// Errors of the metadata store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    /// Reading or writing the store failed.
    #[error("metadata store i/o at {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The stored image does not parse.
    #[error("metadata store at {path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
}

/// Durable metadata. Writes are durable when they return.
pub trait MetadataStore: Send + Sync + std::fmt::Debug {
    /// The current image.
    fn image(&self) -> MetadataImage;
    /// Creates or replaces a topic.
    fn put_topic(&self, topic: TopicRecord) -> Result<(), MetadataError>;
    /// Removes a topic.
    fn delete_topic(&self, name: &str) -> Result<(), MetadataError>;
    /// Reserves `count` producer ids, durably; returns the first.
    fn allocate_producer_ids(&self, count: i64) -> Result<i64, MetadataError>;
}

const IMAGE_VERSION: u32 = 1;

/// The single-broker store: one JSON file.
#[derive(Debug)]
pub struct FileMetadataStore {
    path: PathBuf,
    image: Mutex<MetadataImage>,
}

impl FileMetadataStore {
    /// Opens the store in `dir`, creating it (with a new cluster id) if absent.
    pub fn open(dir: &Path) -> Result<Self, MetadataError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| MetadataError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join("metadata.json");
        let _ = std::fs::remove_file(dir.join("metadata.json.tmp"));
        let image = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<MetadataImage>(&bytes).map_err(|e| {
                MetadataError::Corrupt {
                    path: path.clone(),
                    reason: e.to_string(),
                }
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => MetadataImage {
                version: IMAGE_VERSION,
                cluster_id: new_cluster_id(),
                topics: BTreeMap::new(),
                next_producer_id: 0,
            },
            Err(e) => return Err(io(&path)(e)),
        };
        let store = Self {
            path,
            image: Mutex::new(image),
        };
        let image = store.image();
        store.persist(&image)?;
        Ok(store)
    }

    fn persist(&self, image: &MetadataImage) -> Result<(), MetadataError> {
        let tmp = self.path.with_extension("json.tmp");
        let err = |source| MetadataError::Io {
            path: self.path.clone(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(image).expect("image serializes");
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(&bytes).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &self.path).map_err(err)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(err)?;
        }
        Ok(())
    }

    fn update(&self, f: impl FnOnce(&mut MetadataImage)) -> Result<(), MetadataError> {
        let mut guard = self.image.lock().expect("metadata lock");
        let mut next = guard.clone();
        f(&mut next);
        self.persist(&next)?;
        *guard = next;
        Ok(())
    }
}

impl MetadataStore for FileMetadataStore {
    fn image(&self) -> MetadataImage {
        self.image.lock().expect("metadata lock").clone()
    }

    fn put_topic(&self, topic: TopicRecord) -> Result<(), MetadataError> {
        self.update(|img| {
            img.topics.insert(topic.name.clone(), topic);
        })
    }

    fn delete_topic(&self, name: &str) -> Result<(), MetadataError> {
        self.update(|img| {
            img.topics.remove(name);
        })
    }

    fn allocate_producer_ids(&self, count: i64) -> Result<i64, MetadataError> {
        let mut first = 0;
        self.update(|img| {
            first = img.next_producer_id;
            img.next_producer_id += count;
        })?;
        Ok(first)
    }
}

/// A cluster id in Kafka's form: 16 random bytes, URL-safe base64 without padding.
fn new_cluster_id() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bits = Uuid::new_v4().as_u128();
    (0..22)
        .map(|i| ALPHABET[((bits >> (i * 6)) & 63) as usize] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_and_cluster_id_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileMetadataStore::open(dir.path()).unwrap();
        let cluster = store.image().cluster_id;
        assert_eq!(cluster.len(), 22);
        let t = TopicRecord {
            name: "orders".into(),
            id: Uuid::new_v4(),
            partitions: 3,
            leader_epochs: vec![0; 3],
            configs: [("retention.ms".to_string(), "1000".to_string())].into(),
        };
        store.put_topic(t.clone()).unwrap();
        store
            .put_topic(TopicRecord {
                name: "gone".into(),
                ..t.clone()
            })
            .unwrap();
        store.delete_topic("gone").unwrap();
        drop(store);
        let store = FileMetadataStore::open(dir.path()).unwrap();
        let img = store.image();
        assert_eq!(img.cluster_id, cluster);
        assert_eq!(img.topics.len(), 1);
        assert_eq!(img.topics["orders"], t);
    }

    #[test]
    fn producer_id_blocks_never_repeat_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileMetadataStore::open(dir.path()).unwrap();
        assert_eq!(store.allocate_producer_ids(1000).unwrap(), 0);
        assert_eq!(store.allocate_producer_ids(1000).unwrap(), 1000);
        drop(store);
        let store = FileMetadataStore::open(dir.path()).unwrap();
        assert_eq!(store.allocate_producer_ids(10).unwrap(), 2000);
    }

    #[test]
    fn version_one_images_keep_parsing() {
        let v1 = r#"{"version":1,"cluster_id":"abc","topics":{"t":{"name":"t",
            "id":"8d5d3b8e-2b4f-4c8e-9d7e-3f1a2b3c4d5e","partitions":2,"configs":{}}}}"#;
        let img: MetadataImage = serde_json::from_str(v1).unwrap();
        assert_eq!(img.topics["t"].partitions, 2);
        assert!(img.topics["t"].leader_epochs.is_empty());
    }

    #[test]
    fn corrupt_store_is_an_error_not_an_empty_cluster() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("metadata.json"), b"{not json").unwrap();
        assert!(matches!(
            FileMetadataStore::open(dir.path()),
            Err(MetadataError::Corrupt { .. })
        ));
    }
}

//! The single broker's metadata store: one JSON file.
//!
//! The broker is the cluster's only member, its controller, and the leader
//! of every partition; its session never expires. Every commit is durable
//! when it returns: the file is written to a temp name, fsynced, renamed
//! over the old one, and the directory fsynced, so a crash leaves either the
//! old or the new image.
//!
//! Format version 1 (before the cluster model) kept topics with a list of
//! leader epochs; it is read and rewritten as version 2.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use futures::FutureExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use uuid::Uuid;

use crate::model::{
    new_cluster_id, BrokerId, BrokerRegistration, ClusterImage, ControllerInfo, Expect, Fence,
    MetaOp, PartitionState, SecurityImage, TopicPartition, TopicRecord, Versioned,
};
use crate::store::{MetadataStore, Result, Session, StoreError};

const FORMAT_VERSION: u32 = 2;
/// The single broker's epoch; constant, since nobody else can take its place.
pub const SINGLE_BROKER_EPOCH: i64 = 1;

/// A topic as the file holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct FileTopic {
    name: String,
    id: Uuid,
    partitions: i32,
    configs: BTreeMap<String, String>,
    /// Version 1 only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    leader_epochs: Vec<i32>,
    #[serde(default)]
    states: Vec<PartitionState>,
}

/// The file's contents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileImage {
    version: u32,
    cluster_id: String,
    topics: BTreeMap<String, FileTopic>,
    #[serde(default)]
    next_producer_id: i64,
    #[serde(default)]
    revision: i64,
    #[serde(default)]
    security: SecurityImage,
}

impl FileImage {
    /// Parses the file's bytes (any format version).
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let img: FileImage =
            serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        if img.version > FORMAT_VERSION {
            return Err(StoreError::Corrupt(format!(
                "metadata format {} is newer than this broker understands ({FORMAT_VERSION})",
                img.version
            )));
        }
        Ok(img)
    }

    /// The cluster id.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// Topics held.
    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }

    /// Producer ids below this were handed out.
    pub fn next_producer_id(&self) -> i64 {
        self.next_producer_id
    }

    /// Moves the producer id counter forward by `by`.
    pub fn skip_producer_ids(&mut self, by: i64) {
        self.next_producer_id += by;
    }

    /// Serializes the image.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("image serializes")
    }

    /// Brings every topic to version 2 with `broker` as its only replica and
    /// leader (a single broker owns everything, whatever its id was).
    fn normalize(&mut self, broker: BrokerId) {
        self.version = FORMAT_VERSION;
        for t in self.topics.values_mut() {
            let epochs = std::mem::take(&mut t.leader_epochs);
            let old = std::mem::take(&mut t.states);
            t.states = (0..t.partitions as usize)
                .map(|i| {
                    let prev = old.get(i);
                    PartitionState {
                        replicas: vec![broker],
                        isr: vec![broker],
                        leader: broker,
                        leader_epoch: prev
                            .map(|s| s.leader_epoch)
                            .or_else(|| epochs.get(i).copied())
                            .unwrap_or(0),
                        leader_broker_epoch: SINGLE_BROKER_EPOCH,
                        partition_epoch: prev.map_or(0, |s| s.partition_epoch),
                        adding_replicas: Vec::new(),
                        removing_replicas: Vec::new(),
                    }
                })
                .collect();
        }
    }

    fn to_cluster(&self, me: &BrokerRegistration) -> ClusterImage {
        let mut partitions = HashMap::new();
        let mut topics = BTreeMap::new();
        for t in self.topics.values() {
            for (i, s) in t.states.iter().enumerate() {
                partitions.insert(
                    TopicPartition {
                        topic_id: t.id,
                        index: i as i32,
                    },
                    Versioned {
                        value: s.clone(),
                        revision: self.revision,
                    },
                );
            }
            topics.insert(
                t.name.clone(),
                TopicRecord {
                    name: t.name.clone(),
                    id: t.id,
                    partitions: t.partitions,
                    configs: t.configs.clone(),
                },
            );
        }
        ClusterImage {
            cluster_id: self.cluster_id.clone(),
            revision: self.revision,
            brokers: [(me.id, me.clone())].into(),
            controller: Some(ControllerInfo {
                broker_id: me.id,
                broker_epoch: SINGLE_BROKER_EPOCH,
                epoch: SINGLE_BROKER_EPOCH,
            }),
            topics,
            partitions,
            security: self.security.clone(),
        }
    }

    /// Applies `ops` (checking each expectation), as of a new revision.
    fn apply(&mut self, ops: &[MetaOp]) -> Result<()> {
        let revision = self.revision;
        for op in ops {
            match op {
                MetaOp::PutTopic { record, create } => {
                    let existing = self.topics.get(&record.name);
                    match (existing, create) {
                        (Some(_), true) => {
                            return Err(StoreError::Conflict(format!(
                                "topic '{}' exists",
                                record.name
                            )))
                        }
                        (Some(t), false) if t.id != record.id => {
                            return Err(StoreError::Conflict(format!(
                                "topic '{}' is another incarnation",
                                record.name
                            )))
                        }
                        (None, false) => {
                            return Err(StoreError::Conflict(format!(
                                "topic '{}' does not exist",
                                record.name
                            )))
                        }
                        _ => {}
                    }
                    let states = existing.map(|t| t.states.clone()).unwrap_or_default();
                    self.topics.insert(
                        record.name.clone(),
                        FileTopic {
                            name: record.name.clone(),
                            id: record.id,
                            partitions: record.partitions,
                            configs: record.configs.clone(),
                            leader_epochs: Vec::new(),
                            states,
                        },
                    );
                }
                MetaOp::DeleteTopic { name, id } => {
                    if self.topics.get(name).is_some_and(|t| t.id == *id) {
                        self.topics.remove(name);
                    }
                }
                MetaOp::PutPartition {
                    partition,
                    state,
                    expect,
                } => {
                    let t = self
                        .topics
                        .values_mut()
                        .find(|t| t.id == partition.topic_id)
                        .ok_or_else(|| {
                            StoreError::Conflict(format!("no topic has id {}", partition.topic_id))
                        })?;
                    let i = partition.index as usize;
                    let exists = i < t.states.len();
                    match expect {
                        Expect::Absent if exists => {
                            return Err(StoreError::Conflict(format!(
                                "partition {} of '{}' exists",
                                i, t.name
                            )))
                        }
                        Expect::Revision(r) if !exists || *r != revision => {
                            return Err(StoreError::Conflict(format!(
                                "partition {} of '{}' changed",
                                i, t.name
                            )))
                        }
                        _ => {}
                    }
                    if i > t.states.len() {
                        return Err(StoreError::Conflict(format!(
                            "partition {i} of '{}' created out of order",
                            t.name
                        )));
                    }
                    if exists {
                        t.states[i] = state.clone();
                    } else {
                        t.states.push(state.clone());
                    }
                }
                MetaOp::PutScram { .. }
                | MetaOp::DeleteScram { .. }
                | MetaOp::PutAcl { .. }
                | MetaOp::DeleteAcl { .. } => self.security.apply(op),
            }
        }
        self.revision += 1;
        Ok(())
    }
}

/// The single broker's store.
#[derive(Debug)]
pub struct FileStore {
    inner: Arc<Inner>,
    session: Arc<Session>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    me: BrokerRegistration,
    file: Mutex<FileImage>,
    image: watch::Sender<Arc<ClusterImage>>,
}

impl FileStore {
    /// Opens the store in `dir` for broker `me`, creating it (with a new
    /// cluster id) if absent.
    pub fn open(dir: &Path, mut me: BrokerRegistration) -> Result<Self> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join("metadata.json");
        let _ = std::fs::remove_file(dir.join("metadata.json.tmp"));
        let mut file = match std::fs::read(&path) {
            Ok(bytes) => FileImage::parse(&bytes)
                .map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => FileImage {
                version: FORMAT_VERSION,
                cluster_id: new_cluster_id(),
                ..Default::default()
            },
            Err(e) => return Err(io(&path)(e)),
        };
        file.normalize(me.id);
        me.epoch = SINGLE_BROKER_EPOCH;
        let inner = Inner {
            image: watch::Sender::new(Arc::new(file.to_cluster(&me))),
            path,
            file: Mutex::new(file.clone()),
            me,
        };
        inner.persist(&file)?;
        Ok(Self {
            session: Session::permanent(inner.me.id, SINGLE_BROKER_EPOCH),
            inner: Arc::new(inner),
        })
    }

    /// The file's current contents (snapshots to the object tier).
    pub fn file_image(&self) -> FileImage {
        self.inner.file.lock().expect("metadata lock").clone()
    }

    /// Runs a change on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut FileImage) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.update(f))
            .await
            .map_err(|e| StoreError::Unavailable(format!("metadata task failed: {e}")))?
    }
}

impl Inner {
    fn persist(&self, image: &FileImage) -> Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let err = |source| StoreError::Io {
            path: self.path.clone(),
            source,
        };
        // Owner-only: the file holds salted SCRAM credentials.
        let mut f = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(err)?
        };
        f.write_all(&image.to_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &self.path).map_err(err)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(err)?;
        }
        Ok(())
    }

    /// Applies a change to the file and publishes the new image. Blocking.
    fn update<T>(&self, f: impl FnOnce(&mut FileImage) -> Result<T>) -> Result<T> {
        let mut guard = self.file.lock().expect("metadata lock");
        let mut next = guard.clone();
        let out = f(&mut next)?;
        self.persist(&next)?;
        self.image.send_replace(Arc::new(next.to_cluster(&self.me)));
        *guard = next;
        Ok(out)
    }
}

impl MetadataStore for FileStore {
    fn subscribe(&self) -> watch::Receiver<Arc<ClusterImage>> {
        self.inner.image.subscribe()
    }

    fn fresh_image(&self) -> BoxFuture<'_, Result<Arc<ClusterImage>>> {
        let img = self.inner.image.borrow().clone();
        async move { Ok(img) }.boxed()
    }

    fn session(&self) -> &Arc<Session> {
        &self.session
    }

    fn commit(&self, _fence: Fence, ops: Vec<MetaOp>) -> BoxFuture<'_, Result<i64>> {
        async move {
            self.blocking(move |img| {
                img.apply(&ops)?;
                Ok(img.revision)
            })
            .await
        }
        .boxed()
    }

    fn allocate_producer_ids(&self, count: i64) -> BoxFuture<'_, Result<i64>> {
        async move {
            self.blocking(move |img| {
                let first = img.next_producer_id;
                img.next_producer_id += count;
                Ok(first)
            })
            .await
        }
        .boxed()
    }

    fn begin_shutdown(&self) -> BoxFuture<'_, Result<()>> {
        async { Ok(()) }.boxed()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        async {}.boxed()
    }

    fn describe(&self) -> String {
        format!("file {}", self.inner.path.display())
    }

    fn is_cluster(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me(id: BrokerId) -> BrokerRegistration {
        BrokerRegistration {
            id,
            host: "127.0.0.1".into(),
            port: 9092,
            rack: None,
            http: String::new(),
            incarnation: Uuid::nil(),
            shutting_down: false,
            listeners: Default::default(),
            epoch: 0,
        }
    }

    #[test]
    fn version_one_images_keep_parsing_and_keep_their_epochs() {
        let v1 = r#"{"version":1,"cluster_id":"abc","next_producer_id":3000,"topics":{"t":{"name":"t",
            "id":"8d5d3b8e-2b4f-4c8e-9d7e-3f1a2b3c4d5e","partitions":2,"leader_epochs":[4,0],"configs":{}}}}"#;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("metadata.json"), v1).unwrap();
        let store = FileStore::open(dir.path(), me(7)).unwrap();
        let img = store.image();
        assert_eq!(img.cluster_id, "abc");
        let t = &img.topics["t"];
        assert_eq!(t.partitions, 2);
        let p0 = &img.partition(t.id, 0).unwrap().value;
        assert_eq!(
            (p0.leader, p0.leader_epoch, p0.replicas.clone()),
            (7, 4, vec![7])
        );
        assert!(img.leader_is_current(p0));
        assert_eq!(store.file_image().next_producer_id(), 3000);
    }

    #[test]
    fn corrupt_store_is_an_error_not_an_empty_cluster() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("metadata.json"), b"{not json").unwrap();
        assert!(matches!(
            FileStore::open(dir.path(), me(0)),
            Err(StoreError::Corrupt(_))
        ));
    }
}

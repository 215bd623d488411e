//! The one door to the object store: every call goes through [`Remote`],
//! which bounds it with a timeout, counts it per operation and per topic, and
//! turns errors into [`Error`]s that say whether a retry can help.

use std::collections::HashMap;
use std::future::Future;
use std::ops::Range;
use std::path::Path as FsPath;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion,
    WriteMultipart,
};
use tokio::io::AsyncReadExt;

use crate::keys;
use crate::{Error, Result};

/// Size of the parts of a multipart upload (S3 needs at least 5 MiB).
const PART_BYTES: usize = 8 << 20;

/// Object-store operations, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// GET (whole or ranged).
    Get,
    /// PUT (single or multipart).
    Put,
    /// DELETE.
    Delete,
    /// LIST.
    List,
    /// HEAD.
    Head,
}

impl Op {
    /// Lowercase name, for metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Put => "put",
            Op::Delete => "delete",
            Op::List => "list",
            Op::Head => "head",
        }
    }
    const ALL: [Op; 5] = [Op::Get, Op::Put, Op::Delete, Op::List, Op::Head];
}

/// Counters of one operation.
#[derive(Debug, Default)]
pub struct OpCounters {
    /// Calls made.
    pub requests: AtomicU64,
    /// Calls that failed (including timeouts).
    pub errors: AtomicU64,
    /// Bytes sent (PUT) or received (GET).
    pub bytes: AtomicU64,
    /// Sum of call durations, microseconds.
    pub latency_us: AtomicU64,
}

/// A snapshot of [`OpCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpStats {
    /// Calls made.
    pub requests: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Bytes moved.
    pub bytes: u64,
    /// Sum of call durations, microseconds.
    pub latency_us: u64,
}

impl OpCounters {
    fn snapshot(&self) -> OpStats {
        OpStats {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            latency_us: self.latency_us.load(Ordering::Relaxed),
        }
    }
}

type OpTable = [OpCounters; 5];

fn slot(op: Op) -> usize {
    Op::ALL.iter().position(|o| *o == op).expect("listed")
}

/// Whether the store honours conditional puts (learned at start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionalPuts {
    /// `If-Match` / `If-None-Match` are enforced: manifests are committed
    /// with a compare-and-swap.
    Enforced,
    /// The store ignores or lacks them: manifests are overwritten, which is
    /// safe only while one broker writes each partition (Strata's model).
    Unavailable,
}

/// The object store behind timeouts and counters.
pub struct Remote {
    store: Arc<dyn ObjectStore>,
    timeout: Duration,
    conditional: Mutex<ConditionalPuts>,
    totals: OpTable,
    per_topic: Mutex<HashMap<String, Arc<OpTable>>>,
    description: String,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("store", &self.description)
            .finish()
    }
}

impl Remote {
    /// Wraps `store`; `description` says where it is (for logs and status).
    pub fn new(store: Arc<dyn ObjectStore>, timeout: Duration, description: String) -> Self {
        Self {
            store,
            timeout,
            conditional: Mutex::new(ConditionalPuts::Enforced),
            totals: Default::default(),
            per_topic: Mutex::new(HashMap::new()),
            description,
        }
    }

    /// Where the store is.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Whether manifest commits are compare-and-swap.
    pub fn conditional_puts(&self) -> ConditionalPuts {
        *self.conditional.lock().expect("conditional lock")
    }

    /// Records what the start-up probe found.
    pub fn set_conditional_puts(&self, c: ConditionalPuts) {
        *self.conditional.lock().expect("conditional lock") = c;
    }

    /// Totals per operation.
    pub fn totals(&self) -> Vec<(Op, OpStats)> {
        Op::ALL
            .iter()
            .map(|op| (*op, self.totals[slot(*op)].snapshot()))
            .collect()
    }

    /// Counts per topic and operation.
    pub fn per_topic(&self) -> Vec<(String, Op, OpStats)> {
        let map = self.per_topic.lock().expect("per-topic lock");
        let mut out: Vec<_> = map
            .iter()
            .flat_map(|(t, table)| {
                Op::ALL
                    .iter()
                    .map(move |op| (t.clone(), *op, table[slot(*op)].snapshot()))
            })
            .collect();
        out.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        out
    }

    fn topic_table(&self, key: &str) -> Option<Arc<OpTable>> {
        let (topic, _) = keys::topic_of(key)?;
        let mut map = self.per_topic.lock().expect("per-topic lock");
        Some(map.entry(topic.to_string()).or_default().clone())
    }

    async fn call<T>(
        &self,
        op: Op,
        key: &Path,
        f: impl Future<Output = object_store::Result<T>>,
        bytes: impl FnOnce(&T) -> u64,
    ) -> Result<T> {
        let started = Instant::now();
        let outcome = tokio::time::timeout(self.timeout, f).await;
        let elapsed = started.elapsed().as_micros() as u64;
        metrics::histogram!("strata_object_store_request_duration_seconds", "op" => op.name())
            .record(elapsed as f64 / 1e6);
        let table = self.topic_table(key.as_ref());
        let tables: Vec<&OpCounters> = std::iter::once(&self.totals[slot(op)])
            .chain(table.as_ref().map(|t| &t[slot(op)]))
            .collect();
        for t in &tables {
            t.requests.fetch_add(1, Ordering::Relaxed);
            t.latency_us.fetch_add(elapsed, Ordering::Relaxed);
        }
        let result = match outcome {
            Ok(Ok(v)) => {
                let n = bytes(&v);
                for t in &tables {
                    t.bytes.fetch_add(n, Ordering::Relaxed);
                }
                return Ok(v);
            }
            Ok(Err(source)) => Error::ObjectStore {
                op: op.name(),
                key: key.to_string(),
                source,
            },
            Err(_) => Error::Timeout {
                op: op.name(),
                key: key.to_string(),
                after_ms: self.timeout.as_millis() as u64,
            },
        };
        // A missing object on GET/HEAD is an answer, not a failure of the store.
        let not_found = matches!(
            &result,
            Error::ObjectStore {
                source: object_store::Error::NotFound { .. },
                ..
            }
        );
        if !not_found {
            for t in &tables {
                t.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        Err(result)
    }

    /// Writes `bytes` at `key` (atomic).
    pub async fn put(&self, key: &Path, bytes: Bytes) -> Result<()> {
        let n = bytes.len() as u64;
        self.call(
            Op::Put,
            key,
            self.store.put(key, PutPayload::from(bytes)),
            |_| n,
        )
        .await
        .map(drop)
    }

    /// Writes `bytes` at `key` only if the object is still at `expected`
    /// (`None`: only if it does not exist). Returns the new version.
    /// [`Error::Conflict`] when another writer got there first.
    pub async fn put_if(
        &self,
        key: &Path,
        bytes: Bytes,
        expected: Option<UpdateVersion>,
    ) -> Result<Option<UpdateVersion>> {
        let n = bytes.len() as u64;
        let mode = match (self.conditional_puts(), expected) {
            (ConditionalPuts::Unavailable, _) => PutMode::Overwrite,
            (ConditionalPuts::Enforced, None) => PutMode::Create,
            (ConditionalPuts::Enforced, Some(v)) => PutMode::Update(v),
        };
        let opts = PutOptions {
            mode,
            ..PutOptions::default()
        };
        let r = self
            .call(
                Op::Put,
                key,
                self.store.put_opts(key, PutPayload::from(bytes), opts),
                |_| n,
            )
            .await;
        match r {
            Ok(put) => Ok(Some(UpdateVersion {
                e_tag: put.e_tag,
                version: put.version,
            })),
            Err(Error::ObjectStore {
                source:
                    object_store::Error::Precondition { .. } | object_store::Error::AlreadyExists { .. },
                ..
            }) => Err(Error::Conflict {
                key: key.to_string(),
            }),
            Err(e) => Err(e),
        }
    }

    /// Uploads a local file, in parts when it is large. `throttle` is awaited
    /// with each part's size before it is read (the bandwidth cap).
    pub async fn put_file<F, Fut>(
        &self,
        key: &Path,
        file: &FsPath,
        size: u64,
        throttle: F,
    ) -> Result<()>
    where
        F: Fn(u64) -> Fut,
        Fut: Future<Output = ()>,
    {
        let mut f = tokio::fs::File::open(file).await?;
        if size as usize <= PART_BYTES {
            throttle(size).await;
            let mut buf = Vec::with_capacity(size as usize);
            f.read_to_end(&mut buf).await?;
            if buf.len() as u64 != size {
                return Err(Error::Io(std::io::Error::other(format!(
                    "{} has {} bytes, expected {size}",
                    file.display(),
                    buf.len()
                ))));
            }
            return self.put(key, Bytes::from(buf)).await;
        }
        let upload = self
            .call(Op::Put, key, self.store.put_multipart(key), |_| 0)
            .await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut left = size;
        let mut buf = BytesMut::with_capacity(PART_BYTES);
        let result: Result<()> = async {
            while left > 0 {
                let n = left.min(PART_BYTES as u64) as usize;
                throttle(n as u64).await;
                buf.resize(n, 0);
                f.read_exact(&mut buf).await?;
                self.call(Op::Put, key, writer.wait_for_capacity(2), |_| n as u64)
                    .await?;
                writer.write(&buf);
                left -= n as u64;
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => self
                .call(Op::Put, key, writer.finish(), |_| 0)
                .await
                .map(drop),
            Err(e) => {
                let _ = writer.abort().await;
                Err(e)
            }
        }
    }

    /// Reads a whole object with its version (for conditional updates).
    pub async fn get(&self, key: &Path) -> Result<(Bytes, UpdateVersion)> {
        let store = self.store.clone();
        let k = key.clone();
        self.call(
            Op::Get,
            key,
            async move {
                let r = store.get(&k).await?;
                let version = UpdateVersion {
                    e_tag: r.meta.e_tag.clone(),
                    version: r.meta.version.clone(),
                };
                Ok((r.bytes().await?, version))
            },
            |(b, _)| b.len() as u64,
        )
        .await
    }

    /// Reads a whole object, or `None` if there is none.
    pub async fn get_opt(&self, key: &Path) -> Result<Option<(Bytes, UpdateVersion)>> {
        match self.get(key).await {
            Ok(v) => Ok(Some(v)),
            Err(Error::ObjectStore {
                source: object_store::Error::NotFound { .. },
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads `range` of an object.
    pub async fn get_range(&self, key: &Path, range: Range<u64>) -> Result<Bytes> {
        self.call(Op::Get, key, self.store.get_range(key, range), |b| {
            b.len() as u64
        })
        .await
    }

    /// Object metadata.
    pub async fn head(&self, key: &Path) -> Result<ObjectMeta> {
        self.call(Op::Head, key, self.store.head(key), |_| 0).await
    }

    /// Deletes objects; a missing object is not an error.
    pub async fn delete(&self, keys: &[Path]) -> Result<()> {
        for chunk in keys.chunks(1000) {
            let Some(first) = chunk.first() else {
                continue;
            };
            let owned: Vec<Path> = chunk.to_vec();
            let locations = futures::stream::iter(owned.into_iter().map(Ok)).boxed();
            let store = self.store.clone();
            self.call(
                Op::Delete,
                first,
                async move {
                    let mut results = store.delete_stream(locations);
                    while let Some(r) = results.next().await {
                        match r {
                            Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                            Err(e) => return Err(e),
                        }
                    }
                    Ok(())
                },
                |_| 0,
            )
            .await?;
        }
        Ok(())
    }

    /// Lists objects under `prefix`, after `offset` when given.
    pub async fn list(&self, prefix: &Path, offset: Option<&Path>) -> Result<Vec<ObjectMeta>> {
        let stream = match offset {
            Some(o) => self.store.list_with_offset(Some(prefix), o),
            None => self.store.list(Some(prefix)),
        };
        self.call(Op::List, prefix, stream.try_collect::<Vec<_>>(), |_| 0)
            .await
    }

    /// The "directories" directly under `prefix`.
    pub async fn list_dirs(&self, prefix: &Path) -> Result<Vec<Path>> {
        self.call(
            Op::List,
            prefix,
            self.store.list_with_delimiter(Some(prefix)),
            |_| 0,
        )
        .await
        .map(|r| r.common_prefixes)
    }

    /// The wrapped store (for the lake's Parquet writers).
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }
}

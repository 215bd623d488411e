//! The lake writer: turns closed segments of lake-enabled topics into
//! Parquet files and keeps each partition's progress.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::ObjectStore;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use strata_tier::budget::{spawn_background, ByteRate};
use strata_tier::remote::Remote;
use strata_tier::{PartitionId, Tier};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::records::{self, Row};
use crate::schema::ValueFormat;
use crate::table;

/// `[lake]` settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LakeConfig {
    /// How often the writer looks for closed segments.
    pub interval_ms: u64,
    /// Rows per Parquet row group.
    pub row_group_rows: usize,
    /// `zstd`, `snappy` or `none`.
    pub compression: String,
    /// zstd level (1-22).
    pub zstd_level: i32,
    /// Segment bytes per second the writer may turn into Parquet (0: no cap).
    pub max_bytes_per_second: u64,
}

impl Default for LakeConfig {
    fn default() -> Self {
        Self {
            interval_ms: 1_000,
            row_group_rows: 100_000,
            compression: "zstd".into(),
            zstd_level: 3,
            max_bytes_per_second: 32 << 20,
        }
    }
}

impl LakeConfig {
    /// Checks values that types cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.interval_ms == 0 || self.row_group_rows == 0 {
            return Err("lake.interval_ms and lake.row_group_rows must be > 0".into());
        }
        self.properties().map(drop)
    }

    fn properties(&self) -> Result<WriterProperties, String> {
        let compression = match self.compression.as_str() {
            "zstd" => Compression::ZSTD(
                ZstdLevel::try_new(self.zstd_level).map_err(|e| format!("lake.zstd_level: {e}"))?,
            ),
            "snappy" => Compression::SNAPPY,
            "none" => Compression::UNCOMPRESSED,
            other => {
                return Err(format!(
                    "lake.compression '{other}' is not zstd, snappy or none"
                ))
            }
        };
        Ok(WriterProperties::builder()
            .set_compression(compression)
            .set_max_row_group_row_count(Some(self.row_group_rows))
            .set_created_by(format!("strata {}", env!("CARGO_PKG_VERSION")))
            .build())
    }
}

/// A closed segment the lake may read.
#[derive(Debug, Clone)]
pub struct LakeSegment {
    /// First offset.
    pub base_offset: i64,
    /// Offset after it.
    pub next_offset: i64,
    /// Bytes.
    pub size_bytes: u64,
    /// The local file while it exists; otherwise the object tier's copy is read.
    pub local_path: Option<PathBuf>,
}

/// A partition of a lake-enabled topic.
#[derive(Debug, Clone)]
pub struct LakeSource {
    /// Topic name.
    pub topic: String,
    /// Topic id.
    pub topic_id: Uuid,
    /// Partition.
    pub partition: i32,
    /// How values are typed.
    pub format: Arc<ValueFormat>,
    /// Whether the topic tiers: the lake then follows the object tier's
    /// segments (read locally while the local copy exists).
    pub tiered: bool,
    /// Closed local segments, oldest first.
    pub local_segments: Vec<LakeSegment>,
    /// The partition's log end, for lag.
    pub log_end: i64,
}

/// What the lake needs of the broker.
pub trait LakeHost: Send + Sync {
    /// Partitions of topics with `lake.enable`, after rolling their active
    /// segments that are older than `segment.ms`. Blocking.
    fn lake_sources(&self) -> Vec<LakeSource>;
}

/// A partition's durable progress (`_progress/partition={p}.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Format version.
    pub version: u32,
    /// The topic incarnation the files belong to.
    pub topic_id: Uuid,
    /// Every record below this offset is in the lake's files.
    pub next_offset: i64,
    /// Files written.
    pub files: u64,
    /// Rows written.
    pub rows: u64,
}

/// What the writer reports of a partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PartitionProgress {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Every record below this offset is in the lake.
    pub next_offset: i64,
    /// Records in the log not yet in the lake.
    pub lag: i64,
    /// Files written (all time).
    pub files: u64,
    /// Rows written (all time).
    pub rows: u64,
    /// Values that did not match the schema (since start).
    pub schema_mismatches: u64,
    /// Parquet bytes written (since start).
    pub bytes_written: u64,
    /// The last error, while the partition keeps failing.
    pub last_error: Option<String>,
}

/// The object key of a partition's progress.
pub fn progress_key(topic: &str, partition: i32) -> Path {
    Path::from(format!("lake/{topic}/_progress/partition={partition}.json"))
}

/// The directory of a topic's lake.
pub fn topic_dir(topic: &str) -> Path {
    Path::from(format!("lake/{topic}"))
}

/// The directory of one partition's lake files.
pub fn partition_dir(topic: &str, partition: i32) -> Path {
    Path::from(format!("lake/{topic}/partition={partition}"))
}

/// The object key of one lake file.
pub fn file_key(topic: &str, partition: i32, date: &str, first: i64, last: i64) -> Path {
    Path::from(format!(
        "lake/{topic}/partition={partition}/date={date}/{first:020}-{last:020}.parquet"
    ))
}

/// The first and last offset a lake file's name carries.
pub fn file_offsets(key: &Path) -> Option<(i64, i64)> {
    let name = key.filename()?.strip_suffix(".parquet")?;
    let (a, b) = name.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// The UTC date of a timestamp, `yyyy-mm-dd`.
pub fn date_of(ts_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ts_ms)
        .unwrap_or_default()
        .format("%Y-%m-%d")
        .to_string()
}

struct State {
    /// Whether `progress` is the committed one (not a placeholder kept
    /// while the store could not be read).
    loaded: bool,
    progress: Progress,
    report: PartitionProgress,
}

/// The lake writer.
pub struct Lake {
    config: LakeConfig,
    tier: Arc<Tier>,
    remote: Arc<Remote>,
    state: Mutex<HashMap<(Uuid, i32), State>>,
    /// `max_bytes_per_second`, drawn on in steps as rows are encoded.
    budget: Arc<ByteRate>,
}

impl std::fmt::Debug for Lake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lake")
            .field("config", &self.config)
            .finish()
    }
}

/// A `Write` that hands full chunks to an async uploader.
struct ChunkSender {
    tx: tokio::sync::mpsc::Sender<Bytes>,
    buf: Vec<u8>,
}

const CHUNK: usize = 8 << 20;

/// Rows the encoder turns into Parquet between two draws on the byte
/// budget: small steps, so the writer never encodes a segment in one burst.
const STEP_ROWS: usize = 4096;

impl Write for ChunkSender {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = Bytes::from(std::mem::take(&mut self.buf));
            self.tx
                .blocking_send(chunk)
                .map_err(|_| std::io::Error::other("upload stopped"))?;
        }
        Ok(())
    }
}

impl Lake {
    /// A writer storing into the object tier.
    pub fn new(config: LakeConfig, tier: Arc<Tier>) -> Arc<Self> {
        Arc::new(Self {
            budget: Arc::new(ByteRate::new(config.max_bytes_per_second)),
            config,
            remote: tier.remote().clone(),
            tier,
            state: Mutex::new(HashMap::new()),
        })
    }

    /// Settings.
    pub fn config(&self) -> &LakeConfig {
        &self.config
    }

    /// The store the lake writes to.
    pub fn remote(&self) -> &Arc<Remote> {
        &self.remote
    }

    /// Every record of a partition below this offset is in the lake (as far
    /// as this broker has seen; `None` before its first pass).
    pub fn committed(&self, topic_id: Uuid, partition: i32) -> Option<i64> {
        self.state
            .lock()
            .expect("lake state lock")
            .get(&(topic_id, partition))
            .map(|s| s.progress.next_offset)
    }

    /// Progress of every partition seen since start.
    pub fn status(&self) -> Vec<PartitionProgress> {
        let state = self.state.lock().expect("lake state lock");
        let mut v: Vec<PartitionProgress> = state.values().map(|s| s.report.clone()).collect();
        v.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        v
    }

    /// The committed progress of a partition (loads it if needed).
    pub async fn progress(
        &self,
        topic: &str,
        topic_id: Uuid,
        partition: i32,
    ) -> Result<Progress, String> {
        self.load_progress(topic, topic_id, partition)
            .await
            .map(|(p, _)| p)
    }

    /// The committed progress, and whether this topic incarnation has none
    /// committed yet.
    async fn load_progress(
        &self,
        topic: &str,
        topic_id: Uuid,
        partition: i32,
    ) -> Result<(Progress, bool), String> {
        if let Some(s) = self
            .state
            .lock()
            .expect("lake state lock")
            .get(&(topic_id, partition))
        {
            if s.loaded {
                return Ok((s.progress.clone(), false));
            }
        }
        let key = progress_key(topic, partition);
        let loaded = self.remote.get_opt(&key).await.map_err(|e| e.to_string())?;
        let mut progress = match loaded {
            Some((b, _)) => serde_json::from_slice::<Progress>(&b)
                .map_err(|e| format!("{key} is corrupt: {e}"))?,
            None => Progress::default(),
        };
        if progress.topic_id != topic_id {
            // Another incarnation's progress (or none): start over.
            progress = Progress {
                version: 1,
                topic_id,
                ..Progress::default()
            };
            return Ok((progress, true));
        }
        Ok((progress, false))
    }

    /// Writes the lake files of every closed segment of `src` not yet in
    /// the lake. Returns how many segments were written.
    pub async fn process(&self, src: &LakeSource) -> Result<usize, String> {
        let (mut progress, fresh) = self
            .load_progress(&src.topic, src.topic_id, src.partition)
            .await?;
        if fresh {
            // Nothing committed by this incarnation of the topic: files under
            // the partition's directory are an earlier incarnation's (its
            // deletion failed) or this one's uncommitted first files. Clear
            // them, so the table never mixes incarnations (lake keys carry the
            // topic's name, not its id, for the readers' sake).
            self.delete_under(&partition_dir(&src.topic, src.partition))
                .await?;
        }
        let mut done = 0;
        let mut mismatches = 0u64;
        let mut bytes_written = 0u64;
        let segments: Vec<LakeSegment> = if src.tiered {
            let id = PartitionId {
                topic: src.topic.clone(),
                topic_id: src.topic_id,
                partition: src.partition,
            };
            self.tier
                .segments_from(&id, progress.next_offset, 64)
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .map(|r| LakeSegment {
                    base_offset: r.base_offset,
                    next_offset: r.next_offset,
                    size_bytes: r.size_bytes,
                    local_path: src
                        .local_segments
                        .iter()
                        .find(|l| l.base_offset == r.base_offset && l.next_offset == r.next_offset)
                        .and_then(|l| l.local_path.clone()),
                })
                .collect()
        } else {
            src.local_segments.clone()
        };
        for seg in &segments {
            if seg.next_offset <= progress.next_offset {
                continue;
            }
            if seg.base_offset > progress.next_offset {
                if progress.next_offset > 0 {
                    warn!(
                        topic = %src.topic,
                        partition = src.partition,
                        from = progress.next_offset,
                        to = seg.base_offset,
                        "records were deleted before the lake got them; they are not in the lake"
                    );
                }
                progress.next_offset = seg.base_offset;
            }
            let data = match &seg.local_path {
                Some(p) => match tokio::fs::read(p).await {
                    Ok(b) => Bytes::from(b),
                    Err(_) => self.remote_segment(src, seg).await?,
                },
                None => self.remote_segment(src, seg).await?,
            };
            let (files, rows, bad, written) =
                self.write_segment(src, data, progress.next_offset).await?;
            strata_tier::faults::hit(strata_tier::faults::LAKE_BEFORE_PROGRESS);
            progress.next_offset = seg.next_offset;
            progress.files += files;
            progress.rows += rows;
            mismatches += bad;
            bytes_written += written;
            let body = serde_json::to_vec(&progress).expect("progress serializes");
            self.remote
                .put(&progress_key(&src.topic, src.partition), Bytes::from(body))
                .await
                .map_err(|e| e.to_string())?;
            if let Some(s) = self
                .state
                .lock()
                .expect("lake state lock")
                .get_mut(&(src.topic_id, src.partition))
            {
                // Committed: a failure later in this pass must not send the
                // next pass back before it.
                s.loaded = true;
                s.progress = progress.clone();
            }
            done += 1;
            metrics::counter!("strata_lake_rows_total", "topic" => src.topic.clone())
                .increment(rows);
            metrics::counter!("strata_lake_bytes_written_total", "topic" => src.topic.clone())
                .increment(written);
            if bad > 0 {
                metrics::counter!("strata_lake_schema_mismatches_total", "topic" => src.topic.clone()).increment(bad);
            }
            debug!(topic = %src.topic, partition = src.partition, next = progress.next_offset, files, rows, "segment written to the lake");
        }
        let mut state = self.state.lock().expect("lake state lock");
        let s = state
            .entry((src.topic_id, src.partition))
            .or_insert_with(|| State {
                loaded: true,
                progress: progress.clone(),
                report: PartitionProgress {
                    topic: src.topic.clone(),
                    partition: src.partition,
                    ..PartitionProgress::default()
                },
            });
        s.loaded = true;
        s.progress = progress.clone();
        s.report.next_offset = progress.next_offset;
        s.report.lag = (src.log_end - progress.next_offset).max(0);
        s.report.files = progress.files;
        s.report.rows = progress.rows;
        s.report.schema_mismatches += mismatches;
        s.report.bytes_written += bytes_written;
        s.report.last_error = None;
        Ok(done)
    }

    async fn remote_segment(&self, src: &LakeSource, seg: &LakeSegment) -> Result<Bytes, String> {
        let key = strata_tier::keys::segment_log(
            &src.topic,
            src.topic_id,
            src.partition,
            seg.base_offset,
            seg.next_offset,
        );
        self.remote.get(&key).await.map(|(b, _)| b).map_err(|e| {
            format!(
                "reading segment {} from the object tier: {e}",
                seg.base_offset
            )
        })
    }

    /// One segment's files, one per UTC date. Returns files, rows, schema
    /// mismatches and Parquet bytes.
    async fn write_segment(
        &self,
        src: &LakeSource,
        data: Bytes,
        from: i64,
    ) -> Result<(u64, u64, u64, u64), String> {
        let partition = src.partition;
        let segment_bytes = data.len() as f64;
        let rows = spawn_background("strata-lake", move || records::decode(&data, partition))
            .await
            .map_err(|e| e.to_string())??;
        // The budget counts segment bytes; the encoder draws on it per step
        // of rows, each row standing for an equal share of the segment.
        let bytes_per_row = segment_bytes / rows.len().max(1) as f64;
        let mut by_date: BTreeMap<String, Vec<Row>> = BTreeMap::new();
        for r in rows.into_iter().filter(|r| r.offset >= from) {
            by_date.entry(date_of(r.timestamp)).or_default().push(r);
        }
        let (mut files, mut total, mut bad, mut written) = (0, 0, 0, 0);
        for (date, rows) in by_date {
            let first = rows.first().expect("non-empty").offset;
            let last = rows.last().expect("non-empty").offset;
            let key = file_key(&src.topic, src.partition, &date, first, last);
            total += rows.len() as u64;
            let (mismatches, size) = self
                .write_file(&key, rows, src.format.clone(), bytes_per_row)
                .await?;
            bad += mismatches;
            written += size;
            files += 1;
        }
        Ok((files, total, bad, written))
    }

    /// Encodes `rows` as Parquet on a low-priority thread, in steps of
    /// [`STEP_ROWS`] rows each paced by the byte budget, while an async task
    /// streams the bytes to the store as one multipart upload.
    async fn write_file(
        &self,
        key: &Path,
        rows: Vec<Row>,
        format: Arc<ValueFormat>,
        bytes_per_row: f64,
    ) -> Result<(u64, u64), String> {
        let props = self.config.properties()?;
        let budget = self.budget.clone();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(2);
        let encode = spawn_background("strata-lake", move || -> Result<u64, String> {
            let schema = table::arrow_schema(&format);
            let sink = ChunkSender {
                tx,
                buf: Vec::with_capacity(CHUNK),
            };
            let mut w = ArrowWriter::try_new(sink, schema.clone(), Some(props))
                .map_err(|e| e.to_string())?;
            let mut mismatches = 0;
            // Row groups still hold `row_group_rows`: the writer gathers
            // steps until a group is full.
            for chunk in rows.chunks(STEP_ROWS) {
                budget.acquire_blocking((chunk.len() as f64 * bytes_per_row) as u64);
                let (batch, bad) = table::record_batch(chunk, &format, &schema)?;
                mismatches += bad;
                w.write(&batch).map_err(|e| e.to_string())?;
            }
            let mut sink = w.into_inner().map_err(|e| e.to_string())?;
            sink.flush().map_err(|e| e.to_string())?;
            Ok(mismatches)
        });
        let store: Arc<dyn ObjectStore> = self.remote.store();
        let mut out = BufWriter::new(store, key.clone());
        let mut size = 0u64;
        let mut failed: Option<String> = None;
        while let Some(chunk) = rx.recv().await {
            size += chunk.len() as u64;
            if failed.is_none() {
                if let Err(e) = out.write_all(&chunk).await {
                    failed = Some(format!("writing {key}: {e}"));
                }
                let _ = out.flush().await;
                strata_tier::faults::hit(strata_tier::faults::LAKE_MID_FILE);
            }
        }
        let encoded = encode.await.map_err(|e| e.to_string())?;
        let mismatches = match (encoded, failed) {
            (Ok(m), None) => m,
            (Err(e), _) | (Ok(_), Some(e)) => {
                let _ = out.abort().await;
                return Err(e);
            }
        };
        out.shutdown()
            .await
            .map_err(|e| format!("completing {key}: {e}"))?;
        Ok((mismatches, size))
    }

    /// Deletes every object under `dir`.
    async fn delete_under(&self, dir: &Path) -> Result<(), String> {
        let objects: Vec<Path> = self
            .remote
            .list(dir, None)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|o| o.location)
            .collect();
        self.remote
            .delete(&objects)
            .await
            .map_err(|e| e.to_string())
    }

    /// Deletes a topic's lake (the topic was deleted).
    pub async fn delete_topic(&self, topic: &str) -> Result<(), String> {
        self.delete_under(&topic_dir(topic)).await?;
        self.state
            .lock()
            .expect("lake state lock")
            .retain(|_, s| s.report.topic != topic);
        Ok(())
    }

    /// The writer loop, until cancelled.
    pub async fn run(self: Arc<Self>, host: Arc<dyn LakeHost>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(self.config.interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            // Listing rolls idle segments: file work, off the async threads.
            let sources = {
                let host = host.clone();
                tokio::task::spawn_blocking(move || host.lake_sources())
                    .await
                    .unwrap_or_default()
            };
            for src in sources {
                if shutdown.is_cancelled() {
                    break;
                }
                match self.process(&src).await {
                    Ok(_) => {}
                    Err(e) => {
                        warn!(topic = %src.topic, partition = src.partition, error = %e, "lake writer failed; will retry");
                        let mut state = self.state.lock().expect("lake state lock");
                        if let Some(s) = state.get_mut(&(src.topic_id, src.partition)) {
                            s.report.last_error = Some(e);
                        } else {
                            // Failed before its first pass (say, the store is
                            // down): report it, and keep the log (no progress).
                            state.insert(
                                (src.topic_id, src.partition),
                                State {
                                    loaded: false,
                                    progress: Progress {
                                        next_offset: i64::MIN,
                                        ..Progress::default()
                                    },
                                    report: PartitionProgress {
                                        topic: src.topic.clone(),
                                        partition: src.partition,
                                        lag: src.log_end,
                                        last_error: Some(e),
                                        ..PartitionProgress::default()
                                    },
                                },
                            );
                        }
                    }
                }
            }
        }
        info!("lake writer stopped");
    }
}

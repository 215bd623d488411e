//! The broker's side of the lake: which partitions the writer follows, and
//! snapshots that read the lake's files and the log beyond them.

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use serde::Serialize;
use strata_lake::snapshot::{self, State};
use strata_lake::{LakeHost, LakeSegment, LakeSource};

use crate::error::ApiError;
use crate::state::{Broker, Partition};

impl LakeHost for Broker {
    /// Only a partition's leader writes its lake files.
    fn lake_sources(&self) -> Vec<LakeSource> {
        let now = crate::state::now_ms();
        self.topics()
            .iter()
            .flat_map(|t| t.partitions())
            .filter(|p| p.is_leader())
            .filter_map(|p| {
                let format = p.lake_format()?;
                if let Err(e) = p.roll_if_idle(now) {
                    tracing::warn!(topic = %p.topic, partition = p.index, error = %e, "idle roll failed");
                }
                let (local_segments, log_end) = p.with_log(|l| {
                    let closed = l
                        .closed_segments()
                        .into_iter()
                        .map(|s| LakeSegment {
                            base_offset: s.base_offset,
                            next_offset: s.next_offset,
                            size_bytes: s.size_bytes,
                            local_path: Some(s.path),
                        })
                        .collect();
                    (closed, l.high_watermark())
                });
                Some(LakeSource {
                    topic: p.topic.clone(),
                    topic_id: p.topic_id,
                    partition: p.index,
                    format,
                    tiered: p.policy().remote,
                    local_segments,
                    log_end,
                })
            })
            .collect()
    }
}

/// What a snapshot read and wrote.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotSummary {
    /// Topic.
    pub topic: String,
    /// The snapshot time (ms since the epoch).
    pub as_of: i64,
    /// Where it was written.
    pub output: String,
    /// Keys in the snapshot.
    pub keys: usize,
    /// Records applied (timestamp at or before `as_of`, with a key).
    pub records_applied: u64,
    /// Lake files read.
    pub lake_files: usize,
    /// Records read from the log beyond the lake.
    pub log_records: u64,
    /// Bytes of the Parquet file written.
    pub bytes: u64,
}

impl Broker {
    /// Writes the latest value of every key of `topic` as of `as_of` (ms) to
    /// `output` (`s3://bucket/key` or `file:///path`) as Parquet.
    pub async fn lake_snapshot(
        self: &Arc<Self>,
        topic: &str,
        as_of: i64,
        output: &str,
    ) -> Result<SnapshotSummary, ApiError> {
        let t = self
            .topic(topic)
            .ok_or_else(|| ApiError::unknown_topic(topic))?;
        let (store, path) = strata_tier::store::open_url(output, &self.config().tier)
            .map_err(|e| ApiError::new(ResponseError::InvalidRequest, e.to_string()))?;
        let parts = t.partitions();
        let format = parts
            .first()
            .and_then(|p| p.lake_format())
            .unwrap_or_else(|| Arc::new(strata_lake::ValueFormat::Bytes));
        let mut state = State::default();
        let (mut lake_files, mut log_records) = (0, 0u64);
        let storage = |e: String| ApiError::new(ResponseError::KafkaStorageError, e);
        for p in &parts {
            // Parquet below the lake's committed end, when the topic has a lake.
            let lake_end = if p.lake_format().is_some() {
                let progress = self
                    .lake()
                    .progress(&p.topic, p.topic_id, p.index)
                    .await
                    .map_err(storage)?;
                lake_files += snapshot::apply_lake_files(
                    self.lake().remote(),
                    &p.topic,
                    p.index,
                    progress.next_offset,
                    as_of,
                    &mut state,
                )
                .await
                .map_err(storage)?;
                progress.next_offset
            } else {
                i64::MIN
            };
            log_records += self.apply_log(p, lake_end, as_of, &mut state).await?;
        }
        let summary_keys = state.len();
        let applied = state.applied;
        let bytes = snapshot::write(store, &path, state.into_rows(), format)
            .await
            .map_err(storage)?;
        tracing::info!(
            topic,
            as_of,
            output,
            keys = summary_keys,
            lake_files,
            log_records,
            "snapshot written"
        );
        Ok(SnapshotSummary {
            topic: topic.to_string(),
            as_of,
            output: output.to_string(),
            keys: summary_keys,
            records_applied: applied,
            lake_files,
            log_records,
            bytes,
        })
    }

    /// Applies the partition's records from `from` (or its start) to the high
    /// watermark, read like a Fetch (locally or from the object tier).
    async fn apply_log(
        self: &Arc<Self>,
        p: &Arc<Partition>,
        from: i64,
        as_of: i64,
        state: &mut State,
    ) -> Result<u64, ApiError> {
        let o = p.offsets();
        let mut offset = from.max(o.log_start);
        let mut read = 0u64;
        while offset < o.high_watermark {
            let bytes: Bytes = if offset < o.local_start {
                self.tier()
                    .read(&p.remote_id(), offset, 4 << 20, true)
                    .await
                    .map_err(|e| ApiError::new(ResponseError::KafkaStorageError, e.to_string()))?
            } else {
                let part = p.clone();
                tokio::task::spawn_blocking(move || {
                    let plan = part.with_log(|l| l.read_plan(offset))?;
                    Ok::<_, strata_log::Error>(plan.read(4 << 20, true)?)
                })
                .await
                .map_err(ApiError::internal)?
                .map_err(ApiError::from)?
            };
            if bytes.is_empty() {
                break;
            }
            let rows = strata_lake::records::decode(&bytes, p.index)
                .map_err(|e| ApiError::new(ResponseError::CorruptMessage, e))?;
            let next = rows.last().map_or(offset, |r| r.offset + 1);
            let rows: Vec<_> = rows
                .into_iter()
                .filter(|r| r.offset >= offset && r.offset < o.high_watermark)
                .collect();
            read += rows.len() as u64;
            state.apply(rows, as_of);
            if next <= offset {
                break;
            }
            offset = next;
        }
        Ok(read)
    }
}

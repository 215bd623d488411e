//! The log cleaner: compacts the local logs of topics with
//! `cleanup.policy=compact` (every replica cleans its own copy, as in
//! Kafka), on `log.cleaner.threads` background threads at lower priority,
//! all reading within one byte budget (`log.cleaner.io.max.bytes.per.second`)
//! so produce and fetch keep their latency while it runs.
//!
//! A log is cleaned when its dirty share reaches `min.cleanable.dirty.ratio`
//! or its oldest dirty segment is older than `max.compaction.lag.ms`; the
//! dirtiest go first. The pass itself is `strata_log::clean::compact`.

use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::ResponseError;
use strata_log::batch;
use strata_log::clean::{self, CleanConfig, LogAccess};
use strata_log::compact;
use strata_tier::budget::{spawn_background, ByteRate};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::error::ApiError;
use crate::state::{now_ms, Broker, Partition};

/// What the cleaner did to a partition, for `/metrics`, `/v1/topics` and
/// `strata topic describe`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct CleanerStatus {
    /// Share of the cleanable bytes not compacted yet, at the last look.
    pub dirty_ratio: f64,
    /// The offset the log is compacted up to (read from the log's
    /// checkpoint when shown, so it is kept in one place).
    pub cleaned_to: i64,
    /// Passes completed.
    pub passes: u64,
    /// Bytes removed by every pass.
    pub bytes_reclaimed: u64,
    /// Records removed by every pass.
    pub records_removed: u64,
    /// When the last pass ended (ms since the epoch; 0: never).
    pub last_pass_ms: i64,
    /// How long the last pass took.
    pub last_pass_duration_ms: u64,
    /// Dirty bytes the last pass covered.
    pub last_pass_dirty_bytes: u64,
}

/// Refuses records without a key, as Kafka does on compacted topics.
pub(crate) fn check_keys(records: &[u8]) -> Result<(), ApiError> {
    for (at, h) in batch::headers(records) {
        let b = &records[at..at + h.size];
        let body = bytes::Bytes::copy_from_slice(&b[batch::HEADER_LEN..h.size]);
        let plain = strata_wire::codec::decompress_limited(
            h.compression(),
            body,
            crate::recompress::MAX_DECOMPRESSED,
        )
        .map_err(|e| ApiError::new(ResponseError::CorruptMessage, e))?;
        let all = compact::records(&h, &plain)
            .map_err(|e| ApiError::new(ResponseError::CorruptMessage, e))?;
        if all.iter().any(|r| r.key.is_none()) {
            return Err(ApiError::new(
                ResponseError::InvalidRecord,
                "Compacted topic cannot accept message without key",
            ));
        }
    }
    Ok(())
}

impl LogAccess for Partition {
    fn with_log<R>(&self, f: impl FnOnce(&mut strata_log::Log) -> R) -> R {
        Partition::with_log(self, f)
    }
}

/// The lake holds every record: segments it has not turned into Parquet
/// are not compacted yet.
fn lake_floor(p: &Partition) -> i64 {
    match p.lake_format() {
        Some(_) => p.lake.committed(p.topic_id, p.index).unwrap_or(i64::MIN),
        None => i64::MAX,
    }
}

/// A compacted partition worth a pass now, with its dirty ratio.
fn due(p: &Arc<Partition>, now: i64) -> Option<f64> {
    let c = p.policy().compact?;
    let plan = p.with_log(|l| l.clean_plan(c.min_compaction_lag_ms, lake_floor(p), now))?;
    let total = plan.total_bytes().max(1);
    let ratio = plan.dirty_bytes() as f64 / total as f64;
    p.cleaner.lock().expect("cleaner lock").dirty_ratio = ratio;
    metrics::gauge!("strata_log_cleaner_dirty_ratio", "topic" => p.topic.clone(), "partition" => p.index.to_string())
        .set(ratio);
    let overdue = plan
        .segments
        .iter()
        .find(|s| s.end > plan.dirty_from)
        .is_some_and(|s| s.max_timestamp >= 0 && now - s.max_timestamp > c.max_compaction_lag_ms);
    (ratio >= c.min_cleanable_dirty_ratio || overdue).then_some(ratio)
}

/// One pass over one partition. Blocking.
pub fn clean_partition(broker: &Broker, p: &Partition, rate: &ByteRate) {
    let Some(c) = p.policy().compact else {
        return;
    };
    let log = &broker.config().log;
    let cfg = CleanConfig {
        delete_retention_ms: c.delete_retention_ms,
        min_compaction_lag_ms: c.min_compaction_lag_ms,
        map_bytes: log.cleaner_dedupe_buffer_bytes,
        segment_bytes: p.with_log(|l| l.config().segment_bytes),
        keep_from: lake_floor(p),
    };
    let started = std::time::Instant::now();
    match clean::compact(p, &cfg, now_ms(), &mut |n| rate.acquire_blocking(n)) {
        Ok(Some(stats)) => {
            let reclaimed = stats.bytes_before.saturating_sub(stats.bytes_after);
            // The broker-wide local byte count (appends meanwhile count themselves).
            p.track_size(reclaimed, 0);
            let mut st = p.cleaner.lock().expect("cleaner lock");
            st.passes += 1;
            st.bytes_reclaimed += reclaimed;
            st.records_removed += stats.records_removed;
            st.last_pass_ms = now_ms();
            st.last_pass_duration_ms = started.elapsed().as_millis() as u64;
            st.last_pass_dirty_bytes = stats.dirty_bytes;
            let labels = [
                ("topic", p.topic.clone()),
                ("partition", p.index.to_string()),
            ];
            metrics::counter!("strata_log_cleaner_bytes_reclaimed_total", &labels)
                .increment(reclaimed);
            metrics::counter!("strata_log_cleaner_bytes_read_total", &labels)
                .increment(stats.bytes_read);
            metrics::counter!("strata_log_cleaner_passes_total", &labels).increment(1);
            info!(topic = %p.topic, partition = p.index, cleaned_to = stats.cleaned_to,
                  records_removed = stats.records_removed, bytes_reclaimed = reclaimed, "log compacted");
        }
        Ok(None) => {}
        Err(e) => {
            warn!(topic = %p.topic, partition = p.index, error = %e, "log compaction failed; will retry")
        }
    }
}

/// Looks for dirty logs every `log.cleaner.backoff.ms` and cleans them
/// until cancelled.
pub async fn run(broker: Arc<Broker>, shutdown: CancellationToken) {
    let cfg = broker.config().log.clone();
    if cfg.cleaner_threads == 0 {
        return;
    }
    let rate = Arc::new(ByteRate::new(cfg.cleaner_io_max_bytes_per_second));
    let mut tick = tokio::time::interval(Duration::from_millis(cfg.cleaner_backoff_ms.max(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = now_ms();
        let mut dirty: Vec<(f64, Arc<Partition>)> = broker
            .topics()
            .iter()
            .flat_map(|t| t.partitions())
            .filter_map(|p| due(&p, now).map(|r| (r, p)))
            .collect();
        if dirty.is_empty() {
            continue;
        }
        dirty.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut lanes: Vec<Vec<Arc<Partition>>> = vec![Vec::new(); cfg.cleaner_threads];
        for (i, (_, p)) in dirty.into_iter().enumerate() {
            lanes[i % cfg.cleaner_threads].push(p);
        }
        let work = lanes.into_iter().filter(|l| !l.is_empty()).map(|lane| {
            let (b, rate) = (broker.clone(), rate.clone());
            spawn_background("strata-cleaner", move || {
                for p in lane {
                    clean_partition(&b, &p, &rate);
                }
            })
        });
        for r in futures::future::join_all(work).await {
            if let Err(e) = r {
                warn!(error = %e, "a cleaner thread failed");
            }
        }
    }
}

//! `GET /metrics`: Prometheus text format.
//!
//! Event metrics (requests, errors, bytes in and out, latencies) are recorded
//! where they happen through the `metrics` facade and rendered by the
//! exporter's handle. State metrics (offsets, sizes, lag, cache, object-store
//! counters) are read from the broker at scrape time and written here, so a
//! deleted topic or group leaves no stale series behind.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::AdminState;

/// Installs the process-wide Prometheus recorder (latency histograms with
/// buckets from 100 µs to 30 s) and returns its handle. Call once.
pub fn install_recorder() -> Result<metrics_exporter_prometheus::PrometheusHandle, String> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let buckets = [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0, 30.0,
    ];
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {value}");
        } else {
            let _ = writeln!(self.0, "{name}{{{}}} {value}", labels.join(","));
        }
    }
}

pub(crate) async fn render(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    let mut out = Text(
        state
            .prometheus
            .as_ref()
            .map(|h| h.render())
            .unwrap_or_default(),
    );
    out.family("strata_up", "gauge", "1 while the process serves");
    out.sample("strata_up", &[], 1);
    out.family(
        "strata_uptime_seconds",
        "gauge",
        "seconds since the process started",
    );
    out.sample("strata_uptime_seconds", &[], state.uptime_seconds());
    if let Some(b) = state.broker.get() {
        scrape_broker(b, &mut out);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out.0,
    )
}

fn scrape_broker(b: &strata_broker::Broker, out: &mut Text) {
    out.family(
        "strata_local_disk_bytes",
        "gauge",
        "bytes of local segments across partitions",
    );
    out.sample("strata_local_disk_bytes", &[], b.local_bytes());

    let parts = b.partition_statuses();
    type Get = fn(&strata_broker::admin_api::PartitionStatus) -> i64;
    let families: [(&str, &str, Get); 9] = [
        (
            "strata_partition_log_start_offset",
            "first offset held, locally or in the object tier",
            |p| p.log_start,
        ),
        (
            "strata_partition_local_start_offset",
            "first offset on local disk",
            |p| p.local_start,
        ),
        (
            "strata_partition_log_end_offset",
            "next offset to be written",
            |p| p.log_end,
        ),
        (
            "strata_partition_high_watermark",
            "offset below which consumers read",
            |p| p.high_watermark,
        ),
        (
            "strata_partition_local_bytes",
            "bytes of the partition's local segments",
            |p| p.local_bytes as i64,
        ),
        (
            "strata_partition_remote_bytes",
            "bytes the object tier holds",
            |p| p.remote.as_ref().map_or(0, |r| r.bytes as i64),
        ),
        (
            "strata_partition_remote_end_offset",
            "offset after the last one the object tier holds",
            |p| p.remote.as_ref().map_or(0, |r| r.end),
        ),
        (
            "strata_offload_lag_bytes",
            "local bytes of a tiered partition not yet in the object tier",
            |p| p.offload_lag_bytes as i64,
        ),
        (
            "strata_offload_lag_segments",
            "closed segments waiting for upload",
            |p| p.offload_lag_segments as i64,
        ),
    ];
    for (name, help, get) in families {
        out.family(name, "gauge", help);
        for p in &parts {
            let partition = p.partition.to_string();
            out.sample(
                name,
                &[("topic", &p.topic), ("partition", &partition)],
                get(p),
            );
        }
    }
    out.family(
        "strata_offload_failures",
        "gauge",
        "failed uploads in a row (0 while healthy)",
    );
    out.family(
        "strata_offload_uploaded_bytes_total",
        "counter",
        "bytes uploaded since start",
    );
    for p in parts.iter().filter(|p| p.remote.is_some()) {
        let r = p.remote.as_ref().expect("filtered");
        let partition = p.partition.to_string();
        let labels = [
            ("topic", p.topic.as_str()),
            ("partition", partition.as_str()),
        ];
        out.sample("strata_offload_failures", &labels, r.consecutive_failures);
        out.sample(
            "strata_offload_uploaded_bytes_total",
            &labels,
            r.uploaded_bytes,
        );
    }

    let tier = b.tier();
    let cache = tier.cache_status();
    out.family(
        "strata_cold_cache_hits_total",
        "counter",
        "cold chunks served from the cache, by level",
    );
    out.sample(
        "strata_cold_cache_hits_total",
        &[("level", "memory")],
        cache.hits_memory,
    );
    out.sample(
        "strata_cold_cache_hits_total",
        &[("level", "disk")],
        cache.hits_disk,
    );
    out.family(
        "strata_cold_cache_misses_total",
        "counter",
        "cold chunks fetched from the object store",
    );
    out.sample("strata_cold_cache_misses_total", &[], cache.misses);
    out.family(
        "strata_cold_cache_fetched_bytes_total",
        "counter",
        "bytes fetched from the object store for cold reads",
    );
    out.sample(
        "strata_cold_cache_fetched_bytes_total",
        &[],
        cache.fetched_bytes,
    );
    out.family(
        "strata_cold_cache_bytes",
        "gauge",
        "bytes in the cold cache, by level",
    );
    out.sample(
        "strata_cold_cache_bytes",
        &[("level", "memory")],
        cache.memory_bytes,
    );
    out.sample(
        "strata_cold_cache_bytes",
        &[("level", "disk")],
        cache.disk_bytes,
    );
    out.family(
        "strata_cold_cache_budget_bytes",
        "gauge",
        "the cold cache's budget, by level",
    );
    out.sample(
        "strata_cold_cache_budget_bytes",
        &[("level", "memory")],
        cache.memory_budget,
    );
    out.sample(
        "strata_cold_cache_budget_bytes",
        &[("level", "disk")],
        cache.disk_budget,
    );

    let store = tier.store_status();
    out.family(
        "strata_object_store_reachable",
        "gauge",
        "1 when the object store answered its last health check",
    );
    out.sample(
        "strata_object_store_reachable",
        &[],
        u8::from(store.reachable),
    );
    out.family(
        "strata_object_store_requests_total",
        "counter",
        "object-store requests, by operation",
    );
    out.family(
        "strata_object_store_errors_total",
        "counter",
        "failed object-store requests (including timeouts), by operation",
    );
    out.family(
        "strata_object_store_bytes_total",
        "counter",
        "bytes sent (put) or received (get), by operation",
    );
    out.family(
        "strata_object_store_request_seconds_sum",
        "counter",
        "total time in object-store requests, by operation",
    );
    for (op, s) in &store.totals {
        let labels = [("op", op.name())];
        out.sample("strata_object_store_requests_total", &labels, s.requests);
        out.sample("strata_object_store_errors_total", &labels, s.errors);
        out.sample("strata_object_store_bytes_total", &labels, s.bytes);
        out.sample(
            "strata_object_store_request_seconds_sum",
            &labels,
            s.latency_us as f64 / 1e6,
        );
    }
    out.family(
        "strata_object_store_topic_requests_total",
        "counter",
        "object-store requests for a topic's objects, by operation",
    );
    out.family(
        "strata_object_store_topic_errors_total",
        "counter",
        "failed object-store requests for a topic's objects",
    );
    for (topic, op, s) in &store.per_topic {
        let labels = [("topic", topic.as_str()), ("op", op.name())];
        out.sample(
            "strata_object_store_topic_requests_total",
            &labels,
            s.requests,
        );
        out.sample("strata_object_store_topic_errors_total", &labels, s.errors);
    }

    out.family(
        "strata_lake_next_offset",
        "gauge",
        "every record below this offset is in the lake",
    );
    out.family(
        "strata_lake_lag_records",
        "gauge",
        "records in the log not yet in the lake",
    );
    let written = b.lake().status();
    for p in &parts {
        let Some(w) = written
            .iter()
            .find(|w| w.topic == p.topic && w.partition == p.partition)
        else {
            continue;
        };
        let partition = p.partition.to_string();
        let labels = [
            ("topic", p.topic.as_str()),
            ("partition", partition.as_str()),
        ];
        out.sample("strata_lake_next_offset", &labels, w.next_offset);
        out.sample(
            "strata_lake_lag_records",
            &labels,
            (p.high_watermark - w.next_offset).max(0),
        );
    }

    out.family(
        "strata_consumer_group_lag",
        "gauge",
        "high watermark minus committed offset, per partition",
    );
    out.family(
        "strata_consumer_group_members",
        "gauge",
        "members of a consumer group",
    );
    for (group, _, _) in b.groups().list() {
        let members = b.groups().describe(&group).map_or(0, |d| d.members.len());
        out.sample(
            "strata_consumer_group_members",
            &[("group", &group)],
            members,
        );
        for l in b.group_lag(&group) {
            let partition = l.partition.to_string();
            out.sample(
                "strata_consumer_group_lag",
                &[
                    ("group", &group),
                    ("topic", &l.topic),
                    ("partition", &partition),
                ],
                l.lag,
            );
        }
    }
}

//! `/v1`: the REST admin API. Requests and answers are JSON; errors are
//! `{"error": {"code", "message"}}` with a 4xx status for anything the caller
//! can fix (never 500 for bad input).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use kafka_protocol::ResponseError;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use strata_broker::admin_api::{OffsetSpec, PartitionStatus};
use strata_broker::error::ApiError;
use strata_broker::topic_config::{validate_entry, TopicConfig, TOPIC_CONFIG_KEYS};
use strata_broker::Broker;

use crate::{AdminState, ApiProblem};

type ApiResult<T> = Result<T, ApiProblem>;

/// The `/v1` routes.
pub fn routes() -> Router<Arc<AdminState>> {
    Router::new()
        .route("/broker", get(broker_info))
        .route("/cluster", get(cluster))
        .route("/cluster/store-probe", get(store_probe))
        .route("/topics", get(list_topics).post(create_topic))
        .route("/topics/{name}", get(describe_topic).delete(delete_topic))
        .route("/topics/{name}/configs", patch(alter_configs))
        .route("/topics/{name}/partitions", post(add_partitions))
        .route("/delete-records", post(delete_records))
        .route("/groups", get(list_groups))
        .route("/groups/{id}", get(describe_group).delete(delete_group))
        .route("/groups/{id}/reset-offsets", post(reset_offsets))
        .route("/tier", get(tier_status))
        .route("/lake", get(lake_status))
        .route("/lake/snapshot", post(lake_snapshot))
}

/// A JSON body whose rejection is a JSON error.
pub struct Body<T>(pub T);

impl<S, T> FromRequest<S> for Body<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiProblem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(e) => Err(ApiProblem::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                match e {
                    JsonRejection::MissingJsonContentType(_) => {
                        "send a JSON body with Content-Type: application/json".to_string()
                    }
                    other => format!(
                        "the body is not what this endpoint takes: {}",
                        other.body_text()
                    ),
                },
            )),
        }
    }
}

/// Maps a Kafka error to an HTTP answer.
pub(crate) fn problem(e: ApiError) -> ApiProblem {
    use ResponseError as R;
    let (status, code) = match e.code {
        R::UnknownTopicOrPartition | R::UnknownTopicId => (StatusCode::NOT_FOUND, "unknown_topic"),
        R::GroupIdNotFound => (StatusCode::NOT_FOUND, "unknown_group"),
        R::TopicAlreadyExists => (StatusCode::CONFLICT, "topic_exists"),
        R::NonEmptyGroup => (StatusCode::CONFLICT, "group_not_empty"),
        R::InvalidTopicException => (StatusCode::BAD_REQUEST, "invalid_topic"),
        R::InvalidPartitions => (StatusCode::BAD_REQUEST, "invalid_partitions"),
        R::InvalidConfig => (StatusCode::BAD_REQUEST, "invalid_config"),
        R::InvalidReplicationFactor => (StatusCode::BAD_REQUEST, "invalid_replication_factor"),
        R::InvalidReplicaAssignment => (StatusCode::BAD_REQUEST, "invalid_replica_assignment"),
        R::NotController | R::RequestTimedOut | R::CoordinatorNotAvailable => {
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        }
        R::NotCoordinator => (StatusCode::MISDIRECTED_REQUEST, "not_coordinator"),
        R::InvalidRequest => (StatusCode::BAD_REQUEST, "invalid_request"),
        R::KafkaStorageError => (StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable"),
        R::OffsetOutOfRange => (StatusCode::BAD_REQUEST, "offset_out_of_range"),
        R::NotLeaderOrFollower => (StatusCode::MISDIRECTED_REQUEST, "not_leader"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    };
    ApiProblem::new(status, code, e.message)
}

fn not_found_topic(name: &str) -> ApiProblem {
    ApiProblem::new(
        StatusCode::NOT_FOUND,
        "unknown_topic",
        format!("topic '{name}' does not exist: GET /v1/topics lists them"),
    )
}

// ------------------------------------------------------------------ broker

/// Config values whose names suggest secrets are masked.
fn mask(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                let k = k.to_ascii_lowercase();
                if ["secret", "password", "token", "access_key", "credential"]
                    .iter()
                    .any(|s| k.contains(s))
                    && !val.as_str().is_some_and(str::is_empty)
                {
                    *val = Value::String("****".into());
                } else {
                    mask(val);
                }
            }
        }
        Value::String(s) => {
            // Credentials inside URLs (scheme://user:pass@host).
            if let Some((scheme, rest)) = s.split_once("://") {
                if let Some((_, host)) = rest.split_once('@') {
                    *s = format!("{scheme}://****@{host}");
                }
            }
        }
        _ => {}
    }
}

async fn broker_info(State(state): State<Arc<AdminState>>) -> ApiResult<Json<Value>> {
    let b = state.broker()?;
    let mut config = serde_json::to_value(b.config()).expect("config serializes");
    mask(&mut config);
    let (host, port) = b.advertised();
    Ok(Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "node_id": b.node_id(),
        "cluster_id": b.cluster_id(),
        "advertised_listener": format!("{host}:{port}"),
        "uptime_seconds": state.uptime_seconds(),
        "local_bytes": b.local_bytes(),
        "config": config,
    })))
}

// ------------------------------------------------------------------ cluster

async fn cluster(State(state): State<Arc<AdminState>>) -> ApiResult<Json<Value>> {
    let b = state.broker()?;
    Ok(Json(
        serde_json::to_value(b.cluster_view()).expect("view serializes"),
    ))
}

/// What another broker asks when it cannot reach etcd: can this one?
async fn store_probe(State(state): State<Arc<AdminState>>) -> ApiResult<Json<Value>> {
    let b = state.broker()?;
    Ok(Json(
        serde_json::to_value(b.metadata().session().store_probe()).expect("probe serializes"),
    ))
}

// ------------------------------------------------------------------ topics

#[derive(Serialize)]
struct TopicSummary {
    name: String,
    id: String,
    partitions: i32,
    remote_storage_enable: bool,
    configs: BTreeMap<String, String>,
}

async fn list_topics(State(state): State<Arc<AdminState>>) -> ApiResult<Json<Value>> {
    let b = state.broker()?;
    let topics: Vec<TopicSummary> = b
        .topics()
        .iter()
        .map(|t| TopicSummary {
            name: t.name.clone(),
            id: t.id.to_string(),
            partitions: t.partition_count(),
            remote_storage_enable: t
                .configs()
                .storage_policy(&b.config().log)
                .is_ok_and(|p| p.remote),
            configs: t.configs().0,
        })
        .collect();
    Ok(Json(json!({ "topics": topics })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTopic {
    name: String,
    #[serde(default = "default_partitions")]
    partitions: i32,
    #[serde(default = "default_replication_factor")]
    replication_factor: i16,
    #[serde(default)]
    configs: BTreeMap<String, String>,
}

fn default_replication_factor() -> i16 {
    -1
}

fn default_partitions() -> i32 {
    -1
}

fn topic_configs(pairs: &BTreeMap<String, String>) -> ApiResult<TopicConfig> {
    TopicConfig::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(|e| ApiProblem::new(StatusCode::BAD_REQUEST, "invalid_config", e))
}

async fn create_topic(
    State(state): State<Arc<AdminState>>,
    Body(req): Body<CreateTopic>,
) -> ApiResult<Response> {
    let b = state.broker()?;
    let configs = topic_configs(&req.configs)?;
    let spec = strata_broker::TopicSpec {
        name: req.name.clone(),
        partitions: req.partitions,
        replication_factor: req.replication_factor,
        assignments: None,
        configs,
    };
    b.create_topic(spec, false, true).await.map_err(problem)?;
    Ok((StatusCode::CREATED, Json(topic_json(b, &req.name)?)).into_response())
}

fn topic_json(b: &Broker, name: &str) -> ApiResult<Value> {
    let t = b.topic(name).ok_or_else(|| not_found_topic(name))?;
    let cfg = t.configs();
    let configs: Vec<Value> = TOPIC_CONFIG_KEYS
        .iter()
        .map(|k| {
            let (value, is_default) = cfg.value_of(k.name, &b.config().log);
            json!({"name": k.name, "value": value, "source": if is_default { "default" } else { "topic" }})
        })
        .collect();
    let partitions: Vec<PartitionStatus> = t
        .partitions()
        .iter()
        .map(|p| b.partition_status(p))
        .collect();
    let replicas = b
        .cluster_view()
        .topics
        .into_iter()
        .find(|v| v.name == name)
        .map(|v| v.partitions)
        .unwrap_or_default();
    Ok(json!({
        "name": t.name,
        "id": t.id.to_string(),
        "partition_count": t.partition_count(),
        "partitions": partitions,
        "replicas": replicas,
        "configs": configs,
    }))
}

async fn describe_topic(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let b = state.broker()?;
    Ok(Json(topic_json(b, &name)?))
}

async fn delete_topic(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let b = state.broker()?;
    if b.topic(&name).is_none() {
        return Err(not_found_topic(&name));
    }
    b.delete_topic(&name, true).await.map_err(problem)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlterConfigs {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    delete: Vec<String>,
}

async fn alter_configs(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
    Body(req): Body<AlterConfigs>,
) -> ApiResult<Json<Value>> {
    let b = state.broker()?;
    let t = b.topic(&name).ok_or_else(|| not_found_topic(&name))?;
    let mut map = t.configs().0;
    for (k, v) in &req.set {
        validate_entry(k, v)
            .map_err(|e| ApiProblem::new(StatusCode::BAD_REQUEST, "invalid_config", e))?;
        map.insert(k.clone(), v.clone());
    }
    for k in &req.delete {
        if !TOPIC_CONFIG_KEYS.iter().any(|c| c.name == k) {
            return Err(ApiProblem::new(
                StatusCode::BAD_REQUEST,
                "invalid_config",
                format!("unknown topic config '{k}'"),
            ));
        }
        map.remove(k);
    }
    b.set_topic_configs(&name, TopicConfig(map), false, true)
        .await
        .map_err(problem)?;
    Ok(Json(topic_json(b, &name)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddPartitions {
    count: i32,
}

async fn add_partitions(
    State(state): State<Arc<AdminState>>,
    Path(name): Path<String>,
    Body(req): Body<AddPartitions>,
) -> ApiResult<Json<Value>> {
    let b = state.broker()?;
    if b.topic(&name).is_none() {
        return Err(not_found_topic(&name));
    }
    b.create_partitions(&name, req.count, None, false, true)
        .await
        .map_err(problem)?;
    Ok(Json(topic_json(b, &name)?))
}

/// `kafka-delete-records --offset-json-file`'s shape.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteRecords {
    partitions: Vec<DeleteRecordsPartition>,
    #[serde(default)]
    #[allow(dead_code)] // accepted as kafka-delete-records writes it
    version: Option<i32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteRecordsPartition {
    topic: String,
    partition: i32,
    /// Records below it are deleted; -1: everything below the high watermark.
    offset: i64,
}

/// Each partition's new low watermark, or why it did not move. A partition
/// this broker does not lead answers `not_leader`: send it to its leader.
async fn delete_records(
    State(state): State<Arc<AdminState>>,
    Body(req): Body<DeleteRecords>,
) -> ApiResult<Json<Value>> {
    let b = state.broker()?;
    let mut out = Vec::with_capacity(req.partitions.len());
    for p in req.partitions {
        out.push(
            match b.delete_records(&p.topic, p.partition, p.offset).await {
                Ok(low) => {
                    json!({"topic": p.topic, "partition": p.partition, "low_watermark": low})
                }
                Err(e) => {
                    let pr = problem(e);
                    json!({"topic": p.topic, "partition": p.partition, "error": pr.body()})
                }
            },
        );
    }
    Ok(Json(json!({ "partitions": out })))
}

// ------------------------------------------------------------------ groups

async fn list_groups(State(state): State<Arc<AdminState>>) -> ApiResult<Json<Value>> {
    let b = state.broker()?;
    let groups: Vec<Value> = b
        .groups()
        .list()
        .into_iter()
        .map(|(id, s, protocol_type)| {
            let lag: i64 = b.group_lag(&id).iter().map(|l| l.lag).sum();
            let members = b.groups().describe(&id).map_or(0, |d| d.members.len());
            json!({"group": id, "state": s.name(), "protocol_type": protocol_type, "members": members, "lag": lag})
        })
        .collect();
    Ok(Json(json!({ "groups": groups })))
}

/// Topic partitions in a `consumer` protocol assignment.
fn decode_assignment(bytes: &bytes::Bytes) -> Value {
    use kafka_protocol::messages::ConsumerProtocolAssignment;
    use kafka_protocol::protocol::Decodable;
    if bytes.len() < 2 {
        return json!([]);
    }
    let version = i16::from_be_bytes([bytes[0], bytes[1]]);
    let mut body = bytes.slice(2..);
    match ConsumerProtocolAssignment::decode(&mut body, version.clamp(0, 3)) {
        Ok(a) => Value::Array(
            a.assigned_partitions
                .iter()
                .map(|tp| json!({"topic": tp.topic.to_string(), "partitions": tp.partitions}))
                .collect(),
        ),
        Err(_) => json!([]),
    }
}

async fn describe_group(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let b = state.broker()?;
    let d = b.groups().describe(&id).ok_or_else(|| {
        ApiProblem::new(
            StatusCode::NOT_FOUND,
            "unknown_group",
            format!("group '{id}' does not exist: GET /v1/groups lists them"),
        )
    })?;
    let members: Vec<Value> = d
        .members
        .iter()
        .map(|m| {
            json!({
                "member_id": m.member_id,
                "group_instance_id": m.instance_id,
                "client_id": m.client_id,
                "client_host": m.client_host,
                "assignment": if d.protocol_type == "consumer" { decode_assignment(&m.assignment) } else { json!(null) },
            })
        })
        .collect();
    let committed = b.groups().committed(&id, None);
    let lag = b.group_lag(&id);
    let offsets: Vec<Value> = committed
        .iter()
        .map(|(t, p, v)| {
            let l = lag.iter().find(|l| &l.topic == t && l.partition == *p);
            json!({
                "topic": t,
                "partition": p,
                "committed": v.as_ref().map(|v| v.offset),
                "metadata": v.as_ref().map(|v| v.metadata.clone()),
                "log_end": l.map(|l| l.log_end),
                "lag": l.map(|l| l.lag),
            })
        })
        .collect();
    Ok(Json(json!({
        "group": d.group_id,
        "state": d.state.name(),
        "protocol_type": d.protocol_type,
        "protocol": d.protocol,
        "generation": d.generation,
        "members": members,
        "offsets": offsets,
        "lag": lag.iter().map(|l| l.lag).sum::<i64>(),
    })))
}

async fn delete_group(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let b = state.broker()?.clone();
    let outcome = tokio::task::spawn_blocking(move || b.groups().delete_group(&id))
        .await
        .map_err(|e| {
            ApiProblem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })?;
    match outcome {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(ResponseError::NonEmptyGroup) => Err(ApiProblem::new(
            StatusCode::CONFLICT,
            "group_not_empty",
            "the group has active members: stop its consumers first",
        )),
        Err(ResponseError::GroupIdNotFound) => Err(ApiProblem::new(
            StatusCode::NOT_FOUND,
            "unknown_group",
            "no such group: GET /v1/groups lists them",
        )),
        Err(e) => Err(ApiProblem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_unavailable",
            format!("could not delete the group: {e:?}"),
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetOffsets {
    /// Only this topic (every partition); default: every partition the
    /// group has committed.
    #[serde(default)]
    topic: Option<String>,
    /// `earliest`, `latest`, `{"timestamp": ms}` or `{"offset": n}`.
    to: ResetTarget,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ResetTarget {
    Named(String),
    Timestamp { timestamp: i64 },
    Offset { offset: i64 },
}

async fn reset_offsets(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
    Body(req): Body<ResetOffsets>,
) -> ApiResult<Json<Value>> {
    let b = state.broker()?;
    let spec = match req.to {
        ResetTarget::Named(s) if s == "earliest" => OffsetSpec::Earliest,
        ResetTarget::Named(s) if s == "latest" => OffsetSpec::Latest,
        ResetTarget::Named(other) => {
            return Err(ApiProblem::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("'to' is \"earliest\", \"latest\", {{\"timestamp\": ms}} or {{\"offset\": n}}, not \"{other}\""),
            ))
        }
        ResetTarget::Timestamp { timestamp } => OffsetSpec::Timestamp(timestamp),
        ResetTarget::Offset { offset } => OffsetSpec::Offset(offset),
    };
    let moved = b
        .reset_group_offsets(&id, req.topic.as_deref(), spec)
        .await
        .map_err(problem)?;
    let offsets: Vec<Value> = moved
        .into_iter()
        .map(|(t, p, o)| json!({"topic": t, "partition": p, "offset": o}))
        .collect();
    Ok(Json(json!({"group": id, "offsets": offsets})))
}

// ------------------------------------------------------------------ tier

async fn tier_status(State(state): State<Arc<AdminState>>) -> ApiResult<Json<Value>> {
    let b = state.broker()?;
    let tier = b.tier();
    let store = tier.store_status();
    let cache = tier.cache_status();
    let ops: Vec<Value> = store
        .totals
        .iter()
        .map(|(op, s)| json!({"op": op.name(), "requests": s.requests, "errors": s.errors, "bytes": s.bytes, "latency_us_sum": s.latency_us}))
        .collect();
    let per_topic: Vec<Value> = store
        .per_topic
        .iter()
        .map(|(t, op, s)| json!({"topic": t, "op": op.name(), "requests": s.requests, "errors": s.errors, "bytes": s.bytes}))
        .collect();
    let partitions: Vec<PartitionStatus> = b
        .partition_statuses()
        .into_iter()
        .filter(|p| p.remote_storage_enable || p.remote.is_some())
        .collect();
    Ok(Json(json!({
        "store": {
            "location": store.description,
            "reachable": store.reachable,
            "conditional_puts": store.conditional_puts,
            "operations": ops,
            "per_topic": per_topic,
        },
        "cache": {
            "memory_bytes": cache.memory_bytes,
            "memory_budget_bytes": cache.memory_budget,
            "memory_entries": cache.memory_entries,
            "disk_bytes": cache.disk_bytes,
            "disk_budget_bytes": cache.disk_budget,
            "disk_entries": cache.disk_entries,
            "hits_memory": cache.hits_memory,
            "hits_disk": cache.hits_disk,
            "misses": cache.misses,
            "fetched_bytes": cache.fetched_bytes,
        },
        "partitions": partitions,
    })))
}

// ------------------------------------------------------------------ lake

async fn lake_status(State(state): State<Arc<AdminState>>) -> ApiResult<Json<Value>> {
    let b = state.broker()?;
    let written = b.lake().status();
    let mut partitions = Vec::new();
    for t in b.topics() {
        for p in t.partitions() {
            if p.lake_format().is_none() {
                continue;
            }
            let hw = p.offsets().high_watermark;
            let w = written
                .iter()
                .find(|w| w.topic == p.topic && w.partition == p.index);
            let next = w.map_or(0, |w| w.next_offset);
            partitions.push(json!({
                "topic": p.topic,
                "partition": p.index,
                "next_offset": next,
                "lag": (hw - next).max(0),
                "files": w.map_or(0, |w| w.files),
                "rows": w.map_or(0, |w| w.rows),
                "bytes_written": w.map_or(0, |w| w.bytes_written),
                "schema_mismatches": w.map_or(0, |w| w.schema_mismatches),
                "last_error": w.and_then(|w| w.last_error.clone()),
            }));
        }
    }
    Ok(Json(json!({"partitions": partitions})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotRequest {
    topic: String,
    /// Milliseconds since the epoch.
    as_of: i64,
    /// `s3://bucket/key.parquet` or `file:///path/key.parquet`.
    output: String,
}

async fn lake_snapshot(
    State(state): State<Arc<AdminState>>,
    Body(req): Body<SnapshotRequest>,
) -> ApiResult<Json<Value>> {
    let b = state.broker()?;
    let summary = b
        .lake_snapshot(&req.topic, req.as_of, &req.output)
        .await
        .map_err(problem)?;
    Ok(Json(
        serde_json::to_value(summary).expect("summary serializes"),
    ))
}

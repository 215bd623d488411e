//! Every route through `tower::ServiceExt::oneshot` against a real broker
//! (a temporary data directory, the object tier in memory).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use strata_admin::{router, AdminState};
use strata_broker::{Broker, BrokerConfig};
use tower::ServiceExt;

async fn broker(dir: &std::path::Path) -> Arc<Broker> {
    let mut config = BrokerConfig {
        data_dir: dir.to_path_buf(),
        ..BrokerConfig::default()
    };
    config.tier.object_store = "memory://".into();
    config.tier.cache_disk_bytes = 0;
    let endpoints = strata_broker::Endpoints {
        host: "127.0.0.1".into(),
        port: 9092,
        ..Default::default()
    };
    Broker::start(config, endpoints).await.unwrap()
}

async fn call(
    state: &Arc<AdminState>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(path);
    let body = match body {
        Some(b) => {
            req = req.header("content-type", "application/json");
            Body::from(b.to_string())
        }
        None => Body::empty(),
    };
    let resp = router(state.clone())
        .oneshot(req.body(body).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    (status, value)
}

#[tokio::test]
async fn health_and_readiness_follow_the_broker_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let state = AdminState::new(None);
    assert_eq!(
        call(&state, Method::GET, "/healthz", None).await.0,
        StatusCode::OK
    );
    let (status, body) = call(&state, Method::GET, "/readyz", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body["reasons"].to_string().contains("recovery"), "{body}");
    let (status, body) = call(&state, Method::GET, "/v1/topics", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["code"], "starting");

    state.set_broker(broker(dir.path()).await);
    assert_eq!(
        call(&state, Method::GET, "/readyz", None).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    state.set_kafka_up(true);
    assert_eq!(
        call(&state, Method::GET, "/readyz", None).await.0,
        StatusCode::OK
    );
    state.set_stopping();
    let (status, body) = call(&state, Method::GET, "/readyz", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body["reasons"].to_string().contains("shutting down"));
}

#[tokio::test]
async fn topics_can_be_created_described_altered_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let state = AdminState::new(None);
    state.set_broker(broker(dir.path()).await);
    let (status, body) = call(
        &state,
        Method::POST,
        "/v1/topics",
        Some(json!({"name": "orders", "partitions": 3, "configs": {"retention.ms": "3600000"}})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["partitions"].as_array().unwrap().len(), 3);
    let retention = body["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "retention.ms")
        .unwrap()
        .clone();
    assert_eq!(
        (retention["value"].as_str(), retention["source"].as_str()),
        (Some("3600000"), Some("topic"))
    );

    // Errors are JSON 4xx that say what is wrong.
    for (body, status, code) in [
        (
            json!({"name": "orders", "partitions": 1}),
            StatusCode::CONFLICT,
            "topic_exists",
        ),
        (
            json!({"name": "bad name"}),
            StatusCode::BAD_REQUEST,
            "invalid_topic",
        ),
        (
            json!({"name": "x", "partitions": 0}),
            StatusCode::BAD_REQUEST,
            "invalid_partitions",
        ),
        (
            json!({"name": "x", "configs": {"retention.ms": "soon"}}),
            StatusCode::BAD_REQUEST,
            "invalid_config",
        ),
        (
            json!({"name": "x", "configs": {"nope": "1"}}),
            StatusCode::BAD_REQUEST,
            "invalid_config",
        ),
        (json!({"nam": "x"}), StatusCode::BAD_REQUEST, "bad_request"),
    ] {
        let (s, b) = call(&state, Method::POST, "/v1/topics", Some(body.clone())).await;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (status, Some(code)),
            "{body} -> {b}"
        );
        assert!(b["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    let req = Request::builder()
        .method(Method::POST)
        .uri("/v1/topics")
        .header("content-type", "application/json")
        .body(Body::from("{not json"))
        .unwrap();
    assert_eq!(
        router(state.clone()).oneshot(req).await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );

    let (s, b) = call(&state, Method::GET, "/v1/topics", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["topics"][0]["name"], "orders");
    let (s, b) = call(
        &state,
        Method::PATCH,
        "/v1/topics/orders/configs",
        Some(json!({"set": {"segment.bytes": "1048576"}, "delete": ["retention.ms"]})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let seg = b["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "segment.bytes")
        .unwrap()
        .clone();
    assert_eq!(seg["value"], "1048576");
    let (s, _) = call(
        &state,
        Method::PATCH,
        "/v1/topics/orders/configs",
        Some(json!({"set": {"segment.bytes": "1"}})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, b) = call(
        &state,
        Method::POST,
        "/v1/topics/orders/partitions",
        Some(json!({"count": 5})),
    )
    .await;
    assert_eq!(
        (s, b["partitions"].as_array().unwrap().len()),
        (StatusCode::OK, 5)
    );
    let (s, _) = call(
        &state,
        Method::POST,
        "/v1/topics/orders/partitions",
        Some(json!({"count": 2})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(
        call(&state, Method::GET, "/v1/topics/nope", None).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(&state, Method::DELETE, "/v1/topics/orders", None)
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(&state, Method::DELETE, "/v1/topics/orders", None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(&state, Method::GET, "/v1/nothing", None).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn groups_report_lag_and_reset_only_when_empty() {
    use strata_broker::groups::{CommittedOffset, OffsetCommit};
    let dir = tempfile::tempdir().unwrap();
    let state = AdminState::new(None);
    let b = broker(dir.path()).await;
    state.set_broker(b.clone());
    call(
        &state,
        Method::POST,
        "/v1/topics",
        Some(json!({"name": "t", "partitions": 2})),
    )
    .await;
    for p in b.topic("t").unwrap().partitions() {
        let mut batch = strata_log::batch::testing::batch(10, 5, 0);
        p.append(&mut batch, p.leader_epoch()).unwrap();
        p.sync_to(10).unwrap();
    }
    b.groups()
        .commit(
            "g",
            vec![OffsetCommit {
                topic: "t".into(),
                partition: 0,
                value: CommittedOffset {
                    offset: 4,
                    leader_epoch: -1,
                    metadata: String::new(),
                    commit_timestamp: 0,
                },
            }],
        )
        .unwrap();
    let (s, body) = call(&state, Method::GET, "/v1/groups/g", None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["lag"], 6);
    assert_eq!(body["offsets"][0]["committed"], 4);
    let (_, list) = call(&state, Method::GET, "/v1/groups", None).await;
    assert_eq!(list["groups"][0]["group"], "g");
    assert_eq!(list["groups"][0]["lag"], 6);

    let (s, body) = call(
        &state,
        Method::POST,
        "/v1/groups/g/reset-offsets",
        Some(json!({"topic": "t", "to": "latest"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["offsets"].as_array().unwrap().len(), 2);
    assert_eq!(
        call(&state, Method::GET, "/v1/groups/g", None).await.1["lag"],
        0
    );
    let (s, _) = call(
        &state,
        Method::POST,
        "/v1/groups/g/reset-offsets",
        Some(json!({"to": {"offset": 3}})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        call(&state, Method::GET, "/v1/groups/g", None).await.1["lag"],
        14
    );
    let (s, b2) = call(
        &state,
        Method::POST,
        "/v1/groups/g/reset-offsets",
        Some(json!({"to": "yesterday"})),
    )
    .await;
    assert_eq!(
        (s, b2["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_request"))
    );
    assert_eq!(
        call(
            &state,
            Method::POST,
            "/v1/groups/g/reset-offsets",
            Some(json!({"topic": "zz", "to": "latest"}))
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    // With a member, resets and deletion are refused: the consumer would
    // overwrite the offsets.
    let join = strata_broker::groups::JoinRequest {
        member_id: String::new(),
        instance_id: None,
        client_id: "c".into(),
        client_host: "/127.0.0.1".into(),
        session_timeout_ms: 30_000,
        rebalance_timeout_ms: 30_000,
        protocol_type: "consumer".into(),
        protocols: vec![("range".into(), bytes::Bytes::new())],
        require_known_member_id: false,
    };
    let _pending = b.groups().join("g", join);
    let (s, body) = call(
        &state,
        Method::POST,
        "/v1/groups/g/reset-offsets",
        Some(json!({"to": "earliest"})),
    )
    .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("group_not_empty")),
        "{body}"
    );
    assert_eq!(
        call(&state, Method::DELETE, "/v1/groups/g", None).await.0,
        StatusCode::CONFLICT
    );
    let member = b.groups().describe("g").unwrap().members[0]
        .member_id
        .clone();
    b.groups().leave("g", &[(member, None)]);
    assert_eq!(
        call(&state, Method::DELETE, "/v1/groups/g", None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(&state, Method::GET, "/v1/groups/g", None).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn broker_info_tier_status_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let state = AdminState::new(None);
    state.set_broker(broker(dir.path()).await);
    let (s, info) = call(&state, Method::GET, "/v1/broker", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(info["config"]["tier"]["object_store"], "memory://");
    assert!(info["cluster_id"].as_str().is_some_and(|c| c.len() == 22));
    let (s, tier) = call(&state, Method::GET, "/v1/tier", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(tier["store"]["reachable"], true);
    assert_eq!(tier["cache"]["memory_budget_bytes"], 256 << 20);
    let (s, text) = call(&state, Method::GET, "/metrics", None).await;
    assert_eq!(s, StatusCode::OK);
    let text = text.as_str().unwrap().to_string();
    assert!(text.contains("strata_object_store_reachable 1"), "{text}");
    assert!(text.contains("# TYPE strata_cold_cache_bytes gauge"));
}

#[tokio::test]
async fn the_cluster_view_of_a_single_broker() {
    let dir = tempfile::tempdir().unwrap();
    let state = AdminState::new(None);
    state.set_broker(broker(dir.path()).await);
    call(
        &state,
        Method::POST,
        "/v1/topics",
        Some(json!({"name": "t", "partitions": 2})),
    )
    .await;
    let (status, v) = call(&state, Method::GET, "/v1/cluster", None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["mode"], "single");
    assert_eq!(v["controller"], 0);
    assert_eq!(v["brokers"].as_array().unwrap().len(), 1);
    let parts = v["topics"][0]["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 2);
    for p in parts {
        assert_eq!(
            (p["leader"].clone(), p["replicas"].clone(), p["isr"].clone()),
            (json!(0), json!([0]), json!([0]))
        );
    }
    assert_eq!(v["session"]["can_lead"], true);
    let (status, probe) = call(&state, Method::GET, "/v1/cluster/store-probe", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(probe["broker_id"], 0);
}

//! The HTTP side of a broker: liveness, readiness, Prometheus metrics and
//! the REST admin API (`/v1/...`), with JSON errors that say what to do.
//!
//! The router serves from the moment the listener is bound: `/healthz`
//! answers at once, `/readyz` says 503 with the reasons until log recovery
//! has finished, the Kafka listener is up, the object tier answers and, in a
//! cluster, the broker is registered with every replica it holds back in the
//! ISR; the admin routes answer 503 until the broker is open.

pub mod api;
pub mod auth;
pub mod metrics;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use strata_broker::Broker;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// What the HTTP side shares with the rest of the process.
pub struct AdminState {
    broker: OnceLock<Arc<Broker>>,
    kafka_up: AtomicBool,
    stopping: AtomicBool,
    prometheus: Option<PrometheusHandle>,
    started: Instant,
    http_auth: auth::HttpAuth,
}

impl AdminState {
    /// State for a process that is starting. `prometheus` renders `/metrics`.
    pub fn new(prometheus: Option<PrometheusHandle>) -> Arc<Self> {
        Self::with_auth(prometheus, auth::HttpAuth::default())
    }

    /// State whose admin routes require what `http_auth` says.
    pub fn with_auth(prometheus: Option<PrometheusHandle>, http_auth: auth::HttpAuth) -> Arc<Self> {
        Arc::new(Self {
            broker: OnceLock::new(),
            kafka_up: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            prometheus,
            started: Instant::now(),
            http_auth,
        })
    }

    /// The broker is open (recovery done).
    pub fn set_broker(&self, broker: Arc<Broker>) {
        let _ = self.broker.set(broker);
    }

    /// The Kafka listener accepts connections.
    pub fn set_kafka_up(&self, up: bool) {
        self.kafka_up.store(up, Ordering::SeqCst);
    }

    /// Shutdown has begun: not ready any more.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub(crate) fn broker(&self) -> Result<&Arc<Broker>, ApiProblem> {
        self.broker.get().ok_or_else(|| {
            ApiProblem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "starting",
                "the broker is still opening its data directory; retry in a moment",
            )
        })
    }

    pub(crate) fn uptime_seconds(&self) -> u64 {
        self.started.elapsed().as_secs()
    }
}

/// An error answer: `{"error": {"code": ..., "message": ...}}`.
#[derive(Debug)]
pub struct ApiProblem {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiProblem {
    /// A problem with an HTTP status, a stable code and a message saying what to do.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// The `{"code", "message"}` object.
    pub(crate) fn body(&self) -> serde_json::Value {
        json!({"code": self.code, "message": self.message})
    }
}

impl IntoResponse for ApiProblem {
    fn into_response(self) -> Response {
        (self.status, Json(json!({"error": self.body()}))).into_response()
    }
}

/// The whole HTTP surface.
pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::render))
        .nest("/v1", api::routes())
        .fallback(|| async {
            ApiProblem::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint: see docs/admin-api.md for the routes",
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require,
        ))
        .with_state(state)
}

async fn readyz(State(state): State<Arc<AdminState>>) -> Response {
    let mut reasons = Vec::new();
    if state.stopping.load(Ordering::SeqCst) {
        reasons.push("shutting down".to_string());
    }
    match state.broker.get() {
        None => reasons.push("log recovery in progress".to_string()),
        Some(b) => {
            let session = b.metadata().session();
            if session.broker_epoch() == 0 {
                reasons.push("not registered in the cluster".to_string());
            }
            // After a restart the broker's replicas are out of the ISR until
            // they catch up; readiness waits, so a rolling restart does not
            // take the next broker while partitions lack an in-sync replica.
            let behind = b.image().replicas_catching_up(b.node_id());
            if !behind.is_empty() {
                let shown: Vec<String> = behind
                    .iter()
                    .take(5)
                    .map(|(t, p)| format!("{t}-{p}"))
                    .collect();
                reasons.push(format!(
                    "{} replicas on this broker are catching up with their leaders ({}{})",
                    behind.len(),
                    shown.join(", "),
                    if behind.len() > shown.len() {
                        ", ..."
                    } else {
                        ""
                    }
                ));
            }
            if !b.tier().is_reachable() {
                reasons.push(format!(
                    "object tier {} is unreachable",
                    b.tier().store_status().description
                ));
            }
        }
    }
    if !state.kafka_up.load(Ordering::SeqCst) {
        reasons.push("Kafka listener not accepting yet".to_string());
    }
    if reasons.is_empty() {
        (StatusCode::OK, Json(json!({"status": "ready"}))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "reasons": reasons})),
        )
            .into_response()
    }
}

/// Serves `router(state)` over HTTPS on `listener` until `shutdown` fires.
/// Handshakes run in their own tasks, so a slow client holds up nobody.
pub async fn serve_tls(
    listener: TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    state: Arc<AdminState>,
    shutdown: CancellationToken,
) {
    let local = listener.local_addr();
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let stop = shutdown.clone();
    let acceptor = tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = stop.cancelled() => break,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        warn!(error = %e, "https accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let tls = tls.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let handshake =
                    tokio::time::timeout(std::time::Duration::from_secs(10), tls.accept(tcp));
                match handshake.await {
                    Ok(Ok(s)) => {
                        let _ = tx.send((s, peer)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "https handshake failed"),
                    Err(_) => tracing::debug!(%peer, "https handshake timed out"),
                }
            });
        }
    });
    let listener = TlsListener {
        rx,
        local: local.unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0))),
    };
    if let Err(e) = axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
    {
        warn!(error = %e, "https listener failed");
    }
    acceptor.abort();
}

/// Finished TLS handshakes, as axum's listener.
struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        std::net::SocketAddr,
    )>,
    local: std::net::SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The acceptor stopped (shutdown): wait for the graceful end.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Serves `router(state)` on `listener` until `shutdown` fires.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, shutdown: CancellationToken) {
    if let Err(e) = axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
    {
        warn!(error = %e, "http listener failed");
    }
}

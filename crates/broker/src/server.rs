//! The Kafka listener: accepts connections, splits each into a reader that
//! decodes and applies requests in order and a writer that sends replies in
//! the same order.
//!
//! Bad input closes only the connection that sent it: an oversized or garbage
//! frame, an unknown API key or an unsupported version (but ApiVersions, which
//! is answered with UNSUPPORTED_VERSION as Kafka does). Every close is logged.
//!
//! Shutdown: when the token is cancelled the listener stops accepting, readers
//! stop reading new requests, writers finish the replies already in flight,
//! and [`serve`] returns once every connection has ended or the deadline passed.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ResponseKind};
use kafka_protocol::ResponseError;
use strata_wire::{encode_response, parse_request, Error as WireError, FrameDecoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn, Instrument};

use crate::handlers::{self, Reply};
use crate::state::Broker;

/// Replies a connection may have in flight before its reader waits.
const MAX_IN_FLIGHT: usize = 128;

type ReplyFuture = Pin<Box<dyn Future<Output = Reply> + Send>>;

enum Outgoing {
    Ready(Bytes),
    Pending {
        api_key: ApiKey,
        version: i16,
        correlation_id: i32,
        reply: ReplyFuture,
        started: Instant,
    },
}

/// Records a request answered: its count and its time to an answer.
fn observe(api_key: ApiKey, started: Instant) {
    let api = api_name(api_key);
    metrics::counter!("strata_requests_total", "api" => api).increment(1);
    metrics::histogram!("strata_request_duration_seconds", "api" => api)
        .record(started.elapsed().as_secs_f64());
}

/// The API's name as Kafka spells it (`Produce`, `Fetch`...).
fn api_name(api_key: ApiKey) -> &'static str {
    crate::error::static_name(1, api_key as i16, || format!("{api_key:?}"))
}

/// Serves Kafka clients on `listener` until `shutdown` is cancelled.
pub async fn serve(broker: Arc<Broker>, listener: TcpListener, shutdown: CancellationToken) {
    let limit = Arc::new(Semaphore::new(broker.config().max_connections));
    let tracker = TaskTracker::new();
    let mut backoff = Duration::from_millis(5);
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = limit.clone().acquire_owned() => p.expect("semaphore never closed"),
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                let broker = broker.clone();
                let shutdown = shutdown.clone();
                tracker.spawn(async move {
                    connection(broker, stream, peer, shutdown).await;
                    drop(permit);
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
    drop(listener);
    tracker.close();
    let deadline = Duration::from_millis(broker.config().shutdown_timeout_ms);
    if tokio::time::timeout(deadline, tracker.wait())
        .await
        .is_err()
    {
        warn!(
            connections = tracker.len(),
            "connections still open at the shutdown deadline"
        );
    }
}

async fn connection(
    broker: Arc<Broker>,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    metrics::counter!("strata_connections_accepted_total").increment(1);
    metrics::gauge!("strata_connections").increment(1.0);
    let _open = scopeguard(|| metrics::gauge!("strata_connections").decrement(1.0));
    debug!(%peer, "connection opened");
    let (mut rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::channel::<Outgoing>(MAX_IN_FLIGHT);
    let writer = tokio::spawn(write_loop(wr, rx, peer));
    let decoder = FrameDecoder::new(broker.config().socket_request_max_bytes);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    'conn: loop {
        loop {
            let frame = match decoder.decode(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    warn!(%peer, error = %e, "closing connection: bad frame");
                    break 'conn;
                }
            };
            match dispatch(&broker, frame, peer).await {
                Some(out) => {
                    if tx.send(out).await.is_err() {
                        break 'conn;
                    }
                }
                None => break 'conn,
            }
        }
        let read = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = rd.read_buf(&mut buf) => r,
        };
        match read {
            Ok(0) => {
                if !buf.is_empty() {
                    warn!(%peer, bytes = buf.len(), "connection closed inside a frame");
                }
                break;
            }
            Ok(_) => {}
            Err(e) => {
                debug!(%peer, error = %e, "read failed");
                break;
            }
        }
    }
    drop(tx);
    let _ = writer.await;
    debug!(%peer, "connection closed");
}

/// Decodes and applies one request. `None` closes the connection.
async fn dispatch(broker: &Arc<Broker>, frame: Bytes, peer: SocketAddr) -> Option<Outgoing> {
    let started = Instant::now();
    let request = match parse_request(frame, handlers::supported_versions) {
        Ok(r) => r,
        Err(WireError::UnsupportedVersion {
            api_key: ApiKey::ApiVersions,
            version,
            correlation_id,
        }) => {
            // Kafka answers a too-new ApiVersions with v0 and its ranges, so
            // the client can retry with a version both sides know.
            debug!(%peer, version, "ApiVersions version unsupported; answering v0");
            let mut resp = handlers::api_versions();
            resp.error_code = ResponseError::UnsupportedVersion.code();
            let bytes = encode_response(
                ApiKey::ApiVersions,
                0,
                correlation_id,
                &ResponseKind::ApiVersions(resp),
            )
            .ok()?;
            return Some(Outgoing::Ready(bytes));
        }
        Err(e) => {
            warn!(%peer, error = %e, "closing connection: request cannot be answered");
            return None;
        }
    };
    let api_key = request.api_key;
    let version = request.version();
    let correlation_id = request.header.correlation_id;
    let client_id = request
        .header
        .client_id
        .as_deref()
        .unwrap_or("")
        .to_string();
    // One span per request: every event a handler logs carries the API,
    // version and client.
    let span = tracing::info_span!("request", api = api_name(api_key), version, client_id = %client_id, %peer);
    let ctx = handlers::RequestContext {
        version,
        client_id,
        peer,
    };
    let reply = handlers::handle(broker, &ctx, request.body)
        .instrument(span)
        .await;
    match reply {
        Reply::Later(fut) => Some(Outgoing::Pending {
            api_key,
            version,
            correlation_id,
            reply: Box::pin(async move { Reply::Now(fut.await) }),
            started,
        }),
        Reply::Deferred(reply) => Some(Outgoing::Pending {
            api_key,
            version,
            correlation_id,
            reply,
            started,
        }),
        now => finish(api_key, version, correlation_id, now, started, peer).map(Outgoing::Ready),
    }
}

/// The bytes that answer a request whose reply is decided (nothing for a
/// produce with acks=0); `None` closes the connection.
fn finish(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    reply: Reply,
    started: Instant,
    peer: SocketAddr,
) -> Option<Bytes> {
    match reply {
        Reply::Now(body) => {
            observe(api_key, started);
            match encode_response(api_key, version, correlation_id, &body) {
                Ok(b) => Some(b),
                Err(e) => {
                    error!(%peer, error = %e, "cannot encode response");
                    None
                }
            }
        }
        Reply::Nothing => {
            observe(api_key, started);
            Some(Bytes::new())
        }
        Reply::Close(why) => {
            warn!(%peer, api = ?api_key, version, reason = %why, "closing connection");
            None
        }
        Reply::Later(_) | Reply::Deferred(_) => {
            error!(%peer, api = ?api_key, "a deferred reply resolved to another deferred reply");
            None
        }
    }
}

/// Runs `f` when dropped.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

async fn write_loop(wr: OwnedWriteHalf, mut rx: mpsc::Receiver<Outgoing>, peer: SocketAddr) {
    let mut out = BufWriter::with_capacity(64 * 1024, wr);
    while let Some(next) = rx.recv().await {
        let bytes = match next {
            Outgoing::Ready(b) => b,
            Outgoing::Pending {
                api_key,
                version,
                correlation_id,
                reply,
                started,
            } => match finish(api_key, version, correlation_id, reply.await, started, peer) {
                Some(b) => b,
                None => break,
            },
        };
        if !bytes.is_empty() && out.write_all(&bytes).await.is_err() {
            break;
        }
        if rx.is_empty() && out.flush().await.is_err() {
            break;
        }
    }
    let _ = out.flush().await;
    let _ = out.shutdown().await;
}

/// Runs retention and (for the interval policy) periodic flushes until cancelled.
pub async fn background(broker: Arc<Broker>, shutdown: CancellationToken) {
    let retention = Duration::from_millis(broker.config().retention_check_interval_ms.max(10));
    let flush_policy = broker.config().log.flush;
    let flush = Duration::from_millis(broker.config().log.flush_interval_ms.max(1));
    let groups = broker.config().groups.clone();
    let mut retention_tick = tokio::time::interval(retention);
    let mut flush_tick = tokio::time::interval(flush);
    let mut group_tick = tokio::time::interval(Duration::from_millis(groups.tick_interval_ms));
    let mut offsets_tick = tokio::time::interval(Duration::from_millis(
        groups.offsets_retention_check_interval_ms,
    ));
    for t in [
        &mut retention_tick,
        &mut flush_tick,
        &mut group_tick,
        &mut offsets_tick,
    ] {
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    let tier = broker.tier().clone();
    let tier_task = tokio::spawn(tier.clone().run(
        broker.clone() as Arc<dyn strata_tier::TierHost>,
        retention,
        shutdown.clone(),
    ));
    let cleaner_task = tokio::spawn(crate::cleaner::run(broker.clone(), shutdown.clone()));
    let lake_task = tokio::spawn(broker.lake().clone().run(
        broker.clone() as Arc<dyn strata_lake::LakeHost>,
        shutdown.clone(),
    ));
    let mut snapshot_tick = tokio::time::interval(Duration::from_millis(
        tier.config().metadata_snapshot_interval_ms,
    ));
    snapshot_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = snapshot_tick.tick() => {
                crate::tiering::snapshot_metadata(&broker).await;
            }
            _ = group_tick.tick() => {
                let b = broker.clone();
                if let Err(e) = tokio::task::spawn_blocking(move || b.groups().tick()).await {
                    error!(error = %e, "group coordinator tick failed");
                }
            }
            _ = offsets_tick.tick() => {
                let b = broker.clone();
                let now = crate::state::now_ms();
                if let Err(e) = tokio::task::spawn_blocking(move || b.groups().expire_offsets(now)).await {
                    error!(error = %e, "offset expiration failed");
                }
            }
            _ = retention_tick.tick() => {
                broker.refresh_followed_manifests().await;
                let b = broker.clone();
                if let Err(e) = tokio::task::spawn_blocking(move || b.enforce_retention()).await {
                    error!(error = %e, "retention task failed");
                }
            }
            _ = flush_tick.tick(), if flush_policy == crate::config::FlushPolicy::Interval => {
                let b = broker.clone();
                if let Err(e) = tokio::task::spawn_blocking(move || b.flush_all()).await {
                    error!(error = %e, "flush task failed");
                }
            }
        }
    }
    let _ = tier_task.await;
    let _ = lake_task.await;
    let _ = cleaner_task.await;
    info!("background tasks stopped");
}

//! The Kafka listener: accepts connections, splits each into a reader that
//! decodes and applies requests in order and a writer that sends replies in
//! the same order.
//!
//! Bad input closes only the connection that sent it: an oversized or garbage
//! frame, an unknown API key or an unsupported version (but ApiVersions, which
//! is answered with UNSUPPORTED_VERSION as Kafka does). Every close is logged.
//!
//! Each listener has a security protocol. TLS listeners run the handshake
//! before the first byte is read (a client certificate names the principal).
//! On SASL listeners a connection may send only ApiVersions, SaslHandshake
//! and SaslAuthenticate, in frames no larger than `auth.sasl_max_receive_bytes`,
//! until it authenticates; anything else closes it. A failed authentication
//! is answered at once and the connection closed
//! `auth.failed_authentication_delay_ms` later.
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
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn, Instrument};

use crate::handlers::{self, Reply};
use crate::security::sasl::{Outcome, SaslSession};
use crate::security::{Identity, Listener};
use crate::state::Broker;

/// How long a client has to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection on a SASL listener has to authenticate.
const AUTHENTICATION_TIMEOUT: Duration = Duration::from_secs(30);

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

/// Serves Kafka clients on `listener`, secured as `security` says, until
/// `shutdown` is cancelled.
pub async fn serve(
    broker: Arc<Broker>,
    listener: TcpListener,
    security: Arc<Listener>,
    shutdown: CancellationToken,
) {
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
                let security = security.clone();
                tracker.spawn(async move {
                    accept(broker, stream, peer, security, shutdown).await;
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

/// Runs the TLS handshake where the listener asks for it, then serves the connection.
async fn accept(
    broker: Arc<Broker>,
    stream: TcpStream,
    peer: SocketAddr,
    security: Arc<Listener>,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    metrics::counter!("strata_connections_accepted_total").increment(1);
    metrics::gauge!("strata_connections").increment(1.0);
    let _open = scopeguard(|| metrics::gauge!("strata_connections").decrement(1.0));
    let anonymous = Arc::new(strata_auth::Principal::anonymous());
    match &security.tls {
        None => {
            let (rd, wr) = stream.into_split();
            connection(broker, rd, wr, peer, security, anonymous, shutdown).await;
        }
        Some(tls) => {
            let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    metrics::counter!("strata_tls_handshake_failures_total", "listener" => security.config.name.clone()).increment(1);
                    warn!(%peer, listener = %security.config.name, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    metrics::counter!("strata_tls_handshake_failures_total", "listener" => security.config.name.clone()).increment(1);
                    warn!(%peer, listener = %security.config.name, "TLS handshake timed out");
                    return;
                }
            };
            // With client certificates the subject is the principal (SASL,
            // where the listener has it, authenticates the user instead).
            let principal = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| crate::security::tls::certificate_principal(c))
                .map_or(anonymous, Arc::new);
            let (rd, wr) = tokio::io::split(tls);
            connection(broker, rd, wr, peer, security, principal, shutdown).await;
        }
    }
}

/// One connection's authentication state.
struct Session {
    listener: Arc<Listener>,
    identity: Identity,
    /// `None` on listeners without SASL.
    sasl: Option<SaslSession>,
    /// Whether requests other than the SASL ones may be served.
    authenticated: bool,
}

/// What the reader does after a request.
enum Next {
    /// Queue this reply and read on.
    Send(Outgoing),
    /// Queue this reply, then close.
    SendAndClose(Outgoing),
    /// Close now.
    Close,
}

async fn connection<R, W>(
    broker: Arc<Broker>,
    mut rd: R,
    wr: W,
    peer: SocketAddr,
    listener: Arc<Listener>,
    principal: Arc<strata_auth::Principal>,
    shutdown: CancellationToken,
) where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send + 'static,
{
    debug!(%peer, listener = %listener.config.name, "connection opened");
    let sasl_required = listener.config.protocol.sasl();
    let mut session = Session {
        identity: Identity {
            principal,
            host: peer.ip().to_canonical(),
            listener: Arc::from(listener.config.name.as_str()),
        },
        sasl: sasl_required.then(|| SaslSession::new(listener.mechanisms.clone(), listener.reauth)),
        authenticated: !sasl_required,
        listener,
    };
    let (tx, rx) = mpsc::channel::<Outgoing>(MAX_IN_FLIGHT);
    let writer = tokio::spawn(write_loop(wr, rx, peer));
    let full = broker.config().socket_request_max_bytes;
    let mut decoder = FrameDecoder::new(if session.authenticated {
        full
    } else {
        session.listener.unauthenticated_max_bytes.min(full)
    });
    let auth_deadline = tokio::time::Instant::now() + AUTHENTICATION_TIMEOUT;
    let mut buf = BytesMut::with_capacity(if session.authenticated {
        64 * 1024
    } else {
        4096
    });
    'conn: loop {
        loop {
            let frame = match decoder.decode(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    warn!(%peer, authenticated = session.authenticated, error = %e, "closing connection: bad frame");
                    break 'conn;
                }
            };
            let was_authenticated = session.authenticated;
            match dispatch(&broker, frame, peer, &mut session).await {
                Next::Send(out) => {
                    if tx.send(out).await.is_err() {
                        break 'conn;
                    }
                }
                Next::SendAndClose(out) => {
                    // As Kafka does: answer at once, close after the failed
                    // authentication delay, reading nothing more meanwhile.
                    // The client reads the error before the close, and a
                    // password guesser gets one guess per delay.
                    let _ = tx.send(out).await;
                    tokio::time::sleep(session.listener.failure_delay).await;
                    break 'conn;
                }
                Next::Close => break 'conn,
            }
            if session.authenticated && !was_authenticated {
                decoder = FrameDecoder::new(full);
            }
        }
        let read = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(auth_deadline), if !session.authenticated => {
                warn!(%peer, listener = %session.listener.config.name, "closing connection: not authenticated in time");
                break;
            }
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

/// Answers SaslHandshake and SaslAuthenticate from the connection's session.
async fn sasl_request(
    broker: &Arc<Broker>,
    session: &mut Session,
    request: kafka_protocol::messages::RequestKind,
    peer: SocketAddr,
) -> (ResponseKind, bool) {
    use kafka_protocol::messages::RequestKind as R;
    let listener = session.listener.config.name.clone();
    let Some(sasl) = session.sasl.as_mut() else {
        // Kafka answers SASL requests on a listener without SASL with ILLEGAL_SASL_STATE.
        return match request {
            R::SaslHandshake(_) => {
                let mut r = kafka_protocol::messages::SaslHandshakeResponse::default();
                r.error_code = ResponseError::IllegalSaslState.code();
                (ResponseKind::SaslHandshake(r), true)
            }
            _ => {
                let mut r = kafka_protocol::messages::SaslAuthenticateResponse::default();
                r.error_code = ResponseError::IllegalSaslState.code();
                (ResponseKind::SaslAuthenticate(r), true)
            }
        };
    };
    match request {
        R::SaslHandshake(r) => {
            let resp = sasl.handshake(&r.mechanism);
            let close = resp.error_code != 0;
            if close {
                warn!(%peer, %listener, mechanism = %r.mechanism.as_str(), "SASL mechanism not offered");
            }
            (ResponseKind::SaslHandshake(resp), close)
        }
        R::SaslAuthenticate(r) => {
            // PLAIN derives the salted password (thousands of hash rounds):
            // off the async workers, so a client guessing passwords slows
            // nobody else.
            let image = broker.image();
            let mut owned = std::mem::replace(sasl, SaslSession::new(Vec::new(), None));
            let (owned, resp, outcome) = match tokio::task::spawn_blocking(move || {
                let (resp, outcome) = owned.authenticate(&r.auth_bytes, Instant::now(), |u, m| {
                    image.security.credential(u, m).cloned()
                });
                (owned, resp, outcome)
            })
            .await
            {
                Ok(done) => done,
                Err(e) => {
                    error!(%peer, error = %e, "authentication task failed");
                    let mut r = kafka_protocol::messages::SaslAuthenticateResponse::default();
                    r.error_code = ResponseError::SaslAuthenticationFailed.code();
                    return (ResponseKind::SaslAuthenticate(r), true);
                }
            };
            *sasl = owned;
            match outcome {
                Outcome::Continue => (ResponseKind::SaslAuthenticate(resp), false),
                Outcome::Authenticated(p) => {
                    metrics::counter!("strata_authentications_total", "listener" => listener.clone(), "result" => "success").increment(1);
                    debug!(%peer, %listener, principal = %p, "authenticated");
                    session.identity.principal = Arc::new(p);
                    session.authenticated = true;
                    (ResponseKind::SaslAuthenticate(resp), false)
                }
                Outcome::Failed { reason, user } => {
                    metrics::counter!("strata_authentications_total", "listener" => listener.clone(), "result" => "failure").increment(1);
                    warn!(%peer, %listener, user = user.as_deref().unwrap_or("-"), %reason, "authentication failed");
                    (ResponseKind::SaslAuthenticate(resp), true)
                }
            }
        }
        _ => unreachable!("only SASL requests come here"),
    }
}

/// Decodes and applies one request.
async fn dispatch(
    broker: &Arc<Broker>,
    frame: Bytes,
    peer: SocketAddr,
    session: &mut Session,
) -> Next {
    let started = Instant::now();
    if !session.authenticated {
        // Before authentication only the header is read: the body of
        // anything but the three SASL-phase APIs is never decoded.
        let allowed = strata_wire::peek_header(&frame).is_some_and(|(key, _, _)| {
            [
                ApiKey::ApiVersions,
                ApiKey::SaslHandshake,
                ApiKey::SaslAuthenticate,
            ]
            .iter()
            .any(|k| *k as i16 == key)
        });
        if !allowed {
            metrics::counter!("strata_unauthenticated_requests_total", "listener" => session.listener.config.name.clone()).increment(1);
            warn!(%peer, listener = %session.listener.config.name, "closing connection: request before authentication");
            return Next::Close;
        }
    }
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
            return match encode_response(
                ApiKey::ApiVersions,
                0,
                correlation_id,
                &ResponseKind::ApiVersions(resp),
            ) {
                Ok(bytes) => Next::Send(Outgoing::Ready(bytes)),
                Err(_) => Next::Close,
            };
        }
        Err(e) => {
            warn!(%peer, error = %e, "closing connection: request cannot be answered");
            return Next::Close;
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
    let is_sasl = matches!(api_key, ApiKey::SaslHandshake | ApiKey::SaslAuthenticate);
    if is_sasl {
        let (body, close) = sasl_request(broker, session, request.body, peer)
            .instrument(span)
            .await;
        return match finish(
            api_key,
            version,
            correlation_id,
            Reply::Now(body),
            started,
            peer,
        ) {
            Some(b) if close => Next::SendAndClose(Outgoing::Ready(b)),
            Some(b) => Next::Send(Outgoing::Ready(b)),
            None => Next::Close,
        };
    }
    if session
        .sasl
        .as_ref()
        .is_some_and(|s| s.expired(Instant::now()))
    {
        warn!(%peer, principal = %session.identity.principal, "closing connection: SASL session expired without re-authentication");
        return Next::Close;
    }
    let ctx = handlers::RequestContext {
        version,
        client_id,
        peer,
        identity: session.identity.clone(),
    };
    let reply = handlers::handle(broker, &ctx, request.body)
        .instrument(span)
        .await;
    let out = match reply {
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
    };
    match out {
        Some(o) => Next::Send(o),
        None => Next::Close,
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

async fn write_loop<W: AsyncWrite + Unpin>(
    wr: W,
    mut rx: mpsc::Receiver<Outgoing>,
    peer: SocketAddr,
) {
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

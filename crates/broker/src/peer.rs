//! Calls from this broker to another broker over the Kafka protocol: admin
//! requests forwarded to the controller.
//!
//! One connection per peer address, one request in flight on it at a time;
//! a connection that fails is dropped and the next call dials again. Outgoing
//! connections are bound to this broker's own address, so per-address
//! firewall rules cut exactly one broker off. On a TLS or SASL inter-broker
//! listener a new connection runs the TLS handshake and authenticates as the
//! inter-broker user before its first request.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpSocket;

use crate::security::SaslMechanism;

/// Largest response a peer may send (a forwarded admin answer is small).
const MAX_RESPONSE: usize = 64 << 20;

/// Why a call to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The peer could not be reached or the connection broke.
    #[error("broker {addr}: {source}")]
    Io {
        /// The peer.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// No answer in time.
    #[error("broker {addr} did not answer within {after_ms} ms")]
    Timeout {
        /// The peer.
        addr: String,
        /// The timeout.
        after_ms: u64,
    },
    /// The answer does not decode.
    #[error("broker {addr}: {reason}")]
    Protocol {
        /// The peer.
        addr: String,
        /// What is wrong.
        reason: String,
    },
}

/// A connection to a peer: TCP, or TLS over TCP.
trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}
type Conn = Box<dyn Stream>;
/// A connection and, when its SASL session has a lifetime (KIP-368), when
/// to dial a fresh one instead of using it.
type Slot = Arc<tokio::sync::Mutex<Option<(Conn, Option<std::time::Instant>)>>>;

/// How this broker secures its connections to the others: the
/// inter-broker listener's protocol, from this side.
#[derive(Default, Clone)]
pub struct PeerSecurity {
    tls: Option<tokio_rustls::TlsConnector>,
    sasl: Option<(SaslMechanism, String, String)>,
}

impl std::fmt::Debug for PeerSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerSecurity")
            .field("tls", &self.tls.is_some())
            .field("sasl", &self.sasl.as_ref().map(|(m, u, _)| (m.name(), u)))
            .finish()
    }
}

impl PeerSecurity {
    /// From `[auth]` and the inter-broker listener's protocol; reads the
    /// password and CA files.
    pub fn from_config(config: &crate::BrokerConfig) -> Result<Self, String> {
        let auth = &config.auth;
        if auth.inter_broker_listener_name.is_empty() {
            return Ok(Self::default());
        }
        let listeners = config.kafka_listeners()?;
        let Some(l) = listeners
            .iter()
            .find(|l| l.name == auth.inter_broker_listener_name)
        else {
            return Err(format!(
                "no listener named '{}'",
                auth.inter_broker_listener_name
            ));
        };
        let tls = if l.protocol.tls() {
            let cc = crate::security::tls::client_config(&auth.inter_broker_tls_ca_file)?;
            Some(tokio_rustls::TlsConnector::from(cc))
        } else {
            None
        };
        let sasl = if l.protocol.sasl() {
            let password = std::fs::read_to_string(&auth.inter_broker_password_file)
                .map_err(|e| {
                    format!(
                        "auth.inter_broker_password_file '{}': {e}",
                        auth.inter_broker_password_file
                    )
                })?
                .trim_end_matches(['\r', '\n'])
                .to_string();
            let m = SaslMechanism::from_name(&auth.inter_broker_sasl_mechanism)
                .ok_or("unknown inter-broker SASL mechanism")?;
            Some((m, auth.inter_broker_user.clone(), password))
        } else {
            None
        };
        Ok(Self { tls, sasl })
    }
}

/// Connections to the other brokers.
pub struct Peers {
    bind: Option<IpAddr>,
    client_id: String,
    conns: Mutex<HashMap<String, Slot>>,
    correlation: AtomicI32,
    security: PeerSecurity,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("bind", &self.bind)
            .field("client_id", &self.client_id)
            .field("security", &self.security)
            .finish()
    }
}

impl Peers {
    /// How connections to peers are secured.
    pub fn security(&self) -> &PeerSecurity {
        &self.security
    }

    /// Peers dialled from `bind` (the broker's own address), naming
    /// themselves `client_id`.
    pub fn new(bind: Option<IpAddr>, client_id: String, security: PeerSecurity) -> Self {
        Self {
            bind,
            client_id,
            conns: Mutex::new(HashMap::new()),
            correlation: AtomicI32::new(1),
            security,
        }
    }

    /// Sends `body` as `api_key` v`version` to the broker at `host:port` and
    /// waits for its answer.
    pub async fn call(
        &self,
        host: &str,
        port: i32,
        api_key: ApiKey,
        version: i16,
        body: &RequestKind,
        timeout: Duration,
    ) -> Result<ResponseKind, PeerError> {
        let addr = format!("{host}:{port}");
        let slot = self
            .conns
            .lock()
            .expect("peers lock")
            .entry(addr.clone())
            .or_default()
            .clone();
        let mut conn = slot.lock().await;
        let correlation = self.correlation.fetch_add(1, Ordering::Relaxed);
        let frame =
            strata_wire::encode_request(api_key, version, correlation, &self.client_id, body)
                .map_err(|e| PeerError::Protocol {
                    addr: addr.clone(),
                    reason: e.to_string(),
                })?;
        let exchange = async {
            // A session near its end is replaced rather than re-authenticated.
            if conn
                .as_ref()
                .is_some_and(|(_, until)| until.is_some_and(|t| std::time::Instant::now() >= t))
            {
                *conn = None;
            }
            if conn.is_none() {
                *conn = Some(self.dial(&addr).await?);
            }
            let (stream, _) = conn.as_mut().expect("connected");
            exchange(stream, &frame).await
        };
        let result = match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(source)) => Err(PeerError::Io {
                addr: addr.clone(),
                source,
            }),
            Err(_) => Err(PeerError::Timeout {
                addr: addr.clone(),
                after_ms: timeout.as_millis() as u64,
            }),
        };
        let bytes = match result {
            Ok(b) => b,
            Err(e) => {
                *conn = None;
                return Err(e);
            }
        };
        let (got, response) =
            strata_wire::parse_response(api_key, version, bytes).map_err(|e| {
                *conn = None;
                PeerError::Protocol {
                    addr: addr.clone(),
                    reason: e.to_string(),
                }
            })?;
        if got != correlation {
            *conn = None;
            return Err(PeerError::Protocol {
                addr,
                reason: format!("answer to request {got}, expected {correlation}"),
            });
        }
        Ok(response)
    }

    async fn dial(&self, addr: &str) -> std::io::Result<(Conn, Option<std::time::Instant>)> {
        let tcp = self.dial_tcp(addr).await?;
        let mut conn: Conn = match &self.security.tls {
            None => Box::new(tcp),
            Some(tls) => {
                let host = addr
                    .rsplit_once(':')
                    .map_or(addr, |(h, _)| h)
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string();
                let name = rustls_pki_types::ServerName::try_from(host)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                Box::new(tls.connect(name, tcp).await?)
            }
        };
        let mut until = None;
        if let Some((mechanism, user, password)) = &self.security.sasl {
            let lifetime = self
                .authenticate(&mut conn, *mechanism, user, password)
                .await?;
            // Redial at 90% of the session, before the peer closes it.
            until = lifetime.map(|l| std::time::Instant::now() + l.mul_f64(0.9));
        }
        Ok((conn, until))
    }

    /// SaslHandshake v1 and SaslAuthenticate v2 as the inter-broker user;
    /// returns the session lifetime the peer gave, if any.
    async fn authenticate(
        &self,
        conn: &mut Conn,
        mechanism: SaslMechanism,
        user: &str,
        password: &str,
    ) -> std::io::Result<Option<Duration>> {
        use kafka_protocol::messages::{SaslAuthenticateRequest, SaslHandshakeRequest};
        let fail = |what: String| std::io::Error::new(std::io::ErrorKind::PermissionDenied, what);
        let mut hs = SaslHandshakeRequest::default();
        hs.mechanism = kafka_protocol::protocol::StrBytes::from_static_str(mechanism.name());
        match self
            .roundtrip(
                conn,
                ApiKey::SaslHandshake,
                1,
                &RequestKind::SaslHandshake(hs),
            )
            .await?
        {
            ResponseKind::SaslHandshake(r) if r.error_code == 0 => {}
            other => return Err(fail(format!("SASL handshake refused: {other:?}"))),
        }
        let mut lifetime = None;
        let mut send = async |bytes: Vec<u8>| -> std::io::Result<Bytes> {
            let mut req = SaslAuthenticateRequest::default();
            req.auth_bytes = Bytes::from(bytes);
            match self
                .roundtrip(
                    conn,
                    ApiKey::SaslAuthenticate,
                    2,
                    &RequestKind::SaslAuthenticate(req),
                )
                .await?
            {
                ResponseKind::SaslAuthenticate(r) if r.error_code == 0 => {
                    if r.session_lifetime_ms > 0 {
                        lifetime = Some(Duration::from_millis(r.session_lifetime_ms as u64));
                    }
                    Ok(r.auth_bytes)
                }
                ResponseKind::SaslAuthenticate(r) => Err(fail(format!(
                    "authentication as '{user}' failed: {}",
                    r.error_message.as_deref().unwrap_or("")
                ))),
                other => Err(fail(format!("unexpected answer {other:?}"))),
            }
        };
        match mechanism {
            SaslMechanism::Plain => {
                send(format!("\0{user}\0{password}").into_bytes()).await?;
            }
            SaslMechanism::Scram(m) => {
                let mut client = strata_auth::scram::ScramClient::new(m, user, password);
                let server_first = send(client.first()).await?;
                let last = client
                    .last(&server_first)
                    .map_err(|e| fail(e.to_string()))?;
                let server_final = send(last).await?;
                client
                    .verify(&server_final)
                    .map_err(|e| fail(format!("the peer does not know the credential: {e}")))?;
            }
        }
        Ok(lifetime)
    }

    async fn roundtrip(
        &self,
        conn: &mut Conn,
        api_key: ApiKey,
        version: i16,
        body: &RequestKind,
    ) -> std::io::Result<ResponseKind> {
        let bad = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let correlation = self.correlation.fetch_add(1, Ordering::Relaxed);
        let frame =
            strata_wire::encode_request(api_key, version, correlation, &self.client_id, body)
                .map_err(|e| bad(e.to_string()))?;
        let bytes = exchange(conn, &frame).await?;
        let (_, resp) =
            strata_wire::parse_response(api_key, version, bytes).map_err(|e| bad(e.to_string()))?;
        Ok(resp)
    }

    async fn dial_tcp(&self, addr: &str) -> std::io::Result<tokio::net::TcpStream> {
        let target: SocketAddr = match tokio::net::lookup_host(addr).await?.next() {
            Some(a) => a,
            None => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no address",
                ))
            }
        };
        let socket = if target.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = self.bind.filter(|ip| ip.is_ipv4() == target.is_ipv4()) {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let stream = socket.connect(target).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

async fn exchange(stream: &mut Conn, frame: &[u8]) -> std::io::Result<Bytes> {
    stream.write_all(frame).await?;
    let len = stream.read_i32().await?;
    if len < 4 || len as usize > MAX_RESPONSE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("response length {len}"),
        ));
    }
    let mut buf = BytesMut::zeroed(len as usize);
    stream.read_exact(&mut buf).await?;
    Ok(buf.freeze())
}

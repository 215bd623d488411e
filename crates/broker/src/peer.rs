//! Calls from this broker to another broker over the Kafka protocol: admin
//! requests forwarded to the controller.
//!
//! One connection per peer address, one request in flight on it at a time;
//! a connection that fails is dropped and the next call dials again. Outgoing
//! connections are bound to this broker's own address, so per-address
//! firewall rules cut exactly one broker off.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

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

type Slot = Arc<tokio::sync::Mutex<Option<TcpStream>>>;

/// Connections to the other brokers.
#[derive(Debug)]
pub struct Peers {
    bind: Option<IpAddr>,
    client_id: String,
    conns: Mutex<HashMap<String, Slot>>,
    correlation: AtomicI32,
}

impl Peers {
    /// Peers dialled from `bind` (the broker's own address), naming
    /// themselves `client_id`.
    pub fn new(bind: Option<IpAddr>, client_id: String) -> Self {
        Self {
            bind,
            client_id,
            conns: Mutex::new(HashMap::new()),
            correlation: AtomicI32::new(1),
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
            if conn.is_none() {
                *conn = Some(self.dial(&addr).await?);
            }
            let stream = conn.as_mut().expect("connected");
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

    async fn dial(&self, addr: &str) -> std::io::Result<TcpStream> {
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

async fn exchange(stream: &mut TcpStream, frame: &[u8]) -> std::io::Result<Bytes> {
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

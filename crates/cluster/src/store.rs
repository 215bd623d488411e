//! The metadata store: the one interface brokers use to read the cluster
//! ([`MetadataStore::subscribe`]), change it ([`MetadataStore::commit`]) and
//! learn their own standing in it ([`Session`]).
//!
//! Two implementations: [`crate::file::FileStore`] for the embedded single
//! broker (a JSON file; this broker is the only one, the controller, and
//! leads everything) and [`crate::etcd::EtcdStore`] for a cluster.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::sync::watch;

use crate::model::{BrokerId, ClusterImage, Fence, MetaOp};

/// Errors of a metadata store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A conditional write found the key changed since it was read (a
    /// concurrent change won); re-read and decide again.
    #[error("metadata changed concurrently: {0}")]
    Conflict(String),
    /// The write's fence no longer holds: the controller was replaced, or
    /// this broker's registration expired.
    #[error("fenced: {0}")]
    Fenced(String),
    /// The store did not answer (etcd unreachable or timing out).
    #[error("metadata store unavailable: {0}")]
    Unavailable(String),
    /// Local file I/O of the file store.
    #[error("metadata store i/o at {path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Stored data does not parse.
    #[error("metadata is corrupt: {0}")]
    Corrupt(String),
    /// The configuration or the data directory cannot work with this store.
    #[error("{0}")]
    Misconfigured(String),
}

impl StoreError {
    /// Whether trying again later can help.
    pub fn is_retriable(&self) -> bool {
        matches!(self, StoreError::Conflict(_) | StoreError::Unavailable(_))
    }
}

/// Result with [`StoreError`].
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Durable, shared cluster metadata.
pub trait MetadataStore: Send + Sync + std::fmt::Debug {
    /// The latest image, and every later one as it arrives.
    fn subscribe(&self) -> watch::Receiver<Arc<ClusterImage>>;
    /// The latest image.
    fn image(&self) -> Arc<ClusterImage> {
        self.subscribe().borrow().clone()
    }
    /// The image as of now, read from the store itself rather than from
    /// the (possibly lagging) watch: for decisions that must not miss a
    /// change another broker just made.
    fn fresh_image(&self) -> BoxFuture<'_, Result<Arc<ClusterImage>>>;
    /// This broker's registration and roles.
    fn session(&self) -> &Arc<Session>;
    /// Applies `ops` atomically if `fence` holds and every op's expectation
    /// holds; returns the revision of the change. Durable when it returns.
    fn commit(&self, fence: Fence, ops: Vec<MetaOp>) -> BoxFuture<'_, Result<i64>>;
    /// Reserves `count` producer ids, unique cluster-wide; returns the first.
    fn allocate_producer_ids(&self, count: i64) -> BoxFuture<'_, Result<i64>>;
    /// Marks this broker as shutting down, so the controller moves its
    /// leaderships away (controlled shutdown).
    fn begin_shutdown(&self) -> BoxFuture<'_, Result<()>>;
    /// Resigns the controller role and ends the registration (a clean stop).
    fn close(&self) -> BoxFuture<'_, ()>;
    /// Where the store is, for logs and status.
    fn describe(&self) -> String;
    /// Whether this store is shared by several brokers.
    fn is_cluster(&self) -> bool;
}

/// Waits until the image reflects `revision` (a commit's result), at most `timeout`.
pub async fn wait_for_revision(
    rx: &mut watch::Receiver<Arc<ClusterImage>>,
    revision: i64,
    timeout: Duration,
) -> bool {
    tokio::time::timeout(timeout, rx.wait_for(|img| img.revision >= revision))
        .await
        .is_ok_and(|r| r.is_ok())
}

/// What a broker knows of its own standing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionState {
    /// The epoch of this broker's registration (0 while unregistered).
    pub broker_epoch: i64,
    /// The controller epoch, while this broker is the controller.
    pub controller_epoch: Option<i64>,
    /// Whether the last call to the store succeeded.
    pub store_reachable: bool,
    /// Whether the broker serves on its peers' word that the store is down
    /// for everyone (see [`Session::can_lead`]).
    pub store_outage: bool,
}

/// A broker's session with the metadata store: its registration, whether it
/// is controller, and until when it may act as a leader.
///
/// # Leading only while the lease holds
/// A broker may act as a partition leader only while its registration is
/// known to stand. Each successful lease renewal sent at `t` makes leading
/// valid until `t + ttl - margin`: etcd cannot expire the lease before `t +
/// ttl`, so the broker stops leading before another broker can be elected
/// in its place, whether it was paused, cut off, or its renewals are late.
/// When the store cannot be reached, the broker asks its peers: if every
/// registered peer answers that it cannot reach the store either, the store
/// is down for everyone, nobody can be elected, and leading stays valid
/// (existing partitions keep serving through an etcd outage); if any peer
/// reaches the store, or any peer does not answer, leading stops.
#[derive(Debug)]
pub struct Session {
    broker_id: BrokerId,
    /// Nanoseconds since [`base`] until which leading is valid.
    valid_until: AtomicU64,
    state: watch::Sender<SessionState>,
    last_store_attempt: Mutex<Option<(Instant, bool)>>,
}

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn nanos(t: Instant) -> u64 {
    t.saturating_duration_since(base()).as_nanos() as u64
}

impl Session {
    /// A session that is not registered and may not lead.
    pub fn new(broker_id: BrokerId) -> Arc<Self> {
        base();
        Arc::new(Self {
            broker_id,
            valid_until: AtomicU64::new(0),
            state: watch::Sender::new(SessionState::default()),
            last_store_attempt: Mutex::new(None),
        })
    }

    /// A session that always stands (the single broker).
    pub fn permanent(broker_id: BrokerId, broker_epoch: i64) -> Arc<Self> {
        let s = Self::new(broker_id);
        s.valid_until.store(u64::MAX, Ordering::SeqCst);
        s.state.send_modify(|st| {
            st.broker_epoch = broker_epoch;
            st.controller_epoch = Some(broker_epoch);
            st.store_reachable = true;
        });
        s
    }

    /// This broker's id.
    pub fn broker_id(&self) -> BrokerId {
        self.broker_id
    }

    /// Whether this broker may act as a leader now.
    pub fn can_lead(&self) -> bool {
        nanos(Instant::now()) < self.valid_until.load(Ordering::SeqCst)
    }

    /// Until when leading is valid, from now (zero when it is not).
    pub fn lead_time_left(&self) -> Duration {
        let until = self.valid_until.load(Ordering::SeqCst);
        Duration::from_nanos(until.saturating_sub(nanos(Instant::now())))
    }

    /// Extends leading to `until` (never shortens it).
    pub fn extend(&self, until: Instant) {
        self.valid_until.fetch_max(nanos(until), Ordering::SeqCst);
    }

    /// Stops leading at once.
    pub fn revoke(&self) {
        self.valid_until.store(0, Ordering::SeqCst);
    }

    /// The current broker epoch (0 while unregistered).
    pub fn broker_epoch(&self) -> i64 {
        self.state.borrow().broker_epoch
    }

    /// The controller epoch, while this broker is the controller.
    pub fn controller_epoch(&self) -> Option<i64> {
        self.state.borrow().controller_epoch
    }

    /// The whole state.
    pub fn state(&self) -> SessionState {
        self.state.borrow().clone()
    }

    /// Changes to the state.
    pub fn subscribe(&self) -> watch::Receiver<SessionState> {
        self.state.subscribe()
    }

    /// Updates the state.
    pub fn update(&self, f: impl FnOnce(&mut SessionState)) {
        self.state.send_if_modified(|st| {
            let before = st.clone();
            f(st);
            *st != before
        });
    }

    /// Records the outcome of a call to the store (what peers are told).
    pub fn record_store_attempt(&self, ok: bool) {
        *self.last_store_attempt.lock().expect("store attempt lock") = Some((Instant::now(), ok));
        self.update(|s| s.store_reachable = ok);
    }

    /// What this broker tells a peer asking whether the store is reachable:
    /// the outcome of its latest attempt and how long ago it was.
    pub fn store_probe(&self) -> StoreProbe {
        let last = *self.last_store_attempt.lock().expect("store attempt lock");
        StoreProbe {
            broker_id: self.broker_id,
            reachable: last.is_some_and(|(_, ok)| ok),
            checked_ms_ago: last.map_or(u64::MAX, |(t, _)| t.elapsed().as_millis() as u64),
        }
    }
}

/// A broker's answer to "can you reach the metadata store?".
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoreProbe {
    /// Who answers.
    pub broker_id: BrokerId,
    /// Whether its latest call to the store succeeded.
    pub reachable: bool,
    /// How long ago that call was.
    pub checked_ms_ago: u64,
}

/// The verdict on a store outage from the peers' answers: the store is down
/// for everyone only when every peer answered, recently, that it cannot
/// reach it either. `recent` bounds how old a peer's own attempt may be.
pub fn outage_confirmed(
    peers: &[BrokerId],
    answers: &[Option<StoreProbe>],
    recent: Duration,
) -> bool {
    peers.len() == answers.len()
        && answers.iter().all(|a| {
            a.is_some_and(|a| !a.reachable && a.checked_ms_ago <= recent.as_millis() as u64)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_expires_and_is_extended_only_forward() {
        let s = Session::new(1);
        assert!(!s.can_lead());
        s.extend(Instant::now() + Duration::from_secs(10));
        assert!(s.can_lead());
        s.extend(Instant::now());
        assert!(s.can_lead(), "an earlier deadline does not shorten it");
        s.revoke();
        assert!(!s.can_lead());
        s.extend(Instant::now() - Duration::from_millis(1));
        assert!(!s.can_lead());
    }

    #[test]
    fn an_outage_needs_every_peer_to_agree() {
        let down = |id| {
            Some(StoreProbe {
                broker_id: id,
                reachable: false,
                checked_ms_ago: 100,
            })
        };
        let up = |id| {
            Some(StoreProbe {
                broker_id: id,
                reachable: true,
                checked_ms_ago: 100,
            })
        };
        let recent = Duration::from_secs(2);
        assert!(outage_confirmed(&[1, 2], &[down(1), down(2)], recent));
        assert!(
            !outage_confirmed(&[1, 2], &[down(1), up(2)], recent),
            "a peer reaches etcd: we are cut off"
        );
        assert!(
            !outage_confirmed(&[1, 2], &[down(1), None], recent),
            "a silent peer may reach etcd"
        );
        let stale = Some(StoreProbe {
            broker_id: 2,
            reachable: false,
            checked_ms_ago: 60_000,
        });
        assert!(!outage_confirmed(&[1, 2], &[down(1), stale], recent));
        assert!(
            outage_confirmed(&[], &[], recent),
            "no peers: nobody else can be elected"
        );
    }
}

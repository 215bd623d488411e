//! The cluster's metadata store on etcd v3.
//!
//! # Layout
//! Every key lives under `/strata/<cluster name>/` (`P`):
//!
//! | key | value | written by |
//! |---|---|---|
//! | `P cluster/id` | the cluster id | the first broker, create-only |
//! | `P brokers/<id>` | [`BrokerRegistration`] | the broker, on its lease; broker epoch = the key's create revision |
//! | `P controller` | [`ControllerInfo`] | the elected controller, create-only, on its lease; controller epoch = the key's create revision |
//! | `P topics/<name>` | [`TopicRecord`] | the controller |
//! | `P partitions/<topic id>/<index>` | [`PartitionState`] | the controller; compare-and-swap on the key's revision |
//! | `P producer-ids/next` | the next free producer id | any broker, compare-and-swap |
//!
//! # Consistency
//! Every write is one etcd transaction whose compares fence it: the
//! controller epoch for controller writes (a deposed controller's writes
//! fail), the broker epoch for a broker's own writes, and each partition
//! state's revision for partition writes. Nothing relies on holding a lock
//! or on having won an election a while ago.
//!
//! # Reads
//! A watch task lists the prefix, publishes the image, then watches from the
//! next revision; on a lost stream, a compaction or an etcd restart it lists
//! again. etcd-client's streams do not reconnect by themselves.
//!
//! # Session
//! The broker's lease is renewed every third of the session timeout; see
//! [`Session`] for when the broker may lead. A lease found expired (the
//! broker was paused or cut off) is replaced by a new registration, with a
//! new broker epoch: partitions the old registration led are not led again
//! until the controller elects this broker anew.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, KeyValue,
    PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use futures::future::BoxFuture;
use futures::FutureExt;
use strata_auth::acl::AclBinding;
use strata_auth::scram::{Mechanism, ScramCredential};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::config::ClusterConfig;
use crate::model::{
    new_cluster_id, BrokerId, BrokerRegistration, ClusterImage, ControllerInfo, Expect, Fence,
    MetaOp, PartitionState, TopicPartition, TopicRecord, Versioned,
};
use crate::store::{outage_confirmed, MetadataStore, Result, Session, StoreError, StoreProbe};

/// Keys of one cluster.
#[derive(Debug, Clone)]
struct Keys {
    prefix: String,
}

impl Keys {
    fn new(cluster_name: &str) -> Self {
        Self {
            prefix: format!("/strata/{cluster_name}/"),
        }
    }
    fn cluster_id(&self) -> String {
        format!("{}cluster/id", self.prefix)
    }
    fn broker(&self, id: BrokerId) -> String {
        format!("{}brokers/{id}", self.prefix)
    }
    fn controller(&self) -> String {
        format!("{}controller", self.prefix)
    }
    fn topic(&self, name: &str) -> String {
        format!("{}topics/{name}", self.prefix)
    }
    fn partitions_of(&self, topic_id: Uuid) -> String {
        format!("{}partitions/{topic_id}/", self.prefix)
    }
    fn partition(&self, p: TopicPartition) -> String {
        format!("{}partitions/{}/{}", self.prefix, p.topic_id, p.index)
    }
    fn producer_ids(&self) -> String {
        format!("{}producer-ids/next", self.prefix)
    }
    fn scram(&self, user: &str, mechanism: Mechanism) -> String {
        format!("{}users/{}/{user}", self.prefix, mechanism.name())
    }
    fn acl(&self, binding: &AclBinding) -> String {
        format!("{}acls/{}", self.prefix, binding.id())
    }
}

/// A key of the layout, parsed.
#[derive(Debug, PartialEq, Eq)]
enum Key<'a> {
    ClusterId,
    Broker(BrokerId),
    Controller,
    Topic(&'a str),
    Partition(TopicPartition),
    Scram(Mechanism, &'a str),
    Acl(&'a str),
    Other,
}

fn parse_key<'a>(keys: &Keys, key: &'a str) -> Key<'a> {
    let Some(rest) = key.strip_prefix(keys.prefix.as_str()) else {
        return Key::Other;
    };
    if rest == "cluster/id" {
        return Key::ClusterId;
    }
    if rest == "controller" {
        return Key::Controller;
    }
    if let Some(id) = rest.strip_prefix("brokers/") {
        return id.parse().map_or(Key::Other, Key::Broker);
    }
    if let Some(name) = rest.strip_prefix("topics/") {
        return Key::Topic(name);
    }
    if let Some(u) = rest.strip_prefix("users/") {
        if let Some((m, user)) = u.split_once('/') {
            if let Some(m) = Mechanism::from_name(m) {
                return Key::Scram(m, user);
            }
        }
    }
    if let Some(id) = rest.strip_prefix("acls/") {
        return Key::Acl(id);
    }
    if let Some(p) = rest.strip_prefix("partitions/") {
        if let Some((id, index)) = p.split_once('/') {
            if let (Ok(topic_id), Ok(index)) = (id.parse(), index.parse()) {
                return Key::Partition(TopicPartition { topic_id, index });
            }
        }
    }
    Key::Other
}

/// Applies one key's new value (`None`: deleted) to `img`.
fn apply_kv(keys: &Keys, img: &mut ClusterImage, key: &str, kv: Option<&KeyValue>) {
    let parse = |what: &str| -> Option<serde_json::Value> {
        let kv = kv?;
        match serde_json::from_slice(kv.value()) {
            Ok(v) => Some(v),
            Err(e) => {
                warn!(key, error = %e, "ignoring a {what} that does not parse");
                None
            }
        }
    };
    match parse_key(keys, key) {
        Key::ClusterId => {
            if let Some(kv) = kv {
                img.cluster_id = String::from_utf8_lossy(kv.value()).into_owned();
            }
        }
        Key::Broker(id) => {
            match parse("broker registration")
                .and_then(|v| serde_json::from_value::<BrokerRegistration>(v).ok())
            {
                Some(mut b) => {
                    b.epoch = kv.map_or(0, |kv| kv.create_revision());
                    img.brokers.insert(id, b);
                }
                None => {
                    img.brokers.remove(&id);
                }
            }
        }
        Key::Controller => {
            img.controller = parse("controller record")
                .and_then(|v| serde_json::from_value::<ControllerInfo>(v).ok())
                .map(|mut c| {
                    c.epoch = kv.map_or(0, |kv| kv.create_revision());
                    c
                });
        }
        Key::Topic(name) => {
            match parse("topic").and_then(|v| serde_json::from_value::<TopicRecord>(v).ok()) {
                Some(t) => {
                    img.topics.insert(name.to_string(), t);
                }
                None => {
                    img.topics.remove(name);
                }
            }
        }
        Key::Partition(p) => {
            match parse("partition state")
                .and_then(|v| serde_json::from_value::<PartitionState>(v).ok())
            {
                Some(s) => {
                    img.partitions.insert(
                        p,
                        Versioned {
                            value: s,
                            revision: kv.map_or(0, |kv| kv.mod_revision()),
                        },
                    );
                }
                None => {
                    img.partitions.remove(&p);
                }
            }
        }
        Key::Scram(mechanism, user) => {
            let op = match parse("SCRAM credential")
                .and_then(|v| serde_json::from_value::<ScramCredential>(v).ok())
            {
                Some(credential) => MetaOp::PutScram {
                    user: user.to_string(),
                    credential,
                },
                None => MetaOp::DeleteScram {
                    user: user.to_string(),
                    mechanism,
                },
            };
            img.security.apply(&op);
        }
        Key::Acl(id) => {
            match parse("ACL").and_then(|v| serde_json::from_value::<AclBinding>(v).ok()) {
                Some(binding) => {
                    img.security.acls.insert(id.to_string(), binding);
                }
                None => {
                    img.security.acls.remove(id);
                }
            }
        }
        Key::Other => {}
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("{what}: {e}"))
}

/// How long a broker waits for a stale registration of its id to expire
/// before it calls the id taken.
fn registration_wait(session_timeout: Duration) -> Duration {
    session_timeout + Duration::from_secs(2)
}

/// The etcd store of one broker.
pub struct EtcdStore {
    client: Client,
    keys: Keys,
    config: ClusterConfig,
    me: Mutex<BrokerRegistration>,
    /// The lease of the current registration and its granted TTL.
    lease: Mutex<(i64, Duration)>,
    session: Arc<Session>,
    image: watch::Sender<Arc<ClusterImage>>,
    shutdown: CancellationToken,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    http: reqwest::Client,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.config.etcd_endpoints)
            .field("prefix", &self.keys.prefix)
            .finish()
    }
}

impl EtcdStore {
    /// Connects to etcd, checks the cluster id against `expected_cluster_id`
    /// (the one the data directory belongs to, if any), registers `me` and
    /// starts the session, watch and controller tasks. Errors, rather than
    /// waiting forever, when etcd cannot be reached or the broker id is taken.
    pub async fn start(
        config: ClusterConfig,
        me: BrokerRegistration,
        expected_cluster_id: Option<String>,
        bind: Option<IpAddr>,
    ) -> Result<Arc<Self>> {
        let timeout = Duration::from_millis(config.etcd_request_timeout_ms);
        let endpoints = config.etcd_endpoints.join(",");
        let tls = etcd_tls(&config)?;
        let endpoints_list: Vec<tonic::transport::Endpoint> = config
            .etcd_endpoints
            .iter()
            .map(|e| {
                let ep = tonic::transport::Channel::from_shared(e.clone())
                    .map_err(|err| {
                        StoreError::Misconfigured(format!(
                            "cluster.etcd_endpoints: '{e}' is not a valid URL: {err}"
                        ))
                    })?
                    .connect_timeout(timeout)
                    .timeout(timeout)
                    .local_address(bind)
                    .tcp_nodelay(true);
                match (&tls, e.starts_with("https://")) {
                    (Some(tls), true) => ep.tls_config(tls.clone()).map_err(|err| {
                        StoreError::Misconfigured(format!("cluster: TLS to etcd at '{e}': {err}"))
                    }),
                    _ => Ok(ep),
                }
            })
            .collect::<Result<_>>()?;
        let channel = tonic::transport::Channel::balance_list(endpoints_list.into_iter());
        let mut options = ConnectOptions::new().with_timeout(timeout);
        if !config.etcd_username.is_empty() {
            options = options.with_user(&config.etcd_username, &config.etcd_password);
        }
        let mut client = tokio::time::timeout(
            timeout,
            Client::from_channel(etcd_client::Channel::Tonic(channel), Some(options)),
        )
        .await
        .map_err(|_| unavailable(&format!("cannot reach etcd at {endpoints}"), "timed out"))?
        .map_err(|e| unavailable(&format!("cannot reach etcd at {endpoints}"), e))?;
        let keys = Keys::new(&config.name);
        // The first call proves etcd answers; fail start-up clearly if not.
        let cluster_id = tokio::time::timeout(timeout, ensure_cluster_id(&mut client, &keys))
            .await
            .map_err(|_| {
                StoreError::Unavailable(format!(
                    "cannot reach etcd at {endpoints}: no answer within {} ms",
                    timeout.as_millis()
                ))
            })?
            .map_err(|e| unavailable(&format!("cannot reach etcd at {endpoints}"), e))?;
        if let Some(expected) = expected_cluster_id {
            if expected != cluster_id {
                return Err(StoreError::Misconfigured(format!(
                    "the data directory belongs to cluster {expected}, but etcd at {endpoints} (cluster name '{}') holds cluster {cluster_id}: point the broker at its own cluster's etcd and name, or give it an empty data directory",
                    config.name
                )));
            }
        }
        let mut http = reqwest::Client::builder().timeout(Duration::from_millis(500));
        if let Some(ip) = bind {
            http = http.local_address(ip);
        }
        let store = Arc::new(Self {
            client,
            keys,
            session: Session::new(me.id),
            me: Mutex::new(me),
            lease: Mutex::new((0, Duration::ZERO)),
            image: watch::Sender::new(Arc::new(ClusterImage::default())),
            shutdown: CancellationToken::new(),
            tasks: Mutex::new(Vec::new()),
            http: http
                .build()
                .map_err(|e| StoreError::Misconfigured(format!("http client: {e}")))?,
            config,
        });
        store.register().await?;
        let (img, revision) = store.list().await?;
        store.image.send_replace(Arc::new(img));
        let tasks = vec![
            tokio::spawn(store.clone().keep_alive_task()),
            tokio::spawn(store.clone().watch_task(revision)),
            tokio::spawn(store.clone().controller_task()),
        ];
        *store.tasks.lock().expect("tasks lock") = tasks;
        info!(
            broker = store.session.broker_id(),
            epoch = store.session.broker_epoch(),
            %cluster_id,
            etcd = %endpoints,
            "registered in the cluster"
        );
        Ok(store)
    }

    fn client(&self) -> Client {
        self.client.clone()
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.config.etcd_request_timeout_ms)
    }

    async fn call<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
    ) -> Result<T> {
        let out = match tokio::time::timeout(self.timeout(), f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(unavailable(what, e)),
            Err(_) => Err(unavailable(what, "timed out")),
        };
        self.session.record_store_attempt(out.is_ok());
        out
    }

    /// Registers this broker under a new lease. A registration of the same
    /// id from the same data directory (this broker before a crash) is
    /// replaced at once; one from another data directory is waited out for
    /// a session timeout, then called a duplicate.
    async fn register(&self) -> Result<()> {
        let ttl_asked = self.config.session_timeout().as_secs().max(2) as i64;
        let grant = self
            .call("lease grant", self.client().lease_grant(ttl_asked, None))
            .await?;
        let (lease, ttl) = (grant.id(), Duration::from_secs(grant.ttl().max(1) as u64));
        let sent = Instant::now();
        let id = self.session.broker_id();
        let key = self.keys.broker(id);
        let deadline = Instant::now() + registration_wait(self.config.session_timeout());
        let mut waiting_logged = false;
        loop {
            let value = serde_json::to_vec(&*self.me.lock().expect("me lock")).expect("serializes");
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.clone(),
                    value,
                    Some(PutOptions::new().with_lease(lease)),
                )])
                .or_else([TxnOp::get(key.clone(), None)]);
            let resp = self.call("register", self.client().txn(txn)).await?;
            if resp.succeeded() {
                let epoch = resp.header().map_or(0, |h| h.revision());
                *self.lease.lock().expect("lease lock") = (lease, ttl);
                self.me.lock().expect("me lock").epoch = epoch;
                self.session.extend(sent + ttl - ttl / 10);
                self.session.update(|s| s.broker_epoch = epoch);
                return Ok(());
            }
            let existing = resp.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(g) => g.kvs().first().cloned(),
                _ => None,
            });
            let Some(kv) = existing else { continue };
            let theirs: Option<BrokerRegistration> = serde_json::from_slice(kv.value()).ok();
            let mine = self.me.lock().expect("me lock").incarnation;
            if theirs.as_ref().is_some_and(|t| t.incarnation == mine) {
                info!(
                    broker = id,
                    "replacing this broker's registration from before a restart"
                );
                let del = Txn::new()
                    .when([Compare::mod_revision(
                        key.clone(),
                        CompareOp::Equal,
                        kv.mod_revision(),
                    )])
                    .and_then([TxnOp::delete(key.clone(), None)]);
                self.call("replace registration", self.client().txn(del))
                    .await?;
                if kv.lease() != 0 {
                    let _ = self
                        .call("revoke old lease", self.client().lease_revoke(kv.lease()))
                        .await;
                }
                continue;
            }
            let who = theirs.map_or_else(
                || "an unreadable registration".to_string(),
                |t| format!("the broker at {}:{}", t.host, t.port),
            );
            if Instant::now() >= deadline {
                let _ = self.client().lease_revoke(lease).await;
                return Err(StoreError::Misconfigured(format!(
                    "broker id {id} is registered by {who}, which is alive: every broker needs its own cluster.broker_id"
                )));
            }
            if !waiting_logged {
                warn!(broker = id, holder = %who, "broker id is registered by another data directory; waiting for that registration to expire");
                waiting_logged = true;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Reads the whole prefix: the image and its revision.
    async fn list(&self) -> Result<(ClusterImage, i64)> {
        let resp = self
            .call(
                "list",
                self.client().get(
                    self.keys.prefix.clone(),
                    Some(GetOptions::new().with_prefix()),
                ),
            )
            .await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let mut img = ClusterImage {
            revision,
            ..Default::default()
        };
        for kv in resp.kvs() {
            if let Ok(key) = kv.key_str() {
                apply_kv(&self.keys, &mut img, key, Some(kv));
            }
        }
        Ok((img, revision))
    }

    /// Keeps the lease alive; replaces the registration when the lease is
    /// found expired; asks peers when etcd cannot be reached.
    async fn keep_alive_task(self: Arc<Self>) {
        loop {
            let (lease, ttl) = *self.lease.lock().expect("lease lock");
            let healthy = self.session.state().store_reachable;
            let pause = if healthy {
                ttl / 3
            } else {
                Duration::from_millis(250)
            };
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
            let sent = Instant::now();
            let renewal = tokio::time::timeout(
                self.timeout().min(ttl / 3),
                self.client().lease_keep_alive(lease),
            )
            .await;
            match renewal {
                Ok(Ok(_)) => {
                    self.session.record_store_attempt(true);
                    self.session.extend(sent + ttl - ttl / 10);
                    if self.session.state().store_outage {
                        info!("etcd reachable again");
                        self.session.update(|s| s.store_outage = false);
                    }
                }
                Ok(Err(etcd_client::Error::LeaseKeepAliveError(e))) => {
                    self.session.record_store_attempt(true);
                    self.session.revoke();
                    warn!(error = %e, "this broker's lease expired (it was paused or cut off from etcd): it leads nothing until it registers again and is elected anew");
                    self.reregister().await;
                }
                Ok(Err(e)) => {
                    self.session.record_store_attempt(false);
                    debug!(error = %e, "lease renewal failed");
                    self.check_outage(ttl).await;
                }
                Err(_) => {
                    self.session.record_store_attempt(false);
                    debug!("lease renewal timed out");
                    self.check_outage(ttl).await;
                }
            }
        }
    }

    async fn reregister(&self) {
        let mut backoff = Duration::from_millis(100);
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            match self.register().await {
                Ok(()) => {
                    info!(
                        epoch = self.session.broker_epoch(),
                        "registered again with a new broker epoch"
                    );
                    return;
                }
                Err(e) => {
                    warn!(error = %e, "cannot register again yet");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// While etcd cannot be reached and leading is about to lapse, asks the
    /// peers whether they reach etcd; if none does, etcd is down for
    /// everyone and leading is extended (see [`Session`]).
    async fn check_outage(&self, ttl: Duration) {
        if self.session.lead_time_left() > ttl / 2 {
            return;
        }
        let img = self.image.borrow().clone();
        let me = self.session.broker_id();
        let peers: Vec<&BrokerRegistration> = img.brokers.values().filter(|b| b.id != me).collect();
        let started = Instant::now();
        let answers = futures::future::join_all(peers.iter().map(|b| self.probe(b))).await;
        let ids: Vec<BrokerId> = peers.iter().map(|b| b.id).collect();
        if outage_confirmed(&ids, &answers, ttl / 4) {
            if !self.session.state().store_outage {
                warn!(peers = ?ids, "etcd is unreachable from every broker: serving existing partitions until it returns");
                self.session.update(|s| s.store_outage = true);
            }
            self.session.extend(started + ttl / 2);
        } else if self.session.state().store_outage {
            warn!("etcd unreachable from this broker but not from all peers: no longer leading");
            self.session.update(|s| s.store_outage = false);
        }
    }

    async fn probe(&self, b: &BrokerRegistration) -> Option<StoreProbe> {
        if b.http.is_empty() {
            return None;
        }
        let url = format!("http://{}/v1/cluster/store-probe", b.http);
        let resp = self.http.get(&url).send().await.ok()?;
        resp.json::<StoreProbe>().await.ok()
    }

    /// Lists, then watches from the next revision; lists again whenever the
    /// watch ends.
    async fn watch_task(self: Arc<Self>, mut revision: i64) {
        let mut backoff = Duration::from_millis(100);
        let mut first = true;
        loop {
            if !first {
                tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                match self.list().await {
                    Ok((img, rev)) => {
                        revision = rev;
                        self.image.send_replace(Arc::new(img));
                        backoff = Duration::from_millis(100);
                    }
                    Err(e) => {
                        debug!(error = %e, "cannot list the cluster metadata");
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                        continue;
                    }
                }
            }
            first = false;
            let opts = WatchOptions::new()
                .with_prefix()
                .with_start_revision(revision + 1);
            let mut stream = match self
                .call(
                    "watch",
                    self.client().watch(self.keys.prefix.clone(), Some(opts)),
                )
                .await
            {
                Ok(s) => s,
                Err(e) => {
                    debug!(error = %e, "cannot watch the cluster metadata");
                    continue;
                }
            };
            loop {
                let msg = tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    m = stream.message() => m,
                };
                let resp = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) => {
                        debug!("metadata watch ended; listing again");
                        break;
                    }
                    Err(e) => {
                        debug!(error = %e, "metadata watch failed; listing again");
                        break;
                    }
                };
                if resp.canceled() || resp.compact_revision() > 0 {
                    info!(
                        reason = resp.cancel_reason(),
                        compacted = resp.compact_revision(),
                        "metadata watch cancelled; listing again"
                    );
                    break;
                }
                if resp.events().is_empty() {
                    continue;
                }
                let mut img = (**self.image.borrow()).clone();
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let Ok(key) = kv.key_str() else { continue };
                    match ev.event_type() {
                        EventType::Put => apply_kv(&self.keys, &mut img, key, Some(kv)),
                        EventType::Delete => apply_kv(&self.keys, &mut img, key, None),
                    }
                }
                if let Some(h) = resp.header() {
                    img.revision = img.revision.max(h.revision());
                    revision = img.revision;
                }
                self.image.send_replace(Arc::new(img));
            }
        }
    }

    /// Campaigns whenever nobody is controller; keeps the session's
    /// controller epoch in step with the image.
    async fn controller_task(self: Arc<Self>) {
        let mut images = self.image.subscribe();
        let mut sessions = self.session.subscribe();
        loop {
            let img = images.borrow_and_update().clone();
            let epoch = self.session.broker_epoch();
            let me = self.session.broker_id();
            let role = img
                .controller
                .filter(|c| c.broker_id == me && c.broker_epoch == epoch && epoch > 0)
                .map(|c| c.epoch);
            if role != self.session.controller_epoch() {
                match role {
                    Some(e) => info!(controller_epoch = e, "this broker is the controller"),
                    None if self.session.controller_epoch().is_some() => {
                        info!("this broker is no longer the controller")
                    }
                    None => {}
                }
                self.session.update(|s| s.controller_epoch = role);
            }
            let shutting_down = self.me.lock().expect("me lock").shutting_down;
            if img.controller.is_none() && epoch > 0 && !shutting_down {
                if let Err(e) = self.campaign(epoch).await {
                    debug!(error = %e, "controller campaign failed");
                }
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = images.changed() => {}
                _ = sessions.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    async fn campaign(&self, broker_epoch: i64) -> Result<()> {
        let (lease, _) = *self.lease.lock().expect("lease lock");
        let info = ControllerInfo {
            broker_id: self.session.broker_id(),
            broker_epoch,
            epoch: 0,
        };
        let key = self.keys.controller();
        let txn = Txn::new()
            .when([
                Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                Compare::create_revision(
                    self.keys.broker(info.broker_id),
                    CompareOp::Equal,
                    broker_epoch,
                ),
            ])
            .and_then([TxnOp::put(
                key,
                serde_json::to_vec(&info).expect("serializes"),
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let resp = self.call("campaign", self.client().txn(txn)).await?;
        if resp.succeeded() {
            debug!("won the controller election");
        }
        Ok(())
    }

    fn fence_compare(&self, fence: Fence) -> (String, i64) {
        match fence {
            Fence::Controller(epoch) => (self.keys.controller(), epoch),
            Fence::Broker(id, epoch) => (self.keys.broker(id), epoch),
        }
    }

    async fn do_commit(&self, fence: Fence, ops: Vec<MetaOp>) -> Result<i64> {
        let (fence_key, fence_epoch) = self.fence_compare(fence);
        let mut compares = vec![Compare::create_revision(
            fence_key.clone(),
            CompareOp::Equal,
            fence_epoch,
        )];
        let mut puts = Vec::new();
        for op in &ops {
            match op {
                MetaOp::PutTopic { record, create } => {
                    let key = self.keys.topic(&record.name);
                    compares.push(if *create {
                        Compare::create_revision(key.clone(), CompareOp::Equal, 0)
                    } else {
                        Compare::version(key.clone(), CompareOp::Greater, 0)
                    });
                    puts.push(TxnOp::put(key, json(record), None));
                }
                MetaOp::DeleteTopic { name, id } => {
                    puts.push(TxnOp::delete(self.keys.topic(name), None));
                    puts.push(TxnOp::delete(
                        self.keys.partitions_of(*id),
                        Some(DeleteOptions::new().with_prefix()),
                    ));
                }
                MetaOp::PutPartition {
                    partition,
                    state,
                    expect,
                } => {
                    let key = self.keys.partition(*partition);
                    compares.push(match expect {
                        Expect::Absent => {
                            Compare::create_revision(key.clone(), CompareOp::Equal, 0)
                        }
                        Expect::Revision(r) => {
                            Compare::mod_revision(key.clone(), CompareOp::Equal, *r)
                        }
                    });
                    puts.push(TxnOp::put(key, json(state), None));
                }
                MetaOp::PutScram { user, credential } => {
                    let key = self.keys.scram(user, credential.mechanism);
                    puts.push(TxnOp::put(key, json(credential), None));
                }
                MetaOp::DeleteScram { user, mechanism } => {
                    puts.push(TxnOp::delete(self.keys.scram(user, *mechanism), None));
                }
                MetaOp::PutAcl { binding } => {
                    puts.push(TxnOp::put(self.keys.acl(binding), json(binding), None));
                }
                MetaOp::DeleteAcl { binding } => {
                    puts.push(TxnOp::delete(self.keys.acl(binding), None));
                }
            }
        }
        let txn = Txn::new()
            .when(compares)
            .and_then(puts)
            .or_else([TxnOp::get(fence_key, None)]);
        let resp = self.call("commit", self.client().txn(txn)).await?;
        if resp.succeeded() {
            return Ok(resp.header().map_or(0, |h| h.revision()));
        }
        let fence_holds = resp.op_responses().into_iter().any(|r| match r {
            TxnOpResponse::Get(g) => g
                .kvs()
                .first()
                .is_some_and(|kv| kv.create_revision() == fence_epoch),
            _ => false,
        });
        if fence_holds {
            Err(StoreError::Conflict(
                "a key changed since it was read".into(),
            ))
        } else {
            Err(StoreError::Fenced(match fence {
                Fence::Controller(e) => {
                    format!("controller epoch {e} is over: another broker is controller")
                }
                Fence::Broker(id, e) => {
                    format!("broker {id}'s registration at epoch {e} is gone")
                }
            }))
        }
    }

    async fn do_allocate(&self, count: i64) -> Result<i64> {
        let key = self.keys.producer_ids();
        for _ in 0..100 {
            let resp = self
                .call("read producer ids", self.client().get(key.clone(), None))
                .await?;
            let (next, compare) = match resp.kvs().first() {
                Some(kv) => {
                    let n: i64 = kv
                        .value_str()
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| {
                            StoreError::Corrupt(format!("{key} does not hold a number"))
                        })?;
                    (
                        n,
                        Compare::mod_revision(key.clone(), CompareOp::Equal, kv.mod_revision()),
                    )
                }
                None => (
                    0,
                    Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                ),
            };
            let txn = Txn::new().when([compare]).and_then([TxnOp::put(
                key.clone(),
                (next + count).to_string(),
                None,
            )]);
            if self
                .call("allocate producer ids", self.client().txn(txn))
                .await?
                .succeeded()
            {
                return Ok(next);
            }
        }
        Err(StoreError::Conflict(
            "producer id block contended 100 times".into(),
        ))
    }

    async fn do_begin_shutdown(&self) -> Result<()> {
        let (lease, _) = *self.lease.lock().expect("lease lock");
        let (value, epoch) = {
            let mut me = self.me.lock().expect("me lock");
            me.shutting_down = true;
            (serde_json::to_vec(&*me).expect("serializes"), me.epoch)
        };
        let key = self.keys.broker(self.session.broker_id());
        let mut compares = vec![Compare::create_revision(
            key.clone(),
            CompareOp::Equal,
            epoch,
        )];
        let mut ops = vec![TxnOp::put(
            key,
            value,
            Some(PutOptions::new().with_lease(lease)),
        )];
        // A controller shutting down hands the role over first: the next
        // controller moves this broker's leaderships.
        if let Some(ce) = self.session.controller_epoch() {
            compares.push(Compare::create_revision(
                self.keys.controller(),
                CompareOp::Equal,
                ce,
            ));
            ops.push(TxnOp::delete(self.keys.controller(), None));
        }
        let resp = self
            .call(
                "begin shutdown",
                self.client().txn(Txn::new().when(compares).and_then(ops)),
            )
            .await?;
        if !resp.succeeded() {
            return Err(StoreError::Fenced("registration changed".into()));
        }
        Ok(())
    }

    async fn do_close(&self) {
        self.shutdown.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock().expect("tasks lock"));
        for t in tasks {
            let _ = t.await;
        }
        self.session.revoke();
        if let Some(ce) = self.session.controller_epoch() {
            let key = self.keys.controller();
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, ce)])
                .and_then([TxnOp::delete(key, None)]);
            let _ = self.call("resign", self.client().txn(txn)).await;
        }
        let (lease, _) = *self.lease.lock().expect("lease lock");
        match self
            .call("revoke lease", self.client().lease_revoke(lease))
            .await
        {
            Ok(_) => info!("left the cluster"),
            Err(e) => {
                warn!(error = %e, "could not end the registration; it expires with the session timeout")
            }
        }
    }
}

fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("model values serialize")
}

async fn ensure_cluster_id(
    client: &mut Client,
    keys: &Keys,
) -> std::result::Result<String, etcd_client::Error> {
    let key = keys.cluster_id();
    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key.clone(), new_cluster_id(), None)])
        .or_else([TxnOp::get(key.clone(), None)]);
    client.txn(txn).await?;
    let resp = client.get(key, None).await?;
    Ok(resp
        .kvs()
        .first()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
        .unwrap_or_default())
}

impl MetadataStore for EtcdStore {
    fn subscribe(&self) -> watch::Receiver<Arc<ClusterImage>> {
        self.image.subscribe()
    }

    fn fresh_image(&self) -> BoxFuture<'_, Result<Arc<ClusterImage>>> {
        async move { Ok(Arc::new(self.list().await?.0)) }.boxed()
    }

    fn session(&self) -> &Arc<Session> {
        &self.session
    }

    fn commit(&self, fence: Fence, ops: Vec<MetaOp>) -> BoxFuture<'_, Result<i64>> {
        self.do_commit(fence, ops).boxed()
    }

    fn allocate_producer_ids(&self, count: i64) -> BoxFuture<'_, Result<i64>> {
        self.do_allocate(count).boxed()
    }

    fn begin_shutdown(&self) -> BoxFuture<'_, Result<()>> {
        self.do_begin_shutdown().boxed()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        self.do_close().boxed()
    }

    fn describe(&self) -> String {
        format!(
            "etcd {} under {}",
            self.config.etcd_endpoints.join(","),
            self.keys.prefix
        )
    }

    fn is_cluster(&self) -> bool {
        true
    }
}

/// The TLS settings for `https://` etcd endpoints: the CA that signed etcd's
/// certificate and, for `--client-cert-auth`, this broker's certificate and
/// key. The files are read once, at start; an unreadable file is a clear
/// error rather than a connection that never comes up.
fn etcd_tls(config: &ClusterConfig) -> Result<Option<tonic::transport::ClientTlsConfig>> {
    if !config
        .etcd_endpoints
        .iter()
        .any(|e| e.starts_with("https://"))
    {
        return Ok(None);
    }
    let read = |key: &str, path: &str| {
        std::fs::read(path).map_err(|e| {
            StoreError::Misconfigured(format!("cluster.{key}: cannot read '{path}': {e}"))
        })
    };
    let mut tls = tonic::transport::ClientTlsConfig::new().ca_certificate(
        tonic::transport::Certificate::from_pem(read("etcd_ca_file", &config.etcd_ca_file)?),
    );
    if !config.etcd_cert_file.is_empty() {
        tls = tls.identity(tonic::transport::Identity::from_pem(
            read("etcd_cert_file", &config.etcd_cert_file)?,
            read("etcd_key_file", &config.etcd_key_file)?,
        ));
    }
    Ok(Some(tls))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_back() {
        let k = Keys::new("prod");
        let id = Uuid::new_v4();
        let p = TopicPartition {
            topic_id: id,
            index: 7,
        };
        assert_eq!(parse_key(&k, &k.partition(p)), Key::Partition(p));
        assert_eq!(parse_key(&k, &k.broker(3)), Key::Broker(3));
        assert_eq!(
            parse_key(&k, &k.topic("orders.v1")),
            Key::Topic("orders.v1")
        );
        assert_eq!(parse_key(&k, &k.controller()), Key::Controller);
        assert_eq!(parse_key(&k, &k.cluster_id()), Key::ClusterId);
        assert_eq!(parse_key(&k, &k.producer_ids()), Key::Other);
        // Another cluster's keys are not ours, even with a common prefix.
        assert_eq!(parse_key(&k, &Keys::new("prod2").broker(3)), Key::Other);
        assert!(
            k.partitions_of(id).ends_with('/'),
            "a prefix delete must not reach another topic id"
        );
    }
}

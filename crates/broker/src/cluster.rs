//! The broker as a member of its cluster: its data directory's identity,
//! the tasks that follow the metadata store (applying images, the
//! controller's reconciliation), topic changes routed to the controller,
//! and controlled shutdown.
//!
//! Topic changes (create, delete, add partitions, configs) are decided by the
//! controller alone and committed fenced on its controller epoch. A broker
//! that is not the controller forwards the request over the Kafka protocol
//! (Kafka's KIP-590 forwarding), so admin requests sent to any broker work;
//! a forwarded request is never forwarded again. The single broker is its
//! own controller.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::{
    alter_configs_request::{AlterConfigsResource, AlterableConfig},
    create_partitions_request::{CreatePartitionsAssignment, CreatePartitionsTopic},
    create_topics_request::{CreatableReplicaAssignment, CreatableTopic, CreatableTopicConfig},
    AlterConfigsRequest, ApiKey, BrokerId, CreatePartitionsRequest, CreateTopicsRequest,
    DeleteTopicsRequest, RequestKind, ResponseKind, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use serde::{Deserialize, Serialize};
use strata_cluster::controller::{self, Dice, NewTopic, OPS_PER_COMMIT};
use strata_cluster::{BrokerRegistration, ClusterImage, Fence, MetaOp, StoreError, TopicRecord};
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::error::{plan_error, store_error, ApiError};
use crate::handlers::OFFSETS_TOPIC;
use crate::state::Broker;
use crate::topic_config::TopicConfig;

mod reassign;
pub use reassign::ReassignRequest;

/// `client.id` of requests one broker sends another; such requests are
/// never forwarded again.
pub const PEER_CLIENT_PREFIX: &str = "strata-broker-";

/// How long a topic change waits for a controller to be elected.
const CONTROLLER_WAIT: Duration = Duration::from_secs(15);
/// How long a forwarded topic change may take at the controller.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a committed change may take to reach this broker's image.
const PROPAGATION_WAIT: Duration = Duration::from_secs(10);

/// The host name (`HOSTNAME`, else the kernel's), for the StatefulSet ordinal.
pub fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_default()
}

/// `meta/broker.json`: which broker and cluster a data directory belongs to
/// (Kafka's `meta.properties`), and its incarnation id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DataDirIdentity {
    pub(crate) broker_id: i32,
    /// `None` until the broker first joined a cluster.
    pub(crate) cluster_id: Option<String>,
    /// Whether it was used by a broker of a cluster (else a single broker).
    pub(crate) cluster: bool,
    /// Identifies this data directory: a broker restarted on it may take
    /// over its own stale registration; another directory may not.
    pub(crate) incarnation: Uuid,
}

impl DataDirIdentity {
    const FILE: &'static str = "broker.json";

    /// Reads the identity, refusing a directory of another broker or mode.
    pub(crate) fn load(meta_dir: &Path, broker_id: i32, cluster: bool) -> anyhow::Result<Self> {
        let path = meta_dir.join(Self::FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let mut id: Self = serde_json::from_slice(&bytes)
                    .map_err(|e| anyhow::anyhow!("{} is corrupt: {e}", path.display()))?;
                if id.cluster != cluster {
                    anyhow::bail!(
                        "the data directory {} belongs to a {}, and this broker runs {}: give it its own data directory",
                        meta_dir.parent().unwrap_or(meta_dir).display(),
                        if id.cluster { "broker of a cluster" } else { "single broker" },
                        if cluster { "in a cluster ([cluster] etcd_endpoints)" } else { "alone" }
                    );
                }
                if cluster && id.broker_id != broker_id {
                    anyhow::bail!(
                        "the data directory {} belongs to broker {}, but this broker is {broker_id}: check cluster.broker_id",
                        meta_dir.parent().unwrap_or(meta_dir).display(),
                        id.broker_id
                    );
                }
                id.broker_id = broker_id;
                Ok(id)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if cluster && meta_dir.join("metadata.json").exists() {
                    anyhow::bail!(
                        "the data directory {} holds a single broker's topics; a broker joining a cluster needs an empty data directory",
                        meta_dir.parent().unwrap_or(meta_dir).display()
                    );
                }
                Ok(Self {
                    broker_id,
                    cluster_id: None,
                    cluster,
                    incarnation: Uuid::new_v4(),
                })
            }
            Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
        }
    }

    /// Records the identity (with the cluster id), durably.
    pub(crate) fn save(&self, meta_dir: &Path, cluster_id: &str) -> anyhow::Result<()> {
        let next = Self {
            cluster_id: Some(cluster_id.to_string()),
            ..self.clone()
        };
        let path = meta_dir.join(Self::FILE);
        if std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Self>(&b).ok())
            == Some(next.clone())
        {
            return Ok(());
        }
        std::fs::create_dir_all(meta_dir)?;
        crate::state::write_file_synced(&path, &serde_json::to_vec_pretty(&next)?)?;
        Ok(())
    }
}

/// Starts the tasks that follow the metadata store: applying every new
/// image to local replicas, and the controller's reconciliation while this
/// broker is controller.
pub(crate) fn spawn_tasks(broker: &Arc<Broker>) {
    tokio::spawn(apply_loop(broker.clone()));
    tokio::spawn(controller_loop(broker.clone()));
    tokio::spawn(replication_loop(broker.clone()));
}

/// Leaders drop followers that stopped catching up (every half
/// `replica_lag_time_max_ms`, as Kafka checks), and every replica
/// checkpoints its high watermark.
async fn replication_loop(broker: Arc<Broker>) {
    let lag = broker.config().cluster.replica_lag_time_max_ms;
    let mut tick = tokio::time::interval(Duration::from_millis((lag / 2).max(50)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut checkpoint = tokio::time::interval(Duration::from_secs(5));
    checkpoint.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = broker.stopping.cancelled() => return,
            _ = tick.tick() => broker.shrink_lagging_isrs(),
            _ = checkpoint.tick() => {
                let b = broker.clone();
                let _ = tokio::task::spawn_blocking(move || b.checkpoint_high_watermarks()).await;
            }
        }
    }
}

async fn apply_loop(broker: Arc<Broker>) {
    let mut images = broker.store.subscribe();
    loop {
        tokio::select! {
            _ = broker.stopping.cancelled() => return,
            r = images.changed() => if r.is_err() { return },
        }
        let img = images.borrow_and_update().clone();
        if let Err(e) = broker.apply_image(&img).await {
            warn!(revision = img.revision, error = %e, "cannot apply the cluster metadata to local replicas");
        }
    }
}

/// Whether a topic allows electing a replica outside the ISR.
fn unclean_allowed(topic: &TopicRecord) -> bool {
    topic
        .configs
        .get("unclean.leader.election.enable")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

async fn controller_loop(broker: Arc<Broker>) {
    let mut images = broker.store.subscribe();
    let mut sessions = broker.store.session().subscribe();
    let mut collected_for: Option<i64> = None;
    loop {
        if let Some(epoch) = broker.store.session().controller_epoch() {
            // Not while this controller's own change is half committed (a
            // topic created in several commits): reconciling it would race
            // the change's next commit.
            let _admin = broker.admin.lock().await;
            let img = images.borrow_and_update().clone();
            let ops = controller::reconcile(&img, unclean_allowed);
            if !ops.is_empty() {
                debug!(changes = ops.len(), "controller reconciles partitions");
            }
            for chunk in ops.chunks(OPS_PER_COMMIT) {
                match broker
                    .store
                    .commit(Fence::Controller(epoch), chunk.to_vec())
                    .await
                {
                    Ok(_) => {}
                    // The next image decides again.
                    Err(StoreError::Conflict(_)) | Err(StoreError::Fenced(_)) => break,
                    Err(e) => {
                        warn!(error = %e, "controller cannot commit partition changes; retrying");
                        break;
                    }
                }
            }
            if broker.store.is_cluster() && collected_for != Some(epoch) {
                collected_for = Some(epoch);
                tokio::spawn(collect_garbage(broker.clone()));
            }
        }
        tokio::select! {
            _ = broker.stopping.cancelled() => return,
            _ = images.changed() => {}
            _ = sessions.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// The controller's clean-up of the object tier: objects of topics that no
/// longer exist. The bucket is listed before the topics are read from the
/// store (a fresh read), so a topic created meanwhile is never taken for
/// garbage: its objects cannot be in a listing made before it existed.
async fn collect_garbage(broker: Arc<Broker>) {
    let tier = broker.tier().clone();
    let listed = match tier.list_topic_dirs().await {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "cannot list the object tier for garbage collection");
            return;
        }
    };
    let img = match broker.store.fresh_image().await {
        Ok(i) => i,
        Err(e) => {
            warn!(error = %e, "cannot read the topics for garbage collection");
            return;
        }
    };
    let live: Vec<(String, Uuid)> = img
        .topics
        .values()
        .map(|t| (t.name.clone(), t.id))
        .collect();
    match tier.collect_garbage_in(listed, &live).await {
        Ok(0) => {}
        Ok(n) => info!(
            objects = n,
            "deleted objects of topics that no longer exist"
        ),
        Err(e) => warn!(error = %e, "object tier garbage collection failed"),
    }
}

/// A topic to create.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicSpec {
    /// Name.
    pub name: String,
    /// Partitions (-1: the broker default).
    pub partitions: i32,
    /// Replication factor (-1: the broker default).
    pub replication_factor: i16,
    /// Explicit replicas per partition.
    pub assignments: Option<Vec<Vec<i32>>>,
    /// Config overrides.
    pub configs: TopicConfig,
}

/// A topic as created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedTopic {
    /// Its id.
    pub id: Uuid,
    /// Partitions.
    pub partitions: i32,
    /// Replication factor.
    pub replication_factor: i16,
    /// Config overrides.
    pub configs: TopicConfig,
}

/// Where a topic change is decided.
enum Route {
    /// Here: this broker is the controller at this epoch.
    Here(i64),
    /// At this broker.
    There(BrokerRegistration),
}

fn sb(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

impl Broker {
    /// Where topic changes go now, waiting a while for an election.
    async fn route(&self, forward: bool) -> Result<Route, ApiError> {
        let deadline = tokio::time::Instant::now() + CONTROLLER_WAIT;
        loop {
            if let Some(epoch) = self.store.session().controller_epoch() {
                return Ok(Route::Here(epoch));
            }
            let img = self.image();
            if let Some(reg) = img
                .controller
                .and_then(|c| img.brokers.get(&c.broker_id))
                .filter(|r| r.id != self.node_id())
            {
                if forward {
                    return Ok(Route::There(reg.clone()));
                }
                return Err(ApiError::new(
                    ResponseError::NotController,
                    format!("broker {} is the controller, not this one", reg.id),
                ));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::new(
                    ResponseError::NotController,
                    "no controller is elected yet; retry",
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Commits a controller decision in order and waits until this broker
    /// applied it.
    async fn commit_as_controller(
        self: &Arc<Self>,
        epoch: i64,
        commits: Vec<Vec<MetaOp>>,
    ) -> Result<(), ApiError> {
        let mut revision = 0;
        for ops in commits {
            revision = self
                .store
                .commit(Fence::Controller(epoch), ops)
                .await
                .map_err(store_error)?;
        }
        self.caught_up(|img| img.revision >= revision).await;
        Ok(())
    }

    /// Waits (bounded) until the image satisfies `ready`, then applies it
    /// locally, so a change this broker made or forwarded is visible in its
    /// next answer.
    async fn caught_up(self: &Arc<Self>, ready: impl Fn(&ClusterImage) -> bool) {
        let mut rx = self.store.subscribe();
        let _ = tokio::time::timeout(PROPAGATION_WAIT, rx.wait_for(|img| ready(img))).await;
        let img = self.image();
        if let Err(e) = self.apply_image(&img).await {
            warn!(error = %e, "cannot apply the cluster metadata to local replicas");
        }
    }

    fn check_topic_configs(&self, configs: &TopicConfig) -> Result<(), ApiError> {
        let invalid = |m: String| ApiError::new(ResponseError::InvalidConfig, m);
        configs.settings(&self.config().log).map_err(invalid)?;
        if !self.store.is_cluster() {
            return Ok(());
        }
        let tiered = configs
            .storage_policy(&self.config().log)
            .is_ok_and(|p| p.remote)
            || configs.lake(&self.config().log).is_ok_and(|l| l.is_some());
        if tiered && self.config().tier.object_store.is_empty() {
            return Err(invalid(
                "remote storage and the lake need an object store all brokers share: set tier.object_store (s3://bucket/prefix) on every broker".into(),
            ));
        }
        if tiered && !self.tier().store_status().conditional_puts {
            return Err(invalid(format!(
                "the object store {} does not enforce conditional writes, which several brokers need to share it safely",
                self.tier().store_status().description
            )));
        }
        Ok(())
    }

    /// Creates a topic (with `validate_only`, checks everything and changes
    /// nothing). `forward`: whether a broker that is not the controller may
    /// pass the request on.
    pub async fn create_topic(
        self: &Arc<Self>,
        spec: TopicSpec,
        validate_only: bool,
        forward: bool,
    ) -> Result<CreatedTopic, ApiError> {
        crate::state::validate_topic_name(&spec.name)?;
        let partitions = if spec.partitions == -1 {
            self.config().default_partitions
        } else {
            spec.partitions
        };
        if spec.assignments.is_none() && partitions < 1 {
            return Err(ApiError::new(
                ResponseError::InvalidPartitions,
                format!("number of partitions must be at least 1, got {partitions}"),
            ));
        }
        if partitions > 100_000 {
            return Err(ApiError::new(
                ResponseError::InvalidPartitions,
                format!("{partitions} partitions is more than this broker allows (100000)"),
            ));
        }
        let replication_factor = if spec.replication_factor == -1 {
            if self.store.is_cluster() {
                self.config().cluster.default_replication_factor
            } else {
                1
            }
        } else {
            spec.replication_factor
        };
        self.check_topic_configs(&spec.configs)?;
        match self.route(forward).await? {
            Route::Here(epoch) => {
                let _admin = self.admin.lock().await;
                let img = self.image();
                let new = NewTopic {
                    name: spec.name.clone(),
                    partitions,
                    replication_factor,
                    assignments: spec.assignments.clone(),
                    configs: spec.configs.0.clone(),
                };
                let (record, commits) =
                    controller::plan_create_topic(&img, &new, Uuid::new_v4(), Dice::roll())
                        .map_err(plan_error)?;
                let rf = commits
                    .iter()
                    .flatten()
                    .find_map(|op| match op {
                        MetaOp::PutPartition { state, .. } => Some(state.replicas.len() as i16),
                        _ => None,
                    })
                    .unwrap_or(replication_factor);
                let created = CreatedTopic {
                    id: record.id,
                    partitions: record.partitions,
                    replication_factor: rf,
                    configs: spec.configs.clone(),
                };
                if validate_only {
                    return Ok(created);
                }
                self.commit_as_controller(epoch, commits).await?;
                info!(topic = %spec.name, partitions = record.partitions, replication_factor = rf, id = %record.id, "topic created");
                self.metadata_changed();
                Ok(created)
            }
            Route::There(ctrl) => {
                let mut t = CreatableTopic::default();
                t.name = TopicName(sb(spec.name.clone()));
                t.num_partitions = if spec.assignments.is_some() {
                    -1
                } else {
                    partitions
                };
                t.replication_factor = if spec.assignments.is_some() {
                    -1
                } else {
                    replication_factor
                };
                t.assignments = spec
                    .assignments
                    .iter()
                    .flatten()
                    .enumerate()
                    .map(|(i, brokers)| {
                        let mut a = CreatableReplicaAssignment::default();
                        a.partition_index = i as i32;
                        a.broker_ids = brokers.iter().map(|b| BrokerId(*b)).collect();
                        a
                    })
                    .collect();
                t.configs = spec
                    .configs
                    .0
                    .iter()
                    .map(|(k, v)| {
                        let mut c = CreatableTopicConfig::default();
                        c.name = sb(k.clone());
                        c.value = Some(sb(v.clone()));
                        c
                    })
                    .collect();
                let mut req = CreateTopicsRequest::default();
                req.topics = vec![t];
                req.timeout_ms = FORWARD_TIMEOUT.as_millis() as i32;
                req.validate_only = validate_only;
                let r = self
                    .forward(
                        &ctrl,
                        ApiKey::CreateTopics,
                        7,
                        RequestKind::CreateTopics(req),
                        |r| match r {
                            ResponseKind::CreateTopics(r) => r.topics.into_iter().next(),
                            _ => None,
                        },
                    )
                    .await?;
                check(r.error_code, r.error_message)?;
                if !validate_only {
                    let (name, id) = (spec.name.clone(), r.topic_id);
                    self.caught_up(move |img| img.topics.get(&name).is_some_and(|t| t.id == id))
                        .await;
                }
                Ok(CreatedTopic {
                    id: r.topic_id,
                    partitions: r.num_partitions,
                    replication_factor: r.replication_factor,
                    configs: spec.configs,
                })
            }
        }
    }

    /// Deletes a topic: its metadata first, then (in the background) its
    /// objects in the tier and its lake files.
    pub async fn delete_topic(
        self: &Arc<Self>,
        name: &str,
        forward: bool,
    ) -> Result<Uuid, ApiError> {
        match self.route(forward).await? {
            Route::Here(epoch) => {
                let _admin = self.admin.lock().await;
                let img = self.image();
                let op = controller::plan_delete_topic(&img, name).map_err(plan_error)?;
                let MetaOp::DeleteTopic { id, .. } = op else {
                    unreachable!("a delete plan deletes")
                };
                self.commit_as_controller(epoch, vec![vec![op]]).await?;
                // The tier's copy goes in the background; a crash before it
                // finishes leaves objects the controller's garbage collection
                // removes.
                let tier = self.tier().clone();
                let lake = self.lake().clone();
                let name_owned = name.to_string();
                tokio::spawn(async move {
                    if let Err(e) = tier.delete_topic(&name_owned, id).await {
                        warn!(topic = %name_owned, %id, error = %e, "cannot delete the topic's objects now; they are removed later");
                    }
                    if let Err(e) = lake.delete_topic(&name_owned).await {
                        warn!(topic = %name_owned, error = %e, "cannot delete the topic's lake files");
                    }
                });
                Ok(id)
            }
            Route::There(ctrl) => {
                let mut req = DeleteTopicsRequest::default();
                req.topic_names = vec![TopicName(sb(name))];
                req.timeout_ms = FORWARD_TIMEOUT.as_millis() as i32;
                let r = self
                    .forward(
                        &ctrl,
                        ApiKey::DeleteTopics,
                        5,
                        RequestKind::DeleteTopics(req),
                        |r| match r {
                            ResponseKind::DeleteTopics(r) => r.responses.into_iter().next(),
                            _ => None,
                        },
                    )
                    .await?;
                check(r.error_code, r.error_message)?;
                let id = self.topic(name).map(|t| t.id).unwrap_or(r.topic_id);
                let n = name.to_string();
                self.caught_up(move |img| img.topics.get(&n).is_none_or(|t| t.id != id))
                    .await;
                Ok(id)
            }
        }
    }

    /// Raises a topic's partition count to `count`.
    pub async fn create_partitions(
        self: &Arc<Self>,
        name: &str,
        count: i32,
        assignments: Option<Vec<Vec<i32>>>,
        validate_only: bool,
        forward: bool,
    ) -> Result<(), ApiError> {
        if count > 100_000 {
            return Err(ApiError::new(
                ResponseError::InvalidPartitions,
                format!("{count} partitions is more than this broker allows (100000)"),
            ));
        }
        match self.route(forward).await? {
            Route::Here(epoch) => {
                let _admin = self.admin.lock().await;
                let img = self.image();
                let commits = controller::plan_create_partitions(
                    &img,
                    name,
                    count,
                    assignments.as_deref(),
                    Dice::roll(),
                )
                .map_err(plan_error)?;
                if validate_only {
                    return Ok(());
                }
                let from = img.topics.get(name).map_or(0, |t| t.partitions);
                self.commit_as_controller(epoch, commits).await?;
                info!(topic = name, from, to = count, "partitions added");
                self.metadata_changed();
                Ok(())
            }
            Route::There(ctrl) => {
                let mut t = CreatePartitionsTopic::default();
                t.name = TopicName(sb(name));
                t.count = count;
                t.assignments = assignments.map(|a| {
                    a.into_iter()
                        .map(|brokers| {
                            let mut x = CreatePartitionsAssignment::default();
                            x.broker_ids = brokers.into_iter().map(BrokerId).collect();
                            x
                        })
                        .collect()
                });
                let mut req = CreatePartitionsRequest::default();
                req.topics = vec![t];
                req.timeout_ms = FORWARD_TIMEOUT.as_millis() as i32;
                req.validate_only = validate_only;
                let r = self
                    .forward(
                        &ctrl,
                        ApiKey::CreatePartitions,
                        3,
                        RequestKind::CreatePartitions(req),
                        |r| match r {
                            ResponseKind::CreatePartitions(r) => r.results.into_iter().next(),
                            _ => None,
                        },
                    )
                    .await?;
                check(r.error_code, r.error_message)?;
                if !validate_only {
                    let n = name.to_string();
                    self.caught_up(move |img| {
                        img.topics.get(&n).is_some_and(|t| t.partitions >= count)
                    })
                    .await;
                }
                Ok(())
            }
        }
    }

    /// Replaces a topic's config overrides.
    pub async fn set_topic_configs(
        self: &Arc<Self>,
        name: &str,
        configs: TopicConfig,
        validate_only: bool,
        forward: bool,
    ) -> Result<(), ApiError> {
        self.check_topic_configs(&configs)?;
        let topic = self
            .topic(name)
            .ok_or_else(|| ApiError::unknown_topic(name))?;
        let policy = configs
            .storage_policy(&self.config().log)
            .map_err(|e| ApiError::new(ResponseError::InvalidConfig, e))?;
        let was_remote = topic
            .configs()
            .storage_policy(&self.config().log)
            .is_ok_and(|p| p.remote);
        if was_remote && !policy.remote {
            return Err(ApiError::new(
                ResponseError::InvalidConfig,
                format!("remote.storage.enable cannot be turned off for '{name}': its history is in the object tier"),
            ));
        }
        match self.route(forward).await? {
            Route::Here(epoch) => {
                let _admin = self.admin.lock().await;
                let img = self.image();
                let rec = img
                    .topics
                    .get(name)
                    .ok_or_else(|| ApiError::unknown_topic(name))?;
                if validate_only {
                    return Ok(());
                }
                let op = MetaOp::PutTopic {
                    record: TopicRecord {
                        configs: configs.0.clone(),
                        ..rec.clone()
                    },
                    create: false,
                };
                self.commit_as_controller(epoch, vec![vec![op]]).await?;
                self.metadata_changed();
                Ok(())
            }
            Route::There(ctrl) => {
                let mut res = AlterConfigsResource::default();
                res.resource_type = 2;
                res.resource_name = sb(name);
                res.configs = configs
                    .0
                    .iter()
                    .map(|(k, v)| {
                        let mut c = AlterableConfig::default();
                        c.name = sb(k.clone());
                        c.value = Some(sb(v.clone()));
                        c
                    })
                    .collect();
                let mut req = AlterConfigsRequest::default();
                req.resources = vec![res];
                req.validate_only = validate_only;
                let r = self
                    .forward(
                        &ctrl,
                        ApiKey::AlterConfigs,
                        2,
                        RequestKind::AlterConfigs(req),
                        |r| match r {
                            ResponseKind::AlterConfigs(r) => r.responses.into_iter().next(),
                            _ => None,
                        },
                    )
                    .await?;
                check(r.error_code, r.error_message)?;
                if !validate_only {
                    let (n, want): (String, BTreeMap<String, String>) =
                        (name.to_string(), configs.0);
                    self.caught_up(move |img| {
                        img.topics.get(&n).is_some_and(|t| t.configs == want)
                    })
                    .await;
                }
                Ok(())
            }
        }
    }

    /// Forwards a request to the controller; `pick` takes what the caller
    /// needs from the answer (`None`: not the answer expected).
    async fn forward<T>(
        &self,
        to: &BrokerRegistration,
        api: ApiKey,
        version: i16,
        body: RequestKind,
        pick: impl FnOnce(ResponseKind) -> Option<T>,
    ) -> Result<T, ApiError> {
        debug!(controller = to.id, ?api, "forwarding to the controller");
        let resp = self
            .peers
            .call(&to.host, to.port, api, version, &body, FORWARD_TIMEOUT)
            .await
            .map_err(|e| {
                ApiError::new(
                    ResponseError::NotController,
                    format!(
                        "the controller (broker {}) did not answer: {e}; retry",
                        to.id
                    ),
                )
            })?;
        pick(resp).ok_or_else(|| unexpected(to))
    }

    /// Controlled shutdown: tells the controller this broker is leaving and
    /// waits (at most `cluster.controlled_shutdown_timeout_ms`) until every
    /// partition it leads that another in-sync replica can lead has moved.
    pub async fn controlled_shutdown(&self) {
        if !self.store.is_cluster() {
            return;
        }
        if let Err(e) = self.store.begin_shutdown().await {
            warn!(error = %e, "cannot announce the shutdown to the controller; partitions move when the session ends");
            return;
        }
        let me = self.node_id();
        let timeout = Duration::from_millis(self.config().cluster.controlled_shutdown_timeout_ms);
        let mut rx = self.store.subscribe();
        let moved = tokio::time::timeout(
            timeout,
            rx.wait_for(|img| {
                img.brokers.get(&me).is_some_and(|b| b.shutting_down)
                    && controller::movable_leaderships(img, me) == 0
            }),
        )
        .await;
        match moved {
            Ok(Ok(_)) => info!("controlled shutdown: leaderships moved to other brokers"),
            _ => warn!(
                timeout_ms = timeout.as_millis() as u64,
                "controlled shutdown: leaderships did not all move in time; stopping anyway"
            ),
        }
    }

    /// Leaves the cluster: resigns the controller role and ends this
    /// broker's registration, so the others react at once.
    pub async fn leave_cluster(&self) {
        self.stopping.cancel();
        self.store.close().await;
    }
}

/// Java's `String.hashCode`.
fn java_hash(s: &str) -> i32 {
    s.encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(c as i32))
}

/// The `__consumer_offsets` partition of a group: Kafka's
/// `Utils.abs(groupId.hashCode) % partitions`.
pub fn offsets_partition(group: &str, partitions: i32) -> i32 {
    let hash = java_hash(group);
    let abs = if hash == i32::MIN { 0 } else { hash.abs() };
    abs % partitions.max(1)
}

impl Broker {
    /// The broker coordinating `group`: itself when alone; in a cluster the
    /// leader of the group's `__consumer_offsets` partition, creating that
    /// topic on first use as Kafka does. COORDINATOR_NOT_AVAILABLE while it
    /// has no leader.
    pub async fn coordinator_for(
        self: &Arc<Self>,
        group: &str,
    ) -> Result<BrokerRegistration, ApiError> {
        let img = self.image();
        if !self.store.is_cluster() {
            return img
                .brokers
                .get(&self.node_id())
                .cloned()
                .ok_or_else(|| ApiError::new(ResponseError::CoordinatorNotAvailable, "starting"));
        }
        let unavailable = |why: String| ApiError::new(ResponseError::CoordinatorNotAvailable, why);
        let topic = OFFSETS_TOPIC;
        let Some(rec) = img.topics.get(topic).cloned() else {
            let groups = &self.config().groups;
            let live = img.brokers.values().filter(|b| !b.shutting_down).count() as i16;
            let spec = TopicSpec {
                name: topic.to_string(),
                partitions: groups.offsets_topic_num_partitions,
                replication_factor: groups.offsets_topic_replication_factor.min(live.max(1)),
                assignments: None,
                configs: TopicConfig::default(),
            };
            match self.create_topic(spec, false, true).await {
                Ok(_) => info!("created the internal topic {topic}"),
                Err(e) if e.code == ResponseError::TopicAlreadyExists => {}
                Err(e) => return Err(unavailable(format!("cannot create {topic}: {}", e.message))),
            }
            return Err(unavailable(format!("{topic} is being created; retry")));
        };
        let p = offsets_partition(group, rec.partitions);
        let leader = img
            .partition(rec.id, p)
            .map(|s| s.value.leader)
            .and_then(|l| img.brokers.get(&l));
        leader.cloned().ok_or_else(|| {
            unavailable(format!(
                "{topic} partition {p}, which coordinates group '{group}', has no leader"
            ))
        })
    }

    /// Whether this broker coordinates `group` now (NOT_COORDINATOR if not).
    pub fn check_coordinator(&self, group: &str) -> Result<(), ResponseError> {
        if !self.store.is_cluster() {
            return Ok(());
        }
        let Some(t) = self.topic(OFFSETS_TOPIC) else {
            return Err(ResponseError::NotCoordinator);
        };
        let index = offsets_partition(group, t.partition_count());
        if !t.partition(index).is_some_and(|p| p.is_leader()) {
            return Err(ResponseError::NotCoordinator);
        }
        if self
            .loading_offsets
            .lock()
            .expect("loading lock")
            .contains(&index)
        {
            return Err(ResponseError::CoordinatorLoadInProgress);
        }
        Ok(())
    }
}

fn check(code: i16, message: Option<StrBytes>) -> Result<(), ApiError> {
    if code == 0 {
        return Ok(());
    }
    let code = ResponseError::try_from_code(code).unwrap_or(ResponseError::UnknownServerError);
    Err(ApiError::new(
        code,
        message.map(|m| m.to_string()).unwrap_or_default(),
    ))
}

fn unexpected(ctrl: &BrokerRegistration) -> ApiError {
    ApiError::new(
        ResponseError::UnknownServerError,
        format!(
            "the controller (broker {}) sent an unexpected answer",
            ctrl.id
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_hash_to_kafkas_offsets_partitions() {
        // Java: "my-group".hashCode() == -1906497762, Utils.abs of it % 50 == 12.
        assert_eq!(java_hash("my-group"), -1_906_497_762);
        assert_eq!(offsets_partition("my-group", 50), 12);
        assert_eq!(offsets_partition("", 50), 0);
        for g in [
            "a",
            "consumer-group-with-a-long-name-ß",
            "x".repeat(300).as_str(),
        ] {
            let p = offsets_partition(g, 7);
            assert!((0..7).contains(&p), "{g}: {p}");
        }
    }

    #[test]
    fn a_data_directory_keeps_its_broker_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path().join("meta");
        let id = DataDirIdentity::load(&meta, 2, true).unwrap();
        id.save(&meta, "cluster-a").unwrap();
        let again = DataDirIdentity::load(&meta, 2, true).unwrap();
        assert_eq!(
            again.incarnation, id.incarnation,
            "the same directory, the same incarnation"
        );
        assert_eq!(again.cluster_id.as_deref(), Some("cluster-a"));
        let other = DataDirIdentity::load(&meta, 3, true)
            .unwrap_err()
            .to_string();
        assert!(other.contains("belongs to broker 2"), "{other}");
        let mode = DataDirIdentity::load(&meta, 2, false)
            .unwrap_err()
            .to_string();
        assert!(mode.contains("broker of a cluster"), "{mode}");
    }

    #[test]
    fn a_single_brokers_directory_cannot_join_a_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path().join("meta");
        std::fs::create_dir_all(&meta).unwrap();
        std::fs::write(meta.join("metadata.json"), b"{}").unwrap();
        let e = DataDirIdentity::load(&meta, 0, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("single broker's topics"), "{e}");
        DataDirIdentity::load(&meta, 0, false).unwrap();
    }
}

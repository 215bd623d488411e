//! This broker's replicas, kept in step with the cluster image: every topic
//! of the image exists locally (its name, id, configs and partition count,
//! so Kafka handlers can answer for any topic), and every partition whose
//! replicas include this broker has a local log carrying the partition's
//! state (leader, epoch, ISR).
//!
//! [`Broker::apply_image`] is the one place local replicas change: it runs
//! at start, after every change this broker commits, and for every image the
//! metadata store delivers (changes other brokers made). It is idempotent,
//! and applications are serialized.
//!
//! Order of effects, so a crash leaves a state a restart understands:
//! - a new replica: its directory gets `partition.metadata` (the topic id)
//!   when created; a directory no topic of the image assigns here is removed
//!   at start-up;
//! - a deleted topic or a replica moved away: the directory is renamed to
//!   `*-delete` and removed; leftovers are removed at start-up.

use std::sync::Arc;

use strata_cluster::{ClusterImage, PartitionState, TopicRecord};
use tracing::{debug, info, warn};

use crate::handlers::OFFSETS_TOPIC;
use crate::state::{Broker, Leadership, Partition, Topic};
use crate::topic_config::TopicConfig;
use strata_tier::PartitionId;

/// A replica to open: its topic, index and state.
struct Opening {
    rec: TopicRecord,
    index: i32,
    state: PartitionState,
    resume: Option<(i64, bytes::Bytes)>,
}

impl Broker {
    /// Brings local topics and replicas in line with `img`.
    pub(crate) async fn apply_image(
        self: &Arc<Self>,
        img: &Arc<ClusterImage>,
    ) -> anyhow::Result<()> {
        let _turn = self.applying.lock().await;
        let me = self.node_id();
        let gone: Vec<Arc<Topic>> = self
            .topics()
            .into_iter()
            .filter(|t| img.topics.get(&t.name).map(|r| r.id) != Some(t.id))
            .collect();
        for t in gone {
            self.drop_local_topic(t).await;
        }
        let mut opening = Vec::new();
        let mut led = Vec::new();
        let mut lost = Vec::new();
        let mut moved_away = Vec::new();
        for rec in img.topics.values() {
            let topic = match self.topic(&rec.name) {
                Some(t) => t,
                None => {
                    let t = Arc::new(Topic::new(rec));
                    self.insert_topic(t.clone());
                    t
                }
            };
            topic.set_partition_count(rec.partitions);
            if topic.configs().0 != rec.configs {
                self.apply_topic_configs(&topic, &rec.configs);
            }
            for (index, state) in img.topic_partitions(rec) {
                let Some(state) = state else { continue };
                let hosted = state.value.replicas.contains(&me);
                match (topic.partition(index), hosted) {
                    (Some(p), true) => match p.set_replica_state(state.value.clone()) {
                        Leadership::Gained => led.push(p),
                        Leadership::Lost => lost.push(p),
                        Leadership::Unchanged => {}
                    },
                    (Some(p), false) => moved_away.push((topic.clone(), p)),
                    (None, true) => opening.push(Opening {
                        rec: rec.clone(),
                        index,
                        state: state.value.clone(),
                        resume: None,
                    }),
                    (None, false) => {}
                }
            }
        }
        for (topic, p) in moved_away {
            self.drop_local_partition(&topic, p).await;
        }
        if !opening.is_empty() {
            led.extend(self.open_replicas(opening).await?);
        }
        for p in lost {
            info!(topic = %p.topic, partition = p.index, "no longer leading the partition");
            if p.topic == OFFSETS_TOPIC {
                let this = self.clone();
                let index = p.index;
                let _ =
                    tokio::task::spawn_blocking(move || this.unload_offsets_partition(index)).await;
            }
        }
        for p in led {
            info!(topic = %p.topic, partition = p.index, epoch = p.leader_epoch(), "leading the partition");
            if p.topic == OFFSETS_TOPIC && self.store.is_cluster() {
                // Its groups wait (COORDINATOR_LOAD_IN_PROGRESS) from now on.
                self.loading_offsets
                    .lock()
                    .expect("loading lock")
                    .insert(p.index);
                tokio::spawn(self.clone().load_offsets_partition(p.clone()));
            }
            if p.policy().remote {
                // Fence the previous leader's uploads before ours begin.
                let tier = self.tier().clone();
                tokio::spawn(async move {
                    if let Err(e) = tier.take_leadership(p.as_ref()).await {
                        warn!(topic = %p.topic, partition = p.index, error = %e, "cannot claim the partition's remote manifest yet; the offloader retries");
                    }
                });
            }
        }
        self.update_fetchers();
        self.notify_data();
        Ok(())
    }

    /// Opens new local replicas: a fresh replica of a tiered topic continues
    /// where the object tier ends. Returns those this broker leads.
    async fn open_replicas(
        self: &Arc<Self>,
        mut opening: Vec<Opening>,
    ) -> anyhow::Result<Vec<Arc<Partition>>> {
        for o in &mut opening {
            let tiered = TopicConfig(o.rec.configs.clone())
                .storage_policy(&self.config().log)
                .is_ok_and(|p| p.remote);
            let fresh = !self
                .partition_dir(&o.rec.name, o.index)
                .join("partition.metadata")
                .exists();
            if tiered && fresh {
                let id = PartitionId {
                    topic: o.rec.name.clone(),
                    topic_id: o.rec.id,
                    partition: o.index,
                };
                o.resume = self.tier().resume_point(&id).await.map_err(|e| {
                    anyhow::anyhow!(
                        "reading {}-{} from the object tier: {e}",
                        o.rec.name,
                        o.index
                    )
                })?;
            }
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut led = Vec::new();
            for o in opening {
                let Some(topic) = this.topic(&o.rec.name).filter(|t| t.id == o.rec.id) else {
                    continue;
                };
                let settings = TopicConfig(o.rec.configs.clone())
                    .settings(&this.config().log)
                    .map_err(anyhow::Error::msg)?;
                let p =
                    this.open_partition(&o.rec, &settings, o.index, o.state, o.resume.as_ref())?;
                debug!(topic = %p.topic, partition = p.index, "replica opened");
                if p.is_leader() {
                    led.push(p.clone());
                }
                topic.insert_partition(p);
            }
            Ok(led)
        })
        .await?
    }

    /// Applies changed config overrides to a topic and its local replicas.
    fn apply_topic_configs(
        &self,
        topic: &Topic,
        configs: &std::collections::BTreeMap<String, String>,
    ) {
        let configs = TopicConfig(configs.clone());
        let log = &self.config().log;
        let (settings, lake) = match (configs.settings(log), configs.lake(log)) {
            (Ok(s), Ok(l)) => (s, l),
            (Err(e), _) | (_, Err(e)) => {
                warn!(topic = %topic.name, error = %e, "topic configs cannot be applied on this broker");
                return;
            }
        };
        let (log_config, policy) = settings;
        let min_isr = configs.min_insync_replicas(log).unwrap_or(1);
        for p in topic.partitions() {
            p.with_log(|l| l.set_config(log_config.clone()));
            p.set_policy(policy);
            p.set_lake_format(lake.clone());
            p.set_min_insync_replicas(min_isr);
        }
        topic.set_configs(configs);
        info!(topic = %topic.name, "topic configs changed");
    }

    /// Removes a deleted topic's local replicas and committed offsets.
    async fn drop_local_topic(self: &Arc<Self>, topic: Arc<Topic>) {
        self.remove_topic(&topic.name);
        for p in topic.partitions() {
            self.drop_local_partition(&topic, p).await;
        }
        self.tier().forget_topic(topic.id);
        let this = self.clone();
        let name = topic.name.clone();
        let _ = tokio::task::spawn_blocking(move || this.groups().topic_deleted(&name)).await;
        info!(topic = %topic.name, id = %topic.id, "topic deleted");
        self.metadata_changed();
    }

    /// Removes one local replica and its directory.
    async fn drop_local_partition(self: &Arc<Self>, topic: &Topic, p: Arc<Partition>) {
        topic.remove_partition(p.index);
        let this = self.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let size = p.offsets().size_bytes;
            p.release_size(size);
            let dir = this.partition_dir(&p.topic, p.index);
            let doomed = this
                .logs_dir()
                .join(format!("{}-{}.{}-delete", p.topic, p.index, p.topic_id));
            if let Err(e) = std::fs::rename(&dir, &doomed) {
                warn!(dir = %dir.display(), error = %e, "cannot rename a removed replica's directory");
                return;
            }
            if let Err(e) = std::fs::remove_dir_all(&doomed) {
                warn!(dir = %doomed.display(), error = %e, "cannot remove a removed replica's directory; removed at next start");
            }
        })
        .await;
    }
}

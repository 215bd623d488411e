//! The cluster metadata model: brokers, the controller, topics and the state
//! of every partition, as one immutable [`ClusterImage`] per revision.
//!
//! Both stores produce this model: the file store of a single broker (one
//! broker that leads everything) and the etcd store of a cluster. Brokers,
//! the controller and the Kafka handlers read images; only
//! [`MetaOp`]s committed through a store change them.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use strata_auth::acl::AclBinding;
use strata_auth::scram::{Mechanism, ScramCredential};
use uuid::Uuid;

/// A broker's id (`broker.id`, `node.id` in Kafka).
pub type BrokerId = i32;

/// The leader of a partition nobody leads.
pub const NO_LEADER: BrokerId = -1;

/// A live broker, as it registered itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerRegistration {
    /// Its id.
    pub id: BrokerId,
    /// Host clients connect to.
    pub host: String,
    /// Kafka port clients connect to.
    pub port: i32,
    /// Rack (`broker.rack`), for replica placement.
    #[serde(default)]
    pub rack: Option<String>,
    /// `host:port` of its HTTP API (health, admin, the session probe).
    #[serde(default)]
    pub http: String,
    /// Id of the data directory it runs on, so a restart of the same broker
    /// can take over its own stale registration and a second process with
    /// the same id cannot.
    pub incarnation: Uuid,
    /// Set by a broker in controlled shutdown: the controller moves its
    /// leaderships away.
    #[serde(default)]
    pub shutting_down: bool,
    /// Advertised `host:port` of each Kafka listener by name; `host` and
    /// `port` above are the inter-broker listener's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub listeners: BTreeMap<String, String>,
    /// The broker epoch: the store revision that created this registration.
    /// A restarted broker has a new one (KIP-380).
    #[serde(skip)]
    pub epoch: i64,
}

impl BrokerRegistration {
    /// Where clients of listener `name` reach this broker: that listener's
    /// advertised address, or `host:port` when it has no such listener
    /// (brokers registered before listeners had names).
    pub fn endpoint(&self, name: &str) -> (String, i32) {
        self.listeners
            .get(name)
            .and_then(|a| {
                let (h, p) = a.rsplit_once(':')?;
                Some((
                    h.trim_start_matches('[').trim_end_matches(']').to_string(),
                    p.parse().ok()?,
                ))
            })
            .unwrap_or_else(|| (self.host.clone(), self.port))
    }
}

/// Which broker is controller, and since when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerInfo {
    /// The controller's broker id.
    pub broker_id: BrokerId,
    /// The controller's broker epoch when it was elected.
    pub broker_epoch: i64,
    /// The controller epoch: the store revision that created the controller
    /// record. Every controller write is fenced on it.
    #[serde(skip)]
    pub epoch: i64,
}

/// A topic: its name, id, partition count and config overrides. Replica
/// assignments live in each partition's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRecord {
    /// Topic name.
    pub name: String,
    /// Given at creation; a topic deleted and created again gets a new one.
    pub id: Uuid,
    /// Partition count.
    pub partitions: i32,
    /// Config overrides under Kafka's names.
    pub configs: BTreeMap<String, String>,
}

/// A partition of a topic incarnation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    /// The topic's id.
    pub topic_id: Uuid,
    /// Partition index.
    pub index: i32,
}

/// Leadership and replicas of one partition (Kafka's `PartitionRecord`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    /// Brokers holding a replica, the preferred leader first.
    pub replicas: Vec<BrokerId>,
    /// Replicas in sync with the leader (the leader included).
    pub isr: Vec<BrokerId>,
    /// The leader, or [`NO_LEADER`].
    pub leader: BrokerId,
    /// Bumped on every leader change; stamped on every batch the leader appends.
    pub leader_epoch: i32,
    /// The broker epoch of the leader's registration when it was elected. A
    /// broker that lost its registration (paused, cut off from the store,
    /// restarted) re-registers with a new epoch and does not lead again until
    /// the controller elects it anew with a new leader epoch.
    #[serde(default)]
    pub leader_broker_epoch: i64,
    /// Bumped on every change of this state (KIP-497's partition epoch).
    pub partition_epoch: i32,
    /// During a reassignment, the replicas being added (they are in
    /// `replicas` too, and join the ISR by catching up).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adding_replicas: Vec<BrokerId>,
    /// During a reassignment, the replicas to remove once every target
    /// replica is in sync (they are in `replicas` too, last).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removing_replicas: Vec<BrokerId>,
}

impl PartitionState {
    /// The preferred leader (the first replica).
    pub fn preferred(&self) -> Option<BrokerId> {
        self.replicas.first().copied()
    }

    /// Whether a reassignment is under way.
    pub fn is_reassigning(&self) -> bool {
        !self.adding_replicas.is_empty() || !self.removing_replicas.is_empty()
    }

    /// The replicas the partition keeps: all of them but those a
    /// reassignment removes.
    pub fn target_replicas(&self) -> Vec<BrokerId> {
        self.replicas
            .iter()
            .copied()
            .filter(|b| !self.removing_replicas.contains(b))
            .collect()
    }

    /// The replicas before the reassignment began: all of them but those it
    /// adds.
    pub fn original_replicas(&self) -> Vec<BrokerId> {
        self.replicas
            .iter()
            .copied()
            .filter(|b| !self.adding_replicas.contains(b))
            .collect()
    }
}

/// A value with the store revision it was last written at (etcd's
/// `mod_revision`); conditional writes compare it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    /// The value.
    pub value: T,
    /// Revision of its last write.
    pub revision: i64,
}

/// The whole cluster at one store revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterImage {
    /// Cluster id (Kafka's form: 22 characters of URL-safe base64).
    pub cluster_id: String,
    /// The store revision this image reflects.
    pub revision: i64,
    /// Registered (live) brokers.
    pub brokers: BTreeMap<BrokerId, BrokerRegistration>,
    /// The controller, when one is elected.
    pub controller: Option<ControllerInfo>,
    /// Topics by name.
    pub topics: BTreeMap<String, TopicRecord>,
    /// Partition states.
    pub partitions: HashMap<TopicPartition, Versioned<PartitionState>>,
    /// SCRAM credentials and ACLs.
    pub security: SecurityImage,
}

/// Users' SCRAM credentials and the ACLs, cluster-wide.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityImage {
    /// Credentials by user, then mechanism.
    #[serde(default)]
    pub users: BTreeMap<String, BTreeMap<Mechanism, ScramCredential>>,
    /// ACLs by [`AclBinding::id`].
    #[serde(default)]
    pub acls: BTreeMap<String, AclBinding>,
}

impl SecurityImage {
    /// Applies a security op; other ops are not its business.
    pub fn apply(&mut self, op: &MetaOp) {
        match op {
            MetaOp::PutScram { user, credential } => {
                self.users
                    .entry(user.clone())
                    .or_default()
                    .insert(credential.mechanism, credential.clone());
            }
            MetaOp::DeleteScram { user, mechanism } => {
                if let Some(creds) = self.users.get_mut(user) {
                    creds.remove(mechanism);
                    if creds.is_empty() {
                        self.users.remove(user);
                    }
                }
            }
            MetaOp::PutAcl { binding } => {
                self.acls.insert(binding.id(), binding.clone());
            }
            MetaOp::DeleteAcl { binding } => {
                self.acls.remove(&binding.id());
            }
            _ => {}
        }
    }

    /// A user's credential for `mechanism`.
    pub fn credential(&self, user: &str, mechanism: Mechanism) -> Option<&ScramCredential> {
        self.users.get(user)?.get(&mechanism)
    }
}

impl ClusterImage {
    /// A topic by id.
    pub fn topic_by_id(&self, id: Uuid) -> Option<&TopicRecord> {
        self.topics.values().find(|t| t.id == id)
    }

    /// A partition's state.
    pub fn partition(&self, topic_id: Uuid, index: i32) -> Option<&Versioned<PartitionState>> {
        self.partitions.get(&TopicPartition { topic_id, index })
    }

    /// Whether `id` is registered with `epoch` (any epoch when `None`).
    pub fn is_live(&self, id: BrokerId) -> bool {
        self.brokers.contains_key(&id)
    }

    /// Whether `id` may lead: registered and not shutting down.
    pub fn can_lead(&self, id: BrokerId) -> bool {
        self.brokers.get(&id).is_some_and(|b| !b.shutting_down)
    }

    /// Whether the partition's leader is the registration it was elected
    /// with, still registered.
    pub fn leader_is_current(&self, state: &PartitionState) -> bool {
        state.leader != NO_LEADER
            && self
                .brokers
                .get(&state.leader)
                .is_some_and(|b| b.epoch == state.leader_broker_epoch)
    }

    /// The partitions where `broker` is a settled replica (not being added
    /// or removed by a reassignment) that is out of the ISR while a current
    /// leader serves them: the replicas it still has to catch up. A broker
    /// restarted in a rolling restart is not ready until this is empty, so the
    /// next broker is not taken while the partition has one in-sync replica
    /// fewer. Partitions without a live leader are left out: nobody can
    /// catch up with them.
    pub fn replicas_catching_up(&self, broker: BrokerId) -> Vec<(String, i32)> {
        let mut out = Vec::new();
        for topic in self.topics.values() {
            for (index, state) in self.topic_partitions(topic) {
                let Some(state) = state.map(|s| &s.value) else {
                    continue;
                };
                let settled = state.replicas.contains(&broker)
                    && !state.adding_replicas.contains(&broker)
                    && !state.removing_replicas.contains(&broker);
                if settled
                    && state.leader != broker
                    && self.leader_is_current(state)
                    && !state.isr.contains(&broker)
                {
                    out.push((topic.name.clone(), index));
                }
            }
        }
        out
    }

    /// Partitions of a topic, in index order, with their states where they exist.
    pub fn topic_partitions<'a>(
        &'a self,
        topic: &'a TopicRecord,
    ) -> impl Iterator<Item = (i32, Option<&'a Versioned<PartitionState>>)> + 'a {
        (0..topic.partitions).map(move |i| (i, self.partition(topic.id, i)))
    }
}

/// What a conditional write expects of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The key must not exist.
    Absent,
    /// The key must have been last written at this revision.
    Revision(i64),
}

/// One change to the metadata; a commit applies a list of them atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaOp {
    /// Creates a topic (it must not exist) or replaces its record (its id must match).
    PutTopic {
        /// The record.
        record: TopicRecord,
        /// Whether the topic must be absent.
        create: bool,
    },
    /// Deletes a topic and every partition state of it.
    DeleteTopic {
        /// Name.
        name: String,
        /// Id.
        id: Uuid,
    },
    /// Writes a partition's state.
    PutPartition {
        /// Which partition.
        partition: TopicPartition,
        /// The new state.
        state: PartitionState,
        /// What the current state must be.
        expect: Expect,
    },
    /// Sets a user's SCRAM credential for its mechanism.
    PutScram {
        /// The user.
        user: String,
        /// The credential.
        credential: ScramCredential,
    },
    /// Removes a user's credential for a mechanism.
    DeleteScram {
        /// The user.
        user: String,
        /// The mechanism.
        mechanism: Mechanism,
    },
    /// Stores an ACL (storing it twice is storing it once).
    PutAcl {
        /// The ACL.
        binding: AclBinding,
    },
    /// Removes an ACL.
    DeleteAcl {
        /// The ACL.
        binding: AclBinding,
    },
}

/// Who a commit is fenced on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence {
    /// The controller elected at this controller epoch must still be controller.
    Controller(i64),
    /// This broker's registration at this broker epoch must still stand
    /// (a leader changing its ISR).
    Broker(BrokerId, i64),
}

/// A cluster id in Kafka's form: 16 random bytes, URL-safe base64 without padding.
pub fn new_cluster_id() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bits = Uuid::new_v4().as_u128();
    (0..22)
        .map(|i| ALPHABET[((bits >> (i * 6)) & 63) as usize] as char)
        .collect()
}

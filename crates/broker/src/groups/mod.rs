//! The group coordinator: consumer groups under the classic protocol and
//! the KIP-848 consumer protocol ([`consumer`], glued in `modern`), and their
//! committed offsets.
//!
//! Every group lives under one lock as a pure state machine ([`group`]);
//! committed offsets live in a durable store ([`offsets`]). This module glues
//! them: it validates commits against group membership, persists offsets and
//! generations, expires offsets past `offsets.retention.minutes`, and runs the
//! periodic tick that enforces session and rebalance timeouts.
//!
//! The assignors are the clients': the coordinator relays protocol metadata
//! from members to the leader and the leader's assignment back.

pub mod consumer;
pub mod group;
mod modern;
pub mod offsets;

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Instant;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

pub use group::{
    GroupLimits, GroupState, JoinRequest, JoinResult, Pending, SyncAssignment, SyncResult,
};
pub use offsets::{CommittedOffset, GroupRecord, OffsetChange, OffsetStore, OffsetsImage};

use group::Group;

/// Coordinator settings (Kafka's names in brackets).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupConfig {
    /// Committed offsets of a group are kept this long after it became empty
    /// (or, for offsets committed outside a group, after the commit)
    /// [`offsets.retention.minutes`].
    pub offsets_retention_minutes: i64,
    /// How often expired offsets are looked for
    /// [`offsets.retention.check.interval.ms`].
    pub offsets_retention_check_interval_ms: u64,
    /// Smallest session timeout a member may ask for [`group.min.session.timeout.ms`].
    pub min_session_timeout_ms: i32,
    /// Largest session timeout a member may ask for [`group.max.session.timeout.ms`].
    pub max_session_timeout_ms: i32,
    /// How long the first rebalance of an empty group waits for more members
    /// [`group.initial.rebalance.delay.ms`].
    pub initial_rebalance_delay_ms: i32,
    /// Largest metadata string stored with a committed offset
    /// [`offset.metadata.max.bytes`].
    pub offset_metadata_max_bytes: usize,
    /// Resolution of session and rebalance timeouts.
    pub tick_interval_ms: u64,
    /// In a cluster, partitions of the internal `__consumer_offsets` topic;
    /// a group's coordinator is the leader of the partition its id hashes to
    /// [`offsets.topic.num.partitions`].
    pub offsets_topic_num_partitions: i32,
    /// In a cluster, the replication factor of `__consumer_offsets` (at most
    /// the brokers registered when it is created)
    /// [`offsets.topic.replication.factor`].
    pub offsets_topic_replication_factor: i16,
    /// Consumer-protocol members silent this long are removed
    /// [`group.consumer.session.timeout.ms`].
    pub consumer_session_timeout_ms: i64,
    /// How often consumer-protocol members heartbeat
    /// [`group.consumer.heartbeat.interval.ms`].
    pub consumer_heartbeat_interval_ms: i32,
}

impl Default for GroupConfig {
    fn default() -> Self {
        Self {
            offsets_retention_minutes: 7 * 24 * 60,
            offsets_retention_check_interval_ms: 600_000,
            min_session_timeout_ms: 6_000,
            max_session_timeout_ms: 1_800_000,
            initial_rebalance_delay_ms: 3_000,
            offset_metadata_max_bytes: 4096,
            tick_interval_ms: 100,
            offsets_topic_num_partitions: 50,
            offsets_topic_replication_factor: 3,
            consumer_session_timeout_ms: 45_000,
            consumer_heartbeat_interval_ms: 5_000,
        }
    }
}

impl GroupConfig {
    /// Checks values that types cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.offsets_retention_minutes < 1 {
            return Err("groups.offsets_retention_minutes must be >= 1".into());
        }
        if self.min_session_timeout_ms < 1
            || self.max_session_timeout_ms < self.min_session_timeout_ms
        {
            return Err(
                "groups: need 1 <= min_session_timeout_ms <= max_session_timeout_ms".into(),
            );
        }
        if self.offsets_topic_num_partitions < 1 || self.offsets_topic_replication_factor < 1 {
            return Err(
                "groups: offsets_topic_num_partitions and offsets_topic_replication_factor must be >= 1"
                    .into(),
            );
        }
        if self.consumer_heartbeat_interval_ms < 1
            || i64::from(self.consumer_heartbeat_interval_ms) >= self.consumer_session_timeout_ms
        {
            return Err(
                "groups: need 1 <= consumer_heartbeat_interval_ms < consumer_session_timeout_ms"
                    .into(),
            );
        }
        if self.initial_rebalance_delay_ms < 0 {
            return Err("groups.initial_rebalance_delay_ms must be >= 0".into());
        }
        if self.tick_interval_ms == 0 || self.offsets_retention_check_interval_ms == 0 {
            return Err(
                "groups: tick_interval_ms and offsets_retention_check_interval_ms must be > 0"
                    .into(),
            );
        }
        Ok(())
    }

    fn limits(&self) -> GroupLimits {
        GroupLimits {
            min_session_timeout_ms: self.min_session_timeout_ms,
            max_session_timeout_ms: self.max_session_timeout_ms,
            initial_rebalance_delay_ms: self.initial_rebalance_delay_ms,
        }
    }
}

/// A group as DescribeGroups and the admin API show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    /// Group id.
    pub group_id: String,
    /// State name.
    pub state: GroupState,
    /// Protocol type (`consumer`), empty for offset-only groups.
    pub protocol_type: String,
    /// Protocol of the current generation.
    pub protocol: String,
    /// Generation.
    pub generation: i32,
    /// Members: id, instance id, client id, host, metadata, assignment.
    pub members: Vec<MemberDescription>,
}

/// One member in a [`GroupDescription`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDescription {
    /// Member id.
    pub member_id: String,
    /// Static membership id.
    pub instance_id: Option<String>,
    /// Client id.
    pub client_id: String,
    /// Client address.
    pub client_host: String,
    /// Metadata for the current protocol.
    pub metadata: Bytes,
    /// Current assignment.
    pub assignment: Bytes,
}

/// What OffsetCommit sends for one partition.
#[derive(Debug, Clone)]
pub struct OffsetCommit {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The offset and its metadata.
    pub value: CommittedOffset,
}

/// The coordinator.
pub struct GroupCoordinator {
    config: GroupConfig,
    groups: Mutex<HashMap<String, Group>>,
    /// Groups of the consumer protocol (KIP-848).
    consumer: Mutex<HashMap<String, consumer::ConsumerGroup>>,
    store: OffsetStore,
    /// When each empty group became empty (wall clock), for offset expiration.
    empty_since: Mutex<HashMap<String, i64>>,
    started: Instant,
}

impl std::fmt::Debug for GroupCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCoordinator").finish_non_exhaustive()
    }
}

impl GroupCoordinator {
    /// A coordinator over an opened offset store.
    pub fn new(config: GroupConfig, store: OffsetStore) -> Self {
        Self {
            config,
            groups: Mutex::new(HashMap::new()),
            consumer: Mutex::new(HashMap::new()),
            store,
            empty_since: Mutex::new(HashMap::new()),
            started: Instant::now(),
        }
    }

    /// Settings.
    pub fn config(&self) -> &GroupConfig {
        &self.config
    }

    /// The offset store (for snapshots and lag).
    pub fn store(&self) -> &OffsetStore {
        &self.store
    }

    fn now(&self) -> i64 {
        self.started.elapsed().as_millis() as i64
    }

    fn with_group<T>(&self, group_id: &str, f: impl FnOnce(&mut Group) -> T) -> T {
        let mut groups = self.groups.lock().expect("groups lock");
        let group = groups.entry(group_id.to_string()).or_insert_with(|| {
            let record = self
                .store
                .read(|i| i.groups.get(group_id).map(|g| g.record.clone()))
                .unwrap_or_default();
            let protocol_type = (!record.protocol_type.is_empty()).then_some(record.protocol_type);
            Group::new(group_id, record.generation, protocol_type)
        });
        f(group)
    }

    /// Persists a group's generation and protocol type when they changed.
    /// Blocking (an fsync), but only on rebalances.
    fn persist_if_dirty(&self, group_id: &str) {
        let record = {
            let mut groups = self.groups.lock().expect("groups lock");
            let Some(g) = groups.get_mut(group_id) else {
                return;
            };
            if !g.take_dirty() {
                return;
            }
            if g.is_empty() {
                self.empty_since
                    .lock()
                    .expect("empty lock")
                    .insert(group_id.to_string(), crate::state::now_ms());
            } else {
                self.empty_since
                    .lock()
                    .expect("empty lock")
                    .remove(group_id);
            }
            GroupRecord {
                generation: g.generation(),
                protocol_type: g.protocol_type().unwrap_or_default().to_string(),
            }
        };
        if let Err(e) = self.store.apply(&[OffsetChange::Group {
            group: group_id.to_string(),
            record,
        }]) {
            warn!(group = group_id, error = %e, "cannot persist group generation");
        }
    }

    /// JoinGroup.
    pub fn join(&self, group_id: &str, req: JoinRequest) -> Pending<JoinResult> {
        let limits = self.config.limits();
        let now = self.now();
        // Held while the classic group is made (lock order: consumer groups,
        // then classic groups), so a first heartbeat cannot make a consumer
        // group of the same id meanwhile.
        let mut consumer = self.consumer.lock().expect("consumer groups lock");
        if let Err(e) = Self::claim_for_classic(&mut consumer, group_id) {
            return Pending::Ready(JoinResult::error(e, &req.member_id));
        }
        let r = self.with_group(group_id, |g| g.join(req, &limits, now));
        drop(consumer);
        self.persist_if_dirty(group_id);
        r
    }

    /// SyncGroup.
    pub fn sync(
        &self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
    ) -> Pending<SyncResult> {
        let now = self.now();
        if !self
            .groups
            .lock()
            .expect("groups lock")
            .contains_key(group_id)
        {
            return Pending::Ready(Err(ResponseError::UnknownMemberId));
        }
        self.with_group(group_id, |g| {
            g.sync(member_id, instance_id, generation, assignments, now)
        })
    }

    /// Heartbeat.
    pub fn heartbeat(
        &self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Result<(), ResponseError> {
        let now = self.now();
        if !self
            .groups
            .lock()
            .expect("groups lock")
            .contains_key(group_id)
        {
            return Err(ResponseError::UnknownMemberId);
        }
        self.with_group(group_id, |g| {
            g.heartbeat(member_id, instance_id, generation, now)
        })
    }

    /// LeaveGroup for each `(member_id, instance_id)`.
    pub fn leave(
        &self,
        group_id: &str,
        members: &[(String, Option<String>)],
    ) -> Vec<Result<(), ResponseError>> {
        let now = self.now();
        if !self
            .groups
            .lock()
            .expect("groups lock")
            .contains_key(group_id)
        {
            return vec![Err(ResponseError::UnknownMemberId); members.len()];
        }
        let r = self.with_group(group_id, |g| {
            members
                .iter()
                .map(|(m, i)| g.leave(m, i.as_deref(), now))
                .collect()
        });
        self.persist_if_dirty(group_id);
        r
    }

    /// Session and rebalance timeouts of every group. Cheap; called every
    /// `tick_interval_ms`.
    pub fn tick(&self) {
        let now = self.now();
        self.tick_consumer(now);
        let changed: Vec<String> = {
            let mut groups = self.groups.lock().expect("groups lock");
            groups
                .iter_mut()
                .filter_map(|(id, g)| g.tick(now).then(|| id.clone()))
                .collect()
        };
        for id in changed {
            self.persist_if_dirty(&id);
        }
    }

    /// Validates an OffsetCommit against the group (Kafka's rules): commits
    /// from outside a group are allowed only while it has no members.
    pub fn check_commit(
        &self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Result<(), ResponseError> {
        if let Some(r) = self.check_consumer_commit(group_id, member_id, generation) {
            return r;
        }
        let groups = self.groups.lock().expect("groups lock");
        let Some(g) = groups.get(group_id) else {
            return if generation < 0 {
                Ok(())
            } else {
                Err(ResponseError::IllegalGeneration)
            };
        };
        match g.state() {
            GroupState::Dead => Err(ResponseError::CoordinatorNotAvailable),
            GroupState::Empty if generation < 0 => Ok(()),
            GroupState::Empty => Err(ResponseError::IllegalGeneration),
            _ if generation < 0 && member_id.is_empty() => Err(ResponseError::UnknownMemberId),
            GroupState::CompletingRebalance => Err(ResponseError::RebalanceInProgress),
            _ => {
                if let Some(i) = instance_id {
                    if g.members()
                        .any(|m| m.instance_id.as_deref() == Some(i) && m.id != member_id)
                    {
                        return Err(ResponseError::FencedInstanceId);
                    }
                }
                if !g.has_member(member_id) {
                    Err(ResponseError::UnknownMemberId)
                } else if generation != g.generation() {
                    Err(ResponseError::IllegalGeneration)
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Stores commits durably. Blocking (fsync).
    pub fn commit(&self, group_id: &str, commits: Vec<OffsetCommit>) -> Result<(), String> {
        let changes: Vec<OffsetChange> = commits
            .into_iter()
            .map(|c| OffsetChange::Commit {
                group: group_id.to_string(),
                topic: c.topic,
                partition: c.partition,
                value: c.value,
            })
            .collect();
        self.store.apply(&changes).map_err(|e| e.to_string())?;
        // A group known only through its offsets still shows in ListGroups.
        let consumer_group = self
            .consumer
            .lock()
            .expect("consumer groups lock")
            .contains_key(group_id);
        let mut groups = self.groups.lock().expect("groups lock");
        if !groups.contains_key(group_id) && !consumer_group {
            groups.insert(group_id.to_string(), Group::new(group_id, 0, None));
            self.empty_since
                .lock()
                .expect("empty lock")
                .entry(group_id.to_string())
                .or_insert_with(crate::state::now_ms);
        }
        Ok(())
    }

    /// Committed offsets of a group: all of them, or those of the given
    /// partitions (`None` where nothing is committed).
    pub fn committed(
        &self,
        group_id: &str,
        wanted: Option<&[(String, Vec<i32>)]>,
    ) -> Vec<(String, i32, Option<CommittedOffset>)> {
        self.store.read(|image| {
            let g = image.groups.get(group_id);
            match wanted {
                Some(topics) => topics
                    .iter()
                    .flat_map(|(t, parts)| {
                        parts.iter().map(move |p| {
                            let v = g
                                .and_then(|g| g.offsets.get(t))
                                .and_then(|o| o.get(p))
                                .cloned();
                            (t.clone(), *p, v)
                        })
                    })
                    .collect(),
                None => g
                    .map(|g| {
                        g.offsets
                            .iter()
                            .flat_map(|(t, parts)| {
                                parts
                                    .iter()
                                    .map(move |(p, v)| (t.clone(), *p, Some(v.clone())))
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            }
        })
    }

    /// Every group id the coordinator knows, with state and protocol type.
    pub fn list(&self) -> Vec<(String, GroupState, String)> {
        let mut out: BTreeMap<String, (GroupState, String)> = BTreeMap::new();
        for (id, g) in self.store.read(|i| {
            i.groups
                .iter()
                .map(|(id, g)| (id.clone(), g.record.protocol_type.clone()))
                .collect::<Vec<_>>()
        }) {
            out.insert(id, (GroupState::Empty, g));
        }
        for (id, g) in self.groups.lock().expect("groups lock").iter() {
            if g.state() == GroupState::Dead {
                out.remove(id);
                continue;
            }
            out.insert(
                id.clone(),
                (g.state(), g.protocol_type().unwrap_or_default().to_string()),
            );
        }
        for (id, g) in self.consumer.lock().expect("consumer groups lock").iter() {
            let state = if g.is_empty() {
                GroupState::Empty
            } else {
                GroupState::Stable
            };
            out.insert(id.clone(), (state, "consumer".to_string()));
        }
        out.into_iter().map(|(id, (s, t))| (id, s, t)).collect()
    }

    /// A group's description, or `None` if the coordinator has never heard of it.
    pub fn describe(&self, group_id: &str) -> Option<GroupDescription> {
        let known_offsets = self
            .store
            .read(|i| i.groups.get(group_id).map(|g| g.record.clone()));
        if let Some(g) = self.consumer_group(group_id) {
            return Some(GroupDescription {
                group_id: group_id.to_string(),
                state: if g.is_empty() {
                    GroupState::Empty
                } else {
                    GroupState::Stable
                },
                protocol_type: "consumer".to_string(),
                protocol: g.assignor.clone(),
                generation: g.group_epoch,
                members: g
                    .members
                    .values()
                    .map(|m| MemberDescription {
                        member_id: m.id.clone(),
                        instance_id: m.instance_id.clone(),
                        client_id: m.client_id.clone(),
                        client_host: m.client_host.clone(),
                        metadata: Bytes::new(),
                        assignment: Bytes::new(),
                    })
                    .collect(),
            });
        }
        let groups = self.groups.lock().expect("groups lock");
        match groups.get(group_id) {
            Some(g) if g.state() != GroupState::Dead => {
                let protocol = g.protocol().unwrap_or_default().to_string();
                Some(GroupDescription {
                    group_id: group_id.to_string(),
                    state: g.state(),
                    protocol_type: g.protocol_type().unwrap_or_default().to_string(),
                    protocol: protocol.clone(),
                    generation: g.generation(),
                    members: g
                        .members()
                        .map(|m| MemberDescription {
                            member_id: m.id.clone(),
                            instance_id: m.instance_id.clone(),
                            client_id: m.client_id.clone(),
                            client_host: m.client_host.clone(),
                            metadata: m.metadata(&protocol),
                            assignment: m.assignment.clone(),
                        })
                        .collect(),
                })
            }
            Some(_) => None,
            None => known_offsets.map(|r| GroupDescription {
                group_id: group_id.to_string(),
                state: GroupState::Empty,
                protocol_type: r.protocol_type,
                protocol: String::new(),
                generation: r.generation,
                members: Vec::new(),
            }),
        }
    }

    /// DeleteGroups for one group. Blocking.
    pub fn delete_group(&self, group_id: &str) -> Result<(), ResponseError> {
        let was_consumer = {
            let mut consumer = self.consumer.lock().expect("consumer groups lock");
            match consumer.get(group_id) {
                Some(g) if !g.is_empty() => return Err(ResponseError::NonEmptyGroup),
                Some(_) => consumer.remove(group_id).is_some(),
                None => false,
            }
        };
        {
            let mut groups = self.groups.lock().expect("groups lock");
            let known_offsets = self.store.read(|i| i.groups.contains_key(group_id));
            match groups.get_mut(group_id) {
                Some(g) if g.state() == GroupState::Dead => {
                    return Err(ResponseError::GroupIdNotFound)
                }
                Some(g) if !g.is_empty() => return Err(ResponseError::NonEmptyGroup),
                Some(g) => g.mark_dead(),
                None if known_offsets || was_consumer => {}
                None => return Err(ResponseError::GroupIdNotFound),
            }
            groups.remove(group_id);
        }
        self.empty_since
            .lock()
            .expect("empty lock")
            .remove(group_id);
        self.store
            .apply(&[OffsetChange::DeleteGroup {
                group: group_id.to_string(),
            }])
            .map_err(|e| {
                warn!(group = group_id, error = %e, "cannot delete group");
                ResponseError::KafkaStorageError
            })?;
        info!(group = group_id, "group deleted");
        Ok(())
    }

    /// OffsetDelete: removes committed offsets of partitions the group does
    /// not consume. Returns one result per partition, or the group's error.
    /// Blocking.
    pub fn delete_offsets(
        &self,
        group_id: &str,
        partitions: &[(String, i32)],
    ) -> Result<Vec<Result<(), ResponseError>>, ResponseError> {
        let subscribed: Option<Vec<String>> = {
            let groups = self.groups.lock().expect("groups lock");
            match groups.get(group_id) {
                Some(g) if g.state() == GroupState::Dead => {
                    return Err(ResponseError::GroupIdNotFound)
                }
                Some(g) if !g.is_empty() => {
                    if g.protocol_type() != Some("consumer") {
                        return Err(ResponseError::NonEmptyGroup);
                    }
                    let protocol = g.protocol().unwrap_or_default().to_string();
                    Some(
                        g.members()
                            .flat_map(|m| subscribed_topics(&m.metadata(&protocol)))
                            .collect(),
                    )
                }
                Some(_) => None,
                None if self.store.read(|i| i.groups.contains_key(group_id)) => None,
                None => return Err(ResponseError::GroupIdNotFound),
            }
        };
        let mut results = Vec::with_capacity(partitions.len());
        let mut changes = Vec::new();
        for (topic, partition) in partitions {
            if subscribed.as_ref().is_some_and(|s| s.contains(topic)) {
                results.push(Err(ResponseError::GroupSubscribedToTopic));
            } else {
                results.push(Ok(()));
                changes.push(OffsetChange::Delete {
                    group: group_id.to_string(),
                    topic: topic.clone(),
                    partition: *partition,
                });
            }
        }
        self.store.apply(&changes).map_err(|e| {
            warn!(group = group_id, error = %e, "cannot delete offsets");
            ResponseError::KafkaStorageError
        })?;
        Ok(results)
    }

    /// Rebuilds the groups `owned` selects from `changes` (this broker became
    /// their coordinator: the changes come from their `__consumer_offsets`
    /// partition). Blocking.
    pub fn load(
        &self,
        owned: impl Fn(&str) -> bool,
        changes: &[OffsetChange],
    ) -> Result<(), crate::groups::offsets::OffsetStoreError> {
        self.forget_members(&owned);
        self.store.replace_groups(&owned, changes)?;
        let loaded: Vec<(String, GroupRecord)> = self.store.read(|i| {
            i.groups
                .iter()
                .filter(|(id, _)| owned(id))
                .map(|(id, g)| (id.clone(), g.record.clone()))
                .collect()
        });
        let now = crate::state::now_ms();
        let mut groups = self.groups.lock().expect("groups lock");
        let mut empty = self.empty_since.lock().expect("empty lock");
        for (id, record) in loaded {
            let protocol_type = (!record.protocol_type.is_empty()).then_some(record.protocol_type);
            groups
                .entry(id.clone())
                .or_insert_with(|| Group::new(&id, record.generation, protocol_type));
            empty.entry(id).or_insert(now);
        }
        Ok(())
    }

    /// Drops the groups `owned` selects, members and offsets (another broker
    /// coordinates them now). Blocking.
    pub fn forget(&self, owned: impl Fn(&str) -> bool) {
        self.forget_members(&owned);
        if let Err(e) = self.store.replace_groups(&owned, &[]) {
            warn!(error = %e, "cannot forget groups another broker coordinates");
        }
    }

    fn forget_members(&self, owned: &impl Fn(&str) -> bool) {
        self.consumer
            .lock()
            .expect("consumer groups lock")
            .retain(|id, _| !owned(id));
        self.groups.lock().expect("groups lock").retain(|id, g| {
            if owned(id) {
                g.mark_dead();
                false
            } else {
                true
            }
        });
        self.empty_since
            .lock()
            .expect("empty lock")
            .retain(|id, _| !owned(id));
    }

    /// Removes a deleted topic's offsets from every group. Blocking.
    pub fn topic_deleted(&self, topic: &str) {
        if let Err(e) = self.store.apply(&[OffsetChange::DeleteTopic {
            topic: topic.to_string(),
        }]) {
            warn!(topic, error = %e, "cannot remove offsets of a deleted topic");
        }
    }

    /// Expires offsets per `offsets.retention.minutes`: those of groups
    /// without members, measured from when the group became empty or from the
    /// commit, whichever is later. Blocking.
    pub fn expire_offsets(&self, now_ms: i64) -> usize {
        let retention = self.config.offsets_retention_minutes * 60_000;
        // One lock at a time: a heartbeat takes the consumer groups' lock,
        // then the classic groups'.
        let mut active: Vec<String> = self
            .groups
            .lock()
            .expect("groups lock")
            .iter()
            .filter(|(_, g)| !g.is_empty())
            .map(|(id, _)| id.clone())
            .collect();
        active.extend(
            self.consumer
                .lock()
                .expect("consumer groups lock")
                .iter()
                .filter(|(_, g)| !g.is_empty())
                .map(|(id, _)| id.clone()),
        );
        let empty_since = self.empty_since.lock().expect("empty lock").clone();
        let changes: Vec<OffsetChange> = self.store.read(|image| {
            image
                .groups
                .iter()
                .filter(|(id, _)| !active.contains(id))
                .flat_map(|(id, g)| {
                    let since = empty_since.get(id).copied().unwrap_or(0);
                    g.offsets.iter().flat_map(move |(t, parts)| {
                        parts
                            .iter()
                            .filter(move |(_, v)| {
                                now_ms - v.commit_timestamp.max(since) >= retention
                            })
                            .map(move |(p, _)| OffsetChange::Delete {
                                group: id.clone(),
                                topic: t.clone(),
                                partition: *p,
                            })
                    })
                })
                .collect()
        });
        let n = changes.len();
        if n > 0 {
            match self.store.apply(&changes) {
                Ok(()) => info!(offsets = n, "expired committed offsets"),
                Err(e) => warn!(error = %e, "cannot expire offsets"),
            }
        }
        n
    }
}

/// Topics in a `consumer` protocol subscription (ConsumerProtocolSubscription).
fn subscribed_topics(metadata: &Bytes) -> Vec<String> {
    use kafka_protocol::messages::ConsumerProtocolSubscription;
    use kafka_protocol::protocol::Decodable;
    let mut buf = metadata.clone();
    if buf.len() < 2 {
        return Vec::new();
    }
    let version = i16::from_be_bytes([buf[0], buf[1]]);
    let _ = bytes::Buf::get_i16(&mut buf);
    ConsumerProtocolSubscription::decode(&mut buf, version.clamp(0, 3))
        .map(|s| s.topics.iter().map(|t| t.to_string()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coordinator(dir: &std::path::Path) -> GroupCoordinator {
        let config = GroupConfig {
            initial_rebalance_delay_ms: 0,
            ..GroupConfig::default()
        };
        GroupCoordinator::new(config, OffsetStore::open(dir).unwrap())
    }

    fn join(c: &GroupCoordinator, group: &str, member: &str) -> JoinResult {
        let req = JoinRequest {
            member_id: member.to_string(),
            instance_id: None,
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 10_000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::new())],
            require_known_member_id: false,
        };
        match c.join(group, req) {
            Pending::Ready(r) => r,
            Pending::Wait(mut rx) => rx.try_recv().unwrap(),
        }
    }

    fn commit(c: &GroupCoordinator, group: &str, offset: i64) {
        c.commit(
            group,
            vec![OffsetCommit {
                topic: "t".into(),
                partition: 0,
                value: CommittedOffset {
                    offset,
                    leader_epoch: -1,
                    metadata: String::new(),
                    commit_timestamp: crate::state::now_ms(),
                },
            }],
        )
        .unwrap();
    }

    #[test]
    fn commits_are_checked_against_membership() {
        let dir = tempfile::tempdir().unwrap();
        let c = coordinator(dir.path());
        // Outside any group: allowed while the group has no members.
        assert_eq!(c.check_commit("g", "", None, -1), Ok(()));
        let r = join(&c, "g", "");
        assert_eq!(
            c.check_commit("g", "", None, -1),
            Err(ResponseError::UnknownMemberId)
        );
        assert_eq!(
            c.check_commit("g", &r.member_id, None, r.generation),
            Err(ResponseError::RebalanceInProgress),
            "joined but not synced"
        );
        match c.sync("g", &r.member_id, None, r.generation, vec![]) {
            Pending::Ready(Ok(_)) | Pending::Wait(_) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(
            c.check_commit("g", &r.member_id, None, r.generation),
            Ok(())
        );
        assert_eq!(
            c.check_commit("g", &r.member_id, None, r.generation + 1),
            Err(ResponseError::IllegalGeneration)
        );
        assert_eq!(
            c.check_commit("g", "other", None, r.generation),
            Err(ResponseError::UnknownMemberId)
        );
    }

    #[test]
    fn offsets_and_generations_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let c = coordinator(dir.path());
        let r = join(&c, "g", "");
        commit(&c, "g", 42);
        drop(c);
        let c = coordinator(dir.path());
        assert_eq!(c.committed("g", None)[0].2.as_ref().unwrap().offset, 42);
        let d = c.describe("g").unwrap();
        assert_eq!((d.state, d.generation), (GroupState::Empty, r.generation));
        let again = join(&c, "g", "");
        assert!(
            again.generation > r.generation,
            "generations continue upwards"
        );
    }

    #[test]
    fn delete_groups_refuses_groups_with_members() {
        let dir = tempfile::tempdir().unwrap();
        let c = coordinator(dir.path());
        let r = join(&c, "g", "");
        commit(&c, "g", 1);
        assert_eq!(c.delete_group("g"), Err(ResponseError::NonEmptyGroup));
        assert_eq!(c.leave("g", &[(r.member_id, None)]), vec![Ok(())]);
        assert_eq!(c.delete_group("g"), Ok(()));
        assert!(c.committed("g", None).is_empty());
        assert!(c.describe("g").is_none());
        assert_eq!(c.delete_group("g"), Err(ResponseError::GroupIdNotFound));
        assert!(c.list().is_empty());
    }

    #[test]
    fn offsets_of_empty_groups_expire_after_the_retention() {
        let dir = tempfile::tempdir().unwrap();
        let c = coordinator(dir.path());
        commit(&c, "idle", 5);
        let now = crate::state::now_ms();
        assert_eq!(c.expire_offsets(now), 0);
        let week = c.config().offsets_retention_minutes * 60_000;
        assert_eq!(c.expire_offsets(now + week + 1000), 1);
        assert!(c.committed("idle", None).is_empty());
    }
}

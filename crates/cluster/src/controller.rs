//! The controller's decisions, as pure functions of a [`ClusterImage`].
//!
//! Nothing here does I/O: each function takes the image (and, where Kafka
//! draws random numbers, the numbers) and returns the [`MetaOp`]s to commit.
//! The broker that holds the controller role commits them fenced on its
//! controller epoch; a commit that loses a race changes nothing, and the
//! next image runs the decision again. Decisions are therefore level
//! triggered: [`reconcile`] looks at the whole image and asks for whatever
//! is not yet as it should be, so a controller that died half-way is
//! finished by the next one.
//!
//! # Rules (Kafka's, KRaft flavour)
//! - A leader is current only while the registration it was elected with
//!   stands ([`ClusterImage::leader_is_current`]); a broker that restarted or
//!   lost its lease is re-elected with a new leader epoch before it leads again.
//! - A new leader comes from the ISR, in replica order, among brokers that
//!   may lead (registered, not shutting down); from any live replica only
//!   when the topic has `unclean.leader.election.enable=true`.
//! - Brokers that are gone or shutting down leave the ISR, except the last
//!   member, which Kafka keeps so the partition can come back with it.
//! - When the preferred replica (the first) is in the ISR and may lead, it
//!   gets leadership back.

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

use crate::model::{
    BrokerId, ClusterImage, Expect, MetaOp, PartitionState, TopicPartition, TopicRecord, Versioned,
    NO_LEADER,
};

/// Why a topic request cannot be planned; the broker maps each to a Kafka error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// `INVALID_REPLICATION_FACTOR`.
    #[error("{0}")]
    InvalidReplicationFactor(String),
    /// `INVALID_REPLICA_ASSIGNMENT`.
    #[error("{0}")]
    InvalidReplicaAssignment(String),
    /// `INVALID_PARTITIONS`.
    #[error("{0}")]
    InvalidPartitions(String),
    /// `TOPIC_ALREADY_EXISTS`.
    #[error("{0}")]
    TopicExists(String),
    /// `UNKNOWN_TOPIC_OR_PARTITION`.
    #[error("{0}")]
    UnknownTopic(String),
    /// `NO_REASSIGNMENT_IN_PROGRESS`.
    #[error("{0}")]
    NoReassignmentInProgress(String),
}

/// A broker as replica placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeable {
    /// Id.
    pub id: BrokerId,
    /// Rack, if known.
    pub rack: Option<String>,
}

/// The random choices of Kafka's assignment (`startIndex`, `nextReplicaShift`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dice {
    /// Where the first partition's leader is taken from.
    pub start: usize,
    /// How far followers are shifted from their leader.
    pub shift: usize,
}

impl Dice {
    /// Random choices.
    pub fn roll() -> Self {
        let bits = Uuid::new_v4().as_u128();
        Self {
            start: (bits & 0xffff_ffff) as usize,
            shift: ((bits >> 32) & 0xffff_ffff) as usize,
        }
    }
}

/// Brokers new replicas may go to: registered and not shutting down, by id.
pub fn placeable(image: &ClusterImage) -> Vec<Placeable> {
    image
        .brokers
        .values()
        .filter(|b| !b.shutting_down)
        .map(|b| Placeable {
            id: b.id,
            rack: b.rack.clone(),
        })
        .collect()
}

/// Kafka's replica assignment (`AdminUtils.assignReplicasToBrokers`):
/// leaders round-robin over the brokers from a random start, followers
/// shifted from their leader, so leaders and replicas spread evenly; with
/// racks on every broker, brokers are interleaved by rack and each
/// partition's replicas go to distinct racks while racks remain.
/// `first_partition` continues an existing topic (CreatePartitions).
pub fn assign_replicas(
    brokers: &[Placeable],
    partitions: i32,
    replication_factor: i16,
    first_partition: i32,
    dice: Dice,
) -> Result<Vec<Vec<BrokerId>>, PlanError> {
    if replication_factor < 1 {
        return Err(PlanError::InvalidReplicationFactor(format!(
            "replication factor must be at least 1, got {replication_factor}"
        )));
    }
    let rf = replication_factor as usize;
    if rf > brokers.len() {
        return Err(PlanError::InvalidReplicationFactor(format!(
            "replication factor {replication_factor} is larger than the {} available broker{}",
            brokers.len(),
            if brokers.len() == 1 { "" } else { "s" }
        )));
    }
    if partitions < 0 {
        return Err(PlanError::InvalidPartitions(format!(
            "number of partitions must be at least 1, got {partitions}"
        )));
    }
    let rack_aware = brokers.iter().all(|b| b.rack.is_some());
    let arranged: Vec<&Placeable> = if rack_aware {
        rack_alternated(brokers)
    } else {
        let mut v: Vec<&Placeable> = brokers.iter().collect();
        v.sort_by_key(|b| b.id);
        v
    };
    let n = arranged.len();
    let racks: BTreeSet<&str> = arranged.iter().filter_map(|b| b.rack.as_deref()).collect();
    let num_racks = racks.len().max(1);
    let start = dice.start % n;
    let mut shift = dice.shift % n;
    let mut out = Vec::with_capacity(partitions as usize);
    for p in first_partition.max(0)..first_partition.max(0) + partitions {
        let p = p as usize;
        if p > 0 && p.is_multiple_of(n) {
            shift += 1;
        }
        let first = (p + start) % n;
        let mut replicas = vec![arranged[first].id];
        if !rack_aware {
            for j in 0..rf - 1 {
                replicas.push(arranged[follower_index(first, shift, j, n)].id);
            }
        } else {
            let mut used_racks: BTreeSet<&str> =
                arranged[first].rack.as_deref().into_iter().collect();
            let mut k = 0;
            while replicas.len() < rf {
                let b = arranged[follower_index(first, shift * num_racks, k, n)];
                let rack = b.rack.as_deref().unwrap_or("");
                let rack_ok = !used_racks.contains(rack) || used_racks.len() == num_racks;
                let broker_ok = !replicas.contains(&b.id) || replicas.len() == n;
                if rack_ok && broker_ok {
                    replicas.push(b.id);
                    used_racks.insert(rack);
                }
                k += 1;
            }
        }
        out.push(replicas);
    }
    Ok(out)
}

fn follower_index(first: usize, shift: usize, j: usize, n: usize) -> usize {
    if n == 1 {
        return first;
    }
    let s = 1 + (shift + j) % (n - 1);
    (first + s) % n
}

/// Brokers interleaved by rack: the first of each rack, then the second of
/// each, and so on (racks and brokers in order).
fn rack_alternated(brokers: &[Placeable]) -> Vec<&Placeable> {
    let mut by_rack: BTreeMap<&str, Vec<&Placeable>> = BTreeMap::new();
    for b in brokers {
        by_rack
            .entry(b.rack.as_deref().unwrap_or(""))
            .or_default()
            .push(b);
    }
    for v in by_rack.values_mut() {
        v.sort_by_key(|b| b.id);
    }
    let longest = by_rack.values().map(Vec::len).max().unwrap_or(0);
    let mut out = Vec::with_capacity(brokers.len());
    for i in 0..longest {
        for v in by_rack.values() {
            if let Some(b) = v.get(i) {
                out.push(*b);
            }
        }
    }
    out
}

/// The state a new partition starts in: its preferred replica leads when it
/// may, else the first replica that may; every replica is in the ISR.
pub fn initial_state(image: &ClusterImage, replicas: Vec<BrokerId>) -> PartitionState {
    let leader = replicas
        .iter()
        .copied()
        .find(|b| image.can_lead(*b))
        .unwrap_or(NO_LEADER);
    PartitionState {
        isr: replicas.clone(),
        replicas,
        leader,
        leader_epoch: 0,
        leader_broker_epoch: image.brokers.get(&leader).map_or(0, |b| b.epoch),
        partition_epoch: 0,
        adding_replicas: Vec::new(),
        removing_replicas: Vec::new(),
    }
}

/// A CreateTopics entry, validated for names and configs by the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTopic {
    /// Name.
    pub name: String,
    /// Partitions (ignored when `assignments` is given).
    pub partitions: i32,
    /// Replication factor (ignored when `assignments` is given).
    pub replication_factor: i16,
    /// Explicit replicas per partition.
    pub assignments: Option<Vec<Vec<BrokerId>>>,
    /// Config overrides.
    pub configs: BTreeMap<String, String>,
}

/// Largest number of partition states written in one commit: etcd accepts
/// 128 operations per transaction by default.
pub const OPS_PER_COMMIT: usize = 100;

/// The commits that create `topic` with id `id`: the topic record with the
/// first partitions, then the rest in chunks of [`OPS_PER_COMMIT`]. A
/// controller that dies between chunks leaves partitions without state;
/// [`reconcile`] creates them.
pub fn plan_create_topic(
    image: &ClusterImage,
    topic: &NewTopic,
    id: Uuid,
    dice: Dice,
) -> Result<(TopicRecord, Vec<Vec<MetaOp>>), PlanError> {
    if image.topics.contains_key(&topic.name) {
        return Err(PlanError::TopicExists(format!(
            "topic '{}' already exists",
            topic.name
        )));
    }
    let replicas = match &topic.assignments {
        Some(a) => {
            validate_assignment(image, a, None)?;
            a.clone()
        }
        None => {
            if topic.partitions < 1 {
                return Err(PlanError::InvalidPartitions(format!(
                    "number of partitions must be at least 1, got {}",
                    topic.partitions
                )));
            }
            assign_replicas(
                &placeable(image),
                topic.partitions,
                topic.replication_factor,
                0,
                dice,
            )?
        }
    };
    let record = TopicRecord {
        name: topic.name.clone(),
        id,
        partitions: replicas.len() as i32,
        configs: topic.configs.clone(),
    };
    let mut ops = vec![MetaOp::PutTopic {
        record: record.clone(),
        create: true,
    }];
    ops.extend(partition_creates(image, id, 0, replicas));
    Ok((record, chunk(ops)))
}

/// The commits that raise `topic`'s partition count to `count`.
pub fn plan_create_partitions(
    image: &ClusterImage,
    name: &str,
    count: i32,
    assignments: Option<&[Vec<BrokerId>]>,
    dice: Dice,
) -> Result<Vec<Vec<MetaOp>>, PlanError> {
    let topic = image
        .topics
        .get(name)
        .ok_or_else(|| PlanError::UnknownTopic(format!("topic '{name}' does not exist")))?;
    let current = topic.partitions;
    if count <= current {
        return Err(PlanError::InvalidPartitions(format!(
            "topic '{name}' has {current} partitions; the new count {count} must be larger"
        )));
    }
    let added = count - current;
    let rf = image
        .partition(topic.id, 0)
        .map_or(1, |p| p.value.target_replicas().len() as i16);
    let replicas = match assignments {
        Some(a) => {
            if a.len() as i32 != added {
                return Err(PlanError::InvalidReplicaAssignment(format!(
                    "{} assignments given for {added} new partitions",
                    a.len()
                )));
            }
            validate_assignment(image, a, Some(rf))?;
            a.to_vec()
        }
        None => assign_replicas(&placeable(image), added, rf, current, dice)?,
    };
    let record = TopicRecord {
        partitions: count,
        ..topic.clone()
    };
    let mut ops = vec![MetaOp::PutTopic {
        record,
        create: false,
    }];
    ops.extend(partition_creates(image, topic.id, current, replicas));
    Ok(chunk(ops))
}

fn partition_creates(
    image: &ClusterImage,
    topic_id: Uuid,
    first: i32,
    replicas: Vec<Vec<BrokerId>>,
) -> impl Iterator<Item = MetaOp> + '_ {
    replicas
        .into_iter()
        .enumerate()
        .map(move |(i, r)| MetaOp::PutPartition {
            partition: TopicPartition {
                topic_id,
                index: first + i as i32,
            },
            state: initial_state(image, r),
            expect: Expect::Absent,
        })
}

fn chunk(ops: Vec<MetaOp>) -> Vec<Vec<MetaOp>> {
    ops.chunks(OPS_PER_COMMIT).map(<[MetaOp]>::to_vec).collect()
}

fn validate_assignment(
    image: &ClusterImage,
    assignments: &[Vec<BrokerId>],
    rf: Option<i16>,
) -> Result<(), PlanError> {
    let bad = |m: String| Err(PlanError::InvalidReplicaAssignment(m));
    if assignments.is_empty() {
        return bad("the assignment names no partition".into());
    }
    let rf = rf.map_or(assignments[0].len(), |r| r as usize);
    for (i, a) in assignments.iter().enumerate() {
        if a.is_empty() {
            return bad(format!("partition {i} has no replicas"));
        }
        if a.len() != rf {
            return bad(format!(
                "partition {i} has {} replicas; every partition needs {rf}",
                a.len()
            ));
        }
        let distinct: BTreeSet<_> = a.iter().collect();
        if distinct.len() != a.len() {
            return bad(format!("partition {i} names a broker twice: {a:?}"));
        }
        if let Some(b) = a.iter().find(|b| !image.is_live(**b)) {
            return bad(format!(
                "partition {i} is assigned to broker {b}, which is not registered"
            ));
        }
    }
    Ok(())
}

/// The commit that deletes a topic.
pub fn plan_delete_topic(image: &ClusterImage, name: &str) -> Result<MetaOp, PlanError> {
    let topic = image
        .topics
        .get(name)
        .ok_or_else(|| PlanError::UnknownTopic(format!("topic '{name}' does not exist")))?;
    Ok(MetaOp::DeleteTopic {
        name: name.to_string(),
        id: topic.id,
    })
}

/// Everything that is not as it should be, as writes: leaders that are gone
/// or shutting down replaced, returning brokers elected where nobody leads,
/// dead brokers out of ISRs, preferred leaders restored, and partitions of
/// half-created topics created. `unclean` says whether a topic allows
/// unclean leader election. Partition writes expect the revision they were
/// decided on, so a concurrent change wins and the decision runs again.
pub fn reconcile(image: &ClusterImage, unclean: impl Fn(&TopicRecord) -> bool) -> Vec<MetaOp> {
    let mut ops = Vec::new();
    let mut missing = Vec::new();
    for topic in image.topics.values() {
        let mut rf = None;
        for (index, state) in image.topic_partitions(topic) {
            match state {
                Some(s) => {
                    rf.get_or_insert(s.value.target_replicas().len() as i16);
                    if let Some(next) = next_state(image, &s.value, unclean(topic)) {
                        ops.push(MetaOp::PutPartition {
                            partition: TopicPartition {
                                topic_id: topic.id,
                                index,
                            },
                            state: next,
                            expect: Expect::Revision(s.revision),
                        });
                    }
                }
                None => missing.push((topic.id, index)),
            }
        }
        if !missing.is_empty() {
            let rf = rf.unwrap_or(1);
            let brokers = placeable(image);
            let first = missing[0].1;
            if let Ok(assigned) = assign_replicas(
                &brokers,
                missing.len() as i32,
                rf.min(brokers.len() as i16).max(1),
                first,
                Dice {
                    start: first as usize,
                    shift: 0,
                },
            ) {
                for ((topic_id, index), replicas) in missing.drain(..).zip(assigned) {
                    ops.push(MetaOp::PutPartition {
                        partition: TopicPartition { topic_id, index },
                        state: initial_state(image, replicas),
                        expect: Expect::Absent,
                    });
                }
            }
            missing.clear();
        }
    }
    ops
}

/// The state `current` should move to, if any: leadership and the ISR as
/// the live brokers allow, and a reassignment whose target is in sync
/// completed.
pub fn next_state(
    image: &ClusterImage,
    current: &PartitionState,
    unclean: bool,
) -> Option<PartitionState> {
    let mut next = current.clone();
    // Brokers that are gone or shutting down leave the ISR; the last member stays.
    let keep: Vec<BrokerId> = current
        .isr
        .iter()
        .copied()
        .filter(|b| image.can_lead(*b))
        .collect();
    if !keep.is_empty() || current.isr.is_empty() {
        next.isr = keep;
    } else if current.isr.len() > 1 {
        // Every member is gone: keep the one that led last, else the first.
        let last = if current.isr.contains(&current.leader) {
            current.leader
        } else {
            current.isr[0]
        };
        next.isr = vec![last];
    }
    let leader_ok = image.leader_is_current(current) && image.can_lead(current.leader);
    let elect = |b: BrokerId, next: &mut PartitionState| {
        next.leader = b;
        next.leader_broker_epoch = image.brokers.get(&b).map_or(0, |r| r.epoch);
        next.leader_epoch = current.leader_epoch + 1;
    };
    if !leader_ok {
        let from_isr = current
            .replicas
            .iter()
            .copied()
            .find(|b| next.isr.contains(b) && image.can_lead(*b));
        let candidate = from_isr.or_else(|| {
            unclean
                .then(|| {
                    current
                        .replicas
                        .iter()
                        .copied()
                        .find(|b| image.can_lead(*b))
                })
                .flatten()
        });
        match candidate {
            Some(b) => {
                elect(b, &mut next);
                if from_isr.is_none() {
                    // Unclean: the new leader's log is the truth now.
                    next.isr = vec![b];
                }
            }
            None if current.leader != NO_LEADER => {
                next.leader = NO_LEADER;
                next.leader_broker_epoch = 0;
                next.leader_epoch = current.leader_epoch + 1;
            }
            None => {}
        }
    } else if let Some(pref) = current.preferred() {
        if pref != current.leader && next.isr.contains(&pref) && image.can_lead(pref) {
            elect(pref, &mut next);
        }
    }
    if next.leader != NO_LEADER && !next.isr.contains(&next.leader) {
        next.isr.push(next.leader);
    }
    if let Some(done) = crate::reassign::complete(image, &next, current) {
        next = done;
    }
    if next == *current {
        return None;
    }
    next.partition_epoch = current.partition_epoch + 1;
    Some(next)
}

/// Partitions `broker` leads that another broker could lead: what controlled
/// shutdown waits for.
pub fn movable_leaderships(image: &ClusterImage, broker: BrokerId) -> usize {
    image
        .partitions
        .values()
        .filter(|Versioned { value: s, .. }| {
            s.leader == broker && s.isr.iter().any(|b| *b != broker && image.can_lead(*b))
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::BrokerRegistration;
    use std::collections::HashMap;

    fn broker(id: BrokerId, epoch: i64, rack: Option<&str>) -> BrokerRegistration {
        BrokerRegistration {
            id,
            host: format!("127.0.0.{}", id + 1),
            port: 9092,
            rack: rack.map(str::to_string),
            http: String::new(),
            incarnation: Uuid::nil(),
            shutting_down: false,
            listeners: Default::default(),
            epoch,
        }
    }

    fn image(brokers: &[(BrokerId, i64)]) -> ClusterImage {
        ClusterImage {
            brokers: brokers
                .iter()
                .map(|&(id, e)| (id, broker(id, e, None)))
                .collect(),
            ..Default::default()
        }
    }

    fn placeables(n: i32, racks: Option<&[&str]>) -> Vec<Placeable> {
        (0..n)
            .map(|id| Placeable {
                id,
                rack: racks.map(|r| r[id as usize % r.len()].to_string()),
            })
            .collect()
    }

    fn state(
        replicas: &[BrokerId],
        isr: &[BrokerId],
        leader: BrokerId,
        epoch: i64,
    ) -> PartitionState {
        PartitionState {
            replicas: replicas.to_vec(),
            isr: isr.to_vec(),
            leader,
            leader_epoch: 3,
            leader_broker_epoch: epoch,
            partition_epoch: 7,
            adding_replicas: Vec::new(),
            removing_replicas: Vec::new(),
        }
    }

    #[test]
    fn a_restarted_replica_catches_up_only_where_a_live_leader_serves() {
        // Broker 2 came back with a new registration (epoch 9); broker 1 is gone.
        let mut img = image(&[(0, 5), (2, 9)]);
        let topic = TopicRecord {
            name: "t".into(),
            id: Uuid::from_u128(1),
            partitions: 5,
            configs: Default::default(),
        };
        let mut put = |index, s: PartitionState| {
            img.partitions.insert(
                TopicPartition {
                    topic_id: topic.id,
                    index,
                },
                Versioned {
                    value: s,
                    revision: 1,
                },
            );
        };
        put(0, state(&[0, 1, 2], &[0], 0, 5)); // catching up with 0
        put(1, state(&[0, 1, 2], &[0, 2], 0, 5)); // in sync
        put(2, state(&[1, 2, 0], &[1], 1, 4)); // leader 1 is gone: nobody to follow
        put(3, state(&[2, 0, 1], &[2, 0], 2, 9)); // leads it
        let mut adding = state(&[0, 1, 2], &[0], 0, 5);
        adding.adding_replicas = vec![2];
        put(4, adding); // a reassignment adds it: not a settled replica
        img.topics.insert("t".into(), topic);
        assert_eq!(img.replicas_catching_up(2), vec![("t".to_string(), 0)]);
        assert!(img.replicas_catching_up(0).is_empty());
    }

    #[test]
    fn leaders_and_replicas_spread_evenly() {
        let a =
            assign_replicas(&placeables(3, None), 6, 3, 0, Dice { start: 0, shift: 0 }).unwrap();
        assert_eq!(a[0], vec![0, 1, 2]);
        let mut leaders = HashMap::new();
        let mut replicas = HashMap::new();
        for r in &a {
            *leaders.entry(r[0]).or_insert(0) += 1;
            for b in r {
                *replicas.entry(*b).or_insert(0) += 1;
            }
            let distinct: BTreeSet<_> = r.iter().collect();
            assert_eq!(distinct.len(), 3, "{r:?}");
        }
        assert!(leaders.values().all(|&n| n == 2), "{leaders:?}");
        assert!(replicas.values().all(|&n| n == 6), "{replicas:?}");
    }

    #[test]
    fn replication_factor_above_live_brokers_is_refused() {
        let e = assign_replicas(&placeables(2, None), 1, 3, 0, Dice { start: 0, shift: 0 });
        assert!(
            matches!(e, Err(PlanError::InvalidReplicationFactor(m)) if m.contains("2 available brokers"))
        );
    }

    #[test]
    fn rack_aware_assignment_puts_replicas_on_distinct_racks() {
        let brokers = placeables(6, Some(&["a", "b", "c"]));
        for start in 0..6 {
            for shift in 0..6 {
                let a = assign_replicas(&brokers, 12, 3, 0, Dice { start, shift }).unwrap();
                for r in a {
                    let racks: BTreeSet<_> = r
                        .iter()
                        .map(|b| brokers[*b as usize].rack.clone())
                        .collect();
                    assert_eq!(racks.len(), 3, "{r:?}");
                }
            }
        }
    }

    #[test]
    fn dead_leader_is_replaced_from_the_isr_with_a_new_epoch() {
        let img = image(&[(1, 11), (2, 12)]);
        let s = state(&[0, 1, 2], &[0, 1, 2], 0, 10);
        let n = next_state(&img, &s, false).unwrap();
        assert_eq!(n.leader, 1);
        assert_eq!(n.leader_epoch, 4);
        assert_eq!(n.leader_broker_epoch, 11);
        assert_eq!(n.isr, vec![1, 2]);
        assert_eq!(n.partition_epoch, 8);
    }

    #[test]
    fn out_of_sync_replicas_are_not_elected_unless_unclean() {
        let img = image(&[(1, 11)]);
        let s = state(&[0, 1], &[0], 0, 10);
        let n = next_state(&img, &s, false).unwrap();
        assert_eq!(n.leader, NO_LEADER, "offline rather than unclean");
        assert_eq!(n.isr, vec![0], "the last ISR member is kept");
        assert_eq!(n.leader_epoch, 4);
        // Nothing changes until a member of the ISR returns.
        assert_eq!(next_state(&img, &n, false), None);
        let u = next_state(&img, &s, true).unwrap();
        assert_eq!((u.leader, u.isr.clone()), (1, vec![1]));
    }

    #[test]
    fn a_restarted_leader_is_elected_again_with_a_new_epoch() {
        // Replication factor 1: the broker came back with a new registration.
        let img = image(&[(0, 20)]);
        let s = state(&[0], &[0], 0, 10);
        let n = next_state(&img, &s, false).unwrap();
        assert_eq!(
            (n.leader, n.leader_epoch, n.leader_broker_epoch),
            (0, 4, 20)
        );
        assert_eq!(next_state(&img, &n, false), None, "stable once elected");
    }

    #[test]
    fn offline_partition_comes_back_with_its_last_isr_member() {
        let img = image(&[(0, 20)]);
        let s = PartitionState {
            leader: NO_LEADER,
            leader_broker_epoch: 0,
            ..state(&[0], &[0], 0, 0)
        };
        let n = next_state(&img, &s, false).unwrap();
        assert_eq!((n.leader, n.leader_broker_epoch), (0, 20));
    }

    #[test]
    fn shutting_down_leader_hands_over_and_leaves_the_isr() {
        let mut img = image(&[(0, 10), (1, 11), (2, 12)]);
        img.brokers.get_mut(&0).unwrap().shutting_down = true;
        let s = state(&[0, 1, 2], &[0, 1, 2], 0, 10);
        let n = next_state(&img, &s, false).unwrap();
        assert_eq!((n.leader, n.isr.clone()), (1, vec![1, 2]));
        let tp = TopicPartition {
            topic_id: Uuid::nil(),
            index: 0,
        };
        img.partitions.insert(
            tp,
            Versioned {
                value: s,
                revision: 4,
            },
        );
        assert_eq!(movable_leaderships(&img, 0), 1);
        let mut after = img.clone();
        after.partitions.insert(
            tp,
            Versioned {
                value: n,
                revision: 5,
            },
        );
        assert_eq!(movable_leaderships(&after, 0), 0);
    }

    #[test]
    fn preferred_leader_gets_leadership_back() {
        let img = image(&[(0, 10), (1, 11)]);
        let s = state(&[0, 1], &[0, 1], 1, 11);
        let n = next_state(&img, &s, false).unwrap();
        assert_eq!((n.leader, n.leader_epoch), (0, 4));
        // Not while it is out of the ISR.
        let s = state(&[0, 1], &[1], 1, 11);
        assert_eq!(next_state(&img, &s, false), None);
    }

    #[test]
    fn healthy_partitions_need_no_writes() {
        let img = image(&[(0, 10), (1, 11), (2, 12)]);
        let s = state(&[0, 1, 2], &[0, 1, 2], 0, 10);
        assert_eq!(next_state(&img, &s, false), None);
    }

    #[test]
    fn creation_is_chunked_and_half_created_topics_are_finished() {
        let img = image(&[(0, 10), (1, 11), (2, 12)]);
        let topic = NewTopic {
            name: "big".into(),
            partitions: 250,
            replication_factor: 1,
            assignments: None,
            configs: BTreeMap::new(),
        };
        let id = Uuid::new_v4();
        let (record, commits) =
            plan_create_topic(&img, &topic, id, Dice { start: 0, shift: 0 }).unwrap();
        assert_eq!(record.partitions, 250);
        assert_eq!(commits.len(), 3);
        assert!(commits.iter().all(|c| c.len() <= OPS_PER_COMMIT));
        // Apply only the first commit: reconcile creates the other 151.
        let mut half = img.clone();
        half.topics.insert("big".into(), record);
        for op in &commits[0] {
            if let MetaOp::PutPartition {
                partition, state, ..
            } = op
            {
                half.partitions.insert(
                    *partition,
                    Versioned {
                        value: state.clone(),
                        revision: 1,
                    },
                );
            }
        }
        let ops = reconcile(&half, |_| false);
        assert_eq!(ops.len(), 151);
        assert!(ops.iter().all(|o| matches!(
            o,
            MetaOp::PutPartition {
                expect: Expect::Absent,
                ..
            }
        )));
    }

    #[test]
    fn explicit_assignments_are_checked() {
        let img = image(&[(0, 10), (1, 11)]);
        let mk = |a: Vec<Vec<BrokerId>>| NewTopic {
            name: "t".into(),
            partitions: -1,
            replication_factor: -1,
            assignments: Some(a),
            configs: BTreeMap::new(),
        };
        let d = Dice { start: 0, shift: 0 };
        assert!(plan_create_topic(&img, &mk(vec![vec![0], vec![1]]), Uuid::nil(), d).is_ok());
        for bad in [
            vec![vec![0, 0]],
            vec![vec![5]],
            vec![vec![0], vec![0, 1]],
            vec![vec![]],
        ] {
            assert!(
                matches!(
                    plan_create_topic(&img, &mk(bad.clone()), Uuid::nil(), d),
                    Err(PlanError::InvalidReplicaAssignment(_))
                ),
                "{bad:?}"
            );
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Every partition gets `rf` distinct live brokers, and no broker
            /// leads more than its share rounded up.
            #[test]
            fn assignment_is_valid_and_balanced(
                n in 1i32..8, parts in 1i32..64, rf in 1i16..4, start in 0usize..100, shift in 0usize..100,
            ) {
                prop_assume!(rf as i32 <= n);
                let a = assign_replicas(&placeables(n, None), parts, rf, 0, Dice { start, shift }).unwrap();
                prop_assert_eq!(a.len() as i32, parts);
                let mut leaders = HashMap::new();
                for r in &a {
                    let distinct: BTreeSet<_> = r.iter().collect();
                    prop_assert_eq!(distinct.len(), rf as usize);
                    prop_assert!(r.iter().all(|b| (0..n).contains(b)));
                    *leaders.entry(r[0]).or_insert(0) += 1;
                }
                let share = (parts + n - 1) / n;
                prop_assert!(leaders.values().all(|&c| c <= share));
            }

            /// Whatever the image, a decided state keeps its leader in the
            /// ISR, only raises epochs, never elects an unregistered broker,
            /// and deciding again on the result changes nothing.
            #[test]
            fn decisions_are_safe_and_settle(
                live in proptest::collection::btree_set(0i32..4, 0..4),
                isr in proptest::collection::btree_set(0i32..4, 1..4),
                leader in -1i32..4, unclean: bool,
            ) {
                prop_assume!(leader == NO_LEADER || isr.contains(&leader));
                let brokers: Vec<(BrokerId, i64)> = live.iter().map(|&b| (b, 100 + b as i64)).collect();
                let img = image(&brokers);
                let s = PartitionState {
                    replicas: vec![0, 1, 2, 3],
                    isr: isr.iter().copied().collect(),
                    leader,
                    leader_epoch: 1,
                    leader_broker_epoch: 100 + leader as i64,
                    partition_epoch: 1,
                    adding_replicas: Vec::new(),
                    removing_replicas: Vec::new(),
                };
                let n = next_state(&img, &s, unclean).unwrap_or_else(|| s.clone());
                if n.leader != NO_LEADER {
                    prop_assert!(img.is_live(n.leader));
                    prop_assert!(n.isr.contains(&n.leader));
                    if !unclean {
                        prop_assert!(s.isr.contains(&n.leader));
                    }
                }
                prop_assert!(n.leader_epoch >= s.leader_epoch);
                prop_assert!(!n.isr.is_empty());
                prop_assert_eq!(next_state(&img, &n, unclean), None);
            }
        }
    }
}

//! Partition reassignment (Kafka's KIP-455) as pure decisions.
//!
//! A change of a partition's replica set takes two writes. The first, made
//! when the request arrives ([`plan_reassignment`]), puts the new replicas in
//! `replicas` and lists them in `adding_replicas`, and lists the replicas
//! that go in `removing_replicas`: brokers open the new replicas, which
//! fetch from the leader and join the ISR by catching up like any follower.
//! The second, [`complete`], is part of the controller's reconciliation:
//! once every target replica is in the ISR the replica set becomes the
//! target, the removed replicas leave the ISR (and their brokers delete
//! them), and a leader that is being removed hands over to an in-sync target
//! replica. As in Kafka, a change that removes replicas bumps the leader
//! epoch, so a removed replica still fetching is fenced.
//!
//! A reassignment never lowers durability while it runs: the ISR keeps its
//! members until the target is fully in sync.

use std::collections::BTreeSet;

use crate::controller::PlanError;
use crate::model::{
    BrokerId, ClusterImage, Expect, MetaOp, PartitionState, TopicPartition, NO_LEADER,
};

/// What to do with one partition's replica set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reassignment {
    /// Move to these replicas, the preferred leader first.
    To(Vec<BrokerId>),
    /// Cancel the reassignment under way: back to the original replicas.
    Cancel,
}

/// The write that starts (or changes, or cancels) a reassignment of
/// partition `index` of `topic`, or `None` when nothing changes. A
/// reassignment whose target is already in sync completes in the same write.
/// `allow_rf_change`: whether the target may have another replica count
/// than the partition (KIP-860).
pub fn plan_reassignment(
    image: &ClusterImage,
    topic: &str,
    index: i32,
    change: &Reassignment,
    allow_rf_change: bool,
) -> Result<Option<MetaOp>, PlanError> {
    let rec = image
        .topics
        .get(topic)
        .ok_or_else(|| PlanError::UnknownTopic(format!("topic '{topic}' does not exist")))?;
    let current = image
        .partition(rec.id, index)
        .filter(|_| index < rec.partitions)
        .ok_or_else(|| {
            PlanError::UnknownTopic(format!("topic '{topic}' has no partition {index}"))
        })?;
    let stored = &current.value;
    let mut next = match change {
        Reassignment::Cancel => revert(stored)?,
        Reassignment::To(target) => begin(image, stored, target, allow_rf_change)?,
    };
    settle(image, stored, &mut next);
    if let Some(done) = complete(image, &next, stored) {
        next = done;
    }
    if next == *stored {
        return Ok(None);
    }
    next.partition_epoch = stored.partition_epoch + 1;
    Ok(Some(MetaOp::PutPartition {
        partition: TopicPartition {
            topic_id: rec.id,
            index,
        },
        state: next,
        expect: Expect::Revision(current.revision),
    }))
}

/// The state `s` moves to when its reassignment is done: every target
/// replica in the ISR, and one of them able to lead if the leader leaves.
/// `stored` is the state as last written (for the leader epoch).
pub fn complete(
    image: &ClusterImage,
    s: &PartitionState,
    stored: &PartitionState,
) -> Option<PartitionState> {
    if !s.is_reassigning() {
        return None;
    }
    let target = s.target_replicas();
    if !target.iter().all(|b| s.isr.contains(b)) {
        return None;
    }
    if !target.contains(&s.leader) && !target.iter().any(|b| image.can_lead(*b)) {
        return None;
    }
    let mut next = s.clone();
    next.isr.retain(|b| target.contains(b));
    next.replicas = target;
    next.adding_replicas.clear();
    next.removing_replicas.clear();
    settle(image, stored, &mut next);
    Some(next)
}

fn begin(
    image: &ClusterImage,
    s: &PartitionState,
    target: &[BrokerId],
    allow_rf_change: bool,
) -> Result<PartitionState, PlanError> {
    let bad = |m: String| Err(PlanError::InvalidReplicaAssignment(m));
    if target.is_empty() {
        return bad("the new replica set is empty".into());
    }
    if target.iter().collect::<BTreeSet<_>>().len() != target.len() {
        return bad(format!(
            "the new replica set names a broker twice: {target:?}"
        ));
    }
    if let Some(b) = target.iter().find(|b| !image.is_live(**b)) {
        return bad(format!(
            "the new replica set names broker {b}, which is not registered"
        ));
    }
    let original = s.original_replicas();
    if !allow_rf_change && target.len() != original.len() {
        return Err(PlanError::InvalidReplicationFactor(format!(
            "the partition has {} replicas and the new set {}; the request does not allow changing the replication factor",
            original.len(),
            target.len()
        )));
    }
    let mut next = s.clone();
    next.adding_replicas = target
        .iter()
        .copied()
        .filter(|b| !original.contains(b))
        .collect();
    next.removing_replicas = original
        .iter()
        .copied()
        .filter(|b| !target.contains(b))
        .collect();
    next.replicas = target.to_vec();
    next.replicas.extend(&next.removing_replicas);
    // Replicas an earlier reassignment was adding and this one drops leave
    // the ISR with the replica set.
    next.isr.retain(|b| next.replicas.contains(b));
    if next.isr.is_empty() {
        return bad(
            "no replica of the new set or the original one is in sync; wait for one to catch up"
                .into(),
        );
    }
    Ok(next)
}

fn revert(s: &PartitionState) -> Result<PartitionState, PlanError> {
    if !s.is_reassigning() {
        return Err(PlanError::NoReassignmentInProgress(
            "no reassignment of this partition is in progress".into(),
        ));
    }
    let original = s.original_replicas();
    let mut next = s.clone();
    next.isr.retain(|b| original.contains(b));
    if next.isr.is_empty() {
        return Err(PlanError::InvalidReplicaAssignment(
            "none of the original replicas is in sync any more; cancelling would leave the partition without an in-sync replica".into(),
        ));
    }
    next.replicas = original;
    next.adding_replicas.clear();
    next.removing_replicas.clear();
    Ok(next)
}

/// Hands leadership over when the leader left the replica set, and bumps
/// the leader epoch on a leader change or when replicas were removed.
fn settle(image: &ClusterImage, stored: &PartitionState, next: &mut PartitionState) {
    if next.leader != NO_LEADER && !next.replicas.contains(&next.leader) {
        match next
            .replicas
            .iter()
            .copied()
            .find(|b| next.isr.contains(b) && image.can_lead(*b))
        {
            Some(b) => {
                next.leader = b;
                next.leader_broker_epoch = image.brokers.get(&b).map_or(0, |r| r.epoch);
            }
            None => {
                next.leader = NO_LEADER;
                next.leader_broker_epoch = 0;
            }
        }
    }
    let leader_changed =
        next.leader != stored.leader || next.leader_broker_epoch != stored.leader_broker_epoch;
    let removed = stored.replicas.iter().any(|b| !next.replicas.contains(b));
    if leader_changed || removed {
        next.leader_epoch = next.leader_epoch.max(stored.leader_epoch + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::next_state;
    use crate::model::{BrokerRegistration, TopicRecord, Versioned};
    use proptest::prelude::*;
    use uuid::Uuid;

    fn image(live: &[BrokerId], state: PartitionState) -> ClusterImage {
        let id = Uuid::from_u128(7);
        let mut img = ClusterImage {
            brokers: live
                .iter()
                .map(|&b| {
                    (
                        b,
                        BrokerRegistration {
                            id: b,
                            host: "127.0.0.1".into(),
                            port: 9092 + b,
                            rack: None,
                            http: String::new(),
                            incarnation: Uuid::nil(),
                            shutting_down: false,
                            listeners: Default::default(),
                            epoch: 100 + b as i64,
                        },
                    )
                })
                .collect(),
            ..Default::default()
        };
        img.topics.insert(
            "t".into(),
            TopicRecord {
                name: "t".into(),
                id,
                partitions: 1,
                configs: Default::default(),
            },
        );
        img.partitions.insert(
            TopicPartition {
                topic_id: id,
                index: 0,
            },
            Versioned {
                value: state,
                revision: 42,
            },
        );
        img
    }

    fn state(replicas: &[BrokerId], isr: &[BrokerId], leader: BrokerId) -> PartitionState {
        PartitionState {
            replicas: replicas.to_vec(),
            isr: isr.to_vec(),
            leader,
            leader_epoch: 5,
            leader_broker_epoch: 100 + leader as i64,
            partition_epoch: 9,
            adding_replicas: Vec::new(),
            removing_replicas: Vec::new(),
        }
    }

    fn planned(op: Option<MetaOp>) -> PartitionState {
        match op {
            Some(MetaOp::PutPartition { state, expect, .. }) => {
                assert_eq!(expect, Expect::Revision(42));
                state
            }
            other => panic!("expected a partition write, got {other:?}"),
        }
    }

    #[test]
    fn a_move_adds_first_and_removes_once_the_new_replica_is_in_sync() {
        let s = state(&[0, 1, 2], &[0, 1, 2], 0);
        let img = image(&[0, 1, 2, 3], s.clone());
        let started = planned(
            plan_reassignment(&img, "t", 0, &Reassignment::To(vec![3, 1, 2]), false).unwrap(),
        );
        assert_eq!(started.replicas, vec![3, 1, 2, 0]);
        assert_eq!(started.adding_replicas, vec![3]);
        assert_eq!(started.removing_replicas, vec![0]);
        assert_eq!(started.isr, vec![0, 1, 2], "the ISR keeps its members");
        assert_eq!((started.leader, started.leader_epoch), (0, 5));
        assert_eq!(started.partition_epoch, 10);
        // Nothing more happens until broker 3 is in sync.
        assert_eq!(complete(&img, &started, &started), None);
        let mut caught_up = started.clone();
        caught_up.isr.push(3);
        let done = complete(&img, &caught_up, &caught_up).unwrap();
        assert_eq!(done.replicas, vec![3, 1, 2]);
        assert_eq!(done.isr, vec![1, 2, 3]);
        assert!(!done.is_reassigning());
        assert_eq!(
            done.leader, 3,
            "the removed leader hands over to an in-sync target"
        );
        assert_eq!(done.leader_broker_epoch, 103);
        assert_eq!(done.leader_epoch, 6);
    }

    #[test]
    fn removing_a_follower_bumps_the_leader_epoch_and_keeps_the_leader() {
        let s = state(&[0, 1, 2], &[0, 1, 2], 0);
        let img = image(&[0, 1, 2], s);
        let done =
            planned(plan_reassignment(&img, "t", 0, &Reassignment::To(vec![0, 1]), true).unwrap());
        assert_eq!(
            (done.replicas, done.isr, done.leader, done.leader_epoch),
            (vec![0, 1], vec![0, 1], 0, 6)
        );
        assert!(done.adding_replicas.is_empty() && done.removing_replicas.is_empty());
    }

    #[test]
    fn requests_that_cannot_be_met_are_refused() {
        let s = state(&[0, 1], &[0, 1], 0);
        let img = image(&[0, 1, 2], s);
        let plan = |t: Vec<BrokerId>, rf| plan_reassignment(&img, "t", 0, &Reassignment::To(t), rf);
        assert!(matches!(
            plan(vec![], true),
            Err(PlanError::InvalidReplicaAssignment(_))
        ));
        assert!(matches!(
            plan(vec![1, 1], true),
            Err(PlanError::InvalidReplicaAssignment(_))
        ));
        assert!(matches!(
            plan(vec![0, 9], true),
            Err(PlanError::InvalidReplicaAssignment(_))
        ));
        assert!(matches!(
            plan(vec![0, 1, 2], false),
            Err(PlanError::InvalidReplicationFactor(_))
        ));
        assert!(matches!(
            plan_reassignment(&img, "t", 0, &Reassignment::Cancel, true),
            Err(PlanError::NoReassignmentInProgress(_))
        ));
        assert!(matches!(
            plan_reassignment(&img, "t", 1, &Reassignment::To(vec![0, 1]), true),
            Err(PlanError::UnknownTopic(_))
        ));
        assert!(matches!(
            plan_reassignment(&img, "u", 0, &Reassignment::To(vec![0, 1]), true),
            Err(PlanError::UnknownTopic(_))
        ));
        assert_eq!(
            plan(vec![0, 1], true),
            Ok(None),
            "the same set changes nothing"
        );
        let reordered = planned(plan(vec![1, 0], false).unwrap());
        assert_eq!(
            (reordered.replicas, reordered.leader, reordered.leader_epoch),
            (vec![1, 0], 0, 5),
            "a new order only changes the preferred leader"
        );
    }

    #[test]
    fn cancelling_goes_back_to_the_original_replicas() {
        let s = state(&[0, 1, 2], &[0, 1, 2], 0);
        let img = image(&[0, 1, 2, 3, 4], s);
        let started = planned(
            plan_reassignment(&img, "t", 0, &Reassignment::To(vec![3, 4, 2]), true).unwrap(),
        );
        let img = image(&[0, 1, 2, 3, 4], started.clone());
        let back = planned(plan_reassignment(&img, "t", 0, &Reassignment::Cancel, true).unwrap());
        assert_eq!(back.isr, vec![0, 1, 2]);
        assert!(!back.is_reassigning());
        assert_eq!(back.leader, 0);
        let mut sorted = back.replicas.clone();
        sorted.sort();
        assert_eq!(sorted, vec![0, 1, 2]);
        assert_eq!(
            back.leader_epoch, 6,
            "dropping the added replicas fences them"
        );
    }

    #[test]
    fn a_new_target_replaces_the_one_under_way() {
        let s = state(&[0, 1, 2], &[0, 1, 2], 0);
        let img = image(&[0, 1, 2, 3, 4], s);
        let mut first = planned(
            plan_reassignment(&img, "t", 0, &Reassignment::To(vec![3, 1, 2]), true).unwrap(),
        );
        first.isr.push(3);
        first.leader = 3;
        first.leader_broker_epoch = 103;
        first.leader_epoch = 6;
        let img = image(&[0, 1, 2, 3, 4], first);
        let second = planned(
            plan_reassignment(&img, "t", 0, &Reassignment::To(vec![4, 1, 2]), true).unwrap(),
        );
        assert_eq!(second.replicas, vec![4, 1, 2, 0]);
        assert_eq!(second.adding_replicas, vec![4]);
        assert_eq!(second.removing_replicas, vec![0]);
        assert!(
            !second.isr.contains(&3),
            "the dropped replica leaves the ISR"
        );
        assert_eq!(
            second.leader, 1,
            "the dropped leader hands over to an in-sync target"
        );
        assert_eq!(second.leader_epoch, 7);
    }

    #[test]
    fn the_controller_completes_a_reassignment_once_the_target_is_in_sync() {
        let mut s = state(&[3, 1, 2, 0], &[0, 1, 2, 3], 0);
        s.adding_replicas = vec![3];
        s.removing_replicas = vec![0];
        let img = image(&[0, 1, 2, 3], s.clone());
        let n = next_state(&img, &s, false).unwrap();
        assert_eq!((n.replicas.clone(), n.leader), (vec![3, 1, 2], 3));
        assert_eq!(n.partition_epoch, s.partition_epoch + 1);
        assert_eq!(n.leader_epoch, s.leader_epoch + 1);
        assert_eq!(next_state(&img, &n, false), None, "stable once done");
    }

    proptest! {
        /// Whatever is asked and however far the new replicas got, a
        /// reassignment keeps the leader in the ISR, the ISR inside the
        /// replicas, in-sync replicas in sync, and the original replicas
        /// until the target is in sync.
        #[test]
        fn reassignment_never_drops_an_in_sync_copy_early(
            isr in proptest::collection::btree_set(0i32..3, 1..=3),
            target in proptest::collection::btree_set(0i32..6, 1..=4),
            synced in proptest::collection::btree_set(0i32..6, 0..=6),
            leader_in_isr in 0usize..3,
        ) {
            let isr: Vec<_> = isr.into_iter().collect();
            let leader = isr[leader_in_isr % isr.len()];
            let s = state(&[0, 1, 2], &isr, leader);
            let live = [0, 1, 2, 3, 4, 5];
            let img = image(&live, s.clone());
            let target: Vec<_> = target.into_iter().collect();
            let Some(MetaOp::PutPartition { state: started, .. }) =
                plan_reassignment(&img, "t", 0, &Reassignment::To(target.clone()), true).unwrap()
            else {
                return Ok(());
            };
            // Some of the new replicas catch up.
            let mut later = started.clone();
            for b in &started.adding_replicas {
                if synced.contains(b) {
                    later.isr.push(*b);
                }
            }
            let img = image(&live, later.clone());
            let end = next_state(&img, &later, false).unwrap_or_else(|| later.clone());
            for st in [&started, &end] {
                prop_assert!(st.isr.contains(&st.leader), "{st:?}");
                prop_assert!(st.isr.iter().all(|b| st.replicas.contains(b)), "{st:?}");
                prop_assert!(st.leader_epoch >= s.leader_epoch);
            }
            if end.is_reassigning() {
                for b in &isr {
                    prop_assert!(end.isr.contains(b), "in-sync {b} dropped early: {end:?}");
                }
            } else {
                let mut want = target.clone();
                want.sort();
                let mut got = end.replicas.clone();
                got.sort();
                prop_assert_eq!(got, want);
                prop_assert!(end.isr.iter().all(|b| target.contains(b)));
            }
        }
    }
}

//! The coordinator's side of KIP-848 consumer groups ([`consumer`]): one
//! map of groups beside the classic ones, conversion between the two
//! protocols, and their timeouts.
//!
//! A group id belongs to one protocol at a time. An empty classic group
//! (or one known only by its committed offsets) becomes a consumer group on
//! the first ConsumerGroupHeartbeat, and an empty consumer group becomes a
//! classic group on the first JoinGroup, keeping its offsets, as Kafka 4
//! does. A group with live members of the other protocol refuses:
//! GROUP_ID_NOT_FOUND for a heartbeat, INCONSISTENT_GROUP_PROTOCOL for a
//! JoinGroup (Kafka's online migration of live groups is not built).

use std::collections::HashMap;

use kafka_protocol::ResponseError;
use tracing::info;

use super::consumer::{ConsumerGroup, ConsumerLimits, Heartbeat, HeartbeatAnswer, Refusal, Topics};
use super::GroupCoordinator;

impl GroupCoordinator {
    fn consumer_limits(&self) -> ConsumerLimits {
        ConsumerLimits {
            session_timeout_ms: self.config.consumer_session_timeout_ms,
        }
    }

    /// `group.consumer.heartbeat.interval.ms`, for heartbeat answers.
    pub fn consumer_heartbeat_interval_ms(&self) -> i32 {
        self.config.consumer_heartbeat_interval_ms
    }

    /// ConsumerGroupHeartbeat.
    pub fn consumer_heartbeat(
        &self,
        group_id: &str,
        hb: Heartbeat,
        topics: &Topics,
    ) -> Result<HeartbeatAnswer, Refusal> {
        let now = self.now();
        let limits = self.consumer_limits();
        let joining = hb.member_epoch == 0;
        let mut consumer = self.consumer.lock().expect("consumer groups lock");
        if !consumer.contains_key(group_id) {
            if !joining {
                // Not known here (this coordinator restarted or took the
                // group over): the member joins again.
                return Err(Refusal {
                    code: ResponseError::UnknownMemberId,
                    message: format!(
                        "group {group_id} has no member {}; join again",
                        hb.member_id
                    ),
                });
            }
            let mut classic = self.groups.lock().expect("groups lock");
            let generation = match classic.get(group_id) {
                Some(g) if !g.is_empty() => {
                    return Err(Refusal {
                        code: ResponseError::GroupIdNotFound,
                        message: format!(
                            "group {group_id} has members using the classic protocol; it converts once they leave"
                        ),
                    })
                }
                Some(g) => g.generation(),
                None => self
                    .store
                    .read(|i| i.groups.get(group_id).map(|g| g.record.generation))
                    .unwrap_or(0),
            };
            if classic.remove(group_id).is_some() {
                info!(
                    group = group_id,
                    "empty classic group converted to the consumer protocol"
                );
            }
            consumer.insert(
                group_id.to_string(),
                ConsumerGroup::new(group_id, generation.max(0)),
            );
        }
        let g = consumer.get_mut(group_id).expect("present");
        let before = (g.group_epoch, g.members.len());
        let answer = g.heartbeat(hb, topics, &limits, now);
        let after = (g.group_epoch, g.members.len());
        let empty = g.is_empty();
        drop(consumer);
        if before != after {
            info!(
                group = group_id,
                epoch = after.0,
                members = after.1,
                "consumer group changed"
            );
            self.note_emptiness(group_id, empty);
        }
        answer
    }

    /// Records when a group became empty (offsets of empty groups expire).
    pub(super) fn note_emptiness(&self, group_id: &str, empty: bool) {
        let mut since = self.empty_since.lock().expect("empty lock");
        if empty {
            since
                .entry(group_id.to_string())
                .or_insert_with(crate::state::now_ms);
        } else {
            since.remove(group_id);
        }
    }

    /// A consumer group's state, for ConsumerGroupDescribe and the admin API.
    pub fn consumer_group(&self, group_id: &str) -> Option<ConsumerGroup> {
        self.consumer
            .lock()
            .expect("consumer groups lock")
            .get(group_id)
            .cloned()
    }

    /// Kafka's group type: `consumer` for KIP-848 groups, else `classic`.
    pub fn group_type(&self, group_id: &str) -> &'static str {
        if self
            .consumer
            .lock()
            .expect("consumer groups lock")
            .contains_key(group_id)
        {
            "consumer"
        } else {
            "classic"
        }
    }

    /// Session and rebalance timeouts of consumer groups.
    pub(super) fn tick_consumer(&self, now: i64) {
        let mut emptied = Vec::new();
        for (id, g) in self
            .consumer
            .lock()
            .expect("consumer groups lock")
            .iter_mut()
        {
            for (member, why) in g.expire(now) {
                info!(group = %id, member = %member, reason = why, epoch = g.group_epoch, "consumer group member removed");
            }
            if g.is_empty() {
                emptied.push(id.clone());
            }
        }
        for id in emptied {
            self.note_emptiness(&id, true);
        }
    }

    /// A JoinGroup for `group_id` (with the consumer groups locked):
    /// refused while it is a consumer group with members; an empty one
    /// becomes a classic group.
    pub(super) fn claim_for_classic(
        consumer: &mut HashMap<String, ConsumerGroup>,
        group_id: &str,
    ) -> Result<(), ResponseError> {
        match consumer.get(group_id) {
            Some(g) if !g.is_empty() => Err(ResponseError::InconsistentGroupProtocol),
            Some(_) => {
                consumer.remove(group_id);
                info!(
                    group = group_id,
                    "empty consumer group converted to the classic protocol"
                );
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// OffsetCommit against a consumer group, if `group_id` is one.
    pub(super) fn check_consumer_commit(
        &self,
        group_id: &str,
        member_id: &str,
        epoch: i32,
    ) -> Option<Result<(), ResponseError>> {
        let consumer = self.consumer.lock().expect("consumer groups lock");
        consumer
            .get(group_id)
            .map(|g| g.check_commit(member_id, epoch))
    }
}

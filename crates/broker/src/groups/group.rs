//! One consumer group under the classic rebalance protocol: members, the
//! generation, and the state machine Apache Kafka's `GroupCoordinator` runs.
//!
//! Pure: time comes in as `now` (milliseconds), and answers to requests that
//! must wait (JoinGroup until everyone rejoined, SyncGroup until the leader
//! sent the assignment) go out through oneshot senders the caller awaits.
//! The coordinator holds each group under a lock and calls [`Group::tick`]
//! periodically for session and rebalance timeouts.
//!
//! States: `Empty` → (a member joins) `PreparingRebalance` → (all known
//! members rejoined, or the rebalance timeout) `CompletingRebalance` → (the
//! leader's SyncGroup) `Stable` → (a member joins, leaves, changes its
//! protocols or misses its session timeout) `PreparingRebalance` …; a group
//! whose last member leaves is `Empty` again.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use kafka_protocol::ResponseError;
use tokio::sync::oneshot;
use tracing::info;

/// A group's state, named as Kafka names them in DescribeGroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    /// No members (may still hold committed offsets).
    Empty,
    /// Waiting for members to (re)join.
    PreparingRebalance,
    /// Joined; waiting for the leader's assignment.
    CompletingRebalance,
    /// Assigned and running.
    Stable,
    /// Deleted.
    Dead,
}

impl GroupState {
    /// Kafka's name for the state.
    pub fn name(self) -> &'static str {
        match self {
            Self::Empty => "Empty",
            Self::PreparingRebalance => "PreparingRebalance",
            Self::CompletingRebalance => "CompletingRebalance",
            Self::Stable => "Stable",
            Self::Dead => "Dead",
        }
    }
}

/// The JoinGroup answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinResult {
    /// The error, if any.
    pub error: Option<ResponseError>,
    /// The generation joined.
    pub generation: i32,
    /// Protocol type of the group.
    pub protocol_type: Option<String>,
    /// The protocol chosen for this generation.
    pub protocol_name: Option<String>,
    /// The leader's member id.
    pub leader: String,
    /// The member id of the joiner (new or assigned).
    pub member_id: String,
    /// For the leader: every member with its metadata for the chosen protocol.
    pub members: Vec<(String, Option<String>, Bytes)>,
    /// The leader must not compute a new assignment (a static leader's rejoin).
    pub skip_assignment: bool,
}

impl JoinResult {
    pub(crate) fn error(error: ResponseError, member_id: &str) -> Self {
        Self {
            error: Some(error),
            generation: -1,
            protocol_type: None,
            protocol_name: None,
            leader: String::new(),
            member_id: member_id.to_string(),
            members: Vec::new(),
            skip_assignment: false,
        }
    }
}

/// The SyncGroup answer: an error or the member's assignment.
pub type SyncResult = Result<SyncAssignment, ResponseError>;

/// What a member receives from SyncGroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncAssignment {
    /// Protocol type.
    pub protocol_type: Option<String>,
    /// Chosen protocol.
    pub protocol_name: Option<String>,
    /// The assignment bytes the leader computed.
    pub assignment: Bytes,
}

/// A join or sync answer that is either ready now or arrives later.
#[derive(Debug)]
pub enum Pending<T> {
    /// Answered now.
    Ready(T),
    /// Answered when the receiver fires.
    Wait(oneshot::Receiver<T>),
}

/// A JoinGroup request.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    /// Member id, empty on a first join.
    pub member_id: String,
    /// Static membership id.
    pub instance_id: Option<String>,
    /// Client id (for member ids and DescribeGroups).
    pub client_id: String,
    /// Client address.
    pub client_host: String,
    /// Session timeout.
    pub session_timeout_ms: i32,
    /// Rebalance timeout.
    pub rebalance_timeout_ms: i32,
    /// Protocol type (`consumer`).
    pub protocol_type: String,
    /// Supported protocols with their metadata, in preference order.
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+: a first join must come back with the id it is given.
    pub require_known_member_id: bool,
}

/// One member.
#[derive(Debug)]
pub struct Member {
    /// Member id.
    pub id: String,
    /// Static membership id.
    pub instance_id: Option<String>,
    /// Client id.
    pub client_id: String,
    /// Client address.
    pub client_host: String,
    /// Session timeout.
    pub session_timeout_ms: i32,
    /// Rebalance timeout.
    pub rebalance_timeout_ms: i32,
    /// Protocols with metadata.
    pub protocols: Vec<(String, Bytes)>,
    /// Assignment from the last sync.
    pub assignment: Bytes,
    last_heartbeat: i64,
    join_waiter: Option<oneshot::Sender<JoinResult>>,
    sync_waiter: Option<oneshot::Sender<SyncResult>>,
}

impl Member {
    /// This member's metadata for `protocol`.
    pub fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(n, _)| n == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }
}

/// Coordinator settings a group needs.
#[derive(Debug, Clone, Copy)]
pub struct GroupLimits {
    /// `group.min.session.timeout.ms`.
    pub min_session_timeout_ms: i32,
    /// `group.max.session.timeout.ms`.
    pub max_session_timeout_ms: i32,
    /// `group.initial.rebalance.delay.ms`.
    pub initial_rebalance_delay_ms: i32,
}

/// A consumer group.
#[derive(Debug)]
pub struct Group {
    /// Group id.
    pub id: String,
    state: GroupState,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    /// Members in join order (the first is the default leader).
    members: BTreeMap<u64, Member>,
    order: u64,
    /// Member ids handed out with MEMBER_ID_REQUIRED, with their deadline.
    pending: HashMap<String, i64>,
    /// When the current rebalance gives up on members that did not rejoin.
    rebalance_deadline: i64,
    /// Earliest completion of a rebalance that started from Empty.
    join_not_before: i64,
    /// Set when the generation or protocol type changed and should be persisted.
    dirty: bool,
}

fn member_id(client_id: &str) -> String {
    format!("{client_id}-{}", uuid::Uuid::new_v4())
}

impl Group {
    /// A new empty group (or one restored at `generation`).
    pub fn new(id: &str, generation: i32, protocol_type: Option<String>) -> Self {
        Self {
            id: id.to_string(),
            state: GroupState::Empty,
            generation,
            protocol_type,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            order: 0,
            pending: HashMap::new(),
            rebalance_deadline: 0,
            join_not_before: 0,
            dirty: false,
        }
    }

    /// Current state.
    pub fn state(&self) -> GroupState {
        self.state
    }

    /// Current generation.
    pub fn generation(&self) -> i32 {
        self.generation
    }

    /// Protocol type (`consumer`), if any member ever joined.
    pub fn protocol_type(&self) -> Option<&str> {
        self.protocol_type.as_deref()
    }

    /// The protocol of the current generation.
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// The leader's member id.
    pub fn leader(&self) -> Option<&str> {
        self.leader.as_deref()
    }

    /// Members in join order.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// Whether the group has members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Takes the flag saying generation or protocol type changed.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// Marks the group deleted.
    pub fn mark_dead(&mut self) {
        self.state = GroupState::Dead;
    }

    fn key_of(&self, member_id: &str) -> Option<u64> {
        self.members
            .iter()
            .find(|(_, m)| m.id == member_id)
            .map(|(k, _)| *k)
    }

    fn key_of_instance(&self, instance_id: &str) -> Option<u64> {
        self.members
            .iter()
            .find(|(_, m)| m.instance_id.as_deref() == Some(instance_id))
            .map(|(k, _)| *k)
    }

    /// Whether `member_id` is a member.
    pub fn has_member(&self, member_id: &str) -> bool {
        self.key_of(member_id).is_some()
    }

    /// The protocols every member supports.
    fn candidate_protocols(&self) -> Vec<String> {
        let mut it = self.members.values();
        let Some(first) = it.next() else {
            return Vec::new();
        };
        let mut names: Vec<String> = first.protocols.iter().map(|(n, _)| n.clone()).collect();
        for m in it {
            names.retain(|n| m.protocols.iter().any(|(p, _)| p == n));
        }
        names
    }

    /// Kafka's vote: each member votes for its most preferred candidate.
    fn select_protocol(&self) -> Option<String> {
        let candidates = self.candidate_protocols();
        let mut votes: Vec<(usize, &String)> = candidates.iter().map(|c| (0, c)).collect();
        for m in self.members.values() {
            if let Some((name, _)) = m.protocols.iter().find(|(n, _)| candidates.contains(n)) {
                if let Some(v) = votes.iter_mut().find(|(_, c)| *c == name) {
                    v.0 += 1;
                }
            }
        }
        // Most votes; ties go to the earlier candidate (the first member's preference).
        votes
            .iter()
            .enumerate()
            .max_by(|(ia, (va, _)), (ib, (vb, _))| va.cmp(vb).then(ib.cmp(ia)))
            .map(|(_, (_, c))| (*c).clone())
    }

    fn supports(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if protocols.is_empty() || protocol_type.is_empty() {
            return false;
        }
        if self.members.is_empty() {
            return true;
        }
        if self.protocol_type.as_deref() != Some(protocol_type) {
            return false;
        }
        let candidates = self.candidate_protocols();
        protocols.iter().any(|(n, _)| candidates.contains(n))
    }

    /// Handles JoinGroup.
    pub fn join(
        &mut self,
        req: JoinRequest,
        limits: &GroupLimits,
        now: i64,
    ) -> Pending<JoinResult> {
        if self.state == GroupState::Dead {
            return Pending::Ready(JoinResult::error(
                ResponseError::CoordinatorNotAvailable,
                &req.member_id,
            ));
        }
        if req.session_timeout_ms < limits.min_session_timeout_ms
            || req.session_timeout_ms > limits.max_session_timeout_ms
        {
            return Pending::Ready(JoinResult::error(
                ResponseError::InvalidSessionTimeout,
                &req.member_id,
            ));
        }
        if !self.supports(&req.protocol_type, &req.protocols) {
            return Pending::Ready(JoinResult::error(
                ResponseError::InconsistentGroupProtocol,
                &req.member_id,
            ));
        }
        if req.member_id.is_empty() {
            if let Some(instance) = req.instance_id.clone() {
                return self.static_join(req, &instance, limits, now);
            }
            let id = member_id(&req.client_id);
            if req.require_known_member_id {
                self.pending
                    .insert(id.clone(), now + req.session_timeout_ms as i64);
                return Pending::Ready(JoinResult::error(ResponseError::MemberIdRequired, &id));
            }
            return self.add_member_and_wait(id, req, limits, now);
        }
        if self.pending.remove(&req.member_id).is_some() {
            let id = req.member_id.clone();
            return self.add_member_and_wait(id, req, limits, now);
        }
        let Some(key) = self.key_of(&req.member_id) else {
            return Pending::Ready(JoinResult::error(
                ResponseError::UnknownMemberId,
                &req.member_id,
            ));
        };
        if let Some(instance) = &req.instance_id {
            if self.members[&key].instance_id.as_deref() != Some(instance) {
                return Pending::Ready(JoinResult::error(
                    ResponseError::FencedInstanceId,
                    &req.member_id,
                ));
            }
        }
        let changed = self.members[&key].protocols != req.protocols;
        let is_leader = self.leader.as_deref() == Some(req.member_id.as_str());
        {
            let m = self.members.get_mut(&key).expect("member");
            m.last_heartbeat = now;
            m.session_timeout_ms = req.session_timeout_ms;
            m.rebalance_timeout_ms = req.rebalance_timeout_ms;
            m.protocols = req.protocols.clone();
        }
        match self.state {
            GroupState::PreparingRebalance => self.wait_for_join(key, now),
            GroupState::CompletingRebalance | GroupState::Stable
                if !changed && (!is_leader || self.state != GroupState::Stable) =>
            {
                // A rejoin with the same metadata (a lost JoinGroup answer):
                // this generation's information again.
                Pending::Ready(self.join_result_for(&req.member_id, false))
            }
            GroupState::CompletingRebalance | GroupState::Stable => {
                let rx = self.set_join_waiter(key);
                self.prepare_rebalance(now, "member rejoined with new metadata or as leader");
                self.maybe_complete_join(now);
                Pending::Wait(rx)
            }
            GroupState::Empty | GroupState::Dead => Pending::Ready(JoinResult::error(
                ResponseError::UnknownMemberId,
                &req.member_id,
            )),
        }
    }

    fn static_join(
        &mut self,
        req: JoinRequest,
        instance: &str,
        limits: &GroupLimits,
        now: i64,
    ) -> Pending<JoinResult> {
        let Some(key) = self.key_of_instance(instance) else {
            let id = member_id(&req.client_id);
            return self.add_member_and_wait(id, req, limits, now);
        };
        // A known instance came back with a new member id: it replaces its
        // old incarnation and keeps its assignment.
        let new_id = member_id(&req.client_id);
        let protocols_changed;
        {
            let m = self.members.get_mut(&key).expect("member");
            if let Some(w) = m.join_waiter.take() {
                let _ = w.send(JoinResult::error(ResponseError::FencedInstanceId, &m.id));
            }
            if let Some(w) = m.sync_waiter.take() {
                let _ = w.send(Err(ResponseError::FencedInstanceId));
            }
            info!(group = %self.id, instance, old = %m.id, new = %new_id, "static member rejoined");
            if self.leader.as_deref() == Some(m.id.as_str()) {
                self.leader = Some(new_id.clone());
            }
            m.id = new_id.clone();
            m.client_id = req.client_id.clone();
            m.client_host = req.client_host.clone();
            m.session_timeout_ms = req.session_timeout_ms;
            m.rebalance_timeout_ms = req.rebalance_timeout_ms;
            m.last_heartbeat = now;
            protocols_changed = m.protocols != req.protocols;
            m.protocols = req.protocols;
        }
        match self.state {
            GroupState::PreparingRebalance => self.wait_for_join(key, now),
            GroupState::Stable if !protocols_changed || self.select_protocol() == self.protocol => {
                let leader = self.leader.as_deref() == Some(new_id.as_str());
                Pending::Ready(self.join_result_for(&new_id, leader))
            }
            _ => {
                let rx = self.set_join_waiter(key);
                self.prepare_rebalance(now, "static member rejoined");
                self.maybe_complete_join(now);
                Pending::Wait(rx)
            }
        }
    }

    fn add_member_and_wait(
        &mut self,
        id: String,
        req: JoinRequest,
        limits: &GroupLimits,
        now: i64,
    ) -> Pending<JoinResult> {
        if self.members.is_empty() {
            self.protocol_type = Some(req.protocol_type.clone());
            self.dirty = true;
        }
        let key = self.order;
        self.order += 1;
        self.members.insert(
            key,
            Member {
                id,
                instance_id: req.instance_id,
                client_id: req.client_id,
                client_host: req.client_host,
                session_timeout_ms: req.session_timeout_ms,
                rebalance_timeout_ms: req.rebalance_timeout_ms,
                protocols: req.protocols,
                assignment: Bytes::new(),
                last_heartbeat: now,
                join_waiter: None,
                sync_waiter: None,
            },
        );
        let rx = self.set_join_waiter(key);
        let from_empty = self.state == GroupState::Empty;
        if self.state != GroupState::PreparingRebalance {
            self.prepare_rebalance(now, "member joined");
        }
        if from_empty {
            // Kafka's initial rebalance delay: let a starting fleet of
            // consumers arrive before the first assignment.
            self.join_not_before = now + limits.initial_rebalance_delay_ms as i64;
        } else if self.join_not_before > now {
            self.join_not_before =
                (now + limits.initial_rebalance_delay_ms as i64).min(self.rebalance_deadline);
        }
        self.maybe_complete_join(now);
        Pending::Wait(rx)
    }

    fn wait_for_join(&mut self, key: u64, now: i64) -> Pending<JoinResult> {
        let rx = self.set_join_waiter(key);
        self.maybe_complete_join(now);
        Pending::Wait(rx)
    }

    fn set_join_waiter(&mut self, key: u64) -> oneshot::Receiver<JoinResult> {
        let (tx, rx) = oneshot::channel();
        let m = self.members.get_mut(&key).expect("member");
        if let Some(old) = m.join_waiter.replace(tx) {
            let _ = old.send(JoinResult::error(ResponseError::RebalanceInProgress, &m.id));
        }
        rx
    }

    fn join_result_for(&self, member_id: &str, skip_assignment: bool) -> JoinResult {
        let protocol = self.protocol.clone().unwrap_or_default();
        let is_leader = self.leader.as_deref() == Some(member_id);
        JoinResult {
            error: None,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            member_id: member_id.to_string(),
            members: if is_leader {
                self.members
                    .values()
                    .map(|m| (m.id.clone(), m.instance_id.clone(), m.metadata(&protocol)))
                    .collect()
            } else {
                Vec::new()
            },
            skip_assignment,
        }
    }

    fn prepare_rebalance(&mut self, now: i64, reason: &str) {
        if self.state == GroupState::CompletingRebalance {
            // The leader's assignment is for a generation that will not be.
            for m in self.members.values_mut() {
                if let Some(w) = m.sync_waiter.take() {
                    let _ = w.send(Err(ResponseError::RebalanceInProgress));
                }
            }
        }
        let timeout = self
            .members
            .values()
            .map(|m| m.rebalance_timeout_ms)
            .max()
            .unwrap_or(0) as i64;
        self.state = GroupState::PreparingRebalance;
        self.rebalance_deadline = now + timeout;
        self.join_not_before = now;
        info!(group = %self.id, generation = self.generation, members = self.members.len(), reason, "preparing rebalance");
    }

    /// Completes the join phase if every member rejoined (and no delay
    /// holds it back), or if the rebalance timed out.
    fn maybe_complete_join(&mut self, now: i64) {
        if self.state != GroupState::PreparingRebalance {
            return;
        }
        let all_joined =
            self.pending.is_empty() && self.members.values().all(|m| m.join_waiter.is_some());
        let timed_out = now >= self.rebalance_deadline;
        if !(timed_out || (all_joined && now >= self.join_not_before)) {
            return;
        }
        if timed_out {
            let gone: Vec<u64> = self
                .members
                .iter()
                .filter(|(_, m)| m.join_waiter.is_none())
                .map(|(k, _)| *k)
                .collect();
            for k in gone {
                let m = self.members.remove(&k).expect("member");
                info!(group = %self.id, member = %m.id, "member removed: did not rejoin within the rebalance timeout");
            }
            self.pending.clear();
        }
        self.generation += 1;
        self.dirty = true;
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.protocol = None;
            self.leader = None;
            info!(group = %self.id, generation = self.generation, "group is empty");
            return;
        }
        self.protocol = self.select_protocol();
        if self.leader.as_ref().is_none_or(|l| !self.has_member(l)) {
            self.leader = self.members.values().next().map(|m| m.id.clone());
        }
        self.state = GroupState::CompletingRebalance;
        info!(
            group = %self.id,
            generation = self.generation,
            members = self.members.len(),
            protocol = self.protocol.as_deref().unwrap_or(""),
            leader = self.leader.as_deref().unwrap_or(""),
            "join completed"
        );
        let results: Vec<(u64, JoinResult)> = self
            .members
            .iter()
            .map(|(k, m)| (*k, self.join_result_for(&m.id, false)))
            .collect();
        for (k, r) in results {
            let m = self.members.get_mut(&k).expect("member");
            m.last_heartbeat = now;
            if let Some(w) = m.join_waiter.take() {
                let _ = w.send(r);
            }
        }
    }

    fn check_member(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Result<u64, ResponseError> {
        if self.state == GroupState::Dead {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        let Some(key) = self.key_of(member_id) else {
            if let Some(i) = instance_id {
                if self.key_of_instance(i).is_some() {
                    return Err(ResponseError::FencedInstanceId);
                }
            }
            return Err(ResponseError::UnknownMemberId);
        };
        if let Some(i) = instance_id {
            if self.members[&key].instance_id.as_deref() != Some(i) {
                return Err(ResponseError::FencedInstanceId);
            }
        }
        if generation != self.generation {
            return Err(ResponseError::IllegalGeneration);
        }
        Ok(key)
    }

    /// Handles SyncGroup.
    pub fn sync(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
        now: i64,
    ) -> Pending<SyncResult> {
        let key = match self.check_member(member_id, instance_id, generation) {
            Ok(k) => k,
            Err(e) => return Pending::Ready(Err(e)),
        };
        self.members.get_mut(&key).expect("member").last_heartbeat = now;
        match self.state {
            GroupState::PreparingRebalance => {
                Pending::Ready(Err(ResponseError::RebalanceInProgress))
            }
            GroupState::Stable => Pending::Ready(Ok(self.assignment_of(key))),
            GroupState::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                self.members.get_mut(&key).expect("member").sync_waiter = Some(tx);
                if self.leader.as_deref() == Some(member_id) {
                    let given: HashMap<String, Bytes> = assignments.into_iter().collect();
                    for m in self.members.values_mut() {
                        m.assignment = given.get(&m.id).cloned().unwrap_or_default();
                    }
                    self.state = GroupState::Stable;
                    info!(group = %self.id, generation = self.generation, "group is stable");
                    let keys: Vec<u64> = self.members.keys().copied().collect();
                    for k in keys {
                        let a = self.assignment_of(k);
                        if let Some(w) =
                            self.members.get_mut(&k).expect("member").sync_waiter.take()
                        {
                            let _ = w.send(Ok(a));
                        }
                    }
                }
                Pending::Wait(rx)
            }
            GroupState::Empty | GroupState::Dead => {
                Pending::Ready(Err(ResponseError::UnknownMemberId))
            }
        }
    }

    fn assignment_of(&self, key: u64) -> SyncAssignment {
        SyncAssignment {
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol.clone(),
            assignment: self.members[&key].assignment.clone(),
        }
    }

    /// Handles Heartbeat.
    pub fn heartbeat(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now: i64,
    ) -> Result<(), ResponseError> {
        if self.state == GroupState::Empty {
            return Err(ResponseError::UnknownMemberId);
        }
        let key = match self.check_member(member_id, instance_id, generation) {
            Ok(k) => k,
            // A member of the previous generation heartbeating during a
            // rebalance is told to rejoin rather than that it is unknown.
            Err(ResponseError::IllegalGeneration)
                if self.state == GroupState::PreparingRebalance =>
            {
                return Err(ResponseError::RebalanceInProgress);
            }
            Err(e) => return Err(e),
        };
        self.members.get_mut(&key).expect("member").last_heartbeat = now;
        match self.state {
            GroupState::PreparingRebalance => Err(ResponseError::RebalanceInProgress),
            _ => Ok(()),
        }
    }

    /// Handles one member of LeaveGroup.
    pub fn leave(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        now: i64,
    ) -> Result<(), ResponseError> {
        if self.state == GroupState::Dead {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        if instance_id.is_none() && self.pending.remove(member_id).is_some() {
            return Ok(());
        }
        let key = match (instance_id, member_id) {
            (Some(i), m) => match self.key_of_instance(i) {
                Some(k) if m.is_empty() || self.members[&k].id == m => k,
                Some(_) => return Err(ResponseError::FencedInstanceId),
                None => return Err(ResponseError::UnknownMemberId),
            },
            (None, m) => match self.key_of(m) {
                Some(k) => k,
                None => return Err(ResponseError::UnknownMemberId),
            },
        };
        self.remove_member(key, now, "member left the group");
        Ok(())
    }

    fn remove_member(&mut self, key: u64, now: i64, reason: &str) {
        let Some(mut m) = self.members.remove(&key) else {
            return;
        };
        info!(group = %self.id, member = %m.id, reason, "member removed");
        if let Some(w) = m.join_waiter.take() {
            let _ = w.send(JoinResult::error(ResponseError::UnknownMemberId, &m.id));
        }
        if let Some(w) = m.sync_waiter.take() {
            let _ = w.send(Err(ResponseError::UnknownMemberId));
        }
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.prepare_rebalance(now, reason);
                self.maybe_complete_join(now);
            }
            GroupState::PreparingRebalance => self.maybe_complete_join(now),
            GroupState::Empty | GroupState::Dead => {}
        }
    }

    /// Expires members past their session timeout and completes rebalances
    /// past their deadline. Returns whether anything changed.
    pub fn tick(&mut self, now: i64) -> bool {
        let before = (self.state, self.generation, self.members.len());
        self.pending.retain(|_, deadline| *deadline > now);
        let expired: Vec<u64> = self
            .members
            .iter()
            .filter(|(_, m)| {
                m.join_waiter.is_none()
                    && m.sync_waiter.is_none()
                    && now - m.last_heartbeat > m.session_timeout_ms as i64
            })
            .map(|(k, _)| *k)
            .collect();
        for k in expired {
            self.remove_member(k, now, "session timeout expired");
        }
        self.maybe_complete_join(now);
        before != (self.state, self.generation, self.members.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: GroupLimits = GroupLimits {
        min_session_timeout_ms: 1000,
        max_session_timeout_ms: 60_000,
        initial_rebalance_delay_ms: 0,
    };

    fn req(member_id: &str, instance: Option<&str>) -> JoinRequest {
        JoinRequest {
            member_id: member_id.to_string(),
            instance_id: instance.map(str::to_string),
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 30_000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(b"meta"))],
            require_known_member_id: true,
        }
    }

    fn ready<T: std::fmt::Debug>(p: Pending<T>) -> T {
        match p {
            Pending::Ready(t) => t,
            Pending::Wait(mut rx) => rx.try_recv().expect("answered"),
        }
    }

    fn waiting<T>(p: Pending<T>) -> oneshot::Receiver<T> {
        match p {
            Pending::Wait(rx) => rx,
            Pending::Ready(_) => panic!("expected to wait"),
        }
    }

    /// Joins a new member through MEMBER_ID_REQUIRED; returns its id and the
    /// receiver of its JoinGroup answer.
    fn join_new(g: &mut Group, now: i64) -> (String, oneshot::Receiver<JoinResult>) {
        let first = ready(g.join(req("", None), &LIMITS, now));
        assert_eq!(first.error, Some(ResponseError::MemberIdRequired));
        let id = first.member_id;
        (id.clone(), waiting(g.join(req(&id, None), &LIMITS, now)))
    }

    #[test]
    fn two_members_join_sync_and_become_stable() {
        let mut g = Group::new("g", 0, None);
        let (a, mut ja) = join_new(&mut g, 0);
        // One member, everyone joined: the join completes at once.
        let ra = ja.try_recv().unwrap();
        assert_eq!((ra.generation, ra.leader.as_str()), (1, a.as_str()));
        assert_eq!(ra.members.len(), 1);
        assert!(ready(g.sync(&a, None, 1, vec![(a.clone(), Bytes::from_static(b"A"))], 1)).is_ok());
        assert_eq!(g.state(), GroupState::Stable);

        // A second member: the first learns of the rebalance by heartbeat.
        let (b, mut jb) = join_new(&mut g, 2);
        assert_eq!(g.state(), GroupState::PreparingRebalance);
        assert!(
            jb.try_recv().is_err(),
            "waits for the first member to rejoin"
        );
        assert_eq!(
            g.heartbeat(&a, None, 1, 3),
            Err(ResponseError::RebalanceInProgress)
        );
        let mut ja = waiting(g.join(req(&a, None), &LIMITS, 4));
        let (ra, rb) = (ja.try_recv().unwrap(), jb.try_recv().unwrap());
        assert_eq!((ra.generation, rb.generation), (2, 2));
        assert_eq!(ra.leader, a, "the leader stays the leader");
        assert_eq!((ra.members.len(), rb.members.len()), (2, 0));

        // The follower waits for the leader's assignment.
        let mut sb = waiting(g.sync(&b, None, 2, vec![], 5));
        let sa = ready(g.sync(
            &a,
            None,
            2,
            vec![(a.clone(), "A".into()), (b.clone(), "B".into())],
            6,
        ));
        assert_eq!(sa.unwrap().assignment, Bytes::from_static(b"A"));
        assert_eq!(
            sb.try_recv().unwrap().unwrap().assignment,
            Bytes::from_static(b"B")
        );
        assert_eq!(g.heartbeat(&b, None, 2, 7), Ok(()));
        assert_eq!(
            g.heartbeat(&b, None, 1, 7),
            Err(ResponseError::IllegalGeneration)
        );
        assert_eq!(
            g.heartbeat("nobody", None, 2, 7),
            Err(ResponseError::UnknownMemberId)
        );
    }

    #[test]
    fn a_member_missing_its_session_timeout_is_removed_and_the_rest_rebalance() {
        let mut g = Group::new("g", 0, None);
        let (a, _) = join_new(&mut g, 0);
        ready(g.sync(&a, None, 1, vec![], 0)).unwrap();
        let (b, mut jb) = join_new(&mut g, 0);
        let _ja = waiting(g.join(req(&a, None), &LIMITS, 0));
        jb.try_recv().unwrap();
        ready(g.sync(&a, None, 2, vec![], 0)).unwrap();
        ready(g.sync(&b, None, 2, vec![], 0)).unwrap();
        // b keeps heartbeating, a goes silent.
        for t in (1000..=10_000).step_by(1000) {
            assert_eq!(g.heartbeat(&b, None, g.generation(), t), Ok(()));
            assert!(!g.tick(t));
        }
        assert_eq!(g.heartbeat(&b, None, 2, 10_500), Ok(()));
        assert!(g.tick(12_000), "a expired after 10 s");
        assert!(!g.has_member(&a));
        assert_eq!(
            g.heartbeat(&b, None, 2, 12_001),
            Err(ResponseError::RebalanceInProgress)
        );
        let rb = ready(g.join(req(&b, None), &LIMITS, 12_002));
        assert_eq!(
            (rb.generation, rb.leader.as_str()),
            (3, b.as_str()),
            "b becomes the leader"
        );
    }

    #[test]
    fn members_that_do_not_rejoin_are_dropped_at_the_rebalance_timeout() {
        let mut g = Group::new("g", 0, None);
        let (a, _) = join_new(&mut g, 0);
        ready(g.sync(&a, None, 1, vec![], 0)).unwrap();
        let (b, mut jb) = join_new(&mut g, 100);
        // a keeps heartbeating but never rejoins.
        for t in [9_000, 18_000, 27_000] {
            assert_eq!(
                g.heartbeat(&a, None, 1, t),
                Err(ResponseError::RebalanceInProgress)
            );
            g.tick(t + 1);
        }
        assert!(jb.try_recv().is_err());
        g.tick(30_100);
        let rb = jb.try_recv().unwrap();
        assert_eq!((rb.generation, rb.leader.as_str()), (2, b.as_str()));
        assert!(!g.has_member(&a));
    }

    #[test]
    fn a_static_member_rejoining_within_its_session_keeps_its_assignment() {
        let mut g = Group::new("g", 0, None);
        let ra = ready(g.join(req("", Some("i-a")), &LIMITS, 0));
        let a1 = ra.member_id;
        let mut jb = waiting(g.join(req("", Some("i-b")), &LIMITS, 0));
        assert_eq!(g.state(), GroupState::PreparingRebalance);
        let _ja = waiting(g.join(req(&a1, Some("i-a")), &LIMITS, 0));
        let rb = jb.try_recv().unwrap();
        let b1 = rb.member_id;
        let generation = g.generation();
        ready(g.sync(
            &a1,
            Some("i-a"),
            generation,
            vec![(a1.clone(), "A".into()), (b1.clone(), "B".into())],
            0,
        ))
        .unwrap();
        ready(g.sync(&b1, Some("i-b"), generation, vec![], 0)).unwrap();

        // b restarts: it comes back with no member id, same instance id.
        let rb2 = ready(g.join(req("", Some("i-b")), &LIMITS, 5_000));
        assert_eq!(rb2.error, None);
        assert_ne!(rb2.member_id, b1);
        assert_eq!(rb2.generation, generation, "no rebalance");
        assert_eq!(g.state(), GroupState::Stable);
        let sb = ready(g.sync(&rb2.member_id, Some("i-b"), generation, vec![], 5_001)).unwrap();
        assert_eq!(sb.assignment, Bytes::from_static(b"B"));
        // The old incarnation is fenced.
        assert_eq!(
            g.heartbeat(&b1, Some("i-b"), generation, 5_002),
            Err(ResponseError::FencedInstanceId)
        );
    }

    #[test]
    fn protocol_mismatches_and_bad_timeouts_are_refused() {
        let mut g = Group::new("g", 0, None);
        let (a, _) = join_new(&mut g, 0);
        ready(g.sync(&a, None, 1, vec![], 0)).unwrap();
        let mut other = req("", None);
        other.protocols = vec![("roundrobin".into(), Bytes::new())];
        assert_eq!(
            ready(g.join(other, &LIMITS, 0)).error,
            Some(ResponseError::InconsistentGroupProtocol)
        );
        let mut short = req("", None);
        short.session_timeout_ms = 10;
        assert_eq!(
            ready(g.join(short, &LIMITS, 0)).error,
            Some(ResponseError::InvalidSessionTimeout)
        );
    }

    #[test]
    fn the_protocol_is_chosen_by_vote_among_common_ones() {
        let limits = GroupLimits {
            initial_rebalance_delay_ms: 3000,
            ..LIMITS
        };
        let mut g = Group::new("g", 0, None);
        let mut r1 = req("", None);
        r1.protocols = vec![
            ("cooperative-sticky".into(), Bytes::new()),
            ("range".into(), Bytes::new()),
        ];
        r1.require_known_member_id = false;
        let mut r2 = r1.clone();
        r2.protocols = vec![
            ("range".into(), Bytes::new()),
            ("cooperative-sticky".into(), Bytes::new()),
        ];
        let mut r3 = r1.clone();
        r3.protocols.reverse();
        let _first = g.join(r1, &limits, 0);
        let _second = g.join(r2, &limits, 0);
        let _third = g.join(r3, &limits, 0);
        g.tick(3_000);
        assert_eq!(g.state(), GroupState::CompletingRebalance);
        assert_eq!(g.protocol(), Some("range"));
    }

    #[test]
    fn the_last_member_leaving_empties_the_group() {
        let mut g = Group::new("g", 4, Some("consumer".into()));
        let (a, _) = join_new(&mut g, 0);
        assert_eq!(g.generation(), 5, "continues above a restored generation");
        ready(g.sync(&a, None, 5, vec![], 0)).unwrap();
        assert_eq!(g.leave(&a, None, 1), Ok(()));
        assert_eq!(g.state(), GroupState::Empty);
        assert_eq!(g.leave(&a, None, 1), Err(ResponseError::UnknownMemberId));
    }

    #[test]
    fn the_initial_delay_holds_the_first_join_back() {
        let limits = GroupLimits {
            initial_rebalance_delay_ms: 3000,
            ..LIMITS
        };
        let mut g = Group::new("g", 0, None);
        let mut r = req("", None);
        r.require_known_member_id = false;
        let mut j1 = waiting(g.join(r.clone(), &limits, 0));
        g.tick(1000);
        let mut j2 = waiting(g.join(r, &limits, 1000));
        g.tick(3500);
        assert!(
            j1.try_recv().is_err(),
            "the second member extended the delay"
        );
        g.tick(4001);
        assert_eq!(j1.try_recv().unwrap().members.len(), 2);
        assert_eq!(j2.try_recv().unwrap().generation, 1);
    }
}

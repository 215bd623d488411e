//! Consumer groups of the KIP-848 protocol (`group.protocol=consumer`): the
//! coordinator assigns partitions itself and every member reconciles
//! towards its target by heartbeats alone. A pure state machine: the caller
//! passes the topics it knows and the time.
//!
//! Kafka's rules (GroupMetadataManager, CurrentAssignmentBuilder):
//! - The group epoch grows when a member joins or leaves, a subscription
//!   changes, or a subscribed topic appears, goes or gains partitions.
//! - When the group epoch passes the assignment epoch, the server assignor
//!   (`uniform` or `range`) computes every member's target at that epoch.
//! - A member moves to its target in steps: first it gives up what it must
//!   revoke (its epoch stays); once its heartbeat no longer reports them it
//!   takes the new epoch and the target partitions no other member still
//!   owns; partitions still owned elsewhere come on a later heartbeat.
//! - A member silent past the session timeout, or still holding partitions
//!   to revoke past its rebalance timeout, is removed.
//! - A static member (`group.instance.id`) that leaves with epoch -2 keeps
//!   its partitions until its session times out; the same instance joining
//!   again takes them over.
//!
//! Members are not persisted: a new coordinator (restart or failover) answers
//! UNKNOWN_MEMBER_ID and members rejoin. Committed offsets are persisted.

use std::collections::{BTreeMap, BTreeSet};

use kafka_protocol::ResponseError;
use regex::Regex;
use uuid::Uuid;

/// Partitions by topic id.
pub type Assignment = BTreeMap<Uuid, BTreeSet<i32>>;

/// The server assignors.
pub const UNIFORM: &str = "uniform";
/// Contiguous ranges per topic.
pub const RANGE: &str = "range";

/// The topics the coordinator knows: name -> (id, partition count).
pub type Topics = BTreeMap<String, (Uuid, i32)>;

/// Settings of consumer groups.
#[derive(Debug, Clone, Copy)]
pub struct ConsumerLimits {
    /// `group.consumer.session.timeout.ms`.
    pub session_timeout_ms: i64,
}

/// One ConsumerGroupHeartbeat (`None`: unchanged since the last).
#[derive(Debug, Clone, Default)]
pub struct Heartbeat {
    /// The member id (the client's, from v1).
    pub member_id: String,
    /// 0 joins, -1 leaves, -2 leaves for now (static members), else the
    /// member's current epoch.
    pub member_epoch: i32,
    /// Static membership id.
    pub instance_id: Option<String>,
    /// Rack.
    pub rack_id: Option<String>,
    /// -1: unchanged.
    pub rebalance_timeout_ms: i32,
    /// Subscribed topic names.
    pub subscribed_topic_names: Option<Vec<String>>,
    /// Subscribed topics regex (RE2 syntax, whole name); empty for none.
    pub subscribed_topic_regex: Option<String>,
    /// Preferred server assignor.
    pub server_assignor: Option<String>,
    /// The partitions the member owns now.
    pub owned: Option<Assignment>,
    /// Client id, for describing the group.
    pub client_id: String,
    /// Client address, for describing the group.
    pub client_host: String,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatAnswer {
    /// The member's id.
    pub member_id: String,
    /// The member's epoch now.
    pub member_epoch: i32,
    /// The member's assigned partitions, when the member must hear them.
    pub assignment: Option<Assignment>,
}

/// A refused heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Kafka's error.
    pub code: ResponseError,
    /// What went wrong.
    pub message: String,
}

fn refuse<T>(code: ResponseError, message: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal {
        code,
        message: message.into(),
    })
}

/// Where a member is on its way to its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    /// At its target epoch with every target partition.
    Stable,
    /// Must first give up partitions (its epoch waits).
    UnrevokedPartitions,
    /// At the target epoch, waiting for partitions other members still own.
    UnreleasedPartitions,
}

/// A member.
#[derive(Debug, Clone)]
pub struct Member {
    /// Id.
    pub id: String,
    /// Static membership id.
    pub instance_id: Option<String>,
    /// Rack.
    pub rack_id: Option<String>,
    /// Client id.
    pub client_id: String,
    /// Client address.
    pub client_host: String,
    /// Current epoch (-2: a static member away).
    pub epoch: i32,
    previous_epoch: i32,
    /// Reconciliation state.
    pub state: MemberState,
    /// Subscribed topic names.
    pub subscribed_names: BTreeSet<String>,
    /// Subscribed regex, as given.
    pub regex: Option<String>,
    compiled: Option<Regex>,
    assignor: Option<String>,
    rebalance_timeout_ms: i64,
    /// Partitions it may consume.
    pub assigned: Assignment,
    /// Partitions it must give up.
    pub pending_revocation: Assignment,
    session_deadline: i64,
    rebalance_deadline: Option<i64>,
}

impl Member {
    fn subscribes(&self, topic: &str) -> bool {
        self.subscribed_names.contains(topic)
            || self.compiled.as_ref().is_some_and(|r| r.is_match(topic))
    }

    /// The topics it subscribes to that exist.
    fn topics<'a>(&self, topics: &'a Topics) -> BTreeSet<&'a str> {
        topics
            .keys()
            .filter(|t| self.subscribes(t))
            .map(String::as_str)
            .collect()
    }
}

/// A consumer group.
#[derive(Debug, Clone)]
pub struct ConsumerGroup {
    /// Group id.
    pub id: String,
    /// Grows on every membership or subscription change.
    pub group_epoch: i32,
    /// The epoch the target assignment was computed at.
    pub assignment_epoch: i32,
    /// Members by id.
    pub members: BTreeMap<String, Member>,
    /// Each member's target assignment.
    pub target: BTreeMap<String, Assignment>,
    /// The subscribed topics, as of the last epoch.
    subscription: BTreeMap<String, (Uuid, i32)>,
    /// The assignor of the current target.
    pub assignor: String,
}

fn union(a: &Assignment, b: &Assignment) -> Assignment {
    let mut out = a.clone();
    for (t, ps) in b {
        out.entry(*t).or_default().extend(ps);
    }
    out
}

fn minus(a: &Assignment, b: &Assignment) -> Assignment {
    let mut out = Assignment::new();
    for (t, ps) in a {
        let rest: BTreeSet<i32> = match b.get(t) {
            Some(bs) => ps.difference(bs).copied().collect(),
            None => ps.clone(),
        };
        if !rest.is_empty() {
            out.insert(*t, rest);
        }
    }
    out
}

fn intersect(a: &Assignment, b: &Assignment) -> Assignment {
    let mut out = Assignment::new();
    for (t, ps) in a {
        if let Some(bs) = b.get(t) {
            let both: BTreeSet<i32> = ps.intersection(bs).copied().collect();
            if !both.is_empty() {
                out.insert(*t, both);
            }
        }
    }
    out
}

fn is_empty(a: &Assignment) -> bool {
    a.values().all(BTreeSet::is_empty)
}

impl ConsumerGroup {
    /// An empty group at `epoch` (a converted group keeps its generation).
    pub fn new(id: &str, epoch: i32) -> Self {
        Self {
            id: id.to_string(),
            group_epoch: epoch,
            assignment_epoch: epoch,
            members: BTreeMap::new(),
            target: BTreeMap::new(),
            subscription: BTreeMap::new(),
            assignor: UNIFORM.to_string(),
        }
    }

    /// Whether it has no members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Kafka's state names: Empty, Assigning, Reconciling, Stable.
    pub fn state_name(&self) -> &'static str {
        if self.members.is_empty() {
            "Empty"
        } else if self.group_epoch > self.assignment_epoch {
            "Assigning"
        } else if self.members.values().any(|m| {
            m.epoch >= 0 && (m.epoch != self.assignment_epoch || m.state != MemberState::Stable)
        }) {
            "Reconciling"
        } else {
            "Stable"
        }
    }

    /// Handles one heartbeat at `now` (ms).
    pub fn heartbeat(
        &mut self,
        hb: Heartbeat,
        topics: &Topics,
        limits: &ConsumerLimits,
        now: i64,
    ) -> Result<HeartbeatAnswer, Refusal> {
        let full = hb.rebalance_timeout_ms != -1
            && (hb.subscribed_topic_names.is_some() || hb.subscribed_topic_regex.is_some())
            && hb.owned.is_some();
        // Checked before anything changes: a refused heartbeat leaves no
        // half-joined member behind.
        let regex = match hb.subscribed_topic_regex.as_deref() {
            None => None,
            Some("") => Some(None),
            Some(r) => match Regex::new(&format!("^(?:{r})$")) {
                Ok(c) => Some(Some((r.to_string(), c))),
                Err(e) => {
                    return refuse(
                        ResponseError::InvalidRegularExpression,
                        format!("subscribed topic regex '{r}': {e}"),
                    )
                }
            },
        };
        if let Some(a) = hb.server_assignor.as_deref() {
            if a != UNIFORM && a != RANGE {
                return refuse(
                    ResponseError::UnsupportedAssignor,
                    format!("server assignor '{a}' is not one of uniform, range"),
                );
            }
        }
        match hb.member_epoch {
            -1 => return self.leave(&hb.member_id),
            -2 => return self.leave_for_now(&hb.member_id, hb.instance_id.as_deref()),
            0 => self.join(&hb, now)?,
            epoch if epoch > 0 => self.check_epoch(&hb.member_id, epoch, hb.owned.as_ref())?,
            other => {
                return refuse(
                    ResponseError::InvalidRequest,
                    format!("member epoch {other}"),
                )
            }
        }
        let member = self
            .members
            .get_mut(&hb.member_id)
            .expect("joined or checked");
        let mut subscription_changed = false;
        if let Some(names) = hb.subscribed_topic_names {
            let names: BTreeSet<String> = names.into_iter().collect();
            subscription_changed |= names != member.subscribed_names;
            member.subscribed_names = names;
        }
        if let Some(r) = regex {
            let (given, compiled) = r.map_or((None, None), |(g, c)| (Some(g), Some(c)));
            subscription_changed |= given != member.regex;
            member.regex = given;
            member.compiled = compiled;
        }
        if let Some(a) = hb.server_assignor {
            member.assignor = Some(a);
        }
        if hb.rebalance_timeout_ms >= 0 {
            member.rebalance_timeout_ms = hb.rebalance_timeout_ms as i64;
        }
        if hb.rack_id.is_some() {
            member.rack_id = hb.rack_id;
        }
        member.client_id = hb.client_id;
        member.client_host = hb.client_host;
        member.session_deadline = now + limits.session_timeout_ms;
        if subscription_changed {
            self.group_epoch += 1;
        }
        self.refresh_subscription(topics);
        if self.group_epoch > self.assignment_epoch {
            self.compute_target(topics);
        }
        let changed = self.reconcile(&hb.member_id, hb.owned.as_ref(), now);
        let member = &self.members[&hb.member_id];
        Ok(HeartbeatAnswer {
            member_id: member.id.clone(),
            member_epoch: member.epoch,
            assignment: (hb.member_epoch == 0 || full || changed).then(|| member.assigned.clone()),
        })
    }

    fn join(&mut self, hb: &Heartbeat, now: i64) -> Result<(), Refusal> {
        if hb.member_id.is_empty() {
            return refuse(
                ResponseError::InvalidRequest,
                "a joining member needs a member id",
            );
        }
        if hb.rebalance_timeout_ms == -1 {
            return refuse(
                ResponseError::InvalidRequest,
                "a joining member gives its rebalance timeout",
            );
        }
        if hb.subscribed_topic_names.is_none() && hb.subscribed_topic_regex.is_none() {
            return refuse(
                ResponseError::InvalidRequest,
                "a joining member gives its subscription",
            );
        }
        if hb.owned.as_ref().is_some_and(|o| !is_empty(o)) {
            return refuse(
                ResponseError::InvalidRequest,
                "a joining member owns no partitions",
            );
        }
        let mut inherited: Option<Member> = None;
        if let Some(instance) = hb.instance_id.as_deref() {
            let holder = self
                .members
                .values()
                .find(|m| m.instance_id.as_deref() == Some(instance))
                .map(|m| (m.id.clone(), m.epoch));
            match holder {
                Some((id, -2)) => inherited = self.members.remove(&id),
                Some((id, _)) if id == hb.member_id => {}
                Some((id, _)) => {
                    return refuse(
                        ResponseError::UnreleasedInstanceId,
                        format!("instance '{instance}' is still used by member {id}"),
                    )
                }
                None => {}
            }
        }
        // A member joining again (after FENCED_MEMBER_EPOCH, say) starts over.
        if self.members.remove(&hb.member_id).is_some() {
            self.target.remove(&hb.member_id);
            self.group_epoch += 1;
        }
        let mut member = Member {
            id: hb.member_id.clone(),
            instance_id: hb.instance_id.clone(),
            rack_id: None,
            client_id: String::new(),
            client_host: String::new(),
            epoch: 0,
            previous_epoch: -1,
            state: MemberState::Stable,
            subscribed_names: BTreeSet::new(),
            regex: None,
            compiled: None,
            assignor: None,
            rebalance_timeout_ms: hb.rebalance_timeout_ms.max(0) as i64,
            assigned: Assignment::new(),
            pending_revocation: Assignment::new(),
            session_deadline: now,
            rebalance_deadline: None,
        };
        match inherited {
            // The same instance back: its partitions and target carry over,
            // and an unchanged subscription needs no new epoch.
            Some(old) => {
                member.subscribed_names = old.subscribed_names;
                member.regex = old.regex;
                member.compiled = old.compiled;
                member.assigned = old.assigned;
                if let Some(t) = self.target.remove(&old.id) {
                    self.target.insert(member.id.clone(), t);
                }
            }
            None => self.group_epoch += 1,
        }
        self.members.insert(member.id.clone(), member);
        Ok(())
    }

    fn check_epoch(
        &self,
        member_id: &str,
        epoch: i32,
        owned: Option<&Assignment>,
    ) -> Result<(), Refusal> {
        let Some(m) = self.members.get(member_id) else {
            return refuse(
                ResponseError::UnknownMemberId,
                format!("member {member_id} is not in group {}", self.id),
            );
        };
        let ok = epoch == m.epoch
            || (epoch == m.previous_epoch
                && owned.is_some_and(|o| is_empty(&minus(o, &m.assigned))));
        if ok {
            Ok(())
        } else {
            refuse(
                ResponseError::FencedMemberEpoch,
                format!(
                    "member {member_id} sent epoch {epoch}; its epoch is {}",
                    m.epoch
                ),
            )
        }
    }

    fn leave(&mut self, member_id: &str) -> Result<HeartbeatAnswer, Refusal> {
        if self.members.remove(member_id).is_none() {
            return refuse(
                ResponseError::UnknownMemberId,
                format!("member {member_id} is not in group {}", self.id),
            );
        }
        self.target.remove(member_id);
        self.group_epoch += 1;
        Ok(HeartbeatAnswer {
            member_id: member_id.to_string(),
            member_epoch: -1,
            assignment: None,
        })
    }

    fn leave_for_now(
        &mut self,
        member_id: &str,
        instance: Option<&str>,
    ) -> Result<HeartbeatAnswer, Refusal> {
        let Some(m) = self.members.get_mut(member_id) else {
            return refuse(
                ResponseError::UnknownMemberId,
                format!("member {member_id} is not in group {}", self.id),
            );
        };
        if instance.is_none() || m.instance_id.as_deref() != instance {
            return refuse(
                ResponseError::InvalidRequest,
                "epoch -2 is for static members leaving with their instance id",
            );
        }
        // Its partitions stay its own until its session times out.
        m.previous_epoch = m.epoch;
        m.epoch = -2;
        m.pending_revocation.clear();
        m.rebalance_deadline = None;
        Ok(HeartbeatAnswer {
            member_id: member_id.to_string(),
            member_epoch: -2,
            assignment: None,
        })
    }

    /// Bumps the group epoch when the subscribed topics' ids or partition
    /// counts changed (a topic created, deleted or grown).
    fn refresh_subscription(&mut self, topics: &Topics) {
        let now: BTreeMap<String, (Uuid, i32)> = topics
            .iter()
            .filter(|(t, _)| self.members.values().any(|m| m.subscribes(t)))
            .map(|(t, v)| (t.clone(), *v))
            .collect();
        if now != self.subscription {
            self.subscription = now;
            self.group_epoch += 1;
        }
    }

    fn compute_target(&mut self, topics: &Topics) {
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for m in self.members.values() {
            *votes
                .entry(m.assignor.as_deref().unwrap_or(UNIFORM))
                .or_default() += 1;
        }
        let assignor = votes
            .iter()
            .max_by_key(|(name, n)| (**n, **name == UNIFORM))
            .map_or(UNIFORM, |(name, _)| *name)
            .to_string();
        let subs: Vec<Subscriber> = self
            .members
            .values()
            .map(|m| Subscriber {
                id: m.id.clone(),
                sort_key: m.instance_id.clone().unwrap_or_else(|| m.id.clone()),
                static_member: m.instance_id.is_some(),
                topics: m.topics(topics).into_iter().map(str::to_string).collect(),
            })
            .collect();
        self.target = if assignor == RANGE {
            assign_range(&subs, topics)
        } else {
            assign_uniform(&subs, topics, &self.target)
        };
        self.assignor = assignor;
        self.assignment_epoch = self.group_epoch;
    }

    /// Moves the member towards its target (CurrentAssignmentBuilder).
    /// Returns whether its assigned partitions changed.
    fn reconcile(&mut self, member_id: &str, owned: Option<&Assignment>, now: i64) -> bool {
        let target = self.target.get(member_id).cloned().unwrap_or_default();
        let owned_elsewhere = self
            .members
            .values()
            .filter(|m| m.id != member_id)
            .fold(Assignment::new(), |acc, m| {
                union(&union(&acc, &m.assigned), &m.pending_revocation)
            });
        let epoch = self.assignment_epoch;
        let m = self.members.get_mut(member_id).expect("member");
        let before = m.assigned.clone();
        if m.state == MemberState::UnrevokedPartitions {
            let still_owned = owned.is_none_or(|o| !is_empty(&intersect(o, &m.pending_revocation)));
            if still_owned {
                return false;
            }
            m.pending_revocation.clear();
        } else if m.state == MemberState::Stable && m.epoch == epoch {
            return false;
        }
        let keep = intersect(&m.assigned, &target);
        let revoke = minus(&m.assigned, &target);
        let revoked_already = owned.is_some_and(|o| is_empty(&intersect(o, &revoke)));
        if !is_empty(&revoke) && !revoked_already {
            m.assigned = keep;
            m.pending_revocation = revoke;
            m.state = MemberState::UnrevokedPartitions;
            m.rebalance_deadline = Some(now + m.rebalance_timeout_ms);
        } else {
            let new = minus(&minus(&target, &m.assigned), &owned_elsewhere);
            m.assigned = union(&keep, &new);
            m.pending_revocation.clear();
            if m.epoch != epoch {
                m.previous_epoch = m.epoch;
                m.epoch = epoch;
            }
            m.state = if is_empty(&minus(&target, &m.assigned)) {
                MemberState::Stable
            } else {
                MemberState::UnreleasedPartitions
            };
            m.rebalance_deadline = None;
        }
        m.assigned != before
    }

    /// Removes members past their session timeout, or still holding
    /// partitions to revoke past their rebalance timeout. Returns them with
    /// the reason.
    pub fn expire(&mut self, now: i64) -> Vec<(String, &'static str)> {
        let gone: Vec<(String, &'static str)> = self
            .members
            .values()
            .filter_map(|m| {
                if now > m.session_deadline {
                    Some((m.id.clone(), "session timeout"))
                } else if m.rebalance_deadline.is_some_and(|d| now > d) {
                    Some((m.id.clone(), "rebalance timeout"))
                } else {
                    None
                }
            })
            .collect();
        for (id, _) in &gone {
            self.members.remove(id);
            self.target.remove(id);
        }
        if !gone.is_empty() {
            self.group_epoch += 1;
        }
        gone
    }

    /// OffsetCommit from a member: its id and current (or previous) epoch;
    /// or, with no members, a commit from outside the group (epoch < 0).
    pub fn check_commit(&self, member_id: &str, epoch: i32) -> Result<(), ResponseError> {
        if epoch < 0 && member_id.is_empty() && self.members.is_empty() {
            return Ok(());
        }
        let Some(m) = self.members.get(member_id) else {
            return Err(ResponseError::UnknownMemberId);
        };
        // The member's previous epoch too: its commit may have crossed the
        // heartbeat that moved it on (Kafka relaxes this the same way in
        // KIP-1251).
        if epoch != m.epoch && epoch != m.previous_epoch {
            return Err(ResponseError::StaleMemberEpoch);
        }
        Ok(())
    }
}

/// A member as the assignors see it.
#[derive(Debug, Clone)]
struct Subscriber {
    id: String,
    sort_key: String,
    static_member: bool,
    topics: BTreeSet<String>,
}

/// `uniform`: every subscribed partition to one subscriber of its topic,
/// counts as even as the subscriptions allow, keeping partitions where they
/// were. With identical subscriptions the counts differ by at most one.
fn assign_uniform(
    subs: &[Subscriber],
    topics: &Topics,
    previous: &BTreeMap<String, Assignment>,
) -> BTreeMap<String, Assignment> {
    let mut out: BTreeMap<String, Assignment> = subs
        .iter()
        .map(|s| (s.id.clone(), Assignment::new()))
        .collect();
    let mut count: BTreeMap<&str, usize> = subs.iter().map(|s| (s.id.as_str(), 0)).collect();
    let partitions: Vec<(&str, Uuid, i32)> = topics
        .iter()
        .filter(|(t, _)| subs.iter().any(|s| s.topics.contains(*t)))
        .flat_map(|(t, (id, n))| (0..*n).map(move |p| (t.as_str(), *id, p)))
        .collect();
    fn eligible<'a>(subs: &'a [Subscriber], t: &'a str) -> impl Iterator<Item = &'a Subscriber> {
        subs.iter().filter(move |s| s.topics.contains(t))
    }
    let members = subs.iter().filter(|s| !s.topics.is_empty()).count().max(1);
    let (base, mut extra) = (partitions.len() / members, partitions.len() % members);
    let mut free = Vec::new();
    // Sticky first: a partition stays with its previous owner while that
    // owner is under its share.
    for &(t, id, p) in &partitions {
        let prev = previous
            .iter()
            .find(|(_, a)| a.get(&id).is_some_and(|ps| ps.contains(&p)))
            .map(|(m, _)| m.as_str());
        let keeper = prev.and_then(|m| eligible(subs, t).find(|s| s.id == m));
        match keeper {
            Some(s) if count[s.id.as_str()] < base => {
                *count.get_mut(s.id.as_str()).expect("counted") += 1;
                out.get_mut(&s.id)
                    .expect("member")
                    .entry(id)
                    .or_default()
                    .insert(p);
            }
            Some(s) if count[s.id.as_str()] == base && extra > 0 => {
                extra -= 1;
                *count.get_mut(s.id.as_str()).expect("counted") += 1;
                out.get_mut(&s.id)
                    .expect("member")
                    .entry(id)
                    .or_default()
                    .insert(p);
            }
            _ => free.push((t, id, p)),
        }
    }
    // The rest to the least loaded subscriber of each topic.
    for (t, id, p) in free {
        if let Some(s) = eligible(subs, t).min_by_key(|s| (count[s.id.as_str()], s.id.as_str())) {
            *count.get_mut(s.id.as_str()).expect("counted") += 1;
            out.get_mut(&s.id)
                .expect("member")
                .entry(id)
                .or_default()
                .insert(p);
        }
    }
    out
}

/// `range`: per topic, contiguous ranges to its subscribers sorted by
/// instance id (static members first) then member id; the first P % M get
/// one partition more.
fn assign_range(subs: &[Subscriber], topics: &Topics) -> BTreeMap<String, Assignment> {
    let mut out: BTreeMap<String, Assignment> = subs
        .iter()
        .map(|s| (s.id.clone(), Assignment::new()))
        .collect();
    for (t, (id, n)) in topics {
        let mut takers: Vec<&Subscriber> = subs.iter().filter(|s| s.topics.contains(t)).collect();
        if takers.is_empty() {
            continue;
        }
        takers
            .sort_by(|a, b| (!a.static_member, &a.sort_key).cmp(&(!b.static_member, &b.sort_key)));
        let (base, extra) = (*n as usize / takers.len(), *n as usize % takers.len());
        let mut next = 0i32;
        for (i, s) in takers.iter().enumerate() {
            let len = (base + usize::from(i < extra)) as i32;
            if len > 0 {
                out.get_mut(&s.id)
                    .expect("member")
                    .entry(*id)
                    .or_default()
                    .extend(next..next + len);
            }
            next += len;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ConsumerLimits = ConsumerLimits {
        session_timeout_ms: 45_000,
    };

    fn topics(spec: &[(&str, i32)]) -> Topics {
        spec.iter()
            .map(|(t, n)| {
                let mut id = [0u8; 16];
                let name = t.as_bytes();
                id[..name.len().min(16)].copy_from_slice(&name[..name.len().min(16)]);
                (t.to_string(), (Uuid::from_bytes(id), *n))
            })
            .collect()
    }

    fn join(
        g: &mut ConsumerGroup,
        id: &str,
        subs: &[&str],
        ts: &Topics,
        now: i64,
    ) -> HeartbeatAnswer {
        g.heartbeat(
            Heartbeat {
                member_id: id.into(),
                member_epoch: 0,
                rebalance_timeout_ms: 30_000,
                subscribed_topic_names: Some(subs.iter().map(|s| s.to_string()).collect()),
                subscribed_topic_regex: Some(String::new()),
                server_assignor: None,
                owned: Some(Assignment::new()),
                ..Default::default()
            },
            ts,
            &LIMITS,
            now,
        )
        .unwrap()
    }

    fn beat(
        g: &mut ConsumerGroup,
        id: &str,
        epoch: i32,
        owned: &Assignment,
        ts: &Topics,
        now: i64,
    ) -> HeartbeatAnswer {
        g.heartbeat(
            Heartbeat {
                member_id: id.into(),
                member_epoch: epoch,
                rebalance_timeout_ms: -1,
                owned: Some(owned.clone()),
                ..Default::default()
            },
            ts,
            &LIMITS,
            now,
        )
        .unwrap()
    }

    fn count(a: &Assignment) -> usize {
        a.values().map(BTreeSet::len).sum()
    }

    /// Heartbeats every member until nothing changes; returns each member's
    /// epoch and assignment. Members own what they were last told.
    fn settle(g: &mut ConsumerGroup, ts: &Topics, now: i64) -> BTreeMap<String, (i32, Assignment)> {
        let mut held: BTreeMap<String, (i32, Assignment)> = g
            .members
            .values()
            .map(|m| (m.id.clone(), (m.epoch, m.assigned.clone())))
            .collect();
        for _ in 0..10 {
            for (id, (epoch, owned)) in held.clone() {
                let a = beat(g, &id, epoch, &owned, ts, now);
                let assigned = a.assignment.unwrap_or(owned);
                held.insert(id, (a.member_epoch, assigned));
            }
        }
        held
    }

    fn no_partition_twice(held: &BTreeMap<String, (i32, Assignment)>) {
        let mut seen = BTreeSet::new();
        for (_, a) in held.values() {
            for (t, ps) in a {
                for p in ps {
                    assert!(seen.insert((*t, *p)), "{t}-{p} assigned twice");
                }
            }
        }
    }

    #[test]
    fn members_join_one_by_one_and_end_balanced_with_nothing_owned_twice() {
        let ts = topics(&[("orders", 6)]);
        let mut g = ConsumerGroup::new("g", 0);
        let a = join(&mut g, "a", &["orders"], &ts, 0);
        assert_eq!(
            (a.member_epoch, count(&a.assignment.unwrap())),
            (g.group_epoch, 6)
        );
        join(&mut g, "b", &["orders"], &ts, 0);
        join(&mut g, "c", &["orders"], &ts, 0);
        let held = settle(&mut g, &ts, 0);
        no_partition_twice(&held);
        for (id, (epoch, a)) in &held {
            assert_eq!((*epoch, count(a)), (g.group_epoch, 2), "member {id}");
        }
        assert_eq!(g.state_name(), "Stable");
    }

    #[test]
    fn a_partition_moves_only_after_its_owner_revoked_it() {
        let ts = topics(&[("t", 2)]);
        let mut g = ConsumerGroup::new("g", 0);
        let a = join(&mut g, "a", &["t"], &ts, 0);
        let a_owned = a.assignment.unwrap();
        assert_eq!(count(&a_owned), 2);
        let b = join(&mut g, "b", &["t"], &ts, 0);
        assert_eq!(count(&b.assignment.unwrap()), 0, "a still owns both");
        // a is told to give one up; its epoch waits.
        let a2 = beat(&mut g, "a", a.member_epoch, &a_owned, &ts, 0);
        assert_eq!(a2.member_epoch, a.member_epoch);
        let kept = a2.assignment.unwrap();
        assert_eq!(count(&kept), 1);
        assert_eq!(g.members["a"].state, MemberState::UnrevokedPartitions);
        // b still gets nothing while a reports owning both.
        let b2 = beat(&mut g, "b", b.member_epoch, &Assignment::new(), &ts, 0);
        assert!(b2.assignment.is_none_or(|x| count(&x) == 0));
        // a acknowledges; it takes the new epoch, then b gets the partition.
        let a3 = beat(&mut g, "a", a2.member_epoch, &kept, &ts, 0);
        assert_eq!(a3.member_epoch, g.assignment_epoch);
        let b3 = beat(&mut g, "b", b2.member_epoch, &Assignment::new(), &ts, 0);
        assert_eq!(count(&b3.assignment.unwrap()), 1);
        assert_eq!(g.state_name(), "Stable");
    }

    #[test]
    fn a_silent_member_is_removed_and_its_partitions_go_to_the_rest() {
        let ts = topics(&[("t", 4)]);
        let mut g = ConsumerGroup::new("g", 0);
        join(&mut g, "a", &["t"], &ts, 0);
        join(&mut g, "b", &["t"], &ts, 0);
        let held = settle(&mut g, &ts, 0);
        assert_eq!(count(&held["b"].1), 2);
        // Only a heartbeats from now on.
        let (mut epoch, mut owned) = held["a"].clone();
        for now in (1_000..=50_000).step_by(5_000) {
            let r = beat(&mut g, "a", epoch, &owned, &ts, now);
            epoch = r.member_epoch;
            owned = r.assignment.unwrap_or(owned);
            assert_eq!(g.expire(now).is_empty(), now <= 45_000);
        }
        let r = beat(&mut g, "a", epoch, &owned, &ts, 50_001);
        assert_eq!(count(&r.assignment.unwrap()), 4);
        assert!(!g.members.contains_key("b"));
    }

    #[test]
    fn a_member_that_never_revokes_is_removed_at_its_rebalance_timeout() {
        let ts = topics(&[("t", 2)]);
        let mut g = ConsumerGroup::new("g", 0);
        let a = join(&mut g, "a", &["t"], &ts, 0);
        join(&mut g, "b", &["t"], &ts, 0);
        let all = a.assignment.unwrap();
        beat(&mut g, "a", a.member_epoch, &all, &ts, 0);
        assert!(g.expire(29_000).is_empty());
        beat(&mut g, "a", a.member_epoch, &all, &ts, 29_000); // still owns both
        assert_eq!(
            g.expire(30_001),
            vec![("a".to_string(), "rebalance timeout")]
        );
    }

    #[test]
    fn stale_and_future_epochs_are_fenced_and_rejoining_starts_over() {
        let ts = topics(&[("t", 2)]);
        let mut g = ConsumerGroup::new("g", 0);
        let a = join(&mut g, "a", &["t"], &ts, 0);
        let hb = |epoch| Heartbeat {
            member_id: "a".into(),
            member_epoch: epoch,
            rebalance_timeout_ms: -1,
            ..Default::default()
        };
        let err = g
            .heartbeat(hb(a.member_epoch + 1), &ts, &LIMITS, 0)
            .unwrap_err();
        assert_eq!(err.code, ResponseError::FencedMemberEpoch);
        let err = g
            .heartbeat(
                Heartbeat {
                    member_id: "z".into(),
                    ..hb(3)
                },
                &ts,
                &LIMITS,
                0,
            )
            .unwrap_err();
        assert_eq!(err.code, ResponseError::UnknownMemberId);
        let again = join(&mut g, "a", &["t"], &ts, 0);
        assert_eq!(count(&again.assignment.unwrap()), 2);
        assert_eq!(g.check_commit("a", again.member_epoch), Ok(()));
        assert_eq!(
            g.check_commit("a", again.member_epoch - 5),
            Err(ResponseError::StaleMemberEpoch)
        );
        assert_eq!(
            g.check_commit("z", again.member_epoch),
            Err(ResponseError::UnknownMemberId)
        );
    }

    #[test]
    fn a_static_member_away_keeps_its_partitions_and_takes_them_back() {
        let ts = topics(&[("t", 4)]);
        let mut g = ConsumerGroup::new("g", 0);
        let static_join = |g: &mut ConsumerGroup, id: &str, now| {
            g.heartbeat(
                Heartbeat {
                    member_id: id.into(),
                    member_epoch: 0,
                    instance_id: Some("i-1".into()),
                    rebalance_timeout_ms: 30_000,
                    subscribed_topic_names: Some(vec!["t".into()]),
                    owned: Some(Assignment::new()),
                    ..Default::default()
                },
                &ts,
                &LIMITS,
                now,
            )
        };
        static_join(&mut g, "s1", 0).unwrap();
        join(&mut g, "b", &["t"], &ts, 0);
        let held = settle(&mut g, &ts, 0);
        let epoch = g.group_epoch;
        let away = g
            .heartbeat(
                Heartbeat {
                    member_id: "s1".into(),
                    member_epoch: -2,
                    instance_id: Some("i-1".into()),
                    rebalance_timeout_ms: -1,
                    ..Default::default()
                },
                &ts,
                &LIMITS,
                1,
            )
            .unwrap();
        assert_eq!(away.member_epoch, -2);
        assert_eq!(
            g.group_epoch, epoch,
            "no rebalance for a static member away"
        );
        // Another member cannot use the instance id while it is held... by a live member.
        let back = static_join(&mut g, "s2", 2).unwrap();
        assert_eq!(
            back.assignment.unwrap(),
            held["s1"].1,
            "the same partitions again"
        );
        assert_eq!(g.group_epoch, epoch);
        assert_eq!(
            static_join(&mut g, "s3", 3).unwrap_err().code,
            ResponseError::UnreleasedInstanceId
        );
    }

    #[test]
    fn regex_subscriptions_follow_new_topics() {
        let mut ts = topics(&[("logs-a", 2), ("other", 2)]);
        let mut g = ConsumerGroup::new("g", 0);
        let a = g
            .heartbeat(
                Heartbeat {
                    member_id: "a".into(),
                    member_epoch: 0,
                    rebalance_timeout_ms: 30_000,
                    subscribed_topic_names: Some(vec![]),
                    subscribed_topic_regex: Some("logs-.*".into()),
                    owned: Some(Assignment::new()),
                    ..Default::default()
                },
                &ts,
                &LIMITS,
                0,
            )
            .unwrap();
        assert_eq!(count(&a.assignment.clone().unwrap()), 2);
        ts.extend(topics(&[("logs-b", 3)]));
        let r = beat(&mut g, "a", a.member_epoch, &a.assignment.unwrap(), &ts, 1);
        assert_eq!(count(&r.assignment.unwrap()), 5);
        let bad = Heartbeat {
            member_id: "b".into(),
            member_epoch: 0,
            rebalance_timeout_ms: 1,
            subscribed_topic_regex: Some("(".into()),
            owned: Some(Assignment::new()),
            ..Default::default()
        };
        assert_eq!(
            g.heartbeat(bad, &ts, &LIMITS, 1).unwrap_err().code,
            ResponseError::InvalidRegularExpression
        );
    }

    #[test]
    fn range_gives_contiguous_ranges_the_first_getting_more() {
        let ts = topics(&[("t", 7)]);
        let subs: Vec<Subscriber> = ["c", "a", "b"]
            .iter()
            .map(|id| Subscriber {
                id: id.to_string(),
                sort_key: id.to_string(),
                static_member: false,
                topics: ["t".to_string()].into(),
            })
            .collect();
        let out = assign_range(&subs, &ts);
        let tid = ts["t"].0;
        let get = |m: &str| out[m][&tid].iter().copied().collect::<Vec<_>>();
        assert_eq!(
            (get("a"), get("b"), get("c")),
            (vec![0, 1, 2], vec![3, 4], vec![5, 6])
        );
    }

    #[test]
    fn uniform_keeps_partitions_where_they_were() {
        let ts = topics(&[("t", 6)]);
        let sub = |id: &str| Subscriber {
            id: id.into(),
            sort_key: id.into(),
            static_member: false,
            topics: ["t".to_string()].into(),
        };
        let two = assign_uniform(&[sub("a"), sub("b")], &ts, &BTreeMap::new());
        let three = assign_uniform(&[sub("a"), sub("b"), sub("c")], &ts, &two);
        let tid = ts["t"].0;
        for m in ["a", "b"] {
            assert_eq!(three[m][&tid].len(), 2);
            assert!(
                three[m][&tid].is_subset(&two[m][&tid]),
                "{m} keeps what it had"
            );
        }
        assert_eq!(three["c"][&tid].len(), 2);
    }
}

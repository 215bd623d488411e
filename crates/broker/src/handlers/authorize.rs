//! ACL checks in front of the handlers, on the APIs Kafka checks them on.
//!
//! [`gate`] looks at a request before its handler runs. A request wholly
//! refused (a group the principal may not read, a cluster operation) is
//! answered here with Kafka's code. Otherwise the resources the principal
//! may not touch are taken out of the request, the handler serves the rest,
//! and a patch puts the refused ones back into the response with
//! TOPIC_AUTHORIZATION_FAILED (or GROUP_/CLUSTER_AUTHORIZATION_FAILED), so
//! handlers stay unaware of ACLs.

use std::collections::HashSet;
use std::sync::Arc;

use kafka_protocol::messages::{
    self as m, GroupId, RequestKind as Rq, ResponseKind as Rs, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use strata_auth::acl::{Operation as Op, ResourceType as Rt, CLUSTER_NAME};
use strata_cluster::ClusterImage;

use super::RequestContext;
use crate::state::Broker;

const TOPIC_DENIED: i16 = 29;
const GROUP_DENIED: i16 = 30;
const CLUSTER_DENIED: i16 = 31;
const TXN_DENIED: i16 = 53;

/// Puts refused resources back into a response.
pub(crate) type Patch = Box<dyn FnOnce(&mut Rs) + Send>;

/// What to do with a request.
pub(crate) enum Gate {
    /// Serve it (possibly narrowed), then apply the patch to the response.
    Pass(Rq, Option<Patch>),
    /// Answer this instead.
    Deny(Rs),
    /// Close the connection (a refused acks=0 produce, which has no answer).
    Close(String),
}

struct Check<'a> {
    broker: &'a Broker,
    img: Arc<ClusterImage>,
    ctx: &'a RequestContext,
}

impl Check<'_> {
    fn can(&self, op: Op, rt: Rt, name: &str) -> bool {
        self.broker
            .authorizer()
            .allows(&self.img, &self.ctx.identity, op, rt, name)
    }
    fn topic(&self, op: Op, name: &str) -> bool {
        self.can(op, Rt::Topic, name)
    }
    /// A topic named by name or id; unknown ids pass to the handler.
    fn topic_ref(&self, op: Op, name: &TopicName, id: uuid::Uuid) -> bool {
        name_of(self.broker, name, id).is_none_or(|n| self.topic(op, &n))
    }
    fn group(&self, op: Op, name: &str) -> bool {
        self.can(op, Rt::Group, name)
    }
    fn cluster(&self, op: Op) -> bool {
        self.can(op, Rt::Cluster, CLUSTER_NAME)
    }
    /// Kafka's check for an idempotent producer: IDEMPOTENT_WRITE on the
    /// cluster, or WRITE on some topic.
    fn may_write_some_topic(&self) -> bool {
        if self.cluster(Op::IdempotentWrite) {
            return true;
        }
        let who = self.ctx.identity.principal.to_string();
        self.img.security.acls.values().any(|b| {
            b.resource_type == Rt::Topic
                && b.permission == strata_auth::acl::Permission::Allow
                && matches!(b.operation, Op::Write | Op::All)
                && (b.principal == who || b.principal == "User:*")
                && self.can(Op::Write, Rt::Topic, &probe_name(b))
        })
    }
}

/// A topic name a binding covers, to ask the authorizer (which also weighs denies).
fn probe_name(b: &strata_auth::acl::AclBinding) -> String {
    if b.resource_name == strata_auth::acl::WILDCARD {
        "*probe*".into()
    } else {
        b.resource_name.clone()
    }
}

fn pass(r: Rq) -> Gate {
    Gate::Pass(r, None)
}

fn patch(r: Rq, f: impl FnOnce(&mut Rs) + Send + 'static) -> Gate {
    Gate::Pass(r, Some(Box::new(f)))
}

/// The topic a request names, by name or (v13+) by id; `None` for an id
/// this broker does not know, which the handler answers UNKNOWN_TOPIC_ID
/// (retriable) without serving anything.
fn name_of(broker: &Broker, name: &TopicName, id: uuid::Uuid) -> Option<String> {
    if name.is_empty() && !id.is_nil() {
        return broker.topic_by_id(id).map(|t| t.name.clone());
    }
    Some(name.to_string())
}

/// Checks `request` from `ctx` against the ACLs.
pub(crate) fn gate(broker: &Broker, ctx: &RequestContext, request: Rq) -> Gate {
    let c = Check {
        broker,
        img: broker.image(),
        ctx,
    };
    match request {
        Rq::ApiVersions(_) | Rq::SaslHandshake(_) | Rq::SaslAuthenticate(_) => pass(request),
        Rq::Produce(mut r) => {
            if let Some(txn) = r.transactional_id.as_ref() {
                if !c.can(Op::Write, Rt::TransactionalId, txn) {
                    let denied = std::mem::take(&mut r.topic_data);
                    return patch(Rq::Produce(r), move |resp| {
                        if let Rs::Produce(resp) = resp {
                            resp.responses.extend(produce_denied(denied, TXN_DENIED));
                        }
                    });
                }
            }
            let (ok, denied): (Vec<_>, Vec<_>) = r
                .topic_data
                .into_iter()
                .partition(|t| c.topic_ref(Op::Write, &t.name, t.topic_id));
            r.topic_data = ok;
            if denied.is_empty() {
                return pass(Rq::Produce(r));
            }
            if r.acks == 0 {
                // Kafka closes an acks=0 connection whose produce fails.
                return Gate::Close("acks=0 produce to a topic the principal may not write".into());
            }
            patch(Rq::Produce(r), move |resp| {
                if let Rs::Produce(resp) = resp {
                    resp.responses.extend(produce_denied(denied, TOPIC_DENIED));
                }
            })
        }
        Rq::Fetch(mut r) => {
            if r.replica_id.0 >= 0 || r.replica_state.replica_id.0 >= 0 {
                if c.cluster(Op::ClusterAction) {
                    return pass(Rq::Fetch(r));
                }
                let mut resp = m::FetchResponse::default();
                resp.error_code = CLUSTER_DENIED;
                return Gate::Deny(Rs::Fetch(resp));
            }
            let (ok, denied): (Vec<_>, Vec<_>) = r
                .topics
                .into_iter()
                .partition(|t| c.topic_ref(Op::Read, &t.topic, t.topic_id));
            r.topics = ok;
            if denied.is_empty() {
                return pass(Rq::Fetch(r));
            }
            // Nothing left to serve: answer now rather than after max_wait_ms.
            let nothing_left = r.topics.is_empty();
            let fill = move |resp: &mut Rs| {
                if let Rs::Fetch(resp) = resp {
                    for t in denied {
                        let mut out = m::fetch_response::FetchableTopicResponse::default();
                        out.topic = t.topic;
                        out.topic_id = t.topic_id;
                        out.partitions = t
                            .partitions
                            .iter()
                            .map(|p| {
                                let mut pd = m::fetch_response::PartitionData::default();
                                pd.partition_index = p.partition;
                                pd.error_code = TOPIC_DENIED;
                                pd.high_watermark = -1;
                                pd.last_stable_offset = -1;
                                pd.log_start_offset = -1;
                                pd
                            })
                            .collect();
                        resp.responses.push(out);
                    }
                }
            };
            if nothing_left {
                let mut resp = Rs::Fetch(m::FetchResponse::default());
                fill(&mut resp);
                return Gate::Deny(resp);
            }
            patch(Rq::Fetch(r), fill)
        }
        Rq::ListOffsets(mut r) => {
            let (ok, denied): (Vec<_>, Vec<_>) = r
                .topics
                .into_iter()
                .partition(|t| c.topic(Op::Describe, &t.name));
            r.topics = ok;
            if denied.is_empty() {
                return pass(Rq::ListOffsets(r));
            }
            patch(Rq::ListOffsets(r), move |resp| {
                if let Rs::ListOffsets(resp) = resp {
                    for t in denied {
                        let mut out = m::list_offsets_response::ListOffsetsTopicResponse::default();
                        out.name = t.name;
                        out.partitions = t
                            .partitions
                            .iter()
                            .map(|p| {
                                let mut x =
                                    m::list_offsets_response::ListOffsetsPartitionResponse::default(
                                    );
                                x.partition_index = p.partition_index;
                                x.error_code = TOPIC_DENIED;
                                x.offset = -1;
                                x.timestamp = -1;
                                x
                            })
                            .collect();
                        resp.topics.push(out);
                    }
                }
            })
        }
        Rq::OffsetForLeaderEpoch(mut r) => {
            if r.replica_id.0 >= 0 {
                if c.cluster(Op::ClusterAction) {
                    return pass(Rq::OffsetForLeaderEpoch(r));
                }
                let denied = std::mem::take(&mut r.topics);
                return patch(Rq::OffsetForLeaderEpoch(r), move |resp| {
                    if let Rs::OffsetForLeaderEpoch(resp) = resp {
                        resp.topics.extend(epoch_denied(denied, CLUSTER_DENIED));
                    }
                });
            }
            let (ok, denied): (Vec<_>, Vec<_>) = r
                .topics
                .into_iter()
                .partition(|t| c.topic(Op::Describe, &t.topic));
            r.topics = ok;
            if denied.is_empty() {
                return pass(Rq::OffsetForLeaderEpoch(r));
            }
            patch(Rq::OffsetForLeaderEpoch(r), move |resp| {
                if let Rs::OffsetForLeaderEpoch(resp) = resp {
                    resp.topics.extend(epoch_denied(denied, TOPIC_DENIED));
                }
            })
        }
        Rq::DeleteRecords(mut r) => {
            let (ok, denied): (Vec<_>, Vec<_>) = r
                .topics
                .into_iter()
                .partition(|t| c.topic(Op::Delete, &t.name));
            r.topics = ok;
            if denied.is_empty() {
                return pass(Rq::DeleteRecords(r));
            }
            patch(Rq::DeleteRecords(r), move |resp| {
                if let Rs::DeleteRecords(resp) = resp {
                    for t in denied {
                        let mut out =
                            m::delete_records_response::DeleteRecordsTopicResult::default();
                        out.name = t.name;
                        out.partitions = t
                            .partitions
                            .iter()
                            .map(|p| {
                                let mut x = m::delete_records_response::DeleteRecordsPartitionResult::default();
                                x.partition_index = p.partition_index;
                                x.error_code = TOPIC_DENIED;
                                x.low_watermark = -1;
                                x
                            })
                            .collect();
                        resp.topics.push(out);
                    }
                }
            })
        }
        Rq::Metadata(r) => metadata(&c, r),
        Rq::CreateTopics(mut r) => {
            let cluster_ok = c.cluster(Op::Create);
            let (ok, denied): (Vec<_>, Vec<_>) = r
                .topics
                .into_iter()
                .partition(|t| cluster_ok || c.topic(Op::Create, &t.name));
            r.topics = ok;
            if denied.is_empty() {
                return pass(Rq::CreateTopics(r));
            }
            patch(Rq::CreateTopics(r), move |resp| {
                if let Rs::CreateTopics(resp) = resp {
                    for t in denied {
                        let mut out = m::create_topics_response::CreatableTopicResult::default();
                        out.name = t.name;
                        out.error_code = TOPIC_DENIED;
                        out.error_message =
                            Some(StrBytes::from_static_str("Authorization failed."));
                        out.num_partitions = -1;
                        out.replication_factor = -1;
                        out.topic_config_error_code = TOPIC_DENIED;
                        resp.topics.push(out);
                    }
                }
            })
        }
        Rq::DeleteTopics(mut r) => {
            let allowed = |name: &str| c.topic(Op::Delete, name);
            let (ok, denied_names): (Vec<_>, Vec<_>) =
                r.topic_names.into_iter().partition(|n| allowed(n));
            r.topic_names = ok;
            let (ok, denied_states): (Vec<_>, Vec<_>) = r.topics.into_iter().partition(|t| {
                let n = t.name.clone().unwrap_or_default();
                name_of(broker, &n, t.topic_id).is_none_or(|n| allowed(&n))
            });
            r.topics = ok;
            if denied_names.is_empty() && denied_states.is_empty() {
                return pass(Rq::DeleteTopics(r));
            }
            patch(Rq::DeleteTopics(r), move |resp| {
                if let Rs::DeleteTopics(resp) = resp {
                    for n in denied_names {
                        let mut out = m::delete_topics_response::DeletableTopicResult::default();
                        out.name = Some(n);
                        out.error_code = TOPIC_DENIED;
                        resp.responses.push(out);
                    }
                    for t in denied_states {
                        let mut out = m::delete_topics_response::DeletableTopicResult::default();
                        out.name = t.name;
                        out.topic_id = t.topic_id;
                        out.error_code = TOPIC_DENIED;
                        resp.responses.push(out);
                    }
                }
            })
        }
        Rq::CreatePartitions(mut r) => {
            let (ok, denied): (Vec<_>, Vec<_>) = r
                .topics
                .into_iter()
                .partition(|t| c.topic(Op::Alter, &t.name));
            r.topics = ok;
            if denied.is_empty() {
                return pass(Rq::CreatePartitions(r));
            }
            patch(Rq::CreatePartitions(r), move |resp| {
                if let Rs::CreatePartitions(resp) = resp {
                    for t in denied {
                        let mut out =
                            m::create_partitions_response::CreatePartitionsTopicResult::default();
                        out.name = t.name;
                        out.error_code = TOPIC_DENIED;
                        resp.results.push(out);
                    }
                }
            })
        }
        Rq::DescribeConfigs(mut r) => {
            let (ok, denied): (Vec<_>, Vec<_>) = r.resources.into_iter().partition(|x| {
                config_allowed(&c, Op::DescribeConfigs, x.resource_type, &x.resource_name)
            });
            r.resources = ok;
            if denied.is_empty() {
                return pass(Rq::DescribeConfigs(r));
            }
            patch(Rq::DescribeConfigs(r), move |resp| {
                if let Rs::DescribeConfigs(resp) = resp {
                    for x in denied {
                        let mut out =
                            m::describe_configs_response::DescribeConfigsResult::default();
                        out.error_code = config_denied_code(x.resource_type);
                        out.resource_type = x.resource_type;
                        out.resource_name = x.resource_name;
                        resp.results.push(out);
                    }
                }
            })
        }
        Rq::AlterConfigs(mut r) => {
            let (ok, denied): (Vec<_>, Vec<_>) = r.resources.into_iter().partition(|x| {
                config_allowed(&c, Op::AlterConfigs, x.resource_type, &x.resource_name)
            });
            r.resources = ok;
            if denied.is_empty() {
                return pass(Rq::AlterConfigs(r));
            }
            let denied: Vec<(i8, StrBytes)> = denied
                .into_iter()
                .map(|x| (x.resource_type, x.resource_name))
                .collect();
            patch(Rq::AlterConfigs(r), move |resp| {
                if let Rs::AlterConfigs(resp) = resp {
                    for (t, n) in denied {
                        let mut out =
                            m::alter_configs_response::AlterConfigsResourceResponse::default();
                        out.error_code = config_denied_code(t);
                        out.resource_type = t;
                        out.resource_name = n;
                        resp.responses.push(out);
                    }
                }
            })
        }
        Rq::IncrementalAlterConfigs(mut r) => {
            let (ok, denied): (Vec<_>, Vec<_>) = r.resources.into_iter().partition(|x| {
                config_allowed(&c, Op::AlterConfigs, x.resource_type, &x.resource_name)
            });
            r.resources = ok;
            if denied.is_empty() {
                return pass(Rq::IncrementalAlterConfigs(r));
            }
            let denied: Vec<(i8, StrBytes)> = denied
                .into_iter()
                .map(|x| (x.resource_type, x.resource_name))
                .collect();
            patch(Rq::IncrementalAlterConfigs(r), move |resp| {
                if let Rs::IncrementalAlterConfigs(resp) = resp {
                    for (t, n) in denied {
                        let mut out = m::incremental_alter_configs_response::AlterConfigsResourceResponse::default();
                        out.error_code = config_denied_code(t);
                        out.resource_type = t;
                        out.resource_name = n;
                        resp.responses.push(out);
                    }
                }
            })
        }
        Rq::AlterPartitionReassignments(r) => {
            if c.cluster(Op::Alter) {
                return pass(Rq::AlterPartitionReassignments(r));
            }
            let mut resp = m::AlterPartitionReassignmentsResponse::default();
            resp.error_code = CLUSTER_DENIED;
            Gate::Deny(Rs::AlterPartitionReassignments(resp))
        }
        Rq::ListPartitionReassignments(r) => {
            if c.cluster(Op::Describe) {
                return pass(Rq::ListPartitionReassignments(r));
            }
            let mut resp = m::ListPartitionReassignmentsResponse::default();
            resp.error_code = CLUSTER_DENIED;
            Gate::Deny(Rs::ListPartitionReassignments(resp))
        }
        // Kafka does not check DescribeCluster (cluster DESCRIBE only decides
        // the authorized-operations field, which Strata does not compute).
        Rq::DescribeCluster(r) => pass(Rq::DescribeCluster(r)),
        Rq::FindCoordinator(mut r) => {
            let kind = if r.key_type == 1 {
                Rt::TransactionalId
            } else {
                Rt::Group
            };
            let code = if r.key_type == 1 {
                TXN_DENIED
            } else {
                GROUP_DENIED
            };
            if ctx.version < 4 {
                if c.can(Op::Describe, kind, &r.key) {
                    return pass(Rq::FindCoordinator(r));
                }
                let mut resp = m::FindCoordinatorResponse::default();
                resp.error_code = code;
                resp.node_id = m::BrokerId(-1);
                resp.port = -1;
                return Gate::Deny(Rs::FindCoordinator(resp));
            }
            let (ok, denied): (Vec<_>, Vec<_>) = r
                .coordinator_keys
                .into_iter()
                .partition(|k| c.can(Op::Describe, kind, k));
            r.coordinator_keys = ok;
            if denied.is_empty() {
                return pass(Rq::FindCoordinator(r));
            }
            patch(Rq::FindCoordinator(r), move |resp| {
                if let Rs::FindCoordinator(resp) = resp {
                    for k in denied {
                        let mut out = m::find_coordinator_response::Coordinator::default();
                        out.key = k;
                        out.error_code = code;
                        out.node_id = m::BrokerId(-1);
                        out.port = -1;
                        resp.coordinators.push(out);
                    }
                }
            })
        }
        Rq::JoinGroup(r) => group_gate(&c, &r.group_id.clone(), Rq::JoinGroup(r), || {
            let mut x = m::JoinGroupResponse::default();
            x.error_code = GROUP_DENIED;
            x.generation_id = -1;
            Rs::JoinGroup(x)
        }),
        Rq::SyncGroup(r) => group_gate(&c, &r.group_id.clone(), Rq::SyncGroup(r), || {
            let mut x = m::SyncGroupResponse::default();
            x.error_code = GROUP_DENIED;
            Rs::SyncGroup(x)
        }),
        Rq::Heartbeat(r) => group_gate(&c, &r.group_id.clone(), Rq::Heartbeat(r), || {
            let mut x = m::HeartbeatResponse::default();
            x.error_code = GROUP_DENIED;
            Rs::Heartbeat(x)
        }),
        Rq::LeaveGroup(r) => group_gate(&c, &r.group_id.clone(), Rq::LeaveGroup(r), || {
            let mut x = m::LeaveGroupResponse::default();
            x.error_code = GROUP_DENIED;
            Rs::LeaveGroup(x)
        }),
        Rq::ConsumerGroupHeartbeat(r) => group_gate(
            &c,
            &r.group_id.clone(),
            Rq::ConsumerGroupHeartbeat(r),
            || {
                let mut x = m::ConsumerGroupHeartbeatResponse::default();
                x.error_code = GROUP_DENIED;
                Rs::ConsumerGroupHeartbeat(x)
            },
        ),
        Rq::OffsetCommit(mut r) => {
            if !c.group(Op::Read, &r.group_id) {
                let mut resp = m::OffsetCommitResponse::default();
                resp.topics = commit_denied(std::mem::take(&mut r.topics), GROUP_DENIED);
                return Gate::Deny(Rs::OffsetCommit(resp));
            }
            let (ok, denied): (Vec<_>, Vec<_>) = r
                .topics
                .into_iter()
                .partition(|t| c.topic_ref(Op::Read, &t.name, t.topic_id));
            r.topics = ok;
            if denied.is_empty() {
                return pass(Rq::OffsetCommit(r));
            }
            patch(Rq::OffsetCommit(r), move |resp| {
                if let Rs::OffsetCommit(resp) = resp {
                    resp.topics.extend(commit_denied(denied, TOPIC_DENIED));
                }
            })
        }
        Rq::OffsetFetch(r) => offset_fetch(&c, r),
        Rq::DescribeGroups(mut r) => {
            let (ok, denied): (Vec<_>, Vec<_>) =
                r.groups.into_iter().partition(|g| c.group(Op::Describe, g));
            r.groups = ok;
            if denied.is_empty() {
                return pass(Rq::DescribeGroups(r));
            }
            patch(Rq::DescribeGroups(r), move |resp| {
                if let Rs::DescribeGroups(resp) = resp {
                    for g in denied {
                        let mut out = m::describe_groups_response::DescribedGroup::default();
                        out.group_id = g;
                        out.error_code = GROUP_DENIED;
                        resp.groups.push(out);
                    }
                }
            })
        }
        Rq::ConsumerGroupDescribe(mut r) => {
            let (ok, denied): (Vec<_>, Vec<_>) = r
                .group_ids
                .into_iter()
                .partition(|g| c.group(Op::Describe, g));
            r.group_ids = ok;
            if denied.is_empty() {
                return pass(Rq::ConsumerGroupDescribe(r));
            }
            patch(Rq::ConsumerGroupDescribe(r), move |resp| {
                if let Rs::ConsumerGroupDescribe(resp) = resp {
                    for g in denied {
                        let mut out =
                            m::consumer_group_describe_response::DescribedGroup::default();
                        out.group_id = g;
                        out.error_code = GROUP_DENIED;
                        resp.groups.push(out);
                    }
                }
            })
        }
        Rq::ListGroups(r) => {
            if c.cluster(Op::Describe) {
                return pass(Rq::ListGroups(r));
            }
            // Without DESCRIBE on the cluster, the groups the principal may describe.
            let visible: HashSet<String> = broker_groups(&c);
            patch(Rq::ListGroups(r), move |resp| {
                if let Rs::ListGroups(resp) = resp {
                    resp.groups
                        .retain(|g| visible.contains(g.group_id.as_str()));
                }
            })
        }
        Rq::DeleteGroups(mut r) => {
            let (ok, denied): (Vec<_>, Vec<_>) = r
                .groups_names
                .into_iter()
                .partition(|g| c.group(Op::Delete, g));
            r.groups_names = ok;
            if denied.is_empty() {
                return pass(Rq::DeleteGroups(r));
            }
            patch(Rq::DeleteGroups(r), move |resp| {
                if let Rs::DeleteGroups(resp) = resp {
                    for g in denied {
                        let mut out = m::delete_groups_response::DeletableGroupResult::default();
                        out.group_id = g;
                        out.error_code = GROUP_DENIED;
                        resp.results.push(out);
                    }
                }
            })
        }
        Rq::OffsetDelete(mut r) => {
            if !c.group(Op::Delete, &r.group_id) {
                let mut resp = m::OffsetDeleteResponse::default();
                resp.error_code = GROUP_DENIED;
                return Gate::Deny(Rs::OffsetDelete(resp));
            }
            let (ok, denied): (Vec<_>, Vec<_>) = r
                .topics
                .into_iter()
                .partition(|t| c.topic(Op::Read, &t.name));
            r.topics = ok;
            if denied.is_empty() {
                return pass(Rq::OffsetDelete(r));
            }
            patch(Rq::OffsetDelete(r), move |resp| {
                if let Rs::OffsetDelete(resp) = resp {
                    for t in denied {
                        let mut out =
                            m::offset_delete_response::OffsetDeleteResponseTopic::default();
                        out.name = t.name;
                        out.partitions = t
                            .partitions
                            .iter()
                            .map(|p| {
                                let mut x = m::offset_delete_response::OffsetDeleteResponsePartition::default();
                                x.partition_index = p.partition_index;
                                x.error_code = TOPIC_DENIED;
                                x
                            })
                            .collect();
                        resp.topics.push(out);
                    }
                }
            })
        }
        Rq::InitProducerId(r) => {
            let ok = match &r.transactional_id {
                Some(t) => c.can(Op::Write, Rt::TransactionalId, t),
                None => c.may_write_some_topic(),
            };
            if ok {
                return pass(Rq::InitProducerId(r));
            }
            let mut resp = m::InitProducerIdResponse::default();
            resp.error_code = if r.transactional_id.is_some() {
                TXN_DENIED
            } else {
                CLUSTER_DENIED
            };
            resp.producer_id = m::ProducerId(-1);
            resp.producer_epoch = -1;
            Gate::Deny(Rs::InitProducerId(resp))
        }
        // The security APIs check the cluster themselves (handlers::security).
        Rq::CreateAcls(_)
        | Rq::DescribeAcls(_)
        | Rq::DeleteAcls(_)
        | Rq::DescribeUserScramCredentials(_)
        | Rq::AlterUserScramCredentials(_) => pass(request),
        // An API without a rule here is refused rather than served unchecked.
        _ => Gate::Close("an API without an ACL rule".into()),
    }
}

fn group_gate(c: &Check<'_>, group: &GroupId, r: Rq, denied: impl FnOnce() -> Rs) -> Gate {
    if c.group(Op::Read, group) {
        pass(r)
    } else {
        Gate::Deny(denied())
    }
}

/// Groups this broker knows that the principal may describe.
fn broker_groups(c: &Check<'_>) -> HashSet<String> {
    c.broker
        .groups()
        .list()
        .into_iter()
        .map(|(id, _, _)| id)
        .filter(|g| c.group(Op::Describe, g))
        .collect()
}

fn config_allowed(c: &Check<'_>, op: Op, resource_type: i8, name: &str) -> bool {
    match resource_type {
        2 => c.topic(op, name),
        // Brokers and broker loggers are cluster resources.
        4 | 8 => c.cluster(op),
        _ => false,
    }
}

fn config_denied_code(resource_type: i8) -> i16 {
    if resource_type == 2 {
        TOPIC_DENIED
    } else {
        CLUSTER_DENIED
    }
}

fn produce_denied(
    topics: Vec<m::produce_request::TopicProduceData>,
    code: i16,
) -> Vec<m::produce_response::TopicProduceResponse> {
    topics
        .into_iter()
        .map(|t| {
            let mut out = m::produce_response::TopicProduceResponse::default();
            out.name = t.name;
            out.topic_id = t.topic_id;
            out.partition_responses = t
                .partition_data
                .iter()
                .map(|p| {
                    let mut x = m::produce_response::PartitionProduceResponse::default();
                    x.index = p.index;
                    x.error_code = code;
                    x.base_offset = -1;
                    x.log_append_time_ms = -1;
                    x.log_start_offset = -1;
                    x
                })
                .collect();
            out
        })
        .collect()
}

fn epoch_denied(
    topics: Vec<m::offset_for_leader_epoch_request::OffsetForLeaderTopic>,
    code: i16,
) -> Vec<m::offset_for_leader_epoch_response::OffsetForLeaderTopicResult> {
    topics
        .into_iter()
        .map(|t| {
            let mut out =
                m::offset_for_leader_epoch_response::OffsetForLeaderTopicResult::default();
            out.topic = t.topic;
            out.partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let mut x = m::offset_for_leader_epoch_response::EpochEndOffset::default();
                    x.partition = p.partition;
                    x.error_code = code;
                    x.leader_epoch = -1;
                    x.end_offset = -1;
                    x
                })
                .collect();
            out
        })
        .collect()
}

fn commit_denied(
    topics: Vec<m::offset_commit_request::OffsetCommitRequestTopic>,
    code: i16,
) -> Vec<m::offset_commit_response::OffsetCommitResponseTopic> {
    topics
        .into_iter()
        .map(|t| {
            let mut out = m::offset_commit_response::OffsetCommitResponseTopic::default();
            out.name = t.name;
            out.topic_id = t.topic_id;
            out.partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let mut x = m::offset_commit_response::OffsetCommitResponsePartition::default();
                    x.partition_index = p.partition_index;
                    x.error_code = code;
                    x
                })
                .collect();
            out
        })
        .collect()
}

/// Metadata: a listing of every topic leaves out those the principal may
/// not describe; a named one answers TOPIC_AUTHORIZATION_FAILED. A named
/// topic that does not exist is created only for a principal with CREATE
/// (on the cluster or the topic); one that may only describe it is told
/// UNKNOWN_TOPIC_OR_PARTITION, as Kafka does.
fn metadata(c: &Check<'_>, mut r: m::MetadataRequest) -> Gate {
    // v0: an empty list means every topic.
    let all = match &r.topics {
        None => true,
        Some(t) => t.is_empty() && c.ctx.version == 0,
    };
    if all {
        let visible = topic_filter(c);
        return patch(Rq::Metadata(r), move |resp| {
            if let Rs::Metadata(resp) = resp {
                resp.topics
                    .retain(|t| t.name.as_ref().is_some_and(&visible));
            }
        });
    }
    let topics = r.topics.take().unwrap_or_default();
    let cluster_create = c.cluster(Op::Create);
    let mut answers: Vec<(m::metadata_request::MetadataRequestTopic, i16)> = Vec::new();
    let mut kept = Vec::new();
    for t in topics {
        let name = match &t.name {
            Some(n) => Some(n.to_string()),
            None => name_of(c.broker, &TopicName::default(), t.topic_id),
        };
        let Some(name) = name else {
            kept.push(t); // an unknown id: the handler answers it
            continue;
        };
        if c.img.topics.contains_key(&name) {
            if c.topic(Op::Describe, &name) {
                kept.push(t);
            } else {
                answers.push((t, TOPIC_DENIED));
            }
        } else if cluster_create || c.topic(Op::Create, &name) {
            kept.push(t);
        } else if c.topic(Op::Describe, &name) {
            answers.push((t, 3)); // UNKNOWN_TOPIC_OR_PARTITION, not created
        } else {
            answers.push((t, TOPIC_DENIED));
        }
    }
    r.topics = Some(kept);
    if answers.is_empty() {
        return pass(Rq::Metadata(r));
    }
    patch(Rq::Metadata(r), move |resp| {
        if let Rs::Metadata(resp) = resp {
            for (t, code) in answers {
                let mut out = m::metadata_response::MetadataResponseTopic::default();
                out.name = t.name;
                out.topic_id = t.topic_id;
                out.error_code = code;
                out.topic_authorized_operations = i32::MIN;
                resp.topics.push(out);
            }
        }
    })
}

/// OffsetFetch: GROUP_AUTHORIZATION_FAILED for a group the principal may not
/// describe; topics it may not describe are left out of the answer.
fn offset_fetch(c: &Check<'_>, mut r: m::OffsetFetchRequest) -> Gate {
    if c.ctx.version < 8 {
        if !c.group(Op::Describe, &r.group_id) {
            let mut resp = m::OffsetFetchResponse::default();
            resp.error_code = GROUP_DENIED;
            return Gate::Deny(Rs::OffsetFetch(resp));
        }
        let visible = topic_filter(c);
        if let Some(ts) = r.topics.as_mut() {
            ts.retain(|t| visible(&t.name));
        }
        return patch(Rq::OffsetFetch(r), move |resp| {
            if let Rs::OffsetFetch(resp) = resp {
                resp.topics.retain(|t| visible(&t.name));
            }
        });
    }
    let denied_groups: HashSet<String> = r
        .groups
        .iter()
        .filter(|g| !c.group(Op::Describe, &g.group_id))
        .map(|g| g.group_id.to_string())
        .collect();
    r.groups
        .retain(|g| !denied_groups.contains(g.group_id.as_str()));
    let visible = topic_filter(c);
    for g in r.groups.iter_mut() {
        if let Some(ts) = g.topics.as_mut() {
            ts.retain(|t| visible(&t.name));
        }
    }
    patch(Rq::OffsetFetch(r), move |resp| {
        if let Rs::OffsetFetch(resp) = resp {
            for g in resp.groups.iter_mut() {
                g.topics.retain(|t| visible(&t.name));
            }
            for id in denied_groups {
                let mut out = m::offset_fetch_response::OffsetFetchResponseGroup::default();
                out.group_id = GroupId(StrBytes::from_string(id));
                out.error_code = GROUP_DENIED;
                resp.groups.push(out);
            }
        }
    })
}

/// A `Send` predicate: whether the principal may describe a topic (decided
/// now, for every topic of the image).
fn topic_filter(c: &Check<'_>) -> impl Fn(&TopicName) -> bool + Send + 'static {
    let visible: HashSet<String> = c
        .img
        .topics
        .keys()
        .filter(|t| c.topic(Op::Describe, t))
        .cloned()
        .collect();
    move |t: &TopicName| visible.contains(t.as_str())
}

/// Whether the principal may do `op` on the cluster (the security APIs).
/// Without an authorizer, Kafka lets anyone manage SCRAM credentials;
/// Strata refuses the anonymous principal, so a PLAINTEXT listener next to a
/// SASL one cannot be used to set SASL users' passwords.
pub(crate) fn cluster_allowed(broker: &Broker, ctx: &RequestContext, op: Op) -> bool {
    if !broker.authorizer().enabled() {
        return *ctx.identity.principal != strata_auth::Principal::anonymous();
    }
    broker.authorizer().allows(
        &broker.image(),
        &ctx.identity,
        op,
        Rt::Cluster,
        CLUSTER_NAME,
    )
}

/// Applies a patch to whatever a handler replied.
pub(crate) fn apply(reply: super::Reply, patch: Patch) -> super::Reply {
    use super::Reply;
    match reply {
        Reply::Now(mut r) => {
            patch(&mut r);
            Reply::Now(r)
        }
        Reply::Later(fut) => Reply::Later(Box::pin(async move {
            let mut r = fut.await;
            patch(&mut r);
            r
        })),
        Reply::Deferred(fut) => Reply::Deferred(Box::pin(async move {
            match fut.await {
                Reply::Now(mut r) => {
                    patch(&mut r);
                    Reply::Now(r)
                }
                other => other,
            }
        })),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::ResponseError;

    #[test]
    fn codes_are_kafkas() {
        assert_eq!(ResponseError::TopicAuthorizationFailed.code(), TOPIC_DENIED);
        assert_eq!(ResponseError::GroupAuthorizationFailed.code(), GROUP_DENIED);
        assert_eq!(
            ResponseError::ClusterAuthorizationFailed.code(),
            CLUSTER_DENIED
        );
        assert_eq!(
            ResponseError::TransactionalIdAuthorizationFailed.code(),
            TXN_DENIED
        );
    }
}

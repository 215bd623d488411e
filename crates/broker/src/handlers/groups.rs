//! Kafka request handlers for consumer groups, committed offsets and producer
//! ids: they translate requests to the [`GroupCoordinator`](crate::groups)
//! and its answers back, version by version.

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::{
    describe_groups_response::{DescribedGroup, DescribedGroupMember},
    find_coordinator_response::Coordinator,
    join_group_response::JoinGroupResponseMember,
    leave_group_response::MemberResponse,
    list_groups_response::ListedGroup,
    offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic},
    offset_delete_response::{OffsetDeleteResponsePartition, OffsetDeleteResponseTopic},
    offset_fetch_response::{
        OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
        OffsetFetchResponseTopic, OffsetFetchResponseTopics,
    },
    BrokerId, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
    HeartbeatRequest, HeartbeatResponse, InitProducerIdRequest, InitProducerIdResponse,
    JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest,
    ListGroupsResponse, OffsetCommitRequest, OffsetCommitResponse, OffsetDeleteRequest,
    OffsetDeleteResponse, OffsetFetchRequest, OffsetFetchResponse, ProducerId, ResponseKind,
    SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use tracing::{debug, warn};

use super::{Reply, RequestContext};
use crate::groups::{
    CommittedOffset, GroupState, JoinRequest, JoinResult, OffsetCommit, Pending, SyncResult,
};
use crate::state::{now_ms, Broker};

fn sb(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

/// The wire code of an outcome (0 for success).
fn code(r: Result<(), ResponseError>) -> i16 {
    r.err().map_or(0, |e| e.code())
}

const KEY_TYPE_GROUP: i8 = 0;

/// FindCoordinator: this broker when alone; in a cluster the leader of the
/// group's `__consumer_offsets` partition. Transactions are not supported,
/// so transaction coordinator lookups get an error.
pub(crate) async fn find_coordinator(
    broker: &Arc<Broker>,
    ctx: &super::RequestContext,
    req: FindCoordinatorRequest,
) -> FindCoordinatorResponse {
    let version = ctx.version;
    let keys = if version >= 4 {
        req.coordinator_keys.clone()
    } else {
        vec![req.key.clone()]
    };
    let mut answers = Vec::with_capacity(keys.len());
    for key in keys {
        let mut c = Coordinator::default();
        c.node_id = BrokerId(-1);
        c.port = -1;
        if req.key_type == KEY_TYPE_GROUP {
            match broker.coordinator_for(&key).await {
                Ok(b) => {
                    let (host, port) = b.endpoint(&ctx.identity.listener);
                    c.node_id = BrokerId(b.id);
                    c.host = sb(host);
                    c.port = port;
                }
                Err(e) => {
                    c.error_code = e.code();
                    c.error_message = Some(sb(e.message));
                }
            }
        } else {
            c.error_code = ResponseError::CoordinatorNotAvailable.code();
            c.error_message = Some(sb(
                "this broker coordinates consumer groups only; transactions and share groups are not supported",
            ));
        }
        c.key = key;
        answers.push(c);
    }
    let mut resp = FindCoordinatorResponse::default();
    if version >= 4 {
        resp.coordinators = answers;
    } else if let Some(c) = answers.pop() {
        resp.error_code = c.error_code;
        if version >= 1 {
            resp.error_message = c.error_message;
        }
        resp.node_id = c.node_id;
        resp.host = c.host;
        resp.port = c.port;
    }
    resp
}

/// JoinGroup: answered when the rebalance completes.
pub(crate) fn join_group(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    req: JoinGroupRequest,
) -> Reply {
    let version = ctx.version;
    let group_id = req.group_id.0.to_string();
    let join = JoinRequest {
        member_id: req.member_id.to_string(),
        instance_id: req.group_instance_id.as_ref().map(|s| s.to_string()),
        client_id: ctx.client_id.clone(),
        client_host: format!("/{}", ctx.peer.ip()),
        session_timeout_ms: req.session_timeout_ms,
        // v0 has no rebalance timeout: the session timeout serves.
        rebalance_timeout_ms: if version == 0 {
            req.session_timeout_ms
        } else {
            req.rebalance_timeout_ms
        },
        protocol_type: req.protocol_type.to_string(),
        protocols: req
            .protocols
            .iter()
            .map(|p| (p.name.to_string(), p.metadata.clone()))
            .collect(),
        require_known_member_id: version >= 4,
    };
    if group_id.is_empty() {
        return Reply::Now(ResponseKind::JoinGroup(join_response(
            join_error(ResponseError::InvalidGroupId, &join.member_id),
            version,
        )));
    }
    if let Err(e) = broker.check_coordinator(&group_id) {
        return Reply::Now(ResponseKind::JoinGroup(join_response(
            join_error(e, &join.member_id),
            version,
        )));
    }
    let member = join.member_id.clone();
    match broker.groups().join(&group_id, join) {
        Pending::Ready(r) => Reply::Now(ResponseKind::JoinGroup(join_response(r, version))),
        Pending::Wait(rx) => Reply::Later(Box::pin(async move {
            let r = rx
                .await
                .unwrap_or_else(|_| join_error(ResponseError::UnknownMemberId, &member));
            ResponseKind::JoinGroup(join_response(r, version))
        })),
    }
}

fn join_error(error: ResponseError, member_id: &str) -> JoinResult {
    JoinResult {
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

fn join_response(r: JoinResult, version: i16) -> JoinGroupResponse {
    let mut resp = JoinGroupResponse::default();
    resp.error_code = r.error.map_or(0, |e| e.code());
    resp.generation_id = r.generation;
    if version >= 7 {
        resp.protocol_type = r.protocol_type.map(sb);
    }
    resp.protocol_name = Some(sb(r.protocol_name.unwrap_or_default()));
    resp.leader = sb(r.leader);
    if version >= 9 {
        resp.skip_assignment = r.skip_assignment;
    }
    resp.member_id = sb(r.member_id);
    resp.members = r
        .members
        .into_iter()
        .map(|(id, instance, metadata)| {
            let mut m = JoinGroupResponseMember::default();
            m.member_id = sb(id);
            if version >= 5 {
                m.group_instance_id = instance.map(sb);
            }
            m.metadata = metadata;
            m
        })
        .collect();
    resp
}

/// SyncGroup: followers wait for the leader's assignment.
pub(crate) fn sync_group(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    req: SyncGroupRequest,
) -> Reply {
    let version = ctx.version;
    if let Err(e) = broker.check_coordinator(&req.group_id.0) {
        return Reply::Now(ResponseKind::SyncGroup(sync_response(Err(e), version)));
    }
    let assignments: Vec<(String, Bytes)> = req
        .assignments
        .iter()
        .map(|a| (a.member_id.to_string(), a.assignment.clone()))
        .collect();
    let pending = broker.groups().sync(
        &req.group_id.0,
        &req.member_id,
        req.group_instance_id.as_deref(),
        req.generation_id,
        assignments,
    );
    match pending {
        Pending::Ready(r) => Reply::Now(ResponseKind::SyncGroup(sync_response(r, version))),
        Pending::Wait(rx) => Reply::Later(Box::pin(async move {
            let r = rx.await.unwrap_or(Err(ResponseError::UnknownMemberId));
            ResponseKind::SyncGroup(sync_response(r, version))
        })),
    }
}

fn sync_response(r: SyncResult, version: i16) -> SyncGroupResponse {
    let mut resp = SyncGroupResponse::default();
    match r {
        Ok(a) => {
            if version >= 5 {
                resp.protocol_type = a.protocol_type.map(sb);
                resp.protocol_name = a.protocol_name.map(sb);
            }
            resp.assignment = a.assignment;
        }
        Err(e) => resp.error_code = e.code(),
    }
    resp
}

/// Heartbeat.
pub(crate) fn heartbeat(broker: &Broker, req: HeartbeatRequest) -> HeartbeatResponse {
    let mut resp = HeartbeatResponse::default();
    if let Err(e) = broker.check_coordinator(&req.group_id.0) {
        resp.error_code = e.code();
        return resp;
    }
    resp.error_code = code(broker.groups().heartbeat(
        &req.group_id.0,
        &req.member_id,
        req.group_instance_id.as_deref(),
        req.generation_id,
    ));
    resp
}

/// LeaveGroup: one member (v0-2) or a batch (v3+).
pub(crate) fn leave_group(
    broker: &Broker,
    req: LeaveGroupRequest,
    version: i16,
) -> LeaveGroupResponse {
    let members: Vec<(String, Option<String>)> = if version >= 3 {
        req.members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|s| s.to_string()),
                )
            })
            .collect()
    } else {
        vec![(req.member_id.to_string(), None)]
    };
    let errors = match broker.check_coordinator(&req.group_id.0) {
        Ok(()) => broker.groups().leave(&req.group_id.0, &members),
        Err(e) => {
            if version < 3 {
                let mut resp = LeaveGroupResponse::default();
                resp.error_code = e.code();
                return resp;
            }
            vec![Err(e); members.len()]
        }
    };
    let mut resp = LeaveGroupResponse::default();
    if version >= 3 {
        resp.members = members
            .into_iter()
            .zip(&errors)
            .map(|((id, instance), e)| {
                let mut m = MemberResponse::default();
                m.member_id = sb(id);
                m.group_instance_id = instance.map(sb);
                m.error_code = code(*e);
                m
            })
            .collect();
    } else {
        resp.error_code = errors.first().copied().map_or(0, code);
    }
    resp
}

/// OffsetCommit: validated against the group, durable before the answer.
pub(crate) fn offset_commit(broker: &Arc<Broker>, req: OffsetCommitRequest) -> Reply {
    let group_id = req.group_id.0.to_string();
    let group_error = if group_id.is_empty() {
        Err(ResponseError::InvalidGroupId)
    } else if let Err(e) = broker.check_coordinator(&group_id) {
        Err(e)
    } else {
        broker.groups().check_commit(
            &group_id,
            &req.member_id,
            req.group_instance_id.as_deref(),
            req.generation_id_or_member_epoch,
        )
    };
    let now = now_ms();
    let max_metadata = broker.groups().config().offset_metadata_max_bytes;
    let mut resp = OffsetCommitResponse::default();
    let mut commits = Vec::new();
    for t in &req.topics {
        let mut tr = OffsetCommitResponseTopic::default();
        tr.name = t.name.clone();
        let topic = broker.topic(&t.name.0);
        for p in &t.partitions {
            let mut pr = OffsetCommitResponsePartition::default();
            pr.partition_index = p.partition_index;
            let metadata = p.committed_metadata.as_deref().unwrap_or("").to_string();
            let error = if group_error.is_err() {
                group_error
            } else if !topic
                .as_ref()
                .is_some_and(|t| (0..t.partition_count()).contains(&p.partition_index))
            {
                Err(ResponseError::UnknownTopicOrPartition)
            } else if metadata.len() > max_metadata {
                Err(ResponseError::OffsetMetadataTooLarge)
            } else {
                commits.push(OffsetCommit {
                    topic: t.name.0.to_string(),
                    partition: p.partition_index,
                    value: CommittedOffset {
                        offset: p.committed_offset,
                        leader_epoch: p.committed_leader_epoch,
                        metadata,
                        commit_timestamp: now,
                    },
                });
                Ok(())
            };
            pr.error_code = code(error);
            tr.partitions.push(pr);
        }
        resp.topics.push(tr);
    }
    if let Err(e) = group_error {
        debug!(group = %group_id, member = %req.member_id, error = ?e, "offset commit refused");
    }
    if commits.is_empty() {
        return Reply::Now(ResponseKind::OffsetCommit(resp));
    }
    let broker = broker.clone();
    Reply::Later(Box::pin(async move {
        let stored =
            tokio::task::spawn_blocking(move || broker.groups().commit(&group_id, commits))
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
        if let Err(e) = stored {
            warn!(error = %e, "cannot store committed offsets");
            for t in &mut resp.topics {
                for p in &mut t.partitions {
                    if p.error_code == 0 {
                        p.error_code = ResponseError::KafkaStorageError.code();
                    }
                }
            }
        }
        ResponseKind::OffsetCommit(resp)
    }))
}

/// OffsetFetch: one group (v0-7) or several (v8+).
pub(crate) fn offset_fetch(
    broker: &Broker,
    req: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    let mut resp = OffsetFetchResponse::default();
    let lookup = |group: &str, wanted: Option<Vec<(String, Vec<i32>)>>| {
        broker.groups().committed(group, wanted.as_deref())
    };
    if version >= 8 {
        for g in req.groups {
            let wanted = g.topics.map(|ts| {
                ts.into_iter()
                    .map(|t| (t.name.0.to_string(), t.partition_indexes))
                    .collect()
            });
            let mut gr = OffsetFetchResponseGroup::default();
            gr.group_id = g.group_id.clone();
            if let Err(e) = broker.check_coordinator(&g.group_id.0) {
                gr.error_code = e.code();
                resp.groups.push(gr);
                continue;
            }
            let mut topics: Vec<OffsetFetchResponseTopics> = Vec::new();
            for (topic, partition, value) in lookup(&g.group_id.0, wanted) {
                let mut pr = OffsetFetchResponsePartitions::default();
                pr.partition_index = partition;
                fill(
                    &mut pr.committed_offset,
                    &mut pr.committed_leader_epoch,
                    &mut pr.metadata,
                    value,
                );
                match topics.iter_mut().find(|t| t.name.0.as_str() == topic) {
                    Some(t) => t.partitions.push(pr),
                    None => {
                        let mut t = OffsetFetchResponseTopics::default();
                        t.name = TopicName(sb(topic));
                        t.partitions.push(pr);
                        topics.push(t);
                    }
                }
            }
            gr.topics = topics;
            resp.groups.push(gr);
        }
        return resp;
    }
    if let Err(e) = broker.check_coordinator(&req.group_id.0) {
        resp.error_code = e.code();
        return resp;
    }
    let wanted = req.topics.map(|ts| {
        ts.into_iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes))
            .collect()
    });
    let mut topics: Vec<OffsetFetchResponseTopic> = Vec::new();
    for (topic, partition, value) in lookup(&req.group_id.0, wanted) {
        let mut pr = OffsetFetchResponsePartition::default();
        pr.partition_index = partition;
        let mut epoch = -1;
        fill(
            &mut pr.committed_offset,
            &mut epoch,
            &mut pr.metadata,
            value,
        );
        if version >= 5 {
            pr.committed_leader_epoch = epoch;
        }
        match topics.iter_mut().find(|t| t.name.0.as_str() == topic) {
            Some(t) => t.partitions.push(pr),
            None => {
                let mut t = OffsetFetchResponseTopic::default();
                t.name = TopicName(sb(topic));
                t.partitions.push(pr);
                topics.push(t);
            }
        }
    }
    resp.topics = topics;
    resp
}

fn fill(
    offset: &mut i64,
    epoch: &mut i32,
    metadata: &mut Option<StrBytes>,
    value: Option<CommittedOffset>,
) {
    match value {
        Some(v) => {
            *offset = v.offset;
            *epoch = v.leader_epoch;
            *metadata = Some(sb(v.metadata));
        }
        None => {
            *offset = -1;
            *epoch = -1;
            *metadata = Some(sb(""));
        }
    }
}

/// DescribeGroups.
pub(crate) fn describe_groups(
    broker: &Broker,
    req: DescribeGroupsRequest,
    version: i16,
) -> DescribeGroupsResponse {
    let mut resp = DescribeGroupsResponse::default();
    for id in req.groups {
        let mut g = DescribedGroup::default();
        g.group_id = id.clone();
        if let Err(e) = broker.check_coordinator(&id.0) {
            g.error_code = e.code();
            resp.groups.push(g);
            continue;
        }
        match broker.groups().describe(&id.0) {
            Some(d) => {
                g.group_state = sb(d.state.name());
                g.protocol_type = sb(d.protocol_type);
                g.protocol_data = sb(d.protocol);
                g.members = d
                    .members
                    .into_iter()
                    .map(|m| {
                        let mut dm = DescribedGroupMember::default();
                        dm.member_id = sb(m.member_id);
                        if version >= 4 {
                            dm.group_instance_id = m.instance_id.map(sb);
                        }
                        dm.client_id = sb(m.client_id);
                        dm.client_host = sb(m.client_host);
                        dm.member_metadata = m.metadata;
                        dm.member_assignment = m.assignment;
                        dm
                    })
                    .collect();
            }
            None if version >= 6 => {
                g.error_code = ResponseError::GroupIdNotFound.code();
                g.error_message = Some(sb(format!("group '{}' does not exist", id.0.as_str())));
                g.group_state = sb(GroupState::Dead.name());
            }
            None => g.group_state = sb(GroupState::Dead.name()),
        }
        if version >= 3 {
            g.authorized_operations = i32::MIN;
        }
        resp.groups.push(g);
    }
    resp
}

/// ListGroups, with the v4 state filter and the v5 type filter.
pub(crate) fn list_groups(
    broker: &Broker,
    req: ListGroupsRequest,
    version: i16,
) -> ListGroupsResponse {
    let mut resp = ListGroupsResponse::default();
    for (id, state, protocol_type) in broker.groups().list() {
        let group_type = broker.groups().group_type(&id);
        if version >= 4
            && !req.states_filter.is_empty()
            && !req
                .states_filter
                .iter()
                .any(|s| s.eq_ignore_ascii_case(state.name()))
        {
            continue;
        }
        if version >= 5
            && !req.types_filter.is_empty()
            && !req
                .types_filter
                .iter()
                .any(|t| t.eq_ignore_ascii_case(group_type))
        {
            continue;
        }
        let mut g = ListedGroup::default();
        g.group_id = GroupId(sb(id));
        g.protocol_type = sb(protocol_type);
        if version >= 4 {
            g.group_state = sb(state.name());
        }
        if version >= 5 {
            g.group_type = sb(group_type);
        }
        resp.groups.push(g);
    }
    resp
}

/// DeleteGroups: only groups without members.
pub(crate) fn delete_groups(broker: &Arc<Broker>, req: DeleteGroupsRequest) -> Reply {
    let broker = broker.clone();
    Reply::Later(Box::pin(async move {
        let results = tokio::task::spawn_blocking(move || {
            req.groups_names
                .into_iter()
                .map(|id| {
                    let mut r = kafka_protocol::messages::delete_groups_response::DeletableGroupResult::default();
                    r.error_code = code(
                        broker
                            .check_coordinator(&id.0)
                            .and_then(|()| broker.groups().delete_group(&id.0)),
                    );
                    r.group_id = id;
                    r
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let mut resp = DeleteGroupsResponse::default();
        resp.results = results;
        ResponseKind::DeleteGroups(resp)
    }))
}

/// OffsetDelete: partitions the group does not consume.
pub(crate) fn offset_delete(broker: &Arc<Broker>, req: OffsetDeleteRequest) -> Reply {
    let broker = broker.clone();
    Reply::Later(Box::pin(async move {
        let resp = tokio::task::spawn_blocking(move || {
            let partitions: Vec<(String, i32)> = req
                .topics
                .iter()
                .flat_map(|t| {
                    t.partitions
                        .iter()
                        .map(|p| (t.name.0.to_string(), p.partition_index))
                })
                .collect();
            let mut resp = OffsetDeleteResponse::default();
            let outcome = broker
                .check_coordinator(&req.group_id.0)
                .and_then(|()| broker.groups().delete_offsets(&req.group_id.0, &partitions));
            if let Err(e) = &outcome {
                resp.error_code = e.code();
            }
            if let Ok(results) = outcome {
                let mut it = results.into_iter();
                for t in req.topics {
                    let mut tr = OffsetDeleteResponseTopic::default();
                    tr.name = t.name;
                    for p in t.partitions {
                        let mut pr = OffsetDeleteResponsePartition::default();
                        pr.partition_index = p.partition_index;
                        pr.error_code = it.next().map_or(0, code);
                        tr.partitions.push(pr);
                    }
                    resp.topics.push(tr);
                }
            }
            resp
        })
        .await
        .unwrap_or_default();
        ResponseKind::OffsetDelete(resp)
    }))
}

/// InitProducerId for idempotent producers. A producer that asks with its
/// current id and epoch (KIP-360) gets the next epoch; transactional ids are
/// refused.
pub(crate) fn init_producer_id(broker: &Arc<Broker>, req: InitProducerIdRequest) -> Reply {
    let mut resp = InitProducerIdResponse::default();
    resp.producer_id = ProducerId(-1);
    resp.producer_epoch = -1;
    if req.transactional_id.is_some() {
        resp.error_code = ResponseError::TransactionalIdAuthorizationFailed.code();
        warn!(
            transactional_id = req
                .transactional_id
                .as_ref()
                .map(|t| t.0.as_str())
                .unwrap_or(""),
            "refused InitProducerId: transactions are not supported"
        );
        return Reply::Now(ResponseKind::InitProducerId(resp));
    }
    if req.producer_id.0 >= 0 && req.producer_epoch >= 0 && req.producer_epoch < i16::MAX - 1 {
        resp.producer_id = req.producer_id;
        resp.producer_epoch = req.producer_epoch + 1;
        return Reply::Now(ResponseKind::InitProducerId(resp));
    }
    let broker = broker.clone();
    Reply::Later(Box::pin(async move {
        match broker.next_producer_id().await {
            Ok(id) => {
                resp.producer_id = ProducerId(id);
                resp.producer_epoch = 0;
            }
            Err(e) => resp.error_code = e.code(),
        }
        ResponseKind::InitProducerId(resp)
    }))
}

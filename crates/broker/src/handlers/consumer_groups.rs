//! ConsumerGroupHeartbeat and ConsumerGroupDescribe (KIP-848): the wire side
//! of [`crate::groups::consumer`].

use std::sync::Arc;

use kafka_protocol::messages::{
    consumer_group_describe_response::{
        Assignment as DescribedAssignment, DescribedGroup, Member as DescribedMember,
        TopicPartitions as DescribedTopicPartitions,
    },
    consumer_group_heartbeat_response::{
        Assignment as HeartbeatAssignment, TopicPartitions as HeartbeatTopicPartitions,
    },
    ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse, ConsumerGroupHeartbeatRequest,
    ConsumerGroupHeartbeatResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use tracing::debug;
use uuid::Uuid;

use super::{topic_name, RequestContext, OFFSETS_TOPIC};
use crate::groups::consumer::{Assignment, Heartbeat, Topics};
use crate::state::Broker;

fn sb(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

/// The topics consumer groups may subscribe to: every topic but the
/// internal one.
fn topics(broker: &Broker) -> Topics {
    broker
        .topics()
        .into_iter()
        .filter(|t| t.name != OFFSETS_TOPIC)
        .map(|t| (t.name.clone(), (t.id, t.partition_count())))
        .collect()
}

pub(super) fn heartbeat(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    req: ConsumerGroupHeartbeatRequest,
    version: i16,
) -> ConsumerGroupHeartbeatResponse {
    let mut resp = ConsumerGroupHeartbeatResponse::default();
    let group_id = req.group_id.0.to_string();
    if let Err(e) = broker.check_coordinator(&group_id) {
        resp.error_code = e.code();
        resp.member_id = Some(req.member_id);
        resp.member_epoch = req.member_epoch;
        return resp;
    }
    let mut member_id = req.member_id.to_string();
    if member_id.is_empty() && req.member_epoch == 0 && version == 0 {
        // v0: the coordinator names a joining member; from v1 the client does.
        member_id = Uuid::new_v4().to_string();
    }
    let owned = req.topic_partitions.map(|tps| {
        tps.into_iter()
            .map(|tp| (tp.topic_id, tp.partitions.into_iter().collect()))
            .collect::<Assignment>()
    });
    let hb = Heartbeat {
        member_id: member_id.clone(),
        member_epoch: req.member_epoch,
        instance_id: req.instance_id.map(|s| s.to_string()),
        rack_id: req.rack_id.map(|s| s.to_string()),
        rebalance_timeout_ms: req.rebalance_timeout_ms,
        subscribed_topic_names: req
            .subscribed_topic_names
            .map(|ns| ns.into_iter().map(|n| n.0.to_string()).collect()),
        subscribed_topic_regex: req.subscribed_topic_regex.map(|s| s.to_string()),
        server_assignor: req.server_assignor.map(|s| s.to_string()),
        owned,
        client_id: ctx.client_id.clone(),
        client_host: format!("/{}", ctx.peer.ip()),
    };
    resp.heartbeat_interval_ms = broker.groups().consumer_heartbeat_interval_ms();
    match broker
        .groups()
        .consumer_heartbeat(&group_id, hb, &topics(broker))
    {
        Ok(a) => {
            resp.member_id = Some(sb(a.member_id));
            resp.member_epoch = a.member_epoch;
            resp.assignment = a.assignment.map(|assigned| {
                let mut out = HeartbeatAssignment::default();
                out.topic_partitions = assigned
                    .into_iter()
                    .map(|(id, ps)| {
                        let mut tp = HeartbeatTopicPartitions::default();
                        tp.topic_id = id;
                        tp.partitions = ps.into_iter().collect();
                        tp
                    })
                    .collect();
                out
            });
        }
        Err(r) => {
            debug!(group = %group_id, member = %member_id, error = ?r.code, message = %r.message, "consumer group heartbeat refused");
            resp.error_code = r.code.code();
            resp.error_message = Some(sb(r.message));
            resp.member_id = Some(sb(member_id));
            resp.member_epoch = req.member_epoch;
        }
    }
    resp
}

pub(super) fn describe(
    broker: &Arc<Broker>,
    req: ConsumerGroupDescribeRequest,
) -> ConsumerGroupDescribeResponse {
    let name_of = |id: &Uuid| broker.topic_by_id(*id).map(|t| t.name.clone());
    let render = |a: &Assignment| {
        let mut out = DescribedAssignment::default();
        out.topic_partitions = a
            .iter()
            .filter_map(|(id, ps)| {
                let mut tp = DescribedTopicPartitions::default();
                tp.topic_id = *id;
                tp.topic_name = topic_name(&name_of(id)?);
                tp.partitions = ps.iter().copied().collect();
                Some(tp)
            })
            .collect();
        out
    };
    let mut resp = ConsumerGroupDescribeResponse::default();
    for id in req.group_ids {
        let mut g = DescribedGroup::default();
        g.group_id = id.clone();
        g.authorized_operations = i32::MIN;
        if let Err(e) = broker.check_coordinator(&id.0) {
            g.error_code = e.code();
            resp.groups.push(g);
            continue;
        }
        let Some(group) = broker.groups().consumer_group(&id.0) else {
            g.error_code = ResponseError::GroupIdNotFound.code();
            g.error_message = Some(sb(format!(
                "group {} is not a consumer-protocol group",
                id.0.as_str()
            )));
            resp.groups.push(g);
            continue;
        };
        g.group_state = sb(group.state_name());
        g.group_epoch = group.group_epoch;
        g.assignment_epoch = group.assignment_epoch;
        g.assignor_name = sb(group.assignor.clone());
        g.members = group
            .members
            .values()
            .map(|m| {
                let mut dm = DescribedMember::default();
                dm.member_id = sb(m.id.clone());
                dm.instance_id = m.instance_id.clone().map(sb);
                dm.rack_id = m.rack_id.clone().map(sb);
                dm.member_epoch = m.epoch;
                dm.client_id = sb(m.client_id.clone());
                dm.client_host = sb(m.client_host.clone());
                dm.subscribed_topic_names =
                    m.subscribed_names.iter().map(|n| topic_name(n)).collect();
                dm.subscribed_topic_regex = m.regex.clone().map(sb);
                dm.assignment = render(&m.assigned);
                dm.target_assignment =
                    render(&group.target.get(&m.id).cloned().unwrap_or_default());
                dm.member_type = 1; // consumer protocol (KIP-1099)
                dm
            })
            .collect();
        resp.groups.push(g);
    }
    resp
}

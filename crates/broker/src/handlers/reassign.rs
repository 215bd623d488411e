//! AlterPartitionReassignments and ListPartitionReassignments (KIP-455).

use std::sync::Arc;

use kafka_protocol::messages::{
    alter_partition_reassignments_response::{
        ReassignablePartitionResponse, ReassignableTopicResponse,
    },
    list_partition_reassignments_response::{
        OngoingPartitionReassignment, OngoingTopicReassignment,
    },
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, BrokerId,
    ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse,
};
use strata_cluster::reassign::Reassignment;

use crate::cluster::ReassignRequest;
use crate::state::Broker;

use super::{sb, topic_name};

pub(super) async fn alter_partition_reassignments(
    broker: &Arc<Broker>,
    req: AlterPartitionReassignmentsRequest,
    version: i16,
    forward: bool,
) -> AlterPartitionReassignmentsResponse {
    // KIP-860: version 0 cannot say, and may change the replication factor.
    let allow_rf_change = version < 1 || req.allow_replication_factor_change;
    let requests: Vec<ReassignRequest> = req
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| ReassignRequest {
                topic: t.name.0.to_string(),
                partition: p.partition_index,
                change: match &p.replicas {
                    Some(r) => Reassignment::To(r.iter().map(|b| b.0).collect()),
                    None => Reassignment::Cancel,
                },
            })
        })
        .collect();
    let mut resp = AlterPartitionReassignmentsResponse::default();
    resp.allow_replication_factor_change = allow_rf_change;
    let outcomes = match broker
        .reassign_partitions(requests, allow_rf_change, forward)
        .await
    {
        Ok(o) => o,
        Err(e) => {
            resp.error_code = e.code();
            resp.error_message = Some(sb(e.message));
            return resp;
        }
    };
    let mut outcomes = outcomes.into_iter();
    for t in req.topics {
        let mut tr = ReassignableTopicResponse::default();
        tr.name = t.name;
        for p in t.partitions {
            let mut pr = ReassignablePartitionResponse::default();
            pr.partition_index = p.partition_index;
            if let Some(Err(e)) = outcomes.next() {
                pr.error_code = e.code();
                pr.error_message = Some(sb(e.message));
            }
            tr.partitions.push(pr);
        }
        resp.responses.push(tr);
    }
    resp
}

/// Reassignments under way, from this broker's view of the cluster: every
/// one, or those of the partitions asked about.
pub(super) fn list_partition_reassignments(
    broker: &Broker,
    req: ListPartitionReassignmentsRequest,
) -> ListPartitionReassignmentsResponse {
    let img = broker.image();
    let wanted: Vec<(String, Option<Vec<i32>>)> = match req.topics {
        Some(topics) => topics
            .into_iter()
            .map(|t| (t.name.0.to_string(), Some(t.partition_indexes)))
            .collect(),
        None => img.topics.keys().map(|n| (n.clone(), None)).collect(),
    };
    let ids = |v: &[i32]| v.iter().copied().map(BrokerId).collect::<Vec<_>>();
    let mut resp = ListPartitionReassignmentsResponse::default();
    for (name, indexes) in wanted {
        let Some(rec) = img.topics.get(&name) else {
            continue;
        };
        let mut ot = OngoingTopicReassignment::default();
        ot.name = topic_name(&name);
        for (index, state) in img.topic_partitions(rec) {
            let Some(s) = state.map(|s| &s.value).filter(|s| s.is_reassigning()) else {
                continue;
            };
            if indexes.as_ref().is_some_and(|i| !i.contains(&index)) {
                continue;
            }
            let mut op = OngoingPartitionReassignment::default();
            op.partition_index = index;
            op.replicas = ids(&s.replicas);
            op.adding_replicas = ids(&s.adding_replicas);
            op.removing_replicas = ids(&s.removing_replicas);
            ot.partitions.push(op);
        }
        if !ot.partitions.is_empty() {
            resp.topics.push(ot);
        }
    }
    resp
}

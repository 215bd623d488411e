//! AlterPartitionReassignments on the broker: decided by the controller
//! ([`strata_cluster::reassign`]), forwarded to it from any other broker.
//! The controller's reconciliation completes each reassignment once its
//! target replicas are in sync; `apply_image` opens and removes the local
//! replicas as the partition states change.

use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::{
    alter_partition_reassignments_request::{ReassignablePartition, ReassignableTopic},
    AlterPartitionReassignmentsRequest, ApiKey, BrokerId, RequestKind, ResponseKind, TopicName,
};
use strata_cluster::reassign::{plan_reassignment, Reassignment};
use strata_cluster::{Fence, StoreError};
use tracing::info;

use super::{check, sb, store_error, unexpected, Route, FORWARD_TIMEOUT};
use crate::error::{plan_error, ApiError};
use crate::state::Broker;

/// How often a reassignment that lost a race with another change of the
/// partition (an ISR change, a leader election) is decided again.
const CONFLICT_RETRIES: usize = 5;

/// One partition's requested change.
#[derive(Debug, Clone)]
pub struct ReassignRequest {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: i32,
    /// The new replicas, or a cancellation.
    pub change: Reassignment,
}

impl Broker {
    /// Starts, changes or cancels reassignments; one outcome per request,
    /// in order. The outer error is for the whole request (no controller).
    pub async fn reassign_partitions(
        self: &Arc<Self>,
        requests: Vec<ReassignRequest>,
        allow_rf_change: bool,
        forward: bool,
    ) -> Result<Vec<Result<(), ApiError>>, ApiError> {
        match self.route(forward).await? {
            Route::Here(epoch) => {
                let _admin = self.admin.lock().await;
                let mut outcomes = Vec::with_capacity(requests.len());
                let mut revision = 0;
                for r in &requests {
                    let outcome = self.reassign_one(epoch, r, allow_rf_change).await;
                    if let Ok(Some(rev)) = outcome {
                        revision = revision.max(rev);
                        info!(topic = %r.topic, partition = r.partition, change = ?r.change, "reassignment accepted");
                    }
                    outcomes.push(outcome.map(|_| ()));
                }
                if revision > 0 {
                    self.caught_up(|img| img.revision >= revision).await;
                    self.metadata_changed();
                }
                Ok(outcomes)
            }
            Route::There(ctrl) => {
                let mut req = AlterPartitionReassignmentsRequest::default();
                req.timeout_ms = FORWARD_TIMEOUT.as_millis() as i32;
                req.allow_replication_factor_change = allow_rf_change;
                for r in &requests {
                    let mut p = ReassignablePartition::default();
                    p.partition_index = r.partition;
                    p.replicas = match &r.change {
                        Reassignment::To(b) => Some(b.iter().copied().map(BrokerId).collect()),
                        Reassignment::Cancel => None,
                    };
                    let mut t = ReassignableTopic::default();
                    t.name = TopicName(sb(r.topic.clone()));
                    t.partitions = vec![p];
                    req.topics.push(t);
                }
                let resp = self
                    .forward(
                        &ctrl,
                        ApiKey::AlterPartitionReassignments,
                        1,
                        RequestKind::AlterPartitionReassignments(req),
                        |r| match r {
                            ResponseKind::AlterPartitionReassignments(r) => Some(r),
                            _ => None,
                        },
                    )
                    .await?;
                check(resp.error_code, resp.error_message)?;
                let mut answers = resp
                    .responses
                    .into_iter()
                    .flat_map(|t| t.partitions.into_iter().map(move |p| (t.name.clone(), p)));
                let outcomes = requests
                    .iter()
                    .map(|_| {
                        let (_, p) = answers.next().ok_or_else(|| unexpected(&ctrl))?;
                        check(p.error_code, p.error_message)
                    })
                    .collect();
                Ok(outcomes)
            }
        }
    }

    /// Plans and commits one partition's change as controller; the store
    /// revision of the write, if anything changed.
    async fn reassign_one(
        self: &Arc<Self>,
        epoch: i64,
        r: &ReassignRequest,
        allow_rf_change: bool,
    ) -> Result<Option<i64>, ApiError> {
        let mut rx = self.store.subscribe();
        for _ in 0..CONFLICT_RETRIES {
            let img = self.image();
            let Some(op) =
                plan_reassignment(&img, &r.topic, r.partition, &r.change, allow_rf_change)
                    .map_err(plan_error)?
            else {
                return Ok(None);
            };
            match self.store.commit(Fence::Controller(epoch), vec![op]).await {
                Ok(rev) => return Ok(Some(rev)),
                Err(StoreError::Conflict(_)) => {
                    let seen = img.revision;
                    let _ = tokio::time::timeout(
                        Duration::from_secs(1),
                        rx.wait_for(|i| i.revision > seen),
                    )
                    .await;
                }
                Err(e) => return Err(store_error(e)),
            }
        }
        Err(store_error(StoreError::Conflict(format!(
            "{}-{} kept changing while the reassignment was decided",
            r.topic, r.partition
        ))))
    }
}

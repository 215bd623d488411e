//! DeleteRecords: moves partitions' log start offsets forward, as
//! `AdminClient.delete_records` and `kafka-delete-records` ask.
//!
//! The leader moves its start locally (checkpointed before any file goes) and
//! in the object tier, and answers with the new low watermark. Followers take
//! the leader's log start offset from their fetch responses. Unlike Kafka,
//! the answer does not wait for the followers to have moved theirs; a leader
//! elected before they did keeps the deleted records readable until its own
//! next DeleteRecords or retention pass.

use std::sync::Arc;

use futures::future::join_all;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};
use tracing::info;

use crate::error::ApiError;
use crate::state::Broker;

use super::leader_partition;

pub(super) async fn delete_records(
    broker: &Arc<Broker>,
    req: DeleteRecordsRequest,
) -> DeleteRecordsResponse {
    let topics = req.topics.into_iter().map(|t| async move {
        let topic = broker
            .topic(&t.name.0)
            .ok_or_else(|| ApiError::unknown_topic(&t.name.0));
        let partitions = t.partitions.into_iter().map(|p| {
            let topic = topic.clone();
            async move {
                let result = match topic
                    .and_then(|topic| leader_partition(&topic, p.partition_index, -1))
                {
                    Ok(part) => part.delete_records(p.offset).await,
                    Err(e) => Err(e),
                };
                let mut r = DeleteRecordsPartitionResult::default();
                r.partition_index = p.partition_index;
                match result {
                    Ok(low) => r.low_watermark = low,
                    Err(e) => {
                        r.error_code = e.code();
                        r.low_watermark = -1;
                    }
                }
                r
            }
        });
        let mut tr = DeleteRecordsTopicResult::default();
        tr.partitions = join_all(partitions).await;
        for r in tr.partitions.iter().filter(|r| r.error_code == 0) {
            info!(topic = %t.name.0, partition = r.partition_index, low_watermark = r.low_watermark, "DeleteRecords");
        }
        tr.name = t.name;
        tr
    });
    let mut resp = DeleteRecordsResponse::default();
    resp.topics = join_all(topics).await;
    resp
}

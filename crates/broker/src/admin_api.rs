//! The broker's small Rust API for operators: what the HTTP admin API and
//! the metrics endpoint read, and the few actions they take that the Kafka
//! API does not offer in one step (resetting a group's offsets).

use std::sync::Arc;

use kafka_protocol::ResponseError;
use serde::Serialize;

use crate::error::ApiError;
use crate::groups::{CommittedOffset, OffsetCommit};
use crate::state::{now_ms, Broker, Partition};

/// Where to move offsets to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    /// The log start (the object tier's, for tiered partitions).
    Earliest,
    /// The high watermark.
    Latest,
    /// The first offset with a timestamp at or after this (ms).
    Timestamp(i64),
    /// This offset, clamped to the log.
    Offset(i64),
}

/// The object tier's view of a partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RemoteView {
    /// First offset the tier holds.
    pub start: i64,
    /// Offset after the last one it holds.
    pub end: i64,
    /// Bytes it holds.
    pub bytes: u64,
    /// Segments it holds.
    pub segments: usize,
    /// Manifest generation.
    pub generation: u64,
    /// Segments uploaded since the broker started.
    pub uploaded_segments: u64,
    /// Bytes uploaded since the broker started.
    pub uploaded_bytes: u64,
    /// When the last upload finished (ms since the epoch; 0: none yet).
    pub last_upload_ms: i64,
    /// Failed uploads in a row.
    pub consecutive_failures: u32,
    /// The last upload error, while uploads keep failing.
    pub last_error: Option<String>,
}

/// A partition's hot and cold ranges.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartitionStatus {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// First offset held anywhere.
    pub log_start: i64,
    /// First offset on local disk.
    pub local_start: i64,
    /// Next offset to be written.
    pub log_end: i64,
    /// What readers see.
    pub high_watermark: i64,
    /// Bytes on local disk.
    pub local_bytes: u64,
    /// Whether the topic tiers to the object store.
    pub remote_storage_enable: bool,
    /// The object tier's range, when its manifest is loaded.
    pub remote: Option<RemoteView>,
    /// Local bytes not yet in the object tier (tiered topics; includes the
    /// active segment).
    pub offload_lag_bytes: u64,
    /// Closed segments waiting for upload.
    pub offload_lag_segments: usize,
    /// The cleaner's progress (`cleanup.policy` with `compact`).
    pub compaction: Option<crate::cleaner::CleanerStatus>,
}

/// A broker of the cluster, as registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrokerView {
    /// Id.
    pub id: i32,
    /// Advertised host.
    pub host: String,
    /// Advertised Kafka port.
    pub port: i32,
    /// Rack.
    pub rack: Option<String>,
    /// HTTP API address.
    pub http: String,
    /// Broker epoch (the registration's revision).
    pub epoch: i64,
    /// In controlled shutdown.
    pub shutting_down: bool,
}

/// A partition's place in the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionView {
    /// Partition.
    pub partition: i32,
    /// Leader (-1: none).
    pub leader: i32,
    /// Leader epoch.
    pub leader_epoch: i32,
    /// Replicas, preferred leader first.
    pub replicas: Vec<i32>,
    /// In-sync replicas.
    pub isr: Vec<i32>,
    /// Replicas on brokers that are not registered.
    pub offline_replicas: Vec<i32>,
    /// Replicas a reassignment under way adds.
    pub adding_replicas: Vec<i32>,
    /// Replicas a reassignment under way removes.
    pub removing_replicas: Vec<i32>,
}

/// A topic's partitions in the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicView {
    /// Name.
    pub name: String,
    /// Id.
    pub id: String,
    /// Partitions.
    pub partitions: Vec<PartitionView>,
}

/// This broker's standing in the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionView {
    /// Its epoch (0 while unregistered).
    pub broker_epoch: i64,
    /// Its controller epoch, while it is controller.
    pub controller_epoch: Option<i64>,
    /// Whether its last call to the metadata store succeeded.
    pub store_reachable: bool,
    /// Whether it serves on its peers' word that the store is down for all.
    pub store_outage: bool,
    /// Whether it may act as a partition leader now.
    pub can_lead: bool,
}

/// The cluster as this broker sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterView {
    /// Cluster id.
    pub cluster_id: String,
    /// `single` (embedded default) or `cluster` (etcd).
    pub mode: &'static str,
    /// Where the metadata lives.
    pub metadata: String,
    /// The store revision of this view.
    pub revision: i64,
    /// This broker's id.
    pub this_broker: i32,
    /// The controller's broker id, when one is elected.
    pub controller: Option<i32>,
    /// This broker's session.
    pub session: SessionView,
    /// Registered brokers.
    pub brokers: Vec<BrokerView>,
    /// Topics with their partitions' leaders, replicas and ISRs.
    pub topics: Vec<TopicView>,
}

impl Broker {
    /// The cluster: brokers, controller, and each partition's leader,
    /// replicas and ISR.
    pub fn cluster_view(&self) -> ClusterView {
        let img = self.image();
        let session = self.metadata().session();
        let st = session.state();
        ClusterView {
            cluster_id: img.cluster_id.clone(),
            mode: if self.metadata().is_cluster() {
                "cluster"
            } else {
                "single"
            },
            metadata: self.metadata().describe(),
            revision: img.revision,
            this_broker: self.node_id(),
            controller: img.controller.map(|c| c.broker_id),
            session: SessionView {
                broker_epoch: st.broker_epoch,
                controller_epoch: st.controller_epoch,
                store_reachable: st.store_reachable,
                store_outage: st.store_outage,
                can_lead: session.can_lead(),
            },
            brokers: img
                .brokers
                .values()
                .map(|b| BrokerView {
                    id: b.id,
                    host: b.host.clone(),
                    port: b.port,
                    rack: b.rack.clone(),
                    http: b.http.clone(),
                    epoch: b.epoch,
                    shutting_down: b.shutting_down,
                })
                .collect(),
            topics: img
                .topics
                .values()
                .map(|t| TopicView {
                    name: t.name.clone(),
                    id: t.id.to_string(),
                    partitions: img
                        .topic_partitions(t)
                        .map(|(i, s)| match s {
                            Some(s) => PartitionView {
                                partition: i,
                                leader: s.value.leader,
                                leader_epoch: s.value.leader_epoch,
                                replicas: s.value.replicas.clone(),
                                isr: s.value.isr.clone(),
                                offline_replicas: s
                                    .value
                                    .replicas
                                    .iter()
                                    .copied()
                                    .filter(|b| !img.is_live(*b))
                                    .collect(),
                                adding_replicas: s.value.adding_replicas.clone(),
                                removing_replicas: s.value.removing_replicas.clone(),
                            },
                            None => PartitionView {
                                partition: i,
                                leader: -1,
                                leader_epoch: -1,
                                replicas: Vec::new(),
                                isr: Vec::new(),
                                offline_replicas: Vec::new(),
                                adding_replicas: Vec::new(),
                                removing_replicas: Vec::new(),
                            },
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// The hot and cold ranges of a partition.
    pub fn partition_status(&self, p: &Partition) -> PartitionStatus {
        let o = p.offsets();
        let policy = p.policy();
        let remote = self
            .tier()
            .partition_status(p.topic_id, p.index)
            .map(|r| RemoteView {
                start: r.log_start_offset,
                end: r.next_offset,
                bytes: r.size_bytes,
                segments: r.segments,
                generation: r.generation,
                uploaded_segments: r.offload.uploaded_segments,
                uploaded_bytes: r.offload.uploaded_bytes,
                last_upload_ms: r.offload.last_upload_ms,
                consecutive_failures: r.offload.consecutive_failures,
                last_error: r.offload.last_error,
            });
        let (lag_bytes, lag_segments) = match (&remote, policy.remote) {
            (Some(r), true) => p.with_log(|l| {
                let closed = l.closed_segments();
                (
                    l.size_bytes_from(r.end),
                    closed.iter().filter(|s| s.next_offset > r.end).count(),
                )
            }),
            (None, true) => p.with_log(|l| (l.size_bytes(), l.closed_segments().len())),
            _ => (0, 0),
        };
        PartitionStatus {
            topic: p.topic.clone(),
            partition: p.index,
            log_start: o.log_start,
            local_start: o.local_start,
            log_end: o.log_end,
            high_watermark: o.high_watermark,
            local_bytes: o.size_bytes,
            remote_storage_enable: policy.remote,
            remote,
            offload_lag_bytes: lag_bytes,
            offload_lag_segments: lag_segments,
            compaction: policy.compact.map(|_| {
                let mut c = p.cleaner.lock().expect("cleaner lock").clone();
                c.cleaned_to = p.with_log(|l| l.cleaned_to());
                c
            }),
        }
    }

    /// Every partition's status, by topic then partition.
    pub fn partition_statuses(&self) -> Vec<PartitionStatus> {
        self.topics()
            .iter()
            .flat_map(|t| t.partitions())
            .map(|p| self.partition_status(&p))
            .collect()
    }

    /// The offset `spec` names in a partition, like ListOffsets.
    pub async fn resolve_offset(
        self: &Arc<Self>,
        p: &Arc<Partition>,
        spec: OffsetSpec,
    ) -> Result<i64, ApiError> {
        let o = p.offsets();
        Ok(match spec {
            OffsetSpec::Earliest => o.log_start,
            OffsetSpec::Latest => o.high_watermark,
            OffsetSpec::Offset(n) => n.clamp(o.log_start, o.high_watermark),
            OffsetSpec::Timestamp(ts) => {
                match crate::handlers::lookup_offset(self, p, ts).await?.0 {
                    -1 => o.high_watermark,
                    n => n,
                }
            }
        })
    }

    /// DeleteRecords for one partition this broker leads: moves its log
    /// start offset to `offset` (-1: the high watermark) and returns the new
    /// low watermark.
    pub async fn delete_records(
        self: &Arc<Self>,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Result<i64, ApiError> {
        let t = self
            .topic(topic)
            .ok_or_else(|| ApiError::unknown_topic(topic))?;
        let p = crate::handlers::leader_partition(&t, partition, -1)?;
        p.delete_records(offset).await
    }

    /// Moves a group's committed offsets, for `topic` (every partition) or
    /// for every partition it has committed, to `spec`. Refused while the
    /// group has members: they would overwrite the new offsets.
    pub async fn reset_group_offsets(
        self: &Arc<Self>,
        group: &str,
        topic: Option<&str>,
        spec: OffsetSpec,
    ) -> Result<Vec<(String, i32, i64)>, ApiError> {
        if let Err(code) = self.check_coordinator(group) {
            let at = self
                .coordinator_for(group)
                .await
                .map(|b| format!("broker {} ({}:{})", b.id, b.host, b.http))
                .unwrap_or_else(|e| e.message);
            return Err(ApiError::new(
                code,
                format!("this broker does not coordinate group '{group}'; its coordinator is {at}"),
            ));
        }
        if let Some(d) = self.groups().describe(group) {
            if !d.members.is_empty() {
                return Err(ApiError::new(
                    ResponseError::NonEmptyGroup,
                    format!(
                        "group '{group}' has {} active members: stop its consumers before resetting its offsets",
                        d.members.len()
                    ),
                ));
            }
        }
        let targets: Vec<Arc<Partition>> = match topic {
            Some(t) => self
                .topic(t)
                .ok_or_else(|| ApiError::unknown_topic(t))?
                .partitions(),
            None => {
                let committed = self.groups().committed(group, None);
                if committed.is_empty() {
                    return Err(ApiError::new(
                        ResponseError::GroupIdNotFound,
                        format!("group '{group}' has no committed offsets: name a topic to reset"),
                    ));
                }
                committed
                    .iter()
                    .filter_map(|(t, p, _)| self.topic(t).and_then(|t| t.partition(*p)))
                    .collect()
            }
        };
        let now = now_ms();
        let mut commits = Vec::with_capacity(targets.len());
        for p in &targets {
            let offset = self.resolve_offset(p, spec).await?;
            commits.push(OffsetCommit {
                topic: p.topic.clone(),
                partition: p.index,
                value: CommittedOffset {
                    offset,
                    leader_epoch: -1,
                    metadata: String::new(),
                    commit_timestamp: now,
                },
            });
        }
        let result: Vec<(String, i32, i64)> = commits
            .iter()
            .map(|c| (c.topic.clone(), c.partition, c.value.offset))
            .collect();
        let this = self.clone();
        let group_id = group.to_string();
        tokio::task::spawn_blocking(move || this.groups().commit(&group_id, commits))
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::storage)?;
        tracing::info!(
            group,
            topic = topic.unwrap_or("(committed)"),
            ?spec,
            "group offsets reset"
        );
        Ok(result)
    }
}

//! Committed offsets and group generations on the replicated
//! `__consumer_offsets` topic (Kafka's model): in a cluster, every change a
//! group coordinator makes is first appended to the group's partition of
//! that topic, as its leader, and acknowledged once every in-sync replica
//! has it; only then does it apply (and land in the coordinator's local
//! journal, its cache). A broker that becomes leader of such a partition
//! rebuilds the partition's groups from its log before coordinating them
//! (`COORDINATOR_LOAD_IN_PROGRESS` meanwhile); one that stops leading it
//! forgets them.
//!
//! Records: key `{"group": ...}`, value one [`OffsetChange`] as JSON (the
//! journal's own encoding), uncompressed, no producer id.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use tracing::{info, warn};

use crate::cluster::offsets_partition;
use crate::groups::offsets::{OffsetChange, OffsetReplicator};
use crate::handlers::OFFSETS_TOPIC;
use crate::state::{now_ms, Broker, Partition};

/// How long a coordinator waits for its followers to confirm a change.
const REPLICATION_TIMEOUT: Duration = Duration::from_secs(10);

/// The coordinator's replicator: see the module docs.
pub(crate) struct OffsetsLog {
    pub(crate) broker: Weak<Broker>,
}

fn group_of(c: &OffsetChange) -> Option<&str> {
    match c {
        OffsetChange::Commit { group, .. }
        | OffsetChange::Delete { group, .. }
        | OffsetChange::Group { group, .. }
        | OffsetChange::DeleteGroup { group } => Some(group),
        OffsetChange::DeleteTopic { .. } => None,
    }
}

/// The changes as one record batch (offsets assigned at append).
fn encode(changes: &[&OffsetChange]) -> Result<BytesMut, String> {
    let now = now_ms();
    let records: Vec<Record> = changes
        .iter()
        .enumerate()
        .map(|(i, c)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: -1,
            timestamp: now,
            key: Some(Bytes::from(
                serde_json::json!({ "group": group_of(c) }).to_string(),
            )),
            value: Some(Bytes::from(
                serde_json::to_vec(c).expect("offset change serializes"),
            )),
            headers: indexmap::IndexMap::<StrBytes, Option<Bytes>>::new(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        records.iter(),
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .map_err(|e| format!("cannot encode offsets: {e}"))?;
    Ok(buf)
}

impl OffsetReplicator for OffsetsLog {
    fn replicate(&self, changes: &[OffsetChange]) -> Result<(), String> {
        let broker = self.broker.upgrade().ok_or("the broker is stopping")?;
        let topic = broker
            .topic(OFFSETS_TOPIC)
            .ok_or("the offsets topic does not exist")?;
        let n = topic.partition_count();
        let mut by_partition: BTreeMap<i32, Vec<&OffsetChange>> = BTreeMap::new();
        for c in changes {
            match group_of(c) {
                Some(g) => by_partition
                    .entry(offsets_partition(g, n))
                    .or_default()
                    .push(c),
                None => {
                    // A deleted topic: in every partition this broker coordinates.
                    for p in topic.partitions().iter().filter(|p| p.is_leader()) {
                        by_partition.entry(p.index).or_default().push(c);
                    }
                }
            }
        }
        for (index, cs) in by_partition {
            let p = topic
                .partition(index)
                .filter(|p| p.is_leader())
                .ok_or_else(|| format!("this broker does not lead {OFFSETS_TOPIC}-{index}"))?;
            append_committed(&p, &cs)?;
        }
        Ok(())
    }
}

/// Appends `changes` to `p` as its leader and waits until every in-sync
/// replica has them. Blocking.
fn append_committed(p: &Arc<Partition>, changes: &[&OffsetChange]) -> Result<(), String> {
    let mut batch = encode(changes)?;
    let epoch = p.leader_epoch();
    let info = p.append(&mut batch, epoch).map_err(|e| e.message)?;
    let end = info.last_offset + 1;
    if p.flush_every_batch() {
        p.sync_to(end).map_err(|e| e.to_string())?;
    }
    let deadline = tokio::time::Instant::now() + REPLICATION_TIMEOUT;
    let handle = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| handle.block_on(p.wait_committed(end, epoch, deadline)))
        .map_err(|e| e.message)
}

/// Every change in `p`'s log, oldest first. Blocking.
fn read_changes(p: &Partition) -> Result<Vec<OffsetChange>, String> {
    let (start, end) = p.with_log(|l| (l.log_start_offset(), l.log_end_offset()));
    let mut out = Vec::new();
    let mut offset = start;
    while offset < end {
        let bytes = p
            .with_log(|l| l.read_plan_to(offset, end))
            .map_err(|e| e.to_string())?
            .read(1 << 20, true)
            .map_err(|e| e.to_string())?;
        if bytes.is_empty() {
            break;
        }
        for (at, h) in strata_log::batch::headers(&bytes) {
            let mut one = bytes.slice(at..at + h.size);
            let set = RecordBatchDecoder::decode(&mut one)
                .map_err(|e| format!("offset {}: {e}", h.base_offset))?;
            for r in set.records {
                match r
                    .value
                    .as_deref()
                    .map(serde_json::from_slice::<OffsetChange>)
                {
                    Some(Ok(c)) => out.push(c),
                    Some(Err(e)) => {
                        warn!(offset = r.offset, error = %e, "skipping an offsets record that does not parse")
                    }
                    None => {}
                }
            }
            offset = h.next_offset();
        }
    }
    Ok(out)
}

impl Broker {
    /// Rebuilds the groups of an offsets partition this broker now leads
    /// from its log. Groups of the partition answer
    /// COORDINATOR_LOAD_IN_PROGRESS until it is done.
    pub(crate) async fn load_offsets_partition(self: Arc<Self>, p: Arc<Partition>) {
        let index = p.index;
        let this = self.clone();
        let loaded = tokio::task::spawn_blocking(move || -> Result<usize, String> {
            let changes = read_changes(&p)?;
            let count = changes.len();
            let partitions = this.topic(OFFSETS_TOPIC).map_or(1, |t| t.partition_count());
            this.groups()
                .load(|g| offsets_partition(g, partitions) == index, &changes)
                .map_err(|e| e.to_string())?;
            Ok(count)
        })
        .await;
        self.loading_offsets
            .lock()
            .expect("loading lock")
            .remove(&index);
        match loaded {
            Ok(Ok(n)) => info!(
                partition = index,
                changes = n,
                "loaded the groups of {OFFSETS_TOPIC}-{index}"
            ),
            Ok(Err(e)) => {
                warn!(partition = index, error = %e, "cannot load the groups of an offsets partition")
            }
            Err(e) => warn!(partition = index, error = %e, "offsets load task failed"),
        }
    }

    /// Forgets the groups of an offsets partition this broker no longer leads.
    pub(crate) fn unload_offsets_partition(&self, index: i32) {
        let partitions = self.topic(OFFSETS_TOPIC).map_or(1, |t| t.partition_count());
        self.groups()
            .forget(|g| offsets_partition(g, partitions) == index);
    }
}

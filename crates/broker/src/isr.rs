//! The leader's side of the ISR: proposing changes, and the periodic check
//! that drops followers that stopped catching up.
//!
//! An ISR change is a compare-and-swap of the partition state in the
//! metadata store, expecting the revision this leader last saw and fenced on
//! its own registration: a deposed leader (the controller moved leadership,
//! changing the revision) or one whose registration lapsed cannot change the
//! ISR, so it can neither shrink it to itself nor commit writes alone. The
//! leader keeps using the old ISR until the change comes back in the image.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use strata_cluster::{BrokerId, Expect, Fence, MetaOp, StoreError, TopicPartition};
use tracing::{debug, info, warn};

use crate::state::{now_ms, Broker, Partition};

impl Broker {
    /// Proposes `isr` for a partition this broker leads. One proposal per
    /// partition is in flight at a time; a lost race is decided again by
    /// the next fetch or check.
    pub(crate) async fn propose_isr(self: &Arc<Self>, p: &Arc<Partition>, isr: Vec<BrokerId>) {
        if p.isr_pending.swap(true, Ordering::SeqCst) {
            return;
        }
        let outcome = self.commit_isr(p, &isr).await;
        p.isr_pending.store(false, Ordering::SeqCst);
        match outcome {
            Ok(Some(revision)) => {
                info!(topic = %p.topic, partition = p.index, ?isr, "ISR changed");
                let mut rx = self.store.subscribe();
                let _ = tokio::time::timeout(
                    Duration::from_secs(5),
                    rx.wait_for(|img| img.revision >= revision),
                )
                .await;
                let img = self.image();
                if let Err(e) = self.apply_image(&img).await {
                    warn!(error = %e, "cannot apply the cluster metadata");
                }
            }
            Ok(None) => {}
            Err(StoreError::Conflict(_)) => {
                // Not written: its joins are off (an unknown outcome, any
                // other error, keeps them until they settle or lag out).
                p.abandon_isr_joins(&isr);
                debug!(topic = %p.topic, partition = p.index, "ISR change lost a race; deciding again later");
            }
            Err(e) => {
                warn!(topic = %p.topic, partition = p.index, error = %e, "cannot change the ISR");
            }
        }
    }

    async fn commit_isr(&self, p: &Partition, isr: &[BrokerId]) -> Result<Option<i64>, StoreError> {
        let img = self.image();
        let me = self.node_id();
        let Some(cur) = img.partition(p.topic_id, p.index) else {
            return Ok(None);
        };
        if cur.value.leader != me
            || cur.value.leader_epoch != p.leader_epoch()
            || cur.value.isr.as_slice() == isr
        {
            return Ok(None);
        }
        // Only registered brokers join (a follower that fetched just before
        // its registration ended must not come back in).
        if isr
            .iter()
            .any(|b| !cur.value.isr.contains(b) && !img.can_lead(*b))
        {
            p.abandon_isr_joins(isr);
            return Ok(None);
        }
        let mut next = cur.value.clone();
        next.isr = isr.to_vec();
        next.partition_epoch += 1;
        let op = MetaOp::PutPartition {
            partition: TopicPartition {
                topic_id: p.topic_id,
                index: p.index,
            },
            state: next,
            expect: Expect::Revision(cur.revision),
        };
        let epoch = self.store.session().broker_epoch();
        self.store
            .commit(Fence::Broker(me, epoch), vec![op])
            .await
            .map(Some)
    }

    /// One pass of the ISR check over the partitions this broker leads.
    pub(crate) fn shrink_lagging_isrs(self: &Arc<Self>) {
        let lag = self.config().cluster.replica_lag_time_max_ms as i64;
        let now = now_ms();
        for t in self.topics() {
            for p in t.partitions() {
                if !p.is_leader() {
                    continue;
                }
                if let Some(isr) = p.isr_to_shrink(now, lag) {
                    warn!(topic = %p.topic, partition = p.index, ?isr, lag_ms = lag, "followers fell behind; shrinking the ISR");
                    let b = self.clone();
                    tokio::spawn(async move { b.propose_isr(&p, isr).await });
                }
            }
        }
    }
}

impl Broker {
    /// Writes every replica's high watermark checkpoint that moved. Blocking.
    pub(crate) fn checkpoint_high_watermarks(&self) {
        for t in self.topics() {
            for p in t.partitions() {
                if let Err(e) = p.with_log(|l| l.checkpoint_high_watermark()) {
                    warn!(topic = %p.topic, partition = p.index, error = %e, "cannot checkpoint the high watermark");
                }
            }
        }
    }
}

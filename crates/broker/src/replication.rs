//! The leader's bookkeeping of its followers, as pure state (Kafka's
//! `Partition` and `Replica`): each follower's log end and when it last
//! caught up, the high watermark they allow, and the ISR changes they call
//! for. I/O lives elsewhere: the Fetch handler feeds follower positions in,
//! the partition applies the high watermark to its log, and ISR changes are
//! committed to the metadata store (compare-and-swap on the partition
//! state) before they count.
//!
//! Rules (Kafka's):
//! - A follower is caught up at a fetch when it asks for the leader's log end
//!   (or at least the end the leader had at its previous fetch, which it then
//!   had caught up to at that previous time).
//! - The high watermark is the lowest log end of the ISR (the leader
//!   included), and never goes down.
//! - A follower leaves the ISR when it has not caught up for
//!   `replica.lag.time.max.ms`; a follower outside it joins once its log end
//!   reaches the high watermark and the start of the leader's current epoch.
//! - From the moment a join is proposed until the store's answer is known,
//!   the joining follower counts for the high watermark (Kafka's "maximal
//!   ISR", KIP-497): once committed it may be elected leader, so nothing may
//!   be committed that it does not have. A shrink counts only once committed,
//!   which is the same rule seen from the other side.

use std::collections::{BTreeMap, BTreeSet};

use strata_cluster::BrokerId;

/// A follower as its leader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Follower {
    /// Its log end: the offset of its latest fetch (-1: not fetched yet).
    pub log_end: i64,
    /// When it last was caught up (ms).
    pub last_caught_up_ms: i64,
    /// When it last fetched (ms), and the leader's log end at that time.
    pub last_fetch_ms: i64,
    /// The leader's log end at its previous fetch.
    pub last_fetch_leader_end: i64,
}

/// A leader's view of its followers for one leader epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderView {
    /// The leader epoch this view belongs to.
    pub leader_epoch: i32,
    /// The log end when this broker became leader (the epoch's start).
    pub epoch_start: i64,
    /// Followers by broker id (every replica but the leader).
    pub followers: BTreeMap<BrokerId, Follower>,
    /// Followers whose joining the ISR is proposed and not yet known to be
    /// committed or refused: they hold the high watermark like members.
    pub pending_joins: BTreeSet<BrokerId>,
}

impl LeaderView {
    /// A new leader's view: followers in the ISR count as caught up now, so
    /// they are not dropped before they had a chance to fetch.
    pub fn new(
        leader: BrokerId,
        leader_epoch: i32,
        epoch_start: i64,
        replicas: &[BrokerId],
        isr: &[BrokerId],
        now_ms: i64,
    ) -> Self {
        let followers = replicas
            .iter()
            .filter(|r| **r != leader)
            .map(|&r| {
                let caught_up = if isr.contains(&r) { now_ms } else { 0 };
                (
                    r,
                    Follower {
                        log_end: -1,
                        last_caught_up_ms: caught_up,
                        last_fetch_ms: 0,
                        last_fetch_leader_end: -1,
                    },
                )
            })
            .collect();
        Self {
            leader_epoch,
            epoch_start,
            followers,
            pending_joins: BTreeSet::new(),
        }
    }

    /// Adds followers a reassignment brought and forgets removed ones.
    pub fn set_replicas(&mut self, leader: BrokerId, replicas: &[BrokerId]) {
        self.followers.retain(|b, _| replicas.contains(b));
        for &r in replicas {
            if r != leader {
                self.followers.entry(r).or_insert(Follower {
                    log_end: -1,
                    last_caught_up_ms: 0,
                    last_fetch_ms: 0,
                    last_fetch_leader_end: -1,
                });
            }
        }
    }

    /// Records a fetch by `follower` at `fetch_offset` while the leader's log
    /// ends at `leader_end`. Returns whether the follower is known.
    pub fn record_fetch(
        &mut self,
        follower: BrokerId,
        fetch_offset: i64,
        leader_end: i64,
        now_ms: i64,
    ) -> bool {
        let Some(f) = self.followers.get_mut(&follower) else {
            return false;
        };
        if fetch_offset >= leader_end {
            f.last_caught_up_ms = f.last_caught_up_ms.max(now_ms);
        } else if f.last_fetch_leader_end >= 0 && fetch_offset >= f.last_fetch_leader_end {
            f.last_caught_up_ms = f.last_caught_up_ms.max(f.last_fetch_ms);
        }
        f.log_end = fetch_offset;
        f.last_fetch_leader_end = leader_end;
        f.last_fetch_ms = now_ms;
        true
    }

    /// The high watermark the ISR allows: the lowest log end among the
    /// leader (`leader_end`), the ISR's followers and those joining it, never
    /// below `current`. A follower of the ISR that has not fetched yet holds
    /// it where it is.
    pub fn high_watermark(&self, leader_end: i64, isr: &[BrokerId], current: i64) -> i64 {
        let mut hw = leader_end;
        for (id, f) in &self.followers {
            if isr.contains(id) || self.pending_joins.contains(id) {
                hw = hw.min(f.log_end.max(0));
            }
        }
        hw.max(current).min(leader_end)
    }

    /// The ISR without followers that have not caught up for `lag_ms`, if
    /// any must go. The leader always stays.
    pub fn shrink(
        &self,
        leader: BrokerId,
        isr: &[BrokerId],
        now_ms: i64,
        lag_ms: i64,
    ) -> Option<Vec<BrokerId>> {
        let keep: Vec<BrokerId> = isr
            .iter()
            .copied()
            .filter(|b| {
                *b == leader
                    || self
                        .followers
                        .get(b)
                        .is_some_and(|f| now_ms - f.last_caught_up_ms <= lag_ms)
            })
            .collect();
        (keep.len() != isr.len()).then_some(keep)
    }

    /// The ISR with `follower` (which just fetched) added, if it is outside
    /// and has caught up with the high watermark and this epoch's start. The
    /// follower counts as joining from now on (see the module's rules).
    pub fn expand(
        &mut self,
        follower: BrokerId,
        isr: &[BrokerId],
        hw: i64,
    ) -> Option<Vec<BrokerId>> {
        let f = self.followers.get(&follower)?;
        let joins = !isr.contains(&follower)
            && f.log_end >= 0
            && f.log_end >= hw
            && f.log_end >= self.epoch_start;
        joins.then(|| {
            self.pending_joins.insert(follower);
            let mut next = isr.to_vec();
            next.push(follower);
            next
        })
    }

    /// The committed ISR is `isr`: joins it holds are done.
    pub fn settle_joins(&mut self, isr: &[BrokerId]) {
        self.pending_joins.retain(|b| !isr.contains(b));
    }

    /// A proposed ISR was refused by the store (it was not written): its
    /// joins are off.
    pub fn abandon_joins(&mut self, proposed: &[BrokerId]) {
        self.pending_joins.retain(|b| !proposed.contains(b));
    }

    /// Drops joins of followers that stopped catching up (`lag_ms`), so one
    /// whose proposal's fate is unknown cannot hold the high watermark for
    /// ever; if the join did commit, the ISR check removes it from the ISR.
    pub fn expire_joins(&mut self, now_ms: i64, lag_ms: i64) {
        let followers = &self.followers;
        self.pending_joins.retain(|b| {
            followers
                .get(b)
                .is_some_and(|f| now_ms - f.last_caught_up_ms <= lag_ms)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(isr: &[BrokerId]) -> LeaderView {
        LeaderView::new(0, 5, 100, &[0, 1, 2], isr, 1_000)
    }

    #[test]
    fn the_high_watermark_is_the_isrs_lowest_log_end_and_never_falls() {
        let mut v = view(&[0, 1, 2]);
        assert_eq!(
            v.high_watermark(150, &[0, 1, 2], 100),
            100,
            "followers not heard from hold it"
        );
        v.record_fetch(1, 140, 150, 1_010);
        v.record_fetch(2, 120, 150, 1_010);
        assert_eq!(v.high_watermark(150, &[0, 1, 2], 100), 120);
        assert_eq!(
            v.high_watermark(150, &[0, 1], 100),
            140,
            "only the ISR counts"
        );
        v.record_fetch(2, 110, 150, 1_020);
        assert_eq!(v.high_watermark(150, &[0, 1, 2], 120), 120, "never down");
        assert_eq!(
            v.high_watermark(150, &[0], 120),
            150,
            "alone: the leader's end"
        );
    }

    #[test]
    fn followers_that_stop_catching_up_leave_and_caught_up_ones_join() {
        let mut v = view(&[0, 1, 2]);
        // Follower 1 keeps up; follower 2 fetches but stays behind.
        for t in 0..40 {
            let now = 1_000 + t * 1_000;
            v.record_fetch(1, 150, 150, now);
            v.record_fetch(2, 120, 150, now);
        }
        assert_eq!(v.shrink(0, &[0, 1, 2], 40_000, 30_000), Some(vec![0, 1]));
        assert_eq!(
            v.shrink(0, &[0, 1, 2], 20_000, 30_000),
            None,
            "within the lag"
        );
        assert_eq!(v.expand(2, &[0, 1], 150), None, "below the high watermark");
        v.record_fetch(2, 150, 150, 41_000);
        assert_eq!(v.expand(2, &[0, 1], 150), Some(vec![0, 1, 2]));
        assert_eq!(v.expand(1, &[0, 1], 150), None, "already in");
        assert_eq!(v.shrink(0, &[0, 1, 2], 41_500, 30_000), None);
    }

    #[test]
    fn catching_up_with_an_earlier_leader_end_counts_from_that_fetch() {
        let mut v = view(&[0, 1]);
        v.record_fetch(1, 100, 200, 5_000);
        // At 9_000 it asks for 200: it had caught up to what the leader had at 5_000.
        v.record_fetch(1, 200, 300, 9_000);
        assert_eq!(v.followers[&1].last_caught_up_ms, 5_000);
    }

    #[test]
    fn a_joining_follower_holds_the_high_watermark_until_its_join_is_settled() {
        // Follower 2 restarted and asks for 290 while the ISR [0, 1] is at 290.
        let mut v = view(&[0, 1]);
        v.record_fetch(1, 290, 290, 1_000);
        v.record_fetch(2, 290, 290, 1_000);
        assert_eq!(v.expand(2, &[0, 1], 290), Some(vec![0, 1, 2]));
        // The leader appends 290 and 291; follower 1 copies them before the
        // join is committed. The high watermark stays at 290: once the join
        // commits, follower 2 may be elected, and it has only 290.
        v.record_fetch(1, 292, 292, 1_100);
        assert_eq!(v.high_watermark(292, &[0, 1], 290), 290);
        v.record_fetch(2, 292, 292, 1_200);
        assert_eq!(v.high_watermark(292, &[0, 1], 290), 292);
        // Committed: the ISR itself holds it now.
        v.settle_joins(&[0, 1, 2]);
        assert!(v.pending_joins.is_empty());
        // A refused proposal releases the high watermark; so does a joiner
        // that stopped fetching while its proposal's fate was unknown.
        assert_eq!(v.expand(2, &[0, 1], 292), Some(vec![0, 1, 2]));
        v.abandon_joins(&[0, 1, 2]);
        assert!(v.pending_joins.is_empty());
        assert_eq!(v.expand(2, &[0, 1], 292), Some(vec![0, 1, 2]));
        v.expire_joins(1_200 + 30_000, 30_000);
        assert_eq!(v.pending_joins.len(), 1, "within the lag");
        v.expire_joins(1_200 + 30_001, 30_000);
        assert!(v.pending_joins.is_empty());
    }

    #[test]
    fn a_follower_must_reach_the_epoch_start_to_join() {
        let mut v = LeaderView::new(0, 5, 100, &[0, 1], &[0], 0);
        v.record_fetch(1, 90, 100, 10);
        assert_eq!(v.expand(1, &[0], 80), None, "below the epoch's start");
        v.record_fetch(1, 100, 100, 20);
        assert_eq!(v.expand(1, &[0], 80), Some(vec![0, 1]));
    }
}

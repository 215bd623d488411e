//! Pipelined appends and batched fsyncs.
//!
//! A connection's reader does not wait for its produce requests to reach the
//! log: it queues each partition's batch on that partition's [`WorkQueue`]
//! and goes on reading. Queues keep the order batches were queued in, which
//! for one connection is request order, so an idempotent producer's
//! in-flight batches land in sequence. A queue is drained by at most one
//! blocking task at a time; the task that queues onto an idle queue claims it
//! and drains it until it is empty, taking every batch queued meanwhile in
//! one step. Under load a single thread hand-off therefore carries many
//! appends, and different partitions are appended in parallel by different
//! tasks.
//!
//! fsyncs (flush policy `every-batch`) have queues of their own, drained the
//! same way: a task takes every waiting request of a partition and answers
//! them all with one fsync to the highest offset asked for. Appends and
//! fsyncs run on different tasks and an fsync does not hold the log, so
//! neither waits for the other; waiting for followers (acks=all) happens
//! after both, in the reply (see `handlers::produce`).

use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use strata_log::AppendInfo;
use tokio::sync::oneshot;
use tracing::error;

use crate::error::ApiError;
use crate::state::Partition;

/// Work waiting for one partition's log (batches to append, or fsyncs), and
/// whether a task drains it.
#[derive(Debug)]
pub(crate) struct WorkQueue<T> {
    state: Mutex<QueueState<T>>,
}

#[derive(Debug)]
struct QueueState<T> {
    jobs: Vec<T>,
    claimed: bool,
}

impl<T> Default for WorkQueue<T> {
    fn default() -> Self {
        Self {
            state: Mutex::new(QueueState {
                jobs: Vec::new(),
                claimed: false,
            }),
        }
    }
}

impl<T> WorkQueue<T> {
    /// Queues `job`. True when the caller claimed the queue and must drain
    /// it: nobody else was.
    pub(crate) fn push(&self, job: T) -> bool {
        let mut s = self.state.lock().expect("append queue lock");
        s.jobs.push(job);
        !std::mem::replace(&mut s.claimed, true)
    }

    /// For the claimant: every queued job, in queue order. An empty answer
    /// releases the claim in the same step, so a job queued afterwards is
    /// claimed by whoever queues it.
    pub(crate) fn take(&self) -> Vec<T> {
        let mut s = self.state.lock().expect("append queue lock");
        debug_assert!(s.claimed, "only the claimant drains");
        if s.jobs.is_empty() {
            s.claimed = false;
        }
        std::mem::take(&mut s.jobs)
    }
}

/// One produce batch for one partition.
#[derive(Debug)]
pub(crate) struct Job {
    records: BytesMut,
    leader_epoch: i32,
    done: oneshot::Sender<Result<AppendInfo, ApiError>>,
}

/// The outcome of a queued append.
pub(crate) type Pending = oneshot::Receiver<Result<AppendInfo, ApiError>>;

/// A request to make a partition durable below `end`.
#[derive(Debug)]
pub(crate) struct SyncJob {
    end: i64,
    done: oneshot::Sender<Result<(), ApiError>>,
}

/// One request's work being queued: each item goes on its partition's queue
/// at once, in the order queued; [`Submission::start`] then starts one
/// blocking task for the queues nobody was draining.
#[derive(Debug)]
pub(crate) struct Submission {
    claimed: Vec<Arc<Partition>>,
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Appends,
    Syncs,
}

impl Submission {
    /// Appends to queue.
    pub(crate) fn appends() -> Self {
        Self {
            claimed: Vec::new(),
            kind: Kind::Appends,
        }
    }

    /// fsyncs to queue.
    pub(crate) fn syncs() -> Self {
        Self {
            claimed: Vec::new(),
            kind: Kind::Syncs,
        }
    }

    /// Queues `records` for `part`, to be appended as the leader of
    /// `leader_epoch`. Returns where the outcome arrives.
    pub(crate) fn append(
        &mut self,
        part: &Arc<Partition>,
        records: BytesMut,
        leader_epoch: i32,
    ) -> Pending {
        debug_assert_eq!(self.kind, Kind::Appends);
        let (done, rx) = oneshot::channel();
        let job = Job {
            records,
            leader_epoch,
            done,
        };
        if part.appends.push(job) {
            self.claimed.push(part.clone());
        }
        rx
    }

    /// Queues an fsync of `part` covering every offset below `end`.
    pub(crate) fn sync(
        &mut self,
        part: &Arc<Partition>,
        end: i64,
    ) -> oneshot::Receiver<Result<(), ApiError>> {
        debug_assert_eq!(self.kind, Kind::Syncs);
        let (done, rx) = oneshot::channel();
        if part.syncs.push(SyncJob { end, done }) {
            self.claimed.push(part.clone());
        }
        rx
    }

    /// Drains the queues this submission claimed, on a blocking thread.
    pub(crate) fn start(self) {
        if !self.claimed.is_empty() {
            let parts = self.claimed;
            match self.kind {
                Kind::Appends => {
                    tokio::task::spawn_blocking(move || drain_appends(parts));
                }
                // fsyncs of different files proceed in parallel on the disk:
                // one task per partition, so none waits for another's.
                Kind::Syncs => {
                    for part in parts {
                        tokio::task::spawn_blocking(move || drain_syncs(vec![part]));
                    }
                }
            }
        }
    }
}

/// Runs `step` on each of `parts`' queued work, a round at a time so no
/// partition waits for another's stream of work, until every queue is empty
/// (and released).
fn drain_rounds<T>(
    mut parts: Vec<Arc<Partition>>,
    queue: impl Fn(&Partition) -> &WorkQueue<T>,
    step: impl Fn(&Partition, Vec<T>),
) {
    while !parts.is_empty() {
        parts.retain(|part| {
            let jobs = queue(part).take();
            if jobs.is_empty() {
                return false;
            }
            step(part, jobs);
            true
        });
    }
}

/// Answers every waiting fsync of a partition with one.
fn drain_syncs(parts: Vec<Arc<Partition>>) {
    drain_rounds(
        parts,
        |p| &p.syncs,
        |part, jobs| {
            let end = jobs.iter().map(|j| j.end).max().unwrap_or(0);
            let outcome = part.sync_to(end).map_err(ApiError::storage);
            for job in jobs {
                let _ = job.done.send(outcome.clone());
            }
        },
    );
}

/// Appends every queued batch.
fn drain_appends(parts: Vec<Arc<Partition>>) {
    drain_rounds(
        parts,
        |p| &p.appends,
        |part, jobs| {
            for job in jobs {
                let Job {
                    mut records,
                    leader_epoch,
                    done,
                } = job;
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    part.append(&mut records, leader_epoch)
                }))
                .unwrap_or_else(|_| {
                    error!(topic = %part.topic, partition = part.index, "append panicked");
                    Err(ApiError::new(
                        kafka_protocol::ResponseError::UnknownServerError,
                        "the append failed unexpectedly",
                    ))
                });
                // The request may be gone (its connection closed); the
                // records are in the log either way.
                let _ = done.send(outcome);
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_pusher_claims_and_an_empty_take_releases() {
        let q = WorkQueue::default();
        assert!(q.push(1), "an idle queue is claimed by its first job");
        assert!(!q.push(2), "a claimed queue is not claimed twice");
        assert_eq!(q.take(), vec![1, 2], "jobs come out in queue order");
        assert!(!q.push(3), "still claimed until a take finds nothing");
        assert_eq!(q.take(), vec![3]);
        assert_eq!(q.take(), Vec::<i32>::new());
        assert!(q.push(4), "released: the next job claims it again");
    }

    #[test]
    fn concurrent_pushers_lose_nothing_and_keep_each_pushers_order() {
        let q = Arc::new(WorkQueue::default());
        let pushers: Vec<_> = (0..4)
            .map(|t| {
                let q = q.clone();
                std::thread::spawn(move || {
                    let mut claims = 0;
                    for i in 0..1000 {
                        claims += usize::from(q.push((t, i)));
                    }
                    claims
                })
            })
            .collect();
        let mut seen = Vec::new();
        let mut claims = 0;
        for p in pushers {
            claims += p.join().unwrap();
        }
        assert_eq!(claims, 1, "nobody drained, so one claim");
        loop {
            let jobs = q.take();
            if jobs.is_empty() {
                break;
            }
            seen.extend(jobs);
        }
        assert_eq!(seen.len(), 4000);
        for t in 0..4 {
            let mine: Vec<i32> = seen.iter().filter(|j| j.0 == t).map(|j| j.1).collect();
            assert_eq!(mine, (0..1000).collect::<Vec<_>>());
        }
    }
}

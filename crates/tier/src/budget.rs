//! Budgets for background work: byte rates, and threads that yield the CPU
//! to the request path.
//!
//! A [`ByteRate`] hands out transmission time: each reservation of `n` bytes
//! starts when the previous one's time is used up, so over any stretch the
//! bytes moved stay at the rate, whether the caller is async (uploads, cold
//! reads) or a blocking thread (the lake's encoder). The arithmetic is the
//! pure [`Schedule`]; the waiting is at the edge.
//!
//! [`spawn_background`] runs CPU-heavy work (the lake's decoding and Parquet
//! encoding) on a thread of its own with a lower scheduling priority (nice
//! 10 on Linux), so on a busy machine the kernel runs produce and fetch
//! first.

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::debug;

/// When reservations start: the pure part of a rate limit.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    bytes_per_second: u64,
    next_free: Instant,
}

impl Schedule {
    /// A schedule at `bytes_per_second` (0: unlimited).
    pub fn new(bytes_per_second: u64, now: Instant) -> Self {
        Self {
            bytes_per_second,
            next_free: now,
        }
    }

    /// Reserves time for `bytes` at `now`; returns when the caller may
    /// proceed. An idle budget does not bank time: a reservation never starts
    /// before `now`.
    pub fn reserve(&mut self, bytes: u64, now: Instant) -> Instant {
        if self.bytes_per_second == 0 {
            return now;
        }
        let start = self.next_free.max(now);
        self.next_free =
            start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_second as f64);
        start
    }
}

/// A byte rate shared by the tasks and threads that draw on it.
#[derive(Debug)]
pub struct ByteRate {
    schedule: Mutex<Schedule>,
}

impl ByteRate {
    /// A budget of `bytes_per_second` (0: unlimited).
    pub fn new(bytes_per_second: u64) -> Self {
        Self {
            schedule: Mutex::new(Schedule::new(bytes_per_second, Instant::now())),
        }
    }

    fn reserve(&self, bytes: u64) -> Instant {
        self.schedule
            .lock()
            .expect("byte rate lock")
            .reserve(bytes, Instant::now())
    }

    /// Waits (async) until `bytes` fit the rate.
    pub async fn acquire(&self, bytes: u64) {
        let start = self.reserve(bytes);
        if start > Instant::now() {
            tokio::time::sleep_until(start.into()).await;
        }
    }

    /// Waits (blocking the thread) until `bytes` fit the rate.
    pub fn acquire_blocking(&self, bytes: u64) {
        let wait = self
            .reserve(bytes)
            .saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

/// How much lower background threads run than the broker's own threads
/// (nice levels; the kernel's range ends at 19).
const BACKGROUND_NICE: i32 = 10;

/// Starts `f` at once on a new thread with a lower scheduling priority; the
/// future resolves to its result. If the priority cannot be lowered (not
/// Linux, or forbidden) the work runs at normal priority.
pub fn spawn_background<T, F>(name: &str, f: F) -> impl Future<Output = std::io::Result<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let started = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            lower_priority();
            let _ = tx.send(f());
        });
    async move {
        started?;
        rx.await
            .map_err(|_| std::io::Error::other("background work panicked"))
    }
}

/// Lowers the calling thread's priority (Linux applies `setpriority` to one
/// thread when given its id).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // Relative to the thread's own (inherited) priority, so a broker
        // started with `nice` keeps its background work below itself.
        let tid = rustix::thread::gettid();
        let lowered = rustix::process::getpriority_process(Some(tid)).and_then(|own| {
            rustix::process::setpriority_process(Some(tid), (own + BACKGROUND_NICE).min(19))
        });
        if let Err(e) = lowered {
            debug!(error = %e, "cannot lower a background thread's priority");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_queue_at_the_rate() {
        let t0 = Instant::now();
        let mut s = Schedule::new(1000, t0);
        assert_eq!(s.reserve(500, t0), t0, "the first starts at once");
        assert_eq!(s.reserve(500, t0), t0 + Duration::from_millis(500));
        assert_eq!(s.reserve(1000, t0), t0 + Duration::from_secs(1));
        // 2,000 bytes reserved so far: the next starts 2 s in.
        assert_eq!(
            s.reserve(1, t0 + Duration::from_millis(10)),
            t0 + Duration::from_secs(2)
        );
    }

    #[test]
    fn an_idle_budget_banks_nothing() {
        let t0 = Instant::now();
        let mut s = Schedule::new(1000, t0);
        s.reserve(100, t0);
        let later = t0 + Duration::from_secs(60);
        assert_eq!(s.reserve(1000, later), later);
        assert_eq!(
            s.reserve(1000, later),
            later + Duration::from_secs(1),
            "a minute idle does not allow a burst"
        );
    }

    #[test]
    fn zero_is_unlimited() {
        let t0 = Instant::now();
        let mut s = Schedule::new(0, t0);
        for _ in 0..3 {
            assert_eq!(s.reserve(u64::MAX / 4, t0), t0);
        }
    }

    #[tokio::test]
    async fn background_work_starts_before_it_is_awaited() {
        let (tx, rx) = std::sync::mpsc::channel();
        let work = spawn_background("strata-test-bg", move || tx.send(1).unwrap());
        // The work runs even though nobody has polled `work` yet.
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(1));
        work.await.unwrap();
    }

    #[tokio::test]
    async fn background_work_returns_its_result() {
        let v = spawn_background("strata-test-bg", || 6 * 7).await.unwrap();
        assert_eq!(v, 42);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn background_work_runs_at_a_lower_priority_than_its_caller() {
        let own = || rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
        let caller = own();
        let worker = spawn_background("strata-test-bg", own).await.unwrap();
        assert_eq!(worker, (caller + BACKGROUND_NICE).min(19));
        assert_eq!(own(), caller, "the caller's priority is untouched");
    }
}

//! The moving-average rate-limited pool: a pool that holds a target rate of job starts.
//!
//! # The throttle
//!
//! amboy's `NewMovingAverageRateLimitedWorkers` meant to run `target` jobs per `period` by
//! sleeping between jobs for a time derived from an exponentially weighted moving average of the
//! jobs' run time; its workers in fact slept for each job's own run time, so the pool did not
//! hold any rate (decision 5). Sleeps computed per worker cannot hold a rate for the whole pool
//! anyway: the workers start together, an idle worker's sleep is wasted, and run times vary.
//!
//! This pool paces job *starts* on one schedule shared by all its workers:
//!
//! * The spacing between two starts is `period / target` (rounded up to the nanosecond).
//! * The schedule keeps the earliest time the next start may happen, `next`. A worker that is
//!   ready for a job books a slot: `slot = max(next, now)`, and `next = slot + spacing`. It
//!   sleeps until its slot, then takes a job from the queue and runs it. Booking is one short
//!   critical section; no lock is held while sleeping.
//! * Slots are distinct and at least one spacing apart, so no window of `period` ever holds
//!   more than `target` starts, however many workers the pool has. Because a slot is computed
//!   from the previous slot rather than from when a worker woke up, late wake-ups do not push
//!   the schedule back: while jobs are waiting and workers are free, the long-run start rate
//!   is exactly `target / period`.
//! * Booking before taking the job leaves the waiting jobs pending in the queue rather than
//!   dispatched to a sleeping worker, locked and reported as running. The price is a stale slot: when the queue was empty, each worker waits in
//!   `next` holding a slot that has passed, and a burst of jobs would start together. So a job
//!   that arrives more than one spacing after its slot books a fresh slot before it runs.
//! * When the jobs' run time, not the schedule, is the limit (all workers busy), `next` falls
//!   behind `now` and the pool runs as fast as its workers allow; it never saves up unused
//!   slots to catch up later.
//!
//! The moving average of the jobs' run time (weight 2/11 for each new run, as a 10-sample
//! exponentially weighted moving average) is kept for observation: a pool of `size` workers
//! can reach its target only if `size / average_run_time` is at least `target / period`.

use std::sync::Arc;
use std::time::Duration;

use amboy_core::{Error, Result};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::pool::{Pace, Pool};

/// A fixed pool of abortable workers that starts at most `target` jobs per `period`, spread
/// evenly, across the whole pool (amboy's `NewMovingAverageRateLimitedWorkers`, with amboy's
/// intent implemented).
///
/// The workers share one schedule of start slots [`interval`](Self::interval) `= period /
/// target` apart. A free worker books the next slot (never one in the past), sleeps until it,
/// then takes a job; a job that arrives long after its worker's slot (the queue was empty)
/// books a fresh slot first, so that a burst after a quiet time is spread out too. No window
/// of `period` holds more than `target` starts, and while jobs are waiting and workers free the
/// long-run rate is the target. amboy's moving average of the jobs' run time is kept as
/// [`average_run_time`](Self::average_run_time): the pool reaches its target only if
/// `size / average_run_time ≥ target / period`.
///
/// Running jobs can be aborted as in [`AbortablePool`](crate::AbortablePool); closing the pool
/// cancels them and interrupts the workers' waits.
#[derive(Debug)]
pub struct MovingAverageRateLimitedWorkers {
    pool: Pool,
    target: usize,
    period: Duration,
}

impl MovingAverageRateLimitedWorkers {
    /// A pool of `size` workers starting at most `target` jobs per `period`.
    ///
    /// Fails if `target` or `size` is 0 or `period` is less than a millisecond; the message
    /// lists every problem, as amboy's does.
    pub fn new(size: usize, target: usize, period: Duration) -> Result<Arc<Self>> {
        let mut problems = Vec::new();
        if target < 1 {
            problems.push("cannot specify a target number of jobs less than 1");
        }
        if size < 1 {
            problems.push("cannot specify a pool size less than 1");
        }
        if period < Duration::from_millis(1) {
            problems.push("cannot specify a scheduling period less than a millisecond");
        }
        if !problems.is_empty() {
            return Err(Error::invalid(problems.join("; ")));
        }
        let throttle = Throttle::new(spacing(period, target));
        Ok(Arc::new(MovingAverageRateLimitedWorkers {
            pool: Pool::new(size, Pace::Throttled(throttle)).abortable(),
            target,
            period,
        }))
    }

    /// The number of workers.
    pub fn size(&self) -> usize {
        self.pool.size()
    }

    /// The number of job starts allowed per [`period`](Self::period).
    pub fn target(&self) -> usize {
        self.target
    }

    /// The period over which [`target`](Self::target) jobs may start.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// The time between two job starts: `period / target`, rounded up to the nanosecond.
    pub fn interval(&self) -> Duration {
        self.throttle().spacing
    }

    /// The exponentially weighted moving average of the jobs' run time, once a job has run.
    pub fn average_run_time(&self) -> Option<Duration> {
        *self.throttle().average.lock()
    }

    fn throttle(&self) -> &Throttle {
        self.pool.throttle().expect("the pool is throttled")
    }
}

/// `period / target`, rounded up so that `target` spacings never fit in less than `period`.
fn spacing(period: Duration, target: usize) -> Duration {
    let nanos = period.as_nanos().div_ceil(target as u128);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// The shared start schedule of a throttled pool, and the moving average of its jobs' run time.
#[derive(Debug)]
pub(crate) struct Throttle {
    spacing: Duration,
    /// The earliest time the next job may start.
    next: Mutex<Option<Instant>>,
    average: Mutex<Option<Duration>>,
}

/// The weight of a new sample in the moving average: 2 / (N + 1) for N = 10 samples.
const WEIGHT: f64 = 2.0 / 11.0;

impl Throttle {
    fn new(spacing: Duration) -> Self {
        Throttle {
            spacing,
            next: Mutex::new(None),
            average: Mutex::new(None),
        }
    }

    /// Books the next start slot.
    pub(crate) fn reserve(&self) -> Instant {
        let now = Instant::now();
        let mut next = self.next.lock();
        let slot = next.map_or(now, |next| next.max(now));
        *next = Some(slot + self.spacing);
        slot
    }

    /// Whether a job taken now is too late for `slot`, which then no longer paces it.
    pub(crate) fn is_stale(&self, slot: Instant) -> bool {
        Instant::now() > slot + self.spacing
    }

    /// Adds a job's run time to the moving average.
    pub(crate) fn record(&self, run_time: Duration) {
        let mut average = self.average.lock();
        *average = Some(match *average {
            None => run_time,
            Some(average) => {
                let average = average.as_secs_f64();
                Duration::from_secs_f64(average + WEIGHT * (run_time.as_secs_f64() - average))
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spacing_rounds_up() {
        assert_eq!(
            spacing(Duration::from_secs(1), 100),
            Duration::from_millis(10)
        );
        assert_eq!(
            spacing(Duration::from_nanos(10), 3),
            Duration::from_nanos(4)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn slots_are_one_spacing_apart_and_never_in_the_past() {
        let throttle = Throttle::new(Duration::from_millis(10));
        let start = Instant::now();
        let slots: Vec<Instant> = (0..3).map(|_| throttle.reserve()).collect();
        assert_eq!(
            slots,
            vec![
                start,
                start + Duration::from_millis(10),
                start + Duration::from_millis(20)
            ]
        );
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(throttle.is_stale(slots[2]));
        let now = Instant::now();
        assert_eq!(throttle.reserve(), now, "no credit saved up while idle");
        assert_eq!(throttle.reserve(), now + Duration::from_millis(10));
    }

    #[test]
    fn average_favours_recent_runs() {
        let throttle = Throttle::new(Duration::from_millis(1));
        throttle.record(Duration::from_millis(100));
        assert_eq!(*throttle.average.lock(), Some(Duration::from_millis(100)));
        for _ in 0..50 {
            throttle.record(Duration::from_millis(10));
        }
        let average = throttle.average.lock().unwrap();
        assert!(
            average >= Duration::from_millis(10) && average < Duration::from_millis(11),
            "{average:?}"
        );
    }
}

crate::pool::runner_over_pool!(MovingAverageRateLimitedWorkers, abortable);

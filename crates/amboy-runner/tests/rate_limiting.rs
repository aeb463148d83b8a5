//! amboy's `rate_limiting_test.go` for the two rate-limited pools (constructor validation), and
//! the pacing itself: the simple pool's wait after every job, and decision 5, the
//! moving-average pool holding its target rate across the whole pool.
//!
//! Pacing tests run in paused time, where the schedule is exact, except the one that checks the
//! target rate in real time.

mod support;

use std::time::Duration;

use amboy_core::{Error, Queue, Runner};
use amboy_runner::{MovingAverageRateLimitedWorkers, RateLimitedWorkers};
use support::*;
use tokio::time::{Instant, timeout};

const MS: Duration = Duration::from_millis(1);

fn invalid_message(error: Error) -> String {
    assert!(matches!(error, Error::Invalid(_)), "{error:?}");
    error.to_string()
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

#[test]
fn rate_limited_workers_validate_every_argument_at_once() {
    assert_eq!(
        invalid_message(RateLimitedWorkers::new(0, Duration::ZERO).unwrap_err()),
        "invalid: cannot specify a pool size less than 1; \
         cannot specify a sleep interval less than a millisecond"
    );
    assert_eq!(
        invalid_message(RateLimitedWorkers::new(0, MS).unwrap_err()),
        "invalid: cannot specify a pool size less than 1"
    );
    assert_eq!(
        invalid_message(RateLimitedWorkers::new(2, Duration::from_micros(999)).unwrap_err()),
        "invalid: cannot specify a sleep interval less than a millisecond"
    );
    let pool = RateLimitedWorkers::new(2, MS).expect("the smallest valid pool");
    assert_eq!((pool.size(), pool.interval()), (2, MS));
    assert!(!pool.started());
}

#[test]
fn moving_average_workers_validate_every_argument_at_once() {
    assert_eq!(
        invalid_message(MovingAverageRateLimitedWorkers::new(0, 0, Duration::ZERO).unwrap_err()),
        "invalid: cannot specify a target number of jobs less than 1; \
         cannot specify a pool size less than 1; \
         cannot specify a scheduling period less than a millisecond"
    );
    assert_eq!(
        invalid_message(MovingAverageRateLimitedWorkers::new(1, 0, MS).unwrap_err()),
        "invalid: cannot specify a target number of jobs less than 1"
    );
    assert_eq!(
        invalid_message(MovingAverageRateLimitedWorkers::new(0, 1, MS).unwrap_err()),
        "invalid: cannot specify a pool size less than 1"
    );
    assert_eq!(
        invalid_message(
            MovingAverageRateLimitedWorkers::new(1, 1, Duration::from_micros(999)).unwrap_err()
        ),
        "invalid: cannot specify a scheduling period less than a millisecond"
    );
    let pool = MovingAverageRateLimitedWorkers::new(4, 100, Duration::from_secs(1)).unwrap();
    assert_eq!(
        (pool.size(), pool.target(), pool.period()),
        (4, 100, Duration::from_secs(1))
    );
    assert_eq!(
        pool.interval(),
        Duration::from_millis(10),
        "period / target"
    );
    assert_eq!(pool.average_run_time(), None, "no job ran yet");
    assert!(!pool.started());
}

// ---------------------------------------------------------------------------------------------
// The simple rate-limited pool
// ---------------------------------------------------------------------------------------------

/// Consecutive differences of sorted times.
fn gaps(times: &[Instant]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

#[tokio::test(start_paused = true)]
async fn rate_limited_worker_waits_the_interval_after_every_job() {
    let key = "simple-interval";
    let interval = Duration::from_millis(50);
    let runner = RateLimitedWorkers::new(1, interval).unwrap();
    let queue = queue_with(runner.clone(), 16).await;
    run_counted(&queue, key, "job", 4).await;

    let starts = observed(key).start_times();
    assert_eq!(starts.len(), 4);
    for gap in gaps(&starts) {
        assert!(
            gap >= interval && gap < interval + 10 * MS,
            "one interval between jobs: {gap:?}"
        );
    }
    queue.close().await;
}

#[tokio::test(start_paused = true)]
async fn rate_limited_workers_wait_each_on_their_own() {
    let key = "simple-two-workers";
    let interval = Duration::from_millis(50);
    let runner = RateLimitedWorkers::new(2, interval).unwrap();
    let queue = queue_with(runner.clone(), 16).await;
    let begin = Instant::now();
    run_counted(&queue, key, "job", 6).await;

    // Two workers: two jobs per interval.
    let starts = observed(key).start_times();
    for (i, start) in starts.iter().enumerate() {
        let round = u32::try_from(i / 2).unwrap();
        let since = *start - begin;
        assert!(
            since >= interval * round && since < interval * round + 10 * MS,
            "job {i} started after {since:?}"
        );
    }
    queue.close().await;
}

#[tokio::test(start_paused = true)]
async fn closing_interrupts_the_wait() {
    let key = "simple-close";
    let runner = RateLimitedWorkers::new(1, Duration::from_secs(3_600)).unwrap();
    let queue = queue_with(runner.clone(), 16).await;
    run_counted(&queue, key, "job", 1).await;
    // The worker now waits an hour; closing must not.
    timeout(SOON, runner.close())
        .await
        .expect("close does not wait for the interval");
    assert!(!runner.started());
    queue.close().await;
}

// ---------------------------------------------------------------------------------------------
// The moving-average pool (decision 5)
// ---------------------------------------------------------------------------------------------

/// Checks that the `k`-th start (in time order) came at least `k` intervals after `begin`.
fn assert_spaced(starts: &[Instant], begin: Instant, interval: Duration) {
    for (k, start) in starts.iter().enumerate() {
        let since = *start - begin;
        assert!(
            since >= interval * u32::try_from(k).unwrap(),
            "start {k} came {since:?} after the beginning: the pool ran ahead of its rate"
        );
    }
}

/// Decision 5, in real time: 20 jobs at 100 jobs per second through 4 workers take at least
/// 19 intervals of 10 ms, however fast the jobs are; amboy's pool (which slept each job's own,
/// negligible run time) or a throttle per worker (4 × the rate) would take far less.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_average_pool_holds_the_target_rate_across_the_pool() {
    let key = "average-real-time";
    let runner = MovingAverageRateLimitedWorkers::new(4, 100, Duration::from_secs(1)).unwrap();
    let interval = runner.interval();
    let begin = Instant::now();
    let queue = queue_with(runner.clone(), 64).await;
    run_counted(&queue, key, "job", 20).await;
    let elapsed = begin.elapsed();

    let starts = observed(key).start_times();
    assert_eq!(starts.len(), 20);
    assert_spaced(&starts, begin, interval);
    assert!(elapsed >= 19 * interval, "{elapsed:?}");
    // Generous: the schedule itself needs 190 ms; this only catches a pool far below its rate.
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    assert!(runner.average_run_time().is_some());
    queue.close().await;
}

/// In paused time the schedule is exact: one start per interval, no faster, no slower.
#[tokio::test(start_paused = true)]
async fn moving_average_pool_starts_one_job_per_interval() {
    let key = "average-exact";
    let runner = MovingAverageRateLimitedWorkers::new(4, 100, Duration::from_secs(1)).unwrap();
    let interval = runner.interval();
    let begin = Instant::now();
    let queue = queue_with(runner.clone(), 64).await;
    run_counted(&queue, key, "job", 20).await;

    let starts = observed(key).start_times();
    assert_spaced(&starts, begin, interval);
    for (k, start) in starts.iter().enumerate() {
        let since = *start - begin;
        assert!(
            since < interval * u32::try_from(k).unwrap() + 5 * MS,
            "start {k} came {since:?} after the beginning: the pool fell behind its rate"
        );
    }
    queue.close().await;
}

/// A burst after a quiet time is spread out too: the workers' slots went stale while they
/// waited for jobs, and they book fresh ones rather than all starting at once.
#[tokio::test(start_paused = true)]
async fn moving_average_pool_spreads_a_burst_after_a_quiet_time() {
    let key = "average-burst";
    let runner = MovingAverageRateLimitedWorkers::new(4, 100, Duration::from_secs(1)).unwrap();
    let interval = runner.interval();
    let queue = queue_with(runner.clone(), 64).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let burst = Instant::now();
    run_counted(&queue, key, "job", 8).await;
    let starts = observed(key).start_times();
    assert_spaced(&starts, burst, interval);
    let last = *starts.last().unwrap() - burst;
    assert!(last < 7 * interval + 5 * MS, "{last:?}");
    queue.close().await;
}

/// Slow jobs make the workers, not the schedule, the limit: the pool then runs as fast as its
/// workers allow, and the moving average reports the jobs' run time.
#[tokio::test(start_paused = true)]
async fn moving_average_pool_is_limited_by_its_workers_when_jobs_are_slow() {
    let key = "average-slow";
    // 1,000 jobs per second allowed, but each job holds its only worker for 20 ms.
    let runner = MovingAverageRateLimitedWorkers::new(1, 1_000, Duration::from_secs(1)).unwrap();
    let queue = queue_with(runner.clone(), 64).await;
    let jobs: Vec<_> = (0..5)
        .map(|i| {
            let base = amboy_core::Base::with_id(format!("slow-{i}"))
                .with_max_time(Duration::from_millis(20));
            job_with(key, base, Behaviour::Hang)
        })
        .collect();
    for job in &jobs {
        put(&queue, job.clone()).await;
    }
    for job in &jobs {
        wait_job(&queue, job.id()).await;
    }
    let starts = observed(key).start_times();
    for gap in gaps(&starts) {
        assert!(
            gap >= Duration::from_millis(20) && gap < Duration::from_millis(25),
            "the next job starts as soon as the worker is free: {gap:?}"
        );
    }
    let average = runner.average_run_time().unwrap();
    assert!(
        average >= Duration::from_millis(20) && average < Duration::from_millis(25),
        "{average:?}"
    );
    queue.close().await;
}

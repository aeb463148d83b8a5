//! Graceful shutdown through the facade (issue 6, section 4): `Queue::shutdown(grace)` stops
//! taking jobs, lets the running ones finish for up to `grace`, then cancels what is left;
//! pending jobs stay pending. Every pool-based runner, on the in-memory queues that hold jobs
//! and on the one that stores copies. The clock is paused: time passes only when every task
//! waits, so the durations below are exact.

use std::sync::Arc;
use std::time::Duration;

use amboy::prelude::*;
use amboy::runner::{
    AbortablePool, LocalWorkers, MovingAverageRateLimitedWorkers, MultiQueuePool,
    RateLimitedWorkers, SingleWorker,
};
use amboy::{Base, JobRef, QueueStats};
use amboy_tests::jobs::Sleep;
use tokio::time::Instant;

/// The runners that take jobs on their own, each with one worker.
fn runners() -> Vec<(&'static str, Arc<dyn Runner>)> {
    vec![
        ("local", LocalWorkers::new(1)),
        ("abortable", AbortablePool::new(1)),
        ("single", SingleWorker::new()),
        (
            "rate-limited",
            RateLimitedWorkers::new(1, Duration::from_millis(1)).unwrap(),
        ),
        (
            "moving-average",
            MovingAverageRateLimitedWorkers::new(1, 1000, Duration::from_secs(1)).unwrap(),
        ),
        ("multi-queue", MultiQueuePool::new(1)),
    ]
}

/// The queues under test, with the runner set.
fn queues(runner: Arc<dyn Runner>, store_copies: bool) -> Arc<dyn Queue> {
    let queue: Arc<dyn Queue> = if store_copies {
        amboy::local::LimitedSizeSerializableQueue::new(8)
    } else {
        amboy::local::LimitedSizeQueue::new(8)
    };
    queue.set_runner(runner).unwrap();
    queue
}

/// A running job that sleeps for `runs`, and a second job waiting behind it (one worker).
async fn running_and_pending(queue: &Arc<dyn Queue>, runs: Duration) -> JobRef {
    queue.start().await.unwrap();
    let running: JobRef = Sleep::new(Base::with_id("running"), runs);
    queue.put(running.clone()).await.unwrap();
    queue
        .put(Sleep::new(Base::with_id("pending"), Duration::ZERO))
        .await
        .unwrap();
    // Let the worker take the first job.
    while !queue.get("running").await.unwrap().status().in_progress {
        tokio::task::yield_now().await;
    }
    running
}

async fn stats(queue: &Arc<dyn Queue>) -> QueueStats {
    queue.stats().await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_running_job_finishing_within_the_grace_period_completes() {
    for store_copies in [false, true] {
        for (name, runner) in runners() {
            let queue = queues(runner.clone(), store_copies);
            running_and_pending(&queue, Duration::from_secs(5)).await;
            let started = Instant::now();
            queue.shutdown(Duration::from_secs(30)).await;
            assert_eq!(
                started.elapsed(),
                Duration::from_secs(5),
                "{name}: shutdown waits for the job, and no longer"
            );
            let job = queue.get("running").await.unwrap();
            assert!(job.status().completed, "{name}: {:?}", job.status());
            assert!(job.error().is_none(), "{name}: {:?}", job.error());
            let stats = stats(&queue).await;
            assert_eq!(
                (stats.completed, stats.pending, stats.running),
                (1, 1, 0),
                "{name}: the pending job stays pending: {stats}"
            );
            assert!(!runner.started(), "{name}");
            assert!(
                queue
                    .put(Sleep::new(Base::with_id("late"), Duration::ZERO))
                    .await
                    .is_err(),
                "{name}: a shut down queue takes no more jobs"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_running_job_is_cancelled_at_the_end_of_the_grace_period() {
    for store_copies in [false, true] {
        for (name, runner) in runners() {
            let queue = queues(runner, store_copies);
            running_and_pending(&queue, Duration::from_secs(3600)).await;
            let started = Instant::now();
            queue.shutdown(Duration::from_secs(10)).await;
            assert_eq!(
                started.elapsed(),
                Duration::from_secs(10),
                "{name}: shutdown ends at the deadline"
            );
            let job = queue.get("running").await.unwrap();
            assert!(job.status().completed, "{name}: {:?}", job.status());
            assert_eq!(
                job.error().expect("cancelled").message(),
                "job was aborted during execution: context canceled",
                "{name}"
            );
            let stats = stats(&queue).await;
            assert_eq!((stats.completed, stats.pending), (1, 1), "{name}: {stats}");
        }
    }
}

/// `close` still cancels at once: a shutdown with no grace period is a close.
#[tokio::test(start_paused = true)]
async fn close_cancels_running_jobs_at_once() {
    let queue = queues(LocalWorkers::new(1), false);
    running_and_pending(&queue, Duration::from_secs(3600)).await;
    let started = Instant::now();
    queue.close().await;
    assert_eq!(started.elapsed(), Duration::ZERO);
    let job = queue.get("running").await.unwrap();
    assert!(job.error().is_some(), "cancelled");
}

/// A runner restarts after a shutdown, as after a close.
#[tokio::test(start_paused = true)]
async fn a_runner_starts_again_after_a_shutdown() {
    let queue = amboy::local::LimitedSizeQueue::new(8);
    let runner = LocalWorkers::new(2);
    queue.set_runner(runner.clone()).unwrap();
    queue.start().await.unwrap();
    runner.shutdown(Duration::from_secs(1)).await;
    assert!(!runner.started());
    queue
        .put(Sleep::new(Base::with_id("after"), Duration::ZERO))
        .await
        .unwrap();
    runner.start().await.unwrap();
    let outcome = amboy::wait_job(&*queue, "after").await.unwrap();
    assert_eq!(outcome, amboy::JobOutcome::Completed);
    queue.close().await;
}

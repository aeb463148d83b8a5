//! amboy's `runner_test.go` for every runner, and `local_test.go`'s pool tests for every runner
//! with workers, through the public API over the limited-size queue; then what is particular
//! to the single worker and the no-op runner.

mod support;

use std::sync::Arc;
use std::time::Duration;

use amboy_core::{Error, Queue, Runner};
use amboy_queue_local::LimitedSizeQueue;
use amboy_runner::{
    AbortablePool, LocalWorkers, MovingAverageRateLimitedWorkers, MultiQueuePool, NoopRunner,
    RateLimitedWorkers, SingleWorker,
};
use support::*;
use tokio::time::timeout;

// ---------------------------------------------------------------------------------------------
// runner_test.go, for every runner
// ---------------------------------------------------------------------------------------------

async fn not_started_initially_and_needs_a_queue(runner: Arc<dyn Runner>) {
    assert!(!runner.started());
    assert!(runner.start().await.is_err(), "no queue to serve");
    assert!(!runner.started());

    let queue = LimitedSizeQueue::new(4);
    runner.set_queue(queue.clone()).unwrap();
    runner.start().await.unwrap();
    assert!(runner.started());
    runner.close().await;
    assert!(!runner.started());
}

async fn start_fails_once_the_queue_is_dropped(runner: Arc<dyn Runner>) {
    runner.set_queue(LimitedSizeQueue::new(1)).unwrap();
    assert!(
        runner.start().await.is_err(),
        "the queue was dropped: the runner holds it weakly"
    );
    assert!(!runner.started());
}

async fn set_queue_fails_once_started_and_start_is_idempotent(
    runner: Arc<dyn Runner>,
    key: &str,
    runs_jobs: bool,
) {
    let queue = queue_with(runner.clone(), 64).await;
    assert!(runner.started());
    let err = runner.set_queue(LimitedSizeQueue::new(4)).unwrap_err();
    assert!(matches!(err, Error::AlreadyStarted(_)), "{err:?}");

    runner.start().await.expect("starting again is fine");
    runner.start().await.unwrap();
    assert!(runner.started());
    if runs_jobs {
        // Still one pool: every job runs once.
        run_counted(&queue, key, "job", 20).await;
    }
    queue.close().await;
    assert!(!runner.started(), "closing the queue closes its runner");
}

async fn close_stops_and_the_runner_restarts(runner: Arc<dyn Runner>, key: &str, runs_jobs: bool) {
    let queue = queue_with(runner.clone(), 64).await;
    if runs_jobs {
        run_counted(&queue, key, "before", 10).await;
    }

    runner.close().await;
    assert!(!runner.started());
    runner.close().await;
    assert!(!runner.started(), "closing twice is fine");

    // Closed: a job put now waits.
    let waiting = job(key, "while-closed", Behaviour::Count);
    put(&queue, waiting.clone()).await;
    let observed = observed(key);
    observed.forget_starts();
    assert!(
        !observed.another_starts().await,
        "nobody runs jobs while the runner is closed"
    );
    assert!(!waiting.status().in_progress && !waiting.status().completed);

    runner.start().await.unwrap();
    assert!(runner.started(), "the runner restarts");
    if runs_jobs {
        wait_job(&queue, "while-closed").await;
        run_counted(&queue, key, "after", 10).await;
    }
    queue.close().await;
    assert!(!runner.started());
}

macro_rules! runner_contract {
    ($($module:ident: $make:expr, runs_jobs: $runs:expr;)*) => {$(
        mod $module {
            use super::*;

            fn make() -> Arc<dyn Runner> {
                $make
            }

            #[tokio::test]
            async fn is_not_started_initially_and_needs_a_queue_to_start() {
                not_started_and_needs_a_queue(make()).await;
            }

            #[tokio::test]
            async fn start_fails_once_the_queue_is_dropped() {
                super::start_fails_once_the_queue_is_dropped(make()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn set_queue_fails_once_started_and_start_is_idempotent() {
                super::set_queue_fails_once_started_and_start_is_idempotent(
                    make(),
                    concat!(stringify!($module), "-idempotent"),
                    $runs,
                )
                .await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn close_stops_and_the_runner_restarts() {
                super::close_stops_and_the_runner_restarts(
                    make(),
                    concat!(stringify!($module), "-restart"),
                    $runs,
                )
                .await;
            }

            async fn not_started_and_needs_a_queue(runner: Arc<dyn Runner>) {
                super::not_started_initially_and_needs_a_queue(runner).await;
            }
        }
    )*};
}

runner_contract! {
    local: LocalWorkers::new(2), runs_jobs: true;
    single: SingleWorker::new(), runs_jobs: true;
    abortable: AbortablePool::new(2), runs_jobs: true;
    rate_limited: RateLimitedWorkers::new(2, Duration::from_millis(1)).unwrap(), runs_jobs: true;
    moving_average: MovingAverageRateLimitedWorkers::new(2, 1_000, Duration::from_millis(1))
        .unwrap(), runs_jobs: true;
    noop: NoopRunner::new(), runs_jobs: false;
    multi_queue: MultiQueuePool::new(2), runs_jobs: true;
}

// ---------------------------------------------------------------------------------------------
// local_test.go, for every runner with workers
// ---------------------------------------------------------------------------------------------

async fn runs_every_job_once(make: fn(usize) -> Arc<dyn Runner>, sizes: &[usize], key: &str) {
    for &size in sizes {
        let key = format!("{key}-{size}");
        let runner = make(size);
        let queue = queue_with(runner.clone(), 128).await;
        run_counted(&queue, &key, "job", 100).await;
        // A job reads completed (what `run_counted` waits for) a moment before the queue has
        // counted it: the stats are read once they say the queue is complete.
        wait_all(&queue).await;
        let stats = queue.stats().await.unwrap();
        assert_eq!((stats.total, stats.completed), (100, 100), "size {size}");
        queue.close().await;
        assert!(!runner.started());
    }
}

/// Decision 2: a panicking job is completed with the panic as its error, and the worker (the
/// only one) goes on to run the next jobs.
async fn panicking_job_is_completed_and_the_worker_carries_on(
    make: fn(usize) -> Arc<dyn Runner>,
    key: &str,
) {
    let runner = make(1);
    let queue = queue_with(runner.clone(), 64).await;
    let boom = job(key, "boom", Behaviour::Panic);
    put(&queue, boom.clone()).await;
    wait_job(&queue, "boom").await;

    let status = boom.status();
    assert!(status.completed && !status.in_progress);
    let error = error_of(&boom).expect("the panic is recorded");
    assert!(error.starts_with("job panicked:"), "{error}");
    assert!(error.contains("the job blew up"), "{error}");

    run_counted(&queue, key, "next", 20).await;
    assert!(runner.started());
    queue.close().await;
}

/// Closing the runner cancels the running job, completes it with amboy's cancellation error,
/// and waits for it.
async fn close_cancels_running_jobs_and_waits_for_them(
    make: fn(usize) -> Arc<dyn Runner>,
    key: &str,
) {
    let runner = make(2);
    let queue = queue_with(runner.clone(), 16).await;
    let hung = job(key, "hung", Behaviour::Hang);
    put(&queue, hung.clone()).await;
    observed(key).wait_started(1).await;
    assert!(hung.status().in_progress);

    timeout(SOON, runner.close())
        .await
        .expect("close finishes once the job is cancelled");
    // No wait: close returned only after the job was completed.
    let status = hung.status();
    assert!(status.completed && !status.in_progress, "{status:?}");
    assert_eq!(error_of(&hung).as_deref(), Some(ABORTED));
    assert_eq!(queue.stats().await.unwrap().completed, 1);
    queue.close().await;
}

macro_rules! pool_tests {
    ($($module:ident: $make:expr, sizes: $sizes:expr;)*) => {$(
        mod $module {
            use super::*;

            fn make(size: usize) -> Arc<dyn Runner> {
                let make: fn(usize) -> Arc<dyn Runner> = $make;
                make(size)
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn runs_every_job_exactly_once() {
                super::runs_every_job_once(make, &$sizes, concat!(stringify!($module), "-once"))
                    .await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn panicking_job_is_completed_and_the_worker_carries_on() {
                super::panicking_job_is_completed_and_the_worker_carries_on(
                    make,
                    concat!(stringify!($module), "-panic"),
                )
                .await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn close_cancels_running_jobs_and_waits_for_them() {
                super::close_cancels_running_jobs_and_waits_for_them(
                    make,
                    concat!(stringify!($module), "-close-cancels"),
                )
                .await;
            }
        }
    )*};
}

mod pools {
    use super::*;

    pool_tests! {
        local: |size| LocalWorkers::new(size), sizes: [1, 3, 16];
        single: |_| SingleWorker::new(), sizes: [1];
        abortable: |size| AbortablePool::new(size), sizes: [1, 3, 16];
        rate_limited: |size| RateLimitedWorkers::new(size, Duration::from_millis(1)).unwrap(),
            sizes: [1, 3, 16];
        moving_average: |size| {
            MovingAverageRateLimitedWorkers::new(size, 1_000, Duration::from_millis(1)).unwrap()
        }, sizes: [1, 3, 16];
        multi_queue: |size| MultiQueuePool::new(size), sizes: [1, 3, 16];
    }
}

#[tokio::test]
async fn sizes_below_one_become_one() {
    assert_eq!(LocalWorkers::new(0).size(), 1);
    assert_eq!(AbortablePool::new(0).size(), 1);
    assert_eq!(MultiQueuePool::new(0).size(), 1);
    assert_eq!(AbortablePool::new(7).size(), 7);
    assert_eq!(MultiQueuePool::new(7).size(), 7);
}

// ---------------------------------------------------------------------------------------------
// The single worker
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_worker_runs_one_job_at_a_time() {
    let key = "single-one-at-a-time";
    let runner = SingleWorker::new();
    let queue = queue_with(runner.clone(), 16).await;
    put(&queue, job(key, "first", Behaviour::Hang)).await;
    put(&queue, job(key, "second", Behaviour::Hang)).await;
    let observed = observed(key);
    observed.wait_started(1).await;
    assert!(!observed.another_starts().await, "one worker, one job");
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.running, stats.pending), (1, 1));
    queue.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_worker_runs_jobs_in_queue_order() {
    let key = "single-order";
    let runner = SingleWorker::new();
    let queue = queue_with(runner.clone(), 64).await;
    runner.close().await;
    let jobs = put_counted(&queue, key, "job", 20).await;
    runner.start().await.unwrap();
    wait_all(&queue).await;
    assert_ran_once(key, &jobs);
    let expected: Vec<String> = jobs.iter().map(|job| job.id().to_owned()).collect();
    assert_eq!(observed(key).order(), expected);
    queue.close().await;
}

// ---------------------------------------------------------------------------------------------
// The no-op runner
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn noop_set_queue_rejects_resetting() {
    let runner = NoopRunner::new();
    let first = LimitedSizeQueue::new(4);
    runner.set_queue(first.clone()).unwrap();
    let err = runner.set_queue(LimitedSizeQueue::new(4)).unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "invalid: cannot override the runner's existing queue"
    );
    assert!(
        runner.set_queue(first.clone()).is_err(),
        "not even the same queue"
    );

    // Once the queue is gone, another may take its place.
    drop(first);
    let second = LimitedSizeQueue::new(4);
    let runner = NoopRunner::new();
    runner.set_queue(second.clone()).unwrap();
    drop(second);
    let third = LimitedSizeQueue::new(4);
    runner
        .set_queue(third.clone())
        .expect("the first queue was dropped");
    runner.start().await.unwrap();
    assert!(runner.started());
}

#[tokio::test]
async fn noop_start_without_a_queue_names_the_problem() {
    let err = NoopRunner::new().start().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid: cannot start a runner without a queue"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noop_runs_nothing() {
    let key = "noop-runs-nothing";
    let runner = NoopRunner::new();
    let queue = queue_with(runner.clone(), 16).await;
    let waiting = job(key, "waiting", Behaviour::Count);
    put(&queue, waiting.clone()).await;
    assert!(
        !observed(key).another_starts().await,
        "no worker takes the job"
    );
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.pending, stats.running, stats.completed), (1, 0, 0));
    assert!(!waiting.status().in_progress);
    queue.close().await;
    assert!(!runner.started());
}

/// A `close` while a `shutdown` lets a job finish cancels that job and waits for its worker,
/// rather than return at once with the job still running (the queue would then close under
/// it, its lock no longer refreshed). A `start` meanwhile waits for the stop to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_during_a_shutdown_cancels_and_waits() {
    let key = "close-during-shutdown";
    let runner = LocalWorkers::new(1);
    let queue = queue_with(runner.clone(), 8).await;
    put(&queue, job(key, "hanging", Behaviour::Hang)).await;
    observed(key).wait_started(1).await;
    let shutting = tokio::spawn({
        let runner = runner.clone();
        async move { runner.shutdown(Duration::from_secs(3600)).await }
    });
    timeout(SOON, async {
        while runner.started() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the shutdown began");
    timeout(SOON, runner.close())
        .await
        .expect("close cancels the job and waits for it");
    let stats = queue.stats().await.unwrap();
    assert_eq!(
        (stats.completed, stats.running),
        (1, 0),
        "the job was cancelled and completed before close returned: {stats}"
    );
    timeout(SOON, shutting)
        .await
        .expect("the shutdown ends with it")
        .unwrap();
    runner.start().await.expect("starts again");
    assert!(runner.started());
    runner.close().await;
}

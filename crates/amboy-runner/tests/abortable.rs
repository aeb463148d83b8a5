//! amboy's `abortable_test.go` for the two abortable pools, the abortable pool and the
//! moving-average rate-limited pool, through the public API over the limited-size queue.

mod support;

use std::sync::Arc;
use std::time::Duration;

use amboy_core::{AbortableRunner, JobRef, Queue, Runner};
use amboy_queue_local::LimitedSizeQueue;
use amboy_runner::{AbortablePool, LocalWorkers, MovingAverageRateLimitedWorkers};
use support::*;
use tokio::time::timeout;

/// Puts `n` hanging jobs named `<prefix>-<i>` and waits until they all run.
async fn hang(queue: &LimitedSizeQueue, key: &str, prefix: &str, n: usize) -> Vec<JobRef> {
    let jobs: Vec<JobRef> = (0..n)
        .map(|i| job(key, &format!("{prefix}-{i}"), Behaviour::Hang))
        .collect();
    for job in &jobs {
        put(queue, job.clone()).await;
    }
    observed(key).wait_started(n as u32).await;
    jobs
}

fn assert_aborted(job: &JobRef) {
    let status = job.status();
    assert!(
        status.completed && !status.in_progress,
        "{}: {status:?}",
        job.id()
    );
    assert_eq!(error_of(job).as_deref(), Some(ABORTED), "{}", job.id());
    assert!(job.time_info().end.is_some(), "{}", job.id());
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

async fn close_cancels_running_jobs(runner: Arc<dyn AbortableRunner>, key: &str) {
    let queue = queue_with(runner.clone(), 16).await;
    let jobs = hang(&queue, key, "hung", 3).await;
    assert_eq!(runner.running_jobs().len(), 3);

    timeout(SOON, runner.close())
        .await
        .expect("close finishes once the jobs are cancelled");
    for job in &jobs {
        assert_aborted(job);
    }
    assert!(runner.running_jobs().is_empty(), "nothing runs after close");
    assert!(!runner.is_running("hung-0"));
    assert_eq!(queue.stats().await.unwrap().completed, 3);

    // The pool restarts with an empty register.
    runner.start().await.unwrap();
    run_counted(&queue, key, "after", 10).await;
    assert!(runner.running_jobs().is_empty());
    queue.close().await;
}

async fn abort_unknown_id_errors(runner: Arc<dyn AbortableRunner>, key: &str) {
    let err = runner.abort("foo").await.unwrap_err();
    assert!(err.is_job_not_found(), "{err:?}");
    assert!(err.to_string().contains("'foo'"), "{err}");
    assert!(runner.abort("DOES NOT EXIST").await.is_err());

    let queue = queue_with(runner.clone(), 16).await;
    let jobs = hang(&queue, key, "hung", 1).await;
    let err = runner.abort("foo").await.unwrap_err();
    assert!(err.is_job_not_found(), "{err:?}");
    assert!(runner.is_running("hung-0"), "the running job is left alone");
    assert!(jobs[0].status().in_progress);

    // A job that has finished is not running any more.
    run_counted(&queue, key, "done", 1).await;
    assert!(runner.abort("done-0").await.unwrap_err().is_job_not_found());
    queue.close().await;
}

async fn abort_cancels_and_completes_the_job(runner: Arc<dyn AbortableRunner>, key: &str) {
    let queue = queue_with(runner.clone(), 16).await;
    let jobs = hang(&queue, key, "hung", 2).await;

    timeout(SOON, runner.abort("hung-0"))
        .await
        .expect("abort finishes")
        .unwrap();
    // No wait: abort returns once the job is completed.
    assert_aborted(&jobs[0]);
    assert!(!runner.is_running("hung-0"));
    assert!(runner.is_running("hung-1"), "the other job runs on");
    assert!(jobs[1].status().in_progress);
    assert_eq!(runner.running_jobs(), vec!["hung-1".to_owned()]);
    assert!(
        runner.abort("hung-0").await.unwrap_err().is_job_not_found(),
        "aborted once"
    );
    assert_eq!(queue.get("hung-0").await.unwrap().error(), jobs[0].error());
    assert_eq!(queue.stats().await.unwrap().completed, 1);

    // The freed worker takes the next jobs.
    run_counted(&queue, key, "next", 10).await;
    queue.close().await;
}

async fn abort_all_aborts_every_running_job(runner: Arc<dyn AbortableRunner>, key: &str) {
    let queue = queue_with(runner.clone(), 16).await;
    let jobs = hang(&queue, key, "hung", 3).await;
    assert_eq!(runner.running_jobs().len(), 3);

    timeout(SOON, runner.abort_all())
        .await
        .expect("abort_all finishes")
        .unwrap();
    for job in &jobs {
        assert_aborted(job);
    }
    assert!(runner.running_jobs().is_empty());
    runner.abort_all().await.expect("nothing to abort is fine");
    assert!(runner.started(), "aborting jobs leaves the pool running");
    run_counted(&queue, key, "next", 10).await;
    queue.close().await;
}

async fn reports_running_jobs(runner: Arc<dyn AbortableRunner>, key: &str) {
    assert!(runner.running_jobs().is_empty());
    let queue = queue_with(runner.clone(), 16).await;
    let jobs = hang(&queue, key, "hung", 3).await;
    for job in &jobs {
        assert!(runner.is_running(job.id()));
        assert!(!runner.is_running(&format!("{}-NOT_RUNNING", job.id())));
    }
    let expected: Vec<String> = jobs.iter().map(|job| job.id().to_owned()).collect();
    assert_eq!(sorted(runner.running_jobs()), expected);
    queue.close().await;
    assert!(runner.running_jobs().is_empty());
}

async fn panicking_job_deregisters(runner: Arc<dyn AbortableRunner>, key: &str) {
    let queue = queue_with(runner.clone(), 16).await;
    let boom = job(key, "boom", Behaviour::Panic);
    put(&queue, boom.clone()).await;
    wait_job(&queue, "boom").await;
    // The registration goes once the completion is in: a moment after `wait_job` sees it.
    timeout(Duration::from_secs(5), async {
        while runner.is_running("boom") {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the panicked job is no longer registered");
    assert!(runner.running_jobs().is_empty());
    let error = error_of(&boom).expect("the panic is recorded");
    assert!(error.starts_with("job panicked:"), "{error}");
    assert!(runner.abort("boom").await.unwrap_err().is_job_not_found());
    run_counted(&queue, key, "next", 10).await;
    queue.close().await;
}

async fn is_abortable_through_the_runner_trait(runner: Arc<dyn AbortableRunner>, key: &str) {
    let queue = queue_with(runner.clone(), 16).await;
    hang(&queue, key, "hung", 1).await;
    let through_queue = queue.runner().expect("the queue has its runner");
    let abortable = through_queue
        .as_abortable()
        .expect("the pool is an abortable runner");
    assert!(abortable.is_running("hung-0"));
    abortable.abort("hung-0").await.unwrap();
    assert_aborted(&queue.get("hung-0").await.unwrap());
    queue.close().await;
}

macro_rules! abortable_tests {
    ($($module:ident: $make:expr;)*) => {$(
        mod $module {
            use super::*;

            fn make() -> Arc<dyn AbortableRunner> {
                $make
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn close_cancels_running_jobs() {
                super::close_cancels_running_jobs(make(), concat!(stringify!($module), "-close"))
                    .await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn abort_unknown_id_errors() {
                super::abort_unknown_id_errors(make(), concat!(stringify!($module), "-unknown"))
                    .await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn abort_cancels_and_completes_the_job() {
                super::abort_cancels_and_completes_the_job(
                    make(),
                    concat!(stringify!($module), "-abort"),
                )
                .await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn abort_all_aborts_every_running_job() {
                super::abort_all_aborts_every_running_job(
                    make(),
                    concat!(stringify!($module), "-abort-all"),
                )
                .await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn reports_running_jobs() {
                super::reports_running_jobs(make(), concat!(stringify!($module), "-introspect"))
                    .await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn panicking_job_deregisters() {
                super::panicking_job_deregisters(make(), concat!(stringify!($module), "-panic"))
                    .await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn is_abortable_through_the_runner_trait() {
                super::is_abortable_through_the_runner_trait(
                    make(),
                    concat!(stringify!($module), "-as-abortable"),
                )
                .await;
            }
        }
    )*};
}

abortable_tests! {
    abortable: AbortablePool::new(3);
    moving_average: MovingAverageRateLimitedWorkers::new(3, 1_000, Duration::from_millis(1))
        .unwrap();
}

#[test]
fn other_pools_are_not_abortable() {
    assert!(LocalWorkers::new(1).as_abortable().is_none());
}

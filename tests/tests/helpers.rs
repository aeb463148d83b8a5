//! The helpers over any queue: enqueue-unique, resolve errors, populate, report, and the wait
//! family with amboy's bugs fixed.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use amboy::prelude::*;
use amboy::{Base, JobRef};
use amboy_tests::cases::{self, LIMITED_SIZE, LOCAL_WORKERS};
use amboy_tests::jobs::{Count, Gated, Noop, Panics, counter, open_gate};
use chrono::{TimeDelta, Utc};
use futures::stream;
use tokio::time::timeout;

const PROMPTLY: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_unique_swallows_duplicates_only() {
    let queue = cases::start_idle(LIMITED_SIZE, 1).await.unwrap();
    amboy::enqueue_unique(&*queue, Noop::new("unique-1"))
        .await
        .unwrap();
    amboy::enqueue_unique(&*queue, Noop::new("unique-1"))
        .await
        .unwrap();
    let scoped = |id: &str| -> JobRef {
        Arc::new(Noop {
            base: Base::with_id(id)
                .with_scopes(["unique-scope"])
                .with_enqueue_all_scopes(),
        })
    };
    amboy::enqueue_unique(&*queue, scoped("unique-2"))
        .await
        .unwrap();
    amboy::enqueue_unique(&*queue, scoped("unique-3"))
        .await
        .expect("a scope duplicate is a duplicate");
    assert!(queue.get("unique-3").await.unwrap_err().is_job_not_found());

    // A job that is invalid for another reason is still an error.
    let invalid = Noop {
        base: Base::with_id("unique-invalid")
            .with_wait_until(Utc::now() + TimeDelta::hours(2))
            .with_dispatch_by(Utc::now() + TimeDelta::hours(1)),
    };
    let err = amboy::enqueue_unique(&*queue, Arc::new(invalid))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("wait_until to be after dispatch_by"),
        "{err}"
    );
    assert_eq!(queue.stats().await.unwrap().total, 2);
    queue.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_many_unique_is_ok_only_when_every_failure_is_a_duplicate() {
    let queue = cases::start_idle(LIMITED_SIZE, 1).await.unwrap();
    queue.put(Noop::new("many-1")).await.unwrap();
    let batch: Vec<JobRef> = vec![
        Noop::new("many-1"),
        Noop::new("many-2"),
        Noop::new("many-2"),
    ];
    amboy::enqueue_many_unique(&*queue, batch).await.unwrap();
    assert!(
        queue.get("many-2").await.is_ok(),
        "the new job of the batch was added"
    );

    let invalid: JobRef = Arc::new(Noop {
        base: Base::with_id("many-invalid")
            .with_wait_until(Utc::now() + TimeDelta::hours(2))
            .with_dispatch_by(Utc::now() + TimeDelta::hours(1)),
    });
    let err = amboy::enqueue_many_unique(&*queue, vec![Noop::new("many-1"), invalid])
        .await
        .unwrap_err();
    assert!(!err.is_duplicate_job(), "{err}");
    queue.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_errors_gathers_failed_jobs() {
    let queue = cases::start(LIMITED_SIZE, LOCAL_WORKERS, 2).await.unwrap();
    queue.put(Noop::new("resolve-ok")).await.unwrap();
    amboy::wait(&*queue).await.unwrap();
    amboy::resolve_errors(&*queue)
        .await
        .expect("no job failed yet");

    queue
        .put(Arc::new(Panics {
            base: Base::with_id("resolve-panics"),
        }))
        .await
        .unwrap();
    timeout(PROMPTLY, amboy::wait(&*queue))
        .await
        .unwrap()
        .unwrap();
    let err = amboy::resolve_errors(&*queue).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "1 job(s) failed: job 'resolve-panics': job panicked: conformance job resolve-panics panics on purpose"
    );
    queue.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn populate_queue_puts_every_job_and_collates_failures() {
    let queue = cases::start(LIMITED_SIZE, LOCAL_WORKERS, 2).await.unwrap();
    let jobs: Vec<JobRef> = (0..50)
        .map(|n| Count::new(format!("populate-{n}"), "populate") as JobRef)
        .collect();
    amboy::populate_queue(&*queue, stream::iter(jobs))
        .await
        .unwrap();
    timeout(PROMPTLY, amboy::wait(&*queue))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(counter("populate").load(Ordering::SeqCst), 50);

    let again: Vec<JobRef> = vec![Noop::new("populate-0"), Noop::new("populate-new")];
    let err = amboy::populate_queue(&*queue, stream::iter(again))
        .await
        .unwrap_err();
    assert!(err.is_duplicate_job(), "{err}");
    assert!(queue.get("populate-new").await.is_ok());
    queue.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_sorts_jobs_by_state() {
    let queue = cases::start(LIMITED_SIZE, LOCAL_WORKERS, 2).await.unwrap();
    queue.put(Noop::new("report-done")).await.unwrap();
    assert!(
        amboy::wait_job(&*queue, "report-done")
            .await
            .unwrap()
            .is_completed()
    );
    queue
        .put(Gated::new(Base::with_id("report-running"), "report-gate"))
        .await
        .unwrap();
    let waiting = Noop {
        base: Base::with_id("report-pending").with_wait_until(Utc::now() + TimeDelta::hours(1)),
    };
    queue.put(Arc::new(waiting)).await.unwrap();
    let late = Noop {
        base: Base::with_id("report-expired").with_dispatch_by(Utc::now() - TimeDelta::seconds(1)),
    };
    queue.put(Arc::new(late)).await.unwrap();
    assert_eq!(
        timeout(PROMPTLY, amboy::wait_job(&*queue, "report-expired"))
            .await
            .unwrap()
            .unwrap(),
        amboy::JobOutcome::Expired
    );
    let running = queue.get("report-running").await.unwrap();
    timeout(PROMPTLY, async {
        while !running.status().in_progress {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();

    let report = amboy::report(&*queue, None).await.unwrap();
    assert_eq!(report.completed, ["report-done"]);
    assert_eq!(report.in_progress, ["report-running"]);
    assert_eq!(report.pending, ["report-pending"]);
    assert_eq!(report.expired, ["report-expired"]);
    assert!(report.retrying.is_empty());
    assert_eq!(
        amboy::report(&*queue, Some(0)).await.unwrap(),
        amboy::QueueReport::default()
    );
    let limited = amboy::report(&*queue, Some(2)).await.unwrap();
    let seen = limited.completed.len()
        + limited.in_progress.len()
        + limited.pending.len()
        + limited.expired.len();
    assert_eq!(seen, 2);
    open_gate("report-gate");
    queue.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_job_returns_true_for_done_jobs_and_false_for_missing_ones() {
    let queue = cases::start(LIMITED_SIZE, LOCAL_WORKERS, 1).await.unwrap();
    queue.put(Noop::new("wait-job")).await.unwrap();
    // amboy's WaitJob tested the negated condition and never returned true for a normal job.
    assert!(
        timeout(PROMPTLY, amboy::wait_job(&*queue, "wait-job"))
            .await
            .unwrap()
            .unwrap()
            .is_completed()
    );
    assert!(
        timeout(
            PROMPTLY,
            amboy::wait_job_interval(&*queue, "wait-job", Duration::ZERO)
        )
        .await
        .unwrap()
        .unwrap()
        .is_completed()
    );
    assert_eq!(
        amboy::wait_job(&*queue, "never-put").await.unwrap(),
        amboy::JobOutcome::NotFound
    );
    queue.close().await;
}

/// On paused time, so that "it keeps checking and has not returned" is exact: the 20 ms below
/// pass only once every task waits, the waiter having checked about ten times.
#[tokio::test(start_paused = true)]
async fn wait_interval_num_keeps_checking() {
    let queue = cases::start(LIMITED_SIZE, LOCAL_WORKERS, 2).await.unwrap();
    let waiter = {
        let queue = queue.clone();
        tokio::spawn(
            async move { amboy::wait_interval_num(&*queue, Duration::from_millis(2), 3).await },
        )
    };
    // Nothing is there at the first check; amboy's version checked once and then only waited.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!waiter.is_finished());
    for n in 0..3 {
        queue.put(Noop::new(format!("wait-num-{n}"))).await.unwrap();
    }
    timeout(PROMPTLY, waiter).await.unwrap().unwrap().unwrap();
    assert!(queue.stats().await.unwrap().completed >= 3);
    queue.close().await;
}

/// On paused time, as above: the gated job cannot finish before its gate opens.
#[tokio::test(start_paused = true)]
async fn wait_waits_for_running_jobs() {
    let queue = cases::start(LIMITED_SIZE, LOCAL_WORKERS, 2).await.unwrap();
    queue
        .put(Gated::new(Base::with_id("wait-gated"), "wait-gate"))
        .await
        .unwrap();
    let waiting = {
        let queue = queue.clone();
        tokio::spawn(async move { amboy::wait_interval(&*queue, Duration::from_millis(1)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished(), "the gated job still runs");
    open_gate("wait-gate");
    timeout(PROMPTLY, waiting).await.unwrap().unwrap().unwrap();
    assert_eq!(counter("wait-gate").load(Ordering::SeqCst), 1);
    queue.close().await;
}

#[tokio::test]
async fn run_job_runs_without_a_queue() {
    let job = Count::new("run-alone", "run-alone");
    amboy::run_job(&*job).await.unwrap();
    assert_eq!(counter("run-alone").load(Ordering::SeqCst), 1);
    let time = job.time_info();
    assert!(time.start.is_some() && time.end.is_some());
    assert!(job.status().completed);
}

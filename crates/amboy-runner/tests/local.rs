//! The local worker pool through its public API, over the limited-size queue: amboy's
//! `runner_test.go` and `local_test.go`, and the regression test for decision 2 (a panicking job
//! is completed and its worker carries on).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use amboy_core::{Base, Job, JobContext, JobError, JobRef, Queue, Runner};
use amboy_queue_local::LimitedSizeQueue;
use amboy_runner::LocalWorkers;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::time::timeout;

/// Generous bound for things that should happen at once.
const SOON: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Behaviour {
    /// Count the run and return.
    Count,
    /// Panic.
    Panic,
    /// Signal that it started, then never finish on its own.
    Hang,
}

/// What a test observes of its jobs, shared under the test's key.
#[derive(Debug)]
struct Observed {
    runs: Mutex<HashMap<String, usize>>,
    started: Semaphore,
}

static OBSERVED: LazyLock<Mutex<HashMap<String, Arc<Observed>>>> = LazyLock::new(Default::default);

fn observed(key: &str) -> Arc<Observed> {
    OBSERVED
        .lock()
        .unwrap()
        .entry(key.to_owned())
        .or_insert_with(|| {
            Arc::new(Observed {
                runs: Mutex::new(HashMap::new()),
                started: Semaphore::new(0),
            })
        })
        .clone()
}

#[derive(Serialize, Deserialize)]
struct Scripted {
    base: Base,
    key: String,
    behaviour: Behaviour,
}

#[typetag::serde(name = "local-test-scripted")]
#[async_trait::async_trait]
impl Job for Scripted {
    fn base(&self) -> &Base {
        &self.base
    }

    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        let observed = observed(&self.key);
        *observed
            .runs
            .lock()
            .unwrap()
            .entry(self.id().to_owned())
            .or_default() += 1;
        observed.started.add_permits(1);
        match self.behaviour {
            Behaviour::Count => Ok(()),
            Behaviour::Panic => panic!("the job blew up"),
            Behaviour::Hang => {
                std::future::pending::<()>().await;
                Ok(())
            }
        }
    }
}

fn job(key: &str, id: &str, behaviour: Behaviour) -> JobRef {
    job_with(key, Base::with_id(id), behaviour)
}

fn job_with(key: &str, base: Base, behaviour: Behaviour) -> JobRef {
    Arc::new(Scripted {
        base,
        key: key.to_owned(),
        behaviour,
    })
}

/// A queue served by `runner`, started.
async fn queue_with(runner: &Arc<LocalWorkers>, capacity: usize) -> Arc<LimitedSizeQueue> {
    let queue = LimitedSizeQueue::new(capacity);
    queue.set_runner(runner.clone()).unwrap();
    queue.start().await.unwrap();
    queue
}

async fn put(queue: &LimitedSizeQueue, job: JobRef) {
    timeout(SOON, queue.put(job))
        .await
        .expect("put did not finish")
        .unwrap();
}

async fn wait_all(queue: &LimitedSizeQueue) {
    timeout(SOON, amboy_core::wait(queue))
        .await
        .expect("the queue did not complete")
        .unwrap();
}

async fn wait_job(queue: &LimitedSizeQueue, id: &str) {
    let found = timeout(SOON, amboy_core::wait_job(queue, id))
        .await
        .unwrap_or_else(|_| panic!("job '{id}' did not complete"))
        .unwrap();
    assert_eq!(
        found,
        amboy_core::JobOutcome::Completed,
        "job '{id}' is retained"
    );
}

/// Puts `n` counting jobs, waits for them, and checks each ran exactly once without error.
async fn run_counted(queue: &LimitedSizeQueue, key: &str, prefix: &str, n: usize) {
    let jobs: Vec<JobRef> = (0..n)
        .map(|i| job(key, &format!("{prefix}-{i}"), Behaviour::Count))
        .collect();
    for job in &jobs {
        put(queue, job.clone()).await;
    }
    wait_all(queue).await;
    let observed = observed(key);
    let runs = observed.runs.lock().unwrap();
    for job in &jobs {
        assert_eq!(
            runs.get(job.id()),
            Some(&1),
            "{} ran exactly once",
            job.id()
        );
        let status = job.status();
        assert!(status.completed && !status.in_progress, "{}", job.id());
        assert!(job.error().is_none(), "{}", job.id());
    }
}

// ---------------------------------------------------------------------------------------------
// runner_test.go
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn is_not_started_initially_and_needs_a_queue_to_start() {
    let runner = LocalWorkers::new(2);
    assert!(!runner.started());
    assert!(runner.start().await.is_err(), "no queue to serve");
    assert!(!runner.started());

    let queue = LimitedSizeQueue::new(4);
    runner.set_queue(queue.clone()).unwrap();
    runner
        .set_queue(queue.clone())
        .expect("may be repeated before start");
    runner.start().await.unwrap();
    assert!(runner.started());
    runner.close().await;
    assert!(!runner.started());

    let runner = LocalWorkers::new(1);
    runner.set_queue(LimitedSizeQueue::new(1)).unwrap();
    assert!(
        runner.start().await.is_err(),
        "the queue was dropped: the runner holds it weakly"
    );
}

#[tokio::test]
async fn set_queue_fails_once_started_and_start_is_idempotent() {
    let key = "idempotent";
    let runner = LocalWorkers::new(2);
    let queue = queue_with(&runner, 16).await;
    assert!(runner.started());
    let err = runner.set_queue(LimitedSizeQueue::new(4)).unwrap_err();
    assert!(
        matches!(err, amboy_core::Error::AlreadyStarted(_)),
        "{err:?}"
    );

    runner.start().await.expect("starting again is fine");
    runner.start().await.unwrap();
    assert!(runner.started());
    // Still one pool of two workers: every job runs once.
    run_counted(&queue, key, "job", 10).await;
    queue.close().await;
    assert!(!runner.started());
}

#[tokio::test]
async fn close_stops_and_the_pool_restarts() {
    let key = "restart";
    let runner = LocalWorkers::new(2);
    let queue = queue_with(&runner, 64).await;
    run_counted(&queue, key, "before", 10).await;

    runner.close().await;
    assert!(!runner.started());
    runner.close().await;
    assert!(!runner.started(), "closing twice is fine");

    // Closed: a job put now waits.
    let waiting = job(key, "while-closed", Behaviour::Count);
    put(&queue, waiting.clone()).await;
    assert!(
        timeout(
            Duration::from_millis(150),
            amboy_core::wait_job(&*queue, "while-closed")
        )
        .await
        .is_err(),
        "nobody runs jobs while the pool is closed"
    );
    assert!(!waiting.status().in_progress && !waiting.status().completed);

    runner.start().await.unwrap();
    assert!(runner.started());
    wait_job(&queue, "while-closed").await;
    run_counted(&queue, key, "after", 10).await;
    queue.close().await;
}

// ---------------------------------------------------------------------------------------------
// local_test.go
// ---------------------------------------------------------------------------------------------

async fn pool_runs_every_job_once(size: usize) {
    let key = format!("pool-{size}");
    let runner = LocalWorkers::new(size);
    assert_eq!(runner.size(), size);
    let queue = queue_with(&runner, 128).await;
    run_counted(&queue, &key, "job", 100).await;
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.total, stats.completed), (100, 100));
    queue.close().await;
    assert!(!runner.started());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_of_one_runs_every_job_once() {
    pool_runs_every_job_once(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_of_three_runs_every_job_once() {
    pool_runs_every_job_once(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_of_a_hundred_runs_every_job_once() {
    pool_runs_every_job_once(100).await;
}

#[tokio::test]
async fn size_zero_becomes_one() {
    let runner = LocalWorkers::new(0);
    assert_eq!(runner.size(), 1);
    let queue = queue_with(&runner, 16).await;
    run_counted(&queue, "size-zero", "job", 10).await;
    queue.close().await;
}

/// The workers run in parallel: a pool of three holds three hanging jobs at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_run_jobs_concurrently() {
    let key = "concurrent";
    let runner = LocalWorkers::new(3);
    let queue = queue_with(&runner, 16).await;
    for i in 0..4 {
        put(&queue, job(key, &format!("hang-{i}"), Behaviour::Hang)).await;
    }
    let observed = observed(key);
    timeout(SOON, observed.started.acquire_many(3))
        .await
        .expect("three workers hold three jobs")
        .unwrap()
        .forget();
    assert!(
        timeout(Duration::from_millis(150), observed.started.acquire())
            .await
            .is_err(),
        "and no fourth"
    );
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.running, stats.pending), (3, 1));
    queue.close().await;
}

/// Decision 2: a panicking job is completed with the panic as its error, and the worker (the
/// only one) goes on to run the next jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_job_is_completed_and_the_worker_carries_on() {
    let key = "panic";
    let runner = LocalWorkers::new(1);
    let queue = queue_with(&runner, 128).await;
    let boom = job(key, "boom", Behaviour::Panic);
    put(&queue, boom.clone()).await;
    wait_job(&queue, "boom").await;

    let status = boom.status();
    assert!(status.completed && !status.in_progress);
    let error = boom.error().expect("the panic is recorded");
    assert!(
        error.message().starts_with("job panicked:"),
        "{}",
        error.message()
    );
    assert!(error.message().contains("the job blew up"));
    assert!(boom.time_info().end.is_some());

    run_counted(&queue, key, "next", 100).await;
    assert!(runner.started());
    queue.close().await;
}

/// Closing the pool cancels the running job, completes it with amboy's cancellation error, and
/// waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_cancels_running_jobs_and_waits_for_them() {
    let key = "close-cancels";
    let runner = LocalWorkers::new(2);
    let queue = queue_with(&runner, 16).await;
    let hung = job(key, "hung", Behaviour::Hang);
    put(&queue, hung.clone()).await;
    timeout(SOON, observed(key).started.acquire())
        .await
        .expect("the job started")
        .unwrap()
        .forget();
    assert!(hung.status().in_progress);

    timeout(SOON, runner.close())
        .await
        .expect("close finishes once the job is cancelled");
    // No wait: close returned only after the job was completed.
    let status = hung.status();
    assert!(status.completed && !status.in_progress, "{status:?}");
    assert_eq!(
        hung.error().map(|e| e.message().to_owned()).as_deref(),
        Some("job was aborted during execution: context canceled")
    );
    assert!(hung.time_info().end.is_some());
    assert_eq!(queue.stats().await.unwrap().completed, 1);
    queue.close().await;
}

/// `max_time` bounds a run: a job that never finishes is stopped and completed with amboy's
/// deadline error, and the worker is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_time_stops_a_hung_job() {
    let key = "max-time";
    let runner = LocalWorkers::new(1);
    let queue = queue_with(&runner, 16).await;
    let base = Base::with_id("slow").with_max_time(Duration::from_millis(50));
    let slow = job_with(key, base, Behaviour::Hang);
    put(&queue, slow.clone()).await;
    wait_job(&queue, "slow").await;

    let status = slow.status();
    assert!(status.completed && !status.in_progress);
    assert_eq!(
        slow.error().map(|e| e.message().to_owned()).as_deref(),
        Some("job was aborted during execution: context deadline exceeded")
    );
    let time = slow.time_info();
    assert!(time.duration() >= Duration::from_millis(50), "{time:?}");
    assert!(time.duration() < SOON, "stopped, not left to hang");

    run_counted(&queue, key, "after", 5).await;
    queue.close().await;
}

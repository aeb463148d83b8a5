//! The limited-size queue and the dispatcher through their public API: amboy's `limited_test.go`
//! and `dispatcher_test.go` adapted, the concurrent-`next` check of `TestDriverNextJob`, and
//! regression tests for the amboy bugs we fix (decisions 1 and 3).

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use amboy_core::{Base, Error, Job, JobContext, JobError, JobRef, Queue, Runner};
use amboy_core::{Dispatcher, LockStore};
use amboy_queue_local::LimitedSizeQueue;
use amboy_runner::LocalWorkers;
use chrono::{TimeDelta, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::time::{Instant, timeout};

use support::ScriptedStore;

/// Generous bound for things that should happen at once.
const SOON: Duration = Duration::from_secs(10);
/// How long something that must not happen is given to happen.
const NOT_WITHIN: Duration = Duration::from_millis(150);

/// What a test observes of its jobs, shared through [`latch`] under the test's key.
#[derive(Debug)]
struct Latch {
    /// One permit per run started.
    started: Semaphore,
    /// Blocking jobs take one permit to finish; closing it releases them all.
    release: Semaphore,
    /// Runs, by job ID.
    runs: Mutex<HashMap<String, usize>>,
    /// The address of the job object each run ran on, by job ID.
    ran_on: Mutex<HashMap<String, usize>>,
}

impl Latch {
    fn runs_of(&self, id: &str) -> usize {
        self.runs.lock().unwrap().get(id).copied().unwrap_or(0)
    }

    fn total_runs(&self) -> usize {
        self.runs.lock().unwrap().values().sum()
    }
}

static LATCHES: LazyLock<Mutex<HashMap<String, Arc<Latch>>>> = LazyLock::new(Default::default);

/// The latch of a test, created on first use.
fn latch(key: &str) -> Arc<Latch> {
    LATCHES
        .lock()
        .unwrap()
        .entry(key.to_owned())
        .or_insert_with(|| {
            Arc::new(Latch {
                started: Semaphore::new(0),
                release: Semaphore::new(0),
                runs: Mutex::new(HashMap::new()),
                ran_on: Mutex::new(HashMap::new()),
            })
        })
        .clone()
}

/// A job that records its run in its test's latch and, if `block`, waits to be released.
#[derive(Serialize, Deserialize)]
struct Probe {
    base: Base,
    key: String,
    block: bool,
}

#[typetag::serde(name = "limited-test-probe")]
#[async_trait::async_trait]
impl Job for Probe {
    fn base(&self) -> &Base {
        &self.base
    }

    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        let latch = latch(&self.key);
        let id = self.id().to_owned();
        *latch.runs.lock().unwrap().entry(id.clone()).or_default() += 1;
        latch
            .ran_on
            .lock()
            .unwrap()
            .insert(id, self as *const Self as usize);
        latch.started.add_permits(1);
        if self.block {
            // Closed (Err) means "release everyone"; a permit releases one job.
            if let Ok(permit) = latch.release.acquire().await {
                permit.forget();
            }
        }
        Ok(())
    }
}

fn probe(key: &str, id: &str, block: bool) -> Probe {
    Probe {
        base: Base::with_id(id),
        key: key.to_owned(),
        block,
    }
}

fn quick(key: &str, id: &str) -> JobRef {
    Arc::new(probe(key, id, false))
}

fn blocking(key: &str, id: &str) -> JobRef {
    Arc::new(probe(key, id, true))
}

fn with_base(key: &str, base: Base, block: bool) -> JobRef {
    Arc::new(Probe {
        base,
        key: key.to_owned(),
        block,
    })
}

/// The address of the job object behind a `JobRef`.
fn address(job: &JobRef) -> usize {
    Arc::as_ptr(job) as *const () as usize
}

/// A started queue of `capacity` served by `workers` local workers.
async fn started_queue(workers: usize, capacity: usize) -> Arc<LimitedSizeQueue> {
    let queue = LimitedSizeQueue::new(capacity);
    queue.set_runner(LocalWorkers::new(workers)).unwrap();
    queue.start().await.unwrap();
    queue
}

async fn put(queue: &LimitedSizeQueue, job: JobRef) {
    let id = job.id().to_owned();
    timeout(SOON, queue.put(job))
        .await
        .unwrap_or_else(|_| panic!("put of '{id}' did not finish"))
        .unwrap_or_else(|error| panic!("put of '{id}' failed: {error}"));
}

async fn wait_job(queue: &LimitedSizeQueue, id: &str) -> bool {
    timeout(SOON, amboy_core::wait_job(queue, id))
        .await
        .unwrap_or_else(|_| panic!("job '{id}' did not complete"))
        .unwrap()
        .is_completed()
}

async fn wait_all(queue: &LimitedSizeQueue) {
    timeout(SOON, amboy_core::wait(queue))
        .await
        .expect("the queue did not complete")
        .unwrap();
}

/// Waits until `n` more runs of the latch's jobs have started.
async fn started(latch: &Latch, n: u32) {
    timeout(SOON, latch.started.acquire_many(n))
        .await
        .expect("jobs did not start")
        .unwrap()
        .forget();
}

/// A runner without workers: the queue's jobs are taken only by the test's own `next` calls.
#[derive(Debug, Default)]
struct NoWorkers {
    started: AtomicBool,
}

#[async_trait::async_trait]
impl Runner for NoWorkers {
    fn started(&self) -> bool {
        self.started.load(Ordering::SeqCst)
    }

    fn set_queue(&self, _queue: Arc<dyn Queue>) -> amboy_core::Result<()> {
        Ok(())
    }

    async fn start(&self) -> amboy_core::Result<()> {
        self.started.store(true, Ordering::SeqCst);
        Ok(())
    }

    async fn close(&self) {
        self.started.store(false, Ordering::SeqCst);
    }
}

async fn queue_without_workers(capacity: usize) -> Arc<LimitedSizeQueue> {
    let queue = LimitedSizeQueue::new(capacity);
    queue.set_runner(Arc::new(NoWorkers::default())).unwrap();
    queue.start().await.unwrap();
    queue
}

// ---------------------------------------------------------------------------------------------
// limited_test.go
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_needs_start_and_waits_beyond_workers_plus_capacity() {
    const WORKERS: usize = 2;
    const CAPACITY: usize = 100;
    let key = "put_needs_start";
    let latch = latch(key);
    let queue = LimitedSizeQueue::new(CAPACITY);
    assert_eq!(queue.options().capacity, CAPACITY);
    assert!(!queue.info().started);

    queue
        .set_runner(LocalWorkers::new(WORKERS))
        .expect("set_runner before start is fine");
    queue
        .set_runner(LocalWorkers::new(WORKERS))
        .expect("and may be repeated before start");

    let err = queue.put(blocking(key, "early")).await.unwrap_err();
    assert!(matches!(err, Error::NotStarted(_)), "{err:?}");
    assert!(queue.get("early").await.unwrap_err().is_job_not_found());

    queue.start().await.unwrap();
    assert!(queue.info().started);
    let err = queue.start().await.unwrap_err();
    assert!(matches!(err, Error::AlreadyStarted(_)), "{err:?}");
    let err = queue.set_runner(LocalWorkers::new(1)).unwrap_err();
    assert!(matches!(err, Error::AlreadyStarted(_)), "{err:?}");
    assert!(queue.runner().unwrap().started());

    for i in 0..WORKERS + CAPACITY {
        put(&queue, blocking(key, &format!("job-{i}"))).await;
    }
    started(&latch, WORKERS as u32).await;

    // Both workers hold a job and the queue holds `capacity` more: the next put waits.
    assert!(
        timeout(NOT_WITHIN, queue.put(blocking(key, "one-too-many")))
            .await
            .is_err(),
        "a put beyond workers + capacity must wait for room"
    );
    assert!(
        queue
            .get("one-too-many")
            .await
            .unwrap_err()
            .is_job_not_found(),
        "an abandoned put leaves nothing behind"
    );
    assert_eq!(queue.stored(), WORKERS + CAPACITY);
    let stats = queue.stats().await.unwrap();
    assert_eq!(stats.total, WORKERS + CAPACITY);
    assert_eq!(stats.running, WORKERS);
    assert_eq!(stats.pending, CAPACITY);
    assert_eq!(stats.completed, 0);

    // Finishing one job makes room for one more.
    latch.release.add_permits(1);
    put(&queue, blocking(key, "one-too-many")).await;
    assert_eq!(queue.stored(), WORKERS + CAPACITY + 1);
    assert_eq!(queue.stats().await.unwrap().completed, 1);
    assert!(
        timeout(NOT_WITHIN, queue.put(blocking(key, "two-too-many")))
            .await
            .is_err(),
        "full again"
    );

    latch.release.close();
    queue.close().await;
    assert!(matches!(
        queue.put(quick(key, "after-close")).await.unwrap_err(),
        Error::Closed(_)
    ));
}

/// A put waiting for room gives up with a closed-queue error when the queue closes: nobody will
/// ever make room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_waiting_for_room_fails_when_the_queue_closes() {
    let key = "put_then_close";
    let latch = latch(key);
    let queue = started_queue(1, 1).await;
    put(&queue, blocking(key, "running")).await;
    started(&latch, 1).await;
    put(&queue, blocking(key, "pending")).await;
    let mut waiting = tokio::spawn({
        let queue = queue.clone();
        async move { queue.put(blocking(key, "waiting")).await }
    });
    assert!(
        timeout(NOT_WITHIN, &mut waiting).await.is_err(),
        "the queue is full"
    );

    queue.close().await;
    let err = timeout(SOON, waiting)
        .await
        .expect("the waiting put ends when the queue closes")
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, Error::Closed(_)), "{err:?}");
    assert!(queue.get("waiting").await.unwrap_err().is_job_not_found());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_ids_are_rejected_even_once_completed() {
    let key = "duplicate_ids";
    let latch = latch(key);
    let queue = started_queue(2, 10).await;

    put(&queue, blocking(key, "dup")).await;
    let err = queue.put(quick(key, "dup")).await.unwrap_err();
    assert!(err.is_duplicate_job() && !err.is_duplicate_scope(), "{err}");

    latch.release.close();
    assert!(wait_job(&queue, "dup").await);
    assert!(queue.get("dup").await.unwrap().status().completed);
    let err = queue.put(quick(key, "dup")).await.unwrap_err();
    assert!(
        err.is_duplicate_job(),
        "a retained completed job still owns its ID: {err}"
    );

    let err = queue
        .put_many(vec![quick(key, "dup"), quick(key, "dup")])
        .await
        .unwrap_err();
    assert!(err.is_duplicate_job(), "{err}");
    queue
        .put_many(vec![quick(key, "fresh-1"), quick(key, "fresh-2")])
        .await
        .unwrap();
    wait_all(&queue).await;

    assert_eq!(latch.runs_of("dup"), 1, "the duplicates never ran");
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.total, stats.completed), (3, 3));
    queue.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_scopes_conflict_at_put_dispatch_scopes_do_not() {
    let key = "enqueue_scopes";
    let latch = latch(key);
    let queue = started_queue(1, 10).await;

    let holder = Base::with_id("holder")
        .with_scopes(["s"])
        .with_enqueue_all_scopes();
    put(&queue, with_base(key, holder, true)).await;

    let all = Base::with_id("all")
        .with_scopes(["s"])
        .with_enqueue_all_scopes();
    let err = queue.put(with_base(key, all, false)).await.unwrap_err();
    assert!(err.is_duplicate_scope() && err.is_duplicate_job(), "{err}");
    assert!(queue.get("all").await.unwrap_err().is_job_not_found());

    let subset = Base::with_id("subset")
        .with_scopes(["other", "s"])
        .with_enqueue_scopes(["s"]);
    let err = queue.put(with_base(key, subset, false)).await.unwrap_err();
    assert!(err.is_duplicate_scope(), "{err}");

    let err = queue
        .put_many(vec![
            with_base(key, Base::with_id("ok-in-batch"), false),
            with_base(
                key,
                Base::with_id("clash-in-batch")
                    .with_scopes(["s"])
                    .with_enqueue_all_scopes(),
                false,
            ),
        ])
        .await
        .unwrap_err();
    assert!(err.is_duplicate_scope() && err.is_duplicate_job(), "{err}");

    // Scopes taken only at dispatch conflict with nothing at put.
    let dispatch_only = Base::with_id("dispatch-only").with_scopes(["s"]);
    put(&queue, with_base(key, dispatch_only, false)).await;
    put(
        &queue,
        with_base(key, Base::with_id("d1").with_scopes(["d"]), false),
    )
    .await;
    put(
        &queue,
        with_base(key, Base::with_id("d2").with_scopes(["d"]), false),
    )
    .await;

    latch.release.close();
    wait_all(&queue).await;
    for id in ["holder", "ok-in-batch", "dispatch-only", "d1", "d2"] {
        assert_eq!(latch.runs_of(id), 1, "{id}");
    }
    for id in ["all", "subset", "clash-in-batch"] {
        assert_eq!(latch.runs_of(id), 0, "{id}");
    }

    // The holder's completion released its enqueue scope.
    let again = Base::with_id("again")
        .with_scopes(["s"])
        .with_enqueue_all_scopes();
    put(&queue, with_base(key, again, false)).await;
    assert!(wait_job(&queue, "again").await);
    queue.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_returns_the_job_the_worker_runs() {
    let key = "get_same_job";
    let latch = latch(key);
    let queue = started_queue(1, 10).await;
    let job = blocking(key, "live");
    put(&queue, job.clone()).await;
    started(&latch, 1).await;

    let got = queue.get("live").await.unwrap();
    assert!(Arc::ptr_eq(&got, &job), "the queue stores the caller's job");
    assert_eq!(
        latch.ran_on.lock().unwrap()["live"],
        address(&got),
        "the worker runs the very job get returns"
    );
    let status = got.status();
    assert!(status.in_progress && !status.completed);
    assert_eq!(status.owner.as_deref(), Some(queue.id()));
    assert!(status.modification_count > 0);
    assert!(got.time_info().start.is_some());
    assert!(got.time_info().created.is_some());

    latch.release.add_permits(1);
    assert!(wait_job(&queue, "live").await);
    let status = job.status();
    assert!(status.completed && !status.in_progress);
    let time = job.time_info();
    assert!(time.end.is_some() && time.end >= time.start);
    assert_eq!(latch.runs_of("live"), 1);
    queue.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retains_the_last_capacity_minus_one_completed_jobs() {
    const CAPACITY: usize = 5;
    const JOBS: usize = 60;
    let key = "retention";
    let latch = latch(key);
    let queue = started_queue(2, CAPACITY).await;
    for i in 0..JOBS {
        put(&queue, quick(key, &format!("job-{i}"))).await;
    }
    wait_all(&queue).await;

    let stats = queue.stats().await.unwrap();
    assert_eq!(stats.completed, JOBS, "forgotten jobs still count");
    assert_eq!(stats.total, JOBS);
    assert_eq!((stats.pending, stats.running), (0, 0));
    assert!(stats.is_complete());
    assert_eq!(queue.stored(), CAPACITY - 1);
    let results: Vec<_> = queue.results().await.collect().await;
    assert_eq!(results.len(), CAPACITY - 1);
    for job in results {
        assert!(job.unwrap().status().completed);
    }
    assert_eq!(queue.job_info().await.count().await, CAPACITY - 1);
    assert_eq!(latch.total_runs(), JOBS);
    queue.close().await;
}

/// Decision 3: capacity 1 deadlocked amboy's queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_one_runs_every_job() {
    const JOBS: usize = 30;
    let key = "capacity_one";
    let latch = latch(key);
    let queue = started_queue(2, 1).await;
    for i in 0..JOBS {
        put(&queue, quick(key, &format!("job-{i}"))).await;
    }
    wait_all(&queue).await;
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.total, stats.completed), (JOBS, JOBS));
    for i in 0..JOBS {
        assert_eq!(latch.runs_of(&format!("job-{i}")), 1);
    }
    assert_eq!(queue.stored(), 0, "capacity 1 retains no completed job");
    queue.close().await;
}

/// Decision 3: a job past its `dispatch_by` is set aside and counted, and `wait` returns; the
/// job stays visible as expired, and `wait_job` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_past_dispatch_by_is_dropped_and_counted_as_expired() {
    let key = "expired";
    let latch = latch(key);
    let queue = started_queue(1, 10).await;

    // Hold the only worker, so that the jobs below wait for their turn.
    put(&queue, blocking(key, "blocker")).await;
    started(&latch, 1).await;
    let late = Base::with_id("late").with_dispatch_by(Utc::now() - TimeDelta::seconds(1));
    put(&queue, with_base(key, late, false)).await;
    let in_time = Base::with_id("in-time").with_dispatch_by(Utc::now() + TimeDelta::hours(1));
    put(&queue, with_base(key, in_time, false)).await;
    assert!(!queue.stats().await.unwrap().is_complete());

    latch.release.add_permits(1);
    wait_all(&queue).await;
    let stats = queue.stats().await.unwrap();
    assert_eq!(stats.expired, 1);
    assert_eq!(stats.completed, 2);
    assert_eq!(stats.total, 3);
    assert!(stats.is_complete());
    assert_eq!(latch.runs_of("late"), 0, "an expired job never runs");
    assert_eq!(latch.runs_of("in-time"), 1);
    let late = queue.get("late").await.expect("retained");
    assert!(late.status().expired && !late.status().completed);
    assert_eq!(
        amboy_core::wait_job(&*queue, "late").await.unwrap(),
        amboy_core::JobOutcome::Expired
    );
    let error = queue
        .complete(&late)
        .await
        .expect_err("an expired job is finished");
    assert!(error.to_string().contains("expired"), "{error}");
    assert_eq!(queue.stats().await.unwrap(), stats, "nothing counted twice");
    queue.close().await;
}

/// A dropped job gives up the scopes it took at enqueue: a job waiting for them runs, and the
/// scope can be taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_job_releases_its_enqueue_scopes() {
    let key = "expired_scopes";
    let latch = latch(key);
    let queue = started_queue(1, 10).await;

    put(&queue, blocking(key, "blocker")).await;
    started(&latch, 1).await;
    let late = Base::with_id("late")
        .with_scopes(["x"])
        .with_enqueue_all_scopes()
        .with_dispatch_by(Utc::now() - TimeDelta::seconds(1));
    put(&queue, with_base(key, late, false)).await;
    let waiter = Base::with_id("waiter").with_scopes(["x"]);
    put(&queue, with_base(key, waiter, false)).await;

    latch.release.add_permits(1);
    wait_all(&queue).await;
    assert_eq!(queue.stats().await.unwrap().expired, 1);
    assert_eq!(latch.runs_of("waiter"), 1);

    let again = Base::with_id("again")
        .with_scopes(["x"])
        .with_enqueue_all_scopes();
    put(&queue, with_base(key, again, false)).await;
    assert!(wait_job(&queue, "again").await);
    queue.close().await;
}

/// Decision 1: a job whose scope is held waits beside the scope, not "in progress", and runs as
/// soon as the scope is released, not after the 10-minute lock timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_conflict_waits_without_being_in_progress_and_runs_once_freed() {
    let key = "scope_conflict";
    let latch = latch(key);
    let queue = started_queue(2, 10).await;
    assert_eq!(queue.info().lock_timeout, amboy_core::LOCK_TIMEOUT);

    let holder = Base::with_id("holder").with_scopes(["s"]);
    put(&queue, with_base(key, holder, true)).await;
    started(&latch, 1).await;
    let waiter: JobRef = with_base(key, Base::with_id("waiter").with_scopes(["s"]), false);
    put(&queue, waiter.clone()).await;
    // The free worker takes the waiter first, then this job: once it is done, the waiter has
    // had its turn.
    put(&queue, quick(key, "after")).await;
    assert!(wait_job(&queue, "after").await);

    let status = waiter.status();
    assert!(
        !status.in_progress,
        "a job waiting for a scope is not in progress"
    );
    assert!(!status.completed);
    assert_eq!(status.owner, None, "nor locked");
    assert_eq!(status.modification_count, 0);
    assert_eq!(waiter.time_info().start, None);
    assert_eq!(latch.runs_of("waiter"), 0, "the scope is held");
    let stats = queue.stats().await.unwrap();
    assert_eq!(
        (stats.running, stats.pending, stats.completed),
        (1, 1, 1),
        "{stats}"
    );

    let released = Instant::now();
    latch.release.add_permits(1);
    assert!(wait_job(&queue, "waiter").await);
    assert!(
        released.elapsed() < Duration::from_secs(2),
        "the waiter ran when the scope was freed, not after the lock timeout"
    );
    assert_eq!(latch.runs_of("waiter"), 1);
    assert!(waiter.error().is_none());
    let holder = queue.get("holder").await.unwrap();
    assert!(
        waiter.time_info().start >= holder.time_info().end,
        "the two never ran at once"
    );
    queue.close().await;
}

/// `TestDriverNextJob`: 100 concurrent `next` calls on one job, exactly one winner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_next_dispatches_a_job_once() {
    let key = "concurrent_next";
    let queue = queue_without_workers(10).await;
    put(&queue, quick(key, "only")).await;

    let calls: Vec<_> = (0..100)
        .map(|_| {
            let queue = queue.clone();
            tokio::spawn(async move {
                timeout(NOT_WITHIN, queue.next())
                    .await
                    .ok()
                    .map(|result| result.expect("the queue is open"))
            })
        })
        .collect();
    let mut winners = Vec::new();
    for call in calls {
        if let Some(job) = call.await.unwrap() {
            winners.push(job);
        }
    }
    assert_eq!(winners.len(), 1, "exactly one next call gets the job");
    let job = &winners[0];
    assert_eq!(job.id(), "only");
    let status = job.status();
    assert!(status.in_progress);
    assert_eq!(status.owner.as_deref(), Some(queue.id()));
    assert!(status.modification_count > 0);
    assert!(status.modification_time.is_some());
    assert!(queue.is_dispatched("only"));

    queue.complete(job).await.unwrap();
    assert!(!queue.is_dispatched("only"));
    assert!(job.status().completed);
    assert!(
        timeout(NOT_WITHIN, queue.next()).await.is_err(),
        "nothing else to hand out"
    );
    queue.close().await;
    let closed = queue
        .next()
        .await
        .expect_err("a closed queue hands out nothing");
    assert!(closed.is_closed(), "{closed:?}");
}

#[tokio::test]
async fn job_waiting_until_later_is_not_handed_out() {
    let key = "wait_until";
    let queue = queue_without_workers(10).await;
    let later = Base::with_id("later").with_wait_until(Utc::now() + TimeDelta::hours(1));
    put(&queue, with_base(key, later, false)).await;
    assert!(timeout(NOT_WITHIN, queue.next()).await.is_err());
    assert!(!queue.get("later").await.unwrap().status().in_progress);
    assert_eq!(queue.stats().await.unwrap().pending, 1);
    queue.close().await;
}

// ---------------------------------------------------------------------------------------------
// dispatcher_test.go
// ---------------------------------------------------------------------------------------------

const DISPATCH_LOCK_TIMEOUT: Duration = Duration::from_millis(40);

fn dispatcher() -> Arc<Dispatcher> {
    Arc::new(Dispatcher::new(Arc::from("owner"), DISPATCH_LOCK_TIMEOUT))
}

/// A queue as the store of a dispatcher's heartbeat: saves one job at a time.
struct Saves(Arc<dyn Queue>);

#[async_trait::async_trait]
impl LockStore for Saves {
    async fn save_locks(&self, jobs: &[JobRef]) -> Vec<amboy_core::Result<()>> {
        amboy_core::save_each(&*self.0, jobs).await
    }
}

fn mod_count(job: &JobRef) -> u64 {
    job.status().modification_count
}

#[tokio::test]
async fn dispatch_locks_the_job_once() {
    let dispatcher = dispatcher();
    assert_eq!(dispatcher.owner().as_ref(), "owner");
    assert_eq!(dispatcher.lock_timeout(), DISPATCH_LOCK_TIMEOUT);
    assert_eq!(dispatcher.heartbeat_interval(), DISPATCH_LOCK_TIMEOUT / 4);
    let job = quick("dispatch", "d-1");
    let before = Utc::now();
    dispatcher.dispatch(&job).unwrap();

    let status = job.status();
    assert!(status.in_progress && !status.completed);
    assert_eq!(status.owner.as_deref(), Some("owner"));
    assert!(status.modification_count > 0);
    assert!(status.modification_time.is_some_and(|t| t >= before));
    assert!(job.time_info().start.is_some_and(|t| t >= before));
    assert!(dispatcher.is_dispatched("d-1", 0));
    assert_eq!(dispatcher.len(), 1);

    let count = mod_count(&job);
    let err = dispatcher.dispatch(&job).unwrap_err();
    assert!(err.to_string().contains("cannot dispatch"), "{err}");
    assert_eq!(mod_count(&job), count, "a refused dispatch changes nothing");
    let other = Dispatcher::new(Arc::from("someone-else"), DISPATCH_LOCK_TIMEOUT);
    assert!(
        other.dispatch(&job).is_err(),
        "a live lock keeps other owners out"
    );
    assert_eq!(job.status().owner.as_deref(), Some("owner"));
}

#[tokio::test]
async fn complete_records_the_end_and_stops_tracking() {
    let dispatcher = dispatcher();
    let job = quick("dispatch", "c-1");
    dispatcher.dispatch(&job).unwrap();
    dispatcher.complete(&job);
    assert!(!dispatcher.is_dispatched("c-1", 0));
    assert!(dispatcher.is_empty());
    let time = job.time_info();
    assert!(time.end.is_some() && time.end >= time.start);

    let never = quick("dispatch", "c-never");
    dispatcher.complete(&never);
    assert_eq!(
        never.time_info().end,
        None,
        "completing a job never dispatched is a no-op"
    );
    assert_eq!(never.status(), Default::default());
}

#[tokio::test]
async fn release_unlocks_the_job() {
    let dispatcher = dispatcher();
    let job = quick("dispatch", "r-1");
    dispatcher.dispatch(&job).unwrap();
    let count = mod_count(&job);
    dispatcher.release(&job);
    let status = job.status();
    assert!(!status.in_progress);
    assert_eq!(status.owner, None);
    assert!(status.modification_count > count);
    assert!(!dispatcher.is_dispatched("r-1", 0));
    dispatcher
        .dispatch(&job)
        .expect("a released job can be dispatched again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_dispatch_has_one_winner() {
    let dispatcher = dispatcher();
    let job = quick("dispatch", "race");
    let calls: Vec<_> = (0..100)
        .map(|_| {
            let dispatcher = dispatcher.clone();
            let job = job.clone();
            tokio::spawn(async move { dispatcher.dispatch(&job).is_ok() })
        })
        .collect();
    let mut wins = 0;
    for call in calls {
        wins += usize::from(call.await.unwrap());
    }
    assert_eq!(wins, 1);
    assert_eq!(job.status().modification_count, 1);
}

/// Refreshing locks directly: each refresh takes the lock again and saves the job; completed,
/// released and timed-out jobs are left alone.
#[tokio::test(start_paused = true)]
async fn refresh_locks_refreshes_only_live_jobs() {
    let queue = queue_without_workers(10).await;
    let dispatcher = dispatcher();
    let jobs: Vec<JobRef> = ["live", "done", "released"]
        .iter()
        .map(|id| quick("refresh", id))
        .collect();
    let timed = with_base(
        "refresh",
        Base::with_id("timed").with_max_time(Duration::from_millis(5)),
        false,
    );
    for job in jobs.iter().chain([&timed]) {
        put(&queue, job.clone()).await;
        dispatcher.dispatch(job).unwrap();
    }
    let [live, done, released] = &jobs[..] else {
        unreachable!()
    };

    let before = [live, &timed].map(mod_count);
    let time_before = live.status().modification_time;
    dispatcher.refresh_locks(&*queue as &dyn Queue).await;
    assert_eq!(
        [live, &timed].map(mod_count),
        before.map(|count| count + 1),
        "both are refreshed, the timed job within its max_time"
    );
    assert!(live.status().modification_time >= time_before);
    assert!(live.status().in_progress);
    assert_eq!(live.status().owner.as_deref(), Some("owner"));

    dispatcher.complete(done);
    dispatcher.release(released);
    tokio::time::advance(Duration::from_millis(10)).await;
    let counts = [done, released, &timed].map(mod_count);
    let live_before = mod_count(live);
    dispatcher.refresh_locks(&*queue as &dyn Queue).await;
    assert_eq!(mod_count(live), live_before + 1);
    assert_eq!(
        [done, released, &timed].map(mod_count),
        counts,
        "completed, released and past-max_time jobs are not refreshed"
    );
    assert!(!released.status().in_progress);
    queue.close().await;
}

/// A job whose save is refused (it is not in the queue) lost its lock: it stops being
/// refreshed, records why, and its run is interrupted.
#[tokio::test]
async fn refresh_failure_stops_tracking_and_records_the_error() {
    let queue = queue_without_workers(10).await;
    let dispatcher = dispatcher();
    let stranger = quick("refresh", "stranger");
    dispatcher.dispatch(&stranger).unwrap();
    let run = stranger
        .base()
        .run_token(&tokio_util::sync::CancellationToken::new())
        .expect("a tracked copy's run is watched");
    dispatcher.refresh_locks(&*queue as &dyn Queue).await;
    assert!(!dispatcher.is_dispatched("stranger", 0));
    let error = stranger.error().expect("the failure is recorded");
    assert!(error.message().contains("lost the lock"), "{error}");
    assert!(run.is_cancelled(), "the run is interrupted");
    queue.close().await;
}

/// The heartbeat refreshes every dispatched job each quarter of the lock timeout, so the lock
/// never lapses, until the job is completed or released or the dispatcher closes. Runs on the
/// paused test clock, so each step is exact.
#[tokio::test(start_paused = true)]
async fn heartbeat_keeps_locks_alive_until_complete_release_or_close() {
    let queue = queue_without_workers(10).await;
    let dispatcher = dispatcher();
    let as_dyn: Arc<dyn LockStore> = Arc::new(Saves(queue.clone()));
    let jobs: Vec<JobRef> = ["hb-live", "hb-done", "hb-released"]
        .iter()
        .map(|id| quick("heartbeat", id))
        .collect();
    for job in &jobs {
        put(&queue, job.clone()).await;
        dispatcher.dispatch(job).unwrap();
    }
    let [live, done, released] = &jobs[..] else {
        unreachable!()
    };
    dispatcher.start_heartbeat(Arc::downgrade(&as_dyn));

    // Over five lock timeouts, every half lock timeout sees a refresh of every job: the lock
    // is never older than the lock timeout.
    for _ in 0..10 {
        let counts: Vec<u64> = jobs.iter().map(mod_count).collect();
        let looked = Utc::now();
        tokio::time::sleep(DISPATCH_LOCK_TIMEOUT / 2).await;
        for (job, before) in jobs.iter().zip(counts) {
            let status = job.status();
            assert!(status.modification_count > before, "{} refreshed", job.id());
            assert!(
                status.modification_time.is_some_and(|t| t >= looked),
                "{}: the lock time moves with each refresh",
                job.id()
            );
            assert!(status.in_progress);
            assert_eq!(status.owner.as_deref(), Some("owner"));
        }
    }

    dispatcher.complete(done);
    dispatcher.release(released);
    let frozen = [mod_count(done), mod_count(released)];
    let live_before = mod_count(live);
    tokio::time::sleep(DISPATCH_LOCK_TIMEOUT * 2).await;
    assert_eq!([mod_count(done), mod_count(released)], frozen);
    assert!(mod_count(live) > live_before, "the live job still is");

    dispatcher.close().await;
    assert!(dispatcher.is_empty());
    let live_closed = mod_count(live);
    tokio::time::sleep(DISPATCH_LOCK_TIMEOUT * 2).await;
    assert_eq!(mod_count(live), live_closed, "closing stops the heartbeat");
    assert!(live.error().is_none());
    queue.close().await;
}

/// The heartbeat stops refreshing a job once its `max_time` has passed, so its lock lapses.
#[tokio::test(start_paused = true)]
async fn heartbeat_lets_the_lock_of_a_job_past_max_time_lapse() {
    let queue = queue_without_workers(10).await;
    let dispatcher = dispatcher();
    let as_dyn: Arc<dyn LockStore> = Arc::new(Saves(queue.clone()));
    let job = with_base(
        "heartbeat",
        Base::with_id("hb-overdue").with_max_time(DISPATCH_LOCK_TIMEOUT),
        false,
    );
    put(&queue, job.clone()).await;
    dispatcher.dispatch(&job).unwrap();
    let dispatched = mod_count(&job);
    dispatcher.start_heartbeat(Arc::downgrade(&as_dyn));

    tokio::time::sleep(DISPATCH_LOCK_TIMEOUT * 2).await;
    let after_max_time = mod_count(&job);
    assert!(
        after_max_time > dispatched,
        "refreshed while within max_time"
    );
    tokio::time::sleep(DISPATCH_LOCK_TIMEOUT * 2).await;
    assert_eq!(
        mod_count(&job),
        after_max_time,
        "not refreshed past max_time"
    );
    dispatcher.close().await;
    queue.close().await;
}

/// A started queue keeps the locks of the jobs it hands out alive with its own dispatcher's
/// heartbeat, at its configured lock timeout, until they complete.
#[tokio::test(start_paused = true)]
async fn queue_heartbeat_refreshes_running_jobs() {
    let queue = LimitedSizeQueue::with_options(amboy_queue_local::LocalQueueOptions {
        capacity: 4,
        lock_timeout: DISPATCH_LOCK_TIMEOUT,
    })
    .unwrap();
    queue.set_runner(Arc::new(NoWorkers::default())).unwrap();
    queue.start().await.unwrap();
    assert_eq!(queue.info().lock_timeout, DISPATCH_LOCK_TIMEOUT);
    put(&queue, quick("queue-heartbeat", "qh")).await;
    let job = timeout(SOON, queue.next()).await.unwrap().unwrap();
    let dispatched = mod_count(&job);
    tokio::time::sleep(DISPATCH_LOCK_TIMEOUT).await;
    assert!(
        mod_count(&job) >= dispatched + 3,
        "refreshed every lock timeout / 4"
    );
    queue.complete(&job).await.unwrap();
    let completed = mod_count(&job);
    tokio::time::sleep(DISPATCH_LOCK_TIMEOUT).await;
    assert_eq!(mod_count(&job), completed);
    queue.close().await;
}

/// A job completed (or released) while a refresh is under way is not refreshed back into
/// progress: its status stays what completion made it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_under_way_leaves_completed_and_released_jobs_alone() {
    let queue = ScriptedStore::new(true, |_| Ok(()));
    let dispatcher = dispatcher();
    let jobs: Vec<JobRef> = ["race-a", "race-b", "race-c"]
        .iter()
        .map(|id| quick("refresh-race", id))
        .collect();
    for job in &jobs {
        dispatcher.dispatch(job).unwrap();
    }
    let refresh = tokio::spawn({
        let dispatcher = dispatcher.clone();
        let queue = queue.clone();
        async move { dispatcher.refresh_locks(&*queue as &dyn Queue).await }
    });
    // The refresh is saving one job and will go on to the other two.
    timeout(SOON, queue.first_entered.notified())
        .await
        .expect("the refresh saves a job");
    let saving = queue.saves.lock().unwrap()[0].clone();
    let others: Vec<&JobRef> = jobs
        .iter()
        .filter(|job| saving != format!("{}#0", job.id()))
        .collect();
    let [completed, released] = others[..] else {
        unreachable!()
    };
    // What a queue's complete does: the dispatcher lets go, then the job is marked complete.
    dispatcher.complete(completed);
    completed.base().mark_complete();
    dispatcher.release(released);
    let before = [completed, released].map(|job| job.status());

    queue.first_release.notify_one();
    timeout(SOON, refresh).await.unwrap().unwrap();
    let after = [completed, released].map(|job| job.status());
    assert!(
        after[0].completed && !after[0].in_progress,
        "{:?}",
        after[0]
    );
    assert!(!after[1].in_progress, "{:?}", after[1]);
    assert_eq!(after, before, "neither was touched by the refresh");
}

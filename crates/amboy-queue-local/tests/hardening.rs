//! Regression tests for defects a review of the local queues found (issue 6): a dropped queue
//! that ran on for ever, copies completing running jobs, the dispatcher mixing up attempts and
//! never stopping a job whose lock was lost, dependency rechecks on every completion and file
//! checks on runtime threads, stored jobs that cannot be decoded, and JSON coded under the
//! store's lock.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use amboy_core::dependency::{DependencyError, JobEdges, Manager, State};
use amboy_core::{Base, Dispatcher, Error, Job, JobContext, JobError, JobOutcome, JobRef, Queue};
use amboy_queue_local::{DependencyOrderedQueue, LimitedSizeQueue, LimitedSizeSerializableQueue};
use amboy_registry::JobInterchange;
use amboy_runner::LocalWorkers;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::sync::Semaphore;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use support::ScriptedStore;

/// Generous bound for what should happen at once.
const SOON: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// A job that reports its runs and can be held
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Latch {
    started: Semaphore,
    release: Semaphore,
    /// Runs stopped before they finished (their future dropped).
    cancelled: AtomicUsize,
}

static LATCHES: LazyLock<Mutex<HashMap<String, Arc<Latch>>>> = LazyLock::new(Default::default);

fn latch(key: &str) -> Arc<Latch> {
    LATCHES
        .lock()
        .unwrap()
        .entry(key.to_owned())
        .or_insert_with(|| {
            Arc::new(Latch {
                started: Semaphore::new(0),
                release: Semaphore::new(0),
                cancelled: AtomicUsize::new(0),
            })
        })
        .clone()
}

/// Counts a run as cancelled if dropped before it is disarmed.
struct Armed(Arc<Latch>, bool);

impl Drop for Armed {
    fn drop(&mut self) {
        if self.1 {
            self.0.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[derive(Clone, Serialize, Deserialize)]
struct Held {
    base: Base,
    key: String,
    block: bool,
}

#[typetag::serde(name = "hardening-held")]
#[async_trait::async_trait]
impl Job for Held {
    fn base(&self) -> &Base {
        &self.base
    }

    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        let latch = latch(&self.key);
        latch.started.add_permits(1);
        if self.block {
            let mut armed = Armed(latch.clone(), true);
            if let Ok(permit) = latch.release.acquire().await {
                permit.forget();
            }
            armed.1 = false;
        }
        Ok(())
    }
}

fn held(key: &str, base: Base, block: bool) -> Arc<Held> {
    Arc::new(Held {
        base,
        key: key.to_owned(),
        block,
    })
}

async fn started(latch: &Latch) {
    timeout(SOON, latch.started.acquire())
        .await
        .expect("the job starts")
        .unwrap()
        .forget();
}

/// Waits until `check` holds, looking every few milliseconds.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    timeout(SOON, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what} never happened"));
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

// ---------------------------------------------------------------------------------------------
// Defect 1: a started queue dropped without `close`
// ---------------------------------------------------------------------------------------------

/// The workers held the queue strongly, so a started queue dropped without `close` ran on for
/// ever: its workers, timer and heartbeat, and its running job. Dropping the last handle now
/// closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_started_queue_stops_its_tasks_and_running_job() {
    let before = alive_tasks();
    let key = "drop-local";
    let latch = latch(key);
    let queue = LimitedSizeQueue::new(8);
    queue.set_runner(LocalWorkers::new(3)).unwrap();
    queue.start().await.unwrap();
    let job: JobRef = held(key, Base::with_id("running"), true);
    queue.put(job.clone()).await.unwrap();
    started(&latch).await;
    assert!(alive_tasks() > before, "workers and background tasks run");

    drop(queue);
    eventually("the running job's cancellation", || {
        latch.cancelled.load(Ordering::SeqCst) == 1
    })
    .await;
    eventually("every task's end", || alive_tasks() == before).await;
    // Nothing holds the job but this test: the queue itself is gone.
    eventually("the queue's release of the job", || {
        Arc::strong_count(&job) == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_started_serializable_queue_stops_its_tasks_and_running_job() {
    let before = alive_tasks();
    let key = "drop-serializable";
    let latch = latch(key);
    let queue = LimitedSizeSerializableQueue::new(8);
    queue.set_runner(LocalWorkers::new(2)).unwrap();
    queue.start().await.unwrap();
    queue
        .put(held(key, Base::with_id("running"), true))
        .await
        .unwrap();
    started(&latch).await;
    drop(queue);
    eventually("the running job's cancellation", || {
        latch.cancelled.load(Ordering::SeqCst) == 1
    })
    .await;
    eventually("every task's end", || alive_tasks() == before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_an_idle_started_queue_stops_its_tasks() {
    let before = alive_tasks();
    let queue = DependencyOrderedQueue::new(4);
    queue.set_runner(LocalWorkers::new(4)).unwrap();
    queue.start().await.unwrap();
    assert!(
        alive_tasks() >= before + 6,
        "4 workers, a timer, a heartbeat"
    );
    drop(queue);
    eventually("every task's end", || alive_tasks() == before).await;
}

// ---------------------------------------------------------------------------------------------
// Defect 2: completing a copy of a running job
// ---------------------------------------------------------------------------------------------

/// A clone or a decoded copy of a running job carries its in-progress status and owner; the
/// queue used to accept it, counting the job completed twice and releasing its scopes while it
/// ran. Only the job the queue dispatched completes it now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_of_a_running_job_cannot_complete_it() {
    let key = "copy-running";
    let latch = latch(key);
    let queue = LimitedSizeQueue::new(4);
    queue.set_runner(LocalWorkers::new(1)).unwrap();
    queue.start().await.unwrap();
    let original = held(key, Base::with_id("original").with_scopes(["copied"]), true);
    queue.put(original.clone()).await.unwrap();
    started(&latch).await;

    let cloned: JobRef = Arc::new((*original).clone());
    let decoded = JobInterchange::from_job(&*original)
        .unwrap()
        .resolve()
        .unwrap();
    for copy in [cloned, decoded] {
        assert!(copy.status().in_progress, "the copy says it runs here");
        let error = queue.complete(&copy).await.expect_err("a copy is refused");
        assert!(error.is_job_not_found(), "{error}");
    }
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.completed, stats.running), (0, 1), "{stats}");
    // The running job still holds its scope.
    let rival = held(
        key,
        Base::with_id("rival")
            .with_scopes(["copied"])
            .with_enqueue_all_scopes(),
        false,
    );
    let error = queue.put(rival).await.expect_err("the scope is held");
    assert!(error.is_duplicate_scope(), "{error}");

    latch.release.add_permits(1);
    let outcome = timeout(SOON, amboy_core::wait_job(&*queue, "original"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome, JobOutcome::Completed);
    let stats = queue.stats().await.unwrap();
    assert_eq!(
        (stats.completed, stats.total),
        (1, 1),
        "counted once: {stats}"
    );
    queue.close().await;
}

// ---------------------------------------------------------------------------------------------
// Defect 4: the dispatcher's heartbeat, by attempt
// ---------------------------------------------------------------------------------------------

fn attempt(id: &str, attempt: u32) -> JobRef {
    let job = held("dispatcher", Base::with_id(id).with_retryable(true), false);
    job.base().metadata().retry_info.current_attempt = attempt;
    job
}

fn mod_count(job: &JobRef) -> u64 {
    job.status().modification_count
}

/// The heartbeat snapshots the tracked copies, then saves them one by one. Attempt 0 of a
/// retried job completes and attempt 1 is dispatched while the heartbeat is under way; the
/// heartbeat's save of attempt 0 fails. Keyed by ID, the dispatcher used to refresh attempt 0
/// as in progress again and, on the failed save, stop tracking attempt 1, whose lock then
/// lapsed while it ran. Keyed by (ID, attempt) and instance, attempt 1 is untouched.
#[tokio::test]
async fn a_failed_refresh_of_an_old_attempt_leaves_the_next_attempt_tracked() {
    let dispatcher = Arc::new(Dispatcher::new(Arc::from("store"), Duration::from_secs(60)));
    let store = ScriptedStore::new(true, |job| {
        if job.retry_info().current_attempt == 0 && job.id() == "retried" {
            Err(Error::job_not_found_because(job.id(), "attempt 0 finished"))
        } else {
            Ok(())
        }
    });
    let old = attempt("retried", 0);
    let other = attempt("other", 0);
    dispatcher.dispatch(&old).unwrap();
    dispatcher.dispatch(&other).unwrap();

    let heartbeat = tokio::spawn({
        let (dispatcher, store) = (dispatcher.clone(), store.clone());
        async move { dispatcher.refresh_locks(&*store as &dyn Queue).await }
    });
    store.first_entered.notified().await;
    // Meanwhile: attempt 0 completes, attempt 1 is dispatched and starts.
    assert!(dispatcher.forget(&old));
    old.base().mark_complete();
    let next = attempt("retried", 1);
    dispatcher.dispatch(&next).unwrap();
    let run = next
        .base()
        .run_token(&CancellationToken::new())
        .expect("watched");
    let next_count = mod_count(&next);
    store.first_release.notify_one();
    heartbeat.await.unwrap();

    assert!(
        dispatcher.is_dispatched("retried", 1),
        "attempt 1 is tracked"
    );
    assert!(!run.is_cancelled(), "attempt 1 runs on");
    assert!(next.error().is_none(), "{:?}", next.error());
    let status = old.status();
    assert!(
        status.completed && !status.in_progress,
        "attempt 0 is not marked in progress again once finished: {status:?}"
    );
    // The next heartbeat refreshes attempt 1 (and the other job), not attempt 0.
    let refreshed = dispatcher.refresh_locks(&*store as &dyn Queue).await;
    assert_eq!(refreshed, 2);
    assert_eq!(mod_count(&next), next_count + 1);
}

/// A copy whose save is refused lost its lock: its run is interrupted and it is no longer
/// refreshed; the other copies are refreshed at every heartbeat.
#[tokio::test]
async fn a_lost_lock_interrupts_its_run_and_the_others_keep_their_locks() {
    let dispatcher = Dispatcher::new(Arc::from("store"), Duration::from_secs(60));
    let store = ScriptedStore::new(false, |job| {
        if job.id() == "lost" {
            Err(Error::job_not_found_because(job.id(), "taken over"))
        } else {
            Ok(())
        }
    });
    let lost = attempt("lost", 0);
    let kept = attempt("kept", 0);
    dispatcher.dispatch(&lost).unwrap();
    dispatcher.dispatch(&kept).unwrap();
    let parent = CancellationToken::new();
    let lost_run = lost.base().run_token(&parent).unwrap();
    let kept_run = kept.base().run_token(&parent).unwrap();
    let kept_count = mod_count(&kept);

    assert_eq!(dispatcher.refresh_locks(&*store as &dyn Queue).await, 1);
    assert!(lost_run.is_cancelled(), "the run that lost its lock stops");
    assert!(!dispatcher.is_dispatched("lost", 0));
    let error = lost.error().expect("the reason is recorded");
    assert!(error.message().contains("lost the lock"), "{error}");
    assert!(!kept_run.is_cancelled());
    assert_eq!(mod_count(&kept), kept_count + 1);

    assert_eq!(dispatcher.refresh_locks(&*store as &dyn Queue).await, 1);
    assert_eq!(mod_count(&kept), kept_count + 2, "refreshed again");
}

/// A save that fails without refusing the lock (the store is unreachable, say) is tried again:
/// the copy keeps its lock, and its count stays one ahead of the store's at most.
#[tokio::test]
async fn a_transient_refresh_failure_keeps_the_lock() {
    let dispatcher = Dispatcher::new(Arc::from("store"), Duration::from_secs(60));
    let failures = Arc::new(AtomicUsize::new(1));
    let store = ScriptedStore::new(false, {
        let failures = failures.clone();
        move |job| {
            if failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                Err(Error::Backend {
                    message: format!("cannot reach the store to save '{}'", job.id()),
                    source: None,
                })
            } else {
                Ok(())
            }
        }
    });
    let job = attempt("flaky", 0);
    dispatcher.dispatch(&job).unwrap();
    let run = job.base().run_token(&CancellationToken::new()).unwrap();
    let count = mod_count(&job);
    assert_eq!(dispatcher.refresh_locks(&*store as &dyn Queue).await, 0);
    assert!(dispatcher.is_dispatched("flaky", 0));
    assert_eq!(mod_count(&job), count, "the failed refresh is undone");
    assert_eq!(dispatcher.refresh_locks(&*store as &dyn Queue).await, 1);
    assert_eq!(mod_count(&job), count + 1);
    assert!(!run.is_cancelled() && job.error().is_none());
}

// ---------------------------------------------------------------------------------------------
// Defect 7: dependency rechecks
// ---------------------------------------------------------------------------------------------

static STATE_CALLS: AtomicUsize = AtomicUsize::new(0);

/// Blocked for ever, counting how often it is asked.
#[derive(Debug, Default, Serialize, Deserialize)]
struct CountingBlocked {
    edges: JobEdges,
}

#[typetag::serde(name = "hardening-counting-blocked")]
impl Manager for CountingBlocked {
    fn state(&self) -> State {
        STATE_CALLS.fetch_add(1, Ordering::SeqCst);
        State::Blocked
    }

    fn edges(&self) -> Vec<String> {
        self.edges.edges()
    }

    fn add_edge(&self, id: &str) -> Result<(), DependencyError> {
        self.edges.add_edge(id)
    }
}

/// Every completion used to ask every manager blocked by its state again: B blocked jobs and
/// N completions made B × N calls. A completion cannot change such a state (its edges are met
/// already); they are asked again every second only. The clock is paused: virtual seconds pass
/// only when every task idles.
#[tokio::test(start_paused = true)]
async fn completions_do_not_ask_blocked_managers_again() {
    const BLOCKED: usize = 20;
    const FREE: usize = 400;
    let queue = DependencyOrderedQueue::new(BLOCKED + FREE);
    queue.set_runner(LocalWorkers::new(2)).unwrap();
    queue.start().await.unwrap();
    for n in 0..BLOCKED {
        let job = held("rechecks", Base::with_id(format!("blocked-{n}")), false);
        job.set_dependency(Arc::new(CountingBlocked::default()));
        queue.put(job).await.unwrap();
    }
    let asked_at_put = STATE_CALLS.load(Ordering::SeqCst);
    assert_eq!(asked_at_put, BLOCKED);
    for n in 0..FREE {
        queue
            .put(held("rechecks", Base::with_id(format!("free-{n}")), false))
            .await
            .unwrap();
    }
    while queue.stats().await.unwrap().completed < FREE {
        tokio::task::yield_now().await;
    }
    let asked = STATE_CALLS.load(Ordering::SeqCst) - asked_at_put;
    assert!(
        asked <= BLOCKED * 3,
        "{asked} calls for {FREE} completions: at most a few rechecks of {BLOCKED} jobs"
    );
    // The periodic recheck still asks them.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(STATE_CALLS.load(Ordering::SeqCst) - asked_at_put > asked);
    assert_eq!(queue.stats().await.unwrap().blocked, BLOCKED);
    queue.close().await;
}

static ASKED_ON: LazyLock<Mutex<Vec<std::thread::ThreadId>>> = LazyLock::new(Default::default);

/// A manager that does blocking I/O, and records the thread it is asked on.
#[derive(Debug, Default, Serialize, Deserialize)]
struct ReadsFiles {
    edges: JobEdges,
}

#[typetag::serde(name = "hardening-reads-files")]
impl Manager for ReadsFiles {
    fn state(&self) -> State {
        ASKED_ON.lock().unwrap().push(std::thread::current().id());
        State::Ready
    }

    fn edges(&self) -> Vec<String> {
        self.edges.edges()
    }

    fn add_edge(&self, id: &str) -> Result<(), DependencyError> {
        self.edges.add_edge(id)
    }

    fn does_blocking_io(&self) -> bool {
        true
    }
}

/// `local-file` and `create-file` used to `stat()` on the runtime's threads, at put and on every
/// recheck. Managers doing blocking I/O are asked on a blocking thread.
#[tokio::test(flavor = "current_thread")]
async fn managers_doing_blocking_io_are_asked_off_the_runtime() {
    assert!(amboy_core::dependency::LocalFile::default().does_blocking_io());
    assert!(amboy_core::dependency::CreatesFile::default().does_blocking_io());
    let runtime_thread = std::thread::current().id();
    let queue = DependencyOrderedQueue::new(8);
    queue.set_runner(LocalWorkers::new(1)).unwrap();
    queue.start().await.unwrap();
    let first = held("blocking-io", Base::with_id("first"), false);
    queue.put(first).await.unwrap();
    let job = held("blocking-io", Base::with_id("reads-files"), false);
    let manager = ReadsFiles::default();
    manager.add_edge("first").unwrap();
    job.set_dependency(Arc::new(manager));
    queue.put(job).await.unwrap();
    let outcome = timeout(SOON, amboy_core::wait_job(&*queue, "reads-files"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome, JobOutcome::Completed);
    let asked_on = ASKED_ON.lock().unwrap().clone();
    assert!(!asked_on.is_empty());
    assert!(
        asked_on.iter().all(|thread| *thread != runtime_thread),
        "asked on the runtime's thread"
    );
    queue.close().await;
}

/// A job waiting for a judgement of its manager off the runtime (it does blocking I/O) is not
/// blocked: it may be ready, and counted blocked it would let `wait` end before it ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_waiting_for_its_managers_judgement_is_not_blocked() {
    // Not started: nothing judges it yet.
    let queue = DependencyOrderedQueue::new(4);
    let job = held("unjudged", Base::with_id("creates"), false);
    job.set_dependency(Arc::new(amboy_core::dependency::CreatesFile::new(
        "/nonexistent/amboy-unjudged-test-file",
    )));
    queue.put(job).await.unwrap();
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.blocked, stats.pending), (0, 1), "{stats}");
    assert!(!stats.is_complete(), "{stats}");
}

// ---------------------------------------------------------------------------------------------
// Section 2: stored jobs that cannot be decoded
// ---------------------------------------------------------------------------------------------

/// Encodes, but never decodes: its field refuses.
#[derive(Serialize, Deserialize)]
struct Fragile {
    base: Base,
    #[serde(deserialize_with = "refuse")]
    payload: u32,
}

fn refuse<'de, D: Deserializer<'de>>(_: D) -> Result<u32, D::Error> {
    Err(serde::de::Error::custom("this field never decodes"))
}

#[typetag::serde(name = "hardening-fragile")]
#[async_trait::async_trait]
impl Job for Fragile {
    fn base(&self) -> &Base {
        &self.base
    }

    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

static VERSION: AtomicI32 = AtomicI32::new(1);

/// Its version is whatever the test says: a new release of the program, changing it.
#[derive(Serialize, Deserialize)]
struct Versioned {
    base: Base,
}

#[typetag::serde(name = "hardening-versioned")]
#[async_trait::async_trait]
impl Job for Versioned {
    fn base(&self) -> &Base {
        &self.base
    }

    fn version(&self) -> i32 {
        VERSION.load(Ordering::SeqCst)
    }

    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

async fn serializable_queue(workers: usize) -> Arc<LimitedSizeSerializableQueue> {
    let queue = LimitedSizeSerializableQueue::new(16);
    queue.set_runner(LocalWorkers::new(workers)).unwrap();
    queue
}

/// What a set-aside job must look like: completed with the reason naming it, counted, never
/// run, and never holding up a waiter.
async fn assert_set_aside(queue: &LimitedSizeSerializableQueue, id: &str, reason: &str) {
    timeout(SOON, amboy_core::wait(queue))
        .await
        .expect("waiting on the queue ends")
        .unwrap();
    let stats = queue.stats().await.unwrap();
    assert_eq!(
        (stats.completed, stats.running, stats.pending),
        (1, 0, 0),
        "{stats}"
    );
    assert_eq!(stats.context.get("undecodable"), Some(&1.into()), "{stats}");
    assert!(stats.is_complete());

    let infos: Vec<_> = futures::StreamExt::collect::<Vec<_>>(queue.job_info().await).await;
    let info = infos[0].as_ref().unwrap();
    assert_eq!(info.id, id);
    assert!(info.status.completed && !info.status.in_progress);
    let error = info.status.errors.join("\n");
    assert!(
        error.contains("cannot be decoded") && error.contains(id) && error.contains(reason),
        "{error}"
    );
    let error = match queue.get(id).await {
        Ok(_) => panic!("the job cannot be decoded"),
        Err(error) => error,
    };
    assert!(error.to_string().contains(id), "{error}");
    let waited = timeout(SOON, amboy_core::wait_job(queue, id))
        .await
        .expect("wait_job never hangs on it");
    assert!(waited.is_err(), "wait_job reports the decoding error");
    let results = futures::StreamExt::collect::<Vec<_>>(queue.results().await).await;
    assert!(
        results.is_empty(),
        "a job that cannot be decoded is no result"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_fields_do_not_decode_is_set_aside() {
    let queue = serializable_queue(2).await;
    queue.start().await.unwrap();
    queue
        .put(Arc::new(Fragile {
            base: Base::with_id("fragile"),
            payload: 7,
        }))
        .await
        .expect("it encodes");
    assert_set_aside(&queue, "fragile", "this field never decodes").await;
    queue.close().await;
}

/// Encodes until it has run; then its `Serialize` panics.
#[derive(Deserialize)]
struct Unwritable {
    base: Base,
    #[serde(skip)]
    ran: std::sync::atomic::AtomicBool,
}

impl Serialize for Unwritable {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        assert!(
            !self.ran.load(Ordering::SeqCst),
            "this job cannot be written back"
        );
        #[derive(Serialize)]
        struct Fields<'a> {
            base: &'a Base,
        }
        Fields { base: &self.base }.serialize(serializer)
    }
}

#[typetag::serde(name = "hardening-unwritable")]
#[async_trait::async_trait]
impl Job for Unwritable {
    fn base(&self) -> &Base {
        &self.base
    }

    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        self.ran.store(true, Ordering::SeqCst);
        Ok(())
    }
}

/// A job whose final state cannot be encoded completes, failed with the reason, with the fields
/// it was stored with; it does not stay running (its lock refreshed for ever), and a job asking
/// to retry does not retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_final_state_cannot_be_encoded_completes_failed() {
    let queue = serializable_queue(1).await;
    for id in ["unwritable", "retrier"] {
        queue
            .put(Arc::new(Unwritable {
                base: Base::with_id(id).with_retryable(id == "retrier"),
                ran: Default::default(),
            }))
            .await
            .expect("before it runs, it encodes");
    }
    queue.start().await.unwrap();
    timeout(SOON, amboy_core::wait(&*queue))
        .await
        .expect("every job finishes")
        .unwrap();
    let stats = queue.stats().await.unwrap();
    assert_eq!(
        (stats.completed, stats.running, stats.pending),
        (2, 0, 0),
        "{stats}"
    );
    for id in ["unwritable", "retrier"] {
        let stored = queue.get(id).await.expect("its stored fields decode");
        let status = stored.status();
        assert!(status.completed && !status.in_progress, "{id}: {status:?}");
        assert!(
            status
                .errors
                .iter()
                .any(|e| e.contains("could not be stored")
                    && e.contains(&format!("'{id}'"))
                    && e.contains("encoding it panicked: this job cannot be written back")),
            "{id}: {:?}",
            status.errors
        );
        assert!(!stored.retry_info().should_retry(), "{id}");
    }
    queue.close().await;
}

/// A job put as in progress (under another owner's lock) is refused, naming it, rather than
/// stored and never dispatched, holding up `wait` for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_put_in_progress_is_refused() {
    let queue = serializable_queue(1).await;
    let running = Unwritable {
        base: Base::with_id("running"),
        ran: Default::default(),
    };
    {
        let mut meta = running.base.metadata();
        meta.status.in_progress = true;
        meta.status.owner = Some(Arc::from("elsewhere"));
        meta.status.modification_time = Some(chrono::Utc::now());
    }
    let envelope = JobInterchange::from_job(&running).expect("encodes");
    let error = queue.put_interchange(envelope).await.expect_err("refused");
    assert!(
        matches!(&error, Error::InvalidJob { id, .. } if id == "running"),
        "{error}"
    );
    assert_eq!(queue.stats().await.unwrap().total, 0);
    let error = queue.put(Arc::new(running)).await.expect_err("refused");
    assert!(matches!(&error, Error::InvalidJob { .. }), "{error}");
}

/// A finished job put in its stored form (a restored dump) holds no scope: nothing would ever
/// release it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_job_put_holds_no_scope() {
    let queue = serializable_queue(1).await;
    let done = Unwritable {
        base: Base::with_id("done")
            .with_scopes(["x"])
            .with_enqueue_all_scopes(),
        ran: Default::default(),
    };
    done.base.metadata().status.completed = true;
    let envelope = JobInterchange::from_job(&done).expect("encodes");
    queue.put_interchange(envelope).await.expect("stored");
    let next = Unwritable {
        base: Base::with_id("next")
            .with_scopes(["x"])
            .with_enqueue_all_scopes(),
        ran: Default::default(),
    };
    queue.put(Arc::new(next)).await.expect("the scope is free");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_stored_at_another_version_is_set_aside() {
    let queue = serializable_queue(1).await;
    queue
        .put(Arc::new(Versioned {
            base: Base::with_id("versioned"),
        }))
        .await
        .unwrap();
    // A new release: the registered version moved on before the job ran.
    VERSION.store(2, Ordering::SeqCst);
    queue.start().await.unwrap();
    assert_set_aside(&queue, "versioned", "stored at version 1").await;
    queue.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_of_an_unknown_type_is_set_aside() {
    let queue = serializable_queue(1).await;
    let job = held("unknown", Base::with_id("stranger"), false);
    let mut envelope = JobInterchange::from_job(&*job).unwrap();
    envelope.type_name = "not-registered-here".to_owned();
    queue
        .put_interchange(envelope)
        .await
        .expect("accepted, as a database accepts rows");
    queue.start().await.unwrap();
    assert_set_aside(&queue, "stranger", "not-registered-here").await;
    queue.close().await;
}

// ---------------------------------------------------------------------------------------------
// Defect 10: coding jobs under the store's lock
// ---------------------------------------------------------------------------------------------

static NOSY_QUEUE: LazyLock<Mutex<Weak<LimitedSizeSerializableQueue>>> =
    LazyLock::new(|| Mutex::new(Weak::new()));
static NOSY_LOOKS: AtomicUsize = AtomicUsize::new(0);

/// Reads its queue's stats while it is encoded or decoded: a codec holding the store's lock
/// would deadlock (the lock is not reentrant).
fn look_at_the_queue() {
    let queue = NOSY_QUEUE.lock().unwrap().upgrade();
    if let Some(queue) = queue {
        futures::executor::block_on(queue.stats()).unwrap();
        NOSY_LOOKS.fetch_add(1, Ordering::SeqCst);
    }
}

#[derive(Debug, Clone, Copy)]
struct Nosy;

impl Serialize for Nosy {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        look_at_the_queue();
        serializer.serialize_unit()
    }
}

impl<'de> Deserialize<'de> for Nosy {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        <()>::deserialize(deserializer)?;
        look_at_the_queue();
        Ok(Nosy)
    }
}

#[derive(Serialize, Deserialize)]
struct NosyJob {
    base: Base,
    nosy: Nosy,
}

#[typetag::serde(name = "hardening-nosy")]
#[async_trait::async_trait]
impl Job for NosyJob {
    fn base(&self) -> &Base {
        &self.base
    }

    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_encoded_and_decoded_outside_the_store_lock() {
    let queue = serializable_queue(1).await;
    *NOSY_QUEUE.lock().unwrap() = Arc::downgrade(&queue);
    queue.start().await.unwrap();
    queue
        .put(Arc::new(NosyJob {
            base: Base::with_id("nosy"),
            nosy: Nosy,
        }))
        .await
        .unwrap();
    let outcome = timeout(SOON, amboy_core::wait_job(&*queue, "nosy"))
        .await
        .expect("no codec deadlocks on the store's lock")
        .unwrap();
    assert_eq!(outcome, JobOutcome::Completed);
    let results = timeout(
        SOON,
        futures::StreamExt::collect::<Vec<_>>(queue.results().await),
    )
    .await
    .unwrap();
    assert_eq!(results.len(), 1);
    // Encoded at put and completion, decoded at dispatch, get and results.
    assert!(NOSY_LOOKS.load(Ordering::SeqCst) >= 5);
    *NOSY_QUEUE.lock().unwrap() = Weak::new();
    queue.close().await;
}

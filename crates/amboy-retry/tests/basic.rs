//! `BasicRetryHandler` through its public API, against an in-memory mock retryable queue that
//! stores copies of every attempt under `(id, attempt)` and records every call: amboy's
//! `retry_test.go` (`TestNewBasicRetryHandler`, `TestRetryHandlerImplementations`), the
//! regression test for decision 2 (a retry-handler worker survives a panic) and the handler's
//! own additions (buffer capacity, concurrency, closing mid-retry).

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use amboy_core::{
    Base, Error, Job, JobContext, JobError, JobInfoStream, JobRef, JobRetryOptions, JobStatusInfo,
    JobStream, LOCK_TIMEOUT, Queue, QueueInfo, QueueStats, Result, RetryHandler,
    RetryHandlerOptions, RetryableQueue, Runner,
};
use amboy_retry::BasicRetryHandler;
use chrono::{DateTime, TimeDelta, Utc};
use futures::FutureExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, sleep, timeout};

/// Generous bound for things that should happen at once (virtual time in paused tests).
const SOON: Duration = Duration::from_secs(10);

const QUEUE_ID: &str = "retry-test-queue";

// ---------------------------------------------------------------------------------------------
// Job types
// ---------------------------------------------------------------------------------------------

/// A retryable job with a body of its own, to check the next attempt is a copy of the job.
#[derive(Serialize, Deserialize)]
struct RetryTestJob {
    base: Base,
    payload: String,
}

#[typetag::serde(name = "retry-test-job")]
#[async_trait::async_trait]
impl Job for RetryTestJob {
    fn base(&self) -> &Base {
        &self.base
    }

    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

/// A job as the runner hands it to the handler: retryable, asking to retry (if `needs_retry`),
/// completed, locked by the queue.
fn retrying_job(id: &str, needs_retry: bool) -> JobRef {
    let job = RetryTestJob {
        base: Base::with_id(id).with_retryable(true),
        payload: format!("payload of {id}"),
    };
    let now = Utc::now();
    {
        let mut meta = job.base.metadata();
        meta.retry_info.needs_retry = needs_retry;
        meta.retry_info.base_job_id = id.to_owned();
        meta.status = JobStatusInfo {
            owner: Some(Arc::from(QUEUE_ID)),
            completed: true,
            modification_time: Some(now),
            modification_count: 3,
            ..Default::default()
        };
        meta.time_info.created = Some(now);
        meta.time_info.start = Some(now);
        meta.time_info.end = Some(now);
    }
    Arc::new(job)
}

/// A copy of `job` through its serialized form, metadata included, as serializable queues
/// store jobs.
fn copy(job: &JobRef) -> JobRef {
    let value = serde_json::to_value(&**job).expect("the job serializes");
    let copy: Box<dyn Job> = serde_json::from_value(value).expect("the job deserializes");
    let meta = job.base().metadata().clone();
    *copy.base().metadata() = meta;
    Arc::from(copy)
}

fn payload(job: &JobRef) -> &str {
    let any: &dyn std::any::Any = &**job;
    &any.downcast_ref::<RetryTestJob>()
        .expect("a retry test job")
        .payload
}

fn attempt_of(job: &JobRef) -> u32 {
    job.base().metadata().retry_info.current_attempt
}

fn errors_of(job: &JobRef) -> String {
    job.error()
        .map(|e| e.message().to_owned())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// The mock retryable queue
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    GetAttempt,
    Save,
    CompleteRetryingAndPut,
    CompleteRetrying,
}

#[derive(Debug, Clone)]
struct Call {
    kind: Kind,
    id: String,
    at: Instant,
    /// For `CompleteRetryingAndPut`: whether the job to complete still asked to retry.
    needs_retry: bool,
}

/// Makes the error a mock method returns for a job ID.
type ErrorFn = fn(&str) -> Error;

/// How the mock misbehaves.
#[derive(Default)]
struct Knobs {
    /// The error `complete_retrying_and_put` returns, before doing anything.
    put_error: Option<ErrorFn>,
    /// Whether `complete_retrying_and_put` marks the job to complete before failing.
    mutate_then_fail: bool,
    /// The error `complete_retrying` returns.
    complete_retrying_error: Option<ErrorFn>,
    /// The methods that panic, by job ID.
    panic_on: HashSet<(Kind, String)>,
    /// `get_attempt` returns the stored job itself, not a copy.
    live: bool,
    /// `get_attempt` waits for a permit of this gate.
    gate: Option<Arc<Semaphore>>,
    /// The error `complete` returns.
    complete_error: Option<ErrorFn>,
    /// How many `save` calls fail, as an unreachable store fails, before they succeed.
    save_failures: usize,
}

/// The next attempt a `complete_retrying_and_put` call received, as it received it.
struct Put {
    to_complete_attempt: u32,
    to_put: JobRef,
    to_put_snapshot: amboy_core::Metadata,
    to_complete: JobRef,
}

struct MockQueue {
    me: Weak<MockQueue>,
    attempts: Mutex<BTreeMap<(String, u32), JobRef>>,
    calls: watch::Sender<Vec<Call>>,
    knobs: Mutex<Knobs>,
    puts: Mutex<Vec<Put>>,
    handler: Mutex<Option<Arc<dyn RetryHandler>>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl MockQueue {
    fn new() -> Arc<Self> {
        Arc::new_cyclic(|me| MockQueue {
            me: me.clone(),
            attempts: Mutex::new(BTreeMap::new()),
            calls: watch::Sender::new(Vec::new()),
            knobs: Mutex::new(Knobs::default()),
            puts: Mutex::new(Vec::new()),
            handler: Mutex::new(None),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        })
    }

    fn knobs(&self) -> parking_lot::MutexGuard<'_, Knobs> {
        self.knobs.lock()
    }

    fn record(&self, kind: Kind, id: &str, needs_retry: bool) {
        self.calls.send_modify(|calls| {
            calls.push(Call {
                kind,
                id: id.to_owned(),
                at: Instant::now(),
                needs_retry,
            })
        });
        if self.knobs().panic_on.contains(&(kind, id.to_owned())) {
            panic!("mock queue panicked in {kind:?} for '{id}'");
        }
    }

    fn calls(&self, kind: Kind, id: &str) -> Vec<Call> {
        self.calls
            .borrow()
            .iter()
            .filter(|call| call.kind == kind && call.id == id)
            .cloned()
            .collect()
    }

    fn count(&self, kind: Kind, id: &str) -> usize {
        self.calls(kind, id).len()
    }

    fn total_calls(&self) -> usize {
        self.calls.borrow().len()
    }

    /// Waits (boundedly) until `id` has seen `n` calls of `kind`.
    async fn wait_for(&self, kind: Kind, id: &str, n: usize) {
        let mut calls = self.calls.subscribe();
        let seen = timeout(
            SOON,
            calls.wait_for(|calls| {
                calls
                    .iter()
                    .filter(|call| call.kind == kind && call.id == id)
                    .count()
                    >= n
            }),
        )
        .await;
        assert!(
            seen.is_ok(),
            "'{id}' did not see {n} {kind:?} call(s); calls: {:?}",
            self.calls.borrow()
        );
    }

    fn stored(&self, id: &str, attempt: u32) -> Option<JobRef> {
        self.attempts.lock().get(&(id.to_owned(), attempt)).cloned()
    }

    fn store(&self, job: &JobRef) {
        self.attempts
            .lock()
            .insert((job.id().to_owned(), attempt_of(job)), copy(job));
    }

    fn key(job: &JobRef) -> (String, u32) {
        (job.id().to_owned(), attempt_of(job))
    }
}

/// Counts a `get_attempt` call in flight, even when its future is dropped.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl Queue for MockQueue {
    fn id(&self) -> &str {
        QUEUE_ID
    }

    async fn put(&self, job: JobRef) -> Result<()> {
        let key = MockQueue::key(&job);
        let mut attempts = self.attempts.lock();
        if attempts.contains_key(&key) {
            return Err(Error::duplicate_job(job.id()));
        }
        attempts.insert(key, copy(&job));
        Ok(())
    }

    async fn put_many(&self, jobs: Vec<JobRef>) -> Result<()> {
        let mut errors = Vec::new();
        for job in jobs {
            if let Err(error) = self.put(job).await {
                errors.push(error);
            }
        }
        amboy_core::collate_write_errors(errors)
    }

    async fn get(&self, id: &str) -> Result<JobRef> {
        let attempts = self.attempts.lock();
        attempts
            .iter()
            .filter(|((stored, _), _)| stored == id)
            .map(|(_, job)| copy(job))
            .next_back()
            .ok_or_else(|| Error::job_not_found(id))
    }

    async fn next(&self) -> Result<JobRef> {
        Err(Error::Closed("queue"))
    }

    fn info(&self) -> QueueInfo {
        QueueInfo {
            started: true,
            lock_timeout: LOCK_TIMEOUT,
        }
    }

    async fn complete(&self, job: &JobRef) -> Result<()> {
        match self.knobs().complete_error {
            Some(error) => Err(error(job.id())),
            None => Ok(()),
        }
    }

    async fn save(&self, job: &JobRef) -> Result<()> {
        self.record(Kind::Save, job.id(), false);
        {
            let mut knobs = self.knobs();
            if knobs.save_failures > 0 {
                knobs.save_failures -= 1;
                return Err(Error::Backend {
                    message: "the store is unreachable".into(),
                    source: None,
                });
            }
        }
        let key = MockQueue::key(job);
        let mut attempts = self.attempts.lock();
        match attempts.get_mut(&key) {
            Some(stored) => {
                *stored = copy(job);
                Ok(())
            }
            None => Err(Error::job_not_found(job.id())),
        }
    }

    async fn results(&self) -> JobStream {
        Box::pin(futures::stream::empty())
    }

    async fn job_info(&self) -> JobInfoStream {
        Box::pin(futures::stream::empty())
    }

    async fn stats(&self) -> Result<QueueStats> {
        Ok(QueueStats::default())
    }

    fn runner(&self) -> Option<Arc<dyn Runner>> {
        None
    }

    fn set_runner(&self, _runner: Arc<dyn Runner>) -> Result<()> {
        Ok(())
    }

    async fn start(&self) -> Result<()> {
        Ok(())
    }

    async fn close(&self) {}

    fn as_retryable(&self) -> Option<&dyn RetryableQueue> {
        Some(self)
    }
}

#[async_trait::async_trait]
impl RetryableQueue for MockQueue {
    fn retry_handler(&self) -> Option<Arc<dyn RetryHandler>> {
        self.handler.lock().clone()
    }

    fn set_retry_handler(&self, handler: Arc<dyn RetryHandler>) -> Result<()> {
        let me: Arc<dyn RetryableQueue> = self.me.upgrade().expect("the queue is alive");
        handler.set_queue(me)?;
        *self.handler.lock() = Some(handler);
        Ok(())
    }

    async fn get_attempt(&self, id: &str, attempt: u32) -> Result<JobRef> {
        self.record(Kind::GetAttempt, id, false);
        let gate = self.knobs().gate.clone();
        if let Some(gate) = gate {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(now, Ordering::SeqCst);
            let _in_flight = InFlight(&self.in_flight);
            drop(gate.acquire().await.expect("the gate stays open"));
        }
        let stored = self
            .stored(id, attempt)
            .ok_or_else(|| Error::job_not_found(format!("attempt-{attempt}.{id}")))?;
        if self.knobs().live {
            Ok(stored)
        } else {
            Ok(copy(&stored))
        }
    }

    async fn get_all_attempts(&self, id: &str) -> Result<Vec<JobRef>> {
        let found: Vec<JobRef> = self
            .attempts
            .lock()
            .iter()
            .filter(|((stored, _), _)| stored == id)
            .map(|(_, job)| copy(job))
            .collect();
        if found.is_empty() {
            Err(Error::job_not_found(id))
        } else {
            Ok(found)
        }
    }

    async fn complete_retrying_and_put(&self, to_complete: &JobRef, to_put: JobRef) -> Result<()> {
        let needs_retry = to_complete.base().metadata().retry_info.needs_retry;
        self.record(Kind::CompleteRetryingAndPut, to_complete.id(), needs_retry);
        self.puts.lock().push(Put {
            to_complete_attempt: attempt_of(to_complete),
            to_put_snapshot: to_put.base().metadata().clone(),
            to_put: to_put.clone(),
            to_complete: to_complete.clone(),
        });
        let (put_error, mutate) = {
            let knobs = self.knobs();
            (knobs.put_error, knobs.mutate_then_fail)
        };
        if let Some(error) = put_error {
            if mutate {
                let mut meta = to_complete.base().metadata();
                meta.retry_info.needs_retry = false;
                meta.retry_info.end = Some(Utc::now());
            }
            return Err(error(to_complete.id()));
        }
        let mut attempts = self.attempts.lock();
        if !attempts.contains_key(&MockQueue::key(to_complete)) {
            return Err(Error::job_not_found(to_complete.id()));
        }
        if attempts.contains_key(&MockQueue::key(&to_put)) {
            return Err(Error::duplicate_job(to_put.id()));
        }
        {
            let mut meta = to_complete.base().metadata();
            meta.retry_info.needs_retry = false;
            meta.retry_info.end = Some(Utc::now());
        }
        to_put.base().metadata().time_info.created = Some(Utc::now());
        attempts.insert(MockQueue::key(to_complete), copy(to_complete));
        attempts.insert(MockQueue::key(&to_put), copy(&to_put));
        Ok(())
    }

    async fn complete_retrying(&self, job: &JobRef) -> Result<()> {
        self.record(Kind::CompleteRetrying, job.id(), false);
        if let Some(error) = self.knobs().complete_retrying_error {
            return Err(error(job.id()));
        }
        let key = MockQueue::key(job);
        let mut attempts = self.attempts.lock();
        if !attempts.contains_key(&key) {
            return Err(Error::job_not_found(job.id()));
        }
        {
            let mut meta = job.base().metadata();
            meta.retry_info.needs_retry = false;
            meta.retry_info.end = Some(Utc::now());
        }
        attempts.insert(key, copy(job));
        Ok(())
    }
}

fn backend_error(id: &str) -> Error {
    Error::Backend {
        message: format!("mock storage failed for job '{id}'"),
        source: None,
    }
}

fn duplicate_error(id: &str) -> Error {
    Error::duplicate_job(id)
}

fn not_found_error(id: &str) -> Error {
    Error::job_not_found(id)
}

/// A mock queue and a handler serving it (not started).
fn setup(options: RetryHandlerOptions) -> (Arc<MockQueue>, Arc<BasicRetryHandler>) {
    let queue = MockQueue::new();
    let handler = BasicRetryHandler::new(options).expect("valid options");
    queue.set_retry_handler(handler.clone()).unwrap();
    (queue, handler)
}

/// Stores `job` in the queue and hands it to the handler.
async fn store_and_put(queue: &MockQueue, handler: &BasicRetryHandler, job: &JobRef) {
    queue.store(job);
    put(handler, job).await;
}

async fn put(handler: &BasicRetryHandler, job: &JobRef) {
    timeout(SOON, handler.put(job.clone()))
        .await
        .expect("put did not finish")
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// TestNewBasicRetryHandler and options
// ---------------------------------------------------------------------------------------------

#[test]
fn options_are_validated_and_defaulted() {
    let handler = BasicRetryHandler::new(RetryHandlerOptions::default()).unwrap();
    let options = handler.options();
    assert_eq!(options.max_retry_attempts, 10);
    assert_eq!(options.max_retry_time, Duration::from_secs(60));
    assert_eq!(options.retry_backoff, Duration::ZERO);
    assert_eq!(options.num_workers, 1);
    assert_eq!(options.max_capacity, 4096);
    assert!(!handler.started());
    assert_eq!(handler.pending(), 0);

    let set = RetryHandlerOptions {
        max_retry_attempts: 3,
        max_retry_time: Duration::from_millis(20),
        retry_backoff: Duration::from_millis(10),
        num_workers: 4,
        max_capacity: -1,
    };
    assert_eq!(BasicRetryHandler::new(set).unwrap().options(), set);

    let err = BasicRetryHandler::new(RetryHandlerOptions {
        max_capacity: -2,
        ..Default::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("negative max capacity"), "{err}");

    // Usable as the trait object retryable queues hold.
    let _: Arc<dyn RetryHandler> = handler;
}

// ---------------------------------------------------------------------------------------------
// TestRetryHandlerImplementations: lifecycle
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn start_fails_without_a_queue_or_with_a_dropped_one() {
    let handler = BasicRetryHandler::new(RetryHandlerOptions::default()).unwrap();
    let err = handler.start().await.unwrap_err();
    assert!(err.to_string().contains("without a queue"), "{err}");
    assert!(!handler.started());

    let queue = MockQueue::new();
    handler.set_queue(queue.clone()).unwrap();
    drop(queue);
    let err = handler.start().await.unwrap_err();
    assert!(err.to_string().contains("queue was dropped"), "{err}");
    assert!(!handler.started(), "the handler holds its queue weakly");
}

#[tokio::test(start_paused = true)]
async fn start_is_idempotent_and_set_queue_fails_once_started() {
    let (queue, handler) = setup(RetryHandlerOptions::default());
    handler
        .set_queue(queue.clone())
        .expect("may be repeated before start");
    handler.start().await.unwrap();
    assert!(handler.started());
    handler.start().await.expect("starting again is fine");
    assert!(handler.started());

    let err = handler.set_queue(MockQueue::new()).unwrap_err();
    assert!(matches!(err, Error::AlreadyStarted(_)), "{err:?}");

    // Still one pool: the job is retried exactly once.
    let job = retrying_job("idempotent", true);
    store_and_put(&queue, &handler, &job).await;
    queue
        .wait_for(Kind::CompleteRetryingAndPut, "idempotent", 1)
        .await;
    sleep(Duration::from_millis(100)).await;
    assert_eq!(queue.count(Kind::GetAttempt, "idempotent"), 1);
    handler.close().await;
}

#[tokio::test(start_paused = true)]
async fn close_is_idempotent_and_the_handler_restarts() {
    let (queue, handler) = setup(RetryHandlerOptions::default());
    handler.close().await;
    assert!(!handler.started(), "closing an unstarted handler is fine");

    handler.start().await.unwrap();
    assert!(handler.started());
    timeout(SOON, handler.close()).await.expect("close returns");
    assert!(!handler.started());
    timeout(SOON, handler.close()).await.expect("close again");
    assert!(!handler.started());

    handler.start().await.unwrap();
    assert!(handler.started());
    let job = retrying_job("restarted", true);
    store_and_put(&queue, &handler, &job).await;
    queue
        .wait_for(Kind::CompleteRetryingAndPut, "restarted", 1)
        .await;
    assert!(queue.stored("restarted", 1).is_some());
    handler.close().await;
}

// ---------------------------------------------------------------------------------------------
// TestRetryHandlerImplementations: what a retry does
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn put_enqueues_the_next_attempt_with_a_fresh_state() {
    let (queue, handler) = setup(RetryHandlerOptions::default());
    let job = retrying_job("fresh", true);
    job.base().update_retry_info(&JobRetryOptions {
        wait_until: Some(Duration::from_secs(60)),
        dispatch_by: Some(Duration::from_secs(3600)),
        ..Default::default()
    });
    job.base().metadata().time_info.max_time = Duration::from_secs(5);
    handler.start().await.unwrap();
    store_and_put(&queue, &handler, &job).await;
    queue
        .wait_for(Kind::CompleteRetryingAndPut, "fresh", 1)
        .await;
    let now = Utc::now();

    assert_eq!(queue.count(Kind::GetAttempt, "fresh"), 1);
    assert_eq!(queue.count(Kind::Save, "fresh"), 1);
    assert_eq!(queue.count(Kind::CompleteRetrying, "fresh"), 0);

    let puts = std::mem::take(&mut *queue.puts.lock());
    let put = &puts[0];
    assert_eq!(put.to_complete_attempt, 0);
    assert!(
        Arc::ptr_eq(&put.to_complete, &job),
        "the old attempt is the job handed over"
    );
    assert!(
        !Arc::ptr_eq(&put.to_put, &job),
        "the next attempt is a copy"
    );
    assert_eq!(put.to_put.id(), "fresh");
    assert_eq!(payload(&put.to_put), "payload of fresh");

    let next = &put.to_put_snapshot;
    assert_eq!(next.retry_info.current_attempt, 1);
    assert!(next.retry_info.retryable);
    assert!(!next.retry_info.needs_retry);
    assert_eq!(next.retry_info.start, None);
    assert_eq!(next.retry_info.end, None);
    assert_eq!(next.retry_info.base_job_id, "fresh");
    assert_eq!(next.status, JobStatusInfo::default(), "a fresh status");
    assert_eq!(next.time_info.created, None);
    assert_eq!(next.time_info.start, None);
    assert_eq!(next.time_info.end, None);
    assert_eq!(next.time_info.max_time, Duration::from_secs(5));
    let within_a_second = |actual: Option<DateTime<Utc>>, expected: DateTime<Utc>| {
        let actual = actual.expect("set");
        (actual - expected).abs() < TimeDelta::seconds(1)
    };
    assert!(within_a_second(
        next.time_info.wait_until,
        now + TimeDelta::seconds(60)
    ));
    assert!(within_a_second(
        next.time_info.dispatch_by,
        now + TimeDelta::seconds(3600)
    ));

    // The old attempt: locked by the queue through the handler, its retry processed.
    let old = job.base().metadata().clone();
    assert_eq!(old.retry_info.current_attempt, 0);
    assert!(
        old.retry_info.start.is_some(),
        "the retry's start is recorded"
    );
    assert!(old.retry_info.end.is_some());
    assert!(!old.retry_info.needs_retry);
    assert_eq!(old.status.owner.as_deref(), Some(QUEUE_ID));
    assert_eq!(old.status.modification_count, 4, "locked once more");
    assert!(old.status.errors.is_empty());
    assert!(
        old.time_info.end.is_some(),
        "the old attempt keeps its times"
    );

    let stored = queue.stored("fresh", 1).expect("attempt 1 is stored");
    assert!(stored.base().metadata().time_info.created.is_some());
    handler.close().await;
}

#[tokio::test]
async fn previous_wait_until_and_dispatch_by_are_kept_without_offsets() {
    let (queue, handler) = setup(RetryHandlerOptions::default());
    let job = retrying_job("kept", true);
    let later = Utc::now() + TimeDelta::hours(1);
    let much_later = later + TimeDelta::hours(1);
    {
        let mut meta = job.base().metadata();
        meta.time_info.wait_until = Some(later);
        meta.time_info.dispatch_by = Some(much_later);
    }
    handler.start().await.unwrap();
    store_and_put(&queue, &handler, &job).await;
    queue
        .wait_for(Kind::CompleteRetryingAndPut, "kept", 1)
        .await;
    let puts = std::mem::take(&mut *queue.puts.lock());
    let next = &puts[0].to_put_snapshot;
    assert_eq!(next.time_info.wait_until, Some(later));
    assert_eq!(next.time_info.dispatch_by, Some(much_later));
    handler.close().await;
}

#[tokio::test(start_paused = true)]
async fn put_before_start_does_nothing_until_start() {
    let (queue, handler) = setup(RetryHandlerOptions::default());
    assert!(!handler.started());
    let job = retrying_job("early", true);
    store_and_put(&queue, &handler, &job).await;
    sleep(Duration::from_millis(100)).await;
    assert_eq!(queue.total_calls(), 0, "an unstarted handler calls nothing");
    assert_eq!(handler.pending(), 1, "the job waits");

    handler.start().await.unwrap();
    queue
        .wait_for(Kind::CompleteRetryingAndPut, "early", 1)
        .await;
    assert_eq!(handler.pending(), 0);
    assert!(queue.stored("early", 1).is_some());
    handler.close().await;
}

#[tokio::test(start_paused = true)]
async fn job_that_no_longer_needs_to_retry_is_only_completed_retrying() {
    let (queue, handler) = setup(RetryHandlerOptions::default());
    let job = retrying_job("done", false);
    handler.start().await.unwrap();
    store_and_put(&queue, &handler, &job).await;
    queue.wait_for(Kind::CompleteRetrying, "done", 1).await;

    assert_eq!(queue.count(Kind::GetAttempt, "done"), 1);
    assert_eq!(queue.count(Kind::Save, "done"), 0);
    assert_eq!(queue.count(Kind::CompleteRetryingAndPut, "done"), 0);
    assert_eq!(queue.count(Kind::CompleteRetrying, "done"), 1);
    assert!(
        errors_of(&job)
            .contains("job in the queue indicates the job does not need to retry anymore"),
        "{}",
        errors_of(&job)
    );
    assert!(queue.stored("done", 1).is_none());
    handler.close().await;
}

#[tokio::test(start_paused = true)]
async fn job_on_its_last_attempt_is_only_completed_retrying() {
    let (queue, handler) = setup(RetryHandlerOptions::default());
    let job = retrying_job("last", true);
    job.base().update_retry_info(&JobRetryOptions {
        current_attempt: Some(9),
        max_attempts: Some(10),
        ..Default::default()
    });
    handler.start().await.unwrap();
    store_and_put(&queue, &handler, &job).await;
    queue.wait_for(Kind::CompleteRetrying, "last", 1).await;

    assert_eq!(queue.count(Kind::GetAttempt, "last"), 1);
    assert_eq!(queue.count(Kind::Save, "last"), 0);
    assert_eq!(queue.count(Kind::CompleteRetryingAndPut, "last"), 0);
    assert!(
        errors_of(&job).contains("job has reached its maximum attempt limit"),
        "{}",
        errors_of(&job)
    );
    let stored = queue.stored("last", 9).unwrap();
    assert!(
        !stored.base().metadata().retry_info.needs_retry,
        "finished retrying"
    );
    assert!(queue.stored("last", 10).is_none());
    handler.close().await;
}

#[tokio::test(start_paused = true)]
async fn queue_returning_the_live_job_is_refused() {
    let (queue, handler) = setup(RetryHandlerOptions::default());
    queue.knobs().live = true;
    let job = retrying_job("live", true);
    handler.start().await.unwrap();
    // The stored job is the very job handed over.
    queue
        .attempts
        .lock()
        .insert(("live".to_owned(), 0), job.clone());
    put(&handler, &job).await;
    queue.wait_for(Kind::CompleteRetrying, "live", 1).await;
    assert_eq!(queue.count(Kind::Save, "live"), 0);
    assert_eq!(queue.count(Kind::CompleteRetryingAndPut, "live"), 0);
    assert!(
        errors_of(&job).contains("rather than a copy"),
        "{}",
        errors_of(&job)
    );
    assert_eq!(attempt_of(&job), 0, "the old attempt is untouched");
    handler.close().await;
}

// ---------------------------------------------------------------------------------------------
// TestRetryHandlerImplementations: how often and how long the handler tries
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn max_retry_attempts_limits_the_tries() {
    let (queue, handler) = setup(RetryHandlerOptions {
        retry_backoff: Duration::from_millis(10),
        max_retry_attempts: 3,
        ..Default::default()
    });
    queue.knobs().put_error = Some(backend_error);
    let job = retrying_job("limited", true);
    handler.start().await.unwrap();
    store_and_put(&queue, &handler, &job).await;
    queue.wait_for(Kind::CompleteRetrying, "limited", 1).await;
    sleep(Duration::from_secs(1)).await;

    assert_eq!(queue.count(Kind::GetAttempt, "limited"), 3);
    assert_eq!(queue.count(Kind::Save, "limited"), 3);
    assert_eq!(queue.count(Kind::CompleteRetryingAndPut, "limited"), 3);
    assert_eq!(queue.count(Kind::CompleteRetrying, "limited"), 1);
    let errors = errors_of(&job);
    assert!(
        errors.starts_with("exhausted all 3 attempts to enqueue retry job without success"),
        "{errors}"
    );
    assert!(
        errors.contains("enqueue retry job attempt 3: enqueueing retry job: mock storage failed"),
        "{errors}"
    );
    handler.close().await;
}

#[tokio::test(start_paused = true)]
async fn retry_backoff_spaces_the_tries() {
    let backoff = Duration::from_millis(10);
    let (queue, handler) = setup(RetryHandlerOptions {
        retry_backoff: backoff,
        max_retry_attempts: 20,
        ..Default::default()
    });
    queue.knobs().put_error = Some(backend_error);
    let job = retrying_job("spaced", true);
    handler.start().await.unwrap();
    store_and_put(&queue, &handler, &job).await;

    // Half of the tries' time: more than one try, not all of them, and no giving up yet.
    sleep(backoff * 20 / 2).await;
    let tries = queue.count(Kind::CompleteRetryingAndPut, "spaced");
    assert!(tries > 1 && tries < 20, "{tries} tries");
    assert_eq!(queue.count(Kind::CompleteRetrying, "spaced"), 0);

    queue.wait_for(Kind::CompleteRetrying, "spaced", 1).await;
    let calls = queue.calls(Kind::GetAttempt, "spaced");
    assert_eq!(calls.len(), 20);
    for pair in calls.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= backoff && gap < backoff * 2,
            "tries {gap:?} apart, not {backoff:?}"
        );
    }
    handler.close().await;
}

#[tokio::test(start_paused = true)]
async fn max_retry_time_stops_the_tries_early() {
    let (queue, handler) = setup(RetryHandlerOptions {
        retry_backoff: Duration::from_millis(10),
        max_retry_time: Duration::from_millis(20),
        max_retry_attempts: 5,
        ..Default::default()
    });
    queue.knobs().put_error = Some(backend_error);
    let job = retrying_job("timed", true);
    handler.start().await.unwrap();
    store_and_put(&queue, &handler, &job).await;
    queue.wait_for(Kind::CompleteRetrying, "timed", 1).await;

    let tries = queue.count(Kind::CompleteRetryingAndPut, "timed");
    assert!(tries > 1 && tries < 5, "{tries} tries");
    assert_eq!(queue.count(Kind::GetAttempt, "timed"), tries);
    assert_eq!(queue.count(Kind::Save, "timed"), tries);
    let calls = queue.calls(Kind::GetAttempt, "timed");
    let last = calls.last().unwrap().at - calls[0].at;
    assert!(
        last <= Duration::from_millis(20),
        "no try starts after the retry time ({last:?})"
    );
    let errors = errors_of(&job);
    assert!(
        errors.contains("due to exceeding maximum allowed retry time"),
        "{errors}"
    );
    handler.close().await;
}

#[tokio::test(start_paused = true)]
async fn duplicate_and_not_found_errors_end_the_tries() {
    let cases: [(&str, ErrorFn, &str); 2] = [
        ("duplicate", duplicate_error, "cannot enqueue duplicate job"),
        ("missing", not_found_error, "not found"),
    ];
    for (id, error, message) in cases {
        let (queue, handler) = setup(RetryHandlerOptions {
            retry_backoff: Duration::from_millis(10),
            ..Default::default()
        });
        queue.knobs().put_error = Some(error);
        let job = retrying_job(id, true);
        handler.start().await.unwrap();
        store_and_put(&queue, &handler, &job).await;
        queue.wait_for(Kind::CompleteRetrying, id, 1).await;
        sleep(Duration::from_secs(1)).await;

        assert_eq!(queue.count(Kind::GetAttempt, id), 1, "{id}");
        assert_eq!(queue.count(Kind::CompleteRetryingAndPut, id), 1, "{id}");
        assert_eq!(queue.count(Kind::CompleteRetrying, id), 1, "{id}");
        let errors = errors_of(&job);
        assert!(
            errors.starts_with("enqueue retry job attempt 1: enqueueing retry job: ")
                && errors.contains(message),
            "{id}: {errors}"
        );
        handler.close().await;
    }
}

#[tokio::test(start_paused = true)]
async fn failed_tries_restore_the_old_attempts_retry_info() {
    let (queue, handler) = setup(RetryHandlerOptions {
        max_retry_attempts: 3,
        ..Default::default()
    });
    {
        let mut knobs = queue.knobs();
        knobs.put_error = Some(backend_error);
        knobs.mutate_then_fail = true;
    }
    let job = retrying_job("restored", true);
    handler.start().await.unwrap();
    store_and_put(&queue, &handler, &job).await;
    queue.wait_for(Kind::CompleteRetrying, "restored", 1).await;

    let calls = queue.calls(Kind::CompleteRetryingAndPut, "restored");
    assert_eq!(calls.len(), 3);
    assert!(
        calls.iter().all(|call| call.needs_retry),
        "every try sees the job still asking to retry: {calls:?}"
    );
    let retry = job.retry_info();
    assert_eq!(retry.current_attempt, 0);
    assert!(retry.start.is_some());
    handler.close().await;
}

#[tokio::test(start_paused = true)]
async fn a_job_missing_from_the_queue_is_tried_then_given_up_on() {
    let (queue, handler) = setup(RetryHandlerOptions::default());
    let job = retrying_job("absent", true);
    handler.start().await.unwrap();
    put(&handler, &job).await;
    queue.wait_for(Kind::CompleteRetrying, "absent", 1).await;
    sleep(Duration::from_secs(20)).await;

    assert_eq!(
        queue.count(Kind::GetAttempt, "absent"),
        10,
        "a missing attempt may appear: tried again"
    );
    assert_eq!(queue.count(Kind::Save, "absent"), 0);
    assert_eq!(
        queue.count(Kind::CompleteRetrying, "absent"),
        1,
        "job-not-found ends the marking at once"
    );
    let errors = errors_of(&job);
    assert!(
        errors.starts_with("exhausted all 10 attempts")
            && errors.contains("getting job attempt: job 'attempt-0.absent' not found"),
        "{errors}"
    );
    handler.close().await;
}

#[tokio::test(start_paused = true)]
async fn complete_retrying_is_called_up_to_ten_times_a_second_apart() {
    let (queue, handler) = setup(RetryHandlerOptions::default());
    queue.knobs().complete_retrying_error = Some(backend_error);
    let job = retrying_job("stubborn", false);
    handler.start().await.unwrap();
    store_and_put(&queue, &handler, &job).await;
    queue.wait_for(Kind::CompleteRetrying, "stubborn", 10).await;
    sleep(Duration::from_secs(30)).await;

    let calls = queue.calls(Kind::CompleteRetrying, "stubborn");
    assert_eq!(calls.len(), 10);
    for pair in calls.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_secs(1) && gap < Duration::from_secs(2),
            "{gap:?}"
        );
    }
    handler.close().await;
}

// ---------------------------------------------------------------------------------------------
// Decision 2: panics do not shrink the pool
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_panicking_queue_does_not_kill_the_worker() {
    let (queue, handler) = setup(RetryHandlerOptions::default());
    assert_eq!(handler.options().num_workers, 1);
    {
        let mut knobs = queue.knobs();
        knobs.panic_on.insert((Kind::GetAttempt, "boom".to_owned()));
        knobs
            .panic_on
            .insert((Kind::GetAttempt, "boom-twice".to_owned()));
        knobs
            .panic_on
            .insert((Kind::CompleteRetrying, "boom-twice".to_owned()));
    }
    let boom = retrying_job("boom", true);
    let boom_twice = retrying_job("boom-twice", true);
    let fine = retrying_job("fine", true);
    handler.start().await.unwrap();
    store_and_put(&queue, &handler, &boom_twice).await;
    store_and_put(&queue, &handler, &boom).await;
    store_and_put(&queue, &handler, &fine).await;

    // The one worker got past both panics.
    queue
        .wait_for(Kind::CompleteRetryingAndPut, "fine", 1)
        .await;
    assert!(queue.stored("fine", 1).is_some());
    assert!(handler.started());

    // A panic while retrying: the job is completed retrying with the panic recorded.
    assert_eq!(
        queue.count(Kind::GetAttempt, "boom"),
        1,
        "not retried again"
    );
    assert_eq!(queue.count(Kind::CompleteRetrying, "boom"), 1);
    assert!(
        errors_of(&boom).contains("retry handler panicked: mock queue panicked in GetAttempt"),
        "{}",
        errors_of(&boom)
    );
    let stored = queue.stored("boom", 0).unwrap();
    assert!(!stored.base().metadata().retry_info.needs_retry);
    assert_eq!(stored.base().metadata().status.errors.len(), 1);

    // A panic in completing too: the job stays retrying in the queue for its stale-retrying
    // monitor, with its retry info as it was.
    assert_eq!(queue.count(Kind::CompleteRetrying, "boom-twice"), 1);
    let stored = queue.stored("boom-twice", 0).unwrap();
    assert!(stored.base().metadata().retry_info.needs_retry);
    assert!(boom_twice.retry_info().needs_retry);
    assert_eq!(attempt_of(&boom_twice), 0);

    // And the worker keeps serving.
    let after = retrying_job("after", true);
    store_and_put(&queue, &handler, &after).await;
    queue
        .wait_for(Kind::CompleteRetryingAndPut, "after", 1)
        .await;
    handler.close().await;
}

// ---------------------------------------------------------------------------------------------
// Workers, buffer and closing
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn workers_retry_jobs_concurrently_up_to_num_workers() {
    let (queue, handler) = setup(RetryHandlerOptions {
        num_workers: 3,
        ..Default::default()
    });
    let gate = Arc::new(Semaphore::new(0));
    queue.knobs().gate = Some(gate.clone());
    let jobs: Vec<JobRef> = (0..7)
        .map(|i| retrying_job(&format!("parallel-{i}"), true))
        .collect();
    for job in &jobs {
        store_and_put(&queue, &handler, job).await;
    }
    handler.start().await.unwrap();

    let mut calls = queue.calls.subscribe();
    timeout(
        SOON,
        calls.wait_for(|calls| {
            calls
                .iter()
                .filter(|call| call.kind == Kind::GetAttempt)
                .count()
                >= 3
        }),
    )
    .await
    .expect("three workers started")
    .unwrap();
    sleep(Duration::from_millis(100)).await;
    assert_eq!(queue.in_flight.load(Ordering::SeqCst), 3);
    assert_eq!(handler.pending(), 4, "the other jobs wait");

    gate.add_permits(100);
    for job in &jobs {
        queue
            .wait_for(Kind::CompleteRetryingAndPut, job.id(), 1)
            .await;
        assert!(queue.stored(job.id(), 1).is_some());
    }
    assert_eq!(queue.max_in_flight.load(Ordering::SeqCst), 3);
    handler.close().await;
}

#[tokio::test(start_paused = true)]
async fn a_full_limited_buffer_makes_put_wait_for_room() {
    let (queue, handler) = setup(RetryHandlerOptions {
        max_capacity: 2,
        ..Default::default()
    });
    let jobs: Vec<JobRef> = (0..3)
        .map(|i| retrying_job(&format!("room-{i}"), true))
        .collect();
    store_and_put(&queue, &handler, &jobs[0]).await;
    store_and_put(&queue, &handler, &jobs[1]).await;
    queue.store(&jobs[2]);
    let third = {
        let handler = handler.clone();
        let job = jobs[2].clone();
        tokio::spawn(async move { handler.put(job).await })
    };
    sleep(Duration::from_millis(100)).await;
    assert!(!third.is_finished(), "put waits for room");
    assert_eq!(handler.pending(), 2);

    handler.start().await.unwrap();
    timeout(SOON, third)
        .await
        .expect("put finished once there was room")
        .unwrap()
        .unwrap();
    for job in &jobs {
        queue
            .wait_for(Kind::CompleteRetryingAndPut, job.id(), 1)
            .await;
    }
    handler.close().await;
}

#[tokio::test(start_paused = true)]
async fn an_unlimited_buffer_never_makes_put_wait() {
    let (_queue, handler) = setup(RetryHandlerOptions {
        max_capacity: -1,
        ..Default::default()
    });
    let job = retrying_job("overflow", true);
    for _ in 0..5000 {
        handler
            .put(job.clone())
            .now_or_never()
            .expect("put does not wait")
            .unwrap();
    }
    assert_eq!(handler.pending(), 5000);
}

#[tokio::test(start_paused = true)]
async fn close_hands_the_job_being_retried_back_for_the_next_start() {
    let (queue, handler) = setup(RetryHandlerOptions::default());
    let gate = Arc::new(Semaphore::new(0));
    queue.knobs().gate = Some(gate.clone());
    let job = retrying_job("interrupted", true);
    let received = job.retry_info();
    handler.start().await.unwrap();
    store_and_put(&queue, &handler, &job).await;
    queue.wait_for(Kind::GetAttempt, "interrupted", 1).await;

    timeout(SOON, handler.close())
        .await
        .expect("close does not wait for the queue");
    assert!(!handler.started());
    assert_eq!(handler.pending(), 1, "the job is back in the buffer");
    assert_eq!(job.retry_info(), received, "as it was handed over");
    assert_eq!(queue.in_flight.load(Ordering::SeqCst), 0);

    gate.add_permits(100);
    handler.start().await.unwrap();
    queue
        .wait_for(Kind::CompleteRetryingAndPut, "interrupted", 1)
        .await;
    assert!(queue.stored("interrupted", 1).is_some());
    handler.close().await;
}

/// A job asking to retry whose completion was not stored is not handed to the retry handler:
/// its stored attempt is still running (the queue runs it again once its lock times out), and
/// the handler, finding it not retrying, would have finished it, the retry lost.
#[tokio::test(start_paused = true)]
async fn a_job_whose_completion_failed_is_not_retried() {
    let (queue, handler) = setup(RetryHandlerOptions::default());
    handler.start().await.unwrap();
    let job = retrying_job("unstored", true);
    queue.store(&job);
    queue.knobs().complete_error = Some(|id| Error::Backend {
        message: format!("could not complete '{id}': the pool timed out"),
        source: None,
    });
    let dyn_queue: Arc<dyn Queue> = queue.clone();
    amboy_core::execute_job(&*dyn_queue, &job, &JobContext::new()).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(
        queue.calls(Kind::GetAttempt, "unstored").is_empty(),
        "the handler never got the job"
    );
    assert!(queue.calls(Kind::CompleteRetrying, "unstored").is_empty());
    handler.close().await;
}

/// A save of the old attempt's lock that fails transiently (the store unreachable) is tried
/// again, from the stored state: the retry is not lost.
#[tokio::test]
async fn a_transient_failure_to_save_the_lock_is_tried_again() {
    let (queue, handler) = setup(RetryHandlerOptions::default());
    let job = retrying_job("blip", true);
    queue.knobs().save_failures = 1;
    handler.start().await.unwrap();
    store_and_put(&queue, &handler, &job).await;
    queue
        .wait_for(Kind::CompleteRetryingAndPut, "blip", 1)
        .await;
    assert_eq!(
        queue.count(Kind::Save, "blip"),
        2,
        "saved again after the failure"
    );
    assert_eq!(
        queue.count(Kind::CompleteRetrying, "blip"),
        0,
        "not finished"
    );
    let puts = std::mem::take(&mut *queue.puts.lock());
    assert_eq!(attempt_of(&puts[0].to_put), 1, "the next attempt is put");
    handler.close().await;
}

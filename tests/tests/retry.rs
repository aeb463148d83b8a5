//! Retries against the real serializable queue and `BasicRetryHandler`: amboy's
//! `retry_test.go` `TestRetryableQueueImplementations` (attempts, `complete_retrying`,
//! `complete_retrying_and_put`) and `TestRetryHandlerQueueIntegration` (the state of both
//! attempts after a retry, and the retries that must not happen), then retries end to end
//! through `amboy::new_local_limited_size_serializable`.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use amboy::local::LimitedSizeSerializableQueue;
use amboy::prelude::*;
use amboy::registry::JobInterchange;
use amboy::retry::BasicRetryHandler;
use amboy::{Base, JobContext, JobError, JobRef, JobStatusInfo, QueueStats, RetryHandlerOptions};
use amboy_tests::cases::IdleRunner;
use amboy_tests::jobs::counter;
use chrono::{DateTime, TimeDelta, Utc};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use tokio::time::timeout;

/// Bound for anything that should happen at once.
const PROMPTLY: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Job types
// ---------------------------------------------------------------------------------------------

/// Does nothing; carries a payload so that copies can be told to be copies of the job.
#[derive(Debug, Serialize, Deserialize)]
struct Payload {
    base: Base,
    payload: String,
}

#[typetag::serde(name = "retry-test-payload")]
#[async_trait::async_trait]
impl Job for Payload {
    fn base(&self) -> &Base {
        &self.base
    }

    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

/// A payload job with this base.
fn payload_job(base: Base) -> JobRef {
    let payload = format!("payload of {}", base.id());
    Arc::new(Payload { base, payload })
}

/// A retryable payload job: attempt `attempt` of `id`.
fn retryable(id: &str, attempt: u32) -> JobRef {
    retryable_with(Base::with_id(id), attempt)
}

/// `base` made retryable, as attempt `attempt`.
fn retryable_with(base: Base, attempt: u32) -> JobRef {
    let job = payload_job(base.with_retryable(true));
    job.base().metadata().retry_info.current_attempt = attempt;
    job
}

/// A payload job that does not retry.
fn plain(base: Base) -> JobRef {
    payload_job(base)
}

fn payload_of(job: &JobRef) -> &str {
    let any: &dyn Any = &**job;
    &any.downcast_ref::<Payload>()
        .expect("a payload job")
        .payload
}

/// Fails with a retryable error on its first `failures` attempts, counting its runs in the
/// counter named `counter`.
#[derive(Debug, Serialize, Deserialize)]
struct Flaky {
    base: Base,
    counter: String,
    failures: u32,
}

#[typetag::serde(name = "retry-test-flaky")]
#[async_trait::async_trait]
impl Job for Flaky {
    fn base(&self) -> &Base {
        &self.base
    }

    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        counter(&self.counter).fetch_add(1, Ordering::SeqCst);
        let attempt = self.base.retry_info().current_attempt;
        if attempt < self.failures {
            return Err(JobError::retryable(format!(
                "attempt {attempt} fails on purpose"
            )));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A started serializable queue whose runner runs nothing and which has no retry handler: the
/// tests drive `next`, `complete` and the retry calls by hand.
async fn idle_queue(capacity: usize) -> Arc<LimitedSizeSerializableQueue> {
    let queue = LimitedSizeSerializableQueue::new(capacity);
    queue
        .set_runner(Arc::new(IdleRunner::default()))
        .expect("a new queue takes a runner");
    queue.start().await.expect("start");
    queue
}

/// A serializable queue (not started, no runner) with a started retry handler making at most
/// `max_retry_attempts` tries per retry.
async fn queue_with_handler(
    max_retry_attempts: u32,
) -> (Arc<LimitedSizeSerializableQueue>, Arc<BasicRetryHandler>) {
    let queue = LimitedSizeSerializableQueue::new(16);
    let handler = BasicRetryHandler::new(RetryHandlerOptions {
        max_retry_attempts,
        ..Default::default()
    })
    .expect("valid options");
    queue
        .set_retry_handler(handler.clone())
        .expect("a new queue takes a handler");
    handler.start().await.expect("start the handler");
    (queue, handler)
}

/// Dispatches the next job, which must be `id`, as a worker would.
async fn dispatch(queue: &LimitedSizeSerializableQueue, id: &str) -> JobRef {
    let job = timeout(PROMPTLY, queue.next())
        .await
        .expect("a job is ready")
        .expect("the queue is open");
    assert_eq!(job.id(), id, "dispatched the expected job");
    assert!(job.status().in_progress);
    job
}

/// Dispatches `id` and completes it with a retryable error: it is then retrying.
async fn run_and_ask_to_retry(queue: &LimitedSizeSerializableQueue, id: &str) -> JobRef {
    let job = dispatch(queue, id).await;
    job.base().add_retryable_error("asks to retry");
    queue.complete(&job).await.expect("complete");
    assert!(job.retry_info().should_retry());
    job
}

async fn stats(queue: &LimitedSizeSerializableQueue) -> QueueStats {
    queue.stats().await.expect("stats")
}

/// `(id, attempt)` of every result, sorted.
async fn results(queue: &LimitedSizeSerializableQueue) -> Vec<(String, u32)> {
    let jobs: Vec<JobRef> = queue.results().await.try_collect().await.expect("results");
    let mut results: Vec<(String, u32)> = jobs
        .iter()
        .map(|job| (job.id().to_owned(), job.retry_info().current_attempt))
        .collect();
    results.sort();
    results
}

/// A job holding `scope` at enqueue, to probe whether the scope is free.
fn rival(id: &str, scope: &str) -> JobRef {
    plain(
        Base::with_id(id)
            .with_scopes([scope])
            .with_enqueue_all_scopes(),
    )
}

/// Whether `scope` is held in `queue`: a job taking it at enqueue is refused.
async fn scope_is_held(queue: &LimitedSizeSerializableQueue, probe_id: &str, scope: &str) -> bool {
    match queue.put(rival(probe_id, scope)).await {
        Ok(()) => false,
        Err(error) => {
            assert!(error.is_duplicate_scope(), "{error}");
            true
        }
    }
}

/// A copy of `job`, through its stored form.
fn copy(job: &JobRef) -> JobRef {
    JobInterchange::from_job(&**job)
        .expect("encode")
        .resolve()
        .expect("decode")
}

/// Waits until attempt `attempt` of `id` is stored, and returns it.
async fn wait_for_attempt(queue: &LimitedSizeSerializableQueue, id: &str, attempt: u32) -> JobRef {
    timeout(PROMPTLY, async {
        loop {
            if let Ok(job) = queue.get_attempt(id, attempt).await {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("attempt {attempt} of '{id}' was never stored"))
}

/// Waits until the retry of the stored attempt `attempt` of `id` was processed (its retry end
/// is set), and returns it.
async fn wait_for_retry_end(
    queue: &LimitedSizeSerializableQueue,
    id: &str,
    attempt: u32,
) -> JobRef {
    timeout(PROMPTLY, async {
        loop {
            if let Ok(job) = queue.get_attempt(id, attempt).await
                && job.retry_info().end.is_some()
            {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the retry of attempt {attempt} of '{id}' was never processed"))
}

/// A job as a runner hands it to the retry handler: retryable, asking to retry, completed and
/// locked by `queue`, with every time set (amboy's test fixture).
fn completed_retrying(
    queue: &LimitedSizeSerializableQueue,
    base: Base,
    now: DateTime<Utc>,
) -> JobRef {
    let job = retryable_with(base, 0);
    {
        let mut meta = job.base().metadata();
        meta.retry_info.needs_retry = true;
        meta.time_info.start = Some(now);
        meta.time_info.end = Some(now);
        meta.time_info.wait_until = Some(now + TimeDelta::hours(1));
        meta.time_info.dispatch_by = Some(now + TimeDelta::hours(2));
        meta.time_info.max_time = Duration::from_secs(60);
        meta.status = JobStatusInfo {
            owner: Some(Arc::from(queue.id())),
            completed: true,
            modification_time: Some(now),
            modification_count: 10,
            ..Default::default()
        };
    }
    job
}

// ---------------------------------------------------------------------------------------------
// TestRetryableQueueImplementations
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_attempt_returns_a_copy_of_each_stored_attempt() {
    let queue = idle_queue(64).await;
    let mut put = Vec::new();
    for n in 0..3 {
        for attempt in 0..5 {
            let job = retryable(&format!("get-attempt-{n}"), attempt);
            queue.put(job.clone()).await.expect("put");
            put.push(job);
        }
    }
    for job in &put {
        let attempt = job.retry_info().current_attempt;
        let found = queue.get_attempt(job.id(), attempt).await.expect("found");
        assert_eq!(found.id(), job.id());
        assert_eq!(found.retry_info(), job.retry_info());
        assert_eq!(found.retry_info().base_job_id, job.id(), "set by the queue");
        assert_eq!(payload_of(&found), payload_of(job));
        assert!(!Arc::ptr_eq(&found, job), "the queue returns a copy");
    }
    assert_eq!(stats(&queue).await.total, 15);
    queue.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_attempt_of_a_missing_job_or_attempt_is_not_found() {
    let queue = idle_queue(8).await;
    let err = queue.get_attempt("nonexistent", 0).await.unwrap_err();
    assert!(err.is_job_not_found(), "{err}");

    queue
        .put(retryable("only-attempt-0", 0))
        .await
        .expect("put");
    queue
        .get_attempt("only-attempt-0", 0)
        .await
        .expect("attempt 0");
    let err = queue.get_attempt("only-attempt-0", 1).await.unwrap_err();
    assert!(err.is_job_not_found(), "{err}");
    queue.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_retryable_jobs_have_no_attempts() {
    let queue = idle_queue(8).await;
    queue
        .put(plain(Base::with_id("not-retryable")))
        .await
        .expect("put");
    assert_eq!(
        queue.get("not-retryable").await.expect("get").id(),
        "not-retryable"
    );
    let err = queue.get_attempt("not-retryable", 0).await.unwrap_err();
    assert!(err.is_job_not_found(), "{err}");
    let err = queue.get_all_attempts("not-retryable").await.unwrap_err();
    assert!(err.is_job_not_found(), "{err}");
    queue.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_all_attempts_returns_every_attempt_in_ascending_order() {
    let queue = idle_queue(64).await;
    // Put out of order, interleaving the jobs.
    for attempt in [3, 0, 4, 1, 2] {
        for n in 0..3 {
            let job = retryable(&format!("all-attempts-{n}"), attempt);
            job.base().metadata().retry_info.max_attempts = 5;
            queue.put(job).await.expect("put");
        }
    }
    for n in 0..3 {
        let id = format!("all-attempts-{n}");
        let found = queue.get_all_attempts(&id).await.expect("attempts");
        let attempts: Vec<u32> = found
            .iter()
            .map(|job| job.retry_info().current_attempt)
            .collect();
        assert_eq!(attempts, [0, 1, 2, 3, 4]);
        for job in &found {
            assert_eq!(job.id(), id);
            assert_eq!(job.retry_info().max_attempts, 5);
        }
    }
    let err = queue.get_all_attempts("nonexistent").await.unwrap_err();
    assert!(err.is_job_not_found(), "{err}");
    queue.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_returns_the_latest_attempt() {
    let queue = idle_queue(8).await;
    for attempt in 0..3 {
        queue.put(retryable("latest", attempt)).await.expect("put");
        let got = queue.get("latest").await.expect("get");
        assert_eq!(got.retry_info().current_attempt, attempt);
    }
    queue.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_retrying_finishes_the_retrying_attempt() {
    let queue = idle_queue(8).await;
    let base = Base::with_id("complete-retrying")
        .with_scopes(["complete-retrying-scope"])
        .with_enqueue_all_scopes();
    queue.put(retryable_with(base, 0)).await.expect("put");
    let job = run_and_ask_to_retry(&queue, "complete-retrying").await;

    let before = stats(&queue).await;
    assert_eq!(
        (before.total, before.completed, before.retrying),
        (1, 1, 1),
        "{before}"
    );
    assert!(!before.is_complete(), "a retrying job keeps the queue busy");
    assert!(
        results(&queue).await.is_empty(),
        "retrying jobs are no results"
    );
    assert!(
        scope_is_held(
            &queue,
            "complete-retrying-rival-1",
            "complete-retrying-scope"
        )
        .await,
        "a retrying job keeps its enqueue scopes"
    );

    queue
        .complete_retrying(&job)
        .await
        .expect("complete retrying");
    let retry = job.retry_info();
    assert!(!retry.needs_retry && retry.end.is_some(), "{retry:?}");
    let stored = queue
        .get_attempt("complete-retrying", 0)
        .await
        .expect("still stored");
    assert_eq!(stored.retry_info(), retry);
    assert!(stored.status().completed && !stored.retry_info().should_retry());

    let after = stats(&queue).await;
    assert_eq!(
        (after.total, after.completed, after.retrying),
        (1, 1, 0),
        "{after}"
    );
    assert!(after.is_complete());
    assert_eq!(results(&queue).await, [("complete-retrying".to_owned(), 0)]);
    assert!(
        !scope_is_held(
            &queue,
            "complete-retrying-rival-2",
            "complete-retrying-scope"
        )
        .await,
        "the enqueue scope is free once the job stopped retrying"
    );
    queue.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_retrying_of_a_missing_job_is_not_found() {
    let queue = idle_queue(8).await;
    let job = retryable("complete-retrying-missing", 0);
    job.base().metadata().retry_info.needs_retry = true;
    let err = queue.complete_retrying(&job).await.unwrap_err();
    assert!(err.is_job_not_found(), "{err}");
    let err = queue
        .get_attempt("complete-retrying-missing", 0)
        .await
        .unwrap_err();
    assert!(err.is_job_not_found(), "{err}");
    assert_eq!(stats(&queue).await, QueueStats::default());
    queue.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_retrying_and_put_finishes_the_old_attempt_and_enqueues_the_new_one() {
    let queue = idle_queue(8).await;
    let scoped = |attempt| {
        retryable_with(
            Base::with_id("handover")
                .with_scopes(["handover-scope"])
                .with_enqueue_all_scopes(),
            attempt,
        )
    };
    queue.put(scoped(0)).await.expect("put");
    let old = run_and_ask_to_retry(&queue, "handover").await;
    let next = scoped(1);

    queue
        .complete_retrying_and_put(&old, next.clone())
        .await
        .expect("complete retrying and put");

    let stored_old = queue.get_attempt("handover", 0).await.expect("attempt 0");
    assert!(stored_old.status().completed);
    let retry = stored_old.retry_info();
    assert!(!retry.needs_retry && retry.end.is_some(), "{retry:?}");
    assert_eq!(stored_old.status(), old.status());
    let stored_new = queue.get_attempt("handover", 1).await.expect("attempt 1");
    assert!(!stored_new.status().completed && !stored_new.status().in_progress);
    assert_eq!(stored_new.retry_info().current_attempt, 1);
    assert!(stored_new.time_info().created.is_some());
    assert_eq!(
        queue
            .get("handover")
            .await
            .expect("get")
            .retry_info()
            .current_attempt,
        1
    );

    let counts = stats(&queue).await;
    assert_eq!(
        (
            counts.total,
            counts.completed,
            counts.retrying,
            counts.pending
        ),
        (2, 1, 0, 1),
        "{counts}"
    );
    assert_eq!(results(&queue).await, [("handover".to_owned(), 0)]);
    assert!(
        scope_is_held(&queue, "handover-rival-1", "handover-scope").await,
        "the new attempt holds the enqueue scope"
    );

    // The new attempt is runnable.
    let running = dispatch(&queue, "handover").await;
    assert_eq!(running.retry_info().current_attempt, 1);
    queue.complete(&running).await.expect("complete");
    assert!(stats(&queue).await.is_complete());
    assert_eq!(
        results(&queue).await,
        [("handover".to_owned(), 0), ("handover".to_owned(), 1)]
    );
    assert!(!scope_is_held(&queue, "handover-rival-2", "handover-scope").await);
    queue.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_retrying_and_put_of_a_job_never_run_stores_both_and_runs_only_the_new_one() {
    // amboy's `CompleteRetryingAndPutSucceeds`: two different jobs, the first one pending.
    let queue = idle_queue(8).await;
    let first = retryable("crp-pending-0", 0);
    first.base().metadata().retry_info.max_attempts = 10;
    let second = retryable("crp-pending-1", 0);
    second.base().metadata().retry_info.max_attempts = 20;
    queue.put(first.clone()).await.expect("put");

    queue
        .complete_retrying_and_put(&first, second.clone())
        .await
        .expect("complete retrying and put");

    let found_first = queue.get_attempt("crp-pending-0", 0).await.expect("first");
    assert_eq!(found_first.retry_info(), first.retry_info());
    assert!(found_first.status().completed);
    let found_second = queue.get_attempt("crp-pending-1", 0).await.expect("second");
    assert_eq!(found_second.retry_info(), second.retry_info());
    assert_eq!(found_second.retry_info().max_attempts, 20);

    // The first job is finished: only the second one is handed out.
    let running = dispatch(&queue, "crp-pending-1").await;
    queue.complete(&running).await.expect("complete");
    let counts = stats(&queue).await;
    assert_eq!((counts.total, counts.completed), (2, 2), "{counts}");
    assert!(counts.is_complete(), "{counts}");
    assert!(
        timeout(Duration::from_millis(50), queue.next())
            .await
            .is_err(),
        "nothing else to run"
    );
    queue.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_retrying_and_put_without_the_old_job_changes_nothing() {
    let queue = idle_queue(8).await;
    let old = retryable("crp-missing-old", 0);
    old.base().metadata().retry_info.needs_retry = true;
    let new = retryable("crp-missing-new", 0);
    let err = queue
        .complete_retrying_and_put(&old, new)
        .await
        .unwrap_err();
    assert!(err.is_job_not_found(), "{err}");
    for id in ["crp-missing-old", "crp-missing-new"] {
        let err = queue.get_attempt(id, 0).await.unwrap_err();
        assert!(err.is_job_not_found(), "{err}");
    }
    assert_eq!(stats(&queue).await, QueueStats::default());
    queue.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_retrying_and_put_of_an_existing_attempt_is_a_duplicate_and_changes_nothing() {
    let queue = idle_queue(8).await;
    let base = Base::with_id("crp-duplicate")
        .with_scopes(["crp-duplicate-scope"])
        .with_enqueue_all_scopes();
    queue.put(retryable_with(base, 0)).await.expect("put");
    let old = run_and_ask_to_retry(&queue, "crp-duplicate").await;
    // Attempt 1 exists already (without the scope, which attempt 0 holds).
    queue
        .put(retryable("crp-duplicate", 1))
        .await
        .expect("put attempt 1");
    let old_before = queue.get_attempt("crp-duplicate", 0).await.expect("old");
    let new_before = queue.get_attempt("crp-duplicate", 1).await.expect("new");
    let stats_before = stats(&queue).await;

    let next = retryable_with(
        Base::with_id("crp-duplicate")
            .with_scopes(["crp-duplicate-scope"])
            .with_enqueue_all_scopes(),
        1,
    );
    let now = Utc::now();
    next.base().metadata().time_info.start = Some(now);
    next.base().metadata().time_info.end = Some(now);
    let err = queue
        .complete_retrying_and_put(&old, next)
        .await
        .unwrap_err();
    assert!(err.is_duplicate_job() && !err.is_duplicate_scope(), "{err}");

    let old_after = queue.get_attempt("crp-duplicate", 0).await.expect("old");
    let new_after = queue.get_attempt("crp-duplicate", 1).await.expect("new");
    for (before, after) in [(&old_before, &old_after), (&new_before, &new_after)] {
        assert_eq!(before.status(), after.status());
        assert_eq!(before.time_info(), after.time_info());
        assert_eq!(before.retry_info(), after.retry_info());
    }
    assert!(old_after.retry_info().should_retry(), "still retrying");
    assert!(new_after.time_info().start.is_none());
    assert_eq!(stats(&queue).await, stats_before);
    assert!(
        scope_is_held(&queue, "crp-duplicate-rival", "crp-duplicate-scope").await,
        "attempt 0 still holds its enqueue scope"
    );
    queue.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_retrying_and_put_with_an_enqueue_scope_held_elsewhere_changes_nothing() {
    let queue = idle_queue(8).await;
    let own = |attempt, scopes: &[&str]| {
        retryable_with(
            Base::with_id("crp-scope")
                .with_scopes(scopes.iter().copied())
                .with_enqueue_all_scopes(),
            attempt,
        )
    };
    queue.put(own(0, &["crp-scope-own"])).await.expect("put");
    let old = run_and_ask_to_retry(&queue, "crp-scope").await;
    // Another job holds the second scope from enqueue on.
    queue
        .put(rival("crp-scope-holder", "crp-scope-other"))
        .await
        .expect("put the holder");
    let old_before = queue.get_attempt("crp-scope", 0).await.expect("old");
    let stats_before = stats(&queue).await;

    let err = queue
        .complete_retrying_and_put(&old, own(1, &["crp-scope-own", "crp-scope-other"]))
        .await
        .unwrap_err();
    assert!(err.is_duplicate_scope() && err.is_duplicate_job(), "{err}");

    let err = queue.get_attempt("crp-scope", 1).await.unwrap_err();
    assert!(
        err.is_job_not_found(),
        "the new attempt was not stored: {err}"
    );
    let old_after = queue.get_attempt("crp-scope", 0).await.expect("old");
    assert_eq!(old_before.status(), old_after.status());
    assert_eq!(old_before.retry_info(), old_after.retry_info());
    assert!(old_after.retry_info().should_retry(), "still retrying");
    assert_eq!(stats(&queue).await, stats_before);
    assert!(scope_is_held(&queue, "crp-scope-rival-1", "crp-scope-own").await);
    assert!(scope_is_held(&queue, "crp-scope-rival-2", "crp-scope-other").await);

    // The state is consistent: an attempt without the contested scope goes through.
    queue
        .complete_retrying_and_put(&old, own(1, &["crp-scope-own"]))
        .await
        .expect("retry without the contested scope");
    assert_eq!(
        queue
            .get("crp-scope")
            .await
            .expect("get")
            .retry_info()
            .current_attempt,
        1
    );
    queue.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_retrying_and_put_while_another_job_runs_with_a_dispatch_scope() {
    let queue = idle_queue(8).await;
    let attempt = |n| {
        retryable_with(
            Base::with_id("crp-busy")
                .with_scopes(["crp-busy-own", "crp-busy-shared"])
                .with_enqueue_scopes(["crp-busy-own"]),
            n,
        )
    };
    queue.put(attempt(0)).await.expect("put");
    // Completing attempt 0 releases its dispatch scope and keeps its enqueue scope.
    let old = run_and_ask_to_retry(&queue, "crp-busy").await;
    queue
        .put(plain(
            Base::with_id("crp-busy-other").with_scopes(["crp-busy-shared"]),
        ))
        .await
        .expect("put");
    let other = dispatch(&queue, "crp-busy-other").await;

    queue
        .complete_retrying_and_put(&old, attempt(1))
        .await
        .expect("the old attempt holds only its enqueue scope, which goes to the new one");
    assert!(scope_is_held(&queue, "crp-busy-rival", "crp-busy-own").await);

    queue
        .complete(&other)
        .await
        .expect("complete the other job");
    let running = dispatch(&queue, "crp-busy").await;
    assert_eq!(running.retry_info().current_attempt, 1);
    queue.complete(&running).await.expect("complete");
    assert!(stats(&queue).await.is_complete());
    queue.close().await;
}

// ---------------------------------------------------------------------------------------------
// TestRetryHandlerQueueIntegration
// ---------------------------------------------------------------------------------------------

/// What amboy checks of both attempts after a retry of `job` (attempt 0): the old one keeps
/// its status and times and gets its retry start and end; the new one starts afresh.
async fn check_retried(queue: &LimitedSizeSerializableQueue, job: &JobRef) -> (JobRef, JobRef) {
    let new = wait_for_attempt(queue, job.id(), 1).await;
    let old = queue
        .get_attempt(job.id(), 0)
        .await
        .expect("the old attempt is still stored");

    let old_retry = old.retry_info();
    assert!(
        old_retry.retryable && !old_retry.needs_retry,
        "{old_retry:?}"
    );
    assert_eq!(old_retry.current_attempt, 0);
    assert!(
        old_retry.start.is_some() && old_retry.end.is_some(),
        "{old_retry:?}"
    );
    assert_eq!(
        old.status(),
        job.status(),
        "the old status is the handler's"
    );
    assert_eq!(old.time_info(), job.time_info(), "the old times are kept");
    assert!(old.status().completed && !old.status().in_progress);
    assert_eq!(old.status().owner.as_deref(), Some(queue.id()));
    assert!(old.error().is_none(), "{:?}", old.error());

    let new_retry = new.retry_info();
    assert!(
        new_retry.retryable && !new_retry.needs_retry,
        "{new_retry:?}"
    );
    assert_eq!(new_retry.current_attempt, 1);
    assert!(
        new_retry.start.is_none() && new_retry.end.is_none(),
        "{new_retry:?}"
    );
    assert_eq!(new_retry.max_attempts, old_retry.max_attempts);
    assert_eq!(new_retry.wait_until, old_retry.wait_until);
    assert_eq!(new_retry.dispatch_by, old_retry.dispatch_by);
    assert_eq!(new.status(), JobStatusInfo::default(), "a fresh status");

    let (old_time, new_time) = (old.time_info(), new.time_info());
    assert!(
        new_time.created.is_some() && new_time.created > old_time.created,
        "created anew: {new_time:?} after {old_time:?}"
    );
    assert!(
        new_time.start.is_none() && new_time.end.is_none(),
        "{new_time:?}"
    );
    assert_eq!(new_time.max_time, old_time.max_time);
    assert_eq!(
        payload_of(&new),
        payload_of(job),
        "the new attempt is the same job"
    );
    (old, new)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_keeps_the_old_attempt_and_enqueues_a_fresh_one() {
    let (queue, handler) = queue_with_handler(1).await;
    let job = completed_retrying(&queue, Base::with_id("rh-state"), Utc::now());
    queue.put(job.clone()).await.expect("put");
    let put_times = job.time_info();
    handler.put(job.clone()).await.expect("hand over");

    let (old, new) = check_retried(&queue, &job).await;
    let old_time = old.time_info();
    assert_eq!(old_time, put_times, "the old attempt's times are untouched");
    let new_time = new.time_info();
    assert_eq!(new_time.wait_until, old_time.wait_until, "inherited");
    assert_eq!(new_time.dispatch_by, old_time.dispatch_by, "inherited");
    assert_eq!(new_time.max_time, Duration::from_secs(60));
    assert!(
        old.status().modification_count > 10,
        "locked by the handler"
    );

    let counts = stats(&queue).await;
    assert_eq!(
        (
            counts.total,
            counts.completed,
            counts.retrying,
            counts.pending
        ),
        (2, 1, 0, 1),
        "{counts}"
    );
    queue.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_carries_the_scopes_to_the_new_attempt() {
    let (queue, handler) = queue_with_handler(1).await;
    let base = Base::with_id("rh-scoped")
        .with_scopes(["rh-scoped-scope"])
        .with_enqueue_all_scopes();
    let job = completed_retrying(&queue, base, Utc::now());
    queue.put(job.clone()).await.expect("put");
    assert_eq!(stats(&queue).await.total, 1);
    handler.put(job.clone()).await.expect("hand over");

    let (old, new) = check_retried(&queue, &job).await;
    assert_eq!(old.scopes(), ["rh-scoped-scope"]);
    assert_eq!(new.scopes(), ["rh-scoped-scope"]);
    assert!(new.enqueue_all_scopes());
    assert_eq!(new.time_info().wait_until, old.time_info().wait_until);
    assert_eq!(new.time_info().dispatch_by, old.time_info().dispatch_by);
    assert!(
        scope_is_held(&queue, "rh-scoped-rival", "rh-scoped-scope").await,
        "the new attempt holds the scope"
    );
    assert_eq!(stats(&queue).await.total, 2);
    queue.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_applies_the_retry_offsets_from_now() {
    let (queue, handler) = queue_with_handler(1).await;
    let now = Utc::now();
    let job = completed_retrying(&queue, Base::with_id("rh-offsets"), now);
    {
        let mut meta = job.base().metadata();
        meta.retry_info.max_attempts = 5;
        meta.retry_info.wait_until = Duration::from_secs(3600);
        meta.retry_info.dispatch_by = Duration::from_secs(7200);
        meta.time_info.wait_until = Some(now - TimeDelta::minutes(1));
        meta.time_info.dispatch_by = Some(now + TimeDelta::minutes(2));
    }
    queue.put(job.clone()).await.expect("put");
    handler.put(job.clone()).await.expect("hand over");

    let (old, new) = check_retried(&queue, &job).await;
    let new_retry = new.retry_info();
    assert_eq!(new_retry.max_attempts, 5);
    assert_eq!(new_retry.wait_until, Duration::from_secs(3600));
    assert_eq!(new_retry.dispatch_by, Duration::from_secs(7200));
    let (old_time, new_time) = (old.time_info(), new.time_info());
    let near = |at: Option<DateTime<Utc>>, expected: DateTime<Utc>| {
        at.is_some_and(|at| (at - expected).abs() < TimeDelta::minutes(1))
    };
    assert_ne!(new_time.wait_until, old_time.wait_until);
    assert!(
        near(new_time.wait_until, now + TimeDelta::hours(1)),
        "{new_time:?}"
    );
    assert_ne!(new_time.dispatch_by, old_time.dispatch_by);
    assert!(
        near(new_time.dispatch_by, now + TimeDelta::hours(2)),
        "{new_time:?}"
    );
    assert_eq!(new_time.max_time, Duration::from_secs(60));
    queue.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_of_a_job_missing_from_the_queue_changes_nothing() {
    let (queue, handler) = queue_with_handler(1).await;
    let job = completed_retrying(&queue, Base::with_id("rh-missing"), Utc::now());
    handler.put(job.clone()).await.expect("hand over");

    timeout(PROMPTLY, async {
        while job.retry_info().end.is_none() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("the handler gives up on the job");
    let error = job
        .error()
        .expect("the reason is recorded")
        .message()
        .to_owned();
    assert!(error.contains("getting job attempt"), "{error}");
    assert!(!job.retry_info().needs_retry);
    assert_eq!(
        stats(&queue).await.total,
        0,
        "the queue is unchanged when the retrying job is missing"
    );
    for attempt in [0, 1] {
        let err = queue.get_attempt("rh-missing", attempt).await.unwrap_err();
        assert!(err.is_job_not_found(), "{err}");
    }
    queue.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_is_refused_when_the_next_attempt_exists() {
    let (queue, handler) = queue_with_handler(1).await;
    let job = completed_retrying(&queue, Base::with_id("rh-exists"), Utc::now());
    queue.put(job.clone()).await.expect("put");
    let existing = copy(&job);
    {
        let mut meta = existing.base().metadata();
        meta.retry_info.needs_retry = false;
        meta.retry_info.current_attempt = 1;
    }
    queue.put(existing.clone()).await.expect("put attempt 1");
    let existing_before = queue.get_attempt("rh-exists", 1).await.expect("attempt 1");

    handler.put(job.clone()).await.expect("hand over");
    let old = wait_for_retry_end(&queue, "rh-exists", 0).await;

    assert!(!old.retry_info().needs_retry);
    let error = job
        .error()
        .expect("the reason is recorded")
        .message()
        .to_owned();
    assert!(
        error.contains("enqueueing retry job") && error.contains("duplicate"),
        "{error}"
    );
    let counts = stats(&queue).await;
    assert_eq!((counts.total, counts.retrying), (2, 0), "{counts}");
    assert!(counts.is_complete(), "{counts}");
    let existing_after = queue.get_attempt("rh-exists", 1).await.expect("attempt 1");
    assert_eq!(existing_after.time_info(), existing_before.time_info());
    assert_eq!(existing_after.status(), existing_before.status());
    assert_eq!(existing_after.retry_info(), existing_before.retry_info());
    assert_eq!(existing_after.time_info(), existing.time_info());
    let err = queue.get_attempt("rh-exists", 2).await.unwrap_err();
    assert!(err.is_job_not_found(), "{err}");
    queue.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_is_dropped_when_the_stored_job_no_longer_needs_it() {
    let (queue, handler) = queue_with_handler(1).await;
    let job = completed_retrying(&queue, Base::with_id("rh-done"), Utc::now());
    job.base().metadata().retry_info.needs_retry = false;
    queue.put(job.clone()).await.expect("put");
    // The handler is told otherwise: the stored job wins.
    job.base().metadata().retry_info.needs_retry = true;
    handler.put(job.clone()).await.expect("hand over");

    let stored = wait_for_retry_end(&queue, "rh-done", 0).await;
    assert!(!stored.retry_info().needs_retry);
    let error = job
        .error()
        .expect("the reason is recorded")
        .message()
        .to_owned();
    assert!(error.contains("does not need to retry anymore"), "{error}");
    assert_eq!(stats(&queue).await.total, 1);
    let err = queue.get_attempt("rh-done", 1).await.unwrap_err();
    assert!(err.is_job_not_found(), "the job was not retried: {err}");
    queue.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_succeeds_while_another_job_runs_with_the_retrying_jobs_dispatch_scope() {
    let queue = LimitedSizeSerializableQueue::new(8);
    queue
        .set_runner(Arc::new(IdleRunner::default()))
        .expect("runner");
    let handler = BasicRetryHandler::new(RetryHandlerOptions {
        max_retry_attempts: 1,
        ..Default::default()
    })
    .expect("valid options");
    queue.set_retry_handler(handler.clone()).expect("handler");
    queue.start().await.expect("start");

    let base = Base::with_id("rh-busy")
        .with_scopes(["rh-busy-own", "rh-busy-shared"])
        .with_enqueue_scopes(["rh-busy-own"]);
    queue.put(retryable_with(base, 0)).await.expect("put");
    let job = run_and_ask_to_retry(&queue, "rh-busy").await;
    // Another job takes the dispatch scope attempt 0 released, and runs.
    queue
        .put(plain(
            Base::with_id("rh-busy-other").with_scopes(["rh-busy-shared"]),
        ))
        .await
        .expect("put");
    let other = dispatch(&queue, "rh-busy-other").await;

    handler.put(job.clone()).await.expect("hand over");
    let old = wait_for_retry_end(&queue, "rh-busy", 0).await;
    assert!(
        old.error()
            .is_some_and(|error| error.message() == "asks to retry"),
        "the retry went through without a handler error: {:?}",
        old.error()
    );
    let new = queue
        .get_attempt("rh-busy", 1)
        .await
        .expect("the next attempt was enqueued");
    assert_eq!(new.scopes(), ["rh-busy-own", "rh-busy-shared"]);

    queue
        .complete(&other)
        .await
        .expect("complete the other job");
    let running = dispatch(&queue, "rh-busy").await;
    assert_eq!(running.retry_info().current_attempt, 1);
    queue.complete(&running).await.expect("complete");
    assert!(stats(&queue).await.is_complete());
    queue.close().await;
}

// ---------------------------------------------------------------------------------------------
// End to end
// ---------------------------------------------------------------------------------------------

/// A job failing retryably `failures` times with at most `max_attempts` attempts (0: the
/// default) runs exactly `min(failures + 1, max_attempts)` times.
async fn runs_until_success_or_last_attempt(failures: u32, max_attempts: u32) {
    let limit = if max_attempts == 0 {
        amboy::DEFAULT_MAX_ATTEMPTS
    } else {
        max_attempts
    };
    let expected = (failures + 1).min(limit);
    let id = format!("retry-e2e-{failures}-of-{max_attempts}");
    let queue = amboy::new_local_limited_size_serializable(2, 16);
    queue.start().await.expect("start");
    queue
        .put(Arc::new(Flaky {
            base: Base::with_id(&id)
                .with_retryable(true)
                .with_max_attempts(max_attempts),
            counter: id.clone(),
            failures,
        }))
        .await
        .expect("put");

    timeout(PROMPTLY, amboy::wait(&*queue))
        .await
        .unwrap_or_else(|_| panic!("{id}: waiting never ended"))
        .expect("wait");
    assert!(
        timeout(PROMPTLY, amboy::wait_job(&*queue, &id))
            .await
            .expect("wait_job ends")
            .expect("wait_job")
            .is_completed()
    );
    assert_eq!(
        counter(&id).load(Ordering::SeqCst),
        expected as usize,
        "{id}: runs"
    );

    let attempts = queue.get_all_attempts(&id).await.expect("attempts");
    let numbers: Vec<u32> = attempts
        .iter()
        .map(|job| job.retry_info().current_attempt)
        .collect();
    assert_eq!(numbers, (0..expected).collect::<Vec<_>>(), "{id}");
    for attempt in &attempts {
        assert!(attempt.status().completed, "{id}");
        assert!(!attempt.retry_info().should_retry(), "{id}");
    }
    let last = queue.get(&id).await.expect("get");
    assert_eq!(last.retry_info().current_attempt, expected - 1, "{id}");
    if failures >= limit {
        let error = last
            .error()
            .expect("the last attempt failed")
            .message()
            .to_owned();
        assert!(error.contains("fails on purpose"), "{id}: {error}");
        assert!(
            error.contains("job has reached its maximum attempt limit"),
            "{id}: {error}"
        );
    } else {
        assert!(last.error().is_none(), "{id}: {:?}", last.error());
    }
    let results = results(&queue).await;
    assert!(
        results.contains(&(id.clone(), expected - 1)),
        "{id}: the last attempt is a result: {results:?}"
    );
    let counts = stats(&queue).await;
    assert_eq!(
        (
            counts.total,
            counts.completed,
            counts.retrying,
            counts.pending
        ),
        (expected as usize, expected as usize, 0, 0),
        "{id}: {counts}"
    );
    queue.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_succeeding_at_once_runs_once() {
    runs_until_success_or_last_attempt(0, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_failing_twice_runs_three_times() {
    runs_until_success_or_last_attempt(2, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_failing_until_its_last_attempt_runs_max_attempts_times() {
    runs_until_success_or_last_attempt(2, 3).await;
    runs_until_success_or_last_attempt(10, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_with_one_attempt_never_retries() {
    runs_until_success_or_last_attempt(1, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_without_a_maximum_gets_the_default_number_of_attempts() {
    runs_until_success_or_last_attempt(4, 0).await;
    runs_until_success_or_last_attempt(20, 0).await;
}

// ---------------------------------------------------------------------------------------------
// The hand-off to the retry handler (issue 6, defect 8)
// ---------------------------------------------------------------------------------------------

/// Waits for the gate named `gate`, then fails asking to retry.
#[derive(Debug, Serialize, Deserialize)]
struct GatedRetry {
    base: Base,
    gate: String,
}

#[typetag::serde(name = "retry-test-gated-retry")]
#[async_trait::async_trait]
impl Job for GatedRetry {
    fn base(&self) -> &Base {
        &self.base
    }

    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        let gate = amboy_tests::jobs::gate(&self.gate);
        let _permit = gate
            .acquire()
            .await
            .map_err(|_| JobError::new("gate closed"))?;
        Err(JobError::retryable("asks to retry"))
    }
}

/// A handler set after the queue started was accepted and never started: jobs asking to retry
/// waited for it for ever. It is refused now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_handler_set_after_start_is_refused() {
    let queue = LimitedSizeSerializableQueue::new(8);
    queue
        .set_runner(amboy::runner::LocalWorkers::new(1))
        .unwrap();
    queue.start().await.unwrap();
    let handler = BasicRetryHandler::new(RetryHandlerOptions::default()).unwrap();
    let error = queue
        .set_retry_handler(handler.clone())
        .expect_err("too late");
    assert!(
        matches!(error, amboy::Error::AlreadyStarted("queue")),
        "{error}"
    );
    assert!(queue.retry_handler().is_none() && !handler.started());
    queue.close().await;
}

/// Workers used to await the handler's `put` on its bounded buffer: a full handler held a
/// worker for as long as it stayed full, and `close` waited for that worker. Now a full
/// handler does not take the job (it stays retrying in its queue for the stale-retrying
/// monitor), the worker moves on, and closing never waits on the handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_retry_handler_holds_up_neither_workers_nor_close() {
    const GATE: &str = "full-handler";
    let queue = LimitedSizeSerializableQueue::new(3);
    let pool = amboy::runner::AbortablePool::new(3);
    queue.set_runner(pool.clone()).unwrap();
    // Room for one job; a retry that fails waits an hour before it is tried again.
    let handler = BasicRetryHandler::new(RetryHandlerOptions {
        max_capacity: 1,
        retry_backoff: Duration::from_secs(3600),
        max_retry_time: Duration::from_secs(7200),
        ..RetryHandlerOptions::default()
    })
    .unwrap();
    queue.set_retry_handler(handler.clone()).unwrap();
    queue.start().await.unwrap();
    for n in 0..3 {
        let job = GatedRetry {
            base: Base::with_id(format!("full-{n}")).with_retryable(true),
            gate: GATE.to_owned(),
        };
        queue.put(Arc::new(job)).await.unwrap();
    }
    timeout(PROMPTLY, async {
        while pool.running_jobs().len() < 3 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the three jobs run");
    // The queue is full of jobs for later: every next attempt is refused (queue full), so the
    // handler's worker waits out its back-off with the first job, its buffer holds the second,
    // and it has no room for the third.
    let later = Utc::now() + TimeDelta::hours(1);
    for n in 0..3 {
        queue
            .put(plain(
                Base::with_id(format!("later-{n}")).with_wait_until(later),
            ))
            .await
            .unwrap();
    }
    amboy_tests::jobs::open_gate(GATE);
    timeout(PROMPTLY, async {
        while !pool.running_jobs().is_empty() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("no worker waits on the full handler");
    let stats = queue.stats().await.unwrap();
    assert_eq!(stats.retrying, 3, "{stats}");
    timeout(PROMPTLY, queue.close())
        .await
        .expect("closing does not wait on the handler");
}

#[tokio::test]
async fn a_basic_handler_takes_a_job_without_waiting_or_says_it_is_full() {
    let handler = BasicRetryHandler::new(RetryHandlerOptions {
        max_capacity: 1,
        ..RetryHandlerOptions::default()
    })
    .unwrap();
    assert!(matches!(handler.try_put(&retryable("a", 0)), Some(Ok(()))));
    match handler.try_put(&retryable("b", 0)) {
        Some(Err(amboy::Error::QueueFull { id })) => assert_eq!(id, "b"),
        other => panic!("a full handler says so: {other:?}"),
    }
    assert_eq!(handler.pending(), 1);
}

/// A runner that records, when it starts, whether its queue's retry handler runs already.
#[derive(Default)]
struct ProbeRunner {
    queue: std::sync::Mutex<Option<Arc<dyn Queue>>>,
    handler_ran_first: std::sync::atomic::AtomicBool,
    started: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl amboy::Runner for ProbeRunner {
    fn started(&self) -> bool {
        self.started.load(Ordering::SeqCst)
    }

    fn set_queue(&self, queue: Arc<dyn Queue>) -> amboy::Result<()> {
        *self.queue.lock().expect("not poisoned") = Some(queue);
        Ok(())
    }

    async fn start(&self) -> amboy::Result<()> {
        let queue = self
            .queue
            .lock()
            .expect("not poisoned")
            .clone()
            .expect("a queue");
        let running = queue
            .as_retryable()
            .and_then(|queue| queue.retry_handler())
            .is_some_and(|handler| handler.started());
        self.handler_ran_first.store(running, Ordering::SeqCst);
        self.started.store(true, Ordering::SeqCst);
        Ok(())
    }

    async fn close(&self) {
        self.started.store(false, Ordering::SeqCst);
    }
}

/// The retry handler runs before the workers start: a job that asks to retry as soon as the
/// queue starts is handed over at once, not a lock timeout later by the stale-retrying monitor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_handler_starts_before_the_workers() {
    let serializable = LimitedSizeSerializableQueue::new(8);
    let postgres = amboy_tests::postgres::queue(amboy_tests::postgres::options());
    let queues: [Arc<dyn RetryableQueue>; 2] = [serializable, postgres];
    for queue in queues {
        queue
            .set_retry_handler(
                BasicRetryHandler::new(RetryHandlerOptions::default()).expect("valid"),
            )
            .expect("a handler");
        let probe = Arc::new(ProbeRunner::default());
        queue.set_runner(probe.clone()).expect("a runner");
        queue.start().await.expect("start");
        assert!(
            probe.handler_ran_first.load(Ordering::SeqCst),
            "{}: the handler runs when the workers start",
            queue.id()
        );
        queue.close().await;
    }
}

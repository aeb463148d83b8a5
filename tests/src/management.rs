//! The management behaviour tests (amboy's `management_test.go` matrix): the same scenarios
//! run against the queue-backed manager on every in-memory queue and on the PostgreSQL queue,
//! and against the PostgreSQL manager.
//!
//! A [`Backend`] builds a started queue whose runner runs nothing, and a manager of it; the
//! scenarios dispatch and complete jobs themselves to set up amboy's fixture: jobs pending, in
//! progress, stale, completed, failed, retrying and stale-retrying.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use amboy::management::{JobQuery, Manager, StatusFilter};
use amboy::{Base, Error, JobInfo, JobRef, Queue};
use chrono::{TimeDelta, Utc};
use futures::future::BoxFuture;

use crate::jobs::{Count, Noop};

/// The type of most fixture jobs.
pub const MAIN_TYPE: &str = "conformance-noop";
/// The type of `pending-2`.
pub const OTHER_TYPE: &str = "conformance-count";

/// A queue under management, as a scenario gets it.
pub struct Managed {
    /// The queue, started, with a runner that runs nothing.
    pub queue: Arc<dyn Queue>,
    /// Its manager.
    pub manager: Arc<dyn Manager>,
    /// Makes a dispatched or retrying job's lock [`AGED_BY`] old, as the store sees it: older
    /// than the manager's lock timeout, younger than the queue's (a queue that reclaims stale
    /// jobs would take it back).
    pub age: Box<dyn Fn(JobRef) -> BoxFuture<'static, ()> + Send + Sync>,
    /// Whether the queue stores copies under amboy's optimistic lock (a lost lock makes the
    /// owner's writes fail rather than find the job completed).
    pub stores_copies: bool,
}

impl std::fmt::Debug for Managed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Managed")
            .field("queue", &self.queue.id())
            .field("manager", &self.manager)
            .finish()
    }
}

/// How a backend builds a managed queue.
pub type Backend = fn() -> BoxFuture<'static, Managed>;

/// The lock timeout the managers under test judge staleness with: shorter than [`AGED_BY`],
/// while the queues' own (10 minutes) is longer, so that a queue does not claim the aged job
/// again.
pub const MANAGER_LOCK_TIMEOUT: Duration = Duration::from_secs(60);

/// How much older [`Managed::age`] makes a lock than the manager's lock timeout.
pub const AGED_BY: Duration = Duration::from_secs(5 * 60);

/// Makes a job's lock [`AGED_BY`] old by changing the job itself and saving it: for queues
/// that keep the modification time the job carries.
pub fn age_in_place(
    queue: Arc<dyn Queue>,
) -> Box<dyn Fn(JobRef) -> BoxFuture<'static, ()> + Send + Sync> {
    Box::new(move |job: JobRef| {
        let queue = queue.clone();
        Box::pin(async move {
            job.base().metadata().status.modification_time =
                Some(Utc::now() - TimeDelta::from_std(AGED_BY).unwrap());
            queue.save(&job).await.expect("save the aged job");
        })
    })
}

/// Makes a job's lock [`AGED_BY`] old on the database's clock, in the PostgreSQL queue's
/// schema `schema`.
pub fn age_in_postgres(
    pool: sqlx::PgPool,
    schema: &str,
) -> Box<dyn Fn(JobRef) -> BoxFuture<'static, ()> + Send + Sync> {
    let sql = format!("UPDATE {schema}.jobs SET lock_ts = now() - $2::interval WHERE id = $1");
    Box::new(move |job: JobRef| {
        let (pool, sql) = (pool.clone(), sql.clone());
        Box::pin(async move {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(job.id())
                .bind(AGED_BY)
                .execute(&pool)
                .await
                .expect("age the job");
        })
    })
}

/// The fixture's jobs and the filters each passes (besides `all`).
pub fn expected(retryable: bool) -> Vec<(&'static str, &'static [StatusFilter])> {
    use StatusFilter::*;
    let mut jobs: Vec<(&'static str, &'static [StatusFilter])> = vec![
        ("pending-1", &[Pending]),
        ("pending-2", &[Pending]),
        ("running", &[InProgress]),
        ("stale", &[InProgress, Stale]),
        ("done", &[Completed]),
        ("failed", &[Completed]),
    ];
    if retryable {
        jobs.push(("retrying", &[Completed, Retrying]));
        jobs.push(("retrying-stale", &[Completed, Retrying, StaleRetrying]));
    }
    jobs
}

/// The fixture, set up through the queue: returns the jobs dispatched and still held, by ID.
pub async fn fixture(managed: &Managed) -> Vec<(String, JobRef)> {
    let queue = &managed.queue;
    let retryable = queue.as_retryable().is_some();
    let mut held = Vec::new();
    // One job at a time, so that `next` has only it to take, whatever the queue's order.
    let dispatch = async |id: &str, retry: bool| -> JobRef {
        let job = Noop {
            base: Base::with_id(id).with_retryable(retry),
        };
        queue.put(Arc::new(job)).await.expect("put");
        let job = tokio::time::timeout(Duration::from_secs(10), queue.next())
            .await
            .expect("the job is dispatched")
            .expect("next");
        assert_eq!(job.id(), id);
        job
    };
    let running = dispatch("running", false).await;
    held.push(("running".to_owned(), running));
    let stale = dispatch("stale", false).await;
    (managed.age)(stale.clone()).await;
    held.push(("stale".to_owned(), stale));
    let done = dispatch("done", false).await;
    queue.complete(&done).await.expect("complete done");
    // A retryable job that fails without asking to retry: finished, with its error.
    let failed = dispatch("failed", true).await;
    failed.base().add_error("it broke");
    queue.complete(&failed).await.expect("complete failed");
    if retryable {
        for id in ["retrying", "retrying-stale"] {
            let job = dispatch(id, true).await;
            job.base().add_retryable_error("try again");
            queue.complete(&job).await.expect("complete retrying");
            if id == "retrying-stale" {
                let stored = queue
                    .as_retryable()
                    .unwrap()
                    .get_attempt(id, 0)
                    .await
                    .expect("the retrying attempt");
                (managed.age)(stored).await;
            }
        }
    }
    // Pending jobs due in an hour: no claim, however eager, takes them.
    let due = Utc::now() + TimeDelta::hours(1);
    let pending = Noop {
        base: Base::with_id("pending-1").with_wait_until(due),
    };
    queue.put(Arc::new(pending)).await.expect("put");
    let pending = Count {
        base: Base::with_id("pending-2").with_wait_until(due),
        counter: "management".into(),
    };
    queue.put(Arc::new(pending)).await.expect("put");
    held
}

async fn ids(manager: &dyn Manager, filter: StatusFilter) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for job_type in [MAIN_TYPE, OTHER_TYPE] {
        for grouped in manager
            .job_ids_by_state(job_type, filter)
            .await
            .expect("ids")
        {
            assert!(ids.insert(grouped.id.clone()), "{grouped:?} listed once");
        }
    }
    ids
}

fn wanted(retryable: bool, filter: StatusFilter) -> BTreeSet<String> {
    expected(retryable)
        .into_iter()
        .filter(|(_, filters)| filter == StatusFilter::All || filters.contains(&filter))
        .map(|(id, _)| id.to_owned())
        .collect()
}

async fn info(queue: &Arc<dyn Queue>, id: &str) -> JobInfo {
    JobInfo::new(&*queue.get(id).await.expect("get"))
}

/// Every filter selects exactly amboy's fixture set, in IDs and in counts by type.
pub async fn filters_select_the_fixture(backend: Backend) {
    let managed = backend().await;
    fixture(&managed).await;
    let retryable = managed.queue.as_retryable().is_some();
    for filter in StatusFilter::ALL {
        let want = wanted(retryable, filter);
        assert_eq!(
            ids(&*managed.manager, filter).await,
            want,
            "IDs of {filter}"
        );
        let counts = managed.manager.job_status(filter).await.expect("status");
        let other = u64::from(want.contains("pending-2"));
        let main = want.len() as u64 - other;
        let got: Vec<(String, u64)> = counts
            .iter()
            .map(|count| (count.job_type.clone(), count.count))
            .collect();
        let mut expected_counts = Vec::new();
        if main > 0 {
            expected_counts.push((MAIN_TYPE.to_owned(), main));
        }
        if other > 0 {
            expected_counts.push((OTHER_TYPE.to_owned(), other));
        }
        expected_counts.sort();
        assert_eq!(got, expected_counts, "counts of {filter}");
    }
    managed.queue.close().await;
}

/// `complete_jobs(filter)` completes exactly the unfinished jobs the filter selects, ends
/// their retrying and leaves every other job as it was.
pub async fn complete_jobs_marks_exactly_the_set(backend: Backend) {
    use StatusFilter::*;
    for filter in [
        Pending,
        InProgress,
        Stale,
        Retrying,
        StaleRetrying,
        Completed,
        All,
    ] {
        let managed = backend().await;
        fixture(&managed).await;
        let retryable = managed.queue.as_retryable().is_some();
        let selected = wanted(retryable, filter);
        let unfinished: BTreeSet<String> = selected
            .iter()
            .filter(|id| !matches!(id.as_str(), "done" | "failed"))
            .cloned()
            .collect();
        let mut before = Vec::new();
        for (id, _) in expected(retryable) {
            before.push((id, info(&managed.queue, id).await));
        }
        let completed = managed
            .manager
            .complete_jobs(filter)
            .await
            .expect("complete");
        assert_eq!(
            completed,
            unfinished.len() as u64,
            "{filter}: {unfinished:?}"
        );
        for (id, old) in before {
            let new = info(&managed.queue, id).await;
            if unfinished.contains(id) {
                assert!(
                    new.status.completed && !new.status.in_progress,
                    "{filter}: {id} completed: {:?}",
                    new.status
                );
                assert!(
                    !(new.retry.retryable && new.retry.needs_retry),
                    "{filter}: {id} no longer retries: {:?}",
                    new.retry
                );
                assert!(new.status.modification_count > 0, "{filter}: {id}");
            } else {
                assert_eq!(
                    (
                        old.status.completed,
                        old.status.in_progress,
                        old.retry.needs_retry
                    ),
                    (
                        new.status.completed,
                        new.status.in_progress,
                        new.retry.needs_retry
                    ),
                    "{filter}: {id} untouched"
                );
            }
        }
        // Nothing the filter selected is left to complete.
        assert_eq!(
            managed.manager.complete_jobs(filter).await.expect("again"),
            0,
            "{filter}"
        );
        managed.queue.close().await;
    }
}

/// A pending job completed by ID leaves the line: the queue dispatches the others, never it.
/// An unknown ID is a job-not-found error; a finished job stays as it was.
pub async fn complete_job_takes_a_pending_job_out_of_line(backend: Backend) {
    let managed = backend().await;
    fixture(&managed).await;
    let manager = &managed.manager;
    for id in ["line-1", "line-2"] {
        managed.queue.put(Noop::new(id)).await.expect("put");
    }
    manager
        .complete_job("line-1")
        .await
        .expect("complete line-1");
    let status = info(&managed.queue, "line-1").await.status;
    assert!(status.completed && !status.in_progress, "{status:?}");
    let next = tokio::time::timeout(Duration::from_secs(10), managed.queue.next())
        .await
        .expect("line-2 is dispatched")
        .expect("next");
    assert_eq!(next.id(), "line-2");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), managed.queue.next())
            .await
            .is_err(),
        "the completed job is never dispatched"
    );
    let error = manager.complete_job("nobody").await.expect_err("unknown");
    assert!(error.is_job_not_found(), "{error}");
    let before = info(&managed.queue, "done").await;
    manager.complete_job("done").await.expect("a finished job");
    assert_eq!(info(&managed.queue, "done").await.status, before.status);
    managed.queue.close().await;
}

/// Completing a running job invalidates its owner's lock: the owner's completion no longer
/// changes it, even from a count one ahead of the stored one (a heartbeat that changed the
/// job and whose write was lost), which a write under the lock may have.
pub async fn complete_job_fences_out_the_owner(backend: Backend) {
    let managed = backend().await;
    let held = fixture(&managed).await;
    let (_, running) = held.iter().find(|(id, _)| id == "running").unwrap();
    let stored = info(&managed.queue, "running")
        .await
        .status
        .modification_count;
    managed
        .manager
        .complete_job("running")
        .await
        .expect("complete");
    running
        .base()
        .add_error("written by the owner after the manager completed it");
    if managed.stores_copies {
        running.base().metadata().status.modification_count = stored + 1;
    }
    let outcome = managed.queue.complete(running).await;
    if managed.stores_copies {
        let error = outcome.expect_err("the owner lost its lock");
        assert!(error.is_job_not_found(), "{error}");
    }
    let after = info(&managed.queue, "running").await;
    assert!(
        after.status.completed && !after.status.in_progress,
        "{after:?}"
    );
    if managed.stores_copies {
        assert!(after.status.errors.is_empty(), "{:?}", after.status.errors);
    }
    // A retrying job: the retry handler, holding a copy, locks it and saves it to build the
    // next attempt; once management completed the job, that save fails.
    if let Some(queue) = managed.queue.as_retryable() {
        let copy = queue.get_attempt("retrying", 0).await.expect("the attempt");
        managed
            .manager
            .complete_job("retrying")
            .await
            .expect("complete");
        let owner: Arc<str> = Arc::from(managed.queue.id());
        let locked = copy.base().lock(&owner, managed.queue.info().lock_timeout);
        let saved = match locked {
            Ok(()) => managed.queue.save(&copy).await,
            Err(error) => Err(error),
        };
        assert!(saved.is_err(), "the handler's save after the completion");
        let after = info(&managed.queue, "retrying").await;
        assert!(
            after.status.completed && !after.retry.needs_retry,
            "{after:?}"
        );
    }
    managed.queue.close().await;
}

/// By type and by pattern select within the filter; a bad pattern is refused.
pub async fn complete_by_type_and_pattern(backend: Backend) {
    let managed = backend().await;
    fixture(&managed).await;
    let manager = &managed.manager;
    assert_eq!(
        manager
            .complete_jobs_by_type(StatusFilter::Pending, OTHER_TYPE)
            .await
            .expect("by type"),
        1
    );
    assert!(info(&managed.queue, "pending-2").await.status.completed);
    assert!(!info(&managed.queue, "pending-1").await.status.completed);
    assert_eq!(
        manager
            .complete_jobs_by_type(StatusFilter::Completed, MAIN_TYPE)
            .await
            .expect("by type"),
        u64::from(managed.queue.as_retryable().is_some()) * 2,
        "only retrying jobs are unfinished among completed ones"
    );
    assert_eq!(
        manager
            .complete_jobs_by_pattern(StatusFilter::All, "^(pending|run)")
            .await
            .expect("by pattern"),
        2,
        "pending-1 and running"
    );
    assert!(info(&managed.queue, "running").await.status.completed);
    assert!(!info(&managed.queue, "stale").await.status.completed);
    let error = manager
        .complete_jobs_by_pattern(StatusFilter::All, "(unclosed")
        .await
        .expect_err("a bad pattern");
    assert!(matches!(error, Error::Invalid(_)), "{error:?}");
    managed.queue.close().await;
}

/// Listing pages through exactly the jobs a query selects, in order; a job's record holds
/// every attempt.
pub async fn listing_and_inspecting(backend: Backend) {
    let started = Utc::now();
    let managed = backend().await;
    fixture(&managed).await;
    let retryable = managed.queue.as_retryable().is_some();
    let manager = &managed.manager;
    let mut query = JobQuery::new(StatusFilter::All).limit(3);
    let mut seen = Vec::new();
    loop {
        let page = manager.list_jobs(&query).await.expect("a page");
        assert!(page.jobs.len() <= 3);
        seen.extend(page.jobs.iter().map(|job| job.info.id.clone()));
        match page.next {
            Some(cursor) => query = query.after(cursor),
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "listed by ID");
    assert_eq!(
        seen.into_iter().collect::<BTreeSet<_>>(),
        wanted(retryable, StatusFilter::All)
    );
    let pending = manager
        .list_jobs(&JobQuery::new(StatusFilter::Pending).job_type(OTHER_TYPE))
        .await
        .expect("pending of a type");
    let ids: Vec<&str> = pending
        .jobs
        .iter()
        .map(|job| job.info.id.as_str())
        .collect();
    assert_eq!(ids, ["pending-2"]);
    let none = manager
        .list_jobs(&JobQuery::new(StatusFilter::All).created(None, Some(started)))
        .await
        .expect("created before the fixture");
    assert!(none.jobs.is_empty(), "{:?}", none.jobs);
    let all = manager
        .list_jobs(&JobQuery::new(StatusFilter::All).created(Some(started), None))
        .await
        .expect("created since");
    assert_eq!(all.jobs.len(), wanted(retryable, StatusFilter::All).len());
    let error = manager
        .list_jobs(&JobQuery::new(StatusFilter::All).limit(0))
        .await
        .expect_err("an empty page");
    assert!(matches!(error, Error::Invalid(_)), "{error:?}");

    let detail = manager.job("failed").await.expect("a job");
    assert_eq!(detail.attempts.len(), 1);
    assert_eq!(detail.attempts[0].status.errors, ["it broke"]);
    let job = detail.job.expect("its interchange");
    assert_eq!(job.type_name, MAIN_TYPE);
    let error = manager.job("nobody").await.expect_err("unknown");
    assert!(error.is_job_not_found(), "{error}");
    managed.queue.close().await;
}

/// A failed job is enqueued again as its next attempt, pending, on a queue that retries; a
/// job that succeeded, or has not finished, is refused; so is every job on a queue that does
/// not retry.
pub async fn requeue_a_failed_job(backend: Backend) {
    let managed = backend().await;
    fixture(&managed).await;
    let manager = &managed.manager;
    let Some(queue) = managed.queue.as_retryable() else {
        let error = manager.requeue_job("failed").await.expect_err("no retries");
        assert!(error.to_string().contains("does not retry"), "{error}");
        managed.queue.close().await;
        return;
    };
    let again = manager.requeue_job("failed").await.expect("requeue");
    assert_eq!(
        (again.id.as_str(), again.retry.current_attempt),
        ("failed", 1)
    );
    assert!(
        !again.status.completed && again.status.errors.is_empty(),
        "{again:?}"
    );
    let attempts = queue.get_all_attempts("failed").await.expect("attempts");
    assert_eq!(attempts.len(), 2);
    assert!(attempts[0].base().status().completed);
    let detail = manager.job("failed").await.expect("a job");
    assert_eq!(detail.attempts.len(), 2);
    // The new attempt is dispatched like any pending job.
    managed
        .manager
        .complete_jobs(StatusFilter::Pending)
        .await
        .expect("clear the others");
    let _ = managed.manager.complete_job("failed").await;
    for id in ["done", "pending-1", "running"] {
        let error = manager.requeue_job(id).await.expect_err("not failed");
        assert!(matches!(error, Error::InvalidJob { .. }), "{id}: {error:?}");
    }
    // A job put without retries, failing twice: each time enqueued again as its next attempt,
    // the latest attempt being the job.
    managed.queue.put(Noop::new("plain")).await.expect("put");
    for attempt in 0..2u32 {
        let job = tokio::time::timeout(Duration::from_secs(10), managed.queue.next())
            .await
            .expect("dispatched")
            .expect("next");
        assert_eq!(
            (job.id(), job.base().retry_info().current_attempt),
            ("plain", attempt)
        );
        job.base().add_error("it broke again");
        managed.queue.complete(&job).await.expect("complete");
        let again = manager.requeue_job("plain").await.expect("requeue");
        assert_eq!(again.retry.current_attempt, attempt + 1);
        let latest = managed.queue.get("plain").await.expect("the job");
        assert_eq!(latest.base().retry_info().current_attempt, attempt + 1);
        assert!(!latest.base().status().completed);
        let detail = manager.job("plain").await.expect("its record");
        let attempts: Vec<u32> = detail
            .attempts
            .iter()
            .map(|info| info.retry.current_attempt)
            .collect();
        assert_eq!(attempts, (0..=attempt + 1).collect::<Vec<_>>());
    }
    managed.queue.close().await;
}

/// One test per scenario for each named backend (a [`Backend`] in scope): `management_scenarios!
/// { module => backend, ... }` makes a module per backend holding the scenarios' tests.
#[macro_export]
macro_rules! management_scenarios {
    ($($module:ident => $backend:expr),* $(,)?) => {
        $(
            mod $module {
                use super::*;

                const BACKEND: $crate::management::Backend = $backend;

                #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn filters_select_the_fixture() {
                    $crate::management::filters_select_the_fixture(BACKEND).await;
                }

                #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn complete_jobs_marks_exactly_the_set() {
                    $crate::management::complete_jobs_marks_exactly_the_set(BACKEND).await;
                }

                #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn complete_job_takes_a_pending_job_out_of_line() {
                    $crate::management::complete_job_takes_a_pending_job_out_of_line(BACKEND)
                        .await;
                }

                #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn complete_job_fences_out_the_owner() {
                    $crate::management::complete_job_fences_out_the_owner(BACKEND).await;
                }

                #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn complete_by_type_and_pattern() {
                    $crate::management::complete_by_type_and_pattern(BACKEND).await;
                }

                #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn listing_and_inspecting() {
                    $crate::management::listing_and_inspecting(BACKEND).await;
                }

                #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn requeue_a_failed_job() {
                    $crate::management::requeue_a_failed_job(BACKEND).await;
                }
            }
        )*
    };
}

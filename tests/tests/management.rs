//! Management: the same behaviour tests against the queue-backed manager on every in-memory
//! queue and on the PostgreSQL queue, and against the PostgreSQL manager; and what only the
//! PostgreSQL manager does (every group at once, set-aside and expired jobs, completing a job
//! another process runs).

use std::sync::Arc;
use std::time::Duration;

use amboy::local::{
    AdaptiveOrderingQueue, DependencyOrderedQueue, LimitedSizeQueue, LimitedSizeSerializableQueue,
    PriorityQueue, ShuffledQueue,
};
use amboy::management::JobQuery;
use amboy::management::{Manager, QueueManager, StatusFilter};
use amboy::postgres::{PostgresManager, PostgresQueue, sqlx};
use amboy::registry::JobInterchange;
use amboy::{Base, Queue};
use amboy_tests::cases::IdleRunner;
use amboy_tests::jobs::Noop;
use amboy_tests::management::{self as scenarios, MANAGER_LOCK_TIMEOUT, Managed, age_in_place};
use amboy_tests::postgres;
use chrono::{TimeDelta, Utc};
use futures::future::BoxFuture;

async fn local(queue: Arc<dyn Queue>, stores_copies: bool) -> Managed {
    queue
        .set_runner(Arc::new(IdleRunner::default()))
        .expect("a runner");
    queue.start().await.expect("start");
    Managed {
        manager: Arc::new(QueueManager::new(queue.clone()).with_lock_timeout(MANAGER_LOCK_TIMEOUT)),
        age: age_in_place(queue.clone()),
        queue,
        stores_copies,
    }
}

async fn postgres_queue() -> Arc<PostgresQueue> {
    let queue = postgres::queue(postgres::options());
    queue
        .set_runner(Arc::new(IdleRunner::default()))
        .expect("a runner");
    queue.start().await.expect("start");
    queue
}

fn limited_size() -> BoxFuture<'static, Managed> {
    Box::pin(local(LimitedSizeQueue::new(64), false))
}
fn serializable() -> BoxFuture<'static, Managed> {
    Box::pin(local(LimitedSizeSerializableQueue::new(64), true))
}
fn priority() -> BoxFuture<'static, Managed> {
    Box::pin(local(PriorityQueue::new(64), false))
}
fn dependency_ordered() -> BoxFuture<'static, Managed> {
    Box::pin(local(DependencyOrderedQueue::new(64), false))
}
fn adaptive_ordering() -> BoxFuture<'static, Managed> {
    Box::pin(local(AdaptiveOrderingQueue::new(64), false))
}
fn shuffled() -> BoxFuture<'static, Managed> {
    Box::pin(local(ShuffledQueue::new(64), false))
}
fn postgres_manager() -> BoxFuture<'static, Managed> {
    Box::pin(async {
        let queue = postgres_queue().await;
        Managed {
            manager: Arc::new(
                PostgresManager::for_queue(&queue).with_lock_timeout(MANAGER_LOCK_TIMEOUT),
            ),
            age: scenarios::age_in_postgres(queue.pool().clone(), &queue.options().schema),
            queue,
            stores_copies: true,
        }
    })
}

amboy_tests::management_scenarios! {
    limited_size => limited_size,
    limited_size_serializable => serializable,
    priority => priority,
    dependency_ordered => dependency_ordered,
    adaptive_ordering => adaptive_ordering,
    shuffled => shuffled,
    postgres_manager => postgres_manager,
}

/// The longest a test waits for the queue to do something.
const LIMIT: Duration = Duration::from_secs(10);

/// A manager of every group counts and lists by group; a manager of one group sees only its
/// own; completing by ID finds a job whatever its group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_of_every_group_reports_and_completes_by_group() {
    let base = postgres::options();
    let a = postgres::queue(base.clone().group("a"));
    let b = postgres::queue(base.clone().group("b"));
    for id in ["a-1", "a-2", "both"] {
        a.put(Noop::new(id)).await.expect("put");
    }
    for id in ["b-1", "both"] {
        b.put(Noop::new(id)).await.expect("put");
    }
    let every = PostgresManager::new(base.clone())
        .expect("manager")
        .every_group();
    let only_a = PostgresManager::for_queue(&a);
    let counts: Vec<(String, u64)> = every
        .job_status(StatusFilter::Pending)
        .await
        .expect("counts")
        .into_iter()
        .map(|count| (count.group, count.count))
        .collect();
    assert_eq!(counts, [("a".to_owned(), 3), ("b".to_owned(), 2)]);
    let ids: Vec<(String, String)> = every
        .job_ids_by_state(scenarios::MAIN_TYPE, StatusFilter::All)
        .await
        .expect("ids")
        .into_iter()
        .map(|grouped| (grouped.group, grouped.id))
        .collect();
    let expected: Vec<(String, String)> = [
        ("a", "a-1"),
        ("a", "a-2"),
        ("a", "both"),
        ("b", "b-1"),
        ("b", "both"),
    ]
    .map(|(group, id)| (group.to_owned(), id.to_owned()))
    .to_vec();
    assert_eq!(ids, expected);
    let listed = every
        .list_jobs(&JobQuery::new(StatusFilter::All).group("b"))
        .await
        .expect("b's jobs");
    assert_eq!(listed.jobs.len(), 2);
    assert!(listed.jobs.iter().all(|job| job.group == "b"));

    // One group's manager sees nothing of the other's.
    let error = only_a.complete_job("b-1").await.expect_err("b's job");
    assert!(error.is_job_not_found(), "{error}");
    assert_eq!(
        only_a.job_status(StatusFilter::All).await.expect("a").len(),
        1
    );
    every.complete_job("b-1").await.expect("found in b");
    assert!(b.get("b-1").await.expect("b-1").base().status().completed);
    // An ID two groups use: completed in both, but its record is ambiguous.
    every.complete_job("both").await.expect("both groups");
    every
        .complete_job("both")
        .await
        .expect("finished in both groups: nothing to do, and no error");
    assert!(a.get("both").await.expect("a's").base().status().completed);
    assert!(b.get("both").await.expect("b's").base().status().completed);
    let error = every.job("both").await.expect_err("two groups");
    assert!(error.to_string().contains("'a' and 'b'"), "{error}");
    assert_eq!(only_a.job("both").await.expect("a's").group, "a");
}

/// Expired and set-aside jobs have their own filters; an expired job may be enqueued again, a
/// set-aside one may not; neither is "completed" again by a bulk completion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_set_aside_jobs_have_their_filters() {
    let queue = postgres_queue().await;
    let manager = PostgresManager::for_queue(&queue);
    let envelope =
        JobInterchange::from_json(r#"{"name":"alien","type":"no-such-type","version":0,"job":{}}"#)
            .expect("an envelope");
    queue.put_interchange(envelope).await.expect("stored as is");
    queue.put(Noop::new("fine")).await.expect("put");
    let fine = tokio::time::timeout(LIMIT, queue.next())
        .await
        .expect("in time")
        .expect("next");
    assert_eq!(fine.id(), "fine");
    let late = Noop {
        base: Base::with_id("late").with_dispatch_by(Utc::now() - TimeDelta::hours(1)),
    };
    queue.put(Arc::new(late)).await.expect("put");
    tokio::time::timeout(LIMIT, async {
        while manager
            .job_status(StatusFilter::Expired)
            .await
            .expect("count")
            .is_empty()
        {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("expired by maintenance");

    let ids = |filter| {
        let manager = &manager;
        async move {
            let mut ids = Vec::new();
            for job_type in [scenarios::MAIN_TYPE, "no-such-type"] {
                ids.extend(
                    manager
                        .job_ids_by_state(job_type, filter)
                        .await
                        .expect("ids")
                        .into_iter()
                        .map(|grouped| grouped.id),
                );
            }
            ids
        }
    };
    assert_eq!(ids(StatusFilter::Expired).await, ["late"]);
    assert_eq!(ids(StatusFilter::SetAside).await, ["alien"]);
    assert_eq!(ids(StatusFilter::InProgress).await, ["fine"]);
    assert_eq!(
        manager
            .complete_jobs(StatusFilter::Expired)
            .await
            .expect("none"),
        0
    );
    assert_eq!(
        manager
            .complete_jobs(StatusFilter::SetAside)
            .await
            .expect("none"),
        0
    );
    let detail = manager.job("alien").await.expect("its record");
    assert!(
        detail.attempts[0]
            .status
            .errors
            .iter()
            .any(|e| e.contains("no-such-type")),
        "{detail:?}"
    );

    let again = manager.requeue_job("late").await.expect("requeue");
    assert_eq!(again.retry.current_attempt, 1);
    assert!(
        !again.status.expired && !again.status.completed,
        "{again:?}"
    );
    assert_eq!(
        ids(StatusFilter::Expired).await,
        ["late"],
        "the first attempt stays"
    );
    let error = manager.requeue_job("alien").await.expect_err("cannot run");
    assert!(error.to_string().contains("set aside"), "{error}");
    let next = tokio::time::timeout(LIMIT, queue.next())
        .await
        .expect("in time")
        .expect("next");
    assert_eq!(
        (next.id(), next.base().retry_info().current_attempt),
        ("late", 1)
    );
    queue.close().await;
}

/// The PostgreSQL manager completes a job another process runs: that process's completion
/// then fails, and its next heartbeat cancels the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_another_process_runs_is_completed_and_its_run_cancelled() {
    let mut options = postgres::options();
    // Heartbeats every 250 ms.
    options.lock_timeout = Duration::from_secs(1);
    let queue = postgres::queue(options.clone());
    queue
        .set_runner(Arc::new(IdleRunner::default()))
        .expect("a runner");
    queue.start().await.expect("start");
    queue.put(Noop::new("busy")).await.expect("put");
    let busy = tokio::time::timeout(LIMIT, queue.next())
        .await
        .expect("in time")
        .expect("next");
    let token = busy
        .base()
        .run_token(&tokio_util::sync::CancellationToken::new())
        .expect("a run token");
    // Another process: its own pool.
    let manager = PostgresManager::new(options).expect("manager");
    manager.complete_job("busy").await.expect("complete");
    tokio::time::timeout(LIMIT, token.cancelled())
        .await
        .expect("the heartbeat cancels the run");
    let error = queue.complete(&busy).await.expect_err("lost");
    assert!(error.is_job_not_found(), "{error}");
    // Long after the lock timed out, the completed job is still not the worker's to write.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {}.jobs SET lock_ts = now() - interval '2 hours' WHERE id = 'busy'",
        queue.options().schema
    )))
    .execute(queue.pool())
    .await
    .expect("age the lock");
    busy.base()
        .add_error("written by the worker after the manager completed the job");
    let error = queue.complete(&busy).await.expect_err("still lost");
    assert!(error.is_job_not_found(), "{error}");
    let stored = manager.job("busy").await.expect("the job");
    assert!(stored.attempts[0].status.completed, "{stored:?}");
    assert!(stored.attempts[0].status.errors.is_empty(), "{stored:?}");
    queue.close().await;
}

/// On the serializable queue, a job that management completed stays completed even when the
/// worker that ran it writes long after the lock timed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_job_stays_final_past_the_lock_timeout_in_memory() {
    use amboy::local::SerializableQueueOptions;
    let queue = LimitedSizeSerializableQueue::with_options(SerializableQueueOptions {
        lock_timeout: Duration::from_millis(20),
        ..SerializableQueueOptions::new(8)
    })
    .expect("options");
    let queue: Arc<dyn Queue> = idle_local(queue).await;
    queue.put(Noop::new("slow")).await.expect("put");
    let running = tokio::time::timeout(LIMIT, queue.next())
        .await
        .expect("in time")
        .expect("next");
    let manager = QueueManager::new(queue.clone());
    manager.complete_job("slow").await.expect("complete");
    // The lock times out (20 ms) while the worker still runs.
    tokio::time::sleep(Duration::from_millis(60)).await;
    running.base().add_error("written by the worker long after");
    let error = queue.complete(&running).await.expect_err("final");
    assert!(error.is_job_not_found(), "{error}");
    let stored = queue.get("slow").await.expect("the job");
    let status = stored.base().status();
    assert!(status.completed && status.errors.is_empty(), "{status:?}");
    queue.close().await;
}

/// A job's completion that waits for a row a retry holds (the retry completing attempt 0 and
/// putting attempt 1, in one transaction) completes the attempt the retry committed, too: the
/// retry is played by the test, committed once the completion waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completing_a_job_while_its_retry_commits_completes_the_next_attempt() {
    let queue = postgres_queue().await;
    let schema = queue.options().schema.clone();
    queue
        .put(Arc::new(Noop {
            base: Base::with_id("retried").with_retryable(true),
        }))
        .await
        .expect("put");
    let sql = |statement: String| {
        let pool = queue.pool().clone();
        async move {
            sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                .execute(&pool)
                .await
                .expect("statement");
        }
    };
    sql(format!(
        "UPDATE {schema}.jobs SET state = 3 WHERE id = 'retried'"
    ))
    .await;
    let mut retry = queue.pool().begin().await.expect("begin");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "UPDATE {schema}.jobs SET state = 2, finished = now() WHERE id = 'retried'; \
         INSERT INTO {schema}.jobs (queue_group, id, attempt, state, job_type, ready_at, body) \
         SELECT queue_group, id, 1, 0, job_type, now(), body FROM {schema}.jobs \
         WHERE id = 'retried'"
    )))
    .execute(&mut *retry)
    .await
    .expect("the retry");
    let manager = PostgresManager::for_queue(&queue);
    let completing = tokio::spawn(async move { manager.complete_job("retried").await });
    amboy_tests::postgres::until_waiting_for_a_lock(queue.pool(), &schema, "done AS").await;
    retry.commit().await.expect("commit the retry");
    tokio::time::timeout(LIMIT, completing)
        .await
        .expect("in time")
        .expect("no panic")
        .expect("completed");
    let states: Vec<(i32, i16)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT attempt, state FROM {schema}.jobs WHERE id = 'retried' ORDER BY attempt"
    )))
    .fetch_all(queue.pool())
    .await
    .expect("states");
    assert_eq!(states, [(0, 2), (1, 2)], "every attempt completed");
}

/// A pattern that is not a regular expression is refused even when no row would be matched
/// against it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_pattern_is_refused_on_an_empty_queue() {
    let queue = postgres_queue().await;
    let manager = PostgresManager::for_queue(&queue);
    let error = manager
        .complete_jobs_by_pattern(StatusFilter::All, "(")
        .await
        .expect_err("not a pattern");
    assert!(error.to_string().contains("regular expression"), "{error}");
    manager
        .complete_jobs_by_pattern(StatusFilter::All, "^a")
        .await
        .expect("a pattern");
}

/// Pages of `list_jobs` follow the rows' attempts, even for an attempt whose stored body does
/// not decode: every row is listed once, with its attempt, and the pages end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_pages_past_an_attempt_that_does_not_decode() {
    let queue = postgres_queue().await;
    let schema = queue.options().schema.clone();
    queue
        .put(Arc::new(Noop {
            base: Base::with_id("x").with_retryable(true),
        }))
        .await
        .expect("put");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "UPDATE {schema}.jobs SET state = 2, finished = now() WHERE id = 'x'; \
         INSERT INTO {schema}.jobs (queue_group, id, attempt, state, job_type, ready_at, \
             finished, body) \
         SELECT queue_group, id, 1, 2, job_type, now(), now(), body FROM {schema}.jobs \
         WHERE id = 'x'; \
         INSERT INTO {schema}.jobs (queue_group, id, attempt, state, job_type, ready_at, \
             finished, body) \
         SELECT queue_group, id, 2, 2, job_type, now(), now(), '{{}}' FROM {schema}.jobs \
         WHERE id = 'x' AND attempt = 0"
    )))
    .execute(queue.pool())
    .await
    .expect("attempts 1 and 2");
    queue.put(Noop::new("y")).await.expect("put");
    let manager = PostgresManager::for_queue(&queue);
    let mut query = JobQuery::new(StatusFilter::All).limit(1);
    let mut listed = Vec::new();
    for _ in 0..10 {
        let page = manager.list_jobs(&query).await.expect("a page");
        listed.extend(
            page.jobs
                .iter()
                .map(|job| (job.info.id.clone(), job.info.retry.current_attempt)),
        );
        match page.next {
            Some(next) => query = query.after(next),
            None => break,
        }
    }
    let expected: Vec<(String, u32)> = [("x", 0), ("x", 1), ("x", 2), ("y", 0)]
        .map(|(id, attempt)| (id.to_owned(), attempt))
        .to_vec();
    assert_eq!(listed, expected);
}

async fn idle_local(queue: Arc<dyn Queue>) -> Arc<dyn Queue> {
    queue
        .set_runner(Arc::new(IdleRunner::default()))
        .expect("a runner");
    queue.start().await.expect("start");
    queue
}

//! The queue group on PostgreSQL (amboy's `group_test.go` and `group_remote_mongo_test.go`):
//! option precedence, queues started on first use and in the background for groups with
//! active jobs, `put`, `queues`, pruning and close. Each test works in a schema of its own.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use amboy::postgres::{
    PostgresGroupQueueOptions, PostgresQueue, PostgresQueueGroup, PostgresQueueGroupOptions,
};
use amboy::postgres::{PostgresQueueOptions, sqlx, sqlx::AssertSqlSafe};
use amboy::{JobOutcome, Queue, QueueGroup, QueueOptions};
use amboy_tests::jobs::Noop;
use amboy_tests::postgres::options;

const LIMIT: Duration = Duration::from_secs(30);

fn group_options(queue: PostgresQueueOptions) -> PostgresQueueGroupOptions {
    amboy::postgres_group_options(queue, 2)
}

fn lock_timeout(minutes: u64) -> PostgresGroupQueueOptions {
    PostgresGroupQueueOptions {
        lock_timeout: Some(Duration::from_secs(60 * minutes)),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_merge_default_then_regex_then_per_queue_then_explicit() {
    let mut options = group_options(options());
    options.default.lock_timeout = Some(Duration::from_secs(60));
    options
        .regex
        .push((regex::Regex::new("^tenant-").unwrap(), lock_timeout(2)));
    options
        .regex
        .push((regex::Regex::new("-vip$").unwrap(), lock_timeout(3)));
    options
        .per_queue
        .insert("tenant-special".into(), lock_timeout(4));
    let group = PostgresQueueGroup::new(options).await.expect("group");
    let timeout_of = |queue: Arc<dyn Queue>| queue.info().lock_timeout.as_secs() / 60;

    assert_eq!(
        timeout_of(group.get("other", &[]).await.unwrap()),
        1,
        "default"
    );
    assert_eq!(
        timeout_of(group.get("tenant-a", &[]).await.unwrap()),
        2,
        "regex"
    );
    assert_eq!(
        timeout_of(group.get("tenant-a-vip", &[]).await.unwrap()),
        3,
        "later regexes win"
    );
    assert_eq!(
        timeout_of(group.get("tenant-special", &[]).await.unwrap()),
        4,
        "per queue beats regex"
    );
    let explicit: Vec<Arc<dyn QueueOptions>> =
        vec![Arc::new(lock_timeout(5)), Arc::new(lock_timeout(6))];
    assert_eq!(
        timeout_of(group.get("tenant-explicit", &explicit).await.unwrap()),
        6,
        "explicit options, in order, beat everything"
    );
    // Options are ignored for a queue that exists.
    assert_eq!(
        timeout_of(group.get("tenant-a", &explicit).await.unwrap()),
        2
    );
    assert!(group.get("tenant-a", &[]).await.unwrap().info().started);
    group.close().await.expect("close");
}

#[derive(Debug)]
struct Foreign;

#[amboy::async_trait]
impl QueueOptions for Foreign {
    async fn build_queue(&self) -> amboy::Result<Arc<dyn Queue>> {
        Err(amboy::Error::invalid("not here"))
    }
    fn validate(&self) -> amboy::Result<()> {
        Ok(())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A `get` under way while the group closes does not leave the queue it built behind: the
/// queue's start is held until the group closed, and the `get` then reports the group closed,
/// caches nothing and closes the queue it built (its runner stopped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_under_way_when_the_group_closes_leaves_no_queue_running() {
    let runner = Arc::new(amboy_tests::cases::GatedRunner::default());
    let mut options = group_options(options());
    options.runner = Some(Arc::new({
        let runner = runner.clone();
        move |_| runner.clone() as Arc<dyn amboy::Runner>
    }));
    let group = Arc::new(PostgresQueueGroup::new(options).await.expect("group"));
    let getting = tokio::spawn({
        let group = group.clone();
        async move { group.get("late", &[]).await }
    });
    tokio::time::timeout(LIMIT, runner.entered.acquire())
        .await
        .expect("the queue starts")
        .expect("open")
        .forget();
    group.close().await.expect("close");
    runner.gate.add_permits(1);
    let got = tokio::time::timeout(LIMIT, getting)
        .await
        .expect("the get ends")
        .expect("no panic");
    assert!(matches!(got, Err(amboy::Error::Closed(_))), "{got:?}");
    assert_eq!(group.len(), 0, "nothing cached");
    assert!(
        !amboy::Runner::started(&*runner),
        "the queue built was closed"
    );
}

/// Every regex and per-queue setting is checked when the group is built: a bad one is refused
/// then, naming the entry, rather than when that queue is first wanted (by a `get`, or by the
/// background start, which would not start the names after it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_regex_or_per_queue_settings_are_refused_up_front() {
    let mut bad = group_options(options());
    bad.per_queue.insert(
        "b".into(),
        PostgresGroupQueueOptions {
            workers: Some(0),
            ..Default::default()
        },
    );
    let error = PostgresQueueGroup::new(bad).await.expect_err("no workers");
    assert!(error.to_string().contains("per_queue 'b'"), "{error}");
    let mut bad = group_options(options());
    bad.regex.push((
        regex::Regex::new("^slow-").unwrap(),
        PostgresGroupQueueOptions {
            poll_interval: Some(Duration::ZERO),
            ..Default::default()
        },
    ));
    let error = PostgresQueueGroup::new(bad)
        .await
        .expect_err("no poll interval");
    assert!(
        error.to_string().contains("regex '^slow-'") && error.to_string().contains("poll_interval"),
        "{error}"
    );
}

/// Closing the group does not wait for a background pass stuck on the database: the pass is
/// held by a test transaction locking the jobs table, and `close` returns all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_does_not_wait_for_a_stuck_background_pass() {
    let mut options = group_options(options());
    options.background_create_frequency = Duration::from_millis(20);
    let schema = options.queue.schema.clone();
    let group = PostgresQueueGroup::new(options).await.expect("group");
    let pool = PostgresQueue::new(amboy_tests::postgres::options().schema(schema.clone()))
        .expect("a queue for its pool")
        .pool()
        .clone();
    let mut tx = pool.begin().await.expect("begin");
    sqlx::raw_sql(AssertSqlSafe(format!(
        "LOCK TABLE {schema}.jobs IN ACCESS EXCLUSIVE MODE"
    )))
    .execute(&mut *tx)
    .await
    .expect("the table locked");
    amboy_tests::postgres::until_waiting_for_a_lock(&pool, &schema, "WITH RECURSIVE groups").await;
    tokio::time::timeout(LIMIT, group.close())
        .await
        .expect("closing does not wait for the pass")
        .expect("closed");
    tx.rollback().await.expect("rollback");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_options_are_refused() {
    let group = PostgresQueueGroup::new(group_options(options()))
        .await
        .expect("group");
    let foreign: Vec<Arc<dyn QueueOptions>> = vec![Arc::new(Foreign)];
    let error = group.get("q", &foreign).await.expect_err("foreign options");
    assert!(
        error.to_string().contains("PostgresGroupQueueOptions"),
        "{error}"
    );
    let no_workers: Vec<Arc<dyn QueueOptions>> = vec![Arc::new(PostgresGroupQueueOptions {
        workers: Some(0),
        ..Default::default()
    })];
    assert!(group.get("q", &no_workers).await.is_err());
    assert_eq!(group.len(), 0, "nothing cached on failure");
    group.close().await.expect("close");

    let mut bad = group_options(options());
    bad.ttl = Duration::from_millis(10);
    bad.prune_frequency = Duration::from_millis(10);
    assert!(
        PostgresQueueGroup::new(bad).await.is_err(),
        "ttl under a second"
    );
    let mut bad = group_options(options());
    bad.ttl = Duration::from_secs(5);
    assert!(
        PostgresQueueGroup::new(bad).await.is_err(),
        "ttl without prune frequency"
    );
    let mut bad = group_options(options());
    bad.runner = None;
    assert!(PostgresQueueGroup::new(bad).await.is_err(), "no runner");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_is_idempotent_put_refuses_taken_names_and_groups_share_tables_only() {
    let group = PostgresQueueGroup::new(group_options(options()))
        .await
        .expect("group");
    let a = group.get("a", &[]).await.expect("a");
    let again = group.get("a", &[]).await.expect("a again");
    assert!(Arc::ptr_eq(&a, &again));
    let b = group.get("b", &[]).await.expect("b");
    assert_eq!(group.len(), 2);
    let error = group.put("a", b.clone()).await.expect_err("taken");
    assert!(error.to_string().contains('a'), "{error}");

    // The same job ID in two groups: two jobs, each run by its own queue.
    a.put(Noop::new("same-id")).await.expect("put in a");
    b.put(Noop::new("same-id")).await.expect("put in b");
    for queue in [&a, &b] {
        let outcome = tokio::time::timeout(LIMIT, amboy::wait_job(&**queue, "same-id"))
            .await
            .expect("in time")
            .expect("waited");
        assert_eq!(outcome, JobOutcome::Completed);
        assert_eq!(queue.stats().await.expect("stats").total, 1);
    }
    group.close().await.expect("close");
    assert_eq!(group.len(), 0);
    assert!(
        a.put(Noop::new("late")).await.is_err(),
        "closed with the group"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_with_active_jobs_are_started_in_the_background() {
    let options = options();
    // A producer puts jobs for two tenants before any group exists.
    for tenant in ["tenant-x", "tenant-y"] {
        let producer = PostgresQueue::new(options.clone().group(tenant)).expect("producer");
        producer
            .put(Noop::new(format!("{tenant}-job")))
            .await
            .expect("put");
    }
    let group = PostgresQueueGroup::new(group_options(options.clone()))
        .await
        .expect("group");
    assert_eq!(group.len(), 2, "started when the group was built");
    for tenant in ["tenant-x", "tenant-y"] {
        let queue = group.get(tenant, &[]).await.expect("cached");
        let outcome =
            tokio::time::timeout(LIMIT, amboy::wait_job(&*queue, &format!("{tenant}-job")))
                .await
                .expect("in time")
                .expect("waited");
        assert_eq!(outcome, JobOutcome::Completed);
    }
    // `queues` lists the names with active jobs in the database: none once all are done
    // (with no time to live), a tenant with a job waiting.
    assert!(group.queues().await.is_empty());
    let waiting = PostgresQueue::new(options.clone().group("tenant-w")).expect("producer");
    let later = amboy::chrono::Utc::now() + amboy::chrono::TimeDelta::hours(1);
    waiting
        .put(Arc::new(Noop {
            base: amboy::Base::with_id("later").with_wait_until(later),
        }))
        .await
        .expect("put");
    assert_eq!(group.queues().await, ["tenant-w"]);
    group.close().await.expect("close");

    // Background creation picks up a tenant that appears later.
    let mut options_later = group_options(options.clone());
    options_later.background_create_frequency = Duration::from_millis(50);
    let group = PostgresQueueGroup::new(options_later).await.expect("group");
    let producer = PostgresQueue::new(options.clone().group("tenant-z")).expect("producer");
    producer.put(Noop::new("late-job")).await.expect("put");
    tokio::time::timeout(LIMIT, async {
        while group.cache().get("tenant-z").is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("started in the background");
    group.close().await.expect("close");
}

#[tokio::test]
async fn pruning_closes_idle_done_queues_and_keeps_their_jobs() {
    let mut options = group_options(options());
    options.ttl = Duration::from_secs(1);
    options.prune_frequency = Duration::from_secs(3600);
    let schema = options.queue.schema.clone();
    let group = PostgresQueueGroup::new(options).await.expect("group");
    let queue = group.get("short-lived", &[]).await.expect("queue");
    queue.put(Noop::new("done")).await.expect("put");
    tokio::time::timeout(LIMIT, amboy::wait(&*queue))
        .await
        .expect("in time")
        .expect("waited");
    group.prune().await.expect("prune");
    assert_eq!(group.len(), 1, "still within its time to live");
    // Past the time to live (the cache's clock is tokio's).
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(2)).await;
    tokio::time::resume();
    group.prune().await.expect("prune");
    assert_eq!(group.len(), 0, "pruned");
    assert!(
        queue.put(Noop::new("after")).await.is_err(),
        "the queue closed"
    );
    let pool = group_pool(&schema).await;
    let kept: i64 = amboy::postgres::sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {schema}.jobs WHERE queue_group = 'short-lived'"
    )))
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!(kept, 1, "pruning closes queue objects, the jobs stay");
    group.close().await.expect("close");
}

async fn group_pool(_schema: &str) -> amboy::postgres::sqlx::PgPool {
    amboy::postgres::sqlx::PgPool::connect(&amboy_tests::postgres::url())
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_job_keeps_its_group() {
    let group = PostgresQueueGroup::new(group_options(options()))
        .await
        .expect("group");
    let queue = group.get("retries", &[]).await.expect("queue");
    let job = amboy_tests::jobs::RetryOnce::new(
        amboy::Base::with_id("again").with_retryable(true),
        "postgres-group-retry-once",
    );
    queue.put(job).await.expect("put");
    tokio::time::timeout(LIMIT, amboy::wait(&*queue))
        .await
        .expect("in time")
        .expect("waited");
    let stats = queue.stats().await.expect("stats");
    assert_eq!((stats.total, stats.completed), (2, 2), "{stats}");
    group.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queues_of_a_group_share_one_listening_connection() {
    let options = group_options(options());
    let schema = options.queue.schema.clone();
    let group = PostgresQueueGroup::new(options).await.expect("group");
    for name in ["one", "two", "three", "four", "five", "six"] {
        let queue = group.get(name, &[]).await.expect("queue");
        queue
            .put(Noop::new(format!("{name}-job")))
            .await
            .expect("put");
    }
    // Every queue runs its job, woken through the one listener.
    for name in ["one", "two", "three", "four", "five", "six"] {
        let queue = group.get(name, &[]).await.expect("cached");
        let outcome = tokio::time::timeout(LIMIT, amboy::wait_job(&*queue, &format!("{name}-job")))
            .await
            .expect("in time")
            .expect("waited");
        assert_eq!(outcome, JobOutcome::Completed);
    }
    let pool = group_pool("").await;
    assert_eq!(
        amboy_tests::postgres::listeners(&pool, &schema).await,
        1,
        "one listening connection for six queues"
    );
    group.close().await.expect("close");
}

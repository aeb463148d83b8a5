//! The REST service's throughput and management's counts, run by `cargo xtask bench rest`.
//!
//! Each case prints one JSON line on stdout:
//!
//! * `rest/create`: `jobs` no-op jobs created through the service by one [`QueueClient`] with
//!   64 requests in flight, into an in-memory limited-size queue nobody runs (the service, the
//!   client and the queue in this process, over TCP on 127.0.0.1): jobs per second, the median
//!   of `AMBOY_BENCH_RUNS` runs (default 3).
//! * `rest/create_postgres`: the same into a PostgreSQL queue (one insert per job).
//! * `rest/management_counts`: a PostgreSQL schema holding 1,000,000 jobs (900,000 completed,
//!   90,000 pending, 9,000 in progress of which 1,000 stale, 1,000 retrying), in 4 job types;
//!   the time of `job_status` for each filter, by [`PostgresManager`] directly and through the
//!   service with the [`ManagementClient`]: the median of 5 calls each, in milliseconds.
//!
//! The server is `AMBOY_BENCH_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`), in a fresh schema dropped afterwards.
//! Arguments: `[jobs]` (default 20,000) and `[filter]`, a substring of the cases to run.

use std::sync::Arc;
use std::time::Instant;

use amboy::local::LimitedSizeQueue;
use amboy::management::{Manager, StatusFilter};
use amboy::postgres::{PostgresManager, PostgresQueue, PostgresQueueOptions};
use amboy::prelude::*;
use amboy::rest::{Connection, ManagementClient, QueueClient, RestService};
use amboy::{Base, JobContext, JobError};
use amboy_bench::{database_url as url, median, runs};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Requests in flight.
const IN_FLIGHT: usize = 64;
/// Jobs in the counted table.
const COUNTED: usize = 1_000_000;

/// A job that does nothing.
#[derive(Debug, Serialize, Deserialize)]
struct RestNoop {
    base: Base,
}

#[typetag::serde(name = "bench-rest-noop")]
#[async_trait::async_trait]
impl Job for RestNoop {
    fn base(&self) -> &Base {
        &self.base
    }

    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

fn fresh_schema(tag: &str) -> String {
    format!("amboy_bench_rest_{tag}_{}", std::process::id())
}

/// Serves `queue` on a free port; returns a client of it.
async fn serve(queue: Arc<dyn Queue>, manager: Option<Arc<dyn Manager>>) -> Connection {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let url = format!("http://{}", listener.local_addr().expect("an address"));
    let mut service = RestService::new().queue(queue);
    if let Some(manager) = manager {
        service = service.manager(manager);
    }
    tokio::spawn(service.serve(listener, std::future::pending()));
    Connection::new(url).expect("a URL")
}

/// Creates `jobs` jobs through `client`, [`IN_FLIGHT`] at a time: jobs per second.
async fn create(client: &QueueClient, jobs: usize) -> f64 {
    let started = Instant::now();
    let mut results = amboy::futures::stream::iter(0..jobs)
        .map(|_| async {
            let job = RestNoop { base: Base::new() };
            client.submit_job(&job).await
        })
        .buffer_unordered(IN_FLIGHT);
    while let Some(result) = results.next().await {
        result.expect("created");
    }
    jobs as f64 / started.elapsed().as_secs_f64()
}

async fn create_case(
    case: &str,
    jobs: usize,
    queue: impl AsyncFn() -> (Arc<dyn Queue>, Option<String>),
) {
    let mut rates = Vec::new();
    for _ in 0..runs() {
        let (queue, schema) = queue().await;
        let client = QueueClient::new(serve(queue.clone(), None).await);
        rates.push(create(&client, jobs).await);
        assert_eq!(
            queue.stats().await.expect("stats").total,
            jobs,
            "every job stored"
        );
        if let Some(schema) = schema {
            drop_schema(&schema).await;
        }
        queue.close().await;
    }
    let rounded: Vec<f64> = rates.iter().map(|rate| rate.round()).collect();
    println!(
        "{}",
        json!({ "case": case, "jobs": jobs, "in_flight": IN_FLIGHT,
                "jobs_per_sec": median(&rates).round(), "runs": rounded })
    );
}

async fn drop_schema(schema: &str) {
    let pool = sqlx::PgPool::connect(&url()).await.expect("connect");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE"
    )))
    .execute(&pool)
    .await
    .expect("drop the schema");
    pool.close().await;
}

/// Fills a schema with [`COUNTED`] jobs in every state, then times the counts.
async fn management_counts() {
    let schema = fresh_schema("counts");
    let queue =
        PostgresQueue::new(PostgresQueueOptions::with_url(url()).schema(&schema)).expect("options");
    queue.migrate().await.expect("migrate");
    let started = Instant::now();
    let types = [
        "bench-rest-noop-a",
        "bench-rest-noop-b",
        "bench-rest-noop-c",
        "bench-rest-noop-d",
    ];
    // Rows made in SQL: a million puts through the API would measure put_many, not counts.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {schema}.jobs (queue_group, id, attempt, state, job_type, ready_at, owner, \
             mod_count, lock_ts, finished, body) \
         SELECT '', 'job-' || n, 0, \
             CASE WHEN n <= 900000 THEN 2 WHEN n <= 990000 THEN 0 WHEN n <= 999000 THEN 1 ELSE 3 END, \
             ($1::text[])[1 + n % 4], now(), \
             CASE WHEN n > 990000 THEN 'bench' END, 1, \
             CASE WHEN n > 998000 AND n <= 999000 THEN now() - interval '1 hour' \
                  WHEN n > 990000 THEN now() END, \
             CASE WHEN n <= 900000 OR n > 999000 THEN now() END, \
             '{{\"job\":{{}}}}' \
         FROM generate_series(1, {COUNTED}) AS n"
    )))
    .bind(types.map(str::to_owned).to_vec())
    .execute(queue.pool())
    .await
    .expect("fill");
    sqlx::query(sqlx::AssertSqlSafe(format!("VACUUM ANALYZE {schema}.jobs")))
        .execute(queue.pool())
        .await
        .expect("vacuum");
    eprintln!("filled {COUNTED} jobs in {:?}", started.elapsed());
    let direct = Arc::new(PostgresManager::for_queue(&queue));
    let remote = ManagementClient::new(serve(queue.clone(), Some(direct.clone())).await);
    let mut direct_ms = serde_json::Map::new();
    let mut remote_ms = serde_json::Map::new();
    for filter in [
        StatusFilter::Pending,
        StatusFilter::InProgress,
        StatusFilter::Stale,
        StatusFilter::Completed,
        StatusFilter::Retrying,
        StatusFilter::All,
    ] {
        for (manager, into) in [
            (&*direct as &dyn Manager, &mut direct_ms),
            (&remote as &dyn Manager, &mut remote_ms),
        ] {
            let mut times = Vec::new();
            let mut counted = 0;
            for _ in 0..5 {
                let started = Instant::now();
                let counts = manager.job_status(filter).await.expect("counts");
                times.push(started.elapsed().as_secs_f64() * 1000.0);
                counted = counts.iter().map(|count| count.count).sum::<u64>();
            }
            into.insert(
                filter.to_string(),
                json!({ "ms": (median(&times) * 100.0).round() / 100.0, "jobs": counted }),
            );
        }
    }
    println!(
        "{}",
        json!({ "case": "rest/management_counts", "jobs": COUNTED,
                "postgres_manager": direct_ms, "through_rest": remote_ms })
    );
    drop_schema(&schema).await;
    queue.close().await;
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let jobs: usize = args.first().and_then(|n| n.parse().ok()).unwrap_or(20_000);
    let filter = args.get(1).cloned().unwrap_or_default();
    let wanted = |case: &str| case.contains(filter.as_str());
    eprintln!("{jobs} jobs, {} runs per case, server {}", runs(), url());
    amboy_bench::runtime().block_on(async {
        if wanted("rest/create") {
            create_case("rest/create", jobs, async || {
                let queue: Arc<dyn Queue> = LimitedSizeQueue::new(jobs.max(1));
                queue
                    .set_runner(amboy::runner::NoopRunner::new())
                    .expect("runner");
                queue.start().await.expect("start");
                (queue, None)
            })
            .await;
        }
        if wanted("rest/create_postgres") {
            create_case("rest/create_postgres", jobs, async || {
                let schema = fresh_schema("create");
                let queue =
                    PostgresQueue::new(PostgresQueueOptions::with_url(url()).schema(&schema))
                        .expect("options");
                queue.migrate().await.expect("migrate");
                (queue as Arc<dyn Queue>, Some(schema))
            })
            .await;
        }
        if wanted("rest/management_counts") {
            management_counts().await;
        }
    });
}

//! Many workers on one PostgreSQL queue. Real worker processes (the `pg_worker` binary of this
//! package) are killed with SIGKILL, cut off from the database, and share scopes; several queue
//! instances in one process share one table (amboy's `MultipleExecution` and `ManyQueues`
//! scenarios, dormant in amboy, live here). Every job records each of its runs in the test's
//! schema (`amboy_tests::recorded`), so executions are counted from the database.
//!
//! The moments that matter are forced, not waited for: the killed worker is killed while a run
//! of its own hangs (`--stall-after`), so it holds jobs for sure; connections are terminated
//! once a given number of runs is recorded; the jobs sharing scopes are put once both processes
//! wait for work.
//!
//! Their connections commit without waiting for the disk (`recorded::pool`), which changes
//! nothing they check (processes die here, never the server) and keeps them from queueing on
//! the machine's disk.

use std::collections::{HashMap, HashSet};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use amboy::postgres::PostgresQueue;
use amboy::prelude::*;
use amboy::runner::LocalWorkers;
use amboy::{JobRef, QueueStats};
use amboy_tests::postgres;
use amboy_tests::recorded::{self, RecordRun, ScopedRun};
use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, PgPool};
use tokio::io::{AsyncBufReadExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// The longest a wait of these tests lasts before it fails: a safeguard against a hang, not a
/// timing assumption (each wait normally ends within seconds, and within a minute on a loaded
/// machine).
const DEADLINE: Duration = Duration::from_secs(300);

/// A schema with the queue's tables and the recording tables, and a pool on it.
struct Setup {
    schema: String,
    pool: PgPool,
    /// A queue instance on the schema (producer; it runs jobs only if a test starts it).
    queue: Arc<PostgresQueue>,
}

async fn setup() -> Setup {
    let mut options = postgres::options();
    options.pool = Some(recorded::pool("amboy_tests_queue", 4));
    let schema = options.schema.clone();
    let queue = postgres::queue(options);
    queue.migrate().await.expect("migrate");
    let pool = queue.pool().clone();
    recorded::create_tables(&pool, &schema)
        .await
        .expect("recording tables");
    Setup {
        schema,
        pool,
        queue,
    }
}

/// `count` recording jobs `job-00000`, `job-00001`, … (from `first`).
fn record_jobs(schema: &str, first: usize, count: usize) -> Vec<JobRef> {
    (first..first + count)
        .map(|n| RecordRun::new(format!("job-{n:05}"), schema) as JobRef)
        .collect()
}

async fn scalar(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .unwrap_or_else(|error| panic!("{sql}: {error}"))
}

/// How long jobs found through a notification may take at most: far more than they need, far
/// less than the shortest poll (a minute) of the workers that rely on notifications.
const NOTIFIED: Duration = Duration::from_secs(30);

/// Waits until `sql` (one number) reaches `at_least`.
async fn wait_for(pool: &PgPool, sql: &str, at_least: i64, what: &str) {
    wait_within(pool, sql, at_least, what, DEADLINE).await;
}

/// Waits until `sql` (one number) reaches `at_least`, for up to `deadline`.
async fn wait_within(pool: &PgPool, sql: &str, at_least: i64, what: &str, deadline: Duration) {
    let started = tokio::time::Instant::now();
    loop {
        let now = scalar(pool, sql).await;
        if now >= at_least {
            return;
        }
        assert!(
            started.elapsed() < deadline,
            "{what}: still {now} of {at_least} after {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every job of the schema's queue has completed.
async fn wait_completed(setup: &Setup, jobs: usize) {
    let sql = format!("SELECT count(*) FROM {}.jobs WHERE state = 2", setup.schema);
    wait_for(&setup.pool, &sql, jobs as i64, "completed jobs").await;
}

/// Terminates the backends whose `application_name` is `app` (those of the workers of one test,
/// and no one else's), waiting for each to end; returns how many there were.
async fn terminate_connections(pool: &PgPool, app: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 10000)) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = $1 \
           AND pid <> pg_backend_pid()",
    )
    .bind(app)
    .fetch_one(pool)
    .await
    .expect("terminate the workers' connections")
}

/// The runs of every job: its final owner, and the owner, process and start of each run in
/// order.
struct Runs {
    owner: Option<String>,
    runs: Vec<(Option<String>, i32, DateTime<Utc>)>,
}

async fn runs_by_job(setup: &Setup) -> HashMap<String, Runs> {
    type Row = (
        String,
        Option<String>,
        Vec<Option<String>>,
        Vec<i32>,
        Vec<DateTime<Utc>>,
    );
    let s = &setup.schema;
    let rows: Vec<Row> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT j.id, j.owner, \
             coalesce(array_agg(r.owner ORDER BY r.at) FILTER (WHERE r.job_id IS NOT NULL), '{{}}'), \
             coalesce(array_agg(r.pid ORDER BY r.at) FILTER (WHERE r.job_id IS NOT NULL), '{{}}'), \
             coalesce(array_agg(r.at ORDER BY r.at) FILTER (WHERE r.job_id IS NOT NULL), '{{}}') \
         FROM {s}.jobs j LEFT JOIN {s}.ran r ON r.job_id = j.id GROUP BY j.id, j.owner"
    )))
    .fetch_all(&setup.pool)
    .await
    .expect("runs by job");
    rows.into_iter()
        .map(|(id, owner, owners, pids, ats)| {
            let runs = owners
                .into_iter()
                .zip(pids)
                .zip(ats)
                .map(|((owner, pid), at)| (owner, pid, at))
                .collect();
            (id, Runs { owner, runs })
        })
        .collect()
}

/// Asserts that each of `jobs` jobs ran exactly once, and returns who ran how many.
async fn assert_each_ran_once(setup: &Setup, jobs: usize) -> HashMap<String, usize> {
    let runs = runs_by_job(setup).await;
    assert_eq!(runs.len(), jobs, "jobs stored");
    let mut by_owner = HashMap::new();
    for (id, job) in &runs {
        assert_eq!(
            job.runs.len(),
            1,
            "job {id} ran {} times (owner, pid, start): {:?}; completed by {:?}",
            job.runs.len(),
            job.runs,
            job.owner
        );
        assert_eq!(job.runs[0].0, job.owner, "job {id} was run by its owner");
        *by_owner
            .entry(job.owner.clone().unwrap_or_default())
            .or_default() += 1;
    }
    by_owner
}

// -------------------------------------------------------------------------------------------
// Worker processes
// -------------------------------------------------------------------------------------------

/// A running `pg_worker` process.
struct Worker {
    child: Child,
    pid: u32,
    /// The ID of its queue instance: the owner of the jobs it holds.
    owner: String,
    out: Lines<BufReader<ChildStdout>>,
}

impl Worker {
    /// Starts a worker on `schema` and waits until its queue runs.
    async fn spawn(schema: &str, flags: &[&str]) -> Worker {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pg_worker"))
            .args(["--schema", schema])
            .args(flags)
            .env("AMBOY_TEST_DATABASE_URL", postgres::url())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start pg_worker");
        let pid = child.id().expect("a running child has a pid");
        let mut out = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let line = tokio::time::timeout(DEADLINE, out.next_line())
            .await
            .expect("pg_worker starts")
            .expect("pg_worker's output")
            .expect("pg_worker says it is ready");
        let owner = line
            .strip_prefix("ready ")
            .unwrap_or_else(|| panic!("unexpected first line from pg_worker: {line}"))
            .to_owned();
        Worker {
            child,
            pid,
            owner,
            out,
        }
    }

    /// Kills the process with SIGKILL: no shutdown, no last write.
    async fn kill(&mut self) {
        self.child.start_kill().expect("SIGKILL");
        self.child
            .wait()
            .await
            .expect("the killed worker is reaped");
    }

    /// Stops the process with SIGTERM (a graceful shutdown) and returns how it exited.
    async fn terminate(mut self) -> ExitStatus {
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {}", self.pid);
        let status = tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .expect("pg_worker stops after SIGTERM")
            .expect("pg_worker's exit status");
        let last = self.out.next_line().await.ok().flatten();
        assert_eq!(last.as_deref(), Some("stopped"), "pg_worker {}", self.pid);
        status
    }
}

/// Stops every worker with SIGTERM; each shuts down gracefully and exits successfully.
async fn terminate_all(workers: Vec<Worker>) {
    for worker in workers {
        let pid = worker.pid;
        let status = worker.terminate().await;
        assert!(status.success(), "pg_worker {pid} exited with {status}");
    }
}

/// Three worker processes on one queue with a 5 s lock timeout and 10,000 quick jobs; one is
/// killed with SIGKILL while a run of its own hangs (so it holds at least that job) and its
/// other workers are busy. Every job completes; the jobs it held are taken over once their
/// lock timed out, not before; a job whose completion committed never runs again; only the
/// killed worker's unfinished runs are repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_jobs_are_taken_over_after_the_lock_timeout() {
    const JOBS: usize = 10_000;
    const LOCK_TIMEOUT: Duration = Duration::from_secs(5);
    let setup = setup().await;
    let s = setup.schema.clone();
    setup
        .queue
        .put_many(record_jobs(&s, 0, JOBS))
        .await
        .expect("put");

    let lock = LOCK_TIMEOUT.as_millis().to_string();
    let flags = ["--workers", "4", "--lock-timeout-ms", lock.as_str()];
    let mut victim = Worker::spawn(&s, &[&flags[..], &["--stall-after", "200"]].concat()).await;
    let mut others = Vec::new();
    for _ in 0..2 {
        others.push(Worker::spawn(&s, &flags).await);
    }

    // The victim's stalled run is recorded and its job is still in progress, held by it: the
    // victim holds jobs now and will until it dies.
    let stalled_held = format!(
        "SELECT count(*) FROM {s}.ran r JOIN {s}.jobs j ON j.id = r.job_id \
         WHERE r.stalled AND j.state = 1 AND j.owner = '{}'",
        victim.owner
    );
    wait_for(&setup.pool, &stalled_held, 1, "the victim's stalled run").await;
    victim.kill().await;

    // What the victim held when it died, read before anyone may take it over (its locks were
    // refreshed every 1.25 s until the kill; they time out 5 s after the last refresh).
    let held: Vec<(String, DateTime<Utc>, bool)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT j.id, j.lock_ts, j.lock_ts > now() - $2::interval FROM {s}.jobs j \
         WHERE j.state = 1 AND j.owner = $1"
    )))
    .bind(&victim.owner)
    .bind(LOCK_TIMEOUT)
    .fetch_all(&setup.pool)
    .await
    .expect("the victim's jobs");
    let stalled: String = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT job_id FROM {s}.ran WHERE stalled"
    )))
    .fetch_one(&setup.pool)
    .await
    .expect("the stalled job");
    assert!(
        held.iter().any(|(id, _, _)| *id == stalled),
        "the victim held its stalled job {stalled} when it died: {held:?}"
    );
    assert!(
        held.iter().all(|(_, _, locked)| *locked),
        "the snapshot was read while every lock still held: {held:?}"
    );
    let held: HashMap<String, DateTime<Utc>> =
        held.into_iter().map(|(id, at, _)| (id, at)).collect();

    wait_completed(&setup, JOBS).await;
    let stats = setup.queue.stats().await.expect("stats");
    assert_eq!((stats.completed, stats.total), (JOBS, JOBS), "{stats:?}");

    let victim_pid = victim.pid as i32;
    let lock_timeout = chrono::TimeDelta::from_std(LOCK_TIMEOUT).expect("a short timeout");
    let runs = runs_by_job(&setup).await;
    let mut taken_over = 0;
    let mut finished_by_victim = 0;
    for (id, job) in &runs {
        let owner = job.owner.as_deref();
        let last = job
            .runs
            .last()
            .unwrap_or_else(|| panic!("job {id} never ran"));
        assert_eq!(
            last.0.as_deref(),
            owner,
            "job {id}: its last run completed it"
        );
        if owner == Some(&victim.owner) {
            // Its completion committed (before the kill, or on its way to the server then):
            // it ran once.
            finished_by_victim += 1;
            assert_eq!(
                job.runs.len(),
                1,
                "job {id}, completed by the victim, ran again"
            );
            continue;
        }
        assert_ne!(last.1, victim_pid, "job {id}");
        if let Some(lock_ts) = held.get(id) {
            // Held by the victim when it died, completed by another: taken over once its lock
            // timed out, not before.
            taken_over += 1;
            assert!(
                last.2 >= *lock_ts + lock_timeout,
                "job {id} was taken over at {}, before its lock (refreshed at {lock_ts}) \
                 timed out",
                last.2
            );
        }
        match job.runs.len() {
            1 => {}
            2 => {
                // Only a run of the victim's that never completed is repeated.
                let first = &job.runs[0];
                assert_eq!(
                    (first.0.as_deref(), first.1),
                    (Some(victim.owner.as_str()), victim_pid),
                    "job {id}: its first run (of two) was the victim's"
                );
                assert!(
                    held.contains_key(id),
                    "job {id} ran twice but the victim did not hold it when it died"
                );
            }
            n => panic!("job {id} ran {n} times: {:?}", job.runs),
        }
    }
    let stalled_runs = &runs[&stalled].runs;
    assert_eq!(
        stalled_runs.len(),
        2,
        "the stalled job ran again elsewhere: {stalled_runs:?}"
    );
    assert!(
        taken_over >= 1 && finished_by_victim >= 1,
        "{taken_over} {finished_by_victim}"
    );
    terminate_all(others).await;
}

/// Two worker processes lose every queue connection twice while they run 4,000 jobs: the
/// queues reconnect (claims, lock refreshes, completions cut off mid-statement, the listener),
/// and every job runs exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_reconnect_when_their_connections_are_terminated_mid_run() {
    const JOBS: usize = 4_000;
    let setup = setup().await;
    let s = setup.schema.clone();
    // The workers' queue connections carry the schema's name, unique to this test.
    let app = s.clone();
    setup
        .queue
        .put_many(record_jobs(&s, 0, JOBS))
        .await
        .expect("put");
    // A claim whose outcome the cut-off hid leaves its jobs locked until the lock timeout and
    // the next poll: both are short enough not to hold the test up long.
    let flags = [
        "--workers",
        "4",
        "--lock-timeout-ms",
        "10000",
        "--poll-ms",
        "500",
    ];
    let mut workers = Vec::new();
    for _ in 0..2 {
        workers.push(Worker::spawn(&s, &[&flags[..], &["--app-name", &app]].concat()).await);
    }

    let ran = format!("SELECT count(*) FROM {s}.ran");
    for at in [1_000, 2_500] {
        wait_for(&setup.pool, &ran, at, "runs before the cut-off").await;
        let terminated = terminate_connections(&setup.pool, &app).await;
        // At least each worker's listener.
        assert!(terminated >= 2, "terminated {terminated} connections");
    }
    wait_completed(&setup, JOBS).await;

    let stats = setup.queue.stats().await.expect("stats");
    assert_eq!((stats.completed, stats.total), (JOBS, JOBS));
    let by_owner = assert_each_ran_once(&setup, JOBS).await;
    for worker in &workers {
        assert!(
            by_owner.get(&worker.owner).is_some_and(|&n| n > 0),
            "worker {} ran jobs: {by_owner:?}",
            worker.pid
        );
    }
    terminate_all(workers).await;
}

/// Two idle worker processes lose every queue connection; jobs put then are found through a
/// notification, so each listener listened again: the workers poll only every two minutes
/// (a random wait between one and two), and the jobs must be done within 30 seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_workers_listen_again_when_their_connections_are_terminated() {
    const JOBS: usize = 100;
    let setup = setup().await;
    let s = setup.schema.clone();
    let app = s.clone();
    let flags = [
        "--workers",
        "4",
        "--poll-ms",
        "120000",
        "--app-name",
        app.as_str(),
    ];
    let mut workers = Vec::new();
    for _ in 0..2 {
        workers.push(Worker::spawn(&s, &flags).await);
    }
    // Notifications wake them before the cut-off, too.
    let completed = format!("SELECT count(*) FROM {s}.jobs WHERE state = 2");
    setup
        .queue
        .put_many(record_jobs(&s, 0, JOBS))
        .await
        .expect("put");
    wait_within(&setup.pool, &completed, JOBS as i64, "jobs", NOTIFIED).await;

    // Nothing runs, nothing is claimed: no write is cut off, only connections.
    let terminated = terminate_connections(&setup.pool, &app).await;
    assert!(terminated >= 2, "terminated {terminated} connections");
    setup
        .queue
        .put_many(record_jobs(&s, JOBS, JOBS))
        .await
        .expect("put");
    wait_within(
        &setup.pool,
        &completed,
        2 * JOBS as i64,
        "jobs put after the cut-off",
        NOTIFIED,
    )
    .await;
    assert_each_ran_once(&setup, 2 * JOBS).await;
    terminate_all(workers).await;
}

/// Two worker processes run 250 jobs sharing 5 scopes, each holding its scope for 5 ms while it
/// counts itself among the scope's holders in the database: no scope ever has two holders,
/// every job runs once, both processes run jobs, and every scope is free at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_hold_across_processes() {
    const SCOPES: usize = 5;
    const JOBS: usize = 250;
    let setup = setup().await;
    let s = setup.schema.clone();
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {s}.scope_load (scope) SELECT 'scope-' || n FROM generate_series(0, $1) n"
    )))
    .bind(SCOPES as i32 - 1)
    .execute(&setup.pool)
    .await
    .expect("scope counters");
    let mut workers = Vec::new();
    for _ in 0..2 {
        workers.push(Worker::spawn(&s, &["--workers", "4"]).await);
    }

    // Both processes wait for work when the jobs arrive.
    let jobs: Vec<JobRef> = (0..JOBS)
        .map(|n| {
            ScopedRun::new(
                format!("job-{n:05}"),
                &s,
                &format!("scope-{}", n % SCOPES),
                5,
            ) as JobRef
        })
        .collect();
    setup.queue.put_many(jobs).await.expect("put");
    wait_completed(&setup, JOBS).await;

    let load: Vec<(String, i32, i32)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT scope, holders, max_seen FROM {s}.scope_load ORDER BY scope"
    )))
    .fetch_all(&setup.pool)
    .await
    .expect("scope counters");
    for (scope, holders, max_seen) in &load {
        assert_eq!(
            (*holders, *max_seen),
            (0, 1),
            "{scope}: holders now, most at once"
        );
    }
    let by_owner = assert_each_ran_once(&setup, JOBS).await;
    assert_eq!(by_owner.len(), 2, "both processes ran jobs: {by_owner:?}");
    let held = scalar(&setup.pool, &format!("SELECT count(*) FROM {s}.scopes")).await;
    assert_eq!(held, 0, "scopes held at the end");
    terminate_all(workers).await;
}

// -------------------------------------------------------------------------------------------
// Queue instances in one process
// -------------------------------------------------------------------------------------------

/// `instances` queue instances on one schema, each with 4 workers, started; the first is
/// `setup.queue`.
async fn instances(setup: &Setup, instances: usize) -> Vec<Arc<PostgresQueue>> {
    recorded::register(
        &setup.schema,
        recorded::pool("amboy_tests_recorder", 2),
        None,
    );
    let mut queues = vec![setup.queue.clone()];
    for _ in 1..instances {
        let mut options = postgres::options().schema(setup.schema.clone());
        options.pool = Some(recorded::pool("amboy_tests_queue", 2));
        queues.push(postgres::queue(options));
    }
    for queue in &queues {
        queue.set_runner(LocalWorkers::new(4)).expect("a runner");
        queue.start().await.expect("start");
    }
    queues
}

/// Closes the instances and their pools, and stops recording for the schema.
async fn close(setup: &Setup, queues: Vec<Arc<PostgresQueue>>) {
    for queue in queues {
        queue.close().await;
        queue.pool().close().await;
    }
    recorded::forget(&setup.schema).await;
}

/// Waits until every instance reports every job complete; returns their stats, all equal.
async fn wait_all(queues: &[Arc<PostgresQueue>], jobs: usize) -> QueueStats {
    let mut all = Vec::new();
    for queue in queues {
        tokio::time::timeout(DEADLINE, amboy::wait(&**queue))
            .await
            .expect("the jobs complete")
            .expect("stats");
        all.push(queue.stats().await.expect("stats"));
    }
    let first = all[0].clone();
    assert!(all.iter().all(|stats| *stats == first), "{all:?}");
    assert_eq!(
        (first.completed, first.total, first.pending, first.running),
        (jobs, jobs, 0, 0)
    );
    first
}

/// amboy's `MultipleExecution`: two queue instances on one table, 800 jobs put through one,
/// both running them: both report the same totals, and every job ran once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiple_execution() {
    const JOBS: usize = 800;
    let setup = setup().await;
    let queues = instances(&setup, 2).await;
    queues[0]
        .put_many(record_jobs(&setup.schema, 0, JOBS))
        .await
        .expect("put");
    wait_all(&queues, JOBS).await;
    let by_owner = assert_each_ran_once(&setup, JOBS).await;
    for queue in &queues {
        assert!(
            by_owner.contains_key(queue.id()),
            "{} ran jobs: {by_owner:?}",
            queue.id()
        );
    }
    close(&setup, queues).await;
}

/// amboy's `ManyQueues`: 2 to 8 queue instances on one table, every one putting its share of
/// 50 jobs per instance at the same time: all report the same totals, and every job ran
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_queues() {
    const PER_INSTANCE: usize = 50;
    for count in 2..=8 {
        let setup = setup().await;
        let queues = instances(&setup, count).await;
        let puts = queues.iter().enumerate().map(|(n, queue)| {
            queue.put_many(record_jobs(&setup.schema, n * PER_INSTANCE, PER_INSTANCE))
        });
        for put in futures::future::join_all(puts).await {
            put.expect("put");
        }
        let jobs = count * PER_INSTANCE;
        wait_all(&queues, jobs).await;
        let by_owner = assert_each_ran_once(&setup, jobs).await;
        let owners: HashSet<&str> = queues.iter().map(|queue| queue.id()).collect();
        assert!(
            by_owner.keys().all(|owner| owners.contains(owner.as_str())),
            "{count} instances: {by_owner:?}"
        );
        close(&setup, queues).await;
    }
}

//! The PostgreSQL queue's throughput and latency, run by `cargo xtask bench postgres`, beside
//! the PostgreSQL-backed peers of `../shared/peers` measured in the same run.
//!
//! Every case runs on the server of `AMBOY_BENCH_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`), in a fresh schema that it drops afterwards,
//! with the queue's default options (the schema aside), jobs put through the public API and run
//! by [`LocalWorkers`]. Each prints one JSON line on stdout:
//!
//! * `postgres/put_many`: `jobs` no-op jobs made and put with `put_many`, 1,000 per call, one
//!   call at a time, into a queue nobody runs: jobs per second.
//! * `postgres/burn_down`: `jobs` pending no-op jobs run by 1 process × 8, 32 and 64 workers,
//!   and by 2 processes × 32 (the second is this binary started with `--child`, on the same
//!   schema), keeping every completed job (the default, `"completed": "kept"`); then by 1 × 64
//!   and 2 × 32 with a retention of zero, completions deleting their jobs as the peers do
//!   (`"completed": "deleted"`). `jobs_per_sec` counts from the first claim to the last
//!   completion, both on the database's clock (the earliest `start` the jobs recorded, the
//!   latest `finished`) when the jobs are kept, and is `wall_jobs_per_sec` when they are
//!   deleted (nothing is left to read the times from): from starting the queues to the parent
//!   seeing every job's completion committed.
//! * `postgres/pickup_latency`: idle workers (8, in their own queue); another queue on the same
//!   schema puts one job every 10 ms for 10 s (as another process would, so the wake-up goes
//!   through `LISTEN`/`NOTIFY`). Each job records when it started; the put time is read just
//!   before `put`. Median, p99 and maximum of put-to-start.
//! * `postgres/bytes_per_pending_job`: the size of the jobs table and the scopes table with
//!   their indexes and TOAST (`pg_total_relation_size`) with 1,000,000 jobs pending, divided by
//!   1,000,000.
//!
//! Throughput cases report the median of `AMBOY_BENCH_RUNS` runs (default 3; every run's rate in
//! `runs`). Then it runs the peers, graphile_worker (Rust) and graphile-worker (Node), each with
//! `JOBS=jobs REPS=runs` through its own `run.sh` (`AMBOY_BENCH_PEERS_DIR`, default
//! `../shared/peers` beside the workspace; the Rust peer builds into `target/peers`), prints
//! their lines, and one `postgres/vs_peer` line per peer: our best burn-down case over their
//! median burn-down (for each of the two retentions), our `put_many` over their median SQL
//! enqueue. A peer that cannot run gets a line saying why, and the benchmark goes on.
//!
//! Arguments: `[jobs]` (default 100,000), `[filter]`, a substring of the cases to run
//! (`put_many`, `burn_down`, `pickup`, `bytes`, `peers`; default: all), and `[shapes]`, the
//! burn-down cases as a comma-separated list of `<processes>x<workers>`, with the suffix `d` for
//! a retention of zero (default `1x8,1x32,1x64,2x32,1x64d,2x32d`).

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use amboy::postgres::{PostgresQueue, PostgresQueueOptions};
use amboy::prelude::*;
use amboy::runner::LocalWorkers;
use amboy::{Base, JobContext, JobError, JobRef};
use amboy_bench::{database_url as url, median, runs};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The local default server.
/// Jobs per `put_many` call.
const PUT_BATCH: usize = 10_000;
/// Jobs pending in the bytes-per-job case.
const MEMORY_JOBS: usize = 1_000_000;
/// The burn-down cases: processes × workers.
const BURN_DOWN: &str = "1x8,1x32,1x64,2x32,1x64d,2x32d";
/// Idle workers of the pickup-latency case.
const PICKUP_WORKERS: usize = 8;
/// One put every this long, for this long, in the pickup-latency case.
const PICKUP_EVERY: Duration = Duration::from_millis(10);
const PICKUP_FOR: Duration = Duration::from_secs(10);

/// Jobs run by this process.
static RAN: AtomicUsize = AtomicUsize::new(0);

/// A job that only counts itself: the benchmark measures the queue, its store and the runner.
#[derive(Debug, Serialize, Deserialize)]
struct PgNoop {
    base: Base,
}

#[typetag::serde(name = "bench-pg-noop")]
#[async_trait::async_trait]
impl Job for PgNoop {
    fn base(&self) -> &Base {
        &self.base
    }

    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        RAN.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

fn noop() -> JobRef {
    Arc::new(PgNoop { base: Base::new() })
}

/// When each job of the pickup-latency case started, by its number.
static STARTED: Mutex<Vec<Option<Instant>>> = Mutex::new(Vec::new());

/// A job that records when it started.
#[derive(Debug, Serialize, Deserialize)]
struct PgStamp {
    base: Base,
    n: usize,
}

#[typetag::serde(name = "bench-pg-stamp")]
#[async_trait::async_trait]
impl Job for PgStamp {
    fn base(&self) -> &Base {
        &self.base
    }

    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        let now = Instant::now();
        if let Some(slot) = STARTED.lock().get_mut(self.n) {
            *slot = Some(now);
        }
        Ok(())
    }
}

/// A schema no other case or process uses.
fn fresh_schema() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "amboy_bench_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A queue on `schema` with the default options.
fn queue_on(schema: &str) -> Arc<PostgresQueue> {
    PostgresQueue::new(PostgresQueueOptions::with_url(url()).schema(schema)).expect("options")
}

/// A queue on `schema` run by `workers` local workers, not started; with `delete`, a retention
/// of zero (completions delete their jobs).
fn worker_queue(schema: &str, workers: usize, delete: bool) -> Arc<PostgresQueue> {
    let options = PostgresQueueOptions::with_url(url())
        .schema(schema)
        .retention(delete.then_some(Duration::ZERO));
    let queue = PostgresQueue::new(options).expect("options");
    queue
        .set_runner(LocalWorkers::new(workers))
        .expect("runner");
    queue
}

async fn drop_schema(queue: &PostgresQueue, schema: &str) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE"
    )))
    .execute(queue.pool())
    .await
    .expect("drop the schema");
}

/// Puts `jobs` jobs made by `job`, `PUT_BATCH` per `put_many` call.
async fn fill(queue: &PostgresQueue, jobs: usize, job: impl Fn() -> JobRef) {
    let mut left = jobs;
    while left > 0 {
        let n = left.min(PUT_BATCH);
        queue
            .put_many((0..n).map(|_| job()).collect())
            .await
            .expect("put_many");
        left -= n;
    }
}

fn rounded(values: &[f64]) -> Vec<f64> {
    values.iter().map(|v| v.round()).collect()
}

/// One `put_many` run: jobs per second.
async fn put_many_once(jobs: usize) -> f64 {
    let schema = fresh_schema();
    let queue = queue_on(&schema);
    queue.migrate().await.expect("migrate");
    let started = Instant::now();
    fill(&queue, jobs, noop).await;
    let rate = jobs as f64 / started.elapsed().as_secs_f64();
    drop_schema(&queue, &schema).await;
    queue.close().await;
    rate
}

/// A child process of a burn-down case, started but not yet told to go.
struct Child {
    process: std::process::Child,
    stdin: std::process::ChildStdin,
    /// How many jobs it ran, as it last said.
    ran: Arc<AtomicUsize>,
    /// Its final count, once it stopped.
    done: std::sync::mpsc::Receiver<usize>,
}

impl Child {
    /// Starts this binary as a worker process on `schema` and waits until it is ready.
    fn start(schema: &str, workers: usize, delete: bool) -> Child {
        let mut process = Command::new(std::env::current_exe().expect("current exe"))
            .args(["--child", schema, &workers.to_string()])
            .args(delete.then_some("delete"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start a worker process");
        let stdin = process.stdin.take().expect("stdin");
        let stdout = process.stdout.take().expect("stdout");
        let ran = Arc::new(AtomicUsize::new(0));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (done_tx, done) = std::sync::mpsc::channel();
        let counted = ran.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line == "ready" {
                    let _ = ready_tx.send(());
                } else if let Some(n) = line.strip_prefix("count ") {
                    counted.store(n.parse().expect("a count"), Ordering::Relaxed);
                } else if let Some(n) = line.strip_prefix("done ") {
                    let n = n.parse().expect("a count");
                    counted.store(n, Ordering::Relaxed);
                    let _ = done_tx.send(n);
                } else {
                    eprintln!("[worker process] {line}");
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the worker process got ready");
        Child {
            process,
            stdin,
            ran,
            done,
        }
    }

    fn say(&mut self, what: &str) {
        writeln!(self.stdin, "{what}").expect("write to the worker process");
        self.stdin.flush().expect("flush");
    }

    /// Stops it; gives how many jobs it ran.
    fn stop(mut self) -> usize {
        self.say("stop");
        let ran = self
            .done
            .recv_timeout(Duration::from_secs(60))
            .expect("the worker process stopped");
        let status = self.process.wait().expect("wait for the worker process");
        assert!(status.success(), "worker process failed: {status}");
        ran
    }
}

/// The child's side: a queue on the schema it is given, started on "go", closed on "stop".
fn child(args: &[String]) {
    let schema = args
        .first()
        .expect("--child <schema> <workers> [delete]")
        .clone();
    let workers: usize = args
        .get(1)
        .and_then(|n| n.parse().ok())
        .expect("--child <schema> <workers> [delete]");
    let delete = args.get(2).is_some_and(|arg| arg == "delete");
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line.trim().to_owned()).is_err() {
                break;
            }
        }
    });
    amboy_bench::runtime().block_on(async move {
        let queue = worker_queue(&schema, workers, delete);
        queue.migrate().await.expect("migrate");
        println!("ready");
        while let Some(line) = lines.recv().await {
            if line == "go" {
                break;
            }
        }
        queue.start().await.expect("start");
        let reporter = tokio::spawn(async {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let ran = RAN.load(Ordering::Relaxed);
                if ran != last {
                    println!("count {ran}");
                    last = ran;
                }
            }
        });
        while let Some(line) = lines.recv().await {
            if line == "stop" {
                break;
            }
        }
        reporter.abort();
        queue.close().await;
        println!("done {}", RAN.load(Ordering::Relaxed));
    });
}

/// The result of one burn-down run.
struct BurnDown {
    /// From the first claim to the last completion, on the database's clock.
    rate: f64,
    /// From starting the queues to seeing every job completed.
    wall_rate: f64,
}

/// A burn-down case: processes × workers, and whether completions delete their jobs.
#[derive(Clone, Copy)]
struct Shape {
    processes: usize,
    workers: usize,
    delete: bool,
}

impl Shape {
    /// `<processes>x<workers>`, with `d` after it for a retention of zero.
    fn parse(text: &str) -> Shape {
        let text = text.trim();
        let (text, delete) = match text.strip_suffix('d') {
            Some(kept) => (kept, true),
            None => (text, false),
        };
        let (processes, workers) = text
            .split_once('x')
            .expect("shapes: <processes>x<workers>[d],...");
        Shape {
            processes: processes.parse().expect("processes: a number"),
            workers: workers.parse().expect("workers: a number"),
            delete,
        }
    }

    fn name(self) -> String {
        let suffix = if self.delete { "d" } else { "" };
        format!("{}x{}{suffix}", self.processes, self.workers)
    }
}

/// One burn-down run of `jobs` jobs by `shape`'s processes and workers.
async fn burn_down_once(jobs: usize, shape: Shape) -> BurnDown {
    let Shape {
        processes,
        workers,
        delete,
    } = shape;
    let schema = fresh_schema();
    let queue = worker_queue(&schema, workers, delete);
    queue.migrate().await.expect("migrate");
    fill(&queue, jobs, noop).await;
    sqlx::query(sqlx::AssertSqlSafe(format!("VACUUM ANALYZE {schema}.jobs")))
        .execute(queue.pool())
        .await
        .expect("vacuum");
    let mut children: Vec<Child> = (1..processes)
        .map(|_| Child::start(&schema, workers, delete))
        .collect();
    RAN.store(0, Ordering::Relaxed);
    let started = Instant::now();
    for child in &mut children {
        child.say("go");
    }
    queue.start().await.expect("start");
    // Every job ran ...
    while RAN.load(Ordering::Relaxed)
        + children
            .iter()
            .map(|child| child.ran.load(Ordering::Relaxed))
            .sum::<usize>()
        < jobs
    {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // ... and its completion committed.
    let unfinished = format!(
        "SELECT EXISTS (SELECT 1 FROM {schema}.jobs WHERE queue_group = '' AND state IN (0, 1))"
    );
    loop {
        let left: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(unfinished.clone()))
            .fetch_one(queue.pool())
            .await
            .expect("unfinished jobs");
        if !left {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let wall = started.elapsed().as_secs_f64();
    let ran = RAN.load(Ordering::Relaxed) + children.into_iter().map(Child::stop).sum::<usize>();
    queue.close().await;
    let (stored, completed, span): (i64, i64, Option<f64>) =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT count(*), count(*) FILTER (WHERE state = 2), \
                 extract(epoch FROM max(finished) \
                     - min((body::json->'time_info'->>'start')::timestamptz))::float8 \
             FROM {schema}.jobs"
        )))
        .fetch_one(queue.pool())
        .await
        .expect("read the run's span");
    assert_eq!(ran, jobs, "every job ran once");
    drop_schema(&queue, &schema).await;
    let wall_rate = jobs as f64 / wall;
    if delete {
        assert_eq!(stored, 0, "every completion deleted its job");
        return BurnDown {
            rate: wall_rate,
            wall_rate,
        };
    }
    assert_eq!(completed as usize, jobs, "every job completed");
    BurnDown {
        rate: jobs as f64 / span.expect("the jobs' times"),
        wall_rate,
    }
}

/// Put-to-start latencies, in milliseconds, of one job put every `PICKUP_EVERY` for
/// `PICKUP_FOR` by a queue of its own while `PICKUP_WORKERS` idle workers wait.
async fn pickup_latencies() -> Vec<f64> {
    let schema = fresh_schema();
    let consumer = worker_queue(&schema, PICKUP_WORKERS, false);
    let producer = queue_on(&schema);
    producer.migrate().await.expect("migrate");
    consumer.start().await.expect("start");
    let count = (PICKUP_FOR.as_millis() / PICKUP_EVERY.as_millis()) as usize;
    *STARTED.lock() = vec![None; count];
    let mut put_at = Vec::with_capacity(count);
    // The workers are idle and the listener listens.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut ticks = tokio::time::interval(PICKUP_EVERY);
    for n in 0..count {
        ticks.tick().await;
        put_at.push(Instant::now());
        producer
            .put(Arc::new(PgStamp {
                base: Base::new(),
                n,
            }))
            .await
            .expect("put");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while STARTED.lock().iter().any(Option::is_none) {
        assert!(Instant::now() < deadline, "every job started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = std::mem::take(&mut *STARTED.lock());
    consumer.close().await;
    producer.close().await;
    drop_schema(&producer, &schema).await;
    put_at
        .iter()
        .zip(started)
        .map(|(put, start)| {
            start
                .expect("started")
                .saturating_duration_since(*put)
                .as_secs_f64()
                * 1000.0
        })
        .collect()
}

/// Bytes per pending job with `jobs` jobs pending: the jobs and scopes tables, indexes and TOAST
/// included.
async fn bytes_per_pending_job(jobs: usize) -> Value {
    let schema = fresh_schema();
    let queue = queue_on(&schema);
    queue.migrate().await.expect("migrate");
    fill(&queue, jobs, noop).await;
    let (jobs_table, scopes_table): (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT pg_total_relation_size('{schema}.jobs'), pg_total_relation_size('{schema}.scopes')"
    )))
    .fetch_one(queue.pool())
    .await
    .expect("table sizes");
    let (heap, body): (i64, f64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT pg_relation_size('{schema}.jobs'), avg(pg_column_size(body))::float8 \
         FROM {schema}.jobs"
    )))
    .fetch_one(queue.pool())
    .await
    .expect("heap size");
    drop_schema(&queue, &schema).await;
    queue.close().await;
    json!({
        "case": "postgres/bytes_per_pending_job",
        "jobs": jobs,
        "bytes_per_job": ((jobs_table + scopes_table) as f64 / jobs as f64).round(),
        "jobs_table_bytes": jobs_table,
        "jobs_heap_bytes": heap,
        "scopes_table_bytes": scopes_table,
        "avg_body_bytes": body.round(),
    })
}

/// The server's address without its database, as the peers want it (`PG_BASE_URL`).
fn base_url(url: &str) -> String {
    let after_scheme = url.find("://").map_or(0, |at| at + 3);
    match url[after_scheme..].find('/') {
        Some(slash) => url[..after_scheme + slash].to_owned(),
        None => url.to_owned(),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the bench crate lives in the workspace")
        .to_path_buf()
}

/// Runs one peer's `run.sh` with `jobs` jobs and `reps` repetitions; its JSON lines, or why it
/// could not run.
fn run_peer(script: &Path, jobs: usize, reps: usize) -> Result<Vec<Value>, String> {
    if !script.exists() {
        return Err(format!("{} not found", script.display()));
    }
    let target = std::env::var("PEER_TARGET_DIR").unwrap_or_else(|_| {
        workspace_root()
            .join("target/peers/graphile-worker-rs")
            .display()
            .to_string()
    });
    eprintln!("$ JOBS={jobs} REPS={reps} {}", script.display());
    let output = Command::new(script)
        .env("JOBS", jobs.to_string())
        .env("REPS", reps.to_string())
        .env("PG_BASE_URL", base_url(&url()))
        .env("PEER_TARGET_DIR", target)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|error| format!("cannot start {}: {error}", script.display()))?;
    if !output.status.success() {
        return Err(format!("{} failed ({})", script.display(), output.status));
    }
    let lines: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line.get("run_jobs_per_s").is_some())
        .collect();
    if lines.is_empty() {
        return Err(format!("{} printed no result", script.display()));
    }
    Ok(lines)
}

fn ratio(ours: f64, theirs: f64) -> Value {
    json!((ours / theirs * 100.0).round() / 100.0)
}

/// Runs the peers and prints their lines and our ratios to them: `burn_down` holds our best
/// case keeping completed jobs and our best deleting them.
fn peers(jobs: usize, reps: usize, put_many: Option<f64>, burn_down: [Option<(String, f64)>; 2]) {
    let dir = std::env::var("AMBOY_BENCH_PEERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join("../shared/peers"));
    for peer in ["graphile-worker-rs", "graphile-worker"] {
        match run_peer(&dir.join(peer).join("run.sh"), jobs, reps) {
            Err(reason) => println!(
                "{}",
                json!({"case": "postgres/vs_peer", "peer": peer, "skipped": reason})
            ),
            Ok(lines) => {
                for line in &lines {
                    println!("{line}");
                }
                let field = |name: &str| -> Vec<f64> {
                    lines
                        .iter()
                        .filter_map(|line| line.get(name).and_then(Value::as_f64))
                        .collect()
                };
                let (run, enqueue) = (median(&field("run_jobs_per_s")), {
                    let enqueue = field("enqueue_jobs_per_s");
                    (!enqueue.is_empty()).then(|| median(&enqueue))
                });
                let mut line = json!({
                    "case": "postgres/vs_peer",
                    "peer": peer,
                    "peer_burn_down_jobs_per_sec": run.round(),
                    "peer_enqueue_jobs_per_sec": enqueue.map(f64::round),
                });
                for (best, prefix) in burn_down.iter().zip(["burn_down", "burn_down_deleting"]) {
                    if let Some((case, ours)) = best {
                        line[prefix] = json!(case);
                        line[format!("{prefix}_jobs_per_sec")] = json!(ours.round());
                        line[format!("{prefix}_ratio")] = ratio(*ours, run);
                    }
                }
                if let (Some(ours), Some(theirs)) = (put_many, enqueue) {
                    line["put_many_jobs_per_sec"] = json!(ours.round());
                    line["put_many_ratio"] = ratio(ours, theirs);
                }
                println!("{line}");
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        return child(&args[1..]);
    }
    let jobs: usize = args.first().and_then(|n| n.parse().ok()).unwrap_or(100_000);
    let filter = args.get(1).cloned().unwrap_or_default();
    let shapes: Vec<Shape> = args
        .get(2)
        .map_or(BURN_DOWN, String::as_str)
        .split(',')
        .map(Shape::parse)
        .collect();
    let wanted = |case: &str| case.contains(filter.as_str());
    let runs = runs();
    eprintln!(
        "{jobs} jobs, {runs} runs per case, server {}, runtime threads: {}",
        url(),
        amboy_bench::threads()
    );
    let (put_many, burn_down) = amboy_bench::runtime().block_on(async {
        let mut put_many = None;
        if wanted("postgres/put_many") {
            let mut rates = Vec::new();
            for _ in 0..runs {
                rates.push(put_many_once(jobs).await);
            }
            let rate = median(&rates);
            println!(
                "{}",
                json!({
                    "case": "postgres/put_many", "jobs": jobs, "batch": PUT_BATCH,
                    "jobs_per_sec": rate.round(), "runs": rounded(&rates),
                })
            );
            put_many = Some(rate);
        }
        let mut best: [Option<(String, f64)>; 2] = [None, None];
        if wanted("postgres/burn_down") {
            for &shape in &shapes {
                let mut rates = Vec::new();
                let mut walls = Vec::new();
                for _ in 0..runs {
                    let run = burn_down_once(jobs, shape).await;
                    rates.push(run.rate);
                    walls.push(run.wall_rate);
                }
                let rate = median(&rates);
                println!(
                    "{}",
                    json!({
                        "case": "postgres/burn_down", "processes": shape.processes,
                        "workers": shape.workers,
                        "completed": if shape.delete { "deleted" } else { "kept" },
                        "jobs": jobs, "jobs_per_sec": rate.round(),
                        "runs": rounded(&rates), "wall_jobs_per_sec": median(&walls).round(),
                    })
                );
                let best = &mut best[usize::from(shape.delete)];
                if best.as_ref().is_none_or(|(_, best)| rate > *best) {
                    *best = Some((shape.name(), rate));
                }
            }
        }
        if wanted("postgres/pickup_latency") {
            let mut latencies = pickup_latencies().await;
            latencies.sort_by(f64::total_cmp);
            let at = |q: f64| {
                let index =
                    ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len());
                (latencies[index - 1] * 100.0).round() / 100.0
            };
            println!(
                "{}",
                json!({
                    "case": "postgres/pickup_latency", "jobs": latencies.len(),
                    "workers": PICKUP_WORKERS, "every_ms": PICKUP_EVERY.as_millis(),
                    "median_ms": at(0.5), "p99_ms": at(0.99), "max_ms": at(1.0),
                })
            );
        }
        if wanted("postgres/bytes_per_pending_job") {
            println!("{}", bytes_per_pending_job(MEMORY_JOBS).await);
        }
        (put_many, best)
    });
    if wanted("peers") {
        peers(jobs, runs, put_many, burn_down);
    }
}

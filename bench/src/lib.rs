//! Benchmarks of amboy for Rust, and what they share.
//!
//! `cargo xtask bench local` (`src/bin/local.rs`) runs the in-memory throughput benchmarks of
//! the local queues; `cargo xtask bench peers` (the `bench/peers` crate, outside the workspace)
//! runs the limited-size queue beside apalis. Both measure every case the same way, with
//! [`timed`]: the consumers (queue workers, channel consumers) are started first; the clock
//! starts, a producer task is spawned that puts the jobs one by one, and the clock stops when
//! the last job has run, as counted by [`FINISHED`]. Both compare every case with the
//! [`references`], hand-offs of boxed no-op closures between tasks measured in the same run.

pub mod references;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use amboy::local::{Line, LocalQueue};
use amboy::prelude::*;
use amboy::{Base, JobContext, JobError, JobRef};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::Notify;

/// The capacity of every bounded queue and channel in the benchmarks.
pub const CAPACITY: usize = 1024;

/// A job that does nothing but count itself in [`FINISHED`], so the benchmark measures the
/// queue and runner.
#[derive(Debug, Serialize, Deserialize)]
pub struct NoopJob {
    /// Metadata.
    pub base: Base,
}

#[typetag::serde(name = "bench-noop")]
#[async_trait::async_trait]
impl Job for NoopJob {
    fn base(&self) -> &Base {
        &self.base
    }

    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        FINISHED.tick();
        Ok(())
    }
}

/// A no-op job with a fresh ID (`Base::new`).
pub fn noop_job(_n: usize) -> JobRef {
    Arc::new(NoopJob { base: Base::new() })
}

/// An atomic counter on a cache line of its own, so that the threads ticking it do not also
/// fight over whatever would sit next to it.
#[derive(Debug)]
#[repr(align(128))]
struct Padded(AtomicIsize);

/// Counts the jobs of a run down to zero and wakes whoever waits for the last one.
#[derive(Debug)]
pub struct Countdown {
    left: Padded,
    done: Notify,
}

impl Countdown {
    /// A countdown with nothing to count.
    pub const fn new() -> Self {
        Self {
            left: Padded(AtomicIsize::new(0)),
            done: Notify::const_new(),
        }
    }

    /// Starts counting `jobs` jobs. Outside a run (criterion's hot path, say) ticks take the
    /// count below zero, where nobody waits.
    pub fn arm(&self, jobs: usize) {
        let jobs = isize::try_from(jobs).expect("jobs fit in an isize");
        self.left.0.store(jobs, Ordering::Release);
    }

    /// Counts one job as run.
    pub fn tick(&self) {
        if self.left.0.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done.notify_waiters();
        }
    }

    /// Returns once every job armed for has been counted.
    pub async fn finished(&self) {
        loop {
            // Made before the check, so that a last tick after the check still wakes it.
            let notified = self.done.notified();
            if self.left.0.load(Ordering::Acquire) <= 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Default for Countdown {
    fn default() -> Self {
        Self::new()
    }
}

/// The countdown of the run under way: every case ticks it once per job, right after the job
/// ran (amboy's [`NoopJob`], apalis's handler, the references' consumers).
pub static FINISHED: Countdown = Countdown::new();

/// How long the consumers of a case are given to reach their first wait before the clock
/// starts.
const SETTLE: Duration = Duration::from_millis(10);

/// One timed run of `jobs` jobs, once every consumer of the case is running: arms
/// [`FINISHED`], starts the clock, spawns `producer` (which puts the jobs, making each in its
/// loop), and stops the clock when the last job has run. Gives the rate in jobs per second;
/// the producer is joined after the clock stopped.
pub async fn timed<P>(jobs: usize, producer: P) -> f64
where
    P: Future<Output = ()> + Send + 'static,
{
    tokio::time::sleep(SETTLE).await;
    FINISHED.arm(jobs);
    let started = Instant::now();
    let producer = tokio::spawn(producer);
    FINISHED.finished().await;
    let rate = jobs as f64 / started.elapsed().as_secs_f64();
    producer.await.expect("producer");
    rate
}

/// Starts `queue` (whose runner is set), puts `jobs` jobs made by `job` from a producer task,
/// timed by [`timed`], then checks that every job completed and closes the queue.
pub async fn queue_run<L: Line>(
    queue: Arc<LocalQueue<L>>,
    jobs: usize,
    job: fn(usize) -> JobRef,
) -> f64 {
    queue.start().await.expect("start");
    let producer = {
        let queue = queue.clone();
        async move {
            for n in 0..jobs {
                queue.put(job(n)).await.expect("put");
            }
        }
    };
    let rate = timed(jobs, producer).await;
    // The last jobs ran; their completion may still be under way.
    amboy::wait(&*queue).await.expect("wait");
    let stats = queue.stats().await.expect("stats");
    assert_eq!(stats.completed, jobs, "every job completed: {stats}");
    queue.close().await;
    rate
}

/// The rates of one case: the median of three runs, and the three runs.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    /// The median rate, in jobs per second.
    pub median: f64,
    /// Every counted run's rate, in the order run.
    pub runs: [f64; 3],
}

/// The median of three runs of `run`, after one run not counted: the first run of a case pays
/// for warming up (the allocator's arenas, the map's growth) and is often far slower than the
/// next; the median keeps one run disturbed by the machine from deciding. Every run's rate goes
/// to stderr, so that the spread is seen.
pub async fn measure<F, Fut>(case: &str, workers: usize, run: F) -> Measured
where
    F: Fn() -> Fut,
    Fut: Future<Output = f64>,
{
    let warmup = run().await;
    let runs = [run().await, run().await, run().await];
    eprintln!("{case} workers={workers}: warm-up {warmup:.0}, runs {runs:.0?}");
    let mut sorted = runs;
    sorted.sort_by(f64::total_cmp);
    Measured {
        median: sorted[1],
        runs,
    }
}

/// Prints the JSON line of one case: its median and runs, and its ratio to each reference's
/// median (`references`: name and median).
pub fn report(case: &str, workers: usize, jobs: usize, rate: Measured, references: &[(&str, f64)]) {
    let ratio: Map<String, Value> = references
        .iter()
        .map(|(name, median)| {
            let ratio = (rate.median / median * 1000.0).round() / 1000.0;
            ((*name).to_owned(), json!(ratio))
        })
        .collect();
    println!(
        "{}",
        json!({
            "case": case,
            "workers": workers,
            "jobs": jobs,
            "jobs_per_sec": rate.median.round(),
            "runs": rate.runs.map(f64::round),
            "ratio": ratio,
            "threads": threads(),
            "allocator": ALLOCATOR,
        })
    );
}

/// The global allocator: the system's, or mimalloc with the `mimalloc` feature.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The allocator the benchmarks run on: `system`, or `mimalloc` with the `mimalloc` feature.
pub const ALLOCATOR: &str = if cfg!(feature = "mimalloc") {
    "mimalloc"
} else {
    "system"
};

/// The runtime's worker threads: `AMBOY_BENCH_THREADS`, or one per core.
pub fn threads() -> usize {
    match std::env::var("AMBOY_BENCH_THREADS") {
        Ok(threads) => threads.parse().expect("AMBOY_BENCH_THREADS: a number"),
        Err(_) => std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}

/// The multi-thread tokio runtime every benchmark runs on, with [`threads`] worker threads:
/// measuring on one thread shows what handing work between threads costs.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads())
        .enable_all()
        .build()
        .expect("runtime")
}

/// Parses a comma-separated list of worker counts, or gives `default`.
pub fn worker_counts(list: Option<String>, default: &[usize]) -> Vec<usize> {
    match list {
        Some(list) => list
            .split(',')
            .map(|n| {
                n.trim()
                    .parse()
                    .expect("workers: a comma-separated list of numbers")
            })
            .collect(),
        None => default.to_vec(),
    }
}

/// The server of the PostgreSQL benchmarks: `AMBOY_BENCH_DATABASE_URL`, else the local one.
pub fn database_url() -> String {
    std::env::var("AMBOY_BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// How many runs each throughput case makes: `AMBOY_BENCH_RUNS`, default 3.
pub fn runs() -> usize {
    std::env::var("AMBOY_BENCH_RUNS")
        .ok()
        .and_then(|runs| runs.parse().ok())
        .unwrap_or(3)
        .max(1)
}

/// The median of `values` (the upper one of an even number).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn countdown_wakes_after_the_last_tick() {
        let countdown = Arc::new(Countdown::new());
        countdown.arm(3);
        let waiter = tokio::spawn({
            let countdown = countdown.clone();
            async move { countdown.finished().await }
        });
        countdown.tick();
        countdown.tick();
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        countdown.tick();
        waiter.await.unwrap();
        // Nothing armed: returns at once.
        countdown.arm(0);
        countdown.finished().await;
    }
}

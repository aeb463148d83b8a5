//! In-memory throughput, run by `cargo xtask bench local`: no-op jobs put, run and completed
//! per second through the local queues with the local worker pool, each case against a
//! bare-channel baseline measured in the same run, and the memory a pending job takes.
//!
//! Each rate is the median of three runs after a warm-up run. Prints one JSON line per case on
//! stdout, and every run's rate on stderr. Arguments: `[jobs]` (default 1,000,000), `[filter]`, a
//! substring of the case names to run (default: all), and `[workers]`, a comma-separated list
//! (default `2,8,64`). Built with the `mimalloc` feature, it runs on mimalloc instead of the
//! system's allocator. `AMBOY_BENCH_THREADS` sets the runtime's worker threads (default: one
//! per core).

use std::sync::Arc;
use std::time::Instant;

use amboy::dependency::Always;
use amboy::local::{ByPriority, Fifo, Line, LocalQueue, Ordered};
use amboy::prelude::*;
use amboy::{Base, JobRef};
use amboy_bench::NoopJob;
use serde_json::json;
use tokio::sync::Mutex;

/// The capacity of every queue and of the baseline channel.
const CAPACITY: usize = 1024;

type Task =
    Box<dyn FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send>;

/// `jobs` boxed no-op async closures through a bounded tokio mpsc channel, consumed by
/// `workers` tasks sharing the receiver.
async fn baseline(jobs: usize, workers: usize) -> f64 {
    let (tx, rx) = tokio::sync::mpsc::channel::<Task>(CAPACITY);
    let rx = Arc::new(Mutex::new(rx));
    let started = Instant::now();
    let consumers: Vec<_> = (0..workers)
        .map(|_| {
            let rx = rx.clone();
            tokio::spawn(async move {
                loop {
                    let task = rx.lock().await.recv().await;
                    match task {
                        Some(task) => task().await,
                        None => return,
                    }
                }
            })
        })
        .collect();
    // The producer is a task on the runtime, as an application's code is.
    let producer = tokio::spawn(async move {
        for _ in 0..jobs {
            let task: Task = Box::new(|| Box::pin(async {}));
            if tx.send(task).await.is_err() {
                break;
            }
        }
    });
    producer.await.expect("producer");
    for consumer in consumers {
        consumer.await.expect("consumer");
    }
    jobs as f64 / started.elapsed().as_secs_f64()
}

/// A no-op job: with a fresh random ID, or `job-<n>` when `named` (for edges to find); with
/// `edge`, it depends on that earlier job.
fn job(n: usize, named: bool, edge: Option<usize>) -> JobRef {
    let base = if named {
        Base::with_id(format!("job-{n}"))
    } else {
        Base::new()
    };
    let job = NoopJob { base };
    if let Some(edge) = edge {
        let always = Always::new();
        always
            .edges
            .add_edge(&format!("job-{edge}"))
            .expect("new edge");
        job.base.set_dependency(Arc::new(always));
    }
    Arc::new(job)
}

/// Puts `jobs` no-op jobs into a started queue of kind `L` served by `workers` local workers
/// and waits for all of them; `edges` gives job `n` an edge to an earlier job, or none.
async fn throughput<L: Line>(
    jobs: usize,
    workers: usize,
    named: bool,
    edges: fn(usize) -> Option<usize>,
) -> f64 {
    let queue: Arc<LocalQueue<L>> = amboy::new_local_queue(workers, CAPACITY);
    queue.start().await.expect("start");
    // Jobs are made inside the timed loop, as the baseline makes its closures, by a producer
    // task on the runtime, as the baseline's is.
    let started = Instant::now();
    let producer = {
        let queue = queue.clone();
        tokio::spawn(async move {
            for n in 0..jobs {
                queue.put(job(n, named, edges(n))).await.expect("put");
            }
        })
    };
    producer.await.expect("producer");
    amboy::wait(&*queue).await.expect("wait");
    let rate = jobs as f64 / started.elapsed().as_secs_f64();
    let stats = queue.stats().await.expect("stats");
    assert_eq!(stats.completed, jobs, "every job completed: {stats}");
    queue.close().await;
    rate
}

/// The resident memory of this process, in bytes.
fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// The memory each pending job takes, job included, with `jobs` jobs waiting in a
/// limited-size queue whose runner runs nothing.
async fn bytes_per_pending_job(jobs: usize) -> f64 {
    let queue = amboy::local::LimitedSizeQueue::new(jobs);
    queue
        .set_runner(amboy::runner::NoopRunner::new())
        .expect("runner");
    queue.start().await.expect("start");
    let before = resident_bytes();
    for n in 0..jobs {
        queue.put(job(n, false, None)).await.expect("put");
    }
    let after = resident_bytes();
    assert_eq!(queue.stats().await.expect("stats").pending, jobs);
    queue.close().await;
    after.saturating_sub(before) as f64 / jobs as f64
}

fn line(bench: &str, jobs: usize, workers: usize, rate: f64, base: f64) {
    println!(
        "{}",
        json!({
            "bench": bench,
            "jobs": jobs,
            "workers": workers,
            "jobs_per_sec": rate.round(),
            "baseline_jobs_per_sec": base.round(),
            "ratio": (rate / base * 1000.0).round() / 1000.0,
        })
    );
}

/// One run of a case, giving its rate.
type Run = std::pin::Pin<Box<dyn std::future::Future<Output = f64>>>;

/// The median of three runs of `run`, after one run not counted: the first run of a case pays
/// for warming up (the allocator's arenas, the map's growth) and is often far slower than the
/// next; the median keeps one run disturbed by the machine from deciding. Every run's rate goes
/// to stderr, so that the spread is seen.
async fn median<F, Fut>(case: &str, workers: usize, run: F) -> f64
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = f64>,
{
    let warmup = run().await;
    let mut rates = [run().await, run().await, run().await];
    eprintln!("{case} workers={workers}: warm-up {warmup:.0}, runs {rates:.0?}");
    rates.sort_by(f64::total_cmp);
    rates[1]
}

/// The global allocator: the system's, or mimalloc with the `mimalloc` feature.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ALLOCATOR: &str = if cfg!(feature = "mimalloc") {
    "mimalloc"
} else {
    "system"
};

fn main() {
    let mut args = std::env::args().skip(1);
    let jobs: usize = args
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let filter = args.next().unwrap_or_default();
    let counts: Vec<usize> = match args.next() {
        Some(list) => list
            .split(',')
            .map(|n| {
                n.parse()
                    .expect("workers: a comma-separated list of numbers")
            })
            .collect(),
        None => vec![2, 8, 64],
    };
    let wanted = |case: &str| case.contains(filter.as_str());
    eprintln!("{jobs} jobs per run, capacity {CAPACITY}, allocator: {ALLOCATOR}");
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    // One worker thread per core unless set: measuring on one thread shows what handing work
    // between threads costs.
    if let Ok(threads) = std::env::var("AMBOY_BENCH_THREADS") {
        runtime.worker_threads(threads.parse().expect("AMBOY_BENCH_THREADS: a number"));
    }
    let runtime = runtime.enable_all().build().expect("runtime");
    runtime.block_on(async {
        for workers in counts {
            let base = median("baseline", workers, || baseline(jobs, workers)).await;
            // One case: the median rate of `run`, printed against the baseline.
            let measure = async |case: &str, run: &dyn Fn() -> Run| {
                if wanted(case) {
                    let rate = median(case, workers, run).await;
                    line(case, jobs, workers, rate, base);
                }
            };
            measure("limited_size/local_workers", &|| {
                Box::pin(throughput::<Fifo>(jobs, workers, false, |_| None))
            })
            .await;
            measure("priority/local_workers", &|| {
                Box::pin(throughput::<ByPriority>(jobs, workers, false, |_| None))
            })
            .await;
            measure("dependency_ordered/no_edges/local_workers", &|| {
                Box::pin(throughput::<Ordered>(jobs, workers, false, |_| None))
            })
            .await;
            // One job in ten depends on the job put just before it.
            measure("dependency_ordered/10pct_edges/local_workers", &|| {
                Box::pin(throughput::<Ordered>(jobs, workers, true, |n| {
                    (n % 10 == 9).then(|| n - 1)
                }))
            })
            .await;
        }
        if wanted("limited_size/memory") {
            let bytes = bytes_per_pending_job(jobs).await;
            println!(
                "{}",
                json!({"bench": "limited_size/memory", "jobs": jobs, "bytes_per_job": bytes.round()})
            );
        }
    });
}

//! In-memory throughput, run by `cargo xtask bench local`: no-op jobs put, run and completed
//! per second through the local queues with the local worker pool, each case against the
//! reference hand-offs of `amboy_bench::references` measured in the same run, and the memory a
//! pending job takes.
//!
//! Every case is timed alike (`amboy_bench::timed`): the clock starts once the consumers run,
//! covers a producer task putting the jobs and the consumers running them, and stops when the
//! last job has run. Each rate is the median of three runs after a warm-up run. Prints one JSON
//! line per case on stdout (the references included), with its ratio to each reference, and
//! every run's rate on stderr. Arguments: `[jobs]` (default 1,000,000), `[filter]`, a substring
//! of the queue cases to run (default: all; the references always run), and `[workers]`, a
//! comma-separated list (default `2,8,64`). Built with the `mimalloc` feature, it runs on
//! mimalloc instead of the system's allocator. `AMBOY_BENCH_THREADS` sets the runtime's worker
//! threads (default: one per core).

use std::sync::Arc;

use amboy::dependency::Always;
use amboy::local::{ByPriority, Fifo, Line, Ordered};
use amboy::prelude::*;
use amboy::{Base, JobRef};
use amboy_bench::{
    ALLOCATOR, CAPACITY, Measured, NoopJob, measure, noop_job, queue_run, references, report,
};
use serde_json::json;

/// `jobs` no-op jobs through a queue of kind `L` served by `workers` local workers; `job` makes
/// job `n`.
async fn throughput<L: Line>(jobs: usize, workers: usize, job: fn(usize) -> JobRef) -> f64 {
    queue_run(amboy::new_local_queue::<L>(workers, CAPACITY), jobs, job).await
}

/// No-op job `n`, named `job-<n>` so that edges can find it; every tenth depends on the job
/// put just before it.
fn job_with_edges(n: usize) -> JobRef {
    let job = NoopJob {
        base: Base::with_id(format!("job-{n}")),
    };
    if n % 10 == 9 {
        let always = Always::new();
        always
            .edges
            .add_edge(&format!("job-{}", n - 1))
            .expect("new edge");
        job.base.set_dependency(Arc::new(always));
    }
    Arc::new(job)
}

/// How many scopes the scoped case's jobs share.
const SHARED_SCOPES: usize = 4;

/// A no-op job holding one of `SHARED_SCOPES` scopes while it runs: with the queue full
/// (1,024 pending), about 256 jobs wait beside each scope.
fn job_with_a_shared_scope(n: usize) -> JobRef {
    let job = NoopJob { base: Base::new() };
    job.base
        .set_scopes(vec![format!("scope-{}", n % SHARED_SCOPES)]);
    Arc::new(job)
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
        queue.put(noop_job(n)).await.expect("put");
    }
    let after = resident_bytes();
    assert_eq!(queue.stats().await.expect("stats").pending, jobs);
    queue.close().await;
    after.saturating_sub(before) as f64 / jobs as f64
}

/// One run of a case, giving its rate.
type Run = std::pin::Pin<Box<dyn std::future::Future<Output = f64>>>;

fn main() {
    let mut args = std::env::args().skip(1);
    let jobs: usize = args
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let filter = args.next().unwrap_or_default();
    let counts = amboy_bench::worker_counts(args.next(), &[2, 8, 64]);
    let wanted = |case: &str| case.contains(filter.as_str());
    eprintln!(
        "{jobs} jobs per run, capacity {CAPACITY}, allocator: {ALLOCATOR}, runtime threads: {}",
        amboy_bench::threads()
    );
    amboy_bench::runtime().block_on(async {
        for workers in counts {
            let measured = references::measure_all(jobs, workers).await;
            let medians: Vec<(&str, f64)> = measured
                .iter()
                .map(|(name, rate)| (*name, rate.median))
                .collect();
            for (name, rate) in &measured {
                report(name, workers, jobs, *rate, &medians);
            }
            // One case: the median rate of `run`, printed against the references.
            let case = async |case: &str, run: &dyn Fn() -> Run| {
                if wanted(case) {
                    let rate: Measured = measure(case, workers, run).await;
                    report(case, workers, jobs, rate, &medians);
                }
            };
            case("limited_size/local_workers", &|| {
                Box::pin(throughput::<Fifo>(jobs, workers, noop_job))
            })
            .await;
            case("priority/local_workers", &|| {
                Box::pin(throughput::<ByPriority>(jobs, workers, noop_job))
            })
            .await;
            case("limited_size/shared_scopes/local_workers", &|| {
                Box::pin(throughput::<Fifo>(jobs, workers, job_with_a_shared_scope))
            })
            .await;
            case("dependency_ordered/no_edges/local_workers", &|| {
                Box::pin(throughput::<Ordered>(jobs, workers, noop_job))
            })
            .await;
            case("dependency_ordered/10pct_edges/local_workers", &|| {
                Box::pin(throughput::<Ordered>(jobs, workers, job_with_edges))
            })
            .await;
        }
        if wanted("limited_size/memory") {
            let bytes = bytes_per_pending_job(jobs).await;
            println!(
                "{}",
                json!({"case": "limited_size/memory", "jobs": jobs, "bytes_per_job": bytes.round()})
            );
        }
    });
}

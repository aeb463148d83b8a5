//! amboy beside its fastest Rust peer, run by `cargo xtask bench peers`: in one process, no-op
//! jobs put by a producer task and run by `workers` workers, through
//!
//! * amboy's limited-size queue with the local worker pool
//!   (`amboy::new_local_limited_size(workers, 1024)`), jobs of a registered no-op `Job` type;
//! * apalis 1.0 with its in-memory backend (`MemoryStorage`), one worker with concurrency
//!   `workers` running the handler inside the worker's future;
//! * the reference hand-offs of `amboy_bench::references`.
//!
//! Every case is timed alike (`amboy_bench::timed`): the clock starts once the consumers run,
//! covers a producer task putting the jobs and the consumers running them, and stops when the
//! last job has run. Each rate is the median of three runs after a warm-up run; every run's
//! rate goes to stderr, and one JSON line per case to stdout, with its ratio to each
//! reference and to apalis. Arguments: `[jobs]` (default 1,000,000) and `[workers]`, a
//! comma-separated list (default `8`). `AMBOY_BENCH_THREADS` sets the runtime's worker threads
//! (default: one per core). Built with the `mimalloc` feature, it runs on mimalloc instead of
//! the system's allocator.
//!
//! This crate is a workspace of its own so that the main workspace never depends on apalis.

use std::sync::Arc;

use amboy_bench::{
    ALLOCATOR, CAPACITY, FINISHED, Measured, measure, noop_job, queue_run, references, report,
    timed,
};
use apalis::prelude::{
    MemorySink, MemoryStorage, MemoryStorageError, RandomId, TaskBuilder, TaskId, WorkerBuilder,
    WorkerBuilderExt,
};
use futures::{Sink, SinkExt, StreamExt};
use tokio::sync::Notify;

/// The arguments of apalis's no-op task.
#[derive(Debug, Clone, Copy)]
struct Noop;

/// apalis's handler: counts the task as run, like amboy's no-op job.
async fn noop(_: Noop) {
    FINISHED.tick();
}

/// The sink half of the in-memory backend, as `MemoryStorage::new` builds it.
type BoxedSink =
    Box<dyn Sink<apalis::prelude::Task<Noop>, Error = MemoryStorageError> + Send + Sync + Unpin>;

/// `jobs` no-op tasks through apalis's in-memory backend, run by one worker with concurrency
/// `workers`.
///
/// `MemoryStorage::new` keeps its channel's sender to itself (behind a `MemorySink`), so a
/// producer could only push before the worker takes the storage. `MemoryStorage::new_with`
/// builds the same storage (an unbounded futures channel, its sender behind a `MemorySink`)
/// from a channel made here, and the producer task sends each task through its own clone of
/// the channel's sender, with a random task ID, as `TaskSink::push` and `MemorySink` make it.
/// It does not push through a clone of the worker's `MemorySink`: in apalis-core 1.0.0 that
/// sink's `poll_ready` polls a new `lock()` future of its futures mutex and drops it while it
/// is pending, which withdraws its waker, so a push and the worker's readiness check meeting
/// on that lock can lose a wake-up. Pushing so, a run hung here with every thread parked.
async fn apalis(jobs: usize, workers: usize) -> f64 {
    let (sender, receiver) = futures::channel::mpsc::unbounded();
    let producer_sender = sender.clone();
    let sender: BoxedSink = Box::new(sender.sink_map_err(MemoryStorageError::from));
    let sink = MemorySink::new(Arc::new(futures::lock::Mutex::new(sender)));
    let storage = MemoryStorage::new_with(sink, receiver.boxed());
    let worker = WorkerBuilder::new("bench")
        .backend(storage)
        .concurrency(workers)
        .build(noop);
    let stop = Arc::new(Notify::new());
    let running = {
        let stop = stop.clone();
        tokio::spawn(worker.run_with_ctx(move |worker| {
            let stop = stop.clone();
            async move {
                stop.notified().await;
                worker.stop()
            }
        }))
    };
    let rate = timed(jobs, async move {
        for _ in 0..jobs {
            let task = TaskBuilder::new(Noop)
                .task_id(TaskId::from_string(RandomId::default()))
                .build();
            producer_sender.unbounded_send(task).expect("push");
        }
    })
    .await;
    stop.notify_one();
    running.await.expect("worker task").expect("worker");
    rate
}

fn main() {
    let mut args = std::env::args().skip(1);
    let jobs: usize = args
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let counts = amboy_bench::worker_counts(args.next(), &[8]);
    eprintln!(
        "{jobs} jobs per run, capacity {CAPACITY} (apalis: unbounded), allocator: {ALLOCATOR}, \
         runtime threads: {}",
        amboy_bench::threads()
    );
    amboy_bench::runtime().block_on(async {
        for workers in counts {
            let mut measured: Vec<(&str, Measured)> = references::measure_all(jobs, workers).await;
            measured.push((
                "apalis",
                measure("apalis", workers, || apalis(jobs, workers)).await,
            ));
            let amboy = measure("limited_size/local_workers", workers, || {
                queue_run(
                    amboy::new_local_limited_size(workers, CAPACITY),
                    jobs,
                    noop_job,
                )
            })
            .await;
            let medians: Vec<(&str, f64)> = measured
                .iter()
                .map(|(name, rate)| (*name, rate.median))
                .collect();
            report("limited_size/local_workers", workers, jobs, amboy, &medians);
            for (name, rate) in &measured {
                report(name, workers, jobs, *rate, &medians);
            }
        }
    });
}

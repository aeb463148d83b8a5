//! In-memory throughput: no-op jobs put, run and completed per second, against a bare-channel
//! baseline measured in the same run.

use std::sync::Arc;
use std::time::Instant;

use amboy::prelude::*;
use amboy::{Base, JobRef};
use amboy_bench::NoopJob;
use tokio::sync::Mutex;

type Task =
    Box<dyn FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send>;

/// The same number of boxed no-op async closures through a bounded tokio mpsc channel, consumed
/// by `workers` tasks sharing the receiver.
async fn baseline(jobs: usize, workers: usize, capacity: usize) -> f64 {
    let (tx, rx) = tokio::sync::mpsc::channel::<Task>(capacity);
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
    for _ in 0..jobs {
        let task: Task = Box::new(|| Box::pin(async {}));
        if tx.send(task).await.is_err() {
            break;
        }
    }
    drop(tx);
    for consumer in consumers {
        consumer.await.expect("consumer");
    }
    jobs as f64 / started.elapsed().as_secs_f64()
}

async fn limited(jobs: usize, workers: usize, capacity: usize) -> f64 {
    let queue = amboy::new_local_limited_size(workers, capacity);
    queue.start().await.expect("start");
    let started = Instant::now();
    for _ in 0..jobs {
        let job: JobRef = Arc::new(NoopJob { base: Base::new() });
        queue.put(job).await.expect("put");
    }
    amboy::wait(&*queue).await.expect("wait");
    let rate = jobs as f64 / started.elapsed().as_secs_f64();
    let stats = queue.stats().await.expect("stats");
    assert_eq!(stats.completed, jobs, "{stats}");
    queue.close().await;
    rate
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let jobs: usize = args
        .get(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        for workers in [2, 8, 64] {
            let capacity = 10_000;
            let base = baseline(jobs, workers, capacity).await;
            let rate = limited(jobs, workers, capacity).await;
            println!(
                "{}",
                serde_json::json!({
                    "bench": "limited_size/local_workers", "jobs": jobs, "workers": workers,
                    "jobs_per_sec": rate.round(), "baseline_jobs_per_sec": base.round(),
                    "ratio": (rate / base * 1000.0).round() / 1000.0,
                })
            );
        }
    });
}

//! The hot path of a local queue on one thread, measured with criterion: a job put, dispatched
//! and completed, with no worker pool in between.

use std::sync::Arc;

use amboy::local::{ByPriority, Fifo, Line, LocalQueue, Shuffled};
use amboy::prelude::*;
use amboy::{Base, JobRef};
use amboy_bench::NoopJob;
use criterion::{Criterion, criterion_group, criterion_main};

/// A started queue whose runner runs nothing: the benchmark drives it.
fn idle_queue<L: Line>(runtime: &tokio::runtime::Runtime) -> Arc<LocalQueue<L>> {
    runtime.block_on(async {
        let queue = LocalQueue::<L>::new(1024);
        queue
            .set_runner(amboy::runner::NoopRunner::new())
            .expect("runner");
        queue.start().await.expect("start");
        queue
    })
}

fn cycle<L: Line>(c: &mut Criterion, name: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let queue = idle_queue::<L>(&runtime);
    c.bench_function(&format!("{name}/put_next_complete"), |b| {
        b.to_async(&runtime).iter(|| async {
            let job: JobRef = Arc::new(NoopJob { base: Base::new() });
            queue.put(job).await.expect("put");
            let job = queue.try_next().expect("a ready job");
            queue.complete(&job).await.expect("complete");
        })
    });
    runtime.block_on(queue.close());
}

fn hot_path(c: &mut Criterion) {
    cycle::<Fifo>(c, "limited_size");
    cycle::<ByPriority>(c, "priority");
    cycle::<Shuffled>(c, "shuffled");
    c.bench_function("job/new", |b| {
        b.iter(|| Arc::new(NoopJob { base: Base::new() }) as JobRef)
    });
}

criterion_group!(benches, hot_path);
criterion_main!(benches);

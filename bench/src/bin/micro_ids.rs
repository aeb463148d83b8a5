//! Scratch: cost of creating jobs.
use amboy::{Base, JobRef};
use amboy_bench::NoopJob;
use std::sync::Arc;
use std::time::Instant;
fn main() {
    let n = 1_000_000;
    let t = Instant::now();
    for _ in 0..n {
        let j: JobRef = Arc::new(NoopJob { base: Base::new() });
        std::hint::black_box(j);
    }
    println!("new job with uuid: {:?}/job", t.elapsed() / n as u32);
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(uuid::Uuid::now_v7());
    }
    println!("uuid v7: {:?}/job", t.elapsed() / n as u32);
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(uuid::Uuid::new_v4());
    }
    println!("uuid v4: {:?}/job", t.elapsed() / n as u32);
    let t = Instant::now();
    for i in 0..n {
        let j: JobRef = Arc::new(NoopJob {
            base: Base::with_id(i.to_string()),
        });
        std::hint::black_box(j);
    }
    println!("new job with counter id: {:?}/job", t.elapsed() / n as u32);
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(chrono::Utc::now());
    }
    println!("Utc::now: {:?}", t.elapsed() / n as u32);
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(std::time::Instant::now());
    }
    println!("Instant::now: {:?}", t.elapsed() / n as u32);
    let j: JobRef = Arc::new(NoopJob { base: Base::new() });
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(j.base().metadata().status.completed);
    }
    println!("metadata lock: {:?}", t.elapsed() / n as u32);
}

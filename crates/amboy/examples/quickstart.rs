//! Puts 100,000 jobs of a custom type into an in-memory limited-size queue served by a pool of
//! local workers, waits for them, and prints the throughput and the final stats.
//!
//! ```sh
//! cargo run --release --example quickstart
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use amboy::prelude::*;
use amboy::{Base, JobContext, JobError, typetag};
use serde::{Deserialize, Serialize};

const JOBS: u64 = 100_000;
const WORKERS: usize = 8;
const CAPACITY: usize = 10_000;

/// The sum of every job's amount, to show that each job ran exactly once.
static TALLY: AtomicU64 = AtomicU64::new(0);

/// A job type: its own fields, the embedded metadata, and a `run`.
#[derive(Serialize, Deserialize)]
struct AddToTally {
    base: Base,
    amount: u64,
}

#[typetag::serde(name = "add-to-tally")]
#[amboy::async_trait]
impl Job for AddToTally {
    fn base(&self) -> &Base {
        &self.base
    }

    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        TALLY.fetch_add(self.amount, Ordering::Relaxed);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> amboy::Result<()> {
    let queue = amboy::new_local_limited_size(WORKERS, CAPACITY);
    queue.start().await?;

    let started = Instant::now();
    for amount in 1..=JOBS {
        let job = AddToTally {
            base: Base::new(),
            amount,
        };
        queue.put(Arc::new(job)).await?;
    }
    amboy::wait(&*queue).await?;
    let elapsed = started.elapsed();

    let stats = queue.stats().await?;
    queue.close().await;

    println!(
        "{JOBS} jobs with {WORKERS} workers in {:.3}s: {:.0} jobs/s",
        elapsed.as_secs_f64(),
        JOBS as f64 / elapsed.as_secs_f64()
    );
    println!("final stats: {stats}");

    let expected = JOBS * (JOBS + 1) / 2;
    assert_eq!(
        TALLY.load(Ordering::Relaxed),
        expected,
        "every job ran exactly once"
    );
    assert!(stats.is_complete(), "the queue is complete");
    assert_eq!(stats.completed as u64, JOBS, "every job completed");
    Ok(())
}

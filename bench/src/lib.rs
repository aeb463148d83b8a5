//! Benchmarks of amboy for Rust. `cargo xtask bench local` runs the in-memory throughput
//! benchmarks in one process and prints one JSON line per case.

use amboy::{Base, Job, JobContext, JobError};
use serde::{Deserialize, Serialize};

/// A job that does nothing, so the benchmark measures the queue and runner.
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
        Ok(())
    }
}

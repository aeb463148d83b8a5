//! The local worker pool.

use std::sync::Arc;

use crate::pool::{Pace, Pool};

/// A fixed pool of workers, each a tokio task that runs one job at a time (amboy's
/// `LocalWorkers`).
///
/// A job that panics is completed with the panic message as its error, and its worker goes on
/// to the next job (amboy left the job in progress until its lock expired).
#[derive(Debug)]
pub struct LocalWorkers {
    pool: Pool,
}

impl LocalWorkers {
    /// A pool of `size` workers (at least 1).
    pub fn new(size: usize) -> Arc<Self> {
        Arc::new(LocalWorkers {
            pool: Pool::new(size, Pace::Free),
        })
    }

    /// The number of workers.
    pub fn size(&self) -> usize {
        self.pool.size()
    }
}

crate::pool::runner_over_pool!(LocalWorkers);

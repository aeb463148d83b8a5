//! The abortable pool.

use std::sync::Arc;

use crate::pool::{Pace, Pool};

/// A fixed pool of workers whose running jobs can be aborted one by one (amboy's
/// `NewAbortablePool`).
///
/// Each running job gets a cancellation token of its own, registered under the job's ID while
/// it runs. [`abort`](amboy_core::AbortableRunner::abort) cancels that token: the job's run stops, and its
/// worker completes it in the queue with amboy's error `job was aborted during execution:
/// context canceled`; `abort` returns once the job is completed. Closing the pool cancels every
/// running job the same way. Otherwise the pool behaves as [`LocalWorkers`](crate::LocalWorkers).
#[derive(Debug)]
pub struct AbortablePool {
    pool: Pool,
}

impl AbortablePool {
    /// A pool of `size` workers (at least 1).
    pub fn new(size: usize) -> Arc<Self> {
        Arc::new(AbortablePool {
            pool: Pool::new(size, Pace::Free).abortable(),
        })
    }

    /// The number of workers.
    pub fn size(&self) -> usize {
        self.pool.size()
    }
}

crate::pool::runner_over_pool!(AbortablePool, abortable);

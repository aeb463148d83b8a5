//! The abortable pool.

use std::sync::Arc;

use amboy_core::{AbortableRunner, Queue, Result, Runner};
use async_trait::async_trait;

use crate::pool::{Pace, Pool};

/// A fixed pool of workers whose running jobs can be aborted one by one (amboy's
/// `NewAbortablePool`).
///
/// Each running job gets a cancellation token of its own, registered under the job's ID while
/// it runs. [`abort`](AbortableRunner::abort) cancels that token: the job's run stops, and its
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

#[async_trait]
impl Runner for AbortablePool {
    fn started(&self) -> bool {
        self.pool.started()
    }

    fn set_queue(&self, queue: Arc<dyn Queue>) -> Result<()> {
        self.pool.set_queue(queue)
    }

    async fn start(&self) -> Result<()> {
        self.pool.start().await
    }

    async fn close(&self) {
        self.pool.close().await
    }

    fn as_abortable(&self) -> Option<&dyn AbortableRunner> {
        Some(self)
    }
}

#[async_trait]
impl AbortableRunner for AbortablePool {
    fn is_running(&self, id: &str) -> bool {
        self.pool.register().is_running(id)
    }

    fn running_jobs(&self) -> Vec<String> {
        self.pool.register().running_jobs()
    }

    async fn abort(&self, id: &str) -> Result<()> {
        self.pool.register().abort(id).await
    }

    async fn abort_all(&self) -> Result<()> {
        self.pool.register().abort_all().await
    }
}

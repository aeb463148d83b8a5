//! The single worker.

use std::sync::Arc;

use amboy_core::{Queue, Result, Runner};
use async_trait::async_trait;

use crate::pool::{Pace, Pool};

/// One worker running one job at a time, in the order the queue hands them out (amboy's
/// `NewSingle`).
///
/// It behaves as a [`LocalWorkers`](crate::LocalWorkers) pool of size 1: a panicking job is
/// completed with the panic as its error and the worker carries on; closing cancels the running
/// job and leaves the runner restartable.
#[derive(Debug)]
pub struct SingleWorker {
    pool: Pool,
}

impl SingleWorker {
    /// A runner with one worker.
    pub fn new() -> Arc<Self> {
        Arc::new(SingleWorker {
            pool: Pool::new(1, Pace::Free),
        })
    }
}

#[async_trait]
impl Runner for SingleWorker {
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
}

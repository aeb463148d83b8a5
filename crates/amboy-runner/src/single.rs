//! The single worker.

use std::sync::Arc;

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

crate::pool::runner_over_pool!(SingleWorker);

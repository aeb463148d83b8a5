//! The pool serving several queues.

use std::sync::Arc;

use amboy_core::{Queue, Result};

use crate::pool::{Pace, Pool};

/// One fixed pool of workers serving several queues fairly (amboy's historical `pool.Group`).
///
/// Give the pool to each queue with [`Queue::set_runner`] (which calls
/// [`set_queue`](amboy_core::Runner::set_queue), here the same as [`add_queue`](Self::add_queue)), then
/// start the queues: the first start starts the pool for all of them, the others find it
/// started. A queue is served once however often it is added.
///
/// **Fairness.** A free worker waits on every queue at once and takes the first job offered, so
/// a queue without jobs never holds up the others. The queues are asked in a rotating order,
/// one queue further on at every job taken, so that queues with jobs waiting are served
/// round-robin: two busy queues get about half of the runs each.
///
/// **Failing queues.** A queue whose `next` fails with a transient error (anything but
/// `Error::Closed`) rests for its backoff, left out of the worker's wait, while the worker goes
/// on serving the other queues; it is asked again when the rest ends. A queue reporting itself
/// closed is skipped from then on.
///
/// **Starting and closing.** The set of queues is fixed while the pool runs: adding a queue to
/// a started pool is an error, as it was in amboy; close the pool, add the queue, and start it
/// again. [`started`](amboy_core::Runner::started) says whether the workers run, for all the queues at
/// once. [`close`](amboy_core::Runner::close) cancels the running jobs of every queue, waits for the
/// workers and leaves the pool restartable. Since a queue closes its runner when it closes,
/// closing one of the queues stops the pool for all of them; start the pool again to go on
/// serving the others (a closed queue is skipped from then on).
///
/// Otherwise the pool behaves as [`LocalWorkers`](crate::LocalWorkers): a panicking job is
/// completed with the panic as its error and its worker carries on.
#[derive(Debug)]
pub struct MultiQueuePool {
    pool: Pool,
}

impl MultiQueuePool {
    /// A pool of `size` workers (at least 1) and no queue yet.
    pub fn new(size: usize) -> Arc<Self> {
        Arc::new(MultiQueuePool {
            pool: Pool::new(size, Pace::Free).serving_many(),
        })
    }

    /// The number of workers.
    pub fn size(&self) -> usize {
        self.pool.size()
    }

    /// Adds a queue to serve; not possible once started. Until it starts, the pool keeps a weak
    /// reference, as for [`set_queue`](amboy_core::Runner::set_queue); adding a queue already
    /// served does nothing.
    pub fn add_queue(&self, queue: Arc<dyn Queue>) -> Result<()> {
        self.pool.set_queue(queue)
    }

    /// The number of queues added (dropped queues are forgotten when the pool starts or a
    /// queue is added).
    pub fn queue_count(&self) -> usize {
        self.pool.queue_count()
    }
}

crate::pool::runner_over_pool!(MultiQueuePool);

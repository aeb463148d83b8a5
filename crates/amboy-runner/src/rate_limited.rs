//! The simple rate-limited pool.

use std::sync::Arc;
use std::time::Duration;

use amboy_core::{Error, Result};

use crate::pool::{Pace, Pool};

/// A fixed pool of workers, each of which waits a fixed interval after every job (amboy's
/// `NewSimpleRateLimitedWorkers`).
///
/// A pool of `size` workers thus starts at most about `size` jobs per `interval` plus the jobs'
/// run time. Closing the pool interrupts the waits. Otherwise the pool behaves as
/// [`LocalWorkers`](crate::LocalWorkers).
#[derive(Debug)]
pub struct RateLimitedWorkers {
    pool: Pool,
    interval: Duration,
}

impl RateLimitedWorkers {
    /// A pool of `size` workers that wait `interval` after every job.
    ///
    /// Fails if `size` is 0 or `interval` is less than a millisecond; the message lists every
    /// problem, as amboy's does.
    pub fn new(size: usize, interval: Duration) -> Result<Arc<Self>> {
        let mut problems = Vec::new();
        if size < 1 {
            problems.push("cannot specify a pool size less than 1");
        }
        if interval < Duration::from_millis(1) {
            problems.push("cannot specify a sleep interval less than a millisecond");
        }
        if !problems.is_empty() {
            return Err(Error::invalid(problems.join("; ")));
        }
        Ok(Arc::new(RateLimitedWorkers {
            pool: Pool::new(size, Pace::After(interval)),
            interval,
        }))
    }

    /// The number of workers.
    pub fn size(&self) -> usize {
        self.pool.size()
    }

    /// How long each worker waits after a job.
    pub fn interval(&self) -> Duration {
        self.interval
    }
}

crate::pool::runner_over_pool!(RateLimitedWorkers);

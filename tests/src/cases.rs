//! The queues and runners under test, and what each supports.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use amboy::local::{
    AdaptiveOrderingQueue, DependencyOrderedQueue, LimitedSizeQueue, LimitedSizeSerializableQueue,
    PriorityQueue, ShuffledQueue,
};
use amboy::retry::BasicRetryHandler;
use amboy::runner::{
    AbortablePool, LocalWorkers, MovingAverageRateLimitedWorkers, MultiQueuePool,
    RateLimitedWorkers, SingleWorker,
};
use amboy::{Queue, Result, RetryHandlerOptions, RetryableQueue, Runner};

/// A queue implementation in the conformance matrix.
#[derive(Debug, Clone, Copy)]
pub struct QueueCase {
    /// The name used in test paths.
    pub name: &'static str,
    /// Builds a queue (no runner, not started) for a runner of `size` workers.
    pub build: fn(size: usize) -> Arc<dyn Queue>,
    /// Whether the queue stores copies of its jobs, guarded by amboy's optimistic lock (only
    /// such a queue can refuse a save, so only it runs the save-locking scenario).
    pub stores_copies: bool,
    /// Whether the queue retries jobs (a `RetryableQueue` with a retry handler).
    pub retryable: bool,
    /// Whether the queue claims jobs for waiting `next` calls in a task of its own (a
    /// database queue): a job claimed for a call dropped meanwhile is held, claimed, for the
    /// next call instead of staying pending.
    pub claims_ahead: bool,
}

/// A runner implementation in the conformance matrix.
#[derive(Debug, Clone, Copy)]
pub struct RunnerCase {
    /// The name used in test paths.
    pub name: &'static str,
    /// Builds a runner of `size` workers.
    pub build: fn(size: usize) -> Arc<dyn Runner>,
    /// How many workers the runner really has.
    pub workers: Workers,
}

/// How many workers a runner case has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    /// As many as asked for.
    Many,
    /// One, whatever was asked for.
    One,
}

/// amboy's `LimitedSize` case: capacity 1024 × size.
pub const LIMITED_SIZE: QueueCase = QueueCase {
    name: "limited_size",
    build: |size| LimitedSizeQueue::new(1024 * size),
    stores_copies: false,
    retryable: false,
    claims_ahead: false,
};

/// amboy's `LimitedSizeSerializable` case: stored copies, retries.
pub const LIMITED_SIZE_SERIALIZABLE: QueueCase = QueueCase {
    name: "limited_size_serializable",
    build: |size| {
        let queue = LimitedSizeSerializableQueue::new(1024 * size);
        let handler =
            BasicRetryHandler::new(RetryHandlerOptions::default()).expect("default options");
        queue
            .set_retry_handler(handler)
            .expect("a new queue takes a handler");
        queue
    },
    stores_copies: true,
    retryable: true,
    claims_ahead: false,
};

/// The priority queue.
pub const PRIORITY: QueueCase = QueueCase {
    name: "priority",
    build: |size| PriorityQueue::new(1024 * size),
    stores_copies: false,
    retryable: false,
    claims_ahead: false,
};

/// The shuffled queue.
pub const SHUFFLED: QueueCase = QueueCase {
    name: "shuffled",
    build: |size| ShuffledQueue::new(1024 * size),
    stores_copies: false,
    retryable: false,
    claims_ahead: false,
};

/// The dependency-ordered queue.
pub const DEPENDENCY_ORDERED: QueueCase = QueueCase {
    name: "dependency_ordered",
    build: |size| DependencyOrderedQueue::new(1024 * size),
    stores_copies: false,
    retryable: false,
    claims_ahead: false,
};

/// The adaptive-ordering queue.
pub const ADAPTIVE_ORDERING: QueueCase = QueueCase {
    name: "adaptive_ordering",
    build: |size| AdaptiveOrderingQueue::new(1024 * size),
    stores_copies: false,
    retryable: false,
    claims_ahead: false,
};

/// The PostgreSQL queue, in a schema of its own on the test server: stored copies, retries.
pub const POSTGRES: QueueCase = QueueCase {
    name: "postgres",
    build: |_| {
        let queue = crate::postgres::queue(crate::postgres::options());
        let handler =
            BasicRetryHandler::new(RetryHandlerOptions::default()).expect("default options");
        queue
            .set_retry_handler(handler)
            .expect("a new queue takes a handler");
        queue
    },
    stores_copies: true,
    retryable: true,
    claims_ahead: true,
};

/// amboy's `Default` runner case.
pub const LOCAL_WORKERS: RunnerCase = RunnerCase {
    name: "local_workers",
    build: |size| LocalWorkers::new(size),
    workers: Workers::Many,
};

/// amboy's `Abortable` runner case.
pub const ABORTABLE: RunnerCase = RunnerCase {
    name: "abortable",
    build: |size| AbortablePool::new(size),
    workers: Workers::Many,
};

/// A single worker, whatever the size.
pub const SINGLE: RunnerCase = RunnerCase {
    name: "single",
    build: |_| SingleWorker::new(),
    workers: Workers::One,
};

/// Workers pausing 1 ms after every job.
pub const RATE_LIMITED: RunnerCase = RunnerCase {
    name: "rate_limited",
    build: |size| RateLimitedWorkers::new(size, Duration::from_millis(1)).expect("valid"),
    workers: Workers::Many,
};

/// amboy's `RateLimitedAverage` case: `size · 100` jobs per 10 ms.
pub const MOVING_AVERAGE: RunnerCase = RunnerCase {
    name: "moving_average",
    build: |size| {
        MovingAverageRateLimitedWorkers::new(size, size * 100, Duration::from_millis(10))
            .expect("valid")
    },
    workers: Workers::Many,
};

/// One pool serving several queues, here serving the queue under test.
pub const MULTI_QUEUE: RunnerCase = RunnerCase {
    name: "multi_queue",
    build: |size| MultiQueuePool::new(size),
    workers: Workers::Many,
};

/// A queue of `queue` served by a runner of `runner` with `size` workers, started.
pub async fn start(queue: QueueCase, runner: RunnerCase, size: usize) -> Result<Arc<dyn Queue>> {
    start_with(queue, runner, size, size).await
}

/// A queue of `queue` sized for `size`, served by a runner of `runner` with `workers` workers,
/// started.
pub async fn start_with(
    queue: QueueCase,
    runner: RunnerCase,
    size: usize,
    workers: usize,
) -> Result<Arc<dyn Queue>> {
    let built = (queue.build)(size);
    built.set_runner((runner.build)(workers))?;
    built.start().await?;
    Ok(built)
}

/// A queue of `queue` whose runner runs nothing, started: tests drive `next` and `complete`.
pub async fn start_idle(queue: QueueCase, size: usize) -> Result<Arc<dyn Queue>> {
    let built = (queue.build)(size);
    built.set_runner(Arc::new(IdleRunner::default()))?;
    built.start().await?;
    Ok(built)
}

/// A runner that starts no workers.
#[derive(Debug, Default)]
pub struct IdleRunner {
    started: AtomicBool,
}

#[async_trait::async_trait]
impl Runner for IdleRunner {
    fn started(&self) -> bool {
        self.started.load(Ordering::SeqCst)
    }

    fn set_queue(&self, _queue: Arc<dyn Queue>) -> Result<()> {
        Ok(())
    }

    async fn start(&self) -> Result<()> {
        self.started.store(true, Ordering::SeqCst);
        Ok(())
    }

    async fn close(&self) {
        self.started.store(false, Ordering::SeqCst);
    }
}

/// A runner that runs nothing and whose `start` holds until the test lets it go: it says it
/// was entered (a permit on `entered`), then waits for a permit on `gate`.
#[derive(Debug)]
pub struct GatedRunner {
    started: AtomicBool,
    /// A permit each time `start` is entered.
    pub entered: tokio::sync::Semaphore,
    /// `start` takes a permit before it ends.
    pub gate: tokio::sync::Semaphore,
}

impl Default for GatedRunner {
    fn default() -> Self {
        GatedRunner {
            started: AtomicBool::new(false),
            entered: tokio::sync::Semaphore::new(0),
            gate: tokio::sync::Semaphore::new(0),
        }
    }
}

#[async_trait::async_trait]
impl Runner for GatedRunner {
    fn started(&self) -> bool {
        self.started.load(Ordering::SeqCst)
    }

    fn set_queue(&self, _queue: Arc<dyn Queue>) -> Result<()> {
        Ok(())
    }

    async fn start(&self) -> Result<()> {
        self.entered.add_permits(1);
        self.gate
            .acquire()
            .await
            .expect("the gate stays open")
            .forget();
        self.started.store(true, Ordering::SeqCst);
        Ok(())
    }

    async fn close(&self) {
        self.started.store(false, Ordering::SeqCst);
    }
}

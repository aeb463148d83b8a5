//! Runners execute a queue's jobs; retry handlers enqueue the next attempts of retried jobs.

use std::sync::Arc;

use async_trait::async_trait;

use crate::{JobRef, Queue, Result, RetryableQueue};

/// Executes a queue's jobs (amboy's `Runner`): a pool of workers calling
/// [`Queue::next`], running the job and calling [`Queue::complete`].
#[async_trait]
pub trait Runner: Send + Sync + 'static {
    /// Whether the runner is started.
    fn started(&self) -> bool;

    /// Sets the queue to serve; not possible once started. The runner keeps a weak reference:
    /// the queue owns the runner, not the other way round.
    fn set_queue(&self, queue: Arc<dyn Queue>) -> Result<()>;

    /// Starts the workers; starting a started runner does nothing. Fails without a queue.
    async fn start(&self) -> Result<()>;

    /// Cancels running jobs, waits for the workers to stop, and leaves the runner restartable.
    async fn close(&self);

    /// This runner as an [`AbortableRunner`], if it is one.
    fn as_abortable(&self) -> Option<&dyn AbortableRunner> {
        None
    }
}

/// A runner that can abort running jobs by ID (amboy's `AbortableRunner`).
#[async_trait]
pub trait AbortableRunner: Runner {
    /// Whether the job is running in this runner.
    fn is_running(&self, id: &str) -> bool;

    /// The IDs of the running jobs.
    fn running_jobs(&self) -> Vec<String>;

    /// Aborts a running job: cancels it and completes it in the queue. Unknown IDs are an error.
    async fn abort(&self, id: &str) -> Result<()>;

    /// Aborts every running job.
    async fn abort_all(&self) -> Result<()>;
}

/// Enqueues the next attempt of jobs that asked to retry (amboy's `RetryHandler`).
#[async_trait]
pub trait RetryHandler: Send + Sync + 'static {
    /// Sets the queue whose jobs are retried; not possible once started.
    fn set_queue(&self, queue: Arc<dyn RetryableQueue>) -> Result<()>;

    /// Starts the handler's workers; starting twice does nothing.
    async fn start(&self) -> Result<()>;

    /// Whether the handler is started.
    fn started(&self) -> bool;

    /// Hands over a completed job that asked to retry.
    async fn put(&self, job: JobRef) -> Result<()>;

    /// Aborts retries in progress and waits for the workers; the handler can start again.
    async fn close(&self);
}

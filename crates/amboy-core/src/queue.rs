//! The [`Queue`] family of traits: queues, retryable queues, queue groups and their options.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::{JobInfo, JobRef, QueueInfo, QueueStats, Result, RetryHandler, Runner};

/// A stream of jobs, as [`Queue::results`] returns.
pub type JobStream = BoxStream<'static, Result<JobRef>>;

/// A stream of job infos, as [`Queue::job_info`] returns.
pub type JobInfoStream = BoxStream<'static, Result<JobInfo>>;

/// Stores jobs and hands them out to a runner (amboy's `Queue`).
///
/// A queue runs nothing itself: [`start`](Queue::start) starts its [`Runner`], whose workers call
/// [`next`](Queue::next), run the job and call [`complete`](Queue::complete), until `next` fails
/// with [`Error::Closed`](crate::Error::Closed); on any other error they back off and ask again.
/// Cancellation is Rust's: drop a future (or wrap it in `tokio::time::timeout`) to stop waiting;
/// queues keep their state consistent when a call is dropped part-way.
#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// The queue's unique ID; it is also the owner of the locks the queue takes.
    fn id(&self) -> &str;

    /// Adds a job. Fails with a duplicate-job error if the ID is taken, with a duplicate-scope
    /// error if an enqueue scope is held.
    async fn put(&self, job: JobRef) -> Result<()>;

    /// Adds jobs; the failures are collated so that the result is a duplicate only if every
    /// failure was one. The jobs that can be added are.
    async fn put_many(&self, jobs: Vec<JobRef>) -> Result<()>;

    /// The job with this ID (the latest attempt, for retryable jobs), or a job-not-found
    /// error.
    async fn get(&self, id: &str) -> Result<JobRef>;

    /// Waits for the next job ready to run and dispatches it: the job is locked by this queue
    /// and marked in progress. Fails with [`Error::Closed`](crate::Error::Closed) once the queue
    /// is closed; only that error ([`Error::is_closed`](crate::Error::is_closed)) means no job
    /// will ever come. Any other error is transient (the store is unreachable, say): callers
    /// back off and call again.
    ///
    /// Cancel-safe: dropping the future before it completes never leaves a job dispatched and
    /// unreturned (a job is dispatched only in the poll that returns it, or given back before
    /// that poll ends). Runners rely on it: the multi-queue pool waits on several queues' `next`
    /// at once and drops all but the first to offer a job.
    async fn next(&self) -> Result<JobRef>;

    /// Dispatches the next job if one is ready now, without waiting: the non-blocking
    /// counterpart of [`next`](Queue::next). Runners call it first, to skip the cost of an
    /// asynchronous call while jobs are queued. Queues that cannot tell without waiting keep
    /// the default, `None`; the PostgreSQL queue answers from the jobs it claimed ahead.
    fn try_next(&self) -> Option<JobRef> {
        None
    }

    /// Completes a dispatched job if the queue can do so without waiting (in memory): `Some`
    /// with what [`complete`](Queue::complete) would return. `None`, the default, means the
    /// caller must call `complete`.
    fn try_complete(&self, job: &JobRef) -> Option<Result<()>> {
        let _ = job;
        None
    }

    /// The queue's state and lock timeout.
    fn info(&self) -> QueueInfo;

    /// Marks a dispatched job finished, releasing its scopes.
    async fn complete(&self, job: &JobRef) -> Result<()>;

    /// Stores the job's current state. Fails if the job is not in the queue or this queue no
    /// longer owns it.
    async fn save(&self, job: &JobRef) -> Result<()>;

    /// The completed jobs the queue retains (for retryable jobs, those not retrying).
    async fn results(&self) -> JobStream;

    /// The info of every job in the queue.
    async fn job_info(&self) -> JobInfoStream;

    /// Counts of the queue's jobs.
    async fn stats(&self) -> Result<QueueStats>;

    /// The runner executing the queue's jobs.
    fn runner(&self) -> Option<Arc<dyn Runner>>;

    /// Sets the runner (and gives it this queue); not possible once the queue started.
    fn set_runner(&self, runner: Arc<dyn Runner>) -> Result<()>;

    /// Starts the queue and its runner. Starting twice is an error.
    async fn start(&self) -> Result<()>;

    /// Stops the runner at once (running jobs are cancelled) and releases the queue's
    /// resources.
    async fn close(&self);

    /// Stops gracefully: the runner takes no new job and lets the running ones finish for up to
    /// `grace` ([`Runner::shutdown`]), cancels those still running, then the queue closes.
    /// Pending jobs do not run; they stay pending (a queue that stores its jobs keeps them for
    /// the next process).
    async fn shutdown(&self, grace: Duration) {
        if let Some(runner) = self.runner() {
            runner.shutdown(grace).await;
        }
        self.close().await;
    }

    /// This queue as a [`RetryableQueue`], if it is one (amboy's `WithRetryableQueue`).
    fn as_retryable(&self) -> Option<&dyn RetryableQueue> {
        None
    }
}

/// A queue that retries jobs which ask for it (amboy's `RetryableQueue`).
///
/// Every attempt is stored: [`get`](Queue::get) returns the latest, [`results`](Queue::results)
/// only jobs that finished retrying.
#[async_trait]
pub trait RetryableQueue: Queue {
    /// The handler enqueueing retried jobs' next attempts.
    fn retry_handler(&self) -> Option<Arc<dyn RetryHandler>>;

    /// Sets the retry handler; not possible once the current one started.
    fn set_retry_handler(&self, handler: Arc<dyn RetryHandler>) -> Result<()>;

    /// One attempt of a retryable job, or a job-not-found error.
    async fn get_attempt(&self, id: &str, attempt: u32) -> Result<JobRef>;

    /// Every attempt of a retryable job, in ascending order, or a job-not-found error.
    async fn get_all_attempts(&self, id: &str) -> Result<Vec<JobRef>>;

    /// In one atomic step, marks `to_complete` as finished retrying and adds `to_put`,
    /// handing `to_complete`'s scopes to `to_put`.
    async fn complete_retrying_and_put(&self, to_complete: &JobRef, to_put: JobRef) -> Result<()>;

    /// Marks a retrying job as finished retrying: it will not run again.
    async fn complete_retrying(&self, job: &JobRef) -> Result<()>;
}

/// Options that build one queue of a [`QueueGroup`].
#[async_trait]
pub trait QueueOptions: Send + Sync + 'static {
    /// Builds a queue (not started).
    async fn build_queue(&self) -> Result<Arc<dyn Queue>>;

    /// Checks the options.
    fn validate(&self) -> Result<()>;

    /// The options as [`Any`], for groups that merge their own option type.
    fn as_any(&self) -> &dyn Any;
}

/// Named queues created on demand (amboy's `QueueGroup`).
#[async_trait]
pub trait QueueGroup: Send + Sync + 'static {
    /// The queue named `id`, created and started with the group's defaults merged with `options`
    /// if it does not exist (options are ignored for an existing queue).
    async fn get(&self, id: &str, options: &[Arc<dyn QueueOptions>]) -> Result<Arc<dyn Queue>>;

    /// Adds a queue under `id`; an existing `id` is an error.
    async fn put(&self, id: &str, queue: Arc<dyn Queue>) -> Result<()>;

    /// Closes and removes queues that are idle past their time to live.
    async fn prune(&self) -> Result<()>;

    /// Closes every queue.
    async fn close(&self) -> Result<()>;

    /// The number of queues.
    fn len(&self) -> usize;

    /// Whether the group has no queues.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The names of the queues.
    async fn queues(&self) -> Vec<String>;

    /// The queues this process holds now (built and not pruned), by name, without building,
    /// starting or refreshing any: what watching a group's running jobs looks at, so that
    /// watching changes nothing.
    fn local_queues(&self) -> Vec<(String, Arc<dyn Queue>)>;
}

impl std::fmt::Debug for dyn Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("id", &self.id())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for dyn RetryableQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryableQueue")
            .field("id", &self.id())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for dyn QueueGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueGroup")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for dyn QueueOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueOptions").finish_non_exhaustive()
    }
}

/// Calls `op` with `queue` as a [`RetryableQueue`] if it is one; returns whether it was.
pub fn with_retryable_queue(queue: &dyn Queue, op: impl FnOnce(&dyn RetryableQueue)) -> bool {
    match queue.as_retryable() {
        Some(retryable) => {
            op(retryable);
            true
        }
        None => false,
    }
}

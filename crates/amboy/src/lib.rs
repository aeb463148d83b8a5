//! The facade of amboy for Rust: the crate applications depend on, re-exporting the vocabulary
//! of `amboy-core` and mounting each implementation crate behind a feature.
//!
#![doc = include_str!("../../../README.md")]
//!
//! # Crate layout
//!
//! The vocabulary of `amboy-core` is at the root: [`Job`], [`Base`], [`Queue`], [`Runner`],
//! the info types, [`Error`] and the helpers. Each implementation crate is a module behind a
//! feature of the same name:
//!
//! | module | feature | crate | holds |
//! |---|---|---|---|
//! | [`dependency`] | always | `amboy-dependency` | dependency states and managers |
//! | `local` | `queue-local` (default) | `amboy-queue-local` | in-memory queues, scope manager |
//! | `runner` | `runner` (default) | `amboy-runner` | worker pools |
//! | `registry` | `registry` (default) | `amboy-registry` | job type registry, interchange envelope |
//! | `retry` | `retry` | `amboy-retry` | the retry handler |
//! | `postgres` | `postgres` | `amboy-queue-postgres` | the distributed queue on PostgreSQL |
//! | `management` | `management` | `amboy-management` | counts, IDs, completing, listing and re-enqueueing jobs |
//! | `jobs` | `jobs` | `amboy-jobs` | the built-in jobs: `shell` (a command) and `group` (jobs run as one) |
//! | [`metrics`] | always; records with feature `metrics` | `amboy-core` | job metrics through the `metrics` facade; `GET /metrics` on the REST service |
//! | `logger` | `logger` | `amboy-logger` | the queue-backed log sender as a `tracing` layer |
//! | `rest` | `rest` | `amboy-rest` | the REST service (axum) and its clients (reqwest) |
//!
//! `full` enables every feature but `metrics` (recording costs each job about 800
//! instructions; enable it by itself).
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use amboy_core::metrics;
pub use amboy_core::{
    AbortableRunner, Base, DEFAULT_MAX_ATTEMPTS, Error, Job, JobContext, JobError, JobFailure,
    JobInfo, JobInfoStream, JobOutcome, JobRef, JobRetryInfo, JobRetryOptions, JobStatusInfo,
    JobStream, JobTimeInfo, JobType, LOCK_TIMEOUT, Metadata, Queue, QueueGroup, QueueInfo,
    QueueOptions, QueueReport, QueueStats, Result, RetryHandler, RetryHandlerOptions,
    RetryableQueue, RunOutcome, Runner, WriteErrors, collate_write_errors, dependency,
    enqueue_many_unique, enqueue_unique, execute, execute_job, populate_queue, report,
    resolve_errors, run_job, wait, wait_interval, wait_interval_num, wait_job, wait_job_interval,
    with_retryable_queue,
};
pub use amboy_core::{
    GroupQueueCheck, GroupQueueOperation, PeriodicHandle, QueueOperation, QueueOperationConfig,
    group_queue_operations, interval_group_queue_operation, interval_queue_operation,
    next_aligned_start, schedule_job, schedule_jobs_from_generator, schedule_many_jobs,
};

/// The attribute that makes a trait's methods async for trait objects; implementations of
/// [`Job`] carry it.
pub use async_trait::async_trait;

/// Dates and times, as jobs' timing uses them (`with_wait_until`, `with_dispatch_by`,
/// [`JobTimeInfo`]): the `chrono` crate, so that applications need not depend on it themselves.
pub use chrono;

/// Streams and futures, as [`Queue::results`] and [`Queue::job_info`] return them: the
/// `futures` crate. `use amboy::prelude::*;` brings the stream adapters (`StreamExt`,
/// `TryStreamExt`) into scope.
pub use futures;

/// The registration attribute of job types: `#[typetag::serde(name = "...")]` on `impl Job`.
/// Bring it into scope with `use amboy::typetag;` (its expansion names `typetag`).
pub use typetag;

#[cfg(feature = "queue-local")]
#[cfg_attr(docsrs, doc(cfg(feature = "queue-local")))]
pub use amboy_queue_local as local;

#[cfg(feature = "runner")]
#[cfg_attr(docsrs, doc(cfg(feature = "runner")))]
pub use amboy_runner as runner;

#[cfg(feature = "registry")]
#[cfg_attr(docsrs, doc(cfg(feature = "registry")))]
pub use amboy_registry as registry;

#[cfg(feature = "retry")]
#[cfg_attr(docsrs, doc(cfg(feature = "retry")))]
pub use amboy_retry as retry;

#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use amboy_queue_postgres as postgres;

/// Management: what operators do to a running queue.
///
/// ```
/// use amboy::management::{Manager, QueueManager, StatusFilter};
/// use amboy::prelude::*;
/// use amboy::{Base, JobContext, JobError};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Report {
///     base: Base,
/// }
///
/// #[amboy::typetag::serde(name = "doc-report")]
/// #[amboy::async_trait]
/// impl Job for Report {
///     fn base(&self) -> &Base {
///         &self.base
///     }
///
///     async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> amboy::Result<()> {
/// let queue = amboy::new_local_limited_size(2, 16);
/// queue.start().await?;
/// // Three reports due in an hour: they wait.
/// let due = amboy::chrono::Utc::now() + amboy::chrono::TimeDelta::hours(1);
/// for n in 0..3 {
///     let base = Base::with_id(format!("report-{n}")).with_wait_until(due);
///     queue.put(std::sync::Arc::new(Report { base })).await?;
/// }
/// let manager = QueueManager::new(queue.clone());
/// let pending = manager.job_status(StatusFilter::Pending).await?;
/// assert_eq!((pending[0].job_type.as_str(), pending[0].count), ("doc-report", 3));
///
/// // Take one out of line: it will not run.
/// manager.complete_job("report-1").await?;
/// assert_eq!(manager.job_status(StatusFilter::Pending).await?[0].count, 2);
/// assert!(queue.get("report-1").await?.base().status().completed);
/// queue.close().await;
/// # Ok(()) }
/// ```
#[cfg(feature = "management")]
#[cfg_attr(docsrs, doc(cfg(feature = "management")))]
pub use amboy_management as management;

/// The built-in jobs: [`ShellJob`](amboy_jobs::ShellJob) (`shell`) and
/// [`GroupJob`](amboy_jobs::GroupJob) (`group`).
#[cfg(feature = "jobs")]
#[cfg_attr(docsrs, doc(cfg(feature = "jobs")))]
pub use amboy_jobs as jobs;

/// amboy's queue-backed log sender as a `tracing` layer: [`QueueLayer`](amboy_logger::QueueLayer)
/// turns events into jobs of an in-memory queue that deliver them to a
/// [`Sink`](amboy_logger::Sink).
#[cfg(feature = "logger")]
#[cfg_attr(docsrs, doc(cfg(feature = "logger")))]
pub use amboy_logger as logger;

#[cfg(feature = "rest")]
#[cfg_attr(docsrs, doc(cfg(feature = "rest")))]
pub use amboy_rest as rest;

/// An in-memory queue of kind `L` holding up to `capacity` pending jobs, served by a pool of
/// `workers` local workers, ready to [`start`](Queue::start).
///
/// ```
/// use amboy::local::{ByPriority, PriorityQueue};
/// use amboy::prelude::*;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> amboy::Result<()> {
/// let queue: std::sync::Arc<PriorityQueue> = amboy::new_local_queue::<ByPriority>(4, 1024);
/// queue.start().await?;
/// assert!(queue.id().starts_with("queue.local.priority."));
/// queue.close().await;
/// # Ok(()) }
/// ```
#[cfg(all(feature = "queue-local", feature = "runner"))]
#[cfg_attr(docsrs, doc(cfg(all(feature = "queue-local", feature = "runner"))))]
pub fn new_local_queue<L: local::Line>(
    workers: usize,
    capacity: usize,
) -> std::sync::Arc<local::LocalQueue<L>> {
    let queue = local::LocalQueue::<L>::new(capacity);
    queue
        .set_runner(runner::LocalWorkers::new(workers))
        .expect("a new queue accepts a runner");
    queue
}

/// A limited-size queue served by a pool of `workers` local workers, ready to
/// [`start`](Queue::start) (amboy's `NewLocalLimitedSize`).
///
/// ```
/// use amboy::prelude::*;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> amboy::Result<()> {
/// let queue = amboy::new_local_limited_size(4, 1024);
/// queue.start().await?;
/// assert!(queue.info().started);
/// queue.close().await;
/// # Ok(()) }
/// ```
#[cfg(all(feature = "queue-local", feature = "runner"))]
#[cfg_attr(docsrs, doc(cfg(all(feature = "queue-local", feature = "runner"))))]
pub fn new_local_limited_size(
    workers: usize,
    capacity: usize,
) -> std::sync::Arc<local::LimitedSizeQueue> {
    new_local_queue(workers, capacity)
}

/// A retryable queue storing copies of its jobs, served by a pool of `workers` local workers and
/// a retry handler with amboy's defaults, ready to [`start`](Queue::start) (amboy's
/// `NewLocalLimitedSizeSerializable`).
///
/// ```
/// use amboy::prelude::*;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> amboy::Result<()> {
/// let queue = amboy::new_local_limited_size_serializable(4, 1024);
/// queue.start().await?;
/// assert!(queue.retry_handler().is_some_and(|handler| handler.started()));
/// queue.close().await;
/// # Ok(()) }
/// ```
#[cfg(all(feature = "queue-local", feature = "runner", feature = "retry"))]
#[cfg_attr(
    docsrs,
    doc(cfg(all(feature = "queue-local", feature = "runner", feature = "retry")))
)]
pub fn new_local_limited_size_serializable(
    workers: usize,
    capacity: usize,
) -> std::sync::Arc<local::LimitedSizeSerializableQueue> {
    let queue = local::LimitedSizeSerializableQueue::new(capacity);
    queue
        .set_runner(runner::LocalWorkers::new(workers))
        .expect("a new queue accepts a runner");
    let handler = retry::BasicRetryHandler::new(RetryHandlerOptions::default())
        .expect("default options are valid");
    queue
        .set_retry_handler(handler)
        .expect("a new queue accepts a retry handler");
    queue
}

/// The distributed queue on PostgreSQL, served by a pool of `workers` local workers and a retry
/// handler with amboy's defaults, ready to [`start`](Queue::start) (amboy's `NewMongoDBQueue`
/// with `NumWorkers`). Run the same code in as many processes as you like: they share the
/// queue's jobs. Nothing connects before the first operation; that one creates or upgrades the
/// schema.
///
/// ```no_run
/// use amboy::prelude::*;
/// use amboy::postgres::PostgresQueueOptions;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> amboy::Result<()> {
/// let options = PostgresQueueOptions::with_url("postgres://postgres@127.0.0.1/postgres");
/// let queue = amboy::new_postgres_queue(8, options)?;
/// queue.start().await?;
/// queue.shutdown(std::time::Duration::from_secs(30)).await;
/// # Ok(()) }
/// ```
#[cfg(all(feature = "postgres", feature = "runner", feature = "retry"))]
#[cfg_attr(
    docsrs,
    doc(cfg(all(feature = "postgres", feature = "runner", feature = "retry")))
)]
pub fn new_postgres_queue(
    workers: usize,
    options: postgres::PostgresQueueOptions,
) -> Result<std::sync::Arc<postgres::PostgresQueue>> {
    let queue = postgres::PostgresQueue::new(options)?;
    queue.set_runner(runner::LocalWorkers::new(workers))?;
    queue.set_retry_handler(retry::BasicRetryHandler::new(
        RetryHandlerOptions::default(),
    )?)?;
    Ok(queue)
}

/// Options for a [`PostgresQueueGroup`](postgres::PostgresQueueGroup) on the database of
/// `queue`: each queue of the group is served by `workers` local workers and has a retry handler
/// with amboy's defaults. Adjust the returned options (regular expressions, per-queue settings,
/// time to live) before building the group.
///
/// ```no_run
/// use amboy::prelude::*;
/// use amboy::postgres::{PostgresQueueGroup, PostgresQueueOptions};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> amboy::Result<()> {
/// let queue = PostgresQueueOptions::with_url("postgres://postgres@127.0.0.1/postgres");
/// let group = PostgresQueueGroup::new(amboy::postgres_group_options(queue, 4)).await?;
/// let tenant = group.get("tenant-a", &[]).await?; // started, in the shared tables
/// # let _ = tenant;
/// group.close().await?;
/// # Ok(()) }
/// ```
#[cfg(all(feature = "postgres", feature = "runner", feature = "retry"))]
#[cfg_attr(
    docsrs,
    doc(cfg(all(feature = "postgres", feature = "runner", feature = "retry")))
)]
pub fn postgres_group_options(
    queue: postgres::PostgresQueueOptions,
    workers: usize,
) -> postgres::PostgresQueueGroupOptions {
    let mut options = postgres::PostgresQueueGroupOptions::new(
        queue,
        workers,
        std::sync::Arc::new(|workers| {
            runner::LocalWorkers::new(workers) as std::sync::Arc<dyn Runner>
        }),
    );
    options.retry_handler = Some(std::sync::Arc::new(|| {
        retry::BasicRetryHandler::new(RetryHandlerOptions::default())
            .map(|handler| handler as std::sync::Arc<dyn RetryHandler>)
    }));
    options
}

/// The traits, for `use amboy::prelude::*;`: amboy's, and the stream adapters that read
/// [`Queue::results`] and [`Queue::job_info`] (imported anonymously, so they clash with nothing).
///
/// ```
/// use amboy::prelude::*;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> amboy::Result<()> {
/// let queue = amboy::new_local_limited_size(2, 16);
/// queue.start().await?;
/// let finished: Vec<amboy::JobRef> = queue.results().await.try_collect().await?;
/// assert!(finished.is_empty());
/// queue.close().await;
/// # Ok(()) }
/// ```
pub mod prelude {
    pub use amboy_core::{
        AbortableRunner, Job, Queue, QueueGroup, QueueOptions, RetryHandler, RetryableQueue, Runner,
    };
    pub use futures::{StreamExt as _, TryStreamExt as _};
}

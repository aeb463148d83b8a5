//! The contracts of amboy: the [`Job`] trait and the [`Base`] metadata every job embeds; the
//! [`Queue`], [`RetryableQueue`], [`Runner`], [`AbortableRunner`], [`RetryHandler`],
//! [`QueueGroup`] and [`QueueOptions`] traits; the info types ([`JobType`], [`JobStatusInfo`],
//! [`JobTimeInfo`], [`JobRetryInfo`], [`JobInfo`], [`QueueInfo`], [`QueueStats`],
//! [`RetryHandlerOptions`]); the shared [`Error`] kinds; and the helpers that work over any queue
//! (enqueue-unique, [`report`], [`run_job`], the [`wait`] family, periodic queue operations such
//! as [`interval_queue_operation`]); and the [`Dispatcher`], which locks the jobs a storing queue
//! dispatches and keeps their locks alive in batches through a [`LockStore`].
//!
//! Every other amboy crate depends on this one, and it depends on none of them except
//! `amboy-dependency` (a job carries a dependency manager). It holds no storage and no worker
//! pool: those are in `amboy-queue-local`, `amboy-queue-postgres` and `amboy-runner`.
//!
//! Invariants: the traits are object-safe and used as `Arc<dyn …>`; every public type is
//! `Send + Sync`; a job's metadata changes only under its [`Base`]'s lock, following amboy's
//! lock rules (owner, modification count, lock timeout).
//!
//! Most users want the `amboy` crate, which re-exports this one.

mod base;
pub mod clock;
mod delegate;
mod dispatcher;
mod error;
mod group_cache;
mod id;
mod info;
mod job;
mod lifecycle;
mod meta;
pub mod metrics;
mod periodic;
mod queue;
mod runner;
mod serde_util;
mod stats;
mod wait;

pub use amboy_dependency as dependency;
pub use base::{Base, Metadata};
pub use dispatcher::{Dispatcher, LockStore, save_each};
pub use error::{Error, JobFailure, Result, WriteErrors, collate_write_errors};
pub use group_cache::{CleanupHook, GroupCache};
pub use id::JobId;
pub use info::{
    DEFAULT_MAX_ATTEMPTS, JobInfo, JobRetryInfo, JobRetryOptions, JobStatusInfo, JobTimeInfo,
    JobType, LOCK_TIMEOUT, LockState, QueueInfo, prepare_attempt,
};
pub use job::{
    Job, JobContext, JobError, JobRef, RunOutcome, execute, max_time_deadline, panic_message,
    run_job,
};
pub use lifecycle::Lifecycle;
pub use meta::{
    QueueReport, enqueue_many_unique, enqueue_unique, populate_queue, report, resolve_errors,
};
pub use periodic::{
    GroupQueueCheck, GroupQueueOperation, PeriodicHandle, QueueOperation, QueueOperationConfig,
    group_queue_operations, interval_group_queue_operation, interval_queue_operation,
    next_aligned_start, schedule_job, schedule_jobs_from_generator, schedule_many_jobs,
};
pub use queue::{
    JobInfoStream, JobStream, Queue, QueueGroup, QueueOptions, RetryableQueue, with_retryable_queue,
};
pub use runner::{
    AbortableRunner, Executed, RetryHandler, Runner, execute_job, execute_job_behind,
};
pub use stats::{QueueStats, RetryHandlerOptions};
pub use wait::{JobOutcome, wait, wait_interval, wait_interval_num, wait_job, wait_job_interval};

/// What the crate's macros use; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use async_trait::async_trait;
}

/// Compile-time checks that the traits are object-safe and the public types `Send + Sync`.
#[allow(dead_code)]
fn _assertions() {
    fn send_sync<T: ?Sized + Send + Sync>() {}
    send_sync::<dyn Job>();
    send_sync::<dyn Queue>();
    send_sync::<dyn RetryableQueue>();
    send_sync::<dyn Runner>();
    send_sync::<dyn AbortableRunner>();
    send_sync::<dyn RetryHandler>();
    send_sync::<dyn QueueGroup>();
    send_sync::<dyn QueueOptions>();
    send_sync::<Base>();
    send_sync::<Error>();
    send_sync::<JobContext>();
    send_sync::<JobError>();
    send_sync::<JobInfo>();
    send_sync::<QueueStats>();
}

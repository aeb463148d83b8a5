//! The [`Manager`] trait.

use std::fmt::Debug;

use amboy_core::{JobInfo, Result};
use async_trait::async_trait;

use crate::{GroupedId, JobDetail, JobPage, JobQuery, JobTypeCount, StatusFilter};

/// What operators do to a running system (amboy's `management.Manager`, with listing,
/// inspection and re-enqueueing added).
///
/// "Complete" means what amboy means: the job is marked completed, ends any retrying phase (it
/// will not run again), is no longer in progress, and any owner's lock on it is invalidated, so
/// that the worker that was running it can no longer write it. Completing a pending job takes
/// it out of line. Completing a running job releases its scopes at once but does not stop the
/// run: it goes on until its queue notices the lost lock (queues that store copies: at the
/// next heartbeat) or it ends; abort it through its pool when that matters.
///
/// Implementations: [`QueueManager`](crate::QueueManager) over any queue, and
/// `amboy_queue_postgres::PostgresManager`, which answers with SQL on the queue's tables.
#[async_trait]
pub trait Manager: Send + Sync + Debug {
    /// How many jobs of each type (and group) pass `filter`, by group then type (amboy's
    /// `JobStatus`).
    async fn job_status(&self, filter: StatusFilter) -> Result<Vec<JobTypeCount>>;

    /// The IDs of the jobs of `job_type` passing `filter`, each once however many of its
    /// attempts pass, by group then ID (amboy's `JobIDsByState`).
    async fn job_ids_by_state(
        &self,
        job_type: &str,
        filter: StatusFilter,
    ) -> Result<Vec<GroupedId>>;

    /// Completes the job `id` (its latest attempt, and any earlier one still unfinished). A
    /// job that is already finished stays as it is; an unknown ID is a job-not-found error.
    async fn complete_job(&self, id: &str) -> Result<()>;

    /// Completes every unfinished job passing `filter`; returns how many were completed.
    async fn complete_jobs(&self, filter: StatusFilter) -> Result<u64>;

    /// Completes every unfinished job of `job_type` passing `filter`; returns how many.
    async fn complete_jobs_by_type(&self, filter: StatusFilter, job_type: &str) -> Result<u64>;

    /// Completes every unfinished job passing `filter` whose ID matches the regular
    /// expression `pattern` (anywhere in the ID, unless anchored); returns how many. An
    /// invalid pattern is an invalid-input error.
    async fn complete_jobs_by_pattern(&self, filter: StatusFilter, pattern: &str) -> Result<u64>;

    /// A page of jobs (each attempt on its own) passing the query, by group, ID and attempt.
    async fn list_jobs(&self, query: &JobQuery) -> Result<JobPage>;

    /// Everything stored about the job `id`: every attempt and the latest in full. An unknown
    /// ID is a job-not-found error.
    async fn job(&self, id: &str) -> Result<JobDetail>;

    /// Enqueues the job `id` again, if it failed (completed with errors, and not retrying) or
    /// expired: its next attempt is put, pending, with a fresh status and times (as the retry
    /// handler makes them; a `dispatch_by` deadline that passed is dropped), and the job
    /// becomes retryable with room for that attempt. Returns the new attempt's info.
    /// A job that is not finished, or completed without errors, is an invalid-job error; a
    /// queue that does not retry cannot hold a second attempt, and refuses.
    async fn requeue_job(&self, id: &str) -> Result<JobInfo>;
}

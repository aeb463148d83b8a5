//! Helpers over any queue: enqueue-unique, gathering errors, populating, reporting.

use futures::{Stream, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use crate::{Error, JobFailure, JobRef, Queue, Result, collate_write_errors};

/// Puts a job, treating a duplicate (ID or scope) as success (amboy's `EnqueueUniqueJob`).
pub async fn enqueue_unique(queue: &dyn Queue, job: JobRef) -> Result<()> {
    match queue.put(job).await {
        Err(error) if error.is_duplicate_job() => Ok(()),
        other => other,
    }
}

/// Puts jobs, treating a batch whose every failure is a duplicate as success
/// (amboy's `EnqueueManyUniqueJobs`).
pub async fn enqueue_many_unique(queue: &dyn Queue, jobs: Vec<JobRef>) -> Result<()> {
    match queue.put_many(jobs).await {
        Err(error) if error.is_duplicate_job() => Ok(()),
        other => other,
    }
}

/// Gathers the errors of the queue's completed jobs into one error (amboy's `ResolveErrors`).
pub async fn resolve_errors(queue: &dyn Queue) -> Result<()> {
    let mut failures = Vec::new();
    let mut results = queue.results().await;
    while let Some(job) = results.try_next().await? {
        if let Some(error) = job.error() {
            failures.push(JobFailure {
                id: job.id().to_owned(),
                message: error.message().to_owned(),
            });
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Error::JobsFailed(failures))
    }
}

/// Puts every job the stream yields, until it ends; the failures are collated
/// (amboy's `PopulateQueue`).
pub async fn populate_queue(queue: &dyn Queue, jobs: impl Stream<Item = JobRef>) -> Result<()> {
    let mut jobs = std::pin::pin!(jobs);
    let mut errors = Vec::new();
    while let Some(job) = jobs.next().await {
        if let Err(error) = queue.put(job).await {
            errors.push(error);
        }
    }
    collate_write_errors(errors)
}

/// The IDs of a queue's jobs by state (amboy's `QueueReport`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueReport {
    /// Jobs waiting to run.
    pub pending: Vec<String>,
    /// Jobs running.
    pub in_progress: Vec<String>,
    /// Jobs finished.
    pub completed: Vec<String>,
    /// Jobs finished and waiting for another attempt.
    pub retrying: Vec<String>,
    /// Jobs set aside because their `dispatch_by` passed before they could run.
    #[serde(default)]
    pub expired: Vec<String>,
}

/// Sorts the queue's jobs by state; `limit` caps how many are looked at (`None`: all).
pub async fn report(queue: &dyn Queue, limit: Option<usize>) -> Result<QueueReport> {
    let mut report = QueueReport::default();
    if limit == Some(0) {
        return Ok(report);
    }
    let mut infos = queue.job_info().await;
    let mut seen = 0;
    while let Some(info) = infos.try_next().await? {
        let bucket = if info.status.completed && info.retry.should_retry() {
            &mut report.retrying
        } else if info.status.completed {
            &mut report.completed
        } else if info.status.expired {
            &mut report.expired
        } else if info.status.in_progress {
            &mut report.in_progress
        } else {
            &mut report.pending
        };
        bucket.push(info.id);
        seen += 1;
        if limit.is_some_and(|limit| seen >= limit) {
            break;
        }
    }
    Ok(report)
}

/// Compile-time check that the helpers can be spawned.
#[allow(dead_code)]
fn _helpers_are_send(queue: &'static dyn Queue, job: JobRef) {
    fn send<T: Send>(_: T) {}
    send(enqueue_unique(queue, job.clone()));
    send(enqueue_many_unique(queue, vec![job.clone()]));
    send(resolve_errors(queue));
    send(populate_queue(queue, futures::stream::iter(vec![job])));
    send(report(queue, None));
}

//! [`QueueManager`]: management over any queue, through its public operations.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use amboy_core::{Error, JobInfo, JobRef, Queue, Result};
use amboy_registry::JobInterchange;
use async_trait::async_trait;
use chrono::Utc;
use futures::TryStreamExt as _;
use regex::Regex;

use crate::{
    GroupedId, JobCursor, JobDetail, JobPage, JobQuery, JobRecord, JobTypeCount, Manager,
    StatusFilter,
};

/// A [`Manager`] over one queue (amboy's `NewQueueManager`), through the queue's own
/// operations: it reads every job's info from [`Queue::job_info`] (so each call walks the
/// queue's jobs), and completes a job with [`Queue::complete`] and, for a retrying job,
/// [`RetryableQueue::complete_retrying`](amboy_core::RetryableQueue::complete_retrying).
///
/// Completing a job that this queue dispatched and a worker still runs first writes it twice
/// (two [`Queue::save`]s, each advancing its modification count by one), so that the count
/// moves beyond what the worker's own writes may advance it from: on a queue that stores copies under amboy's optimistic lock the
/// worker's later writes then fail, and on the in-memory queues that share the job its later
/// completion finds it completed and changes nothing. A queue that stores copies refuses to
/// complete a job that another queue object holds locked (another process's, on PostgreSQL):
/// use `amboy_queue_postgres::PostgresManager` there.
///
/// Staleness is judged with the queue's lock timeout, or the one given with
/// [`with_lock_timeout`](Self::with_lock_timeout). Every job is reported in the group given
/// with [`with_group`](Self::with_group) (empty by default).
pub struct QueueManager {
    queue: Arc<dyn Queue>,
    lock_timeout: Duration,
    group: String,
}

impl fmt::Debug for QueueManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueManager")
            .field("queue", &self.queue.id())
            .field("lock_timeout", &self.lock_timeout)
            .field("group", &self.group)
            .finish()
    }
}

impl QueueManager {
    /// A manager of `queue`, judging staleness with the queue's lock timeout.
    pub fn new(queue: Arc<dyn Queue>) -> Self {
        let lock_timeout = queue.info().lock_timeout;
        QueueManager {
            queue,
            lock_timeout,
            group: String::new(),
        }
    }

    /// Judges staleness with `lock_timeout` instead of the queue's.
    pub fn with_lock_timeout(mut self, lock_timeout: Duration) -> Self {
        self.lock_timeout = lock_timeout;
        self
    }

    /// Reports the queue's jobs as in the group `group`.
    pub fn with_group(mut self, group: impl Into<String>) -> Self {
        self.group = group.into();
        self
    }

    /// The queue managed.
    pub fn queue(&self) -> &Arc<dyn Queue> {
        &self.queue
    }

    /// The info of every job passing `filter`.
    async fn infos(&self, filter: StatusFilter) -> Result<Vec<JobInfo>> {
        let now = Utc::now();
        let infos: Vec<JobInfo> = self.queue.job_info().await.try_collect().await?;
        Ok(infos
            .into_iter()
            .filter(|info| filter.matches(info, self.lock_timeout, now))
            .collect())
    }

    /// The stored job an info describes: its attempt, on a retryable queue.
    async fn stored(&self, info: &JobInfo) -> Result<JobRef> {
        match self.queue.as_retryable() {
            Some(queue) if info.retry.retryable => {
                queue
                    .get_attempt(&info.id, info.retry.current_attempt)
                    .await
            }
            _ => self.queue.get(&info.id).await,
        }
    }

    /// Completes the jobs `infos` describes that are unfinished; returns how many it
    /// completed. Every job is tried; the first error is returned after.
    async fn complete_all(&self, infos: Vec<JobInfo>) -> Result<u64> {
        let mut completed = 0;
        let mut first_error = None;
        for info in infos.iter().filter(|info| unfinished(info)) {
            match self.complete_one(info).await {
                Ok(true) => completed += 1,
                Ok(false) => {}
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(completed),
        }
    }

    /// Completes one job; `false` if it was finished already.
    async fn complete_one(&self, info: &JobInfo) -> Result<bool> {
        let job = self.stored(info).await?;
        let (completed, retrying, in_progress) = {
            let meta = job.base().metadata();
            (
                meta.status.completed,
                meta.status.completed && meta.retry_info.should_retry(),
                meta.status.in_progress,
            )
        };
        if retrying {
            let Some(queue) = self.queue.as_retryable() else {
                return Err(Error::invalid_job(
                    &info.id,
                    "it is retrying in a queue that does not retry",
                ));
            };
            // The retry handler may be building its next attempt from a copy: fence it out.
            self.advance_twice(&job).await?;
            queue.complete_retrying(&job).await?;
            return Ok(true);
        }
        if completed || job.base().metadata().status.expired {
            return Ok(false);
        }
        if in_progress {
            self.advance_twice(&job).await?;
        }
        self.queue.complete(&job).await?;
        Ok(true)
    }

    /// Two writes, each advancing the job's modification count by one (the most a write may),
    /// so that with the completion that follows the stored count ends three ahead of what
    /// its owner holds (amboy's `$inc: 3`): the owner's later writes fail.
    async fn advance_twice(&self, job: &JobRef) -> Result<()> {
        for _ in 0..2 {
            job.base().metadata().status.modification_count += 1;
            self.queue.save(job).await?;
        }
        Ok(())
    }
}

/// Whether a job is still to finish: pending, in progress or retrying.
fn unfinished(info: &JobInfo) -> bool {
    !info.status.expired
        && (!info.status.completed || (info.retry.retryable && info.retry.needs_retry))
}

/// Whether a job as `info` describes it failed for good, or expired: what may be enqueued
/// again.
fn failed(info: &JobInfo) -> bool {
    info.status.expired
        || (info.status.completed
            && !(info.retry.retryable && info.retry.needs_retry)
            && (info.status.error_count > 0 || !info.status.errors.is_empty()))
}

#[async_trait]
impl Manager for QueueManager {
    async fn job_status(&self, filter: StatusFilter) -> Result<Vec<JobTypeCount>> {
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for info in self.infos(filter).await? {
            *counts.entry(info.job_type.name.into_owned()).or_default() += 1;
        }
        Ok(counts
            .into_iter()
            .map(|(job_type, count)| JobTypeCount {
                job_type,
                group: self.group.clone(),
                count,
            })
            .collect())
    }

    async fn job_ids_by_state(
        &self,
        job_type: &str,
        filter: StatusFilter,
    ) -> Result<Vec<GroupedId>> {
        let ids: BTreeSet<String> = self
            .infos(filter)
            .await?
            .into_iter()
            .filter(|info| info.job_type.name == job_type)
            .map(|info| info.id)
            .collect();
        Ok(ids
            .into_iter()
            .map(|id| GroupedId {
                id,
                group: self.group.clone(),
            })
            .collect())
    }

    async fn complete_job(&self, id: &str) -> Result<()> {
        let attempts: Vec<JobInfo> = self
            .infos(StatusFilter::All)
            .await?
            .into_iter()
            .filter(|info| info.id == id)
            .collect();
        if attempts.is_empty() {
            return Err(Error::job_not_found_because(id, "no job has this ID"));
        }
        self.complete_all(attempts).await.map(|_| ())
    }

    async fn complete_jobs(&self, filter: StatusFilter) -> Result<u64> {
        let infos = self.infos(filter).await?;
        self.complete_all(infos).await
    }

    async fn complete_jobs_by_type(&self, filter: StatusFilter, job_type: &str) -> Result<u64> {
        let mut infos = self.infos(filter).await?;
        infos.retain(|info| info.job_type.name == job_type);
        self.complete_all(infos).await
    }

    async fn complete_jobs_by_pattern(&self, filter: StatusFilter, pattern: &str) -> Result<u64> {
        let pattern = Regex::new(pattern).map_err(|error| {
            Error::invalid(format!("'{pattern}' is not a regular expression: {error}"))
        })?;
        let mut infos = self.infos(filter).await?;
        infos.retain(|info| pattern.is_match(&info.id));
        self.complete_all(infos).await
    }

    async fn list_jobs(&self, query: &JobQuery) -> Result<JobPage> {
        query.validate()?;
        if query
            .group
            .as_ref()
            .is_some_and(|group| *group != self.group)
        {
            return Ok(JobPage {
                jobs: Vec::new(),
                next: None,
            });
        }
        let after = query
            .after
            .as_ref()
            .filter(|cursor| cursor.group == self.group);
        let mut infos: Vec<JobInfo> = self
            .infos(query.filter)
            .await?
            .into_iter()
            .filter(|info| {
                query
                    .job_type
                    .as_ref()
                    .is_none_or(|job_type| info.job_type.name == *job_type)
                    && query.created_in_range(info.time.created)
                    && after.is_none_or(|cursor| {
                        (info.id.as_str(), info.retry.current_attempt)
                            > (cursor.id.as_str(), cursor.attempt)
                    })
            })
            .collect();
        if query
            .after
            .as_ref()
            .is_some_and(|cursor| cursor.group > self.group)
        {
            infos.clear();
        }
        infos.sort_by(|a, b| {
            (&a.id, a.retry.current_attempt).cmp(&(&b.id, b.retry.current_attempt))
        });
        let more = infos.len() > query.limit;
        infos.truncate(query.limit);
        let next = more.then(|| {
            let last = infos.last().expect("a full page");
            JobCursor {
                group: self.group.clone(),
                id: last.id.clone(),
                attempt: last.retry.current_attempt,
            }
        });
        Ok(JobPage {
            jobs: infos
                .into_iter()
                .map(|info| JobRecord {
                    group: self.group.clone(),
                    info,
                })
                .collect(),
            next,
        })
    }

    async fn job(&self, id: &str) -> Result<JobDetail> {
        // A retryable queue stores a job that does not retry under its ID alone.
        let attempts = match self.queue.as_retryable() {
            Some(queue) => match queue.get_all_attempts(id).await {
                Err(error) if error.is_job_not_found() => None,
                attempts => Some(attempts?),
            },
            None => None,
        };
        let jobs = match attempts {
            Some(attempts) if !attempts.is_empty() => attempts,
            _ => vec![self.queue.get(id).await?],
        };
        let latest = jobs.last().expect("a job has an attempt");
        let job = JobInterchange::from_job(&**latest).ok();
        Ok(JobDetail {
            group: self.group.clone(),
            id: id.to_owned(),
            attempts: jobs.iter().map(|job| JobInfo::new(&**job)).collect(),
            job,
        })
    }

    async fn requeue_job(&self, id: &str) -> Result<JobInfo> {
        let Some(queue) = self.queue.as_retryable() else {
            return Err(Error::invalid_job(
                id,
                format!(
                    "queue '{}' does not retry jobs, so it cannot hold another attempt",
                    self.queue.id()
                ),
            ));
        };
        let latest = queue.get(id).await?;
        let info = JobInfo::new(&*latest);
        if !failed(&info) {
            return Err(Error::invalid_job(
                id,
                "only a job that failed (completed with errors, not retrying) or expired is \
                 enqueued again",
            ));
        }
        let next = info.retry.current_attempt + 1;
        {
            let now = Utc::now();
            let mut meta = latest.base().metadata();
            meta.prepare_attempt(next, now);
            // A deadline that passed (what expired the job) would expire it again.
            if meta
                .time_info
                .dispatch_by
                .is_some_and(|deadline| deadline <= now)
            {
                meta.time_info.dispatch_by = None;
            }
            meta.retry_info.retryable = true;
            if meta.retry_info.max_attempts_or_default() <= next {
                meta.retry_info.max_attempts = next + 1;
            }
        }
        self.queue.put(latest.clone()).await?;
        Ok(JobInfo::new(&*latest))
    }
}

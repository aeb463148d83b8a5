//! What management operations take and return.

use amboy_core::JobInfo;
use amboy_registry::JobInterchange;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::StatusFilter;

/// How many jobs of a type (in a group) pass a filter (amboy's `JobTypeCount`, with
/// snake_case JSON keys: `type`, `group`, `count`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobTypeCount {
    /// The job type's name.
    #[serde(rename = "type")]
    pub job_type: String,
    /// The queue group's name; empty for a queue outside any group.
    #[serde(default)]
    pub group: String,
    /// How many jobs (attempts counted once each).
    pub count: u64,
}

/// A job's ID and the group it is in (amboy's `GroupedID`, JSON keys `id` and `group`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GroupedId {
    /// The job's ID (for a retryable job, the ID of all its attempts).
    pub id: String,
    /// The queue group's name; empty for a queue outside any group.
    #[serde(default)]
    pub group: String,
}

/// Where a page of [`Manager::list_jobs`](crate::Manager::list_jobs) ended: the next page
/// starts after this job. Jobs are listed by group, ID and attempt.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobCursor {
    /// The group of the last job listed.
    #[serde(default)]
    pub group: String,
    /// The ID of the last job listed.
    pub id: String,
    /// The attempt of the last job listed.
    #[serde(default)]
    pub attempt: u32,
}

/// Which jobs [`Manager::list_jobs`](crate::Manager::list_jobs) returns, and how many.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobQuery {
    /// Jobs that pass this filter.
    pub filter: StatusFilter,
    /// Only jobs of this type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_type: Option<String>,
    /// Only jobs in this group (`""` for a queue outside any group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Only jobs created at or after this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_after: Option<DateTime<Utc>>,
    /// Only jobs created before this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_before: Option<DateTime<Utc>>,
    /// Start after this job (the previous page's [`JobPage::next`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<JobCursor>,
    /// At most this many jobs (1 to [`JobQuery::MAX_LIMIT`]).
    pub limit: usize,
}

impl JobQuery {
    /// The default page size.
    pub const DEFAULT_LIMIT: usize = 100;
    /// The largest page.
    pub const MAX_LIMIT: usize = 1000;

    /// The first page of jobs passing `filter`, [`DEFAULT_LIMIT`](Self::DEFAULT_LIMIT) at a
    /// time.
    pub fn new(filter: StatusFilter) -> Self {
        JobQuery {
            filter,
            job_type: None,
            group: None,
            created_after: None,
            created_before: None,
            after: None,
            limit: Self::DEFAULT_LIMIT,
        }
    }

    /// Only jobs of `job_type`.
    pub fn job_type(mut self, job_type: impl Into<String>) -> Self {
        self.job_type = Some(job_type.into());
        self
    }

    /// Only jobs in `group`.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// Only jobs created in `[after, before)`; either end may be open.
    pub fn created(mut self, after: Option<DateTime<Utc>>, before: Option<DateTime<Utc>>) -> Self {
        self.created_after = after;
        self.created_before = before;
        self
    }

    /// Pages of `limit` jobs.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// The page after `cursor`.
    pub fn after(mut self, cursor: JobCursor) -> Self {
        self.after = Some(cursor);
        self
    }

    /// Checks the limit.
    pub fn validate(&self) -> amboy_core::Result<()> {
        if self.limit == 0 || self.limit > Self::MAX_LIMIT {
            return Err(amboy_core::Error::invalid(format!(
                "a page holds 1 to {} jobs, not {}",
                Self::MAX_LIMIT,
                self.limit
            )));
        }
        Ok(())
    }

    /// Whether a job created at `created` is in the query's time range. A job with no
    /// creation time is outside any bounded range.
    pub fn created_in_range(&self, created: Option<DateTime<Utc>>) -> bool {
        if self.created_after.is_none() && self.created_before.is_none() {
            return true;
        }
        created.is_some_and(|created| {
            self.created_after.is_none_or(|after| created >= after)
                && self.created_before.is_none_or(|before| created < before)
        })
    }
}

impl Default for JobQuery {
    fn default() -> Self {
        JobQuery::new(StatusFilter::All)
    }
}

/// One job as listed: the group it is in and its info.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The queue group's name; empty for a queue outside any group.
    #[serde(default)]
    pub group: String,
    /// The job's ID, type, status, times and retry information.
    #[serde(flatten)]
    pub info: JobInfo,
}

/// A page of [`Manager::list_jobs`](crate::Manager::list_jobs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobPage {
    /// The jobs, by group, ID and attempt.
    pub jobs: Vec<JobRecord>,
    /// Where the next page starts, or `None` when this page is the last.
    pub next: Option<JobCursor>,
}

/// Everything stored about one job (see [`Manager::job`](crate::Manager::job)).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobDetail {
    /// The queue group's name; empty for a queue outside any group.
    #[serde(default)]
    pub group: String,
    /// The job's ID.
    pub id: String,
    /// Every attempt stored, oldest first: one for a job that does not retry.
    pub attempts: Vec<JobInfo>,
    /// The latest attempt in full, its own fields included (amboy's interchange form), or
    /// `None` when it cannot be encoded.
    pub job: Option<JobInterchange>,
}

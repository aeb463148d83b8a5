//! The bodies the service sends and the clients read.

use amboy_core::JobInfo;
use serde::{Deserialize, Serialize};

/// An error, as every failed request answers: a stable machine-readable `code` and a message
/// for people.
///
/// | code | status | meaning |
/// |---|---|---|
/// | `invalid_request` | 400 | a malformed body, path or query (the message names the problem) |
/// | `invalid_filter` | 400 | not a status filter |
/// | `invalid_job` | 400 | the job cannot be taken as it is (the message names the job and why) |
/// | `unknown_job_type` | 400 | no job type of that name is registered in the service |
/// | `version_mismatch` | 400 | the job's version is not the registered type's |
/// | `unauthorized` | 401 | no bearer token, or the wrong one |
/// | `not_found` | 404 | no such route (or the service does not serve that part) |
/// | `job_not_found` | 404 | no such job |
/// | `not_running` | 404 | the job is not running in the pool |
/// | `method_not_allowed` | 405 | the route does not take that method |
/// | `timeout` | 408 | a wait ran out of time |
/// | `duplicate_job` | 409 | a job with that ID exists |
/// | `duplicate_scope` | 409 | a scope the job takes at put is held |
/// | `locked` | 409 | another owner holds the job's lock |
/// | `payload_too_large` | 413 | the body is over the service's limit |
/// | `queue_full` | 503 | the queue is at capacity |
/// | `unavailable` | 503 | the queue is closed, not started, or its store is unreachable; or a wait was cut short because the service is stopping |
/// | `internal` | 500 | anything else |
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error's kind.
    pub code: String,
    /// What went wrong.
    pub message: String,
}

/// The queue service's status (amboy's status, with the `string` key named `status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusResponse {
    /// `ok`, or `degraded` when the queue is not running.
    pub status: String,
    /// Whether the queue has started.
    pub queue_running: bool,
    /// How many jobs wait to run.
    pub pending_jobs: usize,
    /// The job types this service can create.
    pub supported_job_types: Vec<String>,
}

/// The answer to a created job. (amboy's also gave the queue's depth; counting the jobs of a
/// PostgreSQL queue at every put would make a put cost as much as the queue is long:
/// `GET /v1/status` gives it.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateResponse {
    /// The job's ID.
    pub id: String,
}

/// Where one job stands (amboy's job status, without the queue's pending count, which
/// `GET /v1/status` gives: a job's status costs one lookup).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStatusResponse {
    /// The job's ID.
    pub id: String,
    /// Whether the job finished and will not run again (completed and not retrying, or
    /// expired).
    pub completed: bool,
    /// The job's info.
    pub job: JobInfo,
}

/// The answer of a management completion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletedResponse {
    /// What was done.
    pub message: String,
    /// How many jobs were completed (1 for one job, even one finished already).
    pub completed: u64,
}

/// A job running in a pool, and what was done to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningJob {
    /// The job's ID.
    pub id: String,
    /// The group of the queue it runs in (the group service only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// `running` or `aborted`.
    pub status: String,
}

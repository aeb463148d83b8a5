//! The [`Job`] trait, what a run receives ([`JobContext`]) and what it returns ([`JobError`]).

use std::any::Any;
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use amboy_dependency::Manager;
use async_trait::async_trait;
use chrono::Utc;
use futures::FutureExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{Base, Error, JobRetryInfo, JobRetryOptions, JobStatusInfo, JobTimeInfo, JobType};

/// A job as queues and runners hold it: shared between the queue that stores it and the worker
/// that runs it.
pub type JobRef = Arc<dyn Job>;

/// A unit of work: a struct with its own fields, an embedded [`Base`] for amboy's metadata,
/// and an async [`run`](Job::run).
///
/// Registering the type is the `#[typetag::serde]` attribute on the impl: its name is the job
/// type's name, and it lets a stored job come back as the right type. The version is
/// [`version`](Job::version), 0 unless overridden.
///
/// ```
/// use amboy_core::{Base, Job, JobContext, JobError};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Greet {
///     base: Base,
///     name: String,
/// }
///
/// #[typetag::serde(name = "greet")]
/// #[async_trait::async_trait]
/// impl Job for Greet {
///     fn base(&self) -> &Base {
///         &self.base
///     }
///
///     async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
///         println!("hello, {}", self.name);
///         Ok(())
///     }
/// }
///
/// let job = Greet { base: Base::with_id("greet-1"), name: "world".into() };
/// assert_eq!(job.id(), "greet-1");
/// assert_eq!(job.job_type().name, "greet");
/// ```
///
/// # Ownership while running
///
/// The queue and the worker share the job (`Arc<dyn Job>`), so `run` takes `&self`: the
/// metadata lives behind [`Base`]'s lock, and `get` on a queue returns the job while it runs,
/// with its in-progress status. Fields a run must change need interior mutability (a `Mutex`,
/// an atomic); see ARCHITECTURE.md for the alternatives weighed.
///
/// The provided methods forward to [`Base`] and carry amboy's names (`status`, `lock`,
/// `scopes`, …); implementations have no reason to override them. `Job` extends [`Any`], so a
/// `&dyn Job` upcasts to `&dyn Any` to reach the concrete type.
#[typetag::serde(tag = "type", content = "job")]
#[async_trait]
pub trait Job: Any + Send + Sync {
    /// The job's embedded metadata.
    fn base(&self) -> &Base;

    /// Does the work. `Err` is recorded on the job as its error (a
    /// [retryable](JobError::retryable) one asks for another attempt); a panic is recorded too.
    /// The run is bounded by the job's `max_time` and stops when `ctx` is cancelled.
    async fn run(&self, ctx: &JobContext) -> Result<(), JobError>;

    /// The version of the job type's stored form; bump it when the fields change
    /// incompatibly. Negative marks a job that cannot be serialized.
    fn version(&self) -> i32 {
        0
    }

    /// The job's type: its registered name and [`version`](Job::version).
    fn job_type(&self) -> JobType {
        JobType {
            name: Cow::Borrowed(self.typetag_name()),
            version: self.version(),
        }
    }

    /// The job's ID.
    fn id(&self) -> &str {
        self.base().id()
    }

    /// The job's dependency manager.
    fn dependency(&self) -> Arc<dyn Manager> {
        self.base().dependency()
    }

    /// Replaces the job's dependency manager.
    fn set_dependency(&self, dependency: Arc<dyn Manager>) {
        self.base().set_dependency(dependency)
    }

    /// The job's status.
    fn status(&self) -> JobStatusInfo {
        self.base().status()
    }

    /// Replaces the job's status.
    fn set_status(&self, status: JobStatusInfo) {
        self.base().set_status(status)
    }

    /// The job's timing.
    fn time_info(&self) -> JobTimeInfo {
        self.base().time_info()
    }

    /// Overwrites the timing fields set in `update`.
    fn update_time_info(&self, update: &JobTimeInfo) {
        self.base().update_time_info(update)
    }

    /// Replaces the job's timing.
    fn set_time_info(&self, time_info: JobTimeInfo) {
        self.base().set_time_info(time_info)
    }

    /// The job's retry information.
    fn retry_info(&self) -> JobRetryInfo {
        self.base().retry_info()
    }

    /// Overwrites the retry fields set in `options`.
    fn update_retry_info(&self, options: &JobRetryOptions) {
        self.base().update_retry_info(options)
    }

    /// Records an error.
    fn add_error(&self, error: &dyn fmt::Display) {
        self.base().add_error(error)
    }

    /// Records an error and asks for a retry.
    fn add_retryable_error(&self, error: &dyn fmt::Display) {
        self.base().add_retryable_error(error)
    }

    /// The job's errors, joined, if any.
    fn error(&self) -> Option<JobError> {
        self.base().error()
    }

    /// Whether this attempt is the job's last.
    fn is_last_attempt(&self) -> bool {
        self.base().is_last_attempt()
    }

    /// Takes or refreshes the job's lock for `owner`.
    fn lock(&self, owner: &Arc<str>, lock_timeout: Duration) -> Result<(), Error> {
        self.base().lock(owner, lock_timeout)
    }

    /// Releases the job's lock held by `owner`.
    fn unlock(&self, owner: &str, lock_timeout: Duration) {
        self.base().unlock(owner, lock_timeout)
    }

    /// The scopes the job holds while it runs.
    fn scopes(&self) -> Vec<String> {
        self.base().scopes()
    }

    /// Sets the scopes the job holds while it runs.
    fn set_scopes(&self, scopes: Vec<String>) {
        self.base().set_scopes(scopes)
    }

    /// The scopes the job takes at enqueue.
    fn enqueue_scopes(&self) -> Vec<String> {
        self.base().enqueue_scopes()
    }

    /// Chooses which scopes are taken at enqueue.
    fn set_enqueue_scopes(&self, scopes: Vec<String>) {
        self.base().set_enqueue_scopes(scopes)
    }

    /// Whether all scopes are taken at enqueue.
    fn enqueue_all_scopes(&self) -> bool {
        self.base().enqueue_all_scopes()
    }

    /// Takes all scopes at enqueue (or not).
    fn set_enqueue_all_scopes(&self, all: bool) {
        self.base().set_enqueue_all_scopes(all)
    }

    /// The job's priority.
    fn priority(&self) -> i32 {
        self.base().priority()
    }

    /// Sets the job's priority.
    fn set_priority(&self, priority: i32) {
        self.base().set_priority(priority)
    }
}

impl fmt::Debug for dyn Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("id", &self.id())
            .field("type", &self.job_type())
            .finish_non_exhaustive()
    }
}

/// What a job's run may observe: cancellation and its deadline.
///
/// The run's future is dropped when the job is cancelled or exceeds its `max_time`; the token
/// lets work the job started elsewhere (spawned tasks, blocking threads) stop too.
#[derive(Debug, Clone, Default)]
pub struct JobContext {
    token: CancellationToken,
    deadline: Option<Instant>,
}

impl JobContext {
    /// A context that is never cancelled on its own.
    pub fn new() -> Self {
        Self::default()
    }

    /// A context cancelled through `token`.
    pub fn with_token(token: CancellationToken) -> Self {
        JobContext {
            token,
            deadline: None,
        }
    }

    /// The same context, ending at `deadline` at the latest.
    pub fn with_deadline(mut self, deadline: Option<Instant>) -> Self {
        self.deadline = match (self.deadline, deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self
    }

    /// The token cancelled when the run must stop.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// When the run must have finished, if it is bounded.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Whether the run must stop: cancelled, or past its deadline.
    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled() || self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Completes when the run must stop.
    pub async fn cancelled(&self) {
        match self.deadline {
            Some(deadline) => {
                tokio::select! {
                    _ = self.token.cancelled() => {}
                    _ = tokio::time::sleep_until(deadline) => {}
                }
            }
            None => self.token.cancelled().await,
        }
    }
}

/// The error a job's run returns.
///
/// Any error converts into it with `?`; [`JobError::retryable`] asks for another attempt.
#[derive(Clone, PartialEq, Eq)]
pub struct JobError {
    message: String,
    retryable: bool,
}

impl JobError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        JobError {
            message: message.into(),
            retryable: false,
        }
    }

    /// An error that asks for the job to be retried (if the job is retryable).
    pub fn retryable(message: impl fmt::Display) -> Self {
        JobError {
            message: message.to_string(),
            retryable: true,
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the error asks for a retry.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }
}

impl<E: std::error::Error> From<E> for JobError {
    fn from(error: E) -> Self {
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        JobError::new(message)
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobError")
            .field("message", &self.message)
            .field("retryable", &self.retryable)
            .finish()
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// `run` returned `Ok`.
    Succeeded,
    /// `run` returned `Err`; the error is recorded on the job.
    Failed,
    /// `run` panicked; the panic message is recorded on the job.
    Panicked,
    /// The job exceeded its deadline and was stopped.
    TimedOut,
    /// The job was cancelled and stopped.
    Cancelled,
}

/// Runs `job` in `ctx` and records how it went on the job: a returned error, a panic, a
/// timeout or a cancellation each become one of the job's errors. It neither sets times nor
/// marks the job complete; queues and [`run_job`] do that.
///
/// This is the one place where amboy's execution rules live, shared by every runner.
pub async fn execute(job: &dyn Job, ctx: &JobContext) -> RunOutcome {
    let run = std::panic::AssertUnwindSafe(job.run(ctx)).catch_unwind();
    let mut run = std::pin::pin!(run);
    // A run finishing at its first step needs no wait on cancellation or a deadline.
    let result = match futures::poll!(run.as_mut()) {
        std::task::Poll::Ready(result) => Some(result),
        std::task::Poll::Pending => tokio::select! {
            biased;
            result = &mut run => Some(result),
            _ = ctx.cancelled() => None,
        },
    };
    match result {
        Some(Ok(Ok(()))) => RunOutcome::Succeeded,
        Some(Ok(Err(error))) => {
            job.base().record(Err(error));
            RunOutcome::Failed
        }
        Some(Err(panic)) => {
            job.base()
                .add_error(format_args!("job panicked: {}", panic_message(&*panic)));
            RunOutcome::Panicked
        }
        None if ctx.token().is_cancelled() => {
            job.base()
                .add_error("job was aborted during execution: context canceled");
            RunOutcome::Cancelled
        }
        None => {
            job.base()
                .add_error("job was aborted during execution: context deadline exceeded");
            RunOutcome::TimedOut
        }
    }
}

/// The message carried by a panic payload.
pub fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(message) = payload.downcast_ref::<&'static str>() {
        message
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message
    } else {
        "non-string panic payload"
    }
}

/// The deadline a job's `max_time` sets for a run starting now.
pub fn max_time_deadline(max_time: Duration) -> Option<Instant> {
    (!max_time.is_zero()).then(|| Instant::now() + max_time)
}

/// Runs a job without a queue (amboy's `RunJob`): records the start and end times, bounds the
/// run by the job's `max_time`, marks the job complete and returns its error, if any.
pub async fn run_job(job: &dyn Job) -> Result<(), JobError> {
    let max_time = {
        let mut meta = job.base().metadata();
        meta.time_info.start = Some(Utc::now());
        meta.time_info.max_time
    };
    let ctx = JobContext::new().with_deadline(max_time_deadline(max_time));
    let outcome = execute(job, &ctx).await;
    {
        let mut meta = job.base().metadata();
        meta.time_info.end = Some(Utc::now());
        meta.status.in_progress = false;
        meta.status.completed = true;
    }
    tracing::event!(
        tracing::Level::DEBUG,
        job_id = job.id(),
        job_type = %job.job_type(),
        outcome = ?outcome,
        "ran job without a queue"
    );
    match job.error() {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

//! Runners execute a queue's jobs; retry handlers enqueue the next attempts of retried jobs.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    JobContext, JobRef, Queue, Result, RetryableQueue, RunOutcome, execute, max_time_deadline,
};

/// Executes a queue's jobs (amboy's `Runner`): a pool of workers calling
/// [`Queue::next`], running the job and calling [`Queue::complete`]. A worker stops when `next`
/// fails with [`Error::Closed`](crate::Error::Closed); after any other error it waits (backing
/// off, but never past a request to stop) and asks again.
#[async_trait]
pub trait Runner: Send + Sync + 'static {
    /// Whether the runner is started.
    fn started(&self) -> bool;

    /// Sets the queue to serve; not possible once started. Until it starts, the runner keeps a
    /// weak reference (the queue owns the runner, not the other way round); its workers hold
    /// the queue while they run, so a queue must stop its runner when it closes or its owner
    /// drops it (the queues of `amboy-queue-local` close when their last handle is dropped).
    fn set_queue(&self, queue: Arc<dyn Queue>) -> Result<()>;

    /// Starts the workers; starting a started runner does nothing. Fails without a queue.
    async fn start(&self) -> Result<()>;

    /// Cancels running jobs, waits for the workers to stop, and leaves the runner restartable.
    async fn close(&self);

    /// Stops gracefully: takes no new job, lets the running jobs finish for up to `grace`, then
    /// cancels those still running and waits for the workers, as [`close`](Runner::close)
    /// does. Jobs not taken stay in their queue. The runner can start again.
    ///
    /// The default, for runners that cannot stop taking jobs on their own, closes at once.
    async fn shutdown(&self, grace: Duration) {
        let _ = grace;
        self.close().await;
    }

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

    /// Hands over a completed job that asked to retry, waiting for room if the handler's buffer
    /// is full.
    async fn put(&self, job: JobRef) -> Result<()>;

    /// Hands over a job without waiting, if the handler can tell: `Some(Ok(()))` if it took
    /// the job, `Some(Err(_))` if it cannot now (its buffer is full, say). Runners call this
    /// first, so that a full handler never holds up a worker; a job not taken stays retrying
    /// in its queue, whose stale-retrying monitor hands it over later. `None`, the default,
    /// means the caller must call [`put`](RetryHandler::put).
    fn try_put(&self, job: &JobRef) -> Option<Result<()>> {
        let _ = job;
        None
    }

    /// Aborts retries in progress and waits for the workers; the handler can start again.
    async fn close(&self);
}

impl std::fmt::Debug for dyn Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("started", &self.started())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for dyn AbortableRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AbortableRunner")
            .field("started", &self.started())
            .field("running", &self.running_jobs().len())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for dyn RetryHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryHandler")
            .field("started", &self.started())
            .finish_non_exhaustive()
    }
}

/// Runs one dispatched job and reports it to its queue, as every runner does (amboy's
/// `executeJob`): the run is bounded by the job's `max_time` and stopped when `ctx` is
/// cancelled; errors and panics are recorded on the job; the job is completed in the queue; a
/// retryable queue's handler receives the job if it asked to retry.
///
/// `ctx` is the runner's context for the job: runners that abort single jobs pass a context
/// with a token of the job's own; others build one context per worker and pass it to every
/// job the worker runs (a job with a time limit, or whose queue watches its lock, gets a child
/// token of its own here).
///
/// Runs inside a `tracing` span named `amboy.job` with amboy's attribute names.
pub async fn execute_job(queue: &dyn Queue, job: &JobRef, ctx: &JobContext) -> RunOutcome {
    let start = Start::of(job, ctx);
    start.record(queue, job);
    let span = job_span(queue, job, &start);
    let work = async {
        let ran = run_phase(job, ctx, start).await;
        let completed = match queue.try_complete(job) {
            Some(result) => result,
            None => queue.complete(job).await,
        };
        after_completion(queue, job, ran, completed, ctx.token()).await
    };
    // Without a subscriber listening, skip the instrumentation wrapper and its per-poll checks.
    if span.is_disabled() {
        work.await
    } else {
        work.instrument(span).await
    }
}

/// What [`execute_job_behind`] leaves to its caller.
pub enum Executed {
    /// The job ran and its queue completed it at once (an in-memory queue).
    Done(RunOutcome),
    /// The job ran; its completion is being written (a database queue). The future ends once
    /// the queue acknowledged the completion, which it does only when the completion is
    /// stored, and the retry handler got the job if it asked to retry.
    Completing(futures::future::BoxFuture<'static, RunOutcome>),
}

impl std::fmt::Debug for Executed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Executed::Done(outcome) => f.debug_tuple("Done").field(outcome).finish(),
            Executed::Completing(_) => f.write_str("Completing"),
        }
    }
}

/// [`execute_job`] for runners that take their next job while a completion is written: the
/// job runs here; if its queue cannot complete it at once ([`Queue::try_complete`] is `None`),
/// the completion and what follows it come back as [`Executed::Completing`], for the caller to
/// drive while its worker runs other jobs. A worker of an in-memory queue gets
/// [`Executed::Done`] and nothing to drive; a worker of the PostgreSQL queue does not wait a
/// commit per job, so completions reach the database in large batches.
///
/// The job stays locked until its completion is stored (the PostgreSQL queue stops refreshing
/// the lock once it holds the completion, which takes a commit's time); should the process die
/// first, the job runs again once its lock times out, as a job that was still running would.
pub async fn execute_job_behind(
    queue: &Arc<dyn Queue>,
    job: &JobRef,
    ctx: &JobContext,
) -> Executed {
    let start = Start::of(job, ctx);
    start.record(&**queue, job);
    let span = job_span(&**queue, job, &start);
    let ran = if span.is_disabled() {
        run_phase(job, ctx, start).await
    } else {
        run_phase(job, ctx, start).instrument(span.clone()).await
    };
    if let Some(completed) = queue.try_complete(job) {
        let finish = after_completion(&**queue, job, ran, completed, ctx.token());
        return Executed::Done(if span.is_disabled() {
            finish.await
        } else {
            finish.instrument(span).await
        });
    }
    let (queue, job, cancel) = (queue.clone(), job.clone(), ctx.token().clone());
    let finish = async move {
        let completed = queue.complete(&job).await;
        after_completion(&*queue, &job, ran, completed, &cancel).await
    };
    Executed::Completing(if span.is_disabled() {
        Box::pin(finish)
    } else {
        Box::pin(finish.instrument(span))
    })
}

/// The span a job runs and completes in, with amboy's attribute names.
fn job_span(queue: &dyn Queue, job: &JobRef, start: &Start) -> tracing::Span {
    tracing::info_span!(
        "amboy.job",
        amboy.queue.id = queue.id(),
        amboy.job.id = job.id(),
        amboy.job.name = %job.job_type().name,
        amboy.job.retry.retryable = start.retryable,
    )
}

/// What a run needs of the job's metadata, read under one lock.
struct Start {
    max_time: Duration,
    retryable: bool,
    /// The run's own token, when the job's queue watches its lock.
    watched: Option<CancellationToken>,
}

impl Start {
    fn of(job: &JobRef, ctx: &JobContext) -> Self {
        let mut meta = job.base().metadata();
        let watched = meta.run_token(ctx.token());
        let time = &meta.time_info;
        Start {
            max_time: time.max_time,
            retryable: meta.retry_info.retryable,
            watched,
        }
    }

    /// Counts the run's start, when metrics are on.
    fn record(&self, queue: &dyn Queue, job: &JobRef) {
        if crate::metrics::ENABLED {
            crate::metrics::job_started(queue.id(), &job.job_type().name);
        }
    }
}

/// A job's run, as [`after_completion`] needs it.
struct Ran {
    outcome: RunOutcome,
    /// Whether the job had a token of its own because its queue watches its lock.
    watched: bool,
}

/// Runs the job, with its own token when it has a time limit or its queue watches its lock.
async fn run_phase(job: &JobRef, ctx: &JobContext, start: Start) -> Ran {
    let cancel = ctx.token();
    let Start {
        max_time, watched, ..
    } = start;
    // A job whose queue watches its lock gets a token of its own, which the queue cancels if
    // it loses the lock; so does a job with a time limit (its own, or the caller's deadline),
    // cancelled when the limit passes, so that work it spawned stops too. Other jobs run in
    // the caller's context.
    let own = match &watched {
        Some(token) => Some(token.clone()),
        None if max_time.is_zero() && ctx.deadline().is_none() => None,
        None => Some(cancel.child_token()),
    };
    let own = own.map(|token| {
        JobContext::with_token(token)
            .with_deadline(ctx.deadline())
            .with_deadline(max_time_deadline(max_time))
    });
    let run_ctx = own.as_ref().unwrap_or(ctx);
    let outcome = execute(&**job, run_ctx).await;
    // A run past its time stops what it spawned: its own token is cancelled, never the
    // caller's (which the caller's later jobs share).
    if outcome == RunOutcome::TimedOut
        && let Some(own) = &own
    {
        own.token().cancel();
    }
    Ran {
        outcome,
        watched: watched.is_some(),
    }
}

/// What follows a job's completion: its lock's watch ends, a failed completion is logged, a
/// job asking to retry goes to the retry handler, and the outcome is traced.
async fn after_completion(
    queue: &dyn Queue,
    job: &JobRef,
    ran: Ran,
    completed: Result<()>,
    cancel: &CancellationToken,
) -> RunOutcome {
    if ran.watched {
        job.base().end_run();
    }
    let stored = completed.is_ok();
    if let Err(error) = completed {
        tracing::warn!(error = %error, "could not complete job");
        job.base().metadata().time_info.end = Some(crate::clock::now());
    }
    let (should_retry, failed, times) = {
        let meta = job.base().metadata();
        let time = &meta.time_info;
        (
            meta.retry_info.should_retry(),
            !meta.status.errors.is_empty(),
            crate::metrics::ENABLED.then(|| {
                let ready = time.created.max(time.wait_until);
                let between = |from: Option<chrono::DateTime<chrono::Utc>>, to| {
                    from.zip(to)
                        .and_then(|(from, to): (_, chrono::DateTime<chrono::Utc>)| {
                            (to - from).to_std().ok()
                        })
                };
                (between(ready, time.start), between(time.start, time.end))
            }),
        )
    };
    if let Some((lag, run_time)) = times {
        crate::metrics::job_finished(queue.id(), &job.job_type().name, lag, run_time, failed);
    }
    // A job whose completion was not stored is not retried from here: its stored attempt is
    // not retrying (a storing queue runs it again once its lock times out), and the handler,
    // finding it so, would finish it and the retry would be lost.
    if should_retry && stored {
        hand_to_retry_handler(queue, job, cancel).await;
    } else if should_retry {
        tracing::warn!(
            "job asking to retry not handed to the retry handler: its completion was not stored"
        );
    }
    if failed {
        tracing::error!(outcome = ?ran.outcome, error = ?job.error(), "job failed");
    } else {
        tracing::debug!(outcome = ?ran.outcome, "job finished");
    }
    ran.outcome
}

/// Hands a job asking to retry to its queue's retry handler. A handler that is not running, or
/// full ([`RetryHandler::try_put`]), does not get the job: it stays retrying in its queue,
/// whose stale-retrying monitor hands it over later. A handler that cannot tell whether it has
/// room is waited for until the runner closes.
async fn hand_to_retry_handler(queue: &dyn Queue, job: &JobRef, cancel: &CancellationToken) {
    let Some(retryable) = queue.as_retryable() else {
        return;
    };
    let Some(handler) = retryable.retry_handler() else {
        tracing::error!("retryable queue has no retry handler; the job will not retry");
        return;
    };
    if !handler.started() {
        tracing::warn!(
            "the queue's retry handler is not running; the job stays retrying in its queue"
        );
        return;
    }
    match handler.try_put(job) {
        Some(Ok(())) => return,
        Some(Err(error)) => {
            tracing::warn!(error = %error, "the retry handler cannot take the job now; it stays retrying in its queue");
            return;
        }
        None => {}
    }
    tokio::select! {
        biased;
        put = handler.put(job.clone()) => {
            if let Err(error) = put {
                tracing::error!(error = %error, "could not hand job to the retry handler");
            }
        }
        _ = cancel.cancelled() => tracing::warn!(
            "the runner closed while the retry handler was full; the job stays retrying in its queue"
        ),
    }
}

//! [`BasicRetryHandler`]: a pool of workers enqueueing the next attempts of retrying jobs.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Weak};
use std::time::Duration;

use amboy_core::{
    Error, JobRef, JobRetryInfo, Result, RetryHandler, RetryHandlerOptions, RetryableQueue,
    panic_message,
};
use async_trait::async_trait;
use chrono::Utc;
use futures::FutureExt;
use parking_lot::Mutex;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How many times a job that could not be retried is marked as finished retrying before the
/// handler gives up (amboy's `completeRetrying`).
const COMPLETE_RETRYING_ATTEMPTS: u32 = 10;

/// The pause between those calls.
const COMPLETE_RETRYING_INTERVAL: Duration = Duration::from_secs(1);

/// The message amboy logs at warning rather than error level: the job simply ran out of attempts.
const MAX_ATTEMPTS_MESSAGE: &str = "job has reached its maximum attempt limit";

/// Enqueues the next attempt of jobs that asked to retry (amboy's `BasicRetryHandler`).
///
/// A retryable queue's runner hands the handler every completed job whose retry information
/// says it should retry ([`put`](RetryHandler::put)). The handler's workers take the jobs one at
/// a time and, for each, try up to
/// [`max_retry_attempts`](RetryHandlerOptions::max_retry_attempts) times, within
/// [`max_retry_time`](RetryHandlerOptions::max_retry_time) and
/// [`retry_backoff`](RetryHandlerOptions::retry_backoff) apart, to:
///
/// 1. read the stored attempt again with
///    [`get_attempt`](RetryableQueue::get_attempt), and stop if it no longer asks to retry or
///    has used its last attempt;
/// 2. lock the job for the queue and save it, taking ownership of the old attempt;
/// 3. build the next attempt from the stored copy: attempt number plus one, a fresh status, the
///    `wait_until` and `dispatch_by` offsets of its retry information applied from now, its
///    `max_time` kept;
/// 4. hand both to [`complete_retrying_and_put`](RetryableQueue::complete_retrying_and_put),
///    which marks the old attempt finished and enqueues the new one in one step.
///
/// Queue errors in step 1 and step 4 are tried again, except duplicate-job and job-not-found
/// errors from step 4; everything else ends the handling at once. A job that could not be
/// retried gets the reason among its errors and is marked finished retrying with
/// [`complete_retrying`](RetryableQueue::complete_retrying) (up to 10 calls a second apart,
/// stopping at a job-not-found error), so that waiting on the queue ends.
///
/// The queue must return copies from `get_attempt`, as amboy's serializable queues do: a queue
/// returning the very job the handler holds is refused with an error, because the next attempt
/// would overwrite the old one.
///
/// # Panics in the queue
///
/// A panic while handling a job (in practice, in one of the queue's methods) is caught. The job
/// is treated as a job that could not be retried: its retry information is restored, the error
/// `retry handler panicked: <message>` is recorded on it and it is marked finished retrying.
/// amboy put such a job back into the handler instead, which turns a panic that happens every
/// time into an endless loop; a panic is a bug, not a transient failure. Should marking the job
/// finished panic too, the job stays retrying in its queue, whose stale-retrying monitor hands it
/// over again. Either way the worker goes on to the next job: amboy's worker exited, shrinking
/// the pool by one per panic.
///
/// # Closing
///
/// [`close`](RetryHandler::close) stops the workers between two queue calls or during one (a
/// queue keeps its state consistent when a call is dropped). A job whose handling was
/// interrupted gets its retry information back and returns to the handler's buffer, so a
/// restarted handler retries it; jobs still in the buffer stay there too.
///
/// ```
/// use amboy_core::{RetryHandler, RetryHandlerOptions};
/// use amboy_retry::BasicRetryHandler;
///
/// let handler = BasicRetryHandler::new(RetryHandlerOptions {
///     max_retry_attempts: 3,
///     ..Default::default()
/// })
/// .unwrap();
/// assert_eq!(handler.options().max_retry_attempts, 3);
/// assert_eq!(handler.options().num_workers, 1, "the defaults are filled in");
/// assert!(!handler.started());
/// ```
pub struct BasicRetryHandler {
    options: RetryHandlerOptions,
    sender: async_channel::Sender<JobRef>,
    receiver: async_channel::Receiver<JobRef>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    queue: Option<Weak<dyn RetryableQueue>>,
    running: Option<Running>,
}

struct Running {
    token: CancellationToken,
    workers: JoinSet<()>,
}

impl BasicRetryHandler {
    /// A handler with these options, validated and with amboy's defaults filled in: 10 tries
    /// within 1 minute, no pause between them, 1 worker, room for 4096 waiting jobs (−1 means
    /// unlimited). It needs a queue ([`set_queue`](RetryHandler::set_queue)) before it starts.
    pub fn new(mut options: RetryHandlerOptions) -> Result<Arc<Self>> {
        options.validate()?;
        let (sender, receiver) = if options.is_unlimited_max_capacity() {
            async_channel::unbounded()
        } else {
            let capacity = usize::try_from(options.max_capacity).unwrap_or(usize::MAX);
            async_channel::bounded(capacity)
        };
        Ok(Arc::new(BasicRetryHandler {
            options,
            sender,
            receiver,
            state: Mutex::new(State::default()),
        }))
    }

    /// The handler's options, with the defaults filled in.
    pub fn options(&self) -> RetryHandlerOptions {
        self.options
    }

    /// The number of jobs waiting for a worker.
    pub fn pending(&self) -> usize {
        self.receiver.len()
    }
}

impl fmt::Debug for BasicRetryHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicRetryHandler")
            .field("options", &self.options)
            .field("started", &self.started())
            .field("pending", &self.pending())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl RetryHandler for BasicRetryHandler {
    fn set_queue(&self, queue: Arc<dyn RetryableQueue>) -> Result<()> {
        let mut state = self.state.lock();
        if state.running.is_some() {
            return Err(Error::AlreadyStarted("retry handler"));
        }
        state.queue = Some(Arc::downgrade(&queue));
        Ok(())
    }

    async fn start(&self) -> Result<()> {
        let mut state = self.state.lock();
        if state.running.is_some() {
            return Ok(());
        }
        let queue = state
            .queue
            .clone()
            .ok_or_else(|| Error::invalid("cannot start retry handler without a queue"))?;
        if queue.strong_count() == 0 {
            return Err(Error::invalid(
                "cannot start retry handler: its queue was dropped",
            ));
        }
        let token = CancellationToken::new();
        let worker = Arc::new(Worker {
            options: self.options,
            queue,
            pending: self.receiver.clone(),
            hand_back: self.sender.clone(),
            token: token.clone(),
        });
        let mut workers = JoinSet::new();
        for _ in 0..self.options.num_workers {
            workers.spawn(worker.clone().run());
        }
        state.running = Some(Running { token, workers });
        Ok(())
    }

    fn started(&self) -> bool {
        self.state.lock().running.is_some()
    }

    fn try_put(&self, job: &JobRef) -> Option<Result<()>> {
        Some(match self.sender.try_send(job.clone()) {
            Ok(()) => Ok(()),
            Err(async_channel::TrySendError::Full(_)) => Err(Error::QueueFull {
                id: job.id().to_owned(),
            }),
            Err(async_channel::TrySendError::Closed(_)) => Err(Error::Closed("retry handler")),
        })
    }

    async fn put(&self, job: JobRef) -> Result<()> {
        tracing::debug!(
            amboy.job.id = job.id(),
            job_attempt = job.base().metadata().retry_info.current_attempt,
            pending = self.pending(),
            service = "amboy.queue.retry",
            "put job in the retry handler"
        );
        // A limited buffer makes the caller wait for room; an unlimited one never does.
        self.sender
            .send(job)
            .await
            .map_err(|_| Error::Closed("retry handler"))
    }

    async fn close(&self) {
        let running = self.state.lock().running.take();
        if let Some(mut running) = running {
            running.token.cancel();
            // Joined in a task of its own: should this call be dropped part-way, the workers
            // still hand their jobs back instead of being aborted.
            let joined =
                tokio::spawn(async move { while running.workers.join_next().await.is_some() {} });
            let _ = joined.await;
        }
    }
}

/// What one worker needs; shared by the workers of one start.
struct Worker {
    options: RetryHandlerOptions,
    queue: Weak<dyn RetryableQueue>,
    pending: async_channel::Receiver<JobRef>,
    hand_back: async_channel::Sender<JobRef>,
    token: CancellationToken,
}

/// How the handling of one job ended.
enum Handled {
    /// The next attempt is in the queue.
    Enqueued,
    /// The job cannot be retried.
    Failed(Failure),
    /// The handler is closing.
    Interrupted,
}

/// Why a try, or the whole handling, failed.
struct Failure {
    message: String,
    /// Another try may succeed.
    can_retry: bool,
    /// The job ran out of attempts (logged as a warning, not an error).
    max_attempts: bool,
}

impl Failure {
    fn retryable(message: String) -> Self {
        Failure {
            message,
            can_retry: true,
            max_attempts: false,
        }
    }

    fn fatal(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            can_retry: false,
            max_attempts: false,
        }
    }
}

impl Worker {
    /// Handles jobs until the handler closes. Panics while handling a job are caught where the
    /// job is handled; should the loop itself panic, it starts over, so the pool keeps its size.
    async fn run(self: Arc<Self>) {
        loop {
            match AssertUnwindSafe(self.work()).catch_unwind().await {
                Ok(()) => return,
                Err(panic) => tracing::error!(
                    panic = panic_message(&*panic),
                    service = "amboy.queue.retry",
                    "retry handler worker panicked outside a job; restarting it"
                ),
            }
        }
    }

    async fn work(&self) {
        loop {
            let job = tokio::select! {
                biased;
                _ = self.token.cancelled() => return,
                job = self.pending.recv() => match job {
                    Ok(job) => job,
                    Err(_) => return,
                },
            };
            self.process(job).await;
        }
    }

    /// Retries one job, or records why it cannot be retried and marks it finished retrying.
    async fn process(&self, job: JobRef) {
        let Some(queue) = self.queue.upgrade() else {
            tracing::warn!(
                amboy.job.id = job.id(),
                service = "amboy.queue.retry",
                "the retry handler's queue was dropped; the job will not be retried"
            );
            return;
        };
        let started_at = Instant::now();
        let (received, original) = {
            let mut meta = job.base().metadata();
            let received = meta.retry_info.clone();
            meta.retry_info.start = Some(Utc::now());
            (received, meta.retry_info.clone())
        };
        let handled = AssertUnwindSafe(self.handle_job(&*queue, &job))
            .catch_unwind()
            .await;
        let failure = match handled {
            Ok(Handled::Enqueued) => {
                tracing::debug!(
                    amboy.queue.id = queue.id(),
                    amboy.job.id = job.id(),
                    duration = ?started_at.elapsed(),
                    service = "amboy.queue.retry",
                    "enqueued the job's next attempt"
                );
                return;
            }
            Ok(Handled::Interrupted) => {
                restore(&job, received);
                self.give_back(job);
                return;
            }
            Ok(Handled::Failed(failure)) => failure,
            Err(panic) => {
                restore(&job, original);
                Failure::fatal(format!(
                    "retry handler panicked: {}",
                    panic_message(&*panic)
                ))
            }
        };
        if failure.max_attempts {
            tracing::warn!(
                amboy.queue.id = queue.id(),
                amboy.job.id = job.id(),
                error = %failure.message,
                service = "amboy.queue.retry",
                "could not retry job"
            );
        } else {
            tracing::error!(
                amboy.queue.id = queue.id(),
                amboy.job.id = job.id(),
                error = %failure.message,
                service = "amboy.queue.retry",
                "could not retry job"
            );
        }
        job.base().add_error(&failure.message);
        // The job could not retry: do not let it retry again.
        match AssertUnwindSafe(self.complete_retrying(&*queue, &job))
            .catch_unwind()
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(
                amboy.queue.id = queue.id(),
                amboy.job.id = job.id(),
                error = %error,
                service = "amboy.queue.retry",
                "failed to mark job retry as processed"
            ),
            Err(panic) => tracing::error!(
                amboy.queue.id = queue.id(),
                amboy.job.id = job.id(),
                panic = panic_message(&*panic),
                service = "amboy.queue.retry",
                "panicked while marking job retry as processed; the job stays retrying in its queue"
            ),
        }
    }

    /// Returns a job whose handling the closing handler interrupted to the buffer, for the next
    /// start. A full buffer leaves the job to its queue's stale-retrying monitor.
    fn give_back(&self, job: JobRef) {
        if let Err(error) = self.hand_back.try_send(job) {
            let job = error.into_inner();
            tracing::warn!(
                amboy.job.id = job.id(),
                service = "amboy.queue.retry",
                "retry handler closed while retrying a job and its buffer is full; the job stays retrying in its queue"
            );
        }
    }

    /// amboy's `handleJob`: tries to enqueue the next attempt until a try succeeds, a failure
    /// is final, the tries or the time run out, or the handler closes.
    async fn handle_job(&self, queue: &dyn RetryableQueue, job: &JobRef) -> Handled {
        let options = &self.options;
        let started_at = Instant::now();
        let mut errors = Vec::new();
        for attempt in 1..=options.max_retry_attempts {
            if attempt > 1 && !options.retry_backoff.is_zero() {
                tokio::select! {
                    biased;
                    _ = self.token.cancelled() => return Handled::Interrupted,
                    _ = tokio::time::sleep(options.retry_backoff) => {}
                }
            }
            // No try starts once the time is up.
            if started_at.elapsed() > options.max_retry_time {
                errors.push(format!(
                    "giving up after {:?} ({} tries) due to exceeding maximum allowed retry time",
                    options.max_retry_time,
                    attempt - 1
                ));
                return Handled::Failed(Failure::fatal(errors.join("; ")));
            }
            let original = job.base().metadata().retry_info.clone();
            let result = tokio::select! {
                biased;
                _ = self.token.cancelled() => return Handled::Interrupted,
                result = try_enqueue(queue, job, &original) => result,
            };
            let Err(failure) = result else {
                return Handled::Enqueued;
            };
            // The queue may have changed the old attempt before failing.
            restore(job, original);
            tracing::debug!(
                amboy.queue.id = queue.id(),
                amboy.job.id = job.id(),
                error = %failure.message,
                attempt,
                max_attempts = options.max_retry_attempts,
                retry_time = ?started_at.elapsed(),
                can_retry = failure.can_retry,
                service = "amboy.queue.retry",
                "failed to enqueue job retry"
            );
            errors.push(format!(
                "enqueue retry job attempt {attempt}: {}",
                failure.message
            ));
            if !failure.can_retry {
                return Handled::Failed(Failure {
                    message: errors.join("; "),
                    ..failure
                });
            }
        }
        Handled::Failed(Failure::fatal(format!(
            "exhausted all {} attempts to enqueue retry job without success: {}",
            options.max_retry_attempts,
            errors.join("; ")
        )))
    }

    /// amboy's `completeRetrying`: marks a job that cannot retry as finished retrying, calling
    /// the queue up to 10 times a second apart; a job-not-found error or closing ends it early.
    async fn complete_retrying(
        &self,
        queue: &dyn RetryableQueue,
        job: &JobRef,
    ) -> Result<(), String> {
        let mut last_error = None;
        for attempt in 1..=COMPLETE_RETRYING_ATTEMPTS {
            if attempt > 1 {
                tokio::select! {
                    biased;
                    _ = self.token.cancelled() => {
                        return Err(giving_up(attempt - 1, last_error, "retry handler closed"));
                    }
                    _ = tokio::time::sleep(COMPLETE_RETRYING_INTERVAL) => {}
                }
            }
            let result = tokio::select! {
                biased;
                _ = self.token.cancelled() => {
                    return Err(giving_up(attempt, last_error, "retry handler closed"));
                }
                result = queue.complete_retrying(job) => result,
            };
            match result {
                Ok(()) => return Ok(()),
                Err(error) if error.is_job_not_found() => {
                    return Err(format!("giving up after attempt {attempt}: {error}"));
                }
                Err(error) => {
                    tracing::debug!(
                        amboy.queue.id = queue.id(),
                        amboy.job.id = job.id(),
                        error = %error,
                        attempt,
                        service = "amboy.queue.retry",
                        "failed to mark retrying job as completed"
                    );
                    last_error = Some(error);
                }
            }
        }
        Err(giving_up(
            COMPLETE_RETRYING_ATTEMPTS,
            last_error,
            "no attempt made",
        ))
    }
}

fn giving_up(attempt: u32, last_error: Option<Error>, otherwise: &str) -> String {
    match last_error {
        Some(error) => format!("giving up after attempt {attempt}: {error}"),
        None => format!("giving up after attempt {attempt}: {otherwise}"),
    }
}

/// amboy's `tryEnqueueJob`: one try at enqueueing the next attempt of `job`, whose retry
/// information was `original` when the try began.
async fn try_enqueue(
    queue: &dyn RetryableQueue,
    job: &JobRef,
    original: &JobRetryInfo,
) -> Result<(), Failure> {
    // The job the handler holds may be outdated: read the stored attempt.
    let stored = queue
        .get_attempt(job.id(), original.current_attempt)
        .await
        .map_err(|error| Failure::retryable(format!("getting job attempt: {error}")))?;
    let stored_info = stored.base().metadata().retry_info.clone();
    if !stored_info.should_retry() {
        return Err(Failure::fatal(
            "job in the queue indicates the job does not need to retry anymore",
        ));
    }
    if original.current_attempt + 1 >= stored_info.max_attempts_or_default() {
        return Err(Failure {
            message: MAX_ATTEMPTS_MESSAGE.to_owned(),
            can_retry: false,
            max_attempts: true,
        });
    }
    if Arc::ptr_eq(&stored, job) {
        return Err(Failure::fatal(
            "the queue returned the retrying job itself rather than a copy, so its next attempt cannot be built from it",
        ));
    }

    let info = queue.info();
    let owner: Arc<str> = Arc::from(queue.id());
    let modified = job.base().metadata().status.modification_time;
    if let Some(modified) = modified
        && (Utc::now() - modified).to_std().unwrap_or_default() > info.lock_timeout
    {
        tracing::debug!(
            amboy.queue.id = queue.id(),
            amboy.job.id = job.id(),
            stale_mod_time = %modified,
            service = "amboy.queue.retry",
            "received stale retrying job"
        );
    }
    // Lock the job so that this handler alone owns the old attempt.
    let unlocked = job.base().metadata().status.lock_state();
    job.lock(&owner, info.lock_timeout)
        .map_err(|error| Failure::fatal(format!("locking job: {error}")))?;
    if let Err(error) = queue.save(job).await {
        // Someone else holds the old attempt (not this handler's to retry), or the queue
        // closed.
        if error.is_job_not_found() || matches!(error, Error::Locked { .. } | Error::Closed(_)) {
            return Err(Failure::fatal(format!("saving job lock: {error}")));
        }
        // Not stored (the store was unreachable, say): the lock taken in memory is given
        // back, unless the copy moved on since, so that the next try takes it again from the
        // stored state.
        job.base().metadata().status.restore_lock(unlocked);
        return Err(Failure::retryable(format!("saving job lock: {error}")));
    }

    stored
        .base()
        .metadata()
        .prepare_attempt(original.current_attempt + 1, Utc::now());
    let job_type = amboy_core::metrics::ENABLED.then(|| job.job_type().name);
    match queue.complete_retrying_and_put(job, stored).await {
        Ok(()) => {
            if let Some(job_type) = job_type {
                amboy_core::metrics::job_retried(queue.id(), &job_type);
            }
            Ok(())
        }
        Err(error) if error.is_duplicate_job() || error.is_job_not_found() => {
            Err(Failure::fatal(format!("enqueueing retry job: {error}")))
        }
        Err(error) => Err(Failure::retryable(format!("enqueueing retry job: {error}"))),
    }
}

/// Puts the retry information of `job` back as it was.
fn restore(job: &JobRef, retry_info: JobRetryInfo) {
    job.base().metadata().retry_info = retry_info;
}

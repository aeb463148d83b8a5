//! Periodic queue operations (amboy's `IntervalQueueOperation` family): run an operation on a
//! queue, or on queues of a group, at a fixed interval aligned to a start time.
//!
//! A [`QueueOperation`] does something to a queue, typically putting jobs; the factories build the
//! common ones ([`schedule_job`], [`schedule_many_jobs`], [`schedule_jobs_from_generator`],
//! [`group_queue_operations`]). [`interval_queue_operation`] and
//! [`interval_group_queue_operation`] run operations in a background task on every tick and
//! return a [`PeriodicHandle`] that stops the task (also when dropped) and says why it ended.
//!
//! amboy's behaviour is kept: the first run waits for the first tick aligned to `start_at`, a
//! queue with more pending jobs than the threshold is left alone, duplicate-job errors are
//! ignored unless asked for, and an error stops the scheduler unless `continue_on_error` is set.
//! These are fixed or made explicit: a generator-fed operation ends when its stream ends; an
//! interval of a microsecond or less is an error returned at once (amboy logged it and did
//! nothing); a panic in an operation is caught and treated as that run's error, so with
//! `continue_on_error` the next tick runs as usual (amboy restarted the whole scheduler).

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use futures::future::BoxFuture;
use futures::{FutureExt, Stream};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{Error, JobRef, Queue, QueueGroup, Result, collate_write_errors, panic_message};

/// The shortest interval a periodic operation accepts is anything above this.
const MIN_INTERVAL: Duration = Duration::from_micros(1);

const NANOS_PER_SEC: u128 = 1_000_000_000;

type OperationFn = dyn Fn(Arc<dyn Queue>) -> BoxFuture<'static, Result<()>> + Send + Sync;

/// An asynchronous operation on a queue (amboy's `QueueOperation`), typically putting jobs.
///
/// Cloning is cheap: clones share the operation.
///
/// ```
/// use amboy_core::QueueOperation;
///
/// let op = QueueOperation::new(|queue| async move {
///     let stats = queue.stats().await?;
///     tracing::info!(pending = stats.pending, "queue checked");
///     Ok(())
/// });
/// # let _ = op;
/// ```
#[derive(Clone)]
pub struct QueueOperation(Arc<OperationFn>);

impl QueueOperation {
    /// Wraps an async closure taking the queue.
    pub fn new<F, Fut>(op: F) -> Self
    where
        F: Fn(Arc<dyn Queue>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        QueueOperation(Arc::new(move |queue| op(queue).boxed()))
    }

    /// Runs the operation once on `queue`.
    pub fn run(&self, queue: Arc<dyn Queue>) -> BoxFuture<'static, Result<()>> {
        (self.0)(queue)
    }
}

impl fmt::Debug for QueueOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueOperation").finish_non_exhaustive()
    }
}

/// An operation putting the job `job` builds on each run (amboy's `ScheduleJobFactory`).
pub fn schedule_job<F>(job: F) -> QueueOperation
where
    F: Fn() -> JobRef + Send + Sync + 'static,
{
    QueueOperation::new(move |queue| {
        let job = job();
        async move { queue.put(job).await }
    })
}

/// An operation putting every job `jobs` builds on each run, one by one, carrying on past
/// failures; the failures are collated with [`collate_write_errors`], so the run's error is a
/// duplicate only if every failure was one (amboy's `ScheduleManyJobsFactory`).
pub fn schedule_many_jobs<F>(jobs: F) -> QueueOperation
where
    F: Fn() -> Vec<JobRef> + Send + Sync + 'static,
{
    QueueOperation::new(move |queue| {
        let jobs = jobs();
        async move {
            let mut errors = Vec::new();
            for job in jobs {
                if let Err(error) = queue.put(job).await {
                    errors.push(error);
                }
            }
            collate_write_errors(errors)
        }
    })
}

/// An operation putting every job of the stream `generator` builds on each run, until the stream
/// ends; the failures are collated (amboy's `ScheduleJobsFromGeneratorFactory`).
///
/// The run ends when the stream does (amboy kept reading a closed channel until its context
/// ended). A tokio channel becomes a stream with [`futures::stream::unfold`]:
///
/// ```
/// use amboy_core::{JobRef, schedule_jobs_from_generator};
///
/// let op = schedule_jobs_from_generator(|| {
///     let (tx, rx) = tokio::sync::mpsc::channel::<JobRef>(16);
///     // Hand `tx` to a producer; the run ends once every sender is dropped.
///     drop(tx);
///     futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|job| (job, rx)) })
/// });
/// # let _ = op;
/// ```
pub fn schedule_jobs_from_generator<F, S>(generator: F) -> QueueOperation
where
    F: Fn() -> S + Send + Sync + 'static,
    S: Stream<Item = JobRef> + Send + 'static,
{
    QueueOperation::new(move |queue| {
        let jobs = generator();
        async move { crate::populate_queue(&*queue, jobs).await }
    })
}

/// An operation running `first` and then each of `rest` in order, carrying on past failures;
/// the failures are collated with [`collate_write_errors`] (amboy's
/// `GroupQueueOperationFactory`).
pub fn group_queue_operations(
    first: QueueOperation,
    rest: impl IntoIterator<Item = QueueOperation>,
) -> QueueOperation {
    let ops: Arc<[QueueOperation]> = std::iter::once(first).chain(rest).collect();
    QueueOperation::new(move |queue| {
        let ops = Arc::clone(&ops);
        async move {
            let mut errors = Vec::new();
            for op in ops.iter() {
                if let Err(error) = op.run(Arc::clone(&queue)).await {
                    errors.push(error);
                }
            }
            collate_write_errors(errors)
        }
    })
}

/// How a periodic scheduler treats its runs (amboy's `QueueOperationConfig`, with its field
/// names).
///
/// ```
/// use amboy_core::QueueOperationConfig;
///
/// let config = QueueOperationConfig {
///     continue_on_error: true,
///     log_errors: true,
///     ..Default::default()
/// };
/// # let _ = config;
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct QueueOperationConfig {
    /// Keep scheduling after a run fails or panics; otherwise the first failure stops the
    /// scheduler.
    pub continue_on_error: bool,
    /// Log failures: as warnings when continuing, as errors when stopping.
    pub log_errors: bool,
    /// Log skipped runs and the scheduler's exit.
    pub debug_logging: bool,
    /// Skip a run while the queue has more than [`threshold`](Self::threshold) pending jobs.
    pub respect_threshold: bool,
    /// Treat duplicate-job errors as failures; by default they are ignored.
    #[serde(rename = "enable_duplicate_reporting")]
    pub enable_duplicate_job_reporting: bool,
    /// The most pending jobs a queue may have for a run to go ahead, when
    /// [`respect_threshold`](Self::respect_threshold) is set.
    pub threshold: usize,
}

/// A predicate deciding, on each tick, whether a [`GroupQueueOperation`] runs.
pub type GroupQueueCheck = Arc<dyn Fn() -> bool + Send + Sync>;

/// An operation on one queue of a [`QueueGroup`] (amboy's `GroupQueueOperation`).
#[derive(Clone)]
pub struct GroupQueueOperation {
    /// The operation to run.
    pub operation: QueueOperation,
    /// The name of the group's queue to run it on; the queue is created if it does not exist.
    pub queue: String,
    /// Runs the operation on a tick only if this returns true; `None` runs it on every tick.
    pub check: Option<GroupQueueCheck>,
}

impl GroupQueueOperation {
    /// An operation on the group's queue `queue`, run on every tick.
    pub fn new(queue: impl Into<String>, operation: QueueOperation) -> Self {
        GroupQueueOperation {
            operation,
            queue: queue.into(),
            check: None,
        }
    }

    /// Runs the operation only on ticks where `check` returns true.
    pub fn with_check(mut self, check: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        self.check = Some(Arc::new(check));
        self
    }
}

impl fmt::Debug for GroupQueueOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupQueueOperation")
            .field("queue", &self.queue)
            .field("check", &self.check.is_some())
            .finish_non_exhaustive()
    }
}

/// The background task of a periodic operation.
///
/// Dropping the handle stops the task, as does [`stop`](Self::stop); [`detach`](Self::detach)
/// lets it run on. [`join`](Self::join) and [`stop`](Self::stop) say why it ended: `Ok` when it
/// was stopped, the error of the run that stopped it otherwise.
#[derive(Debug)]
pub struct PeriodicHandle {
    token: CancellationToken,
    /// `None` once detached, so that dropping the handle leaves the task running.
    task: Option<JoinHandle<Result<()>>>,
}

impl PeriodicHandle {
    /// Whether the scheduler is still running.
    pub fn is_running(&self) -> bool {
        self.task.as_ref().is_some_and(|task| !task.is_finished())
    }

    /// Asks the scheduler to stop without waiting for it; a run in progress is dropped.
    pub fn cancel(&self) {
        self.token.cancel();
    }

    /// Stops the scheduler and waits for it to end. `Ok` unless a run's error had stopped it
    /// before.
    pub async fn stop(self) -> Result<()> {
        self.token.cancel();
        self.join().await
    }

    /// Waits for the scheduler to end on its own: `Ok` once it is stopped, the run's error if a
    /// failure (or, without `continue_on_error`, a panic) stopped it. Dropping the returned
    /// future drops the handle and so stops the scheduler.
    pub async fn join(mut self) -> Result<()> {
        let Some(task) = self.task.as_mut() else {
            return Ok(());
        };
        match task.await {
            Ok(result) => result,
            Err(error) => Err(Error::Backend {
                message: format!("periodic scheduler task failed: {error}"),
                source: None,
            }),
        }
    }

    /// Lets the scheduler run on without the handle; the returned token stops it.
    pub fn detach(mut self) -> CancellationToken {
        self.task = None;
        self.token.clone()
    }
}

impl Drop for PeriodicHandle {
    fn drop(&mut self) {
        if self.task.is_some() {
            self.token.cancel();
        }
    }
}

/// The first tick of a schedule aligned to `start_at` (amboy's `waitUntilInterval`): `start_at`
/// itself if it is not before `now`, else `start_at` advanced by the fewest whole intervals that
/// make it not before `now`.
///
/// A zero interval cannot be stepped by, so it gives `now` (amboy looped forever); a tick too far
/// ahead to be represented gives [`DateTime::<Utc>::MAX_UTC`].
///
/// ```
/// use std::time::Duration;
///
/// use amboy_core::next_aligned_start;
/// use chrono::{TimeDelta, Utc};
///
/// let now = Utc::now();
/// let hour = Duration::from_secs(3600);
/// let start = now - TimeDelta::minutes(150);
/// assert_eq!(next_aligned_start(start, hour, now), now + TimeDelta::minutes(30));
/// ```
pub fn next_aligned_start(
    start_at: DateTime<Utc>,
    interval: Duration,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    if start_at >= now {
        return start_at;
    }
    if interval.is_zero() {
        return now;
    }
    // `start_at < now`, so the difference is positive and converts.
    let behind = (now - start_at).to_std().unwrap_or_default();
    catch_up(behind, interval)
        .and_then(|advance| TimeDelta::from_std(advance).ok())
        .and_then(|advance| start_at.checked_add_signed(advance))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The fewest whole `interval`s (non-zero) covering `behind`, as one duration; `None` if it does
/// not fit in a [`Duration`].
fn catch_up(behind: Duration, interval: Duration) -> Option<Duration> {
    let step = interval.as_nanos();
    let nanos = behind.as_nanos().div_ceil(step).checked_mul(step)?;
    let secs = u64::try_from(nanos / NANOS_PER_SEC).ok()?;
    // The remainder is below a billion.
    Some(Duration::new(secs, (nanos % NANOS_PER_SEC) as u32))
}

/// The tick following `previous`: one interval later, or the first later aligned tick not
/// before `now` if runs overran (missed ticks are skipped, not made up). `None`: never.
fn following_tick(previous: Instant, interval: Duration, now: Instant) -> Option<Instant> {
    let next = previous.checked_add(interval)?;
    if next >= now {
        return Some(next);
    }
    next.checked_add(catch_up(now - next, interval)?)
}

/// The instant of the first tick, converting the wall-clock `start_at` to the runtime's clock
/// once, so that the schedule follows tokio's clock (paused in tests) from then on.
fn first_tick(start_at: DateTime<Utc>, interval: Duration) -> Option<Instant> {
    let wall = Utc::now();
    let now = Instant::now();
    let delay = (next_aligned_start(start_at, interval, wall) - wall)
        .to_std()
        .unwrap_or_default();
    now.checked_add(delay)
}

fn check_interval(interval: Duration) -> Result<()> {
    if interval <= MIN_INTERVAL {
        return Err(Error::invalid(format!(
            "interval for queue operation must be greater than a microsecond, not {interval:?}"
        )));
    }
    Ok(())
}

/// Runs `op` on `queue` once, unless the threshold says to skip it (amboy's `scheduleOp`,
/// before judging the result).
async fn attempt(
    queue: Arc<dyn Queue>,
    op: &QueueOperation,
    config: &QueueOperationConfig,
) -> Result<()> {
    if config.respect_threshold {
        let pending = queue.stats().await?.pending;
        if pending > config.threshold {
            if config.debug_logging {
                tracing::info!(
                    queue = queue.id(),
                    pending,
                    threshold = config.threshold,
                    "skipping periodic queue operation: too many pending jobs"
                );
            }
            return Ok(());
        }
    }
    op.run(queue).await
}

/// Awaits `run`, turning a panic into the run's error.
async fn caught(run: impl Future<Output = Result<()>>) -> Result<()> {
    match AssertUnwindSafe(run).catch_unwind().await {
        Ok(result) => result,
        Err(payload) => Err(Error::Backend {
            message: format!(
                "periodic queue operation panicked: {}",
                panic_message(&*payload)
            ),
            source: None,
        }),
    }
}

/// What a run's result means for the scheduler: `Ok` to go on, `Err` to stop with it.
fn judge(result: Result<()>, config: &QueueOperationConfig, queue: &str) -> Result<()> {
    let Err(error) = result else {
        return Ok(());
    };
    if error.is_duplicate_job() && !config.enable_duplicate_job_reporting {
        return Ok(());
    }
    if config.continue_on_error {
        if config.log_errors {
            tracing::warn!(queue, error = %error, "periodic queue operation failed");
        }
        Ok(())
    } else {
        if config.log_errors {
            tracing::error!(
                queue,
                error = %error,
                "periodic queue operation failed; stopping the scheduler"
            );
        }
        Err(error)
    }
}

/// The scheduler loop: waits for each tick, runs `tick`, stops when cancelled or when a run
/// returns an error.
async fn drive<F, Fut>(
    token: CancellationToken,
    first: Option<Instant>,
    interval: Duration,
    config: QueueOperationConfig,
    kind: &'static str,
    mut tick: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let mut next = first;
    let mut runs: u64 = 0;
    let result = loop {
        let wait = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = token.cancelled() => break Ok(()),
            () = wait => {}
        }
        let outcome = tokio::select! {
            biased;
            () = token.cancelled() => break Ok(()),
            outcome = tick() => outcome,
        };
        runs += 1;
        if let Err(error) = outcome {
            break Err(error);
        }
        next = next.and_then(|at| following_tick(at, interval, Instant::now()));
    };
    if config.debug_logging {
        let reason = if result.is_ok() {
            "operation canceled"
        } else {
            "operation failed"
        };
        tracing::info!(
            num_intervals = runs,
            queue = kind,
            reason,
            "exiting interval job scheduler"
        );
    }
    result
}

fn spawn(
    token: CancellationToken,
    task: impl Future<Output = Result<()>> + Send + 'static,
) -> Result<PeriodicHandle> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
        Error::invalid("periodic queue operations must be started within a tokio runtime")
    })?;
    Ok(PeriodicHandle {
        token,
        task: Some(runtime.spawn(task)),
    })
}

/// Runs `op` on `queue` at every `interval`, starting at the first tick aligned to `start_at`
/// (see [`next_aligned_start`]), in a background task (amboy's `IntervalQueueOperation`).
///
/// On each tick: if [`respect_threshold`](QueueOperationConfig::respect_threshold) is set and the
/// queue has more pending jobs than the threshold, the run is skipped. A failed run (including a
/// failed stats call, and a panic, which is caught) is ignored if it is a duplicate-job error and
/// duplicate reporting is off; otherwise it is logged if asked and, unless
/// [`continue_on_error`](QueueOperationConfig::continue_on_error) is set, stops the scheduler
/// with that error. A run that overruns the interval delays the next one to the following
/// aligned tick; missed ticks are not made up.
///
/// `start_at` is read against the wall clock once, here; from then on the schedule follows
/// tokio's clock. A `start_at` already past (even `Utc::now()` as passed in) is moved to the next
/// aligned tick, so the first run is up to one interval away, as in amboy.
///
/// Fails at once if the interval is a microsecond or less, or if called outside a tokio runtime.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
///
/// use amboy_core::{
///     JobRef, Queue, QueueOperationConfig, interval_queue_operation, schedule_job,
/// };
///
/// fn every_minute(queue: Arc<dyn Queue>, build: fn() -> JobRef) -> amboy_core::Result<()> {
///     let handle = interval_queue_operation(
///         queue,
///         Duration::from_secs(60),
///         chrono::Utc::now(),
///         QueueOperationConfig { continue_on_error: true, ..Default::default() },
///         schedule_job(build),
///     )?;
///     // Keep it running after `handle` goes away; cancel the token to stop it.
///     let _stop = handle.detach();
///     Ok(())
/// }
/// # let _ = every_minute;
/// ```
pub fn interval_queue_operation(
    queue: Arc<dyn Queue>,
    interval: Duration,
    start_at: DateTime<Utc>,
    config: QueueOperationConfig,
    op: QueueOperation,
) -> Result<PeriodicHandle> {
    check_interval(interval)?;
    let first = first_tick(start_at, interval);
    let token = CancellationToken::new();
    let task = drive(
        token.clone(),
        first,
        interval,
        config,
        "single",
        move || {
            let queue = Arc::clone(&queue);
            let op = op.clone();
            async move {
                let name = queue.id().to_owned();
                let result = caught(attempt(queue, &op, &config)).await;
                judge(result, &config, &name)
            }
        },
    );
    spawn(token, task)
}

/// Runs operations on queues of `group` at every `interval`, starting at the first tick aligned
/// to `start_at`, in a background task (amboy's `IntervalGroupQueueOperation`).
///
/// On each tick, every operation whose check is absent or returns true gets its queue with
/// [`QueueGroup::get`] (creating it if need be) and runs as
/// [`interval_queue_operation`] runs its operation: a failure to get the queue, a failed run or a
/// panic is judged by `config` the same way, and one that stops the scheduler skips the
/// remaining operations.
///
/// Fails at once if there are no operations, if the interval is a microsecond or less, or if
/// called outside a tokio runtime.
pub fn interval_group_queue_operation(
    group: Arc<dyn QueueGroup>,
    interval: Duration,
    start_at: DateTime<Utc>,
    config: QueueOperationConfig,
    ops: impl IntoIterator<Item = GroupQueueOperation>,
) -> Result<PeriodicHandle> {
    let ops: Arc<[GroupQueueOperation]> = ops.into_iter().collect();
    if ops.is_empty() {
        return Err(Error::invalid(
            "queue group operation must contain operations",
        ));
    }
    check_interval(interval)?;
    let first = first_tick(start_at, interval);
    let token = CancellationToken::new();
    let task = drive(token.clone(), first, interval, config, "group", move || {
        let group = Arc::clone(&group);
        let ops = Arc::clone(&ops);
        async move {
            for op in ops.iter() {
                let result = caught(async {
                    if op.check.as_ref().is_some_and(|check| !check()) {
                        return Ok(());
                    }
                    let queue = group.get(&op.queue, &[]).await?;
                    attempt(queue, &op.operation, &config).await
                })
                .await;
                judge(result, &config, &op.queue)?;
            }
            Ok(())
        }
    });
    spawn(token, task)
}

/// Compile-time checks that the public types can cross tasks.
#[allow(dead_code)]
fn _periodic_types_are_send_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<QueueOperation>();
    send_sync::<GroupQueueOperation>();
    send_sync::<QueueOperationConfig>();
    send_sync::<PeriodicHandle>();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catch_up_rounds_up_to_whole_intervals() {
        let second = Duration::from_secs(1);
        assert_eq!(catch_up(Duration::from_millis(1), second), Some(second));
        assert_eq!(catch_up(second, second), Some(second));
        assert_eq!(
            catch_up(Duration::from_millis(2500), second),
            Some(3 * second)
        );
        assert_eq!(catch_up(Duration::MAX, Duration::MAX), Some(Duration::MAX));
        assert_eq!(catch_up(Duration::MAX, Duration::from_secs(7)), None);
    }

    #[test]
    fn following_tick_skips_missed_ticks() {
        let start = Instant::now();
        let second = Duration::from_secs(1);
        assert_eq!(
            following_tick(start, second, start + Duration::from_millis(10)),
            Some(start + second)
        );
        assert_eq!(
            following_tick(start, second, start + Duration::from_millis(3500)),
            Some(start + 4 * second)
        );
        assert_eq!(
            following_tick(start, second, start + 3 * second),
            Some(start + 3 * second)
        );
        assert_eq!(following_tick(start, Duration::MAX, start), None);
    }
}

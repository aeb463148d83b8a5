//! Periodic queue operations: alignment of the first tick, one run per interval (on tokio's
//! paused clock), cancellation, threshold, duplicate reporting, continue-on-error, panics,
//! generators that end (fix 6), refused intervals (fix 9), queue groups and the factories.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use amboy_core::{
    Base, Error, GroupQueueOperation, Job, JobContext, JobError, JobInfoStream, JobRef, JobStream,
    LOCK_TIMEOUT, Queue, QueueGroup, QueueInfo, QueueOperation, QueueOperationConfig, QueueOptions,
    QueueStats, Result, Runner, group_queue_operations, interval_group_queue_operation,
    interval_queue_operation, next_aligned_start, schedule_job, schedule_jobs_from_generator,
    schedule_many_jobs,
};
use chrono::{DateTime, TimeDelta, Utc};
use futures::FutureExt as _;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

const INTERVAL: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Test jobs.

#[derive(Serialize, Deserialize)]
struct Tick {
    base: Base,
}

#[typetag::serde(name = "periodic-test-tick")]
#[async_trait::async_trait]
impl Job for Tick {
    fn base(&self) -> &Base {
        &self.base
    }

    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

fn tick(id: impl AsRef<str>) -> JobRef {
    Arc::new(Tick {
        base: Base::with_id(id),
    })
}

/// A job factory giving `<prefix>-0`, `<prefix>-1`, … so that every run puts a new job.
fn numbered(prefix: &'static str) -> impl Fn() -> JobRef + Send + Sync + 'static {
    let next = AtomicUsize::new(0);
    move || tick(format!("{prefix}-{}", next.fetch_add(1, Ordering::SeqCst)))
}

// ---------------------------------------------------------------------------------------------
// A mock queue: records puts, refuses duplicates and chosen IDs, reports a chosen pending count.

struct MockQueue {
    id: String,
    accepted: Mutex<Vec<String>>,
    refused: Mutex<HashSet<String>>,
    put_calls: AtomicUsize,
    pending: AtomicUsize,
}

impl MockQueue {
    fn new(id: &str) -> Arc<Self> {
        Arc::new(MockQueue {
            id: id.to_owned(),
            accepted: Mutex::new(Vec::new()),
            refused: Mutex::new(HashSet::new()),
            put_calls: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
        })
    }

    fn accepted(&self) -> Vec<String> {
        self.accepted.lock().clone()
    }

    fn put_calls(&self) -> usize {
        self.put_calls.load(Ordering::SeqCst)
    }

    /// Puts of this ID fail with an invalid-job error.
    fn refuse(&self, id: &str) {
        self.refused.lock().insert(id.to_owned());
    }

    fn set_pending(&self, pending: usize) {
        self.pending.store(pending, Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl Queue for MockQueue {
    fn id(&self) -> &str {
        &self.id
    }

    async fn put(&self, job: JobRef) -> Result<()> {
        self.put_calls.fetch_add(1, Ordering::SeqCst);
        if self.refused.lock().contains(job.id()) {
            return Err(Error::invalid_job(job.id(), "refused by the mock"));
        }
        let mut accepted = self.accepted.lock();
        if accepted.iter().any(|id| id == job.id()) {
            return Err(Error::duplicate_job(job.id()));
        }
        accepted.push(job.id().to_owned());
        Ok(())
    }

    async fn put_many(&self, jobs: Vec<JobRef>) -> Result<()> {
        let mut errors = Vec::new();
        for job in jobs {
            if let Err(error) = self.put(job).await {
                errors.push(error);
            }
        }
        amboy_core::collate_write_errors(errors)
    }

    async fn get(&self, id: &str) -> Result<JobRef> {
        Err(Error::job_not_found(id))
    }

    async fn next(&self) -> Result<JobRef> {
        Err(Error::Closed("queue"))
    }

    fn info(&self) -> QueueInfo {
        QueueInfo {
            started: true,
            lock_timeout: LOCK_TIMEOUT,
        }
    }

    async fn complete(&self, _job: &JobRef) -> Result<()> {
        Ok(())
    }

    async fn save(&self, job: &JobRef) -> Result<()> {
        Err(Error::job_not_found(job.id()))
    }

    async fn results(&self) -> JobStream {
        Box::pin(futures::stream::empty())
    }

    async fn job_info(&self) -> JobInfoStream {
        Box::pin(futures::stream::empty())
    }

    async fn stats(&self) -> Result<QueueStats> {
        let pending = self.pending.load(Ordering::SeqCst);
        Ok(QueueStats {
            pending,
            total: pending,
            ..QueueStats::default()
        })
    }

    fn runner(&self) -> Option<Arc<dyn Runner>> {
        None
    }

    fn set_runner(&self, _runner: Arc<dyn Runner>) -> Result<()> {
        Ok(())
    }

    async fn start(&self) -> Result<()> {
        Ok(())
    }

    async fn close(&self) {}
}

// ---------------------------------------------------------------------------------------------
// A mock queue group: creates mock queues on demand, records every `get`, fails chosen names.

#[derive(Default)]
struct MockGroup {
    queues: Mutex<HashMap<String, Arc<MockQueue>>>,
    gets: Mutex<Vec<String>>,
    broken: Mutex<HashSet<String>>,
}

impl MockGroup {
    fn queue(&self, id: &str) -> Option<Arc<MockQueue>> {
        self.queues.lock().get(id).cloned()
    }

    fn accepted(&self, id: &str) -> Vec<String> {
        self.queue(id).map(|q| q.accepted()).unwrap_or_default()
    }

    fn gets(&self, id: &str) -> usize {
        self.gets.lock().iter().filter(|name| *name == id).count()
    }
}

#[async_trait::async_trait]
impl QueueGroup for MockGroup {
    async fn get(&self, id: &str, _options: &[Arc<dyn QueueOptions>]) -> Result<Arc<dyn Queue>> {
        self.gets.lock().push(id.to_owned());
        if self.broken.lock().contains(id) {
            return Err(Error::invalid(format!("cannot open queue '{id}'")));
        }
        let queue = self
            .queues
            .lock()
            .entry(id.to_owned())
            .or_insert_with(|| MockQueue::new(id))
            .clone();
        Ok(queue)
    }

    async fn put(&self, id: &str, _queue: Arc<dyn Queue>) -> Result<()> {
        Err(Error::invalid(format!(
            "queue '{id}': the mock group builds its own queues"
        )))
    }

    async fn prune(&self) -> Result<()> {
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }

    fn len(&self) -> usize {
        self.queues.lock().len()
    }

    async fn queues(&self) -> Vec<String> {
        self.queues.lock().keys().cloned().collect()
    }

    fn local_queues(&self) -> Vec<(String, Arc<dyn Queue>)> {
        self.queues
            .lock()
            .iter()
            .map(|(name, queue)| (name.clone(), queue.clone() as Arc<dyn Queue>))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers.

/// An operation counting its runs and returning what `result` gives.
fn counted(
    runs: &Arc<AtomicUsize>,
    result: impl Fn() -> Result<()> + Send + Sync + 'static,
) -> QueueOperation {
    let runs = Arc::clone(runs);
    let result = Arc::new(result);
    QueueOperation::new(move |_queue| {
        runs.fetch_add(1, Ordering::SeqCst);
        let result = Arc::clone(&result);
        async move { result() }
    })
}

fn count(runs: &AtomicUsize) -> usize {
    runs.load(Ordering::SeqCst)
}

/// A start time `ahead` of the wall clock: the first tick comes `ahead` from now on tokio's clock
/// (less the few microseconds the wall clock moves before the scheduler reads it).
fn in_(ahead: Duration) -> DateTime<Utc> {
    Utc::now() + TimeDelta::from_std(ahead).unwrap()
}

/// Lets tokio's paused clock run to `t0 + at`, firing every timer before it in order.
async fn run_until(t0: Instant, at: Duration) {
    tokio::time::sleep_until(t0 + at).await;
}

/// Halfway between tick `n` and tick `n + 1` of a schedule whose first tick is at `INTERVAL`.
fn after_tick(n: u32) -> Duration {
    INTERVAL * n + INTERVAL / 2
}

fn continuing() -> QueueOperationConfig {
    QueueOperationConfig {
        continue_on_error: true,
        log_errors: true,
        ..QueueOperationConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// The alignment of the first tick (amboy's waitUntilInterval).

#[test]
fn a_future_start_is_kept() {
    let now = Utc::now();
    let start = now + TimeDelta::seconds(5);
    assert_eq!(next_aligned_start(start, INTERVAL, now), start);
    assert_eq!(next_aligned_start(now, INTERVAL, now), now);
}

#[test]
fn a_past_start_advances_by_whole_intervals_until_not_before_now() {
    let now = Utc::now();
    let start = now - TimeDelta::seconds(25);
    assert_eq!(
        next_aligned_start(start, INTERVAL, now),
        now + TimeDelta::seconds(5)
    );
    // Exactly one interval behind lands on now, which is not before now.
    let start = now - TimeDelta::seconds(10);
    assert_eq!(next_aligned_start(start, INTERVAL, now), now);
    // Just behind moves a whole interval.
    let start = now - TimeDelta::nanoseconds(1);
    assert_eq!(
        next_aligned_start(start, INTERVAL, now),
        start + TimeDelta::seconds(10)
    );
    // Far behind is computed, not looped.
    let start = now - TimeDelta::days(365 * 1000);
    let aligned = next_aligned_start(start, Duration::from_micros(3), now);
    assert!(aligned >= now && aligned < now + TimeDelta::microseconds(3));
    let advance = aligned - start;
    assert_eq!(advance.num_microseconds().unwrap() % 3, 0);
    assert_eq!(advance.subsec_nanos() % 1000, 0, "whole intervals of 3 µs");
}

#[test]
fn alignment_never_panics_or_spins_on_extreme_intervals() {
    let now = Utc::now();
    let start = now - TimeDelta::seconds(1);
    assert_eq!(next_aligned_start(start, Duration::ZERO, now), now);
    assert_eq!(
        next_aligned_start(start, Duration::MAX, now),
        DateTime::<Utc>::MAX_UTC
    );
}

#[tokio::test(start_paused = true)]
async fn the_first_run_waits_for_a_future_start() {
    let t0 = Instant::now();
    let queue = MockQueue::new("q");
    let runs = Arc::new(AtomicUsize::new(0));
    let handle = interval_queue_operation(
        queue,
        INTERVAL,
        in_(Duration::from_secs(25)),
        QueueOperationConfig::default(),
        counted(&runs, || Ok(())),
    )
    .unwrap();

    run_until(t0, Duration::from_secs(24)).await;
    assert_eq!(count(&runs), 0);
    run_until(t0, Duration::from_secs(26)).await;
    assert_eq!(count(&runs), 1);
    run_until(t0, Duration::from_secs(36)).await;
    assert_eq!(count(&runs), 2);
    handle.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_past_start_runs_first_at_the_next_aligned_tick() {
    let t0 = Instant::now();
    let queue = MockQueue::new("q");
    let runs = Arc::new(AtomicUsize::new(0));
    let start = Utc::now() - TimeDelta::seconds(25);
    let handle = interval_queue_operation(
        queue,
        INTERVAL,
        start,
        QueueOperationConfig::default(),
        counted(&runs, || Ok(())),
    )
    .unwrap();

    run_until(t0, Duration::from_secs(4)).await;
    assert_eq!(count(&runs), 0, "the next aligned tick is 5 s away");
    run_until(t0, Duration::from_secs(6)).await;
    assert_eq!(count(&runs), 1);
    run_until(t0, Duration::from_secs(14)).await;
    assert_eq!(count(&runs), 1);
    run_until(t0, Duration::from_secs(16)).await;
    assert_eq!(count(&runs), 2);
    handle.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Ticks, cancellation and the handle.

#[tokio::test(start_paused = true)]
async fn the_operation_runs_once_per_interval() {
    let t0 = Instant::now();
    let queue = MockQueue::new("q");
    let handle = interval_queue_operation(
        queue.clone(),
        INTERVAL,
        in_(INTERVAL),
        QueueOperationConfig::default(),
        schedule_job(numbered("every")),
    )
    .unwrap();

    run_until(t0, INTERVAL / 2).await;
    assert_eq!(queue.put_calls(), 0);
    for n in 1..=12 {
        run_until(t0, after_tick(n)).await;
        assert_eq!(queue.put_calls(), n as usize, "after tick {n}");
    }
    assert!(handle.is_running());
    assert_eq!(queue.accepted().len(), 12);
    assert_eq!(queue.accepted()[11], "every-11");
    handle.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn stopping_before_the_first_tick_runs_nothing_and_returns_at_once() {
    let t0 = Instant::now();
    let runs = Arc::new(AtomicUsize::new(0));
    let handle = interval_queue_operation(
        MockQueue::new("q"),
        INTERVAL,
        in_(Duration::from_secs(3600)),
        QueueOperationConfig::default(),
        counted(&runs, || Ok(())),
    )
    .unwrap();
    assert!(handle.is_running());

    handle.stop().await.unwrap();
    assert_eq!(Instant::now(), t0, "stop did not wait for the tick");
    run_until(t0, Duration::from_secs(7200)).await;
    assert_eq!(count(&runs), 0);
}

#[tokio::test(start_paused = true)]
async fn cancel_stops_the_scheduler_without_consuming_the_handle() {
    let t0 = Instant::now();
    let runs = Arc::new(AtomicUsize::new(0));
    let handle = interval_queue_operation(
        MockQueue::new("q"),
        INTERVAL,
        in_(INTERVAL),
        QueueOperationConfig::default(),
        counted(&runs, || Ok(())),
    )
    .unwrap();
    run_until(t0, after_tick(2)).await;
    assert!(handle.is_running());

    handle.cancel();
    for _ in 0..100 {
        if !handle.is_running() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(!handle.is_running());
    run_until(t0, after_tick(10)).await;
    assert_eq!(count(&runs), 2);
    handle.join().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn dropping_the_handle_stops_the_scheduler() {
    let t0 = Instant::now();
    let runs = Arc::new(AtomicUsize::new(0));
    let handle = interval_queue_operation(
        MockQueue::new("q"),
        INTERVAL,
        in_(INTERVAL),
        QueueOperationConfig::default(),
        counted(&runs, || Ok(())),
    )
    .unwrap();
    run_until(t0, after_tick(1)).await;
    drop(handle);
    run_until(t0, after_tick(10)).await;
    assert_eq!(count(&runs), 1);
}

#[tokio::test(start_paused = true)]
async fn a_detached_scheduler_runs_until_its_token_is_cancelled() {
    let t0 = Instant::now();
    let runs = Arc::new(AtomicUsize::new(0));
    let handle = interval_queue_operation(
        MockQueue::new("q"),
        INTERVAL,
        in_(INTERVAL),
        QueueOperationConfig::default(),
        counted(&runs, || Ok(())),
    )
    .unwrap();
    let token = handle.detach();
    run_until(t0, after_tick(3)).await;
    assert_eq!(count(&runs), 3);
    token.cancel();
    run_until(t0, after_tick(10)).await;
    assert_eq!(count(&runs), 3);
}

#[tokio::test(start_paused = true)]
async fn stopping_drops_a_run_in_progress() {
    let t0 = Instant::now();
    let started = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let op = {
        let started = Arc::clone(&started);
        let finished = Arc::clone(&finished);
        QueueOperation::new(move |_queue| {
            let started = Arc::clone(&started);
            let finished = Arc::clone(&finished);
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(3600)).await;
                finished.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
    };
    let handle = interval_queue_operation(
        MockQueue::new("q"),
        INTERVAL,
        in_(INTERVAL),
        QueueOperationConfig::default(),
        op,
    )
    .unwrap();
    run_until(t0, after_tick(1)).await;
    assert_eq!(count(&started), 1);

    let before = Instant::now();
    handle.stop().await.unwrap();
    assert_eq!(Instant::now(), before);
    assert_eq!(count(&finished), 0);
}

#[tokio::test(start_paused = true)]
async fn an_overrunning_run_skips_the_missed_ticks() {
    let t0 = Instant::now();
    let runs = Arc::new(AtomicUsize::new(0));
    let op = {
        let runs = Arc::clone(&runs);
        QueueOperation::new(move |_queue| {
            runs.fetch_add(1, Ordering::SeqCst);
            // Two and a half intervals.
            tokio::time::sleep(Duration::from_secs(25)).map(Ok)
        })
    };
    let handle = interval_queue_operation(
        MockQueue::new("q"),
        INTERVAL,
        in_(INTERVAL),
        QueueOperationConfig::default(),
        op,
    )
    .unwrap();

    // Runs start at 10 s (ends 35 s), 40 s (ends 65 s), 70 s: ticks 20 s, 30 s, 50 s, 60 s are
    // skipped, not made up in a burst.
    run_until(t0, Duration::from_secs(11)).await;
    assert_eq!(count(&runs), 1);
    run_until(t0, Duration::from_secs(39)).await;
    assert_eq!(count(&runs), 1);
    run_until(t0, Duration::from_secs(41)).await;
    assert_eq!(count(&runs), 2);
    run_until(t0, Duration::from_secs(69)).await;
    assert_eq!(count(&runs), 2);
    run_until(t0, Duration::from_secs(71)).await;
    assert_eq!(count(&runs), 3);
    handle.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Duplicate reporting and continue-on-error (amboy's scheduleOp).

#[tokio::test(start_paused = true)]
async fn duplicate_errors_are_ignored_by_default() {
    let t0 = Instant::now();
    let queue = MockQueue::new("q");
    let handle = interval_queue_operation(
        queue.clone(),
        INTERVAL,
        in_(INTERVAL),
        QueueOperationConfig::default(),
        schedule_job(|| tick("same-every-time")),
    )
    .unwrap();

    run_until(t0, after_tick(4)).await;
    assert_eq!(
        queue.put_calls(),
        4,
        "duplicates did not stop the scheduler"
    );
    assert_eq!(queue.accepted(), ["same-every-time"]);
    assert!(handle.is_running());
    handle.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn reported_duplicate_errors_stop_the_scheduler() {
    let t0 = Instant::now();
    let queue = MockQueue::new("q");
    let config = QueueOperationConfig {
        enable_duplicate_job_reporting: true,
        log_errors: true,
        ..QueueOperationConfig::default()
    };
    let handle = interval_queue_operation(
        queue.clone(),
        INTERVAL,
        in_(INTERVAL),
        config,
        schedule_job(|| tick("same-every-time")),
    )
    .unwrap();

    run_until(t0, after_tick(4)).await;
    assert_eq!(queue.put_calls(), 2, "the second put failed and stopped it");
    assert!(!handle.is_running());
    let error = handle.join().await.unwrap_err();
    assert!(error.is_duplicate_job());
    assert_eq!(
        error.to_string(),
        "cannot enqueue duplicate job 'same-every-time'"
    );
}

#[tokio::test(start_paused = true)]
async fn reported_duplicate_errors_with_continue_on_error_keep_scheduling() {
    let t0 = Instant::now();
    let queue = MockQueue::new("q");
    let config = QueueOperationConfig {
        enable_duplicate_job_reporting: true,
        ..continuing()
    };
    let handle = interval_queue_operation(
        queue.clone(),
        INTERVAL,
        in_(INTERVAL),
        config,
        schedule_job(|| tick("same-every-time")),
    )
    .unwrap();

    run_until(t0, after_tick(4)).await;
    assert_eq!(queue.put_calls(), 4);
    handle.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_error_stops_the_scheduler_without_continue_on_error() {
    let t0 = Instant::now();
    let runs = Arc::new(AtomicUsize::new(0));
    let handle = interval_queue_operation(
        MockQueue::new("q"),
        INTERVAL,
        in_(INTERVAL),
        QueueOperationConfig {
            log_errors: true,
            ..QueueOperationConfig::default()
        },
        counted(&runs, || Err(Error::invalid("boom"))),
    )
    .unwrap();

    run_until(t0, after_tick(5)).await;
    assert_eq!(count(&runs), 1);
    assert!(!handle.is_running());
    let error = handle.stop().await.unwrap_err();
    assert_eq!(error.to_string(), "invalid: boom");
}

#[tokio::test(start_paused = true)]
async fn continue_on_error_keeps_scheduling_after_errors() {
    let t0 = Instant::now();
    let runs = Arc::new(AtomicUsize::new(0));
    let handle = interval_queue_operation(
        MockQueue::new("q"),
        INTERVAL,
        in_(INTERVAL),
        continuing(),
        counted(&runs, || Err(Error::invalid("boom"))),
    )
    .unwrap();

    run_until(t0, after_tick(5)).await;
    assert_eq!(count(&runs), 5);
    assert!(handle.is_running());
    handle.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Threshold.

#[tokio::test(start_paused = true)]
async fn runs_are_skipped_while_more_jobs_than_the_threshold_are_pending() {
    let t0 = Instant::now();
    let queue = MockQueue::new("q");
    queue.set_pending(5);
    let runs = Arc::new(AtomicUsize::new(0));
    let config = QueueOperationConfig {
        respect_threshold: true,
        threshold: 3,
        debug_logging: true,
        ..QueueOperationConfig::default()
    };
    let handle = interval_queue_operation(
        queue.clone(),
        INTERVAL,
        in_(INTERVAL),
        config,
        counted(&runs, || Ok(())),
    )
    .unwrap();

    run_until(t0, after_tick(2)).await;
    assert_eq!(count(&runs), 0, "5 pending > 3");
    queue.set_pending(3);
    run_until(t0, after_tick(3)).await;
    assert_eq!(count(&runs), 1, "3 pending is not above the threshold");
    queue.set_pending(4);
    run_until(t0, after_tick(4)).await;
    assert_eq!(count(&runs), 1);
    queue.set_pending(0);
    run_until(t0, after_tick(5)).await;
    assert_eq!(count(&runs), 2);
    assert!(handle.is_running());
    handle.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_threshold_is_ignored_unless_respected() {
    let t0 = Instant::now();
    let queue = MockQueue::new("q");
    queue.set_pending(100);
    let runs = Arc::new(AtomicUsize::new(0));
    let config = QueueOperationConfig {
        threshold: 3,
        ..QueueOperationConfig::default()
    };
    let handle = interval_queue_operation(
        queue,
        INTERVAL,
        in_(INTERVAL),
        config,
        counted(&runs, || Ok(())),
    )
    .unwrap();

    run_until(t0, after_tick(3)).await;
    assert_eq!(count(&runs), 3);
    handle.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Panics.

#[tokio::test(start_paused = true)]
async fn a_panic_with_continue_on_error_keeps_scheduling() {
    let t0 = Instant::now();
    let runs = Arc::new(AtomicUsize::new(0));
    let handle = interval_queue_operation(
        MockQueue::new("q"),
        INTERVAL,
        in_(INTERVAL),
        continuing(),
        counted(&runs, || panic!("the operation blew up")),
    )
    .unwrap();

    run_until(t0, after_tick(4)).await;
    assert_eq!(count(&runs), 4, "one run per tick, panics and all");
    assert!(handle.is_running());
    handle.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_panic_while_building_the_run_is_caught_too() {
    let t0 = Instant::now();
    let runs = Arc::new(AtomicUsize::new(0));
    let op = {
        let runs = Arc::clone(&runs);
        // Panics in the closure itself, before any future exists.
        QueueOperation::new(move |_queue| -> std::future::Ready<Result<()>> {
            runs.fetch_add(1, Ordering::SeqCst);
            panic!("no future for you")
        })
    };
    let handle = interval_queue_operation(
        MockQueue::new("q"),
        INTERVAL,
        in_(INTERVAL),
        continuing(),
        op,
    )
    .unwrap();

    run_until(t0, after_tick(3)).await;
    assert_eq!(count(&runs), 3);
    assert!(handle.is_running());
    handle.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_panic_without_continue_on_error_stops_the_scheduler() {
    let t0 = Instant::now();
    let runs = Arc::new(AtomicUsize::new(0));
    let handle = interval_queue_operation(
        MockQueue::new("q"),
        INTERVAL,
        in_(INTERVAL),
        QueueOperationConfig::default(),
        counted(&runs, || panic!("the operation blew up")),
    )
    .unwrap();

    run_until(t0, after_tick(4)).await;
    assert_eq!(count(&runs), 1);
    assert!(!handle.is_running());
    let error = handle.join().await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "periodic queue operation panicked: the operation blew up"
    );
}

// ---------------------------------------------------------------------------------------------
// Refused arguments (fix 9: no panic, no spin).

#[tokio::test(start_paused = true)]
async fn intervals_of_a_microsecond_or_less_are_refused() {
    for interval in [
        Duration::ZERO,
        Duration::from_nanos(1),
        Duration::from_micros(1),
    ] {
        let error = interval_queue_operation(
            MockQueue::new("q"),
            interval,
            Utc::now(),
            QueueOperationConfig::default(),
            counted(&Arc::new(AtomicUsize::new(0)), || Ok(())),
        )
        .unwrap_err();
        assert!(matches!(error, Error::Invalid(_)), "{error}");
        assert!(
            error
                .to_string()
                .contains("interval for queue operation must be greater than a microsecond"),
            "{error}"
        );
    }

    let handle = interval_queue_operation(
        MockQueue::new("q"),
        Duration::from_nanos(1001),
        Utc::now(),
        QueueOperationConfig::default(),
        counted(&Arc::new(AtomicUsize::new(0)), || Ok(())),
    )
    .unwrap();
    handle.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_huge_interval_neither_panics_nor_runs_twice() {
    let t0 = Instant::now();
    let runs = Arc::new(AtomicUsize::new(0));
    let handle = interval_queue_operation(
        MockQueue::new("q"),
        Duration::MAX,
        in_(INTERVAL),
        QueueOperationConfig::default(),
        counted(&runs, || Ok(())),
    )
    .unwrap();

    run_until(t0, Duration::from_secs(365 * 24 * 3600)).await;
    assert_eq!(count(&runs), 1);
    assert!(handle.is_running());
    handle.stop().await.unwrap();
}

#[test]
fn starting_outside_a_runtime_is_an_error() {
    let error = interval_queue_operation(
        MockQueue::new("q"),
        INTERVAL,
        Utc::now(),
        QueueOperationConfig::default(),
        counted(&Arc::new(AtomicUsize::new(0)), || Ok(())),
    )
    .unwrap_err();
    assert!(error.to_string().contains("tokio runtime"), "{error}");
}

// ---------------------------------------------------------------------------------------------
// The factories.

#[tokio::test]
async fn many_jobs_are_all_put_and_their_errors_collated() {
    let queue = MockQueue::new("q");
    queue.refuse("b");
    queue.put(tick("c")).await.unwrap();
    let op = schedule_many_jobs(|| vec![tick("a"), tick("b"), tick("c"), tick("d")]);

    let error = op.run(queue.clone()).await.unwrap_err();
    assert_eq!(queue.put_calls(), 5, "every job was tried");
    assert_eq!(queue.accepted(), ["c", "a", "d"]);
    let Error::Write(errors) = &error else {
        panic!("expected collated write errors, got {error:?}");
    };
    assert_eq!(errors.errors().len(), 2);
    assert!(!error.is_duplicate_job(), "one failure is not a duplicate");
    assert_eq!(
        error.to_string(),
        "cannot enqueue duplicate job 'c'; invalid job 'b': refused by the mock"
    );

    // Only duplicates: the collated error is a duplicate, which a scheduler ignores by default.
    let error = op.run(queue.clone()).await.unwrap_err();
    assert_eq!(queue.put_calls(), 9);
    let Error::Write(errors) = &error else {
        panic!("expected collated write errors, got {error:?}");
    };
    assert_eq!(errors.errors().len(), 4);
    queue.refused.lock().clear();
    let error = op.run(queue.clone()).await.unwrap_err();
    assert!(error.is_duplicate_job());
}

#[tokio::test]
async fn no_jobs_is_success() {
    let queue = MockQueue::new("q");
    schedule_many_jobs(Vec::new)
        .run(queue.clone())
        .await
        .unwrap();
    assert_eq!(queue.put_calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_generator_run_ends_when_its_channel_closes() {
    let queue = MockQueue::new("q");
    let op = schedule_jobs_from_generator(|| {
        let (tx, rx) = tokio::sync::mpsc::channel::<JobRef>(2);
        // A producer that sends three jobs, then closes the channel by dropping its sender.
        tokio::spawn(async move {
            for id in ["g1", "g2", "g3"] {
                tokio::time::sleep(Duration::from_secs(1)).await;
                tx.send(tick(id)).await.unwrap();
            }
        });
        futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|job| (job, rx)) },
        )
    });

    // amboy's generator never returned once the channel closed; a hang here is caught by the
    // timeout (on paused time the clock jumps to it at once).
    let t0 = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(3600), op.run(queue.clone())).await;
    result
        .expect("the run ended when the channel closed")
        .unwrap();
    assert_eq!(Instant::now() - t0, Duration::from_secs(3));
    assert_eq!(queue.accepted(), ["g1", "g2", "g3"]);
    assert_eq!(queue.put_calls(), 3, "no put after the channel closed");
}

#[tokio::test(start_paused = true)]
async fn a_generator_fed_scheduler_puts_each_runs_jobs_once_per_tick() {
    let t0 = Instant::now();
    let queue = MockQueue::new("q");
    let next = Arc::new(AtomicUsize::new(0));
    let op = schedule_jobs_from_generator(move || {
        let (tx, rx) = futures::channel::mpsc::unbounded::<JobRef>();
        for _ in 0..3 {
            let n = next.fetch_add(1, Ordering::SeqCst);
            tx.unbounded_send(tick(format!("gen-{n}"))).unwrap();
        }
        rx
    });
    let handle = interval_queue_operation(
        queue.clone(),
        INTERVAL,
        in_(INTERVAL),
        QueueOperationConfig::default(),
        op,
    )
    .unwrap();

    run_until(t0, after_tick(4)).await;
    assert_eq!(queue.put_calls(), 12);
    assert_eq!(queue.accepted().len(), 12);
    assert!(handle.is_running());
    handle.stop().await.unwrap();
}

#[tokio::test]
async fn generator_errors_are_collated() {
    let queue = MockQueue::new("q");
    let op = schedule_jobs_from_generator(|| futures::stream::iter(vec![tick("x"), tick("x")]));
    let error = op.run(queue.clone()).await.unwrap_err();
    assert!(error.is_duplicate_job());
    assert_eq!(queue.accepted(), ["x"]);
}

#[tokio::test]
async fn grouped_operations_all_run_and_their_errors_are_collated() {
    let queue = MockQueue::new("q");
    let runs = Arc::new(AtomicUsize::new(0));
    let op = group_queue_operations(
        counted(&runs, || Err(Error::invalid("first failed"))),
        [
            schedule_job(|| tick("second")),
            counted(&runs, || Err(Error::duplicate_job("third"))),
        ],
    );

    let error = op.run(queue.clone()).await.unwrap_err();
    assert_eq!(count(&runs), 2, "a failure did not stop the others");
    assert_eq!(queue.accepted(), ["second"]);
    assert!(!error.is_duplicate_job());
    assert_eq!(
        error.to_string(),
        "cannot enqueue duplicate job 'third'; invalid: first failed"
    );

    let fine = group_queue_operations(counted(&runs, || Ok(())), []);
    fine.run(queue).await.unwrap();
    assert_eq!(count(&runs), 3);
}

// ---------------------------------------------------------------------------------------------
// Queue groups.

#[tokio::test(start_paused = true)]
async fn group_operations_run_on_their_queues_when_their_checks_pass() {
    let t0 = Instant::now();
    let group = Arc::new(MockGroup::default());
    let gate = Arc::new(AtomicBool::new(false));
    let checks = Arc::new(AtomicUsize::new(0));
    let ops = vec![
        GroupQueueOperation::new("always", schedule_job(numbered("always"))),
        GroupQueueOperation::new("gated", schedule_job(numbered("gated"))).with_check({
            let gate = Arc::clone(&gate);
            let checks = Arc::clone(&checks);
            move || {
                checks.fetch_add(1, Ordering::SeqCst);
                gate.load(Ordering::SeqCst)
            }
        }),
        GroupQueueOperation::new("passing", schedule_job(numbered("passing"))).with_check(|| true),
    ];
    let handle = interval_group_queue_operation(
        group.clone(),
        INTERVAL,
        in_(INTERVAL),
        QueueOperationConfig::default(),
        ops,
    )
    .unwrap();

    run_until(t0, after_tick(2)).await;
    assert_eq!(group.accepted("always"), ["always-0", "always-1"]);
    assert_eq!(group.accepted("passing"), ["passing-0", "passing-1"]);
    assert_eq!(count(&checks), 2);
    assert_eq!(
        group.gets("gated"),
        0,
        "a failed check does not even get the queue"
    );
    assert!(group.queue("gated").is_none());

    gate.store(true, Ordering::SeqCst);
    run_until(t0, after_tick(3)).await;
    assert_eq!(group.accepted("gated"), ["gated-0"]);
    assert_eq!(group.accepted("always").len(), 3);
    assert_eq!(group.gets("always"), 3);
    assert_eq!(group.len(), 3);
    handle.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn group_operations_respect_threshold_and_duplicates_per_queue() {
    let t0 = Instant::now();
    let group = Arc::new(MockGroup::default());
    let config = QueueOperationConfig {
        respect_threshold: true,
        threshold: 0,
        ..QueueOperationConfig::default()
    };
    let handle = interval_group_queue_operation(
        group.clone(),
        INTERVAL,
        in_(INTERVAL),
        config,
        [
            GroupQueueOperation::new("busy", schedule_job(numbered("busy"))),
            GroupQueueOperation::new("dup", schedule_job(|| tick("dup"))),
        ],
    )
    .unwrap();

    run_until(t0, after_tick(1)).await;
    assert_eq!(group.accepted("busy"), ["busy-0"]);
    group.queue("busy").unwrap().set_pending(1);
    run_until(t0, after_tick(3)).await;
    assert_eq!(group.accepted("busy"), ["busy-0"], "1 pending > 0: skipped");
    assert_eq!(group.queue("dup").unwrap().put_calls(), 3);
    assert!(handle.is_running(), "duplicates are ignored by default");
    handle.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_group_queue_that_cannot_be_got_stops_the_scheduler() {
    let t0 = Instant::now();
    let group = Arc::new(MockGroup::default());
    group.broken.lock().insert("broken".to_owned());
    let handle = interval_group_queue_operation(
        group.clone(),
        INTERVAL,
        in_(INTERVAL),
        QueueOperationConfig::default(),
        [
            GroupQueueOperation::new("broken", schedule_job(numbered("broken"))),
            GroupQueueOperation::new("fine", schedule_job(numbered("fine"))),
        ],
    )
    .unwrap();

    run_until(t0, after_tick(3)).await;
    assert_eq!(group.gets("broken"), 1);
    assert_eq!(
        group.gets("fine"),
        0,
        "the failure skipped the rest of the tick"
    );
    let error = handle.join().await.unwrap_err();
    assert_eq!(error.to_string(), "invalid: cannot open queue 'broken'");
}

#[tokio::test(start_paused = true)]
async fn group_failures_and_panics_with_continue_on_error_skip_only_their_operation() {
    let t0 = Instant::now();
    let group = Arc::new(MockGroup::default());
    group.broken.lock().insert("broken".to_owned());
    let handle = interval_group_queue_operation(
        group.clone(),
        INTERVAL,
        in_(INTERVAL),
        continuing(),
        [
            GroupQueueOperation::new("broken", schedule_job(numbered("broken"))),
            GroupQueueOperation::new("panicking", schedule_job(|| panic!("no job today"))),
            GroupQueueOperation::new("checked", schedule_job(numbered("checked")))
                .with_check(|| panic!("the check blew up")),
            GroupQueueOperation::new("fine", schedule_job(numbered("fine"))),
        ],
    )
    .unwrap();

    run_until(t0, after_tick(3)).await;
    assert_eq!(group.gets("broken"), 3);
    assert_eq!(group.gets("panicking"), 3);
    assert_eq!(group.gets("checked"), 0);
    assert_eq!(group.accepted("fine"), ["fine-0", "fine-1", "fine-2"]);
    assert!(handle.is_running());
    handle.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_group_schedule_needs_operations_and_a_usable_interval() {
    let group: Arc<dyn QueueGroup> = Arc::new(MockGroup::default());
    let error = interval_group_queue_operation(
        group.clone(),
        INTERVAL,
        Utc::now(),
        QueueOperationConfig::default(),
        Vec::new(),
    )
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "invalid: queue group operation must contain operations"
    );

    let error = interval_group_queue_operation(
        group,
        Duration::ZERO,
        Utc::now(),
        QueueOperationConfig::default(),
        [GroupQueueOperation::new("q", schedule_job(numbered("q")))],
    )
    .unwrap_err();
    assert!(matches!(error, Error::Invalid(_)), "{error}");
}

// ---------------------------------------------------------------------------------------------
// The configuration's stored form.

#[test]
fn the_config_uses_amboys_field_names() {
    let config = QueueOperationConfig {
        continue_on_error: true,
        log_errors: false,
        debug_logging: true,
        respect_threshold: true,
        enable_duplicate_job_reporting: true,
        threshold: 7,
    };
    let json = serde_json::to_value(config).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "continue_on_error": true,
            "log_errors": false,
            "debug_logging": true,
            "respect_threshold": true,
            "enable_duplicate_reporting": true,
            "threshold": 7,
        })
    );
    let back: QueueOperationConfig = serde_json::from_value(json).unwrap();
    assert_eq!(back, config);
    let empty: QueueOperationConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(empty, QueueOperationConfig::default());
}

#[test]
fn debug_output_names_the_queue_not_the_closures() {
    let op = GroupQueueOperation::new("reports", schedule_job(numbered("r"))).with_check(|| true);
    let debug = format!("{op:?}");
    assert!(
        debug.contains("reports") && debug.contains("check: true"),
        "{debug}"
    );
}

//! `Queue::next` failing for a while (a database queue that lost its connection, say): every
//! runner logs the error and asks again after an exponential backoff with full jitter, ends
//! the backoff at once when it is told to stop, and stops for good only when the queue reports
//! itself closed. In the multi-queue pool only the failing queue waits.
//!
//! The queue here is scripted: each call to `next` takes the next step of its script. The clock
//! is paused, so time passes only when every task waits: a worker that spun on a failing queue
//! would never let it pass (the script's fuse closes the queue then, and the counts fail).

mod support;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use amboy_core::{
    Error, JobInfoStream, JobRef, JobStream, Queue, QueueInfo, QueueStats, Result, Runner,
};
use amboy_queue_local::LimitedSizeQueue;
use amboy_runner::{
    AbortablePool, LocalWorkers, MovingAverageRateLimitedWorkers, MultiQueuePool,
    RateLimitedWorkers, SingleWorker,
};
use futures::StreamExt;
use support::*;
use tokio::time::Instant;

const MS: Duration = Duration::from_millis(1);

/// The backoff's first ceiling and its cap, as the runners use them.
const FIRST: Duration = Duration::from_millis(10);
const CAP: Duration = Duration::from_secs(1);

/// After this many calls the scripted queue closes itself, so that a spinning worker ends the
/// test with wrong counts instead of hanging it.
const FUSE: usize = 10_000;

/// What one call to the scripted queue's `next` does.
#[derive(Clone)]
enum Step {
    /// Fails with a transient (backend) error.
    Fail,
    /// Hands out this job.
    Job(JobRef),
    /// Reports the queue closed.
    Closed,
    /// Waits until the queue closes.
    Wait,
    /// Panics (a queue's bug).
    Panic,
}

/// A queue whose `next` follows a script, then repeats its last step for ever.
struct Scripted {
    id: String,
    me: Weak<Scripted>,
    script: Mutex<VecDeque<Step>>,
    then: Step,
    /// When each call to `next` began.
    calls: Mutex<Vec<Instant>>,
    /// The IDs of the jobs completed.
    completed: Mutex<Vec<String>>,
    shell: Shell,
}

impl Scripted {
    fn new(script: impl IntoIterator<Item = Step>, then: Step) -> Arc<Self> {
        // A pool serves each queue ID once: every scripted queue has its own.
        static SERIAL: AtomicUsize = AtomicUsize::new(0);
        let id = format!("scripted-{}", SERIAL.fetch_add(1, Ordering::Relaxed));
        Arc::new_cyclic(|me| Scripted {
            id,
            me: me.clone(),
            script: Mutex::new(script.into_iter().collect()),
            then,
            calls: Mutex::new(Vec::new()),
            completed: Mutex::new(Vec::new()),
            shell: Shell::default(),
        })
    }

    /// A queue whose `next` always fails.
    fn failing() -> Arc<Self> {
        Scripted::new([], Step::Fail)
    }

    /// A started queue served by `runner`.
    async fn started(
        script: impl IntoIterator<Item = Step>,
        then: Step,
        runner: Arc<dyn Runner>,
    ) -> Arc<Self> {
        let queue = Scripted::new(script, then);
        queue.set_runner(runner).unwrap();
        queue.start().await.unwrap();
        queue
    }

    fn calls(&self) -> Vec<Instant> {
        self.calls.lock().unwrap().clone()
    }

    fn completed(&self) -> Vec<String> {
        self.completed.lock().unwrap().clone()
    }
}

fn transient() -> Error {
    Error::backend(
        "cannot reach the store",
        std::io::Error::other("connection reset by peer"),
    )
}

#[async_trait::async_trait]
impl Queue for Scripted {
    fn id(&self) -> &str {
        &self.id
    }

    async fn put(&self, _job: JobRef) -> Result<()> {
        Err(Error::invalid("the scripted queue takes no jobs"))
    }

    async fn put_many(&self, _jobs: Vec<JobRef>) -> Result<()> {
        Err(Error::invalid("the scripted queue takes no jobs"))
    }

    async fn get(&self, id: &str) -> Result<JobRef> {
        Err(Error::job_not_found(id))
    }

    async fn next(&self) -> Result<JobRef> {
        let calls = {
            let mut calls = self.calls.lock().unwrap();
            calls.push(Instant::now());
            calls.len()
        };
        if self.shell.is_closed() || calls > FUSE {
            return Err(Error::Closed("queue"));
        }
        // Taken and answered in one poll: dropping this future loses no step.
        let step = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| self.then.clone());
        match step {
            Step::Fail => Err(transient()),
            Step::Job(job) => Ok(job),
            Step::Closed => Err(Error::Closed("queue")),
            Step::Panic => panic!("the queue blew up"),
            Step::Wait => {
                self.shell.closed().await;
                Err(Error::Closed("queue"))
            }
        }
    }

    fn info(&self) -> QueueInfo {
        self.shell.info()
    }

    async fn complete(&self, job: &JobRef) -> Result<()> {
        self.completed.lock().unwrap().push(job.id().to_owned());
        Ok(())
    }

    async fn save(&self, _job: &JobRef) -> Result<()> {
        Ok(())
    }

    async fn results(&self) -> JobStream {
        futures::stream::empty().boxed()
    }

    async fn job_info(&self) -> JobInfoStream {
        futures::stream::empty().boxed()
    }

    async fn stats(&self) -> Result<QueueStats> {
        Ok(QueueStats::default())
    }

    fn runner(&self) -> Option<Arc<dyn Runner>> {
        self.shell.runner()
    }

    fn set_runner(&self, runner: Arc<dyn Runner>) -> Result<()> {
        self.shell
            .set_runner(self.me.upgrade().expect("alive"), runner)
    }

    async fn start(&self) -> Result<()> {
        self.shell.start().await
    }

    async fn close(&self) {
        self.shell.close().await;
    }
}

/// The longest wait the backoff allows after the `n`th failure in a row (from 1), plus the
/// timer's millisecond of rounding.
fn ceiling(n: usize) -> Duration {
    let doublings = u32::try_from(n.saturating_sub(1)).unwrap().min(20);
    FIRST.saturating_mul(1 << doublings).min(CAP) + MS
}

/// Consecutive differences of times.
fn gaps(times: &[Instant]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

/// Checks that a worker failing on every call waited within the backoff's ceiling each time,
/// and never spun.
fn assert_backed_off(calls: &[Instant]) {
    for (i, gap) in gaps(calls).into_iter().enumerate() {
        assert!(
            gap <= ceiling(i + 1),
            "wait {i} after a failure took {gap:?}, more than {:?}: {calls:?}",
            ceiling(i + 1)
        );
    }
}

/// One of each runner built on the shared pool, with `workers` workers where it can have
/// several.
fn runner(kind: &str, workers: usize) -> Arc<dyn Runner> {
    match kind {
        "local" => LocalWorkers::new(workers),
        "abortable" => AbortablePool::new(workers),
        "single" => SingleWorker::new(),
        "rate_limited" => RateLimitedWorkers::new(workers, 5 * MS).unwrap(),
        "moving_average" => {
            MovingAverageRateLimitedWorkers::new(workers, 1000, Duration::from_secs(1)).unwrap()
        }
        "multi_queue" => MultiQueuePool::new(workers),
        other => unreachable!("no runner {other}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Every runner
// ---------------------------------------------------------------------------------------------

/// The queue fails three times, hands out one job, then reports itself closed: the job runs
/// exactly once, and each worker asks once more, sees the queue closed, and stops.
async fn takes_the_job_after_transient_errors(kind: &str) {
    let key = format!("transient-{kind}");
    let workers = if kind == "single" { 1 } else { 2 };
    let job = job(&key, "after-failures", Behaviour::Count);
    let queue = Scripted::started(
        [Step::Fail, Step::Fail, Step::Fail, Step::Job(job.clone())],
        Step::Closed,
        runner(kind, workers),
    )
    .await;

    observed(&key).wait_started(1).await;
    // Long past any backoff: the workers stopped at the closed queue, and ask no more.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        observed(&key).runs.lock().unwrap().get("after-failures"),
        Some(&1)
    );
    assert_eq!(queue.completed(), ["after-failures"]);
    let calls = queue.calls();
    // Three failures, the job, then one closed answer per worker; in the multi-queue pool a
    // worker resting when another saw the queue closed skips it without asking.
    let expected = if kind == "multi_queue" {
        5..=4 + workers
    } else {
        4 + workers..=4 + workers
    };
    assert!(expected.contains(&calls.len()), "{calls:?}");
    let begin = calls[0];
    assert!(
        calls
            .iter()
            .all(|&call| call - begin < Duration::from_millis(200)),
        "the failures were retried within their backoffs: {calls:?}"
    );
    queue.close().await;
}

/// A queue failing on every call, one worker: the worker asks again after each pause, whose
/// ceiling doubles from 10 ms up to 1 s, so it never spins.
async fn backs_off_without_spinning(kind: &str) {
    let queue = Scripted::started([], Step::Fail, runner(kind, 1)).await;
    let begin = Instant::now();

    tokio::time::sleep(Duration::from_millis(500)).await;
    let early = queue.calls().len();
    // Full jitter: each wait is anywhere below its ceiling, so some runs ask more often than
    // others; 17 calls in 500 ms happen with a probability below 10⁻⁹ (the ceilings sum past
    // 500 ms after 6 calls). A spinning worker asks thousands of times.
    assert!(
        (2..=16).contains(&early),
        "{early} calls in the first 500 ms"
    );

    tokio::time::sleep(Duration::from_millis(9_500)).await;
    let calls = queue.calls();
    assert!(calls.iter().all(|&call| call >= begin));
    assert_backed_off(&calls);
    let longest = gaps(&calls).into_iter().max().unwrap_or_default();
    assert!(
        longest > 100 * MS,
        "the waits grow toward the cap: the longest was {longest:?} in {calls:?}"
    );
    assert!(calls.len() < 60, "{} calls in 10 s", calls.len());
    queue.close().await;
}

/// Closing the queue (and with it the runner) while a worker waits out a backoff ends the wait
/// at once: no time passes.
async fn close_ends_the_backoff_at_once(kind: &str) {
    let queue = Scripted::started([], Step::Fail, runner(kind, 2)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = queue.calls().len();
    assert!(before >= 2, "the workers failed and wait: {before} calls");

    let closing = Instant::now();
    queue.close().await;
    assert_eq!(Instant::now(), closing, "close waited out a backoff");

    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(queue.calls().len(), before, "a closed runner asks no more");
}

/// The same with a graceful shutdown of the runner, whose grace is long: with no job running,
/// the workers stop at once.
async fn shutdown_ends_the_backoff_at_once(kind: &str) {
    let runner = runner(kind, 2);
    let queue = Scripted::started([], Step::Fail, runner.clone()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = queue.calls().len();

    let stopping = Instant::now();
    runner.shutdown(Duration::from_secs(30)).await;
    assert_eq!(Instant::now(), stopping, "shutdown waited out a backoff");
    assert!(!runner.started());

    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(queue.calls().len(), before, "a stopped runner asks no more");
    queue.close().await;
}

/// A worker that fails, then takes a job, starts its backoff over: after a job, the next
/// failure waits at most the first ceiling again.
async fn a_job_resets_the_backoff(kind: &str) {
    let key = format!("transient-reset-{kind}");
    let job = job(&key, "between-failures", Behaviour::Count);
    let mut script = vec![Step::Fail; 8];
    script.push(Step::Job(job));
    let queue = Scripted::started(script, Step::Fail, runner(kind, 1)).await;

    observed(&key).wait_started(1).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let calls = queue.calls();
    assert!(calls.len() > 11, "{calls:?}");
    // Eight failures, then the job (call 9): the waits before calls 2..=9 follow the first
    // eight ceilings; call 10 follows the job at once, and the failures from there on start
    // from the first ceiling again.
    assert_backed_off(&calls[..9]);
    assert!(
        calls[9] - calls[8] <= 10 * MS,
        "the worker asks again right after its job (and a rate limit's pause): {calls:?}"
    );
    assert_backed_off(&calls[9..]);
    queue.close().await;
}

/// One test per runner for each scenario above.
macro_rules! every_runner {
    ($($scenario:ident),* $(,)?) => {
        $(
            mod $scenario {
                #[tokio::test(start_paused = true)]
                async fn local_workers() {
                    super::$scenario("local").await;
                }

                #[tokio::test(start_paused = true)]
                async fn abortable_pool() {
                    super::$scenario("abortable").await;
                }

                #[tokio::test(start_paused = true)]
                async fn single_worker() {
                    super::$scenario("single").await;
                }

                #[tokio::test(start_paused = true)]
                async fn rate_limited_workers() {
                    super::$scenario("rate_limited").await;
                }

                #[tokio::test(start_paused = true)]
                async fn moving_average_workers() {
                    super::$scenario("moving_average").await;
                }

                #[tokio::test(start_paused = true)]
                async fn multi_queue_pool() {
                    super::$scenario("multi_queue").await;
                }
            }
        )*
    };
}

/// A queue whose `next` panics at every call: the worker starts over after each panic, but
/// after a pause that grows, as after a failure, rather than at once (on a one-thread runtime a
/// worker restarting at once would hold the thread for ever).
async fn panics_back_off_without_spinning(kind: &str) {
    let queue = Scripted::started([], Step::Panic, runner(kind, 1)).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let calls = queue.calls();
    assert!(
        (2..60).contains(&calls.len()),
        "{} calls in 10 s",
        calls.len()
    );
    queue.close().await;
}

every_runner!(
    panics_back_off_without_spinning,
    takes_the_job_after_transient_errors,
    backs_off_without_spinning,
    close_ends_the_backoff_at_once,
    shutdown_ends_the_backoff_at_once,
    a_job_resets_the_backoff,
);

// ---------------------------------------------------------------------------------------------
// The multi-queue pool
// ---------------------------------------------------------------------------------------------

/// A failing queue and a healthy one served by one worker: the healthy queue's jobs run the
/// moment they are put, while the failing queue waits out its own backoff.
#[tokio::test(start_paused = true)]
async fn a_failing_queue_holds_up_no_other_queue() {
    let key = "transient-multi-healthy";
    let pool = MultiQueuePool::new(1);
    let failing = Scripted::failing();
    failing.set_runner(pool.clone()).unwrap();
    let healthy = LimitedSizeQueue::new(64);
    healthy.set_runner(pool.clone()).unwrap();
    failing.start().await.unwrap();
    healthy.start().await.unwrap();
    let begin = Instant::now();

    // A job every 30 ms for a second, each run as soon as it is put.
    let mut put_at = Vec::new();
    for i in 0..34 {
        let id = format!("healthy-{i}");
        put_at.push((id.clone(), Instant::now()));
        put(&healthy, job(key, &id, Behaviour::Count)).await;
        wait_job(&healthy, &id).await;
        tokio::time::sleep(30 * MS).await;
    }
    let starts = observed(key).starts.lock().unwrap().clone();
    assert_eq!(starts.len(), put_at.len());
    for ((id, put), (started_id, started)) in put_at.iter().zip(&starts) {
        assert_eq!(id, started_id);
        assert_eq!(started, put, "{id} waited for the failing queue's backoff");
    }

    // Meanwhile the failing queue was asked again after each of its own pauses only.
    let calls = failing.calls();
    assert!(calls.iter().all(|&call| call >= begin));
    assert_backed_off(&calls);
    let early = calls
        .iter()
        .filter(|&&call| call - begin <= Duration::from_millis(500))
        .count();
    assert!(
        (2..=16).contains(&early),
        "{early} calls in the first 500 ms"
    );

    // Closing the pool while the failing queue rests and the healthy one is idle stops it at
    // once.
    let closing = Instant::now();
    pool.close().await;
    assert_eq!(Instant::now(), closing);
    assert!(!pool.started());
    let before = failing.calls().len();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(failing.calls().len(), before);
    failing.close().await;
    healthy.close().await;
}

/// A queue of the pool that fails for a while, then hands out a job, is served again: its job
/// runs once, and the healthy queue's jobs ran meanwhile.
#[tokio::test(start_paused = true)]
async fn a_queue_that_recovers_is_served_again() {
    let key = "transient-multi-recovers";
    let pool = MultiQueuePool::new(2);
    let recovered = job(key, "recovered", Behaviour::Count);
    let flaky = Scripted::new(
        [
            Step::Fail,
            Step::Fail,
            Step::Fail,
            Step::Fail,
            Step::Job(recovered),
        ],
        Step::Wait,
    );
    flaky.set_runner(pool.clone()).unwrap();
    let healthy = LimitedSizeQueue::new(64);
    healthy.set_runner(pool.clone()).unwrap();
    flaky.start().await.unwrap();
    healthy.start().await.unwrap();

    run_counted(&healthy, key, "healthy", 20).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        observed(key).runs.lock().unwrap().get("recovered"),
        Some(&1)
    );
    assert_eq!(flaky.completed(), ["recovered"]);
    run_counted(&healthy, key, "later", 20).await;

    // The flaky queue now waits for jobs like any idle queue; closing it ends that wait.
    flaky.close().await;
    assert!(
        !pool.started(),
        "a queue closes its runner, here the whole pool"
    );
    healthy.close().await;
}

/// Every queue of the pool fails: the worker waits for the first rest to end, and closing the
/// pool then stops it at once.
#[tokio::test(start_paused = true)]
async fn every_queue_failing_is_no_spin() {
    let pool = MultiQueuePool::new(1);
    let queues = [
        Scripted::failing(),
        Scripted::failing(),
        Scripted::failing(),
    ];
    for queue in &queues {
        queue.set_runner(pool.clone()).unwrap();
    }
    for queue in &queues {
        queue.start().await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    for queue in &queues {
        let calls = queue.calls();
        assert_backed_off(&calls);
        assert!(
            (2..60).contains(&calls.len()),
            "{} calls in 5 s",
            calls.len()
        );
    }
    let closing = Instant::now();
    pool.close().await;
    assert_eq!(Instant::now(), closing);
    for queue in &queues {
        queue.close().await;
    }
}

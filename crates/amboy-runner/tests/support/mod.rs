//! What the runner tests share: a scripted job type that reports its runs under a test's key,
//! and helpers over the limited-size queue. Every wait is bounded.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use amboy_core::{Base, Job, JobContext, JobError, JobRef, Queue, Runner};
use amboy_queue_local::LimitedSizeQueue;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::time::{Instant, timeout};

/// Generous bound for things that should happen at once.
pub(crate) const SOON: Duration = Duration::from_secs(10);

/// How long a test watches for something that must not happen.
pub(crate) const A_WHILE: Duration = Duration::from_millis(150);

/// What a scripted job does when it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Behaviour {
    /// Count the run and return.
    Count,
    /// Panic.
    Panic,
    /// Signal that it started, then never finish on its own.
    Hang,
}

/// What a test observes of its jobs, shared under the test's key.
#[derive(Debug)]
pub(crate) struct Observed {
    /// Runs per job ID.
    pub(crate) runs: Mutex<HashMap<String, usize>>,
    /// Job IDs in the order their runs started, with the time each started.
    pub(crate) starts: Mutex<Vec<(String, Instant)>>,
    /// One permit per run started.
    pub(crate) started: Semaphore,
}

static OBSERVED: LazyLock<Mutex<HashMap<String, Arc<Observed>>>> = LazyLock::new(Default::default);

/// The observations made under `key`.
pub(crate) fn observed(key: &str) -> Arc<Observed> {
    OBSERVED
        .lock()
        .unwrap()
        .entry(key.to_owned())
        .or_insert_with(|| {
            Arc::new(Observed {
                runs: Mutex::new(HashMap::new()),
                starts: Mutex::new(Vec::new()),
                started: Semaphore::new(0),
            })
        })
        .clone()
}

impl Observed {
    /// Waits until `n` more runs have started.
    pub(crate) async fn wait_started(&self, n: u32) {
        timeout(SOON, self.started.acquire_many(n))
            .await
            .unwrap_or_else(|_| panic!("{n} run(s) did not start"))
            .unwrap()
            .forget();
    }

    /// Forgets the runs started so far, for [`another_starts`](Self::another_starts).
    pub(crate) fn forget_starts(&self) {
        self.started.forget_permits(usize::MAX);
    }

    /// Whether another run starts within [`A_WHILE`].
    pub(crate) async fn another_starts(&self) -> bool {
        match timeout(A_WHILE, self.started.acquire()).await {
            Ok(permit) => {
                permit.unwrap().forget();
                true
            }
            Err(_) => false,
        }
    }

    /// The job IDs in the order their runs started.
    pub(crate) fn order(&self) -> Vec<String> {
        self.starts
            .lock()
            .unwrap()
            .iter()
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The times runs started, in order.
    pub(crate) fn start_times(&self) -> Vec<Instant> {
        let mut times: Vec<Instant> = self
            .starts
            .lock()
            .unwrap()
            .iter()
            .map(|(_, t)| *t)
            .collect();
        times.sort();
        times
    }
}

#[derive(Serialize, Deserialize)]
struct Scripted {
    base: Base,
    key: String,
    behaviour: Behaviour,
}

#[typetag::serde(name = "runner-support-scripted")]
#[async_trait::async_trait]
impl Job for Scripted {
    fn base(&self) -> &Base {
        &self.base
    }

    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        let observed = observed(&self.key);
        *observed
            .runs
            .lock()
            .unwrap()
            .entry(self.id().to_owned())
            .or_default() += 1;
        observed
            .starts
            .lock()
            .unwrap()
            .push((self.id().to_owned(), Instant::now()));
        observed.started.add_permits(1);
        match self.behaviour {
            Behaviour::Count => Ok(()),
            Behaviour::Panic => panic!("the job blew up"),
            Behaviour::Hang => {
                std::future::pending::<()>().await;
                Ok(())
            }
        }
    }
}

/// A scripted job reporting under `key`.
pub(crate) fn job(key: &str, id: &str, behaviour: Behaviour) -> JobRef {
    job_with(key, Base::with_id(id), behaviour)
}

/// A scripted job with this base, reporting under `key`.
pub(crate) fn job_with(key: &str, base: Base, behaviour: Behaviour) -> JobRef {
    Arc::new(Scripted {
        base,
        key: key.to_owned(),
        behaviour,
    })
}

/// A queue served by `runner`, started.
pub(crate) async fn queue_with(runner: Arc<dyn Runner>, capacity: usize) -> Arc<LimitedSizeQueue> {
    let queue = LimitedSizeQueue::new(capacity);
    queue.set_runner(runner).unwrap();
    queue.start().await.unwrap();
    queue
}

/// Puts a job, which must be accepted soon.
pub(crate) async fn put(queue: &LimitedSizeQueue, job: JobRef) {
    timeout(SOON, queue.put(job))
        .await
        .expect("put did not finish")
        .unwrap();
}

/// Puts `n` counting jobs named `<prefix>-<i>`; returns them.
pub(crate) async fn put_counted(
    queue: &LimitedSizeQueue,
    key: &str,
    prefix: &str,
    n: usize,
) -> Vec<JobRef> {
    let jobs: Vec<JobRef> = (0..n)
        .map(|i| job(key, &format!("{prefix}-{i}"), Behaviour::Count))
        .collect();
    for job in &jobs {
        put(queue, job.clone()).await;
    }
    jobs
}

/// Waits until every job of the queue is complete.
pub(crate) async fn wait_all(queue: &LimitedSizeQueue) {
    timeout(SOON, amboy_core::wait(queue))
        .await
        .expect("the queue did not complete")
        .unwrap();
}

/// Waits until the job is complete.
pub(crate) async fn wait_job(queue: &LimitedSizeQueue, id: &str) {
    let found = timeout(SOON, amboy_core::wait_job(queue, id))
        .await
        .unwrap_or_else(|_| panic!("job '{id}' did not complete"))
        .unwrap();
    assert_eq!(
        found,
        amboy_core::JobOutcome::Completed,
        "job '{id}' is retained"
    );
}

/// Checks each job ran exactly once and completed without error.
pub(crate) fn assert_ran_once(key: &str, jobs: &[JobRef]) {
    let observed = observed(key);
    let runs = observed.runs.lock().unwrap();
    for job in jobs {
        assert_eq!(
            runs.get(job.id()),
            Some(&1),
            "{} ran exactly once",
            job.id()
        );
        let status = job.status();
        assert!(status.completed && !status.in_progress, "{}", job.id());
        assert!(job.error().is_none(), "{}: {:?}", job.id(), job.error());
    }
}

/// Puts `n` counting jobs, waits for each, and checks each ran exactly once without error.
/// Other jobs of the queue may go on running.
pub(crate) async fn run_counted(queue: &LimitedSizeQueue, key: &str, prefix: &str, n: usize) {
    let jobs = put_counted(queue, key, prefix, n).await;
    for job in &jobs {
        wait_job(queue, job.id()).await;
    }
    assert_ran_once(key, &jobs);
}

/// The error message recorded on a job, if any.
pub(crate) fn error_of(job: &JobRef) -> Option<String> {
    job.error().map(|e| e.message().to_owned())
}

/// amboy's error for a job cancelled while it ran.
pub(crate) const ABORTED: &str = "job was aborted during execution: context canceled";

/// What a hand-written test queue keeps besides its jobs: its runner and whether it closed.
/// The queue's `Queue` methods of the same names delegate here.
#[derive(Default)]
pub(crate) struct Shell {
    runner: Mutex<Option<Arc<dyn Runner>>>,
    closed: std::sync::atomic::AtomicBool,
    closing: tokio_util::sync::CancellationToken,
}

impl Shell {
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Resolves once the queue closes.
    pub(crate) async fn closed(&self) {
        self.closing.cancelled().await;
    }

    pub(crate) fn info(&self) -> amboy_core::QueueInfo {
        amboy_core::QueueInfo {
            started: self.runner().is_some_and(|runner| runner.started()),
            lock_timeout: Duration::from_secs(60),
        }
    }

    pub(crate) fn runner(&self) -> Option<Arc<dyn Runner>> {
        self.runner.lock().unwrap().clone()
    }

    pub(crate) fn set_runner(
        &self,
        me: Arc<dyn Queue>,
        runner: Arc<dyn Runner>,
    ) -> amboy_core::Result<()> {
        runner.set_queue(me)?;
        *self.runner.lock().unwrap() = Some(runner);
        Ok(())
    }

    pub(crate) async fn start(&self) -> amboy_core::Result<()> {
        let runner = self
            .runner()
            .ok_or(amboy_core::Error::invalid("no runner"))?;
        runner.start().await
    }

    pub(crate) async fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        self.closing.cancel();
        if let Some(runner) = self.runner() {
            runner.close().await;
        }
    }
}

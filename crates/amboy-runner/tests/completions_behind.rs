//! A queue whose `complete` waits (a database queue writing the completion and waiting for its
//! commit): the worker goes on to its next job while the completion is written, up to 32
//! completions in writing per worker; the completion is still driven to its end, an abortable
//! pool counts the job as running until it is stored, and closing the pool waits for every
//! completion in writing.
//!
//! The queue here hands out the jobs it was given, then waits until closed; its `complete`
//! waits for a gate the test opens.

mod support;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use amboy_core::{
    AbortableRunner, Error, JobInfoStream, JobRef, JobStream, Queue, QueueInfo, QueueStats, Result,
    Runner,
};
use amboy_runner::{AbortablePool, LocalWorkers, SingleWorker};
use futures::StreamExt;
use support::*;
use tokio::sync::{Notify, Semaphore};
use tokio::time::timeout;

/// How many completions one worker leaves in writing before it waits (the pool's bound).
const BEHIND: usize = 32;

/// A queue whose completions wait at a gate.
struct Gated {
    id: String,
    me: Weak<Gated>,
    jobs: Mutex<VecDeque<JobRef>>,
    /// Closed until the test adds permits: each completion takes one.
    gate: Semaphore,
    /// Completions called (waiting at the gate or through it).
    asked: AtomicUsize,
    asked_changed: Notify,
    /// The IDs of the jobs whose completion went through the gate, in order.
    completed: Mutex<Vec<String>>,
    shell: Shell,
}

impl Gated {
    async fn started(jobs: Vec<JobRef>, runner: Arc<dyn Runner>) -> Arc<Self> {
        static SERIAL: AtomicUsize = AtomicUsize::new(0);
        let id = format!("gated-{}", SERIAL.fetch_add(1, Ordering::Relaxed));
        let queue = Arc::new_cyclic(|me| Gated {
            id,
            me: me.clone(),
            jobs: Mutex::new(jobs.into()),
            gate: Semaphore::new(0),
            asked: AtomicUsize::new(0),
            asked_changed: Notify::new(),
            completed: Mutex::new(Vec::new()),
            shell: Shell::default(),
        });
        queue.set_runner(runner).unwrap();
        queue.start().await.unwrap();
        queue
    }

    /// Waits until `n` completions have been asked for.
    async fn wait_asked(&self, n: usize) {
        timeout(SOON, async {
            loop {
                let changed = self.asked_changed.notified();
                if self.asked.load(Ordering::SeqCst) >= n {
                    return;
                }
                changed.await;
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{n} completions were not asked for (only {})",
                self.asked.load(Ordering::SeqCst)
            )
        });
    }

    fn completed(&self) -> Vec<String> {
        self.completed.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl Queue for Gated {
    fn id(&self) -> &str {
        &self.id
    }

    async fn put(&self, _job: JobRef) -> Result<()> {
        Err(Error::invalid("the gated queue takes no jobs"))
    }

    async fn put_many(&self, _jobs: Vec<JobRef>) -> Result<()> {
        Err(Error::invalid("the gated queue takes no jobs"))
    }

    async fn get(&self, id: &str) -> Result<JobRef> {
        Err(Error::job_not_found(id))
    }

    async fn next(&self) -> Result<JobRef> {
        if self.shell.is_closed() {
            return Err(Error::Closed("queue"));
        }
        let job = self.jobs.lock().unwrap().pop_front();
        match job {
            Some(job) => Ok(job),
            None => {
                self.shell.closed().await;
                Err(Error::Closed("queue"))
            }
        }
    }

    fn info(&self) -> QueueInfo {
        self.shell.info()
    }

    async fn complete(&self, job: &JobRef) -> Result<()> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        self.asked_changed.notify_waiters();
        self.gate.acquire().await.unwrap().forget();
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

fn counted(key: &str, n: usize) -> Vec<JobRef> {
    (0..n)
        .map(|i| job(key, &format!("{key}-{i}"), Behaviour::Count))
        .collect()
}

#[tokio::test]
async fn a_worker_runs_its_next_jobs_while_a_completion_is_written() {
    let key = "behind-single";
    let queue = Gated::started(counted(key, 3), SingleWorker::new()).await;
    // One worker ran all three jobs although no completion has been stored.
    observed(key).wait_started(3).await;
    queue.wait_asked(3).await;
    assert!(queue.completed().is_empty());
    queue.gate.add_permits(3);
    timeout(SOON, queue.close()).await.expect("close ends");
    let mut completed = queue.completed();
    completed.sort();
    assert_eq!(
        completed,
        [format!("{key}-0"), format!("{key}-1"), format!("{key}-2")]
    );
}

#[tokio::test]
async fn a_worker_leaves_at_most_32_completions_in_writing() {
    let key = "behind-bound";
    let queue = Gated::started(counted(key, BEHIND + 8), LocalWorkers::new(1)).await;
    observed(key).wait_started(BEHIND as u32).await;
    queue.wait_asked(BEHIND).await;
    // The worker waits for a completion before it takes another job.
    observed(key).forget_starts();
    assert!(!observed(key).another_starts().await);
    assert_eq!(queue.asked.load(Ordering::SeqCst), BEHIND);
    // Each completion stored lets one more job run.
    queue.gate.add_permits(1);
    observed(key).wait_started(1).await;
    assert!(!observed(key).another_starts().await);
    queue.gate.add_permits(100);
    observed(key).wait_started(7).await;
    timeout(SOON, queue.close()).await.expect("close ends");
    assert_eq!(queue.completed().len(), BEHIND + 8);
}

#[tokio::test]
async fn closing_waits_for_the_completions_in_writing() {
    let key = "behind-close";
    let runner = LocalWorkers::new(2);
    let queue = Gated::started(counted(key, 6), runner.clone()).await;
    queue.wait_asked(6).await;
    let closing = tokio::spawn({
        let queue = queue.clone();
        async move { queue.close().await }
    });
    // The pool does not close while completions wait.
    tokio::time::sleep(A_WHILE).await;
    assert!(!closing.is_finished());
    assert!(queue.completed().is_empty());
    queue.gate.add_permits(6);
    timeout(SOON, closing).await.expect("close ends").unwrap();
    assert_eq!(queue.completed().len(), 6);
}

#[tokio::test]
async fn an_abortable_pool_counts_a_job_running_until_its_completion_is_stored() {
    let key = "behind-abortable";
    let pool = AbortablePool::new(1);
    let queue = Gated::started(counted(key, 1), pool.clone()).await;
    queue.wait_asked(1).await;
    let id = format!("{key}-0");
    assert!(pool.is_running(&id));
    assert_eq!(pool.running_jobs(), std::slice::from_ref(&id));
    // Aborting it returns once the completion is stored.
    let aborting = tokio::spawn({
        let pool = pool.clone();
        let id = id.clone();
        async move { pool.abort(&id).await }
    });
    tokio::time::sleep(A_WHILE).await;
    assert!(!aborting.is_finished());
    queue.gate.add_permits(1);
    timeout(SOON, aborting)
        .await
        .expect("abort ends")
        .unwrap()
        .unwrap();
    assert!(!pool.is_running(&id));
    assert_eq!(queue.completed(), [id]);
    timeout(SOON, queue.close()).await.expect("close ends");
}

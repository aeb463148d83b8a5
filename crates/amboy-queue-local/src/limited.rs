//! The limited-size queue (amboy's `LocalLimitedSize`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use amboy_core::{
    Error, JobInfo, JobInfoStream, JobRef, JobStream, LOCK_TIMEOUT, Queue, QueueInfo, QueueStats,
    Result, Runner, collate_write_errors,
};
use async_trait::async_trait;
use chrono::Utc;
use crossbeam_queue::ArrayQueue;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use futures::stream;
use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::delayed::Delayed;
use crate::gate::Gate;
use crate::{Dispatcher, ScopeManager};

/// Options of a [`LimitedSizeQueue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitedSizeOptions {
    /// How many jobs may wait to run; a put beyond it waits for room. At least 1.
    pub capacity: usize,
    /// How long the queue's locks last without a heartbeat.
    pub lock_timeout: Duration,
}

impl LimitedSizeOptions {
    /// Options with `capacity` and amboy's lock timeout.
    pub fn new(capacity: usize) -> Self {
        LimitedSizeOptions {
            capacity,
            lock_timeout: LOCK_TIMEOUT,
        }
    }

    /// Checks the options.
    pub fn validate(&self) -> Result<()> {
        if self.capacity == 0 {
            return Err(Error::invalid(
                "limited-size queue capacity must be at least 1",
            ));
        }
        if self.lock_timeout.is_zero() {
            return Err(Error::invalid("lock timeout must be positive"));
        }
        Ok(())
    }
}

/// An in-memory queue holding at most `capacity` pending jobs, dispatching them in the order they
/// were put (amboy's `LocalLimitedSize`).
///
/// * [`put`](Queue::put) needs a started queue and waits while the queue is full (failing with
///   a closed-queue error if the queue closes meanwhile).
/// * Jobs whose `wait_until` lies ahead wait in a timer heap, not in the dispatch line; jobs past
///   their `dispatch_by` are dropped when their turn comes, releasing their scopes, and counted
///   as `expired`.
/// * A job whose scopes are held waits beside the scope and is put back in line the moment the
///   scope is released (amboy left such a job locked until its lock timed out).
/// * The last `capacity − 1` completed jobs are retained for [`results`](Queue::results) and
///   [`get`](Queue::get); older ones are forgotten but still counted.
/// * The queue holds the jobs themselves: [`get`](Queue::get) returns the job the worker runs.
#[derive(Debug)]
pub struct LimitedSizeQueue {
    id: Arc<str>,
    options: LimitedSizeOptions,
    this: Weak<LimitedSizeQueue>,
    jobs: DashMap<Arc<str>, Stored>,
    ready_tx: async_channel::Sender<JobRef>,
    ready_rx: async_channel::Receiver<JobRef>,
    delayed: Arc<Delayed>,
    scopes: ScopeManager<JobRef>,
    dispatcher: Arc<Dispatcher>,
    retained: Option<ArrayQueue<Arc<str>>>,
    gate: Gate,
    counts: Counts,
    runner: Mutex<Option<Arc<dyn Runner>>>,
    started: AtomicBool,
    lifetime: CancellationToken,
    timer: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug, Clone)]
struct Stored {
    job: JobRef,
    completed: bool,
}

#[derive(Debug, Default)]
struct Counts {
    total: AtomicUsize,
    completed: AtomicUsize,
    expired: AtomicUsize,
}

impl LimitedSizeQueue {
    /// A queue for at most `capacity` pending jobs (at least 1), with amboy's lock timeout.
    pub fn new(capacity: usize) -> Arc<Self> {
        Self::with_options(LimitedSizeOptions::new(capacity.max(1))).expect("valid options")
    }

    /// A queue with these options.
    pub fn with_options(options: LimitedSizeOptions) -> Result<Arc<Self>> {
        options.validate()?;
        let id: Arc<str> = Arc::from(format!("queue.local.fixed.{}", uuid::Uuid::new_v4()));
        let (ready_tx, ready_rx) = async_channel::unbounded();
        let retain = options.capacity - 1;
        Ok(Arc::new_cyclic(|this| LimitedSizeQueue {
            dispatcher: Arc::new(Dispatcher::new(id.clone(), options.lock_timeout)),
            id,
            options,
            this: this.clone(),
            jobs: DashMap::new(),
            ready_tx,
            ready_rx,
            delayed: Arc::new(Delayed::default()),
            scopes: ScopeManager::new(),
            retained: (retain > 0).then(|| ArrayQueue::new(retain)),
            gate: Gate::new(options.capacity),
            counts: Counts::default(),
            runner: Mutex::new(None),
            started: AtomicBool::new(false),
            lifetime: CancellationToken::new(),
            timer: Mutex::new(None),
        }))
    }

    /// The queue's options.
    pub fn options(&self) -> LimitedSizeOptions {
        self.options
    }

    /// The queue's dispatcher.
    pub fn dispatcher(&self) -> &Arc<Dispatcher> {
        &self.dispatcher
    }

    /// The number of jobs stored: pending, running, and retained completed jobs.
    pub fn stored(&self) -> usize {
        self.jobs.len()
    }

    fn arc(&self) -> Arc<dyn Queue> {
        self.this
            .upgrade()
            .expect("a queue method runs while the queue is alive")
    }

    /// Puts `job` in the dispatch line, or in the timer heap if it must wait.
    fn enqueue(&self, job: JobRef) {
        let wait_until = job.base().metadata().time_info.wait_until;
        match wait_until {
            Some(at) if at >= Utc::now() => self.delayed.push(at, job),
            _ => {
                // The channel is unbounded and lives as long as the queue: sending cannot fail.
                let _ = self.ready_tx.try_send(job);
            }
        }
    }

    /// A job left the pending set.
    fn leave_pending(&self) {
        self.gate.give_back();
    }

    /// Decides what to do with a job taken from the dispatch line; `Some` if it was dispatched.
    fn try_dispatch(&self, job: JobRef) -> Option<JobRef> {
        let now = Utc::now();
        let (completed, stale, waiting, scopes) = {
            let meta = job.base().metadata();
            (
                meta.status.completed,
                meta.time_info.is_stale_at(now),
                !meta.time_info.is_dispatchable_at(now),
                meta.scopes.clone(),
            )
        };
        let id = job.base().shared_id();
        if completed {
            // Completed while it waited (by a manager, say): it has nothing left to do.
            self.leave_pending();
            return None;
        }
        if stale {
            self.jobs.remove(id);
            // Give up the scopes it holds (those taken at enqueue, or by a save), waking the jobs
            // waiting for them: a dropped job must not keep them forever.
            let held: Vec<String> = scopes
                .into_iter()
                .filter(|scope| self.scopes.holder(scope).as_deref() == Some(&**id))
                .collect();
            if let Ok(woken) = self.scopes.release(id, &held) {
                self.requeue(woken);
            }
            self.counts.expired.fetch_add(1, Ordering::SeqCst);
            self.leave_pending();
            tracing::debug!(queue_id = %self.id, job_id = %id, "dropped job past its dispatch_by deadline");
            return None;
        }
        if waiting {
            // Saved with a later wait_until after it was put: wait for it.
            let at = job.base().metadata().time_info.wait_until.unwrap_or(now);
            self.delayed.push(at, job);
            return None;
        }
        if self
            .scopes
            .acquire_or_wait(id, &scopes, job.clone())
            .is_err()
        {
            // Parked beside the scope; the release freeing it puts the job back in line.
            return None;
        }
        if let Err(error) = self.dispatcher.dispatch(&job) {
            let _ = self
                .scopes
                .release(id, &scopes)
                .map(|woken| self.requeue(woken));
            self.leave_pending();
            tracing::warn!(queue_id = %self.id, job_id = %id, error = %error, "could not dispatch job");
            return None;
        }
        self.leave_pending();
        Some(job)
    }

    fn requeue(&self, jobs: Vec<JobRef>) {
        for job in jobs {
            let _ = self.ready_tx.try_send(job);
        }
    }

    /// Retains a completed job, forgetting the oldest retained one when full.
    fn retain(&self, id: &Arc<str>) {
        let evicted = match &self.retained {
            Some(ring) => ring.force_push(id.clone()),
            None => Some(id.clone()),
        };
        if let Some(evicted) = evicted {
            self.jobs.remove_if(&evicted, |_, stored| stored.completed);
        }
    }

    /// Moves jobs from the timer heap to the dispatch line when their time comes.
    async fn run_timer(
        delayed: Arc<Delayed>,
        ready: async_channel::Sender<JobRef>,
        lifetime: CancellationToken,
    ) {
        loop {
            let (due, wait) = delayed.take_due(Utc::now());
            for job in due {
                let _ = ready.try_send(job);
            }
            let wait = wait.unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                _ = lifetime.cancelled() => return,
                _ = delayed.changed() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

#[async_trait]
impl Queue for LimitedSizeQueue {
    fn id(&self) -> &str {
        &self.id
    }

    async fn put(&self, job: JobRef) -> Result<()> {
        if !self.started.load(Ordering::SeqCst) {
            return Err(Error::NotStarted("queue"));
        }
        if self.lifetime.is_cancelled() {
            return Err(Error::Closed("queue"));
        }
        let id = job.base().shared_id().clone();
        if self.jobs.contains_key(&id) {
            return Err(Error::duplicate_job(&*id));
        }
        // Nobody makes room in a closed queue: stop waiting when it closes.
        tokio::select! {
            biased;
            _ = self.lifetime.cancelled() => return Err(Error::Closed("queue")),
            _ = self.gate.take() => {}
        }
        let enqueue_scopes = {
            let mut meta = job.base().metadata();
            meta.time_info.created = Some(Utc::now());
            if let Err(error) = meta.time_info.validate() {
                drop(meta);
                self.gate.give_back();
                return Err(Error::invalid_job(&*id, error));
            }
            meta.effective_enqueue_scopes()
        };
        match self.jobs.entry(id.clone()) {
            Entry::Occupied(_) => {
                self.gate.give_back();
                return Err(Error::duplicate_job(&*id));
            }
            Entry::Vacant(entry) => {
                entry.insert(Stored {
                    job: job.clone(),
                    completed: false,
                });
            }
        }
        if let Err(error) = self.scopes.acquire(&id, &enqueue_scopes) {
            self.jobs.remove(&id);
            self.gate.give_back();
            return Err(error);
        }
        self.counts.total.fetch_add(1, Ordering::SeqCst);
        self.enqueue(job);
        Ok(())
    }

    async fn put_many(&self, jobs: Vec<JobRef>) -> Result<()> {
        let mut errors = Vec::new();
        for job in jobs {
            if let Err(error) = self.put(job).await {
                errors.push(error);
            }
        }
        collate_write_errors(errors)
    }

    async fn get(&self, id: &str) -> Result<JobRef> {
        self.jobs
            .get(id)
            .map(|stored| stored.job.clone())
            .ok_or_else(|| Error::job_not_found(id))
    }

    async fn next(&self) -> Option<JobRef> {
        loop {
            let job = tokio::select! {
                biased;
                _ = self.lifetime.cancelled() => return None,
                job = self.ready_rx.recv() => job.ok()?,
            };
            if let Some(job) = self.try_dispatch(job) {
                return Some(job);
            }
        }
    }

    fn info(&self) -> QueueInfo {
        QueueInfo {
            started: self.started.load(Ordering::SeqCst),
            lock_timeout: self.options.lock_timeout,
        }
    }

    async fn complete(&self, job: &JobRef) -> Result<()> {
        let id = job.base().shared_id();
        self.dispatcher.complete(job);
        {
            let Some(mut stored) = self.jobs.get_mut(id) else {
                return Err(Error::job_not_found_because(&**id, "not in the queue"));
            };
            if stored.completed {
                return Ok(());
            }
            stored.completed = true;
            if !Arc::ptr_eq(&stored.job, job) {
                stored.job = job.clone();
            }
        }
        let scopes = {
            let mut meta = job.base().metadata();
            meta.status.completed = true;
            meta.status.in_progress = false;
            meta.status.modification_time = Some(Utc::now());
            meta.status.modification_count += 1;
            if meta.scopes.is_empty() {
                Vec::new()
            } else {
                meta.scopes.clone()
            }
        };
        if !scopes.is_empty() {
            match self.scopes.release(id, &scopes) {
                Ok(woken) => self.requeue(woken),
                Err(error) => {
                    tracing::warn!(queue_id = %self.id, job_id = %id, error = %error, "could not release scopes")
                }
            }
        }
        self.counts.completed.fetch_add(1, Ordering::SeqCst);
        self.retain(id);
        Ok(())
    }

    async fn save(&self, job: &JobRef) -> Result<()> {
        if !self.started.load(Ordering::SeqCst) {
            return Err(Error::NotStarted("queue"));
        }
        let id = job.base().shared_id();
        let scopes = job.scopes();
        let Some(mut stored) = self.jobs.get_mut(id) else {
            return Err(Error::job_not_found(&**id));
        };
        self.scopes.acquire(id, &scopes)?;
        if !Arc::ptr_eq(&stored.job, job) {
            stored.job = job.clone();
        }
        Ok(())
    }

    async fn results(&self) -> JobStream {
        let completed: Vec<Result<JobRef>> = self
            .jobs
            .iter()
            .filter(|entry| entry.completed)
            .map(|entry| Ok(entry.job.clone()))
            .collect();
        Box::pin(stream::iter(completed))
    }

    async fn job_info(&self) -> JobInfoStream {
        let infos: Vec<Result<JobInfo>> = self
            .jobs
            .iter()
            .map(|entry| Ok(JobInfo::new(&*entry.job)))
            .collect();
        Box::pin(stream::iter(infos))
    }

    async fn stats(&self) -> Result<QueueStats> {
        // Completed and expired are read before total, so that a job put meanwhile can only
        // make the stats look less complete, never more.
        let completed = self.counts.completed.load(Ordering::SeqCst);
        let expired = self.counts.expired.load(Ordering::SeqCst);
        let total = self.counts.total.load(Ordering::SeqCst);
        let pending = self
            .gate
            .taken()
            .min(total.saturating_sub(completed + expired));
        Ok(QueueStats {
            running: total.saturating_sub(completed + expired + pending),
            completed,
            pending,
            expired,
            total,
            ..QueueStats::default()
        })
    }

    fn runner(&self) -> Option<Arc<dyn Runner>> {
        self.runner.lock().clone()
    }

    fn set_runner(&self, runner: Arc<dyn Runner>) -> Result<()> {
        if self.started.load(Ordering::SeqCst) {
            return Err(Error::AlreadyStarted("queue"));
        }
        runner.set_queue(self.arc())?;
        *self.runner.lock() = Some(runner);
        Ok(())
    }

    async fn start(&self) -> Result<()> {
        let runner = self
            .runner()
            .ok_or_else(|| Error::invalid(format!("queue '{}' has no runner", self.id)))?;
        if self.lifetime.is_cancelled() {
            return Err(Error::Closed("queue"));
        }
        if self.started.swap(true, Ordering::SeqCst) {
            return Err(Error::AlreadyStarted("queue"));
        }
        let this = self.arc();
        self.dispatcher.start_heartbeat(Arc::downgrade(&this));
        let timer = Self::run_timer(
            self.delayed.clone(),
            self.ready_tx.clone(),
            self.lifetime.clone(),
        );
        *self.timer.lock() = Some(tokio::spawn(timer));
        if let Err(error) = runner.start().await {
            self.started.store(false, Ordering::SeqCst);
            return Err(error);
        }
        Ok(())
    }

    async fn close(&self) {
        if let Some(runner) = self.runner() {
            runner.close().await;
        }
        self.lifetime.cancel();
        self.ready_tx.close();
        self.dispatcher.close().await;
        let timer = self.timer.lock().take();
        if let Some(timer) = timer {
            let _ = timer.await;
        }
    }
}

impl Drop for LimitedSizeQueue {
    /// A queue dropped without [`close`](Queue::close) still stops its background tasks.
    fn drop(&mut self) {
        self.lifetime.cancel();
    }
}

//! [`LocalQueue`]: the engine of every in-memory queue that holds the jobs themselves, generic
//! over its dispatch [`Line`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use amboy_core::{
    Error, JobId, JobInfo, JobInfoStream, JobRef, JobStream, LOCK_TIMEOUT, Metadata, Queue,
    QueueInfo, QueueStats, Result, Runner, collate_write_errors,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use crossbeam_queue::ArrayQueue;
use crossbeam_utils::CachePadded;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use futures::stream;
use tokio_util::sync::CancellationToken;

use crate::delayed::Delayed;
use crate::deps::{Dependencies, Edge, Verdict, order_batch};
use crate::gate::Gate;
use crate::lifecycle::Lifecycle;
use crate::line::{Adaptive, ByPriority, Fifo, Line, Ordered, Shuffled};
use crate::{Dispatcher, ScopeManager};

/// The job map's hasher: fast on short string keys.
type Hasher = foldhash::fast::RandomState;

/// How often jobs blocked by their dependency manager's state are asked again.
const RECHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Options of a [`LocalQueue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalQueueOptions {
    /// How many jobs may wait to run; a put beyond it waits for room. At least 1. The queue also
    /// retains the last `capacity − 1` completed jobs.
    pub capacity: usize,
    /// How long the queue's locks last without a heartbeat.
    pub lock_timeout: Duration,
}

impl LocalQueueOptions {
    /// Options with `capacity` and amboy's lock timeout.
    pub fn new(capacity: usize) -> Self {
        LocalQueueOptions {
            capacity,
            lock_timeout: LOCK_TIMEOUT,
        }
    }

    /// Checks the options.
    pub fn validate(&self) -> Result<()> {
        if self.capacity == 0 {
            return Err(Error::invalid("local queue capacity must be at least 1"));
        }
        if self.lock_timeout.is_zero() {
            return Err(Error::invalid("lock timeout must be positive"));
        }
        Ok(())
    }
}

/// An in-memory queue that holds the jobs themselves: [`get`](Queue::get) returns the job a
/// worker runs. The [`Line`] decides the dispatch order and whether dependencies are honoured;
/// the aliases name amboy's queues:
///
/// | alias | line | order | amboy |
/// |---|---|---|---|
/// | [`LimitedSizeQueue`] | [`Fifo`] | first in, first out | `LocalLimitedSize` |
/// | [`PriorityQueue`] | [`ByPriority`] | higher priority first, FIFO among equals | `LocalPriorityQueue` |
/// | [`ShuffledQueue`] | [`Shuffled`] | random | `LocalShuffled` |
/// | [`DependencyOrderedQueue`] | [`Ordered`] | after its edges, FIFO | `LocalOrdered` |
/// | [`AdaptiveOrderingQueue`] | [`Adaptive`] | after its edges, random | `AdaptiveOrdering` |
///
/// Every kind:
///
/// * holds the jobs themselves: `save` and `complete` take the very job the queue holds (a copy
///   with the same ID is refused), and a job completed or running elsewhere cannot be put;
/// * holds at most `capacity` pending jobs: [`put`](Queue::put) waits for room (and fails with
///   a closed-queue error if the queue closes meanwhile). Only the limited-size queue refuses
///   jobs before it starts, as amboy's does;
/// * keeps jobs whose `wait_until` lies ahead in a timer heap, out of the line; drops a job past
///   its `dispatch_by` when its turn comes, releasing its scopes and counting it as `expired`;
/// * parks a job whose scopes are held beside the scope and puts it back in line the moment the
///   scope is released (amboy left such a job locked until its lock timed out);
/// * retains the last `capacity − 1` completed jobs for [`results`](Queue::results) and
///   [`get`](Queue::get); older ones are forgotten but still counted.
///
/// The dependency-aware kinds read a job's edges and state when it is put: an edge to a job the
/// queue does not know, or a cycle, is an error then; a job runs once all its edges completed
/// and its manager says `Ready`; a `Passed` job completes without running; an `Unresolved` job
/// (or one whose edge expired) completes with an error giving the reason. Jobs waiting for
/// edges or for their manager count as `blocked`.
#[derive(Debug)]
pub struct LocalQueue<L: Line> {
    id: Arc<str>,
    options: LocalQueueOptions,
    this: Weak<LocalQueue<L>>,
    jobs: DashMap<JobId, JobRef, Hasher>,
    line: Arc<L>,
    delayed: Arc<Delayed<JobRef>>,
    scopes: ScopeManager<JobRef>,
    dispatcher: Arc<Dispatcher>,
    dependencies: Option<Dependencies>,
    retained: Option<ArrayQueue<JobId>>,
    gate: Gate,
    counts: Counts,
    lifecycle: Lifecycle,
}

/// amboy's limited-size queue: first in, first out.
pub type LimitedSizeQueue = LocalQueue<Fifo>;
/// A queue dispatching higher priorities first (amboy's priority queue).
pub type PriorityQueue = LocalQueue<ByPriority>;
/// A queue dispatching ready jobs in random order (amboy's shuffled queue).
pub type ShuffledQueue = LocalQueue<Shuffled>;
/// A queue running each job after the jobs it depends on (amboy's ordered queue).
pub type DependencyOrderedQueue = LocalQueue<Ordered>;
/// A dependency-aware queue dispatching ready jobs in random order (amboy's adaptive-ordering
/// queue).
pub type AdaptiveOrderingQueue = LocalQueue<Adaptive>;

#[derive(Debug, Default)]
struct Counts {
    /// Written by putters; on its own cache line, away from what workers write.
    total: CachePadded<AtomicUsize>,
    completed: CachePadded<AtomicUsize>,
    expired: AtomicUsize,
    unresolved: AtomicUsize,
}

/// What became of a job taken from the line.
enum Taken {
    Dispatched(JobRef),
    Skipped,
}

impl<L: Line> LocalQueue<L> {
    /// A queue for at most `capacity` pending jobs (at least 1), with amboy's lock timeout.
    pub fn new(capacity: usize) -> Arc<Self> {
        Self::with_options(LocalQueueOptions::new(capacity.max(1))).expect("valid options")
    }

    /// A queue with these options.
    pub fn with_options(options: LocalQueueOptions) -> Result<Arc<Self>> {
        options.validate()?;
        let id: Arc<str> = Arc::from(format!("queue.local.{}.{}", L::KIND, uuid::Uuid::new_v4()));
        let retain = options.capacity - 1;
        Ok(Arc::new_cyclic(|this| LocalQueue {
            dispatcher: Arc::new(Dispatcher::new(id.clone(), options.lock_timeout)),
            id,
            options,
            this: this.clone(),
            jobs: DashMap::with_hasher(Hasher::default()),
            line: Arc::new(L::default()),
            delayed: Arc::new(Delayed::default()),
            scopes: ScopeManager::new(),
            dependencies: L::DEPENDENCIES.then(Dependencies::default),
            retained: (retain > 0).then(|| ArrayQueue::new(retain)),
            gate: Gate::new(options.capacity),
            counts: Counts::default(),
            lifecycle: Lifecycle::default(),
        }))
    }

    /// The queue's options.
    pub fn options(&self) -> LocalQueueOptions {
        self.options
    }

    /// The queue's dispatcher, which marks dispatched jobs (the queue refreshes their locks
    /// itself, see [`refresh_locks`](Self::refresh_locks)).
    pub fn dispatcher(&self) -> &Arc<Dispatcher> {
        &self.dispatcher
    }

    /// The number of jobs stored: pending, blocked, running, and retained completed jobs.
    pub fn stored(&self) -> usize {
        self.jobs.len()
    }

    fn arc(&self) -> Arc<dyn Queue> {
        self.this
            .upgrade()
            .expect("a queue method runs while the queue is alive")
    }

    /// Sends a job to the line, or to the timer heap if it must wait.
    fn enqueue(&self, job: JobRef) {
        let wait_until = job.base().metadata().time_info.wait_until;
        self.route(job, wait_until, amboy_core::clock::now());
    }

    /// Sends a job whose `wait_until` is known to the line or the timer heap.
    fn route(&self, job: JobRef, wait_until: Option<DateTime<Utc>>, now: DateTime<Utc>) {
        match wait_until {
            Some(at) if at >= now => self.delayed.push(at, job),
            _ => self.line.push(job),
        }
    }

    fn requeue(&self, jobs: Vec<JobRef>) {
        for job in jobs {
            self.line.push(job);
        }
    }

    /// Decides what to do with a job taken from the line, under one lock of its metadata.
    fn take(&self, job: JobRef) -> Taken {
        let now = amboy_core::clock::now();
        let id = job.base().job_id();
        let mut meta = job.base().metadata();
        if meta.status.completed {
            // Completed while it waited (by a manager, say), which gave its place back already.
            return Taken::Skipped;
        }
        if meta.time_info.is_stale_at(now) {
            let scopes = meta.scopes.clone();
            drop(meta);
            self.expire(&job, &scopes);
            return Taken::Skipped;
        }
        if !meta.time_info.is_dispatchable_at(now) {
            // Saved with a later wait_until after it was put: wait for it.
            let at = meta.time_info.wait_until.unwrap_or(now);
            drop(meta);
            self.delayed.push(at, job);
            return Taken::Skipped;
        }
        if !meta.scopes.is_empty()
            && self
                .scopes
                .acquire_or_wait(id, &meta.scopes, job.clone())
                .is_err()
        {
            // Parked beside the scope: the release freeing it puts the job back in line.
            return Taken::Skipped;
        }
        if let Err(error) = self.dispatcher.mark(id, &mut meta, now) {
            let scopes = meta.scopes.clone();
            drop(meta);
            self.release_scopes(id, &scopes);
            self.gate.give_back();
            tracing::warn!(queue_id = %self.id, job_id = %id, error = %error, "could not dispatch job");
            return Taken::Skipped;
        }
        drop(meta);
        // The heartbeat finds running jobs in the map: nothing to register.
        self.gate.give_back();
        Taken::Dispatched(job)
    }

    /// Drops a job that missed its `dispatch_by` deadline.
    fn expire(&self, job: &JobRef, scopes: &[String]) {
        let id = job.base().job_id();
        // Recorded as expired before it leaves the map, so that a job put meanwhile with an edge
        // to it finds it in one or the other.
        let verdicts = self
            .dependencies
            .as_ref()
            .map(|dependencies| dependencies.expired(id));
        self.jobs.remove(id);
        self.release_scopes(id, scopes);
        self.counts.expired.fetch_add(1, Ordering::SeqCst);
        self.gate.give_back();
        tracing::debug!(queue_id = %self.id, job_id = %id, "dropped job past its dispatch_by deadline");
        if let Some(verdicts) = verdicts {
            self.apply(verdicts);
        }
    }

    /// Releases the scopes `id` holds among `scopes`, waking the jobs waiting for them.
    fn release_scopes(&self, id: &JobId, scopes: &[String]) {
        if scopes.is_empty() {
            return;
        }
        let id = id.as_str();
        let held: Vec<String> = scopes
            .iter()
            .filter(|scope| self.scopes.holder(scope).as_deref() == Some(id))
            .cloned()
            .collect();
        match self.scopes.release(id, &held) {
            Ok(woken) => self.requeue(woken),
            Err(error) => {
                tracing::warn!(queue_id = %self.id, job_id = id, error = %error, "could not release scopes")
            }
        }
    }

    /// Marks a job completed under its lock; returns its scopes, or `None` if it was completed
    /// already.
    fn mark_completed(meta: &mut Metadata, dispatched: bool) -> Option<Vec<String>> {
        if meta.status.completed && !dispatched {
            return None;
        }
        Some(Self::mark(meta, dispatched))
    }

    /// Marks a job completed under its lock; returns its scopes.
    fn mark(meta: &mut Metadata, dispatched: bool) -> Vec<String> {
        let now = amboy_core::clock::now();
        if dispatched || meta.time_info.end.is_none() {
            meta.time_info.end = Some(now);
        }
        meta.status.completed = true;
        meta.status.in_progress = false;
        meta.status.modification_time = Some(now);
        meta.status.modification_count += 1;
        if meta.scopes.is_empty() {
            Vec::new()
        } else {
            meta.scopes.clone()
        }
    }

    /// Everything that follows a job's completion: its scopes, the counts, retention, and the
    /// jobs that depended on it.
    fn finish(&self, id: &JobId, scopes: &[String]) {
        self.release_scopes(id, scopes);
        self.counts.completed.fetch_add(1, Ordering::SeqCst);
        self.retain(id);
        if let Some(dependencies) = &self.dependencies {
            let verdicts = dependencies.finished(id);
            if !verdicts.is_empty() {
                self.apply(verdicts);
            }
        }
    }

    /// Carries out dependency verdicts: runs, passes or fails the jobs, and whatever follows.
    fn apply(&self, verdicts: Vec<Verdict>) {
        let mut work = verdicts;
        while let Some(verdict) = work.pop() {
            let (job, error) = match verdict {
                Verdict::Run(job) => {
                    self.enqueue(job);
                    continue;
                }
                Verdict::Pass(job) => (job, None),
                Verdict::Fail(job, reason) => (job, Some(reason)),
            };
            // Completed without running: it leaves the pending set now.
            let scopes = {
                let mut meta = job.base().metadata();
                if let Some(reason) = &error {
                    meta.add_error(format!("job '{}' cannot run: {reason}", job.id()));
                }
                Self::mark_completed(&mut meta, false)
            };
            let Some(scopes) = scopes else { continue };
            if error.is_some() {
                self.counts.unresolved.fetch_add(1, Ordering::SeqCst);
            }
            self.gate.give_back();
            let id = job.base().job_id();
            self.release_scopes(id, &scopes);
            self.counts.completed.fetch_add(1, Ordering::SeqCst);
            self.retain(id);
            if let Some(dependencies) = &self.dependencies {
                work.extend(dependencies.finished(id));
            }
        }
    }

    /// Retains a completed job, forgetting the oldest retained one when full.
    fn retain(&self, id: &JobId) {
        let evicted = match &self.retained {
            Some(ring) => ring.force_push(id.clone()),
            None => Some(id.clone()),
        };
        // Each completion pushes its ID once, and a completed job leaves the map only here, so
        // the entry under an evicted ID is that completed job.
        if let Some(evicted) = evicted {
            // Edges to it stay met: recorded before the job leaves the map.
            if let Some(dependencies) = &self.dependencies {
                dependencies.evicted(&evicted);
            }
            self.jobs.remove(&evicted);
        }
    }

    /// Checks and prepares a job being put; returns its enqueue scopes.
    fn prepare(
        &self,
        job: &JobRef,
        now: DateTime<Utc>,
    ) -> Result<(Vec<String>, Option<DateTime<Utc>>)> {
        let mut meta = job.base().metadata();
        // A job that ran, or runs, elsewhere is not a job to put: it would never be dispatched.
        if meta.status.completed || meta.status.in_progress {
            let state = if meta.status.completed {
                "completed"
            } else {
                "in progress"
            };
            return Err(Error::invalid_job(
                job.id(),
                format!("it is {state} already; put a new job instead"),
            ));
        }
        meta.time_info.created = Some(now);
        if let Err(error) = meta.time_info.validate() {
            return Err(Error::invalid_job(job.id(), error));
        }
        let scopes = if meta.scopes.is_empty() {
            Vec::new()
        } else {
            meta.effective_enqueue_scopes()
        };
        Ok((scopes, meta.time_info.wait_until))
    }

    /// Adds a job: [`Queue::put`], without boxing the future when called on the queue's own
    /// type.
    pub async fn put(&self, job: JobRef) -> Result<()> {
        if !L::PUT_BEFORE_START && !self.lifecycle.started() {
            return Err(Error::NotStarted("queue"));
        }
        if self.lifecycle.is_closed() {
            return Err(Error::Closed("queue"));
        }
        let id = job.base().job_id().clone();
        let now = amboy_core::clock::now();
        let (enqueue_scopes, wait_until) = self.prepare(&job, now)?;
        if !self.gate.try_take() {
            if self.jobs.contains_key(&id) {
                return Err(Error::duplicate_job(&*id));
            }
            // Nobody makes room in a closed queue: stop waiting when it closes.
            tokio::select! {
                biased;
                _ = self.lifecycle.lifetime().cancelled() => return Err(Error::Closed("queue")),
                _ = self.gate.take() => {}
            }
        }
        match self.jobs.entry(id.clone()) {
            Entry::Occupied(_) => {
                self.gate.give_back();
                return Err(Error::duplicate_job(&*id));
            }
            Entry::Vacant(entry) => {
                entry.insert(job.clone());
            }
        }
        if !enqueue_scopes.is_empty()
            && let Err(error) = self.scopes.acquire(&id, &enqueue_scopes)
        {
            self.withdraw(&id);
            return Err(error);
        }
        let Some(dependencies) = &self.dependencies else {
            self.counts.total.fetch_add(1, Ordering::SeqCst);
            self.route(job, wait_until, now);
            return Ok(());
        };
        let lookup = |edge: &str| match self.jobs.get(edge) {
            None => Edge::Missing,
            Some(stored) if stored.base().metadata().status.completed => Edge::Finished,
            Some(_) => Edge::Unfinished,
        };
        let verdict = match dependencies.admit(&job, lookup) {
            Ok(verdict) => verdict,
            Err(error) => {
                self.release_scopes(&id, &enqueue_scopes);
                self.withdraw(&id);
                return Err(error);
            }
        };
        self.counts.total.fetch_add(1, Ordering::SeqCst);
        match verdict {
            Some(Verdict::Run(job)) => self.route(job, wait_until, now),
            Some(verdict) => self.apply(vec![verdict]),
            None => {}
        }
        Ok(())
    }

    /// Takes back a job whose put failed after it entered the map: jobs that saw it there and
    /// began waiting on it can never run, and are completed with the reason.
    fn withdraw(&self, id: &JobId) {
        self.jobs.remove(id);
        self.gate.give_back();
        if let Some(dependencies) = &self.dependencies {
            let verdicts = dependencies.withdrawn(id);
            self.apply(verdicts);
        }
    }

    /// Completes a job; everything a completion does happens here, without waiting.
    fn complete_now(&self, job: &JobRef) -> Result<()> {
        let id = job.base().job_id();
        // The common case, a job running here, takes the job's lock once: such a job is the one
        // the queue stores (only completed jobs leave the map otherwise).
        let scopes = {
            let mut meta = job.base().metadata();
            self.runs_here(&meta).then(|| Self::mark(&mut meta, true))
        };
        let scopes = match scopes {
            Some(scopes) => scopes,
            None => match self.complete_waiting(id, job)? {
                Some(scopes) => scopes,
                None => return Ok(()),
            },
        };
        self.finish(id, &scopes);
        Ok(())
    }

    /// Completes a job that is not running here: it must be the very job the queue holds, not
    /// a copy or a stale job whose ID was reused. Returns its scopes, or `None` if it was
    /// completed already.
    fn complete_waiting(&self, id: &JobId, job: &JobRef) -> Result<Option<Vec<String>>> {
        match self.jobs.get(id) {
            None => return Err(Error::job_not_found_because(&**id, "not in the queue")),
            Some(stored) if !Arc::ptr_eq(&stored, job) => {
                return Err(Error::job_not_found_because(
                    &**id,
                    "the queue holds another job with this ID",
                ));
            }
            Some(_) => {}
        }
        // Whether the job waited to run (in the line, the timer heap, beside a scope or in the
        // dependency graph), decided under its lock so that a concurrent dispatch cannot slip
        // in. The heartbeat refreshes only jobs in progress, so once marked a job is never
        // refreshed again.
        let (scopes, was_pending) = {
            let mut meta = job.base().metadata();
            let dispatched = self.runs_here(&meta);
            if meta.status.completed && !dispatched {
                return Ok(None);
            }
            let was_pending = !dispatched && !meta.status.in_progress;
            (Self::mark(&mut meta, dispatched), was_pending)
        };
        if was_pending {
            // It leaves the pending set now; the line skips it when its turn comes.
            if let Some(dependencies) = &self.dependencies {
                dependencies.forget(id);
            }
            self.gate.give_back();
        }
        Ok(Some(scopes))
    }

    /// Whether the job is running, dispatched by this queue.
    fn runs_here(&self, meta: &Metadata) -> bool {
        meta.status.in_progress && meta.status.owner.as_deref() == Some(&*self.id)
    }

    /// Whether the job `id` is running, dispatched by this queue (its lock is kept alive).
    pub fn is_dispatched(&self, id: &str) -> bool {
        self.jobs
            .get(id)
            .is_some_and(|job| self.runs_here(&job.base().metadata()))
    }

    /// The number of jobs running, dispatched by this queue. Scans every stored job.
    pub fn dispatched(&self) -> usize {
        self.jobs
            .iter()
            .filter(|job| self.runs_here(&job.base().metadata()))
            .count()
    }

    /// Refreshes the locks of the jobs running here (the lock heartbeat runs this every quarter
    /// of the lock timeout); returns how many it refreshed. A job past its `max_time` is left
    /// to lapse.
    pub fn refresh_locks(&self) -> usize {
        let now = amboy_core::clock::now();
        self.jobs
            .iter()
            .filter(|job| self.dispatcher.refresh(&mut job.base().metadata(), now))
            .count()
    }

    async fn run_heartbeat(queue: Weak<Self>, interval: Duration, lifetime: CancellationToken) {
        let start = tokio::time::Instant::now() + interval;
        let mut ticks = tokio::time::interval_at(start, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = lifetime.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let Some(queue) = queue.upgrade() else { return };
            queue.refresh_locks();
        }
    }

    /// Stores a job's state, without waiting.
    fn save_now(&self, job: &JobRef) -> Result<()> {
        if !L::PUT_BEFORE_START && !self.lifecycle.started() {
            return Err(Error::NotStarted("queue"));
        }
        let id = job.base().job_id();
        let Some(stored) = self.jobs.get(id) else {
            return Err(Error::job_not_found(&**id));
        };
        // The queue holds the job itself: saving means saving that job. A copy (or a stale job
        // whose ID was reused) would replace the job in line and be counted twice.
        if !Arc::ptr_eq(&stored, job) {
            return Err(Error::job_not_found_because(
                &**id,
                "the queue holds another job with this ID",
            ));
        }
        {
            // A finished job holds no scopes: taking them again would keep them forever (a
            // heartbeat's save racing the completion did). Checked under the job's lock, which
            // the completion takes to mark the job, so it cannot slip in between.
            let meta = job.base().metadata();
            if !meta.status.completed {
                self.scopes.acquire(id, &meta.scopes)?;
            }
        }
        Ok(())
    }

    /// Moves jobs from the timer heap to the line when their time comes, and asks blocked
    /// managers again now and then.
    async fn run_timer(
        queue: Weak<Self>,
        delayed: Arc<Delayed<JobRef>>,
        line: Arc<L>,
        lifetime: CancellationToken,
    ) {
        let mut last_recheck = tokio::time::Instant::now();
        loop {
            let (due, wait) = delayed.take_due(amboy_core::clock::now());
            for job in due {
                line.push(job);
            }
            let mut wait = wait.unwrap_or(Duration::from_secs(3600));
            if L::DEPENDENCIES {
                if last_recheck.elapsed() >= RECHECK_INTERVAL {
                    last_recheck = tokio::time::Instant::now();
                    let Some(queue) = queue.upgrade() else { return };
                    if let Some(dependencies) = &queue.dependencies {
                        let verdicts = dependencies.recheck();
                        queue.apply(verdicts);
                    }
                }
                wait = wait.min(RECHECK_INTERVAL);
            }
            tokio::select! {
                _ = lifetime.cancelled() => return,
                _ = delayed.changed() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

#[async_trait]
impl<L: Line> Queue for LocalQueue<L> {
    fn id(&self) -> &str {
        &self.id
    }

    async fn put(&self, job: JobRef) -> Result<()> {
        LocalQueue::put(self, job).await
    }

    async fn put_many(&self, jobs: Vec<JobRef>) -> Result<()> {
        let (jobs, mut errors) = if L::DEPENDENCIES {
            order_batch(jobs)
        } else {
            (jobs, Vec::new())
        };
        for job in jobs {
            if let Err(error) = LocalQueue::put(self, job).await {
                errors.push(error);
            }
        }
        collate_write_errors(errors)
    }

    async fn get(&self, id: &str) -> Result<JobRef> {
        self.jobs
            .get(id)
            .map(|job| job.clone())
            .ok_or_else(|| Error::job_not_found(id))
    }

    async fn next(&self) -> Option<JobRef> {
        // Closing the queue closes the line, which ends this wait.
        loop {
            let job = self.line.pop().await?;
            if let Taken::Dispatched(job) = self.take(job) {
                return Some(job);
            }
        }
    }

    fn info(&self) -> QueueInfo {
        QueueInfo {
            started: self.lifecycle.started(),
            lock_timeout: self.options.lock_timeout,
        }
    }

    async fn complete(&self, job: &JobRef) -> Result<()> {
        self.complete_now(job)
    }

    fn try_next(&self) -> Option<JobRef> {
        while let Some(job) = self.line.try_pop() {
            if let Taken::Dispatched(job) = self.take(job) {
                return Some(job);
            }
        }
        None
    }

    fn try_complete(&self, job: &JobRef) -> Option<Result<()>> {
        Some(self.complete_now(job))
    }

    async fn save(&self, job: &JobRef) -> Result<()> {
        self.save_now(job)
    }

    async fn results(&self) -> JobStream {
        let completed: Vec<Result<JobRef>> = self
            .jobs
            .iter()
            .filter(|entry| {
                let meta = entry.base().metadata();
                meta.status.completed && !meta.status.in_progress
            })
            .map(|entry| Ok(entry.value().clone()))
            .collect();
        Box::pin(stream::iter(completed))
    }

    async fn job_info(&self) -> JobInfoStream {
        let infos: Vec<Result<JobInfo>> = self
            .jobs
            .iter()
            .map(|entry| Ok(JobInfo::new(&**entry)))
            .collect();
        Box::pin(stream::iter(infos))
    }

    async fn stats(&self) -> Result<QueueStats> {
        // Completed and expired are read before total, so that a job put meanwhile can only
        // make the stats look less complete, never more. Blocked jobs are counted before and
        // after, and the smaller count kept, so that a job put meanwhile is not counted blocked
        // without being counted in the total.
        let blocked_before = self.dependencies.as_ref().map_or(0, Dependencies::blocked);
        let completed = self.counts.completed.load(Ordering::SeqCst);
        let expired = self.counts.expired.load(Ordering::SeqCst);
        let total = self.counts.total.load(Ordering::SeqCst);
        let blocked_after = self.dependencies.as_ref().map_or(0, Dependencies::blocked);
        let blocked = blocked_before.min(blocked_after);
        let unfinished = total.saturating_sub(completed + expired);
        let blocked = blocked.min(unfinished);
        let pending = self
            .gate
            .taken()
            .saturating_sub(blocked)
            .min(unfinished - blocked);
        let mut stats = QueueStats {
            running: unfinished - blocked - pending,
            completed,
            pending,
            blocked,
            expired,
            total,
            ..QueueStats::default()
        };
        let unresolved = self.counts.unresolved.load(Ordering::SeqCst);
        if unresolved > 0 {
            stats.annotate("unresolved", unresolved)?;
        }
        Ok(stats)
    }

    fn runner(&self) -> Option<Arc<dyn Runner>> {
        self.lifecycle.runner()
    }

    fn set_runner(&self, runner: Arc<dyn Runner>) -> Result<()> {
        self.lifecycle.set_runner(runner, self.arc())
    }

    async fn start(&self) -> Result<()> {
        let runner = self.lifecycle.begin(&self.id)?;
        // The background tasks start once the runner has: a runner that cannot start leaves
        // the queue as it was, ready to start again.
        self.lifecycle.start_runner(&runner).await?;
        let heartbeat = Self::run_heartbeat(
            self.this.clone(),
            self.dispatcher.heartbeat_interval(),
            self.lifecycle.lifetime().clone(),
        );
        self.lifecycle.spawn(heartbeat);
        let timer = Self::run_timer(
            self.this.clone(),
            self.delayed.clone(),
            self.line.clone(),
            self.lifecycle.lifetime().clone(),
        );
        self.lifecycle.spawn(timer);
        Ok(())
    }

    async fn close(&self) {
        self.lifecycle.close_runner().await;
        self.lifecycle.lifetime().cancel();
        self.line.close();
        self.dispatcher.close().await;
        self.lifecycle.end().await;
    }
}

impl<L: Line> Drop for LocalQueue<L> {
    /// A queue dropped without [`close`](Queue::close) still stops its background tasks.
    fn drop(&mut self) {
        self.lifecycle.lifetime().cancel();
        self.line.close();
    }
}

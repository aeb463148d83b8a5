//! [`LocalQueue`]: every in-memory queue that holds the jobs themselves, generic over its
//! dispatch [`Line`]. The user's handle ([`LocalQueue`]) owns an engine that runners share;
//! dropping the last handle closes the engine.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use amboy_core::{
    Dispatcher, Error, JobId, JobInfo, JobInfoStream, JobRef, JobStream, LOCK_TIMEOUT, Metadata,
    Queue, QueueInfo, QueueStats, Result, Runner, collate_write_errors,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use crossbeam_queue::SegQueue;
use crossbeam_utils::CachePadded;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use futures::stream;
use tokio_util::sync::CancellationToken;

use crate::delayed::Delayed;
use crate::deps::{Dependencies, Edge, Ended, Verdict, order_batch};
use crate::gate::Gate;
use crate::line::{Adaptive, ByPriority, Fifo, Line, Ordered, Shuffled};
use crate::{Footprint, ScopeManager};
use amboy_core::Lifecycle;

/// The job map's hasher: fast on short string keys.
type Hasher = foldhash::fast::RandomState;

/// How often jobs blocked by their dependency manager's state are asked again.
const RECHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How many capacities' worth of forgotten jobs a dependency-aware queue remembers (as 8-byte
/// fingerprints) after it stops retaining them, so that edges to them are still judged.
const REMEMBER_CAPACITIES: usize = 4;

/// The shards of a queue's job map.
const JOB_MAP_SHARDS: usize = 64;

/// The claims queues put on the jobs they dispatch: one per queue, never 0.
static CLAIMS: AtomicU64 = AtomicU64::new(1);

/// Options of a [`LocalQueue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalQueueOptions {
    /// How many jobs may wait to run; a put beyond it waits for room. At least 1. The queue also
    /// retains the last `capacity − 1` finished jobs.
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
/// * holds the jobs themselves: `save` and `complete` take the very job the queue holds. A copy
///   (a clone, or a job decoded from its stored form) is refused even when its status says it
///   runs here, and a job completed, running or expired elsewhere cannot be put;
/// * holds at most `capacity` pending jobs: [`put`](Queue::put) waits for room (and fails with
///   a closed-queue error if the queue closes meanwhile). Only the limited-size queue refuses
///   jobs before it starts, as amboy's does;
/// * keeps jobs whose `wait_until` lies ahead in a timer heap, out of the line; sets aside a
///   job past its `dispatch_by` when its turn comes: the job is marked expired
///   ([`JobStatusInfo::expired`](amboy_core::JobStatusInfo::expired)), its scopes are
///   released, it is counted in `stats().expired` and retained like a finished job;
/// * parks a job whose scopes are held beside the scope and puts it back in line the moment the
///   scope is released (amboy left such a job locked until its lock timed out);
/// * retains the last `capacity − 1` finished (completed or expired) jobs for
///   [`results`](Queue::results), [`job_info`](Queue::job_info) and [`get`](Queue::get);
///   older ones are forgotten but still counted. The retained jobs' memory grows with use, not
///   with the capacity.
///
/// The dependency-aware kinds read a job's edges and state when it is put: an edge to a job the
/// queue does not know, or a cycle, is an error then; a job runs once all its edges completed
/// and its manager says `Ready`; a `Passed` job completes without running; an `Unresolved` job
/// (or one whose edge expired) completes with an error giving the reason. Jobs waiting for
/// edges or for their manager count as `blocked`. A finished job the queue no longer retains
/// is remembered, as an 8-byte fingerprint, for `4 × capacity` more forgotten jobs: an edge
/// to it is judged during that time, and is an unknown job after. Managers that do blocking
/// I/O (`local-file`, `create-file`) are asked from a blocking thread, never a runtime worker;
/// a job blocked by its manager's state is asked again every second.
///
/// Dropping the last handle to a started queue closes it in the background, as
/// [`close`](Queue::close) would: its workers and background tasks stop, its running jobs are
/// cancelled.
#[derive(Debug)]
pub struct LocalQueue<L: Line> {
    engine: Arc<Engine<L>>,
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

/// What a local queue is: the state every handle, runner and background task shares. Runners
/// hold the engine, users hold the [`LocalQueue`] handle.
#[derive(Debug)]
struct Engine<L: Line> {
    id: Arc<str>,
    /// The claim this queue puts on the jobs it dispatches.
    claim: u64,
    options: LocalQueueOptions,
    this: Weak<Engine<L>>,
    jobs: DashMap<JobId, JobRef, Hasher>,
    line: Arc<L>,
    delayed: Arc<Delayed<JobRef>>,
    scopes: ScopeManager<JobRef>,
    dispatcher: Arc<Dispatcher>,
    dependencies: Option<Arc<Dependencies>>,
    retained: Retained,
    gate: Gate,
    counts: Counts,
    lifecycle: Lifecycle,
    #[cfg(test)]
    hooks: crate::hooks::Hooks,
}

#[derive(Debug, Default)]
struct Counts {
    /// Written by putters; on its own cache line, away from what workers write.
    total: CachePadded<AtomicUsize>,
    completed: CachePadded<AtomicUsize>,
    expired: AtomicUsize,
    unresolved: AtomicUsize,
}

/// The IDs of the last finished jobs, oldest first, in a queue that grows with use: each
/// finished job pushes its ID once, and pushing beyond the limit evicts the oldest.
#[derive(Debug)]
struct Retained {
    ids: SegQueue<JobId>,
    len: AtomicUsize,
    limit: usize,
}

impl Retained {
    fn new(limit: usize) -> Self {
        Retained {
            ids: SegQueue::new(),
            len: AtomicUsize::new(0),
            limit,
        }
    }

    /// Retains `id`; returns the ID evicted to make room, if any.
    fn push(&self, id: &JobId) -> Option<JobId> {
        if self.limit == 0 {
            return Some(id.clone());
        }
        self.ids.push(id.clone());
        if self.len.fetch_add(1, Ordering::SeqCst) < self.limit {
            return None;
        }
        self.len.fetch_sub(1, Ordering::SeqCst);
        self.ids.pop()
    }

    fn len(&self) -> usize {
        self.ids.len()
    }
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
        Ok(Arc::new(LocalQueue {
            engine: Engine::new(options)?,
        }))
    }

    /// The queue's options.
    pub fn options(&self) -> LocalQueueOptions {
        self.engine.options
    }

    /// The queue's dispatcher, which marks dispatched jobs (the queue refreshes their locks
    /// itself, see [`refresh_locks`](Self::refresh_locks)).
    pub fn dispatcher(&self) -> &Arc<Dispatcher> {
        &self.engine.dispatcher
    }

    /// The number of jobs stored: pending, blocked, running, and retained finished jobs.
    pub fn stored(&self) -> usize {
        self.engine.jobs.len()
    }

    /// The sizes of the queue's internal structures; each is bounded by the capacity.
    pub fn footprint(&self) -> Footprint {
        self.engine.footprint()
    }

    /// The ID of the job holding `scope`, if any: a running job, a pending job holding its
    /// enqueue scopes, or a pending job that waited beside the scope and was handed it (it
    /// holds the scope until it runs).
    pub fn scope_holder(&self, scope: &str) -> Option<String> {
        self.engine.scopes.holder(scope)
    }

    /// Whether the job `id` is running, dispatched by this queue (its lock is kept alive).
    pub fn is_dispatched(&self, id: &str) -> bool {
        self.engine.is_dispatched(id)
    }

    /// The number of jobs running, dispatched by this queue. Scans every stored job.
    pub fn dispatched(&self) -> usize {
        self.engine.dispatched()
    }

    /// Refreshes the locks of the jobs running here (the lock heartbeat runs this every quarter
    /// of the lock timeout); returns how many it refreshed. A job past its `max_time` is left
    /// to lapse. Scans every stored job: the pending ones, the running ones and the retained
    /// finished ones, at most twice the capacity plus the workers.
    pub fn refresh_locks(&self) -> usize {
        self.engine.refresh_locks()
    }

    /// Adds a job: [`Queue::put`], without boxing the future when called on the queue's own
    /// type.
    pub async fn put(&self, job: JobRef) -> Result<()> {
        self.engine.put(job).await
    }
}

impl<L: Line> Drop for LocalQueue<L> {
    /// Dropping the last handle closes the queue: in a task of its own when dropped inside a
    /// tokio runtime (running jobs are cancelled, workers and background tasks stop); outside
    /// one, the line and the background tasks stop at once.
    fn drop(&mut self) {
        let engine = self.engine.clone();
        self.engine
            .lifecycle
            .abandon(async move { engine.close().await }, || {
                self.engine.stop_now()
            });
    }
}

#[async_trait]
impl<L: Line> Queue for LocalQueue<L> {
    fn id(&self) -> &str {
        &self.engine.id
    }

    async fn put(&self, job: JobRef) -> Result<()> {
        self.engine.put(job).await
    }

    async fn put_many(&self, jobs: Vec<JobRef>) -> Result<()> {
        self.engine.put_many(jobs).await
    }

    async fn get(&self, id: &str) -> Result<JobRef> {
        self.engine.get_now(id)
    }

    async fn next(&self) -> Result<JobRef> {
        self.engine.next_job().await
    }

    fn try_next(&self) -> Option<JobRef> {
        self.engine.try_next_job()
    }

    fn try_complete(&self, job: &JobRef) -> Option<Result<()>> {
        Some(self.engine.complete_now(job))
    }

    fn info(&self) -> QueueInfo {
        self.engine.info()
    }

    async fn complete(&self, job: &JobRef) -> Result<()> {
        self.engine.complete_now(job)
    }

    async fn save(&self, job: &JobRef) -> Result<()> {
        self.engine.save_now(job)
    }

    async fn results(&self) -> JobStream {
        self.engine.results_now()
    }

    async fn job_info(&self) -> JobInfoStream {
        self.engine.job_info_now()
    }

    async fn stats(&self) -> Result<QueueStats> {
        self.engine.stats_now()
    }

    fn runner(&self) -> Option<Arc<dyn Runner>> {
        self.engine.lifecycle.runner()
    }

    fn set_runner(&self, runner: Arc<dyn Runner>) -> Result<()> {
        self.engine.set_runner(runner)
    }

    async fn start(&self) -> Result<()> {
        self.engine.start().await
    }

    async fn close(&self) {
        self.engine.close().await
    }
}

impl<L: Line> Engine<L> {
    fn new(options: LocalQueueOptions) -> Result<Arc<Self>> {
        options.validate()?;
        let id: Arc<str> = Arc::from(format!("queue.local.{}.{}", L::KIND, uuid::Uuid::new_v4()));
        let retain = options.capacity - 1;
        Ok(Arc::new_cyclic(|this| Engine {
            dispatcher: Arc::new(Dispatcher::new(id.clone(), options.lock_timeout)),
            id,
            claim: CLAIMS.fetch_add(1, Ordering::Relaxed),
            options,
            this: this.clone(),
            // More shards than dashmap's default (four per core): puts and evictions from
            // many workers meet on a shard's lock less often.
            jobs: DashMap::with_hasher_and_shard_amount(Hasher::default(), JOB_MAP_SHARDS),
            line: Arc::new(L::default()),
            delayed: Arc::new(Delayed::default()),
            scopes: ScopeManager::new(),
            dependencies: L::DEPENDENCIES
                .then(|| Arc::new(Dependencies::new(options.capacity * REMEMBER_CAPACITIES))),
            retained: Retained::new(retain),
            gate: Gate::new(options.capacity),
            counts: Counts::default(),
            lifecycle: Lifecycle::default(),
            #[cfg(test)]
            hooks: crate::hooks::Hooks::default(),
        }))
    }

    fn arc(&self) -> Arc<dyn Queue> {
        self.this
            .upgrade()
            .expect("a queue method runs while the queue is alive")
    }

    fn footprint(&self) -> Footprint {
        let graph = self
            .dependencies
            .as_ref()
            .map(|dependencies| dependencies.size())
            .unwrap_or_default();
        Footprint {
            jobs: self.jobs.len(),
            retained: self.retained.len(),
            waiting: graph.waiting,
            dependents: graph.dependents,
            remembered: graph.remembered,
            parked: self.scopes.waiting(),
            delayed: self.delayed.len(),
            tracked: self.dispatcher.len(),
            ..Footprint::default()
        }
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

    /// Puts jobs handed the scopes they waited for back in line, ahead of the others.
    fn requeue(&self, jobs: Vec<JobRef>) {
        for job in jobs {
            self.line.push_first(job);
        }
    }

    /// Decides what to do with a job taken from the line, under one lock of its metadata.
    fn take(&self, job: JobRef) -> Taken {
        let now = amboy_core::clock::now();
        let id = job.base().job_id();
        let mut meta = job.base().metadata();
        if meta.status.completed || meta.status.expired {
            // Finished while it waited (completed from outside, say), which gave its place back
            // already.
            return Taken::Skipped;
        }
        if meta.time_info.is_stale_at(now) {
            // Decided under the job's lock, where a completion from outside looks too: the job
            // is expired from here on, and nothing else can finish it.
            meta.status.expired = true;
            drop(meta);
            #[cfg(test)]
            self.hooks.run(&self.hooks.after_expiry_decided, &job);
            self.expire(&job);
            return Taken::Skipped;
        }
        if !meta.time_info.is_dispatchable_at(now) {
            // Saved with a later wait_until after it was put (the save took all of its
            // scopes, as amboy's does): wait for it.
            let at = meta.time_info.wait_until.unwrap_or(now);
            drop(meta);
            self.delayed.push(at, job);
            return Taken::Skipped;
        }
        if !meta.scopes.is_empty()
            && self
                .scopes
                .acquire_or_wait_ranked(
                    id,
                    &meta.scopes,
                    if L::BY_PRIORITY { meta.priority } else { 0 },
                    job.clone(),
                )
                .is_err()
        {
            // Parked beside the scope: the release freeing it takes the job's scopes for it
            // and puts it back in line.
            return Taken::Skipped;
        }
        if let Err(error) = self.dispatcher.mark(id, &mut meta, now) {
            drop(meta);
            self.release_scopes(id);
            self.gate.give_back();
            tracing::warn!(queue_id = %self.id, job_id = %id, error = %error, "could not dispatch job");
            return Taken::Skipped;
        }
        meta.set_claim(self.claim);
        drop(meta);
        // The heartbeat finds running jobs in the map: nothing to register.
        self.gate.give_back();
        Taken::Dispatched(job)
    }

    /// Sets aside a job that missed its `dispatch_by` deadline (marked expired under its lock):
    /// it leaves the pending set, releases its scopes, and is retained like a finished job.
    fn expire(&self, job: &JobRef) {
        let id = job.base().job_id();
        if amboy_core::metrics::ENABLED {
            amboy_core::metrics::jobs_expired(&self.id, &job.job_type().name, 1);
        }
        self.release_scopes(id);
        self.gate.give_back();
        tracing::debug!(queue_id = %self.id, job_id = %id, "set aside job past its dispatch_by deadline");
        if let Some(dependencies) = &self.dependencies {
            let verdicts = dependencies.expired(id);
            self.apply(verdicts);
        }
        self.retain(id);
        self.counts.expired.fetch_add(1, Ordering::SeqCst);
    }

    /// Releases every scope `id` holds (its enqueue scopes, those it ran under, those handed to
    /// it while it waited, even any its job no longer names), handing each to the first job
    /// waiting for it that can take all of its scopes, and putting that job back in line, ahead
    /// of the others.
    fn release_scopes(&self, id: &JobId) {
        let woken = self.scopes.release_held(id.as_str(), &[]);
        self.requeue(woken);
    }

    /// Marks a job completed under its lock.
    fn mark(meta: &mut Metadata, dispatched: bool) {
        let now = amboy_core::clock::now();
        if dispatched || meta.time_info.end.is_none() {
            meta.time_info.end = Some(now);
        }
        meta.status.completed = true;
        meta.status.in_progress = false;
        meta.status.modification_time = Some(now);
        meta.status.modification_count += 1;
        meta.set_claim(0);
    }

    /// Everything that follows a job's completion: its scopes, the jobs that depended on it,
    /// retention, and last the count, so that stats saying the queue is complete mean all of
    /// it is done.
    fn finish(&self, id: &JobId) {
        self.release_scopes(id);
        if let Some(dependencies) = &self.dependencies {
            let verdicts = dependencies.finished(id);
            if !verdicts.is_empty() {
                self.apply(verdicts);
            }
        }
        self.retain(id);
        self.counts.completed.fetch_add(1, Ordering::SeqCst);
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
            // Completed without running: it leaves the pending set now, unless it was
            // completed from outside meanwhile.
            {
                let mut meta = job.base().metadata();
                if meta.status.completed {
                    continue;
                }
                if let Some(reason) = &error {
                    meta.add_error(format!("job '{}' cannot run: {reason}", job.id()));
                }
                Self::mark(&mut meta, false);
            }
            if error.is_some() {
                self.counts.unresolved.fetch_add(1, Ordering::SeqCst);
            }
            self.gate.give_back();
            let id = job.base().job_id();
            self.release_scopes(id);
            if let Some(dependencies) = &self.dependencies {
                work.extend(dependencies.finished(id));
            }
            self.retain(id);
            self.counts.completed.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Retains a finished job, forgetting the oldest retained one when full.
    fn retain(&self, id: &JobId) {
        // Each finished job pushes its ID once, and a finished job leaves the map only here, so
        // the entry under an evicted ID is that finished job.
        let Some(evicted) = self.retained.push(id) else {
            return;
        };
        // Edges to it stay judged: remembered before the job leaves the map.
        if let Some(dependencies) = &self.dependencies
            && let Some(job) = self.jobs.get(&evicted)
        {
            let ended = if job.base().metadata().status.expired {
                Ended::Expired
            } else {
                Ended::Finished
            };
            drop(job);
            dependencies.forgotten(&evicted, ended);
        }
        self.jobs.remove(&evicted);
    }

    /// Checks and prepares a job being put; returns its enqueue scopes.
    fn prepare(
        &self,
        job: &JobRef,
        now: DateTime<Utc>,
    ) -> Result<(Vec<String>, Option<DateTime<Utc>>)> {
        let mut meta = job.base().metadata();
        // A job that ran, runs or expired elsewhere is not a job to put: it would never be
        // dispatched.
        let state = if meta.status.completed {
            Some("completed")
        } else if meta.status.in_progress {
            Some("in progress")
        } else if meta.status.expired {
            Some("expired")
        } else {
            None
        };
        if let Some(state) = state {
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

    async fn put(&self, job: JobRef) -> Result<()> {
        if !amboy_core::metrics::ENABLED {
            return self.put_job(job).await;
        }
        let job_type = job.job_type().name;
        self.put_job(job).await?;
        amboy_core::metrics::jobs_put(&self.id, &job_type, 1);
        Ok(())
    }

    async fn put_job(&self, job: JobRef) -> Result<()> {
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
            // A save of the job racing the put may have taken scopes under its ID meanwhile.
            self.release_scopes(&id);
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
            Some(stored) => {
                let meta = stored.base().metadata();
                if meta.status.completed {
                    Edge::Finished
                } else if meta.status.expired {
                    Edge::Expired
                } else {
                    Edge::Unfinished
                }
            }
        };
        let verdict = match dependencies.admit(&job, lookup) {
            Ok(verdict) => verdict,
            Err(error) => {
                self.release_scopes(&id);
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

    async fn put_many(&self, jobs: Vec<JobRef>) -> Result<()> {
        let (jobs, mut errors) = if L::DEPENDENCIES {
            order_batch(jobs)
        } else {
            (jobs, Vec::new())
        };
        for job in jobs {
            if let Err(error) = self.put(job).await {
                errors.push(error);
            }
        }
        collate_write_errors(errors)
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

    fn get_now(&self, id: &str) -> Result<JobRef> {
        self.jobs
            .get(id)
            .map(|job| job.clone())
            .ok_or_else(|| Error::job_not_found(id))
    }

    /// Waits for a job and dispatches it; fails only once the queue is closed. Nothing awaits
    /// after a job leaves the line, so dropping this future loses no job.
    async fn next_job(&self) -> Result<JobRef> {
        // Closing the queue closes the line, which ends this wait.
        loop {
            let job = self.line.pop().await.ok_or(Error::Closed("queue"))?;
            if let Taken::Dispatched(job) = self.take(job) {
                return Ok(job);
            }
        }
    }

    fn try_next_job(&self) -> Option<JobRef> {
        while let Some(job) = self.line.try_pop() {
            if let Taken::Dispatched(job) = self.take(job) {
                return Some(job);
            }
        }
        None
    }

    fn info(&self) -> QueueInfo {
        QueueInfo {
            started: self.lifecycle.started(),
            lock_timeout: self.options.lock_timeout,
        }
    }

    /// Completes a job; everything a completion does happens here, without waiting.
    fn complete_now(&self, job: &JobRef) -> Result<()> {
        let id = job.base().job_id();
        // The common case, the job this queue dispatched, takes the job's lock once: the claim
        // tells it from a copy, which carries none.
        let marked = {
            let mut meta = job.base().metadata();
            let runs_here = self.runs_here(&meta);
            if runs_here {
                Self::mark(&mut meta, true);
            }
            runs_here
        };
        if !marked && !self.complete_waiting(id, job)? {
            return Ok(());
        }
        self.finish(id);
        Ok(())
    }

    /// Completes a job that is not running here: it must be the very job the queue holds, not
    /// a copy or a stale job whose ID was reused, and not expired. Returns whether it marked
    /// the job completed (`false` if it was completed already).
    fn complete_waiting(&self, id: &JobId, job: &JobRef) -> Result<bool> {
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
        // dependency graph), decided under its lock so that a concurrent dispatch or expiry
        // cannot slip in. The heartbeat refreshes only jobs in progress, so once marked a job
        // is never refreshed again.
        let was_pending = {
            let mut meta = job.base().metadata();
            let dispatched = self.runs_here(&meta);
            if meta.status.completed && !dispatched {
                return Ok(false);
            }
            if meta.status.expired {
                return Err(Error::invalid_job(
                    &**id,
                    "it expired: its dispatch_by deadline passed before it was dispatched",
                ));
            }
            let was_pending = !dispatched && !meta.status.in_progress;
            Self::mark(&mut meta, dispatched);
            was_pending
        };
        if was_pending {
            // It leaves the pending set now: out of the dependency graph and from beside the
            // scopes it waited for; the line and the timer heap skip it when its turn comes.
            if let Some(dependencies) = &self.dependencies {
                dependencies.forget(id);
            }
            self.scopes
                .unpark(id.as_str(), |parked| Arc::ptr_eq(parked, job));
            self.delayed.forget_one(|waiting| {
                let meta = waiting.base().metadata();
                !meta.status.completed && !meta.status.expired
            });
            self.gate.give_back();
        }
        Ok(true)
    }

    /// Whether the job is running, dispatched by this queue: its status says so and it
    /// carries this queue's claim (a copy carries none).
    fn runs_here(&self, meta: &Metadata) -> bool {
        meta.status.in_progress && meta.claim() == self.claim
    }

    fn is_dispatched(&self, id: &str) -> bool {
        self.jobs
            .get(id)
            .is_some_and(|job| self.runs_here(&job.base().metadata()))
    }

    fn dispatched(&self) -> usize {
        self.jobs
            .iter()
            .filter(|job| self.runs_here(&job.base().metadata()))
            .count()
    }

    fn refresh_locks(&self) -> usize {
        let now = amboy_core::clock::now();
        self.jobs
            .iter()
            .filter(|job| {
                let mut meta = job.base().metadata();
                self.runs_here(&meta) && self.dispatcher.refresh(&mut meta, now)
            })
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
            if !meta.status.completed && !meta.status.expired {
                self.scopes.acquire(id, &meta.scopes)?;
            }
        }
        Ok(())
    }

    fn results_now(&self) -> JobStream {
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

    fn job_info_now(&self) -> JobInfoStream {
        let jobs: Vec<JobRef> = self
            .jobs
            .iter()
            .map(|entry| entry.value().clone())
            .collect();
        let infos: Vec<Result<JobInfo>> = jobs.iter().map(|job| Ok(JobInfo::new(&**job))).collect();
        Box::pin(stream::iter(infos))
    }

    fn stats_now(&self) -> Result<QueueStats> {
        // Completed and expired are read before total, so that a job put meanwhile can only
        // make the stats look less complete, never more. Blocked jobs are counted before and
        // after, and the smaller count kept, so that a job put meanwhile is not counted blocked
        // without being counted in the total.
        let blocked_before = self.dependencies.as_ref().map_or(0, |d| d.blocked());
        let completed = self.counts.completed.load(Ordering::SeqCst);
        let expired = self.counts.expired.load(Ordering::SeqCst);
        let total = self.counts.total.load(Ordering::SeqCst);
        let blocked_after = self.dependencies.as_ref().map_or(0, |d| d.blocked());
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
            self.dependencies.clone(),
            self.lifecycle.lifetime().clone(),
        );
        self.lifecycle.spawn(timer);
        Ok(())
    }

    /// What stops without waiting: the background tasks and the line (so that workers find no
    /// more jobs).
    fn stop_now(&self) {
        self.lifecycle.close();
        self.line.close();
    }

    async fn close(&self) {
        self.lifecycle.close_runner().await;
        self.stop_now();
        self.dispatcher.close().await;
        self.lifecycle.end().await;
    }

    /// Moves jobs from the timer heap to the line when their time comes; asks the managers of
    /// jobs waiting for a judgement off the runtime at once, and those blocked by their state
    /// every second, on a blocking thread.
    async fn run_timer(
        queue: Weak<Self>,
        delayed: Arc<Delayed<JobRef>>,
        line: Arc<L>,
        dependencies: Option<Arc<Dependencies>>,
        lifetime: CancellationToken,
    ) {
        let mut last_recheck = tokio::time::Instant::now();
        loop {
            let (due, wait) = delayed.take_due(amboy_core::clock::now());
            for job in due {
                line.push(job);
            }
            let mut wait = wait.unwrap_or(Duration::from_secs(3600));
            if let Some(dependencies) = &dependencies {
                let blocked = last_recheck.elapsed() >= RECHECK_INTERVAL;
                if blocked {
                    last_recheck = tokio::time::Instant::now();
                }
                if dependencies.has_unjudged() || blocked {
                    let Some(queue) = queue.upgrade() else { return };
                    queue.judge(blocked).await;
                }
                wait = wait.min(RECHECK_INTERVAL.saturating_sub(last_recheck.elapsed()));
            }
            let unjudged = async {
                match &dependencies {
                    Some(dependencies) => dependencies.unjudged_added().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = lifetime.cancelled() => return,
                _ = delayed.changed() => {}
                _ = unjudged => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Asks the managers of the jobs waiting for a judgement (and, with `blocked`, of those
    /// blocked by their state) on a blocking thread, then carries out the verdicts.
    async fn judge(self: Arc<Self>, blocked: bool) {
        let Some(dependencies) = &self.dependencies else {
            return;
        };
        let jobs = dependencies.take_unjudged(blocked);
        if jobs.is_empty() {
            return;
        }
        let dependencies = dependencies.clone();
        let verdicts = tokio::task::spawn_blocking(move || {
            jobs.into_iter()
                .filter_map(|job| {
                    let manager = job.dependency();
                    // A manager that panics cannot say when its job may run: the job fails
                    // with the panic, rather than staying blocked for ever.
                    let decided = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        dependencies.decide(job.clone(), &*manager)
                    }));
                    decided.unwrap_or_else(|panic| {
                        let message = amboy_core::panic_message(&*panic).to_owned();
                        Some(Verdict::Fail(
                            job,
                            format!("dependency unresolved: its manager panicked: {message}"),
                        ))
                    })
                })
                .collect::<Vec<_>>()
        })
        .await;
        match verdicts {
            Ok(verdicts) => self.apply(verdicts),
            Err(error) => {
                tracing::error!(queue_id = %self.id, error = %error, "asking dependency managers failed")
            }
        }
    }
}

#[async_trait]
impl<L: Line> Queue for Engine<L> {
    fn id(&self) -> &str {
        &self.id
    }

    async fn put(&self, job: JobRef) -> Result<()> {
        Engine::put(self, job).await
    }

    async fn put_many(&self, jobs: Vec<JobRef>) -> Result<()> {
        Engine::put_many(self, jobs).await
    }

    async fn get(&self, id: &str) -> Result<JobRef> {
        self.get_now(id)
    }

    async fn next(&self) -> Result<JobRef> {
        self.next_job().await
    }

    fn try_next(&self) -> Option<JobRef> {
        self.try_next_job()
    }

    fn try_complete(&self, job: &JobRef) -> Option<Result<()>> {
        Some(self.complete_now(job))
    }

    fn info(&self) -> QueueInfo {
        Engine::info(self)
    }

    async fn complete(&self, job: &JobRef) -> Result<()> {
        self.complete_now(job)
    }

    async fn save(&self, job: &JobRef) -> Result<()> {
        self.save_now(job)
    }

    async fn results(&self) -> JobStream {
        self.results_now()
    }

    async fn job_info(&self) -> JobInfoStream {
        self.job_info_now()
    }

    async fn stats(&self) -> Result<QueueStats> {
        self.stats_now()
    }

    fn runner(&self) -> Option<Arc<dyn Runner>> {
        self.lifecycle.runner()
    }

    fn set_runner(&self, runner: Arc<dyn Runner>) -> Result<()> {
        Engine::set_runner(self, runner)
    }

    async fn start(&self) -> Result<()> {
        Engine::start(self).await
    }

    async fn close(&self) {
        Engine::close(self).await
    }
}

impl<L: Line> Drop for Engine<L> {
    /// An engine nobody holds any more stops its background tasks.
    fn drop(&mut self) {
        self.stop_now();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use amboy_core::{Base, Job, JobContext, JobError};
    use chrono::TimeDelta;
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Serialize, Deserialize)]
    struct Quiet {
        base: Base,
    }

    #[typetag::serde(name = "queue-unit-quiet")]
    #[async_trait]
    impl Job for Quiet {
        fn base(&self) -> &Base {
            &self.base
        }

        async fn run(&self, _ctx: &JobContext) -> std::result::Result<(), JobError> {
            Ok(())
        }
    }

    /// Expiry races an outside `complete`: `take` decides that the job expired and releases the
    /// job's lock; a `complete` from outside comes in before the expiry is carried out. The
    /// completion must see the decision: the job counts once (as expired), and its place in
    /// the queue is given back once.
    #[test]
    fn expiry_decided_in_take_is_seen_by_an_outside_complete() {
        // The priority queue takes jobs before it starts.
        let engine = Engine::<ByPriority>::new(LocalQueueOptions::new(4)).unwrap();
        let job: JobRef = Arc::new(Quiet {
            base: Base::with_id("late").with_dispatch_by(Utc::now() - TimeDelta::seconds(1)),
        });
        futures::executor::block_on(engine.put(job.clone())).unwrap();
        assert_eq!(engine.gate.taken(), 1);

        let completed = Arc::new(StdMutex::new(None));
        *engine.hooks.after_expiry_decided.lock() = Some(Box::new({
            let engine = Arc::downgrade(&engine);
            let completed = completed.clone();
            move |job| {
                let engine = engine.upgrade().unwrap();
                *completed.lock().unwrap() = Some(engine.complete_now(job));
            }
        }));
        assert!(engine.try_next_job().is_none(), "the job expired");

        let outcome = completed.lock().unwrap().take().expect("the hook ran");
        let error = outcome.expect_err("an expired job cannot be completed");
        assert!(error.to_string().contains("expired"), "{error}");
        let stats = engine.stats_now().unwrap();
        assert_eq!((stats.expired, stats.completed), (1, 0), "{stats}");
        assert_eq!(engine.gate.taken(), 0, "the place was given back once");
        let status = job.status();
        assert!(status.expired && !status.completed, "{status:?}");
        assert!(
            engine.get_now("late").is_ok(),
            "the expired job is retained"
        );
    }
}

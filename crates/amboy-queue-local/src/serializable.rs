//! The limited-size serializable queue: stores copies of its jobs and retries them (amboy's
//! `LocalLimitedSizeSerializable`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::Duration;

use amboy_core::{
    Error, JobInfo, JobInfoStream, JobRef, JobStatusInfo, JobStream, JobType, LOCK_TIMEOUT, Queue,
    QueueInfo, QueueStats, Result, RetryHandler, RetryableQueue, Runner, collate_write_errors,
};
use amboy_registry::JobInterchange;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::delayed::Delayed;
use crate::lifecycle::Lifecycle;
use crate::{Dispatcher, ScopeManager};

type Hasher = foldhash::fast::RandomState;

/// Options of a [`LimitedSizeSerializableQueue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SerializableQueueOptions {
    /// How many jobs may wait to run; a put beyond it fails. At least 1. The queue also retains
    /// the last `capacity − 1` completed jobs.
    pub capacity: usize,
    /// How long the queue's locks last without a heartbeat.
    pub lock_timeout: Duration,
    /// How often retrying jobs whose retry was never processed are handed to the retry
    /// handler again; zero means 1 second (amboy's `StaleRetryingMonitorInterval`).
    pub stale_retrying_monitor_interval: Duration,
}

impl SerializableQueueOptions {
    /// The default interval of the stale-retrying monitor.
    pub const DEFAULT_MONITOR_INTERVAL: Duration = Duration::from_secs(1);

    /// Options with `capacity` and amboy's defaults.
    pub fn new(capacity: usize) -> Self {
        SerializableQueueOptions {
            capacity,
            lock_timeout: LOCK_TIMEOUT,
            stale_retrying_monitor_interval: Self::DEFAULT_MONITOR_INTERVAL,
        }
    }

    /// Checks the options and fills in defaults.
    pub fn validate(&mut self) -> Result<()> {
        if self.capacity == 0 {
            return Err(Error::invalid(
                "serializable queue capacity must be at least 1",
            ));
        }
        if self.lock_timeout.is_zero() {
            return Err(Error::invalid("lock timeout must be positive"));
        }
        if self.stale_retrying_monitor_interval.is_zero() {
            self.stale_retrying_monitor_interval = Self::DEFAULT_MONITOR_INTERVAL;
        }
        Ok(())
    }
}

/// An in-memory queue that stores each job as its interchange envelope, like a database would,
/// and retries jobs that ask for it (amboy's `LocalLimitedSizeSerializable`).
///
/// * Jobs must be registered types: [`put`](Queue::put) encodes them, and [`get`](Queue::get),
///   [`next`](Queue::next) and [`results`](Queue::results) return fresh decoded copies.
/// * Each attempt of a retryable job is stored under `attempt-<n>.<id>`; `get` returns the
///   latest attempt, [`get_attempt`](RetryableQueue::get_attempt) a given one, and `results` only
///   jobs that finished retrying.
/// * [`put`](Queue::put) works before the queue starts and fails at once when `capacity` jobs
///   are pending.
/// * `save` and `complete` follow amboy's optimistic lock: the store accepts a copy only from
///   this queue and at most one lock ahead of what it holds, or once the stored lock expired.
/// * [`complete_retrying_and_put`](RetryableQueue::complete_retrying_and_put) finishes one
///   attempt and adds the next in one step under the queue's lock, handing the scopes over.
/// * A stale-retrying monitor hands retrying jobs whose retry was never processed to the retry
///   handler again.
///
/// Scopes, `wait_until`, `dispatch_by` and `max_time` behave as in the
/// [`LimitedSizeQueue`](crate::LimitedSizeQueue).
#[derive(Debug)]
pub struct LimitedSizeSerializableQueue {
    id: Arc<str>,
    options: SerializableQueueOptions,
    this: Weak<LimitedSizeSerializableQueue>,
    store: Mutex<Store>,
    line_tx: async_channel::Sender<Arc<str>>,
    line_rx: async_channel::Receiver<Arc<str>>,
    delayed: Arc<Delayed<Arc<str>>>,
    scopes: ScopeManager<Arc<str>>,
    dispatcher: Arc<Dispatcher>,
    retry_handler: Mutex<Option<Arc<dyn RetryHandler>>>,
    lifecycle: Lifecycle,
}

#[derive(Debug, Default)]
struct Store {
    records: HashMap<Arc<str>, JobInterchange, Hasher>,
    /// The latest attempt stored of each retryable job, so that it is found even once earlier
    /// attempts were forgotten.
    latest: HashMap<String, u32, Hasher>,
    /// Keys of retained completed, non-retrying jobs, oldest first.
    results: VecDeque<Arc<str>>,
    total: usize,
    completed: usize,
    retrying: usize,
    pending: usize,
    expired: usize,
}

/// Counts one job out; a count that would go below zero is a bug, caught in debug builds and
/// never wrapping around in release ones.
fn count_out(count: &mut usize) {
    debug_assert!(*count > 0, "a job counted out twice");
    *count = count.saturating_sub(1);
}

/// A job checked and encoded for putting.
struct Prepared {
    key: Arc<str>,
    envelope: JobInterchange,
    enqueue_scopes: Vec<String>,
    wait_until: Option<DateTime<Utc>>,
}

/// The storage key of a job: its ID, or `attempt-<n>.<id>` for a retryable job.
fn storage_key(id: &str, retryable: bool, attempt: u32) -> Arc<str> {
    if retryable {
        Arc::from(format!("attempt-{attempt}.{id}"))
    } else {
        Arc::from(id)
    }
}

fn key_of(job: &JobRef) -> Arc<str> {
    let meta = job.base().metadata();
    if meta.retry_info.retryable {
        storage_key(job.id(), true, meta.retry_info.current_attempt)
    } else {
        Arc::from(job.id())
    }
}

fn is_retrying(envelope: &JobInterchange) -> bool {
    envelope.status.completed && envelope.retry_info.should_retry()
}

fn decode(envelope: &JobInterchange) -> Result<JobRef> {
    envelope.resolve().map_err(Error::from)
}

fn encode(job: &JobRef) -> Result<JobInterchange> {
    JobInterchange::from_job(&**job).map_err(Error::from)
}

impl Store {
    /// Whether a copy whose status is `copy` may overwrite the stored record (amboy's atomic
    /// query): the stored lock expired or was never taken, or this queue holds it and the copy
    /// is at most one lock ahead.
    fn lock_allows(
        stored: &JobStatusInfo,
        copy: &JobStatusInfo,
        owner: &str,
        timeout: Duration,
        now: DateTime<Utc>,
    ) -> bool {
        let expired = stored
            .modification_time
            .is_none_or(|time| (now - time).to_std().unwrap_or_default() >= timeout);
        if expired {
            return true;
        }
        stored.owner.as_deref() == Some(owner)
            && (copy.modification_count == stored.modification_count
                || copy.modification_count == stored.modification_count + 1)
    }

    /// Retains a completed key, forgetting the oldest when more than `keep` are retained.
    fn retain(&mut self, key: Arc<str>, keep: usize) {
        self.results.push_back(key);
        while self.results.len() > keep {
            let Some(oldest) = self.results.pop_front() else {
                break;
            };
            if self
                .records
                .get(&oldest)
                .is_some_and(|record| record.status.completed && !is_retrying(record))
            {
                self.records.remove(&oldest);
            }
        }
    }

    /// The key of the latest attempt of `id`, or its own key.
    fn latest_key(&self, id: &str) -> Option<Arc<str>> {
        if let Some((key, _)) = self.records.get_key_value(id) {
            return Some(key.clone());
        }
        let attempt = *self.latest.get(id)?;
        let key = storage_key(id, true, attempt);
        self.records.contains_key(&key).then_some(key)
    }

    /// Stores a new record; a retryable job's attempt becomes its latest when it is.
    fn insert_new(&mut self, key: Arc<str>, envelope: JobInterchange) {
        if envelope.retry_info.retryable {
            let attempt = envelope.retry_info.current_attempt;
            let latest = self.latest.entry(envelope.name.clone()).or_insert(attempt);
            *latest = (*latest).max(attempt);
        }
        self.records.insert(key, envelope);
    }
}

impl LimitedSizeSerializableQueue {
    /// A queue for at most `capacity` pending jobs (at least 1), with amboy's defaults.
    pub fn new(capacity: usize) -> Arc<Self> {
        Self::with_options(SerializableQueueOptions::new(capacity.max(1))).expect("valid options")
    }

    /// A queue with these options.
    pub fn with_options(mut options: SerializableQueueOptions) -> Result<Arc<Self>> {
        options.validate()?;
        let id: Arc<str> = Arc::from(format!(
            "queue.local.fixed.serializable.{}",
            uuid::Uuid::new_v4()
        ));
        let (line_tx, line_rx) = async_channel::unbounded();
        Ok(Arc::new_cyclic(|this| LimitedSizeSerializableQueue {
            dispatcher: Arc::new(Dispatcher::new(id.clone(), options.lock_timeout)),
            id,
            options,
            this: this.clone(),
            store: Mutex::new(Store::default()),
            line_tx,
            line_rx,
            delayed: Arc::new(Delayed::default()),
            scopes: ScopeManager::new(),
            retry_handler: Mutex::new(None),
            lifecycle: Lifecycle::default(),
        }))
    }

    /// The queue's options.
    pub fn options(&self) -> SerializableQueueOptions {
        self.options
    }

    /// The queue's dispatcher.
    pub fn dispatcher(&self) -> &Arc<Dispatcher> {
        &self.dispatcher
    }

    /// The number of records stored (every attempt of every retained job).
    pub fn stored(&self) -> usize {
        self.store.lock().records.len()
    }

    fn arc(&self) -> Arc<LimitedSizeSerializableQueue> {
        self.this
            .upgrade()
            .expect("a queue method runs while the queue is alive")
    }

    fn route(&self, key: Arc<str>, wait_until: Option<DateTime<Utc>>) {
        match wait_until {
            Some(at) if at >= amboy_core::clock::now() => self.delayed.push(at, key),
            _ => {
                let _ = self.line_tx.try_send(key);
            }
        }
    }

    fn requeue(&self, keys: Vec<Arc<str>>) {
        for key in keys {
            let _ = self.line_tx.try_send(key);
        }
    }

    /// Checks and prepares a job being put.
    fn prepare(&self, job: &JobRef) -> Result<Prepared> {
        let (key, enqueue_scopes, wait_until) = {
            let mut meta = job.base().metadata();
            meta.time_info.created = Some(amboy_core::clock::now());
            meta.time_info
                .validate()
                .map_err(|error| Error::invalid_job(job.id(), error))?;
            if meta.retry_info.retryable {
                meta.retry_info.base_job_id = job.id().to_owned();
            }
            let key = if meta.retry_info.retryable {
                storage_key(job.id(), true, meta.retry_info.current_attempt)
            } else {
                Arc::from(job.id())
            };
            (
                key,
                meta.effective_enqueue_scopes(),
                meta.time_info.wait_until,
            )
        };
        Ok(Prepared {
            key,
            envelope: encode(job)?,
            enqueue_scopes,
            wait_until,
        })
    }

    async fn put_one(&self, job: JobRef) -> Result<()> {
        if self.lifecycle.is_closed() {
            return Err(Error::Closed("queue"));
        }
        let Prepared {
            key,
            envelope,
            enqueue_scopes,
            wait_until,
        } = self.prepare(&job)?;
        // A job put as already completed (restored from elsewhere, say) is recorded, not run;
        // if it asks to retry, the stale-retrying monitor picks it up.
        let finished = envelope.status.completed;
        {
            let mut store = self.store.lock();
            if store.records.contains_key(&key) {
                return Err(Error::duplicate_job(job.id()));
            }
            if !finished && store.pending >= self.options.capacity {
                return Err(Error::QueueFull {
                    id: job.id().to_owned(),
                });
            }
            self.scopes.acquire(&key, &enqueue_scopes)?;
            let retrying = is_retrying(&envelope);
            store.insert_new(key.clone(), envelope);
            store.total += 1;
            if !finished {
                store.pending += 1;
            } else if retrying {
                store.completed += 1;
                store.retrying += 1;
            } else {
                store.completed += 1;
                store.retain(key, self.options.capacity - 1);
                return Ok(());
            }
        }
        if !finished {
            self.route(key, wait_until);
        }
        Ok(())
    }

    /// Decides what to do with a key taken from the line; `Some` if its job was dispatched.
    fn take(&self, key: Arc<str>) -> Option<JobRef> {
        let now = amboy_core::clock::now();
        let mut store = self.store.lock();
        let job = {
            let record = store.records.get(&key)?;
            match decode(record) {
                Ok(job) => job,
                Err(error) => {
                    // Cannot happen for copies this queue encoded; never leave it pending.
                    tracing::error!(queue_id = %self.id, key = %key, error = %error, "dropping undecodable job");
                    count_out(&mut store.pending);
                    return None;
                }
            }
        };
        let mut meta = job.base().metadata();
        if meta.status.completed {
            // Completed while it waited, which counted it out of the pending jobs already.
            return None;
        }
        if meta.time_info.is_stale_at(now) {
            let scopes = meta.scopes.clone();
            drop(meta);
            store.records.remove(&key);
            count_out(&mut store.pending);
            store.expired += 1;
            drop(store);
            self.release_scopes(&key, &scopes);
            tracing::debug!(queue_id = %self.id, job_id = job.id(), "dropped job past its dispatch_by deadline");
            return None;
        }
        if !meta.time_info.is_dispatchable_at(now) {
            let at = meta.time_info.wait_until.unwrap_or(now);
            drop(meta);
            drop(store);
            self.delayed.push(at, key);
            return None;
        }
        if !meta.scopes.is_empty()
            && self
                .scopes
                .acquire_or_wait(&key, &meta.scopes, key.clone())
                .is_err()
        {
            return None;
        }
        if let Err(error) = self.dispatcher.mark(job.base().job_id(), &mut meta, now) {
            let scopes = meta.scopes.clone();
            drop(meta);
            count_out(&mut store.pending);
            drop(store);
            self.release_scopes(&key, &scopes);
            tracing::warn!(queue_id = %self.id, key = %key, error = %error, "could not dispatch job");
            return None;
        }
        let max_time = meta.time_info.max_time;
        let record = store.records.get_mut(&key).expect("looked up above");
        record.status = meta.status.clone();
        record.time_info = meta.time_info.clone();
        drop(meta);
        count_out(&mut store.pending);
        drop(store);
        self.dispatcher.track(&job, max_time);
        Some(job)
    }

    fn release_scopes(&self, key: &str, scopes: &[String]) {
        if scopes.is_empty() {
            return;
        }
        let held: Vec<String> = scopes
            .iter()
            .filter(|scope| self.scopes.holder(scope).as_deref() == Some(key))
            .cloned()
            .collect();
        match self.scopes.release(key, &held) {
            Ok(woken) => self.requeue(woken),
            Err(error) => {
                tracing::warn!(queue_id = %self.id, key, error = %error, "could not release scopes")
            }
        }
    }

    /// The stored record under `key`, checked against the copy's lock.
    fn check_lock(
        &self,
        store: &Store,
        key: &Arc<str>,
        job: &JobRef,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let record = store
            .records
            .get(key)
            .ok_or_else(|| Error::job_not_found_because(job.id(), "not owned by the queue"))?;
        let copy = job.base().metadata().status.clone();
        if !Store::lock_allows(
            &record.status,
            &copy,
            &self.id,
            self.options.lock_timeout,
            now,
        ) {
            return Err(Error::job_not_found_because(
                job.id(),
                format!(
                    "the stored job was modified (stored lock: owner '{}', count {}; this copy: count {})",
                    record.status.owner.as_deref().unwrap_or_default(),
                    record.status.modification_count,
                    copy.modification_count
                ),
            ));
        }
        Ok(())
    }

    /// Completes `job` under the store's lock; returns the scopes to release.
    fn complete_locked(
        &self,
        store: &mut Store,
        key: &Arc<str>,
        job: &JobRef,
        dispatched: bool,
    ) -> Result<Vec<String>> {
        let now = amboy_core::clock::now();
        self.check_lock(store, key, job, now)?;
        let stored = &store.records[key].status;
        let was_completed = stored.completed;
        // A job completed before it ran leaves the pending jobs now; the line skips it later.
        if !stored.completed && !stored.in_progress {
            count_out(&mut store.pending);
        }
        let (scopes, should_retry) = {
            let mut meta = job.base().metadata();
            if dispatched || meta.time_info.end.is_none() {
                meta.time_info.end = Some(now);
            }
            meta.status.completed = true;
            meta.status.in_progress = false;
            meta.status.modification_time = Some(now);
            meta.status.modification_count += 1;
            let should_retry = meta.retry_info.should_retry();
            // A retrying job keeps its enqueue scopes for its next attempt.
            let keep = if should_retry {
                meta.effective_enqueue_scopes()
            } else {
                Vec::new()
            };
            let release: Vec<String> = meta
                .scopes
                .iter()
                .filter(|s| !keep.contains(s))
                .cloned()
                .collect();
            (release, should_retry)
        };
        let envelope = encode(job)?;
        let was_retrying = is_retrying(&store.records[key]);
        store.records.insert(key.clone(), envelope);
        if !was_completed {
            store.completed += 1;
        }
        match (was_retrying, should_retry) {
            (false, true) => store.retrying += 1,
            (true, false) => {
                count_out(&mut store.retrying);
                store.retain(key.clone(), self.options.capacity - 1);
            }
            (false, false) if !was_completed => {
                store.retain(key.clone(), self.options.capacity - 1)
            }
            _ => {}
        }
        Ok(scopes)
    }

    /// Hands retrying jobs whose retry was never processed to the retry handler.
    async fn monitor_stale_retrying(
        queue: Weak<Self>,
        interval: Duration,
        lifetime: CancellationToken,
    ) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = lifetime.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let Some(queue) = queue.upgrade() else { return };
            let Some(handler) = queue.retry_handler() else {
                continue;
            };
            for job in queue.stale_retrying() {
                if let Err(error) = handler.put(job).await {
                    tracing::warn!(queue_id = %queue.id, error = %error, "could not hand a stale retrying job over");
                }
            }
        }
    }

    /// Copies of the retrying jobs whose lock is older than the lock timeout.
    pub fn stale_retrying(&self) -> Vec<JobRef> {
        let now = amboy_core::clock::now();
        let store = self.store.lock();
        store
            .records
            .values()
            .filter(|record| {
                is_retrying(record)
                    && record.status.modification_time.is_none_or(|time| {
                        (now - time).to_std().unwrap_or_default() > self.options.lock_timeout
                    })
            })
            .filter_map(|record| decode(record).ok())
            .collect()
    }

    async fn run_timer(
        delayed: Arc<Delayed<Arc<str>>>,
        line: async_channel::Sender<Arc<str>>,
        lifetime: CancellationToken,
    ) {
        loop {
            let (due, wait) = delayed.take_due(amboy_core::clock::now());
            for key in due {
                let _ = line.try_send(key);
            }
            tokio::select! {
                _ = lifetime.cancelled() => return,
                _ = delayed.changed() => {}
                _ = tokio::time::sleep(wait.unwrap_or(Duration::from_secs(3600))) => {}
            }
        }
    }
}

#[async_trait]
impl Queue for LimitedSizeSerializableQueue {
    fn id(&self) -> &str {
        &self.id
    }

    async fn put(&self, job: JobRef) -> Result<()> {
        self.put_one(job).await
    }

    async fn put_many(&self, jobs: Vec<JobRef>) -> Result<()> {
        let mut errors = Vec::new();
        for job in jobs {
            if let Err(error) = self.put_one(job).await {
                errors.push(error);
            }
        }
        collate_write_errors(errors)
    }

    async fn get(&self, id: &str) -> Result<JobRef> {
        let store = self.store.lock();
        let key = store
            .latest_key(id)
            .ok_or_else(|| Error::job_not_found(id))?;
        decode(&store.records[&key])
    }

    async fn next(&self) -> Option<JobRef> {
        // Closing the queue closes the line, which ends this wait.
        loop {
            let key = self.line_rx.recv().await.ok()?;
            if let Some(job) = self.take(key) {
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
        let key = key_of(job);
        let scopes = {
            let mut store = self.store.lock();
            // The dispatcher knows jobs by ID: only the attempt running here is its to forget,
            // not an older attempt of the same job completed again while the next one runs.
            let dispatched = store
                .records
                .get(&key)
                .is_some_and(|record| record.status.in_progress)
                && self.dispatcher.forget(job.id());
            self.complete_locked(&mut store, &key, job, dispatched)?
        };
        self.release_scopes(&key, &scopes);
        Ok(())
    }

    async fn save(&self, job: &JobRef) -> Result<()> {
        let key = key_of(job);
        let mut envelope = encode(job)?;
        let mut store = self.store.lock();
        self.check_lock(&store, &key, job, amboy_core::clock::now())?;
        // Whether the job waits, runs, retries or finished is the queue's to say (its counts
        // follow it): a save stores everything else. The scopes it holds follow from that
        // state, read under the store's lock so that a completion cannot slip in between.
        let stored = &store.records[&key];
        envelope.status.completed = stored.status.completed;
        envelope.status.in_progress = stored.status.in_progress;
        if stored.status.completed {
            envelope.retry_info.needs_retry = stored.retry_info.needs_retry;
        }
        let scopes = if envelope.status.in_progress {
            job.scopes()
        } else if envelope.status.completed && !envelope.retry_info.should_retry() {
            Vec::new()
        } else {
            job.enqueue_scopes()
        };
        self.scopes.acquire(&key, &scopes)?;
        store.records.insert(key, envelope);
        Ok(())
    }

    async fn results(&self) -> JobStream {
        let store = self.store.lock();
        let jobs: Vec<Result<JobRef>> = store
            .records
            .values()
            .filter(|record| {
                record.status.completed && !is_retrying(record) && !record.status.in_progress
            })
            .map(decode)
            .collect();
        Box::pin(stream::iter(jobs))
    }

    async fn job_info(&self) -> JobInfoStream {
        let store = self.store.lock();
        let infos: Vec<Result<JobInfo>> = store
            .records
            .values()
            .map(|record| {
                Ok(JobInfo {
                    id: record.name.clone(),
                    job_type: JobType::new(record.type_name.clone(), record.version),
                    status: record.status.clone(),
                    time: record.time_info.clone(),
                    retry: record.retry_info.clone(),
                })
            })
            .collect();
        Box::pin(stream::iter(infos))
    }

    async fn stats(&self) -> Result<QueueStats> {
        let store = self.store.lock();
        let finished = store.completed + store.expired + store.pending;
        Ok(QueueStats {
            running: store.total.saturating_sub(finished),
            completed: store.completed,
            retrying: store.retrying,
            pending: store.pending,
            expired: store.expired,
            total: store.total,
            ..QueueStats::default()
        })
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
        let this = self.arc();
        let as_queue: Arc<dyn Queue> = this.clone();
        self.dispatcher.start_heartbeat(Arc::downgrade(&as_queue));
        let timer = Self::run_timer(
            self.delayed.clone(),
            self.line_tx.clone(),
            self.lifecycle.lifetime().clone(),
        );
        let monitor = Self::monitor_stale_retrying(
            self.this.clone(),
            self.options.stale_retrying_monitor_interval,
            self.lifecycle.lifetime().clone(),
        );
        self.lifecycle.spawn(timer);
        self.lifecycle.spawn(monitor);
        if let Some(handler) = self.retry_handler() {
            handler.start().await?;
        }
        Ok(())
    }

    async fn close(&self) {
        self.lifecycle.close_runner().await;
        if let Some(handler) = self.retry_handler() {
            handler.close().await;
        }
        self.lifecycle.lifetime().cancel();
        self.line_tx.close();
        self.dispatcher.close().await;
        self.lifecycle.end().await;
    }

    fn as_retryable(&self) -> Option<&dyn RetryableQueue> {
        Some(self)
    }
}

#[async_trait]
impl RetryableQueue for LimitedSizeSerializableQueue {
    fn retry_handler(&self) -> Option<Arc<dyn RetryHandler>> {
        self.retry_handler.lock().clone()
    }

    fn set_retry_handler(&self, handler: Arc<dyn RetryHandler>) -> Result<()> {
        if self
            .retry_handler()
            .is_some_and(|current| current.started())
        {
            return Err(Error::AlreadyStarted("retry handler"));
        }
        handler.set_queue(self.arc())?;
        *self.retry_handler.lock() = Some(handler);
        Ok(())
    }

    async fn get_attempt(&self, id: &str, attempt: u32) -> Result<JobRef> {
        let store = self.store.lock();
        let key = storage_key(id, true, attempt);
        let record = store
            .records
            .get(&key)
            .ok_or_else(|| Error::job_not_found_because(id, format!("no attempt {attempt}")))?;
        decode(record)
    }

    async fn get_all_attempts(&self, id: &str) -> Result<Vec<JobRef>> {
        let store = self.store.lock();
        let mut attempts = Vec::new();
        let latest = store.latest.get(id).copied().unwrap_or(0);
        // Attempts the queue no longer retains are skipped, not a reason to stop.
        for attempt in 0..=latest {
            if let Some(record) = store.records.get(&storage_key(id, true, attempt)) {
                attempts.push(decode(record)?);
            }
        }
        if attempts.is_empty() {
            return Err(Error::job_not_found_because(id, "no retryable attempts"));
        }
        Ok(attempts)
    }

    async fn complete_retrying_and_put(&self, to_complete: &JobRef, to_put: JobRef) -> Result<()> {
        let key = key_of(to_complete);
        let Prepared {
            key: put_key,
            envelope,
            enqueue_scopes,
            wait_until,
        } = self.prepare(&to_put)?;
        let woken = {
            let mut store = self.store.lock();
            self.check_lock(&store, &key, to_complete, amboy_core::clock::now())?;
            if store.records.contains_key(&put_key) {
                return Err(Error::duplicate_job(to_put.id()));
            }
            if store.pending >= self.options.capacity {
                return Err(Error::QueueFull {
                    id: to_put.id().to_owned(),
                });
            }
            // The old attempt holds its enqueue scopes only (its dispatch scopes were released
            // when it completed, and may be held by another job by now).
            let release: Vec<String> = to_complete
                .scopes()
                .into_iter()
                .filter(|scope| self.scopes.holder(scope).as_deref() == Some(&*key))
                .collect();
            let woken =
                self.scopes
                    .release_and_acquire(&key, &release, &put_key, &enqueue_scopes)?;
            {
                let mut meta = to_complete.base().metadata();
                meta.retry_info.needs_retry = false;
                meta.retry_info.end = Some(amboy_core::clock::now());
            }
            let completed = match self.complete_locked(&mut store, &key, to_complete, false) {
                Ok(_) => Ok(()),
                Err(error) => Err(error),
            };
            if let Err(error) = completed {
                // Put the scopes back as they were; jobs woken meanwhile go back in line, where
                // they find the scopes taken again and wait beside them once more.
                self.requeue(woken);
                if let Ok(woken) =
                    self.scopes
                        .release_and_acquire(&put_key, &enqueue_scopes, &key, &release)
                {
                    self.requeue(woken);
                }
                return Err(error);
            }
            store.insert_new(put_key.clone(), envelope);
            store.pending += 1;
            store.total += 1;
            woken
        };
        self.requeue(woken);
        self.route(put_key, wait_until);
        Ok(())
    }

    async fn complete_retrying(&self, job: &JobRef) -> Result<()> {
        {
            let mut meta = job.base().metadata();
            meta.retry_info.needs_retry = false;
            meta.retry_info.end = Some(amboy_core::clock::now());
        }
        let key = key_of(job);
        let scopes = {
            let mut store = self.store.lock();
            self.complete_locked(&mut store, &key, job, false)?
        };
        // The enqueue scopes kept for the retry are free now.
        let mut release = scopes;
        release.extend(job.enqueue_scopes());
        self.release_scopes(&key, &release);
        Ok(())
    }
}

impl Drop for LimitedSizeSerializableQueue {
    fn drop(&mut self) {
        self.lifecycle.lifetime().cancel();
        self.line_tx.close();
    }
}

//! The limited-size serializable queue: stores copies of its jobs and retries them (amboy's
//! `LocalLimitedSizeSerializable`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::Duration;

use amboy_core::{
    Dispatcher, Error, JobInfo, JobInfoStream, JobRef, JobStatusInfo, JobStream, JobType,
    LOCK_TIMEOUT, LockStore, Queue, QueueInfo, QueueStats, Result, RetryHandler, RetryableQueue,
    Runner, collate_write_errors,
};
use amboy_registry::{JobInterchange, truncate_errors};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::delayed::Delayed;
use crate::{Footprint, ScopeManager};
use amboy_core::Lifecycle;
use crossbeam_queue::SegQueue;

type Hasher = foldhash::fast::RandomState;

/// Options of a [`LimitedSizeSerializableQueue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SerializableQueueOptions {
    /// How many jobs may wait to run; a put beyond it fails. At least 1. The queue also retains
    /// the last `capacity − 1` finished jobs.
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
///   [`next`](Queue::next) and [`results`](Queue::results) return fresh decoded copies. Jobs
///   are encoded and decoded outside the queue's lock.
/// * Each attempt of a retryable job is stored under `attempt-<n>.<id>`; `get` returns the
///   latest attempt, [`get_attempt`](RetryableQueue::get_attempt) a given one, and `results` only
///   jobs that finished retrying.
/// * [`put`](Queue::put) works before the queue starts and fails at once when `capacity` jobs
///   are pending.
/// * `save` and `complete` follow amboy's optimistic lock: the store accepts a copy only from
///   this queue and at most one lock ahead of what it holds, or once the stored lock expired.
///   Completing a job through a copy (with a valid lock) interrupts the copy that runs.
/// * The lock of each running copy is kept alive by the [`Dispatcher`], by job ID and attempt;
///   a copy whose lock is lost has its run interrupted.
/// * [`complete_retrying_and_put`](RetryableQueue::complete_retrying_and_put) finishes one
///   attempt and adds the next in one step under the queue's lock, handing the scopes over.
/// * A stale-retrying monitor hands retrying jobs whose retry was never processed to the retry
///   handler again.
/// * A stored job that cannot be decoded when its turn comes (its type is not registered, its
///   version changed, its fields do not decode) is set aside: it is marked completed with the
///   reason among its errors, never dispatched, counted in `stats()` as completed and in the
///   stats context under `"undecodable"`. [`job_info`](Queue::job_info) shows it; `get` reports
///   the decoding error, naming the job; `results` leaves it out.
///
/// Scopes, `wait_until`, `dispatch_by` (a job past it is set aside as expired and retained)
/// and `max_time` behave as in the [`LimitedSizeQueue`](crate::LimitedSizeQueue). Dropping
/// the last handle to a started queue closes it, as for the other local queues.
#[derive(Debug)]
pub struct LimitedSizeSerializableQueue {
    engine: Arc<Engine>,
}

/// What a serializable queue is: the state its handles, runner, retry handler and background
/// tasks share.
#[derive(Debug)]
struct Engine {
    id: Arc<str>,
    options: SerializableQueueOptions,
    this: Weak<Engine>,
    store: Mutex<Store>,
    line_tx: async_channel::Sender<Turn>,
    line_rx: async_channel::Receiver<Turn>,
    /// Tickets handed the scopes they waited for, taken ahead of the line (they hold those
    /// scopes until they run); each sends a [`Turn::Handed`] down the line to wake a taker.
    first: SegQueue<Ticket>,
    delayed: Arc<Delayed<Ticket>>,
    scopes: ScopeManager<Ticket>,
    dispatcher: Arc<Dispatcher>,
    retry_handler: Mutex<Option<Arc<dyn RetryHandler>>>,
    lifecycle: Lifecycle,
    #[cfg(test)]
    hooks: crate::hooks::Hooks,
}

/// A pending job's place in the line, the timer heap or beside a scope: its key, and the serial
/// the store gave the job when it was put, so that a ticket left behind by a job completed
/// before its turn never stands for a later job put under the same key.
#[derive(Debug, Clone)]
struct Ticket {
    key: Arc<str>,
    serial: u64,
}

/// What the line carries: a pending job's turn, or word that a ticket was handed its scopes and
/// waits ahead of the line.
#[derive(Debug)]
enum Turn {
    Ticket(Ticket),
    Handed,
}

/// A stored job: shared, so that it is decoded and encoded outside the store's lock. A write
/// replaces the record, so a reader tells whether it changed by comparing pointers.
type Record = Arc<JobInterchange>;

#[derive(Debug, Default)]
struct Store {
    records: HashMap<Arc<str>, Record, Hasher>,
    /// The latest attempt stored of each retryable job, so that it is found even once earlier
    /// attempts were forgotten. An entry leaves with its attempt's record.
    latest: HashMap<String, u32, Hasher>,
    /// Keys of retained finished (completed and not retrying, or expired) jobs, oldest first.
    results: VecDeque<Arc<str>>,
    /// The serial of the job stored under each key (see [`Ticket`]).
    serials: HashMap<Arc<str>, u64, Hasher>,
    next_serial: u64,
    total: usize,
    completed: usize,
    retrying: usize,
    pending: usize,
    expired: usize,
    undecodable: usize,
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

/// A job set aside as expired cannot be completed.
fn refuse_expired(store: &Store, key: &str, job: &JobRef) -> Result<()> {
    match store.records.get(key) {
        Some(record) if record.status.expired => Err(Error::invalid_job(
            job.id(),
            "it expired: its dispatch_by deadline passed before it was dispatched",
        )),
        _ => Ok(()),
    }
}

fn key_of(job: &JobRef) -> Arc<str> {
    let meta = job.base().metadata();
    storage_key(
        job.id(),
        meta.retry_info.retryable,
        meta.retry_info.current_attempt,
    )
}

fn is_retrying(envelope: &JobInterchange) -> bool {
    envelope.status.completed && envelope.retry_info.should_retry()
}

/// Whether a record is finished for good: completed and not retrying, or expired.
fn is_finished(envelope: &JobInterchange) -> bool {
    (envelope.status.completed && !is_retrying(envelope)) || envelope.status.expired
}

fn decode(envelope: &JobInterchange) -> Result<JobRef> {
    envelope.resolve().map_err(Error::from)
}

fn encode(job: &JobRef) -> Result<JobInterchange> {
    JobInterchange::from_job(&**job).map_err(Error::from)
}

/// What a completion stores for a job whose final state cannot be encoded (its type's
/// `Serialize` failed or panicked): the job ran, so it completes, failed with the reason and
/// asking no retry, with the fields it was stored with. Left running, it would never finish.
fn unencodable(store: &Store, key: &str, job: &JobRef, error: Error) -> Result<JobInterchange> {
    let Some(stored) = store.records.get(key) else {
        return Err(error);
    };
    tracing::error!(job_id = %job.id(), error = %error, "completing a job that cannot be encoded");
    let mut meta = job.base().metadata();
    meta.status
        .errors
        .push(format!("its final state could not be stored: {error}"));
    meta.retry_info.needs_retry = false;
    Ok((**stored).clone())
}

fn info_of(record: &JobInterchange) -> JobInfo {
    JobInfo {
        id: record.name.clone(),
        job_type: JobType::new(record.type_name.clone(), record.version),
        status: record.status.clone(),
        time: record.time_info.clone(),
        retry: record.retry_info.clone(),
    }
}

impl Store {
    /// Whether a copy whose status is `copy` may overwrite the stored record (amboy's atomic
    /// query): the stored lock expired or was never taken, or this queue holds it and the copy
    /// is at most one lock ahead. A record `finished` for good (completed and not retrying) is
    /// final: only the second rule applies, however old its lock, so that a worker still
    /// running a job that management completed cannot write it back once the lock timed out.
    fn lock_allows(
        stored: &JobStatusInfo,
        finished: bool,
        copy: &JobStatusInfo,
        owner: &str,
        timeout: Duration,
        now: DateTime<Utc>,
    ) -> bool {
        let expired = stored
            .modification_time
            .is_none_or(|time| (now - time).to_std().unwrap_or_default() >= timeout);
        if expired && !finished {
            return true;
        }
        stored.owner.as_deref() == Some(owner)
            && (copy.modification_count == stored.modification_count
                || copy.modification_count == stored.modification_count + 1)
    }

    /// Retains a finished key, forgetting the oldest when more than `keep` are retained.
    fn retain(&mut self, key: Arc<str>, keep: usize) {
        self.results.push_back(key);
        while self.results.len() > keep {
            let Some(oldest) = self.results.pop_front() else {
                break;
            };
            if self
                .records
                .get(&oldest)
                .is_some_and(|record| is_finished(record))
            {
                let record = self.records.remove(&oldest).expect("looked up");
                self.serials.remove(&oldest);
                self.forget_attempt(&record);
            }
        }
    }

    /// Updates the latest-attempt entry of `record`'s job, which left the store: if it was the
    /// latest, the latest is now the highest attempt still stored (an attempt put again under
    /// the job's ID, say), or the entry goes.
    fn forget_attempt(&mut self, record: &JobInterchange) {
        let retry = &record.retry_info;
        if !retry.retryable || self.latest.get(&record.name) != Some(&retry.current_attempt) {
            return;
        }
        let id = &record.name;
        let below = (0..retry.current_attempt)
            .rev()
            .find(|&attempt| self.records.contains_key(&*storage_key(id, true, attempt)));
        match below {
            Some(attempt) => {
                self.latest.insert(id.clone(), attempt);
            }
            None => {
                self.latest.remove(id);
            }
        }
    }

    /// The key of the latest attempt of `id`, or its own key: a job put without retries and
    /// enqueued again by management has its first attempt under its ID and the next ones as
    /// retryable attempts, which come first.
    fn latest_key(&self, id: &str) -> Option<Arc<str>> {
        if let Some(attempt) = self.latest.get(id) {
            let key = storage_key(id, true, *attempt);
            if self.records.contains_key(&key) {
                return Some(key);
            }
        }
        self.records.get_key_value(id).map(|(key, _)| key.clone())
    }

    /// The record under `key`.
    fn record(&self, key: &str) -> Option<Record> {
        self.records.get(key).cloned()
    }

    /// Stores a new record; a retryable job's attempt becomes its latest when it is. Returns
    /// the job's ticket.
    fn insert_new(&mut self, key: Arc<str>, envelope: JobInterchange) -> Ticket {
        if envelope.retry_info.retryable {
            let attempt = envelope.retry_info.current_attempt;
            let latest = self.latest.entry(envelope.name.clone()).or_insert(attempt);
            *latest = (*latest).max(attempt);
        }
        self.records.insert(key.clone(), Arc::new(envelope));
        let serial = self.next_serial;
        self.next_serial += 1;
        self.serials.insert(key.clone(), serial);
        Ticket { key, serial }
    }

    /// Whether `ticket` stands for the job stored under its key.
    fn holds(&self, ticket: &Ticket) -> bool {
        self.serials.get(&ticket.key) == Some(&ticket.serial)
    }

    /// The record under `key`, to change in place (copied first if a reader holds it).
    fn record_mut(&mut self, key: &str) -> &mut JobInterchange {
        Arc::make_mut(self.records.get_mut(key).expect("the caller looked it up"))
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
        let engine = Arc::new_cyclic(|this| Engine {
            dispatcher: Arc::new(Dispatcher::new(id.clone(), options.lock_timeout)),
            id,
            options,
            this: this.clone(),
            store: Mutex::new(Store::default()),
            line_tx,
            line_rx,
            first: SegQueue::new(),
            delayed: Arc::new(Delayed::default()),
            scopes: ScopeManager::new(),
            retry_handler: Mutex::new(None),
            lifecycle: Lifecycle::default(),
            #[cfg(test)]
            hooks: crate::hooks::Hooks::default(),
        });
        Ok(Arc::new(LimitedSizeSerializableQueue { engine }))
    }

    /// The queue's options.
    pub fn options(&self) -> SerializableQueueOptions {
        self.engine.options
    }

    /// The queue's dispatcher.
    pub fn dispatcher(&self) -> &Arc<Dispatcher> {
        &self.engine.dispatcher
    }

    /// The storage key (the ID, or `attempt-<n>.<id>` for a retryable job) of the job holding
    /// `scope`, if any: a running job, a pending job holding its enqueue scopes, or a pending
    /// job that waited beside the scope and was handed it (it holds the scope until it runs).
    pub fn scope_holder(&self, scope: &str) -> Option<String> {
        self.engine.scopes.holder(scope)
    }

    /// The number of records stored (every attempt of every retained job).
    pub fn stored(&self) -> usize {
        self.engine.store.lock().records.len()
    }

    /// The sizes of the queue's internal structures; each is bounded by the capacity.
    pub fn footprint(&self) -> Footprint {
        let (jobs, retained, latest_attempts) = {
            let store = self.engine.store.lock();
            (store.records.len(), store.results.len(), store.latest.len())
        };
        Footprint {
            jobs,
            retained,
            latest_attempts,
            parked: self.engine.scopes.waiting(),
            delayed: self.engine.delayed.len(),
            tracked: self.engine.dispatcher.len(),
            ..Footprint::default()
        }
    }

    /// Copies of the retrying jobs whose lock is older than the lock timeout.
    pub fn stale_retrying(&self) -> Vec<JobRef> {
        self.engine.stale_retrying()
    }

    /// Adds a job in its stored form, as another process, a dump, or an earlier version of this
    /// program wrote it. The envelope is stored as given (its creation time set if missing);
    /// its enqueue scopes are taken if the job decodes. A job that does not decode (its type
    /// is not registered here, its version changed) is accepted, and set aside with the reason
    /// when its turn comes.
    pub async fn put_interchange(&self, envelope: JobInterchange) -> Result<()> {
        self.engine.put_interchange(envelope)
    }
}

impl Drop for LimitedSizeSerializableQueue {
    /// Dropping the last handle closes the queue, as for [`LocalQueue`](crate::LocalQueue).
    fn drop(&mut self) {
        let engine = self.engine.clone();
        self.engine
            .lifecycle
            .abandon(async move { engine.close().await }, || {
                self.engine.stop_now()
            });
    }
}

impl Engine {
    fn arc(&self) -> Arc<Engine> {
        self.this
            .upgrade()
            .expect("a queue method runs while the queue is alive")
    }

    fn route(&self, ticket: Ticket, wait_until: Option<DateTime<Utc>>) {
        match wait_until {
            Some(at) if at >= amboy_core::clock::now() => self.delayed.push(at, ticket),
            _ => {
                let _ = self.line_tx.try_send(Turn::Ticket(ticket));
            }
        }
    }

    /// Puts tickets handed the scopes they waited for ahead of the line.
    fn requeue(&self, tickets: Vec<Ticket>) {
        for ticket in tickets {
            self.first.push(ticket);
            let _ = self.line_tx.try_send(Turn::Handed);
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
            let key = storage_key(
                job.id(),
                meta.retry_info.retryable,
                meta.retry_info.current_attempt,
            );
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

    fn put_prepared(&self, prepared: Prepared) -> Result<()> {
        if self.lifecycle.is_closed() {
            return Err(Error::Closed("queue"));
        }
        let Prepared {
            key,
            envelope,
            enqueue_scopes,
            wait_until,
        } = prepared;
        // A job put as already finished (restored from elsewhere, say) is recorded, not run;
        // if it asks to retry, the stale-retrying monitor picks it up. One in progress (under
        // another owner's lock) would never be dispatched here: refused, as the local queues
        // refuse it.
        let finished = envelope.status.completed || envelope.status.expired;
        if envelope.status.in_progress && !finished {
            return Err(Error::invalid_job(
                &envelope.name,
                "it is in progress already; put a new job instead",
            ));
        }
        let ticket = {
            let mut store = self.store.lock();
            if store.records.contains_key(&key) {
                return Err(Error::duplicate_job(&envelope.name));
            }
            if !finished && store.pending >= self.options.capacity {
                return Err(Error::QueueFull {
                    id: envelope.name.clone(),
                });
            }
            let retrying = is_retrying(&envelope);
            // A finished job holds no scope (nothing would release it); a retrying one keeps
            // its enqueue scopes for its next attempt.
            if !finished || retrying {
                self.scopes.acquire(&key, &enqueue_scopes)?;
            }
            let expired = envelope.status.expired;
            let ticket = store.insert_new(key.clone(), envelope);
            store.total += 1;
            if !finished {
                store.pending += 1;
            } else if retrying {
                store.completed += 1;
                store.retrying += 1;
            } else {
                if expired {
                    store.expired += 1;
                } else {
                    store.completed += 1;
                }
                store.retain(key, self.options.capacity - 1);
                return Ok(());
            }
            (!finished).then_some(ticket)
        };
        if let Some(ticket) = ticket {
            self.route(ticket, wait_until);
        }
        Ok(())
    }

    fn put_interchange(&self, mut envelope: JobInterchange) -> Result<()> {
        if envelope.name.is_empty() {
            return Err(Error::invalid("a stored job needs a name (its ID)"));
        }
        let time = &mut envelope.time_info;
        if time.created.is_none() {
            time.created = Some(amboy_core::clock::now());
        }
        time.validate()
            .map_err(|error| Error::invalid_job(&envelope.name, error))?;
        let retry = &mut envelope.retry_info;
        if retry.retryable {
            retry.base_job_id = envelope.name.clone();
        }
        let key = storage_key(&envelope.name, retry.retryable, retry.current_attempt);
        let enqueue_scopes = match decode(&envelope) {
            Ok(job) => job.enqueue_scopes(),
            Err(_) => Vec::new(),
        };
        let wait_until = envelope.time_info.wait_until;
        self.put_prepared(Prepared {
            key,
            envelope,
            enqueue_scopes,
            wait_until,
        })
    }

    /// Decides what to do with a ticket taken from the line; `Some` if its job was dispatched.
    fn take(&self, ticket: Ticket) -> Option<JobRef> {
        let key = &ticket.key;
        loop {
            let record = {
                let store = self.store.lock();
                // A ticket left by a job completed before its turn: the job under its key now
                // is a later one, with a ticket of its own.
                if !store.holds(&ticket) {
                    return None;
                }
                store.record(key)?
            };
            if record.status.completed || record.status.expired {
                // Finished while it waited, which counted it out of the pending jobs already.
                return None;
            }
            // Decoded outside the lock; the record is then looked at again, and if it changed
            // meanwhile, decoded again.
            let decoded = decode(&record);
            let mut store = self.store.lock();
            match store.records.get(key) {
                Some(current) if Arc::ptr_eq(current, &record) => {}
                // Changed while it was decoded: look again.
                Some(_) => continue,
                None => return None,
            }
            drop(record);
            return match decoded {
                Ok(job) => self.dispatch(store, ticket, job),
                Err(error) => {
                    self.set_aside(&mut store, key, &error);
                    // Its enqueue scopes, and any it was handed while it waited; under the
                    // store's lock, before another job can be put under its key.
                    self.release_scopes(key, &[]);
                    drop(store);
                    None
                }
            };
        }
    }

    /// Dispatches the decoded copy of the pending record under `key`, under the store's lock.
    fn dispatch(
        &self,
        mut store: parking_lot::MutexGuard<'_, Store>,
        ticket: Ticket,
        job: JobRef,
    ) -> Option<JobRef> {
        let key = ticket.key.clone();
        let now = amboy_core::clock::now();
        let mut meta = job.base().metadata();
        if meta.time_info.is_stale_at(now) {
            drop(meta);
            let record = store.record_mut(&key);
            record.status.expired = true;
            count_out(&mut store.pending);
            store.expired += 1;
            store.retain(key.clone(), self.options.capacity - 1);
            // Under the store's lock, before another job can be put under its key.
            self.release_scopes(&key, &[]);
            drop(store);
            #[cfg(test)]
            self.hooks.run(&self.hooks.after_expiry_unlocked, &job);
            if amboy_core::metrics::ENABLED {
                amboy_core::metrics::jobs_expired(&self.id, &job.job_type().name, 1);
            }
            tracing::debug!(queue_id = %self.id, job_id = job.id(), "set aside job past its dispatch_by deadline");
            return None;
        }
        if !meta.time_info.is_dispatchable_at(now) {
            // It waits holding no more than its enqueue scopes (a job parked beside a scope is
            // handed its scopes).
            let at = meta.time_info.wait_until.unwrap_or(now);
            let enqueue_scopes = meta.effective_enqueue_scopes();
            drop(meta);
            self.release_scopes(&key, &enqueue_scopes);
            drop(store);
            self.delayed.push(at, ticket);
            return None;
        }
        if !meta.scopes.is_empty()
            && self
                .scopes
                .acquire_or_wait(&key, &meta.scopes, ticket.clone())
                .is_err()
        {
            return None;
        }
        if let Err(error) = self.dispatcher.mark(job.base().job_id(), &mut meta, now) {
            drop(meta);
            count_out(&mut store.pending);
            self.release_scopes(&key, &[]);
            drop(store);
            tracing::warn!(queue_id = %self.id, key = %key, error = %error, "could not dispatch job");
            return None;
        }
        let max_time = meta.time_info.max_time;
        let record = store.record_mut(&key);
        record.status = meta.status.clone();
        record.time_info = meta.time_info.clone();
        drop(meta);
        count_out(&mut store.pending);
        drop(store);
        self.dispatcher.track(&job, max_time);
        Some(job)
    }

    /// Sets aside the pending record under `key`, which cannot be decoded: it is completed
    /// with the reason, counted, retained, and never dispatched.
    fn set_aside(&self, store: &mut Store, key: &Arc<str>, error: &Error) {
        let now = amboy_core::clock::now();
        let record = store.record_mut(key);
        let status = &mut record.status;
        status.errors.push(format!(
            "set aside without running: the stored job cannot be decoded: {error}"
        ));
        status.error_count = status.errors.len();
        status.completed = true;
        status.in_progress = false;
        status.modification_time = Some(now);
        status.modification_count += 1;
        record.time_info.end = Some(now);
        // It cannot retry either: nothing could build its next attempt.
        record.retry_info.needs_retry = false;
        tracing::error!(queue_id = %self.id, key = %key, error = %error, "set aside a stored job that cannot be decoded");
        count_out(&mut store.pending);
        store.completed += 1;
        store.undecodable += 1;
        store.retain(key.clone(), self.options.capacity - 1);
    }

    /// Releases every scope the job under `key` holds but those in `keep` (its enqueue
    /// scopes, say): those it ran under, those handed to it while it waited, even any its job
    /// no longer names. Each goes to the first job waiting for it that can take all of its
    /// scopes, and that job goes back in line. Called under the store's lock, as every change
    /// of the scopes is: a job put under the key afterwards keeps what it takes, and no
    /// hand-over slips between two steps of a change.
    fn release_scopes(&self, key: &str, keep: &[String]) {
        let woken = self.scopes.release_held(key, keep);
        self.requeue(woken);
    }

    /// Checks the copy's lock against the stored record under `key`; returns the copy's status
    /// that passed.
    fn check_lock(
        &self,
        store: &Store,
        key: &Arc<str>,
        job: &JobRef,
        now: DateTime<Utc>,
    ) -> Result<JobStatusInfo> {
        let record = store
            .records
            .get(key)
            .ok_or_else(|| Error::job_not_found_because(job.id(), "not owned by the queue"))?;
        let copy = job.base().metadata().status.clone();
        if !Store::lock_allows(
            &record.status,
            record.status.completed && !is_retrying(record),
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
        Ok(copy)
    }

    /// Completes `job`, encoded beforehand as `envelope`, under the store's lock; returns the
    /// scopes it keeps (a retrying job's enqueue scopes, for its next attempt): release the
    /// others. With `forget`, the dispatcher stops keeping the attempt's lock alive
    /// (interrupting the copy that runs, if it is another one).
    fn complete_locked(
        &self,
        store: &mut Store,
        key: &Arc<str>,
        job: &JobRef,
        mut envelope: JobInterchange,
        forget: bool,
    ) -> Result<Vec<String>> {
        let now = amboy_core::clock::now();
        self.check_lock(store, key, job, now)?;
        let stored = &store.records[key];
        let was_completed = stored.status.completed;
        let was_retrying = is_retrying(stored);
        let was_in_progress = stored.status.in_progress;
        refuse_expired(store, key, job)?;
        // A job completed before it ran leaves the pending jobs now (and from beside the scopes
        // it waited for); the line skips it later.
        if !was_completed && !was_in_progress {
            count_out(&mut store.pending);
            self.scopes.unpark(key, |parked| *parked.key == **key);
        }
        let dispatched = forget && was_in_progress && self.dispatcher.forget(job);
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
            envelope.status = meta.status.clone();
            truncate_errors(&mut envelope.status.errors);
            envelope.time_info = meta.time_info.clone();
            envelope.retry_info = meta.retry_info.clone();
            (keep, should_retry)
        };
        store.records.insert(key.clone(), Arc::new(envelope));
        if !was_completed && !was_in_progress {
            // Its ticket may wait in the timer heap, which sweeps out finished jobs' tickets.
            self.delayed.forget_one(|ticket| {
                store.holds(ticket)
                    && store
                        .records
                        .get(&ticket.key)
                        .is_some_and(|record| !record.status.completed && !record.status.expired)
            });
        }
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
            if !handler.started() {
                continue;
            }
            for job in queue.stale_retrying() {
                // A full handler holds the monitor up, never the queue's closing.
                tokio::select! {
                    _ = lifetime.cancelled() => return,
                    put = handler.put(job) => if let Err(error) = put {
                        tracing::warn!(queue_id = %queue.id, error = %error, "could not hand a stale retrying job over");
                    },
                }
            }
        }
    }

    /// Copies of the retrying jobs whose lock is older than the lock timeout.
    fn stale_retrying(&self) -> Vec<JobRef> {
        let now = amboy_core::clock::now();
        let records = self.records_where(|record| {
            is_retrying(record)
                && record.status.modification_time.is_none_or(|time| {
                    (now - time).to_std().unwrap_or_default() > self.options.lock_timeout
                })
        });
        records
            .iter()
            .filter_map(|record| decode(record).ok())
            .collect()
    }

    async fn run_timer(
        delayed: Arc<Delayed<Ticket>>,
        line: async_channel::Sender<Turn>,
        lifetime: CancellationToken,
    ) {
        loop {
            let (due, wait) = delayed.take_due(amboy_core::clock::now());
            for ticket in due {
                let _ = line.try_send(Turn::Ticket(ticket));
            }
            tokio::select! {
                _ = lifetime.cancelled() => return,
                _ = delayed.changed() => {}
                _ = tokio::time::sleep(wait.unwrap_or(Duration::from_secs(3600))) => {}
            }
        }
    }

    async fn put_one(&self, job: JobRef) -> Result<()> {
        if self.lifecycle.is_closed() {
            return Err(Error::Closed("queue"));
        }
        let prepared = self.prepare(&job)?;
        self.put_prepared(prepared)?;
        if amboy_core::metrics::ENABLED {
            amboy_core::metrics::jobs_put(&self.id, &job.job_type().name, 1);
        }
        Ok(())
    }

    fn retry_handler(&self) -> Option<Arc<dyn RetryHandler>> {
        self.retry_handler.lock().clone()
    }

    /// What stops without waiting: the background tasks and the line.
    fn stop_now(&self) {
        self.lifecycle.close();
        self.line_tx.close();
    }

    /// The records `keep` keeps, taken under the lock to be read outside it.
    fn records_where(&self, keep: impl Fn(&JobInterchange) -> bool) -> Vec<Record> {
        let store = self.store.lock();
        store
            .records
            .values()
            .filter(|record| keep(record))
            .cloned()
            .collect()
    }
}

#[async_trait]
impl Queue for Engine {
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
        let record = {
            let store = self.store.lock();
            let key = store
                .latest_key(id)
                .ok_or_else(|| Error::job_not_found(id))?;
            store.records[&key].clone()
        };
        decode(&record)
    }

    async fn next(&self) -> Result<JobRef> {
        // Closing the queue closes the line, which ends this wait. Nothing awaits after a
        // ticket leaves the line, so dropping this future loses no job.
        loop {
            if self.line_rx.is_closed() {
                return Err(Error::Closed("queue"));
            }
            // A ticket handed its scopes goes first; the turn that said so may be another's.
            let ticket = match self.first.pop() {
                Some(ticket) => ticket,
                None => match self
                    .line_rx
                    .recv()
                    .await
                    .map_err(|_| Error::Closed("queue"))?
                {
                    Turn::Ticket(ticket) => ticket,
                    Turn::Handed => continue,
                },
            };
            if let Some(job) = self.take(ticket) {
                return Ok(job);
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
        let encoded = encode(job);
        let mut store = self.store.lock();
        let envelope = match encoded {
            Ok(envelope) => envelope,
            Err(error) => unencodable(&store, &key, job, error)?,
        };
        let keep = self.complete_locked(&mut store, &key, job, envelope, true)?;
        // Released before the store's lock is: whoever sees the job complete finds its scopes
        // free (the store's lock is taken before the scope manager's everywhere).
        self.release_scopes(&key, &keep);
        Ok(())
    }

    async fn save(&self, job: &JobRef) -> Result<()> {
        let key = key_of(job);
        let mut envelope = encode(job)?;
        #[cfg(test)]
        self.hooks.run(&self.hooks.after_save_encoded, job);
        let mut store = self.store.lock();
        // The lock is checked against the copy's status now, and that status is what is stored:
        // the heartbeat may have moved the copy's lock on since it was encoded.
        let status = self.check_lock(&store, &key, job, amboy_core::clock::now())?;
        envelope.status = status;
        truncate_errors(&mut envelope.status.errors);
        // Whether the job waits, runs, retries or finished is the queue's to say (its counts
        // follow it): a save stores everything else. The scopes it holds follow from that
        // state, read under the store's lock so that a completion cannot slip in between.
        let stored = &store.records[&key];
        envelope.status.completed = stored.status.completed;
        envelope.status.in_progress = stored.status.in_progress;
        envelope.status.expired = stored.status.expired;
        if stored.status.completed {
            envelope.retry_info.needs_retry = stored.retry_info.needs_retry;
        }
        let scopes = if envelope.status.in_progress {
            job.scopes()
        } else if (envelope.status.completed && !envelope.retry_info.should_retry())
            || envelope.status.expired
        {
            Vec::new()
        } else {
            job.enqueue_scopes()
        };
        self.scopes.acquire(&key, &scopes)?;
        store.records.insert(key, Arc::new(envelope));
        Ok(())
    }

    async fn results(&self) -> JobStream {
        let records = self.records_where(|record| {
            record.status.completed && !is_retrying(record) && !record.status.in_progress
        });
        // Jobs set aside because they cannot be decoded are left out: `job_info` shows them.
        let jobs: Vec<Result<JobRef>> = records
            .iter()
            .filter_map(|record| decode(record).ok())
            .map(Ok)
            .collect();
        Box::pin(stream::iter(jobs))
    }

    async fn job_info(&self) -> JobInfoStream {
        let records = self.records_where(|_| true);
        let infos: Vec<Result<JobInfo>> = records.iter().map(|r| Ok(info_of(r))).collect();
        Box::pin(stream::iter(infos))
    }

    async fn stats(&self) -> Result<QueueStats> {
        let (mut stats, undecodable) = {
            let store = self.store.lock();
            let finished = store.completed + store.expired + store.pending;
            let stats = QueueStats {
                running: store.total.saturating_sub(finished),
                completed: store.completed,
                retrying: store.retrying,
                pending: store.pending,
                expired: store.expired,
                total: store.total,
                ..QueueStats::default()
            };
            (stats, store.undecodable)
        };
        if undecodable > 0 {
            stats.annotate("undecodable", undecodable)?;
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
        // The retry handler starts before the workers: a job that ran and asked to retry
        // before the handler was running would wait for the stale-retrying monitor, a lock
        // timeout later.
        let handler = self.retry_handler();
        if let Some(handler) = &handler {
            handler.start().await?;
        }
        // The background tasks start once the runner has: a runner that cannot start leaves
        // the queue as it was, ready to start again.
        if let Err(error) = self.lifecycle.start_runner(&runner).await {
            if let Some(handler) = &handler {
                handler.close().await;
            }
            return Err(error);
        }
        let store: Arc<dyn LockStore> = self.arc();
        self.dispatcher.start_heartbeat(Arc::downgrade(&store));
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
        Ok(())
    }

    async fn close(&self) {
        self.lifecycle.close_runner().await;
        if let Some(handler) = self.retry_handler() {
            handler.close().await;
        }
        self.stop_now();
        self.dispatcher.close().await;
        self.lifecycle.end().await;
    }

    fn as_retryable(&self) -> Option<&dyn RetryableQueue> {
        Some(self)
    }
}

/// The heartbeat stores refreshed locks through [`Queue::save`], one job at a time: in memory,
/// a batch would save nothing.
#[async_trait]
impl LockStore for Engine {
    async fn save_locks(&self, jobs: &[JobRef]) -> Vec<Result<()>> {
        amboy_core::save_each(self, jobs).await
    }
}

#[async_trait]
impl RetryableQueue for Engine {
    fn retry_handler(&self) -> Option<Arc<dyn RetryHandler>> {
        Engine::retry_handler(self)
    }

    fn set_retry_handler(&self, handler: Arc<dyn RetryHandler>) -> Result<()> {
        // The queue starts its handler when it starts: a handler set later would never run,
        // and jobs asking to retry would wait for it for ever.
        if self.lifecycle.started() {
            return Err(Error::AlreadyStarted("queue"));
        }
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
        let record = self
            .store
            .lock()
            .record(&storage_key(id, true, attempt))
            .ok_or_else(|| Error::job_not_found_because(id, format!("no attempt {attempt}")))?;
        decode(&record)
    }

    async fn get_all_attempts(&self, id: &str) -> Result<Vec<JobRef>> {
        let records: Vec<Record> = {
            let store = self.store.lock();
            let latest = store.latest.get(id).copied().unwrap_or(0);
            // Attempts the queue no longer retains are skipped, not a reason to stop.
            let mut records: Vec<Record> = (0..=latest)
                .filter_map(|attempt| store.record(&storage_key(id, true, attempt)))
                .collect();
            // A job put without retries has no attempts (amboy's rule), unless management
            // enqueued it again: then its first attempt, stored under its ID alone, comes
            // first.
            if !records.is_empty()
                && let Some(plain) = store.record(id)
                && !plain.retry_info.retryable
            {
                records.insert(0, plain);
            }
            records
        };
        if records.is_empty() {
            return Err(Error::job_not_found_because(id, "no retryable attempts"));
        }
        records.iter().map(|record| decode(record)).collect()
    }

    async fn complete_retrying_and_put(&self, to_complete: &JobRef, to_put: JobRef) -> Result<()> {
        let key = key_of(to_complete);
        let Prepared {
            key: put_key,
            envelope,
            enqueue_scopes,
            wait_until,
        } = self.prepare(&to_put)?;
        {
            let mut meta = to_complete.base().metadata();
            meta.retry_info.needs_retry = false;
            meta.retry_info.end = Some(amboy_core::clock::now());
        }
        let completed_envelope = encode(to_complete)?;
        let (woken, ticket) = {
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
            // Whatever makes the completion fail is checked before the scopes change, so that
            // they never need putting back.
            refuse_expired(&store, &key, to_complete)?;
            // The old attempt holds its enqueue scopes only (its dispatch scopes were released
            // when it completed, and may be held by another job by now).
            let release = self.scopes.held_by(&key);
            // The scopes released are handed over once the completion is kept.
            let freed = self
                .scopes
                .swap(&key, &release, &put_key, &enqueue_scopes)?;
            let completed =
                self.complete_locked(&mut store, &key, to_complete, completed_envelope, false);
            if let Err(error) = completed {
                // Put the scopes back as they were.
                if let Ok(freed) = self.scopes.swap(&put_key, &enqueue_scopes, &key, &release) {
                    self.requeue(self.scopes.hand_over(&freed));
                }
                self.requeue(self.scopes.hand_over(&freed));
                return Err(error);
            }
            let woken = self.scopes.hand_over(&freed);
            let ticket = store.insert_new(put_key.clone(), envelope);
            store.pending += 1;
            store.total += 1;
            (woken, ticket)
        };
        self.requeue(woken);
        self.route(ticket, wait_until);
        Ok(())
    }

    async fn complete_retrying(&self, job: &JobRef) -> Result<()> {
        {
            let mut meta = job.base().metadata();
            meta.retry_info.needs_retry = false;
            meta.retry_info.end = Some(amboy_core::clock::now());
        }
        let key = key_of(job);
        let envelope = encode(job)?;
        let mut store = self.store.lock();
        self.complete_locked(&mut store, &key, job, envelope, false)?;
        // The enqueue scopes kept for the retry are free now too, before the store's lock is.
        self.release_scopes(&key, &[]);
        Ok(())
    }
}

impl Drop for Engine {
    /// An engine nobody holds any more stops its background tasks.
    fn drop(&mut self) {
        self.stop_now();
    }
}

amboy_core::delegate_retryable_queue!(LimitedSizeSerializableQueue, engine);

#[cfg(test)]
mod tests {
    use amboy_core::{Base, Job, JobContext, JobError};
    use chrono::TimeDelta;
    use serde::{Deserialize, Serialize};
    use tokio_util::sync::CancellationToken;

    use super::*;

    #[derive(Serialize, Deserialize)]
    struct Quiet {
        base: Base,
    }

    #[typetag::serde(name = "serializable-unit-quiet")]
    #[async_trait]
    impl Job for Quiet {
        fn base(&self) -> &Base {
            &self.base
        }

        async fn run(&self, _ctx: &JobContext) -> std::result::Result<(), JobError> {
            Ok(())
        }
    }

    /// An expired job released its scopes after the store's lock was let go: a job put under
    /// its key in between (the record is forgotten at once with a capacity of one) lost the
    /// enqueue scope it had just taken. The put runs here in that gap.
    #[tokio::test]
    async fn a_job_put_under_the_key_of_one_just_expired_keeps_its_enqueue_scope() {
        let queue = LimitedSizeSerializableQueue::new(1);
        let job = |dispatch_by: TimeDelta, wait: Option<TimeDelta>| -> JobRef {
            let job: JobRef = Arc::new(Quiet {
                base: Base::with_id("expiring"),
            });
            job.set_scopes(vec!["lane".into()]);
            job.set_enqueue_all_scopes(true);
            let now = amboy_core::clock::now();
            let mut meta = job.base().metadata();
            meta.time_info.wait_until = wait.map(|wait| now + wait);
            meta.time_info.dispatch_by = Some(now + dispatch_by);
            drop(meta);
            job
        };
        queue.put(job(TimeDelta::seconds(-1), None)).await.unwrap();
        *queue.engine.hooks.after_expiry_unlocked.lock() = Some(Box::new({
            let queue = Arc::downgrade(&queue);
            let again = job(TimeDelta::hours(2), Some(TimeDelta::hours(1)));
            move |_| {
                let queue = queue.upgrade().unwrap();
                futures::executor::block_on(queue.put(again)).expect("put under the key");
            }
        }));
        assert!(
            tokio::time::timeout(Duration::from_millis(100), queue.next())
                .await
                .is_err(),
            "nothing to run: the first expired, the second waits an hour"
        );
        assert_eq!(queue.stats().await.unwrap().expired, 1);
        assert_eq!(
            queue.scope_holder("lane").as_deref(),
            Some("expiring"),
            "the job put again holds its enqueue scope"
        );
    }

    /// A `save` encoded the running copy, then the heartbeat refreshed the copy's lock and
    /// stored it, then the `save` stored the copy as it was encoded, a lock behind: the next
    /// heartbeat was refused and the copy lost its lock while it ran. The heartbeat runs here
    /// exactly in that gap.
    #[tokio::test]
    async fn a_save_encoded_before_a_heartbeat_keeps_the_lock() {
        let queue = LimitedSizeSerializableQueue::new(4);
        let job: JobRef = Arc::new(Quiet {
            base: Base::with_id("saved"),
        });
        queue.put(job).await.unwrap();
        let job = queue.next().await.expect("dispatched");
        let run = job.base().run_token(&CancellationToken::new()).unwrap();
        *queue.engine.hooks.after_save_encoded.lock() = Some(Box::new({
            let queue = Arc::downgrade(&queue);
            move |job| {
                let queue = queue.upgrade().unwrap();
                let refreshed =
                    futures::executor::block_on(queue.dispatcher().refresh_locks(&*queue));
                assert_eq!(
                    refreshed,
                    1,
                    "the heartbeat in the gap refreshes {}",
                    job.id()
                );
            }
        }));
        queue.save(&job).await.expect("the save");

        assert_eq!(
            queue.dispatcher().refresh_locks(&*queue).await,
            1,
            "the next heartbeat keeps the lock"
        );
        assert!(
            !run.is_cancelled() && job.error().is_none(),
            "{:?}",
            job.error()
        );
        queue
            .complete(&job)
            .await
            .expect("the copy that ran completes it");
    }
}

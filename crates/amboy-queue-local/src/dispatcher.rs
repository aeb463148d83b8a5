//! The dispatcher: locks jobs for a queue and keeps their locks alive while they run
//! (amboy's `Dispatcher`).

use std::sync::{Arc, Weak};
use std::time::Duration;

use amboy_core::{Error, JobId, JobRef, Metadata, Queue, Result};
use chrono::{DateTime, Utc};
use dashmap::DashMap;
use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Locks jobs for one owner (a queue) when they are dispatched and refreshes the locks every
/// quarter of the lock timeout while they run, so that another owner never takes over a live
/// job and a job whose owner died is taken over after the lock timeout.
///
/// Two ways to keep locks alive, for two kinds of queue:
///
/// * queues that store copies register each dispatched copy ([`dispatch`](Self::dispatch) or
///   [`mark`](Self::mark) then [`track`](Self::track)); one heartbeat task
///   ([`start_heartbeat`](Self::start_heartbeat)) refreshes and saves every registered copy,
///   instead of amboy's task per job. Copies are known by job ID and attempt, so the attempts
///   of a retried job never stand for one another, and by instance: only the copy registered
///   is refreshed. A copy whose lock is lost (its save is refused, or it could not be saved
///   for a whole lock timeout) stops being refreshed and its run is interrupted
///   ([`Base::interrupt`](amboy_core::Base::interrupt)); the others go on;
/// * queues that hold the jobs themselves only [`mark`](Self::mark) them, and refresh their
///   running jobs with [`refresh`](Self::refresh) from a scan of their own (see
///   [`LocalQueue::refresh_locks`](crate::LocalQueue::refresh_locks)): nothing to register per
///   job.
///
/// Either way, a job stops being refreshed once its `max_time` has passed, so that a job stuck
/// past its limit loses its lock.
#[derive(Debug)]
pub struct Dispatcher {
    owner: Arc<str>,
    lock_timeout: Duration,
    dispatched: DashMap<Key, Dispatched, foldhash::fast::RandomState>,
    heartbeat: Mutex<Option<(CancellationToken, JoinHandle<()>)>>,
}

/// A dispatched copy's key: its job ID and attempt.
type Key = (JobId, u32);

#[derive(Debug, Clone)]
struct Dispatched {
    job: JobRef,
    /// When the job's `max_time` ends, if it has one.
    deadline: Option<Instant>,
    /// When its lock was last stored.
    refreshed: Instant,
}

fn key_of(job: &JobRef) -> Key {
    let attempt = job.base().metadata().retry_info.current_attempt;
    (job.base().job_id().clone(), attempt)
}

impl Dispatcher {
    /// A dispatcher locking jobs for `owner`.
    pub fn new(owner: Arc<str>, lock_timeout: Duration) -> Self {
        Dispatcher {
            owner,
            lock_timeout,
            dispatched: DashMap::default(),
            heartbeat: Mutex::new(None),
        }
    }

    /// The owner the locks are taken for.
    pub fn owner(&self) -> &Arc<str> {
        &self.owner
    }

    /// The lock timeout.
    pub fn lock_timeout(&self) -> Duration {
        self.lock_timeout
    }

    /// How often locks are refreshed: a quarter of the lock timeout.
    pub fn heartbeat_interval(&self) -> Duration {
        (self.lock_timeout / 4).max(Duration::from_millis(1))
    }

    /// Dispatches `job`: checks that it may be dispatched, records its start, marks it in
    /// progress and locks it for the owner, all under one lock of its metadata; then tracks it.
    pub fn dispatch(&self, job: &JobRef) -> Result<()> {
        let max_time = {
            let mut meta = job.base().metadata();
            self.mark(job.base().job_id(), &mut meta, amboy_core::clock::now())?;
            meta.time_info.max_time
        };
        self.track(job, max_time);
        Ok(())
    }

    /// The first half of [`dispatch`](Self::dispatch), for queues that already hold the job's
    /// metadata lock: checks that the job may be dispatched and marks it started, in progress
    /// and locked by the owner. Follow it with [`track`](Self::track) once the lock is released.
    pub fn mark(&self, id: &JobId, meta: &mut Metadata, now: DateTime<Utc>) -> Result<()> {
        if !meta.is_dispatchable(self.lock_timeout, now) {
            return Err(Error::invalid_job(
                id.as_str(),
                "cannot dispatch in progress or completed job",
            ));
        }
        meta.time_info.start = Some(now);
        meta.status.in_progress = true;
        meta.status.owner = Some(self.owner.clone());
        meta.status.modification_time = Some(now);
        meta.status.modification_count += 1;
        Ok(())
    }

    /// Refreshes the lock of a job this owner dispatched, under its metadata lock: only a job in
    /// progress, not completed, locked by this owner and within its `max_time`. Returns whether
    /// it did. Queues holding the jobs themselves refresh their running jobs with this instead of
    /// tracking them.
    pub fn refresh(&self, meta: &mut Metadata, now: DateTime<Utc>) -> bool {
        let status = &meta.status;
        if !status.in_progress || status.completed || status.owner.as_deref() != Some(&*self.owner)
        {
            return false;
        }
        let max_time = meta.time_info.max_time;
        if !max_time.is_zero()
            && let Some(start) = meta.time_info.start
            && (now - start).to_std().unwrap_or_default() >= max_time
        {
            // Past its limit: let the lock lapse, so that a stuck job is taken over.
            return false;
        }
        meta.status.modification_time = Some(now);
        meta.status.modification_count += 1;
        true
    }

    /// The second half of [`dispatch`](Self::dispatch): keeps the lock of a marked copy alive
    /// until it completes or is released, or its `max_time` passes, and lets the heartbeat
    /// interrupt its run should the lock be lost. Replaces a copy of the same attempt tracked
    /// before (whose lock was taken over).
    pub fn track(&self, job: &JobRef, max_time: Duration) {
        let now = Instant::now();
        let deadline = (!max_time.is_zero()).then(|| now + max_time);
        job.base().watch_run();
        self.dispatched.insert(
            key_of(job),
            Dispatched {
                job: job.clone(),
                deadline,
                refreshed: now,
            },
        );
    }

    /// Gives a dispatched copy back without running it: stops refreshing its lock and unlocks
    /// it, so that it is pending again.
    pub fn release(&self, job: &JobRef) {
        self.untrack(&key_of(job), job);
        job.unlock(&self.owner, self.lock_timeout);
    }

    /// Finishes a dispatched copy: stops refreshing its lock and records its end. A job this
    /// dispatcher did not dispatch is left alone. Returns whether the job was dispatched here.
    pub fn complete(&self, job: &JobRef) -> bool {
        let dispatched = self.forget(job);
        if dispatched {
            job.base().metadata().time_info.end = Some(amboy_core::clock::now());
        }
        dispatched
    }

    /// Stops refreshing the lock of the job's attempt, without touching `job`; returns whether
    /// that attempt was tracked. If the copy tracked is another one than `job` (the job is
    /// being finished through a copy), the tracked copy's lock is gone: its run is interrupted.
    /// Queues that complete the job under their own locks use this.
    pub fn forget(&self, job: &JobRef) -> bool {
        let Some((_, tracked)) = self.dispatched.remove(&key_of(job)) else {
            return false;
        };
        if !Arc::ptr_eq(&tracked.job, job) {
            tracked
                .job
                .add_error(&"lost the lock: the job was finished through another copy");
            tracked.job.base().interrupt();
        }
        true
    }

    /// Stops tracking `key` if the copy tracked is `job`; returns whether it was.
    fn untrack(&self, key: &Key, job: &JobRef) -> bool {
        self.dispatched
            .remove_if(key, |_, tracked| Arc::ptr_eq(&tracked.job, job))
            .is_some()
    }

    /// Whether attempt `attempt` of job `id` is dispatched and running here.
    pub fn is_dispatched(&self, id: &str, attempt: u32) -> bool {
        self.dispatched.contains_key(&(JobId::new(id), attempt))
    }

    /// The number of dispatched copies.
    pub fn len(&self) -> usize {
        self.dispatched.len()
    }

    /// Whether no copy is dispatched.
    pub fn is_empty(&self) -> bool {
        self.dispatched.is_empty()
    }

    /// Starts refreshing locks, saving each refreshed job to `queue`. Restarts the heartbeat if
    /// it was running.
    pub fn start_heartbeat(self: &Arc<Self>, queue: Weak<dyn Queue>) {
        let token = CancellationToken::new();
        let dispatcher = Arc::downgrade(self);
        let task = tokio::spawn(heartbeat(dispatcher, queue, token.clone()));
        if let Some((old, _)) = self.heartbeat.lock().replace((token, task)) {
            old.cancel();
        }
    }

    /// Refreshes the lock of every dispatched copy once, saving each to `queue`. A copy whose
    /// save is refused (`queue` says the job is not found: another owner took it, or it was
    /// finished) has lost its lock: it is no longer refreshed, the reason is recorded on it,
    /// and its run is interrupted. A save failing otherwise (the store is unreachable, say) is
    /// tried again at the next refresh, until the lock would have expired. Returns how many
    /// copies were refreshed.
    pub async fn refresh_locks(&self, queue: &dyn Queue) -> usize {
        let now = Instant::now();
        let copies: Vec<(Key, Dispatched)> = self
            .dispatched
            .iter()
            .map(|entry| (entry.key().clone(), entry.value().clone()))
            .collect();
        let mut refreshed = 0;
        for (key, Dispatched { job, deadline, .. }) in copies {
            if deadline.is_some_and(|deadline| deadline <= now) {
                continue;
            }
            let before = {
                let mut meta = job.base().metadata();
                // Completed, released or replaced since the snapshot: no longer ours to
                // refresh. Checked under the job's lock, and completion and release stop
                // tracking a job before they change its status, so a finished job is never
                // marked in progress again. The lock is refreshed in the same step, so that
                // nothing (a retry handler taking the job, say) can lock it in between.
                if !self
                    .dispatched
                    .get(&key)
                    .is_some_and(|tracked| Arc::ptr_eq(&tracked.job, &job))
                {
                    continue;
                }
                let before = (
                    meta.status.modification_time,
                    meta.status.modification_count,
                );
                meta.status.in_progress = true;
                meta.status.completed = false;
                meta.status.owner = Some(self.owner.clone());
                meta.status.modification_time = Some(amboy_core::clock::now());
                meta.status.modification_count += 1;
                before
            };
            match queue.save(&job).await {
                Ok(()) => {
                    refreshed += 1;
                    if let Some(mut tracked) = self.dispatched.get_mut(&key)
                        && Arc::ptr_eq(&tracked.job, &job)
                    {
                        tracked.refreshed = Instant::now();
                    }
                }
                Err(error) => self.refresh_failed(&key, &job, before, &error),
            }
        }
        refreshed
    }

    /// What follows a refresh whose save failed.
    fn refresh_failed(
        &self,
        key: &Key,
        job: &JobRef,
        before: (Option<DateTime<Utc>>, u64),
        error: &Error,
    ) {
        let lapsed = self
            .dispatched
            .get(key)
            .is_some_and(|tracked| tracked.refreshed.elapsed() >= self.lock_timeout);
        if !error.is_job_not_found() && !lapsed {
            // Not stored, but not refused either: the store still holds the previous lock, which
            // the next refresh extends.
            let mut meta = job.base().metadata();
            (
                meta.status.modification_time,
                meta.status.modification_count,
            ) = before;
            tracing::warn!(job_id = job.id(), error = %error, "lock heartbeat failed; trying again");
            return;
        }
        if self.untrack(key, job) {
            job.add_error(&format_args!("lost the lock: {error}"));
            job.base().interrupt();
            tracing::warn!(job_id = job.id(), error = %error, "lost the lock of a running job; its run is interrupted");
        }
    }

    /// Stops the heartbeat and forgets every dispatched job.
    pub async fn close(&self) {
        let heartbeat = self.heartbeat.lock().take();
        if let Some((token, task)) = heartbeat {
            token.cancel();
            let _ = task.await;
        }
        self.dispatched.clear();
    }
}

async fn heartbeat(dispatcher: Weak<Dispatcher>, queue: Weak<dyn Queue>, token: CancellationToken) {
    let Some(interval) = dispatcher.upgrade().map(|d| d.heartbeat_interval()) else {
        return;
    };
    let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let (Some(dispatcher), Some(queue)) = (dispatcher.upgrade(), queue.upgrade()) else {
            return;
        };
        dispatcher.refresh_locks(&*queue).await;
    }
}

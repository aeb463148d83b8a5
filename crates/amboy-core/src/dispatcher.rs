//! The dispatcher: locks jobs for a queue and keeps their locks alive while they run
//! (amboy's `Dispatcher`), shared by every queue that stores its jobs.

use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use dashmap::DashMap;
use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{Error, JobId, JobRef, LockState, Metadata, Queue, Result};

/// Where a [`Dispatcher`]'s heartbeat stores the locks it refreshed: the queue that stores the
/// jobs. One call carries every running job of the process, so that a queue on a database
/// refreshes them all in one statement.
#[async_trait]
pub trait LockStore: Send + Sync + 'static {
    /// Stores the refreshed lock of each of `jobs` (owner, modification time and a
    /// modification count advanced by one since the job's last write), under the optimistic
    /// lock every write of a dispatched job goes through. Returns one result per job, in order:
    /// a job-not-found error means the lock is lost (another owner took the job over, or it was
    /// finished); any other error is transient and the next heartbeat tries again.
    async fn save_locks(&self, jobs: &[JobRef]) -> Vec<Result<()>>;
}

/// [`LockStore::save_locks`] for a queue without a batched write: saves the jobs one by one
/// with [`Queue::save`].
pub async fn save_each(queue: &dyn Queue, jobs: &[JobRef]) -> Vec<Result<()>> {
    let mut results = Vec::with_capacity(jobs.len());
    for job in jobs {
        results.push(queue.save(job).await);
    }
    results
}

/// Any queue stores locks one job at a time, with [`save_each`].
#[async_trait]
impl LockStore for dyn Queue {
    async fn save_locks(&self, jobs: &[JobRef]) -> Vec<Result<()>> {
        save_each(self, jobs).await
    }
}

/// Locks jobs for one owner (a queue) when they are dispatched and refreshes the locks every
/// quarter of the lock timeout while they run, so that another owner never takes over a live
/// job and a job whose owner died is taken over after the lock timeout.
///
/// Two ways to keep locks alive, for two kinds of queue:
///
/// * queues that store copies (the serializable queue, the PostgreSQL queue) register each
///   dispatched copy ([`dispatch`](Self::dispatch) or [`mark`](Self::mark) then
///   [`track`](Self::track)); one heartbeat task ([`start_heartbeat`](Self::start_heartbeat))
///   refreshes every registered copy and stores them all in one [`LockStore::save_locks`],
///   instead of amboy's task and write per job. Copies are known by job ID and attempt, so the attempts
///   of a retried job never stand for one another, and by instance: only the copy registered
///   is refreshed. A copy whose lock is lost (its save is refused, or it could not be saved
///   for a whole lock timeout) stops being refreshed and its run is interrupted
///   ([`Base::interrupt`](crate::Base::interrupt)); the others go on;
/// * queues that hold the jobs themselves only [`mark`](Self::mark) them, and refresh their
///   running jobs with [`refresh`](Self::refresh) from a scan of their own (see
///   `LocalQueue::refresh_locks` in `amboy-queue-local`): nothing to register per job.
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
            self.mark(job.base().job_id(), &mut meta, crate::clock::now())?;
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
    /// before, whose lock was taken over (its lock expired, and this process claimed the job
    /// again before its heartbeat noticed): that copy's run is interrupted, as a copy that
    /// lost its lock to another process is.
    pub fn track(&self, job: &JobRef, max_time: Duration) {
        let now = Instant::now();
        let deadline = (!max_time.is_zero()).then(|| now + max_time);
        job.base().watch_run();
        let replaced = self.dispatched.insert(
            key_of(job),
            Dispatched {
                job: job.clone(),
                deadline,
                refreshed: now,
            },
        );
        if let Some(replaced) = replaced
            && !Arc::ptr_eq(&replaced.job, job)
        {
            replaced
                .job
                .add_error(&"lost the lock: the job was taken over");
            replaced.job.base().interrupt();
        }
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
            job.base().metadata().time_info.end = Some(crate::clock::now());
        }
        dispatched
    }

    /// Stops refreshing the lock of the job's attempt, without touching `job`; returns whether
    /// that attempt was tracked. If the copy tracked is another one than `job` (the job is
    /// being finished through a copy), the tracked copy's lock is gone: its run is interrupted.
    /// Queues that complete the job under their own locks use this.
    ///
    /// A copy whose lock was lost (interrupted: taken over, by this process too) finishes
    /// without touching the copy tracked now, which holds the lock; it was not tracked.
    pub fn forget(&self, job: &JobRef) -> bool {
        let key = key_of(job);
        if self.untrack(&key, job) {
            return true;
        }
        if job.base().was_interrupted() {
            return false;
        }
        let Some((_, tracked)) = self.dispatched.remove(&key) else {
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

    /// Starts refreshing locks every [`heartbeat_interval`](Self::heartbeat_interval), storing
    /// them in `store`. Restarts the heartbeat if it was running. The heartbeat ends when the
    /// dispatcher closes or `store` is dropped.
    pub fn start_heartbeat(self: &Arc<Self>, store: Weak<dyn LockStore>) {
        let token = CancellationToken::new();
        let dispatcher = Arc::downgrade(self);
        let task = tokio::spawn(heartbeat(dispatcher, store, token.clone()));
        if let Some((old, _)) = self.heartbeat.lock().replace((token, task)) {
            old.cancel();
        }
    }

    /// Refreshes the lock of every dispatched copy once and stores them all in one
    /// [`LockStore::save_locks`]. A copy whose save is refused (the store says the job is not
    /// found: another owner took it, or it was finished) has lost its lock: it is no longer
    /// refreshed, the reason is recorded on it, and its run is interrupted. A save failing
    /// otherwise (the store is unreachable, say) is tried again at the next refresh, until the
    /// lock would have expired. Returns how many copies were refreshed.
    pub async fn refresh_locks<S: LockStore + ?Sized>(&self, store: &S) -> usize {
        let now = Instant::now();
        let copies: Vec<(Key, Dispatched)> = self
            .dispatched
            .iter()
            .map(|entry| (entry.key().clone(), entry.value().clone()))
            .collect();
        let mut batch = Vec::with_capacity(copies.len());
        let mut marks = Vec::with_capacity(copies.len());
        // The last refresh of the batch's oldest lock.
        let mut oldest = now;
        // Copies whose locks lapsed already (their last saves failed): not sent.
        let mut lapsed = Vec::new();
        for (
            key,
            Dispatched {
                job,
                deadline,
                refreshed,
            },
        ) in copies
        {
            if deadline.is_some_and(|deadline| deadline <= now) {
                continue;
            }
            if refreshed + self.lock_timeout <= now {
                lapsed.push((key, job));
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
                let before = meta.status.lock_state();
                meta.status.in_progress = true;
                meta.status.completed = false;
                meta.status.owner = Some(self.owner.clone());
                meta.status.modification_time = Some(crate::clock::now());
                meta.status.modification_count += 1;
                before
            };
            oldest = oldest.min(refreshed);
            batch.push(job);
            marks.push((key, before));
        }
        for (key, job) in lapsed {
            if self.untrack(&key, &job) {
                job.add_error(&"lost the lock: it lapsed while its heartbeat failed");
                job.base().interrupt();
                tracing::warn!(
                    job_id = job.id(),
                    "lost the lock of a running job; its run is interrupted"
                );
            }
        }
        if batch.is_empty() {
            return 0;
        }
        // A save not answered by the time the oldest lock lapses is given up: the copies whose
        // locks lapsed are interrupted then, not once the store answers (a store that keeps
        // trying to reach its database may take long), so that a run never goes on once another
        // owner may take its job over. The others are refreshed at the next beat.
        let sent = Instant::now();
        let results =
            match tokio::time::timeout_at(oldest + self.lock_timeout, store.save_locks(&batch))
                .await
            {
                Ok(results) => results,
                Err(_) => batch
                    .iter()
                    .map(|_| {
                        Err(Error::Backend {
                            message: "the lock heartbeat got no answer before the lock expired"
                                .into(),
                            source: None,
                        })
                    })
                    .collect(),
            };
        debug_assert_eq!(results.len(), batch.len(), "one result per job");
        let mut refreshed = 0;
        for ((job, (key, before)), result) in batch.iter().zip(marks).zip(results) {
            match result {
                Ok(()) => {
                    refreshed += 1;
                    // The store's lock is at least as recent as the sending: counted from then.
                    if let Some(mut tracked) = self.dispatched.get_mut(&key)
                        && Arc::ptr_eq(&tracked.job, job)
                    {
                        tracked.refreshed = sent;
                    }
                }
                Err(error) => self.refresh_failed(&key, job, before, &error),
            }
        }
        refreshed
    }

    /// What follows a refresh whose save failed.
    fn refresh_failed(&self, key: &Key, job: &JobRef, before: LockState, error: &Error) {
        let lapsed = self
            .dispatched
            .get(key)
            .is_some_and(|tracked| tracked.refreshed.elapsed() >= self.lock_timeout);
        if !error.is_job_not_found() && !lapsed {
            // Not stored, but not refused either: the store still holds the previous lock, which
            // the next refresh extends. The copy's count goes back to match, unless it moved on
            // since the refresh marked it (it was finished, released or saved meanwhile): its
            // count is then that write's, and stays.
            let mut meta = job.base().metadata();
            if self
                .dispatched
                .get(key)
                .is_some_and(|tracked| Arc::ptr_eq(&tracked.job, job))
            {
                meta.status.restore_lock(before);
            }
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

async fn heartbeat(
    dispatcher: Weak<Dispatcher>,
    store: Weak<dyn LockStore>,
    token: CancellationToken,
) {
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
        let (Some(dispatcher), Some(store)) = (dispatcher.upgrade(), store.upgrade()) else {
            return;
        };
        dispatcher.refresh_locks(&*store).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use super::*;
    use crate::{Base, Job, JobContext, JobError};

    #[derive(Debug)]
    struct Quiet {
        base: Base,
    }

    #[async_trait]
    #[typetag::serde(name = "dispatcher-quiet")]
    impl Job for Quiet {
        fn base(&self) -> &Base {
            &self.base
        }
        async fn run(&self, _ctx: &JobContext) -> std::result::Result<(), JobError> {
            Ok(())
        }
    }

    impl serde::Serialize for Quiet {
        fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
            s.serialize_unit()
        }
    }

    impl<'de> serde::Deserialize<'de> for Quiet {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
            <()>::deserialize(d)?;
            Ok(Quiet { base: Base::new() })
        }
    }

    /// Records each batch; refuses the IDs in `refuse`, fails transiently the IDs in `fail`.
    #[derive(Default)]
    struct Batches {
        calls: StdMutex<Vec<Vec<(String, u64)>>>,
        refuse: Vec<&'static str>,
        fail: Vec<&'static str>,
    }

    #[async_trait]
    impl LockStore for Batches {
        async fn save_locks(&self, jobs: &[JobRef]) -> Vec<Result<()>> {
            self.calls.lock().unwrap().push(
                jobs.iter()
                    .map(|job| (job.id().to_owned(), job.status().modification_count))
                    .collect(),
            );
            jobs.iter()
                .map(|job| {
                    if self.refuse.contains(&job.id()) {
                        Err(Error::job_not_found(job.id()))
                    } else if self.fail.contains(&job.id()) {
                        Err(Error::invalid("unreachable"))
                    } else {
                        Ok(())
                    }
                })
                .collect()
        }
    }

    fn job(id: &str) -> JobRef {
        Arc::new(Quiet {
            base: Base::with_id(id),
        })
    }

    #[tokio::test]
    async fn one_heartbeat_stores_every_running_job_in_one_batch() {
        let dispatcher = Dispatcher::new(Arc::from("me"), Duration::from_secs(60));
        let jobs: Vec<JobRef> = ["a", "b", "c"].into_iter().map(job).collect();
        for job in &jobs {
            dispatcher.dispatch(job).unwrap();
        }
        let store = Batches {
            refuse: vec!["b"],
            fail: vec!["c"],
            ..Batches::default()
        };

        assert_eq!(dispatcher.refresh_locks(&store).await, 1);

        let mut batch = store.calls.lock().unwrap().pop().expect("one call");
        batch.sort();
        // Dispatch advanced each count to 1; the heartbeat to 2, in memory before the write.
        assert_eq!(
            batch,
            [("a".into(), 2), ("b".into(), 2), ("c".into(), 2)],
            "every job in one batch"
        );
        assert!(store.calls.lock().unwrap().is_empty(), "one call only");
        // The refused job lost its lock: untracked, interrupted, the reason recorded.
        assert!(!dispatcher.is_dispatched("b", 0));
        assert!(jobs[1].error().unwrap().message().contains("lost the lock"));
        // The transient failure keeps the job tracked and rolls its count back.
        assert!(dispatcher.is_dispatched("c", 0));
        assert_eq!(jobs[2].status().modification_count, 1);
        assert_eq!(jobs[0].status().modification_count, 2);
    }

    /// Holds each save until released, then fails it as an unreachable store would.
    #[derive(Default)]
    struct Gate {
        entered: tokio::sync::Notify,
        release: tokio::sync::Notify,
    }

    #[async_trait]
    impl LockStore for Gate {
        async fn save_locks(&self, jobs: &[JobRef]) -> Vec<Result<()>> {
            self.entered.notify_one();
            self.release.notified().await;
            jobs.iter()
                .map(|_| Err(Error::invalid("unreachable")))
                .collect()
        }
    }

    /// Never answers a save (a store that keeps trying to reach its database).
    #[derive(Default)]
    struct Silent {
        entered: tokio::sync::Notify,
    }

    #[async_trait]
    impl LockStore for Silent {
        async fn save_locks(&self, _jobs: &[JobRef]) -> Vec<Result<()>> {
            self.entered.notify_one();
            std::future::pending().await
        }
    }

    /// A heartbeat whose save gets no answer interrupts the run once its lock lapses, while
    /// the save is still pending: another owner may take the job over from then on.
    #[tokio::test(start_paused = true)]
    async fn a_heartbeat_with_no_answer_interrupts_the_run_when_its_lock_lapses() {
        let dispatcher = Arc::new(Dispatcher::new(Arc::from("me"), Duration::from_secs(60)));
        let running = job("a");
        dispatcher.dispatch(&running).unwrap();
        let run = running
            .base()
            .run_token(&CancellationToken::new())
            .expect("watched");
        let store = Arc::new(Silent::default());
        let refresh = tokio::spawn({
            let (dispatcher, store) = (dispatcher.clone(), store.clone());
            async move { dispatcher.refresh_locks(&*store).await }
        });
        store.entered.notified().await;
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(!run.is_cancelled(), "the lock holds for its timeout");
        let refreshed = tokio::time::timeout(Duration::from_secs(3600), refresh)
            .await
            .expect("the heartbeat gives up when the lock lapses")
            .unwrap();
        assert_eq!(refreshed, 0);
        assert!(run.is_cancelled(), "the run is interrupted");
        assert!(!dispatcher.is_dispatched("a", 0));
        assert!(running.error().unwrap().message().contains("lost the lock"));
    }

    /// A copy whose lock lapsed while its heartbeats failed is interrupted without being sent;
    /// the fresh copies beside it are refreshed as usual.
    #[tokio::test(start_paused = true)]
    async fn a_lapsed_copy_is_interrupted_and_the_others_refreshed() {
        let dispatcher = Dispatcher::new(Arc::from("me"), Duration::from_secs(60));
        let stale = job("stale");
        dispatcher.dispatch(&stale).unwrap();
        let failing = Batches {
            fail: vec!["stale"],
            ..Batches::default()
        };
        assert_eq!(dispatcher.refresh_locks(&failing).await, 0);
        assert!(dispatcher.is_dispatched("stale", 0), "a transient failure");
        tokio::time::advance(Duration::from_secs(61)).await;
        let fresh = job("fresh");
        dispatcher.dispatch(&fresh).unwrap();
        let store = Batches::default();
        assert_eq!(dispatcher.refresh_locks(&store).await, 1, "the fresh copy");
        let sent: Vec<String> = store
            .calls
            .lock()
            .unwrap()
            .concat()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(sent, ["fresh"]);
        assert!(!dispatcher.is_dispatched("stale", 0));
        assert!(stale.error().unwrap().message().contains("lost the lock"));
    }

    /// A heartbeat that fails after the job was finished meanwhile leaves the count the
    /// finish wrote: only a copy the heartbeat still refreshes gets its count taken back.
    #[tokio::test]
    async fn a_failed_heartbeat_does_not_take_back_a_finished_jobs_count() {
        let dispatcher = Arc::new(Dispatcher::new(Arc::from("me"), Duration::from_secs(60)));
        let finished = job("a");
        dispatcher.dispatch(&finished).unwrap();
        let store = Arc::new(Gate::default());
        let refresh = tokio::spawn({
            let (dispatcher, store) = (dispatcher.clone(), store.clone());
            async move { dispatcher.refresh_locks(&*store).await }
        });
        // The heartbeat marked the copy (count 1 → 2) and its save is under way ...
        store.entered.notified().await;
        assert_eq!(finished.status().modification_count, 2);
        // ... when the job finishes: untracked, its count moved on by the completion.
        assert!(dispatcher.forget(&finished));
        finished.base().metadata().status.modification_count += 1;
        store.release.notify_one();
        assert_eq!(refresh.await.unwrap(), 0);
        assert_eq!(
            finished.status().modification_count,
            3,
            "the completion's count stays"
        );
    }

    /// A process that claims again a job whose lock expired (before its heartbeat noticed)
    /// tracks the new copy: the old copy's run is interrupted, not left running unwatched.
    #[tokio::test]
    async fn tracking_a_new_copy_interrupts_the_copy_it_replaces() {
        let dispatcher = Dispatcher::new(Arc::from("me"), Duration::from_secs(60));
        let parent = CancellationToken::new();
        let old = job("a");
        dispatcher.track(&old, Duration::ZERO);
        let old_run = old.base().run_token(&parent).expect("watched");
        // Tracking the same copy again is no take-over.
        dispatcher.track(&old, Duration::ZERO);
        assert!(!old_run.is_cancelled());
        assert!(old.error().is_none());

        let new = job("a");
        dispatcher.track(&new, Duration::ZERO);
        let new_run = new.base().run_token(&parent).expect("watched");
        assert!(old_run.is_cancelled(), "the replaced copy's run is stopped");
        assert!(
            old.error().unwrap().message().contains("taken over"),
            "{:?}",
            old.error()
        );
        assert!(!new_run.is_cancelled());
        assert!(new.error().is_none());
        assert!(dispatcher.is_dispatched("a", 0));

        // The replaced copy's run ends and its worker finishes it: the copy tracked now is
        // the one holding the lock, and is left alone.
        old.base().end_run();
        assert!(
            !dispatcher.forget(&old),
            "the replaced copy was no longer tracked"
        );
        assert!(!new_run.is_cancelled(), "the new copy runs on");
        assert!(new.error().is_none(), "{:?}", new.error());
        assert!(dispatcher.is_dispatched("a", 0));
        // Finishing the new copy itself forgets it.
        assert!(dispatcher.forget(&new));
        assert!(!dispatcher.is_dispatched("a", 0));
    }
}

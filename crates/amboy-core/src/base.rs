//! [`Base`]: the metadata every job embeds (amboy's `job.Base`).

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use amboy_dependency::{Always, Manager};
use chrono::{DateTime, Utc};
use parking_lot::{Mutex, MutexGuard};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio_util::sync::CancellationToken;

use crate::{
    Error, JobError, JobId, JobRetryInfo, JobRetryOptions, JobStatusInfo, JobTimeInfo, JobType,
};

/// The metadata every job embeds: identity, status, timing, retry information, scopes,
/// priority and dependency, with amboy's rules for changing them.
///
/// A job is shared between its queue and the worker running it, so `Base` guards its state
/// with a lock and every method takes `&self`; the ID alone is fixed once the job is shared.
/// Builder methods (`with_…`) configure a job before it is enqueued.
///
/// Serialized, a `Base` carries the ID (as `name`), the job's type (as `job_type`, once known:
/// see [`record_job_type`](Base::record_job_type)) and the required scopes (as
/// `required_scopes`), as amboy's does: a queue stores the rest beside the job.
///
/// ```
/// use std::time::Duration;
/// use amboy_core::Base;
///
/// let base = Base::with_id("resize-42")
///     .with_scopes(["image-42"])
///     .with_max_time(Duration::from_secs(30))
///     .with_retryable(true);
/// assert_eq!(base.id(), "resize-42");
/// assert_eq!(base.scopes(), ["image-42"]);
/// assert!(base.retry_info().retryable);
/// ```
pub struct Base {
    id: JobId,
    meta: Mutex<Metadata>,
    /// The `job_type` of the serialized form: read when decoded, or recorded by the encoder.
    job_type: OnceLock<JobType>,
}

/// The mutable part of a job's [`Base`], read and written under its lock.
#[derive(Debug, Clone, Default)]
pub struct Metadata {
    /// The job's status.
    pub status: JobStatusInfo,
    /// The job's timing.
    pub time_info: JobTimeInfo,
    /// The job's retry information.
    pub retry_info: JobRetryInfo,
    /// The scopes the job holds while it runs (amboy's `RequiredScopes`).
    pub scopes: Vec<String>,
    /// The scopes to take already when the job is enqueued.
    pub enqueue_scopes: Vec<String>,
    /// Take every scope when the job is enqueued.
    pub enqueue_all_scopes: bool,
    /// Higher runs first on queues that order by priority.
    pub priority: i32,
    /// The dependency manager; `None` means [`Always`].
    pub dependency: Option<Arc<dyn Manager>>,
    /// What the queue running this very instance knows of it; a copy starts without.
    instance: Instance,
}

/// What belongs to one instance of a job rather than to the job: which queue dispatched it and
/// how to stop its run. A copy (a `clone`, or a job decoded from its stored form) is another
/// instance and starts with none of it, so that a queue can tell the job it dispatched from a
/// copy that carries the same status.
#[derive(Debug, Default)]
struct Instance {
    /// The queue that dispatched this instance (see [`Metadata::claim`]); 0 for none.
    claim: u64,
    /// Where the queue that dispatched this instance stored it (see [`Metadata::locator`]).
    locator: u64,
    /// The queue watches this run's lock: losing it interrupts the run.
    watched: bool,
    /// The lock was lost before the run attached its token.
    interrupted: bool,
    /// The running job's token, attached by the runner.
    token: Option<CancellationToken>,
}

impl Clone for Instance {
    /// A copy is another instance: nothing carries over.
    fn clone(&self) -> Self {
        Instance::default()
    }
}

impl Metadata {
    /// Turns this finished attempt's metadata into attempt number `attempt`, not yet run: see
    /// [`prepare_attempt`](crate::prepare_attempt).
    pub fn prepare_attempt(&mut self, attempt: u32, now: DateTime<Utc>) {
        crate::prepare_attempt(
            &mut self.status,
            &mut self.time_info,
            &mut self.retry_info,
            attempt,
            now,
        );
    }

    /// The scopes taken at enqueue: all scopes if `enqueue_all_scopes`, else the scopes that
    /// are also enqueue scopes (amboy's `EnqueueScopes`).
    pub fn effective_enqueue_scopes(&self) -> Vec<String> {
        if self.enqueue_all_scopes {
            return self.scopes.clone();
        }
        self.scopes
            .iter()
            .filter(|scope| self.enqueue_scopes.contains(scope))
            .cloned()
            .collect()
    }

    /// Whether a queue may dispatch the job now (amboy's `isDispatchable`): a job in progress
    /// whose lock expired may be taken over; otherwise the job must be neither stale
    /// (`dispatch_by` passed), nor waiting (`wait_until` ahead), nor completed, nor in progress.
    pub fn is_dispatchable(&self, lock_timeout: Duration, now: DateTime<Utc>) -> bool {
        let status = &self.status;
        if status.in_progress
            && lock_remaining(status.modification_time, now, lock_timeout).is_none()
        {
            return true;
        }
        !self.time_info.is_stale_at(now)
            && self.time_info.is_dispatchable_at(now)
            && !status.completed
            && !status.in_progress
            && !status.expired
    }

    /// Records an error.
    pub fn add_error(&mut self, message: String) {
        self.status.errors.push(message);
        self.status.error_count = self.status.errors.len();
    }

    /// The claim a queue put on this very instance of the job when it dispatched it, 0 if none.
    /// A copy of the job (a clone, a decoded stored form) carries no claim even when its status
    /// says it is in progress, so a queue holding the jobs themselves compares the claim with
    /// its own to know that a job handed back to it is the one it dispatched.
    pub fn claim(&self) -> u64 {
        self.instance.claim
    }

    /// Puts a queue's claim on this instance (0 removes it); queues do this as they dispatch
    /// the job, under this lock.
    pub fn set_claim(&mut self, claim: u64) {
        self.instance.claim = claim;
    }

    /// Where the queue that dispatched this instance last saw it stored, in the queue's own
    /// terms (a database row's physical address, say), or 0: a hint that spares the queue a
    /// lookup when it writes the job back, which the queue checks before it trusts it. Like
    /// the claim, a copy of the job carries none.
    pub fn locator(&self) -> u64 {
        self.instance.locator
    }

    /// Records where the job is stored (0 forgets it); see [`locator`](Self::locator).
    pub fn set_locator(&mut self, locator: u64) {
        self.instance.locator = locator;
    }

    /// The token for a run of this instance under the runner's `parent` token, if its queue
    /// watches the run ([`Base::watch_run`]): a child of `parent`, attached to the job so that
    /// [`Base::interrupt`] cancels it (already cancelled if the interruption came first).
    /// `None` for unwatched runs, which use the runner's token.
    pub fn run_token(&mut self, parent: &CancellationToken) -> Option<CancellationToken> {
        let instance = &mut self.instance;
        if !instance.watched {
            return None;
        }
        let token = parent.child_token();
        if instance.interrupted {
            token.cancel();
        }
        instance.token = Some(token.clone());
        Some(token)
    }
}

impl Base {
    /// Metadata for a new job with a fresh unique ID: a time-ordered UUID (version 7, its first
    /// 48 bits the time in milliseconds, the rest random), so that the IDs of jobs made close
    /// in time are close in a database's index (the PostgreSQL queue's primary key takes them
    /// about 15 % faster than random UUIDs).
    pub fn new() -> Self {
        let mut buf = uuid::Uuid::encode_buffer();
        let id = uuid::Uuid::new_v7(uuid::Timestamp::now(uuid::NoContext));
        Base::with_id(id.hyphenated().encode_lower(&mut buf))
    }

    /// Metadata for a new job with the given ID.
    pub fn with_id(id: impl AsRef<str>) -> Self {
        Base {
            id: JobId::new(id.as_ref()),
            meta: Mutex::new(Metadata::default()),
            job_type: OnceLock::new(),
        }
    }

    /// The job's ID.
    pub fn id(&self) -> &str {
        self.id.as_str()
    }

    /// The job's ID as queues key it.
    pub fn job_id(&self) -> &JobId {
        &self.id
    }

    /// Changes the ID; only possible while the job is not shared.
    pub fn set_id(&mut self, id: impl AsRef<str>) {
        self.id = JobId::new(id.as_ref());
    }

    /// The job type the serialized form names (amboy's `job_base.job_type`), if known: the one
    /// read when this `Base` was decoded, else the one [recorded](Self::record_job_type).
    pub fn serialized_job_type(&self) -> Option<&JobType> {
        self.job_type.get()
    }

    /// Records the type of the job embedding this `Base`, for the serialized form to name it,
    /// unless a type is known already (read when decoded, or recorded before). A `Base` does
    /// not know its job's type; the registry's encoder records `job.job_type()` before
    /// encoding the job's fields, so that stored jobs carry `job_type` as amboy's do.
    pub fn record_job_type(&self, job_type: JobType) {
        let _ = self.job_type.get_or_init(|| job_type);
    }

    /// Locks the metadata for reading or changing several fields at once. Do not hold the
    /// guard across an `.await` (it is not `Send`, so the compiler refuses).
    pub fn metadata(&self) -> MutexGuard<'_, Metadata> {
        self.meta.lock()
    }

    /// The job's status.
    pub fn status(&self) -> JobStatusInfo {
        self.meta.lock().status.clone()
    }

    /// Replaces the job's status.
    pub fn set_status(&self, status: JobStatusInfo) {
        self.meta.lock().status = status;
    }

    /// The job's timing.
    pub fn time_info(&self) -> JobTimeInfo {
        self.meta.lock().time_info.clone()
    }

    /// Overwrites the timing fields that are set in `update`.
    pub fn update_time_info(&self, update: &JobTimeInfo) {
        self.meta.lock().time_info.update(update);
    }

    /// Replaces the job's timing, unset fields included.
    pub fn set_time_info(&self, time_info: JobTimeInfo) {
        self.meta.lock().time_info = time_info;
    }

    /// The job's retry information.
    pub fn retry_info(&self) -> JobRetryInfo {
        self.meta.lock().retry_info.clone()
    }

    /// Overwrites the retry fields that are set in `options`.
    pub fn update_retry_info(&self, options: &JobRetryOptions) {
        self.meta.lock().retry_info.update(options);
    }

    /// Records an error.
    pub fn add_error(&self, error: impl fmt::Display) {
        self.meta.lock().add_error(error.to_string());
    }

    /// Records an error and asks for the job to be retried.
    pub fn add_retryable_error(&self, error: impl fmt::Display) {
        let mut meta = self.meta.lock();
        meta.add_error(error.to_string());
        meta.retry_info.needs_retry = true;
    }

    /// Records what a run returned: nothing for `Ok`, the error for `Err` (asking for a retry
    /// when the error is retryable).
    pub fn record(&self, result: Result<(), JobError>) {
        if let Err(error) = result {
            if error.is_retryable() {
                self.add_retryable_error(error.message());
            } else {
                self.add_error(error.message());
            }
        }
    }

    /// Whether the job recorded an error.
    pub fn has_errors(&self) -> bool {
        !self.meta.lock().status.errors.is_empty()
    }

    /// The job's errors joined by newlines, if it recorded any.
    pub fn error(&self) -> Option<JobError> {
        let meta = self.meta.lock();
        if meta.status.errors.is_empty() {
            None
        } else {
            Some(JobError::new(meta.status.errors.join("\n")))
        }
    }

    /// Whether this attempt is the job's last: it is not retryable, has no attempts left, or
    /// does not ask to retry.
    pub fn is_last_attempt(&self) -> bool {
        let retry = &self.meta.lock().retry_info;
        !retry.retryable || retry.remaining_attempts() == 0 || !retry.should_retry()
    }

    /// Takes the job's lock for `owner` (normally a queue's ID), refreshing it if `owner`
    /// holds it already. Fails while another owner holds an unexpired lock on a job that is in
    /// progress or waiting to retry. Does not mark the job in progress: dispatching does.
    pub fn lock(&self, owner: &Arc<str>, lock_timeout: Duration) -> Result<(), Error> {
        let now = crate::clock::now();
        let mut meta = self.meta.lock();
        let status = &meta.status;
        if status.owner.as_deref() != Some(&**owner)
            && (status.in_progress || (status.completed && meta.retry_info.needs_retry))
            && let Some(remaining) = lock_remaining(status.modification_time, now, lock_timeout)
        {
            return Err(Error::Locked {
                id: self.id.to_string(),
                requester: owner.to_string(),
                owner: status.owner.as_deref().unwrap_or_default().to_owned(),
                remaining,
            });
        }
        let status = &mut meta.status;
        status.owner = Some(owner.clone());
        status.modification_time = Some(now);
        status.modification_count += 1;
        Ok(())
    }

    /// Releases the job's lock and marks it not in progress, unless another owner holds an
    /// unexpired lock on it (then nothing changes).
    pub fn unlock(&self, owner: &str, lock_timeout: Duration) {
        let now = crate::clock::now();
        let mut meta = self.meta.lock();
        let status = &mut meta.status;
        if status.in_progress
            && status.owner.as_deref() != Some(owner)
            && lock_remaining(status.modification_time, now, lock_timeout).is_some()
        {
            return;
        }
        status.in_progress = false;
        status.owner = None;
        status.modification_time = Some(now);
        status.modification_count += 1;
    }

    /// Lets the queue that dispatched this instance stop its run: the runner's token for the run
    /// is then a token of the job's own (see [`run_token`](Self::run_token)), which
    /// [`interrupt`](Self::interrupt) cancels. Queues that store copies and keep the locks of
    /// the copies they dispatched alive call this as they dispatch.
    pub fn watch_run(&self) {
        let mut meta = self.meta.lock();
        meta.instance.watched = true;
        meta.instance.interrupted = false;
    }

    /// Stops the run of this instance because its queue lost the job's lock: cancels the run's
    /// token, or, if the run has not started, makes it start cancelled. Returns whether the run
    /// was watched (see [`watch_run`](Self::watch_run)); an unwatched run is not stopped.
    pub fn interrupt(&self) -> bool {
        let mut meta = self.meta.lock();
        let instance = &mut meta.instance;
        if !instance.watched {
            return false;
        }
        instance.interrupted = true;
        if let Some(token) = &instance.token {
            token.cancel();
        }
        true
    }

    /// The token for a run of this instance under the runner's `parent` token, if its queue
    /// watches the run: see [`Metadata::run_token`].
    pub fn run_token(&self, parent: &CancellationToken) -> Option<CancellationToken> {
        self.meta.lock().run_token(parent)
    }

    /// Whether this instance's run was interrupted because its queue lost the job's lock
    /// ([`interrupt`](Self::interrupt)); it stays so once the run is over.
    pub fn was_interrupted(&self) -> bool {
        self.meta.lock().instance.interrupted
    }

    /// Ends the watch of the run (the run is over): a later interruption stops nothing.
    pub fn end_run(&self) {
        let mut meta = self.meta.lock();
        meta.instance.watched = false;
        meta.instance.token = None;
    }

    /// Marks the job finished.
    pub fn mark_complete(&self) {
        let mut meta = self.meta.lock();
        meta.status.in_progress = false;
        meta.status.completed = true;
    }

    /// The scopes the job holds while it runs.
    pub fn scopes(&self) -> Vec<String> {
        self.meta.lock().scopes.clone()
    }

    /// Sets the scopes the job holds while it runs; do this before enqueueing.
    pub fn set_scopes(&self, scopes: Vec<String>) {
        self.meta.lock().scopes = scopes;
    }

    /// The scopes the job takes already when enqueued.
    pub fn enqueue_scopes(&self) -> Vec<String> {
        self.meta.lock().effective_enqueue_scopes()
    }

    /// Chooses which of the job's scopes are taken at enqueue.
    pub fn set_enqueue_scopes(&self, scopes: Vec<String>) {
        self.meta.lock().enqueue_scopes = scopes;
    }

    /// Whether all of the job's scopes are taken at enqueue.
    pub fn enqueue_all_scopes(&self) -> bool {
        self.meta.lock().enqueue_all_scopes
    }

    /// Takes all of the job's scopes at enqueue (or not).
    pub fn set_enqueue_all_scopes(&self, all: bool) {
        self.meta.lock().enqueue_all_scopes = all;
    }

    /// The job's priority: higher runs first on priority queues.
    pub fn priority(&self) -> i32 {
        self.meta.lock().priority
    }

    /// Sets the job's priority.
    pub fn set_priority(&self, priority: i32) {
        self.meta.lock().priority = priority;
    }

    /// The job's dependency manager ([`Always`] unless one was set).
    pub fn dependency(&self) -> Arc<dyn Manager> {
        self.meta
            .lock()
            .dependency
            .get_or_insert_with(|| Arc::new(Always::new()))
            .clone()
    }

    /// Sets the job's dependency manager.
    pub fn set_dependency(&self, dependency: Arc<dyn Manager>) {
        self.meta.lock().dependency = Some(dependency);
    }

    /// With these scopes, held while the job runs.
    pub fn with_scopes<I: IntoIterator<Item = S>, S: Into<String>>(self, scopes: I) -> Self {
        self.set_scopes(scopes.into_iter().map(Into::into).collect());
        self
    }

    /// With these of its scopes taken already at enqueue.
    pub fn with_enqueue_scopes<I: IntoIterator<Item = S>, S: Into<String>>(
        self,
        scopes: I,
    ) -> Self {
        self.set_enqueue_scopes(scopes.into_iter().map(Into::into).collect());
        self
    }

    /// With all of its scopes taken at enqueue.
    pub fn with_enqueue_all_scopes(self) -> Self {
        self.set_enqueue_all_scopes(true);
        self
    }

    /// Not dispatched before `time`.
    pub fn with_wait_until(self, time: DateTime<Utc>) -> Self {
        self.meta.lock().time_info.wait_until = Some(time);
        self
    }

    /// Dropped unless dispatched by `time`.
    pub fn with_dispatch_by(self, time: DateTime<Utc>) -> Self {
        self.meta.lock().time_info.dispatch_by = Some(time);
        self
    }

    /// Allowed to run for at most `max_time`.
    pub fn with_max_time(self, max_time: Duration) -> Self {
        self.meta.lock().time_info.max_time = max_time;
        self
    }

    /// Opted in to (or out of) retries.
    pub fn with_retryable(self, retryable: bool) -> Self {
        self.meta.lock().retry_info.retryable = retryable;
        self
    }

    /// With at most `max_attempts` attempts when retryable.
    pub fn with_max_attempts(self, max_attempts: u32) -> Self {
        self.meta.lock().retry_info.max_attempts = max_attempts;
        self
    }

    /// With this priority.
    pub fn with_priority(self, priority: i32) -> Self {
        self.set_priority(priority);
        self
    }

    /// With this dependency manager.
    pub fn with_dependency(self, dependency: impl Manager + 'static) -> Self {
        self.set_dependency(Arc::new(dependency));
        self
    }
}

/// How long an unexpired lock has left, or `None` if it expired (or was never taken).
fn lock_remaining(
    modified: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    lock_timeout: Duration,
) -> Option<Duration> {
    let age = (now - modified?).to_std().unwrap_or_default();
    lock_timeout.checked_sub(age).filter(|left| !left.is_zero())
}

impl Default for Base {
    fn default() -> Self {
        Base::new()
    }
}

impl Clone for Base {
    /// A copy with the same ID and metadata; the dependency manager is shared.
    fn clone(&self) -> Self {
        Base {
            id: self.id.clone(),
            meta: Mutex::new(self.meta.lock().clone()),
            job_type: self.job_type.clone(),
        }
    }
}

impl fmt::Debug for Base {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let meta = self.meta.lock();
        f.debug_struct("Base")
            .field("id", &self.id)
            .field("status", &meta.status)
            .field("time_info", &meta.time_info)
            .field("retry_info", &meta.retry_info)
            .field("scopes", &meta.scopes)
            .finish_non_exhaustive()
    }
}

/// amboy's `job.Base` fields, in its order.
#[derive(Serialize)]
struct BaseRef<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    job_type: Option<&'a JobType>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    required_scopes: &'a [String],
}

#[derive(Deserialize)]
struct BaseOwned {
    name: String,
    #[serde(default)]
    job_type: Option<JobType>,
    #[serde(default)]
    required_scopes: Option<Vec<String>>,
}

impl Serialize for Base {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let meta = self.meta.lock();
        BaseRef {
            name: self.id.as_str(),
            job_type: self.job_type.get(),
            required_scopes: &meta.scopes,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Base {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let owned = BaseOwned::deserialize(deserializer)?;
        let base = Base::with_id(owned.name);
        base.set_scopes(owned.required_scopes.unwrap_or_default());
        // A Go job that never set its type writes `{"name": "", "version": 0}`: no type.
        if let Some(job_type) = owned.job_type.filter(|job_type| !job_type.name.is_empty()) {
            base.record_job_type(job_type);
        }
        Ok(base)
    }
}

#[cfg(test)]
mod tests {
    use amboy_dependency::{MockDependency, State};
    use chrono::TimeDelta;

    use super::*;

    fn owner(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    #[test]
    fn new_ids_are_unique() {
        let ids: std::collections::HashSet<String> =
            (0..1000).map(|_| Base::new().id().to_owned()).collect();
        assert_eq!(ids.len(), 1000);
    }

    #[test]
    fn new_ids_are_time_ordered_uuids() {
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let id = uuid::Uuid::parse_str(Base::new().id()).expect("a UUID");
        assert_eq!(id.get_version_num(), 7);
        let (secs, nanos) = id.get_timestamp().expect("a time").to_unix();
        let millis = secs * 1000 + u64::from(nanos) / 1_000_000;
        assert!(
            millis >= before && millis < before + 60_000,
            "{millis} vs {before}"
        );
    }

    #[test]
    fn errors_accumulate_and_join() {
        let base = Base::with_id("j");
        assert!(!base.has_errors());
        assert!(base.error().is_none());
        base.add_error("one");
        base.add_error(Error::invalid("two"));
        assert!(base.has_errors());
        assert_eq!(base.status().error_count, 2);
        assert_eq!(base.error().unwrap().message(), "one\ninvalid: two");
        assert!(!base.retry_info().needs_retry);
    }

    #[test]
    fn retryable_errors_ask_for_a_retry() {
        let base = Base::with_id("j");
        base.add_retryable_error("try again");
        assert!(base.retry_info().needs_retry);
        assert_eq!(base.status().errors, ["try again"]);
    }

    #[test]
    fn record_maps_results() {
        let base = Base::with_id("j");
        base.record(Ok(()));
        assert!(!base.has_errors());
        base.record(Err(JobError::new("plain")));
        assert!(!base.retry_info().needs_retry);
        base.record(Err(JobError::retryable("again")));
        assert!(base.retry_info().needs_retry);
        assert_eq!(base.status().error_count, 2);
    }

    #[test]
    fn is_last_attempt_matrix() {
        // (retryable, needs_retry, current_attempt, max_attempts) -> last attempt
        let cases = [
            ((false, false, 0, 0), true),
            ((false, true, 0, 0), true),
            ((true, false, 0, 0), true),
            ((true, true, 0, 0), false),
            ((true, true, 8, 0), false),
            ((true, true, 9, 0), true),
            ((true, true, 1, 3), false),
            ((true, true, 2, 3), true),
            ((true, true, 5, 3), true),
        ];
        for ((retryable, needs_retry, current_attempt, max_attempts), last) in cases {
            let base = Base::with_id("j");
            base.update_retry_info(&JobRetryOptions {
                retryable: Some(retryable),
                needs_retry: Some(needs_retry),
                current_attempt: Some(current_attempt),
                max_attempts: Some(max_attempts),
                ..Default::default()
            });
            assert_eq!(
                base.is_last_attempt(),
                last,
                "retryable={retryable} needs_retry={needs_retry} attempt={current_attempt}/{max_attempts}"
            );
        }
    }

    #[test]
    fn lock_sets_owner_time_and_count() {
        let base = Base::with_id("j");
        base.lock(&owner("q1"), Duration::from_secs(60)).unwrap();
        let status = base.status();
        assert_eq!(status.owner.as_deref(), Some("q1"));
        assert_eq!(status.modification_count, 1);
        assert!(status.modification_time.is_some());
        assert!(
            !status.in_progress,
            "lock does not mark the job in progress"
        );
        base.lock(&owner("q1"), Duration::from_secs(60)).unwrap();
        assert_eq!(base.status().modification_count, 2);
    }

    #[test]
    fn lock_refuses_other_owner_while_in_progress_and_fresh() {
        let base = Base::with_id("j");
        base.lock(&owner("q1"), Duration::from_secs(60)).unwrap();
        base.metadata().status.in_progress = true;
        let err = base
            .lock(&owner("q2"), Duration::from_secs(60))
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot lock job 'j' for 'q2': locked by 'q1'"),
            "{err}"
        );
        assert_eq!(base.status().modification_count, 1);
        // Once the lock is older than the timeout anyone may take it.
        base.metadata().status.modification_time = Some(Utc::now() - TimeDelta::seconds(120));
        base.lock(&owner("q2"), Duration::from_secs(60)).unwrap();
        assert_eq!(base.status().owner.as_deref(), Some("q2"));
    }

    #[test]
    fn lock_refuses_other_owner_while_retrying() {
        let base = Base::with_id("j");
        base.lock(&owner("q1"), Duration::from_secs(60)).unwrap();
        {
            let mut meta = base.metadata();
            meta.status.completed = true;
            meta.retry_info.needs_retry = true;
        }
        assert!(base.lock(&owner("q2"), Duration::from_secs(60)).is_err());
        base.metadata().retry_info.needs_retry = false;
        base.lock(&owner("q2"), Duration::from_secs(60)).unwrap();
    }

    #[test]
    fn lock_of_pending_job_by_other_owner_is_allowed() {
        let base = Base::with_id("j");
        base.lock(&owner("q1"), Duration::from_secs(60)).unwrap();
        base.lock(&owner("q2"), Duration::from_secs(60)).unwrap();
        assert_eq!(base.status().owner.as_deref(), Some("q2"));
    }

    #[test]
    fn unlock_rules() {
        let base = Base::with_id("j");
        base.lock(&owner("q1"), Duration::from_secs(60)).unwrap();
        base.metadata().status.in_progress = true;
        base.unlock("q2", Duration::from_secs(60));
        assert!(
            base.status().in_progress,
            "another owner cannot unlock a fresh lock"
        );
        base.unlock("q1", Duration::from_secs(60));
        let status = base.status();
        assert!(!status.in_progress);
        assert_eq!(status.owner, None);
        assert_eq!(status.modification_count, 2);
    }

    #[test]
    fn update_and_set_time_info() {
        let base = Base::with_id("j");
        let now = Utc::now();
        base.update_time_info(&JobTimeInfo {
            created: Some(now),
            max_time: Duration::from_secs(1),
            ..Default::default()
        });
        base.update_time_info(&JobTimeInfo {
            start: Some(now),
            ..Default::default()
        });
        let info = base.time_info();
        assert_eq!(
            (info.created, info.start, info.max_time),
            (Some(now), Some(now), Duration::from_secs(1))
        );
        base.set_time_info(JobTimeInfo {
            end: Some(now),
            ..Default::default()
        });
        assert_eq!(
            base.time_info(),
            JobTimeInfo {
                end: Some(now),
                ..Default::default()
            }
        );
    }

    #[test]
    fn enqueue_scopes_are_the_intersection() {
        let base = Base::with_id("j").with_scopes(["a", "b", "c"]);
        assert!(base.enqueue_scopes().is_empty());
        base.set_enqueue_scopes(vec!["c".into(), "a".into(), "z".into()]);
        assert_eq!(base.enqueue_scopes(), ["a", "c"]);
        base.set_enqueue_all_scopes(true);
        assert!(base.enqueue_all_scopes());
        assert_eq!(base.enqueue_scopes(), ["a", "b", "c"]);
        base.set_scopes(vec![]);
        assert!(base.enqueue_scopes().is_empty());
    }

    #[test]
    fn dependency_defaults_to_always_and_is_kept() {
        let base = Base::with_id("j");
        assert_eq!(base.dependency().manager_type().name, "always");
        base.dependency().add_edge("other").unwrap();
        assert_eq!(
            base.dependency().edges(),
            ["other"],
            "the default manager is stored"
        );
        base.set_dependency(Arc::new(MockDependency::new(State::Blocked)));
        assert_eq!(base.dependency().state(), State::Blocked);
    }

    #[test]
    fn serializes_only_id_job_type_and_required_scopes() {
        let base = Base::with_id("j1").with_scopes(["s"]).with_retryable(true);
        base.add_error("kept out");
        let json = serde_json::to_value(&base).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"name": "j1", "required_scopes": ["s"]}),
            "no job type until one is known"
        );
        base.record_job_type(JobType::new("x", 2));
        base.record_job_type(JobType::new("y", 3));
        let json = serde_json::to_value(&base).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "name": "j1", "job_type": {"name": "x", "version": 2}, "required_scopes": ["s"]
            }),
            "the first type recorded stays"
        );
        let back: Base = serde_json::from_value(json).unwrap();
        assert_eq!(back.id(), "j1");
        assert_eq!(back.scopes(), ["s"]);
        assert_eq!(back.serialized_job_type(), Some(&JobType::new("x", 2)));
        assert!(!back.has_errors());
        assert_eq!(
            back.clone().serialized_job_type(),
            Some(&JobType::new("x", 2))
        );
        let bare: Base = serde_json::from_str(
            r#"{"name": "j2", "job_type": {"name": "x", "version": 0}, "required_scopes": null}"#,
        )
        .unwrap();
        assert_eq!(bare.id(), "j2");
        assert!(bare.scopes().is_empty());
        assert_eq!(
            serde_json::to_string(&bare).unwrap(),
            r#"{"name":"j2","job_type":{"name":"x","version":0}}"#
        );
        let untyped: Base =
            serde_json::from_str(r#"{"name": "j3", "job_type": {"name": "", "version": 0}}"#)
                .unwrap();
        assert_eq!(untyped.serialized_job_type(), None);
        untyped.record_job_type(JobType::new("z", 1));
        assert_eq!(untyped.serialized_job_type(), Some(&JobType::new("z", 1)));
    }

    #[test]
    fn builders_set_fields() {
        let now = Utc::now();
        let base = Base::with_id("j")
            .with_wait_until(now)
            .with_dispatch_by(now + TimeDelta::seconds(1))
            .with_max_time(Duration::from_millis(5))
            .with_max_attempts(3)
            .with_priority(7)
            .with_enqueue_all_scopes()
            .with_dependency(MockDependency::new(State::Passed));
        let time = base.time_info();
        assert_eq!(time.wait_until, Some(now));
        assert_eq!(time.dispatch_by, Some(now + TimeDelta::seconds(1)));
        assert_eq!(time.max_time, Duration::from_millis(5));
        assert_eq!(base.retry_info().max_attempts, 3);
        assert_eq!(base.priority(), 7);
        assert!(base.enqueue_all_scopes());
        assert_eq!(base.dependency().state(), State::Passed);
    }

    #[test]
    fn dispatchability() {
        let now = Utc::now();
        let timeout = Duration::from_secs(60);
        let mut meta = Metadata::default();
        assert!(meta.is_dispatchable(timeout, now));
        meta.time_info.wait_until = Some(now + TimeDelta::seconds(1));
        assert!(!meta.is_dispatchable(timeout, now), "waiting");
        meta.time_info.wait_until = None;
        meta.time_info.dispatch_by = Some(now - TimeDelta::seconds(1));
        assert!(!meta.is_dispatchable(timeout, now), "stale");
        meta.time_info.dispatch_by = None;
        meta.status.completed = true;
        assert!(!meta.is_dispatchable(timeout, now), "completed");
        meta.status.completed = false;
        meta.status.in_progress = true;
        meta.status.modification_time = Some(now);
        assert!(
            !meta.is_dispatchable(timeout, now),
            "in progress, lock fresh"
        );
        meta.status.modification_time = Some(now - TimeDelta::seconds(61));
        assert!(
            meta.is_dispatchable(timeout, now),
            "in progress, lock expired"
        );
    }

    #[test]
    fn mark_complete() {
        let base = Base::with_id("j");
        base.metadata().status.in_progress = true;
        base.mark_complete();
        let status = base.status();
        assert!(status.completed && !status.in_progress);
    }
}

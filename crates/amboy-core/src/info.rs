//! The info types of `interface.go`: what a job is, where it stands, when it runs, how it retries.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::serde_util::{default_if_negative, go_time, is_false, is_zero_u32, nanos, owner};

/// How long a queue respects another owner's lock on a job before taking the job over
/// (amboy's `LockTimeout`, 10 minutes).
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// The number of attempts a retryable job gets when it does not set its own maximum.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 10;

/// The kind of a job: its registered name and the version of its stored form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobType {
    /// The name the job type is registered under.
    pub name: Cow<'static, str>,
    /// The version of the type; stored jobs decode only into the same version. A negative
    /// version marks a job that cannot be serialized (it runs only on in-memory queues).
    pub version: i32,
}

impl JobType {
    /// A job type.
    pub fn new(name: impl Into<Cow<'static, str>>, version: i32) -> Self {
        JobType {
            name: name.into(),
            version,
        }
    }
}

impl fmt::Display for JobType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.version)
    }
}

/// Where a job stands: its lock, whether it runs or ran, and its errors.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct JobStatusInfo {
    /// The ID of the queue holding the job's lock, if any.
    #[serde(with = "owner")]
    pub owner: Option<Arc<str>>,
    /// The job has finished.
    pub completed: bool,
    /// The job is running.
    pub in_progress: bool,
    /// When the lock was last taken or refreshed.
    #[serde(
        rename = "mod_time",
        with = "go_time",
        skip_serializing_if = "Option::is_none"
    )]
    pub modification_time: Option<DateTime<Utc>>,
    /// The optimistic-lock counter: every lock, heartbeat and completion increments it.
    #[serde(rename = "mod_count")]
    pub modification_count: u64,
    /// The number of errors the job recorded.
    #[serde(rename = "err_count")]
    pub error_count: usize,
    /// The errors the job recorded.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// The job's `dispatch_by` deadline passed before it was dispatched, and it was set aside:
    /// it will never run. Not one of amboy's fields (amboy dropped such jobs without a trace);
    /// written only when set.
    #[serde(skip_serializing_if = "is_false")]
    pub expired: bool,
}

/// The lock fields of a [`JobStatusInfo`] as they were before a write of the job
/// ([`JobStatusInfo::lock_state`]), to put back should the write not be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockState {
    owner: Option<Arc<str>>,
    completed: bool,
    in_progress: bool,
    modification_time: Option<DateTime<Utc>>,
    modification_count: u64,
}

impl JobStatusInfo {
    /// The lock fields now (owner, completed, in progress, modification time and count).
    pub fn lock_state(&self) -> LockState {
        LockState {
            owner: self.owner.clone(),
            completed: self.completed,
            in_progress: self.in_progress,
            modification_time: self.modification_time,
            modification_count: self.modification_count,
        }
    }

    /// Puts the lock fields back as `before`, after a write that advanced the count by one
    /// was not stored, so that the copy is as stored and a later write of it is one count
    /// ahead, as the optimistic lock wants. Does nothing, and returns false, if the count
    /// moved otherwise since (another write of the copy went through meanwhile). Errors stay.
    pub fn restore_lock(&mut self, before: LockState) -> bool {
        if self.modification_count != before.modification_count + 1 {
            return false;
        }
        self.owner = before.owner;
        self.completed = before.completed;
        self.in_progress = before.in_progress;
        self.modification_time = before.modification_time;
        self.modification_count = before.modification_count;
        true
    }
}

/// When a job was created, ran and may run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct JobTimeInfo {
    /// When the job was put into its queue.
    #[serde(with = "go_time", skip_serializing_if = "Option::is_none")]
    pub created: Option<DateTime<Utc>>,
    /// When the job was dispatched to run.
    #[serde(with = "go_time", skip_serializing_if = "Option::is_none")]
    pub start: Option<DateTime<Utc>>,
    /// When the job finished.
    #[serde(with = "go_time", skip_serializing_if = "Option::is_none")]
    pub end: Option<DateTime<Utc>>,
    /// Do not dispatch the job before this time.
    #[serde(with = "go_time", skip_serializing_if = "Option::is_none")]
    pub wait_until: Option<DateTime<Utc>>,
    /// Dispatch the job before this time or drop it.
    #[serde(with = "go_time", skip_serializing_if = "Option::is_none")]
    pub dispatch_by: Option<DateTime<Utc>>,
    /// The longest the job may run; zero means no limit.
    #[serde(with = "nanos", skip_serializing_if = "nanos::is_zero")]
    pub max_time: Duration,
}

impl JobTimeInfo {
    /// How long the job ran: `end − start`, zero if either is unset or the end is earlier.
    pub fn duration(&self) -> Duration {
        match (self.start, self.end) {
            (Some(start), Some(end)) => (end - start).to_std().unwrap_or_default(),
            _ => Duration::ZERO,
        }
    }

    /// Whether the job's `dispatch_by` deadline has passed: such a job must not run.
    pub fn is_stale(&self) -> bool {
        self.is_stale_at(Utc::now())
    }

    /// [`is_stale`](Self::is_stale) as of `now`.
    pub fn is_stale_at(&self, now: DateTime<Utc>) -> bool {
        self.dispatch_by.is_some_and(|by| by < now)
    }

    /// Whether the job's `wait_until` time has passed (always true without one).
    pub fn is_dispatchable(&self) -> bool {
        self.is_dispatchable_at(Utc::now())
    }

    /// [`is_dispatchable`](Self::is_dispatchable) as of `now`.
    pub fn is_dispatchable_at(&self, now: DateTime<Utc>) -> bool {
        self.wait_until.is_none_or(|until| now > until)
    }

    /// Checks the time info is coherent: a creation time is set and `wait_until` is not after
    /// `dispatch_by`.
    pub fn validate(&self) -> Result<(), Error> {
        let mut problems = Vec::new();
        if let (Some(until), Some(by)) = (self.wait_until, self.dispatch_by)
            && until > by
        {
            problems.push("invalid for wait_until to be after dispatch_by");
        }
        if self.created.is_none() {
            problems.push("must specify non-zero created timestamp");
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::invalid(problems.join("; ")))
        }
    }

    /// Overwrites the fields that are set in `update` (amboy's `UpdateTimeInfo`).
    pub fn update(&mut self, update: &JobTimeInfo) {
        fn set(field: &mut Option<DateTime<Utc>>, value: Option<DateTime<Utc>>) {
            if value.is_some() {
                *field = value;
            }
        }
        set(&mut self.created, update.created);
        set(&mut self.start, update.start);
        set(&mut self.end, update.end);
        set(&mut self.wait_until, update.wait_until);
        set(&mut self.dispatch_by, update.dispatch_by);
        if !update.max_time.is_zero() {
            self.max_time = update.max_time;
        }
    }
}

/// How a job retries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct JobRetryInfo {
    /// The job opts in to amboy's retries.
    #[serde(skip_serializing_if = "is_false")]
    pub retryable: bool,
    /// The job asks to run again (honoured only when `retryable`).
    #[serde(skip_serializing_if = "is_false")]
    pub needs_retry: bool,
    /// The job's logical ID, shared by all of its attempts; set by the queue.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub base_job_id: String,
    /// The attempt this is, counting from 0.
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub current_attempt: u32,
    /// The most attempts the job may make; 0 means [`DEFAULT_MAX_ATTEMPTS`] (as does a
    /// negative value from amboy, which decodes as 0).
    #[serde(
        deserialize_with = "default_if_negative::deserialize",
        skip_serializing_if = "is_zero_u32"
    )]
    pub max_attempts: u32,
    /// The next attempt's `dispatch_by`, relative to when it is created.
    #[serde(with = "nanos", skip_serializing_if = "nanos::is_zero")]
    pub dispatch_by: Duration,
    /// The next attempt's `wait_until`, relative to when it is created.
    #[serde(with = "nanos", skip_serializing_if = "nanos::is_zero")]
    pub wait_until: Duration,
    /// When the retry handler started processing this attempt's retry.
    #[serde(with = "go_time", skip_serializing_if = "Option::is_none")]
    pub start: Option<DateTime<Utc>>,
    /// When the retry handler finished processing this attempt's retry.
    #[serde(with = "go_time", skip_serializing_if = "Option::is_none")]
    pub end: Option<DateTime<Utc>>,
}

impl JobRetryInfo {
    /// Whether the job will run again when it completes: retryable and asking to.
    pub fn should_retry(&self) -> bool {
        self.retryable && self.needs_retry
    }

    /// The maximum number of attempts, with 0 meaning [`DEFAULT_MAX_ATTEMPTS`]
    /// (amboy's `GetMaxAttempts`).
    pub fn max_attempts_or_default(&self) -> u32 {
        if self.max_attempts == 0 {
            DEFAULT_MAX_ATTEMPTS
        } else {
            self.max_attempts
        }
    }

    /// How many attempts remain after this one (amboy's `GetRemainingAttempts`).
    pub fn remaining_attempts(&self) -> u32 {
        self.max_attempts_or_default()
            .saturating_sub(self.current_attempt)
            .saturating_sub(1)
    }

    /// Every field as a set option: applying it with
    /// [`update`](Self::update) reproduces this info (except `base_job_id`).
    pub fn options(&self) -> JobRetryOptions {
        JobRetryOptions {
            retryable: Some(self.retryable),
            needs_retry: Some(self.needs_retry),
            current_attempt: Some(self.current_attempt),
            max_attempts: Some(self.max_attempts),
            dispatch_by: Some(self.dispatch_by),
            wait_until: Some(self.wait_until),
            start: Some(self.start),
            end: Some(self.end),
        }
    }

    /// Overwrites the fields that are set in `options` (amboy's `UpdateRetryInfo`).
    pub fn update(&mut self, options: &JobRetryOptions) {
        if let Some(value) = options.retryable {
            self.retryable = value;
        }
        if let Some(value) = options.needs_retry {
            self.needs_retry = value;
        }
        if let Some(value) = options.current_attempt {
            self.current_attempt = value;
        }
        if let Some(value) = options.max_attempts {
            self.max_attempts = value;
        }
        if let Some(value) = options.dispatch_by {
            self.dispatch_by = value;
        }
        if let Some(value) = options.wait_until {
            self.wait_until = value;
        }
        if let Some(value) = options.start {
            self.start = value;
        }
        if let Some(value) = options.end {
            self.end = value;
        }
    }
}

/// Turns the stored state of a finished attempt into attempt number `attempt`, not yet run
/// (amboy's `prepareNewRetryJob`): a fresh status, the times of a new job (its `wait_until` and
/// `dispatch_by` offsets, when set, counted from `now`; its `max_time` kept), and no longer
/// asking to retry. The retry handler builds each next attempt with it, and management
/// re-enqueues failed jobs with it.
pub fn prepare_attempt(
    status: &mut JobStatusInfo,
    time_info: &mut JobTimeInfo,
    retry_info: &mut JobRetryInfo,
    attempt: u32,
    now: DateTime<Utc>,
) {
    retry_info.needs_retry = false;
    retry_info.current_attempt = attempt;
    retry_info.start = None;
    retry_info.end = None;
    *time_info = JobTimeInfo {
        wait_until: after(now, retry_info.wait_until).or(time_info.wait_until),
        dispatch_by: after(now, retry_info.dispatch_by).or(time_info.dispatch_by),
        max_time: time_info.max_time,
        ..JobTimeInfo::default()
    };
    *status = JobStatusInfo::default();
}

/// `now + offset`, or `None` for a zero offset (no offset set); saturates far in the future.
fn after(now: DateTime<Utc>, offset: Duration) -> Option<DateTime<Utc>> {
    if offset.is_zero() {
        return None;
    }
    Some(
        chrono::TimeDelta::from_std(offset)
            .ok()
            .and_then(|offset| now.checked_add_signed(offset))
            .unwrap_or(DateTime::<Utc>::MAX_UTC),
    )
}

/// A partial update of a job's [`JobRetryInfo`]: only the fields that are `Some` change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobRetryOptions {
    /// New value of [`JobRetryInfo::retryable`].
    pub retryable: Option<bool>,
    /// New value of [`JobRetryInfo::needs_retry`].
    pub needs_retry: Option<bool>,
    /// New value of [`JobRetryInfo::current_attempt`].
    pub current_attempt: Option<u32>,
    /// New value of [`JobRetryInfo::max_attempts`].
    pub max_attempts: Option<u32>,
    /// New value of [`JobRetryInfo::dispatch_by`].
    pub dispatch_by: Option<Duration>,
    /// New value of [`JobRetryInfo::wait_until`].
    pub wait_until: Option<Duration>,
    /// New value of [`JobRetryInfo::start`].
    pub start: Option<Option<DateTime<Utc>>>,
    /// New value of [`JobRetryInfo::end`].
    pub end: Option<Option<DateTime<Utc>>>,
}

/// A view of one job: identity, type, status, timing and retry information.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobInfo {
    /// The job's ID.
    pub id: String,
    /// The job's type.
    #[serde(rename = "type")]
    pub job_type: JobType,
    /// The job's status.
    pub status: JobStatusInfo,
    /// The job's timing.
    pub time: JobTimeInfo,
    /// The job's retry information.
    pub retry: JobRetryInfo,
}

impl JobInfo {
    /// The info of `job` as it is now.
    pub fn new(job: &dyn crate::Job) -> Self {
        // Before taking the metadata lock: `version` is the user's and may read the metadata.
        let job_type = job.job_type();
        let meta = job.base().metadata();
        JobInfo {
            id: job.id().to_owned(),
            job_type,
            status: meta.status.clone(),
            time: meta.time_info.clone(),
            retry: meta.retry_info.clone(),
        }
    }
}

/// What a queue reports about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueInfo {
    /// The queue has started.
    pub started: bool,
    /// How long the queue respects a lock held by another owner.
    pub lock_timeout: Duration,
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::*;

    #[test]
    fn offsets_apply_from_now_and_saturate() {
        let now = Utc::now();
        assert_eq!(after(now, Duration::ZERO), None);
        assert_eq!(
            after(now, Duration::from_secs(60)),
            Some(now + TimeDelta::seconds(60))
        );
        assert_eq!(after(now, Duration::MAX), Some(DateTime::<Utc>::MAX_UTC));
    }

    #[test]
    fn a_prepared_attempt_starts_afresh() {
        let now = Utc::now();
        let mut status = JobStatusInfo {
            completed: true,
            errors: vec!["boom".into()],
            error_count: 1,
            modification_count: 7,
            ..JobStatusInfo::default()
        };
        let mut time = JobTimeInfo {
            created: Some(now),
            start: Some(now),
            end: Some(now),
            max_time: Duration::from_secs(5),
            ..JobTimeInfo::default()
        };
        let mut retry = JobRetryInfo {
            retryable: true,
            needs_retry: true,
            current_attempt: 2,
            wait_until: Duration::from_secs(30),
            start: Some(now),
            ..JobRetryInfo::default()
        };
        prepare_attempt(&mut status, &mut time, &mut retry, 3, now);
        assert_eq!(status, JobStatusInfo::default());
        assert_eq!(
            time,
            JobTimeInfo {
                wait_until: Some(now + TimeDelta::seconds(30)),
                max_time: Duration::from_secs(5),
                ..JobTimeInfo::default()
            }
        );
        assert_eq!(
            (
                retry.current_attempt,
                retry.needs_retry,
                retry.retryable,
                retry.start
            ),
            (3, false, true, None)
        );
    }

    #[test]
    fn retry_info_defaults_to_ten_attempts() {
        let mut info = JobRetryInfo::default();
        assert_eq!(info.max_attempts_or_default(), 10);
        assert_eq!(info.remaining_attempts(), 9);
        info.max_attempts = 3;
        assert_eq!(info.max_attempts_or_default(), 3);
        assert_eq!(info.remaining_attempts(), 2);
        info.current_attempt = 2;
        assert_eq!(info.remaining_attempts(), 0);
        info.current_attempt = 7;
        assert_eq!(info.remaining_attempts(), 0, "never negative");
    }

    #[test]
    fn should_retry_needs_both_flags() {
        let mut info = JobRetryInfo::default();
        assert!(!info.should_retry());
        info.needs_retry = true;
        assert!(!info.should_retry());
        info.retryable = true;
        assert!(info.should_retry());
        info.needs_retry = false;
        assert!(!info.should_retry());
    }

    #[test]
    fn options_round_trip_except_base_id() {
        let info = JobRetryInfo {
            retryable: true,
            needs_retry: true,
            base_job_id: "base".into(),
            current_attempt: 4,
            max_attempts: 7,
            dispatch_by: Duration::from_secs(5),
            wait_until: Duration::from_secs(3),
            start: Some(Utc::now()),
            end: Some(Utc::now()),
        };
        let mut copy = JobRetryInfo::default();
        copy.update(&info.options());
        assert_eq!(copy.base_job_id, "");
        copy.base_job_id = "base".into();
        assert_eq!(copy, info);
    }

    #[test]
    fn partial_retry_update_changes_only_set_fields() {
        let mut info = JobRetryInfo {
            retryable: true,
            max_attempts: 5,
            ..Default::default()
        };
        info.update(&JobRetryOptions {
            needs_retry: Some(true),
            current_attempt: Some(2),
            ..Default::default()
        });
        assert!(info.retryable && info.needs_retry);
        assert_eq!((info.current_attempt, info.max_attempts), (2, 5));
    }

    #[test]
    fn time_info_validation() {
        let now = Utc::now();
        let mut info = JobTimeInfo::default();
        assert_eq!(
            info.validate().unwrap_err().to_string(),
            "invalid: must specify non-zero created timestamp"
        );
        info.created = Some(now);
        info.validate().unwrap();
        info.wait_until = Some(now + TimeDelta::seconds(10));
        info.dispatch_by = Some(now + TimeDelta::seconds(5));
        assert!(
            info.validate()
                .unwrap_err()
                .to_string()
                .contains("wait_until to be after dispatch_by")
        );
        info.dispatch_by = Some(now + TimeDelta::seconds(20));
        info.validate().unwrap();
    }

    #[test]
    fn stale_and_dispatchable() {
        let now = Utc::now();
        let mut info = JobTimeInfo::default();
        assert!(!info.is_stale());
        assert!(info.is_dispatchable());
        info.dispatch_by = Some(now - TimeDelta::seconds(1));
        assert!(info.is_stale());
        info.dispatch_by = Some(now + TimeDelta::seconds(60));
        assert!(!info.is_stale());
        info.wait_until = Some(now + TimeDelta::seconds(60));
        assert!(!info.is_dispatchable());
        info.wait_until = Some(now - TimeDelta::seconds(1));
        assert!(info.is_dispatchable());
        // Strictly after: at exactly wait_until the job is not yet dispatchable.
        assert!(!info.is_dispatchable_at(now - TimeDelta::seconds(1)));
    }

    #[test]
    fn duration_is_end_minus_start() {
        let now = Utc::now();
        let mut info = JobTimeInfo::default();
        assert_eq!(info.duration(), Duration::ZERO);
        info.start = Some(now);
        info.end = Some(now + TimeDelta::milliseconds(1500));
        assert_eq!(info.duration(), Duration::from_millis(1500));
        info.end = Some(now - TimeDelta::seconds(1));
        assert_eq!(info.duration(), Duration::ZERO);
    }

    #[test]
    fn update_time_info_overwrites_only_set_fields() {
        let now = Utc::now();
        let mut info = JobTimeInfo {
            created: Some(now),
            max_time: Duration::from_secs(1),
            ..Default::default()
        };
        info.update(&JobTimeInfo {
            start: Some(now),
            ..Default::default()
        });
        assert_eq!(info.created, Some(now));
        assert_eq!(info.start, Some(now));
        assert_eq!(info.max_time, Duration::from_secs(1));
    }

    #[test]
    fn wire_names_are_amboys() {
        let now = DateTime::parse_from_rfc3339("2024-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc);
        let status = JobStatusInfo {
            owner: Some(Arc::from("q")),
            completed: true,
            in_progress: false,
            modification_time: Some(now),
            modification_count: 3,
            error_count: 1,
            errors: vec!["boom".into()],
            expired: false,
        };
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "owner": "q", "completed": true, "in_progress": false,
                "mod_time": "2024-01-02T03:04:05Z", "mod_count": 3, "err_count": 1, "errors": ["boom"]
            })
        );
        let time = JobTimeInfo {
            created: Some(now),
            max_time: Duration::from_millis(1),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&time).unwrap(),
            serde_json::json!({"created": "2024-01-02T03:04:05Z", "max_time": 1_000_000})
        );
        let retry = JobRetryInfo {
            retryable: true,
            needs_retry: true,
            base_job_id: "b".into(),
            current_attempt: 2,
            max_attempts: 4,
            wait_until: Duration::from_secs(1),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&retry).unwrap(),
            serde_json::json!({
                "retryable": true, "needs_retry": true, "base_job_id": "b",
                "current_attempt": 2, "max_attempts": 4, "wait_until": 1_000_000_000u64
            })
        );
        let back: JobRetryInfo =
            serde_json::from_value(serde_json::to_value(&retry).unwrap()).unwrap();
        assert_eq!(back, retry);
        let no_owner: JobStatusInfo = serde_json::from_str(r#"{"owner": ""}"#).unwrap();
        assert_eq!(no_owner.owner, None);
    }

    /// A job whose version is read from its own metadata.
    #[derive(Serialize, Deserialize)]
    struct VersionFromMetadata {
        base: crate::Base,
    }

    #[typetag::serde(name = "amboy-core-test-version-from-metadata")]
    #[async_trait::async_trait]
    impl crate::Job for VersionFromMetadata {
        fn base(&self) -> &crate::Base {
            &self.base
        }

        async fn run(&self, _ctx: &crate::JobContext) -> Result<(), crate::JobError> {
            Ok(())
        }

        fn version(&self) -> i32 {
            i32::try_from(self.base.status().modification_count).unwrap_or(-1)
        }
    }

    #[test]
    fn job_info_of_a_job_whose_version_reads_its_metadata() {
        let job = VersionFromMetadata {
            base: crate::Base::with_id("self-reading"),
        };
        job.base.metadata().status.modification_count = 3;
        let (sender, receiver) = std::sync::mpsc::channel();
        // On a thread, so that a deadlock fails the test instead of hanging it.
        std::thread::spawn(move || {
            let _ = sender.send(JobInfo::new(&job));
        });
        let info = receiver
            .recv_timeout(Duration::from_secs(10))
            .expect("JobInfo::new deadlocked on the job's metadata lock");
        assert_eq!(info.id, "self-reading");
        assert_eq!(
            info.job_type,
            JobType::new("amboy-core-test-version-from-metadata", 3)
        );
        assert_eq!(info.status.modification_count, 3);
    }

    fn utc(rfc3339: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn go_zero_times_decode_as_unset() {
        // As Go's encoding/json writes a job that was never dispatched, locked or retried.
        let status: JobStatusInfo = serde_json::from_str(
            r#"{"owner":"","completed":false,"in_progress":false,
                "mod_time":"0001-01-01T00:00:00Z","mod_count":0,"err_count":0}"#,
        )
        .unwrap();
        assert_eq!(status, JobStatusInfo::default());
        let time: JobTimeInfo = serde_json::from_str(
            r#"{"created":"2024-05-06T07:08:09.123456789-04:00","start":"0001-01-01T00:00:00Z",
                "end":"0001-01-01T00:00:00Z","wait_until":"0001-01-01T00:00:00Z",
                "dispatch_by":"0001-01-01T00:00:00Z","max_time":0}"#,
        )
        .unwrap();
        assert_eq!(
            time,
            JobTimeInfo {
                created: Some(utc("2024-05-06T11:08:09.123456789Z")),
                ..Default::default()
            }
        );
        assert!(!time.is_stale(), "an unset dispatch_by never expires");
        assert!(time.is_dispatchable());
        let retry: JobRetryInfo = serde_json::from_str(
            r#"{"start":"0001-01-01T00:00:00Z","end":"0001-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(retry, JobRetryInfo::default());
        // Re-encoded, unset times are left out (Go reads a missing time as its zero time).
        assert_eq!(
            serde_json::to_value(&time).unwrap(),
            serde_json::json!({"created": "2024-05-06T11:08:09.123456789Z"})
        );
    }

    #[test]
    fn every_form_of_go_zero_time_is_unset() {
        for zero in [
            "0001-01-01T00:00:00Z",
            "0001-01-01T00:00:00.000Z",
            "0001-01-01T00:00:00.000000000Z",
            "0001-01-01T00:00:00+00:00",
            "0001-01-01T00:00:00-00:00",
            // Go's zero time in a zone whose offset at year 1 is local mean time, cut to
            // minutes: New York's (-04:56:02) and Paris's (+00:09:21).
            "0000-12-31T19:03:58-04:56",
            "0001-01-01T00:09:21+00:09",
        ] {
            let time: JobTimeInfo =
                serde_json::from_str(&format!(r#"{{"dispatch_by": "{zero}"}}"#)).unwrap();
            assert_eq!(time.dispatch_by, None, "{zero}");
        }
    }

    #[test]
    fn set_times_in_go_forms_decode() {
        for (written, instant) in [
            ("2024-01-02T03:04:05Z", "2024-01-02T03:04:05Z"),
            ("2024-01-02T03:04:05.5Z", "2024-01-02T03:04:05.500Z"),
            (
                "2024-01-02T03:04:05.123456789+05:30",
                "2024-01-01T21:34:05.123456789Z",
            ),
            ("1970-01-01T00:00:00Z", "1970-01-01T00:00:00Z"),
            ("0001-01-03T00:00:00Z", "0001-01-03T00:00:00Z"),
        ] {
            let status: JobStatusInfo =
                serde_json::from_str(&format!(r#"{{"mod_time": "{written}"}}"#)).unwrap();
            assert_eq!(status.modification_time, Some(utc(instant)), "{written}");
        }
        let err = serde_json::from_str::<JobTimeInfo>(r#"{"start": "yesterday"}"#).unwrap_err();
        assert!(
            err.to_string()
                .contains("input contains invalid characters"),
            "{err}"
        );
    }

    #[test]
    fn negative_max_attempts_from_go_mean_the_default() {
        let retry: JobRetryInfo =
            serde_json::from_str(r#"{"retryable": true, "max_attempts": -1}"#).unwrap();
        assert_eq!(retry.max_attempts, 0);
        assert_eq!(retry.max_attempts_or_default(), DEFAULT_MAX_ATTEMPTS);
        let retry: JobRetryInfo = serde_json::from_str(r#"{"max_attempts": 4}"#).unwrap();
        assert_eq!(retry.max_attempts, 4);
        assert!(serde_json::from_str::<JobRetryInfo>(r#"{"max_attempts": 4294967296}"#).is_err());
    }

    #[test]
    fn negative_durations_are_rejected() {
        let err = serde_json::from_str::<JobTimeInfo>(r#"{"max_time": -5}"#).unwrap_err();
        assert!(
            err.to_string().contains("duration of -5ns is negative"),
            "{err}"
        );
    }
}

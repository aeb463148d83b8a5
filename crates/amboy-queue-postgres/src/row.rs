//! A stored job as read back: its columns, and the job or info they make.

use std::sync::Arc;

use amboy_core::{
    Error, JobInfo, JobRef, JobRetryInfo, JobStatusInfo, JobTimeInfo, JobType, Result,
};
use amboy_registry::{DependencyInterchange, JobInterchange, RegistryError};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sqlx::Row as _;
use sqlx::postgres::PgRow;

use crate::schema::{COMPLETED, EXPIRED, RETRYING, RUNNING, SET_ASIDE};

/// A job's body as written: its envelope (amboy's `JobInterchange`) less what the row's columns
/// hold, its ID and type and where it stands (state, owner, modification count; the
/// modification time too when the write sets the lock's time), and with fields at their
/// default value left out. A no-op job's body is about a third of its envelope: less to encode,
/// send, store and log.
#[derive(Serialize)]
struct BodyOut<'a> {
    #[serde(skip_serializing_if = "is_default")]
    version: i32,
    #[serde(skip_serializing_if = "is_default")]
    priority: i32,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    errors: &'a [String],
    /// How many errors the job had, when more than `errors` keeps (truncated).
    #[serde(skip_serializing_if = "Option::is_none")]
    err_count: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mod_time: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    enqueue_scopes: &'a [String],
    #[serde(skip_serializing_if = "is_default")]
    enqueue_all_scopes: bool,
    #[serde(skip_serializing_if = "is_default_ref")]
    retry_info: &'a JobRetryInfo,
    #[serde(skip_serializing_if = "is_default_ref")]
    time_info: &'a JobTimeInfo,
    job: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    dependency: Option<&'a DependencyInterchange>,
}

/// A body as read: the fields of [`BodyOut`], or a whole envelope (bodies written before they
/// were trimmed, whose `name`, `type` and `status` the reader ignores or takes the errors and
/// modification time from).
#[derive(Deserialize)]
struct BodyIn {
    #[serde(default)]
    version: i32,
    #[serde(default)]
    priority: i32,
    #[serde(default)]
    errors: Vec<String>,
    #[serde(default)]
    err_count: Option<usize>,
    #[serde(default)]
    mod_time: Option<DateTime<Utc>>,
    #[serde(default)]
    status: Option<JobStatusInfo>,
    #[serde(default)]
    enqueue_scopes: Vec<String>,
    #[serde(default)]
    enqueue_all_scopes: bool,
    #[serde(default)]
    retry_info: JobRetryInfo,
    #[serde(default)]
    time_info: JobTimeInfo,
    job: Box<RawValue>,
    #[serde(default)]
    dependency: Option<DependencyInterchange>,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

fn is_default_ref<T: Default + PartialEq>(value: &&T) -> bool {
    **value == T::default()
}

/// The body to store for `envelope`; `with_mod_time` when the write leaves the lock's time
/// empty, so that the row does not hold the modification time.
pub(crate) fn encode_body(envelope: &JobInterchange, with_mod_time: bool) -> Result<String> {
    let body = BodyOut {
        version: envelope.version,
        priority: envelope.priority,
        errors: &envelope.status.errors,
        err_count: (envelope.status.error_count > envelope.status.errors.len())
            .then_some(envelope.status.error_count),
        mod_time: envelope.status.modification_time.filter(|_| with_mod_time),
        enqueue_scopes: &envelope.enqueue_scopes,
        enqueue_all_scopes: envelope.enqueue_all_scopes,
        retry_info: &envelope.retry_info,
        time_info: &envelope.time_info,
        job: &envelope.job,
        dependency: envelope.dependency.as_ref(),
    };
    serde_json::to_string(&body).map_err(|error| {
        Error::from(RegistryError::Encode {
            id: envelope.name.clone(),
            reason: error.to_string(),
        })
    })
}

/// A job's row, read with [`JOB_COLUMNS`](crate::schema::JOB_COLUMNS). The columns say what
/// the job is and where it stands (ID, type, state, lock, set-aside reason); the body holds the
/// rest of its envelope as of its last write.
#[derive(Debug)]
pub(crate) struct StoredJob {
    pub(crate) id: String,
    pub(crate) attempt: i32,
    pub(crate) state: i16,
    pub(crate) owner: Option<String>,
    pub(crate) mod_count: i64,
    pub(crate) lock_ts: Option<DateTime<Utc>>,
    pub(crate) failure: Option<String>,
    pub(crate) job_type: String,
    pub(crate) body: String,
}

impl StoredJob {
    pub(crate) fn read(row: &PgRow) -> sqlx::Result<Self> {
        Ok(StoredJob {
            id: row.try_get(0)?,
            attempt: row.try_get(1)?,
            state: row.try_get(2)?,
            owner: row.try_get(3)?,
            mod_count: row.try_get(4)?,
            lock_ts: row.try_get(5)?,
            failure: row.try_get(6)?,
            job_type: row.try_get(7)?,
            body: row.try_get(8)?,
        })
    }

    /// The job's envelope, its status brought up to date from the columns.
    pub(crate) fn envelope(&self) -> Result<JobInterchange> {
        let body: BodyIn = serde_json::from_str(&self.body).map_err(|error| {
            Error::from(RegistryError::MalformedEnvelope {
                id: self.id.clone(),
                reason: error.to_string(),
            })
        })?;
        let status = match body.status {
            Some(status) => status,
            None => JobStatusInfo {
                errors: body.errors,
                error_count: body.err_count.unwrap_or_default(),
                modification_time: body.mod_time,
                ..JobStatusInfo::default()
            },
        };
        let mut envelope = JobInterchange {
            name: self.id.clone(),
            type_name: self.job_type.clone(),
            group: String::new(),
            version: body.version,
            priority: body.priority,
            status,
            scopes: Vec::new(),
            enqueue_scopes: body.enqueue_scopes,
            enqueue_all_scopes: body.enqueue_all_scopes,
            retry_info: body.retry_info,
            time_info: body.time_info,
            job: body.job,
            dependency: body.dependency,
        };
        self.overlay(&mut envelope.status);
        // The state decides whether the job retries: a retrying job completed by management
        // keeps the body it was written with, which asks to.
        match self.state {
            RETRYING => envelope.retry_info.needs_retry = true,
            COMPLETED => envelope.retry_info.needs_retry &= !envelope.retry_info.retryable,
            SET_ASIDE | EXPIRED => envelope.retry_info.needs_retry = false,
            _ => {}
        }
        Ok(envelope)
    }

    /// Brings a status up to date from the columns.
    fn overlay(&self, status: &mut JobStatusInfo) {
        status.in_progress = self.state == RUNNING;
        status.completed = matches!(self.state, COMPLETED | RETRYING | SET_ASIDE);
        status.expired = self.state == EXPIRED;
        status.owner = self.owner.as_deref().map(Arc::from);
        status.modification_count = u64::try_from(self.mod_count).unwrap_or_default();
        if self.lock_ts.is_some() {
            status.modification_time = self.lock_ts;
        }
        let mut added = 0;
        if let Some(failure) = &self.failure
            && !status.errors.iter().any(|error| error == failure)
        {
            status.errors.push(failure.clone());
            added = 1;
        }
        // The count written, when the errors kept were truncated; else the errors themselves.
        status.error_count = (status.error_count + added).max(status.errors.len());
    }

    /// The job itself. A job that cannot be decoded is an error naming it and the reason; a
    /// job set aside says why.
    pub(crate) fn job(&self) -> Result<JobRef> {
        if self.state == SET_ASIDE {
            return Err(Error::invalid_job(
                &self.id,
                self.failure
                    .as_deref()
                    .unwrap_or("the stored job cannot be decoded"),
            ));
        }
        let envelope = self.envelope()?;
        let job = envelope.resolve().map_err(Error::from)?;
        Ok(job)
    }

    /// The job's info, even when the job itself cannot be decoded; its attempt is always the
    /// row's.
    pub(crate) fn info(&self) -> JobInfo {
        let attempt = u32::try_from(self.attempt).unwrap_or_default();
        match self.envelope() {
            Ok(envelope) => JobInfo {
                id: envelope.name,
                job_type: JobType::new(envelope.type_name, envelope.version),
                status: envelope.status,
                time: envelope.time_info,
                retry: JobRetryInfo {
                    current_attempt: attempt,
                    ..envelope.retry_info
                },
            },
            Err(_) => {
                let mut status = JobStatusInfo::default();
                self.overlay(&mut status);
                JobInfo {
                    id: self.id.clone(),
                    job_type: JobType::new(self.job_type.clone(), 0),
                    status,
                    time: Default::default(),
                    retry: JobRetryInfo {
                        current_attempt: attempt,
                        ..Default::default()
                    },
                }
            }
        }
    }
}

/// A row's physical address (`ctid`, as text: `(block,offset)`) as a job's
/// [locator](amboy_core::Metadata::locator); 0 when it does not parse.
pub(crate) fn locator_of(ctid: &str) -> u64 {
    let parsed = ctid
        .strip_prefix('(')
        .and_then(|rest| rest.strip_suffix(')'))
        .and_then(|pair| pair.split_once(','))
        .and_then(|(block, offset)| {
            Some((block.parse::<u32>().ok()?, offset.parse::<u16>().ok()?))
        });
    match parsed {
        Some((block, offset)) => (u64::from(block) << 16) | u64::from(offset),
        None => 0,
    }
}

/// The address (`ctid` as text) a [locator](locator_of) stands for; `None` for 0.
pub(crate) fn ctid_of(locator: u64) -> Option<String> {
    (locator != 0).then(|| format!("({},{})", locator >> 16, locator & 0xffff))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_through_locators() {
        for ctid in ["(0,1)", "(7,12)", "(4294967295,65535)"] {
            let locator = locator_of(ctid);
            assert_ne!(locator, 0, "{ctid}");
            assert_eq!(ctid_of(locator).as_deref(), Some(ctid));
        }
        for bad in ["", "(1)", "1,2", "(x,1)", "(1,70000)", "(-1,2)"] {
            assert_eq!(locator_of(bad), 0, "{bad}");
        }
        assert_eq!(ctid_of(0), None);
    }
}

//! A stored job as read back: its columns, and the job or info they make.

use std::sync::Arc;

use amboy_core::{Error, JobInfo, JobRef, JobStatusInfo, JobType, Result};
use amboy_registry::JobInterchange;
use chrono::{DateTime, Utc};
use sqlx::Row as _;
use sqlx::postgres::PgRow;

use crate::schema::{COMPLETED, EXPIRED, RETRYING, RUNNING, SET_ASIDE};

/// A job's row, read with [`JOB_COLUMNS`](crate::schema::JOB_COLUMNS). The columns say where
/// the job stands (state, lock, set-aside reason); the body holds the rest of its envelope as
/// of its last write.
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
        let mut envelope = JobInterchange::from_json(&self.body).map_err(Error::from)?;
        self.overlay(&mut envelope.status);
        if self.state == RETRYING {
            envelope.retry_info.needs_retry = true;
        } else if matches!(self.state, SET_ASIDE | EXPIRED) {
            envelope.retry_info.needs_retry = false;
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
        if let Some(failure) = &self.failure
            && !status.errors.iter().any(|error| error == failure)
        {
            status.errors.push(failure.clone());
        }
        status.error_count = status.errors.len();
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

    /// The job's info, even when the job itself cannot be decoded.
    pub(crate) fn info(&self) -> JobInfo {
        match self.envelope() {
            Ok(envelope) => JobInfo {
                id: envelope.name,
                job_type: JobType::new(envelope.type_name, envelope.version),
                status: envelope.status,
                time: envelope.time_info,
                retry: envelope.retry_info,
            },
            Err(_) => {
                let mut status = JobStatusInfo::default();
                self.overlay(&mut status);
                JobInfo {
                    id: self.id.clone(),
                    job_type: JobType::new(self.job_type.clone(), 0),
                    status,
                    time: Default::default(),
                    retry: Default::default(),
                }
            }
        }
    }
}

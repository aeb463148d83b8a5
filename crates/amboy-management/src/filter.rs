//! The status filters: which jobs an operation applies to.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use amboy_core::{Error, JobInfo};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Which jobs a management operation applies to, by where they stand (amboy's
/// `StatusFilter`), written in amboy's names: `pending`, `in-progress`, `stale`, `completed`,
/// `retrying`, `stale-retrying`, `all`, and two of ours, `expired` and `set-aside`.
///
/// `stale-retrying` is accepted everywhere (amboy's `Validate` refused it, fix 10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StatusFilter {
    /// Waiting to run: neither dispatched nor finished nor expired.
    Pending,
    /// Dispatched to a worker and not finished.
    InProgress,
    /// In progress, but its lock was not refreshed within the lock timeout: its worker is gone
    /// or hung.
    Stale,
    /// Finished, whether or not it waits to retry (amboy counts retrying jobs as completed).
    Completed,
    /// Finished and asking to retry: its next attempt is not enqueued yet.
    Retrying,
    /// Retrying, but nobody processed the retry within the lock timeout.
    StaleRetrying,
    /// Set aside because its `dispatch_by` deadline passed before it ran.
    Expired,
    /// Set aside because its stored form could not be decoded (an unknown type, another
    /// version, a bad body). Only stores that decode jobs hold such jobs: the PostgreSQL
    /// manager finds them; a queue-backed manager finds none.
    SetAside,
    /// Every job.
    All,
}

impl StatusFilter {
    /// Every filter, in amboy's order then ours (amboy's `ValidStatusFilters`, with
    /// `stale-retrying` included).
    pub const ALL: [StatusFilter; 9] = [
        StatusFilter::Pending,
        StatusFilter::InProgress,
        StatusFilter::Stale,
        StatusFilter::Completed,
        StatusFilter::Retrying,
        StatusFilter::StaleRetrying,
        StatusFilter::Expired,
        StatusFilter::SetAside,
        StatusFilter::All,
    ];

    /// The filter's name, as parsed and serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            StatusFilter::Pending => "pending",
            StatusFilter::InProgress => "in-progress",
            StatusFilter::Stale => "stale",
            StatusFilter::Completed => "completed",
            StatusFilter::Retrying => "retrying",
            StatusFilter::StaleRetrying => "stale-retrying",
            StatusFilter::Expired => "expired",
            StatusFilter::SetAside => "set-aside",
            StatusFilter::All => "all",
        }
    }

    /// Whether a job as `info` describes it passes the filter at `now`, judging staleness with
    /// `lock_timeout` (amboy's queue manager's predicates). A job with no modification time
    /// counts as stale.
    pub fn matches(self, info: &JobInfo, lock_timeout: Duration, now: DateTime<Utc>) -> bool {
        let status = &info.status;
        let stale = || match status.modification_time {
            None => true,
            Some(modified) => (now - modified)
                .to_std()
                .is_ok_and(|age| age > lock_timeout),
        };
        let retrying = status.completed && info.retry.retryable && info.retry.needs_retry;
        match self {
            StatusFilter::Pending => !status.in_progress && !status.completed && !status.expired,
            StatusFilter::InProgress => status.in_progress && !status.completed,
            StatusFilter::Stale => status.in_progress && !status.completed && stale(),
            StatusFilter::Completed => status.completed,
            StatusFilter::Retrying => retrying,
            StatusFilter::StaleRetrying => retrying && stale(),
            StatusFilter::Expired => status.expired,
            StatusFilter::SetAside => false,
            StatusFilter::All => true,
        }
    }
}

impl fmt::Display for StatusFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StatusFilter {
    type Err = Error;

    /// Parses a filter's name; anything else is an invalid-input error listing the names.
    fn from_str(name: &str) -> Result<Self, Error> {
        StatusFilter::ALL
            .into_iter()
            .find(|filter| filter.as_str() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = StatusFilter::ALL.iter().map(|f| f.as_str()).collect();
                Error::invalid(format!(
                    "'{name}' is not a status filter; expected one of: {}",
                    names.join(", ")
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use amboy_core::{JobRetryInfo, JobStatusInfo, JobTimeInfo, JobType};
    use chrono::TimeDelta;

    use super::*;

    fn info(status: JobStatusInfo, retry: JobRetryInfo) -> JobInfo {
        JobInfo {
            id: "job".into(),
            job_type: JobType::new("t", 0),
            status,
            time: JobTimeInfo::default(),
            retry,
        }
    }

    #[test]
    fn names_round_trip_and_bad_names_are_refused() {
        for filter in StatusFilter::ALL {
            assert_eq!(filter.as_str().parse::<StatusFilter>().unwrap(), filter);
            let json = serde_json::to_string(&filter).unwrap();
            assert_eq!(json, format!("\"{filter}\""));
            assert_eq!(serde_json::from_str::<StatusFilter>(&json).unwrap(), filter);
        }
        for bad in ["", "foo", "inprog", "in_progress", "Pending"] {
            let error = bad.parse::<StatusFilter>().unwrap_err().to_string();
            assert!(
                error.contains(&format!("'{bad}'")) && error.contains("stale-retrying"),
                "{error}"
            );
        }
    }

    #[test]
    fn predicates_follow_the_status() {
        let now = Utc::now();
        let timeout = Duration::from_secs(60);
        let old = Some(now - TimeDelta::hours(1));
        let fresh = Some(now);
        let running = |modification_time| JobStatusInfo {
            in_progress: true,
            modification_time,
            ..JobStatusInfo::default()
        };
        let done = |modification_time| JobStatusInfo {
            completed: true,
            modification_time,
            ..JobStatusInfo::default()
        };
        let retry = JobRetryInfo {
            retryable: true,
            needs_retry: true,
            ..JobRetryInfo::default()
        };
        let cases = [
            (
                info(JobStatusInfo::default(), JobRetryInfo::default()),
                "pending",
            ),
            (info(running(fresh), JobRetryInfo::default()), "in-progress"),
            (
                info(running(old), JobRetryInfo::default()),
                "in-progress stale",
            ),
            (info(done(fresh), JobRetryInfo::default()), "completed"),
            (info(done(fresh), retry.clone()), "completed retrying"),
            (
                info(done(old), retry.clone()),
                "completed retrying stale-retrying",
            ),
            (
                info(
                    JobStatusInfo {
                        expired: true,
                        ..JobStatusInfo::default()
                    },
                    JobRetryInfo::default(),
                ),
                "expired",
            ),
        ];
        for (job, expected) in cases {
            for filter in StatusFilter::ALL {
                let wanted = filter == StatusFilter::All
                    || expected.split(' ').any(|name| name == filter.as_str());
                assert_eq!(
                    filter.matches(&job, timeout, now),
                    wanted,
                    "{filter} on a job that is {expected}"
                );
            }
        }
    }
}

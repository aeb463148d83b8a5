//! Queue statistics and amboy's completeness rule.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Error;

/// Counts of a queue's jobs by state.
///
/// `total` counts every job the queue accepted, including completed jobs it no longer retains;
/// `expired` counts jobs dropped because their `dispatch_by` deadline passed before they could
/// run (amboy counted them nowhere, so waiting on such a queue never ended).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct QueueStats {
    /// Jobs running now.
    pub running: usize,
    /// Jobs that finished (including retrying ones on queues that count them so).
    pub completed: usize,
    /// Completed jobs waiting for their next attempt.
    pub retrying: usize,
    /// Jobs waiting to run.
    pub pending: usize,
    /// Jobs waiting on dependencies, or whose dependencies can never be met.
    pub blocked: usize,
    /// Jobs dropped because their `dispatch_by` deadline passed.
    pub expired: usize,
    /// Every job the queue accepted.
    pub total: usize,
    /// Free-form annotations.
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub context: serde_json::Map<String, serde_json::Value>,
}

impl QueueStats {
    /// amboy's completeness rule: nothing is retrying, and every job completed, is blocked
    /// or expired.
    pub fn is_complete(&self) -> bool {
        if self.retrying > 0 {
            return false;
        }
        self.total == self.completed || self.total <= self.completed + self.blocked + self.expired
    }

    /// Whether the stats are worth logging (the queue has seen a job).
    pub fn is_loggable(&self) -> bool {
        self.total > 0
    }

    /// Adds an annotation; an existing key is an error.
    pub fn annotate(
        &mut self,
        key: impl Into<String>,
        value: impl Into<serde_json::Value>,
    ) -> Result<(), Error> {
        let key = key.into();
        if self.context.contains_key(&key) {
            return Err(Error::invalid(format!(
                "key '{key}' already exists in the stats context"
            )));
        }
        self.context.insert(key, value.into());
        Ok(())
    }
}

impl fmt::Display for QueueStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "running='{}', completed='{}', retrying='{}', pending='{}', blocked='{}', expired='{}', total='{}'",
            self.running,
            self.completed,
            self.retrying,
            self.pending,
            self.blocked,
            self.expired,
            self.total
        )
    }
}

/// Options of a retry handler, with amboy's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetryHandlerOptions {
    /// How many times the handler tries to enqueue a job's next attempt before giving up;
    /// 0 means 10.
    pub max_retry_attempts: u32,
    /// How long the handler keeps trying to enqueue a job's next attempt; zero means 1 minute.
    pub max_retry_time: Duration,
    /// The pause between the handler's tries; zero means none.
    pub retry_backoff: Duration,
    /// How many jobs are retried at once; 0 means 1.
    pub num_workers: usize,
    /// How many jobs may wait to be retried: 0 means 4096, −1 means unlimited, below −1 is
    /// invalid.
    pub max_capacity: i64,
}

impl RetryHandlerOptions {
    /// The default number of enqueue tries.
    pub const DEFAULT_MAX_RETRY_ATTEMPTS: u32 = 10;
    /// The default time spent trying to enqueue.
    pub const DEFAULT_MAX_RETRY_TIME: Duration = Duration::from_secs(60);
    /// The default number of workers.
    pub const DEFAULT_NUM_WORKERS: usize = 1;
    /// The default capacity.
    pub const DEFAULT_MAX_CAPACITY: i64 = 4096;

    /// Checks the options and fills in the defaults.
    pub fn validate(&mut self) -> Result<(), Error> {
        if self.max_capacity < -1 {
            return Err(Error::invalid(
                "cannot have negative max capacity, unless it is -1 for unlimited",
            ));
        }
        if self.max_retry_attempts == 0 {
            self.max_retry_attempts = Self::DEFAULT_MAX_RETRY_ATTEMPTS;
        }
        if self.max_retry_time.is_zero() {
            self.max_retry_time = Self::DEFAULT_MAX_RETRY_TIME;
        }
        if self.num_workers == 0 {
            self.num_workers = Self::DEFAULT_NUM_WORKERS;
        }
        if self.max_capacity == 0 {
            self.max_capacity = Self::DEFAULT_MAX_CAPACITY;
        }
        Ok(())
    }

    /// Whether the handler's capacity is unlimited.
    pub fn is_unlimited_max_capacity(&self) -> bool {
        self.max_capacity == -1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(total: usize, completed: usize, blocked: usize, retrying: usize) -> QueueStats {
        QueueStats {
            total,
            completed,
            blocked,
            retrying,
            ..Default::default()
        }
    }

    #[test]
    fn is_complete_truth_table() {
        // (total, completed, blocked, retrying) -> complete, as amboy's stats_test.
        let cases = [
            ((0, 0, 0, 0), true),
            ((10, 10, 0, 0), true),
            ((10, 9, 0, 0), false),
            ((10, 5, 5, 0), true),
            ((10, 5, 4, 0), false),
            ((10, 2, 9, 0), true),
            ((10, 10, 0, 1), false),
            ((10, 5, 5, 2), false),
            ((0, 0, 0, 1), false),
        ];
        for ((total, completed, blocked, retrying), complete) in cases {
            assert_eq!(
                stats(total, completed, blocked, retrying).is_complete(),
                complete,
                "total={total} completed={completed} blocked={blocked} retrying={retrying}"
            );
        }
    }

    #[test]
    fn expired_jobs_count_towards_completeness() {
        let mut s = stats(10, 5, 0, 0);
        assert!(!s.is_complete());
        s.expired = 5;
        assert!(s.is_complete());
    }

    #[test]
    fn display_and_annotation() {
        let mut s = stats(3, 1, 0, 0);
        s.pending = 2;
        assert_eq!(
            s.to_string(),
            "running='0', completed='1', retrying='0', pending='2', blocked='0', expired='0', total='3'"
        );
        assert!(s.is_loggable());
        assert!(!QueueStats::default().is_loggable());
        s.annotate("queue", "q1").unwrap();
        assert!(s.annotate("queue", "q2").is_err());
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["context"]["queue"], "q1");
        assert_eq!(json["total"], 3);
    }

    #[test]
    fn retry_handler_options_defaults() {
        let mut opts = RetryHandlerOptions::default();
        opts.validate().unwrap();
        assert_eq!(opts.max_retry_attempts, 10);
        assert_eq!(opts.max_retry_time, Duration::from_secs(60));
        assert_eq!(opts.retry_backoff, Duration::ZERO);
        assert_eq!(opts.num_workers, 1);
        assert_eq!(opts.max_capacity, 4096);
        assert!(!opts.is_unlimited_max_capacity());
    }

    #[test]
    fn retry_handler_options_keep_set_values() {
        let mut opts = RetryHandlerOptions {
            max_retry_attempts: 3,
            max_retry_time: Duration::from_millis(20),
            retry_backoff: Duration::from_millis(10),
            num_workers: 4,
            max_capacity: -1,
        };
        opts.validate().unwrap();
        assert_eq!(opts.max_retry_attempts, 3);
        assert_eq!(opts.num_workers, 4);
        assert!(opts.is_unlimited_max_capacity());
    }

    #[test]
    fn retry_handler_options_reject_capacity_below_minus_one() {
        let mut opts = RetryHandlerOptions {
            max_capacity: -2,
            ..Default::default()
        };
        assert!(
            opts.validate()
                .unwrap_err()
                .to_string()
                .contains("negative max capacity")
        );
    }
}

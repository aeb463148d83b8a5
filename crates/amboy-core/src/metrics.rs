//! The metrics of jobs, through the [`metrics`](https://docs.rs/metrics) facade, when the
//! crate's `metrics` feature is on (the facade's `metrics` feature turns it on); without it,
//! every function here does nothing and costs nothing.
//!
//! | metric | kind | labels | what |
//! |---|---|---|---|
//! | `amboy_jobs_put_total` | counter | `queue`, `type` | jobs put (a retry's next attempt counts as retried, not put) |
//! | `amboy_jobs_started_total` | counter | `queue`, `type` | runs started |
//! | `amboy_jobs_completed_total` | counter | `queue`, `type` | runs that ended without an error |
//! | `amboy_jobs_failed_total` | counter | `queue`, `type` | runs that ended with an error |
//! | `amboy_jobs_retried_total` | counter | `queue`, `type` | next attempts enqueued by a retry handler |
//! | `amboy_jobs_expired_total` | counter | `queue`, `type` | jobs set aside because their `dispatch_by` passed |
//! | `amboy_job_run_seconds` | histogram | `queue`, `type` | how long runs took (start to end) |
//! | `amboy_job_lag_seconds` | histogram | `queue`, `type` | from when a job could first run (put, or its `wait_until`) to its start, recorded when the run ends |
//!
//! The `queue` label is the queue's ID without its unique suffix ([`queue_label`]): the kind of
//! an in-memory queue (`queue.local.limited-size`), the schema and group of a PostgreSQL queue
//! (`amboy.queue`, `amboy.tenant-a`), so that series survive restarts and their number stays
//! bounded. Install the recorder before queues start: handles registered with no recorder
//! installed stay no-ops.
//!
//! The REST service adds the gauge `amboy_queue_jobs{queue, state}` (state: `pending`,
//! `running`, `completed`, `retrying`, `blocked`, `total`), read from the queue's stats at each
//! scrape. Queues and runners call these functions; applications install a recorder (the REST
//! service's Prometheus exporter, or any `metrics` recorder).

use std::time::Duration;

/// `count` jobs of `job_type` were put in `queue`.
#[inline]
pub fn jobs_put(queue: &str, job_type: &str, count: u64) {
    #[cfg(feature = "metrics")]
    handles::with(queue, job_type, |handles| handles.put.increment(count));
    #[cfg(not(feature = "metrics"))]
    let _ = (queue, job_type, count);
}

/// Counts puts by type, for a batch of job types in any order (runs of one type, as batches
/// usually are, cost one lookup each).
pub fn record_puts<'a>(queue: &str, job_types: impl IntoIterator<Item = &'a str>) {
    if !ENABLED {
        return;
    }
    let mut run: Option<(&str, u64)> = None;
    for job_type in job_types {
        match &mut run {
            Some((current, count)) if *current == job_type => *count += 1,
            _ => {
                if let Some((current, count)) = run.take() {
                    jobs_put(queue, current, count);
                }
                run = Some((job_type, 1));
            }
        }
    }
    if let Some((current, count)) = run {
        jobs_put(queue, current, count);
    }
}

/// A run of a job of `queue` started.
#[inline]
pub fn job_started(queue: &str, job_type: &str) {
    #[cfg(feature = "metrics")]
    handles::with(queue, job_type, |handles| handles.started.increment(1));
    #[cfg(not(feature = "metrics"))]
    let _ = (queue, job_type);
}

/// A run of a job of `queue` ended, with an error or not: `lag` from when it could first run
/// to its start, `run_time` from its start to its end.
#[inline]
pub fn job_finished(
    queue: &str,
    job_type: &str,
    lag: Option<Duration>,
    run_time: Option<Duration>,
    failed: bool,
) {
    #[cfg(feature = "metrics")]
    handles::with(queue, job_type, |handles| {
        if failed {
            handles.failed.increment(1);
        } else {
            handles.completed.increment(1);
        }
        if let Some(lag) = lag {
            handles.lag.record(lag.as_secs_f64());
        }
        if let Some(run_time) = run_time {
            handles.run_time.record(run_time.as_secs_f64());
        }
    });
    #[cfg(not(feature = "metrics"))]
    let _ = (queue, job_type, lag, run_time, failed);
}

/// A retry handler enqueued the next attempt of a job of `queue`.
#[inline]
pub fn job_retried(queue: &str, job_type: &str) {
    #[cfg(feature = "metrics")]
    handles::with(queue, job_type, |handles| handles.retried.increment(1));
    #[cfg(not(feature = "metrics"))]
    let _ = (queue, job_type);
}

/// `count` jobs of `queue` expired.
#[inline]
pub fn jobs_expired(queue: &str, job_type: &str, count: u64) {
    #[cfg(feature = "metrics")]
    handles::with(queue, job_type, |handles| handles.expired.increment(count));
    #[cfg(not(feature = "metrics"))]
    let _ = (queue, job_type, count);
}

/// The `queue` label of a queue ID: the ID without a last `.`-separated part that is a UUID
/// (32 hexadecimal digits, with or without dashes), which every queue adds to be unique.
pub fn queue_label(id: &str) -> &str {
    match id.rsplit_once('.') {
        Some((head, tail)) if is_uuid(tail) => head,
        _ => id,
    }
}

fn is_uuid(text: &str) -> bool {
    let digits = text.bytes().filter(|b| *b != b'-').count();
    digits == 32 && text.len() <= 36 && text.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit())
}

/// Whether the metrics are compiled in (the `metrics` feature).
pub const ENABLED: bool = cfg!(feature = "metrics");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_drop_the_unique_suffix() {
        assert_eq!(
            queue_label("queue.local.limited-size.6f1e2d3c-aaaa-bbbb-cccc-0123456789ab"),
            "queue.local.limited-size"
        );
        assert_eq!(
            queue_label("amboy.tenant-a.6f1e2d3caaaabbbbcccc0123456789ab"),
            "amboy.tenant-a"
        );
        assert_eq!(queue_label("my-queue"), "my-queue");
        assert_eq!(queue_label("a.not-a-uuid"), "a.not-a-uuid");
    }
}

#[cfg(feature = "metrics")]
mod handles {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::sync::{Arc, LazyLock};

    use metrics::{Counter, Histogram, counter, histogram};
    use parking_lot::RwLock;

    /// The metrics of one (queue, type), registered once: a run then costs a map lookup and
    /// atomic increments, not a key built from its labels.
    pub(super) struct Handles {
        pub(super) put: Counter,
        pub(super) started: Counter,
        pub(super) completed: Counter,
        pub(super) failed: Counter,
        pub(super) retried: Counter,
        pub(super) expired: Counter,
        pub(super) run_time: Histogram,
        pub(super) lag: Histogram,
    }

    type ByType = HashMap<String, Arc<Handles>>;

    static HANDLES: LazyLock<RwLock<HashMap<String, ByType>>> =
        LazyLock::new(|| RwLock::new(HashMap::new()));

    thread_local! {
        /// The handles this thread used last, by queue ID and type: a worker runs one queue's
        /// jobs, mostly of one type, so most calls find them here without touching the shared
        /// map.
        static LAST: RefCell<Option<(String, String, Arc<Handles>)>> = const { RefCell::new(None) };
    }

    /// Calls `f` with the handles of (`queue`, `job_type`), registering them the first time.
    /// The cache is keyed by the queue's whole ID, so that a hit costs two string
    /// comparisons; the label is worked out on a miss only.
    pub(super) fn with(queue: &str, job_type: &str, f: impl FnOnce(&Handles)) {
        LAST.with(|last| {
            let mut last = last.borrow_mut();
            match &*last {
                Some((q, t, handles)) if t == job_type && q == queue => f(handles),
                _ => {
                    let handles = of(super::queue_label(queue), job_type);
                    f(&handles);
                    *last = Some((queue.to_owned(), job_type.to_owned(), handles));
                }
            }
        });
    }

    fn of(queue: &str, job_type: &str) -> Arc<Handles> {
        if let Some(handles) = HANDLES
            .read()
            .get(queue)
            .and_then(|types| types.get(job_type))
        {
            return handles.clone();
        }
        let labels = [("queue", queue.to_owned()), ("type", job_type.to_owned())];
        let handles = Arc::new(Handles {
            put: counter!("amboy_jobs_put_total", &labels),
            started: counter!("amboy_jobs_started_total", &labels),
            completed: counter!("amboy_jobs_completed_total", &labels),
            failed: counter!("amboy_jobs_failed_total", &labels),
            retried: counter!("amboy_jobs_retried_total", &labels),
            expired: counter!("amboy_jobs_expired_total", &labels),
            run_time: histogram!("amboy_job_run_seconds", &labels),
            lag: histogram!("amboy_job_lag_seconds", &labels),
        });
        HANDLES
            .write()
            .entry(queue.to_owned())
            .or_default()
            .entry(job_type.to_owned())
            .or_insert(handles)
            .clone()
    }
}

//! The options of a PostgreSQL queue (amboy's `MongoDBOptions` and `MongoDBQueueOptions`, on
//! PostgreSQL).

use std::time::Duration;

use amboy_core::{Error, LOCK_TIMEOUT, Result};
use sqlx::PgPool;

use crate::schema::validate_schema_name;

/// How a PostgreSQL queue reaches its database and shares its tables.
///
/// | field | default | meaning |
/// |---|---|---|
/// | `pool` | none | a pool of the application's own (either `pool` or `url`) |
/// | `url` | none | connect with this URL instead (a pool of `max_connections`, opened lazily) |
/// | `max_connections` | 10 | the size of the pool opened from `url`; a pool's size sets how many statements a queue runs at once: claims up to half of it, completions and inserts up to a third each (one to four of each) |
/// | `schema` | `amboy` | the schema holding the tables, created and upgraded by migrations |
/// | `group` | `""` | the queue's name in the shared tables: queues of different groups share the tables and nothing else (amboy's `GroupName`) |
/// | `lock_timeout` | 10 min | how long a job's lock lasts without a heartbeat; then another process may take the job over |
/// | `poll_interval` | 1 s | the longest an idle worker waits before looking for jobs when no notification came |
/// | `claim_batch` | 512 | the most jobs one claim takes (a claim takes what the workers waiting or completing a job want, and what workers take within 100 ms at their recent pace; the buffer is filled up once half empty) |
/// | `complete_batch` | 256 | the most completions written in one statement |
/// | `maintenance_interval` | 1 s | how often deadlines, unresolvable dependencies, stale retrying jobs and retention are looked at |
/// | `retention` | none | delete finished jobs this long after they finished; none keeps them; zero deletes a job in the statement that completes it |
///
/// The pool the queue opens from `url` sets `plan_cache_mode = force_generic_plan` on its
/// connections: PostgreSQL would otherwise plan the claims and completions anew at every call
/// (it expects a plan for the call's number of jobs to be cheaper than the general one), and
/// planning them costs more than running them. Statements of your own on that pool get generic
/// plans too. A pool of your own should set the same, in its connect options:
/// `PgConnectOptions::options([("plan_cache_mode", "force_generic_plan")])`.
///
/// amboy's `CheckWaitUntil`, `CheckDispatchBy` and `SampleSize` have no counterpart: the claim
/// query always filters on both times (through an index), and `FOR UPDATE SKIP LOCKED` keeps
/// concurrent claimers apart without sampling.
#[derive(Debug, Clone)]
pub struct PostgresQueueOptions {
    /// A pool to use (not closed by the queue).
    pub pool: Option<PgPool>,
    /// A URL to connect to when no pool is given.
    pub url: Option<String>,
    /// The size of the pool opened from `url`.
    pub max_connections: u32,
    /// The schema of the tables.
    pub schema: String,
    /// The queue's group in the shared tables.
    pub group: String,
    /// How long a lock lasts without a heartbeat.
    pub lock_timeout: Duration,
    /// The longest wait between looks for jobs when idle.
    pub poll_interval: Duration,
    /// The most jobs one claim takes.
    pub claim_batch: usize,
    /// The most completions one statement writes.
    pub complete_batch: usize,
    /// How often the queue's maintenance runs.
    pub maintenance_interval: Duration,
    /// How long finished jobs are kept; `None` keeps them.
    ///
    /// `Some(Duration::ZERO)` keeps nothing: the statement that completes a job deletes it
    /// (under the same fence as a completion that keeps it, releasing its scopes), so
    /// `get`, `results` and `job_info` no longer find it and the queue's stats count it no
    /// more, as graphile-worker and most job queues do (a `wait_job` for it ends with
    /// `JobOutcome::NotFound` once it completed). A job retrying is not finished and
    /// stays until its retry completes; expired and set-aside jobs are kept until the next
    /// maintenance pass (a job waiting on one is failed first). A job whose edge was deleted
    /// counts the edge as done, but a job put with an edge already deleted is refused (the
    /// edge is unknown). Completions then write no body, and the burn-down benchmark runs
    /// about a quarter faster.
    pub retention: Option<Duration>,
}

impl Default for PostgresQueueOptions {
    fn default() -> Self {
        PostgresQueueOptions {
            pool: None,
            url: None,
            max_connections: 10,
            schema: "amboy".to_owned(),
            group: String::new(),
            lock_timeout: LOCK_TIMEOUT,
            poll_interval: Duration::from_secs(1),
            claim_batch: 512,
            complete_batch: 256,
            maintenance_interval: Duration::from_secs(1),
            retention: None,
        }
    }
}

impl PostgresQueueOptions {
    /// Options for a queue on `pool`.
    pub fn with_pool(pool: PgPool) -> Self {
        PostgresQueueOptions {
            pool: Some(pool),
            ..Self::default()
        }
    }

    /// Options for a queue connecting to `url`.
    pub fn with_url(url: impl Into<String>) -> Self {
        PostgresQueueOptions {
            url: Some(url.into()),
            ..Self::default()
        }
    }

    /// Sets the schema.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Sets the group.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = group.into();
        self
    }

    /// Sets the lock timeout.
    pub fn lock_timeout(mut self, lock_timeout: Duration) -> Self {
        self.lock_timeout = lock_timeout;
        self
    }

    /// Sets the poll interval.
    pub fn poll_interval(mut self, poll_interval: Duration) -> Self {
        self.poll_interval = poll_interval;
        self
    }

    /// Sets the retention of finished jobs.
    pub fn retention(mut self, retention: Option<Duration>) -> Self {
        self.retention = retention;
        self
    }

    /// Whether completions delete the jobs they complete (a retention of zero).
    pub(crate) fn deletes_completed(&self) -> bool {
        self.retention == Some(Duration::ZERO)
    }

    /// Checks the options: a pool or a URL, a valid schema name, non-zero timings and
    /// batches.
    pub fn validate(&self) -> Result<()> {
        if self.pool.is_none() && self.url.is_none() {
            return Err(Error::invalid(
                "a PostgreSQL queue needs a pool or a URL to connect to",
            ));
        }
        validate_schema_name(&self.schema)?;
        for (name, value) in [
            ("lock_timeout", self.lock_timeout),
            ("poll_interval", self.poll_interval),
            ("maintenance_interval", self.maintenance_interval),
        ] {
            if value.is_zero() {
                return Err(Error::invalid(format!("{name} must be more than zero")));
            }
        }
        if self.claim_batch == 0 || self.complete_batch == 0 || self.max_connections == 0 {
            return Err(Error::invalid(
                "claim_batch, complete_batch and max_connections must be more than zero",
            ));
        }
        Ok(())
    }
}

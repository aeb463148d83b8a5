//! [`PostgresManager`]: management answered with SQL on the queue's tables.

use std::fmt;
use std::time::Duration;

use amboy_core::{Error, JobInfo, Result};
use amboy_management::{
    GroupedId, JobCursor, JobDetail, JobPage, JobQuery, JobRecord, JobTypeCount, Manager,
    QueueManager, StatusFilter,
};
use async_trait::async_trait;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Postgres, QueryBuilder, Row as _};
use tokio::sync::OnceCell;

use crate::options::PostgresQueueOptions;
use crate::queue::{PostgresQueue, channel_of, open_pool};
use crate::row::StoredJob;
use crate::schema::{self, JOB_COLUMNS, backend};

/// A [`Manager`] of PostgreSQL queues (amboy's `DBQueueManager`): every operation is one SQL
/// statement on the queue's tables, so that counts and bulk completions never read the jobs
/// into memory, and jobs that another process runs can be completed too.
///
/// It manages one queue (the group its options name, `""` for a queue outside any group) or,
/// with [`every_group`](Self::every_group), every queue of the schema (amboy's `ByGroups`).
///
/// Completing a job sets it completed in the same statement that releases its scopes (and
/// wakes the workers of jobs waiting on it), and advances its modification count by three
/// with its lock's time set to now: the worker that was running it can no longer write it, and
/// its process's next heartbeat cancels the run. Completing ends a retrying job's retries. A
/// job its process had claimed ahead but not yet started may still start; nothing it writes
/// is stored.
///
/// Patterns ([`complete_jobs_by_pattern`](Manager::complete_jobs_by_pattern)) are PostgreSQL
/// regular expressions (its `~` operator), which agree with Rust's `regex` on the usual
/// constructs.
pub struct PostgresManager {
    pool: PgPool,
    schema: String,
    group: Option<String>,
    lock_timeout: Duration,
    channel: String,
    schema_ready: OnceCell<()>,
}

impl fmt::Debug for PostgresManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresManager")
            .field("schema", &self.schema)
            .field("group", &self.group)
            .field("lock_timeout", &self.lock_timeout)
            .finish()
    }
}

impl PostgresManager {
    /// A manager of the queue `options` describe: its database (pool or URL), schema, group
    /// and lock timeout (staleness is judged with it).
    pub fn new(options: PostgresQueueOptions) -> Result<Self> {
        options.validate()?;
        let pool = match (&options.pool, &options.url) {
            (Some(pool), _) => pool.clone(),
            (None, Some(url)) => open_pool(url, options.max_connections)?,
            (None, None) => unreachable!("validated"),
        };
        Ok(PostgresManager {
            pool,
            channel: channel_of(&options.schema),
            schema: options.schema,
            group: Some(options.group),
            lock_timeout: options.lock_timeout,
            schema_ready: OnceCell::new(),
        })
    }

    /// A manager of `queue`, on its pool.
    pub fn for_queue(queue: &PostgresQueue) -> Self {
        let mut options = queue.options().clone();
        options.pool = Some(queue.pool().clone());
        Self::new(options).expect("a queue's options are valid")
    }

    /// Manages every queue (group) of the schema.
    pub fn every_group(mut self) -> Self {
        self.group = None;
        self
    }

    /// Judges staleness with `lock_timeout`.
    pub fn with_lock_timeout(mut self, lock_timeout: Duration) -> Self {
        self.lock_timeout = lock_timeout;
        self
    }

    async fn ready(&self) -> Result<()> {
        self.schema_ready
            .get_or_try_init(|| schema::migrate(&self.pool, &self.schema))
            .await
            .map(|_| ())
    }

    /// The opening of a statement: for a manager of every group looking a job up by ID, the
    /// groups of the table as `groups(name)`, found by a loose walk of the primary key (one
    /// index probe per group, where a lookup by ID alone would scan the table).
    fn open(&self, by_id: bool, more_ctes: bool) -> QueryBuilder<Postgres> {
        let s = &self.schema;
        if self.group.is_none() && by_id {
            let comma = if more_ctes { "," } else { "" };
            QueryBuilder::new(format!(
                "WITH RECURSIVE groups(name) AS ( \
                   SELECT min(queue_group) FROM {s}.jobs \
                   UNION ALL \
                   SELECT (SELECT min(queue_group) FROM {s}.jobs WHERE queue_group > g.name) \
                   FROM groups g WHERE g.name IS NOT NULL){comma} "
            ))
        } else if more_ctes {
            QueryBuilder::new("WITH ")
        } else {
            QueryBuilder::new("")
        }
    }

    /// `AND`s the manager's group to a statement's conditions.
    fn push_group(&self, query: &mut QueryBuilder<Postgres>, by_id: bool) {
        match &self.group {
            Some(group) => {
                query.push(" AND j.queue_group = ").push_bind(group.clone());
            }
            None if by_id => {
                query
                    .push(" AND j.queue_group IN (SELECT name FROM groups WHERE name IS NOT NULL)");
            }
            None => {}
        }
    }

    /// `AND`s a filter to a statement's conditions.
    fn push_filter(&self, query: &mut QueryBuilder<Postgres>, filter: StatusFilter) {
        let stale = |query: &mut QueryBuilder<Postgres>| {
            query
                .push(" now() - ")
                .push_bind(self.lock_timeout)
                .push("::interval");
        };
        match filter {
            StatusFilter::Pending => {
                query.push(" AND j.state = 0");
            }
            StatusFilter::InProgress => {
                query.push(" AND j.state = 1");
            }
            StatusFilter::Stale => {
                query.push(" AND j.state = 1 AND j.lock_ts <=");
                stale(query);
            }
            StatusFilter::Completed => {
                query.push(" AND j.state IN (2, 3, 5)");
            }
            StatusFilter::Retrying => {
                query.push(" AND j.state = 3");
            }
            StatusFilter::StaleRetrying => {
                query.push(" AND j.state = 3 AND (j.lock_ts IS NULL OR j.lock_ts <=");
                stale(query);
                query.push(")");
            }
            StatusFilter::Expired => {
                query.push(" AND j.state = 4");
            }
            StatusFilter::SetAside => {
                query.push(" AND j.state = 5");
            }
            StatusFilter::All => {}
        }
    }

    /// Completes the unfinished jobs passing `filter` and what `more` adds; returns how many.
    async fn complete_where(
        &self,
        filter: StatusFilter,
        by_id: bool,
        more: impl Fn(&mut QueryBuilder<Postgres>),
    ) -> Result<u64> {
        self.ready().await?;
        // A completion of many jobs can deadlock with a worker taking one job's dispatch scopes
        // (each holds a row the other wants): the server cancels one, and this one is run again.
        let mut tries = 0;
        loop {
            tries += 1;
            match self.complete_once(filter, by_id, &more).await {
                Err((error, _)) if tries < 4 && is_deadlock(&error) => continue,
                Err((error, Doing::Completing)) => return Err(complete_error(error)),
                Err((error, Doing::Other(doing))) => return Err(backend(doing)(error)),
                Ok(completed) => return Ok(completed),
            }
        }
    }

    /// One transaction of [`complete_where`](Self::complete_where).
    async fn complete_once(
        &self,
        filter: StatusFilter,
        by_id: bool,
        more: &impl Fn(&mut QueryBuilder<Postgres>),
    ) -> std::result::Result<u64, (sqlx::Error, Doing)> {
        let s = &self.schema;
        let mut query = self.open(by_id, true);
        query.push(format!(
            "done AS ( \
               UPDATE {s}.jobs j SET state = 2, mod_count = j.mod_count + 3, lock_ts = now(), \
                   finished = now() \
               WHERE j.state IN (0, 1, 3)"
        ));
        self.push_group(&mut query, by_id);
        self.push_filter(&mut query, filter);
        more(&mut query);
        query.push(format!(
            " RETURNING j.queue_group, j.id, j.attempt, j.dependents), \
             freed AS ( \
               DELETE FROM {s}.scopes h USING done d \
               WHERE h.queue_group = d.queue_group AND h.job_id = d.id AND h.attempt = d.attempt \
               RETURNING h.queue_group), \
             wake AS ( \
               SELECT pg_notify("
        ));
        query.push_bind(self.channel.clone()).push(
            ", w.g) FROM (SELECT queue_group FROM freed \
               UNION SELECT queue_group FROM done WHERE dependents) AS w(g)) \
             SELECT (SELECT count(*) FROM done), (SELECT count(*) FROM wake)",
        );
        let other = |doing| move |error| (error, Doing::Other(doing));
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(other("begin a completion"))?;
        let row = query
            .build()
            .fetch_one(&mut *tx)
            .await
            .map_err(|error| (error, Doing::Completing))?;
        let completed: i64 = row.try_get(0).map_err(other("read a completion"))?;
        if completed > 0 {
            // The statement above freed the scopes it saw when it started. A worker taking a
            // job's dispatch scopes holds the job's row meanwhile, so the statement waited for
            // it, but did not see the scopes it took: a second statement, which sees them,
            // frees the scopes of the jobs this transaction completed (`finished` is `now()`,
            // the transaction's time, for those).
            let mut free = QueryBuilder::new(format!(
                "WITH freed AS ( \
                   DELETE FROM {s}.scopes h USING {s}.jobs j \
                   WHERE j.state = 2 AND j.finished = now() AND h.queue_group = j.queue_group \
                     AND h.job_id = j.id AND h.attempt = j.attempt"
            ));
            if let Some(group) = &self.group {
                free.push(" AND j.queue_group = ").push_bind(group.clone());
            }
            free.push(" RETURNING h.queue_group) SELECT count(*) FROM (SELECT pg_notify(")
                .push_bind(self.channel.clone())
                .push(", w.g) FROM (SELECT DISTINCT queue_group FROM freed) AS w(g)) AS n");
            free.build()
                .fetch_one(&mut *tx)
                .await
                .map_err(other("free the scopes of completed jobs"))?;
        }
        tx.commit().await.map_err(other("commit a completion"))?;
        Ok(completed as u64)
    }

    /// Every attempt of job `id` in the manager's group(s), by group then attempt.
    async fn attempts(&self, id: &str) -> Result<Vec<(String, StoredJob)>> {
        self.ready().await?;
        let mut query = self.open(true, false);
        query.push(format!(
            "SELECT {JOB_COLUMNS}, j.queue_group FROM {}.jobs j WHERE j.id = ",
            self.schema
        ));
        query.push_bind(id.to_owned());
        self.push_group(&mut query, true);
        query.push(" ORDER BY j.queue_group, j.attempt");
        let rows = query
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(backend("read a job's attempts"))?;
        let attempts = rows
            .iter()
            .map(grouped_job)
            .collect::<sqlx::Result<Vec<_>>>()
            .map_err(backend("read a job's attempts"))?;
        if attempts.is_empty() {
            return Err(Error::job_not_found_because(id, "no job has this ID"));
        }
        let first_group = &attempts[0].0;
        if let Some((other, _)) = attempts.iter().find(|(group, _)| group != first_group) {
            return Err(Error::invalid_job(
                id,
                format!(
                    "jobs of groups '{first_group}' and '{other}' have this ID: manage one \
                     group at a time"
                ),
            ));
        }
        Ok(attempts)
    }
}

/// A job row followed by its group.
fn grouped_job(row: &PgRow) -> sqlx::Result<(String, StoredJob)> {
    let group: String = row.try_get(9)?;
    Ok((group, StoredJob::read(row)?))
}

/// What a completion was doing when it failed.
enum Doing {
    /// Its statement: its error may be the caller's (a bad pattern).
    Completing,
    Other(&'static str),
}

/// Whether the server cancelled a statement to break a deadlock.
fn is_deadlock(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(database)
        if database.code().as_deref() == Some("40P01"))
}

/// A completion's error: a bad pattern is the caller's mistake.
fn complete_error(error: sqlx::Error) -> Error {
    if let sqlx::Error::Database(database) = &error
        && database.code().as_deref() == Some("2201B")
    {
        return Error::invalid(format!("not a regular expression: {}", database.message()));
    }
    backend("complete jobs")(error)
}

#[async_trait]
impl Manager for PostgresManager {
    async fn job_status(&self, filter: StatusFilter) -> Result<Vec<JobTypeCount>> {
        self.ready().await?;
        let mut query = QueryBuilder::new(format!(
            "SELECT j.queue_group, j.job_type, count(*) FROM {}.jobs j WHERE true",
            self.schema
        ));
        self.push_group(&mut query, false);
        self.push_filter(&mut query, filter);
        query.push(" GROUP BY 1, 2 ORDER BY 1, 2");
        let rows: Vec<(String, String, i64)> = query
            .build_query_as()
            .fetch_all(&self.pool)
            .await
            .map_err(backend("count jobs"))?;
        Ok(rows
            .into_iter()
            .map(|(group, job_type, count)| JobTypeCount {
                job_type,
                group,
                count: count as u64,
            })
            .collect())
    }

    async fn job_ids_by_state(
        &self,
        job_type: &str,
        filter: StatusFilter,
    ) -> Result<Vec<GroupedId>> {
        self.ready().await?;
        let mut query = QueryBuilder::new(format!(
            "SELECT DISTINCT j.queue_group, j.id FROM {}.jobs j WHERE j.job_type = ",
            self.schema
        ));
        query.push_bind(job_type.to_owned());
        self.push_group(&mut query, false);
        self.push_filter(&mut query, filter);
        query.push(" ORDER BY 1, 2");
        let rows: Vec<(String, String)> = query
            .build_query_as()
            .fetch_all(&self.pool)
            .await
            .map_err(backend("list job IDs"))?;
        Ok(rows
            .into_iter()
            .map(|(group, id)| GroupedId { id, group })
            .collect())
    }

    async fn complete_job(&self, id: &str) -> Result<()> {
        // A completion that waited for an attempt's row (a retry committing the next attempt)
        // does not see the attempts committed meanwhile: it is run again, with a fresh view,
        // until every attempt is finished. Each round completes whatever it sees, so only a
        // retry racing it adds another; a few rounds are plenty.
        for _ in 0..8 {
            self.complete_where(StatusFilter::All, true, |query| {
                query.push(" AND j.id = ").push_bind(id.to_owned());
            })
            .await?;
            let mut query = self.open(true, false);
            query.push(format!(
                "SELECT count(*), count(*) FILTER (WHERE j.state IN (0, 1, 3)) \
                 FROM {}.jobs j WHERE j.id = ",
                self.schema
            ));
            query.push_bind(id.to_owned());
            self.push_group(&mut query, true);
            let (attempts, unfinished): (i64, i64) = query
                .build_query_as()
                .fetch_one(&self.pool)
                .await
                .map_err(backend("read a job's attempts"))?;
            if attempts == 0 {
                return Err(Error::job_not_found_because(id, "no job has this ID"));
            }
            if unfinished == 0 {
                return Ok(());
            }
        }
        Err(Error::invalid_job(
            id,
            "its attempts kept changing while it was completed: try again",
        ))
    }

    async fn complete_jobs(&self, filter: StatusFilter) -> Result<u64> {
        self.complete_where(filter, false, |_| {}).await
    }

    async fn complete_jobs_by_type(&self, filter: StatusFilter, job_type: &str) -> Result<u64> {
        self.complete_where(filter, false, |query| {
            query
                .push(" AND j.job_type = ")
                .push_bind(job_type.to_owned());
        })
        .await
    }

    async fn complete_jobs_by_pattern(&self, filter: StatusFilter, pattern: &str) -> Result<u64> {
        // The server compiles a pattern only when it first matches it against a row: checked
        // first, so that a bad one is refused however many rows there are.
        self.ready().await?;
        sqlx::query("SELECT '' ~ $1")
            .bind(pattern)
            .execute(&self.pool)
            .await
            .map_err(complete_error)?;
        self.complete_where(filter, false, |query| {
            query.push(" AND j.id ~ ").push_bind(pattern.to_owned());
        })
        .await
    }

    async fn list_jobs(&self, query: &JobQuery) -> Result<JobPage> {
        query.validate()?;
        self.ready().await?;
        let mut sql = QueryBuilder::new(format!(
            "SELECT {JOB_COLUMNS}, j.queue_group FROM {}.jobs j WHERE true",
            self.schema
        ));
        self.push_group(&mut sql, false);
        if let Some(group) = &query.group {
            sql.push(" AND j.queue_group = ").push_bind(group.clone());
        }
        self.push_filter(&mut sql, query.filter);
        if let Some(job_type) = &query.job_type {
            sql.push(" AND j.job_type = ").push_bind(job_type.clone());
        }
        let created = "(j.body::json->'time_info'->>'created')::timestamptz";
        if let Some(after) = query.created_after {
            sql.push(format!(" AND {created} >= ")).push_bind(after);
        }
        if let Some(before) = query.created_before {
            sql.push(format!(" AND {created} < ")).push_bind(before);
        }
        if let Some(cursor) = &query.after {
            sql.push(" AND (j.queue_group, j.id, j.attempt) > (")
                .push_bind(cursor.group.clone())
                .push(", ")
                .push_bind(cursor.id.clone())
                .push(", ")
                .push_bind(i32::try_from(cursor.attempt).unwrap_or(i32::MAX))
                .push(")");
        }
        sql.push(" ORDER BY j.queue_group, j.id, j.attempt LIMIT ")
            .push_bind(query.limit as i64 + 1);
        let rows = sql
            .build()
            .fetch_all(&self.pool)
            .await
            .map_err(backend("list jobs"))?;
        let mut jobs = rows
            .iter()
            .map(|row| {
                let (group, stored) = grouped_job(row)?;
                Ok(JobRecord {
                    group,
                    info: stored.info(),
                })
            })
            .collect::<sqlx::Result<Vec<_>>>()
            .map_err(backend("list jobs"))?;
        let more = jobs.len() > query.limit;
        jobs.truncate(query.limit);
        let next = more.then(|| {
            let last = jobs.last().expect("a full page");
            JobCursor {
                group: last.group.clone(),
                id: last.info.id.clone(),
                // The row's attempt, which `info` reports even for a body that does not decode.
                attempt: last.info.retry.current_attempt,
            }
        });
        Ok(JobPage { jobs, next })
    }

    async fn job(&self, id: &str) -> Result<JobDetail> {
        let attempts = self.attempts(id).await?;
        let (group, latest) = attempts.last().expect("a job has an attempt");
        let job = latest.envelope().ok().map(|mut envelope| {
            envelope.group = group.clone();
            envelope
        });
        Ok(JobDetail {
            group: group.clone(),
            id: id.to_owned(),
            attempts: attempts.iter().map(|(_, stored)| stored.info()).collect(),
            job,
        })
    }

    async fn requeue_job(&self, id: &str) -> Result<JobInfo> {
        let attempts = self.attempts(id).await?;
        let (group, latest) = attempts.last().expect("a job has an attempt");
        if latest.state == schema::SET_ASIDE {
            return Err(Error::invalid_job(
                id,
                "it was set aside because it cannot be decoded; it cannot run again",
            ));
        }
        // The queue's own put: the next attempt is checked and stored as any put is.
        let queue = PostgresQueue::new(
            PostgresQueueOptions::with_pool(self.pool.clone())
                .schema(self.schema.clone())
                .group(group.clone())
                .lock_timeout(self.lock_timeout),
        )?;
        QueueManager::new(queue).requeue_job(id).await
    }
}

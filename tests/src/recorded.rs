//! Jobs that record their runs in the database, for the tests that run one PostgreSQL queue in
//! several worker processes (the `pg_worker` binary) or several queue instances: each run
//! writes a row of its own, in a transaction of its own, into tables of the test's schema, so a
//! test counts executions (and sees who ran what, and when) whichever process ran them.
//!
//! A process that runs these jobs first [`register`]s a pool for the schema; the jobs find it
//! by the schema they name.

use std::str::FromStr as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use amboy::{Base, Job, JobContext, JobError};
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, PgPool};

/// How a process records the runs of the jobs of one schema.
#[derive(Debug)]
struct Recorder {
    pool: PgPool,
    /// The run (counted from 0 in this process) that records itself and then hangs until
    /// cancelled, leaving its job in progress.
    stall_at: Option<u64>,
    runs: AtomicU64,
}

static RECORDERS: LazyLock<DashMap<String, Arc<Recorder>>> = LazyLock::new(DashMap::new);

/// Records the runs of the jobs naming `schema` through `pool`. With `stall_after = Some(n)`,
/// the run after the first `n` of this process records itself and then hangs until its job is
/// cancelled: its job stays in progress, held by this process, for as long as it lives.
pub fn register(schema: &str, pool: PgPool, stall_after: Option<u64>) {
    RECORDERS.insert(
        schema.to_owned(),
        Arc::new(Recorder {
            pool,
            stall_at: stall_after,
            runs: AtomicU64::new(0),
        }),
    );
}

/// A pool of `max_connections` on the test server, its connections named `app` (so that a test
/// can find them in `pg_stat_activity`). Its commits do not wait for the disk
/// (`synchronous_commit = off`): a committed row is visible at once and would be lost only if
/// the server itself crashed, which these tests never make it do; what they check (locks,
/// fencing, take-overs, counts) is the same, and the shared machine's disk does not set their
/// pace.
pub fn pool(app: &str, max_connections: u32) -> PgPool {
    let connect = PgConnectOptions::from_str(&crate::postgres::url())
        .expect("the test server's URL")
        .application_name(app)
        .options([("synchronous_commit", "off")]);
    PgPoolOptions::new()
        .max_connections(max_connections)
        .connect_lazy_with(connect)
}

/// Stops recording the runs of the jobs naming `schema`, closing the pool [`register`] got.
pub async fn forget(schema: &str) {
    if let Some((_, recorder)) = RECORDERS.remove(schema) {
        recorder.pool.close().await;
    }
}

fn recorder(schema: &str) -> Result<Arc<Recorder>, JobError> {
    RECORDERS
        .get(schema)
        .map(|entry| entry.clone())
        .ok_or_else(|| JobError::new(format!("no recorder registered for schema '{schema}'")))
}

/// Creates the tables the jobs record into, in `schema` (which must exist: migrate the queue
/// first):
///
/// * `ran (job_id, pid, owner, at, stalled)`: one row per run; `owner` is the ID of the queue
///   instance that dispatched it, `at` the database's clock when the run began;
/// * `scope_load (scope, holders, max_seen)`: how many [`ScopedRun`]s run inside each scope,
///   and the most ever seen at once.
pub async fn create_tables(pool: &PgPool, schema: &str) -> sqlx::Result<()> {
    let sql = format!(
        "CREATE TABLE {schema}.ran (job_id text NOT NULL, pid integer NOT NULL, owner text, \
             at timestamptz NOT NULL DEFAULT clock_timestamp(), \
             stalled boolean NOT NULL DEFAULT false); \
         CREATE INDEX ran_job ON {schema}.ran (job_id); \
         CREATE TABLE {schema}.scope_load (scope text PRIMARY KEY, \
             holders integer NOT NULL DEFAULT 0, max_seen integer NOT NULL DEFAULT 0)"
    );
    sqlx::raw_sql(AssertSqlSafe(sql)).execute(pool).await?;
    Ok(())
}

/// Writes the row of one run.
async fn record(
    recorder: &Recorder,
    schema: &str,
    base: &Base,
    stalled: bool,
) -> Result<(), JobError> {
    let owner = base.status().owner.map(|owner| owner.to_string());
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {schema}.ran (job_id, pid, owner, stalled) VALUES ($1, $2, $3, $4)"
    )))
    .bind(base.id())
    .bind(std::process::id() as i32)
    .bind(owner)
    .bind(stalled)
    .execute(&recorder.pool)
    .await?;
    Ok(())
}

/// Records its run and returns (or, as its process's stalling run, hangs until cancelled).
#[derive(Debug, Serialize, Deserialize)]
pub struct RecordRun {
    /// Metadata.
    pub base: Base,
    /// The schema of the `ran` table (and of the queue).
    pub schema: String,
}

impl RecordRun {
    /// A recording job with this ID.
    pub fn new(id: impl AsRef<str>, schema: &str) -> Arc<Self> {
        Arc::new(RecordRun {
            base: Base::with_id(id),
            schema: schema.to_owned(),
        })
    }
}

#[typetag::serde(name = "test-record-run")]
#[async_trait::async_trait]
impl Job for RecordRun {
    fn base(&self) -> &Base {
        &self.base
    }

    async fn run(&self, ctx: &JobContext) -> Result<(), JobError> {
        let recorder = recorder(&self.schema)?;
        let run = recorder.runs.fetch_add(1, Ordering::SeqCst);
        let stall = recorder.stall_at == Some(run);
        record(&recorder, &self.schema, &self.base, stall).await?;
        if stall {
            ctx.cancelled().await;
            return Err(JobError::new("stalled run cancelled"));
        }
        Ok(())
    }
}

/// Runs inside one scope for `hold_ms`, counting itself among the scope's holders in the
/// database meanwhile (each change in its own transaction), then records its run.
#[derive(Debug, Serialize, Deserialize)]
pub struct ScopedRun {
    /// Metadata; its scopes are `[scope]`.
    pub base: Base,
    /// The schema of the tables.
    pub schema: String,
    /// The scope it holds.
    pub scope: String,
    /// How long it holds the scope, in milliseconds.
    pub hold_ms: u64,
}

impl ScopedRun {
    /// A job with this ID holding `scope` for `hold_ms`.
    pub fn new(id: impl AsRef<str>, schema: &str, scope: &str, hold_ms: u64) -> Arc<Self> {
        Arc::new(ScopedRun {
            base: Base::with_id(id).with_scopes([scope]),
            schema: schema.to_owned(),
            scope: scope.to_owned(),
            hold_ms,
        })
    }
}

#[typetag::serde(name = "test-scoped-run")]
#[async_trait::async_trait]
impl Job for ScopedRun {
    fn base(&self) -> &Base {
        &self.base
    }

    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        let recorder = recorder(&self.schema)?;
        let schema = &self.schema;
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE {schema}.scope_load SET holders = holders + 1, \
                 max_seen = greatest(max_seen, holders + 1) WHERE scope = $1"
        )))
        .bind(&self.scope)
        .execute(&recorder.pool)
        .await?;
        tokio::time::sleep(Duration::from_millis(self.hold_ms)).await;
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE {schema}.scope_load SET holders = holders - 1 WHERE scope = $1"
        )))
        .bind(&self.scope)
        .execute(&recorder.pool)
        .await?;
        record(&recorder, schema, &self.base, false).await
    }
}

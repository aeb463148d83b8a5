//! The schema: its versioned migrations and the statements the queue runs on it.

use std::sync::Arc;

use amboy_core::{Error, Result};
use parking_lot::Mutex;
use sqlx::{AssertSqlSafe, PgPool};

/// A job waiting to run.
pub(crate) const PENDING: i16 = 0;
/// A job dispatched to a worker (in progress).
pub(crate) const RUNNING: i16 = 1;
/// A job that finished.
pub(crate) const COMPLETED: i16 = 2;
/// A finished job waiting for its next attempt.
pub(crate) const RETRYING: i16 = 3;
/// A job whose `dispatch_by` deadline passed before it ran.
pub(crate) const EXPIRED: i16 = 4;
/// A stored job that cannot be decoded (unknown type, other version, bad body), set aside.
pub(crate) const SET_ASIDE: i16 = 5;

/// The migrations, in order; `{s}` is the schema. Each runs once, in the transaction that
/// records it; never edit one that shipped, add another.
const MIGRATIONS: &[&str] = &[
    // 1: jobs, their held scopes, the indexes of claiming and reporting. Names compare
    // bytewise (`COLLATE "C"`): keys are identifiers, not prose, and the keys' indexes are
    // walked on every claim and completion. The primary key does not deduplicate: its keys
    // are unique, and the only duplicates it sees are the versions each claim and completion
    // write, which deduplication merges into posting lists only for them to die soon after
    // (turning it off made claiming and completing about 15 % cheaper on the server).
    r#"
CREATE TABLE {s}.jobs (
    queue_group text COLLATE "C" NOT NULL,
    id text COLLATE "C" NOT NULL,
    attempt integer NOT NULL,
    state smallint NOT NULL,
    job_type text NOT NULL,
    priority integer NOT NULL DEFAULT 0,
    ready_at timestamptz NOT NULL,
    dispatch_by timestamptz,
    owner text,
    mod_count bigint NOT NULL DEFAULT 0,
    claim bigint,
    lock_ts timestamptz,
    finished timestamptz,
    dependents boolean NOT NULL DEFAULT false,
    edges text[],
    scopes text[],
    failure text,
    body text NOT NULL,
    PRIMARY KEY (queue_group, id, attempt) WITH (deduplicate_items = off)
);
CREATE INDEX jobs_pending ON {s}.jobs (queue_group, priority DESC, ready_at) WHERE state = 0;
CREATE INDEX jobs_running ON {s}.jobs (queue_group, lock_ts) WHERE state = 1;
CREATE INDEX jobs_retrying ON {s}.jobs (queue_group, lock_ts) WHERE state = 3;
CREATE INDEX jobs_dispatch_by ON {s}.jobs (queue_group, dispatch_by)
    WHERE state = 0 AND dispatch_by IS NOT NULL;
CREATE INDEX jobs_waiting ON {s}.jobs (queue_group) WHERE state = 0 AND edges IS NOT NULL;
CREATE INDEX jobs_finished ON {s}.jobs (queue_group, finished) WHERE state IN (2, 4, 5);
CREATE TABLE {s}.scopes (
    queue_group text COLLATE "C" NOT NULL,
    scope text COLLATE "C" NOT NULL,
    job_id text COLLATE "C" NOT NULL,
    attempt integer NOT NULL,
    PRIMARY KEY (queue_group, scope)
);
CREATE INDEX scopes_holder ON {s}.scopes (queue_group, job_id, attempt);
"#,
];

/// The number of migrations this version of the crate knows.
pub(crate) const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// Checks a schema name: a lowercase SQL identifier, so that it needs no quoting and cannot
/// inject anything into a statement.
pub(crate) fn validate_schema_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    if !first_ok
        || name.len() > 48
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(Error::invalid(format!(
            "schema name '{name}' must be a lowercase SQL identifier (a-z, 0-9, _; not starting \
             with a digit; at most 48 characters)"
        )));
    }
    Ok(())
}

/// Creates the schema or brings it up to date, once per database however many processes start
/// at the same time: the migrations run under a transaction-scoped advisory lock keyed by the
/// schema name, each in the transaction that records it. A schema newer than this crate is an
/// error (an older binary must not write to it).
pub(crate) async fn migrate(pool: &PgPool, schema: &str) -> Result<()> {
    let mut tx = pool.begin().await.map_err(backend("begin the migration"))?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('amboy migrations ' || $1, 0))")
        .bind(schema)
        .execute(&mut *tx)
        .await
        .map_err(backend("take the migration lock"))?;
    let setup = format!(
        "CREATE SCHEMA IF NOT EXISTS {schema}; \
         CREATE TABLE IF NOT EXISTS {schema}.migrations ( \
             version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
    );
    sqlx::raw_sql(AssertSqlSafe(setup))
        .execute(&mut *tx)
        .await
        .map_err(backend("create the schema"))?;
    let applied: Option<i32> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT max(version) FROM {schema}.migrations"
    )))
    .fetch_one(&mut *tx)
    .await
    .map_err(backend("read the schema version"))?;
    let applied = applied.unwrap_or(0);
    if applied > SCHEMA_VERSION {
        return Err(Error::invalid(format!(
            "schema '{schema}' is at version {applied}, newer than this amboy's {SCHEMA_VERSION}: \
             upgrade amboy-queue-postgres"
        )));
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
        let version = index as i32 + 1;
        sqlx::raw_sql(AssertSqlSafe(migration.replace("{s}", schema)))
            .execute(&mut *tx)
            .await
            .map_err(backend("run a migration"))?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {schema}.migrations (version) VALUES ($1)"
        )))
        .bind(version)
        .execute(&mut *tx)
        .await
        .map_err(backend("record a migration"))?;
        tracing::info!(schema, version, "applied amboy migration");
    }
    tx.commit()
        .await
        .map_err(backend("commit the migrations"))?;
    Ok(())
}

/// Maps a database error to the queue's error, saying what was being done.
pub(crate) fn backend(doing: &'static str) -> impl Fn(sqlx::Error) -> Error {
    move |error| Error::backend(format!("postgres: could not {doing}: {error}"), error)
}

/// The statements of one queue, built once for its schema: sqlx prepares each once per
/// connection.
#[derive(Debug)]
pub(crate) struct Statements {
    pub(crate) insert_many: Arc<str>,
    pub(crate) insert_new: Arc<str>,
    pub(crate) insert_one: Arc<str>,
    pub(crate) take_scopes: Arc<str>,
    pub(crate) take_dispatch_scopes: Arc<str>,
    pub(crate) scope_holders: Arc<str>,
    pub(crate) edge_states: Arc<str>,
    pub(crate) mark_dependents: Arc<str>,
    pub(crate) get_latest: Arc<str>,
    pub(crate) get_attempt: Arc<str>,
    pub(crate) get_attempt_exists: Arc<str>,
    pub(crate) get_all_attempts: Arc<str>,
    /// The claim, with `{limit}` for the number of jobs (see [`Statements::claim`]).
    claim: String,
    /// The claim statements made so far, by their limit.
    claims: Mutex<Vec<(usize, Arc<str>)>>,
    pub(crate) release: Arc<str>,
    pub(crate) release_claim: Arc<str>,
    pub(crate) set_aside: Arc<str>,
    pub(crate) set_aside_retrying: Arc<str>,
    pub(crate) heartbeat: Arc<str>,
    pub(crate) save: Arc<str>,
    pub(crate) complete_many: Arc<str>,
    /// [`complete_many`](Self::complete_many) finding each row at the address it was last
    /// seen at, where `complete_many` walks the primary key.
    pub(crate) complete_at: Arc<str>,
    pub(crate) move_scopes: Arc<str>,
    pub(crate) free_scopes: Arc<str>,
    pub(crate) stats: Arc<str>,
    pub(crate) page: Arc<str>,
    pub(crate) stale_retrying: Arc<str>,
    pub(crate) expire: Arc<str>,
    pub(crate) fail_dependents: Arc<str>,
    pub(crate) sweep: Arc<str>,
}

/// The columns a job is read with, in the order [`crate::row`] reads them.
pub(crate) const JOB_COLUMNS: &str = "j.id, j.attempt, j.state, j.owner, j.mod_count, j.lock_ts, j.failure, j.job_type, j.body::text";

impl Statements {
    /// The claim of at most `limit` jobs. The limit is written into the statement, not bound:
    /// with a bound limit the planner cannot cost a generic plan, and plans every claim anew
    /// (about a millisecond each, more than running it); with a constant one the plan is made
    /// once per connection. Callers use a few limits (powers of two), so each connection
    /// prepares a few statements.
    pub(crate) fn claim(&self, limit: usize) -> Arc<str> {
        let mut claims = self.claims.lock();
        if let Some((_, sql)) = claims.iter().find(|(made, _)| *made == limit) {
            return sql.clone();
        }
        let sql: Arc<str> = Arc::from(self.claim.replace("{limit}", &limit.to_string()));
        claims.push((limit, sql.clone()));
        sql
    }

    /// The statements of a queue on `schema`. With `delete_completed` (a retention of zero),
    /// a completion deletes the jobs it completes rather than keeping them finished.
    pub(crate) fn new(schema: &str, delete_completed: bool) -> Self {
        let s = schema;
        let cols = JOB_COLUMNS;
        // Who may write a stored job (amboy's atomic query): this queue ($me) holds its lock
        // and the writer's count is at most one ahead of the stored one, or nobody holds an
        // unexpired lock on it. Judged on the database's clock.
        // A completed job (state 2) is final: only its owner's write under its lock passes,
        // however old the lock, so that a worker still running a job that management
        // completed cannot write it back even after the lock timed out.
        let fence = "(j.owner = $me AND j.mod_count IN (v.count, v.count - 1) \
                     OR j.state <> 2 AND (j.lock_ts IS NULL \
                       OR j.lock_ts <= now() - $lock_timeout::interval))";
        let build = |sql: String| -> Arc<str> {
            Arc::from(
                sql.replace("{s}", s)
                    .replace("{cols}", cols)
                    .replace("{fence}", fence)
                    .replace("$lock_timeout", "$3")
                    .replace("$me", "$2"),
            )
        };
        let build_str = |sql: String| -> String { build(sql).to_string() };
        // $1 group, $2 owner, $3 lock timeout, $4 channel; one row per job: its count before
        // completion, new state, body (NULL: the stored one stays), whether it held scopes, the
        // enqueue scopes a retrying job keeps, where its row was last seen (`ctid`, or NULL),
        // and why it failed, when the queue failed it (NULL: the stored reason stays). The
        // scopes are released in the same statement; one notification wakes workers when scopes
        // were freed or jobs wait on these. `{find}` says how rows are found: by key, or at their address checked
        // against the key (a row that moved since is not found there; it is then written by
        // key). `{done}` writes the rows: an update, or with a retention of zero an update of
        // the retrying ones and a delete of the completed ones (under the same fence), whose
        // body the caller then leaves empty. It returns the place (from 1) of each row written
        // in the arrays.
        let by_key = "j.queue_group = $1 AND j.id = v.id AND j.attempt = v.attempt";
        let update = "UPDATE {s}.jobs j SET state = v.state, owner = $2, \
                   mod_count = v.count + 1, lock_ts = now(), body = coalesce(v.body, j.body), \
                   finished = CASE WHEN v.state = 2 THEN now() END, \
                   failure = coalesce(v.failure, j.failure) \
               FROM v \
               WHERE {find} AND j.state <> 4 AND {fence} {only} \
               RETURNING j.id, j.attempt, v.scoped, v.keep, j.dependents, v.n";
        let done = if delete_completed {
            format!(
                "kept AS ({}), \
                 gone AS ( \
                   DELETE FROM {{s}}.jobs j USING v \
                   WHERE {{find}} AND j.state <> 4 AND v.state = 2 AND {{fence}} \
                   RETURNING j.id, j.attempt, v.scoped, v.keep, j.dependents, v.n), \
                 done AS ((SELECT * FROM kept) UNION ALL (SELECT * FROM gone))",
                update.replace("{only}", "AND v.state <> 2")
            )
        } else {
            format!("done AS ({})", update.replace("{only}", ""))
        };
        let complete = "WITH v AS ( \
               SELECT * FROM unnest($5::text[], $6::int[], $7::bigint[], $8::smallint[], \
                   $9::text[], $10::bool[], $11::text[], $12::text[]::tid[], $13::text[]) \
                   WITH ORDINALITY \
                   AS v(id, attempt, count, state, body, scoped, keep, addr, failure, n)), \
             {done}, \
             freed AS ( \
               DELETE FROM {s}.scopes h USING done d \
               WHERE d.scoped AND h.queue_group = $1 AND h.job_id = d.id \
                 AND h.attempt = d.attempt \
                 AND (d.keep IS NULL OR NOT h.scope = ANY( \
                   ARRAY(SELECT json_array_elements_text(d.keep::json)))) \
               RETURNING 1), \
             wake AS ( \
               SELECT pg_notify($4, $1) \
               WHERE EXISTS (SELECT 1 FROM freed) OR EXISTS (SELECT 1 FROM done WHERE dependents)) \
             SELECT n, (SELECT count(*) FROM wake) FROM done";
        // $1 group; $3.. one array per column: the insert of `insert_many` and `insert_new`.
        let insert = "INSERT INTO {s}.jobs (queue_group, id, attempt, state, job_type, priority, \
               ready_at, dispatch_by, scopes, mod_count, finished, body) \
             SELECT $1, v.id, v.attempt, v.state, v.job_type, v.priority, \
               coalesce(v.wait_until, now()), v.dispatch_by, \
               CASE WHEN v.scopes IS NULL THEN NULL \
                    ELSE ARRAY(SELECT json_array_elements_text(v.scopes::json)) END, \
               v.count, CASE WHEN v.state IN (2, 4) THEN now() END, v.body \
             FROM unnest($3::text[], $4::int[], $5::smallint[], $6::text[], $7::int[], \
               $8::timestamptz[], $9::timestamptz[], $10::text[], $11::bigint[], $12::text[]) \
               AS v(id, attempt, state, job_type, priority, wait_until, dispatch_by, scopes, \
                    count, body)";
        // Sets a job aside where `{which}`: finished, with state `{state}` and the reason
        // `{failure}`, it holds no scope any more (released in the same statement); one
        // notification on `{channel}` wakes the workers waiting for those. How many jobs it set
        // aside, and whether it notified.
        let set_aside = "WITH gone AS ( \
               UPDATE {s}.jobs j SET state = {state}, owner = NULL, mod_count = j.mod_count + 1, \
                   lock_ts = now(), finished = now(), failure = {failure} \
               WHERE {which} \
               RETURNING j.id, j.attempt), \
             freed AS ( \
               DELETE FROM {s}.scopes h USING gone g \
               WHERE h.queue_group = $1 AND h.job_id = g.id AND h.attempt = g.attempt \
               RETURNING 1), \
             wake AS (SELECT pg_notify({channel}, $1) WHERE EXISTS (SELECT 1 FROM freed)) \
             SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM wake)";
        Statements {
            claims: Mutex::new(Vec::new()),
            // $1 group, $2 channel; then one array per column. Rows that already exist are
            // skipped and not returned: they are the duplicates. One notification per
            // statement, delivered on commit, wakes idle workers.
            insert_many: build(format!(
                "WITH ins AS ({insert} ON CONFLICT DO NOTHING RETURNING id, attempt), \
                 wake AS (SELECT pg_notify($2, $1)) \
                 SELECT id, attempt, (SELECT count(*) FROM wake) FROM ins"
            )),
            // The same when none of the jobs exists yet, which is what puts expect: a plain
            // insert checks each key once, where ON CONFLICT looks it up, then inserts it. A
            // duplicate fails the statement with a unique violation; the batch is then put
            // again with `insert_many`.
            insert_new: build(format!(
                "WITH ins AS ({insert}), wake AS (SELECT pg_notify($2, $1)) \
                 SELECT count(*) FROM wake"
            )),
            // One job, with its edges and the failure decided at put.
            insert_one: build(
                "INSERT INTO {s}.jobs (queue_group, id, attempt, state, job_type, priority, \
                     ready_at, dispatch_by, scopes, edges, failure, mod_count, finished, body) \
                 VALUES ($1, $2, $3, $4, $5, $6, coalesce($7, now()), $8, $9, $10, $11, $13, \
                     CASE WHEN $4 IN (2, 4) THEN now() END, $12) \
                 ON CONFLICT DO NOTHING RETURNING id"
                    .into(),
            ),
            // $1 group, $2 scopes, $3 job, $4 attempt: the scopes taken (those not held).
            take_scopes: build(
                "INSERT INTO {s}.scopes (queue_group, scope, job_id, attempt) \
                 SELECT $1, scope, $3, $4 FROM unnest($2::text[]) AS scope \
                 ON CONFLICT (queue_group, scope) DO UPDATE SET job_id = EXCLUDED.job_id \
                     WHERE {s}.scopes.job_id = EXCLUDED.job_id \
                       AND {s}.scopes.attempt = EXCLUDED.attempt \
                 RETURNING scope"
                    .into(),
            ),
            // The same for the dispatch scopes of a claimed job, only while this queue ($5)
            // still holds the job at count $6: whether it does, and the scopes taken. The row is
            // locked (shared) for the statement, so a completion by management or a take-over
            // either comes first, and nothing is taken, or waits for this statement.
            take_dispatch_scopes: build(
                "WITH mine AS ( \
                   SELECT 1 FROM {s}.jobs j WHERE j.queue_group = $1 AND j.id = $3 \
                     AND j.attempt = $4 AND j.state = 1 AND j.owner = $5 AND j.mod_count = $6 \
                   FOR SHARE), \
                 ins AS ( \
                   INSERT INTO {s}.scopes (queue_group, scope, job_id, attempt) \
                   SELECT $1, scope, $3, $4 FROM unnest($2::text[]) AS scope \
                   WHERE EXISTS (SELECT 1 FROM mine) \
                   ON CONFLICT (queue_group, scope) DO UPDATE SET job_id = EXCLUDED.job_id \
                       WHERE {s}.scopes.job_id = EXCLUDED.job_id \
                         AND {s}.scopes.attempt = EXCLUDED.attempt \
                   RETURNING scope) \
                 SELECT EXISTS (SELECT 1 FROM mine), ARRAY(SELECT scope FROM ins)"
                    .into(),
            ),
            scope_holders: build(
                "SELECT scope, job_id FROM {s}.scopes WHERE queue_group = $1 AND scope = ANY($2)"
                    .into(),
            ),
            // The latest attempt of each edge.
            edge_states: build(
                "SELECT DISTINCT ON (id) id, state FROM {s}.jobs \
                 WHERE queue_group = $1 AND id = ANY($2) ORDER BY id, attempt DESC"
                    .into(),
            ),
            mark_dependents: build(
                "UPDATE {s}.jobs SET dependents = true \
                 WHERE queue_group = $1 AND id = ANY($2) AND NOT dependents"
                    .into(),
            ),
            get_latest: build(
                "SELECT {cols} FROM {s}.jobs j WHERE j.queue_group = $1 AND j.id = $2 \
                 ORDER BY j.attempt DESC LIMIT 1"
                    .into(),
            ),
            get_attempt: build(
                "SELECT {cols} FROM {s}.jobs j \
                 WHERE j.queue_group = $1 AND j.id = $2 AND j.attempt = $3"
                    .into(),
            ),
            get_attempt_exists: build(
                "SELECT 1 FROM {s}.jobs WHERE queue_group = $1 AND id = $2 AND attempt = $3".into(),
            ),
            get_all_attempts: build(
                "SELECT {cols} FROM {s}.jobs j WHERE j.queue_group = $1 AND j.id = $2 \
                 ORDER BY j.attempt"
                    .into(),
            ),
            // $1 group, $2 owner, $3 lock timeout, $4 the claim's token; {limit} how many.
            // Jobs whose owner stopped
            // refreshing their lock come first, then pending jobs that are due, not past their
            // deadline, whose edges all completed and whose scopes are free, by priority then
            // age. Rows another claimer holds are skipped, not waited for. An edge is the
            // latest attempt of its job (a job retrying is not done); an edge no longer stored
            // was deleted by the retention sweep, which deletes only finished jobs, after the
            // maintenance pass that fails the dependents of expired and set-aside ones: it
            // completed, and counts as done.
            // The rows are locked, then updated, by their physical address (`ctid`): the
            // update finds each row without a second walk down the primary key, and the lock
            // keeps the address valid until the statement ends.
            claim: build_str(
                "WITH stale AS ( \
                   SELECT j.ctid AS addr FROM {s}.jobs j \
                   WHERE j.queue_group = $1 AND j.state = 1 \
                     AND j.lock_ts <= now() - $3::interval \
                   ORDER BY j.lock_ts LIMIT {limit} FOR UPDATE SKIP LOCKED), \
                 pending AS ( \
                   SELECT j.ctid AS addr FROM {s}.jobs j \
                   WHERE j.queue_group = $1 AND j.state = 0 AND j.ready_at <= now() \
                     AND (j.dispatch_by IS NULL OR j.dispatch_by > now()) \
                     AND (j.edges IS NULL OR NOT EXISTS ( \
                       SELECT 1 FROM unnest(j.edges) AS e(id) \
                       WHERE (SELECT d.state FROM {s}.jobs d WHERE d.queue_group = j.queue_group \
                           AND d.id = e.id ORDER BY d.attempt DESC LIMIT 1) <> 2)) \
                     AND (j.scopes IS NULL OR NOT EXISTS ( \
                       SELECT 1 FROM {s}.scopes h WHERE h.queue_group = j.queue_group \
                         AND h.scope = ANY(j.scopes) \
                         AND NOT (h.job_id = j.id AND h.attempt = j.attempt))) \
                   ORDER BY j.priority DESC, j.ready_at LIMIT {limit} FOR UPDATE SKIP LOCKED), \
                 picked AS ((SELECT * FROM stale) UNION ALL (SELECT * FROM pending) LIMIT {limit}) \
                 UPDATE {s}.jobs j SET state = 1, owner = $2, mod_count = j.mod_count + 1, \
                     lock_ts = now(), claim = $4 \
                 FROM picked p WHERE j.ctid = p.addr \
                 RETURNING {cols}, j.scopes, j.ctid::text"
                    .into(),
            ),
            // Gives a claimed job back, under the fence: pending again, due no earlier than $6,
            // its dispatch scopes released (the enqueue scopes $7 it keeps), in one statement,
            // so that a copy that lost its lock frees nothing the new owner holds; one
            // notification ($8) wakes the workers. How many jobs and scopes it freed.
            release: build(
                "WITH back AS ( \
                   UPDATE {s}.jobs j SET state = 0, owner = NULL, mod_count = j.mod_count + 1, \
                       lock_ts = now(), ready_at = greatest(j.ready_at, coalesce($6, now())) \
                   WHERE j.queue_group = $1 AND j.id = $4 AND j.attempt = $5 AND j.state = 1 \
                     AND j.owner = $2 AND j.mod_count IN ($3, $3 - 1) \
                   RETURNING j.id, j.attempt), \
                 freed AS ( \
                   DELETE FROM {s}.scopes h USING back b \
                   WHERE h.queue_group = $1 AND h.job_id = b.id AND h.attempt = b.attempt \
                     AND NOT h.scope = ANY($7) \
                   RETURNING 1), \
                 wake AS (SELECT pg_notify($8, $1) WHERE EXISTS (SELECT 1 FROM back)) \
                 SELECT (SELECT count(*) FROM back), (SELECT count(*) FROM freed), \
                     (SELECT count(*) FROM wake)"
                    .into(),
            ),
            // $1 group, $2 owner, $3 a claim's token, $4 channel: gives back the jobs of a claim
            // whose reply never came (its connection broke), which nobody here holds; how many.
            release_claim: build(
                "WITH freed AS ( \
                   UPDATE {s}.jobs j SET state = 0, owner = NULL, claim = NULL, \
                       mod_count = j.mod_count + 1, lock_ts = now() \
                   WHERE j.queue_group = $1 AND j.state = 1 AND j.owner = $2 AND j.claim = $3 \
                   RETURNING 1), \
                 wake AS (SELECT pg_notify($4, $1) WHERE EXISTS (SELECT 1 FROM freed)) \
                 SELECT (SELECT count(*) FROM freed), (SELECT count(*) FROM wake)"
                    .into(),
            ),
            // A claimed job that cannot be decoded, or whose dependency can never be met ($6
            // the state, $7 why), under its claim's lock; $8 the channel.
            set_aside: build(
                set_aside
                    .replace("{state}", "$6")
                    .replace("{failure}", "$7")
                    .replace("{channel}", "$8")
                    .replace(
                        "{which}",
                        "j.queue_group = $1 AND j.id = $4 AND j.attempt = $5 \
                 AND j.owner = $2 AND j.mod_count = $3",
                    ),
            ),
            // A stale retrying job that cannot be decoded ($1 group, $2 ID, $3 attempt, $4 the
            // count it was read with, $5 why), unless it changed since; $6 the channel.
            set_aside_retrying: build(
                set_aside
                    .replace("{state}", "5")
                    .replace("{failure}", "$5")
                    .replace("{channel}", "$6")
                    .replace(
                        "{which}",
                        "j.queue_group = $1 AND j.id = $2 AND j.attempt = $3 AND j.state = 3 \
                 AND j.mod_count = $4",
                    ),
            ),
            // $1 group, $2 owner, $3 lock timeout; the refreshed jobs and their counts.
            heartbeat: build(
                "UPDATE {s}.jobs j SET owner = $2, mod_count = v.count, lock_ts = now() \
                 FROM unnest($4::text[], $5::int[], $6::bigint[]) AS v(id, attempt, count) \
                 WHERE j.queue_group = $1 AND j.id = v.id AND j.attempt = v.attempt \
                   AND j.state = 1 AND {fence} \
                 RETURNING j.id, j.attempt, j.ctid::text"
                    .into(),
            ),
            // $1 group, $2 owner, $3 lock timeout, $4 id, $5 attempt, $6 count (the copy's),
            // $7 owner written, $8 body, $9 scopes. The state stays the queue's. A save by an
            // owner refreshes its lock; a job saved without an owner holds no lock.
            save: build(
                "UPDATE {s}.jobs j SET owner = $7, mod_count = v.count, \
                     lock_ts = CASE WHEN $7::text IS NULL THEN NULL ELSE now() END, \
                     scopes = $9, body = $8 \
                 FROM (SELECT $6::bigint AS count) v \
                 WHERE j.queue_group = $1 AND j.id = $4 AND j.attempt = $5 AND j.state <> 4 \
                   AND {fence} \
                 RETURNING j.state, j.ctid::text"
                    .into(),
            ),
            complete_many: build(complete.replace("{done}", &done).replace("{find}", by_key)),
            complete_at: build(
                complete
                    .replace("{done}", &done)
                    .replace("{find}", &format!("j.ctid = v.addr AND {by_key}")),
            ),
            // Hands the scopes of attempt $3 of job $2 to attempt $4.
            move_scopes: build(
                "UPDATE {s}.scopes SET attempt = $4 \
                 WHERE queue_group = $1 AND job_id = $2 AND attempt = $3"
                    .into(),
            ),
            // Frees every scope attempt $3 of job $2 holds.
            free_scopes: build(
                "DELETE FROM {s}.scopes WHERE queue_group = $1 AND job_id = $2 AND attempt = $3"
                    .into(),
            ),
            stats: build(
                "SELECT state, count(*) FROM {s}.jobs WHERE queue_group = $1 GROUP BY state".into(),
            ),
            // A page of jobs after ($2, $3) with a state in $4, by ID and attempt.
            page: build(
                "SELECT {cols} FROM {s}.jobs j WHERE j.queue_group = $1 \
                   AND (j.id, j.attempt) > ($2, $3) AND j.state = ANY($4) \
                 ORDER BY j.id, j.attempt LIMIT $5"
                    .into(),
            ),
            // Retrying jobs whose retry nobody processed within the lock timeout.
            stale_retrying: build(
                "SELECT {cols} FROM {s}.jobs j WHERE j.queue_group = $1 AND j.state = 3 \
                   AND (j.lock_ts IS NULL OR j.lock_ts <= now() - $3::interval) \
                 ORDER BY j.lock_ts NULLS FIRST LIMIT $4"
                    .into(),
            ),
            // Pending jobs past their deadline are set aside (counted, kept), with their
            // scopes released; how many of each type. A notification on channel $2 wakes the
            // workers of every process when scopes were freed.
            expire: build(
                "WITH gone AS ( \
                   UPDATE {s}.jobs j SET state = 4, mod_count = j.mod_count + 1, \
                       lock_ts = now(), finished = now() \
                   WHERE j.queue_group = $1 AND j.state = 0 AND j.dispatch_by <= now() \
                   RETURNING j.id, j.attempt, j.job_type), \
                 freed AS ( \
                   DELETE FROM {s}.scopes h USING gone g \
                   WHERE h.queue_group = $1 AND h.job_id = g.id AND h.attempt = g.attempt \
                   RETURNING 1), \
                 wake AS (SELECT pg_notify($2, $1) WHERE EXISTS (SELECT 1 FROM freed)) \
                 SELECT job_type, count(*), (SELECT count(*) FROM wake) FROM gone \
                 GROUP BY job_type"
                    .into(),
            ),
            // Pending jobs with an edge whose latest attempt expired or was set aside can never
            // run: they complete with the reason, their scopes freed, and a notification on
            // channel $2 wakes the workers of every process (what waited on them may run).
            fail_dependents: build(
                "WITH bad AS ( \
                   SELECT j.id, j.attempt, min(u.id) AS edge \
                   FROM {s}.jobs j CROSS JOIN LATERAL unnest(j.edges) AS u(id) \
                   WHERE j.queue_group = $1 AND j.state = 0 AND j.edges IS NOT NULL \
                     AND (SELECT d.state FROM {s}.jobs d WHERE d.queue_group = $1 \
                       AND d.id = u.id ORDER BY d.attempt DESC LIMIT 1) IN (4, 5) \
                   GROUP BY j.id, j.attempt), \
                 failed AS ( \
                   UPDATE {s}.jobs j SET state = 2, mod_count = j.mod_count + 1, \
                       lock_ts = now(), finished = now(), \
                       failure = 'dependency unresolved: edge ''' || b.edge || \
                           ''' expired or was set aside before it ran' \
                   FROM bad b \
                   WHERE j.queue_group = $1 AND j.id = b.id AND j.attempt = b.attempt \
                     AND j.state = 0 \
                   RETURNING j.id, j.attempt), \
                 freed AS ( \
                   DELETE FROM {s}.scopes h USING failed f \
                   WHERE h.queue_group = $1 AND h.job_id = f.id AND h.attempt = f.attempt), \
                 wake AS (SELECT pg_notify($2, $1) WHERE EXISTS (SELECT 1 FROM failed)) \
                 SELECT count(*), (SELECT count(*) FROM wake) FROM failed"
                    .into(),
            ),
            // Finished jobs older than the retention age, a batch at a time. An expired or
            // set-aside job that a pending job still waits on stays until maintenance failed
            // that job: a claim counts an edge no longer stored as done.
            sweep: build(
                "DELETE FROM {s}.jobs WHERE ctid = ANY(ARRAY( \
                   SELECT j.ctid FROM {s}.jobs j WHERE j.queue_group = $1 \
                     AND j.state IN (2, 4, 5) AND j.finished < now() - $2::interval \
                     AND (j.state = 2 OR NOT j.dependents OR NOT EXISTS ( \
                       SELECT 1 FROM {s}.jobs w WHERE w.queue_group = $1 AND w.state = 0 \
                         AND w.edges IS NOT NULL AND j.id = ANY(w.edges))) \
                   LIMIT $3))"
                    .into(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        for good in ["amboy", "_jobs", "tenant_1", "a"] {
            validate_schema_name(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in [
            "",
            "1jobs",
            "Amboy",
            "jobs-x",
            "a b",
            "x; DROP TABLE y",
            "\"quoted\"",
            &"a".repeat(49),
        ] {
            assert!(validate_schema_name(bad).is_err(), "{bad:?} is refused");
        }
    }

    #[test]
    fn statements_name_the_schema_and_no_placeholder_is_left() {
        for delete_completed in [false, true] {
            statements_are_complete(&Statements::new("my_schema", delete_completed));
        }
    }

    fn statements_are_complete(statements: &Statements) {
        let claim = statements.claim(64);
        assert!(
            claim.contains("LIMIT 64") && !claim.contains("{limit}"),
            "{claim}"
        );
        let all = [
            &statements.insert_many,
            &statements.insert_new,
            &statements.insert_one,
            &claim,
            &statements.heartbeat,
            &statements.save,
            &statements.complete_many,
            &statements.complete_at,
            &statements.expire,
            &statements.fail_dependents,
            &statements.sweep,
        ];
        for sql in all {
            assert!(sql.contains("my_schema.jobs"), "{sql}");
            for placeholder in [
                "{s}",
                "{cols}",
                "{fence}",
                "{limit}",
                "{find}",
                "{done}",
                "{only}",
                "$me",
                "$lock_timeout",
            ] {
                assert!(!sql.contains(placeholder), "{placeholder} left in {sql}");
            }
        }
        // Every write of a dispatched job is fenced.
        for sql in [
            &statements.heartbeat,
            &statements.save,
            &statements.complete_many,
            &statements.complete_at,
        ] {
            let fence = "j.owner = $2 AND j.mod_count IN (v.count, v.count - 1)";
            let writes = sql.matches("UPDATE my_schema.jobs").count()
                + sql.matches("DELETE FROM my_schema.jobs").count();
            assert!(writes > 0, "{sql}");
            assert_eq!(
                sql.matches(fence).count(),
                writes,
                "each write fenced: {sql}"
            );
        }
    }
}

//! The PostgreSQL queue: its engine (what runners and background tasks hold) and the handle
//! users hold.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use amboy_core::dependency::{Manager, State};
use amboy_core::{
    Dispatcher, Error, JobInfoStream, JobRef, JobStream, Lifecycle, LockStore, Queue, QueueInfo,
    QueueStats, Result, RetryHandler, RetryableQueue, Runner, collate_write_errors,
};
use amboy_registry::{JobInterchange, truncate_errors};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream;
use parking_lot::Mutex;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, PgConnection, PgPool, Row as _};
use tokio::sync::{Notify, OnceCell, mpsc, oneshot};

use crate::notify::Hub;
use crate::options::PostgresQueueOptions;
use crate::row::{StoredJob, ctid_of, encode_body, locator_of};
use crate::schema::{
    self, COMPLETED, EXPIRED, PENDING, RETRYING, RUNNING, SET_ASIDE, Statements, backend,
};

/// The fewest jobs of a put worth an insert statement of their own, run beside the others.
const INSERT_CHUNK: usize = 250;
/// The longest job ID stored: the primary key's index holds entries of at most about 2,700
/// bytes, with the group's name beside the ID.
const MAX_ID_BYTES: usize = 1024;

/// Finished jobs the retention sweep deletes per statement, and statements per maintenance
/// pass at most.
const SWEEP_BATCH: u64 = 1000;
const SWEEP_BATCHES: usize = 100;

/// SQLSTATE `deadlock_detected`.
const DEADLOCK: &str = "40P01";

/// The jobs a large `put_many` encodes before it starts inserting them; a put of at least
/// twice this many inserts each chunk while it encodes the next.
const PIPELINE_CHUNK: usize = 1000;

/// How many rows one page of `results` or `job_info` reads.
const PAGE: i64 = 500;

/// The distributed queue on PostgreSQL (amboy's remote queue, §7.3 of its reference): any
/// number of processes put jobs into one table and run them, each job by one worker at a time.
///
/// * **Claims.** One task of the queue claims jobs for the workers that wait and for those
///   completing a job (each asks for the next one right after), and, while workers keep taking
///   jobs, for the ones they will take within the next 100 ms at their recent pace: each claim
///   one statement (`FOR UPDATE SKIP LOCKED`) of up to `claim_batch` jobs, jobs whose owner
///   stopped refreshing their lock first, then due pending jobs by priority and age, with a few
///   claims under way at once. Claimed jobs wait in a buffer for the next `next` (or
///   `try_next`), so a dropped `next` future never loses one; their locks are refreshed like
///   those of running jobs, a buffer nobody takes from for a poll interval is given back, and
///   so is what it holds at close.
/// * **Fencing.** Every write of a stored job goes through amboy's optimistic lock, judged on
///   the database's clock: the lock expired, or this queue holds it and the writer's
///   modification count is at most one ahead. A write that lost the lock fails with
///   job-not-found and changes nothing; a running job whose lock is lost has its run
///   interrupted.
/// * **Heartbeat.** The [`Dispatcher`] refreshes the locks of every running job of the process
///   in one statement, every quarter of the lock timeout.
/// * **Completions** go out in batches: while statements are in flight (a few at once), the
///   next ones gather. `complete` returns once its own row committed; amboy's pools do not
///   wait for it before their next job ([`amboy_core::execute_job_behind`]). A completion
///   finds its row at the address its claim, heartbeat or save saw, by key if it moved.
/// * **Scopes** are rows of a table whose primary key is the scope: the database itself lets
///   one job hold a scope. Enqueue scopes are taken at put, dispatch scopes at claim (a job
///   whose scope is taken stays pending and is not claimed), released at completion, and the
///   enqueue scopes of a retrying job go to its next attempt.
/// * **Dependencies.** A job with edges is claimed only once every edge (its job's latest
///   attempt) completed; its manager then decides (a `Passed` job completes without running).
///   Edges to unknown jobs are refused at put; a job whose edge expired completes with the
///   reason; an edge the retention sweep deleted counts as done.
/// * **Wake-ups.** Puts notify (`LISTEN`/`NOTIFY`, delivered at commit), so idle workers start
///   within milliseconds; polling every `poll_interval` is the fallback.
/// * **Bad stored jobs** (unknown type, other version, a body that does not decode) are set
///   aside when claimed, with the reason: never run, never retried, counted under the stats
///   context `"undecodable"`.
///
/// Dropping the last handle closes the queue. Put works without starting the queue: a
/// producer process needs no runner.
pub struct PostgresQueue {
    engine: Arc<Engine>,
}

impl std::fmt::Debug for PostgresQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresQueue")
            .field("id", &self.engine.id)
            .field("schema", &self.engine.options.schema)
            .field("group", &self.engine.options.group)
            .finish()
    }
}

/// The queue itself, which runners, the retry handler and background tasks hold.
pub(crate) struct Engine {
    id: Arc<str>,
    options: PostgresQueueOptions,
    channel: String,
    pool: PgPool,
    sql: Statements,
    schema_ready: OnceCell<()>,
    lifecycle: Lifecycle,
    dispatcher: Arc<Dispatcher>,
    retry_handler: Mutex<Option<Arc<dyn RetryHandler>>>,
    /// `next` calls waiting for a job.
    waiting: AtomicUsize,
    /// Workers completing a job they ran here: each asks for its next job right after, so the
    /// claimer claims for them too, while their completions are written.
    finishing: AtomicUsize,
    /// Jobs handed to workers so far: the claimer claims ahead by the rate they go at.
    handed: AtomicUsize,
    /// Claimed jobs (or claim errors) for the waiting `next` calls.
    claimed_tx: async_channel::Sender<Result<JobRef>>,
    claimed_rx: async_channel::Receiver<Result<JobRef>>,
    /// Wakes the claimer: a `next` call waits.
    demand: Notify,
    /// Wakes the claimer: jobs may have become ready (a notification, a local put).
    ready: Arc<Notify>,
    /// The schema's notifications (shared with the other queues of a group).
    hub: Arc<Hub>,
    completions: Mutex<Option<mpsc::UnboundedSender<Completion>>>,
    /// Single puts of plain jobs waiting to be inserted together (see [`Engine::put_plain`]).
    puts: Mutex<Puts>,
    this: Weak<Engine>,
}

/// Single puts waiting for the statement that inserts them, and whether a task is inserting.
#[derive(Default)]
struct Puts {
    queued: Vec<(Prepared, oneshot::Sender<Result<()>>)>,
    /// Tasks inserting.
    inserting: usize,
}

/// A completion waiting for its batch.
struct Completion {
    row: CompletionRow,
    reply: oneshot::Sender<Result<()>>,
}

/// What a completion writes.
struct CompletionRow {
    id: String,
    attempt: i32,
    count: i64,
    state: i16,
    /// The body to store; `None` leaves the stored one.
    body: Option<String>,
    scoped: bool,
    keep: Option<String>,
    /// Where the row was last seen (`ctid`), if known.
    addr: Option<String>,
    /// Why the queue failed the job (its final state could not be encoded), stored as the
    /// row's failure.
    failure: Option<String>,
}

/// A job prepared to be inserted.
struct Prepared {
    id: String,
    attempt: i32,
    state: i16,
    job_type: String,
    priority: i32,
    wait_until: Option<DateTime<Utc>>,
    dispatch_by: Option<DateTime<Utc>>,
    scopes: Vec<String>,
    enqueue_scopes: Vec<String>,
    edges: Vec<String>,
    count: i64,
    body: String,
}

impl Prepared {
    /// Whether the job goes in with the others of its batch in one statement: nothing to check
    /// or take beside its row.
    fn is_plain(&self) -> bool {
        self.enqueue_scopes.is_empty() && self.edges.is_empty()
    }
}

/// Counts a waiting `next` call while it waits, or a worker while it completes its job.
struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Counted(count)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn state_of(envelope: &JobInterchange) -> i16 {
    let status = &envelope.status;
    if status.expired {
        EXPIRED
    } else if status.completed && envelope.retry_info.should_retry() {
        RETRYING
    } else if status.completed {
        COMPLETED
    } else {
        PENDING
    }
}

fn json_list(list: &[String]) -> Option<String> {
    (!list.is_empty()).then(|| serde_json::to_string(list).expect("a list of strings encodes"))
}

/// The pool a queue (or a group) opens to `url` when given no pool: `max_connections`
/// connections, opened lazily, with plans made once per statement and connection
/// (`plan_cache_mode = force_generic_plan`: PostgreSQL would plan a prepared statement anew at
/// every call while it expects a plan for the call's values to be cheaper than the general
/// one, which it does for claims and completions, whose number of jobs changes the estimates;
/// planning them costs more than running them), and a ping only before using a connection
/// idle for a second or more (sqlx pings every connection it hands out by default: a round
/// trip before each statement; one used within the last second is known to be alive).
pub(crate) fn open_pool(url: &str, max_connections: u32) -> Result<PgPool> {
    let connect: PgConnectOptions = url.parse().map_err(backend("read the database URL"))?;
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= Duration::from_secs(1) {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
        .connect_lazy_with(connect.options([("plan_cache_mode", "force_generic_plan")])))
}

/// The notification channel of a schema.
pub(crate) fn channel_of(schema: &str) -> String {
    format!("amboy_{schema}")
}

/// Whether a statement failed because its connection was lost (the server went away, or ended
/// the session): it did not run, or whether it committed is unknown. Another connection may
/// succeed.
fn connection_lost(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => true,
        // Connection exceptions (08…) and sessions ended by the server (57P…).
        sqlx::Error::Database(error) => error
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
        _ => false,
    }
}

/// What a claimed job's dependency manager says: its state, and why when `Unresolved`. Asked
/// on a blocking thread if it does blocking I/O. The manager is the job type's own code: should
/// it panic, it cannot be satisfied (the panic is the reason), and the claimer goes on.
async fn ask_manager(manager: Arc<dyn Manager>) -> (State, Option<String>) {
    let panicked = |panic: Box<dyn std::any::Any + Send>| {
        let reason = format!(
            "its manager panicked: {}",
            amboy_core::panic_message(&*panic)
        );
        (State::Unresolved, Some(reason))
    };
    let blocking =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| manager.does_blocking_io()))
            .unwrap_or(false);
    let ask = move || {
        let state = manager.state();
        let reason = match state {
            State::Unresolved => manager.state_reason(),
            _ => None,
        };
        (state, reason)
    };
    if blocking {
        match tokio::task::spawn_blocking(ask).await {
            Ok(answer) => answer,
            Err(error) if error.is_panic() => panicked(error.into_panic()),
            Err(_) => (State::Unresolved, None),
        }
    } else {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(ask)).unwrap_or_else(panicked)
    }
}

/// The errors of a chunk's insert, run as a task: a task that panicked fails the put.
fn inserted(
    done: std::result::Result<Vec<Error>, tokio::task::JoinError>,
) -> Vec<Result<Prepared>> {
    match done {
        Ok(errors) => errors.into_iter().map(Err).collect(),
        Err(error) => vec![Err(Error::invalid(format!(
            "postgres: an insert of put_many did not finish: {error}"
        )))],
    }
}

/// One error per job from one failed statement, each naming its job and sharing the cause.
fn per_job(error: sqlx::Error, doing: &'static str) -> impl Fn(&str) -> Error {
    let message = error.to_string();
    let source: Arc<dyn std::error::Error + Send + Sync> = Arc::new(error);
    move |id| Error::Backend {
        message: format!("postgres: could not {doing} job '{id}': {message}"),
        source: Some(source.clone()),
    }
}

/// A job's scopes as stored: each once (one row of the scopes table holds it), each name one
/// the table's key can hold.
fn checked_scopes(id: &str, mut scopes: Vec<String>) -> Result<Vec<String>> {
    distinct(&mut scopes);
    for scope in &scopes {
        check_name(id, "scope", scope)?;
    }
    Ok(scopes)
}

/// Keeps the first of each name.
fn distinct(names: &mut Vec<String>) {
    if names.len() > 1 {
        let mut seen = std::collections::HashSet::with_capacity(names.len());
        names.retain(|name| seen.insert(name.clone()));
    }
}

/// Refuses a scope or edge name of job `id` that PostgreSQL cannot store or index.
fn check_name(id: &str, what: &str, name: &str) -> Result<()> {
    if name.contains('\0') {
        return Err(Error::invalid_job(
            id,
            format!(
                "its {what} '{}' contains a NUL character, which PostgreSQL text cannot hold",
                name.replace('\0', "\\0")
            ),
        ));
    }
    if name.len() > MAX_ID_BYTES {
        return Err(Error::invalid_job(
            id,
            format!(
                "its {what} '{}…' is {} bytes long; at most {MAX_ID_BYTES} are stored",
                name.chars().take(64).collect::<String>(),
                name.len()
            ),
        ));
    }
    Ok(())
}

/// The results of a batch, every job's decided.
fn finished(results: Vec<Option<Result<()>>>) -> Vec<Result<()>> {
    results
        .into_iter()
        .map(|result| result.expect("every job has a result"))
        .collect()
}

/// The (ID, attempt) keys that a statement's rows name in their first two columns.
fn keys_of(rows: &[sqlx::postgres::PgRow]) -> std::collections::HashSet<(String, i32)> {
    rows.iter()
        .filter_map(|row| Some((row.try_get(0).ok()?, row.try_get(1).ok()?)))
        .collect()
}

/// A random duration between half `base` and `base`.
pub(crate) fn jittered(base: Duration) -> Duration {
    let micros = base.as_micros().max(1) as u64;
    Duration::from_micros(micros / 2 + fastrand::u64(0..=micros / 2))
}

/// A task inserting the queued single puts of its engine, [`INSERT_CHUNK`] per statement, until
/// none is left. Should it end early (a panic, a runtime shutting down), it gives its place
/// back, and if no other task is inserting, the puts still queued fail rather than wait.
struct Inserter {
    engine: Arc<Engine>,
    done: bool,
}

impl Inserter {
    async fn run(mut self) {
        loop {
            let batch: Vec<(Prepared, oneshot::Sender<Result<()>>)> = {
                let mut puts = self.engine.puts.lock();
                if puts.queued.is_empty() {
                    puts.inserting -= 1;
                    self.done = true;
                    return;
                }
                let take = puts.queued.len().min(INSERT_CHUNK);
                puts.queued.drain(..take).collect()
            };
            let (jobs, replies): (Vec<Prepared>, Vec<_>) = batch.into_iter().unzip();
            let results = self.engine.insert_each(jobs).await;
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result);
            }
        }
    }
}

impl Drop for Inserter {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let orphans = {
            let mut puts = self.engine.puts.lock();
            puts.inserting -= 1;
            if puts.inserting == 0 {
                std::mem::take(&mut puts.queued)
            } else {
                Vec::new()
            }
        };
        for (job, reply) in orphans {
            let _ = reply.send(Err(Error::Backend {
                message: format!(
                    "postgres: the task inserting single puts stopped before job '{}'",
                    job.id
                ),
                source: None,
            }));
        }
    }
}

impl PostgresQueue {
    /// A queue with `options`, not started. Nothing touches the database yet: the schema is
    /// created or upgraded by the first operation.
    pub fn new(options: PostgresQueueOptions) -> Result<Arc<Self>> {
        Self::with_hub(options, None)
    }

    /// A queue listening through `hub` (a group's), or a hub of its own.
    pub(crate) fn with_hub(
        options: PostgresQueueOptions,
        hub: Option<Arc<Hub>>,
    ) -> Result<Arc<Self>> {
        options.validate()?;
        let pool = match (&options.pool, &options.url) {
            (Some(pool), _) => pool.clone(),
            (None, Some(url)) => open_pool(url, options.max_connections)?,
            (None, None) => unreachable!("validated"),
        };
        let name = if options.group.is_empty() {
            "queue"
        } else {
            &options.group
        };
        let id: Arc<str> = Arc::from(format!(
            "{}.{}.{}",
            options.schema,
            name,
            uuid::Uuid::new_v4().simple()
        ));
        let (claimed_tx, claimed_rx) = async_channel::unbounded();
        let channel = channel_of(&options.schema);
        let hub = hub.unwrap_or_else(|| Hub::new(&pool, channel.clone()));
        let engine = Arc::new_cyclic(|this| Engine {
            dispatcher: Arc::new(Dispatcher::new(id.clone(), options.lock_timeout)),
            id,
            channel,
            sql: Statements::new(&options.schema, options.deletes_completed()),
            pool,
            options,
            schema_ready: OnceCell::new(),
            lifecycle: Lifecycle::default(),
            retry_handler: Mutex::new(None),
            waiting: AtomicUsize::new(0),
            finishing: AtomicUsize::new(0),
            handed: AtomicUsize::new(0),
            claimed_tx,
            claimed_rx,
            demand: Notify::new(),
            ready: Arc::new(Notify::new()),
            hub,
            completions: Mutex::new(None),
            puts: Mutex::new(Puts::default()),
            this: this.clone(),
        });
        Ok(Arc::new(PostgresQueue { engine }))
    }

    /// The queue's options (its pool included).
    pub fn options(&self) -> &PostgresQueueOptions {
        &self.engine.options
    }

    /// The pool the queue uses.
    pub fn pool(&self) -> &PgPool {
        &self.engine.pool
    }

    /// The queue's dispatcher, which keeps the locks of its running jobs alive.
    pub fn dispatcher(&self) -> &Arc<Dispatcher> {
        &self.engine.dispatcher
    }

    /// Creates the schema or brings it up to date now, rather than at the first operation.
    pub async fn migrate(&self) -> Result<()> {
        self.engine.ensure_schema().await
    }

    /// Puts `job` inside the caller's own transaction (or on its connection): the job exists if
    /// and only if the transaction commits, and idle workers are notified at the commit. Its
    /// edges are marked as waited on at once, outside the transaction where they can be (see
    /// `docs/postgres.md`), so that their rows are not locked until it commits.
    ///
    /// ```no_run
    /// # async fn demo(queue: &amboy_queue_postgres::PostgresQueue, job: amboy_core::JobRef)
    /// # -> Result<(), Box<dyn std::error::Error>> {
    /// let mut tx = queue.pool().begin().await?;
    /// // ... the business write, on `tx` ...
    /// queue.put_in(&mut tx, job).await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn put_in(&self, conn: &mut PgConnection, job: JobRef) -> Result<()> {
        self.engine.ensure_schema().await?;
        let prepared = self.engine.prepare(&job)?;
        self.engine.insert_on(conn, prepared, false).await
    }

    /// Puts a job in its stored form (amboy's `JobInterchange`), as another process or Go
    /// amboy wrote it: with its scopes (its enqueue scopes taken now) and its dependency's
    /// edges, as [`put`](Queue::put) stores them. A job that cannot be decoded is stored all
    /// the same, with none, and set aside when a worker claims it.
    pub async fn put_interchange(&self, mut envelope: JobInterchange) -> Result<()> {
        self.engine.check_open()?;
        self.engine.ensure_schema().await?;
        let (scopes, enqueue_scopes, edges) = match envelope.resolve() {
            Ok(job) => {
                let meta = job.base().metadata();
                let edges = meta
                    .dependency
                    .as_ref()
                    .map(|manager| manager.edges())
                    .unwrap_or_default();
                (meta.scopes.clone(), meta.effective_enqueue_scopes(), edges)
            }
            Err(_) => (Vec::new(), Vec::new(), Vec::new()),
        };
        if envelope.time_info.created.is_none() {
            envelope.time_info.created = Some(amboy_core::clock::now());
        }
        envelope
            .time_info
            .validate()
            .map_err(|error| Error::invalid_job(&envelope.name, error))?;
        let prepared = Engine::prepare_envelope(envelope, scopes, enqueue_scopes, edges)?;
        let mut conn = self
            .engine
            .pool
            .acquire()
            .await
            .map_err(backend("connect"))?;
        self.engine.insert_on(&mut conn, prepared, false).await
    }
}

impl Engine {
    fn arc(&self) -> Arc<Engine> {
        self.this.upgrade().expect("the engine is alive while used")
    }

    fn group(&self) -> &str {
        &self.options.group
    }

    async fn ensure_schema(&self) -> Result<()> {
        self.schema_ready
            .get_or_try_init(|| schema::migrate(&self.pool, &self.options.schema))
            .await
            .map(|_| ())
    }

    fn check_open(&self) -> Result<()> {
        if self.lifecycle.is_closed() {
            Err(Error::Closed("queue"))
        } else {
            Ok(())
        }
    }

    // ---------------------------------------------------------------------------------------
    // Put
    // ---------------------------------------------------------------------------------------

    fn prepare(&self, job: &JobRef) -> Result<Prepared> {
        let (scopes, enqueue_scopes, edges) = {
            let mut meta = job.base().metadata();
            meta.time_info.created = Some(amboy_core::clock::now());
            meta.time_info
                .validate()
                .map_err(|error| Error::invalid_job(job.id(), error))?;
            if meta.retry_info.retryable {
                meta.retry_info.base_job_id = job.id().to_owned();
            }
            let edges = meta
                .dependency
                .as_ref()
                .map(|manager| manager.edges())
                .unwrap_or_default();
            (meta.scopes.clone(), meta.effective_enqueue_scopes(), edges)
        };
        let envelope = JobInterchange::from_job(&**job).map_err(Error::from)?;
        Self::prepare_envelope(envelope, scopes, enqueue_scopes, edges)
    }

    fn prepare_envelope(
        mut envelope: JobInterchange,
        mut scopes: Vec<String>,
        mut enqueue_scopes: Vec<String>,
        edges: Vec<String>,
    ) -> Result<Prepared> {
        scopes = checked_scopes(&envelope.name, scopes)?;
        enqueue_scopes = checked_scopes(&envelope.name, enqueue_scopes)?;
        for edge in &edges {
            check_name(&envelope.name, "edge", edge)?;
        }
        if envelope.name.is_empty() {
            return Err(Error::invalid("a stored job needs a name (its ID)"));
        }
        if envelope.name.len() > MAX_ID_BYTES {
            return Err(Error::invalid_job(
                format!("{}…", envelope.name.chars().take(64).collect::<String>()),
                format!(
                    "its ID is {} bytes long; at most {MAX_ID_BYTES} are stored",
                    envelope.name.len()
                ),
            ));
        }
        if envelope.name.contains('\0') {
            return Err(Error::invalid_job(
                envelope.name.replace('\0', "\\0"),
                "its ID contains a NUL character, which PostgreSQL text cannot hold",
            ));
        }
        if envelope.time_info.created.is_none() {
            envelope.time_info.created = Some(amboy_core::clock::now());
        }
        if envelope.retry_info.retryable {
            envelope.retry_info.base_job_id = envelope.name.clone();
        }
        truncate_errors(&mut envelope.status.errors);
        let body = encode_body(&envelope, true)?;
        let attempt = i32::try_from(envelope.retry_info.current_attempt)
            .map_err(|_| Error::invalid_job(&envelope.name, "its attempt number is too large"))?;
        let state = state_of(&envelope);
        let count = envelope.status.modification_count as i64;
        Ok(Prepared {
            count,
            attempt,
            state,
            job_type: envelope.type_name,
            priority: envelope.priority,
            wait_until: envelope.time_info.wait_until,
            dispatch_by: envelope.time_info.dispatch_by,
            // A finished job holds nothing and waits for nothing.
            scopes: if state == PENDING { scopes } else { Vec::new() },
            enqueue_scopes: if matches!(state, PENDING | RETRYING) {
                enqueue_scopes
            } else {
                Vec::new()
            },
            edges: if state == PENDING { edges } else { Vec::new() },
            id: envelope.name,
            body,
        })
    }

    /// Inserts plain jobs; returns the error of each that is not stored.
    async fn insert_batch(&self, mut batch: Vec<Prepared>) -> Vec<Error> {
        // A large batch goes in as a few statements at once, on as many connections: inserting
        // is the server's work, so this uses more of its cores.
        let chunks = (batch.len() / INSERT_CHUNK).clamp(1, self.inserts_in_flight());
        if chunks == 1 {
            return self.insert_chunk(batch).await;
        }
        let size = batch.len().div_ceil(chunks);
        let mut parts = Vec::with_capacity(chunks);
        while batch.len() > size {
            let rest = batch.split_off(size);
            parts.push(std::mem::replace(&mut batch, rest));
        }
        parts.push(batch);
        futures::future::join_all(parts.into_iter().map(|part| self.insert_chunk(part)))
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// How many insert statements one put may run at once: a third of the pool, one to four.
    fn inserts_in_flight(&self) -> usize {
        (self.pool.options().get_max_connections() as usize / 3).clamp(1, 4)
    }

    /// Inserts plain jobs in one statement; returns the error of each that is not stored.
    async fn insert_chunk(&self, batch: Vec<Prepared>) -> Vec<Error> {
        self.insert_each(batch)
            .await
            .into_iter()
            .filter_map(Result::err)
            .collect()
    }

    /// Inserts plain jobs in one statement; one result per job, in order. A job whose key an
    /// earlier job of the batch has is left out of the statement (which would store one row
    /// for both, and report it stored for each): once the statement ran, it is a duplicate if
    /// the earlier one was stored, and has its error if not.
    async fn insert_each(&self, batch: Vec<Prepared>) -> Vec<Result<()>> {
        // For each job, the place of the earlier job with its key, if any.
        let earlier: Vec<Option<usize>> = {
            let mut seen = std::collections::HashMap::with_capacity(batch.len());
            batch
                .iter()
                .enumerate()
                .map(
                    |(place, job)| match seen.entry((job.id.as_str(), job.attempt)) {
                        std::collections::hash_map::Entry::Occupied(first) => Some(*first.get()),
                        std::collections::hash_map::Entry::Vacant(first) => {
                            first.insert(place);
                            None
                        }
                    },
                )
                .collect()
        };
        if earlier.iter().all(Option::is_none) {
            return self.insert_unique(batch).await;
        }
        // Where each job stored goes among the statement's jobs; the repeats' IDs.
        let mut position = vec![0; batch.len()];
        let mut unique = Vec::with_capacity(batch.len());
        let mut repeats = Vec::new();
        for (place, job) in batch.into_iter().enumerate() {
            match earlier[place] {
                None => {
                    position[place] = unique.len();
                    unique.push(job);
                }
                Some(_) => repeats.push(job.id),
            }
        }
        let stored = self.insert_unique(unique).await;
        let mut repeats = repeats.into_iter();
        (0..earlier.len())
            .map(|place| match earlier[place] {
                None => stored[position[place]].clone(),
                Some(first) => {
                    let id = repeats.next().expect("a repeat's ID");
                    match &stored[position[first]] {
                        Ok(()) => Err(Error::duplicate_job(id)),
                        Err(error) => Err(error.clone()),
                    }
                }
            })
            .collect()
    }

    /// Inserts plain jobs, no two with one key, in one statement; one result per job, in
    /// order. Should the statement fail through one row's fault (an ID too long for the index,
    /// say), each job is inserted on its own, so that the fault is that job's alone.
    async fn insert_unique(&self, batch: Vec<Prepared>) -> Vec<Result<()>> {
        let n = batch.len();
        let mut results: Vec<Option<Result<()>>> = (0..n).map(|_| None).collect();
        let mut ids = Vec::with_capacity(n);
        let mut attempts = Vec::with_capacity(n);
        let mut states = Vec::with_capacity(n);
        let mut types = Vec::with_capacity(n);
        let mut priorities = Vec::with_capacity(n);
        let mut waits = Vec::with_capacity(n);
        let mut deadlines = Vec::with_capacity(n);
        let mut scopes = Vec::with_capacity(n);
        let mut bodies = Vec::with_capacity(n);
        let mut counts = Vec::with_capacity(n);
        for job in batch {
            counts.push(job.count);
            scopes.push(json_list(&job.scopes));
            ids.push(job.id);
            attempts.push(job.attempt);
            states.push(job.state);
            types.push(job.job_type);
            priorities.push(job.priority);
            waits.push(job.wait_until);
            deadlines.push(job.dispatch_by);
            bodies.push(job.body);
        }
        // Where each job inserted goes in `results`.
        let slots: Vec<usize> = (0..n).collect();
        if ids.is_empty() {
            return finished(results);
        }
        let insert = |sql: &Arc<str>, rows: std::ops::Range<usize>| {
            sqlx::query(AssertSqlSafe(sql.clone()))
                .bind(self.group())
                .bind(&self.channel)
                .bind(&ids[rows.clone()])
                .bind(&attempts[rows.clone()])
                .bind(&states[rows.clone()])
                .bind(&types[rows.clone()])
                .bind(&priorities[rows.clone()])
                .bind(&waits[rows.clone()])
                .bind(&deadlines[rows.clone()])
                .bind(&scopes[rows.clone()])
                .bind(&counts[rows.clone()])
                .bind(&bodies[rows])
        };
        let all = 0..ids.len();
        // None of them exists yet, as a rule: one plain insert. A duplicate fails it whole;
        // then the statement that skips and names duplicates runs. So does a deadlock: another
        // statement inserting some of the same IDs in another order waited for this one while
        // this one waited for it, and the server cancelled this one.
        let failed = match insert(&self.sql.insert_new, all.clone())
            .execute(&self.pool)
            .await
        {
            Ok(_) => {
                self.ready.notify_one();
                amboy_core::metrics::record_puts(&self.id, types.iter().map(String::as_str));
                for slot in &slots {
                    results[*slot] = Some(Ok(()));
                }
                return finished(results);
            }
            Err(sqlx::Error::Database(error))
                if error.is_unique_violation() || error.code().as_deref() == Some(DEADLOCK) =>
            {
                match insert(&self.sql.insert_many, all)
                    .fetch_all(&self.pool)
                    .await
                {
                    Ok(rows) => {
                        let stored = keys_of(&rows);
                        if !stored.is_empty() {
                            self.ready.notify_one();
                        }
                        let mut stored_types = Vec::new();
                        for (row, slot) in slots.iter().enumerate() {
                            let key = (ids[row].clone(), attempts[row]);
                            results[*slot] = Some(if stored.contains(&key) {
                                stored_types.push(types[row].as_str());
                                Ok(())
                            } else {
                                Err(Error::duplicate_job(key.0))
                            });
                        }
                        amboy_core::metrics::record_puts(&self.id, stored_types);
                        return finished(results);
                    }
                    Err(error) => error,
                }
            }
            Err(error) => error,
        };
        self.one_by_one(failed, (&ids, &types), results, &slots, &insert)
            .await
    }

    /// After a batch's statement failed with `error`: each job on its own when the error is
    /// one row's fault (bad data, a constraint, a limit: SQLSTATE classes 22, 23 and 54) or a
    /// deadlock with another put, and the batch has several; otherwise (a lost connection, say)
    /// the error is every job's.
    async fn one_by_one<'q, F>(
        &self,
        error: sqlx::Error,
        (ids, types): (&[String], &[String]),
        mut results: Vec<Option<Result<()>>>,
        slots: &[usize],
        insert: &F,
    ) -> Vec<Result<()>>
    where
        F: Fn(
            &Arc<str>,
            std::ops::Range<usize>,
        ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    {
        let one_rows_fault = matches!(&error, sqlx::Error::Database(database)
        if database.code().is_some_and(|code| {
            code.starts_with("22") || code.starts_with("23") || code.starts_with("54")
                || code == DEADLOCK
        }));
        if ids.len() == 1 || !one_rows_fault {
            let failed = per_job(error, "insert");
            for (row, slot) in slots.iter().enumerate() {
                results[*slot] = Some(Err(failed(&ids[row])));
            }
            return finished(results);
        }
        for (row, slot) in slots.iter().enumerate() {
            let result = match insert(&self.sql.insert_many, row..row + 1)
                .fetch_all(&self.pool)
                .await
            {
                Ok(rows) if rows.is_empty() => Err(Error::duplicate_job(&ids[row])),
                Ok(_) => {
                    self.ready.notify_one();
                    amboy_core::metrics::jobs_put(&self.id, &types[row], 1);
                    Ok(())
                }
                Err(error) => Err(per_job(error, "insert")(&ids[row])),
            };
            results[*slot] = Some(result);
        }
        finished(results)
    }

    /// Puts one plain job, inserted with the single puts made meanwhile in one statement (a
    /// group commit): a put starts a task (up to a few at once) that inserts what is queued, a
    /// batch at a time, until nothing is; the others wait for their job's result. A put returns once its
    /// statement committed. The task, not the put, runs the statement, so a put dropped while
    /// waiting leaves no batch half-done: its job is stored or not, as if it had waited.
    async fn put_plain(&self, job: Prepared) -> Result<()> {
        let (reply, result) = oneshot::channel();
        // A task more while fewer than a few insert: one statement waiting on a lock (a key
        // another transaction inserts) holds up only the puts of its batch.
        let most = self.inserts_in_flight();
        let start = {
            let mut puts = self.puts.lock();
            puts.queued.push((job, reply));
            let start = puts.inserting < most;
            puts.inserting += usize::from(start);
            start
        };
        if start {
            // Made before the task is spawned, so that a task dropped before it ever ran
            // still gives its place back.
            let inserter = Inserter {
                engine: self.arc(),
                done: false,
            };
            tokio::spawn(inserter.run());
        }
        result.await.unwrap_or_else(|_| {
            Err(Error::Backend {
                message: "postgres: the task inserting single puts stopped before answering".into(),
                source: None,
            })
        })
    }

    /// Inserts one job on `conn` with its edges checked and its enqueue scopes taken, in a
    /// transaction of its own (a savepoint inside the caller's).
    async fn insert_on(
        &self,
        conn: &mut PgConnection,
        mut job: Prepared,
        retry: bool,
    ) -> Result<()> {
        use sqlx::Connection as _;
        // The edges are marked as waited on first in a transaction of their own: marked in the
        // put's, their rows would stay locked until it commits, which for `put_in` is when the
        // caller's transaction does, and a process running one of them would wait that long to
        // refresh any of its locks (one statement refreshes them all). The put's own mark then
        // locks only the edges this one could not mark (not visible to it, as an edge put
        // earlier in the caller's transaction, or locked by that transaction). A mark left by
        // a put that then fails only costs a notification.
        if !job.edges.is_empty() {
            self.mark_dependents_apart(&job.edges).await;
        }
        let mut tx = conn.begin().await.map_err(backend("begin a put"))?;
        let mut failure: Option<String> = None;
        if !job.edges.is_empty() {
            if job.edges.contains(&job.id) {
                return Err(Error::invalid_job(
                    &job.id,
                    format!("it depends on itself, a cycle ('{0}' -> '{0}')", job.id),
                ));
            }
            let known: Vec<(String, i16)> =
                sqlx::query_as(AssertSqlSafe(self.sql.edge_states.clone()))
                    .bind(self.group())
                    .bind(&job.edges)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(backend("look up the job's edges"))?;
            for edge in &job.edges {
                match known.iter().find(|(id, _)| id == edge) {
                    // A retry's edge was known to the attempt before: gone since, the
                    // retention sweep deleted it, finished, and it counts as done, as for a
                    // claim.
                    None if retry => {}
                    None => {
                        // A job put again is a duplicate, whatever became of its edges.
                        let exists: Option<i32> =
                            sqlx::query_scalar(AssertSqlSafe(self.sql.get_attempt_exists.clone()))
                                .bind(self.group())
                                .bind(&job.id)
                                .bind(job.attempt)
                                .fetch_optional(&mut *tx)
                                .await
                                .map_err(backend("look up the job"))?;
                        if exists.is_some() {
                            return Err(Error::duplicate_job(&job.id));
                        }
                        return Err(Error::invalid_job(
                            &job.id,
                            format!("it depends on unknown job '{edge}'"),
                        ));
                    }
                    Some((_, EXPIRED | SET_ASIDE)) => {
                        failure = Some(format!(
                            "dependency unresolved: edge '{edge}' expired or was set aside \
                             before it ran"
                        ));
                        break;
                    }
                    Some(_) => {}
                }
            }
            if failure.is_some() {
                job.state = COMPLETED;
                job.enqueue_scopes.clear();
            }
        }
        let inserted = sqlx::query(AssertSqlSafe(self.sql.insert_one.clone()))
            .bind(self.group())
            .bind(&job.id)
            .bind(job.attempt)
            .bind(job.state)
            .bind(&job.job_type)
            .bind(job.priority)
            .bind(job.wait_until)
            .bind(job.dispatch_by)
            .bind((!job.scopes.is_empty()).then_some(&job.scopes))
            .bind((!job.edges.is_empty()).then_some(&job.edges))
            .bind(&failure)
            .bind(&job.body)
            .bind(job.count)
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend("insert a job"))?;
        if inserted.is_none() {
            return Err(Error::duplicate_job(&job.id));
        }
        if !job.enqueue_scopes.is_empty() {
            self.take_scopes(&mut tx, &job.id, job.attempt, &job.enqueue_scopes)
                .await?;
        }
        if failure.is_some() {
            // Stored finished, it holds nothing: not even the scopes a retry handed it.
            sqlx::query(AssertSqlSafe(self.sql.free_scopes.clone()))
                .bind(self.group())
                .bind(&job.id)
                .bind(job.attempt)
                .execute(&mut *tx)
                .await
                .map_err(backend("free the job's scopes"))?;
        }
        if !job.edges.is_empty() && failure.is_none() {
            sqlx::query(AssertSqlSafe(self.sql.mark_dependents.clone()))
                .bind(self.group())
                .bind(&job.edges)
                .execute(&mut *tx)
                .await
                .map_err(backend("mark the job's edges"))?;
        }
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(&self.channel)
            .bind(self.group())
            .execute(&mut *tx)
            .await
            .map_err(backend("notify"))?;
        tx.commit().await.map_err(backend("commit a put"))?;
        self.ready.notify_one();
        amboy_core::metrics::jobs_put(&self.id, &job.job_type, 1);
        Ok(())
    }

    /// Marks `edges` as waited on, on a connection of the pool, committed at once, as far as
    /// it can within a short while: no connection coming (the caller may hold the pool's
    /// last), or an edge's row locked (by the caller's own transaction, say, which waits for
    /// this), it gives up, and the put marks what is left in its own transaction.
    async fn mark_dependents_apart(&self, edges: &[String]) {
        use sqlx::Connection as _;
        let Ok(Ok(mut conn)) =
            tokio::time::timeout(Duration::from_millis(100), self.pool.acquire()).await
        else {
            return;
        };
        let marked = async {
            let mut tx = conn.begin().await?;
            sqlx::query("SELECT set_config('lock_timeout', '100ms', true)")
                .execute(&mut *tx)
                .await?;
            sqlx::query(AssertSqlSafe(self.sql.mark_dependents.clone()))
                .bind(self.group())
                .bind(edges)
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        };
        if let Err(error) = marked.await {
            tracing::debug!(queue_id = %self.id, error = %error, "edges left to the put's own mark");
        }
    }

    /// Takes `scopes` for attempt `attempt` of job `id` (those it holds already count), or
    /// fails with a duplicate-scope error naming a holder.
    async fn take_scopes(
        &self,
        conn: &mut PgConnection,
        id: &str,
        attempt: i32,
        scopes: &[String],
    ) -> Result<()> {
        let taken: Vec<String> = sqlx::query_scalar(AssertSqlSafe(self.sql.take_scopes.clone()))
            .bind(self.group())
            .bind(scopes)
            .bind(id)
            .bind(attempt)
            .fetch_all(&mut *conn)
            .await
            .map_err(backend("take scopes"))?;
        self.scopes_taken(conn, id, scopes, taken).await
    }

    /// Takes the dispatch scopes of a job this queue claimed (at the count `stored` was read
    /// with), unless it no longer holds it (completed by management, taken over): then it
    /// takes none, and the job is not found.
    async fn take_dispatch_scopes(&self, stored: &StoredJob, scopes: &[String]) -> Result<()> {
        let mut conn = self.pool.acquire().await.map_err(backend("connect"))?;
        let (held, taken): (bool, Vec<String>) =
            sqlx::query_as(AssertSqlSafe(self.sql.take_dispatch_scopes.clone()))
                .bind(self.group())
                .bind(scopes)
                .bind(&stored.id)
                .bind(stored.attempt)
                .bind(&*self.id)
                .bind(stored.mod_count)
                .fetch_one(&mut *conn)
                .await
                .map_err(backend("take scopes"))?;
        if !held {
            return Err(Error::job_not_found_because(
                &stored.id,
                "it was completed, taken over or set aside since it was claimed",
            ));
        }
        self.scopes_taken(&mut conn, &stored.id, scopes, taken)
            .await
    }

    /// Whether every one of `scopes` was `taken`; if not, which is held, and by whom.
    async fn scopes_taken(
        &self,
        conn: &mut PgConnection,
        id: &str,
        scopes: &[String],
        taken: Vec<String>,
    ) -> Result<()> {
        if taken.len() == scopes.len() {
            return Ok(());
        }
        let holders: Vec<(String, String)> =
            sqlx::query_as(AssertSqlSafe(self.sql.scope_holders.clone()))
                .bind(self.group())
                .bind(scopes)
                .fetch_all(&mut *conn)
                .await
                .map_err(backend("read scope holders"))?;
        let (scope, holder) = holders
            .into_iter()
            .find(|(scope, _)| !taken.contains(scope))
            .unwrap_or_else(|| (scopes[0].clone(), String::from("another job")));
        Err(Error::DuplicateScope {
            scope,
            holder,
            requester: id.to_owned(),
        })
    }

    async fn put_many_prepared(&self, jobs: Vec<Result<Prepared>>) -> Result<()> {
        let mut errors = Vec::new();
        let mut plain = Vec::new();
        let mut rest = Vec::new();
        for job in jobs {
            match job {
                Err(error) => errors.push(error),
                Ok(job) if job.is_plain() => plain.push(job),
                Ok(job) => rest.push(job),
            }
        }
        // The plain jobs first, in one statement; then the others one by one, each after the
        // jobs of the batch its edges name.
        errors.extend(self.insert_batch(plain).await);
        if !rest.is_empty() {
            let mut conn = match self.pool.acquire().await {
                Ok(conn) => conn,
                Err(error) => {
                    // The plain jobs' results stand; the others were not put.
                    let failed = per_job(error, "put");
                    errors.extend(rest.iter().map(|job| failed(&job.id)));
                    return collate_write_errors(errors);
                }
            };
            while !rest.is_empty() {
                let waiting: std::collections::HashSet<String> =
                    rest.iter().map(|job| job.id.clone()).collect();
                let (ready, blocked): (Vec<Prepared>, Vec<Prepared>) =
                    rest.into_iter().partition(|job| {
                        !job.edges
                            .iter()
                            .any(|edge| *edge != job.id && waiting.contains(edge))
                    });
                if ready.is_empty() {
                    errors.extend(blocked.into_iter().map(|job| {
                        Error::invalid_job(&job.id, "its edges form a cycle within the batch")
                    }));
                    break;
                }
                for job in ready {
                    if let Err(error) = self.insert_on(&mut conn, job, false).await {
                        errors.push(error);
                    }
                }
                rest = blocked;
            }
        }
        collate_write_errors(errors)
    }
}

// -------------------------------------------------------------------------------------------
// Claims
// -------------------------------------------------------------------------------------------

/// How far ahead the claimer claims: the jobs workers take within this time, at the rate they
/// took them lately.
const CLAIM_AHEAD: Duration = Duration::from_millis(100);

/// The rate at which workers take jobs, a moving average the claimer keeps.
struct Pace {
    handed: usize,
    at: std::time::Instant,
    per_second: f64,
}

impl Pace {
    fn new(handed: usize) -> Self {
        Pace {
            handed,
            at: std::time::Instant::now(),
            per_second: 0.0,
        }
    }

    /// Takes the count of jobs handed so far into the average, every 10 ms at most.
    fn sample(&mut self, handed: usize) {
        let elapsed = self.at.elapsed().as_secs_f64();
        if elapsed < 0.01 {
            return;
        }
        let rate = handed.saturating_sub(self.handed) as f64 / elapsed;
        // Long gaps count in full: the average falls to the rate since the last sample.
        let weight = (elapsed / 0.1).min(1.0);
        self.per_second += (rate - self.per_second) * weight;
        self.handed = handed;
        self.at = std::time::Instant::now();
    }

    /// How many jobs workers take within [`CLAIM_AHEAD`] at this pace.
    fn ahead(&self) -> usize {
        (self.per_second * CLAIM_AHEAD.as_secs_f64()).ceil() as usize
    }
}

impl Engine {
    async fn next_job(&self) -> Result<JobRef> {
        self.check_open()?;
        if let Ok(claimed) = self.claimed_rx.try_recv() {
            return self.hand(claimed);
        }
        let _waiting = Counted::new(&self.waiting);
        self.demand.notify_one();
        tokio::select! {
            biased;
            claimed = self.claimed_rx.recv() => self.hand(claimed.unwrap_or(Err(Error::Closed("queue")))),
            _ = self.lifecycle.lifetime().cancelled() => Err(Error::Closed("queue")),
        }
    }

    /// Counts a job handed to a worker.
    fn hand(&self, claimed: Result<JobRef>) -> Result<JobRef> {
        if claimed.is_ok() {
            self.handed.fetch_add(1, Ordering::Relaxed);
        }
        claimed
    }

    /// Who takes a buffered job soon: waiting `next` calls and workers completing a job.
    fn takers(&self) -> usize {
        self.waiting.load(Ordering::SeqCst) + self.finishing.load(Ordering::SeqCst)
    }

    /// A buffered job if there is one: what `try_next` hands out without waiting.
    fn try_take(&self) -> Option<JobRef> {
        if self.lifecycle.is_closed() {
            return None;
        }
        match self.claimed_rx.try_recv() {
            Ok(Ok(job)) => {
                self.handed.fetch_add(1, Ordering::Relaxed);
                Some(job)
            }
            // An error is for a waiting call; this caller will wait and may get the next one.
            Ok(Err(_)) | Err(_) => None,
        }
    }

    /// The claimer: claims jobs for the waiting `next` calls and the workers completing a job,
    /// and hands them over through the buffer. Each claim is one statement for all the jobs
    /// wanted when it starts; up to [`Engine::claims_in_flight`] run at once, each for jobs
    /// the others do not claim, so that a worker finishing its job has the next one claimed
    /// while its completion is written. Once a claim finds fewer jobs than it wanted, it waits
    /// for a notification, a local put or the poll interval; after a failed claim it backs
    /// off, and the waiting calls get the error. Idle for a poll interval, it gives back
    /// buffered jobs nobody is about to take.
    async fn claimer(self: Arc<Self>) {
        use futures::StreamExt as _;
        let lifetime = self.lifecycle.lifetime().clone();
        let most = self.claims_in_flight();
        let mut in_flight = stream::FuturesUnordered::new();
        // Jobs the claims in flight are claiming.
        let mut claiming = 0;
        let mut failures: u32 = 0;
        // Set when a claim found fewer jobs than it wanted, or failed: no claim starts before
        // this time, or (unless backing off) before jobs may have become ready.
        let mut resting: Option<(tokio::time::Instant, bool)> = None;
        let mut pace = Pace::new(self.handed.load(Ordering::Relaxed));
        loop {
            pace.sample(self.handed.load(Ordering::Relaxed));
            if resting.is_none() && in_flight.len() < most {
                let takers = self.takers();
                let held = self.claimed_rx.len() + claiming;
                // Jobs for the workers that wait or finish a job, and, while they keep
                // coming, for those that will take one within the claim-ahead time. Once the
                // first are provided for, the buffer is filled up only when it is down to half,
                // so that claims are few and large.
                let ahead = if takers == 0 { 0 } else { pace.ahead() };
                let target = takers + ahead;
                let short = if held < takers || held < target.div_ceil(2) {
                    target - held
                } else {
                    0
                };
                if short > 0 {
                    // A power of two, so that each connection prepares few claim statements.
                    let want = short.next_power_of_two().min(self.options.claim_batch);
                    claiming += want;
                    let engine = self.clone();
                    in_flight.push(async move { (want, engine.claim(want).await) });
                    continue;
                }
            }
            let until = resting.map(|(until, _)| until);
            let backing_off = resting.is_some_and(|(_, backing_off)| backing_off);
            tokio::select! {
                _ = lifetime.cancelled() => {
                    // Claims under way finish: the queue is closed, so they give their jobs
                    // back rather than leave them claimed until their locks expire.
                    while in_flight.next().await.is_some() {}
                    self.release_buffered().await;
                    return;
                }
                Some((want, claimed)) = in_flight.next(), if !in_flight.is_empty() => {
                    claiming -= want;
                    match claimed {
                        Ok(claimed) => {
                            failures = 0;
                            if claimed < want && resting.is_none() {
                                let pause = jittered(self.options.poll_interval);
                                resting = Some((tokio::time::Instant::now() + pause, false));
                            }
                        }
                        Err(error) => {
                            failures = failures.saturating_add(1);
                            tracing::warn!(queue_id = %self.id, error = %error, "could not claim jobs");
                            let waiters = self
                                .waiting
                                .load(Ordering::SeqCst)
                                .saturating_sub(self.claimed_rx.len());
                            for _ in 0..waiters {
                                let _ = self.claimed_tx.try_send(Err(error.clone()));
                            }
                            let backoff = Duration::from_millis(10)
                                .saturating_mul(1 << failures.min(7))
                                .min(self.options.poll_interval);
                            resting = Some((tokio::time::Instant::now() + jittered(backoff), true));
                        }
                    }
                }
                _ = self.demand.notified(), if resting.is_none() => {}
                _ = self.ready.notified(), if resting.is_some() && !backing_off => resting = None,
                _ = tokio::time::sleep_until(until.unwrap_or_else(tokio::time::Instant::now)),
                    if until.is_some() => resting = None,
                _ = tokio::time::sleep(self.options.poll_interval),
                    if resting.is_none() && in_flight.is_empty() => self.give_back_unwanted().await,
            }
        }
    }

    /// How many claims may run at once: half the pool, one to four. Under load a claim of a
    /// few hundred jobs takes a while, sharing the server's cores with the completions; with
    /// only two at once they, not the server, bounded a burn-down (about 51k jobs per second
    /// here, against 58k with four).
    fn claims_in_flight(&self) -> usize {
        (self.pool.options().get_max_connections() as usize / 2).clamp(1, 4)
    }

    /// Claims up to `want` jobs; returns how many rows it claimed (some may have been set
    /// aside or given back rather than handed over).
    async fn claim(&self, want: usize) -> Result<usize> {
        self.ensure_schema().await?;
        // Marks the claimed rows, so that they can be found should the reply be lost.
        let token = fastrand::i64(1..);
        let rows = match sqlx::query(AssertSqlSafe(self.sql.claim(want)))
            .bind(self.group())
            .bind(&*self.id)
            .bind(self.options.lock_timeout)
            .bind(token)
            .fetch_all(&self.pool)
            .await
        {
            Ok(rows) => rows,
            Err(error) => {
                if connection_lost(&error) {
                    self.release_lost_claim(token);
                }
                return Err(backend("claim jobs")(error));
            }
        };
        let claimed = rows.len();
        for row in rows {
            let stored = StoredJob::read(&row).map_err(backend("read a claimed job"))?;
            let scopes: Option<Vec<String>> = row.try_get(9).map_err(backend("read scopes"))?;
            let at: &str = row.try_get(10).map_err(backend("read a row's address"))?;
            let locator = locator_of(at);
            let Some(job) = self.admit(stored, scopes.unwrap_or_default()).await else {
                continue;
            };
            job.base().metadata().set_locator(locator);
            // Nobody will take it (the calls it was claimed for were dropped, the workers
            // it was claimed ahead for stopped), or the queue closed: give it back at once
            // rather than hold it.
            if self.takers() == 0
                || self.lifecycle.is_closed()
                || self.claimed_tx.try_send(Ok(job.clone())).is_err()
            {
                self.give_back(&job).await;
            }
        }
        Ok(claimed)
    }

    /// Readies a claimed job to run: decodes it, takes its dispatch scopes, asks its
    /// dependency manager, and tracks its lock. `None` if it does not run now (set aside,
    /// given back, or completed without running).
    async fn admit(&self, stored: StoredJob, mut scopes: Vec<String>) -> Option<JobRef> {
        // Stored before puts and saves took each scope once, a row may name one twice.
        distinct(&mut scopes);
        let job = match stored.job() {
            Ok(job) => job,
            Err(error) => {
                let reason =
                    format!("set aside without running: the stored job cannot be decoded: {error}");
                tracing::error!(queue_id = %self.id, job_id = %stored.id, error = %error, "set aside a stored job that cannot be decoded");
                let _ = sqlx::query(AssertSqlSafe(self.sql.set_aside.clone()))
                    .bind(self.group())
                    .bind(&*self.id)
                    .bind(stored.mod_count)
                    .bind(&stored.id)
                    .bind(stored.attempt)
                    .bind(SET_ASIDE)
                    .bind(reason)
                    .bind(&self.channel)
                    .execute(&self.pool)
                    .await;
                return None;
            }
        };
        if !scopes.is_empty()
            && let Err(error) = self.take_dispatch_scopes(&stored, &scopes).await
        {
            if error.is_job_not_found() {
                // No longer this queue's: whoever has it now decides.
                tracing::debug!(queue_id = %self.id, job_id = job.id(), error = %error, "claimed job lost before it was admitted");
                return None;
            }
            // Taken by another job since the claim looked: back to pending at once, and
            // claimed again once the scope is free.
            tracing::debug!(queue_id = %self.id, job_id = job.id(), error = %error, "dispatch scope taken; job given back");
            let _ = self.release(&job, None).await;
            return None;
        }
        let manager = job.base().metadata().dependency.clone();
        if let Some(manager) = manager {
            let (state, reason) = ask_manager(manager).await;
            match state {
                State::Ready => {}
                State::Blocked => {
                    let later = amboy_core::clock::now()
                        + chrono::TimeDelta::from_std(self.options.poll_interval)
                            .unwrap_or_default();
                    let _ = self.release(&job, Some(later)).await;
                    return None;
                }
                State::Passed => {
                    let _ = self.finish(&job, false).await;
                    return None;
                }
                State::Unresolved => {
                    let reason =
                        reason.unwrap_or_else(|| "the manager cannot be satisfied".to_owned());
                    job.add_error(&format_args!("dependency unresolved: {reason}"));
                    let _ = self.finish(&job, false).await;
                    return None;
                }
            }
        }
        let max_time = {
            let mut meta = job.base().metadata();
            meta.time_info.start = stored.lock_ts.or_else(|| Some(amboy_core::clock::now()));
            meta.time_info.max_time
        };
        self.dispatcher.track(&job, max_time);
        Some(job)
    }

    /// Gives a claimed job back, pending, due no earlier than `not_before`, with the dispatch
    /// scopes it took released, under the fence (one statement: a copy that lost its lock
    /// frees nothing its new owner holds).
    async fn release(&self, job: &JobRef, not_before: Option<DateTime<Utc>>) -> Result<()> {
        let (count, attempt) = {
            let meta = job.base().metadata();
            (
                meta.status.modification_count as i64,
                meta.retry_info.current_attempt as i32,
            )
        };
        sqlx::query(AssertSqlSafe(self.sql.release.clone()))
            .bind(self.group())
            .bind(&*self.id)
            .bind(count)
            .bind(job.id())
            .bind(attempt)
            .bind(not_before)
            .bind(job.enqueue_scopes())
            .bind(&self.channel)
            .execute(&self.pool)
            .await
            .map_err(backend("give a job back"))?;
        Ok(())
    }

    /// Gives back a claimed job that will not run here: its lock no longer refreshed, its
    /// dispatch scopes released, pending again.
    async fn give_back(&self, job: &JobRef) {
        self.dispatcher.forget(job);
        if let Err(error) = self.release(job, None).await {
            tracing::warn!(queue_id = %self.id, job_id = job.id(), error = %error, "could not give a claimed job back; it is claimed again after the lock timeout");
        }
    }

    /// Gives back the jobs of claim `token`, whose connection broke before its reply came: the
    /// claim may have committed, and its jobs, which nobody here holds or heart-beats, would
    /// otherwise wait for the lock timeout. Retried with backoff until the database answers
    /// (within the lock timeout, while the queue is open).
    fn release_lost_claim(&self, token: i64) {
        let engine = self.arc();
        self.lifecycle.spawn(async move {
            let released = engine
                .retried("give back the jobs of a claim whose reply was lost", |_| true, || {
                    sqlx::query_as::<_, (i64, i64)>(AssertSqlSafe(engine.sql.release_claim.clone()))
                        .bind(engine.group())
                        .bind(&*engine.id)
                        .bind(token)
                        .bind(&engine.channel)
                        .fetch_one(&engine.pool)
                })
                .await;
            match released {
                Ok((0, _)) => {}
                Ok((released, _)) => {
                    tracing::warn!(queue_id = %engine.id, released, "gave back the jobs of a claim whose reply was lost");
                    engine.ready.notify_one();
                }
                Err(error) => {
                    tracing::warn!(queue_id = %engine.id, error = %error, "could not give back the jobs of a claim whose reply was lost; they are claimed again after the lock timeout");
                }
            }
        });
    }

    /// Runs `attempt` until it succeeds, fails with an error `retry` refuses, the lock timeout
    /// has passed since the first try or the queue closed; between tries it waits, jittered,
    /// 10 ms doubling up to a second. `doing` says what, in the log.
    async fn retried<T, F>(
        &self,
        doing: &str,
        retry: fn(&sqlx::Error) -> bool,
        mut attempt: impl FnMut() -> F,
    ) -> std::result::Result<T, sqlx::Error>
    where
        F: Future<Output = std::result::Result<T, sqlx::Error>>,
    {
        let lifetime = self.lifecycle.lifetime();
        let started = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(10);
        loop {
            match attempt().await {
                Err(error)
                    if retry(&error)
                        && started.elapsed() < self.options.lock_timeout
                        && !lifetime.is_cancelled() =>
                {
                    tracing::warn!(queue_id = %self.id, error = %error, "could not {doing}; trying again");
                    tokio::select! {
                        _ = lifetime.cancelled() => {}
                        _ = tokio::time::sleep(jittered(backoff)) => {}
                    }
                    backoff = backoff.saturating_mul(2).min(Duration::from_secs(1));
                }
                done => return done,
            }
        }
    }

    /// Gives back buffered jobs nobody is about to take (a worker claimed ahead for stopped
    /// taking jobs), so that other processes may run them.
    async fn give_back_unwanted(&self) {
        while self.claimed_rx.len() > self.takers() {
            match self.claimed_rx.try_recv() {
                Ok(Ok(job)) => self.give_back(&job).await,
                Ok(Err(_)) => {}
                Err(_) => return,
            }
        }
    }

    /// Gives back the jobs claimed and never handed over (at close).
    async fn release_buffered(&self) {
        while let Ok(claimed) = self.claimed_rx.try_recv() {
            if let Ok(job) = claimed {
                self.give_back(&job).await;
            }
        }
    }
}

// -------------------------------------------------------------------------------------------
// Writes of dispatched jobs: complete, save, heartbeat
// -------------------------------------------------------------------------------------------

impl Engine {
    /// Marks `job` finished in memory and writes it: completed, or retrying if it asks to and
    /// may (then it keeps its enqueue scopes for its next attempt). With `retry_done`, a
    /// retrying job's retry is over (complete-retrying).
    async fn finish(&self, job: &JobRef, retry_done: bool) -> Result<()> {
        let dispatched = self.dispatcher.forget(job);
        // The worker that ran it wants its next job: amboy's pools already asked for it (they
        // leave the completion in writing, see `execute_job_behind`); a runner that waits for
        // the completion asks once this returns. Either way, claim that job while the
        // completion is written.
        let _finishing = dispatched.then(|| {
            let finishing = Counted::new(&self.finishing);
            self.demand.notify_one();
            finishing
        });
        let now = amboy_core::clock::now();
        let (row_base, keep, unstored) = {
            let mut meta = job.base().metadata();
            let unstored = meta.status.lock_state();
            if retry_done {
                meta.retry_info.needs_retry = false;
                meta.retry_info.end = Some(now);
            }
            let count = meta.status.modification_count as i64;
            if dispatched || meta.time_info.end.is_none() {
                meta.time_info.end = Some(now);
            }
            meta.status.completed = true;
            meta.status.in_progress = false;
            meta.status.modification_time = Some(now);
            meta.status.modification_count += 1;
            let retrying = meta.retry_info.should_retry();
            let keep = retrying.then(|| meta.effective_enqueue_scopes());
            let scoped = !meta.scopes.is_empty()
                || !meta.enqueue_scopes.is_empty()
                || meta.enqueue_all_scopes;
            (
                (
                    meta.retry_info.current_attempt as i32,
                    count,
                    if retrying { RETRYING } else { COMPLETED },
                    scoped,
                ),
                keep,
                unstored,
            )
        };
        let (attempt, count, mut state, scoped) = row_base;
        let mut keep = keep;
        let mut failure = None;
        let body = if state == COMPLETED && self.options.deletes_completed() {
            // The completion deletes the row: nothing reads its body.
            Some(String::new())
        } else {
            match JobInterchange::from_job(&**job)
                .map_err(Error::from)
                .and_then(|mut envelope| {
                    truncate_errors(&mut envelope.status.errors);
                    encode_body(&envelope, false)
                }) {
                Ok(body) => Some(body),
                Err(error) => {
                    // The job ran, but its final state cannot be stored (its type's `Serialize`
                    // failed or panicked). Left running, it would run again at every lock
                    // timeout; it completes, failed, with the body it was stored with.
                    let reason = format!("its final state could not be stored: {error}");
                    tracing::error!(job_id = %job.id(), error = %error, "completing a job that cannot be encoded");
                    {
                        let mut meta = job.base().metadata();
                        meta.status.errors.push(reason.clone());
                        meta.retry_info.needs_retry = false;
                    }
                    state = COMPLETED;
                    keep = None;
                    failure = Some(reason);
                    self.options.deletes_completed().then(String::new)
                }
            }
        };
        let row = CompletionRow {
            id: job.id().to_owned(),
            attempt,
            count,
            state,
            body,
            scoped,
            keep: keep
                .as_deref()
                .map(|keep| serde_json::to_string(keep).expect("a list of strings encodes")),
            addr: ctid_of(job.base().metadata().locator()),
            failure,
        };
        let sender = self.completions.lock().clone();
        let written = match sender {
            Some(sender) => {
                let (reply, answer) = oneshot::channel();
                match sender.send(Completion { row, reply }) {
                    Err(unsent) => self.complete_rows(vec![unsent.0.row]).await.remove(0),
                    Ok(()) => answer.await.unwrap_or_else(|_| Err(Error::Closed("queue"))),
                }
            }
            None => self.complete_rows(vec![row]).await.remove(0),
        };
        if written.is_err() {
            // Not stored: the copy's status goes back to what is stored, unless it moved on
            // meanwhile, so that a later write of it (a retry handler finishing it, say) is
            // one count ahead of the row, as the fence wants, not several.
            job.base().metadata().status.restore_lock(unstored);
        }
        written
    }

    /// Writes completions; one result per row, in order. Rows whose address is known are
    /// written at it, in one statement; the others, and those not found at their address
    /// (moved by a heartbeat or a save since), by key in a second.
    async fn complete_rows(&self, rows: Vec<CompletionRow>) -> Vec<Result<()>> {
        if let Err(error) = self.ensure_schema().await {
            return rows.iter().map(|_| Err(error.clone())).collect();
        }
        let mut results: Vec<Option<Result<()>>> = rows.iter().map(|_| None).collect();
        let addressed: Vec<&CompletionRow> = rows.iter().filter(|row| row.addr.is_some()).collect();
        if !addressed.is_empty()
            && let Ok(written) = self.write_rows(&self.sql.complete_at, &addressed).await
        {
            let mut written = written.into_iter();
            for (row, result) in rows.iter().zip(&mut results) {
                if row.addr.is_some() && written.next() == Some(true) {
                    *result = Some(Ok(()));
                }
            }
        }
        let rest: Vec<&CompletionRow> = rows
            .iter()
            .zip(&results)
            .filter(|(_, result)| result.is_none())
            .map(|(row, _)| row)
            .collect();
        if !rest.is_empty() {
            let unwritten = rows
                .iter()
                .zip(&mut results)
                .filter(|(_, result)| result.is_none());
            match self.write_rows(&self.sql.complete_many, &rest).await {
                Ok(written) => {
                    for ((row, result), written) in unwritten.zip(written) {
                        *result = Some(if written {
                            Ok(())
                        } else {
                            Err(Error::job_not_found_because(
                                &row.id,
                                "the stored job was modified, taken over or set aside",
                            ))
                        });
                    }
                }
                Err(error) => {
                    let failed = per_job(error, "complete");
                    for (row, result) in unwritten {
                        *result = Some(Err(failed(&row.id)));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|result| result.expect("every row has its result"))
            .collect()
    }

    /// Runs a completion statement for `rows`; whether it wrote each, in order.
    ///
    /// A statement cut off with its connection is run again on another one: its jobs would
    /// otherwise stay running, their locks no longer refreshed, and run again once the locks
    /// timed out. The fence makes the second write safe; if the first did commit, the second
    /// finds the jobs finished and reports them not found.
    async fn write_rows(
        &self,
        sql: &Arc<str>,
        rows: &[&CompletionRow],
    ) -> std::result::Result<Vec<bool>, sqlx::Error> {
        let n = rows.len();
        let mut ids = Vec::with_capacity(n);
        let mut attempts = Vec::with_capacity(n);
        let mut counts = Vec::with_capacity(n);
        let mut states = Vec::with_capacity(n);
        let mut bodies = Vec::with_capacity(n);
        let mut scoped = Vec::with_capacity(n);
        let mut keeps = Vec::with_capacity(n);
        let mut addrs = Vec::with_capacity(n);
        let mut failures = Vec::with_capacity(n);
        for row in rows {
            ids.push(row.id.as_str());
            attempts.push(row.attempt);
            counts.push(row.count);
            states.push(row.state);
            bodies.push(row.body.as_deref());
            scoped.push(row.scoped);
            keeps.push(row.keep.as_deref());
            addrs.push(row.addr.as_deref());
            failures.push(row.failure.as_deref());
        }
        // Almost never any: then no array at all (`unnest` pads a NULL array with NULLs).
        let failures = failures.iter().any(Option::is_some).then_some(failures);
        let written = self
            .retried(
                "write completions (the connection was lost)",
                connection_lost,
                || {
                    sqlx::query(AssertSqlSafe(sql.clone()))
                        .bind(self.group())
                        .bind(&*self.id)
                        .bind(self.options.lock_timeout)
                        .bind(&self.channel)
                        .bind(&ids)
                        .bind(&attempts)
                        .bind(&counts)
                        .bind(&states)
                        .bind(&bodies)
                        .bind(&scoped)
                        .bind(&keeps)
                        .bind(&addrs)
                        .bind(&failures)
                        .fetch_all(&self.pool)
                },
            )
            .await?;
        let mut wrote = vec![false; n];
        for row in &written {
            // The place in the arrays, from 1.
            let place: i64 = row.try_get(0)?;
            if let Some(wrote) = usize::try_from(place - 1)
                .ok()
                .and_then(|index| wrote.get_mut(index))
            {
                *wrote = true;
            }
        }
        Ok(wrote)
    }

    /// The completer: writes the completions gathered while earlier statements ran, a batch
    /// per statement, with up to [`Engine::completions_in_flight`] statements at once: a
    /// completion waits for its own statement, not for the one before it to end.
    async fn completer(self: Arc<Self>, mut inbox: mpsc::UnboundedReceiver<Completion>) {
        use futures::StreamExt as _;
        let max = self.options.complete_batch;
        let most = self.completions_in_flight();
        let mut in_flight = stream::FuturesUnordered::new();
        let mut open = true;
        while open || !in_flight.is_empty() {
            tokio::select! {
                // Cancel-safe: a batch not yet received stays in the inbox.
                batch = async {
                    let mut batch = Vec::with_capacity(max);
                    inbox.recv_many(&mut batch, max).await;
                    batch
                }, if open && in_flight.len() < most => {
                    if batch.is_empty() {
                        open = false;
                    } else {
                        in_flight.push(self.clone().write_completions(batch));
                    }
                }
                Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            }
        }
    }

    /// How many completion statements may run at once: a third of the pool, one to four.
    fn completions_in_flight(&self) -> usize {
        (self.pool.options().get_max_connections() as usize / 3).clamp(1, 4)
    }

    /// Writes one batch of completions and answers each.
    async fn write_completions(self: Arc<Self>, batch: Vec<Completion>) {
        let (rows, replies): (Vec<CompletionRow>, Vec<oneshot::Sender<Result<()>>>) = batch
            .into_iter()
            .map(|completion| (completion.row, completion.reply))
            .unzip();
        let results = self.complete_rows(rows).await;
        for (reply, result) in replies.into_iter().zip(results) {
            let _ = reply.send(result);
        }
    }

    async fn save_job(&self, job: &JobRef) -> Result<()> {
        self.ensure_schema().await?;
        let (attempt, count, owner, scopes) = {
            let meta = job.base().metadata();
            (
                meta.retry_info.current_attempt as i32,
                meta.status.modification_count as i64,
                meta.status.owner.as_deref().map(str::to_owned),
                meta.scopes.clone(),
            )
        };
        let scopes = checked_scopes(job.id(), scopes)?;
        let mut envelope = JobInterchange::from_job(&**job).map_err(Error::from)?;
        truncate_errors(&mut envelope.status.errors);
        let body = encode_body(&envelope, owner.is_none())?;
        let saved = sqlx::query(AssertSqlSafe(self.sql.save.clone()))
            .bind(self.group())
            .bind(&*self.id)
            .bind(self.options.lock_timeout)
            .bind(job.id())
            .bind(attempt)
            .bind(count)
            .bind(owner)
            .bind(body)
            .bind((!scopes.is_empty()).then_some(scopes))
            .fetch_optional(&self.pool)
            .await
            .map_err(backend("save a job"))?;
        match saved {
            Some(row) => {
                let at: &str = row.try_get(1).map_err(backend("read a row's address"))?;
                job.base().metadata().set_locator(locator_of(at));
                Ok(())
            }
            None => Err(Error::job_not_found_because(
                job.id(),
                "not stored, or the stored job was modified by another owner",
            )),
        }
    }
}

#[async_trait]
impl LockStore for Engine {
    async fn save_locks(&self, jobs: &[JobRef]) -> Vec<Result<()>> {
        let mut ids = Vec::with_capacity(jobs.len());
        let mut attempts = Vec::with_capacity(jobs.len());
        let mut counts = Vec::with_capacity(jobs.len());
        for job in jobs {
            let meta = job.base().metadata();
            ids.push(job.id().to_owned());
            attempts.push(meta.retry_info.current_attempt as i32);
            counts.push(meta.status.modification_count as i64);
        }
        // A heartbeat whose connection broke may have committed: the stored counts may be the
        // new ones, which the dispatcher would take back. It is sent again until an answer
        // comes (the fence lets the same counts be written twice).
        let refreshed = self
            .retried("refresh locks", connection_lost, || {
                sqlx::query(AssertSqlSafe(self.sql.heartbeat.clone()))
                    .bind(self.group())
                    .bind(&*self.id)
                    .bind(self.options.lock_timeout)
                    .bind(&ids)
                    .bind(&attempts)
                    .bind(&counts)
                    .fetch_all(&self.pool)
            })
            .await;
        match refreshed {
            Err(error) => {
                let error = backend("refresh locks")(error);
                jobs.iter().map(|_| Err(error.clone())).collect()
            }
            Ok(rows) => {
                // Each refreshed row moved: its new address is the job's locator.
                let refreshed: std::collections::HashMap<(String, i32), u64> = rows
                    .iter()
                    .filter_map(|row| {
                        let key = (row.try_get(0).ok()?, row.try_get(1).ok()?);
                        Some((key, locator_of(row.try_get(2).ok()?)))
                    })
                    .collect();
                jobs.iter()
                    .zip(ids.into_iter().zip(attempts))
                    .map(|(job, key)| match refreshed.get(&key) {
                        Some(&locator) => {
                            job.base().metadata().set_locator(locator);
                            Ok(())
                        }
                        None => Err(Error::job_not_found_because(
                            key.0,
                            "its lock was taken over, or it was finished elsewhere",
                        )),
                    })
                    .collect()
            }
        }
    }
}

// -------------------------------------------------------------------------------------------
// Reads
// -------------------------------------------------------------------------------------------

impl Engine {
    async fn fetch_one(
        &self,
        sql: &Arc<str>,
        id: &str,
        attempt: Option<i32>,
    ) -> Result<Option<StoredJob>> {
        self.ensure_schema().await?;
        let query = sqlx::query(AssertSqlSafe(sql.clone()))
            .bind(self.group())
            .bind(id);
        let query = match attempt {
            Some(attempt) => query.bind(attempt),
            None => query,
        };
        let row = query
            .fetch_optional(&self.pool)
            .await
            .map_err(backend("read a job"))?;
        row.map(|row| StoredJob::read(&row).map_err(backend("read a job")))
            .transpose()
    }

    /// Every job whose state is in `states`, a page at a time.
    fn pages(self: Arc<Self>, states: Vec<i16>) -> stream::BoxStream<'static, Result<StoredJob>> {
        let start = (
            Some((String::new(), -1_i32)),
            std::collections::VecDeque::new(),
        );
        Box::pin(stream::unfold(
            (self, states, start),
            |(engine, states, (mut after, mut buffer))| async move {
                loop {
                    if let Some(job) = buffer.pop_front() {
                        return Some((Ok(job), (engine, states, (after, buffer))));
                    }
                    let (id, attempt) = after.take()?;
                    if let Err(error) = engine.ensure_schema().await {
                        return Some((Err(error), (engine, states, (None, buffer))));
                    }
                    let rows = sqlx::query(AssertSqlSafe(engine.sql.page.clone()))
                        .bind(engine.group())
                        .bind(&id)
                        .bind(attempt)
                        .bind(&states)
                        .bind(PAGE)
                        .fetch_all(&engine.pool)
                        .await;
                    match rows {
                        Err(error) => {
                            let error = backend("read jobs")(error);
                            return Some((Err(error), (engine, states, (None, buffer))));
                        }
                        Ok(rows) => {
                            let full = rows.len() as i64 == PAGE;
                            for row in rows {
                                match StoredJob::read(&row) {
                                    Ok(job) => buffer.push_back(job),
                                    Err(error) => {
                                        return Some((
                                            Err(backend("read jobs")(error)),
                                            (engine, states, (None, buffer)),
                                        ));
                                    }
                                }
                            }
                            if full && let Some(last) = buffer.back() {
                                after = Some((last.id.clone(), last.attempt));
                            }
                            if buffer.is_empty() {
                                return None;
                            }
                        }
                    }
                }
            },
        ))
    }

    async fn stats_now(&self) -> Result<QueueStats> {
        self.ensure_schema().await?;
        let counts: Vec<(i16, i64)> = sqlx::query_as(AssertSqlSafe(self.sql.stats.clone()))
            .bind(self.group())
            .fetch_all(&self.pool)
            .await
            .map_err(backend("count jobs"))?;
        let mut stats = QueueStats::default();
        let mut undecodable = 0;
        for (state, count) in counts {
            let count = count as usize;
            stats.total += count;
            match state {
                PENDING => stats.pending += count,
                RUNNING => stats.running += count,
                COMPLETED => stats.completed += count,
                RETRYING => {
                    stats.completed += count;
                    stats.retrying += count;
                }
                EXPIRED => stats.expired += count,
                SET_ASIDE => {
                    stats.completed += count;
                    undecodable += count;
                }
                _ => {}
            }
        }
        if undecodable > 0 {
            let _ = stats.annotate("undecodable", undecodable);
        }
        Ok(stats)
    }
}

// -------------------------------------------------------------------------------------------
// Background tasks
// -------------------------------------------------------------------------------------------

impl Engine {
    /// Deadlines, unresolvable dependencies, stale retrying jobs and retention, every
    /// maintenance interval.
    async fn maintenance(self: Arc<Self>) {
        let lifetime = self.lifecycle.lifetime().clone();
        let mut ticks = tokio::time::interval(self.options.maintenance_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = lifetime.cancelled() => return,
                _ = ticks.tick() => {}
            }
            if let Err(error) = self.maintain().await {
                tracing::warn!(queue_id = %self.id, error = %error, "queue maintenance failed");
            }
        }
    }

    async fn maintain(&self) -> Result<()> {
        self.ensure_schema().await?;
        let expired: Vec<(String, i64, i64)> =
            sqlx::query_as(AssertSqlSafe(self.sql.expire.clone()))
                .bind(self.group())
                .bind(&self.channel)
                .fetch_all(&self.pool)
                .await
                .map_err(backend("set aside expired jobs"))?;
        for (job_type, count, _) in &expired {
            tracing::debug!(queue_id = %self.id, count, job_type, "set aside expired jobs");
            amboy_core::metrics::jobs_expired(&self.id, job_type, *count as u64);
        }
        let (failed, _): (i64, i64) =
            sqlx::query_as(AssertSqlSafe(self.sql.fail_dependents.clone()))
                .bind(self.group())
                .bind(&self.channel)
                .fetch_one(&self.pool)
                .await
                .map_err(backend("fail jobs with unresolvable edges"))?;
        if failed > 0 {
            tracing::debug!(queue_id = %self.id, count = failed, "failed jobs with unresolvable edges");
        }
        if failed > 0 || !expired.is_empty() {
            self.ready.notify_one();
        }
        let handler = self.retry_handler.lock().clone();
        if let Some(handler) = handler.filter(|handler| handler.started()) {
            let rows = sqlx::query(AssertSqlSafe(self.sql.stale_retrying.clone()))
                .bind(self.group())
                .bind(&*self.id)
                .bind(self.options.lock_timeout)
                .bind(64_i64)
                .fetch_all(&self.pool)
                .await
                .map_err(backend("find stale retrying jobs"))?;
            for row in rows {
                let stored = StoredJob::read(&row).map_err(backend("read a job"))?;
                match stored.job() {
                    Ok(job) => {
                        // A full handler holds up neither this pass (deadlines, retention) nor
                        // the queue's closing: the jobs it has no room for stay retrying, and
                        // are handed over at a later pass.
                        let handed = match handler.try_put(&job) {
                            Some(handed) => handed,
                            None => tokio::select! {
                                _ = self.lifecycle.lifetime().cancelled() => return Ok(()),
                                handed = handler.put(job) => handed,
                            },
                        };
                        match handed {
                            Ok(()) => {}
                            // No room, or no handler: the others wait for a later pass too.
                            Err(Error::QueueFull { .. } | Error::Closed(_)) => break,
                            Err(error) => {
                                tracing::warn!(queue_id = %self.id, job_id = %stored.id, error = %error, "could not hand a stale retrying job to the retry handler");
                            }
                        }
                    }
                    Err(error) => {
                        // Set aside as a claimed job that cannot be decoded is: left retrying,
                        // it would come first in this list at every pass, for ever.
                        tracing::error!(queue_id = %self.id, job_id = %stored.id, error = %error, "set aside a stale retrying job that cannot be decoded");
                        sqlx::query(AssertSqlSafe(self.sql.set_aside_retrying.clone()))
                            .bind(self.group())
                            .bind(&stored.id)
                            .bind(stored.attempt)
                            .bind(stored.mod_count)
                            .bind(format!(
                                "set aside without retrying: the stored job cannot be decoded: {error}"
                            ))
                            .bind(&self.channel)
                            .execute(&self.pool)
                            .await
                            .map_err(backend("set aside a stale retrying job"))?;
                    }
                }
            }
        }
        if let Some(retention) = self.options.retention {
            // A batch at a time, so that no statement runs long, until the old jobs are gone
            // (or a pass has deleted its most): a queue finishing jobs faster than a batch per
            // pass keeps up.
            for _ in 0..SWEEP_BATCHES {
                let deleted = sqlx::query(AssertSqlSafe(self.sql.sweep.clone()))
                    .bind(self.group())
                    .bind(retention)
                    .bind(SWEEP_BATCH as i64)
                    .execute(&self.pool)
                    .await
                    .map_err(backend("delete old jobs"))?
                    .rows_affected();
                if deleted < SWEEP_BATCH || self.lifecycle.is_closed() {
                    break;
                }
            }
        }
        Ok(())
    }

    fn stop_now(&self) {
        self.hub.unsubscribe(&self.ready);
        self.lifecycle.close();
        self.completions.lock().take();
        self.claimed_tx.close();
    }
}

// -------------------------------------------------------------------------------------------
// The traits
// -------------------------------------------------------------------------------------------

#[async_trait]
impl Queue for Engine {
    fn id(&self) -> &str {
        &self.id
    }

    async fn put(&self, job: JobRef) -> Result<()> {
        self.check_open()?;
        self.ensure_schema().await?;
        let prepared = self.prepare(&job)?;
        if prepared.is_plain() {
            return self.put_plain(prepared).await;
        }
        let mut conn = self.pool.acquire().await.map_err(backend("connect"))?;
        self.insert_on(&mut conn, prepared, false).await
    }

    async fn put_many(&self, jobs: Vec<JobRef>) -> Result<()> {
        self.check_open()?;
        self.ensure_schema().await?;
        if jobs.len() < 2 * PIPELINE_CHUNK {
            let prepared = jobs.iter().map(|job| self.prepare(job)).collect();
            return self.put_many_prepared(prepared).await;
        }
        // A large put is encoded a chunk at a time, each chunk's insert running (in a task of
        // its own, a few at once) while the next is encoded.
        let mut errors = Vec::new();
        let mut others = Vec::new();
        let mut chunk = Vec::with_capacity(PIPELINE_CHUNK);
        let mut inserting = tokio::task::JoinSet::new();
        let most = self.inserts_in_flight();
        for job in &jobs {
            match self.prepare(job) {
                Err(error) => errors.push(Err(error)),
                Ok(job) if job.is_plain() => {
                    chunk.push(job);
                    if chunk.len() == PIPELINE_CHUNK {
                        while inserting.len() >= most {
                            let done = inserting.join_next().await.expect("an insert runs");
                            errors.extend(inserted(done));
                        }
                        let engine = self.arc();
                        let full =
                            std::mem::replace(&mut chunk, Vec::with_capacity(PIPELINE_CHUNK));
                        inserting.spawn(async move { engine.insert_chunk(full).await });
                    }
                }
                Ok(job) => others.push(Ok(job)),
            }
        }
        others.extend(chunk.into_iter().map(Ok));
        while let Some(done) = inserting.join_next().await {
            errors.extend(inserted(done));
        }
        others.extend(errors);
        self.put_many_prepared(others).await
    }

    async fn get(&self, id: &str) -> Result<JobRef> {
        match self.fetch_one(&self.sql.get_latest, id, None).await? {
            Some(stored) => stored.job(),
            None => Err(Error::job_not_found(id)),
        }
    }

    async fn next(&self) -> Result<JobRef> {
        self.next_job().await
    }

    fn try_next(&self) -> Option<JobRef> {
        self.try_take()
    }

    fn info(&self) -> QueueInfo {
        QueueInfo {
            started: self.lifecycle.started(),
            lock_timeout: self.options.lock_timeout,
        }
    }

    async fn complete(&self, job: &JobRef) -> Result<()> {
        self.finish(job, false).await
    }

    async fn save(&self, job: &JobRef) -> Result<()> {
        self.save_job(job).await
    }

    async fn results(&self) -> JobStream {
        use futures::StreamExt as _;
        Box::pin(
            self.arc()
                .pages(vec![COMPLETED])
                .filter_map(|stored| async move {
                    match stored {
                        Ok(stored) => stored.job().ok().map(Ok),
                        Err(error) => Some(Err(error)),
                    }
                }),
        )
    }

    async fn job_info(&self) -> JobInfoStream {
        use futures::StreamExt as _;
        let all = vec![PENDING, RUNNING, COMPLETED, RETRYING, EXPIRED, SET_ASIDE];
        Box::pin(
            self.arc()
                .pages(all)
                .map(|stored| stored.map(|stored| stored.info())),
        )
    }

    async fn stats(&self) -> Result<QueueStats> {
        self.stats_now().await
    }

    fn runner(&self) -> Option<Arc<dyn Runner>> {
        self.lifecycle.runner()
    }

    fn set_runner(&self, runner: Arc<dyn Runner>) -> Result<()> {
        self.lifecycle.set_runner(runner, self.arc())
    }

    async fn start(&self) -> Result<()> {
        self.ensure_schema().await?;
        let runner = self.lifecycle.begin(&self.id)?;
        let (sender, inbox) = mpsc::unbounded_channel();
        *self.completions.lock() = Some(sender);
        let engine = self.arc();
        self.lifecycle.spawn(engine.clone().completer(inbox));
        self.lifecycle.spawn(engine.clone().claimer());
        self.hub.subscribe(self.group(), &self.ready);
        self.lifecycle.spawn(engine.clone().maintenance());
        let store: Arc<dyn LockStore> = engine;
        self.dispatcher.start_heartbeat(Arc::downgrade(&store));
        // The retry handler starts before the workers: a job that ran and asked to retry
        // before the handler was running would wait for maintenance, a lock timeout later.
        let handler = self.retry_handler.lock().clone();
        if let Some(handler) = &handler
            && let Err(error) = handler.start().await
        {
            self.stop_now();
            return Err(error);
        }
        if let Err(error) = self.lifecycle.start_runner(&runner).await {
            if let Some(handler) = &handler {
                handler.close().await;
            }
            self.stop_now();
            return Err(error);
        }
        Ok(())
    }

    async fn close(&self) {
        self.lifecycle.close_runner().await;
        let handler = self.retry_handler.lock().clone();
        if let Some(handler) = handler {
            handler.close().await;
        }
        // Completions already sent are written before the completer stops.
        self.completions.lock().take();
        self.release_buffered().await;
        self.stop_now();
        self.dispatcher.close().await;
        self.lifecycle.end().await;
    }

    fn as_retryable(&self) -> Option<&dyn RetryableQueue> {
        Some(self)
    }
}

#[async_trait]
impl RetryableQueue for Engine {
    fn retry_handler(&self) -> Option<Arc<dyn RetryHandler>> {
        self.retry_handler.lock().clone()
    }

    fn set_retry_handler(&self, handler: Arc<dyn RetryHandler>) -> Result<()> {
        if self.lifecycle.started() {
            return Err(Error::AlreadyStarted("queue"));
        }
        handler.set_queue(self.arc())?;
        *self.retry_handler.lock() = Some(handler);
        Ok(())
    }

    async fn get_attempt(&self, id: &str, attempt: u32) -> Result<JobRef> {
        let attempt = i32::try_from(attempt).map_err(|_| Error::job_not_found(id))?;
        match self
            .fetch_one(&self.sql.get_attempt, id, Some(attempt))
            .await?
        {
            Some(stored) => {
                let job = stored.job()?;
                if !job.retry_info().retryable {
                    return Err(Error::job_not_found_because(id, "the job is not retryable"));
                }
                Ok(job)
            }
            None => Err(Error::job_not_found(id)),
        }
    }

    async fn get_all_attempts(&self, id: &str) -> Result<Vec<JobRef>> {
        self.ensure_schema().await?;
        let rows = sqlx::query(AssertSqlSafe(self.sql.get_all_attempts.clone()))
            .bind(self.group())
            .bind(id)
            .fetch_all(&self.pool)
            .await
            .map_err(backend("read a job's attempts"))?;
        let mut jobs = Vec::with_capacity(rows.len());
        for row in rows {
            jobs.push(
                StoredJob::read(&row)
                    .map_err(backend("read a job"))?
                    .job()?,
            );
        }
        // A job put without retries has no attempts (amboy's rule), unless management enqueued
        // it again: its later attempts are retryable, and then its first one counts too.
        if !jobs.iter().any(|job| job.retry_info().retryable) {
            return Err(Error::job_not_found_because(id, "no retryable attempts"));
        }
        Ok(jobs)
    }

    async fn complete_retrying_and_put(&self, to_complete: &JobRef, to_put: JobRef) -> Result<()> {
        use sqlx::Connection as _;
        self.ensure_schema().await?;
        let put = self.prepare(&to_put)?;
        let (old_attempt, count, keep) = {
            let mut meta = to_complete.base().metadata();
            meta.retry_info.needs_retry = false;
            meta.retry_info.end = Some(amboy_core::clock::now());
            (
                meta.retry_info.current_attempt as i32,
                meta.status.modification_count as i64,
                meta.effective_enqueue_scopes(),
            )
        };
        let body = if self.options.deletes_completed() {
            String::new()
        } else {
            let mut envelope = JobInterchange::from_job(&**to_complete).map_err(Error::from)?;
            envelope.status.completed = true;
            envelope.status.in_progress = false;
            envelope.status.modification_count = count as u64 + 1;
            truncate_errors(&mut envelope.status.errors);
            encode_body(&envelope, false)?
        };
        let mut conn = self.pool.acquire().await.map_err(backend("connect"))?;
        let mut tx = conn.begin().await.map_err(backend("begin a retry"))?;
        let completed = sqlx::query(AssertSqlSafe(self.sql.complete_many.clone()))
            .bind(self.group())
            .bind(&*self.id)
            .bind(self.options.lock_timeout)
            .bind(&self.channel)
            .bind(vec![to_complete.id().to_owned()])
            .bind(vec![old_attempt])
            .bind(vec![count])
            .bind(vec![COMPLETED])
            .bind(vec![body])
            .bind(vec![true])
            .bind(vec![json_list(&keep)])
            .bind(vec![None::<String>])
            .bind(vec![None::<String>])
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend("complete a retried job"))?;
        if completed.is_none() {
            return Err(Error::job_not_found_because(
                to_complete.id(),
                "the stored job was modified, taken over or set aside",
            ));
        }
        // The kept enqueue scopes go to the next attempt, which then takes any it lacks.
        sqlx::query(AssertSqlSafe(self.sql.move_scopes.clone()))
            .bind(self.group())
            .bind(to_complete.id())
            .bind(old_attempt)
            .bind(put.attempt)
            .execute(&mut *tx)
            .await
            .map_err(backend("hand scopes to the next attempt"))?;
        self.insert_on(&mut tx, put, true).await?;
        tx.commit().await.map_err(backend("commit a retry"))?;
        {
            let mut meta = to_complete.base().metadata();
            meta.status.completed = true;
            meta.status.in_progress = false;
            meta.status.modification_count = count as u64 + 1;
        }
        Ok(())
    }

    async fn complete_retrying(&self, job: &JobRef) -> Result<()> {
        self.finish(job, true).await
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop_now();
    }
}

impl Drop for PostgresQueue {
    /// The last handle dropped closes the queue.
    fn drop(&mut self) {
        let engine = self.engine.clone();
        let closing = engine.clone();
        self.engine
            .lifecycle
            .abandon(async move { Queue::close(&*closing).await }, move || {
                engine.stop_now()
            });
    }
}

amboy_core::delegate_retryable_queue!(PostgresQueue, engine);

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain job ready to insert.
    fn prepared(id: &str) -> Prepared {
        Prepared {
            id: id.to_owned(),
            attempt: 0,
            state: PENDING,
            job_type: "noop".to_owned(),
            priority: 0,
            wait_until: None,
            dispatch_by: None,
            scopes: Vec::new(),
            enqueue_scopes: Vec::new(),
            edges: Vec::new(),
            count: 0,
            body: "{}".to_owned(),
        }
    }

    /// A queue on a server nobody listens on: nothing here reaches it.
    fn unreachable_queue() -> Arc<PostgresQueue> {
        PostgresQueue::new(PostgresQueueOptions::with_url(
            "postgres://127.0.0.1:9/none",
        ))
        .expect("options")
    }

    /// Queues a single put as `put_plain` does, with `inserting` tasks counted; its answer.
    fn queue_put(engine: &Engine, id: &str, inserting: usize) -> oneshot::Receiver<Result<()>> {
        let (reply, answer) = oneshot::channel();
        let mut puts = engine.puts.lock();
        puts.queued.push((prepared(id), reply));
        puts.inserting = inserting;
        answer
    }

    #[test]
    fn a_put_whose_inserting_task_never_ran_fails_when_the_runtime_shuts_down() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        // The inserting task is spawned as `put_plain` spawns it, and the runtime shuts down
        // before it is ever polled: `block_on` returns as soon as its own future is ready.
        let (queue, mut answer) = runtime.block_on(async {
            let queue = unreachable_queue();
            let answer = queue_put(&queue.engine, "orphan", 1);
            let inserter = Inserter {
                engine: queue.engine.clone(),
                done: false,
            };
            tokio::spawn(inserter.run());
            (queue, answer)
        });
        assert!(
            answer.try_recv().is_err(),
            "not answered while the task may run"
        );
        drop(runtime);
        let error = answer
            .try_recv()
            .expect("answered when the task was dropped")
            .expect_err("the put failed");
        assert!(
            error.to_string().contains("stopped before job 'orphan'"),
            "{error}"
        );
        let puts = queue.engine.puts.lock();
        assert_eq!((puts.inserting, puts.queued.len()), (0, 0));
    }

    #[tokio::test]
    async fn an_inserting_task_that_ends_early_leaves_the_queued_puts_to_the_others() {
        let queue = unreachable_queue();
        let engine = queue.engine.clone();
        let mut answer = queue_put(&engine, "waiting", 2);
        // One of two inserting tasks ends without inserting: the other takes the put.
        drop(Inserter {
            engine: engine.clone(),
            done: false,
        });
        assert_eq!(engine.puts.lock().inserting, 1);
        assert!(
            answer.try_recv().is_err(),
            "still queued for the other task"
        );
        // The last one ends too: the put fails rather than wait for nobody.
        drop(Inserter {
            engine: engine.clone(),
            done: false,
        });
        let error = answer.await.expect("answered").expect_err("failed");
        assert!(error.to_string().contains("'waiting'"), "{error}");
        assert_eq!(engine.puts.lock().inserting, 0);
    }
}

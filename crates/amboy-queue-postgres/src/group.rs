//! The queue group on PostgreSQL (amboy's MongoDB single-collection group, §10.3 of its
//! reference): every queue of the group in the same tables, one `group` value each.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use amboy_core::{
    Error, GroupCache, Queue, QueueGroup, QueueOptions, Result, RetryHandler, RetryableQueue,
    Runner,
};
use async_trait::async_trait;
use parking_lot::Mutex;
use regex::Regex;
use sqlx::AssertSqlSafe;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::notify::Hub;
use crate::queue::{channel_of, open_pool};
use crate::schema::backend;
use crate::{PostgresQueue, PostgresQueueOptions};

/// Settings of one queue of a [`PostgresQueueGroup`], each left unset to keep the value of a
/// lower level: the group's defaults < every matching regular expression, in order < the
/// queue's own entry < the options passed to [`QueueGroup::get`], in order (amboy's field-wise
/// merge).
#[derive(Debug, Clone, Default)]
pub struct PostgresGroupQueueOptions {
    /// How many workers run the queue's jobs in this process.
    pub workers: Option<usize>,
    /// The lock timeout.
    pub lock_timeout: Option<Duration>,
    /// The poll interval.
    pub poll_interval: Option<Duration>,
    /// The most jobs one claim takes.
    pub claim_batch: Option<usize>,
    /// How long finished jobs are kept.
    pub retention: Option<Duration>,
}

impl PostgresGroupQueueOptions {
    /// Overrides with the fields `other` sets.
    fn merge(&mut self, other: &PostgresGroupQueueOptions) {
        self.workers = other.workers.or(self.workers);
        self.lock_timeout = other.lock_timeout.or(self.lock_timeout);
        self.poll_interval = other.poll_interval.or(self.poll_interval);
        self.claim_batch = other.claim_batch.or(self.claim_batch);
        self.retention = other.retention.or(self.retention);
    }

    fn validate(&self) -> Result<()> {
        if self.workers == Some(0) {
            return Err(Error::invalid(
                "a queue of the group needs at least one worker",
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl QueueOptions for PostgresGroupQueueOptions {
    /// Options of a group's queue are merged by the group: a queue is built with
    /// [`QueueGroup::get`], not from these alone.
    async fn build_queue(&self) -> Result<Arc<dyn Queue>> {
        Err(Error::invalid(
            "the options of a PostgreSQL group's queue are merged by the group: use \
             PostgresQueueGroup::get",
        ))
    }

    fn validate(&self) -> Result<()> {
        PostgresGroupQueueOptions::validate(self)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Builds the runner of a group's queue with this many workers.
pub type RunnerFactory = Arc<dyn Fn(usize) -> Arc<dyn Runner> + Send + Sync>;

/// Builds the retry handler of a group's queue.
pub type RetryHandlerFactory = Arc<dyn Fn() -> Result<Arc<dyn RetryHandler>> + Send + Sync>;

/// How a [`PostgresQueueGroup`] reaches its tables and builds its queues.
#[derive(Clone)]
pub struct PostgresQueueGroupOptions {
    /// The database, schema and defaults every queue starts from (their `group` is the
    /// queue's name). A URL is opened once, as one pool all the group's queues share.
    pub queue: PostgresQueueOptions,
    /// The defaults of every queue.
    pub default: PostgresGroupQueueOptions,
    /// Settings of the queues whose names match, applied in order.
    pub regex: Vec<(Regex, PostgresGroupQueueOptions)>,
    /// Settings of one queue each.
    pub per_queue: HashMap<String, PostgresGroupQueueOptions>,
    /// How a queue's runner is built (required).
    pub runner: Option<RunnerFactory>,
    /// How a queue's retry handler is built (none: no retries).
    pub retry_handler: Option<RetryHandlerFactory>,
    /// How long an idle queue object is kept after its last use once its jobs are done; zero
    /// keeps them until they are pruned by hand ([`QueueGroup::prune`], which then closes every
    /// queue whose jobs are done) or the group closes. Pruning closes queue objects only: jobs
    /// stay.
    pub ttl: Duration,
    /// How often queues are pruned (with a `ttl`).
    pub prune_frequency: Duration,
    /// How often the group starts a queue for every group name with active jobs (zero: only
    /// when the group is built).
    pub background_create_frequency: Duration,
}

impl fmt::Debug for PostgresQueueGroupOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresQueueGroupOptions")
            .field("queue", &self.queue)
            .field("default", &self.default)
            .field("regex", &self.regex)
            .field("per_queue", &self.per_queue)
            .field("ttl", &self.ttl)
            .field("prune_frequency", &self.prune_frequency)
            .field(
                "background_create_frequency",
                &self.background_create_frequency,
            )
            .finish_non_exhaustive()
    }
}

impl PostgresQueueGroupOptions {
    /// Options for a group on the database of `queue`, with queues of `workers` workers built by
    /// `runner`, no pruning and no background creation.
    pub fn new(queue: PostgresQueueOptions, workers: usize, runner: RunnerFactory) -> Self {
        PostgresQueueGroupOptions {
            queue,
            default: PostgresGroupQueueOptions {
                workers: Some(workers),
                ..Default::default()
            },
            regex: Vec::new(),
            per_queue: HashMap::new(),
            runner: Some(runner),
            retry_handler: None,
            ttl: Duration::ZERO,
            prune_frequency: Duration::ZERO,
            background_create_frequency: Duration::ZERO,
        }
    }

    /// Checks the options as amboy does: a runner, a valid database, a time to live of zero or
    /// at least a second, set together with a prune frequency.
    pub fn validate(&self) -> Result<()> {
        self.queue.validate()?;
        if self.runner.is_none() {
            return Err(Error::invalid(
                "a PostgreSQL queue group needs a runner factory",
            ));
        }
        if self.default.workers.is_none() {
            return Err(Error::invalid(
                "a PostgreSQL queue group needs a default number of workers",
            ));
        }
        self.default.validate()?;
        // Every setting a queue may be built with, checked now rather than when that queue
        // is first wanted (by a `get`, or by the background start, which would stop there).
        let entries = self
            .regex
            .iter()
            .map(|(pattern, options)| (format!("regex '{pattern}'"), options))
            .chain(
                self.per_queue
                    .iter()
                    .map(|(name, options)| (format!("per_queue '{name}'"), options)),
            );
        for (which, options) in entries {
            let mut merged = self.default.clone();
            merged.merge(options);
            merged
                .validate()
                .and_then(|()| queue_options(&self.queue, "", &merged).validate())
                .map_err(|error| Error::invalid(format!("{which}: {error}")))?;
        }
        if !self.ttl.is_zero() && self.ttl < Duration::from_secs(1) {
            return Err(Error::invalid("ttl must be zero or at least one second"));
        }
        if self.ttl.is_zero() != self.prune_frequency.is_zero() {
            return Err(Error::invalid(
                "ttl and prune_frequency must be set together, or both be zero",
            ));
        }
        Ok(())
    }
}

/// Queues that share one schema's tables, one group name each (amboy's MongoDB single-collection
/// queue group): [`get`](QueueGroup::get) builds and starts a queue on first use with the merged
/// options; the group starts a queue for every name with active jobs when built, and then every
/// `background_create_frequency`; [`queues`](QueueGroup::queues) lists the names with active
/// jobs in the database (not the cache). Pruning closes queue objects whose jobs are done and
/// that were idle for `ttl`; their jobs stay in the tables.
pub struct PostgresQueueGroup {
    options: PostgresQueueGroupOptions,
    /// One listening connection for all the group's queues.
    hub: Arc<Hub>,
    cache: GroupCache,
    lifetime: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Set once the schema was created or brought up to date.
    schema_ready: tokio::sync::OnceCell<()>,
}

impl fmt::Debug for PostgresQueueGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresQueueGroup")
            .field("schema", &self.options.queue.schema)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

impl PostgresQueueGroup {
    /// A group with `options`: starts a queue for every group name with active jobs, then
    /// runs the background pruning and creation the options ask for.
    pub async fn new(mut options: PostgresQueueGroupOptions) -> Result<Arc<Self>> {
        options.validate()?;
        if options.queue.pool.is_none()
            && let Some(url) = &options.queue.url
        {
            options.queue.pool = Some(open_pool(url, options.queue.max_connections)?);
        }
        let pool = options
            .queue
            .pool
            .as_ref()
            .expect("a pool or a URL, validated");
        let hub = Hub::new(pool, channel_of(&options.queue.schema));
        let group = Arc::new(PostgresQueueGroup {
            hub,
            cache: GroupCache::new(options.ttl),
            options,
            lifetime: CancellationToken::new(),
            tasks: Mutex::new(Vec::new()),
            schema_ready: tokio::sync::OnceCell::new(),
        });
        group.start_active().await?;
        let weak = Arc::downgrade(&group);
        if !group.options.prune_frequency.is_zero() {
            let task = tokio::spawn(Self::every(
                weak.clone(),
                group.options.prune_frequency,
                group.lifetime.clone(),
                |group| Box::pin(async move { group.cache.prune().await }),
            ));
            group.tasks.lock().push(task);
        }
        if !group.options.background_create_frequency.is_zero() {
            let task = tokio::spawn(Self::every(
                weak,
                group.options.background_create_frequency,
                group.lifetime.clone(),
                |group| Box::pin(async move { group.start_active().await }),
            ));
            group.tasks.lock().push(task);
        }
        Ok(group)
    }

    /// The queue cache.
    pub fn cache(&self) -> &GroupCache {
        &self.cache
    }

    async fn every(
        group: Weak<Self>,
        period: Duration,
        lifetime: CancellationToken,
        work: impl Fn(Arc<Self>) -> futures::future::BoxFuture<'static, Result<()>> + Send,
    ) {
        let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = lifetime.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let Some(group) = group.upgrade() else { return };
            // Closing the group does not wait for a pass stuck on the database.
            tokio::select! {
                _ = lifetime.cancelled() => return,
                done = work(group) => if let Err(error) = done {
                    tracing::warn!(error = %error, "PostgreSQL queue group maintenance failed");
                },
            }
        }
    }

    /// The group names with active jobs: not finished, retrying, or finished within the time to
    /// live. The names are found by skipping through the primary key, one probe per name, and
    /// each is checked with a probe of the pending, running, retrying and finished jobs'
    /// indexes: the cost grows with the number of names, not of jobs.
    async fn active(&self) -> Result<Vec<String>> {
        let pool = self.options.queue.pool.as_ref().expect("opened by new");
        let schema = &self.options.queue.schema;
        self.schema_ready
            .get_or_try_init(|| crate::schema::migrate(pool, schema))
            .await?;
        let sql = format!(
            "WITH RECURSIVE groups(name) AS ( \
               SELECT min(queue_group) FROM {schema}.jobs \
               UNION ALL \
               SELECT (SELECT min(queue_group) FROM {schema}.jobs WHERE queue_group > g.name) \
               FROM groups g WHERE g.name IS NOT NULL) \
             SELECT g.name FROM groups g WHERE g.name IS NOT NULL AND ( \
               EXISTS (SELECT 1 FROM {schema}.jobs j WHERE j.queue_group = g.name AND j.state = 0) \
               OR EXISTS (SELECT 1 FROM {schema}.jobs j \
                 WHERE j.queue_group = g.name AND j.state = 1) \
               OR EXISTS (SELECT 1 FROM {schema}.jobs j \
                 WHERE j.queue_group = g.name AND j.state = 3) \
               OR EXISTS (SELECT 1 FROM {schema}.jobs j WHERE j.queue_group = g.name \
                 AND j.state IN (2, 4, 5) AND j.finished >= now() - $1::interval)) \
             ORDER BY 1"
        );
        sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(self.options.ttl)
            .fetch_all(pool)
            .await
            .map_err(backend("list active groups"))
    }

    /// Starts a queue for every group name with active jobs; one that cannot be started does
    /// not keep the others from starting.
    async fn start_active(&self) -> Result<()> {
        let mut errors = Vec::new();
        for name in self.active().await? {
            if self.cache.get(&name).is_none()
                && let Err(error) = self.get(&name, &[]).await
            {
                errors.push(error);
            }
        }
        amboy_core::collate_write_errors(errors)
    }

    /// The merged settings of queue `id`.
    fn settings(
        &self,
        id: &str,
        explicit: &[Arc<dyn QueueOptions>],
    ) -> Result<PostgresGroupQueueOptions> {
        let mut merged = self.options.default.clone();
        for (pattern, options) in &self.options.regex {
            if pattern.is_match(id) {
                merged.merge(options);
            }
        }
        if let Some(options) = self.options.per_queue.get(id) {
            merged.merge(options);
        }
        for option in explicit {
            let options = option
                .as_any()
                .downcast_ref::<PostgresGroupQueueOptions>()
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "queue '{id}': a PostgreSQL queue group takes PostgresGroupQueueOptions only"
                    ))
                })?;
            options.validate()?;
            merged.merge(options);
        }
        merged.validate()?;
        Ok(merged)
    }

    async fn build(&self, id: &str, settings: PostgresGroupQueueOptions) -> Result<Arc<dyn Queue>> {
        let options = queue_options(&self.options.queue, id, &settings);
        let queue = PostgresQueue::with_hub(options, Some(self.hub.clone()))?;
        let runner = self.options.runner.as_ref().expect("validated");
        queue.set_runner(runner(settings.workers.expect("validated")))?;
        if let Some(handler) = &self.options.retry_handler {
            queue.set_retry_handler(handler()?)?;
        }
        queue.start().await?;
        Ok(queue)
    }
}

/// The options of queue `id`, on the group's database with its merged `settings`.
fn queue_options(
    base: &PostgresQueueOptions,
    id: &str,
    settings: &PostgresGroupQueueOptions,
) -> PostgresQueueOptions {
    let mut options = base.clone();
    options.group = id.to_owned();
    options.lock_timeout = settings.lock_timeout.unwrap_or(options.lock_timeout);
    options.poll_interval = settings.poll_interval.unwrap_or(options.poll_interval);
    options.claim_batch = settings.claim_batch.unwrap_or(options.claim_batch);
    options.retention = settings.retention.or(options.retention);
    options
}

#[async_trait]
impl QueueGroup for PostgresQueueGroup {
    async fn get(&self, id: &str, options: &[Arc<dyn QueueOptions>]) -> Result<Arc<dyn Queue>> {
        let queue = self
            .cache
            .get_or_build(id, self.options.ttl, || async {
                if self.lifetime.is_cancelled() {
                    return Err(Error::Closed("queue group"));
                }
                let settings = self.settings(id, options)?;
                self.build(id, settings).await
            })
            .await?;
        self.cache
            .unless_closed(id, queue, &self.lifetime, true)
            .await
    }

    async fn put(&self, id: &str, queue: Arc<dyn Queue>) -> Result<()> {
        if self.lifetime.is_cancelled() {
            return Err(Error::Closed("queue group"));
        }
        self.cache.set(id, queue.clone(), self.options.ttl)?;
        self.cache
            .unless_closed(id, queue, &self.lifetime, false)
            .await
            .map(drop)
    }

    async fn prune(&self) -> Result<()> {
        self.cache.prune().await
    }

    async fn close(&self) -> Result<()> {
        self.lifetime.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock());
        for task in tasks {
            let _ = task.await;
        }
        self.cache.close().await;
        Ok(())
    }

    fn len(&self) -> usize {
        self.cache.len()
    }

    fn local_queues(&self) -> Vec<(String, Arc<dyn Queue>)> {
        self.cache.entries()
    }

    /// The group names with active jobs in the database (amboy's); an unreachable database
    /// gives the names of the queues in the cache.
    async fn queues(&self) -> Vec<String> {
        match self.active().await {
            Ok(names) => names,
            Err(error) => {
                tracing::warn!(error = %error, "could not list the active groups");
                self.cache.names()
            }
        }
    }
}

impl Drop for PostgresQueueGroup {
    fn drop(&mut self) {
        self.lifetime.cancel();
    }
}

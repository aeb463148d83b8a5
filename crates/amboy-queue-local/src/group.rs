//! Queue groups in memory: the [`GroupCache`] of named queues with time-to-live pruning, and
//! the [`LocalQueueGroup`] that creates queues on demand (amboy's `GroupCache` and
//! `NewLocalQueueGroup`).

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use amboy_core::{Error, Queue, QueueGroup, QueueOptions, Result};
use async_trait::async_trait;
use futures::future::{BoxFuture, join_all};
use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Called with a queue's name after the cache pruned it.
pub type CleanupHook = Arc<dyn Fn(String) -> BoxFuture<'static, Result<()>> + Send + Sync>;

/// Named queues, each with a time to live counted from its last access (amboy's `GroupCache`).
///
/// Pruning closes and forgets the queues that are complete (their stats say so) and idle past
/// their time to live; a queue whose time to live is zero is pruned as soon as it is complete.
pub struct GroupCache {
    default_ttl: Duration,
    items: Mutex<HashMap<String, Item>>,
    hook: Option<CleanupHook>,
}

#[derive(Clone)]
struct Item {
    queue: Arc<dyn Queue>,
    ttl: Duration,
    last_access: Instant,
    /// How many times the queue was fetched: tells a fetch apart even at the same instant.
    accesses: u64,
}

impl fmt::Debug for GroupCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupCache")
            .field("default_ttl", &self.default_ttl)
            .field("names", &self.names())
            .finish_non_exhaustive()
    }
}

impl GroupCache {
    /// An empty cache whose queues live `default_ttl` after their last access.
    pub fn new(default_ttl: Duration) -> Self {
        GroupCache {
            default_ttl,
            items: Mutex::new(HashMap::new()),
            hook: None,
        }
    }

    /// An empty cache that calls `hook` with the name of every queue it prunes.
    pub fn with_cleanup_hook(default_ttl: Duration, hook: CleanupHook) -> Self {
        GroupCache {
            hook: Some(hook),
            ..GroupCache::new(default_ttl)
        }
    }

    /// Caches `queue` as `id`; a zero `ttl` means the default. An existing `id` is an error.
    pub fn set(&self, id: &str, queue: Arc<dyn Queue>, ttl: Duration) -> Result<()> {
        let mut items = self.items.lock();
        if items.contains_key(id) {
            return Err(Error::invalid(format!("queue '{id}' is already cached")));
        }
        let ttl = if ttl.is_zero() { self.default_ttl } else { ttl };
        items.insert(
            id.to_owned(),
            Item {
                queue,
                ttl,
                last_access: Instant::now(),
                accesses: 0,
            },
        );
        Ok(())
    }

    /// The queue cached as `id`, refreshing its last access.
    pub fn get(&self, id: &str) -> Option<Arc<dyn Queue>> {
        let mut items = self.items.lock();
        let item = items.get_mut(id)?;
        item.last_access = Instant::now();
        item.accesses += 1;
        Some(item.queue.clone())
    }

    /// The number of cached queues.
    pub fn len(&self) -> usize {
        self.items.lock().len()
    }

    /// Whether no queue is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The names of the cached queues, sorted (amboy's `Names` returned mostly empty strings).
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.items.lock().keys().cloned().collect();
        names.sort_unstable();
        names
    }

    /// Closes and forgets the queue cached as `id`; a queue with unfinished jobs is an error.
    /// An unknown `id` is not. The queue is forgotten only if nobody fetched it with
    /// [`get`](Self::get) since it was found complete, as for [`prune`](Self::prune).
    pub async fn remove(&self, id: &str) -> Result<()> {
        let Some((queue, accessed)) = self
            .items
            .lock()
            .get(id)
            .map(|item| (item.queue.clone(), item.accesses))
        else {
            return Ok(());
        };
        if !queue.stats().await?.is_complete() || !self.take_if_untouched(id, &queue, accessed) {
            return Err(Error::invalid(format!("cannot delete active queue '{id}'")));
        }
        queue.close().await;
        Ok(())
    }

    /// Forgets the queue cached as `id` if it is still `queue` and nobody fetched it since it
    /// had been fetched `accesses` times; returns whether it did. Decided under the cache's lock, where `get` records
    /// its access: a queue fetched while it was judged is kept, and a queue forgotten here can
    /// no longer be fetched.
    fn take_if_untouched(&self, id: &str, queue: &Arc<dyn Queue>, accesses: u64) -> bool {
        let mut items = self.items.lock();
        let untouched = items
            .get(id)
            .is_some_and(|item| Arc::ptr_eq(&item.queue, queue) && item.accesses == accesses);
        if untouched {
            items.remove(id);
        }
        untouched
    }

    /// Closes and forgets every queue that is complete and idle past its time to live.
    ///
    /// A queue fetched with [`get`](Self::get) while it is judged is kept: whether it is
    /// complete and whether it was fetched since are decided together, under the cache's lock,
    /// and a queue is closed only once forgotten, so a job put through `get` is never put into
    /// a pruned queue. (A handle fetched before the queue's time to live ran out and kept
    /// meanwhile still reaches the queue: its puts fail with a closed-queue error once it is
    /// pruned.)
    pub async fn prune(&self) -> Result<()> {
        let now = Instant::now();
        let candidates: Vec<(String, Arc<dyn Queue>, u64)> = self
            .items
            .lock()
            .iter()
            .filter(|(_, item)| {
                item.ttl.is_zero() || now.duration_since(item.last_access) > item.ttl
            })
            .map(|(id, item)| (id.clone(), item.queue.clone(), item.accesses))
            .collect();
        let mut errors = Vec::new();
        let pruned = join_all(
            candidates
                .into_iter()
                .map(|(id, queue, accessed)| async move {
                    match queue.stats().await {
                        Ok(stats) if stats.is_complete() => {
                            if !self.take_if_untouched(&id, &queue, accessed) {
                                return None;
                            }
                            queue.close().await;
                            Some(Ok(id))
                        }
                        Ok(_) => None,
                        Err(error) => Some(Err(error)),
                    }
                }),
        )
        .await;
        for outcome in pruned.into_iter().flatten() {
            match outcome {
                Ok(id) => {
                    if let Some(hook) = &self.hook
                        && let Err(error) = hook(id).await
                    {
                        errors.push(error);
                    }
                }
                Err(error) => errors.push(error),
            }
        }
        amboy_core::collate_write_errors(errors)
    }

    /// Closes every queue, at once, and forgets them all.
    pub async fn close(&self) {
        let queues: Vec<Arc<dyn Queue>> = self
            .items
            .lock()
            .drain()
            .map(|(_, item)| item.queue)
            .collect();
        join_all(queues.iter().map(|queue| queue.close())).await;
    }
}

/// Builds a queue (with its runner, not started).
pub type QueueConstructor =
    Arc<dyn Fn() -> BoxFuture<'static, Result<Arc<dyn Queue>>> + Send + Sync>;

/// Builds a queue of a [`LocalQueueGroup`] (amboy's `LocalQueueOptions`).
///
/// ```
/// use amboy_queue_local::{LimitedSizeQueue, LocalGroupQueueOptions};
///
/// // Each queue of the group: a limited-size queue (its runner set before it is used).
/// let options = LocalGroupQueueOptions::new(|| LimitedSizeQueue::new(100));
/// # let _ = options;
/// ```
#[derive(Clone)]
pub struct LocalGroupQueueOptions {
    constructor: QueueConstructor,
}

impl LocalGroupQueueOptions {
    /// Options building each queue with `constructor`: a queue with its runner, not started
    /// (the group starts it). For a constructor that must wait or may fail, see
    /// [`with_async`](Self::with_async).
    pub fn new<Q, F>(constructor: F) -> Self
    where
        Q: Queue,
        F: Fn() -> Arc<Q> + Send + Sync + 'static,
    {
        LocalGroupQueueOptions {
            constructor: Arc::new(move || {
                let queue: Arc<dyn Queue> = constructor();
                Box::pin(std::future::ready(Ok(queue)))
            }),
        }
    }

    /// Options building each queue with an asynchronous constructor that may fail.
    pub fn with_async<F, Fut>(constructor: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Arc<dyn Queue>>> + Send + 'static,
    {
        LocalGroupQueueOptions {
            constructor: Arc::new(move || Box::pin(constructor())),
        }
    }
}

impl fmt::Debug for LocalGroupQueueOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalGroupQueueOptions")
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl QueueOptions for LocalGroupQueueOptions {
    async fn build_queue(&self) -> Result<Arc<dyn Queue>> {
        (self.constructor)().await
    }

    fn validate(&self) -> Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Options of a [`LocalQueueGroup`].
#[derive(Debug, Clone)]
pub struct LocalQueueGroupOptions {
    /// How queues are built unless [`QueueGroup::get`] is given other options.
    pub default_queue: LocalGroupQueueOptions,
    /// How long an idle, complete queue is kept; zero keeps queues until they are pruned by hand
    /// or the group closes. Otherwise at least one second, and the group prunes every `ttl`.
    pub ttl: Duration,
}

impl LocalQueueGroupOptions {
    /// Checks the options.
    pub fn validate(&self) -> Result<()> {
        if !self.ttl.is_zero() && self.ttl < Duration::from_secs(1) {
            return Err(Error::invalid(
                "ttl cannot be less than 1 second, unless it is 0",
            ));
        }
        self.default_queue.validate()
    }
}

/// Named in-memory queues, created and started on first use (amboy's local queue group).
///
/// The queues belong to the group: they run until the group prunes or closes them, whoever
/// asked for them first (amboy bound each queue to the context of the first `Get`).
#[derive(Debug)]
pub struct LocalQueueGroup {
    options: LocalQueueGroupOptions,
    cache: GroupCache,
    lifetime: CancellationToken,
    pruner: Mutex<Option<JoinHandle<()>>>,
}

impl LocalQueueGroup {
    /// A group with these options; with a time to live, it prunes in the background every `ttl`.
    pub fn new(options: LocalQueueGroupOptions) -> Result<Arc<Self>> {
        options.validate()?;
        let group = Arc::new(LocalQueueGroup {
            cache: GroupCache::new(options.ttl),
            options,
            lifetime: CancellationToken::new(),
            pruner: Mutex::new(None),
        });
        if !group.options.ttl.is_zero() {
            let task = tokio::spawn(Self::prune_periodically(
                Arc::downgrade(&group),
                group.options.ttl,
                group.lifetime.clone(),
            ));
            *group.pruner.lock() = Some(task);
        }
        Ok(group)
    }

    /// The group's cache.
    pub fn cache(&self) -> &GroupCache {
        &self.cache
    }

    async fn prune_periodically(
        group: std::sync::Weak<Self>,
        every: Duration,
        lifetime: CancellationToken,
    ) {
        let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
        loop {
            tokio::select! {
                _ = lifetime.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let Some(group) = group.upgrade() else { return };
            if let Err(error) = group.cache.prune().await {
                tracing::warn!(error = %error, "pruning the queue group failed");
            }
        }
    }
}

#[async_trait]
impl QueueGroup for LocalQueueGroup {
    async fn get(&self, id: &str, options: &[Arc<dyn QueueOptions>]) -> Result<Arc<dyn Queue>> {
        if let Some(queue) = self.cache.get(id) {
            return Ok(queue);
        }
        if self.lifetime.is_cancelled() {
            return Err(Error::Closed("queue group"));
        }
        let mut chosen = &self.options.default_queue;
        for option in options {
            chosen = option
                .as_any()
                .downcast_ref::<LocalGroupQueueOptions>()
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "queue '{id}': a local queue group takes LocalGroupQueueOptions only"
                    ))
                })?;
        }
        chosen.validate()?;
        let queue = chosen.build_queue().await?;
        queue.start().await?;
        if self.cache.set(id, queue.clone(), Duration::ZERO).is_err() {
            // Another caller created it meanwhile: keep theirs.
            queue.close().await;
            return self.cache.get(id).ok_or_else(|| Error::job_not_found(id));
        }
        Ok(queue)
    }

    async fn put(&self, id: &str, queue: Arc<dyn Queue>) -> Result<()> {
        if self.lifetime.is_cancelled() {
            return Err(Error::Closed("queue group"));
        }
        self.cache.set(id, queue, Duration::ZERO)
    }

    async fn prune(&self) -> Result<()> {
        self.cache.prune().await
    }

    async fn close(&self) -> Result<()> {
        self.lifetime.cancel();
        let pruner = self.pruner.lock().take();
        if let Some(pruner) = pruner {
            let _ = pruner.await;
        }
        self.cache.close().await;
        Ok(())
    }

    fn len(&self) -> usize {
        self.cache.len()
    }

    async fn queues(&self) -> Vec<String> {
        self.cache.names()
    }
}

impl Drop for LocalQueueGroup {
    fn drop(&mut self) {
        self.lifetime.cancel();
    }
}

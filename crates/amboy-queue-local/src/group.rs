//! Queue groups in memory: the [`LocalQueueGroup`] that creates queues on demand and keeps them
//! in a [`GroupCache`] (amboy's `NewLocalQueueGroup`).

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use amboy_core::{Error, GroupCache, Queue, QueueGroup, QueueOptions, Result};
use async_trait::async_trait;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

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
        let queue = self
            .cache
            .get_or_build(id, Duration::ZERO, || async {
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
                Ok(queue)
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
        self.cache.set(id, queue.clone(), Duration::ZERO)?;
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

    fn local_queues(&self) -> Vec<(String, Arc<dyn Queue>)> {
        self.cache.entries()
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

//! The [`GroupCache`] of named queues with time-to-live pruning (amboy's `GroupCache`), shared
//! by the queue groups.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, join_all};
use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{Error, Queue, Result};

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

    /// The queue cached as `id`, or the one `build` makes, cached with `ttl` (zero: the
    /// default): a group's `get`. Should another caller cache a queue as `id` while `build`
    /// runs, theirs is kept and the one built here is closed.
    pub async fn get_or_build<F, Fut>(
        &self,
        id: &str,
        ttl: Duration,
        build: F,
    ) -> Result<Arc<dyn Queue>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Arc<dyn Queue>>>,
    {
        if let Some(queue) = self.get(id) {
            return Ok(queue);
        }
        let queue = build().await?;
        if self.set(id, queue.clone(), ttl).is_err() {
            queue.close().await;
            return self.get(id).ok_or_else(|| Error::job_not_found(id));
        }
        Ok(queue)
    }

    /// `queue`, just cached as `id` by a group's `get` or `put`, unless the group closed
    /// (`closed` is cancelled): then it is forgotten, closed too if `close` (a queue the group
    /// built), and the group is reported closed. A group's `close` cancels, then empties the
    /// cache; a `get` or `put` that was under way may cache its queue after that, and would
    /// leave it running, cached in a closed group.
    pub async fn unless_closed(
        &self,
        id: &str,
        queue: Arc<dyn Queue>,
        closed: &CancellationToken,
        close: bool,
    ) -> Result<Arc<dyn Queue>> {
        if !closed.is_cancelled() {
            return Ok(queue);
        }
        {
            let mut items = self.items.lock();
            if items
                .get(id)
                .is_some_and(|item| Arc::ptr_eq(&item.queue, &queue))
            {
                items.remove(id);
            }
        }
        if close {
            queue.close().await;
        }
        Err(Error::Closed("queue group"))
    }

    /// The queue cached as `id`, refreshing its last access.
    pub fn get(&self, id: &str) -> Option<Arc<dyn Queue>> {
        let mut items = self.items.lock();
        let item = items.get_mut(id)?;
        item.last_access = Instant::now();
        item.accesses += 1;
        Some(item.queue.clone())
    }

    /// Every cached queue with its name, sorted by name, without refreshing their last access
    /// (looking does not keep a queue from being pruned).
    pub fn entries(&self) -> Vec<(String, Arc<dyn Queue>)> {
        let mut entries: Vec<(String, Arc<dyn Queue>)> = self
            .items
            .lock()
            .iter()
            .map(|(name, item)| (name.clone(), item.queue.clone()))
            .collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        entries
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
        crate::collate_write_errors(errors)
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

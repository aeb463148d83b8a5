//! Wake-ups: one `LISTEN` connection per schema and pool, shared by every queue built on them
//! (a queue group's queues share their group's), which wakes the queues of the group a
//! notification names.

use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// The listening side of a schema's notifications. Its connection is its own (a pool of one
/// that reopens it when lost), outside the pool the queues share, so listening never takes a
/// connection from the workers. The task listening ends when the last queue using the hub
/// drops it.
pub(crate) struct Hub {
    listen_pool: PgPool,
    channel: String,
    subscribers: Mutex<Vec<(String, Weak<Notify>)>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// A hub for `channel`, connecting as `pool` does.
    pub(crate) fn new(pool: &PgPool, channel: String) -> Arc<Hub> {
        let listen_pool = PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy_with(pool.connect_options().as_ref().clone());
        Arc::new(Hub {
            listen_pool,
            channel,
            subscribers: Mutex::new(Vec::new()),
            task: Mutex::new(None),
        })
    }

    /// Wakes `ready` whenever a notification names `group` (and whenever the connection was
    /// opened again, as notifications may have been missed). Starts listening if nobody did.
    pub(crate) fn subscribe(self: &Arc<Self>, group: &str, ready: &Arc<Notify>) {
        {
            let mut subscribers = self.subscribers.lock();
            subscribers.retain(|(_, notify)| notify.strong_count() > 0);
            subscribers.push((group.to_owned(), Arc::downgrade(ready)));
        }
        let mut task = self.task.lock();
        if task.as_ref().is_none_or(|task| task.is_finished()) {
            *task = Some(tokio::spawn(Self::listen(Arc::downgrade(self))));
        }
        // Whatever was notified before the listener listens is found by this first look.
        ready.notify_one();
    }

    /// Stops waking `ready`; with nobody left to wake, stops listening (a later subscription
    /// listens again).
    pub(crate) fn unsubscribe(&self, ready: &Arc<Notify>) {
        let mut subscribers = self.subscribers.lock();
        subscribers.retain(|(_, notify)| {
            notify.strong_count() > 0 && !std::ptr::eq(notify.as_ptr(), Arc::as_ptr(ready))
        });
        if subscribers.is_empty()
            && let Some(task) = self.task.lock().take()
        {
            task.abort();
        }
    }

    fn wake(&self, group: Option<&str>) {
        for (name, notify) in self.subscribers.lock().iter() {
            if group.is_none_or(|group| group == name)
                && let Some(notify) = notify.upgrade()
            {
                notify.notify_one();
            }
        }
    }

    async fn listen(hub: Weak<Hub>) {
        let mut failures: u32 = 0;
        loop {
            let (pool, channel) = match hub.upgrade() {
                Some(hub) => (hub.listen_pool.clone(), hub.channel.clone()),
                None => return,
            };
            let listening = async {
                let mut listener = PgListener::connect_with(&pool).await?;
                listener.ignore_pool_close_event(true);
                listener.listen(&channel).await?;
                Ok::<_, sqlx::Error>(listener)
            };
            let mut listener = match listening.await {
                Ok(listener) => listener,
                Err(error) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(channel, error = %error, "could not listen for notifications; polling meanwhile");
                    let backoff = Duration::from_millis(50).saturating_mul(1 << failures.min(6));
                    tokio::time::sleep(crate::queue::jittered(backoff)).await;
                    continue;
                }
            };
            failures = 0;
            match hub.upgrade() {
                Some(hub) => hub.wake(None),
                None => return,
            }
            loop {
                match listener.try_recv().await {
                    Ok(Some(notification)) => match hub.upgrade() {
                        Some(hub) => hub.wake(Some(notification.payload())),
                        None => return,
                    },
                    // The connection was lost: listen again on a new one.
                    Ok(None) => break,
                    Err(error) => {
                        tracing::warn!(channel, error = %error, "lost the notification connection");
                        break;
                    }
                }
            }
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Some(task) = self.task.get_mut().take() {
            task.abort();
        }
    }
}

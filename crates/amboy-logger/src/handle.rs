//! [`LoggerHandle`]: flush, close and count a logger.

use std::fmt;
use std::sync::Arc;

use amboy_core::Queue;
use tokio::sync::{OnceCell, mpsc, oneshot};

use crate::forward::Message;
use crate::guard::own_work;
use crate::state::State;
use crate::{LoggerStats, Sink, SinkError};

/// What a layer and its handles share.
pub(crate) struct Inner {
    pub(crate) messages: mpsc::Sender<Message>,
    pub(crate) state: Arc<State>,
    pub(crate) sink: Arc<dyn Sink>,
    pub(crate) queue: Arc<dyn Queue>,
    /// Whether the logger made the queue (and closes it).
    pub(crate) owns_queue: bool,
    closed: OnceCell<()>,
}

impl Inner {
    pub(crate) fn new(
        messages: mpsc::Sender<Message>,
        state: Arc<State>,
        sink: Arc<dyn Sink>,
        queue: Arc<dyn Queue>,
        owns_queue: bool,
    ) -> Self {
        Inner {
            messages,
            state,
            sink,
            queue,
            owns_queue,
            closed: OnceCell::new(),
        }
    }

    /// Sends the forwarding task a marker, after every record handed off so far; returns the
    /// number of records it received before the marker, or `None` if it stopped.
    async fn mark(&self, marker: fn(oneshot::Sender<u64>) -> Message) -> Option<u64> {
        let (reply, received) = oneshot::channel();
        self.messages.send(marker(reply)).await.ok()?;
        received.await.ok()
    }

    /// Waits until every record handed off before the marker settled, then flushes the sink.
    async fn settle(&self, marker: fn(oneshot::Sender<u64>) -> Message) -> Result<(), SinkError> {
        if let Some(received) = self.mark(marker).await {
            self.state.settled_below(received).await;
        }
        own_work(self.sink.flush()).await
    }
}

/// Flushes, closes and counts the logger of a [`QueueLayer`](crate::QueueLayer) (amboy's
/// sender's `Flush` and `Close`). Clones share the logger.
#[derive(Clone)]
pub struct LoggerHandle {
    pub(crate) inner: Arc<Inner>,
}

impl LoggerHandle {
    /// Waits until every record handed off before the call was delivered (or failed for
    /// good), then flushes the sink (amboy's `Flush`: `amboy.Wait`, then the sink's flush).
    ///
    /// Records logged while it waits are not waited for, so a busy program does not keep it
    /// waiting. It waits as long as the queue takes to run the jobs: on a queue of your own
    /// ([`QueueLayer::with_queue`](crate::QueueLayer::with_queue)) that stopped running jobs,
    /// bound it with `tokio::time::timeout`. Returns the sink's flush error, if any.
    pub async fn flush(&self) -> Result<(), SinkError> {
        self.inner.settle(Message::Flush).await
    }

    /// Flushes, then stops the logger: events logged from now on are dropped and counted, and
    /// a queue the logger made ([`QueueLayer::new`](crate::QueueLayer::new)) is closed. A queue
    /// of your own stays open, as amboy's `Close` leaves it. Closing again does nothing.
    /// Returns the sink's flush error, if any.
    pub async fn close(&self) -> Result<(), SinkError> {
        let inner = &self.inner;
        let mut result = Ok(());
        inner
            .closed
            .get_or_init(|| async {
                inner.state.close();
                result = inner.settle(Message::Close).await;
                if inner.owns_queue {
                    inner.queue.close().await;
                }
            })
            .await;
        result
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.inner.state.is_closed()
    }

    /// What became of the records so far.
    pub fn stats(&self) -> LoggerStats {
        self.inner.state.stats()
    }

    /// The queue the records go through.
    pub fn queue(&self) -> &Arc<dyn Queue> {
        &self.inner.queue
    }
}

impl fmt::Debug for LoggerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoggerHandle")
            .field("queue", &self.inner.queue.id())
            .field("owns_queue", &self.inner.owns_queue)
            .field("stats", &self.stats())
            .field("closed", &self.is_closed())
            .finish()
    }
}

//! [`QueueLayer`]: the `tracing` layer turning events into send-message jobs, and
//! [`QueueLayerBuilder`], its options.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use amboy_core::{Error, Queue, Result};
use amboy_queue_local::{LimitedSizeQueue, LocalQueueOptions};
use amboy_runner::LocalWorkers;
use tokio::sync::mpsc;
use tracing::level_filters::LevelFilter;
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use crate::forward::{Message, forward};
use crate::guard::{Handling, is_amboy_target, is_own_work};
use crate::handle::{Inner, LoggerHandle};
use crate::state::{Report, State, to_stderr};
use crate::{LogRecord, Sink};

/// The hand-off's default capacity.
const DEFAULT_HANDOFF_CAPACITY: usize = 1024;
/// The default shortest time between two failure reports.
const DEFAULT_REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// A `tracing` layer sending events to a [`Sink`] through an amboy queue (amboy's queue-backed
/// grip sender): each event at or above the layer's level becomes a [`LogRecord`], handed off
/// to a forwarding task that puts it into the queue as a
/// [`SendMessageJob`](crate::SendMessageJob); the queue's workers send it to the sink.
///
/// Build it with [`QueueLayer::new`] (a private queue) or [`QueueLayer::with_queue`] (a queue
/// of your own), or [`QueueLayer::builder`] for the options; each also returns the
/// [`LoggerHandle`] that flushes and closes it. See the [crate documentation](crate) for the
/// events it ignores and what it guarantees.
pub struct QueueLayer {
    inner: Arc<Inner>,
    level: LevelFilter,
}

impl QueueLayer {
    /// A layer over a private, started [`LimitedSizeQueue`] holding up to `capacity` records
    /// waiting to be sent, run by `workers` [`LocalWorkers`] (amboy's `NewQueueBackedSender`),
    /// with the default options (see [`QueueLayerBuilder`]). [`LoggerHandle::close`] closes the
    /// queue. Besides the records waiting, the queue retains its last `capacity − 1` finished
    /// jobs, and with them their records.
    ///
    /// Fails if `workers` or `capacity` is 0, or if the queue does not start.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime: it spawns the forwarding task on the current one.
    pub async fn new(
        sink: Arc<dyn Sink>,
        workers: usize,
        capacity: usize,
    ) -> Result<(QueueLayer, LoggerHandle)> {
        QueueLayer::builder(sink)
            .build_local(workers, capacity)
            .await
    }

    /// A layer over `queue`, a started queue of yours that runs jobs in this process (amboy's
    /// `MakeQueueSender`), with the default options (see [`QueueLayerBuilder`]). The send-message
    /// jobs cannot be stored, so the queue must be an in-memory one. Closing the logger leaves
    /// the queue open.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime: it spawns the forwarding task on the current one.
    pub fn with_queue(queue: Arc<dyn Queue>, sink: Arc<dyn Sink>) -> (QueueLayer, LoggerHandle) {
        QueueLayer::builder(sink).build_with_queue(queue)
    }

    /// Options for a layer sending to `sink`.
    pub fn builder(sink: Arc<dyn Sink>) -> QueueLayerBuilder {
        QueueLayerBuilder {
            sink,
            level: LevelFilter::TRACE,
            handoff_capacity: DEFAULT_HANDOFF_CAPACITY,
            report_interval: DEFAULT_REPORT_INTERVAL,
            report: Arc::new(to_stderr),
        }
    }

    /// A handle on the layer's logger.
    pub fn handle(&self) -> LoggerHandle {
        LoggerHandle {
            inner: self.inner.clone(),
        }
    }

    /// The most verbose level the layer sends.
    pub fn level(&self) -> LevelFilter {
        self.level
    }

    /// Hands the event off without waiting, or counts it as dropped. The record is built only
    /// once there is room for it.
    fn hand_off(&self, record: impl FnOnce() -> LogRecord) {
        let state = &self.inner.state;
        if state.is_closed() {
            state.dropped();
            return;
        }
        match self.inner.messages.try_reserve() {
            Ok(place) => {
                place.send(Message::Record(record()));
                state.handed_off();
            }
            // Full, or closed by `close`.
            Err(_) => state.dropped(),
        }
    }
}

impl<S> Layer<S> for QueueLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.level)
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let metadata = event.metadata();
        if *metadata.level() > self.level || is_amboy_target(metadata.target()) || is_own_work() {
            return;
        }
        // An event emitted while this thread handles another (by a field's `Debug`, say) is
        // ignored: handling it could emit another, without end.
        let Some(_handling) = Handling::enter() else {
            return;
        };
        self.hand_off(|| {
            let spans = ctx
                .event_scope(event)
                .map(|scope| {
                    scope
                        .from_root()
                        .map(|span| span.name().to_owned())
                        .collect()
                })
                .unwrap_or_default();
            LogRecord::from_event(event, spans)
        });
    }
}

impl fmt::Debug for QueueLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueLayer")
            .field("level", &self.level)
            .field("logger", &self.handle())
            .finish()
    }
}

/// The options of a [`QueueLayer`], from [`QueueLayer::builder`].
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use amboy_logger::{LogRecord, QueueLayer, Sink, SinkError};
/// use tracing::level_filters::LevelFilter;
///
/// #[derive(Debug)]
/// struct Discard;
///
/// #[async_trait::async_trait]
/// impl Sink for Discard {
///     async fn send(&self, _record: LogRecord) -> Result<(), SinkError> {
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let (layer, logger) = QueueLayer::builder(Arc::new(Discard))
///     .level(LevelFilter::INFO)
///     .handoff_capacity(256)
///     .report_interval(Duration::from_secs(60))
///     .build_local(2, 128)
///     .await
///     .unwrap();
/// assert_eq!(layer.level(), LevelFilter::INFO);
/// logger.close().await.unwrap();
/// # }
/// ```
pub struct QueueLayerBuilder {
    sink: Arc<dyn Sink>,
    level: LevelFilter,
    handoff_capacity: usize,
    report_interval: Duration,
    report: Report,
}

impl QueueLayerBuilder {
    /// The most verbose level sent; events below it are ignored. Default: every level
    /// (`TRACE`), leaving the choice to the subscriber's other filters.
    pub fn level(mut self, level: impl Into<LevelFilter>) -> Self {
        self.level = level.into();
        self
    }

    /// How many records may wait between the logging threads and the queue (at least 1). An
    /// event logged while it is full is dropped and counted, never waited for. Default: 1024.
    pub fn handoff_capacity(mut self, capacity: usize) -> Self {
        self.handoff_capacity = capacity.max(1);
        self
    }

    /// The shortest time between two failure reports (a put the queue refused, a send the sink
    /// refused); the failures in between are counted in the next report. Default: 10 seconds.
    pub fn report_interval(mut self, interval: Duration) -> Self {
        self.report_interval = interval;
        self
    }

    /// Where failure reports go, one line each. Default: stderr. Never through `tracing`,
    /// which would log the failure through the failing logger; `report` must not log either.
    pub fn report_to(mut self, report: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.report = Arc::new(report);
        self
    }

    /// The layer over a private [`LimitedSizeQueue`]: see [`QueueLayer::new`].
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub async fn build_local(
        self,
        workers: usize,
        capacity: usize,
    ) -> Result<(QueueLayer, LoggerHandle)> {
        if workers == 0 {
            return Err(Error::invalid(
                "a queue-backed logger needs at least one worker",
            ));
        }
        let queue = LimitedSizeQueue::with_options(LocalQueueOptions::new(capacity))?;
        queue.set_runner(LocalWorkers::new(workers))?;
        queue.start().await?;
        Ok(self.build(queue, true))
    }

    /// The layer over `queue`: see [`QueueLayer::with_queue`].
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn build_with_queue(self, queue: Arc<dyn Queue>) -> (QueueLayer, LoggerHandle) {
        self.build(queue, false)
    }

    fn build(self, queue: Arc<dyn Queue>, owns_queue: bool) -> (QueueLayer, LoggerHandle) {
        let state = Arc::new(State::new(self.report, self.report_interval));
        let (messages, received) = mpsc::channel(self.handoff_capacity);
        // The task holds no sender: it ends once the layer and its handles are gone.
        tokio::spawn(forward(
            received,
            state.clone(),
            queue.clone(),
            self.sink.clone(),
        ));
        let inner = Arc::new(Inner::new(messages, state, self.sink, queue, owns_queue));
        let layer = QueueLayer {
            inner,
            level: self.level,
        };
        let handle = layer.handle();
        (layer, handle)
    }
}

impl fmt::Debug for QueueLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueLayerBuilder")
            .field("level", &self.level)
            .field("handoff_capacity", &self.handoff_capacity)
            .field("report_interval", &self.report_interval)
            .finish_non_exhaustive()
    }
}

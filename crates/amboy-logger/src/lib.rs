//! amboy's queue-backed log sender as a `tracing` layer: [`QueueLayer`] turns each event into a
//! [`LogRecord`] and a [`SendMessageJob`] of an amboy queue, whose workers deliver it to a
//! [`Sink`], so that the thread that logs never waits for the sink.
//!
//! It is amboy's `logger` package (`MakeQueueSender`, `NewQueueBackedSender`,
//! `send-grip-message`) with `tracing` in place of grip. It depends on `amboy-core` (the
//! [`Job`](amboy_core::Job) and [`Queue`](amboy_core::Queue) traits), `amboy-queue-local` and
//! `amboy-runner` (the private queue of [`QueueLayer::new`]), and `tracing-subscriber` (the
//! [`Layer`](tracing_subscriber::Layer) trait).
//!
//! ```
//! use std::sync::Arc;
//! use amboy_logger::{LogRecord, QueueLayer, Sink, SinkError};
//! use tracing_subscriber::prelude::*;
//!
//! #[derive(Debug)]
//! struct Stdout;
//!
//! #[async_trait::async_trait]
//! impl Sink for Stdout {
//!     async fn send(&self, record: LogRecord) -> Result<(), SinkError> {
//!         println!("{} {}: {} {:?}", record.level, record.target, record.message, record.fields);
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Two workers send the records of a queue holding up to 1000 of them.
//! let (layer, logger) = QueueLayer::new(Arc::new(Stdout), 2, 1000).await?;
//! let _default = tracing_subscriber::registry().with(layer).set_default();
//!
//! tracing::info!(user = "ada", "signed in");
//!
//! // Before exiting: deliver what was logged, flush the sink, close the queue.
//! logger.close().await?;
//! assert_eq!(logger.stats().delivered, 1);
//! # Ok(())
//! # }
//! ```
//!
//! # How an event travels
//!
//! 1. The layer's `on_event` (on the thread that logs) builds the record and hands it to a
//!    bounded channel with `try_send`: it never blocks and never awaits. A full channel (see
//!    [`QueueLayerBuilder::handoff_capacity`]) drops the record and counts it
//!    ([`LoggerStats::dropped`]).
//! 2. A forwarding task, spawned when the layer is built, puts each record into the queue as a
//!    send-message job, in the order handed off; a put waits while the queue is full. A put
//!    the queue refuses is counted ([`LoggerStats::put_failures`]) and reported on stderr (or
//!    [`QueueLayerBuilder::report_to`]) at most once per report interval.
//! 3. A worker runs the job: [`Sink::send`]. A refusal is counted
//!    ([`LoggerStats::send_failures`]), reported like a put failure, and recorded as the job's
//!    error; the workers go on delivering.
//!
//! With one worker, records reach the sink in the order they were logged. With several, as in
//! amboy, there is no ordering guarantee.
//!
//! # What is not logged
//!
//! The layer ignores, without counting them:
//!
//! * events below its level ([`QueueLayerBuilder::level`]);
//! * events whose target starts with `amboy` (`amboy`, `amboy_core::…`, `amboy_queue_local::…`,
//!   `amboy_runner::…`, this crate): amboy's own events, which the queue and runner emit
//!   while they handle the log jobs, and which would otherwise become log jobs in turn. A crate
//!   of yours whose name starts with `amboy` is ignored too;
//! * events emitted by the logger's own work, in the task doing it: the forwarding task's puts
//!   (whatever the queue logs about them) and a job's [`Sink::send`] and [`Sink::flush`]
//!   (whatever the sink logs). The mark is a tokio task-local, so it does not follow work the
//!   sink or the queue spawns onto other tasks or threads;
//! * events emitted while the same thread is inside the layer's `on_event` (by a field's
//!   `Debug` implementation, say).
//!
//! # Invariants
//!
//! * **It never blocks the thread that logs**: `on_event` takes no lock that the workers
//!   hold across a wait and never awaits; when the hand-off is full, it drops.
//! * **It never recurses** (amboy's fix 11: amboy's sender logged a failed put through itself,
//!   which put another job, without end): a failed put is counted and reported on stderr, never
//!   logged; the logger's own work and amboy's events are not logged; `on_event` does not
//!   re-enter itself.
//! * **A flush delivers what was logged before it**: [`LoggerHandle::flush`] returns once every
//!   record handed off before the call was delivered or failed for good, then flushes the sink.
//! * Every record handed off ends as exactly one of delivered, put failure, send failure or
//!   dropped (see [`LoggerStats`]).
//!
//! Build layers inside a tokio runtime: the forwarding task is spawned on the current one, and
//! the workers of [`QueueLayer::new`] too.
//!
//! Most users want the `amboy` crate, which re-exports this one behind its `logger` feature.

mod forward;
mod guard;
mod handle;
mod job;
mod layer;
mod record;
mod sink;
mod state;

pub use handle::LoggerHandle;
pub use job::SendMessageJob;
pub use layer::{QueueLayer, QueueLayerBuilder};
pub use record::LogRecord;
pub use sink::{Sink, SinkError};
pub use state::LoggerStats;

/// Compile-time checks that the sink trait is object-safe and the public types `Send + Sync`.
#[allow(dead_code)]
fn _assertions() {
    fn send_sync<T: ?Sized + Send + Sync>() {}
    send_sync::<dyn Sink>();
    send_sync::<QueueLayer>();
    send_sync::<QueueLayerBuilder>();
    send_sync::<LoggerHandle>();
    send_sync::<LogRecord>();
    send_sync::<SendMessageJob>();
    send_sync::<SinkError>();
    send_sync::<LoggerStats>();
}

//! [`Sink`]: where records are delivered, and [`SinkError`], how a delivery fails.

use std::fmt;

use async_trait::async_trait;

use crate::LogRecord;

/// Where log records go (amboy's wrapped grip `Sender`): a file, a log service, a channel.
///
/// The queue's workers call [`send`](Sink::send), one record per job, possibly from several
/// workers at once: with more than one worker, records may arrive out of order.
/// [`LoggerHandle::flush`](crate::LoggerHandle::flush) calls [`flush`](Sink::flush) once every
/// record logged before it was sent.
///
/// A sink may log with `tracing`: events emitted while it sends or flushes (in the task doing
/// so) are not logged back into the queue. Events from tasks or threads it spawns are, so a
/// sink that spawns must not log from there, or its own records would keep feeding it.
///
/// ```
/// use amboy_logger::{LogRecord, Sink, SinkError};
///
/// #[derive(Debug)]
/// struct Stdout;
///
/// #[async_trait::async_trait]
/// impl Sink for Stdout {
///     async fn send(&self, record: LogRecord) -> Result<(), SinkError> {
///         println!("{} {} {}", record.level, record.target, record.message);
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// Delivers one record. An error is counted
    /// ([`LoggerStats::send_failures`](crate::LoggerStats::send_failures)) and recorded as the
    /// send-message job's error; the record is not retried.
    async fn send(&self, record: LogRecord) -> Result<(), SinkError>;

    /// Makes what was sent durable (flushes buffers). The default does nothing.
    async fn flush(&self) -> Result<(), SinkError> {
        Ok(())
    }
}

impl fmt::Debug for dyn Sink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sink").finish_non_exhaustive()
    }
}

/// Why a [`Sink`] could not send or flush.
///
/// Its message is what it displays; a source error, if any, is its
/// [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl SinkError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        SinkError {
            message: message.into(),
            source: None,
        }
    }

    /// An error with this message, caused by `source`.
    pub fn with_source(
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        SinkError {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

//! [`SendMessageJob`]: one record on its way to a sink (amboy's `send-grip-message` job).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use amboy_core::{Base, Job, JobContext, JobError};
use serde::{Deserialize, Serialize};

use crate::guard::own_work;
use crate::state::{Fate, Ticket};
use crate::{LogRecord, Sink};

/// Numbers the jobs' IDs, process-wide (amboy's `job.GetNumber`).
static NUMBER: AtomicU64 = AtomicU64::new(0);

/// A job that sends one record to a sink (amboy's `send-grip-message`).
///
/// Its ID is `queued-message-<n>`, `n` counting the jobs made in this process. Its version is
/// −1, as amboy's: the job holds its sink, which cannot be stored, so it runs on in-memory
/// queues only (`amboy-registry`'s `JobInterchange::from_job` refuses it). A
/// job decoded anyway has no sink, and its run fails saying so.
///
/// Its run sends the record; the sink's error becomes the job's error. Events the sink emits
/// while sending are not logged back into a [`QueueLayer`](crate::QueueLayer).
///
/// ```
/// use std::sync::Arc;
/// use amboy_core::{Job, run_job};
/// use amboy_logger::{LogRecord, SendMessageJob, Sink, SinkError};
///
/// #[derive(Debug)]
/// struct Refuse;
///
/// #[async_trait::async_trait]
/// impl Sink for Refuse {
///     async fn send(&self, _record: LogRecord) -> Result<(), SinkError> {
///         Err(SinkError::new("disk full"))
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let record = LogRecord::new(tracing::Level::INFO, "app", "hello");
/// let job = SendMessageJob::new(record, Arc::new(Refuse));
/// assert!(job.id().starts_with("queued-message-"));
/// assert_eq!(job.job_type().name, "send-grip-message");
/// assert_eq!(job.job_type().version, -1);
/// assert_eq!(run_job(&job).await.unwrap_err().message(), "disk full");
/// # }
/// ```
#[derive(Serialize, Deserialize)]
pub struct SendMessageJob {
    base: Base,
    record: LogRecord,
    #[serde(skip)]
    sink: Option<Arc<dyn Sink>>,
    /// Counts the record's fate for the logger that made the job.
    #[serde(skip)]
    ticket: Option<Ticket>,
}

impl SendMessageJob {
    /// The job type's registered name.
    pub const TYPE_NAME: &'static str = "send-grip-message";

    /// A job sending `record` to `sink`.
    pub fn new(record: LogRecord, sink: Arc<dyn Sink>) -> Self {
        SendMessageJob {
            base: Base::with_id(format!(
                "queued-message-{}",
                NUMBER.fetch_add(1, Ordering::Relaxed) + 1
            )),
            record,
            sink: Some(sink),
            ticket: None,
        }
    }

    /// A job whose record's fate `ticket` counts.
    pub(crate) fn tracked(record: LogRecord, sink: Arc<dyn Sink>, ticket: Ticket) -> Self {
        SendMessageJob {
            ticket: Some(ticket),
            ..Self::new(record, sink)
        }
    }

    /// The record the job sends.
    pub fn record(&self) -> &LogRecord {
        &self.record
    }

    /// Settles the record's fate, if a logger counts it.
    pub(crate) fn settle(&self, fate: Fate) {
        if let Some(ticket) = &self.ticket {
            ticket.settle(fate);
        }
    }

    async fn deliver(&self) -> Result<(), JobError> {
        let Some(sink) = &self.sink else {
            self.settle(Fate::SendFailed);
            return Err(JobError::new(format!(
                "job '{}' has no sink to send its message to",
                self.id()
            )));
        };
        // Settles the record as a send failure if the send panics or is cancelled.
        let _unfinished = Unfinished(self);
        match sink.send(self.record.clone()).await {
            Ok(()) => {
                self.settle(Fate::Delivered);
                Ok(())
            }
            Err(error) => {
                self.settle(Fate::SendFailed);
                if let Some(ticket) = &self.ticket {
                    ticket.state().report(format_args!(
                        "the sink refused a log record ({}): {error}",
                        self.id()
                    ));
                }
                Err(error.into())
            }
        }
    }
}

/// A send that did not finish: dropped by a cancelled run, or unwound by a panic.
struct Unfinished<'a>(&'a SendMessageJob);

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        self.0.settle(Fate::SendFailed);
    }
}

#[typetag::serde(name = "send-grip-message")]
#[async_trait::async_trait]
impl Job for SendMessageJob {
    fn base(&self) -> &Base {
        &self.base
    }

    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        own_work(self.deliver()).await
    }

    fn version(&self) -> i32 {
        -1
    }
}

impl fmt::Debug for SendMessageJob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendMessageJob")
            .field("id", &self.base.id())
            .field("record", &self.record)
            .field("has_sink", &self.sink.is_some())
            .finish_non_exhaustive()
    }
}

//! A sink that collects what it receives, with switches for the ways a sink misbehaves.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use amboy_logger::{LogRecord, Sink, SinkError};
use parking_lot::Mutex;

/// Collects the records it is sent.
#[derive(Debug, Default)]
pub(crate) struct Collect {
    pub(crate) records: Mutex<Vec<LogRecord>>,
    /// How many records had arrived at each flush.
    pub(crate) flushes: Mutex<Vec<usize>>,
    /// Refuses records whose message contains this.
    pub(crate) fail_on: Option<&'static str>,
    /// Panics on records whose message contains this.
    pub(crate) panic_on: Option<&'static str>,
    /// Logs (at `WARN`, target `test_sink`) while sending and flushing.
    pub(crate) chatty: bool,
}

impl Collect {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Collect::default())
    }

    pub(crate) fn records(&self) -> Vec<LogRecord> {
        self.records.lock().clone()
    }

    pub(crate) fn messages(&self) -> Vec<String> {
        self.records
            .lock()
            .iter()
            .map(|record| record.message.clone())
            .collect()
    }

    /// How many records had arrived at each flush, in order.
    pub(crate) fn flushes(&self) -> Vec<usize> {
        self.flushes.lock().clone()
    }
}

#[async_trait::async_trait]
impl Sink for Collect {
    async fn send(&self, record: LogRecord) -> Result<(), SinkError> {
        if self.chatty {
            tracing::warn!(target: "test_sink", message = %record.message, "sending a record");
        }
        if self
            .fail_on
            .is_some_and(|fail| record.message.contains(fail))
        {
            return Err(SinkError::new(format!("refused '{}'", record.message)));
        }
        if self
            .panic_on
            .is_some_and(|panic| record.message.contains(panic))
        {
            panic!("sink panicked on '{}'", record.message);
        }
        // Take a while, as a real sink's I/O would: other workers, the forwarding task and the
        // test's own task run meanwhile, so a flush that did not wait would see records missing.
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
        self.records.lock().push(record);
        Ok(())
    }

    async fn flush(&self) -> Result<(), SinkError> {
        if self.chatty {
            tracing::warn!(target: "test_sink", "flushing");
        }
        let delivered = self.records.lock().len();
        self.flushes.lock().push(delivered);
        Ok(())
    }
}

/// A report destination counting its lines.
pub(crate) fn report_counter() -> (Arc<AtomicUsize>, impl Fn(&str) + Send + Sync + 'static) {
    let lines = Arc::new(AtomicUsize::new(0));
    let count = lines.clone();
    (lines, move |line: &str| {
        assert!(line.starts_with("amboy-logger: "), "{line}");
        count.fetch_add(1, Ordering::SeqCst);
    })
}

//! The state a logger's layer, handles, forwarder and jobs share: the counts, the records not
//! yet settled, and the rate-limited failure report.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::Notify;

/// What became of the records a logger was given, counted since it was built.
///
/// Every record [handed off](LoggerStats::handed_off) ends, once flushed, as exactly one of
/// delivered, a put failure, a send failure, or dropped (when the logger closed before it was
/// enqueued, or its job never ran).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct LoggerStats {
    /// Records handed from the logging thread to the forwarding task.
    pub handed_off: u64,
    /// Records the sink accepted.
    pub delivered: u64,
    /// Events not delivered because the hand-off was full or the logger closed, and records
    /// whose job was dropped without running.
    pub dropped: u64,
    /// Records whose job the queue refused.
    pub put_failures: u64,
    /// Records the sink refused (or whose send panicked or was cancelled).
    pub send_failures: u64,
}

/// How a handed-off record ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    Delivered,
    SendFailed,
    PutFailed,
    Dropped,
}

/// Where failure reports go.
pub(crate) type Report = Arc<dyn Fn(&str) + Send + Sync>;

/// Writes a report line to stderr, ignoring a stderr that cannot be written.
pub(crate) fn to_stderr(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// A logger's shared state.
pub(crate) struct State {
    handed_off: AtomicU64,
    delivered: AtomicU64,
    dropped: AtomicU64,
    put_failures: AtomicU64,
    send_failures: AtomicU64,
    closed: AtomicBool,
    /// The sequence numbers of the records enqueued (or being enqueued) and not settled yet.
    unsettled: Mutex<BTreeSet<u64>>,
    /// Woken whenever a record settles.
    settled: Notify,
    report: Report,
    report_interval: Duration,
    /// When the last report was written, and how many failures went unreported since.
    last_report: Mutex<(Option<Instant>, u64)>,
}

impl State {
    pub(crate) fn new(report: Report, report_interval: Duration) -> Self {
        State {
            handed_off: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            put_failures: AtomicU64::new(0),
            send_failures: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            unsettled: Mutex::new(BTreeSet::new()),
            settled: Notify::new(),
            report,
            report_interval,
            last_report: Mutex::new((None, 0)),
        }
    }

    pub(crate) fn stats(&self) -> LoggerStats {
        LoggerStats {
            handed_off: self.handed_off.load(Ordering::SeqCst),
            delivered: self.delivered.load(Ordering::SeqCst),
            dropped: self.dropped.load(Ordering::SeqCst),
            put_failures: self.put_failures.load(Ordering::SeqCst),
            send_failures: self.send_failures.load(Ordering::SeqCst),
        }
    }

    pub(crate) fn handed_off(&self) {
        self.handed_off.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn dropped(&self) {
        self.dropped.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Tracks the record `seq` until it settles.
    pub(crate) fn track(&self, seq: u64) {
        self.unsettled.lock().insert(seq);
    }

    /// Records how the record `seq` ended. Counted before it stops being tracked, so that the
    /// stats read after a flush include it.
    pub(crate) fn settle(&self, seq: u64, fate: Fate) {
        let count = match fate {
            Fate::Delivered => &self.delivered,
            Fate::SendFailed => &self.send_failures,
            Fate::PutFailed => &self.put_failures,
            Fate::Dropped => &self.dropped,
        };
        count.fetch_add(1, Ordering::SeqCst);
        self.unsettled.lock().remove(&seq);
        self.settled.notify_waiters();
    }

    /// Waits until every tracked record numbered below `end` settled.
    pub(crate) async fn settled_below(&self, end: u64) {
        loop {
            let notified = self.settled.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self
                .unsettled
                .lock()
                .first()
                .is_none_or(|&first| first >= end)
            {
                return;
            }
            notified.await;
        }
    }

    /// Reports a failure in one line, at most once per report interval; the failures in
    /// between are counted in the next line. Never logs through `tracing`.
    pub(crate) fn report(&self, failure: fmt::Arguments<'_>) {
        let unreported = {
            let mut last = self.last_report.lock();
            let now = Instant::now();
            if last
                .0
                .is_some_and(|at| now.duration_since(at) < self.report_interval)
            {
                last.1 += 1;
                return;
            }
            last.0 = Some(now);
            std::mem::take(&mut last.1)
        };
        let stats = self.stats();
        let line = format!(
            "amboy-logger: {failure} ({} put failures, {} send failures, {} dropped so far; \
             {unreported} failures since the last report)",
            stats.put_failures, stats.send_failures, stats.dropped
        );
        (self.report)(&line);
    }
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("State")
            .field("stats", &self.stats())
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

/// One handed-off record's claim to be settled: settled once, by whoever learns its fate first,
/// and as dropped if nobody did before it goes away.
pub(crate) struct Ticket {
    state: Arc<State>,
    seq: u64,
    settled: AtomicBool,
}

impl Ticket {
    /// Tracks the record `seq`.
    pub(crate) fn new(state: Arc<State>, seq: u64) -> Self {
        state.track(seq);
        Ticket {
            state,
            seq,
            settled: AtomicBool::new(false),
        }
    }

    pub(crate) fn state(&self) -> &State {
        &self.state
    }

    /// Settles the record, unless it was settled already.
    pub(crate) fn settle(&self, fate: Fate) {
        if !self.settled.swap(true, Ordering::SeqCst) {
            self.state.settle(self.seq, fate);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.settle(Fate::Dropped);
    }
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("seq", &self.seq)
            .field("settled", &self.settled.load(Ordering::SeqCst))
            .finish()
    }
}

//! Jobs waiting for their `wait_until` time, released by one timer task.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use tokio::sync::Notify;

/// A min-heap of jobs (or job keys) by `wait_until`, with a notification when the earliest time
/// changes.
#[derive(Debug)]
pub(crate) struct Delayed<T> {
    heap: Mutex<Heap<T>>,
    sequence: AtomicU64,
    changed: Notify,
}

#[derive(Debug)]
struct Heap<T> {
    entries: BinaryHeap<Entry<T>>,
    /// Jobs finished from outside since the heap was last swept, some of which may wait here.
    gone: usize,
}

impl<T> Default for Delayed<T> {
    fn default() -> Self {
        Delayed {
            heap: Mutex::new(Heap {
                entries: BinaryHeap::new(),
                gone: 0,
            }),
            sequence: AtomicU64::new(0),
            changed: Notify::new(),
        }
    }
}

#[derive(Debug)]
struct Entry<T> {
    at: DateTime<Utc>,
    sequence: u64,
    job: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl<T> Eq for Entry<T> {}

impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Entry<T> {
    /// Reversed, so that the max-heap yields the earliest time (then the first pushed).
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .at
            .cmp(&self.at)
            .then_with(|| other.sequence.cmp(&self.sequence))
    }
}

impl<T> Delayed<T> {
    /// Holds `job` until `at`.
    pub(crate) fn push(&self, at: DateTime<Utc>, job: T) {
        let sequence = self.sequence.fetch_add(1, AtomicOrdering::Relaxed);
        let earliest = {
            let mut heap = self.heap.lock();
            heap.entries.push(Entry { at, sequence, job });
            heap.entries
                .peek()
                .is_some_and(|head| head.sequence == sequence)
        };
        if earliest {
            self.changed.notify_one();
        }
    }

    /// Takes every job whose time has passed; otherwise returns how long until the next one.
    pub(crate) fn take_due(&self, now: DateTime<Utc>) -> (Vec<T>, Option<Duration>) {
        let mut heap = self.heap.lock();
        let mut due = Vec::new();
        while let Some(head) = heap.entries.peek() {
            if head.at < now {
                due.push(heap.entries.pop().expect("peeked").job);
            } else {
                let wait = (head.at - now).to_std().unwrap_or_default() + Duration::from_millis(1);
                return (due, Some(wait));
            }
        }
        (due, None)
    }

    /// Notes that a pending job finished from outside (it may wait here, or not): once such
    /// notes outnumber half the entries, only those `is_live` keeps stay, at an amortized
    /// constant cost per note. Finished entries so never outnumber the notes since the last
    /// sweep, nor these the queue's capacity: the heap holds at most twice the capacity. (They
    /// may stay until a later note, or until their time, when the timer takes live entries
    /// out meanwhile.)
    pub(crate) fn forget_one(&self, is_live: impl Fn(&T) -> bool) {
        let mut heap = self.heap.lock();
        heap.gone += 1;
        if heap.gone * 2 > heap.entries.len() {
            heap.entries.retain(|entry| is_live(&entry.job));
            heap.gone = 0;
        }
    }

    /// How many entries wait, live or finished meanwhile.
    pub(crate) fn len(&self) -> usize {
        self.heap.lock().entries.len()
    }

    /// Completes when a job is pushed that is due before all others.
    pub(crate) async fn changed(&self) {
        self.changed.notified().await;
    }
}

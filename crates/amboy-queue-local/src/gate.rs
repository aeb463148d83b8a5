//! A counting gate: at most `capacity` holders, and an async wait for a free place.

use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;
use tokio::sync::Notify;

/// Bounds the number of pending jobs. Taking and returning a place are single atomic operations
/// unless someone is waiting for a place.
#[derive(Debug)]
pub(crate) struct Gate {
    capacity: usize,
    taken: CachePadded<AtomicUsize>,
    /// Read on every give-back; kept off the line `taken` bounces on.
    waiting: CachePadded<AtomicUsize>,
    freed: Notify,
}

impl Gate {
    pub(crate) fn new(capacity: usize) -> Self {
        Gate {
            capacity,
            taken: CachePadded::new(AtomicUsize::new(0)),
            waiting: CachePadded::new(AtomicUsize::new(0)),
            freed: Notify::new(),
        }
    }

    /// Takes a place if one is free.
    pub(crate) fn try_take(&self) -> bool {
        self.taken
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |taken| {
                (taken < self.capacity).then(|| taken + 1)
            })
            .is_ok()
    }

    /// Takes a place, waiting for one to be freed. Dropping the future gives up without taking.
    pub(crate) async fn take(&self) {
        if self.try_take() {
            return;
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        loop {
            let freed = self.freed.notified();
            let mut freed = std::pin::pin!(freed);
            freed.as_mut().enable();
            if self.try_take() {
                return;
            }
            freed.await;
        }
    }

    /// Returns a place.
    pub(crate) fn give_back(&self) {
        let before = self.taken.fetch_sub(1, Ordering::SeqCst);
        debug_assert!(before > 0, "a place given back twice");
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.freed.notify_one();
        }
    }

    /// The number of places taken.
    pub(crate) fn taken(&self) -> usize {
        self.taken.load(Ordering::SeqCst)
    }
}

/// Counts a waiter for as long as it waits, including when its future is dropped.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn takes_up_to_capacity() {
        let gate = Gate::new(2);
        assert!(gate.try_take());
        assert!(gate.try_take());
        assert!(!gate.try_take());
        gate.give_back();
        assert!(gate.try_take());
        assert_eq!(gate.taken(), 2);
    }

    #[tokio::test]
    async fn waiter_gets_the_freed_place() {
        let gate = Arc::new(Gate::new(1));
        gate.take().await;
        let waiter = tokio::spawn({
            let gate = gate.clone();
            async move { gate.take().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        gate.give_back();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(gate.taken(), 1);
    }

    #[tokio::test]
    async fn dropped_waiter_takes_nothing() {
        let gate = Gate::new(1);
        gate.take().await;
        assert!(
            tokio::time::timeout(Duration::from_millis(5), gate.take())
                .await
                .is_err()
        );
        assert_eq!(gate.waiting.load(Ordering::SeqCst), 0);
        gate.give_back();
        assert_eq!(gate.taken(), 0);
    }
}

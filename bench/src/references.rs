//! The reference hand-offs every case is compared with, measured in the same run.
//!
//! Each moves `jobs` boxed no-op async closures ([`Task`]) from one producer task to `workers`
//! consumer tasks through a hand-off bounded at [`CAPACITY`], and each consumer runs a task
//! and ticks [`FINISHED`], as amboy's workers run a job. They are timed by [`timed`] exactly as
//! the queues are. Nothing is stored, locked, retained or counted per job beyond that, so they
//! show what a job queue costs on top of moving work between tasks.
//!
//! * [`mpsc_shared_receiver`]: a tokio `mpsc` channel whose receiver the consumers share
//!   through a `tokio::sync::Mutex` held across `recv().await`: one consumer waits on the
//!   channel while the others wait on the mutex. It is a common way to share an mpsc receiver,
//!   not the fastest; the benchmark called it the "bare" baseline until it was renamed.
//! * [`async_channel()`]: a multi-consumer channel (`async-channel`), each consumer calling
//!   `recv().await` itself.
//! * [`mutex_vecdeque_notify`]: a `VecDeque` under a `parking_lot` mutex (never held across an
//!   await) with one `Notify` for consumers and one for the producer waiting for room: the
//!   fastest hand-off we know between tasks.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::{CAPACITY, FINISHED, Measured, measure, timed};

/// A job of the references: a boxed closure making a boxed future, made by the producer.
pub type Task = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// The names of the references, in the order they run.
pub const NAMES: [&str; 3] = [
    "mpsc-shared-receiver",
    "async-channel",
    "mutex-vecdeque-notify",
];

/// A no-op task.
fn task() -> Task {
    Box::new(|| Box::pin(async {}))
}

/// Runs a task and counts it.
async fn run(task: Task) {
    task().await;
    FINISHED.tick();
}

/// Waits for every consumer to return.
async fn join(consumers: Vec<JoinHandle<()>>) {
    for consumer in consumers {
        consumer.await.expect("consumer");
    }
}

/// Measures every reference with `workers` consumers (the median of three runs after a
/// warm-up, see [`measure`]), giving each name with its rates.
pub async fn measure_all(jobs: usize, workers: usize) -> Vec<(&'static str, Measured)> {
    let [shared, channel, handoff] = NAMES;
    vec![
        (
            shared,
            measure(shared, workers, || mpsc_shared_receiver(jobs, workers)).await,
        ),
        (
            channel,
            measure(channel, workers, || async_channel(jobs, workers)).await,
        ),
        (
            handoff,
            measure(handoff, workers, || mutex_vecdeque_notify(jobs, workers)).await,
        ),
    ]
}

/// `jobs` tasks through a bounded tokio `mpsc` channel, received by `workers` consumer tasks
/// sharing the receiver through a `tokio::sync::Mutex` held across `recv().await`.
pub async fn mpsc_shared_receiver(jobs: usize, workers: usize) -> f64 {
    let (tx, rx) = tokio::sync::mpsc::channel::<Task>(CAPACITY);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let consumers = (0..workers)
        .map(|_| {
            let rx = rx.clone();
            tokio::spawn(async move {
                loop {
                    let task = rx.lock().await.recv().await;
                    match task {
                        Some(task) => run(task).await,
                        None => return,
                    }
                }
            })
        })
        .collect();
    let rate = timed(jobs, async move {
        for _ in 0..jobs {
            tx.send(task()).await.expect("consumers are running");
        }
    })
    .await;
    // The producer dropped the sender: the consumers find the channel closed and return.
    join(consumers).await;
    rate
}

/// `jobs` tasks through a bounded `async-channel`, received by `workers` consumer tasks each
/// calling `recv().await`.
pub async fn async_channel(jobs: usize, workers: usize) -> f64 {
    let (tx, rx) = async_channel::bounded::<Task>(CAPACITY);
    let consumers = (0..workers)
        .map(|_| {
            let rx = rx.clone();
            tokio::spawn(async move {
                while let Ok(task) = rx.recv().await {
                    run(task).await;
                }
            })
        })
        .collect();
    drop(rx);
    let rate = timed(jobs, async move {
        for _ in 0..jobs {
            tx.send(task()).await.expect("consumers are running");
        }
    })
    .await;
    join(consumers).await;
    rate
}

/// `jobs` tasks through a [`Handoff`], taken by `workers` consumer tasks.
pub async fn mutex_vecdeque_notify(jobs: usize, workers: usize) -> f64 {
    let handoff = Arc::new(Handoff::new(CAPACITY));
    let consumers = (0..workers)
        .map(|_| {
            let handoff = handoff.clone();
            tokio::spawn(async move {
                while let Some(task) = handoff.pop().await {
                    run(task).await;
                }
            })
        })
        .collect();
    let producer = {
        let handoff = handoff.clone();
        async move {
            for _ in 0..jobs {
                handoff.push(task()).await;
            }
        }
    };
    let rate = timed(jobs, producer).await;
    handoff.close();
    join(consumers).await;
    rate
}

/// A bounded hand-off: a `VecDeque` under a mutex that is never held across an await, a
/// `Notify` waking consumers when a task arrives and one waking the producer when room frees
/// up. `notify_one` keeps a permit when nobody waits, so neither wake-up can be lost between a
/// check under the lock and the wait that follows it.
#[derive(Debug)]
pub struct Handoff<T> {
    line: Mutex<VecDeque<T>>,
    capacity: usize,
    ready: Notify,
    room: Notify,
    closed: AtomicBool,
}

impl<T> Handoff<T> {
    /// An empty hand-off holding at most `capacity` items.
    pub fn new(capacity: usize) -> Self {
        Self {
            line: Mutex::new(VecDeque::with_capacity(capacity)),
            capacity: capacity.max(1),
            ready: Notify::new(),
            room: Notify::new(),
            closed: AtomicBool::new(false),
        }
    }

    /// Adds `item`, waiting while the hand-off is full. Meant for one producer: room is
    /// signalled once each time the line stops being full.
    pub async fn push(&self, item: T) {
        loop {
            {
                let mut line = self.line.lock();
                if line.len() < self.capacity {
                    line.push_back(item);
                    drop(line);
                    self.ready.notify_one();
                    return;
                }
            }
            self.room.notified().await;
        }
    }

    /// Takes the oldest item, if any, without waiting.
    pub fn try_pop(&self) -> Option<T> {
        let mut line = self.line.lock();
        let was_full = line.len() >= self.capacity;
        let item = line.pop_front();
        drop(line);
        if was_full && item.is_some() {
            self.room.notify_one();
        }
        item
    }

    /// Takes the oldest item, waiting for one; `None` once closed and empty.
    pub async fn pop(&self) -> Option<T> {
        loop {
            if let Some(item) = self.try_pop() {
                return Some(item);
            }
            // Made before the check of `closed`, so that `close` wakes it from then on.
            let notified = self.ready.notified();
            if self.closed.load(Ordering::Acquire) {
                return self.try_pop();
            }
            notified.await;
        }
    }

    /// Lets every consumer return once the line is empty.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.ready.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn handoff_delivers_everything_in_order_and_closes() {
        let handoff = Arc::new(Handoff::new(2));
        let consumers: Vec<_> = (0..4)
            .map(|_| {
                let handoff = handoff.clone();
                tokio::spawn(async move {
                    let mut taken = Vec::new();
                    while let Some(item) = handoff.pop().await {
                        taken.push(item);
                    }
                    taken
                })
            })
            .collect();
        for n in 0..10_000 {
            handoff.push(n).await;
        }
        // Every item is taken before close, so no consumer may return early.
        while !handoff.line.lock().is_empty() {
            tokio::task::yield_now().await;
        }
        handoff.close();
        let mut all = Vec::new();
        for consumer in consumers {
            let taken = consumer.await.unwrap();
            assert!(taken.is_sorted(), "each consumer takes in order");
            all.extend(taken);
        }
        all.sort_unstable();
        assert_eq!(all, (0..10_000).collect::<Vec<_>>());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_reference_runs_every_job() {
        for rate in [
            mpsc_shared_receiver(5_000, 3).await,
            async_channel(5_000, 3).await,
            mutex_vecdeque_notify(5_000, 3).await,
        ] {
            assert!(rate.is_finite() && rate > 0.0, "{rate}");
        }
    }
}

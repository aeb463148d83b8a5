//! The dispatch line: the order in which a local queue hands out ready jobs.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering as AtomicOrdering};

use amboy_core::JobRef;
use crossbeam_queue::SegQueue;
use parking_lot::Mutex;
use tokio::sync::Notify;

mod sealed {
    pub trait Sealed {}
}

/// The order in which a [`LocalQueue`](crate::LocalQueue) dispatches its ready jobs, and what
/// else distinguishes one kind of local queue from another. Implemented by [`Fifo`],
/// [`ByPriority`], [`Shuffled`], [`Ordered`] and [`Adaptive`]; sealed.
pub trait Line: sealed::Sealed + Default + fmt::Debug + Send + Sync + 'static {
    /// The kind of queue, used in its ID (`queue.local.<kind>.<uuid>`).
    const KIND: &'static str;
    /// Whether jobs may be put before the queue starts.
    const PUT_BEFORE_START: bool;
    /// Whether the queue honours dependencies (edges and state).
    const DEPENDENCIES: bool;
    /// Whether the line hands out higher priorities first: jobs waiting beside a scope are
    /// then handed it by priority too.
    const BY_PRIORITY: bool;

    /// Adds a ready job; never waits.
    fn push(&self, job: JobRef);

    /// Adds a ready job ahead of the others (first in, first out among such jobs; on the
    /// priority line, ahead of the others of its priority only): a job handed the scopes it
    /// waited for, which holds them until it runs, so that no scope stays idle while its job
    /// makes its way through the line. Never waits.
    fn push_first(&self, job: JobRef);

    /// Takes the next job, waiting for one; `None` once the line is closed.
    fn pop(&self) -> impl Future<Output = Option<JobRef>> + Send;

    /// Takes the next job if there is one now.
    fn try_pop(&self) -> Option<JobRef>;

    /// Closes the line: waiting and later `pop`s return `None`.
    fn close(&self);
}

/// First in, first out (amboy's limited-size queue).
///
/// A lock-free queue with a notification for waiting takers: putting a job costs a push and a
/// check for sleepers, taking one a pop, while jobs are queued.
#[derive(Debug, Default)]
pub struct Fifo {
    jobs: SegQueue<JobRef>,
    /// The jobs pushed ahead of the others.
    first: SegQueue<JobRef>,
    added: Notify,
    closed: AtomicBool,
}

impl sealed::Sealed for Fifo {}

impl Line for Fifo {
    const KIND: &'static str = "fixed";
    const PUT_BEFORE_START: bool = false;
    const DEPENDENCIES: bool = false;
    const BY_PRIORITY: bool = false;

    fn push(&self, job: JobRef) {
        self.jobs.push(job);
        // Wakes one waiting taker, or leaves a permit for the next one to wait.
        self.added.notify_one();
    }

    fn push_first(&self, job: JobRef) {
        self.first.push(job);
        self.added.notify_one();
    }

    async fn pop(&self) -> Option<JobRef> {
        loop {
            if let Some(job) = self.try_pop() {
                return Some(job);
            }
            if self.closed.load(AtomicOrdering::SeqCst) {
                return None;
            }
            let added = self.added.notified();
            let mut added = std::pin::pin!(added);
            added.as_mut().enable();
            // Checked again under the registration: a push after this wakes us.
            if let Some(job) = self.try_pop() {
                return Some(job);
            }
            if self.closed.load(AtomicOrdering::SeqCst) {
                return None;
            }
            added.await;
        }
    }

    fn try_pop(&self) -> Option<JobRef> {
        if self.closed.load(AtomicOrdering::Relaxed) {
            return None;
        }
        if !self.first.is_empty()
            && let Some(job) = self.first.pop()
        {
            return Some(job);
        }
        self.jobs.pop()
    }

    fn close(&self) {
        self.closed.store(true, AtomicOrdering::SeqCst);
        self.added.notify_waiters();
    }
}

/// Jobs kept in a collection under a lock, with a notification for waiting takers and a count
/// that lets takers skip the lock when there is nothing to take.
#[derive(Debug, Default)]
struct Locked<C> {
    items: Mutex<Items<C>>,
    len: AtomicUsize,
    added: Notify,
    closed: AtomicBool,
}

/// A locked line's jobs: those pushed ahead of the others, then the others in the line's
/// collection.
#[derive(Debug, Default)]
struct Items<C> {
    first: VecDeque<JobRef>,
    rest: C,
}

impl<C: Send> Locked<C> {
    fn push(&self, add: impl FnOnce(&mut C)) {
        {
            let mut items = self.items.lock();
            add(&mut items.rest);
            self.len.fetch_add(1, AtomicOrdering::SeqCst);
        }
        self.added.notify_one();
    }

    fn push_first(&self, job: JobRef) {
        {
            let mut items = self.items.lock();
            items.first.push_back(job);
            self.len.fetch_add(1, AtomicOrdering::SeqCst);
        }
        self.added.notify_one();
    }

    fn try_pop(&self, take: impl Fn(&mut C) -> Option<JobRef>) -> Option<JobRef> {
        if self.closed.load(AtomicOrdering::SeqCst) || self.len.load(AtomicOrdering::SeqCst) == 0 {
            return None;
        }
        let job = {
            let mut items = self.items.lock();
            match items.first.pop_front() {
                Some(job) => Some(job),
                None => take(&mut items.rest),
            }
        };
        if job.is_some() {
            self.len.fetch_sub(1, AtomicOrdering::SeqCst);
        }
        job
    }

    async fn pop(&self, take: impl Fn(&mut C) -> Option<JobRef>) -> Option<JobRef> {
        loop {
            let added = self.added.notified();
            let mut added = std::pin::pin!(added);
            added.as_mut().enable();
            if self.closed.load(AtomicOrdering::SeqCst) {
                return None;
            }
            // Taken under the registration above: a push after this check wakes us.
            if let Some(job) = self.try_pop(&take) {
                return Some(job);
            }
            added.await;
        }
    }

    fn close(&self) {
        self.closed.store(true, AtomicOrdering::SeqCst);
        self.added.notify_waiters();
    }
}

/// Higher priority first, first in first out among equals (amboy's priority queue).
#[derive(Debug, Default)]
pub struct ByPriority {
    heap: Locked<BinaryHeap<Prioritized>>,
    sequence: AtomicU64,
}

struct Prioritized {
    priority: i32,
    /// Pushed ahead of the others of its priority (handed its scopes).
    first: bool,
    sequence: u64,
    job: JobRef,
}

impl fmt::Debug for Prioritized {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.job.id(), self.priority)
    }
}

impl PartialEq for Prioritized {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Prioritized {}

impl PartialOrd for Prioritized {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Prioritized {
    fn cmp(&self, other: &Self) -> Ordering {
        self.priority
            .cmp(&other.priority)
            .then_with(|| self.first.cmp(&other.first))
            .then_with(|| other.sequence.cmp(&self.sequence))
    }
}

impl sealed::Sealed for ByPriority {}

impl ByPriority {
    fn push_in_turn(&self, job: JobRef, first: bool) {
        let priority = job.base().metadata().priority;
        let sequence = self.sequence.fetch_add(1, AtomicOrdering::Relaxed);
        self.heap.push(|heap| {
            heap.push(Prioritized {
                priority,
                first,
                sequence,
                job,
            })
        });
    }
}

impl Line for ByPriority {
    const KIND: &'static str = "priority";
    const PUT_BEFORE_START: bool = true;
    const DEPENDENCIES: bool = false;
    const BY_PRIORITY: bool = true;

    fn push(&self, job: JobRef) {
        self.push_in_turn(job, false);
    }

    /// Ahead of the others of its priority, not of higher priorities.
    fn push_first(&self, job: JobRef) {
        self.push_in_turn(job, true);
    }

    async fn pop(&self) -> Option<JobRef> {
        self.heap
            .pop(|heap| heap.pop().map(|entry| entry.job))
            .await
    }

    fn try_pop(&self) -> Option<JobRef> {
        self.heap.try_pop(|heap| heap.pop().map(|entry| entry.job))
    }

    fn close(&self) {
        self.heap.close();
    }
}

/// A random ready job each time (amboy's shuffled queue).
#[derive(Debug, Default)]
pub struct Shuffled {
    jobs: Locked<Vec<JobRef>>,
}

impl sealed::Sealed for Shuffled {}

impl Line for Shuffled {
    const KIND: &'static str = "shuffled";
    const PUT_BEFORE_START: bool = true;
    const DEPENDENCIES: bool = false;
    const BY_PRIORITY: bool = false;

    fn push(&self, job: JobRef) {
        self.jobs.push(|jobs| jobs.push(job));
    }

    fn push_first(&self, job: JobRef) {
        self.jobs.push_first(job);
    }

    async fn pop(&self) -> Option<JobRef> {
        self.jobs.pop(take_random).await
    }

    fn try_pop(&self) -> Option<JobRef> {
        self.jobs.try_pop(take_random)
    }

    fn close(&self) {
        self.jobs.close();
    }
}

/// Takes a job at random, in constant time (the order of the rest does not matter).
fn take_random(jobs: &mut Vec<JobRef>) -> Option<JobRef> {
    (!jobs.is_empty()).then(|| jobs.swap_remove(fastrand::usize(..jobs.len())))
}

/// A dependency-aware line: the order of `$inner` among the jobs whose dependencies are met, and
/// jobs may be put before the queue starts.
macro_rules! dependency_aware {
    ($(#[$doc:meta])* $name:ident($inner:ty), $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Default)]
        pub struct $name($inner);

        impl sealed::Sealed for $name {}

        impl Line for $name {
            const KIND: &'static str = $kind;
            const PUT_BEFORE_START: bool = true;
            const DEPENDENCIES: bool = true;
            const BY_PRIORITY: bool = <$inner as Line>::BY_PRIORITY;

            fn push(&self, job: JobRef) {
                self.0.push(job);
            }

            fn push_first(&self, job: JobRef) {
                self.0.push_first(job);
            }

            fn pop(&self) -> impl Future<Output = Option<JobRef>> + Send {
                self.0.pop()
            }

            fn try_pop(&self) -> Option<JobRef> {
                self.0.try_pop()
            }

            fn close(&self) {
                self.0.close();
            }
        }
    };
}

dependency_aware!(
    /// First in, first out among the jobs whose dependencies are met (amboy's ordered queue).
    Ordered(Fifo),
    "ordered"
);

dependency_aware!(
    /// A random job among those whose dependencies are met (amboy's adaptive-ordering queue).
    Adaptive(Shuffled),
    "adaptive"
);

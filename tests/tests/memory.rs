//! Memory that must not grow (issue 6, defect 6): ten capacities' worth of jobs through every
//! local queue, and the queue's internal structures and the process's resident memory stay
//! flat.
//!
//! Each round puts `CAPACITY` jobs carrying a 16 KiB payload and waits until the queue is
//! complete. The jobs exercise what used to leak: jobs that expire (the dependency tracker's
//! expired set), retried jobs (the serializable queue's latest-attempt index), edges to jobs
//! long forgotten (the tracker's fingerprints of evicted jobs), and a job waiting on another
//! that is completed from outside before its edge finishes (the tracker's `dependents` entries).
//! After every round the [`Footprint`] of the queue must stay within its bounds, and from the
//! point where the retention window and the remembered fingerprints are full it must not change.
//! The resident memory after the last round must be within a few MiB of the one after the
//! second (leaking the jobs themselves would add 16 KiB a job, 8 MiB over the test).
//!
//! Each test runs in a process of its own (nextest), so the resident memory is the queue's.

use std::sync::Arc;
use std::time::Duration;

use amboy::dependency::{Always, Manager};
use amboy::local::{
    AdaptiveOrderingQueue, DependencyOrderedQueue, Footprint, LimitedSizeQueue,
    LimitedSizeSerializableQueue, PriorityQueue, ShuffledQueue,
};
use amboy::{Base, Job, JobContext, JobError, JobRef, Queue, Runner};
use amboy_tests::jobs::{Gated, open_gate};
use chrono::{TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use tokio::time::timeout;

const CAPACITY: usize = 64;
const ROUNDS: usize = 10;
const PAYLOAD: usize = 16 * 1024;
/// How much the resident memory may grow between the second round and the last.
const RESIDENT_SLACK: usize = 3 * 1024 * 1024;

/// A job with a payload; a retryable one asks for one retry on its first attempt.
#[derive(Serialize, Deserialize)]
struct Heavy {
    base: Base,
    payload: String,
}

#[typetag::serde(name = "memory-heavy")]
#[amboy::async_trait]
impl Job for Heavy {
    fn base(&self) -> &Base {
        &self.base
    }

    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        let retry = self.base.retry_info();
        if retry.retryable && retry.current_attempt == 0 {
            return Err(JobError::retryable("once more"));
        }
        Ok(())
    }
}

fn heavy(base: Base) -> JobRef {
    Arc::new(Heavy {
        base,
        payload: "x".repeat(PAYLOAD),
    })
}

fn with_edge(job: JobRef, edge: &str) -> JobRef {
    let manager = Always::new();
    manager.add_edge(edge).unwrap();
    job.set_dependency(Arc::new(manager));
    job
}

fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|pages| pages.parse().ok())
        .expect("resident pages");
    pages * 4096
}

/// What the queue under test does beyond the basics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Kind {
    dependencies: bool,
    retries: bool,
}

/// One round: `CAPACITY` jobs (some expiring, some retried, some with edges, one waiting on a
/// job it is completed before), then wait until the queue is complete.
async fn round(queue: &dyn Queue, kind: Kind, round: usize) {
    let id = |n: usize| format!("r{round}-j{n}");
    let gate = format!("memory-gate-{round}");
    let mut jobs = 0;
    if kind.dependencies {
        // A job waiting on a held one, completed from outside before the held one finishes.
        let held: JobRef = Gated::new(Base::with_id(id(0)), &gate);
        queue.put(held).await.unwrap();
        let waiting = with_edge(heavy(Base::with_id(id(1))), &id(0));
        queue.put(waiting.clone()).await.unwrap();
        queue.complete(&waiting).await.unwrap();
        open_gate(&gate);
        // An edge to a job finished rounds ago, which only a fingerprint remembers.
        if round >= 3 {
            let old = format!("r{}-j2", round - 3);
            let late = with_edge(heavy(Base::with_id(id(2))), &old);
            queue.put(late).await.unwrap();
        } else {
            queue.put(heavy(Base::with_id(id(2)))).await.unwrap();
        }
        jobs = 3;
    }
    for n in jobs..CAPACITY {
        let mut base = Base::with_id(id(n));
        if n % 8 == 0 {
            base = base.with_dispatch_by(Utc::now() - TimeDelta::seconds(1));
        }
        if kind.retries && n % 3 == 0 {
            base = base.with_retryable(true);
        }
        let job = heavy(base);
        let job = if kind.dependencies && n % 4 == 1 {
            with_edge(job, &id(n - 1))
        } else {
            job
        };
        queue.put(job).await.unwrap();
    }
    timeout(Duration::from_secs(60), amboy::wait(queue))
        .await
        .unwrap_or_else(|_| panic!("round {round} never completed"))
        .unwrap();
}

async fn stays_flat(queue: Arc<dyn Queue>, footprint: impl Fn() -> Footprint, kind: Kind) {
    queue.start().await.unwrap();
    let mut resident_after_two = 0;
    let mut steady = None;
    for n in 0..ROUNDS {
        round(&*queue, kind, n).await;
        let now = footprint();
        assert!(now.jobs < CAPACITY, "round {n}: {now:?}");
        assert!(now.retained < CAPACITY, "round {n}: {now:?}");
        assert_eq!(
            (now.waiting, now.dependents, now.parked, now.tracked),
            (0, 0, 0, 0),
            "round {n}: nothing waits or runs: {now:?}"
        );
        assert!(now.remembered <= 4 * CAPACITY + 16, "round {n}: {now:?}");
        assert!(now.latest_attempts <= now.retained, "round {n}: {now:?}");
        if n == 1 {
            resident_after_two = resident_bytes();
        }
        // Six rounds fill the retention window and the remembered fingerprints.
        if n == 6 {
            steady = Some(now);
        }
        // Which attempts of retried jobs are among the retained ones depends on the order the
        // workers finished them in; everything else is fixed.
        let fixed = |f: Footprint| (f.jobs, f.retained, f.remembered);
        if n > 6 {
            assert_eq!(
                Some(fixed(now)),
                steady.map(fixed),
                "round {n}: the footprint moved: {now:?}"
            );
        }
    }
    let stats = queue.stats().await.unwrap();
    assert!(stats.total >= ROUNDS * CAPACITY, "{stats}");
    assert!(stats.expired > 0, "{stats}");
    let grown = resident_bytes().saturating_sub(resident_after_two);
    assert!(
        grown < RESIDENT_SLACK,
        "resident memory grew by {grown} bytes over {} jobs",
        (ROUNDS - 2) * CAPACITY
    );
    queue.close().await;
}

fn plain() -> Kind {
    Kind {
        dependencies: false,
        retries: false,
    }
}

fn with_runner<Q: Queue>(queue: Arc<Q>) -> Arc<Q> {
    let runner: Arc<dyn Runner> = amboy::runner::LocalWorkers::new(4);
    queue.set_runner(runner).unwrap();
    queue
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limited_size_queue_stays_flat() {
    let queue = with_runner(LimitedSizeQueue::new(CAPACITY));
    let measured = queue.clone();
    stays_flat(queue, move || measured.footprint(), plain()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_queue_stays_flat() {
    let queue = with_runner(PriorityQueue::new(CAPACITY));
    let measured = queue.clone();
    stays_flat(queue, move || measured.footprint(), plain()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shuffled_queue_stays_flat() {
    let queue = with_runner(ShuffledQueue::new(CAPACITY));
    let measured = queue.clone();
    stays_flat(queue, move || measured.footprint(), plain()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependency_ordered_queue_stays_flat() {
    let queue = with_runner(DependencyOrderedQueue::new(CAPACITY));
    let measured = queue.clone();
    let kind = Kind {
        dependencies: true,
        retries: false,
    };
    stays_flat(queue, move || measured.footprint(), kind).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_ordering_queue_stays_flat() {
    let queue = with_runner(AdaptiveOrderingQueue::new(CAPACITY));
    let measured = queue.clone();
    let kind = Kind {
        dependencies: true,
        retries: false,
    };
    stays_flat(queue, move || measured.footprint(), kind).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serializable_queue_stays_flat() {
    let queue: Arc<LimitedSizeSerializableQueue> =
        amboy::new_local_limited_size_serializable(4, CAPACITY);
    let measured = queue.clone();
    let kind = Kind {
        dependencies: false,
        retries: true,
    };
    stays_flat(queue, move || measured.footprint(), kind).await;
}

/// A limited-size queue of capacity 1,000,000 used to reserve its retention ring at creation
/// (about 46 MiB); every structure grows with use now.
#[tokio::test]
async fn a_large_capacity_reserves_nothing_up_front() {
    const LARGE: usize = 1_000_000;
    let queues = |capacity| -> Vec<Arc<dyn Queue>> {
        vec![
            LimitedSizeQueue::new(capacity),
            PriorityQueue::new(capacity),
            ShuffledQueue::new(capacity),
            DependencyOrderedQueue::new(capacity),
            AdaptiveOrderingQueue::new(capacity),
            LimitedSizeSerializableQueue::new(capacity),
        ]
    };
    // What is set up once per process (random number generators, say) is set up here.
    drop(queues(1));
    let before = resident_bytes();
    let queues = queues(LARGE);
    let grown = resident_bytes().saturating_sub(before);
    assert!(
        grown < 1024 * 1024,
        "six queues of capacity {LARGE} took {grown} bytes at creation"
    );
    drop(queues);
}

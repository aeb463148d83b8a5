//! The dispatch orders of the local queues: priorities, shuffling, and dependencies (edges,
//! cycles, unknown edges, passed and unresolved jobs, state rechecks).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use amboy_core::dependency::{CheckManager, Manager, MockDependency, State, register_check};
use amboy_core::{Base, Error, Job, JobContext, JobError, JobRef, Queue, Result, Runner};
use amboy_queue_local::{
    AdaptiveOrderingQueue, DependencyOrderedQueue, Line, LocalQueue, PriorityQueue, ShuffledQueue,
};
use amboy_runner::LocalWorkers;
use chrono::{TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use tokio::time::timeout;

const PROMPTLY: Duration = Duration::from_secs(10);

/// What each test's jobs saw: the order they ran in, and any job that ran before its edges.
#[derive(Debug, Default)]
struct Log {
    ran: Vec<String>,
    done: HashSet<String>,
    early: Vec<String>,
}

static LOGS: LazyLock<Mutex<HashMap<String, Log>>> = LazyLock::new(Default::default);

fn log<T>(name: &str, read: impl FnOnce(&mut Log) -> T) -> T {
    read(LOGS.lock().unwrap().entry(name.to_owned()).or_default())
}

/// Records its run in the log named `log`, noting if an edge had not run before it.
#[derive(Debug, Serialize, Deserialize)]
struct Step {
    base: Base,
    log: String,
}

#[typetag::serde(name = "ordering-test-step")]
#[async_trait::async_trait]
impl Job for Step {
    fn base(&self) -> &Base {
        &self.base
    }

    async fn run(&self, _ctx: &JobContext) -> std::result::Result<(), JobError> {
        let edges = self.dependency().edges();
        log(&self.log, |log| {
            if edges.iter().any(|edge| !log.done.contains(edge)) {
                log.early.push(self.id().to_owned());
            }
            log.ran.push(self.id().to_owned());
            log.done.insert(self.id().to_owned());
        });
        Ok(())
    }
}

fn step(log: &str, id: &str, edges: &[&str]) -> JobRef {
    let job = Step {
        base: Base::with_id(id),
        log: log.to_owned(),
    };
    if !edges.is_empty() {
        let manager = amboy_core::dependency::Always::new();
        for edge in edges {
            manager.add_edge(edge).unwrap();
        }
        job.set_dependency(Arc::new(manager));
    }
    Arc::new(job)
}

fn with_manager(log: &str, id: &str, manager: impl Manager + 'static) -> JobRef {
    let job = Step {
        base: Base::with_id(id),
        log: log.to_owned(),
    };
    job.set_dependency(Arc::new(manager));
    Arc::new(job)
}

/// A runner without workers: the tests call `next` themselves.
#[derive(Debug, Default)]
struct Idle(AtomicBool);

#[async_trait::async_trait]
impl Runner for Idle {
    fn started(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    fn set_queue(&self, _queue: Arc<dyn Queue>) -> Result<()> {
        Ok(())
    }
    async fn start(&self) -> Result<()> {
        self.0.store(true, Ordering::SeqCst);
        Ok(())
    }
    async fn close(&self) {}
}

async fn idle<L: Line>(queue: Arc<LocalQueue<L>>) -> Arc<LocalQueue<L>> {
    queue.set_runner(Arc::new(Idle::default())).unwrap();
    queue.start().await.unwrap();
    queue
}

async fn running<L: Line>(queue: Arc<LocalQueue<L>>, workers: usize) -> Arc<LocalQueue<L>> {
    queue.set_runner(LocalWorkers::new(workers)).unwrap();
    queue.start().await.unwrap();
    queue
}

/// Takes the next job and completes it, returning its ID.
async fn next_id(queue: &dyn Queue) -> String {
    let job = timeout(PROMPTLY, queue.next())
        .await
        .expect("a job is ready")
        .expect("open");
    queue.complete(&job).await.unwrap();
    job.id().to_owned()
}

#[tokio::test]
async fn priority_queue_takes_higher_priorities_first_fifo_among_equals() {
    let queue = idle(PriorityQueue::new(100)).await;
    for (id, priority) in [
        ("low", 1),
        ("high-1", 5),
        ("mid", 3),
        ("high-2", 5),
        ("negative", -2),
    ] {
        let job = step("priority", id, &[]);
        job.set_priority(priority);
        queue.put(job).await.unwrap();
    }
    let mut order = Vec::new();
    for _ in 0..5 {
        order.push(next_id(&*queue).await);
    }
    assert_eq!(order, ["high-1", "high-2", "mid", "low", "negative"]);
    queue.close().await;
}

#[tokio::test]
async fn priority_queue_honours_wait_until_and_dispatch_by() {
    let queue = idle(PriorityQueue::new(100)).await;
    let soon = Step {
        base: Base::with_id("soon")
            .with_priority(10)
            .with_wait_until(Utc::now() + TimeDelta::milliseconds(150)),
        log: "priority-times".into(),
    };
    let late = Step {
        base: Base::with_id("late")
            .with_priority(20)
            .with_dispatch_by(Utc::now() - TimeDelta::seconds(1)),
        log: "priority-times".into(),
    };
    queue.put(Arc::new(soon)).await.unwrap();
    queue.put(Arc::new(late)).await.unwrap();
    queue.put(step("priority-times", "now", &[])).await.unwrap();
    // The expired job is dropped and the waiting one is not handed out before its time.
    assert_eq!(next_id(&*queue).await, "now");
    assert!(
        timeout(Duration::from_millis(50), queue.next())
            .await
            .is_err()
    );
    // amboy's priority queue re-inserted waiting jobs into itself and failed; ours waits.
    assert_eq!(next_id(&*queue).await, "soon");
    let stats = queue.stats().await.unwrap();
    assert_eq!(
        (stats.completed, stats.expired, stats.total),
        (2, 1, 3),
        "{stats}"
    );
    queue.close().await;
}

#[tokio::test]
async fn shuffled_queue_hands_out_every_job_once_in_random_order() {
    let queue = idle(ShuffledQueue::new(1000)).await;
    let ids: Vec<String> = (0..200).map(|n| format!("shuffled-{n}")).collect();
    for id in &ids {
        queue.put(step("shuffled", id, &[])).await.unwrap();
    }
    let mut order = Vec::new();
    for _ in 0..ids.len() {
        order.push(next_id(&*queue).await);
    }
    assert_ne!(order, ids, "200 jobs came out in put order");
    let mut sorted = order.clone();
    sorted.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(sorted, expected, "each job exactly once");
    queue.close().await;
}

#[tokio::test]
async fn diamond_runs_each_job_after_its_edges() {
    let queue = idle(DependencyOrderedQueue::new(100)).await;
    // Put the bottom first in one batch: the batch is ordered by its edges.
    let jobs = vec![
        step("diamond", "d", &["b", "c"]),
        step("diamond", "b", &["a"]),
        step("diamond", "c", &["a"]),
        step("diamond", "a", &[]),
    ];
    queue.put_many(jobs).await.unwrap();
    assert_eq!(queue.stats().await.unwrap().blocked, 3);
    assert_eq!(next_id(&*queue).await, "a");
    let middle = [next_id(&*queue).await, next_id(&*queue).await];
    assert!(
        middle.contains(&"b".to_owned()) && middle.contains(&"c".to_owned()),
        "{middle:?}"
    );
    assert_eq!(next_id(&*queue).await, "d");
    let stats = queue.stats().await.unwrap();
    assert!(
        stats.is_complete() && stats.completed == 4 && stats.blocked == 0,
        "{stats}"
    );
    queue.close().await;
}

async fn random_dag<L: Line>(queue: Arc<LocalQueue<L>>, name: &str) {
    const JOBS: usize = 10_000;
    let mut rng = fastrand::Rng::with_seed(7);
    let mut jobs = Vec::with_capacity(JOBS);
    for n in 0..JOBS {
        let edges: Vec<String> = if n == 0 {
            Vec::new()
        } else {
            let count = rng.usize(0..4);
            let mut edges: Vec<String> = (0..count)
                .map(|_| format!("{name}-{}", rng.usize(0..n)))
                .collect();
            edges.sort();
            edges.dedup();
            edges
        };
        let edges: Vec<&str> = edges.iter().map(String::as_str).collect();
        jobs.push(step(name, &format!("{name}-{n}"), &edges));
    }
    rng.shuffle(&mut jobs);
    let queue = running(queue, 8).await;
    queue.put_many(jobs).await.unwrap();
    timeout(Duration::from_secs(60), amboy_core::wait(&*queue))
        .await
        .unwrap()
        .unwrap();
    let stats = queue.stats().await.unwrap();
    assert_eq!(
        (stats.completed, stats.total, stats.blocked),
        (JOBS, JOBS, 0),
        "{stats}"
    );
    log(name, |log| {
        assert!(
            log.early.is_empty(),
            "jobs ran before their edges: {:?}",
            &log.early[..log.early.len().min(5)]
        );
        assert_eq!(log.ran.len(), JOBS, "every job ran");
        assert_eq!(log.done.len(), JOBS, "and each exactly once");
    });
    queue.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_dag_of_ten_thousand_jobs_runs_in_dependency_order() {
    random_dag(DependencyOrderedQueue::new(20_000), "dag-ordered").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_queue_runs_a_random_dag_in_dependency_order() {
    random_dag(AdaptiveOrderingQueue::new(20_000), "dag-adaptive").await;
}

#[tokio::test]
async fn cycles_are_rejected_naming_the_jobs() {
    let queue = idle(DependencyOrderedQueue::new(100)).await;
    let jobs = vec![
        step("cycle", "x", &["y"]),
        step("cycle", "y", &["z"]),
        step("cycle", "z", &["x"]),
        step("cycle", "below", &["z"]),
        step("cycle", "free", &[]),
    ];
    let err = queue.put_many(jobs).await.unwrap_err();
    let message = err.to_string();
    assert!(!err.is_duplicate_job());
    for id in ["'x'", "'y'", "'z'"] {
        assert!(
            message.contains(&format!(
                "invalid job {id}: it is part of a dependency cycle among 'x', 'y', 'z'"
            )),
            "{message}"
        );
    }
    assert!(
        message
            .contains("invalid job 'below': it depends on a dependency cycle among 'x', 'y', 'z'"),
        "{message}"
    );
    assert!(
        queue.get("free").await.is_ok(),
        "the rest of the batch was put"
    );
    assert!(queue.get("x").await.unwrap_err().is_job_not_found());

    let err = queue
        .put(step("cycle", "self", &["self"]))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid job 'self': it depends on itself, a cycle ('self' -> 'self')"
    );
    queue.close().await;
}

#[tokio::test]
async fn unknown_edges_are_rejected_naming_both_jobs() {
    let queue = idle(DependencyOrderedQueue::new(100)).await;
    let err = queue
        .put(step("unknown", "orphan", &["never-put"]))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid job 'orphan': it depends on unknown job 'never-put'"
    );
    assert!(queue.get("orphan").await.unwrap_err().is_job_not_found());
    assert_eq!(queue.stats().await.unwrap().total, 0);
    queue.close().await;
}

#[tokio::test]
async fn jobs_are_accepted_before_and_after_start() {
    let queue = DependencyOrderedQueue::new(100);
    queue
        .put(step("before-after", "before", &[]))
        .await
        .unwrap();
    let queue = running(queue, 2).await;
    queue
        .put(step("before-after", "after", &["before"]))
        .await
        .unwrap();
    timeout(PROMPTLY, amboy_core::wait(&*queue))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        log("before-after", |log| log.ran.clone()),
        ["before", "after"]
    );
    queue.close().await;
}

#[tokio::test]
async fn passed_jobs_complete_without_running() {
    let queue = running(DependencyOrderedQueue::new(100), 2).await;
    queue.put(step("passed", "first", &[])).await.unwrap();
    let passed = with_manager(
        "passed",
        "nothing-to-do",
        MockDependency::new(State::Passed),
    );
    passed.dependency().add_edge("first").unwrap();
    queue.put(passed.clone()).await.unwrap();
    queue
        .put(step("passed", "after-passed", &["nothing-to-do"]))
        .await
        .unwrap();
    timeout(PROMPTLY, amboy_core::wait(&*queue))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        log("passed", |log| log.ran.clone()),
        ["first", "after-passed"]
    );
    let status = passed.status();
    assert!(status.completed && status.errors.is_empty(), "{status:?}");
    assert!(passed.time_info().start.is_none(), "it never started");
    queue.close().await;
}

#[tokio::test]
async fn unresolved_jobs_complete_with_a_reason_and_are_counted() {
    let queue = running(DependencyOrderedQueue::new(100), 2).await;
    let stuck = with_manager(
        "unresolved",
        "stuck",
        CheckManager::new("ordering-test-no-such-check"),
    );
    queue.put(stuck.clone()).await.unwrap();
    queue
        .put(step("unresolved", "after-stuck", &["stuck"]))
        .await
        .unwrap();
    timeout(PROMPTLY, amboy_core::wait(&*queue))
        .await
        .unwrap()
        .unwrap();
    let error = stuck
        .error()
        .expect("an unresolved job records why")
        .message()
        .to_owned();
    assert_eq!(
        error,
        "job 'stuck' cannot run: dependency unresolved: no dependency check named 'ordering-test-no-such-check' is registered"
    );
    // The unresolved job never ran; amboy runs dependents once their edges complete, failed or
    // not.
    assert_eq!(log("unresolved", |log| log.ran.clone()), ["after-stuck"]);
    let stats = queue.stats().await.unwrap();
    assert_eq!(stats.context["unresolved"], 1, "{stats}");
    assert_eq!(stats.completed, 2, "{stats}");
    let results: Vec<JobRef> = futures::TryStreamExt::try_collect(queue.results().await)
        .await
        .unwrap();
    assert!(
        results.iter().any(|job| job.id() == "stuck"),
        "unresolved jobs appear in the results"
    );
    queue.close().await;
}

#[tokio::test]
async fn dependents_of_an_expired_job_are_unresolved() {
    let queue = idle(DependencyOrderedQueue::new(100)).await;
    let late = Step {
        base: Base::with_id("expires").with_dispatch_by(Utc::now() - TimeDelta::seconds(1)),
        log: "expired-edge".into(),
    };
    queue.put(Arc::new(late)).await.unwrap();
    let orphan = step("expired-edge", "waits-for-expired", &["expires"]);
    queue.put(orphan.clone()).await.unwrap();
    queue.put(step("expired-edge", "other", &[])).await.unwrap();
    assert_eq!(next_id(&*queue).await, "other");
    let stats = queue.stats().await.unwrap();
    assert!(stats.is_complete(), "{stats}");
    assert_eq!(
        (stats.expired, stats.completed, stats.blocked),
        (1, 2, 0),
        "{stats}"
    );
    assert_eq!(
        orphan.error().unwrap().message(),
        "job 'waits-for-expired' cannot run: dependency unresolved: edge 'expires' expired before it ran"
    );
    queue.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_blocked_by_state_run_once_their_manager_allows() {
    static OPEN: AtomicBool = AtomicBool::new(false);
    static CHECKS: AtomicUsize = AtomicUsize::new(0);
    register_check("ordering-test-flip", |_: &[String]| {
        CHECKS.fetch_add(1, Ordering::SeqCst);
        if OPEN.load(Ordering::SeqCst) {
            State::Ready
        } else {
            State::Blocked
        }
    });
    let queue = running(AdaptiveOrderingQueue::new(100), 2).await;
    queue
        .put(with_manager(
            "flip",
            "flipped",
            CheckManager::new("ordering-test-flip"),
        ))
        .await
        .unwrap();
    let stats = queue.stats().await.unwrap();
    assert_eq!(stats.blocked, 1, "{stats}");
    assert!(
        stats.is_complete(),
        "blocked jobs count as done for waiting: {stats}"
    );
    OPEN.store(true, Ordering::SeqCst);
    timeout(PROMPTLY, async {
        while !log("flip", |log| log.done.contains("flipped")) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the job runs once its check passes");
    assert!(
        CHECKS.load(Ordering::SeqCst) >= 2,
        "the check was asked again"
    );
    queue.close().await;
}

#[tokio::test]
async fn completing_a_blocked_job_from_outside_frees_its_place() {
    let queue = idle(DependencyOrderedQueue::new(2)).await;
    queue.put(step("outside", "root", &[])).await.unwrap();
    let blocked = step("outside", "blocked", &["root"]);
    queue.put(blocked.clone()).await.unwrap();
    queue.complete(&blocked).await.unwrap();
    // Both places were taken; completing the blocked job gave one back.
    timeout(PROMPTLY, queue.put(step("outside", "third", &[])))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(queue.stats().await.unwrap().blocked, 0);
    queue.close().await;
}

#[test]
fn errors_name_jobs() {
    // A compile-time reminder that dependency errors are amboy errors naming the job.
    let error = Error::invalid_job("a", "it depends on unknown job 'b'");
    assert_eq!(
        error.to_string(),
        "invalid job 'a': it depends on unknown job 'b'"
    );
}

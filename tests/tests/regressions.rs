//! Regression tests for bugs found in review: every way a job could be counted twice, lost or
//! stranded, each reproduced and now asserting the correct behaviour.

use std::sync::Arc;
use std::time::Duration;

use amboy::dependency::Manager;
use amboy::local::{
    ByPriority, DependencyOrderedQueue, Fifo, LimitedSizeQueue, LimitedSizeSerializableQueue,
    LocalQueue, SerializableQueueOptions,
};
use amboy::prelude::*;
use amboy::registry::JobInterchange;
use amboy::{Base, JobContext, JobError, JobRef, JobStatusInfo};
use amboy_tests::cases::IdleRunner;
use amboy_tests::jobs::{Gated, Noop};
use serde::{Deserialize, Serialize};
use tokio::time::timeout;

const SHORT: Duration = Duration::from_millis(300);

fn copy(job: &JobRef) -> JobRef {
    JobInterchange::from_job(&**job)
        .expect("encode")
        .resolve()
        .expect("decode")
}

async fn idle<L: amboy::local::Line>(queue: Arc<LocalQueue<L>>) -> Arc<LocalQueue<L>> {
    queue.set_runner(Arc::new(IdleRunner::default())).unwrap();
    queue.start().await.unwrap();
    queue
}

#[derive(Debug, Serialize, Deserialize)]
struct Step {
    base: Base,
}

#[typetag::serde(name = "regressions-step")]
#[async_trait::async_trait]
impl Job for Step {
    fn base(&self) -> &Base {
        &self.base
    }
    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

fn step(id: &str, edges: &[&str]) -> JobRef {
    let job = Step {
        base: Base::with_id(id),
    };
    if !edges.is_empty() {
        let manager = amboy::dependency::Always::new();
        for edge in edges {
            manager.add_edge(edge).unwrap();
        }
        job.set_dependency(Arc::new(manager));
    }
    Arc::new(job)
}

// A job put already completed used to be skipped by the line without giving its place back.
#[tokio::test]
async fn a_completed_job_cannot_be_put() {
    let queue: Arc<LimitedSizeQueue> = idle(LimitedSizeQueue::new(1)).await;
    let done: JobRef = Noop::new("zz-done");
    done.base().mark_complete();
    let err = queue.put(done).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid job 'zz-done': it is completed already; put a new job instead"
    );
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.total, stats.pending), (0, 0), "{stats}");
    // The only place is free: the next put goes through at once.
    timeout(SHORT, queue.put(Noop::new("zz-next")))
        .await
        .unwrap()
        .unwrap();
}

// A job put while in progress elsewhere used to be dropped at dispatch, never to complete.
#[tokio::test]
async fn a_job_in_progress_elsewhere_cannot_be_put() {
    let queue: Arc<LimitedSizeQueue> = idle(LimitedSizeQueue::new(4)).await;
    let job: JobRef = Noop::new("zz-inprog");
    job.set_status(JobStatusInfo {
        in_progress: true,
        owner: Some(Arc::from("some-other-queue")),
        modification_time: Some(chrono::Utc::now()),
        ..Default::default()
    });
    let err = queue.put(job.clone()).await.unwrap_err();
    assert!(
        err.to_string().contains("it is in progress already"),
        "{err}"
    );
    let stats = queue.stats().await.unwrap();
    assert!(stats.is_complete() && stats.total == 0, "{stats}");
}

// A saved copy used to replace the job in the queue: completing the copy and then the
// original counted two completions and gave the capacity place back twice.
#[tokio::test]
async fn a_copy_cannot_be_saved_or_completed_in_place_of_the_job() {
    let queue: Arc<LimitedSizeQueue> = idle(LimitedSizeQueue::new(2)).await;
    let original: JobRef = Noop::new("zz-a");
    queue.put(original.clone()).await.unwrap();
    let other = copy(&original);
    let err = queue.save(&other).await.unwrap_err();
    assert!(
        err.is_job_not_found() && err.to_string().contains("holds another job"),
        "{err}"
    );
    let err = queue.complete(&other).await.unwrap_err();
    assert!(err.is_job_not_found(), "{err}");
    let dispatched = queue.try_next().expect("the original is still in line");
    assert!(Arc::ptr_eq(&dispatched, &original));
    queue.complete(&dispatched).await.unwrap();
    let stats = queue.stats().await.unwrap();
    assert_eq!(
        (stats.completed, stats.total, stats.pending),
        (1, 1, 0),
        "{stats}"
    );
    timeout(SHORT, queue.put(Noop::new("zz-b")))
        .await
        .unwrap()
        .unwrap();
    timeout(SHORT, queue.put(Noop::new("zz-c")))
        .await
        .unwrap()
        .unwrap();
    assert!(
        timeout(SHORT, queue.put(Noop::new("zz-d"))).await.is_err(),
        "capacity 2 holds"
    );
}

// After a copy was saved, get() used to return the copy, never completed: wait_job hung.
#[tokio::test]
async fn get_returns_the_job_the_worker_completed() {
    let queue: Arc<LimitedSizeQueue> = idle(LimitedSizeQueue::new(4)).await;
    let original: JobRef = Noop::new("zz-c");
    queue.put(original.clone()).await.unwrap();
    assert!(queue.save(&copy(&original)).await.is_err());
    let job = queue.try_next().unwrap();
    queue.complete(&job).await.unwrap();
    let waited = timeout(SHORT, amboy::wait_job(&*queue, "zz-c")).await;
    assert!(
        waited.unwrap().unwrap().is_completed(),
        "the job the queue holds is the one completed"
    );
}

// Once attempt 0 of a retried job was forgotten, get(id) used to miss the later attempts.
#[tokio::test]
async fn serializable_get_finds_the_latest_attempt_after_earlier_ones_are_forgotten() {
    let queue = LimitedSizeSerializableQueue::new(1);
    queue.set_runner(Arc::new(IdleRunner::default())).unwrap();
    queue.start().await.unwrap();
    let job: JobRef = Arc::new(Step {
        base: Base::with_id("zz-r").with_retryable(true),
    });
    queue.put(job).await.unwrap();
    let running = queue.next().await.unwrap();
    running.base().add_retryable_error("retry me");
    queue.complete(&running).await.unwrap();
    let next = copy(&running);
    {
        let mut meta = next.base().metadata();
        meta.retry_info.current_attempt = 1;
        meta.retry_info.needs_retry = false;
        meta.status = JobStatusInfo::default();
    }
    queue
        .complete_retrying_and_put(&running, next)
        .await
        .unwrap();
    assert!(
        queue.get_attempt("zz-r", 1).await.is_ok(),
        "attempt 1 stored"
    );
    assert!(
        queue.get_attempt("zz-r", 0).await.is_err(),
        "capacity 1 keeps no result"
    );
    let got = queue
        .get("zz-r")
        .await
        .expect("the latest attempt is found");
    assert_eq!(got.retry_info().current_attempt, 1);
    let attempts = queue.get_all_attempts("zz-r").await.unwrap();
    assert_eq!(
        attempts.len(),
        1,
        "the forgotten attempt is skipped, not a stop"
    );
}

use futures::FutureExt;

// A stale copy saved after the lock timeout used to make a completed record pending again
// without counting it, so that its completion counted it out twice (a panic in debug builds).
#[tokio::test]
async fn serializable_save_keeps_the_queue_state_of_the_record() {
    let queue = LimitedSizeSerializableQueue::with_options(SerializableQueueOptions {
        capacity: 4,
        lock_timeout: Duration::from_millis(20),
        stale_retrying_monitor_interval: Duration::from_secs(3600),
    })
    .unwrap();
    queue.set_runner(Arc::new(IdleRunner::default())).unwrap();
    queue.start().await.unwrap();
    queue.put(step("zz-p", &[])).await.unwrap();
    let stale = queue.get("zz-p").await.unwrap();
    let current = queue.get("zz-p").await.unwrap();
    queue.complete(&current).await.unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    // A completed record is final: a stale copy's save is refused even once the lock timed
    // out (it used to be accepted, keeping the record's state).
    let refused = queue
        .save(&stale)
        .await
        .expect_err("a completed record is final");
    assert!(refused.is_job_not_found(), "{refused}");
    let stats = queue.stats().await.unwrap();
    assert_eq!(
        (stats.completed, stats.pending, stats.total),
        (1, 0, 1),
        "{stats}"
    );
    let q = queue.clone();
    let outcome =
        tokio::spawn(async move { q.complete(&stale).await.map_err(|e| e.to_string()) }).await;
    assert!(
        outcome.is_ok(),
        "completing the stale copy does not panic: {outcome:?}"
    );
    let stats = queue.stats().await.unwrap();
    assert_eq!(
        (stats.completed, stats.pending, stats.total),
        (1, 0, 1),
        "{stats}"
    );
}

// Dropping Runner::close part-way used to abort the workers mid-job: the job stayed in progress
// for ever and kept its scope.
#[tokio::test]
async fn a_dropped_close_still_completes_the_running_job() {
    let queue: Arc<LimitedSizeQueue> = amboy::new_local_limited_size(1, 4);
    queue.start().await.unwrap();
    let job: JobRef = Gated::new(
        Base::with_id("zz-g").with_scopes(["zz-scope"]),
        "zz-never-opened",
    );
    queue.put(job.clone()).await.unwrap();
    timeout(Duration::from_secs(5), async {
        while !job.status().in_progress {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .unwrap();
    let runner = queue.runner().unwrap();
    let _ = runner.close().now_or_never(); // polled once, then dropped (e.g. by a select! or timeout)
    timeout(Duration::from_secs(5), async {
        while !job.status().completed {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the cancelled job is completed");
    assert_eq!(
        job.error().unwrap().message(),
        "job was aborted during execution: context canceled"
    );
    let rival: JobRef = Noop::new("zz-rival");
    rival.set_scopes(vec!["zz-scope".into()]);
    rival.set_enqueue_all_scopes(true);
    queue.put(rival).await.expect("the scope was released");
}

// A job completed from outside while waiting left its registrations behind; a new job reusing
// its ID used to be released before all of its edges finished.
#[tokio::test]
async fn a_reused_id_waits_for_all_of_its_own_edges() {
    let queue: Arc<DependencyOrderedQueue> = idle(DependencyOrderedQueue::new(2)).await;
    queue.put(step("zz-e", &[])).await.unwrap();
    queue.put(step("zz-f", &[])).await.unwrap();
    let e = queue.try_next().unwrap();
    let f = queue.try_next().unwrap();
    assert_eq!((e.id(), f.id()), ("zz-e", "zz-f"));
    let x = step("zz-x", &["zz-e"]);
    queue.put(x.clone()).await.unwrap();
    queue.complete(&x).await.unwrap(); // completed from outside while waiting for E
    queue.put(step("zz-y", &[])).await.unwrap();
    let y = queue.try_next().unwrap();
    queue.complete(&y).await.unwrap(); // evicts x (capacity 2 retains one)
    queue.put(step("zz-x", &["zz-e", "zz-f"])).await.unwrap();
    queue.complete(&e).await.unwrap();
    let early = queue.try_next();
    assert!(
        early.is_none(),
        "'{}' dispatched although its edge zz-f is still running",
        early.map(|j| j.id().to_owned()).unwrap_or_default()
    );
    queue.complete(&f).await.unwrap();
    assert_eq!(queue.try_next().expect("released now").id(), "zz-x");
}

// Stress: no lost wakeups in put and next with capacity 1 (the gate and the lines).
async fn stress<L: amboy::local::Line>(tag: &str) {
    let queue: Arc<LocalQueue<L>> = amboy::new_local_queue::<L>(3, 1);
    queue.start().await.unwrap();
    let mut producers = Vec::new();
    for p in 0..4 {
        let queue = queue.clone();
        let tag = tag.to_owned();
        producers.push(tokio::spawn(async move {
            for i in 0..3000 {
                queue
                    .put(Noop::new(format!("{tag}-{p}-{i}")))
                    .await
                    .unwrap();
            }
        }));
    }
    for producer in producers {
        timeout(Duration::from_secs(60), producer)
            .await
            .expect("producer stuck")
            .unwrap();
    }
    timeout(Duration::from_secs(60), amboy::wait(&*queue))
        .await
        .expect("wait stuck")
        .unwrap();
    let stats = queue.stats().await.unwrap();
    assert_eq!(stats.completed, 12000, "{stats}");
    queue.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_fifo() {
    stress::<Fifo>("zz-sf").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_priority() {
    stress::<ByPriority>("zz-sp").await;
}

/// A run past the deadline of the context it was given is timed out, and stops what it
/// spawned through a token of its own: the caller's token, which the caller's later jobs
/// share, is not cancelled.
#[tokio::test(start_paused = true)]
async fn a_run_past_its_callers_deadline_cancels_no_token_of_the_callers() {
    let queue = amboy::local::LimitedSizeQueue::new(4);
    queue
        .set_runner(Arc::new(IdleRunner::default()))
        .expect("a runner");
    queue.start().await.expect("start");
    queue
        .put(amboy_tests::jobs::Sleep::new(
            Base::with_id("slow"),
            Duration::from_secs(3600),
        ))
        .await
        .expect("put");
    let job = queue.next().await.expect("the job");
    let token = tokio_util::sync::CancellationToken::new();
    let ctx = JobContext::with_token(token.clone()).with_deadline(Some(
        tokio::time::Instant::now() + Duration::from_millis(10),
    ));
    let queue: Arc<dyn amboy::Queue> = queue;
    let outcome = amboy::execute_job(&*queue, &job, &ctx).await;
    assert_eq!(outcome, amboy::RunOutcome::TimedOut);
    assert!(!token.is_cancelled(), "the caller's token is its own");
}

/// A started serializable queue that nothing runs.
async fn idle_serializable(capacity: usize) -> Arc<LimitedSizeSerializableQueue> {
    let queue = LimitedSizeSerializableQueue::new(capacity);
    queue.set_runner(Arc::new(IdleRunner::default())).unwrap();
    queue.start().await.unwrap();
    queue
}

/// What the scope and timer tests read of an in-memory queue.
trait InMemory: Queue + 'static {
    fn parked(&self) -> usize;
    fn delayed(&self) -> usize;
    fn holder(&self, scope: &str) -> Option<String>;
}

impl InMemory for LimitedSizeQueue {
    fn parked(&self) -> usize {
        self.footprint().parked
    }
    fn delayed(&self) -> usize {
        self.footprint().delayed
    }
    fn holder(&self, scope: &str) -> Option<String> {
        self.scope_holder(scope)
    }
}

impl InMemory for LimitedSizeSerializableQueue {
    fn parked(&self) -> usize {
        self.footprint().parked
    }
    fn delayed(&self) -> usize {
        self.footprint().delayed
    }
    fn holder(&self, scope: &str) -> Option<String> {
        self.scope_holder(scope)
    }
}

/// A step holding `scopes` while it runs.
fn scoped(id: &str, scopes: &[&str]) -> JobRef {
    let job: JobRef = Arc::new(Step {
        base: Base::with_id(id),
    });
    if !scopes.is_empty() {
        job.set_scopes(scopes.iter().map(|scope| (*scope).to_owned()).collect());
    }
    job
}

// A release used to wake every job waiting beside the scope it freed: each went back in line,
// and all but one waited again, so N jobs sharing a scope cost the queue N² takes (4,000 such
// jobs ran in 1.9 s, against 0.5 s now). The release now takes the scope (with the job's
// others) for the first job that waited, which holds it until it runs; the others stay
// parked.
async fn waiters_on_one_scope_are_handed_it_one_at_a_time(queue: Arc<impl InMemory>) {
    let parked = || queue.parked();
    let holder = || queue.holder("zz-one");
    for n in 0..5 {
        queue
            .put(scoped(&format!("zz-w-{n}"), &["zz-one"]))
            .await
            .unwrap();
    }
    let take = || timeout(SHORT, queue.next());
    let mut running = take()
        .await
        .unwrap()
        .expect("the first job takes the scope");
    assert_eq!(running.id(), "zz-w-0");
    assert!(take().await.is_err(), "the others wait beside it");
    assert_eq!(parked(), 4);
    for n in 1..5 {
        queue.complete(&running).await.unwrap();
        let next = format!("zz-w-{n}");
        assert_eq!(parked(), 4 - n, "only the first waiter went back in line");
        assert_eq!(holder().as_deref(), Some(next.as_str()), "the scope is its");
        running = take()
            .await
            .unwrap()
            .expect("the waiter handed the scope runs");
        assert_eq!(running.id(), next);
    }
    queue.complete(&running).await.unwrap();
    assert_eq!(holder(), None);
    assert_eq!(parked(), 0);
}

#[tokio::test]
async fn local_waiters_on_one_scope_are_handed_it_one_at_a_time() {
    waiters_on_one_scope_are_handed_it_one_at_a_time(idle(LimitedSizeQueue::new(8)).await).await;
}

#[tokio::test]
async fn serializable_waiters_on_one_scope_are_handed_it_one_at_a_time() {
    waiters_on_one_scope_are_handed_it_one_at_a_time(idle_serializable(8).await).await;
}

// A job handed its scopes while it waited beside one, then found saved with a later
// wait_until when its turn came, waits holding its enqueue scopes only, as any pending job.
#[tokio::test]
async fn serializable_job_handed_its_scope_gives_it_back_when_saved_to_wait() {
    let queue = idle_serializable(8).await;
    queue.put(scoped("zz-a", &["zz-s"])).await.unwrap();
    queue.put(scoped("zz-b", &["zz-s"])).await.unwrap();
    let a = timeout(SHORT, queue.next()).await.unwrap().unwrap();
    assert_eq!(a.id(), "zz-a");
    assert!(
        timeout(SHORT, queue.next()).await.is_err(),
        "b waits beside the scope"
    );
    let b = queue.get("zz-b").await.unwrap();
    b.base().metadata().time_info.wait_until =
        Some(chrono::Utc::now() + chrono::TimeDelta::hours(1));
    queue.save(&b).await.unwrap();
    queue.complete(&a).await.unwrap();
    assert_eq!(
        queue.scope_holder("zz-s").as_deref(),
        Some("zz-b"),
        "handed over"
    );
    assert!(
        timeout(SHORT, queue.next()).await.is_err(),
        "b waits for its time"
    );
    assert_eq!(
        queue.scope_holder("zz-s"),
        None,
        "and holds the scope no longer"
    );
}

// A job whose scopes change while it waits beside one is handed the scopes it waited with;
// whatever it holds is released when it ends, so none is held for ever.
async fn a_job_whose_scopes_changed_while_it_waited_leaves_none_held(queue: Arc<impl InMemory>) {
    let holder = |scope: &str| queue.holder(scope);
    let waiter = scoped("zz-j", &["zz-x"]);
    queue.put(scoped("zz-a", &["zz-x"])).await.unwrap();
    queue.put(waiter.clone()).await.unwrap();
    let take = || timeout(SHORT, queue.next());
    let a = take().await.unwrap().unwrap();
    assert!(take().await.is_err(), "j waits beside zz-x");
    // Its scopes change (the local queue's save of a pending job also takes them all).
    let stored = queue.get(waiter.id()).await.unwrap();
    stored.set_scopes(vec!["zz-y".into()]);
    queue.save(&stored).await.unwrap();
    queue.complete(&a).await.unwrap();
    assert_eq!(
        holder("zz-x").as_deref(),
        Some("zz-j"),
        "handed what it waited for"
    );
    let j = take().await.unwrap().unwrap();
    assert_eq!(j.scopes(), ["zz-y"]);
    assert_eq!(holder("zz-y").as_deref(), Some("zz-j"));
    queue.complete(&j).await.unwrap();
    assert_eq!(holder("zz-x"), None, "nothing left held");
    assert_eq!(holder("zz-y"), None);
}

#[tokio::test]
async fn local_job_whose_scopes_changed_while_it_waited_leaves_none_held() {
    a_job_whose_scopes_changed_while_it_waited_leaves_none_held(
        idle(LimitedSizeQueue::new(8)).await,
    )
    .await;
}

#[tokio::test]
async fn serializable_job_whose_scopes_changed_while_it_waited_leaves_none_held() {
    a_job_whose_scopes_changed_while_it_waited_leaves_none_held(idle_serializable(8).await).await;
}

// Completed from outside after its scopes changed while it waited beside one: it is found and
// taken from beside that scope all the same, and the scope's release hands it to nobody.
#[tokio::test]
async fn serializable_job_completed_after_its_scopes_changed_while_it_waited_is_unparked() {
    let queue = idle_serializable(8).await;
    for id in ["zz-a", "zz-j"] {
        queue.put(scoped(id, &["zz-x"])).await.unwrap();
    }
    let a = timeout(SHORT, queue.next()).await.unwrap().unwrap();
    assert!(
        timeout(SHORT, queue.next()).await.is_err(),
        "j waits beside zz-x"
    );
    let j = queue.get("zz-j").await.unwrap();
    j.set_scopes(vec!["zz-y".into()]);
    queue.save(&j).await.unwrap();
    queue.complete(&j).await.unwrap();
    assert_eq!(queue.footprint().parked, 0, "j no longer waits");
    queue.complete(&a).await.unwrap();
    assert_eq!(queue.scope_holder("zz-x"), None, "handed to nobody");
}

// A job handed the scope it waited for holds it until it runs: it goes ahead of the line, so
// that the scope does not stay idle while the job waits behind every job put meanwhile.
async fn a_job_handed_its_scope_goes_ahead_of_the_line(queue: Arc<dyn Queue>) {
    queue.put(scoped("zz-a", &["zz-s"])).await.unwrap();
    queue.put(scoped("zz-w", &["zz-s"])).await.unwrap();
    let take = || timeout(SHORT, queue.next());
    let a = take().await.unwrap().unwrap();
    assert!(take().await.is_err(), "w waits beside the scope");
    queue.put(scoped("zz-u1", &[])).await.unwrap();
    queue.put(scoped("zz-u2", &[])).await.unwrap();
    queue.complete(&a).await.unwrap();
    let order: Vec<String> = [take().await, take().await, take().await]
        .into_iter()
        .map(|taken| taken.unwrap().unwrap().id().to_owned())
        .collect();
    assert_eq!(order, ["zz-w", "zz-u1", "zz-u2"]);
}

#[tokio::test]
async fn local_job_handed_its_scope_goes_ahead_of_the_line() {
    let queue: Arc<LimitedSizeQueue> = idle(LimitedSizeQueue::new(8)).await;
    a_job_handed_its_scope_goes_ahead_of_the_line(queue).await;
}

#[tokio::test]
async fn serializable_job_handed_its_scope_goes_ahead_of_the_line() {
    let queue = idle_serializable(8).await;
    a_job_handed_its_scope_goes_ahead_of_the_line(queue).await;
}

// On the priority queue, ahead of the jobs of its priority, not of higher ones.
#[tokio::test]
async fn priority_job_handed_its_scope_goes_ahead_of_its_priority_only() {
    let queue: Arc<amboy::local::PriorityQueue> = idle(amboy::local::PriorityQueue::new(8)).await;
    let job = |id: &str, scopes: &[&str], priority: i32| -> JobRef {
        let job = scoped(id, scopes);
        job.set_priority(priority);
        job
    };
    queue.put(job("zz-a", &["zz-s"], 0)).await.unwrap();
    queue.put(job("zz-w", &["zz-s"], 0)).await.unwrap();
    let a = queue.try_next().unwrap();
    assert!(queue.try_next().is_none(), "w waits beside the scope");
    queue.put(job("zz-low", &[], 0)).await.unwrap();
    queue.put(job("zz-high", &[], 5)).await.unwrap();
    queue.complete(&a).await.unwrap();
    let order: Vec<String> = (0..3)
        .map(|_| queue.try_next().unwrap().id().to_owned())
        .collect();
    assert_eq!(order, ["zz-high", "zz-w", "zz-low"]);
}

// A job waiting for a far-off wait_until and completed from outside stayed in the timer heap
// until its time came: putting and cancelling such jobs grew the heap without bound.
async fn jobs_completed_while_they_wait_for_their_time_leave_the_timer_heap(
    queue: Arc<impl InMemory>,
) {
    let delayed = || queue.delayed();
    let later = chrono::Utc::now() + chrono::TimeDelta::hours(1);
    let mut jobs = Vec::new();
    for n in 0..100 {
        let job = scoped(&format!("zz-later-{n}"), &[]);
        job.base().metadata().time_info.wait_until = Some(later);
        queue.put(job).await.unwrap();
        jobs.push(queue.get(&format!("zz-later-{n}")).await.unwrap());
    }
    assert_eq!(delayed(), 100);
    for (n, job) in jobs.iter().enumerate() {
        queue.complete(job).await.unwrap();
        let live = 99 - n;
        assert!(
            delayed() <= 2 * live,
            "{} entries for {live} jobs still waiting",
            delayed()
        );
    }
    assert_eq!(delayed(), 0);
}

#[tokio::test]
async fn local_jobs_completed_while_they_wait_for_their_time_leave_the_timer_heap() {
    let queue: Arc<LimitedSizeQueue> = idle(LimitedSizeQueue::new(100)).await;
    jobs_completed_while_they_wait_for_their_time_leave_the_timer_heap(queue).await;
}

#[tokio::test]
async fn serializable_jobs_completed_while_they_wait_for_their_time_leave_the_timer_heap() {
    jobs_completed_while_they_wait_for_their_time_leave_the_timer_heap(
        idle_serializable(100).await,
    )
    .await;
}

// On the priority queue, the jobs waiting beside a scope are handed it by priority: the
// higher one runs first though it came to wait later.
#[tokio::test]
async fn priority_jobs_waiting_beside_a_scope_are_handed_it_by_priority() {
    let queue: Arc<amboy::local::PriorityQueue> = idle(amboy::local::PriorityQueue::new(8)).await;
    let job = |id: &str, priority: i32| -> JobRef {
        let job = scoped(id, &["zz-s"]);
        job.set_priority(priority);
        job
    };
    queue.put(job("zz-holder", 9)).await.unwrap();
    let holder = queue.try_next().unwrap();
    queue.put(job("zz-low", 0)).await.unwrap();
    assert!(queue.try_next().is_none(), "low waits beside the scope");
    queue.put(job("zz-high", 5)).await.unwrap();
    assert!(queue.try_next().is_none(), "high waits too");
    queue.complete(&holder).await.unwrap();
    assert_eq!(queue.try_next().unwrap().id(), "zz-high");
}

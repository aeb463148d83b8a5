//! The scenarios of amboy's `TestQueueSmoke`, written against the `Queue` trait.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use amboy::prelude::*;
use amboy::{Base, JobRef, QueueStats};
use chrono::{TimeDelta, Utc};
use futures::TryStreamExt;
use tokio::task::JoinSet;
use tokio::time::timeout;

use crate::cases::{self, QueueCase, RunnerCase, Workers};
use crate::jobs::{Count, Exclusive, Noop, RetryOnce, Sleep, counter, most_at_once, open_gate};

/// The longest any scenario may take before it counts as hung.
const LIMIT: Duration = Duration::from_secs(60);

/// One scenario of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Many tasks put and get jobs; all complete with times set.
    Basic,
    /// Jobs waiting for a later time stay pending; the others run.
    WaitUntil,
    /// Jobs past their dispatch deadline are dropped and counted; the others run.
    DispatchBy,
    /// Jobs running past their max time are stopped.
    MaxTime,
    /// Every job runs exactly once.
    OneExecution,
    /// Enqueue scopes are taken at put and released at completion.
    EnqueueScopes,
    /// A stored copy's lock can be taken and saved repeatedly, and a save two locks ahead of
    /// the store is refused (queues storing copies only: a queue holding the jobs themselves
    /// has no stored copy to compare with).
    SaveLockingCheck,
    /// Jobs sharing a scope run one at a time while the others run freely (dormant in amboy).
    ScopedLock,
    /// A job asking for one retry runs twice; both attempts are kept.
    RetryOnce,
    /// A retrying job keeps its enqueue scopes until its last attempt, then frees them.
    RetryScopedAll,
    /// The same with an enqueue scope that is a subset of the job's scopes.
    RetryScopedSubset,
    /// A retrying job whose retry was never processed is found and retried.
    RetryStale,
    /// `next` is cancel-safe: a call dropped before it completes, whether the queue was empty
    /// or a job arrived meanwhile, leaves no job dispatched; a fresh call gets the job, which is
    /// dispatched once. The scenario takes the jobs itself, on a started queue without workers
    /// (run it with [`run_without_runner`]).
    NextCancelSafe,
}

impl Scenario {
    /// Whether the scenario needs a retryable queue.
    pub fn needs_retry(self) -> bool {
        matches!(
            self,
            Scenario::RetryOnce
                | Scenario::RetryScopedAll
                | Scenario::RetryScopedSubset
                | Scenario::RetryStale
        )
    }

    /// Whether the scenario runs with a runner's workers taking the jobs; the others take the
    /// jobs themselves and run once per queue ([`run_without_runner`]).
    pub fn needs_runner(self) -> bool {
        !matches!(self, Scenario::NextCancelSafe)
    }
}

/// Runs `scenario` for `queue` with `runner` at `size` workers.
pub async fn run(scenario: Scenario, queue: QueueCase, runner: RunnerCase, size: usize) {
    assert!(
        !scenario.needs_retry() || queue.retryable,
        "{scenario:?} needs a retryable queue"
    );
    assert!(
        scenario.needs_runner(),
        "{scenario:?} takes the jobs itself: run it with run_without_runner"
    );
    let test = async {
        // amboy's scoped-lock case runs three workers per job slot, so that free jobs always
        // find a worker while scoped ones wait.
        assert!(
            scenario != Scenario::ScopedLock || runner.workers == Workers::Many,
            "the scoped-lock scenario needs several workers"
        );
        let workers = if scenario == Scenario::ScopedLock {
            3 * size
        } else {
            size
        };
        let built = cases::start_with(queue, runner, size, workers)
            .await
            .expect("the queue starts");
        let prefix = format!("{}-{}-{}-{:?}", queue.name, runner.name, size, scenario);
        match scenario {
            Scenario::Basic => basic(&built, size, &prefix).await,
            Scenario::WaitUntil => wait_until(&built, size, &prefix).await,
            Scenario::DispatchBy => dispatch_by(&built, size, &prefix).await,
            Scenario::MaxTime => max_time(&built, size, &prefix).await,
            Scenario::OneExecution => one_execution(&built, &prefix).await,
            Scenario::EnqueueScopes => enqueue_scopes(&built, &prefix).await,
            Scenario::SaveLockingCheck => save_locking_check(&built, queue, &prefix).await,
            Scenario::ScopedLock => scoped_lock(&built, size, &prefix).await,
            Scenario::RetryOnce => retry_once(&built, &prefix).await,
            Scenario::RetryScopedAll => retry_scoped(&built, &prefix, false).await,
            Scenario::RetryScopedSubset => retry_scoped(&built, &prefix, true).await,
            Scenario::RetryStale => retry_stale(&built, &prefix).await,
            Scenario::NextCancelSafe => unreachable!("checked above"),
        }
        built.close().await;
    };
    timeout(LIMIT, test).await.expect("the scenario finishes");
}

/// Runs `scenario`, which takes the jobs itself, for `queue`, started with a runner that has no
/// workers ([`cases::start_idle`]).
pub async fn run_without_runner(scenario: Scenario, queue: QueueCase) {
    assert!(
        !scenario.needs_runner(),
        "{scenario:?} needs workers: run it with run"
    );
    let test = async {
        let built = cases::start_idle(queue, 1).await.expect("the queue starts");
        let prefix = format!("{}-{:?}", queue.name, scenario);
        match scenario {
            Scenario::NextCancelSafe => next_cancel_safe(&built, queue, &prefix).await,
            _ => unreachable!("checked above"),
        }
        built.close().await;
    };
    timeout(LIMIT, test).await.expect("the scenario finishes");
}

async fn stats(queue: &Arc<dyn Queue>) -> QueueStats {
    queue.stats().await.expect("stats")
}

async fn wait_until_stats(
    queue: &Arc<dyn Queue>,
    done: impl Fn(&QueueStats) -> bool,
) -> QueueStats {
    loop {
        let stats = stats(queue).await;
        if done(&stats) {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn results(queue: &Arc<dyn Queue>) -> Vec<JobRef> {
    queue.results().await.try_collect().await.expect("results")
}

async fn infos(queue: &Arc<dyn Queue>) -> Vec<amboy::JobInfo> {
    queue
        .job_info()
        .await
        .try_collect()
        .await
        .expect("job info")
}

async fn basic(queue: &Arc<dyn Queue>, size: usize, prefix: &str) {
    let mut tasks = JoinSet::new();
    for worker in 0..size {
        let queue = queue.clone();
        let prefix = prefix.to_owned();
        tasks.spawn(async move {
            for n in 0..7 {
                let id = format!("{prefix}-{worker}-{n}");
                queue.put(Noop::new(&id)).await.expect("put");
                let got = queue.get(&id).await.expect("get right after put");
                assert_eq!(got.id(), id);
            }
        });
    }
    while let Some(task) = tasks.join_next().await {
        task.expect("putting task");
    }
    amboy::wait_interval(&**queue, Duration::from_millis(100))
        .await
        .expect("wait");
    let stats = stats(queue).await;
    assert_eq!(stats.total, 7 * size, "{stats}");
    assert_eq!(stats.completed, 7 * size, "{stats}");
    let results = results(queue).await;
    assert_eq!(results.len(), 7 * size);
    for job in &results {
        let status = job.status();
        let time = job.time_info();
        assert!(status.completed && !status.in_progress, "{job:?}");
        assert!(
            time.start.is_some() && time.end.is_some(),
            "{job:?} {time:?}"
        );
    }
    assert_eq!(infos(queue).await.len(), 7 * size);
}

async fn wait_until(queue: &Arc<dyn Queue>, size: usize, prefix: &str) {
    let sz = size.clamp(2, 16);
    let later = Utc::now() + TimeDelta::minutes(40);
    for n in 0..6 * sz {
        queue
            .put(Noop::new(format!("{prefix}-now-{n}")))
            .await
            .expect("put");
        let waiting = Noop {
            base: Base::with_id(format!("{prefix}-later-{n}")).with_wait_until(later),
        };
        queue.put(Arc::new(waiting)).await.expect("put waiting");
    }
    wait_until_stats(queue, |s| s.completed >= 6 * sz).await;
    let stats = stats(queue).await;
    assert_eq!(stats.total, 12 * sz, "{stats}");
    assert_eq!(stats.completed, 6 * sz, "{stats}");
    assert_eq!(stats.pending, 6 * sz, "{stats}");
    assert!(!stats.is_complete());
    let infos = infos(queue).await;
    assert_eq!(infos.len(), 12 * sz);
    for info in infos {
        if info.status.completed {
            assert!(info.time.wait_until.is_none(), "{info:?}");
        } else {
            assert_eq!(info.time.wait_until, Some(later), "{info:?}");
        }
    }
}

async fn dispatch_by(queue: &Arc<dyn Queue>, size: usize, prefix: &str) {
    let now = Utc::now();
    for n in 0..size {
        let in_time = Noop {
            base: Base::with_id(format!("{prefix}-in-time-{n}"))
                .with_dispatch_by(now + TimeDelta::minutes(10)),
        };
        let too_late = Noop {
            base: Base::with_id(format!("{prefix}-too-late-{n}"))
                .with_dispatch_by(now - TimeDelta::seconds(1)),
        };
        queue.put(Arc::new(in_time)).await.expect("put");
        queue.put(Arc::new(too_late)).await.expect("put");
    }
    // The expired jobs are counted, so waiting for the queue ends (amboy's hung here).
    amboy::wait(&**queue).await.expect("wait");
    let stats = stats(queue).await;
    assert_eq!(stats.total, 2 * size, "{stats}");
    assert_eq!(stats.completed, size, "{stats}");
    assert_eq!(stats.expired, size, "{stats}");
    assert_eq!((stats.running, stats.pending), (0, 0), "{stats}");
    let ran: HashSet<String> = results(queue)
        .await
        .iter()
        .map(|job| job.id().to_owned())
        .collect();
    assert!(ran.iter().all(|id| id.contains("-in-time-")), "{ran:?}");
}

async fn max_time(queue: &Arc<dyn Queue>, size: usize, prefix: &str) {
    for n in 0..size {
        let base = Base::with_id(format!("{prefix}-{n}")).with_max_time(Duration::from_millis(1));
        queue
            .put(Sleep::new(base, Duration::from_secs(5)))
            .await
            .expect("put");
    }
    timeout(
        Duration::from_secs(10),
        amboy::wait_interval(&**queue, Duration::from_millis(10)),
    )
    .await
    .expect("max time stops the jobs well before they finish sleeping")
    .expect("wait");
    let results = results(queue).await;
    assert_eq!(results.len(), size);
    for job in results {
        assert!(
            job.time_info().duration() < Duration::from_secs(5),
            "{:?}",
            job.time_info()
        );
        assert_eq!(
            job.error().expect("stopped jobs record why").message(),
            "job was aborted during execution: context deadline exceeded"
        );
    }
}

async fn one_execution(queue: &Arc<dyn Queue>, prefix: &str) {
    let runs = counter(prefix);
    for n in 0..40 {
        queue
            .put(Count::new(format!("{prefix}-{n}"), prefix))
            .await
            .expect("put");
    }
    amboy::wait(&**queue).await.expect("wait");
    assert_eq!(runs.load(Ordering::SeqCst), 40);
    assert_eq!(stats(queue).await.completed, 40);
}

async fn enqueue_scopes(queue: &Arc<dyn Queue>, prefix: &str) {
    let scope = |name: &str| format!("{prefix}-{name}");

    // Put keeps scopes and enqueue scopes.
    let kept = Noop {
        base: Base::with_id(format!("{prefix}-kept"))
            .with_scopes([scope("kept-a"), scope("kept-b")])
            .with_enqueue_scopes([scope("kept-b")]),
    };
    queue.put(Arc::new(kept)).await.expect("put");
    let got = queue.get(&format!("{prefix}-kept")).await.expect("get");
    assert_eq!(got.scopes(), [scope("kept-a"), scope("kept-b")]);
    assert_eq!(got.enqueue_scopes(), [scope("kept-b")]);
    assert!(!got.enqueue_all_scopes());
    let all = Noop {
        base: Base::with_id(format!("{prefix}-all"))
            .with_scopes([scope("all")])
            .with_enqueue_all_scopes(),
    };
    queue.put(Arc::new(all)).await.expect("put");
    let got = queue.get(&format!("{prefix}-all")).await.expect("get");
    assert!(got.enqueue_all_scopes());
    assert_eq!(got.enqueue_scopes(), [scope("all")]);

    // A job holding an enqueue scope, held back for an hour, can be saved.
    let later = Utc::now() + TimeDelta::hours(1);
    let holder: JobRef = Sleep::new(
        Base::with_id(format!("{prefix}-holder"))
            .with_scopes([scope("shared"), scope("own")])
            .with_enqueue_scopes([scope("shared")])
            .with_wait_until(later),
        Duration::ZERO,
    );
    queue.put(holder.clone()).await.expect("put holder");
    queue.save(&holder).await.expect("save holder");

    // The same enqueue scope, alone or among others, is refused while the holder lives.
    let same = || {
        Base::with_id(format!("{prefix}-same"))
            .with_scopes([scope("shared")])
            .with_enqueue_all_scopes()
    };
    let rival = |base: Base| -> JobRef { Arc::new(Noop { base }) };
    let err = queue
        .put(rival(same()))
        .await
        .expect_err("the scope is taken");
    assert!(err.is_duplicate_scope() && err.is_duplicate_job(), "{err}");
    let subset = Base::with_id(format!("{prefix}-subset"))
        .with_scopes([scope("other"), scope("shared")])
        .with_enqueue_scopes([scope("shared")]);
    let err = queue
        .put(rival(subset))
        .await
        .expect_err("the scope is taken");
    assert!(err.is_duplicate_scope(), "{err}");

    // Completing the holder frees the scope.
    queue.complete(&holder).await.expect("complete holder");
    queue
        .put(rival(same()))
        .await
        .expect("the scope is free again");
}

async fn save_locking_check(queue: &Arc<dyn Queue>, case: QueueCase, prefix: &str) {
    let owner: Arc<str> = Arc::from(queue.id());
    let lock_timeout = queue.info().lock_timeout;
    let id = format!("{prefix}-sleeper");
    let job: JobRef = Sleep::new(
        Base::with_id(&id).with_wait_until(Utc::now() + TimeDelta::minutes(40)),
        Duration::from_secs(300),
    );
    assert!(
        case.stores_copies,
        "the save-locking scenario needs a queue storing copies"
    );
    queue.put(job.clone()).await.expect("put");
    job.lock(&owner, lock_timeout).expect("lock");
    queue.save(&job).await.expect("save after lock");
    job.lock(&owner, lock_timeout).expect("lock");
    job.lock(&owner, lock_timeout).expect("lock");
    assert!(
        queue.save(&job).await.is_err(),
        "a save two locks ahead of the store must fail"
    );
    for _ in 0..25 {
        let stored = queue.get(&id).await.expect("get");
        stored.lock(&owner, lock_timeout).expect("lock");
        queue.save(&stored).await.expect("save");
    }
    let stored = queue.get(&id).await.expect("get");
    queue.complete(&stored).await.expect("complete");
    assert!(stored.error().is_none(), "{:?}", stored.error());
}

async fn scoped_lock(queue: &Arc<dyn Queue>, size: usize, prefix: &str) {
    let scope = format!("{prefix}-a");
    let key = format!("{prefix}-exclusive");
    for n in 0..2 * size {
        let base = Base::with_id(format!("{prefix}-{n}"));
        let job: JobRef = if n % 2 == 0 {
            Arc::new(Exclusive {
                base: base.with_scopes([scope.clone()]),
                key: key.clone(),
            })
        } else {
            Noop::new(format!("{prefix}-{n}"))
        };
        queue.put(job).await.expect("put");
    }
    // The free jobs all ran while one scoped job holds the scope (it waits for its gate), and
    // the other scoped jobs wait for the scope, pending.
    let stats = wait_until_stats(queue, |s| s.completed >= size && s.running >= 1).await;
    assert_eq!(stats.completed, size, "{stats}");
    assert_eq!(
        stats.running, 1,
        "one holder of the scope at a time: {stats}"
    );
    assert_eq!(
        stats.pending,
        size - 1,
        "the other scoped jobs wait: {stats}"
    );
    // Let them all through: they hold the scope one after another. Every job counts, on its
    // own, how many scoped jobs run with it, including any wrongly let in while the first
    // waited at its gate.
    open_gate(&key);
    amboy::wait(&**queue).await.expect("wait");
    assert_eq!(counter(&key).load(Ordering::SeqCst), size);
    assert_eq!(
        most_at_once(&key),
        1,
        "jobs sharing a scope never ran together"
    );
}

async fn attempts(queue: &Arc<dyn Queue>, id: &str) -> Vec<JobRef> {
    let retryable = queue.as_retryable().expect("a retryable queue");
    retryable.get_all_attempts(id).await.expect("attempts")
}

async fn retry_once(queue: &Arc<dyn Queue>, prefix: &str) {
    let id = format!("{prefix}-job");
    queue
        .put(RetryOnce::new(Base::with_id(&id), prefix))
        .await
        .expect("put");
    amboy::wait(&**queue).await.expect("wait");
    assert_eq!(counter(prefix).load(Ordering::SeqCst), 2, "ran twice");
    let attempts = attempts(queue, &id).await;
    assert_eq!(attempts.len(), 2);
    for (n, attempt) in attempts.iter().enumerate() {
        let retry = attempt.retry_info();
        assert_eq!(retry.current_attempt, n as u32);
        assert!(
            attempt.status().completed && !retry.should_retry(),
            "{retry:?}"
        );
    }
    assert!(attempts[0].error().is_some() && attempts[1].error().is_none());
    let in_results = results(queue)
        .await
        .iter()
        .filter(|job| job.id() == id)
        .count();
    assert_eq!(in_results, 2, "both attempts are results");
    let latest = queue.get(&id).await.expect("get");
    assert_eq!(
        latest.retry_info().current_attempt,
        1,
        "get returns the latest attempt"
    );
}

async fn retry_scoped(queue: &Arc<dyn Queue>, prefix: &str, subset: bool) {
    let scope = format!("{prefix}-scope");
    let base = Base::with_id(format!("{prefix}-retrying"));
    let base = if subset {
        base.with_scopes([scope.clone(), format!("{prefix}-other")])
            .with_enqueue_scopes([scope.clone()])
    } else {
        base.with_scopes([scope.clone()]).with_enqueue_all_scopes()
    };
    queue.put(RetryOnce::new(base, prefix)).await.expect("put");
    amboy::wait(&**queue).await.expect("wait");
    assert_eq!(counter(prefix).load(Ordering::SeqCst), 2);
    // The scope went from attempt to attempt and is free once the job stopped retrying.
    let later = Count {
        base: Base::with_id(format!("{prefix}-later"))
            .with_scopes([scope])
            .with_enqueue_all_scopes(),
        counter: format!("{prefix}-later"),
    };
    queue
        .put(Arc::new(later))
        .await
        .expect("the scope is free again");
    amboy::wait(&**queue).await.expect("wait");
    let stats = stats(queue).await;
    assert_eq!(
        (stats.completed, stats.total, stats.retrying),
        (3, 3, 0),
        "{stats}"
    );
    assert_eq!(
        counter(&format!("{prefix}-later")).load(Ordering::SeqCst),
        1
    );
}

async fn retry_stale(queue: &Arc<dyn Queue>, prefix: &str) {
    let id = format!("{prefix}-stale");
    let job = RetryOnce::new(Base::with_id(&id), prefix);
    {
        let mut meta = job.base().metadata();
        meta.status.completed = true;
        meta.retry_info.needs_retry = true;
        let long_ago = queue.info().lock_timeout * 100;
        meta.status.modification_time =
            Some(Utc::now() - TimeDelta::from_std(long_ago).expect("in range"));
    }
    queue.put(job).await.expect("put");
    // Stored retrying; the stale-retrying monitor may already have handed it over (a database
    // queue's maintenance can run between the put and this look), so attempt 0 is retrying or
    // attempt 1 exists.
    let stored = stats(queue).await;
    assert!(
        stored.retrying == 1 || stored.total == 2,
        "put as retrying: {stored}"
    );
    // The stale-retrying monitor finds it and the retry handler enqueues attempt 1.
    amboy::wait(&**queue).await.expect("wait");
    let stats = stats(queue).await;
    assert_eq!((stats.total, stats.completed), (2, 2), "{stats}");
    let attempts = attempts(queue, &id).await;
    assert_eq!(attempts.len(), 2);
    for attempt in &attempts {
        let retry = attempt.retry_info();
        assert!(retry.retryable && !retry.needs_retry, "{retry:?}");
    }
    assert_eq!(
        counter(prefix).load(Ordering::SeqCst),
        1,
        "only attempt 1 ran here"
    );
}

/// How long a `next` may take to hand out a job that is ready.
const PROMPTLY: Duration = Duration::from_secs(10);

/// Polls a fresh `next` exactly once, then drops it: it must still be waiting (the queue has
/// nothing ready). With `meanwhile`, the job is put while that `next` waits, and the `next` is
/// dropped without being polled again.
async fn abandon_next(queue: &Arc<dyn Queue>, meanwhile: Option<JobRef>) {
    let mut next = std::pin::pin!(queue.next());
    let polled = futures::poll!(next.as_mut());
    assert!(
        polled.is_pending(),
        "nothing is ready, so next must wait: {polled:?}"
    );
    if let Some(job) = meanwhile {
        queue.put(job).await.expect("put");
    }
}

async fn take_next(queue: &Arc<dyn Queue>) -> JobRef {
    timeout(PROMPTLY, queue.next())
        .await
        .expect("a fresh next hands out the ready job")
        .expect("the queue is open")
}

async fn next_cancel_safe(queue: &Arc<dyn Queue>, case: QueueCase, prefix: &str) {
    // A `next` dropped while the queue is empty.
    abandon_next(queue, None).await;
    let first = format!("{prefix}-first");
    queue.put(Noop::new(&first)).await.expect("put");
    let s = stats(queue).await;
    // A queue claiming in the background may have claimed the job for the abandoned call,
    // and holds it for the next one.
    let held = usize::from(case.claims_ahead && s.running == 1);
    assert_eq!((s.total, s.pending, s.running), (1, 1 - held, held), "{s}");
    let taken = take_next(queue).await;
    assert_eq!(taken.id(), first);
    assert!(taken.status().in_progress, "{:?}", taken.status());
    let s = stats(queue).await;
    assert_eq!(
        (s.total, s.pending, s.running),
        (1, 0, 1),
        "dispatched once: {s}"
    );

    // A `next` waiting when a job arrives, dropped before it is polled again: the job stays
    // in line, not dispatched to nobody.
    let second = format!("{prefix}-second");
    abandon_next(queue, Some(Noop::new(&second))).await;
    let s = stats(queue).await;
    let held = usize::from(case.claims_ahead && s.running == 2);
    assert_eq!(
        (s.total, s.pending, s.running),
        (2, 1 - held, 1 + held),
        "the abandoned next dispatched nothing: {s}"
    );
    let infos = infos(queue).await;
    let waiting = infos
        .iter()
        .find(|info| info.id == second)
        .expect("the job is in the queue");
    // (A queue claiming in the background may claim it between the two reads.)
    assert!(
        (case.claims_ahead || !waiting.status.in_progress) && !waiting.status.completed,
        "{waiting:?}"
    );
    let again = take_next(queue).await;
    assert_eq!(again.id(), second);
    let s = stats(queue).await;
    assert_eq!(
        (s.total, s.pending, s.running),
        (2, 0, 2),
        "each job dispatched once: {s}"
    );

    // A `next` polled once while a job is ready, dropped if it did not finish in that poll
    // (a queue whose `next` awaits its store part-way): it handed out the job, or left it for
    // a fresh call.
    let third = format!("{prefix}-third");
    queue.put(Noop::new(&third)).await.expect("put");
    let polled = {
        let mut next = std::pin::pin!(queue.next());
        futures::poll!(next.as_mut())
    };
    let last = match polled {
        std::task::Poll::Ready(result) => result.expect("the queue is open"),
        std::task::Poll::Pending => take_next(queue).await,
    };
    assert_eq!(last.id(), third);
    let s = stats(queue).await;
    assert_eq!(
        (s.total, s.pending, s.running),
        (3, 0, 3),
        "each job dispatched once: {s}"
    );

    // All complete; nothing is left in progress, and nothing else is handed out.
    for job in [&taken, &again, &last] {
        queue.complete(job).await.expect("complete");
    }
    let s = stats(queue).await;
    assert_eq!(
        (s.total, s.completed, s.pending, s.running),
        (3, 3, 0, 0),
        "{s}"
    );
    assert!(s.is_complete(), "{s}");
    abandon_next(queue, None).await;
    assert_eq!(stats(queue).await, s, "an abandoned next changes nothing");
}

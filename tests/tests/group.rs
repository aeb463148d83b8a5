//! Queue groups: the `GroupCache` contract (amboy's `group_util_test.go`, for default time to
//! live 0, 1 minute and 1 hour, with decision 7: name listing returns every name) and the
//! `LocalQueueGroup` (amboy's `group_test.go`: construction, get, put, prune by hand and in the
//! background, a retried job in a grouped serializable queue, close).
//!
//! Time to live is counted on tokio's clock, so the pruning tests run on paused time and
//! advance it by hand.

use std::any::Any;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use amboy::local::{
    CleanupHook, GroupCache, LocalGroupQueueOptions, LocalQueueGroup, LocalQueueGroupOptions,
};
use amboy::prelude::*;
use amboy::{Base, Error, JobContext, JobError, JobRef, QueueStats};
use amboy_tests::cases::{self, LIMITED_SIZE};
use amboy_tests::jobs::{Gated, Noop, counter, open_gate};
use futures::{FutureExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tokio::time::{advance, timeout};

/// Bound for anything that should happen at once (virtual time in paused tests).
const PROMPTLY: Duration = Duration::from_secs(10);

/// The default times to live amboy's cache tests run with.
const DEFAULT_TTLS: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_secs(60),
    Duration::from_secs(3600),
];

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const MILLI: Duration = Duration::from_millis(1);

// ---------------------------------------------------------------------------------------------
// Job types and helpers
// ---------------------------------------------------------------------------------------------

/// Fails with a retryable error on every attempt, counting its runs in the counter named
/// `counter`.
#[derive(Debug, Serialize, Deserialize)]
struct AlwaysRetry {
    base: Base,
    counter: String,
}

#[typetag::serde(name = "group-test-always-retry")]
#[async_trait::async_trait]
impl Job for AlwaysRetry {
    fn base(&self) -> &Base {
        &self.base
    }

    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        counter(&self.counter).fetch_add(1, Ordering::SeqCst);
        Err(JobError::retryable("asks to retry, always"))
    }
}

/// Options building limited-size queues with one worker, counting the builds in the counter
/// named `builds`.
fn limited_options(builds: &str) -> LocalGroupQueueOptions {
    let builds = counter(builds);
    LocalGroupQueueOptions::new(move || {
        builds.fetch_add(1, Ordering::SeqCst);
        amboy::new_local_limited_size(1, 64)
    })
}

/// Options building serializable (retrying) queues with two workers, counting the builds in
/// the counter named `builds`.
fn serializable_options(builds: &str) -> LocalGroupQueueOptions {
    let builds = counter(builds);
    LocalGroupQueueOptions::new(move || {
        builds.fetch_add(1, Ordering::SeqCst);
        amboy::new_local_limited_size_serializable(2, 64)
    })
}

fn builds(name: &str) -> usize {
    counter(name).load(Ordering::SeqCst)
}

fn group(ttl: Duration, default_queue: LocalGroupQueueOptions) -> Arc<LocalQueueGroup> {
    LocalQueueGroup::new(LocalQueueGroupOptions { default_queue, ttl }).expect("valid options")
}

/// Queue options of a type the local group does not know.
struct ForeignOptions {
    builds: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl QueueOptions for ForeignOptions {
    async fn build_queue(&self) -> amboy::Result<Arc<dyn Queue>> {
        self.builds.fetch_add(1, Ordering::SeqCst);
        Ok(amboy::new_local_limited_size(1, 8))
    }

    fn validate(&self) -> amboy::Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// An empty started queue whose runner runs nothing: complete.
async fn idle() -> Arc<dyn Queue> {
    cases::start_idle(LIMITED_SIZE, 1).await.expect("start")
}

/// A started queue whose runner runs nothing, holding the pending job `id`: not complete.
async fn busy(id: &str) -> Arc<dyn Queue> {
    let queue = idle().await;
    queue.put(Noop::new(id)).await.expect("put");
    assert!(!stats(&queue).await.is_complete());
    queue
}

/// Runs the pending job of a queue made by [`busy`] by hand: the queue is complete after.
async fn finish_by_hand(queue: &Arc<dyn Queue>) {
    let job = timeout(PROMPTLY, queue.next())
        .await
        .expect("a pending job")
        .expect("the queue is open");
    queue.complete(&job).await.expect("complete");
    assert!(stats(queue).await.is_complete());
}

async fn stats(queue: &Arc<dyn Queue>) -> QueueStats {
    queue.stats().await.expect("stats")
}

async fn result_count(queue: &Arc<dyn Queue>) -> usize {
    let results: Vec<JobRef> = queue.results().await.try_collect().await.expect("results");
    results.len()
}

async fn wait_complete(queue: &Arc<dyn Queue>) {
    timeout(PROMPTLY, amboy::wait(&**queue))
        .await
        .expect("the queue completes")
        .expect("wait");
}

/// Whether the queue is started and its runner runs.
fn is_running(queue: &Arc<dyn Queue>) -> bool {
    queue.info().started && queue.runner().is_some_and(|runner| runner.started())
}

static PROBES: AtomicUsize = AtomicUsize::new(0);

/// The queue was closed: its runner stopped and it takes no more jobs.
async fn assert_closed(queue: &Arc<dyn Queue>, what: &str) {
    assert!(
        !queue.runner().is_some_and(|runner| runner.started()),
        "{what}: the runner stopped"
    );
    let probe = Noop::new(format!(
        "group-closed-probe-{}",
        PROBES.fetch_add(1, Ordering::SeqCst)
    ));
    match queue.put(probe).await {
        Err(Error::Closed(_)) => {}
        other => panic!("{what}: a put after close must fail as closed: {other:?}"),
    }
}

fn names(of: &[&str]) -> Vec<String> {
    of.iter().map(|name| (*name).to_owned()).collect()
}

// ---------------------------------------------------------------------------------------------
// GroupCache (group_util_test.go)
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn cache_starts_empty() {
    for ttl in DEFAULT_TTLS {
        let cache = GroupCache::new(ttl);
        assert_eq!(cache.len(), 0, "{ttl:?}");
        assert!(cache.is_empty(), "{ttl:?}");
        assert!(cache.names().is_empty(), "{ttl:?}");
        assert!(cache.get("foo").is_none(), "{ttl:?}");
        cache.remove("foo").await.expect("removing nothing is fine");
        cache.prune().await.expect("pruning nothing is fine");
        cache.close().await;
        assert!(cache.is_empty(), "{ttl:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn cache_set_get_round_trip_and_double_set_fails() {
    for ttl in DEFAULT_TTLS {
        let cache = GroupCache::new(ttl);
        let queue = idle().await;
        cache
            .set("foo", queue.clone(), Duration::ZERO)
            .expect("set");
        assert_eq!(cache.len(), 1, "{ttl:?}");
        assert_eq!(cache.names(), names(&["foo"]), "{ttl:?}");
        let got = cache.get("foo").expect("cached");
        assert!(Arc::ptr_eq(&got, &queue), "{ttl:?}: the very queue");

        let other = idle().await;
        let err = cache
            .set("foo", other.clone(), Duration::ZERO)
            .expect_err("double set");
        assert!(err.to_string().contains("already cached"), "{ttl:?}: {err}");
        assert_eq!(cache.len(), 1, "{ttl:?}");
        assert!(
            Arc::ptr_eq(&cache.get("foo").expect("cached"), &queue),
            "{ttl:?}: the first queue stays"
        );
        cache.close().await;
        other.close().await;
    }
}

#[tokio::test(start_paused = true)]
async fn cache_names_lists_every_name() {
    for ttl in DEFAULT_TTLS {
        let cache = GroupCache::new(ttl);
        for name in ["charlie", "alpha", "bravo"] {
            cache.set(name, idle().await, ttl).expect("set");
        }
        assert_eq!(cache.len(), 3, "{ttl:?}");
        assert_eq!(
            cache.names(),
            names(&["alpha", "bravo", "charlie"]),
            "{ttl:?}: every name, not only the first (amboy's bug)"
        );
        cache.close().await;
    }
}

#[tokio::test(start_paused = true)]
async fn cache_remove_closes_complete_queues_and_refuses_active_ones() {
    for ttl in DEFAULT_TTLS {
        let cache = GroupCache::new(ttl);
        cache
            .remove("missing")
            .await
            .expect("an unknown name is fine");

        let steady = idle().await;
        cache.set("steady", steady.clone(), ttl).expect("set");
        cache.remove("steady").await.expect("a complete queue goes");
        assert!(cache.get("steady").is_none(), "{ttl:?}");
        assert_closed(&steady, "removed queue").await;

        // A queue whose work is done is complete too.
        let worked: Arc<dyn Queue> = amboy::new_local_limited_size(1, 8);
        worked.start().await.expect("start");
        worked
            .put(Noop::new(format!("cache-remove-worked-{}", ttl.as_secs())))
            .await
            .expect("put");
        wait_complete(&worked).await;
        cache.set("worked", worked.clone(), ttl).expect("set");
        cache.remove("worked").await.expect("a complete queue goes");
        assert_closed(&worked, "removed queue").await;

        let active = busy(&format!("cache-remove-active-{}", ttl.as_secs())).await;
        cache.set("active", active.clone(), ttl).expect("set");
        let err = cache
            .remove("active")
            .await
            .expect_err("an active queue stays");
        assert!(err.to_string().contains("active"), "{ttl:?}: {err}");
        assert_eq!(cache.names(), names(&["active"]), "{ttl:?}");
        assert!(is_running(&active), "{ttl:?}: not closed");

        finish_by_hand(&active).await;
        cache.remove("active").await.expect("complete now");
        assert!(cache.is_empty(), "{ttl:?}");
        assert_closed(&active, "removed queue").await;
    }
}

#[tokio::test(start_paused = true)]
async fn cache_prune_removes_expired_complete_queues_only() {
    for ttl in DEFAULT_TTLS {
        let cache = GroupCache::new(ttl);
        let default = idle().await;
        cache
            .set("default", default.clone(), Duration::ZERO)
            .expect("set");
        let minute = idle().await;
        cache.set("minute", minute.clone(), MINUTE).expect("set");
        let hour = idle().await;
        cache.set("hour", hour.clone(), HOUR).expect("set");
        let active = busy(&format!("cache-prune-active-{}", ttl.as_secs())).await;
        cache.set("active", active.clone(), MINUTE).expect("set");

        // Nothing expired yet; a default of zero prunes complete queues at once.
        cache.prune().await.expect("prune");
        let mut expected = names(&["active", "default", "hour", "minute"]);
        if ttl.is_zero() {
            expected.retain(|name| name != "default");
            assert_closed(&default, "queue with ttl 0").await;
        }
        assert_eq!(cache.names(), expected, "{ttl:?}: fresh queues stay");
        assert!(is_running(&minute) && is_running(&hour), "{ttl:?}");

        advance(MINUTE + MILLI).await;
        cache.prune().await.expect("prune");
        expected.retain(|name| name != "minute" && !(name == "default" && ttl <= MINUTE));
        assert_eq!(cache.names(), expected, "{ttl:?}: after a minute");
        assert_closed(&minute, "expired queue").await;
        assert!(
            is_running(&active),
            "{ttl:?}: an active queue is never pruned"
        );
        assert!(is_running(&hour), "{ttl:?}: not expired");

        advance(HOUR).await;
        cache.prune().await.expect("prune");
        assert_eq!(
            cache.names(),
            names(&["active"]),
            "{ttl:?}: after an hour, only the active queue is left"
        );
        assert_closed(&hour, "expired queue").await;
        assert_closed(&default, "expired queue").await;
        assert!(is_running(&active), "{ttl:?}");

        // Once complete, the expired queue goes too.
        finish_by_hand(&active).await;
        cache.prune().await.expect("prune");
        assert!(cache.is_empty(), "{ttl:?}");
        assert_closed(&active, "expired queue").await;
    }
}

#[tokio::test(start_paused = true)]
async fn cache_get_refreshes_the_time_to_live() {
    for ttl in DEFAULT_TTLS {
        let cache = GroupCache::new(ttl);
        let queue = idle().await;
        cache.set("refreshed", queue.clone(), MINUTE).expect("set");
        advance(Duration::from_secs(50)).await;
        assert!(cache.get("refreshed").is_some());
        advance(Duration::from_secs(50)).await;
        cache.prune().await.expect("prune");
        assert_eq!(
            cache.names(),
            names(&["refreshed"]),
            "{ttl:?}: used 50 s ago"
        );
        advance(Duration::from_secs(11)).await;
        cache.prune().await.expect("prune");
        assert!(cache.is_empty(), "{ttl:?}: idle for 61 s");
        assert_closed(&queue, "expired queue").await;
    }
}

#[tokio::test(start_paused = true)]
async fn cache_with_ttl_zero_prunes_a_queue_as_soon_as_it_is_complete() {
    let cache = GroupCache::new(Duration::ZERO);
    let queue = busy("cache-ttl-zero-job").await;
    cache
        .set("zero", queue.clone(), Duration::ZERO)
        .expect("set");
    cache.prune().await.expect("prune");
    assert_eq!(cache.names(), names(&["zero"]), "active");
    finish_by_hand(&queue).await;
    // No time passes: complete is enough.
    cache.prune().await.expect("prune");
    assert!(cache.is_empty());
    assert_closed(&queue, "pruned queue").await;
}

#[tokio::test(start_paused = true)]
async fn cache_prune_calls_the_cleanup_hook_with_each_pruned_name() {
    for ttl in DEFAULT_TTLS {
        let pruned = Arc::new(Mutex::new(Vec::new()));
        let seen = pruned.clone();
        let hook: CleanupHook = Arc::new(move |name: String| {
            let seen = seen.clone();
            async move {
                let failing = name == "hook-fails";
                seen.lock().expect("not poisoned").push(name);
                if failing {
                    return Err(Error::invalid("the hook fails on purpose"));
                }
                Ok(())
            }
            .boxed()
        });
        let cache = GroupCache::with_cleanup_hook(ttl, hook);
        for name in ["hook-a", "hook-b"] {
            cache.set(name, idle().await, Duration::ZERO).expect("set");
        }
        let active = busy(&format!("cache-hook-active-{}", ttl.as_secs())).await;
        cache
            .set("hook-active", active.clone(), Duration::ZERO)
            .expect("set");
        advance(ttl + MILLI).await;
        cache.prune().await.expect("prune");
        let mut called = pruned.lock().expect("not poisoned").clone();
        called.sort();
        assert_eq!(called, names(&["hook-a", "hook-b"]), "{ttl:?}");
        assert_eq!(cache.names(), names(&["hook-active"]), "{ttl:?}");

        // A failing hook makes the prune fail; the closed queue is gone all the same.
        pruned.lock().expect("not poisoned").clear();
        let failing = idle().await;
        cache
            .set("hook-fails", failing.clone(), Duration::ZERO)
            .expect("set");
        advance(ttl + MILLI).await;
        let err = cache.prune().await.expect_err("the hook failed");
        assert!(err.to_string().contains("on purpose"), "{ttl:?}: {err}");
        assert_eq!(
            *pruned.lock().expect("not poisoned"),
            names(&["hook-fails"]),
            "{ttl:?}"
        );
        assert_eq!(cache.names(), names(&["hook-active"]), "{ttl:?}");
        assert_closed(&failing, "pruned queue").await;
        cache.close().await;
    }
}

#[tokio::test(start_paused = true)]
async fn cache_close_closes_and_forgets_every_queue() {
    for ttl in DEFAULT_TTLS {
        let cache = GroupCache::new(ttl);
        let steady = idle().await;
        cache.set("steady", steady.clone(), HOUR).expect("set");
        let active = busy(&format!("cache-close-active-{}", ttl.as_secs())).await;
        cache.set("active", active.clone(), HOUR).expect("set");
        cache.close().await;
        assert!(cache.is_empty(), "{ttl:?}");
        assert!(cache.names().is_empty(), "{ttl:?}");
        assert!(cache.get("steady").is_none(), "{ttl:?}");
        assert_closed(&steady, "closed cache").await;
        assert_closed(&active, "closed cache").await;
        // The cache can be used again.
        cache.set("steady", idle().await, HOUR).expect("set again");
        cache.close().await;
    }
}

// ---------------------------------------------------------------------------------------------
// LocalQueueGroup (group_test.go)
// ---------------------------------------------------------------------------------------------

/// A `get` under way while the group closes does not leave the queue it built behind: the
/// queue's start is held until the group closed, and the `get` then reports the group closed,
/// caches nothing and closes the queue it built.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_under_way_when_the_group_closes_leaves_no_queue_running() {
    let runner = Arc::new(amboy_tests::cases::GatedRunner::default());
    let built: Arc<Mutex<Option<Arc<dyn Queue>>>> = Arc::default();
    let options = LocalGroupQueueOptions::new({
        let (runner, built) = (runner.clone(), built.clone());
        move || {
            let queue = amboy::new_local_limited_size(1, 64);
            queue.set_runner(runner.clone()).expect("a runner");
            *built.lock().unwrap() = Some(queue.clone());
            queue
        }
    });
    let group = group(HOUR, options);
    let getting = tokio::spawn({
        let group = group.clone();
        async move { group.get("late", &[]).await }
    });
    timeout(PROMPTLY, runner.entered.acquire())
        .await
        .expect("the queue starts")
        .expect("open")
        .forget();
    group.close().await.expect("close");
    runner.gate.add_permits(1);
    let got = timeout(PROMPTLY, getting)
        .await
        .expect("the get ends")
        .expect("no panic");
    assert!(matches!(got, Err(Error::Closed(_))), "{got:?}");
    assert_eq!(group.len(), 0, "nothing cached");
    let queue = built.lock().unwrap().clone().expect("built");
    assert_closed(&queue, "a queue built for a closed group").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_ttl_must_be_zero_or_at_least_a_second() {
    for (ttl, valid) in [
        (Duration::ZERO, true),
        (Duration::from_nanos(1), false),
        (Duration::from_millis(500), false),
        (Duration::from_millis(999), false),
        (Duration::from_secs(1), true),
        (MINUTE, true),
    ] {
        let options = LocalQueueGroupOptions {
            default_queue: limited_options("group-validate-builds"),
            ttl,
        };
        assert_eq!(options.validate().is_ok(), valid, "{ttl:?}");
        match LocalQueueGroup::new(options) {
            Ok(group) => {
                assert!(valid, "{ttl:?} must be refused");
                assert!(group.is_empty());
                group.close().await.expect("close");
            }
            Err(err) => {
                assert!(!valid, "{ttl:?} must be accepted: {err}");
                assert!(
                    err.to_string().contains("less than 1 second"),
                    "{ttl:?}: {err}"
                );
            }
        }
    }
    assert_eq!(
        builds("group-validate-builds"),
        0,
        "no queue is built early"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_get_starts_queues_and_is_idempotent() {
    let group = group(Duration::ZERO, limited_options("group-get-builds"));
    let one = group.get("one", &[]).await.expect("get one");
    assert!(is_running(&one), "get starts the queue");
    let two = group.get("two", &[]).await.expect("get two");
    assert!(is_running(&two));
    assert!(!Arc::ptr_eq(&one, &two));
    assert_eq!(builds("group-get-builds"), 2);

    one.put(Noop::new("group-get-1")).await.expect("put");
    two.put(Noop::new("group-get-2")).await.expect("put");
    two.put(Noop::new("group-get-3")).await.expect("put");
    wait_complete(&one).await;
    wait_complete(&two).await;
    assert_eq!((result_count(&one).await, result_count(&two).await), (1, 2));

    // Getting again returns the same queues; options are ignored for an existing queue.
    let again = group.get("one", &[]).await.expect("get one again");
    assert!(Arc::ptr_eq(&again, &one));
    let other: Arc<dyn QueueOptions> = Arc::new(serializable_options("group-get-ignored"));
    let again = group.get("two", &[other]).await.expect("get two again");
    assert!(Arc::ptr_eq(&again, &two));
    assert!(
        again.as_retryable().is_none(),
        "not rebuilt with the options"
    );
    assert_eq!(builds("group-get-ignored"), 0);
    assert_eq!(builds("group-get-builds"), 2);
    assert_eq!((result_count(&one).await, result_count(&two).await), (1, 2));
    assert_eq!(group.len(), 2);
    group.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_concurrent_gets_share_one_queue() {
    let group = group(Duration::ZERO, limited_options("group-race-builds"));
    let mut gets = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let group = group.clone();
        gets.spawn(async move { group.get("raced", &[]).await });
    }
    let mut queues = Vec::new();
    while let Some(got) = gets.join_next().await {
        queues.push(got.expect("joined").expect("get"));
    }
    let first = &queues[0];
    assert!(
        queues.iter().all(|queue| Arc::ptr_eq(queue, first)),
        "every caller gets the one cached queue"
    );
    assert!(is_running(first));
    assert_eq!(group.queues().await, names(&["raced"]));
    assert!(builds("group-race-builds") >= 1);
    group.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_get_with_options_builds_the_queue_with_them() {
    let group = group(Duration::ZERO, limited_options("group-options-default"));
    let options: Arc<dyn QueueOptions> = Arc::new(serializable_options("group-options-given"));
    let queue = group
        .get("custom", &[options])
        .await
        .expect("get with options");
    assert!(is_running(&queue));
    assert!(queue.as_retryable().is_some(), "built by the given options");
    assert_eq!(builds("group-options-given"), 1);
    assert_eq!(builds("group-options-default"), 0);

    // The last options given win.
    let first: Arc<dyn QueueOptions> = Arc::new(serializable_options("group-options-first"));
    let last: Arc<dyn QueueOptions> = Arc::new(limited_options("group-options-last"));
    let queue = group
        .get("custom-last", &[first, last])
        .await
        .expect("get with options");
    assert!(queue.as_retryable().is_none());
    assert_eq!(builds("group-options-first"), 0);
    assert_eq!(builds("group-options-last"), 1);

    // The default serves the others.
    let plain = group.get("plain", &[]).await.expect("get");
    assert!(plain.as_retryable().is_none());
    assert_eq!(builds("group-options-default"), 1);
    assert_eq!(
        group.queues().await,
        names(&["custom", "custom-last", "plain"])
    );
    group.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_get_with_foreign_options_fails() {
    let group = group(Duration::ZERO, limited_options("group-foreign-default"));
    let foreign_builds = Arc::new(AtomicUsize::new(0));
    let foreign: Arc<dyn QueueOptions> = Arc::new(ForeignOptions {
        builds: foreign_builds.clone(),
    });
    let err = group
        .get("foreign", &[foreign])
        .await
        .expect_err("foreign options are refused");
    assert!(err.to_string().contains("LocalGroupQueueOptions"), "{err}");
    assert!(group.is_empty());
    assert!(group.queues().await.is_empty());
    assert_eq!(foreign_builds.load(Ordering::SeqCst), 0);
    assert_eq!(builds("group-foreign-default"), 0);
    group.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_put_rejects_an_existing_id() {
    let group = group(Duration::ZERO, limited_options("group-put-builds"));
    let one = group.get("one", &[]).await.expect("get");
    let rival: Arc<dyn Queue> = amboy::new_local_limited_size(1, 8);
    let err = group
        .put("one", rival.clone())
        .await
        .expect_err("cannot add a queue under an existing name");
    assert!(err.to_string().contains("already"), "{err}");
    assert!(Arc::ptr_eq(
        &group.get("one", &[]).await.expect("get"),
        &one
    ));

    let three: Arc<dyn Queue> = amboy::new_local_limited_size(1, 8);
    group.put("three", three.clone()).await.expect("put three");
    assert!(!three.info().started, "put does not start the queue");
    let four: Arc<dyn Queue> = amboy::new_local_limited_size(1, 8);
    group.put("four", four.clone()).await.expect("put four");
    assert_eq!(builds("group-put-builds"), 1, "put queues are not built");
    three.start().await.expect("start");
    four.start().await.expect("start");

    three.put(Noop::new("group-put-1")).await.expect("put");
    four.put(Noop::new("group-put-2")).await.expect("put");
    four.put(Noop::new("group-put-3")).await.expect("put");
    wait_complete(&three).await;
    wait_complete(&four).await;

    let got_three = group.get("three", &[]).await.expect("get three");
    let got_four = group.get("four", &[]).await.expect("get four");
    assert!(Arc::ptr_eq(&got_three, &three) && Arc::ptr_eq(&got_four, &four));
    assert_eq!(
        (
            result_count(&got_three).await,
            result_count(&got_four).await
        ),
        (1, 2)
    );
    assert_eq!(group.queues().await, names(&["four", "one", "three"]));
    group.close().await.expect("close");
    assert_closed(&three, "closed group").await;
}

#[tokio::test(start_paused = true)]
async fn group_prune_by_hand_removes_complete_queues() {
    let group = group(Duration::ZERO, limited_options("group-prune-builds"));
    let five = group.get("five", &[]).await.expect("get");
    let six = group.get("six", &[]).await.expect("get");
    let waiting = group.get("waiting", &[]).await.expect("get");
    five.put(Noop::new("group-prune-1")).await.expect("put");
    six.put(Noop::new("group-prune-2")).await.expect("put");
    six.put(Noop::new("group-prune-3")).await.expect("put");
    waiting
        .put(Gated::new(
            Base::with_id("group-prune-gated"),
            "group-prune-gate",
        ))
        .await
        .expect("put");
    wait_complete(&five).await;
    wait_complete(&six).await;
    let (stats5, stats6) = (stats(&five).await, stats(&six).await);
    assert_eq!(
        (
            stats5.total,
            stats5.completed,
            stats5.running,
            stats5.pending
        ),
        (1, 1, 0, 0),
        "{stats5}"
    );
    assert_eq!(
        (
            stats6.total,
            stats6.completed,
            stats6.running,
            stats6.pending
        ),
        (2, 2, 0, 0),
        "{stats6}"
    );

    group.prune().await.expect("prune");
    assert_eq!(
        group.queues().await,
        names(&["waiting"]),
        "complete queues are pruned, the busy one stays"
    );
    assert_closed(&five, "pruned queue").await;
    assert_closed(&six, "pruned queue").await;
    assert!(is_running(&waiting));

    // Getting them again makes new, empty queues.
    let new_five = group.get("five", &[]).await.expect("get");
    assert!(!Arc::ptr_eq(&new_five, &five));
    assert_eq!(stats(&new_five).await.total, 0);
    assert!(is_running(&new_five));

    open_gate("group-prune-gate");
    wait_complete(&waiting).await;
    assert_eq!(counter("group-prune-gate").load(Ordering::SeqCst), 1);
    group.prune().await.expect("prune");
    assert!(group.is_empty());
    assert_closed(&waiting, "pruned queue").await;
    group.close().await.expect("close");
}

/// Waits (on virtual time) until the group holds exactly `expected`.
async fn wait_for_queues(group: &LocalQueueGroup, expected: &[&str]) {
    let expected = names(expected);
    timeout(PROMPTLY, async {
        while group.queues().await != expected {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the group never held exactly {expected:?}; it holds {:?}",
            group.cache().names()
        )
    });
}

#[tokio::test(start_paused = true)]
async fn group_prunes_in_the_background_after_its_ttl() {
    let group = group(Duration::from_secs(1), limited_options("group-ttl-builds"));
    let seven = group.get("seven", &[]).await.expect("get");
    let eight = group.get("eight", &[]).await.expect("get");
    let waiting = group.get("waiting", &[]).await.expect("get");
    seven.put(Noop::new("group-ttl-1")).await.expect("put");
    eight.put(Noop::new("group-ttl-2")).await.expect("put");
    eight.put(Noop::new("group-ttl-3")).await.expect("put");
    waiting
        .put(Gated::new(
            Base::with_id("group-ttl-gated"),
            "group-ttl-gate",
        ))
        .await
        .expect("put");
    wait_complete(&seven).await;
    wait_complete(&eight).await;
    assert_eq!(stats(&seven).await.completed, 1);
    assert_eq!(stats(&eight).await.completed, 2);

    // Used less than a second ago: a prune keeps them.
    group.prune().await.expect("prune");
    assert_eq!(group.len(), 3);

    // The background pruner removes the complete queues once the second is over.
    wait_for_queues(&group, &["waiting"]).await;
    assert_closed(&seven, "pruned queue").await;
    assert_closed(&eight, "pruned queue").await;
    assert!(is_running(&waiting), "a busy queue is never pruned");

    open_gate("group-ttl-gate");
    wait_complete(&waiting).await;
    wait_for_queues(&group, &[]).await;
    assert_closed(&waiting, "pruned queue").await;

    // Getting them again makes new, empty queues.
    let new_seven = group.get("seven", &[]).await.expect("get");
    assert!(!Arc::ptr_eq(&new_seven, &seven));
    assert_eq!(stats(&new_seven).await.total, 0);
    assert_eq!(builds("group-ttl-builds"), 4);
    group.close().await.expect("close");
}

#[tokio::test(start_paused = true)]
async fn group_background_prune_waits_for_a_retrying_job_in_a_serializable_queue() {
    const ATTEMPTS: u32 = 5;
    let group = group(
        Duration::from_secs(1),
        serializable_options("group-retry-builds"),
    );
    let queue = group.get("retrying", &[]).await.expect("get");
    assert!(queue.as_retryable().is_some());
    queue
        .put(Arc::new(AlwaysRetry {
            base: Base::with_id("group-retried")
                .with_retryable(true)
                .with_max_attempts(ATTEMPTS),
            counter: "group-retried".into(),
        }))
        .await
        .expect("put");
    queue
        .put(Noop::new("group-retry-other-1"))
        .await
        .expect("put");
    queue
        .put(Noop::new("group-retry-other-2"))
        .await
        .expect("put");
    wait_complete(&queue).await;

    assert_eq!(
        counter("group-retried").load(Ordering::SeqCst),
        ATTEMPTS as usize
    );
    let counts = stats(&queue).await;
    assert_eq!(
        (counts.completed, counts.total, counts.retrying),
        (ATTEMPTS as usize + 2, ATTEMPTS as usize + 2, 0),
        "every attempt and the other jobs completed: {counts}"
    );
    let retryable = queue.as_retryable().expect("retryable");
    let attempts = retryable
        .get_all_attempts("group-retried")
        .await
        .expect("attempts");
    assert_eq!(attempts.len(), ATTEMPTS as usize);

    wait_for_queues(&group, &[]).await;
    assert_closed(&queue, "pruned queue").await;
    assert_eq!(builds("group-retry-builds"), 1);
    group.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_queues_lists_every_name() {
    let group = group(Duration::ZERO, limited_options("group-names-builds"));
    assert!(group.queues().await.is_empty());
    for name in ["c", "a", "b"] {
        group.get(name, &[]).await.expect("get");
    }
    group
        .put("d", amboy::new_local_limited_size(1, 8))
        .await
        .expect("put");
    assert_eq!(group.queues().await, names(&["a", "b", "c", "d"]));
    assert_eq!(group.len(), 4);
    group.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_close_closes_every_queue() {
    let group = group(
        Duration::from_secs(1),
        limited_options("group-close-builds"),
    );
    let nine = group.get("nine", &[]).await.expect("get");
    let ten = group.get("ten", &[]).await.expect("get");
    let running = group.get("running", &[]).await.expect("get");
    nine.put(Noop::new("group-close-1")).await.expect("put");
    ten.put(Noop::new("group-close-2")).await.expect("put");
    ten.put(Noop::new("group-close-3")).await.expect("put");
    wait_complete(&nine).await;
    wait_complete(&ten).await;
    // A job that never finishes on its own: closing cancels it.
    let blocked: JobRef = Gated::new(Base::with_id("group-close-gated"), "group-close-gate");
    running.put(blocked.clone()).await.expect("put");
    timeout(PROMPTLY, async {
        while !blocked.status().in_progress {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the blocked job starts");

    timeout(PROMPTLY, group.close())
        .await
        .expect("closing does not hang")
        .expect("close");
    assert!(group.is_empty());
    assert!(group.queues().await.is_empty());
    for (name, queue) in [("nine", &nine), ("ten", &ten), ("running", &running)] {
        assert_closed(queue, name).await;
    }
    assert_eq!(counter("group-close-gate").load(Ordering::SeqCst), 0);
    match group.get("nine", &[]).await {
        Err(Error::Closed(_)) => {}
        other => panic!("get after close must fail as closed: {other:?}"),
    }
    assert_eq!(builds("group-close-builds"), 3);
}

// ---------------------------------------------------------------------------------------------
// Pruning racing `get` (issue 6, defect 5)
// ---------------------------------------------------------------------------------------------

/// A queue whose first `stats` (the prune judging it) fetches it from its cache and puts a job
/// before answering with the stats it read before the put: exactly the interleaving of a `get`
/// and `put` landing while a prune judges the queue.
struct Racing {
    inner: Arc<dyn Queue>,
    cache: Mutex<std::sync::Weak<GroupCache>>,
    raced: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl Queue for Racing {
    fn id(&self) -> &str {
        self.inner.id()
    }

    async fn put(&self, job: JobRef) -> amboy::Result<()> {
        self.inner.put(job).await
    }

    async fn put_many(&self, jobs: Vec<JobRef>) -> amboy::Result<()> {
        self.inner.put_many(jobs).await
    }

    async fn get(&self, id: &str) -> amboy::Result<JobRef> {
        self.inner.get(id).await
    }

    async fn next(&self) -> amboy::Result<JobRef> {
        self.inner.next().await
    }

    fn info(&self) -> amboy::QueueInfo {
        self.inner.info()
    }

    async fn complete(&self, job: &JobRef) -> amboy::Result<()> {
        self.inner.complete(job).await
    }

    async fn save(&self, job: &JobRef) -> amboy::Result<()> {
        self.inner.save(job).await
    }

    async fn results(&self) -> amboy::JobStream {
        self.inner.results().await
    }

    async fn job_info(&self) -> amboy::JobInfoStream {
        self.inner.job_info().await
    }

    async fn stats(&self) -> amboy::Result<QueueStats> {
        let stats = self.inner.stats().await?;
        let cache = self.cache.lock().unwrap().upgrade();
        if !self.raced.swap(true, Ordering::SeqCst)
            && let Some(cache) = cache
        {
            let fetched = cache.get("racing").expect("still cached while judged");
            fetched
                .put(Noop::new("put-while-judged"))
                .await
                .expect("the queue is open");
        }
        Ok(stats)
    }

    fn runner(&self) -> Option<Arc<dyn Runner>> {
        self.inner.runner()
    }

    fn set_runner(&self, runner: Arc<dyn Runner>) -> amboy::Result<()> {
        self.inner.set_runner(runner)
    }

    async fn start(&self) -> amboy::Result<()> {
        self.inner.start().await
    }

    async fn close(&self) {
        self.inner.close().await
    }
}

/// Prune used to pick the expired queues, let go of the cache's lock, read their stats and
/// close the complete ones without looking at their last access again: a `get` and `put` in
/// that gap went into a queue about to be closed, and the job was lost. A queue fetched while
/// it is judged is kept now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_prune_keeps_a_queue_fetched_while_it_was_judged() {
    let cache = Arc::new(GroupCache::new(Duration::ZERO));
    let inner: Arc<dyn Queue> = amboy::new_local_limited_size(1, 8);
    inner.start().await.unwrap();
    let racing = Arc::new(Racing {
        inner,
        cache: Mutex::new(Arc::downgrade(&cache)),
        raced: Default::default(),
    });
    cache.set("racing", racing.clone(), Duration::ZERO).unwrap();

    cache.prune().await.expect("prune");
    assert_eq!(
        cache.names(),
        ["racing"],
        "the queue fetched meanwhile stays"
    );
    assert!(racing.info().started);
    let outcome = timeout(PROMPTLY, amboy::wait_job(&*racing, "put-while-judged"))
        .await
        .expect("the job put meanwhile runs")
        .unwrap();
    assert_eq!(outcome, amboy::JobOutcome::Completed);
    // The job's status says completed a moment before the queue's counts do: wait for the
    // counts, which are what pruning judges.
    timeout(PROMPTLY, amboy::wait(&*racing))
        .await
        .expect("the queue's stats complete")
        .unwrap();

    // Untouched and complete, the next prune takes it.
    cache.prune().await.expect("prune");
    assert!(cache.is_empty());
    assert_closed(&(racing as Arc<dyn Queue>), "pruned queue").await;
}

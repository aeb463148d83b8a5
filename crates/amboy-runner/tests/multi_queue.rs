//! The pool serving several queues (amboy's historical `pool.Group`): every queue is served,
//! busy queues share the workers fairly, and an idle or closed queue holds up nobody.

mod support;

use std::sync::Arc;

use amboy_core::{Error, Queue, Runner};
use amboy_queue_local::LimitedSizeQueue;
use amboy_runner::MultiQueuePool;
use support::*;
use tokio::time::timeout;

/// `n` queues served by `pool`, started.
async fn queues_with(pool: &Arc<MultiQueuePool>, n: usize) -> Vec<Arc<LimitedSizeQueue>> {
    let mut queues = Vec::new();
    for _ in 0..n {
        let queue = LimitedSizeQueue::new(128);
        queue.set_runner(pool.clone()).unwrap();
        queues.push(queue);
    }
    for queue in &queues {
        queue.start().await.unwrap();
    }
    assert!(pool.started());
    assert_eq!(pool.queue_count(), n);
    queues
}

async fn close_all(pool: &MultiQueuePool, queues: &[Arc<LimitedSizeQueue>]) {
    pool.close().await;
    for queue in queues {
        queue.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_every_queue_and_runs_every_job_once() {
    let key = "multi-every-queue";
    let pool = MultiQueuePool::new(3);
    let queues = queues_with(&pool, 3).await;
    let mut jobs = Vec::new();
    for (q, queue) in queues.iter().enumerate() {
        jobs.push(put_counted(queue, key, &format!("q{q}"), 40).await);
    }
    for (queue, jobs) in queues.iter().zip(&jobs) {
        wait_all(queue).await;
        assert_ran_once(key, jobs);
        let stats = queue.stats().await.unwrap();
        assert_eq!((stats.total, stats.completed), (40, 40));
    }
    close_all(&pool, &queues).await;
}

/// Two queues full of jobs, one worker: the runs alternate between them, so that each gets
/// half of any stretch of runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_queues_share_the_workers_fairly() {
    let key = "multi-fair";
    let pool = MultiQueuePool::new(1);
    let queues = queues_with(&pool, 2).await;
    // Fill both queues while the pool is closed, then let it loose on them.
    pool.close().await;
    put_counted(&queues[0], key, "a", 30).await;
    put_counted(&queues[1], key, "b", 30).await;
    pool.start().await.unwrap();
    for queue in &queues {
        wait_all(queue).await;
    }

    let order = observed(key).order();
    assert_eq!(order.len(), 60);
    for window in [&order[..20], &order[20..40], &order[..40]] {
        let from_a = window.iter().filter(|id| id.starts_with("a-")).count();
        let half = window.len() / 2;
        assert!(
            from_a.abs_diff(half) <= 2,
            "{from_a} of {} runs from the first queue: {order:?}",
            window.len()
        );
    }
    // Neither queue waits long for its turn.
    let longest_streak = order
        .chunk_by(|x, y| x.as_bytes()[0] == y.as_bytes()[0])
        .map(<[String]>::len)
        .max()
        .unwrap();
    assert!(longest_streak <= 3, "{order:?}");
    close_all(&pool, &queues).await;
}

/// A worker waiting for a job from an empty queue still takes jobs from the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_queue_holds_up_nobody() {
    let key = "multi-idle";
    let pool = MultiQueuePool::new(1);
    let queues = queues_with(&pool, 3).await;
    // The first and last queues get nothing; the worker is waiting on all three.
    run_counted(&queues[1], key, "busy", 20).await;
    // And the other way round: jobs in the last queue run too.
    run_counted(&queues[2], key, "late", 5).await;
    close_all(&pool, &queues).await;
}

/// A queue that closes is skipped once the pool restarts; the others go on being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_queue_is_skipped() {
    let key = "multi-closed";
    let pool = MultiQueuePool::new(2);
    let queues = queues_with(&pool, 2).await;
    queues[0].close().await;
    assert!(
        !pool.started(),
        "a queue closes its runner, here the whole pool"
    );

    pool.start().await.expect("the other queue is alive");
    run_counted(&queues[1], key, "after", 20).await;
    close_all(&pool, &queues).await;
}

/// The workers run jobs of different queues at once, and closing the pool cancels them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_jobs_of_several_queues_at_once_and_close_cancels_them() {
    let key = "multi-concurrent";
    let pool = MultiQueuePool::new(2);
    let queues = queues_with(&pool, 2).await;
    let a = job(key, "a-hung", Behaviour::Hang);
    let b = job(key, "b-hung", Behaviour::Hang);
    put(&queues[0], a.clone()).await;
    put(&queues[1], b.clone()).await;
    observed(key).wait_started(2).await;
    assert!(a.status().in_progress && b.status().in_progress);

    timeout(SOON, pool.close())
        .await
        .expect("close finishes once the jobs are cancelled");
    for job in [&a, &b] {
        assert!(job.status().completed, "{}", job.id());
        assert_eq!(error_of(job).as_deref(), Some(ABORTED));
    }
    close_all(&pool, &queues).await;
}

/// Decision 2 holds here too: a panicking job is completed and its worker carries on, with the
/// jobs of every queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_job_is_completed_and_the_worker_carries_on() {
    let key = "multi-panic";
    let pool = MultiQueuePool::new(1);
    let queues = queues_with(&pool, 2).await;
    let boom = job(key, "boom", Behaviour::Panic);
    put(&queues[0], boom.clone()).await;
    wait_job(&queues[0], "boom").await;
    assert!(error_of(&boom).unwrap().starts_with("job panicked:"));
    run_counted(&queues[0], key, "a", 5).await;
    run_counted(&queues[1], key, "b", 5).await;
    close_all(&pool, &queues).await;
}

#[tokio::test]
async fn queues_are_added_before_starting_each_once() {
    let pool = MultiQueuePool::new(2);
    assert!(pool.start().await.is_err(), "no queue to serve");

    let first = LimitedSizeQueue::new(4);
    pool.add_queue(first.clone()).unwrap();
    pool.add_queue(first.clone()).unwrap();
    pool.set_queue(first.clone()).unwrap();
    assert_eq!(pool.queue_count(), 1, "a queue is served once");
    let second = LimitedSizeQueue::new(4);
    pool.set_queue(second.clone()).unwrap();
    assert_eq!(pool.queue_count(), 2, "set_queue adds a queue");

    pool.start().await.unwrap();
    let err = pool.add_queue(LimitedSizeQueue::new(4)).unwrap_err();
    assert!(matches!(err, Error::AlreadyStarted(_)), "{err:?}");
    assert!(pool.set_queue(LimitedSizeQueue::new(4)).is_err());
    assert_eq!(pool.queue_count(), 2);
    pool.close().await;

    // Closed, it takes more queues.
    let third = LimitedSizeQueue::new(4);
    pool.add_queue(third.clone()).unwrap();
    assert_eq!(pool.queue_count(), 3);

    // Dropped queues are forgotten; with none left, the pool cannot start.
    drop((first, second, third));
    assert!(pool.start().await.is_err(), "every queue was dropped");
    assert!(!pool.started());
    assert_eq!(pool.queue_count(), 0);
}

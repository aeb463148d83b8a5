//! End-to-end behaviour through the facade: races, panics, scopes, deadlines and bad input.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use amboy::prelude::*;
use amboy::registry::{JobInterchange, decode_job, encode_job};
use amboy::{Base, JobRef};
use amboy_tests::cases::{self, LIMITED_SIZE, LOCAL_WORKERS};
use amboy_tests::jobs::{Count, Gated, Noop, Panics, counter, open_gate};
use chrono::{TimeDelta, Utc};
use tokio::task::JoinSet;
use tokio::time::timeout;

const PROMPTLY: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_a_hundred_concurrent_next_calls_gets_the_job() {
    let queue = cases::start_idle(LIMITED_SIZE, 1).await.unwrap();
    queue.put(Noop::new("race-the-only-job")).await.unwrap();
    let mut calls = JoinSet::new();
    for _ in 0..100 {
        let queue = queue.clone();
        calls.spawn(async move {
            timeout(Duration::from_millis(300), queue.next())
                .await
                .ok()
                .map(|result| result.expect("the queue is open"))
        });
    }
    let mut winners = Vec::new();
    while let Some(call) = calls.join_next().await {
        if let Some(job) = call.unwrap() {
            winners.push(job);
        }
    }
    assert_eq!(winners.len(), 1, "exactly one caller dispatches the job");
    let status = winners[0].status();
    assert!(status.in_progress);
    assert_eq!(status.owner.as_deref(), Some(queue.id()));
    assert_eq!(status.modification_count, 1, "locked once");
    queue.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_job_completes_with_its_panic_and_the_pool_carries_on() {
    let queue = cases::start(LIMITED_SIZE, LOCAL_WORKERS, 1).await.unwrap();
    queue
        .put(Arc::new(Panics {
            base: Base::with_id("e2e-panics"),
        }))
        .await
        .unwrap();
    assert!(
        timeout(PROMPTLY, amboy::wait_job(&*queue, "e2e-panics"))
            .await
            .unwrap()
            .unwrap()
            .is_completed()
    );
    let panicked = queue.get("e2e-panics").await.unwrap();
    let status = panicked.status();
    assert!(status.completed && !status.in_progress);
    assert_eq!(
        panicked.error().unwrap().message(),
        "job panicked: conformance job e2e-panics panics on purpose"
    );

    // The single worker survived: it runs the next hundred jobs.
    for n in 0..100 {
        queue
            .put(Count::new(
                format!("e2e-after-panic-{n}"),
                "e2e-after-panic",
            ))
            .await
            .unwrap();
    }
    timeout(PROMPTLY, amboy::wait(&*queue))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(counter("e2e-after-panic").load(Ordering::SeqCst), 100);
    assert_eq!(queue.stats().await.unwrap().completed, 101);
    queue.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_blocked_by_a_scope_runs_as_soon_as_the_scope_is_released() {
    let queue = amboy::new_local_limited_size(2, 16);
    queue.start().await.unwrap();
    let holder: JobRef = Gated::new(
        Base::with_id("e2e-scope-holder").with_scopes(["e2e-scope"]),
        "e2e-scope-gate",
    );
    queue.put(holder.clone()).await.unwrap();
    timeout(PROMPTLY, async {
        while !holder.status().in_progress {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the holder starts");

    let waiter: JobRef = Arc::new(Count {
        base: Base::with_id("e2e-scope-waiter").with_scopes(["e2e-scope"]),
        counter: "e2e-scope-waiter".into(),
    });
    queue.put(waiter.clone()).await.unwrap();
    // The second worker is free, but the scope is not: the waiter is parked beside the scope,
    // pending and unlocked, until the scope is released.
    timeout(PROMPTLY, async {
        while queue.footprint().parked == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the waiter is parked beside the scope");
    let status = waiter.status();
    assert!(!status.in_progress && !status.completed, "{status:?}");
    assert_eq!(
        status.modification_count, 0,
        "a blocked job is never locked (amboy's bug 1)"
    );
    assert_eq!(counter("e2e-scope-waiter").load(Ordering::SeqCst), 0);

    open_gate("e2e-scope-gate");
    // Runs right after the holder, not after the 10-minute lock timeout.
    assert!(
        timeout(PROMPTLY, amboy::wait_job(&*queue, "e2e-scope-waiter"))
            .await
            .unwrap()
            .unwrap()
            .is_completed()
    );
    assert_eq!(counter("e2e-scope-waiter").load(Ordering::SeqCst), 1);
    assert!(
        holder.time_info().end <= waiter.time_info().start,
        "the scope kept them apart"
    );
    queue.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_past_its_dispatch_by_is_dropped_counted_and_waiting_ends() {
    let queue = cases::start(LIMITED_SIZE, LOCAL_WORKERS, 1).await.unwrap();
    let late = Count {
        base: Base::with_id("e2e-late").with_dispatch_by(Utc::now() - TimeDelta::milliseconds(1)),
        counter: "e2e-late".into(),
    };
    queue.put(Arc::new(late)).await.unwrap();
    timeout(PROMPTLY, amboy::wait(&*queue))
        .await
        .unwrap()
        .unwrap();
    let stats = queue.stats().await.unwrap();
    assert_eq!(
        (stats.total, stats.expired, stats.completed, stats.running),
        (1, 1, 0, 0),
        "{stats}"
    );
    assert!(stats.is_complete());
    assert_eq!(
        counter("e2e-late").load(Ordering::SeqCst),
        0,
        "the job never ran"
    );
    let late = queue.get("e2e-late").await.expect("retained, set aside");
    assert!(late.status().expired, "{:?}", late.status());
    assert_eq!(
        amboy::wait_job(&*queue, "e2e-late").await.unwrap(),
        amboy::JobOutcome::Expired
    );
    queue.close().await;
}

#[test]
fn bad_input_errors_name_the_job_and_the_reason() {
    let job = Noop::new("e2e-bad-input");
    let json = encode_job(&*job).unwrap();

    let mut unknown = JobInterchange::from_json(&json).unwrap();
    unknown.type_name = "e2e-never-registered".into();
    let err = decode_job(&unknown.to_json().unwrap()).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("'e2e-bad-input'")
            && message.contains("'e2e-never-registered', which is not registered"),
        "{message}"
    );

    let mut mismatch = JobInterchange::from_json(&json).unwrap();
    mismatch.version = 3;
    let message = decode_job(&mismatch.to_json().unwrap())
        .unwrap_err()
        .to_string();
    assert_eq!(
        message,
        "job 'e2e-bad-input' of type 'conformance-noop' was stored at version 3, but the registered version is 0"
    );

    let malformed = json.replacen("\"job\":{", "\"job\":[", 1);
    let message = decode_job(&malformed).unwrap_err().to_string();
    assert!(
        message.starts_with("stored job 'e2e-bad-input' is malformed: "),
        "{message}"
    );

    // Errors convert to the queue error type with the same message.
    let err: amboy::Error = decode_job(&malformed).unwrap_err().into();
    assert!(
        err.to_string()
            .starts_with("stored job 'e2e-bad-input' is malformed: ")
    );
}

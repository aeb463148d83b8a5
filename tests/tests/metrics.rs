//! The job metrics, scraped from the REST service's `GET /metrics`: one test in this binary,
//! since it installs the process's recorder.

use std::time::Duration;

use amboy::local::LimitedSizeSerializableQueue;
use amboy::prelude::*;
use amboy::rest::RestService;
use amboy::retry::BasicRetryHandler;
use amboy::runner::LocalWorkers;
use amboy::{Base, RetryHandlerOptions};
use amboy_tests::jobs::{Noop, Panics, RetryOnce};
use chrono::{TimeDelta, Utc};

/// The value of the series named exactly `series` in a Prometheus text.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_put_run_failed_retried_and_expired_are_counted() {
    let handle = amboy::rest::install_prometheus().expect("the first recorder");
    let queue = LimitedSizeSerializableQueue::new(64);
    queue.set_runner(LocalWorkers::new(2)).expect("a runner");
    queue
        .set_retry_handler(BasicRetryHandler::new(RetryHandlerOptions::default()).expect("valid"))
        .expect("a handler");
    for n in 0..3 {
        queue.put(Noop::new(format!("ok-{n}"))).await.expect("put");
    }
    queue
        .put(std::sync::Arc::new(Panics {
            base: Base::with_id("boom"),
        }))
        .await
        .expect("put");
    queue
        .put(RetryOnce::new(Base::with_id("again"), "metrics-retry"))
        .await
        .expect("put");
    let late = Noop {
        base: Base::with_id("late").with_dispatch_by(Utc::now() - TimeDelta::hours(1)),
    };
    queue.put(std::sync::Arc::new(late)).await.expect("put");
    queue.start().await.expect("start");
    tokio::time::timeout(
        Duration::from_secs(10),
        amboy::wait_interval(&*queue, Duration::from_millis(5)),
    )
    .await
    .expect("every job finished")
    .expect("stats");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let url = format!(
        "http://{}/metrics",
        listener.local_addr().expect("an address")
    );
    tokio::spawn(
        RestService::new()
            .queue(queue.clone())
            .metrics(handle)
            .serve(listener, std::future::pending()),
    );
    let response = reqwest::get(&url).await.expect("an answer");
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"),
        "{response:?}"
    );
    let text = response.text().await.expect("a body");
    let series = |name: &str, job_type: &str| {
        value(
            &text,
            &format!("{name}{{queue=\"queue.local.fixed.serializable\",type=\"{job_type}\"}}"),
        )
    };
    assert_eq!(
        series("amboy_jobs_put_total", "conformance-noop"),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        series("amboy_jobs_started_total", "conformance-noop"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        series("amboy_jobs_completed_total", "conformance-noop"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        series("amboy_jobs_expired_total", "conformance-noop"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        series("amboy_jobs_failed_total", "conformance-panics"),
        Some(1.0),
        "{text}"
    );
    // The first attempt failed asking to retry, the second completed.
    assert_eq!(
        series("amboy_jobs_retried_total", "conformance-retry-once"),
        Some(1.0),
        "{text}"
    );
    // A next attempt is counted as retried, not put.
    assert_eq!(
        series("amboy_jobs_put_total", "conformance-retry-once"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        series("amboy_jobs_failed_total", "conformance-retry-once"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        series("amboy_jobs_completed_total", "conformance-retry-once"),
        Some(1.0),
        "{text}"
    );
    for histogram in ["amboy_job_run_seconds", "amboy_job_lag_seconds"] {
        assert_eq!(
            value(
                &text,
                &format!(
                    "{histogram}_count{{queue=\"queue.local.fixed.serializable\",type=\"conformance-noop\"}}"
                )
            ),
            Some(3.0),
            "{histogram}: {text}"
        );
    }
    let depth = |state: &str| {
        value(
            &text,
            &format!(
                "amboy_queue_jobs{{queue=\"queue.local.fixed.serializable\",state=\"{state}\"}}"
            ),
        )
    };
    assert_eq!(depth("pending"), Some(0.0), "{text}");
    assert_eq!(depth("total"), Some(7.0), "{text}");
    queue.close().await;
}

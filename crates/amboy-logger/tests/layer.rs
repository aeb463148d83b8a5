//! The layer through its public API: what reaches the sink, what is filtered, dropped and
//! counted, and what flush and close guarantee.

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use amboy_core::Queue;
use amboy_logger::{LogRecord, QueueLayer, SendMessageJob};
use amboy_queue_local::LimitedSizeQueue;
use amboy_runner::LocalWorkers;
use futures::StreamExt;
use tracing::Level;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::prelude::*;

use support::{Collect, report_counter};

/// Bounds every wait of these tests: a hang fails instead of stalling the suite.
const LIMIT: Duration = Duration::from_secs(30);

async fn bounded<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(LIMIT, future)
        .await
        .expect("finished in time")
}

#[tokio::test]
async fn records_reach_the_sink_with_level_target_message_and_fields() {
    let sink = Collect::new();
    let (layer, logger) = QueueLayer::new(sink.clone(), 1, 16).await.unwrap();
    let _default = tracing_subscriber::registry().with(layer).set_default();

    let line = {
        let request = tracing::info_span!("request", id = 7);
        let _request = request.enter();
        let charge = tracing::info_span!("charge");
        let _charge = charge.enter();
        let line = line!() + 1;
        tracing::warn!(
            target: "app::billing",
            user = "ada",
            cents = 1250_u64,
            delta = -3_i64,
            ratio = 0.5,
            retried = true,
            card = ?Some("visa"),
            "charged {} times",
            2
        );
        line
    };
    bounded(logger.flush()).await.unwrap();

    let records = sink.records();
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record.level, Level::WARN);
    assert_eq!(record.target, "app::billing");
    assert_eq!(record.message, "charged 2 times");
    assert_eq!(record.fields["user"], "ada");
    assert_eq!(record.fields["cents"], 1250);
    assert_eq!(record.fields["delta"], -3);
    assert_eq!(record.fields["ratio"], 0.5);
    assert_eq!(record.fields["retried"], true);
    assert_eq!(record.fields["card"], "Some(\"visa\")");
    assert!(!record.fields.contains_key("message"));
    assert_eq!(record.spans, ["request", "charge"]);
    assert_eq!(record.module_path.as_deref(), Some(module_path!()));
    assert_eq!(record.file.as_deref(), Some(file!()));
    assert_eq!(record.line, Some(line));
    let age = chrono::Utc::now() - record.timestamp;
    assert!(age >= chrono::TimeDelta::zero() && age < chrono::TimeDelta::seconds(60));

    // Records cross process boundaries as JSON and come back equal.
    let json = serde_json::to_string(record).unwrap();
    assert_eq!(&serde_json::from_str::<LogRecord>(&json).unwrap(), record);

    let stats = logger.stats();
    assert_eq!((stats.handed_off, stats.delivered), (1, 1));
    assert_eq!(
        (stats.dropped, stats.put_failures, stats.send_failures),
        (0, 0, 0)
    );
}

#[tokio::test]
async fn the_level_filter_drops_lower_levels() {
    let sink = Collect::new();
    let (layer, logger) = QueueLayer::builder(sink.clone())
        .level(LevelFilter::WARN)
        .build_local(2, 16)
        .await
        .unwrap();
    assert_eq!(layer.level(), LevelFilter::WARN);
    let _default = tracing_subscriber::registry().with(layer).set_default();

    tracing::trace!("trace");
    tracing::debug!("debug");
    tracing::info!("info");
    tracing::warn!("warn");
    tracing::error!("error");
    bounded(logger.flush()).await.unwrap();

    let mut messages = sink.messages();
    messages.sort();
    assert_eq!(messages, ["error", "warn"]);
    let stats = logger.stats();
    assert_eq!(
        (stats.handed_off, stats.delivered, stats.dropped),
        (2, 2, 0)
    );
}

#[tokio::test]
async fn an_off_layer_sends_nothing() {
    let sink = Collect::new();
    let (layer, logger) = QueueLayer::builder(sink.clone())
        .level(LevelFilter::OFF)
        .build_local(1, 4)
        .await
        .unwrap();
    let _default = tracing_subscriber::registry().with(layer).set_default();

    tracing::error!("error");
    bounded(logger.close()).await.unwrap();

    assert!(sink.records().is_empty());
    assert_eq!(logger.stats().handed_off, 0);
}

#[tokio::test]
async fn a_failing_sink_counts_send_failures_and_delivery_goes_on() {
    let sink = Arc::new(Collect {
        fail_on: Some("fail"),
        ..Collect::default()
    });
    let (reports, report) = report_counter();
    let (layer, logger) = QueueLayer::builder(sink.clone())
        .report_interval(Duration::from_secs(3600))
        .report_to(report)
        .build_local(1, 16)
        .await
        .unwrap();
    let _default = tracing_subscriber::registry().with(layer).set_default();

    tracing::info!("one");
    tracing::info!("fail two");
    tracing::info!("three");
    tracing::info!("fail four");
    tracing::info!("five");
    bounded(logger.flush()).await.unwrap();

    assert_eq!(sink.messages(), ["one", "three", "five"]);
    let stats = logger.stats();
    assert_eq!(
        (stats.handed_off, stats.delivered, stats.send_failures),
        (5, 3, 2)
    );
    // Both failures are reported in one line: the second falls within the interval.
    assert_eq!(reports.load(Ordering::SeqCst), 1);

    // The sink's error is the job's error.
    let mut errors: Vec<String> = logger
        .queue()
        .results()
        .await
        .filter_map(|job| async move { job.unwrap().error().map(|e| e.message().to_owned()) })
        .collect()
        .await;
    errors.sort();
    assert_eq!(errors, ["refused 'fail four'", "refused 'fail two'"]);
}

#[tokio::test]
async fn a_sink_that_panics_counts_a_send_failure_and_flush_returns() {
    let sink = Arc::new(Collect {
        panic_on: Some("boom"),
        ..Collect::default()
    });
    let (layer, logger) = QueueLayer::builder(sink.clone())
        .report_to(|_| {})
        .build_local(1, 16)
        .await
        .unwrap();
    let _default = tracing_subscriber::registry().with(layer).set_default();

    tracing::info!("before");
    tracing::info!("boom");
    tracing::info!("after");
    bounded(logger.flush()).await.unwrap();

    assert_eq!(sink.messages(), ["before", "after"]);
    let stats = logger.stats();
    assert_eq!((stats.delivered, stats.send_failures), (2, 1));
}

#[tokio::test]
async fn a_full_hand_off_drops_and_counts_without_blocking() {
    let sink = Collect::new();
    let (layer, logger) = QueueLayer::builder(sink.clone())
        .handoff_capacity(4)
        .build_local(1, 16)
        .await
        .unwrap();
    let _default = tracing_subscriber::registry().with(layer).set_default();

    // On this single-threaded runtime the forwarding task cannot run until the test awaits:
    // the first 4 events fill the hand-off, and the layer must drop the rest rather than wait
    // (waiting here would never end).
    for i in 0..10 {
        tracing::info!("event {i}");
    }
    let stats = logger.stats();
    assert_eq!((stats.handed_off, stats.dropped), (4, 6));

    bounded(logger.flush()).await.unwrap();
    assert_eq!(
        sink.messages(),
        ["event 0", "event 1", "event 2", "event 3"]
    );
    assert_eq!(logger.stats().delivered, 4);
}

#[tokio::test]
async fn amboy_events_and_the_loggers_own_events_are_not_enqueued() {
    // The sink logs while sending and flushing; the queue and the runner emit amboy's spans
    // and events while they run the jobs. None of it may come back as a record, or each
    // record would make another.
    let sink = Arc::new(Collect {
        chatty: true,
        ..Collect::default()
    });
    let (layer, logger) = QueueLayer::new(sink.clone(), 2, 16).await.unwrap();
    let _default = tracing_subscriber::registry().with(layer).set_default();

    tracing::info!(target: "amboy", "facade");
    tracing::info!(target: "amboy_core::runner", "core");
    tracing::warn!(target: "amboy_queue_local::queue", "queue");
    tracing::info!(target: "app", "user event");
    bounded(logger.flush()).await.unwrap();
    bounded(logger.flush()).await.unwrap();

    assert_eq!(sink.messages(), ["user event"]);
    let stats = logger.stats();
    assert_eq!(
        (stats.handed_off, stats.delivered, stats.dropped),
        (1, 1, 0)
    );
}

#[tokio::test]
async fn flush_delivers_everything_logged_before_it_then_flushes_the_sink_once() {
    let sink = Collect::new();
    let (layer, logger) = QueueLayer::new(sink.clone(), 4, 8).await.unwrap();
    let _default = tracing_subscriber::registry().with(layer).set_default();

    for i in 0..100 {
        tracing::info!(i, "event");
    }
    bounded(logger.flush()).await.unwrap();

    assert_eq!(sink.records().len(), 100);
    assert_eq!(sink.flushes(), [100], "one sink flush, after every record");
    let stats = logger.stats();
    assert_eq!((stats.handed_off, stats.delivered), (100, 100));

    // A second flush waits for the records logged since.
    tracing::info!("later");
    bounded(logger.flush()).await.unwrap();
    assert_eq!(sink.flushes(), [100, 101]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_delivers_everything_logged_before_it_across_threads() {
    let sink = Collect::new();
    let (layer, logger) = QueueLayer::new(sink.clone(), 4, 8).await.unwrap();
    let subscriber = tracing_subscriber::registry().with(layer);

    // Logged from several threads at once; the workers run on the runtime's threads.
    let dispatch = tracing::Dispatch::new(subscriber);
    std::thread::scope(|threads| {
        for thread in 0..4 {
            let dispatch = dispatch.clone();
            threads.spawn(move || {
                tracing::dispatcher::with_default(&dispatch, || {
                    for i in 0..50 {
                        tracing::info!(thread, i, "event");
                    }
                })
            });
        }
    });
    bounded(logger.flush()).await.unwrap();

    assert_eq!(sink.records().len(), 200);
    assert_eq!(sink.flushes(), [200]);
    assert_eq!(logger.stats().delivered, 200);
}

#[tokio::test]
async fn close_then_log_drops_and_counts() {
    let sink = Collect::new();
    let (layer, logger) = QueueLayer::new(sink.clone(), 2, 16).await.unwrap();
    let _default = tracing_subscriber::registry().with(layer).set_default();

    tracing::info!("one");
    tracing::info!("two");
    tracing::info!("three");
    assert!(!logger.is_closed());
    bounded(logger.close()).await.unwrap();
    assert!(logger.is_closed());

    let mut messages = sink.messages();
    messages.sort();
    assert_eq!(messages, ["one", "three", "two"]);
    assert_eq!(sink.flushes(), [3]);

    tracing::info!("after close");
    tracing::info!("after close");
    let stats = logger.stats();
    assert_eq!(
        (stats.handed_off, stats.delivered, stats.dropped),
        (3, 3, 2)
    );
    assert_eq!(sink.records().len(), 3);

    // Closing again and flushing after close do nothing but flush the sink.
    bounded(logger.close()).await.unwrap();
    bounded(logger.flush()).await.unwrap();
    assert_eq!(sink.flushes(), [3, 3]);

    // The private queue is closed.
    let record = LogRecord::new(Level::INFO, "app", "late");
    let refused = logger
        .queue()
        .put(Arc::new(SendMessageJob::new(record, sink.clone())))
        .await
        .unwrap_err();
    assert!(refused.is_closed(), "{refused}");
}

#[tokio::test]
async fn one_worker_delivers_in_order() {
    let sink = Collect::new();
    // A queue smaller than the burst: the forwarding task waits for room, in order.
    let (layer, logger) = QueueLayer::new(sink.clone(), 1, 4).await.unwrap();
    let _default = tracing_subscriber::registry().with(layer).set_default();

    for i in 0..200 {
        tracing::info!("{i}");
    }
    bounded(logger.flush()).await.unwrap();

    let expected: Vec<String> = (0..200).map(|i| i.to_string()).collect();
    assert_eq!(sink.messages(), expected);
}

#[tokio::test]
async fn with_queue_uses_the_callers_queue_and_leaves_it_open() {
    let queue = LimitedSizeQueue::new(16);
    queue.set_runner(LocalWorkers::new(2)).unwrap();
    queue.start().await.unwrap();
    let sink = Collect::new();
    let (layer, logger) = QueueLayer::with_queue(queue.clone(), sink.clone());
    assert_eq!(logger.queue().id(), queue.id());
    let _default = tracing_subscriber::registry().with(layer).set_default();

    tracing::info!("one");
    tracing::info!("two");
    bounded(logger.close()).await.unwrap();

    assert_eq!(sink.records().len(), 2);
    let jobs: Vec<_> = queue
        .results()
        .await
        .map(|job| job.unwrap())
        .collect()
        .await;
    assert_eq!(jobs.len(), 2);
    for job in &jobs {
        assert!(job.id().starts_with("queued-message-"), "{}", job.id());
        assert_eq!(job.job_type().name, "send-grip-message");
        assert!(job.status().completed);
    }

    // The caller's queue is still open.
    let record = LogRecord::new(Level::INFO, "app", "direct");
    queue
        .put(Arc::new(SendMessageJob::new(record, sink.clone())))
        .await
        .unwrap();
    bounded(amboy_core::wait(&*queue)).await.unwrap();
    assert_eq!(sink.records().len(), 3);
    queue.close().await;
}

#[tokio::test]
async fn new_refuses_zero_workers_and_zero_capacity() {
    let no_workers = QueueLayer::new(Collect::new(), 0, 16).await.unwrap_err();
    assert!(no_workers.to_string().contains("worker"), "{no_workers}");
    let no_capacity = QueueLayer::new(Collect::new(), 1, 0).await.unwrap_err();
    assert!(
        no_capacity.to_string().contains("capacity"),
        "{no_capacity}"
    );
}

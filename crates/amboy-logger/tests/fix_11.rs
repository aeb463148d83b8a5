//! Fix 11: amboy's queue sender logged a failed put through itself, which put another job,
//! which failed, and so on without bound. Here a failed put is counted and reported, never
//! logged, and the layer never feeds itself.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use amboy_core::{
    Error, JobInfoStream, JobRef, JobStream, LOCK_TIMEOUT, Queue, QueueInfo, QueueStats, Result,
    Runner,
};
use amboy_logger::QueueLayer;
use amboy_queue_local::LimitedSizeQueue;
use amboy_runner::LocalWorkers;
use tracing_subscriber::prelude::*;

use support::{Collect, report_counter};

const LIMIT: Duration = Duration::from_secs(30);

/// A queue refusing every job, and logging each refusal, as amboy's sender did.
#[derive(Debug, Default)]
struct FailingQueue {
    puts: AtomicUsize,
}

#[async_trait::async_trait]
impl Queue for FailingQueue {
    fn id(&self) -> &str {
        "failing-queue"
    }

    async fn put(&self, job: JobRef) -> Result<()> {
        self.puts.fetch_add(1, Ordering::SeqCst);
        // Were this logged back into the queue, it would be put, fail and log again.
        tracing::error!(target: "failing_queue", job_id = job.id(), "refusing a job");
        Err(Error::invalid("this queue refuses every job"))
    }

    async fn put_many(&self, jobs: Vec<JobRef>) -> Result<()> {
        for job in jobs {
            self.put(job).await?;
        }
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<JobRef> {
        Err(Error::job_not_found(id))
    }

    async fn next(&self) -> Result<JobRef> {
        Err(Error::Closed("queue"))
    }

    fn info(&self) -> QueueInfo {
        QueueInfo {
            started: true,
            lock_timeout: LOCK_TIMEOUT,
        }
    }

    async fn complete(&self, job: &JobRef) -> Result<()> {
        Err(Error::job_not_found(job.id()))
    }

    async fn save(&self, job: &JobRef) -> Result<()> {
        Err(Error::job_not_found(job.id()))
    }

    async fn results(&self) -> JobStream {
        Box::pin(futures::stream::empty())
    }

    async fn job_info(&self) -> JobInfoStream {
        Box::pin(futures::stream::empty())
    }

    async fn stats(&self) -> Result<QueueStats> {
        Ok(QueueStats::default())
    }

    fn runner(&self) -> Option<Arc<dyn Runner>> {
        None
    }

    fn set_runner(&self, _runner: Arc<dyn Runner>) -> Result<()> {
        Err(Error::invalid("this queue runs nothing"))
    }

    async fn start(&self) -> Result<()> {
        Ok(())
    }

    async fn close(&self) {}
}

#[tokio::test]
async fn a_put_that_always_fails_never_recurses() {
    const EVENTS: usize = 1000;
    let queue = Arc::new(FailingQueue::default());
    let sink = Collect::new();
    let (reports, report) = report_counter();
    let (layer, logger) = QueueLayer::builder(sink.clone())
        .handoff_capacity(EVENTS)
        .report_interval(Duration::from_secs(3600))
        .report_to(report)
        .build_with_queue(queue.clone());
    let _default = tracing_subscriber::registry().with(layer).set_default();

    for i in 0..EVENTS {
        tracing::info!(i, "event");
    }
    tokio::time::timeout(LIMIT, logger.flush())
        .await
        .expect("flush completes promptly")
        .unwrap();

    // One put per event: no put failure was logged back into the queue.
    assert_eq!(queue.puts.load(Ordering::SeqCst), EVENTS);
    let stats = logger.stats();
    assert_eq!(stats.handed_off, EVENTS as u64);
    assert_eq!(stats.put_failures, EVENTS as u64);
    assert_eq!((stats.delivered, stats.dropped), (0, 0));
    // Reported once, not once per failure.
    assert_eq!(reports.load(Ordering::SeqCst), 1);
    assert!(sink.records().is_empty());

    // Still no feedback after the flush: nothing more was put.
    tokio::task::yield_now().await;
    assert_eq!(queue.puts.load(Ordering::SeqCst), EVENTS);
}

#[tokio::test]
async fn a_closed_queue_counts_put_failures_and_reports_at_most_once_per_interval() {
    let queue = LimitedSizeQueue::new(4);
    queue.set_runner(LocalWorkers::new(1)).unwrap();
    queue.start().await.unwrap();
    queue.close().await;
    let sink = Collect::new();
    let (reports, report) = report_counter();
    let (layer, logger) = QueueLayer::builder(sink.clone())
        .report_interval(Duration::from_secs(3600))
        .report_to(report)
        .build_with_queue(queue);
    let _default = tracing_subscriber::registry().with(layer).set_default();

    for i in 0..50 {
        tracing::warn!(i, "event");
    }
    tokio::time::timeout(LIMIT, logger.flush())
        .await
        .expect("flush completes promptly")
        .unwrap();

    let stats = logger.stats();
    assert_eq!((stats.handed_off, stats.put_failures), (50, 50));
    assert_eq!(reports.load(Ordering::SeqCst), 1);
    assert!(sink.records().is_empty());
}

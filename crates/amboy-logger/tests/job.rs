//! The send-message job on its own (amboy's `send-grip-message`).

mod support;

use std::sync::Arc;

use amboy_core::{Job, run_job};
use amboy_logger::{LogRecord, SendMessageJob};
use amboy_registry::JobInterchange;
use tracing::Level;

use support::Collect;

fn record(message: &str) -> LogRecord {
    LogRecord::new(Level::INFO, "app", message).with_field("n", 1)
}

#[tokio::test]
async fn the_job_sends_its_record() {
    let sink = Collect::new();
    let job = SendMessageJob::new(record("hello"), sink.clone());
    assert_eq!(job.record().message, "hello");
    run_job(&job).await.unwrap();
    assert_eq!(sink.records(), [job.record().clone()]);
    assert!(job.status().completed);
}

#[test]
fn the_job_has_amboys_type_and_id_and_cannot_be_serialized() {
    let first = SendMessageJob::new(record("a"), Collect::new());
    let second = SendMessageJob::new(record("b"), Collect::new());
    assert!(first.id().starts_with("queued-message-"), "{}", first.id());
    assert_ne!(first.id(), second.id());
    assert_eq!(first.job_type().name, SendMessageJob::TYPE_NAME);
    assert_eq!(first.job_type().name, "send-grip-message");
    assert_eq!(first.job_type().version, -1);

    let refused = JobInterchange::from_job(&first).unwrap_err();
    assert!(
        refused.to_string().contains("cannot be serialized"),
        "{refused}"
    );
}

#[tokio::test]
async fn the_sinks_error_is_the_jobs_error() {
    let sink = Arc::new(Collect {
        fail_on: Some("no"),
        ..Collect::default()
    });
    let job = SendMessageJob::new(record("no thanks"), sink.clone());
    let error = run_job(&job).await.unwrap_err();
    assert_eq!(error.message(), "refused 'no thanks'");
    assert_eq!(job.status().errors, ["refused 'no thanks'"]);
    assert!(sink.records().is_empty());
}

#[tokio::test]
async fn a_decoded_job_has_no_sink_and_fails_saying_so() {
    // The job cannot be stored through the registry; a copy made anyway lacks its sink.
    let job = SendMessageJob::new(record("lost"), Collect::new());
    let json = serde_json::to_string(&job as &dyn Job).unwrap();
    let copy: Box<dyn Job> = serde_json::from_str(&json).unwrap();
    assert_eq!(copy.id(), job.id());

    let error = run_job(&*copy).await.unwrap_err();
    assert!(error.message().contains("has no sink"), "{error}");
}

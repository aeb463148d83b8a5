//! Running jobs without a queue: errors, panics, max time and cancellation are recorded on the
//! job, and times are set (amboy's `RunJob`, with the end time fixed).

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use amboy_core::{Base, Job, JobContext, JobError, RunOutcome, execute, run_job};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
enum Behaviour {
    #[default]
    Succeed,
    Fail,
    FailRetryable,
    Panic,
    Hang,
}

#[derive(Serialize, Deserialize)]
struct Scripted {
    base: Base,
    behaviour: Behaviour,
}

#[typetag::serde(name = "core-test-scripted")]
#[async_trait::async_trait]
impl Job for Scripted {
    fn base(&self) -> &Base {
        &self.base
    }

    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        match self.behaviour {
            Behaviour::Succeed => Ok(()),
            Behaviour::Fail => Err(std::io::Error::other("disk on fire"))?,
            Behaviour::FailRetryable => Err(JobError::retryable("try later")),
            Behaviour::Panic => panic!("the job blew up"),
            Behaviour::Hang => {
                std::future::pending::<()>().await;
                Ok(())
            }
        }
    }
}

fn job(behaviour: Behaviour) -> Scripted {
    Scripted {
        base: Base::with_id(format!("{behaviour:?}")),
        behaviour,
    }
}

#[tokio::test]
async fn successful_run_sets_times_and_completes() {
    let job = job(Behaviour::Succeed);
    run_job(&job).await.unwrap();
    let time = job.time_info();
    assert!(time.start.is_some());
    assert!(
        time.end.is_some(),
        "amboy never recorded the end time; we do"
    );
    assert!(time.end >= time.start);
    assert!(job.status().completed);
    assert!(job.error().is_none());
}

#[tokio::test]
async fn returned_error_is_recorded_and_returned() {
    let job = job(Behaviour::Fail);
    let err = run_job(&job).await.unwrap_err();
    assert_eq!(err.message(), "disk on fire");
    assert_eq!(job.status().errors, ["disk on fire"]);
    assert!(!job.retry_info().needs_retry);
}

#[tokio::test]
async fn retryable_error_asks_for_retry() {
    let job = job(Behaviour::FailRetryable);
    assert!(run_job(&job).await.is_err());
    assert!(job.retry_info().needs_retry);
}

#[tokio::test]
async fn panic_is_recorded_as_error() {
    let job = job(Behaviour::Panic);
    let err = run_job(&job).await.unwrap_err();
    assert_eq!(err.message(), "job panicked: the job blew up");
    assert!(job.status().completed);
}

#[tokio::test(start_paused = true)]
async fn max_time_stops_a_hung_job() {
    let job = Scripted {
        base: Base::with_id("hang").with_max_time(Duration::from_millis(5)),
        behaviour: Behaviour::Hang,
    };
    let err = run_job(&job).await.unwrap_err();
    assert_eq!(
        err.message(),
        "job was aborted during execution: context deadline exceeded"
    );
}

#[tokio::test]
async fn cancellation_stops_a_hung_job() {
    let job = job(Behaviour::Hang);
    let ctx = JobContext::new();
    ctx.token().cancel();
    assert_eq!(execute(&job, &ctx).await, RunOutcome::Cancelled);
    assert_eq!(
        job.status().errors,
        ["job was aborted during execution: context canceled"]
    );
}

#[tokio::test]
async fn outcomes_are_reported() {
    for (behaviour, outcome) in [
        (Behaviour::Succeed, RunOutcome::Succeeded),
        (Behaviour::Fail, RunOutcome::Failed),
        (Behaviour::Panic, RunOutcome::Panicked),
    ] {
        assert_eq!(execute(&job(behaviour), &JobContext::new()).await, outcome);
    }
}

#[test]
fn job_type_comes_from_the_registration() {
    let job = job(Behaviour::Succeed);
    assert_eq!(job.job_type().name, "core-test-scripted");
    assert_eq!(job.job_type().version, 0);
    let shared: Arc<dyn Job> = Arc::new(job);
    assert_eq!(
        format!("{shared:?}"),
        r#"Job { id: "Succeed", type: JobType { name: "core-test-scripted", version: 0 }, .. }"#
    );
    let any: &dyn Any = &*shared;
    assert!(
        any.downcast_ref::<Scripted>().is_some(),
        "a job upcasts to Any"
    );
}

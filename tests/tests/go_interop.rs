//! A job written by amboy (Go) runs here: decoded through the facade's registry and put on
//! the in-memory queues, it is neither expired by the zero times Go writes for its unset
//! `dispatch_by` and `wait_until`, nor held back by them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use amboy::prelude::*;
use amboy::registry::{decode_job, encode_job};
use amboy::{Base, JobContext, JobError, JobType};
use serde::{Deserialize, Serialize};
use tokio::time::timeout;

const PROMPTLY: Duration = Duration::from_secs(10);

/// The IDs of the jobs that ran.
static RAN: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// A Go job type with its `job.Base` under `job_base`, as amboy's shell job has it.
#[derive(Serialize, Deserialize)]
struct Touch {
    path: String,
    job_base: Base,
}

#[amboy::typetag::serde(name = "go-interop-touch")]
#[amboy::async_trait]
impl Job for Touch {
    fn base(&self) -> &Base {
        &self.job_base
    }

    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        RAN.lock().unwrap().push(self.id().to_owned());
        Ok(())
    }
}

/// The job `id` as Go's `registry.MakeJobInterchange(job, amboy.JSON)` writes it after a put
/// on a Go queue: every unset time, `dispatch_by` and `wait_until` included, is Go's zero time.
fn go_document(id: &str) -> String {
    format!(
        r#"{{"name":"{id}","type":"go-interop-touch","version":0,"status":{{"owner":"","completed":false,"in_progress":false,"mod_time":"0001-01-01T00:00:00Z","mod_count":0,"err_count":0}},"retry_info":{{"start":"0001-01-01T00:00:00Z","end":"0001-01-01T00:00:00Z"}},"time_info":{{"created":"2024-05-06T07:08:09.123456789-04:00","start":"0001-01-01T00:00:00Z","end":"0001-01-01T00:00:00Z","wait_until":"0001-01-01T00:00:00Z","dispatch_by":"0001-01-01T00:00:00Z"}},"job":{{"path":"/tmp/{id}","job_base":{{"name":"{id}","job_type":{{"name":"go-interop-touch","version":0}},"required_scopes":null}}}},"dependency":{{"type":"always","version":0,"edges":[],"dependency":{{"type":{{"name":"always","version":0}},"edges":[]}}}}}}"#
    )
}

/// Decodes the Go document of `id`, puts it on the started `queue` and waits for the queue to
/// be complete; the job must have run, without error, and nothing must have expired.
async fn runs_on(queue: Arc<dyn Queue>, id: &str) {
    queue.start().await.unwrap();
    let job = decode_job(&go_document(id)).unwrap();
    let time = job.time_info();
    assert_eq!((time.dispatch_by, time.wait_until), (None, None));
    queue.put(job).await.unwrap();

    timeout(PROMPTLY, amboy::wait(&*queue))
        .await
        .expect("the queue completes")
        .unwrap();
    let stats = queue.stats().await.unwrap();
    assert_eq!(stats.expired, 0, "{stats:?}");
    assert_eq!((stats.completed, stats.total), (1, 1), "{stats:?}");
    let done = queue.get(id).await.unwrap();
    let status = done.status();
    assert!(status.completed && !status.in_progress, "{status:?}");
    assert!(done.error().is_none(), "{:?}", done.error());
    assert!(RAN.lock().unwrap().iter().any(|ran| ran == id), "{id} ran");
    // Stored again, it names its type as amboy's job.Base does.
    let stored: serde_json::Value = serde_json::from_str(&encode_job(&*done).unwrap()).unwrap();
    assert_eq!(
        stored["job"]["job_base"]["job_type"],
        serde_json::json!({"name": "go-interop-touch", "version": 0})
    );
    assert_eq!(
        done.base().serialized_job_type(),
        Some(&JobType::new("go-interop-touch", 0))
    );
    queue.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_go_written_job_runs_on_the_limited_size_queue() {
    runs_on(amboy::new_local_limited_size(2, 16), "go-interop-limited").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_go_written_job_runs_on_the_serializable_queue() {
    runs_on(
        amboy::new_local_limited_size_serializable(2, 16),
        "go-interop-serializable",
    )
    .await;
}

//! Documents exactly as amboy (Go) writes them with encoding/json: they decode, and re-encoded
//! they carry the fields amboy writes, so a job makes the round trip Go → Rust → Go.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use amboy_core::{Base, Job, JobContext, JobError, JobType};
use amboy_dependency::{CheckManager, State, register_check};
use amboy_registry::{JobInterchange, decode_job, encode_job};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The shape of amboy's `job.ShellJob` (registry type `shell`, version 1).
#[derive(Serialize, Deserialize)]
struct ShellJob {
    command: String,
    output: String,
    working_dir: String,
    env: BTreeMap<String, String>,
    job_base: Base,
}

#[typetag::serde(name = "shell")]
#[async_trait::async_trait]
impl Job for ShellJob {
    fn base(&self) -> &Base {
        &self.job_base
    }

    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        Ok(())
    }

    fn version(&self) -> i32 {
        1
    }
}

/// A Go job embedding `job.Base` untagged, which encoding/json flattens into the job's fields.
#[derive(Serialize, Deserialize)]
struct Flattened {
    #[serde(flatten)]
    base: Base,
    count: u32,
}

#[typetag::serde(name = "go-interop-flattened")]
#[async_trait::async_trait]
impl Job for Flattened {
    fn base(&self) -> &Base {
        &self.base
    }

    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

/// What Go's `registry.MakeJobInterchange(job.NewShellJob("echo hello", ""), amboy.JSON)`
/// writes once the job is put on a queue: every unset time is Go's zero time.
const GO_SHELL_JOB: &str = r#"{"name":"shell-job-1-echo","type":"shell","version":1,"status":{"owner":"","completed":false,"in_progress":false,"mod_time":"0001-01-01T00:00:00Z","mod_count":0,"err_count":0},"retry_info":{"start":"0001-01-01T00:00:00Z","end":"0001-01-01T00:00:00Z"},"time_info":{"created":"2024-05-06T07:08:09.123456789-04:00","start":"0001-01-01T00:00:00Z","end":"0001-01-01T00:00:00Z","wait_until":"0001-01-01T00:00:00Z","dispatch_by":"0001-01-01T00:00:00Z"},"job":{"command":"echo hello","output":"","working_dir":"","env":{},"job_base":{"name":"shell-job-1-echo","job_type":{"name":"shell","version":1},"required_scopes":null}},"dependency":{"type":"always","version":0,"edges":[],"dependency":{"type":{"name":"always","version":0},"edges":[]}}}"#;

/// A shell job that ran and failed on a retryable Go queue, with scopes, a lock, retry
/// information and a `check` dependency with an edge (Go nests the check manager's edges).
const GO_FINISHED_JOB: &str = r#"{"name":"shell-job-7-false","type":"shell","version":1,"status":{"owner":"queue.remote.7","completed":true,"in_progress":false,"mod_time":"2024-05-06T07:08:10.5-04:00","mod_count":3,"err_count":1,"errors":["exit status 1"]},"enqueue_scopes":["disk"],"retry_info":{"retryable":true,"needs_retry":true,"base_job_id":"shell-job-7-false","current_attempt":1,"max_attempts":3,"wait_until":5000000000,"start":"2024-05-06T11:08:11Z","end":"0001-01-01T00:00:00Z"},"time_info":{"created":"2024-05-06T11:08:09Z","start":"2024-05-06T11:08:10.000000001Z","end":"2024-05-06T11:08:10.25Z","wait_until":"0001-01-01T00:00:00Z","dispatch_by":"2124-05-06T11:08:09Z","max_time":60000000000},"job":{"command":"false","output":"","working_dir":"/tmp","env":{"A":"1"},"job_base":{"name":"shell-job-7-false","job_type":{"name":"shell","version":1},"required_scopes":["disk","net"]}},"dependency":{"type":"check","version":1,"edges":["shell-job-6-true"],"dependency":{"function_name":"go-interop-always-ready","type":{"name":"check","version":1},"edges":{"edges":["shell-job-6-true"]}}}}"#;

/// A Go job embedding `job.Base` untagged, with a `create-file` dependency.
const GO_FLATTENED_JOB: &str = r#"{"name":"flat-1","type":"go-interop-flattened","version":0,"status":{"owner":"","completed":false,"in_progress":false,"mod_time":"0001-01-01T00:00:00Z","mod_count":0,"err_count":0},"retry_info":{"start":"0001-01-01T00:00:00Z","end":"0001-01-01T00:00:00Z"},"time_info":{"created":"0001-01-01T00:00:00Z","start":"0001-01-01T00:00:00Z","end":"0001-01-01T00:00:00Z","wait_until":"0001-01-01T00:00:00Z","dispatch_by":"0001-01-01T00:00:00Z"},"job":{"name":"flat-1","job_type":{"name":"go-interop-flattened","version":0},"required_scopes":null,"count":3},"dependency":{"type":"create-file","version":0,"edges":[],"dependency":{"file_name":"/nonexistent/go-interop","type":{"name":"create-file","version":0},"edges":[]}}}"#;

fn utc(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .with_timezone(&Utc)
}

fn shell(job: &dyn Job) -> &ShellJob {
    (job as &dyn std::any::Any)
        .downcast_ref::<ShellJob>()
        .expect("a shell job")
}

fn value(json: &str) -> Value {
    serde_json::from_str(json).unwrap()
}

/// The paths of every field of a JSON document (`a.b.c`), except inside string maps such as
/// `env`, whose keys are data.
fn paths(value: &Value) -> BTreeSet<String> {
    fn walk(value: &Value, prefix: &str, out: &mut BTreeSet<String>) {
        if let Value::Object(map) = value {
            for (key, child) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                out.insert(path.clone());
                if key != "env" {
                    walk(child, &path, out);
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(value, "", &mut out);
    out
}

/// The fields of a Go document that our encoder leaves out: unset times (Go reads a missing
/// time as its zero time), and `required_scopes` when there are none (Go writes `null`).
fn zero_valued_paths(go: &Value) -> BTreeSet<String> {
    paths(go)
        .into_iter()
        .filter(|path| {
            let pointer = format!("/{}", path.replace('.', "/"));
            matches!(
                go.pointer(&pointer),
                Some(Value::String(time)) if time == "0001-01-01T00:00:00Z"
            ) || matches!(go.pointer(&pointer), Some(Value::Null))
        })
        .collect()
}

#[test]
fn go_zero_times_decode_as_unset() {
    let job = decode_job(GO_SHELL_JOB).unwrap();
    assert_eq!(job.id(), "shell-job-1-echo");
    assert_eq!(job.job_type(), JobType::new("shell", 1));
    let status = job.status();
    assert_eq!(status.modification_time, None);
    assert_eq!(status.owner, None);
    assert!(!status.completed && !status.in_progress);
    let time = job.time_info();
    assert_eq!(time.created, Some(utc("2024-05-06T11:08:09.123456789Z")));
    assert_eq!(
        (time.start, time.end, time.wait_until, time.dispatch_by),
        (None, None, None, None)
    );
    assert_eq!(time.max_time, Duration::ZERO);
    assert!(!time.is_stale(), "no dispatch deadline: never expires");
    assert!(time.is_dispatchable());
    let retry = job.retry_info();
    assert_eq!((retry.start, retry.end), (None, None));
    assert_eq!(job.dependency().manager_type().name, "always");
    assert_eq!(
        job.base().serialized_job_type(),
        Some(&JobType::new("shell", 1))
    );
    let body = shell(&*job);
    assert_eq!(body.command, "echo hello");
    assert!(body.env.is_empty());
    assert!(job.scopes().is_empty());
}

#[test]
fn set_values_from_go_decode() {
    register_check("go-interop-always-ready", |_: &[String]| State::Ready);
    let job = decode_job(GO_FINISHED_JOB).unwrap();
    let status = job.status();
    assert_eq!(status.owner.as_deref(), Some("queue.remote.7"));
    assert!(status.completed);
    assert_eq!(
        status.modification_time,
        Some(utc("2024-05-06T11:08:10.5Z"))
    );
    assert_eq!((status.modification_count, status.error_count), (3, 1));
    assert_eq!(job.error().unwrap().message(), "exit status 1");
    let time = job.time_info();
    assert_eq!(time.start, Some(utc("2024-05-06T11:08:10.000000001Z")));
    assert_eq!(time.end, Some(utc("2024-05-06T11:08:10.25Z")));
    assert_eq!(time.wait_until, None);
    assert_eq!(time.dispatch_by, Some(utc("2124-05-06T11:08:09Z")));
    assert_eq!(time.max_time, Duration::from_secs(60));
    let retry = job.retry_info();
    assert!(retry.retryable && retry.needs_retry);
    assert_eq!(retry.base_job_id, "shell-job-7-false");
    assert_eq!((retry.current_attempt, retry.max_attempts), (1, 3));
    assert_eq!(retry.wait_until, Duration::from_secs(5));
    assert_eq!(
        (retry.start, retry.end),
        (Some(utc("2024-05-06T11:08:11Z")), None)
    );
    assert_eq!(job.scopes(), ["disk", "net"]);
    assert_eq!(job.enqueue_scopes(), ["disk"]);
    let dependency = job.dependency();
    assert_eq!(dependency.manager_type().name, "check");
    assert_eq!(dependency.edges(), ["shell-job-6-true"]);
    assert_eq!(dependency.state(), State::Ready);
    assert_eq!(shell(&*job).env["A"], "1");
}

#[test]
fn re_encoded_go_documents_keep_amboys_fields() {
    register_check("go-interop-always-ready", |_: &[String]| State::Ready);
    for go in [GO_SHELL_JOB, GO_FINISHED_JOB, GO_FLATTENED_JOB] {
        let go = value(go);
        let ours = value(&encode_job(&*decode_job(&go.to_string()).unwrap()).unwrap());
        let missing: BTreeSet<String> = paths(&go).difference(&paths(&ours)).cloned().collect();
        assert_eq!(
            missing,
            zero_valued_paths(&go),
            "only zero times and null lists are left out of {ours}"
        );
        let added: BTreeSet<String> = paths(&ours).difference(&paths(&go)).cloned().collect();
        assert!(added.is_empty(), "fields amboy does not write: {added:?}");
    }

    let ours = value(&encode_job(&*decode_job(GO_SHELL_JOB).unwrap()).unwrap());
    assert_eq!(
        ours["job"]["job_base"]["job_type"],
        json!({"name": "shell", "version": 1})
    );
    assert_eq!(
        ours["dependency"],
        json!({
            "type": "always", "version": 0, "edges": [],
            "dependency": {"type": {"name": "always", "version": 0}, "edges": []}
        })
    );
    assert_eq!(
        ours["time_info"],
        json!({"created": "2024-05-06T11:08:09.123456789Z"})
    );
    assert_eq!(ours["retry_info"], json!({}));
    assert_eq!(
        ours["status"],
        json!({"owner": "", "completed": false, "in_progress": false, "mod_count": 0, "err_count": 0})
    );

    let ours = value(&encode_job(&*decode_job(GO_FINISHED_JOB).unwrap()).unwrap());
    assert_eq!(
        ours["dependency"]["dependency"],
        json!({
            "function_name": "go-interop-always-ready",
            "type": {"name": "check", "version": 1},
            "edges": {"edges": ["shell-job-6-true"]}
        })
    );
    assert_eq!(ours["dependency"]["edges"], json!(["shell-job-6-true"]));

    let ours = value(&encode_job(&*decode_job(GO_FLATTENED_JOB).unwrap()).unwrap());
    assert_eq!(
        ours["job"],
        json!({
            "name": "flat-1", "job_type": {"name": "go-interop-flattened", "version": 0},
            "count": 3
        })
    );
}

#[test]
fn decode_encode_decode_is_stable() {
    register_check("go-interop-always-ready", |_: &[String]| State::Ready);
    for go in [GO_SHELL_JOB, GO_FINISHED_JOB, GO_FLATTENED_JOB] {
        let first = decode_job(go).unwrap();
        let encoded = encode_job(&*first).unwrap();
        let second = decode_job(&encoded).unwrap();
        assert_eq!(second.id(), first.id());
        assert_eq!(second.job_type(), first.job_type());
        assert_eq!(second.status(), first.status());
        assert_eq!(second.time_info(), first.time_info());
        assert_eq!(second.retry_info(), first.retry_info());
        assert_eq!(second.scopes(), first.scopes());
        assert_eq!(second.enqueue_scopes(), first.enqueue_scopes());
        assert_eq!(
            second.dependency().manager_type(),
            first.dependency().manager_type()
        );
        assert_eq!(second.dependency().edges(), first.dependency().edges());
        assert_eq!(
            second.base().serialized_job_type(),
            first.base().serialized_job_type()
        );
        assert_eq!(
            value(&encode_job(&*second).unwrap()),
            value(&encoded),
            "a second round changes nothing"
        );
    }
}

#[test]
fn jobs_created_in_rust_carry_their_job_type() {
    let job = ShellJob {
        command: "true".into(),
        output: String::new(),
        working_dir: String::new(),
        env: BTreeMap::new(),
        job_base: Base::with_id("rust-shell"),
    };
    assert_eq!(
        job.base().serialized_job_type(),
        None,
        "not known before encoding"
    );
    let encoded = value(&encode_job(&job).unwrap());
    assert_eq!(
        encoded["job"]["job_base"],
        json!({"name": "rust-shell", "job_type": {"name": "shell", "version": 1}})
    );
    assert_eq!(
        encoded.get("dependency"),
        None,
        "no manager set: none stored"
    );

    job.set_dependency(Arc::new(CheckManager::new("go-interop-always-ready")));
    let envelope = JobInterchange::from_job(&job).unwrap();
    let dependency = value(&serde_json::to_string(&envelope.dependency).unwrap());
    assert_eq!(
        dependency,
        json!({
            "type": "check", "version": 1, "edges": [],
            "dependency": {
                "function_name": "go-interop-always-ready",
                "type": {"name": "check", "version": 1},
                "edges": {"edges": []}
            }
        })
    );
}

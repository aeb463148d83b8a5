//! The interchange envelope and the registry, as amboy's `registry` tests exercise them.

use std::sync::Arc;
use std::time::Duration;

use amboy_core::{Base, Job, JobContext, JobError, JobRetryInfo, JobStatusInfo, JobTimeInfo};
use amboy_dependency::{CheckManager, LocalFile, Manager};
use amboy_registry::{
    JobInterchange, MAX_ERRORS_KEPT, RegistryError, decode_job, encode_job, registered_job_types,
};
use chrono::{DateTime, TimeDelta, Utc};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Resize {
    base: Base,
    path: String,
    width: u32,
}

#[typetag::serde(name = "registry-test-resize")]
#[async_trait::async_trait]
impl Job for Resize {
    fn base(&self) -> &Base {
        &self.base
    }

    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

/// A type at version 2, to check versions travel.
#[derive(Serialize, Deserialize)]
struct Versioned {
    base: Base,
}

#[typetag::serde(name = "registry-test-versioned")]
#[async_trait::async_trait]
impl Job for Versioned {
    fn base(&self) -> &Base {
        &self.base
    }

    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        Ok(())
    }

    fn version(&self) -> i32 {
        2
    }
}

/// A job that cannot be stored (negative version), like amboy's logger jobs.
#[derive(Serialize, Deserialize)]
struct LocalOnly {
    base: Base,
}

#[typetag::serde(name = "registry-test-local-only")]
#[async_trait::async_trait]
impl Job for LocalOnly {
    fn base(&self) -> &Base {
        &self.base
    }

    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        Ok(())
    }

    fn version(&self) -> i32 {
        -1
    }
}

fn resize(id: &str) -> Resize {
    Resize {
        base: Base::with_id(id),
        path: "/tmp/cat.png".into(),
        width: 640,
    }
}

fn concrete(job: &dyn Job) -> &Resize {
    (job as &dyn std::any::Any)
        .downcast_ref::<Resize>()
        .expect("a Resize job")
}

#[test]
fn registered_types_include_ours_sorted() {
    let names = registered_job_types();
    for name in [
        "registry-test-resize",
        "registry-test-versioned",
        "registry-test-local-only",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    assert!(names.windows(2).all(|pair| pair[0] < pair[1]));
}

#[test]
fn round_trip_keeps_fields_and_metadata() {
    let now = Utc::now();
    let job = resize("resize-1");
    job.set_scopes(vec!["image".into(), "disk".into()]);
    job.set_enqueue_scopes(vec!["disk".into()]);
    job.set_priority(5);
    job.add_error(&"first failure");
    job.update_time_info(&JobTimeInfo {
        created: Some(now),
        wait_until: Some(now + TimeDelta::seconds(1)),
        dispatch_by: Some(now + TimeDelta::seconds(2)),
        max_time: Duration::from_millis(1500),
        ..Default::default()
    });
    job.base().update_retry_info(&amboy_core::JobRetryOptions {
        retryable: Some(true),
        current_attempt: Some(3),
        max_attempts: Some(4),
        wait_until: Some(Duration::from_secs(9)),
        ..Default::default()
    });

    let json = encode_job(&job).unwrap();
    let back = decode_job(&json).unwrap();
    assert_eq!(back.id(), "resize-1");
    assert_eq!(back.job_type(), job.job_type());
    assert_eq!(back.status(), job.status());
    assert_eq!(back.time_info(), job.time_info());
    assert_eq!(back.retry_info(), job.retry_info());
    assert_eq!(back.scopes(), ["image", "disk"]);
    assert_eq!(back.enqueue_scopes(), ["disk"]);
    assert_eq!(back.priority(), 5);
    let back = concrete(&*back);
    assert_eq!((back.path.as_str(), back.width), ("/tmp/cat.png", 640));
}

#[test]
fn wire_form_uses_amboys_names() {
    let job = resize("resize-2");
    let value: serde_json::Value = serde_json::from_str(&encode_job(&job).unwrap()).unwrap();
    assert_eq!(value["name"], "resize-2");
    assert_eq!(value["type"], "registry-test-resize");
    assert_eq!(value["version"], 0);
    assert_eq!(value["job"]["base"]["name"], "resize-2");
    assert_eq!(value["job"]["width"], 640);
    for key in ["status", "retry_info", "time_info"] {
        assert!(value.get(key).is_some(), "{key} missing in {value}");
    }
    assert!(
        value.get("dependency").is_none(),
        "the default dependency is not stored"
    );
}

#[test]
fn dependencies_round_trip() {
    let job = resize("resize-3");
    let manager = LocalFile::new("out.png", ["in.png"]);
    manager.add_edge("resize-0").unwrap();
    job.set_dependency(Arc::new(manager));
    let json = encode_job(&job).unwrap();
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["dependency"]["type"], "local-file");
    assert_eq!(value["dependency"]["version"], 0);
    assert_eq!(
        value["dependency"]["edges"],
        serde_json::json!(["resize-0"])
    );
    let back = decode_job(&json).unwrap();
    let dependency = back.dependency();
    assert_eq!(dependency.manager_type().name, "local-file");
    assert_eq!(dependency.edges(), ["resize-0"]);
}

#[test]
fn versions_travel_and_must_match() {
    let job = Versioned {
        base: Base::with_id("v-1"),
    };
    let json = encode_job(&job).unwrap();
    assert_eq!(decode_job(&json).unwrap().job_type().version, 2);

    let mut envelope = JobInterchange::from_job(&job).unwrap();
    envelope.version = 1;
    let err = envelope.resolve().unwrap_err();
    assert_eq!(
        err.to_string(),
        "job 'v-1' of type 'registry-test-versioned' was stored at version 1, but the registered version is 2"
    );
    assert_eq!(err.job_id(), "v-1");
}

#[test]
fn unknown_type_is_an_error_naming_job_and_type() {
    let mut envelope = JobInterchange::from_job(&resize("r-unknown")).unwrap();
    envelope.type_name = "no-such-type".into();
    let err = decode_job(&envelope.to_json().unwrap()).unwrap_err();
    assert!(matches!(err, RegistryError::UnknownJobType { .. }));
    let message = err.to_string();
    assert!(
        message.starts_with("job 'r-unknown' has type 'no-such-type', which is not registered"),
        "{message}"
    );
    assert!(
        message.contains("registry-test-resize"),
        "lists what is registered: {message}"
    );
}

#[test]
fn malformed_json_names_the_job_when_it_can() {
    let json = encode_job(&resize("r-bad")).unwrap();
    let truncated = &json[..json.len() - 5];
    let err = decode_job(truncated).unwrap_err();
    assert!(matches!(err, RegistryError::MalformedEnvelope { .. }));
    assert_eq!(
        err.job_id(),
        "r-bad",
        "read from the text of the broken JSON"
    );
    assert!(
        err.to_string()
            .starts_with("stored job 'r-bad' is malformed: "),
        "{err}"
    );

    let err = decode_job("{not json at all").unwrap_err();
    assert_eq!(err.job_id(), "<unknown>");
    assert!(
        err.to_string()
            .starts_with("stored job '<unknown>' is malformed: "),
        "{err}"
    );

    let err = decode_job(r#"{"name": "r-half", "type": 7}"#).unwrap_err();
    assert_eq!(err.job_id(), "r-half");
    assert!(
        err.to_string().contains("invalid type: integer `7`"),
        "{err}"
    );
}

#[test]
fn malformed_body_names_job_type_and_reason() {
    let mut value: serde_json::Value =
        serde_json::from_str(&encode_job(&resize("r-body")).unwrap()).unwrap();
    value["job"]["width"] = serde_json::json!("wide");
    let err = decode_job(&value.to_string()).unwrap_err();
    let message = err.to_string();
    assert!(
        message.starts_with(
            "job 'r-body' of type 'registry-test-resize' (stored version 0) cannot be decoded: "
        ),
        "{message}"
    );
    assert!(
        message.contains("invalid type: string \"wide\""),
        "{message}"
    );
}

#[test]
fn body_naming_another_job_is_rejected() {
    let mut value: serde_json::Value =
        serde_json::from_str(&encode_job(&resize("r-a")).unwrap()).unwrap();
    value["job"]["base"]["name"] = serde_json::json!("r-b");
    let err = decode_job(&value.to_string()).unwrap_err();
    assert!(
        err.to_string().contains("the job's fields name it 'r-b'"),
        "{err}"
    );
}

#[test]
fn dependency_errors_name_the_job() {
    let job = resize("r-dep");
    job.set_dependency(Arc::new(CheckManager::new("f")));
    let mut envelope = JobInterchange::from_job(&job).unwrap();
    let dependency = envelope.dependency.as_mut().unwrap();
    dependency.version = 0;
    assert_eq!(
        envelope.resolve().unwrap_err().to_string(),
        "job 'r-dep' has a dependency 'check' stored at version 0, but the registered version is 1"
    );
    let dependency = envelope.dependency.as_mut().unwrap();
    dependency.version = 1;
    dependency.type_name = "mystery".into();
    assert_eq!(
        envelope.resolve().unwrap_err().to_string(),
        "job 'r-dep' has a dependency of type 'mystery', which is not registered"
    );
}

#[test]
fn negative_versions_cannot_be_serialized() {
    let err = encode_job(&LocalOnly {
        base: Base::with_id("log-1"),
    })
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "job 'log-1' of type 'registry-test-local-only' cannot be serialized: its version -1 is negative"
    );
}

#[test]
fn error_truncation_applies_to_the_envelope_only() {
    let job = resize("r-errors");
    {
        let mut meta = job.base().metadata();
        for _ in 0..5000 {
            meta.add_error("x".repeat(10_000));
        }
    }
    let envelope = JobInterchange::from_job(&job).unwrap();
    assert_eq!(envelope.status.errors.len(), MAX_ERRORS_KEPT);
    assert!(envelope.status.errors.iter().all(|e| e.len() == 1000));
    assert_eq!(
        envelope.status.error_count, 5000,
        "the count still says how many there were"
    );
    let status = job.status();
    assert_eq!(status.errors.len(), 5000, "the job keeps every error");
    assert!(status.errors.iter().all(|e| e.len() == 10_000));
}

fn any_time() -> impl Strategy<Value = Option<DateTime<Utc>>> {
    prop::option::of(
        (0i64..4_000_000_000, 0u32..1_000_000_000)
            .prop_map(|(secs, nanos)| DateTime::from_timestamp(secs, nanos).expect("in range")),
    )
}

fn any_duration() -> impl Strategy<Value = Duration> {
    (0u64..i64::MAX as u64).prop_map(Duration::from_nanos)
}

prop_compose! {
    fn any_status()(
        owner in prop::option::of("[a-z0-9.-]{1,20}"),
        completed in any::<bool>(),
        in_progress in any::<bool>(),
        expired in any::<bool>(),
        modification_time in any_time(),
        modification_count in any::<u64>(),
        errors in prop::collection::vec(".{0,40}", 0..5),
    ) -> JobStatusInfo {
        JobStatusInfo {
            owner: owner.map(Arc::from),
            completed,
            in_progress,
            modification_time,
            modification_count,
            error_count: errors.len(),
            errors,
            expired,
        }
    }
}

prop_compose! {
    fn any_time_info()(
        created in any_time(), start in any_time(), end in any_time(),
        wait_until in any_time(), dispatch_by in any_time(), max_time in any_duration(),
    ) -> JobTimeInfo {
        JobTimeInfo { created, start, end, wait_until, dispatch_by, max_time }
    }
}

prop_compose! {
    fn any_retry_info()(
        retryable in any::<bool>(), needs_retry in any::<bool>(), base_job_id in "[a-z0-9-]{0,12}",
        current_attempt in any::<u32>(), max_attempts in any::<u32>(),
        dispatch_by in any_duration(), wait_until in any_duration(),
        start in any_time(), end in any_time(),
    ) -> JobRetryInfo {
        JobRetryInfo {
            retryable, needs_retry, base_job_id, current_attempt, max_attempts,
            dispatch_by, wait_until, start, end,
        }
    }
}

proptest! {
    #[test]
    fn any_metadata_round_trips_unchanged(
        id in "[A-Za-z0-9._-]{1,40}",
        path in ".{0,30}",
        width in any::<u32>(),
        status in any_status(),
        time_info in any_time_info(),
        retry_info in any_retry_info(),
        scopes in prop::collection::vec("[a-z]{1,8}", 0..4),
        enqueue_scopes in prop::collection::vec("[a-z]{1,8}", 0..4),
        enqueue_all_scopes in any::<bool>(),
        priority in any::<i32>(),
    ) {
        let job = Resize { base: Base::with_id(&id), path: path.clone(), width };
        {
            let mut meta = job.base().metadata();
            meta.status = status.clone();
            meta.time_info = time_info.clone();
            meta.retry_info = retry_info.clone();
            meta.scopes = scopes.clone();
            meta.enqueue_scopes = enqueue_scopes.clone();
            meta.enqueue_all_scopes = enqueue_all_scopes;
            meta.priority = priority;
        }
        let back = decode_job(&encode_job(&job).unwrap()).unwrap();
        let meta = back.base().metadata();
        prop_assert_eq!(back.id(), id.as_str());
        prop_assert_eq!(&meta.status, &status);
        prop_assert_eq!(&meta.time_info, &time_info);
        prop_assert_eq!(&meta.retry_info, &retry_info);
        prop_assert_eq!(&meta.scopes, &scopes);
        prop_assert_eq!(&meta.enqueue_scopes, &enqueue_scopes);
        prop_assert_eq!(meta.enqueue_all_scopes, enqueue_all_scopes);
        prop_assert_eq!(meta.priority, priority);
        drop(meta);
        let back = concrete(&*back);
        prop_assert_eq!(&back.path, &path);
        prop_assert_eq!(back.width, width);
    }
}

#[test]
fn registry_is_safe_to_use_from_many_threads() {
    // amboy's job_test: 128 goroutines using the registry at once.
    let handles: Vec<_> = (0..128)
        .map(|n| {
            std::thread::spawn(move || {
                let names = registered_job_types();
                assert!(names.contains(&"registry-test-resize"));
                let job = resize(&format!("thread-{n}"));
                let back = decode_job(&encode_job(&job).unwrap()).unwrap();
                assert_eq!(back.id(), format!("thread-{n}"));
            })
        })
        .collect();
    for handle in handles {
        handle.join().expect("no thread panicked");
    }
}

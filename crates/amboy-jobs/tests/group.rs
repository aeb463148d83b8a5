//! The group job: amboy's cases (unique `add`, members run, a failing member keeps the group's
//! envelope, `always`-only dependency), and members' dependencies, time limits, cancellation
//! and decoding failures, and the stored form.

#![cfg(unix)]

mod common;

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use amboy_core::dependency::{MockDependency, State};
use amboy_core::{Job, JobContext, run_job};
use amboy_jobs::{GroupJob, JobsError, ShellJob};
use amboy_registry::JobInterchange;
use serde_json::json;

use common::TempDir;

const NO_ARGS: [&str; 0] = [];

/// Far more than a killed process needs to die, and than any command here needs to run.
const GENEROUS: Duration = Duration::from_secs(10);

fn echo(id: &str) -> ShellJob {
    ShellJob::new("echo", [id]).with_id(id)
}

/// A member that starts sleeping processes, writing their IDs to `pids`.
fn sleeper(pids: &std::path::Path) -> ShellJob {
    ShellJob::new("sh", ["-c", &common::sleeper_script(pids)])
        .with_id("sleeper")
        .with_inherited_env()
}

/// The group's decoded copy of member `id`, as a shell job.
fn member(group: &GroupJob, id: &str) -> ShellJob {
    let job = group
        .job(id)
        .expect("a member")
        .resolve()
        .expect("resolves");
    (&*job as &dyn Any)
        .downcast_ref::<ShellJob>()
        .expect("a shell job")
        .clone()
}

#[test]
fn add_refuses_a_duplicate_id() {
    let mut group = GroupJob::new("unique");
    assert!(group.is_empty());
    group.add(&echo("one")).unwrap();
    assert_eq!(
        group.add(&echo("one")).unwrap_err(),
        JobsError::DuplicateJob {
            group: "unique".into(),
            id: "one".into()
        }
    );
    assert_eq!(
        group.add(&echo("one")).unwrap_err().to_string(),
        "group job 'unique' already holds a job 'one'"
    );
    group.add(&echo("two")).unwrap();
    assert_eq!(group.len(), 2);
}

#[tokio::test]
async fn every_member_runs() {
    let mut group = GroupJob::new("six");
    let ids: Vec<String> = (0..6).map(|n| format!("echo-{n}")).collect();
    for id in &ids {
        group.add(&echo(id)).unwrap();
    }
    run_job(&group).await.expect("every member succeeds");
    assert!(group.status().completed);
    assert!(group.status().errors.is_empty());
    for id in &ids {
        let stored = group.job(id).unwrap();
        assert!(stored.status.completed, "{id}");
        assert!(stored.time_info.start.is_some() && stored.time_info.end.is_some());
        assert_eq!(member(&group, id).output(), *id);
    }
}

#[tokio::test]
async fn a_failing_member_keeps_the_groups_envelope() {
    let mut group = GroupJob::new("mixed");
    group.add(&echo("works")).unwrap();
    group
        .add(&ShellJob::new("false", NO_ARGS).with_id("fails"))
        .unwrap();
    let before = group.job("fails").unwrap();

    let error = run_job(&group).await.expect_err("a member failed");
    // Exactly the failing member's error, named.
    let status = group.status();
    assert_eq!(
        status.errors,
        ["fails: shell job 'fails': 'false' failed: exit status 1"]
    );
    assert_eq!(error.message(), status.errors[0]);
    assert!(status.completed);

    // The member that succeeded is stored as it ended: completed, with its output.
    assert!(group.job("works").unwrap().status.completed);
    assert_eq!(member(&group, "works").output(), "works");
    assert_eq!(member(&group, "works").exit_code(), Some(0));
    // The member that failed keeps the envelope it was added with (amboy's rule).
    let after = group.job("fails").unwrap();
    assert!(!after.status.completed);
    assert_eq!(after.to_json().unwrap(), before.to_json().unwrap());

    // The group still encodes and decodes, members included.
    let json = JobInterchange::from_job(&group).unwrap().to_json().unwrap();
    let decoded = JobInterchange::from_json(&json).unwrap().resolve().unwrap();
    let decoded = (&*decoded as &dyn Any)
        .downcast_ref::<GroupJob>()
        .expect("a group job");
    assert_eq!(decoded.status().errors, status.errors);
    assert_eq!(
        decoded.jobs().keys().collect::<Vec<_>>(),
        ["fails", "works"]
    );
    for stored in decoded.jobs().values() {
        stored.resolve().expect("every member still decodes");
    }
    assert_eq!(member(decoded, "works").output(), "works");
}

#[tokio::test]
async fn a_completed_group_does_not_run_again() {
    let mut group = GroupJob::new("once");
    group.add(&echo("a")).unwrap();
    run_job(&group).await.unwrap();
    let stored = group.job("a").unwrap().to_json().unwrap();

    let error = run_job(&group).await.expect_err("already completed");
    assert_eq!(
        error.message(),
        "group job 'once' has completed already: its members do not run again"
    );
    assert_eq!(group.job("a").unwrap().to_json().unwrap(), stored);
}

#[tokio::test]
async fn members_whose_dependency_passed_are_skipped() {
    let mut group = GroupJob::new("passed");
    // It would fail if it ran.
    let skipped = ShellJob::new("false", NO_ARGS).with_id("skipped");
    skipped.set_dependency(Arc::new(MockDependency::new(State::Passed)));
    group.add(&skipped).unwrap();
    // Blocked members run anyway, as in amboy.
    let blocked = echo("blocked");
    blocked.set_dependency(Arc::new(MockDependency::new(State::Blocked)));
    group.add(&blocked).unwrap();

    run_job(&group).await.expect("nothing failed");
    assert!(!group.job("skipped").unwrap().status.completed);
    assert!(group.job("blocked").unwrap().status.completed);
    assert_eq!(member(&group, "blocked").output(), "blocked");
}

#[tokio::test]
async fn a_member_that_does_not_decode_is_an_error_and_the_others_run() {
    let mut group = GroupJob::new("undecodable");
    group.add(&echo("fine")).unwrap();
    group.add(&echo("unknown")).unwrap();
    // Store the group, then make one member's type one this program does not know.
    let mut document: serde_json::Value =
        serde_json::from_str(&JobInterchange::from_job(&group).unwrap().to_json().unwrap())
            .unwrap();
    document["job"]["jobs"]["unknown"]["type"] = json!("no-such-type");
    let decoded = JobInterchange::from_json(&document.to_string())
        .unwrap()
        .resolve()
        .unwrap();

    run_job(&*decoded).await.expect_err("a member failed");
    let errors = decoded.status().errors;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0]
            .starts_with("unknown: job 'unknown' has type 'no-such-type', which is not registered"),
        "{errors:?}"
    );
    let decoded = (&*decoded as &dyn Any).downcast_ref::<GroupJob>().unwrap();
    assert!(decoded.job("fine").unwrap().status.completed);
    assert_eq!(decoded.job("unknown").unwrap().type_name, "no-such-type");
}

#[tokio::test]
async fn a_members_max_time_bounds_it() {
    let mut group = GroupJob::new("member-limit");
    group
        .add(
            &ShellJob::new("sleep", ["30"])
                .with_id("slow")
                .with_max_time(Duration::from_millis(500)),
        )
        .unwrap();
    group.add(&echo("quick")).unwrap();

    let started = Instant::now();
    run_job(&group)
        .await
        .expect_err("the slow member was stopped");
    assert!(started.elapsed() < GENEROUS);
    let errors = group.status().errors;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].starts_with("slow: "), "{errors:?}");
    assert!(
        errors[0].contains("context deadline exceeded"),
        "{errors:?}"
    );
    assert!(group.job("quick").unwrap().status.completed);
}

#[tokio::test]
async fn the_groups_max_time_stops_its_members() {
    let dir = TempDir::new("group-limit");
    let pids = dir.path().join("pids");
    let mut group = GroupJob::new("group-limit").with_max_time(Duration::from_secs(2));
    group.add(&sleeper(&pids)).unwrap();

    let started = Instant::now();
    let error = run_job(&group).await.expect_err("stopped at max_time");
    assert!(started.elapsed() < GENEROUS);
    assert!(
        error.message().contains("context deadline exceeded"),
        "{error}"
    );
    common::assert_gone(&common::read_pids(&pids), GENEROUS).await;
}

#[tokio::test]
async fn cancelling_the_group_cancels_its_members() {
    let dir = TempDir::new("group-cancel");
    let pids = dir.path().join("pids");
    let mut group = GroupJob::new("group-cancel");
    group.add(&sleeper(&pids)).unwrap();
    let ctx = JobContext::new();
    let token = ctx.token().clone();

    let run = group.run(&ctx);
    let mut run = std::pin::pin!(run);
    tokio::select! {
        result = &mut run => panic!("the group ended on its own: {result:?}"),
        () = common::wait_for_file(&pids, GENEROUS) => {}
    }
    token.cancel();
    tokio::time::timeout(GENEROUS, run)
        .await
        .expect("the group stops")
        .expect("member failures are recorded, not returned");
    assert_eq!(
        group.status().errors,
        ["sleeper: shell job 'sleeper': 'sh' was killed with its process group: context canceled"]
    );
    common::assert_gone(&common::read_pids(&pids), GENEROUS).await;
}

#[tokio::test]
async fn a_group_round_trips_through_its_envelope() {
    let mut group = GroupJob::new("round-trip");
    group.add(&echo("a")).unwrap();
    let inner = {
        let mut inner = GroupJob::new("inner");
        inner.add(&echo("b")).unwrap();
        inner
    };
    group.add(&inner).unwrap();

    let interchange = JobInterchange::from_job(&group).unwrap();
    assert_eq!(interchange.type_name, "group");
    assert_eq!(interchange.version, 1);
    let body: serde_json::Value = serde_json::from_str(interchange.job.get()).unwrap();
    assert_eq!(
        body["metadata"],
        json!({"name": "round-trip", "job_type": {"name": "group", "version": 1}})
    );
    assert_eq!(body["jobs"]["a"]["type"], "shell");
    assert_eq!(body["jobs"]["inner"]["type"], "group");
    assert_eq!(body["jobs"]["inner"]["job"]["jobs"]["b"]["type"], "shell");

    let decoded = JobInterchange::from_json(&interchange.to_json().unwrap())
        .unwrap()
        .resolve()
        .unwrap();
    assert_eq!(decoded.job_type().name, "group");
    assert_eq!(decoded.job_type().version, 1);
    run_job(&*decoded)
        .await
        .expect("members, nested group included, succeed");
    let decoded = (&*decoded as &dyn Any).downcast_ref::<GroupJob>().unwrap();
    let inner = decoded.job("inner").unwrap().resolve().unwrap();
    let inner = (&*inner as &dyn Any).downcast_ref::<GroupJob>().unwrap();
    assert!(inner.status().completed);
    assert_eq!(member(inner, "b").output(), "b");
}

#[test]
fn an_amboy_group_without_members_decodes() {
    let document = json!({
        "name": "empty",
        "type": "group",
        "version": 1,
        "job": {"jobs": null, "metadata": {"name": "empty", "job_type": {"name": "group", "version": 1}}},
    });
    let job = JobInterchange::from_json(&document.to_string())
        .unwrap()
        .resolve()
        .unwrap();
    let group = (&*job as &dyn Any).downcast_ref::<GroupJob>().unwrap();
    assert!(group.is_empty());
}

#[test]
fn a_groups_dependency_stays_always() {
    let group = GroupJob::new("deps");
    group.set_dependency(Arc::new(MockDependency::new(State::Passed)));
    assert_eq!(group.dependency().manager_type().name, "always");
    assert_eq!(group.dependency().state(), State::Ready);
}

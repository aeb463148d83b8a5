//! The shell job, with real processes: amboy's cases (`env` prints exactly its environment, a
//! missing binary is an error but the job completes), output capture, exit status, working
//! directory, bounded output, killing the process group, and the stored form.

#![cfg(unix)]

mod common;

use std::any::Any;
use std::time::{Duration, Instant};

use amboy_core::dependency::State;
use amboy_core::{Job, JobContext, RunOutcome, execute, run_job};
use amboy_jobs::{JobsError, OUTPUT_LIMIT, ShellJob};
use amboy_registry::JobInterchange;
use serde_json::json;

use common::TempDir;

const NO_ARGS: [&str; 0] = [];

/// Far more than a killed process needs to die, and than any command here needs to run.
const GENEROUS: Duration = Duration::from_secs(10);

#[tokio::test]
async fn env_prints_exactly_its_environment() {
    let job = ShellJob::new("env", NO_ARGS).with_env("MSG", "foo");
    run_job(&job).await.expect("env succeeds");
    assert_eq!(job.output(), "MSG=foo");
    assert_eq!(job.exit_code(), Some(0));
    let status = job.status();
    assert!(status.completed);
    assert!(status.errors.is_empty());
}

#[tokio::test]
async fn a_missing_binary_is_an_error_but_the_job_completes() {
    let job = ShellJob::new("amboy-jobs-no-such-program", NO_ARGS).with_id("missing");
    let error = run_job(&job).await.expect_err("no such program");
    assert_eq!(
        error.message(),
        "shell job 'missing': program 'amboy-jobs-no-such-program' not found in PATH"
    );
    assert!(job.status().completed);
    assert_eq!(job.status().errors.len(), 1);
    assert_eq!(job.exit_code(), None);
    assert_eq!(job.output(), "");
}

#[tokio::test]
async fn a_missing_program_path_is_an_error() {
    let job = ShellJob::new("/amboy-jobs/no/such/program", NO_ARGS).with_id("missing-path");
    let error = run_job(&job).await.expect_err("no such program");
    assert_eq!(
        error.message(),
        "shell job 'missing-path': program '/amboy-jobs/no/such/program' not found"
    );
    assert!(job.status().completed);
}

#[tokio::test]
async fn stdout_and_stderr_are_captured_in_the_order_written() {
    let job = ShellJob::new(
        "sh",
        [
            "-c",
            "echo out; echo err >&2; echo 'out again'; echo '  ' >&2",
        ],
    );
    run_job(&job).await.expect("sh succeeds");
    assert_eq!(job.output(), "out\nerr\nout again");
}

#[tokio::test]
async fn a_non_zero_exit_status_is_the_jobs_error() {
    let job = ShellJob::new("sh", ["-c", "echo failing >&2; exit 3"]).with_id("exits-3");
    let error = run_job(&job).await.expect_err("exit 3 fails");
    assert_eq!(
        error.message(),
        "shell job 'exits-3': 'sh' failed: exit status 3"
    );
    assert_eq!(job.exit_code(), Some(3));
    assert_eq!(job.output(), "failing");
    let status = job.status();
    assert!(status.completed);
    assert_eq!(status.errors, [error.message()]);
}

#[tokio::test]
async fn a_command_killed_by_a_signal_reports_it() {
    let job = ShellJob::new("sh", ["-c", "kill -TERM $$"]).with_id("terminated");
    let error = run_job(&job).await.expect_err("killed");
    assert_eq!(
        error.message(),
        "shell job 'terminated': 'sh' was killed by signal 15"
    );
    assert_eq!(job.exit_code(), None);
}

#[tokio::test]
async fn arguments_reach_the_program_as_given() {
    let job = ShellJob::new("printf", ["%s|", "a b", "$HOME", "'quoted'", ""]);
    run_job(&job).await.expect("printf succeeds");
    assert_eq!(job.output(), "a b|$HOME|'quoted'||");
}

#[tokio::test]
async fn the_working_directory_is_honoured() {
    let dir = TempDir::new("working-dir");
    let job = ShellJob::new("pwd", NO_ARGS).with_working_dir(dir.path().to_str().unwrap());
    run_job(&job).await.expect("pwd succeeds");
    let expected = dir.path().canonicalize().unwrap();
    assert_eq!(job.output(), expected.to_str().unwrap());
}

#[tokio::test]
async fn a_missing_working_directory_is_an_error() {
    let dir = TempDir::new("missing-dir");
    let missing = dir.path().join("not-there");
    let job = ShellJob::new("pwd", NO_ARGS)
        .with_id("no-dir")
        .with_working_dir(missing.to_str().unwrap());
    let error = run_job(&job).await.expect_err("no such directory");
    assert_eq!(
        error.message(),
        format!(
            "shell job 'no-dir': working directory '{}' does not exist",
            missing.display()
        )
    );
    assert!(job.status().completed);
}

#[tokio::test]
async fn the_environment_is_exactly_env_unless_inherited() {
    // Tests run with a PATH; a command run with amboy's rule does not see it.
    assert!(std::env::var_os("PATH").is_some());
    let own = ShellJob::new("env", NO_ARGS);
    run_job(&own).await.expect("env succeeds");
    assert_eq!(own.output(), "");

    let inherited = ShellJob::new("env", NO_ARGS)
        .with_inherited_env()
        .with_env("MSG", "foo")
        .with_env("PATH", "/usr/bin:/bin");
    run_job(&inherited).await.expect("env succeeds");
    let output = inherited.output();
    let lines: Vec<&str> = output.lines().collect();
    assert!(lines.contains(&"MSG=foo"), "{lines:?}");
    assert!(lines.contains(&"PATH=/usr/bin:/bin"), "{lines:?}");
    assert!(
        lines.len() > 2,
        "the parent's environment is there too: {lines:?}"
    );
}

#[tokio::test]
async fn the_program_is_looked_up_in_envs_path() {
    let job = ShellJob::new("env", NO_ARGS).with_env("PATH", "/amboy-jobs/nowhere");
    let error = run_job(&job).await.expect_err("not in that PATH");
    assert!(
        error.message().ends_with("program 'env' not found in PATH"),
        "{error}"
    );
}

#[tokio::test]
async fn output_is_bounded_to_its_tail() {
    // 200 000 bytes of digits, then a last line.
    let job = ShellJob::new(
        "sh",
        ["-c", "yes 0123456789 | head -c 200000; echo; echo END"],
    )
    .with_inherited_env();
    run_job(&job).await.expect("sh succeeds");
    let output = job.output();
    let (note, tail) = output.split_once('\n').expect("a note, then the output");
    let dropped = 200_000 + 1 + 4 - OUTPUT_LIMIT;
    assert_eq!(
        note,
        format!(
            "[output truncated: the first {dropped} bytes were dropped, the last {OUTPUT_LIMIT} bytes follow]"
        )
    );
    assert!(tail.ends_with("\nEND"));
    // The tail is the last OUTPUT_LIMIT bytes, trimmed.
    assert!(tail.len() <= OUTPUT_LIMIT);
    assert!(tail.len() > OUTPUT_LIMIT - 12);
    // `yes` repeats its line; the cut falls inside the first line kept, and `head` cuts the
    // last one short.
    let lines: Vec<&str> = tail.lines().collect();
    let (first, rest) = lines.split_first().unwrap();
    let (end, rest) = rest.split_last().unwrap();
    let (cut_short, full) = rest.split_last().unwrap();
    assert!("0123456789".ends_with(first), "{first}");
    assert!(full.iter().all(|line| *line == "0123456789"));
    assert_eq!((*cut_short, *end), ("012345678", "END"));
}

#[tokio::test]
async fn max_time_kills_the_command_and_its_process_group() {
    let dir = TempDir::new("max-time");
    let pids = dir.path().join("pids");
    let job = ShellJob::new("sh", ["-c", &common::sleeper_script(&pids)])
        .with_id("too-slow")
        .with_inherited_env()
        .with_max_time(Duration::from_secs(2));

    let started = Instant::now();
    let error = run_job(&job).await.expect_err("killed at max_time");
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_secs(2), "{elapsed:?}");
    assert!(elapsed < GENEROUS, "{elapsed:?}");
    assert!(
        error.message().contains("context deadline exceeded"),
        "{error}"
    );
    assert!(job.status().completed);
    assert_eq!(job.exit_code(), None);

    // The shell and the sleep it started in the background both die.
    let pids = common::read_pids(&pids);
    assert_eq!(pids.len(), 2);
    common::assert_gone(&pids, GENEROUS).await;
}

#[tokio::test]
async fn cancellation_kills_the_command_and_its_process_group() {
    let dir = TempDir::new("cancel");
    let pids = dir.path().join("pids");
    let job = ShellJob::new("sh", ["-c", &common::sleeper_script(&pids)])
        .with_id("cancelled")
        .with_inherited_env();
    let ctx = JobContext::new();
    let token = ctx.token().clone();

    let run = job.run(&ctx);
    let mut run = std::pin::pin!(run);
    tokio::select! {
        result = &mut run => panic!("the run ended on its own: {result:?}"),
        () = common::wait_for_file(&pids, GENEROUS) => {}
    }
    token.cancel();
    let error = tokio::time::timeout(GENEROUS, run)
        .await
        .expect("the run stops")
        .expect_err("cancelled");
    assert_eq!(
        error.message(),
        "shell job 'cancelled': 'sh' was killed with its process group: context canceled"
    );
    assert_eq!(job.exit_code(), None);
    common::assert_gone(&common::read_pids(&pids), GENEROUS).await;
}

#[tokio::test]
async fn a_dropped_run_kills_the_process_group() {
    let dir = TempDir::new("dropped");
    let pids = dir.path().join("pids");
    let job = ShellJob::new("sh", ["-c", &common::sleeper_script(&pids)]).with_inherited_env();
    let ctx = JobContext::new();
    {
        let run = job.run(&ctx);
        let mut run = std::pin::pin!(run);
        tokio::select! {
            result = &mut run => panic!("the run ended on its own: {result:?}"),
            () = common::wait_for_file(&pids, GENEROUS) => {}
        }
    }
    common::assert_gone(&common::read_pids(&pids), GENEROUS).await;
    assert_eq!(job.exit_code(), None);
}

#[tokio::test]
async fn a_cancelled_context_starts_nothing() {
    let ctx = JobContext::new();
    ctx.token().cancel();
    let job = ShellJob::new("true", NO_ARGS).with_id("never");
    let error = job.run(&ctx).await.expect_err("cancelled");
    assert_eq!(
        error.message(),
        "shell job 'never': 'true' was not started: context canceled"
    );
}

#[tokio::test]
async fn execute_records_the_kill_once() {
    let job = ShellJob::new("sleep", ["30"]).with_id("executed");
    let ctx =
        JobContext::new().with_deadline(amboy_core::max_time_deadline(Duration::from_millis(200)));
    let outcome = tokio::time::timeout(GENEROUS, execute(&job, &ctx))
        .await
        .expect("the run stops");
    assert!(
        matches!(outcome, RunOutcome::Failed | RunOutcome::TimedOut),
        "{outcome:?}"
    );
    let errors = job.status().errors;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("context deadline exceeded"),
        "{errors:?}"
    );
}

#[tokio::test]
async fn a_shell_job_round_trips_through_its_envelope() {
    let job = ShellJob::new("echo", ["hi"])
        .with_id("round-trip")
        .with_env("A", "b")
        .with_working_dir("/");
    run_job(&job).await.expect("echo succeeds");

    let interchange = JobInterchange::from_job(&job).expect("encodes");
    assert_eq!(interchange.type_name, "shell");
    assert_eq!(interchange.version, 1);
    let body: serde_json::Value = serde_json::from_str(interchange.job.get()).unwrap();
    assert_eq!(
        body,
        json!({
            "command": "echo",
            "args": ["hi"],
            "env": {"A": "b"},
            "inherit_env": false,
            "working_dir": "/",
            "output": "hi",
            "exit_code": 0,
            "job_base": {"name": "round-trip", "job_type": {"name": "shell", "version": 1}},
        })
    );

    let json = interchange.to_json().expect("to JSON");
    let decoded = JobInterchange::from_json(&json)
        .expect("from JSON")
        .resolve()
        .expect("resolves");
    assert_eq!(decoded.job_type().name, "shell");
    assert!(decoded.status().completed);
    let shell = (&*decoded as &dyn Any)
        .downcast_ref::<ShellJob>()
        .expect("a shell job");
    assert_eq!(shell.id(), "round-trip");
    assert_eq!(shell.command(), "echo");
    assert_eq!(shell.args(), ["hi"]);
    assert_eq!(shell.env().get("A").map(String::as_str), Some("b"));
    assert!(!shell.inherit_env());
    assert_eq!(shell.working_dir(), Some("/"));
    assert_eq!(shell.output(), "hi");
    assert_eq!(shell.exit_code(), Some(0));
}

#[tokio::test]
async fn an_amboy_document_decodes_and_runs_as_amboy_runs_it() {
    // As amboy (Go) writes a shell job: the whole command line in `command`, no `args`.
    let document = json!({
        "name": "shell-job-7-env",
        "type": "shell",
        "version": 1,
        "status": {"in_prog": false, "completed": false, "mod_count": 0, "err_count": 0},
        "retry_info": {},
        "time_info": {"max_time": 0},
        "job": {
            "command": "env -u NOPE",
            "output": "",
            "working_dir": "",
            "env": {"MSG": "foo"},
            "job_base": {"name": "shell-job-7-env", "job_type": {"name": "shell", "version": 1}},
        },
    });
    let job = JobInterchange::from_json(&document.to_string())
        .expect("from JSON")
        .resolve()
        .expect("resolves");
    let shell = (&*job as &dyn Any).downcast_ref::<ShellJob>().unwrap();
    assert_eq!(shell.command(), "env");
    assert_eq!(shell.args(), ["-u", "NOPE"]);
    assert_eq!(shell.working_dir(), None);
    run_job(&*job).await.expect("env succeeds");
    assert_eq!(shell.output(), "MSG=foo");
}

#[test]
fn ids_name_the_program() {
    let job = ShellJob::new("/bin/echo", ["hi"]);
    let id = job.id();
    let uuid = id
        .strip_prefix("shell-job-")
        .and_then(|rest| rest.strip_suffix("-echo"))
        .unwrap_or_else(|| panic!("unexpected ID {id}"));
    assert_eq!(uuid.len(), 36, "{id}");
    assert_ne!(
        ShellJob::new("echo", NO_ARGS).id(),
        ShellJob::new("echo", NO_ARGS).id()
    );
}

#[test]
fn a_command_line_is_a_program_and_its_arguments() {
    let line = ["echo".to_owned(), "hi there".to_owned(), "x".to_owned()];
    let job = ShellJob::from_command_line(&line).unwrap();
    assert_eq!(job.command(), "echo");
    assert_eq!(job.args(), ["hi there", "x"]);
    assert!(job.id().ends_with("-echo"));
    assert_eq!(
        ShellJob::from_command_line::<String>(&[]).unwrap_err(),
        JobsError::EmptyCommand
    );
    assert_eq!(
        ShellJob::from_command_line(&["", "x"]).unwrap_err(),
        JobsError::EmptyCommand
    );
}

#[test]
fn creates_makes_the_job_pass_once_the_file_exists() {
    let dir = TempDir::new("creates");
    let target = dir.path().join("made");
    let job =
        ShellJob::new("touch", [target.to_str().unwrap()]).with_creates(target.to_str().unwrap());
    assert_eq!(job.dependency().manager_type().name, "create-file");
    assert_eq!(job.dependency().state(), State::Ready);
    std::fs::write(&target, b"").unwrap();
    assert_eq!(job.dependency().state(), State::Passed);
}

#[test]
fn the_job_type_is_shell_version_1() {
    amboy_jobs::register_builtin_jobs();
    assert!(amboy_registry::is_registered_job_type("shell"));
    let job = ShellJob::new("true", NO_ARGS);
    assert_eq!(job.job_type().name, "shell");
    assert_eq!(job.job_type().version, 1);
}

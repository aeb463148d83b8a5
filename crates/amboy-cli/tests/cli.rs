//! The `amboy` binary against a live service: tables, `--json`, exit codes, waits; and
//! `amboy serve` itself, in memory and on PostgreSQL, stopped by SIGTERM.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::Duration;

use amboy_core::{Queue, RetryHandlerOptions, RetryableQueue};
use amboy_management::QueueManager;
use amboy_queue_local::LimitedSizeSerializableQueue;
use amboy_rest::RestService;
use amboy_retry::BasicRetryHandler;
use amboy_runner::AbortablePool;
use assert_cmd::Command;

/// A service on a free port, with a serializable queue run by an abortable pool of 2.
async fn service(token: Option<&str>) -> (String, Arc<LimitedSizeSerializableQueue>) {
    amboy_jobs::register_builtin_jobs();
    let queue = LimitedSizeSerializableQueue::new(256);
    let pool = AbortablePool::new(2);
    queue.set_runner(pool.clone()).expect("a runner");
    queue
        .set_retry_handler(
            BasicRetryHandler::new(RetryHandlerOptions::default()).expect("a handler"),
        )
        .expect("a handler");
    queue.start().await.expect("start");
    let mut service = RestService::new()
        .queue(queue.clone())
        .manager(Arc::new(QueueManager::new(queue.clone())))
        .pool(pool);
    if let Some(token) = token {
        service = service.token(token);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let url = format!("http://{}", listener.local_addr().expect("an address"));
    tokio::spawn(service.serve(listener, std::future::pending()));
    (url, queue)
}

/// `amboy --service <url> <args>`, without the caller's environment's settings.
fn amboy(url: &str, args: &[&str]) -> Command {
    let mut command = Command::cargo_bin("amboy").expect("the binary");
    command
        .env_remove("AMBOY_SERVICE")
        .env_remove("AMBOY_TOKEN")
        .env_remove("AMBOY_DATABASE_URL")
        .arg("--service")
        .arg(url)
        .args(args)
        .timeout(Duration::from_secs(30));
    command
}

fn stdout_of(command: &mut Command, code: i32) -> String {
    let output = command.output().expect("it runs");
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8")
}

fn stderr_of(command: &mut Command, code: i32) -> String {
    let output = command.output().expect("it runs");
    assert_eq!(output.status.code(), Some(code), "{output:?}");
    String::from_utf8(output.stderr).expect("UTF-8")
}

fn put_shell(url: &str, command: &[&str]) -> String {
    let mut args = vec!["job", "put", "shell", "--"];
    args.extend_from_slice(command);
    stdout_of(&mut amboy(url, &args), 0).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_wait_and_read_a_shell_job() {
    let (url, queue) = service(None).await;
    let id = put_shell(&url, &["echo", "hi"]);
    assert!(
        id.starts_with("shell-job-") && id.ends_with("-echo"),
        "{id}"
    );
    let waited = stdout_of(
        &mut amboy(&url, &["job", "wait", &id, "--timeout", "20s"]),
        0,
    );
    let lines: Vec<&str> = waited.lines().collect();
    assert_eq!(lines.len(), 2, "{waited}");
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("State"),
        "{waited}"
    );
    assert!(
        lines[1].starts_with(&id) && lines[1].contains("completed"),
        "{waited}"
    );
    let status: serde_json::Value = serde_json::from_str(&stdout_of(
        &mut amboy(&url, &["--json", "job", "status", &id]),
        0,
    ))
    .expect("JSON");
    assert_eq!(status["completed"], true, "{status}");
    let envelope: serde_json::Value =
        serde_json::from_str(&stdout_of(&mut amboy(&url, &["job", "get", &id]), 0)).expect("JSON");
    assert_eq!(
        (&envelope["type"], &envelope["job"]["output"]),
        (&"shell".into(), &"hi".into())
    );
    assert!(
        queue
            .get(&id)
            .await
            .expect("stored")
            .base()
            .status()
            .completed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_tables_json_and_completion() {
    let (url, _queue) = service(None).await;
    let id = put_shell(&url, &["true"]);
    stdout_of(&mut amboy(&url, &["job", "wait", &id]), 0);
    let table = stdout_of(
        &mut amboy(&url, &["management", "status", "--filter", "completed"]),
        0,
    );
    let lines: Vec<Vec<&str>> = table
        .lines()
        .map(|line| line.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines,
        [vec!["Job", "Type", "Count", "Group"], vec!["shell", "1"]],
        "{table}"
    );
    let json: serde_json::Value = serde_json::from_str(&stdout_of(
        &mut amboy(
            &url,
            &["--json", "management", "status", "--filter", "completed"],
        ),
        0,
    ))
    .expect("JSON");
    assert_eq!(
        json,
        serde_json::json!([{ "type": "shell", "group": "", "count": 1 }])
    );
    let ids = stdout_of(
        &mut amboy(
            &url,
            &[
                "management",
                "jobs",
                "--type",
                "shell",
                "--filter",
                "completed",
            ],
        ),
        0,
    );
    assert!(
        ids.lines().nth(1).is_some_and(|row| row.contains(&id)),
        "{ids}"
    );
    // A sleeping job, completed by the manager: it will not run again.
    let sleeper = put_shell(&url, &["sleep", "30"]);
    let done = stdout_of(
        &mut amboy(
            &url,
            &[
                "management",
                "complete-jobs-by-pattern",
                "--pattern",
                "sleep$",
                "--filter",
                "all",
            ],
        ),
        0,
    );
    assert_eq!(done.trim(), "completed 1 all job(s) matching 'sleep$'");
    let listed = stdout_of(
        &mut amboy(&url, &["management", "list", "--filter", "completed"]),
        0,
    );
    assert!(
        listed.contains(&sleeper) && listed.contains(&id),
        "{listed}"
    );
    let shown = stdout_of(&mut amboy(&url, &["--json", "management", "show", &id]), 0);
    let shown: serde_json::Value = serde_json::from_str(&shown).expect("JSON");
    assert_eq!(shown["attempts"].as_array().map(Vec::len), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_say_what_happened() {
    let (url, _queue) = service(None).await;
    // No such job: 3.
    let stderr = stderr_of(&mut amboy(&url, &["job", "status", "missing"]), 3);
    assert!(stderr.contains("missing"), "{stderr}");
    stderr_of(
        &mut amboy(&url, &["management", "complete-job", "--id", "missing"]),
        3,
    );
    // A wait that runs out: 4.
    let sleeper = put_shell(&url, &["sleep", "30"]);
    let stderr = stderr_of(
        &mut amboy(&url, &["job", "wait", &sleeper, "--timeout", "300ms"]),
        4,
    );
    assert!(stderr.contains("did not finish"), "{stderr}");
    // A job that failed: 5, with its error in the table.
    let failing = put_shell(&url, &["false"]);
    let table = stdout_of(&mut amboy(&url, &["job", "wait", &failing]), 5);
    assert!(table.contains("exit status 1"), "{table}");
    // Bad usage: 2.
    let stderr = stderr_of(
        &mut amboy(&url, &["management", "status", "--filter", "bogus"]),
        2,
    );
    assert!(stderr.contains("bogus"), "{stderr}");
    stderr_of(&mut amboy(&url, &["management", "jobs"]), 2);
    stderr_of(&mut amboy(&url, &["job", "put", "shell"]), 2);
    // Nobody there: 1.
    let stderr = stderr_of(&mut amboy("http://127.0.0.1:9", &["job", "status", "x"]), 1);
    assert!(stderr.contains("could not reach"), "{stderr}");
    // A job type the service does not know: 1, naming it.
    let stderr = stderr_of(
        &mut amboy(&url, &["job", "put", "no-such-type", "--fields", "{}"]),
        1,
    );
    assert!(stderr.contains("no-such-type"), "{stderr}");
    amboy(&url, &["pool", "abort-all"]).assert().success();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_commands_list_check_and_abort() {
    let (url, _queue) = service(None).await;
    let sleeper = put_shell(&url, &["sleep", "30"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let listed = stdout_of(&mut amboy(&url, &["pool", "list"]), 0);
        if listed.contains(&sleeper) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the job never ran: {listed}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let check = stdout_of(
        &mut amboy(&url, &["pool", "check", "--id", &sleeper, "--id", "other"]),
        0,
    );
    let rows: Vec<Vec<&str>> = check
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [vec![sleeper.as_str(), "true"], vec!["other", "false"]],
        "{check}"
    );
    let aborted = stdout_of(
        &mut amboy(&url, &["--json", "pool", "abort", "--id", &sleeper]),
        0,
    );
    let aborted: serde_json::Value = serde_json::from_str(&aborted).expect("JSON");
    assert_eq!(aborted[0]["aborted"], true, "{aborted}");
    // Aborting a job that is not running fails: exit 1, with the reason in the table.
    let table = stdout_of(&mut amboy(&url, &["pool", "abort", "--id", &sleeper]), 1);
    assert!(
        table.contains("false") && table.contains("not running"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_comes_from_the_flag_or_the_environment() {
    let (url, _queue) = service(Some("s3cret")).await;
    let stderr = stderr_of(&mut amboy(&url, &["management", "status"]), 1);
    assert!(stderr.contains("unauthorized"), "{stderr}");
    amboy(&url, &["--token", "s3cret", "management", "status"])
        .assert()
        .success();
    amboy(&url, &["management", "status"])
        .env("AMBOY_TOKEN", "s3cret")
        .assert()
        .success();
}

mod reqwest {
    /// The body of a GET, from outside any runtime.
    pub(super) fn blocking_get(url: &str) -> String {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(async {
                ::reqwest::get(url)
                    .await
                    .expect("an answer")
                    .text()
                    .await
                    .expect("a body")
            })
    }
}

/// A running `amboy serve`, its address read from its first line.
struct Served {
    child: Child,
    url: String,
}

fn start_serve(extra: &[&str]) -> Served {
    let mut command = std::process::Command::new(assert_cmd::cargo::cargo_bin("amboy"));
    command
        .env_remove("AMBOY_TOKEN")
        .env_remove("AMBOY_DATABASE_URL")
        .args(["serve", "--listen", "127.0.0.1:0", "--workers", "2"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("amboy serve starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("its first line");
    let url = line
        .split_whitespace()
        .find(|word| word.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned();
    Served { child, url }
}

impl Served {
    /// SIGTERM, then the exit status within 30 s.
    fn stop(mut self) -> (Option<i32>, String) {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                let mut stderr = String::new();
                std::io::Read::read_to_string(
                    &mut self.child.stderr.take().expect("stderr"),
                    &mut stderr,
                )
                .expect("stderr");
                return (status.code(), stderr);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "amboy serve did not stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn serve_refuses_to_listen_beyond_loopback_without_a_token() {
    let output = std::process::Command::new(assert_cmd::cargo::cargo_bin("amboy"))
        .env_remove("AMBOY_TOKEN")
        .args(["serve", "--listen", "0.0.0.0:0"])
        .output()
        .expect("it runs");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("without a token"), "{stderr}");
}

#[test]
fn serve_in_memory_runs_jobs_and_stops_on_sigterm() {
    let served = start_serve(&[]);
    let id = put_shell(&served.url, &["echo", "served"]);
    let waited = stdout_of(&mut amboy(&served.url, &["--json", "job", "wait", &id]), 0);
    let waited: serde_json::Value = serde_json::from_str(&waited).expect("JSON");
    assert_eq!(waited["completed"], true, "{waited}");
    // Prometheus scrapes the service.
    let scraped = reqwest::blocking_get(&format!("{}/metrics", served.url));
    assert!(
        scraped.contains(
            "amboy_jobs_completed_total{queue=\"queue.local.fixed.serializable\",type=\"shell\"} 1"
        ),
        "{scraped}"
    );
    assert!(
        scraped.contains(
            "amboy_queue_jobs{queue=\"queue.local.fixed.serializable\",state=\"completed\"} 1"
        ),
        "{scraped}"
    );
    let (code, stderr) = served.stop();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("stopped"), "{stderr}");
}

#[test]
fn serve_on_postgres_keeps_jobs_in_the_database() {
    let url = std::env::var("AMBOY_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let schema = format!("amboy_test_cli_{}", std::process::id());
    let served = start_serve(&["--database-url", &url, "--schema", &schema]);
    let id = put_shell(&served.url, &["echo", "stored"]);
    stdout_of(&mut amboy(&served.url, &["job", "wait", &id]), 0);
    let counts = stdout_of(
        &mut amboy(
            &served.url,
            &["--json", "management", "status", "--filter", "completed"],
        ),
        0,
    );
    let counts: serde_json::Value = serde_json::from_str(&counts).expect("JSON");
    assert_eq!(
        counts,
        serde_json::json!([{ "type": "shell", "group": "", "count": 1 }])
    );
    let (code, stderr) = served.stop();
    assert_eq!(code, Some(0), "{stderr}");
    // The job is in the schema the service used.
    let output = std::process::Command::new("psql")
        .args([
            &url,
            "-At",
            "-c",
            &format!("SELECT count(*) FROM {schema}.jobs WHERE id = '{id}' AND state = 2"),
        ])
        .output();
    if let Ok(output) = output
        && output.status.success()
    {
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "1");
    }
    let _ = std::process::Command::new("psql")
        .args([
            &url,
            "-c",
            &format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
        ])
        .output();
}

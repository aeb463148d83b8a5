//! A worker process for the tests that run one PostgreSQL queue in several processes
//! (`tests/postgres_processes.rs`): a `PostgresQueue` on the test server
//! (`AMBOY_TEST_DATABASE_URL`) with a `LocalWorkers` runner and a `BasicRetryHandler`, running
//! the jobs of [`amboy_tests::recorded`], which record each run in the test's schema.
//!
//! ```text
//! pg_worker --schema S [--workers 4] [--lock-timeout-ms 10000] [--poll-ms 100]
//!           [--app-name NAME] [--stall-after N]
//! ```
//!
//! * `--app-name`: the `application_name` of the queue's connections (the job's own connections
//!   get `NAME-recorder`), so that a test can find and terminate them;
//! * `--stall-after N`: the run after the first `N` of this process records itself and then
//!   hangs, holding its job in progress while the process lives.
//!
//! Prints `ready <queue id>` once started; stops gracefully (`Queue::shutdown`) on SIGTERM,
//! Ctrl-C or when its standard input closes (the test that spawned it ended), then prints
//! `stopped`.

use std::io::Write as _;
use std::str::FromStr;
use std::time::Duration;

use amboy::RetryHandlerOptions;
use amboy::postgres::{PostgresQueue, PostgresQueueOptions};
use amboy::prelude::*;
use amboy::retry::BasicRetryHandler;
use amboy::runner::LocalWorkers;
use amboy_tests::recorded;

/// The command line.
#[derive(Debug)]
struct Args {
    schema: String,
    workers: usize,
    lock_timeout: Duration,
    poll: Duration,
    app_name: String,
    stall_after: Option<u64>,
}

impl Args {
    fn parse() -> Result<Args, String> {
        let mut args = Args {
            schema: String::new(),
            workers: 4,
            lock_timeout: Duration::from_secs(10),
            poll: Duration::from_millis(100),
            app_name: "amboy_pg_worker".to_owned(),
            stall_after: None,
        };
        let mut given = std::env::args().skip(1);
        while let Some(flag) = given.next() {
            let value = given
                .next()
                .ok_or_else(|| format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--schema" => args.schema = value,
                "--workers" => args.workers = number(&flag, &value)?,
                "--lock-timeout-ms" => {
                    args.lock_timeout = Duration::from_millis(number(&flag, &value)?);
                }
                "--poll-ms" => args.poll = Duration::from_millis(number(&flag, &value)?),
                "--app-name" => args.app_name = value,
                "--stall-after" => args.stall_after = Some(number(&flag, &value)?),
                _ => return Err(format!("unknown flag {flag}")),
            }
        }
        if args.schema.is_empty() {
            return Err("--schema is required".to_owned());
        }
        Ok(args)
    }
}

fn number<T: FromStr>(flag: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{flag}: '{value}' is not a number"))
}

/// Returns on SIGTERM, Ctrl-C, or the end of standard input.
async fn stop_requested() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    // A thread of its own reads standard input: a blocking read in the runtime's pool would
    // keep the runtime, and so the process, from ending.
    let (closed, stdin_closed) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        let _ = closed.send(());
    });
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = stdin_closed => {}
    }
}

/// Writes the queue's warnings and errors to standard error, where the test shows them if it
/// fails.
struct Warnings;

impl tracing::Subscriber for Warnings {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        *metadata.level() <= tracing::Level::WARN
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Fields(String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.push_str(&format!(" {}={value:?}", field.name()));
            }
        }
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        eprintln!(
            "pg_worker {} {} {}:{}",
            std::process::id(),
            chrono::Utc::now().format("%H:%M:%S%.3f"),
            event.metadata().level(),
            fields.0
        );
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse()?;
    tracing::subscriber::set_global_default(Warnings)?;
    let jobs_pool = recorded::pool(&format!("{}-recorder", args.app_name), 2);
    recorded::register(&args.schema, jobs_pool, args.stall_after);

    let queue_pool = recorded::pool(&args.app_name, 3);
    let mut options = PostgresQueueOptions::with_pool(queue_pool)
        .schema(&args.schema)
        .lock_timeout(args.lock_timeout)
        .poll_interval(args.poll);
    options.maintenance_interval = Duration::from_millis(200);
    let queue = PostgresQueue::new(options)?;
    queue.set_runner(LocalWorkers::new(args.workers))?;
    queue.set_retry_handler(BasicRetryHandler::new(RetryHandlerOptions::default())?)?;
    queue.start().await?;
    println!("ready {}", queue.id());
    std::io::stdout().flush()?;

    stop_requested().await;
    queue.shutdown(Duration::from_secs(5)).await;
    println!("stopped");
    Ok(())
}

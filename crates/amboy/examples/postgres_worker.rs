//! Many worker processes on one PostgreSQL queue. Run as many copies of this program as you
//! like, on one machine or several, against one database: together they are one queue. Each
//! claims jobs from the shared tables and runs them; a job runs in one process at a time; the
//! jobs of a process that dies are taken over by the others once their locks time out.
//! SIGTERM (what `kill`, systemd and Kubernetes send) or Ctrl-C stops a worker gracefully: it
//! takes no new job, lets its running jobs finish, and leaves the rest to the others.
//! docs/postgres.md says more.
//!
//! ```sh
//! export DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres
//! cargo build --example postgres_worker --features full
//! target/debug/examples/postgres_worker &        # three workers, one queue
//! target/debug/examples/postgres_worker &
//! target/debug/examples/postgres_worker &
//! target/debug/examples/postgres_worker put 1000  # a producer: puts 1,000 jobs and exits
//! kill %1 %2 %3                                  # each stops gracefully
//! ```

use std::sync::Arc;
use std::time::Duration;

use amboy::postgres::{PostgresQueue, PostgresQueueOptions};
use amboy::prelude::*;
use amboy::retry::BasicRetryHandler;
use amboy::runner::LocalWorkers;
use amboy::{Base, JobContext, JobError, JobRef, RetryHandlerOptions, typetag};
use serde::{Deserialize, Serialize};

/// Makes a thumbnail (here: takes 50 ms). Every process that runs jobs of this type links it,
/// which registers it: a job is stored with its type's name and decoded by whichever process
/// claims it.
#[derive(Serialize, Deserialize)]
struct Thumbnail {
    base: Base,
    image: u32,
}

#[typetag::serde(name = "thumbnail")]
#[amboy::async_trait]
impl Job for Thumbnail {
    fn base(&self) -> &Base {
        &self.base
    }

    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        let attempt = self.base.retry_info().current_attempt;
        if self.image.is_multiple_of(10) && attempt == 0 {
            // Its next attempt is put by the retry handler, and may run in another process.
            return Err(JobError::retryable("the image store is busy"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        println!(
            "process {}: image {} (attempt {attempt})",
            std::process::id(),
            self.image
        );
        Ok(())
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate()).expect("a SIGTERM handler");
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

#[tokio::main]
async fn main() -> amboy::Result<()> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    // The schema (created on first use) and group name the queue: every process naming the
    // same ones shares it. A crashed worker's jobs wait out the lock timeout (10 minutes by
    // default; locks are refreshed every quarter of it while jobs run).
    let options = PostgresQueueOptions::with_url(url)
        .schema("amboy_example")
        .lock_timeout(Duration::from_secs(30));
    let queue = PostgresQueue::new(options)?;

    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some("put") {
        // A producer needs no runner and does not start the queue.
        let count: u32 = args.next().and_then(|n| n.parse().ok()).unwrap_or(100);
        let batch = amboy::chrono::Utc::now().timestamp_millis();
        let jobs: Vec<JobRef> = (0..count)
            .map(|image| {
                let base = Base::with_id(format!("thumbnail-{batch}-{image}")).with_retryable(true);
                Arc::new(Thumbnail { base, image }) as JobRef
            })
            .collect();
        queue.put_many(jobs).await?;
        println!("put {count} jobs; {}", queue.stats().await?);
        return Ok(());
    }

    queue.set_runner(LocalWorkers::new(8))?;
    queue.set_retry_handler(BasicRetryHandler::new(RetryHandlerOptions::default())?)?;
    queue.start().await?;
    println!(
        "process {} works for queue {}",
        std::process::id(),
        queue.id()
    );

    stop_signal().await;
    // No new job starts; running ones get 30 seconds to finish (then they are cancelled and
    // completed with the error). Jobs claimed but not started go back at once, and every job
    // not started is left to the other processes.
    queue.shutdown(Duration::from_secs(30)).await;
    println!(
        "process {} stopped; {}",
        std::process::id(),
        queue.stats().await?
    );
    Ok(())
}

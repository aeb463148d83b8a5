//! `amboy serve`: the REST service and a worker pool, until SIGTERM or Ctrl-C.

use std::sync::Arc;
use std::time::Duration;

use amboy_core::{Queue, RetryHandlerOptions, RetryableQueue};
use amboy_management::{Manager, QueueManager};
use amboy_queue_local::LimitedSizeSerializableQueue;
use amboy_queue_postgres::{PostgresManager, PostgresQueue, PostgresQueueOptions};
use amboy_rest::RestService;
use amboy_retry::BasicRetryHandler;
use amboy_runner::AbortablePool;
use clap::Args;

use crate::{Failure, parse_duration};

/// Where and how to serve.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The address to listen on (port 0: any free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: String,
    /// A PostgreSQL database to keep the queue in, rather than memory.
    #[arg(long, env = "AMBOY_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// The PostgreSQL schema.
    #[arg(long, default_value = "amboy")]
    schema: String,
    /// The queue's group in the PostgreSQL tables.
    #[arg(long, default_value = "")]
    group: String,
    /// Workers running jobs.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// How many jobs the in-memory queue holds.
    #[arg(long, default_value_t = 10_000)]
    capacity: usize,
    /// How long running jobs may take to finish once asked to stop.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    grace: Duration,
    /// Listen beyond this machine without a token: anyone who reaches the port can then run
    /// commands (the `shell` job).
    #[arg(long)]
    insecure: bool,
}

/// Serves until SIGTERM or Ctrl-C; running jobs get `grace` to finish.
pub(crate) async fn serve(args: ServeArgs, token: Option<String>) -> Result<u8, Failure> {
    amboy_jobs::register_builtin_jobs();
    // Bound before the queue starts: a port in use leaves no job claimed.
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|error| Failure::new(1, format!("cannot listen on {}: {error}", args.listen)))?;
    let address = listener
        .local_addr()
        .map_err(|error| Failure::new(1, format!("cannot read the address: {error}")))?;
    if token.is_none() && !address.ip().is_loopback() && !args.insecure {
        return Err(Failure::new(
            2,
            format!(
                "refusing to serve on {address} without a token: anyone reaching it could run \
                 commands as shell jobs; give --token (or AMBOY_TOKEN), listen on a loopback \
                 address, or pass --insecure"
            ),
        ));
    }
    // Before the queue starts, so that every job's metrics are recorded.
    let metrics = amboy_rest::install_prometheus()?;
    let pool = AbortablePool::new(args.workers.max(1));
    let handler = BasicRetryHandler::new(RetryHandlerOptions::default())?;
    let (queue, manager): (Arc<dyn Queue>, Arc<dyn Manager>) = match &args.database_url {
        Some(url) => {
            let queue = PostgresQueue::new(
                PostgresQueueOptions::with_url(url)
                    .schema(&args.schema)
                    .group(&args.group),
            )?;
            queue.set_runner(pool.clone())?;
            queue.set_retry_handler(handler)?;
            let manager = Arc::new(PostgresManager::for_queue(&queue));
            (queue, manager)
        }
        None => {
            let queue = LimitedSizeSerializableQueue::new(args.capacity.max(1));
            queue.set_runner(pool.clone())?;
            queue.set_retry_handler(handler)?;
            let manager = Arc::new(QueueManager::new(queue.clone()));
            (queue, manager)
        }
    };
    queue.start().await?;
    let store = match &args.database_url {
        Some(_) => format!("PostgreSQL schema '{}'", args.schema),
        None => "memory".to_owned(),
    };
    println!(
        "amboy: serving on http://{address} ({store}, {} workers)",
        args.workers.max(1)
    );
    let mut service = RestService::new()
        .queue(queue.clone())
        .manager(manager)
        .pool(pool)
        .metrics(metrics);
    if let Some(token) = token {
        service = service.token(token);
    }
    // At the signal, the service stops taking requests while the queue stops dispatching and
    // gives its running jobs their grace, at the same time.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let signalled = async move {
        stop_signal().await;
        let _ = stop.send(true);
    };
    let mut watch = stopped.clone();
    let serving = service.serve(listener, async move {
        let _ = watch.wait_for(|stop| *stop).await;
    });
    let mut watch = stopped;
    let stopping = async {
        let _ = watch.wait_for(|stop| *stop).await;
        queue.shutdown(args.grace).await;
    };
    let (served, (), ()) = tokio::join!(serving, stopping, signalled);
    served.map_err(|error| Failure::new(1, format!("the service failed: {error}")))?;
    eprintln!("amboy: stopped");
    Ok(0)
}

/// Resolves at SIGTERM or Ctrl-C.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

//! What every queue does to start and stop: its runner, its lifetime, its background tasks.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::{Error, Queue, Result, Runner};
use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A queue's runner, whether it started, its lifetime (cancelled when it closes or is dropped)
/// and its background tasks: the part of starting and stopping that every queue implementation
/// shares (the local queues and the PostgreSQL queue use it).
#[derive(Debug, Default)]
pub struct Lifecycle {
    runner: Mutex<Option<Arc<dyn Runner>>>,
    started: AtomicBool,
    /// Set with the lifetime's cancellation: read on every put, where the token's own check
    /// would take a lock.
    closed: AtomicBool,
    lifetime: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Lifecycle {
    /// Whether the queue started.
    pub fn started(&self) -> bool {
        self.started.load(Ordering::SeqCst)
    }

    /// Whether the queue closed (or was dropped).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Cancelled when the queue closes or is dropped ([`close`](Self::close)); wait on it,
    /// cancel it through `close`.
    pub fn lifetime(&self) -> &CancellationToken {
        &self.lifetime
    }

    /// Ends the queue's lifetime: puts are refused, background tasks stop.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.lifetime.cancel();
    }

    /// The queue's runner, if set.
    pub fn runner(&self) -> Option<Arc<dyn Runner>> {
        self.runner.lock().clone()
    }

    /// Sets the runner and gives it `queue`; not possible once started.
    pub fn set_runner(&self, runner: Arc<dyn Runner>, queue: Arc<dyn Queue>) -> Result<()> {
        if self.started() {
            return Err(Error::AlreadyStarted("queue"));
        }
        runner.set_queue(queue)?;
        *self.runner.lock() = Some(runner);
        Ok(())
    }

    /// Marks the queue `id` started and returns its runner; fails without a runner, once
    /// closed, or when started already.
    pub fn begin(&self, id: &str) -> Result<Arc<dyn Runner>> {
        let runner = self
            .runner()
            .ok_or_else(|| Error::invalid(format!("queue '{id}' has no runner")))?;
        if self.is_closed() {
            return Err(Error::Closed("queue"));
        }
        if self.started.swap(true, Ordering::SeqCst) {
            return Err(Error::AlreadyStarted("queue"));
        }
        Ok(runner)
    }

    /// Starts the runner; if it cannot start, neither has the queue.
    pub async fn start_runner(&self, runner: &Arc<dyn Runner>) -> Result<()> {
        let started = runner.start().await;
        if started.is_err() {
            self.started.store(false, Ordering::SeqCst);
        }
        started
    }

    /// Runs a background task until the queue closes.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.lock().push(tokio::spawn(task));
    }

    /// Closes the runner: its running jobs are cancelled and it waits for its workers.
    pub async fn close_runner(&self) {
        if let Some(runner) = self.runner() {
            runner.close().await;
        }
    }

    /// What a queue whose last handle is dropped does: nothing if it is closed already; else
    /// `close` in a task of its own inside a tokio runtime, or `stop_now` (synchronous, for
    /// what can be stopped without a runtime) outside one.
    pub fn abandon(
        &self,
        close: impl Future<Output = ()> + Send + 'static,
        stop_now: impl FnOnce(),
    ) {
        if self.is_closed() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(close);
            }
            Err(_) => stop_now(),
        }
    }

    /// Ends the queue's lifetime and waits for its background tasks.
    pub async fn end(&self) {
        self.close();
        let tasks = std::mem::take(&mut *self.tasks.lock());
        for task in tasks {
            let _ = task.await;
        }
    }
}

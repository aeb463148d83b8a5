//! The local worker pool.

use std::sync::{Arc, Weak};

use amboy_core::{Error, Queue, Result, Runner, execute_job};
use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// A fixed pool of workers, each a tokio task that runs one job at a time (amboy's
/// `LocalWorkers`).
///
/// A job that panics is completed with the panic message as its error, and its worker goes on
/// to the next job (amboy left the job in progress until its lock expired).
#[derive(Debug)]
pub struct LocalWorkers {
    size: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    queue: Option<Weak<dyn Queue>>,
    running: Option<Running>,
}

#[derive(Debug)]
struct Running {
    token: CancellationToken,
    workers: JoinSet<()>,
}

impl LocalWorkers {
    /// A pool of `size` workers (at least 1).
    pub fn new(size: usize) -> Arc<Self> {
        Arc::new(LocalWorkers {
            size: size.max(1),
            state: Mutex::new(State::default()),
        })
    }

    /// The number of workers.
    pub fn size(&self) -> usize {
        self.size
    }
}

#[async_trait]
impl Runner for LocalWorkers {
    fn started(&self) -> bool {
        self.state.lock().running.is_some()
    }

    fn set_queue(&self, queue: Arc<dyn Queue>) -> Result<()> {
        let mut state = self.state.lock();
        if state.running.is_some() {
            return Err(Error::AlreadyStarted("runner"));
        }
        state.queue = Some(Arc::downgrade(&queue));
        Ok(())
    }

    async fn start(&self) -> Result<()> {
        let mut state = self.state.lock();
        if state.running.is_some() {
            return Ok(());
        }
        let queue = state
            .queue
            .as_ref()
            .ok_or_else(|| Error::invalid("runner has no queue"))?
            .upgrade()
            .ok_or_else(|| Error::invalid("the runner's queue was dropped"))?;
        let token = CancellationToken::new();
        let mut workers = JoinSet::new();
        for _ in 0..self.size {
            workers.spawn(worker(queue.clone(), token.child_token()));
        }
        state.running = Some(Running { token, workers });
        Ok(())
    }

    async fn close(&self) {
        let running = self.state.lock().running.take();
        if let Some(mut running) = running {
            running.token.cancel();
            while running.workers.join_next().await.is_some() {}
        }
    }
}

/// Takes jobs until the pool closes or the queue does. Jobs' panics are caught where they run;
/// should the worker itself panic (a queue's bug), it starts over, so the pool keeps its size.
async fn worker(queue: Arc<dyn Queue>, token: CancellationToken) {
    loop {
        let work = std::panic::AssertUnwindSafe(work(&queue, &token));
        match futures::FutureExt::catch_unwind(work).await {
            Ok(()) => return,
            Err(panic) => tracing::error!(
                panic = amboy_core::panic_message(&*panic),
                "worker panicked outside a job; restarting it"
            ),
        }
    }
}

async fn work(queue: &Arc<dyn Queue>, token: &CancellationToken) {
    loop {
        let job = tokio::select! {
            biased;
            _ = token.cancelled() => return,
            job = queue.next() => job,
        };
        let Some(job) = job else { return };
        execute_job(&**queue, &job, token).await;
    }
}

//! The runner without workers.

use std::sync::{Arc, Weak};

use amboy_core::{Error, Queue, Result, Runner};
use async_trait::async_trait;
use parking_lot::Mutex;

/// A runner with no workers, for queues that are only written to here and whose jobs other
/// processes run (amboy's `NewNoop`).
///
/// It keeps the runner's contract: it starts only with a queue, and `close` stops it. Its queue
/// is set once: setting another while the first is alive is an error, as in amboy.
#[derive(Debug, Default)]
pub struct NoopRunner {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    queue: Option<Weak<dyn Queue>>,
    started: bool,
}

impl NoopRunner {
    /// A runner with no workers and no queue yet.
    pub fn new() -> Arc<Self> {
        Arc::new(NoopRunner::default())
    }
}

#[async_trait]
impl Runner for NoopRunner {
    fn started(&self) -> bool {
        self.state.lock().started
    }

    fn set_queue(&self, queue: Arc<dyn Queue>) -> Result<()> {
        let mut state = self.state.lock();
        if state.started {
            return Err(Error::AlreadyStarted("runner"));
        }
        if state
            .queue
            .as_ref()
            .is_some_and(|queue| queue.strong_count() > 0)
        {
            return Err(Error::invalid(
                "cannot override the runner's existing queue",
            ));
        }
        state.queue = Some(Arc::downgrade(&queue));
        Ok(())
    }

    async fn start(&self) -> Result<()> {
        let mut state = self.state.lock();
        match &state.queue {
            None => return Err(Error::invalid("cannot start a runner without a queue")),
            Some(queue) if queue.strong_count() == 0 => {
                return Err(Error::invalid("the runner's queue was dropped"));
            }
            Some(_) => {}
        }
        state.started = true;
        Ok(())
    }

    async fn close(&self) {
        self.state.lock().started = false;
    }
}

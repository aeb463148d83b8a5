//! What several test files of this crate share.

#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use amboy_core::{Error, JobRef, Queue, QueueInfo, QueueStats, Runner};
use tokio::sync::Notify;

/// How a scripted store answers a save.
pub type Answer = Box<dyn Fn(&JobRef) -> amboy_core::Result<()> + Send + Sync>;

/// A queue whose `save` is scripted by the test, for the dispatcher's heartbeat: it records
/// every save, can hold the first one until the test lets it go (so that the test acts while
/// a heartbeat is part-way through), and answers as the test says. Everything else is unused.
pub struct ScriptedStore {
    /// The jobs saved, as `<id>#<attempt>`, in order.
    pub saves: Mutex<Vec<String>>,
    /// Held until notified, on the first save only.
    /// Notified when the first save is under way (if it is held).
    pub first_entered: Notify,
    /// Lets the held first save finish.
    pub first_release: Notify,
    holds_first: bool,
    answer: Answer,
}

impl ScriptedStore {
    /// A store answering every save with `answer`; with `holds_first`, the first save waits
    /// for [`first_release`](Self::first_release).
    pub fn new(
        holds_first: bool,
        answer: impl Fn(&JobRef) -> amboy_core::Result<()> + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(ScriptedStore {
            saves: Mutex::new(Vec::new()),
            first_entered: Notify::new(),
            first_release: Notify::new(),
            holds_first,
            answer: Box::new(answer),
        })
    }
}

fn unused<T>() -> amboy_core::Result<T> {
    Err(Error::invalid("not used by the dispatcher"))
}

#[async_trait::async_trait]
impl Queue for ScriptedStore {
    fn id(&self) -> &str {
        "store"
    }

    async fn put(&self, _job: JobRef) -> amboy_core::Result<()> {
        unused()
    }

    async fn put_many(&self, _jobs: Vec<JobRef>) -> amboy_core::Result<()> {
        unused()
    }

    async fn get(&self, _id: &str) -> amboy_core::Result<JobRef> {
        unused()
    }

    async fn next(&self) -> amboy_core::Result<JobRef> {
        unused()
    }

    fn info(&self) -> QueueInfo {
        QueueInfo {
            started: true,
            lock_timeout: Duration::from_secs(60),
        }
    }

    async fn complete(&self, _job: &JobRef) -> amboy_core::Result<()> {
        unused()
    }

    async fn save(&self, job: &JobRef) -> amboy_core::Result<()> {
        let first = {
            let mut saves = self.saves.lock().unwrap();
            let attempt = job.retry_info().current_attempt;
            saves.push(format!("{}#{attempt}", job.id()));
            saves.len() == 1
        };
        if first && self.holds_first {
            self.first_entered.notify_one();
            self.first_release.notified().await;
        }
        (self.answer)(job)
    }

    async fn results(&self) -> amboy_core::JobStream {
        Box::pin(futures::stream::empty())
    }

    async fn job_info(&self) -> amboy_core::JobInfoStream {
        Box::pin(futures::stream::empty())
    }

    async fn stats(&self) -> amboy_core::Result<QueueStats> {
        Ok(QueueStats::default())
    }

    fn runner(&self) -> Option<Arc<dyn Runner>> {
        None
    }

    fn set_runner(&self, _runner: Arc<dyn Runner>) -> amboy_core::Result<()> {
        unused()
    }

    async fn start(&self) -> amboy_core::Result<()> {
        Ok(())
    }

    async fn close(&self) {}
}

//! Job types the scenarios use. Tests run in parallel in one process, so shared state (counters,
//! gates) lives in maps keyed by a name each test makes unique.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use amboy::{Base, Job, JobContext, JobError};
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

static COUNTERS: LazyLock<DashMap<String, Arc<AtomicUsize>>> = LazyLock::new(DashMap::new);
static GATES: LazyLock<DashMap<String, Arc<Semaphore>>> = LazyLock::new(DashMap::new);

/// The run counter named `key`.
pub fn counter(key: &str) -> Arc<AtomicUsize> {
    COUNTERS.entry(key.to_owned()).or_default().clone()
}

/// The gate named `key`: jobs waiting on it run once it is opened.
pub fn gate(key: &str) -> Arc<Semaphore> {
    GATES
        .entry(key.to_owned())
        .or_insert_with(|| Arc::new(Semaphore::new(0)))
        .clone()
}

/// Lets every job waiting on the gate `key` through, now and later.
pub fn open_gate(key: &str) {
    gate(key).add_permits(Semaphore::MAX_PERMITS / 2);
}

/// Does nothing (amboy's tests use `echo`).
#[derive(Debug, Serialize, Deserialize)]
pub struct Noop {
    /// Metadata.
    pub base: Base,
}

impl Noop {
    /// A no-op job with this ID.
    pub fn new(id: impl AsRef<str>) -> Arc<Self> {
        Arc::new(Noop {
            base: Base::with_id(id),
        })
    }
}

#[typetag::serde(name = "conformance-noop")]
#[async_trait::async_trait]
impl Job for Noop {
    fn base(&self) -> &Base {
        &self.base
    }

    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

/// Counts its runs in the counter named `counter` (amboy's mock job).
#[derive(Debug, Serialize, Deserialize)]
pub struct Count {
    /// Metadata.
    pub base: Base,
    /// The counter's name.
    pub counter: String,
}

impl Count {
    /// A counting job with this ID.
    pub fn new(id: impl AsRef<str>, counter: &str) -> Arc<Self> {
        Arc::new(Count {
            base: Base::with_id(id),
            counter: counter.to_owned(),
        })
    }
}

#[typetag::serde(name = "conformance-count")]
#[async_trait::async_trait]
impl Job for Count {
    fn base(&self) -> &Base {
        &self.base
    }

    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        counter(&self.counter).fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Sleeps (amboy's tests use `sleep`).
#[derive(Debug, Serialize, Deserialize)]
pub struct Sleep {
    /// Metadata.
    pub base: Base,
    /// How long.
    pub millis: u64,
}

impl Sleep {
    /// A sleeping job.
    pub fn new(base: Base, duration: Duration) -> Arc<Self> {
        Arc::new(Sleep {
            base,
            millis: duration.as_millis() as u64,
        })
    }
}

#[typetag::serde(name = "conformance-sleep")]
#[async_trait::async_trait]
impl Job for Sleep {
    fn base(&self) -> &Base {
        &self.base
    }

    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        tokio::time::sleep(Duration::from_millis(self.millis)).await;
        Ok(())
    }
}

/// Waits for the gate named `gate`, then counts its run in the counter of the same name.
#[derive(Debug, Serialize, Deserialize)]
pub struct Gated {
    /// Metadata.
    pub base: Base,
    /// The gate's (and counter's) name.
    pub gate: String,
}

impl Gated {
    /// A job waiting for `gate`.
    pub fn new(base: Base, gate: &str) -> Arc<Self> {
        Arc::new(Gated {
            base,
            gate: gate.to_owned(),
        })
    }
}

#[typetag::serde(name = "conformance-gated")]
#[async_trait::async_trait]
impl Job for Gated {
    fn base(&self) -> &Base {
        &self.base
    }

    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        let gate = gate(&self.gate);
        let _permit = gate
            .acquire()
            .await
            .map_err(|_| JobError::new("gate closed"))?;
        counter(&self.gate).fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Panics.
#[derive(Debug, Serialize, Deserialize)]
pub struct Panics {
    /// Metadata.
    pub base: Base,
}

#[typetag::serde(name = "conformance-panics")]
#[async_trait::async_trait]
impl Job for Panics {
    fn base(&self) -> &Base {
        &self.base
    }

    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        panic!("conformance job {} panics on purpose", self.base.id());
    }
}

/// Asks for a retry on its first attempt and succeeds on the next, counting its runs.
#[derive(Debug, Serialize, Deserialize)]
pub struct RetryOnce {
    /// Metadata.
    pub base: Base,
    /// The counter's name.
    pub counter: String,
}

impl RetryOnce {
    /// A retryable job that asks for one retry.
    pub fn new(base: Base, counter: &str) -> Arc<Self> {
        Arc::new(RetryOnce {
            base: base.with_retryable(true),
            counter: counter.to_owned(),
        })
    }
}

#[typetag::serde(name = "conformance-retry-once")]
#[async_trait::async_trait]
impl Job for RetryOnce {
    fn base(&self) -> &Base {
        &self.base
    }

    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        counter(&self.counter).fetch_add(1, Ordering::SeqCst);
        if self.base.retry_info().current_attempt == 0 {
            return Err(JobError::retryable("the first attempt asks to retry"));
        }
        Ok(())
    }
}

static INSIDE: LazyLock<DashMap<String, Arc<(AtomicUsize, AtomicUsize)>>> =
    LazyLock::new(DashMap::new);

fn inside(key: &str) -> Arc<(AtomicUsize, AtomicUsize)> {
    INSIDE.entry(key.to_owned()).or_default().clone()
}

/// The most jobs of `key` that ran at once (see [`Exclusive`]).
pub fn most_at_once(key: &str) -> usize {
    inside(key).1.load(Ordering::SeqCst)
}

/// Counts how many jobs of its key run at once, then waits for the gate of its key and counts
/// its run in the counter of its key: jobs sharing a scope use it to observe, on their own,
/// that they never run together.
#[derive(Debug, Serialize, Deserialize)]
pub struct Exclusive {
    /// Metadata.
    pub base: Base,
    /// The key of its gate, counter, and count of jobs inside.
    pub key: String,
}

/// Leaves the count of jobs inside when the run ends, however it ends.
struct Leaving(Arc<(AtomicUsize, AtomicUsize)>);

impl Drop for Leaving {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[typetag::serde(name = "conformance-exclusive")]
#[async_trait::async_trait]
impl Job for Exclusive {
    fn base(&self) -> &Base {
        &self.base
    }

    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        let counts = inside(&self.key);
        let now = counts.0.fetch_add(1, Ordering::SeqCst) + 1;
        counts.1.fetch_max(now, Ordering::SeqCst);
        let _leaving = Leaving(counts);
        let gate = gate(&self.key);
        let _permit = gate
            .acquire()
            .await
            .map_err(|_| JobError::new("gate closed"))?;
        counter(&self.key).fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

//! Waiting for queues and jobs (amboy's `Wait` family).
//!
//! Each waits for as long as it takes; bound it with `tokio::time::timeout`. amboy's bugs are
//! fixed: [`wait_job`] returns when the job is complete and not retrying (and says whether it
//! completed, expired or is unknown), and [`wait_interval_num`] keeps checking.

use std::time::Duration;

use crate::{Queue, Result};

/// The shortest pause between checks, so that a zero interval never spins.
const MIN_INTERVAL: Duration = Duration::from_millis(1);
/// The longest pause [`wait`] and [`wait_job`] grow to.
const MAX_BACKOFF: Duration = Duration::from_millis(25);

/// The pauses between checks: fixed, or growing from 1 ms to 25 ms (quick for short waits,
/// cheap for long ones).
#[derive(Debug, Clone, Copy)]
enum Pause {
    Fixed(Duration),
    Backoff(Duration),
}

impl Pause {
    fn fixed(interval: Duration) -> Self {
        Pause::Fixed(interval.max(MIN_INTERVAL))
    }

    fn backoff() -> Self {
        Pause::Backoff(MIN_INTERVAL)
    }

    async fn sleep(&mut self) {
        let pause = match *self {
            Pause::Fixed(interval) => interval,
            Pause::Backoff(next) => {
                *self = Pause::Backoff((next * 2).min(MAX_BACKOFF));
                next
            }
        };
        tokio::time::sleep(pause).await;
    }
}

/// Waits until the queue's stats are complete.
pub async fn wait(queue: &dyn Queue) -> Result<()> {
    wait_complete(queue, Pause::backoff()).await
}

/// Waits until the queue's stats are complete, checking now and then every `interval`.
pub async fn wait_interval(queue: &dyn Queue, interval: Duration) -> Result<()> {
    wait_complete(queue, Pause::fixed(interval)).await
}

async fn wait_complete(queue: &dyn Queue, mut pause: Pause) -> Result<()> {
    while !queue.stats().await?.is_complete() {
        pause.sleep().await;
    }
    Ok(())
}

/// Waits until at least `num` jobs completed without retrying, checking every `interval`.
pub async fn wait_interval_num(queue: &dyn Queue, interval: Duration, num: usize) -> Result<()> {
    let mut pause = Pause::fixed(interval);
    loop {
        let stats = queue.stats().await?;
        if stats.completed.saturating_sub(stats.retrying) >= num {
            return Ok(());
        }
        pause.sleep().await;
    }
}

/// How a job that [`wait_job`] waited for ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobOutcome {
    /// The job completed and will not retry (it may have failed: see its errors).
    Completed,
    /// The job's `dispatch_by` deadline passed before it could run: it never will.
    Expired,
    /// The queue does not have the job (never put, or forgotten since).
    NotFound,
}

impl JobOutcome {
    /// Whether the job completed.
    pub fn is_completed(self) -> bool {
        self == JobOutcome::Completed
    }
}

/// Waits until the job is complete and not retrying, or expired; says which, or that the queue
/// does not have the job. A job the queue cannot decode is an error naming it.
pub async fn wait_job(queue: &dyn Queue, id: &str) -> Result<JobOutcome> {
    wait_for_job(queue, id, Pause::backoff()).await
}

/// Like [`wait_job`], checking now and then every `interval`.
pub async fn wait_job_interval(
    queue: &dyn Queue,
    id: &str,
    interval: Duration,
) -> Result<JobOutcome> {
    wait_for_job(queue, id, Pause::fixed(interval)).await
}

async fn wait_for_job(queue: &dyn Queue, id: &str, mut pause: Pause) -> Result<JobOutcome> {
    loop {
        match queue.get(id).await {
            Ok(job) => {
                let meta = job.base().metadata();
                if meta.status.completed && !meta.retry_info.should_retry() {
                    return Ok(JobOutcome::Completed);
                }
                if meta.status.expired {
                    return Ok(JobOutcome::Expired);
                }
            }
            Err(error) if error.is_job_not_found() => return Ok(JobOutcome::NotFound),
            Err(error) => return Err(error),
        }
        pause.sleep().await;
    }
}

/// Compile-time check that the waits can be spawned.
#[allow(dead_code)]
fn _waits_are_send(queue: &'static dyn Queue) {
    fn send<T: Send>(_: T) {}
    send(wait(queue));
    send(wait_interval(queue, Duration::ZERO));
    send(wait_interval_num(queue, Duration::ZERO, 1));
    send(wait_job(queue, "id"));
    send(wait_job_interval(queue, "id", Duration::ZERO));
}

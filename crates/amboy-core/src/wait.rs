//! Waiting for queues and jobs (amboy's `Wait` family).
//!
//! Each waits for as long as it takes; bound it with `tokio::time::timeout`. amboy's bugs are
//! fixed: [`wait_job`] returns when the job is complete and not retrying, and
//! [`wait_interval_num`] keeps checking.

use std::time::Duration;

use crate::{Queue, Result};

/// The shortest pause between checks, so that a zero interval never spins.
const MIN_INTERVAL: Duration = Duration::from_millis(1);
/// The longest pause [`wait`] and [`wait_job`] grow to.
const MAX_BACKOFF: Duration = Duration::from_millis(25);

/// Polls `check` until it returns `Some`: immediately, then after pauses given by `pause`.
async fn poll<T>(
    mut pause: impl FnMut() -> Duration,
    mut check: impl AsyncFnMut() -> Result<Option<T>>,
) -> Result<T> {
    loop {
        if let Some(done) = check().await? {
            return Ok(done);
        }
        tokio::time::sleep(pause()).await;
    }
}

/// A pause that starts at 1 ms and doubles up to 25 ms: quick for short waits, cheap for long.
fn backoff() -> impl FnMut() -> Duration {
    let mut next = MIN_INTERVAL;
    move || {
        let pause = next;
        next = (next * 2).min(MAX_BACKOFF);
        pause
    }
}

fn fixed(interval: Duration) -> impl FnMut() -> Duration {
    let interval = interval.max(MIN_INTERVAL);
    move || interval
}

/// Waits until the queue's stats are complete.
pub async fn wait(queue: &dyn Queue) -> Result<()> {
    poll(backoff(), async || {
        Ok(queue.stats().await?.is_complete().then_some(()))
    })
    .await
}

/// Waits until the queue's stats are complete, checking now and then every `interval`.
pub async fn wait_interval(queue: &dyn Queue, interval: Duration) -> Result<()> {
    poll(fixed(interval), async || {
        Ok(queue.stats().await?.is_complete().then_some(()))
    })
    .await
}

/// Waits until at least `num` jobs completed without retrying, checking every `interval`.
pub async fn wait_interval_num(queue: &dyn Queue, interval: Duration, num: usize) -> Result<()> {
    poll(fixed(interval), async || {
        let stats = queue.stats().await?;
        Ok((stats.completed.saturating_sub(stats.retrying) >= num).then_some(()))
    })
    .await
}

/// Waits until the job is complete and not retrying; `false` if the job is not in the queue.
pub async fn wait_job(queue: &dyn Queue, id: &str) -> Result<bool> {
    poll(backoff(), async || job_done(queue, id).await).await
}

/// Like [`wait_job`], checking now and then every `interval`.
pub async fn wait_job_interval(queue: &dyn Queue, id: &str, interval: Duration) -> Result<bool> {
    poll(fixed(interval), async || job_done(queue, id).await).await
}

/// `Some(false)` if the job is gone, `Some(true)` if it is done, `None` to keep waiting.
async fn job_done(queue: &dyn Queue, id: &str) -> Result<Option<bool>> {
    match queue.get(id).await {
        Ok(job) => {
            let meta = job.base().metadata();
            Ok((meta.status.completed && !meta.retry_info.should_retry()).then_some(true))
        }
        Err(error) if error.is_job_not_found() => Ok(Some(false)),
        Err(error) => Err(error),
    }
}

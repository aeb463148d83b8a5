//! A job that fails twice with a retryable error, on a retryable queue: it runs three times,
//! and every attempt is kept.
//!
//! ```sh
//! cargo run --example retries --features full
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use amboy::prelude::*;
use amboy::{Base, JobContext, JobError, typetag};
use serde::{Deserialize, Serialize};

static CALLS: AtomicU32 = AtomicU32::new(0);

/// Calls a flaky service: the first two calls fail.
#[derive(Serialize, Deserialize)]
struct CallService {
    base: Base,
    url: String,
}

#[typetag::serde(name = "call-service")]
#[amboy::async_trait]
impl Job for CallService {
    fn base(&self) -> &Base {
        &self.base
    }

    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        let call = CALLS.fetch_add(1, Ordering::SeqCst);
        if call < 2 {
            // A retryable error asks for another attempt (the job must be retryable).
            return Err(JobError::retryable(format!("{} answered 503", self.url)));
        }
        println!(
            "attempt {} reached {}",
            self.base.retry_info().current_attempt,
            self.url
        );
        Ok(())
    }
}

#[tokio::main]
async fn main() -> amboy::Result<()> {
    // A queue storing copies of its jobs, with a retry handler (amboy's defaults).
    let queue = amboy::new_local_limited_size_serializable(2, 100);
    queue.start().await?;

    let job = CallService {
        base: Base::with_id("call-inventory")
            .with_retryable(true)
            .with_max_attempts(5),
        url: "https://inventory.internal/health".into(),
    };
    queue.put(Arc::new(job)).await?;
    amboy::wait(&*queue).await?;

    for attempt in queue.get_all_attempts("call-inventory").await? {
        let error = attempt
            .error()
            .map(|e| e.to_string())
            .unwrap_or_else(|| "ok".into());
        println!("attempt {}: {error}", attempt.retry_info().current_attempt);
    }
    println!("{}", queue.stats().await?);
    queue.close().await;
    Ok(())
}

//! A periodic operation: every 200 ms, put a cleanup job, unless the queue is backed up.
//!
//! ```sh
//! cargo run --example periodic
//! ```

use std::sync::Arc;
use std::time::Duration;

use amboy::chrono::Utc;
use amboy::prelude::*;
use amboy::{Base, JobContext, JobError, JobRef, QueueOperationConfig, typetag};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Cleanup {
    base: Base,
}

#[typetag::serde(name = "cleanup")]
#[amboy::async_trait]
impl Job for Cleanup {
    fn base(&self) -> &Base {
        &self.base
    }

    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        println!("cleaning up ({})", self.base.id());
        Ok(())
    }
}

#[tokio::main]
async fn main() -> amboy::Result<()> {
    let queue = amboy::new_local_limited_size(1, 100);
    queue.start().await?;

    let config = QueueOperationConfig {
        // Skip a tick while more than 10 jobs wait; keep going after errors.
        respect_threshold: true,
        threshold: 10,
        continue_on_error: true,
        log_errors: true,
        ..QueueOperationConfig::default()
    };
    let handle = amboy::interval_queue_operation(
        queue.clone(),
        Duration::from_millis(200),
        Utc::now(),
        config,
        amboy::schedule_job(|| Arc::new(Cleanup { base: Base::new() }) as JobRef),
    )?;

    tokio::time::sleep(Duration::from_millis(1100)).await;
    handle.stop().await?;
    amboy::wait(&*queue).await?;
    println!("{}", queue.stats().await?);
    queue.close().await;
    Ok(())
}

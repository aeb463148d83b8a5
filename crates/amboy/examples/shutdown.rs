//! Graceful shutdown: on Ctrl-C (or after a second, so that the example ends by itself), the
//! queue stops taking jobs, lets the running ones finish for up to five seconds, and cancels
//! what is still running then. Jobs not started stay pending.
//!
//! ```sh
//! cargo run --example shutdown
//! ```

use std::sync::Arc;
use std::time::Duration;

use amboy::prelude::*;
use amboy::{Base, JobContext, JobError, typetag};
use serde::{Deserialize, Serialize};

/// Work that takes a while, and stops early if asked to.
#[derive(Serialize, Deserialize)]
struct Render {
    base: Base,
    millis: u64,
}

#[typetag::serde(name = "render")]
#[amboy::async_trait]
impl Job for Render {
    fn base(&self) -> &Base {
        &self.base
    }

    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        tokio::time::sleep(Duration::from_millis(self.millis)).await;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> amboy::Result<()> {
    let queue = amboy::new_local_limited_size(4, 100);
    queue.start().await?;
    for n in 0..40 {
        let job = Render {
            base: Base::with_id(format!("render-{n}")),
            millis: 400,
        };
        queue.put(Arc::new(job)).await?;
    }

    tokio::select! {
        _ = tokio::signal::ctrl_c() => println!("Ctrl-C: shutting down"),
        _ = tokio::time::sleep(Duration::from_secs(1)) => println!("time is up: shutting down"),
    }
    // Running jobs get up to five seconds to finish; nothing new starts.
    queue.shutdown(Duration::from_secs(5)).await;

    let stats = queue.stats().await?;
    println!(
        "completed {}, still pending {}, running {}",
        stats.completed, stats.pending, stats.running
    );
    let failed = queue
        .results()
        .await
        .try_filter(|job| std::future::ready(job.error().is_some()))
        .count()
        .await;
    println!("{failed} job(s) were cut short");
    Ok(())
}

//! A queue group: one in-memory queue per tenant, created on first use, pruned when idle.
//!
//! ```sh
//! cargo run --example groups
//! ```

use std::sync::Arc;
use std::time::Duration;

use amboy::local::{LocalGroupQueueOptions, LocalQueueGroup, LocalQueueGroupOptions};
use amboy::prelude::*;
use amboy::{Base, JobContext, JobError, typetag};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Invoice {
    base: Base,
    tenant: String,
    amount_cents: u64,
}

#[typetag::serde(name = "invoice")]
#[amboy::async_trait]
impl Job for Invoice {
    fn base(&self) -> &Base {
        &self.base
    }

    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        println!("{}: invoice of {} cents", self.tenant, self.amount_cents);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> amboy::Result<()> {
    let group = LocalQueueGroup::new(LocalQueueGroupOptions {
        // How each tenant's queue is built: 2 workers, room for 100 pending jobs.
        default_queue: LocalGroupQueueOptions::new(|| amboy::new_local_limited_size(2, 100)),
        // Queues idle and complete for a minute are closed and forgotten.
        ttl: Duration::from_secs(60),
    })?;

    for (n, tenant) in ["acme", "globex", "acme", "initech"]
        .into_iter()
        .enumerate()
    {
        let queue = group.get(tenant, &[]).await?;
        let job = Invoice {
            base: Base::new(),
            tenant: tenant.into(),
            amount_cents: 1000 * (n as u64 + 1),
        };
        queue.put(Arc::new(job)).await?;
    }
    for tenant in group.queues().await {
        let queue = group.get(&tenant, &[]).await?;
        amboy::wait(&*queue).await?;
        println!("{tenant}: {}", queue.stats().await?);
    }
    group.close().await?;
    Ok(())
}

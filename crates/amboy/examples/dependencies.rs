//! A dependency-ordered queue: a small build graph runs each step after the steps it needs.
//!
//! ```sh
//! cargo run --example dependencies
//! ```

use std::sync::Arc;

use amboy::dependency::{Always, Manager};
use amboy::local::Ordered;
use amboy::prelude::*;
use amboy::{Base, JobContext, JobError, JobRef, typetag};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Step {
    base: Base,
}

#[typetag::serde(name = "build-step")]
#[amboy::async_trait]
impl Job for Step {
    fn base(&self) -> &Base {
        &self.base
    }

    async fn run(&self, _ctx: &JobContext) -> Result<(), JobError> {
        println!("running {}", self.base.id());
        Ok(())
    }
}

/// A step depending on `needs`.
fn step(id: &str, needs: &[&str]) -> JobRef {
    let edges = Always::new();
    for need in needs {
        edges.add_edge(need).expect("distinct edges");
    }
    Arc::new(Step {
        base: Base::with_id(id).with_dependency(edges),
    })
}

#[tokio::main]
async fn main() -> amboy::Result<()> {
    let queue = amboy::new_local_queue::<Ordered>(4, 100);
    queue.start().await?;
    // In any order: the batch is sorted by its edges, and each step waits for its own.
    queue
        .put_many(vec![
            step("link", &["compile-a", "compile-b"]),
            step("compile-a", &["fetch"]),
            step("compile-b", &["fetch"]),
            step("fetch", &[]),
            step("package", &["link"]),
        ])
        .await?;
    amboy::wait(&*queue).await?;
    println!("{}", queue.stats().await?);
    queue.close().await;
    Ok(())
}

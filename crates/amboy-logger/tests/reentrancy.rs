//! Fix 11, inside the layer: an event emitted while the layer handles another one is ignored.
//!
//! `tracing` itself drops such events when the subscriber is a scoped default (`set_default`),
//! but not when it is the global default, the usual set-up of a program: there, only the
//! layer's own guard stops the recursion. This file holds a single test because it sets the
//! process's global default.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use amboy_logger::QueueLayer;
use tracing_subscriber::prelude::*;

mod support;

use support::Collect;

/// The current nesting of `Loud`'s `Debug`, and the deepest one.
static DEPTH: AtomicUsize = AtomicUsize::new(0);
static MAX_DEPTH: AtomicUsize = AtomicUsize::new(0);

/// A value whose `Debug` logs an event holding another `Loud`: were that event handled inside
/// the layer, formatting it would log another, without end (a stack overflow).
struct Loud;

impl fmt::Debug for Loud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let depth = DEPTH.fetch_add(1, Ordering::SeqCst) + 1;
        MAX_DEPTH.fetch_max(depth, Ordering::SeqCst);
        tracing::error!(loud = ?Loud, "formatting a loud value");
        DEPTH.fetch_sub(1, Ordering::SeqCst);
        f.write_str("Loud")
    }
}

#[tokio::test]
async fn an_event_logged_while_the_layer_handles_one_is_ignored() {
    let sink = Collect::new();
    let (layer, logger) = QueueLayer::new(sink.clone(), 1, 16).await.unwrap();
    tracing_subscriber::registry()
        .with(layer)
        .try_init()
        .expect("the only global default of this test binary");

    tracing::info!(value = ?Loud, "outer");
    tokio::time::timeout(Duration::from_secs(30), logger.flush())
        .await
        .expect("flush completes promptly")
        .unwrap();

    // The layer formatted the outer event once; the event logged meanwhile was ignored.
    assert_eq!(MAX_DEPTH.load(Ordering::SeqCst), 1);
    let records = sink.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].message, "outer");
    assert_eq!(records[0].fields["value"], "Loud");
    assert_eq!(logger.stats().handed_off, 1);
}

//! The queue conformance suite and end-to-end tests of amboy for Rust: the same scenarios
//! (amboy's `TestQueueSmoke` matrix) run against every queue with every runner at sizes 1 to
//! 64, through the facade's public API.
//!
//! A queue implementation joins the suite with a [`QueueCase`] in [`cases`]; a runner with a
//! [`RunnerCase`]. `tests/conformance.rs` expands the matrix into one test per
//! (queue, runner, size, scenario), and runs the scenarios that take the jobs themselves
//! (cancel safety of `next`) once per queue, without workers.

pub mod cases;
pub mod jobs;
pub mod management;
pub mod postgres;
pub mod recorded;
pub mod scenarios;

pub use cases::{QueueCase, RunnerCase};

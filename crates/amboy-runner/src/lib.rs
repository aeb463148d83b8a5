//! Runners for amboy queues: pools of workers that take jobs from a queue with
//! [`Queue::next`](amboy_core::Queue::next), run them, and report them with
//! [`Queue::complete`](amboy_core::Queue::complete). The first runner is [`LocalWorkers`], a
//! fixed-size pool of tokio tasks (amboy's `LocalWorkers`).
//!
//! Runners depend on `amboy-core` only, never on a queue implementation: any queue works with
//! any runner, and a user's own runner crate can replace this one. Each job runs through
//! [`amboy_core::execute_job`], so every runner shares amboy's execution rules: `max_time`
//! bounds the run, panics are caught and recorded, retrying jobs go to the retry handler.
//!
//! Invariants: a panicking job never takes its worker down; closing a runner cancels the running
//! jobs, waits for the workers to stop, and leaves the runner restartable.
//!
//! Most users want the `amboy` crate, which re-exports this one as `amboy::runner`.

mod local;

pub use local::LocalWorkers;

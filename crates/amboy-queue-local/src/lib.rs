//! In-memory amboy queues, the embedded default: the [`LimitedSizeQueue`], the [`Dispatcher`]
//! that locks dispatched jobs and keeps their locks alive, and the [`ScopeManager`] that enforces
//! scopes.
//!
//! Depend on this crate (or the `amboy` facade's default features) to run jobs inside one
//! process. Queues here depend only on `amboy-core`: pair them with any runner, such as
//! `amboy-runner`'s local worker pool, through [`Queue::set_runner`](amboy_core::Queue::set_runner).
//!
//! Invariants: every state change takes the job's metadata lock once and never across an
//! `.await`; a job is in exactly one of the dispatch line, the timer heap, a scope's waiting list,
//! a worker, or the retained results; no operation scans all jobs except the reporting ones
//! (`results`, `job_info`).
//!
//! Most users want the `amboy` crate, which re-exports this one as `amboy::local`.

mod delayed;
mod dispatcher;
mod gate;
mod limited;
mod scope;

pub use dispatcher::Dispatcher;
pub use limited::{LimitedSizeOptions, LimitedSizeQueue};
pub use scope::{Parked, ScopeManager};

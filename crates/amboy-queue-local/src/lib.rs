//! In-memory amboy queues, the embedded default: the [`LocalQueue`] engine and its kinds
//! ([`LimitedSizeQueue`], [`PriorityQueue`], [`ShuffledQueue`], [`DependencyOrderedQueue`],
//! [`AdaptiveOrderingQueue`]), the retryable [`LimitedSizeSerializableQueue`] that stores copies
//! of its jobs, the [`LocalQueueGroup`] of named queues, and the [`ScopeManager`] that enforces scopes. The
//! jobs the serializable queue dispatches are locked by `amboy-core`'s
//! [`Dispatcher`](amboy_core::Dispatcher), shared with the PostgreSQL queue.
//!
//! Depend on this crate (or the `amboy` facade's default features) to run jobs inside one
//! process. Queues here depend only on `amboy-core` (and `amboy-registry` for stored copies):
//! pair them with any runner, such as
//! `amboy-runner`'s local worker pool, through [`Queue::set_runner`](amboy_core::Queue::set_runner).
//!
//! Invariants: every state change takes the job's metadata lock once and never across an
//! `.await`; a pending job is in exactly one of the dispatch line, the timer heap, a scope's
//! waiting list, or the dependency graph; no operation on a job scans the queue's jobs: only the
//! reporting ones (`results`, `job_info`) and the lock heartbeat of the queues holding the jobs
//! themselves (every quarter of the lock timeout) do. Every structure is bounded by the
//! capacity ([`Footprint`]). Dropping a queue's last handle closes it.
//!
//! Most users want the `amboy` crate, which re-exports this one as `amboy::local`.

mod delayed;
mod deps;
mod footprint;
mod gate;
mod group;
#[cfg(test)]
mod hooks;
mod line;
mod queue;
mod scope;
mod serializable;

/// The cache of named queues the local group keeps its queues in, shared with the other groups
/// (defined in `amboy-core`).
pub use amboy_core::{CleanupHook, GroupCache};
pub use footprint::Footprint;
pub use group::{
    LocalGroupQueueOptions, LocalQueueGroup, LocalQueueGroupOptions, QueueConstructor,
};
pub use line::{Adaptive, ByPriority, Fifo, Line, Ordered, Shuffled};
pub use queue::{
    AdaptiveOrderingQueue, DependencyOrderedQueue, LimitedSizeQueue, LocalQueue, LocalQueueOptions,
    PriorityQueue, ShuffledQueue,
};
pub use scope::{Parked, ScopeManager};
pub use serializable::{LimitedSizeSerializableQueue, SerializableQueueOptions};

//! The distributed amboy queue on PostgreSQL: [`PostgresQueue`], amboy's remote queue on
//! PostgreSQL instead of MongoDB, which many worker processes on many machines share, and
//! [`PostgresQueueGroup`], amboy's single-collection queue group: many named queues in the same
//! tables.
//!
//! Jobs, runners and retry handlers are the ones the in-memory queues use: a service moves
//! from memory to PostgreSQL by changing how it builds its queue. The queue stores each job as
//! its interchange envelope beside the columns claiming needs; claims take batches with
//! `FOR UPDATE SKIP LOCKED`; every write of a dispatched job is fenced by amboy's optimistic
//! lock on the database's clock; scopes are rows under a unique key; `LISTEN`/`NOTIFY` wakes
//! idle workers. [`PostgresManager`] manages the queues with SQL on their tables. The schema (default `amboy`) is created and upgraded by versioned migrations
//! under an advisory lock, so that any number of processes may start at once.
//!
//! Depends on `amboy-core` and `amboy-registry` (jobs are decoded by their registered type);
//! pair it with any runner through [`Queue::set_runner`](amboy_core::Queue::set_runner).
//!
//! Invariants: a job is dispatched to one worker at a time, however many processes claim;
//! a worker that lost a job's lock can no longer write it; nothing a crash interrupts is lost
//! (a job whose owner stopped heart-beating is claimed again after the lock timeout).

mod group;
mod manage;
mod notify;
mod options;
mod queue;
mod row;
mod schema;

pub use group::{
    PostgresGroupQueueOptions, PostgresQueueGroup, PostgresQueueGroupOptions, RetryHandlerFactory,
    RunnerFactory,
};
pub use manage::PostgresManager;
pub use options::PostgresQueueOptions;
pub use queue::PostgresQueue;
/// The sqlx this crate is built with: its pools, connections and transactions are the ones
/// [`PostgresQueue::put_in`] and [`PostgresQueueOptions::with_pool`] take.
pub use sqlx;

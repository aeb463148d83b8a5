//! The retry handler of amboy: [`BasicRetryHandler`] takes the jobs that a
//! [`RetryableQueue`](amboy_core::RetryableQueue)'s runner hands over because they asked to
//! retry, and enqueues each one's next attempt with
//! [`complete_retrying_and_put`](amboy_core::RetryableQueue::complete_retrying_and_put) (amboy's
//! `BasicRetryHandler`, `queue/retry.go`).
//!
//! The `amboy` facade depends on this crate and gives retryable queues this handler with
//! [`set_retry_handler`](amboy_core::RetryableQueue::set_retry_handler); queue crates do not
//! depend on it, they hold any [`RetryHandler`](amboy_core::RetryHandler). It depends on
//! `amboy-core` alone, so it works with any retryable queue, in memory or on PostgreSQL.
//!
//! Invariants:
//!
//! * the next attempt is built from a copy of the job that the queue returns, never from the job
//!   that ran: the old attempt stays in the queue as a completed record;
//! * a job the handler cannot retry is recorded with the reason among its errors and marked as
//!   finished retrying, so the queue never waits on it forever;
//! * when a try fails, the old attempt's retry information is restored as it was;
//! * a panic while handling one job never shrinks the pool of handler workers (amboy's workers
//!   exited after a panic); see [`BasicRetryHandler`] for what happens to the job;
//! * the handler holds its queue weakly: the queue owns the handler, not the other way round.
//!
//! Most users want the `amboy` crate, which sets a retryable queue's handler up for them.

mod handler;

pub use handler::BasicRetryHandler;

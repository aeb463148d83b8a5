//! Runners for amboy queues: pools of workers that take jobs from a queue with
//! [`Queue::next`](amboy_core::Queue::next), run them, and report them with
//! [`Queue::complete`](amboy_core::Queue::complete).
//!
//! | runner | amboy's | what it does |
//! |---|---|---|
//! | [`LocalWorkers`] | `NewLocalWorkers` | a fixed-size pool of tokio tasks |
//! | [`AbortablePool`] | `NewAbortablePool` | the same, with running jobs abortable by ID ([`AbortableRunner`](amboy_core::AbortableRunner)) |
//! | [`SingleWorker`] | `NewSingle` | one worker |
//! | [`RateLimitedWorkers`] | `NewSimpleRateLimitedWorkers` | each worker waits a fixed interval after every job |
//! | [`MovingAverageRateLimitedWorkers`] | `NewMovingAverageRateLimitedWorkers` | abortable workers that together start at most a target number of jobs per period |
//! | [`NoopRunner`] | `NewNoop` | no workers, for queues only written to in this process |
//! | [`MultiQueuePool`] | `pool.Group` | one pool serving several queues in turn |
//!
//! Runners depend on `amboy-core` only, never on a queue implementation: any queue works with
//! any runner, and a user's own runner crate can replace this one. Each job runs through
//! [`amboy_core::execute_job`], so every runner shares amboy's execution rules: `max_time`
//! bounds the run, panics are caught and recorded, retrying jobs go to the retry handler.
//!
//! A worker stops taking jobs from a queue whose [`Queue::next`](amboy_core::Queue::next) fails
//! with `Error::Closed`. Any other error is transient: the worker logs it (`tracing::warn!`,
//! with the queue's ID) and asks again after a pause, exponential with full jitter (a random
//! wait below a ceiling that starts at 10 ms and doubles up to 1 s), reset by the next job it
//! takes. Each worker backs off on its own, per queue; in a [`MultiQueuePool`] the worker serves
//! the other queues meanwhile.
//!
//! Invariants: a panicking job never takes its worker down, and a worker whose own loop panics
//! is restarted; a worker never spins on a failing queue, and a request to stop ends its pause
//! at once; closing a runner cancels the running jobs, waits for the workers to stop, and
//! leaves the runner restartable; shutting it down lets running jobs finish for a grace period
//! first; until it starts, a runner holds its queues weakly (the queue owns the runner), and
//! while it runs, its workers hold them (a queue stops its runner when it closes or is
//! dropped).
//!
//! Most users want the `amboy` crate, which re-exports this one as `amboy::runner`.

mod abortable;
mod backoff;
mod local;
mod moving_average;
mod multi_queue;
mod noop;
mod pool;
mod rate_limited;
mod single;

pub use abortable::AbortablePool;
pub use local::LocalWorkers;
pub use moving_average::MovingAverageRateLimitedWorkers;
pub use multi_queue::MultiQueuePool;
pub use noop::NoopRunner;
pub use rate_limited::RateLimitedWorkers;
pub use single::SingleWorker;

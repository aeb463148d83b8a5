//! Management of amboy queues (amboy's `management` package): the [`Manager`] trait, with
//! amboy's operations (counts of jobs by type for a [`StatusFilter`], job IDs by status and
//! type, completing one job or every job passing a filter, by type or by ID pattern) and ours
//! (listing jobs a page at a time, one job's full record with all its attempts, enqueueing a
//! failed or expired job again); and [`QueueManager`], which manages any [`Queue`] through its
//! public operations.
//!
//! The PostgreSQL queue's manager, which answers with SQL on the queue's tables rather than
//! reading every job, is `amboy_queue_postgres::PostgresManager`. The REST service and the
//! `amboy` command serve any [`Manager`].
//!
//! Depends on `amboy-core` (queues, job info) and `amboy-registry` (a job's full record is its
//! interchange form).
//!
//! Invariants: a completed job never runs again, whatever its owner does next; a manager
//! never reports or changes a job its filter does not select.
//!
//! [`Queue`]: amboy_core::Queue

mod filter;
mod manager;
mod queue;
mod types;

pub use filter::StatusFilter;
pub use manager::Manager;
pub use queue::QueueManager;
pub use types::{GroupedId, JobCursor, JobDetail, JobPage, JobQuery, JobRecord, JobTypeCount};

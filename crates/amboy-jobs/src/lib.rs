//! amboy's built-in jobs: [`ShellJob`] (registered as `shell`, version 1) runs a command as a
//! job, and [`GroupJob`] (registered as `group`, version 1) runs several jobs as one.
//!
//! These are amboy's `job.ShellJob` and `job.Group`. Like any job, they go on any queue, local
//! or PostgreSQL, and travel in amboy's interchange envelope
//! ([`JobInterchange`](amboy_registry::JobInterchange)), so the REST service and the `amboy`
//! command line can create them by type name (`amboy job put shell -- echo hi`). Programs that
//! decode these jobs without naming their types call [`register_builtin_jobs`] once, so that the
//! linker keeps their registrations.
//!
//! The crate depends on `amboy-core` (the [`Job`](amboy_core::Job) trait and
//! [`Base`](amboy_core::Base)) and `amboy-registry` (the envelope the group keeps its members
//! in); nothing in the workspace depends on it but the facade.
//!
//! Invariants:
//! * A shell job never involves a shell: the program runs with exactly its arguments, in a
//!   process group of its own, with exactly the environment it was given (unless it asks to
//!   inherit this process's). Its captured output is bounded by [`OUTPUT_LIMIT`]. When its run
//!   stops early (cancellation, `max_time`, a dropped run), the whole process group is killed.
//! * A shell job's run always ends with the job complete: a missing program, a non-zero exit
//!   status and a kill are each recorded as the job's error, naming the job and the reason.
//! * A group job keeps a valid envelope for every member through any failure: only members
//!   that ran without error have their stored envelope refreshed (amboy's continue-on-error
//!   semantics), and each failed member's error is recorded on the group as
//!   `<member id>: <error>`.
//!
//! The crate has no feature flags. Shell jobs run on unix only (elsewhere their run is an
//! error); group jobs run everywhere.
//!
//! Most users want the `amboy` crate, which re-exports this one behind its `jobs` feature.

mod error;
mod group;
mod output;
mod process;
mod shell;

pub use error::JobsError;
pub use group::GroupJob;
pub use shell::{OUTPUT_LIMIT, ShellJob};

/// Makes sure the built-in job types (`shell` and `group`) are registered in this program
/// (amboy's `RegisterDefaultJobs`).
///
/// Registration is the `#[typetag::serde]` attribute on each type and happens as the program
/// starts; nothing needs to be called for it. But a linker keeps a library's code only when the
/// program refers to it, so a program that never names [`ShellJob`] or [`GroupJob`] (a worker
/// that only decodes stored jobs, say) may lose their registrations, and decoding them then
/// fails with "not registered". Calling this function once, anywhere in such a program, keeps
/// them. It does nothing else, and calling it again is harmless.
///
/// ```
/// amboy_jobs::register_builtin_jobs();
/// assert!(amboy_registry::is_registered_job_type("shell"));
/// assert!(amboy_registry::is_registered_job_type("group"));
/// ```
pub fn register_builtin_jobs() {
    // Each call refers to code in the module that holds the type's registration, so that the
    // linker keeps that module, its registration included.
    shell::link();
    group::link();
}

/// Compile-time checks that the public types are `Send + Sync`.
#[allow(dead_code)]
fn _assertions() {
    fn send_sync<T: ?Sized + Send + Sync>() {}
    send_sync::<ShellJob>();
    send_sync::<GroupJob>();
    send_sync::<JobsError>();
}

//! The job type registry and the interchange envelope of amboy.
//!
//! Registering a job type is the `#[typetag::serde]` attribute on its `impl Job`; this crate
//! reads that registration: [`registered_job_types`] lists the names, [`build_job`] turns a
//! (name, version, body) back into a job with a strict version check, and [`JobInterchange`] is
//! amboy's envelope (a job's body plus its status, timing, retry information, scopes and
//! dependency) with amboy's JSON field names. Dependency managers register the same way and are
//! listed by [`registered_dependency_types`].
//!
//! Invariants: decoding never guesses: an unknown type, a version other than the registered one
//! and a body that does not decode are each an error naming the job and the reason. Encoding
//! never changes the job (amboy's error truncation applies to the envelope only).
//!
//! Most users want the `amboy` crate, which re-exports this one as `amboy::registry`.

mod error;
mod interchange;
mod lookup;

pub use error::RegistryError;
pub use interchange::{
    DependencyInterchange, ERROR_TRUNCATION_THRESHOLD, JobInterchange, MAX_ERROR_LENGTH,
    MAX_ERRORS_KEPT, decode_job, encode_job, truncate_errors,
};
pub use lookup::{
    build_dependency, build_job, is_registered_dependency_type, is_registered_job_type,
    registered_dependency_types, registered_job_types,
};

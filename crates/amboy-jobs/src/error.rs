//! The errors of building the built-in jobs.

use amboy_registry::RegistryError;

/// Why a built-in job could not be built as asked. Every message names the job and the reason.
///
/// Errors of a job's *run* are not these: they are recorded on the job's status, as every job's
/// are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JobsError {
    /// The group holds a job with this ID already.
    #[error("group job '{group}' already holds a job '{id}'")]
    DuplicateJob {
        /// The group's ID.
        group: String,
        /// The ID of the job added twice.
        id: String,
    },
    /// The job cannot be added to the group because it cannot be encoded in its envelope.
    #[error("group job '{group}' cannot hold a job: {reason}")]
    Encode {
        /// The group's ID.
        group: String,
        /// The ID of the job.
        id: String,
        /// Why the job cannot be encoded.
        reason: Box<RegistryError>,
    },
    /// A shell job's command line has no program.
    #[error("a shell job needs a program to run, but its command line is empty")]
    EmptyCommand,
}

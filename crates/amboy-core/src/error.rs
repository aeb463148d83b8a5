//! The error vocabulary every amboy crate shares.

use std::fmt;
use std::sync::Arc;

/// The result type of amboy's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in a queue, runner or retry handler.
///
/// The kinds callers branch on have predicates: [`is_job_not_found`](Error::is_job_not_found),
/// [`is_duplicate_job`](Error::is_duplicate_job) (true for duplicate scopes too, as in amboy),
/// [`is_duplicate_scope`](Error::is_duplicate_scope) and [`is_closed`](Error::is_closed).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No job with this ID (or attempt) is stored, or the caller no longer owns it.
    #[error("job '{id}' not found{}", detail_suffix(.detail))]
    JobNotFound {
        /// The job's ID.
        id: String,
        /// Why the job could not be found, when there is more to say.
        detail: Option<String>,
    },
    /// A job with this ID is stored already.
    #[error("cannot enqueue duplicate job '{id}'")]
    DuplicateJob {
        /// The job's ID.
        id: String,
    },
    /// A scope the job needs is held by another job. This is also a duplicate job.
    #[error("scope '{scope}' is already held by '{holder}', not '{requester}'")]
    DuplicateScope {
        /// The contested scope.
        scope: String,
        /// The job holding it.
        holder: String,
        /// The job that asked for it.
        requester: String,
    },
    /// Several writes of one batch failed (amboy's collated write errors).
    #[error(transparent)]
    Write(WriteErrors),
    /// The job cannot be taken as it is.
    #[error("invalid job '{id}': {reason}")]
    InvalidJob {
        /// The job's ID.
        id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The job is locked by another owner whose lock has not expired.
    #[error(
        "cannot lock job '{id}' for '{requester}': locked by '{owner}' for another {remaining:?}"
    )]
    Locked {
        /// The job's ID.
        id: String,
        /// The owner asking for the lock.
        requester: String,
        /// The owner holding the lock.
        owner: String,
        /// How long until the lock expires.
        remaining: std::time::Duration,
    },
    /// Options or arguments that cannot be used.
    #[error("invalid: {0}")]
    Invalid(String),
    /// The queue, runner or handler must be started first.
    #[error("{0} is not started")]
    NotStarted(&'static str),
    /// The queue, runner or handler was started already.
    #[error("{0} is already started")]
    AlreadyStarted(&'static str),
    /// The queue is at capacity.
    #[error("queue is full, cannot add job '{id}'")]
    QueueFull {
        /// The job that was refused.
        id: String,
    },
    /// The queue, runner or handler is closed.
    #[error("{0} is closed")]
    Closed(&'static str),
    /// Jobs that ran and failed, as gathered by [`resolve_errors`](crate::resolve_errors).
    #[error("{} job(s) failed: {}", .0.len(), join_failures(.0))]
    JobsFailed(Vec<JobFailure>),
    /// A job could not be encoded to, or decoded from, its stored form; the message names the
    /// job and the reason.
    #[error(transparent)]
    Codec(Arc<dyn std::error::Error + Send + Sync>),
    /// A storage layer failed; the message names the job when one is involved.
    #[error("{message}")]
    Backend {
        /// What failed.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<Arc<dyn std::error::Error + Send + Sync>>,
    },
}

fn detail_suffix(detail: &Option<String>) -> String {
    detail
        .as_ref()
        .map(|d| format!(": {d}"))
        .unwrap_or_default()
}

fn join_failures(failures: &[JobFailure]) -> String {
    failures
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    /// A job-not-found error for `id`.
    pub fn job_not_found(id: impl Into<String>) -> Self {
        Error::JobNotFound {
            id: id.into(),
            detail: None,
        }
    }

    /// A job-not-found error for `id` with an explanation.
    pub fn job_not_found_because(id: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::JobNotFound {
            id: id.into(),
            detail: Some(detail.into()),
        }
    }

    /// A duplicate-job error for `id`.
    pub fn duplicate_job(id: impl Into<String>) -> Self {
        Error::DuplicateJob { id: id.into() }
    }

    /// An invalid-options error.
    pub fn invalid(reason: impl Into<String>) -> Self {
        Error::Invalid(reason.into())
    }

    /// An invalid-job error naming the job.
    pub fn invalid_job(id: impl Into<String>, reason: impl fmt::Display) -> Self {
        Error::InvalidJob {
            id: id.into(),
            reason: reason.to_string(),
        }
    }

    /// An encoding error; its message must name the job and the reason.
    pub fn codec(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Codec(Arc::new(error))
    }

    /// A storage error with its cause.
    pub fn backend(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Backend {
            message: message.into(),
            source: Some(Arc::new(source)),
        }
    }

    /// Whether this is amboy's job-not-found error.
    pub fn is_job_not_found(&self) -> bool {
        matches!(self, Error::JobNotFound { .. })
    }

    /// Whether this is [`Error::Closed`]: the queue, runner or handler is closed. From
    /// [`Queue::next`](crate::Queue::next) it is the one error that means no job will ever
    /// come; any other is transient.
    pub fn is_closed(&self) -> bool {
        matches!(self, Error::Closed(_))
    }

    /// Whether this is a duplicate job: a duplicate ID, a duplicate scope, or a batch of writes
    /// in which every failure was a duplicate.
    pub fn is_duplicate_job(&self) -> bool {
        match self {
            Error::DuplicateJob { .. } | Error::DuplicateScope { .. } => true,
            Error::Write(errors) => errors.duplicate_kind().is_some(),
            _ => false,
        }
    }

    /// Whether this is a duplicate scope: a scope conflict, or a batch of writes in which every
    /// failure was a duplicate and at least one a scope conflict.
    pub fn is_duplicate_scope(&self) -> bool {
        match self {
            Error::DuplicateScope { .. } => true,
            Error::Write(errors) => errors.duplicate_kind() == Some(DuplicateKind::Scope),
            _ => false,
        }
    }
}

/// One job that ran and failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFailure {
    /// The job's ID.
    pub id: String,
    /// The job's errors, joined.
    pub message: String,
}

impl fmt::Display for JobFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job '{}': {}", self.id, self.message)
    }
}

/// The failures of a batch of writes, such as [`put_many`](crate::Queue::put_many).
#[derive(Debug, Clone, Default)]
pub struct WriteErrors {
    errors: Vec<Error>,
}

#[derive(Debug, PartialEq, Eq)]
enum DuplicateKind {
    Job,
    Scope,
}

impl WriteErrors {
    /// The individual failures.
    pub fn errors(&self) -> &[Error] {
        &self.errors
    }

    /// `Some` if every failure is a duplicate; `Scope` if any of them is a scope conflict.
    fn duplicate_kind(&self) -> Option<DuplicateKind> {
        let mut kind = DuplicateKind::Job;
        for error in &self.errors {
            if error.is_duplicate_scope() {
                kind = DuplicateKind::Scope;
            } else if !error.is_duplicate_job() {
                return None;
            }
        }
        (!self.errors.is_empty()).then_some(kind)
    }
}

impl fmt::Display for WriteErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Scope conflicts first, then duplicate IDs, then everything else, as amboy reports them.
        let scopes = self.errors.iter().filter(|e| e.is_duplicate_scope());
        let jobs = self
            .errors
            .iter()
            .filter(|e| e.is_duplicate_job() && !e.is_duplicate_scope());
        let others = self.errors.iter().filter(|e| !e.is_duplicate_job());
        let mut first = true;
        for error in scopes.chain(jobs).chain(others) {
            if !first {
                f.write_str("; ")?;
            }
            first = false;
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for WriteErrors {}

/// Collates the errors of a batch of writes (amboy's `CollateWriteErrors`): `Ok` when there are
/// none, else one [`Error::Write`] that counts as a duplicate only if every failure was one.
pub fn collate_write_errors(errors: Vec<Error>) -> Result<()> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Error::Write(WriteErrors { errors }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope() -> Error {
        Error::DuplicateScope {
            scope: "s".into(),
            holder: "a".into(),
            requester: "b".into(),
        }
    }

    #[test]
    fn predicates() {
        let not_found = Error::job_not_found("x");
        assert!(not_found.is_job_not_found());
        assert!(!not_found.is_duplicate_job());
        let dup = Error::duplicate_job("x");
        assert!(dup.is_duplicate_job() && !dup.is_duplicate_scope() && !dup.is_job_not_found());
        assert!(scope().is_duplicate_job() && scope().is_duplicate_scope());
        assert!(!Error::invalid("x").is_duplicate_job());
    }

    #[test]
    fn only_closed_is_closed() {
        assert!(Error::Closed("queue").is_closed());
        assert_eq!(Error::Closed("queue").to_string(), "queue is closed");
        for other in [
            Error::job_not_found("x"),
            Error::NotStarted("queue"),
            Error::invalid("x"),
            Error::Backend {
                message: "connection lost".into(),
                source: None,
            },
        ] {
            assert!(!other.is_closed(), "{other:?}");
        }
    }

    #[test]
    fn messages_name_the_job() {
        assert_eq!(Error::job_not_found("j1").to_string(), "job 'j1' not found");
        assert_eq!(
            Error::job_not_found_because("j1", "lock lost").to_string(),
            "job 'j1' not found: lock lost"
        );
        assert_eq!(
            Error::duplicate_job("j2").to_string(),
            "cannot enqueue duplicate job 'j2'"
        );
        assert_eq!(
            scope().to_string(),
            "scope 's' is already held by 'a', not 'b'"
        );
    }

    #[test]
    fn collate_empty_is_ok() {
        assert!(collate_write_errors(vec![]).is_ok());
    }

    #[test]
    fn collated_duplicates_are_duplicates() {
        let err = collate_write_errors(vec![Error::duplicate_job("a"), Error::duplicate_job("b")])
            .unwrap_err();
        assert!(err.is_duplicate_job());
        assert!(!err.is_duplicate_scope());
    }

    #[test]
    fn collated_scope_duplicates_are_scope_duplicates() {
        let err = collate_write_errors(vec![Error::duplicate_job("a"), scope()]).unwrap_err();
        assert!(err.is_duplicate_job());
        assert!(err.is_duplicate_scope());
        assert_eq!(
            err.to_string(),
            "scope 's' is already held by 'a', not 'b'; cannot enqueue duplicate job 'a'"
        );
    }

    #[test]
    fn any_other_failure_makes_the_batch_not_a_duplicate() {
        let err = collate_write_errors(vec![
            Error::duplicate_job("a"),
            scope(),
            Error::invalid("too big"),
        ])
        .unwrap_err();
        assert!(!err.is_duplicate_job());
        assert!(!err.is_duplicate_scope());
        assert!(err.to_string().ends_with("invalid: too big"));
    }
}

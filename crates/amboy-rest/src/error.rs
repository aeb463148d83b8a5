//! How failures become responses, and responses failures again.

use amboy_core::Error;
use amboy_registry::RegistryError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::wire::ErrorBody;

/// A failed request: its status and its body.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) body: ErrorBody,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            body: ErrorBody {
                code: code.to_owned(),
                message: message.into(),
            },
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body)).into_response()
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        let message = error.to_string();
        let (status, code) = match &error {
            Error::JobNotFound { .. } => (StatusCode::NOT_FOUND, "job_not_found"),
            Error::DuplicateJob { .. } => (StatusCode::CONFLICT, "duplicate_job"),
            Error::DuplicateScope { .. } => (StatusCode::CONFLICT, "duplicate_scope"),
            Error::Write(_) if error.is_duplicate_scope() => {
                (StatusCode::CONFLICT, "duplicate_scope")
            }
            Error::Write(_) if error.is_duplicate_job() => (StatusCode::CONFLICT, "duplicate_job"),
            Error::InvalidJob { .. } => (StatusCode::BAD_REQUEST, "invalid_job"),
            Error::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            Error::Locked { .. } => (StatusCode::CONFLICT, "locked"),
            Error::QueueFull { .. } => (StatusCode::SERVICE_UNAVAILABLE, "queue_full"),
            Error::Closed(_) | Error::NotStarted(_) | Error::Backend { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            Error::Codec(source) => match source.downcast_ref::<RegistryError>() {
                Some(registry) => return Self::from(registry.clone()),
                None => (StatusCode::BAD_REQUEST, "invalid_job"),
            },
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(status, code, message)
    }
}

impl From<RegistryError> for ApiError {
    fn from(error: RegistryError) -> Self {
        let code = match &error {
            RegistryError::UnknownJobType { .. } | RegistryError::UnknownDependencyType { .. } => {
                "unknown_job_type"
            }
            RegistryError::VersionMismatch { .. } => "version_mismatch",
            RegistryError::MalformedEnvelope { .. } => "invalid_request",
            _ => "invalid_job",
        };
        ApiError::new(StatusCode::BAD_REQUEST, code, error.to_string())
    }
}

/// The error a client reports for a failed request: the kinds callers branch on come back as
/// the same [`Error`] kinds (job not found, duplicate job or scope, invalid input); the rest as
/// a backend error naming the status and code.
pub(crate) fn client_error(status: u16, body: ErrorBody, id: Option<&str>) -> Error {
    let named = id.is_some();
    let id = || id.unwrap_or_default().to_owned();
    match body.code.as_str() {
        "job_not_found" | "not_running" => Error::JobNotFound {
            id: id(),
            detail: Some(body.message),
        },
        "duplicate_job" => Error::DuplicateJob { id: id() },
        "duplicate_scope" => match quoted(&body.message).as_slice() {
            [scope, holder, requester, ..] => Error::DuplicateScope {
                scope: scope.to_string(),
                holder: holder.to_string(),
                requester: requester.to_string(),
            },
            _ => Error::DuplicateScope {
                scope: String::new(),
                holder: String::new(),
                requester: id(),
            },
        },
        "queue_full" => Error::QueueFull { id: id() },
        "invalid_job" if named => {
            let prefix = format!("invalid job '{}': ", id());
            Error::InvalidJob {
                id: id(),
                reason: body
                    .message
                    .strip_prefix(&prefix)
                    .map(str::to_owned)
                    .unwrap_or(body.message),
            }
        }
        "invalid_request" | "invalid_filter" | "invalid_job" | "unknown_job_type"
        | "version_mismatch" => Error::Invalid(body.message),
        _ => Error::Backend {
            message: format!(
                "amboy service answered {status} ({}): {}",
                body.code, body.message
            ),
            source: None,
        },
    }
}

/// The parts of `message` between single quotes, in order (amboy's messages quote the names
/// they give).
fn quoted(message: &str) -> Vec<&str> {
    message.split('\'').skip(1).step_by(2).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(code: &str, message: &str) -> ErrorBody {
        ErrorBody {
            code: code.into(),
            message: message.into(),
        }
    }

    #[test]
    fn the_kinds_callers_branch_on_come_back() {
        let scope = Error::DuplicateScope {
            scope: "s".into(),
            holder: "h".into(),
            requester: "r".into(),
        };
        let sent = ApiError::from(scope.clone());
        let back = client_error(sent.status.as_u16(), sent.body, Some("r"));
        assert!(
            back.is_duplicate_scope() && back.is_duplicate_job(),
            "{back:?}"
        );
        assert_eq!(back.to_string(), scope.to_string());
        let missing = client_error(404, body("job_not_found", "job 'x' not found"), Some("x"));
        assert!(missing.is_job_not_found());
        let duplicate = client_error(409, body("duplicate_job", "dup"), Some("x"));
        assert!(duplicate.is_duplicate_job() && !duplicate.is_duplicate_scope());
        let full = client_error(503, body("queue_full", "full"), Some("x"));
        assert!(matches!(full, Error::QueueFull { .. }), "{full:?}");
        let invalid = client_error(400, body("invalid_job", "invalid job 'x': bad"), Some("x"));
        assert_eq!(invalid.to_string(), "invalid job 'x': bad");
        let other = client_error(500, body("internal", "boom"), None);
        assert!(other.to_string().contains("500") && other.to_string().contains("boom"));
    }
}

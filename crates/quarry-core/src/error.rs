//! Errors grouped by who is at fault, and their mapping to gRPC statuses.

use std::fmt;

/// Status metadata carrying the error category between services (several
/// categories share a status code).
const CATEGORY_KEY: &str = "quarry-error-category";

/// Who is at fault; recorded with every failed run (`pipeline_runs.error_category`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCategory {
    /// The input data or the request (missing column, unreadable file, path outside the data roots).
    Input,
    /// The configuration.
    Config,
    /// A warehouse or another service is unavailable or refused the operation.
    Backend,
    /// A data-quality check failed.
    Quality,
    /// The run was stopped from outside: a signal, its client going away, a
    /// service shutting down, or its process dying (found afterwards).
    Interrupted,
    /// A bug in Quarry.
    Internal,
}

impl ErrorCategory {
    pub const ALL: [ErrorCategory; 6] = [
        Self::Input,
        Self::Config,
        Self::Backend,
        Self::Quality,
        Self::Interrupted,
        Self::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Input => "input",
            Self::Config => "config",
            Self::Backend => "backend",
            Self::Quality => "quality",
            Self::Interrupted => "interrupted",
            Self::Internal => "internal",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "input" => Self::Input,
            "config" => Self::Config,
            "backend" => Self::Backend,
            "quality" => Self::Quality,
            "interrupted" => Self::Interrupted,
            "internal" => Self::Internal,
            _ => return None,
        })
    }

    /// The category of a failure reported by another service: the one it
    /// attached, else guessed from the status code.
    pub fn from_status(status: &tonic::Status) -> Self {
        use tonic::Code;
        if let Some(c) = status
            .metadata()
            .get(CATEGORY_KEY)
            .and_then(|v| v.to_str().ok())
            .and_then(Self::parse)
        {
            return c;
        }
        match status.code() {
            Code::InvalidArgument | Code::PermissionDenied | Code::NotFound | Code::OutOfRange => {
                Self::Input
            }
            Code::FailedPrecondition => Self::Config,
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::Cancelled
            | Code::Unauthenticated => Self::Backend,
            _ => Self::Internal,
        }
    }
}

impl fmt::Display for ErrorCategory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// Bad input data or a bad request; never retried.
    #[error("{0}")]
    Input(String),
    /// The request asks for something it may not have (e.g. a path outside the data roots).
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Config(String),
    /// A backend failed. Transient failures may be retried; permanent ones never.
    #[error("{message}")]
    Backend { message: String, transient: bool },
    #[error("{0}")]
    Quality(String),
    /// Stopped from outside (signal, cancelled client, shutdown).
    #[error("{0}")]
    Interrupted(String),
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn input(msg: impl Into<String>) -> Self {
        Self::Input(msg.into())
    }
    pub fn config(msg: impl Into<String>) -> Self {
        Self::Config(msg.into())
    }
    pub fn quality(msg: impl Into<String>) -> Self {
        Self::Quality(msg.into())
    }
    pub fn interrupted(msg: impl Into<String>) -> Self {
        Self::Interrupted(msg.into())
    }

    pub fn internal(msg: impl Into<String>) -> Self {
        Self::Internal(msg.into())
    }
    pub fn backend(msg: impl Into<String>, transient: bool) -> Self {
        Self::Backend {
            message: msg.into(),
            transient,
        }
    }

    /// The same kind of error with another message.
    /// A backend failure worth another attempt.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Backend {
                transient: true,
                ..
            }
        )
    }

    pub fn with_message(&self, msg: impl Into<String>) -> Self {
        let msg = msg.into();
        match self {
            Self::Input(_) => Self::Input(msg),
            Self::PermissionDenied(_) => Self::PermissionDenied(msg),
            Self::Config(_) => Self::Config(msg),
            Self::Backend { transient, .. } => Self::backend(msg, *transient),
            Self::Quality(_) => Self::Quality(msg),
            Self::Interrupted(_) => Self::Interrupted(msg),
            Self::Internal(_) => Self::Internal(msg),
        }
    }

    pub fn category(&self) -> ErrorCategory {
        match self {
            Self::Input(_) | Self::PermissionDenied(_) => ErrorCategory::Input,
            Self::Config(_) => ErrorCategory::Config,
            Self::Backend { .. } => ErrorCategory::Backend,
            Self::Quality(_) => ErrorCategory::Quality,
            Self::Interrupted(_) => ErrorCategory::Interrupted,
            Self::Internal(_) => ErrorCategory::Internal,
        }
    }

    /// Rebuilds an error from a status returned by another Quarry service.
    pub fn from_status(status: &tonic::Status) -> Self {
        let msg = status.message().to_string();
        match status.code() {
            tonic::Code::PermissionDenied => Self::PermissionDenied(msg),
            tonic::Code::Unavailable => Self::backend(msg, true),
            _ => match ErrorCategory::from_status(status) {
                ErrorCategory::Input => Self::Input(msg),
                ErrorCategory::Config => Self::Config(msg),
                ErrorCategory::Backend => Self::backend(msg, false),
                ErrorCategory::Quality => Self::Quality(msg),
                ErrorCategory::Interrupted => Self::Interrupted(msg),
                ErrorCategory::Internal => Self::Internal(msg),
            },
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let category = e.category().as_str();
        let mut status = match e {
            Error::Input(m) => tonic::Status::invalid_argument(m),
            Error::PermissionDenied(m) => tonic::Status::permission_denied(m),
            Error::Config(m) => tonic::Status::failed_precondition(m),
            Error::Backend {
                message,
                transient: true,
            } => tonic::Status::unavailable(message),
            Error::Backend { message, .. } => tonic::Status::aborted(message),
            // Quality failures are a property of the data, reported like bad input.
            Error::Quality(m) => tonic::Status::invalid_argument(m),
            Error::Interrupted(m) => tonic::Status::aborted(m),
            Error::Internal(m) => tonic::Status::internal(m),
        };
        status.metadata_mut().insert(
            CATEGORY_KEY,
            tonic::metadata::MetadataValue::from_static(category),
        );
        status
    }
}

impl From<arrow::error::ArrowError> for Error {
    fn from(e: arrow::error::ArrowError) -> Self {
        Self::Internal(format!("arrow: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_survive_a_status_round_trip() {
        let cases = [
            Error::input("x"),
            Error::PermissionDenied("x".into()),
            Error::config("x"),
            Error::backend("x", true),
            Error::backend("x", false),
            Error::quality("x"),
            Error::interrupted("x"),
            Error::internal("x"),
        ];
        for e in cases {
            let cat = e.category();
            let status: tonic::Status = e.into();
            assert_eq!(Error::from_status(&status).category(), cat, "{status:?}");
        }
    }
}

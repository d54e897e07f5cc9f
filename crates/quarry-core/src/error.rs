//! Errors grouped by who is at fault, and their mapping to gRPC statuses.

use std::fmt;
use std::sync::Arc;

/// An error and its causes, e.g. `transport error: invalid peer certificate:
/// UnknownIssuer` (many clients' own text stops at "error sending request");
/// a cause whose text is already there is not repeated.
pub fn with_sources(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

#[cfg(feature = "service")]
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
    #[cfg(feature = "service")]
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

/// What went wrong, finer than the category: the gRPC status follows from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad input data or a bad request; never retried.
    Input,
    /// The request asks for something it may not have (e.g. a path outside the data roots).
    PermissionDenied,
    Config,
    /// A backend failed. Transient failures may be retried; permanent ones never.
    Backend {
        transient: bool,
    },
    Quality,
    /// Stopped from outside (signal, cancelled client, shutdown).
    Interrupted,
    Internal,
}

/// The cause of an error, kept for its chain (`source()`), shared so that
/// errors stay cheap to clone.
type Source = Arc<dyn std::error::Error + Send + Sync>;

/// A Quarry error: its kind, one line saying what failed, and the library
/// error that caused it, if any, as its `source()`. The line quotes the
/// cause where that helps the reader: it is all that crosses the wire to
/// another service and what the user sees; `source()` keeps the cause itself
/// for programs (downcasting, logging).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<Source>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, msg: impl Into<String>) -> Self {
        Self {
            kind,
            message: msg.into(),
            source: None,
        }
    }

    pub fn input(msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::Input, msg)
    }
    pub fn permission_denied(msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::PermissionDenied, msg)
    }
    pub fn config(msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, msg)
    }
    pub fn quality(msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::Quality, msg)
    }
    pub fn interrupted(msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::Interrupted, msg)
    }
    pub fn internal(msg: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, msg)
    }
    pub fn backend(msg: impl Into<String>, transient: bool) -> Self {
        Self::new(ErrorKind::Backend { transient }, msg)
    }

    /// The same error, caused by `source` (kept as its `source()`).
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The one line of the error, without its causes.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// A backend failure worth another attempt.
    pub fn is_transient(&self) -> bool {
        self.kind == ErrorKind::Backend { transient: true }
    }

    /// The same kind of error (and cause) with another message.
    pub fn with_message(&self, msg: impl Into<String>) -> Self {
        Self {
            kind: self.kind,
            message: msg.into(),
            source: self.source.clone(),
        }
    }

    pub fn category(&self) -> ErrorCategory {
        match self.kind {
            ErrorKind::Input | ErrorKind::PermissionDenied => ErrorCategory::Input,
            ErrorKind::Config => ErrorCategory::Config,
            ErrorKind::Backend { .. } => ErrorCategory::Backend,
            ErrorKind::Quality => ErrorCategory::Quality,
            ErrorKind::Interrupted => ErrorCategory::Interrupted,
            ErrorKind::Internal => ErrorCategory::Internal,
        }
    }

    /// Rebuilds an error from a status returned by another Quarry service.
    #[cfg(feature = "service")]
    pub fn from_status(status: &tonic::Status) -> Self {
        let kind = match status.code() {
            tonic::Code::PermissionDenied => ErrorKind::PermissionDenied,
            tonic::Code::Unavailable => ErrorKind::Backend { transient: true },
            _ => match ErrorCategory::from_status(status) {
                ErrorCategory::Input => ErrorKind::Input,
                ErrorCategory::Config => ErrorKind::Config,
                ErrorCategory::Backend => ErrorKind::Backend { transient: false },
                ErrorCategory::Quality => ErrorKind::Quality,
                ErrorCategory::Interrupted => ErrorKind::Interrupted,
                ErrorCategory::Internal => ErrorKind::Internal,
            },
        };
        Self::new(kind, status.message()).with_source(status.clone())
    }
}

#[cfg(feature = "service")]
impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let category = e.category().as_str();
        let m = e.message;
        let mut status = match e.kind {
            ErrorKind::Input => tonic::Status::invalid_argument(m),
            ErrorKind::PermissionDenied => tonic::Status::permission_denied(m),
            ErrorKind::Config => tonic::Status::failed_precondition(m),
            ErrorKind::Backend { transient: true } => tonic::Status::unavailable(m),
            ErrorKind::Backend { transient: false } => tonic::Status::aborted(m),
            // Quality failures are a property of the data, reported like bad input.
            ErrorKind::Quality => tonic::Status::invalid_argument(m),
            ErrorKind::Interrupted => tonic::Status::aborted(m),
            ErrorKind::Internal => tonic::Status::internal(m),
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
        Self::internal(format!("arrow: {e}")).with_source(e)
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn causes_stay_in_the_chain() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = Error::config("cannot read config file x.toml").with_source(io);
        assert_eq!(e.to_string(), "cannot read config file x.toml");
        assert_eq!(e.source().unwrap().to_string(), "no such file");
        let renamed = e.with_message("other words");
        assert_eq!(renamed.kind(), ErrorKind::Config);
        assert!(renamed.source().is_some());
        assert!(Error::backend("x", true).is_transient());
        assert!(!Error::backend("x", false).is_transient());
    }

    #[cfg(feature = "service")]
    #[test]
    fn categories_survive_a_status_round_trip() {
        let cases = [
            Error::input("x"),
            Error::permission_denied("x"),
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

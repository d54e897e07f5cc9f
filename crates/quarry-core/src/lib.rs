//! Shared building blocks of Quarry's services: configuration, errors,
//! exact decimals, table schemas; with the `service` feature, the gRPC and
//! Flight helpers, security, metrics and logging of the services.

pub mod config;
pub mod dates;
pub mod decimal;
pub mod error;
#[cfg(feature = "service")]
pub mod flight;
#[cfg(feature = "service")]
pub mod grpc;
#[cfg(feature = "service")]
pub mod logging;
#[cfg(feature = "service")]
pub mod metrics;
pub mod run;
pub mod schema;
#[cfg(feature = "service")]
pub mod security;
pub mod text;

pub use config::Config;
pub use error::{Error, ErrorCategory, ErrorKind, Result};
pub use run::{RunMode, RunStatus};
pub use schema::Table;

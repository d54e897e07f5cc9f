//! Shared building blocks of Quarry's services: configuration, errors,
//! exact decimals, table schemas, and gRPC/Flight helpers.

pub mod config;
pub mod dates;
pub mod decimal;
pub mod error;
pub mod flight;
pub mod grpc;
pub mod logging;
pub mod metrics;
pub mod run;
pub mod schema;
pub mod security;
pub mod text;

pub use config::Config;
pub use error::{Error, ErrorCategory, Result};
pub use run::RunStatus;
pub use schema::Table;

//! The `quarry` command's building blocks: the embedded runner (all services
//! in-process on loopback ports, talking real gRPC) and the client calls that
//! run a pipeline and fetch its reports.

pub mod archive;
pub mod client;
pub mod embedded;
pub mod health;
pub mod report;

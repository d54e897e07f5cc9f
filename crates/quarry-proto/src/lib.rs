//! Protobuf and gRPC types generated from `proto/quarry/v1`.

#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("quarry.v1");

    /// Encoded descriptors of every file in the package, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("quarry_descriptor");
}

pub use v1::*;

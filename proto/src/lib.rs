//! The Witness gRPC protocol, generated from `proto/witness.proto`.
//!
//! Three services share one port: `Raft` (between witnesses only), `Witness`
//! (agents) and `Admin` (operators and `witnessctl`).

/// Generated messages and service stubs of package `witness.v1`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("witness.v1");
}

/// The encoded file descriptor set, for the gRPC reflection service.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("witness_descriptor");

pub use v1::*;

pub mod json;

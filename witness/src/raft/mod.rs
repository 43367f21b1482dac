//! Consensus: openraft's type configuration, the sled-backed storage, the
//! identity checks on every Raft message, and the gRPC network between
//! witnesses.

pub mod identity;
pub mod network;
pub mod store;
pub mod types;

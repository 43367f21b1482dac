//! Consensus: openraft's type configuration, the sled-backed storage, the
//! identity checks on every Raft message, the gRPC network between
//! witnesses, and the async runtime openraft runs on.

pub mod identity;
pub mod network;
pub mod runtime;
pub mod store;
pub mod types;

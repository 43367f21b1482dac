//! Witness: a consensus-based datacenter witness for Carbonio mail HA.
//!
//! Three (or five) witnesses form one Raft group that agrees which site is
//! active. See `DESIGN.md` for the safety protocol; each module's doc says
//! what it owns and which invariant it keeps.

pub mod agent;
pub mod bgp;
pub mod cli;
pub mod clock;
pub mod config;
pub mod demo;
pub mod driver;
pub mod engine;
pub mod histogram;
pub mod node;
pub mod probe;
pub(crate) mod process;
pub mod raft;
pub mod sabotage;
pub mod server;
pub mod sim;
pub mod state;
pub use witness_trust as trust;

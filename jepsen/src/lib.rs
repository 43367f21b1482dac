//! The witness fault-injection harness (DESIGN.md §6, tier 4): the real
//! `witness` and `witness agent` binaries on hosts made of Linux network
//! namespaces, attacked with partitions, packet loss, latency, crashes and
//! pauses, in the manner of Jepsen.
//!
//! This crate so far holds the plumbing:
//! - [`net`]: hosts as namespaces on one bridge, created and torn down
//!   idempotently by run prefix, leftovers of crashed runs removed;
//! - [`nemesis`]: network faults (iptables in the hosts' namespaces, a
//!   delaying proxy for latency) with exact heals, and process faults on the
//!   processes the harness started;
//! - [`netns`]: entering a namespace on a dedicated thread to own sockets
//!   there;
//! - [`cmd`]: running system tools with time bounds and useful errors.
//!
//! What it touches: only namespaces, interfaces, iptables chains and
//! processes it created, all named with the run's prefix. The machine's own
//! network namespace is never changed.
//!
//! Needs root, `iproute2` and `iptables` (the nf_tables backend is fine).

pub mod cmd;
pub mod error;
pub mod nemesis;
pub mod net;
pub mod netns;

pub use error::{Error, Result};
pub use nemesis::{Latency, Nemesis, Proc, ProcSpec};
pub use net::{Host, Net, Topology, cleanup_leftovers, cleanup_orphans, run_prefix};
pub mod checker;
pub mod history;

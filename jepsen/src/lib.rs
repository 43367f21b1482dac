//! The witness fault-injection harness (DESIGN.md §6, tier 4): the real
//! `witness` and `witness agent` binaries on hosts made of Linux network
//! namespaces, attacked with partitions, packet loss, latency, crashes and
//! pauses, in the manner of Jepsen.
//!
//! A run records a [`history`] (`history.jsonl`: client operations, agents'
//! serving logs and leases, hook and directive runs, outside probes, BIRD's
//! best path, the committed decisions, faults and phases, all on the one
//! kernel's `CLOCK_BOOTTIME`); the [`checker`]s judge it; [`results`]
//! composes `results.json` (valid `true`, `false` or `"unknown"`) and
//! [`report`] draws `timeline.html`. `jepsen analyze <dir>` re-runs all of
//! that on a stored run (exit 0 valid, 1 invalid, 2 unknown, 3 bad input).
//! [`runner`] produces histories (`jepsen test`, `jepsen test-all`) from
//! the deployment in [`lab`], which the end-to-end tests share; the
//! schema it writes is documented in [`history`].
//!
//! The plumbing for running the real binaries under faults:
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

pub mod checker;
pub mod cmd;
pub mod error;
pub mod history;
pub mod lab;
pub mod nemesis;
pub mod net;
pub mod netns;
pub mod report;
pub mod results;
pub mod runner;

pub use error::{Error, Result};
pub use nemesis::{Latency, Nemesis, Proc, ProcSpec, SkewedClock};
pub use net::{Host, Net, Topology, cleanup_leftovers, cleanup_orphans, run_prefix};

//! Probes and the Consul reader: this witness's own view of every site
//! (DESIGN.md §3.1–3.2).
//!
//! **What it owns.** A [`Prober`] probes every target of every site in the
//! committed policy, each every `interval`, each attempt bounded by its
//! `timeout`, and counts results into a [`Health`] per target (`fail_after`
//! failures in a row → down, `recover_after` successes → up, unknown until
//! then) and per site (its critical targets under the site's `down_rule`).
//! Beside the probes it reads the local Consul agent and attaches
//! [`ConsulEvidence`] to each target. The result is one [`LocalView`],
//! published on a `watch` channel every time something changes; the node
//! turns it into observations for the Raft log.
//!
//! **Invariants.**
//! - *A slow target never delays another*: every target runs in its own
//!   task, each attempt is cut off at its timeout whatever the transport
//!   does, and the only thing tasks share is a channel into a supervisor
//!   that does no I/O.
//! - *Consul alone never makes a site down*: evidence is attached beside a
//!   target's health and never changes it. [`consul_allows_down`] states
//!   the one rule for combining them (corroborate: `Passing` vetoes down;
//!   require: Consul must also say `Critical` or `NodeDead`), and only the
//!   decision engine applies it. An unreachable or leaderless Consul yields
//!   `Unknown`, which vetoes nothing and confirms nothing.
//! - *A policy change keeps what it did not change*: a target whose probe
//!   (kind, address, expectations) is unchanged keeps its counted health
//!   across a re-plan; only new or changed targets start from unknown.
//!
//! **What it does not do.** It decides nothing, proposes nothing and never
//! retries within an attempt (counting attempts is the point). It does all
//! I/O through [`Transport`], so a deterministic simulation can substitute
//! one; [`RealTransport`] is the production one.

mod check;
pub mod consul;
mod prober;
mod state;
mod stats;
mod transport;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use check::{CheckSpec, ProbeResult, probe_once};
pub use consul::{ConsulError, ConsulReader, ConsulReading, ConsulTarget};
pub use prober::{Prober, RESULT_QUEUE};
pub use state::{Health, TargetState, site_health};
pub use stats::{Outcome, ProbeStats, TargetStats};
pub use transport::{
    CommandOutput, GrpcHealth, HttpRequest, HttpResponse, MAX_COMMAND_OUTPUT, RealTransport,
    Transport, TransportError,
};

pub use crate::config::{ConsulAgentConfig, ConsulMode};

/// One target as this witness currently sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TargetView {
    pub name: String,
    pub role: String,
    pub critical: bool,
    /// From probes only; Consul never changes it.
    pub health: Health,
    /// How many results in a row agree with the latest one (0 before the
    /// first result).
    pub consecutive: u32,
    /// Why the latest probe failed; `None` after a success.
    pub last_error: Option<String>,
    /// How long the latest probe took (its timeout when it ran out).
    pub last_latency_ms: Option<u64>,
    /// What Consul says about the target; `None` when `consul.mode` is
    /// `ignore`.
    pub consul: Option<ConsulEvidence>,
}

/// One site as this witness currently sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SiteView {
    pub site: String,
    /// From probes only: the critical targets under the site's `down_rule`.
    pub health: Health,
    /// Unix milliseconds of the last change of `health` (or of the start of
    /// probing), for people; decisions never read wall clocks.
    pub changed_at_ms: u64,
    /// In policy order.
    pub targets: Vec<TargetView>,
}

/// What the local Consul agent says about one target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsulEvidence {
    /// The target's service instance is fully passing: its service check(s)
    /// and every node-level check, `serfHealth` included (what `?passing`
    /// keeps).
    Passing,
    /// A relevant check is critical (`check` is its CheckID).
    Critical { check: String, output: String },
    /// `serfHealth` is critical: the leader lost the node's gossip. Its
    /// service checks are frozen at their last value and prove nothing.
    NodeDead,
    /// The node is not in the catalog (`200 []`): unknown, deregistered
    /// after a graceful leave, ACL-filtered or misspelt. Never "healthy".
    NotRegistered,
    /// No usable evidence, and why (Consul unreachable, leaderless, a
    /// refused token, a warning check, serfHealth alone, …).
    Unknown { reason: String },
}

/// Consul as a whole, from this witness.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConsulView {
    /// The policy's `consul.mode`: `ignore`, `corroborate` or `require`.
    pub mode: String,
    /// The local agent answered (with any status) in the latest round.
    pub reachable: bool,
    /// The leader `/v1/status/leader` named; `None` when it answered `""`
    /// or could not be read.
    pub leader: Option<String>,
    /// What is wrong, in words for the operator; `None` when all is well.
    pub error: Option<String>,
    /// Unix milliseconds of the latest round (0: none yet).
    pub fetched_at_ms: u64,
}

/// Everything this witness sees, keyed by site name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LocalView {
    pub sites: BTreeMap<String, SiteView>,
    pub consul: ConsulView,
}

/// Whether Consul's evidence lets a target that probes call down count as
/// down, under `mode` (DESIGN.md §3.2). The one rule; the engine applies it.
///
/// - `ignore`: always.
/// - `corroborate`: unless Consul says the service instance is fully
///   `Passing`. Everything else (critical, dead node, not registered,
///   unknown, no evidence) vetoes nothing: a silent Consul must not keep
///   a dead site active.
/// - `require`: only when Consul also says `Critical` or `NodeDead`. An
///   unknown or unregistered answer confirms nothing (a misspelt node name
///   would otherwise make `require` a no-op).
pub fn consul_allows_down(mode: ConsulMode, evidence: Option<&ConsulEvidence>) -> bool {
    match mode {
        ConsulMode::Ignore => true,
        ConsulMode::Corroborate => !matches!(evidence, Some(ConsulEvidence::Passing)),
        ConsulMode::Require => matches!(
            evidence,
            Some(ConsulEvidence::Critical { .. } | ConsulEvidence::NodeDead)
        ),
    }
}

#[cfg(test)]
mod consul_tests;
#[cfg(test)]
mod tests;

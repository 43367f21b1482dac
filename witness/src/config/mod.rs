//! Configuration: the two kinds of TOML file a witness reads (DESIGN.md §2a).
//!
//! - A **node file** ([`NodeConfig`], `witness.toml`), one per witness: its
//!   id, name, site, addresses, data dir, the initial `[[peer]]` list, its
//!   Raft timers and how to reach its local Consul agent. Node-local;
//!   nothing in it shapes a failover decision.
//! - The **cluster policy** ([`Policy`], `cluster.toml`): everything that
//!   shapes a decision: lease and probe timers, the sites and their probe
//!   targets, the Consul policy, failover settings. It is loaded once by
//!   `witness init`, then replicated in the Raft log as JSON, so every
//!   witness decides from the same values.
//!
//! **Invariant: a configuration that loads is safe to run.** `load` and
//! `parse` validate each file before they return (so a `NodeConfig` or
//! `Policy` obtained from them has passed every rule that file can check on
//! its own), and a node runs only once [`check_timers`] has also passed for
//! its Raft timers against the policy it will obey. Every default lives in
//! [`defaults`], unknown keys are errors, durations are humantime strings
//! (`"500ms"`, `"3s"`) and `max_drift` is a percentage string (`"1%"`).
//! [`check_timers`] adds the rules that tie a node's Raft timers to the
//! replicated lease timers (DESIGN.md §3.8) and explains the worst-case
//! failover as the sum of its parts. Every [`ConfigError`] names the file,
//! the key, what is wrong and what to do.
//!
//! What this module does not do: no I/O beyond reading the file it is
//! given, no network, no data dir access (whether `node.cluster` matches
//! the data dir is the store's check), no topology advice (which layouts
//! survive which site failures is `check-topology`'s job; a legal but weak
//! layout loads), and no secrets inline (TLS keys and tokens will be file
//! paths). The one exception is the Consul token file, read by
//! [`NodeConfig::consul_agent`] when a node starts probing, never by
//! `load`/`parse`.

pub(crate) mod check;
mod consul;
pub mod defaults;
mod directives;
mod error;
mod failover;
mod node;
mod policy;
mod sites;
mod timers;
mod tls;

use std::path::Path;
use std::time::Duration;

pub use consul::{
    ConsulAgentConfig, ConsulAgentSection, ConsulMode, ConsulPolicy, ConsulScheme, ConsulTls,
    ConsulToken,
};
pub use directives::{CommandDirective, DirectivesPolicy};
pub use error::{ConfigError, Problem};
pub use failover::{Failback, FailoverPolicy};
pub use node::{NodeConfig, NodeSection, PeerConfig, RaftTimers};
pub use policy::{LeasePolicy, Policy};
pub use sites::{DownRule, ProbeDefaults, ProbeKind, ProbeTimers, Role, SitePolicy, TargetPolicy};
pub use timers::{TimerReport, check_timers};
pub use tls::TlsSection;

pub(crate) use error::FileKind;

/// Either kind of configuration file.
// Loaded once per command, never stored in bulk: the size difference
// between the variants costs nothing, and boxing would only add noise at
// every `match`.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum ConfigFile {
    Node(NodeConfig),
    Policy(Policy),
}

impl ConfigFile {
    /// The effective configuration as TOML.
    pub fn to_toml(&self) -> String {
        match self {
            ConfigFile::Node(node) => node.to_toml(),
            ConfigFile::Policy(policy) => policy.to_toml(),
        }
    }
}

/// Load a file of either kind, deciding by content: a file with a `[node]`
/// table is a node config, anything else is a policy (an empty file is the
/// default policy).
pub fn load_any(path: &Path) -> Result<ConfigFile, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let table: toml::Table = toml::from_str(&text)
        .map_err(|e| ConfigError::from_toml(path, &text, &e, FileKind::Unknown))?;
    if table.contains_key("node") {
        NodeConfig::parse(&text, path).map(ConfigFile::Node)
    } else {
        Policy::parse(&text, path).map(ConfigFile::Policy)
    }
}

/// Deserialise `text` as a `T`, reporting TOML syntax errors and schema
/// errors (unknown keys, wrong types) each with their own hint.
pub(crate) fn from_toml<T: serde::de::DeserializeOwned>(
    text: &str,
    origin: &Path,
    kind: FileKind,
) -> Result<T, ConfigError> {
    // A syntax pass first, so a syntax error is not explained as a schema one.
    toml::from_str::<toml::Table>(text)
        .map_err(|e| ConfigError::from_toml(origin, text, &e, FileKind::Unknown))?;
    toml::from_str(text).map_err(|e| ConfigError::from_toml(origin, text, &e, kind))
}

/// A duration the way the config files write it (`"1s 500ms"`), so a value
/// in a message can be pasted back. Values that are not whole milliseconds
/// (computed ones, like the lease wait) are rounded *up* to a millisecond
/// and marked `≈`.
pub(crate) fn show(d: Duration) -> String {
    if d.subsec_nanos().is_multiple_of(1_000_000) {
        humantime::format_duration(d).to_string()
    } else {
        let up = Duration::from_millis(
            d.as_millis()
                .saturating_add(1)
                .try_into()
                .unwrap_or(u64::MAX),
        );
        format!("≈{}", humantime::format_duration(up))
    }
}

#[cfg(test)]
mod policy_tests;
#[cfg(test)]
mod tests;

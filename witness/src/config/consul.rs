//! Consul in both files (DESIGN.md §3.2).
//!
//! - The cluster policy's `[consul]` ([`ConsulPolicy`]) says how much the
//!   decision trusts Consul: `ignore`, `corroborate` (default: a target
//!   that Consul reports fully passing vetoes "down") or `require` (Consul
//!   must also report the target critical or its node dead). Replicated,
//!   so every witness applies the same rule.
//! - A node file's `[consul]` ([`ConsulAgentSection`]) says how this
//!   witness reaches its *local* Consul agent: address, scheme, token file,
//!   timeout. [`NodeConfig::consul_agent`](super::NodeConfig::consul_agent)
//!   turns it into a [`ConsulAgentConfig`], reading the token file.
//!
//! Invariant kept here: `require` is refused whenever the loss of one site
//! would take Consul's server quorum with it, because Consul would then be
//! unable to confirm exactly the failure the witness exists for.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::defaults;
use super::error::{ConfigError, Problem};
use super::sites::SitePolicy;
use super::{check, show};

/// How far the decision trusts Consul (policy `consul.mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsulMode {
    /// Consul is not read at all.
    Ignore,
    /// Consul can only veto "down": a target whose Consul service instance
    /// is fully passing (service check and `serfHealth`) is not down.
    /// Consul unreachable, leaderless or silent vetoes nothing.
    #[default]
    Corroborate,
    /// Consul must also say the target is critical or its node dead
    /// before the target's "down" counts.
    Require,
}

impl ConsulMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            ConsulMode::Ignore => "ignore",
            ConsulMode::Corroborate => "corroborate",
            ConsulMode::Require => "require",
        }
    }
}

impl fmt::Display for ConsulMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The policy's `[consul]` table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsulPolicy {
    pub mode: ConsulMode,
    /// The site of each Consul server, one entry per server (Carbonio's
    /// `serviceDiscoverServers`, usually three): `["dc-a", "dc-a", "dc-b"]`.
    /// Only read to judge whether `require` is safe.
    pub server_sites: Vec<String>,
}

impl ConsulPolicy {
    pub(crate) fn check(&self, sites: &[SitePolicy], problems: &mut Vec<Problem>) {
        for (i, site) in self.server_sites.iter().enumerate() {
            if let Err(why) = check::name(site) {
                problems.push(Problem::new(
                    format!("consul.server_sites[{i}]"),
                    why,
                    "write the site of each Consul server, e.g. [\"dc-a\", \"dc-b\", \"dc-c\"]",
                ));
            }
        }
        if self.mode == ConsulMode::Require {
            self.check_require(sites, problems);
        }
        if self.mode == ConsulMode::Ignore {
            return;
        }
        // A mapping Consul cannot be asked about is a typo waiting to veto
        // nothing forever: say so now.
        for (i, site) in sites.iter().enumerate() {
            for (j, target) in site.targets.iter().enumerate() {
                if target.has_consul_mapping() && target.consul_node_name().is_none() {
                    let tkey = target_key(site, i, target, j);
                    problems.push(Problem::new(
                        format!("{tkey}.consul_node"),
                        format!(
                            "target {:?} names a Consul service or check, but its Consul node \
                             cannot be derived from {}",
                            target.name,
                            match target.host() {
                                Some(host) => format!("the IP address {host}"),
                                None => "a command".to_string(),
                            }
                        ),
                        "set consul_node to the node's name as Consul shows it; Carbonio uses \
                         \"agent-<hostname with dashes>\", e.g. \"agent-mbox1-example-com\"",
                    ));
                }
            }
        }
    }

    fn check_require(&self, sites: &[SitePolicy], problems: &mut Vec<Problem>) {
        let n = self.server_sites.len();
        if n == 0 {
            problems.push(Problem::new(
                "consul.server_sites",
                "consul.mode = \"require\" but consul.server_sites is empty, so nothing shows \
                 that Consul survives the loss of a site",
                "list the site of every Consul server (e.g. [\"dc-a\", \"dc-b\", \"dc-c\"]), or \
                 use mode = \"corroborate\"",
            ));
        } else {
            let quorum = n / 2 + 1;
            let mut per_site: BTreeMap<&str, usize> = BTreeMap::new();
            for site in &self.server_sites {
                *per_site.entry(site.as_str()).or_default() += 1;
            }
            for (site, here) in per_site {
                let left = n - here;
                if left < quorum {
                    problems.push(Problem::new(
                        "consul.mode",
                        format!(
                            "consul.mode = \"require\", but {here} of the {n} Consul servers run \
                             in site {site:?}: without it the other {left} are short of a quorum \
                             of {quorum}, so Consul dies with that site and could never confirm \
                             its failure"
                        ),
                        "use mode = \"corroborate\" (the default), or spread the Consul servers \
                         so that no single site holds enough of them to take the quorum along",
                    ));
                }
            }
        }
        for (i, site) in sites.iter().enumerate() {
            for (j, target) in site.targets.iter().enumerate() {
                if target.critical && !target.has_consul_mapping() {
                    let tkey = target_key(site, i, target, j);
                    problems.push(Problem::new(
                        format!("{tkey}.consul_service"),
                        format!(
                            "consul.mode = \"require\" but critical target {:?} names no \
                             consul_service or consul_check: Consul could confirm a dead host \
                             but never a dead service on a live one",
                            target.name
                        ),
                        "name the Consul service that corroborates it, e.g. consul_service = \
                         \"carbonio-mailbox\"",
                    ));
                }
            }
        }
    }
}

fn target_key(
    site: &SitePolicy,
    i: usize,
    target: &super::sites::TargetPolicy,
    j: usize,
) -> String {
    let skey = site.key(i);
    if check::name(&target.name).is_ok() {
        format!("{skey}.target[{}]", target.name)
    } else {
        format!("{skey}.target[{j}]")
    }
}

/// How to talk to the local Consul agent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsulScheme {
    /// Carbonio's agents serve plain HTTP on 127.0.0.1:8500.
    #[default]
    Http,
    Https,
}

impl ConsulScheme {
    pub fn as_str(&self) -> &'static str {
        match self {
            ConsulScheme::Http => "http",
            ConsulScheme::Https => "https",
        }
    }
}

/// A node file's `[consul]` table: this witness's local Consul agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsulAgentSection {
    /// Read Consul at all (default true once the table exists).
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
    /// `host:port` of the local agent's HTTP API.
    #[serde(default = "defaults::consul_address")]
    pub address: String,
    #[serde(default)]
    pub scheme: ConsulScheme,
    /// A file holding the ACL token (one line). Never the token itself:
    /// node files are shown by `check-config` and copied around. Without
    /// it the agent's default token applies, which in Carbonio can read
    /// every node and service (reference/consul-api.md §8). A relative path
    /// is resolved against the node file's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Deadline of one Consul HTTP call.
    #[serde(default = "defaults::consul_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// `?dc=`; default: the agent's own datacenter (`dc1` in Carbonio).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datacenter: Option<String>,
    /// With `scheme = "https"`: the CA that issued the agent's HTTPS
    /// certificate (PEM). Without it the system's trust store is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// With `scheme = "https"` and an agent that demands client
    /// certificates (`verify_incoming`): this witness's certificate (PEM)…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// …and its key (PEM), readable by the witness user only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

impl Default for ConsulAgentSection {
    fn default() -> Self {
        ConsulAgentSection {
            enabled: true,
            address: defaults::consul_address(),
            scheme: ConsulScheme::default(),
            token_file: None,
            timeout: defaults::CONSUL_TIMEOUT,
            datacenter: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
        }
    }
}

impl ConsulAgentSection {
    pub(crate) fn check(&self, problems: &mut Vec<Problem>) {
        if let Err(why) = check::host_port(&self.address) {
            problems.push(Problem::new(
                "consul.address",
                why,
                "write the local agent's HTTP address as host:port (default \"127.0.0.1:8500\")",
            ));
        }
        if self.timeout.is_zero() || self.timeout > defaults::MAX_CONSUL_TIMEOUT {
            problems.push(Problem::new(
                "consul.timeout",
                format!(
                    "consul.timeout = {} is outside (0s, {}]",
                    show(self.timeout),
                    show(defaults::MAX_CONSUL_TIMEOUT)
                ),
                "use a short positive duration (default \"1s\"): Consul is evidence about now, \
                 and an answer that takes longer is not",
            ));
        }
        if let Some(path) = &self.token_file {
            if path.as_os_str().is_empty() {
                problems.push(Problem::new(
                    "consul.token_file",
                    "consul.token_file is empty",
                    "give the path of a file holding the token, or remove the key to use the \
                     agent's default token",
                ));
            } else if path.to_str().is_none() {
                problems.push(Problem::new(
                    "consul.token_file",
                    format!("consul.token_file {path:?} is not valid UTF-8"),
                    "use a path made of UTF-8 characters",
                ));
            }
        }
        let tls_files = [
            ("consul.ca_file", &self.ca_file),
            ("consul.cert_file", &self.cert_file),
            ("consul.key_file", &self.key_file),
        ];
        for (key, path) in tls_files {
            if path.is_some() && self.scheme != ConsulScheme::Https {
                problems.push(Problem::new(
                    key,
                    format!("{key} is set but consul.scheme is not \"https\""),
                    "set scheme = \"https\" for a TLS agent, or remove the TLS files",
                ));
            }
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            problems.push(Problem::new(
                "consul.cert_file",
                "consul.cert_file and consul.key_file go together",
                "set both (a client certificate and its key) or neither",
            ));
        }
        if let Some(dc) = &self.datacenter
            && let Err(why) = check::name(dc)
        {
            problems.push(Problem::new(
                "consul.datacenter",
                why,
                "write Consul's datacenter name (Carbonio: \"dc1\"), or remove the key",
            ));
        }
    }

    /// The agent configuration with the token read from `token_file`.
    pub fn resolve(&self) -> Result<ConsulAgentConfig, ConfigError> {
        let token = match &self.token_file {
            None => None,
            Some(path) => Some(read_token(path)?),
        };
        let read = |key: &str, path: &std::path::Path| {
            std::fs::read(path).map_err(|e| ConfigError::Invalid {
                path: None,
                problems: vec![Problem::new(
                    key,
                    format!("cannot read {}: {e}", path.display()),
                    "point it at a readable PEM file",
                )],
            })
        };
        let ca_pem = match &self.ca_file {
            Some(path) => Some(read("consul.ca_file", path)?),
            None => None,
        };
        let identity_pem = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                key_private(key)?;
                let mut pem = read("consul.cert_file", cert)?;
                pem.push(b'\n');
                pem.extend(read("consul.key_file", key)?);
                Some(pem)
            }
            _ => None,
        };
        let tls = (ca_pem.is_some() || identity_pem.is_some()).then_some(ConsulTls {
            ca_pem,
            identity_pem,
        });
        Ok(ConsulAgentConfig {
            address: self.address.clone(),
            scheme: self.scheme,
            token,
            timeout: self.timeout,
            datacenter: self.datacenter.clone(),
            tls,
        })
    }
}

/// A secret file readable by other users is refused, with the fix.
#[cfg(unix)]
fn key_private(path: &std::path::Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else {
        // Reading it will say what is wrong.
        return Ok(());
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o007 != 0 {
        return Err(ConfigError::Invalid {
            path: None,
            problems: vec![Problem::new(
                "consul",
                format!(
                    "{} has mode {mode:04o}: other users can read this secret",
                    path.display()
                ),
                format!(
                    "run `chmod 600 {}` (or 640 with the witness group owning it)",
                    path.display()
                ),
            )],
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn key_private(_path: &std::path::Path) -> Result<(), ConfigError> {
    Ok(())
}

/// TLS to the local Consul agent: its CA, and this witness's client
/// certificate and key (PEM, concatenated), as read at start.
#[derive(Clone, PartialEq, Eq)]
pub struct ConsulTls {
    pub ca_pem: Option<Vec<u8>>,
    pub identity_pem: Option<Vec<u8>>,
}

impl fmt::Debug for ConsulTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulTls")
            .field("ca", &self.ca_pem.is_some())
            .field("client_certificate", &self.identity_pem.is_some())
            .finish()
    }
}

fn read_token(path: &std::path::Path) -> Result<ConsulToken, ConfigError> {
    let problem = |message: String, fix: &str| ConfigError::Invalid {
        path: None,
        problems: vec![Problem::new("consul.token_file", message, fix)],
    };
    let meta = std::fs::metadata(path).map_err(|e| {
        problem(
            format!("cannot read the Consul token file {}: {e}", path.display()),
            "create it holding the token on one line (readable by the witness user only), or \
             remove token_file to use the agent's default token",
        )
    })?;
    key_private(path)?;
    // Bound the read: a token is a UUID; a huge file is a wrong path.
    if meta.len() > defaults::MAX_CONSUL_TOKEN_LEN as u64 + 2 {
        return Err(problem(
            format!(
                "the Consul token file {} is {} bytes, more than a token",
                path.display(),
                meta.len()
            ),
            "point token_file at a file holding only the token",
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        problem(
            format!("cannot read the Consul token file {}: {e}", path.display()),
            "make it readable by the witness user and hold the token as text",
        )
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(problem(
            format!("the Consul token file {} is empty", path.display()),
            "write the token into it (Carbonio: `service-discover bootstrap-token`), or remove \
             token_file to use the agent's default token",
        ));
    }
    // It is sent as an HTTP header: visible ASCII only.
    if !token.chars().all(|c| c.is_ascii_graphic()) {
        return Err(problem(
            format!(
                "the Consul token file {} holds more than one token-like word",
                path.display()
            ),
            "leave only the token in it, on one line",
        ));
    }
    Ok(ConsulToken(token.to_string()))
}

/// A Consul ACL token. Its `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ConsulToken(String);

impl ConsulToken {
    pub fn new(secret: impl Into<String>) -> ConsulToken {
        ConsulToken(secret.into())
    }

    /// The secret, for the `X-Consul-Token` header and nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ConsulToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConsulToken(<redacted>)")
    }
}

/// Everything the Consul reader needs, token included (resolved from a
/// node file's `[consul]` by [`ConsulAgentSection::resolve`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsulAgentConfig {
    /// `host:port` of the local agent.
    pub address: String,
    pub scheme: ConsulScheme,
    pub token: Option<ConsulToken>,
    /// Deadline of one call.
    pub timeout: Duration,
    pub datacenter: Option<String>,
    /// With `https`: the agent's CA and this witness's client certificate.
    pub tls: Option<ConsulTls>,
}

impl ConsulAgentConfig {
    /// A plain-HTTP agent at `address` with the default timeout, no token.
    pub fn local(address: impl Into<String>) -> ConsulAgentConfig {
        ConsulAgentConfig {
            address: address.into(),
            scheme: ConsulScheme::Http,
            token: None,
            timeout: defaults::CONSUL_TIMEOUT,
            datacenter: None,
            tls: None,
        }
    }

    /// `http://127.0.0.1:8500`.
    pub fn base_url(&self) -> String {
        format!("{}://{}", self.scheme.as_str(), self.address)
    }
}

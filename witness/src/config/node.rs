//! One witness node's own file: identity, addresses, data dir, peers and
//! Raft timers. Nothing here shapes a decision; that is [`Policy`](super::Policy).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::consul::{ConsulAgentConfig, ConsulAgentSection};
use super::defaults::{self, HEARTBEATS_PER_ELECTION_TIMEOUT, MAX_PEERS};
use super::error::{ConfigError, FileKind, Problem};
use super::tls::TlsSection;
use super::{check, from_toml, show};
use crate::trust::{Expect, Trust};

/// One witness node's configuration (`witness.toml`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// `[node]`: who this node is and where it listens.
    pub node: NodeSection,
    /// `[[peer]]`: every voter of the initial cluster, this node included.
    #[serde(rename = "peer", default)]
    pub peers: Vec<PeerConfig>,
    /// `[raft]`: consensus timers; every key optional.
    #[serde(default)]
    pub raft: RaftTimers,
    /// `[consul]`: this witness's local Consul agent; absent = Consul is
    /// not read (its evidence is unknown, which vetoes nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consul: Option<ConsulAgentSection>,
    /// `[tls]`: this witness's certificate, key and the cluster CA, or
    /// `insecure = true`. Required: plaintext is never a default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSection>,
}

/// The `[node]` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Raft node id, `>= 1`, unique in the cluster and never reused.
    pub id: u64,
    /// Human name of this witness, e.g. `svc1`.
    pub name: String,
    /// The site (datacenter) this witness runs in, e.g. `dc-a`.
    pub site: String,
    /// Cluster name, recorded in the data dir at `init` and checked at every
    /// start, so a node pointed at another cluster's data dir refuses to run.
    #[serde(default = "defaults::cluster")]
    pub cluster: String,
    /// gRPC listen address (an IP, not a name).
    #[serde(default = "defaults::listen", deserialize_with = "de_listen")]
    pub listen: SocketAddr,
    /// `host:port` that peers, agents and operators dial. Defaults to
    /// `listen` when that is a specific address; required when `listen` is
    /// `0.0.0.0` or `[::]`. An empty string counts as absent.
    #[serde(default)]
    pub advertise: String,
    /// HTTP listen address for `/healthz`, `/readyz`, `/metrics`.
    #[serde(default = "defaults::http_listen", deserialize_with = "de_http_listen")]
    pub http_listen: SocketAddr,
    /// An optional second HTTP listener in plaintext that serves only
    /// `/healthz`, `/readyz` and `/metrics`, for a local scraper or load
    /// balancer without a client certificate (e.g. `127.0.0.1:7402`). The
    /// status page is never served there.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_plain_http_listen"
    )]
    pub plain_http_listen: Option<SocketAddr>,
    /// Where the Raft log, vote and state machine live. A relative path is
    /// resolved against the directory of the config file when it is loaded.
    #[serde(serialize_with = "ser_path")]
    pub data_dir: PathBuf,
}

/// One `[[peer]]` table: a voter of the initial cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub id: u64,
    pub name: String,
    /// `host:port` of the peer's gRPC endpoint (its `advertise`).
    pub addr: String,
    pub site: String,
}

/// The `[raft]` table. Defaults are WAN-safe (see [`defaults`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftTimers {
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub election_timeout_min: Duration,
    #[serde(with = "humantime_serde")]
    pub election_timeout_max: Duration,
    #[serde(with = "humantime_serde")]
    pub rpc_timeout: Duration,
    pub snapshot_after_logs: u64,
    pub keep_logs_after_snapshot: u64,
}

impl Default for RaftTimers {
    fn default() -> Self {
        RaftTimers {
            heartbeat_interval: defaults::HEARTBEAT_INTERVAL,
            election_timeout_min: defaults::ELECTION_TIMEOUT_MIN,
            election_timeout_max: defaults::ELECTION_TIMEOUT_MAX,
            rpc_timeout: defaults::RPC_TIMEOUT,
            snapshot_after_logs: defaults::SNAPSHOT_AFTER_LOGS,
            keep_logs_after_snapshot: defaults::KEEP_LOGS_AFTER_SNAPSHOT,
        }
    }
}

impl NodeConfig {
    /// Read, parse and validate a node file.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        NodeConfig::parse(&text, path)
    }

    /// Parse and validate `text`, read from `origin`. Fills the defaults
    /// that depend on other keys (`advertise` from `listen`) and resolves a
    /// relative `data_dir` against `origin`'s directory.
    pub fn parse(text: &str, origin: &Path) -> Result<NodeConfig, ConfigError> {
        let mut config: NodeConfig = from_toml(text, origin, FileKind::Node)?;
        let node = &mut config.node;
        if node.advertise.is_empty() && !node.listen.ip().is_unspecified() {
            node.advertise = node.listen.to_string();
        }
        if !node.data_dir.as_os_str().is_empty() && node.data_dir.is_relative() {
            node.data_dir = resolve(origin, &node.data_dir);
        }
        if let Some(token_file) = config.consul.as_mut().and_then(|c| c.token_file.as_mut())
            && !token_file.as_os_str().is_empty()
            && token_file.is_relative()
        {
            *token_file = resolve(origin, token_file);
        }
        if let Some(tls) = config.tls.as_mut() {
            tls.resolve_paths(origin);
        }
        config.validate().map_err(|e| e.in_file(origin))?;
        Ok(config)
    }

    /// This witness's TLS material, loaded and checked against its id and
    /// cluster; `None` when its file says `insecure = true`. Reads the files
    /// (`load` and `parse` never do).
    pub fn trust(&self) -> Result<Option<std::sync::Arc<Trust>>, String> {
        let Some(files) = self.tls.as_ref().and_then(TlsSection::files) else {
            return Ok(None);
        };
        Trust::load(
            files,
            Expect::Peer {
                cluster: self.node.cluster.clone(),
                id: self.node.id,
            },
        )
        .map(Some)
    }

    /// Check every rule; the error lists all problems found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        self.node.check(&mut problems);
        self.check_peers(&mut problems);
        self.raft.check(&mut problems);
        if let Some(consul) = &self.consul {
            consul.check(&mut problems);
        }
        TlsSection::check(self.tls.as_ref(), &mut problems);
        ConfigError::from_problems(problems)
    }

    /// How this witness reads its local Consul agent: `None` when the node
    /// file has no `[consul]` table or says `enabled = false`. Reads the
    /// token file, so a missing or unreadable one is an error naming its
    /// path (`load` and `parse` never touch it: they read only the node
    /// file itself).
    pub fn consul_agent(&self) -> Result<Option<ConsulAgentConfig>, ConfigError> {
        match &self.consul {
            Some(section) if section.enabled => section.resolve().map(Some),
            _ => Ok(None),
        }
    }

    /// The `[[peer]]` that describes this node.
    ///
    /// # Panics
    /// If there is none, which [`validate`](Self::validate) rules out; every
    /// `NodeConfig` from [`load`](Self::load) or [`parse`](Self::parse) has one.
    pub fn self_peer(&self) -> &PeerConfig {
        self.peers
            .iter()
            .find(|p| p.id == self.node.id)
            .unwrap_or_else(|| {
                panic!(
                    "node.id = {} has no [[peer]]: self_peer() needs a validated config",
                    self.node.id
                )
            })
    }

    /// The effective configuration as TOML: every key, defaults filled in,
    /// durations as humantime strings. Parses back to an equal value.
    pub fn to_toml(&self) -> String {
        // Cannot fail: every field is a string, an integer, a table or an
        // array of tables, and `data_dir` is written lossily (validation
        // refuses a non-UTF-8 one).
        toml::to_string_pretty(self).expect("a NodeConfig always renders as TOML")
    }

    fn check_peers(&self, problems: &mut Vec<Problem>) {
        let peers = &self.peers;
        if peers.is_empty() {
            problems.push(Problem::new(
                "peer",
                "there is no [[peer]] table",
                "list every voting witness, this node included, each as a [[peer]] with id, \
                 name, addr and site",
            ));
            return;
        }
        if peers.len() > MAX_PEERS {
            problems.push(Problem::new(
                "peer",
                format!("{} peers are listed, more than {MAX_PEERS}", peers.len()),
                "use 3 or 5 voters, one per site where possible: more voters slow every commit \
                 without surviving more site failures",
            ));
        }

        let mut ids: HashMap<u64, &PeerConfig> = HashMap::new();
        let mut names: HashMap<&str, &PeerConfig> = HashMap::new();
        let mut addrs: HashMap<String, &PeerConfig> = HashMap::new();
        for peer in peers {
            let key = |field: &str| format!("peer[id={}].{field}", peer.id);
            if peer.id == 0 {
                problems.push(Problem::new(
                    key("id"),
                    format!("peer {:?} has id = 0", peer.name),
                    "node ids start at 1",
                ));
            }
            for (field, value) in [("name", &peer.name), ("site", &peer.site)] {
                if let Err(why) = check::name(value) {
                    problems.push(Problem::new(key(field), why, "use 1-63 of [A-Za-z0-9._-]"));
                }
            }
            if let Err(why) = check::host_port(&peer.addr) {
                problems.push(Problem::new(
                    key("addr"),
                    why,
                    "write the peer's advertised gRPC address as host:port, e.g. \
                     \"svc1.dc-a.example.com:7400\"",
                ));
            }
            if let Some(first) = ids.insert(peer.id, peer) {
                problems.push(Problem::new(
                    key("id"),
                    format!(
                        "id = {} is used by both {:?} and {:?}",
                        peer.id, first.name, peer.name
                    ),
                    "give every [[peer]] its own id",
                ));
            }
            if let Some(first) = names.insert(&peer.name, peer) {
                problems.push(Problem::new(
                    key("name"),
                    format!(
                        "name {:?} is used by both id = {} and id = {}",
                        peer.name, first.id, peer.id
                    ),
                    "give every [[peer]] its own name",
                ));
            }
            if let Some(first) = addrs.insert(peer.addr.to_ascii_lowercase(), peer) {
                problems.push(Problem::new(
                    key("addr"),
                    format!(
                        "addr {:?} is used by both id = {} and id = {}",
                        peer.addr, first.id, peer.id
                    ),
                    "every witness needs its own host:port",
                ));
            }
        }

        let node = &self.node;
        let Some(own) = peers.iter().find(|p| p.id == node.id) else {
            problems.push(Problem::new(
                "node.id",
                format!("node.id = {} is not in the [[peer]] list", node.id),
                format!(
                    "add a [[peer]] with id = {} for this node (name {:?}, site {:?}, addr = \
                     its advertise address)",
                    node.id, node.name, node.site
                ),
            ));
            return;
        };
        let own_key = |field: &str| format!("peer[id={}].{field}", own.id);
        if own.name != node.name {
            problems.push(Problem::new(
                own_key("name"),
                format!(
                    "this node's [[peer]] says name = {:?} but node.name = {:?}",
                    own.name, node.name
                ),
                "make them equal: that [[peer]] describes this node",
            ));
        }
        if own.site != node.site {
            problems.push(Problem::new(
                own_key("site"),
                format!(
                    "this node's [[peer]] says site = {:?} but node.site = {:?}",
                    own.site, node.site
                ),
                "make them equal: that [[peer]] describes this node",
            ));
        }
        if !node.advertise.is_empty() && !own.addr.eq_ignore_ascii_case(&node.advertise) {
            problems.push(Problem::new(
                own_key("addr"),
                format!(
                    "this node's [[peer]] says addr = {:?} but node.advertise = {:?}",
                    own.addr, node.advertise
                ),
                "make them equal: peers dial the [[peer]] addr, and this node announces its \
                 advertise address",
            ));
        }
    }
}

impl NodeSection {
    fn check(&self, problems: &mut Vec<Problem>) {
        if self.id == 0 {
            problems.push(Problem::new(
                "node.id",
                "node.id = 0",
                "use a positive integer, unique in the cluster and never reused (ids start at 1)",
            ));
        }
        for (key, value) in [
            ("node.name", &self.name),
            ("node.site", &self.site),
            ("node.cluster", &self.cluster),
        ] {
            if let Err(why) = check::name(value) {
                problems.push(Problem::new(key, why, "use 1-63 of [A-Za-z0-9._-]"));
            }
        }

        if self.advertise.is_empty() {
            let message = if self.listen.ip().is_unspecified() {
                format!(
                    "node.advertise is missing and node.listen = {} is not an address peers \
                     can dial",
                    self.listen
                )
            } else {
                "node.advertise is empty".to_string()
            };
            problems.push(Problem::new(
                "node.advertise",
                message,
                format!(
                    "set advertise = \"<this host's name or IP>:{}\", the address peers and \
                     clients dial",
                    self.listen.port()
                ),
            ));
        } else if let Err(why) = check::host_port(&self.advertise) {
            problems.push(Problem::new(
                "node.advertise",
                why,
                "write the address peers and clients dial as host:port, e.g. \
                 \"svc1.dc-a.example.com:7400\"",
            ));
        }

        // The servers bind at start; catch a clash here with a clear
        // message rather than as "address in use" from one of them.
        let clash = |a: SocketAddr, b: SocketAddr| {
            a.port() == b.port()
                && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
        };
        let (grpc, http) = (self.listen, self.http_listen);
        if clash(grpc, http) {
            problems.push(Problem::new(
                "node.http_listen",
                format!("node.http_listen = {http} collides with node.listen = {grpc}"),
                "give the HTTP server its own port (default 7401)",
            ));
        }
        if let Some(plain) = self.plain_http_listen
            && let Some((key, other)) = [("listen", grpc), ("http_listen", http)]
                .into_iter()
                .find(|(_, other)| clash(plain, *other))
        {
            problems.push(Problem::new(
                "node.plain_http_listen",
                format!("node.plain_http_listen = {plain} collides with node.{key} = {other}"),
                "give the plaintext probe listener its own port, e.g. \"127.0.0.1:7402\"",
            ));
        }

        if self.data_dir.as_os_str().is_empty() {
            problems.push(Problem::new(
                "node.data_dir",
                "node.data_dir is empty",
                "set it to the directory for this node's Raft log and state, e.g. \
                 \"/var/lib/witness\"",
            ));
        } else if self.data_dir.to_str().is_none() {
            problems.push(Problem::new(
                "node.data_dir",
                format!("node.data_dir {:?} is not valid UTF-8", self.data_dir),
                "use a path made of UTF-8 characters",
            ));
        }
    }
}

impl RaftTimers {
    /// Check the timer rules alone.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        self.check(&mut problems);
        ConfigError::from_problems(problems)
    }

    pub(crate) fn check(&self, problems: &mut Vec<Problem>) {
        let durations = [
            (
                "heartbeat_interval",
                self.heartbeat_interval,
                defaults::HEARTBEAT_INTERVAL,
            ),
            (
                "election_timeout_min",
                self.election_timeout_min,
                defaults::ELECTION_TIMEOUT_MIN,
            ),
            (
                "election_timeout_max",
                self.election_timeout_max,
                defaults::ELECTION_TIMEOUT_MAX,
            ),
            ("rpc_timeout", self.rpc_timeout, defaults::RPC_TIMEOUT),
        ];
        let mut any_zero = false;
        for (name, value, default) in durations {
            if value.is_zero() {
                any_zero = true;
                problems.push(Problem::new(
                    format!("raft.{name}"),
                    format!("raft.{name} is 0"),
                    format!("set a positive duration (default \"{}\")", show(default)),
                ));
            }
        }
        if self.snapshot_after_logs == 0 {
            problems.push(Problem::new(
                "raft.snapshot_after_logs",
                "raft.snapshot_after_logs is 0",
                format!(
                    "set a positive count (default {}); 0 would build a snapshot after every entry",
                    defaults::SNAPSHOT_AFTER_LOGS
                ),
            ));
        }
        if any_zero {
            // The relations below would only repeat the same mistake.
            return;
        }

        // The random spread between min and max is what lets one candidate
        // win an election before the others time out too.
        if self.election_timeout_min >= self.election_timeout_max {
            problems.push(Problem::new(
                "raft.election_timeout_max",
                format!(
                    "election_timeout_max = {} is not above election_timeout_min = {}",
                    show(self.election_timeout_max),
                    show(self.election_timeout_min)
                ),
                "make max larger than min (defaults 750ms and 1500ms): the random spread \
                 between them prevents split votes",
            ));
        }
        let heartbeats = self
            .heartbeat_interval
            .saturating_mul(HEARTBEATS_PER_ELECTION_TIMEOUT);
        if heartbeats > self.election_timeout_min {
            problems.push(Problem::new(
                "raft.heartbeat_interval",
                format!(
                    "heartbeat_interval × {HEARTBEATS_PER_ELECTION_TIMEOUT} = {} exceeds \
                     election_timeout_min = {}",
                    show(heartbeats),
                    show(self.election_timeout_min)
                ),
                format!(
                    "lower heartbeat_interval or raise election_timeout_min: a follower must be \
                     able to miss {HEARTBEATS_PER_ELECTION_TIMEOUT} heartbeats in a row (lost \
                     packets, WAN jitter) before it calls an election, or one dropped packet \
                     changes the leader"
                ),
            ));
        }
        if self.rpc_timeout >= self.election_timeout_min {
            problems.push(Problem::new(
                "raft.rpc_timeout",
                format!(
                    "rpc_timeout = {} is not below election_timeout_min = {}",
                    show(self.rpc_timeout),
                    show(self.election_timeout_min)
                ),
                "lower rpc_timeout or raise election_timeout_min: the leader must give up on a \
                 stuck RPC and retry before its followers give up on the leader",
            ));
        }
    }
}

/// `origin`'s directory joined with `relative`, made absolute so that a
/// later change of working directory cannot move the data dir.
pub(crate) fn resolve(origin: &Path, relative: &Path) -> PathBuf {
    let base = match origin.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let joined = base.join(relative);
    std::path::absolute(&joined).unwrap_or(joined)
}

fn de_listen<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    bind_addr(
        d,
        "listen",
        defaults::LISTEN.port(),
        "; to give peers a host name, set advertise",
    )
}

fn de_plain_http_listen<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    bind_addr(d, "plain_http_listen", 7402, "").map(Some)
}

fn de_http_listen<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    bind_addr(d, "http_listen", defaults::HTTP_LISTEN.port(), "")
}

/// A listen address is what a socket binds: an IP and a port, never a name.
fn bind_addr<'de, D: Deserializer<'de>>(
    d: D,
    key: &str,
    port: u16,
    extra: &str,
) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    text.trim().parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "node.{key} = {text:?} is not an IP address with a port; write \
             \"0.0.0.0:{port}\" (every IPv4 interface), \"[::]:{port}\" (every interface) or \
             one address such as \"10.0.0.5:{port}\"; host names are not accepted here because \
             a socket binds an address{extra}"
        ))
    })
}

fn ser_path<S: Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&path.to_string_lossy())
}

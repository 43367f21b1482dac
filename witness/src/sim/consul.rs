//! A fake Consul agent: the HTTP API the witness reads, served exactly as
//! reference/consul-api.md documents it, from a state a test (or `witness
//! demo`, or the jepsen harness) scripts.
//!
//! **Served endpoints** (GET only; anything else under `/v1/` answers as
//! Consul does): `/v1/health/node/<node>`, `/v1/health/checks/<service>`,
//! `/v1/health/service/<service>` (with `?passing`),
//! `/v1/health/state/<state>`, `/v1/agent/members`, `/v1/status/leader`,
//! `/v1/status/peers`, `/v1/catalog/nodes`.
//!
//! **Copied behaviour**: the meta headers (`X-Consul-Index` ≥ 1 per table,
//! `-KnownLeader`, `-LastContact` in ms, `-Effective-Consistency`,
//! `-Query-Backend`, `-Default-Acl-Policy` on every answer, and none of the
//! meta headers on members/status); the deferred meta on health/catalog
//! errors; presence semantics of `stale`/`consistent`; the exact 400, 403,
//! 404, 405, 429 and 500 bodies; a client agent's `rpc error making call: `
//! prefix; leaderless reads that fail with `500 No cluster leader` after the
//! hold time (7 s by default) while `?stale` reads get the frozen catalog
//! with `KnownLeader: false`, and `/v1/status/leader` answers `""`; a failed
//! node whose `serfHealth` is critical while its service checks stay frozen;
//! a left node that is deregistered (`200 []`); ACL tokens that are unknown
//! (`403 ACL not found`) or filtered (`200 []` plus
//! `X-Consul-Results-Filtered-By-ACLs`); blocking queries on `index`/`wait`.
//!
//! **Faults** beyond Consul's own behaviour, per endpoint ([`Fault`]: any
//! status and body, a delay, garbage JSON, a hang, a huge or slow body) and
//! per connection ([`ConnectionFault`]: reset, or the raw 429 that Consul's
//! connection limiter writes).
//!
//! **Simplifications**: `filter`, `near`, `node-meta`, `tag` and `cached`
//! are accepted and ignored; header names go out in lower case (HTTP/1
//! names are case-insensitive, and readers must not care); blocking
//! queries add no jitter (Consul adds at most `wait/16`).
//!
//! **Control**: the Rust API ([`FakeConsul::update`] over a [`FakeState`])
//! and, for other processes, a small JSON API under `/_fake/`:
//! `GET|PUT /_fake/state`, `POST /_fake/node/<name>/{fail,revive,leave}`,
//! `PUT /_fake/leader` (a JSON string or `null`), `PUT|DELETE
//! /_fake/fault/<endpoint>` (a [`Fault`] as JSON).

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long a leaderless Consul keeps retrying a read before it answers
/// `500 No cluster leader` (`rpc_hold_timeout`).
pub const RPC_HOLD_TIMEOUT: Duration = Duration::from_secs(7);
/// What a client agent puts before a server's error.
pub const CLIENT_PREFIX: &str = "rpc error making call: ";
/// The version Carbonio ships, shown in node meta and member tags.
pub const CONSUL_VERSION: &str = "1.21.4";
/// Blocking queries: the default and the largest `wait`.
const DEFAULT_WAIT: Duration = Duration::from_secs(300);
const MAX_WAIT: Duration = Duration::from_secs(600);
/// Body of an unknown `/v1/` path.
const NOT_AN_ENDPOINT: &str = "Invalid URL path: not a recognized HTTP API endpoint\n";
/// What Consul's connection limiter writes on the raw socket.
const TOO_MANY_CONNECTIONS: &str = "HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\n\
Connection: close\r\n\r\nYour IP is issuing too many concurrent connections, please rate limit your calls\n";
/// Largest body the control API accepts.
const MAX_CONTROL_BODY: usize = 1024 * 1024;

/// Whether an agent (the fake itself, or a node in its catalog) is a
/// Consul server or a client.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentKind {
    #[default]
    Server,
    Client,
}

/// A check's status as Consul stores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    Passing,
    Warning,
    Critical,
}

impl CheckStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            CheckStatus::Passing => "passing",
            CheckStatus::Warning => "warning",
            CheckStatus::Critical => "critical",
        }
    }
}

/// One check in the catalog.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FakeCheck {
    pub id: String,
    pub name: String,
    pub status: CheckStatus,
    pub output: String,
    /// `""` (serfHealth), `tcp`, `http`, …
    pub kind: String,
    pub interval: String,
    pub timeout: String,
    pub create_index: u64,
    pub modify_index: u64,
}

/// One service instance registered on a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FakeService {
    pub id: String,
    pub name: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub checks: Vec<FakeCheck>,
    pub create_index: u64,
    pub modify_index: u64,
}

/// One node: its gossip membership and, while registered, its catalog entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FakeNode {
    /// `agent-mbox1-example-com`, `server-svc1-example-com`.
    pub name: String,
    pub id: String,
    pub address: String,
    pub kind: AgentKind,
    /// Serf status in `/v1/agent/members`: 1 alive, 2 leaving, 3 left,
    /// 4 failed. `None`: reaped, gone from the member list.
    pub member_status: Option<u8>,
    /// In the catalog (health and catalog endpoints). A left node is not.
    pub registered: bool,
    /// Its `serfHealth` check, written by the (fake) leader.
    pub serf: FakeCheck,
    pub services: Vec<FakeService>,
    pub create_index: u64,
    pub modify_index: u64,
}

/// What a token may read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rights {
    /// `node_prefix "" read` and `service_prefix "" read`: everything.
    ReadAll,
    /// Nothing: every list comes back filtered to `[]`.
    None,
}

/// ACLs. Without them (`FakeState::acl == None`) every request reads all.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FakeAcl {
    /// `X-Consul-Default-Acl-Policy`; Carbonio uses `deny`.
    pub default_policy: String,
    /// The agent's default token, used by requests without one. Carbonio
    /// installs one per node that reads everything.
    pub default_token: Rights,
    /// Known secrets. Any other token is `403 ACL not found`.
    pub tokens: BTreeMap<String, Rights>,
}

/// The endpoints, for per-endpoint faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    HealthNode,
    HealthChecks,
    HealthService,
    HealthState,
    AgentMembers,
    StatusLeader,
    StatusPeers,
    CatalogNodes,
}

impl Endpoint {
    /// Whether Consul sets the query meta headers on it.
    fn has_meta(&self) -> bool {
        !matches!(
            self,
            Endpoint::AgentMembers | Endpoint::StatusLeader | Endpoint::StatusPeers
        )
    }

    /// Whether its meta headers are set even on errors (`defer setMeta`).
    fn deferred_meta(&self) -> bool {
        self.has_meta() && *self != Endpoint::HealthService
    }

    fn parse(name: &str) -> Option<Endpoint> {
        serde_json::from_value(serde_json::Value::String(name.to_string())).ok()
    }
}

/// A fault injected into one endpoint's answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// Answer this status, body and extra headers instead.
    Respond {
        status: u16,
        body: String,
        #[serde(default)]
        headers: Vec<(String, String)>,
    },
    /// Wait this long, then answer normally.
    Delay(#[serde(with = "humantime_serde")] Duration),
    /// `200`, `Content-Type: application/json`, and a body that is not JSON.
    Garbage,
    /// Never answer (until the fake stops).
    Hang,
    /// `200` with a syntactically valid JSON body of about this many bytes.
    Huge { bytes: usize },
    /// The normal answer, its body trickling out 16 bytes per `chunk_delay`.
    SlowBody {
        #[serde(with = "humantime_serde")]
        chunk_delay: Duration,
    },
}

/// A fault on every new connection, before any request is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionFault {
    /// Accept, then reset (RST) at once.
    Reset,
    /// Write Consul's raw connection-limit 429 and close.
    TooManyConnections,
}

/// Why a state change was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FakeError {
    #[error("no node named {0:?}")]
    NoNode(String),
    #[error("node {node:?} has no service {service:?}")]
    NoService { node: String, service: String },
    #[error("node {0:?} is failed: its agent cannot update its checks (they stay frozen)")]
    NodeFailed(String),
}

/// Everything the fake serves. Public so a test can script anything; the
/// helper methods keep the indexes and Consul's rules consistent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FakeState {
    /// The agent's own datacenter (`dc1` in Carbonio); `?dc=` naming
    /// another gives `500 No path to datacenter`.
    pub datacenter: String,
    /// A client agent prefixes forwarded errors with `rpc error making call: `.
    pub agent: AgentKind,
    /// The leader's RPC address (`10.66.64.7:8300`); `None`: no quorum.
    pub leader: Option<String>,
    /// Unix ms when the leader was lost (drives `X-Consul-LastContact`).
    pub leaderless_since_ms: Option<u64>,
    /// How long a leaderless default/consistent read waits before its 500.
    #[serde(with = "humantime_serde")]
    pub leaderless_hold: Duration,
    pub acl: Option<FakeAcl>,
    /// In registration order (the members list keeps it).
    pub nodes: Vec<FakeNode>,
    pub faults: BTreeMap<Endpoint, Fault>,
    pub connection_fault: Option<ConnectionFault>,
    /// The Raft index; every change bumps it.
    pub index: u64,
    pub checks_index: u64,
    pub nodes_index: u64,
    pub service_index: BTreeMap<String, u64>,
}

impl Default for FakeState {
    fn default() -> Self {
        FakeState {
            datacenter: "dc1".into(),
            agent: AgentKind::Server,
            leader: Some("127.0.0.1:8300".into()),
            leaderless_since_ms: None,
            leaderless_hold: RPC_HOLD_TIMEOUT,
            acl: None,
            nodes: Vec::new(),
            faults: BTreeMap::new(),
            connection_fault: None,
            index: 1,
            checks_index: 1,
            nodes_index: 1,
            service_index: BTreeMap::new(),
        }
    }
}

/// Wall-clock ms, from the witness's clock (a simulation's, when one is
/// installed).
fn now_ms() -> u64 {
    crate::clock::unix_ms()
}

fn serf_check(alive: bool, index: u64) -> FakeCheck {
    FakeCheck {
        id: "serfHealth".into(),
        name: "Serf Health Status".into(),
        status: if alive {
            CheckStatus::Passing
        } else {
            CheckStatus::Critical
        },
        output: if alive {
            "Agent alive and reachable".into()
        } else {
            "Agent not live or unreachable".into()
        },
        kind: String::new(),
        interval: String::new(),
        timeout: String::new(),
        create_index: index,
        modify_index: index,
    }
}

impl FakeState {
    /// No nodes yet, with Carbonio's ACLs: `default_policy = deny` and a
    /// read-all default token.
    pub fn carbonio_acl() -> FakeState {
        FakeState {
            acl: Some(FakeAcl {
                default_policy: "deny".into(),
                default_token: Rights::ReadAll,
                tokens: BTreeMap::new(),
            }),
            ..FakeState::default()
        }
    }

    /// Carbonio's documented layout (reference/consul-api.md §8,
    /// carbonio-ha.md §9): three servers (svc1, svc3 in the primary DC,
    /// svc2 in the secondary), two mailstores and two proxies, each with
    /// the services Carbonio registers, all passing; ACLs with
    /// `default_policy = deny` and a read-all default token.
    // `add_service` only fails for an unknown node; each follows its
    // `add_node`, so its result is ignored.
    pub fn carbonio() -> FakeState {
        let mut state = FakeState::carbonio_acl();
        for (host, ip) in [
            ("svc1", "10.66.64.7"),
            ("svc2", "10.66.64.11"),
            ("svc3", "172.17.146.31"),
        ] {
            let name = format!("server-{host}-example-com");
            state.add_node(&name, ip, AgentKind::Server);
            let _ = state.add_service(&name, "consul", 8300, None);
        }
        state.set_leader(Some("10.66.64.7:8300".into()));
        for (host, ip) in [("mbox1", "10.66.64.12"), ("mbox2", "10.66.64.16")] {
            let name = format!("agent-{host}-example-com");
            state.add_node(&name, ip, AgentKind::Client);
            let _ = state.add_service(&name, "carbonio-mailbox", 8080, Some("tcp"));
            let _ = state.add_service(&name, "carbonio-mailbox-admin", 7071, Some("http"));
        }
        for (host, ip) in [("proxy1", "10.66.64.13"), ("proxy2", "10.66.64.17")] {
            let name = format!("agent-{host}-example-com");
            state.add_node(&name, ip, AgentKind::Client);
            let _ = state.add_service(&name, "carbonio-proxy", 443, Some("tcp"));
        }
        state
    }

    fn bump(&mut self) -> u64 {
        self.index += 1;
        self.index
    }

    fn bump_checks(&mut self) -> u64 {
        let index = self.bump();
        self.checks_index = index;
        index
    }

    fn find(&self, node: &str) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| n.name.eq_ignore_ascii_case(node))
    }

    pub fn node(&self, node: &str) -> Option<&FakeNode> {
        self.find(node).map(|i| &self.nodes[i])
    }

    fn node_index(&self, node: &str) -> Result<usize, FakeError> {
        self.find(node)
            .ok_or_else(|| FakeError::NoNode(node.into()))
    }

    /// Register a live node (member status alive, `serfHealth` passing).
    /// An existing node of that name is replaced.
    pub fn add_node(&mut self, name: &str, address: &str, kind: AgentKind) -> &mut FakeNode {
        let index = self.bump();
        self.checks_index = index;
        self.nodes_index = index;
        let node = FakeNode {
            name: name.to_string(),
            id: fake_uuid(name),
            address: address.to_string(),
            kind,
            member_status: Some(1),
            registered: true,
            serf: serf_check(true, index),
            services: Vec::new(),
            create_index: index,
            modify_index: index,
        };
        let at = match self.find(name) {
            Some(i) => {
                self.nodes[i] = node;
                i
            }
            None => {
                self.nodes.push(node);
                self.nodes.len() - 1
            }
        };
        &mut self.nodes[at]
    }

    /// Register `service` on `node` with one passing check of `check_kind`
    /// (`tcp`, `http`; `None`: no check, like the `consul` service).
    pub fn add_service(
        &mut self,
        node: &str,
        service: &str,
        port: u16,
        check_kind: Option<&str>,
    ) -> Result<(), FakeError> {
        let i = self.node_index(node)?;
        let index = self.bump();
        self.checks_index = index;
        self.service_index
            .insert(service.to_ascii_lowercase(), index);
        let checks = check_kind
            .map(|kind| FakeCheck {
                id: format!("service:{service}"),
                name: format!("Service '{service}' check"),
                status: CheckStatus::Passing,
                output: match kind {
                    "tcp" => format!("TCP connect localhost:{port}: Success"),
                    _ => format!("HTTP GET https://localhost:{port}/: 200 OK Output: ok"),
                },
                kind: kind.to_string(),
                interval: "5s".into(),
                timeout: "1s".into(),
                create_index: index,
                modify_index: index,
            })
            .into_iter()
            .collect();
        let entry = &mut self.nodes[i];
        entry
            .services
            .retain(|s| !s.id.eq_ignore_ascii_case(service));
        entry.services.push(FakeService {
            id: service.to_string(),
            name: service.to_string(),
            port,
            tags: Vec::new(),
            checks,
            create_index: index,
            modify_index: index,
        });
        Ok(())
    }

    /// What the node's own agent reports for its service's checks. Refused
    /// for a failed node: its agent is unreachable, so nothing rewrites its
    /// checks (they stay frozen at their last value).
    pub fn set_service_check(
        &mut self,
        node: &str,
        service: &str,
        status: CheckStatus,
        output: &str,
    ) -> Result<(), FakeError> {
        let i = self.node_index(node)?;
        if self.nodes[i].serf.status == CheckStatus::Critical {
            return Err(FakeError::NodeFailed(node.into()));
        }
        let Some(s) = self.nodes[i]
            .services
            .iter()
            .position(|s| s.name.eq_ignore_ascii_case(service))
        else {
            return Err(FakeError::NoService {
                node: node.into(),
                service: service.into(),
            });
        };
        let index = self.bump_checks();
        self.service_index
            .insert(service.to_ascii_lowercase(), index);
        for check in &mut self.nodes[i].services[s].checks {
            check.status = status;
            check.output = output.to_string();
            check.modify_index = index;
        }
        Ok(())
    }

    /// The node crashed or is cut off while the quorum holds: member status
    /// 4, `serfHealth` critical, service checks frozen.
    pub fn fail_node(&mut self, node: &str) -> Result<(), FakeError> {
        self.set_alive(node, false)
    }

    /// The node is back: member status 1, `serfHealth` passing.
    pub fn revive_node(&mut self, node: &str) -> Result<(), FakeError> {
        self.set_alive(node, true)
    }

    fn set_alive(&mut self, node: &str, alive: bool) -> Result<(), FakeError> {
        let i = self.node_index(node)?;
        let index = self.bump_checks();
        let entry = &mut self.nodes[i];
        entry.member_status = Some(if alive { 1 } else { 4 });
        let created = entry.serf.create_index;
        entry.serf = serf_check(alive, index);
        entry.serf.create_index = created;
        if alive {
            entry.registered = true;
        }
        let services: Vec<String> = entry
            .services
            .iter()
            .map(|s| s.name.to_ascii_lowercase())
            .collect();
        for service in services {
            self.service_index.insert(service, index);
        }
        Ok(())
    }

    /// A graceful leave (`systemctl stop service-discover`): member status
    /// 3 and the node deregistered, so its health is `200 []`, not critical.
    pub fn leave_node(&mut self, node: &str) -> Result<(), FakeError> {
        let i = self.node_index(node)?;
        let index = self.bump_checks();
        self.nodes_index = index;
        let entry = &mut self.nodes[i];
        entry.member_status = Some(3);
        entry.registered = false;
        let services: Vec<String> = entry
            .services
            .iter()
            .map(|s| s.name.to_ascii_lowercase())
            .collect();
        for service in services {
            self.service_index.insert(service, index);
        }
        Ok(())
    }

    /// The leader: `Some(address)`, or `None` for a cluster without quorum.
    pub fn set_leader(&mut self, leader: Option<String>) {
        match (&self.leader, &leader) {
            (Some(_), None) => self.leaderless_since_ms = Some(now_ms()),
            (_, Some(_)) => self.leaderless_since_ms = None,
            _ => {}
        }
        self.leader = leader;
    }

    /// Make every table's index `index` (a snapshot restore moves it back).
    pub fn force_index(&mut self, index: u64) {
        self.index = index;
        self.checks_index = index;
        self.nodes_index = index;
        for v in self.service_index.values_mut() {
            *v = index;
        }
    }

    fn service_table_index(&self, service: &str) -> u64 {
        self.service_index
            .get(&service.to_ascii_lowercase())
            .copied()
            .unwrap_or(self.index)
    }
}

/// A stable UUID-shaped id from a name.
fn fake_uuid(name: &str) -> String {
    let h = crc32fast::hash(name.as_bytes());
    let g = crc32fast::hash(format!("{name}#").as_bytes());
    format!(
        "{h:08x}-{:04x}-{:04x}-{:04x}-{g:08x}{:04x}",
        h >> 16,
        h & 0xffff,
        g >> 16,
        g & 0xffff
    )
}

struct Shared {
    state: Mutex<FakeState>,
    /// Bumped on every change, for blocking queries.
    changed: watch::Sender<u64>,
    /// `true` once the fake is stopping: hanging handlers give up.
    stopping: watch::Sender<bool>,
}

impl Shared {
    fn new(state: FakeState) -> Arc<Shared> {
        Arc::new(Shared {
            state: Mutex::new(state),
            changed: watch::Sender::new(0),
            stopping: watch::Sender::new(false),
        })
    }

    fn lock(&self) -> MutexGuard<'_, FakeState> {
        // A panic while holding the lock can only come from a bug in a
        // test's closure; the state is still usable for the other requests.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn update<R>(&self, f: impl FnOnce(&mut FakeState) -> R) -> R {
        let out = f(&mut self.lock());
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
        out
    }

    async fn until_stopping(&self) {
        let mut rx = self.stopping.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }
}

/// A running fake Consul agent. Dropping it stops the server.
pub struct FakeConsul {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: Option<JoinHandle<io::Result<()>>>,
}

impl std::fmt::Debug for FakeConsul {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeConsul")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl FakeConsul {
    /// Serve `state` on `listener` (the caller chooses where it listens).
    pub fn start(listener: TcpListener, state: FakeState) -> io::Result<FakeConsul> {
        let addr = listener.local_addr()?;
        let shared = Shared::new(state);
        let listener = FaultyListener {
            inner: listener,
            shared: Arc::clone(&shared),
        };
        Ok(FakeConsul::launch(listener, addr, shared))
    }

    /// Serve `state` on any listener axum can serve, e.g. a simulated
    /// network's; `addr` is what [`FakeConsul::addr`] reports. Connection
    /// faults ([`ConnectionFault`]) need a real socket and are not applied;
    /// endpoint faults are.
    pub fn start_on<L>(listener: L, addr: SocketAddr, state: FakeState) -> FakeConsul
    where
        L: axum::serve::Listener,
        L::Addr: std::fmt::Debug,
    {
        FakeConsul::launch(listener, addr, Shared::new(state))
    }

    fn launch<L>(listener: L, addr: SocketAddr, shared: Arc<Shared>) -> FakeConsul
    where
        L: axum::serve::Listener,
        L::Addr: std::fmt::Debug,
    {
        let router = axum::Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let stop = Arc::clone(&shared);
        let server = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.until_stopping().await })
                .await
        });
        FakeConsul {
            addr,
            shared,
            server: Some(server),
        }
    }

    /// Another agent of the same Consul cluster, serving on `listener`:
    /// one state behind both, so every change is seen by both at once (a
    /// real cluster's servers give every agent the same catalog). The
    /// agents share one life: stopping or dropping any of them stops all.
    pub fn also_on(&self, listener: TcpListener) -> io::Result<FakeConsul> {
        let addr = listener.local_addr()?;
        let listener = FaultyListener {
            inner: listener,
            shared: Arc::clone(&self.shared),
        };
        Ok(FakeConsul::launch(listener, addr, Arc::clone(&self.shared)))
    }

    /// Serve `state` on a fresh `127.0.0.1` port.
    pub async fn loopback(state: FakeState) -> io::Result<FakeConsul> {
        FakeConsul::start(TcpListener::bind("127.0.0.1:0").await?, state)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:PORT`, as a node file's `consul.address` says it.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Change the state; wakes blocking queries.
    pub fn update<R>(&self, f: impl FnOnce(&mut FakeState) -> R) -> R {
        self.shared.update(f)
    }

    /// A copy of the current state.
    pub fn state(&self) -> FakeState {
        self.shared.lock().clone()
    }

    /// Inject `fault` into `endpoint`'s answers until cleared.
    pub fn set_fault(&self, endpoint: Endpoint, fault: Fault) {
        self.update(|s| s.faults.insert(endpoint, fault));
    }

    pub fn clear_faults(&self) {
        self.update(|s| {
            s.faults.clear();
            s.connection_fault = None;
        });
    }

    /// Stop serving: hanging answers end, open connections close.
    pub async fn stop(mut self) {
        self.shared.stopping.send_replace(true);
        if let Some(server) = self.server.take() {
            // Bounded: a client that keeps a connection open must not keep
            // a test alive; after the grace period the task is aborted.
            let abort = server.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), server)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for FakeConsul {
    fn drop(&mut self) {
        self.shared.stopping.send_replace(true);
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// Applies [`ConnectionFault`]s before axum sees a connection.
struct FaultyListener {
    inner: TcpListener,
    shared: Arc<Shared>,
}

impl axum::serve::Listener for FaultyListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            let (stream, peer) = match self.inner.accept().await {
                Ok(accepted) => accepted,
                // Out of descriptors and the like: back off instead of
                // spinning, as axum's own listener does.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let fault = self.shared.lock().connection_fault;
            match fault {
                None => return (stream, peer),
                Some(ConnectionFault::Reset) => {
                    let _ = stream.set_zero_linger();
                    drop(stream);
                }
                Some(ConnectionFault::TooManyConnections) => {
                    tokio::spawn(async move {
                        let mut stream = stream;
                        // Let the request arrive first, as it does at a real
                        // agent (the client writes at once after connecting);
                        // answering before it would read as a protocol error.
                        let mut buf = [0u8; 4096];
                        let _ = tokio::time::timeout(
                            Duration::from_secs(1),
                            tokio::io::AsyncReadExt::read(&mut stream, &mut buf),
                        )
                        .await;
                        let _ = stream.write_all(TOO_MANY_CONNECTIONS.as_bytes()).await;
                        let _ = stream.shutdown().await;
                    });
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

// ---- the HTTP API -------------------------------------------------------

/// An answer being built: status, headers, body.
struct Answer {
    status: StatusCode,
    headers: Vec<(String, String)>,
    body: Body,
}

impl Answer {
    fn text(status: StatusCode, body: impl Into<String>) -> Answer {
        Answer {
            status,
            headers: vec![("content-type".into(), "text/plain; charset=utf-8".into())],
            body: Body::from(body.into()),
        }
    }

    fn json(body: Vec<u8>) -> Answer {
        Answer {
            status: StatusCode::OK,
            headers: vec![("content-type".into(), "application/json".into())],
            body: Body::from(body),
        }
    }

    fn header(mut self, name: &str, value: impl Into<String>) -> Answer {
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }

    fn into_response(self, acl_policy: Option<&str>) -> Response {
        let mut response = Response::new(self.body);
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        if let Some(policy) = acl_policy {
            insert(headers, "x-consul-default-acl-policy", policy);
        }
        for (name, value) in &self.headers {
            insert(headers, name, value);
        }
        response
    }
}

fn insert(headers: &mut HeaderMap, name: &str, value: &str) {
    if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::from_str(value)) {
        headers.append(name, value);
    }
}

/// The query string, with Consul's presence semantics: a key without `=`
/// is present with an empty value.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(uri: &Uri) -> Query {
        Query(
            url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }
}

/// Go's `time.ParseDuration`, for `wait` and `max_stale`.
fn parse_go_duration(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = text;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    Duration::try_from_secs_f64(total).ok()
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// The token of a request: `?token=`, then `X-Consul-Token`, then
/// `Authorization: Bearer`.
fn request_token(query: &Query, headers: &HeaderMap) -> Option<String> {
    if let Some(token) = query.get("token").filter(|t| !t.is_empty()) {
        return Some(token.to_string());
    }
    if let Some(token) = headers
        .get("x-consul-token")
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty())
    {
        return Some(token.to_string());
    }
    let auth = headers.get("authorization")?.to_str().ok()?;
    let (scheme, rest) = auth.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    rest.split_whitespace().next().map(str::to_string)
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    if let Some(control) = path.strip_prefix("/_fake/") {
        return control_api(&shared, &method, control, &body);
    }
    let acl_policy = shared
        .lock()
        .acl
        .as_ref()
        .map_or_else(|| "allow".to_string(), |a| a.default_policy.clone());
    let answer = serve(&shared, &method, &path, &uri, &headers).await;
    answer.into_response(Some(&acl_policy))
}

/// Route a `/v1/` request as Consul's mux does.
fn route(path: &str) -> Option<(Endpoint, Option<String>)> {
    let tail = |prefix: &str| path.strip_prefix(prefix).map(percent_decode);
    if let Some(node) = tail("/v1/health/node/") {
        return Some((Endpoint::HealthNode, Some(node)));
    }
    if let Some(service) = tail("/v1/health/checks/") {
        return Some((Endpoint::HealthChecks, Some(service)));
    }
    if let Some(service) = tail("/v1/health/service/") {
        return Some((Endpoint::HealthService, Some(service)));
    }
    if let Some(state) = tail("/v1/health/state/") {
        return Some((Endpoint::HealthState, Some(state)));
    }
    match path {
        "/v1/agent/members" => Some((Endpoint::AgentMembers, None)),
        "/v1/status/leader" => Some((Endpoint::StatusLeader, None)),
        "/v1/status/peers" => Some((Endpoint::StatusPeers, None)),
        "/v1/catalog/nodes" => Some((Endpoint::CatalogNodes, None)),
        _ => None,
    }
}

fn percent_decode(text: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", text.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

async fn serve(
    shared: &Shared,
    method: &Method,
    path: &str,
    uri: &Uri,
    headers: &HeaderMap,
) -> Answer {
    let Some((endpoint, arg)) = route(path) else {
        return if path.starts_with("/v1/") {
            Answer::text(StatusCode::NOT_FOUND, NOT_AN_ENDPOINT)
        } else {
            Answer::text(StatusCode::NOT_FOUND, "404 page not found\n")
        };
    };
    if method == Method::OPTIONS {
        return Answer::text(StatusCode::OK, "").header("allow", "OPTIONS,GET");
    }
    if method != Method::GET {
        return Answer::text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method {method} not allowed"),
        )
        .header("allow", "OPTIONS,GET");
    }

    let fault = shared.lock().faults.get(&endpoint).cloned();
    let mut slow = None;
    match fault {
        None => {}
        Some(Fault::Respond {
            status,
            body,
            headers,
        }) => {
            let mut answer = Answer::text(
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                body,
            );
            for (name, value) in headers {
                answer = answer.header(&name, value);
            }
            return answer;
        }
        Some(Fault::Delay(delay)) => {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shared.until_stopping() => {}
            }
        }
        Some(Fault::Garbage) => {
            return Answer::json(b"[{\"Node\": \"agent-\x01 <garbage>".to_vec());
        }
        Some(Fault::Hang) => {
            shared.until_stopping().await;
            return Answer::text(StatusCode::SERVICE_UNAVAILABLE, "fake Consul stopped\n");
        }
        Some(Fault::Huge { bytes }) => return huge(bytes),
        Some(Fault::SlowBody { chunk_delay }) => slow = Some(chunk_delay),
    }

    let query = Query::parse(uri);
    let answer = answer(shared, endpoint, arg, &query, headers).await;
    match slow {
        Some(delay) => trickle(answer, delay).await,
        None => answer,
    }
}

/// A valid JSON array of about `bytes` bytes, streamed in 64 KiB chunks.
fn huge(bytes: usize) -> Answer {
    const ITEM: &str =
        "{\"Node\":\"agent-padding\",\"CheckID\":\"serfHealth\",\"Status\":\"passing\"}";
    const PER_CHUNK: usize = 64 * 1024 / (ITEM.len() + 1);
    let count = bytes / (ITEM.len() + 1) + 1;
    let chunks = count.div_ceil(PER_CHUNK);
    let stream = futures::stream::iter((0..chunks).map(move |c| {
        let first = c * PER_CHUNK;
        let last = (first + PER_CHUNK).min(count);
        let mut chunk = String::with_capacity((last - first) * (ITEM.len() + 1) + 1);
        for i in first..last {
            chunk.push(if i == 0 { '[' } else { ',' });
            chunk.push_str(ITEM);
        }
        if last == count {
            chunk.push(']');
        }
        Ok::<_, io::Error>(Bytes::from(chunk))
    }));
    Answer {
        status: StatusCode::OK,
        headers: vec![("content-type".into(), "application/json".into())],
        body: Body::from_stream(stream),
    }
}

/// The same answer with its body sent 16 bytes at a time.
async fn trickle(answer: Answer, delay: Duration) -> Answer {
    let bytes = match axum::body::to_bytes(answer.body, usize::MAX).await {
        Ok(bytes) => bytes,
        Err(_) => Bytes::new(),
    };
    let chunks: Vec<Bytes> = bytes.chunks(16).map(Bytes::copy_from_slice).collect();
    let stream = futures::stream::unfold(chunks.into_iter(), move |mut rest| async move {
        let next = rest.next()?;
        tokio::time::sleep(delay).await;
        Some((Ok::<_, io::Error>(next), rest))
    });
    Answer {
        status: answer.status,
        headers: answer.headers,
        body: Body::from_stream(stream),
    }
}

/// Consistency of a request, by presence of `stale`/`consistent`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Consistency {
    Default,
    Consistent,
    Stale,
}

impl Consistency {
    fn header(&self) -> &'static str {
        match self {
            Consistency::Default => "leader",
            Consistency::Consistent => "consistent",
            Consistency::Stale => "stale",
        }
    }
}

/// The meta headers of §1.4.
fn meta(
    answer: Answer,
    index: u64,
    known_leader: bool,
    last_contact_ms: u64,
    consistency: Option<Consistency>,
) -> Answer {
    let mut answer = answer
        .header("x-consul-index", index.max(1).to_string())
        .header("x-consul-knownleader", known_leader.to_string())
        .header("x-consul-lastcontact", last_contact_ms.to_string())
        .header("x-consul-query-backend", "blocking-query");
    if let Some(c) = consistency {
        answer = answer.header("x-consul-effective-consistency", c.header());
    }
    answer
}

/// The deferred meta an error on a health/catalog endpoint carries.
fn error_meta(endpoint: Endpoint, answer: Answer) -> Answer {
    if endpoint.deferred_meta() {
        meta(answer, 1, false, 0, None)
    } else {
        answer
    }
}

fn prefixed(state: &FakeState, body: &str) -> String {
    match state.agent {
        AgentKind::Client => format!("{CLIENT_PREFIX}{body}"),
        AgentKind::Server => body.to_string(),
    }
}

async fn answer(
    shared: &Shared,
    endpoint: Endpoint,
    arg: Option<String>,
    query: &Query,
    headers: &HeaderMap,
) -> Answer {
    let bad = |body: &str| Answer::text(StatusCode::BAD_REQUEST, body);

    // parse(): the same checks on every endpoint, in Consul's order.
    let (datacenter, acl) = {
        let state = shared.lock();
        (state.datacenter.clone(), state.acl.clone())
    };
    let dc_ok = query
        .get("dc")
        .is_none_or(|dc| dc.is_empty() || dc == datacenter);
    let consistency = match (query.has("stale"), query.has("consistent")) {
        (true, true) => {
            return bad("Cannot specify ?stale with ?consistent, conflicting semantics.");
        }
        (true, false) => Consistency::Stale,
        (false, true) => Consistency::Consistent,
        (false, false) => Consistency::Default,
    };
    let min_index = match query.get("index") {
        None | Some("") => 0,
        Some(text) => match text.parse::<u64>() {
            Ok(index) => index,
            Err(_) => return bad("Invalid index"),
        },
    };
    let wait = match query.get("wait") {
        None | Some("") => DEFAULT_WAIT,
        Some(text) => match parse_go_duration(text) {
            Some(wait) => wait.min(MAX_WAIT),
            None => return bad("Invalid wait time"),
        },
    };
    if let Some(text) = query.get("max_stale")
        && !text.is_empty()
        && parse_go_duration(text).is_none()
    {
        return bad(&format!("Invalid max_stale value {text:?}"));
    }

    // Status endpoints: no token, no meta, no leader forwarding.
    match endpoint {
        Endpoint::StatusLeader => {
            let state = shared.lock();
            if !dc_ok {
                return Answer::text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    prefixed(&state, "No path to datacenter"),
                );
            }
            return Answer::json(to_json(&state.leader.clone().unwrap_or_default(), query));
        }
        Endpoint::StatusPeers => {
            let state = shared.lock();
            if !dc_ok {
                return Answer::text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    prefixed(&state, "No path to datacenter"),
                );
            }
            let peers: Vec<String> = state
                .nodes
                .iter()
                .filter(|n| n.kind == AgentKind::Server && n.member_status.is_some_and(|s| s != 3))
                .map(|n| format!("{}:8300", n.address))
                .collect();
            return Answer::json(to_json(&peers, query));
        }
        _ => {}
    }

    let missing = match (endpoint, arg.as_deref()) {
        (Endpoint::HealthNode, Some("")) => Some("Missing node name"),
        (Endpoint::HealthChecks | Endpoint::HealthService, Some("")) => {
            Some("Missing service name")
        }
        (Endpoint::HealthState, Some("")) => Some("Missing check state"),
        _ => None,
    };
    if let Some(body) = missing {
        return bad(body);
    }
    let passing = if endpoint == Endpoint::HealthService {
        match query.get("passing") {
            None => false,
            Some("") => true,
            Some(text) => match parse_go_bool(text) {
                Some(b) => b,
                None => return bad("Invalid value for ?passing"),
            },
        }
    } else {
        false
    };

    // Token resolution. Members are resolved by the local agent (plain
    // body); health and catalog by a server (prefixed through a client).
    let token = request_token(query, headers);
    let rights = match &acl {
        None => Rights::ReadAll,
        Some(acl) => match &token {
            None => acl.default_token,
            Some(secret) => match acl.tokens.get(secret) {
                Some(rights) => *rights,
                None => {
                    let body = if endpoint == Endpoint::AgentMembers {
                        "ACL not found".to_string()
                    } else {
                        prefixed(&shared.lock(), "ACL not found")
                    };
                    return error_meta(endpoint, Answer::text(StatusCode::FORBIDDEN, body));
                }
            },
        },
    };
    let filtered_header = token.is_some();

    if endpoint == Endpoint::AgentMembers {
        let state = shared.lock();
        let members: Vec<WireMember> = state
            .nodes
            .iter()
            .filter_map(|n| wire_member(&state, n))
            .collect();
        let dropped = rights == Rights::None && !members.is_empty();
        let members = if rights == Rights::None {
            Vec::new()
        } else {
            members
        };
        let mut answer = Answer::json(to_json(&members, query));
        if dropped && filtered_header {
            answer = answer.header("x-consul-results-filtered-by-acls", "true");
        }
        return answer;
    }

    if !dc_ok {
        let body = prefixed(&shared.lock(), "No path to datacenter");
        return error_meta(
            endpoint,
            Answer::text(StatusCode::INTERNAL_SERVER_ERROR, body),
        );
    }

    // Leaderless: default and consistent reads retry for the hold time and
    // fail; stale reads answer from the frozen catalog.
    let (leader, since, hold) = {
        let state = shared.lock();
        (
            state.leader.clone(),
            state.leaderless_since_ms,
            state.leaderless_hold,
        )
    };
    let (known_leader, last_contact) = match (&leader, since) {
        (Some(_), _) => (true, 0),
        (None, Some(since)) => (false, now_ms().saturating_sub(since)),
        (None, None) => (false, 0),
    };
    if leader.is_none() && consistency != Consistency::Stale {
        tokio::select! {
            _ = tokio::time::sleep(hold) => {}
            _ = shared.until_stopping() => {}
        }
        let body = prefixed(&shared.lock(), "No cluster leader");
        return error_meta(
            endpoint,
            Answer::text(StatusCode::INTERNAL_SERVER_ERROR, body),
        );
    }

    // Blocking query: wait for the table's index to pass `index`.
    let table_index = |state: &FakeState| match endpoint {
        Endpoint::HealthService => state.service_table_index(arg.as_deref().unwrap_or("")),
        Endpoint::CatalogNodes => state.nodes_index,
        _ => state.checks_index,
    };
    if min_index > 0 {
        let mut changed = shared.changed.subscribe();
        let deadline = tokio::time::sleep(wait);
        tokio::pin!(deadline);
        loop {
            if table_index(&shared.lock()) > min_index {
                break;
            }
            tokio::select! {
                _ = &mut deadline => break,
                _ = changed.changed() => {}
                _ = shared.until_stopping() => break,
            }
        }
    }

    let guard = shared.lock();
    let state: &FakeState = &guard;
    let index = table_index(state);
    let arg = arg.unwrap_or_default();
    let (body, dropped) = match endpoint {
        Endpoint::HealthNode => {
            let checks = state
                .node(&arg)
                .filter(|n| n.registered)
                .map(|n| node_checks(state, n))
                .unwrap_or_default();
            filter(checks, rights, query)
        }
        Endpoint::HealthChecks => {
            let checks: Vec<WireCheck> = registered(state)
                .flat_map(|n| {
                    n.services
                        .iter()
                        .filter(|s| s.name.eq_ignore_ascii_case(&arg))
                        .flat_map(move |s| s.checks.iter().map(move |c| wire_check(n, Some(s), c)))
                })
                .collect();
            filter(checks, rights, query)
        }
        Endpoint::HealthState => {
            let wanted = arg.to_ascii_lowercase();
            let checks: Vec<WireCheck> = registered(state)
                .flat_map(|n| node_checks(state, n))
                .filter(|c| wanted == "any" || c.status == wanted)
                .collect();
            filter(checks, rights, query)
        }
        Endpoint::HealthService => {
            let entries: Vec<WireEntry> = registered(state)
                .flat_map(|n| {
                    n.services
                        .iter()
                        .filter(|s| s.name.eq_ignore_ascii_case(&arg))
                        .map(move |s| wire_entry(state, n, s))
                })
                // ?passing: drop an instance if any check, node-level
                // included, is not exactly passing (after the RPC, so the
                // index still describes the unfiltered result).
                .filter(|e| !passing || e.checks.iter().all(|c| c.status == "passing"))
                .collect();
            filter(entries, rights, query)
        }
        Endpoint::CatalogNodes => {
            let mut nodes: Vec<WireNode> = registered(state).map(|n| wire_node(state, n)).collect();
            nodes.sort_by(|a, b| a.node.cmp(&b.node));
            filter(nodes, rights, query)
        }
        Endpoint::AgentMembers | Endpoint::StatusLeader | Endpoint::StatusPeers => {
            (Vec::new(), false)
        }
    };
    drop(guard);
    let mut answer = meta(
        Answer::json(body),
        index,
        known_leader,
        last_contact,
        Some(consistency),
    );
    if dropped && filtered_header {
        answer = answer.header("x-consul-results-filtered-by-acls", "true");
    }
    answer
}

fn registered(state: &FakeState) -> impl Iterator<Item = &FakeNode> {
    state.nodes.iter().filter(|n| n.registered)
}

/// Serialise a list after ACL filtering; also says whether ACLs dropped
/// anything.
fn filter<T: Serialize>(items: Vec<T>, rights: Rights, query: &Query) -> (Vec<u8>, bool) {
    match rights {
        Rights::ReadAll => (to_json(&items, query), false),
        Rights::None => (to_json(&Vec::<T>::new(), query), !items.is_empty()),
    }
}

/// Compact JSON, or with `?pretty` indented by 4 spaces plus a newline.
fn to_json<T: Serialize + ?Sized>(value: &T, query: &Query) -> Vec<u8> {
    if query.has("pretty") {
        let mut out = Vec::new();
        let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
        let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
        if value.serialize(&mut ser).is_ok() {
            out.push(b'\n');
            return out;
        }
    }
    serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec())
}

// ---- wire shapes, field order as Consul emits them ----------------------

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct WireCheck {
    node: String,
    #[serde(rename = "CheckID")]
    check_id: String,
    name: String,
    status: String,
    notes: String,
    output: String,
    #[serde(rename = "ServiceID")]
    service_id: String,
    service_name: String,
    service_tags: Vec<String>,
    #[serde(rename = "Type")]
    kind: String,
    interval: String,
    timeout: String,
    exposed_port: u16,
    definition: Empty,
    create_index: u64,
    modify_index: u64,
}

fn wire_check(node: &FakeNode, service: Option<&FakeService>, check: &FakeCheck) -> WireCheck {
    WireCheck {
        node: node.name.clone(),
        check_id: check.id.clone(),
        name: check.name.clone(),
        status: check.status.as_str().to_string(),
        notes: String::new(),
        output: check.output.clone(),
        service_id: service.map(|s| s.id.clone()).unwrap_or_default(),
        service_name: service.map(|s| s.name.clone()).unwrap_or_default(),
        service_tags: service.map(|s| s.tags.clone()).unwrap_or_default(),
        kind: check.kind.clone(),
        interval: check.interval.clone(),
        timeout: check.timeout.clone(),
        exposed_port: 0,
        definition: Empty {},
        create_index: check.create_index,
        modify_index: check.modify_index,
    }
}

/// Every check of a node: node-level first (serfHealth), then each
/// service's, in CheckID order within the node.
fn node_checks(_state: &FakeState, node: &FakeNode) -> Vec<WireCheck> {
    let mut service_checks: Vec<WireCheck> = node
        .services
        .iter()
        .flat_map(|s| s.checks.iter().map(move |c| wire_check(node, Some(s), c)))
        .collect();
    service_checks.sort_by(|a, b| a.check_id.cmp(&b.check_id));
    let mut checks = vec![wire_check(node, None, &node.serf)];
    checks.extend(service_checks);
    checks
}

#[derive(Serialize)]
struct TaggedAddresses {
    lan: String,
    lan_ipv4: String,
    wan: String,
    wan_ipv4: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct WireNode {
    #[serde(rename = "ID")]
    id: String,
    node: String,
    address: String,
    datacenter: String,
    tagged_addresses: TaggedAddresses,
    meta: BTreeMap<String, String>,
    create_index: u64,
    modify_index: u64,
}

fn wire_node(state: &FakeState, node: &FakeNode) -> WireNode {
    WireNode {
        id: node.id.clone(),
        node: node.name.clone(),
        address: node.address.clone(),
        datacenter: state.datacenter.clone(),
        tagged_addresses: TaggedAddresses {
            lan: node.address.clone(),
            lan_ipv4: node.address.clone(),
            wan: node.address.clone(),
            wan_ipv4: node.address.clone(),
        },
        meta: BTreeMap::from([
            ("consul-network-segment".to_string(), String::new()),
            ("consul-version".to_string(), CONSUL_VERSION.to_string()),
        ]),
        create_index: node.create_index,
        modify_index: node.modify_index,
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Weights {
    passing: u32,
    warning: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ProxyConfig {
    mode: String,
    mesh_gateway: Empty,
    expose: Empty,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct WireService {
    #[serde(rename = "ID")]
    id: String,
    service: String,
    tags: Vec<String>,
    address: String,
    meta: Option<BTreeMap<String, String>>,
    port: u16,
    weights: Weights,
    enable_tag_override: bool,
    proxy: ProxyConfig,
    connect: Empty,
    peer_name: String,
    create_index: u64,
    modify_index: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct WireEntry {
    node: WireNode,
    service: WireService,
    checks: Vec<WireCheck>,
}

fn wire_entry(state: &FakeState, node: &FakeNode, service: &FakeService) -> WireEntry {
    let mut checks = vec![wire_check(node, None, &node.serf)];
    checks.extend(
        service
            .checks
            .iter()
            .map(|c| wire_check(node, Some(service), c)),
    );
    WireEntry {
        node: wire_node(state, node),
        service: WireService {
            id: service.id.clone(),
            service: service.name.clone(),
            tags: service.tags.clone(),
            address: String::new(),
            meta: None,
            port: service.port,
            weights: Weights {
                passing: 1,
                warning: 1,
            },
            enable_tag_override: false,
            proxy: ProxyConfig {
                mode: String::new(),
                mesh_gateway: Empty {},
                expose: Empty {},
            },
            connect: Empty {},
            peer_name: String::new(),
            create_index: service.create_index,
            modify_index: service.modify_index,
        },
        checks,
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct WireMember {
    name: String,
    addr: String,
    port: u16,
    tags: BTreeMap<String, String>,
    status: u8,
    protocol_min: u8,
    protocol_max: u8,
    protocol_cur: u8,
    delegate_min: u8,
    delegate_max: u8,
    delegate_cur: u8,
}

fn wire_member(state: &FakeState, node: &FakeNode) -> Option<WireMember> {
    let status = node.member_status?;
    let mut tags = BTreeMap::from([
        ("build".to_string(), format!("{CONSUL_VERSION}:fake")),
        ("dc".to_string(), state.datacenter.clone()),
        ("id".to_string(), node.id.clone()),
        ("segment".to_string(), String::new()),
        ("vsn".to_string(), "2".to_string()),
        ("vsn_max".to_string(), "3".to_string()),
        ("vsn_min".to_string(), "2".to_string()),
    ]);
    match node.kind {
        AgentKind::Client => {
            tags.insert("role".into(), "node".into());
        }
        AgentKind::Server => {
            let servers = state
                .nodes
                .iter()
                .filter(|n| n.kind == AgentKind::Server)
                .count();
            for (k, v) in [
                ("role", "consul".to_string()),
                ("acls", "1".to_string()),
                ("expect", (servers / 2 + 1).to_string()),
                ("ft_fs", "1".to_string()),
                ("ft_si", "1".to_string()),
                ("grpc_port", "8502".to_string()),
                ("grpc_tls_port", "8503".to_string()),
                ("port", "8300".to_string()),
                ("raft_vsn", "3".to_string()),
                ("use_tls", "1".to_string()),
                ("wan_join_port", "8302".to_string()),
            ] {
                tags.insert(k.to_string(), v);
            }
        }
    }
    Some(WireMember {
        name: node.name.clone(),
        addr: node.address.clone(),
        port: 8301,
        tags,
        status,
        protocol_min: 1,
        protocol_max: 5,
        protocol_cur: 2,
        delegate_min: 2,
        delegate_max: 5,
        delegate_cur: 4,
    })
}

// ---- the control API ----------------------------------------------------

fn control_api(shared: &Shared, method: &Method, path: &str, body: &[u8]) -> Response {
    let reply = |status: StatusCode, text: String| Answer::text(status, text).into_response(None);
    let ok = || reply(StatusCode::OK, "ok\n".into());
    if body.len() > MAX_CONTROL_BODY {
        return reply(StatusCode::PAYLOAD_TOO_LARGE, "body too large\n".into());
    }
    let parts: Vec<&str> = path.split('/').collect();
    match (method.clone(), parts.as_slice()) {
        (Method::GET, ["state"]) => {
            let state = shared.lock().clone();
            Answer::json(serde_json::to_vec_pretty(&state).unwrap_or_default()).into_response(None)
        }
        (Method::PUT, ["state"]) => match serde_json::from_slice::<FakeState>(body) {
            Ok(state) => {
                shared.update(|s| *s = state);
                ok()
            }
            Err(e) => reply(StatusCode::BAD_REQUEST, format!("bad state: {e}\n")),
        },
        (Method::POST, ["node", name, action]) => {
            let result = shared.update(|s| match *action {
                "fail" => s.fail_node(name),
                "revive" => s.revive_node(name),
                "leave" => s.leave_node(name),
                _ => Err(FakeError::NoNode(format!("(unknown action {action:?})"))),
            });
            match result {
                Ok(()) => ok(),
                Err(e) => reply(StatusCode::BAD_REQUEST, format!("{e}\n")),
            }
        }
        (Method::PUT, ["leader"]) => match serde_json::from_slice::<Option<String>>(body) {
            Ok(leader) => {
                shared.update(|s| s.set_leader(leader));
                ok()
            }
            Err(e) => reply(StatusCode::BAD_REQUEST, format!("bad leader: {e}\n")),
        },
        (Method::PUT, ["fault", endpoint]) => {
            let Some(endpoint) = Endpoint::parse(endpoint) else {
                return reply(StatusCode::NOT_FOUND, format!("no endpoint {endpoint:?}\n"));
            };
            match serde_json::from_slice::<Fault>(body) {
                Ok(fault) => {
                    shared.update(|s| s.faults.insert(endpoint, fault));
                    ok()
                }
                Err(e) => reply(StatusCode::BAD_REQUEST, format!("bad fault: {e}\n")),
            }
        }
        (Method::DELETE, ["fault", endpoint]) => {
            let Some(endpoint) = Endpoint::parse(endpoint) else {
                return reply(StatusCode::NOT_FOUND, format!("no endpoint {endpoint:?}\n"));
            };
            shared.update(|s| s.faults.remove(&endpoint));
            ok()
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            format!("no control endpoint {method} /_fake/{path}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Go's duration syntax, as `wait` must accept it.
    #[test]
    fn go_durations_parse_like_go() {
        let cases: &[(&str, Option<u64>)] = &[
            ("10s", Some(10_000)),
            ("5m", Some(300_000)),
            ("100ms", Some(100)),
            ("300000ms", Some(300_000)),
            ("1m30s", Some(90_000)),
            ("1.5s", Some(1500)),
            ("0", Some(0)),
            ("10", None),
            ("", None),
            ("s", None),
            ("5 m", None),
        ];
        for (text, ms) in cases {
            assert_eq!(
                parse_go_duration(text).map(|d| d.as_millis() as u64),
                *ms,
                "{text:?}"
            );
        }
    }
}

//! The Consul reader: what this witness's *local* Consul agent says about
//! each target (DESIGN.md §3.2, reference/consul-api.md).
//!
//! It reads four endpoints of the local agent, never another one:
//! `/v1/status/leader` (answered locally, at once: is there a leader?),
//! `/v1/agent/members` (the local agent's gossip view, used only to explain
//! an unknown), `/v1/health/service/<svc>` (the target's service instance:
//! its node checks first, then its own checks, one consistent snapshot) and
//! `/v1/health/node/<node>` (when no service is named, or to tell a missing
//! node from a missing service). Every call carries `X-Consul-Token` when a
//! token is configured, uses default consistency (never `?stale`: a stale
//! read shows a leaderless cluster's frozen catalog), has a timeout, and
//! reads a bounded body.
//!
//! **Invariant: only a fully passing service instance counts as
//! `Passing`.** That is exactly what `?passing` keeps (every node-level
//! check, `serfHealth` first, and every check of the instance exactly
//! `passing`) plus one more condition: at least one service-level check,
//! because `serfHealth` alone only proves the host answers gossip. A dead
//! node's service checks stay frozen at `passing` while only `serfHealth`
//! turns critical, so a service check is never read without its node's
//! `serfHealth`. The reader asks for the service *without* `?passing` and
//! applies that rule itself, so that a failing instance can say which check
//! failed and why.
//!
//! What it does not do: decide anything. Evidence is attached to targets and
//! [`consul_allows_down`](super::consul_allows_down) states the rule; the
//! decision engine applies it. Consul alone never makes a site down.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use futures::StreamExt;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::config::ConsulAgentConfig;
use crate::config::defaults::MAX_CONSUL_BODY;

use super::ConsulEvidence;
use super::transport::{HttpRequest, HttpResponse, Transport, TransportError, clip};

/// Calls in flight at once against the agent. Consul answers more than
/// `limits.http_max_conns_per_client` (200) concurrent connections from one
/// address with a raw 429, and a witness must never be the cause.
pub const MAX_CONCURRENT_CALLS: usize = 8;

/// One check as the health endpoints serve it; only the fields the reader
/// uses, every one optional (unknown fields are ignored, as the reference
/// asks of readers).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct HealthCheck {
    #[serde(rename = "Node")]
    pub node: String,
    #[serde(rename = "CheckID")]
    pub check_id: String,
    #[serde(rename = "Name")]
    pub name: String,
    /// `passing`, `warning` or `critical`.
    #[serde(rename = "Status")]
    pub status: String,
    #[serde(rename = "Output")]
    pub output: String,
    /// `""` for node-level checks such as `serfHealth`.
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    #[serde(rename = "ServiceName")]
    pub service_name: String,
}

impl HealthCheck {
    fn is(&self, status: &str) -> bool {
        self.status.eq_ignore_ascii_case(status)
    }

    fn is_node_level(&self) -> bool {
        self.service_id.is_empty()
    }

    fn is_serf(&self) -> bool {
        self.check_id == SERF_HEALTH
    }

    /// Whether `name` names this check (by CheckID or by name).
    fn matches(&self, name: &str) -> bool {
        self.check_id == name
            || self.name == name
            || self.check_id.eq_ignore_ascii_case(name)
            || self.name.eq_ignore_ascii_case(name)
    }
}

/// The node-level check the Consul leader writes from Serf membership.
pub const SERF_HEALTH: &str = "serfHealth";

/// One element of `/v1/health/service/<svc>`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ServiceEntry {
    #[serde(rename = "Node")]
    pub node: EntryNode,
    #[serde(rename = "Service")]
    pub service: EntryService,
    /// Node-level checks first, then the instance's own.
    #[serde(rename = "Checks")]
    pub checks: Vec<HealthCheck>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct EntryNode {
    #[serde(rename = "Node")]
    pub node: String,
    #[serde(rename = "Address")]
    pub address: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct EntryService {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Service")]
    pub service: String,
}

/// One element of `/v1/agent/members`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Member {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Addr")]
    pub addr: String,
    #[serde(rename = "Port")]
    pub port: u16,
    #[serde(rename = "Tags")]
    pub tags: BTreeMap<String, String>,
    #[serde(rename = "Status")]
    pub status: u8,
}

impl Member {
    pub fn serf_status(&self) -> SerfStatus {
        SerfStatus::from_int(self.status)
    }
}

/// Serf's member status integers (reference/consul-api.md §2.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SerfStatus {
    None,
    Alive,
    Leaving,
    Left,
    Failed,
    Other(u8),
}

impl SerfStatus {
    pub fn from_int(status: u8) -> SerfStatus {
        match status {
            0 => SerfStatus::None,
            1 => SerfStatus::Alive,
            2 => SerfStatus::Leaving,
            3 => SerfStatus::Left,
            4 => SerfStatus::Failed,
            other => SerfStatus::Other(other),
        }
    }
}

impl fmt::Display for SerfStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SerfStatus::None => f.write_str("none (Serf status 0)"),
            SerfStatus::Alive => f.write_str("alive (Serf status 1)"),
            SerfStatus::Leaving => f.write_str("leaving (Serf status 2)"),
            SerfStatus::Left => f.write_str("left (Serf status 3)"),
            SerfStatus::Failed => f.write_str("failed (Serf status 4)"),
            SerfStatus::Other(n) => write!(f, "unknown (Serf status {n})"),
        }
    }
}

/// Why a Consul call gave no evidence, worded for the operator.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConsulError {
    #[error(
        "no answer from the Consul agent at {address} within {timeout} (a leaderless Consul \
         answers only after ~7s)"
    )]
    Timeout { address: String, timeout: String },
    #[error("cannot reach the Consul agent at {address}: {detail}; is its agent running there?")]
    Unreachable { address: String, detail: String },
    #[error(
        "Consul refused the ACL token (403 ACL not found): the token in consul.token_file does \
         not exist in this Consul cluster; fix the file, or remove token_file to use the agent's \
         default token"
    )]
    AclNotFound,
    #[error("Consul denied the request (403 {body}); give the token node:read and service:read")]
    PermissionDenied { body: String },
    #[error(
        "Consul has no leader (500 No cluster leader): its servers have lost their quorum, so its \
         health data cannot be read"
    )]
    NoLeader,
    #[error("the local Consul agent knows no live Consul server (500 No known Consul servers)")]
    NoKnownServers,
    #[error("Consul asks this witness to back off ({status}{}); evidence is skipped meanwhile", show_body(.body))]
    RateLimited { status: u16, body: String },
    #[error("Consul failed ({status}{})", show_body(.body))]
    Unavailable { status: u16, body: String },
    #[error("Consul refused {path} ({status}{})", show_body(.body))]
    Refused {
        path: String,
        status: u16,
        body: String,
    },
    #[error("Consul's answer to {path} is not what its API documents: {detail}")]
    BadAnswer { path: String, detail: String },
    #[error("Consul's answer to {path} is larger than {limit} bytes; refused rather than cut")]
    TooLarge { path: String, limit: usize },
    #[error(
        "Consul answered {path} without a known leader ({detail}): the data may be stale, so it \
         is not used"
    )]
    Stale { path: String, detail: String },
    #[error("Consul call failed: {0}")]
    Transport(String),
}

fn show_body(body: &str) -> String {
    if body.is_empty() {
        String::new()
    } else {
        format!(" {body}")
    }
}

impl ConsulError {
    /// Whether the agent answered at all (an HTTP status came back).
    pub fn agent_answered(&self) -> bool {
        !matches!(
            self,
            ConsulError::Timeout { .. }
                | ConsulError::Unreachable { .. }
                | ConsulError::Transport(_)
        )
    }
}

/// What Consul is asked about one target.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConsulTarget {
    /// The Consul node name (`agent-mbox1-example-com`); `None` when the
    /// policy names none and none can be derived.
    pub node: Option<String>,
    pub service: Option<String>,
    pub check: Option<String>,
}

/// The outcome of one reading round.
#[derive(Clone, Debug, PartialEq)]
pub struct ConsulReading {
    /// The agent answered at least one call.
    pub reachable: bool,
    /// The leader `/v1/status/leader` named; `None` for `""` or on error.
    pub leader: Option<String>,
    /// What went wrong, for `status`; `None` when every call worked and a
    /// leader is known.
    pub error: Option<String>,
    /// Some call was answered 429/503: the caller should back off.
    pub rate_limited: bool,
    /// One per target, in the order given.
    pub evidence: Vec<ConsulEvidence>,
}

/// Reads the local Consul agent.
#[derive(Clone)]
pub struct ConsulReader {
    agent: ConsulAgentConfig,
    transport: Arc<dyn Transport>,
}

impl fmt::Debug for ConsulReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulReader")
            .field("agent", &self.agent)
            .finish_non_exhaustive()
    }
}

impl ConsulReader {
    pub fn new(agent: ConsulAgentConfig, transport: Arc<dyn Transport>) -> ConsulReader {
        ConsulReader { agent, transport }
    }

    pub fn agent(&self) -> &ConsulAgentConfig {
        &self.agent
    }

    /// `GET /v1/status/leader`: the leader's address, `None` for `""` (no
    /// leader known by the answering server; a valid answer, not an error).
    pub async fn leader(&self) -> Result<Option<String>, ConsulError> {
        let path = "/v1/status/leader";
        let response = self.get(path, false).await?;
        let leader: String = decode(path, &response)?;
        Ok(Some(leader).filter(|l| !l.is_empty()))
    }

    /// `GET /v1/agent/members`: the local agent's LAN gossip view. Needs no
    /// leader; eventually consistent; never with `?wan`.
    pub async fn members(&self) -> Result<Vec<Member>, ConsulError> {
        let path = "/v1/agent/members";
        let response = self.get(path, false).await?;
        decode(path, &response)
    }

    /// `GET /v1/health/node/<node>`: every check on the node, `serfHealth`
    /// included. `[]` for an unknown, left or misspelt node.
    pub async fn node_checks(&self, node: &str) -> Result<Vec<HealthCheck>, ConsulError> {
        let path = format!("/v1/health/node/{}", encode_segment(node));
        let response = self.get(&path, true).await?;
        decode(&path, &response)
    }

    /// `GET /v1/health/service/<service>` (without `?passing`: see the
    /// module doc): every instance with its node's checks and its own.
    pub async fn service_instances(&self, service: &str) -> Result<Vec<ServiceEntry>, ConsulError> {
        let path = format!("/v1/health/service/{}", encode_segment(service));
        let response = self.get(&path, true).await?;
        decode(&path, &response)
    }

    /// One reading round: the leader, the members, and evidence for every
    /// target. Each call is bounded by the agent timeout and at most
    /// [`MAX_CONCURRENT_CALLS`] run at once; a second, smaller wave asks
    /// for nodes whose service instance was missing.
    pub async fn read(&self, targets: &[ConsulTarget]) -> ConsulReading {
        let mut asks: BTreeSet<Ask> = BTreeSet::new();
        for target in targets {
            match (&target.node, &target.service) {
                (Some(_), Some(service)) => {
                    asks.insert(Ask::Service(service.clone()));
                }
                (Some(node), None) => {
                    asks.insert(Ask::Node(node.clone()));
                }
                (None, _) => {}
            }
        }
        let (leader, members, mut answers) = tokio::join!(
            self.leader(),
            self.members(),
            self.ask_all(asks.iter().cloned())
        );

        // Second wave: a service without an instance on the target's node
        // means either the node is gone or the service is; ask the node.
        let mut second: BTreeSet<Ask> = BTreeSet::new();
        for target in targets {
            if let (Some(node), Some(service)) = (&target.node, &target.service)
                && let Some(Answer::Service(Ok(entries))) =
                    answers.get(&Ask::Service(service.clone()))
                && !entries
                    .iter()
                    .any(|e| e.node.node.eq_ignore_ascii_case(node))
                && !answers.contains_key(&Ask::Node(node.clone()))
            {
                second.insert(Ask::Node(node.clone()));
            }
        }
        if !second.is_empty() {
            answers.extend(self.ask_all(second.into_iter()).await);
        }

        let gossip: Option<&Vec<Member>> = members.as_ref().ok();
        let evidence = targets
            .iter()
            .map(|t| evidence_for(t, &answers, gossip))
            .collect();

        let mut errors: Vec<String> = Vec::new();
        let mut note = |e: String| {
            if !errors.contains(&e) {
                errors.push(e);
            }
        };
        let mut reachable = false;
        let mut rate_limited = false;
        let mut seen = |r: Result<(), &ConsulError>| match r {
            Ok(()) => reachable = true,
            Err(e) => {
                reachable |= e.agent_answered();
                rate_limited |= matches!(e, ConsulError::RateLimited { .. });
            }
        };
        seen(leader.as_ref().map(|_| ()));
        seen(members.as_ref().map(|_| ()));
        for answer in answers.values() {
            seen(answer.as_result());
        }
        match &leader {
            Ok(None) => note(
                "Consul reports no leader (/v1/status/leader answered \"\"): its servers have \
                 lost their quorum"
                    .to_string(),
            ),
            Ok(Some(_)) => {}
            Err(e) => note(e.to_string()),
        }
        if let Err(e) = &members {
            note(e.to_string());
        }
        for answer in answers.values() {
            if let Err(e) = answer.as_result() {
                note(e.to_string());
            }
        }
        let error = if errors.is_empty() {
            None
        } else {
            let shown = errors.len().min(3);
            let mut text = errors[..shown].join("; ");
            if errors.len() > shown {
                text.push_str(&format!("; and {} more", errors.len() - shown));
            }
            Some(text)
        };
        // A round with a 429 yields no evidence at all: nothing it said may
        // outlive the back-off as a stale "passing".
        let evidence = if rate_limited {
            let reason = "Consul asked this witness to back off (429); no evidence this round";
            targets
                .iter()
                .map(|_| ConsulEvidence::Unknown {
                    reason: reason.to_string(),
                })
                .collect()
        } else {
            evidence
        };
        ConsulReading {
            reachable,
            leader: leader.ok().flatten(),
            error,
            rate_limited,
            evidence,
        }
    }

    async fn ask_all(&self, asks: impl Iterator<Item = Ask>) -> BTreeMap<Ask, Answer> {
        futures::stream::iter(asks)
            .map(|ask| async move {
                let answer = match &ask {
                    Ask::Node(node) => Answer::Node(self.node_checks(node).await),
                    Ask::Service(service) => Answer::Service(self.service_instances(service).await),
                };
                (ask, answer)
            })
            .buffer_unordered(MAX_CONCURRENT_CALLS)
            .collect()
            .await
    }

    /// One GET against the agent, classified. `health` marks the endpoints
    /// that carry consistency headers, which are checked.
    async fn get(&self, path: &str, health: bool) -> Result<HttpResponse, ConsulError> {
        let mut url = format!("{}{path}", self.agent.base_url());
        if let Some(dc) = &self.agent.datacenter {
            url.push_str("?dc=");
            url.push_str(&encode_segment(dc));
        }
        let mut headers = Vec::new();
        if let Some(token) = &self.agent.token {
            headers.push(("X-Consul-Token".to_string(), token.expose().to_string()));
        }
        let timeout = self.agent.timeout;
        let request = HttpRequest {
            url,
            headers,
            timeout,
            // A scheme of https means the operator wants TLS; verify it.
            tls_verify: true,
            // One byte more than allowed, to tell "exactly the limit" from "more".
            max_body: MAX_CONSUL_BODY + 1,
        };
        let response =
            match tokio::time::timeout(timeout, self.transport.http_get(request)).await {
                Err(_) => Err(TransportError::Timeout(timeout)),
                Ok(result) => result,
            }
            .map_err(|e| self.transport_error(e))?;
        let response = classify(path, response)?;
        if health {
            check_consistency(path, &response)?;
        }
        Ok(response)
    }

    fn transport_error(&self, error: TransportError) -> ConsulError {
        let address = self.agent.base_url();
        match error {
            TransportError::Timeout(t) => ConsulError::Timeout {
                address,
                timeout: crate::config::show(t),
            },
            TransportError::Connect(detail) | TransportError::Tls(detail) => {
                ConsulError::Unreachable { address, detail }
            }
            other => ConsulError::Transport(other.to_string()),
        }
    }
}

/// Map a status and body to a result, the way reference/consul-api.md §6
/// says: by status, then by substring of the body (which tolerates a client
/// agent's `rpc error making call: ` prefix).
fn classify(path: &str, response: HttpResponse) -> Result<HttpResponse, ConsulError> {
    if response.truncated || response.body.len() > MAX_CONSUL_BODY {
        return Err(ConsulError::TooLarge {
            path: path.to_string(),
            limit: MAX_CONSUL_BODY,
        });
    }
    let status = response.status;
    if status == 200 {
        return Ok(response);
    }
    let body = clip(String::from_utf8_lossy(&response.body).trim(), 200);
    Err(match status {
        403 if body.contains("ACL not found") => ConsulError::AclNotFound,
        403 => ConsulError::PermissionDenied { body },
        429 | 503 => ConsulError::RateLimited { status, body },
        500 if body.contains("No cluster leader") => ConsulError::NoLeader,
        500 if body.contains("No known Consul servers") => ConsulError::NoKnownServers,
        500..=599 => ConsulError::Unavailable { status, body },
        _ => ConsulError::Refused {
            path: path.to_string(),
            status,
            body,
        },
    })
}

/// A default-consistency read is answered by the leader. If the answer says
/// otherwise (an agent with `discovery_max_stale`, a proxy in between), the
/// data may be the frozen catalog of a leaderless cluster: refuse it.
fn check_consistency(path: &str, response: &HttpResponse) -> Result<(), ConsulError> {
    let stale = |detail: String| ConsulError::Stale {
        path: path.to_string(),
        detail,
    };
    if let Some(known) = response.header("x-consul-knownleader")
        && known.trim().eq_ignore_ascii_case("false")
    {
        return Err(stale("X-Consul-KnownLeader: false".into()));
    }
    if let Some(consistency) = response.header("x-consul-effective-consistency")
        && consistency.trim().eq_ignore_ascii_case("stale")
    {
        return Err(stale("X-Consul-Effective-Consistency: stale".into()));
    }
    Ok(())
}

fn decode<T: DeserializeOwned>(path: &str, response: &HttpResponse) -> Result<T, ConsulError> {
    serde_json::from_slice(&response.body).map_err(|e| ConsulError::BadAnswer {
        path: path.to_string(),
        detail: format!(
            "{e} (body starts {:?})",
            clip(&String::from_utf8_lossy(&response.body), 60)
        ),
    })
}

/// Percent-encode one URL path segment (everything but RFC 3986's
/// unreserved characters), so no name can change the path.
fn encode_segment(segment: &str) -> String {
    // "." and ".." would be resolved away by URL normalisation.
    if segment == "." || segment == ".." {
        return segment.replace('.', "%2E");
    }
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ask {
    Node(String),
    Service(String),
}

#[derive(Clone, Debug)]
enum Answer {
    Node(Result<Vec<HealthCheck>, ConsulError>),
    Service(Result<Vec<ServiceEntry>, ConsulError>),
}

impl Answer {
    fn as_result(&self) -> Result<(), &ConsulError> {
        match self {
            Answer::Node(r) => r.as_ref().map(|_| ()),
            Answer::Service(r) => r.as_ref().map(|_| ()),
        }
    }
}

fn evidence_for(
    target: &ConsulTarget,
    answers: &BTreeMap<Ask, Answer>,
    gossip: Option<&Vec<Member>>,
) -> ConsulEvidence {
    let Some(node) = &target.node else {
        return ConsulEvidence::Unknown {
            reason: "no Consul node is known for this target (set consul_node)".into(),
        };
    };
    let unknown = |error: &ConsulError| ConsulEvidence::Unknown {
        reason: with_gossip(error.to_string(), node, gossip),
    };
    let node_answer = || match answers.get(&Ask::Node(node.clone())) {
        Some(Answer::Node(Ok(checks))) => Ok(checks),
        Some(Answer::Node(Err(e))) => Err(unknown(e)),
        _ => Err(ConsulEvidence::Unknown {
            reason: format!("Consul was not asked about node {node}"),
        }),
    };
    match &target.service {
        None => match node_answer() {
            Ok(checks) => evidence_from_node(node, checks, target.check.as_deref()),
            Err(evidence) => evidence,
        },
        Some(service) => match answers.get(&Ask::Service(service.clone())) {
            Some(Answer::Service(Ok(entries))) => {
                match evidence_from_service(node, service, entries, target.check.as_deref()) {
                    Some(evidence) => evidence,
                    None => match node_answer() {
                        Ok(checks) => match evidence_from_node(node, checks, None) {
                            e @ (ConsulEvidence::NotRegistered | ConsulEvidence::NodeDead) => e,
                            _ => ConsulEvidence::Unknown {
                                reason: format!(
                                    "service {service:?} has no instance on node {node}: check \
                                     consul_service and consul_node"
                                ),
                            },
                        },
                        Err(evidence) => evidence,
                    },
                }
            }
            Some(Answer::Service(Err(e))) => unknown(e),
            _ => ConsulEvidence::Unknown {
                reason: format!("Consul was not asked about service {service:?}"),
            },
        },
    }
}

/// Add what the local gossip view says about `node` to an error, when it
/// says something: useful while the health endpoints are unavailable.
fn with_gossip(reason: String, node: &str, gossip: Option<&Vec<Member>>) -> String {
    let Some(members) = gossip else {
        return reason;
    };
    match members.iter().find(|m| m.name.eq_ignore_ascii_case(node)) {
        Some(member) if member.serf_status() != SerfStatus::Alive => format!(
            "{reason}; the local agent's gossip view says {node} is {}",
            member.serf_status()
        ),
        _ => reason,
    }
}

/// Evidence from `/v1/health/node/<node>` alone (no service named).
///
/// `[]` is `NotRegistered`; `serfHealth` critical is `NodeDead`; a named
/// check (`check`) passing along with every node-level check is `Passing`;
/// with no check named, the node's `serfHealth` alone proves only that the
/// host answers gossip: `Unknown`.
pub fn evidence_from_node(
    node: &str,
    checks: &[HealthCheck],
    check: Option<&str>,
) -> ConsulEvidence {
    if checks.is_empty() {
        return ConsulEvidence::NotRegistered;
    }
    if let Some(evidence) = node_level(node, checks.iter().filter(|c| c.is_node_level())) {
        return evidence;
    }
    let Some(name) = check.filter(|n| *n != SERF_HEALTH) else {
        return ConsulEvidence::Unknown {
            reason: format!(
                "only node {node}'s serfHealth is known: it proves the host answers gossip, not \
                 that the service works (set consul_service or consul_check)"
            ),
        };
    };
    let named: Vec<&HealthCheck> = checks
        .iter()
        .filter(|c| !c.is_node_level() && c.matches(name))
        .collect();
    if named.is_empty() {
        return ConsulEvidence::Unknown {
            reason: format!("node {node} has no check named {name:?}: check consul_check"),
        };
    }
    judge(node, named)
}

/// Evidence from `/v1/health/service/<service>` for the instance(s) on
/// `node`; `None` when the service has no instance there.
pub fn evidence_from_service(
    node: &str,
    service: &str,
    entries: &[ServiceEntry],
    check: Option<&str>,
) -> Option<ConsulEvidence> {
    let mine: Vec<&ServiceEntry> = entries
        .iter()
        .filter(|e| e.node.node.eq_ignore_ascii_case(node))
        .collect();
    if mine.is_empty() {
        return None;
    }
    let verdicts: Vec<ConsulEvidence> = mine
        .iter()
        .map(|entry| instance_evidence(node, service, entry, check))
        .collect();
    // Several instances of the service on one node: one dead node kills
    // all; otherwise all must pass to veto, and the first critical one
    // speaks for them.
    if verdicts.contains(&ConsulEvidence::NodeDead) {
        return Some(ConsulEvidence::NodeDead);
    }
    if verdicts.iter().all(|v| *v == ConsulEvidence::Passing) {
        return Some(ConsulEvidence::Passing);
    }
    verdicts
        .iter()
        .find(|v| matches!(v, ConsulEvidence::Critical { .. }))
        .or_else(|| verdicts.iter().find(|v| **v != ConsulEvidence::Passing))
        .cloned()
}

fn instance_evidence(
    node: &str,
    service: &str,
    entry: &ServiceEntry,
    check: Option<&str>,
) -> ConsulEvidence {
    if let Some(evidence) = node_level(node, entry.checks.iter().filter(|c| c.is_node_level())) {
        return evidence;
    }
    let own = entry.checks.iter().filter(|c| !c.is_node_level());
    let relevant: Vec<&HealthCheck> = match check {
        Some(name) => own.filter(|c| c.matches(name)).collect(),
        None => own.collect(),
    };
    if relevant.is_empty() {
        return ConsulEvidence::Unknown {
            reason: match check {
                Some(name) => format!(
                    "service {service:?} on node {node} has no check named {name:?}: check \
                     consul_check"
                ),
                None => format!(
                    "service {service:?} on node {node} has no health check, so Consul cannot say \
                     whether it works"
                ),
            },
        };
    }
    judge(node, relevant)
}

/// The node-level verdict, if it settles the matter: no `serfHealth`, a
/// critical `serfHealth` (the node is dead and its service checks are
/// frozen), or another node-level check that is not passing (maintenance).
fn node_level<'a>(
    node: &str,
    checks: impl Iterator<Item = &'a HealthCheck>,
) -> Option<ConsulEvidence> {
    let checks: Vec<&HealthCheck> = checks.collect();
    let Some(serf) = checks.iter().find(|c| c.is_serf()) else {
        return Some(ConsulEvidence::Unknown {
            reason: format!(
                "node {node} has no serfHealth check, so its service checks cannot be trusted"
            ),
        });
    };
    if serf.is("critical") {
        return Some(ConsulEvidence::NodeDead);
    }
    if !serf.is("passing") {
        return Some(ConsulEvidence::Unknown {
            reason: format!("node {node}'s serfHealth is {:?}", serf.status),
        });
    }
    judge_failing(node, checks.iter().copied().filter(|c| !c.is_serf()))
}

/// All `checks` passing is `Passing`; a critical one is `Critical`; a
/// warning (or an unknown status) is `Unknown`: neither proof of health
/// nor of failure.
fn judge(node: &str, checks: Vec<&HealthCheck>) -> ConsulEvidence {
    judge_failing(node, checks.into_iter()).unwrap_or(ConsulEvidence::Passing)
}

fn judge_failing<'a>(
    node: &str,
    checks: impl Iterator<Item = &'a HealthCheck>,
) -> Option<ConsulEvidence> {
    let checks: Vec<&HealthCheck> = checks.collect();
    if let Some(critical) = checks.iter().find(|c| c.is("critical")) {
        return Some(ConsulEvidence::Critical {
            check: critical.check_id.clone(),
            output: clip(critical.output.trim(), 300),
        });
    }
    checks
        .iter()
        .find(|c| !c.is("passing"))
        .map(|other| ConsulEvidence::Unknown {
            reason: format!(
                "check {} on node {node} is {:?}: neither passing nor critical",
                other.check_id, other.status
            ),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(node: &str, id: &str, service: &str, status: &str) -> HealthCheck {
        HealthCheck {
            node: node.into(),
            check_id: id.into(),
            name: id.into(),
            status: status.into(),
            output: format!("{id} is {status}"),
            service_id: service.into(),
            service_name: service.into(),
        }
    }

    const N: &str = "agent-mbox1-example-com";

    fn serf(status: &str) -> HealthCheck {
        check(N, SERF_HEALTH, "", status)
    }

    fn svc(status: &str) -> HealthCheck {
        check(N, "service:carbonio-mailbox", "carbonio-mailbox", status)
    }

    fn entry(checks: Vec<HealthCheck>) -> ServiceEntry {
        ServiceEntry {
            node: EntryNode {
                node: N.into(),
                address: "10.0.0.1".into(),
            },
            service: EntryService {
                id: "carbonio-mailbox".into(),
                service: "carbonio-mailbox".into(),
            },
            checks,
        }
    }

    fn is_unknown(e: &ConsulEvidence) -> bool {
        matches!(e, ConsulEvidence::Unknown { .. })
    }

    /// The `?passing` rule, applied by the reader: only a passing service
    /// check on a node whose serfHealth passes is `Passing`; a dead node's
    /// frozen "passing" service check is `NodeDead`.
    #[test]
    fn service_evidence_needs_the_service_check_and_serf_health() {
        let cases: Vec<(&str, Vec<HealthCheck>, &str)> = vec![
            (
                "both passing",
                vec![serf("passing"), svc("passing")],
                "passing",
            ),
            (
                "dead node, frozen service check",
                vec![serf("critical"), svc("passing")],
                "dead",
            ),
            (
                "service critical",
                vec![serf("passing"), svc("critical")],
                "critical",
            ),
            (
                "service warning",
                vec![serf("passing"), svc("warning")],
                "unknown",
            ),
            ("serfHealth alone", vec![serf("passing")], "unknown"),
            ("no serfHealth", vec![svc("passing")], "unknown"),
            (
                "node maintenance",
                vec![
                    serf("passing"),
                    check(N, "_node_maintenance", "", "critical"),
                    svc("passing"),
                ],
                "critical",
            ),
            (
                "status case",
                vec![serf("PASSING"), svc("Passing")],
                "passing",
            ),
        ];
        for (what, checks, want) in cases {
            let got = evidence_from_service(N, "carbonio-mailbox", &[entry(checks)], None)
                .expect("instance present");
            let ok = match want {
                "passing" => got == ConsulEvidence::Passing,
                "dead" => got == ConsulEvidence::NodeDead,
                "critical" => matches!(got, ConsulEvidence::Critical { .. }),
                _ => is_unknown(&got),
            };
            assert!(ok, "{what}: got {got:?}");
        }
        assert_eq!(
            evidence_from_service(
                "agent-other",
                "carbonio-mailbox",
                &[entry(vec![serf("passing")])],
                None
            ),
            None,
            "no instance on that node"
        );
    }

    /// A named check narrows the service checks, never the node checks.
    #[test]
    fn named_check_selects_one_service_check() {
        let other = check(
            N,
            "service:carbonio-mailbox:2",
            "carbonio-mailbox",
            "critical",
        );
        let checks = vec![serf("passing"), svc("passing"), other];
        let e = entry(checks.clone());
        assert_eq!(
            evidence_from_service(
                N,
                "x",
                std::slice::from_ref(&e),
                Some("service:carbonio-mailbox")
            ),
            Some(ConsulEvidence::Passing)
        );
        assert!(matches!(
            evidence_from_service(N, "x", std::slice::from_ref(&e), None),
            Some(ConsulEvidence::Critical { .. })
        ));
        assert!(is_unknown(
            &evidence_from_service(N, "x", &[e], Some("service:nope")).expect("instance")
        ));
        assert_eq!(
            evidence_from_node(N, &checks, Some("service:carbonio-mailbox")),
            ConsulEvidence::Passing
        );
    }

    /// Node-only evidence: `[]` is not registered, serfHealth critical is a
    /// dead node, serfHealth passing alone proves nothing.
    #[test]
    fn node_evidence_without_a_service() {
        assert_eq!(
            evidence_from_node(N, &[], None),
            ConsulEvidence::NotRegistered
        );
        assert_eq!(
            evidence_from_node(N, &[serf("critical"), svc("passing")], None),
            ConsulEvidence::NodeDead
        );
        assert!(is_unknown(&evidence_from_node(
            N,
            &[serf("passing"), svc("passing")],
            None
        )));
        assert!(is_unknown(&evidence_from_node(
            N,
            &[serf("passing")],
            Some(SERF_HEALTH)
        )));
        assert!(is_unknown(&evidence_from_node(
            N,
            &[serf("passing")],
            Some("service:x")
        )));
    }

    /// Path segments cannot escape their place in the URL.
    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(
            encode_segment("agent-mbox1-example-com"),
            "agent-mbox1-example-com"
        );
        assert_eq!(encode_segment("a/b?c d"), "a%2Fb%3Fc%20d");
        assert_eq!(encode_segment("../x"), "..%2Fx");
        assert_eq!(encode_segment(".."), "%2E%2E");
    }
}

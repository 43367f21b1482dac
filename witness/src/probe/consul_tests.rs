//! The Consul reader against the fake Consul, one test per documented
//! answer and failure (reference/consul-api.md §1.7, §5, §6). Every fake
//! listens on 127.0.0.1 and stops with its test.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;

use super::consul::{ConsulError, ConsulReader, ConsulTarget, SerfStatus};
use super::*;
use crate::config::ConsulToken;
use crate::sim::FakeConsul;
use crate::sim::consul::{
    AgentKind, CheckStatus, ConnectionFault, Endpoint, FakeAcl, FakeState, Fault, Rights,
};

const MBOX1: &str = "agent-mbox1-example-com";
const ALL: [Endpoint; 8] = [
    Endpoint::HealthNode,
    Endpoint::HealthChecks,
    Endpoint::HealthService,
    Endpoint::HealthState,
    Endpoint::AgentMembers,
    Endpoint::StatusLeader,
    Endpoint::StatusPeers,
    Endpoint::CatalogNodes,
];

async fn start(state: FakeState) -> FakeConsul {
    FakeConsul::loopback(state).await.expect("fake consul")
}

fn agent_at(address: String, timeout: Duration) -> ConsulAgentConfig {
    let mut agent = ConsulAgentConfig::local(address);
    agent.timeout = timeout;
    agent
}

fn reader(fake: &FakeConsul) -> ConsulReader {
    reader_with(fake, Duration::from_secs(3), None)
}

fn reader_with(fake: &FakeConsul, timeout: Duration, token: Option<&str>) -> ConsulReader {
    let mut agent = agent_at(fake.address(), timeout);
    agent.token = token.map(ConsulToken::new);
    ConsulReader::new(
        agent,
        RealTransport::shared().unwrap_or_else(|e| panic!("{e}")),
    )
}

fn mailbox() -> ConsulTarget {
    ConsulTarget {
        node: Some(MBOX1.into()),
        service: Some("carbonio-mailbox".into()),
        check: None,
    }
}

fn node_only(node: &str) -> ConsulTarget {
    ConsulTarget {
        node: Some(node.into()),
        service: None,
        check: None,
    }
}

fn unknown_reason(evidence: &ConsulEvidence) -> &str {
    match evidence {
        ConsulEvidence::Unknown { reason } => reason,
        other => panic!("expected Unknown, got {other:?}"),
    }
}

fn fault_everywhere(fake: &FakeConsul, fault: Fault) {
    for endpoint in ALL {
        fake.set_fault(endpoint, fault.clone());
    }
}

/// A healthy Carbonio cluster: a leader, live members with Serf status 1,
/// and a mailbox whose service instance is fully passing.
#[tokio::test]
async fn reads_a_healthy_carbonio_cluster() {
    let fake = start(FakeState::carbonio()).await;
    let reader = reader(&fake);
    assert_eq!(reader.leader().await, Ok(Some("10.66.64.7:8300".into())));
    let members = reader.members().await.expect("members");
    assert_eq!(members.len(), 7);
    assert!(members.iter().all(|m| m.serf_status() == SerfStatus::Alive));
    assert!(members.iter().any(|m| m.name == "server-svc1-example-com"
        && m.tags.get("role").map(String::as_str) == Some("consul")));
    let checks = reader.node_checks(MBOX1).await.expect("node checks");
    assert_eq!(checks[0].check_id, "serfHealth", "node checks come first");

    let reading = reader
        .read(&[mailbox(), node_only("agent-proxy1-example-com")])
        .await;
    assert!(reading.reachable);
    assert_eq!(reading.leader.as_deref(), Some("10.66.64.7:8300"));
    assert_eq!(reading.error, None);
    assert!(!reading.rate_limited);
    assert_eq!(reading.evidence[0], ConsulEvidence::Passing);
    assert!(
        unknown_reason(&reading.evidence[1]).contains("serfHealth"),
        "serfHealth alone proves only gossip: {:?}",
        reading.evidence[1]
    );
    fake.stop().await;
}

/// `200 []` for a node Consul does not know: not registered, never healthy.
#[tokio::test]
async fn unknown_node_is_not_registered() {
    let fake = start(FakeState::carbonio()).await;
    let reader = reader(&fake);
    assert_eq!(
        reader.node_checks("agent-mbox9-example-com").await,
        Ok(vec![])
    );
    let mut target = mailbox();
    target.node = Some("agent-mbox9-example-com".into());
    let reading = reader.read(&[target, node_only("mbox1.example.com")]).await;
    assert_eq!(
        reading.evidence,
        [ConsulEvidence::NotRegistered, ConsulEvidence::NotRegistered]
    );
    assert!(!consul_allows_down(
        ConsulMode::Require,
        Some(&reading.evidence[0])
    ));
    fake.stop().await;
}

/// A gracefully stopped agent leaves: its node is deregistered, so Consul
/// says nothing about it rather than "critical".
#[tokio::test]
async fn left_node_is_not_registered_never_critical() {
    let fake = start(FakeState::carbonio()).await;
    fake.update(|s| s.leave_node(MBOX1)).expect("node");
    let reading = reader(&fake).read(&[mailbox()]).await;
    assert_eq!(reading.evidence, [ConsulEvidence::NotRegistered]);
    let members = reader(&fake).members().await.expect("members");
    let mbox = members
        .iter()
        .find(|m| m.name == MBOX1)
        .expect("still a member");
    assert_eq!(mbox.serf_status(), SerfStatus::Left);
    fake.stop().await;
}

/// A crashed node: `serfHealth` critical while its service check stays
/// frozen at passing. The reader must call it dead, not passing.
#[tokio::test]
async fn failed_node_is_dead_although_its_service_check_stays_passing() {
    let fake = start(FakeState::carbonio()).await;
    fake.update(|s| s.fail_node(MBOX1)).expect("node");
    assert!(
        fake.update(|s| s.set_service_check(MBOX1, "carbonio-mailbox", CheckStatus::Critical, "x"))
            .is_err(),
        "a failed node's checks are frozen"
    );
    let reader = reader(&fake);
    let checks = reader.node_checks(MBOX1).await.expect("checks");
    assert!(
        checks
            .iter()
            .any(|c| c.check_id == "service:carbonio-mailbox" && c.status == "passing")
    );
    let reading = reader.read(&[mailbox(), node_only(MBOX1)]).await;
    assert_eq!(
        reading.evidence,
        [ConsulEvidence::NodeDead, ConsulEvidence::NodeDead]
    );
    assert!(consul_allows_down(
        ConsulMode::Corroborate,
        Some(&reading.evidence[0])
    ));
    let members = reader.members().await.expect("members");
    assert_eq!(
        members
            .iter()
            .find(|m| m.name == MBOX1)
            .map(|m| m.serf_status()),
        Some(SerfStatus::Failed)
    );
    fake.stop().await;
}

/// A live node whose service check is critical: `Critical`, naming the
/// check and quoting its output.
#[tokio::test]
async fn critical_service_check_is_reported_with_its_output() {
    let fake = start(FakeState::carbonio()).await;
    let output = "dial tcp 127.0.0.1:8080: connect: connection refused";
    fake.update(|s| s.set_service_check(MBOX1, "carbonio-mailbox", CheckStatus::Critical, output))
        .expect("check");
    let reading = reader(&fake).read(&[mailbox()]).await;
    assert_eq!(
        reading.evidence,
        [ConsulEvidence::Critical {
            check: "service:carbonio-mailbox".into(),
            output: output.into()
        }]
    );
    fake.stop().await;
}

/// A warning is neither proof of health nor of failure.
#[tokio::test]
async fn warning_check_is_neither_passing_nor_critical() {
    let fake = start(FakeState::carbonio()).await;
    fake.update(|s| s.set_service_check(MBOX1, "carbonio-mailbox", CheckStatus::Warning, "429"))
        .expect("check");
    let reading = reader(&fake).read(&[mailbox()]).await;
    assert!(unknown_reason(&reading.evidence[0]).contains("\"warning\""));
    fake.stop().await;
}

/// A service name that has no instance on a live node is a configuration
/// mistake: unknown, with a hint.
#[tokio::test]
async fn service_missing_on_a_live_node_is_unknown_with_a_hint() {
    let fake = start(FakeState::carbonio()).await;
    let mut target = mailbox();
    target.node = Some("agent-proxy1-example-com".into());
    let mut misspelt = mailbox();
    misspelt.service = Some("carbonio-mailboxd".into());
    let reading = reader(&fake).read(&[target, misspelt]).await;
    for evidence in &reading.evidence {
        assert!(
            unknown_reason(evidence).contains("check consul_service and consul_node"),
            "{evidence:?}"
        );
    }
    fake.stop().await;
}

/// `403 ACL not found`: a token problem, said as such, from a server agent
/// and through a client agent's `rpc error making call: ` prefix.
#[tokio::test]
async fn acl_not_found_is_a_token_problem() {
    for kind in [AgentKind::Server, AgentKind::Client] {
        let mut state = FakeState::carbonio();
        state.agent = kind;
        let fake = start(state).await;
        let reader = reader_with(&fake, Duration::from_secs(3), Some("deleted-token"));
        assert_eq!(
            reader.node_checks(MBOX1).await,
            Err(ConsulError::AclNotFound),
            "{kind:?}"
        );
        assert_eq!(
            reader.members().await,
            Err(ConsulError::AclNotFound),
            "{kind:?}"
        );
        let reading = reader.read(&[mailbox()]).await;
        assert!(reading.reachable, "the agent answered");
        assert_eq!(
            reading.leader.as_deref(),
            Some("10.66.64.7:8300"),
            "status ignores tokens"
        );
        let error = reading.error.unwrap_or_default();
        assert!(
            error.contains("ACL not found") && error.contains("token_file"),
            "{error}"
        );
        assert!(unknown_reason(&reading.evidence[0]).contains("ACL not found"));
        fake.stop().await;
    }
}

/// A token without read rights gets `200 []`: the reader must take that as
/// "not registered", never as healthy.
#[tokio::test]
async fn acl_filtered_answer_is_not_registered_never_healthy() {
    let mut state = FakeState::carbonio();
    state.acl = Some(FakeAcl {
        default_policy: "deny".into(),
        default_token: Rights::None,
        tokens: [("reader".to_string(), Rights::ReadAll)].into(),
    });
    let fake = start(state).await;
    let filtered = reader(&fake).read(&[mailbox(), node_only(MBOX1)]).await;
    assert_eq!(
        filtered.evidence,
        [ConsulEvidence::NotRegistered, ConsulEvidence::NotRegistered]
    );
    let allowed = reader_with(&fake, Duration::from_secs(3), Some("reader"))
        .read(&[mailbox()])
        .await;
    assert_eq!(allowed.evidence, [ConsulEvidence::Passing]);
    fake.stop().await;
}

/// Leaderless: `/v1/status/leader` answers `""`, default reads fail with
/// `500 No cluster leader` after the hold time, and nothing is vetoed.
#[tokio::test]
async fn no_cluster_leader_is_reported_and_vetoes_nothing() {
    for kind in [AgentKind::Server, AgentKind::Client] {
        let mut state = FakeState::carbonio();
        state.agent = kind;
        state.leaderless_hold = Duration::from_millis(100);
        state.set_leader(None);
        let fake = start(state).await;
        let reader = reader(&fake);
        assert_eq!(reader.leader().await, Ok(None));
        assert_eq!(
            reader.node_checks(MBOX1).await,
            Err(ConsulError::NoLeader),
            "{kind:?}"
        );
        let reading = reader.read(&[mailbox()]).await;
        assert!(reading.reachable);
        assert_eq!(reading.leader, None);
        let error = reading.error.unwrap_or_default();
        assert!(
            error.contains("no leader") && error.contains("No cluster leader"),
            "{error}"
        );
        assert!(unknown_reason(&reading.evidence[0]).contains("No cluster leader"));
        assert!(consul_allows_down(
            ConsulMode::Corroborate,
            Some(&reading.evidence[0])
        ));
        assert!(!consul_allows_down(
            ConsulMode::Require,
            Some(&reading.evidence[0])
        ));
        fake.stop().await;
    }
}

/// `200 ""` from `/v1/status/leader` is a valid answer meaning "no leader".
#[tokio::test]
async fn empty_leader_means_no_leader() {
    let fake = start(FakeState::carbonio()).await;
    fake.set_fault(
        Endpoint::StatusLeader,
        Fault::Respond {
            status: 200,
            body: "\"\"".into(),
            headers: vec![("content-type".into(), "application/json".into())],
        },
    );
    let reader = reader(&fake);
    assert_eq!(reader.leader().await, Ok(None));
    let reading = reader.read(&[mailbox()]).await;
    assert_eq!(reading.leader, None);
    assert!(
        reading
            .error
            .unwrap_or_default()
            .contains("/v1/status/leader answered \"\"")
    );
    fake.stop().await;
}

/// A client agent that lost every server: `500 No known Consul servers`.
#[tokio::test]
async fn no_known_consul_servers_is_reported() {
    let fake = start(FakeState::carbonio()).await;
    fault_everywhere(
        &fake,
        Fault::Respond {
            status: 500,
            body: "No known Consul servers".into(),
            headers: vec![],
        },
    );
    let reader = reader(&fake);
    assert_eq!(reader.leader().await, Err(ConsulError::NoKnownServers));
    let reading = reader.read(&[mailbox()]).await;
    assert!(
        reading
            .error
            .unwrap_or_default()
            .contains("knows no live Consul server")
    );
    assert!(unknown_reason(&reading.evidence[0]).contains("No known Consul servers"));
    fake.stop().await;
}

/// `429` with an empty body (the agent's RPC limiter): the round yields no
/// evidence at all and asks to back off.
#[tokio::test]
async fn rate_limited_429_yields_no_evidence_and_asks_to_back_off() {
    let fake = start(FakeState::carbonio()).await;
    fake.set_fault(
        Endpoint::HealthService,
        Fault::Respond {
            status: 429,
            body: String::new(),
            headers: vec![],
        },
    );
    let reader = reader(&fake);
    assert_eq!(
        reader.service_instances("carbonio-mailbox").await,
        Err(ConsulError::RateLimited {
            status: 429,
            body: String::new()
        })
    );
    let reading = reader.read(&[mailbox(), node_only(MBOX1)]).await;
    assert!(reading.rate_limited);
    assert!(reading.error.unwrap_or_default().contains("back off"));
    for evidence in &reading.evidence {
        assert!(
            unknown_reason(evidence).contains("back off"),
            "{evidence:?}"
        );
    }
    fake.stop().await;
}

/// The raw 429 Consul's connection limiter writes on the socket.
#[tokio::test]
async fn connection_limit_429_is_rate_limited() {
    let fake = start(FakeState::carbonio()).await;
    fake.update(|s| s.connection_fault = Some(ConnectionFault::TooManyConnections));
    let error = reader(&fake).leader().await.expect_err("429");
    match error {
        ConsulError::RateLimited { status: 429, body } => {
            assert!(body.contains("too many concurrent connections"), "{body}");
        }
        other => panic!("{other:?}"),
    }
    fake.stop().await;
}

/// An agent that accepts but never answers: every call ends at the
/// timeout, with a message that says so, and the round stays bounded.
#[tokio::test]
async fn hanging_agent_times_out() {
    let fake = start(FakeState::carbonio()).await;
    fault_everywhere(&fake, Fault::Hang);
    let reader = reader_with(&fake, Duration::from_millis(300), None);
    let started = Instant::now();
    let reading = reader
        .read(&[mailbox(), node_only("agent-proxy1-example-com")])
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(!reading.reachable);
    let error = reading.error.unwrap_or_default();
    assert!(
        error.contains("no answer from the Consul agent") && error.contains("300ms"),
        "{error}"
    );
    for evidence in &reading.evidence {
        assert!(
            unknown_reason(evidence).contains("no answer"),
            "{evidence:?}"
        );
    }
    fake.stop().await;
}

/// An answer slower than the timeout is a timeout, not a late answer.
#[tokio::test]
async fn delayed_answer_beyond_the_timeout_times_out() {
    let fake = start(FakeState::carbonio()).await;
    fake.set_fault(Endpoint::HealthNode, Fault::Delay(Duration::from_secs(5)));
    let reader = reader_with(&fake, Duration::from_millis(300), None);
    assert!(matches!(
        reader.node_checks(MBOX1).await,
        Err(ConsulError::Timeout { .. })
    ));
    fake.set_fault(
        Endpoint::HealthNode,
        Fault::Delay(Duration::from_millis(20)),
    );
    let patient = reader_with(&fake, Duration::from_secs(5), None);
    assert!(
        patient.node_checks(MBOX1).await.is_ok(),
        "a short delay is fine"
    );
    fake.stop().await;
}

/// A body that trickles in slower than the timeout allows is cut off.
#[tokio::test]
async fn slow_body_times_out() {
    let fake = start(FakeState::carbonio()).await;
    fake.set_fault(
        Endpoint::HealthService,
        Fault::SlowBody {
            chunk_delay: Duration::from_millis(100),
        },
    );
    let reader = reader_with(&fake, Duration::from_millis(500), None);
    assert!(matches!(
        reader.service_instances("carbonio-mailbox").await,
        Err(ConsulError::Timeout { .. })
    ));
    fake.stop().await;
}

/// `200` with a body that is not JSON: a bad answer, quoted.
#[tokio::test]
async fn garbage_json_is_a_bad_answer() {
    let fake = start(FakeState::carbonio()).await;
    fake.set_fault(Endpoint::HealthService, Fault::Garbage);
    let reading = reader(&fake).read(&[mailbox()]).await;
    let reason = unknown_reason(&reading.evidence[0]);
    assert!(
        reason.contains("not what its API documents") && reason.contains("/v1/health/service"),
        "{reason}"
    );
    fake.stop().await;
}

/// A body larger than the bound is refused whole, never cut into a wrong
/// answer.
#[tokio::test]
async fn huge_answer_is_refused_not_cut() {
    let fake = start(FakeState::carbonio()).await;
    fake.set_fault(
        Endpoint::AgentMembers,
        Fault::Huge {
            bytes: 6 * 1024 * 1024,
        },
    );
    let reader = reader_with(&fake, Duration::from_secs(20), None);
    let error = reader.members().await.expect_err("too large");
    assert!(matches!(error, ConsulError::TooLarge { .. }), "{error:?}");
    assert!(error.to_string().contains("refused rather than cut"));
    fake.stop().await;
}

/// Nothing listens: the message says the agent is not reachable there.
#[tokio::test]
async fn connection_refused_says_the_agent_is_not_running() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("addr").to_string();
    drop(listener);
    let reader = ConsulReader::new(
        agent_at(address.clone(), Duration::from_secs(2)),
        RealTransport::shared().unwrap_or_else(|e| panic!("{e}")),
    );
    let reading = reader.read(&[mailbox()]).await;
    assert!(!reading.reachable);
    let error = reading.error.unwrap_or_default();
    assert!(
        error.contains("cannot reach the Consul agent") && error.contains(&address),
        "{error}"
    );
    assert!(error.contains("is its agent running"), "{error}");
    assert!(unknown_reason(&reading.evidence[0]).contains("cannot reach"));
}

/// A connection reset before any answer: unreachable.
#[tokio::test]
async fn connection_reset_is_unreachable() {
    let fake = start(FakeState::carbonio()).await;
    fake.update(|s| s.connection_fault = Some(ConnectionFault::Reset));
    let error = reader(&fake).leader().await.expect_err("reset");
    assert!(!error.agent_answered(), "{error:?}");
    fake.stop().await;
}

/// An answer admitting it has no known leader (a stale read) is not used.
#[tokio::test]
async fn stale_answer_is_refused() {
    let fake = start(FakeState::carbonio()).await;
    fake.set_fault(
        Endpoint::HealthNode,
        Fault::Respond {
            status: 200,
            body: "[]".into(),
            headers: vec![("X-Consul-KnownLeader".into(), "false".into())],
        },
    );
    let error = reader(&fake).node_checks(MBOX1).await.expect_err("stale");
    assert!(matches!(error, ConsulError::Stale { .. }), "{error:?}");
    fake.stop().await;
}

/// A datacenter the agent does not know: `500 No path to datacenter`.
#[tokio::test]
async fn unknown_datacenter_is_reported() {
    let fake = start(FakeState::carbonio()).await;
    let mut agent = agent_at(fake.address(), Duration::from_secs(3));
    agent.datacenter = Some("dc9".into());
    let reader = ConsulReader::new(
        agent,
        RealTransport::shared().unwrap_or_else(|e| panic!("{e}")),
    );
    let error = reader.node_checks(MBOX1).await.expect_err("no such dc");
    assert!(
        error.to_string().contains("No path to datacenter"),
        "{error}"
    );
    fake.stop().await;
}

/// Records every request, then passes it on.
struct Recording {
    inner: Arc<dyn Transport>,
    seen: Mutex<Vec<HttpRequest>>,
}

impl Transport for Recording {
    fn tcp_connect<'a>(
        &'a self,
        a: &'a str,
        t: Duration,
    ) -> BoxFuture<'a, Result<(), TransportError>> {
        self.inner.tcp_connect(a, t)
    }
    fn http_get(
        &self,
        request: HttpRequest,
    ) -> BoxFuture<'_, Result<HttpResponse, TransportError>> {
        if let Ok(mut seen) = self.seen.lock() {
            seen.push(request.clone());
        }
        self.inner.http_get(request)
    }
    fn grpc_health<'a>(
        &'a self,
        a: &'a str,
        s: &'a str,
        t: Duration,
    ) -> BoxFuture<'a, Result<GrpcHealth, TransportError>> {
        self.inner.grpc_health(a, s, t)
    }
    fn run_command<'a>(
        &'a self,
        argv: &'a [String],
        t: Duration,
    ) -> BoxFuture<'a, Result<CommandOutput, TransportError>> {
        self.inner.run_command(argv, t)
    }
}

/// The token travels in `X-Consul-Token`, never in the URL; reads use
/// default consistency (no `stale`), are bounded, and go to the local agent
/// only.
#[tokio::test]
async fn token_goes_in_a_header_and_reads_are_never_stale() {
    let mut state = FakeState::carbonio();
    state.acl = Some(FakeAcl {
        default_policy: "deny".into(),
        default_token: Rights::None,
        tokens: [("s3cret".to_string(), Rights::ReadAll)].into(),
    });
    let fake = start(state).await;
    let recording = Arc::new(Recording {
        inner: RealTransport::shared().unwrap_or_else(|e| panic!("{e}")),
        seen: Mutex::new(Vec::new()),
    });
    let mut agent = agent_at(fake.address(), Duration::from_secs(3));
    agent.token = Some(ConsulToken::new("s3cret"));
    let reader = ConsulReader::new(agent, recording.clone());
    let reading = reader
        .read(&[mailbox(), node_only("agent-proxy1-example-com")])
        .await;
    assert_eq!(
        reading.evidence[0],
        ConsulEvidence::Passing,
        "the token was accepted"
    );
    let seen = recording.seen.lock().expect("lock").clone();
    assert!(seen.len() >= 4, "{seen:?}");
    for request in &seen {
        assert!(
            request
                .url
                .starts_with(&format!("http://{}/v1/", fake.address())),
            "{}",
            request.url
        );
        assert!(
            !request.url.contains("token") && !request.url.contains("s3cret"),
            "{}",
            request.url
        );
        assert!(
            !request.url.contains("stale") && !request.url.contains("consistent"),
            "{}",
            request.url
        );
        assert!(
            request
                .headers
                .contains(&("X-Consul-Token".into(), "s3cret".into()))
        );
        assert!(request.timeout <= Duration::from_secs(3));
        assert!(request.max_body <= crate::config::defaults::MAX_CONSUL_BODY + 1);
    }
    fake.stop().await;
}

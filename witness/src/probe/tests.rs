//! Tests of the probes over real loopback sockets, real processes and a
//! scripted transport, and of the [`Prober`] end to end. Everything listens
//! on 127.0.0.1 only and is stopped when its test ends.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::*;
use crate::config::{DownRule, Policy, ProbeKind, Role, SitePolicy, TargetPolicy};
use crate::sim::FakeConsul;
use crate::sim::consul::{AgentKind, FakeState};

const SHORT: Duration = Duration::from_millis(400);
/// How long a test waits for something that should happen in milliseconds;
/// generous so a loaded CI machine does not fail it.
const PATIENCE: Duration = Duration::from_secs(15);

fn transport() -> Arc<dyn Transport> {
    RealTransport::shared().unwrap_or_else(|e| panic!("{e}"))
}

/// A loopback port that nothing listens on (bound, then released).
async fn closed_port() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    addr.to_string()
}

/// Wait until `pred` holds for the published view.
async fn wait_for(
    view: &mut watch::Receiver<Arc<LocalView>>,
    what: &str,
    pred: impl Fn(&LocalView) -> bool,
) -> Arc<LocalView> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let current = view.borrow_and_update().clone();
        if pred(&current) {
            return current;
        }
        match tokio::time::timeout_at(deadline, view.changed()).await {
            Ok(Ok(())) => {}
            _ => panic!("timed out waiting for {what}; last view: {current:#?}"),
        }
    }
}

fn find<'a>(view: &'a LocalView, site: &str, name: &str) -> Option<&'a TargetView> {
    view.sites
        .get(site)?
        .targets
        .iter()
        .find(|t| t.name == name)
}

fn target<'a>(view: &'a LocalView, site: &str, name: &str) -> &'a TargetView {
    find(view, site, name).unwrap_or_else(|| panic!("no target {site}/{name}"))
}

fn tcp(name: &str, address: &str) -> TargetPolicy {
    let mut t = TargetPolicy::new(name, Role::Mailstore, ProbeKind::Tcp);
    t.address = Some(address.into());
    t
}

/// A fast-probing policy (50 ms, 3 to fail, 2 to recover) over the sites.
fn fast_policy(sites: Vec<(&str, Vec<TargetPolicy>)>) -> Policy {
    let mut p = Policy::default();
    p.probe.interval = Duration::from_millis(50);
    p.probe.timeout = Duration::from_millis(40);
    p.consul.mode = ConsulMode::Ignore;
    p.sites = sites
        .into_iter()
        .enumerate()
        .map(|(i, (name, targets))| SitePolicy {
            name: name.into(),
            active: i == 0,
            down_rule: DownRule::All,
            mail_hosts: Vec::new(),
            targets,
        })
        .collect();
    p
}

/// The consul-mode rule, as a table: corroborate lets only `Passing` veto;
/// require needs `Critical` or `NodeDead`; ignore allows everything.
#[test]
fn consul_allows_down_follows_the_mode() {
    use ConsulEvidence::*;
    use ConsulMode::{Corroborate, Ignore, Require};
    let critical = Critical {
        check: "service:carbonio-mailbox".into(),
        output: "dial tcp: connection refused".into(),
    };
    let unknown = Unknown {
        reason: "No cluster leader".into(),
    };
    // (evidence, ignore, corroborate, require)
    let cases: Vec<(Option<ConsulEvidence>, bool, bool, bool)> = vec![
        (None, true, true, false),
        (Some(Passing), true, false, false),
        (Some(critical), true, true, true),
        (Some(NodeDead), true, true, true),
        (Some(NotRegistered), true, true, false),
        (Some(unknown), true, true, false),
    ];
    for (evidence, ignore, corroborate, require) in cases {
        let e = evidence.as_ref();
        assert_eq!(consul_allows_down(Ignore, e), ignore, "ignore {e:?}");
        assert_eq!(
            consul_allows_down(Corroborate, e),
            corroborate,
            "corroborate {e:?}"
        );
        assert_eq!(consul_allows_down(Require, e), require, "require {e:?}");
    }
}

/// TCP: up while something accepts on the port, down with a connect error
/// once nothing does.
#[tokio::test]
async fn tcp_probe_is_up_with_a_listener_and_down_without() {
    let transport = transport();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("addr").to_string();
    let spec = CheckSpec::Tcp {
        address: address.clone(),
    };
    let up = probe_once(transport.as_ref(), &spec, SHORT).await;
    assert!(up.ok, "{up:?}");
    assert_eq!(up.error, None);
    assert!(up.latency <= SHORT);

    drop(listener);
    let down = probe_once(transport.as_ref(), &spec, SHORT).await;
    assert!(!down.ok);
    let error = down.error.unwrap_or_default();
    assert!(
        error.contains("cannot connect") && error.contains(&address),
        "{error}"
    );
}

/// A tiny HTTP server on loopback: `/ok` 200 "ready", `/down` 503,
/// `/other` 200 "nope".
async fn http_server() -> (String, tokio::task::JoinHandle<()>) {
    use axum::http::StatusCode;
    use axum::routing::get;
    let router = axum::Router::new()
        .route("/ok", get(|| async { "all ready here" }))
        .route(
            "/down",
            get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "maintenance") }),
        )
        .route("/other", get(|| async { "nope" }))
        .route(
            "/moved",
            get(|| async { (StatusCode::FOUND, [("location", "/ok")], "") }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (base, server)
}

/// HTTP: the status must be the expected one and the body must contain the
/// expected text; a redirect is reported as its own status, not followed.
#[tokio::test]
async fn http_probe_checks_status_and_body() {
    let transport = transport();
    let (base, server) = http_server().await;
    let spec = |path: &str, status: u16, body: Option<&str>| CheckSpec::Http {
        url: format!("{base}{path}"),
        expect_status: status,
        expect_body: body.map(str::to_string),
        tls_verify: true,
    };
    let cases: Vec<(CheckSpec, Result<(), &str>)> = vec![
        (spec("/ok", 200, None), Ok(())),
        (spec("/ok", 200, Some("ready")), Ok(())),
        (
            spec("/down", 200, None),
            Err("HTTP status 503 (expected 200)"),
        ),
        (spec("/down", 503, None), Ok(())),
        (
            spec("/other", 200, Some("ready")),
            Err("body does not contain \"ready\""),
        ),
        (
            spec("/moved", 200, None),
            Err("HTTP status 302 (expected 200)"),
        ),
        (spec("/missing", 200, None), Err("HTTP status 404")),
    ];
    for (spec, expected) in cases {
        let result = probe_once(transport.as_ref(), &spec, Duration::from_secs(5)).await;
        match expected {
            Ok(()) => assert!(result.ok, "{spec:?}: {result:?}"),
            Err(text) => {
                assert!(!result.ok, "{spec:?} passed");
                let error = result.error.unwrap_or_default();
                assert!(error.contains(text), "{spec:?}: {error}");
            }
        }
    }
    server.abort();
}

/// gRPC: the standard health service's answer, per service name.
#[tokio::test]
async fn grpc_probe_reads_the_standard_health_service() {
    use tonic_health::ServingStatus;
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("mailbox", ServingStatus::Serving)
        .await;
    reporter
        .set_service_status("files", ServingStatus::NotServing)
        .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("addr").to_string();
    let server = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    });
    let transport = transport();
    let check = |service: &str| CheckSpec::Grpc {
        address: address.clone(),
        service: service.into(),
    };
    let timeout = Duration::from_secs(5);
    assert!(probe_once(transport.as_ref(), &check(""), timeout).await.ok);
    assert!(
        probe_once(transport.as_ref(), &check("mailbox"), timeout)
            .await
            .ok
    );
    let files = probe_once(transport.as_ref(), &check("files"), timeout).await;
    assert_eq!(files.error.as_deref(), Some("gRPC health: NOT_SERVING"));
    let unknown = probe_once(transport.as_ref(), &check("nope"), timeout).await;
    assert!(
        unknown
            .error
            .as_deref()
            .is_some_and(|e| e.contains("unknown to the server")),
        "{unknown:?}"
    );
    server.abort();
}

/// Commands: exit 0 is up; anything else is down with the exit status and
/// the first stderr line; a program that cannot start says so.
#[tokio::test]
async fn command_probe_passes_on_exit_zero_and_reports_failures() {
    let transport = transport();
    let run = |argv: &[&str]| CheckSpec::Command {
        argv: argv.iter().map(|a| a.to_string()).collect(),
    };
    let timeout = Duration::from_secs(5);
    let ok = probe_once(
        transport.as_ref(),
        &run(&["/bin/sh", "-c", "exit 0"]),
        timeout,
    )
    .await;
    assert!(ok.ok, "{ok:?}");
    let failed = probe_once(
        transport.as_ref(),
        &run(&[
            "/bin/sh",
            "-c",
            "echo; echo 'mailboxd is not running' >&2; exit 3",
        ]),
        timeout,
    )
    .await;
    assert_eq!(
        failed.error.as_deref(),
        Some("exit status 3: mailboxd is not running")
    );
    let missing = probe_once(transport.as_ref(), &run(&["/nonexistent/check"]), timeout).await;
    assert!(
        missing
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with("cannot run the command: /nonexistent/check")),
        "{missing:?}"
    );
}

/// A command that outlives its timeout is killed, with the processes it
/// started, and reported as such; the probe returns at the timeout.
#[tokio::test]
async fn command_probe_is_killed_with_its_children_on_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("child.pid");
    let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
    let spec = CheckSpec::Command {
        argv: vec!["/bin/sh".into(), "-c".into(), script],
    };
    let timeout = Duration::from_millis(500);
    let started = std::time::Instant::now();
    let result = probe_once(transport().as_ref(), &spec, timeout).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        result.error.as_deref(),
        Some("killed after running longer than 500ms")
    );
    assert_eq!(result.latency, timeout);

    // The grandchild (`sleep 30`) must be gone too: absent, or a zombie
    // waiting for whoever reaps orphans here.
    let pid = std::fs::read_to_string(&pidfile).expect("the script wrote its child's pid");
    let stat = format!("/proc/{}/stat", pid.trim());
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        match std::fs::read_to_string(&stat) {
            Err(_) => break,
            Ok(text)
                if text
                    .rsplit(')')
                    .next()
                    .is_some_and(|s| s.trim_start().starts_with('Z')) =>
            {
                break;
            }
            Ok(_) if std::time::Instant::now() > deadline => {
                panic!("the command's child {} survived the timeout", pid.trim())
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// A transport whose calls to "stuck:1" never end and whose other calls
/// succeed at once: the seam a simulation would use.
struct Scripted;

impl Transport for Scripted {
    fn tcp_connect<'a>(
        &'a self,
        address: &'a str,
        _: Duration,
    ) -> BoxFuture<'a, Result<(), TransportError>> {
        Box::pin(async move {
            if address == "stuck:1" {
                std::future::pending::<()>().await;
            }
            Ok(())
        })
    }
    fn http_get(&self, _: HttpRequest) -> BoxFuture<'_, Result<HttpResponse, TransportError>> {
        Box::pin(std::future::pending())
    }
    fn grpc_health<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: Duration,
    ) -> BoxFuture<'a, Result<GrpcHealth, TransportError>> {
        Box::pin(std::future::pending())
    }
    fn run_command<'a>(
        &'a self,
        _: &'a [String],
        _: Duration,
    ) -> BoxFuture<'a, Result<CommandOutput, TransportError>> {
        Box::pin(std::future::pending())
    }
}

/// Whatever the transport does, one probe ends at its timeout, as a
/// failure that says so.
#[tokio::test]
async fn a_stuck_transport_call_is_cut_at_the_timeout() {
    let spec = CheckSpec::Tcp {
        address: "stuck:1".into(),
    };
    let result = probe_once(&Scripted, &spec, Duration::from_millis(400)).await;
    assert!(!result.ok);
    assert_eq!(result.error.as_deref(), Some("no answer within 400ms"));
    assert_eq!(result.latency, Duration::from_millis(400));
}

/// A target that hangs does not hold up another: the fast target's results
/// arrive (and make it up) while the hanging one has not produced a single
/// result yet.
#[tokio::test]
async fn a_hanging_target_does_not_delay_another() {
    // Accepts connections and never answers: an HTTP probe of it hangs
    // until its (long) timeout.
    let hang = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let hang_addr = hang.local_addr().expect("addr");
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = hang.accept().await {
            held.push(conn);
        }
    });
    let fast = TcpListener::bind("127.0.0.1:0").await.expect("bind");

    let mut slow = TargetPolicy::new("slow", Role::Proxy, ProbeKind::Http);
    slow.url = Some(format!("http://{hang_addr}/"));
    slow.interval = Some(Duration::from_secs(60));
    slow.timeout = Some(Duration::from_secs(60));
    let mut policy = fast_policy(vec![(
        "dc-a",
        vec![
            slow,
            tcp("fast", &fast.local_addr().expect("addr").to_string()),
        ],
    )]);
    policy.failover.observation_ttl = Duration::from_secs(3600);
    policy.validate().unwrap_or_else(|e| panic!("{e}"));
    let (_policy_tx, policy_rx) = watch::channel(Some(Arc::new(policy)));
    let prober = Prober::start(policy_rx, None, transport());
    let mut view = prober.view();

    let seen = wait_for(&mut view, "the fast target to be up", |v| {
        v.sites.get("dc-a").is_some_and(|s| {
            s.targets
                .iter()
                .any(|t| t.name == "fast" && t.health == Health::Up)
        })
    })
    .await;
    let slow = target(&seen, "dc-a", "slow");
    assert_eq!(slow.health, Health::Unknown, "{slow:?}");
    assert_eq!(
        slow.consecutive, 0,
        "the slow probe is still pending: {slow:?}"
    );
    assert_eq!(slow.last_latency_ms, None);
    assert_eq!(
        seen.sites["dc-a"].health,
        Health::Up,
        "rule all: one critical target up"
    );
    // The attempts are counted as they land: the fast target's, not yet
    // the slow one's.
    let stats = prober.stats().snapshot();
    let fast = &stats[&("dc-a".to_string(), "fast".to_string())];
    assert!(
        fast.results[0] >= 1 && fast.duration.count() >= 1,
        "{fast:?}"
    );
    assert!(!stats.contains_key(&("dc-a".to_string(), "slow".to_string())));
    drop(prober);
    holder.abort();
}

/// End to end: a site comes up when its ports accept, goes down when they
/// stop, the change is stamped, and each target says why it failed.
#[tokio::test]
async fn prober_sees_a_site_come_up_and_go_down() {
    let mailstore = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let proxy = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let other = closed_port().await;
    let policy = fast_policy(vec![
        (
            "dc-a",
            vec![
                tcp(
                    "mailstore",
                    &mailstore.local_addr().expect("addr").to_string(),
                ),
                tcp("proxy", &proxy.local_addr().expect("addr").to_string()),
            ],
        ),
        ("dc-b", vec![tcp("mailstore", &other)]),
    ]);
    policy.validate().unwrap_or_else(|e| panic!("{e}"));
    let (policy_tx, policy_rx) = watch::channel(None);
    let prober = Prober::start(policy_rx, None, transport());
    let mut view = prober.view();
    assert!(view.borrow().sites.is_empty(), "no policy, nothing probed");
    assert_eq!(
        view.borrow().consul.error.as_deref(),
        Some("no cluster policy yet")
    );

    policy_tx.send_replace(Some(Arc::new(policy)));
    let up = wait_for(&mut view, "dc-a up and dc-b down", |v| {
        v.sites.get("dc-a").is_some_and(|s| s.health == Health::Up)
            && v.sites
                .get("dc-b")
                .is_some_and(|s| s.health == Health::Down)
    })
    .await;
    let up_at = up.sites["dc-a"].changed_at_ms;
    assert!(up_at > 0);
    let b = target(&up, "dc-b", "mailstore");
    assert!(b.consecutive >= 3 && b.last_error.is_some(), "{b:?}");
    assert_eq!(up.consul.mode, "ignore");
    assert!(
        up.sites
            .values()
            .flat_map(|s| &s.targets)
            .all(|t| t.consul.is_none())
    );

    drop(mailstore);
    drop(proxy);
    let down = wait_for(&mut view, "dc-a down", |v| {
        v.sites["dc-a"].health == Health::Down
    })
    .await;
    assert!(down.sites["dc-a"].changed_at_ms >= up_at);
    for t in &down.sites["dc-a"].targets {
        assert_eq!(t.health, Health::Down, "{t:?}");
        assert!(
            t.last_error
                .as_deref()
                .is_some_and(|e| e.contains("cannot connect")),
            "{t:?}"
        );
    }
}

/// Consul's evidence rides beside a target's health and never changes it:
/// a target that probes down stays down while Consul says its service is
/// passing (which vetoes under corroborate), and Consul's view of a dead
/// node shows up as `NodeDead`.
#[tokio::test]
async fn prober_attaches_consul_evidence_without_changing_health() {
    let mut state = FakeState::default();
    state.add_node("agent-mbox1-example-com", "10.0.0.12", AgentKind::Client);
    state
        .add_service(
            "agent-mbox1-example-com",
            "carbonio-mailbox",
            8080,
            Some("tcp"),
        )
        .expect("service");
    let fake = FakeConsul::loopback(state).await.expect("fake consul");

    let mut mbox = tcp("mbox1", &closed_port().await);
    mbox.consul_service = Some("carbonio-mailbox".into());
    mbox.consul_node = Some("agent-mbox1-example-com".into());
    let mut policy = fast_policy(vec![("dc-a", vec![mbox])]);
    policy.consul.mode = ConsulMode::Corroborate;
    policy.validate().unwrap_or_else(|e| panic!("{e}"));
    let (_policy_tx, policy_rx) = watch::channel(Some(Arc::new(policy)));
    let mut agent = ConsulAgentConfig::local(fake.address());
    agent.timeout = Duration::from_secs(2);
    let prober = Prober::start(policy_rx, Some(agent), transport());
    let mut view = prober.view();

    let seen = wait_for(&mut view, "mbox1 down with Consul passing", |v| {
        find(v, "dc-a", "mbox1")
            .is_some_and(|t| t.health == Health::Down && t.consul == Some(ConsulEvidence::Passing))
    })
    .await;
    assert_eq!(
        seen.sites["dc-a"].health,
        Health::Down,
        "health is from probes only"
    );
    let t = target(&seen, "dc-a", "mbox1");
    assert!(!consul_allows_down(
        ConsulMode::Corroborate,
        t.consul.as_ref()
    ));
    assert_eq!(seen.consul.mode, "corroborate");
    assert!(seen.consul.reachable);
    assert_eq!(seen.consul.leader.as_deref(), Some("127.0.0.1:8300"));
    assert_eq!(seen.consul.error, None);
    assert!(seen.consul.fetched_at_ms > 0);

    fake.update(|s| s.fail_node("agent-mbox1-example-com"))
        .expect("node");
    let seen = wait_for(&mut view, "Consul to report the node dead", |v| {
        find(v, "dc-a", "mbox1").is_some_and(|t| t.consul == Some(ConsulEvidence::NodeDead))
    })
    .await;
    let t = target(&seen, "dc-a", "mbox1");
    assert!(consul_allows_down(
        ConsulMode::Corroborate,
        t.consul.as_ref()
    ));
    assert!(consul_allows_down(ConsulMode::Require, t.consul.as_ref()));
    drop(prober);
    fake.stop().await;
}

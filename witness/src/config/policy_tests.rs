//! Unit tests of the policy's sites, probes, Consul and failover tables and
//! of a node's `[consul]` table: defaults, every validation rule, the
//! Consul node derivation, the timer check and exact round trips.

use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;

use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A valid two-site policy: every kind of target, Consul corroborating.
const POLICY: &str = r#"
[consul]
mode = "corroborate"
server_sites = ["dc-a", "dc-b", "dc-c"]

[[site]]
name = "dc-a"
active = true
down_rule = "any"

[[site.target]]
name = "mbox1"
role = "mailstore"
kind = "https"
url = "https://mbox1.example.com:7071/service/health/ready"
expect_body = "ok"
consul_service = "carbonio-mailbox-admin"

[[site.target]]
name = "proxy1"
role = "proxy"
kind = "tcp"
address = "proxy1.example.com:443"
consul_service = "carbonio-proxy"

[[site.target]]
name = "files1"
role = "files"
kind = "grpc"
address = "files1.example.com:9000"
service = "files"
critical = false

[[site.target]]
name = "mta1"
role = "mta"
kind = "command"
argv = ["/usr/local/bin/check-mta", "--quiet"]
critical = false

[[site]]
name = "dc-b"

[[site.target]]
name = "mbox2"
role = "mailstore"
kind = "http"
url = "http://mbox2.example.com:8080/"
consul_service = "carbonio-mailbox"
"#;

fn policy() -> Policy {
    Policy::parse(POLICY, Path::new("cluster.toml")).unwrap_or_else(|e| panic!("{e}"))
}

fn keys(err: &ConfigError) -> Vec<String> {
    err.problems().iter().map(|p| p.key.clone()).collect()
}

/// Keys left out take the documented defaults, and the accessors resolve
/// them.
#[test]
fn site_keys_take_their_defaults() {
    let p = policy();
    assert_eq!(p.probe, ProbeDefaults::default());
    assert_eq!(p.probe.interval, ms(500));
    assert_eq!(p.probe.timeout, ms(400));
    assert_eq!((p.probe.fail_after, p.probe.recover_after), (3, 2));
    assert_eq!(p.failover.observation_ttl, ms(6000));
    assert_eq!(p.failover.min_failover_interval, Duration::from_secs(300));
    assert_eq!(p.failover.failback, Failback::Manual);
    assert_eq!(p.failover.failback_after, Duration::from_secs(600));
    assert_eq!(Policy::default().consul.mode, ConsulMode::Corroborate);

    let b = p.site("dc-b").expect("dc-b");
    assert!(!b.active, "active defaults to false");
    assert_eq!(b.down_rule, DownRule::All, "down_rule defaults to all");
    let mbox2 = &b.targets[0];
    assert!(mbox2.critical, "critical defaults to true");
    assert_eq!(mbox2.expect_status(), 200);
    assert!(mbox2.tls_verify());
    assert_eq!(mbox2.timers(&p.probe), p.probe.timers());
    let files = &p.site("dc-a").expect("dc-a").targets[2];
    assert_eq!(files.grpc_service(), "files");
    assert_eq!(
        TargetPolicy::new("x", Role::Other, ProbeKind::Grpc).grpc_service(),
        ""
    );
    assert_eq!(
        p.initial_active_site().map(|s| s.name.as_str()),
        Some("dc-a")
    );
}

/// Every new policy rule, one mistake at a time: the error names the key.
#[test]
fn site_validation_names_the_offending_key() {
    type Edit = fn(&mut Policy);
    fn t(p: &mut Policy, site: usize, target: usize) -> &mut TargetPolicy {
        &mut p.sites[site].targets[target]
    }
    let cases: &[(&str, Edit, &str)] = &[
        (
            "probe interval 0",
            |p| p.probe.interval = Duration::ZERO,
            "probe.interval",
        ),
        (
            "probe timeout 0",
            |p| p.probe.timeout = Duration::ZERO,
            "probe.timeout",
        ),
        (
            "probe timeout > interval",
            |p| p.probe.timeout = ms(501),
            "probe.timeout",
        ),
        (
            "probe interval > 10m",
            |p| {
                p.probe.interval = Duration::from_secs(601);
                p.failover.observation_ttl = Duration::from_secs(7200);
            },
            "probe.interval",
        ),
        (
            "fail_after 0",
            |p| p.probe.fail_after = 0,
            "probe.fail_after",
        ),
        (
            "recover_after 101",
            |p| p.probe.recover_after = 101,
            "probe.recover_after",
        ),
        (
            "no active site",
            |p| p.sites[0].active = false,
            "site.active",
        ),
        (
            "two active sites",
            |p| p.sites[1].active = true,
            "site.active",
        ),
        (
            "duplicate site",
            |p| p.sites[1].name = "dc-a".into(),
            "site[dc-a].name",
        ),
        (
            "bad site name",
            |p| p.sites[1].name = "dc b".into(),
            "site[1].name",
        ),
        (
            "site without targets",
            |p| p.sites[1].targets.clear(),
            "site[dc-b].target",
        ),
        (
            "no critical target",
            |p| p.sites[1].targets[0].critical = false,
            "site[dc-b].target",
        ),
        (
            "too many targets",
            |p| {
                let one = p.sites[1].targets[0].clone();
                p.sites[1].targets = (0..33)
                    .map(|i| TargetPolicy {
                        name: format!("t{i}"),
                        ..one.clone()
                    })
                    .collect();
            },
            "site[dc-b].target",
        ),
        (
            "too many sites",
            |p| {
                let one = p.sites[1].clone();
                for i in 0..8 {
                    p.sites.push(SitePolicy {
                        name: format!("dc-{i}"),
                        ..one.clone()
                    });
                }
            },
            "site",
        ),
        (
            "duplicate target",
            |p| t(p, 0, 1).name = "mbox1".into(),
            "site[dc-a].target[mbox1].name",
        ),
        (
            "bad target name",
            |p| t(p, 0, 1).name = "proxy 1".into(),
            "site[dc-a].target[1].name",
        ),
        (
            "tcp without address",
            |p| t(p, 0, 1).address = None,
            "site[dc-a].target[proxy1].address",
        ),
        (
            "tcp with url",
            |p| t(p, 0, 1).url = Some("http://x/".into()),
            "site[dc-a].target[proxy1].url",
        ),
        (
            "tcp address without port",
            |p| t(p, 0, 1).address = Some("proxy1".into()),
            "site[dc-a].target[proxy1].address",
        ),
        (
            "tcp with tls_verify",
            |p| t(p, 0, 1).tls_verify = Some(false),
            "site[dc-a].target[proxy1].tls_verify",
        ),
        (
            "https without url",
            |p| t(p, 0, 0).url = None,
            "site[dc-a].target[mbox1].url",
        ),
        (
            "https with address",
            |p| t(p, 0, 0).address = Some("mbox1:7071".into()),
            "site[dc-a].target[mbox1].address",
        ),
        (
            "https url with http scheme",
            |p| t(p, 0, 0).url = Some("http://mbox1:7071/".into()),
            "site[dc-a].target[mbox1].url",
        ),
        (
            "url not a url",
            |p| t(p, 0, 0).url = Some("mbox1:7071/ready".into()),
            "site[dc-a].target[mbox1].url",
        ),
        (
            "url with credentials",
            |p| t(p, 0, 0).url = Some("https://admin:pw@mbox1/".into()),
            "site[dc-a].target[mbox1].url",
        ),
        (
            "url too long",
            |p| t(p, 0, 0).url = Some(format!("https://mbox1/{}", "a".repeat(2100))),
            "site[dc-a].target[mbox1].url",
        ),
        (
            "http with tls_verify",
            |p| t(p, 1, 0).tls_verify = Some(true),
            "site[dc-b].target[mbox2].tls_verify",
        ),
        (
            "expect_status 99",
            |p| t(p, 0, 0).expect_status = Some(99),
            "site[dc-a].target[mbox1].expect_status",
        ),
        (
            "expect_body empty",
            |p| t(p, 0, 0).expect_body = Some(String::new()),
            "site[dc-a].target[mbox1].expect_body",
        ),
        (
            "expect_body huge",
            |p| t(p, 0, 0).expect_body = Some("x".repeat(1025)),
            "site[dc-a].target[mbox1].expect_body",
        ),
        (
            "grpc with argv",
            |p| t(p, 0, 2).argv = Some(vec!["/bin/true".into()]),
            "site[dc-a].target[files1].argv",
        ),
        (
            "grpc service with newline",
            |p| t(p, 0, 2).service = Some("a\nb".into()),
            "site[dc-a].target[files1].service",
        ),
        (
            "command without argv",
            |p| t(p, 0, 3).argv = None,
            "site[dc-a].target[mta1].argv",
        ),
        (
            "command with empty argv",
            |p| t(p, 0, 3).argv = Some(vec![]),
            "site[dc-a].target[mta1].argv",
        ),
        (
            "command relative program",
            |p| t(p, 0, 3).argv = Some(vec!["check-mta".into()]),
            "site[dc-a].target[mta1].argv",
        ),
        (
            "command with NUL",
            |p| t(p, 0, 3).argv = Some(vec!["/bin/x".into(), "a\0b".into()]),
            "site[dc-a].target[mta1].argv",
        ),
        (
            "command with address",
            |p| t(p, 0, 3).address = Some("x:1".into()),
            "site[dc-a].target[mta1].address",
        ),
        (
            "override timeout > interval",
            |p| t(p, 0, 1).timeout = Some(ms(600)),
            "site[dc-a].target[proxy1].timeout",
        ),
        (
            "override interval 0",
            |p| t(p, 0, 1).interval = Some(Duration::ZERO),
            "site[dc-a].target[proxy1].interval",
        ),
        (
            "override fail_after 0",
            |p| t(p, 0, 1).fail_after = Some(0),
            "site[dc-a].target[proxy1].fail_after",
        ),
        (
            "override recover_after 0",
            |p| t(p, 0, 1).recover_after = Some(0),
            "site[dc-a].target[proxy1].recover_after",
        ),
        (
            "consul_service with space",
            |p| t(p, 0, 1).consul_service = Some("carbonio proxy".into()),
            "site[dc-a].target[proxy1].consul_service",
        ),
        (
            "consul_check empty",
            |p| t(p, 0, 1).consul_check = Some(String::new()),
            "site[dc-a].target[proxy1].consul_check",
        ),
        (
            "consul_node too long",
            |p| t(p, 0, 1).consul_node = Some("a".repeat(257)),
            "site[dc-a].target[proxy1].consul_node",
        ),
        (
            "consul mapping on an IP without consul_node",
            |p| t(p, 0, 1).address = Some("10.0.0.5:443".into()),
            "site[dc-a].target[proxy1].consul_node",
        ),
        (
            "consul mapping on a command without consul_node",
            |p| t(p, 0, 3).consul_check = Some("service:mta".into()),
            "site[dc-a].target[mta1].consul_node",
        ),
        (
            "server_sites bad name",
            |p| p.consul.server_sites[0] = "dc a".into(),
            "consul.server_sites[0]",
        ),
        (
            "require without server_sites",
            |p| {
                p.consul.mode = ConsulMode::Require;
                p.consul.server_sites.clear();
            },
            "consul.server_sites",
        ),
        (
            "require with the quorum in one site",
            |p| {
                p.consul.mode = ConsulMode::Require;
                p.consul.server_sites = vec!["dc-a".into(), "dc-a".into(), "dc-b".into()];
            },
            "consul.mode",
        ),
        (
            "require with a critical target Consul cannot confirm",
            |p| {
                p.consul.mode = ConsulMode::Require;
                t(p, 1, 0).consul_service = None;
            },
            "site[dc-b].target[mbox2].consul_service",
        ),
        (
            "observation_ttl below 2 × interval × fail_after",
            |p| p.failover.observation_ttl = ms(2999),
            "failover.observation_ttl",
        ),
        (
            "observation_ttl below a target's window",
            |p| t(p, 0, 1).fail_after = Some(7),
            "failover.observation_ttl",
        ),
        (
            "observation_ttl 0",
            |p| p.failover.observation_ttl = Duration::ZERO,
            "failover.observation_ttl",
        ),
        (
            "min_failover_interval 0",
            |p| p.failover.min_failover_interval = Duration::ZERO,
            "failover.min_failover_interval",
        ),
        (
            "failback_after over a week",
            |p| p.failover.failback_after = Duration::from_secs(8 * 86400),
            "failover.failback_after",
        ),
    ];
    for (what, edit, key) in cases {
        let mut p = policy();
        edit(&mut p);
        let err = match p.validate() {
            Ok(()) => panic!("{what}: accepted"),
            Err(err) => err,
        };
        assert!(
            keys(&err).iter().any(|k| k == key),
            "{what}: expected {key}, got {err}"
        );
    }
}

/// Values on the edge of a rule, and legal but unusual layouts, pass.
#[test]
fn site_validation_accepts_the_boundaries() {
    type Edit = fn(&mut Policy);
    let cases: &[(&str, Edit)] = &[
        ("no sites at all", |p| p.sites.clear()),
        ("timeout equal to interval", |p| {
            p.probe.timeout = p.probe.interval
        }),
        ("observation_ttl exactly 2 × interval × fail_after", |p| {
            p.failover.observation_ttl = ms(3000)
        }),
        ("one site", |p| {
            p.sites.truncate(1);
        }),
        ("require across three sites", |p| {
            p.consul.mode = ConsulMode::Require
        }),
        ("require with 2+2+1 servers", |p| {
            p.consul.mode = ConsulMode::Require;
            p.consul.server_sites = ["dc-a", "dc-a", "dc-b", "dc-b", "dc-c"]
                .map(String::from)
                .to_vec();
        }),
        ("ignore mode with a mapping on an IP", |p| {
            p.consul.mode = ConsulMode::Ignore;
            p.sites[0].targets[1].address = Some("10.0.0.5:443".into());
        }),
        ("explicit consul_node on an IP", |p| {
            let t = &mut p.sites[0].targets[1];
            t.address = Some("10.0.0.5:443".into());
            t.consul_node = Some("agent-proxy1-example-com".into());
        }),
        ("a target slower than the others, ttl raised", |p| {
            let t = &mut p.sites[0].targets[1];
            t.interval = Some(Duration::from_secs(2));
            t.timeout = Some(Duration::from_secs(2));
            p.failover.observation_ttl = Duration::from_secs(12);
        }),
        ("https without verification", |p| {
            p.sites[0].targets[0].tls_verify = Some(false)
        }),
        ("expect any status", |p| {
            p.sites[0].targets[0].expect_status = Some(503)
        }),
        ("ipv6 address, node named", |p| {
            let t = &mut p.sites[0].targets[1];
            t.address = Some("[::1]:443".into());
            t.consul_node = Some("agent-proxy1-example-com".into());
        }),
        ("auto failback", |p| p.failover.failback = Failback::Auto),
    ];
    for (what, edit) in cases {
        let mut p = policy();
        edit(&mut p);
        if let Err(err) = p.validate() {
            panic!("{what}: refused: {err}");
        }
    }
}

/// `require` is refused exactly when some site holds enough Consul servers
/// that losing it loses Consul's quorum.
#[test]
fn require_is_refused_when_consul_dies_with_a_site() {
    let cases: &[(&[&str], bool)] = &[
        (&["dc-a", "dc-b", "dc-c"], true),
        (&["dc-a", "dc-a", "dc-b"], false),
        (&["dc-a"], false),
        (&["dc-a", "dc-b"], false),
        (&["dc-a", "dc-a", "dc-b", "dc-b"], false),
        (&["dc-a", "dc-a", "dc-b", "dc-b", "dc-c"], true),
        (&["dc-a", "dc-a", "dc-a", "dc-b", "dc-c"], false),
    ];
    for (servers, ok) in cases {
        let mut p = policy();
        p.consul.mode = ConsulMode::Require;
        p.consul.server_sites = servers.iter().map(|s| s.to_string()).collect();
        match p.validate() {
            Ok(()) => assert!(ok, "{servers:?} accepted"),
            Err(err) => {
                assert!(!ok, "{servers:?} refused: {err}");
                assert_eq!(keys(&err)[0], "consul.mode", "{err}");
                let text = err.to_string();
                assert!(text.contains("dies with that site"), "{text}");
                assert!(
                    text.contains("corroborate"),
                    "says what to use instead: {text}"
                );
            }
        }
    }
}

/// The Consul node is derived from the target's host the way Carbonio's
/// service-discover names nodes.
#[test]
fn consul_node_is_derived_carbonio_style() {
    fn target(kind: ProbeKind, role: Role, where_: &str) -> TargetPolicy {
        let mut t = TargetPolicy::new("t", role, kind);
        match kind {
            ProbeKind::Http | ProbeKind::Https => t.url = Some(where_.into()),
            ProbeKind::Command => t.argv = Some(vec![where_.into()]),
            _ => t.address = Some(where_.into()),
        }
        t
    }
    let cases: &[(ProbeKind, Role, &str, Option<&str>)] = &[
        (
            ProbeKind::Tcp,
            Role::Proxy,
            "proxy1.example.com:443",
            Some("agent-proxy1-example-com"),
        ),
        (
            ProbeKind::Https,
            Role::Mailstore,
            "https://mbox1.example.com:7071/service/health/ready",
            Some("agent-mbox1-example-com"),
        ),
        (
            ProbeKind::Grpc,
            Role::Consul,
            "svc1.example.com:8502",
            Some("server-svc1-example-com"),
        ),
        (
            ProbeKind::Tcp,
            Role::Mta,
            "mta1.example.com.:25",
            Some("agent-mta1-example-com"),
        ),
        (ProbeKind::Tcp, Role::Proxy, "10.0.0.5:443", None),
        (ProbeKind::Tcp, Role::Proxy, "[::1]:443", None),
        (ProbeKind::Http, Role::Proxy, "http://127.0.0.1:8080/", None),
        (ProbeKind::Command, Role::Other, "/bin/true", None),
    ];
    for (kind, role, where_, expected) in cases {
        let t = target(*kind, *role, where_);
        assert_eq!(t.consul_node_name().as_deref(), *expected, "{where_}");
    }
    let mut t = target(ProbeKind::Tcp, Role::Proxy, "10.0.0.5:443");
    t.consul_node = Some("agent-proxy1-example-com".into());
    assert_eq!(
        t.consul_node_name().as_deref(),
        Some("agent-proxy1-example-com")
    );
}

/// The timer check reads the policy's real probe numbers: the slowest
/// critical target sets detection, and observation_ttl must cover every
/// target's window.
#[test]
fn timer_check_uses_the_policy_probe_numbers() {
    let mut p = policy();
    {
        let t = &mut p.sites[1].targets[0];
        t.interval = Some(Duration::from_secs(1));
        t.fail_after = Some(5);
    }
    // A non-critical target may be slower still without moving detection.
    p.sites[0].targets[2].interval = Some(Duration::from_secs(2));
    p.sites[0].targets[2].timeout = Some(Duration::from_secs(2));
    p.failover.observation_ttl = Duration::from_secs(12);
    let report = check_timers(&RaftTimers::default(), &p).unwrap_or_else(|e| panic!("{e}"));
    let text = report.lines.join("\n");
    assert!(
        text.contains(
            "fail_after 5 × probe_interval 1s + probe_timeout 400ms (the slowest critical target, \
             dc-b/mbox2)"
        ),
        "{text}"
    );
    assert!(
        text.contains("observation_ttl 12s ≥ 2 × interval 2s × fail_after 3 = 12s (of site[dc-a].target[files1]"),
        "{text}"
    );
    let lease_wait = p.lease.lease_wait();
    assert_eq!(
        report.worst_case_failover,
        ms(1900 + 5400 + 600 + 400) + lease_wait
    );

    p.failover.observation_ttl = Duration::from_secs(11);
    let err = check_timers(&RaftTimers::default(), &p).expect_err("ttl below a target's window");
    assert_eq!(keys(&err), ["failover.observation_ttl"]);
    assert!(
        err.to_string()
            .contains("raise observation_ttl to at least 12s"),
        "{err}"
    );
}

/// A fully specified policy, odd durations included, survives JSON (the
/// Raft log) and TOML (`policy show`) unchanged.
#[test]
fn full_policy_round_trips_through_json_and_toml() {
    let mut p = policy();
    p.probe.interval = Duration::new(0, 333_333_333);
    p.probe.timeout = Duration::new(0, 333_333_333);
    p.failover.observation_ttl = Duration::new(13, 1);
    p.failover.failback = Failback::Auto;
    let t = &mut p.sites[0].targets[1];
    t.interval = Some(Duration::from_micros(1_500_001));
    t.timeout = Some(ms(700));
    t.fail_after = Some(4);
    t.recover_after = Some(1);
    t.consul_check = Some("service:carbonio-proxy".into());
    t.consul_node = Some("agent-proxy1-example-com".into());
    p.sites[0].targets[0].expect_status = Some(204);
    p.sites[0].targets[0].tls_verify = Some(false);
    p.validate().unwrap_or_else(|e| panic!("{e}"));

    let json = serde_json::to_string(&p).expect("json");
    let back: Policy = serde_json::from_str(&json).expect("from json");
    assert_eq!(back, p, "{json}");
    let toml_text = p.to_toml();
    let back = Policy::parse(&toml_text, Path::new("cluster.toml"))
        .unwrap_or_else(|e| panic!("{e}\n{toml_text}"));
    assert_eq!(back, p, "{toml_text}");
    assert!(toml_text.contains("[[site.target]]"), "{toml_text}");
    assert!(
        !toml_text.contains("url = \"\""),
        "absent keys stay absent: {toml_text}"
    );
}

/// Typos in the new tables are located, and keys in the wrong file say
/// which file they belong in.
#[test]
fn misplaced_consul_keys_point_to_the_right_file() {
    let err = Policy::parse(
        "[consul]\naddress = \"127.0.0.1:8500\"\n",
        Path::new("cluster.toml"),
    )
    .expect_err("agent address in the policy");
    assert!(err.to_string().contains("node-local"), "{err}");

    let node = format!("{}\n[consul]\nmode = \"require\"\n", super::tests::NODE);
    let err = NodeConfig::parse(&node, Path::new("w.toml")).expect_err("mode in a node file");
    assert!(err.to_string().contains("cluster policy"), "{err}");

    let node = format!("{}\n[[site]]\nname = \"dc-a\"\n", super::tests::NODE);
    let err = NodeConfig::parse(&node, Path::new("w.toml")).expect_err("site in a node file");
    assert!(err.to_string().contains("cluster.toml"), "{err}");

    let err = Policy::parse(
        "[[site]]\nname = \"dc-a\"\nactive = true\n[[site.target]]\nname = \"x\"\nrole = \"mailbox\"\nkind = \"tcp\"\naddress = \"x:1\"\n",
        Path::new("cluster.toml"),
    )
    .expect_err("unknown role");
    assert!(
        err.to_string().contains("mailstore"),
        "lists the roles: {err}"
    );
}

/// A node's `[consul]`: defaults once the table exists, and every rule.
#[test]
fn node_consul_section_defaults_and_validation() {
    let base = super::tests::NODE;
    let with = |extra: &str| format!("{base}\n[consul]\n{extra}");
    let config = NodeConfig::parse(&with(""), Path::new("/etc/witness/w.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let consul = config.consul.clone().expect("section");
    assert!(consul.enabled);
    assert_eq!(consul.address, "127.0.0.1:8500");
    assert_eq!(consul.scheme, ConsulScheme::Http);
    assert_eq!(consul.timeout, ms(1000));
    assert_eq!(consul.token_file, None);
    assert_eq!(consul.datacenter, None);
    let agent = config
        .consul_agent()
        .expect("no token file")
        .expect("enabled");
    assert_eq!(agent.base_url(), "http://127.0.0.1:8500");

    let cases: &[(&str, &str)] = &[
        ("address = \"127.0.0.1\"", "consul.address"),
        ("address = \"0.0.0.0:8500\"", "consul.address"),
        ("timeout = \"0s\"", "consul.timeout"),
        ("timeout = \"31s\"", "consul.timeout"),
        ("datacenter = \"dc 1\"", "consul.datacenter"),
        ("token_file = \"\"", "consul.token_file"),
    ];
    for (line, key) in cases {
        let err = NodeConfig::parse(&with(line), Path::new("w.toml")).expect_err(line);
        assert_eq!(keys(&err), [*key], "{line}: {err}");
    }
    let err =
        NodeConfig::parse(&with("scheme = \"ftp\""), Path::new("w.toml")).expect_err("scheme");
    assert!(err.to_string().contains("scheme"), "{err}");
    let err = NodeConfig::parse(&with("token = \"s3cret\""), Path::new("w.toml"))
        .expect_err("inline token");
    assert!(err.to_string().contains("unknown field `token`"), "{err}");

    let off = NodeConfig::parse(&with("enabled = false"), Path::new("w.toml")).expect("valid");
    assert_eq!(off.consul_agent().expect("ok"), None);
    assert_eq!(
        super::tests::node().consul_agent().expect("ok"),
        None,
        "no [consul] table"
    );
}

/// The token comes from its file, relative paths resolve against the node
/// file, a missing or empty file is an error naming the path, and `Debug`
/// never shows the secret.
#[test]
fn consul_token_is_read_from_its_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let origin = dir.path().join("witness.toml");
    let text = format!(
        "{}\n[consul]\ntoken_file = \"consul.token\"\ntimeout = \"2s\"\ndatacenter = \"dc1\"\n",
        super::tests::NODE
    );
    let config = NodeConfig::parse(&text, &origin).unwrap_or_else(|e| panic!("{e}"));
    let token_path = dir.path().join("consul.token");
    assert_eq!(
        config.consul.as_ref().and_then(|c| c.token_file.clone()),
        Some(token_path.clone())
    );

    let err = config.consul_agent().expect_err("file missing");
    assert_eq!(keys(&err), ["consul.token_file"]);
    assert!(
        err.to_string().contains(&token_path.display().to_string()),
        "{err}"
    );

    let write_secret = |text: &str, mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(&token_path, text).expect("write");
        std::fs::set_permissions(&token_path, std::fs::Permissions::from_mode(mode))
            .expect("chmod");
    };
    write_secret("\n", 0o600);
    let err = config.consul_agent().expect_err("empty file");
    assert!(err.to_string().contains("is empty"), "{err}");

    write_secret("two words\n", 0o600);
    assert!(config.consul_agent().is_err(), "one token only");

    // A token other users can read is refused, with the command that fixes it.
    write_secret("b1gs3cret-uuid\n", 0o644);
    let err = config.consul_agent().expect_err("world-readable token");
    assert!(err.to_string().contains("chmod 600"), "{err}");

    write_secret("b1gs3cret-uuid\n", 0o600);
    let agent = config.consul_agent().expect("readable").expect("enabled");
    let token = agent.token.clone().expect("token");
    assert_eq!(token.expose(), "b1gs3cret-uuid");
    assert_eq!(agent.timeout, ms(2000));
    assert_eq!(agent.datacenter.as_deref(), Some("dc1"));
    let shown = format!("{agent:?}");
    assert!(!shown.contains("b1gs3cret"), "{shown}");
    assert!(!config.to_toml().contains("b1gs3cret"));
}

/// `[consul]` over TLS: the CA and a client certificate are read at start,
/// only with `scheme = "https"`, the certificate and key together, and a
/// key other users can read is refused.
#[test]
fn consul_tls_files_are_checked_and_read() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let origin = dir.path().join("witness.toml");
    let parse = |extra: &str| {
        NodeConfig::parse(
            &format!("{}\n[consul]\n{extra}", super::tests::NODE),
            &origin,
        )
    };
    let err = parse("ca_file = \"ca.pem\"\n").expect_err("http with a CA");
    assert_eq!(keys(&err), ["consul.ca_file"]);
    let err = parse("scheme = \"https\"\ncert_file = \"c.pem\"\n").expect_err("no key");
    assert_eq!(keys(&err), ["consul.cert_file"]);

    let (ca, cert, key) = (
        dir.path().join("ca.pem"),
        dir.path().join("c.pem"),
        dir.path().join("c.key"),
    );
    std::fs::write(&ca, "CA PEM").expect("write");
    std::fs::write(&cert, "CERT PEM").expect("write");
    std::fs::write(&key, "KEY PEM").expect("write");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let config = parse(&format!(
        "scheme = \"https\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        ca.display(),
        cert.display(),
        key.display()
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let err = config.consul_agent().expect_err("a readable key");
    assert!(err.to_string().contains("chmod 600"), "{err}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let agent = config.consul_agent().expect("reads").expect("enabled");
    let tls = agent.tls.clone().expect("tls");
    assert_eq!(tls.ca_pem.as_deref(), Some(&b"CA PEM"[..]));
    assert_eq!(tls.identity_pem.as_deref(), Some(&b"CERT PEM\nKEY PEM"[..]));
    assert_eq!(agent.base_url(), "https://127.0.0.1:8500");
}

proptest! {
    /// Any probe timers and per-target overrides survive JSON and TOML.
    #[test]
    fn any_probe_timers_round_trip(
        interval in 1u64..10_000_000_000,
        timeout in 1u64..10_000_000_000,
        fail_after in 0u32..200,
        over in proptest::option::of(0u64..10_000_000_000),
        ttl in 0u64..1_000_000_000_000,
    ) {
        let mut p = policy();
        p.probe.interval = Duration::from_nanos(interval);
        p.probe.timeout = Duration::from_nanos(timeout);
        p.probe.fail_after = fail_after;
        p.sites[0].targets[1].timeout = over.map(Duration::from_nanos);
        p.failover.observation_ttl = Duration::from_nanos(ttl);
        let json = serde_json::to_string(&p).expect("serialise");
        let back: Policy = serde_json::from_str(&json).expect("deserialise");
        prop_assert_eq!(&back, &p);
        let back: Policy = toml::from_str(&p.to_toml()).expect("toml");
        prop_assert_eq!(back, p);
    }
}

/// `[directives]` and `mail_hosts`: every rule, one mistake at a time, each
/// named by its key; the defaults and a full table are accepted.
#[test]
fn directives_validation_names_the_offending_key() {
    type Edit = fn(&mut Policy);
    let command = |name: &str, after: &[&str]| CommandDirective {
        name: name.into(),
        role: "mailstore".into(),
        after: after.iter().map(|s| s.to_string()).collect(),
        argv: None,
        timeout: None,
    };
    let cases: &[(&str, Edit, &str)] = &[
        (
            "zero threads",
            |p| p.directives.promote_threads = 0,
            "directives.promote_threads",
        ),
        (
            "zero claim ttl",
            |p| p.directives.claim_ttl = Duration::ZERO,
            "directives.claim_ttl",
        ),
        (
            "no attempts",
            |p| p.directives.max_attempts = 0,
            "directives.max_attempts",
        ),
        (
            "flush without promote",
            |p| {
                p.directives.promote = false;
                p.directives.flush_cache = true;
            },
            "directives.promote",
        ),
        (
            "hostile mail host",
            |p| p.sites[0].mail_hosts = vec!["mbox1; rm -rf /".into()],
            "site[dc-a].mail_hosts[0]",
        ),
        (
            "option-like mail host",
            |p| p.sites[1].mail_hosts = vec!["--help".into()],
            "site[dc-b].mail_hosts[0]",
        ),
    ];
    for (what, edit, key) in cases {
        let mut p = policy();
        edit(&mut p);
        let err = p.validate().expect_err(what);
        assert_eq!(keys(&err), [*key], "{what}: {err}");
    }

    let commands: &[(&str, Vec<CommandDirective>, &str)] = &[
        (
            "built-in name",
            vec![command("promote", &[])],
            "directives.command[0].name",
        ),
        (
            "twice",
            vec![command("notify", &[]), command("notify", &[])],
            "directives.command[1].name",
        ),
        (
            "unknown dependency",
            vec![command("notify", &["later"]), command("later", &[])],
            "directives.command[0].after",
        ),
        (
            "a command line in the policy",
            vec![CommandDirective {
                argv: Some(vec!["/bin/sh".into(), "-c".into(), "id".into()]),
                ..command("notify", &[])
            }],
            "directives.command[0].argv",
        ),
        (
            "a timeout in the policy",
            vec![CommandDirective {
                timeout: Some(Duration::from_secs(60)),
                ..command("notify", &[])
            }],
            "directives.command[0].argv",
        ),
    ];
    for (what, list, key) in commands {
        let mut p = policy();
        p.directives.commands = list.clone();
        let err = p.validate().expect_err(what);
        assert_eq!(keys(&err), [*key], "{what}: {err}");
    }

    let mut p = policy();
    p.sites[0].mail_hosts = vec!["mbox1.example.com".into()];
    p.directives.flush_cache = true;
    p.directives.restart_replicas = true;
    p.directives.commands = vec![
        command("notify", &["promote"]),
        command("audit", &["notify", "flush-cache"]),
    ];
    p.validate().expect("a full [directives] table is valid");
    let back = Policy::parse(&p.to_toml(), Path::new("cluster.toml")).expect("re-parse");
    assert_eq!(back, p);
}

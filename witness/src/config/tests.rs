//! Unit tests of the configuration module: defaults, every validation rule,
//! error messages, exact round trips and the example files.

use std::path::{Path, PathBuf};
use std::time::Duration;

use proptest::prelude::*;

use super::policy::percent;
use super::*;

const ORIGIN: &str = "/etc/witness/witness.toml";

/// A valid three-node config for node 1, all on loopback.
pub(super) const NODE: &str = r#"
[tls]
ca = "/etc/witness/tls/ca.pem"
cert = "/etc/witness/tls/peer-1.pem"
key = "/etc/witness/tls/peer-1.key"

[node]
id = 1
name = "w1"
site = "dc-a"
listen = "127.0.0.1:7410"
http_listen = "127.0.0.1:7411"
data_dir = "/tmp/w1"

[[peer]]
id = 1
name = "w1"
addr = "127.0.0.1:7410"
site = "dc-a"

[[peer]]
id = 2
name = "w2"
addr = "127.0.0.1:7420"
site = "dc-b"

[[peer]]
id = 3
name = "w3"
addr = "127.0.0.1:7430"
site = "dc-c"
"#;

pub(super) fn node() -> NodeConfig {
    NodeConfig::parse(NODE, Path::new(ORIGIN)).expect("the base config is valid")
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The keys of the problems an error lists.
fn keys(err: &ConfigError) -> Vec<String> {
    err.problems().iter().map(|p| p.key.clone()).collect()
}

fn parse_err(text: &str) -> ConfigError {
    match NodeConfig::parse(text, Path::new(ORIGIN)) {
        Ok(config) => panic!("expected an error, parsed {config:?}"),
        Err(err) => err,
    }
}

/// Keys left out take the documented defaults.
#[test]
fn omitted_keys_take_the_defaults() {
    let config = node();
    assert_eq!(config.node.cluster, "witness");
    assert_eq!(config.raft, RaftTimers::default());
    assert_eq!(config.raft.heartbeat_interval, ms(100));
    assert_eq!(config.raft.election_timeout_min, ms(400));
    assert_eq!(config.raft.election_timeout_max, ms(800));
    assert_eq!(config.raft.rpc_timeout, ms(300));
    assert_eq!(config.raft.snapshot_after_logs, 1000);
    assert_eq!(config.raft.keep_logs_after_snapshot, 500);

    let text = NODE
        .replace("listen = \"127.0.0.1:7410\"\n", "advertise = \"w1:7410\"\n")
        .replace("http_listen = \"127.0.0.1:7411\"\n", "")
        .replace("addr = \"127.0.0.1:7410\"", "addr = \"w1:7410\"");
    let config = NodeConfig::parse(&text, Path::new(ORIGIN)).expect("valid");
    assert_eq!(config.node.listen, "0.0.0.0:7400".parse().expect("addr"));
    assert_eq!(
        config.node.http_listen,
        "0.0.0.0:7401".parse().expect("addr")
    );

    let policy = Policy::parse("", Path::new("cluster.toml")).expect("empty policy is valid");
    assert_eq!(policy, Policy::default());
    assert_eq!(policy.lease.renew_interval, ms(400));
    assert_eq!(policy.lease.lease_ttl, ms(3000));
    assert_eq!(policy.lease.max_drift, 0.01);
    assert_eq!(policy.lease.margin, ms(1000));
}

/// `advertise` defaults to a specific `listen` address, and is required
/// when `listen` is a wildcard nobody can dial.
#[test]
fn advertise_defaults_to_listen_only_when_listen_is_dialable() {
    assert_eq!(node().node.advertise, "127.0.0.1:7410");

    let err = parse_err(&NODE.replace("listen = \"127.0.0.1:7410\"", "listen = \"0.0.0.0:7410\""));
    assert_eq!(keys(&err), ["node.advertise"]);
    let text = err.to_string();
    assert!(
        text.contains(ORIGIN) && text.contains("0.0.0.0:7410"),
        "{text}"
    );
    assert!(
        text.contains("advertise = \""),
        "says what to write: {text}"
    );
}

/// Every node rule, one mistake at a time: the error names the right key.
#[test]
fn node_validation_names_the_offending_key() {
    type Edit = fn(&mut NodeConfig);
    let cases: &[(&str, Edit, &str)] = &[
        ("id zero", |c| c.node.id = 0, "node.id"),
        ("empty name", |c| c.node.name.clear(), "node.name"),
        (
            "name with space",
            |c| c.node.name = "w 1".into(),
            "node.name",
        ),
        (
            "name too long",
            |c| c.node.name = "w".repeat(64),
            "node.name",
        ),
        ("empty site", |c| c.node.site.clear(), "node.site"),
        (
            "cluster with slash",
            |c| c.node.cluster = "a/b".into(),
            "node.cluster",
        ),
        (
            "empty advertise",
            |c| c.node.advertise.clear(),
            "node.advertise",
        ),
        (
            "advertise without port",
            |c| c.node.advertise = "w1".into(),
            "node.advertise",
        ),
        (
            "advertise port 0",
            |c| c.node.advertise = "w1:0".into(),
            "node.advertise",
        ),
        (
            "advertise wildcard",
            |c| c.node.advertise = "0.0.0.0:7410".into(),
            "node.advertise",
        ),
        (
            "http on grpc port",
            |c| c.node.http_listen = c.node.listen,
            "node.http_listen",
        ),
        (
            "empty data dir",
            |c| c.node.data_dir = PathBuf::new(),
            "node.data_dir",
        ),
        ("no peers", |c| c.peers.clear(), "peer"),
        (
            "eight peers",
            |c| {
                for id in 4..=8 {
                    c.peers.push(PeerConfig {
                        id,
                        name: format!("w{id}"),
                        addr: format!("127.0.0.1:74{id}0"),
                        site: "dc-c".into(),
                    });
                }
            },
            "peer",
        ),
        ("peer id zero", |c| c.peers[2].id = 0, "peer[id=0].id"),
        ("duplicate peer id", |c| c.peers[2].id = 2, "peer[id=2].id"),
        (
            "duplicate peer name",
            |c| c.peers[2].name = "w2".into(),
            "peer[id=3].name",
        ),
        (
            "duplicate peer addr",
            |c| c.peers[2].addr = "127.0.0.1:7420".into(),
            "peer[id=3].addr",
        ),
        (
            "bad peer addr",
            |c| c.peers[2].addr = "127.0.0.1".into(),
            "peer[id=3].addr",
        ),
        (
            "bad peer site",
            |c| c.peers[2].site = "dc c".into(),
            "peer[id=3].site",
        ),
        ("own id not a peer", |c| c.node.id = 4, "node.id"),
        (
            "own peer name differs",
            |c| c.peers[0].name = "w0".into(),
            "peer[id=1].name",
        ),
        (
            "own peer site differs",
            |c| c.peers[0].site = "dc-b".into(),
            "peer[id=1].site",
        ),
        (
            "own peer addr differs",
            |c| c.peers[0].addr = "127.0.0.1:7419".into(),
            "peer[id=1].addr",
        ),
        (
            "zero heartbeat",
            |c| c.raft.heartbeat_interval = Duration::ZERO,
            "raft.heartbeat_interval",
        ),
        (
            "zero rpc timeout",
            |c| c.raft.rpc_timeout = Duration::ZERO,
            "raft.rpc_timeout",
        ),
        (
            "zero snapshot",
            |c| c.raft.snapshot_after_logs = 0,
            "raft.snapshot_after_logs",
        ),
        (
            "min = max",
            |c| c.raft.election_timeout_max = ms(400),
            "raft.election_timeout_max",
        ),
        (
            "min > max",
            |c| c.raft.election_timeout_min = ms(2000),
            "raft.election_timeout_max",
        ),
        (
            "heartbeat × 3 > min",
            |c| c.raft.heartbeat_interval = ms(134),
            "raft.heartbeat_interval",
        ),
        (
            "rpc ≥ min",
            |c| c.raft.rpc_timeout = ms(400),
            "raft.rpc_timeout",
        ),
    ];
    for (what, edit, key) in cases {
        let mut config = node();
        edit(&mut config);
        let err = match config.validate() {
            Ok(()) => panic!("{what}: accepted"),
            Err(err) => err,
        };
        assert!(
            keys(&err).iter().any(|k| k == key),
            "{what}: expected {key}, got {err}"
        );
    }
}

/// Values on the edge of a rule are accepted: the rules say ≤ where the
/// design says ≤.
#[test]
fn node_validation_accepts_the_boundaries() {
    type Edit = fn(&mut NodeConfig);
    let cases: &[(&str, Edit)] = &[
        ("heartbeat × 3 = min", |c| {
            c.raft.election_timeout_min = ms(450);
            c.raft.heartbeat_interval = ms(150)
        }),
        ("one peer", |c| c.peers.truncate(1)),
        ("seven peers", |c| {
            for id in 4..=7 {
                c.peers.push(PeerConfig {
                    id,
                    name: format!("w{id}"),
                    addr: format!("127.0.0.1:74{id}0"),
                    site: "dc-c".into(),
                });
            }
        }),
        ("two witnesses in one site is legal", |c| {
            c.peers[2].site = "dc-a".into()
        }),
        ("ipv6 advertise", |c| {
            c.node.advertise = "[::1]:7410".into();
            c.peers[0].addr = "[::1]:7410".into();
        }),
        ("host names", |c| {
            c.node.advertise = "svc1.dc-a.example.com:7400".into();
            c.peers[0].addr = "svc1.dc-a.example.com:7400".into();
        }),
    ];
    for (what, edit) in cases {
        let mut config = node();
        edit(&mut config);
        if let Err(err) = config.validate() {
            panic!("{what}: refused: {err}");
        }
    }
}

/// The message for the most common mistake says exactly what to add.
#[test]
fn own_id_missing_says_which_peer_to_add() {
    let err =
        parse_err(&NODE.replace("id = 1\nname = \"w1\"\nsite", "id = 4\nname = \"w1\"\nsite"));
    let text = err.to_string();
    assert!(text.starts_with(ORIGIN), "{text}");
    assert!(
        text.contains("node.id = 4 is not in the [[peer]] list"),
        "{text}"
    );
    assert!(text.contains("add a [[peer]] with id = 4"), "{text}");
}

/// All problems are reported at once, not one per run.
#[test]
fn validation_lists_every_problem() {
    let mut config = node();
    config.node.name = String::new();
    config.raft.rpc_timeout = ms(900);
    let err = config.validate().expect_err("two mistakes");
    assert_eq!(keys(&err).len(), 3, "{err}"); // name, own peer name, rpc_timeout
    assert!(err.to_string().contains("3 problems"), "{err}");
}

/// Unknown keys are refused with the file, line:column, table and key.
#[test]
fn unknown_keys_are_located() {
    let text = NODE.replace(
        "[[peer]]\nid = 2",
        "[raft]\nheartbeat = \"100ms\"\n\n[[peer]]\nid = 2",
    );
    let err = parse_err(&text);
    let ConfigError::Parse { line, column, .. } = &err else {
        panic!("{err:?}")
    };
    let expected_line = text
        .lines()
        .position(|l| l.starts_with("heartbeat ="))
        .expect("line")
        + 1;
    assert_eq!((*line, *column), (expected_line, 1), "{err}");
    let shown = err.to_string();
    for part in [
        &format!("{ORIGIN}:{expected_line}:1"),
        "in [raft]",
        "`heartbeat`",
        "remove the key",
    ] {
        assert!(shown.contains(part), "missing {part:?} in {shown}");
    }

    let err = parse_err(&format!("{NODE}\n[lease]\nlease_ttl = \"3s\"\n"));
    assert!(
        err.to_string().contains("cluster.toml"),
        "points to the policy file: {err}"
    );

    let err =
        Policy::parse("[lease]\nttl = \"3s\"\n", Path::new("cluster.toml")).expect_err("unknown");
    assert!(
        err.to_string()
            .starts_with("cluster.toml:2:1: in [lease], `ttl = \"3s\"`"),
        "{err}"
    );
}

/// Malformed values get errors that say what to write instead.
#[test]
fn malformed_values_say_what_to_write() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "listen = \"127.0.0.1:7410\"",
            "listen = \"localhost:7410\"",
            "not an IP address with a port",
        ),
        (
            "listen = \"127.0.0.1:7410\"",
            "listen = \"127.0.0.1\"",
            "\"0.0.0.0:7400\"",
        ),
        (
            "http_listen = \"127.0.0.1:7411\"",
            "http_listen = 7411",
            "a string",
        ),
        (
            "id = 1\nname",
            "id = -1\nname",
            "in [node], `id = -1`: invalid value",
        ),
        ("data_dir = \"/tmp/w1\"\n", "", "missing field `data_dir`"),
        (
            "[node]\n",
            "[raft]\nrpc_timeout = 500\n[node]\n",
            "humantime",
        ),
        (
            "[node]\n",
            "[raft]\nrpc_timeout = \"500\"\n[node]\n",
            "humantime",
        ),
        (
            "[node]\n",
            "[raft]\nrpc_timeout = \"5 parsecs\"\n[node]\n",
            "humantime",
        ),
        ("[node]\n", "[node\n", "TOML"),
    ];
    for (from, to, expected) in cases {
        let text = NODE.replacen(from, to, 1);
        assert_ne!(text, NODE, "case {to:?} changed nothing");
        let err = parse_err(&text);
        let shown = err.to_string();
        assert!(shown.starts_with(ORIGIN), "{shown}");
        assert!(
            shown.contains(expected),
            "{to:?}: expected {expected:?} in {shown}"
        );
    }
}

/// A relative data dir is resolved against the config file's directory.
#[test]
fn relative_data_dir_is_resolved_against_the_config_file() {
    let text = NODE.replace("data_dir = \"/tmp/w1\"", "data_dir = \"data/w1\"");
    let config = NodeConfig::parse(&text, Path::new("/etc/witness/w1.toml")).expect("valid");
    assert_eq!(config.node.data_dir, Path::new("/etc/witness/data/w1"));

    let err = parse_err(&NODE.replace("data_dir = \"/tmp/w1\"", "data_dir = \"\""));
    assert_eq!(keys(&err), ["node.data_dir"]);
}

/// `self_peer` is the [[peer]] with this node's id.
#[test]
fn self_peer_is_the_peer_with_the_node_id() {
    let config = node();
    assert_eq!(config.self_peer().id, 1);
    assert_eq!(config.self_peer().addr, config.node.advertise);
}

/// Every policy rule, one mistake at a time.
#[test]
fn policy_validation_names_the_offending_key() {
    type Edit = fn(&mut LeasePolicy);
    let cases: &[(&str, Edit, &str)] = &[
        (
            "zero renew",
            |l| l.renew_interval = Duration::ZERO,
            "lease.renew_interval",
        ),
        (
            "zero ttl",
            |l| l.lease_ttl = Duration::ZERO,
            "lease.lease_ttl",
        ),
        ("zero margin", |l| l.margin = Duration::ZERO, "lease.margin"),
        (
            "renew × 3 > ttl",
            |l| l.renew_interval = ms(1001),
            "lease.renew_interval",
        ),
        ("zero drift", |l| l.max_drift = 0.0, "lease.max_drift"),
        ("negative drift", |l| l.max_drift = -0.01, "lease.max_drift"),
        ("drift 10%", |l| l.max_drift = 0.1, "lease.max_drift"),
        ("drift NaN", |l| l.max_drift = f64::NAN, "lease.max_drift"),
    ];
    for (what, edit, key) in cases {
        let mut policy = Policy::default();
        edit(&mut policy.lease);
        let err = policy.validate().expect_err(what);
        assert_eq!(keys(&err), [*key], "{what}: {err}");
    }

    let mut policy = Policy::default();
    policy.lease.renew_interval = ms(1000); // × 3 = lease_ttl exactly
    policy.lease.max_drift = 0.0999;
    policy.validate().expect("boundaries are accepted");
}

/// `max_drift` is written one way, as a percentage string.
#[test]
fn max_drift_is_a_percentage_string() {
    let cases: &[(&str, Option<f64>)] = &[
        ("\"1%\"", Some(0.01)),
        ("\"1 %\"", Some(0.01)),
        ("\"0.5%\"", Some(0.005)),
        ("\"2.5%\"", Some(0.025)),
        ("\".5%\"", Some(0.005)),
        ("\"1\"", None),
        ("\"one%\"", None),
        ("\"1e-2%\"", None),
        ("0.01", None),
        ("1", None),
    ];
    for (value, expected) in cases {
        let text = format!("[lease]\nmax_drift = {value}\n");
        match (Policy::parse(&text, Path::new("cluster.toml")), expected) {
            (Ok(policy), Some(fraction)) => {
                assert_eq!(policy.lease.max_drift, *fraction, "{value}")
            }
            (Err(err), None) => {
                let shown = err.to_string();
                assert!(
                    shown.contains("max_drift") && shown.contains('%'),
                    "{value}: {shown}"
                );
            }
            (got, _) => panic!("{value}: unexpected {got:?}"),
        }
    }
    assert_eq!(percent::render(0.01), "1%");
    assert_eq!(percent::render(0.1), "10%");
    assert_eq!(percent::render(0.0015), "0.15%");
    assert_eq!(percent::render(1.5), "150%");
    assert_eq!(percent::render(1e-9), "0.0000001%");
}

/// The policy is stored in the Raft log as JSON and must come back equal.
#[test]
fn policy_round_trips_through_json_exactly() {
    let odd = Policy {
        lease: LeasePolicy {
            renew_interval: Duration::new(0, 333_333_333),
            lease_ttl: Duration::new(3, 7),
            max_drift: 0.012_345_678_9,
            margin: Duration::from_micros(1_500_001),
        },
        ..Policy::default()
    };
    for policy in [Policy::default(), odd] {
        let json = serde_json::to_string(&policy).expect("serialise");
        let back: Policy = serde_json::from_str(&json).expect("deserialise");
        assert_eq!(back, policy, "{json}");
    }
    let json = serde_json::to_string(&Policy::default()).expect("serialise");
    assert_eq!(
        json,
        concat!(
            r#"{"lease":{"renew_interval":"400ms","lease_ttl":"3s","max_drift":"1%","margin":"1s"},"#,
            r#""probe":{"interval":"500ms","timeout":"400ms","fail_after":3,"recover_after":2},"#,
            r#""consul":{"mode":"corroborate","server_sites":[]},"#,
            r#""failover":{"observation_ttl":"6s","min_failover_interval":"5m","failback":"manual","#,
            r#""failback_after":"10m"},"#,
            r#""directives":{"promote":true,"promote_threads":4,"flush_cache":false,"#,
            r#""flush_cache_all_services":true,"restart_replicas":false,"#,
            r#""stop_ha_module_on_old_site":false,"gate_proxies_on_promotion":true,"#,
            r#""claim_ttl":"30s","max_attempts":3},"site":[]}"#
        )
    );
    // A policy committed before sites existed still reads, with defaults.
    let old =
        r#"{"lease":{"renew_interval":"400ms","lease_ttl":"3s","max_drift":"1%","margin":"1s"}}"#;
    let back: Policy = serde_json::from_str(old).expect("old JSON");
    assert_eq!(back, Policy::default());
}

proptest! {
    /// Any finite drift and any durations survive JSON and TOML unchanged.
    #[test]
    fn any_policy_round_trips(
        renew in 0u64..10_000_000_000,
        ttl in 0u64..100_000_000_000,
        margin in 0u64..10_000_000_000,
        drift in proptest::num::f64::NORMAL | proptest::num::f64::SUBNORMAL | proptest::num::f64::ZERO,
    ) {
        let policy = Policy {
            lease: LeasePolicy {
                renew_interval: Duration::from_nanos(renew),
                lease_ttl: Duration::from_nanos(ttl),
                max_drift: drift,
                margin: Duration::from_nanos(margin),
            },
            ..Policy::default()
        };
        let json = serde_json::to_string(&policy).expect("serialise");
        let back: Policy = serde_json::from_str(&json).expect("deserialise");
        prop_assert_eq!(&back, &policy);
        let back: Policy = toml::from_str(&policy.to_toml()).expect("toml");
        prop_assert_eq!(back, policy);
    }

    /// The lease wait is never shorter than the exact formula.
    #[test]
    fn lease_wait_never_undershoots(ttl_ms in 1u64..600_000, drift_ppm in 1u32..100_000) {
        let lease = LeasePolicy {
            lease_ttl: ms(ttl_ms),
            max_drift: f64::from(drift_ppm) / 1e6,
            ..LeasePolicy::default()
        };
        // Exact in integers: ttl × (1e6 + ppm) / (1e6 − ppm), rounded up.
        let (ppm, ttl_ns) = (u128::from(drift_ppm), u128::from(ttl_ms) * 1_000_000);
        let exact = (ttl_ns * (1_000_000 + ppm)).div_ceil(1_000_000 - ppm);
        let waited = (lease.lease_wait() - lease.margin).as_nanos();
        prop_assert!(waited >= exact, "{} < {}", waited, exact);
        prop_assert!(waited <= exact + 2, "{} ≫ {}", waited, exact);
    }
}

/// `to_toml` writes every key and parses back to the same value.
#[test]
fn to_toml_writes_every_key_and_round_trips() {
    let config = node();
    let text = config.to_toml();
    for key in [
        "cluster = ",
        "advertise = ",
        "http_listen = ",
        "[[peer]]",
        "[raft]",
        "keep_logs_after_snapshot = ",
        "\"100ms\"",
    ] {
        assert!(text.contains(key), "missing {key:?} in\n{text}");
    }
    assert_eq!(
        NodeConfig::parse(&text, Path::new(ORIGIN)).expect("re-parse"),
        config
    );

    let policy = Policy::default();
    let text = policy.to_toml();
    assert!(
        text.contains("max_drift = \"1%\"") && text.contains("lease_ttl = \"3s\""),
        "{text}"
    );
    assert_eq!(
        Policy::parse(&text, Path::new("cluster.toml")).expect("re-parse"),
        policy
    );
}

/// `load_any` tells the two kinds apart by the [node] table.
#[test]
fn load_any_decides_by_content() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node_path = dir.path().join("anything.toml");
    std::fs::write(&node_path, NODE).expect("write");
    assert!(matches!(load_any(&node_path), Ok(ConfigFile::Node(_))));

    let policy_path = dir.path().join("node.toml");
    std::fs::write(&policy_path, "[lease]\nlease_ttl = \"4s\"\n").expect("write");
    let Ok(ConfigFile::Policy(policy)) = load_any(&policy_path) else {
        panic!("not a policy")
    };
    assert_eq!(policy.lease.lease_ttl, ms(4000));

    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "[lease\n").expect("write");
    let err = load_any(&broken).expect_err("syntax error");
    assert!(
        err.to_string()
            .starts_with(&format!("{}:1:", broken.display())),
        "{err}"
    );

    let missing = dir.path().join("missing.toml");
    let err = load_any(&missing).expect_err("no file");
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
}

/// With the defaults every rule holds and the estimate is the sum of its
/// parts: 1.9 s + 1.9 s + 3 s × 1.01/0.99 + 1 s + 0.6 s + 0.4 s ≈ 8.861 s.
#[test]
fn default_timers_pass_and_sum_to_the_worst_case() {
    let report = check_timers(&RaftTimers::default(), &Policy::default()).expect("defaults pass");
    let lease_wait = LeasePolicy::default().lease_wait();
    assert!(
        lease_wait > ms(4060) && lease_wait < ms(4061),
        "{lease_wait:?}"
    );
    assert_eq!(
        report.worst_case_failover,
        ms(1900 + 1900 + 600 + 400) + lease_wait
    );
    let text = report.lines.join("\n");
    for part in [
        "2 × election_timeout_max 800ms + rpc_timeout 300ms + 2 × renew_interval 400ms = 2s 700ms \
         < lease_ttl 3s",
        "worst-case failover ≈8s 861ms",
        "election",
        "detection",
        "fail_after 3 × probe_interval 500ms + probe_timeout 400ms ([probe]; no sites yet)",
        "ok: observation_ttl 6s ≥ 2 × interval 500ms × fail_after 3 = 3s (of probe;",
        "lease_ttl 3s × (1 + 1%) / (1 − 1%) + margin 1s",
        "2 × rpc_timeout 300ms",
        "first directive",
    ] {
        assert!(text.contains(part), "missing {part:?} in\n{text}");
    }
}

/// The cross rule: a leader change must fit inside one lease.
#[test]
fn timer_check_refuses_a_leader_change_longer_than_a_lease() {
    let cases: &[(&str, u64, u64, u64, bool)] = &[
        // (what, election_timeout_max, rpc_timeout, lease_ttl, ok); the
        // renew_interval is the default 400 ms.
        ("defaults", 800, 300, 3000, true),
        ("just below", 949, 300, 3000, true),
        ("equal", 950, 300, 3000, false),
        ("one election timeout too few", 1200, 300, 3000, false),
        ("slow WAN Raft, default lease", 1500, 500, 3000, false),
        ("scaled together", 1500, 500, 5000, true),
    ];
    for (what, max, rpc, ttl, ok) in cases {
        let raft = RaftTimers {
            election_timeout_min: ms(*max / 2),
            election_timeout_max: ms(*max),
            rpc_timeout: ms(*rpc),
            ..RaftTimers::default()
        };
        let mut policy = Policy::default();
        policy.lease.lease_ttl = ms(*ttl);
        match check_timers(&raft, &policy) {
            Ok(_) if *ok => {}
            Err(err) if !ok => {
                assert_eq!(keys(&err), ["lease.lease_ttl"], "{what}: {err}");
                assert!(err.to_string().contains("fences a healthy site"), "{err}");
            }
            got => panic!("{what}: unexpected {got:?}"),
        }
    }
    // The per-file rules are part of the check too.
    let mut policy = Policy::default();
    policy.lease.margin = Duration::ZERO;
    let err = check_timers(&RaftTimers::default(), &policy).expect_err("margin 0");
    assert_eq!(keys(&err), ["lease.margin"]);
}

fn example_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read deploy/examples") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            example_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "toml") {
            out.push(path);
        }
    }
}

/// Every witness example file (node configs and cluster policies; the
/// agents' files are checked in `agent::config`) loads, passes the timer
/// check, and its effective config re-parses to an equal value.
#[test]
fn every_example_loads_and_round_trips() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let mut files = Vec::new();
    example_files(&root, &mut files);
    files.retain(|f| {
        !f.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("agent-"))
    });
    files.sort();
    assert!(
        files.len() >= 6,
        "expected the six example files, found {files:?}"
    );
    for path in &files {
        let loaded = load_any(path).unwrap_or_else(|e| panic!("{e}"));
        match &loaded {
            ConfigFile::Node(config) => {
                let again =
                    NodeConfig::parse(&config.to_toml(), path).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(&again, config, "{}", path.display());
                // A node file is checked against the policy next to it.
                let policy = Policy::load(&path.with_file_name("cluster.toml"))
                    .unwrap_or_else(|e| panic!("{e}"));
                check_timers(&config.raft, &policy).unwrap_or_else(|e| panic!("{e}"));
            }
            ConfigFile::Policy(policy) => {
                let again =
                    Policy::parse(&policy.to_toml(), path).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(&again, policy, "{}", path.display());
            }
        }
    }
}

/// The local example cluster is what the README starts: three nodes on
/// loopback with distinct ports and data dirs, the default timers, Consul
/// ignored, and two sites made of loopback ports anyone can play.
#[test]
fn local_examples_are_three_loopback_nodes_with_two_playable_sites() {
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/local");
    let policy = Policy::load(&local.join("cluster.toml")).unwrap_or_else(|e| panic!("{e}"));
    let defaults = Policy::default();
    assert_eq!(
        policy.lease, defaults.lease,
        "the local policy documents the defaults"
    );
    assert_eq!(policy.probe, defaults.probe);
    assert_eq!(
        policy.failover,
        FailoverPolicy {
            preferred_leader: Some("dc-c".into()),
            ..defaults.failover
        },
        "default failover timers; the witness-only site dc-c leads"
    );
    assert_eq!(
        policy.consul.mode,
        ConsulMode::Ignore,
        "no Consul runs locally"
    );
    type Target<'a> = (&'a str, Role, Option<&'a str>);
    let sites: Vec<(&str, bool, Vec<Target>)> = policy
        .sites
        .iter()
        .map(|s| {
            let targets = s
                .targets
                .iter()
                .map(|t| (t.name.as_str(), t.role, t.address.as_deref()))
                .collect();
            (s.name.as_str(), s.active, targets)
        })
        .collect();
    assert_eq!(
        sites,
        [
            (
                "dc-a",
                true,
                vec![
                    ("mailstore", Role::Mailstore, Some("127.0.0.1:17101")),
                    ("proxy", Role::Proxy, Some("127.0.0.1:17102"))
                ]
            ),
            (
                "dc-b",
                false,
                vec![
                    ("mailstore", Role::Mailstore, Some("127.0.0.1:17201")),
                    ("proxy", Role::Proxy, Some("127.0.0.1:17202"))
                ]
            ),
        ]
    );
    assert!(
        policy
            .sites
            .iter()
            .flat_map(|s| &s.targets)
            .all(|t| t.kind == ProbeKind::Tcp && t.critical)
    );
    let mut peers = None;
    for (n, site) in [(1u64, "dc-a"), (2, "dc-b"), (3, "dc-c")] {
        let path = local.join(format!("witness-{n}.toml"));
        let config = NodeConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.node.id, n);
        assert_eq!(config.node.name, format!("w{n}"));
        assert_eq!(config.node.site, site);
        assert_eq!(config.node.cluster, "local");
        assert_eq!(
            config.node.listen,
            format!("127.0.0.1:74{n}0").parse().expect("addr")
        );
        assert_eq!(
            config.node.http_listen,
            format!("127.0.0.1:74{n}1").parse().expect("addr")
        );
        assert_eq!(
            config.node.data_dir,
            PathBuf::from(format!("/tmp/witness-local/w{n}"))
        );
        assert_eq!(config.raft, RaftTimers::default());
        // All three files must describe the same cluster.
        let these = config.peers.clone();
        assert_eq!(
            peers.get_or_insert(these.clone()),
            &these,
            "{}",
            path.display()
        );
    }
}

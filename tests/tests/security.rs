//! Trust over the real binaries (DESIGN.md §8, docs/SECURITY.md): who may
//! call which service of a running cluster, and what a hostile client with
//! the wrong certificate — or none — gets.
//!
//! Every cell of the role × service table is asserted, allowed or refused
//! with `PERMISSION_DENIED`; connections without a certificate of the
//! cluster CA, with another CA's or with an expired one never get past the
//! TLS handshake. Forged Raft messages from the wrong certificates change
//! nothing, while the same message from the right certificate does reach
//! Raft (so the refusals are the certificate check's, not a decoding
//! failure's).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use witness::trust::{Dial, Expect, Principal, TlsFiles, Trust};
use witness_e2e::*;
use witness_proto::admin_client::AdminClient;
use witness_proto::raft_client::RaftClient;
use witness_proto::witness_client::WitnessClient;
use witness_proto::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A channel to `addr` presenting `files` (whose certificate must be `expect`).
async fn channel(files: &TlsFiles, expect: Expect, addr: &str) -> Channel {
    let trust = Trust::load(files.clone(), expect).expect("the lab certificate loads");
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(10));
    witness::trust::conn::connect(endpoint, Some(trust), Dial::AnyWitness)
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"))
}

/// What a call came to: allowed, or refused with this code.
fn outcome<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Result<(), (Code, String)> {
    r.map(|_| ())
        .map_err(|s| (s.code(), s.message().to_string()))
}

/// The four roles of the table, with their certificates.
fn holders(c: &Cluster) -> Vec<(&'static str, TlsFiles, Expect)> {
    let pki = c.pki();
    vec![
        (
            "peer",
            pki.peer(1),
            Expect::Peer {
                cluster: "e2e".into(),
                id: 1,
            },
        ),
        (
            "agent",
            pki.agent("dc-a", "mbox-a"),
            Expect::Agent {
                site: "dc-a".into(),
                name: "mbox-a".into(),
            },
        ),
        ("viewer", pki.viewer(), Expect::Admin),
        ("operator", pki.operator(), Expect::Admin),
    ]
}

/// Every role against every service of a follower: Raft (a `Hello` as
/// node 1), Witness (`GetVerdict`), Admin reads (`Status`), Admin writes
/// (`Freeze`, forwarded to the leader), and the HTTP port. Each cell is
/// asserted: allowed, or refused with `PERMISSION_DENIED` (403 on HTTP)
/// and a message naming the role.
#[test]
fn each_role_reaches_only_its_services() {
    let sites = Sites::start();
    let c = Cluster::running(3, "", &sites.policy(""));
    c.wait_verdict("dc-a", 1, SETTLE);
    let leader = c.wait_for_leader(&[1, 2, 3], SETTLE);
    let follower = c.nodes.iter().find(|n| n.id != leader).expect("a follower");
    let addr = follower.addr();
    let rt = runtime();
    // role -> (raft, witness, admin read, admin write, http)
    let table: [(&str, [bool; 5]); 4] = [
        ("peer", [true, false, false, false, true]),
        ("agent", [false, true, false, false, false]),
        ("viewer", [false, false, true, false, true]),
        ("operator", [false, false, true, true, true]),
    ];
    for (role, files, expect) in holders(&c) {
        let want = table.iter().find(|(r, _)| *r == role).expect("row").1;
        let ch = rt.block_on(channel(&files, expect, &addr));
        let raft = rt.block_on(RaftClient::new(ch.clone()).hello(HelloRequest {
            cluster_name: "e2e".into(),
            node_id: 1,
            incarnation: String::new(),
            addr: String::new(),
        }));
        let witness = rt.block_on(
            WitnessClient::new(ch.clone()).get_verdict(GetVerdictRequest { allow_stale: true }),
        );
        let read = rt.block_on(AdminClient::new(ch.clone()).status(StatusRequest { local: true }));
        let write = rt.block_on(AdminClient::new(ch.clone()).freeze(FreezeRequest {
            reason: "security test".into(),
            operator: "mallory".into(),
            ..FreezeRequest::default()
        }));
        let calls = [
            ("Raft", outcome(raft)),
            ("Witness", outcome(witness)),
            ("Admin read", outcome(read)),
            ("Admin write", outcome(write)),
        ];
        for ((service, got), allowed) in calls.into_iter().zip(want) {
            match (got, allowed) {
                (Ok(()), true) => {}
                (Err((Code::PermissionDenied, message)), false) => assert!(
                    message.contains(role) || message.contains("may only read"),
                    "{role} on {service}: the refusal names the role: {message}"
                ),
                (got, allowed) => {
                    panic!("{role} on {service}: expected allowed = {allowed}, got {got:?}")
                }
            }
        }
        if want[3] {
            let out = c.ctl(&["unfreeze", "--reason", "security test done"]);
            assert!(out.status.success(), "unfreeze: {}", text(&out));
        }
        let http = Pki::https_get(
            &files,
            &format!("127.0.0.1:{}", follower.http),
            "/status.json",
        )
        .map(|(code, _)| code);
        assert_eq!(
            http,
            Some(if want[4] { 200 } else { 403 }),
            "{role} on the HTTP port"
        );
    }
    // The freeze is recorded under the certificate's operator, whatever
    // the request body claimed.
    let frozen = c
        .history()
        .into_iter()
        .rev()
        .find(|r| r.to_string().contains("security test\""))
        .expect("the freeze in history");
    let by = frozen.to_string();
    assert!(
        by.contains(jepsen::lab::pki::OPERATOR) && !by.contains("mallory"),
        "{frozen}"
    );
}

/// A TLS client with `chain`/`key` (or none) that trusts the cluster CA:
/// does the witness at `addr` answer an HTTP request over it?
fn handshake_answers(ca: &Path, client: Option<(&Path, &Path)>, addr: &str) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use std::io::{Read, Write};
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("ca") {
        roots.add(cert.expect("ca cert")).expect("root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let mut config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .expect("cert")
                    .map(|c| c.expect("cert"))
                    .collect(),
                PrivateKeyDer::from_pem_file(key).expect("key"),
            )
            .expect("client auth"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let tcp = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    write!(tls, "GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").map_err(|e| e.to_string())?;
    let mut reply = Vec::new();
    match tls.read_to_end(&mut reply) {
        Ok(_) if reply.starts_with(b"HTTP/1.") => Ok(()),
        Ok(_) => Err("no reply".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// No certificate, a certificate of another CA (for the same cluster name),
/// an expired one, and a plaintext client: none gets an answer from either
/// port, and `witnessctl` says which of its certificate's problems it is.
/// The same client with a valid certificate does get one (the control).
#[test]
fn clients_without_a_valid_certificate_are_refused_at_the_handshake() {
    let sites = Sites::start();
    let c = Cluster::running(3, "", &sites.policy(""));
    let pki = c.pki();
    let http = format!("127.0.0.1:{}", c.spec(1).http);
    let grpc = c.spec(1).addr();

    let viewer = pki.viewer();
    assert_eq!(
        handshake_answers(&viewer.ca, Some((&viewer.cert, &viewer.key)), &http),
        Ok(()),
        "the control: a valid viewer certificate is answered"
    );
    let none = handshake_answers(&viewer.ca, None, &http);
    assert!(none.is_err(), "no certificate: {none:?}");

    let foreign_dir = tempfile::tempdir().expect("tempdir");
    let foreign = Pki::new(foreign_dir.path(), "e2e").viewer();
    let other = handshake_answers(&viewer.ca, Some((&foreign.cert, &foreign.key)), &http);
    assert!(other.is_err(), "another CA: {other:?}");

    let expired_dir = tempfile::tempdir().expect("tempdir");
    let now = witness::trust::unix_now();
    let expired = pki.issue_at(
        Principal::Viewer {
            name: "lapsed".into(),
        },
        expired_dir.path(),
        now - 10 * 86_400,
        1,
    );
    let lapsed = handshake_answers(&viewer.ca, Some((&expired.cert, &expired.key)), &http);
    assert!(lapsed.is_err(), "an expired certificate: {lapsed:?}");
    let lapsed_grpc = handshake_answers(&viewer.ca, Some((&expired.cert, &expired.key)), &grpc);
    assert!(
        lapsed_grpc.is_err(),
        "an expired certificate: {lapsed_grpc:?}"
    );

    // witnessctl explains each case before it sends anything.
    let out = c.ctl_as(&expired, &grpc, &["status"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("xpired"), "{}", text(&out));
    let mixed = TlsFiles {
        ca: viewer.ca.clone(),
        ..foreign.clone()
    };
    let out = c.ctl_as(&mixed, &grpc, &["status"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("not usable with tls.ca"),
        "{}",
        text(&out)
    );
    // A client that trusts the foreign CA reaches the witness but is
    // refused at the handshake (and refuses the witness's certificate).
    let out = c.ctl_as(&foreign, &grpc, &["status"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("TLS handshake"), "{}", text(&out));
    // Plaintext against a TLS cluster.
    let out = std::process::Command::new(witnessctl_bin())
        .args([
            "--endpoints",
            &grpc,
            "--insecure",
            "--timeout",
            "3s",
            "status",
        ])
        .env_remove("WITNESS_CA")
        .env_remove("WITNESS_CERT")
        .env_remove("WITNESS_KEY")
        .output()
        .expect("run witnessctl");
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    // And without any certificate or --insecure, witnessctl says what to do.
    let out = std::process::Command::new(witnessctl_bin())
        .args(["--endpoints", &grpc, "status"])
        .env_remove("WITNESS_CA")
        .env_remove("WITNESS_CERT")
        .env_remove("WITNESS_KEY")
        .env_remove("WITNESS_INSECURE")
        .output()
        .expect("run witnessctl");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("witness certs"), "{}", text(&out));
}

/// The Raft envelope of a message from `from` to `to`, as the cluster's
/// status names their incarnations.
fn envelope(status: &Value, from: u64, to: u64, payload: Vec<u8>) -> RaftRequest {
    let incarnation = |id: u64| {
        status["members"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["id"] == id))
            .and_then(|m| m["incarnation"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    RaftRequest {
        cluster_id: status["cluster_id"].as_str().unwrap_or_default().into(),
        from_id: from,
        from_incarnation: incarnation(from),
        to_id: to,
        to_incarnation: incarnation(to),
        payload,
    }
}

/// Forged `AppendEntries`, `Vote` and `Propose` from an operator's and an
/// agent's certificate, and from a peer certificate that claims another
/// node's id, are refused before Raft decodes them: the verdict and the
/// history stay as they were. The same `Vote` from node 1's own
/// certificate reaches Raft and is answered by it.
#[test]
fn forged_raft_messages_never_reach_the_state_machine() {
    let sites = Sites::start();
    let c = Cluster::running(3, "", &sites.policy(""));
    c.wait_verdict("dc-a", 1, SETTLE);
    let status = c.status().expect("status");
    let history_before = c.history().len();
    let rt = runtime();
    let pki = c.pki();
    // A stale vote (term 0) for node 1: harmless, but a real Raft message.
    let vote = serde_json::to_vec(&json!({
        "vote": {"leader_id": {"term": 0, "node_id": 1}, "committed": false},
        "last_log_id": null
    }))
    .expect("vote json");
    // An AppendEntries from "node 1" at a huge term with an empty batch.
    let append = serde_json::to_vec(&json!({
        "vote": {"leader_id": {"term": 1_000_000, "node_id": 1}, "committed": true},
        "prev_log_id": null, "entries": [], "leader_commit": null
    }))
    .expect("append json");
    let target = c.spec(2).addr();
    let forgers: Vec<(&str, TlsFiles, Expect)> = vec![
        ("operator", pki.operator(), Expect::Admin),
        (
            "agent",
            pki.agent("dc-a", "mbox-a"),
            Expect::Agent {
                site: "dc-a".into(),
                name: "mbox-a".into(),
            },
        ),
        (
            "peer 3 as node 1",
            pki.peer(3),
            Expect::Peer {
                cluster: "e2e".into(),
                id: 3,
            },
        ),
    ];
    for (who, files, expect) in forgers {
        let mut raft = RaftClient::new(rt.block_on(channel(&files, expect, &target)));
        for (rpc, result) in [
            (
                "AppendEntries",
                rt.block_on(raft.append_entries(envelope(&status, 1, 2, append.clone()))),
            ),
            (
                "Vote",
                rt.block_on(raft.vote(envelope(&status, 1, 2, vote.clone()))),
            ),
            (
                "Propose",
                rt.block_on(raft.propose(envelope(&status, 1, 2, b"{}".to_vec()))),
            ),
        ] {
            let code = result.as_ref().map_err(|s| s.code()).err();
            assert_eq!(
                code,
                Some(Code::PermissionDenied),
                "{who} sending {rpc}: {result:?}"
            );
        }
    }
    // The control: node 1's own certificate gets its vote to Raft, which
    // answers (with a vote response or Raft's own refusal — not a denial).
    let own = pki.peer(1);
    let mut raft = RaftClient::new(rt.block_on(channel(
        &own,
        Expect::Peer {
            cluster: "e2e".into(),
            id: 1,
        },
        &target,
    )));
    let reply = rt
        .block_on(raft.vote(envelope(&status, 1, 2, vote)))
        .expect("node 1's own vote is answered")
        .into_inner();
    match reply.result {
        Some(raft_reply::Result::Payload(_)) => {}
        other => panic!("Raft did not answer node 1's vote: {other:?}"),
    }
    // A member's own certificate and envelope, but a message speaking for
    // another node's leadership (an AppendEntries whose vote is node 3's):
    // refused, so a member cannot act as another member's leader.
    let as_node_3 = serde_json::to_vec(&json!({
        "vote": {"leader_id": {"term": 1_000_000, "node_id": 3}, "committed": true},
        "prev_log_id": null, "entries": [], "leader_commit": null
    }))
    .expect("append json");
    let refused = rt
        .block_on(raft.append_entries(envelope(&status, 1, 2, as_node_3)))
        .expect_err("node 1 speaking for node 3 is refused");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("node 3"), "{refused:?}");

    let after = c.status().expect("status");
    assert_eq!(after["active_site"], status["active_site"]);
    assert_eq!(after["epoch"], status["epoch"]);
    assert_eq!(c.history().len(), history_before, "no decision was added");
}

/// An agent's certificate decides who it is: renewing as another site or
/// another agent is refused (and changes no table), renewing as itself is
/// answered.
#[test]
fn an_agent_certificate_renews_only_as_its_own_agent_and_site() {
    let sites = Sites::start();
    let c = Cluster::running(3, "", &sites.policy(""));
    c.wait_verdict("dc-a", 1, SETTLE);
    let rt = runtime();
    let files = c.pki().agent("dc-a", "mbox-a");
    let expect = Expect::Agent {
        site: "dc-a".into(),
        name: "mbox-a".into(),
    };
    let mut client = WitnessClient::new(rt.block_on(channel(&files, expect, &c.spec(1).addr())));
    let renew = |agent: &str, site: &str| RenewLeaseRequest {
        agent: agent.into(),
        site: site.into(),
        role: "mailstore".into(),
        epoch: 1,
        nonce: 1,
        state: "serving".into(),
        service_healthy: true,
        ..RenewLeaseRequest::default()
    };
    for (agent, site) in [("mbox-a", "dc-b"), ("mbox-b", "dc-a"), ("mbox-b", "dc-b")] {
        let got = rt.block_on(client.renew_lease(renew(agent, site)));
        let status = got.expect_err("impersonation is refused");
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "{agent}@{site}: {status:?}"
        );
        assert!(
            status.message().contains("agent dc-a/mbox-a"),
            "{}",
            status.message()
        );
    }
    // Itself, explicitly and with the fields left for the certificate.
    for (agent, site) in [("mbox-a", "dc-a"), ("", "")] {
        let reply = rt
            .block_on(client.renew_lease(renew(agent, site)))
            .expect("its own renewal is answered")
            .into_inner();
        assert!(reply.granted, "{reply:?}");
    }
    let status = c.status().expect("status");
    let agents: Vec<String> = status["agents"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|a| format!("{}@{}", a["agent"], a["site"]))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(agents, vec!["\"mbox-a\"@\"dc-a\"".to_string()], "{status}");

    // An agent of dc-b that happens to have the same name is another agent:
    // its renewals get their own row and never overwrite dc-a's.
    let files = c.pki().agent("dc-b", "mbox-a");
    let expect = Expect::Agent {
        site: "dc-b".into(),
        name: "mbox-a".into(),
    };
    let mut twin = WitnessClient::new(rt.block_on(channel(&files, expect, &c.spec(1).addr())));
    rt.block_on(twin.renew_lease(renew("", "")))
        .expect("its own renewal is answered");
    let status = c.status().expect("status");
    let mut agents: Vec<String> = status["agents"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|a| format!("{}@{}", a["agent"], a["site"]))
                .collect()
        })
        .unwrap_or_default();
    agents.sort();
    assert_eq!(
        agents,
        vec![
            "\"mbox-a\"@\"dc-a\"".to_string(),
            "\"mbox-a\"@\"dc-b\"".to_string()
        ],
        "{status}"
    );
}

/// Revocation reaches callers a follower relays and streams already open:
/// with `operator/…` and an agent on the leader's deny list only (the
/// followers' lists are stale), a write through a follower is refused by
/// the leader, while the follower itself still answers the same operator's
/// read; the agent's open verdict watch on the leader ends.
#[test]
fn a_revoked_caller_is_refused_by_the_leader_and_its_open_watch_ends() {
    let sites = Sites::start();
    let mut c = Cluster::new(3);
    for id in 1..=3 {
        let deny = c.dir.path().join(format!("deny-{id}.txt"));
        std::fs::write(&deny, "# nobody yet\n").expect("deny file");
        let path = c.config_path(id);
        let text = std::fs::read_to_string(&path).expect("config");
        let text = text.replacen(
            "\n[tls]\n",
            &format!("\n[tls]\ndeny = \"{}\"\n", deny.display()),
            1,
        );
        std::fs::write(&path, text).expect("config");
    }
    c.set_policy(&sites.policy(""));
    let out = c.init(1);
    assert!(out.status.success(), "init: {}", text(&out));
    for id in 1..=3 {
        c.start(id);
    }
    c.wait_ready(&[1, 2, 3], SETTLE);
    c.wait_verdict("dc-a", 1, SETTLE);
    let leader = c.wait_for_leader(&[1, 2, 3], SETTLE);
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let rt = runtime();
    let files = c.pki().agent("dc-a", "mbox-a");
    let expect = Expect::Agent {
        site: "dc-a".into(),
        name: "mbox-a".into(),
    };
    let mut agent =
        WitnessClient::new(rt.block_on(channel(&files, expect, &c.spec(leader).addr())));
    let mut watch = rt
        .block_on(agent.watch_verdict(GetVerdictRequest { allow_stale: true }))
        .expect("the agent's watch is accepted")
        .into_inner();
    rt.block_on(watch.message())
        .expect("a first verdict")
        .expect("the stream is open");

    std::fs::write(
        c.dir.path().join(format!("deny-{leader}.txt")),
        format!(
            "witness://e2e/operator/{}\nwitness://e2e/agent/dc-a/mbox-a\n",
            jepsen::lab::pki::OPERATOR
        ),
    )
    .expect("the leader's deny list");
    wait_until(
        witness::trust::RELOAD_POLL * 4,
        "the leader to reload its deny list",
        || {
            c.log(leader)
                .contains("TLS certificates reloaded")
                .then_some(())
        },
    );
    let out = c.ctl_at(
        &c.spec(follower).addr(),
        &["freeze", "--reason", "revoked operator"],
    );
    assert!(!out.status.success(), "{}", text(&out));
    let refusal = text(&out);
    assert!(
        refusal.contains("not trusted by the leader") && refusal.contains("deny list"),
        "{refusal}"
    );
    let out = c.ctl_at(&c.spec(follower).addr(), &["status", "--local"]);
    assert!(
        out.status.success(),
        "the follower's list is stale: {}",
        text(&out)
    );
    let out = c.ctl_as(
        &c.pki().viewer(),
        &c.endpoints(),
        &["--output", "json", "status"],
    );
    let status: Value = serde_json::from_slice(&out.stdout).expect("status json");
    assert_eq!(status["mode"], "auto", "nothing was frozen: {status}");

    // The watch ends within a recheck of the leader's reload.
    let ended = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match watch.message().await {
                    Ok(Some(_)) => continue,
                    other => return other,
                }
            }
        })
        .await
    });
    match ended {
        Ok(Err(status)) => {
            assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
            assert!(status.message().contains("deny list"), "{status:?}");
        }
        other => panic!("the revoked agent's watch did not end with a refusal: {other:?}"),
    }
}

/// A witness picks up a certificate rewritten on disk without a restart:
/// within a few reload polls it presents the new one, and the cluster keeps
/// working over it.
#[test]
fn a_certificate_rotated_on_disk_is_used_without_a_restart() {
    let sites = Sites::start();
    let c = Cluster::running(3, "", &sites.policy(""));
    c.wait_verdict("dc-a", 1, SETTLE);
    let pki = c.pki();
    let rt = runtime();
    let viewer = Trust::load(pki.viewer(), Expect::Admin).expect("viewer");
    let addr = c.spec(1).addr();
    let serial = || {
        let tls = rt
            .block_on(witness::trust::conn::connect_stream(
                &viewer,
                &addr,
                &[b"h2"],
            ))
            .expect("handshake");
        let cert = tls.get_ref().1.peer_certificates().expect("a certificate")[0].clone();
        witness::trust::pki::cert_info(&cert)
            .expect("readable")
            .serial
    };
    let before = serial();
    let files = pki.peer(1);
    let dir = files.cert.parent().expect("dir").to_path_buf();
    pki.issue_at(
        Principal::Peer { id: 1 },
        &dir,
        witness::trust::unix_now(),
        30,
    );
    let after = wait_until(
        witness::trust::RELOAD_POLL * 4,
        "node 1 to present its new certificate",
        || {
            let now = serial();
            (now != before).then_some(now)
        },
    );
    assert_ne!(after, before);
    assert!(
        c.log(1).contains("TLS certificates reloaded"),
        "the reload is logged"
    );
    let out = c.ctl(&["status"]);
    assert!(out.status.success(), "{}", text(&out));
}

/// Every string field of every request at its limit + 1 is refused with
/// `INVALID_ARGUMENT` naming the field and the limit, and changes nothing:
/// no agent row, no history record. Unknown sites are refused before any
/// table; a burst of leadership transfers is cut off per caller.
#[test]
fn every_request_field_is_bounded() {
    let sites = Sites::start();
    let c = Cluster::running(3, "", &sites.policy(""));
    c.wait_verdict("dc-a", 1, SETTLE);
    let history_before = c.history().len();
    let rt = runtime();
    let pki = c.pki();
    let addr = c.spec(1).addr();
    let agent_ch = rt.block_on(channel(
        &pki.agent("dc-a", "mbox-a"),
        Expect::Agent {
            site: "dc-a".into(),
            name: "mbox-a".into(),
        },
        &addr,
    ));
    let operator_ch = rt.block_on(channel(&pki.operator(), Expect::Admin, &addr));
    let long = |n: usize| "a".repeat(n + 1);
    let name = long(63);
    let reason = long(1024);

    let mut witness = WitnessClient::new(agent_ch);
    let renew = RenewLeaseRequest {
        agent: "mbox-a".into(),
        site: "dc-a".into(),
        role: "mailstore".into(),
        epoch: 1,
        nonce: 1,
        state: "serving".into(),
        ..RenewLeaseRequest::default()
    };
    let claim = ClaimDirectiveRequest {
        agent: "mbox-a".into(),
        site: "dc-a".into(),
        role: "mailstore".into(),
        epoch: 1,
        name: "promote".into(),
    };
    let report = ReportDirectiveRequest {
        agent: "mbox-a".into(),
        epoch: 1,
        name: "promote".into(),
        generation: 1,
        ..ReportDirectiveRequest::default()
    };
    let witness_cases: Vec<(&str, Result<(), tonic::Status>)> = vec![
        ("RenewLease.agent", {
            let r = RenewLeaseRequest {
                agent: name.clone(),
                ..renew.clone()
            };
            rt.block_on(witness.renew_lease(r)).map(|_| ())
        }),
        ("RenewLease.site", {
            let r = RenewLeaseRequest {
                site: name.clone(),
                ..renew.clone()
            };
            rt.block_on(witness.renew_lease(r)).map(|_| ())
        }),
        ("RenewLease.role", {
            let r = RenewLeaseRequest {
                role: name.clone(),
                ..renew.clone()
            };
            rt.block_on(witness.renew_lease(r)).map(|_| ())
        }),
        ("RenewLease.state", {
            let r = RenewLeaseRequest {
                state: long(32),
                ..renew.clone()
            };
            rt.block_on(witness.renew_lease(r)).map(|_| ())
        }),
        ("ClaimDirective.agent", {
            let r = ClaimDirectiveRequest {
                agent: name.clone(),
                ..claim.clone()
            };
            rt.block_on(witness.claim_directive(r)).map(|_| ())
        }),
        ("ClaimDirective.site", {
            let r = ClaimDirectiveRequest {
                site: name.clone(),
                ..claim.clone()
            };
            rt.block_on(witness.claim_directive(r)).map(|_| ())
        }),
        ("ClaimDirective.role", {
            let r = ClaimDirectiveRequest {
                role: name.clone(),
                ..claim.clone()
            };
            rt.block_on(witness.claim_directive(r)).map(|_| ())
        }),
        ("ClaimDirective.name", {
            let r = ClaimDirectiveRequest {
                name: name.clone(),
                ..claim.clone()
            };
            rt.block_on(witness.claim_directive(r)).map(|_| ())
        }),
        ("RenewClaim.agent", {
            let r = RenewClaimRequest {
                agent: name.clone(),
                epoch: 1,
                name: "promote".into(),
                generation: 1,
            };
            rt.block_on(witness.renew_claim(r)).map(|_| ())
        }),
        ("RenewClaim.name", {
            let r = RenewClaimRequest {
                agent: "mbox-a".into(),
                epoch: 1,
                name: name.clone(),
                generation: 1,
            };
            rt.block_on(witness.renew_claim(r)).map(|_| ())
        }),
        ("ReportDirective.agent", {
            let r = ReportDirectiveRequest {
                agent: name.clone(),
                ..report.clone()
            };
            rt.block_on(witness.report_directive(r)).map(|_| ())
        }),
        ("ReportDirective.name", {
            let r = ReportDirectiveRequest {
                name: name.clone(),
                ..report.clone()
            };
            rt.block_on(witness.report_directive(r)).map(|_| ())
        }),
        ("ReportDirective.error", {
            let r = ReportDirectiveRequest {
                error: reason.clone(),
                ..report.clone()
            };
            rt.block_on(witness.report_directive(r)).map(|_| ())
        }),
        ("ReportDirective.output_tail", {
            let r = ReportDirectiveRequest {
                output_tail: long(64 * 1024),
                ..report.clone()
            };
            rt.block_on(witness.report_directive(r)).map(|_| ())
        }),
    ];

    let mut admin = AdminClient::new(operator_ch);
    let policy = std::fs::read_to_string(c.policy_path()).expect("policy");
    let admin_cases: Vec<(&str, Result<(), tonic::Status>)> = vec![
        ("Freeze.reason", {
            let r = FreezeRequest {
                reason: reason.clone(),
                ..FreezeRequest::default()
            };
            rt.block_on(admin.freeze(r)).map(|_| ())
        }),
        ("Freeze.operator", {
            let r = FreezeRequest {
                reason: "ok".into(),
                operator: name.clone(),
                ..FreezeRequest::default()
            };
            rt.block_on(admin.freeze(r)).map(|_| ())
        }),
        ("Unfreeze.reason", {
            let r = UnfreezeRequest {
                reason: reason.clone(),
                ..UnfreezeRequest::default()
            };
            rt.block_on(admin.unfreeze(r)).map(|_| ())
        }),
        ("Unfreeze.operator", {
            let r = UnfreezeRequest {
                reason: "ok".into(),
                operator: name.clone(),
            };
            rt.block_on(admin.unfreeze(r)).map(|_| ())
        }),
        ("Failover.to", {
            let r = FailoverRequest {
                to: name.clone(),
                reason: "ok".into(),
                ..FailoverRequest::default()
            };
            rt.block_on(admin.failover(r)).map(|_| ())
        }),
        ("Failover.reason", {
            let r = FailoverRequest {
                to: "dc-b".into(),
                reason: reason.clone(),
                ..FailoverRequest::default()
            };
            rt.block_on(admin.failover(r)).map(|_| ())
        }),
        ("Failover.operator", {
            let r = FailoverRequest {
                to: "dc-b".into(),
                reason: "ok".into(),
                operator: name.clone(),
                ..FailoverRequest::default()
            };
            rt.block_on(admin.failover(r)).map(|_| ())
        }),
        ("PolicyApply.toml", {
            let r = PolicyApplyRequest {
                toml: long(1024 * 1024),
                reason: "ok".into(),
                ..PolicyApplyRequest::default()
            };
            rt.block_on(admin.policy_apply(r)).map(|_| ())
        }),
        ("PolicyApply.reason", {
            let r = PolicyApplyRequest {
                toml: policy.clone(),
                reason: reason.clone(),
                ..PolicyApplyRequest::default()
            };
            rt.block_on(admin.policy_apply(r)).map(|_| ())
        }),
        ("PolicyApply.operator", {
            let r = PolicyApplyRequest {
                toml: policy.clone(),
                reason: "ok".into(),
                operator: name.clone(),
                ..PolicyApplyRequest::default()
            };
            rt.block_on(admin.policy_apply(r)).map(|_| ())
        }),
        ("RetryDirective.id", {
            let r = RetryDirectiveRequest {
                id: long(84),
                reason: "ok".into(),
                ..RetryDirectiveRequest::default()
            };
            rt.block_on(admin.retry_directive(r)).map(|_| ())
        }),
        ("RetryDirective.reason", {
            let r = RetryDirectiveRequest {
                id: "1/promote".into(),
                reason: reason.clone(),
                ..RetryDirectiveRequest::default()
            };
            rt.block_on(admin.retry_directive(r)).map(|_| ())
        }),
        ("RetryDirective.operator", {
            let r = RetryDirectiveRequest {
                id: "1/promote".into(),
                reason: "ok".into(),
                operator: name.clone(),
            };
            rt.block_on(admin.retry_directive(r)).map(|_| ())
        }),
        ("AddMember.name", {
            let r = AddMemberRequest {
                id: 9,
                name: name.clone(),
                addr: "127.0.0.1:1".into(),
                site: "dc-c".into(),
                learner_only: true,
            };
            rt.block_on(admin.add_member(r)).map(|_| ())
        }),
        ("AddMember.site", {
            let r = AddMemberRequest {
                id: 9,
                name: "w9".into(),
                addr: "127.0.0.1:1".into(),
                site: name.clone(),
                learner_only: true,
            };
            rt.block_on(admin.add_member(r)).map(|_| ())
        }),
        ("AddMember.addr", {
            let r = AddMemberRequest {
                id: 9,
                name: "w9".into(),
                addr: format!("{}:1", long(258)),
                site: "dc-c".into(),
                learner_only: true,
            };
            rt.block_on(admin.add_member(r)).map(|_| ())
        }),
    ];
    for (field, result) in witness_cases.into_iter().chain(admin_cases) {
        let status = result.expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        let short = field.rsplit('.').next().unwrap_or(field);
        assert!(
            status.message().contains(short) && status.message().contains("limit"),
            "{field}: the refusal names the field and the limit: {}",
            status.message()
        );
        assert!(
            status.message().len() < 512,
            "{field}: the refusal does not echo the input"
        );
    }

    // An agent of a site the policy does not know never reaches the table.
    let stranger = rt.block_on(channel(
        &pki.agent("dc-x", "ghost"),
        Expect::Agent {
            site: "dc-x".into(),
            name: "ghost".into(),
        },
        &addr,
    ));
    let got = rt.block_on(WitnessClient::new(stranger).renew_lease(RenewLeaseRequest {
        role: "mailstore".into(),
        epoch: 1,
        nonce: 1,
        state: "serving".into(),
        ..RenewLeaseRequest::default()
    }));
    let status = got.expect_err("an unknown site is refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .contains("not a site of the cluster policy"),
        "{status:?}"
    );

    assert_eq!(c.history().len(), history_before, "nothing was recorded");

    // Leadership transfers: a burst, then refused for this caller.
    let leader = c.wait_for_leader(&[1, 2, 3], SETTLE);
    let other = [1, 2, 3]
        .into_iter()
        .find(|id| *id != leader)
        .expect("another");
    let mut refused = None;
    for _ in 0..5 {
        let got = rt.block_on(admin.transfer_leader(TransferLeaderRequest { to: other }));
        if let Err(status) = got
            && status.code() == Code::ResourceExhausted
        {
            refused = Some(status);
            break;
        }
    }
    let status = refused.expect("a burst of transfers is cut off");
    assert!(
        status.message().contains("leadership transfers"),
        "{status:?}"
    );

    let status = c.status().expect("status");
    let agents = status["agents"].as_array().cloned().unwrap_or_default();
    assert!(
        agents
            .iter()
            .all(|a| a["agent"] != "ghost" && a["agent"].as_str().is_some_and(|n| n.len() <= 63)),
        "{agents:?}"
    );
}

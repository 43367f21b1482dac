//! The Raft cluster over real processes: election, crash recovery,
//! membership changes, identity checks and readiness.

use std::time::Duration;

use serde_json::Value;
use witness_e2e::*;

fn history_len(c: &Cluster) -> usize {
    let out = c.ctl(&["--output", "json", "history", "--limit", "0"]);
    assert!(out.status.success(), "history: {}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("history json");
    v.as_array().expect("array").len()
}

/// Apply the policy again with a changed margin so each call commits a new
/// entry; returns the committed version.
fn commit_policy_change(c: &Cluster, margin_ms: u64) -> u64 {
    let file = c.dir.path().join(format!("policy-{margin_ms}.toml"));
    std::fs::write(
        &file,
        format!(
            "[lease]\nrenew_interval = \"400ms\"\nlease_ttl = \"3s\"\nmargin = \"{margin_ms}ms\"\n"
        ),
    )
    .expect("write policy");
    let out = c.ctl(&[
        "--output",
        "json",
        "policy",
        "apply",
        file.to_str().expect("utf8"),
        "--reason",
        "test",
    ]);
    assert!(out.status.success(), "policy apply: {}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["applied"], true, "{v}");
    v["version"].as_u64().expect("version")
}

fn members(c: &Cluster) -> Vec<Value> {
    let out = c.ctl(&["--output", "json", "members", "list"]);
    assert!(out.status.success(), "members list: {}", text(&out));
    serde_json::from_slice::<Value>(&out.stdout)
        .expect("json")
        .as_array()
        .expect("array")
        .clone()
}

/// Three nodes started from `witness init` elect exactly one leader, every
/// node becomes ready, and `status --output json` carries the documented
/// fields.
#[test]
fn three_nodes_elect_one_leader_and_become_ready() {
    let c = Cluster::start_all(3);
    let leader = c.wait_for_leader(&[1, 2, 3], SETTLE);
    c.wait_ready(&[1, 2, 3], SETTLE);
    let leaders: Vec<u64> = (1..=3)
        .filter(|id| c.local_status(*id).is_some_and(|s| s["role"] == "leader"))
        .collect();
    assert_eq!(leaders, vec![leader], "exactly one node says it leads");

    let out = c.ctl(&["--output", "json", "status"]);
    assert!(out.status.success(), "{}", text(&out));
    let s: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(s["leader_id"], leader);
    assert!(s["term"].as_u64().is_some_and(|t| t >= 1));
    assert!(s["commit_index"].as_u64().is_some_and(|i| i >= 1));
    let ms = s["members"].as_array().expect("members");
    assert_eq!(ms.len(), 3);
    for m in ms {
        for f in ["id", "name", "addr", "site", "voter", "reachable"] {
            assert!(m.get(f).is_some(), "member lacks {f}: {m}");
        }
        assert_eq!(m["voter"], true);
    }
    // Every member answers the leader: reachable, and incarnations pinned on first contact.
    wait_until(SETTLE, "all members reachable and pinned", || {
        let out = c.ctl(&["--output", "json", "status"]);
        let s: Value = serde_json::from_slice(&out.stdout).ok()?;
        s["members"]
            .as_array()?
            .iter()
            .all(|m| m["reachable"] == true && m["incarnation"].is_string())
            .then_some(())
    });
    for n in &c.nodes {
        let (code, body) = http_get(n.http, "/readyz").expect("readyz answers");
        assert_eq!(code, 200, "node {} /readyz: {body}", n.id);
        assert_eq!(http_get(n.http, "/healthz").map(|r| r.0), Some(200));
    }
    let table = c.ctl(&["status"]);
    assert!(
        String::from_utf8_lossy(&table.stdout).contains("leader:  node"),
        "{}",
        text(&table)
    );
}

/// SIGKILL of the leader: the other two elect a new leader, and every entry
/// acknowledged before the crash is still there.
#[test]
fn leader_killed_new_leader_elected_and_no_committed_entry_lost() {
    let mut c = Cluster::start_all(3);
    c.wait_ready(&[1, 2, 3], SETTLE);
    for margin in [900, 800, 700] {
        commit_policy_change(&c, margin);
    }
    let before = history_len(&c);
    assert_eq!(before, 4, "bootstrap policy plus three changes");
    let old = c.wait_for_leader(&[1, 2, 3], SETTLE);
    c.kill(old);
    let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != old).collect();
    let new = c.wait_for_leader(&rest, SETTLE);
    assert_ne!(new, old);
    assert_eq!(
        history_len(&c),
        before,
        "acknowledged entries survive the leader's crash"
    );
    let v = commit_policy_change(&c, 600);
    assert_eq!(v, 5, "the new leader commits on top of the old history");
    // The old leader comes back as a follower and catches up.
    c.start(old);
    wait_until(SETTLE, "old leader to catch up", || {
        let s = c.local_status(old)?;
        (s["role"] == "follower" && s["policy_version"] == 5).then_some(())
    });
}

/// All three stopped at once (SIGKILL) and restarted: same membership, same
/// incarnations, same log, and a leader again.
#[test]
fn full_restart_keeps_membership_and_log() {
    let mut c = Cluster::start_all(3);
    c.wait_ready(&[1, 2, 3], SETTLE);
    commit_policy_change(&c, 900);
    wait_until(SETTLE, "incarnations pinned", || {
        members(&c)
            .iter()
            .all(|m| m["incarnation"].is_string())
            .then_some(())
    });
    let before_members = members(&c);
    let before_history = history_len(&c);
    for id in 1..=3 {
        c.kill(id);
    }
    for id in 1..=3 {
        c.start(id);
    }
    c.wait_for_leader(&[1, 2, 3], SETTLE);
    c.wait_ready(&[1, 2, 3], SETTLE);
    let strip = |ms: Vec<Value>| -> Vec<(Value, Value, Value)> {
        ms.into_iter()
            .map(|m| (m["id"].clone(), m["addr"].clone(), m["incarnation"].clone()))
            .collect()
    };
    assert_eq!(strip(members(&c)), strip(before_members));
    assert_eq!(history_len(&c), before_history);
}

/// A fourth node joins as a learner, is promoted to voter, and is removed;
/// the cluster keeps a leader throughout.
#[test]
fn fourth_node_added_as_learner_then_voter_then_removed() {
    let mut c = Cluster::start_all(3);
    c.wait_ready(&[1, 2, 3], SETTLE);
    let spec = c.new_spec(4);
    c.push_node(spec.clone());
    c.start(4);
    let addr = spec.addr();
    // Endpoints that start at the joiner, as during its recovery: its
    // answers are not the cluster's, so witnessctl walks on — for a read
    // and for a change alike.
    let joiner = wait_until(SETTLE, "node 4 to answer as a joiner", || {
        c.local_status(4).filter(|s| s["role"] == "joiner")
    });
    assert_eq!(joiner["ready"], false, "{joiner}");
    let joiner_first = format!("{addr},{}", c.endpoints());
    let out = c.ctl_at(&joiner_first, &["--output", "json", "status"]);
    assert!(out.status.success(), "status: {}", text(&out));
    let s: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_ne!(
        s["answered_by"], 4,
        "a joiner's view is not the cluster's: {s}"
    );
    let out = c.ctl_at(
        &joiner_first,
        &[
            "--timeout",
            "30s",
            "members",
            "add",
            "--id",
            "4",
            "--name",
            "w4",
            "--addr",
            &addr,
            "--site",
            "dc-a",
            "--learner",
        ],
    );
    assert!(out.status.success(), "add learner: {}", text(&out));
    let m4 = |c: &Cluster| members(c).into_iter().find(|m| m["id"] == 4);
    let m = m4(&c).expect("node 4 listed");
    assert_eq!(m["voter"], false, "a learner first: {m}");
    wait_until(SETTLE, "node 4 to apply the policy", || {
        c.local_status(4)
            .filter(|s| s["policy_version"] == 1)
            .map(|_| ())
    });

    let out = c.ctl(&["--timeout", "30s", "members", "promote", "4"]);
    assert!(out.status.success(), "promote: {}", text(&out));
    assert_eq!(m4(&c).expect("node 4 listed")["voter"], true);
    let out = c.ctl(&["--output", "json", "status"]);
    let s: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(s["members"].as_array().map(Vec::len), Some(4));

    // Adding an existing id is refused with a hint, and exits 1.
    let out = c.ctl(&[
        "members", "add", "--id", "4", "--name", "w4", "--addr", &addr, "--site", "dc-a",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already a member"),
        "{}",
        text(&out)
    );

    let out = c.ctl(&["--timeout", "30s", "members", "remove", "4"]);
    assert!(out.status.success(), "remove: {}", text(&out));
    assert!(m4(&c).is_none(), "node 4 gone");
    c.wait_for_leader(&[1, 2, 3], SETTLE);
    commit_policy_change(&c, 900);
}

/// With snapshots every few entries, the log is compacted and a node added
/// later catches up by receiving a snapshot over the network; a restarted
/// node recovers from its own snapshot plus log.
#[test]
fn compacted_log_reaches_a_new_node_by_snapshot() {
    let raft = "[raft]\nsnapshot_after_logs = 4\nkeep_logs_after_snapshot = 1\n";
    let mut c = Cluster::start_all_with(3, raft);
    c.wait_ready(&[1, 2, 3], SETTLE);
    for margin in (500..=900).step_by(50) {
        commit_policy_change(&c, margin);
    }
    let version = 10;
    let spec = c.new_spec(4);
    c.push_node(spec.clone());
    c.start(4);
    let out = c.ctl(&[
        "--timeout",
        "30s",
        "members",
        "add",
        "--id",
        "4",
        "--name",
        "w4",
        "--addr",
        &spec.addr(),
        "--site",
        "dc-a",
    ]);
    assert!(out.status.success(), "add: {}", text(&out));
    wait_until(SETTLE, "node 4 to hold the latest policy", || {
        c.local_status(4)
            .filter(|s| s["policy_version"] == version)
            .map(|_| ())
    });
    assert_eq!(history_len(&c), 10, "history intact across compaction");
    c.kill(2);
    c.start(2);
    wait_until(
        SETTLE,
        "restarted node 2 to recover from snapshot and log",
        || {
            c.local_status(2)
                .filter(|s| s["policy_version"] == version && s["ready"] == true)
                .map(|_| ())
        },
    );
}

/// A data dir made for another cluster, or for another node id, is refused
/// at start with an error naming the path; nothing is reinitialised.
#[test]
fn data_dir_of_another_cluster_or_node_is_refused() {
    let c = Cluster::new(3);
    let out = c.init(1);
    assert!(out.status.success(), "{}", text(&out));
    // Same node, but its config now names another cluster.
    let cfg = std::fs::read_to_string(c.config_path(1)).expect("config");
    let other = c.dir.path().join("other-cluster.toml");
    std::fs::write(
        &other,
        cfg.replace("cluster = \"e2e\"", "cluster = \"prod\""),
    )
    .expect("write");
    let out = std::process::Command::new(witness_bin())
        .args(["run", "--config"])
        .arg(&other)
        .output()
        .expect("run");
    assert!(!out.status.success(), "must refuse: {}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    let dir = c.data_dir(1).display().to_string();
    assert!(err.contains(&dir), "error names the data dir: {err}");
    assert!(
        err.contains("e2e") && err.contains("prod"),
        "error names both clusters: {err}"
    );

    // Node 2's config pointed at node 1's data dir.
    let cfg2 = std::fs::read_to_string(c.config_path(2)).expect("config");
    let wrong = c.dir.path().join("wrong-node.toml");
    std::fs::write(
        &wrong,
        cfg2.replace(&c.data_dir(2).display().to_string(), &dir),
    )
    .expect("write");
    let out = std::process::Command::new(witness_bin())
        .args(["run", "--config"])
        .arg(&wrong)
        .output()
        .expect("run");
    assert!(!out.status.success(), "must refuse: {}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&dir) && err.contains("node"),
        "error names path and node: {err}"
    );

    // init refuses an existing store.
    let out = c.init(1);
    assert!(
        !out.status.success(),
        "second init must refuse: {}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&dir),
        "{}",
        text(&out)
    );
}

/// A voter whose data dir was wiped and restarted under the same id is a new
/// incarnation: its peers refuse it and tell it how to rejoin; with the
/// third voter down it can neither help elect a leader nor confirm a read.
/// Removed and added again, it rejoins as a new incarnation.
#[test]
fn wiped_voter_is_refused_cannot_elect_or_confirm_reads_and_rejoins_when_readded() {
    let mut c = Cluster::start_all(3);
    c.wait_ready(&[1, 2, 3], SETTLE);
    wait_until(SETTLE, "incarnations pinned", || {
        members(&c)
            .iter()
            .all(|m| m["incarnation"].is_string())
            .then_some(())
    });
    // Make node 1 the leader so the wiped node and the survivor are 1 and 3.
    let leader = c.wait_for_leader(&[1, 2, 3], SETTLE);
    if leader != 1 {
        let out = c.ctl(&["--timeout", "20s", "transfer-leader", "1"]);
        assert!(out.status.success(), "transfer-leader: {}", text(&out));
    }
    c.wait_for_leader(&[1, 2, 3], SETTLE);

    c.kill(3);
    std::fs::remove_dir_all(c.data_dir(3)).expect("wipe node 3");
    c.start(3);
    c.kill(2);

    // Node 3 is told why it is not admitted and what to do.
    wait_until(SETTLE, "node 3 to log its refusal", || {
        let log = c.log(3);
        (log.contains("members remove 3") && log.contains("not admitted")).then_some(())
    });
    // No read can be confirmed and no leader emerges without node 2, over
    // several election timeouts.
    std::thread::sleep(ELECTION_TIMEOUT_MAX * 4);
    let out = c.ctl_at(&c.spec(1).addr(), &["--timeout", "5s", "policy", "show"]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "no read-index quorum with a wiped voter: {}",
        text(&out)
    );
    let s1 = c.local_status(1).expect("node 1 answers");
    let s3 = c.local_status(3).expect("node 3 answers");
    assert_ne!(s3["role"], "leader");
    assert!(
        s3["leader_id"].is_null(),
        "the wiped node follows nobody: {s3}"
    );
    if s1["role"] == "leader" {
        // A leader that lost its quorum cannot commit.
        let file = c.dir.path().join("p.toml");
        std::fs::write(&file, "[lease]\nmargin = \"900ms\"\n").expect("write");
        let out = c.ctl_at(
            &c.spec(1).addr(),
            &[
                "--timeout",
                "5s",
                "policy",
                "apply",
                file.to_str().expect("utf8"),
                "--reason",
                "x",
            ],
        );
        assert!(
            !out.status.success(),
            "no commit without quorum: {}",
            text(&out)
        );
    }

    // Node 2 back: quorum again; then the wiped node is removed and re-added.
    c.start(2);
    c.wait_for_leader(&[1, 2], SETTLE);
    // Right after the quorum returns an election may still be settling:
    // like an operator, retry while the answer is "unavailable" (exit 4).
    let survivors = format!("{},{}", c.spec(1).addr(), c.spec(2).addr());
    let retry = |args: &[&str]| {
        wait_until(SETTLE, &format!("witnessctl {args:?}"), || {
            let out = c.ctl_at(&survivors, args);
            match out.status.code() {
                Some(0) => Some(()),
                Some(4) => None,
                _ => panic!("{args:?}: {}", text(&out)),
            }
        })
    };
    retry(&["--timeout", "30s", "members", "remove", "3"]);
    let addr = c.spec(3).addr();
    retry(&[
        "--timeout",
        "30s",
        "members",
        "add",
        "--id",
        "3",
        "--name",
        "w3",
        "--addr",
        &addr,
        "--site",
        "dc-c",
    ]);
    wait_until(
        SETTLE,
        "node 3 to rejoin as a voter with a new incarnation",
        || {
            let m = members(&c).into_iter().find(|m| m["id"] == 3)?;
            (m["voter"] == true && m["reachable"] == true && m["incarnation"].is_string())
                .then_some(())
        },
    );
    c.wait_ready(&[1, 2, 3], SETTLE);
}

/// SIGTERM on the leader hands leadership over before exiting, and the
/// process exits 0.
#[test]
fn sigterm_on_leader_hands_off_and_exits_cleanly() {
    let mut c = Cluster::start_all(3);
    c.wait_ready(&[1, 2, 3], SETTLE);
    let old = c.wait_for_leader(&[1, 2, 3], SETTLE);
    assert!(
        c.terminate(old, Duration::from_secs(20)),
        "clean exit on SIGTERM"
    );
    assert!(
        c.log(old).contains("handing leadership over"),
        "{}",
        c.log(old)
    );
    let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != old).collect();
    let new = c.wait_for_leader(&rest, SETTLE);
    assert_ne!(new, old);
}

/// An endpoint that accepts connections and hangs up mid-call: a read
/// (`status`, `history`) moves on to the next endpoint and succeeds; a
/// change (`freeze`) stops there with exit code 4, because the request may
/// have been acted on, and the cluster stays unfrozen.
#[test]
fn witnessctl_reads_move_past_a_failing_endpoint_changes_do_not() {
    let mut c = Cluster::new(3);
    let out = c.init(1);
    assert!(out.status.success(), "init: {}", text(&out));
    for id in 1..=3 {
        c.start(id);
    }
    c.wait_ready(&[1, 2, 3], SETTLE);

    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let broken = listener.local_addr().expect("addr").to_string();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    listener.set_nonblocking(true).expect("nonblocking");
    // The hang-up server presents a witness's certificate of this cluster.
    let server = witness::trust::Material::load(&c.pki().peer(1), witness::trust::unix_now())
        .expect("the lab's peer certificate")
        .grpc_server
        .clone();
    let hangups = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut served = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        // Complete the TLS handshake as a witness would (so
                        // the client sends its call), read the client's
                        // preface and first frames, then hang up without
                        // answering.
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_read_timeout(Some(Duration::from_millis(300)));
                        let Ok(tls) = rustls::ServerConnection::new(server.clone()) else {
                            continue;
                        };
                        let mut conn = rustls::StreamOwned::new(tls, conn);
                        let mut buf = [0u8; 4096];
                        for _ in 0..3 {
                            let _ = std::io::Read::read(&mut conn, &mut buf);
                        }
                        drop(conn);
                        served += 1;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            served
        })
    };
    let endpoints = format!("{broken},{}", c.endpoints());

    for args in [&["status"][..], &["history"]] {
        let out = c.ctl_at(&endpoints, &[&["--timeout", "3s"][..], args].concat());
        assert!(out.status.success(), "{args:?}: {}", text(&out));
    }
    let out = c.ctl_at(
        &endpoints,
        &["--timeout", "3s", "freeze", "--reason", "maintenance"],
    );
    assert_eq!(out.status.code(), Some(4), "freeze: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&broken),
        "the error names the endpoint: {}",
        text(&out)
    );
    let out = c.ctl(&["--output", "json", "status"]);
    let status: Value = serde_json::from_slice(&out.stdout).expect("status json");
    assert_eq!(status["mode"], "auto", "{status:#}");

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let served = hangups.join().expect("listener thread");
    assert!(
        served >= 3,
        "each witnessctl call reached the broken endpoint"
    );
}

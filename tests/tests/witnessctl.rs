//! `witnessctl` as an operator uses it: every command in table and JSON
//! form against a running cluster, through a follower, against a dead
//! endpoint and against a cluster without quorum — always a clear message,
//! the documented exit code, and no wait past `--timeout`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use witness_e2e::*;

const SETTLE: Duration = Duration::from_secs(30);

/// A running three-witness cluster probing two live sites, dc-a active.
fn running() -> (Sites, Cluster) {
    let sites = Sites::start();
    let c = Cluster::running(3, "", &sites.policy(""));
    c.wait_verdict("dc-a", 1, SETTLE);
    (sites, c)
}

/// Wait until a majority of witnesses has a fresh observation of `site` up
/// (an operator's failover is refused before that).
fn wait_seen_up(c: &Cluster, site: &str) {
    wait_until(SETTLE, &format!("a majority to see {site} up"), || {
        let s = c.status()?;
        let tally = s["sites"]
            .as_array()?
            .iter()
            .find(|x| x["name"] == site)?
            .clone();
        (tally["up"].as_u64()? >= tally["quorum"].as_u64()?).then_some(())
    });
}

/// Run `args` in table and in JSON form against `endpoints`; both must
/// succeed, the table must contain `expect`, the JSON must parse. Returns
/// the JSON.
fn both_forms(c: &Cluster, endpoints: &str, args: &[&str], expect: &str) -> Value {
    let table = c.ctl_at(endpoints, &[&["--timeout", "5s"][..], args].concat());
    assert!(table.status.success(), "{args:?}: {}", text(&table));
    let shown = String::from_utf8_lossy(&table.stdout);
    assert!(
        shown.contains(expect),
        "{args:?} shows {expect:?}:\n{shown}"
    );
    let json = c.ctl_at(
        endpoints,
        &[&["--timeout", "5s", "--output", "json"][..], args].concat(),
    );
    assert!(
        json.status.success(),
        "{args:?} --output json: {}",
        text(&json)
    );
    serde_json::from_slice(&json.stdout)
        .unwrap_or_else(|e| panic!("{args:?} --output json is not JSON ({e}): {}", text(&json)))
}

/// Every command works in both forms and says what happened.
#[test]
fn every_command_in_table_and_json() {
    let (_sites, c) = running();
    let all = c.endpoints();
    let e = all.as_str();

    let s = both_forms(&c, e, &["status"], "directives: none open at epoch 1");
    assert_eq!(s["active_site"], "dc-a");
    assert_eq!(s["directives"]["epoch"], 1, "{s:#}");
    assert_eq!(s["sites"].as_array().map(Vec::len), Some(2), "{s:#}");
    let s = both_forms(&c, e, &["status", "--local"], "answered by node");
    assert!(s["answered_by"].as_u64().is_some());
    let m = both_forms(&c, e, &["members", "list"], "voter");
    assert_eq!(m.as_array().map(Vec::len), Some(3));
    let p = both_forms(&c, e, &["policy", "show"], "# cluster policy, version");
    assert!(p["toml"].as_str().is_some_and(|t| t.contains("dc-b")));
    let file = c.policy_path();
    let file = file.to_str().expect("utf-8 path");
    let d = both_forms(&c, e, &["policy", "apply", file, "--dry-run"], "");
    assert_eq!(d["applied"], false);
    let d = both_forms(&c, e, &["directives", "list"], "epoch 1");
    assert_eq!(d["epoch"], 1);
    let t = both_forms(
        &c,
        e,
        &["check-topology"],
        "survives the loss of any one site",
    );
    assert_eq!(t["survives_every_single_loss"], true);
    assert_eq!(t["losses"].as_array().map(Vec::len), Some(6), "{t:#}");

    // A change in table form, then its undoing in JSON form, and again
    // the other way round.
    let changes: [(&[&str], &str, &str); 4] = [
        (
            &["freeze", "--reason", "maintenance"],
            "mode: frozen",
            "frozen",
        ),
        (&["unfreeze", "--reason", "done"], "mode: auto", "auto"),
        (
            &["freeze", "--reason", "maintenance 2"],
            "mode: frozen",
            "frozen",
        ),
        (&["unfreeze", "--reason", "done 2"], "mode: auto", "auto"),
    ];
    for (i, (args, table, mode)) in changes.iter().enumerate() {
        let json = i % 3 != 0;
        let out = c.ctl(&[if json { &["--output", "json"][..] } else { &[] }, args].concat());
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        if json {
            let v: Value = serde_json::from_slice(&out.stdout).expect("mode json");
            assert_eq!(v["mode"], *mode, "{args:?}");
        } else {
            assert!(text(&out).contains(table), "{args:?}: {}", text(&out));
        }
    }
    let h = both_forms(&c, e, &["history"], "maintenance");
    assert!(h.as_array().is_some_and(|h| h.len() >= 3), "{h:#}");

    // A planned switchover to dc-b, then back, each in one form.
    wait_seen_up(&c, "dc-b");
    let out = c.ctl(&["failover", "--to", "dc-b", "--reason", "planned move"]);
    assert!(out.status.success(), "failover: {}", text(&out));
    c.wait_verdict("dc-b", 2, SETTLE);
    wait_seen_up(&c, "dc-a");
    let out = c.ctl(&[
        "--output",
        "json",
        "failover",
        "--to",
        "dc-a",
        "--reason",
        "back home",
        "--accept-data-loss",
    ]);
    assert!(out.status.success(), "failover json: {}", text(&out));
    let back: Value = serde_json::from_slice(&out.stdout).expect("failover json");
    assert_eq!(back["epoch"], 3, "{back:#}");
    c.wait_verdict("dc-a", 3, SETTLE);

    // Leadership moves to another voter, in both forms.
    let leader = c.wait_for_leader(&[1, 2, 3], SETTLE);
    let to = if leader == 1 { 2 } else { 1 };
    let out = c.ctl(&["transfer-leader", &to.to_string()]);
    assert!(out.status.success(), "transfer-leader: {}", text(&out));
    assert!(
        text(&out).contains(&format!("node {to} now leads")),
        "{}",
        text(&out)
    );
    let back = if to == 1 { 2 } else { 1 };
    let out = c.ctl(&["--output", "json", "transfer-leader", &back.to_string()]);
    assert!(out.status.success(), "transfer-leader json: {}", text(&out));
    let moved: Value = serde_json::from_slice(&out.stdout).expect("transfer json");
    assert_eq!(moved["leader_id"], back);

    // Refusals exit 1 and say why, in both forms.
    for form in [&[][..], &["--output", "json"]] {
        let out = c.ctl(&[form, &["members", "promote", "99"]].concat());
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(text(&out).contains("99"), "{}", text(&out));
        let out = c.ctl(&[form, &["directives", "retry", "1/nothing", "--reason", "x"]].concat());
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    }
}

/// `watch` prints the current state, then each change as it happens: an
/// operator's freeze shows as a committed decision and a mode change. With
/// `--output json` every line is one JSON object.
#[test]
fn watch_streams_changes_until_stopped() {
    let (_sites, c) = running();
    for json in [false, true] {
        let mut args = vec!["--endpoints".to_string(), c.endpoints()];
        if json {
            args.extend(["--output".into(), "json".into()]);
        }
        args.extend(["watch".into(), "--interval".into(), "200ms".into()]);
        let mut child = Command::new(witnessctl_bin())
            .args(&args)
            .envs(Pki::ctl_env(&c.pki().operator()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn watch");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut lines: Vec<String> = Vec::new();
        // Wait until a line printed after `from` contains `what`; changes
        // read together come in no promised order, so each wait looks at
        // every line since its step began.
        let mut wait_for = |what: &str, from: usize| {
            let deadline = Instant::now() + SETTLE;
            loop {
                if lines[from.min(lines.len())..]
                    .iter()
                    .any(|l| l.contains(what))
                {
                    return lines.len();
                }
                assert!(
                    Instant::now() < deadline,
                    "watch never printed {what:?}; it printed:\n{}",
                    lines.join("\n")
                );
                if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
                    lines.push(l);
                }
            }
        };
        let start = wait_for("dc-a active, epoch 1", 0);
        let reason = if json { "json freeze" } else { "table freeze" };
        let out = c.ctl(&["freeze", "--reason", reason]);
        assert!(out.status.success(), "freeze: {}", text(&out));
        wait_for(reason, start);
        let frozen = wait_for("mode frozen", start);
        let out = c.ctl(&["unfreeze", "--reason", "over"]);
        assert!(out.status.success(), "unfreeze: {}", text(&out));
        wait_for("mode auto", frozen);
        let _ = child.kill();
        let _ = child.wait();
        if json {
            for l in &lines {
                let v: Value = serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("watch --output json line is not JSON ({e}): {l}"));
                assert!(v["kind"].is_string() && v["at_unix_ms"].is_u64(), "{l}");
            }
        }
    }
}

/// Through a follower alone: reads are answered with the leader's view and
/// changes are forwarded to the leader.
#[test]
fn a_follower_forwards_reads_and_changes() {
    let (_sites, c) = running();
    let leader = c.wait_for_leader(&[1, 2, 3], SETTLE);
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let only = c.spec(follower).addr();
    let s = both_forms(&c, &only, &["status"], "dc-a active");
    assert_eq!(s["leader_id"], leader);
    assert_eq!(
        s["answered_by"], leader,
        "status is the leader's view: {s:#}"
    );
    let s = both_forms(&c, &only, &["status", "--local"], "follower");
    assert_eq!(s["answered_by"], follower);
    for args in [
        &["freeze", "--reason", "via follower"][..],
        &["--output", "json", "unfreeze", "--reason", "via follower"],
    ] {
        let out = c.ctl_at(&only, args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
    }
    both_forms(&c, &only, &["history"], "via follower");
    both_forms(&c, &only, &["members", "list"], "voter");
    both_forms(&c, &only, &["policy", "show"], "cluster policy");
    both_forms(&c, &only, &["directives", "list"], "epoch 1");
    both_forms(&c, &only, &["check-topology"], "survives");
}

/// The commands that talk to the cluster, with arguments that would be
/// valid against a healthy one.
const CLUSTER_COMMANDS: &[&[&str]] = &[
    &["status"],
    &["members", "list"],
    &["members", "promote", "2"],
    &["policy", "show"],
    &["directives", "list"],
    &["directives", "retry", "1/promote", "--reason", "r"],
    &["history"],
    &["freeze", "--reason", "r"],
    &["unfreeze", "--reason", "r"],
    &["failover", "--to", "dc-b", "--reason", "r"],
    &["transfer-leader", "2"],
    &["check-topology"],
    &["watch"],
];

/// Against an address where nothing listens, every command fails with exit
/// code 3 naming the endpoint, in both forms, within the timeout.
#[test]
fn a_dead_endpoint_exits_3_for_every_command() {
    let port = free_port();
    let c = Cluster::new(3);
    let dead = format!("127.0.0.1:{port}");
    // Build the binaries first, outside the timed calls.
    let _ = witnessctl_bin();
    for args in CLUSTER_COMMANDS {
        for form in [&[][..], &["--output", "json"]] {
            let started = Instant::now();
            let out = c.ctl_at(&dead, &[&["--timeout", "2s"], form, args].concat());
            assert_eq!(out.status.code(), Some(3), "{args:?}: {}", text(&out));
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains(&dead), "{args:?} names the endpoint: {err}");
            assert!(err.contains("Is witness running there?"), "{args:?}: {err}");
            assert!(out.stdout.is_empty(), "{args:?} printed nothing on stdout");
            assert!(started.elapsed() < Duration::from_secs(10), "{args:?} hung");
        }
    }
}

/// With two of three witnesses down, the survivor cannot answer for the
/// cluster: every command fails with exit code 4 and a message that says
/// what to do, no later than twice the timeout; `status --local` still
/// shows the survivor's own view.
#[test]
fn without_quorum_commands_fail_fast_with_exit_4() {
    let (_sites, mut c) = running();
    let leader = c.wait_for_leader(&[1, 2, 3], SETTLE);
    let survivor = (1..=3).find(|id| *id != leader).expect("a follower");
    for id in (1..=3).filter(|id| *id != survivor) {
        c.kill(id);
    }
    let only = c.spec(survivor).addr();
    let timeout = Duration::from_secs(2);
    for args in CLUSTER_COMMANDS {
        for form in [&[][..], &["--output", "json"]] {
            let started = Instant::now();
            let out = c.ctl_at(&only, &[&["--timeout", "2s"], form, args].concat());
            let took = started.elapsed();
            assert_eq!(out.status.code(), Some(4), "{args:?}: {}", text(&out));
            let err = String::from_utf8_lossy(&out.stderr);
            let named = err.contains(&only) || err.contains(&format!("node {survivor}"));
            assert!(named, "{args:?} names the endpoint: {err}");
            assert!(
                took < 2 * timeout + Duration::from_secs(3),
                "{args:?} took {took:?}, past twice the 2s timeout"
            );
        }
    }
    let out = c.ctl_at(&only, &["--timeout", "2s", "status"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("answered by node"),
        "status still shows the node's own view: {}",
        text(&out)
    );
    assert!(text(&out).contains("not the cluster's"), "{}", text(&out));
    let out = c.ctl_at(&only, &["--timeout", "2s", "status", "--local"]);
    assert!(out.status.success(), "status --local: {}", text(&out));
    assert!(
        text(&out).contains(&format!("answered by node {survivor}")),
        "{}",
        text(&out)
    );
}

/// `check-topology` on files: the example three-site layout is safe (exit
/// 0); a 2+1 layout is reported as unsafe with exit 1 and says which loss
/// it does not survive.
#[test]
fn check_topology_judges_config_files() {
    let c = Cluster::new(3);
    let out = c.ctl_at(
        "127.0.0.1:1",
        &[
            "check-topology",
            "--config",
            c.config_path(1).to_str().expect("path"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let dir = tempfile::tempdir().expect("tempdir");
    let two_plus_one = dir.path().join("witness.toml");
    let peers: String = [(1, "dc-a"), (2, "dc-a"), (3, "dc-b")]
        .iter()
        .map(|(id, site)| {
            format!(
                "[[peer]]\nid = {id}\nname = \"w{id}\"\naddr = \"h{id}:7400\"\nsite = \"{site}\"\n"
            )
        })
        .collect();
    std::fs::write(&two_plus_one, peers).expect("write");
    let policy = dir.path().join("cluster.toml");
    std::fs::write(&policy, Sites::start().policy("")).expect("write policy");
    let out = c.ctl_at(
        "127.0.0.1:1",
        &[
            "check-topology",
            "--config",
            two_plus_one.to_str().expect("path"),
            "--policy",
            policy.to_str().expect("path"),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let shown = text(&out);
    assert!(
        shown.contains("lose site dc-a: DOES NOT SURVIVE"),
        "{shown}"
    );
    assert!(shown.contains("dc-b can never be activated"), "{shown}");
    assert!(shown.contains("share site dc-a"), "{shown}");
    let out = c.ctl_at(
        "127.0.0.1:1",
        &["check-topology", "--config", "/nonexistent.toml"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("cannot read /nonexistent.toml"),
        "{}",
        text(&out)
    );
}

/// Completions and man pages come from the command definitions.
#[test]
fn completions_and_man_pages_are_generated() {
    let c = Cluster::new(1);
    for shell in ["bash", "zsh", "fish"] {
        let out = c.ctl_at("127.0.0.1:1", &["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", text(&out));
        assert!(
            text(&out).contains("check-topology"),
            "{shell} completes commands"
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = c.ctl_at("127.0.0.1:1", &["man", dir.path().to_str().expect("path")]);
    assert!(out.status.success(), "{}", text(&out));
    for page in [
        "witnessctl.1",
        "witnessctl-watch.1",
        "witnessctl-members-add.1",
    ] {
        let body = std::fs::read_to_string(dir.path().join(page)).expect(page);
        assert!(body.contains(".TH"), "{page} is a man page");
    }
}

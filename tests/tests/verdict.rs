//! The site verdict over real processes: probes, detection quorum, the lease
//! wait, freezes and operator failovers.

use std::time::{Duration, Instant};

use serde_json::Value;
use witness_e2e::*;

fn start(sites: &Sites, extra: &str) -> Cluster {
    Cluster::running(3, "", &sites.policy(extra))
}

fn last_activation(c: &Cluster) -> Value {
    c.history()
        .into_iter()
        .rev()
        .find(|r| r["event"].get("activated").is_some())
        .expect("an activation in history")
}

/// A site whose services all die is declared dead by the witnesses, and the
/// other site is activated at the next epoch, after the lease wait, with the
/// evidence recorded in history.
#[test]
fn site_dies_other_site_is_activated_at_the_next_epoch() {
    let mut sites = Sites::start();
    let c = start(&sites, "");
    c.wait_verdict("dc-a", 1, SETTLE);
    let rec = last_activation(&c);
    assert_eq!(rec["event"]["activated"]["cause"], "initial", "{rec}");

    let t0 = Instant::now();
    sites.kill('a');
    let s = c.wait_verdict("dc-b", 2, FAILOVER_BOUND);
    eprintln!("failover took {:?}", t0.elapsed());
    assert_eq!(s["mode"], "auto");

    let rec = last_activation(&c);
    let act = &rec["event"]["activated"];
    assert_eq!(act["cause"], "site_down", "{rec}");
    assert_eq!(act["from"], "dc-a");
    assert_eq!(act["to"], "dc-b");
    assert_eq!(act["epoch"], 2);
    assert_eq!(rec["by"], "Auto");
    let ev = &act["evidence"];
    let a = ev["assessment"]
        .as_array()
        .expect("assessment")
        .iter()
        .find(|t| t["site"] == "dc-a")
        .cloned()
        .expect("dc-a tally");
    assert!(
        a["down"].as_array().expect("down").len() >= 2,
        "a detection quorum saw dc-a down: {a}"
    );
    let lease_wait = ev["lease_wait_ms"].as_u64().expect("lease wait");
    assert!(
        lease_wait >= 4000,
        "lease wait covers lease_ttl with drift and margin: {lease_wait}"
    );
    let since = ev["since_last_lease_ms"]
        .as_u64()
        .expect("since last lease");
    assert!(
        since >= lease_wait,
        "activated only after every lease could be over: {since} < {lease_wait}"
    );
    assert!(
        ev["observations"].as_array().is_some_and(|o| o.len() >= 2),
        "observations recorded"
    );

    // The activation carries its directives: promote dc-a's accounts on
    // dc-b's mailstore, with dc-b's proxies gated on it. No agent runs here,
    // so it stays pending, and only a failed directive can be retried.
    let out = c.ctl(&["--output", "json", "directives", "list"]);
    assert!(out.status.success(), "directives list: {}", text(&out));
    let list: Value = serde_json::from_slice(&out.stdout).expect("directives json");
    assert_eq!(list["epoch"], 2, "{list:#}");
    let d = &list["directives"][0];
    assert_eq!(
        (&d["id"], &d["site"], &d["role"], &d["state"]),
        (
            &Value::from("2/promote"),
            &Value::from("dc-b"),
            &Value::from("mailstore"),
            &Value::from("pending")
        ),
        "{list:#}"
    );
    assert_eq!(d["action"]["kind"], "promote_accounts");
    assert_eq!(d["action"]["source_mail_hosts"][0], "mbox.dc-a.test");
    assert_eq!(list["gates"][0]["role"], "proxy");
    assert_eq!(list["gates"][0]["open"], false);
    let out = c.ctl(&["directives", "retry", "2/promote", "--reason", "test"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("only a failed or unreachable directive"));
}

/// While frozen, a dead active site is not failed over, and status says
/// why; after unfreeze the failover happens.
#[test]
fn freeze_blocks_failover_until_unfreeze() {
    let mut sites = Sites::start();
    let c = start(&sites, "");
    c.wait_verdict("dc-a", 1, SETTLE);
    let out = c.ctl(&["freeze", "--reason", "planned maintenance"]);
    assert!(out.status.success(), "freeze: {}", text(&out));
    sites.kill('a');
    // Long enough for detection and a lease wait, twice over.
    std::thread::sleep(Duration::from_secs(12));
    let s = c.status().expect("status");
    assert_eq!(s["active_site"], "dc-a", "no failover while frozen: {s}");
    assert_eq!(s["epoch"], 1);
    assert_eq!(s["mode"], "frozen");
    let why = s["decision"].to_string();
    assert!(
        why.contains("planned maintenance"),
        "status explains the hold: {why}"
    );
    let down = s["sites"]
        .as_array()
        .expect("sites")
        .iter()
        .find(|x| x["name"] == "dc-a")
        .expect("dc-a")["down"]
        .as_u64();
    assert!(
        down.is_some_and(|d| d >= 2),
        "status shows the witnesses see dc-a down: {s}"
    );

    let out = c.ctl(&["unfreeze", "--reason", "done"]);
    assert!(out.status.success(), "unfreeze: {}", text(&out));
    c.wait_verdict("dc-b", 2, FAILOVER_BOUND);
}

/// An operator failover moves the active site through the lease wait, even
/// while frozen; a failover to a site a majority does not see up is refused.
#[test]
fn operator_failover_needs_a_live_target() {
    let mut sites = Sites::start();
    let c = start(&sites, "");
    c.wait_verdict("dc-a", 1, SETTLE);
    let out = c.ctl(&["freeze", "--reason", "maintenance"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = c.ctl(&[
        "--timeout",
        "40s",
        "failover",
        "--to",
        "dc-b",
        "--reason",
        "move for maintenance",
    ]);
    assert!(out.status.success(), "failover: {}", text(&out));
    let s = c.wait_verdict("dc-b", 2, SETTLE);
    assert_eq!(
        s["mode"], "frozen",
        "an operator failover does not unfreeze"
    );
    let rec = last_activation(&c);
    assert_eq!(rec["event"]["activated"]["cause"], "operator");
    assert!(rec["by"].to_string().contains("Operator"), "{rec}");

    sites.kill('a');
    std::thread::sleep(Duration::from_secs(4));
    let out = c.ctl(&[
        "--timeout",
        "40s",
        "failover",
        "--to",
        "dc-a",
        "--reason",
        "back",
    ]);
    assert_eq!(out.status.code(), Some(1), "refused: {}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("majority"), "says why: {err}");
    assert_eq!(c.status().expect("status")["epoch"], 2);
}

/// `witness recover --force` on the last survivor: a new cluster
/// incarnation with the node as the only voter, its state carried over with
/// the epoch bumped by 2^32, frozen and recorded; the old store is kept
/// aside; the old majority coming back is refused by the new cluster.
#[test]
fn forced_recovery_makes_a_new_incarnation_the_old_majority_cannot_join() {
    let sites = Sites::start();
    let mut c = start(&sites, "");
    c.wait_verdict("dc-a", 1, SETTLE);
    let before = c.status().expect("status");
    let old_cluster = before["cluster_id"].as_str().expect("id").to_string();
    c.kill(2);
    c.kill(3);
    assert!(
        c.terminate(1, Duration::from_secs(20)),
        "node 1 stops cleanly"
    );

    let recover = |force: bool| {
        let mut cmd = std::process::Command::new(witness_bin());
        cmd.args(["recover", "--config"])
            .arg(c.config_path(1))
            .args(["--reason", "dc-b and dc-c lost"]);
        if force {
            cmd.arg("--force");
        }
        cmd.output().expect("run recover")
    };
    let out = recover(false);
    assert!(
        !out.status.success(),
        "refuses without --force: {}",
        text(&out)
    );
    let out = recover(true);
    assert!(out.status.success(), "recover: {}", text(&out));
    let moved: Vec<_> = std::fs::read_dir(c.dir.path())
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("data-1.pre-recovery-")
        })
        .collect();
    assert_eq!(moved.len(), 1, "the old store is kept aside");

    c.start(1);
    let s = wait_until(SETTLE, "node 1 to lead the new incarnation", || {
        let s = c.local_status(1)?;
        (s["role"] == "leader" && s["mode"] == "frozen").then_some(s)
    });
    assert_ne!(s["cluster_id"], old_cluster.as_str(), "a new cluster id");
    assert_eq!(s["epoch"], 1 + (1u64 << 32), "epoch bumped by 2^32");
    assert_eq!(s["active_site"], "dc-a", "state carried over");
    assert_eq!(
        s["members"].as_array().map(Vec::len),
        Some(1),
        "the only voter"
    );
    let last = c.history().pop().expect("history");
    assert!(
        last["event"].get("forced_recovery").is_some(),
        "recorded: {last}"
    );

    // The old majority returns with its old stores: the new cluster refuses
    // its traffic and its history never enters the new one.
    c.start(2);
    c.start(3);
    std::thread::sleep(ELECTION_TIMEOUT_MAX * 4);
    let s = c.local_status(1).expect("node 1");
    assert_eq!(s["epoch"], 1 + (1u64 << 32));
    assert_eq!(s["members"].as_array().map(Vec::len), Some(1));
    assert_eq!(s["role"], "leader");
    let told = |id| c.log(id).contains("reached a node of cluster");
    assert!(
        told(2) || told(3),
        "the old nodes are told they reach another cluster:\n{}\n{}",
        c.log(2),
        c.log(3)
    );
}

/// With `preferred_leader = "dc-c"`, leadership moves to the third site's
/// witness once it is healthy and caught up, and comes back to it after it
/// restarts.
#[test]
fn leadership_moves_to_the_preferred_site() {
    let sites = Sites::start();
    let mut c = start(&sites, "[failover]\npreferred_leader = \"dc-c\"\n");
    wait_until(SETTLE, "node 3 (dc-c) to lead", || {
        (c.wait_for_leader(&[1, 2, 3], SETTLE) == 3).then_some(())
    });
    c.kill(3);
    let other = c.wait_for_leader(&[1, 2], SETTLE);
    assert_ne!(other, 3);
    c.start(3);
    wait_until(SETTLE, "node 3 to lead again", || {
        (c.wait_for_leader(&[1, 2, 3], SETTLE) == 3).then_some(())
    });
}

//! Scenarios of the site verdict, over the real `witness` binaries (issue 3,
//! "How it must be shown"): which site is active when links are cut,
//! witnesses crash, leaders change and Consul lies or dies.
//!
//! - Scenarios that cut links run the witnesses on hosts made of network
//!   namespaces that the test builds itself ([`NetCluster`]): partitions are
//!   iptables rules inside those namespaces, never on the machine's own
//!   network, and everything is removed on drop, also when a test fails.
//!   Without root they print `SKIPPED: <reason>` and pass (CI runs as root).
//! - Scenarios that need no partition (Consul, leader crash) run on
//!   loopback ([`Cluster`]) and run everywhere.
//!
//! Lease clients renew like the active site's agents ([`LeaseClient`]); in
//! the namespace scenarios they run inside a host of the active site, so
//! partitions apply to them too.
//!
//! **Bounds come from the protocol.** With the default timers a failover
//! takes detection (3 × 500 ms + 400 ms) + observation commits + the lease
//! wait (3 s × 1.01/0.99 + 1 s ≈ 4.1 s), plus an election (≤ ~3 s) when the
//! leader moves; `witness check-config` sums the worst case (≈ 9.5 s). A
//! "no failover" claim is held for twice that worst case, read from
//! `check-config` so it follows the timers; a "failover happens" claim
//! waits up to [`FAILOVER_BOUND`], generous for a loaded CI machine.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jepsen::Host;
use serde_json::Value;
use witness::sim::consul::{FakeConsul, FakeState};
use witness_e2e::admin::Admin;
use witness_e2e::agents::{AgentLab, AgentProc, AgentSpec};
use witness_e2e::lease::{LeaseClient, LeaseSpec};
use witness_e2e::netcluster::NetCluster;
use witness_e2e::*;

/// The policy's `lease_ttl`.
const LEASE_TTL: Duration = Duration::from_secs(3);

/// The policy's `observation_ttl`.
const OBSERVATION_TTL: Duration = Duration::from_secs(6);

/// How often a "nothing happens" window looks at the verdict.
const HOLD_POLL: Duration = Duration::from_millis(500);

/// How long a "no failover" claim is held: twice the worst-case failover
/// time of `policy`.
fn no_failover_window(policy: &str) -> Duration {
    2 * worst_case_failover(policy)
}

/// Poll `status` for `window`: the verdict must stay `site` at `epoch`, and
/// no failover may even begin (no pending failover, i.e. no drain). Returns
/// the last status. Bounded by `window` plus one status call.
fn hold_no_failover(
    window: Duration,
    site: &str,
    epoch: u64,
    status: impl Fn() -> Option<Value>,
) -> Value {
    let end = Instant::now() + window;
    let mut last = None;
    let mut seen = 0;
    while Instant::now() < end {
        if let Some(s) = status() {
            assert_eq!(s["active_site"], site, "no failover: {s:#}");
            assert_eq!(s["epoch"], epoch, "epoch unchanged: {s:#}");
            assert!(
                s["pending_failover"].is_null(),
                "no failover even begins: {s:#}"
            );
            seen += 1;
            last = Some(s);
        }
        std::thread::sleep(HOLD_POLL);
    }
    assert!(
        seen >= 3,
        "only {seen} status answers in {window:?}: cannot tell"
    );
    eprintln!("no failover: {site} stayed active at epoch {epoch} for {window:?} ({seen} looks)");
    last.expect("a status")
}

/// The activations in `history`, oldest first.
fn activations(history: &[Value]) -> Vec<Value> {
    history
        .iter()
        .filter_map(|r| {
            let a = r["event"].get("activated")?;
            let mut a = a.clone();
            a["at_unix_ms"] = r["at_unix_ms"].clone();
            Some(a)
        })
        .collect()
}

/// One site per epoch, epochs strictly increasing; returns `(epoch, site)`.
fn epochs(history: &[Value]) -> Vec<(u64, String)> {
    let list: Vec<(u64, String)> = activations(history)
        .iter()
        .map(|a| {
            (
                a["epoch"].as_u64().expect("epoch"),
                a["to"].as_str().expect("to").to_string(),
            )
        })
        .collect();
    for w in list.windows(2) {
        assert!(
            w[0].0 < w[1].0,
            "epochs strictly increase, one activation each: {list:?}"
        );
    }
    list
}

/// `sites[name]` of a status.
fn site<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["sites"]
        .as_array()
        .and_then(|s| s.iter().find(|x| x["name"] == name))
        .unwrap_or_else(|| panic!("no site {name} in {status:#}"))
}

/// Witness `w`'s observation of site `name` in a status.
fn observation(status: &Value, name: &str, w: u64) -> Option<Value> {
    site(status, name)["observations"]
        .as_array()?
        .iter()
        .find(|o| o["witness"] == w)
        .cloned()
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

// ---- links cut --------------------------------------------------------------

/// The fake Carbonio CLI the real agents call.
const FAKE: &str = env!("CARGO_BIN_EXE_fake_carbonio");

/// The real `witness agent` on dc-a's mailstore and proxy hosts, asking
/// dc-a's witness first, then the witness site's, then dc-b's; no health
/// check (so, like the lease client, no veto), hooks recorded by `lab`.
/// Returns once both serve at epoch 1.
fn dc_a_agents(c: &NetCluster, lab: &AgentLab) -> Vec<AgentProc> {
    let witnesses = c.endpoints(&[1, 3, 2]);
    let agents: Vec<AgentProc> = [("a-mbox", "mailstore"), ("a-proxy", "proxy")]
        .into_iter()
        .map(|(host, role)| {
            lab.start_via(&AgentSpec::new(host, "dc-a", role), &witnesses, |argv| {
                c.net
                    .exec(&Host::from(host), argv)
                    .expect("a host of this cluster")
            })
        })
        .collect();
    for a in &agents {
        wait_until(
            SETTLE,
            &format!("agent {} serving at epoch 1", a.name),
            || a.first("serving", Some(1)),
        );
    }
    agents
}

/// The link between dc-a and dc-b is cut while dc-c's witness sees both,
/// with the Raft leader on witness `leader`. Nothing fails over; the
/// active site's lease client keeps its lease without a gap, renewing
/// through the third site's witness when its own cannot reach the leader;
/// and the site's real agents (mailstore and proxy) never fence.
fn link_between_data_sites_cut(tag: &str, octet: u8, leader: u64) {
    let Some(mut c) = NetCluster::start(tag, octet, "") else {
        return;
    };
    let window = no_failover_window(&c.policy);
    c.place_leader(leader);
    // The lease client lives on dc-a's mailstore host and prefers its own
    // site's witness, then the witness site's, then the other data site's.
    // It reports no healthy service, so the agents' veto (DESIGN.md §3.3)
    // plays no part: only the detection quorum can hold the failover.
    let lease = unhealthy_dc_a_agent(&c);
    let lab = AgentLab::new(FAKE).in_cluster(netcluster::CLUSTER);
    let agents = dc_a_agents(&c, &lab);

    let cut = Instant::now();
    let (a, b) = (c.site("dc-a"), c.site("dc-b"));
    c.nemesis.partition(vec![a, b]).expect("cut dc-a from dc-b");
    // Asked through the leader first: a witness cut off from the leader
    // holds a forwarded status until witnessctl gives up on it, and
    // witnessctl does not move on to the next endpoint after a timeout.
    let s = hold_no_failover(window, "dc-a", 1, || c.status_via(&[leader, 3]));
    let end = Instant::now();

    // The cut is real: the leader's own site sees the other data site down,
    // and that one witness is not a quorum.
    let (other, leader_site) = if leader == 1 {
        ("dc-b", "dc-a")
    } else {
        ("dc-a", "dc-b")
    };
    let o = observation(&s, other, leader).expect("the leader's observation");
    assert_eq!(
        o["seen"], "down",
        "the leader in {leader_site} sees {other} down across the cut: {s:#}"
    );
    assert_eq!(
        site(&s, other)["down"],
        1,
        "one witness is not a quorum: {s:#}"
    );
    assert_eq!(site(&s, "dc-a")["up"].as_u64().map(|u| u >= 1), Some(true));

    let gap = lease.longest_gap_between_grants(cut, end);
    assert!(
        gap <= LEASE_TTL,
        "the agent renewed at least every lease_ttl ({gap:?}):\n{}",
        lease.describe()
    );
    assert_eq!(
        lease.lapses(cut, end),
        vec![],
        "the agent's lease never ran out:\n{}",
        lease.describe()
    );
    if leader != 1 {
        let via_c = lease.grants_through(&c.endpoint(3), cut, end);
        assert!(
            via_c > 0,
            "with the leader in dc-b the agent renews through dc-c's witness:\n{}",
            lease.describe()
        );
    }
    assert_eq!(
        epochs(&c.history_via(&[leader])),
        vec![(1, "dc-a".to_string())]
    );
    for a in &agents {
        assert_eq!(
            a.first("fenced", None),
            None,
            "agent {} fenced while the link was cut:\n{}",
            a.name,
            a.log()
        );
        assert_eq!(a.state().as_deref(), Some("serving"), "{}", a.log());
        assert!(
            lab.runs_of("fence", &a.name).is_empty(),
            "agent {} ran its fence hook",
            a.name
        );
    }
}

/// Cutting the link between the two data sites while the leader is in the
/// active site (dc-a) and dc-c's witness sees both: no failover for twice
/// the worst-case failover time, and dc-a's agent keeps its lease with no
/// gap longer than `lease_ttl`.
#[test]
fn link_between_sites_cut_with_leader_in_active_site_does_not_fail_over() {
    link_between_data_sites_cut("lca", 21, 1);
}

/// Cutting the link between the two data sites while the leader is in the
/// standby site (dc-b): the leader sees dc-a down but one witness is not a
/// quorum, so no failover; dc-a's agent, whose own witness cannot reach the
/// leader, keeps renewing through dc-c's witness with no gap longer than
/// `lease_ttl`.
#[test]
fn link_between_sites_cut_with_leader_in_standby_site_does_not_fail_over() {
    link_between_data_sites_cut("lcb", 22, 2);
}

/// The witness site (dc-c) isolated from both data sites while its witness
/// leads: the two data-site witnesses elect a new leader, and nothing fails
/// over, since both still see dc-a up.
#[test]
fn witness_site_isolated_does_not_fail_over() {
    let Some(mut c) = NetCluster::start("wsi", 23, "") else {
        return;
    };
    let window = no_failover_window(&c.policy);
    c.place_leader(3);
    let lease = unhealthy_dc_a_agent(&c);

    let cut = Instant::now();
    let (dc_c, rest): (Vec<Host>, Vec<Host>) = c
        .net
        .hosts()
        .into_iter()
        .partition(|h| c.site("dc-c").contains(h));
    c.nemesis
        .partition(vec![dc_c, rest])
        .expect("isolate the witness site");
    let s = hold_no_failover(window, "dc-a", 1, || c.status_via(&[1, 2]));
    let end = Instant::now();

    let new = s["leader_id"].as_u64().expect("a leader");
    assert!(
        new == 1 || new == 2,
        "the data sites' witnesses lead now: {s:#}"
    );
    assert_eq!(site(&s, "dc-a")["down"], 0, "{s:#}");
    assert!(
        site(&s, "dc-a")["up"].as_u64() >= Some(2),
        "a majority still sees dc-a up: {s:#}"
    );
    let lapses = lease.lapses(cut, end);
    eprintln!(
        "witness site isolated: longest gap between the agent's grants {:?}, lapses {:?}\n{}",
        lease.longest_gap_between_grants(cut, end),
        lapses
            .iter()
            .map(|(a, b)| *b - *a)
            .collect::<Vec<Duration>>(),
        lease.describe()
    );
    assert_eq!(
        epochs(&c.history_via(&[new])),
        vec![(1, "dc-a".to_string())]
    );
}

// ---- Consul -----------------------------------------------------------------

/// A loopback cluster whose witnesses each read the fake Consul at
/// `consul`, with `mode` and every target mapped to its Carbonio Consul
/// service and node (dc-a: mbox1, proxy1; dc-b: mbox2, proxy2).
fn consul_cluster(sites: &Sites, consul: &FakeConsul, mode: &str) -> (Cluster, String) {
    let specs: Vec<SiteSpec> = [
        ("dc-a", true, &sites.a, "1"),
        ("dc-b", false, &sites.b, "2"),
    ]
    .into_iter()
    .map(|(name, active, services, n)| SiteSpec {
        name: name.to_string(),
        active,
        targets: vec![
            TargetSpec {
                name: "mailstore".into(),
                role: "mailstore".into(),
                address: format!("127.0.0.1:{}", services[0].port),
                consul: Some((
                    "carbonio-mailbox".into(),
                    format!("agent-mbox{n}-example-com"),
                )),
            },
            TargetSpec {
                name: "proxy".into(),
                role: "proxy".into(),
                address: format!("127.0.0.1:{}", services[1].port),
                consul: Some((
                    "carbonio-proxy".into(),
                    format!("agent-proxy{n}-example-com"),
                )),
            },
        ],
    })
    .collect();
    let policy = site_policy(mode, "", &specs);
    let node = format!(
        "\n[consul]\naddress = \"{}\"\ntimeout = \"1s\"\n",
        consul.address()
    );
    let c = Cluster::running(3, &node, &policy);
    c.wait_verdict("dc-a", 1, SETTLE);
    (c, policy)
}

/// A runtime for the in-process fake Consul (its server runs on the
/// runtime's worker while the test thread drives the witnesses).
fn consul_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Consul says dc-a's services are passing while every witness's probes
/// fail, under `consul.mode = "corroborate"`: no failover, and `status`
/// says why (the Consul veto, in `decision` and `sites[].consul_veto`).
/// Once Consul agrees the nodes are dead, the failover goes ahead: the veto
/// was the only thing holding it.
#[test]
fn consul_passing_vetoes_failover_while_probes_fail_under_corroborate() {
    let rt = consul_runtime();
    let consul = rt
        .block_on(FakeConsul::loopback(FakeState::carbonio()))
        .expect("fake Consul");
    let mut sites = Sites::start();
    let (c, policy) = consul_cluster(&sites, &consul, "corroborate");
    let window = no_failover_window(&policy);

    sites.kill('a');
    wait_until(
        FAILOVER_BOUND,
        "every witness's probes to see dc-a down",
        || {
            let s = c.status()?;
            (site(&s, "dc-a")["consul_veto"].as_u64()? == 3).then_some(())
        },
    );
    let s = hold_no_failover(window, "dc-a", 1, || c.status());
    let a = site(&s, "dc-a");
    assert_eq!(a["down"], 0, "Consul vetoes every 'down': {s:#}");
    assert_eq!(a["consul_veto"], 3, "{s:#}");
    for o in a["observations"].as_array().expect("observations") {
        assert_eq!(o["health"], "down", "the probes fail: {o:#}");
        assert_eq!(o["seen"], "consul_veto", "Consul vetoes it: {o:#}");
    }
    let why = s["decision"].to_string();
    assert!(
        why.contains("Consul") && why.contains("veto"),
        "status says the Consul veto holds the failover: {why}"
    );

    // Consul's leader loses both nodes' gossip: serfHealth critical, the
    // service checks frozen at passing. No longer a veto.
    consul.update(|s| {
        s.fail_node("agent-mbox1-example-com").expect("mbox1");
        s.fail_node("agent-proxy1-example-com").expect("proxy1");
    });
    c.wait_verdict("dc-b", 2, FAILOVER_BOUND);
    drop(consul);
}

/// Consul goes down (the fake stops answering): the witnesses report it
/// unreachable and keep deciding on their probes, so a dead site is still
/// failed over, and the evidence records that Consul was unreachable.
#[test]
fn consul_down_decisions_continue_on_probes() {
    let rt = consul_runtime();
    let consul = rt
        .block_on(FakeConsul::loopback(FakeState::carbonio()))
        .expect("fake Consul");
    let mut sites = Sites::start();
    let (c, _) = consul_cluster(&sites, &consul, "corroborate");

    rt.block_on(consul.stop());
    wait_until(SETTLE, "every witness to report Consul unreachable", || {
        let s = c.status()?;
        let obs = site(&s, "dc-a")["observations"].as_array()?.clone();
        (obs.len() == 3 && obs.iter().all(|o| o["consul"]["reachable"] == false)).then_some(())
    });
    sites.kill('a');
    c.wait_verdict("dc-b", 2, FAILOVER_BOUND);

    let acts = activations(&c.history());
    let act = acts.last().expect("an activation");
    assert_eq!(act["cause"], "site_down", "{act:#}");
    assert_eq!(act["evidence"]["consul_mode"], "corroborate");
    let obs = act["evidence"]["observations"]
        .as_array()
        .expect("observations");
    assert!(obs.len() >= 2, "a detection quorum: {act:#}");
    for o in obs {
        assert_eq!(
            o["consul"]["reachable"], false,
            "decided while Consul was unreachable: {o:#}"
        );
    }
}

// ---- leaders and crashes ----------------------------------------------------

/// The leader is SIGKILLed while it waits out dc-a's leases: the new leader
/// does not continue that wait but starts its own, and activates dc-b
/// exactly once — no earlier than its own election plus the lease wait
/// (the evidence's `since_last_lease_ms` ≥ `lease_wait_ms`), and after the
/// agent's last lease is over. The old leader, restarted, does not act on
/// its old wait.
#[test]
fn leader_killed_during_the_lease_wait_new_leader_waits_again_and_activates_once() {
    let mut sites = Sites::start();
    let mut c = Cluster::running(3, "", &sites.policy(""));
    c.wait_verdict("dc-a", 1, SETTLE);
    let endpoints: Vec<String> = c.nodes.iter().map(|n| n.addr()).collect();
    let mut lease = LeaseClient::start(LeaseSpec::new("a-mbox", "dc-a", 1, endpoints));
    wait_until(SETTLE, "the agent's first grants", || {
        (lease.grants().len() >= 3).then_some(())
    });

    // dc-a's services die; its agent lives on and says so while renewing.
    sites.kill('a');
    lease.set_service_healthy(false);
    let old = wait_until(FAILOVER_BOUND, "the leader to start its lease wait", || {
        let s = c.status()?;
        let remaining = s["pending_failover"]["remaining_ms"].as_u64()?;
        // Well inside the wait, so the kill lands during it.
        (remaining >= 1500).then(|| s["leader_id"].as_u64())?
    });
    let killed_unix = now_unix_ms();
    c.kill(old);
    let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != old).collect();

    // The new leader's election, on the wall clock: `leader_since_ms` (not
    // in witnessctl's JSON, hence the in-process Admin call) counts from the
    // start of its term's lease book. Taking "now" before the call errs
    // early by at most one status round trip, so the check below can only
    // be weaker than the truth, never falsely fail.
    let admin = Admin::new(Duration::from_secs(2));
    let (new, elected_unix) = wait_until(SETTLE, "a new leader", || {
        rest.iter().find_map(|id| {
            let before = now_unix_ms();
            let s = admin.status(&c.spec(*id).addr(), true)?;
            let elected = before.saturating_sub(s.leader_since_ms?);
            (s.role == "leader" && elected >= killed_unix).then_some((*id, elected))
        })
    });
    c.wait_verdict("dc-b", 2, FAILOVER_BOUND);
    lease.stop();

    let history = c.history();
    assert_eq!(
        epochs(&history),
        vec![(1, "dc-a".to_string()), (2, "dc-b".to_string())],
        "one activation at epoch 2"
    );
    let act = activations(&history).pop().expect("the failover");
    assert_eq!(act["cause"], "site_down", "{act:#}");
    let ev = &act["evidence"];
    let wait = ev["lease_wait_ms"].as_u64().expect("lease_wait_ms");
    let since = ev["since_last_lease_ms"]
        .as_u64()
        .expect("since_last_lease_ms");
    assert!(
        wait >= 4000,
        "the lease wait covers lease_ttl, drift and margin: {ev:#}"
    );
    assert!(
        since >= wait,
        "the new leader waited a full lease wait since its election and last grant: {ev:#}"
    );
    let at = act["at_unix_ms"].as_u64().expect("at_unix_ms");
    assert!(
        at >= elected_unix + wait,
        "activated {} ms after leader {new}'s election; the lease wait is {wait} ms",
        at.saturating_sub(elected_unix)
    );
    let lease_end = lease.unix_ms(lease.lease_until().expect("the agent held a lease"));
    eprintln!(
        "leader {old} killed; leader {new} elected {} ms later, activated dc-b {} ms after \
         its election (lease wait {wait} ms, since last lease {since} ms), {} ms after dc-a's \
         last lease ended",
        elected_unix.saturating_sub(killed_unix),
        at.saturating_sub(elected_unix),
        at.saturating_sub(lease_end)
    );
    assert!(
        at >= lease_end,
        "dc-b activated {} ms before dc-a's last lease ended:\n{}",
        lease_end - at,
        lease.describe()
    );

    // The old leader comes back: it catches up and does not resume its wait.
    c.start(old);
    wait_until(SETTLE, "the old leader to catch up", || {
        (c.local_status(old)?["epoch"] == 2).then_some(())
    });
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        epochs(&c.history()),
        vec![(1, "dc-a".to_string()), (2, "dc-b".to_string())],
        "still one activation at epoch 2"
    );
}

/// A witness that saw dc-a down and then crashed does not count towards a
/// later failover: its last observation stays in the log but expires after
/// `observation_ttl`, so when another witness later sees dc-a down (which,
/// with the crashed witness's stale word, would make a majority) while the
/// third sees it up, nothing fails over, and `status` shows the crashed
/// witness's observation as not fresh.
#[test]
fn crashed_witness_that_saw_a_site_down_does_not_count_towards_a_later_failover() {
    let Some(mut c) = NetCluster::start("cwd", 24, "") else {
        return;
    };
    let window = no_failover_window(&c.policy);
    c.place_leader(1);
    let a_services = vec![Host::from("a-mbox"), Host::from("a-proxy")];

    // Witness 2 alone loses sight of dc-a's services.
    c.nemesis
        .partition(vec![vec![NetCluster::host(2)], a_services.clone()])
        .expect("cut witness 2 from dc-a's services");
    wait_until(FAILOVER_BOUND, "witness 2's 'dc-a down' to commit", || {
        let o = observation(&c.status()?, "dc-a", 2)?;
        (o["seen"] == "down" && o["fresh"] == true).then_some(())
    });
    c.crash(2);

    // Its last word stays, and expires.
    let s = wait_until(
        OBSERVATION_TTL + SETTLE,
        "witness 2's observation to expire",
        || {
            let s = c.status()?;
            (observation(&s, "dc-a", 2)?["fresh"] == false).then_some(s)
        },
    );
    let o = observation(&s, "dc-a", 2).expect("witness 2's observation");
    assert_eq!(o["health"], "down", "its last word was 'down': {o:#}");
    assert_eq!(
        o["seen"], "unknown",
        "an expired word counts as unknown: {o:#}"
    );

    // Now witness 3 loses sight of dc-a too; witness 1 still sees it up.
    c.nemesis.heal().expect("heal");
    c.nemesis
        .partition(vec![vec![NetCluster::host(3)], a_services])
        .expect("cut witness 3 from dc-a's services");
    wait_until(FAILOVER_BOUND, "witness 3's 'dc-a down' to commit", || {
        let o = observation(&c.status()?, "dc-a", 3)?;
        (o["seen"] == "down" && o["fresh"] == true).then_some(())
    });
    let s = hold_no_failover(window, "dc-a", 1, || c.status());
    let a = site(&s, "dc-a");
    assert_eq!(a["down"], 1, "only witness 3's word counts: {s:#}");
    assert_eq!(a["up"], 1, "witness 1 sees dc-a up: {s:#}");
    let o = observation(&s, "dc-a", 2).expect("witness 2's observation");
    assert_eq!(o["fresh"], false, "{o:#}");
    assert_eq!(o["health"], "down", "{o:#}");
    let why = s["decision"].to_string();
    assert!(
        why.contains("no fresh observation from [2]"),
        "status says witness 2's word does not count: {why}"
    );
    assert_eq!(epochs(&c.history()), vec![(1, "dc-a".to_string())]);
}

/// Two leaders in turn propose `Activate` from the same state `(dc-a, 1)`:
/// the leader drains dc-a after its services die, is cut off from the
/// other witnesses during its lease wait, keeps believing it leads, and at
/// the end of its wait tries to commit `Activate(dc-b, epoch 2)` — again and
/// again, since it cannot; meanwhile the other two elect a new leader that
/// waits again and commits `Activate(dc-b, epoch 2)`. When the partition
/// heals, the deposed leader's proposals come to nothing: one activation
/// per epoch, epochs strictly increasing, one site at epoch 2, and every
/// witness agrees.
#[test]
fn two_leaders_in_turn_proposing_activate_from_stale_state_make_one_epoch_one_site() {
    let Some(mut c) = NetCluster::start("tlp", 25, "") else {
        return;
    };
    c.place_leader(1);
    let lease = c.lease_client(
        "a-mbox",
        LeaseSpec::new("a-mbox", "dc-a", 1, c.endpoints(&[1, 3, 2])),
    );
    wait_until(SETTLE, "the agent's first grants", || {
        (lease.grants().len() >= 3).then_some(())
    });

    c.kill_site("dc-a");
    lease.set_service_healthy(false);
    let remaining = wait_until(FAILOVER_BOUND, "leader 1 to start its lease wait", || {
        let s = c.local_status(1)?;
        let remaining = s["pending_failover"]["remaining_ms"].as_u64()?;
        (remaining >= 1500).then_some(Duration::from_millis(remaining))
    });
    c.nemesis
        .isolate(&NetCluster::host(1))
        .expect("isolate leader 1");
    let wait_over = Instant::now() + remaining;

    // Cut off, witness 1 still leads in its own eyes. Once its wait is over
    // it still wants dc-b active, and dc-a is still active at epoch 1 in its
    // state: the Activate it proposes from (dc-a, 1) does not commit.
    std::thread::sleep(wait_over.saturating_duration_since(Instant::now()) + HOLD_POLL);
    let s1 = c.local_status(1).expect("witness 1's own view");
    assert_eq!(s1["role"], "leader", "{s1:#}");
    assert_eq!(
        (&s1["active_site"], &s1["epoch"]),
        (&Value::from("dc-a"), &Value::from(1)),
        "{s1:#}"
    );
    let wants = s1["decision"].to_string();
    assert!(
        wants.contains("failing over dc-a → dc-b"),
        "its wait over, witness 1 proposes dc-b: {s1:#}"
    );
    assert!(
        s1["pending_failover"]["remaining_ms"]
            .as_u64()
            .is_none_or(|r| r == 0),
        "nothing left to wait for: {s1:#}"
    );

    // The majority side elects its own leader, which waits and activates.
    let s = wait_until(FAILOVER_BOUND, "dc-b active at epoch 2", || {
        let s = c.status_via(&[2, 3])?;
        (s["active_site"] == "dc-b" && s["epoch"] == 2).then_some(s)
    });
    let new = s["leader_id"].as_u64().expect("a leader");
    assert_ne!(new, 1, "{s:#}");
    let s1 = c.local_status(1).expect("witness 1's own view");
    assert_eq!(
        (&s1["role"], &s1["active_site"], &s1["epoch"]),
        (
            &Value::from("leader"),
            &Value::from("dc-a"),
            &Value::from(1)
        ),
        "witness 1 still acts on its stale state: {s1:#}"
    );

    c.nemesis.heal().expect("heal");
    wait_until(
        SETTLE,
        "every witness on (dc-b, 2) under one leader",
        || {
            let views: Vec<Value> = (1..=3)
                .map(|id| c.local_status(id))
                .collect::<Option<_>>()?;
            let agreed = views.iter().all(|v| {
                v["active_site"] == "dc-b"
                    && v["epoch"] == 2
                    && v["leader_id"] == views[0]["leader_id"]
            });
            (agreed && views[0]["leader_id"] != 1).then_some(())
        },
    );
    // Long enough for a leftover proposal to surface: it would be applied
    // right after the heal, when the deposed leader rejoins.
    std::thread::sleep(Duration::from_secs(5));
    let history = c.history();
    assert_eq!(
        epochs(&history),
        vec![(1, "dc-a".to_string()), (2, "dc-b".to_string())],
        "one activation per epoch, one site at epoch 2"
    );
    for id in 1..=3 {
        let v = c.local_status(id).expect("status");
        assert_eq!(
            (&v["active_site"], &v["epoch"]),
            (&Value::from("dc-b"), &Value::from(2))
        );
    }
    drop(lease);
}

/// A routine leader change does not fence the active site (the timer
/// check's `2 × election_timeout_max + rpc_timeout + 2 × renew_interval <
/// lease_ttl` exists for this): the leader is SIGKILLed three times while
/// dc-a's agent renews, and each time the first grant after the crash must
/// arrive before the lease of the last grant before it runs out.
#[test]
fn leader_loss_does_not_fence_the_active_site() {
    let sites = Sites::start();
    let mut c = Cluster::running(3, "", &sites.policy(""));
    c.wait_verdict("dc-a", 1, SETTLE);
    let endpoints: Vec<String> = c.nodes.iter().map(|n| n.addr()).collect();
    let lease = LeaseClient::start(LeaseSpec::new("a-mbox", "dc-a", 1, endpoints));
    let mut lapsed = Vec::new();
    for _ in 0..3 {
        wait_until(SETTLE, "steady renewals", || {
            let g = lease.last_grant()?;
            (g.sent.elapsed() < Duration::from_millis(600)).then_some(())
        });
        let leader = c.wait_for_leader(&[1, 2, 3], SETTLE);
        let killed = Instant::now();
        c.kill(leader);
        let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
        c.wait_for_leader(&rest, SETTLE);
        wait_until(SETTLE, "renewals through the new leader", || {
            (lease.last_grant()?.sent > killed).then_some(())
        });
        let grants = lease.grants();
        let before = grants
            .iter()
            .rev()
            .find(|g| g.sent <= killed)
            .expect("a grant");
        let after = grants.iter().find(|g| g.sent > killed).expect("a grant");
        let gap = after.sent - before.sent;
        eprintln!(
            "leader {leader} killed: last grant {} ms before, next grant {} ms after \
             (through {}): {gap:?} between grants",
            (killed - before.sent).as_millis(),
            (after.sent - killed).as_millis(),
            after.endpoint
        );
        if after.answered >= before.valid_until {
            lapsed.push((leader, gap));
        }
        c.start(leader);
        c.wait_ready(&[1, 2, 3], SETTLE);
    }
    assert!(
        lapsed.is_empty(),
        "the active site's lease ran out during leader changes {lapsed:?}:\n{}",
        lease.describe()
    );
}

/// dc-a's mailstore agent, renewing through dc-a's witness first, then the
/// witness site's, then dc-b's, reporting no healthy service (so the
/// agents' veto plays no part), once it holds its first grants.
fn unhealthy_dc_a_agent(c: &NetCluster) -> LeaseClient {
    let lease = c.lease_client(
        "a-mbox",
        LeaseSpec::new("a-mbox", "dc-a", 1, c.endpoints(&[1, 3, 2])).service_healthy(false),
    );
    wait_until(SETTLE, "the agent's first grants", || {
        (lease.grants().len() >= 3).then_some(())
    });
    lease
}

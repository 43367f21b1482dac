//! `witness agent` over real processes: three witnesses on loopback, fake
//! site services, real agents whose hooks append to a file, and the fake
//! Carbonio CLI recording every call.
//!
//! Bounds are the protocol's timers (lease_ttl 3 s, renew 400 ms,
//! margin 1 s, claim_ttl 3 s) plus generous slack for a loaded machine;
//! nothing here measures performance.

use std::time::Duration;

use serde_json::Value;
use witness_e2e::agents::*;
use witness_e2e::*;

const FAKE: &str = env!("CARGO_BIN_EXE_fake_carbonio");

/// The policy's lease_ttl (Sites::policy).
const LEASE_TTL_MS: u64 = 3_000;
/// The directives' claim TTL in these tests.
const CLAIM_TTL: &str = "3s";
/// Time for agents to connect, renew and run their hooks.
const AGENT_SETTLE: Duration = Duration::from_secs(20);
/// Allowed lateness of a fence past its lease deadline: the agent's tick
/// (100 ms), the fence hook itself, and scheduling on a busy machine.
const FENCE_SLACK_MS: u64 = 1_500;

fn policy(sites: &Sites) -> String {
    sites.policy(&format!(
        "[directives]\nclaim_ttl = \"{CLAIM_TTL}\"\nmax_attempts = 5\n"
    ))
}

fn witnesses(c: &Cluster) -> Vec<String> {
    c.nodes.iter().map(|n| n.addr()).collect()
}

/// Two sites' services, three witnesses with dc-a active at epoch 1, an
/// agent lab, and the witnesses' endpoints (for the agents' files).
fn active_dc_a() -> (Sites, Cluster, AgentLab, Vec<String>) {
    let sites = Sites::start();
    let c = Cluster::running(3, "", &policy(&sites));
    c.wait_verdict("dc-a", 1, SETTLE);
    let lab = AgentLab::new(FAKE);
    let w = witnesses(&c);
    (sites, c, lab, w)
}

/// The current epoch's directive `name` from `witnessctl directives list`.
fn directive(c: &Cluster, name: &str) -> Option<Value> {
    directives(c, false)?
        .into_iter()
        .find(|d| d["name"] == name)
}

/// `witnessctl directives list` (with `--all`: the kept earlier epochs too).
fn directives(c: &Cluster, all: bool) -> Option<Vec<Value>> {
    let mut args = vec!["--timeout", "3s", "--output", "json", "directives", "list"];
    if all {
        args.push("--all");
    }
    let out = c.ctl(&args);
    if !out.status.success() {
        return None;
    }
    let list: Value = serde_json::from_slice(&out.stdout).ok()?;
    list["directives"].as_array().cloned()
}

/// Revive dc-a and have the operator make it active again (retried until a
/// majority sees it up), at epoch 3.
fn operator_fails_back_to_dc_a(sites: &mut Sites, c: &Cluster, extra: &[&str]) {
    sites.revive('a');
    let mut args = vec![
        "failover",
        "--to",
        "dc-a",
        "--reason",
        "back to the home site",
    ];
    args.extend_from_slice(extra);
    wait_until(FAILOVER_BOUND, "the operator's failover to dc-a", || {
        c.ctl(&args).status.success().then_some(())
    });
    c.wait_verdict("dc-a", 3, FAILOVER_BOUND);
}

fn wait_state(agent: &AgentProc, state: &str, epoch: Option<u64>, within: Duration) -> Value {
    wait_until(
        within,
        &format!("agent {} to be {state} at {epoch:?}", agent.name),
        || agent.first(state, epoch),
    )
}

/// A dead site is failed over; the surviving site's mailstore agent runs
/// the promotion exactly once, at the new epoch, with the dead site's
/// mail host; its proxy runs `activate` only after the promotion is done;
/// and the dead site's agents fenced before any agent of the new site
/// started serving (the serving logs, on the shared BOOTTIME clock).
#[test]
fn site_dies_other_site_promotes_once_and_proxy_activates_after_promotion() {
    let (mut sites, c, lab, w) = active_dc_a();
    let mbox_a = lab.start(&AgentSpec::new("mbox-a", "dc-a", "mailstore"), &w);
    let proxy_a = lab.start(&AgentSpec::new("proxy-a", "dc-a", "proxy"), &w);
    let mbox_b = lab.start(&AgentSpec::new("mbox-b", "dc-b", "mailstore"), &w);
    let proxy_b = lab.start(&AgentSpec::new("proxy-b", "dc-b", "proxy"), &w);
    wait_until(AGENT_SETTLE, "dc-a's agents activated at epoch 1", || {
        (!lab.runs_of("activate", "proxy-a").is_empty()
            && !lab.runs_of("activate", "mbox-a").is_empty())
        .then_some(())
    });
    wait_state(&mbox_b, "standby", Some(1), AGENT_SETTLE);
    wait_state(&proxy_b, "standby", Some(1), AGENT_SETTLE);
    assert!(
        lab.runs_of("deactivate", "proxy-b")
            .iter()
            .all(|r| r.epoch == 1),
        "standby agents deactivate at epoch 1"
    );

    sites.kill('a');
    c.wait_verdict("dc-b", 2, FAILOVER_BOUND);
    let done = wait_until(SETTLE, "2/promote done", || {
        directive(&c, "promote").filter(|d| d["state"] == "done")
    });
    assert_eq!(done["agent"], "mbox-b", "{done}");
    let activated = wait_until(SETTLE, "proxy-b activated at epoch 2", || {
        lab.runs_of("activate", "proxy-b")
            .into_iter()
            .find(|r| r.epoch == 2)
    });

    // Exactly one promotion, at epoch 2, of the dead site's mail host.
    let promotions = lab.carbonio_starts("promoteAccounts");
    assert_eq!(promotions.len(), 1, "{promotions:#?}");
    let p = &promotions[0];
    assert_eq!(p["epoch"], "2");
    assert_eq!(p["directive_id"], "2/promote");
    let argv: Vec<&str> = p["argv"]
        .as_array()
        .expect("argv")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        argv,
        [
            "--sync",
            "ha",
            "promoteAccounts",
            "source_mail_host",
            "mbox.dc-a.test",
            "threads",
            "4"
        ]
    );
    let pid = p["pid"].as_u64().expect("pid");
    let end = lab.carbonio_end(pid).expect("the promotion finished");
    assert!(
        activated.realtime_ns > ns(&end["realtime_ns"]),
        "proxy-b activated at {} before the promotion ended at {}",
        activated.realtime_ns,
        ns(&end["realtime_ns"])
    );

    // The old site fenced before the new one served.
    let fenced: Vec<u64> = [&mbox_a, &proxy_a]
        .iter()
        .map(|a| {
            wait_state(a, "fenced", None, SETTLE)["boottime_ms"]
                .as_u64()
                .expect("ms")
        })
        .collect();
    let serving: Vec<u64> = [&mbox_b, &proxy_b]
        .iter()
        .map(|a| {
            wait_state(a, "serving", Some(2), SETTLE)["boottime_ms"]
                .as_u64()
                .expect("ms")
        })
        .collect();
    let last_fence = fenced.iter().max().copied().unwrap_or(0);
    let first_serve = serving.iter().min().copied().unwrap_or(u64::MAX);
    assert!(
        last_fence <= first_serve,
        "dc-a fenced at {fenced:?} but dc-b served from {serving:?}"
    );
    assert!(
        lab.runs_of("activate", "mbox-b")
            .iter()
            .any(|r| r.epoch == 2),
        "the new site's mailstore activates at epoch 2"
    );
}

/// The active site cut off from every witness (all three killed) fences
/// itself within lease_ttl of its last grant, by its own clock; when the
/// witnesses return, the healthy site is granted a lease at the same epoch
/// and unfences.
#[test]
fn site_cut_off_from_witnesses_fences_in_time_and_unfences_when_they_return() {
    let (_sites, mut c, lab, w) = active_dc_a();
    let agents = [
        lab.start(&AgentSpec::new("mbox-a", "dc-a", "mailstore"), &w),
        lab.start(&AgentSpec::new("proxy-a", "dc-a", "proxy"), &w),
    ];
    for a in &agents {
        wait_state(a, "serving", Some(1), AGENT_SETTLE);
    }
    // Leases are renewed every 400 ms; let a few rounds pass.
    std::thread::sleep(Duration::from_secs(1));

    // Every grant was sent before this instant.
    let cut_ms = boottime_ms();
    for id in [1, 2, 3] {
        c.kill(id);
    }
    for a in &agents {
        let fenced = wait_state(a, "fenced", Some(1), SETTLE);
        let at = fenced["boottime_ms"].as_u64().expect("ms");
        assert!(
            at <= cut_ms + LEASE_TTL_MS + FENCE_SLACK_MS,
            "{} fenced at boot+{at} ms, more than lease_ttl after the cut at boot+{cut_ms} ms",
            a.name
        );
        assert!(
            lab.runs_of("fence", &a.name).iter().any(|r| r.epoch == 1),
            "{} ran its fence hook",
            a.name
        );
    }

    for id in [1, 2, 3] {
        c.start(id);
    }
    for a in &agents {
        wait_until(SETTLE, &format!("{} serving again", a.name), || {
            (a.state().as_deref() == Some("serving")).then_some(())
        });
        let states: Vec<String> = a
            .states()
            .iter()
            .filter_map(|s| s["state"].as_str().map(str::to_string))
            .collect();
        assert_eq!(
            states,
            ["starting", "serving", "fenced", "serving"],
            "{}",
            a.name
        );
        wait_until(SETTLE, &format!("{} unfenced", a.name), || {
            lab.runs_of("unfence", &a.name)
                .into_iter()
                .find(|r| r.epoch == 1)
        });
    }
    let s = c.status().expect("status");
    assert_eq!(
        (s["active_site"].as_str(), s["epoch"].as_u64()),
        (Some("dc-a"), Some(1))
    );
}

/// Start dc-b with two mailstore agents whose promotion takes `sleep_ms`,
/// kill dc-a, and wait for the first promotion to start. Returns the
/// cluster, the agents, and the first promotion's start line.
fn failover_with_slow_promotion(
    sites: &mut Sites,
    lab: &AgentLab,
    sleep_ms: u64,
) -> (Cluster, Vec<AgentProc>, Value) {
    let c = Cluster::running(3, "", &policy(sites));
    c.wait_verdict("dc-a", 1, SETTLE);
    let w = witnesses(&c);
    let sleep = sleep_ms.to_string();
    let agents: Vec<AgentProc> = ["mbox-b1", "mbox-b2"]
        .iter()
        .map(|name| {
            let spec =
                AgentSpec::new(name, "dc-b", "mailstore").env("FAKE_CARBONIO_SLEEP_MS", &sleep);
            lab.start(&spec, &w)
        })
        .collect();
    for a in &agents {
        wait_state(a, "standby", Some(1), AGENT_SETTLE);
    }
    sites.kill('a');
    c.wait_verdict("dc-b", 2, FAILOVER_BOUND);
    let first = wait_until(SETTLE, "the first promotion to start", || {
        lab.carbonio_starts("promoteAccounts").into_iter().next()
    });
    (c, agents, first)
}

/// The claimant of a directive dies in the middle of it (SIGKILL of the
/// agent and of its command's process group, as a node crash or the
/// watchdog's reboot would): the claim expires on the leader and the other
/// mailstore agent of the site runs it, at generation 2, never while the
/// first run was alive.
#[test]
fn claimant_killed_mid_directive_claim_expires_and_another_agent_retries() {
    let mut sites = Sites::start();
    let lab = AgentLab::new(FAKE);
    let (c, mut agents, first) = failover_with_slow_promotion(&mut sites, &lab, 6_000);
    let claimant = wait_until(SETTLE, "the promotion's claimant", || {
        directive(&c, "promote")
            .filter(|d| d["state"] == "claimed")
            .and_then(|d| d["agent"].as_str().map(str::to_string))
    });
    let pid = first["pid"].as_u64().expect("pid");
    let group = pgid_of(pid);
    let i = agents
        .iter()
        .position(|a| a.name == claimant)
        .expect("a known agent");
    agents[i].kill();
    signal(-group, libc::SIGKILL);
    let killed_ms = boottime_ms();
    let other = &agents[1 - i];

    let done = wait_until(Duration::from_secs(60), "2/promote done", || {
        directive(&c, "promote").filter(|d| d["state"] == "done")
    });
    assert_eq!(done["agent"].as_str(), Some(other.name.as_str()), "{done}");
    assert_eq!(done["generation"], 2, "{done}");

    let starts = lab.carbonio_starts("promoteAccounts");
    assert_eq!(starts.len(), 2, "{starts:#?}");
    assert!(
        lab.carbonio_end(pid).is_none(),
        "the first run was killed: {:#?}",
        lab.carbonio_calls()
    );
    let second = &starts[1];
    assert_eq!(second["epoch"], "2");
    let second_start_ms = (ns(&second["boottime_ns"]) / 1_000_000) as u64;
    assert!(
        second_start_ms >= killed_ms,
        "the retry started at boot+{second_start_ms} ms, while the first run was alive \
         (killed at boot+{killed_ms} ms)"
    );
    let second_pid = second["pid"].as_u64().expect("pid");
    assert!(lab.carbonio_end(second_pid).is_some(), "the retry finished");
}

/// Resume an agent frozen (SIGSTOP) with its command (pid `pid`, process
/// group `group`) while it held a claim that has since lapsed: the agent
/// first kills its still-stopped command by its own deadline (SIGKILL
/// reaches a stopped process), then its late report of generation 1 is
/// refused, and the command never finishes. The agent is resumed before
/// the command: had the command run first it could finish before the agent
/// runs again — a frozen machine is bounded only by the outside fence, and
/// commands are idempotent by contract.
fn resume_frozen_claimant(lab: &AgentLab, frozen: &AgentProc, pid: u64, group: i64) {
    frozen.resume();
    wait_until(SETTLE, "the frozen agent to kill its command", || {
        frozen
            .log()
            .contains("the command was killed")
            .then_some(())
    });
    signal(-group, libc::SIGCONT);
    wait_until(
        SETTLE,
        "the frozen agent's late report to be refused",
        || {
            frozen
                .log()
                .contains("(generation 1) was ignored")
                .then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        lab.carbonio_end(pid).is_none(),
        "the stale command ran to its end: {:#?}",
        lab.carbonio_calls()
    );
}

/// A claimant frozen (SIGSTOP, with its command) past its claim's expiry
/// loses the directive to the other agent, which completes it; when it
/// resumes, it kills its own command by its own deadline and its late
/// report (generation 1) is refused: the directive stays done once, by
/// generation 2.
#[test]
fn late_report_of_an_older_generation_is_ignored() {
    let mut sites = Sites::start();
    let lab = AgentLab::new(FAKE);
    let (c, agents, first) = failover_with_slow_promotion(&mut sites, &lab, 6_000);
    let claimant = wait_until(SETTLE, "the promotion's claimant", || {
        directive(&c, "promote")
            .filter(|d| d["state"] == "claimed")
            .and_then(|d| d["agent"].as_str().map(str::to_string))
    });
    let pid = first["pid"].as_u64().expect("pid");
    let i = agents
        .iter()
        .position(|a| a.name == claimant)
        .expect("a known agent");
    let frozen = &agents[i];
    let other = &agents[1 - i];
    let group = pgid_of(pid);
    frozen.pause();
    signal(-group, libc::SIGSTOP);

    let done = wait_until(
        Duration::from_secs(60),
        "2/promote done by the other",
        || directive(&c, "promote").filter(|d| d["state"] == "done"),
    );
    assert_eq!(done["agent"].as_str(), Some(other.name.as_str()), "{done}");
    assert_eq!(done["generation"], 2, "{done}");

    resume_frozen_claimant(&lab, frozen, pid, group);
    let starts = lab.carbonio_starts("promoteAccounts");
    assert_eq!(starts.len(), 2, "one run per claim: {starts:#?}");
    let after = directive(&c, "promote").expect("directive");
    assert_eq!(
        (&after["state"], &after["generation"], &after["agent"]),
        (&Value::from("done"), &Value::from(2), &done["agent"]),
        "{after}"
    );
    // The frozen agent's lease lapsed while it was stopped; it fenced on
    // resuming, and serves again with a new grant.
    wait_until(SETTLE, "the frozen agent serving again", || {
        (frozen.state().as_deref() == Some("serving")).then_some(())
    });
    assert!(frozen.first("fenced", Some(2)).is_some());
}

/// SIGTERM stops an agent cleanly (exit 0): a serving agent runs its fence
/// hooks first (once stopped it could no longer fence), a standby agent
/// fences nothing.
#[test]
fn clean_stop_fences_only_a_serving_agent() {
    let (_sites, _c, lab, w) = active_dc_a();
    let mut serving = lab.start(&AgentSpec::new("proxy-a", "dc-a", "proxy"), &w);
    let mut standby = lab.start(&AgentSpec::new("proxy-b", "dc-b", "proxy"), &w);
    wait_state(&serving, "serving", Some(1), AGENT_SETTLE);
    wait_state(&standby, "standby", Some(1), AGENT_SETTLE);

    assert!(serving.terminate(SETTLE), "proxy-a exits 0 on SIGTERM");
    assert!(standby.terminate(SETTLE), "proxy-b exits 0 on SIGTERM");
    assert_eq!(lab.runs_of("fence", "proxy-a").len(), 1);
    assert_eq!(serving.state().as_deref(), Some("fenced"));
    assert!(lab.runs_of("fence", "proxy-b").is_empty());
    assert_eq!(standby.state().as_deref(), Some("standby"));
}

/// The best-effort stop of the losing site's HA module runs on that site's
/// mailstore agent, which holds no lease at the new epoch (it fenced): the
/// claim is accepted without one, the command runs once at the new epoch,
/// and the directive is done.
#[test]
fn best_effort_stop_of_the_old_sites_ha_module_runs_without_a_lease() {
    let mut sites = Sites::start();
    let c = Cluster::running(
        3,
        "",
        &sites.policy(&format!(
            "[directives]\nclaim_ttl = \"{CLAIM_TTL}\"\nmax_attempts = 5\n\
             stop_ha_module_on_old_site = true\n"
        )),
    );
    c.wait_verdict("dc-a", 1, SETTLE);
    let lab = AgentLab::new(FAKE);
    let w = witnesses(&c);
    let mbox_a = lab.start(&AgentSpec::new("mbox-a", "dc-a", "mailstore"), &w);
    let _mbox_b = lab.start(&AgentSpec::new("mbox-b", "dc-b", "mailstore"), &w);
    wait_state(&mbox_a, "serving", Some(1), AGENT_SETTLE);

    sites.kill('a');
    c.wait_verdict("dc-b", 2, FAILOVER_BOUND);
    let done = wait_until(SETTLE, "2/stop-ha-module done", || {
        directive(&c, "stop-ha-module").filter(|d| d["state"] == "done")
    });
    assert_eq!(done["agent"], "mbox-a", "{done}");
    assert_eq!(done["best_effort"], true);
    let stops = lab.carbonio_starts("doStopService");
    assert_eq!(stops.len(), 1, "{stops:#?}");
    assert_eq!(stops[0]["epoch"], "2");
    assert_eq!(stops[0]["directive_id"], "2/stop-ha-module");
    assert!(
        mbox_a.first("fenced", None).is_some() || mbox_a.first("standby", Some(2)).is_some(),
        "the old site's agent no longer serves: {:#?}",
        mbox_a.states()
    );
}

/// The leader is killed right after it committed `Activate` (while the new
/// site's promotion is pending or running): a new leader takes over the
/// ledger, and the promotion still runs exactly once, at the new epoch; the
/// new site's proxy activates once, after it.
#[test]
fn leader_killed_right_after_activate_directives_still_run_once() {
    let (mut sites, mut c, lab, w) = active_dc_a();
    let mbox_b = lab.start(
        &AgentSpec::new("mbox-b", "dc-b", "mailstore").env("FAKE_CARBONIO_SLEEP_MS", "6000"),
        &w,
    );
    let proxy_b = lab.start(&AgentSpec::new("proxy-b", "dc-b", "proxy"), &w);
    wait_state(&mbox_b, "standby", Some(1), AGENT_SETTLE);
    wait_state(&proxy_b, "standby", Some(1), AGENT_SETTLE);

    sites.kill('a');
    c.wait_verdict("dc-b", 2, FAILOVER_BOUND);
    let leader = c.wait_for_leader(&[1, 2, 3], SETTLE);
    c.kill(leader);
    let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    let new_leader = c.wait_for_leader(&rest, SETTLE);
    assert_ne!(new_leader, leader);

    // The promotion (6 s) outlives the election: its claim is renewed
    // across the leader change, and the first claim finishes it.
    let done = wait_until(Duration::from_secs(60), "2/promote done", || {
        directive(&c, "promote").filter(|d| d["state"] == "done")
    });
    assert_eq!(done["agent"], "mbox-b", "{done}");
    assert_eq!(done["generation"], 1, "one claim, one run: {done}");
    let activated = wait_until(SETTLE, "proxy-b activated at epoch 2", || {
        lab.runs_of("activate", "proxy-b")
            .into_iter()
            .find(|r| r.epoch == 2)
    });

    let promotions = lab.carbonio_starts("promoteAccounts");
    assert_eq!(
        promotions.len(),
        1,
        "promoted more than once: {promotions:#?}"
    );
    assert_eq!(promotions[0]["epoch"], "2");
    let end = lab
        .carbonio_end(promotions[0]["pid"].as_u64().expect("pid"))
        .expect("the promotion finished");
    assert!(
        activated.realtime_ns > ns(&end["realtime_ns"]),
        "proxy-b activated before the promotion ended"
    );
    // Give a duplicate the time to show up: another renew cycle or two.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(lab.carbonio_starts("promoteAccounts").len(), 1);
    let activations: Vec<_> = lab
        .runs_of("activate", "proxy-b")
        .into_iter()
        .filter(|r| r.epoch == 2)
        .collect();
    assert_eq!(activations.len(), 1, "{activations:#?}");
}

/// The longest time between two consecutive writes (open or pet) in
/// `events` from `from` on, up to the first magic close or close.
fn longest_pet_gap(events: &[(u64, WatchdogEvent)], from: usize) -> u64 {
    let mut gap = 0;
    let mut last: Option<u64> = None;
    for (at, e) in &events[from..] {
        match e {
            WatchdogEvent::Open | WatchdogEvent::Pet => {
                if let Some(prev) = last {
                    gap = gap.max(at - prev);
                }
                last = Some(*at);
            }
            WatchdogEvent::MagicClose | WatchdogEvent::Closed => break,
        }
    }
    gap
}

/// The watchdog (a FIFO standing in for /dev/watchdog): the active site's
/// agent arms it when it first holds a lease and pets it well within its
/// 1 s timeout; a standby agent never arms it; when the lease runs out the
/// agent stops petting, fences, and disarms with the magic close; after a
/// new lease it arms again; and a SIGKILLed agent leaves it armed (closed
/// without the magic byte: the machine would reboot).
#[test]
fn watchdog_is_petted_only_while_the_lease_is_valid() {
    use WatchdogEvent::*;
    let (_sites, mut c, lab, w) = active_dc_a();
    let dog_a = FakeWatchdog::new(&lab.path("watchdog-a"));
    let dog_b = FakeWatchdog::new(&lab.path("watchdog-b"));
    let mut a = lab.start(
        &AgentSpec::new("mbox-a", "dc-a", "mailstore").watchdog(dog_a.path()),
        &w,
    );
    let b = lab.start(
        &AgentSpec::new("mbox-b", "dc-b", "mailstore").watchdog(dog_b.path()),
        &w,
    );
    wait_state(&a, "serving", Some(1), AGENT_SETTLE);
    wait_state(&b, "standby", Some(1), AGENT_SETTLE);
    std::thread::sleep(Duration::from_secs(3));

    let events = dog_a.events();
    assert_eq!(events.first().map(|e| e.1), Some(Open), "{events:?}");
    let pets = events.iter().filter(|e| e.1 == Pet).count();
    assert!(pets >= 5, "armed and petted while serving: {events:?}");
    let gap = longest_pet_gap(&events, 0);
    assert!(
        gap < 1_000,
        "a {gap} ms gap between pets exceeds the 1 s timeout"
    );
    assert_eq!(
        dog_b.events(),
        vec![],
        "a standby agent never arms its watchdog"
    );

    // The witnesses go away: the lease runs out, the agent stops petting,
    // fences, then disarms deliberately.
    for id in 1..=3 {
        c.kill(id);
    }
    let fenced = wait_state(&a, "fenced", None, SETTLE)["boottime_ms"]
        .as_u64()
        .expect("ms");
    wait_until(SETTLE, "the watchdog's magic close", || {
        dog_a.events().iter().any(|e| e.1 == Closed).then_some(())
    });
    let events = dog_a.events();
    let close = events
        .iter()
        .position(|e| e.1 == MagicClose)
        .unwrap_or_else(|| panic!("disarmed without the magic close: {events:?}"));
    assert_eq!(
        events.get(close + 1).map(|e| e.1),
        Some(Closed),
        "{events:?}"
    );
    let last_pet = events[..close]
        .iter()
        .rev()
        .find(|e| e.1 == Pet)
        .map(|e| e.0)
        .expect("a pet");
    assert!(
        last_pet <= fenced,
        "petted at boot+{last_pet} ms, after the lease ran out and the agent fenced at \
         boot+{fenced} ms"
    );

    // The witnesses return: a new lease arms it again.
    for id in 1..=3 {
        c.start(id);
    }
    let rearmed = wait_until(SETTLE, "the watchdog armed again", || {
        dog_a
            .events()
            .iter()
            .skip(close + 2)
            .position(|e| e.1 == Open)
            .map(|i| i + close + 2)
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(a.state().as_deref(), Some("serving"), "{}", a.log());

    // A dead agent cannot disarm: the device is closed without the magic
    // byte, so the kernel's timer keeps running.
    a.kill();
    wait_until(SETTLE, "the dead agent's watchdog closed", || {
        dog_a.events()[rearmed..]
            .iter()
            .any(|e| e.1 == Closed)
            .then_some(())
    });
    let after = dog_a.events()[rearmed..].to_vec();
    assert!(
        !after.iter().any(|e| e.1 == MagicClose),
        "a killed agent disarmed its watchdog: {after:?}"
    );
    assert!(after.iter().any(|e| e.1 == Pet), "{after:?}");
}

/// A directive of epoch `epoch` named `name`, from `directives list --all`.
fn directive_of_epoch(c: &Cluster, epoch: u64, name: &str) -> Option<Value> {
    directives(c, true)?
        .into_iter()
        .find(|d| d["name"] == name && d["epoch"] == epoch)
}

/// An agent frozen (SIGSTOP, with its command) while it holds the
/// promotion's claim, and resumed only after the operator moved the cluster
/// on to a newer epoch: the old epoch's directive is superseded, the agent
/// kills its command by its own deadline, and its late report is ignored.
#[test]
fn agent_frozen_with_a_claim_resumed_after_a_newer_epoch_changes_nothing() {
    let (mut sites, c, lab, w) = active_dc_a();
    let frozen = lab.start(
        &AgentSpec::new("mbox-b", "dc-b", "mailstore").env("FAKE_CARBONIO_SLEEP_MS", "6000"),
        &w,
    );
    wait_state(&frozen, "standby", Some(1), AGENT_SETTLE);
    sites.kill('a');
    c.wait_verdict("dc-b", 2, FAILOVER_BOUND);
    let first = wait_until(SETTLE, "the promotion to start", || {
        lab.carbonio_starts("promoteAccounts").into_iter().next()
    });
    let pid = first["pid"].as_u64().expect("pid");
    let group = pgid_of(pid);
    frozen.pause();
    signal(-group, libc::SIGSTOP);

    // dc-a comes back and the operator makes it active again: epoch 3.
    operator_fails_back_to_dc_a(&mut sites, &c, &["--accept-data-loss"]);
    let old = wait_until(SETTLE, "2/promote superseded", || {
        directive_of_epoch(&c, 2, "promote").filter(|d| d["state"] == "superseded")
    });

    resume_frozen_claimant(&lab, &frozen, pid, group);
    assert_eq!(lab.carbonio_starts("promoteAccounts").len(), 1);
    let after = directive_of_epoch(&c, 2, "promote").expect("2/promote is kept");
    assert_eq!(after["state"], old["state"], "{after}");
    assert_eq!(after["state"], "superseded", "{after}");
}

/// A healthy agent vetoes the failover of its site: every witness probes
/// dc-a's services down, but dc-a's mailstore agent's health check passes,
/// so nothing fails over and `status` says why; once the check fails, the
/// failover proceeds.
#[test]
fn a_healthy_agent_vetoes_failover_until_its_health_check_fails() {
    let (mut sites, c, lab, w) = active_dc_a();
    let healthy = lab.path("mbox-a.healthy");
    std::fs::write(&healthy, "").expect("health file");
    let a = lab.start(
        &AgentSpec::new("mbox-a", "dc-a", "mailstore").health_file(&healthy),
        &w,
    );
    wait_state(&a, "serving", Some(1), AGENT_SETTLE);

    sites.kill('a');
    let vetoed = wait_until(FAILOVER_BOUND, "the agent's veto in status", || {
        c.status().filter(|s| {
            s["decision"].as_array().is_some_and(|lines| {
                lines
                    .iter()
                    .filter_map(Value::as_str)
                    .any(|d| d.contains("agent mbox-a") && d.contains("(veto)"))
            })
        })
    });
    assert_eq!(vetoed["active_site"], "dc-a", "{vetoed:#}");
    // Detection is done; hold through more than a whole failover's worth
    // of lease wait (lease_ttl × (1+ρ)/(1−ρ) + margin ≈ 4.1 s).
    let until = std::time::Instant::now() + Duration::from_secs(8);
    while std::time::Instant::now() < until {
        if let Some(s) = c.status() {
            assert_eq!(s["active_site"], "dc-a", "vetoed, yet failed over: {s:#}");
            assert_eq!(s["epoch"], 1, "{s:#}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(a.state().as_deref(), Some("serving"), "{}", a.log());

    // The service is really gone: the check fails, the veto ends.
    std::fs::remove_file(&healthy).expect("remove health file");
    c.wait_verdict("dc-b", 2, FAILOVER_BOUND);
    let fenced = wait_state(&a, "fenced", None, SETTLE);
    assert!(fenced["boottime_ms"].as_u64().is_some(), "{fenced}");
}

/// An agent that could not fence within the policy's margin (its
/// fence_timeout is 2 s, the margin 1 s) is refused every lease, with the
/// reason in its log: the leader's lease wait would end before it had
/// stopped serving. A correctly configured agent beside it serves.
#[test]
fn an_agent_slower_to_fence_than_the_margin_is_refused_leases() {
    let (_sites, _c, lab, w) = active_dc_a();
    let slow = lab.start(
        &AgentSpec::new("mbox-a", "dc-a", "mailstore").fence_timeout("2s"),
        &w,
    );
    let good = lab.start(&AgentSpec::new("proxy-a", "dc-a", "proxy"), &w);
    wait_state(&good, "serving", Some(1), AGENT_SETTLE);
    wait_until(AGENT_SETTLE, "the slow agent's refusal in its log", || {
        slow.log().contains("lease margin is 1000 ms").then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(slow.first("serving", None), None, "{}", slow.log());
    assert!(
        lab.runs_of("activate", "mbox-a").is_empty(),
        "the refused agent activated"
    );
}

/// `getAccountStatus` output for one account of `source` with its replica
/// on `destination` at `replica_sequence` (the source is at 1200).
fn account_status(source: &str, destination: &str, replica_sequence: u64) -> String {
    serde_json::json!({"response": {"values": [{
        "accountId": "id-1", "accountName": "alice@example.test",
        "accountMailHost": source, "paused": false, "mailboxId": 7,
        "sequence": 1200, "itemId": 345,
        "replicas": [{
            "accountId": "id-1", "itemId": 345, "sequence": replica_sequence,
            "mailboxId": 9, "destination": destination, "available": true,
            "priority": 10, "canConnectToKafka": true
        }]
    }]}})
    .to_string()
}

/// Failing back to the home site first checks, on its mailstore, that its
/// replicas caught up with the site that was active (`getAccountStatus`):
/// while they lag, the pre-flight fails with the reason in `directives
/// list` and nothing is promoted; once they caught up, an operator retry
/// lets the promotion run, once.
#[test]
fn failback_promotes_only_after_the_replica_preflight_passes() {
    let (mut sites, c, lab, w) = active_dc_a();
    let status = lab.path("account-status.json");
    std::fs::write(
        &status,
        account_status("mbox.dc-b.test", "mbox.dc-a.test", 1100),
    )
    .expect("status file");
    let mbox_a = lab.start(
        &AgentSpec::new("mbox-a", "dc-a", "mailstore")
            .env("FAKE_CARBONIO_STATUS_FILE", &status.display().to_string()),
        &w,
    );
    let mbox_b = lab.start(&AgentSpec::new("mbox-b", "dc-b", "mailstore"), &w);
    wait_state(&mbox_a, "serving", Some(1), AGENT_SETTLE);
    wait_state(&mbox_b, "standby", Some(1), AGENT_SETTLE);

    sites.kill('a');
    c.wait_verdict("dc-b", 2, FAILOVER_BOUND);
    wait_until(SETTLE, "2/promote done", || {
        directive(&c, "promote").filter(|d| d["state"] == "done")
    });
    operator_fails_back_to_dc_a(&mut sites, &c, &[]);

    let lagging = wait_until(Duration::from_secs(60), "3/preflight to fail", || {
        directive(&c, "preflight").filter(|d| {
            d["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("have not caught up"))
        })
    });
    assert_eq!(lagging["agent"], "mbox-a", "{lagging}");
    assert!(
        lab.carbonio_starts("promoteAccounts")
            .iter()
            .all(|p| p["epoch"] != "3"),
        "promoted over lagging replicas: {:#?}",
        lab.carbonio_calls()
    );
    let promote = directive(&c, "promote").expect("3/promote");
    assert_eq!(promote["state"], "pending", "{promote}");

    // The replicas catch up; the operator re-arms the pre-flight if it
    // gave up, and the promotion follows.
    std::fs::write(
        &status,
        account_status("mbox.dc-b.test", "mbox.dc-a.test", 1200),
    )
    .expect("status file");
    let preflight = directive(&c, "preflight").expect("3/preflight");
    if preflight["state"] == "failed" {
        let out = c.ctl(&[
            "directives",
            "retry",
            "3/preflight",
            "--reason",
            "replicas caught up",
        ]);
        assert!(out.status.success(), "retry: {}", text(&out));
    }
    wait_until(Duration::from_secs(60), "3/promote done", || {
        directive(&c, "promote").filter(|d| d["state"] == "done")
    });
    let at_3: Vec<Value> = lab
        .carbonio_starts("promoteAccounts")
        .into_iter()
        .filter(|p| p["epoch"] == "3")
        .collect();
    assert_eq!(at_3.len(), 1, "{at_3:#?}");
    let argv: Vec<&str> = at_3[0]["argv"]
        .as_array()
        .expect("argv")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        argv.windows(2)
            .any(|w| w == ["source_mail_host", "mbox.dc-b.test"]),
        "{argv:?}"
    );
}

/// A `/metrics` text, read by a Prometheus text-format parser.
struct Metrics {
    scrape: prometheus_parse::Scrape,
    text: String,
}

impl Metrics {
    /// Parse `text`, first checking that every line is one the parser
    /// understands (it skips the others silently): a `# HELP`, a `# TYPE`,
    /// or a sample with a numeric value.
    fn parse(text: String) -> Metrics {
        use prometheus_parse::LineInfo;
        for line in text.lines() {
            match LineInfo::parse(line) {
                LineInfo::Doc { .. } | LineInfo::Type { .. } => {}
                LineInfo::Sample { value, .. } if value.parse::<f64>().is_ok() => {}
                other => panic!("not exposition text: {line:?} ({other:?})\n{text}"),
            }
        }
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .expect("parse /metrics");
        Metrics { scrape, text }
    }

    /// The samples of `name` whose labels include `labels`.
    fn samples<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a prometheus_parse::Sample> {
        self.scrape.samples.iter().filter(move |s| {
            s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
    }

    /// The value of the one counter, gauge or untyped sample of `name`
    /// with `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        use prometheus_parse::Value;
        let found: Vec<f64> = self
            .samples(name, labels)
            .filter_map(|s| match s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
                _ => None,
            })
            .collect();
        assert!(
            found.len() <= 1,
            "{name} {labels:?} is ambiguous: {found:?}"
        );
        found.first().copied()
    }

    /// How many observations histogram `name` with `labels` counted (its
    /// `+Inf` bucket), checking that its buckets are cumulative and that
    /// `_count` agrees.
    fn histogram_count(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        use prometheus_parse::Value;
        let sample = self.samples(name, labels).next()?;
        let Value::Histogram(buckets) = &sample.value else {
            panic!("{name} is not a histogram: {sample:?}");
        };
        let counts: Vec<f64> = buckets.iter().map(|b| b.count).collect();
        assert!(
            counts.windows(2).all(|w| w[0] <= w[1]),
            "{name} {labels:?}: buckets not cumulative: {buckets:?}"
        );
        let last = buckets.last().expect("a +Inf bucket");
        assert!(
            last.less_than.is_infinite(),
            "{name}: +Inf last: {buckets:?}"
        );
        let count = self.value(&format!("{name}_count"), labels);
        assert_eq!(count, Some(last.count), "{name}_count {labels:?}");
        Some(last.count)
    }
}

/// `/metrics` of every witness, parsed.
fn scrape_all(c: &Cluster) -> Vec<Metrics> {
    c.nodes
        .iter()
        .map(|n| {
            let (code, body) = http_get(n.http, "/metrics").expect("/metrics answers");
            assert_eq!(code, 200, "{body}");
            Metrics::parse(body)
        })
        .collect()
}

/// `/metrics` on the HTTP port, read by a Prometheus text-format parser,
/// tells what `status` tells: exactly one leader, the verdict and epoch on
/// every witness, and on the leader the serving agent and the leases it
/// granted; each witness's own probes of every target, with their
/// durations. After a failover: the new epoch and active site everywhere,
/// the detection-to-Activate time on the leader that activated, the old
/// site's leases run out, and the promotion reported done.
#[test]
fn metrics_show_the_verdict_leader_agents_and_leases() {
    let (mut sites, c, lab, w) = active_dc_a();
    let a = lab.start(&AgentSpec::new("proxy-a", "dc-a", "proxy"), &w);
    let mbox_b = lab.start(&AgentSpec::new("mbox-b", "dc-b", "mailstore"), &w);
    wait_state(&a, "serving", Some(1), AGENT_SETTLE);
    wait_state(&mbox_b, "standby", Some(1), AGENT_SETTLE);
    std::thread::sleep(Duration::from_secs(1));

    let before = scrape_all(&c);
    let leaders: Vec<&Metrics> = before
        .iter()
        .filter(|m| m.value("witness_raft_is_leader", &[]) == Some(1.0))
        .collect();
    assert_eq!(leaders.len(), 1, "exactly one leader");
    for m in &before {
        let t = &m.text;
        assert_eq!(m.value("witness_verdict_epoch", &[]), Some(1.0), "{t}");
        let active = |site| m.value("witness_verdict_active", &[("site", site)]);
        assert_eq!(active("dc-a"), Some(1.0), "{t}");
        assert_eq!(active("dc-b"), Some(0.0), "{t}");
        assert_eq!(m.value("witness_ready", &[]), Some(1.0), "{t}");
        for site in ["dc-a", "dc-b"] {
            for target in ["mailstore", "proxy"] {
                let labels = [("site", site), ("target", target), ("health", "up")];
                assert_eq!(
                    m.value("witness_probe_target_health", &labels),
                    Some(1.0),
                    "{t}"
                );
                let labels = [("site", site), ("target", target)];
                let probes = m.histogram_count("witness_probe_duration_seconds", &labels);
                assert!(probes.is_some_and(|n| n > 0.0), "{t}");
                let ok = [("site", site), ("target", target), ("result", "success")];
                let ok = m.value("witness_probe_results_total", &ok);
                assert!(ok.is_some_and(|n| n > 0.0), "{t}");
            }
        }
    }
    let leader = leaders[0];
    let labels = [
        ("agent", "proxy-a"),
        ("site", "dc-a"),
        ("role", "proxy"),
        ("state", "serving"),
    ];
    assert_eq!(
        leader.value("witness_agent_state", &labels),
        Some(1.0),
        "{}",
        leader.text
    );
    let granted = [("site", "dc-a"), ("outcome", "granted")];
    let granted = leader.value("witness_lease_renewals_total", &granted);
    assert!(granted.is_some_and(|n| n >= 1.0), "{}", leader.text);

    sites.kill('a');
    c.wait_verdict("dc-b", 2, FAILOVER_BOUND);
    wait_until(SETTLE, "2/promote done", || {
        directive(&c, "promote").filter(|d| d["state"] == "done")
    });
    let after = scrape_all(&c);
    let total = |name: &str, labels: &[(&str, &str)]| -> f64 {
        after.iter().filter_map(|m| m.value(name, labels)).sum()
    };
    for m in &after {
        let t = &m.text;
        assert_eq!(m.value("witness_verdict_epoch", &[]), Some(2.0), "{t}");
        let active = |site| m.value("witness_verdict_active", &[("site", site)]);
        assert_eq!(active("dc-a"), Some(0.0), "{t}");
        assert_eq!(active("dc-b"), Some(1.0), "{t}");
        let labels = [
            ("site", "dc-a"),
            ("target", "mailstore"),
            ("health", "down"),
        ];
        assert_eq!(
            m.value("witness_probe_target_health", &labels),
            Some(1.0),
            "{t}"
        );
        let attempts = |result| {
            let labels = [
                ("site", "dc-a"),
                ("target", "mailstore"),
                ("result", result),
            ];
            m.value("witness_probe_results_total", &labels)
                .unwrap_or(0.0)
        };
        let failed = attempts("failure") + attempts("timeout");
        assert!(failed > 0.0, "{t}");
        let done = m.value("witness_directives", &[("state", "done")]);
        assert!(done.is_some_and(|n| n >= 1.0), "{t}");
    }

    // The leader that activated dc-b timed it, from its decision to the
    // commit, within the failover bound; the others did not.
    let cause = [("cause", "site_down")];
    let activators: Vec<&Metrics> = after
        .iter()
        .filter(|m| {
            m.histogram_count("witness_failover_detection_to_activate_seconds", &cause)
                .is_some_and(|n| n >= 1.0)
        })
        .collect();
    assert_eq!(activators.len(), 1, "one leader activated dc-b");
    let activator = activators[0];
    let t = &activator.text;
    let took = activator
        .value("witness_failover_detection_to_activate_seconds_sum", &cause)
        .expect("_sum");
    let waited = activator
        .value("witness_failover_lease_wait_seconds_sum", &cause)
        .expect("_sum");
    assert!(
        took > 0.0 && took <= FAILOVER_BOUND.as_secs_f64() && waited <= took,
        "detection to Activate {took} s, lease wait {waited} s: {t}"
    );
    assert_eq!(
        activator.histogram_count("witness_failover_lease_wait_seconds", &cause),
        Some(1.0),
        "{t}"
    );

    // dc-a's leases ran out unrenewed once it was drained; mbox-b reported
    // the promotion done to the leader.
    assert!(
        total("witness_lease_expiries_total", &[("site", "dc-a")]) >= 1.0,
        "{t}"
    );
    let done = [("site", "dc-b"), ("role", "mailstore"), ("outcome", "done")];
    assert!(
        total("witness_directive_reports_total", &done) >= 1.0,
        "{t}"
    );
}

/// The policy names a command; only the agent files say what it runs. An
/// agent whose file does not define it refuses the directive and runs
/// nothing (the directive shows the refusal); one that does runs its own
/// argv.
#[test]
fn a_policy_command_runs_only_what_an_agents_own_file_defines() {
    let mut sites = Sites::start();
    let c = Cluster::running(
        3,
        "",
        &sites.policy(&format!(
            "[directives]\nclaim_ttl = \"{CLAIM_TTL}\"\nmax_attempts = 5\n\
             [[directives.command]]\nname = \"notify\"\nrole = \"mailstore\"\n\
             after = [\"promote\"]\n"
        )),
    );
    c.wait_verdict("dc-a", 1, SETTLE);
    let lab = AgentLab::new(FAKE);
    let w = witnesses(&c);
    let ran = lab.path("notify-ran");
    // The policy cannot say what "notify" runs: mbox-b's file does not
    // define it at all.
    let _mbox_a = lab.start(&AgentSpec::new("mbox-a", "dc-a", "mailstore"), &w);
    let mbox_b = lab.start(&AgentSpec::new("mbox-b", "dc-b", "mailstore"), &w);
    wait_state(&mbox_b, "standby", Some(1), AGENT_SETTLE);
    sites.kill('a');
    c.wait_verdict("dc-b", 2, FAILOVER_BOUND);
    let refused = wait_until(SETTLE, "2/notify refused by mbox-b", || {
        directive(&c, "notify").filter(|d| {
            d["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("defines no [[command]] named \"notify\""))
        })
    });
    assert_eq!(refused["state"], "failed", "{refused}");
    assert!(!ran.exists(), "nothing ran on mbox-b");
    drop(mbox_b);

    // A mailstore agent of dc-b whose own file defines "notify" runs it.
    let ran_text = ran.display().to_string();
    let _mbox_b2 = lab.start(
        &AgentSpec::new("mbox-b2", "dc-b", "mailstore").command(
            "notify",
            &[
                "/bin/sh",
                "-c",
                &format!("echo $WITNESS_DIRECTIVE_ID > {ran_text}"),
            ],
        ),
        &w,
    );
    let out = c.ctl(&[
        "directives",
        "retry",
        "2/notify",
        "--reason",
        "mbox-b2 defines it",
    ]);
    assert!(out.status.success(), "retry: {}", text(&out));
    let done = wait_until(FAILOVER_BOUND, "2/notify done by mbox-b2", || {
        directive(&c, "notify").filter(|d| d["state"] == "done")
    });
    assert_eq!(done["agent"], "mbox-b2", "{done}");
    let written = std::fs::read_to_string(&ran).expect("mbox-b2 ran its own command");
    assert_eq!(written.trim(), "2/notify");
}

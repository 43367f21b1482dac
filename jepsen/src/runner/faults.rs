//! The nemeses the runner schedules: each starts one fault on the
//! [`Deployment`] and knows how to end it exactly.
//!
//! | name | fault |
//! | --- | --- |
//! | `partition-site` | one data site (witness, services, agents) cut off from everyone else; the active one 70 % of the time |
//! | `leader-with-site` | the Raft leader and the active site's mail hosts cut off together from everyone else: its agents still reach the old leader, which can no longer lead |
//! | `bridge` | dc-a and dc-b cut from each other; dc-c, the router and ops see both |
//! | `isolate-witness` | one random witness cut off from every host |
//! | `isolate-leader` | the Raft leader cut off from every host |
//! | `one-way` | half the time the leader hears nobody (the other witnesses' packets to it dropped) while its own packets arrive; half the time the reverse: it hears everyone, and nothing it sends arrives |
//! | `kill-witness` | SIGKILL one random witness; restarted from its data dir at the end |
//! | `kill-leader` | SIGKILL the leader; restarted at the end |
//! | `kill-majority` | SIGKILL two witnesses (the leader and one other); restarted at the end |
//! | `pause-leader` | SIGSTOP the leader witness; SIGCONT at the end |
//! | `pause-agent` | SIGSTOP the agent of the active site's proxy or mailstore; SIGCONT at the end |
//! | `loss` | 20 % random packet loss on every witness's link |
//! | `latency` | 80 ms ± 40 ms added to every witness-to-witness connection, both ways |
//! | `site-death` | the active site's machines die (health services, fenced services, agents); revived at the end |
//! | `flapping` | the bridge partition switched on and off every 0.5–1.5 s |
//! | `clock` | a follower witness restarted with its clocks 1–30 s further ahead; for the whole run, every witness's clock runs fast and every agent's slow, by up to 0.8 × `max_drift` |
//! | `clock-beyond` | **expected to fail**: the agents of dc-a run at half speed (50 × `max_drift`) for the whole run; the fault cuts off the active site |
//! | `consul-lies` | Consul lies about the active site (below); the truth restored at the end |
//!
//! `partition-site` also fails the cut-off site's nodes in Consul's view,
//! as the server quorum outside it would ([`ConsulLab`](crate::lab::consul::ConsulLab)).
//!
//! A fault that loses the active site (`partition-site` aimed at it,
//! `leader-with-site`, `site-death`, `clock-beyond`) or lies about it
//! (`consul-lies`) is held past the worst-case failover
//! ([`Started::past_failover`]): the failover it calls for, or the one a
//! broken build would make, happens while it lasts, every time. The others
//! are held 3–8 s.
//!
//! # `consul-lies`
//!
//! The policy's `consul.mode` is `corroborate`: Consul may veto a "down"
//! (a target whose service instance Consul reports fully passing is not
//! down), never make one (DESIGN.md §3.2). The lies, each about the active
//! site, named by the first word of the nemesis event's `detail`:
//!
//! | lie | what Consul says | truth | what the product must do |
//! | --- | --- | --- | --- |
//! | `services-critical` | the site's service checks critical | the services answer | nothing: Consul alone never makes a down |
//! | `nodes-failed` | the site's nodes failed (`serfHealth` critical) | the machines run | nothing, likewise |
//! | `passing-while-dead` | the site's nodes alive, every check passing | the site's machines died (as `site-death`) | no failover while the lie lasts: the veto is the product's promise in `corroborate` |
//!
//! The first two are what a build that trusted Consul's word would fail
//! over on; the `failover_cause` checker calls any such failover a
//! violation. The third is a real death, so a failover during it has a
//! cause (`failover_cause` accepts it), yet the veto should hold it back;
//! `liveness` does not demand a replacement for it (it keys on
//! `site-death` only). Each lie is held as long as a site death (the worst
//! case failover and more), so a build that acted on it would have done so
//! in time to be seen.
//!
//! # Clocks
//!
//! Every clock runs through the harness's clock shim
//! ([`crate::nemesis::clock`]). Drift is a property of a machine, so a run
//! with `clock` among its nemeses starts every witness and agent on a
//! skewed clock for the whole run ([`clock_rates`]): witnesses fast and
//! agents slow, the orientation DESIGN.md §3.4 names as the worst (the
//! agent believes its lease lasts longer, the leader's wait ends sooner),
//! each by a seeded amount up to 0.8 × `max_drift`. Each `clock` fault then
//! moves one clock, while the process runs or across a restart:
//!
//! | variant | what | the protocol's answer |
//! | --- | --- | --- |
//! | restart ahead | a follower witness killed and started again with all its clocks 1–30 s ahead (a machine rebooted with its clock set forward) | nothing depends on a clock across a restart |
//! | follower leap | a running follower witness's monotonic and boot clocks leap 1–30 s | its timers fire early: an election at worst |
//! | agent leap | a running agent's monotonic and boot clocks leap 1–30 s, as a frozen host sees after it resumes | its lease looks expired: it fences at once, never later |
//! | wall step | the leader's wall clock half the time, else any process's, stepped by 2 s–10 min either way while it runs; it stays wrong through the faults that follow, until the heal steps it back | safety never reads the wall clock; the anti-flap and failback windows must not stall on it |
//!
//! The leader's monotonic clock is never moved: a forward leap of it during
//! its lease wait is a drift beyond any bound, the assumption (d) of
//! DESIGN.md that `clock-beyond` shows matters. (Which witness leads is
//! read just before; a leader change within those milliseconds is the one
//! way the harness could break the assumption itself.)
//! `clock-beyond` is not part of the mix nor of `test-all`: it is run by
//! name, and a valid result would mean the checkers miss a real split
//! brain.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;

use super::deploy::{AGENTS, Deployment};
use crate::Host;
use crate::lab::consul::{ConsulLab, Lie};
use crate::lab::netcluster::{GRPC_PORT, NetCluster};
use crate::nemesis::Latency;

/// Every nemesis, in `test-all` order.
pub const ALL: [&str; 17] = [
    "partition-site",
    "leader-with-site",
    "bridge",
    "isolate-witness",
    "isolate-leader",
    "one-way",
    "kill-witness",
    "kill-leader",
    "kill-majority",
    "pause-leader",
    "pause-agent",
    "loss",
    "latency",
    "site-death",
    "flapping",
    "clock",
    "consul-lies",
];

/// The experiment beyond the protocol's assumptions, run only by name.
pub const EXPECTED_FAILURES: [&str; 1] = ["clock-beyond"];

/// The lab policy's `max_drift`.
const MAX_DRIFT: f64 = super::MAX_DRIFT;

/// The rate of each process that runs on a skewed clock, for a run with
/// `nemeses`: see the module doc.
pub fn clock_rates(nemeses: &[String], rng: &mut StdRng) -> BTreeMap<String, f64> {
    let mut rates = BTreeMap::new();
    if nemeses.iter().any(|n| n == "clock") {
        for (_, host, _) in crate::lab::netcluster::WITNESSES {
            rates.insert(
                host.to_string(),
                1.0 + MAX_DRIFT * 0.8 * rng.random_range(0.0..1.0),
            );
        }
        for (name, ..) in AGENTS {
            rates.insert(
                name.to_string(),
                1.0 - MAX_DRIFT * 0.8 * rng.random_range(0.0..1.0),
            );
        }
    }
    if nemeses.iter().any(|n| n == "clock-beyond") {
        for (name, _, site, ..) in AGENTS {
            if site == "dc-a" {
                rates.insert(name.to_string(), BEYOND_RATE);
            }
        }
    }
    rates
}

/// `clock-beyond`'s rate for dc-a's agents.
const BEYOND_RATE: f64 = 0.5;

/// A fault in force, with what its end must undo.
pub enum Active {
    /// iptables rules or proxies: healed by the nemesis.
    Net,
    /// A site cut off: the network healed, then the site back in Consul's
    /// view.
    Partitioned(String),
    /// Consul lies about `site`; `killed`: its machines died too.
    ConsulLie {
        site: String,
        killed: bool,
    },
    Killed(Vec<u64>),
    Paused(Vec<u64>),
    PausedAgent(String),
    SiteDeath(String),
    /// A clock moved: nothing to undo at the fault's end (monotonic clocks
    /// only go forward; a stepped wall clock stays wrong until the heal).
    Clock,
    /// The bridge partition, toggled while held; `on` says whether it is
    /// in force now.
    Flapping {
        on: bool,
    },
}

/// The leader, as the witnesses themselves say (`status --local` inside
/// each witness's host, so a partition does not hide it); a random witness
/// when none says so.
pub fn leader(d: &Deployment, rng: &mut StdRng) -> u64 {
    for id in 1..=3 {
        if d.cluster
            .local_status(id)
            .is_some_and(|s| s["role"] == "leader")
        {
            return id;
        }
    }
    rng.random_range(1..=3)
}

/// The active site, as the committed verdict says, if a witness answers.
pub fn active_site(d: &Deployment) -> Option<String> {
    d.cluster
        .status()
        .and_then(|s| s["active_site"].as_str().map(str::to_string))
}

/// The other data site.
fn other_site(site: &str) -> String {
    if site == "dc-a" { "dc-b" } else { "dc-a" }.to_string()
}

fn witness_name(id: u64) -> String {
    NetCluster::host(id).as_str().to_string()
}

/// The leader every witness names, when they all answer and agree.
fn agreed_leader(d: &Deployment) -> Option<u64> {
    let mut leader = None;
    for id in 1..=3 {
        let s = d.cluster.local_status(id)?;
        let named = s["leader_id"].as_u64().filter(|l| *l != 0)?;
        if leader.is_some_and(|l| l != named) {
            return None;
        }
        leader = Some(named);
    }
    leader
}

/// Cut `site` off from every other host; Consul's quorum, outside it,
/// sees its nodes fail (healed by [`Active::Partitioned`]).
fn partition_site(d: &mut Deployment, site: &str) -> crate::Result<()> {
    let inside = d.cluster.site(site);
    cut_off(d, inside, site)
}

/// Cut the hosts `inside` (which hold `site`'s machines) off from every
/// other host; Consul's quorum, outside, sees `site`'s nodes fail.
fn cut_off(d: &mut Deployment, inside: Vec<Host>, site: &str) -> crate::Result<()> {
    let rest: Vec<Host> = d
        .cluster
        .net
        .hosts()
        .into_iter()
        .filter(|h| !inside.contains(h))
        .collect();
    d.cluster.nemesis.partition(vec![inside, rest])?;
    d.consul.cut_off(site);
    Ok(())
}

/// The active site, or dc-a (the home site) when no witness answers.
fn active_or_home(d: &Deployment) -> String {
    active_site(d).unwrap_or_else(|| "dc-a".into())
}

/// A fault just started.
pub struct Started {
    /// What it hits, for the history.
    pub targets: Vec<String>,
    /// What exactly it does, when its kind does not say it all.
    pub detail: Option<String>,
    /// What its end must undo.
    pub active: Active,
    /// It calls for a failover (the active site lost) or provokes one a
    /// correct build must refuse: held past the worst-case failover, so
    /// the failover happens, or would have, while it lasts.
    pub past_failover: bool,
}

/// The `clock` fault, one of (see the module doc): a follower witness
/// restarted with its clocks ahead, a running process's wall clock
/// stepped, a running agent's clocks leaping forward, a running follower
/// witness's clocks leaping forward.
fn clock_fault(d: &mut Deployment, rng: &mut StdRng) -> crate::Result<Started> {
    let started = |targets: Vec<String>, detail: String, active: Active| Started {
        targets,
        detail: Some(detail),
        active,
        past_failover: false,
    };
    let by = Duration::from_millis(rng.random_range(1_000..30_000));
    match rng.random_range(0..4) {
        0 | 3 => {
            let restart = rng.random_bool(0.5);
            let Some(id) = skewed_follower(d, rng) else {
                // No agreed leader: a jump could hit a leader waiting out
                // leases, beyond assumption (d); skip it.
                return Ok(started(
                    Vec::new(),
                    "no follower every witness agrees on: no clock moved".into(),
                    Active::Clock,
                ));
            };
            let host = witness_name(id);
            if restart {
                d.restart_witness_ahead(id, &host, by);
            } else if let Some(c) = d.clocks.get_mut(&host) {
                c.jump(by);
            }
            let clock = &d.clocks[&host];
            let how = if restart {
                "restarted with its clocks"
            } else {
                "running: its monotonic and boot clocks leapt"
            };
            let detail = format!(
                "{host} {how} {:.3} s further ahead (rate {:.4}×, {:.3} s ahead in all)",
                by.as_secs_f64(),
                clock.rate(),
                clock.offset().as_secs_f64()
            );
            Ok(started(vec![host], detail, Active::Clock))
        }
        1 => {
            // The leader half the time: its engine times the anti-flap and
            // failback windows.
            let names: Vec<String> = d.clocks.keys().cloned().collect();
            let name = match agreed_leader(d) {
                Some(l) if rng.random_bool(0.5) => witness_name(l),
                _ => names[rng.random_range(0..names.len())].clone(),
            };
            let mut by_ms = rng.random_range(2_000..600_000);
            if rng.random_bool(0.5) {
                by_ms = -by_ms;
            }
            if let Some(c) = d.clocks.get_mut(&name) {
                c.step_wall(by_ms);
            }
            let detail = format!(
                "{name}'s wall clock stepped {}{:.3} s while it runs ({:+.3} s off in all, until \
                 the heal)",
                if by_ms > 0 { "+" } else { "−" },
                by_ms.unsigned_abs() as f64 / 1000.0,
                d.clocks[&name].wall_offset_ms() / 1000.0
            );
            Ok(started(vec![name], detail, Active::Clock))
        }
        _ => {
            let names: Vec<&str> = AGENTS
                .iter()
                .map(|a| a.0)
                .filter(|n| d.clocks.contains_key(*n))
                .collect();
            let name = names[rng.random_range(0..names.len())].to_string();
            if let Some(c) = d.clocks.get_mut(&name) {
                c.jump(by);
            }
            let detail = format!(
                "{name} running: its monotonic and boot clocks leapt {:.3} s ahead, as after a \
                 freeze (it must fence at once if its lease ran out)",
                by.as_secs_f64()
            );
            Ok(started(vec![name], detail, Active::Clock))
        }
    }
}

/// A witness on a skewed clock that every witness agrees is a follower.
fn skewed_follower(d: &Deployment, rng: &mut StdRng) -> Option<u64> {
    let l = agreed_leader(d)?;
    let candidates: Vec<u64> = (1..=3)
        .filter(|id| *id != l && d.clocks.contains_key(&witness_name(*id)))
        .collect();
    (!candidates.is_empty()).then(|| candidates[rng.random_range(0..candidates.len())])
}

/// Start fault `kind`.
pub fn start(kind: &str, d: &mut Deployment, rng: &mut StdRng) -> crate::Result<Started> {
    if kind == "consul-lies" {
        return Ok(consul_lies(d, rng));
    }
    if kind == "clock" {
        return clock_fault(d, rng);
    }
    if kind == "one-way" {
        let l = leader(d, rng);
        let deaf = rng.random_bool(0.5);
        for other in (1..=3).filter(|o| *o != l) {
            let (from, to) = if deaf { (other, l) } else { (l, other) };
            d.cluster
                .nemesis
                .one_way(&NetCluster::host(from), &NetCluster::host(to))?;
        }
        let detail = if deaf {
            "the leader receives nothing from the other witnesses; its packets arrive"
        } else {
            "nothing the leader sends to the other witnesses arrives; it receives theirs"
        };
        return Ok(Started {
            targets: vec![witness_name(l)],
            detail: Some(detail.into()),
            active: Active::Net,
            past_failover: false,
        });
    }
    if kind == "clock-beyond" {
        let site = active_or_home(d);
        partition_site(d, &site)?;
        let slow: Vec<String> = d
            .clocks
            .iter()
            .filter(|(_, c)| c.rate() < 1.0 - MAX_DRIFT)
            .map(|(n, c)| format!("{n} at {}×", c.rate()))
            .collect();
        let detail = format!(
            "{site} cut off; clocks beyond max_drift {MAX_DRIFT}: {}",
            slow.join(", ")
        );
        return Ok(Started {
            targets: vec![site.clone()],
            detail: Some(detail),
            active: Active::Partitioned(site),
            past_failover: true,
        });
    }
    let hosts = |site: &str, d: &Deployment| d.cluster.site(site);
    let (targets, active, past_failover) = match kind {
        "partition-site" => {
            let active = active_or_home(d);
            let (site, past) = if rng.random_bool(0.7) {
                (active, true)
            } else {
                (other_site(&active), false)
            };
            partition_site(d, &site)?;
            (vec![site.clone()], Active::Partitioned(site), past)
        }
        "leader-with-site" => {
            let l = leader(d, rng);
            let site = active_or_home(d);
            let mut inside: Vec<Host> = AGENTS
                .iter()
                .filter(|a| a.2 == site)
                .map(|a| Host::from(a.1))
                .collect();
            inside.push(NetCluster::host(l));
            cut_off(d, inside, &site)?;
            (
                vec![witness_name(l), site.clone()],
                Active::Partitioned(site),
                true,
            )
        }
        "bridge" => {
            let groups = vec![hosts("dc-a", d), hosts("dc-b", d)];
            d.cluster.nemesis.partition(groups)?;
            (vec!["dc-a".into(), "dc-b".into()], Active::Net, false)
        }
        "isolate-witness" | "isolate-leader" => {
            let id = if kind == "isolate-leader" {
                leader(d, rng)
            } else {
                rng.random_range(1..=3)
            };
            d.cluster.nemesis.isolate(&NetCluster::host(id))?;
            (vec![witness_name(id)], Active::Net, false)
        }
        "kill-witness" | "kill-leader" | "kill-majority" => {
            let l = leader(d, rng);
            let ids: Vec<u64> = match kind {
                "kill-witness" => vec![rng.random_range(1..=3)],
                "kill-leader" => vec![l],
                _ => {
                    let others: Vec<u64> = (1..=3).filter(|o| *o != l).collect();
                    vec![l, others[rng.random_range(0..others.len())]]
                }
            };
            for id in &ids {
                d.cluster.crash(*id);
            }
            (
                ids.iter().map(|i| witness_name(*i)).collect(),
                Active::Killed(ids),
                false,
            )
        }
        "pause-leader" => {
            let l = leader(d, rng);
            d.cluster.pause(l);
            (vec![witness_name(l)], Active::Paused(vec![l]), false)
        }
        "pause-agent" => {
            let site = active_or_home(d);
            let names: Vec<&str> = AGENTS.iter().filter(|a| a.2 == site).map(|a| a.0).collect();
            let name = names[rng.random_range(0..names.len())].to_string();
            d.pause_agent(&name);
            (vec![name.clone()], Active::PausedAgent(name), false)
        }
        "loss" => {
            let ws: Vec<Host> = (1..=3).map(NetCluster::host).collect();
            d.cluster.nemesis.loss(&ws, 0.2)?;
            (
                ws.iter().map(|h| h.as_str().to_string()).collect(),
                Active::Net,
                false,
            )
        }
        "latency" => {
            let latency = Latency {
                delay: Duration::from_millis(80),
                jitter: Duration::from_millis(40),
            };
            for from in 1..=3 {
                for to in (1..=3).filter(|t| *t != from) {
                    d.cluster.nemesis.latency(
                        &NetCluster::host(from),
                        &NetCluster::host(to),
                        GRPC_PORT,
                        latency,
                    )?;
                }
            }
            ((1..=3).map(witness_name).collect(), Active::Net, false)
        }
        "site-death" => {
            // The active site, mostly: that is the death a failover must
            // answer; sometimes the standby, which must change nothing.
            let active = active_or_home(d);
            let site = if rng.random_bool(0.8) {
                active
            } else {
                other_site(&active)
            };
            d.kill_site(&site);
            // The standby's death too: a failover it provoked would be seen.
            (vec![site.clone()], Active::SiteDeath(site), true)
        }
        "flapping" => {
            let groups = vec![hosts("dc-a", d), hosts("dc-b", d)];
            d.cluster.nemesis.partition(groups)?;
            (
                vec!["dc-a".into(), "dc-b".into()],
                Active::Flapping { on: true },
                false,
            )
        }
        other => {
            return Err(crate::Error::InvalidSpec(format!(
                "unknown nemesis {other:?}; known: {}, and the expected failure {}",
                ALL.join(", "),
                EXPECTED_FAILURES.join(", ")
            )));
        }
    };
    Ok(Started {
        targets,
        detail: None,
        active,
        past_failover,
    })
}

/// `consul-lies`: one of the lies of the module doc about the active site,
/// the alive-site lies twice as often as the dead-site one.
fn consul_lies(d: &mut Deployment, rng: &mut StdRng) -> Started {
    let site = active_or_home(d);
    let nodes: Vec<String> = ConsulLab::machines(&site)
        .iter()
        .map(|(node, service)| format!("{service} on {node}"))
        .collect();
    let nodes = nodes.join(", ");
    let (lie, detail) = match rng.random_range(0..5) {
        0 | 1 => (
            Lie::ServicesCritical(site.clone()),
            format!(
                "services-critical: Consul reports {site}'s services ({nodes}) critical while \
                 they answer"
            ),
        ),
        2 | 3 => (
            Lie::NodesFailed(site.clone()),
            format!("nodes-failed: Consul reports {site}'s nodes ({nodes}) failed while they run"),
        ),
        _ => (
            Lie::Passing(site.clone()),
            format!(
                "passing-while-dead: {site}'s machines die while Consul reports them ({nodes}) \
                 alive and passing"
            ),
        ),
    };
    let killed = matches!(lie, Lie::Passing(_));
    // The lie first: Consul never tells the truth about this death.
    d.consul.lie(lie);
    if killed {
        d.kill_site(&site);
    }
    Started {
        targets: vec![site.clone()],
        detail: Some(detail),
        active: Active::ConsulLie { site, killed },
        past_failover: true,
    }
}

/// While a fault is held: flapping toggles its partition; the rest wait.
/// Returns how long to sleep before the next call.
pub fn tick(active: &mut Active, d: &mut Deployment, rng: &mut StdRng) -> Duration {
    if let Active::Flapping { on } = active {
        let r = if *on {
            d.cluster.nemesis.heal()
        } else {
            let groups = vec![d.cluster.site("dc-a"), d.cluster.site("dc-b")];
            d.cluster.nemesis.partition(groups)
        };
        match r {
            Ok(()) => *on = !*on,
            Err(e) => eprintln!("jepsen: flapping: {e}"),
        }
        return Duration::from_millis(rng.random_range(500..1500));
    }
    Duration::from_millis(200)
}

/// End the fault exactly.
pub fn stop(active: Active, d: &mut Deployment) {
    match active {
        Active::Clock => {}
        Active::Net | Active::Flapping { .. } => {
            if let Err(e) = d.cluster.nemesis.heal() {
                eprintln!("jepsen: heal: {e}");
            }
        }
        Active::Partitioned(site) => {
            if let Err(e) = d.cluster.nemesis.heal() {
                eprintln!("jepsen: heal: {e}");
            }
            d.consul.reconnected(&site);
        }
        Active::ConsulLie { site, killed } => {
            if killed {
                d.revive_site(&site);
            }
            d.consul.truth();
        }
        Active::Killed(ids) => {
            for id in ids {
                d.cluster.restart(id);
            }
        }
        Active::Paused(ids) => {
            for id in ids {
                d.cluster.resume(id);
            }
        }
        Active::PausedAgent(name) => d.resume_agent(&name),
        Active::SiteDeath(site) => d.revive_site(&site),
    }
}

/// Undo anything that may still be in force, whatever happened: heal the
/// network, make Consul tell the truth, resume and restart every witness
/// and agent, revive both sites.
pub fn heal_all(d: &mut Deployment) {
    if let Err(e) = d.cluster.nemesis.heal() {
        eprintln!("jepsen: heal: {e}");
    }
    d.consul.heal();
    for id in 1..=3 {
        d.cluster.resume(id);
        if !d.cluster.is_running(id) {
            d.cluster.restart(id);
        }
    }
    for (name, ..) in AGENTS {
        d.resume_agent(name);
    }
    for site in ["dc-a", "dc-b"] {
        d.revive_site(site);
    }
    // Wall clocks back to the truth, as NTP would step them.
    for c in d.clocks.values_mut() {
        c.step_wall(-(c.wall_offset_ms() as i64));
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// With `clock`, every witness runs fast and every agent slow, within
    /// 0.8 × max_drift; without it nothing is skewed; `clock-beyond` puts
    /// dc-a's agents far outside the bound and leaves the rest alone.
    #[test]
    fn clock_rates_stay_inside_the_bound_in_the_worst_orientation() {
        for seed in 0..50 {
            let mut rng = StdRng::seed_from_u64(seed);
            let rates = clock_rates(&names(&["clock", "bridge"]), &mut rng);
            assert_eq!(rates.len(), 3 + AGENTS.len());
            for (_, host, _) in crate::lab::netcluster::WITNESSES {
                let r = rates[host];
                assert!((1.0..=1.0 + 0.8 * MAX_DRIFT).contains(&r), "{host} {r}");
            }
            for (name, ..) in AGENTS {
                let r = rates[name];
                assert!((1.0 - 0.8 * MAX_DRIFT..=1.0).contains(&r), "{name} {r}");
            }
        }
        let mut rng = StdRng::seed_from_u64(1);
        assert!(clock_rates(&names(&["bridge", "kill-leader"]), &mut rng).is_empty());
        let beyond = clock_rates(&names(&["clock-beyond"]), &mut rng);
        assert_eq!(
            beyond.keys().cloned().collect::<Vec<_>>(),
            names(&["mbox-a", "proxy-a"])
        );
        assert!(beyond.values().all(|r| *r < 1.0 - 10.0 * MAX_DRIFT));
    }

    /// Nemesis names are unique, and the expected failure is not in the
    /// mix.
    #[test]
    fn names_are_unique_and_the_experiment_is_apart() {
        let mut all: Vec<&str> = ALL.to_vec();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), ALL.len());
        for x in EXPECTED_FAILURES {
            assert!(!ALL.contains(&x), "{x} must not be in the mix");
        }
    }
}

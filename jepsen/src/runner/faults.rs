//! The nemeses the runner schedules: each starts one fault on the
//! [`Deployment`] and knows how to end it exactly.
//!
//! | name | fault |
//! | --- | --- |
//! | `partition-site` | one data site (witness, services, agents) cut off from everyone else |
//! | `bridge` | dc-a and dc-b cut from each other; dc-c, the router and ops see both |
//! | `isolate-witness` | one random witness cut off from every host |
//! | `isolate-leader` | the Raft leader cut off from every host |
//! | `one-way` | the leader hears nobody (the other witnesses' packets to it dropped), but its own packets arrive |
//! | `kill-witness` | SIGKILL one random witness; restarted from its data dir at the end |
//! | `kill-leader` | SIGKILL the leader; restarted at the end |
//! | `kill-majority` | SIGKILL two witnesses (the leader and one other); restarted at the end |
//! | `pause-leader` | SIGSTOP the leader witness; SIGCONT at the end |
//! | `pause-agent` | SIGSTOP the agent of the active site's proxy or mailstore; SIGCONT at the end |
//! | `loss` | 20 % random packet loss on every witness's link |
//! | `latency` | 80 ms ± 40 ms added to every witness-to-witness connection, both ways |
//! | `site-death` | the active site's machines die (health services, fenced services, agents); revived at the end |
//! | `flapping` | the bridge partition switched on and off every 0.5–1.5 s |
//! | `consul-lies` | Consul lies about the active site (below); the truth restored at the end |
//!
//! `partition-site` also fails the cut-off site's nodes in Consul's view,
//! as the server quorum outside it would ([`ConsulLab`](crate::lab::consul::ConsulLab)).
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

use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;

use super::deploy::{AGENTS, Deployment};
use crate::Host;
use crate::lab::consul::{ConsulLab, Lie};
use crate::lab::netcluster::{GRPC_PORT, NetCluster};
use crate::nemesis::Latency;

/// Every nemesis, in `test-all` order.
pub const ALL: [&str; 15] = [
    "partition-site",
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
    "consul-lies",
];

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

fn witness_name(id: u64) -> String {
    NetCluster::host(id).as_str().to_string()
}

/// A fault just started.
pub struct Started {
    /// What it hits, for the history.
    pub targets: Vec<String>,
    /// What exactly it does, when its kind does not say it all.
    pub detail: Option<String>,
    /// What its end must undo.
    pub active: Active,
}

/// Start fault `kind`.
pub fn start(kind: &str, d: &mut Deployment, rng: &mut StdRng) -> crate::Result<Started> {
    if kind == "consul-lies" {
        return Ok(consul_lies(d, rng));
    }
    let hosts = |site: &str, d: &Deployment| d.cluster.site(site);
    let (targets, active) = match kind {
        "partition-site" => {
            let site = if rng.random_bool(0.5) { "dc-a" } else { "dc-b" };
            let inside = hosts(site, d);
            let rest: Vec<Host> = d
                .cluster
                .net
                .hosts()
                .into_iter()
                .filter(|h| !inside.contains(h))
                .collect();
            d.cluster.nemesis.partition(vec![inside, rest])?;
            d.consul.cut_off(site);
            (
                vec![site.to_string()],
                Active::Partitioned(site.to_string()),
            )
        }
        "bridge" => {
            let groups = vec![hosts("dc-a", d), hosts("dc-b", d)];
            d.cluster.nemesis.partition(groups)?;
            (vec!["dc-a".into(), "dc-b".into()], Active::Net)
        }
        "isolate-witness" | "isolate-leader" => {
            let id = if kind == "isolate-leader" {
                leader(d, rng)
            } else {
                rng.random_range(1..=3)
            };
            d.cluster.nemesis.isolate(&NetCluster::host(id))?;
            (vec![witness_name(id)], Active::Net)
        }
        "one-way" => {
            let l = leader(d, rng);
            for other in (1..=3).filter(|o| *o != l) {
                d.cluster
                    .nemesis
                    .one_way(&NetCluster::host(other), &NetCluster::host(l))?;
            }
            (vec![witness_name(l)], Active::Net)
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
            )
        }
        "pause-leader" => {
            let l = leader(d, rng);
            d.cluster.pause(l);
            (vec![witness_name(l)], Active::Paused(vec![l]))
        }
        "pause-agent" => {
            let site = active_site(d).unwrap_or_else(|| "dc-a".into());
            let names: Vec<&str> = AGENTS.iter().filter(|a| a.2 == site).map(|a| a.0).collect();
            let name = names[rng.random_range(0..names.len())].to_string();
            d.pause_agent(&name);
            (vec![name.clone()], Active::PausedAgent(name))
        }
        "loss" => {
            let ws: Vec<Host> = (1..=3).map(NetCluster::host).collect();
            d.cluster.nemesis.loss(&ws, 0.2)?;
            (
                ws.iter().map(|h| h.as_str().to_string()).collect(),
                Active::Net,
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
            ((1..=3).map(witness_name).collect(), Active::Net)
        }
        "site-death" => {
            // The active site, mostly: that is the death a failover must
            // answer; sometimes the standby, which must change nothing.
            let active = active_site(d).unwrap_or_else(|| "dc-a".into());
            let site = if rng.random_bool(0.8) {
                active
            } else if active == "dc-a" {
                "dc-b".to_string()
            } else {
                "dc-a".to_string()
            };
            d.kill_site(&site);
            (vec![site.clone()], Active::SiteDeath(site))
        }
        "flapping" => {
            let groups = vec![hosts("dc-a", d), hosts("dc-b", d)];
            d.cluster.nemesis.partition(groups)?;
            (
                vec!["dc-a".into(), "dc-b".into()],
                Active::Flapping { on: true },
            )
        }
        other => {
            return Err(crate::Error::InvalidSpec(format!(
                "unknown nemesis {other:?}; known: {}",
                ALL.join(", ")
            )));
        }
    };
    Ok(Started {
        targets,
        detail: None,
        active,
    })
}

/// `consul-lies`: one of the lies of the module doc about the active site,
/// the alive-site lies twice as often as the dead-site one.
fn consul_lies(d: &mut Deployment, rng: &mut StdRng) -> Started {
    let site = active_site(d).unwrap_or_else(|| "dc-a".into());
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
}

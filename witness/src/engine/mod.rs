//! The decision engine: given the committed state, the observations as this
//! node last applied them, what agents reported, and `now`, say what the
//! leader should propose. Pure: no I/O, no clock reads, no randomness, so it
//! is tested exhaustively and runs unchanged inside the simulation.
//!
//! # The safety argument, in our words
//!
//! Two sites are never active at once because of three facts, each kept by a
//! different part:
//!
//! 1. **An epoch names one site.** `Activate` is a compare-and-set on the
//!    committed `(epoch, mode, active_site)` carrying `epoch + 1` (see
//!    `state`), so two leaders acting on stale state produce at most one
//!    activation per epoch, and epochs only grow.
//! 2. **The old site has stopped serving before the new one starts.** Agents
//!    serve only while they hold a lease, valid for `lease_ttl` from the
//!    moment they *sent* the renewal. The leader grants leases only for the
//!    current epoch of a non-draining active site, after a read-index round
//!    that started after the request arrived. Before activating a new site
//!    the leader drains the old one (no more grants) and waits until
//!    `max(its election, its last grant) + lease_ttl × (1+ρ)/(1−ρ) + margin`
//!    ([`lease::LeaseBook::safe_after`] explains why that covers every lease
//!    any leader ever granted). Agents whose lease ran out have fenced
//!    themselves by then (`margin ≥ fence_timeout`).
//! 3. **A site is declared dead only by a majority.** A failover needs a
//!    majority of the committed configuration's voters to currently observe
//!    the active site down **and** a majority to observe the target up. Two
//!    majorities share a witness, so a partition that isolates one witness
//!    (or one site) cannot make the others disagree about which site lives.
//!
//! Liveness, not safety, is what the rest of the rules tune: Consul may only
//! *veto* a "down" (never cause one); a healthy agent of the active site
//! vetoes a failover; a failover is not repeated within
//! `min_failover_interval`; a freeze blocks automatic changes.
//!
//! Observations expire: one counts only if this node applied it less than
//! `observation_ttl` ago, and not before `not_before` (the node's start and
//! the end of a freeze), so a crashed witness's last word — or a word spoken
//! before an operator unfroze — cannot trigger anything.
//!
//! # Wall clocks
//!
//! Nothing here waits on a wall clock. The two windows defined in wall time
//! are timed on this node's monotonic clock as well, because a wall clock
//! can be stepped (NTP, an operator's `date -s`) or simply differ between
//! the witness that wrote a timestamp and the leader that reads it:
//!
//! - **Anti-flap** holds only while *both* the committed activation's wall
//!   time and this node's first sight of it (monotonic) are within
//!   `min_failover_interval`. A wall clock stepped back would otherwise
//!   hold every failover for as long as the step; a node restarted long
//!   after the activation would otherwise hold them for a full interval.
//!   Either clock alone lifting the hold errs towards a failover, which the
//!   lease wait keeps safe.
//! - **Failback** counts how long this node has seen the home site up on
//!   each witness's observation (monotonic, from its first sight of that
//!   observer's current "up"), never the observer's wall-clock timestamp: a
//!   leader's wall clock stepped forward cannot fail back early, nor one
//!   stepped back hold a failback for the length of the step. A new leader
//!   re-times the window from its own first sight.
//!
//! Not here: the waiting itself (the leader's driver), probing, and applying
//! the decision (the state machine).

pub mod lease;
pub mod plan;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::config::{Failback, Policy, SitePolicy};
use crate::probe::{ConsulEvidence, Health, SiteView, consul_allows_down, site_health};
use crate::raft::types::NodeId;
use crate::state::{AgentReport, Cause, Mode, SiteTally, WitnessState};
pub use lease::Mono;

/// When this node applied each witness's latest observation: `(log index of
/// the observation, local monotonic time it was applied)`.
pub type AppliedAt = BTreeMap<NodeId, (u64, Mono)>;

/// Since when this node has seen each witness observe each site up: by
/// `(witness, site)`, the observer's `changed_at_ms` of that "up" (which
/// names the episode) and this node's monotonic time of its first sight.
pub type UpSeen = BTreeMap<(NodeId, String), (u64, Mono)>;

/// An agent's last renewal, as the leader heard it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentSeen {
    pub report: AgentReport,
    pub heard_at: Mono,
}

/// Everything the engine looks at.
pub struct Inputs<'a> {
    pub state: &'a WitnessState,
    /// Voters of the committed configuration; `None` while a membership
    /// change is in flight (joint configuration): no decisions then.
    pub voters: Option<&'a BTreeSet<NodeId>>,
    pub applied_at: &'a AppliedAt,
    pub agents: &'a [AgentSeen],
    /// This node's monotonic clock.
    pub now: Mono,
    /// Wall clock, only for the anti-flap window, and only together with
    /// `activation_seen` (see "Wall clocks" above).
    pub now_unix_ms: u64,
    /// When this node first saw the committed `last_activation` (monotonic).
    pub activation_seen: Option<Mono>,
    /// Since when this node has seen each witness observe each site up.
    pub up_seen: &'a UpSeen,
    /// Observations applied before this instant do not count.
    pub not_before: Mono,
}

/// What the leader should do.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Nothing to change; the reasons say why, for `witnessctl status`.
    Hold {
        reasons: Vec<String>,
        tallies: Vec<SiteTally>,
    },
    /// Activate `to` (after the lease wait when `from` is set).
    Activate {
        to: String,
        from: Option<String>,
        cause: Cause,
        reason: String,
        tallies: Vec<SiteTally>,
    },
}

impl Decision {
    pub fn tallies(&self) -> &[SiteTally] {
        match self {
            Decision::Hold { tallies, .. } | Decision::Activate { tallies, .. } => tallies,
        }
    }
}

/// One witness's view of one site, after the Consul policy is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    Up,
    Down,
    /// The probes say down, Consul vetoes it.
    ConsulVeto,
    Unknown,
}

/// How the witness that made `view` sees the site under the policy.
pub fn seen(policy: &Policy, site: &SitePolicy, view: Option<&SiteView>) -> Seen {
    let Some(view) = view else {
        return Seen::Unknown;
    };
    if crate::sabotage::active(crate::sabotage::Sabotage::FailoverOnConsulAlone)
        && view.targets.iter().any(|t| {
            t.critical
                && matches!(
                    t.consul,
                    Some(ConsulEvidence::Critical { .. } | ConsulEvidence::NodeDead)
                )
        })
    {
        return Seen::Down;
    }
    match view.health {
        Health::Up => return Seen::Up,
        Health::Unknown => return Seen::Unknown,
        Health::Down => {}
    }
    let critical = site.targets.iter().filter(|t| t.critical);
    let mut probe = Vec::new();
    let mut effective = Vec::new();
    for target in critical {
        let tv = view.targets.iter().find(|v| v.name == target.name);
        let health = tv.map_or(Health::Unknown, |v| v.health);
        probe.push(health);
        // A target counts as down only if the probes say so *and* Consul's
        // policy allows it: Consul can veto a "down", never make one.
        let allowed = health == Health::Down
            && consul_allows_down(policy.consul.mode, tv.and_then(|v| v.consul.as_ref()));
        effective.push(match (health, allowed) {
            (Health::Down, true) => Health::Down,
            (Health::Down, false) => Health::Up,
            (other, _) => other,
        });
    }
    if site_health(site.down_rule, effective) == Health::Down {
        Seen::Down
    } else if site_health(site.down_rule, probe) == Health::Down {
        Seen::ConsulVeto
    } else {
        Seen::Unknown
    }
}

/// The fresh observation of `witness`, if it counts now.
fn fresh<'a>(
    inputs: &Inputs<'a>,
    policy: &Policy,
    witness: NodeId,
) -> Option<&'a crate::state::Observation> {
    let obs = inputs.state.observations.get(&witness)?;
    let (index, at) = inputs.applied_at.get(&witness)?;
    let ttl = policy.failover.observation_ttl;
    let counts =
        *index == obs.log_index && *at >= inputs.not_before && inputs.now.saturating_sub(*at) < ttl;
    counts.then_some(obs)
}

/// Count, per site, how the voters currently see it.
pub fn tally(inputs: &Inputs<'_>, policy: &Policy, voters: &BTreeSet<NodeId>) -> Vec<SiteTally> {
    let quorum = voters.len() / 2 + 1;
    policy
        .sites
        .iter()
        .map(|site| {
            let mut t = SiteTally {
                site: site.name.clone(),
                quorum,
                ..SiteTally::default()
            };
            for w in voters {
                let view = fresh(inputs, policy, *w).and_then(|o| o.sites.get(&site.name));
                match seen(policy, site, view) {
                    Seen::Up => t.up.push(*w),
                    Seen::Down => t.down.push(*w),
                    Seen::ConsulVeto => t.consul_veto.push(*w),
                    Seen::Unknown => t.unknown.push(*w),
                }
            }
            t
        })
        .collect()
}

fn describe(t: &SiteTally, voters: usize) -> String {
    let mut s = format!(
        "{}: {} of {voters} witnesses see it down, {} up (quorum {})",
        t.site,
        t.down.len(),
        t.up.len(),
        t.quorum
    );
    if !t.consul_veto.is_empty() {
        s.push_str(&format!(
            "; probes of {:?} say down but Consul reports the service passing (veto)",
            t.consul_veto
        ));
    }
    if !t.unknown.is_empty() {
        s.push_str(&format!("; no fresh observation from {:?}", t.unknown));
    }
    s
}

/// The home site: the one the policy marks active at bootstrap.
pub fn home_site(policy: &Policy) -> Option<&SitePolicy> {
    policy.sites.iter().find(|s| s.active)
}

/// Decide what to propose now.
pub fn decide(inputs: &Inputs<'_>) -> Decision {
    let hold = |reasons: Vec<String>, tallies: Vec<SiteTally>| Decision::Hold { reasons, tallies };
    let Some(policy) = inputs.state.policy.as_ref() else {
        return hold(vec!["no policy committed yet".into()], vec![]);
    };
    let Some(voters) = inputs.voters else {
        return hold(
            vec!["membership change in flight: no decisions until it commits".into()],
            vec![],
        );
    };
    let tallies = tally(inputs, policy, voters);
    let by_name = |name: &str| tallies.iter().find(|t| t.site == name);
    let verdict = &inputs.state.verdict;

    if verdict.mode == Mode::Frozen {
        let reason = inputs
            .state
            .freeze
            .as_ref()
            .map(|f| format!("frozen by {}: {}", f.by, f.reason))
            .unwrap_or_else(|| "frozen".into());
        return hold(vec![reason], tallies);
    }

    let Some(active) = verdict.active_site.clone() else {
        // First activation: only the policy's home site, only once a majority
        // has seen it up. A site that was never healthy is never activated.
        let Some(home) = home_site(policy) else {
            return hold(vec!["the policy marks no site active".into()], tallies);
        };
        let Some(t) = by_name(&home.name) else {
            return hold(vec![format!("{} not tallied", home.name)], tallies);
        };
        if t.up.len() >= t.quorum {
            return Decision::Activate {
                to: home.name.clone(),
                from: None,
                cause: Cause::Initial,
                reason: format!(
                    "{} seen up by {} of {} witnesses",
                    home.name,
                    t.up.len(),
                    voters.len()
                ),
                tallies,
            };
        }
        return hold(
            vec![format!(
                "waiting for a majority to see {} up before the first activation ({})",
                home.name,
                describe(t, voters.len())
            )],
            tallies,
        );
    };

    let Some(active_tally) = by_name(&active) else {
        return hold(
            vec![format!("active site {active} is no longer in the policy")],
            tallies,
        );
    };
    // Anti-flap counts failovers, not the first activation of the cluster.
    // Recent only if both clocks say so ("Wall clocks" above).
    let interval = policy.failover.min_failover_interval;
    let recently = inputs.state.last_activation.as_ref().is_some_and(|a| {
        a.cause != Cause::Initial
            && inputs.now_unix_ms.saturating_sub(a.at_unix_ms) < interval.as_millis() as u64
            && inputs
                .activation_seen
                .is_none_or(|seen| inputs.now.saturating_sub(seen) < interval)
    });

    if active_tally.down.len() >= active_tally.quorum {
        let lease_ttl = policy.lease.lease_ttl;
        let healthy_agent = inputs.agents.iter().find(|a| {
            a.report.site == active
                && a.report.service_healthy
                && inputs.now.saturating_sub(a.heard_at) < lease_ttl
        });
        if let Some(a) = healthy_agent {
            return hold(
                vec![format!(
                    "{}; but agent {} ({}) of {active} reports its service healthy (veto)",
                    describe(active_tally, voters.len()),
                    a.report.agent,
                    a.report.role
                )],
                tallies,
            );
        }
        if recently {
            return hold(
                vec![format!(
                    "{}; but the last failover was less than min_failover_interval ({}) ago",
                    describe(active_tally, voters.len()),
                    humantime::format_duration(policy.failover.min_failover_interval)
                )],
                tallies,
            );
        }
        let home = home_site(policy).map(|s| s.name.clone());
        let mut candidates: Vec<&SiteTally> = tallies
            .iter()
            .filter(|t| t.site != active && t.up.len() >= t.quorum)
            .collect();
        // Prefer the home site, then the most witnesses seeing it up, then the name.
        candidates.sort_by(|a, b| {
            let ah = Some(&a.site) == home.as_ref();
            let bh = Some(&b.site) == home.as_ref();
            bh.cmp(&ah)
                .then(b.up.len().cmp(&a.up.len()))
                .then(a.site.cmp(&b.site))
        });
        let Some(target) = candidates.first() else {
            return hold(
                vec![format!(
                    "{}; but no other site is seen up by a majority, so there is nowhere to fail over to",
                    describe(active_tally, voters.len())
                )],
                tallies,
            );
        };
        return Decision::Activate {
            to: target.site.clone(),
            from: Some(active.clone()),
            cause: Cause::SiteDown,
            reason: format!(
                "{}; {} seen up by {} of {}",
                describe(active_tally, voters.len()),
                target.site,
                target.up.len(),
                voters.len()
            ),
            tallies,
        };
    }

    if policy.failover.failback == Failback::Auto
        && let Some(home) = home_site(policy)
        && home.name != active
        && !recently
    {
        let needed = policy.failover.failback_after;
        let long_up: Vec<NodeId> = voters
            .iter()
            .copied()
            .filter(|w| {
                fresh(inputs, policy, *w)
                    .and_then(|o| o.sites.get(&home.name))
                    .is_some_and(|v| {
                        v.health == Health::Up
                            && inputs.up_seen.get(&(*w, home.name.clone())).is_some_and(
                                |(episode, since)| {
                                    *episode == v.changed_at_ms
                                        && inputs.now.saturating_sub(*since) >= needed
                                },
                            )
                    })
            })
            .collect();
        if long_up.len() > voters.len() / 2 {
            return Decision::Activate {
                to: home.name.clone(),
                from: Some(active.clone()),
                cause: Cause::Failback,
                reason: format!(
                    "home site {} seen up for at least {} by {:?} (failback = auto)",
                    home.name,
                    humantime::format_duration(policy.failover.failback_after),
                    long_up
                ),
                tallies,
            };
        }
    }

    hold(
        vec![format!(
            "{active} is active; {}",
            describe(active_tally, voters.len())
        )],
        tallies,
    )
}

/// Check an operator's `failover --to`: the target must be a site of the
/// policy, not already active, and seen up by a majority. Works while frozen.
pub fn check_operator_failover(inputs: &Inputs<'_>, to: &str) -> Result<Vec<SiteTally>, String> {
    let policy = inputs
        .state
        .policy
        .as_ref()
        .ok_or("no policy committed yet")?;
    let voters = inputs
        .voters
        .ok_or("membership change in flight; retry when it commits")?;
    if !policy.sites.iter().any(|s| s.name == to) {
        let names: Vec<&str> = policy.sites.iter().map(|s| s.name.as_str()).collect();
        return Err(format!(
            "{to} is not a site of the policy (sites: {})",
            names.join(", ")
        ));
    }
    if inputs.state.verdict.active_site.as_deref() == Some(to) {
        return Err(format!("{to} is already active"));
    }
    let tallies = tally(inputs, policy, voters);
    let t = tallies
        .iter()
        .find(|t| t.site == to)
        .ok_or("site not tallied")?;
    if t.up.len() < t.quorum {
        return Err(format!(
            "refusing: only {} of {} witnesses see {to} up (a majority, {}, must): {}",
            t.up.len(),
            voters.len(),
            t.quorum,
            describe(t, voters.len())
        ));
    }
    Ok(tallies)
}

/// `lease_ttl × (1+ρ)/(1−ρ) + margin` of the policy.
pub fn lease_wait(policy: &Policy) -> Duration {
    policy.lease.lease_wait()
}

#[cfg(test)]
mod tests;

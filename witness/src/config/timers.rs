//! The startup timer check of DESIGN.md §3.8: the rules that tie a node's
//! Raft timers to the replicated lease timers, and the worst-case failover
//! time as the sum of its parts. A pure function of its two arguments.
//!
//! One rule is stricter than DESIGN.md §3.8 states it. A leader change
//! takes up to `2 × election_timeout_max + rpc_timeout`, not one
//! `election_timeout_max`: openraft's followers refuse votes for
//! `election_timeout_max` after the last heartbeat they saw, so an election
//! timer that fires earlier fails and waits another random timeout
//! (measured: up to 3.2 s with 750–1500 ms timers, docs/BENCHMARKS.md). The
//! rule that keeps a routine leader change from fencing the active site is
//! therefore `2 × election_timeout_max + rpc_timeout + 2 × renew_interval <
//! lease_ttl` (the second renewal interval: the last grant before the crash
//! answered a renewal sent up to one interval earlier), and the election
//! part of the worst-case failover counts the same.

use std::time::Duration;

use super::defaults::{HEARTBEATS_PER_ELECTION_TIMEOUT, MAX_DRIFT_LIMIT, RENEWALS_PER_LEASE};
use super::error::{ConfigError, Problem};
use super::failover::longest_detection_window;
use super::policy::percent;
use super::{Policy, ProbeTimers, RaftTimers, show};

/// What [`check_timers`] found: one human line per rule (with the actual
/// numbers), then the failover estimate part by part.
#[derive(Clone, Debug, PartialEq)]
pub struct TimerReport {
    pub lines: Vec<String>,
    /// Election + detection + lease wait + commits + first directive start.
    pub worst_case_failover: Duration,
}

/// Check every timer rule and estimate the worst-case failover. An error
/// lists every broken rule.
///
/// Detection is the slowest critical target's `fail_after × interval +
/// timeout` (with its overrides); a policy without sites is estimated
/// from `[probe]`.
pub fn check_timers(raft: &RaftTimers, policy: &Policy) -> Result<TimerReport, ConfigError> {
    let lease = &policy.lease;
    let mut problems = Vec::new();
    raft.check(&mut problems);
    lease.check(&mut problems);
    policy.probe.check(&mut problems);
    policy
        .failover
        .check_observation_ttl(&policy.probe, &policy.sites, &mut problems);

    // A routine leader change must not fence the active site. The leader
    // dies at T. Its followers refuse to vote for anyone until
    // election_timeout_max after its last heartbeat (openraft's leader
    // lease), and an election timer that fires earlier fails and is re-armed
    // with another random timeout: a new leader exists by
    // T + 2 × election_timeout_max + rpc_timeout. The last lease it granted
    // was for a renewal sent after T − renew_interval, so it lasts until
    // after T − renew_interval + lease_ttl; the agent's next renewal reaches
    // the new leader within another renew_interval. Round trips are small
    // next to rpc_timeout, which covers them.
    let change = leader_change(raft).saturating_add(lease.renew_interval.saturating_mul(2));
    if change >= lease.lease_ttl {
        problems.push(Problem::new(
            "lease.lease_ttl",
            format!(
                "2 × election_timeout_max {} + rpc_timeout {} + 2 × renew_interval {} = {} is not \
                 below lease_ttl = {}",
                show(raft.election_timeout_max),
                show(raft.rpc_timeout),
                show(lease.renew_interval),
                show(change),
                show(lease.lease_ttl)
            ),
            "raise lease_ttl in cluster.toml, or lower renew_interval there or the Raft timers of \
             this node: a routine leader change must finish before the active site's lease runs \
             out, or it fences a healthy site",
        ));
    }
    ConfigError::from_problems(problems)?;

    let heartbeats = raft
        .heartbeat_interval
        .saturating_mul(HEARTBEATS_PER_ELECTION_TIMEOUT);
    let renewals = lease.renew_interval.saturating_mul(RENEWALS_PER_LEASE);
    let mut lines = vec![
        format!(
            "ok: heartbeat_interval {} × {HEARTBEATS_PER_ELECTION_TIMEOUT} = {} ≤ \
             election_timeout_min {} (a follower rides out {HEARTBEATS_PER_ELECTION_TIMEOUT} lost \
             heartbeats before calling an election)",
            show(raft.heartbeat_interval),
            show(heartbeats),
            show(raft.election_timeout_min)
        ),
        format!(
            "ok: election_timeout_min {} < election_timeout_max {} (the random spread prevents \
             split votes)",
            show(raft.election_timeout_min),
            show(raft.election_timeout_max)
        ),
        format!(
            "ok: rpc_timeout {} < election_timeout_min {} (the leader retries a stuck RPC before \
             followers give up on it)",
            show(raft.rpc_timeout),
            show(raft.election_timeout_min)
        ),
        format!(
            "ok: renew_interval {} × {RENEWALS_PER_LEASE} = {} ≤ lease_ttl {} (an agent gets \
             {RENEWALS_PER_LEASE} renewal attempts per lease)",
            show(lease.renew_interval),
            show(renewals),
            show(lease.lease_ttl)
        ),
        format!(
            "ok: 2 × election_timeout_max {} + rpc_timeout {} + 2 × renew_interval {} = {} < \
             lease_ttl {} (a routine leader change does not fence the active site)",
            show(raft.election_timeout_max),
            show(raft.rpc_timeout),
            show(lease.renew_interval),
            show(change),
            show(lease.lease_ttl)
        ),
        format!(
            "ok: 0% < max_drift {} < {} (clocks are trusted to this rate error; the lease wait \
             stretches lease_ttl by (1+ρ)/(1−ρ))",
            percent::render(lease.max_drift),
            percent::render(MAX_DRIFT_LIMIT)
        ),
        format!(
            "ok: margin {} > 0 (time for the old site to fence itself; agents' fence and \
             watchdog timeouts must fit in it)",
            show(lease.margin)
        ),
    ];
    let (ttl_source, ttl_timers) = longest_detection_window(&policy.probe, &policy.sites);
    lines.push(format!(
        "ok: observation_ttl {} ≥ 2 × interval {} × fail_after {} = {} (of {ttl_source}; an \
         observation outlives the detection window it summarises)",
        show(policy.failover.observation_ttl),
        show(ttl_timers.interval),
        ttl_timers.fail_after,
        show(ttl_timers.min_observation_ttl())
    ));

    // The worst case: the dead site also held the Raft leader.
    let election = leader_change(raft);
    let (detection_source, detection_timers) = slowest_detection(policy);
    let detection = detection_timers.detection();
    let lease_wait = lease.lease_wait();
    let commits = raft.rpc_timeout.saturating_mul(2);
    let first_directive = lease.renew_interval;
    let parts = [
        (
            "election",
            election,
            format!(
                "2 × election_timeout_max {} + rpc_timeout {} (the dead site held the leader)",
                show(raft.election_timeout_max),
                show(raft.rpc_timeout)
            ),
        ),
        (
            "detection",
            detection,
            format!(
                "fail_after {} × probe_interval {} + probe_timeout {} ({detection_source})",
                detection_timers.fail_after,
                show(detection_timers.interval),
                show(detection_timers.timeout)
            ),
        ),
        (
            "lease wait",
            lease_wait,
            format!(
                "lease_ttl {} × (1 + {}) / (1 − {}) + margin {}",
                show(lease.lease_ttl),
                percent::render(lease.max_drift),
                percent::render(lease.max_drift),
                show(lease.margin)
            ),
        ),
        (
            "commits",
            commits,
            format!(
                "2 × rpc_timeout {} (two Raft commits)",
                show(raft.rpc_timeout)
            ),
        ),
        (
            "first directive",
            first_directive,
            format!(
                "renew_interval {} (the new site's agent picks it up on its next renewal)",
                show(lease.renew_interval)
            ),
        ),
    ];
    let worst_case_failover = parts.iter().fold(Duration::ZERO, |sum, (_, part, _)| {
        sum.saturating_add(*part)
    });
    lines.push(format!(
        "worst-case failover {}, the sum of:",
        show(worst_case_failover)
    ));
    for (name, part, why) in parts {
        lines.push(format!("  {name:<16} {:>10} = {why}", show(part)));
    }
    Ok(TimerReport {
        lines,
        worst_case_failover,
    })
}

/// The longest a leader change takes: followers refuse votes for
/// `election_timeout_max` after the last heartbeat, so the first election
/// attempt may fail and a second random timeout run; then one vote round.
fn leader_change(raft: &RaftTimers) -> Duration {
    raft.election_timeout_max
        .saturating_mul(2)
        .saturating_add(raft.rpc_timeout)
}

/// The critical target that takes longest to count as down, and its
/// timers; `[probe]` when there are no sites. The slowest, because under
/// `down_rule = "all"` a site is down only once its slowest critical
/// target is, and the estimate is a worst case.
fn slowest_detection(policy: &Policy) -> (String, ProbeTimers) {
    let mut worst: Option<(String, ProbeTimers)> = None;
    for site in &policy.sites {
        for target in site.targets.iter().filter(|t| t.critical) {
            let timers = target.timers(&policy.probe);
            if worst
                .as_ref()
                .is_none_or(|(_, w)| timers.detection() > w.detection())
            {
                worst = Some((
                    format!("the slowest critical target, {}/{}", site.name, target.name),
                    timers,
                ));
            }
        }
    }
    worst.unwrap_or_else(|| ("[probe]; no sites yet".to_string(), policy.probe.timers()))
}

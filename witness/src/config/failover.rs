//! The policy's `[failover]` table: how long observations count, anti-flap
//! and failback (DESIGN.md §3.3, §3.7).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::defaults::{self, MAX_FAILOVER_DURATION};
use super::error::Problem;
use super::show;
use super::sites::{ProbeDefaults, ProbeTimers, SitePolicy};

/// Whether the witnesses move back to a recovered site by themselves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Failback {
    /// Only `witnessctl failover` moves back. The default: Active Replica
    /// replicates only from the active mailstore, so the old site's
    /// replicas must be rebuilt and caught up first.
    #[default]
    Manual,
    /// Move back after `failback_after` of health, and only after the
    /// replica pre-flight directive succeeds.
    Auto,
}

impl fmt::Display for Failback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Failback::Manual => "manual",
            Failback::Auto => "auto",
        })
    }
}

/// The `[failover]` table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FailoverPolicy {
    /// An observation older than this counts as unknown; witnesses
    /// re-affirm theirs every half of it. At least
    /// `2 × interval × fail_after` of every target.
    #[serde(with = "humantime_serde")]
    pub observation_ttl: Duration,
    /// No automatic failover this soon after the last change of active site.
    #[serde(with = "humantime_serde")]
    pub min_failover_interval: Duration,
    pub failback: Failback,
    /// With `failback = "auto"`: how long the old site must be up first.
    #[serde(with = "humantime_serde")]
    pub failback_after: Duration,
    /// The site whose witness should lead (usually the witness-only third
    /// site): the leader hands leadership to a healthy, caught-up voter
    /// there, so a cut between the two data sites never leaves the leader
    /// on one side of it. Unset: wherever the election lands.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preferred_leader: Option<String>,
}

impl Default for FailoverPolicy {
    fn default() -> Self {
        FailoverPolicy {
            observation_ttl: defaults::OBSERVATION_TTL,
            min_failover_interval: defaults::MIN_FAILOVER_INTERVAL,
            failback: Failback::default(),
            failback_after: defaults::FAILBACK_AFTER,
            preferred_leader: None,
        }
    }
}

/// The timers that demand the longest `observation_ttl`, and where they
/// come from (`probe` or `site[dc-a].target[mbox]`).
pub(crate) fn longest_detection_window(
    probe: &ProbeDefaults,
    sites: &[SitePolicy],
) -> (String, ProbeTimers) {
    let mut worst = ("probe".to_string(), probe.timers());
    for (i, site) in sites.iter().enumerate() {
        for target in &site.targets {
            let timers = target.timers(probe);
            if timers.min_observation_ttl() > worst.1.min_observation_ttl() {
                worst = (format!("{}.target[{}]", site.key(i), target.name), timers);
            }
        }
    }
    worst
}

impl FailoverPolicy {
    pub(crate) fn check(
        &self,
        probe: &ProbeDefaults,
        sites: &[SitePolicy],
        problems: &mut Vec<Problem>,
    ) {
        for (name, value) in [
            ("observation_ttl", self.observation_ttl),
            ("min_failover_interval", self.min_failover_interval),
            ("failback_after", self.failback_after),
        ] {
            if value.is_zero() || value > MAX_FAILOVER_DURATION {
                problems.push(Problem::new(
                    format!("failover.{name}"),
                    format!(
                        "failover.{name} = {} is outside (0s, {}]",
                        show(value),
                        show(MAX_FAILOVER_DURATION)
                    ),
                    "set a positive duration (defaults: observation_ttl \"6s\", \
                     min_failover_interval \"5m\", failback_after \"10m\")",
                ));
            }
        }
        self.check_observation_ttl(probe, sites, problems);
        if let Some(site) = &self.preferred_leader
            && let Err(why) = super::check::name(site)
        {
            problems.push(Problem::new(
                "failover.preferred_leader",
                format!("failover.preferred_leader = {site:?}: {why}"),
                "name the site (as the witnesses' node.site spells it) whose witness should lead, \
                 e.g. \"dc-c\"",
            ));
        }
    }

    /// DESIGN.md §3.8: `observation_ttl ≥ 2 × probe_interval × fail_after`
    /// for every target (its overrides included) and for `[probe]` itself.
    /// An observation must outlive the detection window it summarises, or
    /// a witness's "down" expires before the others can agree with it.
    pub(crate) fn check_observation_ttl(
        &self,
        probe: &ProbeDefaults,
        sites: &[SitePolicy],
        problems: &mut Vec<Problem>,
    ) {
        let (source, timers) = longest_detection_window(probe, sites);
        let floor = timers.min_observation_ttl();
        if self.observation_ttl < floor {
            problems.push(Problem::new(
                "failover.observation_ttl",
                format!(
                    "observation_ttl = {} is below 2 × interval {} × fail_after {} = {} (of {source})",
                    show(self.observation_ttl),
                    show(timers.interval),
                    timers.fail_after,
                    show(floor)
                ),
                format!(
                    "raise observation_ttl to at least {} (twice that leaves room for a leader \
                     change), or probe {source} faster: an observation must outlive the detection \
                     window it summarises, or a witness's \"down\" expires before the others agree",
                    show(floor)
                ),
            ));
        }
    }
}

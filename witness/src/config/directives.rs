//! The policy's `[directives]` table: what a failover orders the sites'
//! agents to do, once, at the new epoch (DESIGN.md §3.6, §3.7).
//!
//! The table says *what* happens; each site's `mail_hosts` says *to which
//! hosts* (the `source_mail_host` of a promotion away from that site); each
//! agent's own file says *how* (the Carbonio CLI paths, the user). The
//! leader turns the table into an epoch's ordered directives when it
//! proposes the activation ([`crate::engine::plan`]), so a policy change
//! never alters the directives of an epoch already committed.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::check;
use super::error::Problem;
use super::show;

/// Longest claim lifetime without renewal.
pub const MAX_CLAIM_TTL: Duration = Duration::from_secs(3600);
/// Most claims that may expire before a directive counts as failed.
pub const MAX_ATTEMPTS: u32 = 20;
/// Most promotion threads (Carbonio's default is 4).
pub const MAX_THREADS: u32 = 64;
/// Most operator-defined commands.
pub const MAX_COMMANDS: usize = 16;

/// The `[directives]` table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DirectivesPolicy {
    /// Promote, on the new site's mailstore, every account replicated from
    /// each mail host of the site that lost.
    pub promote: bool,
    /// `threads` of `promoteAccounts`.
    pub promote_threads: u32,
    /// After the promotion, flush each promoted account's cache.
    pub flush_cache: bool,
    /// `zmprov fc -a` (every application service) rather than `zmprov fc`.
    pub flush_cache_all_services: bool,
    /// After the promotion, pause and restart each promoted account's
    /// replicas.
    pub restart_replicas: bool,
    /// Best effort: stop the HA module on the site that lost (habeat's
    /// `disable_ha_module`); skipped when nobody there answers.
    pub stop_ha_module_on_old_site: bool,
    /// The new site's proxies run their `activate` hooks only after the
    /// promotion is done (so users never reach a mailstore that is not yet
    /// primary for them).
    pub gate_proxies_on_promotion: bool,
    /// How long a claim lasts without renewal, on the leader's clock.
    #[serde(with = "humantime_serde")]
    pub claim_ttl: Duration,
    /// Claims that may expire (agent died, cut off) before a directive
    /// counts as failed and waits for `witnessctl directives retry`.
    pub max_attempts: u32,
    /// Operator-defined commands, run after the built-in directives.
    #[serde(rename = "command", skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<CommandDirective>,
}

impl Default for DirectivesPolicy {
    fn default() -> Self {
        DirectivesPolicy {
            promote: true,
            promote_threads: 4,
            flush_cache: false,
            flush_cache_all_services: true,
            restart_replicas: false,
            stop_ha_module_on_old_site: false,
            gate_proxies_on_promotion: true,
            claim_ttl: Duration::from_secs(30),
            max_attempts: 3,
            commands: Vec::new(),
        }
    }
}

/// `[[directives.command]]`: an operator's own one-time action of an
/// epoch, by name. The policy never carries a command line (DESIGN.md §8):
/// each agent of `role` on the new site runs the `[[command]]` of the same
/// name from its own file, and an agent that defines none refuses it
/// without running anything. So whoever controls the witnesses cannot run
/// a program on a mail node that its own file does not name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandDirective {
    /// Unique among the directives of an epoch; the name of the agents'
    /// `[[command]]` to run.
    pub name: String,
    /// The role of the new site's agents that run it.
    pub role: String,
    /// Run only after these (built-in names `promote`, `flush-cache`,
    /// `restart-replicas`, or other commands' names) are done.
    #[serde(default)]
    pub after: Vec<String>,
    /// Refused when present: the command line lives in the agents' files.
    #[serde(default, skip_serializing)]
    pub argv: Option<Vec<String>>,
    /// Refused when present: the timeout lives in the agents' files.
    #[serde(default, skip_serializing, with = "humantime_serde")]
    pub timeout: Option<Duration>,
}

impl DirectivesPolicy {
    pub(crate) fn check(&self, problems: &mut Vec<Problem>) {
        if self.promote_threads == 0 || self.promote_threads > MAX_THREADS {
            problems.push(Problem::new(
                "directives.promote_threads",
                format!(
                    "directives.promote_threads = {} is outside 1..={MAX_THREADS}",
                    self.promote_threads
                ),
                "set the number of promotion threads (Carbonio's default is 4)",
            ));
        }
        if self.claim_ttl.is_zero() || self.claim_ttl > MAX_CLAIM_TTL {
            problems.push(Problem::new(
                "directives.claim_ttl",
                format!(
                    "directives.claim_ttl = {} is outside (0s, {}]",
                    show(self.claim_ttl),
                    show(MAX_CLAIM_TTL)
                ),
                "set how long a claim lasts without renewal, e.g. \"30s\"",
            ));
        }
        if self.max_attempts == 0 || self.max_attempts > MAX_ATTEMPTS {
            problems.push(Problem::new(
                "directives.max_attempts",
                format!(
                    "directives.max_attempts = {} is outside 1..={MAX_ATTEMPTS}",
                    self.max_attempts
                ),
                "set how many claims may expire before a directive fails, e.g. 3",
            ));
        }
        if (self.flush_cache || self.restart_replicas) && !self.promote {
            problems.push(Problem::new(
                "directives.promote",
                "flush_cache and restart_replicas act on the promoted accounts, but promote = false",
                "set promote = true, or turn flush_cache and restart_replicas off",
            ));
        }
        if self.commands.len() > MAX_COMMANDS {
            problems.push(Problem::new(
                "directives.command",
                format!(
                    "{} [[directives.command]] tables; at most {MAX_COMMANDS}",
                    self.commands.len()
                ),
                "merge commands into one script",
            ));
        }
        let mut known: Vec<&str> = BUILT_IN.to_vec();
        for (i, c) in self.commands.iter().enumerate() {
            let key = format!("directives.command[{i}]");
            if let Err(why) = check::name(&c.name) {
                problems.push(Problem::new(
                    format!("{key}.name"),
                    format!("{key}.name = {:?}: {why}", c.name),
                    "name it with letters, digits and dashes, e.g. \"notify-noc\"",
                ));
            } else if known.contains(&c.name.as_str()) {
                problems.push(Problem::new(
                    format!("{key}.name"),
                    format!(
                        "{key}.name = {:?} is used twice (or is a built-in name)",
                        c.name
                    ),
                    "give every command its own name",
                ));
            }
            if let Err(why) = check::name(&c.role) {
                problems.push(Problem::new(
                    format!("{key}.role"),
                    format!("{key}.role = {:?}: {why}", c.role),
                    "name the role of the agents that run it, e.g. \"mailstore\"",
                ));
            }
            if c.argv.is_some() || c.timeout.is_some() {
                problems.push(Problem::new(
                    format!("{key}.argv"),
                    format!(
                        "{key} carries a command line (argv/timeout); the cluster policy never \
                         does, so that control of the witnesses is never a shell on a mail node"
                    ),
                    format!(
                        "keep name, role and after here, and define the command in the file of \
                         every {role} agent that may run it: [[command]] name = {name:?}, argv = \
                         [...], timeout = \"60s\"",
                        role = c.role,
                        name = c.name
                    ),
                ));
            }
            for dep in &c.after {
                if !known.contains(&dep.as_str()) {
                    problems.push(Problem::new(
                        format!("{key}.after"),
                        format!("{key}.after names {dep:?}, which is not defined before it"),
                        format!(
                            "name built-in directives ({}) or commands listed above this one",
                            BUILT_IN.join(", ")
                        ),
                    ));
                }
            }
            known.push(&c.name);
        }
    }
}

/// Names of the built-in directives, as `after` may name them.
pub const BUILT_IN: [&str; 4] = ["preflight", "promote", "flush-cache", "restart-replicas"];

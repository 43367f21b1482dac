//! The directive ledger (DESIGN.md §3.6): the one-time actions of an epoch,
//! issued once and executed safely.
//!
//! An `Activate` carries the ordered directives of its epoch (planned from
//! the cluster policy when it was proposed) and the epoch's *gates*: which
//! directives must be `done` before the agents of a role run their
//! `activate` hooks. Applying it starts a new ledger; every directive of the
//! previous epoch that had not finished is marked `superseded`, so nothing
//! can run at a stale epoch.
//!
//! A directive moves `pending → claimed(agent, generation) → done | failed`,
//! and only through committed entries:
//! - **Claim.** Accepted only for the current epoch, from an agent of the
//!   directive's site and role, once every directive it comes `after` is
//!   done, and only while it is `pending`: one claim at a time, so two
//!   agents never hold it at once. The leader proposes a claim only for an
//!   agent holding a valid lease at that epoch (the state machine cannot
//!   read clocks) — except for a best-effort directive, which is aimed at
//!   the site that lost: its agents hold no lease at the new epoch by
//!   design, and such a directive only stops things there. Each claim gets a new *generation*, strictly increasing
//!   per directive, including across operator retries.
//! - **Report.** Carries the claim's generation. A report for anything but
//!   the current claim — an older generation, a finished directive, another
//!   epoch — changes nothing: `done` is final, and a late report of a
//!   paused agent cannot undo or redo what a later claim did.
//! - **Expiry.** Claim deadlines run on the leader's monotonic clock, in
//!   its soft state (re-armed by each new leader, so a claim can only last
//!   longer than stated, never shorter; the agent stops its command by its
//!   own earlier deadline). When one passes, the leader commits an expiry
//!   naming the generation: the directive goes back to `pending` for another
//!   claim, or to `failed` once `max_attempts` claims have expired.
//! - **Retry.** An operator may send a `failed` directive of the current
//!   epoch back to `pending`, with a fresh attempt budget.
//! - **Unreachable.** A best-effort directive (one aimed at the site that
//!   lost, which may well be dead) that nobody claimed in time is marked
//!   `unreachable` by the leader; it never blocks a gate.
//!
//! Everything here is a pure function of the committed entries, like the
//! rest of the state machine.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::Epoch;

/// Directives of earlier epochs kept for `witnessctl directives list`.
pub const PAST_CAPACITY: usize = 256;
/// Longest output tail a report may carry into the log.
pub const MAX_OUTPUT_TAIL: usize = 4096;

/// What a directive does. The agent turns it into an argv (never a shell
/// string) with its local Carbonio paths.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Action {
    /// Make this site's mailstores the primaries of every account
    /// replicated from each of `source_mail_hosts` (`promoteAccounts …
    /// --sync`, one host after the other).
    PromoteAccounts {
        source_mail_hosts: Vec<String>,
        threads: u32,
    },
    /// Flush the caches of the accounts promoted from `source_mail_hosts`
    /// (`zmprov fc [-a] account <name>` per account).
    FlushCache {
        source_mail_hosts: Vec<String>,
        all_services: bool,
    },
    /// Pause and restart the replicas of the accounts promoted from
    /// `source_mail_hosts`.
    RestartReplicas { source_mail_hosts: Vec<String> },
    /// Failback pre-flight: succeed only if every replica on this site has
    /// caught up with its source on `source_mail_hosts`.
    ReplicaPreflight { source_mail_hosts: Vec<String> },
    /// Stop the HA module on the site that lost (best effort).
    StopHaModule,
    /// An operator-defined command: the agent runs the `[[command]]` of
    /// this name from its own file, or refuses. (An entry written before
    /// commands were named carries an argv instead and no name; it is
    /// read with an empty name, which every agent refuses.)
    Command {
        #[serde(default)]
        command: String,
    },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::PromoteAccounts {
                source_mail_hosts,
                threads,
            } => write!(
                f,
                "promote the accounts of {} ({threads} threads)",
                source_mail_hosts.join(", ")
            ),
            Action::FlushCache {
                source_mail_hosts, ..
            } => write!(
                f,
                "flush the caches of the accounts of {}",
                source_mail_hosts.join(", ")
            ),
            Action::RestartReplicas { source_mail_hosts } => write!(
                f,
                "restart the replicas of the accounts of {}",
                source_mail_hosts.join(", ")
            ),
            Action::ReplicaPreflight { source_mail_hosts } => write!(
                f,
                "check that the replicas caught up with {}",
                source_mail_hosts.join(", ")
            ),
            Action::StopHaModule => f.write_str("stop the HA module"),
            Action::Command { command } => write!(f, "run the agents' command {command:?}"),
        }
    }
}

/// One directive as planned for an epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectiveSpec {
    /// Unique within the epoch; `after` and gates name directives by it.
    pub name: String,
    /// The site whose agents run it.
    pub site: String,
    /// The role of the agents that may claim it.
    pub role: String,
    pub action: Action,
    /// Directives that must be done before this one may be claimed.
    pub after: Vec<String>,
    /// Claims that may expire before the directive counts as failed.
    pub max_attempts: u32,
    /// How long a claim lasts without renewal, on the leader's clock.
    pub claim_ttl_ms: u64,
    /// Aimed at a site that may be dead: marked `unreachable` when nobody
    /// claims it in time, and never part of a gate.
    pub best_effort: bool,
}

/// Where a directive stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum DirectiveState {
    Pending,
    Claimed {
        agent: String,
        generation: u64,
        /// Log index of the claim; the leader's deadline counts from when it
        /// applied this entry.
        log_index: u64,
    },
    Done {
        agent: String,
        generation: u64,
        exit_code: i32,
        output_tail: String,
    },
    Failed {
        reason: String,
        agent: Option<String>,
        generation: u64,
        exit_code: Option<i32>,
        output_tail: String,
    },
    /// Its epoch ended before it finished.
    Superseded {
        by_epoch: Epoch,
    },
    /// Best effort, and nobody claimed it in time.
    Unreachable,
}

impl DirectiveState {
    /// Every [`DirectiveState::name`], in declaration order.
    pub const NAMES: [&'static str; 6] = [
        "pending",
        "claimed",
        "done",
        "failed",
        "superseded",
        "unreachable",
    ];

    /// Short name, as in `witnessctl directives list`.
    pub fn name(&self) -> &'static str {
        match self {
            DirectiveState::Pending => "pending",
            DirectiveState::Claimed { .. } => "claimed",
            DirectiveState::Done { .. } => "done",
            DirectiveState::Failed { .. } => "failed",
            DirectiveState::Superseded { .. } => "superseded",
            DirectiveState::Unreachable => "unreachable",
        }
    }

    /// Nothing more will happen to it without an operator.
    pub fn is_final(&self) -> bool {
        !matches!(
            self,
            DirectiveState::Pending | DirectiveState::Claimed { .. }
        )
    }
}

/// A directive of an epoch and its progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directive {
    pub epoch: Epoch,
    pub spec: DirectiveSpec,
    pub state: DirectiveState,
    /// Claims made since the last operator retry.
    pub attempts: u32,
    /// The newest claim's generation (0: never claimed).
    pub generation: u64,
    /// Why the last claim ended, when it did not end in `done`.
    pub last_error: Option<String>,
}

impl Directive {
    /// `<epoch>/<name>`: unique across epochs, shown to operators and given
    /// to the command as `WITNESS_DIRECTIVE_ID`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.epoch, self.spec.name)
    }
}

/// What a claimed directive's command did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunResult {
    /// The exit code; `None` when it was killed or could not start.
    pub exit_code: Option<i32>,
    pub output_tail: String,
    /// Why it did not succeed, in the agent's words (empty on success).
    pub error: String,
}

impl RunResult {
    pub fn succeeded(&self) -> bool {
        self.exit_code == Some(0) && self.error.is_empty()
    }
}

/// The directives of the current epoch, and what is kept of earlier ones.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    pub epoch: Epoch,
    pub directives: Vec<Directive>,
    /// Per role: the directives that must be done before that role's agents
    /// run their `activate` hooks.
    pub gates: BTreeMap<String, Vec<String>>,
    /// Directives of earlier epochs, oldest first, at most [`PAST_CAPACITY`].
    pub past: Vec<Directive>,
}

/// Check that a plan can be carried out: unique names, `after` and gates
/// naming directives of the plan, no cycle, sane limits. The proposer and
/// the state machine both run it.
pub fn validate_plan(
    specs: &[DirectiveSpec],
    gates: &BTreeMap<String, Vec<String>>,
) -> Result<(), String> {
    let mut seen: Vec<&str> = Vec::new();
    for spec in specs {
        if spec.name.is_empty() || spec.site.is_empty() || spec.role.is_empty() {
            return Err(format!(
                "directive {:?}: name, site and role must not be empty",
                spec.name
            ));
        }
        if seen.contains(&spec.name.as_str()) {
            return Err(format!("directive {:?} is planned twice", spec.name));
        }
        if spec.max_attempts == 0 || spec.claim_ttl_ms == 0 {
            return Err(format!(
                "directive {:?}: max_attempts and claim_ttl must be above zero",
                spec.name
            ));
        }
        // Ordering: a directive may only come after one planned before it,
        // which also rules out cycles.
        for dep in &spec.after {
            if !seen.contains(&dep.as_str()) {
                return Err(format!(
                    "directive {:?} comes after {dep:?}, which is not planned before it",
                    spec.name
                ));
            }
        }
        seen.push(&spec.name);
    }
    for (role, names) in gates {
        for name in names {
            match specs.iter().find(|s| &s.name == name) {
                None => {
                    return Err(format!(
                        "the gate of role {role:?} names {name:?}, which is not planned"
                    ));
                }
                Some(s) if s.best_effort => {
                    return Err(format!(
                        "the gate of role {role:?} names best-effort directive {name:?}, which \
                         may never run"
                    ));
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

impl Ledger {
    /// Start `epoch` with `specs`: whatever of the previous epoch had not
    /// finished is superseded, and the previous directives move to `past`.
    pub fn begin_epoch(
        &mut self,
        epoch: Epoch,
        specs: &[DirectiveSpec],
        gates: &BTreeMap<String, Vec<String>>,
    ) {
        let mut old = std::mem::take(&mut self.directives);
        for d in &mut old {
            if !d.state.is_final() {
                d.state = DirectiveState::Superseded { by_epoch: epoch };
            }
        }
        self.past.extend(old);
        if self.past.len() > PAST_CAPACITY {
            let excess = self.past.len() - PAST_CAPACITY;
            self.past.drain(..excess);
        }
        self.epoch = epoch;
        self.gates = gates.clone();
        self.directives = specs
            .iter()
            .map(|spec| Directive {
                epoch,
                spec: spec.clone(),
                state: DirectiveState::Pending,
                attempts: 0,
                generation: 0,
                last_error: None,
            })
            .collect();
    }

    fn find(&self, epoch: Epoch, name: &str) -> Result<usize, String> {
        if epoch != self.epoch {
            return Err(format!(
                "epoch {epoch} is not the current epoch {}; its directives are over",
                self.epoch
            ));
        }
        self.directives
            .iter()
            .position(|d| d.spec.name == name)
            .ok_or_else(|| format!("epoch {epoch} has no directive {name:?}"))
    }

    /// Why `name` cannot be claimed by `agent` (of `site`, `role`) now, if
    /// it cannot. Used by the leader before proposing, and by `claim`.
    pub fn check_claim(
        &self,
        epoch: Epoch,
        name: &str,
        site: &str,
        role: &str,
    ) -> Result<(), String> {
        let d = &self.directives[self.find(epoch, name)?];
        if d.spec.site != site || d.spec.role != role {
            return Err(format!(
                "directive {} is for the {} agents of {}, not a {role} agent of {site}",
                d.id(),
                d.spec.role,
                d.spec.site
            ));
        }
        match &d.state {
            DirectiveState::Pending => {}
            DirectiveState::Claimed {
                agent, generation, ..
            } => {
                return Err(format!(
                    "directive {} is claimed by {agent} (generation {generation})",
                    d.id()
                ));
            }
            other => {
                return Err(format!("directive {} is {}", d.id(), other.name()));
            }
        }
        if let Some(dep) = d.spec.after.iter().find(|dep| !self.is_done(dep)) {
            return Err(format!("directive {} waits for {dep} to be done", d.id()));
        }
        Ok(())
    }

    /// Give `name` to `agent`. Returns the claim's generation.
    pub fn claim(
        &mut self,
        epoch: Epoch,
        name: &str,
        agent: &str,
        site: &str,
        role: &str,
        log_index: u64,
    ) -> Result<u64, String> {
        self.check_claim(epoch, name, site, role)?;
        let i = self.find(epoch, name)?;
        let d = &mut self.directives[i];
        d.attempts += 1;
        d.generation += 1;
        d.state = DirectiveState::Claimed {
            agent: agent.to_string(),
            generation: d.generation,
            log_index,
        };
        Ok(d.generation)
    }

    /// Whether `agent`'s claim of `name` at `generation` is the current one.
    pub fn holds(&self, epoch: Epoch, name: &str, agent: &str, generation: u64) -> bool {
        self.find(epoch, name).is_ok_and(|i| {
            matches!(
                &self.directives[i].state,
                DirectiveState::Claimed { agent: a, generation: g, .. }
                    if a == agent && *g == generation
            )
        })
    }

    /// Record the result of the claim `generation`. Anything but the
    /// current claim's report is refused and changes nothing.
    pub fn report(
        &mut self,
        epoch: Epoch,
        name: &str,
        agent: &str,
        generation: u64,
        result: &RunResult,
    ) -> Result<&Directive, String> {
        let i = self.find(epoch, name)?;
        if !self.holds(epoch, name, agent, generation) {
            let d = &self.directives[i];
            return Err(format!(
                "ignored: {agent}'s report for generation {generation} of {} does not match its \
                 state ({}, generation {})",
                d.id(),
                d.state.name(),
                d.generation
            ));
        }
        let d = &mut self.directives[i];
        let tail = clip(&result.output_tail);
        d.state = if result.succeeded() {
            d.last_error = None;
            DirectiveState::Done {
                agent: agent.to_string(),
                generation,
                exit_code: 0,
                output_tail: tail,
            }
        } else {
            let reason = if result.error.is_empty() {
                format!(
                    "exited with {}",
                    result
                        .exit_code
                        .map_or("no code".to_string(), |c| c.to_string())
                )
            } else {
                result.error.clone()
            };
            d.last_error = Some(reason.clone());
            DirectiveState::Failed {
                reason,
                agent: Some(agent.to_string()),
                generation,
                exit_code: result.exit_code,
                output_tail: tail,
            }
        };
        Ok(&self.directives[i])
    }

    /// The claim `generation` of `name` ran out: back to `pending`, or
    /// `failed` once its attempts are used up.
    pub fn expire(&mut self, epoch: Epoch, name: &str, generation: u64) -> Result<(), String> {
        let i = self.find(epoch, name)?;
        let d = &mut self.directives[i];
        let agent = match &d.state {
            DirectiveState::Claimed {
                agent,
                generation: g,
                ..
            } if *g == generation => agent.clone(),
            other => {
                return Err(format!(
                    "claim {generation} of {} is not current ({}, generation {})",
                    d.id(),
                    other.name(),
                    d.generation
                ));
            }
        };
        let why = format!("the claim of {agent} (generation {generation}) expired");
        d.last_error = Some(why.clone());
        d.state = if d.attempts >= d.spec.max_attempts {
            DirectiveState::Failed {
                reason: format!("{why}; {} attempts used up", d.attempts),
                agent: Some(agent),
                generation,
                exit_code: None,
                output_tail: String::new(),
            }
        } else {
            DirectiveState::Pending
        };
        Ok(())
    }

    /// An operator's retry of a failed directive of the current epoch.
    pub fn retry(&mut self, epoch: Epoch, name: &str) -> Result<(), String> {
        let i = self.find(epoch, name)?;
        let d = &mut self.directives[i];
        if !matches!(
            d.state,
            DirectiveState::Failed { .. } | DirectiveState::Unreachable
        ) {
            return Err(format!(
                "directive {} is {}; only a failed or unreachable directive can be retried",
                d.id(),
                d.state.name()
            ));
        }
        d.state = DirectiveState::Pending;
        d.attempts = 0;
        Ok(())
    }

    /// A best-effort directive nobody claimed in time.
    pub fn give_up(&mut self, epoch: Epoch, name: &str) -> Result<(), String> {
        let i = self.find(epoch, name)?;
        let d = &mut self.directives[i];
        if !d.spec.best_effort || d.state != DirectiveState::Pending {
            return Err(format!(
                "directive {} is {}{}; only a pending best-effort directive can be given up",
                d.id(),
                if d.spec.best_effort {
                    ""
                } else {
                    "not best effort, "
                },
                d.state.name()
            ));
        }
        d.state = DirectiveState::Unreachable;
        Ok(())
    }

    fn is_done(&self, name: &str) -> bool {
        self.directives
            .iter()
            .any(|d| d.spec.name == name && matches!(d.state, DirectiveState::Done { .. }))
    }

    /// Whether the agents of `role` may run their `activate` hooks at the
    /// current epoch: every directive of its gate is done.
    pub fn gate_open(&self, role: &str) -> bool {
        self.gates
            .get(role)
            .is_none_or(|names| names.iter().all(|n| self.is_done(n)))
    }
}

/// Keep the last [`MAX_OUTPUT_TAIL`] bytes of `s`, on a char boundary.
fn clip(s: &str) -> String {
    if s.len() <= MAX_OUTPUT_TAIL {
        return s.to_string();
    }
    let mut start = s.len() - MAX_OUTPUT_TAIL;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, role: &str, after: &[&str]) -> DirectiveSpec {
        DirectiveSpec {
            name: name.into(),
            site: "dc-b".into(),
            role: role.into(),
            action: Action::PromoteAccounts {
                source_mail_hosts: vec!["mbox1.example.com".into()],
                threads: 4,
            },
            after: after.iter().map(|s| s.to_string()).collect(),
            max_attempts: 2,
            claim_ttl_ms: 30_000,
            best_effort: false,
        }
    }

    fn ok() -> RunResult {
        RunResult {
            exit_code: Some(0),
            output_tail: "promoted 12 accounts".into(),
            error: String::new(),
        }
    }

    fn ledger() -> Ledger {
        let mut l = Ledger::default();
        let gates = BTreeMap::from([("proxy".to_string(), vec!["promote".to_string()])]);
        l.begin_epoch(
            2,
            &[
                spec("promote", "mailstore", &[]),
                spec("flush", "mailstore", &["promote"]),
            ],
            &gates,
        );
        l
    }

    /// One claim at a time; the claim is refused to the wrong site, role or
    /// epoch, and before its dependencies are done.
    #[test]
    fn one_claim_at_a_time_for_the_right_agent_in_order() {
        let mut l = ledger();
        assert!(
            l.claim(1, "promote", "mbox2", "dc-b", "mailstore", 10)
                .is_err()
        );
        assert!(
            l.claim(2, "promote", "mbox1", "dc-a", "mailstore", 10)
                .is_err()
        );
        assert!(
            l.claim(2, "promote", "proxy2", "dc-b", "proxy", 10)
                .is_err()
        );
        let err = l
            .claim(2, "flush", "mbox2", "dc-b", "mailstore", 10)
            .expect_err("flush waits for promote");
        assert!(err.contains("waits for promote"), "{err}");
        assert_eq!(
            l.claim(2, "promote", "mbox2", "dc-b", "mailstore", 10),
            Ok(1)
        );
        let err = l
            .claim(2, "promote", "mbox3", "dc-b", "mailstore", 11)
            .expect_err("already claimed");
        assert!(err.contains("claimed by mbox2"), "{err}");
        assert!(!l.gate_open("proxy"));
        assert!(l.gate_open("mailstore"), "no gate for this role");
        l.report(2, "promote", "mbox2", 1, &ok()).expect("report");
        assert!(l.gate_open("proxy"));
        assert_eq!(l.claim(2, "flush", "mbox2", "dc-b", "mailstore", 12), Ok(1));
    }

    /// A report of an older generation, or after `done`, changes nothing.
    #[test]
    fn late_reports_are_ignored_and_done_is_final() {
        let mut l = ledger();
        l.claim(2, "promote", "mbox2", "dc-b", "mailstore", 10)
            .expect("claim");
        l.expire(2, "promote", 1).expect("expire");
        assert_eq!(l.directives[0].state, DirectiveState::Pending);
        assert_eq!(
            l.claim(2, "promote", "mbox2", "dc-b", "mailstore", 20),
            Ok(2)
        );
        let before = l.clone();
        let fail = RunResult {
            exit_code: Some(1),
            output_tail: String::new(),
            error: String::new(),
        };
        assert!(l.report(2, "promote", "mbox2", 1, &fail).is_err());
        assert_eq!(
            l, before,
            "a generation-1 report after generation 2 was claimed"
        );
        l.report(2, "promote", "mbox2", 2, &ok()).expect("report");
        let done = l.clone();
        assert!(l.report(2, "promote", "mbox2", 2, &fail).is_err());
        assert!(l.expire(2, "promote", 2).is_err());
        assert!(l.retry(2, "promote").is_err());
        assert_eq!(l, done);
    }

    /// Expired claims are retried until `max_attempts`, then the directive
    /// fails; an operator retry gives it a fresh budget and a newer
    /// generation.
    #[test]
    fn expired_claims_use_up_attempts_then_operator_retries() {
        let mut l = ledger();
        for generation in 1..=2 {
            assert_eq!(
                l.claim(2, "promote", "mbox2", "dc-b", "mailstore", 10),
                Ok(generation)
            );
            l.expire(2, "promote", generation).expect("expire");
        }
        assert_eq!(l.directives[0].state.name(), "failed");
        assert!(
            l.claim(2, "promote", "mbox2", "dc-b", "mailstore", 10)
                .is_err()
        );
        l.retry(2, "promote").expect("retry");
        assert_eq!(
            l.claim(2, "promote", "mbox2", "dc-b", "mailstore", 30),
            Ok(3)
        );
        let failed = RunResult {
            exit_code: Some(2),
            output_tail: "Stopped".into(),
            error: String::new(),
        };
        l.report(2, "promote", "mbox2", 3, &failed).expect("report");
        match &l.directives[0].state {
            DirectiveState::Failed {
                reason, exit_code, ..
            } => {
                assert_eq!(*exit_code, Some(2));
                assert!(reason.contains("exited with 2"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    /// A new epoch supersedes what had not finished; the old epoch's
    /// directives can no longer be claimed or reported.
    #[test]
    fn a_new_epoch_supersedes_unfinished_directives() {
        let mut l = ledger();
        l.claim(2, "promote", "mbox2", "dc-b", "mailstore", 10)
            .expect("claim");
        l.begin_epoch(3, &[spec("promote", "mailstore", &[])], &BTreeMap::new());
        assert_eq!(
            l.past.iter().map(|d| d.state.clone()).collect::<Vec<_>>(),
            vec![
                DirectiveState::Superseded { by_epoch: 3 },
                DirectiveState::Superseded { by_epoch: 3 }
            ]
        );
        assert!(l.report(2, "promote", "mbox2", 1, &ok()).is_err());
        assert!(
            l.claim(2, "promote", "mbox2", "dc-b", "mailstore", 11)
                .is_err()
        );
        assert_eq!(l.directives[0].id(), "3/promote");
        assert_eq!(l.directives[0].state, DirectiveState::Pending);
    }

    /// Only a pending best-effort directive can be given up, and a gate
    /// never names one.
    #[test]
    fn best_effort_directives_become_unreachable() {
        let mut stop = spec("stop-ha", "mailstore", &[]);
        stop.site = "dc-a".into();
        stop.best_effort = true;
        let mut l = Ledger::default();
        l.begin_epoch(
            2,
            &[spec("promote", "mailstore", &[]), stop.clone()],
            &BTreeMap::new(),
        );
        assert!(l.give_up(2, "promote").is_err());
        l.give_up(2, "stop-ha").expect("give up");
        assert_eq!(l.directives[1].state, DirectiveState::Unreachable);
        let gates = BTreeMap::from([("proxy".to_string(), vec!["stop-ha".to_string()])]);
        let err = validate_plan(&[stop], &gates).expect_err("gate on best effort");
        assert!(err.contains("best-effort"), "{err}");
    }

    /// Plans with duplicate names, unknown or later dependencies, or gates
    /// on unplanned directives are refused.
    #[test]
    fn bad_plans_are_refused() {
        let none = BTreeMap::new();
        let a = spec("a", "mailstore", &[]);
        let b = spec("b", "mailstore", &["a"]);
        assert_eq!(validate_plan(&[a.clone(), b.clone()], &none), Ok(()));
        assert!(validate_plan(&[b.clone(), a.clone()], &none).is_err());
        assert!(validate_plan(&[a.clone(), a.clone()], &none).is_err());
        let gates = BTreeMap::from([("proxy".to_string(), vec!["zz".to_string()])]);
        assert!(validate_plan(std::slice::from_ref(&a), &gates).is_err());
        let mut zero = a;
        zero.max_attempts = 0;
        assert!(validate_plan(&[zero], &none).is_err());
    }

    /// Output tails are clipped to the last bytes, on a char boundary.
    #[test]
    fn output_tails_are_clipped() {
        let long = format!("{}é{}", "x".repeat(MAX_OUTPUT_TAIL), "y".repeat(10));
        let tail = clip(&long);
        assert!(tail.len() <= MAX_OUTPUT_TAIL);
        assert!(tail.ends_with("yyyyyyyyyy"));
    }

    /// `NAMES` lists every state's name, in order (the metrics count
    /// directives by it).
    #[test]
    fn names_lists_every_state() {
        let all = [
            DirectiveState::Pending,
            DirectiveState::Claimed {
                agent: "a".into(),
                generation: 1,
                log_index: 1,
            },
            DirectiveState::Done {
                agent: "a".into(),
                generation: 1,
                exit_code: 0,
                output_tail: String::new(),
            },
            DirectiveState::Failed {
                reason: "r".into(),
                agent: None,
                generation: 1,
                exit_code: None,
                output_tail: String::new(),
            },
            DirectiveState::Superseded { by_epoch: 2 },
            DirectiveState::Unreachable,
        ];
        assert_eq!(all.map(|s| s.name()), DirectiveState::NAMES);
    }
}

//! The replicated state machine: what every witness agrees on.
//!
//! This module owns the data that lives in the Raft log and its pure `apply`
//! function: the cluster policy, the **verdict** (`active_site`, `epoch`,
//! `mode`), every witness's latest observation of every site, the freeze,
//! and the history of decisions. Every witness applies the same committed
//! entries in the same order and must end in the same state, so `apply`
//! reads no clock, no environment and no randomness: anything time-like
//! arrives inside the [`Request`] (stamped by the proposer, for people) or is
//! the entry's log index.
//!
//! Invariants kept here, whatever is proposed:
//! - **One site per epoch.** `Activate` is a compare-and-set on
//!   `(epoch, mode, active_site)` and must carry `epoch + 1`: a second
//!   proposal made from the same (now stale) state is rejected, so an epoch
//!   can never name two sites, and epochs only grow.
//! - **Frozen means no automatic change.** An automatic `Activate` is
//!   rejected while frozen, even if it was proposed before the freeze
//!   committed; operator activations carry their own reason.
//! - **An expiry cannot end a newer freeze.** `Unfreeze` names the freeze it
//!   ends.
//! - **Directives run once, at their epoch, by one agent at a time.** See
//!   [`ledger`]: every claim, report and expiry names its epoch and the
//!   claim's generation, and anything that does not match the current claim
//!   changes nothing.
//!
//! It does not decide anything: proposals come from the engine (through the
//! leader's driver) and from operators through the Admin service; this
//! module only checks that a proposal still fits the state it was made from,
//! and records it with its evidence.

pub mod ledger;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use self::ledger::{DirectiveSpec, Ledger, RunResult};

use crate::config::Policy;
use crate::probe::{ConsulView, SiteView};
use crate::raft::types::NodeId;

/// The fencing token: increases by one every time the active site changes.
pub type Epoch = u64;

/// Who asked for a change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Actor {
    /// `witness init` on the bootstrapping node.
    Bootstrap,
    /// An operator, through `witnessctl`, with their stated identity.
    Operator(String),
    /// The leader's decision engine.
    Auto,
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Bootstrap => f.write_str("bootstrap"),
            Actor::Operator(who) => write!(f, "operator {who}"),
            Actor::Auto => f.write_str("auto"),
        }
    }
}

/// Whether the witness may change the active site by itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Automatic failover (and failback, if the policy allows it).
    #[default]
    Auto,
    /// Operator maintenance: no automatic change. Leases are still granted
    /// and operator failovers still work.
    Frozen,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Auto => "auto",
            Mode::Frozen => "frozen",
        })
    }
}

/// The committed answer to "which site is active".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// `None` until the first activation.
    pub active_site: Option<String>,
    pub epoch: Epoch,
    pub mode: Mode,
}

/// Why a site was activated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// The first activation of the policy's initially active site, once a
    /// majority of witnesses saw it up.
    Initial,
    /// The active site was declared dead by a detection quorum.
    SiteDown,
    /// Automatic return to the home site after `failback_after` of health.
    Failback,
    /// `witnessctl failover`.
    Operator,
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Cause::Initial => "initial activation",
            Cause::SiteDown => "site down",
            Cause::Failback => "failback",
            Cause::Operator => "operator failover",
        })
    }
}

/// An operator's freeze.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Freeze {
    pub reason: String,
    pub by: Actor,
    /// Ends by itself this long after the current leader learnt of it,
    /// measured on the leader's monotonic clock (re-armed by each new leader).
    pub expires_after_ms: Option<u64>,
    /// Log index of the entry that froze; `Unfreeze` names it.
    pub log_index: u64,
    pub at_unix_ms: u64,
}

/// One witness's latest committed view of every site.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    pub witness: NodeId,
    pub sites: BTreeMap<String, SiteView>,
    pub consul: ConsulView,
    /// The witness's wall clock when it made the observation (for people).
    pub at_unix_ms: u64,
    /// Log index of the entry that recorded it (freshness is judged by each
    /// node from when it applied this index, never from wall clocks).
    pub log_index: u64,
}

/// What an activation was decided on, recorded in history.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// The observations the decision counted, one per witness.
    pub observations: Vec<Observation>,
    /// Per site: which witnesses saw it down, up, vetoed by Consul, unknown.
    pub assessment: Vec<SiteTally>,
    /// Agents heard from (lease renewals) and what they reported.
    pub agents: Vec<AgentReport>,
    /// The lease wait that was observed before activating, in ms.
    pub lease_wait_ms: u64,
    /// How long the leader actually waited since draining the old site.
    pub waited_ms: u64,
    /// Time from the later of the leader's election and its last grant to
    /// the old site, to the proposal: at least `lease_wait_ms` whenever an
    /// old site was active (every lease it held was over).
    pub since_last_lease_ms: u64,
    /// The Consul mode in force.
    pub consul_mode: String,
}

/// How the witnesses see one site, counted by the engine.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteTally {
    pub site: String,
    pub down: Vec<NodeId>,
    pub up: Vec<NodeId>,
    /// Probes say down but Consul vetoes it (corroborate/require).
    pub consul_veto: Vec<NodeId>,
    /// No fresh observation, or the probes cannot tell.
    pub unknown: Vec<NodeId>,
    /// Voters needed for a quorum.
    pub quorum: usize,
}

/// What an agent said in its last lease renewal (soft state of the leader,
/// copied into evidence).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentReport {
    pub agent: String,
    pub site: String,
    pub role: String,
    pub state: String,
    /// How long it had been in `state`, by its own clock.
    #[serde(default)]
    pub state_for_ms: u64,
    pub service_healthy: bool,
    /// How long ago the leader heard it, in ms, when the report was taken.
    pub age_ms: u64,
}

/// A command carried in the Raft log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Replace the cluster policy. `expected_version` makes it a
    /// compare-and-set: the change applies only if the committed policy is
    /// still the one the proposer validated against (`0` = no policy yet).
    SetPolicy {
        policy: Box<Policy>,
        expected_version: u64,
        by: Actor,
        reason: String,
        /// Proposer's wall clock, milliseconds since the Unix epoch; shown in
        /// history, never used for a decision.
        at_unix_ms: u64,
    },
    /// A witness's current view of every site.
    Observe {
        witness: NodeId,
        sites: BTreeMap<String, SiteView>,
        consul: ConsulView,
        at_unix_ms: u64,
    },
    /// Make `site` active at `epoch`, if the verdict is still `expected`.
    Activate {
        site: String,
        epoch: Epoch,
        expected: Verdict,
        cause: Cause,
        by: Actor,
        reason: String,
        evidence: Box<Evidence>,
        at_unix_ms: u64,
        /// The epoch's directives, planned from the policy at proposal time.
        #[serde(default)]
        directives: Vec<DirectiveSpec>,
        /// Per role, the directives its `activate` hooks wait for.
        #[serde(default)]
        gates: BTreeMap<String, Vec<String>>,
    },
    /// Give directive `name` of `epoch` to `agent`. The leader proposes it
    /// only while the agent holds a valid lease at that epoch.
    ClaimDirective {
        epoch: Epoch,
        name: String,
        agent: String,
        site: String,
        role: String,
        at_unix_ms: u64,
    },
    /// What the command of claim `generation` did.
    ReportDirective {
        epoch: Epoch,
        name: String,
        agent: String,
        generation: u64,
        result: RunResult,
        at_unix_ms: u64,
    },
    /// Claim `generation` ran out on the leader's clock.
    ExpireClaim {
        epoch: Epoch,
        name: String,
        generation: u64,
        at_unix_ms: u64,
    },
    /// An operator sends a failed (or unreachable) directive back to
    /// pending.
    RetryDirective {
        epoch: Epoch,
        name: String,
        by: Actor,
        reason: String,
        at_unix_ms: u64,
    },
    /// A best-effort directive nobody claimed in time.
    GiveUpDirective {
        epoch: Epoch,
        name: String,
        at_unix_ms: u64,
    },
    /// Stop automatic changes.
    Freeze {
        reason: String,
        by: Actor,
        expires_after_ms: Option<u64>,
        at_unix_ms: u64,
    },
    /// End the freeze recorded at `freeze_index` (an expiry names the freeze
    /// it armed, so it can never end a newer one).
    Unfreeze {
        freeze_index: u64,
        reason: String,
        by: Actor,
        at_unix_ms: u64,
    },
    /// Seed a new cluster incarnation made by `witness recover --force` with
    /// the state the surviving node knew. Applies only to an empty state.
    Recover(Box<Recovery>),
}

/// What `witness recover --force` carries into the new cluster incarnation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recovery {
    /// The committed state the surviving node had applied.
    pub state: WitnessState,
    /// The cluster id it belonged to.
    pub previous_cluster_id: String,
    pub by: Actor,
    pub reason: String,
    pub at_unix_ms: u64,
}

/// How far a forced recovery moves the epoch: far beyond anything the old
/// cluster can still reach, so every lease and directive of the old
/// incarnation is stale for good.
pub const RECOVERY_EPOCH_BUMP: Epoch = 1 << 32;

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::SetPolicy {
                expected_version,
                by,
                ..
            } => {
                write!(f, "SetPolicy(expected v{expected_version}, by {by})")
            }
            Request::Observe { witness, .. } => write!(f, "Observe(witness {witness})"),
            Request::Activate {
                site,
                epoch,
                cause,
                by,
                ..
            } => {
                write!(f, "Activate({site}, epoch {epoch}, {cause}, by {by})")
            }
            Request::ClaimDirective {
                epoch, name, agent, ..
            } => write!(f, "ClaimDirective({epoch}/{name}, by {agent})"),
            Request::ReportDirective {
                epoch,
                name,
                generation,
                ..
            } => write!(
                f,
                "ReportDirective({epoch}/{name}, generation {generation})"
            ),
            Request::ExpireClaim {
                epoch,
                name,
                generation,
                ..
            } => write!(f, "ExpireClaim({epoch}/{name}, generation {generation})"),
            Request::RetryDirective {
                epoch, name, by, ..
            } => write!(f, "RetryDirective({epoch}/{name}, by {by})"),
            Request::GiveUpDirective { epoch, name, .. } => {
                write!(f, "GiveUpDirective({epoch}/{name})")
            }
            Request::Freeze { by, .. } => write!(f, "Freeze(by {by})"),
            Request::Unfreeze {
                freeze_index, by, ..
            } => {
                write!(f, "Unfreeze(freeze {freeze_index}, by {by})")
            }
            Request::Recover(r) => {
                write!(
                    f,
                    "Recover(from cluster {}, by {})",
                    r.previous_cluster_id, r.by
                )
            }
        }
    }
}

/// The result of applying one [`Request`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Applied; the policy version now committed.
    PolicySet { version: u64 },
    /// Observation recorded.
    Observed,
    /// The site is active at this epoch.
    Activated { site: String, epoch: Epoch },
    /// The mode changed.
    ModeSet { mode: Mode },
    /// The directive was claimed; the claim's generation.
    Claimed { generation: u64 },
    /// The directive moved to this state.
    DirectiveUpdated { state: String },
    /// Not applied, and why (the state did not match the proposal).
    Rejected(String),
    /// A Raft-internal entry (blank or membership): nothing to report.
    Internal,
}

/// One committed decision, kept for `witnessctl history`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryRecord {
    /// Raft log index of the entry that made it.
    pub log_index: u64,
    pub at_unix_ms: u64,
    pub by: Actor,
    pub reason: String,
    pub event: HistoryEvent,
}

/// What changed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryEvent {
    PolicySet {
        version: u64,
    },
    Activated {
        epoch: Epoch,
        from: Option<String>,
        to: String,
        cause: Cause,
        evidence: Box<Evidence>,
    },
    Frozen {
        expires_after_ms: Option<u64>,
    },
    Unfrozen {
        freeze_index: u64,
    },
    /// A directive changed state (claimed, done, failed, expired, retried,
    /// given up).
    Directive {
        id: String,
        state: String,
        agent: Option<String>,
        generation: u64,
        detail: String,
    },
    /// `witness recover --force` made a new cluster incarnation from this
    /// node's state.
    ForcedRecovery {
        previous_cluster_id: String,
        epoch_before: Epoch,
        epoch_after: Epoch,
    },
}

impl fmt::Display for HistoryEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HistoryEvent::PolicySet { version } => write!(f, "policy set (version {version})"),
            HistoryEvent::Activated {
                epoch,
                from,
                to,
                cause,
                ..
            } => write!(
                f,
                "activated {to} at epoch {epoch} ({cause}{})",
                from.as_ref()
                    .map(|s| format!(", was {s}"))
                    .unwrap_or_default()
            ),
            HistoryEvent::Frozen {
                expires_after_ms: Some(ms),
            } => {
                write!(
                    f,
                    "frozen (expires after {})",
                    humantime::format_duration(std::time::Duration::from_millis(*ms))
                )
            }
            HistoryEvent::Frozen {
                expires_after_ms: None,
            } => f.write_str("frozen"),
            HistoryEvent::Unfrozen { .. } => f.write_str("unfrozen"),
            HistoryEvent::Directive {
                id,
                state,
                agent,
                generation,
                detail,
            } => {
                write!(f, "directive {id} {state}")?;
                if let Some(agent) = agent {
                    write!(f, " ({agent}, generation {generation})")?;
                }
                if !detail.is_empty() {
                    write!(f, ": {detail}")?;
                }
                Ok(())
            }
            HistoryEvent::ForcedRecovery {
                previous_cluster_id,
                epoch_before,
                epoch_after,
            } => write!(
                f,
                "FORCED RECOVERY from cluster {previous_cluster_id}: epoch {epoch_before} -> {epoch_after}"
            ),
        }
    }
}

/// How many history records the state keeps; older ones are dropped first.
/// Bounded so snapshots stay small; operators export older history from logs.
pub const HISTORY_CAPACITY: usize = 10_000;

/// Everything the witnesses agree on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WitnessState {
    /// The committed cluster policy; `None` until the bootstrap entry commits.
    pub policy: Option<Policy>,
    /// Bumped by every applied `SetPolicy`.
    pub policy_version: u64,
    /// Which site is active, at which epoch, in which mode.
    pub verdict: Verdict,
    /// The freeze in force, when `verdict.mode` is frozen.
    pub freeze: Option<Freeze>,
    /// Each witness's latest observation.
    pub observations: BTreeMap<NodeId, Observation>,
    /// The last activation (for anti-flap and failback).
    pub last_activation: Option<Activation>,
    /// Recent committed decisions, oldest first.
    pub history: Vec<HistoryRecord>,
    /// The directives of the current epoch and what is kept of earlier ones.
    #[serde(default)]
    pub ledger: Ledger,
}

/// The last activation, kept outside the bounded history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activation {
    pub site: String,
    pub epoch: Epoch,
    pub cause: Cause,
    pub log_index: u64,
    pub at_unix_ms: u64,
}

impl WitnessState {
    /// Apply one committed request at `log_index`. Deterministic.
    pub fn apply(&mut self, log_index: u64, request: &Request) -> Response {
        match request {
            Request::SetPolicy {
                policy,
                expected_version,
                by,
                reason,
                at_unix_ms,
            } => {
                if *expected_version != self.policy_version {
                    return Response::Rejected(format!(
                        "policy changed meanwhile: expected version {expected_version}, \
                         committed version is {}; run `witnessctl policy show` and apply again",
                        self.policy_version
                    ));
                }
                self.policy = Some((**policy).clone());
                self.policy_version += 1;
                let version = self.policy_version;
                self.record(
                    log_index,
                    *at_unix_ms,
                    by,
                    reason,
                    HistoryEvent::PolicySet { version },
                );
                Response::PolicySet { version }
            }
            Request::Observe {
                witness,
                sites,
                consul,
                at_unix_ms,
            } => {
                self.observations.insert(
                    *witness,
                    Observation {
                        witness: *witness,
                        sites: sites.clone(),
                        consul: consul.clone(),
                        at_unix_ms: *at_unix_ms,
                        log_index,
                    },
                );
                Response::Observed
            }
            Request::Activate {
                site,
                epoch,
                expected,
                cause,
                by,
                reason,
                evidence,
                at_unix_ms,
                directives,
                gates,
            } => {
                if let Err(why) = self.check_activate(site, *epoch, expected, *cause, by) {
                    return Response::Rejected(why);
                }
                if let Err(why) = ledger::validate_plan(directives, gates) {
                    return Response::Rejected(format!("bad directive plan: {why}"));
                }
                self.ledger.begin_epoch(*epoch, directives, gates);
                let from = self.verdict.active_site.replace(site.clone());
                self.verdict.epoch = *epoch;
                self.last_activation = Some(Activation {
                    site: site.clone(),
                    epoch: *epoch,
                    cause: *cause,
                    log_index,
                    at_unix_ms: *at_unix_ms,
                });
                let event = HistoryEvent::Activated {
                    epoch: *epoch,
                    from,
                    to: site.clone(),
                    cause: *cause,
                    evidence: evidence.clone(),
                };
                self.record(log_index, *at_unix_ms, by, reason, event);
                Response::Activated {
                    site: site.clone(),
                    epoch: *epoch,
                }
            }
            Request::ClaimDirective {
                epoch,
                name,
                agent,
                site,
                role,
                at_unix_ms,
            } => match self
                .ledger
                .claim(*epoch, name, agent, site, role, log_index)
            {
                Ok(generation) => {
                    self.record_directive(log_index, *at_unix_ms, *epoch, name, String::new());
                    Response::Claimed { generation }
                }
                Err(why) => Response::Rejected(why),
            },
            Request::ReportDirective {
                epoch,
                name,
                agent,
                generation,
                result,
                at_unix_ms,
            } => match self.ledger.report(*epoch, name, agent, *generation, result) {
                Ok(d) => {
                    let state = d.state.name().to_string();
                    let detail = d.last_error.clone().unwrap_or_default();
                    self.record_directive(log_index, *at_unix_ms, *epoch, name, detail);
                    Response::DirectiveUpdated { state }
                }
                Err(why) => Response::Rejected(why),
            },
            Request::ExpireClaim {
                epoch,
                name,
                generation,
                at_unix_ms,
            } => self.directive_step(log_index, *at_unix_ms, *epoch, name, |l| {
                l.expire(*epoch, name, *generation)
            }),
            Request::RetryDirective {
                epoch,
                name,
                by,
                reason,
                at_unix_ms,
            } => match self.ledger.retry(*epoch, name) {
                Ok(()) => {
                    let event = HistoryEvent::Directive {
                        id: format!("{epoch}/{name}"),
                        state: "pending".into(),
                        agent: None,
                        generation: 0,
                        detail: "retry".into(),
                    };
                    self.record(log_index, *at_unix_ms, by, reason, event);
                    Response::DirectiveUpdated {
                        state: "pending".into(),
                    }
                }
                Err(why) => Response::Rejected(why),
            },
            Request::GiveUpDirective {
                epoch,
                name,
                at_unix_ms,
            } => self.directive_step(log_index, *at_unix_ms, *epoch, name, |l| {
                l.give_up(*epoch, name)
            }),
            Request::Freeze {
                reason,
                by,
                expires_after_ms,
                at_unix_ms,
            } => {
                // A freeze while frozen replaces the old one (new reason, new
                // expiry); the old one's expiry can no longer end it.
                self.verdict.mode = Mode::Frozen;
                self.freeze = Some(Freeze {
                    reason: reason.clone(),
                    by: by.clone(),
                    expires_after_ms: *expires_after_ms,
                    log_index,
                    at_unix_ms: *at_unix_ms,
                });
                let event = HistoryEvent::Frozen {
                    expires_after_ms: *expires_after_ms,
                };
                self.record(log_index, *at_unix_ms, by, reason, event);
                Response::ModeSet { mode: Mode::Frozen }
            }
            Request::Unfreeze {
                freeze_index,
                reason,
                by,
                at_unix_ms,
            } => {
                match &self.freeze {
                    Some(f) if f.log_index == *freeze_index => {}
                    Some(f) => {
                        return Response::Rejected(format!(
                            "the freeze in force was made at index {}, not {freeze_index}",
                            f.log_index
                        ));
                    }
                    None => return Response::Rejected("not frozen".into()),
                }
                self.verdict.mode = Mode::Auto;
                self.freeze = None;
                let event = HistoryEvent::Unfrozen {
                    freeze_index: *freeze_index,
                };
                self.record(log_index, *at_unix_ms, by, reason, event);
                Response::ModeSet { mode: Mode::Auto }
            }
            Request::Recover(r) => {
                if self.policy.is_some() || self.verdict.epoch != 0 {
                    return Response::Rejected("a recovery seeds only an empty state".into());
                }
                let epoch_before = r.state.verdict.epoch;
                *self = r.state.clone();
                self.verdict.epoch = epoch_before.saturating_add(RECOVERY_EPOCH_BUMP);
                // Nothing automatic until an operator has re-added witnesses
                // and unfreezes: a lone voter is its own majority.
                self.verdict.mode = Mode::Frozen;
                self.freeze = Some(Freeze {
                    reason: "forced recovery: add witnesses back, then unfreeze".into(),
                    by: r.by.clone(),
                    expires_after_ms: None,
                    log_index,
                    at_unix_ms: r.at_unix_ms,
                });
                // Observations of the old incarnation prove nothing now, and
                // none of its directives may run any more.
                self.observations.clear();
                self.ledger
                    .begin_epoch(self.verdict.epoch, &[], &BTreeMap::new());
                self.last_activation = None;
                let event = HistoryEvent::ForcedRecovery {
                    previous_cluster_id: r.previous_cluster_id.clone(),
                    epoch_before,
                    epoch_after: self.verdict.epoch,
                };
                self.record(log_index, r.at_unix_ms, &r.by, &r.reason, event);
                Response::ModeSet { mode: Mode::Frozen }
            }
        }
    }

    fn check_activate(
        &self,
        site: &str,
        epoch: Epoch,
        expected: &Verdict,
        cause: Cause,
        by: &Actor,
    ) -> Result<(), String> {
        if *expected != self.verdict {
            return Err(format!(
                "stale proposal: made from epoch {} / {} / {}, but the committed verdict is epoch \
                 {} / {} / {}",
                expected.epoch,
                expected.active_site.as_deref().unwrap_or("none"),
                expected.mode,
                self.verdict.epoch,
                self.verdict.active_site.as_deref().unwrap_or("none"),
                self.verdict.mode
            ));
        }
        if epoch != self.verdict.epoch + 1 {
            return Err(format!("epoch {epoch} is not {} + 1", self.verdict.epoch));
        }
        if self.verdict.active_site.as_deref() == Some(site) {
            return Err(format!("{site} is already active"));
        }
        let known = self
            .policy
            .as_ref()
            .is_some_and(|p| p.sites.iter().any(|s| s.name == site));
        if !known {
            return Err(format!("{site} is not a site of the committed policy"));
        }
        if cause == Cause::Operator && !matches!(by, Actor::Operator(_)) {
            return Err("an operator activation must name its operator".into());
        }
        if self.verdict.mode == Mode::Frozen && cause != Cause::Operator {
            return Err("frozen: no automatic activation".into());
        }
        Ok(())
    }

    /// Apply a ledger step that only changes a directive's state, and
    /// record it.
    fn directive_step(
        &mut self,
        log_index: u64,
        at_unix_ms: u64,
        epoch: Epoch,
        name: &str,
        step: impl FnOnce(&mut Ledger) -> Result<(), String>,
    ) -> Response {
        match step(&mut self.ledger) {
            Ok(()) => {
                let detail = self
                    .ledger
                    .directives
                    .iter()
                    .find(|d| d.spec.name == name)
                    .and_then(|d| d.last_error.clone())
                    .unwrap_or_default();
                let state = self.record_directive(log_index, at_unix_ms, epoch, name, detail);
                Response::DirectiveUpdated { state }
            }
            Err(why) => Response::Rejected(why),
        }
    }

    /// Record directive `name`'s current state in history; returns the
    /// state's name.
    fn record_directive(
        &mut self,
        log_index: u64,
        at_unix_ms: u64,
        epoch: Epoch,
        name: &str,
        detail: String,
    ) -> String {
        let Some(d) = self.ledger.directives.iter().find(|d| d.spec.name == name) else {
            return String::new();
        };
        let agent = match &d.state {
            ledger::DirectiveState::Claimed { agent, .. }
            | ledger::DirectiveState::Done { agent, .. } => Some(agent.clone()),
            ledger::DirectiveState::Failed { agent, .. } => agent.clone(),
            _ => None,
        };
        let state = d.state.name().to_string();
        let event = HistoryEvent::Directive {
            id: format!("{epoch}/{name}"),
            state: state.clone(),
            agent,
            generation: d.generation,
            detail,
        };
        self.record(log_index, at_unix_ms, &Actor::Auto, "", event);
        state
    }

    fn record(
        &mut self,
        log_index: u64,
        at_unix_ms: u64,
        by: &Actor,
        reason: &str,
        event: HistoryEvent,
    ) {
        if self.history.len() >= HISTORY_CAPACITY {
            let excess = self.history.len() + 1 - HISTORY_CAPACITY;
            self.history.drain(..excess);
        }
        self.history.push(HistoryRecord {
            log_index,
            at_unix_ms,
            by: by.clone(),
            reason: reason.to_string(),
            event,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(expected: u64) -> Request {
        Request::SetPolicy {
            policy: Box::default(),
            expected_version: expected,
            by: Actor::Bootstrap,
            reason: "test".into(),
            at_unix_ms: 1,
        }
    }

    /// A policy change made from a stale version is refused and changes nothing.
    #[test]
    fn set_policy_is_compare_and_set() {
        let mut s = WitnessState::default();
        assert_eq!(s.apply(1, &set(0)), Response::PolicySet { version: 1 });
        let before = s.clone();
        assert!(matches!(s.apply(2, &set(0)), Response::Rejected(_)));
        assert_eq!(s, before);
        assert_eq!(s.apply(3, &set(1)), Response::PolicySet { version: 2 });
        assert_eq!(s.history.len(), 2);
    }

    /// An activation starts its epoch's ledger; claims and reports go
    /// through the log and are recorded in history; the next activation
    /// supersedes what had not finished, and a stale claim is refused.
    #[test]
    fn activations_carry_their_directives_through_the_ledger() {
        use ledger::{Action, DirectiveSpec, RunResult};
        let policy: Policy = toml::from_str(
            "[[site]]\nname = \"dc-a\"\nactive = true\n[[site.target]]\nname = \"m\"\n\
             role = \"mailstore\"\nkind = \"tcp\"\naddress = \"127.0.0.1:1\"\n\
             [[site]]\nname = \"dc-b\"\n[[site.target]]\nname = \"m\"\n\
             role = \"mailstore\"\nkind = \"tcp\"\naddress = \"127.0.0.1:2\"\n",
        )
        .expect("policy");
        let mut s = WitnessState {
            policy: Some(policy),
            ..WitnessState::default()
        };
        let promote = DirectiveSpec {
            name: "promote".into(),
            site: "dc-b".into(),
            role: "mailstore".into(),
            action: Action::PromoteAccounts {
                source_mail_hosts: vec!["mbox1.example.com".into()],
                threads: 4,
            },
            after: vec![],
            max_attempts: 3,
            claim_ttl_ms: 30_000,
            best_effort: false,
        };
        let activate =
            |s: &WitnessState, site: &str, directives: Vec<DirectiveSpec>| Request::Activate {
                site: site.into(),
                epoch: s.verdict.epoch + 1,
                expected: s.verdict.clone(),
                cause: Cause::SiteDown,
                by: Actor::Auto,
                reason: "test".into(),
                evidence: Box::default(),
                at_unix_ms: 0,
                directives,
                gates: BTreeMap::from([("proxy".to_string(), vec!["promote".to_string()])]),
            };
        // A plan whose gate names nothing planned is refused whole.
        assert!(matches!(
            s.apply(1, &activate(&s, "dc-a", vec![])),
            Response::Rejected(_)
        ));
        assert_eq!(s.verdict.epoch, 0);
        assert!(matches!(
            s.apply(2, &activate(&s, "dc-b", vec![promote.clone()])),
            Response::Activated { epoch: 1, .. }
        ));
        let claim = |epoch| Request::ClaimDirective {
            epoch,
            name: "promote".into(),
            agent: "mbox2".into(),
            site: "dc-b".into(),
            role: "mailstore".into(),
            at_unix_ms: 0,
        };
        assert!(matches!(s.apply(3, &claim(0)), Response::Rejected(_)));
        assert_eq!(s.apply(4, &claim(1)), Response::Claimed { generation: 1 });
        let report = Request::ReportDirective {
            epoch: 1,
            name: "promote".into(),
            agent: "mbox2".into(),
            generation: 1,
            result: RunResult {
                exit_code: Some(0),
                output_tail: "ok".into(),
                error: String::new(),
            },
            at_unix_ms: 0,
        };
        assert_eq!(
            s.apply(5, &report),
            Response::DirectiveUpdated {
                state: "done".into()
            }
        );
        assert!(s.ledger.gate_open("proxy"));
        let events: Vec<String> = s.history.iter().map(|r| r.event.to_string()).collect();
        assert!(
            events.contains(&"directive 1/promote claimed (mbox2, generation 1)".to_string()),
            "{events:?}"
        );
        assert!(events.contains(&"directive 1/promote done (mbox2, generation 1)".to_string()));

        let mut back = promote;
        back.site = "dc-a".into();
        assert_eq!(
            s.apply(6, &claim(1)),
            Response::Rejected("directive 1/promote is done".into())
        );
        s.apply(7, &activate(&s, "dc-a", vec![back]));
        assert_eq!(s.ledger.epoch, 2);
        assert_eq!(s.ledger.past.len(), 1);
        assert!(matches!(s.apply(8, &claim(1)), Response::Rejected(_)));
        assert!(matches!(s.apply(9, &report), Response::Rejected(_)));
    }

    /// An expiry's unfreeze names its freeze and cannot end a newer one.
    #[test]
    fn unfreeze_ends_only_the_named_freeze() {
        let mut s = WitnessState::default();
        let freeze = Request::Freeze {
            reason: "maint".into(),
            by: Actor::Operator("o".into()),
            expires_after_ms: Some(1000),
            at_unix_ms: 0,
        };
        s.apply(5, &freeze);
        s.apply(7, &freeze);
        assert_eq!(s.verdict.mode, Mode::Frozen);
        let unfreeze = |idx| Request::Unfreeze {
            freeze_index: idx,
            reason: "expired".into(),
            by: Actor::Auto,
            at_unix_ms: 0,
        };
        assert!(matches!(s.apply(8, &unfreeze(5)), Response::Rejected(_)));
        assert_eq!(s.verdict.mode, Mode::Frozen);
        assert_eq!(
            s.apply(9, &unfreeze(7)),
            Response::ModeSet { mode: Mode::Auto }
        );
        assert!(matches!(s.apply(10, &unfreeze(7)), Response::Rejected(_)));
    }
}

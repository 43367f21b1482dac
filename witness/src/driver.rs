//! The moving parts around the pure engine, per node: the observation
//! clock, the observer that turns this witness's probes into log entries,
//! and the leader's failover driver with its soft state.
//!
//! Soft state lives only in memory and is rebuilt, conservatively, after a
//! restart or a leadership change:
//! - *When was each observation applied here?* Entries already in the local
//!   log at start are replays: their observations count as expired until
//!   their witness speaks again. An observation applied before the last
//!   unfreeze does not count either.
//! - *Which grants did this leader make, which site is it draining?* The
//!   [`LeaseBook`] of the current term; a new term starts a new book, so a
//!   new leader never continues a predecessor's wait.
//! - *When was the freeze armed?* On the leader's monotonic clock, when it
//!   first saw the freeze in this term: an expiry can only last longer than
//!   stated, never shorter.
//!
//! The driver never activates on its own authority: it runs the engine,
//! drains and waits as the engine's module doc argues, and proposes a
//! compare-and-set that the state machine may still reject.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;

use crate::engine::lease::{GrantRefusal, LeaseBook, Mono};
use crate::engine::{self, AgentSeen, AppliedAt, Decision, Inputs, UpSeen};
use crate::node::{Node, NodeError, unix_ms};
use crate::probe::{ConsulEvidence, Health, LocalView, SiteView};
use crate::raft::types::NodeId;
use crate::state::{
    Actor, AgentReport, Cause, Epoch, Evidence, Mode, Observation, Request, Response, WitnessState,
};

/// How often the driver re-evaluates when nothing wakes it.
const TICK: Duration = Duration::from_millis(100);
/// The observer never proposes more often than this, whatever flaps.
const MIN_OBSERVE_INTERVAL: Duration = Duration::from_millis(200);
/// Agents not heard from for this long are dropped from the leader's table.
const AGENT_FORGET_AFTER: Duration = Duration::from_secs(600);

/// A failover the leader is waiting to commit.
#[derive(Clone, Debug, PartialEq)]
pub struct Pending {
    pub from: String,
    pub to: String,
    pub cause: Cause,
    pub by: Actor,
    pub reason: String,
    pub drained_at: Mono,
    /// When every lease of `from` is over (moves later if a grant raced in).
    pub safe_after: Mono,
    /// Failed attempts to commit the activation, the last error, and when
    /// the next attempt is due (backing off; the site stays drained).
    pub commit_failures: u32,
    pub last_error: Option<String>,
    pub retry_at: Option<Mono>,
}

/// First pause after a failed activation commit; doubles per failure.
const COMMIT_RETRY_MIN: Duration = Duration::from_millis(200);
/// Longest pause between two activation commit attempts.
const COMMIT_RETRY_MAX: Duration = Duration::from_secs(5);

/// The pause after the `failures`-th failed commit attempt.
fn commit_backoff(failures: u32) -> Duration {
    COMMIT_RETRY_MIN
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(COMMIT_RETRY_MAX)
}

/// An operator's `failover --to`, waiting for the driver.
#[derive(Clone, Debug)]
pub struct OperatorFailover {
    pub to: String,
    pub operator: String,
    pub reason: String,
    /// Promote without the failback pre-flight (`--accept-data-loss`).
    pub accept_data_loss: bool,
    pub result: tokio::sync::watch::Sender<Option<Result<u64, String>>>,
}

/// Per-node soft state.
#[derive(Debug, Default)]
pub struct Soft {
    pub book: LeaseBook,
    pub applied_at: AppliedAt,
    /// The epoch of the committed `last_activation` and when this node first
    /// saw it (the anti-flap window's monotonic half).
    pub activation_seen: Option<(u64, Mono)>,
    /// Since when this node has seen each witness observe each site up
    /// (the failback window).
    pub up_seen: UpSeen,
    /// Log entries up to this index were in the local log at start.
    pub startup_last_log: u64,
    /// Observations applied before this instant do not count.
    pub not_before: Mono,
    pub agents: BTreeMap<(String, String), AgentSeen>,
    pub pending: Option<Pending>,
    pub freeze_armed: Option<(u64, Mono)>,
    /// The engine's latest decision on the leader, for status.
    pub last_decision: Option<Decision>,
    pub operator: Option<OperatorFailover>,
    pub last_mode: Option<Mode>,
    /// When this node last handed leadership to the preferred site.
    pub last_transfer_at: Option<Mono>,
    /// Per agent: the epoch and the instant of the last lease this leader
    /// granted it in its current term (claims need a valid lease).
    pub agent_grants: BTreeMap<(String, String), (Epoch, Mono)>,
    /// Claim deadlines on this leader's clock, by (epoch, name,
    /// generation); armed when this leader first sees the claim (a new
    /// leader re-arms them in full) and pushed back by each renewal.
    pub claim_deadlines: BTreeMap<(Epoch, String, u64), Mono>,
    /// When this leader first saw each best-effort directive pending.
    pub best_effort_since: BTreeMap<(Epoch, String), Mono>,
}

impl Soft {
    /// Note when this node first saw each witness's latest observation, and
    /// when the mode went back to auto. Called by the tracker on every state
    /// change *and* by every reader before it decides, so a reader never
    /// sees an observation the tracker has not stamped yet (it would read as
    /// stale and abort a failover for nothing).
    pub fn note(&mut self, state: &WitnessState, now: Mono) {
        if let Some(a) = &state.last_activation
            && self
                .activation_seen
                .is_none_or(|(epoch, _)| epoch != a.epoch)
        {
            self.activation_seen = Some((a.epoch, now));
        }
        for (w, obs) in &state.observations {
            for (site, view) in &obs.sites {
                let key = (*w, site.clone());
                if view.health != Health::Up {
                    self.up_seen.remove(&key);
                } else if self
                    .up_seen
                    .get(&key)
                    .is_none_or(|(episode, _)| *episode != view.changed_at_ms)
                {
                    self.up_seen.insert(key, (view.changed_at_ms, now));
                }
            }
        }
        let startup = self.startup_last_log;
        for (w, obs) in &state.observations {
            let known = self
                .applied_at
                .get(w)
                .is_some_and(|(i, _)| *i >= obs.log_index);
            if !known && obs.log_index > startup {
                self.applied_at.insert(*w, (obs.log_index, now));
            }
        }
        let mode = state.verdict.mode;
        if self.last_mode == Some(Mode::Frozen) && mode == Mode::Auto {
            // Observations must be newer than the end of the freeze.
            self.not_before = now;
        }
        self.last_mode = Some(mode);
    }

    /// Start a new book if Raft moved to a new term since the last one.
    /// `now` may be later than the actual election: the wait then only
    /// grows, which is the safe direction.
    pub fn ensure_term(&mut self, term: u64, now: Mono) {
        if self.book.term() != term {
            self.book.begin_term(term, now);
            self.pending = None;
            self.freeze_armed = None;
            self.agent_grants.clear();
            self.claim_deadlines.clear();
            self.best_effort_since.clear();
        }
    }
}

impl Node {
    /// This node's monotonic clock.
    pub fn now(&self) -> Mono {
        self.clock_origin.elapsed()
    }

    /// Voters of the committed, non-joint configuration.
    pub fn committed_voters(&self) -> Option<BTreeSet<NodeId>> {
        let m = self.raft.metrics().borrow_watched().clone();
        let joint = m.committed_membership_config.get_joint_config();
        if joint.len() != 1
            || m.membership_config.log_id() != m.committed_membership_config.log_id()
        {
            return None;
        }
        joint.first().cloned()
    }

    /// Run the engine on the current state.
    pub fn decide_now(&self) -> (Decision, Arc<crate::raft::store::AppliedState>) {
        let applied = self.state.current();
        let voters = self.committed_voters();
        let mut soft = self.soft.lock().unwrap_or_else(|e| e.into_inner());
        soft.note(&applied.state, self.now());
        let agents: Vec<AgentSeen> = soft.agents.values().cloned().collect();
        let inputs = Inputs {
            state: &applied.state,
            voters: voters.as_ref(),
            applied_at: &soft.applied_at,
            agents: &agents,
            now: self.now(),
            now_unix_ms: unix_ms(),
            activation_seen: soft.activation_seen.map(|(_, at)| at),
            up_seen: &soft.up_seen,
            not_before: soft.not_before,
        };
        (engine::decide(&inputs), applied.clone())
    }

    /// Record a grant to `agent` of `site` at `epoch` for the current term,
    /// unless the site is draining.
    pub fn record_grant(
        &self,
        term: u64,
        site: &str,
        agent: &str,
        epoch: Epoch,
    ) -> Result<(), GrantRefusal> {
        let now = self.now();
        let mut soft = self.soft.lock().unwrap_or_else(|e| e.into_inner());
        soft.ensure_term(term, now);
        soft.book.try_grant(site, agent, now)?;
        soft.agent_grants
            .insert((site.to_string(), agent.to_string()), (epoch, now));
        Ok(())
    }

    /// Why `agent` holds no lease at `epoch` that this leader can vouch for,
    /// if it does not: its last grant from this leader, in this term, was
    /// for `epoch` and less than `lease_ttl` ago on this leader's clock.
    /// (The agent's own check is stricter: it counts from its send time.)
    pub fn check_agent_lease(
        &self,
        term: u64,
        site: &str,
        agent: &str,
        epoch: Epoch,
        lease_ttl: Duration,
    ) -> Result<(), String> {
        let now = self.now();
        let mut soft = self.soft.lock().unwrap_or_else(|e| e.into_inner());
        soft.ensure_term(term, now);
        match soft
            .agent_grants
            .get(&(site.to_string(), agent.to_string()))
        {
            Some((e, at)) if *e == epoch && now.saturating_sub(*at) < lease_ttl => Ok(()),
            Some((e, _)) if *e != epoch => Err(format!(
                "{agent}'s last lease is for epoch {e}, not {epoch}: renew the lease first"
            )),
            _ => Err(format!(
                "{agent} holds no current lease from this leader: renew the lease first"
            )),
        }
    }

    /// Arm or push back the deadline of claim `generation` of `name`.
    pub fn arm_claim(&self, epoch: Epoch, name: &str, generation: u64, ttl: Duration) {
        let now = self.now();
        let mut soft = self.soft.lock().unwrap_or_else(|e| e.into_inner());
        soft.claim_deadlines
            .insert((epoch, name.to_string(), generation), now + ttl);
    }

    /// Remember what an agent said in a renewal (evidence, agent veto).
    /// Refused (with why) when the table already holds
    /// [`MAX_AGENTS`](crate::server::limits::MAX_AGENTS) other agents.
    pub fn record_agent(&self, report: AgentReport) -> Result<(), String> {
        let now = self.now();
        let mut soft = self.soft.lock().unwrap_or_else(|e| e.into_inner());
        soft.agents
            .retain(|_, a| now.saturating_sub(a.heard_at) < AGENT_FORGET_AFTER);
        let max = crate::server::limits::MAX_AGENTS;
        let key = (report.site.clone(), report.agent.clone());
        if soft.agents.len() >= max && !soft.agents.contains_key(&key) {
            return Err(format!(
                "the leader already tracks {max} agents, the limit; {} is refused until one of \
                 them has been silent for {AGENT_FORGET_AFTER:?}",
                report.agent
            ));
        }
        soft.agents.insert(
            key,
            AgentSeen {
                report,
                heard_at: now,
            },
        );
        Ok(())
    }

    /// Propose through the leader: locally when leading, else over the Raft
    /// service's `Propose` (the leader checks the sender's identity).
    pub async fn propose(&self, request: Request) -> Result<Response, NodeError> {
        if self.is_leader() {
            return self
                .raft
                .client_write(request)
                .await
                .map(|r| r.data)
                .map_err(|e| NodeError::Unavailable(format!("commit: {e}")));
        }
        let leader = self.leader().ok_or(NodeError::NotLeader { leader: None })?;
        self.net
            .propose_to(leader, &request)
            .await
            .map_err(NodeError::Unavailable)
    }
}

/// Follow the state: note when each observation was applied here, and when
/// the mode went back to auto.
pub async fn track_observations(node: Arc<Node>) {
    let mut rx = node.state.subscribe();
    loop {
        {
            let applied = rx.borrow_and_update().clone();
            let now = node.now();
            node.soft
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .note(&applied.state, now);
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Per site: (name, health, per target: (name, health, Consul evidence kind)).
type ViewSummary = Vec<(String, String, Vec<(String, String, String)>)>;

/// What of a view is worth a log entry when it changes.
fn summary(sites: &BTreeMap<String, SiteView>) -> ViewSummary {
    sites
        .values()
        .map(|s| {
            let targets = s
                .targets
                .iter()
                .map(|t| {
                    let consul = match &t.consul {
                        None => "-".to_string(),
                        Some(ConsulEvidence::Passing) => "passing".into(),
                        Some(ConsulEvidence::Critical { check, .. }) => format!("critical:{check}"),
                        Some(ConsulEvidence::NodeDead) => "node-dead".into(),
                        Some(ConsulEvidence::NotRegistered) => "not-registered".into(),
                        Some(ConsulEvidence::Unknown { .. }) => "unknown".into(),
                    };
                    (t.name.clone(), t.health.to_string(), consul)
                })
                .collect();
            (s.site.clone(), s.health.to_string(), targets)
        })
        .collect()
}

/// Turn this witness's probes into `Observe` entries: when its view of a
/// site changes, and at least every `observation_ttl / 2` to re-affirm.
pub async fn observe(node: Arc<Node>, mut view: tokio::sync::watch::Receiver<Arc<LocalView>>) {
    let me = node.config.node.id;
    let mut last_sent: Option<(ViewSummary, Mono)> = None;
    loop {
        let local = view.borrow_and_update().clone();
        let applied = node.state.current();
        let ttl = applied
            .state
            .policy
            .as_ref()
            .map(|p| p.failover.observation_ttl);
        let is_member = node.identity.member(me).is_some();
        if let (Some(ttl), true, false) = (ttl, is_member, local.sites.is_empty()) {
            let now = node.now();
            let current = summary(&local.sites);
            let committed = applied
                .state
                .observations
                .get(&me)
                .map(|o| summary(&o.sites));
            let changed = committed.as_ref() != Some(&current);
            let due = last_sent
                .as_ref()
                .is_none_or(|(_, at)| now.saturating_sub(*at) >= ttl / 2);
            let too_soon = last_sent
                .as_ref()
                .is_some_and(|(_, at)| now.saturating_sub(*at) < MIN_OBSERVE_INTERVAL);
            if (changed || due) && !too_soon {
                let req = Request::Observe {
                    witness: me,
                    sites: local.sites.clone(),
                    consul: local.consul.clone(),
                    at_unix_ms: unix_ms(),
                };
                match node.propose(req).await {
                    Ok(_) => last_sent = Some((current, now)),
                    Err(e) => tracing::debug!("observation not committed yet: {e}"),
                }
            }
        }
        tokio::select! {
            _ = view.changed() => {}
            _ = tokio::time::sleep(TICK * 5) => {}
        }
        tokio::time::sleep(MIN_OBSERVE_INTERVAL / 4).await;
    }
}

/// The leader's loop: re-run the engine, drain, wait, activate; expire
/// freezes. Idle on followers.
pub async fn drive(node: Arc<Node>) {
    let mut state_rx = node.state.subscribe();
    loop {
        if let Err(e) = drive_once(&node).await {
            tracing::debug!("driver: {e}");
        }
        tokio::select! {
            _ = state_rx.changed() => {}
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}

async fn drive_once(node: &Arc<Node>) -> Result<(), NodeError> {
    let m = node.raft.metrics().borrow_watched().clone();
    if m.state != ServerState::Leader {
        let mut soft = node.soft.lock().unwrap_or_else(|e| e.into_inner());
        soft.pending = None;
        soft.last_decision = None;
        if let Some(op) = soft.operator.take() {
            let _ = op.result.send(Some(Err(format!(
                "node {} lost leadership; retry",
                node.config.node.id
            ))));
        }
        return Ok(());
    }
    let now = node.now();
    let term = m.current_term;
    let applied = node.state.current();
    let Some(policy) = applied.state.policy.clone() else {
        return Ok(());
    };
    let expired = {
        let mut soft = node.soft.lock().unwrap_or_else(|e| e.into_inner());
        soft.ensure_term(term, now);
        soft.book.take_expired(now, policy.lease.lease_ttl)
    };
    for site in expired {
        node.counters.lease_expired(&site);
    }

    expire_freeze(node, &applied.state, now).await?;
    expire_claims(node, &applied.state, now).await?;
    prefer_leader(node, &policy, &m, now).await;

    let (decision, applied) = node.decide_now();
    let operator = node
        .soft
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .operator
        .clone();
    let wanted = match (&operator, &decision) {
        (Some(op), _) => operator_decision(node, op),
        (
            None,
            Decision::Activate {
                to,
                from,
                cause,
                reason,
                ..
            },
        ) => Some((
            to.clone(),
            from.clone(),
            *cause,
            Actor::Auto,
            reason.clone(),
        )),
        (None, Decision::Hold { .. }) => None,
    };
    node.soft
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .last_decision = Some(decision.clone());

    let Some((to, from, cause, by, reason)) = wanted else {
        let mut soft = node.soft.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = soft.pending.take() {
            soft.book.undrain();
            tracing::warn!(from = %p.from, to = %p.to, "failover aborted: the evidence no longer holds");
        }
        return Ok(());
    };
    let lease_wait = engine::lease_wait(&policy);
    let ready = match &from {
        None => true,
        Some(from) => {
            let mut soft = node.soft.lock().unwrap_or_else(|e| e.into_inner());
            let same = soft
                .pending
                .as_ref()
                .is_some_and(|p| p.to == to && &p.from == from);
            if !same {
                soft.book.drain(from);
                tracing::warn!(
                    %from, %to, cause = %cause, wait = ?lease_wait,
                    "failover: draining {from}, waiting out its leases before activating {to}"
                );
            }
            let safe_after = soft.book.safe_after(from, lease_wait);
            let previous = soft.pending.take().filter(|_| same);
            let retry_at = previous.as_ref().and_then(|p| p.retry_at);
            soft.pending = Some(Pending {
                from: from.clone(),
                to: to.clone(),
                cause,
                by: by.clone(),
                reason: reason.clone(),
                drained_at: previous.as_ref().map_or(now, |p| p.drained_at),
                safe_after,
                commit_failures: previous.as_ref().map_or(0, |p| p.commit_failures),
                last_error: previous.and_then(|p| p.last_error),
                retry_at,
            });
            now >= safe_after && retry_at.is_none_or(|t| now >= t)
        }
    };
    if !ready {
        return Ok(());
    }
    let (waited_ms, since_last_lease_ms, agents) = {
        let soft = node.soft.lock().unwrap_or_else(|e| e.into_inner());
        let waited = soft
            .pending
            .as_ref()
            .map_or(0, |p| now.saturating_sub(p.drained_at).as_millis() as u64);
        let since = from.as_ref().map_or(0, |f| {
            now.saturating_sub(soft.book.lease_basis(f)).as_millis() as u64
        });
        let agents: Vec<AgentReport> = soft
            .agents
            .values()
            .map(|a| AgentReport {
                age_ms: now.saturating_sub(a.heard_at).as_millis() as u64,
                ..a.report.clone()
            })
            .collect();
        (waited, since, agents)
    };
    let evidence = Evidence {
        observations: counted_observations(&applied.state, decision.tallies()),
        assessment: decision.tallies().to_vec(),
        agents,
        lease_wait_ms: if from.is_some() {
            lease_wait.as_millis() as u64
        } else {
            0
        },
        waited_ms,
        since_last_lease_ms,
        consul_mode: policy.consul.mode.as_str().to_string(),
    };
    let epoch = applied.state.verdict.epoch + 1;
    let accept_data_loss = operator.as_ref().is_some_and(|op| op.accept_data_loss);
    let plan = engine::plan::plan(&policy, from.as_deref(), &to, accept_data_loss);
    let req = Request::Activate {
        site: to.clone(),
        epoch,
        expected: applied.state.verdict.clone(),
        cause,
        by,
        reason: reason.clone(),
        evidence: Box::new(evidence),
        at_unix_ms: unix_ms(),
        directives: plan.directives,
        gates: plan.gates,
    };
    let result = node.raft.client_write(req).await;
    let mut soft = node.soft.lock().unwrap_or_else(|e| e.into_inner());
    if let (Err(e), Some(p)) = (&result, soft.pending.as_mut()) {
        // Not committed (no quorum, leadership lost): keep the site drained
        // and try again later; the compare-and-set makes a late commit of
        // this attempt and a retry the same single activation.
        p.commit_failures += 1;
        p.last_error = Some(e.to_string());
        let pause = commit_backoff(p.commit_failures);
        p.retry_at = Some(now + pause);
        tracing::warn!(
            from = %p.from, to = %p.to, failures = p.commit_failures, retry_in = ?pause,
            "failover: committing the activation of {to} failed: {e}"
        );
        if let Some(op) = soft.operator.take() {
            let _ = op.result.send(Some(Err(format!("commit failed: {e}"))));
        }
        return Ok(());
    }
    let pending = soft.pending.take();
    soft.book.undrain();
    let outcome = match result {
        Ok(r) => match r.data {
            Response::Activated { site, epoch } => {
                tracing::warn!(%site, epoch, cause = %cause, "ACTIVATED {site} at epoch {epoch}: {reason}");
                // Timed from this leader's own decision: a pending
                // failover never outlives its term, so after a leader
                // change mid-failover the new leader counts from its own
                // decision, never from an instant of a predecessor's
                // clock. An activation without a pending failover (the
                // initial one) had nothing to detect and is not timed.
                if let Some(p) = pending.filter(|p| p.to == site && soft.book.term() == term) {
                    node.counters.failover_activated(
                        p.cause,
                        node.now().saturating_sub(p.drained_at),
                        p.safe_after.saturating_sub(p.drained_at),
                    );
                }
                Ok(epoch)
            }
            Response::Rejected(why) => {
                tracing::warn!("activation of {to} rejected by the state machine: {why}");
                Err(why)
            }
            other => Err(format!("unexpected response {other:?}")),
        },
        Err(e) => Err(format!("commit failed: {e}")),
    };
    if let Some(op) = soft.operator.take() {
        let _ = op.result.send(Some(outcome));
    }
    Ok(())
}

/// How often the leader may try to hand leadership to the preferred site.
const TRANSFER_EVERY: Duration = Duration::from_secs(10);
/// A new leader settles this long before handing leadership on.
const TRANSFER_SETTLE: Duration = Duration::from_secs(2);

/// On the leader: hand leadership to a healthy, caught-up voter of the
/// policy's `preferred_leader` site, unless a failover is in flight.
async fn prefer_leader(
    node: &Arc<Node>,
    policy: &crate::config::Policy,
    m: &openraft::RaftMetrics<crate::raft::types::TypeConfig>,
    now: Mono,
) {
    use openraft::Instant as _;
    let Some(site) = policy.failover.preferred_leader.as_deref() else {
        return;
    };
    if node.config.node.site == site {
        return;
    }
    {
        let soft = node.soft.lock().unwrap_or_else(|e| e.into_inner());
        let busy = soft.pending.is_some() || soft.operator.is_some();
        let recent = soft
            .last_transfer_at
            .is_some_and(|t| now.saturating_sub(t) < TRANSFER_EVERY);
        let settling = now.saturating_sub(soft.book.term_started()) < TRANSFER_SETTLE;
        if busy || recent || settling {
            return;
        }
    }
    let last = m.last_log_index;
    let alive = node.config.raft.election_timeout_min;
    let target = m.membership_config.voter_ids().find(|id| {
        let in_site = m
            .membership_config
            .get_node(id)
            .is_some_and(|n| n.site == site);
        let acked = m
            .heartbeat
            .as_ref()
            .and_then(|h| h.get(id).cloned().flatten())
            .is_some_and(|t| t.elapsed() < alive);
        let caught_up = m
            .replication
            .as_ref()
            .and_then(|r| r.get(id).cloned().flatten())
            .map(|l| l.index)
            == last;
        in_site && acked && caught_up
    });
    let Some(to) = target else { return };
    node.soft
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .last_transfer_at = Some(now);
    tracing::info!(
        to,
        site,
        "handing leadership to the preferred site's witness"
    );
    if let Err(e) = node.raft.trigger().transfer_leader(to).await {
        tracing::warn!("leadership transfer to node {to}: {e}");
    }
}

/// The operator's request as a decision, or its refusal sent back.
fn operator_decision(
    node: &Arc<Node>,
    op: &OperatorFailover,
) -> Option<(String, Option<String>, Cause, Actor, String)> {
    let applied = node.state.current();
    let voters = node.committed_voters();
    let mut soft = node.soft.lock().unwrap_or_else(|e| e.into_inner());
    soft.note(&applied.state, node.now());
    let agents: Vec<AgentSeen> = soft.agents.values().cloned().collect();
    let inputs = Inputs {
        state: &applied.state,
        voters: voters.as_ref(),
        applied_at: &soft.applied_at,
        agents: &agents,
        now: node.now(),
        now_unix_ms: unix_ms(),
        activation_seen: soft.activation_seen.map(|(_, at)| at),
        up_seen: &soft.up_seen,
        not_before: soft.not_before,
    };
    match engine::check_operator_failover(&inputs, &op.to) {
        Ok(_) => Some((
            op.to.clone(),
            applied.state.verdict.active_site.clone(),
            Cause::Operator,
            Actor::Operator(op.operator.clone()),
            op.reason.clone(),
        )),
        Err(why) => {
            let _ = op.result.send(Some(Err(why)));
            soft.operator = None;
            None
        }
    }
}

/// The observations behind a decision: every voter's latest one.
fn counted_observations(
    state: &WitnessState,
    tallies: &[crate::state::SiteTally],
) -> Vec<Observation> {
    let mut ids: BTreeSet<NodeId> = BTreeSet::new();
    for t in tallies {
        ids.extend(t.down.iter().chain(&t.up).chain(&t.consul_veto));
    }
    ids.iter()
        .filter_map(|w| state.observations.get(w).cloned())
        .collect()
}

/// On the leader: end a freeze whose expiry has passed on this leader's clock.
async fn expire_freeze(node: &Arc<Node>, state: &WitnessState, now: Mono) -> Result<(), NodeError> {
    let Some(freeze) = state.freeze.as_ref() else {
        return Ok(());
    };
    let Some(after) = freeze.expires_after_ms else {
        return Ok(());
    };
    let armed = {
        let mut soft = node.soft.lock().unwrap_or_else(|e| e.into_inner());
        match soft.freeze_armed {
            Some((index, at)) if index == freeze.log_index => at,
            _ => {
                soft.freeze_armed = Some((freeze.log_index, now));
                now
            }
        }
    };
    if now < armed + Duration::from_millis(after) {
        return Ok(());
    }
    let req = Request::Unfreeze {
        freeze_index: freeze.log_index,
        reason: format!(
            "freeze expired after {}",
            humantime::format_duration(Duration::from_millis(after))
        ),
        by: Actor::Auto,
        at_unix_ms: unix_ms(),
    };
    let resp = node
        .raft
        .client_write(req)
        .await
        .map_err(|e| NodeError::Unavailable(format!("commit unfreeze: {e}")))?;
    if let Response::ModeSet { .. } = resp.data {
        tracing::info!("freeze expired; back to automatic mode");
    }
    Ok(())
}

/// On the leader: expire claims whose deadline passed on this leader's
/// clock, and give up best-effort directives nobody claimed within their
/// claim TTL. Deadlines are armed when this leader first sees a claim, so a
/// new leader gives every claim its full TTL again.
async fn expire_claims(node: &Arc<Node>, state: &WitnessState, now: Mono) -> Result<(), NodeError> {
    use crate::state::ledger::DirectiveState;
    let ledger = &state.ledger;
    let mut due = Vec::new();
    {
        let mut soft = node.soft.lock().unwrap_or_else(|e| e.into_inner());
        let mut live_claims = BTreeSet::new();
        let mut live_pending = BTreeSet::new();
        for d in &ledger.directives {
            let ttl = Duration::from_millis(d.spec.claim_ttl_ms);
            match &d.state {
                DirectiveState::Claimed { generation, .. } => {
                    let key = (d.epoch, d.spec.name.clone(), *generation);
                    let deadline = *soft.claim_deadlines.entry(key.clone()).or_insert(now + ttl);
                    if now >= deadline {
                        due.push(Request::ExpireClaim {
                            epoch: d.epoch,
                            name: d.spec.name.clone(),
                            generation: *generation,
                            at_unix_ms: unix_ms(),
                        });
                    }
                    live_claims.insert(key);
                }
                DirectiveState::Pending if d.spec.best_effort => {
                    let key = (d.epoch, d.spec.name.clone());
                    let since = *soft.best_effort_since.entry(key.clone()).or_insert(now);
                    if now >= since + ttl {
                        due.push(Request::GiveUpDirective {
                            epoch: d.epoch,
                            name: d.spec.name.clone(),
                            at_unix_ms: unix_ms(),
                        });
                    }
                    live_pending.insert(key);
                }
                _ => {}
            }
        }
        soft.claim_deadlines.retain(|k, _| live_claims.contains(k));
        soft.best_effort_since
            .retain(|k, _| live_pending.contains(k));
    }
    for req in due {
        let what = req.to_string();
        let resp = node
            .raft
            .client_write(req)
            .await
            .map_err(|e| NodeError::Unavailable(format!("commit {what}: {e}")))?;
        match resp.data {
            Response::DirectiveUpdated { state } => {
                tracing::warn!("{what}: directive is now {state}");
            }
            Response::Rejected(why) => tracing::debug!("{what} not applied: {why}"),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::probe::ConsulView;

    /// A failed activation commit is retried after 200 ms, then twice as
    /// long each time, never more than 5 s apart.
    #[test]
    fn activation_commit_retries_back_off_to_a_cap() {
        let pauses: Vec<u128> = (1..=8).map(|n| commit_backoff(n).as_millis()).collect();
        assert_eq!(pauses, [200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(commit_backoff(u32::MAX), COMMIT_RETRY_MAX);
    }

    fn state_with(obs: &[(NodeId, u64)], mode: Mode) -> WitnessState {
        let mut s = WitnessState::default();
        s.verdict.mode = mode;
        for (w, index) in obs {
            s.observations.insert(
                *w,
                Observation {
                    witness: *w,
                    sites: BTreeMap::new(),
                    consul: ConsulView {
                        mode: "ignore".into(),
                        reachable: false,
                        leader: None,
                        error: None,
                        fetched_at_ms: 0,
                    },
                    at_unix_ms: 0,
                    log_index: *index,
                },
            );
        }
        s
    }

    /// A reader that notes the state itself sees every new observation as
    /// applied now, even before the tracker ran; replays from the local log
    /// at start are never stamped; a second note keeps the first stamp.
    #[test]
    fn note_stamps_new_observations_once_and_never_replays() {
        let mut soft = Soft {
            startup_last_log: 10,
            ..Soft::default()
        };
        let t = |s| Duration::from_secs(s);
        soft.note(&state_with(&[(1, 5), (2, 12)], Mode::Auto), t(100));
        assert_eq!(
            soft.applied_at.get(&1),
            None,
            "replayed at start: not fresh"
        );
        assert_eq!(soft.applied_at.get(&2), Some(&(12, t(100))));
        soft.note(&state_with(&[(1, 5), (2, 12)], Mode::Auto), t(103));
        assert_eq!(soft.applied_at.get(&2), Some(&(12, t(100))), "stamped once");
        soft.note(&state_with(&[(1, 14), (2, 12)], Mode::Auto), t(104));
        assert_eq!(soft.applied_at.get(&1), Some(&(14, t(104))));
    }

    /// The anti-flap and failback windows' first sights: an activation is
    /// stamped when first seen and again only for a new epoch; a site's
    /// "up" is stamped per observer and episode (`changed_at_ms`), kept
    /// while it lasts and dropped when the site is seen otherwise.
    #[test]
    fn note_stamps_first_sights_of_activations_and_up_episodes() {
        use crate::probe::SiteView;
        let t = |s| Duration::from_secs(s);
        let with = |epoch: u64, health: Health, changed: u64| {
            let mut s = state_with(&[(1, 20)], Mode::Auto);
            s.last_activation = Some(crate::state::Activation {
                site: "dc-a".into(),
                epoch,
                cause: crate::state::Cause::SiteDown,
                log_index: 9,
                at_unix_ms: 0,
            });
            if let Some(o) = s.observations.get_mut(&1) {
                o.sites.insert(
                    "dc-a".into(),
                    SiteView {
                        site: "dc-a".into(),
                        health,
                        changed_at_ms: changed,
                        targets: Vec::new(),
                    },
                );
            }
            s
        };
        let mut soft = Soft::default();
        soft.note(&with(2, Health::Up, 500), t(100));
        soft.note(&with(2, Health::Up, 500), t(130));
        assert_eq!(soft.activation_seen, Some((2, t(100))));
        assert_eq!(soft.up_seen.get(&(1, "dc-a".into())), Some(&(500, t(100))));
        soft.note(&with(3, Health::Down, 700), t(140));
        assert_eq!(soft.activation_seen, Some((3, t(140))));
        assert_eq!(soft.up_seen.get(&(1, "dc-a".into())), None);
        soft.note(&with(3, Health::Up, 900), t(150));
        assert_eq!(soft.up_seen.get(&(1, "dc-a".into())), Some(&(900, t(150))));
    }

    /// The end of a freeze moves `not_before`, so older observations cannot
    /// trigger anything.
    #[test]
    fn unfreezing_moves_not_before() {
        let mut soft = Soft::default();
        soft.note(&state_with(&[], Mode::Frozen), Duration::from_secs(5));
        assert_eq!(soft.not_before, Duration::ZERO);
        soft.note(&state_with(&[], Mode::Auto), Duration::from_secs(9));
        assert_eq!(soft.not_before, Duration::from_secs(9));
    }
}

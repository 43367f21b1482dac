//! `witness.v1.Witness`: what agents on the HA nodes talk to.
//!
//! - `RenewLease` is granted only by the leader, only after a read-index
//!   round that started after the request arrived (openraft's
//!   `ReadPolicy::ReadIndex`; a leader-lease read would not do), only from
//!   state applied up to that index, only for the current epoch of the
//!   active site, and never while that site is being drained. The grant is
//!   recorded in the leader's lease book *before* the reply leaves, so the
//!   failover wait covers it. Followers forward renewals to the leader and
//!   relay the answer, so an agent cut off from the leader's site still
//!   renews through the third site. Nothing is ever answered from a cache.
//! - `GetVerdict` is linearizable unless the caller asks for a stale read,
//!   and then says so; `WatchVerdict` streams this node's applied verdict:
//!   the current one first, then every change.

use std::sync::Arc;

use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use witness_proto::witness_client::WitnessClient;
use witness_proto::witness_server::Witness;
use witness_proto::*;

use crate::sabotage::{self, Sabotage};

use super::directives;
use crate::engine::lease::GrantRefusal;
use crate::node::Node;
use crate::raft::store::AppliedState;
use crate::state::AgentReport;

/// Buffered verdicts per watcher; a watcher that falls this far behind is
/// dropped (it reconnects and gets the current verdict first).
const WATCH_BUFFER: usize = 16;
/// How often a verdict watch checks that its caller is still trusted.
const WATCH_RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

pub struct WitnessService {
    node: Arc<Node>,
}

impl WitnessService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    async fn forward<T, R, F, Fut>(
        &self,
        request: &Request<T>,
        f: F,
    ) -> Option<Result<Response<R>, Status>>
    where
        T: Clone,
        F: FnOnce(WitnessClient<Channel>, Request<T>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<R>, Status>>,
    {
        super::forward(&self.node, request, WitnessClient::new, f).await
    }

    /// The calling agent's `(site, name)` from its certificate (`None` on a
    /// plaintext node); anything but an agent is refused.
    fn agent<T>(&self, request: &Request<T>) -> Result<Option<(String, String)>, Status> {
        super::authz::require_agent(self.node.trust.as_deref(), &self.node.identity, request)
    }

    /// A site an agent claims must be one of the committed policy's: an
    /// unknown one never reaches the agent table, a metric label or a log.
    fn known_site(&self, site: &str) -> Result<(), Status> {
        let applied = self.node.state.current();
        let Some(policy) = applied.state.policy.as_ref() else {
            return Err(Status::failed_precondition(
                "this witness knows no policy yet, so no site: apply one with `witnessctl policy \
                 apply`, or ask another witness",
            ));
        };
        if policy.sites.iter().any(|s| s.name == site) {
            return Ok(());
        }
        let known: Vec<&str> = policy.sites.iter().map(|s| s.name.as_str()).collect();
        Err(Status::invalid_argument(format!(
            "site {site:?} is not a site of the cluster policy ({}); check agent.site and the \
             agent's certificate",
            known.join(", ")
        )))
    }

    fn verdict(&self, stale: bool) -> Verdict {
        verdict_of(&self.node.state.current(), stale, self.node.config.node.id)
    }
}

/// The verdict of `applied`, with the current epoch's directives and gates.
fn verdict_of(applied: &AppliedState, stale: bool, answered_by: u64) -> Verdict {
    let state = &applied.state;
    let v = &state.verdict;
    Verdict {
        active_site: v.active_site.clone().unwrap_or_default(),
        epoch: v.epoch,
        mode: v.mode.to_string(),
        stale,
        applied_index: applied.last_applied.map(|l| l.index).unwrap_or(0),
        answered_by,
        directives: state
            .ledger
            .directives
            .iter()
            .map(directives::info)
            .collect(),
        gates: directives::gates(&state.ledger),
    }
}

/// Names and roles are short identifiers; bounded so a bad client cannot
/// grow the leader's agent table or logs ([`super::limits`]).
fn check_name(field: &str, value: &str) -> Result<(), Status> {
    super::limits::name(field, value)
}

/// The applied state after a read-index round, on a leader that stayed
/// leader throughout, for a request at `epoch`.
enum Fresh {
    Current {
        term: u64,
        applied: Arc<AppliedState>,
    },
    /// The request's epoch is not the current one, and why.
    Stale(String),
}

impl WitnessService {
    /// A read-index round that starts now, after the request arrived (its
    /// quorum acknowledges a heartbeat sent after this point), on a leader
    /// that stays leader throughout: the term and the state applied after
    /// it. `what` names the request in the retry message.
    async fn read_index_round(&self, what: &str) -> Result<(u64, Arc<AppliedState>), Status> {
        let term = self.node.raft.metrics().borrow_watched().current_term;
        self.node.linearizable_barrier().await?;
        let m = self.node.raft.metrics().borrow_watched().clone();
        if m.state != ServerState::Leader || m.current_term != term {
            return Err(Status::unavailable(format!(
                "leadership changed during the {what}; retry"
            )));
        }
        Ok((term, self.node.state.current()))
    }

    async fn fresh_state(&self, epoch: u64) -> Result<Fresh, Status> {
        let (term, applied) = self.read_index_round("request").await?;
        let current = applied.state.verdict.epoch;
        if epoch != current {
            return Ok(Fresh::Stale(format!(
                "epoch {epoch} is not the current epoch {current}"
            )));
        }
        Ok(Fresh::Current { term, applied })
    }
}

fn refused(req: &RenewLeaseRequest, epoch: u64, reason: String) -> RenewLeaseReply {
    RenewLeaseReply {
        granted: false,
        nonce: req.nonce,
        epoch,
        lease_ttl_ms: 0,
        reason,
        ..RenewLeaseReply::default()
    }
}

#[tonic::async_trait]
impl Witness for WitnessService {
    async fn get_verdict(
        &self,
        request: Request<GetVerdictRequest>,
    ) -> Result<Response<Verdict>, Status> {
        self.agent(&request)?;
        if request.get_ref().allow_stale {
            return Ok(Response::new(self.verdict(true)));
        }
        if let Some(r) = self
            .forward(&request, |mut c, r| async move { c.get_verdict(r).await })
            .await
        {
            return r;
        }
        self.node.linearizable_barrier().await?;
        Ok(Response::new(self.verdict(false)))
    }

    type WatchVerdictStream = ReceiverStream<Result<Verdict, Status>>;

    async fn watch_verdict(
        &self,
        request: Request<GetVerdictRequest>,
    ) -> Result<Response<Self::WatchVerdictStream>, Status> {
        self.agent(&request)?;
        // A stream outlives the call's check: the caller's certificate is
        // checked again every few seconds (expiry, a reload's CA or deny
        // list), and the stream ends when it is no longer trusted.
        let recheck = match self.node.trust.clone() {
            Some(trust) => Some((super::authz::connection_caller(&trust, &request)?, trust)),
            None => None,
        };
        let (tx, rx) = tokio::sync::mpsc::channel(WATCH_BUFFER);
        let mut states = self.node.state.subscribe();
        let me = self.node.config.node.id;
        tokio::spawn(async move {
            let mut last = None;
            let mut tick = tokio::time::interval(WATCH_RECHECK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                if let Some((caller, trust)) = &recheck
                    && let Err(why) = trust.still_trusts(caller)
                {
                    tracing::warn!("ended a verdict watch of {}: {why}", caller.identity);
                    let _ = tx.try_send(Err(Status::unauthenticated(format!(
                        "{} is no longer trusted: {why}",
                        caller.identity
                    ))));
                    return;
                }
                // Most applied entries (observations) change neither the
                // verdict nor a directive: compare those first, and build
                // and send a message only when one of them changed.
                let verdict = {
                    let applied = states.borrow_and_update();
                    let s = &applied.state;
                    let key = (
                        s.verdict.clone(),
                        s.ledger.directives.clone(),
                        s.ledger.gates.clone(),
                    );
                    if last.as_ref() == Some(&key) {
                        None
                    } else {
                        last = Some(key);
                        Some(verdict_of(&applied, true, me))
                    }
                };
                // A full buffer means the watcher stopped reading: drop it.
                if let Some(verdict) = verdict
                    && tx.try_send(Ok(verdict)).is_err()
                {
                    return;
                }
                tokio::select! {
                    changed = states.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                    _ = tick.tick() => {}
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn renew_lease(
        &self,
        mut request: Request<RenewLeaseRequest>,
    ) -> Result<Response<RenewLeaseReply>, Status> {
        let proven = self.agent(&request)?;
        {
            let r = request.get_mut();
            super::authz::agent_fields(&proven, &mut r.site, &mut r.agent, true)?;
            check_name("agent", &r.agent)?;
            check_name("site", &r.site)?;
            check_name("role", &r.role)?;
            if r.state.len() > 32 {
                return Err(Status::invalid_argument(
                    "state is more than the limit of 32 bytes",
                ));
            }
            if !r.state.is_empty() {
                check_name("state", &r.state)?;
            }
        }
        if let Some(r) = self
            .forward(&request, |mut c, r| async move { c.renew_lease(r).await })
            .await
        {
            return r;
        }
        // On the leader, whose policy is the committed one (a follower that
        // has not caught up forwards rather than refuses).
        self.known_site(&request.get_ref().site)?;
        let req = request.into_inner();
        let reply = self.answer_renewal(&req).await?;
        self.node.counters.lease_answered(&req.site, &reply);
        Ok(Response::new(reply))
    }

    async fn claim_directive(
        &self,
        mut request: Request<ClaimDirectiveRequest>,
    ) -> Result<Response<ClaimDirectiveReply>, Status> {
        let proven = self.agent(&request)?;
        {
            let r = request.get_mut();
            super::authz::agent_fields(&proven, &mut r.site, &mut r.agent, true)?;
            check_name("agent", &r.agent)?;
            check_name("site", &r.site)?;
            check_name("role", &r.role)?;
            check_name("directive name", &r.name)?;
        }
        if let Some(r) = self
            .forward(
                &request,
                |mut c, r| async move { c.claim_directive(r).await },
            )
            .await
        {
            return r;
        }
        self.known_site(&request.get_ref().site)?;
        let req = request.into_inner();
        let refuse = |reason: String| {
            Ok(Response::new(ClaimDirectiveReply {
                granted: false,
                reason,
                ..ClaimDirectiveReply::default()
            }))
        };
        let (term, lease_ttl, spec_ttl) = match self.fresh_state(req.epoch).await? {
            Fresh::Current { term, applied } => {
                let state = &applied.state;
                if let Err(why) = state
                    .ledger
                    .check_claim(req.epoch, &req.name, &req.site, &req.role)
                {
                    return refuse(why);
                }
                let spec = state
                    .ledger
                    .directives
                    .iter()
                    .find(|d| d.spec.name == req.name)
                    .map(|d| (d.spec.claim_ttl_ms, d.spec.best_effort));
                let Some(policy) = state.policy.as_ref() else {
                    return refuse("no policy committed yet".into());
                };
                (term, policy.lease.lease_ttl, spec.unwrap_or_default())
            }
            Fresh::Stale(why) => return refuse(why),
        };
        let (spec_ttl, best_effort) = spec_ttl;
        // A best-effort directive is aimed at the site that lost: its agents
        // hold no lease at the new epoch, and it only stops things there.
        if !best_effort
            && let Err(why) = self
                .node
                .check_agent_lease(term, &req.site, &req.agent, req.epoch, lease_ttl)
        {
            return refuse(why);
        }
        let response = self
            .node
            .propose(crate::state::Request::ClaimDirective {
                epoch: req.epoch,
                name: req.name.clone(),
                agent: req.agent.clone(),
                site: req.site.clone(),
                role: req.role.clone(),
                at_unix_ms: crate::node::unix_ms(),
            })
            .await?;
        match response {
            crate::state::Response::Claimed { generation } => {
                let ttl = std::time::Duration::from_millis(spec_ttl);
                self.node.arm_claim(req.epoch, &req.name, generation, ttl);
                tracing::info!(
                    agent = %req.agent, generation,
                    "directive {}/{} claimed by {}", req.epoch, req.name, req.agent
                );
                Ok(Response::new(ClaimDirectiveReply {
                    granted: true,
                    generation,
                    claim_ttl_ms: spec_ttl,
                    reason: String::new(),
                }))
            }
            crate::state::Response::Rejected(why) => refuse(why),
            other => Err(Status::internal(format!("unexpected response {other:?}"))),
        }
    }

    async fn renew_claim(
        &self,
        mut request: Request<RenewClaimRequest>,
    ) -> Result<Response<RenewClaimReply>, Status> {
        let proven = self.agent(&request)?;
        {
            let r = request.get_mut();
            super::authz::agent_fields(&proven, &mut String::new(), &mut r.agent, false)?;
            check_name("agent", &r.agent)?;
            check_name("directive name", &r.name)?;
        }
        if let Some(r) = self
            .forward(&request, |mut c, r| async move { c.renew_claim(r).await })
            .await
        {
            return r;
        }
        let req = request.into_inner();
        let refuse = |reason: String| {
            Ok(Response::new(RenewClaimReply {
                granted: false,
                claim_ttl_ms: 0,
                reason,
                still_held: false,
            }))
        };
        let (term, applied) = match self.fresh_state(req.epoch).await? {
            Fresh::Current { term, applied } => (term, applied),
            Fresh::Stale(why) => return refuse(why),
        };
        let state = &applied.state;
        let (site, _) = super::directives::site_and_role(&state.ledger, req.epoch, &req.name);
        directive_of_own_site(&proven, &site, req.epoch, &req.name)?;
        if !state
            .ledger
            .holds(req.epoch, &req.name, &req.agent, req.generation)
        {
            return refuse(format!(
                "{} does not hold claim {} of {}/{}: stop the command",
                req.agent, req.generation, req.epoch, req.name
            ));
        }
        let lease_ttl = state
            .policy
            .as_ref()
            .map(|p| p.lease.lease_ttl)
            .unwrap_or_default();
        let (ttl, best_effort) = state
            .ledger
            .directives
            .iter()
            .find(|d| d.spec.name == req.name)
            .map_or((0, false), |d| (d.spec.claim_ttl_ms, d.spec.best_effort));
        if !best_effort
            && let Err(why) = self
                .node
                .check_agent_lease(term, &site, &req.agent, req.epoch, lease_ttl)
        {
            // The claim itself is current: a leader that has not granted
            // this agent a lease yet (a new one) only asks it to renew first.
            return Ok(Response::new(RenewClaimReply {
                granted: false,
                claim_ttl_ms: 0,
                reason: why,
                still_held: true,
            }));
        }
        self.node.arm_claim(
            req.epoch,
            &req.name,
            req.generation,
            std::time::Duration::from_millis(ttl),
        );
        Ok(Response::new(RenewClaimReply {
            granted: true,
            claim_ttl_ms: ttl,
            reason: String::new(),
            still_held: false,
        }))
    }

    async fn report_directive(
        &self,
        mut request: Request<ReportDirectiveRequest>,
    ) -> Result<Response<ReportDirectiveReply>, Status> {
        let proven = self.agent(&request)?;
        {
            let r = request.get_mut();
            super::authz::agent_fields(&proven, &mut String::new(), &mut r.agent, false)?;
            check_name("agent", &r.agent)?;
            check_name("directive name", &r.name)?;
            super::limits::text("error", &r.error, super::limits::MAX_REASON)?;
            if r.output_tail.len() > super::limits::MAX_OUTPUT_TAIL {
                return Err(Status::invalid_argument(format!(
                    "output_tail is {} bytes, more than the limit of {} (the last 4 KiB are kept)",
                    r.output_tail.len(),
                    super::limits::MAX_OUTPUT_TAIL
                )));
            }
        }
        if let Some(r) = self
            .forward(
                &request,
                |mut c, r| async move { c.report_directive(r).await },
            )
            .await
        {
            return r;
        }
        let mut req = request.into_inner();
        // On the leader only: the replacement character is longer than
        // what it replaces, and the follower's size check came first.
        req.output_tail = super::limits::printable(&req.output_tail);
        {
            let applied = self.node.state.current();
            let (site, _) =
                super::directives::site_and_role(&applied.state.ledger, req.epoch, &req.name);
            directive_of_own_site(&proven, &site, req.epoch, &req.name)?;
        }
        let response = self
            .node
            .propose(crate::state::Request::ReportDirective {
                epoch: req.epoch,
                name: req.name.clone(),
                agent: req.agent.clone(),
                generation: req.generation,
                result: crate::state::ledger::RunResult {
                    exit_code: req.exit_code,
                    output_tail: req.output_tail.clone(),
                    error: req.error.clone(),
                },
                at_unix_ms: crate::node::unix_ms(),
            })
            .await?;
        let (site, role) = {
            let applied = self.node.state.current();
            super::directives::site_and_role(&applied.state.ledger, req.epoch, &req.name)
        };
        let outcome = match &response {
            crate::state::Response::DirectiveUpdated { state } => {
                super::directives::report_outcome(state)
            }
            crate::state::Response::Rejected(_) => "rejected",
            _ => "error",
        };
        self.node.counters.directive_reported(&site, &role, outcome);
        match response {
            crate::state::Response::DirectiveUpdated { state } => {
                tracing::info!(
                    agent = %req.agent, generation = req.generation,
                    "directive {}/{} {state}", req.epoch, req.name
                );
                Ok(Response::new(ReportDirectiveReply {
                    accepted: true,
                    state,
                    reason: String::new(),
                }))
            }
            crate::state::Response::Rejected(reason) => {
                tracing::warn!(agent = %req.agent, "report ignored: {reason}");
                Ok(Response::new(ReportDirectiveReply {
                    accepted: false,
                    state: String::new(),
                    reason,
                }))
            }
            other => Err(Status::internal(format!("unexpected response {other:?}"))),
        }
    }
}

/// An agent acts only on its own site's directives: an agent of another
/// site with the same name must not renew or report a claim it does not
/// hold. (`site` is the directive's, `unknown` when the ledger has no such
/// directive: the ledger then refuses the call itself.)
fn directive_of_own_site(
    proven: &Option<(String, String)>,
    site: &str,
    epoch: u64,
    name: &str,
) -> Result<(), Status> {
    match proven {
        Some((own, agent)) if site != "unknown" && own != site => {
            tracing::warn!(
                "refused agent {own}/{agent}: it acted on directive {epoch}/{name} of site {site}"
            );
            Err(Status::permission_denied(format!(
                "agent {own}/{agent} may not act on directive {epoch}/{name}, which is for site \
                 {site}"
            )))
        }
        _ => Ok(()),
    }
}

impl WitnessService {
    /// The leader's answer to a renewal (after the read-index round).
    async fn answer_renewal(&self, req: &RenewLeaseRequest) -> Result<RenewLeaseReply, Status> {
        self.node
            .record_agent(AgentReport {
                agent: req.agent.clone(),
                site: req.site.clone(),
                role: req.role.clone(),
                state: req.state.clone(),
                state_for_ms: req.state_for_ms,
                service_healthy: req.service_healthy,
                age_ms: 0,
            })
            .map_err(Status::resource_exhausted)?;
        let (term, applied) = if sabotage::active(Sabotage::GrantWithoutReadIndex) {
            let term = self.node.raft.metrics().borrow_watched().current_term;
            (term, self.node.state.current())
        } else {
            self.read_index_round("renewal").await?
        };
        let state = &applied.state;
        let epoch = state.verdict.epoch;
        let Some(policy) = state.policy.as_ref() else {
            return Ok(refused(req, epoch, "no policy committed yet".into()));
        };
        if state.verdict.active_site.as_deref() != Some(req.site.as_str()) {
            let active = state.verdict.active_site.as_deref().unwrap_or("none");
            return Ok(refused(
                req,
                epoch,
                format!("{} is not the active site ({active} is)", req.site),
            ));
        }
        if req.epoch != epoch {
            return Ok(refused(
                req,
                epoch,
                format!("epoch {} is not the current epoch {epoch}", req.epoch),
            ));
        }
        let margin = policy.lease.margin.as_millis() as u64;
        if req.fence_timeout_ms > margin || req.watchdog_timeout_ms > margin {
            return Ok(refused(
                req,
                epoch,
                format!(
                    "agent {} has fence_timeout {} ms / watchdog timeout {} ms, but the policy's \
                     lease margin is {margin} ms: an agent must be able to fence within the \
                     margin. Lower its timeouts or raise [lease] margin",
                    req.agent, req.fence_timeout_ms, req.watchdog_timeout_ms
                ),
            ));
        }
        if let Err(GrantRefusal::Draining { site }) =
            self.node.record_grant(term, &req.site, &req.agent, epoch)
        {
            return Ok(refused(
                req,
                epoch,
                format!("{site} is being drained for a failover: no new leases"),
            ));
        }
        Ok(RenewLeaseReply {
            granted: true,
            nonce: req.nonce,
            epoch,
            lease_ttl_ms: policy.lease.lease_ttl.as_millis() as u64,
            reason: String::new(),
            renew_interval_ms: policy.lease.renew_interval.as_millis() as u64,
        })
    }
}

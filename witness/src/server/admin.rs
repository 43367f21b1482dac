//! `witness.v1.Admin`: what operators and `witnessctl` talk to.
//!
//! Any witness answers. What only the leader may do (membership and policy
//! changes, the cluster-wide status) a follower forwards to the leader it
//! knows, once: a forwarded request is marked so it is never forwarded again,
//! and a node that is not the leader answers a forwarded request with
//! `UNAVAILABLE` naming the leader it knows.

use std::sync::Arc;
use std::time::Duration;

use crate::engine::{self, Decision};
use crate::state::{Request as StateRequest, Response as StateResponse};

use openraft::Instant as _;
use openraft::async_runtime::WatchReceiver;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use witness_proto::admin_client::AdminClient;
use witness_proto::admin_server::Admin;
use witness_proto::*;

use super::{authz, limits};
use crate::config::Policy;
use crate::node::{Node, NodeError};
use crate::raft::types::{NodeId, WitnessNode};
use crate::state::Actor;

/// Upper bound on a policy file accepted over the wire.
const MAX_POLICY_BYTES: usize = 1024 * 1024;

pub struct AdminService {
    node: Arc<Node>,
}

impl AdminService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    /// This node's own status, as `witnessctl status --local` shows it
    /// (never forwarded): what `/metrics` reports.
    pub fn local_snapshot(&self) -> StatusReply {
        let mut reply = self.local_status(String::new());
        self.add_verdict_view(&mut reply);
        reply
    }

    /// The newest `limit` history records this node has applied (0: all),
    /// oldest first. No read barrier: the `history` RPC puts one in front;
    /// the status page falls back to this when the leader cannot be reached.
    pub fn local_history(&self, limit: u32) -> HistoryReply {
        let applied = self.node.state.current();
        let limit = match limit {
            0 => usize::MAX,
            n => n as usize,
        };
        let records = &applied.state.history;
        let skip = records.len().saturating_sub(limit);
        let entries = records[skip..]
            .iter()
            .map(|r| HistoryEntry {
                log_index: r.log_index,
                at_unix_ms: r.at_unix_ms,
                by: r.by.to_string(),
                reason: r.reason.clone(),
                event: r.event.to_string(),
                json: serde_json::to_string(r).unwrap_or_default(),
            })
            .collect();
        HistoryReply { entries }
    }

    async fn forward<T, R, F, Fut>(
        &self,
        request: &Request<T>,
        f: F,
    ) -> Option<Result<Response<R>, Status>>
    where
        T: Clone,
        F: FnOnce(AdminClient<Channel>, Request<T>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<R>, Status>>,
    {
        super::forward(&self.node, request, AdminClient::new, f).await
    }

    fn members(&self) -> Vec<Member> {
        member_list(&self.node)
    }

    fn local_status(&self, note: String) -> StatusReply {
        let node = &self.node;
        let m = node.raft.metrics().borrow_watched().clone();
        let applied = node.state.current();
        let me = node.config.node.id;
        let is_member = m.membership_config.get_node(&me).is_some();
        let role = match m.state {
            _ if !is_member && m.membership_config.voter_ids().next().is_none() => "joiner",
            openraft::ServerState::Leader => "leader",
            openraft::ServerState::Follower => "follower",
            openraft::ServerState::Candidate => "candidate",
            openraft::ServerState::Learner => "learner",
            openraft::ServerState::Shutdown => "shutdown",
        };
        let readiness = node.readiness();
        StatusReply {
            cluster_name: node.identity.cluster_name.clone(),
            cluster_id: node.identity.cluster_id().unwrap_or_default(),
            answered_by: me,
            answered_by_name: node.config.node.name.clone(),
            role: role.to_string(),
            leader_id: m.current_leader,
            term: m.current_term,
            commit_index: m
                .cluster_committed
                .as_ref()
                .or(m.local_committed.as_ref())
                .map(|l| l.index)
                .unwrap_or(0),
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            last_log_index: m.last_log_index.unwrap_or(0),
            members: self.members(),
            ready: readiness.is_ok(),
            not_ready_reason: readiness.err().unwrap_or_default(),
            policy_version: applied.state.policy_version,
            incarnation: node.identity.incarnation.0.clone(),
            note,
            warnings: node.tls_warnings(crate::trust::unix_now()),
            leader_since_ms: None,
            active_site: applied
                .state
                .verdict
                .active_site
                .clone()
                .unwrap_or_default(),
            epoch: applied.state.verdict.epoch,
            mode: applied.state.verdict.mode.to_string(),
            freeze_reason: applied
                .state
                .freeze
                .as_ref()
                .map(|f| format!("{} (by {})", f.reason, f.by))
                .unwrap_or_default(),
            freeze_expires_in_ms: None,
            sites: Vec::new(),
            pending: None,
            decision: Vec::new(),
            agents: Vec::new(),
        }
    }

    /// Sites, observations, the pending failover and the engine's reasoning,
    /// as this node sees them.
    fn add_verdict_view(&self, reply: &mut StatusReply) {
        let node = &self.node;
        let (decision, applied) = node.decide_now();
        let now = node.now();
        let soft = node.soft.lock().unwrap_or_else(|e| e.into_inner());
        let Some(policy) = applied.state.policy.as_ref() else {
            return;
        };
        let voters: Vec<u64> = node
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .voter_ids()
            .collect();
        let ttl = policy.failover.observation_ttl;
        for site in &policy.sites {
            let tally = decision.tallies().iter().find(|t| t.site == site.name);
            let mut status = SiteStatus {
                name: site.name.clone(),
                active: applied.state.verdict.active_site.as_deref() == Some(site.name.as_str()),
                down: tally.map_or(0, |t| t.down.len() as u32),
                up: tally.map_or(0, |t| t.up.len() as u32),
                consul_veto: tally.map_or(0, |t| t.consul_veto.len() as u32),
                quorum: tally.map_or(0, |t| t.quorum as u32),
                observations: Vec::new(),
            };
            for w in &voters {
                let obs = applied.state.observations.get(w);
                let view = obs.and_then(|o| o.sites.get(&site.name));
                let applied_at = soft
                    .applied_at
                    .get(w)
                    .filter(|(i, _)| obs.is_some_and(|o| o.log_index == *i))
                    .map(|(_, at)| *at);
                let age = applied_at.map(|at| now.saturating_sub(at));
                let fresh = applied_at.is_some_and(|at| at >= soft.not_before)
                    && age.is_some_and(|a| a < ttl);
                let seen = if fresh {
                    engine::seen(policy, site, view)
                } else {
                    engine::Seen::Unknown
                };
                status.observations.push(WitnessObservation {
                    witness: *w,
                    health: view
                        .map(|v| v.health.to_string())
                        .unwrap_or_else(|| "unknown".into()),
                    seen: match seen {
                        engine::Seen::Up => "up",
                        engine::Seen::Down => "down",
                        engine::Seen::ConsulVeto => "consul_veto",
                        engine::Seen::Unknown => "unknown",
                    }
                    .to_string(),
                    fresh,
                    age_ms: age.map(|a| a.as_millis() as u64),
                    view_json: view
                        .and_then(|v| serde_json::to_string(v).ok())
                        .unwrap_or_default(),
                    consul_json: obs
                        .and_then(|o| serde_json::to_string(&o.consul).ok())
                        .unwrap_or_default(),
                });
            }
            reply.sites.push(status);
        }
        if node.is_leader() {
            reply.pending = soft.pending.as_ref().map(|p| PendingFailover {
                from: p.from.clone(),
                to: p.to.clone(),
                cause: p.cause.to_string(),
                reason: p.reason.clone(),
                remaining_ms: p.safe_after.saturating_sub(now).as_millis() as u64,
                commit_failures: p.commit_failures,
                last_error: p.last_error.clone().unwrap_or_default(),
                retry_in_ms: p
                    .retry_at
                    .map_or(0, |t| t.saturating_sub(now).as_millis() as u64),
            });
            if let (Some(f), Some((index, armed))) = (&applied.state.freeze, soft.freeze_armed)
                && f.log_index == index
                && let Some(ms) = f.expires_after_ms
            {
                let end = armed + Duration::from_millis(ms);
                reply.freeze_expires_in_ms = Some(end.saturating_sub(now).as_millis() as u64);
            }
            reply.leader_since_ms =
                Some(now.saturating_sub(soft.book.term_started()).as_millis() as u64);
            reply.agents = soft
                .agents
                .values()
                .map(|a| {
                    let grant = soft
                        .agent_grants
                        .get(&(a.report.site.clone(), a.report.agent.clone()));
                    AgentStatus {
                        agent: a.report.agent.clone(),
                        site: a.report.site.clone(),
                        role: a.report.role.clone(),
                        state: a.report.state.clone(),
                        state_for_ms: a.report.state_for_ms,
                        service_healthy: a.report.service_healthy,
                        heard_ms_ago: now.saturating_sub(a.heard_at).as_millis() as u64,
                        lease_epoch: grant.map(|(epoch, _)| *epoch),
                        granted_ms_ago: grant
                            .map(|(_, at)| now.saturating_sub(*at).as_millis() as u64),
                    }
                })
                .collect();
        }
        let shown = if node.is_leader() {
            soft.last_decision.as_ref().unwrap_or(&decision)
        } else {
            &decision
        };
        reply.decision = match shown {
            Decision::Hold { reasons, .. } => reasons.clone(),
            Decision::Activate {
                to, from, reason, ..
            } => vec![format!(
                "failing over {}→ {to}: {reason}",
                from.as_deref().map(|f| format!("{f} ")).unwrap_or_default()
            )],
        };
    }

    /// Commit a mode change on the leader.
    async fn commit_mode(&self, req: StateRequest) -> Result<Response<ModeReply>, Status> {
        let resp = self
            .node
            .raft
            .client_write(req)
            .await
            .map_err(|e| Status::unavailable(format!("commit: {e}")))?;
        match resp.data {
            StateResponse::ModeSet { mode } => Ok(Response::new(ModeReply {
                mode: mode.to_string(),
            })),
            StateResponse::Rejected(why) => Err(Status::failed_precondition(why)),
            other => Err(Status::internal(format!("unexpected response {other:?}"))),
        }
    }
}

/// The membership as this node sees it, with the leader's liveness view when
/// this node leads.
pub fn member_list(node: &Node) -> Vec<Member> {
    let m = node.raft.metrics().borrow_watched().clone();
    let me = node.config.node.id;
    let voters: std::collections::BTreeSet<NodeId> = m.membership_config.voter_ids().collect();
    let alive_window = node.config.raft.election_timeout_max;
    m.membership_config
        .nodes()
        .map(|(id, n)| {
            let last_ack = m
                .heartbeat
                .as_ref()
                .and_then(|h| h.get(id).cloned().flatten())
                .map(|t| t.elapsed());
            let refused = node
                .net
                .refusal(*id)
                .is_some_and(|r| r.at.elapsed() < alive_window);
            let reachable = *id == me || (last_ack.is_some_and(|d| d < alive_window) && !refused);
            Member {
                id: *id,
                name: n.name.clone(),
                addr: n.addr.clone(),
                site: n.site.clone(),
                voter: voters.contains(id),
                reachable,
                incarnation: n
                    .incarnation
                    .as_ref()
                    .map(|i| i.0.clone())
                    .unwrap_or_default(),
                matched_index: m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id).cloned().flatten())
                    .map(|l| l.index),
                last_ack_ms: last_ack.map(|d| d.as_millis() as u64),
            }
        })
        .collect()
}

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::NotLeader { .. } => Status::unavailable(e.to_string()),
            NodeError::Invalid(m) => Status::failed_precondition(m),
            NodeError::Unavailable(m) => Status::unavailable(m),
        }
    }
}

impl AdminService {
    /// Admin reads: a viewer or an operator certificate.
    fn viewer<T>(&self, request: &Request<T>) -> Result<(), Status> {
        authz::require_viewer(self.node.trust.as_deref(), &self.node.identity, request)
    }

    /// Admin writes: an operator certificate. Returns the operator's name
    /// (the certificate's; on a plaintext node, the one the request gave),
    /// and logs the action under it.
    fn operator<T: OperatorField>(
        &self,
        request: &Request<T>,
        action: &str,
    ) -> Result<String, Status> {
        let body = request.get_ref();
        let claimed = body.operator_field();
        // Sizes first: nothing unbounded is looked at, logged or kept.
        if !claimed.is_empty() {
            limits::name("operator", claimed)?;
        }
        limits::text("reason", body.reason_field(), limits::MAX_REASON)?;
        let who = authz::require_operator(
            self.node.trust.as_deref(),
            &self.node.identity,
            request,
            claimed,
        )
        .inspect_err(|status| {
            tracing::warn!(action, "refused an admin call: {}", status.message());
        })?;
        // Rates per caller: a flood of changes, or of leadership transfers
        // (each makes the new leader wait out the leases again), is cut off.
        let now = std::time::Instant::now();
        let caller = if who.is_empty() { "unknown" } else { &who };
        let limiter = if action == "transfer-leader" {
            &self.node.admin_limits.transfers
        } else {
            &self.node.admin_limits.writes
        };
        limiter.take(caller, now).inspect_err(|status| {
            tracing::warn!(action, operator = %caller, "refused: {}", status.message());
        })?;
        if !request.metadata().contains_key(authz::FORWARDED_HEADER) || self.node.is_leader() {
            tracing::info!(action, operator = %who, "admin call");
        }
        Ok(who)
    }
}

/// The operator name a request body claims (only believed on a plaintext
/// node).
trait OperatorField {
    fn operator_field(&self) -> &str {
        ""
    }

    fn reason_field(&self) -> &str {
        ""
    }
}

impl OperatorField for AddMemberRequest {}
impl OperatorField for PromoteMemberRequest {}
impl OperatorField for RemoveMemberRequest {}
impl OperatorField for TransferLeaderRequest {}
macro_rules! operator_field {
    ($($t:ty),+) => {$(
        impl OperatorField for $t {
            fn operator_field(&self) -> &str {
                &self.operator
            }

            fn reason_field(&self) -> &str {
                &self.reason
            }
        }
    )+};
}
operator_field!(
    PolicyApplyRequest,
    FreezeRequest,
    UnfreezeRequest,
    FailoverRequest,
    RetryDirectiveRequest
);

fn operator(name: &str) -> Actor {
    if name.is_empty() {
        Actor::Operator("unknown".into())
    } else {
        Actor::Operator(name.into())
    }
}

/// A unified line diff of two texts (small inputs: policy files).
pub fn line_diff(old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    // Longest common subsequence table; policies are a few hundred lines.
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = String::new();
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push_str(&format!("- {}\n", a[i]));
            i += 1;
        } else {
            out.push_str(&format!("+ {}\n", b[j]));
            j += 1;
        }
    }
    out
}

type Res<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(&self, request: Request<StatusRequest>) -> Res<StatusReply> {
        self.viewer(&request)?;
        if !request.get_ref().local {
            let fwd = self
                .forward(&request, |mut c, r| async move { c.status(r).await })
                .await;
            match fwd {
                None => {}
                Some(Ok(resp)) => return Ok(resp),
                // A joiner's local view is not the cluster's: the client
                // asks another witness (`status --local` still shows it).
                Some(Err(e)) if e.metadata().contains_key(super::NOT_MEMBER_HEADER) => {
                    return Err(e);
                }
                Some(Err(e)) => {
                    let note = format!("could not reach the leader ({}); local view", e.message());
                    let mut reply = self.local_status(note);
                    self.add_verdict_view(&mut reply);
                    return Ok(Response::new(reply));
                }
            }
        }
        let mut reply = self.local_status(String::new());
        self.add_verdict_view(&mut reply);
        Ok(Response::new(reply))
    }

    async fn members(&self, request: Request<MembersRequest>) -> Res<MembersReply> {
        self.viewer(&request)?;
        if let Some(r) = self
            .forward(&request, |mut c, r| async move { c.members(r).await })
            .await
        {
            return r;
        }
        Ok(Response::new(MembersReply {
            members: self.members(),
            message: String::new(),
        }))
    }

    async fn add_member(&self, request: Request<AddMemberRequest>) -> Res<MembersReply> {
        self.operator(&request, "add-member")?;
        let req = request.get_ref();
        validate_member(req)?;
        if let Some(r) = self
            .forward(&request, |mut c, r| async move { c.add_member(r).await })
            .await
        {
            return r;
        }
        let node = WitnessNode {
            name: req.name.clone(),
            addr: req.addr.clone(),
            site: req.site.clone(),
            incarnation: None,
        };
        self.node.add_member(req.id, node, req.learner_only).await?;
        let message = if req.learner_only {
            format!("node {} added as a learner", req.id)
        } else {
            format!(
                "node {} added as a learner, caught up, and promoted to voter",
                req.id
            )
        };
        Ok(Response::new(MembersReply {
            members: self.members(),
            message,
        }))
    }

    async fn promote_member(&self, request: Request<PromoteMemberRequest>) -> Res<MembersReply> {
        self.operator(&request, "promote-member")?;
        if let Some(r) = self
            .forward(
                &request,
                |mut c, r| async move { c.promote_member(r).await },
            )
            .await
        {
            return r;
        }
        let id = request.get_ref().id;
        self.node.promote_member(id).await?;
        Ok(Response::new(MembersReply {
            members: self.members(),
            message: format!("node {id} promoted to voter"),
        }))
    }

    async fn remove_member(&self, request: Request<RemoveMemberRequest>) -> Res<MembersReply> {
        self.operator(&request, "remove-member")?;
        if let Some(r) = self
            .forward(&request, |mut c, r| async move { c.remove_member(r).await })
            .await
        {
            return r;
        }
        let id = request.get_ref().id;
        self.node.remove_member(id).await?;
        Ok(Response::new(MembersReply {
            members: self.members(),
            message: format!(
                "node {id} removed; stop it, and wipe its data dir before it joins again"
            ),
        }))
    }

    async fn transfer_leader(
        &self,
        request: Request<TransferLeaderRequest>,
    ) -> Res<TransferLeaderReply> {
        self.operator(&request, "transfer-leader")?;
        if let Some(r) = self
            .forward(
                &request,
                |mut c, r| async move { c.transfer_leader(r).await },
            )
            .await
        {
            return r;
        }
        let to = request.get_ref().to;
        let voters: Vec<NodeId> = self
            .node
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .voter_ids()
            .collect();
        if !voters.contains(&to) {
            return Err(Status::invalid_argument(format!(
                "node {to} is not a voter"
            )));
        }
        self.node
            .raft
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let mut rx = self.node.raft.metrics();
        let wait = self.node.config.raft.election_timeout_max * 4;
        let moved = tokio::time::timeout(wait, async {
            loop {
                if rx.borrow_watched().current_leader == Some(to) {
                    return true;
                }
                if rx.changed().await.is_err() {
                    return false;
                }
            }
        })
        .await
        .unwrap_or(false);
        if !moved {
            return Err(Status::unavailable(format!(
                "node {to} did not take over within {wait:?}; is it reachable and up to date?"
            )));
        }
        Ok(Response::new(TransferLeaderReply { leader_id: to }))
    }

    async fn policy_show(&self, request: Request<PolicyShowRequest>) -> Res<PolicyShowReply> {
        self.viewer(&request)?;
        let stale = request.get_ref().allow_stale;
        if !stale {
            if let Some(r) = self
                .forward(&request, |mut c, r| async move { c.policy_show(r).await })
                .await
            {
                return r;
            }
            self.node.linearizable_barrier().await?;
        }
        let applied = self.node.state.current();
        let policy = applied.state.policy.as_ref().ok_or_else(|| {
            Status::unavailable("no policy committed yet: the cluster is still bootstrapping")
        })?;
        Ok(Response::new(PolicyShowReply {
            version: applied.state.policy_version,
            toml: policy.to_toml(),
            stale,
        }))
    }

    async fn policy_apply(
        &self,
        mut request: Request<PolicyApplyRequest>,
    ) -> Res<PolicyApplyReply> {
        let who = self.operator(&request, "policy-apply")?;
        request.get_mut().operator = who;
        let req = request.get_ref();
        if req.toml.len() > MAX_POLICY_BYTES {
            return Err(Status::invalid_argument(format!(
                "toml (the policy) is {} bytes, more than the limit of {MAX_POLICY_BYTES}",
                req.toml.len()
            )));
        }
        if !req.dry_run && req.reason.trim().is_empty() {
            return Err(Status::invalid_argument(
                "a policy change needs a reason (--reason); it is recorded in history",
            ));
        }
        let policy = Policy::parse(&req.toml, std::path::Path::new("<policy apply>"))
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        crate::config::check_timers(&self.node.config.raft, &policy)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if let Some(r) = self
            .forward(&request, |mut c, r| async move { c.policy_apply(r).await })
            .await
        {
            return r;
        }
        self.node.linearizable_barrier().await?;
        let applied = self.node.state.current();
        let current_version = applied.state.policy_version;
        let old = applied
            .state
            .policy
            .as_ref()
            .map(|p| p.to_toml())
            .unwrap_or_default();
        let diff = line_diff(&old, &policy.to_toml());
        let expected = if req.expected_version == 0 {
            current_version
        } else {
            req.expected_version
        };
        if req.dry_run || diff.is_empty() {
            return Ok(Response::new(PolicyApplyReply {
                version: current_version,
                diff,
                applied: false,
            }));
        }
        let version = self
            .node
            .set_policy(
                policy,
                expected,
                operator(&req.operator),
                req.reason.clone(),
            )
            .await?;
        Ok(Response::new(PolicyApplyReply {
            version,
            diff,
            applied: true,
        }))
    }

    async fn history(&self, request: Request<HistoryRequest>) -> Res<HistoryReply> {
        self.viewer(&request)?;
        if let Some(r) = self
            .forward(&request, |mut c, r| async move { c.history(r).await })
            .await
        {
            return r;
        }
        self.node.linearizable_barrier().await?;
        Ok(Response::new(self.local_history(request.get_ref().limit)))
    }

    async fn freeze(&self, mut request: Request<FreezeRequest>) -> Res<ModeReply> {
        let who = self.operator(&request, "freeze")?;
        request.get_mut().operator = who;
        let req = request.get_ref();
        if req.reason.trim().is_empty() {
            return Err(Status::invalid_argument(
                "a freeze needs a reason (--reason); it is recorded in history",
            ));
        }
        if let Some(r) = self
            .forward(&request, |mut c, r| async move { c.freeze(r).await })
            .await
        {
            return r;
        }
        let req = request.into_inner();
        self.commit_mode(StateRequest::Freeze {
            reason: req.reason,
            by: operator(&req.operator),
            expires_after_ms: (req.expires_after_ms > 0).then_some(req.expires_after_ms),
            at_unix_ms: crate::node::unix_ms(),
        })
        .await
    }

    async fn unfreeze(&self, mut request: Request<UnfreezeRequest>) -> Res<ModeReply> {
        let who = self.operator(&request, "unfreeze")?;
        request.get_mut().operator = who;
        if request.get_ref().reason.trim().is_empty() {
            return Err(Status::invalid_argument(
                "an unfreeze needs a reason (--reason)",
            ));
        }
        if let Some(r) = self
            .forward(&request, |mut c, r| async move { c.unfreeze(r).await })
            .await
        {
            return r;
        }
        self.node.linearizable_barrier().await?;
        let applied = self.node.state.current();
        let Some(freeze) = applied.state.freeze.as_ref() else {
            return Err(Status::failed_precondition("not frozen"));
        };
        let req = request.into_inner();
        self.commit_mode(StateRequest::Unfreeze {
            freeze_index: freeze.log_index,
            reason: req.reason,
            by: operator(&req.operator),
            at_unix_ms: crate::node::unix_ms(),
        })
        .await
    }

    async fn failover(&self, mut request: Request<FailoverRequest>) -> Res<FailoverReply> {
        let who = self.operator(&request, "failover")?;
        request.get_mut().operator = who;
        {
            let req = request.get_ref();
            if req.reason.trim().is_empty() {
                return Err(Status::invalid_argument(
                    "an operator failover needs a reason (--reason); it is recorded in history",
                ));
            }
            if req.to.is_empty() {
                return Err(Status::invalid_argument("name the target site with --to"));
            }
            limits::name("to", &req.to)?;
        }
        if let Some(r) = self
            .forward(&request, |mut c, r| async move { c.failover(r).await })
            .await
        {
            return r;
        }
        let req = request.into_inner();
        self.node.linearizable_barrier().await?;
        let (tx, mut rx) = tokio::sync::watch::channel(None);
        {
            let mut soft = self.node.soft.lock().unwrap_or_else(|e| e.into_inner());
            if soft.operator.is_some() {
                return Err(Status::failed_precondition(
                    "another operator failover is in progress",
                ));
            }
            soft.operator = Some(crate::driver::OperatorFailover {
                to: req.to.clone(),
                operator: if req.operator.is_empty() {
                    "unknown".into()
                } else {
                    req.operator.clone()
                },
                reason: req.reason.clone(),
                accept_data_loss: req.accept_data_loss,
                result: tx,
            });
        }
        let wait = self
            .node
            .state
            .current()
            .state
            .policy
            .as_ref()
            .map(engine::lease_wait)
            .unwrap_or_default()
            + Duration::from_secs(30);
        let outcome = tokio::time::timeout(wait, async {
            loop {
                if let Some(result) = rx.borrow_and_update().clone() {
                    return result;
                }
                if rx.changed().await.is_err() {
                    return Err("the driver stopped".to_string());
                }
            }
        })
        .await;
        match outcome {
            Ok(Ok(epoch)) => Ok(Response::new(FailoverReply {
                epoch,
                message: format!("{} is active at epoch {epoch}", req.to),
            })),
            Ok(Err(why)) => Err(Status::failed_precondition(why)),
            Err(_) => {
                self.node
                    .soft
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .operator = None;
                Err(Status::deadline_exceeded(format!(
                    "no activation within {wait:?}"
                )))
            }
        }
    }

    async fn list_directives(
        &self,
        request: Request<ListDirectivesRequest>,
    ) -> Res<ListDirectivesReply> {
        self.viewer(&request)?;
        if let Some(r) = self
            .forward(
                &request,
                |mut c, r| async move { c.list_directives(r).await },
            )
            .await
        {
            return r;
        }
        self.node.linearizable_barrier().await?;
        let applied = self.node.state.current();
        let ledger = &applied.state.ledger;
        let past = request
            .get_ref()
            .include_past
            .then_some(ledger.past.iter())
            .into_iter()
            .flatten();
        Ok(Response::new(ListDirectivesReply {
            epoch: applied.state.verdict.epoch,
            directives: past
                .chain(ledger.directives.iter())
                .map(super::directives::info)
                .collect(),
            gates: super::directives::gates(ledger),
        }))
    }

    async fn retry_directive(
        &self,
        mut request: Request<RetryDirectiveRequest>,
    ) -> Res<RetryDirectiveReply> {
        let who = self.operator(&request, "retry-directive")?;
        request.get_mut().operator = who;
        let (epoch, name) = {
            let req = request.get_ref();
            if req.reason.trim().is_empty() {
                return Err(Status::invalid_argument(
                    "a retry needs a reason (--reason); it is recorded in history",
                ));
            }
            // `<epoch>/<name>`: twenty digits, a slash, a name.
            if req.id.len() > 21 + limits::MAX_NAME {
                return Err(Status::invalid_argument(format!(
                    "id is {} bytes, more than the limit of {}",
                    req.id.len(),
                    21 + limits::MAX_NAME
                )));
            }
            let parsed = req
                .id
                .split_once('/')
                .and_then(|(e, n)| Some((e.parse::<u64>().ok()?, n.to_string())));
            match parsed {
                Some((epoch, name)) if !name.is_empty() => {
                    limits::name("directive name", &name)?;
                    (epoch, name)
                }
                _ => {
                    return Err(Status::invalid_argument(format!(
                        "bad directive id {:?}: write <epoch>/<name>, as `witnessctl directives \
                         list` shows it",
                        req.id
                    )));
                }
            }
        };
        if let Some(r) = self
            .forward(
                &request,
                |mut c, r| async move { c.retry_directive(r).await },
            )
            .await
        {
            return r;
        }
        let req = request.into_inner();
        let response = self
            .node
            .propose(StateRequest::RetryDirective {
                epoch,
                name: name.clone(),
                by: operator(&req.operator),
                reason: req.reason.clone(),
                at_unix_ms: crate::node::unix_ms(),
            })
            .await?;
        match response {
            StateResponse::DirectiveUpdated { state } => Ok(Response::new(RetryDirectiveReply {
                message: format!(
                    "directive {epoch}/{name} is {state} again; an agent of its site and role \
                     claims it on its next check"
                ),
                state,
            })),
            StateResponse::Rejected(why) => Err(Status::failed_precondition(why)),
            other => Err(Status::internal(format!("unexpected response {other:?}"))),
        }
    }
}

/// Check an AddMember request before anything is forwarded or changed.
/// A member's `host:port`: a DNS name is at most 253 bytes.
const MAX_ADDR: usize = 260;

fn validate_member(req: &AddMemberRequest) -> Result<(), Status> {
    if req.id == 0 {
        return Err(Status::invalid_argument("node id must be 1 or more"));
    }
    limits::name("name", &req.name)?;
    limits::name("site", &req.site)?;
    if req.addr.len() > MAX_ADDR {
        return Err(Status::invalid_argument(format!(
            "addr is {} bytes, more than the limit of {MAX_ADDR}",
            req.addr.len()
        )));
    }
    let port_ok = req
        .addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !port_ok {
        return Err(Status::invalid_argument(format!(
            "bad address {:?}: expected host:port, e.g. 10.0.3.5:7400",
            req.addr
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The policy diff shows removed and added lines and nothing for equal texts.
    #[test]
    fn line_diff_marks_changes() {
        assert_eq!(line_diff("a\nb\nc\n", "a\nb\nc\n"), "");
        assert_eq!(line_diff("a\nb\nc\n", "a\nx\nc\n"), "- b\n+ x\n");
        assert_eq!(line_diff("", "a\n"), "+ a\n");
    }

    /// Bad member fields are refused with a message naming the field.
    #[test]
    fn add_member_validation() {
        let ok = AddMemberRequest {
            id: 4,
            name: "w4".into(),
            addr: "127.0.0.1:7440".into(),
            site: "dc-c".into(),
            learner_only: false,
        };
        assert!(validate_member(&ok).is_ok());
        for (bad, word) in [
            (
                AddMemberRequest {
                    id: 0,
                    ..ok.clone()
                },
                "id",
            ),
            (
                AddMemberRequest {
                    name: "".into(),
                    ..ok.clone()
                },
                "name",
            ),
            (
                AddMemberRequest {
                    site: "a b".into(),
                    ..ok.clone()
                },
                "site",
            ),
            (
                AddMemberRequest {
                    addr: "nohost".into(),
                    ..ok.clone()
                },
                "address",
            ),
            (
                AddMemberRequest {
                    addr: "h:99999".into(),
                    ..ok.clone()
                },
                "address",
            ),
        ] {
            let e = validate_member(&bad).expect_err("must be refused");
            assert!(e.message().contains(word), "{word}: {}", e.message());
        }
    }
}

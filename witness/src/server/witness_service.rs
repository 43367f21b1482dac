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

use crate::engine::lease::GrantRefusal;
use crate::node::Node;
use crate::state::AgentReport;

/// Buffered verdicts per watcher; a watcher that falls this far behind is
/// dropped (it reconnects and gets the current verdict first).
const WATCH_BUFFER: usize = 16;

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

    fn verdict(&self, stale: bool) -> Verdict {
        let applied = self.node.state.current();
        let v = &applied.state.verdict;
        Verdict {
            active_site: v.active_site.clone().unwrap_or_default(),
            epoch: v.epoch,
            mode: v.mode.to_string(),
            stale,
            applied_index: applied.last_applied.map(|l| l.index).unwrap_or(0),
            answered_by: self.node.config.node.id,
        }
    }
}

/// Names and roles are short identifiers; bounded so a bad client cannot
/// grow the leader's agent table or logs.
fn check_name(field: &str, value: &str) -> Result<(), Status> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "bad {field} {value:?}: use 1-63 characters of A-Z a-z 0-9 . _ -"
        )))
    }
}

fn refused(req: &RenewLeaseRequest, epoch: u64, reason: String) -> Response<RenewLeaseReply> {
    Response::new(RenewLeaseReply {
        granted: false,
        nonce: req.nonce,
        epoch,
        lease_ttl_ms: 0,
        reason,
    })
}

#[tonic::async_trait]
impl Witness for WitnessService {
    async fn get_verdict(
        &self,
        request: Request<GetVerdictRequest>,
    ) -> Result<Response<Verdict>, Status> {
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
        _request: Request<GetVerdictRequest>,
    ) -> Result<Response<Self::WatchVerdictStream>, Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(WATCH_BUFFER);
        let mut states = self.node.state.subscribe();
        let me = self.node.config.node.id;
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let verdict = {
                    let a = states.borrow_and_update();
                    let v = &a.state.verdict;
                    Verdict {
                        active_site: v.active_site.clone().unwrap_or_default(),
                        epoch: v.epoch,
                        mode: v.mode.to_string(),
                        stale: true,
                        applied_index: a.last_applied.map(|l| l.index).unwrap_or(0),
                        answered_by: me,
                    }
                };
                let key = (
                    verdict.active_site.clone(),
                    verdict.epoch,
                    verdict.mode.clone(),
                );
                if last.as_ref() != Some(&key) {
                    last = Some(key);
                    // A full buffer means the watcher stopped reading: drop it.
                    if tx.try_send(Ok(verdict)).is_err() {
                        return;
                    }
                }
                tokio::select! {
                    changed = states.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn renew_lease(
        &self,
        request: Request<RenewLeaseRequest>,
    ) -> Result<Response<RenewLeaseReply>, Status> {
        {
            let r = request.get_ref();
            check_name("agent", &r.agent)?;
            check_name("site", &r.site)?;
            check_name("role", &r.role)?;
            if r.state.len() > 32 {
                return Err(Status::invalid_argument("state is at most 32 characters"));
            }
        }
        if let Some(r) = self
            .forward(&request, |mut c, r| async move { c.renew_lease(r).await })
            .await
        {
            return r;
        }
        let req = request.into_inner();
        self.node.record_agent(AgentReport {
            agent: req.agent.clone(),
            site: req.site.clone(),
            role: req.role.clone(),
            state: req.state.clone(),
            service_healthy: req.service_healthy,
            age_ms: 0,
        });
        let term = self.node.raft.metrics().borrow_watched().current_term;
        // The read-index round starts now, after the request arrived; its
        // quorum acknowledges a heartbeat sent after this point.
        self.node.linearizable_barrier().await?;
        let m = self.node.raft.metrics().borrow_watched().clone();
        if m.state != ServerState::Leader || m.current_term != term {
            return Err(Status::unavailable(
                "leadership changed during the renewal; retry",
            ));
        }
        let applied = self.node.state.current();
        let state = &applied.state;
        let epoch = state.verdict.epoch;
        let Some(policy) = state.policy.as_ref() else {
            return Ok(refused(&req, epoch, "no policy committed yet".into()));
        };
        if state.verdict.active_site.as_deref() != Some(req.site.as_str()) {
            let active = state.verdict.active_site.as_deref().unwrap_or("none");
            return Ok(refused(
                &req,
                epoch,
                format!("{} is not the active site ({active} is)", req.site),
            ));
        }
        if req.epoch != epoch {
            return Ok(refused(
                &req,
                epoch,
                format!("epoch {} is not the current epoch {epoch}", req.epoch),
            ));
        }
        let margin = policy.lease.margin.as_millis() as u64;
        if req.fence_timeout_ms > margin || req.watchdog_timeout_ms > margin {
            return Ok(refused(
                &req,
                epoch,
                format!(
                    "agent {} has fence_timeout {} ms / watchdog timeout {} ms, but the policy's \
                     lease margin is {margin} ms: an agent must be able to fence within the \
                     margin. Lower its timeouts or raise [lease] margin",
                    req.agent, req.fence_timeout_ms, req.watchdog_timeout_ms
                ),
            ));
        }
        if let Err(GrantRefusal::Draining { site }) = self.node.record_grant(term, &req.site) {
            return Ok(refused(
                &req,
                epoch,
                format!("{site} is being drained for a failover: no new leases"),
            ));
        }
        Ok(Response::new(RenewLeaseReply {
            granted: true,
            nonce: req.nonce,
            epoch,
            lease_ttl_ms: policy.lease.lease_ttl.as_millis() as u64,
            reason: String::new(),
        }))
    }

    async fn claim_directive(
        &self,
        _request: Request<ClaimDirectiveRequest>,
    ) -> Result<Response<ClaimDirectiveReply>, Status> {
        Err(Status::unimplemented("directives arrive with the agents"))
    }

    async fn renew_claim(
        &self,
        _request: Request<RenewClaimRequest>,
    ) -> Result<Response<RenewClaimReply>, Status> {
        Err(Status::unimplemented("directives arrive with the agents"))
    }

    async fn report_directive(
        &self,
        _request: Request<ReportDirectiveRequest>,
    ) -> Result<Response<ReportDirectiveReply>, Status> {
        Err(Status::unimplemented("directives arrive with the agents"))
    }
}

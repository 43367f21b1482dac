//! The server half of Raft between witnesses: `witness.v1.Raft`.
//!
//! Each call first passes [`authz::require_peer`]: with TLS, only a member
//! witness's certificate, naming the envelope's `from_id`, gets further (a
//! refused call is a `PERMISSION_DENIED` status and is never decoded). Then
//! each envelope passes [`Identity::admit`] before openraft sees it; a refused
//! message is answered with a [`Refusal`] that says what to do, so the sender
//! can log it and `witnessctl status` can show it. Finally the message's own
//! sender — the leader or candidate its vote names — must be `from_id`: a
//! member's certificate speaks only for that member's leadership.

use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Request, Response, Status};
use witness_proto::raft_server::Raft as RaftRpc;
use witness_proto::{
    HelloReply, HelloRequest, RaftReply, RaftRequest, Refusal, hello_reply, raft_reply, refusal,
};

use crate::raft::identity::{Identity, refuse};
use crate::raft::network::SnapshotTransfer;
use crate::raft::types::{Raft, TypeConfig};
use crate::server::authz;
use crate::trust::Trust;

type AppendEntriesRequest = openraft::raft::AppendEntriesRequest<TypeConfig>;
type VoteRequest = openraft::raft::VoteRequest<TypeConfig>;
type TransferLeaderRequest = openraft::raft::TransferLeaderRequest<TypeConfig>;

/// The node a vote names (the leader or the candidate).
fn voter(vote: &crate::raft::types::Vote) -> u64 {
    use openraft::vote::RaftLeaderId;
    *vote.leader_id().node_id()
}

/// `witness.v1.Raft` backed by this node's openraft instance.
pub struct RaftService {
    raft: Raft,
    identity: Arc<Identity>,
    trust: Option<Arc<Trust>>,
}

impl RaftService {
    pub fn new(raft: Raft, identity: Arc<Identity>, trust: Option<Arc<Trust>>) -> Self {
        Self {
            raft,
            identity,
            trust,
        }
    }

    fn authorize<T>(&self, request: &Request<T>, from_id: u64, member: bool) -> Result<(), Status> {
        authz::require_peer(
            self.trust.as_deref(),
            &self.identity,
            request,
            from_id,
            member,
        )
        .inspect_err(|status| {
            tracing::warn!(from = from_id, "refused a Raft call: {}", status.message());
        })
    }

    fn reply_refused(&self, refusal: Refusal) -> Response<RaftReply> {
        Response::new(RaftReply {
            result: Some(raft_reply::Result::Refused(refusal)),
            incarnation: self.identity.incarnation.0.clone(),
        })
    }

    fn reply<T: Serialize>(&self, value: &T) -> Response<RaftReply> {
        match serde_json::to_vec(value) {
            Ok(bytes) => Response::new(RaftReply {
                result: Some(raft_reply::Result::Payload(bytes)),
                incarnation: self.identity.incarnation.0.clone(),
            }),
            Err(e) => {
                self.reply_refused(refuse(refusal::Kind::Unavailable, format!("encode: {e}")))
            }
        }
    }

    /// Check the envelope and decode its payload.
    fn open<T: DeserializeOwned>(&self, req: &RaftRequest) -> Result<T, Refusal> {
        self.identity.admit(
            &req.cluster_id,
            req.from_id,
            &req.from_incarnation,
            req.to_id,
            &req.to_incarnation,
        )?;
        serde_json::from_slice(&req.payload).map_err(|e| {
            refuse(
                refusal::Kind::BadRequest,
                format!("undecodable payload: {e}"),
            )
        })
    }

    /// Authorise, open and run one message. `speaker` is the node the
    /// message itself says sent it (the vote's leader or candidate), which
    /// must be the envelope's — and so the certificate's — `from_id`: a
    /// member cannot speak as another member's leadership.
    async fn handle<Req, Resp, E, F, Fut>(
        &self,
        request: Request<RaftRequest>,
        speaker: fn(&Req) -> Option<u64>,
        f: F,
    ) -> Result<Response<RaftReply>, Status>
    where
        Req: DeserializeOwned,
        Resp: Serialize,
        E: std::fmt::Display,
        F: FnOnce(Raft, Req) -> Fut,
        Fut: std::future::Future<Output = Result<Resp, E>>,
    {
        // The certificate first: only a witness speaking as itself gets its
        // envelope read at all.
        self.authorize(&request, request.get_ref().from_id, false)?;
        let req = request.into_inner();
        let payload: Req = match self.open(&req) {
            Ok(p) => p,
            Err(refusal) => {
                tracing::debug!(
                    from = req.from_id,
                    "refused Raft message: {}",
                    refusal.message
                );
                return Ok(self.reply_refused(refusal));
            }
        };
        // Then membership, after the envelope's own checks so that a node of
        // another cluster hears that, the more useful refusal.
        authz::require_member(self.trust.as_deref(), &self.identity, req.from_id).inspect_err(
            |status| {
                tracing::warn!(
                    from = req.from_id,
                    "refused a Raft call: {}",
                    status.message()
                );
            },
        )?;
        if let Some(said) = speaker(&payload)
            && said != req.from_id
        {
            tracing::warn!(
                from = req.from_id,
                "refused a Raft message speaking for node {said}"
            );
            return Err(Status::permission_denied(format!(
                "node {} sent a Raft message whose vote is node {said}'s: a witness speaks only \
                 for itself",
                req.from_id
            )));
        }
        match f(self.raft.clone(), payload).await {
            Ok(resp) => Ok(self.reply(&resp)),
            Err(e) => Ok(self.reply_refused(refuse(refusal::Kind::Unavailable, e.to_string()))),
        }
    }
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        self.handle(
            request,
            |rpc: &AppendEntriesRequest| Some(voter(&rpc.vote)),
            |raft, rpc| async move { raft.append_entries(rpc).await },
        )
        .await
    }

    async fn vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        self.handle(
            request,
            |rpc: &VoteRequest| Some(voter(&rpc.vote)),
            |raft, rpc| async move { raft.vote(rpc).await },
        )
        .await
    }

    async fn pre_vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        self.handle(
            request,
            |rpc: &VoteRequest| Some(voter(&rpc.vote)),
            |raft, rpc| async move { raft.pre_vote(rpc).await },
        )
        .await
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        self.handle(
            request,
            |t: &SnapshotTransfer| Some(voter(&t.vote)),
            |raft, t: SnapshotTransfer| async move {
                let snapshot = openraft::alias::SnapshotOf::<crate::raft::types::TypeConfig, _> {
                    meta: t.meta,
                    snapshot: t.data,
                };
                raft.install_full_snapshot(t.vote, snapshot).await
            },
        )
        .await
    }

    async fn transfer_leader(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        self.handle(
            request,
            |rpc: &TransferLeaderRequest| Some(voter(rpc.from_leader())),
            |raft, rpc| async move { raft.handle_transfer_leader(rpc).await },
        )
        .await
    }

    async fn propose(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let from = request.get_ref().from_id;
        self.handle(
            request,
            |_: &crate::state::Request| None,
            move |raft, req: crate::state::Request| async move {
                // Only a witness's own observations may be proposed this way, and
                // only under its own (checked) identity.
                match &req {
                    crate::state::Request::Observe { witness, .. } if *witness == from => {}
                    _ => return Err(format!("node {from} may only propose its own observations")),
                }
                raft.client_write(req)
                    .await
                    .map(|r| r.data)
                    .map_err(|e| e.to_string())
            },
        )
        .await
    }

    async fn hello(&self, request: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        // A joiner says hello before it is a member: only its id is checked.
        self.authorize(&request, request.get_ref().node_id, false)?;
        let req = request.into_inner();
        let me = self.identity.node_id;
        let (admission, message) = if req.cluster_name != self.identity.cluster_name {
            (
                hello_reply::Admission::OtherCluster,
                format!(
                    "node {me} belongs to cluster {:?}, not {:?}: check node.cluster and the peer \
                     list",
                    self.identity.cluster_name, req.cluster_name
                ),
            )
        } else {
            let members = self.identity.members();
            if members.is_empty() {
                (
                    hello_reply::Admission::Unknown,
                    format!("node {me} has no membership yet"),
                )
            } else {
                match members.get(&req.node_id) {
                    None => (
                        hello_reply::Admission::NotAMember,
                        format!(
                            "node {} is not a member: an operator adds it with `witnessctl \
                             members add --id {} --name NAME --addr {} --site SITE`",
                            req.node_id, req.node_id, req.addr
                        ),
                    ),
                    Some(m) => match &m.incarnation {
                        Some(pinned) if pinned.0 != req.incarnation => (
                            hello_reply::Admission::IncarnationMismatch,
                            format!(
                                "node {id} is a member with store incarnation {pinned}, but this \
                                 store is a new one: the old store was lost, so node {id} may not \
                                 rejoin under its old identity. Run `witnessctl members remove \
                                 {id}` and then `witnessctl members add --id {id} --name {name} \
                                 --addr {addr} --site {site}`",
                                id = req.node_id,
                                name = m.name,
                                addr = m.addr,
                                site = m.site
                            ),
                        ),
                        _ => (
                            hello_reply::Admission::Member,
                            format!(
                                "node {} is a member; the leader will contact it",
                                req.node_id
                            ),
                        ),
                    },
                }
            }
        };
        Ok(Response::new(HelloReply {
            admission: admission as i32,
            message,
            replier_id: me,
        }))
    }
}

//! The client half of Raft between witnesses: openraft's `RaftNetworkV2`
//! over the `witness.v1.Raft` gRPC service.
//!
//! openraft's messages are JSON inside a protobuf envelope
//! ([`witness_proto::RaftRequest`]) that names the cluster and both ends'
//! identities, checked by the receiver (see [`super::identity`]).
//!
//! One HTTP/2 channel per peer address is kept and shared by every stream to
//! that peer (heartbeats, replication, votes); tonic reconnects it when it
//! breaks. Every call is bounded by openraft's per-RPC deadline.
//!
//! Replies carry the replier's incarnation; the first time a member with an
//! unpinned incarnation answers, the pin request is handed to the node
//! runtime, which commits it as a membership change (trust on first use).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use witness_proto::raft_client::RaftClient;
use witness_proto::{RaftReply, RaftRequest, raft_reply};

use crate::raft::identity::Identity;
use crate::raft::types::{
    Incarnation, NodeId, SnapshotData, SnapshotMeta, TypeConfig, Vote, WitnessNode,
};
use crate::trust::{Dial, Trust};

/// Largest message accepted or sent on the Raft service: a whole snapshot
/// travels in one message. The state is small (bounded history), so this is a
/// guard against garbage, not a working limit.
pub const MAX_RAFT_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Time to wait for a TCP connection to a peer before giving up on one RPC.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// HTTP/2 pings on an idle or busy peer connection.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// A peer connection whose ping is unanswered this long is closed.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// A member's answer to the leader's first contact carried an incarnation the
/// membership has not pinned yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinRequest {
    pub node_id: NodeId,
    pub incarnation: Incarnation,
}

/// The last refusal a peer sent us, for `witnessctl status` and logs.
#[derive(Clone, Debug)]
pub struct PeerRefusal {
    pub message: String,
    pub at: Instant,
}

/// Makes a channel to witness `id` at a peer address. The default dials TCP;
/// the deterministic simulation substitutes its own network (and, like the
/// default, expects node `id`'s certificate at the other end).
pub type Dialer = Arc<dyn Fn(NodeId, &str) -> Result<Channel, String> + Send + Sync>;

/// How a witness reaches its peers: through `dialer` (the deterministic
/// simulation's network) or over TCP, with mutual TLS when `trust` holds
/// this witness's certificate (`None`: `insecure = true`).
#[derive(Clone, Default)]
pub struct PeerTransport {
    pub dialer: Option<Dialer>,
    pub trust: Option<Arc<Trust>>,
}

/// The channels to peers, per (peer id, address): a channel expects that
/// peer's certificate. All are dropped and remade when the certificates are
/// reloaded (`generation` is the [`Trust::generation`] they were made with).
#[derive(Default)]
struct Channels {
    generation: u64,
    by_peer: HashMap<(NodeId, String), Channel>,
}

/// Shared by every per-peer client.
pub struct NetContext {
    dialer: Option<Dialer>,
    identity: Arc<Identity>,
    /// This witness's certificate; `None` on a plaintext (insecure) node.
    trust: Option<Arc<Trust>>,
    channels: Mutex<Channels>,
    pins: mpsc::UnboundedSender<PinRequest>,
    refusals: Mutex<HashMap<NodeId, PeerRefusal>>,
    /// Lower bound on every Raft RPC's deadline (`raft.rpc_timeout`). openraft
    /// bounds replication RPCs by the heartbeat interval; a WAN round trip may
    /// need longer, and a longer deadline only delays the next attempt.
    rpc_timeout: Duration,
}

impl NetContext {
    pub fn new(
        identity: Arc<Identity>,
        pins: mpsc::UnboundedSender<PinRequest>,
        rpc_timeout: Duration,
        transport: PeerTransport,
    ) -> Arc<Self> {
        Arc::new(Self {
            dialer: transport.dialer,
            identity,
            trust: transport.trust,
            channels: Mutex::new(Channels::default()),
            pins,
            refusals: Mutex::new(HashMap::new()),
            rpc_timeout,
        })
    }

    /// A channel to witness `id` at `addr`, shared across callers. Connects
    /// lazily; with TLS, the other end must present node `id`'s certificate.
    pub fn channel(&self, id: NodeId, addr: &str) -> Result<Channel, String> {
        let mut guard = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        // After a certificate reload, new connections present the new one.
        let now = self.trust.as_ref().map_or(0, |t| t.generation());
        if guard.generation != now {
            guard.by_peer.clear();
            guard.generation = now;
        }
        let channels = &mut guard.by_peer;
        let key = (id, addr.to_string());
        if let Some(ch) = channels.get(&key) {
            return Ok(ch.clone());
        }
        if let Some(dial) = &self.dialer {
            let ch = dial(id, addr)?;
            channels.insert(key, ch.clone());
            return Ok(ch);
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("bad peer address {addr:?}: {e}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            // Notice a connection that died during a partition, rather than
            // queueing calls behind it until the kernel gives up.
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        let ch = crate::trust::conn::channel(endpoint, self.trust.clone(), Dial::Witness(id));
        channels.insert(key, ch.clone());
        Ok(ch)
    }

    /// The last refusal from `node`, if any.
    pub fn refusal(&self, node: NodeId) -> Option<PeerRefusal> {
        self.refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&node)
            .cloned()
    }

    /// Send a state-machine request to `leader` for it to commit (a
    /// follower's observations). Returns the state machine's response.
    pub async fn propose_to(
        &self,
        leader: NodeId,
        request: &crate::state::Request,
    ) -> Result<crate::state::Response, String> {
        let node = self
            .identity
            .member(leader)
            .ok_or_else(|| format!("leader {leader} is not in the membership view"))?;
        let envelope = RaftRequest {
            cluster_id: self.identity.cluster_id().unwrap_or_default(),
            from_id: self.identity.node_id,
            from_incarnation: self.identity.incarnation.0.clone(),
            to_id: leader,
            to_incarnation: node
                .incarnation
                .as_ref()
                .map(|i| i.0.clone())
                .unwrap_or_default(),
            payload: serde_json::to_vec(request).map_err(|e| format!("encode: {e}"))?,
        };
        let mut client = RaftClient::new(self.channel(leader, &node.addr)?)
            .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES);
        // Commits take a heartbeat round or two; bound generously.
        let reply = tokio::time::timeout(self.rpc_timeout * 4, client.propose(envelope))
            .await
            .map_err(|_| format!("proposal to leader {leader} timed out"))?
            .map_err(|s| format!("proposal to leader {leader}: {}", s.message()))?
            .into_inner();
        match reply.result {
            Some(raft_reply::Result::Payload(bytes)) => {
                serde_json::from_slice(&bytes).map_err(|e| format!("undecodable response: {e}"))
            }
            Some(raft_reply::Result::Refused(r)) => {
                Err(format!("leader {leader} refused: {}", r.message))
            }
            None => Err("empty reply".into()),
        }
    }

    fn record_refusal(&self, node: NodeId, message: String) {
        let mut map = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        let again = map.get(&node).is_some_and(|r| r.message == message);
        if !again {
            tracing::warn!(peer = node, "peer refused Raft traffic: {message}");
        }
        map.insert(
            node,
            PeerRefusal {
                message,
                at: Instant::now(),
            },
        );
    }

    fn clear_refusal(&self, node: NodeId) {
        self.refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&node);
    }
}

/// openraft's network factory.
#[derive(Clone)]
pub struct NetworkFactory {
    ctx: Arc<NetContext>,
}

impl NetworkFactory {
    pub fn new(ctx: Arc<NetContext>) -> Self {
        Self { ctx }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &WitnessNode) -> PeerClient {
        PeerClient {
            ctx: self.ctx.clone(),
            target,
            node: node.clone(),
        }
    }
}

/// Raft RPCs to one peer.
pub struct PeerClient {
    ctx: Arc<NetContext>,
    target: NodeId,
    node: WitnessNode,
}

#[derive(Clone, Copy, Debug)]
enum Rpc {
    Append,
    Vote,
    PreVote,
    Snapshot,
    TransferLeader,
}

/// Why one call failed, before it is shaped into openraft's error types.
enum CallError {
    /// Could not reach the peer (or it refused us): back off.
    Unreachable(String),
    /// Transient failure (timeout, reset): retry.
    Network(String),
}

impl PeerClient {
    /// The target as the latest membership records it (its pinned incarnation
    /// may be newer than when this client was made).
    fn current_node(&self) -> WitnessNode {
        self.ctx
            .identity
            .member(self.target)
            .unwrap_or_else(|| self.node.clone())
    }

    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &mut self,
        rpc: Rpc,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, CallError> {
        let node = self.current_node();
        let identity = &self.ctx.identity;
        let payload = serde_json::to_vec(req)
            .map_err(|e| CallError::Network(format!("encode {rpc:?}: {e}")))?;
        let envelope = RaftRequest {
            cluster_id: identity.cluster_id().unwrap_or_default(),
            from_id: identity.node_id,
            from_incarnation: identity.incarnation.0.clone(),
            to_id: self.target,
            to_incarnation: node
                .incarnation
                .as_ref()
                .map(|i| i.0.clone())
                .unwrap_or_default(),
            payload,
        };
        let channel = self
            .ctx
            .channel(self.target, &node.addr)
            .map_err(CallError::Unreachable)?;
        let mut client = RaftClient::new(channel)
            .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES);
        let fut = async move {
            match rpc {
                Rpc::Append => client.append_entries(envelope).await,
                Rpc::Vote => client.vote(envelope).await,
                Rpc::PreVote => client.pre_vote(envelope).await,
                Rpc::Snapshot => client.install_snapshot(envelope).await,
                Rpc::TransferLeader => client.transfer_leader(envelope).await,
            }
        };
        let reply: RaftReply = match tokio::time::timeout(ttl, fut).await {
            Err(_) => {
                return Err(CallError::Network(format!(
                    "{rpc:?} to node {} at {} timed out after {ttl:?}",
                    self.target, node.addr
                )));
            }
            Ok(Err(status)) => {
                return Err(CallError::Unreachable(format!(
                    "{rpc:?} to node {} at {}: {}",
                    self.target,
                    node.addr,
                    status.message()
                )));
            }
            Ok(Ok(resp)) => resp.into_inner(),
        };
        if node.incarnation.is_none() && !reply.incarnation.is_empty() {
            // Trust on first use: the node runtime commits the pin. Sending
            // fails only when the runtime is shutting down; nothing to do then.
            let _ = self.ctx.pins.send(PinRequest {
                node_id: self.target,
                incarnation: Incarnation(reply.incarnation.clone()),
            });
        }
        match reply.result {
            Some(raft_reply::Result::Payload(bytes)) => {
                self.ctx.clear_refusal(self.target);
                serde_json::from_slice(&bytes).map_err(|e| {
                    CallError::Network(format!(
                        "undecodable {rpc:?} reply from {}: {e}",
                        self.target
                    ))
                })
            }
            Some(raft_reply::Result::Refused(refusal)) => {
                self.ctx
                    .record_refusal(self.target, refusal.message.clone());
                Err(CallError::Unreachable(format!(
                    "node {} refused {rpc:?}: {}",
                    self.target, refusal.message
                )))
            }
            None => Err(CallError::Network(format!(
                "empty {rpc:?} reply from {}",
                self.target
            ))),
        }
    }

    async fn rpc<Req: Serialize, Resp: DeserializeOwned>(
        &mut self,
        rpc: Rpc,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        self.call(rpc, req, option.hard_ttl().max(self.ctx.rpc_timeout))
            .await
            .map_err(|e| match e {
                CallError::Unreachable(m) => RPCError::Unreachable(Unreachable::from_string(m)),
                CallError::Network(m) => RPCError::Network(NetworkError::from_string(m)),
            })
    }
}

/// What travels in an `InstallSnapshot` payload.
#[derive(Serialize, serde::Deserialize)]
pub struct SnapshotTransfer {
    pub vote: Vote,
    pub meta: SnapshotMeta,
    pub data: SnapshotData,
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(Rpc::Append, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(Rpc::Vote, &rpc, &option).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(Rpc::PreVote, &rpc, &option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::alias::SnapshotOf<TypeConfig, SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let transfer = SnapshotTransfer {
            vote,
            meta: snapshot.meta,
            data: snapshot.snapshot,
        };
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            res = self.call(Rpc::Snapshot, &transfer, option.hard_ttl().max(self.ctx.rpc_timeout)) => res.map_err(|e| match e {
                CallError::Unreachable(m) => StreamingError::Unreachable(Unreachable::from_string(m)),
                CallError::Network(m) => StreamingError::Network(NetworkError::from_string(m)),
            }),
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(Rpc::TransferLeader, &req, &option).await
    }
}

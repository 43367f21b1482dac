//! The network faces of a witness: one gRPC port (`Raft`, `Admin`, standard
//! health and reflection) and one HTTP port (`/healthz`, `/readyz`,
//! `/metrics` and the status page).

pub mod admin;
pub mod authz;
pub mod directives;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod raft_service;
pub mod status_page;
pub mod witness_service;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use witness_proto::admin_server::AdminServer;
use witness_proto::raft_server::RaftServer;

use crate::node::Node;
use crate::raft::network::MAX_RAFT_MESSAGE_BYTES;
use crate::raft::types::NodeId;
use crate::trust::{Incoming, Port, Role};

pub use authz::FORWARDED_HEADER;

/// How long a forwarded call may take before the follower gives up and says
/// so. Membership changes and operator failovers wait for a learner to catch
/// up or for the lease wait, so this is generous.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(60);

/// Metadata key on the refusal of a witness that is not a member of any
/// cluster (a joiner not admitted yet): the request reached no cluster, so
/// a client may try another endpoint, even with a change.
pub const NOT_MEMBER_HEADER: &str = "x-witness-not-member";

/// The refusal of a witness that is not a member (see [`NOT_MEMBER_HEADER`]).
pub(crate) fn not_member(node: &Node) -> tonic::Status {
    let mut status = tonic::Status::unavailable(format!(
        "node {} ({}) is not a member of the cluster yet (it waits to be admitted, e.g. by \
         `witnessctl members add`): it cannot answer for the cluster; ask another witness",
        node.config.node.id, node.config.node.name
    ));
    status.metadata_mut().insert(
        NOT_MEMBER_HEADER,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    status
}

fn no_leader() -> tonic::Status {
    tonic::Status::unavailable(
        "no leader: the cluster has no quorum right now; check that a majority of voters run and \
         reach each other (`witnessctl status --local` on each node)",
    )
}

/// Run `call` on the leader when this node is not the leader; `None` means
/// "handle it here". A forwarded request is marked and never forwarded
/// again, so two nodes that disagree about the leader cannot bounce it.
pub(crate) async fn forward<T, R, C, F, Fut>(
    node: &Node,
    request: &tonic::Request<T>,
    client: fn(tonic::transport::Channel) -> C,
    call: F,
) -> Option<Result<tonic::Response<R>, tonic::Status>>
where
    T: Clone,
    F: FnOnce(C, tonic::Request<T>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<R>, tonic::Status>>,
{
    if node.is_leader() {
        return None;
    }
    if !node.is_member() {
        return Some(Err(not_member(node)));
    }
    if request.metadata().contains_key(FORWARDED_HEADER) {
        return Some(Err(tonic::Status::unavailable(format!(
            "node {} is not the leader{}; retry",
            node.config.node.id,
            node.leader()
                .map(|l| format!(" (it believes node {l} is)"))
                .unwrap_or_default()
        ))));
    }
    let leader: NodeId = match node.leader() {
        Some(l) => l,
        None => return Some(Err(no_leader())),
    };
    let Some(member) = node.identity.member(leader) else {
        return Some(Err(tonic::Status::unavailable(format!(
            "leader {leader} is not in this node's membership view"
        ))));
    };
    // The leader checks the original caller's role (and its own deny list)
    // itself; it believes the name because this node's peer certificate
    // vouches for it.
    let header = match authz::forwarded_header(node.trust.as_deref(), request).and_then(|h| {
        h.parse::<tonic::metadata::MetadataValue<_>>()
            .map_err(|e| tonic::Status::internal(format!("forwarding: {e}")))
    }) {
        Ok(v) => v,
        Err(status) => return Some(Err(status)),
    };
    let channel = match node.net.channel(leader, &member.addr) {
        Ok(c) => c,
        Err(e) => return Some(Err(tonic::Status::internal(e))),
    };
    let mut fwd = tonic::Request::new(request.get_ref().clone());
    fwd.metadata_mut().insert(FORWARDED_HEADER, header);
    Some(
        match tokio::time::timeout(FORWARD_TIMEOUT, call(client(channel), fwd)).await {
            Ok(res) => res,
            Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                "forwarding to leader {leader} timed out after {FORWARD_TIMEOUT:?}"
            ))),
        },
    )
}

/// Streams a peer may reset before being accepted, per connection.
const MAX_PENDING_RESETS: usize = 4096;

use limits::{MAX_ADMIN_MESSAGE_BYTES, MAX_WITNESS_MESSAGE_BYTES};

/// How often the gRPC health status follows the node's readiness.
const HEALTH_POLL: Duration = Duration::from_millis(500);

/// The gRPC services of a witness (Raft, Admin, Witness, health,
/// reflection), ready to serve on any incoming stream. The health status
/// follows the node's readiness until `stop` turns true.
pub fn grpc_router(
    node: Arc<Node>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<tonic::transport::server::Router> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(witness_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the gRPC reflection service")?;
    {
        // The standard health service reports SERVING for "" and
        // "witness.v1.Admin" while the node is ready, so load balancers and
        // grpcurl/grpc_health_probe see the same readiness as /readyz.
        let node = node.clone();
        let mut stop = stop;
        tokio::spawn(async move {
            loop {
                let serving = node.readiness().is_ok();
                for svc in ["", "witness.v1.Admin"] {
                    let status = if serving {
                        tonic_health::ServingStatus::Serving
                    } else {
                        tonic_health::ServingStatus::NotServing
                    };
                    health_reporter.set_service_status(svc, status).await;
                }
                tokio::select! {
                    _ = tokio::time::sleep(HEALTH_POLL) => {}
                    _ = stop.changed() => return,
                }
            }
        });
    }
    // Each service first refuses, by role, a caller it never serves, before
    // the message is read (`authz::gate`).
    let gate = |service, allowed, needs| authz::gate(node.trust.clone(), service, allowed, needs);
    let raft_svc = InterceptedService::new(
        RaftServer::new(raft_service::RaftService::new(
            node.raft.clone(),
            node.identity.clone(),
            node.trust.clone(),
        ))
        .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES),
        gate(
            "Raft",
            &[Role::Peer],
            "only witnesses (peer certificates) may",
        ),
    );
    let admin_svc = InterceptedService::new(
        AdminServer::new(admin::AdminService::new(node.clone()))
            .max_decoding_message_size(MAX_ADMIN_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_ADMIN_MESSAGE_BYTES),
        gate(
            "Admin",
            &[Role::Viewer, Role::Operator, Role::Peer],
            "it needs a viewer or operator certificate",
        ),
    );
    let witness_svc = InterceptedService::new(
        witness_proto::witness_server::WitnessServer::new(witness_service::WitnessService::new(
            node.clone(),
        ))
        .max_decoding_message_size(MAX_WITNESS_MESSAGE_BYTES),
        gate(
            "Witness",
            &[Role::Agent, Role::Peer],
            "only agents (agent certificates) may",
        ),
    );
    Ok(Server::builder()
        // A peer's Raft calls that time out are reset; after a partition
        // heals, the backlog of such resets arrives at once. h2's default
        // (20) answers that with GOAWAY, which also kills the forwarded
        // operator calls sharing the connection.
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_RESETS))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(raft_svc)
        .add_service(admin_svc)
        .add_service(witness_svc))
}

/// Serve gRPC and HTTP (and the plaintext probe listener, if configured)
/// until `stop` turns true. With TLS, every connection's handshake is made
/// by [`crate::trust::Incoming`] with the node's current certificate.
pub async fn serve(
    node: Arc<Node>,
    grpc: TcpListener,
    http: TcpListener,
    plain_http: Option<TcpListener>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let trust = node.trust.clone();
    let mut grpc_stop = stop.clone();
    let grpc_fut = grpc_router(node.clone(), stop.clone())?.serve_with_incoming_shutdown(
        Incoming::new(grpc, trust.clone(), Port::Grpc),
        async move {
            let _ = grpc_stop.wait_for(|s| *s).await;
        },
    );
    let mut http_stop = stop.clone();
    let http_fut = axum::serve(
        Incoming::new(http, trust.clone(), Port::Http),
        http::router(node.clone()).into_make_service_with_connect_info::<crate::trust::ConnInfo>(),
    )
    .with_graceful_shutdown(async move {
        let _ = http_stop.wait_for(|s| *s).await;
    })
    .into_future();
    let plain_fut = async {
        let Some(listener) = plain_http else {
            return Ok(());
        };
        let mut plain_stop = stop.clone();
        axum::serve(listener, http::probe_router(node.clone()))
            .with_graceful_shutdown(async move {
                let _ = plain_stop.wait_for(|s| *s).await;
            })
            .await
    };
    let (g, h, p) = tokio::join!(grpc_fut, http_fut, plain_fut);
    g.context("gRPC server")?;
    h.context("HTTP server")?;
    p.context("plaintext probe HTTP server")?;
    Ok(())
}

//! The HTTP port: liveness and readiness for systemd, load balancers and
//! scripts.
//!
//! - `/healthz`: 200 while the process and its Raft core run.
//! - `/readyz`: 200 once the node is a member that knows its leader and has
//!   applied the cluster policy; otherwise 503 with the reason in the body.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use openraft::async_runtime::WatchReceiver;

use crate::node::Node;

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(node)
}

async fn healthz(State(node): State<Arc<Node>>) -> (StatusCode, String) {
    match &node.raft.metrics().borrow_watched().running_state {
        Ok(()) => (StatusCode::OK, "ok\n".into()),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("Raft stopped: {e}\n"),
        ),
    }
}

async fn readyz(State(node): State<Arc<Node>>) -> (StatusCode, String) {
    match node.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

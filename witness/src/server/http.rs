//! The HTTP port: liveness and readiness for systemd, load balancers and
//! scripts.
//!
//! - `/healthz`: 200 while the process and its Raft core run.
//! - `/readyz`: 200 once the node is a member that knows its leader and has
//!   applied the cluster policy; otherwise 503 with the reason in the body.
//! - `/metrics`: Prometheus metrics ([`super::metrics`]).
//! - `/` (and `/status`), `/status.json`, `/history.json`: the status page
//!   and its data ([`super::status_page`]).

use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::IntoResponse;
use axum::routing::get;
use openraft::async_runtime::WatchReceiver;

use super::admin::AdminService;
use crate::node::Node;
use crate::trust::{ConnInfo, Role};

/// The HTTP port: probes, metrics and the status page. With TLS, only a
/// viewer, an operator or a witness (peer) may read it.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(super::status_page::routes())
        .layer(middleware::from_fn_with_state(node.clone(), authorize))
        .with_state(node)
}

/// The plaintext probe listener (`node.plain_http_listen`): `/healthz`,
/// `/readyz` and `/metrics` only, for a local scraper without a certificate.
pub fn probe_router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(node)
}

async fn authorize(
    State(node): State<Arc<Node>>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> axum::response::Response {
    let Some(trust) = node.trust.as_deref() else {
        return next.run(request).await;
    };
    let caller = request
        .extensions()
        .get::<ConnectInfo<ConnInfo>>()
        .and_then(|c| c.0.caller.clone());
    let refused = match caller {
        None => Some((
            StatusCode::UNAUTHORIZED,
            "this port accepts only mutual TLS with a certificate of the cluster CA".to_string(),
        )),
        Some(caller) => match trust.still_trusts(&caller) {
            Err(why) => Some((
                StatusCode::UNAUTHORIZED,
                format!("{} is no longer trusted: {why}", caller.identity),
            )),
            Ok(()) => match caller.identity.role() {
                Role::Viewer | Role::Operator | Role::Peer => None,
                Role::Agent => Some((
                    StatusCode::FORBIDDEN,
                    format!(
                        "{} may not read the status page: it needs a viewer, operator or peer \
                         certificate",
                        caller.identity
                    ),
                )),
            },
        },
    };
    match refused {
        None => next.run(request).await,
        Some((code, why)) => (code, format!("{why}\n")).into_response(),
    }
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

async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let status = AdminService::new(node.clone()).local_snapshot();
    let view = node.local_view();
    let probes = node
        .probe_stats()
        .map(|stats| stats.snapshot())
        .unwrap_or_default();
    let applied = node.state.current();
    let text = super::metrics::render(&super::metrics::Scrape {
        status: &status,
        view: view.as_deref(),
        probes: &probes,
        directives: &applied.state.ledger.directives,
        counters: &node.counters,
        tls: node.trust.as_deref().map(super::metrics::TlsFacts::of),
        now_ms: crate::clock::unix_ms(),
    });
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

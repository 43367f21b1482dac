//! The status page: a read-only view of the cluster for people, on the
//! HTTP port.
//!
//! - `GET /` and `GET /status`: one self-contained HTML page
//!   (`status_page.html`: inline CSS and JavaScript, no external assets, so
//!   it works on a network without internet access). It reads the two
//!   documents below from the same witness every 2 s and shows the cluster,
//!   the verdict (active site, epoch, mode, freeze, pending failover), each
//!   witness's view of each site, the witnesses, the agents and the recent
//!   history as a timeline. Text enters the page only as text nodes, never
//!   as markup, and a Content-Security-Policy forbids loading anything from
//!   elsewhere.
//! - `GET /status.json`: the leader's view, as `witnessctl status --output
//!   json` prints it (the same [`status_json`] document), plus `view`
//!   (`"leader"`, or `"local"` when the leader could not be asked and this
//!   is the serving witness's own view, explained in `note`), `served_by`
//!   and `served_by_name`.
//! - `GET /history.json?limit=N`: `{view, note, served_by, served_by_name,
//!   records}`, `records` being the newest `N` (default
//!   [`DEFAULT_HISTORY`], at most [`MAX_HISTORY`]) history records, oldest
//!   first, as `witnessctl history --output json` prints them
//!   ([`history_json`]). When the leader cannot be asked, the records are
//!   this witness's applied copy, which may lag.
//!
//! Nothing here changes state: there are no buttons, and operators act with
//! `witnessctl`. Every request is bounded by [`LEADER_TIMEOUT`]: a page that
//! hangs on a partitioned leader would hide exactly the moment it is
//! needed.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};
use witness_proto::admin_server::Admin;
use witness_proto::json::{history_json, non_empty, status_json};
use witness_proto::{HistoryReply, HistoryRequest, StatusReply, StatusRequest};

use super::admin::AdminService;
use crate::node::Node;

/// The page itself.
const PAGE: &str = include_str!("status_page.html");

/// How long the page's data requests wait for the leader before answering
/// with this witness's own view. The page refreshes every 2 s; a leader
/// slower than that is, for a person watching, as good as unreachable.
pub const LEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// History records `/history.json` returns without `?limit=`.
pub const DEFAULT_HISTORY: u32 = 50;

/// The most history records one `/history.json` answer carries, so a page
/// left open cannot make the leader serialise the whole history every 2 s.
pub const MAX_HISTORY: u32 = 1000;

/// The page may run only its own inline script and style and talk only to
/// the witness that served it.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// Routes of the status page, merged into the HTTP port's router.
pub fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/", get(page))
        .route("/status", get(page))
        .route("/status.json", get(status))
        .route("/history.json", get(history))
}

async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        PAGE,
    )
}

fn json_response(doc: Value) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        doc.to_string(),
    )
}

/// Why the leader's answer is missing, for `note`.
fn unreachable_note(error: Option<tonic::Status>) -> String {
    match error {
        Some(e) => format!("could not ask the leader: {}", e.message()),
        None => format!("the leader did not answer within {LEADER_TIMEOUT:?}"),
    }
}

/// A request to the Admin service on behalf of the page's reader: it
/// carries the HTTP connection's certificate identity, so the Admin
/// service checks (and a forward to the leader names) the same caller.
fn as_reader<T>(message: T, reader: &ConnectInfo<crate::trust::ConnInfo>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.extensions_mut().insert(reader.0.clone());
    request
}

async fn status(
    State(node): State<Arc<Node>>,
    reader: ConnectInfo<crate::trust::ConnInfo>,
) -> impl IntoResponse {
    let admin = AdminService::new(node.clone());
    let asked = admin.status(as_reader(StatusRequest { local: false }, &reader));
    let reply = match tokio::time::timeout(LEADER_TIMEOUT, asked).await {
        Ok(Ok(reply)) => reply.into_inner(),
        Ok(Err(e)) => local_status(&admin, unreachable_note(Some(e))),
        Err(_) => local_status(&admin, unreachable_note(None)),
    };
    json_response(status_document(&node, &reply))
}

fn local_status(admin: &AdminService, note: String) -> StatusReply {
    let mut reply = admin.local_snapshot();
    reply.note = note;
    reply
}

/// [`status_json`] with the page's fields. Only the leader's answer has the
/// agents and the pending failover, so any other answer is a local view —
/// also the one the Admin service itself falls back to when forwarding
/// fails.
fn status_document(node: &Node, reply: &StatusReply) -> Value {
    let mut doc = status_json(reply);
    if let Value::Object(fields) = &mut doc {
        // Nothing a peer check relies on leaves through the page: not the
        // cluster id, not the store incarnations (witnessctl, over the
        // authenticated Admin service, shows them).
        fields.remove("cluster_id");
        if let Some(Value::Array(members)) = fields.get_mut("members") {
            for member in members {
                if let Value::Object(m) = member {
                    m.remove("incarnation");
                }
            }
        }
        let view = if reply.role == "leader" {
            "leader"
        } else {
            "local"
        };
        fields.insert("view".into(), view.into());
        fields.insert("tls".into(), tls_document(node, crate::trust::unix_now()));
        fields.insert("served_by".into(), node.config.node.id.into());
        fields.insert(
            "served_by_name".into(),
            node.config.node.name.clone().into(),
        );
    }
    doc
}

/// The page's word on this witness's TLS: off, or the certificates'
/// expiry; `warning` joins [`Node::tls_warnings`].
fn tls_document(node: &Node, now_s: i64) -> Value {
    let warnings = node.tls_warnings(now_s);
    let warning = if warnings.is_empty() {
        Value::Null
    } else {
        Value::String(warnings.join("; "))
    };
    let Some(trust) = node.trust.as_deref() else {
        return json!({ "enabled": false, "warning": warning });
    };
    let material = trust.current();
    json!({
        "enabled": true,
        "cert_expires_unix": material.own.not_after,
        "ca_expires_unix": material.ca_not_after,
        "warning": warning,
    })
}

#[derive(Debug, Deserialize)]
struct HistoryQuery {
    limit: Option<u32>,
}

async fn history(
    State(node): State<Arc<Node>>,
    reader: ConnectInfo<crate::trust::ConnInfo>,
    Query(query): Query<HistoryQuery>,
) -> impl IntoResponse {
    let limit = query.limit.unwrap_or(DEFAULT_HISTORY).clamp(1, MAX_HISTORY);
    let admin = AdminService::new(node.clone());
    let asked = admin.history(as_reader(HistoryRequest { limit }, &reader));
    let (reply, note) = match tokio::time::timeout(LEADER_TIMEOUT, asked).await {
        Ok(Ok(reply)) => (reply.into_inner(), None),
        Ok(Err(e)) => (admin.local_history(limit), Some(unreachable_note(Some(e)))),
        Err(_) => (admin.local_history(limit), Some(unreachable_note(None))),
    };
    json_response(history_document(&node, &reply, note))
}

fn history_document(node: &Node, reply: &HistoryReply, note: Option<String>) -> Value {
    let view = if note.is_some() { "local" } else { "leader" };
    json!({
        "view": view,
        "note": non_empty(note.as_deref().unwrap_or_default()),
        "served_by": node.config.node.id,
        "served_by_name": node.config.node.name,
        "records": history_json(reply),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    use crate::config::NodeConfig;
    use crate::trust::ConnInfo;
    use axum::extract::ConnectInfo;

    /// A witness with an empty data dir: a joiner that knows no leader, so
    /// every data route takes its local fallback.
    async fn joiner(dir: &std::path::Path) -> Arc<Node> {
        joiner_with(dir, &tls_table(dir)).await
    }

    /// Like [`joiner`], with `tls` as its `[tls]` table.
    async fn joiner_with(dir: &std::path::Path, tls: &str) -> Arc<Node> {
        let text = format!(
            "[node]\nid = 1\nname = \"w1\"\nsite = \"dc-a\"\ncluster = \"test\"\n\
             listen = \"127.0.0.1:7410\"\nhttp_listen = \"127.0.0.1:7411\"\n\
             data_dir = \"{}\"\n\n[[peer]]\nid = 1\nname = \"w1\"\naddr = \"127.0.0.1:7410\"\n\
             site = \"dc-a\"\n{}",
            dir.join("data").display(),
            tls,
        );
        let config = NodeConfig::parse(&text, std::path::Path::new("w1.toml")).expect("config");
        Node::start(config).await.expect("start node")
    }

    /// The `[tls]` table of a peer certificate for node 1 of cluster
    /// `test`, issued into `dir` by a new CA.
    fn tls_table(dir: &std::path::Path) -> String {
        use crate::trust::{Principal, certs};
        let tls = dir.join("tls");
        let now = crate::trust::unix_now();
        certs::init_ca(&tls, "test", 1, false, now).expect("ca");
        let (cert, key) =
            certs::issue_into(&tls, &tls, Principal::Peer { id: 1 }, &[], 1, false, now)
                .expect("peer certificate");
        format!(
            "\n[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            tls.join(certs::CA_CERT).display(),
            cert.display(),
            key.display()
        )
    }

    /// A caller of the HTTP port as the TLS acceptor describes it.
    fn caller(node: &Node, principal: Option<crate::trust::Principal>) -> ConnectInfo<ConnInfo> {
        let generation = node.trust.as_ref().map_or(0, |t| t.generation());
        ConnectInfo(ConnInfo {
            remote: None,
            caller: principal.map(|principal| {
                Arc::new(crate::trust::Caller {
                    identity: crate::trust::Identity::new("test", principal),
                    chain: Arc::new(Vec::new()),
                    serial: "1".into(),
                    not_after: i64::MAX,
                    generation,
                })
            }),
        })
    }

    async fn get(node: &Arc<Node>, uri: &str) -> (StatusCode, String, String) {
        let viewer = crate::trust::Principal::Viewer {
            name: "oncall".into(),
        };
        get_as(node, uri, Some(viewer)).await
    }

    async fn get_as(
        node: &Arc<Node>,
        uri: &str,
        principal: Option<crate::trust::Principal>,
    ) -> (StatusCode, String, String) {
        let mut request = Request::get(uri).body(Body::empty()).expect("request");
        request.extensions_mut().insert(caller(node, principal));
        let response = super::super::http::router(node.clone())
            .oneshot(request)
            .await
            .expect("infallible");
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        (
            status,
            content_type,
            String::from_utf8(bytes.to_vec()).expect("utf-8"),
        )
    }

    /// Both page paths serve the HTML page; the data routes serve JSON,
    /// falling back to the witness's own view (saying so) when there is no
    /// leader to ask.
    #[tokio::test]
    async fn routes_answer_with_their_content_types_and_local_fallbacks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = joiner(dir.path()).await;
        for path in ["/", "/status"] {
            let (code, ctype, body) = get(&node, path).await;
            assert_eq!(code, StatusCode::OK, "{path}");
            assert_eq!(ctype, "text/html; charset=utf-8", "{path}");
            assert!(body.contains("id=\"active-site\""), "{path}");
        }

        let (code, ctype, body) = get(&node, "/status.json").await;
        assert_eq!((code, ctype.as_str()), (StatusCode::OK, "application/json"));
        let doc: Value = serde_json::from_str(&body).expect("status json");
        assert_eq!(doc["view"], "local", "{doc}");
        assert_eq!(doc["served_by"], 1);
        assert_eq!(doc["served_by_name"], "w1");
        assert!(doc["note"].is_string(), "the fallback says why: {doc}");
        for field in [
            "cluster_name",
            "active_site",
            "epoch",
            "mode",
            "members",
            "sites",
        ] {
            assert!(doc.get(field).is_some(), "status_json's {field} is kept");
        }

        let (code, ctype, body) = get(&node, "/history.json?limit=5").await;
        assert_eq!((code, ctype.as_str()), (StatusCode::OK, "application/json"));
        let doc: Value = serde_json::from_str(&body).expect("history json");
        assert_eq!(doc["view"], "local", "{doc}");
        assert!(doc["note"].is_string(), "{doc}");
        assert!(doc["records"].is_array(), "{doc}");

        let (code, _, _) = get(&node, "/history.json?limit=many").await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
    }

    /// The page loads nothing from anywhere: no absolute URL in any `src`
    /// or `href`, no `@import` or `url()` in its style, no `innerHTML` (text
    /// goes in as text nodes), and the data it fetches is relative to the
    /// witness that served it.
    #[test]
    fn page_is_self_contained_and_builds_no_markup_from_data() {
        let lower = PAGE.to_ascii_lowercase();
        for scheme in ["http://", "https://"] {
            assert!(!lower.contains(scheme), "the page names a {scheme} URL");
        }
        for attr in ["src", "href", "action"] {
            for quote in ["\"", "'", ""] {
                for scheme in ["http:", "https:", "//"] {
                    let needle = format!("{attr}={quote}{scheme}");
                    assert!(!lower.contains(&needle), "external asset: {needle}");
                }
            }
        }
        for banned in [
            "@import",
            "url(",
            "innerhtml",
            "outerhtml",
            "document.write",
        ] {
            assert!(!lower.contains(banned), "the page uses {banned}");
        }
        assert!(PAGE.contains("getJson(\"status.json\")"));
        assert!(PAGE.contains("getJson(\"history.json\")"));
        assert!(PAGE.contains("<noscript>") && PAGE.contains("witnessctl status"));
    }

    /// With TLS, the HTTP port serves a viewer, an operator or a peer; an
    /// agent's certificate is refused (403), a connection without one
    /// (which the acceptor never lets through) would be too (401).
    #[tokio::test]
    async fn the_http_port_serves_only_viewers_operators_and_peers() {
        use crate::trust::Principal;
        let dir = tempfile::tempdir().expect("tempdir");
        let node = joiner(dir.path()).await;
        for (who, want) in [
            (
                Some(Principal::Operator {
                    name: "alice".into(),
                }),
                StatusCode::OK,
            ),
            (Some(Principal::Peer { id: 2 }), StatusCode::OK),
            (
                Some(Principal::Agent {
                    site: "dc-a".into(),
                    name: "mbox1".into(),
                }),
                StatusCode::FORBIDDEN,
            ),
            (None, StatusCode::UNAUTHORIZED),
        ] {
            for path in ["/status.json", "/metrics", "/healthz"] {
                let (code, _, body) = get_as(&node, path, who.clone()).await;
                assert_eq!(code, want, "{who:?} {path}: {body}");
            }
        }
    }

    /// The page's JSON says when the certificates expire and warns within
    /// 14 days; it never carries the cluster id or store incarnations.
    #[tokio::test]
    async fn the_page_warns_before_certificates_expire_and_hides_peer_secrets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = joiner(dir.path()).await;
        let expires = node.trust.as_ref().expect("tls").current().own.not_after;
        let doc = tls_document(&node, expires - 30 * 86_400);
        assert_eq!(doc["warning"], Value::Null, "{doc}");
        let doc = tls_document(&node, expires - 3 * 86_400);
        let warning = doc["warning"].as_str().expect("a warning");
        assert!(
            warning.contains("w1's certificate expires in 3 day(s)"),
            "{doc}"
        );
        let doc = tls_document(&node, expires + 1);
        assert!(
            doc["warning"]
                .as_str()
                .unwrap_or_default()
                .contains("expired"),
            "{doc}"
        );

        let (_, _, body) = get(&node, "/status.json").await;
        let doc: Value = serde_json::from_str(&body).expect("status json");
        assert!(doc.get("cluster_id").is_none(), "{doc}");
        assert!(!body.contains("incarnation"), "{body}");
        assert_eq!(doc["tls"]["enabled"], true, "{doc}");
    }

    /// A witness without TLS says so on its page and in every `status`
    /// answer, so that nobody mistakes it for a protected one.
    #[tokio::test]
    async fn a_witness_without_tls_warns_on_the_page_and_in_status() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = joiner_with(dir.path(), "\n[tls]\ninsecure = true\n").await;
        let (_, _, body) = get_as(&node, "/status.json", None).await;
        let doc: Value = serde_json::from_str(&body).expect("status json");
        assert_eq!(doc["tls"]["enabled"], false, "{doc}");
        assert!(
            doc["tls"]["warning"]
                .as_str()
                .unwrap_or_default()
                .contains("w1 runs without TLS"),
            "{doc}"
        );
        let status = AdminService::new(node.clone()).local_snapshot();
        assert!(
            status
                .warnings
                .iter()
                .any(|w| w.contains("runs without TLS")),
            "{:?}",
            status.warnings
        );

        let dir = tempfile::tempdir().expect("tempdir");
        // With TLS, only expiry is ever warned of (this test's
        // certificates live one day).
        let node = joiner(dir.path()).await;
        let warnings = AdminService::new(node.clone()).local_snapshot().warnings;
        assert!(
            !warnings.is_empty() && warnings.iter().all(|w| w.contains("expires in")),
            "{warnings:?}"
        );
    }
}

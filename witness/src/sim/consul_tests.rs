//! The fake Consul against reference/consul-api.md, over raw HTTP: shapes,
//! headers, status codes and exact bodies. Loopback only.

use std::time::Duration;

use super::consul::*;

const MBOX1: &str = "agent-mbox1-example-com";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client")
}

struct Got {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn send(fake: &FakeConsul, method: reqwest::Method, path: &str, body: Option<&str>) -> Got {
    let url = format!("http://{}{path}", fake.address());
    let mut request = client().request(method, url);
    if let Some(body) = body {
        request = request.body(body.to_string());
    }
    let response = request.send().await.expect("send");
    Got {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.text().await.expect("body"),
    }
}

async fn get(fake: &FakeConsul, path: &str) -> Got {
    send(fake, reqwest::Method::GET, path, None).await
}

async fn carbonio() -> FakeConsul {
    FakeConsul::loopback(FakeState::carbonio())
        .await
        .expect("fake")
}

/// Health answers carry the meta headers and Consul's field order; members
/// and status carry none of the meta headers; every answer names the
/// default ACL policy.
#[tokio::test]
async fn fake_serves_real_shapes_and_headers() {
    let fake = carbonio().await;
    let got = get(&fake, &format!("/v1/health/node/{MBOX1}")).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("content-type"), Some("application/json"));
    assert!(
        got.header("x-consul-index")
            .and_then(|i| i.parse::<u64>().ok())
            .is_some_and(|i| i >= 1)
    );
    assert_eq!(got.header("x-consul-knownleader"), Some("true"));
    assert_eq!(got.header("x-consul-lastcontact"), Some("0"));
    assert_eq!(got.header("x-consul-effective-consistency"), Some("leader"));
    assert_eq!(got.header("x-consul-query-backend"), Some("blocking-query"));
    assert_eq!(got.header("x-consul-default-acl-policy"), Some("deny"));
    assert!(
        got.body.starts_with(
            "[{\"Node\":\"agent-mbox1-example-com\",\"CheckID\":\"serfHealth\",\"Name\":\"Serf \
             Health Status\",\"Status\":\"passing\",\"Notes\":\"\",\"Output\":\"Agent alive and \
             reachable\",\"ServiceID\":\"\",\"ServiceName\":\"\",\"ServiceTags\":[],\"Type\":\"\",\
             \"Interval\":\"\",\"Timeout\":\"\",\"ExposedPort\":0,\"Definition\":{},\"CreateIndex\":"
        ),
        "{}",
        got.body
    );
    let upper = get(&fake, "/v1/health/node/AGENT-MBOX1-EXAMPLE-COM").await;
    assert_eq!(upper.body, got.body, "node names match case-insensitively");

    let service = get(&fake, "/v1/health/service/carbonio-proxy").await;
    let entries: serde_json::Value = serde_json::from_str(&service.body).expect("json");
    let first = &entries[0];
    assert_eq!(first["Node"]["Node"], "agent-proxy1-example-com");
    assert_eq!(first["Node"]["Datacenter"], "dc1");
    assert_eq!(
        first["Service"]["Proxy"],
        serde_json::json!({"Mode": "", "MeshGateway": {}, "Expose": {}})
    );
    assert_eq!(first["Service"]["Meta"], serde_json::Value::Null);
    assert_eq!(
        first["Checks"][0]["CheckID"], "serfHealth",
        "node checks first"
    );
    assert_eq!(first["Checks"][1]["CheckID"], "service:carbonio-proxy");

    for path in ["/v1/agent/members", "/v1/status/leader", "/v1/status/peers"] {
        let got = get(&fake, path).await;
        assert_eq!(got.status, 200, "{path}");
        assert_eq!(got.header("x-consul-index"), None, "{path}");
        assert_eq!(got.header("x-consul-knownleader"), None, "{path}");
        assert_eq!(
            got.header("x-consul-default-acl-policy"),
            Some("deny"),
            "{path}"
        );
    }
    assert_eq!(
        get(&fake, "/v1/status/leader").await.body,
        "\"10.66.64.7:8300\""
    );
    let peers = get(&fake, "/v1/status/peers").await.body;
    assert_eq!(
        peers,
        "[\"10.66.64.7:8300\",\"10.66.64.11:8300\",\"172.17.146.31:8300\"]"
    );

    let nodes: Vec<serde_json::Value> =
        serde_json::from_str(&get(&fake, "/v1/catalog/nodes").await.body).expect("json");
    let names: Vec<&str> = nodes.iter().filter_map(|n| n["Node"].as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "catalog nodes are sorted by name");

    let pretty = get(&fake, "/v1/status/peers?pretty").await.body;
    assert!(
        pretty.starts_with("[\n    \"10.66.64.7:8300\"") && pretty.ends_with("]\n"),
        "{pretty}"
    );
    fake.stop().await;
}

/// Methods, unknown paths and empty path tails answer as Consul's mux does.
#[tokio::test]
async fn fake_answers_methods_and_paths_like_consul() {
    let fake = carbonio().await;
    let post = send(&fake, reqwest::Method::POST, "/v1/status/leader", Some("")).await;
    assert_eq!(
        (post.status, post.body.as_str()),
        (405, "method POST not allowed")
    );
    assert_eq!(post.header("allow"), Some("OPTIONS,GET"));
    let options = send(&fake, reqwest::Method::OPTIONS, "/v1/agent/members", None).await;
    assert_eq!((options.status, options.body.as_str()), (200, ""));
    assert_eq!(options.header("allow"), Some("OPTIONS,GET"));
    let unknown = get(&fake, "/v1/kv/anything").await;
    assert_eq!(
        (unknown.status, unknown.body.as_str()),
        (
            404,
            "Invalid URL path: not a recognized HTTP API endpoint\n"
        )
    );
    let missing = get(&fake, "/v1/health/node/").await;
    assert_eq!(
        (missing.status, missing.body.as_str()),
        (400, "Missing node name")
    );
    let missing = get(&fake, "/v1/health/state/").await;
    assert_eq!(
        (missing.status, missing.body.as_str()),
        (400, "Missing check state")
    );
    let bogus = get(&fake, "/v1/health/state/bogus").await;
    assert_eq!((bogus.status, bogus.body.as_str()), (200, "[]"));
    let unknown_service = get(&fake, "/v1/health/service/nope").await;
    assert_eq!(
        (unknown_service.status, unknown_service.body.as_str()),
        (200, "[]")
    );
    fake.stop().await;
}

/// Malformed parameters get Consul's exact 400 bodies.
#[tokio::test]
async fn fake_rejects_bad_parameters() {
    let fake = carbonio().await;
    let cases = [
        (
            "/v1/health/node/x?stale&consistent",
            "Cannot specify ?stale with ?consistent, conflicting semantics.",
        ),
        ("/v1/health/node/x?index=1&wait=10", "Invalid wait time"),
        ("/v1/health/node/x?index=abc", "Invalid index"),
        (
            "/v1/health/service/x?passing=maybe",
            "Invalid value for ?passing",
        ),
        (
            "/v1/health/node/x?max_stale=5",
            "Invalid max_stale value \"5\"",
        ),
        ("/v1/status/leader?wait=forever", "Invalid wait time"),
    ];
    for (path, body) in cases {
        let got = get(&fake, path).await;
        assert_eq!((got.status, got.body.as_str()), (400, body), "{path}");
    }
    assert_eq!(
        get(&fake, "/v1/health/node/x?stale=false")
            .await
            .header("x-consul-effective-consistency"),
        Some("stale"),
        "presence, not value"
    );
    assert_eq!(
        get(&fake, "/v1/health/node/x?wait=300000ms").await.status,
        200
    );
    fake.stop().await;
}

/// Leaderless: default reads fail after the hold with deferred meta (not on
/// health/service), stale reads get the frozen catalog, and the leader is
/// `""`.
#[tokio::test]
async fn fake_leaderless_fails_default_reads_and_serves_stale_ones() {
    let mut state = FakeState::carbonio();
    state.leaderless_hold = Duration::from_millis(50);
    state.agent = AgentKind::Client;
    state.set_leader(None);
    let fake = FakeConsul::loopback(state).await.expect("fake");
    let got = get(&fake, &format!("/v1/health/node/{MBOX1}")).await;
    assert_eq!(
        (got.status, got.body.as_str()),
        (500, "rpc error making call: No cluster leader")
    );
    assert_eq!(got.header("x-consul-index"), Some("1"));
    assert_eq!(got.header("x-consul-knownleader"), Some("false"));
    assert_eq!(got.header("x-consul-effective-consistency"), None);
    let service = get(&fake, "/v1/health/service/carbonio-mailbox").await;
    assert_eq!(service.status, 500);
    assert_eq!(
        service.header("x-consul-index"),
        None,
        "health/service sets meta only on success"
    );

    let stale = get(&fake, &format!("/v1/health/node/{MBOX1}?stale")).await;
    assert_eq!(stale.status, 200);
    assert_eq!(stale.header("x-consul-knownleader"), Some("false"));
    assert_eq!(
        stale.header("x-consul-effective-consistency"),
        Some("stale")
    );
    assert!(stale.body.contains("serfHealth"));
    assert_eq!(get(&fake, "/v1/status/leader").await.body, "\"\"");
    assert_eq!(
        get(&fake, "/v1/agent/members").await.status,
        200,
        "members need no leader"
    );
    fake.stop().await;
}

/// `?passing` drops the instances of a failed node (its serfHealth is
/// critical) although their own checks are frozen at passing.
#[tokio::test]
async fn fake_passing_filter_drops_instances_of_dead_nodes() {
    let fake = carbonio().await;
    fake.update(|s| s.fail_node(MBOX1)).expect("node");
    let all: Vec<serde_json::Value> =
        serde_json::from_str(&get(&fake, "/v1/health/service/carbonio-mailbox").await.body)
            .expect("json");
    assert_eq!(all.len(), 2);
    let passing: Vec<serde_json::Value> = serde_json::from_str(
        &get(&fake, "/v1/health/service/carbonio-mailbox?passing")
            .await
            .body,
    )
    .expect("json");
    let nodes: Vec<&str> = passing
        .iter()
        .filter_map(|e| e["Node"]["Node"].as_str())
        .collect();
    assert_eq!(nodes, ["agent-mbox2-example-com"]);
    let critical = get(&fake, "/v1/health/state/critical").await.body;
    assert!(critical.contains(MBOX1) && critical.contains("Agent not live or unreachable"));
    fake.stop().await;
}

/// A blocking query returns when the table changes, with a higher index,
/// or at the end of `wait` with the index unchanged.
#[tokio::test]
async fn fake_blocking_query_waits_for_a_change() {
    let fake = carbonio().await;
    let path = format!("/v1/health/node/{MBOX1}");
    let index: u64 = get(&fake, &path)
        .await
        .header("x-consul-index")
        .and_then(|i| i.parse().ok())
        .expect("index");

    let quiet = get(&fake, &format!("{path}?index={index}&wait=200ms")).await;
    assert_eq!(quiet.status, 200);
    assert_eq!(
        quiet.header("x-consul-index"),
        Some(index.to_string().as_str())
    );

    let url = format!("{path}?index={index}&wait=10s");
    let waiting = {
        let address = fake.address();
        tokio::spawn(async move {
            let response = client()
                .get(format!("http://{address}{url}"))
                .send()
                .await
                .expect("send");
            response
                .headers()
                .get("x-consul-index")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !waiting.is_finished(),
        "the query blocks while nothing changes"
    );
    fake.update(|s| s.set_service_check(MBOX1, "carbonio-mailbox", CheckStatus::Critical, "down"))
        .expect("check");
    let after = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("woken by the change")
        .expect("task");
    assert!(after.is_some_and(|i| i > index), "{after:?} > {index}");
    fake.stop().await;
}

/// ACLs: an unknown token is `403 ACL not found` (prefixed through a client
/// agent except on members, resolved locally); a token without rights gets
/// `200 []` and, being non-empty, the filtered header.
#[tokio::test]
async fn fake_acl_tokens_filter_or_refuse() {
    let mut state = FakeState::carbonio();
    state.agent = AgentKind::Client;
    if let Some(acl) = state.acl.as_mut() {
        acl.tokens.insert("nobody".into(), Rights::None);
    }
    let fake = FakeConsul::loopback(state).await.expect("fake");
    let with_token = |path: &str, token: &str| {
        client()
            .get(format!("http://{}{path}", fake.address()))
            .header("X-Consul-Token", token)
    };
    let refused = with_token(&format!("/v1/health/node/{MBOX1}"), "bogus")
        .send()
        .await
        .expect("send");
    assert_eq!(refused.status(), 403);
    assert_eq!(
        refused.text().await.expect("body"),
        "rpc error making call: ACL not found"
    );
    let members = with_token("/v1/agent/members", "bogus")
        .send()
        .await
        .expect("send");
    assert_eq!(members.status(), 403);
    assert_eq!(members.text().await.expect("body"), "ACL not found");
    let bearer = client()
        .get(format!("http://{}/v1/agent/members", fake.address()))
        .header("Authorization", "bearer bogus")
        .send()
        .await
        .expect("send");
    assert_eq!(bearer.status(), 403, "Authorization: Bearer is read too");
    let leader = with_token("/v1/status/leader", "bogus")
        .send()
        .await
        .expect("send");
    assert_eq!(leader.status(), 200, "status endpoints ignore tokens");

    let filtered = with_token(&format!("/v1/health/node/{MBOX1}"), "nobody")
        .send()
        .await
        .expect("send");
    assert_eq!(filtered.status(), 200);
    assert_eq!(
        filtered
            .headers()
            .get("x-consul-results-filtered-by-acls")
            .and_then(|v| v.to_str().ok()),
        Some("true")
    );
    assert_eq!(filtered.text().await.expect("body"), "[]");
    fake.stop().await;
}

/// The `/_fake/` control API scripts the same state as the Rust API.
#[tokio::test]
async fn fake_control_api_scripts_the_state() {
    let fake = carbonio().await;
    let put = reqwest::Method::PUT;
    let ok = send(
        &fake,
        reqwest::Method::POST,
        &format!("/_fake/node/{MBOX1}/fail"),
        Some(""),
    )
    .await;
    assert_eq!((ok.status, ok.body.as_str()), (200, "ok\n"));
    assert!(
        get(&fake, "/v1/health/state/critical")
            .await
            .body
            .contains(MBOX1)
    );
    assert_eq!(
        send(
            &fake,
            reqwest::Method::POST,
            "/_fake/node/nope/fail",
            Some("")
        )
        .await
        .status,
        400
    );

    assert_eq!(
        send(&fake, put.clone(), "/_fake/leader", Some("null"))
            .await
            .status,
        200
    );
    assert_eq!(get(&fake, "/v1/status/leader").await.body, "\"\"");
    assert_eq!(
        send(
            &fake,
            put.clone(),
            "/_fake/leader",
            Some("\"10.0.0.9:8300\"")
        )
        .await
        .status,
        200
    );
    assert_eq!(
        get(&fake, "/v1/status/leader").await.body,
        "\"10.0.0.9:8300\""
    );

    let fault = r#"{"respond":{"status":503,"body":"nope"}}"#;
    assert_eq!(
        send(
            &fake,
            put.clone(),
            "/_fake/fault/agent_members",
            Some(fault)
        )
        .await
        .status,
        200
    );
    let faulty = get(&fake, "/v1/agent/members").await;
    assert_eq!((faulty.status, faulty.body.as_str()), (503, "nope"));
    assert_eq!(
        send(
            &fake,
            reqwest::Method::DELETE,
            "/_fake/fault/agent_members",
            None
        )
        .await
        .status,
        200
    );
    assert_eq!(get(&fake, "/v1/agent/members").await.status, 200);

    let state = get(&fake, "/_fake/state").await.body;
    let parsed: FakeState = serde_json::from_str(&state).expect("state JSON");
    assert_eq!(parsed, fake.state());
    assert_eq!(
        send(&fake, put, "/_fake/state", Some(&state)).await.status,
        200
    );
    fake.stop().await;
}

/// Two agents of one cluster serve one state: a node failed through either
/// is failed at both, and stopping one stops both.
#[tokio::test]
async fn fake_agents_of_one_cluster_share_one_view() {
    let first = carbonio().await;
    let second = first
        .also_on(
            tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind"),
        )
        .expect("second agent");
    assert_ne!(first.addr(), second.addr());
    second.update(|s| s.fail_node(MBOX1)).expect("fail mbox1");
    for agent in [&first, &second] {
        let critical = get(agent, "/v1/health/state/critical").await.body;
        assert!(critical.contains(MBOX1), "{critical}");
    }
    assert_eq!(first.state(), second.state());
    let addr = second.address();
    first.stop().await;
    let refused = client()
        .get(format!("http://{addr}/v1/status/leader"))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(refused.is_err(), "the second agent stopped with the first");
}

//! The simulated world: three witnesses running the real node code, two
//! sites' services, one lease-holding client per site, and a fake Consul
//! agent per domain, as turmoil hosts.
//!
//! | site | hosts |
//! | --- | --- |
//! | `dc-a` (active at bootstrap) | `w1` (witness 1), `svc-a` (mailstore :17101, proxy :17102), `agent-a`, `consul-a` |
//! | `dc-b` | `w2` (witness 2), `svc-b` (mailstore :17201, proxy :17202), `agent-b`, `consul-b` |
//! | `dc-c` (witness only) | `w3` (witness 3), `consul-c` |
//!
//! Each witness reads its own domain's Consul agent (`crate::consul`).
//!
//! A witness keeps its [`MemoryStore`], its incarnation and the cluster id
//! it learnt outside its host, so a crash and restart behaves like a real
//! process restart over the same data dir. Everything else (Raft's soft
//! state, the lease book, probes, channels) dies with the host.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use witness::config::{ConsulAgentConfig, NodeConfig, Policy};
use witness::node::Node;
use witness::raft::identity::Identity;
use witness::raft::store::{Bootstrap, MemoryStore};
use witness::raft::types::{Incarnation, NodeId, WitnessNode};
use witness_proto::RenewLeaseRequest;
use witness_proto::witness_client::WitnessClient;

use crate::{consul, net};

/// The gRPC port every witness listens on.
pub const GRPC_PORT: u16 = 7400;

/// One witness: its host name, node id and site.
pub struct WitnessSpec {
    pub host: &'static str,
    pub id: NodeId,
    pub site: &'static str,
}

pub const WITNESSES: [WitnessSpec; 3] = [
    WitnessSpec {
        host: "w1",
        id: 1,
        site: "dc-a",
    },
    WitnessSpec {
        host: "w2",
        id: 2,
        site: "dc-b",
    },
    WitnessSpec {
        host: "w3",
        id: 3,
        site: "dc-c",
    },
];

/// A site that runs services and a lease client.
pub struct SiteSpec {
    pub name: &'static str,
    pub services: &'static str,
    pub agent: &'static str,
    /// Index into [`WITNESSES`] of the site's own witness.
    pub witness: usize,
    pub mailstore_port: u16,
    pub proxy_port: u16,
}

pub const SITES: [SiteSpec; 2] = [
    SiteSpec {
        name: "dc-a",
        services: "svc-a",
        agent: "agent-a",
        witness: 0,
        mailstore_port: 17101,
        proxy_port: 17102,
    },
    SiteSpec {
        name: "dc-b",
        services: "svc-b",
        agent: "agent-b",
        witness: 1,
        mailstore_port: 17201,
        proxy_port: 17202,
    },
];

/// Every failure domain and the hosts in it (for partitions).
pub const DOMAINS: [(&str, &[&str]); 3] = [
    ("dc-a", &["w1", "svc-a", "agent-a", "consul-a"]),
    ("dc-b", &["w2", "svc-b", "agent-b", "consul-b"]),
    ("dc-c", &["w3", "consul-c"]),
];

/// Lock a mutex shared with host software; a panic in a host already
/// fails the seed, so a poisoned lock's data is still worth reading.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Simulated time now, as the running host sees it (exact within a tick).
pub fn sim_now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

/// The cluster policy of one seed: the local example's timers (DESIGN.md
/// §7 defaults) with the anti-flap and failback settings the seed picked.
pub fn policy(min_failover_interval: &str, failback: &str, consul_mode: &str) -> Policy {
    let mut text = format!(
        r#"
[lease]
renew_interval = "400ms"
lease_ttl = "3s"
max_drift = "1%"
margin = "1s"

[probe]
interval = "500ms"
timeout = "400ms"
fail_after = 3
recover_after = 2

[consul]
mode = "{consul_mode}"
server_sites = ["dc-a", "dc-b", "dc-c"]

[failover]
observation_ttl = "6s"
min_failover_interval = "{min_failover_interval}"
failback = "{failback}"
failback_after = "10s"
"#
    );
    for (i, site) in SITES.iter().enumerate() {
        text.push_str(&format!(
            r#"
[[site]]
name = "{name}"
active = {active}
down_rule = "all"

[[site.target]]
name = "mailstore"
role = "mailstore"
kind = "tcp"
address = "{svc}:{m}"
consul_service = "{mailstore_service}"
consul_node = "{node}"

[[site.target]]
name = "proxy"
role = "proxy"
kind = "tcp"
address = "{svc}:{p}"
consul_service = "{proxy_service}"
consul_node = "{node}"
"#,
            mailstore_service = consul::MAILSTORE_SERVICE,
            proxy_service = consul::PROXY_SERVICE,
            node = consul::node_name(i),
            name = site.name,
            active = i == 0,
            svc = site.services,
            m = site.mailstore_port,
            p = site.proxy_port,
        ));
    }
    Policy::parse(&text, Path::new("sim-cluster.toml")).expect("the simulation's policy is valid")
}

/// Witness `index`'s node config: default Raft timers, every peer by host name.
pub fn node_config(index: usize) -> NodeConfig {
    let me = &WITNESSES[index];
    let tls = crate::pki::peer_files(me.id);
    let mut text = format!(
        r#"
[node]
id = {id}
name = "{host}"
site = "{site}"
cluster = "{cluster}"
listen = "0.0.0.0:{GRPC_PORT}"
advertise = "{host}:{GRPC_PORT}"
http_listen = "0.0.0.0:7401"
data_dir = "/nonexistent/witness-sim/{host}"

[tls]
ca = "{ca}"
cert = "{cert}"
key = "{key}"
"#,
        id = me.id,
        cluster = crate::pki::CLUSTER,
        ca = tls.ca.display(),
        cert = tls.cert.display(),
        key = tls.key.display(),
        host = me.host,
        site = me.site,
    );
    for w in &WITNESSES {
        text.push_str(&format!(
            "\n[[peer]]\nid = {}\nname = \"{}\"\naddr = \"{}:{GRPC_PORT}\"\nsite = \"{}\"\n",
            w.id, w.host, w.host, w.site
        ));
    }
    NodeConfig::parse(&text, Path::new("sim-node.toml"))
        .expect("the simulation's node config is valid")
}

/// What outlives a witness's process: its "data dir".
#[derive(Clone)]
pub struct Disk {
    pub store: MemoryStore,
    pub incarnation: Incarnation,
    /// The cluster id the node was created with or learnt on first contact.
    pub cluster_id: Arc<Mutex<Option<String>>>,
}

/// The running witnesses as the checker sees them: the live node of each
/// (`None` while crashed) and how many times each was started.
#[derive(Default)]
pub struct Live {
    pub nodes: [Option<Arc<Node>>; 3],
    pub starts: [u64; 3],
}

/// Register witness `index` as a turmoil host. `bootstrap` is set on the
/// one node that plays `witness init`.
pub fn add_witness(
    sim: &mut turmoil::Sim<'_>,
    index: usize,
    disk: Disk,
    bootstrap: Option<Bootstrap>,
    live: Arc<Mutex<Live>>,
) {
    let config = node_config(index);
    let spec = &WITNESSES[index];
    sim.host(spec.host, move || {
        let (config, disk, bootstrap, live) = (
            config.clone(),
            disk.clone(),
            bootstrap.clone(),
            live.clone(),
        );
        async move {
            let listener = turmoil::net::TcpListener::bind(("0.0.0.0", GRPC_PORT)).await?;
            let trust = crate::pki::peer(config.node.id);
            let persisted = disk.cluster_id.clone();
            let identity = Identity::new(
                config.node.id,
                disk.incarnation.clone(),
                config.node.cluster.clone(),
                lock(&disk.cluster_id).clone(),
                Box::new(move |id: &str| {
                    *lock(&persisted) = Some(id.to_string());
                    Ok(())
                }),
            );
            let sm = disk.store.state_machine()?;
            let node = Node::start_with(
                config,
                identity,
                disk.store.log_store(),
                sm,
                None,
                bootstrap,
                witness::raft::network::PeerTransport {
                    dialer: Some(net::dialer(trust.clone())),
                    trust: Some(trust.clone()),
                },
            )
            .await
            .map_err(|e| format!("starting witness {}: {e:#}", index + 1))?;
            let consul = ConsulAgentConfig::local(format!(
                "{}:{}",
                consul::CONSUL_HOSTS[index],
                consul::CONSUL_PORT
            ));
            node.start_probing(Some(consul), Arc::new(net::SimTransport));
            {
                let mut live = lock(&live);
                live.nodes[index] = Some(node.clone());
                live.starts[index] += 1;
            }
            // The stop signal of a real server; a simulated witness stops
            // only by crashing, so it is never sent.
            let (_stop, stop_rx) = tokio::sync::watch::channel(false);
            witness::server::grpc_router(node, stop_rx)
                .map_err(|e| e.to_string())?
                .serve_with_incoming(net::incoming(listener, trust))
                .await?;
            Ok(())
        }
    });
}

/// The initial membership and policy, as `witness init` records them on
/// the bootstrapping node.
pub fn bootstrap(policy: &Policy, disks: &[Disk]) -> Bootstrap {
    let members = WITNESSES
        .iter()
        .zip(disks)
        .enumerate()
        .map(|(i, (w, disk))| {
            let node = WitnessNode {
                name: w.host.to_string(),
                addr: format!("{}:{GRPC_PORT}", w.host),
                site: w.site.to_string(),
                // Only the bootstrapping node knows its own incarnation; the
                // others are pinned on first contact.
                incarnation: (i == 0).then(|| disk.incarnation.clone()),
            };
            (w.id, node)
        })
        .collect();
    Bootstrap {
        members,
        policy: policy.clone(),
        recovered: None,
    }
}

/// Register a site's services: two listeners that accept and close. The
/// site "dies" when the host is crashed, and comes back when bounced.
pub fn add_services(sim: &mut turmoil::Sim<'_>, site: &'static SiteSpec) {
    sim.host(site.services, move || async move {
        let mailstore = turmoil::net::TcpListener::bind(("0.0.0.0", site.mailstore_port)).await?;
        let proxy = turmoil::net::TcpListener::bind(("0.0.0.0", site.proxy_port)).await?;
        tokio::spawn(async move { while proxy.accept().await.is_ok() {} });
        while mailstore.accept().await.is_ok() {}
        Ok(())
    });
}

/// A lease one client held: valid on the simulated clock over
/// `[sent, sent + ttl)`, where `sent` is when it sent the renewal whose
/// nonce the grant echoed.
#[derive(Clone, Debug)]
pub struct Grant {
    pub site: &'static str,
    pub epoch: u64,
    pub sent: Duration,
    pub until: Duration,
    pub received: Duration,
    /// The witness the client asked (it may have forwarded to the leader).
    pub via: &'static str,
}

/// How long a client waits for one renewal before trying another witness.
const RENEW_TIMEOUT: Duration = Duration::from_millis(1000);
/// The policy's `renew_interval`.
const RENEW_INTERVAL: Duration = witness::config::defaults::RENEW_INTERVAL;
/// How long the client's local service check may take.
const SERVICE_CHECK_TIMEOUT: Duration = Duration::from_millis(200);

/// Register a site's lease client: every `renew_interval` it checks its
/// site's mailstore, then asks its own site's witness for a lease, falling
/// over to the other witnesses in turn (any witness will do: followers
/// forward to the leader). Every grant is appended to `grants`.
pub fn add_agent(
    sim: &mut turmoil::Sim<'_>,
    site: &'static SiteSpec,
    grants: Arc<Mutex<Vec<Grant>>>,
) {
    sim.host(site.agent, move || run_agent(site, grants.clone()));
}

async fn run_agent(site: &'static SiteSpec, grants: Arc<Mutex<Vec<Grant>>>) -> turmoil::Result {
    let trust = crate::pki::agent(site.name, site.agent);
    let mut clients = Vec::new();
    for w in &WITNESSES {
        let channel = net::channel(
            &format!("{}:{GRPC_PORT}", w.host),
            trust.clone(),
            witness::trust::conn::Dial::AnyWitness,
        )?;
        clients.push(WitnessClient::new(channel));
    }
    let mut epoch = 0;
    let mut nonce = 0u64;
    let mut prefer = site.witness;
    let mut ticker = tokio::time::interval(RENEW_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let service = turmoil::net::TcpStream::connect((site.services, site.mailstore_port));
        let healthy = matches!(
            tokio::time::timeout(SERVICE_CHECK_TIMEOUT, service).await,
            Ok(Ok(_))
        );
        for attempt in 0..WITNESSES.len() {
            let w = (prefer + attempt) % WITNESSES.len();
            nonce += 1;
            let request = RenewLeaseRequest {
                agent: site.agent.to_string(),
                site: site.name.to_string(),
                role: "mailstore".into(),
                epoch,
                nonce,
                state: if healthy { "serving" } else { "degraded" }.into(),
                service_healthy: healthy,
                fence_timeout_ms: 500,
                watchdog_timeout_ms: 0,
                ..RenewLeaseRequest::default()
            };
            let sent = sim_now();
            let mut client = clients[w].clone();
            let reply = tokio::time::timeout(RENEW_TIMEOUT, client.renew_lease(request)).await;
            let Ok(Ok(reply)) = reply else { continue };
            let reply = reply.into_inner();
            if reply.nonce != nonce {
                continue;
            }
            // Only the leader answers, after a read-index round: its
            // epoch is the current one.
            epoch = reply.epoch;
            prefer = w;
            if reply.granted {
                lock(&grants).push(Grant {
                    site: site.name,
                    epoch: reply.epoch,
                    sent,
                    until: sent + Duration::from_millis(reply.lease_ttl_ms),
                    received: sim_now(),
                    via: WITNESSES[w].host,
                });
            }
            break;
        }
    }
}

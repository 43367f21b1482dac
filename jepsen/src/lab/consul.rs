//! Consul in the lab: one fake Consul agent per witness site
//! ([`witness::sim::consul`]), each witness reading its own site's agent,
//! all three serving one catalog.
//!
//! ```text
//! agent on   site   address           read by
//! n1         dc-a   <n1's ip>:8500    witness 1
//! n2         dc-b   <n2's ip>:8500    witness 2
//! n3         dc-c   <n3's ip>:8500    witness 3
//! ```
//!
//! Each agent listens inside its witness host's namespace, so the
//! harness's iptables faults apply to it as to any host there; since every
//! witness reads only its local agent, a partition never hides an agent
//! from its reader, only from everyone else. The three agents share one
//! state ([`FakeConsul::also_on`]), as a real cluster's servers give every
//! agent the same catalog. The catalog names each data site's mailstore and
//! proxy as Carbonio does (`agent-mbox1-example-com`, …; the lab policy's
//! `consul_node`s), plus one Consul server per witness host
//! (`server-n1`…), so the server quorum survives the loss of any one site;
//! the leader is `server-n3`, in the third site.
//!
//! # What the catalog says
//!
//! The deployment reports the truth and this module turns it into what
//! Consul's servers would show, at once (real gossip needs a few seconds
//! to mark a node failed; the lab has no such lag, so a site death is never
//! vetoed by a Consul that has not noticed it yet):
//!
//! - a site's machines died ([`ConsulLab::machines_died`]): their nodes
//!   failed (`serfHealth` critical, member status 4), their service checks
//!   frozen at `passing`, exactly what a dead Consul client looks like;
//! - a site is cut off from everyone else ([`ConsulLab::cut_off`]): its
//!   machines *and* its Consul server failed in the quorum's view;
//! - anything else (a bridge with the third site in the middle, loss on the
//!   witnesses' links, isolated, killed or paused witnesses): unchanged.
//!   Gossip finds indirect paths through the third site.
//!
//! A [`Lie`] overrides the truth about one site until [`ConsulLab::truth`].
//!
//! **Simplification**: an agent cut off from the server quorum would
//! answer `500 No cluster leader` after the hold time (its witness would
//! get no Consul evidence at all); here it keeps serving the quorum's view.
//! Only the cut-off witness reads it, and a witness alone can neither make
//! nor block a decision.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddrV4, TcpListener};

use witness::sim::consul::{AgentKind, CheckStatus, FakeConsul, FakeState};

use super::netcluster::{MAILSTORE_PORT, NetCluster, PROXY_PORT, WITNESSES};

/// Port of every Consul agent's HTTP API (Consul's default).
pub const CONSUL_PORT: u16 = 8500;
/// Consul's server RPC port, shown as the leader's address.
const SERVER_PORT: u16 = 8300;
/// The witnesses' `consul.timeout`: an answer later than this is no
/// evidence (the product's default).
const READ_TIMEOUT: &str = "1s";

/// Each data site's machines as Consul knows them: (site, host, Consul
/// node, service, port).
pub const MACHINES: [(&str, &str, &str, &str, u16); 4] = [
    (
        "dc-a",
        "a-mbox",
        "agent-mbox1-example-com",
        "carbonio-mailbox",
        MAILSTORE_PORT,
    ),
    (
        "dc-a",
        "a-proxy",
        "agent-proxy1-example-com",
        "carbonio-proxy",
        PROXY_PORT,
    ),
    (
        "dc-b",
        "b-mbox",
        "agent-mbox2-example-com",
        "carbonio-mailbox",
        MAILSTORE_PORT,
    ),
    (
        "dc-b",
        "b-proxy",
        "agent-proxy2-example-com",
        "carbonio-proxy",
        PROXY_PORT,
    ),
];

/// What Consul claims about one site's machines, against the truth.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lie {
    /// Their service checks critical while the services answer.
    ServicesCritical(String),
    /// Their nodes failed (`serfHealth` critical) while they run.
    NodesFailed(String),
    /// Their nodes alive and every check passing, whatever they are.
    Passing(String),
}

impl Lie {
    pub fn site(&self) -> &str {
        match self {
            Lie::ServicesCritical(s) | Lie::NodesFailed(s) | Lie::Passing(s) => s,
        }
    }
}

/// The truth the deployment reported, and the lie in force.
#[derive(Clone, Debug, Default)]
struct World {
    dead: BTreeSet<String>,
    cut: BTreeSet<String>,
    lie: Option<Lie>,
}

impl World {
    /// Whether Consul should show `node` of `site` alive, and its service
    /// checks' status. `machine`: a mail machine (not a Consul server).
    fn shown(&self, site: &str, machine: bool) -> (bool, CheckStatus) {
        let lost = self.cut.contains(site) || (machine && self.dead.contains(site));
        let alive = !lost;
        // A dead node's checks stay frozen at their last value: passing.
        let truth = (alive, CheckStatus::Passing);
        match &self.lie {
            Some(lie) if machine && lie.site() == site => match lie {
                Lie::ServicesCritical(_) => (alive, CheckStatus::Critical),
                Lie::NodesFailed(_) => (false, CheckStatus::Passing),
                Lie::Passing(_) => (true, CheckStatus::Passing),
            },
            _ => truth,
        }
    }
}

/// The three agents and the runtime that serves them. Fields drop in
/// order: the agents, then their runtime.
pub struct ConsulLab {
    agents: BTreeMap<u64, (SocketAddrV4, FakeConsul)>,
    world: World,
    /// Each node's site and whether it is a mail machine.
    nodes: Vec<(String, String, bool)>,
    runtime: tokio::runtime::Runtime,
}

impl ConsulLab {
    /// Start one agent on each witness host of `cluster`, serving a
    /// catalog in which everything is alive and passing.
    pub fn start(cluster: &NetCluster) -> crate::Result<ConsulLab> {
        // One worker: the agents answer a few reads per probe round.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fake-consul")
            .enable_all()
            .build()
            .map_err(|e| crate::Error::io("a runtime for the Consul agents", e))?;
        let mut state = FakeState::carbonio_acl();
        let mut nodes = Vec::new();
        for (id, host, site) in WITNESSES {
            let ip = cluster.net.addr(&NetCluster::host(id))?;
            let name = format!("server-{host}");
            state.add_node(&name, &ip.to_string(), AgentKind::Server);
            let _ = state.add_service(&name, "consul", SERVER_PORT, None);
            nodes.push((name, site.to_string(), false));
            if id == 3 {
                state.set_leader(Some(format!("{ip}:{SERVER_PORT}")));
            }
        }
        for (site, host, node, service, port) in MACHINES {
            let ip = cluster.net.addr(&crate::Host::from(host))?;
            state.add_node(node, &ip.to_string(), AgentKind::Client);
            // `add_service` fails only for an unknown node: added just above.
            let _ = state.add_service(node, service, port, Some("tcp"));
            nodes.push((node.to_string(), site.to_string(), true));
        }
        let mut agents: BTreeMap<u64, (SocketAddrV4, FakeConsul)> = BTreeMap::new();
        for (id, _, _) in WITNESSES {
            let host = NetCluster::host(id);
            let addr = SocketAddrV4::new(cluster.net.addr(&host)?, CONSUL_PORT);
            let ns = cluster.net.netns(&host)?.to_string();
            let listener = crate::netns::run_in(&ns, move || TcpListener::bind(addr))?
                .map_err(|e| crate::Error::io(format!("bind Consul's {addr} in {ns}"), e))?;
            listener
                .set_nonblocking(true)
                .map_err(|e| crate::Error::io("a nonblocking listener", e))?;
            let _inside = runtime.enter();
            let listener = tokio::net::TcpListener::from_std(listener)
                .map_err(|e| crate::Error::io("a Tokio listener for Consul", e))?;
            let agent = match agents.values().next() {
                None => FakeConsul::start(listener, state.clone()),
                Some((_, first)) => first.also_on(listener),
            }
            .map_err(|e| crate::Error::io(format!("start the Consul agent on {addr}"), e))?;
            agents.insert(id, (addr, agent));
        }
        Ok(ConsulLab {
            agents,
            world: World::default(),
            nodes,
            runtime,
        })
    }

    /// Witness `id`'s local agent.
    pub fn address(&self, id: u64) -> Option<SocketAddrV4> {
        self.agents.get(&id).map(|(a, _)| *a)
    }

    /// The `[consul]` table of witness `id`'s node file: its local agent.
    pub fn node_toml(&self, id: u64) -> String {
        match self.address(id) {
            Some(addr) => {
                format!("\n[consul]\naddress = \"{addr}\"\ntimeout = \"{READ_TIMEOUT}\"\n")
            }
            None => String::new(),
        }
    }

    /// `site`'s mail machines died: their nodes fail.
    pub fn machines_died(&mut self, site: &str) {
        self.world.dead.insert(site.to_string());
        self.show();
    }

    /// `site`'s mail machines are back.
    pub fn machines_back(&mut self, site: &str) {
        self.world.dead.remove(site);
        self.show();
    }

    /// `site` is cut off from every other host: its nodes, Consul server
    /// included, fail in the quorum's view.
    pub fn cut_off(&mut self, site: &str) {
        self.world.cut.insert(site.to_string());
        self.show();
    }

    /// `site` is connected again.
    pub fn reconnected(&mut self, site: &str) {
        self.world.cut.remove(site);
        self.show();
    }

    /// Tell `lie` until [`truth`](Self::truth).
    pub fn lie(&mut self, lie: Lie) {
        self.world.lie = Some(lie);
        self.show();
    }

    /// Stop lying.
    pub fn truth(&mut self) {
        self.world.lie = None;
        self.show();
    }

    /// No lie, no site cut off (deaths are undone by
    /// [`machines_back`](Self::machines_back) when the machines return).
    pub fn heal(&mut self) {
        self.world.lie = None;
        self.world.cut.clear();
        self.show();
    }

    /// `site`'s mail machines: (Consul node, service).
    pub fn machines(site: &str) -> Vec<(&'static str, &'static str)> {
        MACHINES
            .iter()
            .filter(|m| m.0 == site)
            .map(|m| (m.2, m.3))
            .collect()
    }

    /// The catalog as the agents serve it now.
    pub fn state(&self) -> Option<FakeState> {
        self.agents.values().next().map(|(_, a)| a.state())
    }

    /// Make the catalog show [`World`]: one update, so no reader sees half
    /// of a change.
    fn show(&self) {
        let Some((_, agent)) = self.agents.values().next() else {
            return;
        };
        let want: Vec<(String, bool, CheckStatus)> = self
            .nodes
            .iter()
            .map(|(node, site, machine)| {
                let (alive, checks) = self.world.shown(site, *machine);
                (node.clone(), alive, checks)
            })
            .collect();
        let _inside = self.runtime.enter();
        agent.update(|s| {
            for (node, alive, checks) in &want {
                let Some(n) = s.node(node) else { continue };
                let was_alive = n.serf.status != CheckStatus::Critical;
                let stale: Vec<String> = n
                    .services
                    .iter()
                    .filter(|svc| svc.checks.iter().any(|c| c.status != *checks))
                    .map(|svc| svc.name.clone())
                    .collect();
                // Only a live node's agent rewrites its checks: revive it
                // for the rewrite when needed (all within this one update).
                if !stale.is_empty() && !was_alive {
                    let _ = s.revive_node(node);
                }
                for service in &stale {
                    let output = match checks {
                        CheckStatus::Passing => "TCP connect: Success".to_string(),
                        _ => "dial tcp: connect: connection refused".to_string(),
                    };
                    let _ = s.set_service_check(node, service, *checks, &output);
                }
                let is_alive = s
                    .node(node)
                    .is_some_and(|n| n.serf.status != CheckStatus::Critical);
                if *alive && !is_alive {
                    let _ = s.revive_node(node);
                } else if !*alive && is_alive {
                    let _ = s.fail_node(node);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The truth and each lie, as Consul shows a site's machines and its
    /// server.
    #[test]
    fn world_shows_truth_and_lies() {
        use CheckStatus::{Critical, Passing};
        let mut w = World::default();
        assert_eq!(w.shown("dc-a", true), (true, Passing));
        w.dead.insert("dc-a".into());
        assert_eq!(w.shown("dc-a", true), (false, Passing), "frozen checks");
        assert_eq!(w.shown("dc-a", false), (true, Passing), "the server lives");
        w.lie = Some(Lie::Passing("dc-a".into()));
        assert_eq!(w.shown("dc-a", true), (true, Passing));
        w.dead.clear();
        w.lie = Some(Lie::ServicesCritical("dc-a".into()));
        assert_eq!(w.shown("dc-a", true), (true, Critical));
        assert_eq!(
            w.shown("dc-b", true),
            (true, Passing),
            "only dc-a is lied about"
        );
        w.lie = Some(Lie::NodesFailed("dc-a".into()));
        assert_eq!(w.shown("dc-a", true), (false, Passing));
        w.lie = None;
        w.cut.insert("dc-b".into());
        assert_eq!(w.shown("dc-b", false), (false, Passing), "its server too");
        assert_eq!(w.shown("dc-b", true), (false, Passing));
    }
}

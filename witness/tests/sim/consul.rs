//! Consul in the simulation: one fake Consul agent per failure domain
//! (`consul-a`, `consul-b`, `consul-c`, the `witness::sim` fake served over
//! turmoil), each read by its domain's witness as its local agent.
//!
//! The three agents belong to one Consul cluster, so they serve one view:
//! [`ConsulModel`] computes it every step from what is really running and
//! from the Consul faults in force, and each agent copies it into its fake's
//! state. Consul's honest view lags reality by a seeded delay (its check
//! interval and Serf's failure detection), in both directions:
//!
//! - a site whose services are down has its service checks `critical`; a
//!   blacked-out site's node is failed (`serfHealth` critical, service
//!   checks frozen at their last value, as Consul shows a dead node);
//! - [`ConsulFault::Lies`]: the site is reported fully passing whatever
//!   happens to it (a frozen catalog, a stale server);
//! - [`ConsulFault::FalseAlarm`]: the site's checks are critical while it
//!   runs;
//! - [`ConsulFault::Leaderless`]: the servers lost their quorum
//!   (`/v1/status/leader` answers `""`, reads fail after the hold time);
//! - an agent's host can crash ([`Fault::ConsulAgentDown`](crate::faults::Fault)),
//!   which its witness sees as Consul unreachable.
//!
//! Whatever Consul says, the invariants checked are the same: Consul may
//! veto or delay a failover (`corroborate`, `require`), never cause a
//! second active site.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use witness::sim::FakeConsul;
use witness::sim::consul::{AgentKind, CheckStatus, FakeState};

use crate::cluster::{SITES, lock};
use crate::net::AxumListener;

/// The port every fake Consul agent serves its HTTP API on.
pub const CONSUL_PORT: u16 = 8500;

/// The Consul agent host of each failure domain (indexes of
/// [`DOMAINS`](crate::cluster::DOMAINS)).
pub const CONSUL_HOSTS: [&str; 3] = ["consul-a", "consul-b", "consul-c"];

/// The Consul services of a site's mailstore and proxy targets.
pub const MAILSTORE_SERVICE: &str = "carbonio-mailbox";
pub const PROXY_SERVICE: &str = "carbonio-proxy";

/// How often an agent copies the cluster's view into its state.
const SYNC_EVERY: Duration = Duration::from_millis(50);

/// The Consul node of site `i`'s services host.
pub fn node_name(site: usize) -> String {
    format!("agent-{}", SITES[site].services)
}

/// What Consul says about one site.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SiteView {
    /// The site's service checks pass.
    pub services_passing: bool,
    /// The site's node is alive in Serf.
    pub node_alive: bool,
}

impl SiteView {
    const HEALTHY: SiteView = SiteView {
        services_passing: true,
        node_alive: true,
    };
}

/// The view every agent serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConsulView {
    pub sites: [SiteView; 2],
    pub leader: bool,
}

impl Default for ConsulView {
    fn default() -> Self {
        ConsulView {
            sites: [SiteView::HEALTHY; 2],
            leader: true,
        }
    }
}

/// A way Consul misreports the world (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConsulFault {
    Lies(usize),
    FalseAlarm(usize),
    Leaderless,
}

/// Consul's view as the seed drives it: reality, seen `lag` late, with the
/// faults in force on top.
pub struct ConsulModel {
    lag: Duration,
    /// Per site: what Consul currently shows honestly, and the latest
    /// reality with the instant it started.
    honest: [SiteView; 2],
    pending: [(SiteView, Duration); 2],
}

impl ConsulModel {
    pub fn new(lag: Duration) -> ConsulModel {
        ConsulModel {
            lag,
            honest: [SiteView::HEALTHY; 2],
            pending: [(SiteView::HEALTHY, Duration::ZERO); 2],
        }
    }

    /// The view at `now`, given what really runs (`reality`, per site) and
    /// the Consul faults in force.
    pub fn view(
        &mut self,
        now: Duration,
        reality: [SiteView; 2],
        faults: &[ConsulFault],
    ) -> ConsulView {
        let mut view = ConsulView::default();
        for (i, real) in reality.into_iter().enumerate() {
            if self.pending[i].0 != real {
                self.pending[i] = (real, now);
            }
            if now.saturating_sub(self.pending[i].1) >= self.lag {
                self.honest[i] = self.pending[i].0;
            }
            view.sites[i] = self.honest[i];
        }
        for fault in faults {
            match *fault {
                ConsulFault::Lies(s) => view.sites[s] = SiteView::HEALTHY,
                ConsulFault::FalseAlarm(s) => {
                    view.sites[s] = SiteView {
                        services_passing: false,
                        node_alive: true,
                    }
                }
                ConsulFault::Leaderless => view.leader = false,
            }
        }
        view
    }
}

/// The catalog at the start: three servers (one per domain), each site's
/// services node with its mailstore and proxy services, all passing.
fn initial_state() -> FakeState {
    let mut state = FakeState::default();
    for host in CONSUL_HOSTS {
        let name = format!("server-{host}");
        state.add_node(&name, host, AgentKind::Server);
        state
            .add_service(&name, "consul", 8300, None)
            .expect("the node was just added");
    }
    state.set_leader(Some(format!("{}:8300", CONSUL_HOSTS[2])));
    for (i, site) in SITES.iter().enumerate() {
        let node = node_name(i);
        state.add_node(&node, site.services, AgentKind::Client);
        for (service, port) in [
            (MAILSTORE_SERVICE, site.mailstore_port),
            (PROXY_SERVICE, site.proxy_port),
        ] {
            state
                .add_service(&node, service, port, Some("tcp"))
                .expect("the node was just added");
        }
    }
    state
}

/// Make `state` show `view`, changing only what differs (so the tables'
/// indexes move only on a change, as in Consul).
fn apply(view: &ConsulView, state: &mut FakeState) {
    let leader = view.leader.then(|| format!("{}:8300", CONSUL_HOSTS[2]));
    if state.leader != leader {
        state.set_leader(leader);
    }
    for (i, site) in view.sites.iter().enumerate() {
        let node = node_name(i);
        let Some(current) = state.node(&node) else {
            continue;
        };
        let alive = current.serf.status == CheckStatus::Passing;
        if !site.node_alive {
            // A dead node's service checks stay frozen at their last value.
            if alive {
                let _ = state.fail_node(&node);
            }
            continue;
        }
        if !alive {
            let _ = state.revive_node(&node);
        }
        let want = if site.services_passing {
            CheckStatus::Passing
        } else {
            CheckStatus::Critical
        };
        for service in [MAILSTORE_SERVICE, PROXY_SERVICE] {
            let now = state
                .node(&node)
                .and_then(|n| n.services.iter().find(|s| s.name == service))
                .and_then(|s| s.checks.first())
                .map(|c| c.status);
            if now != Some(want) {
                let output = if site.services_passing {
                    "TCP connect: Success"
                } else {
                    "dial tcp: connect: connection refused"
                };
                let _ = state.set_service_check(&node, service, want, output);
            }
        }
    }
}

/// Register domain `domain`'s Consul agent: it serves the cluster's view,
/// copying it from `view` every [`SYNC_EVERY`].
pub fn add_agent(sim: &mut turmoil::Sim<'_>, domain: usize, view: Arc<Mutex<ConsulView>>) {
    sim.host(CONSUL_HOSTS[domain], move || {
        let view = view.clone();
        async move {
            let listener = turmoil::net::TcpListener::bind(("0.0.0.0", CONSUL_PORT)).await?;
            let addr = listener.local_addr()?;
            let mut state = initial_state();
            let mut shown = *lock(&view);
            apply(&shown, &mut state);
            let fake = FakeConsul::start_on(AxumListener(listener), addr, state);
            loop {
                tokio::time::sleep(SYNC_EVERY).await;
                let now = *lock(&view);
                if now != shown {
                    fake.update(|s| apply(&now, s));
                    shown = now;
                }
            }
        }
    });
}

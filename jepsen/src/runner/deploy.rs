//! The deployment under test, assembled from [`crate::lab`]: the
//! [`NetCluster`] (three witnesses, each data site's mailstore and proxy
//! health services, the operator's host) plus an upstream router, one BIRD
//! 2 speaker per proxy ([`BgpLab`]), a real `witness agent` on each
//! mailstore and proxy host with a (fake) watchdog, and each such host's
//! fenced service ([`FencedService`]).
//!
//! ```text
//! host      site   runs
//! n1 n2 n3  a b c  witness run (gRPC :7400)
//! a-mbox    dc-a   health :8080 (probed by the witnesses), agent mbox-a, fenced service :9143
//! a-proxy   dc-a   health :443, agent proxy-a (BIRD 2, announces the VIP), fenced service :9143
//! b-mbox    dc-b   the same for dc-b
//! b-proxy   dc-b
//! ops       none   the clients, witnessctl, the outside probes
//! router    none   BIRD 2, AS 65000, peers with both proxies
//! ```
//!
//! Active Replica is taken as caught up: each mailstore's fake Carbonio
//! lists one account whose replica on it matches the other site's
//! mailstore, so a failback to the home site passes its pre-flight and
//! promotes.
//!
//! Consul: `mode = "corroborate"` (DESIGN.md §3.2: Consul may veto a
//! "down", never make one). Each witness reads a fake Consul agent on its
//! own host, `:8500` ([`ConsulLab`]); the three share one catalog that
//! shows each data site's mailstore and proxy, failed while the site is
//! dead ([`Deployment::kill_site`]) or cut off (the `partition-site`
//! nemesis), and whatever the `consul-lies` nemesis makes it say.
//!
//! Clocks: a process named in the deployment's rates (a witness by its
//! host, an agent by its name) runs on a [`SkewedClock`] at that rate from
//! its first start, restarts included: one clock per machine, which the
//! `clock` nemesis moves while the process runs or while it is down
//! ([`Deployment::restart_witness_ahead`]). An agent's logged times are
//! mapped back to the kernel's clock ([`Deployment::real_boot_ms`]) before
//! they enter the history.
//!
//! Fields drop in order: agents (killed and reaped), fenced services,
//! watchdogs, BIRDs, the agents' files, the Consul agents, the cluster
//! (witnesses, faults healed, namespaces removed), then the clocks' control
//! files.

use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::sync::Arc;

use super::service::{FencedService, SERVE_PORT};
use crate::lab::agents::{AgentLab, AgentProc, AgentSpec, FakeWatchdog};
use crate::lab::bgp::{BgpLab, ROUTER};
use crate::lab::consul::ConsulLab;
use crate::lab::netcluster::{NetCluster, Setup};
use crate::{Host, SkewedClock};

/// The agents: (name, host, site, role, witness ids in the order tried).
pub const AGENTS: [(&str, &str, &str, &str, [u64; 3]); 4] = [
    ("mbox-a", "a-mbox", "dc-a", "mailstore", [1, 3, 2]),
    ("proxy-a", "a-proxy", "dc-a", "proxy", [1, 3, 2]),
    ("mbox-b", "b-mbox", "dc-b", "mailstore", [2, 3, 1]),
    ("proxy-b", "b-proxy", "dc-b", "proxy", [2, 3, 1]),
];

/// Policy TOML the run adds to the lab's: anti-flap short enough that
/// several site deaths in one run each fail over, directives' claims
/// bounded as in the agent tests.
pub const EXTRA_POLICY: &str = "[failover]\nmin_failover_interval = \"5s\"\n\
     [directives]\nclaim_ttl = \"3s\"\nmax_attempts = 5\n";

/// `getAccountStatus` output (the fake Carbonio prints it) for one account
/// of `source` whose replica on `destination` has caught up: the lab has no
/// mail to replicate, so Active Replica is always complete and a failback's
/// pre-flight passes (DESIGN.md §3.7).
fn replicas_caught_up(source: &str, destination: &str) -> String {
    serde_json::json!({"response": {"values": [{
        "accountId": "id-1", "accountName": "alice@example.test",
        "accountMailHost": source, "paused": false, "mailboxId": 7,
        "sequence": 1200, "itemId": 345,
        "replicas": [{
            "accountId": "id-1", "itemId": 345, "sequence": 1200,
            "mailboxId": 9, "destination": destination, "available": true,
            "priority": 10, "canConnectToKafka": true
        }]
    }]}})
    .to_string()
}

/// One agent: what to start it with, and the process when it runs.
pub struct AgentSlot {
    pub spec: AgentSpec,
    pub host: String,
    pub order: [u64; 3],
    pub proc: Option<AgentProc>,
}

pub struct Deployment {
    pub agents: BTreeMap<String, AgentSlot>,
    /// By host.
    pub services: BTreeMap<String, FencedService>,
    pub watchdogs: BTreeMap<String, Arc<FakeWatchdog>>,
    /// Agents whose machine died with its site, not yet in the history:
    /// (agent, site, role, epoch of its last state, BOOTTIME ms of the
    /// death). A killed agent cannot log its end; the harness saw it.
    pub deaths: Vec<(String, String, String, u64, f64)>,
    /// Proxy hosts whose BIRD died with their site.
    dead_birds: std::collections::BTreeSet<String>,
    /// Skewed clocks by process (witness host or agent name).
    pub clocks: BTreeMap<String, SkewedClock>,
    pub bgp: BgpLab,
    pub lab: AgentLab,
    pub consul: ConsulLab,
    pub cluster: NetCluster,
    /// The clocks' control files, removed after every process is gone.
    _clock_dir: tempfile::TempDir,
}

impl Deployment {
    /// Build everything under run tag `tag` on `10.77.<octet>.0/24` and
    /// wait until dc-a is active at epoch 1, both BGP sessions are up, and
    /// dc-a's proxy announces. `None` when namespaces or BIRD are missing
    /// (after a loud SKIPPED).
    ///
    /// `rates`: processes (witness host or agent name) to run on a skewed
    /// clock, and its rate.
    pub fn start(tag: &str, octet: u8, rates: &BTreeMap<String, f64>) -> Option<Deployment> {
        if crate::lab::bgp::skipped() {
            return None;
        }
        let clock_dir = tempfile::Builder::new()
            .prefix("jepsen-clocks-")
            .tempdir()
            .expect("a temp dir for the clock control files");
        let mut clocks = BTreeMap::new();
        for (name, rate) in rates {
            match SkewedClock::new(&clock_dir.path().join(format!("{name}.clock")), *rate) {
                Ok(c) => {
                    clocks.insert(name.clone(), c);
                }
                Err(e) => panic!("the clock of {name}: {e}"),
            }
        }
        let env = crate::lab::netcluster::WITNESSES
            .iter()
            .filter_map(|(id, host, _)| clocks.get(*host).map(|c: &SkewedClock| (*id, c.env())))
            .collect();
        let mut consul = None;
        let cluster = NetCluster::start_with_setup(tag, octet, &[(ROUTER, None)], |c| {
            // The Consul agents listen before any witness reads them.
            let agents = ConsulLab::start(c).expect("start the Consul agents");
            let node_toml = (1..=3).map(|id| (id, agents.node_toml(id))).collect();
            consul = Some(agents);
            let mut p = c.policy_toml("corroborate", EXTRA_POLICY, true).replace(
                "[consul]\nmode = \"corroborate\"\n",
                "[consul]\nmode = \"corroborate\"\n\
                     server_sites = [\"dc-a\", \"dc-b\", \"dc-c\"]\n",
            );
            // Each site names its mail host, so an Activate carries the
            // promotion of the lost site's accounts (the mailstore agents'
            // `[carbonio] mail_host` is `mbox.<site>.test`).
            for site in ["dc-a", "dc-b"] {
                for active in ["true", "false"] {
                    p = p.replace(
                        &format!("name = \"{site}\"\nactive = {active}\n"),
                        &format!(
                            "name = \"{site}\"\nactive = {active}\n\
                             mail_hosts = [\"mbox.{site}.test\"]\n"
                        ),
                    );
                }
            }
            Setup {
                policy: p,
                node_toml,
                env,
            }
        })?;
        let consul = consul.expect("started with the cluster");
        let bgp = BgpLab::start_on(&cluster.net);
        let lab = AgentLab::new(&crate::lab::fake_carbonio_bin().display().to_string())
            .in_cluster(crate::lab::netcluster::CLUSTER);
        let mut d = Deployment {
            agents: BTreeMap::new(),
            services: BTreeMap::new(),
            watchdogs: BTreeMap::new(),
            deaths: Vec::new(),
            dead_birds: Default::default(),
            clocks,
            bgp,
            lab,
            consul,
            cluster,
            _clock_dir: clock_dir,
        };
        for (name, host, site, role, order) in AGENTS {
            let watchdog = Arc::new(FakeWatchdog::new(&d.lab.path(&format!("{name}.watchdog"))));
            let flag = d.lab.path(&format!("{name}.serving"));
            let h = Host::from(host);
            let addr = SocketAddrV4::new(d.cluster.net.addr(&h).expect("a site host"), SERVE_PORT);
            let ns = d.cluster.net.netns(&h).expect("a site host").to_string();
            let svc = FencedService::start(&ns, addr, site, flag.clone(), watchdog.clone())
                .expect("start the fenced service");
            let mut spec = AgentSpec::new(name, site, role)
                .watchdog(watchdog.path())
                .serve_flag(&flag)
                .env(
                    "FAKE_CARBONIO_LOG",
                    &d.lab
                        .path(&format!("{name}.carbonio.jsonl"))
                        .display()
                        .to_string(),
                );
            if role == "proxy" {
                spec = spec.bgp(&d.bgp.bgp_toml(host));
            }
            if let Some(c) = d.clocks.get(name) {
                for (k, v) in c.env() {
                    spec = spec.env(k, &v);
                }
            }
            if role == "mailstore" {
                let other = if site == "dc-a" { "dc-b" } else { "dc-a" };
                let status = d.lab.path(&format!("{name}.account-status.json"));
                std::fs::write(
                    &status,
                    replicas_caught_up(&format!("mbox.{other}.test"), &format!("mbox.{site}.test")),
                )
                .expect("write the fake Carbonio's account status");
                spec = spec.env("FAKE_CARBONIO_STATUS_FILE", &status.display().to_string());
            }
            d.watchdogs.insert(name.to_string(), watchdog);
            d.services.insert(host.to_string(), svc);
            d.agents.insert(
                name.to_string(),
                AgentSlot {
                    spec,
                    host: host.to_string(),
                    order,
                    proc: None,
                },
            );
        }
        for (name, ..) in AGENTS {
            d.start_agent(name);
        }
        Some(d)
    }

    /// Start agent `name` (a no-op while it runs).
    pub fn start_agent(&mut self, name: &str) {
        let endpoints = match self.agents.get(name) {
            Some(slot) if slot.proc.is_none() => self.cluster.endpoints(&slot.order),
            _ => return,
        };
        let net = &self.cluster.net;
        let lab = &self.lab;
        if let Some(slot) = self.agents.get_mut(name) {
            let host = Host::from(slot.host.as_str());
            let p = lab.start_via(&slot.spec, &endpoints, |argv| {
                net.exec(&host, argv).expect("a host of this cluster")
            });
            slot.proc = Some(p);
        }
    }

    /// SIGKILL agent `name` and reap it.
    pub fn kill_agent(&mut self, name: &str) {
        if let Some(slot) = self.agents.get_mut(name)
            && let Some(mut p) = slot.proc.take()
        {
            p.kill();
        }
    }

    pub fn pause_agent(&mut self, name: &str) {
        if let Some(p) = self.agents.get(name).and_then(|s| s.proc.as_ref()) {
            p.pause();
        }
    }

    pub fn resume_agent(&mut self, name: &str) {
        if let Some(p) = self.agents.get(name).and_then(|s| s.proc.as_ref()) {
            p.resume();
        }
    }

    /// The site's machines die: health listeners, fenced services and
    /// agents all stop, and Consul's servers see their nodes fail.
    pub fn kill_site(&mut self, site: &str) {
        self.consul.machines_died(site);
        self.cluster.kill_site(site);
        for (name, host, s, role, _) in AGENTS {
            if s == site {
                let epoch = self
                    .agents
                    .get(name)
                    .and_then(|slot| slot.proc.as_ref())
                    .and_then(|p| p.states().last().and_then(|v| v["epoch"].as_u64()));
                self.kill_agent(name);
                if role == "proxy" {
                    self.bgp.kill(host);
                    self.dead_birds.insert(host.to_string());
                }
                if let Some(epoch) = epoch {
                    self.deaths.push((
                        name.to_string(),
                        site.to_string(),
                        role.to_string(),
                        epoch,
                        super::recorder::now_ms(),
                    ));
                }
                if let Some(svc) = self.services.get_mut(host) {
                    svc.stop();
                }
            }
        }
    }

    /// The site's machines come back: services (and their Consul nodes),
    /// then agents.
    pub fn revive_site(&mut self, site: &str) {
        self.cluster.revive_site(site);
        self.consul.machines_back(site);
        for (name, host, s, role, _) in AGENTS {
            if s == site {
                if let Some(svc) = self.services.get_mut(host)
                    && let Err(e) = svc.restart()
                {
                    eprintln!("jepsen: restarting the fenced service on {host}: {e}");
                }
                if role == "proxy" && self.dead_birds.remove(host) {
                    self.bgp.restart(host);
                }
                self.start_agent(name);
            }
        }
    }

    /// SIGKILL witness `id` (on host `host`, which has a skewed clock) and
    /// start it again with its clock `by` further ahead: a machine that
    /// rebooted with its clock set forward.
    pub fn restart_witness_ahead(&mut self, id: u64, host: &str, by: std::time::Duration) {
        let Some(clock) = self.clocks.get_mut(host) else {
            return;
        };
        self.cluster.crash(id);
        clock.jump(by);
        clock.step_wall(by.as_millis() as i64);
        self.cluster.restart(id);
    }

    /// The kernel's `CLOCK_BOOTTIME` (ms) of a time process `name` logged
    /// on its own clock: the same value unless its clock is skewed.
    pub fn real_boot_ms(&self, name: &str, logged_ms: f64) -> f64 {
        self.clocks
            .get(name)
            .map_or(logged_ms, |c| c.real_boot_ms(logged_ms))
    }

    /// Every agent's files: (name, site, role, serving log, carbonio log,
    /// stderr log).
    pub fn agent_files(&self) -> Vec<(String, String, String, PathBuf, PathBuf, PathBuf)> {
        AGENTS
            .iter()
            .map(|(name, _, site, role, _)| {
                (
                    name.to_string(),
                    site.to_string(),
                    role.to_string(),
                    self.lab.state_log(name),
                    self.lab.path(&format!("{name}.carbonio.jsonl")),
                    self.lab.path(&format!("{name}.log")),
                )
            })
            .collect()
    }
}

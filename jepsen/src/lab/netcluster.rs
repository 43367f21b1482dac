//! Witnesses on hosts made of network namespaces, so tests can cut links.
//!
//! A [`NetCluster`] is the real `witness run` on three hosts, one per site,
//! each site's services as TCP listeners on hosts of their own, and an
//! operator host outside every site from which `witnessctl` runs. It is
//! built with the jepsen library: partitions are iptables rules inside the
//! hosts' own namespaces ([`crate::Nemesis`]), so the machine's own network
//! is never touched.
//!
//! ```text
//! host      site   address (the test's /24)   runs
//! n1        dc-a   .1                          witness 1   gRPC :7400, HTTP :7401
//! n2        dc-b   .2                          witness 2
//! n3        dc-c   .3                          witness 3
//! a-mbox    dc-a   .4                          mailstore :8080 (and the site's lease client)
//! a-proxy   dc-a   .5                          proxy :443
//! b-mbox    dc-b   .6                          mailstore :8080
//! b-proxy   dc-b   .7                          proxy :443
//! ops       none   .8                          witnessctl
//! ```
//!
//! Everything is removed on drop, also while a failing test unwinds: the
//! witnesses are killed and reaped, the services closed, the faults healed,
//! then the namespaces deleted (taking every interface and rule with them).
//! Each test passes its own run tag and /24, so tests run concurrently.
//!
//! Needs root and `ip netns`; [`NetCluster::start`] prints a loud
//! `SKIPPED: <reason>` and returns `None` otherwise (CI runs as root).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use crate::{Host, Nemesis, Net, Proc, ProcSpec, Topology};
use serde_json::Value;

use super::lease::{LeaseClient, LeaseSpec};
use super::pki::Pki;
use super::{SETTLE, SiteSpec, TargetSpec, site_policy, text, wait_until, witness_bin};

/// gRPC port of every witness (each host has its own port space).
pub const GRPC_PORT: u16 = 7400;
/// HTTP port of every witness.
pub const HTTP_PORT: u16 = 7401;
/// Port of a site's mailstore service.
pub const MAILSTORE_PORT: u16 = 8080;
/// Port of a site's proxy service.
pub const PROXY_PORT: u16 = 443;

/// Witness ids and their hosts and sites.
pub const WITNESSES: [(u64, &str, &str); 3] =
    [(1, "n1", "dc-a"), (2, "n2", "dc-b"), (3, "n3", "dc-c")];

/// The service hosts: (host, site, target name, port).
const SERVICES: [(&str, &str, &str, u16); 4] = [
    ("a-mbox", "dc-a", "mailstore", MAILSTORE_PORT),
    ("a-proxy", "dc-a", "proxy", PROXY_PORT),
    ("b-mbox", "dc-b", "mailstore", MAILSTORE_PORT),
    ("b-proxy", "dc-b", "proxy", PROXY_PORT),
];

/// The operator's host, outside every site.
pub const OPS: &str = "ops";

/// Per-endpoint bound of a `witnessctl` call from a test: a partitioned
/// endpoint costs this much before the next one is tried.
const CTL_TIMEOUT: &str = "1s";

/// Why this machine cannot run namespace scenarios, printed loudly; `true`
/// means skip.
pub fn skipped() -> bool {
    match crate::netns::unavailable() {
        Some(reason) => {
            println!("SKIPPED: {reason}");
            eprintln!("\n*** SKIPPED: {reason} ***\n");
            true
        }
        None => {
            // Leftovers of earlier test processes that crashed (their owner
            // is dead), once per process; live runs are never touched.
            static ORPHANS: std::sync::Once = std::sync::Once::new();
            ORPHANS.call_once(|| {
                crate::cleanup_orphans().expect("remove orphaned namespace runs");
            });
            false
        }
    }
}

/// A TCP service on a host: accepts and drops connections until stopped,
/// then the port refuses (a probe fails at once, as for a dead daemon).
pub struct HostService {
    netns: String,
    addr: SocketAddrV4,
    running: Option<(
        std::sync::Arc<std::sync::atomic::AtomicBool>,
        std::thread::JoinHandle<()>,
    )>,
}

impl HostService {
    fn start(netns: &str, addr: SocketAddrV4) -> HostService {
        let mut s = HostService {
            netns: netns.to_string(),
            addr,
            running: None,
        };
        s.restart();
        s
    }

    /// Close the listener: connections are refused from now on.
    pub fn stop(&mut self) {
        if let Some((flag, thread)) = self.running.take() {
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = thread.join();
        }
    }

    /// Listen again (a no-op while running).
    pub fn restart(&mut self) {
        if self.running.is_some() {
            return;
        }
        let addr = self.addr;
        let listener = crate::netns::run_in(&self.netns, move || TcpListener::bind(addr))
            .expect("enter the service's namespace")
            .unwrap_or_else(|e| panic!("bind {addr} in {}: {e}", self.netns));
        self.running = Some(super::accept_until_stopped(listener));
    }

    pub fn addr(&self) -> SocketAddrV4 {
        self.addr
    }
}

impl Drop for HostService {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a deployment adds to a [`NetCluster`] once its hosts exist and
/// before its witnesses start.
pub struct Setup {
    /// The cluster policy's text.
    pub policy: String,
    /// TOML appended to each witness's node file, by witness id (e.g. its
    /// `[consul]` table).
    pub node_toml: BTreeMap<u64, String>,
    /// Extra environment of witness `id`'s process, kept across its
    /// restarts (e.g. a [`SkewedClock`](crate::SkewedClock)'s).
    pub env: BTreeMap<u64, Vec<(&'static str, String)>>,
}

/// Three witnesses, four site services and an operator host in namespaces.
/// Fields drop in order: processes, services, faults, namespaces, files.
pub struct NetCluster {
    witnesses: BTreeMap<u64, Proc>,
    services: BTreeMap<String, HostService>,
    /// Faults; healed on drop.
    pub nemesis: Nemesis,
    /// The hosts; torn down on drop.
    pub net: Net,
    pub dir: tempfile::TempDir,
    /// The committed policy's text.
    pub policy: String,
    /// Extra environment of each witness process (e.g. a skewed clock's).
    env: BTreeMap<u64, Vec<(&'static str, String)>>,
}

impl NetCluster {
    /// Build the hosts under run tag `tag` (up to 3 of [a-z0-9], unique per
    /// test) on `10.77.<octet>.0/24`, start the services and the three
    /// witnesses, and wait until `dc-a` is active at epoch 1. `extra` is
    /// policy TOML inserted before the sites. `None` (after a loud SKIPPED)
    /// when namespaces are unavailable.
    pub fn start(tag: &str, octet: u8, extra: &str) -> Option<NetCluster> {
        NetCluster::start_with_hosts(tag, octet, extra, &[])
    }

    /// As [`start`](Self::start), with `more` hosts (name, site) added
    /// after the operator's host, e.g. an upstream router for
    /// [`BgpLab::start_on`](super::bgp::BgpLab::start_on).
    pub fn start_with_hosts(
        tag: &str,
        octet: u8,
        extra: &str,
        more: &[(&str, Option<&str>)],
    ) -> Option<NetCluster> {
        NetCluster::start_with_policy(tag, octet, more, |c| c.policy_toml("ignore", extra, false))
    }

    /// As [`start_with_hosts`](Self::start_with_hosts), with the cluster
    /// policy written by `policy` (e.g. [`policy_toml`](Self::policy_toml)
    /// edited), once the hosts and services exist.
    pub fn start_with_policy(
        tag: &str,
        octet: u8,
        more: &[(&str, Option<&str>)],
        policy: impl FnOnce(&NetCluster) -> String,
    ) -> Option<NetCluster> {
        NetCluster::start_with_setup(tag, octet, more, |c| Setup {
            policy: policy(c),
            node_toml: BTreeMap::new(),
            env: BTreeMap::new(),
        })
    }

    /// As [`start_with_policy`](Self::start_with_policy), with `setup`
    /// also free to start what the witnesses will need in the hosts (e.g.
    /// Consul agents) and to add to each witness's node file.
    pub fn start_with_setup(
        tag: &str,
        octet: u8,
        more: &[(&str, Option<&str>)],
        setup: impl FnOnce(&NetCluster) -> Setup,
    ) -> Option<NetCluster> {
        if skipped() {
            return None;
        }
        let prefix = crate::run_prefix(tag).expect("valid run tag");
        let mut topology = Topology::new(prefix).subnet(Ipv4Addr::new(10, 77, octet, 0));
        for (_, host, site) in WITNESSES {
            topology = topology.host(host, Some(site));
        }
        for (host, site, _, _) in SERVICES {
            topology = topology.host(host, Some(site));
        }
        topology = topology.host(OPS, None);
        for (host, site) in more {
            topology = topology.host(*host, *site);
        }
        let net = topology.create().expect("create namespaces");
        let mut c = NetCluster {
            witnesses: BTreeMap::new(),
            services: BTreeMap::new(),
            nemesis: Nemesis::new(&net),
            net,
            dir: tempfile::tempdir().expect("temp dir"),
            policy: String::new(),
            env: BTreeMap::new(),
        };
        for (host, _, _, port) in SERVICES {
            let h = Host::from(host);
            let addr = SocketAddrV4::new(c.net.addr(&h).expect("service host"), port);
            let ns = c.net.netns(&h).expect("service namespace").to_string();
            c.services
                .insert(host.to_string(), HostService::start(&ns, addr));
        }
        let setup = setup(&c);
        c.policy = setup.policy;
        c.env = setup.env;
        c.write_configs(&setup.node_toml);
        c.init_and_start();
        c.wait_verdict("dc-a", 1, SETTLE);
        Some(c)
    }

    /// The policy for these hosts: each data site's mailstore and proxy;
    /// with `consul`, each target names the Carbonio Consul service and
    /// node that corroborate it (`witness::sim`'s Carbonio layout).
    pub fn policy_toml(&self, consul_mode: &str, extra: &str, consul: bool) -> String {
        let sites: Vec<SiteSpec> = [("dc-a", true, "a", "1"), ("dc-b", false, "b", "2")]
            .into_iter()
            .map(|(site, active, p, n)| SiteSpec {
                name: site.to_string(),
                active,
                targets: vec![
                    TargetSpec {
                        name: "mailstore".into(),
                        role: "mailstore".into(),
                        address: self.service(&format!("{p}-mbox")).addr().to_string(),
                        consul: consul.then(|| {
                            (
                                "carbonio-mailbox".into(),
                                format!("agent-mbox{n}-example-com"),
                            )
                        }),
                    },
                    TargetSpec {
                        name: "proxy".into(),
                        role: "proxy".into(),
                        address: self.service(&format!("{p}-proxy")).addr().to_string(),
                        consul: consul.then(|| {
                            (
                                "carbonio-proxy".into(),
                                format!("agent-proxy{n}-example-com"),
                            )
                        }),
                    },
                ],
            })
            .collect();
        site_policy(consul_mode, extra, &sites)
    }

    fn write_configs(&self, node_toml: &BTreeMap<u64, String>) {
        let mut peers = String::new();
        for (id, host, site) in WITNESSES {
            peers.push_str(&format!(
                "[[peer]]\nid = {id}\nname = \"{host}\"\naddr = \"{}\"\nsite = \"{site}\"\n\n",
                self.endpoint(id)
            ));
        }
        for (id, host, site) in WITNESSES {
            let ip = self.ip(id);
            let toml = format!(
                "[node]\nid = {id}\nname = \"{host}\"\nsite = \"{site}\"\ncluster = \"{CLUSTER}\"\n\
                 listen = \"{ip}:{GRPC_PORT}\"\nhttp_listen = \"{ip}:{HTTP_PORT}\"\n\
                 data_dir = \"{}\"\n\n{peers}{}\n{}",
                self.dir.path().join(format!("data-{id}")).display(),
                node_toml.get(&id).map_or("", String::as_str),
                Pki::table(&self.pki().peer(id)),
            );
            fs::write(self.config_path(id), toml).expect("write node config");
        }
        fs::write(self.policy_path(), &self.policy).expect("write policy");
    }

    fn init_and_start(&mut self) {
        // `witness init` only writes node 1's store: no network needed.
        let out = Command::new(witness_bin())
            .arg("init")
            .arg("--config")
            .arg(self.config_path(1))
            .arg("--policy")
            .arg(self.policy_path())
            .output()
            .expect("run witness init");
        assert!(out.status.success(), "witness init: {}", text(&out));
        for (id, host, _) in WITNESSES {
            let spec = ProcSpec::new(
                host,
                [
                    witness_bin().into_os_string(),
                    "run".into(),
                    "--config".into(),
                    self.config_path(id).into_os_string(),
                ],
            )
            .env("WITNESS_LOG", "info,openraft=warn")
            .log(self.log_path(id));
            let spec = self
                .env
                .get(&id)
                .into_iter()
                .flatten()
                .fold(spec, |spec, (k, v)| spec.env(*k, v.clone()));
            let p = Proc::spawn(&self.net, spec).expect("start witness in its namespace");
            self.witnesses.insert(id, p);
        }
        self.wait_ready(&[1, 2, 3], SETTLE);
    }

    pub fn config_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("witness-{id}.toml"))
    }

    pub fn policy_path(&self) -> PathBuf {
        self.dir.path().join("cluster.toml")
    }

    pub fn log_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("witness-{id}.log"))
    }

    /// The host of witness `id`.
    pub fn host(id: u64) -> Host {
        let (_, host, _) = WITNESSES
            .iter()
            .find(|(i, _, _)| *i == id)
            .expect("witness id 1..=3");
        Host::from(*host)
    }

    fn ip(&self, id: u64) -> Ipv4Addr {
        self.net.addr(&Self::host(id)).expect("witness host")
    }

    /// `ip:7400` of witness `id`.
    pub fn endpoint(&self, id: u64) -> String {
        format!("{}:{GRPC_PORT}", self.ip(id))
    }

    /// The endpoints of `ids`, in that order.
    pub fn endpoints(&self, ids: &[u64]) -> Vec<String> {
        ids.iter().map(|id| self.endpoint(*id)).collect()
    }

    /// A site service by host name (`a-mbox`, `b-proxy`, …).
    pub fn service(&self, host: &str) -> &HostService {
        self.services.get(host).expect("a service host")
    }

    /// The hosts of `site` (witness and services).
    pub fn site(&self, site: &str) -> Vec<Host> {
        self.net.site(site)
    }

    /// Stop every service of `site` (`dc-a` or `dc-b`).
    pub fn kill_site(&mut self, site: &str) {
        for (host, s, _, _) in SERVICES {
            if s == site
                && let Some(svc) = self.services.get_mut(host)
            {
                svc.stop();
            }
        }
    }

    /// Start every service of `site` again.
    pub fn revive_site(&mut self, site: &str) {
        for (host, s, _, _) in SERVICES {
            if s == site
                && let Some(svc) = self.services.get_mut(host)
            {
                svc.restart();
            }
        }
    }

    /// SIGKILL witness `id` (a crash) and reap it.
    pub fn crash(&mut self, id: u64) {
        if let Some(p) = self.witnesses.get_mut(&id) {
            p.kill().expect("kill witness");
        }
    }

    /// Replace witness `id`'s extra environment variables named in `env`,
    /// from its next start on.
    pub fn set_env(&mut self, id: u64, env: Vec<(&'static str, String)>) {
        if let Some(p) = self.witnesses.get_mut(&id) {
            for (k, v) in &env {
                p.set_env(k, v);
            }
        }
        let mine = self.env.entry(id).or_default();
        for (k, v) in env {
            mine.retain(|(old, _)| *old != k);
            mine.push((k, v));
        }
    }

    /// Start witness `id` again from its data dir.
    pub fn restart(&mut self, id: u64) {
        if let Some(p) = self.witnesses.get_mut(&id) {
            p.restart().expect("restart witness");
        }
    }

    /// SIGSTOP witness `id` (a stalled VM).
    pub fn pause(&mut self, id: u64) {
        if let Some(p) = self.witnesses.get_mut(&id) {
            p.pause().expect("pause witness");
        }
    }

    /// SIGCONT witness `id`.
    pub fn resume(&mut self, id: u64) {
        if let Some(p) = self.witnesses.get_mut(&id) {
            p.resume().expect("resume witness");
        }
    }

    /// Whether witness `id` runs.
    pub fn is_running(&mut self, id: u64) -> bool {
        self.witnesses
            .get_mut(&id)
            .is_some_and(|p| p.is_running().unwrap_or(false))
    }

    /// Run `witnessctl` from `host` against `endpoints`. Bounded: at most
    /// [`CTL_TIMEOUT`] per endpoint.
    pub fn ctl_from(&self, host: &str, endpoints: &[String], args: &[&str]) -> Output {
        let mut argv: Vec<OsString> = vec![
            witnessctl_path(),
            "--endpoints".into(),
            endpoints.join(",").into(),
            "--timeout".into(),
            CTL_TIMEOUT.into(),
        ];
        argv.extend(args.iter().map(OsString::from));
        self.net
            .exec(&Host::from(host), &argv)
            .expect("a command in the host's namespace")
            .env_remove("WITNESS_ENDPOINTS")
            .env_remove("WITNESS_INSECURE")
            .envs(Pki::ctl_env(&self.pki().operator()))
            .output()
            .expect("run witnessctl")
    }

    /// The cluster's CA and certificates (cluster name [`CLUSTER`]).
    pub fn pki(&self) -> std::sync::Arc<Pki> {
        Pki::shared(CLUSTER)
    }

    /// Run `witnessctl` from the operator's host against every witness.
    pub fn ctl(&self, args: &[&str]) -> Output {
        self.ctl_from(OPS, &self.endpoints(&[1, 2, 3]), args)
    }

    /// `status --output json` from the operator's host (the leader's view
    /// when a witness can reach it).
    pub fn status(&self) -> Option<Value> {
        json(&self.ctl(&["--output", "json", "status"]))
    }

    /// `status --output json` from the operator's host through the
    /// witnesses `ids` only (e.g. the majority side of a partition).
    pub fn status_via(&self, ids: &[u64]) -> Option<Value> {
        json(&self.ctl_from(OPS, &self.endpoints(ids), &["--output", "json", "status"]))
    }

    /// Witness `id`'s own `status --local`, asked from inside its own host
    /// so that partitions do not stand in the way.
    pub fn local_status(&self, id: u64) -> Option<Value> {
        let host = Self::host(id);
        json(&self.ctl_from(
            host.as_str(),
            &[self.endpoint(id)],
            &["--output", "json", "status", "--local"],
        ))
    }

    /// `history --output json`, every record.
    pub fn history(&self) -> Vec<Value> {
        self.history_via(&[1, 2, 3])
    }

    /// `history --output json` through the witnesses `ids` only.
    pub fn history_via(&self, ids: &[u64]) -> Vec<Value> {
        let out = self.ctl_from(
            OPS,
            &self.endpoints(ids),
            &["--output", "json", "history", "--limit", "0"],
        );
        assert!(out.status.success(), "history: {}", text(&out));
        json(&out)
            .and_then(|v| v.as_array().cloned())
            .expect("history json")
    }

    /// Wait until every witness in `ids` reports ready.
    pub fn wait_ready(&self, ids: &[u64], within: Duration) {
        wait_until(within, &format!("witnesses {ids:?} to be ready"), || {
            ids.iter()
                .all(|id| self.local_status(*id).is_some_and(|s| s["ready"] == true))
                .then_some(())
        })
    }

    /// The leader every witness in `ids` names, once they agree and it says
    /// it leads.
    pub fn wait_for_leader(&self, ids: &[u64], within: Duration) -> u64 {
        wait_until(
            within,
            &format!("witnesses {ids:?} to agree on a leader"),
            || {
                let mut leader = None;
                for id in ids {
                    let l = self.local_status(*id)?["leader_id"].as_u64()?;
                    if leader.is_some_and(|x| x != l) {
                        return None;
                    }
                    leader = Some(l);
                }
                let l = leader?;
                (self.local_status(l)?["role"] == "leader").then_some(l)
            },
        )
    }

    /// Make witness `id` the leader (`witnessctl transfer-leader`), retrying
    /// a bounded number of times.
    pub fn place_leader(&self, id: u64) {
        for _ in 0..5 {
            if self.wait_for_leader(&[1, 2, 3], SETTLE) == id {
                return;
            }
            let out = self.ctl(&["transfer-leader", &id.to_string()]);
            if !out.status.success() {
                eprintln!("transfer-leader {id}: {}", text(&out));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        assert_eq!(
            self.wait_for_leader(&[1, 2, 3], SETTLE),
            id,
            "could not place the leader on witness {id}"
        );
    }

    /// Wait until the committed verdict names `site` at `epoch`.
    pub fn wait_verdict(&self, site: &str, epoch: u64, within: Duration) -> Value {
        wait_until(within, &format!("{site} active at epoch {epoch}"), || {
            let s = self.status()?;
            (s["active_site"] == site && s["epoch"] == epoch).then_some(s)
        })
    }

    /// Start a lease client inside `host`'s namespace, so partitions apply
    /// to it.
    pub fn lease_client(&self, host: &str, spec: LeaseSpec) -> LeaseClient {
        let spec = spec.in_cluster(CLUSTER);
        let ns = self
            .net
            .netns(&Host::from(host))
            .expect("a host of this cluster")
            .to_string();
        LeaseClient::start_with(spec, |body| {
            crate::netns::spawn_in(&ns, "lease-client", move |entered| {
                body(entered.map_err(|e| e.to_string()))
            })
            .map_err(std::io::Error::other)
        })
        .expect("start the lease client")
    }

    /// The last lines of every witness's log, for failure messages.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut s = String::new();
        for (id, _, _) in WITNESSES {
            let log = fs::read_to_string(self.log_path(id)).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(lines).collect();
            s.push_str(&format!("----- last lines of witness {id}'s log -----\n"));
            for l in tail.iter().rev() {
                s.push_str(l);
                s.push('\n');
            }
        }
        s
    }
}

impl Drop for NetCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tails(40));
            if let Ok(rules) = self.nemesis.rules() {
                eprintln!("faults in force: {rules:?}");
            }
        }
    }
}

/// The cluster name of every namespace lab.
pub const CLUSTER: &str = "scenario";

fn witnessctl_path() -> OsString {
    super::witnessctl_bin().into_os_string()
}

fn json(out: &Output) -> Option<Value> {
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

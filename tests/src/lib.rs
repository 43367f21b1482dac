//! Helpers shared by the end-to-end tests: build the real binaries, start
//! witnesses as child processes on loopback (free ports, a temp dir each),
//! drive `witnessctl`, and clean everything up on drop — also when a test
//! fails.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use jepsen::lab::pki::Pki;
pub use witness::trust::TlsFiles;

use serde_json::Value;

pub mod admin;
// The namespace deployment lives in the jepsen crate, shared with its
// runner; re-exported so tests name it as before.
pub use jepsen::lab::{
    SETTLE, SiteSpec, TargetSpec, accept_until_stopped, agents, bgp, bin_dir, fake_carbonio_bin,
    lease, netcluster, site_policy, text, wait_until, witness_bin, witnessctl_bin,
    worst_case_failover,
};

/// Raft timers for tests: the production defaults. Tests wait on protocol
/// bounds derived from these, never on wall-clock performance.
pub const ELECTION_TIMEOUT_MAX: Duration = witness::config::defaults::ELECTION_TIMEOUT_MAX;

/// Upper bound for a failover that must happen with the test policies'
/// timers: detection (3 × 500 ms + 400 ms), two observation commits, the
/// lease wait (3 s × 1.01/0.99 + 1 s ≈ 4.1 s) — about 9.5 s in the worst
/// case — with room for a loaded CI machine running several tests at once.
pub const FAILOVER_BOUND: Duration = Duration::from_secs(40);

/// Fail the test unless `program --version` runs: a tool the test needs
/// from the system, installed by `.ci/run` as `package`.
pub fn require_tool(program: &str, package: &str) {
    let found = Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{program} is missing: install the `{package}` package (.ci/run does)"
    );
}

/// A loopback port for a server a test will start.
///
/// Ports come from below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`), so an outbound connection made by any
/// process between this call and the server's bind cannot take the port as
/// its source port — which an ephemeral port from `bind(:0)` can suffer.
/// Each test process starts at its own offset in the range and walks it,
/// skipping ports that are in use right now.
pub fn free_port() -> u16 {
    free_ports(1)
}

/// The first of `len` consecutive ports that are all free right now, taken
/// the same way as [`free_port`]; no later call in this process hands out
/// any of them.
pub fn free_ports(len: u16) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);

    let (low, high) = non_ephemeral_range();
    let span = u32::from(high - low);
    let start = std::process::id().wrapping_mul(2_654_435_761);
    for _ in 0..span {
        let offset = start.wrapping_add(NEXT.fetch_add(u32::from(len), Ordering::Relaxed)) % span;
        let first = low + offset as u16;
        if u32::from(first) + u32::from(len) <= u32::from(high)
            && (first..first + len).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok())
        {
            return first;
        }
    }
    panic!("no {len} free consecutive loopback ports in {low}..{high}");
}

/// The ports below the ephemeral range that tests use: 20000 up to the
/// range's start (32768 by default).
fn non_ephemeral_range() -> (u16, u16) {
    let start = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<u16>().ok())
        })
        .unwrap_or(32_768);
    if start > 21_000 {
        (20_000, start)
    } else {
        (10_000, 20_000)
    }
}

/// One witness's settings in a test cluster.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub id: u64,
    pub name: String,
    pub site: String,
    pub grpc: u16,
    pub http: u16,
}

impl NodeSpec {
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.grpc)
    }
}

/// A cluster of real `witness` processes in a temp dir.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub cluster_name: String,
    pub nodes: Vec<NodeSpec>,
    /// The peers every config lists (the initial voters).
    pub peers: Vec<NodeSpec>,
    /// Extra TOML appended to every node config (e.g. a `[raft]` table).
    pub extra_toml: String,
    /// Set by [`Cluster::make_insecure`]: nodes and `witnessctl` without TLS.
    insecure: bool,
    children: Vec<Option<Child>>,
}

const SITES: [&str; 5] = ["dc-a", "dc-b", "dc-c", "dc-d", "dc-e"];

impl Cluster {
    /// Configs for `n` voters; nothing started yet.
    pub fn new(n: usize) -> Cluster {
        Cluster::with_extra(n, "")
    }

    /// Like [`Cluster::new`], with `extra_toml` appended to every node config.
    pub fn with_extra(n: usize, extra_toml: &str) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let nodes: Vec<NodeSpec> = (1..=n as u64)
            .map(|id| NodeSpec {
                id,
                name: format!("w{id}"),
                site: SITES[(id as usize - 1) % SITES.len()].to_string(),
                grpc: free_port(),
                http: free_port(),
            })
            .collect();
        let mut c = Cluster {
            dir,
            cluster_name: "e2e".to_string(),
            peers: nodes.clone(),
            extra_toml: extra_toml.to_string(),
            nodes: Vec::new(),
            insecure: false,
            children: Vec::new(),
        };
        for spec in nodes {
            c.push_node(spec);
        }
        fs::write(c.policy_path(), POLICY).expect("write policy");
        c
    }

    /// `n` voters (each node file with `extra_toml` appended), initialised
    /// on node 1 with the cluster policy `policy`, every node started and
    /// ready.
    pub fn running(n: usize, extra_toml: &str, policy: &str) -> Cluster {
        let mut c = Cluster::with_extra(n, extra_toml);
        c.set_policy(policy);
        let out = c.init(1);
        assert!(out.status.success(), "init: {}", text(&out));
        let ids: Vec<u64> = (1..=n as u64).collect();
        for id in &ids {
            c.start(*id);
        }
        c.wait_ready(&ids, SETTLE);
        c
    }

    /// Add a node spec (e.g. a fourth witness) and write its config; its
    /// `[[peer]]` list is the initial voters plus itself.
    pub fn push_node(&mut self, spec: NodeSpec) -> usize {
        let mut peers = self.peers.clone();
        if !peers.iter().any(|p| p.id == spec.id) {
            peers.push(spec.clone());
        }
        let mut toml = node_toml(&self.cluster_name, &spec, &peers, &self.data_dir(spec.id));
        toml.push_str(&Pki::table(&self.pki().peer(spec.id)));
        toml.push_str(&self.extra_toml);
        fs::write(self.config_path(spec.id), toml).expect("write node config");
        self.nodes.push(spec);
        self.children.push(None);
        self.nodes.len() - 1
    }

    /// Rewrite every node file to run without TLS (`insecure = true`):
    /// only for the benchmark that measures what TLS costs, never a test.
    pub fn make_insecure(&mut self) {
        self.insecure = true;
        for n in &self.nodes {
            let path = self.config_path(n.id);
            let text = fs::read_to_string(&path).expect("node config");
            let (head, _) = text.split_once("\n[tls]").expect("a [tls] table");
            fs::write(
                &path,
                format!("{head}\n[tls]\ninsecure = true\n{}", self.extra_toml),
            )
            .expect("write node config");
        }
    }

    /// The process id of running node `id`.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.children[self.index(id)].as_ref().map(Child::id)
    }

    /// A spec with fresh ports for a new node id.
    pub fn new_spec(&self, id: u64) -> NodeSpec {
        NodeSpec {
            id,
            name: format!("w{id}"),
            site: SITES[(id as usize - 1) % SITES.len()].to_string(),
            grpc: free_port(),
            http: free_port(),
        }
    }

    pub fn config_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("witness-{id}.toml"))
    }

    pub fn policy_path(&self) -> PathBuf {
        self.dir.path().join("cluster.toml")
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("data-{id}"))
    }

    pub fn log_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("witness-{id}.log"))
    }

    fn index(&self, id: u64) -> usize {
        self.nodes
            .iter()
            .position(|n| n.id == id)
            .expect("known node id")
    }

    pub fn spec(&self, id: u64) -> &NodeSpec {
        &self.nodes[self.index(id)]
    }

    /// `witness init` on node `id`.
    pub fn init(&self, id: u64) -> Output {
        Command::new(witness_bin())
            .arg("init")
            .arg("--config")
            .arg(self.config_path(id))
            .arg("--policy")
            .arg(self.policy_path())
            .output()
            .expect("run witness init")
    }

    /// `witness init` on node 1, then start every node.
    pub fn start_all(n: usize) -> Cluster {
        Cluster::start_all_with(n, "")
    }

    /// [`Cluster::start_all`] with extra node config TOML.
    pub fn start_all_with(n: usize, extra_toml: &str) -> Cluster {
        let mut c = Cluster::with_extra(n, extra_toml);
        let out = c.init(1);
        assert!(out.status.success(), "witness init failed: {}", text(&out));
        for id in 1..=n as u64 {
            c.start(id);
        }
        c
    }

    /// Start (or restart) node `id` as a child process.
    pub fn start(&mut self, id: u64) {
        let i = self.index(id);
        assert!(self.children[i].is_none(), "node {id} already running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))
            .expect("open node log");
        let child = Command::new(witness_bin())
            .arg("run")
            .arg("--config")
            .arg(self.config_path(id))
            .env("WITNESS_LOG", "info,openraft=error")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn witness");
        self.children[i] = Some(child);
    }

    /// SIGKILL node `id` and reap it.
    pub fn kill(&mut self, id: u64) {
        let i = self.index(id);
        if let Some(mut child) = self.children[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM node `id` and wait for it to exit; returns whether it exited
    /// successfully within `within`.
    pub fn terminate(&mut self, id: u64, within: Duration) -> bool {
        let i = self.index(id);
        let Some(mut child) = self.children[i].take() else {
            return false;
        };
        signal(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn is_running(&mut self, id: u64) -> bool {
        let i = self.index(id);
        match self.children[i].as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The node's log so far.
    pub fn log(&self, id: u64) -> String {
        fs::read_to_string(self.log_path(id)).unwrap_or_default()
    }

    /// Endpoints of all running nodes, comma-separated.
    pub fn endpoints(&self) -> String {
        self.nodes
            .iter()
            .zip(&self.children)
            .filter(|(_, c)| c.is_some())
            .map(|(n, _)| n.addr())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// This cluster's CA and certificates.
    pub fn pki(&self) -> Arc<Pki> {
        Pki::shared(&self.cluster_name)
    }

    /// Run `witnessctl` against `endpoints`, as the lab's operator.
    pub fn ctl_at(&self, endpoints: &str, args: &[&str]) -> Output {
        self.ctl_as(&self.pki().operator(), endpoints, args)
    }

    /// Run `witnessctl` against `endpoints`, presenting `files`.
    pub fn ctl_as(&self, files: &TlsFiles, endpoints: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new(witnessctl_bin());
        cmd.arg("--endpoints")
            .arg(endpoints)
            .env_remove("WITNESS_ENDPOINTS")
            .env_remove("WITNESS_INSECURE");
        if self.insecure {
            cmd.arg("--insecure");
        } else {
            cmd.envs(Pki::ctl_env(files));
        }
        cmd.args(args).output().expect("run witnessctl")
    }

    /// A GET on node `id`'s HTTP port over mutual TLS, as the lab's viewer.
    pub fn http_get(&self, id: u64, path: &str) -> Option<(u16, String)> {
        let addr = format!("127.0.0.1:{}", self.spec(id).http);
        Pki::https_get(&self.pki().viewer(), &addr, path)
    }

    /// Run `witnessctl` against every running node.
    pub fn ctl(&self, args: &[&str]) -> Output {
        self.ctl_at(&self.endpoints(), args)
    }

    /// `status --local --output json` of node `id`, if it answers.
    pub fn local_status(&self, id: u64) -> Option<Value> {
        let out = self.ctl_at(
            &self.spec(id).addr(),
            &["--timeout", "2s", "--output", "json", "status", "--local"],
        );
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// The leader all running `ids` agree on, once they do.
    pub fn wait_for_leader(&self, ids: &[u64], within: Duration) -> u64 {
        wait_until(
            within,
            &format!("nodes {ids:?} to agree on a leader"),
            || {
                let mut leader = None;
                for id in ids {
                    let s = self.local_status(*id)?;
                    let l = s["leader_id"].as_u64()?;
                    if leader.is_some_and(|x| x != l) {
                        return None;
                    }
                    leader = Some(l);
                }
                let l = leader?;
                // The agreed leader must itself say it leads.
                let s = self.local_status(l)?;
                (s["role"] == "leader").then_some(l)
            },
        )
    }

    /// Wait until every running node reports ready.
    pub fn wait_ready(&self, ids: &[u64], within: Duration) {
        wait_until(within, &format!("nodes {ids:?} to be ready"), || {
            ids.iter()
                .all(|id| self.local_status(*id).is_some_and(|s| s["ready"] == true))
                .then_some(())
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            for n in &self.nodes {
                let log = fs::read_to_string(self.log_path(n.id)).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("----- last lines of node {} log -----", n.id);
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    // Signalling our own child by pid; the pid cannot be reused while the
    // Child is unreaped.
    #[allow(unsafe_code)]
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// A GET on a witness's HTTP port on loopback, over mutual TLS as the
/// viewer of the `e2e` cluster: (status code, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    Pki::https_get(
        &Pki::shared("e2e").viewer(),
        &format!("127.0.0.1:{port}"),
        path,
    )
}

/// A plain HTTP/1.0 GET on loopback: (status code, body).
pub fn plain_http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

/// The policy the test clusters start with (defaults).
pub const POLICY: &str =
    "[lease]\nrenew_interval = \"400ms\"\nlease_ttl = \"3s\"\nmargin = \"1s\"\n";

/// A node config in the documented format.
pub fn node_toml(cluster: &str, me: &NodeSpec, peers: &[NodeSpec], data_dir: &Path) -> String {
    let mut s = format!(
        "[node]\nid = {}\nname = \"{}\"\nsite = \"{}\"\ncluster = \"{cluster}\"\n\
         listen = \"127.0.0.1:{}\"\nhttp_listen = \"127.0.0.1:{}\"\ndata_dir = \"{}\"\n\n",
        me.id,
        me.name,
        me.site,
        me.grpc,
        me.http,
        data_dir.display()
    );
    for p in peers {
        s.push_str(&format!(
            "[[peer]]\nid = {}\nname = \"{}\"\naddr = \"{}\"\nsite = \"{}\"\n\n",
            p.id,
            p.name,
            p.addr(),
            p.site
        ));
    }
    s
}

/// A fake service for a probe target: a TCP listener on a loopback port that
/// accepts and drops connections until stopped (then the port refuses).
pub struct FakeService {
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeService {
    /// Listen on a free port.
    pub fn start() -> FakeService {
        FakeService::start_on(0)
    }

    /// Listen on `port` (0: any free port).
    pub fn start_on(port: u16) -> FakeService {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind fake service");
        let port = listener.local_addr().expect("addr").port();
        let (stop, thread) = accept_until_stopped(listener);
        FakeService {
            port,
            stop,
            thread: Some(thread),
        }
    }

    /// Stop listening: connections to the port are refused from now on.
    pub fn stop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Listen again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        *self = FakeService::start_on(self.port);
    }
}

impl Drop for FakeService {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Two sites, each a mailstore and a proxy service on loopback.
pub struct Sites {
    pub a: Vec<FakeService>,
    pub b: Vec<FakeService>,
}

impl Sites {
    pub fn start() -> Sites {
        Sites {
            a: vec![FakeService::start(), FakeService::start()],
            b: vec![FakeService::start(), FakeService::start()],
        }
    }

    /// Kill every service of site `a` or `b`.
    pub fn kill(&mut self, site: char) {
        let services = if site == 'a' {
            &mut self.a
        } else {
            &mut self.b
        };
        for s in services {
            s.stop();
        }
    }

    pub fn revive(&mut self, site: char) {
        let services = if site == 'a' {
            &mut self.a
        } else {
            &mut self.b
        };
        for s in services {
            s.restart();
        }
    }

    /// A cluster policy probing these services; `extra` is inserted before
    /// the sites (e.g. a `[failover]` table).
    pub fn policy(&self, extra: &str) -> String {
        let mut s = String::from(
            "[lease]\nrenew_interval = \"400ms\"\nlease_ttl = \"3s\"\nmargin = \"1s\"\n\
             [consul]\nmode = \"ignore\"\n",
        );
        s.push_str(extra);
        for (name, active, services) in [("dc-a", true, &self.a), ("dc-b", false, &self.b)] {
            s.push_str(&format!(
                "\n[[site]]\nname = \"{name}\"\nactive = {active}\n\
                 mail_hosts = [\"mbox.{name}.test\"]\n"
            ));
            for (target, svc) in ["mailstore", "proxy"].iter().zip(services) {
                s.push_str(&format!(
                    "[[site.target]]\nname = \"{target}\"\nrole = \"{target}\"\nkind = \"tcp\"\n\
                     address = \"127.0.0.1:{}\"\n",
                    svc.port
                ));
            }
        }
        s
    }
}

impl Cluster {
    /// Replace the policy file `witness init` will load.
    pub fn set_policy(&self, toml: &str) {
        fs::write(self.policy_path(), toml).expect("write policy");
    }

    /// `status --output json` through any running node.
    pub fn status(&self) -> Option<Value> {
        let out = self.ctl(&["--timeout", "3s", "--output", "json", "status"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Wait until the committed verdict names `site` at `epoch`.
    pub fn wait_verdict(&self, site: &str, epoch: u64, within: Duration) -> Value {
        wait_until(within, &format!("{site} active at epoch {epoch}"), || {
            let s = self.status()?;
            (s["active_site"] == site && s["epoch"] == epoch).then_some(s)
        })
    }

    /// `history --output json` records.
    pub fn history(&self) -> Vec<Value> {
        let out = self.ctl(&["--output", "json", "history", "--limit", "0"]);
        assert!(out.status.success(), "history: {}", text(&out));
        serde_json::from_slice::<Value>(&out.stdout)
            .expect("history json")
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

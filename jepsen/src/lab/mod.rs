//! The deployment the end-to-end tests and the runner share: real
//! witnesses, agents and BIRD speakers on hosts made of network namespaces.
//!
//! - [`netcluster`]: three witnesses (one per site), each data site's
//!   mailstore and proxy services, an operator host; partitions through
//!   [`crate::Nemesis`];
//! - [`bgp`]: an upstream router and one BIRD 2 speaker per proxy host,
//!   configured from `deploy/bgp/`;
//! - [`agents`]: real `witness agent` processes with hooks that log, the
//!   fake Carbonio CLI, a fake watchdog;
//! - [`consul`]: a fake Consul agent on each witness host, the three
//!   serving one catalog that follows the sites' deaths and cut-offs, and
//!   lies on demand;
//! - [`lease`]: a lease client speaking the Witness service as an agent
//!   would.
//!
//! Everything here starts the *built* binaries ([`bin_dir`]): `cargo
//! build` runs once per process unless [`set_bin_dir`] names a directory.
//! Helpers panic with a message on setup failures: a lab that cannot be
//! assembled is a failed test or run, never a silent skip (only a machine
//! without namespaces or BIRD is skipped, loudly).

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub mod agents;
pub mod bgp;
pub mod consul;
pub mod lease;
pub mod netcluster;
pub mod pki;

/// Generous bound for anything that needs a few elections on a loaded CI
/// machine.
pub const SETTLE: Duration = Duration::from_secs(30);

/// Directory with the built `witness`, `witnessctl`, `fake_carbonio` and
/// the clock shim (`libjepsen_clockshim.so`),
/// building them first (once per process) so nothing runs stale binaries;
/// or the directory given to [`set_bin_dir`].
pub fn bin_dir() -> &'static Path {
    BIN_DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("executable path");
        // Tests run from target/<profile>/deps/, binaries from target/<profile>/.
        let mut profile_dir = exe.parent().expect("target/<profile>");
        if profile_dir.file_name().is_some_and(|n| n == "deps") {
            profile_dir = profile_dir.parent().expect("target/<profile>");
        }
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root");
        let mut cmd = Command::new(env!("CARGO"));
        // The fake Carbonio CLI is a binary of the end-to-end test crate
        // (which depends on this one): built, not linked, so no cycle.
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "witness",
            "-p",
            "witnessctl",
            "-p",
            "witness-e2e",
            "--bin",
            "witness",
            "--bin",
            "witnessctl",
            "--bin",
            "fake_carbonio",
            // The clock shim the clock nemesis preloads.
            "-p",
            "jepsen-clockshim",
            "--lib",
        ])
        .current_dir(workspace);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "building witness and witnessctl failed");
        profile_dir.to_path_buf()
    })
}

static BIN_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Use the binaries in `dir` instead of building them; `false` if
/// [`bin_dir`] was already decided.
pub fn set_bin_dir(dir: PathBuf) -> bool {
    BIN_DIR.set(dir).is_ok()
}

/// The fake Carbonio CLI (`witness-e2e`'s `fake_carbonio`).
pub fn fake_carbonio_bin() -> PathBuf {
    bin_dir().join("fake_carbonio")
}

pub fn witness_bin() -> PathBuf {
    bin_dir().join("witness")
}

pub fn witnessctl_bin() -> PathBuf {
    bin_dir().join("witnessctl")
}

/// Poll `f` every 100 ms until it returns `Some`, or panic after `within`.
pub fn wait_until<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// stdout and stderr of a finished command, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Accept and drop connections on `listener` on a thread of its own until
/// the returned flag is set; the listener closes when the thread ends.
pub fn accept_until_stopped(
    listener: TcpListener,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<()>,
) {
    listener.set_nonblocking(true).expect("nonblocking");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::spawn(move || {
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            match listener.accept() {
                Ok((conn, _)) => drop(conn),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    (stop, thread)
}

/// One probe target of a test policy.
#[derive(Clone, Debug)]
pub struct TargetSpec {
    pub name: String,
    pub role: String,
    /// `host:port` of a TCP target.
    pub address: String,
    /// `(consul_service, consul_node)` naming the Consul service instance
    /// that corroborates it.
    pub consul: Option<(String, String)>,
}

/// One site of a test policy.
#[derive(Clone, Debug)]
pub struct SiteSpec {
    pub name: String,
    pub active: bool,
    pub targets: Vec<TargetSpec>,
}

/// A cluster policy with the default lease and probe timers, Consul `mode`,
/// `extra` TOML (e.g. a `[failover]` table) and `sites` with TCP targets.
pub fn site_policy(consul_mode: &str, extra: &str, sites: &[SiteSpec]) -> String {
    let mut s = format!(
        "[lease]\nrenew_interval = \"400ms\"\nlease_ttl = \"3s\"\nmargin = \"1s\"\n\
         [consul]\nmode = \"{consul_mode}\"\n"
    );
    s.push_str(extra);
    for site in sites {
        s.push_str(&format!(
            "\n[[site]]\nname = \"{}\"\nactive = {}\n",
            site.name, site.active
        ));
        for t in &site.targets {
            s.push_str(&format!(
                "[[site.target]]\nname = \"{}\"\nrole = \"{}\"\nkind = \"tcp\"\naddress = \"{}\"\n",
                t.name, t.role, t.address
            ));
            if let Some((service, node)) = &t.consul {
                s.push_str(&format!(
                    "consul_service = \"{service}\"\nconsul_node = \"{node}\"\n"
                ));
            }
        }
    }
    s
}

/// The worst-case failover time `witness check-config` prints for `policy`
/// (with the default Raft timers): election + detection + lease wait +
/// commits + first directive. Scenario tests hold their "no failover"
/// windows for a multiple of it, so the windows follow the timers.
pub fn worst_case_failover(policy: &str) -> Duration {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("cluster.toml");
    fs::write(&file, policy).expect("write policy");
    let out = Command::new(witness_bin())
        .arg("check-config")
        .arg(&file)
        .output()
        .expect("run witness check-config");
    assert!(out.status.success(), "check-config: {}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("worst-case failover ≈"))
        .map(|(_, rest)| rest.split(',').next().unwrap_or(rest).trim().to_string())
        .unwrap_or_else(|| panic!("no worst-case failover line in:\n{stdout}"));
    humantime::parse_duration(&line)
        .unwrap_or_else(|e| panic!("unparsable worst-case failover {line:?}: {e}"))
}

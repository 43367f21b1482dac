//! Hosts made of Linux network namespaces, joined by one bridge.
//!
//! A [`Topology`] names the hosts of a test (witnesses, each site's mailstore
//! and proxy, the router, the Consul stand-ins) and the site each belongs
//! to. [`Topology::create`] turns it into a [`Net`]:
//!
//! ```text
//!            namespace <prefix>-sw  (the "switch")
//!            ┌──────────────────────────────────────┐
//!            │  bridge <prefix>-br                  │
//!            │   ├─ <prefix>-0 ──veth──┐            │
//!            │   ├─ <prefix>-1 ──veth──┼──┐         │
//!            └───┴─────────────────────┼──┼─────────┘
//!   namespace <prefix>-n1: eth0 10.77.0.1/24, lo   │
//!   namespace <prefix>-n2: eth0 10.77.0.2/24, lo ──┘   …
//! ```
//!
//! Every host is its own namespace with loopback up and one veth (`eth0`)
//! whose other end is a port of the bridge. The bridge lives in a dedicated
//! switch namespace, so **the machine's own namespace is never touched**: no
//! interface, no address, no route, no firewall rule of ours ever appears
//! there, and the addresses (a private /24) exist only inside our namespaces.
//!
//! Invariants:
//! - Everything created carries the run's prefix (namespaces
//!   `<prefix>-<host>` and `<prefix>-sw`; interfaces `<prefix>-br` and
//!   `<prefix>-<index>`, at most 15 characters), so teardown is "remove every
//!   namespace whose name starts with `<prefix>-`": exact, idempotent, and
//!   able to clean the leftovers of a crashed run ([`cleanup_leftovers`]).
//! - The bridge records its owner (pid and process start time) in its
//!   interface alias. A prefix owned by another live process is never torn
//!   down ([`Error::PrefixInUse`]); runs whose owner is dead are found and
//!   removed by [`cleanup_orphans`] without knowing their prefix.
//! - Creation is idempotent: it first removes leftovers of its own prefix,
//!   and removes what it built if any step fails.
//!
//! Not here: faults (see [`crate::nemesis`]) and the processes under test.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::Mutex;
use std::thread::JoinHandle;

use crate::cmd::{self, TOOL_TIMEOUT};
use crate::error::{Error, Result};
use crate::netns;

/// Every run prefix starts with this, so leftovers are recognisable as ours.
pub const FAMILY: &str = "wj";

/// Longest run prefix: `<prefix>-<index>` must fit Linux's 15-character
/// interface names with up to three digits of host index.
pub const MAX_PREFIX_LEN: usize = 10;

/// At most this many hosts, so every host gets an address in the /24 and an
/// interface index of at most three digits.
pub const MAX_HOSTS: usize = 200;

/// Namespace suffix of the switch; no host may take this name.
const SWITCH: &str = "sw";

/// Interface alias marker recording a run's owner on its bridge.
const OWNER_TAG: &str = "wj-owner";

/// The default subnet: private, and only ever configured inside our
/// namespaces, so it cannot clash with the machine's own networks.
pub const DEFAULT_SUBNET: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 0);

/// `ip netns add` mounts `/run/netns` on first use; two concurrent first
/// uses can race on that mount. Creating namespaces one at a time within the
/// process (tests create topologies concurrently) removes the race.
static NETNS_ADD: Mutex<()> = Mutex::new(());

/// A host's name, e.g. `n1`, `a-mbox`, `router`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Host(String);

impl Host {
    /// A host name. Validity is checked when a [`Topology`] is created.
    pub fn new(name: impl Into<String>) -> Self {
        Host(name.into())
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Host {
    fn from(s: &str) -> Self {
        Host(s.to_owned())
    }
}

impl From<&Host> for Host {
    fn from(h: &Host) -> Self {
        h.clone()
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One host of a topology: its name and, if it belongs to one, its site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostSpec {
    /// The host's name.
    pub name: Host,
    /// The site (failure domain) it lives in, e.g. `dc-a`; `None` for hosts
    /// outside every site, such as the upstream router.
    pub site: Option<String>,
}

/// What to build: a run prefix, a /24 and the hosts.
#[derive(Clone, Debug)]
pub struct Topology {
    prefix: String,
    subnet: Ipv4Addr,
    hosts: Vec<HostSpec>,
}

impl Topology {
    /// An empty topology with run prefix `prefix` (`wj` followed by 1 to 8
    /// lowercase letters or digits, unique among concurrent runs) on
    /// [`DEFAULT_SUBNET`].
    pub fn new(prefix: impl Into<String>) -> Self {
        Topology {
            prefix: prefix.into(),
            subnet: DEFAULT_SUBNET,
            hosts: Vec::new(),
        }
    }

    /// Use another private /24 (its last octet must be 0).
    pub fn subnet(mut self, subnet: Ipv4Addr) -> Self {
        self.subnet = subnet;
        self
    }

    /// Add a host, optionally in a site.
    pub fn host(mut self, name: impl Into<String>, site: Option<&str>) -> Self {
        self.hosts.push(HostSpec {
            name: Host::new(name),
            site: site.map(str::to_owned),
        });
        self
    }

    /// The witness test layout of issue 6: one witness per site (`n1` in
    /// `dc-a`, `n2` in `dc-b`, `n3` in `dc-c`), each data site's mailstore,
    /// proxy and Consul stand-in, and the upstream `router` outside every
    /// site.
    pub fn witness_cluster(prefix: impl Into<String>) -> Self {
        Topology::new(prefix)
            .host("n1", Some("dc-a"))
            .host("n2", Some("dc-b"))
            .host("n3", Some("dc-c"))
            .host("a-mbox", Some("dc-a"))
            .host("a-proxy", Some("dc-a"))
            .host("consul-a", Some("dc-a"))
            .host("b-mbox", Some("dc-b"))
            .host("b-proxy", Some("dc-b"))
            .host("consul-b", Some("dc-b"))
            .host("router", None)
    }

    /// The run prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The hosts, in order (host *i* gets address `.i+1`).
    pub fn hosts(&self) -> &[HostSpec] {
        &self.hosts
    }

    /// Check names, sizes and the subnet before anything is created.
    pub fn validate(&self) -> Result<()> {
        validate_prefix(&self.prefix)?;
        let o = self.subnet.octets();
        let private =
            o[0] == 10 || (o[0] == 192 && o[1] == 168) || (o[0] == 172 && (16..32).contains(&o[1]));
        if !private || o[3] != 0 {
            return Err(Error::InvalidSpec(format!(
                "subnet {} must be a private /24 (10.x.y.0, 172.16-31.x.0 or 192.168.x.0)",
                self.subnet
            )));
        }
        if self.hosts.is_empty() || self.hosts.len() > MAX_HOSTS {
            return Err(Error::InvalidSpec(format!(
                "a topology has 1 to {MAX_HOSTS} hosts, not {}",
                self.hosts.len()
            )));
        }
        let mut seen = BTreeSet::new();
        for h in &self.hosts {
            let n = h.name.as_str();
            let ok = !n.is_empty()
                && n.len() <= 32
                && n.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !ok || n == SWITCH {
                return Err(Error::InvalidSpec(format!(
                    "host name `{n}`: use 1-32 of [a-z0-9-], starting with a letter or digit, not `{SWITCH}`"
                )));
            }
            if !seen.insert(n) {
                return Err(Error::InvalidSpec(format!("host `{n}` appears twice")));
            }
        }
        Ok(())
    }

    /// Build the namespaces, bridge and links. Leftovers of an earlier run
    /// with the same prefix are removed first, unless another live process
    /// owns them ([`Error::PrefixInUse`]); a run of this same process with
    /// the same prefix is taken as abandoned (forgotten after a panic) and
    /// replaced, so give concurrent runs distinct prefixes ([`run_prefix`]).
    /// If any step fails, everything built so far is removed before the
    /// error is returned.
    pub fn create(self) -> Result<Net> {
        self.validate()?;
        if let Some(owner) = owner_of(&self.prefix)?
            && owner.is_alive()
            && owner != Owner::current()?
        {
            return Err(Error::PrefixInUse {
                prefix: self.prefix.clone(),
                pid: owner.pid,
            });
        }
        cleanup_leftovers(&self.prefix)?;
        let layout = Layout::from_topology(&self);
        match build(&layout) {
            Ok(()) => Ok(Net {
                layout,
                torn_down: Mutex::new(false),
            }),
            Err(e) => {
                if let Err(c) = cleanup_leftovers(&layout.prefix) {
                    eprintln!(
                        "jepsen: cleanup after failed create of {}: {c}",
                        layout.prefix
                    );
                }
                Err(e)
            }
        }
    }
}

/// One created host: where it lives and how to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostInfo {
    /// The host's name.
    pub name: Host,
    /// Its site, if any.
    pub site: Option<String>,
    /// The namespace it is (`<prefix>-<name>`).
    pub netns: String,
    /// Its address on the bridge's /24 (interface `eth0`).
    pub addr: Ipv4Addr,
    /// The bridge port, inside the switch namespace, that its `eth0` is
    /// paired with.
    pub port: String,
}

/// The names and addresses of a topology: plain data, cheap to clone, so a
/// nemesis can hold its own copy without borrowing the [`Net`].
#[derive(Clone, Debug)]
pub struct Layout {
    prefix: String,
    hosts: Vec<HostInfo>,
}

impl Layout {
    fn from_topology(t: &Topology) -> Self {
        let base = t.subnet.octets();
        let hosts = t
            .hosts
            .iter()
            .enumerate()
            .map(|(i, h)| HostInfo {
                name: h.name.clone(),
                site: h.site.clone(),
                netns: format!("{}-{}", t.prefix, h.name),
                // validate() caps hosts at MAX_HOSTS < 255, so i + 1 fits.
                addr: Ipv4Addr::new(base[0], base[1], base[2], (i + 1) as u8),
                port: format!("{}-{i}", t.prefix),
            })
            .collect();
        Layout {
            prefix: t.prefix.clone(),
            hosts,
        }
    }

    /// The run prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The switch namespace.
    pub fn switch_netns(&self) -> String {
        format!("{}-{SWITCH}", self.prefix)
    }

    /// The bridge's interface name (inside the switch namespace).
    pub fn bridge(&self) -> String {
        format!("{}-br", self.prefix)
    }

    /// All hosts, in topology order.
    pub fn hosts(&self) -> &[HostInfo] {
        &self.hosts
    }

    /// All host names, in topology order.
    pub fn host_names(&self) -> Vec<Host> {
        self.hosts.iter().map(|h| h.name.clone()).collect()
    }

    /// The hosts of one site, in topology order.
    pub fn site(&self, site: &str) -> Vec<Host> {
        self.hosts
            .iter()
            .filter(|h| h.site.as_deref() == Some(site))
            .map(|h| h.name.clone())
            .collect()
    }

    /// Everything about one host.
    pub fn info(&self, host: &Host) -> Result<&HostInfo> {
        self.hosts
            .iter()
            .find(|h| &h.name == host)
            .ok_or_else(|| Error::UnknownHost(host.to_string()))
    }

    /// A host's address.
    pub fn addr(&self, host: &Host) -> Result<Ipv4Addr> {
        self.info(host).map(|h| h.addr)
    }

    /// A host's namespace name.
    pub fn netns(&self, host: &Host) -> Result<&str> {
        self.info(host).map(|h| h.netns.as_str())
    }
}

/// A created topology. Torn down by [`Net::teardown`] or, failing that, on
/// drop (also while a failing test unwinds).
#[derive(Debug)]
pub struct Net {
    layout: Layout,
    torn_down: Mutex<bool>,
}

impl Net {
    /// Names and addresses.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The run prefix.
    pub fn prefix(&self) -> &str {
        &self.layout.prefix
    }

    /// All host names, in topology order.
    pub fn hosts(&self) -> Vec<Host> {
        self.layout.host_names()
    }

    /// The hosts of one site.
    pub fn site(&self, site: &str) -> Vec<Host> {
        self.layout.site(site)
    }

    /// A host's address.
    pub fn addr(&self, host: &Host) -> Result<Ipv4Addr> {
        self.layout.addr(host)
    }

    /// A host's namespace name.
    pub fn netns(&self, host: &Host) -> Result<&str> {
        self.layout.netns(host)
    }

    /// A command that runs `argv` inside `host` ([`netns::exec`]).
    pub fn exec<S: AsRef<std::ffi::OsStr>>(&self, host: &Host, argv: &[S]) -> Result<Command> {
        if argv.is_empty() {
            return Err(Error::InvalidSpec(format!(
                "empty command line for host {host}"
            )));
        }
        Ok(netns::exec(self.netns(host)?, argv))
    }

    /// Run `f` on a fresh thread inside `host`'s namespace: sockets it
    /// creates belong to that host for their whole life.
    pub fn run_in<T: Send, F: FnOnce() -> T + Send>(&self, host: &Host, f: F) -> Result<T> {
        netns::run_in(self.netns(host)?, f)
    }

    /// Spawn a long-lived thread inside `host`'s namespace (see
    /// [`netns::spawn_in`]).
    pub fn spawn_in<T, F>(&self, host: &Host, name: &str, f: F) -> Result<JoinHandle<T>>
    where
        T: Send + 'static,
        F: FnOnce(Result<()>) -> T + Send + 'static,
    {
        netns::spawn_in(self.netns(host)?, name, f)
    }

    /// Remove every namespace (and with them every interface and rule) of
    /// this run, killing any process still inside them. Idempotent.
    pub fn teardown(&self) -> Result<()> {
        // A poisoned flag only means a panic elsewhere while holding it; the
        // boolean is still meaningful.
        let mut done = self.torn_down.lock().unwrap_or_else(|p| p.into_inner());
        if !*done {
            cleanup_leftovers(&self.layout.prefix)?;
            *done = true;
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("jepsen: teardown of {} failed: {e}", self.layout.prefix);
        }
    }
}

/// A run prefix unique to this process: `wj`, then `tag` (up to 3 of
/// [a-z0-9], telling runs of one process apart), then this process's pid in
/// base 36. Two processes on one machine (two `cargo test`s, a test and a
/// runner) then never share a prefix; a crashed process's runs are found by
/// [`cleanup_orphans`] since their recorded owner is dead.
pub fn run_prefix(tag: &str) -> Result<String> {
    if tag.len() > 3
        || !tag
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    {
        return Err(Error::InvalidSpec(format!(
            "run prefix tag `{tag}`: up to 3 of [a-z0-9]"
        )));
    }
    let mut pid = std::process::id();
    let mut digits = Vec::new();
    loop {
        digits.push(char::from_digit(pid % 36, 36).unwrap_or('0'));
        pid /= 36;
        if pid == 0 {
            break;
        }
    }
    let prefix: String = format!("{FAMILY}{tag}{}", digits.iter().rev().collect::<String>());
    // Linux pids are below 2^22, at most 5 base-36 digits: 2 + 3 + 5 = 10.
    validate_prefix(&prefix)?;
    Ok(prefix)
}

fn validate_prefix(prefix: &str) -> Result<()> {
    let rest = prefix.strip_prefix(FAMILY).unwrap_or("");
    let ok = prefix.len() <= MAX_PREFIX_LEN
        && !rest.is_empty()
        && rest
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidSpec(format!(
            "run prefix `{prefix}`: `{FAMILY}` then 1-{} of [a-z0-9]",
            MAX_PREFIX_LEN - FAMILY.len()
        )))
    }
}

fn ip<I, S>(args: I) -> Result<()>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    cmd::run(cmd::command("ip", args), None, TOOL_TIMEOUT).map(|_| ())
}

fn netns_add(ns: &str) -> Result<()> {
    let _guard = NETNS_ADD.lock().unwrap_or_else(|p| p.into_inner());
    ip(["netns", "add", ns])
}

fn build(l: &Layout) -> Result<()> {
    let sw = l.switch_netns();
    let br = l.bridge();
    netns_add(&sw)?;
    ip(["-n", &sw, "link", "set", "lo", "up"])?;
    ip(["-n", &sw, "link", "add", &br, "type", "bridge"])?;
    // The owner goes on the bridge right after it exists, so a crash at any
    // later step leaves a run that cleanup_orphans() can recognise.
    ip([
        "-n",
        &sw,
        "link",
        "set",
        &br,
        "alias",
        &Owner::current()?.to_alias(),
    ])?;
    ip(["-n", &sw, "link", "set", &br, "up"])?;
    for h in &l.hosts {
        netns_add(&h.netns)?;
        ip(["-n", &h.netns, "link", "set", "lo", "up"])?;
        // Both ends are created from inside the switch namespace with the
        // peer placed straight into the host: neither end ever exists in the
        // machine's own namespace, not even for a moment.
        ip([
            "-n", &sw, "link", "add", &h.port, "type", "veth", "peer", "name", "eth0", "netns",
            &h.netns,
        ])?;
        ip(["-n", &sw, "link", "set", &h.port, "master", &br])?;
        ip(["-n", &sw, "link", "set", &h.port, "up"])?;
        ip([
            "-n",
            &h.netns,
            "addr",
            "add",
            &format!("{}/24", h.addr),
            "dev",
            "eth0",
        ])?;
        ip(["-n", &h.netns, "link", "set", "eth0", "up"])?;
    }
    Ok(())
}

/// Remove everything carrying `prefix`: first kill the processes inside its
/// namespaces (by construction only the harness starts processes there),
/// then delete the host namespaces, then the switch. Deleting a namespace
/// deletes its interfaces, and a veth pair goes when either end goes, so
/// nothing is left. Interfaces with the prefix in the machine's own
/// namespace should never exist; any that do are removed too. Returns the
/// namespaces removed. Idempotent; never touches names without the prefix.
pub fn cleanup_leftovers(prefix: &str) -> Result<Vec<String>> {
    validate_prefix(prefix)?;
    let mine = format!("{prefix}-");
    let switch = format!("{prefix}-{SWITCH}");
    let mut names: Vec<String> = netns::list()?
        .into_iter()
        .filter(|n| n.starts_with(&mine))
        .collect();
    // Hosts first, switch last: the switch's bridge (with the owner mark)
    // is the last thing to go, so an interrupted cleanup is still
    // recognisable as ours.
    names.sort_by_key(|n| *n == switch);
    for ns in &names {
        kill_processes_in(ns)?;
        let r = cmd::run_unchecked(cmd::command("ip", ["netns", "del", ns]), None, TOOL_TIMEOUT)?;
        // A concurrent cleanup may have removed it between list and delete.
        if !r.output.status.success() && netns::exists(ns) {
            return Err(r.into_error());
        }
    }
    for ifname in host_interfaces_with(&mine)? {
        let r = cmd::run_unchecked(
            cmd::command("ip", ["link", "del", &ifname]),
            None,
            TOOL_TIMEOUT,
        )?;
        if !r.output.status.success() && host_interfaces_with(&mine)?.contains(&ifname) {
            return Err(r.into_error());
        }
    }
    Ok(names)
}

/// Remove every run of our [`FAMILY`] whose owner process is dead, whatever
/// its prefix: the leftovers of crashed runs. Runs owned by a live process
/// (including concurrent tests) and namespaces without our owner mark are
/// left alone. Returns the prefixes removed.
pub fn cleanup_orphans() -> Result<Vec<String>> {
    let suffix = format!("-{SWITCH}");
    let mut removed = Vec::new();
    for ns in netns::list()? {
        let Some(prefix) = ns.strip_suffix(&suffix) else {
            continue;
        };
        if validate_prefix(prefix).is_err() {
            continue;
        }
        if let Some(owner) = owner_of(prefix)?
            && !owner.is_alive()
        {
            cleanup_leftovers(prefix)?;
            removed.push(prefix.to_owned());
        }
    }
    Ok(removed)
}

/// Names of interfaces in the machine's own namespace starting with `start`.
fn host_interfaces_with(start: &str) -> Result<Vec<String>> {
    let out = cmd::run(
        cmd::command("ip", ["-o", "link", "show"]),
        None,
        TOOL_TIMEOUT,
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    // Lines look like "5: name@peer: <FLAGS> …".
    Ok(text
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .filter(|n| n.starts_with(start))
        .collect())
}

fn kill_processes_in(ns: &str) -> Result<()> {
    let r = cmd::run_unchecked(
        cmd::command("ip", ["netns", "pids", ns]),
        None,
        TOOL_TIMEOUT,
    )?;
    if !r.output.status.success() {
        // Gone already, or not a namespace any more: nothing runs in it.
        return Ok(());
    }
    let me = std::process::id();
    for pid in String::from_utf8_lossy(&r.output.stdout).split_whitespace() {
        let Ok(pid) = pid.parse::<i32>() else {
            continue;
        };
        // `ip netns pids` looks at each process's main thread, which in our
        // own process never changes namespace; the check guards against
        // ever signalling ourselves regardless.
        if pid <= 1 || pid as u32 == me {
            continue;
        }
        match nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        ) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => return Err(Error::sys(format!("SIGKILL {pid} in {ns}"), e)),
        }
    }
    Ok(())
}

/// Who created a run: a pid plus that process's start time, because pids
/// are reused and a pid alone could make a dead run look alive (or worse,
/// a live stranger look like our owner).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Owner {
    pid: u32,
    start: u64,
}

impl Owner {
    fn current() -> Result<Owner> {
        let pid = std::process::id();
        let start = start_time(pid).ok_or_else(|| {
            Error::io(
                format!("reading /proc/{pid}/stat"),
                std::io::Error::other("unparsable"),
            )
        })?;
        Ok(Owner { pid, start })
    }

    fn is_alive(&self) -> bool {
        start_time(self.pid) == Some(self.start)
    }

    fn to_alias(self) -> String {
        format!("{OWNER_TAG} pid={} start={}", self.pid, self.start)
    }

    fn from_alias(alias: &str) -> Option<Owner> {
        let mut words = alias.split_whitespace();
        if words.next()? != OWNER_TAG {
            return None;
        }
        let pid = words.next()?.strip_prefix("pid=")?.parse().ok()?;
        let start = words.next()?.strip_prefix("start=")?.parse().ok()?;
        Some(Owner { pid, start })
    }
}

/// Field 22 of `/proc/<pid>/stat`: the process's start time in clock ticks
/// since boot. The command name (field 2) may contain spaces and parens, so
/// fields are counted after the last `)`.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    // After ")" come fields 3, 4, …; field 22 is the 20th of them.
    after.split_whitespace().nth(19)?.parse().ok()
}

/// The owner recorded on a run's bridge; `None` if the run, its bridge or
/// the mark does not exist.
fn owner_of(prefix: &str) -> Result<Option<Owner>> {
    let sw = format!("{prefix}-{SWITCH}");
    if !netns::exists(&sw) {
        return Ok(None);
    }
    let br = format!("{prefix}-br");
    let r = cmd::run_unchecked(
        cmd::command("ip", ["-j", "-n", &sw, "link", "show", "dev", &br]),
        None,
        TOOL_TIMEOUT,
    )?;
    if !r.output.status.success() {
        return Ok(None);
    }
    let v: serde_json::Value = serde_json::from_slice(&r.output.stdout).unwrap_or_default();
    Ok(v.get(0)
        .and_then(|l| l.get("ifalias"))
        .and_then(|a| a.as_str())
        .and_then(Owner::from_alias))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Prefixes must be ours (`wj…`) and short enough for interface names;
    /// an empty or foreign prefix could otherwise match other people's
    /// namespaces in cleanup.
    #[test]
    fn prefix_must_be_wj_and_short() {
        for good in ["wj1", "wjabcdefgh", "wjt0"] {
            assert!(validate_prefix(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "wj",
            "w",
            "xx12",
            "wj-1",
            "wjABC",
            "wjabcdefghi",
            "wj1/2",
        ] {
            assert!(validate_prefix(bad).is_err(), "{bad}");
        }
    }

    /// Interface names derived from the longest prefix and the largest host
    /// index still fit Linux's 15 characters.
    #[test]
    fn interface_names_fit_fifteen_characters() {
        let mut t = Topology::new("wjabcdefgh");
        for i in 0..MAX_HOSTS {
            t = t.host(format!("h{i}"), None);
        }
        t.validate().expect("valid");
        let l = Layout::from_topology(&t);
        assert!(l.bridge().len() <= 15);
        assert!(l.hosts().iter().all(|h| h.port.len() <= 15));
        assert_eq!(
            l.hosts()[MAX_HOSTS - 1].addr,
            Ipv4Addr::new(10, 77, 0, MAX_HOSTS as u8)
        );
    }

    /// Table of malformed topologies that validate() rejects before any
    /// command runs.
    #[test]
    fn malformed_topologies_are_rejected() {
        let cases = [
            Topology::new("wj1"),
            Topology::new("wj1").host("sw", None),
            Topology::new("wj1").host("n1", None).host("n1", None),
            Topology::new("wj1").host("N1", None),
            Topology::new("wj1").host("-n", None),
            Topology::new("wj1")
                .host("n1", None)
                .subnet(Ipv4Addr::new(8, 8, 8, 0)),
            Topology::new("wj1")
                .host("n1", None)
                .subnet(Ipv4Addr::new(10, 0, 0, 1)),
        ];
        for t in cases {
            assert!(matches!(t.validate(), Err(Error::InvalidSpec(_))), "{t:?}");
        }
        Topology::witness_cluster("wj1")
            .validate()
            .expect("the witness layout is valid");
    }

    /// The owner mark round-trips, and a foreign alias is not an owner.
    #[test]
    fn owner_mark_round_trips() {
        let o = Owner { pid: 42, start: 7 };
        assert_eq!(Owner::from_alias(&o.to_alias()), Some(o));
        assert_eq!(Owner::from_alias("uplink to rack 3"), None);
        let me = Owner::current().expect("own stat");
        assert!(me.is_alive());
        assert!(
            !Owner {
                start: me.start + 1,
                ..me
            }
            .is_alive(),
            "a reused pid is not the owner"
        );
    }

    /// Sites group hosts; the router belongs to none.
    #[test]
    fn sites_select_their_hosts() {
        let l = Layout::from_topology(&Topology::witness_cluster("wj1"));
        let a: Vec<String> = l.site("dc-a").iter().map(|h| h.to_string()).collect();
        assert_eq!(a, ["n1", "a-mbox", "a-proxy", "consul-a"]);
        assert_eq!(l.info(&"router".into()).expect("router").site, None);
        assert!(matches!(l.addr(&"nope".into()), Err(Error::UnknownHost(_))));
    }
}

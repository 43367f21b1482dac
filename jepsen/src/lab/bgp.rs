//! Real BIRD 2 speakers on hosts made of network namespaces, configured
//! from the shipped templates in `deploy/bgp/`, for the end-to-end test of
//! `witness bgp`.
//!
//! ```text
//! host      site   address (the test's /24)   runs
//! router    none   .1                          bird (bird-router.conf), AS 65000
//! a-proxy   dc-a   .2                          bird (bird-proxy.conf),  AS 65001
//! b-proxy   dc-b   .3                          bird (bird-proxy.conf),  AS 65002
//! ```
//!
//! The hosts come from the jepsen library ([`crate::Topology`]): every
//! address, route and BGP session exists only inside the test's own
//! namespaces. The templates are used as shipped, with only their
//! site-specific `define`s, the log target and the include path replaced;
//! a replacement that finds nothing fails the test, so a template that
//! drifts is noticed.
//!
//! Cleanup is certain: each BIRD runs in the foreground (`bird -f`) as a
//! [`Proc`] that kills and reaps it on drop, and the namespaces (with
//! anything still inside them) are removed when the [`Net`] drops, also
//! while a failing test unwinds. Its control socket, pid file and log live
//! in the lab's temp dir.
//!
//! Needs root, `ip netns` and BIRD 2 (`bird`, `birdc`); [`BgpLab::start`]
//! prints a loud `SKIPPED: <reason>` and returns `None` otherwise (CI runs
//! as root and installs `bird2`).

use std::collections::BTreeMap;
use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::{Host, Net, Proc, ProcSpec, Topology};
use witness::bgp::{Reply, Route, parse_routes};

use super::{text, witness_bin};

/// The service VIP the proxies announce.
pub const VIP: &str = "192.0.2.10/32";
/// The router's AS and each proxy's (different ASes: the router must
/// compare MED across them, which is what `med metric` is for).
pub const ROUTER_AS: u32 = 65000;

/// The proxies: (host, site, AS, BGP protocol name on the router).
pub const PROXIES: [(&str, &str, u32, &str); 2] = [
    ("a-proxy", "dc-a", 65001, "proxy_dc_a"),
    ("b-proxy", "dc-b", 65002, "proxy_dc_b"),
];

/// The router's host.
pub const ROUTER: &str = "router";

/// Bound on one `birdc` or `witness bgp` call from the test.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// Bound on BGP sessions coming up: BIRD waits 5 s (`start delay time`)
/// before its first connect; the rest is slack for a loaded CI machine.
pub const SESSIONS_UP: Duration = Duration::from_secs(60);

/// Bound on a route change reaching the router once sessions are up: an
/// UPDATE on a local bridge takes milliseconds.
pub const PROPAGATE: Duration = Duration::from_secs(20);

/// Why BIRD cannot run here, or `None` if it can.
fn bird_missing() -> Option<String> {
    for tool in ["bird", "birdc"] {
        let found = std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(tool).is_file()));
        if !found {
            return Some(format!(
                "`{tool}` not found: BIRD 2 is not installed (apt-get install -y bird2)"
            ));
        }
    }
    None
}

/// Whether this machine cannot run the lab (not root, no `ip netns`, no
/// BIRD 2), after saying why, loudly; `true` means skip.
pub fn skipped() -> bool {
    if super::netcluster::skipped() {
        return true;
    }
    match bird_missing() {
        Some(reason) => {
            println!("SKIPPED: {reason}");
            eprintln!("\n*** SKIPPED: {reason} ***\n");
            true
        }
        None => false,
    }
}

/// Replace the one line of `text` that starts with `start` by `with`;
/// panics (naming the template) when there is not exactly one.
fn replace_line(text: &str, template: &str, start: &str, with: &str) -> String {
    let hits = text.lines().filter(|l| l.starts_with(start)).count();
    assert_eq!(
        hits, 1,
        "{template}: expected exactly one line starting with {start:?}, found {hits}"
    );
    text.lines()
        .map(|l| if l.starts_with(start) { with } else { l })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// Set `define NAME = …;` in a template.
fn define(text: &str, template: &str, name: &str, value: &str) -> String {
    replace_line(
        text,
        template,
        &format!("define {name} ="),
        &format!("define {name} = {value};"),
    )
}

fn template(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/bgp")
        .join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Three BIRDs in three namespaces. Fields drop in order: the BIRDs are
/// killed and reaped, then the namespaces removed (when the lab made
/// them), then the files.
pub struct BgpLab {
    birds: BTreeMap<String, Proc>,
    /// The hosts, when the lab made them ([`BgpLab::start`]); torn down on
    /// drop. `None` on another's hosts ([`BgpLab::start_on`]).
    pub net: Option<Net>,
    /// Each BIRD host's namespace and address.
    hosts: BTreeMap<String, (String, Ipv4Addr)>,
    /// Configs, sockets, pid files, logs, include files.
    pub dir: tempfile::TempDir,
}

impl BgpLab {
    /// Build the hosts under run tag `tag` on `10.77.<octet>.0/24`, write
    /// the BIRD configs from the templates and each proxy's `bgp.toml`,
    /// create the (withdrawn) include files, start the three BIRDs and
    /// wait until both BGP sessions are established. `None`, after a loud
    /// SKIPPED, when namespaces or BIRD are unavailable.
    pub fn start(tag: &str, octet: u8) -> Option<BgpLab> {
        if skipped() {
            return None;
        }
        let prefix = crate::run_prefix(tag).expect("valid run tag");
        let mut topology = Topology::new(prefix)
            .subnet(Ipv4Addr::new(10, 77, octet, 0))
            .host(ROUTER, None);
        for (host, site, _, _) in PROXIES {
            topology = topology.host(host, Some(site));
        }
        let net = topology.create().expect("create namespaces");
        let mut lab = BgpLab::start_on(&net);
        lab.net = Some(net);
        Some(lab)
    }

    /// The same BIRDs on the hosts `router`, `a-proxy` and `b-proxy` of
    /// `net`, which someone else made (e.g. a
    /// [`NetCluster`](super::netcluster::NetCluster) started with a router
    /// host) and keeps until this lab is dropped. The caller has checked
    /// [`skipped`].
    pub fn start_on(net: &Net) -> BgpLab {
        let hosts = std::iter::once(ROUTER)
            .chain(PROXIES.iter().map(|p| p.0))
            .map(|h| {
                let host = Host::from(h);
                let ns = net.netns(&host).expect("a BIRD host of this net");
                let addr = net.addr(&host).expect("a BIRD host of this net");
                (h.to_string(), (ns.to_string(), addr))
            })
            .collect();
        let mut lab = BgpLab {
            birds: BTreeMap::new(),
            net: None,
            hosts,
            dir: tempfile::tempdir().expect("temp dir"),
        };
        lab.write_configs();
        for (host, _, _, _) in PROXIES {
            // BIRD refuses to start without its include file: the README's
            // ExecStartPre does the same.
            let out = lab.bgp(host, &["withdraw", "--no-reconfigure"], None);
            assert!(out.status.success(), "initial withdraw: {}", text(&out));
        }
        for host in lab.hosts() {
            lab.start_bird(net, &host);
        }
        lab.wait_sessions();
        lab
    }

    /// `argv` inside `host`'s namespace.
    fn exec<S: AsRef<std::ffi::OsStr>>(&self, host: &str, argv: &[S]) -> Command {
        let (ns, _) = self.hosts.get(host).expect("a lab host");
        crate::netns::exec(ns, argv)
    }

    fn hosts(&self) -> Vec<String> {
        std::iter::once(ROUTER)
            .chain(PROXIES.iter().map(|p| p.0))
            .map(str::to_string)
            .collect()
    }

    /// A host's address.
    pub fn addr(&self, host: &str) -> Ipv4Addr {
        self.hosts.get(host).expect("a lab host").1
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// BIRD's control socket on `host`.
    pub fn socket(&self, host: &str) -> PathBuf {
        self.path(&format!("{host}.ctl"))
    }

    /// The include file `witness bgp` writes on `host`.
    pub fn include_file(&self, host: &str) -> PathBuf {
        self.path(&format!("{host}-vip.conf"))
    }

    fn log(&self, host: &str) -> PathBuf {
        self.path(&format!("{host}.log"))
    }

    fn write_configs(&self) {
        let name = "bird-router.conf";
        let mut r = template(name);
        r = define(&r, name, "ROUTER_ID", &self.addr(ROUTER).to_string());
        r = define(&r, name, "LOCAL_AS", &ROUTER_AS.to_string());
        for (host, site, asn, _) in PROXIES {
            let var = format!("PROXY_{}", site.to_uppercase().replace('-', "_"));
            r = define(&r, name, &var, &self.addr(host).to_string());
            r = define(&r, name, &format!("{var}_AS"), &asn.to_string());
        }
        r = define(&r, name, "VIP_PREFIXES", &format!("[ {VIP} ]"));
        r = replace_line(
            &r,
            name,
            "log syslog all;",
            &format!("log {:?} all;", self.log(ROUTER)),
        );
        fs::write(self.path("router.conf"), r).expect("write router config");

        let name = "bird-proxy.conf";
        for (host, _, asn, _) in PROXIES {
            let mut p = template(name);
            p = define(&p, name, "ROUTER_ID", &self.addr(host).to_string());
            p = define(&p, name, "LOCAL_AS", &asn.to_string());
            p = define(&p, name, "ROUTER_ADDR", &self.addr(ROUTER).to_string());
            p = define(&p, name, "ROUTER_AS", &ROUTER_AS.to_string());
            p = replace_line(
                &p,
                name,
                "log syslog all;",
                &format!("log {:?} all;", self.log(host)),
            );
            p = replace_line(
                &p,
                name,
                "include \"",
                &format!("include {:?};", self.include_file(host)),
            );
            fs::write(self.path(&format!("{host}.conf")), p).expect("write proxy config");
            let toml = format!(
                "vip = [\"{VIP}\"]\ninclude_file = {:?}\nbirdc = \"birdc\"\nsocket = {:?}\n\
                 timeout = \"10s\"\n",
                self.include_file(host),
                self.socket(host),
            );
            fs::write(self.bgp_toml(host), toml).expect("write bgp.toml");
        }
    }

    /// The `witness bgp` config of a proxy host.
    pub fn bgp_toml(&self, host: &str) -> PathBuf {
        self.path(&format!("{host}-bgp.toml"))
    }

    fn start_bird(&mut self, net: &Net, host: &str) {
        let conf = self.path(&format!("{host}.conf"));
        // Check the config first, so a template error reads as one.
        let check = Command::new("bird")
            .arg("-p")
            .arg("-c")
            .arg(&conf)
            .output()
            .expect("run bird -p");
        assert!(
            check.status.success(),
            "bird -p -c {}: {}",
            conf.display(),
            text(&check)
        );
        let spec = ProcSpec::new(
            host,
            [
                "bird".into(),
                "-f".into(),
                "-c".into(),
                conf.into_os_string(),
                "-s".into(),
                self.socket(host).into_os_string(),
                "-P".into(),
                self.path(&format!("{host}.pid")).into_os_string(),
            ],
        )
        .log(self.path(&format!("{host}.stderr")));
        let p = Proc::spawn(net, spec).expect("start bird in its namespace");
        self.birds.insert(host.to_string(), p);
    }

    /// Run `birdc -v -s <host's socket> args…`, bounded.
    pub fn birdc(&self, host: &str, args: &[&str]) -> Reply {
        let mut cmd = Command::new("birdc");
        cmd.arg("-v").arg("-s").arg(self.socket(host)).args(args);
        let done = crate::cmd::run_unchecked(cmd, None, CALL_TIMEOUT).expect("run birdc");
        Reply::parse(&String::from_utf8_lossy(&done.output.stdout))
    }

    fn wait_sessions(&self) {
        self.wait(SESSIONS_UP, "both BGP sessions established", || {
            let reply = self.birdc(ROUTER, &["show", "protocols"]);
            let up = PROXIES.iter().all(|(_, _, _, proto)| {
                reply
                    .texts()
                    .iter()
                    .any(|l| l.starts_with(proto) && l.contains("Established"))
            });
            up.then_some(())
        });
    }

    /// The router's routes for the VIP (`show route for VIP all`); empty
    /// when it has none (BIRD answers 8001 "Network not found").
    pub fn router_routes(&self) -> Vec<Route> {
        let reply = self.birdc(ROUTER, &["show", "route", "for", VIP, "all"]);
        if let Some(e) = reply.error() {
            assert_eq!(e.code, 8001, "birdc show route: {} {}", e.code, e.text);
            return Vec::new();
        }
        parse_routes(reply.texts())
    }

    /// Poll the router's routes until `ok` holds; panics after `within`
    /// with the last routes seen and the BIRD logs.
    pub fn wait_routes(
        &self,
        within: Duration,
        what: &str,
        ok: impl Fn(&[Route]) -> bool,
    ) -> Vec<Route> {
        self.wait(within, what, || {
            let routes = self.router_routes();
            ok(&routes).then_some(routes)
        })
    }

    fn wait<T>(&self, within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + within;
        loop {
            if let Some(v) = f() {
                return v;
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {within:?} waiting for {what}; the router has:\n{:#?}",
                    self.router_routes()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Run `witness bgp <args> --config <host's bgp.toml>` on `host`, with
    /// `WITNESS_EPOCH` set to `epoch` (or unset), as an agent's hook would.
    pub fn bgp(&self, host: &str, args: &[&str], epoch: Option<u64>) -> Output {
        let mut argv = vec![witness_bin().into_os_string(), "bgp".into()];
        argv.extend(args.iter().map(Into::into));
        argv.push("--config".into());
        argv.push(self.bgp_toml(host).into_os_string());
        let mut cmd = self.exec(host, &argv);
        cmd.env_remove("WITNESS_EPOCH");
        if let Some(e) = epoch {
            cmd.env("WITNESS_EPOCH", e.to_string());
        }
        let done = crate::cmd::run_unchecked(cmd, None, CALL_TIMEOUT).expect("run witness bgp");
        done.output
    }

    /// Freeze `host`'s BIRD (SIGSTOP): it keeps its BGP session until the
    /// router's hold time runs out, so its last announcement stays, like a
    /// paused VM's.
    pub fn pause(&mut self, host: &str) {
        self.birds
            .get_mut(host)
            .expect("a bird")
            .pause()
            .expect("pause bird");
    }

    /// Kill `host`'s BIRD (its machine died): its BGP session closes, so
    /// the router drops its routes at once.
    pub fn kill(&mut self, host: &str) {
        self.birds
            .get_mut(host)
            .expect("a bird")
            .kill()
            .expect("kill bird");
    }

    /// Start a killed BIRD again as its machine's boot would: the include
    /// file withdrawn first (`ExecStartPre`), so it announces nothing until
    /// its agent holds a lease again.
    pub fn restart(&mut self, host: &str) {
        let out = self.bgp(host, &["withdraw", "--no-reconfigure"], None);
        assert!(
            out.status.success(),
            "withdraw before start: {}",
            text(&out)
        );
        self.birds
            .get_mut(host)
            .expect("a bird")
            .restart()
            .expect("restart bird");
    }

    /// Let a paused BIRD run again.
    pub fn resume(&mut self, host: &str) {
        self.birds
            .get_mut(host)
            .expect("a bird")
            .resume()
            .expect("resume bird");
    }

    /// The router's kernel route for the VIP (`ip route show <VIP>`), as
    /// BIRD's kernel protocol installed it.
    pub fn router_kernel_route(&self) -> String {
        let cmd = self.exec(ROUTER, &["ip", "route", "show", VIP]);
        let out = crate::cmd::run(cmd, None, CALL_TIMEOUT).expect("run ip route");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Wait until the router's kernel forwards the VIP via `next_hop`
    /// (BIRD's kernel protocol follows its best route); returns the route.
    pub fn wait_kernel_route_via(&self, next_hop: Ipv4Addr) -> String {
        let want = format!("via {next_hop} ");
        self.wait(PROPAGATE, &format!("a kernel route {want}"), || {
            let route = self.router_kernel_route();
            route.contains(&want).then_some(route)
        })
    }
}

impl Drop for BgpLab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for host in self.hosts() {
                for file in [self.log(&host), self.path(&format!("{host}.stderr"))] {
                    let log = fs::read_to_string(&file).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(30).collect();
                    eprintln!("----- last lines of {} -----", file.display());
                    for l in tail.iter().rev() {
                        eprintln!("{l}");
                    }
                }
            }
        }
        // Then the fields drop: birds killed and reaped, namespaces removed.
    }
}

/// The router's best route, if any.
pub fn best(routes: &[Route]) -> Option<&Route> {
    routes.iter().find(|r| r.primary)
}

/// The route learned from `addr`, if any.
pub fn via(routes: &[Route], addr: Ipv4Addr) -> Option<&Route> {
    routes.iter().find(|r| r.via == Some(IpAddr::V4(addr)))
}

//! The host and nemesis plumbing proven with real traffic between real
//! network namespaces: a topology connects its hosts, each fault blocks
//! exactly what it claims (and no more), each heal restores everything, and
//! teardown and crash cleanup leave nothing behind.
//!
//! Needs root and `ip netns`; without them each test prints `SKIPPED:` and
//! returns (CI runs as root, so there they always run). Every test uses its
//! own run prefix, so they run concurrently, and every wait is bounded.
//! Reachability is judged with bounded counts and timeouts: "blocked" means
//! a short connect attempt timed out or no datagram arrived; "reachable"
//! uses a generous bound, since a loaded machine may be slow but never
//! loses packets on a local bridge.

use std::fs;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use jepsen::net::Layout;
use jepsen::{
    Host, Latency, Nemesis, Net, Proc, ProcSpec, Topology, cleanup_leftovers, cleanup_orphans,
};

/// Port of the echo servers the tests start.
const ECHO: u16 = 7400;
/// A connect that has not succeeded by now is taken as blocked. Generous
/// against the sub-millisecond connects of a local bridge.
const BLOCKED_AFTER: Duration = Duration::from_millis(400);
/// Bound for things that must succeed, even on a loaded machine.
const REACH: Duration = Duration::from_secs(5);
/// Datagrams sent per UDP probe.
const DATAGRAMS: usize = 20;

fn skipped() -> bool {
    match jepsen::netns::unavailable() {
        Some(reason) => {
            println!("SKIPPED: {reason}");
            eprintln!("\n*** SKIPPED: {reason} ***\n");
            true
        }
        None => {
            // Leftovers of earlier test processes that crashed (their owner
            // is dead): removed once per process. Live runs, ours or another
            // process's, are never touched.
            static ORPHANS: std::sync::Once = std::sync::Once::new();
            ORPHANS.call_once(|| {
                cleanup_orphans().expect("remove orphaned runs");
            });
            false
        }
    }
}

/// This test's run prefix: unique to the test within this process, and to
/// this process among concurrent `cargo test`s on the machine.
fn prefix(tag: &str) -> String {
    jepsen::net::run_prefix(tag).expect("valid tag")
}

fn h(name: &str) -> Host {
    Host::from(name)
}

/// A line-oriented TCP echo server inside a host: for each line it answers
/// `<peer ip> <line>`, so tests also see which address the server saw.
struct Echo {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Echo {
    fn start(net: &Net, host: &str, port: u16) -> Echo {
        let listener = net
            .run_in(&h(host), || {
                TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
            })
            .expect("enter namespace")
            .expect("bind echo listener");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, peer)) => {
                        thread::spawn(move || serve_echo(s, peer));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Echo {
            stop,
            thread: Some(thread),
        }
    }
}

fn serve_echo(s: TcpStream, peer: SocketAddr) {
    // Bounded: a connection idle this long is dropped, so no thread
    // outlives the test by more than this.
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(mut w) = s.try_clone() else { return };
    let mut r = BufReader::new(s);
    let mut line = String::new();
    while matches!(r.read_line(&mut line), Ok(n) if n > 0) {
        if w.write_all(format!("{} {}", peer.ip(), line).as_bytes())
            .is_err()
        {
            return;
        }
        line.clear();
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connect from `from` to `to:port` within `timeout`.
fn connect(
    net: &Net,
    from: &str,
    to: &str,
    port: u16,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let dst = SocketAddr::from((net.addr(&h(to)).expect("known host"), port));
    net.run_in(&h(from), || TcpStream::connect_timeout(&dst, timeout))
        .expect("enter namespace")
}

/// One echo round trip on `s`; the server's answer.
fn round_trip(s: &mut TcpStream, msg: &str) -> std::io::Result<String> {
    s.set_read_timeout(Some(REACH))?;
    s.write_all(format!("{msg}\n").as_bytes())?;
    let mut answer = String::new();
    BufReader::new(s.try_clone()?).read_line(&mut answer)?;
    Ok(answer.trim_end().to_owned())
}

/// Whether `from` gets an echo from `to` (blocked means the connect did not
/// succeed within `BLOCKED_AFTER`; callers assert which).
fn tcp_reaches(net: &Net, from: &str, to: &str, expect: bool) -> bool {
    let timeout = if expect { REACH } else { BLOCKED_AFTER };
    match connect(net, from, to, ECHO, timeout) {
        Ok(mut s) => round_trip(&mut s, "ping").is_ok(),
        Err(_) => false,
    }
}

fn assert_tcp(net: &Net, from: &str, to: &str, expect: bool) {
    assert_eq!(
        tcp_reaches(net, from, to, expect),
        expect,
        "{from} -> {to}: expected {}",
        if expect { "reachable" } else { "blocked" }
    );
}

/// How many of `DATAGRAMS` UDP datagrams sent from `from` arrive at `to`.
/// Waits until all arrived or nothing came for a quiet window: bounded.
fn udp_delivered(net: &Net, from: &str, to: &str) -> usize {
    let to_addr = net.addr(&h(to)).expect("known host");
    let rx = net
        .run_in(&h(to), || UdpSocket::bind((to_addr, 0)))
        .expect("enter namespace")
        .expect("bind receiver");
    let dst = rx.local_addr().expect("receiver address");
    let tx = net
        .run_in(&h(from), || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))
        .expect("enter namespace")
        .expect("bind sender");
    for i in 0..DATAGRAMS {
        tx.send_to(format!("d{i}").as_bytes(), dst)
            .expect("send datagram");
    }
    rx.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let mut got = 0;
    let mut buf = [0u8; 64];
    let deadline = Instant::now() + REACH;
    while got < DATAGRAMS && Instant::now() < deadline {
        match rx.recv_from(&mut buf) {
            Ok(_) => got += 1,
            Err(_) => break, // quiet for the whole window: nothing more is coming
        }
    }
    got
}

fn leftovers(prefix: &str) -> Vec<String> {
    let mine = format!("{prefix}-");
    let mut found: Vec<String> = jepsen::netns::list()
        .expect("list namespaces")
        .into_iter()
        .filter(|n| n.starts_with(&mine))
        .collect();
    let links = std::process::Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip link");
    found.extend(
        String::from_utf8_lossy(&links.stdout)
            .lines()
            .filter(|l| l.contains(&mine))
            .map(|l| format!("interface in the machine's namespace: {l}")),
    );
    found
}

fn proc_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// Every host of the full witness layout reaches every other host over TCP
/// right after creation, each server sees the client's own address, and the
/// machine's own namespace gains no interface.
#[test]
fn hosts_reach_each_other_after_create() {
    if skipped() {
        return;
    }
    let net = Topology::witness_cluster(prefix("rch"))
        .create()
        .expect("create");
    let hosts: Vec<String> = net.hosts().iter().map(|h| h.to_string()).collect();
    let _servers: Vec<Echo> = hosts.iter().map(|x| Echo::start(&net, x, ECHO)).collect();
    for from in &hosts {
        for to in &hosts {
            if from == to {
                continue;
            }
            let mut s = connect(&net, from, to, ECHO, REACH)
                .unwrap_or_else(|e| panic!("{from} -> {to}: {e}"));
            let answer =
                round_trip(&mut s, "hello").unwrap_or_else(|e| panic!("{from} -> {to}: {e}"));
            assert_eq!(
                answer,
                format!("{} hello", net.addr(&h(from)).expect("addr"))
            );
        }
    }
    assert!(
        leftovers(&prefix("rch"))
            .iter()
            .all(|l| !l.starts_with("interface")),
        "{:?}",
        leftovers(&prefix("rch"))
    );
}

fn sites_net(prefix: &str) -> Net {
    Topology::new(prefix)
        .host("n1", Some("dc-a"))
        .host("n2", Some("dc-b"))
        .host("n3", Some("dc-c"))
        .host("a-mbox", Some("dc-a"))
        .create()
        .expect("create")
}

const SITES_HOSTS: [&str; 4] = ["n1", "n2", "n3", "a-mbox"];

/// Assert reachability for every ordered pair: `cut(a, b)` says whether the
/// pair must be blocked.
fn assert_matrix(net: &Net, cut: impl Fn(&str, &str) -> bool) {
    for from in SITES_HOSTS {
        for to in SITES_HOSTS {
            if from != to {
                assert_tcp(net, from, to, !cut(from, to));
            }
        }
    }
}

/// The bridge partition (sites a and b cut, c sees both) blocks exactly the
/// pairs across the cut, in both directions, while hosts in the same site
/// and the third site keep talking; heal restores every pair and leaves no
/// rule; isolating one node cuts it from everyone and nothing else.
#[test]
fn partition_blocks_exactly_the_cut_pairs_both_ways_and_heal_restores_them() {
    if skipped() {
        return;
    }
    let net = sites_net(&prefix("prt"));
    let _servers: Vec<Echo> = SITES_HOSTS
        .iter()
        .map(|x| Echo::start(&net, x, ECHO))
        .collect();
    let mut nem = Nemesis::new(&net);
    let site = |x: &str| {
        if x == "n1" || x == "a-mbox" {
            "a"
        } else if x == "n2" {
            "b"
        } else {
            "c"
        }
    };

    nem.partition(vec![net.site("dc-a"), net.site("dc-b")])
        .expect("bridge partition");
    assert_matrix(&net, |x, y| {
        let (p, q) = (site(x), site(y));
        (p == "a" && q == "b") || (p == "b" && q == "a")
    });

    nem.heal().expect("heal");
    assert!(
        nem.rules().expect("rules").is_empty(),
        "heal left rules behind"
    );
    assert_matrix(&net, |_, _| false);

    nem.isolate(&h("n3")).expect("isolate");
    assert_matrix(&net, |x, y| x == "n3" || y == "n3");

    nem.heal().expect("heal");
    nem.heal().expect("heal is idempotent");
    assert_matrix(&net, |_, _| false);
}

/// A one-way fault from n1 to n2 drops n1's datagrams to n2 but delivers
/// n2's to n1; TCP between them fails in both directions (n1's SYN, or n2's
/// SYN-ACK reply path, is dropped), exactly as documented; other pairs are
/// untouched; heal restores the dropped direction.
#[test]
fn one_way_drops_only_packets_from_sender_to_receiver() {
    if skipped() {
        return;
    }
    let net = Topology::new(prefix("one"))
        .host("n1", None)
        .host("n2", None)
        .host("n3", None)
        .create()
        .expect("create");
    let _servers: Vec<Echo> = ["n1", "n2", "n3"]
        .iter()
        .map(|x| Echo::start(&net, x, ECHO))
        .collect();
    let mut nem = Nemesis::new(&net);
    nem.one_way(&h("n1"), &h("n2")).expect("one way");

    assert_eq!(
        udp_delivered(&net, "n1", "n2"),
        0,
        "n1 -> n2 must be dropped"
    );
    assert_eq!(
        udp_delivered(&net, "n2", "n1"),
        DATAGRAMS,
        "n2 -> n1 must pass"
    );
    assert_tcp(&net, "n1", "n2", false); // SYN dropped
    assert_tcp(&net, "n2", "n1", false); // SYN arrives, SYN-ACK dropped
    assert_tcp(&net, "n1", "n3", true);
    assert_tcp(&net, "n3", "n2", true);
    assert_eq!(udp_delivered(&net, "n3", "n2"), DATAGRAMS);

    nem.heal().expect("heal");
    assert_eq!(udp_delivered(&net, "n1", "n2"), DATAGRAMS);
    assert_tcp(&net, "n1", "n2", true);
}

/// Loss at probability 1.0 on a host drops every packet to and from it
/// (and none between other hosts); at 0.0 the rules are installed yet every
/// packet passes.
#[test]
fn loss_of_one_drops_everything_and_loss_of_zero_drops_nothing() {
    if skipped() {
        return;
    }
    let net = Topology::new(prefix("los"))
        .host("n1", None)
        .host("n2", None)
        .host("n3", None)
        .create()
        .expect("create");
    let mut nem = Nemesis::new(&net);

    nem.loss(&[h("n2")], 1.0).expect("loss 1.0");
    assert_eq!(udp_delivered(&net, "n1", "n2"), 0);
    assert_eq!(udp_delivered(&net, "n2", "n1"), 0);
    assert_eq!(
        udp_delivered(&net, "n1", "n3"),
        DATAGRAMS,
        "hosts without loss are untouched"
    );
    assert_eq!(udp_delivered(&net, "n3", "n1"), DATAGRAMS);
    nem.heal().expect("heal");

    nem.loss(&[h("n2")], 0.0).expect("loss 0.0");
    let rules = nem.rules().expect("rules");
    assert!(
        rules.iter().any(|(_, r)| r.contains("statistic")),
        "rules must be in place: {rules:?}"
    );
    assert_eq!(udp_delivered(&net, "n1", "n2"), DATAGRAMS);
    assert_eq!(udp_delivered(&net, "n2", "n1"), DATAGRAMS);

    assert!(
        nem.loss(&[h("n2")], 1.5).is_err(),
        "probabilities outside [0, 1] are refused"
    );
    nem.heal().expect("heal");
    assert!(nem.rules().expect("rules").is_empty());
}

/// The latency fault makes a round trip from n1 to n2's port take at least
/// twice the configured delay (one delay per direction; only this lower
/// bound is asserted), keeps n1's own address visible to the server, aborts
/// a connection opened before the fault so it reconnects through the proxy,
/// and heal removes the steering and stops the proxy.
#[test]
fn latency_proxy_adds_at_least_the_delay_to_each_direction() {
    if skipped() {
        return;
    }
    let net = Topology::new(prefix("lat"))
        .host("n1", None)
        .host("n2", None)
        .create()
        .expect("create");
    let _server = Echo::start(&net, "n2", ECHO);
    let n1 = net.addr(&h("n1")).expect("addr").to_string();
    let mut before = connect(&net, "n1", "n2", ECHO, REACH).expect("connect before the fault");
    round_trip(&mut before, "early").expect("direct round trip");

    let delay = Duration::from_millis(150);
    let mut nem = Nemesis::new(&net).with_seed(7);
    nem.latency(
        &h("n1"),
        &h("n2"),
        ECHO,
        Latency {
            delay,
            jitter: Duration::from_millis(20),
        },
    )
    .expect("latency");
    assert_eq!(nem.proxies(), 1);

    // The pre-existing connection was aborted (ss -K): it cannot carry on
    // around the proxy.
    before.set_read_timeout(Some(REACH)).expect("timeout");
    let mut buf = [0u8; 16];
    let aborted =
        before.write_all(b"late\n").is_err() || matches!(before.read(&mut buf), Ok(0) | Err(_));
    assert!(
        aborted,
        "a connection from before the fault must be aborted"
    );

    let mut s = connect(&net, "n1", "n2", ECHO, REACH).expect("connect through the proxy");
    for i in 0..3 {
        let start = Instant::now();
        let answer = round_trip(&mut s, &format!("m{i}")).expect("round trip through the proxy");
        let rtt = start.elapsed();
        assert!(rtt >= 2 * delay, "round trip {rtt:?} < 2 x {delay:?}");
        assert_eq!(
            answer,
            format!("{n1} m{i}"),
            "the server must see n1's own address"
        );
    }

    nem.heal().expect("heal");
    assert_eq!(nem.proxies(), 0);
    assert!(
        nem.rules().expect("rules").is_empty(),
        "heal left steering behind"
    );
    let mut direct = connect(&net, "n1", "n2", ECHO, REACH).expect("connect after heal");
    assert_eq!(
        round_trip(&mut direct, "after").expect("direct again"),
        format!("{n1} after")
    );
}

/// Teardown removes every namespace and interface with the run's prefix, is
/// idempotent, and the drop after it is harmless.
#[test]
fn teardown_leaves_no_namespace_or_interface_with_the_prefix() {
    if skipped() {
        return;
    }
    let net = Topology::new(prefix("tdn"))
        .host("n1", None)
        .host("n2", None)
        .create()
        .expect("create");
    assert!(
        !leftovers(&prefix("tdn")).is_empty(),
        "create made namespaces"
    );
    net.teardown().expect("teardown");
    assert_eq!(leftovers(&prefix("tdn")), Vec::<String>::new());
    net.teardown().expect("teardown is idempotent");
    drop(net);
    assert_eq!(leftovers(&prefix("tdn")), Vec::<String>::new());
}

/// The leftovers of a run that crashed (no teardown, no drop: its values are
/// forgotten), including a process still running in one of its hosts, are
/// all removed by `cleanup_leftovers`, which also kills that process.
#[test]
fn cleanup_leftovers_removes_a_crashed_run_and_its_processes() {
    if skipped() {
        return;
    }
    let net = Topology::new(prefix("crs"))
        .host("n1", None)
        .host("n2", None)
        .create()
        .expect("create");
    let p = Proc::spawn(&net, ProcSpec::new("n1", ["sleep", "60"])).expect("spawn");
    let pid = p.pid().expect("pid");
    std::mem::forget(p);
    std::mem::forget(net);
    assert!(!leftovers(&prefix("crs")).is_empty());

    let removed = cleanup_leftovers(&prefix("crs")).expect("cleanup");
    assert_eq!(removed.len(), 3, "two hosts and the switch: {removed:?}");
    assert_eq!(leftovers(&prefix("crs")), Vec::<String>::new());
    // The forgotten child is ours, so it stays a zombie until we reap it:
    // dead either way.
    let deadline = Instant::now() + REACH;
    while !matches!(proc_state(pid), None | Some('Z')) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    assert!(
        matches!(proc_state(pid), None | Some('Z')),
        "process {pid} survived cleanup"
    );
    assert_eq!(
        cleanup_leftovers(&prefix("crs")).expect("again"),
        Vec::<String>::new(),
        "idempotent"
    );
}

/// Creating a topology over the leftovers of a crashed run with the same
/// prefix replaces them and works.
#[test]
fn create_over_a_crashed_run_with_the_same_prefix_succeeds() {
    if skipped() {
        return;
    }
    let first = Topology::new(prefix("rcr"))
        .host("n1", None)
        .host("n2", None)
        .create()
        .expect("create");
    std::mem::forget(first);
    let net = Topology::new(prefix("rcr"))
        .host("n1", None)
        .host("n2", None)
        .create()
        .expect("create again");
    let _server = Echo::start(&net, "n2", ECHO);
    assert_tcp(&net, "n1", "n2", true);
}

fn set_owner(layout: &Layout, alias: &str) {
    let sw = layout.switch_netns();
    let out = std::process::Command::new("ip")
        .args(["-n", &sw, "link", "set", &layout.bridge(), "alias", alias])
        .output()
        .expect("ip");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn start_time(pid: u32) -> String {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    stat[stat.rfind(')').expect(")") + 1..]
        .split_whitespace()
        .nth(19)
        .expect("field 22")
        .to_owned()
}

/// `cleanup_orphans` removes a run whose recorded owner is dead without
/// being told its prefix, and spares runs whose owner is alive; creating a
/// topology over a prefix owned by another live process is refused.
#[test]
fn cleanup_orphans_removes_dead_owners_runs_and_spares_live_ones() {
    if skipped() {
        return;
    }
    let dead = Topology::new(prefix("or1"))
        .host("n1", None)
        .create()
        .expect("create");
    let live = Topology::new(prefix("or2"))
        .host("n1", None)
        .create()
        .expect("create");
    // pid 1 with a start time it never had: a dead owner whose pid was reused.
    set_owner(dead.layout(), "wj-owner pid=1 start=999999999999");

    let removed = cleanup_orphans().expect("cleanup orphans");
    assert!(removed.contains(&prefix("or1")), "{removed:?}");
    assert!(!removed.contains(&prefix("or2")), "{removed:?}");
    assert_eq!(leftovers(&prefix("or1")), Vec::<String>::new());
    assert_eq!(
        leftovers(&prefix("or2")).len(),
        2,
        "the live run is untouched"
    );

    // Now make the second run look owned by another live process (pid 1).
    set_owner(
        live.layout(),
        &format!("wj-owner pid=1 start={}", start_time(1)),
    );
    let err = Topology::new(prefix("or2"))
        .host("n1", None)
        .create()
        .expect_err("prefix in use");
    assert!(
        matches!(err, jepsen::Error::PrefixInUse { pid: 1, .. }),
        "{err}"
    );
    assert_eq!(
        leftovers(&prefix("or2")).len(),
        2,
        "a live run is never torn down by create"
    );
    drop(dead);
    drop(live); // teardown by prefix is explicit, so it still removes it
    assert_eq!(leftovers(&prefix("or2")), Vec::<String>::new());
}

fn netns_inode(net: &Net, host: &str) -> u64 {
    fs::metadata(jepsen::netns::path(net.netns(&h(host)).expect("ns")))
        .expect("stat netns")
        .ino()
}

fn proc_netns_inode(pid: u32) -> u64 {
    let link = fs::read_link(format!("/proc/{pid}/ns/net")).expect("readlink");
    let s = link.to_string_lossy();
    s.trim_start_matches("net:[")
        .trim_end_matches(']')
        .parse()
        .expect("inode")
}

/// A process started in a host runs inside that host's namespace; pause
/// stops it (state T), resume continues it, kill ends and reaps it, restart
/// starts a new one in the same host, appending to the same log; dropping
/// the handle kills it.
#[test]
fn proc_pause_resume_kill_restart_act_on_the_started_process() {
    if skipped() {
        return;
    }
    let net = Topology::new(prefix("prc"))
        .host("n1", None)
        .host("n2", None)
        .create()
        .expect("create");
    let dir = std::env::temp_dir().join(format!("wjtproc-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("temp dir");
    let log = dir.join("n1.log");
    let _ = fs::remove_file(&log);
    let spec = ProcSpec::new("n1", ["sh", "-c", "echo started; exec sleep 60"]).log(&log);
    let mut p = Proc::spawn(&net, spec).expect("spawn");
    let pid = p.pid().expect("pid");
    assert_eq!(
        proc_netns_inode(pid),
        netns_inode(&net, "n1"),
        "runs inside n1"
    );

    let wait_state = |pid: u32, want: fn(Option<char>) -> bool| {
        let deadline = Instant::now() + REACH;
        while !want(proc_state(pid)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        want(proc_state(pid))
    };
    // Let it print before faulting it, so the log count below is exact.
    let deadline = Instant::now() + REACH;
    while !fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("started")
        && Instant::now() < deadline
    {
        thread::sleep(Duration::from_millis(5));
    }
    p.pause().expect("pause");
    assert!(
        wait_state(pid, |s| s == Some('T')),
        "paused: {:?}",
        proc_state(pid)
    );
    p.resume().expect("resume");
    assert!(
        wait_state(pid, |s| matches!(s, Some('S' | 'R'))),
        "resumed: {:?}",
        proc_state(pid)
    );

    p.pause().expect("pause again");
    p.kill().expect("kill a paused process");
    assert_eq!(p.pid(), None);
    assert!(!p.is_running().expect("poll"));
    assert_eq!(proc_state(pid), None, "killed and reaped");
    p.kill().expect("kill is idempotent");

    p.restart().expect("restart");
    let pid2 = p.pid().expect("new pid");
    assert_ne!(pid2, pid);
    assert!(p.is_running().expect("poll"));
    assert_eq!(
        proc_netns_inode(pid2),
        netns_inode(&net, "n1"),
        "restarted in n1"
    );
    let deadline = Instant::now() + REACH;
    while fs::read_to_string(&log)
        .unwrap_or_default()
        .matches("started")
        .count()
        < 2
        && Instant::now() < deadline
    {
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        fs::read_to_string(&log)
            .expect("log")
            .matches("started")
            .count(),
        2,
        "log spans restarts"
    );

    drop(p);
    assert_eq!(proc_state(pid2), None, "drop kills and reaps");
    let _ = fs::remove_dir_all(&dir);
}

/// Addresses come from the topology's /24 in host order, unknown hosts are
/// errors, and `exec` wraps `ip netns exec` for the host's namespace.
#[test]
fn exec_runs_commands_inside_the_host() {
    if skipped() {
        return;
    }
    let net = Topology::new(prefix("exe"))
        .subnet(Ipv4Addr::new(192, 168, 77, 0))
        .host("n1", None)
        .host("n2", None)
        .create()
        .expect("create");
    assert_eq!(
        net.addr(&h("n2")).expect("addr"),
        Ipv4Addr::new(192, 168, 77, 2)
    );
    assert!(net.addr(&h("n9")).is_err());
    let out = net
        .exec(&h("n2"), &["ip", "-o", "-4", "addr", "show", "dev", "eth0"])
        .expect("cmd")
        .output()
        .expect("run");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("192.168.77.2/24"));
    let lo = net
        .exec(&h("n1"), &["ip", "-o", "link", "show", "lo"])
        .expect("cmd")
        .output()
        .expect("run");
    assert!(
        String::from_utf8_lossy(&lo.stdout).contains("UP"),
        "loopback is up"
    );
}

/// Run `jepsen clock-probe` on `clock`, moving it with `during` once the
/// probe has run `after`; its JSON report, and the kernel's boot time (ms)
/// at the spawn and at the exit.
fn probe_on(
    clock: &mut jepsen::SkewedClock,
    args: &[&str],
    after: Duration,
    during: impl FnOnce(&mut jepsen::SkewedClock),
) -> (serde_json::Value, f64, f64) {
    let boot_ms = || {
        let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).expect("boottime");
        t.tv_sec() as f64 * 1e3 + t.tv_nsec() as f64 / 1e6
    };
    let spawned = boot_ms();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_jepsen"))
        .arg("clock-probe")
        .args(args)
        .envs(clock.env())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the probe");
    thread::sleep(after);
    during(clock);
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("poll").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the clock probe did not end within 30 s");
        }
        thread::sleep(Duration::from_millis(10));
    }
    let exited = boot_ms();
    let out = child.wait_with_output().expect("probe output");
    assert!(out.status.success(), "probe: {:?}", out.status);
    let v = serde_json::from_slice(&out.stdout).expect("the probe prints JSON");
    (v, spawned, exited)
}

/// The clock shim reaches a running, multi-threaded process: at rate 2 its
/// clocks run twice as fast and its sleeps take half the real time; a jump
/// of its monotonic clocks and a step back of its wall clock, made while it
/// runs, are seen by every thread at once, with no clock ever stepping
/// back; and its readings map back to the kernel's clock.
#[test]
fn the_clock_shim_skews_jumps_and_steps_a_running_process() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut clock = jepsen::SkewedClock::new(&dir.path().join("probe.clock"), 2.0)
        .unwrap_or_else(|e| panic!("{e}"));
    let (v, spawned, exited) = probe_on(
        &mut clock,
        &["--threads", "4", "--sleep-ms", "1000", "--run-ms", "30000"],
        Duration::from_millis(1500),
        |c| {
            c.jump(Duration::from_secs(60));
            c.step_wall(-600_000);
        },
    );
    let n = |p: &str| v.pointer(p).and_then(|x| x.as_i64()).expect(p) as f64 / 1e6;
    assert_eq!(n("/back"), 0.0, "a clock stepped back: {v}");
    assert!(n("/leap") >= 60_000.0, "no thread saw the 60 s jump: {v}");
    // The wall clock ran at the same rate, 600 s stepped back and without
    // the monotonic jump: 660 s behind the monotonic clock's progress.
    let mono = n("/end/mono") - n("/start/mono");
    let wall = n("/end/real") - n("/start/real");
    assert!(
        (mono - wall - 660_000.0).abs() < 100.0,
        "mono {mono} ms, wall {wall} ms"
    );
    // Readings map back inside the process's life, at half their pace.
    let start = clock.real_boot_ms(n("/start/boot"));
    let end = clock.real_boot_ms(n("/end/boot"));
    assert!(
        spawned <= start && start <= end && end <= exited,
        "{spawned} {start} {end} {exited}"
    );
    // The 1 s sleep, on the process's clock, took about 0.5 s of real time.
    let slept =
        clock.real_boot_ms(n("/sleep/after_boot")) - clock.real_boot_ms(n("/sleep/before_boot"));
    let fake = n("/sleep/after_boot") - n("/sleep/before_boot");
    assert!(
        fake >= 1000.0,
        "the sleep was cut short: {fake} ms on its clock"
    );
    assert!(
        (450.0..900.0).contains(&slept),
        "a 1 s sleep at rate 2 took {slept} ms of real time"
    );
    // The jump ended the 30 s reading loop long before 15 s of real time.
    assert!(exited - spawned < 10_000.0, "{} ms", exited - spawned);
}

/// A process told to use a clock whose control file is missing refuses to
/// start instead of running on the real clock unnoticed.
#[test]
fn the_clock_shim_refuses_a_missing_control_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = jepsen::SkewedClock::new(&dir.path().join("c.clock"), 1.0)
        .unwrap_or_else(|e| panic!("{e}"));
    let env: Vec<(&str, String)> = clock
        .env()
        .into_iter()
        .map(|(k, v)| {
            if k == "JEPSEN_CLOCK" {
                (k, "/nonexistent/c.clock".into())
            } else {
                (k, v)
            }
        })
        .collect();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jepsen"))
        .args(["clock-probe", "--sleep-ms", "0", "--run-ms", "0"])
        .envs(env)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("JEPSEN_CLOCK=/nonexistent/c.clock: cannot open"),
        "{err}"
    );
}

//! Faults and their heals: the nemesis.
//!
//! Network faults are iptables rules inside the hosts' own namespaces, in
//! chains that belong to us alone (see [`iptables`]); latency is a delaying
//! proxy plus DNAT steering (see [`proxy`]); process faults act on the
//! processes the harness started (see [`process`]); clock faults run a
//! process on the harness's clock shim (see [`clock`]).
//!
//! **Drops happen at the receiver.** Every drop rule is in the receiving
//! host's `INPUT` path, matched on the sender's address, as Jepsen's
//! "grudge" does. Dropping in the sender's `OUTPUT` instead would make the
//! sender's `send()`/`connect()` fail at once with `EPERM`, a signal no real
//! network partition gives; on a real network the sender hears nothing and
//! has to time out, and that is the behaviour under test. Loopback traffic
//! inside a host is never dropped.
//!
//! Invariants:
//! - Only our own chains in our own namespaces are touched, never the
//!   machine's namespace and never a rule we did not add.
//! - [`Nemesis::heal`] is exact and idempotent: it removes our chains (and
//!   the jumps to them) from every host and stops every proxy, leaving each
//!   namespace as `Topology::create` made it. For rules it works from a
//!   fresh `Nemesis` too, since it looks at what is installed, not at what
//!   this value remembers; proxies are threads of the `Nemesis` that started
//!   them, stopped by its heal or its drop.
//! - Faults stack: a second fault adds rules; heal removes all of them.

pub mod clock;
pub mod iptables;
pub mod process;
pub mod proxy;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddrV4;

pub use clock::SkewedClock;
pub use process::{Proc, ProcSpec};
pub use proxy::Latency;

use crate::cmd::{self, TOOL_TIMEOUT};
use crate::error::{Error, Result};
use crate::net::{Host, Layout, Net};
use crate::netns;
use iptables::Table;
use proxy::Proxy;

/// Injects network faults into one topology and heals them.
#[derive(Debug)]
pub struct Nemesis {
    layout: Layout,
    proxies: Vec<Proxy>,
    seed: u64,
}

impl Nemesis {
    /// A nemesis for `net`'s hosts. It keeps its own copy of the layout, so
    /// it does not borrow the `Net`.
    pub fn new(net: &Net) -> Self {
        Nemesis {
            layout: net.layout().clone(),
            proxies: Vec::new(),
            seed: 0,
        }
    }

    /// Seed for the latency proxies' jitter, so a run's choices can be
    /// repeated (the real timing of course cannot).
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Cut the network between groups, both ways: every host in one group
    /// drops every packet from every host in every other group. Hosts in no
    /// group keep full connectivity with everyone.
    ///
    /// That one shape covers the standard partitions:
    /// - a whole site: `[net.site("dc-a"), everyone else]`;
    /// - the bridge (sites a and b cut, c sees both):
    ///   `[net.site("dc-a"), net.site("dc-b")]`, leaving `dc-c` out;
    /// - isolating one node: `[[n1], everyone else]` (or [`Nemesis::isolate`]).
    pub fn partition(&mut self, groups: Vec<Vec<Host>>) -> Result<()> {
        let groups: Vec<Vec<Host>> = groups.into_iter().filter(|g| !g.is_empty()).collect();
        if groups.len() < 2 {
            return Err(Error::InvalidSpec(
                "a partition needs at least two non-empty groups".into(),
            ));
        }
        let mut seen = BTreeSet::new();
        for h in groups.iter().flatten() {
            self.layout.info(h)?;
            if !seen.insert(h.clone()) {
                return Err(Error::InvalidSpec(format!(
                    "host {h} is in two partition groups"
                )));
            }
        }
        let mut rules: BTreeMap<Host, Vec<String>> = BTreeMap::new();
        for (i, group) in groups.iter().enumerate() {
            for (j, other) in groups.iter().enumerate() {
                if i == j {
                    continue;
                }
                for receiver in group {
                    for sender in other {
                        rules
                            .entry(receiver.clone())
                            .or_default()
                            .push(format!("-s {}/32 -j DROP", self.layout.addr(sender)?));
                    }
                }
            }
        }
        self.apply(Table::Filter, rules)
    }

    /// Cut `host` off from every other host, both ways.
    pub fn isolate(&mut self, host: &Host) -> Result<()> {
        self.layout.info(host)?;
        let rest: Vec<Host> = self
            .layout
            .host_names()
            .into_iter()
            .filter(|h| h != host)
            .collect();
        self.partition(vec![vec![host.clone()], rest])
    }

    /// Drop every packet travelling from `from` to `to`, and nothing in the
    /// other direction: `to` drops, in its `INPUT` path, every packet whose
    /// source is `from`'s address.
    ///
    /// What that does to each protocol:
    /// - UDP (and anything datagram-like) is cut one way only: `from`'s
    ///   datagrams never arrive; `to`'s datagrams to `from` arrive as usual.
    /// - TCP breaks *both* ways at the transport level, because every TCP
    ///   exchange needs packets in both directions. A connection `from → to`
    ///   never gets going (its SYN is dropped); a connection `to → from`
    ///   also fails, since `from` receives the SYN but its SYN-ACK is
    ///   dropped; on an established connection, `from`'s data and `from`'s
    ///   ACKs of `to`'s data are lost, so both sides stall and retransmit.
    ///   What stays asymmetric is who hears what: `from` still *receives*
    ///   every SYN, request and retransmission `to` sends — which is the
    ///   case under test ("the leader can send but not receive", and the
    ///   reverse), e.g. a node that keeps seeing a peer's heartbeats but
    ///   whose answers never arrive.
    pub fn one_way(&mut self, from: &Host, to: &Host) -> Result<()> {
        if from == to {
            return Err(Error::InvalidSpec(format!("one_way from {from} to itself")));
        }
        let src = self.layout.addr(from)?;
        self.layout.info(to)?;
        let rules = BTreeMap::from([(to.clone(), vec![format!("-s {src}/32 -j DROP")])]);
        self.apply(Table::Filter, rules)
    }

    /// Make the links of `hosts` lossy: every packet to or from one of them
    /// (crossing the bridge; loopback is untouched) is dropped with
    /// `probability`, independently (`-m statistic --mode random`). Drops
    /// happen at the receiver: a lossy host drops that share of everything
    /// arriving on its `eth0`, and every other host drops that share of what
    /// arrives from a lossy host. A packet between two lossy hosts gets one
    /// chance of loss, not two.
    pub fn loss(&mut self, hosts: &[Host], probability: f64) -> Result<()> {
        if !(0.0..=1.0).contains(&probability) {
            return Err(Error::InvalidSpec(format!(
                "loss probability {probability} is not in [0, 1]"
            )));
        }
        let lossy: BTreeSet<&Host> = hosts.iter().collect();
        for h in &lossy {
            self.layout.info(h)?;
        }
        let stat = format!("-m statistic --mode random --probability {probability}");
        let mut rules: BTreeMap<Host, Vec<String>> = BTreeMap::new();
        for h in self.layout.host_names() {
            let r = rules.entry(h.clone()).or_default();
            if lossy.contains(&h) {
                r.push(format!("-i eth0 {stat} -j DROP"));
            } else {
                for l in &lossy {
                    r.push(format!("-s {}/32 {stat} -j DROP", self.layout.addr(l)?));
                }
            }
        }
        rules.retain(|_, r| !r.is_empty());
        self.apply(Table::Filter, rules)
    }

    /// Slow down the TCP connections that `from` opens to `to:port`.
    ///
    /// A delaying proxy is started inside `from`'s namespace and a DNAT rule
    /// there (nat `OUTPUT`) steers new connections to `to:port` into it; the
    /// proxy connects on to `to:port` from `from`'s own address, so `to`
    /// still sees the real peer and partitions still apply. Every chunk
    /// gains `delay` plus a random share of `jitter` in each direction, so a
    /// request/response round trip gains at least `2 × delay`.
    ///
    /// DNAT only sees new connections, so established connections from
    /// `from` to `to:port` are aborted (`ss -K`) once the rule is in place;
    /// long-lived clients (gRPC channels) reconnect, now through the proxy.
    /// Only this direction is slowed: for a symmetric slow link, also call
    /// `latency(to, from, …)` for the ports `from` serves.
    pub fn latency(&mut self, from: &Host, to: &Host, port: u16, latency: Latency) -> Result<()> {
        if from == to {
            return Err(Error::InvalidSpec(format!("latency from {from} to itself")));
        }
        let ns = self.layout.netns(from)?.to_owned();
        let dst = self.layout.addr(to)?;
        self.seed = self.seed.wrapping_add(1);
        let proxy = Proxy::start(&ns, SocketAddrV4::new(dst, port), latency, self.seed)?;
        let listen = proxy.listen();
        // Kept before the rule goes in, so heal() stops it even if the
        // steps below fail.
        self.proxies.push(proxy);
        let rule = format!(
            "-d {dst}/32 -p tcp -m tcp --dport {port} -m mark ! --mark {:#x} -j DNAT --to-destination {listen}",
            proxy::MARK
        );
        self.apply(Table::Nat, BTreeMap::from([(from.clone(), vec![rule])]))?;
        let filter = format!("dst {dst} dport = :{port}");
        let mut ss = std::process::Command::new("ip");
        ss.args(["netns", "exec", &ns, "ss", "-K", "-t", "-n"])
            .args(filter.split(' '));
        cmd::run(ss, None, TOOL_TIMEOUT).map(|_| ())
    }

    /// Remove every fault: our chains and jumps in every host, and every
    /// latency proxy. Exact and idempotent; hosts whose namespace no longer
    /// exists are skipped. Steering goes before the proxies stop, so new
    /// connections go direct while proxied ones are closed.
    pub fn heal(&mut self) -> Result<()> {
        let mut first_err = None;
        for h in self.layout.hosts() {
            if !netns::exists(&h.netns) {
                continue;
            }
            if let Err(e) = iptables::remove_ours(&h.netns) {
                // Keep healing the other hosts; report the first failure.
                first_err.get_or_insert(e);
            }
        }
        for mut p in self.proxies.drain(..) {
            p.stop();
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Our rules currently installed, per host, as `iptables-save` prints
    /// them: for reports, and for tests to see that heal left nothing.
    pub fn rules(&self) -> Result<Vec<(Host, String)>> {
        let mut all = Vec::new();
        for h in self.layout.hosts() {
            if netns::exists(&h.netns) {
                all.extend(
                    iptables::ours(&h.netns)?
                        .into_iter()
                        .map(|r| (h.name.clone(), r)),
                );
            }
        }
        Ok(all)
    }

    /// How many latency proxies are running.
    pub fn proxies(&self) -> usize {
        self.proxies.len()
    }

    fn apply(&self, table: Table, rules: BTreeMap<Host, Vec<String>>) -> Result<()> {
        for (host, rs) in rules {
            iptables::append(self.layout.netns(&host)?, table, &rs)?;
        }
        Ok(())
    }
}

impl Drop for Nemesis {
    fn drop(&mut self) {
        // The rules would go with the namespaces anyway; the proxies are
        // threads in our process and must be stopped here.
        if let Err(e) = self.heal() {
            eprintln!("jepsen: heal on drop failed: {e}");
        }
    }
}

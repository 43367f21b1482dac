//! Seeded random faults: what can go wrong, how it is injected into the
//! turmoil world, and how it is healed.
//!
//! Network faults act on the links between failure domains (every host of
//! one site against every host of the other), at most one fault per link at
//! a time (turmoil does not combine a hold with a one-way partition).
//! Process faults crash a witness (restarted later over its store), a
//! site's services (the site "dies"; its listeners refuse connections), a
//! domain's Consul agent, or a whole site (witness, services, lease client
//! and Consul agent at once). Consul faults make Consul misreport the
//! world (`crate::consul`).

use std::fmt;
use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;

use crate::cluster::{DOMAINS, SITES, WITNESSES};
use crate::consul::{CONSUL_HOSTS, ConsulFault};

/// Message latency of a healthy link: WAN-like, a few milliseconds.
pub const MIN_LATENCY: Duration = Duration::from_millis(1);
pub const MAX_LATENCY: Duration = Duration::from_millis(15);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// Drop everything between two domains, both ways.
    Cut(usize, usize),
    /// Drop everything from the first domain to the second.
    OneWay(usize, usize),
    /// Hold every message between two domains; deliver them on heal.
    Hold(usize, usize),
    /// Raise the latency between two domains to up to this many ms.
    Slow(usize, usize, u64),
    /// Crash witness `i`; restart it (over its store) on heal.
    CrashWitness(usize),
    /// Crash site `i`'s services; restart them on heal.
    SiteDown(usize),
    /// Crash site `i`'s witness, services, lease client and Consul agent
    /// at once.
    Blackout(usize),
    /// Crash domain `i`'s Consul agent; restart it on heal.
    ConsulAgentDown(usize),
    /// Consul reports site `i` fully passing whatever happens to it.
    ConsulLies(usize),
    /// Consul reports site `i`'s services critical while they run.
    ConsulFalseAlarm(usize),
    /// Consul's servers have no leader.
    ConsulLeaderless,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = |i: usize| DOMAINS[i].0;
        match *self {
            Fault::Cut(a, b) => write!(f, "cut {} <-> {}", d(a), d(b)),
            Fault::OneWay(a, b) => write!(f, "cut {} -> {}", d(a), d(b)),
            Fault::Hold(a, b) => write!(f, "hold {} <-> {}", d(a), d(b)),
            Fault::Slow(a, b, ms) => write!(f, "slow {} <-> {} (up to {ms} ms)", d(a), d(b)),
            Fault::CrashWitness(i) => write!(f, "crash {}", WITNESSES[i].host),
            Fault::SiteDown(i) => write!(f, "services of {} down", SITES[i].name),
            Fault::Blackout(i) => write!(f, "blackout of {}", SITES[i].name),
            Fault::ConsulAgentDown(i) => write!(f, "crash {}", CONSUL_HOSTS[i]),
            Fault::ConsulLies(i) => write!(f, "Consul reports {} passing", SITES[i].name),
            Fault::ConsulFalseAlarm(i) => {
                write!(f, "Consul reports {} critical", SITES[i].name)
            }
            Fault::ConsulLeaderless => write!(f, "Consul loses its leader"),
        }
    }
}

impl Fault {
    /// The link (ordered pair of domains) a network fault occupies.
    fn link(&self) -> Option<(usize, usize)> {
        match *self {
            Fault::Cut(a, b) | Fault::OneWay(a, b) | Fault::Hold(a, b) | Fault::Slow(a, b, _) => {
                Some((a.min(b), a.max(b)))
            }
            _ => None,
        }
    }

    /// The witnesses a process fault stops.
    pub fn witnesses(&self) -> Vec<usize> {
        match *self {
            Fault::CrashWitness(i) => vec![i],
            Fault::Blackout(s) => vec![SITES[s].witness],
            _ => vec![],
        }
    }

    /// The sites whose services a process fault stops.
    pub fn services(&self) -> Vec<usize> {
        match *self {
            Fault::SiteDown(s) | Fault::Blackout(s) => vec![s],
            _ => vec![],
        }
    }

    /// The domains whose Consul agent a process fault stops.
    fn consul_agents(&self) -> Vec<usize> {
        match *self {
            Fault::ConsulAgentDown(d) => vec![d],
            Fault::Blackout(s) => vec![SITES[s].witness],
            _ => vec![],
        }
    }

    /// How the fault makes Consul misreport the world, if it does.
    pub fn consul(&self) -> Option<ConsulFault> {
        match *self {
            Fault::ConsulLies(s) => Some(ConsulFault::Lies(s)),
            Fault::ConsulFalseAlarm(s) => Some(ConsulFault::FalseAlarm(s)),
            Fault::ConsulLeaderless => Some(ConsulFault::Leaderless),
            _ => None,
        }
    }

    fn conflicts(&self, other: &Fault) -> bool {
        let shared = |a: Vec<usize>, b: Vec<usize>| a.iter().any(|x| b.contains(x));
        let consul_subject = |f: &Fault| match f.consul() {
            Some(ConsulFault::Lies(s) | ConsulFault::FalseAlarm(s)) => Some(s),
            Some(ConsulFault::Leaderless) => Some(usize::MAX),
            None => None,
        };
        (self.link().is_some() && self.link() == other.link())
            || shared(self.witnesses(), other.witnesses())
            || shared(self.services(), other.services())
            || shared(self.consul_agents(), other.consul_agents())
            || (consul_subject(self).is_some() && consul_subject(self) == consul_subject(other))
    }

    /// A random fault.
    pub fn random(rng: &mut StdRng) -> Fault {
        let pair = |rng: &mut StdRng| {
            let a = rng.random_range(0..DOMAINS.len());
            let b = (a + rng.random_range(1..DOMAINS.len())) % DOMAINS.len();
            (a, b)
        };
        let site = |rng: &mut StdRng| rng.random_range(0..SITES.len());
        match rng.random_range(0..100) {
            0..18 => {
                let (a, b) = pair(rng);
                Fault::Cut(a, b)
            }
            18..29 => {
                let (a, b) = pair(rng);
                Fault::OneWay(a, b)
            }
            29..36 => {
                let (a, b) = pair(rng);
                Fault::Hold(a, b)
            }
            36..40 => {
                let (a, b) = pair(rng);
                Fault::Slow(a, b, rng.random_range(100..1500))
            }
            40..53 => Fault::CrashWitness(rng.random_range(0..WITNESSES.len())),
            53..76 => Fault::SiteDown(site(rng)),
            76..87 => Fault::Blackout(site(rng)),
            87..90 => Fault::ConsulAgentDown(rng.random_range(0..CONSUL_HOSTS.len())),
            90..94 => Fault::ConsulLies(site(rng)),
            94..97 => Fault::ConsulFalseAlarm(site(rng)),
            _ => Fault::ConsulLeaderless,
        }
    }

    /// Inject the fault.
    pub fn inject(&self, sim: &mut turmoil::Sim<'_>) {
        match *self {
            Fault::Cut(a, b) => each_pair(a, b, |x, y| sim.partition(x, y)),
            Fault::OneWay(a, b) => each_pair(a, b, |x, y| sim.partition_oneway(x, y)),
            Fault::Hold(a, b) => each_pair(a, b, |x, y| sim.hold(x, y)),
            Fault::Slow(a, b, ms) => each_pair(a, b, |x, y| {
                sim.set_link_max_message_latency(x, y, Duration::from_millis(ms))
            }),
            Fault::CrashWitness(i) => sim.crash(WITNESSES[i].host),
            Fault::SiteDown(s) => sim.crash(SITES[s].services),
            Fault::Blackout(s) => {
                for host in Self::site_hosts(s) {
                    sim.crash(host);
                }
            }
            Fault::ConsulAgentDown(d) => sim.crash(CONSUL_HOSTS[d]),
            // Consul's view is computed each step from the faults in force.
            Fault::ConsulLies(_) | Fault::ConsulFalseAlarm(_) | Fault::ConsulLeaderless => {}
        }
    }

    /// Every host of site `s`'s domain.
    fn site_hosts(s: usize) -> [&'static str; 4] {
        let site = &SITES[s];
        [
            WITNESSES[site.witness].host,
            site.services,
            site.agent,
            CONSUL_HOSTS[site.witness],
        ]
    }

    /// Undo the fault.
    pub fn heal(&self, sim: &mut turmoil::Sim<'_>) {
        match *self {
            Fault::Cut(a, b) => each_pair(a, b, |x, y| sim.repair(x, y)),
            Fault::OneWay(a, b) => each_pair(a, b, |x, y| sim.repair_oneway(x, y)),
            Fault::Hold(a, b) => each_pair(a, b, |x, y| sim.release(x, y)),
            Fault::Slow(a, b, _) => each_pair(a, b, |x, y| {
                sim.set_link_max_message_latency(x, y, MAX_LATENCY)
            }),
            Fault::CrashWitness(i) => sim.bounce(WITNESSES[i].host),
            Fault::SiteDown(s) => sim.bounce(SITES[s].services),
            Fault::Blackout(s) => {
                for host in Self::site_hosts(s) {
                    sim.bounce(host);
                }
            }
            Fault::ConsulAgentDown(d) => sim.bounce(CONSUL_HOSTS[d]),
            Fault::ConsulLies(_) | Fault::ConsulFalseAlarm(_) | Fault::ConsulLeaderless => {}
        }
    }
}

/// Call `f` for every host of domain `a` against every host of domain `b`.
fn each_pair(a: usize, b: usize, mut f: impl FnMut(&'static str, &'static str)) {
    for x in DOMAINS[a].1 {
        for y in DOMAINS[b].1 {
            f(x, y);
        }
    }
}

/// The faults in force, and the schedule that adds and heals them.
pub struct Nemesis {
    /// Each active fault and the simulated instant it heals at.
    pub active: Vec<(Fault, Duration)>,
    pub injected: u64,
    max_active: usize,
}

impl Nemesis {
    pub fn new(max_active: usize) -> Nemesis {
        Nemesis {
            active: Vec::new(),
            injected: 0,
            max_active,
        }
    }

    /// How long a new fault lasts. Process faults and partitions last long
    /// enough, often, to outlast detection and the lease wait (a failover
    /// takes about 7 s with the default timers); link delays stay short.
    fn duration(fault: &Fault, rng: &mut StdRng) -> Duration {
        let ms = match fault {
            Fault::Hold(..) | Fault::Slow(..) => rng.random_range(200..3_000),
            _ => rng.random_range(2_000..14_000),
        };
        Duration::from_millis(ms)
    }

    /// Heal the faults that are due at `now`, in the order they were
    /// injected. Returns them.
    pub fn heal_due(&mut self, sim: &mut turmoil::Sim<'_>, now: Duration) -> Vec<Fault> {
        let mut healed = Vec::new();
        self.active.retain(|(fault, until)| {
            if *until > now {
                return true;
            }
            healed.push(*fault);
            false
        });
        for fault in &healed {
            fault.heal(sim);
        }
        healed
    }

    /// Maybe inject a new fault that does not conflict with those in force.
    pub fn inject(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        rng: &mut StdRng,
        now: Duration,
    ) -> Option<Fault> {
        if self.active.len() >= self.max_active {
            return None;
        }
        // A few tries to find a fault that fits beside the active ones.
        for _ in 0..8 {
            let fault = Fault::random(rng);
            if self.active.iter().any(|(f, _)| f.conflicts(&fault)) {
                continue;
            }
            fault.inject(sim);
            let until = now + Self::duration(&fault, rng);
            self.active.push((fault, until));
            self.injected += 1;
            return Some(fault);
        }
        None
    }

    /// Heal every fault in force, in the order they were injected.
    pub fn heal_all(&mut self, sim: &mut turmoil::Sim<'_>) -> Vec<Fault> {
        let healed: Vec<Fault> = self.active.drain(..).map(|(f, _)| f).collect();
        for fault in &healed {
            fault.heal(sim);
        }
        healed
    }
}

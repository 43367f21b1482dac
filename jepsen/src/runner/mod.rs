//! The runner: `jepsen test` and `jepsen test-all`.
//!
//! One test deploys the real system on namespace hosts ([`deploy`]),
//! drives and watches it ([`workload`], [`operator`]), injects faults
//! ([`faults`]) and records everything in `history.jsonl` ([`recorder`]),
//! in phases:
//!
//! 1. **quiet**: the workload alone, so the history starts from a healthy
//!    cluster;
//! 2. **faults**: for `--time-limit` seconds, and at least until each of
//!    the nemeses has run once, one fault at a time, drawn with the seeded
//!    RNG from a shuffled bag of the nemeses (each runs before any
//!    repeats), held 3–8 s (a loss of the active site, a site death or a
//!    Consul lie: past the worst-case failover), healed, then a gap in which the operator may act (a
//!    failover, or a freeze followed by an unfreeze);
//! 3. **heal**: everything undone (network healed, processes resumed and
//!    restarted, dead sites revived);
//! 4. **recover**: the workload alone again;
//! 5. **final**: last reads of every witness.
//!
//! Then the agents' evidence and the committed history are added
//! ([`collect`]), node logs copied under `logs/`, and the checkers run
//! ([`crate::results::analyze`]: `results.json`, `timeline.html`), all in
//! `jepsen/store/<test>/<time>/`.
//!
//! Faults are always healed: at the end of each fault, in the heal phase,
//! and by the deployment's drop (namespaces removed, processes killed) on
//! a panic. Ctrl-C (SIGINT) or SIGTERM ends the fault phase early; the run
//! still heals, records and checks what it has.

pub mod collect;
pub mod deploy;
pub mod expected;
pub mod faults;
pub mod operator;
pub mod recorder;
pub mod service;
pub mod workload;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::checker::Valid;
use crate::history::{
    AgentMeta, Event, Meta, NemesisAction, NemesisEvent, OpF, OpType, Phase, PhaseMark,
    ServingChange, ServingState,
};
use crate::lab::bgp::{PROXIES, ROUTER, VIP};
use crate::lab::netcluster::{OPS, WITNESSES};
use crate::results::Results;
use deploy::{AGENTS, Deployment};
use operator::Ctl;
use recorder::{Recorder, now_ms, unix_minus_boot_ms};
use service::SERVE_PORT;
use workload::Workload;

/// Set by SIGINT or SIGTERM.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether the user asked the run to stop.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// Block SIGINT and SIGTERM in this process and turn them into
/// [`interrupted`], from a thread of their own. Call before starting any
/// thread (the mask is inherited); child processes start with an empty
/// mask.
pub fn catch_interrupts() {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    if set.thread_block().is_err() {
        return;
    }
    std::thread::spawn(move || {
        while let Ok(sig) = set.wait() {
            eprintln!("jepsen: {sig}: healing and stopping after the current step");
            INTERRUPTED.store(true, Ordering::Relaxed);
        }
    });
}

/// What one test does.
#[derive(Clone, Debug)]
pub struct TestOpts {
    /// Nemeses to pick from (names of [`faults::ALL`]).
    pub nemeses: Vec<String>,
    /// Length of the fault phase.
    pub time_limit: Duration,
    pub seed: u64,
    /// Where runs are stored (`jepsen/store`).
    pub store: PathBuf,
    /// The test's name (its directory under the store).
    pub name: String,
    /// The quiet phase, and the recover phase.
    pub quiet: Duration,
    pub recover: Duration,
}

/// Bound within which every node must read the final verdict after the
/// heal: witnesses restarted from their data dirs re-join, an election, a
/// read index, with slack for a loaded 2-core machine.
const CONVERGENCE_BOUND_MS: u64 = 20_000;
/// Route samples this soon after an activation are not judged: the old
/// site's withdrawal and the new site's announcement cross the router.
const ROUTE_GRACE_MS: u64 = 2_000;
/// The lab's policy timers (`site_policy`): lease_ttl 3 s, margin 1 s,
/// max_drift the default 1 %.
const LEASE_TTL_MS: u64 = 3_000;
const MARGIN_MS: u64 = 1_000;
const MAX_DRIFT: f64 = 0.01;

/// Civil UTC time `YYYYmmddTHHMMSSZ` of `unix` seconds.
pub(crate) fn stamp(unix: u64) -> String {
    let (y, m, d, h, mi, s) = witness_proto::civil_utc(unix);
    format!("{y:04}{m:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

/// A fresh run directory `store/<name>/<time>` (with `-N` when taken).
fn run_dir(store: &Path, name: &str) -> std::io::Result<PathBuf> {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let base = store.join(name).join(stamp(unix));
    let mut dir = base.clone();
    let mut n = 1;
    while dir.exists() {
        n += 1;
        dir = PathBuf::from(format!("{}-{n}", base.display()));
    }
    std::fs::create_dir_all(dir.join("logs"))?;
    Ok(dir)
}

fn phase(rec: &Recorder, phase: Phase) {
    eprintln!("jepsen: phase {phase:?}");
    rec.record(&Event::Phase(PhaseMark {
        t_ms: now_ms(),
        phase,
    }));
}

/// Sleep up to `d`, in short steps, unless interrupted.
fn pause(d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end && !interrupted() {
        std::thread::sleep(Duration::from_millis(100).min(end - Instant::now()));
    }
}

/// Wait (bounded) until dc-a's proxy announces the VIP at epoch 1 and both
/// sites' agents are settled: the run starts from a steady state.
fn wait_steady(d: &Deployment) -> Result<(), String> {
    let proxies: Vec<_> = route_proxies(d);
    let socket = d.bgp.socket(ROUTER);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let route = workload::best_route(&socket, VIP, &proxies);
        let announced = route.is_some_and(|r| r.site.as_deref() == Some("dc-a"));
        let settled = d.agents.values().all(|slot| {
            slot.proc.as_ref().is_some_and(|p| {
                let want = if slot.spec.site == "dc-a" {
                    "serving"
                } else {
                    "standby"
                };
                p.state().as_deref() == Some(want)
            })
        });
        if announced && settled {
            return Ok(());
        }
        if Instant::now() > deadline || interrupted() {
            return Err(format!(
                "no steady start within 60 s (dc-a's route announced: {announced}, agents \
                 settled: {settled})"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn route_proxies(d: &Deployment) -> Vec<(std::net::Ipv4Addr, String)> {
    PROXIES
        .iter()
        .map(|(host, site, _, _)| (d.bgp.addr(host), site.to_string()))
        .collect()
}

/// An agent killed with its site's machines serves no more from its death
/// on, though its own log cannot say so: the harness records it.
fn record_deaths(rec: &Recorder, d: &mut Deployment) {
    for (agent, site, role, epoch, t_ms) in d.deaths.drain(..) {
        rec.record(&Event::Serving(ServingChange {
            t_ms,
            agent,
            site,
            role,
            state: ServingState::Fenced,
            epoch,
            reason: "its machine died with the site (killed by the nemesis)".into(),
            at_unix_ms: None,
        }));
    }
}

/// Run one test; its directory and results.
pub fn run(opts: &TestOpts) -> anyhow::Result<(PathBuf, Results)> {
    let dir = run_dir(&opts.store, &opts.name)?;
    eprintln!(
        "jepsen: test {} (seed {}) in {}",
        opts.name,
        opts.seed,
        dir.display()
    );
    let mut rng = StdRng::seed_from_u64(opts.seed);
    eprintln!("jepsen: building the binaries and the deployment");
    crate::lab::bin_dir();
    let rates = faults::clock_rates(&opts.nemeses, &mut rng);
    for (name, rate) in &rates {
        eprintln!("jepsen: {name} runs on a clock at {rate:.4}× real time");
    }
    let Some(mut d) = Deployment::start("run", 90, &rates) else {
        anyhow::bail!("this machine cannot run the deployment (see SKIPPED above)");
    };
    let steady = wait_steady(&d);
    let worst = crate::lab::worst_case_failover(&d.cluster.policy);
    let offset = unix_minus_boot_ms();
    let nodes: Vec<String> = WITNESSES.iter().map(|w| w.1.to_string()).collect();
    let meta = Meta {
        t_ms: now_ms(),
        name: opts.name.clone(),
        seed: opts.seed,
        sites: vec!["dc-a".into(), "dc-b".into()],
        nodes: nodes.clone(),
        agents: AGENTS
            .iter()
            .map(|a| AgentMeta {
                name: a.0.into(),
                site: a.2.into(),
                role: a.3.into(),
            })
            .collect(),
        lease_ttl_ms: LEASE_TTL_MS,
        max_drift: MAX_DRIFT,
        margin_ms: MARGIN_MS,
        worst_case_failover_ms: worst.as_millis() as u64,
        convergence_bound_ms: CONVERGENCE_BOUND_MS,
        route_grace_ms: ROUTE_GRACE_MS,
        probe_interval_ms: Some(workload::PROBE_EVERY.as_millis() as u64),
        logs: Vec::new(),
    };
    let rec = Arc::new(Recorder::create(&dir.join("history.jsonl"), &meta)?);
    let ops_ns = d.cluster.net.netns(&crate::Host::from(OPS))?.to_string();
    let ctl = Ctl {
        witnessctl: crate::lab::witnessctl_bin(),
        ops_ns: ops_ns.clone(),
        endpoints: d.cluster.endpoints(&[1, 2, 3]),
    };

    let mut work = Workload::new();
    let readers: Vec<(String, String)> = WITNESSES
        .iter()
        .map(|(id, host, _)| (host.to_string(), d.cluster.endpoint(*id)))
        .collect();
    work.readers(&ops_ns, readers, rec.clone(), opts.seed)?;
    let targets = AGENTS
        .iter()
        .map(|(_, host, site, _, _)| {
            let addr = d.services.get(*host).map(|s| s.addr());
            (site.to_string(), host.to_string(), addr)
        })
        .filter_map(|(s, h, a)| a.map(|a| (s, h, a)))
        .collect();
    work.probes(&ops_ns, targets, rec.clone())?;
    work.routes(d.bgp.socket(ROUTER), VIP, route_proxies(&d), rec.clone());

    let mut failure = steady.err();
    if let Some(f) = &failure {
        eprintln!("jepsen: {f}");
    }
    phase(&rec, Phase::Quiet);
    pause(opts.quiet);

    phase(&rec, Phase::Faults);
    let faults_end = Instant::now() + opts.time_limit;
    let mut id = 0u64;
    let mut last_failover: Option<Instant> = None;
    // Nemeses are drawn from a shuffled bag, refilled when empty, so each
    // runs before any repeats; the phase lasts the time limit, and longer
    // if needed for every nemesis to run once.
    let mut bag: Vec<String> = Vec::new();
    let mut unseen: std::collections::BTreeSet<String> = opts.nemeses.iter().cloned().collect();
    while (Instant::now() < faults_end || !unseen.is_empty()) && !interrupted() && failure.is_none()
    {
        if bag.is_empty() {
            bag = opts.nemeses.clone();
            bag.shuffle(&mut rng);
        }
        let Some(kind) = bag.pop() else {
            break;
        };
        unseen.remove(&kind);
        // Anti-flap (min_failover_interval, 5 s here) must not delay the
        // failover a site death calls for, nor hide the one a lying Consul
        // might provoke.
        if (kind == "site-death" || kind == "consul-lies")
            && let Some(t) = last_failover
        {
            let since = t.elapsed();
            if since < Duration::from_secs(7) {
                pause(Duration::from_secs(7) - since);
            }
        }
        id += 1;
        let faults::Started {
            targets,
            detail,
            mut active,
            past_failover,
        } = match faults::start(&kind, &mut d, &mut rng) {
            Ok(x) => x,
            Err(e) => {
                failure = Some(format!("nemesis {kind}: {e}"));
                break;
            }
        };
        match &detail {
            Some(detail) => eprintln!("jepsen: fault {id}: {kind} {targets:?}: {detail}"),
            None => eprintln!("jepsen: fault {id}: {kind} {targets:?}"),
        }
        record_deaths(&rec, &mut d);
        rec.record(&Event::Nemesis(NemesisEvent {
            t_ms: now_ms(),
            action: NemesisAction::Start,
            kind: kind.clone(),
            targets: targets.clone(),
            id: Some(id),
            detail,
        }));
        // A loss of the active site, and a lie, last beyond the worst-case
        // failover: long enough for the failover one calls for, and for the
        // one the other must not cause.
        let hold = if past_failover {
            Duration::from_millis(worst.as_millis() as u64 + 4_000)
        } else {
            Duration::from_millis(rng.random_range(3_000..8_000))
        };
        let hold_end = Instant::now() + hold;
        while Instant::now() < hold_end && !interrupted() {
            let step = faults::tick(&mut active, &mut d, &mut rng);
            pause(step.min(hold_end.saturating_duration_since(Instant::now())));
        }
        faults::stop(active, &mut d);
        rec.record(&Event::Nemesis(NemesisEvent {
            t_ms: now_ms(),
            action: NemesisAction::Stop,
            kind: kind.clone(),
            targets,
            id: Some(id),
            detail: None,
        }));
        // The gap: the system recovers; the operator may act.
        pause(Duration::from_millis(rng.random_range(2_000..4_000)));
        if interrupted() {
            break;
        }
        match rng.random_range(0..4) {
            0 => {
                let to = match faults::active_site(&d).as_deref() {
                    Some("dc-a") => "dc-b",
                    _ => "dc-a",
                };
                eprintln!("jepsen: operator: failover to {to}");
                ctl.act(&rec, OpF::Failover, Some(to));
                last_failover = Some(Instant::now());
            }
            1 => {
                eprintln!("jepsen: operator: freeze, then unfreeze");
                ctl.act(&rec, OpF::Freeze, None);
                pause(Duration::from_millis(rng.random_range(500..2_000)));
                // A freeze left in force would block the next site death's
                // failover: unfreeze until it is known done (bounded).
                for _ in 0..5 {
                    if ctl.act(&rec, OpF::Unfreeze, None) == OpType::Ok {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
            _ => {}
        }
    }

    phase(&rec, Phase::Heal);
    faults::heal_all(&mut d);
    phase(&rec, Phase::Recover);
    // Not cut short by Ctrl-C beyond the pause itself: the run still
    // reaches its final reads.
    pause(opts.recover);
    phase(&rec, Phase::Final);
    std::thread::sleep(Duration::from_secs(3));
    work.stop();

    // The agents' evidence and the committed history.
    let planned = collect::directives(&ctl);
    let best_effort = planned
        .iter()
        .map(|(id, _, p)| (id.clone(), p.best_effort))
        .collect();
    match collect::decisions(&ctl, offset, &planned) {
        Ok(events) => events.iter().for_each(|e| rec.record(e)),
        Err(e) => {
            eprintln!("jepsen: {e}");
            failure.get_or_insert(e);
        }
    }
    let logs = dir.join("logs");
    for (name, site, role, state_log, carbonio_log, log) in d.agent_files() {
        let real = |t: f64| d.real_boot_ms(&name, t);
        for e in collect::serving_log(&state_log, &name, &site, &role, &real) {
            rec.record(&e);
        }
        for e in collect::carbonio_log(&carbonio_log, &name, &site, &best_effort) {
            rec.record(&e);
        }
        for (from, to) in [
            (state_log, format!("agent-{name}.state.jsonl")),
            (carbonio_log, format!("agent-{name}.carbonio.jsonl")),
            (log, format!("agent-{name}.log")),
        ] {
            let _ = std::fs::copy(&from, logs.join(to));
        }
    }
    for (id, host, _) in WITNESSES {
        let _ = std::fs::copy(
            d.cluster.log_path(id),
            logs.join(format!("witness-{host}.log")),
        );
    }
    for host in std::iter::once(ROUTER).chain(PROXIES.iter().map(|p| p.0)) {
        for (file, to) in [
            (format!("{host}.log"), format!("bird-{host}.log")),
            (format!("{host}.stderr"), format!("bird-{host}.stderr")),
        ] {
            let _ = std::fs::copy(d.bgp.path(&file), logs.join(to));
        }
    }
    let _ = std::fs::write(logs.join("cluster.toml"), &d.cluster.policy);
    let events = rec.count();
    drop(d);

    let results = crate::results::analyze(&dir)?;
    let mut results = results;
    if let Some(f) = failure {
        // The run itself went wrong: never report it as valid.
        results.notes.push(format!("the run did not complete: {f}"));
        if results.valid == Valid::True {
            results.valid = Valid::Unknown;
        }
        let text = serde_json::to_string_pretty(&results)?;
        std::fs::write(dir.join("results.json"), text)?;
    }
    eprintln!("jepsen: {events} events recorded, serving port {SERVE_PORT}");
    Ok((dir, results))
}

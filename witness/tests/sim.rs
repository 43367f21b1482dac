//! Deterministic simulation of the whole cluster (DESIGN.md §6 tier 2,
//! issue 3): three witnesses running the real node code (Raft, the driver,
//! probes, the gRPC services) with in-memory stores, two sites' services,
//! and one lease-holding client per site, all in one process on turmoil's
//! simulated network and clock, under seeded random faults: partitions
//! (two-way and one-way), held (delayed) and slow links, witness crashes and
//! restarts over their stores, site deaths and whole-site blackouts.
//!
//! After every simulation step it checks that no two sites hold a valid
//! lease at the same simulated instant and that committed epochs never go
//! backwards nor name two sites (see `sim/check.rs`). Liveness — a site
//! holds a lease again after the faults heal — is reported as a statistic.
//!
//! Running it:
//! - `cargo test -p witness --test sim`: the default number of seeds
//!   (`DEFAULT_SEEDS`), split over the machine's cores.
//! - `WITNESS_SIM_SEEDS=5000`: more seeds; `WITNESS_SIM_FIRST_SEED=n` moves
//!   the range.
//! - `WITNESS_SIM_SEED=n`: exactly seed `n`, with its fault log, printed
//!   trace hash and a second run to compare the hash with. Add
//!   `RUST_LOG=witness=debug` for the nodes' logs.
//! - Exact replay also needs tokio's randomness seeded, which turmoil does
//!   only in a `--cfg tokio_unstable` build (`witness/tests/sim/replay.sh SEED`).
//!
//! Each seed simulates about 22 s: the bootstrap (election, policy, first
//! activation of `dc-a`), 14 s of faults starting 1–4 s in (at most two
//! at once, each lasting up to 14 s, long enough to outlast detection and
//! the lease wait), then 6 s after every fault is healed. It costs about
//! half a second of CPU, so the default 1,000 seeds take about four
//! minutes on two cores.
//!
//! What is seeded: the fault schedule and the policy variant (a `StdRng`
//! from the seed), turmoil's network (latencies), openraft's election
//! timeouts (`witness::raft::runtime::seed_rng`), the wall clock the
//! witness reads (the simulated one, via `witness::clock`), incarnations
//! and cluster id. The fault schedule therefore replays in any build; the
//! nodes' behaviour replays exactly only when tokio's `select!` order is
//! seeded too.

#[path = "sim/check.rs"]
mod check;
#[path = "sim/cluster.rs"]
mod cluster;
#[path = "sim/faults.rs"]
mod faults;
#[path = "sim/net.rs"]
mod net;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use witness::raft::store::MemoryStore;
use witness::raft::types::Incarnation;

use crate::check::Checker;
use crate::cluster::{Disk, Grant, Live, SITES, WITNESSES, lock};
use crate::faults::{MAX_LATENCY, MIN_LATENCY, Nemesis};

/// Seeds the default `cargo test` run covers.
const DEFAULT_SEEDS: u64 = 1000;
/// Simulation step: every host runs this long per step, and the
/// invariants are checked after each one.
const TICK: Duration = Duration::from_millis(5);
/// Faults start at a random instant in this window (bootstrap included).
const FAULTS_FROM: (u64, u64) = (1_000, 4_000);
/// How long faults come and go.
const FAULT_WINDOW: Duration = Duration::from_secs(14);
/// Time between two nemesis moves, ms.
const NEMESIS_GAP: (u64, u64) = (500, 3_000);
/// At most this many faults at once.
const MAX_FAULTS: usize = 2;
/// After every fault heals, how long the cluster runs on.
const HEAL_WINDOW: Duration = Duration::from_secs(6);

/// What one seed did.
#[derive(Debug, Default)]
struct Outcome {
    seed: u64,
    faults: u64,
    /// Epochs committed (the first activation included).
    activations: u64,
    /// Time from the final heal until a client held a lease sent after
    /// it; `None` if none did by the end.
    recovered_after: Option<Duration>,
    trace: u64,
    wall: Duration,
    log: Vec<String>,
}

/// Run one seed; `Err` carries the violated invariant and the fault log.
fn run_seed(seed: u64, keep_log: bool) -> Result<Outcome, String> {
    let started = Instant::now();
    // openraft's election timeouts come from this thread's sequence.
    witness::raft::runtime::seed_rng(seed);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(std::time::UNIX_EPOCH + Duration::from_secs(1_750_000_000))
        .tick_duration(TICK)
        .simulation_duration(Duration::from_secs(3_600))
        .min_message_latency(MIN_LATENCY)
        .max_message_latency(MAX_LATENCY)
        .tcp_capacity(1 << 16)
        .build();

    let min_failover_interval = ["5s", "15s", "5m"][rng.random_range(0..3)];
    let failback = ["manual", "auto"][rng.random_range(0..2)];
    let policy = cluster::policy(min_failover_interval, failback);
    let disks: Vec<Disk> = WITNESSES
        .iter()
        .enumerate()
        .map(|(i, _)| Disk {
            store: MemoryStore::default(),
            incarnation: Incarnation(format!(
                "{:032x}",
                seed.wrapping_mul(31).wrapping_add(i as u64 + 1)
            )),
            cluster_id: Arc::new(Mutex::new((i == 0).then(|| format!("sim-{seed}")))),
        })
        .collect();
    let bootstrap = cluster::bootstrap(&policy, &disks);
    let live = Arc::new(Mutex::new(Live::default()));
    let grants: Arc<Mutex<Vec<Grant>>> = Arc::default();
    for site in &SITES {
        cluster::add_services(&mut sim, site);
    }
    for (i, disk) in disks.iter().enumerate() {
        let boot = (i == 0).then(|| bootstrap.clone());
        cluster::add_witness(&mut sim, i, disk.clone(), boot, live.clone());
    }
    for site in &SITES {
        cluster::add_agent(&mut sim, site, grants.clone());
    }

    let mut out = Outcome {
        seed,
        ..Outcome::default()
    };
    let mut log = |at: Duration, line: String| {
        if keep_log {
            out.log.push(format!("{:>9.3}s {line}", at.as_secs_f64()));
        }
    };
    log(
        Duration::ZERO,
        format!("policy: min_failover_interval {min_failover_interval}, failback {failback}"),
    );
    let mut checker = Checker::default();
    let mut nemesis = Nemesis::new(MAX_FAULTS);
    let faults_from = Duration::from_millis(rng.random_range(FAULTS_FROM.0..FAULTS_FROM.1));
    let heal_at = faults_from + FAULT_WINDOW;
    let end = heal_at + HEAL_WINDOW;
    let mut next_move = faults_from;
    let mut healed = false;

    let fail = |why: String, log: Vec<String>, checker: &Checker| {
        let mut report = format!("seed {seed}: {why}\n");
        report.push_str(&format!("epochs: {:?}\n", checker.epochs));
        for line in log {
            report.push_str(&line);
            report.push('\n');
        }
        report
    };

    loop {
        let now = sim.elapsed();
        if now >= end {
            break;
        }
        if !healed && now >= heal_at {
            for f in nemesis.heal_all(&mut sim) {
                log(now, format!("heal {f}"));
                checker.record(now, ("heal", f));
            }
            log(now, "all faults healed".into());
            healed = true;
        }
        if !healed && now >= faults_from {
            for f in nemesis.heal_due(&mut sim, now) {
                log(now, format!("heal {f}"));
                checker.record(now, ("heal", f));
            }
            if now >= next_move {
                if let Some(fault) = nemesis.inject(&mut sim, &mut rng, now) {
                    log(now, format!("inject {fault}"));
                    checker.record(now, ("inject", fault));
                    let mut live = lock(&live);
                    for w in fault.witnesses() {
                        live.nodes[w] = None;
                    }
                }
                next_move =
                    now + Duration::from_millis(rng.random_range(NEMESIS_GAP.0..NEMESIS_GAP.1));
            }
        }
        if let Err(e) = sim.step() {
            return Err(fail(format!("simulation error: {e}"), out.log, &checker));
        }
        let now = sim.elapsed();
        let result = {
            let live = lock(&live);
            let grants = lock(&grants);
            checker.check(now, &live, &grants)
        };
        if let Err(e) = result {
            out.log.push(format!("{:>9.3}s {e}", now.as_secs_f64()));
            return Err(fail(e, out.log, &checker));
        }
    }

    out.faults = nemesis.injected;
    out.activations = checker.epochs.len() as u64;
    out.recovered_after = SITES
        .iter()
        .filter_map(|s| {
            checker
                .grants(s.name)
                .iter()
                .find(|(sent, _, _)| *sent >= heal_at)
                .map(|(sent, _, _)| *sent - heal_at)
        })
        .min();
    out.trace = checker.trace_hash();
    out.wall = started.elapsed();
    // Drop the world (and every node in it) before the next seed.
    lock(&live).nodes = Default::default();
    drop(sim);
    Ok(out)
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
    )
}

/// Log the nodes' tracing output when `RUST_LOG` asks for it.
fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

fn install_sim_clock() {
    // The witness reads wall time for its anti-flap and failback windows
    // and for records; in the simulation that is the simulated clock.
    witness::clock::set_wall_clock(|| {
        turmoil::since_epoch().map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    });
}

/// Run `f` on a new thread: every seed starts from fresh thread-local state
/// (turmoil's world, the seeded RNG, tokio's and std's per-thread state),
/// as in a fresh process, so a seed behaves the same in a batch and alone.
fn fresh_thread<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join().expect("a simulation thread panicked"))
}

/// One seed, run twice: prints its fault log and trace hash, and says
/// whether the two runs did exactly the same thing.
fn run_one(seed: u64) {
    let first =
        fresh_thread(move || run_seed(seed, true)).unwrap_or_else(|report| panic!("{report}"));
    for line in &first.log {
        println!("{line}");
    }
    println!(
        "seed {seed}: {} faults, {} activations (epochs), recovered after heal: {:?}, \
         trace {:016x}, {:?} wall",
        first.faults, first.activations, first.recovered_after, first.trace, first.wall
    );
    let second =
        fresh_thread(move || run_seed(seed, false)).unwrap_or_else(|report| panic!("{report}"));
    if second.trace == first.trace {
        println!("replayed seed {seed}: same trace {:016x}", second.trace);
    } else {
        println!(
            "replayed seed {seed}: DIFFERENT trace {:016x} (vs {:016x}); exact replay needs \
             RUSTFLAGS=\"--cfg tokio_unstable\" (witness/tests/sim/replay.sh)",
            second.trace, first.trace
        );
    }
}

/// The simulation over many seeds (see the module doc for the knobs).
#[test]
fn simulated_cluster_keeps_one_site_active_under_faults() {
    init_tracing();
    install_sim_clock();
    if let Some(seed) = env_u64("WITNESS_SIM_SEED") {
        run_one(seed);
        return;
    }
    let count = env_u64("WITNESS_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let first = env_u64("WITNESS_SIM_FIRST_SEED").unwrap_or(0);
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(count.max(1) as usize);
    let started = Instant::now();
    let next = Arc::new(Mutex::new(first));
    let results: Vec<Result<Outcome, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let next = next.clone();
                scope.spawn(move || {
                    let mut mine = Vec::new();
                    loop {
                        let seed = {
                            let mut n = lock(&next);
                            if *n >= first + count {
                                break;
                            }
                            *n += 1;
                            *n - 1
                        };
                        let r = fresh_thread(move || run_seed(seed, true));
                        let failed = r.is_err();
                        mine.push(r);
                        if failed {
                            // Stop handing out seeds; the others finish theirs.
                            *lock(&next) = first + count;
                            break;
                        }
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a simulation worker panicked"))
            .collect()
    });
    let elapsed = started.elapsed();
    let (ok, failed): (Vec<_>, Vec<_>) = results.into_iter().partition(Result::is_ok);
    let ok: Vec<Outcome> = ok.into_iter().map(|r| r.expect("partitioned")).collect();
    let faults: u64 = ok.iter().map(|o| o.faults).sum();
    let activations: u64 = ok.iter().map(|o| o.activations).sum();
    let failovers: u64 = ok.iter().map(|o| o.activations.saturating_sub(1)).sum();
    let recovered: Vec<Duration> = ok.iter().filter_map(|o| o.recovered_after).collect();
    let mut sorted = recovered.clone();
    sorted.sort();
    let pct = |p: usize| {
        sorted
            .get((sorted.len() * p / 100).min(sorted.len().saturating_sub(1)))
            .copied()
    };
    let slowest = ok.iter().max_by_key(|o| o.wall);
    println!(
        "simulation: {} seeds in {:.1?} on {workers} threads; {faults} faults injected; \
         {activations} activations ({failovers} failovers); slowest seed {:?}",
        ok.len() + failed.len(),
        elapsed,
        slowest.map(|o| (o.seed, o.wall))
    );
    println!(
        "liveness: a site held a lease again after the final heal in {} of {} seeds \
         (median {:?}, p99 {:?}, max {:?} after the heal)",
        recovered.len(),
        ok.len(),
        pct(50),
        pct(99),
        sorted.last()
    );
    for o in ok.iter().filter(|o| o.recovered_after.is_none()) {
        println!("  seed {} had no lease after the heal", o.seed);
    }
    if let Some(Err(report)) = failed.into_iter().next() {
        panic!("{report}\nreplay: WITNESS_SIM_SEED=<seed> cargo test -p witness --test sim");
    }
}

//! Measures site failover with the default timers: the active site's
//! services are killed (and its agent stops renewing, as a dead site's
//! agents do) → `Activate` of the other site committed.
//!
//! Three real `witness` processes on loopback, each site's mailstore and
//! proxy as TCP listeners, and a lease client renewing for the active site
//! every `renew_interval` (400 ms), so every failover must wait out a real
//! lease. Trials
//! alternate sites (dc-a → dc-b, then dc-b → dc-a, …); the policy's
//! anti-flap interval is lowered to 1 s (its 5 min default would hold every
//! second trial back), and every timer that makes up the failover time is
//! the default.
//!
//! Usage: `cargo run --release -p witness-e2e --bin bench_failover -- [TRIALS]`
//! (default 20). Prints each trial, then the median, p99, min and max.
//!
//! Each trial starts from a steady state (the agent renewing, every witness
//! seeing both sites up), kills the active site at t0 — at a random phase of
//! the agent's 400 ms renewal cycle — and polls every
//! witness's own status over gRPC every 10 ms until one has applied the
//! activation of the other site at the next epoch. The figure therefore
//! includes up to 10 ms of polling granularity, and is a commit seen on one
//! witness, not yet the first directive on the new site.

use std::time::{Duration, Instant};

use witness_e2e::admin::Admin;
use witness_e2e::lease::{LeaseClient, LeaseSpec};
use witness_e2e::{Cluster, SETTLE, Sites, text, wait_until};

/// Time between two looks at the witnesses' status.
const POLL: Duration = Duration::from_millis(10);
/// A failover that takes longer than this is a failure, not a sample
/// (the worst case with the default timers is ≈ 9.5 s).
const FAILOVER_LIMIT: Duration = Duration::from_secs(60);

/// The policy's anti-flap window, lowered so trials can alternate.
const POLICY_EXTRA: &str = "[failover]\nmin_failover_interval = \"1s\"\n";

fn main() {
    let trials: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20);
    let mut sites = Sites::start();
    let mut c = Cluster::new(3);
    c.set_policy(&sites.policy(POLICY_EXTRA));
    let out = c.init(1);
    assert!(out.status.success(), "witness init: {}", text(&out));
    for id in 1..=3 {
        c.start(id);
    }
    c.wait_ready(&[1, 2, 3], SETTLE);
    c.wait_verdict("dc-a", 1, SETTLE);
    let endpoints: Vec<String> = c.nodes.iter().map(|n| n.addr()).collect();
    let admin = Admin::new(Duration::from_secs(1));

    let mut active = ('a', "dc-a");
    let mut standby = ('b', "dc-b");
    let mut epoch = 1;
    let mut agent = LeaseClient::start(LeaseSpec::new("agent", active.1, epoch, endpoints.clone()));
    let mut samples = Vec::with_capacity(trials);
    for trial in 1..=trials {
        steady(&c, &admin, &agent);
        // A site dies at any point of its agent's renewal cycle, not just
        // after a renewal: a uniformly random phase.
        std::thread::sleep(Duration::from_millis(rand::random_range(0..500)));

        let t0 = Instant::now();
        sites.kill(active.0);
        agent.stop();
        let took = loop {
            let applied = endpoints.iter().any(|e| {
                admin
                    .status(e, true)
                    .is_some_and(|s| s.active_site == standby.1 && s.epoch == epoch + 1)
            });
            if applied {
                break t0.elapsed();
            }
            assert!(
                t0.elapsed() < FAILOVER_LIMIT,
                "trial {trial}: no failover from {} within {FAILOVER_LIMIT:?}",
                active.1
            );
            std::thread::sleep(POLL);
        };

        // What the time was made of, from the activation's evidence.
        let last_grant = agent
            .last_grant()
            .map(|g| t0.saturating_duration_since(g.sent).as_millis() as i128)
            .unwrap_or(-1);
        let history = c.history();
        let ev = history
            .iter()
            .rev()
            .find_map(|r| r["event"].get("activated"))
            .map(|a| a["evidence"].clone())
            .unwrap_or_default();
        let waited = ev["waited_ms"].as_u64().unwrap_or(0);
        let since = ev["since_last_lease_ms"].as_u64().unwrap_or(0);
        println!(
            "trial {trial:>2}: {} → {} activated after {:>5} ms \
             (last grant {last_grant:>3} ms before the kill; drained {:>4} ms after the kill, \
             waited {waited} ms; {since} ms after the last grant)",
            active.1,
            standby.1,
            took.as_millis(),
            took.as_millis().saturating_sub(u128::from(waited)),
        );
        samples.push(took);

        // Bring the dead site back as the standby, and renew for the new
        // active site.
        sites.revive(active.0);
        epoch += 1;
        std::mem::swap(&mut active, &mut standby);
        agent = LeaseClient::start(LeaseSpec::new("agent", active.1, epoch, endpoints.clone()));
    }
    report(&mut samples);
}

/// Wait for a steady state: the agent has been renewing for a while, and
/// every witness sees both sites up (so the next failover has a target and
/// starts from fresh observations). Also lets the 1 s anti-flap pass.
fn steady(c: &Cluster, admin: &Admin, agent: &LeaseClient) {
    let addr = c.nodes[0].addr();
    wait_until(SETTLE, "a steady state before the next trial", || {
        let grants = agent.grants();
        let renewing = grants.len() >= 4
            && grants
                .last()
                .is_some_and(|g| g.sent.elapsed() < Duration::from_millis(600));
        let s = admin.status(&addr, false)?;
        let all_up = s.sites.len() == 2 && s.sites.iter().all(|x| x.up == 3);
        (renewing && all_up && s.pending.is_none()).then_some(())
    });
}

fn report(samples: &mut [Duration]) {
    samples.sort();
    let n = samples.len();
    if n == 0 {
        println!("no trials");
        return;
    }
    // Nearest rank: the smallest sample with at least p of them at or below.
    let rank = |p: f64| samples[((p * n as f64).ceil() as usize).clamp(1, n) - 1].as_millis();
    let mean = samples.iter().map(Duration::as_millis).sum::<u128>() / n as u128;
    println!(
        "site failover over {n} trials: median {} ms, p99 {} ms, min {} ms, max {} ms, mean {mean} ms",
        rank(0.5),
        rank(0.99),
        samples[0].as_millis(),
        samples[n - 1].as_millis()
    );
}

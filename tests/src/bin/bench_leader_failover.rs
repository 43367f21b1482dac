//! Measures leader failover: SIGKILL of the Raft leader → the two survivors
//! agree on a new leader that says it leads. Default (production) timers,
//! three real `witness` processes on loopback.
//!
//! Usage: `cargo run --release -p witness-e2e --bin bench_leader_failover -- [TRIALS]`
//! (default 20). Prints each trial and the median, p90 and max.
//!
//! The survivors are polled every 10 ms with `witnessctl status --local`,
//! so each figure includes up to ~10 ms of polling granularity plus one
//! process spawn.

use std::time::{Duration, Instant};

use witness_e2e::{Cluster, SETTLE};

fn main() {
    let trials: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20);
    let mut c = Cluster::start_all(3);
    c.wait_ready(&[1, 2, 3], SETTLE);
    let mut samples = Vec::with_capacity(trials);
    for trial in 1..=trials {
        let leader = c.wait_for_leader(&[1, 2, 3], SETTLE);
        // Let heartbeats settle so every trial starts from a steady state.
        std::thread::sleep(Duration::from_millis(500));
        let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
        let t0 = Instant::now();
        c.kill(leader);
        loop {
            let views: Vec<_> = rest.iter().filter_map(|id| c.local_status(*id)).collect();
            let new: Vec<u64> = views
                .iter()
                .filter_map(|s| s["leader_id"].as_u64())
                .collect();
            let agreed = views.len() == 2
                && new.len() == 2
                && new[0] == new[1]
                && new[0] != leader
                && views.iter().any(|s| s["role"] == "leader");
            if agreed {
                break;
            }
            assert!(t0.elapsed() < SETTLE, "no new leader within {SETTLE:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
        let took = t0.elapsed();
        println!(
            "trial {trial:>2}: leader {leader} killed, new leader after {:>5} ms",
            took.as_millis()
        );
        samples.push(took);
        c.start(leader);
        c.wait_ready(&[1, 2, 3], SETTLE);
    }
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize].as_millis();
    println!(
        "leader failover over {trials} trials: median {} ms, p90 {} ms, min {} ms, max {} ms",
        pct(0.5),
        pct(0.9),
        samples[0].as_millis(),
        samples[samples.len() - 1].as_millis()
    );
}

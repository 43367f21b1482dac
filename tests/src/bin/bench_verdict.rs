//! What mutual TLS costs: linearizable `GetVerdict` latency and throughput
//! on the leader, and each witness's resident memory, with TLS (as
//! production runs) and without (`insecure = true`), on the same machine,
//! the clusters run one after the other.
//!
//! Usage: `cargo run --release -p witness-e2e --bin bench_verdict -- [CALLS] [CONCURRENCY]`
//! (default 20000 calls, concurrency 16). One client process, one HTTP/2
//! connection per concurrent caller, all to the leader; the first 1000
//! calls warm up and are not counted. RSS is read from /proc after the
//! calls, once the cluster has idled for 5 s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};
use witness::trust::{Dial, Expect, Trust};
use witness_e2e::{Cluster, SETTLE, Sites};
use witness_proto::GetVerdictRequest;
use witness_proto::witness_client::WitnessClient;

const WARMUP: usize = 1000;

struct Run {
    label: &'static str,
    latencies: Vec<Duration>,
    wall: Duration,
    rss_kib: Vec<u64>,
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

async fn connect(addr: &str, trust: Option<Arc<Trust>>) -> Channel {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true);
    witness::trust::conn::connect(endpoint, trust, Dial::AnyWitness)
        .await
        .expect("connect to the leader")
}

fn measure(label: &'static str, tls: bool, calls: usize, concurrency: usize) -> Run {
    let sites = Sites::start();
    let mut c = Cluster::with_extra(3, "");
    c.set_policy(&sites.policy(""));
    if !tls {
        c.make_insecure();
    }
    let out = c.init(1);
    assert!(out.status.success(), "init: {}", witness_e2e::text(&out));
    for id in 1..=3 {
        c.start(id);
    }
    c.wait_ready(&[1, 2, 3], SETTLE);
    let leader = c.wait_for_leader(&[1, 2, 3], SETTLE);
    let addr = c.spec(leader).addr();
    let trust = tls.then(|| {
        Trust::load(
            c.pki().agent("dc-a", "bench"),
            Expect::Agent {
                site: "dc-a".into(),
                name: "bench".into(),
            },
        )
        .expect("the bench agent's certificate")
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (latencies, wall) = runtime.block_on(async {
        let mut clients = Vec::new();
        for _ in 0..concurrency {
            clients.push(WitnessClient::new(connect(&addr, trust.clone()).await));
        }
        let per = (calls + WARMUP) / concurrency;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for mut client in clients {
            tasks.push(tokio::spawn(async move {
                let mut samples = Vec::with_capacity(per);
                for _ in 0..per {
                    let t0 = Instant::now();
                    client
                        .get_verdict(GetVerdictRequest { allow_stale: false })
                        .await
                        .expect("GetVerdict");
                    samples.push(t0.elapsed());
                }
                samples
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("caller"));
        }
        (all, started.elapsed())
    });
    std::thread::sleep(Duration::from_secs(5));
    let rss_kib = (1..=3).filter_map(|id| c.pid(id)).map(rss_kib).collect();
    Run {
        label,
        latencies: latencies.into_iter().skip(WARMUP).collect(),
        wall,
        rss_kib,
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let calls: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let concurrency: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(16);
    let runs = [
        measure("mutual TLS", true, calls, concurrency),
        measure("plaintext (insecure = true)", false, calls, concurrency),
    ];
    println!("GetVerdict (linearizable) on the leader, {calls} calls, concurrency {concurrency}:");
    for mut run in runs {
        run.latencies.sort();
        let pct = |p: f64| {
            run.latencies[((run.latencies.len() as f64 - 1.0) * p).round() as usize].as_secs_f64()
                * 1000.0
        };
        let rate = (run.latencies.len() + WARMUP) as f64 / run.wall.as_secs_f64();
        println!(
            "  {:<28} {:>7.0} ops/s  p50 {:.2} ms  p99 {:.2} ms  p999 {:.2} ms  RSS per witness {:?} MiB",
            run.label,
            rate,
            pct(0.5),
            pct(0.99),
            pct(0.999),
            run.rss_kib
                .iter()
                .map(|k| format!("{:.1}", *k as f64 / 1024.0))
                .collect::<Vec<_>>()
        );
    }
}

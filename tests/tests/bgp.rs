//! `witness bgp` against real BIRD 2 speakers: a router and one proxy per
//! site, each in its own network namespace, configured from the shipped
//! templates in `deploy/bgp/` (see `witness_e2e::bgp`) — first driven by
//! hand, then by real agents and witnesses through a site failover.
//!
//! Needs root and BIRD 2; prints `SKIPPED:` and returns otherwise (CI runs
//! as root and installs `bird2`).

use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use jepsen::Host;
use witness::bgp::{exit, med};
use witness_e2e::agents::{AgentLab, AgentSpec, boottime_ms};
use witness_e2e::bgp::{BgpLab, PROPAGATE, ROUTER, best, via};
use witness_e2e::netcluster::NetCluster;
use witness_e2e::{FAILOVER_BOUND, SETTLE, text, wait_until};

/// The fake Carbonio CLI (the agents need one; proxies never call it).
const FAKE: &str = env!("CARGO_BIN_EXE_fake_carbonio");
/// How often the router's best path is sampled during a failover.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// The data-plane fence end to end, as the agents' hooks drive it:
///
/// (a) dc-a announces at epoch 1: the router's best route for the VIP
///     points at dc-a, with MED 4294967294 and the epoch in a large
///     community;
/// (b) dc-a goes stale (its BIRD is paused, like a stalled VM: its session
///     and its epoch-1 route stay at the router) and dc-b announces at
///     epoch 2: the router prefers dc-b — the lower MED wins across the two
///     neighbours' different ASes — while dc-a's route is still there; it
///     stays so once dc-a runs again and still announces epoch 1;
/// (c) dc-a's fence hook withdraws: only dc-b's route remains, and the
///     router's kernel forwards the VIP to dc-b;
/// (d) the commands are idempotent: announcing epoch 2 again changes
///     neither the include file nor the router's route (not even its age),
///     withdrawing when nothing is announced succeeds, and a late hook of
///     epoch 1 is refused (exit 4) without touching anything.
#[test]
fn lower_med_of_the_newer_epoch_wins_at_the_router() {
    if witness_e2e::bgp::skipped() {
        return;
    }
    // Build the binaries first, so the timings below are the scenario's.
    witness_e2e::bin_dir();
    let started = Instant::now();
    let Some(mut lab) = BgpLab::start("bgp", 40) else {
        return;
    };
    let (a, b) = (lab.addr("a-proxy"), lab.addr("b-proxy"));
    eprintln!("bgp: sessions up after {:?}", started.elapsed());
    assert!(lab.router_routes().is_empty(), "nothing announced yet");

    // (a) dc-a is active at epoch 1.
    let out = lab.bgp("a-proxy", &["announce"], Some(1));
    assert!(out.status.success(), "announce dc-a: {}", text(&out));
    let routes = lab.wait_routes(PROPAGATE, "dc-a's route at epoch 1", |r| {
        best(r).is_some_and(|x| x.via == Some(a.into()) && x.med() == Some(med(1)))
    });
    assert_eq!(routes.len(), 1, "{routes:#?}");
    assert_eq!(
        routes[0].attr("BGP.large_community"),
        Some("(65001, 0, 1)"),
        "{routes:#?}"
    );

    // (b) dc-a is stale, dc-b takes over at epoch 2 (--epoch this time).
    lab.pause("a-proxy");
    let out = lab.bgp("b-proxy", &["announce", "--epoch", "2"], None);
    assert!(out.status.success(), "announce dc-b: {}", text(&out));
    let routes = lab.wait_routes(PROPAGATE, "dc-b's route best, dc-a's still there", |r| {
        r.len() == 2 && best(r).is_some_and(|x| x.via == Some(b.into()))
    });
    let (best_b, stale_a) = (
        via(&routes, b).expect("dc-b route"),
        via(&routes, a).expect("dc-a route"),
    );
    assert_eq!(best_b.med(), Some(med(2)), "{routes:#?}");
    assert_eq!(best_b.attr("BGP.large_community"), Some("(65002, 0, 2)"));
    assert_eq!(stale_a.med(), Some(med(1)), "{routes:#?}");
    assert!(!stale_a.primary, "the stale epoch must lose: {routes:#?}");
    lab.resume("a-proxy");
    // Running again, dc-a still announces epoch 1 (nobody told it) and
    // still loses.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let routes = lab.router_routes();
    assert_eq!(routes.len(), 2, "{routes:#?}");
    assert_eq!(best(&routes).and_then(|r| r.via), Some(b.into()));

    // (c) dc-a's fence hook withdraws (the agent passes the epoch it saw).
    let out = lab.bgp("a-proxy", &["withdraw"], Some(2));
    assert!(out.status.success(), "withdraw dc-a: {}", text(&out));
    let routes = lab.wait_routes(PROPAGATE, "only dc-b's route", |r| {
        r.len() == 1 && best(r).is_some_and(|x| x.via == Some(b.into()))
    });
    let kernel = lab.wait_kernel_route_via(b);
    eprintln!("bgp: router kernel route: {kernel}");

    // (d) Idempotent. BIRD shows a route's `since` (when it last replaced
    // the route) converted from its monotonic clock at each query, so the
    // same stamp reads a millisecond apart from one query to the next; a
    // re-advertisement would restamp it to after the re-announce, which
    // comes at least 500 ms after this sample.
    let since_ms = |since: &str| -> f64 {
        let mut parts = since.split(':');
        let mut ms = 0.0;
        for unit in [3_600_000.0, 60_000.0, 1_000.0] {
            let v: f64 = parts
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("BIRD's since {since:?} is not HH:MM:SS.mmm"));
            ms += v * unit;
        }
        ms
    };
    std::thread::sleep(Duration::from_millis(500));
    let include = fs::read(lab.include_file("b-proxy")).expect("read include");
    for _ in 0..2 {
        let out = lab.bgp("b-proxy", &["announce"], Some(2));
        assert!(out.status.success(), "re-announce dc-b: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("unchanged"),
            "{}",
            text(&out)
        );
    }
    assert_eq!(
        fs::read(lab.include_file("b-proxy")).expect("read include"),
        include
    );
    let again = lab.router_routes();
    assert_eq!(again.len(), 1, "{again:#?}");
    assert_eq!(again[0].via, Some(b.into()));
    assert_eq!(again[0].med(), Some(med(2)));
    let moved = (since_ms(&again[0].since) - since_ms(&routes[0].since)).abs();
    assert!(
        moved <= 5.0,
        "re-announcing the same epoch must not re-advertise the route: since {} then {}",
        routes[0].since,
        again[0].since
    );
    let out = lab.bgp("a-proxy", &["withdraw"], None);
    assert!(
        out.status.success(),
        "withdraw with nothing announced: {}",
        text(&out)
    );
    let out = lab.bgp("a-proxy", &["announce"], Some(1));
    assert_eq!(
        out.status.code(),
        Some(i32::from(exit::STALE)),
        "a late epoch-1 hook must be refused: {}",
        text(&out)
    );
    let out = lab.bgp("a-proxy", &["status"], None);
    assert!(out.status.success(), "status dc-a: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("withdrawn (highest epoch seen 2)"),
        "{}",
        text(&out)
    );
    let out = lab.bgp("b-proxy", &["status"], None);
    assert!(out.status.success(), "status dc-b: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("announced at epoch 2"),
        "{}",
        text(&out)
    );
    let end = lab.router_routes();
    assert_eq!(end, again, "nothing above may change the router's view");
    eprintln!("bgp: whole scenario took {:?}", started.elapsed());
}

/// The data-plane failover end to end, driven by the agents: three
/// witnesses, each data site's proxy host running BIRD and `witness agent`
/// whose hooks run `witness bgp`, and an upstream router running BIRD, all
/// in network namespaces. dc-a announces the VIP at epoch 1; its services
/// die; its proxy's lease runs out and its fence hook withdraws the route;
/// dc-b is activated at epoch 2 and its proxy announces. The router's best
/// path, sampled throughout on the shared boot clock, points at dc-b only
/// after dc-a's agent fenced, and never at dc-a again once it pointed at
/// dc-b.
#[test]
fn agents_move_the_vip_route_to_the_new_site_only_after_the_old_one_fenced() {
    if witness_e2e::bgp::skipped() {
        return;
    }
    witness_e2e::bin_dir();
    let Some(mut c) = NetCluster::start_with_hosts("bga", 42, "", &[(ROUTER, None)]) else {
        return;
    };
    let lab = BgpLab::start_on(&c.net);
    let (a, b) = (lab.addr("a-proxy"), lab.addr("b-proxy"));
    let agents = AgentLab::new(FAKE).in_cluster(witness_e2e::netcluster::CLUSTER);
    let start = |host: &str, site: &str, order: &[u64]| {
        let spec = AgentSpec::new(host, site, "proxy").bgp(&lab.bgp_toml(host));
        agents.start_via(&spec, &c.endpoints(order), |argv| {
            c.net
                .exec(&Host::from(host), argv)
                .expect("a host of this cluster")
        })
    };
    let proxy_a = start("a-proxy", "dc-a", &[1, 3, 2]);
    let proxy_b = start("b-proxy", "dc-b", &[2, 3, 1]);
    lab.wait_routes(SETTLE, "dc-a's route at epoch 1", |r| {
        r.len() == 1 && best(r).is_some_and(|x| x.via == Some(a.into()) && x.med() == Some(med(1)))
    });
    wait_until(SETTLE, "b-proxy standby at epoch 1", || {
        proxy_b.first("standby", Some(1))
    });

    let stop = AtomicBool::new(false);
    let samples = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut seen = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let routes = lab.router_routes();
                seen.push((boottime_ms(), best(&routes).and_then(|r| r.via)));
                std::thread::sleep(SAMPLE_EVERY);
            }
            seen
        });
        c.kill_site("dc-a");
        c.wait_verdict("dc-b", 2, FAILOVER_BOUND);
        lab.wait_routes(SETTLE, "only dc-b's route, at epoch 2", |r| {
            r.len() == 1
                && best(r).is_some_and(|x| x.via == Some(b.into()) && x.med() == Some(med(2)))
        });
        // A little more of the new state, to see nothing flap back.
        std::thread::sleep(Duration::from_secs(1));
        stop.store(true, Ordering::SeqCst);
        sampler.join().expect("the sampler")
    });

    let fenced = proxy_a
        .first("fenced", None)
        .and_then(|f| f["boottime_ms"].as_u64())
        .unwrap_or_else(|| panic!("a-proxy never fenced:\n{}", proxy_a.log()));
    let first_b = samples
        .iter()
        .position(|(_, via)| *via == Some(b.into()))
        .unwrap_or_else(|| panic!("the router never chose dc-b: {samples:?}"));
    assert!(
        samples[first_b].0 >= fenced,
        "the router chose dc-b at boot+{} ms, before dc-a's proxy fenced at boot+{fenced} ms",
        samples[first_b].0
    );
    let back = samples[first_b..]
        .iter()
        .find(|(_, via)| *via == Some(a.into()));
    assert_eq!(back, None, "the router went back to dc-a: {samples:?}");
    assert!(
        samples[..first_b]
            .iter()
            .all(|(_, via)| *via != Some(b.into())),
        "{samples:?}"
    );
    assert!(
        agents
            .runs_of("activate", "b-proxy")
            .iter()
            .any(|r| r.epoch == 2),
        "b-proxy activated at epoch 2"
    );
    assert!(
        agents
            .runs_of("fence", "a-proxy")
            .iter()
            .any(|r| r.epoch == 1),
        "a-proxy's fence hook ran"
    );
    let kernel = lab.wait_kernel_route_via(b);
    eprintln!(
        "bgp: {} samples; dc-a fenced at boot+{fenced} ms, the router chose dc-b at boot+{} ms; \
         kernel route: {kernel}",
        samples.len(),
        samples[first_b].0
    );
}

//! What the run does to the system and how it watches it, all recorded in
//! the history: clients reading the verdict from every witness, operator
//! actions through `witnessctl`, outside probes of each site's fenced
//! services, and samples of the router's best path for the VIP.
//!
//! Clients, `witnessctl` and probes run on the operator's host (`ops`,
//! outside every site), so partitions apply to them as to anyone outside.
//! Every call is bounded; a call that ran out of time is `info` (it may
//! have happened), a call certainly refused is `fail`.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::transport::{Channel, Endpoint};
use witness_proto::GetVerdictRequest;
use witness_proto::witness_client::WitnessClient;

use super::recorder::{Recorder, now_ms};
use crate::history::{Event, Mode, Op, OpF, OpType, OpValue, Probe, RouteSample, Verdict};

/// Bound on one `GetVerdict`: a read index needs a heartbeat round, which
/// a healthy cluster answers in milliseconds; longer means a fault.
const READ_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause between one client's reads.
const READ_EVERY: Duration = Duration::from_millis(150);
/// How often each site host's fenced service is probed.
pub const PROBE_EVERY: Duration = Duration::from_millis(200);
/// Bound on one probe (connect, then the answer line).
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);
/// How often the router's best path is sampled.
const ROUTE_EVERY: Duration = Duration::from_millis(250);

/// The background watchers of a run; [`Workload::stop`] ends them.
pub struct Workload {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Workload {
    pub fn new() -> Workload {
        Workload {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        }
    }

    /// One client per witness reading `GetVerdict` (linearizable) from
    /// inside namespace `ops_ns`. `nodes` is (name, `ip:port`).
    pub fn readers(
        &mut self,
        ops_ns: &str,
        nodes: Vec<(String, String)>,
        rec: Arc<Recorder>,
        seed: u64,
    ) -> crate::Result<()> {
        let stop = self.stop.clone();
        let t = crate::netns::spawn_in(ops_ns, "readers", move |entered| {
            if let Err(e) = entered {
                eprintln!("jepsen: the readers could not enter the ops host: {e}");
                return;
            }
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("jepsen: no runtime for the readers: {e}");
                    return;
                }
            };
            rt.block_on(async move {
                let mut tasks = Vec::new();
                for (i, (name, addr)) in nodes.into_iter().enumerate() {
                    let (rec, stop) = (rec.clone(), stop.clone());
                    let rng = StdRng::seed_from_u64(seed.wrapping_add(i as u64));
                    tasks.push(tokio::spawn(reader(name, addr, rec, stop, rng)));
                }
                for t in tasks {
                    let _ = t.await;
                }
            });
        })?;
        self.threads.push(t);
        Ok(())
    }

    /// Probe every site host's fenced service from `ops_ns`. `targets` is
    /// (site, host, address).
    pub fn probes(
        &mut self,
        ops_ns: &str,
        targets: Vec<(String, String, SocketAddrV4)>,
        rec: Arc<Recorder>,
    ) -> crate::Result<()> {
        let stop = self.stop.clone();
        let t = crate::netns::spawn_in(ops_ns, "probes", move |entered| {
            if let Err(e) = entered {
                eprintln!("jepsen: the probes could not enter the ops host: {e}");
                return;
            }
            while !stop.load(Ordering::Relaxed) {
                for (site, host, addr) in &targets {
                    let t_ms = now_ms();
                    let up = probe(*addr);
                    rec.record(&Event::Probe(Probe {
                        t_ms,
                        site: site.clone(),
                        up,
                        target: Some(host.clone()),
                    }));
                }
                std::thread::sleep(PROBE_EVERY);
            }
        })?;
        self.threads.push(t);
        Ok(())
    }

    /// Sample the router's best path for `vip` through BIRD's control
    /// socket; `proxies` maps a next hop to its site.
    pub fn routes(
        &mut self,
        socket: PathBuf,
        vip: &str,
        proxies: Vec<(Ipv4Addr, String)>,
        rec: Arc<Recorder>,
    ) {
        let stop = self.stop.clone();
        let vip = vip.to_string();
        self.threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(sample) = best_route(&socket, &vip, &proxies) {
                    rec.record(&Event::Route(sample));
                }
                std::thread::sleep(ROUTE_EVERY);
            }
        }));
    }

    /// End every watcher and wait for it.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Default for Workload {
    fn default() -> Self {
        Workload::new()
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn reader(
    node: String,
    addr: String,
    rec: Arc<Recorder>,
    stop: Arc<AtomicBool>,
    mut rng: StdRng,
) {
    let mut process = rec.process();
    let mut channel: Option<Channel> = None;
    // GetVerdict is the Witness service's: the reader is an agent of the
    // namespace lab's cluster (its own name, so it shares no agent row).
    let trust = crate::lab::lease::agent_trust(crate::lab::netcluster::CLUSTER, "dc-a", "reader");
    while !stop.load(Ordering::Relaxed) {
        let op = |t_ms, kind, value, error| {
            Event::Op(Op {
                t_ms,
                process,
                kind,
                f: OpF::Read,
                node: Some(node.clone()),
                to: None,
                value,
                error,
            })
        };
        rec.record(&op(now_ms(), OpType::Invoke, None, None));
        let ch = match &channel {
            Some(c) => c.clone(),
            None => match Endpoint::from_shared(format!("http://{addr}")) {
                Ok(e) => {
                    let c = witness::trust::conn::channel(
                        e.connect_timeout(READ_TIMEOUT).timeout(READ_TIMEOUT),
                        Some(trust.clone()),
                        witness::trust::Dial::AnyWitness,
                    );
                    channel = Some(c.clone());
                    c
                }
                Err(e) => {
                    rec.record(&op(now_ms(), OpType::Fail, None, Some(e.to_string())));
                    return;
                }
            },
        };
        let mut client = WitnessClient::new(ch);
        let call = client.get_verdict(GetVerdictRequest { allow_stale: false });
        let outcome = tokio::time::timeout(READ_TIMEOUT, call).await;
        let t_ms = now_ms();
        match outcome {
            Ok(Ok(reply)) => {
                let v = reply.into_inner();
                let verdict = Verdict {
                    active_site: (!v.active_site.is_empty()).then_some(v.active_site),
                    epoch: v.epoch,
                    mode: if v.mode == "frozen" {
                        Mode::Frozen
                    } else {
                        Mode::Auto
                    },
                };
                rec.record(&op(t_ms, OpType::Ok, Some(OpValue::Verdict(verdict)), None));
            }
            Ok(Err(status)) => {
                // Refused before it was served (no leader, not ready,
                // unreachable): the read did not happen. Anything else
                // may have been served: unknown.
                let kind = match status.code() {
                    tonic::Code::Unavailable
                    | tonic::Code::FailedPrecondition
                    | tonic::Code::NotFound => OpType::Fail,
                    _ => OpType::Info,
                };
                rec.record(&op(t_ms, kind, None, Some(status.message().to_string())));
                channel = None;
                if kind == OpType::Info {
                    process = rec.process();
                }
            }
            Err(_) => {
                rec.record(&op(t_ms, OpType::Info, None, Some("timed out".into())));
                // A black-holed HTTP/2 connection stays stuck: reconnect.
                channel = None;
                process = rec.process();
            }
        }
        let pause = READ_EVERY + Duration::from_millis(rng.random_range(0..100));
        tokio::time::sleep(pause).await;
    }
}

/// Up when the service answers `serving …` within the bound.
fn probe(addr: SocketAddrV4) -> bool {
    let Ok(conn) = TcpStream::connect_timeout(&SocketAddr::V4(addr), PROBE_TIMEOUT) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(PROBE_TIMEOUT));
    let mut line = String::new();
    BufReader::new(conn).read_line(&mut line).is_ok() && line.starts_with("serving")
}

/// The router's best path for `vip` now: its site (by next hop) and the
/// epoch its MED encodes (`MED = u32::MAX − epoch`). `None` when BIRD did
/// not answer (no sample rather than a wrong one).
pub fn best_route(socket: &Path, vip: &str, proxies: &[(Ipv4Addr, String)]) -> Option<RouteSample> {
    let mut cmd = std::process::Command::new("birdc");
    cmd.arg("-v")
        .arg("-s")
        .arg(socket)
        .args(["show", "route", "for", vip, "all"]);
    let t_ms = now_ms();
    let done = crate::cmd::run_unchecked(cmd, None, Duration::from_secs(5)).ok()?;
    let reply = witness::bgp::Reply::parse(&String::from_utf8_lossy(&done.output.stdout));
    if reply.lines.is_empty() {
        // BIRD did not answer at all (its socket is gone or busy).
        return None;
    }
    if let Some(e) = reply.error() {
        // 8001: "Network not found": no route at all.
        return (e.code == 8001).then_some(RouteSample {
            t_ms,
            site: None,
            epoch: None,
        });
    }
    let routes = witness::bgp::parse_routes(reply.texts());
    let Some(best) = routes.iter().find(|r| r.primary) else {
        return Some(RouteSample {
            t_ms,
            site: None,
            epoch: None,
        });
    };
    let site = proxies
        .iter()
        .find(|(a, _)| best.via == Some(std::net::IpAddr::V4(*a)))
        .map(|(_, s)| s.clone());
    Some(RouteSample {
        t_ms,
        site,
        epoch: best.med().map(|m| u64::from(u32::MAX - m)),
    })
}

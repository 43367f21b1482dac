//! A lease-holding client for tests: it renews one site's lease the way an
//! agent does (DESIGN.md §3.4) and records every attempt, so a test can say
//! "it kept its lease throughout" or "it lost its lease at T".
//!
//! **How it renews.** Every `renew_interval` it runs one round. A round tries
//! the endpoints in turn, starting with the one that answered last, until one
//! answers (a grant or a refusal both count as an answer); a transport
//! error, a gRPC error ("not the leader", "no leader") or no answer within
//! `attempt_timeout` moves it on to the next endpoint, and that endpoint's
//! channel is dropped so its next use reconnects (a black-holed HTTP/2
//! connection would otherwise hang every later call). Any witness will do:
//! followers forward renewals to the leader. Every attempt carries a fresh
//! random nonce.
//!
//! **How it counts.** A grant is valid for the `lease_ttl_ms` it carries,
//! counted from the *send time* of the attempt whose nonce the grant echoes,
//! never from the reply's arrival (the leader's wait assumes exactly this).
//! A grant echoing a nonce this client never sent extends nothing and is
//! recorded as a failure.
//!
//! **Where it runs.** On a thread of its own with a current-thread Tokio
//! runtime, so every socket it opens is opened by that thread.
//! [`LeaseClient::start_with`] lets the caller spawn that thread inside a
//! host's network namespace, so partitions apply to the client.
//!
//! Not here: fencing, hooks, directives (the real agent's business). The
//! client reports `service_healthy` as the test sets it; the leader treats a
//! healthy report from the active site as a veto on failing it over.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tonic::transport::{Channel, Endpoint};
use witness_proto::RenewLeaseRequest;
use witness_proto::witness_client::WitnessClient;

/// How many recent attempts' nonces are remembered to match grants against:
/// far more than can be in flight (attempts are sequential), so a grant is
/// never dropped for being late, and the memory stays bounded.
const NONCES_KEPT: usize = 64;

/// How many attempts are kept for the test to read: at two a second, hours
/// of renewals; the oldest are dropped first.
const ATTEMPTS_KEPT: usize = 50_000;

/// How often a sleeping client looks at its stop flag.
const STOP_POLL: Duration = Duration::from_millis(20);

/// What the client renews, where, and how.
#[derive(Clone, Debug)]
pub struct LeaseSpec {
    /// The agent name sent with each renewal.
    pub agent: String,
    /// The site whose lease it holds.
    pub site: String,
    /// Its role at the site.
    pub role: String,
    /// The epoch it renews for (the epoch at which `site` became active).
    pub epoch: u64,
    /// Witness gRPC endpoints (`host:port`), in order of preference.
    pub endpoints: Vec<String>,
    /// Time between the starts of two rounds; the policy's `renew_interval`.
    pub renew_interval: Duration,
    /// Bound on one attempt, connection included. Short enough that a round
    /// which skips a dead endpoint still ends well within `lease_ttl`.
    pub attempt_timeout: Duration,
    /// What the client reports as its local service's health at start.
    pub service_healthy: bool,
    /// The cluster whose CA issues its agent certificate (for `site` and
    /// `agent`).
    pub cluster: String,
}

impl LeaseSpec {
    /// A mailstore agent of `site` renewing at `epoch` every default
    /// `renew_interval` (400 ms), each attempt bounded by two of them,
    /// reporting a healthy service.
    pub fn new(agent: &str, site: &str, epoch: u64, endpoints: Vec<String>) -> LeaseSpec {
        LeaseSpec {
            agent: agent.to_string(),
            site: site.to_string(),
            role: "mailstore".to_string(),
            epoch,
            endpoints,
            renew_interval: witness::config::defaults::RENEW_INTERVAL,
            // Two renew intervals: a witness that forwards to a live leader
            // answers in milliseconds, so this only ever cuts off a dead or
            // black-holed endpoint, and two such skips (1.6 s) plus one
            // renew interval still fit in the default 3 s lease.
            attempt_timeout: witness::config::defaults::RENEW_INTERVAL * 2,
            service_healthy: true,
            cluster: "e2e".to_string(),
        }
    }

    /// Renew with a certificate of `cluster` (default `e2e`).
    pub fn in_cluster(mut self, cluster: &str) -> LeaseSpec {
        self.cluster = cluster.to_string();
        self
    }

    /// Report this service health from the start.
    pub fn service_healthy(mut self, healthy: bool) -> LeaseSpec {
        self.service_healthy = healthy;
        self
    }
}

/// What one attempt got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A lease, valid until `valid_until` (send time + `ttl`).
    Granted {
        epoch: u64,
        ttl: Duration,
        valid_until: Instant,
    },
    /// An answer without a lease, and why.
    Refused { epoch: u64, reason: String },
    /// No usable answer: transport or gRPC error, timeout, unknown nonce.
    Failed(String),
}

/// One renewal attempt through one endpoint.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub endpoint: String,
    pub nonce: u64,
    pub sent: Instant,
    pub answered: Instant,
    pub outcome: Outcome,
}

/// A granted lease: through which endpoint, from when (the send time of
/// the renewal), when the grant arrived, and until when it is valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub endpoint: String,
    pub epoch: u64,
    pub sent: Instant,
    pub answered: Instant,
    pub valid_until: Instant,
}

struct Shared {
    attempts: Mutex<VecDeque<Attempt>>,
    stop: AtomicBool,
    healthy: AtomicBool,
}

impl Shared {
    fn attempts(&self) -> MutexGuard<'_, VecDeque<Attempt>> {
        // A panic while holding the lock cannot leave the log inconsistent
        // (each push is one operation); keep using it.
        self.attempts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, attempt: Attempt) {
        let mut log = self.attempts();
        if log.len() == ATTEMPTS_KEPT {
            log.pop_front();
        }
        log.push_back(attempt);
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// The body of the client's thread; handed `Err` if the thread could not be
/// placed where it should run (e.g. entering a namespace failed).
pub type Body = Box<dyn FnOnce(Result<(), String>) + Send + 'static>;

/// A running lease client. Stopped (and its thread joined) on drop.
pub struct LeaseClient {
    spec: LeaseSpec,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    started: Instant,
    started_unix_ms: u64,
}

impl LeaseClient {
    /// Start renewing on a plain thread (the machine's own network).
    pub fn start(spec: LeaseSpec) -> LeaseClient {
        LeaseClient::start_with(spec, |body| {
            std::thread::Builder::new()
                .name("lease-client".into())
                .spawn(move || body(Ok(())))
        })
        .expect("spawn the lease client's thread")
    }

    /// Start renewing on a thread made by `spawn`, which must run the
    /// [`Body`] it is given (e.g. inside a host's namespace).
    pub fn start_with<F>(spec: LeaseSpec, spawn: F) -> std::io::Result<LeaseClient>
    where
        F: FnOnce(Body) -> std::io::Result<JoinHandle<()>>,
    {
        assert!(!spec.endpoints.is_empty(), "a lease client needs endpoints");
        let shared = Arc::new(Shared {
            attempts: Mutex::new(VecDeque::new()),
            stop: AtomicBool::new(false),
            healthy: AtomicBool::new(spec.service_healthy),
        });
        let started = Instant::now();
        let started_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let body: Body = {
            let shared = shared.clone();
            let spec = spec.clone();
            Box::new(move |placed| {
                let runtime = placed.and_then(|()| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| format!("starting a Tokio runtime: {e}"))
                });
                match runtime {
                    Ok(rt) => rt.block_on(renew(shared, spec)),
                    Err(why) => {
                        let now = Instant::now();
                        shared.record(Attempt {
                            endpoint: String::new(),
                            nonce: 0,
                            sent: now,
                            answered: now,
                            outcome: Outcome::Failed(format!("the client never started: {why}")),
                        });
                    }
                }
            })
        };
        let thread = spawn(body)?;
        Ok(LeaseClient {
            spec,
            shared,
            thread: Some(thread),
            started,
            started_unix_ms,
        })
    }

    /// What it was started with.
    pub fn spec(&self) -> &LeaseSpec {
        &self.spec
    }

    /// Change the service health reported from the next attempt on.
    pub fn set_service_healthy(&self, healthy: bool) {
        self.shared.healthy.store(healthy, Ordering::Relaxed);
    }

    /// Stop renewing and wait for the thread. Bounded: the thread looks at
    /// the flag between attempts, and each attempt is bounded.
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            // A panic inside the client shows up as missing grants, which
            // the test's assertions then report with `describe()`.
            let _ = t.join();
        }
    }

    /// Every attempt so far, oldest first.
    pub fn attempts(&self) -> Vec<Attempt> {
        self.shared.attempts().iter().cloned().collect()
    }

    /// Every grant so far, in order.
    pub fn grants(&self) -> Vec<Grant> {
        self.shared
            .attempts()
            .iter()
            .filter_map(|a| match &a.outcome {
                Outcome::Granted {
                    epoch, valid_until, ..
                } => Some(Grant {
                    endpoint: a.endpoint.clone(),
                    epoch: *epoch,
                    sent: a.sent,
                    answered: a.answered,
                    valid_until: *valid_until,
                }),
                _ => None,
            })
            .collect()
    }

    /// The last grant, if any.
    pub fn last_grant(&self) -> Option<Grant> {
        self.grants().pop()
    }

    /// When the lease it holds runs out (the latest end of any grant).
    pub fn lease_until(&self) -> Option<Instant> {
        self.grants().iter().map(|g| g.valid_until).max()
    }

    /// Whether a granted lease covered instant `t`.
    pub fn held_at(&self, t: Instant) -> bool {
        self.grants()
            .iter()
            .any(|g| g.sent <= t && t < g.valid_until)
    }

    /// When it lost its lease: the end of its last lease, if that is past.
    pub fn lost_lease_at(&self) -> Option<Instant> {
        self.lease_until().filter(|end| *end <= Instant::now())
    }

    /// The stretches of `[from, to)` during which it held no lease.
    pub fn lapses(&self, from: Instant, to: Instant) -> Vec<(Instant, Instant)> {
        let mut grants = self.grants();
        grants.sort_by_key(|g| g.sent);
        let mut lapses = Vec::new();
        let mut covered_until = from;
        for g in grants {
            if g.sent >= to {
                break;
            }
            if g.sent > covered_until {
                lapses.push((covered_until, g.sent));
            }
            covered_until = covered_until.max(g.valid_until);
        }
        if covered_until < to {
            lapses.push((covered_until, to));
        }
        lapses
    }

    /// The longest time within `[from, to]` between the send times of two
    /// consecutive grants (or from `from` to the first, or from the last to
    /// `to`). A lease lasts `lease_ttl` from its send time, so a gap no longer
    /// than `lease_ttl` means the lease never ran out.
    pub fn longest_gap_between_grants(&self, from: Instant, to: Instant) -> Duration {
        let mut at = from;
        let mut longest = Duration::ZERO;
        for g in self.grants() {
            if g.sent < from || g.sent > to {
                continue;
            }
            longest = longest.max(g.sent - at);
            at = g.sent;
        }
        longest.max(to.saturating_duration_since(at))
    }

    /// Grants within `[from, to]` answered through `endpoint`.
    pub fn grants_through(&self, endpoint: &str, from: Instant, to: Instant) -> usize {
        self.grants()
            .iter()
            .filter(|g| g.endpoint == endpoint && g.sent >= from && g.sent <= to)
            .count()
    }

    /// An instant on this machine's wall clock, in Unix milliseconds (the
    /// clock `at_unix_ms` in history is stamped with).
    pub fn unix_ms(&self, t: Instant) -> u64 {
        match t.checked_duration_since(self.started) {
            Some(after) => self.started_unix_ms + after.as_millis() as u64,
            None => self
                .started_unix_ms
                .saturating_sub((self.started - t).as_millis() as u64),
        }
    }

    /// A summary for assertion messages: counts per endpoint and outcome,
    /// then the last attempts with times relative to the client's start.
    pub fn describe(&self) -> String {
        let attempts = self.attempts();
        let mut s = format!(
            "lease client {} of {} at epoch {}: {} attempts\n",
            self.spec.agent,
            self.spec.site,
            self.spec.epoch,
            attempts.len()
        );
        for e in &self.spec.endpoints {
            let (mut g, mut r, mut f) = (0, 0, 0);
            for a in attempts.iter().filter(|a| &a.endpoint == e) {
                match a.outcome {
                    Outcome::Granted { .. } => g += 1,
                    Outcome::Refused { .. } => r += 1,
                    Outcome::Failed(_) => f += 1,
                }
            }
            let _ = writeln!(s, "  {e}: {g} granted, {r} refused, {f} failed");
        }
        let skip = attempts.len().saturating_sub(12);
        for a in attempts.iter().skip(skip) {
            let _ = writeln!(
                s,
                "  t+{:>6} ms  {:<18} {:?}",
                a.sent.saturating_duration_since(self.started).as_millis(),
                a.endpoint,
                a.outcome
            );
        }
        s
    }
}

impl Drop for LeaseClient {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A channel to `endpoint` that connects on first use, within `timeout`,
/// presenting `trust`'s agent certificate.
fn channel(
    endpoint: &str,
    timeout: Duration,
    trust: &Arc<witness::trust::Trust>,
) -> Result<WitnessClient<Channel>, String> {
    let ep = Endpoint::from_shared(format!("http://{endpoint}"))
        .map_err(|e| format!("bad endpoint {endpoint}: {e}"))?
        .connect_timeout(timeout)
        .tcp_nodelay(true);
    Ok(WitnessClient::new(witness::trust::conn::channel(
        ep,
        Some(trust.clone()),
        witness::trust::Dial::AnyWitness,
    )))
}

/// The agent certificate a lease client presents.
pub fn agent_trust(cluster: &str, site: &str, agent: &str) -> Arc<witness::trust::Trust> {
    let files = super::pki::Pki::shared(cluster).agent(site, agent);
    witness::trust::Trust::load(
        files,
        witness::trust::Expect::Agent {
            site: site.into(),
            name: agent.into(),
        },
    )
    .unwrap_or_else(|e| panic!("the lab agent's certificate: {e}"))
}

/// The renewal loop (see the module doc).
async fn renew(shared: Arc<Shared>, spec: LeaseSpec) {
    let trust = agent_trust(&spec.cluster, &spec.site, &spec.agent);
    let n = spec.endpoints.len();
    let mut clients: Vec<Option<WitnessClient<Channel>>> = vec![None; n];
    let mut preferred = 0;
    let mut nonces: VecDeque<(u64, Instant)> = VecDeque::with_capacity(NONCES_KEPT);
    let mut next_round = Instant::now();
    while !shared.stopping() {
        let now = Instant::now();
        if now < next_round {
            tokio::time::sleep((next_round - now).min(STOP_POLL)).await;
            continue;
        }
        next_round = now + spec.renew_interval;
        for k in 0..n {
            if shared.stopping() {
                return;
            }
            let i = (preferred + k) % n;
            let endpoint = &spec.endpoints[i];
            let nonce: u64 = rand::random();
            if nonces.len() == NONCES_KEPT {
                nonces.pop_front();
            }
            let sent = Instant::now();
            nonces.push_back((nonce, sent));
            let request = RenewLeaseRequest {
                agent: spec.agent.clone(),
                site: spec.site.clone(),
                role: spec.role.clone(),
                epoch: spec.epoch,
                nonce,
                state: "serving".into(),
                service_healthy: shared.healthy.load(Ordering::Relaxed),
                fence_timeout_ms: 0,
                watchdog_timeout_ms: 0,
                ..RenewLeaseRequest::default()
            };
            let client = match clients[i].take() {
                Some(c) => Ok(c),
                None => channel(endpoint, spec.attempt_timeout, &trust),
            };
            let (outcome, client) = match client {
                Err(why) => (Outcome::Failed(why), None),
                Ok(mut c) => {
                    let answer =
                        tokio::time::timeout(spec.attempt_timeout, c.renew_lease(request)).await;
                    let outcome = match answer {
                        Err(_) => {
                            Outcome::Failed(format!("no answer within {:?}", spec.attempt_timeout))
                        }
                        Ok(Err(status)) => {
                            Outcome::Failed(format!("{:?}: {}", status.code(), status.message()))
                        }
                        Ok(Ok(reply)) => {
                            let r = reply.into_inner();
                            if !r.granted {
                                Outcome::Refused {
                                    epoch: r.epoch,
                                    reason: r.reason,
                                }
                            } else {
                                // Count from the send time of the attempt the
                                // grant answers, identified by its nonce.
                                match nonces.iter().find(|(n, _)| *n == r.nonce) {
                                    Some((_, at)) => {
                                        let ttl = Duration::from_millis(r.lease_ttl_ms);
                                        Outcome::Granted {
                                            epoch: r.epoch,
                                            ttl,
                                            valid_until: *at + ttl,
                                        }
                                    }
                                    None => Outcome::Failed(format!(
                                        "grant echoed nonce {} that this client never sent \
                                         (attempt nonce {nonce}): ignored",
                                        r.nonce
                                    )),
                                }
                            }
                        }
                    };
                    (outcome, Some(c))
                }
            };
            let answered = !matches!(outcome, Outcome::Failed(_));
            shared.record(Attempt {
                endpoint: endpoint.clone(),
                nonce,
                sent,
                answered: Instant::now(),
                outcome,
            });
            if answered {
                // Keep the channel and start the next round here.
                clients[i] = client;
                preferred = i;
                break;
            }
            // Dropped: the next use of this endpoint reconnects.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_with(grants: &[(u64, u64)]) -> (LeaseClient, Instant) {
        // A client whose thread does nothing: only the bookkeeping is tested.
        let spec = LeaseSpec::new("t", "dc-a", 1, vec!["127.0.0.1:1".into()]);
        let c =
            LeaseClient::start_with(spec, |_body| Ok(std::thread::spawn(|| {}))).expect("spawn");
        let t0 = c.started;
        for (sent, ttl) in grants {
            let sent = t0 + Duration::from_millis(*sent);
            let ttl = Duration::from_millis(*ttl);
            c.shared.record(Attempt {
                endpoint: "e".into(),
                nonce: 1,
                sent,
                answered: sent,
                outcome: Outcome::Granted {
                    epoch: 1,
                    ttl,
                    valid_until: sent + ttl,
                },
            });
        }
        (c, t0)
    }

    fn ms(t0: Instant, v: u64) -> Instant {
        t0 + Duration::from_millis(v)
    }

    /// Leases that overlap leave no lapse; the gaps are between send times.
    #[test]
    fn overlapping_grants_have_no_lapse() {
        let (c, t0) = client_with(&[(0, 3000), (500, 3000), (2500, 3000)]);
        assert!(c.lapses(ms(t0, 0), ms(t0, 5000)).is_empty());
        assert_eq!(
            c.longest_gap_between_grants(ms(t0, 0), ms(t0, 3000)),
            Duration::from_millis(2000)
        );
        assert!(c.held_at(ms(t0, 5400)));
        assert!(!c.held_at(ms(t0, 5500)));
    }

    /// A grant sent after the previous lease ended leaves a lapse exactly
    /// between the two.
    #[test]
    fn a_late_grant_leaves_a_lapse() {
        let (c, t0) = client_with(&[(0, 3000), (3500, 3000)]);
        assert_eq!(
            c.lapses(ms(t0, 0), ms(t0, 7000)),
            vec![(ms(t0, 3000), ms(t0, 3500)), (ms(t0, 6500), ms(t0, 7000))]
        );
        assert_eq!(c.lease_until(), Some(ms(t0, 6500)));
    }
}

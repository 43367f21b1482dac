//! [`Prober`]: one task per target, one Consul task, and a supervisor that
//! owns all counting state and publishes the [`LocalView`].
//!
//! The supervisor is the only owner of mutable state: target tasks and the
//! Consul task send it results over one bounded channel and never touch
//! each other. It does no I/O itself (apart from reading the wall clock for
//! the people-facing timestamps), so it never holds a task back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use tokio::time::MissedTickBehavior;

use crate::config::{ConsulAgentConfig, ConsulMode, DownRule, Policy, ProbeTimers};

use super::check::{CheckSpec, ProbeResult, probe_once};
use super::consul::{ConsulReader, ConsulReading, ConsulTarget};
use super::state::{Health, TargetState, site_health};
use super::stats::{Outcome, ProbeStats};
use super::transport::Transport;
use super::{ConsulEvidence, ConsulView, LocalView, SiteView, TargetView};

/// Capacity of the channel from the probe tasks to the supervisor. The
/// supervisor handles a message in microseconds; the bound only matters if
/// it were starved, and then the tasks wait instead of piling up memory.
pub const RESULT_QUEUE: usize = 256;

/// Longest pause between Consul rounds while Consul asks us to back off.
const MAX_CONSUL_BACKOFF: Duration = Duration::from_secs(30);

/// `(site, target)`.
type Key = (String, String);

/// Probes the sites of the committed policy; see the module docs of
/// [`crate::probe`]. Dropping it stops every task it started.
#[derive(Debug)]
pub struct Prober {
    view: watch::Receiver<Arc<LocalView>>,
    stats: Arc<ProbeStats>,
    supervisor: JoinHandle<()>,
}

impl Prober {
    /// Start probing per the policy; re-plans when the policy changes
    /// (targets added/removed/changed) without losing the state of
    /// unchanged targets. `consul` is this node's agent (`None`: Consul is
    /// not read, and every target's evidence is `Unknown` unless the
    /// policy's mode is `ignore`). Must be called inside a Tokio runtime.
    pub fn start(
        policy: watch::Receiver<Option<Arc<Policy>>>,
        consul: Option<ConsulAgentConfig>,
        transport: Arc<dyn Transport>,
    ) -> Prober {
        let (tx, rx) = mpsc::channel(RESULT_QUEUE);
        let mut supervisor = Supervisor::new(transport, consul, tx);
        let view = supervisor.view_tx.subscribe();
        let stats = Arc::clone(&supervisor.stats);
        let handle = tokio::spawn(async move { supervisor.run(policy, rx).await });
        Prober {
            view,
            stats,
            supervisor: handle,
        }
    }

    /// The latest view, updated after every probe result, Consul round and
    /// re-plan.
    pub fn view(&self) -> watch::Receiver<Arc<LocalView>> {
        self.view.clone()
    }

    /// Every attempt's outcome and duration so far, per target.
    pub fn stats(&self) -> Arc<ProbeStats> {
        Arc::clone(&self.stats)
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        // Aborting the supervisor drops its JoinSet, which aborts every
        // probe task and the Consul task.
        self.supervisor.abort();
    }
}

/// What to probe, derived from the policy.
#[derive(Clone, Debug, Default)]
struct Plan {
    mode: ConsulMode,
    /// `[probe] interval`: the cadence of Consul rounds too.
    interval: Duration,
    sites: Vec<PlanSite>,
}

#[derive(Clone, Debug)]
struct PlanSite {
    name: String,
    rule: DownRule,
    targets: Vec<PlanTarget>,
}

#[derive(Clone, Debug)]
struct PlanTarget {
    key: Key,
    role: String,
    critical: bool,
    /// `None` for a target validation would have refused.
    spec: Option<CheckSpec>,
    timers: ProbeTimers,
    consul: ConsulTarget,
}

impl Plan {
    fn from_policy(policy: &Policy) -> Plan {
        Plan {
            mode: policy.consul.mode,
            interval: policy.probe.interval,
            sites: policy
                .sites
                .iter()
                .map(|site| PlanSite {
                    name: site.name.clone(),
                    rule: site.down_rule,
                    targets: site
                        .targets
                        .iter()
                        .map(|t| PlanTarget {
                            key: (site.name.clone(), t.name.clone()),
                            role: t.role.as_str().to_string(),
                            critical: t.critical,
                            spec: CheckSpec::from_target(t),
                            timers: t.timers(&policy.probe),
                            consul: ConsulTarget {
                                node: t.consul_node_name(),
                                service: t.consul_service.clone(),
                                check: t.consul_check.clone(),
                            },
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    fn targets(&self) -> impl Iterator<Item = &PlanTarget> {
        self.sites.iter().flat_map(|s| s.targets.iter())
    }
}

/// What the Consul task reads each round.
#[derive(Clone, Debug, PartialEq)]
struct ConsulPlan {
    generation: u64,
    interval: Duration,
    keys: Vec<Key>,
    targets: Vec<ConsulTarget>,
}

enum Msg {
    Probe {
        key: Key,
        generation: u64,
        result: ProbeResult,
    },
    Consul {
        generation: u64,
        reading: ConsulReading,
        at_ms: u64,
    },
}

/// One target's task and counting state.
struct Tracked {
    spec: Option<CheckSpec>,
    interval: Duration,
    timeout: Duration,
    /// Results from a task of another generation are stale and dropped.
    generation: u64,
    task: Option<AbortHandle>,
    state: TargetState,
    last_error: Option<String>,
    last_latency_ms: Option<u64>,
}

struct SiteTrack {
    health: Health,
    changed_at_ms: u64,
}

struct Supervisor {
    transport: Arc<dyn Transport>,
    agent: Option<ConsulAgentConfig>,
    tx: mpsc::Sender<Msg>,
    tasks: JoinSet<()>,
    has_policy: bool,
    plan: Plan,
    targets: BTreeMap<Key, Tracked>,
    sites: BTreeMap<String, SiteTrack>,
    consul: Option<(AbortHandle, watch::Sender<Arc<ConsulPlan>>)>,
    consul_generation: u64,
    /// The latest Consul round of the current generation, and when.
    reading: Option<(ConsulReading, u64)>,
    evidence: BTreeMap<Key, ConsulEvidence>,
    view_tx: watch::Sender<Arc<LocalView>>,
    /// Every attempt of the current plan, for `/metrics`.
    stats: Arc<ProbeStats>,
    next_generation: u64,
}

impl Supervisor {
    fn new(
        transport: Arc<dyn Transport>,
        agent: Option<ConsulAgentConfig>,
        tx: mpsc::Sender<Msg>,
    ) -> Supervisor {
        Supervisor {
            transport,
            agent,
            tx,
            tasks: JoinSet::new(),
            has_policy: false,
            plan: Plan::default(),
            targets: BTreeMap::new(),
            sites: BTreeMap::new(),
            consul: None,
            consul_generation: 0,
            reading: None,
            evidence: BTreeMap::new(),
            view_tx: watch::Sender::new(Arc::new(LocalView {
                sites: BTreeMap::new(),
                consul: ConsulView {
                    mode: ConsulMode::default().as_str().to_string(),
                    reachable: false,
                    leader: None,
                    error: Some("no cluster policy yet".into()),
                    fetched_at_ms: 0,
                },
            })),
            stats: Arc::default(),
            next_generation: 0,
        }
    }

    async fn run(
        &mut self,
        mut policy: watch::Receiver<Option<Arc<Policy>>>,
        mut rx: mpsc::Receiver<Msg>,
    ) {
        let first = policy.borrow_and_update().clone();
        self.replan(first);
        self.publish();
        let mut policy_open = true;
        loop {
            tokio::select! {
                changed = policy.changed(), if policy_open => match changed {
                    Ok(()) => {
                        let next = policy.borrow_and_update().clone();
                        self.replan(next);
                    }
                    // The node stopped publishing policies: keep probing the
                    // last one until the Prober is dropped.
                    Err(_) => policy_open = false,
                },
                Some(msg) = rx.recv() => self.apply(msg),
                // Reap finished tasks so the set does not grow, and restart
                // any that ended by itself.
                Some(done) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    self.reaped(done);
                }
            }
            self.publish();
        }
    }

    fn generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    /// Start the task of one target under a new generation (none for a
    /// target without a usable spec).
    fn spawn_target(
        &mut self,
        key: &Key,
        spec: Option<CheckSpec>,
        interval: Duration,
        timeout: Duration,
        first_after: Duration,
    ) -> (u64, Option<AbortHandle>) {
        let generation = self.generation();
        let task = spec.map(|spec| {
            let probe = TargetProbe {
                key: key.clone(),
                generation,
                spec,
                interval,
                timeout,
                first_after,
            };
            let transport = Arc::clone(&self.transport);
            let tx = self.tx.clone();
            self.tasks.spawn(target_loop(probe, transport, tx))
        });
        (generation, task)
    }

    /// A task ended. Aborted ones were replaced on purpose. One that ended
    /// by itself (a panic: the loops never return while the supervisor
    /// lives) must not leave its last word standing: a frozen "up" could
    /// block a failover and a frozen Consul "passing" could veto one
    /// forever. Its state goes back to unknown and it starts again.
    fn reaped(&mut self, done: Result<(tokio::task::Id, ()), tokio::task::JoinError>) {
        let (id, why) = match done {
            Ok((id, ())) => (id, "ended".to_string()),
            Err(e) if e.is_cancelled() => return,
            Err(e) => (e.id(), format!("failed: {e}")),
        };
        if self
            .consul
            .as_ref()
            .is_some_and(|(task, _)| task.id() == id)
        {
            tracing::error!("the Consul reader task {why}; restarting it");
            self.consul = None;
            self.reading = None;
            self.evidence.clear();
            // After a failure, wait a round before reading again: a task
            // that fails at once must not spin.
            self.replan_consul(self.plan.interval);
            return;
        }
        let Some(key) = self
            .targets
            .iter()
            .find(|(_, t)| t.task.as_ref().is_some_and(|task| task.id() == id))
            .map(|(key, _)| key.clone())
        else {
            return;
        };
        tracing::error!(site = %key.0, target = %key.1, "probe task {why}; restarting it");
        let (spec, interval, timeout) = match self.targets.get(&key) {
            Some(t) => (t.spec.clone(), t.interval, t.timeout),
            None => return,
        };
        // Wait an interval before probing again, so a task that fails at
        // once cannot spin.
        let (generation, task) = self.spawn_target(&key, spec, interval, timeout, interval);
        if let Some(tracked) = self.targets.get_mut(&key) {
            tracked.generation = generation;
            tracked.task = task;
            tracked.state = TargetState::new();
            tracked.last_error = Some(format!("the probe task {why} and was restarted"));
        }
        self.refresh_sites(now_ms());
    }

    fn replan(&mut self, policy: Option<Arc<Policy>>) {
        self.has_policy = policy.is_some();
        let plan = policy.as_deref().map(Plan::from_policy).unwrap_or_default();
        let now = now_ms();

        // Targets that left the policy stop; the others keep or restart.
        let wanted: BTreeMap<&Key, &PlanTarget> = plan.targets().map(|t| (&t.key, t)).collect();
        self.targets.retain(|key, tracked| {
            let keep = wanted.contains_key(key);
            if !keep && let Some(task) = &tracked.task {
                task.abort();
            }
            keep
        });
        self.stats
            .retain(|site, target| wanted.contains_key(&(site.to_string(), target.to_string())));
        for target in plan.targets() {
            let (interval, timeout) = (target.timers.interval, target.timers.timeout);
            if let Some(tracked) = self.targets.get_mut(&target.key) {
                let same_check = tracked.spec == target.spec;
                if same_check && tracked.interval == interval && tracked.timeout == timeout {
                    continue;
                }
                if let Some(task) = tracked.task.take() {
                    task.abort();
                }
                if !same_check {
                    // It measures something else now: its old count says
                    // nothing about the new check.
                    tracked.state = TargetState::new();
                    tracked.last_error = None;
                    tracked.last_latency_ms = None;
                }
            }
            let (generation, task) = self.spawn_target(
                &target.key,
                target.spec.clone(),
                interval,
                timeout,
                Duration::ZERO,
            );
            let tracked = self.targets.entry(target.key.clone()).or_insert(Tracked {
                spec: None,
                interval,
                timeout,
                generation,
                task: None,
                state: TargetState::new(),
                last_error: None,
                last_latency_ms: None,
            });
            tracked.spec = target.spec.clone();
            tracked.interval = interval;
            tracked.timeout = timeout;
            tracked.generation = generation;
            tracked.task = task;
            if target.spec.is_none() {
                tracked.last_error = Some("the target's probe is not fully configured".into());
            }
        }

        let names: Vec<&str> = plan.sites.iter().map(|s| s.name.as_str()).collect();
        self.sites.retain(|name, _| names.contains(&name.as_str()));
        for site in &plan.sites {
            self.sites.entry(site.name.clone()).or_insert(SiteTrack {
                health: Health::Unknown,
                changed_at_ms: now,
            });
        }

        self.plan = plan;
        self.replan_consul(Duration::ZERO);
        self.refresh_sites(now);
    }

    /// Start, update or stop the Consul task to match the plan; a new task
    /// waits `first_after` before its first round.
    fn replan_consul(&mut self, first_after: Duration) {
        let wanted = self.has_policy && self.plan.mode != ConsulMode::Ignore;
        let agent = match (&self.agent, wanted) {
            (Some(agent), true) => agent.clone(),
            _ => {
                if let Some((task, _)) = self.consul.take() {
                    task.abort();
                }
                self.reading = None;
                self.evidence.clear();
                return;
            }
        };
        let (keys, targets): (Vec<Key>, Vec<ConsulTarget>) = self
            .plan
            .targets()
            .map(|t| (t.key.clone(), t.consul.clone()))
            .unzip();
        let unchanged = self.consul.as_ref().is_some_and(|(_, plan)| {
            let current = plan.borrow();
            current.keys == keys
                && current.targets == targets
                && current.interval == self.plan.interval
        });
        if unchanged {
            return;
        }
        // A new generation: readings made for the old targets are dropped,
        // and no evidence is carried over to a changed mapping.
        self.consul_generation = self.generation();
        self.reading = None;
        self.evidence.clear();
        let plan = Arc::new(ConsulPlan {
            generation: self.consul_generation,
            interval: self.plan.interval,
            keys,
            targets,
        });
        match &self.consul {
            Some((_, sender)) => {
                sender.send_replace(plan);
            }
            None => {
                let (sender, receiver) = watch::channel(plan);
                // A TLS agent gets a transport of its own, with its CA and
                // this witness's client certificate.
                let transport = match &agent.tls {
                    Some(tls) => match crate::probe::RealTransport::for_consul(tls) {
                        Ok(t) => Arc::new(t) as Arc<dyn crate::probe::Transport>,
                        Err(e) => {
                            tracing::error!("Consul over TLS: {e}; Consul is not read");
                            return;
                        }
                    },
                    None => Arc::clone(&self.transport),
                };
                let reader = ConsulReader::new(agent, transport);
                let task =
                    self.tasks
                        .spawn(consul_loop(reader, receiver, self.tx.clone(), first_after));
                self.consul = Some((task, sender));
            }
        }
    }

    fn apply(&mut self, msg: Msg) {
        match msg {
            Msg::Probe {
                key,
                generation,
                result,
            } => {
                let Some(tracked) = self.targets.get_mut(&key) else {
                    return;
                };
                if tracked.generation != generation {
                    return;
                }
                let Some(timers) = self.plan.targets().find(|t| t.key == key).map(|t| t.timers)
                else {
                    return;
                };
                tracked
                    .state
                    .record(result.ok, timers.fail_after, timers.recover_after);
                let outcome = Outcome::of(result.ok, result.latency, tracked.timeout);
                self.stats.record(&key.0, &key.1, outcome, result.latency);
                tracked.last_error = result.error;
                tracked.last_latency_ms =
                    Some(u64::try_from(result.latency.as_millis()).unwrap_or(u64::MAX));
                self.refresh_sites(now_ms());
            }
            Msg::Consul {
                generation,
                reading,
                at_ms,
            } => {
                if generation != self.consul_generation {
                    return;
                }
                let keys = self
                    .consul
                    .as_ref()
                    .map(|(_, plan)| plan.borrow().keys.clone())
                    .unwrap_or_default();
                self.evidence = keys
                    .into_iter()
                    .zip(reading.evidence.iter().cloned())
                    .collect();
                self.reading = Some((reading, at_ms));
            }
        }
    }

    /// Recompute every site's health; stamp the ones that changed.
    fn refresh_sites(&mut self, now: u64) {
        for site in &self.plan.sites {
            let health = site_health(
                site.rule,
                site.targets.iter().filter(|t| t.critical).map(|t| {
                    self.targets
                        .get(&t.key)
                        .map_or(Health::Unknown, |tracked| tracked.state.health())
                }),
            );
            if let Some(track) = self.sites.get_mut(&site.name)
                && track.health != health
            {
                track.health = health;
                track.changed_at_ms = now;
            }
        }
    }

    fn publish(&self) {
        let view = LocalView {
            sites: self
                .plan
                .sites
                .iter()
                .map(|site| (site.name.clone(), self.site_view(site)))
                .collect(),
            consul: self.consul_view(),
        };
        self.view_tx.send_if_modified(|current| {
            if **current == view {
                false
            } else {
                *current = Arc::new(view);
                true
            }
        });
    }

    fn site_view(&self, site: &PlanSite) -> SiteView {
        let track = self.sites.get(&site.name);
        SiteView {
            site: site.name.clone(),
            health: track.map_or(Health::Unknown, |t| t.health),
            changed_at_ms: track.map_or(0, |t| t.changed_at_ms),
            targets: site
                .targets
                .iter()
                .map(|target| {
                    let tracked = self.targets.get(&target.key);
                    TargetView {
                        name: target.key.1.clone(),
                        role: target.role.clone(),
                        critical: target.critical,
                        health: tracked.map_or(Health::Unknown, |t| t.state.health()),
                        consecutive: tracked.map_or(0, |t| t.state.consecutive()),
                        last_error: tracked.and_then(|t| t.last_error.clone()),
                        last_latency_ms: tracked.and_then(|t| t.last_latency_ms),
                        consul: self.evidence_of(&target.key),
                    }
                })
                .collect(),
        }
    }

    fn evidence_of(&self, key: &Key) -> Option<ConsulEvidence> {
        if self.plan.mode == ConsulMode::Ignore {
            return None;
        }
        if self.agent.is_none() {
            return Some(ConsulEvidence::Unknown {
                reason: NO_AGENT.to_string(),
            });
        }
        Some(
            self.evidence
                .get(key)
                .cloned()
                .unwrap_or_else(|| ConsulEvidence::Unknown {
                    reason: "no Consul reading yet".into(),
                }),
        )
    }

    fn consul_view(&self) -> ConsulView {
        let mode = self.plan.mode.as_str().to_string();
        let empty = |error: Option<&str>| ConsulView {
            mode: mode.clone(),
            reachable: false,
            leader: None,
            error: error.map(str::to_string),
            fetched_at_ms: 0,
        };
        if !self.has_policy {
            return empty(Some("no cluster policy yet"));
        }
        if self.plan.mode == ConsulMode::Ignore {
            return empty(None);
        }
        if self.agent.is_none() {
            return empty(Some(NO_AGENT));
        }
        match &self.reading {
            None => empty(Some("no Consul reading yet")),
            Some((reading, at_ms)) => ConsulView {
                mode,
                reachable: reading.reachable,
                leader: reading.leader.clone(),
                error: reading.error.clone(),
                fetched_at_ms: *at_ms,
            },
        }
    }
}

const NO_AGENT: &str =
    "this witness has no [consul] table in its node file (or enabled = false): Consul is not read";

/// What one target task probes, and when.
struct TargetProbe {
    key: Key,
    generation: u64,
    spec: CheckSpec,
    interval: Duration,
    timeout: Duration,
    /// Delay before the first attempt (zero, except after a restart).
    first_after: Duration,
}

/// Probe one target forever, one attempt per `interval`.
async fn target_loop(probe: TargetProbe, transport: Arc<dyn Transport>, tx: mpsc::Sender<Msg>) {
    let TargetProbe {
        key,
        generation,
        spec,
        interval,
        timeout,
        first_after,
    } = probe;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + first_after, interval);
    // After an attempt that ran long, wait a full interval again rather
    // than firing a burst of catch-up probes.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let result = probe_once(transport.as_ref(), &spec, timeout).await;
        let msg = Msg::Probe {
            key: key.clone(),
            generation,
            result,
        };
        if tx.send(msg).await.is_err() {
            return;
        }
    }
}

/// Read Consul every `interval` (the plan's), backing off while Consul
/// answers 429, and at once when the plan changes.
async fn consul_loop(
    reader: ConsulReader,
    mut plan: watch::Receiver<Arc<ConsulPlan>>,
    tx: mpsc::Sender<Msg>,
    first_after: Duration,
) {
    tokio::time::sleep(first_after).await;
    let mut backoff = 0u32;
    loop {
        let current = Arc::clone(&plan.borrow_and_update());
        // Each call is bounded by the agent timeout; a round is at most two
        // waves of calls, MAX_CONCURRENT_CALLS at a time, plus slack. The
        // bound only guards against a transport that breaks its contract.
        let waves = u32::try_from(
            current
                .targets
                .len()
                .div_ceil(super::consul::MAX_CONCURRENT_CALLS),
        )
        .unwrap_or(u32::MAX)
        .saturating_mul(2)
        .saturating_add(2);
        let deadline = reader.agent().timeout.saturating_mul(waves);
        let reading = match tokio::time::timeout(deadline, reader.read(&current.targets)).await {
            Ok(reading) => reading,
            Err(_) => {
                let reason = format!(
                    "the Consul round took longer than {}",
                    crate::config::show(deadline)
                );
                ConsulReading {
                    reachable: false,
                    leader: None,
                    error: Some(reason.clone()),
                    rate_limited: false,
                    evidence: current
                        .targets
                        .iter()
                        .map(|_| ConsulEvidence::Unknown {
                            reason: reason.clone(),
                        })
                        .collect(),
                }
            }
        };
        let pause = if reading.rate_limited {
            backoff = backoff.saturating_add(1).min(6);
            current
                .interval
                .saturating_mul(1 << backoff)
                .min(MAX_CONSUL_BACKOFF)
        } else {
            backoff = 0;
            current.interval
        };
        let msg = Msg::Consul {
            generation: current.generation,
            reading,
            at_ms: now_ms(),
        };
        if tx.send(msg).await.is_err() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            changed = plan.changed() => if changed.is_err() {
                return;
            },
        }
    }
}

/// Wall-clock Unix milliseconds, for people-facing timestamps only.
fn now_ms() -> u64 {
    crate::clock::unix_ms()
}

#[cfg(test)]
mod tests {
    use futures::future::BoxFuture;

    use super::*;
    use crate::config::{ProbeKind, Role, SitePolicy, TargetPolicy};
    use crate::probe::transport::{CommandOutput, GrpcHealth, HttpRequest, HttpResponse};
    use crate::probe::{TransportError, consul_allows_down};

    /// A transport whose every call waits forever: target tasks exist but
    /// never report, so the test feeds results by hand.
    struct Silent;

    impl Transport for Silent {
        fn tcp_connect<'a>(
            &'a self,
            _: &'a str,
            _: Duration,
        ) -> BoxFuture<'a, Result<(), TransportError>> {
            Box::pin(std::future::pending())
        }
        fn http_get(&self, _: HttpRequest) -> BoxFuture<'_, Result<HttpResponse, TransportError>> {
            Box::pin(std::future::pending())
        }
        fn grpc_health<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
            _: Duration,
        ) -> BoxFuture<'a, Result<GrpcHealth, TransportError>> {
            Box::pin(std::future::pending())
        }
        fn run_command<'a>(
            &'a self,
            _: &'a [String],
            _: Duration,
        ) -> BoxFuture<'a, Result<CommandOutput, TransportError>> {
            Box::pin(std::future::pending())
        }
    }

    fn tcp(name: &str, address: &str) -> TargetPolicy {
        let mut t = TargetPolicy::new(name, Role::Mailstore, ProbeKind::Tcp);
        t.address = Some(address.into());
        t
    }

    fn policy(targets: Vec<TargetPolicy>) -> Arc<Policy> {
        let mut p = Policy::default();
        p.consul.mode = ConsulMode::Ignore;
        p.sites = vec![SitePolicy {
            name: "dc-a".into(),
            active: true,
            down_rule: DownRule::All,
            mail_hosts: Vec::new(),
            targets,
        }];
        Arc::new(p)
    }

    fn key(target: &str) -> Key {
        ("dc-a".to_string(), target.to_string())
    }

    fn feed(sup: &mut Supervisor, target: &str, ok: bool) {
        let generation = sup.targets[&key(target)].generation;
        sup.apply(Msg::Probe {
            key: key(target),
            generation,
            result: ProbeResult {
                ok,
                error: (!ok).then(|| "refused".to_string()),
                latency: Duration::from_millis(3),
            },
        });
    }

    fn health(sup: &Supervisor, target: &str) -> (Health, u32) {
        let t = &sup.targets[&key(target)];
        (t.state.health(), t.state.consecutive())
    }

    /// A re-plan keeps the counted state of targets whose probe did not
    /// change (even when their interval or Consul mapping did), resets
    /// changed ones, adds new ones as unknown, drops removed ones, and
    /// ignores results from a replaced task.
    #[tokio::test]
    async fn replan_keeps_the_state_of_unchanged_targets() {
        let (tx, _rx) = mpsc::channel(RESULT_QUEUE);
        let mut sup = Supervisor::new(Arc::new(Silent), None, tx);
        sup.replan(Some(policy(vec![
            tcp("a", "a.example.com:1"),
            tcp("b", "b.example.com:1"),
        ])));
        for _ in 0..2 {
            feed(&mut sup, "a", true);
        }
        for _ in 0..3 {
            feed(&mut sup, "b", false);
        }
        assert_eq!(health(&sup, "a"), (Health::Up, 2));
        assert_eq!(health(&sup, "b"), (Health::Down, 3));
        assert_eq!(
            sup.sites["dc-a"].health,
            Health::Up,
            "rule all: one critical target up"
        );
        let old_b = sup.targets[&key("b")].generation;

        let mut a = tcp("a", "a.example.com:1");
        a.interval = Some(Duration::from_secs(1));
        a.consul_service = Some("carbonio-mailbox".into());
        let mut p2 = policy(vec![
            a,
            tcp("b", "b.example.com:2"),
            tcp("c", "c.example.com:1"),
        ]);
        Arc::make_mut(&mut p2).sites[0].down_rule = DownRule::Any;
        sup.replan(Some(p2));
        assert_eq!(health(&sup, "a"), (Health::Up, 2), "same check: state kept");
        assert_eq!(
            health(&sup, "b"),
            (Health::Unknown, 0),
            "new address: counted afresh"
        );
        assert_eq!(health(&sup, "c"), (Health::Unknown, 0), "new target");
        assert_eq!(
            sup.sites["dc-a"].health,
            Health::Unknown,
            "rule any now, b and c unknown"
        );

        // A result of the replaced task of b is stale and changes nothing.
        sup.apply(Msg::Probe {
            key: key("b"),
            generation: old_b,
            result: ProbeResult {
                ok: false,
                error: None,
                latency: Duration::ZERO,
            },
        });
        assert_eq!(health(&sup, "b"), (Health::Unknown, 0));

        sup.replan(Some(policy(vec![tcp("c", "c.example.com:1")])));
        assert!(!sup.targets.contains_key(&key("a")) && !sup.targets.contains_key(&key("b")));
        let view = {
            sup.publish();
            sup.view_tx.borrow().clone()
        };
        let names: Vec<&str> = view.sites["dc-a"]
            .targets
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(names, ["c"]);
        assert_eq!(
            view.sites["dc-a"].targets[0].consul, None,
            "mode ignore: no evidence"
        );
        assert_eq!(view.consul.mode, "ignore");
        assert_eq!(view.consul.error, None);
    }

    /// Without a `[consul]` table, a policy that wants Consul gets evidence
    /// that says why it is missing, and that evidence vetoes nothing.
    #[tokio::test]
    async fn missing_agent_is_unknown_evidence_that_vetoes_nothing() {
        let (tx, _rx) = mpsc::channel(RESULT_QUEUE);
        let mut sup = Supervisor::new(Arc::new(Silent), None, tx);
        let mut p = policy(vec![tcp("a", "a.example.com:1")]);
        Arc::make_mut(&mut p).consul.mode = ConsulMode::Corroborate;
        sup.replan(Some(p));
        sup.publish();
        let view = sup.view_tx.borrow().clone();
        let evidence = view.sites["dc-a"].targets[0].consul.clone();
        assert!(
            matches!(&evidence, Some(ConsulEvidence::Unknown { reason }) if reason.contains("[consul]")),
            "{evidence:?}"
        );
        assert!(consul_allows_down(
            ConsulMode::Corroborate,
            evidence.as_ref()
        ));
        assert_eq!(view.consul.mode, "corroborate");
        assert!(
            view.consul
                .error
                .as_deref()
                .is_some_and(|e| e.contains("[consul]"))
        );
        assert!(sup.consul.is_none(), "no Consul task without an agent");
    }

    /// Succeeds, except that its third call panics.
    struct PanicsOnce {
        calls: std::sync::atomic::AtomicU32,
    }

    impl Transport for PanicsOnce {
        fn tcp_connect<'a>(
            &'a self,
            _: &'a str,
            _: Duration,
        ) -> BoxFuture<'a, Result<(), TransportError>> {
            let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move {
                assert_ne!(n, 2, "deliberate panic in a probe (this test expects it)");
                Ok(())
            })
        }
        fn http_get(&self, r: HttpRequest) -> BoxFuture<'_, Result<HttpResponse, TransportError>> {
            Silent.http_get(r)
        }
        fn grpc_health<'a>(
            &'a self,
            a: &'a str,
            s: &'a str,
            t: Duration,
        ) -> BoxFuture<'a, Result<GrpcHealth, TransportError>> {
            Box::pin(async move { Silent.grpc_health(a, s, t).await })
        }
        fn run_command<'a>(
            &'a self,
            a: &'a [String],
            t: Duration,
        ) -> BoxFuture<'a, Result<CommandOutput, TransportError>> {
            Box::pin(async move { Silent.run_command(a, t).await })
        }
    }

    /// A probe task that dies does not leave its target's last health
    /// standing: the target turns unknown, says why, and is probed again.
    #[tokio::test]
    async fn a_probe_task_that_dies_is_restarted_and_forgets_its_health() {
        let mut p = policy(vec![tcp("a", "a.example.com:1")]);
        Arc::make_mut(&mut p).probe.interval = Duration::from_millis(300);
        Arc::make_mut(&mut p).probe.timeout = Duration::from_millis(300);
        let (_tx, rx) = watch::channel(Some(p));
        let transport = Arc::new(PanicsOnce {
            calls: std::sync::atomic::AtomicU32::new(0),
        });
        let prober = Prober::start(rx, None, transport.clone());
        let mut view = prober.view();
        let mut saw_up = false;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        let restarted = loop {
            let v = view.borrow_and_update().clone();
            if let Some(t) = v.sites.get("dc-a").map(|s| &s.targets[0]) {
                saw_up |= t.health == Health::Up;
                if t.last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("restarted"))
                {
                    break t.clone();
                }
            }
            match tokio::time::timeout_at(deadline, view.changed()).await {
                Ok(Ok(())) => {}
                _ => panic!("the dead task was never reported; last view {v:?}"),
            }
        };
        assert!(saw_up, "up after the first two probes");
        assert_eq!(restarted.health, Health::Unknown);
        assert_eq!(restarted.consecutive, 0);
        let again = tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                if view.borrow_and_update().sites["dc-a"].targets[0].health == Health::Up {
                    break;
                }
                if view.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
        assert!(again.is_ok(), "probed again after the restart");
        assert!(transport.calls.load(std::sync::atomic::Ordering::SeqCst) >= 5);
    }
}

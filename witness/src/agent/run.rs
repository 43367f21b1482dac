//! `witness agent`: the main loop.
//!
//! # What it does
//!
//! One task watches the verdict (`WatchVerdict` on any reachable witness,
//! moving to the next one after an error, with a short backoff); the main
//! loop reacts to it, renews the lease, fences, runs hooks, and hands one
//! directive at a time to [`directive`](super::directive). Its state is
//! one of [`Serving`]:
//!
//! ```text
//!             grant at the current epoch          lease deadline passed
//!  starting ──────────────────────────▶ serving ─────────────────────────▶ fenced
//!     │                                  ▲   │                               │
//!     │ verdict: another site active     │   │ verdict: another site active  │ grant at the
//!     ▼                                  │   ▼ (fence hooks first)           │ current epoch
//!  standby ──────────────────────────────┘ standby ◀──── verdict ────────────┤ (unfence hooks)
//!           grant (its site active again)                                     ▼
//!                                                                          serving
//! ```
//!
//! - **Renewal.** While the verdict names its site active, every
//!   `renew_interval` (the last grant's `renew_interval_ms`; 400 ms until
//!   it knows) the agent sends `RenewLease` through one witness after the
//!   other until one answers, each attempt bounded by two renew intervals,
//!   with a fresh random nonce, its state, `service_healthy` (the
//!   `[agent] health_check` command's last result; *false* without one, so
//!   a mere running agent never vetoes a failover), its `fence_timeout`
//!   and its watchdog timeout.
//! - **Hooks.** `activate` runs once per epoch, when the agent holds a
//!   lease at that epoch *and* its role's gate is open (every gate
//!   directive done: a proxy announces itself only after the promotion).
//!   `deactivate` runs once each time the verdict moves its site to
//!   standby. `fence` runs when the lease runs out; `unfence` when a new
//!   grant at the current epoch ends a fence. Hooks get `WITNESS_EPOCH`,
//!   `WITNESS_SITE`, `WITNESS_ROLE`, `WITNESS_AGENT` and `WITNESS_HOOK`.
//!   `activate`, `deactivate` and `unfence` run beside the loop, so a slow
//!   hook never delays a fence; a fence kills whatever hook is running.
//! - **Directives.** For the first directive of the current epoch for its
//!   site and role that is `pending` with every `after` directive done,
//!   while it holds a valid lease at that epoch: claim, run, renew, report
//!   (see [`directive`](super::directive)); one at a time.
//! - **Serving log.** Every state change is logged and appended to
//!   `[agent] state_log` ([`serving`](super::serving)).
//!
//! # Why it never serves past its lease
//!
//! The leader activates another site only after waiting
//! `lease_ttl × (1+ρ)/(1−ρ) + margin` since its last grant to this site
//! (DESIGN.md §3.4). The agent makes that wait sufficient:
//!
//! 1. *The lease is counted from the send.* A grant counts only if it
//!    echoes the nonce of an attempt this agent sent, and it lasts until
//!    that attempt's send instant (a [`BootInstant`] taken just before
//!    sending) plus `lease_ttl`. The leader's grant answered a request sent
//!    no earlier than that, so the agent's lease ends no later than the
//!    one the leader waits out, however slow the answer was. Every older
//!    nonce is forgotten with its round.
//! 2. *Expiry is checked on `CLOCK_BOOTTIME`, first.* Each turn of the loop
//!    starts by comparing the lease deadline with BOOTTIME (which counts
//!    suspended time), and the loop sleeps at most until the deadline. A
//!    sleep that overran (the [`Ticker`] reports a stall: SIGSTOP, swap,
//!    a frozen cgroup) ends in that same check before any other step, so a
//!    grant, hook or directive is never acted on with a lease that ran out
//!    while the process was not running.
//! 3. *Fencing is immediate and bounded.* When the deadline passes the
//!    fence hooks run at once, retried until they succeed or
//!    `fence_timeout` passes, which must fit in `margin` (the leader
//!    refuses leases to an agent that says otherwise). Any running hook or
//!    directive command is killed with its whole process group (the
//!    directive's runner watches the same lease).
//! 4. *The watchdog covers what the agent cannot.* It is armed when the
//!    agent first holds a lease and petted only while the lease is valid.
//!    Once the fence hooks have succeeded the node is fenced, so the
//!    watchdog is disarmed with the magic close: no reboot is needed. If
//!    fencing fails it is simply no longer petted, and the machine reboots
//!    within the watchdog timeout (≤ `margin`): the outside fence. An
//!    agent that dies or hangs stops petting too. A paused VM is the one
//!    case no agent code can bound (its clocks stop): that needs the
//!    router's BFD.
//! 5. *Unfencing needs a new grant at the current epoch.* A fenced agent
//!    serves again only after the leader granted a renewal sent after the
//!    fence (so counted from a fresh send), never on its own.
//! 6. *A clean stop keeps the promise.* On SIGTERM/SIGINT any directive
//!    command is killed; if the agent was serving it runs the fence hooks
//!    (a stopped agent can no longer fence later), then disarms the
//!    watchdog and exits. An agent that was not serving just exits.
//!
//! # What it does not do
//!
//! It decides nothing about which site is active, reads no Consul, and
//! never uses the wall clock for a decision (only for the serving log).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use witness_proto::{GetVerdictRequest, RenewLeaseReply, RenewLeaseRequest, Verdict};

use super::carbonio::Carbonio;
use super::client::Witnesses;
use super::clock::{BootInstant, Deadline, Ticker};
use super::config::{AgentConfig, HookCommand};
use super::directive::{self, Finished};
use super::hooks::{self, Backoff};
use super::serving::{Serving, ServingLog};
use super::watchdog::{Watchdog, WatchdogError};
use crate::sabotage::{self, Sabotage};

/// Renew interval until the first grant says the policy's.
pub const DEFAULT_RENEW_INTERVAL: Duration = Duration::from_millis(400);
/// The loop wakes at least this often (lease check, watchdog pet).
const TICK: Duration = Duration::from_millis(100);
/// A sleep that overran by more than this is a stall. Well below the renew
/// interval and the lease, above ordinary scheduling jitter.
const STALL_TOLERANCE: Duration = Duration::from_millis(250);
/// Pause before re-subscribing after a verdict stream ended or failed.
const WATCH_BACKOFF: Duration = Duration::from_millis(300);
/// Bound on opening a verdict stream.
const WATCH_OPEN_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause before retrying a failed `activate` or `unfence` hook.
const HOOK_RETRY: Duration = Duration::from_secs(2);
/// Pause before asking again for a directive whose claim was refused.
const CLAIM_RETRY: Duration = Duration::from_secs(1);
/// How often the health check runs when there is one.
const HEALTH_EVERY: Duration = Duration::from_millis(500);

/// Who this agent is, as sent with every request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub site: String,
    pub role: String,
}

/// A lease held at `epoch`, valid strictly before `deadline`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    pub epoch: u64,
    pub deadline: Deadline,
}

impl Lease {
    fn valid_at(&self, epoch: u64) -> bool {
        self.epoch == epoch && !self.deadline.expired()
    }
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The watchdog configuration cannot be honoured (e.g. `required` and
    /// no device): fix the device or the mode.
    #[error(transparent)]
    Watchdog(#[from] WatchdogError),
    /// The TLS files cannot be used: the message names the file and the fix.
    #[error("{0}")]
    Tls(String),
}

/// Which local hook list a hook job runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HookKind {
    Activate,
    Deactivate,
    Unfence,
}

impl HookKind {
    fn name(self) -> &'static str {
        match self {
            HookKind::Activate => "activate",
            HookKind::Deactivate => "deactivate",
            HookKind::Unfence => "unfence",
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A hook list running beside the loop.
struct HookJob {
    kind: HookKind,
    epoch: u64,
    run: BoxFuture<bool>,
}

/// What one renewal round got.
enum Round {
    /// A witness answered the attempt sent at `sent`, echoing its nonce.
    Answer {
        sent: BootInstant,
        epoch: u64,
        reply: RenewLeaseReply,
    },
    /// No usable answer from any witness.
    Failed(String),
}

/// The work running beside the loop; dropping any of it stops it.
#[derive(Default)]
struct Jobs {
    renewal: Option<BoxFuture<Round>>,
    hook: Option<HookJob>,
    directive: Option<JoinHandle<Finished>>,
}

struct Agent {
    config: AgentConfig,
    me: Identity,
    witnesses: Arc<Witnesses>,
    carbonio: Option<Carbonio>,
    watchdog: Option<Watchdog>,
    log: ServingLog,
    state: Serving,
    /// When `state` began.
    state_since: BootInstant,
    verdict: Option<Verdict>,
    lease: Option<Lease>,
    lease_tx: watch::Sender<Option<Lease>>,
    renew_interval: Duration,
    next_renewal: BootInstant,
    healthy: Arc<AtomicBool>,
    /// Ask the verdict watcher to move to another witness.
    rotate: Arc<Notify>,
    /// The epoch whose `activate` hooks succeeded.
    activated: Option<u64>,
    unfence_pending: bool,
    /// The last fence's hooks failed: the watchdog is left armed and
    /// unpetted, so the machine reboots, until a new grant.
    fence_failed: bool,
    hook_retry_at: BootInstant,
    claim_retry_at: BootInstant,
}

/// Run the agent until `shutdown` resolves.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let trust = config.trust().map_err(AgentError::Tls)?;
    let watchdog = Watchdog::from_config(&config.watchdog)?;
    // The reloader lives as long as the runtime: the agent's process.
    let (_keep_reloading, reload_stop) = watch::channel(false);
    match &trust {
        Some(trust) => {
            tracing::info!(
                identity = %trust.own(),
                expires = %crate::clock::format_unix(trust.current().own.not_after),
                "mutual TLS to the witnesses"
            );
            trust.spawn_reloader(reload_stop);
        }
        None => tracing::warn!(
            "INSECURE: this agent talks to the witnesses without TLS (tls.insecure = true); \
             anyone on the network can impersonate a witness to it. Never run it so outside a \
             developer's machine."
        ),
    }
    let witnesses = Arc::new(Witnesses::new(&config.agent.witnesses, trust));
    let (lease_tx, _) = watch::channel(None);
    let now = BootInstant::now();
    let mut agent = Agent {
        me: Identity {
            name: config.agent.name.clone(),
            site: config.agent.site.clone(),
            role: config.agent.role.to_string(),
        },
        carbonio: config.carbonio().map(Carbonio::new),
        log: ServingLog::new(config.agent.state_log.clone()),
        witnesses: witnesses.clone(),
        watchdog,
        state: Serving::Starting,
        state_since: now,
        verdict: None,
        lease: None,
        lease_tx,
        renew_interval: DEFAULT_RENEW_INTERVAL,
        next_renewal: now,
        healthy: Arc::new(AtomicBool::new(false)),
        rotate: Arc::new(Notify::new()),
        activated: None,
        unfence_pending: false,
        fence_failed: false,
        hook_retry_at: now,
        claim_retry_at: now,
        config,
    };
    agent.log.record(
        Serving::Starting,
        0,
        &format!(
            "agent {} ({} at {}) started",
            agent.me.name, agent.me.role, agent.me.site
        ),
    );

    let (verdict_tx, mut verdicts) = watch::channel(None);
    let watcher = tokio::spawn(watch_verdicts(
        witnesses.clone(),
        verdict_tx,
        agent.rotate.clone(),
    ));
    let health = agent
        .config
        .agent
        .health_check
        .clone()
        .map(|check| tokio::spawn(health_loop(check, agent.healthy.clone())));

    let ticker = Ticker::new(STALL_TOLERANCE);
    let mut jobs = Jobs::default();
    // `changed()` marks the value seen, so its branch sets this flag.
    let mut verdict_changed = false;
    tokio::pin!(shutdown);
    loop {
        // 1. The lease, before anything else (also right after a stall).
        agent.check_lease(&mut jobs).await;
        // 2. What the witnesses decided.
        if verdict_changed || verdicts.has_changed().unwrap_or(false) {
            verdict_changed = false;
            let v = verdicts.borrow_and_update().clone();
            if let Some(v) = v {
                agent.on_verdict(v, &mut jobs).await;
            }
        }
        // 3. Start what is due.
        agent.start_renewal(&mut jobs);
        agent.start_hook(&mut jobs);
        agent.start_directive(&mut jobs);
        agent.pet_watchdog();

        let wake = match agent.lease {
            Some(l) => TICK
                .min(l.deadline.remaining())
                .max(Duration::from_millis(1)),
            None => TICK,
        };
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            _stall = ticker.sleep(wake) => {
                // A stall is logged by the ticker; the lease check at the
                // top of the loop is the first thing that runs next.
            }
            changed = verdicts.changed() => {
                if changed.is_err() {
                    tracing::error!("the verdict watcher stopped; stopping the agent");
                    break;
                }
                verdict_changed = true;
            }
            round = async {
                match jobs.renewal.as_mut() {
                    Some(r) => r.await,
                    None => std::future::pending().await,
                }
            } => {
                jobs.renewal = None;
                // A grant is only used after the lease check: the round may
                // have ended after a stall.
                agent.check_lease(&mut jobs).await;
                agent.on_round(round, &mut jobs);
            }
            ok = async {
                match jobs.hook.as_mut() {
                    Some(h) => h.run.as_mut().await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some(job) = jobs.hook.take() {
                    agent.on_hook_done(job.kind, job.epoch, ok);
                }
            }
            finished = async {
                match jobs.directive.as_mut() {
                    Some(h) => h.await,
                    None => std::future::pending().await,
                }
            } => {
                jobs.directive = None;
                agent.on_directive_done(finished);
            }
        }
    }

    // ---- clean stop ---------------------------------------------------------
    tracing::info!("stopping");
    jobs.hook = None;
    jobs.renewal = None;
    if let Some(d) = jobs.directive.take() {
        // Aborting drops the directive's future, which kills its command's
        // process group; its claim then expires on the leader.
        d.abort();
        let _ = d.await;
    }
    if agent.state == Serving::Serving {
        agent
            .fence(
                &mut jobs,
                "the agent is stopping: a stopped agent cannot fence itself later",
            )
            .await;
    }
    if agent.fence_failed {
        tracing::error!(
            "the last fence FAILED: leaving the watchdog armed, so this machine reboots"
        );
    } else if let Some(w) = agent.watchdog.as_mut()
        && let Err(e) = w.disarm()
    {
        tracing::error!("{e}");
    }
    watcher.abort();
    if let Some(h) = health {
        h.abort();
    }
    Ok(())
}

impl Agent {
    fn epoch(&self) -> Option<u64> {
        self.verdict.as_ref().map(|v| v.epoch)
    }

    fn site_active(&self) -> bool {
        self.verdict
            .as_ref()
            .is_some_and(|v| v.active_site == self.me.site)
    }

    /// A valid lease at the current epoch.
    fn holds_lease(&self) -> bool {
        match (self.lease, self.epoch()) {
            (Some(l), Some(epoch)) => l.valid_at(epoch),
            _ => false,
        }
    }

    fn set_state(&mut self, state: Serving, reason: &str) {
        if self.state != state {
            self.state = state;
            self.state_since = BootInstant::now();
            self.log.record(state, self.epoch().unwrap_or(0), reason);
        }
    }

    fn set_lease(&mut self, lease: Option<Lease>) {
        self.lease = lease;
        self.lease_tx.send_replace(lease);
    }

    fn hook_env(&self, hook: &str, epoch: u64) -> Vec<(String, String)> {
        vec![
            ("WITNESS_EPOCH".into(), epoch.to_string()),
            ("WITNESS_SITE".into(), self.me.site.clone()),
            ("WITNESS_ROLE".into(), self.me.role.clone()),
            ("WITNESS_AGENT".into(), self.me.name.clone()),
            ("WITNESS_HOOK".into(), hook.into()),
        ]
    }

    /// Fence if the lease ran out.
    async fn check_lease(&mut self, jobs: &mut Jobs) {
        let Some(lease) = self.lease else { return };
        if !lease.deadline.expired() || sabotage::active(Sabotage::AgentIgnoresLeaseExpiry) {
            return;
        }
        self.set_lease(None);
        if self.state == Serving::Serving {
            let late = BootInstant::now().saturating_since(lease.deadline.at());
            let reason = format!(
                "the lease of epoch {} ran out at {} ({late:?} ago) with no renewal granted",
                lease.epoch,
                lease.deadline.at()
            );
            self.fence(jobs, &reason).await;
        }
    }

    /// Stop serving now: kill running hooks, run the fence hooks (retried
    /// within `fence_timeout`), then disarm the watchdog if they succeeded.
    async fn fence(&mut self, jobs: &mut Jobs, reason: &str) {
        jobs.hook = None;
        self.unfence_pending = false;
        self.set_lease(None);
        let epoch = self.epoch().unwrap_or(0);
        tracing::error!(epoch, "FENCING: {reason}");
        let deadline = Deadline::after(BootInstant::now(), self.config.agent.fence_timeout);
        let env = self.hook_env("fence", epoch);
        let mut ok = true;
        for command in self.config.hooks.fence.clone() {
            if let Err(e) =
                hooks::run_with_retries(&command, &env, deadline, Backoff::default()).await
            {
                tracing::error!("FENCE HOOK FAILED: {e}");
                ok = false;
            }
        }
        self.fence_failed = !ok;
        let reason = if ok {
            if let Some(w) = self.watchdog.as_mut()
                && let Err(e) = w.disarm()
            {
                tracing::error!("{e}");
            }
            reason.to_string()
        } else {
            tracing::error!(
                "FENCING FAILED: the watchdog is no longer petted, so this machine reboots \
                 within its timeout (the outside fence)"
            );
            format!("{reason}; the fence hooks FAILED, the watchdog will reboot the machine")
        };
        self.set_state(Serving::Fenced, &reason);
    }

    async fn on_verdict(&mut self, v: Verdict, jobs: &mut Jobs) {
        if let Some(known) = self.epoch()
            && v.epoch < known
        {
            // A lagging witness: its view is older than one we already saw.
            tracing::debug!(
                "ignoring a verdict at epoch {} from witness {} (already at {known})",
                v.epoch,
                v.answered_by
            );
            return;
        }
        let changed = self
            .verdict
            .as_ref()
            .is_none_or(|old| old.epoch != v.epoch || old.active_site != v.active_site);
        if changed {
            tracing::info!(
                epoch = v.epoch,
                "verdict: {} active at epoch {} ({})",
                if v.active_site.is_empty() {
                    "no site"
                } else {
                    &v.active_site
                },
                v.epoch,
                v.mode
            );
        }
        let epoch = v.epoch;
        let other = v.active_site.clone();
        self.verdict = Some(v);
        if other.is_empty() || other == self.me.site {
            return;
        }
        // Another site is active: this one is standby.
        if self.state == Serving::Serving {
            let reason = format!("{other} became the active site at epoch {epoch}");
            self.fence(jobs, &reason).await;
        }
        if self.state != Serving::Standby {
            self.set_lease(None);
            self.set_state(
                Serving::Standby,
                &format!("{other} is the active site at epoch {epoch}"),
            );
            self.activated = None;
            jobs.hook = None;
            if !self.config.hooks.deactivate.is_empty() {
                jobs.hook = Some(self.hook_job(HookKind::Deactivate, epoch));
            }
        }
    }

    fn hook_job(&self, kind: HookKind, epoch: u64) -> HookJob {
        let commands: Vec<HookCommand> = match kind {
            HookKind::Activate => self.config.hooks.activate.clone(),
            HookKind::Deactivate => self.config.hooks.deactivate.clone(),
            HookKind::Unfence => self.config.hooks.unfence.clone(),
        };
        let env = self.hook_env(kind.name(), epoch);
        tracing::info!(epoch, "running the {} hooks", kind.name());
        // Activate runs are evidence of acting under a lease: logged when
        // they start and end (no end when a fence kills them).
        let log = (kind == HookKind::Activate).then(|| self.log.clone());
        HookJob {
            kind,
            epoch,
            run: Box::pin(async move {
                if let Some(log) = &log {
                    log.run("activate_hook", kind.name(), epoch, None);
                }
                let ok = run_hooks(kind, &commands, &env).await;
                if let Some(log) = &log {
                    log.run("activate_hook", kind.name(), epoch, Some(ok));
                }
                ok
            }),
        }
    }

    fn on_hook_done(&mut self, kind: HookKind, epoch: u64, ok: bool) {
        let retry = BootInstant::now().saturating_add(HOOK_RETRY);
        match (kind, ok) {
            (HookKind::Activate, true) => {
                tracing::info!(epoch, "activate hooks done");
                self.activated = Some(epoch);
            }
            (HookKind::Unfence, true) => tracing::info!(epoch, "unfence hooks done"),
            (HookKind::Deactivate, true) => tracing::info!(epoch, "deactivate hooks done"),
            (HookKind::Activate, false) => self.hook_retry_at = retry,
            (HookKind::Unfence, false) => {
                self.unfence_pending = true;
                self.hook_retry_at = retry;
            }
            (HookKind::Deactivate, false) => {
                tracing::error!(epoch, "deactivate hooks failed; not retried");
            }
        }
    }

    /// Start a renewal round when one is due.
    fn start_renewal(&mut self, jobs: &mut Jobs) {
        if jobs.renewal.is_some() || !self.site_active() {
            return;
        }
        let now = BootInstant::now();
        if now < self.next_renewal {
            return;
        }
        let Some(epoch) = self.epoch() else { return };
        self.next_renewal = now.saturating_add(self.renew_interval);
        let request = RenewLeaseRequest {
            agent: self.me.name.clone(),
            site: self.me.site.clone(),
            role: self.me.role.clone(),
            epoch,
            nonce: 0,
            state: self.state.name().to_string(),
            state_for_ms: now.saturating_since(self.state_since).as_millis() as u64,
            service_healthy: self.healthy.load(Ordering::Relaxed),
            fence_timeout_ms: self.config.agent.fence_timeout.as_millis() as u64,
            watchdog_timeout_ms: self
                .watchdog
                .as_ref()
                .map_or(0, |w| w.timeout().as_millis() as u64),
        };
        // Two renew intervals per attempt: a live witness answers in
        // milliseconds, so this only cuts off a dead or black-holed one.
        let per_attempt = self.renew_interval * 2;
        jobs.renewal = Some(Box::pin(renew_round(
            self.witnesses.clone(),
            request,
            per_attempt,
        )));
    }

    fn on_round(&mut self, round: Round, jobs: &mut Jobs) {
        let (sent, asked, reply) = match round {
            Round::Answer { sent, epoch, reply } => (sent, epoch, reply),
            Round::Failed(why) => {
                tracing::warn!("lease renewal failed: {why}");
                return;
            }
        };
        if !reply.granted {
            tracing::warn!(
                epoch = asked,
                "lease renewal refused: {} (the leader is at epoch {})",
                reply.reason,
                reply.epoch
            );
            if self.epoch().is_some_and(|e| reply.epoch > e) {
                // Our verdict stream lags: listen to another witness.
                self.rotate.notify_one();
            }
            return;
        }
        if reply.renew_interval_ms > 0 {
            self.renew_interval = Duration::from_millis(reply.renew_interval_ms);
        }
        let lease = Lease {
            epoch: reply.epoch,
            deadline: Deadline::after(sent, Duration::from_millis(reply.lease_ttl_ms)),
        };
        if lease.deadline.expired() || Some(lease.epoch) != self.epoch() || asked != lease.epoch {
            tracing::warn!(
                "ignoring a grant at epoch {} that is already over or not for the current epoch",
                lease.epoch
            );
            return;
        }
        // Evidence for a checker: every grant accepted, with its send time.
        self.log.lease(lease.epoch, sent, reply.lease_ttl_ms);
        let lease = match self.lease {
            Some(old) if old.epoch == lease.epoch && old.deadline > lease.deadline => old,
            _ => lease,
        };
        self.set_lease(Some(lease));
        self.fence_failed = false;
        if let Some(w) = self.watchdog.as_mut()
            && !w.is_armed()
            && let Err(e) = w.arm()
        {
            tracing::error!("{e}");
        }
        if self.state != Serving::Serving {
            let was = self.state;
            self.set_state(
                Serving::Serving,
                &format!(
                    "lease granted at epoch {} until {}",
                    lease.epoch,
                    lease.deadline.at()
                ),
            );
            if was == Serving::Fenced {
                self.unfence_pending = true;
                // A running deactivate makes no sense any more.
                jobs.hook = None;
            }
        }
    }

    /// Start `unfence` or `activate` hooks when due.
    fn start_hook(&mut self, jobs: &mut Jobs) {
        if jobs.hook.is_some() || self.state != Serving::Serving || !self.holds_lease() {
            return;
        }
        if BootInstant::now() < self.hook_retry_at {
            return;
        }
        let Some(v) = self.verdict.as_ref() else {
            return;
        };
        let epoch = v.epoch;
        if self.unfence_pending {
            self.unfence_pending = false;
            if !self.config.hooks.unfence.is_empty() {
                jobs.hook = Some(self.hook_job(HookKind::Unfence, epoch));
                return;
            }
        }
        if self.activated == Some(epoch) {
            return;
        }
        let gate_open = v
            .gates
            .iter()
            .find(|g| g.role == self.me.role)
            .is_none_or(|g| g.open);
        if !gate_open {
            return;
        }
        if self.config.hooks.activate.is_empty() {
            self.activated = Some(epoch);
            return;
        }
        jobs.hook = Some(self.hook_job(HookKind::Activate, epoch));
    }

    /// Start the next directive this agent may run, if any.
    fn start_directive(&mut self, jobs: &mut Jobs) {
        if jobs.directive.is_some() || BootInstant::now() < self.claim_retry_at {
            return;
        }
        let serving = self.state == Serving::Serving && self.holds_lease();
        let Some(v) = self.verdict.as_ref() else {
            return;
        };
        let done = |name: &str| {
            v.directives
                .iter()
                .any(|d| d.epoch == v.epoch && d.name == name && d.state == "done")
        };
        // A best-effort directive (aimed at the site that lost) runs without
        // a lease; every other one only while this agent serves with one.
        let Some(info) = v.directives.iter().find(|d| {
            d.epoch == v.epoch
                && d.site == self.me.site
                && d.role == self.me.role
                && d.state == "pending"
                && d.after.iter().all(|a| done(a))
                && (serving || d.best_effort)
        }) else {
            return;
        };
        let job = directive::Job {
            me: self.me.clone(),
            info: info.clone(),
            witnesses: self.witnesses.clone(),
            carbonio: self.carbonio.clone(),
            commands: self.config.commands.clone(),
            mail_host: self
                .config
                .carbonio
                .as_ref()
                .and_then(|c| c.mail_host.clone()),
            lease: self.lease_tx.subscribe(),
            rpc_timeout: self.renew_interval * 2,
        };
        tracing::info!(directive = %info.id, "trying to claim {}", info.id);
        jobs.directive = Some(tokio::spawn(directive::execute(job)));
    }

    fn on_directive_done(&mut self, finished: Result<Finished, tokio::task::JoinError>) {
        let now = BootInstant::now();
        match finished {
            Ok(Finished::NotClaimed(why)) => {
                tracing::info!("directive not claimed: {why}");
                self.claim_retry_at = now.saturating_add(CLAIM_RETRY);
            }
            Ok(Finished::Reported { accepted, detail }) => {
                tracing::info!(accepted, "directive finished: {detail}");
                // Give the verdict stream a moment to show the new state.
                self.claim_retry_at = now.saturating_add(self.renew_interval);
            }
            Err(e) => {
                tracing::error!("the directive task failed: {e}");
                self.claim_retry_at = now.saturating_add(CLAIM_RETRY);
            }
        }
    }

    /// Pet the watchdog, only while the lease is valid.
    fn pet_watchdog(&mut self) {
        let valid = self.lease.is_some_and(|l| !l.deadline.expired());
        if !valid {
            return;
        }
        if let Some(w) = self.watchdog.as_mut()
            && w.is_armed()
            && let Err(e) = w.pet()
        {
            tracing::error!("{e}");
        }
    }
}

/// Run one hook list in order; `false` at the first command that fails.
async fn run_hooks(kind: HookKind, commands: &[HookCommand], env: &[(String, String)]) -> bool {
    for command in commands {
        match hooks::run(command, env, std::future::pending()).await {
            Ok(outcome) if outcome.success() => {}
            Ok(outcome) => {
                tracing::error!(
                    "{} hook {:?} {}",
                    kind.name(),
                    command.argv,
                    outcome.summary()
                );
                return false;
            }
            Err(e) => {
                tracing::error!("{} hook: {e}", kind.name());
                return false;
            }
        }
    }
    true
}

/// One renewal round: each witness in turn until one answers, each
/// attempt with a fresh nonce and its own send instant.
async fn renew_round(
    witnesses: Arc<Witnesses>,
    request: RenewLeaseRequest,
    per_attempt: Duration,
) -> Round {
    let mut errors = Vec::new();
    for i in witnesses.order() {
        let mut client = match witnesses.client(i) {
            Ok(c) => c,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let nonce: u64 = rand::random();
        let req = RenewLeaseRequest {
            nonce,
            ..request.clone()
        };
        // The lease counts from here: taken just before sending.
        let sent = BootInstant::now();
        match tokio::time::timeout(per_attempt, client.renew_lease(req)).await {
            Ok(Ok(reply)) => {
                let reply = reply.into_inner();
                if reply.nonce != nonce {
                    errors.push(format!(
                        "{}: the answer echoes nonce {} instead of {nonce}; ignored",
                        witnesses.endpoint(i),
                        reply.nonce
                    ));
                } else {
                    witnesses.prefer(i);
                    return Round::Answer {
                        sent,
                        epoch: request.epoch,
                        reply,
                    };
                }
            }
            Ok(Err(status)) => {
                errors.push(format!("{}: {}", witnesses.endpoint(i), status.message()))
            }
            Err(_) => errors.push(format!(
                "{}: no answer within {per_attempt:?}",
                witnesses.endpoint(i)
            )),
        }
        witnesses.forget(i);
    }
    Round::Failed(errors.join("; "))
}

/// Keep a `WatchVerdict` stream open to some witness and publish every
/// verdict it sends. After an error, the end of a stream, or a request to
/// rotate, wait [`WATCH_BACKOFF`] and subscribe to the next witness.
async fn watch_verdicts(
    witnesses: Arc<Witnesses>,
    out: watch::Sender<Option<Verdict>>,
    rotate: Arc<Notify>,
) {
    let mut i = witnesses.order().first().copied().unwrap_or(0);
    loop {
        let endpoint = witnesses.endpoint(i).to_string();
        match witnesses.client(i) {
            Ok(mut client) => {
                let opened = tokio::time::timeout(
                    WATCH_OPEN_TIMEOUT,
                    client.watch_verdict(GetVerdictRequest { allow_stale: true }),
                )
                .await;
                match opened {
                    Ok(Ok(stream)) => {
                        tracing::info!("watching the verdict on {endpoint}");
                        let mut stream = stream.into_inner();
                        loop {
                            tokio::select! {
                                msg = stream.message() => match msg {
                                    Ok(Some(v)) => {
                                        out.send_replace(Some(v));
                                    }
                                    Ok(None) => {
                                        tracing::warn!("the verdict stream from {endpoint} ended");
                                        break;
                                    }
                                    Err(e) => {
                                        tracing::warn!(
                                            "the verdict stream from {endpoint} failed: {}",
                                            e.message()
                                        );
                                        break;
                                    }
                                },
                                () = rotate.notified() => {
                                    tracing::info!("moving the verdict watch off {endpoint}");
                                    break;
                                }
                            }
                        }
                    }
                    Ok(Err(e)) => {
                        tracing::warn!("cannot watch the verdict on {endpoint}: {}", e.message())
                    }
                    Err(_) => tracing::warn!(
                        "cannot watch the verdict on {endpoint}: no answer within \
                         {WATCH_OPEN_TIMEOUT:?}"
                    ),
                }
            }
            Err(e) => tracing::warn!("{e}"),
        }
        witnesses.forget(i);
        i = (i + 1) % witnesses.len().max(1);
        tokio::time::sleep(WATCH_BACKOFF).await;
    }
}

/// Run the health check every [`HEALTH_EVERY`] and publish its result.
async fn health_loop(check: HookCommand, healthy: Arc<AtomicBool>) {
    loop {
        let ok = match hooks::run(&check, &[], std::future::pending()).await {
            Ok(outcome) => outcome.success(),
            Err(e) => {
                tracing::warn!("health check: {e}");
                false
            }
        };
        if healthy.swap(ok, Ordering::Relaxed) != ok {
            tracing::info!(healthy = ok, "local service health changed");
        }
        tokio::time::sleep(HEALTH_EVERY).await;
    }
}

//! Executing one directive (DESIGN.md §3.6): claim, run, renew the claim
//! while it runs, report.
//!
//! The ledger guarantees a directive is *issued* once; this module keeps
//! the agent's half of "executed safely":
//!
//! - **Never at a stale epoch.** A claim is asked for only while the agent
//!   holds a valid lease at the directive's epoch, and the leader grants
//!   it only then (a claim is a committed write, refused for any other
//!   epoch). The command is killed as soon as the lease lapses.
//! - **Never by two agents at once.** The leader gives the directive to
//!   one claim at a time and hands it to another only after the claim's
//!   deadline passed on *its* clock, counted from when it learnt of the
//!   claim or its last renewal. The agent counts its own deadline from the
//!   *send* time of the claim or of the last granted renewal — earlier
//!   than the leader's start — minus a safety margin for clock drift and
//!   for killing the command, so the command's whole process group is dead
//!   before the leader can give the directive away. It is also killed at
//!   once when a renewal is refused (the leader says the claim is gone),
//!   but not when a new leader only lacks a lease of this agent in its own
//!   book (`still_held`): the claim is still ours, so the command keeps
//!   running while the lease loop renews, and the renewal is retried —
//!   still bounded by the own deadline.
//!   A process that is frozen (SIGSTOP, a paused VM) cannot keep this
//!   promise; its late report is refused because it names an older
//!   generation, and the commands are idempotent by contract.
//! - **Results are recorded once.** The report names the claim's
//!   generation; the ledger ignores any report but the current claim's, so
//!   a refused report is logged and dropped, never retried forever.
//!
//! The built-in actions are built with [`carbonio`](super::carbonio) from
//! validated names; an operator's `Command` is its argv. Each runs with
//! `WITNESS_EPOCH`, `WITNESS_DIRECTIVE_ID` (`<epoch>/<name>`),
//! `WITNESS_DIRECTIVE_NAME`, `WITNESS_SITE`, `WITNESS_ROLE`,
//! `WITNESS_AGENT`, `WITNESS_ACTION` (the action as JSON) and, for the
//! Carbonio actions, `WITNESS_SOURCE_MAIL_HOSTS` (comma-separated) in its
//! environment.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use witness_proto::{
    ClaimDirectiveRequest, DirectiveInfo, RenewClaimRequest, ReportDirectiveRequest,
};

use super::carbonio::{self, Carbonio, Hostname, PromoteExit};
use super::client::Witnesses;
use super::clock::{BootInstant, Deadline};
use super::config::NamedCommand;
use super::hooks::{self, HookOutcome, HookStatus, OUTPUT_TAIL};
use super::run::{Identity, Lease};
use crate::state::ledger::Action;

/// How often the running directive re-checks its claim and lease
/// deadlines. Small next to any claim TTL and lease TTL: the margin below
/// absorbs it.
const CHECK_EVERY: Duration = Duration::from_millis(50);
/// The smallest safety margin taken off the claim deadline.
const MIN_CLAIM_MARGIN: Duration = Duration::from_millis(300);
/// How many rounds over the witnesses a report gets. A report nobody
/// takes is logged: the claim then expires on the leader, which sends the
/// directive back to `pending` (or `failed`).
const REPORT_ROUNDS: u32 = 3;

/// Everything one directive run needs.
pub struct Job {
    pub me: Identity,
    pub info: DirectiveInfo,
    pub witnesses: Arc<Witnesses>,
    pub carbonio: Option<Carbonio>,
    /// The agent file's `[[command]]`s: the only programs an operator's
    /// command directive can run, by name.
    pub commands: Vec<NamedCommand>,
    /// This mailstore's own Carbonio name (the pre-flight's destination).
    pub mail_host: Option<String>,
    /// The agent's current lease, updated by the main loop.
    pub lease: watch::Receiver<Option<Lease>>,
    /// Bound on one RPC attempt.
    pub rpc_timeout: Duration,
}

/// How a directive run ended, for the main loop's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finished {
    /// The claim was refused; nothing ran.
    NotClaimed(String),
    /// It ran and was reported (accepted or not).
    Reported { accepted: bool, detail: String },
}

/// What an action did.
#[derive(Clone, Debug, Default)]
struct ActionResult {
    exit_code: Option<i32>,
    output: String,
    error: String,
}

/// The safety margin taken off a claim of `ttl`: a tenth of it, at least
/// [`MIN_CLAIM_MARGIN`], at most half of it.
pub fn claim_margin(ttl: Duration) -> Duration {
    (ttl / 10).max(MIN_CLAIM_MARGIN).min(ttl / 2)
}

fn lease_valid(lease: &watch::Receiver<Option<Lease>>, epoch: u64) -> bool {
    lease
        .borrow()
        .as_ref()
        .is_some_and(|l| l.epoch == epoch && !l.deadline.expired())
}

/// Claim, run, renew, report. See the module doc.
pub async fn execute(job: Job) -> Finished {
    let epoch = job.info.epoch;
    let name = job.info.name.clone();
    let id = format!("{epoch}/{name}");
    // A best-effort directive is aimed at the site that lost, whose agents
    // hold no lease at the new epoch by design; it only ever stops things
    // there (the HA module), so it runs without one. Every other directive
    // needs this agent's lease at its epoch, before and during the run.
    let needs_lease = !job.info.best_effort;
    if needs_lease && !lease_valid(&job.lease, epoch) {
        return Finished::NotClaimed(format!("no valid lease at epoch {epoch}"));
    }
    let action: Action = match serde_json::from_str(&job.info.action_json) {
        Ok(a) => a,
        Err(e) => {
            return Finished::NotClaimed(format!(
                "cannot read the action of {id} ({e}); is this agent older than its witnesses?"
            ));
        }
    };

    // ---- claim -----------------------------------------------------------
    let mut sent = BootInstant::now();
    let claim = job
        .witnesses
        .call(job.rpc_timeout, |mut c| {
            sent = BootInstant::now();
            let req = ClaimDirectiveRequest {
                agent: job.me.name.clone(),
                site: job.me.site.clone(),
                role: job.me.role.clone(),
                epoch,
                name: name.clone(),
            };
            async move { c.claim_directive(req).await }
        })
        .await;
    let claim = match claim {
        Ok(c) if c.granted => c,
        Ok(c) => return Finished::NotClaimed(c.reason),
        Err(e) => return Finished::NotClaimed(format!("no witness answered the claim: {e}")),
    };
    let generation = claim.generation;
    let ttl = Duration::from_millis(claim.claim_ttl_ms.max(1));
    let margin = claim_margin(ttl);
    let mut own_deadline = Deadline::after(sent, ttl.saturating_sub(margin));
    tracing::info!(
        directive = %id, generation,
        "claimed {id} (generation {generation}, claim ttl {ttl:?}): {}", job.info.description
    );

    // ---- run, renewing the claim ------------------------------------------
    let env = directive_env(&job.me, &job.info, &action);
    // Dropping this future kills the running command's whole process
    // group (hooks::run_argv), which is how every stop below works.
    let mut running: Pin<Box<dyn Future<Output = ActionResult> + Send>> = Box::pin(run_action(
        action,
        job.carbonio.clone(),
        job.commands.clone(),
        job.mail_host.clone(),
        env,
    ));
    let mut renewal: Option<Pin<Box<dyn Future<Output = RenewAnswer> + Send>>> = None;
    let renew_every = ttl / 3;
    let mut next_renewal = BootInstant::now().saturating_add(renew_every);
    enum End {
        Ran(ActionResult),
        Stopped(String),
    }
    let end = loop {
        // The deadlines first, after every wake-up (a stall included).
        let now = BootInstant::now();
        if own_deadline.expired_at(now) {
            break End::Stopped(format!(
                "the claim was about to lapse (own deadline: {ttl:?} minus {margin:?} after the \
                 send of the last granted claim or renewal); the command was killed"
            ));
        }
        if needs_lease && !lease_valid(&job.lease, epoch) {
            break End::Stopped(format!(
                "the agent's lease at epoch {epoch} lapsed; the command was killed"
            ));
        }
        if renewal.is_none() && now >= next_renewal {
            renewal = Some(Box::pin(renew_claim(
                job.witnesses.clone(),
                RenewClaimRequest {
                    agent: job.me.name.clone(),
                    epoch,
                    name: name.clone(),
                    generation,
                },
                job.rpc_timeout,
            )));
        }
        tokio::select! {
            biased;
            result = &mut running => break End::Ran(result),
            answer = async {
                match renewal.as_mut() {
                    Some(r) => r.await,
                    None => std::future::pending().await,
                }
            } => {
                renewal = None;
                next_renewal = BootInstant::now().saturating_add(renew_every);
                let retry = match answer.result {
                    Ok(reply) if reply.granted => {
                        let ttl = Duration::from_millis(reply.claim_ttl_ms.max(1));
                        let renewed =
                            Deadline::after(answer.sent, ttl.saturating_sub(claim_margin(ttl)));
                        own_deadline = own_deadline.max(renewed);
                        None
                    }
                    // A new leader that has not granted us a lease yet: the
                    // lease loop renews it.
                    Ok(reply) if reply.still_held => {
                        Some(format!("not granted yet ({})", reply.reason))
                    }
                    Ok(reply) => {
                        break End::Stopped(format!(
                            "the claim renewal was refused ({}); the command was killed",
                            reply.reason
                        ));
                    }
                    // No answer is not a refusal.
                    Err(e) => Some(format!("failed: {e}")),
                };
                if let Some(why) = retry {
                    // Keep running until our own deadline, retrying soon.
                    tracing::warn!(directive = %id, "claim renewal {why}; retrying");
                    next_renewal = BootInstant::now()
                        .saturating_add(Duration::from_millis(200).min(renew_every));
                }
            }
            () = tokio::time::sleep(CHECK_EVERY) => {}
        }
    };
    drop(running);
    let result = match end {
        End::Ran(result) => result,
        End::Stopped(reason) => {
            tracing::error!(directive = %id, generation, "stopped {id}: {reason}");
            ActionResult {
                exit_code: None,
                output: String::new(),
                error: reason,
            }
        }
    };

    // ---- report ------------------------------------------------------------
    let request = ReportDirectiveRequest {
        agent: job.me.name.clone(),
        epoch,
        name: name.clone(),
        generation,
        exit_code: result.exit_code,
        output_tail: tail(&result.output),
        error: clip(&result.error, 1000),
    };
    let mut last = String::new();
    for _ in 0..REPORT_ROUNDS {
        let reply = job
            .witnesses
            .call(job.rpc_timeout, |mut c| {
                let req = request.clone();
                async move { c.report_directive(req).await }
            })
            .await;
        match reply {
            Ok(r) if r.accepted => {
                tracing::info!(directive = %id, generation, "reported {id}: {}", r.state);
                return Finished::Reported {
                    accepted: true,
                    detail: r.state,
                };
            }
            Ok(r) => {
                tracing::warn!(
                    directive = %id, generation,
                    "the report of {id} (generation {generation}) was ignored: {}", r.reason
                );
                return Finished::Reported {
                    accepted: false,
                    detail: r.reason,
                };
            }
            Err(e) => last = e,
        }
    }
    tracing::error!(
        directive = %id, generation,
        "no witness took the report of {id}: {last}; the claim will expire on the leader"
    );
    Finished::Reported {
        accepted: false,
        detail: last,
    }
}

struct RenewAnswer {
    /// Send time of the attempt that answered.
    sent: BootInstant,
    result: Result<witness_proto::RenewClaimReply, String>,
}

async fn renew_claim(
    witnesses: Arc<Witnesses>,
    request: RenewClaimRequest,
    timeout: Duration,
) -> RenewAnswer {
    let mut sent = BootInstant::now();
    let result = witnesses
        .call(timeout, |mut c| {
            sent = BootInstant::now();
            let req = request.clone();
            async move { c.renew_claim(req).await }
        })
        .await;
    RenewAnswer { sent, result }
}

/// The environment of a directive's commands.
fn directive_env(me: &Identity, info: &DirectiveInfo, action: &Action) -> Vec<(String, String)> {
    let mut env = vec![
        ("WITNESS_EPOCH".to_string(), info.epoch.to_string()),
        (
            "WITNESS_DIRECTIVE_ID".to_string(),
            format!("{}/{}", info.epoch, info.name),
        ),
        ("WITNESS_DIRECTIVE_NAME".to_string(), info.name.clone()),
        ("WITNESS_SITE".to_string(), me.site.clone()),
        ("WITNESS_ROLE".to_string(), me.role.clone()),
        ("WITNESS_AGENT".to_string(), me.name.clone()),
        ("WITNESS_ACTION".to_string(), info.action_json.clone()),
    ];
    if let Some(hosts) = source_hosts(action) {
        env.push(("WITNESS_SOURCE_MAIL_HOSTS".to_string(), hosts.join(",")));
    }
    env
}

fn source_hosts(action: &Action) -> Option<&[String]> {
    match action {
        Action::PromoteAccounts {
            source_mail_hosts, ..
        }
        | Action::FlushCache {
            source_mail_hosts, ..
        }
        | Action::RestartReplicas { source_mail_hosts }
        | Action::ReplicaPreflight { source_mail_hosts } => Some(source_mail_hosts),
        Action::StopHaModule | Action::Command { .. } => None,
    }
}

/// Carry out `action`, one command after the other; the first failure
/// ends it.
async fn run_action(
    action: Action,
    carbonio: Option<Carbonio>,
    commands: Vec<NamedCommand>,
    mail_host: Option<String>,
    env: Vec<(String, String)>,
) -> ActionResult {
    let mut out = Output::default();
    let result = run_steps(
        &action,
        carbonio.as_ref(),
        &commands,
        mail_host,
        &env,
        &mut out,
    )
    .await;
    match result {
        Ok(()) => ActionResult {
            exit_code: Some(0),
            output: out.text,
            error: String::new(),
        },
        Err((exit_code, error)) => ActionResult {
            exit_code,
            output: out.text,
            error,
        },
    }
}

/// The combined tail of every command an action ran.
#[derive(Default)]
struct Output {
    text: String,
}

impl Output {
    fn push(&mut self, outcome: &HookOutcome) {
        self.text.push_str(&outcome.output);
        self.text = tail(&self.text);
    }
}

type StepError = (Option<i32>, String);

async fn step(
    argv: &[String],
    timeout: Duration,
    env: &[(String, String)],
    out: &mut Output,
) -> Result<HookOutcome, StepError> {
    let outcome = hooks::run_argv(argv, timeout, env, std::future::pending())
        .await
        .map_err(|e| (None, e.to_string()))?;
    out.push(&outcome);
    Ok(outcome)
}

fn failed(what: &str, outcome: &HookOutcome) -> StepError {
    let code = match outcome.status {
        HookStatus::Exited(c) => Some(c),
        _ => None,
    };
    (code, format!("{what}: {}", outcome.summary()))
}

async fn run_steps(
    action: &Action,
    carbonio: Option<&Carbonio>,
    commands: &[NamedCommand],
    mail_host: Option<String>,
    env: &[(String, String)],
    out: &mut Output,
) -> Result<(), StepError> {
    if let Action::Command { command } = action {
        // Only what this agent's own file names is ever run for a policy.
        let Some(defined) = commands.iter().find(|c| &c.name == command) else {
            let known: Vec<&str> = commands.iter().map(|c| c.name.as_str()).collect();
            return Err((
                None,
                format!(
                    "refused: this agent's file defines no [[command]] named {command:?} (it \
                     defines {}); nothing was run. Define it in the agent file of every agent \
                     that may run it, or remove it from the policy",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        };
        let outcome = step(&defined.argv, defined.timeout, env, out).await?;
        return if outcome.success() {
            Ok(())
        } else {
            Err(failed("the command failed", &outcome))
        };
    }
    let Some(cli) = carbonio else {
        return Err((
            None,
            "this agent has no Carbonio settings (only a mailstore agent runs the built-in \
             Carbonio actions)"
                .into(),
        ));
    };
    let hosts = |list: &[String]| -> Result<Vec<Hostname>, StepError> {
        list.iter()
            .map(|h| Hostname::new(h).map_err(|e| (None, e.to_string())))
            .collect()
    };
    match action {
        Action::PromoteAccounts {
            source_mail_hosts,
            threads,
        } => {
            for host in hosts(source_mail_hosts)? {
                let inv = cli.promote_accounts(&host, *threads);
                let outcome = step(&inv.argv, inv.timeout, env, out).await?;
                if !outcome.success() {
                    let what = match outcome.status {
                        HookStatus::Exited(c) => format!(
                            "promoteAccounts from {host} ended {:?}",
                            PromoteExit::from_code(c)
                        ),
                        _ => format!("promoteAccounts from {host}"),
                    };
                    return Err(failed(&what, &outcome));
                }
            }
            Ok(())
        }
        Action::FlushCache {
            source_mail_hosts,
            all_services,
        } => {
            for host in hosts(source_mail_hosts)? {
                for account in accounts_of(cli, &host, env, out).await? {
                    let inv = cli.flush_cache(&account, *all_services);
                    let outcome = step(&inv.argv, inv.timeout, env, out).await?;
                    if !outcome.success() {
                        return Err(failed(&format!("flushing {account}"), &outcome));
                    }
                }
            }
            Ok(())
        }
        Action::RestartReplicas { source_mail_hosts } => {
            for host in hosts(source_mail_hosts)? {
                for account in accounts_of(cli, &host, env, out).await? {
                    for inv in [cli.pause_replicas(&account), cli.restart_replicas(&account)] {
                        let outcome = step(&inv.argv, inv.timeout, env, out).await?;
                        if !outcome.success() {
                            return Err(failed(
                                &format!("restarting the replicas of {account}"),
                                &outcome,
                            ));
                        }
                    }
                }
            }
            Ok(())
        }
        Action::ReplicaPreflight { source_mail_hosts } => {
            let me = match mail_host {
                Some(h) => h,
                None => own_hostname().map_err(|e| (None, e))?,
            };
            let destination = Hostname::new(&me).map_err(|e| (None, e.to_string()))?;
            for host in hosts(source_mail_hosts)? {
                let inv = cli.account_status(&host);
                let outcome = step(&inv.argv, inv.timeout, env, out).await?;
                if !outcome.success() {
                    return Err(failed(&format!("getAccountStatus of {host}"), &outcome));
                }
                match carbonio::replicas_caught_up(&outcome.output, &destination) {
                    carbonio::Preflight::CaughtUp { .. } => {}
                    carbonio::Preflight::NotCaughtUp {
                        reason, examples, ..
                    } => {
                        return Err((
                            Some(1),
                            format!(
                                "the replicas on {destination} have not caught up with {host}: \
                                 {reason}; e.g. {}",
                                examples.join("; ")
                            ),
                        ));
                    }
                }
            }
            Ok(())
        }
        Action::StopHaModule => {
            let inv = cli.stop_ha_module();
            let outcome = step(&inv.argv, inv.timeout, env, out).await?;
            if outcome.success() {
                Ok(())
            } else {
                Err(failed("stopping the HA module", &outcome))
            }
        }
        Action::Command { .. } => Ok(()),
    }
}

/// The accounts of `host`, from `getAccountStatus mailHost <host>`. Names
/// that fail validation are logged and skipped.
async fn accounts_of(
    cli: &Carbonio,
    host: &Hostname,
    env: &[(String, String)],
    out: &mut Output,
) -> Result<Vec<carbonio::Account>, StepError> {
    let inv = cli.account_status(host);
    let outcome = step(&inv.argv, inv.timeout, env, out).await?;
    if !outcome.success() {
        return Err(failed(&format!("getAccountStatus of {host}"), &outcome));
    }
    let list = carbonio::parse_accounts(&outcome.output).map_err(|e| (None, e.to_string()))?;
    for (name, why) in &list.refused {
        tracing::warn!("skipping account {name:?} of {host}: {why}");
    }
    Ok(list.accounts)
}

/// This machine's host name (the default `carbonio.mail_host`).
fn own_hostname() -> Result<String, String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .map_err(|e| {
            format!("cannot read this machine's host name ({e}); set [carbonio] mail_host")
        })
}

/// The last [`OUTPUT_TAIL`] bytes of `text`, on a character boundary.
fn tail(text: &str) -> String {
    if text.len() <= OUTPUT_TAIL {
        return text.to_string();
    }
    let mut start = text.len() - OUTPUT_TAIL;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_string()
}

/// At most `max` bytes of `text`, on a character boundary.
fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The claim margin is a tenth of the TTL, within sane bounds.
    #[test]
    fn claim_margin_is_bounded() {
        let ms = Duration::from_millis;
        assert_eq!(claim_margin(ms(30_000)), ms(3_000));
        assert_eq!(claim_margin(ms(2_000)), ms(300));
        assert_eq!(claim_margin(ms(400)), ms(200));
    }

    /// Output tails and clipped errors stay on character boundaries.
    #[test]
    fn tail_and_clip_respect_utf8() {
        let long = "é".repeat(OUTPUT_TAIL);
        let t = tail(&long);
        assert!(t.len() <= OUTPUT_TAIL && t.chars().all(|c| c == 'é'));
        assert_eq!(clip("aé", 2), "a");
    }

    /// An operator command runs the agent file's `[[command]]` of its name,
    /// with the epoch, the directive id and its action in its environment;
    /// its exit code decides the result.
    #[tokio::test]
    async fn command_action_runs_the_agents_own_command() {
        let me = Identity {
            name: "mbox2".into(),
            site: "dc-b".into(),
            role: "mailstore".into(),
        };
        let action = Action::Command {
            command: "notify".into(),
        };
        let info = DirectiveInfo {
            epoch: 7,
            name: "notify".into(),
            action_json: serde_json::to_string(&action).expect("json"),
            ..DirectiveInfo::default()
        };
        let commands = vec![NamedCommand {
            name: "notify".into(),
            argv: vec![
                "/bin/sh".into(),
                "-c".into(),
                "echo $WITNESS_DIRECTIVE_ID $WITNESS_EPOCH $WITNESS_AGENT; exit 3".into(),
            ],
            timeout: Duration::from_secs(5),
        }];
        let env = directive_env(&me, &info, &action);
        let r = run_action(action, None, commands, None, env).await;
        assert_eq!(r.exit_code, Some(3));
        assert_eq!(r.output.trim(), "7/notify 7 mbox2");
        assert!(r.error.contains("exited with status 3"), "{}", r.error);
    }

    /// A command the agent's file does not define is refused with the
    /// reason, and nothing runs — also for an entry written before commands
    /// were named (an argv, no name).
    #[tokio::test]
    async fn an_undefined_command_is_refused_and_nothing_runs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = dir.path().join("ran");
        let commands = vec![NamedCommand {
            name: "notify".into(),
            argv: vec![
                "/bin/sh".into(),
                "-c".into(),
                format!("touch {}", marker.display()),
            ],
            timeout: Duration::from_secs(5),
        }];
        let old: Action = serde_json::from_str(
            r#"{"kind":"command","argv":["/bin/sh","-c","id"],"timeout_ms":1000}"#,
        )
        .expect("an old entry still reads");
        for action in [
            Action::Command {
                command: "wipe-disks".into(),
            },
            old,
        ] {
            let r = run_action(action, None, commands.clone(), None, Vec::new()).await;
            assert_eq!(r.exit_code, None);
            assert!(r.error.starts_with("refused:"), "{}", r.error);
            assert!(r.error.contains("defines notify"), "{}", r.error);
            assert!(r.output.is_empty());
        }
        assert!(!marker.exists(), "nothing ran");
    }

    /// A built-in action on an agent without Carbonio settings fails with
    /// a reason, running nothing.
    #[tokio::test]
    async fn builtin_action_needs_carbonio() {
        let r = run_action(Action::StopHaModule, None, Vec::new(), None, Vec::new()).await;
        assert_eq!(r.exit_code, None);
        assert!(r.error.contains("mailstore"), "{}", r.error);
    }
}

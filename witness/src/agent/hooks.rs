//! Running one command: an argv array, a timeout, its own process group,
//! a bounded tail of its output.
//!
//! Every command the agent runs (a hook, a Carbonio action) goes through
//! [`run_argv`]. What it guarantees:
//!
//! - **No shell.** `argv[0]` is executed directly with `argv[1..]` as its
//!   arguments; values reach it through argv or the environment
//!   (`WITNESS_EPOCH`, `WITNESS_DIRECTIVE_ID`, …), never by text
//!   substitution into a command line.
//! - **Bounded in time, as a whole.** The command leads a new process
//!   group (`process_group(0)`, i.e. `setpgid(0, 0)` in the child). When
//!   the timeout passes, when the caller's cancel future resolves, or when
//!   the caller drops the returned future (its claim or lease lapsed), the
//!   *whole group* gets SIGKILL — a `sh -c 'sleep 30 & …'` leaves no
//!   grandchild behind. Even after a normal exit, whatever the command left
//!   in its group is killed: a hook's effects must end with the hook, or a
//!   leftover of an old epoch's `activate` could act after a fence. (A hook
//!   that must leave a service running starts it through the service
//!   manager, which runs it outside our group.)
//! - **No pid reuse race.** The leader's exit is awaited with
//!   `waitid(…, WNOWAIT)`, which reports the exit *without* reaping, so the
//!   group id cannot be recycled while we still signal it; the child is
//!   reaped only after the group kill.
//! - **Bounded output.** stdout and stderr are read together and only the
//!   last [`OUTPUT_TAIL`] bytes are kept (the end of a failing command's
//!   output is where its error is). A process that escaped the group and
//!   still holds the pipes open cannot stall us: after the exit the pipes
//!   are drained for at most [`DRAIN_GRACE`].
//! - **Distinct outcomes.** An exit status, a signal, a timeout and a
//!   cancellation are [`HookStatus`] values; a program that could not be
//!   started at all is a [`HookError::Spawn`] naming the program and what
//!   to check.
//!
//! [`run_with_retries`] is for fence hooks: a fence that fails is retried
//! with bounded exponential backoff until it succeeds or a [`Deadline`]
//! passes, every failure logged (warn), the final one as an error. Fencing
//! is idempotent by contract (withdrawing a withdrawn route is fine), so
//! retrying is always safe; giving up early is not.

use std::future::Future;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::clock::{BootInstant, Deadline};
use super::config::HookCommand;
use crate::process::GroupKiller;

/// Bytes of combined stdout+stderr kept from a command: its last 4 KiB.
pub const OUTPUT_TAIL: usize = 4096;
/// After the command's group is gone, how long to wait for the pipes to
/// close. Only a process that left our group (a daemon) can hold them
/// longer, and its output is not the command's.
pub const DRAIN_GRACE: Duration = Duration::from_millis(100);
/// How long to wait for the kernel to hand back a SIGKILLed child. Only a
/// process stuck in uninterruptible sleep (a dead NFS mount) takes longer,
/// and then nothing else would help either.
pub const REAP_TIMEOUT: Duration = Duration::from_secs(5);

/// How a command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookStatus {
    /// It exited on its own with this code.
    Exited(i32),
    /// It was killed by this signal, not by us.
    Signaled(i32),
    /// Its timeout passed; its group was killed.
    TimedOut(Duration),
    /// The caller cancelled it; its group was killed.
    Cancelled,
}

/// What a command did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookOutcome {
    pub status: HookStatus,
    /// The last [`OUTPUT_TAIL`] bytes of stdout and stderr, interleaved as
    /// they arrived, decoded lossily.
    pub output: String,
    /// Whether earlier output was dropped to keep the tail bounded.
    pub truncated: bool,
    /// Wall time from spawn to exit (or kill).
    pub elapsed: Duration,
}

impl HookOutcome {
    /// Exited with status 0.
    pub fn success(&self) -> bool {
        self.status == HookStatus::Exited(0)
    }

    /// One line for logs: the status and the last line of output.
    pub fn summary(&self) -> String {
        let status = match self.status {
            HookStatus::Exited(code) => format!("exited with status {code}"),
            HookStatus::Signaled(sig) => format!("killed by signal {sig}"),
            HookStatus::TimedOut(t) => {
                format!("timed out after {t:?}; its process group was killed")
            }
            HookStatus::Cancelled => "cancelled; its process group was killed".to_string(),
        };
        match self.output.lines().rev().find(|l| !l.trim().is_empty()) {
            Some(last) => format!("{status}; last output: {}", last.trim()),
            None => status,
        }
    }
}

/// A command that could not be run at all.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// Nothing was started: no such file, not executable, …
    #[error(
        "cannot start {program}: {source}; check that the path exists and is executable by the agent's user"
    )]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    /// The argv was empty (validation rules this out for configured hooks).
    #[error("empty command: argv needs at least the program")]
    EmptyArgv,
    /// Started, but the wait for it failed; its group was killed.
    #[error("lost track of {program} (pid {pid}): {source}; its process group was killed")]
    Wait {
        program: String,
        pid: u32,
        #[source]
        source: io::Error,
    },
}

/// Run a configured hook command. See [`run_argv`].
pub async fn run(
    command: &HookCommand,
    env: &[(String, String)],
    cancel: impl Future<Output = ()>,
) -> Result<HookOutcome, HookError> {
    run_argv(&command.argv, command.timeout, env, cancel).await
}

/// Run `argv` with the agent's environment plus `env`, for at most
/// `timeout`, until `cancel` resolves (pass `std::future::pending()` for
/// never). Dropping the returned future also kills the command's group.
pub async fn run_argv(
    argv: &[String],
    timeout: Duration,
    env: &[(String, String)],
    cancel: impl Future<Output = ()>,
) -> Result<HookOutcome, HookError> {
    let Some(program) = argv.first() else {
        return Err(HookError::EmptyArgv);
    };
    let started = std::time::Instant::now();
    let mut child = tokio::process::Command::new(program)
        .args(&argv[1..])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|source| HookError::Spawn {
            program: program.clone(),
            source,
        })?;
    let Some(pid) = child.id() else {
        // Only an already-reaped child has no id, and we have not waited
        // yet; refuse rather than run a command we cannot kill.
        return Err(HookError::Wait {
            program: program.clone(),
            pid: 0,
            source: io::Error::other("the spawned child has no pid"),
        });
    };
    // Armed from here: if this future is dropped at any await below, the
    // whole group is killed.
    let mut group = GroupKiller::new(Some(pid));

    let tail = Mutex::new(Tail::default());
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let pumps = async { tokio::join!(pump(stdout, &tail), pump(stderr, &tail)) };
    tokio::pin!(pumps);
    let mut pumps_done = false;

    let exited = tokio::task::spawn_blocking(move || wait_exit_nowait(pid));
    tokio::pin!(exited);
    let sleep = tokio::time::sleep(timeout);
    tokio::pin!(sleep);
    tokio::pin!(cancel);

    enum End {
        Exited,
        WaitFailed(io::Error),
        TimedOut,
        Cancelled,
    }
    let end = loop {
        tokio::select! {
            biased;
            result = &mut exited => break match result {
                Ok(Ok(())) => End::Exited,
                Ok(Err(e)) => End::WaitFailed(e),
                Err(join) => End::WaitFailed(io::Error::other(join.to_string())),
            },
            _ = &mut pumps, if !pumps_done => pumps_done = true,
            () = &mut sleep => break End::TimedOut,
            () = &mut cancel => break End::Cancelled,
        }
    };

    // The leader is either still running or an unreaped zombie, so its pid
    // still names our group: kill whatever is left in it, then reap.
    group.kill();
    let reaped = tokio::time::timeout(REAP_TIMEOUT, child.wait()).await;
    group.disarm();
    if !pumps_done {
        let _ = tokio::time::timeout(DRAIN_GRACE, &mut pumps).await;
    }
    let elapsed = started.elapsed();

    let status = match end {
        End::TimedOut => HookStatus::TimedOut(timeout),
        End::Cancelled => HookStatus::Cancelled,
        End::WaitFailed(source) => {
            return Err(HookError::Wait {
                program: program.clone(),
                pid,
                source,
            });
        }
        End::Exited => match reaped {
            Ok(Ok(status)) => match (status.code(), status.signal()) {
                (Some(code), _) => HookStatus::Exited(code),
                (None, Some(sig)) => HookStatus::Signaled(sig),
                (None, None) => HookStatus::Signaled(0),
            },
            Ok(Err(source)) => {
                return Err(HookError::Wait {
                    program: program.clone(),
                    pid,
                    source,
                });
            }
            Err(_) => {
                return Err(HookError::Wait {
                    program: program.clone(),
                    pid,
                    source: io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the process did not go away after SIGKILL (uninterruptible sleep?)",
                    ),
                });
            }
        },
    };
    let tail = std::mem::take(&mut *tail.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
    Ok(HookOutcome {
        status,
        output: String::from_utf8_lossy(&tail.bytes).into_owned(),
        truncated: tail.truncated,
        elapsed,
    })
}

/// Bounded exponential backoff between retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Wait after the first failure.
    pub first: Duration,
    /// Cap of the wait; it doubles up to this.
    pub max: Duration,
}

impl Default for Backoff {
    /// 100 ms doubling to 2 s: the first retries come fast (a fence must
    /// finish within `fence_timeout`), later ones do not hammer a broken
    /// router or service manager.
    fn default() -> Self {
        Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_secs(2),
        }
    }
}

/// A command that never succeeded before its deadline.
#[derive(Debug, thiserror::Error)]
#[error("{program} did not succeed in {attempts} attempt(s) before its deadline; last: {last}")]
pub struct RetryFailure {
    pub program: String,
    pub attempts: u32,
    /// What the last attempt did.
    pub last: String,
    /// The last attempt's outcome, when it ran at all.
    pub last_outcome: Option<HookOutcome>,
}

/// Run `command` until it exits 0 or `deadline` passes. Each attempt's
/// timeout is the command's own, cut to what is left of the deadline.
/// Each failure is logged as a warning with its output's last line, and
/// giving up as an error (the caller reports it and alerts).
pub async fn run_with_retries(
    command: &HookCommand,
    env: &[(String, String)],
    deadline: Deadline,
    backoff: Backoff,
) -> Result<HookOutcome, RetryFailure> {
    let program = command.argv.first().cloned().unwrap_or_default();
    let mut wait = backoff.first;
    let mut attempts = 0u32;
    let mut last = String::from("never started: the deadline had already passed");
    let mut last_outcome = None;
    loop {
        let left = deadline.remaining_at(BootInstant::now());
        if left.is_zero() {
            tracing::error!(
                program = %program,
                attempts,
                "giving up: {program} did not succeed before its deadline; last: {last}"
            );
            return Err(RetryFailure {
                program,
                attempts,
                last,
                last_outcome,
            });
        }
        attempts += 1;
        let timeout = command.timeout.min(left);
        match run_argv(&command.argv, timeout, env, std::future::pending()).await {
            Ok(outcome) if outcome.success() => {
                if attempts > 1 {
                    tracing::info!(program = %program, attempts, "{program} succeeded after retries");
                }
                return Ok(outcome);
            }
            Ok(outcome) => {
                last = outcome.summary();
                tracing::warn!(program = %program, attempts, "attempt {attempts} of {program} failed: {last}");
                last_outcome = Some(outcome);
            }
            Err(e) => {
                last = e.to_string();
                tracing::warn!(program = %program, attempts, "attempt {attempts} of {program} failed: {last}");
                last_outcome = None;
            }
        }
        let pause = wait.min(deadline.remaining_at(BootInstant::now()));
        tokio::time::sleep(pause).await;
        wait = wait.saturating_mul(2).min(backoff.max);
    }
}

/// The last [`OUTPUT_TAIL`] bytes written.
#[derive(Default)]
struct Tail {
    bytes: Vec<u8>,
    truncated: bool,
}

impl Tail {
    fn push(&mut self, chunk: &[u8]) {
        self.bytes.extend_from_slice(chunk);
        if self.bytes.len() > OUTPUT_TAIL {
            let excess = self.bytes.len() - OUTPUT_TAIL;
            self.bytes.drain(..excess);
            self.truncated = true;
        }
    }
}

/// Copy a pipe into the tail until EOF or a read error.
async fn pump<R: tokio::io::AsyncRead + Unpin>(pipe: Option<R>, tail: &Mutex<Tail>) {
    let Some(mut pipe) = pipe else { return };
    let mut chunk = [0u8; 1024];
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => tail
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(&chunk[..n]),
        }
    }
}

/// Block until `pid` has exited, without reaping it (`WNOWAIT`): the
/// zombie keeps its pid, and with it the process group id, reserved.
fn wait_exit_nowait(pid: u32) -> io::Result<()> {
    let id = libc::id_t::from(pid);
    loop {
        // SAFETY: an all-zero siginfo_t is a valid value of that plain C
        // struct, and waitid writes at most one siginfo_t through the
        // pointer to this live local.
        #[allow(unsafe_code)]
        let rc = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(libc::P_PID, id, &mut info, libc::WEXITED | libc::WNOWAIT)
        };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|s| s.to_string()).collect()
    }

    fn sh(script: &str) -> Vec<String> {
        argv(&["/bin/sh", "-c", script])
    }

    async fn run_sh(script: &str, timeout: Duration) -> HookOutcome {
        run_argv(&sh(script), timeout, &[], std::future::pending())
            .await
            .expect("runs")
    }

    /// Whether a process with this pid exists (zombies excluded).
    fn alive(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => {
                // The state follows the parenthesised command name.
                let state = stat.rsplit_once(") ").map(|(_, rest)| &rest[..1]);
                state != Some("Z")
            }
            Err(_) => false,
        }
    }

    /// Read the pid a script wrote, waiting for it to appear.
    async fn read_pid(path: &std::path::Path) -> i32 {
        for _ in 0..100 {
            if let Ok(text) = std::fs::read_to_string(path)
                && let Ok(pid) = text.trim().parse()
            {
                return pid;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no pid in {}", path.display());
    }

    /// Exit codes come back as they are, with the output's tail.
    #[tokio::test]
    async fn exit_status_and_output_are_reported() {
        let ok = run_sh("echo out; echo err >&2", Duration::from_secs(5)).await;
        assert!(ok.success());
        assert!(
            ok.output.contains("out") && ok.output.contains("err"),
            "{ok:?}"
        );
        assert!(!ok.truncated);
        let failed = run_sh("echo boom >&2; exit 3", Duration::from_secs(5)).await;
        assert_eq!(failed.status, HookStatus::Exited(3));
        assert!(failed.summary().contains("status 3") && failed.summary().contains("boom"));
        let killed = run_sh("kill -TERM $$", Duration::from_secs(5)).await;
        assert_eq!(killed.status, HookStatus::Signaled(libc::SIGTERM));
    }

    /// On timeout the whole group dies: the grandchild `sleep 30` started in
    /// the background is gone too, not only the shell.
    #[tokio::test]
    async fn timeout_kills_grandchildren() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pidfile = dir.path().join("grandchild.pid");
        let script = format!("sleep 30 & echo $! > {}; sleep 30", pidfile.display());
        let run = tokio::spawn(async move {
            run_argv(
                &sh(&script),
                Duration::from_millis(500),
                &[],
                std::future::pending(),
            )
            .await
        });
        let grandchild = read_pid(&pidfile).await;
        assert!(
            alive(grandchild),
            "grandchild should run before the timeout"
        );
        let outcome = run.await.expect("join").expect("runs");
        assert_eq!(
            outcome.status,
            HookStatus::TimedOut(Duration::from_millis(500))
        );
        assert!(
            outcome.elapsed < Duration::from_secs(5),
            "{:?}",
            outcome.elapsed
        );
        // SIGKILL is immediate, but give the kernel a moment to tear down.
        for _ in 0..50 {
            if !alive(grandchild) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("grandchild {grandchild} survived the timeout");
    }

    /// Cancelling (the cancel future resolves) kills the group and says so.
    #[tokio::test]
    async fn cancel_kills_the_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pidfile = dir.path().join("grandchild.pid");
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(async move {
            let cancel = async {
                let _ = rx.await;
            };
            run_argv(&sh(&script), Duration::from_secs(30), &[], cancel).await
        });
        let grandchild = read_pid(&pidfile).await;
        tx.send(()).expect("send cancel");
        let outcome = run.await.expect("join").expect("runs");
        assert_eq!(outcome.status, HookStatus::Cancelled);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !alive(grandchild),
            "grandchild {grandchild} survived cancellation"
        );
    }

    /// Dropping the future (a lapsed claim aborts the task) kills the group.
    #[tokio::test]
    async fn dropping_the_future_kills_the_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pidfile = dir.path().join("child.pid");
        let script = format!("echo $$ > {}; exec sleep 30", pidfile.display());
        let run = tokio::spawn(async move {
            run_argv(
                &sh(&script),
                Duration::from_secs(30),
                &[],
                std::future::pending(),
            )
            .await
        });
        let pid = read_pid(&pidfile).await;
        run.abort();
        let _ = run.await;
        for _ in 0..50 {
            if !alive(pid) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{pid} survived the drop");
    }

    /// A background process left behind by a command that exited is killed
    /// with its group, and does not hold up the result.
    #[tokio::test]
    async fn leftovers_die_with_the_command() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pidfile = dir.path().join("left.pid");
        let script = format!("sleep 30 & echo $! > {}; exit 0", pidfile.display());
        let outcome = run_sh(&script, Duration::from_secs(10)).await;
        assert!(outcome.success(), "{outcome:?}");
        assert!(
            outcome.elapsed < Duration::from_secs(5),
            "{:?}",
            outcome.elapsed
        );
        let left = read_pid(&pidfile).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!alive(left), "leftover {left} survived");
    }

    /// The extra environment reaches the command.
    #[tokio::test]
    async fn env_is_passed() {
        let env = vec![
            ("WITNESS_EPOCH".to_string(), "42".to_string()),
            ("WITNESS_DIRECTIVE_ID".to_string(), "d-7".to_string()),
        ];
        let outcome = run_argv(
            &sh("echo \"$WITNESS_EPOCH/$WITNESS_DIRECTIVE_ID\""),
            Duration::from_secs(5),
            &env,
            std::future::pending(),
        )
        .await
        .expect("runs");
        assert_eq!(outcome.output.trim(), "42/d-7");
    }

    /// Only the last 4 KiB of output are kept, and the cut is flagged.
    #[tokio::test]
    async fn output_tail_is_bounded() {
        // 100 000 bytes of 'x', then a final marker line.
        let outcome = run_sh(
            "head -c 100000 /dev/zero | tr '\\0' x; echo; echo THE-END",
            Duration::from_secs(10),
        )
        .await;
        assert!(outcome.success());
        assert!(outcome.truncated);
        assert_eq!(outcome.output.len(), OUTPUT_TAIL);
        assert!(
            outcome.output.ends_with("THE-END\n"),
            "{:?}",
            &outcome.output[4000..]
        );
    }

    /// A program that does not exist is a spawn error naming it.
    #[tokio::test]
    async fn missing_program_is_a_clear_error() {
        let err = run_argv(
            &argv(&["/nonexistent/fence-hook", "--now"]),
            Duration::from_secs(1),
            &[],
            std::future::pending(),
        )
        .await
        .expect_err("no such program");
        assert!(matches!(err, HookError::Spawn { .. }), "{err:?}");
        let shown = err.to_string();
        assert!(shown.contains("/nonexistent/fence-hook"), "{shown}");
        assert!(shown.contains("check that the path exists"), "{shown}");
        assert!(matches!(
            run_argv(&[], Duration::from_secs(1), &[], std::future::pending()).await,
            Err(HookError::EmptyArgv)
        ));
    }

    /// A failing fence hook is retried until it succeeds.
    #[tokio::test]
    async fn retries_until_success() {
        let dir = tempfile::tempdir().expect("tempdir");
        let counter = dir.path().join("count");
        // Fails twice, then succeeds.
        let script = format!(
            "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}; [ $n -ge 3 ]",
            c = counter.display()
        );
        let command = HookCommand {
            argv: sh(&script),
            timeout: Duration::from_secs(5),
        };
        let deadline = Deadline::after(BootInstant::now(), Duration::from_secs(10));
        let backoff = Backoff {
            first: Duration::from_millis(10),
            max: Duration::from_millis(40),
        };
        let outcome = run_with_retries(&command, &[], deadline, backoff)
            .await
            .expect("third attempt succeeds");
        assert!(outcome.success());
        let count = std::fs::read_to_string(&counter).expect("counter");
        assert_eq!(count.trim(), "3");
    }

    /// A hook that never succeeds is given up on at the deadline, not
    /// before and not long after, with the count and the last failure.
    #[tokio::test]
    async fn retries_stop_at_the_deadline() {
        let command = HookCommand {
            argv: sh("echo 'route still announced' >&2; exit 1"),
            timeout: Duration::from_secs(5),
        };
        let start = BootInstant::now();
        let deadline = Deadline::after(start, Duration::from_millis(600));
        let backoff = Backoff {
            first: Duration::from_millis(20),
            max: Duration::from_millis(80),
        };
        let failure = run_with_retries(&command, &[], deadline, backoff)
            .await
            .expect_err("never succeeds");
        let took = BootInstant::now().saturating_since(start);
        assert!(took >= Duration::from_millis(600), "{took:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
        assert!(failure.attempts >= 3, "{failure}");
        assert!(failure.last.contains("route still announced"), "{failure}");
        assert!(failure.to_string().contains("before its deadline"));
    }

    /// An attempt is cut short by the deadline even if the hook's own
    /// timeout is longer.
    #[tokio::test]
    async fn retry_attempts_are_clipped_to_the_deadline() {
        let command = HookCommand {
            argv: argv(&["/bin/sleep", "30"]),
            timeout: Duration::from_secs(30),
        };
        let start = BootInstant::now();
        let deadline = Deadline::after(start, Duration::from_millis(300));
        let failure = run_with_retries(&command, &[], deadline, Backoff::default())
            .await
            .expect_err("times out");
        assert!(BootInstant::now().saturating_since(start) < Duration::from_secs(5));
        assert!(matches!(
            failure.last_outcome.map(|o| o.status),
            Some(HookStatus::TimedOut(_))
        ));
    }
}

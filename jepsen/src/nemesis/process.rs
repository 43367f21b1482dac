//! Processes the harness starts inside a host, and the faults done to them:
//! crash (`SIGKILL`), pause (`SIGSTOP`) and resume (`SIGCONT`), restart.
//!
//! Each process is started with `ip netns exec` as the leader of a new
//! process group (`ip netns exec` execs in place, so the leader is the
//! program itself), and every signal goes to that group: a program that
//! forks helpers is paused or killed as a whole.
//!
//! Invariant: a [`Proc`] only ever signals the group it started, and only
//! while its leader has not been reaped. Until we reap it the kernel cannot
//! reuse that pid, so the group id still names our processes. Nothing here
//! finds processes by name.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::cmd;
use crate::error::{Error, Result};
use crate::net::{Host, Net};

/// Bound on reaping a process after `SIGKILL`. Death is immediate unless it
/// is stuck in the kernel (uninterruptible I/O); past this we report it
/// rather than hang.
pub const REAP_TIMEOUT: Duration = Duration::from_secs(10);

/// Bound on `ip netns exec` entering the namespace and exec'ing: it takes
/// milliseconds; the bound catches a wedged mount or a missing namespace.
pub const ENTER_TIMEOUT: Duration = Duration::from_secs(5);

/// What to start and where.
#[derive(Clone, Debug)]
pub struct ProcSpec {
    /// The host whose namespace it runs in.
    pub host: Host,
    /// Program and arguments.
    pub argv: Vec<OsString>,
    /// Extra environment variables.
    pub env: Vec<(OsString, OsString)>,
    /// Working directory; the harness's if `None`.
    pub cwd: Option<PathBuf>,
    /// File that receives stdout and stderr, appended to across restarts so
    /// one file tells the whole story of the node. Discarded if `None`.
    pub log: Option<PathBuf>,
}

impl ProcSpec {
    /// A spec with no extra environment, no working directory, no log.
    pub fn new<I, S>(host: impl Into<Host>, argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        ProcSpec {
            host: host.into(),
            argv: argv.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            cwd: None,
            log: None,
        }
    }

    /// Send stdout and stderr to `path` (appended).
    pub fn log(mut self, path: impl Into<PathBuf>) -> Self {
        self.log = Some(path.into());
        self
    }

    /// Set an environment variable.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Run in `dir`.
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }
}

/// A process the harness started in a host. Killed and reaped on drop.
#[derive(Debug)]
pub struct Proc {
    spec: ProcSpec,
    netns: String,
    command: std::process::Command,
    child: Option<Child>,
    last_exit: Option<ExitStatus>,
}

impl Proc {
    /// Start `spec` inside its host.
    pub fn spawn(net: &Net, spec: ProcSpec) -> Result<Proc> {
        let command = net.exec(&spec.host, &spec.argv)?;
        let netns = net.netns(&spec.host)?.to_owned();
        let mut p = Proc {
            spec,
            netns,
            command,
            child: None,
            last_exit: None,
        };
        p.start()?;
        Ok(p)
    }

    fn start(&mut self) -> Result<()> {
        let mut c = std::process::Command::new(self.command.get_program());
        c.args(self.command.get_args());
        for (k, v) in &self.spec.env {
            c.env(k, v);
        }
        if let Some(d) = &self.spec.cwd {
            c.current_dir(d);
        }
        let (out, err) = match &self.spec.log {
            Some(path) => {
                let f = open_log(path)?;
                let g = f
                    .try_clone()
                    .map_err(|e| Error::io(format!("duplicating {}", path.display()), e))?;
                (Stdio::from(f), Stdio::from(g))
            }
            None => (Stdio::null(), Stdio::null()),
        };
        // A new process group with the child as leader: signals go to the
        // group, and a Ctrl-C at the harness's terminal does not reach it
        // (the harness decides when nodes die).
        c.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let line = cmd::render(&c);
        let child = c.spawn().map_err(|source| Error::Spawn {
            cmd: line.clone(),
            source,
        })?;
        let pid = child.id();
        self.child = Some(child);
        self.wait_until_inside(pid, &line)
    }

    /// Wait until `pid` is the program itself, inside its host's namespace.
    /// Until then it is still `ip netns exec` setting up (first in the
    /// machine's namespace, then in the host's but not yet exec'd); returning
    /// earlier would let a caller probe, pause or kill a process that is not
    /// yet the program, e.g. kill it before it wrote a line of its log.
    fn wait_until_inside(&mut self, pid: u32, line: &str) -> Result<()> {
        let want = netns_inode(&crate::netns::path(&self.netns))?;
        let deadline = std::time::Instant::now() + ENTER_TIMEOUT;
        loop {
            // Before the exec, the command line is still `ip netns exec …`;
            // after it, it is the program's own argv.
            let execd = std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| !c.starts_with(b"ip\0netns\0exec\0"));
            if execd && pid_netns_inode(pid) == Some(want) {
                return Ok(());
            }
            if !self.is_running()? {
                // It exited (or `ip` failed) before getting there: its exit
                // status and log say why.
                return Err(Error::Io {
                    what: format!("starting `{line}`"),
                    source: std::io::Error::other(format!("exited early: {:?}", self.last_exit)),
                });
            }
            if std::time::Instant::now() >= deadline {
                let _ = self.kill();
                return Err(Error::Timeout {
                    cmd: line.to_owned(),
                    after: ENTER_TIMEOUT,
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The spec it was started from.
    /// Set environment variable `key` to `value` from the next start on.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.spec.env.retain(|(k, _)| k != key);
        self.spec.env.push((key.into(), value.into()));
    }

    pub fn spec(&self) -> &ProcSpec {
        &self.spec
    }

    /// The current pid (also its process group id), if started and not yet
    /// reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it is still running (or paused). Reaps it if it exited.
    pub fn is_running(&mut self) -> Result<bool> {
        let Some(child) = self.child.as_mut() else {
            return Ok(false);
        };
        match child.try_wait() {
            Ok(None) => Ok(true),
            Ok(Some(status)) => {
                self.last_exit = Some(status);
                self.child = None;
                Ok(false)
            }
            Err(e) => Err(Error::io(format!("polling pid {}", child.id()), e)),
        }
    }

    /// How it last ended, once reaped.
    pub fn last_exit(&self) -> Option<ExitStatus> {
        self.last_exit
    }

    fn signal(&mut self, sig: Signal) -> Result<()> {
        // Reaps a process that already exited, so we never signal a group
        // whose leader's pid might have been reused.
        if !self.is_running()? {
            return Ok(());
        }
        let Some(pid) = self.pid() else { return Ok(()) };
        let pgid = i32::try_from(pid)
            .map_err(|_| Error::InvalidSpec(format!("pid {pid} out of range")))?;
        match killpg(Pid::from_raw(pgid), sig) {
            // ESRCH: the whole group is already gone (a race with exit).
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(Error::sys(
                format!("{sig} to process group {pid} ({})", self.spec.host),
                e,
            )),
        }
    }

    /// Crash it: `SIGKILL` to its group, then reap it. Idempotent. Works on
    /// a paused process too.
    pub fn kill(&mut self) -> Result<()> {
        self.signal(Signal::SIGKILL)?;
        self.reap(REAP_TIMEOUT)
    }

    /// Ask it to stop (`SIGTERM`), and kill it if it has not exited after
    /// `grace`. A paused process is resumed first so it can handle the
    /// signal.
    pub fn stop(&mut self, grace: Duration) -> Result<()> {
        self.signal(Signal::SIGTERM)?;
        self.signal(Signal::SIGCONT)?;
        if let Some(child) = self.child.as_mut() {
            let waited =
                cmd::wait_bounded(child, grace).map_err(|e| Error::io("waiting for exit", e))?;
            if let Some(status) = waited {
                self.last_exit = Some(status);
                self.child = None;
                return Ok(());
            }
        }
        self.kill()
    }

    fn reap(&mut self, timeout: Duration) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        let pid = child.id();
        match cmd::wait_bounded(child, timeout) {
            Ok(Some(status)) => {
                self.last_exit = Some(status);
                self.child = None;
                Ok(())
            }
            Ok(None) => Err(Error::io(
                format!("reaping pid {pid} on {}", self.spec.host),
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("still alive after {timeout:?}"),
                ),
            )),
            Err(e) => Err(Error::io(format!("reaping pid {pid}"), e)),
        }
    }

    /// Freeze it (`SIGSTOP` to its group): it holds its sockets and state
    /// but runs no code, like a long GC pause or a stalled VM.
    pub fn pause(&mut self) -> Result<()> {
        self.signal(Signal::SIGSTOP)
    }

    /// Let a paused process run again (`SIGCONT`).
    pub fn resume(&mut self) -> Result<()> {
        self.signal(Signal::SIGCONT)
    }

    /// Kill it (if running) and start it again from the same spec, as a
    /// crash followed by a supervisor restart would.
    pub fn restart(&mut self) -> Result<()> {
        self.kill()?;
        self.start()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Err(e) = self.kill() {
            eprintln!(
                "jepsen: killing {:?} on {}: {e}",
                self.spec.argv, self.spec.host
            );
        }
    }
}

fn open_log(path: &PathBuf) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(format!("opening log {}", path.display()), e))
}

/// The inode that identifies a network namespace, from its bind mount.
fn netns_inode(path: &std::path::Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| m.ino())
        .map_err(|e| Error::io(format!("stat {}", path.display()), e))
}

/// The network namespace inode of a process, from `/proc/<pid>/ns/net`
/// (a link reading `net:[<inode>]`); `None` if it is gone.
fn pid_netns_inode(pid: u32) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
    link.to_str()?
        .strip_prefix("net:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

//! Network namespaces as the harness sees them: named files under
//! `/run/netns` (made by `ip netns add`), and threads that enter one.
//!
//! A socket belongs to the namespace of the thread that created it, for its
//! whole life. So the harness never moves a process or its main thread: it
//! spawns a short-lived (or dedicated) thread, `setns(2)`s that thread into
//! a host's namespace, and creates sockets there. The sockets can then be
//! used from any thread. Child processes inherit the namespace of the thread
//! that forks them, but we start processes with `ip netns exec` instead so
//! that the command line shows where they run.
//!
//! Invariant: only threads spawned here ever change namespace; the caller's
//! threads, and the process as a whole, stay in the host's namespace.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::thread;

use nix::sched::{CloneFlags, setns};

use crate::cmd::{self, TOOL_TIMEOUT};
use crate::error::{Error, Result};

/// Where `ip netns` keeps its named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// Path of a named namespace.
pub fn path(ns: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(ns)
}

/// A command that runs `argv` inside namespace `ns` (`ip netns exec <ns>
/// argv…`). `ip netns exec` execs the program in place, so the child's pid
/// is the program's own and signals reach it directly.
pub fn exec<S: AsRef<std::ffi::OsStr>>(ns: &str, argv: &[S]) -> std::process::Command {
    let mut c = std::process::Command::new("ip");
    c.args(["netns", "exec", ns]).args(argv);
    c
}

/// Whether a named namespace exists.
pub fn exists(ns: &str) -> bool {
    path(ns).exists()
}

/// All named namespaces, sorted. An absent `/run/netns` means none.
pub fn list() -> Result<Vec<String>> {
    let dir = match std::fs::read_dir(NETNS_DIR) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("reading {NETNS_DIR}"), e)),
    };
    let mut names = Vec::new();
    for entry in dir {
        let entry = entry.map_err(|e| Error::io(format!("reading {NETNS_DIR}"), e))?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Move the *current thread* into `ns`. Private: callers go through
/// [`run_in`] or [`spawn_in`], which only ever do this to a fresh thread.
fn enter(ns: &str) -> Result<()> {
    let p = path(ns);
    let f = File::open(&p).map_err(|e| Error::io(format!("opening {}", p.display()), e))?;
    setns(&f, CloneFlags::CLONE_NEWNET).map_err(|e| Error::sys(format!("setns into {ns}"), e))
}

/// Run `f` on a fresh thread inside namespace `ns` and return its result.
/// Typical use: bind a listener or connect a socket "from" a host.
pub fn run_in<T, F>(ns: &str, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    thread::scope(|s| {
        let h = thread::Builder::new()
            .name(format!("netns:{ns}"))
            .spawn_scoped(s, || enter(ns).map(|()| f()))
            .map_err(|e| Error::io(format!("spawning a thread for {ns}"), e))?;
        // A panic in `f` is the caller's bug (typically a failed test
        // assertion): carry it on to the caller's thread unchanged.
        h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Spawn a long-lived thread inside namespace `ns` running `f`. The thread
/// has entered the namespace before `f` starts; if it cannot, `f` is handed
/// the error instead of running in the wrong namespace.
pub fn spawn_in<T, F>(ns: &str, name: &str, f: F) -> Result<thread::JoinHandle<T>>
where
    T: Send + 'static,
    F: FnOnce(Result<()>) -> T + Send + 'static,
{
    let owned = ns.to_owned();
    thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || f(enter(&owned)))
        .map_err(|e| Error::io(format!("spawning thread {name} for {ns}"), e))
}

/// Why this machine cannot run namespace tests, or `None` if it can: the
/// harness needs root (namespaces, iptables) and a working `ip netns`.
pub fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root: network namespaces and iptables need root".into());
    }
    match cmd::run(cmd::command("ip", ["netns", "list"]), None, TOOL_TIMEOUT) {
        Ok(_) => None,
        Err(e) => Some(format!(
            "`ip netns` is unavailable (apt-get install -y iproute2): {e}"
        )),
    }
}

//! A site's fenced service: what clients of the mail site would reach, and
//! what the harness probes from outside.
//!
//! It listens on [`SERVE_PORT`] in its host's namespace and answers each
//! connection with `serving <site>\n` while it may serve, or closes it at
//! once otherwise. It may serve while
//!
//! - the agent's *serve flag* exists: the agent's `activate` and `unfence`
//!   hooks create it, `fence` and `deactivate` remove it (the systemd units
//!   bound to the agent, started and stopped); and
//! - the agent's watchdog has not run out: the agent pets a (fake)
//!   watchdog only while its lease is valid; when the last pet is older
//!   than [`WATCHDOG_TIMEOUT_MS`] and no magic close disarmed it, the
//!   machine "reboots": the flag is removed, so the services stay down
//!   until the agent's next lease and hooks (DESIGN.md §3.4, dead and
//!   stalled agents). A killed or paused agent is fenced this way, as the
//!   design requires, by something outside itself.
//!
//! The witnesses never probe this port: they probe the site's health
//! listeners, which only a site death stops.

use std::io::Write;
use std::net::{SocketAddrV4, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::lab::agents::{FakeWatchdog, WatchdogEvent, boottime_ms};

/// Port of every site host's fenced service.
pub const SERVE_PORT: u16 = 9143;
/// The agents' watchdog timeout (`[watchdog] timeout` in the lab's agent
/// config).
pub const WATCHDOG_TIMEOUT_MS: u64 = 1_000;

/// Whether the service may serve now; removes the flag when the watchdog
/// "rebooted" the machine.
pub fn may_serve(flag: &std::path::Path, watchdog: &FakeWatchdog) -> bool {
    if !flag.exists() {
        return false;
    }
    let events = watchdog.events();
    let last_alive = events
        .iter()
        .rev()
        .find(|(_, e)| matches!(e, WatchdogEvent::Open | WatchdogEvent::Pet))
        .map(|(t, _)| *t);
    let disarmed = events
        .iter()
        .rev()
        .find(|(_, e)| *e != WatchdogEvent::Closed)
        .is_some_and(|(_, e)| *e == WatchdogEvent::MagicClose);
    if disarmed {
        return true;
    }
    let Some(last) = last_alive else {
        // Never armed: the agent arms on its first lease, before any hook
        // can create the flag; a flag without it is a leftover.
        return false;
    };
    if boottime_ms().saturating_sub(last) < WATCHDOG_TIMEOUT_MS {
        return true;
    }
    // The watchdog fired: reboot. Units bound to the agent stay down.
    let _ = std::fs::remove_file(flag);
    false
}

/// One host's fenced service.
pub struct FencedService {
    netns: String,
    addr: SocketAddrV4,
    site: String,
    flag: PathBuf,
    watchdog: Arc<FakeWatchdog>,
    running: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

impl FencedService {
    pub fn start(
        netns: &str,
        addr: SocketAddrV4,
        site: &str,
        flag: PathBuf,
        watchdog: Arc<FakeWatchdog>,
    ) -> crate::Result<FencedService> {
        let mut s = FencedService {
            netns: netns.to_string(),
            addr,
            site: site.to_string(),
            flag,
            watchdog,
            running: None,
        };
        s.restart()?;
        Ok(s)
    }

    pub fn addr(&self) -> SocketAddrV4 {
        self.addr
    }

    /// Stop listening (the machine is down): connections are refused, and
    /// the flag is gone (a machine comes back with its services down).
    pub fn stop(&mut self) {
        if let Some((flag, thread)) = self.running.take() {
            flag.store(true, Ordering::Relaxed);
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.flag);
    }

    /// Listen again (a no-op while running).
    pub fn restart(&mut self) -> crate::Result<()> {
        if self.running.is_some() {
            return Ok(());
        }
        let addr = self.addr;
        let listener = crate::netns::run_in(&self.netns, move || TcpListener::bind(addr))?
            .map_err(|e| crate::Error::io(format!("bind {addr} in {}", self.netns), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| crate::Error::io("a nonblocking listener", e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, watchdog, site) = (self.flag.clone(), self.watchdog.clone(), self.site.clone());
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        if may_serve(&flag, &watchdog) {
                            let _ = conn.set_write_timeout(Some(Duration::from_millis(200)));
                            let _ = writeln!(conn, "serving {site}");
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        self.running = Some((stop, thread));
        Ok(())
    }
}

impl Drop for FencedService {
    fn drop(&mut self) {
        self.stop();
    }
}

//! The agent's serving state and its log.
//!
//! Every change of [`Serving`] is logged with `tracing` and, when
//! `[agent] state_log` is set, appended to that file as one JSON line:
//!
//! ```json
//! {"at_unix_ms":1763798400123,"boottime_ms":81234,"state":"serving","epoch":2,"reason":"…"}
//! ```
//!
//! `boottime_ms` is `CLOCK_BOOTTIME`, shared by every process on a kernel,
//! so the serving intervals of two sites' agents on one machine (tests,
//! jepsen) can be compared exactly; `at_unix_ms` is for people. A write
//! that fails is logged and does not stop the agent: the log is evidence,
//! not a control.

use std::fmt;
use std::io::Write;
use std::path::PathBuf;

use super::clock::BootInstant;

/// What the agent lets its node do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Serving {
    /// Just started; knows nothing yet, serves nothing.
    Starting,
    /// Its site is not the active one.
    Standby,
    /// It holds a valid lease at the current epoch: its services may run.
    Serving,
    /// Its lease ran out and the fence hooks ran (or were attempted).
    Fenced,
}

impl Serving {
    pub fn name(self) -> &'static str {
        match self {
            Serving::Starting => "starting",
            Serving::Standby => "standby",
            Serving::Serving => "serving",
            Serving::Fenced => "fenced",
        }
    }
}

impl fmt::Display for Serving {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Appends serving-state changes to `[agent] state_log`.
pub struct ServingLog {
    path: Option<PathBuf>,
}

impl ServingLog {
    pub fn new(path: Option<PathBuf>) -> ServingLog {
        ServingLog { path }
    }

    /// Record that the state is now `state` at `epoch`, because `reason`.
    pub fn record(&self, state: Serving, epoch: u64, reason: &str) {
        match state {
            Serving::Fenced => {
                tracing::error!(state = %state, epoch, "FENCED: {reason}")
            }
            _ => tracing::info!(state = %state, epoch, "now {state}: {reason}"),
        }
        let Some(path) = &self.path else { return };
        let at_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let line = serde_json::json!({
            "at_unix_ms": at_unix_ms,
            "boottime_ms": BootInstant::now().since_boot().as_millis() as u64,
            "state": state.name(),
            "epoch": epoch,
            "reason": reason,
        });
        let mut text = line.to_string();
        text.push('\n');
        // One write of one line with O_APPEND: lines never interleave.
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(text.as_bytes()));
        if let Err(e) = written {
            tracing::warn!("cannot append to the state log {}: {e}", path.display());
        }
    }
}

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
//!
//! The same file also holds the evidence a checker needs to judge that the
//! agent acted only inside a lease, as lines with an `event` field (state
//! lines have none):
//!
//! ```json
//! {"event":"lease","at_unix_ms":…,"boottime_ms":81240.125,"sent_boottime_ms":81230.5,"epoch":2,"ttl_ms":3000}
//! {"event":"run","phase":"start","kind":"activate_hook","name":"activate","epoch":2,"at_unix_ms":…,"boottime_ms":81300.2}
//! {"event":"run","phase":"end","kind":"activate_hook","name":"activate","epoch":2,"ok":true,"at_unix_ms":…,"boottime_ms":81310.9}
//! ```
//!
//! A `lease` line is a grant the agent accepted: `boottime_ms` when it
//! arrived, `sent_boottime_ms` when the request that earned it was sent
//! (the lease counts from there), `ttl_ms` as granted. A `run` start has
//! no matching end when the run was killed (a fence) or the agent died.
//! These times carry sub-millisecond digits, so a lease's bounds are not
//! rounded.

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

/// Appends serving-state changes (and lease and run evidence) to
/// `[agent] state_log`.
#[derive(Clone, Debug)]
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
        self.append(serde_json::json!({
            "at_unix_ms": unix_ms(),
            "boottime_ms": BootInstant::now().since_boot().as_millis() as u64,
            "state": state.name(),
            "epoch": epoch,
            "reason": reason,
        }));
    }

    /// Record a grant accepted at `epoch`, earned by the request sent at
    /// `sent`, lasting `ttl_ms` from it.
    pub fn lease(&self, epoch: u64, sent: BootInstant, ttl_ms: u64) {
        if self.path.is_none() {
            return;
        }
        self.append(serde_json::json!({
            "event": "lease",
            "at_unix_ms": unix_ms(),
            "boottime_ms": ms(BootInstant::now()),
            "sent_boottime_ms": ms(sent),
            "epoch": epoch,
            "ttl_ms": ttl_ms,
        }));
    }

    /// Record that a run (`kind` e.g. `activate_hook`, `name`) at `epoch`
    /// starts now (`ok: None`) or ended now with `ok`.
    pub fn run(&self, kind: &str, name: &str, epoch: u64, ok: Option<bool>) {
        if self.path.is_none() {
            return;
        }
        let mut line = serde_json::json!({
            "event": "run",
            "phase": if ok.is_some() { "end" } else { "start" },
            "kind": kind,
            "name": name,
            "epoch": epoch,
            "at_unix_ms": unix_ms(),
            "boottime_ms": ms(BootInstant::now()),
        });
        if let Some(ok) = ok {
            line["ok"] = ok.into();
        }
        self.append(line);
    }

    fn append(&self, line: serde_json::Value) {
        let Some(path) = &self.path else { return };
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

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Milliseconds since boot with microsecond digits.
fn ms(t: BootInstant) -> f64 {
    (t.since_boot().as_micros() as f64) / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// State lines keep their shape; lease and run lines carry `event`, the
    /// boot-clock times with sub-millisecond digits, and a run's end its
    /// outcome.
    #[test]
    fn state_lease_and_run_lines() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state.jsonl");
        let log = ServingLog::new(Some(path.clone()));
        let sent = BootInstant::now();
        log.record(Serving::Serving, 2, "lease granted");
        log.lease(2, sent, 3000);
        log.run("activate_hook", "activate", 2, None);
        log.run("activate_hook", "activate", 2, Some(true));
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&path)
            .expect("read the log")
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0]["state"], "serving");
        assert!(lines[0].get("event").is_none(), "{}", lines[0]);
        assert_eq!(lines[1]["event"], "lease");
        assert_eq!(lines[1]["epoch"], 2);
        assert_eq!(lines[1]["ttl_ms"], 3000);
        let sent_ms = lines[1]["sent_boottime_ms"].as_f64().expect("sent");
        let got_ms = lines[1]["boottime_ms"].as_f64().expect("arrival");
        assert!((sent_ms - ms(sent)).abs() < 0.001 && got_ms >= sent_ms);
        assert_eq!(lines[2]["event"], "run");
        assert_eq!(lines[2]["phase"], "start");
        assert_eq!(lines[2]["kind"], "activate_hook");
        assert!(lines[2].get("ok").is_none());
        assert_eq!(lines[3]["phase"], "end");
        assert_eq!(lines[3]["ok"], true);
    }

    /// Without a file nothing is written and nothing fails.
    #[test]
    fn no_file_no_lines() {
        let log = ServingLog::new(None);
        log.lease(1, BootInstant::now(), 3000);
        log.run("activate_hook", "activate", 1, None);
    }
}

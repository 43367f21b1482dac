//! Writing `history.jsonl` while the run goes on.
//!
//! Every source (clients, probes, the route sampler, the nemesis, the
//! phases) appends through one [`Recorder`]: one JSON object per line,
//! flushed at once, so a run that crashes leaves a history that
//! [`History::read`](crate::history::History::read) still accepts (at most
//! a torn last line). The meta line is written first, at creation.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::history::{Event, Meta, Ms};

/// `CLOCK_BOOTTIME` in milliseconds, with microsecond digits: the one clock
/// of every event.
pub fn now_ms() -> Ms {
    witness::agent::clock::boottime().as_micros() as f64 / 1000.0
}

/// `unix_ms − boottime_ms`, measured now: converts wall-clock times (the
/// committed history's `at_unix_ms`, the hook log) to BOOTTIME.
pub fn unix_minus_boot_ms() -> f64 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_micros() as f64 / 1000.0);
    unix - now_ms()
}

/// The history file being written.
pub struct Recorder {
    out: Mutex<BufWriter<File>>,
    next_process: AtomicU64,
    events: AtomicU64,
}

impl Recorder {
    /// Create `path` and write `meta` as its first line.
    pub fn create(path: &Path, meta: &Meta) -> std::io::Result<Recorder> {
        let r = Recorder {
            out: Mutex::new(BufWriter::new(File::create(path)?)),
            next_process: AtomicU64::new(0),
            events: AtomicU64::new(0),
        };
        r.record(&Event::Meta(meta.clone()));
        Ok(r)
    }

    /// Append one event. A write error is printed, not fatal: the run goes
    /// on and the checker will see a short history.
    pub fn record(&self, e: &Event) {
        let Ok(mut line) = serde_json::to_string(e) else {
            return;
        };
        line.push('\n');
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(err) = out.write_all(line.as_bytes()).and_then(|()| out.flush()) {
            eprintln!("jepsen: cannot append to the history: {err}");
        }
        self.events.fetch_add(1, Ordering::Relaxed);
    }

    /// A fresh client process id (a process never has two open operations;
    /// after an `info` its client continues under a new id).
    pub fn process(&self) -> u64 {
        self.next_process.fetch_add(1, Ordering::Relaxed)
    }

    /// Events written so far (the meta line included).
    pub fn count(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }
}

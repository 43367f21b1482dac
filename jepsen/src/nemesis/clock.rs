//! Clock faults: a process's clocks running fast or slow, and set forward,
//! through libfaketime (`LD_PRELOAD`, Debian's `faketime` package).
//!
//! A [`SkewedClock`] is attached to a process when it is spawned
//! ([`SkewedClock::apply`] or [`SkewedClock::env`]); from then on every
//! clock the process reads through libc — `CLOCK_REALTIME`,
//! `CLOCK_MONOTONIC` and `CLOCK_BOOTTIME`, so tokio's timers, `Instant` and
//! the agent's lease deadlines alike — runs at `rate` times real time, and
//! its sleeps are scaled to match, as on a machine whose oscillator is off.
//! Other processes keep real time, so the drift is between processes, which
//! is what the protocol must survive within `max_drift` (DESIGN.md §3.4).
//!
//! **Fixed at start.** The rate and the offset are given in the `FAKETIME`
//! variable, which libfaketime parses once, when the process starts.
//! libfaketime can also re-read a control file while the process runs, but
//! not safely in a multi-threaded process: threads parse the file into
//! shared buffers at once, and some readings come back without the offset,
//! a clock that steps back and forward again (measured here: 3,867 of 5.6
//! million readings from 4 threads re-reading on every call; with the file
//! cached for a second, a real agent still read one clock 1.7 s back after
//! a jump). Such a clock breaks the very assumption under test. So a
//! [`jump`](SkewedClock::jump) moves the offset for the *next* start: the
//! process is restarted with its clocks set forward, as a machine that
//! rebooted with its clock ahead. Only forward offsets exist.
//!
//! **Reading a skewed process's timestamps back.** What such a process
//! logs is on its own clock. libfaketime (0.9.10, Debian's) computes every
//! clock it fakes — `CLOCK_MONOTONIC` and `CLOCK_BOOTTIME` included — as
//! `start + (now − start) × rate + offset` on the *real-time* clock, where
//! `start` is when the library loaded into the process; a faked
//! `CLOCK_BOOTTIME` therefore reads like Unix time. [`SkewedClock`] keeps
//! each start and its offset ([`SkewedClock::started`] before each spawn)
//! and [`SkewedClock::real_boot_ms`] maps a logged value back to the
//! kernel's `CLOCK_BOOTTIME`, the one clock the checkers judge on. The
//! error is the spawn latency times `|rate − 1|`: microseconds.
//!
//! Needs `libfaketime.so.1` (`apt-get install -y faketime`); without it
//! [`SkewedClock::new`] fails with that instruction.

use std::path::PathBuf;
use std::time::Duration;

use super::ProcSpec;
use crate::error::{Error, Result};

/// Real Unix time in milliseconds (the harness's own clock is never faked).
fn unix_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_micros() as f64 / 1000.0)
}

/// A faked clock value above this is on the real-time scale (Unix
/// milliseconds, from 1973 on); below, on the boot-time scale.
const UNIX_SCALE_MS: f64 = 1e11;

/// Where Debian and others put libfaketime.
const LIBFAKETIME: [&str; 4] = [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
    "/usr/lib64/faketime/libfaketime.so.1",
];

/// The installed libfaketime.
pub fn libfaketime() -> Result<PathBuf> {
    LIBFAKETIME
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| {
            Error::InvalidSpec(format!(
                "libfaketime is not installed (looked in {}); install it with `apt-get install \
                 -y faketime`",
                LIBFAKETIME.join(", ")
            ))
        })
}

/// One process's clock: a rate, and an offset that only grows and takes
/// effect at the process's next start.
#[derive(Clone, Debug)]
pub struct SkewedClock {
    lib: PathBuf,
    rate: f64,
    offset: Duration,
    /// Each start of a process on this clock: real Unix ms, offset (ms).
    lives: Vec<(f64, f64)>,
}

impl SkewedClock {
    /// A clock running at `rate` (e.g. 1.005: 0.5 % fast).
    pub fn new(rate: f64) -> Result<SkewedClock> {
        SkewedClock::with_lib(libfaketime()?, rate)
    }

    /// As [`SkewedClock::new`], with libfaketime at `lib`.
    pub fn with_lib(lib: PathBuf, rate: f64) -> Result<SkewedClock> {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(Error::InvalidSpec(format!(
                "clock rate {rate} must be a positive number (1.0 is real time)"
            )));
        }
        Ok(SkewedClock {
            lib,
            rate,
            offset: Duration::ZERO,
            lives: Vec::new(),
        })
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// How far ahead the clock is set for the next start.
    pub fn offset(&self) -> Duration {
        self.offset
    }

    /// The process's environment for this clock.
    pub fn apply(&self, spec: ProcSpec) -> ProcSpec {
        self.env()
            .into_iter()
            .fold(spec, |spec, (k, v)| spec.env(k, v))
    }

    /// The environment variables that put a process on this clock.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("LD_PRELOAD", self.lib.display().to_string()),
            ("FAKETIME", self.spec()),
            // Fake the monotonic clocks too: the lease clocks are those.
            ("FAKETIME_DONT_FAKE_MONOTONIC", "0".into()),
        ]
    }

    /// A process on this clock is being spawned now (with [`env`](Self::env)
    /// as it is now): the start its timestamps count from.
    pub fn started(&mut self) {
        self.lives
            .push((unix_ms(), self.offset.as_secs_f64() * 1000.0));
    }

    /// Set the clock `by` further ahead, from the process's next start.
    pub fn jump(&mut self, by: Duration) {
        self.offset += by;
    }

    /// libfaketime's spec: `+<offset>s x<rate>`.
    fn spec(&self) -> String {
        format!("+{:.3}s x{}", self.offset.as_secs_f64(), self.rate)
    }

    /// The kernel's `CLOCK_BOOTTIME` (ms) at which a process on this clock
    /// read `fake_ms` from any of its clocks; `unix_minus_boot_ms` is the
    /// real `unix − boottime` difference. `None` before any
    /// [`started`](Self::started).
    pub fn real_boot_ms(&self, fake_ms: f64, unix_minus_boot_ms: f64) -> Option<f64> {
        // Onto the real-time scale, which libfaketime computes on.
        let f = if fake_ms > UNIX_SCALE_MS {
            fake_ms
        } else {
            fake_ms + unix_minus_boot_ms
        };
        // The process that read it: the last one whose first reading (its
        // start plus its offset) is not after it.
        let (start, offset) = *self
            .lives
            .iter()
            .rev()
            .find(|(s, o)| s + o <= f)
            .or(self.lives.first())?;
        Some(start + (f - offset - start) / self.rate - unix_minus_boot_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The environment carries libfaketime's spec; jumps only add, for the
    /// next start; a rate that is not a positive number is refused.
    #[test]
    fn spec_and_jumps() {
        let lib = PathBuf::from("/lib/faketime.so");
        let mut c = SkewedClock::with_lib(lib.clone(), 1.005).expect("clock");
        let spec = |c: &SkewedClock| {
            c.env()
                .into_iter()
                .find(|(k, _)| *k == "FAKETIME")
                .map(|(_, v)| v)
        };
        assert_eq!(spec(&c).as_deref(), Some("+0.000s x1.005"));
        c.jump(Duration::from_millis(2500));
        c.jump(Duration::from_secs(1));
        assert_eq!(spec(&c).as_deref(), Some("+3.500s x1.005"));
        assert_eq!(c.offset(), Duration::from_millis(3500));
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(SkewedClock::with_lib(lib.clone(), bad).is_err(), "{bad}");
        }
    }

    /// Faked readings map back to the real instants they were read at:
    /// through the rate, across a restart with the clock set ahead, and on
    /// both scales.
    #[test]
    fn readings_map_back_to_real_time() {
        let lib = PathBuf::from("/lib/faketime.so");
        let mut c = SkewedClock::with_lib(lib, 0.5).expect("clock");
        assert_eq!(c.real_boot_ms(5.0, 0.0), None, "nothing started yet");
        // Unix ms are about 1.8e12 today; boot ms far fewer.
        let u = 1_790_000_000_000.0;
        let boot = u - 50_000_000.0; // unix − boot
        // A process started at u+10 s with no offset; restarted at u+40 s
        // with its clock 3 s ahead.
        c.lives.push((u + 10_000.0, 0.0));
        c.lives.push((u + 40_000.0, 3_000.0));
        // fake = start + (real − start) × 0.5 + offset
        let cases = [
            (10_000.0, 10_000.0),
            (14_000.0, 18_000.0),
            (25_000.0, 40_000.0),
            (40_000.0 + 3_000.0, 40_000.0),
            (42_000.0 + 3_000.0, 44_000.0),
        ];
        for (fake, real) in cases {
            let got = c.real_boot_ms(u + fake, boot).expect("mapped");
            assert!((got - (u + real - boot)).abs() < 1e-3, "unix {fake}: {got}");
            // The same reading on the boot scale maps to the same instant.
            let got = c.real_boot_ms(u + fake - boot, boot).expect("mapped");
            assert!((got - (u + real - boot)).abs() < 1e-3, "boot {fake}: {got}");
        }
    }
}

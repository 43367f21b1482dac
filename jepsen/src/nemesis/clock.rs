//! Clock faults: a process's clocks running fast or slow, and jumping
//! forward, through libfaketime (`LD_PRELOAD`, Debian's `faketime`
//! package).
//!
//! A [`SkewedClock`] is attached to a process when it is spawned
//! ([`SkewedClock::apply`] adds the environment to its [`ProcSpec`]); from
//! then on every clock the process reads through libc — `CLOCK_REALTIME`,
//! `CLOCK_MONOTONIC` and `CLOCK_BOOTTIME`, so tokio's timers, `Instant` and
//! the agent's lease deadlines alike — runs at `rate` times real time, and
//! its sleeps are scaled to match, as on a machine whose oscillator is off.
//! Other processes keep real time, so the drift is between processes, which
//! is what the protocol must survive within `max_drift` (DESIGN.md §3.4).
//!
//! **Rate** is fixed when the process starts: libfaketime scales time from
//! the process's start, so changing the rate later would move every clock
//! by an amount that depends on the process's age, possibly backwards.
//! A drift experiment therefore starts the process with its rate (or
//! restarts it with a new one).
//!
//! **Jumps** change the offset at run time, through the control file that
//! libfaketime re-reads at most once a second (`FAKETIME_CACHE_DURATION`).
//! Re-reading it on every clock read (`FAKETIME_NO_CACHE`) is not safe in
//! a multi-threaded process: threads parse the file into shared buffers at
//! once, and some readings come back without the offset — a clock that
//! steps back by the jump and forward again (measured here: 3,867 of 5.6
//! million readings from 4 threads). So a jump is made with the process
//! stopped ([`SkewedClock::jump`] says how): stop it, let a second pass so
//! its cached spec is stale, jump, resume; its first reading after the
//! resume fetches the new offset, and the jump's recorded time is exact.
//! Only forward jumps exist: the kernel never moves a monotonic clock back,
//! and a backward jump would test libfaketime, not the witness. A forward
//! jump of the monotonic clocks looks to the process like a stall of that
//! length, which the agent must detect and treat as one (its lease counts
//! as spent).
//!
//! **Reading a skewed process's timestamps back.** What such a process
//! logs is on its own clock. libfaketime (0.9.10, Debian's) computes every
//! clock it fakes — `CLOCK_MONOTONIC` and `CLOCK_BOOTTIME` included — as
//! `start + (now − start) × rate + offset` on the *real-time* clock, where
//! `start` is when the library loaded into the process; a faked
//! `CLOCK_BOOTTIME` therefore reads like Unix time. [`SkewedClock`] keeps
//! what it needs to undo that ([`SkewedClock::started`] before each spawn,
//! every jump with the real time it was made) and
//! [`SkewedClock::real_boot_ms`] maps a logged value back to the kernel's
//! `CLOCK_BOOTTIME`, the one clock the checkers judge on. The error is the
//! spawn latency times `|rate − 1|`: microseconds.
//!
//! Needs `libfaketime.so.1` (`apt-get install -y faketime`); without it
//! [`SkewedClock::new`] fails with that instruction.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::ProcSpec;
use crate::error::{Error, Result};

/// Real Unix time in milliseconds (the harness's own clock is never faked).
fn unix_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_micros() as f64 / 1000.0)
}

/// How long libfaketime keeps the control file's spec (seconds).
const CACHE_SECS: u64 = 1;

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

/// One process's clock: a rate fixed at start and an offset that only
/// grows.
#[derive(Clone, Debug)]
pub struct SkewedClock {
    lib: PathBuf,
    control: PathBuf,
    rate: f64,
    offset: Duration,
    /// Real Unix ms at which each process on this clock was spawned.
    lives: Vec<f64>,
    /// Each jump: real Unix ms when made, the total offset (ms) after it.
    jumps: Vec<(f64, f64)>,
}

impl SkewedClock {
    /// A clock running at `rate` (e.g. 1.005: 0.5 % fast) controlled
    /// through the file `control` (written now).
    pub fn new(control: &Path, rate: f64) -> Result<SkewedClock> {
        SkewedClock::with_lib(libfaketime()?, control, rate)
    }

    /// As [`SkewedClock::new`], with libfaketime at `lib`.
    pub fn with_lib(lib: PathBuf, control: &Path, rate: f64) -> Result<SkewedClock> {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(Error::InvalidSpec(format!(
                "clock rate {rate} must be a positive number (1.0 is real time)"
            )));
        }
        let clock = SkewedClock {
            lib,
            control: control.to_path_buf(),
            rate,
            offset: Duration::ZERO,
            lives: Vec::new(),
            jumps: Vec::new(),
        };
        clock.write()?;
        Ok(clock)
    }

    /// How long a process must have been stopped before a
    /// [`jump`](Self::jump): past libfaketime's cache of the spec.
    pub const SETTLE: Duration = Duration::from_millis(CACHE_SECS * 1000 + 200);

    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// How far ahead the clock has been jumped so far.
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
            (
                "FAKETIME_TIMESTAMP_FILE",
                self.control.display().to_string(),
            ),
            // Re-read the control file on every clock read, so a jump
            // takes effect at once.
            ("FAKETIME_NO_CACHE", "1".into()),
            // Fake the monotonic clocks too: the lease clocks are those.
            ("FAKETIME_DONT_FAKE_MONOTONIC", "0".into()),
        ]
    }

    /// A process on this clock is being spawned now: the start its
    /// timestamps count from.
    pub fn started(&mut self) {
        self.lives.push(unix_ms());
    }

    /// Move every clock of the process forward by `by`, now. The process
    /// must be stopped (SIGSTOP) for at least [`SkewedClock::SETTLE`]
    /// before this and resumed after: then every reading it makes after
    /// the resume has the new offset, and none before.
    pub fn jump(&mut self, by: Duration) -> Result<()> {
        self.offset += by;
        self.jumps
            .push((unix_ms(), self.offset.as_secs_f64() * 1000.0));
        self.write()
    }

    /// The offset (ms) in force at real Unix ms `at`.
    fn offset_at(&self, at: f64) -> f64 {
        self.jumps
            .iter()
            .rev()
            .find(|(t, _)| *t <= at)
            .map_or(0.0, |(_, o)| *o)
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
        // The process that read it: the last one started before (its
        // first reading is its start plus the offset then).
        let start = *self
            .lives
            .iter()
            .rev()
            .find(|s| **s + self.offset_at(**s) <= f)
            .or(self.lives.first())?;
        // The offset in force when it was read: the latest jump whose
        // segment, undone, lands after the jump was made.
        let mut segments: Vec<(f64, f64)> = vec![(start, self.offset_at(start))];
        segments.extend(self.jumps.iter().filter(|(t, _)| *t > start).copied());
        let real = segments
            .iter()
            .rev()
            .map(|(from, off)| (from, start + (f - off - start) / self.rate))
            .find(|(from, real)| real >= from)
            .map_or(start + (f - start) / self.rate, |(_, real)| real);
        Some(real - unix_minus_boot_ms)
    }

    /// libfaketime's spec: `+<offset>s x<rate>`.
    fn spec(&self) -> String {
        format!("+{:.3}s x{}", self.offset.as_secs_f64(), self.rate)
    }

    fn write(&self) -> Result<()> {
        // Written whole and renamed, so a clock read never sees half a spec.
        let tmp = self.control.with_extension("tmp");
        fs::write(&tmp, format!("{}\n", self.spec()))
            .and_then(|()| fs::rename(&tmp, &self.control))
            .map_err(|e| {
                Error::InvalidSpec(format!(
                    "cannot write the clock control file {}: {e}",
                    self.control.display()
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The control file holds libfaketime's spec; jumps only add; a rate
    /// that is not a positive number is refused.
    #[test]
    fn spec_and_jumps() {
        let dir = std::env::temp_dir().join(format!("clock-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("w1.faketime");
        let lib = PathBuf::from("/lib/faketime.so");
        let mut c = SkewedClock::with_lib(lib.clone(), &file, 1.005).expect("clock");
        assert_eq!(fs::read_to_string(&file).expect("read"), "+0.000s x1.005\n");
        c.jump(Duration::from_millis(2500)).expect("jump");
        c.jump(Duration::from_secs(1)).expect("jump");
        assert_eq!(fs::read_to_string(&file).expect("read"), "+3.500s x1.005\n");
        assert_eq!(c.offset(), Duration::from_millis(3500));
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(
                SkewedClock::with_lib(lib.clone(), &file, bad).is_err(),
                "{bad}"
            );
        }
        let _ = fs::remove_dir_all(&dir);
    }

    /// Faked readings map back to the real instants they were read at:
    /// through the rate, a jump, a restart, and on both scales.
    #[test]
    fn readings_map_back_to_real_time() {
        let dir = tempfile::tempdir().expect("dir");
        let lib = PathBuf::from("/lib/faketime.so");
        let mut c = SkewedClock::with_lib(lib, &dir.path().join("c"), 0.5).expect("clock");
        assert_eq!(c.real_boot_ms(5.0, 0.0), None, "nothing started yet");
        // Unix ms are about 1.8e12 today; boot ms far fewer.
        let u = 1_790_000_000_000.0;
        let boot = u - 50_000_000.0; // unix − boot
        // A process started at real unix u+10 s, jumps of +2 s at u+20 s
        // and +1 s more at u+30 s, a restart at u+40 s.
        c.lives.push(u + 10_000.0);
        c.jumps.push((u + 20_000.0, 2_000.0));
        c.jumps.push((u + 30_000.0, 3_000.0));
        c.lives.push(u + 40_000.0);
        // fake = start + (real − start) × 0.5 + offset
        let cases = [
            (10_000.0, 10_000.0),
            (14_000.0, 18_000.0),
            (15_000.0 + 2_000.0, 20_000.0),
            (17_000.0 + 2_000.0, 24_000.0),
            (20_000.0 + 3_000.0, 30_000.0),
            (21_000.0 + 3_000.0, 32_000.0),
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

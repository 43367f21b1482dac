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
//! libfaketime re-reads on every clock read. Only forward jumps exist: the
//! kernel never moves a monotonic clock back, and a backward jump would
//! test libfaketime, not the witness. A forward jump of the monotonic
//! clocks looks to the process like a stall of that length, which the
//! agent must detect and treat as one (its lease counts as spent).
//!
//! Needs `libfaketime.so.1` (`apt-get install -y faketime`); without it
//! [`SkewedClock::new`] fails with that instruction.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::ProcSpec;
use crate::error::{Error, Result};

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
        };
        clock.write()?;
        Ok(clock)
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// How far ahead the clock has been jumped so far.
    pub fn offset(&self) -> Duration {
        self.offset
    }

    /// The process's environment for this clock.
    pub fn apply(&self, spec: ProcSpec) -> ProcSpec {
        spec.env("LD_PRELOAD", &self.lib)
            .env("FAKETIME_TIMESTAMP_FILE", &self.control)
            // Re-read the control file on every clock read, so a jump
            // takes effect at once.
            .env("FAKETIME_NO_CACHE", "1")
            // Fake the monotonic clocks too: the lease clocks are those.
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "0")
    }

    /// Move every clock of the process forward by `by`, now.
    pub fn jump(&mut self, by: Duration) -> Result<()> {
        self.offset += by;
        self.write()
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
}

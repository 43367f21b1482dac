//! Clock faults: a process's clocks running fast or slow, set forward, and
//! stepped while it runs, through the harness's own injectable clock,
//! `libjepsen_clockshim.so` (the `jepsen-clockshim` crate, preloaded with
//! `LD_PRELOAD`).
//!
//! A [`SkewedClock`] is one machine's clock: a control file the shim maps
//! into every process started with [`SkewedClock::env`] (restarts
//! included, so the clock continues across them). From then on every clock
//! the process reads through the C library — `CLOCK_REALTIME`,
//! `CLOCK_MONOTONIC` and `CLOCK_BOOTTIME`, so tokio's timers, `Instant`, the
//! agent's lease deadlines and the wall clock alike — runs at `rate` times
//! real time, and its sleeps and timeouts are scaled to match, as on a
//! machine whose oscillator is off. Other processes keep real time, so the
//! drift is between processes, which is what the protocol must survive
//! within `max_drift` (DESIGN.md §3.4).
//!
//! **Jumps while the process runs.** The control file holds two offsets,
//! each read by the shim with one atomic load per call and written here
//! with one atomic store, so every thread of a running process sees the old
//! value or the new one and nothing in between:
//!
//! - [`jump`](SkewedClock::jump) moves the monotonic and boot clocks
//!   forward (never back: those clocks never go back on a real machine), as
//!   a host that was frozen and resumed sees time leap;
//! - [`step_wall`](SkewedClock::step_wall) steps the wall clock either
//!   way, as an NTP step or an operator's `date -s` does.
//!
//! (libfaketime, which this replaced, re-parses a text file into shared
//! buffers on a change; in a multi-threaded process some readings came back
//! without the offset, a clock stepping back and forth: 3,867 of 5.6
//! million readings from 4 threads.)
//!
//! **Reading a skewed process's timestamps back.** What such a process
//! logs on its boot clock is `A + (t − A) × rate + offset(t)`, where `t` is
//! the kernel's `CLOCK_BOOTTIME`, `A` the anchor written into the control
//! file at its creation and `offset(t)` the monotonic offset in force. The
//! clock keeps each offset change with the kernel time just before it, so
//! [`real_boot_ms`](SkewedClock::real_boot_ms) inverts that exactly: the
//! boot clock the checkers judge on is never faked.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::ProcSpec;
use crate::error::{Error, Result};
use control::{MAGIC, SIZE};

/// The kernel's clock `id` in nanoseconds (the harness's own clocks are
/// never faked).
fn kernel_ns(id: nix::time::ClockId) -> i64 {
    let t = nix::time::clock_gettime(id).expect("the kernel's clocks can be read");
    t.tv_sec() * 1_000_000_000 + t.tv_nsec()
}

/// The kernel's `CLOCK_BOOTTIME` in milliseconds.
fn boot_ms() -> f64 {
    kernel_ns(nix::time::ClockId::CLOCK_BOOTTIME) as f64 / 1e6
}

/// The shim as the harness builds it (next to the product's binaries).
pub fn clockshim() -> Result<PathBuf> {
    let lib = crate::lab::bin_dir().join("libjepsen_clockshim.so");
    if lib.exists() {
        Ok(lib)
    } else {
        Err(Error::InvalidSpec(format!(
            "{} is missing; build it with `cargo build -p jepsen-clockshim` (the harness's \
             build of the binaries does)",
            lib.display()
        )))
    }
}

/// One machine's clock: a rate, a monotonic offset that only grows, a wall
/// offset, all read by the processes on it as they run.
#[derive(Debug)]
pub struct SkewedClock {
    lib: PathBuf,
    path: PathBuf,
    rate: f64,
    control: control::Mapped,
    /// The boot clock's anchor (kernel ms).
    anchor_boot_ms: f64,
    /// Each monotonic offset and the kernel boot time (ms) just before it
    /// took effect; the first is the file's creation with offset 0.
    steps: Vec<(f64, f64)>,
}

impl SkewedClock {
    /// A clock running at `rate` (e.g. 1.005: 0.5 % fast), its control
    /// file at `path` (created or replaced).
    pub fn new(path: &Path, rate: f64) -> Result<SkewedClock> {
        SkewedClock::with_lib(clockshim()?, path, rate)
    }

    /// As [`SkewedClock::new`], with the shim at `lib`.
    pub fn with_lib(lib: PathBuf, path: &Path, rate: f64) -> Result<SkewedClock> {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(Error::InvalidSpec(format!(
                "clock rate {rate} must be a positive number (1.0 is real time)"
            )));
        }
        use nix::time::ClockId;
        let real = kernel_ns(ClockId::CLOCK_REALTIME);
        let mono = kernel_ns(ClockId::CLOCK_MONOTONIC);
        let boot = kernel_ns(ClockId::CLOCK_BOOTTIME);
        let mut bytes = Vec::with_capacity(SIZE);
        bytes.extend_from_slice(&MAGIC.to_le_bytes());
        bytes.extend_from_slice(&rate.to_bits().to_le_bytes());
        for v in [real, mono, boot, 0, 0] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        debug_assert_eq!(bytes.len(), SIZE);
        let what = format!("the clock control file {}", path.display());
        let control = (|| {
            let mut f = File::create(path)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            let file = OpenOptions::new().read(true).write(true).open(path)?;
            control::Mapped::new(&file)
        })()
        .map_err(|e| Error::io(what, e))?;
        let anchor_boot_ms = boot as f64 / 1e6;
        Ok(SkewedClock {
            lib,
            path: path.to_path_buf(),
            rate,
            control,
            anchor_boot_ms,
            steps: vec![(anchor_boot_ms, 0.0)],
        })
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// How far ahead the monotonic and boot clocks are (beyond the rate).
    pub fn offset(&self) -> Duration {
        Duration::from_nanos(
            self.control
                .layout()
                .mono_offset_ns
                .load(Ordering::Acquire)
                .max(0) as u64,
        )
    }

    /// How far the wall clock is stepped (beyond the rate), in ms.
    pub fn wall_offset_ms(&self) -> f64 {
        self.control.layout().real_offset_ns.load(Ordering::Acquire) as f64 / 1e6
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
            ("JEPSEN_CLOCK", self.path.display().to_string()),
        ]
    }

    /// Move the monotonic and boot clocks `by` forward, now, in every
    /// process on this clock.
    pub fn jump(&mut self, by: Duration) {
        let layout = self.control.layout();
        let next = layout.mono_offset_ns.load(Ordering::Acquire) + by.as_nanos() as i64;
        // The kernel time first: a reading that already saw the new offset
        // is then never mapped to before this step.
        self.steps.push((boot_ms(), next as f64 / 1e6));
        layout.mono_offset_ns.store(next, Ordering::Release);
    }

    /// Step the wall clock by `by_ms` (either way), now.
    pub fn step_wall(&mut self, by_ms: i64) {
        let layout = self.control.layout();
        let next = layout.real_offset_ns.load(Ordering::Acquire) + by_ms * 1_000_000;
        layout.real_offset_ns.store(next, Ordering::Release);
    }

    /// The kernel's `CLOCK_BOOTTIME` (ms) at which a process on this clock
    /// read `fake_ms` from its boot (or monotonic) clock.
    pub fn real_boot_ms(&self, fake_ms: f64) -> f64 {
        let a = self.anchor_boot_ms;
        let fake_at = |r: f64, off: f64| a + (r - a) * self.rate + off;
        let (_, off) = self
            .steps
            .iter()
            .rev()
            .find(|(r, off)| fake_at(*r, *off) <= fake_ms)
            .unwrap_or(&self.steps[0]);
        a + (fake_ms - off - a) / self.rate
    }
}

/// `jepsen clock-probe`: what a process on a [`SkewedClock`] sees. Reads
/// its clocks through the C library (so the shim's, when preloaded), then
/// sleeps `sleep` by its own clock, then reads its monotonic and boot clocks
/// from `threads` threads at once until `run` has passed on them, and
/// returns (all in ns): `start` and `end` readings (`real`, `mono`,
/// `boot`), the boot clock just before and after the sleep, and across
/// all threads the largest step back (`back`) and forward (`leap`) between
/// two readings of one thread.
pub fn probe(threads: usize, sleep: Duration, run: Duration) -> serde_json::Value {
    use nix::time::ClockId;
    let read = || {
        [
            kernel_ns(ClockId::CLOCK_REALTIME),
            kernel_ns(ClockId::CLOCK_MONOTONIC),
            kernel_ns(ClockId::CLOCK_BOOTTIME),
        ]
    };
    let start = read();
    let before_sleep = kernel_ns(ClockId::CLOCK_BOOTTIME);
    std::thread::sleep(sleep);
    let after_sleep = kernel_ns(ClockId::CLOCK_BOOTTIME);
    let until = kernel_ns(ClockId::CLOCK_MONOTONIC) + run.as_nanos() as i64;
    let handles: Vec<_> = (0..threads.max(1))
        .map(|_| {
            std::thread::spawn(move || {
                let (mut back, mut leap) = (0i64, 0i64);
                let mut prev = [
                    kernel_ns(ClockId::CLOCK_MONOTONIC),
                    kernel_ns(ClockId::CLOCK_BOOTTIME),
                ];
                while prev[0] < until {
                    let now = [
                        kernel_ns(ClockId::CLOCK_MONOTONIC),
                        kernel_ns(ClockId::CLOCK_BOOTTIME),
                    ];
                    for i in 0..2 {
                        back = back.max(prev[i] - now[i]);
                        leap = leap.max(now[i] - prev[i]);
                    }
                    prev = now;
                }
                (back, leap)
            })
        })
        .collect();
    let (mut back, mut leap) = (0i64, 0i64);
    for h in handles {
        let (b, l) = h.join().unwrap_or((i64::MAX, 0));
        back = back.max(b);
        leap = leap.max(l);
    }
    let end = read();
    let three = |r: [i64; 3]| serde_json::json!({"real": r[0], "mono": r[1], "boot": r[2]});
    serde_json::json!({
        "start": three(start),
        "end": three(end),
        "sleep": {"before_boot": before_sleep, "after_boot": after_sleep},
        "back": back,
        "leap": leap,
    })
}

/// The control file mapped shared and writable, for atomic stores the
/// shim's loads see at once.
mod control {
    #![allow(unsafe_code)] // mmap and a typed view of shared memory

    use std::fs::File;
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicI64, AtomicU64};

    /// `JCLOCK01`, little-endian, at offset 0.
    pub const MAGIC: u64 = u64::from_le_bytes(*b"JCLOCK01");

    /// The control file, as `jepsen-clockshim` maps it (its `Layout`; a
    /// cdylib cannot be linked as a library, so the 56 bytes are written
    /// out twice, and `tests/faults.rs` runs a process under the real shim
    /// to hold the two together).
    #[repr(C)]
    pub struct Layout {
        pub magic: AtomicU64,
        /// `f64` bits.
        pub rate: AtomicU64,
        /// Kernel `CLOCK_REALTIME`, `CLOCK_MONOTONIC`, `CLOCK_BOOTTIME`
        /// (ns) at creation.
        pub anchor_real_ns: AtomicI64,
        pub anchor_mono_ns: AtomicI64,
        pub anchor_boot_ns: AtomicI64,
        /// Added to the monotonic and boot clocks; only ever grows.
        pub mono_offset_ns: AtomicI64,
        /// Added to the wall clock.
        pub real_offset_ns: AtomicI64,
    }

    /// The file's size.
    pub const SIZE: usize = std::mem::size_of::<Layout>();

    #[derive(Debug)]
    pub struct Mapped(*mut Layout);

    // SAFETY: the mapping is only accessed through atomics.
    unsafe impl Send for Mapped {}
    // SAFETY: likewise.
    unsafe impl Sync for Mapped {}

    impl Mapped {
        pub fn new(file: &File) -> std::io::Result<Mapped> {
            // SAFETY: maps SIZE bytes of an open file of at least that
            // size, shared; unmapped only on drop.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    SIZE,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    file.as_raw_fd(),
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(std::io::Error::last_os_error());
            }
            Ok(Mapped(p.cast()))
        }

        pub fn layout(&self) -> &Layout {
            // SAFETY: page-aligned, SIZE bytes, alive until drop; every
            // field is an atomic.
            unsafe { &*self.0 }
        }
    }

    impl Drop for Mapped {
        fn drop(&mut self) {
            // SAFETY: the mapping made in `new`, not used after this.
            unsafe { libc::munmap(self.0.cast(), SIZE) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Readings map back to the kernel instants they were read at: through
    /// the rate, and across forward jumps.
    #[test]
    fn readings_map_back_to_real_time() {
        let dir = tempfile::tempdir().expect("temp dir");
        let lib = PathBuf::from("/lib/clockshim.so");
        let mut c = SkewedClock::with_lib(lib.clone(), &dir.path().join("c"), 0.5).expect("clock");
        let a = c.anchor_boot_ms;
        // Pretend the jumps happened at a+10 s (+3 s) and a+20 s (+5 s).
        c.steps.push((a + 10_000.0, 3_000.0));
        c.steps.push((a + 20_000.0, 8_000.0));
        let fake = |r: f64, off: f64| a + (r - a) * 0.5 + off;
        for (real, off) in [
            (a, 0.0),
            (a + 4_000.0, 0.0),
            (a + 9_999.0, 0.0),
            (a + 10_000.0, 3_000.0),
            (a + 15_000.0, 3_000.0),
            (a + 25_000.0, 8_000.0),
        ] {
            let got = c.real_boot_ms(fake(real, off));
            assert!((got - real).abs() < 1e-6, "{real}: {got}");
        }
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(
                SkewedClock::with_lib(lib.clone(), &dir.path().join("bad"), bad).is_err(),
                "{bad}"
            );
        }
    }

    /// Jumps add to the monotonic offset; wall steps go either way; both
    /// land in the control file.
    #[test]
    fn jumps_and_steps_reach_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("c");
        let mut c =
            SkewedClock::with_lib(PathBuf::from("/lib/clockshim.so"), &path, 1.0).expect("clock");
        c.jump(Duration::from_millis(2500));
        c.jump(Duration::from_secs(1));
        c.step_wall(-60_000);
        assert_eq!(c.offset(), Duration::from_millis(3500));
        assert_eq!(c.wall_offset_ms(), -60_000.0);
        let bytes = std::fs::read(&path).expect("read");
        let at = |i: usize| i64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        assert_eq!(at(40), 3_500_000_000);
        assert_eq!(at(48), -60_000_000_000);
        assert_eq!(
            u64::from_le_bytes(bytes[0..8].try_into().expect("8")),
            MAGIC
        );
    }
}

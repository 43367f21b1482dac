//! The agent's clock: `CLOCK_BOOTTIME`, lease [`Deadline`]s on it, and a
//! [`StallDetector`] that notices when the process was frozen.
//!
//! # Why BOOTTIME
//!
//! A lease is valid for `lease_ttl` from the send time of the request that
//! earned it (DESIGN.md §3.4). Every clock the agent could use must run at
//! least as fast as real time, or the agent would believe in a lease the
//! leader already counts as over. `CLOCK_MONOTONIC` (what `std::time::Instant`
//! and tokio's timers use on Linux) stops while the machine is suspended:
//! an agent whose host slept for a minute would wake up believing it still
//! held a lease that ended 57 seconds ago. `CLOCK_BOOTTIME` is the same
//! clock plus the time spent suspended, so a lease counted on it expires on
//! time across a suspend. NTP slews both at the same rate, bounded by
//! `max_drift`. (A *paused VM* is different: the guest's clocks stop
//! entirely and nothing inside it can tell; only an outside fence bounds
//! that case.)
//!
//! Tokio's timers still run on `CLOCK_MONOTONIC`; that is fine for *when to
//! wake up*, as long as *whether the lease is still valid* is always
//! decided by comparing [`BootInstant`]s. After a suspend a tokio sleep may
//! end late; the deadline is never late.
//!
//! # Stalls
//!
//! A process can also be stopped without the machine sleeping: SIGSTOP,
//! a cgroup freezer, heavy swapping, a debugger. Then the loop wakes up
//! late and everything it knew (the lease, the claim, the verdict) may be
//! stale. The [`StallDetector`] compares how long a sleep actually took on
//! BOOTTIME with how long was asked; a difference beyond the tolerance is a
//! [`Stall`], and the agent's loop must re-check its lease before taking
//! any other step (DESIGN.md §3.4 "After any stall it re-checks the lease").
//!
//! The time source is injectable ([`TimeSource`]), so the logic is tested
//! with scripted instants; one test stops a real child process with
//! SIGSTOP and sees it report the stall.

use std::fmt;
use std::time::Duration;

/// An instant on `CLOCK_BOOTTIME`: time since boot, suspend included.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BootInstant(Duration);

impl BootInstant {
    /// Now, on `CLOCK_BOOTTIME`.
    pub fn now() -> BootInstant {
        BootInstant(boottime())
    }

    /// The instant `since_boot` after boot (for tests and for instants
    /// carried across a process boundary, e.g. in a log).
    pub const fn from_since_boot(since_boot: Duration) -> BootInstant {
        BootInstant(since_boot)
    }

    /// Time since boot.
    pub const fn since_boot(self) -> Duration {
        self.0
    }

    /// How long after `earlier` this is; zero if it is not later.
    pub fn saturating_since(self, earlier: BootInstant) -> Duration {
        self.0.saturating_sub(earlier.0)
    }

    /// This instant plus `d`, saturating at the far future.
    pub fn saturating_add(self, d: Duration) -> BootInstant {
        BootInstant(self.0.saturating_add(d))
    }
}

impl fmt::Display for BootInstant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "boot+{:.3}s", self.0.as_secs_f64())
    }
}

/// `CLOCK_BOOTTIME` as a duration since boot.
///
/// # Panics
/// If the kernel refuses `CLOCK_BOOTTIME` (Linux has had it since 2.6.39):
/// an agent without a suspend-aware clock cannot keep its lease promise,
/// so it must not run at all.
pub fn boottime() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one `timespec` through the pointer, which
    // points to a live, properly aligned local of exactly that type.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    assert_eq!(
        rc,
        0,
        "clock_gettime(CLOCK_BOOTTIME) failed: {}; the agent needs a suspend-aware clock",
        std::io::Error::last_os_error()
    );
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u32::try_from(ts.tv_nsec).unwrap_or(0);
    Duration::new(secs, nanos)
}

/// Where instants come from: the real BOOTTIME clock, or a script in tests.
pub trait TimeSource: Send + Sync {
    fn now(&self) -> BootInstant;
}

/// The real `CLOCK_BOOTTIME`.
#[derive(Clone, Copy, Debug, Default)]
pub struct BootClock;

impl TimeSource for BootClock {
    fn now(&self) -> BootInstant {
        BootInstant::now()
    }
}

/// The end of a lease (or a claim): `ttl` after the *send* instant of the
/// request that earned it. Counting from the send, not the answer, means
/// the agent's lease always ends no later than the leader believes it
/// does, however long the answer took to arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline {
    at: BootInstant,
}

impl Deadline {
    /// The deadline `ttl` after `sent`.
    pub fn after(sent: BootInstant, ttl: Duration) -> Deadline {
        Deadline {
            at: sent.saturating_add(ttl),
        }
    }

    /// The instant it passes.
    pub fn at(&self) -> BootInstant {
        self.at
    }

    /// Whether it has passed at `now`. The deadline instant itself counts
    /// as expired: a lease is valid strictly before it.
    pub fn expired_at(&self, now: BootInstant) -> bool {
        now >= self.at
    }

    /// Time left at `now`; zero once expired.
    pub fn remaining_at(&self, now: BootInstant) -> Duration {
        self.at.saturating_since(now)
    }

    /// Whether it has passed, on the real clock.
    pub fn expired(&self) -> bool {
        self.expired_at(BootInstant::now())
    }

    /// Time left, on the real clock.
    pub fn remaining(&self) -> Duration {
        self.remaining_at(BootInstant::now())
    }
}

/// The process was not running for longer than it asked to sleep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stall {
    /// The sleep that was asked for.
    pub asked: Duration,
    /// How long it actually took, on BOOTTIME.
    pub took: Duration,
}

impl Stall {
    /// How much longer than asked.
    pub fn excess(&self) -> Duration {
        self.took.saturating_sub(self.asked)
    }
}

impl fmt::Display for Stall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a {:?} sleep took {:?} ({:?} late): the process was stopped, frozen or starved",
            self.asked,
            self.took,
            self.excess()
        )
    }
}

/// Decides whether a sleep overran by more than `tolerance`.
///
/// The tolerance absorbs ordinary scheduling jitter (timer slack, a busy
/// runtime); pick it well below the renew interval, since a stall longer
/// than that is exactly what may have cost the lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StallDetector {
    tolerance: Duration,
}

impl StallDetector {
    pub const fn new(tolerance: Duration) -> StallDetector {
        StallDetector { tolerance }
    }

    /// The stall, if a sleep of `asked` that began at `before` and ended at
    /// `after` took longer than `asked + tolerance`. A clock that went
    /// backwards (impossible for BOOTTIME; possible for a bad script)
    /// counts as no time passing, never as a stall.
    pub fn check(&self, asked: Duration, before: BootInstant, after: BootInstant) -> Option<Stall> {
        let took = after.saturating_since(before);
        (took > asked.saturating_add(self.tolerance)).then_some(Stall { asked, took })
    }
}

/// A loop's sleep that reports stalls: sleep with tokio, measure on the
/// time source.
pub struct Ticker<S: TimeSource = BootClock> {
    source: S,
    detector: StallDetector,
}

impl Ticker<BootClock> {
    /// A ticker on the real BOOTTIME clock.
    pub fn new(tolerance: Duration) -> Ticker<BootClock> {
        Ticker::with_source(BootClock, tolerance)
    }
}

impl<S: TimeSource> Ticker<S> {
    pub fn with_source(source: S, tolerance: Duration) -> Ticker<S> {
        Ticker {
            source,
            detector: StallDetector::new(tolerance),
        }
    }

    /// The current instant of this ticker's source.
    pub fn now(&self) -> BootInstant {
        self.source.now()
    }

    /// Sleep `period`; `Some(stall)` if it took longer than it should have.
    /// The caller must then re-check its lease before any other step.
    pub async fn sleep(&self, period: Duration) -> Option<Stall> {
        let before = self.source.now();
        tokio::time::sleep(period).await;
        let after = self.source.now();
        let stall = self.detector.check(period, before, after);
        if let Some(stall) = &stall {
            tracing::warn!("stall detected: {stall}; re-checking the lease before anything else");
        }
        stall
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use super::*;

    fn at(ms: u64) -> BootInstant {
        BootInstant::from_since_boot(Duration::from_millis(ms))
    }

    /// A lease is valid strictly before send + ttl, and the remaining time
    /// shrinks to zero, never below.
    #[test]
    fn deadline_counts_from_the_send_instant() {
        let d = Deadline::after(at(10_000), Duration::from_secs(3));
        assert_eq!(d.at(), at(13_000));
        assert!(!d.expired_at(at(12_999)));
        assert!(d.expired_at(at(13_000)));
        assert!(d.expired_at(at(20_000)));
        assert_eq!(d.remaining_at(at(12_000)), Duration::from_secs(1));
        assert_eq!(d.remaining_at(at(14_000)), Duration::ZERO);
    }

    /// A deadline far in the future saturates instead of wrapping into the past.
    #[test]
    fn deadline_saturates() {
        let d = Deadline::after(
            BootInstant::from_since_boot(Duration::MAX),
            Duration::from_secs(1),
        );
        assert!(!d.expired_at(at(u64::MAX / 2)));
    }

    /// Table: which sleeps count as stalls.
    #[test]
    fn detector_flags_only_overruns_beyond_tolerance() {
        let detector = StallDetector::new(Duration::from_millis(100));
        let asked = Duration::from_millis(200);
        let cases: &[(u64, u64, bool)] = &[
            (1_000, 1_200, false), // on time
            (1_000, 1_300, false), // exactly at the tolerance
            (1_000, 1_301, true),  // just beyond
            (1_000, 4_000, true),  // SIGSTOP for ~3 s
            (1_000, 900, false),   // a clock going backwards is no stall
            (1_000, 1_000, false), // woke early
        ];
        for (before, after, stalled) in cases {
            let got = detector.check(asked, at(*before), at(*after));
            assert_eq!(got.is_some(), *stalled, "{before}->{after}: {got:?}");
        }
        let stall = detector.check(asked, at(0), at(3_200)).expect("stall");
        assert_eq!(stall.excess(), Duration::from_secs(3));
        assert!(stall.to_string().contains("stopped"));
    }

    /// Scripted instants, one per `now()` call.
    struct Script(Mutex<VecDeque<BootInstant>>);

    impl TimeSource for Script {
        fn now(&self) -> BootInstant {
            self.0
                .lock()
                .expect("script lock")
                .pop_front()
                .expect("script has an instant left")
        }
    }

    /// The ticker measures each sleep on its injected source, not on the
    /// runtime's timer.
    #[tokio::test]
    async fn ticker_reports_a_frozen_sleep() {
        let script = Script(Mutex::new(
            [at(0), at(1), at(1), at(2_001)].into_iter().collect(),
        ));
        let ticker = Ticker::with_source(script, Duration::from_millis(20));
        assert_eq!(ticker.sleep(Duration::from_millis(1)).await, None);
        let stall = ticker.sleep(Duration::from_millis(1)).await.expect("stall");
        assert_eq!(stall.took, Duration::from_secs(2));
    }

    /// BOOTTIME advances with real time, and a real sleep is not a stall.
    #[tokio::test]
    async fn real_clock_advances_and_real_sleeps_are_not_stalls() {
        let a = BootInstant::now();
        let mono = std::time::Instant::now();
        let ticker = Ticker::new(Duration::from_millis(200));
        assert_eq!(ticker.sleep(Duration::from_millis(30)).await, None);
        let b = BootInstant::now();
        let boot_elapsed = b.saturating_since(a);
        assert!(
            boot_elapsed >= Duration::from_millis(30),
            "{boot_elapsed:?}"
        );
        // BOOTTIME and MONOTONIC tick together while nothing is suspended.
        let diff = boot_elapsed.abs_diff(mono.elapsed());
        assert!(diff < Duration::from_millis(50), "{diff:?}");
        // A blocking stretch inside the loop is seen like a freeze.
        let before = BootInstant::now();
        std::thread::sleep(Duration::from_millis(300));
        let stall = StallDetector::new(Duration::from_millis(100)).check(
            Duration::from_millis(10),
            before,
            BootInstant::now(),
        );
        assert!(stall.is_some());
    }

    const CHILD_ENV: &str = "WITNESS_TEST_STALL_CHILD";

    /// Not a test on its own: the child process of
    /// `sigstop_is_reported_as_a_stall`. Ticks every 20 ms for 3 s and prints
    /// each stall it sees.
    #[tokio::test]
    #[ignore = "helper process for sigstop_is_reported_as_a_stall"]
    async fn stall_child() {
        if std::env::var_os(CHILD_ENV).is_none() {
            return;
        }
        let ticker = Ticker::new(Duration::from_millis(150));
        println!("CHILD READY");
        let start = BootInstant::now();
        while BootInstant::now().saturating_since(start) < Duration::from_secs(3) {
            if let Some(stall) = ticker.sleep(Duration::from_millis(20)).await {
                println!("STALL {}", stall.took.as_millis());
            }
        }
        println!("CHILD DONE");
    }

    /// A process stopped with SIGSTOP for ~700 ms reports a stall of about
    /// that length when it continues: the real clock and the real detector,
    /// in a child process running `stall_child`.
    #[test]
    fn sigstop_is_reported_as_a_stall() {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};

        let exe = std::env::current_exe().expect("test binary path");
        let mut child = Command::new(exe)
            .args([
                "--exact",
                "agent::clock::tests::stall_child",
                "--include-ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("child stdout");
        let mut lines = BufReader::new(stdout).lines();
        // Wait until its loop runs, then freeze it.
        for line in lines.by_ref() {
            if line.expect("read").contains("CHILD READY") {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        let pid = libc::pid_t::try_from(child.id()).expect("pid");
        // SAFETY: kill(2) has no memory effects; `pid` is our unreaped child.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(pid, libc::SIGSTOP);
        }
        std::thread::sleep(Duration::from_millis(700));
        // SAFETY: as above.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(pid, libc::SIGCONT);
        }
        let rest: Vec<String> = lines.map_while(Result::ok).collect();
        let status = child.wait().expect("wait child");
        assert!(status.success(), "child failed: {rest:?}");
        assert!(rest.iter().any(|l| l.contains("CHILD DONE")), "{rest:?}");
        let stalls: Vec<u64> = rest
            .iter()
            .filter_map(|l| l.split_once("STALL ").map(|(_, ms)| ms.trim()))
            .filter_map(|ms| ms.parse().ok())
            .collect();
        assert!(
            stalls.iter().any(|ms| (600..2_000).contains(ms)),
            "expected one stall of about 700 ms, saw {stalls:?} in {rest:?}"
        );
    }
}

//! [`ProbeStats`]: every probe attempt's outcome and duration, per target,
//! for `/metrics`.
//!
//! The [`LocalView`](super::LocalView) says what the probes concluded (a
//! health per target, the latest latency); these say what happened between
//! two scrapes, which a view cannot: how many attempts failed or ran out
//! of time, and how their durations spread. The supervisor records every
//! attempt of the current plan; a target that leaves the policy leaves
//! these too.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::histogram::{Histogram, PROBE_SECONDS};

/// How one attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The target answered as healthy.
    Success,
    /// It answered wrong or refused, within the timeout.
    Failure,
    /// The attempt ran out of its timeout.
    Timeout,
}

impl Outcome {
    /// Every outcome, in the order [`TargetStats::results`] counts them.
    pub const ALL: [Outcome; 3] = [Outcome::Success, Outcome::Failure, Outcome::Timeout];

    /// The `result` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Timeout => "timeout",
        }
    }

    /// How an attempt that took `latency` of its `timeout` ended. The
    /// latency of an attempt that ran out is its timeout
    /// ([`probe_once`](super::probe_once) caps it there).
    pub fn of(ok: bool, latency: Duration, timeout: Duration) -> Outcome {
        match (ok, latency >= timeout) {
            (true, _) => Outcome::Success,
            (false, true) => Outcome::Timeout,
            (false, false) => Outcome::Failure,
        }
    }
}

/// One target's attempts.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetStats {
    /// Attempts per [`Outcome`], in [`Outcome::ALL`] order.
    pub results: [u64; 3],
    /// Every attempt's duration in seconds, whatever its outcome.
    pub duration: Histogram,
}

impl Default for TargetStats {
    fn default() -> Self {
        TargetStats {
            results: [0; 3],
            duration: Histogram::new(PROBE_SECONDS),
        }
    }
}

/// Per `(site, target)`: its attempts. Shared between the prober's
/// supervisor, which records, and the scrapes, which copy.
#[derive(Debug, Default)]
pub struct ProbeStats {
    // A std mutex: it is held for a map look-up and a few additions, never
    // across an await, and a scrape copies the map out before formatting.
    targets: Mutex<BTreeMap<(String, String), TargetStats>>,
}

impl ProbeStats {
    /// Count one attempt of `target` of `site`.
    pub fn record(&self, site: &str, target: &str, outcome: Outcome, latency: Duration) {
        let mut targets = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        let key = (site.to_string(), target.to_string());
        let stats = targets.entry(key).or_default();
        stats.results[outcome as usize] += 1;
        stats.duration.observe(latency.as_secs_f64());
    }

    /// Forget the targets for which `keep(site, target)` is false (they
    /// left the policy).
    pub fn retain(&self, mut keep: impl FnMut(&str, &str) -> bool) {
        let mut targets = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        targets.retain(|(site, target), _| keep(site, target));
    }

    /// A copy of every target's attempts, by `(site, target)`.
    pub fn snapshot(&self) -> BTreeMap<(String, String), TargetStats> {
        self.targets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn an_attempt_that_used_its_whole_timeout_timed_out() {
        let cases = [
            (true, ms(5), ms(1_000), Outcome::Success),
            (true, ms(1_000), ms(1_000), Outcome::Success),
            (false, ms(5), ms(1_000), Outcome::Failure),
            (false, ms(1_000), ms(1_000), Outcome::Timeout),
        ];
        for (ok, latency, timeout, want) in cases {
            assert_eq!(Outcome::of(ok, latency, timeout), want, "{ok} {latency:?}");
        }
    }

    /// Every attempt counts once by outcome and once in the durations;
    /// a target dropped from the policy is forgotten.
    #[test]
    fn attempts_are_counted_per_target() {
        let stats = ProbeStats::default();
        stats.record("dc-a", "proxy", Outcome::Success, ms(3));
        stats.record("dc-a", "proxy", Outcome::Timeout, ms(2_000));
        stats.record("dc-b", "proxy", Outcome::Failure, ms(40));
        let snap = stats.snapshot();
        let a = &snap[&("dc-a".to_string(), "proxy".to_string())];
        assert_eq!(a.results, [1, 0, 1]);
        assert_eq!(a.duration.count(), 2);
        assert!((a.duration.sum() - 2.003).abs() < 1e-9);
        stats.retain(|site, _| site == "dc-b");
        assert_eq!(
            stats.snapshot().keys().cloned().collect::<Vec<_>>(),
            [("dc-b".to_string(), "proxy".to_string())]
        );
    }
}

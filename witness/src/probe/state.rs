//! The pure part of probing: counting one target's results into a health,
//! and combining a site's critical targets under its `down_rule`. No I/O,
//! no clock: table-tested below, reusable by the engine and a simulation.

use serde::{Deserialize, Serialize};

use crate::config::DownRule;

/// Health of a target or a site, from one witness's vantage point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Up,
    Down,
    /// Not enough information: no verdict yet since start or since the
    /// target changed, or a site whose critical targets disagree in a way
    /// its rule cannot settle.
    Unknown,
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Health::Up => "up",
            Health::Down => "down",
            Health::Unknown => "unknown",
        })
    }
}

/// One target's counting state: its health and the current streak of equal
/// results. Starts `Unknown`; `fail_after` failures in a row make it
/// `Down`, `recover_after` successes in a row make it `Up`, and anything
/// shorter changes nothing (one lost packet never flips a target).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetState {
    health: Health,
    /// Length of the current run of equal results (saturating).
    streak: u32,
    /// The kind of that run: `Some(true)` successes, `Some(false)`
    /// failures, `None` before the first result.
    run_of: Option<bool>,
}

impl Default for TargetState {
    fn default() -> Self {
        TargetState::new()
    }
}

impl TargetState {
    pub const fn new() -> TargetState {
        TargetState {
            health: Health::Unknown,
            streak: 0,
            run_of: None,
        }
    }

    pub fn health(&self) -> Health {
        self.health
    }

    /// How many results in a row agree with the latest one (0 before the
    /// first result).
    pub fn consecutive(&self) -> u32 {
        self.streak
    }

    /// Count one result; returns whether the health changed. Thresholds
    /// below 1 count as 1 (validation never lets them through).
    pub fn record(&mut self, ok: bool, fail_after: u32, recover_after: u32) -> bool {
        if self.run_of == Some(ok) {
            self.streak = self.streak.saturating_add(1);
        } else {
            self.run_of = Some(ok);
            self.streak = 1;
        }
        let (threshold, next) = if ok {
            (recover_after.max(1), Health::Up)
        } else {
            (fail_after.max(1), Health::Down)
        };
        if self.streak >= threshold && self.health != next {
            self.health = next;
            true
        } else {
            false
        }
    }
}

/// A site's health from its critical targets' healths under `rule`.
///
/// - `all`: down when every critical target is down; up when at least one
///   is up (the site still serves); otherwise unknown.
/// - `any`: down when at least one critical target is down; up when every
///   one is up; otherwise unknown.
///
/// No critical target at all is unknown: nothing was measured.
pub fn site_health(rule: DownRule, critical: impl IntoIterator<Item = Health>) -> Health {
    let (mut n, mut up, mut down) = (0usize, 0usize, 0usize);
    for health in critical {
        n += 1;
        match health {
            Health::Up => up += 1,
            Health::Down => down += 1,
            Health::Unknown => {}
        }
    }
    if n == 0 {
        return Health::Unknown;
    }
    match rule {
        DownRule::All if down == n => Health::Down,
        DownRule::All if up > 0 => Health::Up,
        DownRule::Any if down > 0 => Health::Down,
        DownRule::Any if up == n => Health::Up,
        _ => Health::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Health::{Down, Unknown, Up};

    /// fail_after / recover_after counting, as a table of result strings
    /// ('+' success, '-' failure) and the health after each one.
    #[test]
    fn counting_follows_fail_after_and_recover_after() {
        // (what, fail_after, recover_after, results, healths after each)
        let cases: &[(&str, u32, u32, &str, &[Health])] = &[
            (
                "starts unknown, down after 3",
                3,
                2,
                "---",
                &[Unknown, Unknown, Down],
            ),
            ("starts unknown, up after 2", 3, 2, "++", &[Unknown, Up]),
            (
                "one failure does not flip up",
                3,
                2,
                "++-+",
                &[Unknown, Up, Up, Up],
            ),
            (
                "two failures then success reset the count",
                3,
                2,
                "++--+--",
                &[Unknown, Up, Up, Up, Up, Up, Up],
            ),
            (
                "third failure in a row flips",
                3,
                2,
                "++---",
                &[Unknown, Up, Up, Up, Down],
            ),
            (
                "recovery needs recover_after in a row",
                3,
                2,
                "---+-++",
                &[Unknown, Unknown, Down, Down, Down, Down, Up],
            ),
            (
                "thresholds of 1 follow every result",
                1,
                1,
                "+-+",
                &[Up, Down, Up],
            ),
            ("zero thresholds act as 1", 0, 0, "-+", &[Down, Up]),
            (
                "alternating never decides",
                2,
                2,
                "+-+-+-",
                &[Unknown, Unknown, Unknown, Unknown, Unknown, Unknown],
            ),
        ];
        for (what, fail_after, recover_after, results, expected) in cases {
            let mut state = TargetState::new();
            assert_eq!(state.health(), Unknown, "{what}: initial");
            assert_eq!(state.consecutive(), 0, "{what}: initial streak");
            for (i, (result, want)) in results.chars().zip(expected.iter()).enumerate() {
                let before = state.health();
                let changed = state.record(result == '+', *fail_after, *recover_after);
                assert_eq!(state.health(), *want, "{what}: after result {i} ({result})");
                assert_eq!(changed, before != *want, "{what}: change flag at {i}");
            }
        }
    }

    /// The streak counts equal results and restarts on a change.
    #[test]
    fn consecutive_counts_the_current_run() {
        let mut state = TargetState::new();
        let runs = [
            (true, 1),
            (true, 2),
            (true, 3),
            (false, 1),
            (false, 2),
            (true, 1),
        ];
        for (ok, streak) in runs {
            state.record(ok, 3, 2);
            assert_eq!(state.consecutive(), streak);
        }
    }

    /// Site health under both rules, for every interesting mix.
    #[test]
    fn site_health_applies_the_down_rule() {
        let cases: &[(&[Health], Health, Health)] = &[
            // (critical targets, under all, under any)
            (&[], Unknown, Unknown),
            (&[Up], Up, Up),
            (&[Down], Down, Down),
            (&[Unknown], Unknown, Unknown),
            (&[Up, Up], Up, Up),
            (&[Down, Down], Down, Down),
            (&[Up, Down], Up, Down),
            (&[Up, Unknown], Up, Unknown),
            (&[Down, Unknown], Unknown, Down),
            (&[Unknown, Unknown], Unknown, Unknown),
            (&[Up, Down, Unknown], Up, Down),
        ];
        for (targets, all, any) in cases {
            assert_eq!(
                site_health(DownRule::All, targets.iter().copied()),
                *all,
                "all {targets:?}"
            );
            assert_eq!(
                site_health(DownRule::Any, targets.iter().copied()),
                *any,
                "any {targets:?}"
            );
        }
    }
}

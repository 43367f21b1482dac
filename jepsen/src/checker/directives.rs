//! `directives`: issued once, executed safely (DESIGN.md §3.6): every
//! directive of a committed Activate ran, none ran at a stale epoch, none
//! ran twice at once.
//!
//! # Rules
//!
//! 1. **Never at a stale epoch.** A directive run of epoch `e` that
//!    *starts* after a newer epoch `e' > e` was known committed (see
//!    [`KnownEpochs`](super::KnownEpochs)) is a violation. Runs marked
//!    `best_effort` (aimed at the losing site, which may be dead or late)
//!    are only noted.
//! 2. **Never two at once.** Two runs of the same directive id (`<epoch>/<name>`)
//!    whose intervals overlap — by two agents, or one agent twice — is a
//!    violation. A run that never ended in the history is taken to last until
//!    the history's end.
//! 3. **Each planned directive ran.** Every directive an `activated`
//!    decision lists must have a run (any outcome) or a committed
//!    `directive` record in state `done`. If not: fine when a newer epoch was
//!    activated afterwards (the directive was superseded) or when it is best
//!    effort (it may be unreachable); **unknown** when the history ends less
//!    than `worst_case_failover_ms` after the epoch was known committed (it
//!    had no fair chance to run); otherwise a violation.

use std::collections::{BTreeMap, BTreeSet};

use super::{Anomaly, CheckResult, Findings, KnownEpochs, secs};
use crate::history::{DecisionKind, History, RunKind};

pub fn check(h: &History) -> CheckResult {
    let mut f = Findings::new();
    let known = KnownEpochs::from_history(h);
    let (_, history_end) = h.span();
    let runs: Vec<_> = h
        .runs()
        .filter(|(_, r)| r.kind == RunKind::Directive)
        .collect();

    // 1. stale epochs
    for (line, r) in &runs {
        let Some(newer) = known.first_newer_than(r.epoch) else {
            continue;
        };
        if newer.t_ms >= r.t_ms {
            continue;
        }
        let msg = format!(
            "{} started directive {} of epoch {} at {}, after epoch {} was known committed at {} \
             ({})",
            r.agent,
            r.directive_id(),
            r.epoch,
            secs(r.t_ms),
            newer.epoch,
            secs(newer.t_ms),
            newer.what
        );
        if r.best_effort {
            f.note(format!("best effort, so allowed: {msg}"));
        } else {
            f.violation(
                Anomaly::new("stale-directive", msg)
                    .at(r.t_ms)
                    .until(r.end_t_ms.unwrap_or(r.t_ms))
                    .lines([*line, newer.line]),
            );
        }
    }

    // 2. concurrent runs of one id
    let mut by_id: BTreeMap<String, Vec<(usize, &crate::history::Run)>> = BTreeMap::new();
    for (line, r) in &runs {
        by_id.entry(r.directive_id()).or_default().push((*line, r));
    }
    for (id, mut v) in by_id.iter_mut().map(|(k, v)| (k, v.clone())) {
        v.sort_by(|a, b| a.1.t_ms.total_cmp(&b.1.t_ms));
        for (i, (la, a)) in v.iter().enumerate() {
            let a_end = a.end_t_ms.unwrap_or(history_end);
            for (lb, b) in &v[i + 1..] {
                if b.t_ms >= a_end {
                    break;
                }
                f.violation(
                    Anomaly::new(
                        "directive-concurrent",
                        format!(
                            "directive {id} ran twice at once: by {} from {} and by {} from {} \
                             (overlap until {})",
                            a.agent,
                            secs(a.t_ms),
                            b.agent,
                            secs(b.t_ms),
                            secs(a_end.min(b.end_t_ms.unwrap_or(history_end)))
                        ),
                    )
                    .at(b.t_ms)
                    .until(a_end.min(b.end_t_ms.unwrap_or(history_end)))
                    .lines([*la, *lb]),
                );
            }
        }
    }

    // 3. planned directives ran
    let done: BTreeSet<String> = h
        .decisions()
        .filter(|(_, d)| d.kind == DecisionKind::Directive && d.state.as_deref() == Some("done"))
        .filter_map(|(_, d)| d.id.clone())
        .collect();
    let ran: BTreeSet<String> = by_id.keys().cloned().collect();
    let max_epoch = h
        .decisions()
        .filter(|(_, d)| d.kind == DecisionKind::Activated)
        .filter_map(|(_, d)| d.epoch)
        .max()
        .unwrap_or(0);
    let worst = h.meta.worst_case_failover_ms as f64;
    let mut planned = 0;
    for (line, d) in h.decisions() {
        let (DecisionKind::Activated, Some(e)) = (d.kind, d.epoch) else {
            continue;
        };
        for p in &d.directives {
            planned += 1;
            let id = format!("{e}/{}", p.name);
            if ran.contains(&id) || done.contains(&id) {
                continue;
            }
            if e < max_epoch {
                f.note(format!("{id} never ran; superseded by epoch {max_epoch}"));
                continue;
            }
            if p.best_effort {
                f.note(format!("{id} never ran; best effort"));
                continue;
            }
            let since = known
                .sightings
                .iter()
                .find(|s| s.epoch >= e)
                .map_or(d.t_ms, |s| s.t_ms);
            let anomaly = |kind: &str, why: &str| {
                Anomaly::new(
                    kind,
                    format!(
                        "directive {id} of the committed activation of {} never ran{why}",
                        d.site.as_deref().unwrap_or("?")
                    ),
                )
                .at(since)
                .lines([line])
            };
            if history_end - since < worst {
                f.doubt(anomaly(
                    "directive-not-yet-run",
                    &format!(
                        "; the history ends {:.0} ms after the epoch was known committed, less \
                         than the worst-case failover time {worst} ms",
                        history_end - since
                    ),
                ));
            } else {
                f.violation(anomaly("directive-never-ran", ""));
            }
        }
    }
    f.note(format!(
        "{} directive runs, {planned} planned directives",
        runs.len()
    ));
    f.finish(format!(
        "every planned directive ran; {} runs, none stale, none concurrent",
        runs.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::Valid;
    use crate::checker::build::*;
    use crate::history::{Event, RunKind::Directive};

    fn kinds(r: &CheckResult) -> Vec<&str> {
        r.anomalies.iter().map(|a| a.kind.as_str()).collect()
    }

    /// Planned, run once, in time: valid.
    #[test]
    fn planned_directive_run_once_is_valid() {
        let h = history(vec![vec![
            activated_with(1000.0, 5, 2, "dc-b", &["promote"]),
            run(
                2000.0,
                Some(3000.0),
                "mbox-b",
                "dc-b",
                Directive,
                "promote",
                2,
            ),
            run(
                3000.0,
                Some(4000.0),
                "mbox-b2",
                "dc-b",
                Directive,
                "promote",
                2,
            ),
        ]]);
        let r = check(&h);
        assert_eq!(r.valid, Valid::True, "{r:?}");
    }

    /// The same directive run by two agents at overlapping times.
    #[test]
    fn concurrent_runs_are_violations() {
        let h = history(vec![vec![
            activated_with(1000.0, 5, 2, "dc-b", &["promote"]),
            run(
                2000.0,
                Some(3000.0),
                "mbox-b",
                "dc-b",
                Directive,
                "promote",
                2,
            ),
            run(2999.0, None, "mbox-b2", "dc-b", Directive, "promote", 2),
        ]]);
        let r = check(&h);
        assert_eq!(kinds(&r), vec!["directive-concurrent"]);
        assert_eq!(r.anomalies[0].lines, vec![3, 4]);
    }

    /// A run of epoch 2 started after epoch 3 was seen; best effort is let off.
    #[test]
    fn stale_runs_are_violations_unless_best_effort() {
        let mut stale = run(
            5000.0,
            Some(5100.0),
            "mbox-a",
            "dc-a",
            Directive,
            "flush",
            2,
        );
        let ev = |r: Event| {
            history(vec![vec![
                activated(0.0, 5, 2, "dc-b"),
                activated(0.0, 9, 3, "dc-a"),
                lease(4000.0, "mbox-a", "dc-a", 3, 3990.0, 3000),
                r,
            ]])
        };
        let r = check(&ev(stale.clone()));
        assert_eq!(kinds(&r), vec!["stale-directive"]);
        if let Event::Run(run) = &mut stale {
            run.best_effort = true;
        }
        assert_eq!(check(&ev(stale)).valid, Valid::True);
    }

    /// A planned directive that never ran: violation long after the
    /// activation; unknown if the history ended too soon; fine if superseded.
    #[test]
    fn planned_directive_never_run() {
        let late = history(vec![vec![
            activated_with(1000.0, 5, 2, "dc-b", &["promote"]),
            probe(20_000.0, "dc-b", true),
        ]]);
        let r = check(&late);
        assert_eq!(kinds(&r), vec!["directive-never-ran"]);
        let soon = history(vec![vec![
            activated_with(1000.0, 5, 2, "dc-b", &["promote"]),
            probe(2_000.0, "dc-b", true),
        ]]);
        assert_eq!(check(&soon).valid, Valid::Unknown);
        let superseded = history(vec![vec![
            activated_with(1000.0, 5, 2, "dc-b", &["promote"]),
            activated(5000.0, 8, 3, "dc-a"),
            probe(20_000.0, "dc-b", true),
        ]]);
        assert_eq!(check(&superseded).valid, Valid::True);
    }
}

//! `lost_decisions`: no acknowledged decision is lost (DESIGN.md §3
//! assumption a; Jepsen's `set-full` "lost" elements).
//!
//! # Rules
//!
//! Against the final committed history (`decision` events):
//!
//! - every ok `failover` to `s` returning epoch `e` has an `activated`
//!   decision of epoch `e` for site `s` (without an epoch: some activation of
//!   `s`);
//! - every ok `freeze` has a `frozen` decision, every ok `unfreeze` an
//!   `unfrozen` one (a freeze or unfreeze that found the mode already in
//!   place commits nothing, so this holds only when the mode ever changed:
//!   an ok freeze with no `frozen` decision at all is the violation);
//! - every epoch an ok read observed (above 0) has an activation of that
//!   epoch for the site the read named;
//! - every epoch an agent logged *serving* at has an activation of that
//!   epoch for the agent's site.
//!
//! A history without any decision events cannot be judged: unknown.

use std::collections::BTreeMap;

use super::{Anomaly, CheckResult, Findings, activated_sites, secs};
use crate::history::{DecisionKind, History, OpF, OpType, ServingState};

pub fn check(h: &History) -> CheckResult {
    let mut f = Findings::new();
    if h.decisions().next().is_none() {
        f.doubt(Anomaly::new(
            "no-committed-history",
            "no committed decisions recorded: the runner must record `witnessctl history \
             --output json` at the end"
                .into(),
        ));
        return f.finish("");
    }
    let sites = activated_sites(h);
    let has = |k: DecisionKind| h.decisions().any(|(_, d)| d.kind == k);
    let mut acked = 0;
    // (epoch, site) already reported, so one lost epoch is one anomaly.
    let mut reported: BTreeMap<(u64, String), ()> = BTreeMap::new();
    let mut lost =
        |f: &mut Findings, epoch: u64, site: &str, what: String, t, lines: Vec<usize>| {
            let ok = sites.get(&epoch).is_some_and(|(s, _)| s == site);
            if ok || reported.insert((epoch, site.to_string()), ()).is_some() {
                return;
            }
            let have = match sites.get(&epoch) {
                Some((s, _)) => format!("epoch {epoch} activated {s} instead"),
                None => format!("no activation of epoch {epoch} was committed"),
            };
            f.violation(
                Anomaly::new(
                    "lost-decision",
                    format!("{what} saw {site} at epoch {epoch}, but {have}"),
                )
                .at(t)
                .lines(lines),
            );
        };
    for c in h.completed_ops() {
        let Some(done) = c.complete.filter(|d| d.kind == OpType::Ok) else {
            continue;
        };
        let lines = c.lines.clone();
        match c.f() {
            OpF::Read => {
                if let Some(v) = done.verdict()
                    && v.epoch > 0
                    && let Some(s) = &v.active_site
                {
                    lost(
                        &mut f,
                        v.epoch,
                        s,
                        format!("a read via {}", c.node().unwrap_or("?")),
                        done.t_ms,
                        lines,
                    );
                }
            }
            OpF::Failover => {
                acked += 1;
                let to = c.invoke.to.clone().unwrap_or_default();
                match done.epoch() {
                    Some(e) => lost(
                        &mut f,
                        e,
                        &to,
                        format!("an acknowledged failover at {}", secs(done.t_ms)),
                        done.t_ms,
                        lines,
                    ),
                    None if !sites.values().any(|(s, _)| *s == to) => f.violation(
                        Anomaly::new(
                            "lost-decision",
                            format!(
                                "a failover to {to} was acknowledged at {}, but no activation of \
                                 {to} was committed",
                                secs(done.t_ms)
                            ),
                        )
                        .at(done.t_ms)
                        .lines(lines),
                    ),
                    None => {}
                }
            }
            OpF::Freeze | OpF::Unfreeze => {
                acked += 1;
                let (kind, name) = if c.f() == OpF::Freeze {
                    (DecisionKind::Frozen, "frozen")
                } else {
                    (DecisionKind::Unfrozen, "unfrozen")
                };
                if !has(kind) {
                    f.violation(
                        Anomaly::new(
                            "lost-decision",
                            format!(
                                "an ok {} at {} left no `{name}` decision in the committed \
                                 history",
                                c.f(),
                                secs(done.t_ms)
                            ),
                        )
                        .at(done.t_ms)
                        .lines(lines),
                    );
                }
            }
        }
    }
    for (line, s) in h.serving() {
        if s.state == ServingState::Serving && s.epoch > 0 {
            lost(
                &mut f,
                s.epoch,
                &s.site,
                format!("agent {}", s.agent),
                s.t_ms,
                vec![line],
            );
        }
    }
    f.finish(format!(
        "all {acked} acknowledged operations and every observed epoch are in the committed \
         history"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::Valid;
    use crate::checker::build::*;
    use crate::history::ServingState::Serving;

    /// Everything acknowledged or seen is committed.
    #[test]
    fn everything_committed_is_valid() {
        let h = history(vec![
            vec![
                activated(0.0, 1, 1, "dc-a"),
                activated(0.0, 4, 2, "dc-b"),
                mode_decision(0.0, 5, DecisionKind::Frozen),
                serving(1.0, "mbox-b", "dc-b", Serving, 2),
            ],
            failover(0.0, 5.0, 2, "dc-b", OpType::Ok, Some(2)),
            read(6.0, 7.0, 1, "w1", "dc-b", 2),
            mode_op(8.0, 9.0, 3, OpF::Freeze, OpType::Ok),
            mode_op(8.0, 9.0, 4, OpF::Unfreeze, OpType::Fail),
        ]);
        let r = check(&h);
        assert_eq!(r.valid, Valid::True, "{r:?}");
    }

    /// An acknowledged failover, a read's epoch and an agent's epoch missing
    /// from the final history.
    #[test]
    fn acknowledged_but_missing_is_lost() {
        let h = history(vec![
            vec![
                activated(0.0, 1, 1, "dc-a"),
                serving(1.0, "mbox-b", "dc-b", Serving, 4),
            ],
            failover(0.0, 5.0, 2, "dc-b", OpType::Ok, Some(2)),
            read(6.0, 7.0, 1, "w1", "dc-b", 3),
            mode_op(8.0, 9.0, 3, OpF::Unfreeze, OpType::Ok),
        ]);
        let r = check(&h);
        assert_eq!(r.valid, Valid::False);
        assert_eq!(r.anomalies.len(), 4, "{r:?}");
        assert!(r.anomalies.iter().all(|a| a.kind == "lost-decision"));
    }

    /// An info failover need not be committed.
    #[test]
    fn indeterminate_failover_may_be_missing() {
        let h = history(vec![
            vec![activated(0.0, 1, 1, "dc-a")],
            failover(0.0, 5.0, 2, "dc-b", OpType::Info, None),
        ]);
        assert_eq!(check(&h).valid, Valid::True);
    }

    /// Without the committed history: unknown.
    #[test]
    fn no_decisions_is_unknown() {
        let h = history(vec![read(0.0, 1.0, 1, "w1", "dc-a", 1)]);
        assert_eq!(check(&h).valid, Valid::Unknown);
    }
}

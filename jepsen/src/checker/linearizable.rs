//! `linearizable`: the verdict register behaves like one copy read and
//! written atomically (DESIGN.md §5: `GetVerdict` is a linearizable read).
//!
//! # The model
//!
//! The register holds a verdict `{active_site, epoch, mode}`. It is changed
//! by client operations (`failover`, `freeze`, `unfreeze`) **and by the
//! system itself** (automatic failover, failback, freeze expiry), so the
//! client operations alone do not say what was written. But every change is
//! a committed entry, and the committed history read at the end lists them
//! all, in commit order. So the writes and their order are *known*: the
//! verdict-changing decisions (`activated`, `frozen`, `unfrozen`,
//! `forced_recovery`) sorted by log index give the sequence of states
//! `S0, S1, …, Sn`, with `S0` = no active site, epoch 0, auto. What is not
//! known is *when* each write took effect; a proposal's `t_ms` is the
//! proposer's clock before the commit and is not used as a bound.
//!
//! The history is linearizable iff each write `k` can be given an instant
//! `τk` (non-decreasing in `k`) and each ok operation a position `p` such
//! that the operation's effect holds in `S_p` and `S_p` was current at some
//! instant of its `[invoke, complete]` interval (`τp ≤ complete` and
//! `τ(p+1) ≥ invoke`). Per operation:
//!
//! - ok `read`: `S_p` equals the returned verdict;
//! - ok `failover` returning epoch `e`: it *is* the write of epoch `e`, so
//!   that write's instant lies within the operation (and the write's site
//!   must be `to`); without an epoch, `S_p.active_site == to`;
//! - ok `freeze` / `unfreeze`: `S_p.mode` is frozen / auto (the operation's
//!   own entry, or an earlier one it found in force);
//! - `fail`: did not happen — nothing to place; `info` and never-completed
//!   operations may have happened at any time later — their entries, if
//!   any, are in the log like any automatic write, so they constrain
//!   nothing.
//!
//! # The algorithm: no search needed
//!
//! Because the write order is fixed and reads do not change the state, the
//! WGL/Porcupine search collapses to one pass in time order that keeps the
//! current position `cur`:
//!
//! - an operation whose effect holds in `S_cur` when it is invoked (or when
//!   `cur` later moves onto a matching state while it is still pending) is
//!   linearized there at once — doing so never hurts, as it changes nothing;
//! - `cur` advances only when forced: when an unlinearized operation
//!   completes (to the *first* later state that satisfies it) or when an ok
//!   failover completes (to its write); never past a write whose own
//!   failover was not yet invoked.
//!
//! By induction this lazy position is never ahead of the position of any
//! valid linearization at the same instant, so if some linearization
//! exists, this pass finds one; when an operation cannot be placed it is
//! reported (with the write that made its value stale, or the write it
//! read ahead of) and the pass goes on. It is linear in the history (times
//! the pending operations at each step), so it needs no search budget;
//! `unknown` is returned only when the committed history is missing or
//! does not start at the first activation (truncated), since then `S0` is
//! not known.

use super::{Anomaly, CheckResult, Findings, secs};
use crate::history::{DecisionKind, History, Mode, Ms, OpF, OpType, Verdict};

/// One write of the committed sequence.
#[derive(Debug)]
struct Write {
    state: Verdict,
    line: usize,
    /// Earliest instant it may take effect: the invocation of the
    /// failover that acknowledged it.
    lo: Ms,
    /// Latest instant: that failover's completion.
    hi: Ms,
    log_index: u64,
}

/// What an operation needs to see.
#[derive(Clone, Debug)]
enum Want {
    Exactly(Verdict),
    Mode(Mode),
    Site(String),
    /// An acknowledged failover: its write `k` took effect within the op.
    Write(usize),
}

impl Want {
    fn holds(&self, s: &Verdict) -> bool {
        match self {
            Want::Exactly(v) => v == s,
            Want::Mode(m) => s.mode == *m,
            Want::Site(site) => s.active_site.as_deref() == Some(site),
            Want::Write(_) => false,
        }
    }
    fn describe(&self) -> String {
        match self {
            Want::Exactly(v) => format!("read {v}"),
            Want::Mode(Mode::Frozen) => "froze".into(),
            Want::Mode(Mode::Auto) => "unfroze".into(),
            Want::Site(s) => format!("failed over to {s}"),
            Want::Write(_) => "failed over".into(),
        }
    }
}

#[derive(Debug)]
struct Call {
    start: Ms,
    end: Ms,
    want: Want,
    lines: Vec<usize>,
    node: String,
    done: bool,
}

pub fn check(h: &History) -> CheckResult {
    let mut f = Findings::new();
    let mut decisions: Vec<_> = h
        .decisions()
        .filter(|(_, d)| {
            matches!(
                d.kind,
                DecisionKind::Activated
                    | DecisionKind::Frozen
                    | DecisionKind::Unfrozen
                    | DecisionKind::ForcedRecovery
            )
        })
        .collect();
    decisions.sort_by_key(|(_, d)| d.log_index);
    let ops = h.completed_ops();
    let ok_ops = ops.iter().filter(|c| c.kind() == OpType::Ok).count();
    if decisions.is_empty() {
        if ok_ops > 0 {
            f.doubt(Anomaly::new(
                "no-committed-history",
                "no committed decisions recorded: the writes of the register are unknown \
                 (the runner must record `witnessctl history --output json` at the end)"
                    .into(),
            ));
        }
        return f.finish("no operations to check");
    }
    let first_activation = decisions
        .iter()
        .find(|(_, d)| d.kind == DecisionKind::Activated)
        .and_then(|(_, d)| d.epoch);
    if first_activation.is_some_and(|e| e > 1) {
        f.doubt(Anomaly::new(
            "truncated-history",
            format!(
                "the committed history's first activation is epoch {}, not 1: it was truncated \
                 and the register's initial state is unknown",
                first_activation.unwrap_or(0)
            ),
        ));
        return f.finish("");
    }

    let mut states = vec![Verdict::default()];
    let mut writes: Vec<Write> = Vec::new();
    for (line, d) in &decisions {
        let mut s = states.last().cloned().unwrap_or_default();
        match d.kind {
            DecisionKind::Activated => {
                s.active_site = d.site.clone();
                s.epoch = d.epoch.unwrap_or(s.epoch);
            }
            DecisionKind::Frozen => s.mode = Mode::Frozen,
            DecisionKind::Unfrozen => s.mode = Mode::Auto,
            DecisionKind::ForcedRecovery => s.epoch = d.epoch.unwrap_or(s.epoch),
            _ => {}
        }
        states.push(s.clone());
        writes.push(Write {
            state: s,
            line: *line,
            lo: f64::NEG_INFINITY,
            hi: f64::INFINITY,
            log_index: d.log_index,
        });
    }

    // Calls, and the writes that acknowledged failovers pin.
    let mut calls: Vec<Call> = Vec::new();
    for c in &ops {
        let Some(done) = c.complete.filter(|d| d.kind == OpType::Ok) else {
            continue;
        };
        let want = match c.f() {
            OpF::Read => match done.verdict() {
                Some(v) => Want::Exactly(v.clone()),
                None => continue,
            },
            OpF::Freeze => Want::Mode(Mode::Frozen),
            OpF::Unfreeze => Want::Mode(Mode::Auto),
            OpF::Failover => {
                let to = c.invoke.to.clone().unwrap_or_default();
                match done.epoch() {
                    None => Want::Site(to),
                    Some(e) => {
                        let k = writes.iter().position(|w| {
                            w.state.epoch == e && w.state.active_site.as_deref() == Some(&to)
                        });
                        match k {
                            Some(k) if writes[k].hi.is_infinite() => {
                                // Positions are 1-based: write k makes state k + 1.
                                writes[k].lo = c.start();
                                writes[k].hi = c.end();
                                Want::Write(k + 1)
                            }
                            _ => {
                                f.violation(
                                    Anomaly::new(
                                        "ack-without-write",
                                        format!(
                                            "failover to {to} was acknowledged with epoch {e} at \
                                             {}, but no committed activation of {to} at epoch {e} \
                                             exists (or another failover already claimed it)",
                                            secs(c.end())
                                        ),
                                    )
                                    .at(c.start())
                                    .until(c.end())
                                    .lines(c.lines.iter().copied()),
                                );
                                continue;
                            }
                        }
                    }
                }
            }
        };
        calls.push(Call {
            start: c.start(),
            end: c.end(),
            want,
            lines: c.lines.clone(),
            node: c.node().unwrap_or("?").to_string(),
            done: false,
        });
    }

    // Time-ordered pass: invocations before completions at equal times.
    let mut events: Vec<(Ms, u8, usize)> = Vec::new();
    for (i, c) in calls.iter().enumerate() {
        events.push((c.start, 0, i));
        events.push((c.end, 1, i));
    }
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut cur = 0usize;
    // Which call (or none) forced the last advance, for explanations.
    let mut forced_by: Vec<Option<(usize, Ms)>> = vec![None; states.len()];
    let mut pending: Vec<usize> = Vec::new();
    for (t, phase, i) in events {
        if phase == 0 {
            if calls[i].want.holds(&states[cur]) {
                calls[i].done = true;
            } else {
                pending.push(i);
            }
            continue;
        }
        if calls[i].done {
            continue;
        }
        let target = match &calls[i].want {
            Want::Write(k) if *k <= cur => {
                calls[i].done = true;
                continue;
            }
            Want::Write(k) => Some(*k),
            want => (cur + 1..states.len()).find(|&j| want.holds(&states[j])),
        };
        let blocked = target.and_then(|j| (cur + 1..=j).find(|&m| writes[m - 1].lo > t));
        match (target, blocked) {
            (Some(j), None) => {
                for m in cur + 1..=j {
                    forced_by[m] = Some((i, t));
                    pending.retain(|&p| {
                        if calls[p].want.holds(&states[m]) {
                            calls[p].done = true;
                        }
                        !calls[p].done
                    });
                }
                cur = j;
                calls[i].done = true;
            }
            (Some(j), Some(m)) => {
                let w = &writes[m - 1];
                f.violation(
                    Anomaly::new(
                        "read-ahead",
                        format!(
                            "{} via {} completed at {}, but that state (position {j}) comes \
                             after the write at log index {} ({}), whose failover was invoked \
                             only at {}",
                            calls[i].want.describe(),
                            calls[i].node,
                            secs(t),
                            w.log_index,
                            w.state,
                            secs(w.lo)
                        ),
                    )
                    .at(calls[i].start)
                    .until(t)
                    .lines(calls[i].lines.iter().copied().chain([w.line])),
                );
                calls[i].done = true;
            }
            (None, _) => {
                let earlier = (0..=cur).rev().find(|&j| calls[i].want.holds(&states[j]));
                let why = match earlier {
                    Some(j) => {
                        let by = forced_by
                            .get(j + 1)
                            .copied()
                            .flatten()
                            .map(|(c, at)| {
                                format!(
                                    "; it was overwritten by log index {} ({}) no later than {} \
                                     (when an operation that needed it completed, lines {:?})",
                                    writes[j].log_index,
                                    writes[j].state,
                                    secs(at),
                                    calls[c].lines
                                )
                            })
                            .unwrap_or_default();
                        format!("a stale state (position {j} of {}){by}", states.len() - 1)
                    }
                    None => "a state the committed history never had".into(),
                };
                let mut lines: Vec<usize> = calls[i].lines.clone();
                if let Some(j) = earlier
                    && j < writes.len()
                {
                    lines.push(writes[j].line);
                }
                f.violation(
                    Anomaly::new(
                        "not-linearizable",
                        format!(
                            "{} via {} during [{}, {}]: {why}",
                            calls[i].want.describe(),
                            calls[i].node,
                            secs(calls[i].start),
                            secs(t)
                        ),
                    )
                    .at(calls[i].start)
                    .until(t)
                    .lines(lines),
                );
                calls[i].done = true;
            }
        }
    }
    f.note(format!(
        "{} ok operations placed among {} committed writes",
        calls.len(),
        writes.len()
    ));
    f.finish(format!(
        "linearizable: {} ok operations fit the {} committed writes",
        calls.len(),
        writes.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::Valid;
    use crate::checker::build::*;
    use crate::history::DecisionKind::{Frozen, Unfrozen};

    fn log() -> Vec<crate::history::Event> {
        vec![activated(0.0, 1, 1, "dc-a"), activated(0.0, 5, 2, "dc-b")]
    }

    /// Reads concurrent with an automatic failover may see either side of it.
    #[test]
    fn concurrent_reads_may_see_either_state() {
        let h = history(vec![
            log(),
            read(0.0, 10.0, 1, "w1", "dc-a", 1),
            read(20.0, 100.0, 2, "w2", "dc-b", 2),
            read(30.0, 90.0, 3, "w3", "dc-a", 1),
            read(110.0, 120.0, 3, "w3", "dc-b", 2),
        ]);
        let r = check(&h);
        assert_eq!(r.valid, Valid::True, "{r:?}");
    }

    /// The classic stale read: after a read of epoch 2 completed, a later
    /// read (any node) returns epoch 1.
    #[test]
    fn stale_read_after_a_newer_read_completed() {
        let h = history(vec![
            log(),
            read(0.0, 10.0, 1, "w1", "dc-b", 2),
            read(20.0, 30.0, 2, "w2", "dc-a", 1),
        ]);
        let r = check(&h);
        assert_eq!(r.valid, Valid::False);
        assert_eq!(r.anomalies[0].kind, "not-linearizable");
        assert!(
            r.anomalies[0].message.contains("stale"),
            "{}",
            r.anomalies[0].message
        );
        assert_eq!(r.anomalies[0].lines, vec![3, 6, 7]);
    }

    /// A read of a verdict that was never committed.
    #[test]
    fn read_of_an_uncommitted_verdict() {
        let h = history(vec![log(), read(0.0, 10.0, 1, "w1", "dc-a", 3)]);
        let r = check(&h);
        assert_eq!(r.valid, Valid::False);
        assert!(r.anomalies[0].message.contains("never had"));
    }

    /// A read that sees an operator failover's result before the failover was
    /// even invoked.
    #[test]
    fn reading_a_failover_before_it_was_invoked() {
        let h = history(vec![
            log(),
            read(0.0, 10.0, 1, "w1", "dc-b", 2),
            failover(50.0, 60.0, 2, "dc-b", OpType::Ok, Some(2)),
        ]);
        let r = check(&h);
        assert_eq!(r.valid, Valid::False);
        assert_eq!(r.anomalies[0].kind, "read-ahead");
    }

    /// An acknowledged failover's write must be visible to reads begun after it.
    #[test]
    fn reads_after_an_acknowledged_failover_see_it() {
        let good = history(vec![
            log(),
            read(0.0, 10.0, 1, "w1", "dc-a", 1),
            failover(20.0, 60.0, 2, "dc-b", OpType::Ok, Some(2)),
            read(30.0, 40.0, 1, "w1", "dc-a", 1),
            read(70.0, 80.0, 1, "w2", "dc-b", 2),
        ]);
        assert_eq!(check(&good).valid, Valid::True, "{:?}", check(&good));
        let bad = history(vec![
            log(),
            failover(20.0, 60.0, 2, "dc-b", OpType::Ok, Some(2)),
            read(70.0, 80.0, 1, "w2", "dc-a", 1),
        ]);
        assert_eq!(check(&bad).valid, Valid::False);
    }

    /// `info` and `fail` operations constrain nothing; their writes are in
    /// the log or not.
    #[test]
    fn indeterminate_operations_are_free() {
        let h = history(vec![
            log(),
            failover(0.0, 5.0, 2, "dc-b", OpType::Info, None),
            failover(1.0, 2.0, 3, "dc-a", OpType::Fail, None),
            read(100.0, 110.0, 1, "w1", "dc-b", 2),
        ]);
        assert_eq!(check(&h).valid, Valid::True);
    }

    /// Freeze and unfreeze toggle the mode; a repeated state is matched lazily
    /// (the first matching position), and a read that needs the later copy of
    /// a repeated state is still placed.
    #[test]
    fn modes_and_repeated_states() {
        let mut ev = log();
        ev.push(mode_decision(0.0, 6, Frozen));
        ev.push(mode_decision(0.0, 7, Unfrozen));
        let good = history(vec![
            ev.clone(),
            mode_op(0.0, 50.0, 9, OpF::Freeze, OpType::Ok),
            read_v(10.0, 20.0, 1, "w1", "dc-b", 2, Mode::Auto),
            read_v(30.0, 40.0, 1, "w1", "dc-b", 2, Mode::Frozen),
            mode_op(60.0, 70.0, 9, OpF::Unfreeze, OpType::Ok),
            read_v(80.0, 90.0, 1, "w1", "dc-b", 2, Mode::Auto),
        ]);
        assert_eq!(check(&good).valid, Valid::True, "{:?}", check(&good));
        // Frozen, then auto (the unfreeze), then frozen again: the log has
        // no second freeze.
        let bad = history(vec![
            ev,
            read_v(30.0, 40.0, 1, "w1", "dc-b", 2, Mode::Frozen),
            read_v(50.0, 60.0, 1, "w1", "dc-b", 2, Mode::Auto),
            read_v(70.0, 80.0, 1, "w1", "dc-b", 2, Mode::Frozen),
        ]);
        assert_eq!(check(&bad).valid, Valid::False);
    }

    /// An acknowledged failover with no matching committed write.
    #[test]
    fn acknowledged_failover_without_a_write() {
        let h = history(vec![
            log(),
            failover(0.0, 5.0, 2, "dc-a", OpType::Ok, Some(3)),
        ]);
        let r = check(&h);
        assert_eq!(r.valid, Valid::False);
        assert_eq!(r.anomalies[0].kind, "ack-without-write");
    }

    /// No committed history, or a truncated one: unknown.
    #[test]
    fn unknown_without_the_committed_history() {
        let none = history(vec![read(0.0, 1.0, 1, "w1", "dc-a", 1)]);
        assert_eq!(check(&none).valid, Valid::Unknown);
        let truncated = history(vec![
            vec![activated(0.0, 90, 5, "dc-a")],
            read(0.0, 1.0, 1, "w1", "dc-a", 5),
        ]);
        assert_eq!(check(&truncated).valid, Valid::Unknown);
    }

    /// Thousands of operations check quickly (one pass, no search).
    #[test]
    fn large_histories_are_fast() {
        let mut groups = vec![];
        let mut log = vec![];
        for e in 1..=200u64 {
            let site = if e % 2 == 0 { "dc-b" } else { "dc-a" };
            log.push(activated(0.0, e, e, site));
            for p in 0..50u64 {
                let t = (e * 1000 + p * 10) as f64;
                groups.push(read(t, t + 15.0, p, "w1", site, e));
            }
        }
        groups.push(log);
        let start = std::time::Instant::now();
        let r = check(&history(groups));
        assert_eq!(r.valid, Valid::True, "{:?}", r.summary);
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
    }
}

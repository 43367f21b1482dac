//! `epochs`: the fencing token is unique, strictly increasing, and names
//! one site (DESIGN.md §1 "epoch", §3.5).
//!
//! # Rules
//!
//! 1. **Commit order.** The committed `activated` decisions, in log order,
//!    carry strictly increasing epochs; two activations never share one.
//! 2. **Real time.** Client reads are linearizable (read index), so if an
//!    ok operation *completed* before another *began*, the later one
//!    observes an epoch at least as high; a later ok failover observes a
//!    strictly higher one (it made a new epoch after the earlier one was
//!    known). Reads through different nodes are held to this too: our
//!    reads never use `allow_stale`.
//! 3. **One site per epoch.** Every place an epoch is seen with a site — a
//!    decision, an ok read, an ok failover (`to`), an agent *serving* at it,
//!    a route sample — names the same site.
//! 4. **Agents never go back.** Each agent's serving log never shows an
//!    epoch lower than one it showed before (lines at epoch 0 — an agent
//!    that knows nothing yet — are skipped).

use std::collections::BTreeMap;

use super::{Anomaly, CheckResult, Findings, secs};
use crate::history::{DecisionKind, History, OpF, OpType, ServingState};

pub fn check(h: &History) -> CheckResult {
    let mut f = Findings::new();
    commit_order(h, &mut f);
    real_time(h, &mut f);
    one_site_per_epoch(h, &mut f);
    agents_monotonic(h, &mut f);
    f.finish("epochs unique, increasing in commit order and real time, one site each")
}

fn commit_order(h: &History, f: &mut Findings) {
    let mut acts: Vec<_> = h
        .decisions()
        .filter(|(_, d)| d.kind == DecisionKind::Activated)
        .collect();
    acts.sort_by_key(|(_, d)| d.log_index);
    f.note(format!(
        "{} activations in the committed history",
        acts.len()
    ));
    for w in acts.windows(2) {
        let ((l1, a), (l2, b)) = (w[0], w[1]);
        let (ea, eb) = (a.epoch.unwrap_or(0), b.epoch.unwrap_or(0));
        if eb == ea {
            f.violation(
                Anomaly::new(
                    "duplicate-epoch",
                    format!(
                        "two activations share epoch {ea}: log index {} ({}) and {} ({})",
                        a.log_index,
                        a.site.as_deref().unwrap_or("?"),
                        b.log_index,
                        b.site.as_deref().unwrap_or("?")
                    ),
                )
                .at(b.t_ms)
                .lines([l1, l2]),
            );
        } else if eb < ea {
            f.violation(
                Anomaly::new(
                    "epoch-decreased",
                    format!(
                        "epoch went back in commit order: log index {} has epoch {ea}, the later \
                         log index {} has epoch {eb}",
                        a.log_index, b.log_index
                    ),
                )
                .at(b.t_ms)
                .lines([l1, l2]),
            );
        }
    }
}

fn real_time(h: &History, f: &mut Findings) {
    // Ok ops that report an epoch: (invoke, complete, epoch, is_failover, lines).
    let ops: Vec<_> = h
        .completed_ops()
        .into_iter()
        .filter_map(|c| {
            let done = c.complete?;
            if done.kind != OpType::Ok {
                return None;
            }
            let e = done.epoch()?;
            Some((
                c.start(),
                c.end(),
                e,
                c.f() == OpF::Failover,
                c.lines.clone(),
            ))
        })
        .collect();
    let mut by_end: Vec<usize> = (0..ops.len()).collect();
    by_end.sort_by(|&a, &b| ops[a].1.total_cmp(&ops[b].1));
    let mut by_start: Vec<usize> = (0..ops.len()).collect();
    by_start.sort_by(|&a, &b| ops[a].0.total_cmp(&ops[b].0));
    // Sweep: before judging an op, fold in every op that completed
    // strictly before it began.
    let mut best: Option<usize> = None;
    let mut next_end = 0;
    for &b in &by_start {
        while next_end < by_end.len() && ops[by_end[next_end]].1 < ops[b].0 {
            let a = by_end[next_end];
            if best.is_none_or(|x| ops[a].2 > ops[x].2) {
                best = Some(a);
            }
            next_end += 1;
        }
        let Some(a) = best else { continue };
        let (ea, eb) = (ops[a].2, ops[b].2);
        let bad = if ops[b].3 { eb <= ea } else { eb < ea };
        if bad {
            f.violation(
                Anomaly::new(
                    "epoch-went-back",
                    format!(
                        "an operation begun at {} observed epoch {eb}, but an operation that \
                         completed at {} had already observed epoch {ea}",
                        secs(ops[b].0),
                        secs(ops[a].1)
                    ),
                )
                .at(ops[b].0)
                .until(ops[b].1)
                .lines(ops[a].4.iter().chain(ops[b].4.iter()).copied()),
            );
        }
    }
    f.note(format!(
        "{} ok operations reporting an epoch compared in real time",
        ops.len()
    ));
}

fn one_site_per_epoch(h: &History, f: &mut Findings) {
    // epoch -> (site, line, what) of the first sighting.
    let mut first: BTreeMap<u64, (String, usize, String)> = BTreeMap::new();
    let mut see =
        |f: &mut Findings, epoch: u64, site: &str, line: usize, what: String, t| match first
            .get(&epoch)
        {
            None => {
                first.insert(epoch, (site.to_string(), line, what));
            }
            Some((s, l, w)) if s != site => f.violation(
                Anomaly::new(
                    "epoch-two-sites",
                    format!("epoch {epoch} names two sites: {s} ({w}) and {site} ({what})"),
                )
                .at(t)
                .lines([*l, line]),
            ),
            Some(_) => {}
        };
    let mut decisions: Vec<_> = h.decisions().collect();
    decisions.sort_by_key(|(_, d)| d.log_index);
    for (line, d) in decisions {
        if let (DecisionKind::Activated, Some(e), Some(s)) = (d.kind, d.epoch, &d.site) {
            see(
                f,
                e,
                s,
                line,
                format!("activated at log index {}", d.log_index),
                d.t_ms,
            );
        }
    }
    for c in h.completed_ops() {
        let Some(done) = c.complete.filter(|d| d.kind == OpType::Ok) else {
            continue;
        };
        let line = c.lines.last().copied().unwrap_or(0);
        if let Some(v) = done.verdict()
            && let Some(s) = &v.active_site
        {
            see(
                f,
                v.epoch,
                s,
                line,
                format!("read from {}", c.node().unwrap_or("?")),
                done.t_ms,
            );
        } else if c.f() == OpF::Failover
            && let (Some(e), Some(to)) = (done.epoch(), &c.invoke.to)
        {
            see(f, e, to, line, "ok failover".into(), done.t_ms);
        }
    }
    for (line, s) in h.serving() {
        if s.state == ServingState::Serving {
            see(
                f,
                s.epoch,
                &s.site,
                line,
                format!("{} serving", s.agent),
                s.t_ms,
            );
        }
    }
    for (line, r) in h.routes() {
        if let (Some(s), Some(e)) = (&r.site, r.epoch) {
            see(f, e, s, line, "route".into(), r.t_ms);
        }
    }
}

fn agents_monotonic(h: &History, f: &mut Findings) {
    let mut by_agent: BTreeMap<&str, Vec<(usize, &crate::history::ServingChange)>> =
        BTreeMap::new();
    for (line, s) in h.serving() {
        if s.epoch > 0 {
            by_agent.entry(&s.agent).or_default().push((line, s));
        }
    }
    for (agent, mut v) in by_agent {
        v.sort_by(|a, b| a.1.t_ms.total_cmp(&b.1.t_ms));
        for w in v.windows(2) {
            if w[1].1.epoch < w[0].1.epoch {
                f.violation(
                    Anomaly::new(
                        "agent-epoch-went-back",
                        format!(
                            "{agent} logged epoch {} at {} after epoch {} at {}",
                            w[1].1.epoch,
                            secs(w[1].1.t_ms),
                            w[0].1.epoch,
                            secs(w[0].1.t_ms)
                        ),
                    )
                    .at(w[1].1.t_ms)
                    .lines([w[0].0, w[1].0]),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::Valid;
    use crate::checker::build::*;
    use crate::history::ServingState::*;

    fn kinds(r: &CheckResult) -> Vec<&str> {
        r.anomalies.iter().map(|a| a.kind.as_str()).collect()
    }

    /// A normal run: increasing epochs everywhere.
    #[test]
    fn increasing_epochs_are_valid() {
        let h = history(vec![
            vec![
                activated(0.0, 1, 1, "dc-a"),
                activated(5000.0, 7, 2, "dc-b"),
            ],
            read(100.0, 110.0, 1, "w1", "dc-a", 1),
            failover(4000.0, 6000.0, 2, "dc-b", OpType::Ok, Some(2)),
            read(6100.0, 6110.0, 1, "w2", "dc-b", 2),
            vec![serving(6200.0, "mbox-b", "dc-b", Serving, 2)],
        ]);
        let r = check(&h);
        assert_eq!(r.valid, Valid::True, "{r:?}");
    }

    /// Two activations sharing an epoch, and an epoch going back.
    #[test]
    fn duplicate_and_decreasing_epochs_in_the_log() {
        let h = history(vec![vec![
            activated(0.0, 1, 1, "dc-a"),
            activated(1.0, 2, 2, "dc-b"),
            activated(2.0, 3, 2, "dc-b"),
            activated(3.0, 4, 1, "dc-a"),
        ]]);
        let r = check(&h);
        assert_eq!(r.valid, Valid::False);
        let k = kinds(&r);
        assert!(
            k.contains(&"duplicate-epoch") && k.contains(&"epoch-decreased"),
            "{k:?}"
        );
    }

    /// A read that begins after another completed must not see an older epoch,
    /// even through another node; concurrent reads may.
    #[test]
    fn reads_going_back_in_real_time() {
        let concurrent = history(vec![
            read(0.0, 100.0, 1, "w1", "dc-b", 2),
            read(50.0, 150.0, 2, "w2", "dc-a", 1),
        ]);
        let r = check(&concurrent);
        assert!(!kinds(&r).contains(&"epoch-went-back"));
        let stale = history(vec![
            read(0.0, 100.0, 1, "w1", "dc-b", 2),
            read(101.0, 150.0, 2, "w2", "dc-a", 1),
        ]);
        let r = check(&stale);
        assert_eq!(r.valid, Valid::False);
        assert_eq!(kinds(&r), vec!["epoch-went-back"]);
        assert_eq!(r.anomalies[0].lines, vec![2, 3, 4, 5]);
    }

    /// A failover after a completed read must produce a higher epoch.
    #[test]
    fn a_failover_must_raise_the_epoch() {
        let h = history(vec![
            read(0.0, 100.0, 1, "w1", "dc-a", 2),
            failover(200.0, 300.0, 2, "dc-b", OpType::Ok, Some(2)),
        ]);
        let r = check(&h);
        let k = kinds(&r);
        assert!(k.contains(&"epoch-went-back"), "{k:?}");
    }

    /// An agent serving at an epoch that activated the other site, and an
    /// agent whose epoch goes back.
    #[test]
    fn agents_epochs() {
        let h = history(vec![vec![
            activated(0.0, 1, 1, "dc-a"),
            serving(10.0, "mbox-b", "dc-b", Serving, 1),
            serving(20.0, "mbox-a", "dc-a", Standby, 3),
            serving(30.0, "mbox-a", "dc-a", Serving, 1),
        ]]);
        let r = check(&h);
        let k = kinds(&r);
        assert!(k.contains(&"epoch-two-sites"), "{k:?}");
        assert!(k.contains(&"agent-epoch-went-back"), "{k:?}");
    }
}

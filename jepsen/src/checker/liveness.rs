//! `liveness`: after the heal, the cluster answers and agrees within a
//! bound; a dead site is replaced within the configured worst case
//! (DESIGN.md §6, §7).
//!
//! # Rules
//!
//! - **Heal.** The last `phase: heal` marker is the reference instant; a
//!   history without one is unknown (the runner stopped before healing).
//! - **A leader exists and every node answers.** Reads are linearizable
//!   (read index), so an ok read proves a leader reachable from that node.
//!   Every node in `meta.nodes` must complete at least one ok read invoked
//!   after the heal (unknown, not false, if the history ends less than
//!   `convergence_bound_ms` after the heal).
//! - **They agree.** The last ok read of every node returns the same
//!   verdict (the *final verdict*).
//! - **Within the bound.** For each node, the *convergence instant* is the
//!   completion of the first read after the heal from which on every read
//!   of that node returned the final verdict; the latest of these must be
//!   at most `convergence_bound_ms` after the heal.
//! - **A dead site is replaced.** For each `site-death` fault (target: the
//!   site) whose site was the active one when it died (the newest epoch
//!   known committed then, see [`KnownEpochs`](super::KnownEpochs)), the
//!   first evidence of a newer epoch activating another site — an agent of
//!   another site serving, granted a lease or running something at it, or
//!   an ok operation observing it — must come at most
//!   `worst_case_failover_ms` after the death. No such evidence: false, or
//!   unknown if the history ended before the bound elapsed.

use std::collections::BTreeMap;

use super::{Anomaly, CheckResult, Findings, KnownEpochs, activated_sites, secs};
use crate::history::{Event, History, OpF, OpType, Phase, Verdict};

/// One ok read: completion time, verdict, history lines.
type Read<'h> = (f64, &'h Verdict, Vec<usize>);

pub fn check(h: &History) -> CheckResult {
    let mut f = Findings::new();
    let (_, history_end) = h.span();
    after_heal(h, history_end, &mut f);
    site_deaths(h, history_end, &mut f);
    f.finish("the verdict converged after the heal and every dead site was replaced in time")
}

fn after_heal(h: &History, history_end: f64, f: &mut Findings) {
    let Some(heal) = h.phase_start(Phase::Heal) else {
        f.doubt(Anomaly::new(
            "no-heal",
            "no `heal` phase marker: the run did not reach its heal, so recovery cannot be \
             judged"
                .into(),
        ));
        return;
    };
    let bound = h.meta.convergence_bound_ms as f64;
    let too_soon = history_end - heal < bound;
    // node -> ok reads invoked after the heal, by completion.
    let mut reads: BTreeMap<&str, Vec<Read>> = BTreeMap::new();
    let ops = h.completed_ops();
    for c in &ops {
        if c.f() != OpF::Read || c.kind() != OpType::Ok || c.start() < heal {
            continue;
        }
        let (Some(node), Some(v)) = (c.node(), c.complete.and_then(|d| d.verdict())) else {
            continue;
        };
        reads
            .entry(node)
            .or_default()
            .push((c.end(), v, c.lines.clone()));
    }
    let mut finals: Vec<(&str, &Verdict, Vec<usize>)> = Vec::new();
    let mut converged_at: Option<(f64, &str)> = None;
    for node in &h.meta.nodes {
        let Some(v) = reads.get_mut(node.as_str()) else {
            let a = Anomaly::new(
                "node-silent-after-heal",
                format!(
                    "{node} completed no ok read invoked after the heal at {}",
                    secs(heal)
                ),
            )
            .at(heal)
            .until(history_end);
            if too_soon {
                f.doubt(a);
            } else {
                f.violation(a);
            }
            continue;
        };
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        let Some(last) = v.last() else { continue };
        let final_v = last.1;
        let first_stable = v.iter().rposition(|r| r.1 != final_v).map_or(0, |i| i + 1);
        let t = v[first_stable].0;
        if converged_at.is_none_or(|(c, _)| t > c) {
            converged_at = Some((t, node.as_str()));
        }
        finals.push((node.as_str(), final_v, last.2.clone()));
    }
    if let Some((first_node, first_v, first_lines)) = finals.first() {
        for (node, v, lines) in &finals[1..] {
            if v != first_v {
                f.violation(
                    Anomaly::new(
                        "final-reads-disagree",
                        format!(
                            "final reads disagree: {first_node} says {first_v}, {node} says {v}"
                        ),
                    )
                    .at(history_end)
                    .lines(first_lines.iter().chain(lines.iter()).copied()),
                );
            }
        }
        f.note(format!("final verdict {first_v}"));
    }
    if let Some((t, node)) = converged_at {
        let took = t - heal;
        f.note(format!(
            "converged {took:.0} ms after the heal (last node: {node}); bound {bound} ms"
        ));
        if took > bound {
            f.violation(
                Anomaly::new(
                    "slow-convergence",
                    format!(
                        "the verdict converged {took:.0} ms after the heal ({node} last), over \
                         the bound of {bound} ms"
                    ),
                )
                .at(heal + bound)
                .until(t),
            );
        }
    }
}

fn site_deaths(h: &History, history_end: f64, f: &mut Findings) {
    let known = KnownEpochs::from_history(h);
    let sites = activated_sites(h);
    let worst = h.meta.worst_case_failover_ms as f64;
    for w in h.fault_windows() {
        if w.kind != "site-death" {
            continue;
        }
        let Some(dead) = w.targets.first() else {
            continue;
        };
        let at_death = known.newest_at(w.start_ms).map(|(e, _)| e).unwrap_or(0);
        let active = sites.get(&at_death).map(|(s, _)| s.as_str());
        if active != Some(dead.as_str()) {
            f.note(format!(
                "{dead} died at {} while not active (active: {}); nothing to replace",
                secs(w.start_ms),
                active.unwrap_or("unknown")
            ));
            continue;
        }
        // The first evidence of a newer epoch at another site.
        let mut first: Option<(f64, usize, String)> = None;
        let mut consider = |t: f64, line: usize, what: String| {
            if t >= w.start_ms && first.as_ref().is_none_or(|(ft, _, _)| t < *ft) {
                first = Some((t, line, what));
            }
        };
        for (i, e) in h.events.iter().enumerate() {
            let (t, epoch, site, what) = match e {
                Event::Serving(s) => (
                    s.t_ms,
                    s.epoch,
                    &s.site,
                    format!("{} {:?}", s.agent, s.state),
                ),
                Event::Lease(l) => (l.t_ms, l.epoch, &l.site, format!("lease to {}", l.agent)),
                Event::Run(r) => (
                    r.t_ms,
                    r.epoch,
                    &r.site,
                    format!("{} ran {}", r.agent, r.name),
                ),
                _ => continue,
            };
            let activates_site = sites.get(&epoch).is_some_and(|(s, _)| s == site);
            if epoch > at_death && site != dead && activates_site {
                consider(t, h.line(i), what);
            }
        }
        for s in &known.sightings {
            let other = sites.get(&s.epoch).is_some_and(|(site, _)| site != dead);
            if s.epoch > at_death && other {
                consider(s.t_ms, s.line, s.what.clone());
            }
        }
        match first {
            Some((t, line, what)) => {
                let took = t - w.start_ms;
                f.note(format!(
                    "{dead} died at {}; replaced after {took:.0} ms ({what})",
                    secs(w.start_ms)
                ));
                if took > worst {
                    f.violation(
                        Anomaly::new(
                            "slow-failover",
                            format!(
                                "{dead} died at {} and the other site took over only after \
                                 {took:.0} ms ({what}), over the worst case of {worst} ms",
                                secs(w.start_ms)
                            ),
                        )
                        .at(w.start_ms)
                        .until(t)
                        .lines([line]),
                    );
                }
            }
            None => {
                let a = Anomaly::new(
                    "no-failover",
                    format!(
                        "{dead} died at {} and no other site was activated before the history \
                         ended",
                        secs(w.start_ms)
                    ),
                )
                .at(w.start_ms)
                .until(history_end);
                if history_end - w.start_ms < worst {
                    f.doubt(a);
                } else {
                    f.violation(a);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::Valid;
    use crate::checker::build::*;
    use crate::history::{NemesisAction::*, ServingState::Serving};

    fn reads_after(t: f64, epoch_b: bool) -> Vec<Vec<Event>> {
        ["w1", "w2", "w3"]
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let (site, e) = if epoch_b { ("dc-b", 2) } else { ("dc-a", 1) };
                read(t + i as f64, t + 10.0 + i as f64, i as u64, n, site, e)
            })
            .collect()
    }

    /// All nodes answer the same verdict soon after the heal.
    #[test]
    fn converged_after_heal_is_valid() {
        let mut g = vec![vec![phase(1000.0, Phase::Heal)]];
        g.extend(reads_after(2000.0, true));
        let r = check(&history(g));
        assert_eq!(r.valid, Valid::True, "{r:?}");
    }

    /// A node that never answers; nodes that disagree; convergence too slow.
    #[test]
    fn silent_disagreeing_or_slow_nodes_are_violations() {
        let mut silent = vec![vec![
            phase(1000.0, Phase::Heal),
            probe(30_000.0, "dc-a", true),
        ]];
        silent.extend(reads_after(2000.0, true).into_iter().take(2));
        let r = check(&history(silent));
        assert_eq!(r.anomalies[0].kind, "node-silent-after-heal");
        assert_eq!(r.valid, Valid::False);

        let mut split = vec![vec![phase(1000.0, Phase::Heal)]];
        split.extend(reads_after(2000.0, true).into_iter().take(2));
        split.push(read(2000.0, 2010.0, 9, "w3", "dc-a", 1));
        let r = check(&history(split));
        assert_eq!(r.anomalies[0].kind, "final-reads-disagree");

        let mut slow = vec![vec![phase(1000.0, Phase::Heal)]];
        slow.extend(reads_after(2000.0, false));
        slow.extend(reads_after(20_000.0, true));
        let r = check(&history(slow));
        assert_eq!(r.valid, Valid::False);
        assert_eq!(r.anomalies[0].kind, "slow-convergence");
    }

    /// No heal marker, or a silent node right at the end: unknown.
    #[test]
    fn unknown_without_heal_or_time() {
        assert_eq!(check(&history(vec![])).valid, Valid::Unknown);
        let mut g = vec![vec![phase(1000.0, Phase::Heal)]];
        g.extend(reads_after(2000.0, true).into_iter().take(2));
        assert_eq!(check(&history(g)).valid, Valid::Unknown);
    }

    /// The active site dies: dc-b must serve a newer epoch within the bound.
    #[test]
    fn site_death_needs_a_timely_failover() {
        let base = || {
            let mut g = vec![vec![
                phase(40_000.0, Phase::Heal),
                activated(0.0, 1, 1, "dc-a"),
                activated(0.0, 2, 2, "dc-b"),
                lease(500.0, "mbox-a", "dc-a", 1, 490.0, 3000),
                nemesis(1000.0, Start, "site-death", &["dc-a"]),
            ]];
            g.extend(reads_after(41_000.0, true));
            g
        };
        let mut timely = base();
        timely.push(vec![serving(7000.0, "mbox-b", "dc-b", Serving, 2)]);
        assert_eq!(check(&history(timely)).valid, Valid::True);
        let mut late = base();
        late.push(vec![serving(9500.0, "mbox-b", "dc-b", Serving, 2)]);
        let r = check(&history(late));
        assert_eq!(r.anomalies[0].kind, "slow-failover", "{r:?}");
    }
}

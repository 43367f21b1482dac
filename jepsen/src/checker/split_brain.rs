//! `split_brain`: never two sites serving at the same instant, judged on
//! three independent observations (DESIGN.md §6).
//!
//! # (a) The agents' own serving logs
//!
//! An agent is *serving* from a `serving` line with state `serving` until
//! its next line (any state). Two agents of **different sites** serving
//! over intervals that overlap by any amount is a violation; agents of the
//! same site (mailstore and proxy) may of course serve together. All times
//! are the one kernel's BOOTTIME, so the comparison is exact.
//!
//! An agent whose log ends while serving (killed, or the run ended) is
//! taken to serve until the end of the history, or — if it received leases
//! — until its last lease ran out plus `margin_ms`, whichever is earlier:
//! past that point the outside fences (watchdog, `BindsTo=`) stop its
//! services (DESIGN.md §3.4 assumption e), so serving longer is not
//! something the log could show.
//!
//! # (b) The harness's probes of each site's fenced service
//!
//! A probe is a point: the service answered (or not) at `t_ms`. Per site,
//! consecutive `up` probes with no `down` probe between them form an *up
//! run* `[first up, last up]`; the service is assumed up throughout a run
//! (it is not assumed up before the first or after the last up probe, so
//! nothing is extrapolated). When `probe_interval_ms` is given, two ups
//! further apart than twice that end a run (the prober itself stalled and
//! saw nothing in between). Two runs of different sites sharing any
//! instant (`max(start) ≤ min(end)`) is a violation: some up probe of one
//! site lies between two up probes of the other with no down seen between.
//!
//! # (c) BIRD's best path
//!
//! A route sample at `t` pointing at site `s` with epoch `e` is judged
//! against the newest epoch `E` known committed (see
//! [`KnownEpochs`](super::KnownEpochs)) at or before `t − route_grace_ms`:
//! if `e < E`, the stale route still won; if `E` activated a site other
//! than `s` (judged only for samples that carry no epoch; a sample with an
//! epoch newer than `E` is ahead of the evidence, not stale), traffic went
//! to the wrong site. Independently, a route whose
//! epoch activated another site than the one it points at is a violation at
//! any time. Samples with no route are never violations (no route is safe).

use std::collections::BTreeMap;

use super::{Anomaly, CheckResult, Findings, KnownEpochs, activated_sites, secs};
use crate::history::{History, Ms, ServingState};

/// A time interval attributed to one agent or site.
#[derive(Clone, Debug)]
pub(crate) struct Span {
    pub who: String,
    pub site: String,
    pub start: Ms,
    pub end: Ms,
    pub epoch: u64,
    /// True when the end was inferred rather than logged.
    pub inferred_end: bool,
    pub lines: Vec<usize>,
}

/// Each agent's serving intervals (rule (a)), also drawn by the report.
pub(crate) fn serving_spans(h: &History) -> Vec<Span> {
    let (_, history_end) = h.span();
    let mut by_agent: BTreeMap<&str, Vec<(usize, &crate::history::ServingChange)>> =
        BTreeMap::new();
    for (line, s) in h.serving() {
        by_agent.entry(&s.agent).or_default().push((line, s));
    }
    let mut lease_bound: BTreeMap<&str, Ms> = BTreeMap::new();
    for (_, l) in h.leases() {
        let end = h.meta.lease_end(l.sent_t_ms, l.ttl_ms) + h.meta.margin_ms as f64;
        let b = lease_bound.entry(&l.agent).or_insert(end);
        *b = b.max(end);
    }
    let mut spans = Vec::new();
    for (agent, mut changes) in by_agent {
        changes.sort_by(|a, b| a.1.t_ms.total_cmp(&b.1.t_ms));
        for (i, (line, c)) in changes.iter().enumerate() {
            if c.state != ServingState::Serving {
                continue;
            }
            let (end, inferred, mut lines) = match changes.get(i + 1) {
                Some((l2, next)) => (next.t_ms, false, vec![*line, *l2]),
                None => {
                    let end = match lease_bound.get(agent) {
                        Some(&b) => b.min(history_end),
                        None => history_end,
                    };
                    (end.max(c.t_ms), true, vec![*line])
                }
            };
            lines.dedup();
            spans.push(Span {
                who: agent.to_string(),
                site: c.site.clone(),
                start: c.t_ms,
                end,
                epoch: c.epoch,
                inferred_end: inferred,
                lines,
            });
        }
    }
    spans
}

/// Each site's up runs of probes (rule (b)), also drawn by the report.
pub(crate) fn probe_runs(h: &History) -> Vec<Span> {
    let max_gap = h.meta.probe_interval_ms.map(|p| 2.0 * p as f64);
    let mut by_site: BTreeMap<&str, Vec<(usize, &crate::history::Probe)>> = BTreeMap::new();
    for (line, p) in h.probes() {
        by_site.entry(&p.site).or_default().push((line, p));
    }
    let mut runs = Vec::new();
    for (site, mut probes) in by_site {
        probes.sort_by(|a, b| a.1.t_ms.total_cmp(&b.1.t_ms));
        let mut current: Option<Span> = None;
        for (line, p) in probes {
            let continues = match (&current, max_gap) {
                (Some(run), Some(gap)) => p.up && p.t_ms - run.end <= gap,
                (Some(_), None) => p.up,
                (None, _) => false,
            };
            if continues {
                if let Some(run) = current.as_mut() {
                    run.end = p.t_ms;
                    run.lines.push(line);
                }
                continue;
            }
            runs.extend(current.take());
            if p.up {
                current = Some(Span {
                    who: site.to_string(),
                    site: site.to_string(),
                    start: p.t_ms,
                    end: p.t_ms,
                    epoch: 0,
                    inferred_end: false,
                    lines: vec![line],
                });
            }
        }
        runs.extend(current);
    }
    runs
}

/// Run the three observations' checks.
pub fn check(h: &History) -> CheckResult {
    let mut f = Findings::new();

    let spans = serving_spans(h);
    overlaps(&spans, false, &mut f);
    let inferred = spans.iter().filter(|s| s.inferred_end).count();
    f.note(format!(
        "(a) {} serving intervals of {} agents compared{}",
        spans.len(),
        spans
            .iter()
            .map(|s| &s.who)
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        if inferred > 0 {
            format!("; {inferred} ended by the end of the log, bounded by the last lease + margin")
        } else {
            String::new()
        }
    ));

    let runs = probe_runs(h);
    overlaps(&runs, true, &mut f);
    f.note(format!(
        "(b) {} probes, {} up runs compared",
        h.probes().count(),
        runs.len()
    ));

    routes(h, &mut f);
    if spans.is_empty() && runs.is_empty() && h.routes().next().is_none() {
        f.doubt(Anomaly::new(
            "no-observations",
            "the history has no serving logs, probes or route samples: nothing observed \
             which site served"
                .into(),
        ));
    }
    f.finish("no two sites were ever seen serving at the same instant")
}

/// Report every pair of spans of different sites sharing an instant.
fn overlaps(spans: &[Span], probes: bool, f: &mut Findings) {
    let mut sorted: Vec<&Span> = spans.iter().collect();
    sorted.sort_by(|a, b| a.start.total_cmp(&b.start));
    for (i, a) in sorted.iter().enumerate() {
        for b in &sorted[i + 1..] {
            // Sorted by start: once b starts after a ends, no later one overlaps a.
            let shares = if probes {
                b.start <= a.end
            } else {
                b.start < a.end
            };
            if !shares {
                if b.start > a.end {
                    break;
                }
                continue;
            }
            if a.site == b.site {
                continue;
            }
            let (lo, hi) = (b.start, a.end.min(b.end));
            let anomaly = if probes {
                Anomaly::new(
                    "probes-overlap",
                    format!(
                        "both sites answered outside probes: {} up from {} to {}, {} up from {} \
                         to {} (no down probe between)",
                        a.site,
                        secs(a.start),
                        secs(a.end),
                        b.site,
                        secs(b.start),
                        secs(b.end)
                    ),
                )
            } else {
                Anomaly::new(
                    "agents-overlap",
                    format!(
                        "{} ({}, epoch {}) and {} ({}, epoch {}) both serving from {} to {}{}",
                        a.who,
                        a.site,
                        a.epoch,
                        b.who,
                        b.site,
                        b.epoch,
                        secs(lo),
                        secs(hi),
                        if a.inferred_end || b.inferred_end {
                            " (a log ended while serving; its end is its last lease + margin)"
                        } else {
                            ""
                        }
                    ),
                )
            };
            f.violation(
                anomaly
                    .at(lo)
                    .until(hi)
                    .lines(a.lines.iter().chain(b.lines.iter()).copied()),
            );
        }
    }
}

/// Rule (c).
fn routes(h: &History, f: &mut Findings) {
    let known = KnownEpochs::from_history(h);
    let sites = activated_sites(h);
    let grace = h.meta.route_grace_ms as f64;
    let mut judged = 0;
    for (line, r) in h.routes() {
        let Some(site) = &r.site else { continue };
        if let Some(e) = r.epoch
            && let Some((owner, dline)) = sites.get(&e)
            && owner != site
        {
            f.violation(
                Anomaly::new(
                    "route-wrong-site",
                    format!(
                        "the router's best path points at {site} with epoch {e}, but epoch {e} \
                         activated {owner}"
                    ),
                )
                .at(r.t_ms)
                .lines([line, *dline]),
            );
        }
        let Some((newest, seen)) = known.newest_at(r.t_ms - grace) else {
            continue;
        };
        judged += 1;
        if let Some(e) = r.epoch
            && e < newest
        {
            f.violation(
                Anomaly::new(
                    "stale-route",
                    format!(
                        "the router's best path at {} points at {site} with epoch {e}, but \
                         epoch {newest} was known committed since {} ({}), more than the \
                         {grace} ms grace before",
                        secs(r.t_ms),
                        secs(seen.t_ms),
                        seen.what
                    ),
                )
                .at(r.t_ms)
                .lines([line, seen.line]),
            );
            continue;
        }
        if r.epoch.is_some() {
            // Its epoch is at least the newest known: a route ahead of the
            // evidence, and its site was checked against its epoch above.
            continue;
        }
        let newest_site = sites
            .get(&newest)
            .map(|(s, _)| s.clone())
            .or_else(|| seen.site.clone());
        if let Some(ns) = newest_site
            && &ns != site
        {
            f.violation(
                Anomaly::new(
                    "route-not-active-site",
                    format!(
                        "the router's best path at {} points at {site}, but epoch {newest} \
                         (site {ns}) was known committed since {}",
                        secs(r.t_ms),
                        secs(seen.t_ms)
                    ),
                )
                .at(r.t_ms)
                .lines([line, seen.line]),
            );
        }
    }
    f.note(format!(
        "(c) {} route samples, {judged} judged (the rest came before any epoch was known \
         committed + {grace} ms)",
        h.routes().count()
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::Valid;
    use crate::checker::build::*;
    use crate::history::ServingState::*;

    /// A clean handover: dc-a fences before dc-b serves.
    #[test]
    fn handover_without_overlap_is_valid() {
        let h = history(vec![vec![
            serving(100.0, "mbox-a", "dc-a", Serving, 1),
            serving(150.0, "proxy-a", "dc-a", Serving, 1),
            serving(5000.0, "mbox-a", "dc-a", Fenced, 1),
            serving(5001.0, "proxy-a", "dc-a", Fenced, 1),
            serving(9000.0, "mbox-b", "dc-b", Serving, 2),
            serving(9000.0, "proxy-b", "dc-b", Serving, 2),
            serving(12000.0, "mbox-b", "dc-b", Standby, 2),
        ]]);
        let r = check(&h);
        assert_eq!(r.valid, Valid::True, "{r:?}");
    }

    /// Two sites' agents serving at once, even for a millisecond.
    #[test]
    fn overlapping_serving_agents_of_two_sites_is_a_violation() {
        let h = history(vec![vec![
            serving(100.0, "mbox-a", "dc-a", Serving, 1),
            serving(9001.0, "mbox-a", "dc-a", Fenced, 1),
            serving(9000.0, "mbox-b", "dc-b", Serving, 2),
        ]]);
        let r = check(&h);
        assert_eq!(r.valid, Valid::False);
        assert_eq!(r.anomalies[0].kind, "agents-overlap");
        assert_eq!(r.anomalies[0].at_ms, Some(9000.0));
        assert_eq!(r.anomalies[0].until_ms, Some(9001.0));
        assert_eq!(r.anomalies[0].lines, vec![2, 3, 4]);
    }

    /// An agent killed while serving is bounded by its last lease + margin,
    /// not assumed to serve forever.
    #[test]
    fn a_dead_agent_serves_until_its_lease_and_margin_run_out() {
        let ok = history(vec![vec![
            serving(100.0, "mbox-a", "dc-a", Serving, 1),
            lease(1000.0, "mbox-a", "dc-a", 1, 900.0, 3000),
            // lease over at 3900, + margin 1000 = 4900
            serving(5000.0, "mbox-b", "dc-b", Serving, 2),
            probe(20_000.0, "dc-b", true),
        ]]);
        assert_eq!(check(&ok).valid, Valid::True, "{:?}", check(&ok));
        let bad = history(vec![vec![
            serving(100.0, "mbox-a", "dc-a", Serving, 1),
            lease(1000.0, "mbox-a", "dc-a", 1, 900.0, 3000),
            serving(4800.0, "mbox-b", "dc-b", Serving, 2),
            probe(20_000.0, "dc-b", true),
        ]]);
        let r = check(&bad);
        assert_eq!(r.valid, Valid::False);
        assert!(r.anomalies[0].message.contains("last lease"), "{r:?}");
    }

    /// Probes: an up of one site between two ups of the other with no down
    /// between is a violation; a down between them clears it.
    #[test]
    fn probe_overlap_rule() {
        let bad = history(vec![vec![
            probe(0.0, "dc-a", true),
            probe(200.0, "dc-a", true),
            probe(100.0, "dc-b", true),
        ]]);
        let r = check(&bad);
        assert_eq!(r.valid, Valid::False);
        assert_eq!(r.anomalies[0].kind, "probes-overlap");
        let ok = history(vec![vec![
            probe(0.0, "dc-a", true),
            probe(90.0, "dc-a", false),
            probe(200.0, "dc-a", true),
            probe(100.0, "dc-b", true),
            probe(150.0, "dc-b", false),
        ]]);
        assert_eq!(check(&ok).valid, Valid::True, "{:?}", check(&ok));
    }

    /// With a probe interval, a long silence ends an up run: a stalled
    /// prober is no evidence of continuous service.
    #[test]
    fn a_probe_gap_ends_an_up_run() {
        let mut h = history(vec![vec![
            probe(0.0, "dc-a", true),
            probe(5000.0, "dc-a", true),
            probe(2000.0, "dc-b", true),
        ]]);
        assert_eq!(check(&h).valid, Valid::False);
        h.meta.probe_interval_ms = Some(200);
        assert_eq!(check(&h).valid, Valid::True);
    }

    /// A stale route after the grace is a violation; within it, not judged.
    #[test]
    fn stale_route_after_grace_is_a_violation() {
        let base = || {
            vec![
                activated(0.0, 1, 1, "dc-a"),
                activated(4000.0, 2, 2, "dc-b"),
                lease(500.0, "mbox-a", "dc-a", 1, 490.0, 3000),
                // epoch 2 first known at 5000 (a lease at it)
                lease(5000.0, "mbox-b", "dc-b", 2, 4990.0, 3000),
                route(1000.0, Some("dc-a"), Some(1)),
            ]
        };
        let mut within = base();
        within.push(route(5500.0, Some("dc-a"), Some(1)));
        within.push(route(6100.0, Some("dc-b"), Some(2)));
        let r = check(&history(vec![within]));
        assert_eq!(r.valid, Valid::True, "{r:?}");

        // A route ahead of the evidence (epoch 2 before it was seen) is fine.
        let mut ahead = base();
        ahead.push(route(4500.0, Some("dc-b"), Some(2)));
        let r = check(&history(vec![ahead]));
        assert_eq!(r.valid, Valid::True, "{r:?}");

        let mut late = base();
        late.push(route(6100.0, Some("dc-a"), Some(1)));
        let r = check(&history(vec![late]));
        assert_eq!(r.valid, Valid::False);
        assert_eq!(r.anomalies[0].kind, "stale-route");
    }

    /// A route whose epoch belongs to another site is wrong at any time.
    #[test]
    fn route_epoch_naming_another_site_is_a_violation() {
        let h = history(vec![vec![
            activated(0.0, 1, 1, "dc-a"),
            route(10.0, Some("dc-b"), Some(1)),
        ]]);
        let r = check(&h);
        assert_eq!(r.valid, Valid::False);
        assert_eq!(r.anomalies[0].kind, "route-wrong-site");
    }

    /// Nothing observed: cannot tell.
    #[test]
    fn no_observations_is_unknown() {
        assert_eq!(check(&history(vec![])).valid, Valid::Unknown);
    }
}

//! `leases`: no agent runs an activate hook or a directive outside a valid
//! lease (DESIGN.md §3.4, §3.6).
//!
//! # Rule
//!
//! A `lease` event of agent `X` at epoch `e` makes `X` entitled to act at
//! `e` from the grant's arrival (`t_ms`: the agent cannot act on a grant
//! it has not received) until `sent_t_ms + ttl_ms / (1 − max_drift)` (see
//! [`Meta::lease_end`](crate::history::Meta::lease_end): the latest real
//! instant an agent whose clock runs slow by `max_drift` may still believe
//! in it). Overlapping windows of one agent and epoch merge into one
//! entitlement.
//!
//! - Every `run` (hook or directive) of `X` at epoch `e` must **start**
//!   inside an entitlement of `X` at `e` — a lease at another epoch does not
//!   count.
//! - A directive run must also **end** by the end of that entitlement plus
//!   `margin_ms`: the agent kills a directive's process group when its lease
//!   lapses, and `margin ≥ fence_timeout` bounds the kill. Activate hooks
//!   are judged at their start only (they are not killed on a lapse), and
//!   runs that never ended in the history only at their start.
//!
//! - Every lease of a site at epoch `e` must be over before another site
//!   is first seen serving at a later epoch (`stale-grant`): the leader
//!   waits out every lease it could have granted before it activates a new
//!   site (§3.4), so a grant that outlives the activation was one the
//!   protocol promised could not exist — a deposed leader granting from
//!   stale state, say.
//!
//! A history with no lease events at all cannot be judged: unknown.

use std::collections::BTreeMap;

use super::{Anomaly, CheckResult, Findings, secs};
use crate::history::{History, Ms, RunKind, ServingState};

/// Entitlement windows `(from, until, grant line)` of one agent and epoch.
type Windows<'h> = BTreeMap<(&'h str, u64), Vec<(Ms, Ms, usize)>>;

/// Check every run against its agent's leases.
pub fn check(h: &History) -> CheckResult {
    let mut f = Findings::new();
    // (agent, epoch) -> windows [arrival, end] with the grant's line.
    let mut windows: Windows = BTreeMap::new();
    for (line, l) in h.leases() {
        windows.entry((&l.agent, l.epoch)).or_default().push((
            l.t_ms,
            h.meta.lease_end(l.sent_t_ms, l.ttl_ms),
            line,
        ));
    }
    stale_grants(h, &mut f);
    let runs: Vec<_> = h.runs().collect();
    if windows.is_empty() {
        if !runs.is_empty() {
            f.doubt(Anomaly::new(
                "no-leases",
                format!(
                    "{} hook and directive runs but no lease grants recorded: the runner must \
                     write `lease` events to judge them",
                    runs.len()
                ),
            ));
        }
        return f.finish("no runs to judge");
    }
    let merged: Windows = windows
        .into_iter()
        .map(|(k, mut w)| {
            w.sort_by(|a, b| a.0.total_cmp(&b.0));
            let mut out: Vec<(Ms, Ms, usize)> = Vec::new();
            for x in w {
                match out.last_mut() {
                    Some(last) if x.0 <= last.1 => {
                        if x.1 > last.1 {
                            *last = (last.0, x.1, x.2);
                        }
                    }
                    _ => out.push(x),
                }
            }
            (k, out)
        })
        .collect();
    let margin = h.meta.margin_ms as f64;
    let mut judged = 0;
    for (line, r) in runs {
        judged += 1;
        let what = match r.kind {
            RunKind::ActivateHook => format!("activate hook {}", r.name),
            RunKind::Directive => format!("directive {}", r.directive_id()),
        };
        let covering = merged
            .get(&(r.agent.as_str(), r.epoch))
            .and_then(|w| w.iter().find(|(a, e, _)| *a <= r.t_ms && r.t_ms <= *e));
        let Some(&(_, end, lease_line)) = covering else {
            let other = merged
                .iter()
                .filter(|((a, _), _)| *a == r.agent)
                .flat_map(|((_, e), w)| w.iter().map(move |x| (*e, x)))
                .find(|(_, (a, e, _))| *a <= r.t_ms && r.t_ms <= *e);
            let why = match other {
                Some((e, _)) => format!("it held a lease at epoch {e} only"),
                None => "it held no lease then".to_string(),
            };
            f.violation(
                Anomaly::new(
                    "run-outside-lease",
                    format!(
                        "{} started {what} at epoch {} at {}, but {why}",
                        r.agent,
                        r.epoch,
                        secs(r.t_ms)
                    ),
                )
                .at(r.t_ms)
                .until(r.end_t_ms.unwrap_or(r.t_ms))
                .lines([line]),
            );
            continue;
        };
        if r.kind == RunKind::Directive
            && let Some(run_end) = r.end_t_ms
            && run_end > end + margin
        {
            f.violation(
                Anomaly::new(
                    "run-outlived-lease",
                    format!(
                        "{}'s {what} at epoch {} ran until {}, {:.0} ms past its lease's end \
                         at {} (allowed: margin {margin} ms to kill it)",
                        r.agent,
                        r.epoch,
                        secs(run_end),
                        run_end - end,
                        secs(end)
                    ),
                )
                .at(end + margin)
                .until(run_end)
                .lines([line, lease_line]),
            );
        }
    }
    f.note(format!("{judged} runs judged against the agents' leases"));
    f.finish(format!("all {judged} runs started inside a valid lease"))
}

/// Leases that outlive the first serving of another site at a later epoch.
fn stale_grants(h: &History, f: &mut Findings) {
    // The first time each (site, epoch) was seen serving.
    let mut first: BTreeMap<(&str, u64), (Ms, &str, usize)> = BTreeMap::new();
    for (line, s) in h.serving() {
        if s.state == ServingState::Serving {
            let e = first
                .entry((s.site.as_str(), s.epoch))
                .or_insert((s.t_ms, &s.agent, line));
            if s.t_ms < e.0 {
                *e = (s.t_ms, &s.agent, line);
            }
        }
    }
    for (line, l) in h.leases() {
        let end = h.meta.lease_end(l.sent_t_ms, l.ttl_ms);
        let newer = first
            .iter()
            .filter(|((site, epoch), _)| *site != l.site && *epoch > l.epoch)
            .min_by(|a, b| a.1.0.total_cmp(&b.1.0));
        if let Some(((site, epoch), (t, agent, serving_line))) = newer
            && end > *t
        {
            f.violation(
                Anomaly::new(
                    "stale-grant",
                    format!(
                        "{}'s lease at epoch {} (sent {}, received {}) lasts until {}, but \
                         {agent} ({site}) was serving at epoch {epoch} from {}: the grant \
                         outlives the activation that should have waited it out",
                        l.agent,
                        l.epoch,
                        secs(l.sent_t_ms),
                        secs(l.t_ms),
                        secs(end),
                        secs(*t)
                    ),
                )
                .at(*t)
                .until(end)
                .lines([line, *serving_line]),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::Valid;
    use crate::checker::build::*;
    use crate::history::RunKind::*;

    fn leases() -> Vec<crate::history::Event> {
        vec![
            // sent 1000, arrives 1010, valid until 4000; renewed: sent 3000 → 6000.
            lease(1010.0, "mbox-b", "dc-b", 2, 1000.0, 3000),
            lease(3010.0, "mbox-b", "dc-b", 2, 3000.0, 3000),
        ]
    }

    /// Runs inside the chained renewals are fine, even across renewals.
    #[test]
    fn runs_inside_leases_are_valid() {
        let mut ev = leases();
        ev.push(run(
            1500.0,
            Some(5900.0),
            "mbox-b",
            "dc-b",
            Directive,
            "promote",
            2,
        ));
        ev.push(run(
            5500.0,
            None,
            "mbox-b",
            "dc-b",
            ActivateHook,
            "activate",
            2,
        ));
        let r = check(&history(vec![ev]));
        assert_eq!(r.valid, Valid::True, "{r:?}");
    }

    /// Before the grant arrived, after it ran out, or at another epoch.
    #[test]
    fn runs_outside_a_lease_at_their_epoch_are_violations() {
        for (start, epoch) in [(1005.0, 2), (6001.0, 2), (2000.0, 3)] {
            let mut ev = leases();
            ev.push(run(
                start,
                None,
                "mbox-b",
                "dc-b",
                ActivateHook,
                "activate",
                epoch,
            ));
            let r = check(&history(vec![ev]));
            assert_eq!(r.valid, Valid::False, "start {start} epoch {epoch}");
            assert_eq!(r.anomalies[0].kind, "run-outside-lease");
        }
    }

    /// A directive still running past its lease and the kill margin.
    #[test]
    fn a_directive_outliving_its_lease_is_a_violation() {
        let mut ev = leases();
        ev.push(run(
            2000.0,
            Some(7000.0),
            "mbox-b",
            "dc-b",
            Directive,
            "promote",
            2,
        ));
        assert_eq!(
            check(&history(vec![ev])).valid,
            Valid::True,
            "within margin"
        );
        let mut ev = leases();
        ev.push(run(
            2000.0,
            Some(7001.0),
            "mbox-b",
            "dc-b",
            Directive,
            "promote",
            2,
        ));
        let r = check(&history(vec![ev]));
        assert_eq!(r.valid, Valid::False);
        assert_eq!(r.anomalies[0].kind, "run-outlived-lease");
    }

    /// A slow agent clock may stretch the lease by `1 / (1 − max_drift)`.
    #[test]
    fn drift_stretches_the_lease() {
        let mut ev = leases();
        ev.push(run(
            6050.0,
            None,
            "mbox-b",
            "dc-b",
            ActivateHook,
            "activate",
            2,
        ));
        let mut h = history(vec![ev]);
        assert_eq!(check(&h).valid, Valid::False);
        h.meta.max_drift = 0.02; // 3000 / 0.98 ≈ 3061
        assert_eq!(check(&h).valid, Valid::True);
    }

    /// A lease of the old site that ends before the new site serves is
    /// fine; one that ends after is a stale grant, whichever agent of the
    /// new site serves first; the same site at a later epoch is no
    /// conflict.
    #[test]
    fn a_lease_outliving_the_next_activation_is_a_stale_grant() {
        use crate::history::ServingState::Serving;
        // dc-b's lease at epoch 2 lasts until 4000 (sent 1000, ttl 3000,
        // no drift in the test meta).
        let base = || vec![lease(1010.0, "mbox-b", "dc-b", 2, 1000.0, 3000)];
        let mut ok = base();
        ok.push(serving(4100.0, "mbox-a", "dc-a", Serving, 3));
        ok.push(serving(2000.0, "mbox-b", "dc-b", Serving, 4));
        assert_eq!(check(&history(vec![ok])).valid, Valid::True);
        let mut bad = base();
        bad.push(serving(5000.0, "mbox-a", "dc-a", Serving, 3));
        bad.push(serving(3900.0, "proxy-a", "dc-a", Serving, 3));
        let r = check(&history(vec![bad]));
        assert_eq!(r.valid, Valid::False, "{r:?}");
        assert_eq!(r.anomalies[0].kind, "stale-grant");
        assert!(r.anomalies[0].message.contains("proxy-a"), "{r:?}");
        // An older epoch of another site serving later is not a newer
        // activation.
        let mut old = base();
        old.push(serving(3000.0, "mbox-a", "dc-a", Serving, 1));
        assert_eq!(check(&history(vec![old])).valid, Valid::True);
    }

    /// Runs without any recorded lease: unknown, not a violation.
    #[test]
    fn no_leases_recorded_is_unknown() {
        let h = history(vec![vec![run(1.0, None, "a", "dc-a", Directive, "x", 1)]]);
        assert_eq!(check(&h).valid, Valid::Unknown);
    }
}

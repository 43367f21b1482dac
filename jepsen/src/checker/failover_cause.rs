//! `failover_cause`: every automatic failover answers a real loss of the
//! site it left (DESIGN.md §3.2 and §3.3: a site is declared dead from the
//! witnesses' own probes; Consul may veto a "down", never make one).
//!
//! # Rules
//!
//! - **Judged**: each committed `activated` decision that left a site
//!   (`from`) on the engine's own initiative: cause `site_down` in the
//!   witness's record (`raw.event.activated.cause`), or, where the record
//!   carries no cause, actor `Auto` (`raw.by`). Operator failovers (cause
//!   `operator`), the initial activation and failbacks (cause `failback`,
//!   a return to a healthy home site) are not.
//! - **When**: `t`, the first instant the harness saw the new epoch
//!   committed (an ok read, a lease, an agent serving or running at it: all
//!   on the kernel clock, all after the proposal). The decision's own time
//!   is the proposing leader's wall clock, which a clock fault may have set
//!   anywhere (a witness restarted with its clock ahead, a wall clock
//!   stepped back); it is used only when nothing saw the epoch, and
//!   otherwise only to reach further back: up to `W` before `t`, when it is
//!   earlier than `t`.
//! - **Window**: such a failover is valid only if a *cause* was in force
//!   at some instant of `[t − W, t]` (extended back as above), with
//!   `W = worst_case_failover_ms + SLACK_MS`: detection, lease wait and
//!   election all fit in the worst case, and the slack covers observations
//!   that outlive a heal by a few probe rounds and the time from the
//!   proposal to its first sighting. A fault that began after `t` (beyond
//!   [`CLOCK_TOLERANCE_MS`]) cannot have caused it.
//! - **Causes**: the death of `from` (`site-death` of it, or the
//!   `consul-lies` lie `passing-while-dead` about it: the machines really
//!   died, only Consul denied it), `partition-site` of `from`, and every
//!   network fault whatever its targets (`bridge`, `flapping`,
//!   `isolate-witness`, `isolate-leader`, `one-way`, `loss`, `latency`),
//!   since each can make the witnesses' probes fail.
//! - **Never causes**: the other Consul lies (`services-critical`,
//!   `nodes-failed`: the site ran and answered), kills and pauses of
//!   witnesses or agents, a death or cut-off of the *other* site.
//! - A fault kind this checker does not know is taken as a possible cause,
//!   and noted: a new nemesis must not turn old verdicts false.
//! - A failover whose record says neither cause nor actor is a doubt.
//!
//! A violation names the failover, what the harness's outside probes of
//! the old site's fenced services saw in the window (they answer only
//! while serving), and the faults in force.

use super::{Anomaly, CheckResult, Findings, KnownEpochs, secs};
use crate::history::{DecisionKind, Event, FaultWindow, History};

/// Added to `worst_case_failover_ms` for the detection window.
pub const SLACK_MS: f64 = 5_000.0;
/// How much earlier than its start a fault may still count: the harness's
/// own times are converted between clocks once per run.
pub const CLOCK_TOLERANCE_MS: f64 = 250.0;

/// Faults that can make any site unreachable to the witnesses.
const NETWORK: [&str; 7] = [
    "bridge",
    "flapping",
    "isolate-witness",
    "isolate-leader",
    "one-way",
    "loss",
    "latency",
];
/// Faults that concern one site (their first target).
const SITE_LOSS: [&str; 2] = ["site-death", "partition-site"];
/// Faults that never make a site unreachable.
const NOT_A_LOSS: [&str; 5] = [
    "kill-witness",
    "kill-leader",
    "kill-majority",
    "pause-leader",
    "pause-agent",
];
/// The `consul-lies` lie that comes with a real death.
const DEAD_LIE: &str = "passing-while-dead";

/// What a fault says about the loss of `site`.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Cause,
    NoCause,
    /// A kind this checker does not know.
    Unknown,
}

fn judge(w: &FaultWindow, site: &str) -> Verdict {
    let kind = w.kind.as_str();
    let about_site = w.targets.first().is_some_and(|t| t == site);
    if NETWORK.contains(&kind) {
        Verdict::Cause
    } else if SITE_LOSS.contains(&kind) {
        if about_site {
            Verdict::Cause
        } else {
            Verdict::NoCause
        }
    } else if kind == "consul-lies" {
        let lie = w
            .detail
            .as_deref()
            .and_then(|d| d.split([':', ' ']).next())
            .unwrap_or("");
        if about_site && lie == DEAD_LIE {
            Verdict::Cause
        } else {
            Verdict::NoCause
        }
    } else if NOT_A_LOSS.contains(&kind) {
        Verdict::NoCause
    } else {
        Verdict::Unknown
    }
}

/// Whether an activation was the engine's own failover; `None`: the
/// record cannot tell.
fn automatic(raw: &serde_json::Value) -> Option<bool> {
    match raw["event"]["activated"]["cause"].as_str() {
        Some(cause) => Some(cause == "site_down"),
        None => match &raw["by"] {
            serde_json::Value::String(by) => Some(by == "Auto"),
            serde_json::Value::Object(o) => Some(!o.contains_key("Operator")),
            _ => None,
        },
    }
}

fn describe(w: &FaultWindow) -> String {
    let mut s = w.kind.clone();
    if !w.targets.is_empty() {
        s.push_str(&format!(" [{}]", w.targets.join(", ")));
    }
    if let Some(d) = &w.detail {
        s.push_str(&format!(" ({d})"));
    }
    s
}

pub fn check(h: &History) -> CheckResult {
    let mut f = Findings::new();
    let window = h.meta.worst_case_failover_ms as f64 + SLACK_MS;
    let faults = h.fault_windows();
    let known = KnownEpochs::from_history(h);
    let mut judged = 0;
    for (i, e) in h.events.iter().enumerate() {
        let Event::Decision(d) = e else { continue };
        if d.kind != DecisionKind::Activated {
            continue;
        }
        let (Some(from), Some(to)) = (d.from.as_deref(), d.site.as_deref()) else {
            continue;
        };
        let line = h.line(i);
        let epoch = d.epoch.unwrap_or(0);
        let seen = known.sightings.iter().find(|s| s.epoch >= epoch);
        let (t, start) = match seen {
            Some(s) => (
                s.t_ms,
                s.t_ms - window - (s.t_ms - d.t_ms).clamp(0.0, window),
            ),
            None => (d.t_ms, d.t_ms - window),
        };
        let what = match seen {
            Some(s) => format!(
                "failover from {from} to {to} (epoch {epoch}, first seen committed at {}: {})",
                secs(s.t_ms),
                s.what
            ),
            None => format!(
                "failover from {from} to {to} (epoch {epoch}, proposed at {} by its leader's \
                 clock)",
                secs(d.t_ms)
            ),
        };
        match automatic(&d.raw) {
            Some(true) => {}
            Some(false) => continue,
            None => {
                f.doubt(
                    Anomaly::new(
                        "cause-unrecorded",
                        format!(
                            "the {what} names neither its cause nor its actor, so whether it \
                             was automatic cannot be told"
                        ),
                    )
                    .at(d.t_ms)
                    .lines([line]),
                );
                continue;
            }
        }
        judged += 1;
        let in_force: Vec<&FaultWindow> = faults
            .iter()
            .filter(|w| {
                w.start_ms <= t + CLOCK_TOLERANCE_MS && w.end_ms.is_none_or(|end| end >= start)
            })
            .collect();
        let verdicts: Vec<Verdict> = in_force.iter().map(|w| judge(w, from)).collect();
        // The loss of this very site explains best; any network fault else.
        let causes: Vec<&FaultWindow> = in_force
            .iter()
            .zip(&verdicts)
            .filter(|(_, v)| **v == Verdict::Cause)
            .map(|(w, _)| *w)
            .collect();
        if let Some(w) = causes
            .iter()
            .find(|w| !NETWORK.contains(&w.kind.as_str()))
            .or(causes.first())
        {
            f.note(format!("the {what} answered {}", describe(w)));
            continue;
        }
        if let Some(w) = in_force
            .iter()
            .zip(&verdicts)
            .find(|(_, v)| **v == Verdict::Unknown)
            .map(|(w, _)| w)
        {
            f.note(format!(
                "the {what} came during {}, a fault this checker does not know: taken as its \
                 possible cause",
                describe(w)
            ));
            continue;
        }
        let (mut up, mut probes) = (0, 0);
        let mut probe_lines = Vec::new();
        for (j, e) in h.events.iter().enumerate() {
            if let Event::Probe(p) = e
                && p.site == from
                && p.t_ms >= start
                && p.t_ms <= t
            {
                probes += 1;
                if p.up {
                    up += 1;
                } else {
                    probe_lines.push(h.line(j));
                }
            }
        }
        let seen = if probes == 0 {
            "while no outside probe of it was recorded".to_string()
        } else if up == probes {
            format!("while its services answered every probe ({probes} outside probes)")
        } else {
            format!(
                "while its services answered {up} of {probes} outside probes (a standby or \
                 fenced service does not answer)"
            )
        };
        let faults_text = if in_force.is_empty() {
            "none".to_string()
        } else {
            in_force
                .iter()
                .map(|w| describe(w))
                .collect::<Vec<_>>()
                .join("; ")
        };
        f.violation(
            Anomaly::new(
                "failover-without-loss",
                format!(
                    "{what}: failed over from {from} {seen}; faults in force in the {:.0} ms \
                     before: {faults_text}",
                    window
                ),
            )
            .at(start.max(0.0))
            .until(t)
            .lines(std::iter::once(line).chain(probe_lines.into_iter().take(5))),
        );
    }
    f.note(format!(
        "{judged} automatic failover(s) judged against a window of {window:.0} ms"
    ));
    f.finish(format!(
        "every automatic failover ({judged}) followed a real loss of the site it left"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::Valid;
    use crate::checker::build::*;
    use crate::history::{Ms, NemesisAction, ServingState};

    /// The test meta's worst case plus the slack.
    fn window() -> f64 {
        crate::history::tests::meta().worst_case_failover_ms as f64 + SLACK_MS
    }

    /// An activation leaving `from`, as `witnessctl history` records it.
    fn activation(t: Ms, epoch: u64, from: &str, to: &str, cause: &str, by: &str) -> Event {
        let by = match by {
            "Auto" => serde_json::json!("Auto"),
            who => serde_json::json!({ "Operator": who }),
        };
        let mut e = activated(t, 10 + epoch, epoch, to);
        if let Event::Decision(d) = &mut e {
            d.from = Some(from.to_string());
            d.raw = serde_json::json!({
                "log_index": 10 + epoch, "at_unix_ms": 0, "by": by, "reason": "",
                "event": {"activated": {"epoch": epoch, "from": from, "to": to,
                          "cause": cause, "evidence": {}}}
            });
        }
        e
    }

    fn auto(t: Ms, from: &str, to: &str) -> Event {
        activation(t, 2, from, to, "site_down", "Auto")
    }

    /// A fault from `t0` to `t1` with `detail`.
    fn fault(t0: Ms, t1: Ms, kind: &str, targets: &[&str], detail: Option<&str>) -> Vec<Event> {
        [(t0, NemesisAction::Start), (t1, NemesisAction::Stop)]
            .into_iter()
            .map(|(t, action)| match nemesis(t, action, kind, targets) {
                Event::Nemesis(mut n) => {
                    n.detail = detail.map(str::to_string);
                    Event::Nemesis(n)
                }
                other => other,
            })
            .collect()
    }

    /// Consul's lie `word` about dc-a, from 10 s to 24 s.
    fn lie(word: &str) -> Vec<Event> {
        fault(
            10_000.0,
            24_000.0,
            "consul-lies",
            &["dc-a"],
            Some(&format!("{word}: Consul reports dc-a's …")),
        )
    }

    fn initial() -> Vec<Event> {
        vec![activated(0.0, 1, 1, "dc-a")]
    }

    /// Failovers that answer a loss of the site they left: its death, its
    /// cut-off, a network fault, a death Consul denied, a fault that ended
    /// just inside the window; operator failovers are not judged.
    #[test]
    fn failovers_after_a_real_loss_hold() {
        let cases: Vec<(&str, Vec<Vec<Event>>)> = vec![
            (
                "site-death",
                vec![
                    fault(10_000.0, 25_000.0, "site-death", &["dc-a"], None),
                    vec![auto(18_000.0, "dc-a", "dc-b")],
                ],
            ),
            (
                "partition-site",
                vec![
                    fault(10_000.0, 16_000.0, "partition-site", &["dc-a"], None),
                    vec![auto(17_000.0, "dc-a", "dc-b")],
                ],
            ),
            (
                "bridge, whatever its targets",
                vec![
                    fault(10_000.0, 16_000.0, "bridge", &["dc-a", "dc-b"], None),
                    vec![auto(15_000.0, "dc-b", "dc-a")],
                ],
            ),
            (
                "loss on the witnesses",
                vec![
                    fault(10_000.0, 16_000.0, "loss", &["n1", "n2", "n3"], None),
                    vec![auto(15_000.0, "dc-a", "dc-b")],
                ],
            ),
            (
                "a death Consul denied",
                vec![
                    fault(
                        10_000.0,
                        24_000.0,
                        "consul-lies",
                        &["dc-a"],
                        Some("passing-while-dead: dc-a's machines die while …"),
                    ),
                    vec![auto(20_000.0, "dc-a", "dc-b")],
                ],
            ),
            (
                "a heal just inside the window",
                vec![
                    fault(1_000.0, 2_000.0, "site-death", &["dc-a"], None),
                    vec![auto(2_000.0 + window() - 1.0, "dc-a", "dc-b")],
                ],
            ),
            (
                "an operator failover during a lie",
                vec![
                    fault(
                        10_000.0,
                        24_000.0,
                        "consul-lies",
                        &["dc-a"],
                        Some("services-critical: …"),
                    ),
                    vec![activation(20_000.0, 2, "dc-a", "dc-b", "operator", "ops")],
                ],
            ),
        ];
        for (name, mut groups) in cases {
            groups.insert(0, initial());
            let r = check(&history(groups));
            assert_eq!(r.valid, Valid::True, "{name}: {r:?}");
        }
    }

    /// Of several causes in force, the loss of the site itself is named.
    #[test]
    fn the_site_s_own_loss_is_named_first() {
        let r = check(&history(vec![
            initial(),
            fault(1_000.0, 4_000.0, "flapping", &["dc-a", "dc-b"], None),
            fault(6_000.0, 12_000.0, "partition-site", &["dc-a"], None),
            vec![auto(11_000.0, "dc-a", "dc-b")],
        ]));
        assert_eq!(r.valid, Valid::True, "{r:?}");
        assert!(
            r.notes[0].ends_with("answered partition-site [dc-a]"),
            "{:?}",
            r.notes
        );
    }

    /// Failovers with no loss behind them: during a lie that the site is
    /// critical or failed, during kills and pauses only, during nothing at
    /// all, after a fault long over, before the fault began, after the
    /// death of the other site.
    #[test]
    fn failovers_without_a_loss_are_violations() {
        let cases: Vec<(&str, Vec<Vec<Event>>, &str)> = vec![
            (
                "services critical",
                vec![
                    lie("services-critical"),
                    vec![auto(20_000.0, "dc-a", "dc-b")],
                ],
                "faults in force in the 13000 ms before: consul-lies [dc-a] (services-critical",
            ),
            (
                "nodes failed",
                vec![lie("nodes-failed"), vec![auto(20_000.0, "dc-a", "dc-b")]],
                "consul-lies [dc-a] (nodes-failed",
            ),
            (
                "kills and pauses",
                vec![
                    fault(10_000.0, 14_000.0, "kill-leader", &["n1"], None),
                    fault(15_000.0, 19_000.0, "pause-agent", &["mbox-a"], None),
                    vec![auto(20_000.0, "dc-a", "dc-b")],
                ],
                "kill-leader [n1]; pause-agent [mbox-a]",
            ),
            (
                "no fault",
                vec![vec![auto(20_000.0, "dc-a", "dc-b")]],
                "faults in force in the 13000 ms before: none",
            ),
            (
                "a fault long over",
                vec![
                    fault(1_000.0, 2_000.0, "site-death", &["dc-a"], None),
                    vec![auto(2_000.0 + window() + 1.0, "dc-a", "dc-b")],
                ],
                ": none",
            ),
            (
                "a fault that began after",
                vec![
                    fault(21_000.0, 30_000.0, "site-death", &["dc-a"], None),
                    vec![auto(20_000.0, "dc-a", "dc-b")],
                ],
                ": none",
            ),
            (
                "the other site died",
                vec![
                    fault(10_000.0, 25_000.0, "site-death", &["dc-b"], None),
                    vec![auto(18_000.0, "dc-a", "dc-b")],
                ],
                "site-death [dc-b]",
            ),
        ];
        for (name, mut groups, says) in cases {
            groups.insert(0, initial());
            let r = check(&history(groups));
            assert_eq!(r.valid, Valid::False, "{name}: {r:?}");
            let msg = &r.anomalies[0].message;
            assert!(msg.contains("failed over from dc-a"), "{name}: {msg}");
            assert!(msg.contains(says), "{name}: {msg}");
        }
    }

    /// The outside probes of the old site are cited: all up reads as
    /// "answered every probe".
    #[test]
    fn violation_cites_the_outside_probes() {
        let r = check(&history(vec![
            initial(),
            fault(
                10_000.0,
                24_000.0,
                "consul-lies",
                &["dc-a"],
                Some("nodes-failed: …"),
            ),
            vec![
                probe(12_000.0, "dc-a", true),
                probe(15_000.0, "dc-a", true),
                probe(16_000.0, "dc-b", false),
                auto(20_000.0, "dc-a", "dc-b"),
            ],
        ]));
        assert_eq!(r.valid, Valid::False);
        let msg = &r.anomalies[0].message;
        assert!(
            msg.contains(
                "failed over from dc-a while its services answered every probe (2 outside probes)"
            ),
            "{msg}"
        );
    }

    /// A record without cause or actor is a doubt; without a cause, the
    /// actor decides; an unknown fault kind is given the benefit of the
    /// doubt, and noted.
    #[test]
    fn unclear_records_and_unknown_faults() {
        let mut bare = activated(20_000.0, 12, 2, "dc-b");
        if let Event::Decision(d) = &mut bare {
            d.from = Some("dc-a".into());
        }
        let r = check(&history(vec![initial(), vec![bare.clone()]]));
        assert_eq!(r.valid, Valid::Unknown, "{r:?}");

        let mut by_operator = bare.clone();
        if let Event::Decision(d) = &mut by_operator {
            d.raw = serde_json::json!({"by": {"Operator": "ops"}, "event": {"activated": {}}});
        }
        let r = check(&history(vec![initial(), vec![by_operator]]));
        assert_eq!(r.valid, Valid::True, "{r:?}");

        let mut by_auto = bare;
        if let Event::Decision(d) = &mut by_auto {
            d.raw = serde_json::json!({"by": "Auto", "event": {"activated": {}}});
        }
        let r = check(&history(vec![initial(), vec![by_auto.clone()]]));
        assert_eq!(r.valid, Valid::False, "{r:?}");

        let r = check(&history(vec![
            initial(),
            fault(10_000.0, 19_000.0, "clock-bump", &["n1"], None),
            vec![by_auto],
        ]));
        assert_eq!(r.valid, Valid::True, "{r:?}");
        assert!(
            r.notes.iter().any(|n| n.contains("does not know")),
            "{:?}",
            r.notes
        );
    }

    /// The proposing leader's clock may be anywhere (restarted ahead, its
    /// wall clock stepped back): the failover is timed by its first
    /// sighting on the kernel clock, so a real loss is still found, and a
    /// lie is still no cause.
    #[test]
    fn failovers_are_timed_by_their_first_sighting() {
        let seen = |t: Ms| serving(t, "mbox-b", "dc-b", ServingState::Serving, 2);
        for skew in [20_000.0, -300_000.0, 0.0] {
            let r = check(&history(vec![
                initial(),
                fault(10_000.0, 16_000.0, "partition-site", &["dc-a"], None),
                vec![auto(17_000.0 + skew, "dc-a", "dc-b"), seen(17_500.0)],
            ]));
            assert_eq!(r.valid, Valid::True, "skew {skew}: {r:?}");

            let r = check(&history(vec![
                initial(),
                lie("services-critical"),
                vec![auto(17_000.0 + skew, "dc-a", "dc-b"), seen(17_500.0)],
            ]));
            assert_eq!(r.valid, Valid::False, "skew {skew}: {r:?}");
            let text = &r.anomalies[0].message;
            assert!(text.contains("first seen committed at 17.500s"), "{text}");
        }
        // A sighting long after the cause: the decision's own earlier time
        // reaches back to it, by at most the window.
        let r = check(&history(vec![
            initial(),
            fault(10_000.0, 16_000.0, "partition-site", &["dc-a"], None),
            vec![auto(17_000.0, "dc-a", "dc-b"), seen(17_000.0 + window())],
        ]));
        assert_eq!(r.valid, Valid::True, "{r:?}");
    }
}

//! Checkers: pure functions from a [`History`] to a [`CheckResult`].
//!
//! Each checker judges one property of DESIGN.md §6 on what the run
//! *observed*, never on what the system says about itself, and answers
//! `true` (holds), `false` (a violation, with the events that show it) or
//! `unknown` (the history cannot tell: too short, a source missing, a
//! bound not reached). Unknown is never used to hide a violation: a checker
//! that found one says `false` whatever else it could not judge.
//!
//! | name | property | module |
//! | --- | --- | --- |
//! | `split_brain` | never two sites serving at one instant: agents' serving logs, outside probes, BIRD's best path | [`split_brain`] |
//! | `leases` | activate hooks and directives run only inside a valid lease | [`leases`] |
//! | `epochs` | epochs unique, increasing in commit order and real time, one site per epoch | [`epochs`] |
//! | `linearizable` | the verdict register is linearizable | [`linearizable`] |
//! | `directives` | every planned directive ran, never twice at once, never at a stale epoch | [`directives`] |
//! | `lost_decisions` | every acknowledged decision is in the final committed history | [`lost`] |
//! | `liveness` | after the heal the verdict converges within a bound; a dead site is replaced in time | [`liveness`] |
//! | `failover_cause` | every automatic failover followed a real loss of the site it left (its death, its cut-off, a network fault), never a Consul lie alone | [`failover_cause`] |
//! | `node_logs` | no panic or invariant violation in any node log | [`logs`] |
//!
//! # Observed times
//!
//! Several checkers need "when was epoch `e` known to be committed". A
//! decision's `t_ms` is the proposer's clock at *proposal*, which may be
//! long before the commit under faults, so it is never used for that.
//! Instead [`KnownEpochs`] takes the earliest evidence that cannot exist
//! before the commit: an ok read or failover reporting the epoch
//! (completion time), an agent granted a lease at it (grant arrival), an
//! agent logging a state at it, an agent starting a run of it. This is
//! later than the real commit, so rules of the form "after `e` was
//! committed, X must not happen" judged from it never accuse wrongly; they
//! only leave a short window unjudged.

use std::collections::BTreeMap;

use serde::{Serialize, Serializer};

use crate::history::{Event, History, Ms, OpType};

pub mod directives;
pub mod epochs;
pub mod failover_cause;
pub mod leases;
pub mod linearizable;
pub mod liveness;
pub mod logs;
pub mod lost;
pub mod split_brain;

pub use logs::NodeLog;

/// Most anomalies one checker reports; the rest are counted.
pub const MAX_ANOMALIES: usize = 200;

/// A checker's verdict on its property.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Valid {
    True,
    False,
    Unknown,
}

impl Valid {
    /// Combine two verdicts: false wins over unknown, unknown over true.
    pub fn and(self, other: Valid) -> Valid {
        match (self, other) {
            (Valid::False, _) | (_, Valid::False) => Valid::False,
            (Valid::Unknown, _) | (_, Valid::Unknown) => Valid::Unknown,
            _ => Valid::True,
        }
    }

    /// `true`, `false` or `unknown`.
    pub fn name(self) -> &'static str {
        match self {
            Valid::True => "true",
            Valid::False => "false",
            Valid::Unknown => "unknown",
        }
    }
}

/// As Jepsen writes `:valid?`: JSON `true`, `false` or `"unknown"`.
impl Serialize for Valid {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Valid::True => s.serialize_bool(true),
            Valid::False => s.serialize_bool(false),
            Valid::Unknown => s.serialize_str("unknown"),
        }
    }
}

/// One thing a checker found wrong, with when and which history lines
/// show it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Anomaly {
    /// Short machine name, e.g. `agents-overlap`.
    pub kind: String,
    /// What happened, in words a person on call can act on.
    pub message: String,
    /// When it started (BOOTTIME ms), if it has a time.
    pub at_ms: Option<Ms>,
    /// When it ended, if it is an interval.
    pub until_ms: Option<Ms>,
    /// History lines of the events involved (1-based).
    pub lines: Vec<usize>,
}

impl Anomaly {
    pub fn new(kind: &str, message: String) -> Anomaly {
        Anomaly {
            kind: kind.to_string(),
            message,
            at_ms: None,
            until_ms: None,
            lines: Vec::new(),
        }
    }
    pub fn at(mut self, t: Ms) -> Anomaly {
        self.at_ms = Some(t);
        self
    }
    pub fn until(mut self, t: Ms) -> Anomaly {
        self.until_ms = Some(t);
        self
    }
    pub fn lines(mut self, lines: impl IntoIterator<Item = usize>) -> Anomaly {
        self.lines = lines.into_iter().filter(|&l| l > 0).collect();
        self.lines.sort_unstable();
        self.lines.dedup();
        self
    }
}

/// What a checker concluded.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CheckResult {
    pub valid: Valid,
    /// One line for the summary.
    pub summary: String,
    /// Violations (when `false`), or what could not be judged (`unknown`).
    pub anomalies: Vec<Anomaly>,
    /// Anomalies beyond [`MAX_ANOMALIES`], counted but not listed.
    #[serde(skip_serializing_if = "is_zero")]
    pub anomalies_omitted: usize,
    /// Context: what was checked, what was skipped and why.
    pub notes: Vec<String>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Builds a [`CheckResult`]: violations make it false, doubts unknown.
#[derive(Debug, Default)]
pub struct Findings {
    violations: Vec<Anomaly>,
    doubts: Vec<Anomaly>,
    notes: Vec<String>,
}

impl Findings {
    pub fn new() -> Findings {
        Findings::default()
    }
    /// A violation of the property.
    pub fn violation(&mut self, a: Anomaly) {
        self.violations.push(a);
    }
    /// Something that cannot be judged: the result is unknown unless a
    /// violation is also found.
    pub fn doubt(&mut self, a: Anomaly) {
        self.doubts.push(a);
    }
    pub fn note(&mut self, n: impl Into<String>) {
        self.notes.push(n.into());
    }

    /// The result; `ok` is the summary when everything held.
    pub fn finish(self, ok: impl Into<String>) -> CheckResult {
        let (valid, summary, mut anomalies) = if !self.violations.is_empty() {
            let first = self.violations[0].message.clone();
            let n = self.violations.len();
            let summary = if n == 1 {
                first
            } else {
                format!("{n} violations; first: {first}")
            };
            (Valid::False, summary, self.violations)
        } else if !self.doubts.is_empty() {
            let first = self.doubts[0].message.clone();
            (Valid::Unknown, format!("cannot tell: {first}"), self.doubts)
        } else {
            (Valid::True, ok.into(), Vec::new())
        };
        anomalies.sort_by(|a, b| {
            a.at_ms
                .unwrap_or(f64::INFINITY)
                .total_cmp(&b.at_ms.unwrap_or(f64::INFINITY))
        });
        let omitted = anomalies.len().saturating_sub(MAX_ANOMALIES);
        anomalies.truncate(MAX_ANOMALIES);
        CheckResult {
            valid,
            summary,
            anomalies,
            anomalies_omitted: omitted,
            notes: self.notes,
        }
    }
}

/// Every checker, by name, in report order.
pub fn check_all(h: &History, logs: &[NodeLog]) -> Vec<(&'static str, CheckResult)> {
    vec![
        ("split_brain", split_brain::check(h)),
        ("leases", leases::check(h)),
        ("epochs", epochs::check(h)),
        ("linearizable", linearizable::check(h)),
        ("directives", directives::check(h)),
        ("lost_decisions", lost::check(h)),
        ("liveness", liveness::check(h)),
        ("failover_cause", failover_cause::check(h)),
        ("node_logs", logs::check(h, logs)),
    ]
}

/// One piece of evidence that an epoch was committed.
#[derive(Clone, Debug, PartialEq)]
pub struct Sighting {
    /// When the evidence existed (BOOTTIME ms).
    pub t_ms: Ms,
    pub epoch: u64,
    /// The site it names, when the evidence names one.
    pub site: Option<String>,
    /// The history line.
    pub line: usize,
    /// What it was, for messages.
    pub what: String,
}

/// When each epoch was first known to be committed (see the module doc).
#[derive(Clone, Debug, Default)]
pub struct KnownEpochs {
    /// Sorted by time.
    pub sightings: Vec<Sighting>,
    /// Running maximum of `sightings[..=i]`'s epochs and the index of the
    /// sighting that set it.
    prefix_max: Vec<(u64, usize)>,
}

impl KnownEpochs {
    pub fn from_history(h: &History) -> KnownEpochs {
        let mut s = Vec::new();
        for c in h.completed_ops() {
            let Some(done) = c.complete else { continue };
            if done.kind != OpType::Ok {
                continue;
            }
            let Some(epoch) = done.epoch() else { continue };
            let site = match done.verdict() {
                Some(v) => v.active_site.clone(),
                None => c.invoke.to.clone(),
            };
            s.push(Sighting {
                t_ms: done.t_ms,
                epoch,
                site,
                line: c.lines.last().copied().unwrap_or(0),
                what: format!("ok {} by process {}", c.f(), done.process),
            });
        }
        for (i, e) in h.events.iter().enumerate() {
            let line = h.line(i);
            let (t, epoch, what) = match e {
                Event::Lease(l) => (l.t_ms, l.epoch, format!("lease to {}", l.agent)),
                Event::Serving(v) if v.epoch > 0 => {
                    (v.t_ms, v.epoch, format!("{} {:?}", v.agent, v.state))
                }
                Event::Run(r) => (r.t_ms, r.epoch, format!("{} ran {}", r.agent, r.name)),
                _ => continue,
            };
            // An agent's site is its own, not necessarily the active one
            // (a standby agent logs the epoch too), so no site here.
            s.push(Sighting {
                t_ms: t,
                epoch,
                site: None,
                line,
                what,
            });
        }
        s.sort_by(|a, b| a.t_ms.total_cmp(&b.t_ms));
        let mut prefix_max = Vec::with_capacity(s.len());
        let mut best = (0u64, usize::MAX);
        for (i, x) in s.iter().enumerate() {
            if best.1 == usize::MAX || x.epoch > best.0 {
                best = (x.epoch, i);
            }
            prefix_max.push(best);
        }
        KnownEpochs {
            sightings: s,
            prefix_max,
        }
    }

    /// The newest epoch known committed at or before `t`, with the
    /// sighting that showed it.
    pub fn newest_at(&self, t: Ms) -> Option<(u64, &Sighting)> {
        let n = self.sightings.partition_point(|s| s.t_ms <= t);
        if n == 0 {
            return None;
        }
        let (epoch, i) = self.prefix_max[n - 1];
        Some((epoch, &self.sightings[i]))
    }

    /// The first time an epoch above `epoch` was known committed.
    pub fn first_newer_than(&self, epoch: u64) -> Option<&Sighting> {
        self.sightings.iter().find(|s| s.epoch > epoch)
    }
}

/// The site each epoch activated, from the committed decisions.
pub fn activated_sites(h: &History) -> BTreeMap<u64, (String, usize)> {
    let mut out = BTreeMap::new();
    for (line, d) in h.decisions() {
        if let (Some(e), Some(site)) = (d.epoch, &d.site) {
            out.entry(e).or_insert_with(|| (site.clone(), line));
        }
    }
    out
}

/// `t` as seconds for messages (`12.345s`).
pub fn secs(t: Ms) -> String {
    format!("{:.3}s", t / 1000.0)
}

#[cfg(test)]
pub(crate) mod build {
    //! Small constructors for hand-made histories.

    use crate::history::*;

    pub fn read(t0: Ms, t1: Ms, p: u64, node: &str, site: &str, epoch: u64) -> Vec<Event> {
        read_v(t0, t1, p, node, site, epoch, Mode::Auto)
    }

    pub fn read_v(
        t0: Ms,
        t1: Ms,
        p: u64,
        node: &str,
        site: &str,
        epoch: u64,
        mode: Mode,
    ) -> Vec<Event> {
        let v = Verdict {
            active_site: Some(site.to_string()),
            epoch,
            mode,
        };
        vec![
            op(t0, p, OpType::Invoke, OpF::Read, node, None, None),
            op(
                t1,
                p,
                OpType::Ok,
                OpF::Read,
                node,
                None,
                Some(OpValue::Verdict(v)),
            ),
        ]
    }

    pub fn failover(
        t0: Ms,
        t1: Ms,
        p: u64,
        to: &str,
        done: OpType,
        epoch: Option<u64>,
    ) -> Vec<Event> {
        vec![
            op(t0, p, OpType::Invoke, OpF::Failover, "w1", Some(to), None),
            op(
                t1,
                p,
                done,
                OpF::Failover,
                "w1",
                Some(to),
                epoch.map(OpValue::Epoch),
            ),
        ]
    }

    pub fn mode_op(t0: Ms, t1: Ms, p: u64, f: OpF, done: OpType) -> Vec<Event> {
        vec![
            op(t0, p, OpType::Invoke, f, "w1", None, None),
            op(t1, p, done, f, "w1", None, None),
        ]
    }

    pub fn op(
        t: Ms,
        p: u64,
        kind: OpType,
        f: OpF,
        node: &str,
        to: Option<&str>,
        value: Option<OpValue>,
    ) -> Event {
        Event::Op(Op {
            t_ms: t,
            process: p,
            kind,
            f,
            node: Some(node.to_string()),
            to: to.map(str::to_string),
            value,
            error: None,
        })
    }

    pub fn activated(t: Ms, index: u64, epoch: u64, site: &str) -> Event {
        Event::Decision(Decision {
            t_ms: t,
            at_unix_ms: None,
            log_index: index,
            kind: DecisionKind::Activated,
            epoch: Some(epoch),
            site: Some(site.to_string()),
            from: None,
            id: None,
            state: None,
            agent: None,
            directives: vec![],
            raw: serde_json::Value::Null,
        })
    }

    pub fn activated_with(t: Ms, index: u64, epoch: u64, site: &str, directives: &[&str]) -> Event {
        let mut e = activated(t, index, epoch, site);
        if let Event::Decision(d) = &mut e {
            d.directives = directives
                .iter()
                .map(|n| PlannedDirective {
                    name: n.to_string(),
                    site: Some(site.to_string()),
                    role: None,
                    best_effort: false,
                })
                .collect();
        }
        e
    }

    pub fn mode_decision(t: Ms, index: u64, kind: DecisionKind) -> Event {
        let mut e = activated(t, index, 0, "x");
        if let Event::Decision(d) = &mut e {
            d.kind = kind;
            d.epoch = None;
            d.site = None;
        }
        e
    }

    pub fn serving(t: Ms, agent: &str, site: &str, state: ServingState, epoch: u64) -> Event {
        Event::Serving(ServingChange {
            t_ms: t,
            agent: agent.to_string(),
            site: site.to_string(),
            role: "mailstore".into(),
            state,
            epoch,
            reason: String::new(),
            at_unix_ms: None,
        })
    }

    pub fn lease(t: Ms, agent: &str, site: &str, epoch: u64, sent: Ms, ttl_ms: u64) -> Event {
        Event::Lease(LeaseGrant {
            t_ms: t,
            agent: agent.to_string(),
            site: site.to_string(),
            epoch,
            sent_t_ms: sent,
            ttl_ms,
        })
    }

    pub fn run(
        t: Ms,
        end: Option<Ms>,
        agent: &str,
        site: &str,
        kind: RunKind,
        name: &str,
        epoch: u64,
    ) -> Event {
        Event::Run(Run {
            t_ms: t,
            end_t_ms: end,
            agent: agent.to_string(),
            site: site.to_string(),
            kind,
            name: name.to_string(),
            id: None,
            epoch,
            best_effort: false,
            outcome: Some("ok".into()),
        })
    }

    pub fn probe(t: Ms, site: &str, up: bool) -> Event {
        Event::Probe(Probe {
            t_ms: t,
            site: site.to_string(),
            up,
            target: None,
        })
    }

    pub fn route(t: Ms, site: Option<&str>, epoch: Option<u64>) -> Event {
        Event::Route(RouteSample {
            t_ms: t,
            site: site.map(str::to_string),
            epoch,
        })
    }

    pub fn nemesis(t: Ms, action: NemesisAction, kind: &str, targets: &[&str]) -> Event {
        Event::Nemesis(NemesisEvent {
            t_ms: t,
            action,
            kind: kind.to_string(),
            targets: targets.iter().map(|s| s.to_string()).collect(),
            id: None,
            detail: None,
        })
    }

    pub fn phase(t: Ms, phase: Phase) -> Event {
        Event::Phase(PhaseMark { t_ms: t, phase })
    }

    /// A history of these event groups with the default test meta.
    pub fn history(groups: Vec<Vec<Event>>) -> History {
        History::new(
            crate::history::tests::meta(),
            groups.into_iter().flatten().collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Jepsen's merge: false over unknown over true; JSON as Jepsen writes it.
    #[test]
    fn valid_merges_and_serialises() {
        assert_eq!(Valid::True.and(Valid::Unknown), Valid::Unknown);
        assert_eq!(Valid::Unknown.and(Valid::False), Valid::False);
        assert_eq!(Valid::True.and(Valid::True), Valid::True);
        let json = serde_json::to_string(&[Valid::True, Valid::False, Valid::Unknown])
            .expect("serialises");
        assert_eq!(json, r#"[true,false,"unknown"]"#);
    }

    /// A violation outranks a doubt; anomalies beyond the cap are counted.
    #[test]
    fn findings_rank_and_cap() {
        let mut f = Findings::new();
        f.doubt(Anomaly::new("d", "unsure".into()));
        for i in 0..MAX_ANOMALIES + 5 {
            f.violation(Anomaly::new("v", format!("bad {i}")).at(i as f64));
        }
        let r = f.finish("fine");
        assert_eq!(r.valid, Valid::False);
        assert_eq!(r.anomalies.len(), MAX_ANOMALIES);
        assert_eq!(r.anomalies_omitted, 5);
        assert!(r.summary.starts_with("205 violations"), "{}", r.summary);
    }
}

//! After the run: the agents' own evidence and the committed history,
//! turned into history events.
//!
//! - An agent's serving log (`state_log`): state lines become `serving`
//!   events, `lease` lines `lease` events, `run` start/end pairs of the
//!   `activate` hook `run` events (a start without an end: killed).
//! - The fake Carbonio CLI's log of each mailstore agent (its own file):
//!   each call with a directive id becomes a directive `run`, on
//!   `CLOCK_BOOTTIME`, started and ended as the command itself saw it.
//! - `witnessctl history --output json --limit 0`: every committed record
//!   becomes a `decision`; an Activate's planned directives come from
//!   `witnessctl directives list --all`.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use super::operator::Ctl;
use crate::history::{
    Decision, DecisionKind, Event, LeaseGrant, PlannedDirective, Run, RunKind, ServingChange,
    ServingState,
};

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A number that may be carried as a decimal string.
fn num(v: &Value) -> Option<f64> {
    v.as_f64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

/// Events from one agent's serving log; `real` maps a time the agent
/// logged on its own clock to the kernel's (the identity unless its clock
/// was skewed).
pub fn serving_log(
    path: &Path,
    agent: &str,
    site: &str,
    role: &str,
    real: &dyn Fn(f64) -> f64,
) -> Vec<Event> {
    let mut out = Vec::new();
    // (name, epoch) -> the open start.
    let mut open: BTreeMap<(String, u64), usize> = BTreeMap::new();
    for v in lines(path) {
        let Some(t_ms) = num(&v["boottime_ms"]).map(real) else {
            continue;
        };
        let epoch = v["epoch"].as_u64().unwrap_or(0);
        match v["event"].as_str() {
            None => {
                let state = match v["state"].as_str() {
                    Some("starting") => ServingState::Starting,
                    Some("standby") => ServingState::Standby,
                    Some("serving") => ServingState::Serving,
                    Some("fenced") => ServingState::Fenced,
                    _ => continue,
                };
                out.push(Event::Serving(ServingChange {
                    t_ms,
                    agent: agent.into(),
                    site: site.into(),
                    role: role.into(),
                    state,
                    epoch,
                    reason: v["reason"].as_str().unwrap_or_default().into(),
                    at_unix_ms: v["at_unix_ms"].as_u64(),
                }));
            }
            Some("lease") => {
                let (Some(sent), Some(ttl)) = (num(&v["sent_boottime_ms"]), v["ttl_ms"].as_u64())
                else {
                    continue;
                };
                out.push(Event::Lease(LeaseGrant {
                    t_ms,
                    agent: agent.into(),
                    site: site.into(),
                    epoch,
                    sent_t_ms: real(sent),
                    ttl_ms: ttl,
                }));
            }
            Some("run") => {
                let name = v["name"].as_str().unwrap_or("activate").to_string();
                if v["phase"] == "start" {
                    out.push(Event::Run(Run {
                        t_ms,
                        end_t_ms: None,
                        agent: agent.into(),
                        site: site.into(),
                        kind: RunKind::ActivateHook,
                        name: name.clone(),
                        id: None,
                        epoch,
                        best_effort: false,
                        outcome: None,
                    }));
                    open.insert((name, epoch), out.len() - 1);
                } else if let Some(i) = open.remove(&(name, epoch))
                    && let Event::Run(r) = &mut out[i]
                {
                    r.end_t_ms = Some(t_ms);
                    r.outcome = Some(if v["ok"] == true { "ok" } else { "failed" }.into());
                }
            }
            Some(_) => {}
        }
    }
    out
}

/// Where an agent's own clock, as its serving log shows it, stepped back
/// by more than 50 ms within one life of the process (a `starting` line
/// begins a life), or a grant arrived before its request was sent: the
/// product's clocks are monotonic, so only a broken clock injection can do
/// that. (A request's send time may precede earlier lines: a grant that
/// arrives after the agent fenced was asked for before.)
pub fn clock_glitch(path: &Path) -> Option<String> {
    let mut last: Option<f64> = None;
    for (i, v) in lines(path).iter().enumerate() {
        if v["state"] == "starting" {
            last = None;
        }
        let Some(t) = num(&v["boottime_ms"]) else {
            continue;
        };
        let back = match (last, num(&v["sent_boottime_ms"])) {
            (_, Some(sent)) if sent > t + 50.0 => Some(format!(
                "a grant arrived at {t:.1} ms, before its request was sent at {sent:.1} ms"
            )),
            (Some(prev), _) if t < prev - 50.0 => {
                Some(format!("its clock read {t:.1} ms after {prev:.1} ms"))
            }
            _ => None,
        };
        if let Some(what) = back {
            return Some(format!("{what} (line {} of {})", i + 1, path.display()));
        }
        last = Some(last.map_or(t, |p| p.max(t)));
    }
    None
}

/// Directive runs from one agent's fake Carbonio log; `best_effort` by
/// directive id.
pub fn carbonio_log(
    path: &Path,
    agent: &str,
    site: &str,
    best_effort: &BTreeMap<String, bool>,
) -> Vec<Event> {
    let all = lines(path);
    let mut out = Vec::new();
    for v in all.iter().filter(|v| v["event"] == "start") {
        let Some(id) = v["directive_id"].as_str() else {
            continue;
        };
        let Some(start_ns) = num(&v["boottime_ns"]) else {
            continue;
        };
        let pid = &v["pid"];
        let end = all
            .iter()
            .find(|e| e["event"] == "end" && &e["pid"] == pid && e["directive_id"] == id)
            .and_then(|e| num(&e["boottime_ns"]));
        let epoch = num(&v["epoch"])
            .map(|e| e as u64)
            .or_else(|| id.split('/').next().and_then(|e| e.parse().ok()))
            .unwrap_or(0);
        out.push(Event::Run(Run {
            t_ms: start_ns / 1e6,
            end_t_ms: end.map(|ns| ns / 1e6),
            agent: agent.into(),
            site: site.into(),
            kind: RunKind::Directive,
            name: id.rsplit('/').next().unwrap_or(id).to_string(),
            id: Some(id.to_string()),
            epoch,
            best_effort: best_effort.get(id).copied().unwrap_or(false),
            outcome: end.map(|_| "ended".to_string()),
        }));
    }
    out
}

/// Every directive of every kept epoch, from `witnessctl directives list
/// --all`: (id, epoch, planned directive).
pub fn directives(ctl: &Ctl) -> Vec<(String, u64, PlannedDirective)> {
    let (code, out, err) = ctl.run(&["directives", "list", "--all"], "5s");
    if code != Some(0) {
        eprintln!("jepsen: directives list: {}", err.trim());
        return Vec::new();
    }
    let v: Value = serde_json::from_str(&out).unwrap_or_default();
    v["directives"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| {
            let name = d["name"].as_str()?.to_string();
            let epoch = d["epoch"].as_u64()?;
            let id = d["id"]
                .as_str()
                .map_or_else(|| format!("{epoch}/{name}"), str::to_string);
            Some((
                id,
                epoch,
                PlannedDirective {
                    name,
                    site: d["site"].as_str().map(str::to_string),
                    role: d["role"].as_str().map(str::to_string),
                    best_effort: d["best_effort"].as_bool().unwrap_or(false),
                },
            ))
        })
        .collect()
}

/// The committed history as decisions, or the error text.
pub fn decisions(
    ctl: &Ctl,
    unix_minus_boot_ms: f64,
    planned: &[(String, u64, PlannedDirective)],
) -> Result<Vec<Event>, String> {
    let (code, out, err) = ctl.run(&["history", "--limit", "0"], "5s");
    if code != Some(0) {
        return Err(format!("witnessctl history: {}", err.trim()));
    }
    let records: Vec<Value> =
        serde_json::from_str(&out).map_err(|e| format!("witnessctl history output: {e}"))?;
    let mut events = Vec::new();
    for raw in records {
        let mut d = Decision::from_record(raw, unix_minus_boot_ms)?;
        if d.kind == DecisionKind::Activated
            && let Some(epoch) = d.epoch
        {
            d.directives = planned
                .iter()
                .filter(|(_, e, _)| *e == epoch)
                .map(|(_, _, p)| p.clone())
                .collect();
        }
        events.push(Event::Decision(d));
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{History, Meta};
    use crate::runner::recorder::Recorder;

    fn meta() -> Meta {
        Meta {
            t_ms: 0.0,
            name: "t".into(),
            seed: 1,
            sites: vec!["dc-a".into(), "dc-b".into()],
            nodes: vec!["n1".into(), "n2".into(), "n3".into()],
            agents: Vec::new(),
            lease_ttl_ms: 3000,
            max_drift: 0.01,
            margin_ms: 1000,
            worst_case_failover_ms: 8000,
            convergence_bound_ms: 20000,
            route_grace_ms: 2000,
            probe_interval_ms: Some(200),
            logs: Vec::new(),
        }
    }

    /// An agent's serving log (state, lease and run lines, as
    /// `witness::agent::serving` writes them) and a fake Carbonio log
    /// become serving, lease and run events that a written history keeps
    /// and `History::read` accepts.
    #[test]
    fn agent_logs_become_history_events() {
        let dir = tempfile::tempdir().expect("temp dir");
        let state = dir.path().join("state.jsonl");
        std::fs::write(
            &state,
            concat!(
                r#"{"at_unix_ms":1,"boottime_ms":100,"state":"starting","epoch":0,"reason":"start"}"#, "\n",
                r#"{"event":"lease","at_unix_ms":2,"boottime_ms":205.5,"sent_boottime_ms":200.25,"epoch":1,"ttl_ms":3000}"#, "\n",
                r#"{"at_unix_ms":2,"boottime_ms":206,"state":"serving","epoch":1,"reason":"lease granted"}"#, "\n",
                r#"{"event":"run","phase":"start","kind":"activate_hook","name":"activate","epoch":1,"at_unix_ms":3,"boottime_ms":210}"#, "\n",
                r#"{"event":"run","phase":"end","kind":"activate_hook","name":"activate","epoch":1,"ok":true,"at_unix_ms":3,"boottime_ms":230}"#, "\n",
                r#"{"event":"run","phase":"start","kind":"activate_hook","name":"activate","epoch":2,"at_unix_ms":3,"boottime_ms":900}"#, "\n",
                "not json\n",
            ),
        )
        .expect("write");
        let carbonio = dir.path().join("carbonio.jsonl");
        std::fs::write(
            &carbonio,
            concat!(
                r#"{"tool":"carbonio","argv":[],"epoch":"2","directive_id":"2/promote","pid":7,"boottime_ns":"1000000000","event":"start"}"#, "\n",
                r#"{"tool":"carbonio","argv":[],"epoch":"2","directive_id":"2/promote","pid":7,"boottime_ns":"1500000000","event":"end"}"#, "\n",
                r#"{"tool":"zmprov","argv":[],"epoch":null,"directive_id":null,"pid":8,"boottime_ns":"1","event":"start"}"#, "\n",
            ),
        )
        .expect("write");
        let mut events = serving_log(&state, "mbox-a", "dc-a", "mailstore", &|t| t);
        events.extend(carbonio_log(&carbonio, "mbox-b", "dc-b", &BTreeMap::new()));
        assert_eq!(events.len(), 6, "{events:#?}");
        let Event::Lease(l) = &events[1] else {
            panic!("a lease: {:?}", events[1])
        };
        assert_eq!(
            (l.t_ms, l.sent_t_ms, l.epoch, l.ttl_ms),
            (205.5, 200.25, 1, 3000)
        );
        let Event::Run(done) = &events[3] else {
            panic!("a run: {:?}", events[3])
        };
        assert_eq!(done.end_t_ms, Some(230.0));
        assert_eq!(done.outcome.as_deref(), Some("ok"));
        let Event::Run(killed) = &events[4] else {
            panic!("a run: {:?}", events[4])
        };
        assert_eq!((killed.epoch, killed.end_t_ms), (2, None));
        let Event::Run(d) = &events[5] else {
            panic!("a directive run: {:?}", events[5])
        };
        assert_eq!(d.kind, RunKind::Directive);
        assert_eq!(d.id.as_deref(), Some("2/promote"));
        assert_eq!((d.name.as_str(), d.epoch), ("promote", 2));
        assert_eq!((d.t_ms, d.end_t_ms), (1000.0, Some(1500.0)));

        let path = dir.path().join("history.jsonl");
        let rec = Recorder::create(&path, &meta()).expect("create");
        for e in &events {
            rec.record(e);
        }
        let h = History::read(&path).expect("a valid history");
        assert_eq!(h.events, events);
    }

    /// A clock that steps back within one life, or a grant before its
    /// request, is found; a restart (a `starting` line) may start lower; a
    /// request sent before earlier lines passes.
    #[test]
    fn clock_glitches_are_found() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("s.jsonl");
        let write = |text: &str| std::fs::write(&path, text).expect("write");
        write(concat!(
            r#"{"boottime_ms":1000,"state":"starting"}"#,
            "\n",
            r#"{"event":"lease","boottime_ms":1010,"sent_boottime_ms":1005}"#,
            "\n",
            r#"{"boottime_ms":990,"state":"serving"}"#,
            "\n",
            r#"{"boottime_ms":500,"state":"starting"}"#,
            "\n",
            r#"{"boottime_ms":600,"state":"standby"}"#,
            "\n",
        ));
        assert_eq!(clock_glitch(&path), None);
        write(concat!(
            r#"{"boottime_ms":1000,"state":"starting"}"#,
            "\n",
            r#"{"event":"lease","boottime_ms":3000,"sent_boottime_ms":4780}"#,
            "\n",
        ));
        let g = clock_glitch(&path).expect("a glitch");
        assert!(g.contains("arrived at 3000.0 ms, before"), "{g}");
        write(concat!(
            r#"{"boottime_ms":1000,"state":"starting"}"#,
            "\n",
            r#"{"boottime_ms":3000,"state":"standby"}"#,
            "\n",
            r#"{"boottime_ms":2900,"state":"serving"}"#,
            "\n",
        ));
        let g = clock_glitch(&path).expect("a glitch");
        assert!(g.contains("read 2900.0 ms after 3000.0 ms"), "{g}");
    }

    /// The run directory's name is the UTC time.
    #[test]
    fn stamps_are_utc_civil_time() {
        assert_eq!(crate::runner::stamp(0), "19700101T000000Z");
        assert_eq!(crate::runner::stamp(1_763_798_400), "20251122T080000Z");
    }
}

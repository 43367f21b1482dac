//! `witnessctl watch`: what changes in the cluster, as it happens.
//!
//! Every `--interval` the watch reads the leader's status, the current
//! epoch's directives and the newest history records (the same
//! linearizable reads `status`, `directives list` and `history` make) and
//! prints what differs from the previous reading: leadership, the verdict,
//! each witness's view of each site, a failover becoming pending (with its
//! lease wait) or being called off, every agent's state and lease, each
//! directive's progress, and every new committed decision. History is
//! printed by log index, so no committed decision is ever skipped, however
//! short-lived; a state that comes and goes between two readings (a
//! directive claimed and done within one interval) shows as its end state.
//!
//! The first reading must succeed — a wrong `--endpoints` fails at once
//! with the usual exit code; after that, losing the cluster is itself an
//! event (`unreachable`), and the watch carries on until Ctrl-C.
//!
//! [`changes`] is pure (two readings in, events out), so `witness demo`
//! prints its timeline with it too.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use witness_proto::{HistoryEntry, ListDirectivesReply, StatusReply};

/// One reading of the cluster.
#[derive(Clone, Debug, Default)]
pub struct Reading {
    pub status: StatusReply,
    pub directives: ListDirectivesReply,
    /// The newest history records, oldest first.
    pub history: Vec<HistoryEntry>,
}

/// Something that changed, for people (`text`) and scripts (`json`).
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// `leader`, `verdict`, `freeze`, `pending`, `site`, `agent`,
    /// `directive`, `decision`, `unreachable`, `reachable`.
    pub kind: &'static str,
    pub text: String,
    pub json: Value,
}

impl Event {
    fn new(kind: &'static str, text: String, json: Value) -> Event {
        Event { kind, text, json }
    }
}

/// The events that take the cluster from `prev` to `next`; with no `prev`,
/// a summary of `next` (leader, verdict, sites, agents).
pub fn changes(prev: Option<&Reading>, next: &Reading) -> Vec<Event> {
    let mut out = Vec::new();
    let blank = Reading::default();
    let first = prev.is_none();
    let prev = prev.unwrap_or(&blank);
    let (p, n) = (&prev.status, &next.status);

    if first || p.leader_id != n.leader_id {
        let text = match n.leader_id {
            Some(id) => format!("leader is node {id} ({}), term {}", name_of(n, id), n.term),
            None => "no leader (an election is running, or there is no quorum)".to_string(),
        };
        out.push(Event::new(
            "leader",
            text,
            json!({"leader_id": n.leader_id, "term": n.term}),
        ));
    }
    // Each witness's view of each site, and the tally against the quorum.
    let seen = |r: &StatusReply| -> BTreeMap<(String, u64), String> {
        r.sites
            .iter()
            .flat_map(|s| {
                s.observations
                    .iter()
                    .map(move |o| ((s.name.clone(), o.witness), o.health.clone()))
            })
            .collect()
    };
    let (before, after) = (seen(p), seen(n));
    for ((site, witness), health) in &after {
        if before.get(&(site.clone(), *witness)) != Some(health) {
            let tally = n
                .sites
                .iter()
                .find(|s| &s.name == site)
                .map(|s| {
                    format!(
                        "{} witnesses see it down, {} up ({} needed)",
                        s.down, s.up, s.quorum
                    )
                })
                .unwrap_or_default();
            out.push(Event::new(
                "site",
                format!(
                    "{} ({witness}) sees {site} {health}; {tally}",
                    name_of(n, *witness)
                ),
                json!({"site": site, "witness": witness, "health": health}),
            ));
        }
    }
    for s in &n.sites {
        let was = p.sites.iter().find(|x| x.name == s.name);
        let quorum_down = s.quorum > 0 && s.down >= s.quorum;
        let was_down = was.is_some_and(|w| w.quorum > 0 && w.down >= w.quorum);
        if !first && quorum_down && !was_down {
            out.push(Event::new(
                "site",
                format!(
                    "QUORUM: {} witnesses agree {} is down ({} needed)",
                    s.down, s.name, s.quorum
                ),
                json!({"site": s.name, "quorum_down": true, "down": s.down, "quorum": s.quorum}),
            ));
        }
    }

    match (&p.pending, &n.pending) {
        (None, Some(f)) => out.push(Event::new(
            "pending",
            format!(
                "failover pending: {} → {} ({}); waiting {:.1}s for {}'s leases to run out: {}",
                f.from,
                f.to,
                f.cause,
                f.remaining_ms as f64 / 1000.0,
                f.from,
                f.reason
            ),
            json!({"from": f.from, "to": f.to, "cause": f.cause, "remaining_ms": f.remaining_ms,
                   "reason": f.reason}),
        )),
        (Some(a), Some(b)) if a.commit_failures != b.commit_failures && b.commit_failures > 0 => {
            out.push(Event::new(
                "pending",
                format!(
                    "activation of {} did not commit ({} attempts; last: {}); retrying",
                    b.to, b.commit_failures, b.last_error
                ),
                json!({"to": b.to, "commit_failures": b.commit_failures,
                       "last_error": b.last_error}),
            ))
        }
        (Some(f), None) if n.epoch == p.epoch && !first => out.push(Event::new(
            "pending",
            format!("failover {} → {} called off", f.from, f.to),
            json!({"from": f.from, "to": f.to, "called_off": true}),
        )),
        _ => {}
    }

    if first
        || (p.active_site.as_str(), p.epoch, &p.mode) != (n.active_site.as_str(), n.epoch, &n.mode)
    {
        let active = if n.active_site.is_empty() {
            "no site"
        } else {
            n.active_site.as_str()
        };
        let text = if !first && p.epoch != n.epoch {
            format!(
                "ACTIVATE {active} at epoch {} (was {} at epoch {}), mode {}",
                n.epoch,
                if p.active_site.is_empty() {
                    "none"
                } else {
                    p.active_site.as_str()
                },
                p.epoch,
                n.mode
            )
        } else {
            format!(
                "verdict: {active} active, epoch {}, mode {}",
                n.epoch, n.mode
            )
        };
        out.push(Event::new(
            "verdict",
            text,
            json!({"active_site": n.active_site, "epoch": n.epoch, "mode": n.mode}),
        ));
    }
    if !first && p.freeze_reason != n.freeze_reason {
        let text = if n.freeze_reason.is_empty() {
            "freeze ended".to_string()
        } else {
            format!("frozen: {}", n.freeze_reason)
        };
        out.push(Event::new(
            "freeze",
            text,
            json!({"freeze_reason": witness_proto::json::non_empty(&n.freeze_reason)}),
        ));
    }
    // Agents: their state, service health, and the lease they hold.
    for a in &n.agents {
        let was = p.agents.iter().find(|x| x.agent == a.agent);
        let changed = match was {
            None => true,
            Some(w) => {
                w.state != a.state
                    || w.service_healthy != a.service_healthy
                    || w.lease_epoch != a.lease_epoch
            }
        };
        if changed {
            let lease = match a.lease_epoch {
                Some(e) => format!("lease at epoch {e}"),
                None => "no lease".to_string(),
            };
            out.push(Event::new(
                "agent",
                format!(
                    "agent {} ({}/{}): {}, service {}, {lease}",
                    a.agent,
                    a.site,
                    a.role,
                    a.state,
                    if a.service_healthy {
                        "healthy"
                    } else {
                        "NOT healthy"
                    }
                ),
                json!({"agent": a.agent, "site": a.site, "role": a.role, "state": a.state,
                       "service_healthy": a.service_healthy, "lease_epoch": a.lease_epoch}),
            ));
        }
    }
    for a in &p.agents {
        if !n.agents.iter().any(|x| x.agent == a.agent) && !n.agents.is_empty() {
            out.push(Event::new(
                "agent",
                format!(
                    "agent {} ({}/{}) no longer reported",
                    a.agent, a.site, a.role
                ),
                json!({"agent": a.agent, "gone": true}),
            ));
        }
    }

    // Directives of the current epoch.
    for d in &next.directives.directives {
        let was = prev.directives.directives.iter().find(|x| x.id == d.id);
        if was.is_none_or(|w| w.state != d.state || w.attempts != d.attempts) {
            let who = if d.agent.is_empty() {
                String::new()
            } else {
                format!(" by {}", d.agent)
            };
            let detail = match d.state.as_str() {
                "failed" | "unreachable" => format!(": {}", d.last_error),
                _ => String::new(),
            };
            out.push(Event::new(
                "directive",
                format!(
                    "directive {} ({}/{}): {}{who}, attempt {}/{}{detail}",
                    d.id, d.site, d.role, d.state, d.attempts, d.max_attempts
                ),
                json!({"id": d.id, "site": d.site, "role": d.role, "state": d.state,
                       "agent": witness_proto::json::non_empty(&d.agent),
                       "attempts": d.attempts, "last_error":
                       witness_proto::json::non_empty(&d.last_error)}),
            ));
        }
    }

    // Committed decisions, by log index: none is skipped.
    if !first {
        let last = prev.history.iter().map(|e| e.log_index).max().unwrap_or(0);
        for e in next.history.iter().filter(|e| e.log_index > last) {
            out.push(Event::new(
                "decision",
                if e.reason.is_empty() {
                    format!("committed #{}: {} (by {})", e.log_index, e.event, e.by)
                } else {
                    format!(
                        "committed #{}: {} (by {}): {}",
                        e.log_index, e.event, e.by, e.reason
                    )
                },
                serde_json::from_str(&e.json).unwrap_or_else(|_| json!({"raw": e.json})),
            ));
        }
    }
    out
}

fn name_of(s: &StatusReply, id: u64) -> String {
    s.members
        .iter()
        .find(|m| m.id == id)
        .map(|m| m.name.clone())
        .unwrap_or_else(|| format!("node {id}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use witness_proto::{
        AgentStatus, DirectiveInfo, Member, PendingFailover, SiteStatus, WitnessObservation,
    };

    fn reading(active: &str, epoch: u64, down: u32) -> Reading {
        Reading {
            status: StatusReply {
                leader_id: Some(1),
                term: 2,
                active_site: active.into(),
                epoch,
                mode: "auto".into(),
                members: vec![Member {
                    id: 1,
                    name: "w1".into(),
                    ..Default::default()
                }],
                sites: vec![SiteStatus {
                    name: "dc-a".into(),
                    down,
                    up: 2 - down.min(2),
                    quorum: 2,
                    observations: vec![WitnessObservation {
                        witness: 1,
                        health: if down > 0 { "down" } else { "up" }.into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                agents: vec![AgentStatus {
                    agent: "mbox1".into(),
                    site: "dc-a".into(),
                    role: "mailstore".into(),
                    state: "serving".into(),
                    service_healthy: true,
                    lease_epoch: Some(epoch),
                    ..Default::default()
                }],
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn kinds(events: &[Event]) -> Vec<&str> {
        events.iter().map(|e| e.kind).collect()
    }

    /// The first reading summarises; an identical one says nothing.
    #[test]
    fn first_reading_summarises_and_no_change_is_silent() {
        let r = reading("dc-a", 1, 0);
        let first = changes(None, &r);
        assert_eq!(kinds(&first), ["leader", "site", "verdict", "agent"]);
        assert!(
            first[2].text.contains("dc-a active, epoch 1"),
            "{}",
            first[2].text
        );
        assert!(changes(Some(&r), &r).is_empty());
    }

    /// A failover reads as it happens: a witness sees the site down, the
    /// quorum agrees, the failover waits for leases, then the activation,
    /// the directive and the committed decision.
    #[test]
    fn a_failover_is_told_step_by_step() {
        let a = reading("dc-a", 1, 0);
        let mut b = reading("dc-a", 1, 2);
        b.status.pending = Some(PendingFailover {
            from: "dc-a".into(),
            to: "dc-b".into(),
            cause: "site_down".into(),
            remaining_ms: 4200,
            reason: "2 of 2 witnesses see dc-a down".into(),
            ..Default::default()
        });
        let steps = changes(Some(&a), &b);
        assert_eq!(kinds(&steps), ["site", "site", "pending"]);
        assert!(
            steps[0].text.contains("w1 (1) sees dc-a down"),
            "{}",
            steps[0].text
        );
        assert!(steps[1].text.contains("QUORUM"), "{}", steps[1].text);
        assert!(steps[2].text.contains("waiting 4.2s"), "{}", steps[2].text);

        let mut c = reading("dc-b", 2, 2);
        c.status.agents[0].state = "fenced".into();
        c.directives.directives = vec![DirectiveInfo {
            id: "2/promote".into(),
            site: "dc-b".into(),
            role: "mailstore".into(),
            state: "claimed".into(),
            agent: "mbox2".into(),
            attempts: 1,
            max_attempts: 3,
            ..Default::default()
        }];
        c.history = vec![HistoryEntry {
            log_index: 9,
            event: "activate dc-b epoch 2".into(),
            by: "engine".into(),
            reason: "dc-a down".into(),
            json: "{\"kind\":\"activate\"}".into(),
            ..Default::default()
        }];
        let steps = changes(Some(&b), &c);
        assert_eq!(kinds(&steps), ["verdict", "agent", "directive", "decision"]);
        assert!(
            steps[0].text.starts_with("ACTIVATE dc-b at epoch 2"),
            "{}",
            steps[0].text
        );
        assert!(
            steps[2].text.contains("claimed by mbox2"),
            "{}",
            steps[2].text
        );
        assert_eq!(steps[3].json["kind"], "activate");
        // Seen once only.
        assert!(!kinds(&changes(Some(&c), &c)).contains(&"decision"));
    }

    /// A failover that ends without a new epoch was called off.
    #[test]
    fn a_cancelled_failover_is_said() {
        let mut a = reading("dc-a", 1, 0);
        a.status.pending = Some(PendingFailover {
            from: "dc-a".into(),
            to: "dc-b".into(),
            ..Default::default()
        });
        let b = reading("dc-a", 1, 0);
        let steps = changes(Some(&a), &b);
        assert!(steps.iter().any(|e| e.text.contains("called off")));
        let mut no_leader = b.clone();
        no_leader.status.leader_id = None;
        assert!(changes(Some(&b), &no_leader)[0].text.contains("no leader"));
    }
}

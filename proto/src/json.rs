//! The JSON documents of the Admin service's replies: what `witnessctl
//! --output json` prints and what a witness's status page reads.
//!
//! The field names are a documented interface (README, "witnessctl status
//! --output json"): later versions add fields, never rename them.

use serde_json::{Value, json};

use crate::v1::{HistoryReply, ListDirectivesReply, Member, SiteStatus, StatusReply};

/// `status --output json`.
pub fn status_json(s: &StatusReply) -> Value {
    json!({
        "cluster_name": s.cluster_name,
        "cluster_id": s.cluster_id,
        "answered_by": s.answered_by,
        "answered_by_name": s.answered_by_name,
        "role": s.role,
        "leader_id": s.leader_id,
        "term": s.term,
        "commit_index": s.commit_index,
        "applied_index": s.applied_index,
        "last_log_index": s.last_log_index,
        "ready": s.ready,
        "not_ready_reason": non_empty(&s.not_ready_reason),
        "policy_version": s.policy_version,
        "leader_since_ms": s.leader_since_ms,
        "note": non_empty(&s.note),
        "members": members_json(&s.members),
        "active_site": non_empty(&s.active_site),
        "epoch": s.epoch,
        "mode": s.mode,
        "freeze_reason": non_empty(&s.freeze_reason),
        "freeze_expires_in_ms": s.freeze_expires_in_ms,
        "pending_failover": s.pending.as_ref().map(|p| json!({
            "from": p.from, "to": p.to, "cause": p.cause, "reason": p.reason,
            "remaining_ms": p.remaining_ms, "commit_failures": p.commit_failures,
            "last_error": non_empty(&p.last_error), "retry_in_ms": p.retry_in_ms,
        })),
        "decision": s.decision,
        "sites": s.sites.iter().map(site_json).collect::<Vec<_>>(),
        "agents": s.agents.iter().map(|a| json!({
            "agent": a.agent, "site": a.site, "role": a.role, "state": a.state,
            "state_for_ms": a.state_for_ms, "service_healthy": a.service_healthy,
            "heard_ms_ago": a.heard_ms_ago, "lease_epoch": a.lease_epoch,
            "granted_ms_ago": a.granted_ms_ago,
        })).collect::<Vec<_>>(),
    })
}

fn site_json(site: &SiteStatus) -> Value {
    json!({
        "name": site.name,
        "active": site.active,
        "down": site.down,
        "up": site.up,
        "consul_veto": site.consul_veto,
        "quorum": site.quorum,
        "observations": site.observations.iter().map(|o| json!({
            "witness": o.witness,
            "health": o.health,
            "seen": o.seen,
            "fresh": o.fresh,
            "age_ms": o.age_ms,
            "view": serde_json::from_str::<Value>(&o.view_json).unwrap_or(Value::Null),
            "consul": serde_json::from_str::<Value>(&o.consul_json).unwrap_or(Value::Null),
        })).collect::<Vec<_>>(),
    })
}

/// The `members` array shared by `status` and `members list`.
pub fn members_json(members: &[Member]) -> Value {
    Value::Array(
        members
            .iter()
            .map(|m| {
                json!({
                    "id": m.id,
                    "name": m.name,
                    "addr": m.addr,
                    "site": m.site,
                    "voter": m.voter,
                    "reachable": m.reachable,
                    "incarnation": non_empty(&m.incarnation),
                    "matched_index": m.matched_index,
                    "last_ack_ms": m.last_ack_ms,
                })
            })
            .collect(),
    )
}

/// `history --output json`: an array of the state machine's records.
pub fn history_json(h: &HistoryReply) -> Value {
    Value::Array(
        h.entries
            .iter()
            .map(|e| serde_json::from_str(&e.json).unwrap_or_else(|_| json!({"raw": e.json})))
            .collect(),
    )
}

/// `directives list --output json`: the epoch, every directive with all
/// its fields (the action parsed), and the gates.
pub fn directives_json(r: &ListDirectivesReply) -> Value {
    json!({
        "epoch": r.epoch,
        "directives": r.directives.iter().map(|d| json!({
            "id": d.id, "epoch": d.epoch, "name": d.name, "site": d.site, "role": d.role,
            "state": d.state, "description": d.description,
            "action": serde_json::from_str::<Value>(&d.action_json).unwrap_or(Value::Null),
            "after": d.after, "agent": non_empty(&d.agent), "generation": d.generation,
            "attempts": d.attempts, "max_attempts": d.max_attempts,
            "claim_ttl_ms": d.claim_ttl_ms, "best_effort": d.best_effort,
            "exit_code": d.exit_code, "output_tail": non_empty(&d.output_tail),
            "last_error": non_empty(&d.last_error),
        })).collect::<Vec<_>>(),
        "gates": r.gates.iter().map(|g| json!({
            "role": g.role, "directives": g.directives, "open": g.open,
        })).collect::<Vec<_>>(),
    })
}

/// `null` for an empty string, so scripts can test for absence.
pub fn non_empty(s: &str) -> Value {
    if s.is_empty() {
        Value::Null
    } else {
        Value::String(s.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented status JSON fields are present with their names.
    #[test]
    fn status_json_has_documented_fields() {
        let s = StatusReply {
            leader_id: Some(1),
            term: 3,
            commit_index: 9,
            members: vec![Member {
                id: 1,
                name: "w1".into(),
                voter: true,
                ..Default::default()
            }],
            ..Default::default()
        };
        let v = status_json(&s);
        assert_eq!(v["leader_id"], 1);
        assert_eq!(v["term"], 3);
        assert_eq!(v["commit_index"], 9);
        for f in ["id", "name", "addr", "site", "voter", "reachable"] {
            assert!(v["members"][0].get(f).is_some(), "missing members[].{f}");
        }
    }
}

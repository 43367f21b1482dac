//! Rendering replies as tables for people and JSON for scripts.
//!
//! The JSON documents live in [`witness_proto::json`], shared with the
//! witness's status page.

use serde_json::Value;
use witness_proto::{
    AgentStatus, HistoryReply, ListDirectivesReply, Member, PolicyApplyReply, StatusReply,
};

/// For `status`: the current epoch's directives that are not done yet, or
/// one line saying they all are.
pub fn open_directives(r: &ListDirectivesReply) -> String {
    let open: Vec<_> = r
        .directives
        .iter()
        .filter(|d| d.state != "done" && d.state != "superseded")
        .cloned()
        .collect();
    if open.is_empty() {
        return format!(
            "directives: none open at epoch {} ({} done)\n",
            r.epoch,
            r.directives.len()
        );
    }
    let mut out = format!("DIRECTIVES OF EPOCH {} NOT DONE\n", r.epoch);
    out.push_str(&directives_table(&ListDirectivesReply {
        directives: open,
        ..r.clone()
    }));
    out
}

/// `directives list` for people.
pub fn directives_table(r: &ListDirectivesReply) -> String {
    if r.directives.is_empty() {
        return format!(
            "epoch {}: no directives (the first activation, or a failover whose policy plans \
             none)\n",
            r.epoch
        );
    }
    let rows: Vec<Vec<String>> = r
        .directives
        .iter()
        .map(|d| {
            let attempts = format!("{}/{}", d.attempts, d.max_attempts);
            let detail = match (d.state.as_str(), d.exit_code) {
                ("done", _) => last_line(&d.output_tail),
                (_, Some(code)) if !d.last_error.is_empty() => {
                    format!("exit {code}: {}", d.last_error)
                }
                _ => d.last_error.clone(),
            };
            vec![
                d.id.clone(),
                format!("{}/{}", d.site, d.role),
                d.state.clone(),
                d.agent.clone(),
                attempts,
                d.description.clone(),
                detail,
            ]
        })
        .collect();
    let mut out = table(
        &["ID", "FOR", "STATE", "AGENT", "TRIES", "ACTION", "LAST"],
        &rows,
    );
    for g in &r.gates {
        out.push_str(&format!(
            "gate: {} agents run their activate hooks after {}: {}\n",
            g.role,
            g.directives.join(", "),
            if g.open { "open" } else { "CLOSED (waiting)" }
        ));
    }
    if r.directives.iter().any(|d| d.state == "failed") {
        out.push_str(
            "a failed directive waits for an operator: fix the cause (see LAST and the agent's \
             log), then `witnessctl directives retry <ID> --reason \"...\"`\n",
        );
    }
    out
}

/// The last non-empty line of a command's output.
fn last_line(s: &str) -> String {
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string()
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// Left-aligned columns sized to their widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

/// `status` for people.
pub fn status_table(s: &StatusReply) -> String {
    let mut out = String::new();
    let name_of = |id: u64| {
        s.members
            .iter()
            .find(|m| m.id == id)
            .map(|m| m.name.clone())
            .unwrap_or_default()
    };
    out.push_str(&format!(
        "cluster {}  (id {})\n",
        s.cluster_name,
        s.cluster_id.get(..12).unwrap_or(&s.cluster_id)
    ));
    out.push_str(&format!(
        "answered by node {} ({}), {}\n",
        s.answered_by, s.answered_by_name, s.role
    ));
    match s.leader_id {
        Some(l) => out.push_str(&format!("leader:  node {l} ({})\n", name_of(l))),
        None => out.push_str("leader:  NONE (no quorum, or an election is running)\n"),
    }
    out.push_str(&format!(
        "raft:    term {}  commit {}  applied {}  last log {}\n",
        s.term, s.commit_index, s.applied_index, s.last_log_index
    ));
    out.push_str(&format!("policy:  version {}\n", s.policy_version));
    let active = if s.active_site.is_empty() {
        "none yet"
    } else {
        s.active_site.as_str()
    };
    out.push_str(&format!(
        "verdict: {active} active, epoch {}, mode {}\n",
        s.epoch, s.mode
    ));
    if !s.freeze_reason.is_empty() {
        let ends = s
            .freeze_expires_in_ms
            .map(|ms| format!(", ends in {}s", ms.div_ceil(1000)))
            .unwrap_or_default();
        out.push_str(&format!("frozen:  {}{ends}\n", s.freeze_reason));
    }
    if let Some(p) = &s.pending {
        out.push_str(&format!(
            "FAILOVER PENDING: {} → {} ({}) in {:.1}s, after the leases of {} run out: {}\n",
            p.from,
            p.to,
            p.cause,
            p.remaining_ms as f64 / 1000.0,
            p.from,
            p.reason
        ));
        if p.commit_failures > 0 {
            out.push_str(&format!(
                "         the activation did not commit ({} attempts; last: {}); next attempt in \
                 {:.1}s. Check that a majority of witnesses is up and connected.\n",
                p.commit_failures,
                p.last_error,
                p.retry_in_ms as f64 / 1000.0
            ));
        }
    }
    for d in &s.decision {
        out.push_str(&format!("why:     {d}\n"));
    }
    if s.ready {
        out.push_str("ready:   yes\n");
    } else {
        out.push_str(&format!("ready:   NO: {}\n", s.not_ready_reason));
    }
    if !s.note.is_empty() {
        out.push_str(&format!("note:    {}\n", s.note));
    }
    for w in &s.warnings {
        out.push_str(&format!("WARNING: {w}\n"));
    }
    if !s.sites.is_empty() {
        out.push('\n');
        out.push_str(&sites_table(s));
    }
    if !s.agents.is_empty() {
        out.push('\n');
        out.push_str(&agents_table(&s.agents));
    }
    out.push('\n');
    out.push_str(&members_table(&s.members));
    out
}

/// One row per agent the leader heard from: its own state, and the lease
/// this leader last granted it.
fn agents_table(agents: &[AgentStatus]) -> String {
    let secs = |ms: u64| format!("{:.1}s", ms as f64 / 1000.0);
    let rows: Vec<Vec<String>> = agents
        .iter()
        .map(|a| {
            vec![
                a.agent.clone(),
                format!("{}/{}", a.site, a.role),
                format!("{} for {}", a.state, secs(a.state_for_ms)),
                yes_no(a.service_healthy).to_string(),
                format!("{} ago", secs(a.heard_ms_ago)),
                match (a.lease_epoch, a.granted_ms_ago) {
                    (Some(epoch), Some(ago)) => format!("epoch {epoch}, {} ago", secs(ago)),
                    _ => "none from this leader".to_string(),
                },
            ]
        })
        .collect();
    table(
        &["AGENT", "AT", "STATE", "SERVICE OK", "HEARD", "LAST LEASE"],
        &rows,
    )
}

/// One row per (site, witness): what each witness sees and what counts.
fn sites_table(s: &StatusReply) -> String {
    let mut rows = Vec::new();
    for site in &s.sites {
        for o in &site.observations {
            let view: Value = serde_json::from_str(&o.view_json).unwrap_or(Value::Null);
            let failing: Vec<String> = view["targets"]
                .as_array()
                .map(|ts| {
                    ts.iter()
                        .filter(|t| t["health"] != "up")
                        .map(|t| {
                            let err = t["last_error"].as_str().unwrap_or("");
                            format!(
                                "{} {}{}",
                                t["name"].as_str().unwrap_or("?"),
                                t["health"].as_str().unwrap_or("?"),
                                if err.is_empty() {
                                    String::new()
                                } else {
                                    format!(" ({err})")
                                }
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            let consul: Value = serde_json::from_str(&o.consul_json).unwrap_or(Value::Null);
            let consul_text = match consul["error"].as_str() {
                Some(e) => format!("consul: {e}"),
                None if consul["reachable"] == true => "consul ok".to_string(),
                None => String::new(),
            };
            rows.push(vec![
                format!("{}{}", site.name, if site.active { " *" } else { "" }),
                format!(
                    "{}/{} down, {}/{} up",
                    site.down, site.quorum, site.up, site.quorum
                ),
                o.witness.to_string(),
                o.health.clone(),
                if o.fresh {
                    o.seen.clone()
                } else {
                    format!("{} (stale)", o.seen)
                },
                o.age_ms
                    .map(|a| format!("{:.1}s", a as f64 / 1000.0))
                    .unwrap_or_else(|| "-".into()),
                [failing.join(", "), consul_text]
                    .iter()
                    .filter(|x| !x.is_empty())
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; "),
            ]);
        }
    }
    table(
        &[
            "SITE",
            "VOTES (quorum)",
            "WITNESS",
            "PROBES",
            "COUNTED",
            "AGE",
            "DETAILS",
        ],
        &rows,
    )
}

/// `members list` for people.
pub fn members_table(members: &[Member]) -> String {
    let rows: Vec<Vec<String>> = members
        .iter()
        .map(|m| {
            vec![
                m.id.to_string(),
                m.name.clone(),
                m.site.clone(),
                m.addr.clone(),
                if m.voter { "voter" } else { "learner" }.to_string(),
                yes_no(m.reachable).to_string(),
                m.matched_index
                    .map(|i| i.to_string())
                    .unwrap_or_else(|| "-".into()),
                m.last_ack_ms
                    .map(|ms| format!("{ms}ms"))
                    .unwrap_or_else(|| "-".into()),
                if m.incarnation.is_empty() {
                    "(not pinned yet)".to_string()
                } else {
                    m.incarnation
                        .get(..12)
                        .unwrap_or(&m.incarnation)
                        .to_string()
                },
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "NAME",
            "SITE",
            "ADDRESS",
            "ROLE",
            "REACHABLE",
            "MATCHED",
            "LAST ACK",
            "INCARNATION",
        ],
        &rows,
    )
}

/// `history` for people.
pub fn history_table(h: &HistoryReply) -> String {
    if h.entries.is_empty() {
        return "no committed decisions yet\n".to_string();
    }
    let rows: Vec<Vec<String>> = h
        .entries
        .iter()
        .map(|e| {
            vec![
                e.log_index.to_string(),
                format_unix_ms(e.at_unix_ms),
                e.by.clone(),
                e.event.clone(),
                e.reason.clone(),
            ]
        })
        .collect();
    table(&["INDEX", "TIME (UTC)", "BY", "EVENT", "REASON"], &rows)
}

/// `policy apply` for people.
pub fn policy_apply_text(r: &PolicyApplyReply, dry_run: bool) -> String {
    let mut out = String::new();
    if r.diff.is_empty() {
        out.push_str(&format!(
            "no change: the committed policy (version {}) is identical\n",
            r.version
        ));
        return out;
    }
    out.push_str(&r.diff);
    if r.applied {
        out.push_str(&format!("\ncommitted as policy version {}\n", r.version));
    } else if dry_run {
        out.push_str(&format!(
            "\ndry run: nothing committed (current version {})\n",
            r.version
        ));
    }
    out
}

/// `YYYY-MM-DD HH:MM:SS` in UTC, without a date library.
pub fn format_unix_ms(ms: u64) -> String {
    let (year, month, d, h, m, s) = witness_proto::civil_utc(ms / 1000);
    format!("{year:04}-{month:02}-{d:02} {h:02}:{m:02}:{s:02}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use witness_proto::{DirectiveInfo, Gate};

    /// The directives table shows each directive's state, claimant and last
    /// result, the gates, and what to do about a failed one.
    #[test]
    fn directives_table_explains_state_and_next_step() {
        let reply = ListDirectivesReply {
            epoch: 2,
            directives: vec![
                DirectiveInfo {
                    id: "2/promote".into(),
                    site: "dc-b".into(),
                    role: "mailstore".into(),
                    state: "done".into(),
                    agent: "mbox2".into(),
                    attempts: 1,
                    max_attempts: 3,
                    description: "promote the accounts of mbox1.example.com (4 threads)".into(),
                    output_tail: "started\npromoted 12 accounts\n".into(),
                    exit_code: Some(0),
                    ..DirectiveInfo::default()
                },
                DirectiveInfo {
                    id: "2/flush-cache".into(),
                    site: "dc-b".into(),
                    role: "mailstore".into(),
                    state: "failed".into(),
                    agent: "mbox2".into(),
                    attempts: 1,
                    max_attempts: 3,
                    exit_code: Some(1),
                    last_error: "exited with 1".into(),
                    ..DirectiveInfo::default()
                },
            ],
            gates: vec![Gate {
                role: "proxy".into(),
                directives: vec!["promote".into()],
                open: true,
            }],
        };
        let text = directives_table(&reply);
        assert!(text.contains("2/promote"), "{text}");
        assert!(text.contains("promoted 12 accounts"), "{text}");
        assert!(text.contains("exit 1: exited with 1"), "{text}");
        assert!(text.contains("gate: proxy agents run their activate hooks after promote: open"));
        assert!(text.contains("witnessctl directives retry <ID>"), "{text}");
        let json = witness_proto::json::directives_json(&reply);
        assert_eq!(json["directives"][1]["state"], "failed");
        assert_eq!(json["gates"][0]["open"], true);
        assert!(directives_table(&ListDirectivesReply::default()).contains("no directives"));
        // `status` lists only what is not done.
        let open = open_directives(&reply);
        assert!(open.contains("2/flush-cache"), "{open}");
        assert!(!open.contains("2/promote "), "{open}");
        let mut done = reply.clone();
        done.directives.truncate(1);
        assert!(open_directives(&done).contains("none open at epoch 2 (1 done)"));
    }

    /// Agents show their own state and the last lease the leader granted.
    #[test]
    fn agents_table_shows_state_and_last_lease() {
        let agents = [
            AgentStatus {
                agent: "mbox1".into(),
                site: "dc-a".into(),
                role: "mailstore".into(),
                state: "serving".into(),
                state_for_ms: 61_000,
                service_healthy: true,
                heard_ms_ago: 300,
                lease_epoch: Some(1),
                granted_ms_ago: Some(300),
            },
            AgentStatus {
                agent: "mbox2".into(),
                site: "dc-b".into(),
                role: "mailstore".into(),
                state: "standby".into(),
                ..AgentStatus::default()
            },
        ];
        let text = agents_table(&agents);
        assert!(text.contains("serving for 61.0s"), "{text}");
        assert!(text.contains("epoch 1, 0.3s ago"), "{text}");
        assert!(text.contains("none from this leader"), "{text}");
    }

    /// Known instants render as their calendar dates.
    #[test]
    fn unix_ms_renders_utc() {
        assert_eq!(format_unix_ms(0), "1970-01-01 00:00:00");
        assert_eq!(format_unix_ms(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(format_unix_ms(1_795_000_000_000), "2026-11-18 11:06:40");
    }
}

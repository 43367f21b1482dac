//! Prometheus metrics on the HTTP port: `GET /metrics`, text exposition
//! format 0.0.4.
//!
//! Almost everything is read at scrape time from what `witnessctl status
//! --local` shows for this node (its Raft state, the committed verdict,
//! each site's tally and this witness's own probe and Consul view, and —
//! on the leader — the agents and the pending failover), so a metric can
//! never disagree with `status`. What status cannot show, events between
//! two scrapes, is counted in [`Counters`] (lease grants and refusals).
//!
//! Names follow Prometheus conventions: the `witness_` prefix, base units
//! in the name (`_seconds`), `_total` on counters, one metric per meaning
//! with the variable part in labels (`site`, `target`, `state`, …).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use witness_proto::{RenewLeaseReply, StatusReply};

use crate::probe::{Health, LocalView};

/// Events counted between scrapes.
#[derive(Debug, Default)]
pub struct Counters {
    /// Lease grants per site, and refusals per site.
    leases: Mutex<BTreeMap<(String, bool), u64>>,
}

impl Counters {
    /// Count the leader's answer to a renewal from an agent of `site`.
    pub fn lease_answered(&self, site: &str, reply: &RenewLeaseReply) {
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        *leases.entry((site.to_string(), reply.granted)).or_default() += 1;
    }
}

/// One metric family being written: its `# HELP` / `# TYPE` header once,
/// then samples.
struct Out {
    text: String,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{k}=\"{}\"", escape(v));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", number(value));
    }

    /// One sample per value of an enum-like label `key`: 1 for `current`,
    /// 0 for the other `options`.
    fn one_hot(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        key: &str,
        options: &[&str],
        current: &str,
    ) {
        for option in options {
            let mut all = labels.to_vec();
            all.push((key, option));
            self.sample(name, &all, flag(*option == current));
        }
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// A label value as the exposition format wants it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn flag(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

const MODES: [&str; 2] = ["auto", "frozen"];
const AGENT_STATES: [&str; 4] = ["starting", "standby", "serving", "fenced"];
const HEALTHS: [&str; 3] = ["up", "down", "unknown"];

/// The metrics text for this node's `status` (local, no forwarding), its
/// probe view and its counters. `now_ms` is the wall clock, for ages.
pub fn render(
    status: &StatusReply,
    view: Option<&LocalView>,
    counters: &Counters,
    now_ms: u64,
) -> String {
    let mut o = Out {
        text: String::new(),
    };
    let node = status.answered_by.to_string();
    o.family(
        "witness_info",
        "gauge",
        "This witness: node id, name, cluster and store incarnation (always 1).",
    );
    o.sample(
        "witness_info",
        &[
            ("node", &node),
            ("name", &status.answered_by_name),
            ("cluster", &status.cluster_name),
            ("incarnation", &status.incarnation),
        ],
        1.0,
    );
    o.one(
        "witness_ready",
        "gauge",
        "1 when this node is a member that knows its leader and has applied the policy.",
        flag(status.ready),
    );

    // Raft.
    o.one(
        "witness_raft_is_leader",
        "gauge",
        "1 on the Raft leader.",
        flag(status.role == "leader"),
    );
    o.one(
        "witness_raft_leader_id",
        "gauge",
        "The node id of the leader this node knows (0: none).",
        status.leader_id.unwrap_or(0) as f64,
    );
    o.one(
        "witness_raft_term",
        "gauge",
        "The current Raft term.",
        status.term as f64,
    );
    o.one(
        "witness_raft_commit_index",
        "gauge",
        "The highest log index known committed.",
        status.commit_index as f64,
    );
    o.one(
        "witness_raft_applied_index",
        "gauge",
        "The highest log index applied to the state machine.",
        status.applied_index as f64,
    );
    o.one(
        "witness_raft_last_log_index",
        "gauge",
        "The last index in this node's log.",
        status.last_log_index as f64,
    );
    o.one(
        "witness_policy_version",
        "gauge",
        "The version of the applied cluster policy.",
        status.policy_version as f64,
    );

    // The verdict.
    o.one(
        "witness_verdict_epoch",
        "gauge",
        "The committed epoch (the fencing token of every lease and action).",
        status.epoch as f64,
    );
    o.family(
        "witness_verdict_active",
        "gauge",
        "1 for the active site, 0 for the others.",
    );
    for site in &status.sites {
        o.sample(
            "witness_verdict_active",
            &[("site", &site.name)],
            flag(site.name == status.active_site),
        );
    }
    o.family(
        "witness_verdict_mode",
        "gauge",
        "1 for the cluster's current mode: auto (automatic failover) or frozen.",
    );
    o.one_hot("witness_verdict_mode", &[], "mode", &MODES, &status.mode);

    // Each site's tally across the witnesses, as the engine counts it.
    o.family(
        "witness_site_witnesses",
        "gauge",
        "How many voters currently see the site up, down, or down but vetoed by Consul.",
    );
    for site in &status.sites {
        for (seen, n) in [
            ("up", site.up),
            ("down", site.down),
            ("consul_veto", site.consul_veto),
        ] {
            o.sample(
                "witness_site_witnesses",
                &[("site", &site.name), ("seen", seen)],
                f64::from(n),
            );
        }
    }
    o.family(
        "witness_site_quorum",
        "gauge",
        "Voters needed to declare the site down (the detection quorum).",
    );
    for site in &status.sites {
        o.sample(
            "witness_site_quorum",
            &[("site", &site.name)],
            f64::from(site.quorum),
        );
    }

    // A failover the leader is waiting to commit.
    o.one(
        "witness_failover_pending",
        "gauge",
        "1 while the leader waits out the old site's leases before an Activate (leader only).",
        flag(status.pending.is_some()),
    );
    o.one(
        "witness_failover_lease_wait_remaining_seconds",
        "gauge",
        "Time until every lease of the site being drained is over (leader only; 0: none).",
        status
            .pending
            .as_ref()
            .map_or(0.0, |p| p.remaining_ms as f64 / 1000.0),
    );

    // Agents, as the leader heard them.
    o.family(
        "witness_agent_state",
        "gauge",
        "1 for each agent's current state (starting, standby, serving, fenced; leader only).",
    );
    for a in &status.agents {
        let labels = [
            ("agent", a.agent.as_str()),
            ("site", &a.site),
            ("role", &a.role),
        ];
        o.one_hot(
            "witness_agent_state",
            &labels,
            "state",
            &AGENT_STATES,
            &a.state,
        );
    }
    o.family(
        "witness_agent_last_heard_seconds",
        "gauge",
        "Time since the leader last heard the agent renew (leader only).",
    );
    for a in &status.agents {
        o.sample(
            "witness_agent_last_heard_seconds",
            &[("agent", &a.agent), ("site", &a.site)],
            a.heard_ms_ago as f64 / 1000.0,
        );
    }
    o.family(
        "witness_agent_service_healthy",
        "gauge",
        "1 while the agent reports its local service healthy (which vetoes a failover).",
    );
    for a in &status.agents {
        o.sample(
            "witness_agent_service_healthy",
            &[("agent", &a.agent), ("site", &a.site)],
            flag(a.service_healthy),
        );
    }

    // Leases.
    o.family(
        "witness_lease_renewals_total",
        "counter",
        "Renewals this node answered as leader, by site and outcome (granted, refused).",
    );
    let leases = counters
        .leases
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    for ((site, granted), n) in &leases {
        let outcome = if *granted { "granted" } else { "refused" };
        o.sample(
            "witness_lease_renewals_total",
            &[("site", site), ("outcome", outcome)],
            *n as f64,
        );
    }

    // This witness's own probes and Consul view.
    if let Some(view) = view {
        o.family(
            "witness_probe_target_health",
            "gauge",
            "1 for each target's health as this witness's probes see it (up, down, unknown).",
        );
        for site in view.sites.values() {
            for t in &site.targets {
                let labels = [
                    ("site", site.site.as_str()),
                    ("target", &t.name),
                    ("role", &t.role),
                ];
                let health = health_name(t.health);
                o.one_hot(
                    "witness_probe_target_health",
                    &labels,
                    "health",
                    &HEALTHS,
                    health,
                );
            }
        }
        o.family(
            "witness_probe_target_latency_seconds",
            "gauge",
            "How long this witness's latest probe of the target took (its timeout when it ran out).",
        );
        for site in view.sites.values() {
            for t in &site.targets {
                if let Some(ms) = t.last_latency_ms {
                    o.sample(
                        "witness_probe_target_latency_seconds",
                        &[("site", &site.site), ("target", &t.name)],
                        ms as f64 / 1000.0,
                    );
                }
            }
        }
        o.family(
            "witness_probe_site_health",
            "gauge",
            "1 for each site's health from this witness's probes alone (up, down, unknown).",
        );
        for site in view.sites.values() {
            let labels = [("site", site.site.as_str())];
            let health = health_name(site.health);
            o.one_hot(
                "witness_probe_site_health",
                &labels,
                "health",
                &HEALTHS,
                health,
            );
        }
        let consul = &view.consul;
        let read = consul.mode != "ignore" && consul.fetched_at_ms > 0;
        o.one(
            "witness_consul_reachable",
            "gauge",
            "1 when the local Consul agent answered the latest reading round.",
            flag(read && consul.reachable),
        );
        o.one(
            "witness_consul_leader_known",
            "gauge",
            "1 when the local Consul agent named a leader in the latest round.",
            flag(read && consul.leader.is_some()),
        );
        if read {
            o.one(
                "witness_consul_reading_age_seconds",
                "gauge",
                "Time since this witness's latest Consul reading round.",
                now_ms.saturating_sub(consul.fetched_at_ms) as f64 / 1000.0,
            );
        }
    }
    o.text
}

fn health_name(h: Health) -> &'static str {
    match h {
        Health::Up => "up",
        Health::Down => "down",
        Health::Unknown => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use witness_proto::{AgentStatus, SiteStatus};

    fn status() -> StatusReply {
        StatusReply {
            answered_by: 2,
            answered_by_name: "w2".into(),
            cluster_name: "prod".into(),
            incarnation: "abc".into(),
            role: "leader".into(),
            leader_id: Some(2),
            term: 7,
            ready: true,
            epoch: 3,
            active_site: "dc-b".into(),
            mode: "auto".into(),
            sites: vec![
                SiteStatus {
                    name: "dc-a".into(),
                    down: 2,
                    quorum: 2,
                    ..SiteStatus::default()
                },
                SiteStatus {
                    name: "dc-b".into(),
                    active: true,
                    up: 3,
                    quorum: 2,
                    ..SiteStatus::default()
                },
            ],
            agents: vec![AgentStatus {
                agent: "proxy\"2".into(),
                site: "dc-b".into(),
                role: "proxy".into(),
                state: "serving".into(),
                heard_ms_ago: 250,
                ..AgentStatus::default()
            }],
            ..StatusReply::default()
        }
    }

    /// Every sample line is `name{labels} value`, every family has its
    /// HELP and TYPE before its samples, and the values say what status
    /// says.
    #[test]
    fn renders_the_status_as_exposition_text() {
        let counters = Counters::default();
        for granted in [true, true, false] {
            counters.lease_answered(
                "dc-b",
                &RenewLeaseReply {
                    granted,
                    ..RenewLeaseReply::default()
                },
            );
        }
        let text = render(&status(), None, &counters, 0);
        let has = |line: &str| text.lines().any(|l| l == line);
        assert!(has("witness_verdict_epoch 3"), "{text}");
        assert!(has("witness_verdict_active{site=\"dc-b\"} 1"), "{text}");
        assert!(has("witness_verdict_active{site=\"dc-a\"} 0"), "{text}");
        assert!(has("witness_verdict_mode{mode=\"auto\"} 1"), "{text}");
        assert!(has("witness_raft_is_leader 1"), "{text}");
        assert!(
            has("witness_site_witnesses{site=\"dc-a\",seen=\"down\"} 2"),
            "{text}"
        );
        assert!(
            has(
                "witness_agent_state{agent=\"proxy\\\"2\",site=\"dc-b\",role=\"proxy\",state=\"serving\"} 1"
            ),
            "{text}"
        );
        assert!(
            has("witness_agent_last_heard_seconds{agent=\"proxy\\\"2\",site=\"dc-b\"} 0.25"),
            "{text}"
        );
        assert!(
            has("witness_lease_renewals_total{site=\"dc-b\",outcome=\"granted\"} 2"),
            "{text}"
        );
        assert!(
            has("witness_lease_renewals_total{site=\"dc-b\",outcome=\"refused\"} 1"),
            "{text}"
        );
        let mut declared = std::collections::BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().expect("name");
                assert!(declared.insert(name.to_string()), "{name} declared twice");
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let name = line.split(['{', ' ']).next().expect("name");
            assert!(declared.contains(name), "{name} sampled before its TYPE");
            assert!(name.starts_with("witness_"), "{line}");
            let value = line.rsplit(' ').next().expect("value");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }

    fn view() -> LocalView {
        use crate::probe::{ConsulView, SiteView, TargetView};
        let target = TargetView {
            name: "proxy".into(),
            role: "proxy".into(),
            critical: true,
            health: Health::Up,
            consecutive: 3,
            last_error: None,
            last_latency_ms: Some(12),
            consul: None,
        };
        LocalView {
            sites: [(
                "dc-b".to_string(),
                SiteView {
                    site: "dc-b".into(),
                    health: Health::Up,
                    changed_at_ms: 1,
                    targets: vec![target],
                },
            )]
            .into_iter()
            .collect(),
            consul: ConsulView {
                mode: "corroborate".into(),
                reachable: true,
                leader: Some("10.0.0.1:8300".into()),
                error: None,
                fetched_at_ms: 1_000,
            },
        }
    }

    /// The Grafana dashboard shipped in deploy/grafana/ asks only for
    /// metrics this module writes.
    #[test]
    fn the_dashboard_uses_only_metrics_that_exist() {
        let text = render(&status(), Some(&view()), &Counters::default(), 3_000);
        assert!(
            text.lines()
                .any(|l| l == "witness_consul_reading_age_seconds 2"),
            "{text}"
        );
        let declared: std::collections::BTreeSet<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/witness.json");
        let dashboard = std::fs::read_to_string(&path).expect("read the dashboard");
        let json: serde_json::Value = serde_json::from_str(&dashboard).expect("valid JSON");
        assert!(json["panels"].as_array().is_some_and(|p| !p.is_empty()));
        let mut used = std::collections::BTreeSet::new();
        let bytes = dashboard.as_bytes();
        let mut i = 0;
        while let Some(at) = dashboard[i..].find("witness_") {
            let start = i + at;
            let end = dashboard[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(dashboard.len(), |n| start + n);
            let before = start.checked_sub(1).map(|b| bytes[b]);
            if !before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_') {
                used.insert(&dashboard[start..end]);
            }
            i = end;
        }
        assert!(used.len() >= 10, "{used:?}");
        for name in &used {
            assert!(
                declared.contains(name),
                "the dashboard uses {name}, which /metrics does not serve"
            );
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(number(2.0), "2");
        assert_eq!(number(0.25), "0.25");
    }
}

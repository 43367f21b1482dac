//! Prometheus metrics on the HTTP port: `GET /metrics`, text exposition
//! format 0.0.4.
//!
//! Almost everything is read at scrape time from what `witnessctl status
//! --local` shows for this node (its Raft state, the committed verdict,
//! each site's tally and this witness's own probe and Consul view, and —
//! on the leader — the agents and the pending failover), so a metric can
//! never disagree with `status`. What status cannot show, events between
//! two scrapes, is counted as it happens: every probe attempt by the
//! prober ([`ProbeStats`](crate::probe::ProbeStats)), and the leader's
//! lease answers and expiries, directive reports and failover timings here
//! in [`Counters`]. Counts start at zero when the process starts, as
//! Prometheus counters may.
//!
//! Names follow Prometheus conventions: the `witness_` prefix, base units
//! in the name (`_seconds`), `_total` on counters, one metric per meaning
//! with the variable part in labels (`site`, `target`, `state`, …), and
//! histograms as `_bucket{le=…}` (cumulative, ending at `+Inf`), `_sum`
//! and `_count`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use witness_proto::{RenewLeaseReply, StatusReply};

use crate::histogram::{FAILOVER_SECONDS, Histogram};
use crate::probe::{Health, LocalView, Outcome, TargetStats};
use crate::state::Cause;
use crate::state::ledger::Directive;

/// Events counted between scrapes.
#[derive(Debug, Default)]
pub struct Counters {
    // One std mutex for all of them: each event holds it for a map update,
    // never across an await, and a scrape copies the tallies out first.
    tallies: Mutex<Tallies>,
}

#[derive(Clone, Debug, Default)]
struct Tallies {
    /// Renewals answered per (site, granted).
    renewals: BTreeMap<(String, bool), u64>,
    /// Leases granted by this node as leader that ran out, per site.
    expiries: BTreeMap<String, u64>,
    /// Reports accepted or refused, per (site, role, outcome).
    reports: BTreeMap<(String, String, String), u64>,
    /// Failovers this node activated as leader, per cause label.
    failovers: BTreeMap<&'static str, FailoverTimes>,
}

/// The phases of the failovers of one cause.
#[derive(Clone, Debug)]
struct FailoverTimes {
    /// From the first decision to fail over (the drain) to the commit of
    /// the `Activate`.
    detection_to_activate: Histogram,
    /// The part of it spent waiting out the old site's leases.
    lease_wait: Histogram,
}

impl Default for FailoverTimes {
    fn default() -> Self {
        FailoverTimes {
            detection_to_activate: Histogram::new(FAILOVER_SECONDS),
            lease_wait: Histogram::new(FAILOVER_SECONDS),
        }
    }
}

/// The `cause` label of the failovers that are timed (an initial
/// activation has no detection and no lease wait).
const FAILOVER_CAUSES: [&str; 3] = ["site_down", "failback", "operator"];

fn cause_label(cause: Cause) -> &'static str {
    match cause {
        Cause::Initial => "initial",
        Cause::SiteDown => "site_down",
        Cause::Failback => "failback",
        Cause::Operator => "operator",
    }
}

impl Counters {
    fn tallies(&self) -> std::sync::MutexGuard<'_, Tallies> {
        self.tallies.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Count the leader's answer to a renewal from an agent of `site`.
    pub fn lease_answered(&self, site: &str, reply: &RenewLeaseReply) {
        *self
            .tallies()
            .renewals
            .entry((site.to_string(), reply.granted))
            .or_default() += 1;
    }

    /// Count a lease this leader granted to an agent of `site` that ran
    /// out without renewal.
    pub fn lease_expired(&self, site: &str) {
        *self.tallies().expiries.entry(site.to_string()).or_default() += 1;
    }

    /// Count an agent's report on a directive of `site` for `role`, by what
    /// became of it (`done`, `failed`, `retry`, `rejected`).
    pub fn directive_reported(&self, site: &str, role: &str, outcome: &str) {
        let key = (site.to_string(), role.to_string(), outcome.to_string());
        *self.tallies().reports.entry(key).or_default() += 1;
    }

    /// Time a failover this leader committed: `detection_to_activate` from
    /// its first decision to the commit, of which `lease_wait` waiting out
    /// the old site's leases.
    pub fn failover_activated(
        &self,
        cause: Cause,
        detection_to_activate: Duration,
        lease_wait: Duration,
    ) {
        let mut tallies = self.tallies();
        let times = tallies.failovers.entry(cause_label(cause)).or_default();
        times
            .detection_to_activate
            .observe(detection_to_activate.as_secs_f64());
        times.lease_wait.observe(lease_wait.as_secs_f64());
    }

    fn snapshot(&self) -> Tallies {
        self.tallies().clone()
    }
}

/// What one scrape reads.
pub struct Scrape<'a> {
    /// This node's `status --local`.
    pub status: &'a StatusReply,
    /// This witness's probes and Consul view (`None`: not probing yet).
    pub view: Option<&'a LocalView>,
    /// Every probe attempt so far, per `(site, target)`.
    pub probes: &'a BTreeMap<(String, String), TargetStats>,
    /// The current epoch's directives, as applied here.
    pub directives: &'a [Directive],
    pub counters: &'a Counters,
    /// The TLS material in use (`None`: insecure).
    pub tls: Option<TlsFacts>,
    /// The wall clock, for ages.
    pub now_ms: u64,
}

/// What `/metrics` says of this witness's TLS.
#[derive(Clone, Copy, Debug)]
pub struct TlsFacts {
    /// Seconds since the epoch when its own certificate expires.
    pub cert_not_after: i64,
    /// When the CA certificate expires.
    pub ca_not_after: i64,
    pub handshake_failures: u64,
}

impl TlsFacts {
    pub fn of(trust: &crate::trust::Trust) -> TlsFacts {
        let material = trust.current();
        TlsFacts {
            cert_not_after: material.own.not_after,
            ca_not_after: material.ca_not_after,
            handshake_failures: trust.handshake_failures(),
        }
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

    /// The samples of one histogram: a cumulative `_bucket` per bound with
    /// its `le` label, `+Inf` last, then `_sum` and `_count`.
    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) {
        let bucket = format!("{name}_bucket");
        for (bound, n) in h.cumulative() {
            let le = if bound.is_infinite() {
                "+Inf".to_string()
            } else {
                number(bound)
            };
            let mut all = labels.to_vec();
            all.push(("le", &le));
            self.sample(&bucket, &all, n as f64);
        }
        self.sample(&format!("{name}_sum"), labels, h.sum());
        self.sample(&format!("{name}_count"), labels, h.count() as f64);
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

/// The metrics text of one scrape.
pub fn render(scrape: &Scrape<'_>) -> String {
    let Scrape {
        status,
        view,
        probes,
        directives,
        counters,
        tls,
        now_ms,
    } = *scrape;
    let tallies = counters.snapshot();
    let mut o = Out {
        text: String::new(),
    };
    let node = status.answered_by.to_string();
    o.family(
        "witness_info",
        "gauge",
        "This witness: node id, name and cluster (always 1).",
    );
    o.sample(
        "witness_info",
        &[
            ("node", &node),
            ("name", &status.answered_by_name),
            ("cluster", &status.cluster_name),
        ],
        1.0,
    );
    // TLS: whether it is on, how long the certificates have left, and how
    // many handshakes were refused.
    o.one(
        "witness_tls_enabled",
        "gauge",
        "1 when the ports take mutual TLS; 0 when the node file says insecure = true.",
        flag(tls.is_some()),
    );
    if let Some(tls) = tls {
        o.family(
            "witness_tls_cert_expiry_seconds",
            "gauge",
            "Seconds until a certificate in use expires (negative once expired): role=peer is \
             this witness's own, role=ca the cluster CA's.",
        );
        let now_s = (now_ms / 1000) as i64;
        o.sample(
            "witness_tls_cert_expiry_seconds",
            &[("role", "peer")],
            (tls.cert_not_after - now_s) as f64,
        );
        o.sample(
            "witness_tls_cert_expiry_seconds",
            &[("role", "ca")],
            (tls.ca_not_after - now_s) as f64,
        );
        o.one(
            "witness_tls_handshake_failures_total",
            "counter",
            "TLS handshakes refused: no or bad client certificate, another CA, expired, denied, \
             timed out.",
            tls.handshake_failures as f64,
        );
    }
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
    for ((site, granted), n) in &tallies.renewals {
        let outcome = if *granted { "granted" } else { "refused" };
        o.sample(
            "witness_lease_renewals_total",
            &[("site", site), ("outcome", outcome)],
            *n as f64,
        );
    }
    o.family(
        "witness_lease_expiries_total",
        "counter",
        "Leases this node granted as leader that ran out without renewal, by site (leader only).",
    );
    let mut expiries = tallies.expiries.clone();
    for site in &status.sites {
        expiries.entry(site.name.clone()).or_default();
    }
    for (site, n) in &expiries {
        o.sample("witness_lease_expiries_total", &[("site", site)], *n as f64);
    }

    // Directives.
    o.family(
        "witness_directives",
        "gauge",
        "The current epoch's directives in each state.",
    );
    for (state, n) in super::directives::count_by_state(directives) {
        o.sample("witness_directives", &[("state", state)], n as f64);
    }
    o.family(
        "witness_directive_reports_total",
        "counter",
        "Agents' directive reports this node handled as leader, by the directive's site and \
         role and by outcome (done, failed, retry, rejected).",
    );
    for ((site, role, outcome), n) in &tallies.reports {
        o.sample(
            "witness_directive_reports_total",
            &[("site", site), ("role", role), ("outcome", outcome)],
            *n as f64,
        );
    }

    // Failovers this node activated as leader.
    let mut failovers = tallies.failovers.clone();
    for cause in FAILOVER_CAUSES {
        failovers.entry(cause).or_default();
    }
    o.family(
        "witness_failover_detection_to_activate_seconds",
        "histogram",
        "From the leader's decision to fail over (the drain) to the commit of the Activate, by \
         cause (leader only; a failover that changed leaders counts from the new leader's \
         decision).",
    );
    for (cause, times) in &failovers {
        o.histogram(
            "witness_failover_detection_to_activate_seconds",
            &[("cause", cause)],
            &times.detection_to_activate,
        );
    }
    o.family(
        "witness_failover_lease_wait_seconds",
        "histogram",
        "The part of a failover spent waiting out the old site's leases, by cause (leader only).",
    );
    for (cause, times) in &failovers {
        o.histogram(
            "witness_failover_lease_wait_seconds",
            &[("cause", cause)],
            &times.lease_wait,
        );
    }

    // Every probe attempt of this witness.
    o.family(
        "witness_probe_results_total",
        "counter",
        "This witness's probe attempts, by target and result (success, failure, timeout).",
    );
    for ((site, target), stats) in probes {
        for (outcome, n) in Outcome::ALL.iter().zip(stats.results) {
            o.sample(
                "witness_probe_results_total",
                &[
                    ("site", site),
                    ("target", target),
                    ("result", outcome.as_str()),
                ],
                n as f64,
            );
        }
    }
    o.family(
        "witness_probe_duration_seconds",
        "histogram",
        "How long this witness's probe attempts took, whatever their result (a timeout counts \
         as its whole timeout).",
    );
    for ((site, target), stats) in probes {
        o.histogram(
            "witness_probe_duration_seconds",
            &[("site", site), ("target", target)],
            &stats.duration,
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

    /// A scrape of `status()` with `counters` and no probes.
    fn text_of(counters: &Counters, view: Option<&LocalView>, probes: &Probes) -> String {
        render(&Scrape {
            status: &status(),
            view,
            probes,
            directives: &[],
            counters,
            tls: Some(TlsFacts {
                cert_not_after: 3 + 86_400,
                ca_not_after: 3 + 10 * 86_400,
                handshake_failures: 2,
            }),
            now_ms: 3_000,
        })
    }

    type Probes = BTreeMap<(String, String), TargetStats>;

    /// The families a text declares, by name, with their type.
    fn families(text: &str) -> BTreeMap<&str, &str> {
        let mut declared = BTreeMap::new();
        for rest in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
            let mut words = rest.split(' ');
            let name = words.next().expect("name");
            let kind = words.next().expect("type");
            assert!(
                declared.insert(name, kind).is_none(),
                "{name} declared twice"
            );
        }
        declared
    }

    /// The family a sample named `name` belongs to: itself, or the
    /// histogram it is a `_bucket`, `_sum` or `_count` of.
    fn family_of<'a>(declared: &BTreeMap<&str, &str>, name: &'a str) -> Option<&'a str> {
        if declared.contains_key(name) {
            return Some(name);
        }
        ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|suffix| name.strip_suffix(suffix))
            .find(|base| declared.get(base) == Some(&"histogram"))
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
        let text = text_of(&counters, None, &Probes::new());
        let has = |line: &str| text.lines().any(|l| l == line);
        assert!(has("witness_verdict_epoch 3"), "{text}");
        assert!(has("witness_verdict_active{site=\"dc-b\"} 1"), "{text}");
        assert!(has("witness_verdict_active{site=\"dc-a\"} 0"), "{text}");
        assert!(has("witness_verdict_mode{mode=\"auto\"} 1"), "{text}");
        assert!(has("witness_raft_is_leader 1"), "{text}");
        assert!(has("witness_tls_enabled 1"), "{text}");
        assert!(
            has("witness_tls_cert_expiry_seconds{role=\"peer\"} 86400"),
            "{text}"
        );
        assert!(
            has("witness_tls_cert_expiry_seconds{role=\"ca\"} 864000"),
            "{text}"
        );
        assert!(has("witness_tls_handshake_failures_total 2"), "{text}");
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
        let declared = families(&text);
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().expect("name");
            assert!(
                family_of(&declared, name).is_some(),
                "{name} sampled before its TYPE"
            );
            assert!(name.starts_with("witness_"), "{line}");
            let value = line.rsplit(' ').next().expect("value");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }

    /// The events counted between scrapes: lease expiries (every site
    /// listed, zero until one runs out), directive reports and the
    /// directives by state.
    #[test]
    fn counts_lease_expiries_and_directive_reports() {
        let counters = Counters::default();
        counters.lease_expired("dc-a");
        counters.lease_expired("dc-a");
        counters.directive_reported("dc-b", "mailstore", "done");
        counters.directive_reported("dc-b", "mailstore", "retry");
        counters.directive_reported("dc-b", "mailstore", "done");
        let text = text_of(&counters, None, &Probes::new());
        let has = |line: &str| text.lines().any(|l| l == line);
        assert!(
            has("witness_lease_expiries_total{site=\"dc-a\"} 2"),
            "{text}"
        );
        assert!(
            has("witness_lease_expiries_total{site=\"dc-b\"} 0"),
            "{text}"
        );
        assert!(
            has(
                "witness_directive_reports_total{site=\"dc-b\",role=\"mailstore\",outcome=\"done\"} 2"
            ),
            "{text}"
        );
        assert!(
            has(
                "witness_directive_reports_total{site=\"dc-b\",role=\"mailstore\",outcome=\"retry\"} 1"
            ),
            "{text}"
        );
        assert!(has("witness_directives{state=\"pending\"} 0"), "{text}");
        assert_eq!(families(&text).get("witness_directives"), Some(&"gauge"));
    }

    /// The lines of histogram `name` with labels starting `labels` (without
    /// braces), in order.
    fn histogram_lines<'t>(text: &'t str, name: &str, labels: &str) -> Vec<&'t str> {
        text.lines()
            .filter(|l| {
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| l.starts_with(&format!("{name}{s}{{{labels}")))
            })
            .collect()
    }

    /// A histogram is cumulative buckets with their `le` bound, `+Inf`
    /// last and equal to `_count`, then `_sum` and `_count`; the failover
    /// timings are per cause, every timed cause listed from the start.
    #[test]
    fn histograms_render_buckets_sum_and_count() {
        let counters = Counters::default();
        counters.failover_activated(
            Cause::SiteDown,
            Duration::from_millis(7_500),
            Duration::from_millis(4_000),
        );
        counters.failover_activated(
            Cause::SiteDown,
            Duration::from_secs(25),
            Duration::from_secs(5),
        );
        let text = text_of(&counters, None, &Probes::new());
        let name = "witness_failover_detection_to_activate_seconds";
        let lines = histogram_lines(&text, name, "cause=\"site_down\"");
        let want: Vec<String> = [
            ("1", 0),
            ("2", 0),
            ("5", 0),
            ("10", 1),
            ("15", 1),
            ("20", 1),
            ("30", 2),
            ("45", 2),
            ("60", 2),
            ("90", 2),
            ("120", 2),
            ("300", 2),
            ("600", 2),
            ("+Inf", 2),
        ]
        .iter()
        .map(|(le, n)| format!("{name}_bucket{{cause=\"site_down\",le=\"{le}\"}} {n}"))
        .chain([
            format!("{name}_sum{{cause=\"site_down\"}} 32.5"),
            format!("{name}_count{{cause=\"site_down\"}} 2"),
        ])
        .collect();
        assert_eq!(lines, want, "{text}");
        let waits = histogram_lines(
            &text,
            "witness_failover_lease_wait_seconds",
            "cause=\"site_down\"",
        );
        assert!(
            waits.contains(&"witness_failover_lease_wait_seconds_sum{cause=\"site_down\"} 9"),
            "{waits:#?}"
        );
        for cause in ["failback", "operator"] {
            let empty = histogram_lines(&text, name, &format!("cause=\"{cause}\""));
            assert_eq!(empty.len(), FAILOVER_SECONDS.len() + 3, "{text}");
            assert!(empty.iter().all(|l| l.ends_with(" 0")), "{empty:#?}");
        }
        assert_eq!(families(&text).get(name), Some(&"histogram"));
    }

    /// Every probe attempt shows in its target's results and durations.
    #[test]
    fn probe_attempts_render_as_results_and_a_duration_histogram() {
        let stats = crate::probe::ProbeStats::default();
        let ms = Duration::from_millis;
        stats.record("dc-a", "proxy", Outcome::Success, ms(3));
        stats.record("dc-a", "proxy", Outcome::Success, ms(30));
        stats.record("dc-a", "proxy", Outcome::Timeout, ms(2_000));
        let text = text_of(&Counters::default(), None, &stats.snapshot());
        let has = |line: &str| text.lines().any(|l| l == line);
        let labels = "site=\"dc-a\",target=\"proxy\"";
        for (result, n) in [("success", 2), ("failure", 0), ("timeout", 1)] {
            let line = format!("witness_probe_results_total{{{labels},result=\"{result}\"}} {n}");
            assert!(has(&line), "{line} in {text}");
        }
        for (le, n) in [
            ("0.0025", 0),
            ("0.005", 1),
            ("0.05", 2),
            ("2.5", 3),
            ("+Inf", 3),
        ] {
            let line = format!("witness_probe_duration_seconds_bucket{{{labels},le=\"{le}\"}} {n}");
            assert!(has(&line), "{line} in {text}");
        }
        assert!(
            has(&format!(
                "witness_probe_duration_seconds_sum{{{labels}}} 2.033"
            )),
            "{text}"
        );
        assert!(
            has(&format!(
                "witness_probe_duration_seconds_count{{{labels}}} 3"
            )),
            "{text}"
        );
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
        let stats = crate::probe::ProbeStats::default();
        stats.record("dc-b", "proxy", Outcome::Success, Duration::from_millis(3));
        let text = text_of(&Counters::default(), Some(&view()), &stats.snapshot());
        assert!(
            text.lines()
                .any(|l| l == "witness_consul_reading_age_seconds 2"),
            "{text}"
        );
        let declared = families(&text);
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
                family_of(&declared, name).is_some(),
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

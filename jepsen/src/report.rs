//! `timeline.html`: one self-contained page (inline CSS and SVG, nothing
//! fetched from anywhere) to read a run at 3 a.m.
//!
//! From top to bottom: the overall verdict and each checker's summary;
//! then one SVG timeline on the BOOTTIME axis (seconds since the first
//! event) with
//!
//! - fault windows shaded across the whole height, labelled in the
//!   `faults` lane, and phase markers as dashed vertical lines;
//! - the `verdict` lane: each committed activation (`e2 → dc-b`) at its
//!   proposal time, mode changes, and when each epoch was first observed;
//! - one lane per agent: its serving intervals, coloured by site;
//! - one lane per site for the outside probes: up runs as bars, down probes
//!   as ticks;
//! - the `route` lane: BIRD's best path per sample, coloured by site;
//! - one lane per witness node for client operations: a line from
//!   invocation to completion, coloured ok / fail / info;
//! - the `anomalies` lane, and a red band across the chart for each anomaly
//!   with a time.
//!
//! Every mark has an SVG `<title>`, shown on hover. Below the chart, every
//! anomaly is listed with its time and history lines.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::checker::split_brain::{probe_runs, serving_spans};
use crate::checker::{Valid, secs};
use crate::history::{DecisionKind, History, Ms, OpType};
use crate::results::Results;

/// Chart geometry.
const WIDTH: f64 = 1400.0;
const LABEL: f64 = 170.0;
const LANE: f64 = 26.0;
const TOP: f64 = 30.0;
/// Most client operations drawn (the rest are counted in a note).
const MAX_OPS: usize = 20_000;

/// Colours of sites, in `meta.sites` order, then cycled.
const SITE_COLOURS: &[&str] = &["#3b7dd8", "#2ca25f", "#9e5fd8", "#d88a3b"];

/// Escape text for XML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

struct Axis {
    t0: Ms,
    scale: f64,
}

impl Axis {
    fn x(&self, t: Ms) -> f64 {
        LABEL + (t - self.t0) * self.scale
    }
}

/// Render the page.
pub fn render(h: &History, r: &Results) -> String {
    let (t0, t1) = h.span();
    let axis = Axis {
        t0,
        scale: (WIDTH - LABEL - 20.0) / (t1 - t0).max(1.0),
    };
    let site_colour = |site: &str| -> &str {
        let i = h
            .meta
            .sites
            .iter()
            .position(|s| s == site)
            .unwrap_or_else(|| site.bytes().map(usize::from).sum::<usize>() + h.meta.sites.len());
        SITE_COLOURS[i % SITE_COLOURS.len()]
    };

    // Lanes, in order.
    let agents: Vec<String> = {
        let mut v: Vec<String> = h.meta.agents.iter().map(|a| a.name.clone()).collect();
        for (_, s) in h.serving() {
            if !v.contains(&s.agent) {
                v.push(s.agent.clone());
            }
        }
        v
    };
    let probe_sites: Vec<String> = {
        let mut v: Vec<String> = Vec::new();
        for (_, p) in h.probes() {
            if !v.contains(&p.site) {
                v.push(p.site.clone());
            }
        }
        v
    };
    let nodes: Vec<String> = {
        let mut v = h.meta.nodes.clone();
        for (_, o) in h.ops() {
            let n = o.node.clone().unwrap_or_else(|| "?".into());
            if !v.contains(&n) {
                v.push(n);
            }
        }
        v
    };
    let mut lanes: Vec<String> = vec!["faults".into(), "verdict".into()];
    lanes.extend(agents.iter().map(|a| format!("agent {a}")));
    lanes.extend(probe_sites.iter().map(|s| format!("probe {s}")));
    lanes.push("route".into());
    lanes.extend(nodes.iter().map(|n| format!("ops {n}")));
    lanes.push("anomalies".into());
    let lane_y = |name: &str| -> f64 {
        TOP + LANE * lanes.iter().position(|l| l == name).unwrap_or(0) as f64
    };
    let height = TOP + LANE * lanes.len() as f64 + 10.0;

    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    // Lane labels and separators.
    for (i, l) in lanes.iter().enumerate() {
        let y = TOP + LANE * i as f64;
        let _ = write!(
            svg,
            r##"<text x="4" y="{:.1}">{}</text><line x1="{LABEL}" x2="{WIDTH}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/>"##,
            y + LANE * 0.65,
            esc(l)
        );
    }
    // Time axis ticks.
    let span_s = (t1 - t0) / 1000.0;
    let step = [1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0]
        .into_iter()
        .find(|s| span_s / s <= 15.0)
        .unwrap_or(1200.0);
    let mut s = 0.0;
    while s <= span_s {
        let x = axis.x(t0 + s * 1000.0);
        let _ = write!(
            svg,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{TOP}" y2="{height}" stroke="#f3f3f3"/><text x="{x:.1}" y="{:.1}" text-anchor="middle" fill="#666">{s}s</text>"##,
            TOP - 8.0
        );
        s += step;
    }
    // Fault windows: shaded across, labelled in their lane.
    let fy = lane_y("faults");
    for w in h.fault_windows() {
        let x1 = axis.x(w.start_ms);
        let x2 = axis.x(w.end_ms.unwrap_or(t1));
        let colour = match w.kind.as_str() {
            "partition" => "#E9DCA0",
            "kill" | "site-death" => "#E9A4A0",
            "pause" => "#A0B1E9",
            "clock" => "#A0E9E3",
            _ => "#D8D8D8",
        };
        let mut title = format!(
            "{} {} from {} to {}",
            w.kind,
            w.targets.join(","),
            secs(w.start_ms - t0),
            w.end_ms.map_or("the end".into(), |e| secs(e - t0))
        );
        if let Some(detail) = &w.detail {
            title.push_str(&format!(": {detail}"));
        }
        let _ = write!(
            svg,
            r#"<rect x="{x1:.1}" y="{TOP}" width="{:.1}" height="{:.1}" fill="{colour}" opacity="0.35"><title>{}</title></rect><rect x="{x1:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{colour}"><title>{}</title></rect><text x="{:.1}" y="{:.1}" font-size="9">{}</text>"#,
            (x2 - x1).max(1.0),
            height - TOP,
            esc(&title),
            fy + 3.0,
            (x2 - x1).max(1.0),
            LANE - 6.0,
            esc(&title),
            x1 + 2.0,
            fy + LANE * 0.65,
            esc(&w.kind)
        );
    }
    // Phases.
    for (_, p) in h.phases() {
        let x = axis.x(p.t_ms);
        let _ = write!(
            svg,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{TOP}" y2="{height}" stroke="#555" stroke-dasharray="4 3"><title>phase {:?} at {}</title></line><text x="{:.1}" y="{:.1}" font-size="9" fill="#555">{:?}</text>"##,
            p.phase,
            secs(p.t_ms - t0),
            x + 2.0,
            TOP - 18.0,
            p.phase
        );
    }
    // Verdict lane.
    let vy = lane_y("verdict");
    for (line, d) in h.decisions() {
        let x = axis.x(d.t_ms);
        let (label, colour) = match d.kind {
            DecisionKind::Activated => (
                format!(
                    "e{} → {}",
                    d.epoch.unwrap_or(0),
                    d.site.as_deref().unwrap_or("?")
                ),
                site_colour(d.site.as_deref().unwrap_or("")),
            ),
            DecisionKind::Frozen => ("frozen".into(), "#777"),
            DecisionKind::Unfrozen => ("unfrozen".into(), "#777"),
            DecisionKind::ForcedRecovery => ("FORCED RECOVERY".into(), "#c00"),
            _ => continue,
        };
        let _ = write!(
            svg,
            r#"<path d="M{x:.1} {:.1} l5 8 l-10 0 z" fill="{colour}"><title>{} (log index {}, proposed at {}, history line {line})</title></path><text x="{:.1}" y="{:.1}" font-size="9">{}</text>"#,
            vy + 5.0,
            esc(&label),
            d.log_index,
            secs(d.t_ms - t0),
            x + 6.0,
            vy + 13.0,
            esc(&label)
        );
    }
    // Agents' serving intervals.
    for s in serving_spans(h) {
        let y = lane_y(&format!("agent {}", s.who));
        let x1 = axis.x(s.start);
        let _ = write!(
            svg,
            r#"<rect x="{x1:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"{}><title>{} serving at epoch {} ({}) from {} to {}{}</title></rect>"#,
            y + 5.0,
            (axis.x(s.end) - x1).max(1.0),
            LANE - 10.0,
            site_colour(&s.site),
            if s.inferred_end {
                r#" opacity="0.5""#
            } else {
                ""
            },
            esc(&s.who),
            s.epoch,
            esc(&s.site),
            secs(s.start - t0),
            secs(s.end - t0),
            if s.inferred_end {
                " (end inferred: the log stops)"
            } else {
                ""
            }
        );
    }
    for (_, c) in h.serving() {
        if c.state == crate::history::ServingState::Fenced {
            let x = axis.x(c.t_ms);
            let y = lane_y(&format!("agent {}", c.agent));
            let _ = write!(
                svg,
                r##"<text x="{x:.1}" y="{:.1}" fill="#c00" font-size="10">✕<title>{} fenced at {} (epoch {}): {}</title></text>"##,
                y + LANE * 0.7,
                esc(&c.agent),
                secs(c.t_ms - t0),
                c.epoch,
                esc(&c.reason)
            );
        }
    }
    // Probes.
    for run in probe_runs(h) {
        let y = lane_y(&format!("probe {}", run.site));
        let x1 = axis.x(run.start);
        let _ = write!(
            svg,
            r#"<rect x="{x1:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{} answered from {} to {}</title></rect>"#,
            y + 8.0,
            (axis.x(run.end) - x1).max(2.0),
            LANE - 16.0,
            site_colour(&run.site),
            esc(&run.site),
            secs(run.start - t0),
            secs(run.end - t0)
        );
    }
    for (_, p) in h.probes() {
        if !p.up {
            let x = axis.x(p.t_ms);
            let y = lane_y(&format!("probe {}", p.site));
            let _ = write!(
                svg,
                r##"<line x1="{x:.1}" x2="{x:.1}" y1="{:.1}" y2="{:.1}" stroke="#bbb"><title>{} down at {}</title></line>"##,
                y + 8.0,
                y + LANE - 8.0,
                esc(&p.site),
                secs(p.t_ms - t0)
            );
        }
    }
    // Routes.
    let ry = lane_y("route");
    for (_, s) in h.routes() {
        let x = axis.x(s.t_ms);
        let (colour, what) = match &s.site {
            Some(site) => (
                site_colour(site),
                format!(
                    "{site} epoch {}",
                    s.epoch.map_or("?".into(), |e| e.to_string())
                ),
            ),
            None => ("#bbb", "no route".to_string()),
        };
        let _ = write!(
            svg,
            r#"<circle cx="{x:.1}" cy="{:.1}" r="3" fill="{colour}"><title>best path at {}: {}</title></circle>"#,
            ry + LANE / 2.0,
            secs(s.t_ms - t0),
            esc(&what)
        );
    }
    // Client operations.
    let ops = h.completed_ops();
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for c in ops.iter().take(MAX_OPS) {
        let node = c.node().unwrap_or("?").to_string();
        let k = per_node.entry(node.clone()).or_insert(0);
        *k += 1;
        let y = lane_y(&format!("ops {node}")) + 4.0 + ((c.invoke.process % 6) as f64) * 3.3;
        let end = if c.end().is_finite() { c.end() } else { t1 };
        let colour = match c.kind() {
            OpType::Ok => "#3b7dd8",
            OpType::Fail => "#e377c2",
            _ => "#ff9f1c",
        };
        let value = c
            .complete
            .and_then(|d| d.value.as_ref())
            .map(|v| serde_json::to_string(v).unwrap_or_default())
            .unwrap_or_default();
        let error = c.complete.and_then(|d| d.error.clone()).unwrap_or_default();
        let _ = write!(
            svg,
            r#"<line x1="{:.1}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="{colour}" stroke-width="3"><title>process {} {}{} via {node}: {:?} {} {} ({:.1} ms, {} → {})</title></line>"#,
            axis.x(c.start()),
            axis.x(end).max(axis.x(c.start()) + 3.0),
            c.invoke.process,
            c.f(),
            c.invoke
                .to
                .as_ref()
                .map(|t| format!(" to {t}"))
                .unwrap_or_default(),
            c.kind(),
            esc(&value),
            esc(&error),
            end - c.start(),
            secs(c.start() - t0),
            secs(end - t0)
        );
    }
    // Anomalies: a band across the chart and a mark in their lane.
    let ay = lane_y("anomalies");
    for (name, cr) in &r.checkers {
        for a in &cr.anomalies {
            let Some(at) = a.at_ms else { continue };
            let x1 = axis.x(at);
            let x2 = axis.x(a.until_ms.unwrap_or(at)).max(x1 + 2.0);
            let colour = if cr.valid == Valid::False {
                "#d62728"
            } else {
                "#ff9f1c"
            };
            let title = esc(&format!("{name}: {} (lines {:?})", a.message, a.lines));
            let _ = write!(
                svg,
                r#"<rect x="{x1:.1}" y="{TOP}" width="{:.1}" height="{:.1}" fill="{colour}" opacity="0.12"><title>{title}</title></rect><rect x="{x1:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{colour}"><title>{title}</title></rect>"#,
                x2 - x1,
                height - TOP,
                ay + 4.0,
                x2 - x1,
                LANE - 8.0
            );
        }
    }
    svg.push_str("</svg>");

    // The page.
    let mut html = String::new();
    let verdict_colour = match r.valid {
        Valid::True => "#3b7dd8",
        Valid::False => "#d62728",
        Valid::Unknown => "#ff9f1c",
    };
    let _ = write!(
        html,
        r#"<!doctype html><html><head><meta charset="utf-8"><title>{name}: valid {valid}</title><style>
body{{font-family:sans-serif;margin:16px;color:#222}} table{{border-collapse:collapse}}
td,th{{padding:3px 8px;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}}
.v-true{{color:#3b7dd8}} .v-false{{color:#d62728;font-weight:bold}} .v-unknown{{color:#ff9f1c;font-weight:bold}}
.legend span{{display:inline-block;margin-right:14px}} .sw{{display:inline-block;width:14px;height:10px;margin-right:4px;vertical-align:middle}}
.chart{{overflow-x:auto;border:1px solid #ddd}}
</style></head><body>
<h1>{name} <span style="color:{verdict_colour}">valid: {valid}</span></h1>
<p>seed {seed}; sites {sites}; nodes {nodes}; lease_ttl {ttl} ms, max_drift {drift}, margin {margin} ms; worst-case failover {worst} ms; convergence bound {conv} ms.<br>
{ops} ops ({ok} ok, {fail} fail, {info} info), {faults} faults, {failovers} failovers. Time axis: seconds since the first event (BOOTTIME {t0:.0} ms).</p>
<table><tr><th>checker</th><th>valid</th><th>summary</th></tr>"#,
        name = esc(&h.meta.name),
        valid = r.valid.name(),
        seed = h.meta.seed,
        sites = esc(&h.meta.sites.join(", ")),
        nodes = esc(&h.meta.nodes.join(", ")),
        ttl = h.meta.lease_ttl_ms,
        drift = h.meta.max_drift,
        margin = h.meta.margin_ms,
        worst = h.meta.worst_case_failover_ms,
        conv = h.meta.convergence_bound_ms,
        ops = r.counts.ops,
        ok = r.counts.ok,
        fail = r.counts.fail,
        info = r.counts.info,
        faults = r.counts.faults,
        failovers = r.counts.failovers,
    );
    for (name, cr) in &r.checkers {
        let _ = write!(
            html,
            r#"<tr><td>{name}</td><td class="v-{v}">{v}</td><td>{}</td></tr>"#,
            esc(&cr.summary),
            v = cr.valid.name()
        );
    }
    html.push_str("</table>\n<p class=\"legend\">");
    for (i, s) in h.meta.sites.iter().enumerate() {
        let _ = write!(
            html,
            r#"<span><i class="sw" style="background:{}"></i>{} (serving, probes up, route)</span>"#,
            SITE_COLOURS[i % SITE_COLOURS.len()],
            esc(s)
        );
    }
    for (colour, what) in [
        ("#3b7dd8", "op ok"),
        ("#e377c2", "op fail"),
        ("#ff9f1c", "op info / unknown"),
        ("#E9DCA0", "partition"),
        ("#E9A4A0", "kill / site death"),
        ("#A0B1E9", "pause"),
        ("#A0E9E3", "clock"),
        ("#d62728", "violation"),
    ] {
        let _ = write!(
            html,
            r#"<span><i class="sw" style="background:{colour}"></i>{what}</span>"#
        );
    }
    html.push_str(
        "<span>▲ committed decision (at proposal time)</span><span style=\"color:#c00\">✕ fenced</span> \
         <span>hover any mark for details</span></p>\n<div class=\"chart\">",
    );
    html.push_str(&svg);
    html.push_str("</div>\n<h2>Anomalies</h2>\n");
    let mut any = false;
    for (name, cr) in &r.checkers {
        if cr.anomalies.is_empty() {
            continue;
        }
        any = true;
        let _ = write!(
            html,
            r#"<h3>{name} <span class="v-{v}">{v}</span></h3><table><tr><th>at</th><th>kind</th><th>what</th><th>history lines</th></tr>"#,
            v = cr.valid.name()
        );
        for a in &cr.anomalies {
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:?}</td></tr>",
                a.at_ms.map_or("-".into(), |t| secs(t - t0)),
                esc(&a.kind),
                esc(&a.message),
                a.lines
            );
        }
        html.push_str("</table>");
        if cr.anomalies_omitted > 0 {
            let _ = write!(html, "<p>… and {} more</p>", cr.anomalies_omitted);
        }
    }
    if !any {
        html.push_str("<p>None.</p>");
    }
    if ops.len() > MAX_OPS {
        let _ = write!(
            html,
            "<p>Only the first {MAX_OPS} of {} operations are drawn.</p>",
            ops.len()
        );
    }
    for n in &r.notes {
        let _ = write!(html, "<p>note: {}</p>", esc(n));
    }
    html.push_str("</body></html>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::build::*;
    use crate::history::{NemesisAction, Phase, ServingState};

    /// The page is self-contained, escapes text, and draws every lane.
    #[test]
    fn renders_a_self_contained_timeline() {
        let h = history(vec![
            vec![
                activated(0.0, 1, 1, "dc-a"),
                serving(10.0, "mbox-a", "dc-a", ServingState::Serving, 1),
                serving(900.0, "mbox-a", "dc-a", ServingState::Fenced, 1),
                probe(20.0, "dc-a", true),
                probe(40.0, "dc-a", false),
                route(30.0, Some("dc-a"), Some(1)),
                nemesis(100.0, NemesisAction::Start, "partition", &["w1<w2"]),
                nemesis(500.0, NemesisAction::Stop, "partition", &[]),
                phase(600.0, Phase::Heal),
            ],
            read(50.0, 60.0, 1, "w1", "dc-b", 9),
        ]);
        let r = Results::compute(&h, &[]);
        let html = render(&h, &r);
        assert!(html.contains("<svg") && html.contains("</html>"));
        assert!(
            !html.contains("src=") && !html.contains("href="),
            "nothing fetched"
        );
        assert!(html.contains("w1&lt;w2"), "targets are escaped");
        for lane in ["agent mbox-a", "probe dc-a", "route", "ops w1", "anomalies"] {
            assert!(html.contains(lane), "{lane}");
        }
        assert!(html.contains("not-linearizable"), "anomalies are listed");
    }
}

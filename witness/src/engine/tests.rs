//! Engine tests: table-driven scenarios, then properties over random inputs.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::config::{ConsulMode, DownRule, Failback, ProbeKind, Role, TargetPolicy};
use crate::probe::{ConsulEvidence, ConsulView, TargetView};
use crate::state::{Activation, Actor, Freeze, Observation, Verdict};

const SITES: [&str; 2] = ["dc-a", "dc-b"];
const NOW_UNIX: u64 = 1_800_000_000_000;

fn policy(consul: ConsulMode) -> Policy {
    let site = |name: &str, active: bool| SitePolicy {
        name: name.into(),
        active,
        down_rule: DownRule::All,
        mail_hosts: Vec::new(),
        targets: vec![
            TargetPolicy::new("mailstore", Role::Mailstore, ProbeKind::Tcp),
            TargetPolicy::new("proxy", Role::Proxy, ProbeKind::Tcp),
        ],
    };
    let mut p = Policy {
        sites: vec![site("dc-a", true), site("dc-b", false)],
        ..Policy::default()
    };
    p.consul.mode = consul;
    p
}

/// How one witness sees one site.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum V {
    Up,
    Down,
    /// Probes down, Consul says the service is passing.
    DownConsulPassing,
    Unknown,
}

fn view(site: &str, v: V, changed_at_ms: u64) -> SiteView {
    let (health, consul) = match v {
        V::Up => (Health::Up, None),
        V::Down => (
            Health::Down,
            Some(ConsulEvidence::Critical {
                check: "c".into(),
                output: "".into(),
            }),
        ),
        V::DownConsulPassing => (Health::Down, Some(ConsulEvidence::Passing)),
        V::Unknown => (Health::Unknown, None),
    };
    SiteView {
        site: site.into(),
        health,
        changed_at_ms,
        targets: ["mailstore", "proxy"]
            .iter()
            .map(|t| TargetView {
                name: (*t).into(),
                role: (*t).into(),
                critical: true,
                health,
                consecutive: 3,
                last_error: None,
                last_latency_ms: None,
                consul: consul.clone(),
            })
            .collect(),
    }
}

fn consul_view() -> ConsulView {
    ConsulView {
        mode: "corroborate".into(),
        reachable: true,
        leader: None,
        error: None,
        fetched_at_ms: 0,
    }
}

/// A world: the committed state plus when this node applied each observation.
struct World {
    state: WitnessState,
    voters: BTreeSet<NodeId>,
    applied_at: AppliedAt,
    agents: Vec<AgentSeen>,
    now: Mono,
    activation_seen: Option<Mono>,
    up_seen: UpSeen,
}

impl World {
    fn new(consul: ConsulMode, active: Option<&str>) -> World {
        let state = WitnessState {
            policy: Some(policy(consul)),
            policy_version: 1,
            verdict: Verdict {
                active_site: active.map(str::to_string),
                epoch: u64::from(active.is_some()),
                mode: Mode::Auto,
            },
            ..WitnessState::default()
        };
        World {
            state,
            voters: BTreeSet::from([1, 2, 3]),
            applied_at: BTreeMap::new(),
            agents: vec![],
            now: Duration::from_secs(10_000),
            activation_seen: None,
            up_seen: UpSeen::new(),
        }
    }

    /// Witness `w` observes `[dc-a, dc-b]` as given, applied `age` ago.
    fn observe(&mut self, w: NodeId, views: [V; 2], age: Duration) {
        let index = 1000 + w * 10 + self.applied_at.len() as u64;
        let sites = SITES
            .iter()
            .zip(views)
            .map(|(s, v)| (s.to_string(), view(s, v, NOW_UNIX - 3_600_000)))
            .collect();
        self.state.observations.insert(
            w,
            Observation {
                witness: w,
                sites,
                consul: consul_view(),
                at_unix_ms: NOW_UNIX,
                log_index: index,
            },
        );
        self.applied_at.insert(w, (index, self.now - age));
        // Seen up, by this node, for as long as the wall-clock timestamp says.
        for (site, v) in SITES.iter().zip(views) {
            if v == V::Up {
                self.up_seen.insert(
                    (w, site.to_string()),
                    (NOW_UNIX - 3_600_000, self.now - Duration::from_secs(3600)),
                );
            } else {
                self.up_seen.remove(&(w, site.to_string()));
            }
        }
    }

    fn decide(&self) -> Decision {
        decide(&self.inputs(Duration::ZERO))
    }

    fn inputs(&self, not_before: Mono) -> Inputs<'_> {
        Inputs {
            state: &self.state,
            voters: Some(&self.voters),
            applied_at: &self.applied_at,
            agents: &self.agents,
            now: self.now,
            now_unix_ms: NOW_UNIX,
            activation_seen: self.activation_seen,
            up_seen: &self.up_seen,
            not_before,
        }
    }
}

fn activates(d: &Decision) -> Option<(&str, Cause)> {
    match d {
        Decision::Activate { to, cause, .. } => Some((to, *cause)),
        Decision::Hold { .. } => None,
    }
}

fn reasons(d: &Decision) -> String {
    match d {
        Decision::Hold { reasons, .. } => reasons.join("; "),
        Decision::Activate { reason, .. } => reason.clone(),
    }
}

const FRESH: Duration = Duration::from_secs(1);
const STALE: Duration = Duration::from_secs(7);

use V::*;

/// Scenario table: the views of three witnesses on (dc-a, dc-b), dc-a
/// active, and what the engine must decide.
#[test]
fn failover_decisions_table() {
    type Row = (&'static str, [[V; 2]; 3], Option<&'static str>);
    let rows: Vec<Row> = vec![
        (
            "all see dc-a down and dc-b up",
            [[Down, Up], [Down, Up], [Down, Up]],
            Some("dc-b"),
        ),
        (
            "a majority sees dc-a down, dc-b up",
            [[Down, Up], [Down, Up], [Up, Up]],
            Some("dc-b"),
        ),
        (
            "only one witness sees dc-a down",
            [[Down, Up], [Up, Up], [Up, Up]],
            None,
        ),
        (
            "dc-a down by all, dc-b up by only one",
            [[Down, Up], [Down, Unknown], [Down, Down]],
            None,
        ),
        (
            "the bridge is cut: each side sees the other down",
            [[Up, Down], [Down, Up], [Up, Up]],
            None,
        ),
        (
            "Consul says passing for two of three",
            [[DownConsulPassing, Up], [DownConsulPassing, Up], [Down, Up]],
            None,
        ),
        (
            "unknowns never count as down",
            [[Unknown, Up], [Unknown, Up], [Down, Up]],
            None,
        ),
    ];
    for (name, views, want) in rows {
        let mut w = World::new(ConsulMode::Corroborate, Some("dc-a"));
        for (i, v) in views.iter().enumerate() {
            w.observe(i as NodeId + 1, *v, FRESH);
        }
        let d = w.decide();
        assert_eq!(
            activates(&d).map(|(s, _)| s),
            want,
            "{name}: {}",
            reasons(&d)
        );
        if want.is_some() {
            assert_eq!(
                activates(&d).map(|(_, c)| c),
                Some(Cause::SiteDown),
                "{name}"
            );
        }
    }
}

/// Observations older than `observation_ttl`, or applied before
/// `not_before`, count as unknown: a crashed witness's last word expires.
#[test]
fn stale_observations_do_not_count() {
    let mut w = World::new(ConsulMode::Ignore, Some("dc-a"));
    w.observe(1, [Down, Up], FRESH);
    w.observe(2, [Down, Up], STALE);
    w.observe(3, [Up, Up], FRESH);
    assert_eq!(activates(&w.decide()), None, "{}", reasons(&w.decide()));
    w.observe(2, [Down, Up], FRESH);
    assert_eq!(activates(&w.decide()).map(|a| a.0), Some("dc-b"));
    // Applied before the freeze ended: does not count.
    let d = decide(&w.inputs(w.now - Duration::from_millis(500)));
    assert_eq!(activates(&d), None, "{}", reasons(&d));
}

/// Consul's veto appears in the reasons, so `witnessctl status` can say why.
#[test]
fn consul_veto_is_explained() {
    let mut w = World::new(ConsulMode::Corroborate, Some("dc-a"));
    for id in 1..=3 {
        w.observe(id, [DownConsulPassing, Up], FRESH);
    }
    let d = w.decide();
    assert_eq!(activates(&d), None);
    assert!(reasons(&d).contains("Consul"), "{}", reasons(&d));
    let t = &d.tallies()[0];
    assert_eq!(t.consul_veto, vec![1, 2, 3]);
}

/// Under `ignore`, Consul's "passing" does not matter.
#[test]
fn ignore_mode_disregards_consul() {
    let mut w = World::new(ConsulMode::Ignore, Some("dc-a"));
    for id in 1..=3 {
        w.observe(id, [DownConsulPassing, Up], FRESH);
    }
    assert_eq!(activates(&w.decide()).map(|a| a.0), Some("dc-b"));
}

/// No automatic activation while frozen.
#[test]
fn frozen_holds() {
    let mut w = World::new(ConsulMode::Ignore, Some("dc-a"));
    for id in 1..=3 {
        w.observe(id, [Down, Up], FRESH);
    }
    w.state.verdict.mode = Mode::Frozen;
    w.state.freeze = Some(Freeze {
        reason: "maintenance".into(),
        by: Actor::Operator("ops".into()),
        expires_after_ms: None,
        log_index: 5,
        at_unix_ms: NOW_UNIX,
    });
    let d = w.decide();
    assert_eq!(activates(&d), None);
    assert!(reasons(&d).contains("maintenance"), "{}", reasons(&d));
}

/// A healthy agent of the active site vetoes; an agent beside a dead
/// service does not.
#[test]
fn agent_veto_only_while_it_reports_healthy() {
    let mut w = World::new(ConsulMode::Ignore, Some("dc-a"));
    for id in 1..=3 {
        w.observe(id, [Down, Up], FRESH);
    }
    let report = |healthy: bool| AgentSeen {
        report: AgentReport {
            agent: "mbox1".into(),
            site: "dc-a".into(),
            role: "mailstore".into(),
            state: "serving".into(),
            state_for_ms: 0,
            service_healthy: healthy,
            age_ms: 0,
        },
        heard_at: w.now - Duration::from_millis(200),
    };
    w.agents = vec![report(true)];
    assert_eq!(activates(&w.decide()), None, "healthy agent vetoes");
    w.agents = vec![report(false)];
    assert_eq!(
        activates(&w.decide()).map(|a| a.0),
        Some("dc-b"),
        "unhealthy agent does not"
    );
}

/// No automatic failover within `min_failover_interval` of the last one.
#[test]
fn anti_flap_holds_after_a_recent_failover() {
    let mut w = World::new(ConsulMode::Ignore, Some("dc-a"));
    for id in 1..=3 {
        w.observe(id, [Down, Up], FRESH);
    }
    w.state.last_activation = Some(Activation {
        site: "dc-a".into(),
        epoch: 1,
        cause: Cause::SiteDown,
        log_index: 9,
        at_unix_ms: NOW_UNIX - 60_000,
    });
    let d = w.decide();
    assert_eq!(activates(&d), None);
    assert!(
        reasons(&d).contains("min_failover_interval"),
        "{}",
        reasons(&d)
    );
    // The cluster's first activation is not a failover: no anti-flap after it.
    if let Some(a) = w.state.last_activation.as_mut() {
        a.cause = Cause::Initial;
    }
    assert_eq!(activates(&w.decide()).map(|a| a.0), Some("dc-b"));
}

/// Anti-flap holds only while both clocks call the last failover recent: a
/// wall clock stepped back (the activation's timestamp in this node's
/// future) does not hold a failover once this node has known of the
/// activation for the interval, nor does a restart hold one for an
/// activation the wall clock dates long ago.
#[test]
fn anti_flap_needs_both_clocks_to_call_the_failover_recent() {
    let mut w = World::new(ConsulMode::Ignore, Some("dc-a"));
    for id in 1..=3 {
        w.observe(id, [Down, Up], FRESH);
    }
    let at = |w: &mut World, wall_ago_ms: i64, seen_ago: Duration| {
        w.state.last_activation = Some(Activation {
            site: "dc-a".into(),
            epoch: 1,
            cause: Cause::SiteDown,
            log_index: 9,
            at_unix_ms: (NOW_UNIX as i64 - wall_ago_ms) as u64,
        });
        w.activation_seen = Some(w.now - seen_ago);
        activates(&w.decide()).map(|a| a.0.to_string())
    };
    let secs = Duration::from_secs;
    assert_eq!(at(&mut w, 60_000, secs(60)), None, "recent on both clocks");
    assert_eq!(
        at(&mut w, -600_000, secs(400)),
        Some("dc-b".into()),
        "wall clock stepped back 10 min: seen 400 s ago is not recent"
    );
    assert_eq!(
        at(&mut w, 3_600_000, secs(1)),
        Some("dc-b".into()),
        "restarted a second ago: an hour ago on the wall clock is not recent"
    );
    assert_eq!(at(&mut w, -600_000, secs(1)), None, "both recent");
}

/// Failback counts how long this node has seen the home site up, not the
/// observer's wall-clock timestamp.
#[test]
fn failback_is_timed_on_this_nodes_clock() {
    let mut w = World::new(ConsulMode::Ignore, Some("dc-b"));
    for id in 1..=3 {
        w.observe(id, [Up, Up], FRESH);
    }
    if let Some(p) = w.state.policy.as_mut() {
        p.failover.failback = Failback::Auto;
        p.failover.failback_after = Duration::from_secs(600);
    }
    let seen = |w: &mut World, episode: u64, ago: Duration| {
        for id in 1..=3 {
            let changed = w.state.observations[&id].sites["dc-a"].changed_at_ms;
            let episode = if episode == 0 { changed } else { episode };
            w.up_seen
                .insert((id, "dc-a".into()), (episode, w.now - ago));
        }
        activates(&w.decide()).map(|a| a.0.to_string())
    };
    let secs = Duration::from_secs;
    assert_eq!(
        seen(&mut w, 0, secs(700)),
        Some("dc-a".into()),
        "seen up 700 s"
    );
    assert_eq!(
        seen(&mut w, 0, secs(10)),
        None,
        "up an hour by the observer's wall clock, but seen up only 10 s here"
    );
    assert_eq!(
        seen(&mut w, 42, secs(700)),
        None,
        "a different up episode than the one seen 700 s ago"
    );
}

/// The first activation needs a majority seeing the home site up; a site
/// that was never healthy is never activated.
#[test]
fn first_activation_needs_the_home_site_up() {
    let mut w = World::new(ConsulMode::Ignore, None);
    w.observe(1, [Up, Up], FRESH);
    w.observe(2, [Down, Up], FRESH);
    w.observe(3, [Unknown, Up], FRESH);
    assert_eq!(
        activates(&w.decide()),
        None,
        "dc-b is never activated first"
    );
    w.observe(3, [Up, Up], FRESH);
    assert_eq!(activates(&w.decide()), Some(("dc-a", Cause::Initial)));
}

/// `failback = auto` returns home after `failback_after` of health; manual never does.
#[test]
fn failback_only_when_auto_and_after_the_window() {
    let mut w = World::new(ConsulMode::Ignore, Some("dc-b"));
    for id in 1..=3 {
        w.observe(id, [Up, Up], FRESH);
    }
    assert_eq!(activates(&w.decide()), None, "manual by default");
    if let Some(p) = w.state.policy.as_mut() {
        p.failover.failback = Failback::Auto;
        p.failover.failback_after = Duration::from_secs(600);
    }
    assert_eq!(
        activates(&w.decide()),
        Some(("dc-a", Cause::Failback)),
        "up for an hour"
    );
    if let Some(p) = w.state.policy.as_mut() {
        p.failover.failback_after = Duration::from_secs(7200);
    }
    assert_eq!(activates(&w.decide()), None, "not up long enough");
}

/// An operator failover needs the target up by a majority, even when frozen.
#[test]
fn operator_failover_checks_the_target() {
    let mut w = World::new(ConsulMode::Ignore, Some("dc-a"));
    w.observe(1, [Up, Up], FRESH);
    w.observe(2, [Up, Down], FRESH);
    w.observe(3, [Up, Down], FRESH);
    w.state.verdict.mode = Mode::Frozen;
    let err = check_operator_failover(&w.inputs(Duration::ZERO), "dc-b").expect_err("refused");
    assert!(err.contains("1 of 3"), "{err}");
    w.observe(2, [Up, Up], FRESH);
    assert!(check_operator_failover(&w.inputs(Duration::ZERO), "dc-b").is_ok());
    assert!(
        check_operator_failover(&w.inputs(Duration::ZERO), "dc-a").is_err(),
        "already active"
    );
    assert!(
        check_operator_failover(&w.inputs(Duration::ZERO), "dc-x").is_err(),
        "unknown site"
    );
}

/// No decisions during a joint configuration.
#[test]
fn joint_configuration_holds() {
    let mut w = World::new(ConsulMode::Ignore, Some("dc-a"));
    for id in 1..=3 {
        w.observe(id, [Down, Up], FRESH);
    }
    let mut inputs = w.inputs(Duration::ZERO);
    inputs.voters = None;
    assert_eq!(activates(&decide(&inputs)), None);
}

fn any_view() -> impl Strategy<Value = V> {
    prop_oneof![Just(Up), Just(Down), Just(DownConsulPassing), Just(Unknown)]
}

fn any_mode() -> impl Strategy<Value = ConsulMode> {
    prop_oneof![
        Just(ConsulMode::Ignore),
        Just(ConsulMode::Corroborate),
        Just(ConsulMode::Require)
    ]
}

proptest! {
    /// Whatever the witnesses see: a failover happens only with a detection
    /// quorum on the active site and a majority seeing the target up; never
    /// while frozen; and never to the active site itself.
    #[test]
    fn failover_needs_both_quorums(
        views in proptest::collection::vec((any_view(), any_view(), prop_oneof![Just(FRESH), Just(STALE)]), 3),
        frozen in any::<bool>(),
        mode in any_mode(),
    ) {
        let mut w = World::new(mode, Some("dc-a"));
        for (i, (a, b, age)) in views.iter().enumerate() {
            w.observe(i as NodeId + 1, [*a, *b], *age);
        }
        if frozen {
            w.state.verdict.mode = Mode::Frozen;
        }
        let d = w.decide();
        if let Decision::Activate { to, from, tallies, .. } = &d {
            prop_assert!(!frozen);
            prop_assert_eq!(from.as_deref(), Some("dc-a"));
            prop_assert_ne!(to.as_str(), "dc-a");
            let a = tallies.iter().find(|t| t.site == "dc-a").expect("tally");
            let b = tallies.iter().find(|t| t.site == *to).expect("tally");
            prop_assert!(a.down.len() >= 2, "detection quorum");
            prop_assert!(b.up.len() >= 2, "target quorum");
            // Every counted "down" is a fresh probe-down observation.
            for wi in &a.down {
                let (_, _, age) = views[*wi as usize - 1];
                prop_assert_eq!(age, FRESH);
                prop_assert!(matches!(views[*wi as usize - 1].0, Down | DownConsulPassing));
            }
        }
    }

    /// Consul alone never causes a failover: when no probe says down, the
    /// engine never activates another site, whatever Consul reports.
    #[test]
    fn consul_alone_never_fails_over(
        views in proptest::collection::vec((prop_oneof![Just(Up), Just(Unknown)], any_view()), 3),
        mode in any_mode(),
    ) {
        let mut w = World::new(mode, Some("dc-a"));
        for (i, (a, b)) in views.iter().enumerate() {
            w.observe(i as NodeId + 1, [*a, *b], FRESH);
        }
        // Consul says everything at dc-a is critical.
        for obs in w.state.observations.values_mut() {
            if let Some(v) = obs.sites.get_mut("dc-a") {
                for t in &mut v.targets {
                    t.consul = Some(ConsulEvidence::NodeDead);
                }
            }
        }
        let d = w.decide();
        prop_assert_eq!(activates(&d), None);
    }

    /// Applying any sequence of activations, fresh or stale, keeps epochs
    /// strictly increasing, one site per epoch, and never two active sites.
    #[test]
    fn activations_keep_one_site_per_epoch(
        proposals in proptest::collection::vec((0..2usize, 0..4u64, any::<bool>(), any::<bool>()), 1..40),
    ) {
        let mut s = WitnessState { policy: Some(policy(ConsulMode::Ignore)), ..WitnessState::default() };
        let mut seen: BTreeMap<u64, String> = BTreeMap::new();
        let mut last_epoch = 0;
        for (i, (site, lag, operator, freeze)) in proposals.into_iter().enumerate() {
            if freeze {
                s.apply(i as u64 * 2, &crate::state::Request::Freeze {
                    reason: "x".into(), by: Actor::Operator("o".into()), expires_after_ms: None, at_unix_ms: 0,
                });
            }
            // A proposal made from a verdict `lag` activations old.
            let mut expected = s.verdict.clone();
            expected.epoch = expected.epoch.saturating_sub(lag);
            let req = crate::state::Request::Activate {
                site: SITES[site].into(),
                epoch: expected.epoch + 1,
                expected,
                cause: if operator { Cause::Operator } else { Cause::SiteDown },
                by: if operator { Actor::Operator("o".into()) } else { Actor::Auto },
                reason: "p".into(),
                evidence: Box::default(),
                at_unix_ms: 0,
                directives: Vec::new(),
                gates: BTreeMap::new(),
            };
            let before = s.verdict.clone();
            let resp = s.apply(i as u64 * 2 + 1, &req);
            if let crate::state::Response::Activated { site, epoch } = resp {
                prop_assert_eq!(epoch, before.epoch + 1);
                prop_assert!(epoch > last_epoch);
                prop_assert!(before.mode == Mode::Auto || operator, "frozen only allows operator activations");
                prop_assert!(seen.insert(epoch, site.clone()).is_none(), "one site per epoch");
                last_epoch = epoch;
            } else {
                prop_assert_eq!(&s.verdict.epoch, &before.epoch, "rejected changes nothing");
                prop_assert_eq!(&s.verdict.active_site, &before.active_site);
            }
        }
    }
}

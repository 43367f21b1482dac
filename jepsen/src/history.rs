//! The history of one run: what every client, agent, router, probe and
//! nemesis did, on one clock, as JSON lines (`history.jsonl`).
//!
//! The runner writes it while the test runs; [`crate::checker`] judges it
//! afterwards, and `jepsen analyze <dir>` re-judges a stored one. This
//! module is the contract between the two: the runner's author should be
//! able to write a conforming history from this page alone.
//!
//! # Time
//!
//! Every event carries `t_ms`: `CLOCK_BOOTTIME` in milliseconds, a float
//! (sub-millisecond digits are welcome, not required). Every process of a
//! run shares one kernel, hence one BOOTTIME, so times from clients,
//! agents' serving logs (`boottime_ms`), probes and the router compare
//! exactly. Wall clocks (`at_unix_ms`) are kept only where the source has
//! nothing better (committed decisions, see below); the runner converts
//! them with the offset `unix_ms − boottime_ms` it measured once at start.
//!
//! # Lines
//!
//! One JSON object per line, told apart by `"event"` (the field is not
//! called `type` because client operations keep Jepsen's `type` for their
//! invoke/ok/fail/info phase). The first line is the `meta` event; there
//! is exactly one. Lines need not be sorted by time: checkers sort what
//! they need. Unknown fields are errors (a typo must not silently disable
//! a check); empty lines are skipped.
//!
//! ```json
//! {"event":"meta","t_ms":0,"name":"partition-leader","seed":7,"sites":["dc-a","dc-b"],
//!  "nodes":["w1","w2","w3"],"agents":[{"name":"mbox-a","site":"dc-a","role":"mailstore"}],
//!  "lease_ttl_ms":3000,"max_drift":0.01,"margin_ms":1000,"worst_case_failover_ms":8000,
//!  "convergence_bound_ms":10000,"route_grace_ms":1000,"probe_interval_ms":200}
//! {"event":"op","t_ms":5001.2,"process":3,"type":"invoke","f":"read","node":"w1"}
//! {"event":"op","t_ms":5003.9,"process":3,"type":"ok","f":"read","node":"w1",
//!  "value":{"active_site":"dc-a","epoch":1,"mode":"auto"}}
//! {"event":"op","t_ms":9000,"process":4,"type":"invoke","f":"failover","node":"w2","to":"dc-b"}
//! {"event":"op","t_ms":13100,"process":4,"type":"ok","f":"failover","node":"w2","to":"dc-b","value":2}
//! {"event":"serving","t_ms":81234,"agent":"mbox-a","site":"dc-a","role":"mailstore",
//!  "state":"serving","epoch":1,"reason":"lease granted"}
//! {"event":"lease","t_ms":81240,"agent":"mbox-a","site":"dc-a","epoch":1,"sent_t_ms":81230,"ttl_ms":3000}
//! {"event":"run","t_ms":14000,"end_t_ms":14500,"agent":"mbox-b","site":"dc-b","kind":"directive",
//!  "name":"promote","id":"2/promote","epoch":2,"outcome":"ok"}
//! {"event":"probe","t_ms":14020,"site":"dc-b","up":true}
//! {"event":"route","t_ms":14030,"site":"dc-b","epoch":2}
//! {"event":"decision","t_ms":12900,"at_unix_ms":1763798412900,"log_index":41,"kind":"activated",
//!  "epoch":2,"site":"dc-b","from":"dc-a","directives":[{"name":"promote","site":"dc-b"}],"raw":{…}}
//! {"event":"nemesis","t_ms":8000,"action":"start","kind":"partition","targets":["w1"]}
//! {"event":"phase","t_ms":30000,"phase":"heal"}
//! ```
//!
//! # Events
//!
//! - **`meta`** ([`Meta`]): the run's configuration; the timers the checkers
//!   judge against. `max_drift` is a ratio as in the cluster policy
//!   (`0.01` = 1 %), not milliseconds.
//! - **`op`** ([`Op`]): a client operation in Jepsen's style. A process is
//!   one single-threaded client: it invokes, then completes with `ok` (it
//!   happened), `fail` (it certainly did not happen) or `info` (unknown: it
//!   may have happened, now or later). A process never has two operations
//!   open; after an `info` the runner continues under a new process id.
//!   `f` is `read` (`GetVerdict` against `node`, a linearizable read),
//!   `freeze`, `unfreeze` or `failover` (with `to`, on invoke and
//!   completion). Values: an ok read carries the verdict
//!   `{"active_site": "dc-a"|null, "epoch": 2, "mode": "auto"|"frozen"}`; an
//!   ok failover carries the new epoch (a number); freeze and unfreeze carry
//!   nothing or the resulting verdict. `error` is the error text of `fail`
//!   and `info`.
//! - **`serving`** ([`ServingChange`]): one line of an agent's serving log
//!   (`state_log`), with `boottime_ms` as `t_ms` and the agent's identity
//!   added.
//! - **`lease`** ([`LeaseGrant`]): a renewal the agent received: `t_ms` when
//!   the grant arrived, `sent_t_ms` when the request that earned it was
//!   sent (the agent counts the lease from there), `ttl_ms` as granted.
//! - **`run`** ([`Run`]): a hook or directive execution on an agent: `t_ms`
//!   start, `end_t_ms` end (absent when it never ended in the history, e.g.
//!   the agent was killed). `kind` is `activate_hook` or `directive`;
//!   directives have `id` (`<epoch>/<name>`) and `best_effort`.
//! - **`probe`** ([`Probe`]): the harness probing a site's fenced service
//!   from outside: up or down at `t_ms`.
//! - **`route`** ([`RouteSample`]): the router's best path for the VIP as BIRD
//!   reported it at `t_ms`: a site, or `null` for no route, and the epoch
//!   its MED encodes.
//! - **`decision`** ([`Decision`]): one record of the committed history
//!   read at the end (`witnessctl history --output json`). `raw` keeps the
//!   record as the witness wrote it; [`Decision::from_record`] parses the
//!   fields. `t_ms` is the record's `at_unix_ms` converted to BOOTTIME: the
//!   *proposer's* clock at proposal time: a lower bound of the commit
//!   (a commit happens at or after it, never before), nothing more.
//!   `directives` lists an Activate's planned directives (from the
//!   policy or `witnessctl directives list`), because the history record
//!   does not carry them.
//! - **`nemesis`** ([`NemesisEvent`]): a fault starting or stopping. A stop
//!   ends the open starts of the same `kind` (and `id`, when given).
//!   `site-death` (targets: the site) is what the liveness checker keys on.
//!   `consul-lies` (targets: the site lied about) names its lie in `detail`,
//!   first word `services-critical`, `nodes-failed` or `passing-while-dead`;
//!   the `failover_cause` checker keys on that word.
//! - **`phase`** ([`PhaseMark`]): `quiet`, `faults`, `heal`, `recover`,
//!   `final`, each marking when that phase began.
//!
//! # Reading
//!
//! [`History::read`] accepts a torn last line (no final newline and not
//! valid JSON: the runner crashed mid-write) and records a note; any other
//! bad line is an error naming `file:line` and what is wrong with it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Milliseconds on `CLOCK_BOOTTIME`.
pub type Ms = f64;

/// A reading error: where, and what to fix.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The file could not be read at all.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// One line is not a valid event.
    #[error("{path}:{line}: {what}")]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        what: String,
    },
    /// The history has no `meta` event, or more than one.
    #[error("{path}: {what}")]
    Meta {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
}

/// One agent of the run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentMeta {
    pub name: String,
    pub site: String,
    /// `mailstore` or `proxy`.
    pub role: String,
}

/// The run's configuration (the `meta` event).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    #[serde(default)]
    pub t_ms: Ms,
    /// Test name (workload and nemeses).
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub seed: u64,
    pub sites: Vec<String>,
    /// Witness node names, as `op.node` uses them.
    pub nodes: Vec<String>,
    #[serde(default)]
    pub agents: Vec<AgentMeta>,
    /// `lease_ttl` of the cluster policy.
    pub lease_ttl_ms: u64,
    /// `max_drift` of the cluster policy, as a ratio (0.01 = 1 %).
    pub max_drift: f64,
    /// `margin` of the cluster policy (≥ fence and watchdog timeouts).
    pub margin_ms: u64,
    /// The worst-case failover time `check-config` printed.
    pub worst_case_failover_ms: u64,
    /// After the heal, every node must read the final verdict within this.
    pub convergence_bound_ms: u64,
    /// A route sample taken less than this after an activation was known
    /// committed is not judged (BGP needs time to converge).
    #[serde(default)]
    pub route_grace_ms: u64,
    /// How often the harness probes each site; two up probes further apart
    /// than twice this are not assumed to bracket continuous service.
    #[serde(default)]
    pub probe_interval_ms: Option<u64>,
    /// Node log files, relative to the run directory.
    #[serde(default)]
    pub logs: Vec<String>,
}

impl Meta {
    /// A lease sent at `sent` for `ttl_ms` is over, in real time, by this
    /// instant: the agent counts `ttl_ms` on a clock that may run slow by
    /// `max_drift`, so it may believe in the lease until
    /// `sent + ttl / (1 − max_drift)`. The leader's lease wait
    /// (`ttl × (1+ρ)/(1−ρ) + margin`, DESIGN.md §3.4) covers exactly this.
    pub fn lease_end(&self, sent: Ms, ttl_ms: u64) -> Ms {
        let rho = self.max_drift.clamp(0.0, 0.5);
        sent + ttl_ms as f64 / (1.0 - rho)
    }
}

/// The phase of a client operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpType {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// What a client operation does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpF {
    /// `GetVerdict` (a linearizable read through the read index).
    Read,
    Freeze,
    Unfreeze,
    /// An operator failover to `to`.
    Failover,
}

impl fmt::Display for OpF {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OpF::Read => "read",
            OpF::Freeze => "freeze",
            OpF::Unfreeze => "unfreeze",
            OpF::Failover => "failover",
        })
    }
}

/// The verdict's mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Auto,
    Frozen,
}

/// The committed answer, as a read returns it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verdict {
    pub active_site: Option<String>,
    pub epoch: u64,
    pub mode: Mode,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.mode {
            Mode::Auto => "auto",
            Mode::Frozen => "frozen",
        };
        write!(
            f,
            "{}@{} {mode}",
            self.active_site.as_deref().unwrap_or("none"),
            self.epoch
        )
    }
}

/// An operation's value: a verdict (reads) or an epoch (failovers).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OpValue {
    Epoch(u64),
    Verdict(Verdict),
}

/// A client operation's invocation or completion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Op {
    pub t_ms: Ms,
    pub process: u64,
    #[serde(rename = "type")]
    pub kind: OpType,
    pub f: OpF,
    /// The witness node the client talked to.
    #[serde(default)]
    pub node: Option<String>,
    /// The failover's target site.
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub value: Option<OpValue>,
    #[serde(default)]
    pub error: Option<String>,
}

impl Op {
    /// The verdict an ok read returned.
    pub fn verdict(&self) -> Option<&Verdict> {
        match &self.value {
            Some(OpValue::Verdict(v)) => Some(v),
            _ => None,
        }
    }

    /// The epoch an ok failover returned (or a verdict's epoch).
    pub fn epoch(&self) -> Option<u64> {
        match &self.value {
            Some(OpValue::Epoch(e)) => Some(*e),
            Some(OpValue::Verdict(v)) => Some(v.epoch),
            None => None,
        }
    }
}

/// An agent's serving state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServingState {
    Starting,
    Standby,
    Serving,
    Fenced,
}

/// One line of an agent's serving log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServingChange {
    /// The log's `boottime_ms`.
    pub t_ms: Ms,
    pub agent: String,
    pub site: String,
    pub role: String,
    pub state: ServingState,
    pub epoch: u64,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub at_unix_ms: Option<u64>,
}

/// A lease renewal as the agent received it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseGrant {
    /// When the grant arrived.
    pub t_ms: Ms,
    pub agent: String,
    pub site: String,
    pub epoch: u64,
    /// When the request that earned it was sent: the lease counts from here.
    pub sent_t_ms: Ms,
    pub ttl_ms: u64,
}

/// What an agent ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    ActivateHook,
    Directive,
}

/// A hook or directive execution.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Run {
    /// Start.
    pub t_ms: Ms,
    /// End; `None` if it never ended within the history.
    #[serde(default)]
    pub end_t_ms: Option<Ms>,
    pub agent: String,
    pub site: String,
    pub kind: RunKind,
    /// The hook's or directive's name.
    pub name: String,
    /// A directive's id, `<epoch>/<name>`.
    #[serde(default)]
    pub id: Option<String>,
    pub epoch: u64,
    /// A best-effort directive (aimed at a site that may be dead).
    #[serde(default)]
    pub best_effort: bool,
    /// `ok`, `failed`, `killed`, … as the agent reported it.
    #[serde(default)]
    pub outcome: Option<String>,
}

impl Run {
    /// The directive id, made from epoch and name when not given.
    pub fn directive_id(&self) -> String {
        self.id
            .clone()
            .unwrap_or_else(|| format!("{}/{}", self.epoch, self.name))
    }
}

/// The harness probing a site's fenced service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    pub t_ms: Ms,
    pub site: String,
    pub up: bool,
    /// What was probed (free text), for the report.
    #[serde(default)]
    pub target: Option<String>,
}

/// The router's best path for the VIP.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSample {
    pub t_ms: Ms,
    /// `None`: no route.
    pub site: Option<String>,
    /// The epoch the route's MED encodes.
    #[serde(default)]
    pub epoch: Option<u64>,
}

/// What a committed decision did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    Activated,
    Frozen,
    Unfrozen,
    PolicySet,
    Directive,
    ForcedRecovery,
    Other,
}

/// A directive an Activate planned.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlannedDirective {
    pub name: String,
    #[serde(default)]
    pub site: Option<String>,
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub best_effort: bool,
}

/// One record of the committed history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    /// `at_unix_ms` on BOOTTIME: the proposer's clock at proposal time.
    pub t_ms: Ms,
    #[serde(default)]
    pub at_unix_ms: Option<u64>,
    pub log_index: u64,
    pub kind: DecisionKind,
    /// Activated: the new epoch; forced recovery: the epoch after.
    #[serde(default)]
    pub epoch: Option<u64>,
    /// Activated: the new active site.
    #[serde(default)]
    pub site: Option<String>,
    /// Activated: the previous active site.
    #[serde(default)]
    pub from: Option<String>,
    /// Directive records: the directive id; state in `state`.
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub agent: Option<String>,
    /// Activated: the planned directives.
    #[serde(default)]
    pub directives: Vec<PlannedDirective>,
    /// The record as the witness wrote it.
    #[serde(default)]
    pub raw: serde_json::Value,
}

impl Decision {
    /// Parse one record of `witnessctl history --output json` (the state
    /// machine's `HistoryRecord`: `{"log_index", "at_unix_ms", "by",
    /// "reason", "event": {"activated": {"epoch", "from", "to", …}}}`),
    /// converting `at_unix_ms` with `unix_minus_boot_ms`
    /// (`unix_ms − boottime_ms` as measured by the runner).
    pub fn from_record(
        raw: serde_json::Value,
        unix_minus_boot_ms: f64,
    ) -> Result<Decision, String> {
        let log_index = raw["log_index"]
            .as_u64()
            .ok_or("the record has no numeric log_index")?;
        let at_unix_ms = raw["at_unix_ms"]
            .as_u64()
            .ok_or("the record has no numeric at_unix_ms")?;
        let event = raw["event"]
            .as_object()
            .and_then(|o| o.iter().next())
            .map(|(k, v)| (k.clone(), v.clone()));
        let mut d = Decision {
            t_ms: at_unix_ms as f64 - unix_minus_boot_ms,
            at_unix_ms: Some(at_unix_ms),
            log_index,
            kind: DecisionKind::Other,
            epoch: None,
            site: None,
            from: None,
            id: None,
            state: None,
            agent: None,
            directives: Vec::new(),
            raw: serde_json::Value::Null,
        };
        let str_of = |v: &serde_json::Value, k: &str| v[k].as_str().map(str::to_string);
        match event {
            Some((k, v)) => match k.as_str() {
                "activated" => {
                    d.kind = DecisionKind::Activated;
                    d.epoch = v["epoch"].as_u64();
                    d.site = str_of(&v, "to");
                    d.from = str_of(&v, "from");
                    if d.epoch.is_none() || d.site.is_none() {
                        return Err("an activated record needs epoch and to".into());
                    }
                }
                "frozen" => d.kind = DecisionKind::Frozen,
                "unfrozen" => d.kind = DecisionKind::Unfrozen,
                "policy_set" => d.kind = DecisionKind::PolicySet,
                "directive" => {
                    d.kind = DecisionKind::Directive;
                    d.id = str_of(&v, "id");
                    d.state = str_of(&v, "state");
                    d.agent = str_of(&v, "agent");
                }
                "forced_recovery" => {
                    d.kind = DecisionKind::ForcedRecovery;
                    d.epoch = v["epoch_after"].as_u64();
                }
                _ => {}
            },
            None => return Err("the record has no event".into()),
        }
        d.raw = raw;
        Ok(d)
    }
}

/// Start or stop of a fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NemesisAction {
    Start,
    Stop,
}

/// A nemesis event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NemesisEvent {
    pub t_ms: Ms,
    pub action: NemesisAction,
    /// `partition`, `kill`, `pause`, `loss`, `latency`, `clock`,
    /// `site-death`, …
    pub kind: String,
    /// Nodes, agents or sites it hits.
    #[serde(default)]
    pub targets: Vec<String>,
    /// Pairs a stop with its start when several of a kind overlap.
    #[serde(default)]
    pub id: Option<u64>,
    #[serde(default)]
    pub detail: Option<String>,
}

/// The phases of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Quiet,
    Faults,
    Heal,
    Recover,
    Final,
}

/// A phase began.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseMark {
    pub t_ms: Ms,
    pub phase: Phase,
}

/// One line of the history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Meta(Meta),
    Op(Op),
    Serving(ServingChange),
    Lease(LeaseGrant),
    Run(Run),
    Probe(Probe),
    Route(RouteSample),
    Decision(Decision),
    Nemesis(NemesisEvent),
    Phase(PhaseMark),
}

impl Event {
    /// The event's time.
    pub fn t_ms(&self) -> Ms {
        match self {
            Event::Meta(e) => e.t_ms,
            Event::Op(e) => e.t_ms,
            Event::Serving(e) => e.t_ms,
            Event::Lease(e) => e.t_ms,
            Event::Run(e) => e.t_ms,
            Event::Probe(e) => e.t_ms,
            Event::Route(e) => e.t_ms,
            Event::Decision(e) => e.t_ms,
            Event::Nemesis(e) => e.t_ms,
            Event::Phase(e) => e.t_ms,
        }
    }
}

/// A fault window: a nemesis start and the stop that ended it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FaultWindow {
    pub kind: String,
    pub targets: Vec<String>,
    pub start_ms: Ms,
    /// `None`: never stopped within the history.
    pub end_ms: Option<Ms>,
    /// The start event's `detail` (e.g. which lie `consul-lies` told).
    pub detail: Option<String>,
}

/// A client operation from invocation to completion.
#[derive(Clone, Debug, PartialEq)]
pub struct Completed<'h> {
    pub invoke: &'h Op,
    /// `None`: never completed (counts as `info`).
    pub complete: Option<&'h Op>,
    /// History lines of the invocation and completion.
    pub lines: Vec<usize>,
}

impl Completed<'_> {
    /// The completion's phase; an op that never completed is `info`.
    pub fn kind(&self) -> OpType {
        self.complete.map_or(OpType::Info, |c| c.kind)
    }
    pub fn start(&self) -> Ms {
        self.invoke.t_ms
    }
    /// Completion time; `INFINITY` when it never completed.
    pub fn end(&self) -> Ms {
        self.complete.map_or(f64::INFINITY, |c| c.t_ms)
    }
    pub fn f(&self) -> OpF {
        self.invoke.f
    }
    pub fn node(&self) -> Option<&str> {
        self.invoke.node.as_deref()
    }
}

/// A whole history: the meta event, the other events in file order, and
/// the line of each.
#[derive(Clone, Debug, PartialEq)]
pub struct History {
    pub meta: Meta,
    pub events: Vec<Event>,
    /// 1-based line of each event in `events`.
    pub lines: Vec<usize>,
    /// Things worth knowing about how it was read (a torn last line).
    pub notes: Vec<String>,
}

impl History {
    /// A history from events in memory (tests, the runner): the meta event
    /// is line 1, event `i` line `i + 2`.
    pub fn new(meta: Meta, events: Vec<Event>) -> History {
        let lines = (0..events.len()).map(|i| i + 2).collect();
        History {
            meta,
            events,
            lines,
            notes: Vec::new(),
        }
    }

    /// Read `history.jsonl`.
    pub fn read(path: &Path) -> Result<History, HistoryError> {
        let text = std::fs::read_to_string(path).map_err(|source| HistoryError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        History::parse(&text, path)
    }

    /// Parse the text of a history; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<History, HistoryError> {
        let mut meta = None;
        let mut events = Vec::new();
        let mut lines = Vec::new();
        let mut notes = Vec::new();
        let torn_possible = !text.is_empty() && !text.ends_with('\n');
        let all: Vec<&str> = text.lines().collect();
        for (i, raw) in all.iter().enumerate() {
            let line = i + 1;
            if raw.trim().is_empty() {
                continue;
            }
            let event: Event = match serde_json::from_str(raw) {
                Ok(e) => e,
                Err(e) if torn_possible && i + 1 == all.len() => {
                    notes.push(format!(
                        "{}:{line}: the last line is torn (the writer stopped mid-line: {e}); \
                         it was ignored",
                        path.display()
                    ));
                    continue;
                }
                Err(e) => {
                    return Err(HistoryError::Line {
                        path: path.to_path_buf(),
                        line,
                        what: explain(raw, &e),
                    });
                }
            };
            if let Some(what) = invalid(&event) {
                return Err(HistoryError::Line {
                    path: path.to_path_buf(),
                    line,
                    what,
                });
            }
            match event {
                Event::Meta(m) => {
                    if meta.is_some() {
                        return Err(HistoryError::Line {
                            path: path.to_path_buf(),
                            line,
                            what: "a second meta event; a history has exactly one".into(),
                        });
                    }
                    meta = Some(m);
                }
                e => {
                    events.push(e);
                    lines.push(line);
                }
            }
        }
        let meta = meta.ok_or_else(|| HistoryError::Meta {
            path: path.to_path_buf(),
            what: "no meta event: the first line must be {\"event\":\"meta\",…} with the run's \
                   sites, nodes and timers"
                .into(),
        })?;
        Ok(History {
            meta,
            events,
            lines,
            notes,
        })
    }

    /// Write as JSON lines, meta first.
    pub fn to_jsonl(&self) -> String {
        let mut out = String::new();
        let meta = Event::Meta(self.meta.clone());
        for e in std::iter::once(&meta).chain(self.events.iter()) {
            // Serialising these plain types cannot fail: no maps with
            // non-string keys, no non-finite floats from serde's view.
            out.push_str(&serde_json::to_string(e).unwrap_or_default());
            out.push('\n');
        }
        out
    }

    /// Line of event `i`.
    pub fn line(&self, i: usize) -> usize {
        self.lines.get(i).copied().unwrap_or(0)
    }

    /// Events of one kind with their lines.
    pub fn ops(&self) -> impl Iterator<Item = (usize, &Op)> {
        self.iter(|e| match e {
            Event::Op(o) => Some(o),
            _ => None,
        })
    }
    pub fn serving(&self) -> impl Iterator<Item = (usize, &ServingChange)> {
        self.iter(|e| match e {
            Event::Serving(o) => Some(o),
            _ => None,
        })
    }
    pub fn leases(&self) -> impl Iterator<Item = (usize, &LeaseGrant)> {
        self.iter(|e| match e {
            Event::Lease(o) => Some(o),
            _ => None,
        })
    }
    pub fn runs(&self) -> impl Iterator<Item = (usize, &Run)> {
        self.iter(|e| match e {
            Event::Run(o) => Some(o),
            _ => None,
        })
    }
    pub fn probes(&self) -> impl Iterator<Item = (usize, &Probe)> {
        self.iter(|e| match e {
            Event::Probe(o) => Some(o),
            _ => None,
        })
    }
    pub fn routes(&self) -> impl Iterator<Item = (usize, &RouteSample)> {
        self.iter(|e| match e {
            Event::Route(o) => Some(o),
            _ => None,
        })
    }
    pub fn decisions(&self) -> impl Iterator<Item = (usize, &Decision)> {
        self.iter(|e| match e {
            Event::Decision(o) => Some(o),
            _ => None,
        })
    }
    pub fn nemeses(&self) -> impl Iterator<Item = (usize, &NemesisEvent)> {
        self.iter(|e| match e {
            Event::Nemesis(o) => Some(o),
            _ => None,
        })
    }
    pub fn phases(&self) -> impl Iterator<Item = (usize, &PhaseMark)> {
        self.iter(|e| match e {
            Event::Phase(o) => Some(o),
            _ => None,
        })
    }

    fn iter<'h, T: 'h>(
        &'h self,
        pick: impl Fn(&'h Event) -> Option<&'h T> + 'h,
    ) -> impl Iterator<Item = (usize, &'h T)> + 'h {
        self.events
            .iter()
            .enumerate()
            .filter_map(move |(i, e)| pick(e).map(|t| (self.line(i), t)))
    }

    /// Earliest and latest event time (meta excluded); `(0, 0)` if empty.
    pub fn span(&self) -> (Ms, Ms) {
        let mut lo = f64::INFINITY;
        let mut hi = f64::NEG_INFINITY;
        for e in &self.events {
            let t = e.t_ms();
            lo = lo.min(t);
            hi = hi.max(t);
            if let Event::Run(r) = e
                && let Some(end) = r.end_t_ms
            {
                hi = hi.max(end);
            }
        }
        if lo > hi { (0.0, 0.0) } else { (lo, hi) }
    }

    /// Client operations paired by process: each invocation with the next
    /// completion of the same process, in invocation order.
    pub fn completed_ops(&self) -> Vec<Completed<'_>> {
        let mut open: BTreeMap<u64, usize> = BTreeMap::new();
        let mut out: Vec<Completed<'_>> = Vec::new();
        let mut ops: Vec<(usize, &Op)> = self.ops().collect();
        // Stable: equal times keep file order (an invoke written before its
        // completion stays before it).
        ops.sort_by(|a, b| a.1.t_ms.total_cmp(&b.1.t_ms));
        for (line, op) in ops {
            match op.kind {
                OpType::Invoke => {
                    open.insert(op.process, out.len());
                    out.push(Completed {
                        invoke: op,
                        complete: None,
                        lines: vec![line],
                    });
                }
                _ => {
                    if let Some(i) = open.remove(&op.process) {
                        out[i].complete = Some(op);
                        out[i].lines.push(line);
                    }
                }
            }
        }
        out
    }

    /// Fault windows, in start order.
    pub fn fault_windows(&self) -> Vec<FaultWindow> {
        let mut ev: Vec<&NemesisEvent> = self.nemeses().map(|(_, n)| n).collect();
        ev.sort_by(|a, b| a.t_ms.total_cmp(&b.t_ms));
        let mut out: Vec<FaultWindow> = Vec::new();
        let mut open: Vec<(usize, Option<u64>)> = Vec::new();
        for n in ev {
            match n.action {
                NemesisAction::Start => {
                    open.push((out.len(), n.id));
                    out.push(FaultWindow {
                        kind: n.kind.clone(),
                        targets: n.targets.clone(),
                        start_ms: n.t_ms,
                        end_ms: None,
                        detail: n.detail.clone(),
                    });
                }
                NemesisAction::Stop => open.retain(|&(i, id)| {
                    let same = out[i].kind == n.kind && (n.id.is_none() || n.id == id);
                    if same {
                        out[i].end_ms = Some(n.t_ms);
                    }
                    !same
                }),
            }
        }
        out
    }

    /// The time the last `phase` of this kind began.
    pub fn phase_start(&self, phase: Phase) -> Option<Ms> {
        self.phases()
            .filter(|(_, p)| p.phase == phase)
            .map(|(_, p)| p.t_ms)
            .reduce(f64::max)
    }
}

/// Checks serde cannot express; `Some(what is wrong)`.
fn invalid(e: &Event) -> Option<String> {
    if !e.t_ms().is_finite() {
        return Some("t_ms is not a finite number".into());
    }
    match e {
        Event::Op(o) => {
            if o.f == OpF::Failover && o.to.is_none() {
                return Some("a failover op needs `to` (the target site)".into());
            }
            if o.kind == OpType::Ok && o.f == OpF::Read && o.verdict().is_none() {
                return Some(
                    "an ok read needs `value`: {\"active_site\", \"epoch\", \"mode\"}".into(),
                );
            }
            None
        }
        Event::Run(r) => match r.end_t_ms {
            Some(end) if end.is_nan() || end < r.t_ms => {
                Some(format!("end_t_ms {end} is before t_ms {}", r.t_ms))
            }
            _ => None,
        },
        Event::Lease(l) if !l.sent_t_ms.is_finite() || l.sent_t_ms > l.t_ms => Some(format!(
            "sent_t_ms {} must be a number no later than t_ms {} (the grant arrives after \
             its request was sent)",
            l.sent_t_ms, l.t_ms
        )),
        Event::Decision(d) if d.kind == DecisionKind::Activated => {
            if d.epoch.is_none() || d.site.is_none() {
                Some("an activated decision needs `epoch` and `site`".into())
            } else {
                None
            }
        }
        _ => None,
    }
}

/// A serde error in words that say what to fix.
fn explain(raw: &str, e: &serde_json::Error) -> String {
    let event = serde_json::from_str::<serde_json::Value>(raw)
        .ok()
        .and_then(|v| v.get("event").and_then(|t| t.as_str()).map(str::to_string));
    match event {
        Some(kind) => format!("bad `{kind}` event: {e}"),
        None if e.is_syntax() || e.is_eof() => format!("not valid JSON: {e}"),
        None => format!(
            "{e} (every line needs \"event\": one of meta, op, serving, lease, run, probe, \
             route, decision, nemesis, phase)"
        ),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A meta event with the default timers of DESIGN.md §7.
    pub(crate) fn meta() -> Meta {
        Meta {
            t_ms: 0.0,
            name: "test".into(),
            seed: 1,
            sites: vec!["dc-a".into(), "dc-b".into()],
            nodes: vec!["w1".into(), "w2".into(), "w3".into()],
            agents: vec![],
            lease_ttl_ms: 3000,
            max_drift: 0.0,
            margin_ms: 1000,
            worst_case_failover_ms: 8000,
            convergence_bound_ms: 10_000,
            route_grace_ms: 1000,
            probe_interval_ms: None,
            logs: vec![],
        }
    }

    fn meta_line() -> String {
        serde_json::to_string(&Event::Meta(meta())).expect("meta serialises")
    }

    /// Every kind of event survives a write and a read.
    #[test]
    fn round_trip() {
        let text = format!(
            "{}\n{}\n",
            meta_line(),
            [
                r#"{"event":"op","t_ms":1.5,"process":1,"type":"invoke","f":"read","node":"w1"}"#,
                r#"{"event":"op","t_ms":2,"process":1,"type":"ok","f":"read","node":"w1","value":{"active_site":"dc-a","epoch":1,"mode":"auto"}}"#,
                r#"{"event":"op","t_ms":3,"process":2,"type":"ok","f":"failover","to":"dc-b","value":2}"#,
                r#"{"event":"serving","t_ms":4,"agent":"a","site":"dc-a","role":"proxy","state":"serving","epoch":1,"reason":"x"}"#,
                r#"{"event":"lease","t_ms":5,"agent":"a","site":"dc-a","epoch":1,"sent_t_ms":4,"ttl_ms":3000}"#,
                r#"{"event":"run","t_ms":6,"end_t_ms":7,"agent":"a","site":"dc-a","kind":"directive","name":"promote","epoch":1}"#,
                r#"{"event":"probe","t_ms":8,"site":"dc-a","up":true}"#,
                r#"{"event":"route","t_ms":9,"site":null}"#,
                r#"{"event":"decision","t_ms":10,"log_index":3,"kind":"activated","epoch":1,"site":"dc-a"}"#,
                r#"{"event":"nemesis","t_ms":11,"action":"start","kind":"kill","targets":["w1"]}"#,
                r#"{"event":"phase","t_ms":12,"phase":"heal"}"#,
            ]
            .join("\n")
        );
        let h = History::parse(&text, Path::new("h.jsonl")).expect("parses");
        assert_eq!(h.events.len(), 11);
        assert_eq!(h.lines[0], 2);
        assert_eq!(h.ops().nth(2).map(|(_, o)| o.epoch()), Some(Some(2)));
        let again = History::parse(&h.to_jsonl(), Path::new("h")).expect("re-parses");
        assert_eq!(again.events, h.events);
    }

    /// A crash mid-write leaves a torn last line: tolerated, with a note.
    #[test]
    fn torn_last_line_is_a_note() {
        let text = format!("{}\n{{\"event\":\"op\",\"t_m", meta_line());
        let h = History::parse(&text, Path::new("h.jsonl")).expect("tolerated");
        assert!(h.events.is_empty());
        assert!(h.notes[0].contains("h.jsonl:2"), "{:?}", h.notes);
    }

    /// A bad line anywhere else is an error naming file, line and fault.
    #[test]
    fn bad_lines_are_located_errors() {
        let cases = [
            (
                format!("{}\n{{\"event\":\"op\",\"t_m\n", meta_line()),
                "h.jsonl:2",
                "JSON",
            ),
            (
                format!(
                    "{}\n{{\"event\":\"probe\",\"t_ms\":1,\"site\":\"a\"}}\n",
                    meta_line()
                ),
                "h.jsonl:2",
                "bad `probe` event",
            ),
            (
                format!(
                    "{}\n{{\"event\":\"probe\",\"t_ms\":1,\"site\":\"a\",\"up\":true,\"upp\":1}}\n",
                    meta_line()
                ),
                "h.jsonl:2",
                "unknown field",
            ),
            (
                format!("{}\n{{\"t_ms\":1}}\n", meta_line()),
                "h.jsonl:2",
                "every line needs",
            ),
            (
                format!(
                    "{}\n{}\n",
                    meta_line(),
                    r#"{"event":"op","t_ms":1,"process":1,"type":"invoke","f":"failover"}"#
                ),
                "h.jsonl:2",
                "needs `to`",
            ),
            (
                format!("{}\n{}\n", meta_line(), meta_line()),
                "h.jsonl:2",
                "second meta",
            ),
            ("\n".to_string(), "h.jsonl", "no meta"),
        ];
        for (text, at, what) in cases {
            let err = History::parse(&text, Path::new("h.jsonl"))
                .expect_err(&text)
                .to_string();
            assert!(err.starts_with(at), "{err}");
            assert!(err.contains(what), "{what}: {err}");
        }
    }

    /// A record of `witnessctl history --output json` parses into a decision.
    #[test]
    fn decision_from_witness_record() {
        let raw = serde_json::json!({
            "log_index": 9, "at_unix_ms": 1_000_500u64, "by": "Auto", "reason": "site down",
            "event": {"activated": {"epoch": 3, "from": "dc-a", "to": "dc-b",
                      "cause": "site_down", "evidence": {}}}
        });
        let d = Decision::from_record(raw, 1_000_000.0).expect("parses");
        assert_eq!(d.kind, DecisionKind::Activated);
        assert_eq!((d.epoch, d.site.as_deref()), (Some(3), Some("dc-b")));
        assert_eq!(d.t_ms, 500.0);
        let frozen = serde_json::json!({"log_index": 10, "at_unix_ms": 5u64, "by": "Auto",
            "reason": "", "event": {"frozen": {"expires_after_ms": null}}});
        assert_eq!(
            Decision::from_record(frozen, 0.0).map(|d| d.kind),
            Ok(DecisionKind::Frozen)
        );
        assert!(Decision::from_record(serde_json::json!({"x": 1}), 0.0).is_err());
    }

    /// Ops pair by process; fault windows pair starts with stops.
    #[test]
    fn pairing() {
        let op = |t, p, kind| {
            Event::Op(Op {
                t_ms: t,
                process: p,
                kind,
                f: OpF::Read,
                node: None,
                to: None,
                value: None,
                error: None,
            })
        };
        let nem = |t, action, kind: &str| {
            Event::Nemesis(NemesisEvent {
                t_ms: t,
                action,
                kind: kind.into(),
                targets: vec![],
                id: None,
                detail: None,
            })
        };
        let h = History::new(
            meta(),
            vec![
                op(1.0, 1, OpType::Invoke),
                op(2.0, 2, OpType::Invoke),
                op(3.0, 1, OpType::Fail),
                nem(1.0, NemesisAction::Start, "kill"),
                nem(2.0, NemesisAction::Start, "pause"),
                nem(3.0, NemesisAction::Stop, "kill"),
            ],
        );
        let c = h.completed_ops();
        assert_eq!(c.len(), 2);
        assert_eq!((c[0].kind(), c[0].end()), (OpType::Fail, 3.0));
        assert_eq!(c[1].kind(), OpType::Info);
        assert_eq!(c[0].lines, vec![2, 4]);
        let w = h.fault_windows();
        assert_eq!((w[0].end_ms, w[1].end_ms), (Some(3.0), None));
    }
}

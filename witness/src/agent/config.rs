//! [`AgentConfig`]: an agent's node-local TOML file (`agent.toml`,
//! DESIGN.md §2a).
//!
//! It says who the agent is (name, site, role), which witnesses it may
//! renew through, how long fencing may take, the local hook commands, how
//! to run the Carbonio CLI, and the watchdog. Nothing in it shapes a
//! failover decision: the lease timers, the sites and the directives are
//! cluster policy, replicated by Raft.
//!
//! It follows the witness's own files (`crate::config`) exactly: serde
//! with unknown keys refused, every error a [`ConfigError`] with
//! `file:line:column` and what to do, durations as humantime strings,
//! defaults in [`defaults`](super::defaults), and `parse` validates before
//! it returns, so an `AgentConfig` that loaded is safe to run.
//!
//! Two rules tie this file to the cluster policy and are checked where
//! both are known ([`AgentConfig::check_margin`], and by the leader, which
//! refuses leases to an agent that breaks them): `fence_timeout ≤ margin`
//! and `watchdog.timeout ≤ margin`. Within this file, the fence hooks run
//! one after the other, so their timeouts must add up to at most
//! `fence_timeout`.
//!
//! Hook commands are argv arrays with a timeout, never shell strings: a
//! string here is a parse error that says so.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::check;
use super::defaults;
use crate::config::{ConfigError, Problem, Role, TlsSection, show};
use crate::trust::{Expect, Trust};

/// An agent's configuration (`agent.toml`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// `[agent]`: identity, witnesses, fence budget.
    pub agent: AgentSection,
    /// `[hooks]`: local reactions to the agent's own state.
    #[serde(default)]
    pub hooks: HooksSection,
    /// `[carbonio]`: how a mailstore agent runs the Carbonio CLI. Only a
    /// mailstore agent may have it; absent there means all defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carbonio: Option<CarbonioSection>,
    /// `[watchdog]`: the kernel watchdog petted while a lease is held.
    #[serde(default)]
    pub watchdog: WatchdogSection,
    /// `[tls]`: this agent's certificate, key and the cluster CA, or
    /// `insecure = true`. Required: plaintext is never a default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSection>,
    /// `[[command]]`: the commands the cluster policy may order by name
    /// (`[[directives.command]]`). Nothing else is ever run for a policy.
    #[serde(rename = "command", default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<NamedCommand>,
}

/// One `[[command]]`: a program this agent runs when a failover's directive
/// names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedCommand {
    /// The name a `[[directives.command]]` of the policy uses.
    pub name: String,
    /// The program (an absolute path) and its arguments. No shell.
    pub argv: Vec<String>,
    /// After this the command's whole process group is killed.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl NamedCommand {
    /// As a hook command (the same rules and the same runner).
    pub fn as_hook(&self) -> HookCommand {
        HookCommand {
            argv: self.argv.clone(),
            timeout: self.timeout,
        }
    }
}

/// The `[agent]` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// This node's name, e.g. `mbox1`.
    pub name: String,
    /// The site it belongs to, as named in the cluster policy, e.g. `dc-a`.
    pub site: String,
    /// What it is at its site: `mailstore`, `proxy`, `mta`, …
    pub role: Role,
    /// `host:port` of every witness it may renew through. Any one will do
    /// (a follower forwards to the leader), so list them all: with only
    /// the local site's witness, a link cut between the sites would starve
    /// this agent of renewals.
    pub witnesses: Vec<String>,
    /// How long fencing may take once the lease is gone.
    #[serde(default = "defaults::fence_timeout", with = "humantime_serde")]
    pub fence_timeout: Duration,
    /// A command that exits 0 when this node's own service is healthy,
    /// reported with every renewal (`service_healthy`). A healthy report
    /// from the active site vetoes a failover, so without this key the
    /// agent reports *unhealthy*: a mere running agent never blocks one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HookCommand>,
    /// Append every change of the serving state (starting, standby,
    /// serving, fenced) to this file as one JSON line, so the serving
    /// intervals of two sites can be compared. None by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_log: Option<PathBuf>,
}

/// The `[hooks]` table: each key a list of commands run in order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HooksSection {
    /// It holds a lease at the current epoch and the epoch's gates are open.
    pub activate: Vec<HookCommand>,
    /// Its site became standby.
    pub deactivate: Vec<HookCommand>,
    /// Its lease ran out: stop serving, now.
    pub fence: Vec<HookCommand>,
    /// It regained a lease at the current epoch after fencing.
    pub unfence: Vec<HookCommand>,
}

impl HooksSection {
    /// Each hook list with its key name, in a fixed order.
    pub fn lists(&self) -> [(&'static str, &[HookCommand]); 4] {
        [
            ("activate", self.activate.as_slice()),
            ("deactivate", self.deactivate.as_slice()),
            ("fence", self.fence.as_slice()),
            ("unfence", self.unfence.as_slice()),
        ]
    }
}

/// One hook command: a program and its arguments, and how long it may run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookCommand {
    /// The program (an absolute path) and its arguments. No shell.
    pub argv: Vec<String>,
    /// After this the command's whole process group is killed.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

/// Which Carbonio CLI namespace runs the Active Replica commands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CarbonioFlavor {
    /// `carbonio ha …`: deprecated since Carbonio 25.9.0 but still there
    /// (without the warning that broke habeat), and the only form before
    /// it. The default because it works on every release.
    #[default]
    #[serde(rename = "ha")]
    Ha,
    /// `carbonio MailReplica …`: 25.9.0 and later.
    #[serde(rename = "mailreplica")]
    MailReplica,
}

/// The `[carbonio]` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CarbonioSection {
    #[serde(default)]
    pub flavor: CarbonioFlavor,
    /// The `carbonio` CLI.
    #[serde(default = "defaults::carbonio_bin")]
    pub carbonio: PathBuf,
    /// The `zmprov` CLI (flush cache).
    #[serde(default = "defaults::zmprov_bin")]
    pub zmprov: PathBuf,
    /// util-linux `runuser`, used to switch to `user`.
    #[serde(default = "defaults::runuser_bin")]
    pub runuser: PathBuf,
    /// The user the CLI runs as.
    #[serde(default = "defaults::carbonio_user")]
    pub user: String,
    /// Deadline of the synchronous promotion.
    #[serde(default = "defaults::promote_timeout", with = "humantime_serde")]
    pub promote_timeout: Duration,
    /// Deadline of every other Carbonio command.
    #[serde(default = "defaults::command_timeout", with = "humantime_serde")]
    pub command_timeout: Duration,
    /// This mailstore's own Carbonio server name: the `destination` a
    /// failback pre-flight looks for among the replicas. Default: the
    /// machine's host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mail_host: Option<String>,
}

impl Default for CarbonioSection {
    fn default() -> Self {
        CarbonioSection {
            flavor: CarbonioFlavor::default(),
            carbonio: defaults::carbonio_bin(),
            zmprov: defaults::zmprov_bin(),
            runuser: defaults::runuser_bin(),
            user: defaults::carbonio_user(),
            promote_timeout: defaults::PROMOTE_TIMEOUT,
            command_timeout: defaults::COMMAND_TIMEOUT,
            mail_host: None,
        }
    }
}

/// `watchdog.mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WatchdogMode {
    /// Refuse to start without the device.
    Required,
    /// Use the device if present; log loudly if not.
    #[default]
    Auto,
    /// Never touch it.
    Off,
}

/// The `[watchdog]` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchdogSection {
    #[serde(default)]
    pub mode: WatchdogMode,
    #[serde(default = "defaults::watchdog_device")]
    pub device: PathBuf,
    #[serde(default = "defaults::watchdog_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for WatchdogSection {
    fn default() -> Self {
        WatchdogSection {
            mode: WatchdogMode::default(),
            device: defaults::watchdog_device(),
            timeout: defaults::WATCHDOG_TIMEOUT,
        }
    }
}

impl AgentConfig {
    /// Read, parse and validate an agent file.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        AgentConfig::parse(&text, path)
    }

    /// Parse and validate `text`, read from `origin` (used in messages).
    pub fn parse(text: &str, origin: &Path) -> Result<AgentConfig, ConfigError> {
        // A syntax pass first, so a syntax error is not explained as a
        // schema one.
        toml::from_str::<toml::Table>(text).map_err(|e| parse_error(origin, text, &e, false))?;
        let mut config: AgentConfig =
            toml::from_str(text).map_err(|e| parse_error(origin, text, &e, true))?;
        if let Some(tls) = config.tls.as_mut() {
            tls.resolve_paths(origin);
        }
        config.validate().map_err(|e| e.in_file(origin))?;
        Ok(config)
    }

    /// This agent's TLS material, checked against its site and name; `None`
    /// when its file says `insecure = true`. Reads the files.
    pub fn trust(&self) -> Result<Option<std::sync::Arc<Trust>>, String> {
        let Some(files) = self.tls.as_ref().and_then(TlsSection::files) else {
            return Ok(None);
        };
        Trust::load(
            files,
            Expect::Agent {
                site: self.agent.site.clone(),
                name: self.agent.name.clone(),
            },
        )
        .map(Some)
    }

    /// Check every rule this file can check on its own; the error lists
    /// every problem found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        self.agent.check(&mut problems);
        self.check_hooks(&mut problems);
        self.check_carbonio(&mut problems);
        self.watchdog.check(&mut problems);
        self.check_commands(&mut problems);
        TlsSection::check(self.tls.as_ref(), &mut problems);
        ConfigError::from_problems(problems)
    }

    /// The rules that tie this file to the cluster policy's `margin`:
    /// fencing and the watchdog must both finish within it, or the
    /// leader's lease wait ends before a dead or slow agent has stopped
    /// serving. The leader refuses leases to an agent that breaks them.
    pub fn check_margin(&self, margin: Duration) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.agent.fence_timeout > margin {
            problems.push(Problem::new(
                "agent.fence_timeout",
                format!(
                    "fence_timeout = {} exceeds the cluster's lease.margin = {}",
                    show(self.agent.fence_timeout),
                    show(margin)
                ),
                "make the fence hooks faster and lower fence_timeout, or raise lease.margin in \
                 cluster.toml: the leader's lease wait only covers a fence that fits in margin",
            ));
        }
        if self.watchdog.mode != WatchdogMode::Off && self.watchdog.timeout > margin {
            problems.push(Problem::new(
                "watchdog.timeout",
                format!(
                    "watchdog.timeout = {} exceeds the cluster's lease.margin = {}",
                    show(self.watchdog.timeout),
                    show(margin)
                ),
                "lower watchdog.timeout or raise lease.margin in cluster.toml: a hung agent's \
                 machine must reboot before the leader's lease wait ends",
            ));
        }
        ConfigError::from_problems(problems)
    }

    /// The Carbonio settings this agent uses: `Some` (the file's table or
    /// the defaults) for a mailstore, `None` for every other role.
    pub fn carbonio(&self) -> Option<CarbonioSection> {
        (self.agent.role == Role::Mailstore).then(|| self.carbonio.clone().unwrap_or_default())
    }

    /// The effective configuration as TOML. Parses back to an equal value.
    pub fn to_toml(&self) -> String {
        // Cannot fail: strings, integers, booleans, tables and arrays only;
        // paths are written lossily and validation refuses non-UTF-8 ones.
        toml::to_string_pretty(self).expect("an AgentConfig always renders as TOML")
    }

    fn check_hooks(&self, problems: &mut Vec<Problem>) {
        for (name, list) in self.hooks.lists() {
            if list.len() > defaults::MAX_HOOK_COMMANDS {
                problems.push(Problem::new(
                    format!("hooks.{name}"),
                    format!(
                        "{} commands, more than {}",
                        list.len(),
                        defaults::MAX_HOOK_COMMANDS
                    ),
                    "wrap them in a script",
                ));
            }
            for (i, command) in list.iter().enumerate() {
                command.check(&format!("hooks.{name}[{i}]"), problems);
            }
        }
        // Fence hooks run one after the other; the fence is over only when
        // the last one is, so it is their sum that must fit.
        let total = self
            .hooks
            .fence
            .iter()
            .fold(Duration::ZERO, |sum, c| sum.saturating_add(c.timeout));
        if total > self.agent.fence_timeout {
            problems.push(Problem::new(
                "hooks.fence",
                format!(
                    "the fence hooks' timeouts add up to {}, more than agent.fence_timeout = {}",
                    show(total),
                    show(self.agent.fence_timeout)
                ),
                "lower the fence hooks' timeouts or raise fence_timeout (and lease.margin with \
                 it): fencing runs the hooks in order and must be over within fence_timeout",
            ));
        }
    }

    fn check_commands(&self, problems: &mut Vec<Problem>) {
        if self.commands.len() > defaults::MAX_HOOK_COMMANDS {
            problems.push(Problem::new(
                "command",
                format!(
                    "{} [[command]] tables, more than {}",
                    self.commands.len(),
                    defaults::MAX_HOOK_COMMANDS
                ),
                "merge commands into one script",
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, command) in self.commands.iter().enumerate() {
            let key = format!("command[{i}]");
            if let Err(why) = check::name(&command.name) {
                problems.push(Problem::new(
                    format!("{key}.name"),
                    why,
                    "use the name the policy's [[directives.command]] gives, 1-63 of \
                     [A-Za-z0-9._-]",
                ));
            } else if !seen.insert(command.name.as_str()) {
                problems.push(Problem::new(
                    format!("{key}.name"),
                    format!("command {:?} is defined twice", command.name),
                    "define each command once",
                ));
            }
            command.as_hook().check(&key, problems);
        }
    }

    /// The `[[command]]` named `name`, if this file defines it.
    pub fn command(&self, name: &str) -> Option<&NamedCommand> {
        self.commands.iter().find(|c| c.name == name)
    }

    fn check_carbonio(&self, problems: &mut Vec<Problem>) {
        let Some(carbonio) = &self.carbonio else {
            return;
        };
        if self.agent.role != Role::Mailstore {
            problems.push(Problem::new(
                "carbonio",
                format!(
                    "a [carbonio] table in the file of a {} agent",
                    self.agent.role
                ),
                "remove it: only a mailstore agent runs the Carbonio account actions",
            ));
        }
        carbonio.check(problems);
    }
}

impl AgentSection {
    fn check(&self, problems: &mut Vec<Problem>) {
        for (key, value) in [("agent.name", &self.name), ("agent.site", &self.site)] {
            if let Err(why) = check::name(value) {
                problems.push(Problem::new(key, why, "use 1-63 of [A-Za-z0-9._-]"));
            }
        }
        if self.witnesses.is_empty() {
            problems.push(Problem::new(
                "agent.witnesses",
                "no witness endpoint is listed",
                "list every witness as \"host:port\", e.g. [\"svc1.dc-a.example.com:7400\", \
                 \"svc2.dc-b.example.com:7400\", \"witness.dc-c.example.com:7400\"]",
            ));
        }
        if self.witnesses.len() > defaults::MAX_WITNESSES {
            problems.push(Problem::new(
                "agent.witnesses",
                format!(
                    "{} endpoints, more than {}",
                    self.witnesses.len(),
                    defaults::MAX_WITNESSES
                ),
                "list each witness once; a cluster has 3 or 5",
            ));
        }
        let mut seen = Vec::new();
        for (i, endpoint) in self.witnesses.iter().enumerate() {
            if let Err(why) = check::host_port(endpoint) {
                problems.push(Problem::new(
                    format!("agent.witnesses[{i}]"),
                    why,
                    "write the witness's gRPC address as host:port, e.g. \
                     \"svc1.dc-a.example.com:7400\"",
                ));
            }
            let lower = endpoint.to_ascii_lowercase();
            if seen.contains(&lower) {
                problems.push(Problem::new(
                    format!("agent.witnesses[{i}]"),
                    format!("{endpoint:?} is listed twice"),
                    "list each witness once",
                ));
            }
            seen.push(lower);
        }
        if let Some(check) = &self.health_check {
            check.check("agent.health_check", problems);
        }
        if let Some(path) = &self.state_log
            && (!path.is_absolute() || path.to_str().is_none())
        {
            problems.push(Problem::new(
                "agent.state_log",
                format!("{} is not an absolute UTF-8 path", path.display()),
                "write the log file's absolute path, e.g. \"/var/lib/witness/serving.jsonl\"",
            ));
        }
        if self.fence_timeout.is_zero() {
            problems.push(Problem::new(
                "agent.fence_timeout",
                "fence_timeout is 0",
                format!(
                    "set how long fencing may take (default \"{}\"); it must also fit in the \
                     cluster's lease.margin",
                    show(defaults::FENCE_TIMEOUT)
                ),
            ));
        }
    }
}

impl HookCommand {
    fn check(&self, key: &str, problems: &mut Vec<Problem>) {
        let argv_key = format!("{key}.argv");
        match self.argv.first() {
            None => problems.push(Problem::new(
                argv_key.clone(),
                "argv is empty",
                "put the program's absolute path first, then its arguments",
            )),
            Some(program) if !program.starts_with('/') => problems.push(Problem::new(
                argv_key.clone(),
                format!("argv[0] = {program:?} is not an absolute path"),
                "write the program's absolute path (e.g. \"/usr/bin/systemctl\"): the agent \
                 runs hooks with no shell and does not search PATH",
            )),
            Some(_) => {}
        }
        if self.argv.len() > defaults::MAX_ARGV {
            problems.push(Problem::new(
                argv_key.clone(),
                format!(
                    "argv has {} elements, more than {}",
                    self.argv.len(),
                    defaults::MAX_ARGV
                ),
                "wrap long invocations in a script",
            ));
        }
        if let Some(bad) = self
            .argv
            .iter()
            .find(|a| a.len() > defaults::MAX_ARG_LEN || a.contains('\0'))
        {
            let shown: String = bad.chars().take(40).collect();
            problems.push(Problem::new(
                argv_key,
                format!(
                    "argument {shown:?}… is longer than {} bytes or contains a NUL byte",
                    defaults::MAX_ARG_LEN
                ),
                "wrap long invocations in a script",
            ));
        }
        if self.timeout.is_zero() || self.timeout > defaults::MAX_HOOK_TIMEOUT {
            problems.push(Problem::new(
                format!("{key}.timeout"),
                format!("timeout = {} is out of range", show(self.timeout)),
                format!(
                    "set a positive duration up to {}; longer work belongs in a directive",
                    show(defaults::MAX_HOOK_TIMEOUT)
                ),
            ));
        }
    }
}

impl CarbonioSection {
    fn check(&self, problems: &mut Vec<Problem>) {
        for (key, path) in [
            ("carbonio.carbonio", &self.carbonio),
            ("carbonio.zmprov", &self.zmprov),
            ("carbonio.runuser", &self.runuser),
        ] {
            if !path.is_absolute() || path.to_str().is_none() {
                problems.push(Problem::new(
                    key,
                    format!("{} is not an absolute UTF-8 path", path.display()),
                    "write the program's absolute path, e.g. \"/opt/zextras/bin/carbonio\"",
                ));
            }
        }
        if let Err(why) = check::user(&self.user) {
            problems.push(Problem::new(
                "carbonio.user",
                why,
                "name the user Carbonio runs as (default \"zextras\")",
            ));
        }
        if let Some(host) = &self.mail_host
            && let Err(why) = check::hostname(host)
        {
            problems.push(Problem::new(
                "carbonio.mail_host",
                why,
                "write this mailstore's Carbonio server name, e.g. \"mbox2.example.com\"",
            ));
        }
        for (key, value) in [
            ("carbonio.promote_timeout", self.promote_timeout),
            ("carbonio.command_timeout", self.command_timeout),
        ] {
            if value.is_zero() || value > defaults::MAX_CARBONIO_TIMEOUT {
                problems.push(Problem::new(
                    key,
                    format!("{key} = {} is out of range", show(value)),
                    format!(
                        "set a positive duration up to {}",
                        show(defaults::MAX_CARBONIO_TIMEOUT)
                    ),
                ));
            }
        }
    }
}

impl WatchdogSection {
    fn check(&self, problems: &mut Vec<Problem>) {
        if !self.device.is_absolute() || self.device.to_str().is_none() {
            problems.push(Problem::new(
                "watchdog.device",
                format!("{} is not an absolute UTF-8 path", self.device.display()),
                "write the device's path, e.g. \"/dev/watchdog\"",
            ));
        }
        let t = self.timeout;
        if t < Duration::from_secs(1) || t > defaults::MAX_WATCHDOG_TIMEOUT || t.subsec_nanos() != 0
        {
            problems.push(Problem::new(
                "watchdog.timeout",
                format!(
                    "timeout = {} is not a whole number of seconds in range",
                    show(t)
                ),
                format!(
                    "write whole seconds from \"1s\" to \"{}\" (the kernel's watchdog API counts \
                     in seconds); it must also fit in the cluster's lease.margin",
                    show(defaults::MAX_WATCHDOG_TIMEOUT)
                ),
            ));
        }
    }
}

/// A TOML error as a located [`ConfigError::Parse`] with an agent-specific
/// hint. `schema` is false for the syntax pass.
fn parse_error(origin: &Path, text: &str, err: &toml::de::Error, schema: bool) -> ConfigError {
    let message = err.message().trim().to_string();
    let (line, column, context) = match err.span() {
        Some(span) => locate(text, span.start),
        None => (0, 0, String::new()),
    };
    ConfigError::Parse {
        path: origin.to_path_buf(),
        line,
        column,
        context,
        hint: hint_for(&message, schema),
        message,
    }
}

fn hint_for(message: &str, schema: bool) -> String {
    const EXAMPLES: &str = "deploy/examples/agent-mailstore.toml documents every key";
    if !schema {
        return "fix the TOML syntax at that position (see https://toml.io)".into();
    }
    if message.contains("unknown field") {
        let policy = ["`lease`", "`probe`", "`site`", "`failover`", "`lease_ttl`"];
        if policy
            .iter()
            .any(|k| message.contains(&format!("field {k}")))
        {
            return "lease timers, probes, sites and failover settings are cluster policy \
                    (cluster.toml, applied with `witnessctl policy apply`), not an agent's file"
                .into();
        }
        if ["`node`", "`peer`", "`raft`"]
            .iter()
            .any(|k| message.contains(&format!("field {k}")))
        {
            return "[node], [[peer]] and [raft] belong in a witness's node file, not in an \
                    agent's"
                .into();
        }
        return format!("remove the key or fix its spelling; {EXAMPLES}");
    }
    if message.contains("missing field") {
        return format!("add the key; {EXAMPLES}");
    }
    if message.contains("expected struct HookCommand") || message.contains("HookCommand") {
        return "write each hook command as a table with an argv array and a timeout, e.g. \
                { argv = [\"/usr/bin/systemctl\", \"stop\", \"carbonio-nginx\"], timeout = \"5s\" }; \
                commands are never shell strings"
            .into();
    }
    if message.contains("duration") || message.contains("time unit") {
        return "write durations as humantime strings with a unit, e.g. \"500ms\", \"5s\", \
                \"2m\""
            .into();
    }
    if message.contains("unknown variant") {
        return format!("use one of the listed values; {EXAMPLES}");
    }
    format!("fix the value at that position; {EXAMPLES}")
}

/// 1-based line and column of byte `offset`, and the offending line.
fn locate(text: &str, offset: usize) -> (usize, usize, String) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).unwrap_or("").chars().count() + 1;
    let line_text = text
        .get(line_start..)
        .and_then(|rest| rest.lines().next())
        .unwrap_or("")
        .trim();
    let shown: String = line_text.chars().take(80).collect();
    let context = if shown.is_empty() {
        String::new()
    } else {
        format!("`{shown}`")
    };
    (line, column, context)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[agent]
name = "mbox1"
site = "dc-a"
role = "mailstore"
witnesses = ["svc1.dc-a.example.com:7400", "svc2.dc-b.example.com:7400"]

[tls]
ca = "/etc/witness/tls/ca.pem"
cert = "/etc/witness/tls/agent-dc-a-mbox1.pem"
key = "/etc/witness/tls/agent-dc-a-mbox1.key"
"#;

    fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        AgentConfig::parse(text, Path::new("agent.toml"))
    }

    fn problems(text: &str) -> Vec<String> {
        match parse(text) {
            Err(e @ ConfigError::Invalid { .. }) => {
                e.problems().iter().map(|p| p.to_string()).collect()
            }
            other => panic!("expected validation problems, got {other:?}"),
        }
    }

    /// A minimal file loads, and every default comes from `defaults`.
    #[test]
    fn minimal_file_gets_the_defaults() {
        let config = parse(MINIMAL).expect("minimal config");
        assert_eq!(config.agent.role, Role::Mailstore);
        assert_eq!(config.agent.fence_timeout, defaults::FENCE_TIMEOUT);
        assert_eq!(config.hooks, HooksSection::default());
        assert_eq!(config.watchdog, WatchdogSection::default());
        assert_eq!(config.watchdog.mode, WatchdogMode::Auto);
        let carbonio = config
            .carbonio()
            .expect("a mailstore has Carbonio settings");
        assert_eq!(carbonio, CarbonioSection::default());
        assert_eq!(carbonio.user, "zextras");
        assert_eq!(carbonio.flavor, CarbonioFlavor::Ha);
    }

    /// The effective TOML parses back to the same configuration.
    #[test]
    fn to_toml_round_trips() {
        let text = format!(
            "{MINIMAL}\n[[hooks.fence]]\nargv = [\"/bin/true\"]\ntimeout = \"500ms\"\n\
             [carbonio]\nflavor = \"mailreplica\"\nmail_host = \"mbox1.example.com\"\n"
        );
        let config = parse(&text).expect("config");
        let again = parse(&config.to_toml()).expect("effective config parses");
        assert_eq!(config, again);
        assert_eq!(
            again.carbonio().map(|c| c.flavor),
            Some(CarbonioFlavor::MailReplica)
        );
    }

    /// An unknown key is an error that names the key, its line and column.
    #[test]
    fn unknown_key_is_located() {
        let text = MINIMAL.replace("role = ", "rolee = \"x\"\nrole = ");
        let err = parse(&text).expect_err("unknown key");
        let shown = err.to_string();
        match &err {
            ConfigError::Parse { line, column, .. } => {
                assert_eq!((*line, *column), (5, 1), "{shown}");
            }
            other => panic!("expected a parse error, got {other:?}"),
        }
        assert!(shown.starts_with("agent.toml:5:1:"), "{shown}");
        assert!(shown.contains("rolee"), "{shown}");
        assert!(
            shown.contains("remove the key or fix its spelling"),
            "{shown}"
        );
    }

    /// Cluster-policy keys in an agent file get a hint saying where they belong.
    #[test]
    fn policy_keys_are_sent_to_cluster_toml() {
        let text = format!("{MINIMAL}\n[lease]\nlease_ttl = \"3s\"\n");
        let shown = parse(&text).expect_err("lease in agent file").to_string();
        assert!(shown.contains("cluster policy"), "{shown}");
    }

    /// A hook written as a shell string is refused with the argv form as the fix.
    #[test]
    fn shell_string_hook_is_refused() {
        let text = format!("{MINIMAL}\n[hooks]\nfence = [\"systemctl stop carbonio-nginx\"]\n");
        let shown = parse(&text).expect_err("string hook").to_string();
        assert!(shown.contains("agent.toml:"), "{shown}");
        assert!(shown.contains("argv"), "{shown}");
        assert!(shown.contains("never shell strings"), "{shown}");
    }

    /// A duration without a unit is a parse error with the humantime hint.
    #[test]
    fn bare_number_duration_is_refused() {
        let text = MINIMAL.replace("witnesses", "fence_timeout = \"5\"\nwitnesses");
        let shown = parse(&text).expect_err("no unit").to_string();
        assert!(shown.contains("humantime"), "{shown}");
    }

    /// Every validation problem is reported at once, each with a fix.
    #[test]
    fn validation_lists_every_problem() {
        let text = r#"
[agent]
name = "mbox 1"
site = ""
role = "proxy"
witnesses = ["svc1:7400", "svc1:7400", "0.0.0.0:7400", "noport"]
fence_timeout = "1s"

[[hooks.fence]]
argv = ["birdc", "disable", "carbonio"]
timeout = "800ms"

[[hooks.fence]]
argv = ["/usr/bin/systemctl", "stop", "carbonio-nginx"]
timeout = "800ms"

[[hooks.activate]]
argv = []
timeout = "0s"

[carbonio]
mail_host = "bad host"
user = "root;id"

[watchdog]
timeout = "1500ms"
"#;
        let found = problems(text);
        let expect = [
            "agent.name:",
            "agent.site:",
            "agent.witnesses[1]: \"svc1:7400\" is listed twice",
            "agent.witnesses[2]:",
            "agent.witnesses[3]:",
            "hooks.fence[0].argv: argv[0] = \"birdc\" is not an absolute path",
            "hooks.activate[0].argv: argv is empty",
            "hooks.activate[0].timeout:",
            "hooks.fence: the fence hooks' timeouts add up to 1s 600ms",
            "carbonio: a [carbonio] table in the file of a proxy agent",
            "carbonio.mail_host:",
            "carbonio.user:",
            "watchdog.timeout:",
            "tls: there is no [tls] table",
        ];
        for e in expect {
            assert!(
                found.iter().any(|p| p.starts_with(e)),
                "missing {e:?} in {found:#?}"
            );
        }
        assert_eq!(found.len(), expect.len(), "{found:#?}");
    }

    /// A proxy agent has no Carbonio settings, even the defaults.
    #[test]
    fn only_a_mailstore_runs_carbonio() {
        let config = parse(&MINIMAL.replace("mailstore", "proxy")).expect("proxy");
        assert_eq!(config.carbonio(), None);
    }

    /// fence_timeout and the watchdog must both fit in the policy's margin.
    #[test]
    fn margin_bounds_fence_and_watchdog() {
        let text = MINIMAL.replace("witnesses", "fence_timeout = \"2s\"\nwitnesses")
            + "\n[watchdog]\ntimeout = \"3s\"\n";
        let config = parse(&text).expect("config");
        assert!(config.check_margin(Duration::from_secs(3)).is_ok());
        let err = config
            .check_margin(Duration::from_secs(1))
            .expect_err("too slow");
        let keys: Vec<_> = err.problems().iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["agent.fence_timeout", "watchdog.timeout"]);
        assert!(err.to_string().contains("lease.margin"));

        // With the watchdog off its timeout does not matter.
        let off = parse(&text.replace("timeout = \"3s\"", "mode = \"off\"\ntimeout = \"3s\""))
            .expect("config");
        assert!(off.check_margin(Duration::from_secs(2)).is_ok());
        let err = off
            .check_margin(Duration::from_secs(1))
            .expect_err("fence too slow");
        let keys: Vec<_> = err.problems().iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["agent.fence_timeout"]);
    }

    /// A file that cannot be read says which path and what to check.
    #[test]
    fn unreadable_file_names_the_path() {
        let err = AgentConfig::load(Path::new("/nonexistent/agent.toml")).expect_err("missing");
        let shown = err.to_string();
        assert!(shown.contains("/nonexistent/agent.toml"), "{shown}");
        assert!(shown.contains("check the path"), "{shown}");
    }

    /// The example files in deploy/examples/ parse and validate.
    #[test]
    fn example_files_validate() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
        let mailstore = AgentConfig::load(&dir.join("agent-mailstore.toml")).expect("mailstore");
        assert_eq!(mailstore.agent.name, "mbox1");
        assert_eq!(mailstore.agent.site, "dc-a");
        assert_eq!(mailstore.agent.role, Role::Mailstore);
        assert!(mailstore.carbonio().is_some());
        let proxy = AgentConfig::load(&dir.join("agent-proxy.toml")).expect("proxy");
        assert_eq!(proxy.agent.name, "proxy1");
        assert_eq!(proxy.agent.role, Role::Proxy);
        assert!(!proxy.hooks.fence.is_empty(), "a proxy must fence");
        for config in [&mailstore, &proxy] {
            config
                .check_margin(crate::config::defaults::MARGIN)
                .expect("examples fit the default margin");
        }
    }
}

//! The sites of the cluster policy and their probe targets (`[probe]`,
//! `[[site]]`, `[[site.target]]`; DESIGN.md §3.1).
//!
//! A site is a datacenter; each of its targets is one thing every witness
//! probes (a TCP port, an HTTP(S) URL, a gRPC health service or a local
//! command). Per target, `fail_after` consecutive failures make it down and
//! `recover_after` successes make it up; per site, `down_rule` says whether
//! `all` or `any` critical targets must be down for the site to be down from
//! one witness's vantage point. The probing itself is `crate::probe`.
//!
//! Keys that only make sense for some kinds (`url` for http, `argv` for
//! command, …) are `Option`s here and validation refuses them on the wrong
//! kind, so a typo such as `address` on an http target is an error instead of
//! a silently ignored key.

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::defaults::{self, MAX_PROBE_COUNT, MAX_PROBE_INTERVAL};
use super::error::Problem;
use super::{check, show};

/// The `[probe]` table: timers every target uses unless it overrides them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProbeDefaults {
    /// How often each target is probed.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Deadline of one probe; at most `interval`.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive failures before a target is down.
    pub fail_after: u32,
    /// Consecutive successes before a target is up.
    pub recover_after: u32,
}

impl Default for ProbeDefaults {
    fn default() -> Self {
        ProbeDefaults {
            interval: defaults::PROBE_INTERVAL,
            timeout: defaults::PROBE_TIMEOUT,
            fail_after: defaults::PROBE_FAIL_AFTER,
            recover_after: defaults::PROBE_RECOVER_AFTER,
        }
    }
}

impl ProbeDefaults {
    /// These timers as a [`ProbeTimers`] (what a target without overrides uses).
    pub fn timers(&self) -> ProbeTimers {
        ProbeTimers {
            interval: self.interval,
            timeout: self.timeout,
            fail_after: self.fail_after,
            recover_after: self.recover_after,
        }
    }
}

/// The effective timers of one target: its overrides over `[probe]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeTimers {
    pub interval: Duration,
    pub timeout: Duration,
    pub fail_after: u32,
    pub recover_after: u32,
}

impl ProbeTimers {
    /// Worst-case time from a target's death to it counting as down:
    /// `fail_after` probes `interval` apart, the last one waiting out its
    /// `timeout` (DESIGN.md §3.8).
    pub fn detection(&self) -> Duration {
        self.interval
            .saturating_mul(self.fail_after)
            .saturating_add(self.timeout)
    }

    /// `2 × interval × fail_after`: the shortest `observation_ttl` these
    /// timers allow (an observation must outlive the window it summarises).
    pub fn min_observation_ttl(&self) -> Duration {
        self.interval
            .saturating_mul(self.fail_after)
            .saturating_mul(2)
    }

    /// Push a problem for every timer rule broken; `key` is the table the
    /// values come from (`probe` or `site[dc-a].target[mbox]`).
    fn check(&self, key: &str, problems: &mut Vec<Problem>) {
        for (name, value) in [("interval", self.interval), ("timeout", self.timeout)] {
            if value.is_zero() {
                problems.push(Problem::new(
                    format!("{key}.{name}"),
                    format!("{key}.{name} is 0"),
                    "set a positive duration (defaults: interval \"500ms\", timeout \"400ms\")",
                ));
            }
        }
        if self.interval > MAX_PROBE_INTERVAL {
            problems.push(Problem::new(
                format!("{key}.interval"),
                format!(
                    "{key}.interval = {} is longer than {}",
                    show(self.interval),
                    show(MAX_PROBE_INTERVAL)
                ),
                "probe at least every 10 minutes; a slower probe makes detection meaningless",
            ));
        }
        if !self.timeout.is_zero() && self.timeout > self.interval {
            problems.push(Problem::new(
                format!("{key}.timeout"),
                format!(
                    "{key}.timeout = {} exceeds its interval = {}",
                    show(self.timeout),
                    show(self.interval)
                ),
                "make the timeout at most the interval (default 400ms of 500ms): a probe must \
                 end before the next one of the same target is due, or probes pile up",
            ));
        }
        for (name, value) in [
            ("fail_after", self.fail_after),
            ("recover_after", self.recover_after),
        ] {
            if !(1..=MAX_PROBE_COUNT).contains(&value) {
                problems.push(Problem::new(
                    format!("{key}.{name}"),
                    format!("{key}.{name} = {value} is outside 1..={MAX_PROBE_COUNT}"),
                    "count consecutive probes: fail_after default 3, recover_after default 2",
                ));
            }
        }
    }
}

/// When a site counts as down from one witness's vantage point.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DownRule {
    /// Down when every critical target is down; up while any is up. The
    /// default: the witness exists for the death of a datacenter, and
    /// one dead service in a live site is a job for that site's own HA.
    #[default]
    All,
    /// Down as soon as any critical target is down; up only while all are.
    /// For sites where losing one role (the mailstore) makes the site
    /// useless and failing over is the remedy.
    Any,
}

impl fmt::Display for DownRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DownRule::All => "all",
            DownRule::Any => "any",
        })
    }
}

/// What a target is at its site (DESIGN.md §1 "role").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Carbonio's "Mailstore & Provisioning" (habeat's `appserver`).
    Mailstore,
    Proxy,
    Mta,
    Directory,
    Consul,
    Files,
    Video,
    Other,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Mailstore => "mailstore",
            Role::Proxy => "proxy",
            Role::Mta => "mta",
            Role::Directory => "directory",
            Role::Consul => "consul",
            Role::Files => "files",
            Role::Video => "video",
            Role::Other => "other",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a target is probed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeKind {
    /// A TCP connect to `address`.
    Tcp,
    /// `GET url` over plain HTTP; `expect_status`, optional `expect_body`.
    Http,
    /// `GET url` over TLS; as http plus `tls_verify`.
    Https,
    /// The standard gRPC health check (`grpc.health.v1.Health/Check`) of
    /// `service` at `address`, plaintext (h2c).
    Grpc,
    /// Run `argv` (no shell); exit status 0 within the timeout is up.
    Command,
}

impl ProbeKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ProbeKind::Tcp => "tcp",
            ProbeKind::Http => "http",
            ProbeKind::Https => "https",
            ProbeKind::Grpc => "grpc",
            ProbeKind::Command => "command",
        }
    }
}

impl fmt::Display for ProbeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `[[site]]` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SitePolicy {
    /// The site's name, as the witnesses' `node.site` spells it: `dc-a`.
    pub name: String,
    /// Whether this site is the active one when the cluster is created.
    /// Exactly one site says `true`; after bootstrap the active site lives
    /// in the replicated verdict, and changing this key changes nothing.
    #[serde(default)]
    pub active: bool,
    /// Which critical targets must be down for the site to be down.
    #[serde(default)]
    pub down_rule: DownRule,
    /// The site's mailstores as Carbonio names them (`zmhostname`): the
    /// `source_mail_host` of a promotion away from this site.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mail_hosts: Vec<String>,
    /// `[[site.target]]`: what to probe.
    #[serde(rename = "target", default)]
    pub targets: Vec<TargetPolicy>,
}

/// One `[[site.target]]` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetPolicy {
    /// Unique within its site: `mbox1`, `proxy1`.
    pub name: String,
    pub role: Role,
    pub kind: ProbeKind,
    /// `host:port` for tcp and grpc targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The URL an http/https target gets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// http/https: the status that means up (default 200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<u16>,
    /// http/https: a substring the body must contain (within its first
    /// 64 KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_body: Option<String>,
    /// https: verify the server's certificate (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_verify: Option<bool>,
    /// grpc: the health service name (default "", the whole server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// command: the program (absolute path) and its arguments. Never a
    /// shell string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    /// Overrides of `[probe]` for this target.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub interval: Option<Duration>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_after: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recover_after: Option<u32>,
    /// Whether this target counts towards its site's health (default
    /// true). Non-critical targets are probed and shown, never decisive.
    #[serde(default = "defaults::yes")]
    pub critical: bool,
    /// The Consul service that corroborates this target (`carbonio-mailbox`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consul_service: Option<String>,
    /// The Consul check that corroborates this target, by CheckID
    /// (`service:carbonio-mailbox`) or name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consul_check: Option<String>,
    /// The Consul node the target runs on. Default: derived from the
    /// target's host the way Carbonio names nodes (see
    /// [`TargetPolicy::consul_node_name`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consul_node: Option<String>,
}

impl TargetPolicy {
    /// A target with only the required keys; every option at its default.
    pub fn new(name: &str, role: Role, kind: ProbeKind) -> TargetPolicy {
        TargetPolicy {
            name: name.to_string(),
            role,
            kind,
            address: None,
            url: None,
            expect_status: None,
            expect_body: None,
            tls_verify: None,
            service: None,
            argv: None,
            interval: None,
            timeout: None,
            fail_after: None,
            recover_after: None,
            critical: true,
            consul_service: None,
            consul_check: None,
            consul_node: None,
        }
    }

    /// The effective timers: this target's overrides over `probe`.
    pub fn timers(&self, probe: &ProbeDefaults) -> ProbeTimers {
        ProbeTimers {
            interval: self.interval.unwrap_or(probe.interval),
            timeout: self.timeout.unwrap_or(probe.timeout),
            fail_after: self.fail_after.unwrap_or(probe.fail_after),
            recover_after: self.recover_after.unwrap_or(probe.recover_after),
        }
    }

    /// The effective `expect_status` (http/https).
    pub fn expect_status(&self) -> u16 {
        self.expect_status.unwrap_or(defaults::HTTP_EXPECT_STATUS)
    }

    /// The effective `tls_verify` (https).
    pub fn tls_verify(&self) -> bool {
        self.tls_verify.unwrap_or(defaults::TLS_VERIFY)
    }

    /// The effective gRPC health service name.
    pub fn grpc_service(&self) -> &str {
        self.service.as_deref().unwrap_or(defaults::GRPC_SERVICE)
    }

    /// The host this target lives on: from `address` (tcp, grpc) or `url`
    /// (http, https); `None` for commands and unparsable values.
    pub fn host(&self) -> Option<String> {
        match self.kind {
            ProbeKind::Tcp | ProbeKind::Grpc => {
                let address = self.address.as_deref()?;
                let host = match address.strip_prefix('[') {
                    Some(rest) => rest.split_once(']')?.0,
                    None => address.rsplit_once(':')?.0,
                };
                Some(host.to_string())
            }
            ProbeKind::Http | ProbeKind::Https => {
                let url = url::Url::parse(self.url.as_deref()?).ok()?;
                let host = url.host_str()?;
                Some(
                    host.trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_string(),
                )
            }
            ProbeKind::Command => None,
        }
    }

    /// The Consul node this target runs on: `consul_node` when set,
    /// otherwise derived the way Carbonio's service-discover names nodes,
    /// `<prefix>-<hostname with every '.' replaced by '-'>`, so
    /// `mbox1.example.com` is `agent-mbox1-example-com`. The prefix is
    /// `server` for role `consul` (Consul servers run on the svc nodes and
    /// register as `server-…`) and `agent` otherwise; a target on a server
    /// node with another role sets `consul_node` itself. An IP address or
    /// a command has no name to derive from: `None`.
    pub fn consul_node_name(&self) -> Option<String> {
        if let Some(node) = &self.consul_node {
            return Some(node.clone());
        }
        let host = self.host()?;
        if host.parse::<IpAddr>().is_ok() || host.is_empty() {
            return None;
        }
        let prefix = if self.role == Role::Consul {
            "server"
        } else {
            "agent"
        };
        Some(format!(
            "{prefix}-{}",
            host.trim_end_matches('.').replace('.', "-")
        ))
    }

    /// Whether Consul has anything named to corroborate this target with.
    pub fn has_consul_mapping(&self) -> bool {
        self.consul_service.is_some() || self.consul_check.is_some()
    }

    /// Check this target alone; `key` is `site[dc-a].target[mbox]`.
    pub(crate) fn check(&self, key: &str, probe: &ProbeDefaults, problems: &mut Vec<Problem>) {
        let k = |field: &str| format!("{key}.{field}");
        if let Err(why) = check::name(&self.name) {
            problems.push(Problem::new(k("name"), why, "use 1-63 of [A-Za-z0-9._-]"));
        }
        let kind = self.kind;
        // Which of the kind-specific keys this kind accepts.
        let allowed: &[&str] = match kind {
            ProbeKind::Tcp => &["address"],
            ProbeKind::Grpc => &["address", "service"],
            ProbeKind::Http => &["url", "expect_status", "expect_body"],
            ProbeKind::Https => &["url", "expect_status", "expect_body", "tls_verify"],
            ProbeKind::Command => &["argv"],
        };
        let present = [
            ("address", self.address.is_some()),
            ("url", self.url.is_some()),
            ("expect_status", self.expect_status.is_some()),
            ("expect_body", self.expect_body.is_some()),
            ("tls_verify", self.tls_verify.is_some()),
            ("service", self.service.is_some()),
            ("argv", self.argv.is_some()),
        ];
        for (field, is_set) in present {
            if is_set && !allowed.contains(&field) {
                problems.push(Problem::new(
                    k(field),
                    format!("{field} is not a key of a {kind} target"),
                    format!(
                        "remove it; a {kind} target takes {}",
                        allowed
                            .iter()
                            .map(|a| format!("`{a}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }

        match kind {
            ProbeKind::Tcp | ProbeKind::Grpc => match &self.address {
                None => problems.push(Problem::new(
                    k("address"),
                    format!("a {kind} target needs an address"),
                    "set address = \"host:port\", e.g. \"mbox1.example.com:8080\"",
                )),
                Some(address) => {
                    if let Err(why) = check::host_port(address) {
                        problems.push(Problem::new(
                            k("address"),
                            why,
                            "write host:port, e.g. \"mbox1.example.com:8080\" or \
                             \"127.0.0.1:17101\"",
                        ));
                    }
                }
            },
            ProbeKind::Http | ProbeKind::Https => self.check_url(key, problems),
            ProbeKind::Command => self.check_argv(key, problems),
        }
        if let Some(status) = self.expect_status
            && !(100..=599).contains(&status)
        {
            problems.push(Problem::new(
                k("expect_status"),
                format!("expect_status = {status} is not an HTTP status"),
                "use a status in 100..=599 (default 200)",
            ));
        }
        if let Some(body) = &self.expect_body
            && (body.is_empty() || body.len() > defaults::MAX_EXPECT_BODY)
        {
            problems.push(Problem::new(
                k("expect_body"),
                format!(
                    "expect_body is {} bytes long; it must be 1..={}",
                    body.len(),
                    defaults::MAX_EXPECT_BODY
                ),
                "give a short substring the healthy answer contains, or remove the key",
            ));
        }
        if let Some(service) = &self.service
            && (service.len() > defaults::MAX_CONSUL_NAME_LEN
                || service.chars().any(char::is_control))
        {
            problems.push(Problem::new(
                k("service"),
                format!("service {service:?} is not a usable gRPC service name"),
                "use the fully qualified service name, e.g. \"grpc.health.v1.Health\", or \"\"",
            ));
        }

        let overrides = self.timers(probe);
        overrides.check(key, problems);

        for (field, value) in [
            ("consul_service", &self.consul_service),
            ("consul_check", &self.consul_check),
            ("consul_node", &self.consul_node),
        ] {
            if let Some(value) = value
                && let Err(why) = consul_name(value)
            {
                problems.push(Problem::new(
                    k(field),
                    why,
                    "write the name as Consul shows it, e.g. consul_service = \
                     \"carbonio-mailbox\", consul_node = \"agent-mbox1-example-com\"",
                ));
            }
        }
    }

    fn check_url(&self, key: &str, problems: &mut Vec<Problem>) {
        let k = format!("{key}.url");
        let scheme = self.kind.as_str();
        let Some(text) = &self.url else {
            problems.push(Problem::new(
                k,
                format!("a {scheme} target needs a url"),
                format!("set url = \"{scheme}://host:port/path\""),
            ));
            return;
        };
        if text.len() > defaults::MAX_URL_LEN {
            problems.push(Problem::new(
                k,
                format!(
                    "url is {} characters long, more than {}",
                    text.len(),
                    defaults::MAX_URL_LEN
                ),
                "use a shorter URL",
            ));
            return;
        }
        let url = match url::Url::parse(text) {
            Ok(url) => url,
            Err(e) => {
                problems.push(Problem::new(
                    k,
                    format!("url {text:?} is not a URL: {e}"),
                    format!("write it as \"{scheme}://host:port/path\""),
                ));
                return;
            }
        };
        if url.scheme() != scheme {
            problems.push(Problem::new(
                k,
                format!(
                    "url {text:?} has scheme {:?} but the target's kind is {scheme}",
                    url.scheme()
                ),
                format!(
                    "make them agree: kind = \"{}\" or url = \"{scheme}://…\"",
                    url.scheme()
                ),
            ));
        } else if url.host_str().is_none_or(str::is_empty) {
            problems.push(Problem::new(
                k,
                format!("url {text:?} has no host"),
                format!("write it as \"{scheme}://host:port/path\""),
            ));
        } else if !url.username().is_empty() || url.password().is_some() {
            problems.push(Problem::new(
                k,
                format!("url {text:?} carries credentials"),
                "remove them: the policy is replicated and shown by `policy show`, so it must \
                 hold no secrets; probe an endpoint that needs no login",
            ));
        }
    }

    fn check_argv(&self, key: &str, problems: &mut Vec<Problem>) {
        let k = format!("{key}.argv");
        let Some(argv) = &self.argv else {
            problems.push(Problem::new(
                k,
                "a command target needs argv",
                "set argv = [\"/usr/local/bin/check-mailbox\", \"--quiet\"] (an array, no shell)",
            ));
            return;
        };
        let Some(program) = argv.first() else {
            problems.push(Problem::new(
                k,
                "argv is empty",
                "put the program's absolute path first, then its arguments",
            ));
            return;
        };
        if !program.starts_with('/') {
            problems.push(Problem::new(
                k.clone(),
                format!("argv[0] = {program:?} is not an absolute path"),
                "write the program's absolute path (e.g. \"/usr/bin/curl\"): witnesses run with \
                 a minimal PATH, and an absolute path runs the same program on every witness",
            ));
        }
        if argv.len() > defaults::MAX_ARGV {
            problems.push(Problem::new(
                k.clone(),
                format!(
                    "argv has {} elements, more than {}",
                    argv.len(),
                    defaults::MAX_ARGV
                ),
                "wrap long invocations in a script",
            ));
        }
        if let Some(bad) = argv
            .iter()
            .find(|a| a.len() > defaults::MAX_ARG_LEN || a.contains('\0'))
        {
            let shown: String = bad.chars().take(40).collect();
            problems.push(Problem::new(
                k,
                format!(
                    "argument {shown:?}… is longer than {} bytes or contains a NUL byte",
                    defaults::MAX_ARG_LEN
                ),
                "wrap long invocations in a script",
            ));
        }
    }
}

/// A Consul node, service or check name: non-empty, bounded, printable.
/// (It goes into URL paths percent-encoded, so no narrower charset is
/// needed; control characters are refused because they only come from
/// typos and would garble logs.)
pub(crate) fn consul_name(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("is empty".into());
    }
    if value.len() > defaults::MAX_CONSUL_NAME_LEN {
        return Err(format!(
            "{value:?} is {} bytes long, more than {}",
            value.len(),
            defaults::MAX_CONSUL_NAME_LEN
        ));
    }
    if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!("{value:?} contains a space or a control character"));
    }
    Ok(())
}

impl SitePolicy {
    /// `site[dc-a]`, or `site[3]` when the name is unusable.
    pub(crate) fn key(&self, index: usize) -> String {
        if check::name(&self.name).is_ok() {
            format!("site[{}]", self.name)
        } else {
            format!("site[{index}]")
        }
    }

    pub(crate) fn check(&self, index: usize, probe: &ProbeDefaults, problems: &mut Vec<Problem>) {
        let key = self.key(index);
        if let Err(why) = check::name(&self.name) {
            problems.push(Problem::new(
                format!("{key}.name"),
                why,
                "use the site name the witnesses' node.site uses: 1-63 of [A-Za-z0-9._-]",
            ));
        }
        for (i, host) in self.mail_hosts.iter().enumerate() {
            if let Err(why) = crate::agent::check::hostname(host) {
                problems.push(Problem::new(
                    format!("{key}.mail_hosts[{i}]"),
                    format!("{key}.mail_hosts[{i}] = {host:?}: {why}"),
                    "write the mailstore's host name as Carbonio knows it (zmhostname), e.g. \
                     \"mbox1.example.com\"",
                ));
            }
        }
        if self.targets.is_empty() {
            problems.push(Problem::new(
                format!("{key}.target"),
                format!("site {:?} has no [[site.target]]", self.name),
                "add at least one critical target (e.g. the site's mailstore), or no witness \
                 can ever see the site up or down",
            ));
            return;
        }
        if self.targets.len() > defaults::MAX_TARGETS_PER_SITE {
            problems.push(Problem::new(
                format!("{key}.target"),
                format!(
                    "site {:?} has {} targets, more than {}",
                    self.name,
                    self.targets.len(),
                    defaults::MAX_TARGETS_PER_SITE
                ),
                "probe the few services that show the site serves mail",
            ));
        }
        if !self.targets.iter().any(|t| t.critical) {
            problems.push(Problem::new(
                format!("{key}.target"),
                format!("site {:?} has no critical target", self.name),
                "mark at least one target critical = true (the default): only critical targets \
                 decide whether a site is up or down",
            ));
        }
        let mut names = HashSet::new();
        for (i, target) in self.targets.iter().enumerate() {
            let tkey = if check::name(&target.name).is_ok() {
                format!("{key}.target[{}]", target.name)
            } else {
                format!("{key}.target[{i}]")
            };
            target.check(&tkey, probe, problems);
            if !names.insert(target.name.as_str()) {
                problems.push(Problem::new(
                    format!("{tkey}.name"),
                    format!(
                        "site {:?} has two targets named {:?}",
                        self.name, target.name
                    ),
                    "give every target of a site its own name",
                ));
            }
        }
    }
}

impl ProbeDefaults {
    pub(crate) fn check(&self, problems: &mut Vec<Problem>) {
        self.timers().check("probe", problems);
    }
}

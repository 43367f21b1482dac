//! The cluster policy (`cluster.toml`): everything that shapes a decision,
//! replicated in the Raft log so every witness decides from the same values:
//! lease timers, probe timers, the sites and their targets, the Consul
//! policy and the failover settings. Directives come later.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::consul::ConsulPolicy;
use super::defaults::{self, MAX_DRIFT_LIMIT, MAX_SITES, RENEWALS_PER_LEASE};
use super::directives::DirectivesPolicy;
use super::error::{ConfigError, FileKind, Problem};
use super::failover::FailoverPolicy;
use super::sites::{ProbeDefaults, SitePolicy};
use super::{from_toml, show};

/// The cluster policy. Stored in the Raft log as JSON, so it round-trips
/// through `serde_json` exactly (durations and the drift are strings).
///
/// Every table is optional. A policy without sites is legal (the default):
/// the witnesses form their cluster and grant nothing, decide nothing.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// `[lease]`: lease timers; every key optional.
    #[serde(default)]
    pub lease: LeasePolicy,
    /// `[probe]`: the probe timers every target uses unless it overrides them.
    #[serde(default)]
    pub probe: ProbeDefaults,
    /// `[consul]`: how far decisions trust Consul.
    #[serde(default)]
    pub consul: ConsulPolicy,
    /// `[failover]`: observation lifetime, anti-flap, failback.
    #[serde(default)]
    pub failover: FailoverPolicy,
    /// `[directives]`: what a failover orders the agents to do.
    #[serde(default)]
    pub directives: DirectivesPolicy,
    /// `[[site]]`: the datacenters and what to probe in each. Last, because
    /// TOML writes arrays of tables after plain tables.
    #[serde(rename = "site", default)]
    pub sites: Vec<SitePolicy>,
}

/// The `[lease]` table (DESIGN.md §3.4).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LeasePolicy {
    /// How often an agent of the active site renews its lease.
    #[serde(with = "humantime_serde")]
    pub renew_interval: Duration,
    /// How long a lease lasts, counted from the agent's send time.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// ρ, the clock-rate error every process stays within, as a fraction
    /// (`0.01`). Written in TOML and JSON as a percentage string, `"1%"`.
    #[serde(with = "percent")]
    pub max_drift: f64,
    /// Slack added to the lease wait; must cover every agent's fence and
    /// watchdog timeouts.
    #[serde(with = "humantime_serde")]
    pub margin: Duration,
}

impl Default for LeasePolicy {
    fn default() -> Self {
        LeasePolicy {
            renew_interval: defaults::RENEW_INTERVAL,
            lease_ttl: defaults::LEASE_TTL,
            max_drift: defaults::MAX_DRIFT,
            margin: defaults::MARGIN,
        }
    }
}

impl LeasePolicy {
    /// How long a new leader (or one failing over) waits before every lease
    /// granted earlier is over: `lease_ttl × (1+ρ)/(1−ρ) + margin`
    /// (DESIGN.md §3.4). Rounded *up*, because waiting too little is unsafe
    /// and waiting a nanosecond more is not; a drift outside `[0, 1)` gives
    /// `Duration::MAX`.
    pub fn lease_wait(&self) -> Duration {
        let rho = self.max_drift;
        if !(0.0..1.0).contains(&rho) {
            return Duration::MAX;
        }
        let stretched = self.lease_ttl.as_nanos() as f64 * (1.0 + rho) / (1.0 - rho);
        // `ceil` plus one nanosecond covers the float's rounding error; the
        // cast saturates at u64::MAX nanoseconds (584 years).
        let nanos = (stretched.ceil() as u64).saturating_add(1);
        Duration::from_nanos(nanos).saturating_add(self.margin)
    }

    pub(crate) fn check(&self, problems: &mut Vec<Problem>) {
        let positive = [
            (
                "renew_interval",
                self.renew_interval,
                defaults::RENEW_INTERVAL,
            ),
            ("lease_ttl", self.lease_ttl, defaults::LEASE_TTL),
            // Margin is the time the old site has to fence itself after its
            // last lease ends; zero leaves none for the fence hooks.
            ("margin", self.margin, defaults::MARGIN),
        ];
        for (name, value, default) in positive {
            if value.is_zero() {
                problems.push(Problem::new(
                    format!("lease.{name}"),
                    format!("lease.{name} is 0"),
                    format!("set a positive duration (default \"{}\")", show(default)),
                ));
            }
        }
        let renewals = self.renew_interval.saturating_mul(RENEWALS_PER_LEASE);
        if !self.lease_ttl.is_zero() && renewals > self.lease_ttl {
            problems.push(Problem::new(
                "lease.renew_interval",
                format!(
                    "renew_interval × {RENEWALS_PER_LEASE} = {} exceeds lease_ttl = {}",
                    show(renewals),
                    show(self.lease_ttl)
                ),
                format!(
                    "lower renew_interval or raise lease_ttl: an agent needs \
                     {RENEWALS_PER_LEASE} renewal attempts per lease so that a lost renewal or \
                     a leader change does not fence a healthy site"
                ),
            ));
        }
        let rho = self.max_drift;
        if !(rho > 0.0 && rho < MAX_DRIFT_LIMIT) {
            problems.push(Problem::new(
                "lease.max_drift",
                format!(
                    "max_drift = {} is outside (0%, {})",
                    percent::render(rho),
                    percent::render(MAX_DRIFT_LIMIT)
                ),
                "set the clock-rate error the hosts really stay within, e.g. \"1%\" (default); \
                 real clocks drift by parts per million, and 0% would claim perfect clocks",
            ));
        }
    }
}

impl Policy {
    /// Read, parse and validate a policy file.
    pub fn load(path: &Path) -> Result<Policy, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Policy::parse(&text, path)
    }

    /// Parse and validate `text`, read from `origin`.
    pub fn parse(text: &str, origin: &Path) -> Result<Policy, ConfigError> {
        let policy: Policy = from_toml(text, origin, FileKind::Policy)?;
        policy.validate().map_err(|e| e.in_file(origin))?;
        Ok(policy)
    }

    /// Check every rule of the policy alone (the rules that also involve a
    /// node's Raft timers are in [`check_timers`](super::check_timers)).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        self.lease.check(&mut problems);
        self.probe.check(&mut problems);
        self.check_sites(&mut problems);
        self.consul.check(&self.sites, &mut problems);
        self.failover.check(&self.probe, &self.sites, &mut problems);
        self.directives.check(&mut problems);
        ConfigError::from_problems(problems)
    }

    /// The site that is active at bootstrap (`active = true`), if any.
    pub fn initial_active_site(&self) -> Option<&SitePolicy> {
        self.sites.iter().find(|s| s.active)
    }

    /// The site named `name`.
    pub fn site(&self, name: &str) -> Option<&SitePolicy> {
        self.sites.iter().find(|s| s.name == name)
    }

    fn check_sites(&self, problems: &mut Vec<Problem>) {
        let sites = &self.sites;
        if sites.is_empty() {
            return;
        }
        if sites.len() > MAX_SITES {
            problems.push(Problem::new(
                "site",
                format!("{} sites are listed, more than {MAX_SITES}", sites.len()),
                "list the datacenters that can be active (usually two)",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, site) in sites.iter().enumerate() {
            site.check(i, &self.probe, problems);
            if !seen.insert(site.name.as_str()) {
                problems.push(Problem::new(
                    format!("{}.name", site.key(i)),
                    format!("two [[site]] tables are named {:?}", site.name),
                    "give every site its own name",
                ));
            }
        }
        let active: Vec<&str> = sites
            .iter()
            .filter(|s| s.active)
            .map(|s| s.name.as_str())
            .collect();
        match active.as_slice() {
            [_] => {}
            [] => problems.push(Problem::new(
                "site.active",
                "no [[site]] has active = true",
                "mark the site that serves mail now with active = true (exactly one)",
            )),
            many => problems.push(Problem::new(
                "site.active",
                format!(
                    "{} sites have active = true: {}",
                    many.len(),
                    many.join(", ")
                ),
                "exactly one site is active at bootstrap: two would be a split brain from the \
                 first second",
            )),
        }
    }

    /// The effective policy as TOML: every key, defaults filled in,
    /// durations as humantime strings. Parses back to an equal value.
    pub fn to_toml(&self) -> String {
        // Cannot fail: the policy is tables and arrays of tables holding
        // strings, integers and booleans (durations and the drift serialise
        // as strings, a non-finite drift as "NaN%"; absent options are
        // skipped), with every array of tables after the plain keys.
        toml::to_string_pretty(self).expect("a Policy always renders as TOML")
    }
}

/// `max_drift` as a percentage string (`"1%"`, `"0.5 %"`), held as a
/// fraction. The conversion moves the decimal point in the *text*, never
/// multiplies floats, so every finite value round-trips exactly: Rust prints
/// the shortest decimal that parses back to the same `f64`, and shifting
/// its point by two places is exact.
pub(crate) mod percent {
    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};
    use std::fmt;

    pub fn serialize<S: Serializer>(fraction: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&render(*fraction))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        d.deserialize_any(PercentVisitor)
    }

    /// `0.01` → `"1%"`. Non-finite values render as `"NaN%"`/`"inf%"`,
    /// which [`parse`] refuses.
    pub fn render(fraction: f64) -> String {
        if !fraction.is_finite() {
            return format!("{fraction}%");
        }
        let sign = if fraction.is_sign_negative() && fraction != 0.0 {
            "-"
        } else {
            ""
        };
        // Display never uses exponent notation and is the shortest
        // round-tripping form.
        let text = format!("{}", fraction.abs());
        let (int, frac) = text.split_once('.').unwrap_or((&text, ""));
        let digits = format!("{int}{frac}");
        let point = int.len() + 2;
        let (int, frac) = if digits.len() >= point {
            digits.split_at(point)
        } else {
            // Pad with zeros: "0.1" has digits "01", point 3 → "010".
            return format!("{sign}{}%", trim(&format!("{digits:0<point$}"), ""));
        };
        format!("{sign}{}%", trim(int, frac))
    }

    /// Strip leading zeros of the integer part and trailing zeros of the
    /// fraction: ("001", "500") → "1.5".
    fn trim(int: &str, frac: &str) -> String {
        let int = int.trim_start_matches('0');
        let int = if int.is_empty() { "0" } else { int };
        let frac = frac.trim_end_matches('0');
        if frac.is_empty() {
            int.to_string()
        } else {
            format!("{int}.{frac}")
        }
    }

    /// `"1%"` → `0.01`; the text must be a plain decimal followed by `%`.
    pub fn parse(text: &str) -> Result<f64, String> {
        let number = text
            .trim()
            .strip_suffix('%')
            .ok_or_else(|| format!("{text:?} has no % sign; write a percentage such as \"1%\""))?
            .trim_end();
        let (sign, unsigned) = match number.strip_prefix('-') {
            Some(rest) => ("-", rest),
            None => ("", number.strip_prefix('+').unwrap_or(number)),
        };
        let (int, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
        let plain = |s: &str| s.chars().all(|c| c.is_ascii_digit());
        if int.is_empty() && frac.is_empty() || !plain(int) || !plain(frac) {
            return Err(format!(
                "{text:?} is not a percentage such as \"1%\" or \"0.5%\""
            ));
        }
        // Move the point two places left: "1.5" → "0.015".
        let int = format!("{int:0>2}");
        let (head, tail) = int.split_at(int.len() - 2);
        let head = if head.is_empty() { "0" } else { head };
        format!("{sign}{head}.{tail}{frac}")
            .parse()
            .map_err(|_| format!("{text:?} is not a percentage such as \"1%\""))
    }

    struct PercentVisitor;

    impl Visitor<'_> for PercentVisitor {
        type Value = f64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a percentage string such as \"1%\"")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
            parse(v).map_err(E::custom)
        }

        // One form only: a bare number is ambiguous (is 1 one percent or
        // a hundred?), so say what to write instead.
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
            Err(E::custom(format!(
                "max_drift = {v} is a bare number; write a percentage string such as \"1%\" \
                 (the fraction {v} is \"{}\")",
                render(v)
            )))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
            Err(E::custom(format!(
                "max_drift = {v} is a bare number; write it as a percentage string, e.g. \"{v}%\""
            )))
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
            Err(E::custom(format!(
                "max_drift = {v} is a bare number; write it as a percentage string, e.g. \"{v}%\""
            )))
        }
    }
}

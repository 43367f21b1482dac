//! Deliberately broken behaviour, to prove that the fault-injection harness
//! (`jepsen/`) catches what its checkers claim to catch: a checker that
//! never fails proves nothing.
//!
//! Each [`Sabotage`] removes one safety guard of DESIGN.md:
//!
//! - [`Sabotage::AgentIgnoresLeaseExpiry`]: the agent never fences when its
//!   lease runs out (§3.4), so a cut-off site keeps serving after the
//!   other is activated.
//! - [`Sabotage::GrantWithoutReadIndex`]: the leader answers a lease
//!   renewal from its applied state without confirming it still leads
//!   (§3.5), so a deposed leader keeps granting leases at the old epoch.
//! - [`Sabotage::FailoverOnConsulAlone`]: the engine counts a site down when
//!   Consul says its services are critical, whatever the witness's own
//!   probes say (§3.2: Consul can veto a "down", never make one).
//!
//! **Only in builds with the cargo feature `sabotage`** — never in a
//! release, never by default. Without the feature [`active`] is the
//! constant `false` and every sabotaged branch is compiled out; with it, a
//! sabotage is switched on by naming it in `WITNESS_SABOTAGE` (comma
//! separated, e.g. `agent-ignores-lease-expiry`), read once per process,
//! and the process says so loudly at start.

use std::fmt;

/// One removed guard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sabotage {
    AgentIgnoresLeaseExpiry,
    GrantWithoutReadIndex,
    FailoverOnConsulAlone,
}

impl Sabotage {
    pub const ALL: [Sabotage; 3] = [
        Sabotage::AgentIgnoresLeaseExpiry,
        Sabotage::GrantWithoutReadIndex,
        Sabotage::FailoverOnConsulAlone,
    ];

    /// The name used in `WITNESS_SABOTAGE`.
    pub fn name(self) -> &'static str {
        match self {
            Sabotage::AgentIgnoresLeaseExpiry => "agent-ignores-lease-expiry",
            Sabotage::GrantWithoutReadIndex => "grant-without-read-index",
            Sabotage::FailoverOnConsulAlone => "failover-on-consul-alone",
        }
    }
}

impl fmt::Display for Sabotage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The sabotages a `WITNESS_SABOTAGE` value names; an unknown name is an
/// error that lists the known ones.
pub fn parse(value: &str) -> Result<Vec<Sabotage>, String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|name| {
            Sabotage::ALL
                .into_iter()
                .find(|s| s.name() == name)
                .ok_or_else(|| {
                    let known: Vec<&str> = Sabotage::ALL.iter().map(|s| s.name()).collect();
                    format!(
                        "WITNESS_SABOTAGE names {name:?}; the known sabotages are {}",
                        known.join(", ")
                    )
                })
        })
        .collect()
}

/// Whether `s` is switched on in this process.
#[cfg(feature = "sabotage")]
pub fn active(s: Sabotage) -> bool {
    enabled().contains(&s)
}

/// Whether `s` is switched on in this process: never, in this build.
#[cfg(not(feature = "sabotage"))]
pub fn active(_: Sabotage) -> bool {
    false
}

#[cfg(feature = "sabotage")]
fn enabled() -> &'static [Sabotage] {
    use std::sync::OnceLock;
    static ENABLED: OnceLock<Vec<Sabotage>> = OnceLock::new();
    ENABLED.get_or_init(|| {
        let value = std::env::var("WITNESS_SABOTAGE").unwrap_or_default();
        match parse(&value) {
            Ok(list) => list,
            Err(e) => {
                // A test that asked for a sabotage and got none would pass
                // for the wrong reason: stop instead.
                eprintln!("error: {e}");
                std::process::exit(2);
            }
        }
    })
}

/// Say loudly which guards this process runs without, once at start.
pub fn announce() {
    for s in Sabotage::ALL {
        if active(s) {
            tracing::error!(
                "SABOTAGED BUILD: running with `{s}` — a safety guard is removed on purpose; \
                 this process must only ever run inside the fault-injection harness"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names round-trip; an unknown one is refused with the list.
    #[test]
    fn names_parse() {
        assert_eq!(
            parse("agent-ignores-lease-expiry, failover-on-consul-alone"),
            Ok(vec![
                Sabotage::AgentIgnoresLeaseExpiry,
                Sabotage::FailoverOnConsulAlone
            ])
        );
        assert_eq!(parse(""), Ok(vec![]));
        let e = parse("grant-without-readindex").expect_err("a typo");
        assert!(e.contains("grant-without-read-index"), "{e}");
    }

    /// A default build has no sabotage, whatever the environment says.
    #[cfg(not(feature = "sabotage"))]
    #[test]
    fn default_builds_cannot_be_sabotaged() {
        for s in Sabotage::ALL {
            assert!(!active(s));
        }
    }
}

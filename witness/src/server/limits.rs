//! Bounds on what a client may send, and how often (DESIGN.md §8: "every
//! input bound").
//!
//! - **Sizes.** Every string field of every request has a maximum, checked
//!   before the request does anything: identifiers (agent, site, role,
//!   directive, member and operator names) are 1–[`MAX_NAME`] bytes of
//!   `[A-Za-z0-9._-]`; reasons at most [`MAX_REASON`] bytes of printable
//!   text. Each gRPC service's message size is set explicitly
//!   ([`MAX_WITNESS_MESSAGE_BYTES`], [`MAX_ADMIN_MESSAGE_BYTES`]).
//! - **Tables.** An agent is admitted only for a site of the committed
//!   policy, and the leader remembers at most [`MAX_AGENTS`] agents: an
//!   unknown site or one agent too many is refused before it reaches any
//!   table, metric label or log line.
//! - **Rates.** Admin writes are limited per caller identity
//!   ([`WRITES`]), and `TransferLeader` more tightly ([`TRANSFERS`]): every
//!   new leader waits out the leases again, so a stream of transfers would
//!   hold off a real failover.
//!
//! A refusal names the field and the limit, and changes nothing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tonic::Status;

/// Identifiers: agent, site, role, directive, member and operator names.
pub const MAX_NAME: usize = 63;
/// Reasons recorded in history (freeze, failover, policy, retry).
pub const MAX_REASON: usize = 1024;
/// A directive report's output tail (the last 4 KiB are kept).
pub const MAX_OUTPUT_TAIL: usize = 64 * 1024;
/// Agents the leader keeps track of at once.
pub const MAX_AGENTS: usize = 256;
/// Largest message of the Witness service (agents' calls are small; a
/// directive report's output tail is the largest field).
pub const MAX_WITNESS_MESSAGE_BYTES: usize = 256 * 1024;
/// Largest message of the Admin service (policy files, status replies).
pub const MAX_ADMIN_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// `text` with every control character but newline and tab replaced by
/// U+FFFD: a command's output or an error goes into the Raft log, history
/// and terminals, where escape sequences must not act.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() && !matches!(c, '\n' | '\t') {
                '\u{fffd}'
            } else {
                c
            }
        })
        .collect()
}

/// An identifier field: 1–[`MAX_NAME`] bytes of `[A-Za-z0-9._-]`.
pub fn name(field: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{field} is empty")));
    }
    if value.len() > MAX_NAME {
        return Err(Status::invalid_argument(format!(
            "{field} is {} bytes, more than the limit of {MAX_NAME}",
            value.len()
        )));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(Status::invalid_argument(format!(
            "{field} holds {c:?}: use only A-Z a-z 0-9 . _ -"
        )));
    }
    Ok(())
}

/// A free-text field: at most `max` bytes, no control characters but
/// newlines and tabs.
pub fn text(field: &str, value: &str, max: usize) -> Result<(), Status> {
    if value.len() > max {
        return Err(Status::invalid_argument(format!(
            "{field} is {} bytes, more than the limit of {max}",
            value.len()
        )));
    }
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(Status::invalid_argument(format!(
            "{field} holds a control character; write plain text"
        )));
    }
    Ok(())
}

/// A rate: `burst` calls at once, then one per `every`.
#[derive(Clone, Copy, Debug)]
pub struct Rate {
    pub burst: u32,
    pub every: Duration,
}

/// Admin writes per caller: 30 at once (an operator's script of retries or
/// member changes), then one a second.
pub const WRITES: Rate = Rate {
    burst: 30,
    every: Duration::from_secs(1),
};
/// Leadership transfers per caller: 2 at once, then one every 30 s.
pub const TRANSFERS: Rate = Rate {
    burst: 2,
    every: Duration::from_secs(30),
};
/// Callers remembered per limiter; the longest idle is forgotten first.
const MAX_CALLERS: usize = 1024;

/// A token bucket per caller.
pub struct RateLimiter {
    what: &'static str,
    rate: Rate,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(what: &'static str, rate: Rate) -> RateLimiter {
        RateLimiter {
            what,
            rate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Take one call of `caller` at `now`, or say when to retry.
    pub fn take(&self, caller: &str, now: Instant) -> Result<(), Status> {
        let Rate { burst, every } = self.rate;
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if !buckets.contains_key(caller) && buckets.len() >= MAX_CALLERS {
            // Forget the caller idle the longest (its bucket is full again
            // by now, or nearly).
            if let Some(oldest) = buckets
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| k.clone())
            {
                buckets.remove(&oldest);
            }
        }
        let (tokens, at) = buckets
            .entry(caller.to_string())
            .or_insert((f64::from(burst), now));
        let refill = now.saturating_duration_since(*at).as_secs_f64() / every.as_secs_f64();
        *tokens = (*tokens + refill).min(f64::from(burst));
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            return Ok(());
        }
        let wait = every.mul_f64(1.0 - *tokens);
        Err(Status::resource_exhausted(format!(
            "{caller} made more than {burst} {} in a row (then one every {every:?} is allowed); \
             retry in {:.0} s",
            self.what,
            wait.as_secs_f64().ceil()
        )))
    }
}

/// The Admin service's limiters, shared by every connection to a node.
pub struct AdminLimits {
    pub writes: RateLimiter,
    pub transfers: RateLimiter,
}

impl Default for AdminLimits {
    fn default() -> Self {
        AdminLimits {
            writes: RateLimiter::new("changes", WRITES),
            transfers: RateLimiter::new("leadership transfers", TRANSFERS),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_texts_are_bounded_with_the_limit_named() {
        assert!(name("agent", &"a".repeat(MAX_NAME)).is_ok());
        let e = name("agent", &"a".repeat(MAX_NAME + 1)).expect_err("too long");
        assert!(e.message().contains("limit of 63"), "{}", e.message());
        assert!(name("site", "dc a").is_err());
        assert!(name("site", "").is_err());
        assert!(text("reason", &"x".repeat(MAX_REASON), MAX_REASON).is_ok());
        let e = text("reason", &"x".repeat(MAX_REASON + 1), MAX_REASON).expect_err("long");
        assert!(e.message().contains("limit of 1024"), "{}", e.message());
        assert!(text("reason", "two\nlines\tand a tab", MAX_REASON).is_ok());
        assert!(text("reason", "bell\u{7}", MAX_REASON).is_err());
    }

    #[test]
    fn a_caller_gets_its_burst_then_one_per_interval_and_others_are_unaffected() {
        let limiter = RateLimiter::new(
            "changes",
            Rate {
                burst: 2,
                every: Duration::from_secs(10),
            },
        );
        let t0 = Instant::now();
        assert!(limiter.take("alice", t0).is_ok());
        assert!(limiter.take("alice", t0).is_ok());
        let e = limiter.take("alice", t0).expect_err("over the burst");
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(e.message().contains("retry in 10 s"), "{}", e.message());
        assert!(limiter.take("bob", t0).is_ok(), "per caller");
        assert!(limiter.take("alice", t0 + Duration::from_secs(5)).is_err());
        assert!(limiter.take("alice", t0 + Duration::from_secs(11)).is_ok());
    }

    #[test]
    fn printable_keeps_lines_and_drops_escapes() {
        assert_eq!(
            printable("ok\n\tdone \u{1b}[31mred\r"),
            "ok\n\tdone \u{fffd}[31mred\u{fffd}"
        );
    }
}

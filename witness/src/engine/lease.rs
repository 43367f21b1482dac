//! The leader's lease book: which grants it made in its current term, and
//! which site it is draining. Pure bookkeeping; the caller passes `now`.
//!
//! # Why a failover may not start before `safe_after`
//!
//! A lease is valid for `lease_ttl` from the moment the *agent sent* the
//! renewal that the grant answered. Every grant this leader makes is answered
//! after a read-index round that began after the request arrived, so the
//! request was sent before the grant was recorded here. Clocks run within
//! `ρ` of real time: an agent's clock may be slow and ours fast. So every
//! lease this leader granted to a site is over, on our clock, by
//! `last_grant + lease_ttl × (1+ρ)/(1−ρ)`, and the agents have fenced by
//! `+ margin` (`margin ≥ fence_timeout`, watchdog timeout).
//!
//! Grants made by *earlier* leaders answered requests sent before this
//! leader's election (the quorum that confirmed the old grant and the quorum
//! that elected us share a node, which saw the old leader's heartbeat before
//! voting for us). So they are over by `term_started + lease_wait`.
//!
//! Hence `safe_after(site) = max(term_started, last_grant[site]) + lease_wait`
//! and, because a drained site gets no new grant, that instant only moves
//! forward while the grant it covers was already made.
//!
//! Invariant: once `drain(site)` returns, `try_grant(site)` refuses until
//! `undrain`, so no grant is recorded for a draining site after the caller
//! read `safe_after`.
//!
//! The book also remembers each agent's latest grant until it is renewed or
//! runs out, so the leader can count the leases that ran out unrenewed
//! ([`LeaseBook::take_expired`]) exactly once each. That count is for
//! people (`witness_lease_expiries_total`); no decision reads it.

use std::collections::BTreeMap;
use std::time::Duration;

/// Monotonic time on this node, as a duration since an arbitrary origin
/// (the node's start). Never compared across nodes.
pub type Mono = Duration;

/// Why the leader refuses to grant a lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrantRefusal {
    /// The site is being drained for a failover.
    Draining { site: String },
}

/// The grants this leader made in its current term.
#[derive(Clone, Debug, Default)]
pub struct LeaseBook {
    term: u64,
    term_started: Mono,
    last_grant: BTreeMap<String, Mono>,
    draining: Option<String>,
    /// Per agent: its site and this term's latest grant to it, until that
    /// lease runs out.
    held: BTreeMap<String, (String, Mono)>,
}

impl LeaseBook {
    /// Start a new leadership term at `now`: forget the previous term's
    /// grants and any drain (a new leader never continues a predecessor's
    /// wait, and its own wait counts from its election).
    pub fn begin_term(&mut self, term: u64, now: Mono) {
        *self = LeaseBook {
            term,
            term_started: now,
            ..LeaseBook::default()
        };
    }

    /// The term this book belongs to.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// When this leader's term started.
    pub fn term_started(&self) -> Mono {
        self.term_started
    }

    /// Record a grant to `agent` of `site` at `now`, unless the site is
    /// draining.
    pub fn try_grant(&mut self, site: &str, agent: &str, now: Mono) -> Result<(), GrantRefusal> {
        if self.draining.as_deref() == Some(site) {
            return Err(GrantRefusal::Draining {
                site: site.to_string(),
            });
        }
        let last = self.last_grant.entry(site.to_string()).or_default();
        *last = (*last).max(now);
        let held = self
            .held
            .entry(agent.to_string())
            .or_insert_with(|| (site.to_string(), now));
        *held = (site.to_string(), held.1.max(now));
        Ok(())
    }

    /// The sites of the leases this term granted that ran out by `now`
    /// (`lease_ttl` after their grant, on this leader's clock) without a
    /// later grant to the same agent, one entry per lease; each is
    /// returned once and then forgotten.
    pub fn take_expired(&mut self, now: Mono, lease_ttl: Duration) -> Vec<String> {
        let mut expired = Vec::new();
        self.held.retain(|_, (site, granted)| {
            let over = now.saturating_sub(*granted) >= lease_ttl;
            if over {
                expired.push(std::mem::take(site));
            }
            !over
        });
        expired
    }

    /// Stop granting to `site`.
    pub fn drain(&mut self, site: &str) {
        self.draining = Some(site.to_string());
    }

    /// Grant again (the failover was aborted or done).
    pub fn undrain(&mut self) {
        self.draining = None;
    }

    /// The site being drained, if any.
    pub fn draining(&self) -> Option<&str> {
        self.draining.as_deref()
    }

    /// The last grant to `site` in this term.
    pub fn last_grant(&self, site: &str) -> Option<Mono> {
        self.last_grant.get(site).copied()
    }

    /// The later of this term's start and its last grant to `site`: the
    /// instant from which the lease wait counts.
    pub fn lease_basis(&self, site: &str) -> Mono {
        self.last_grant(site)
            .map_or(self.term_started, |g| g.max(self.term_started))
    }

    /// The earliest instant at which every lease ever granted to `site` — by
    /// this leader or an earlier one — is over and fenced.
    pub fn safe_after(&self, site: &str, lease_wait: Duration) -> Mono {
        self.lease_basis(site).saturating_add(lease_wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_millis(4_061);

    fn ms(v: u64) -> Mono {
        Duration::from_millis(v)
    }

    /// Without grants in this term, the wait counts from the election.
    #[test]
    fn wait_counts_from_the_election_without_grants() {
        let mut b = LeaseBook::default();
        b.begin_term(7, ms(10_000));
        assert_eq!(b.safe_after("dc-a", WAIT), ms(10_000) + WAIT);
    }

    /// A grant pushes the safe instant forward; a drained site gets none.
    #[test]
    fn grants_push_the_wait_and_draining_refuses() {
        let mut b = LeaseBook::default();
        b.begin_term(7, ms(10_000));
        b.try_grant("dc-a", "proxy-a", ms(12_000)).expect("grant");
        assert_eq!(b.safe_after("dc-a", WAIT), ms(12_000) + WAIT);
        b.drain("dc-a");
        assert_eq!(
            b.try_grant("dc-a", "proxy-a", ms(13_000)),
            Err(GrantRefusal::Draining {
                site: "dc-a".into()
            })
        );
        assert_eq!(
            b.safe_after("dc-a", WAIT),
            ms(12_000) + WAIT,
            "refused grants do not count"
        );
        b.try_grant("dc-b", "proxy-b", ms(13_000))
            .expect("other sites still granted");
        b.undrain();
        b.try_grant("dc-a", "proxy-a", ms(14_000))
            .expect("grant after undrain");
        assert_eq!(b.safe_after("dc-a", WAIT), ms(14_000) + WAIT);
    }

    /// A new term forgets the old grants and the drain, and restarts the wait.
    #[test]
    fn a_new_term_restarts_the_wait() {
        let mut b = LeaseBook::default();
        b.begin_term(7, ms(10_000));
        b.try_grant("dc-a", "proxy-a", ms(12_000)).expect("grant");
        b.drain("dc-a");
        b.begin_term(9, ms(11_000));
        assert_eq!(b.draining(), None);
        assert_eq!(b.safe_after("dc-a", WAIT), ms(11_000) + WAIT);
    }

    /// Grants recorded out of order never move the last grant backwards.
    #[test]
    fn last_grant_never_goes_backwards() {
        let mut b = LeaseBook::default();
        b.begin_term(1, ms(0));
        b.try_grant("dc-a", "proxy-a", ms(5_000)).expect("grant");
        b.try_grant("dc-a", "proxy-a", ms(4_000)).expect("grant");
        assert_eq!(b.last_grant("dc-a"), Some(ms(5_000)));
    }

    /// A lease runs out `lease_ttl` after its agent's latest grant and is
    /// counted once; a renewal in time pushes it back, and a new term
    /// forgets the old term's leases (a new leader counts only its own).
    #[test]
    fn a_lease_that_runs_out_unrenewed_is_counted_once() {
        const TTL: Duration = Duration::from_millis(3_000);
        let mut b = LeaseBook::default();
        b.begin_term(1, ms(0));
        b.try_grant("dc-a", "proxy-a", ms(1_000)).expect("grant");
        b.try_grant("dc-a", "mbox-a", ms(1_000)).expect("grant");
        b.try_grant("dc-a", "proxy-a", ms(3_500)).expect("renewal");
        assert!(b.take_expired(ms(3_999), TTL).is_empty());
        assert_eq!(b.take_expired(ms(4_000), TTL), ["dc-a"], "mbox-a's");
        assert!(b.take_expired(ms(5_000), TTL).is_empty(), "once");
        assert_eq!(b.take_expired(ms(6_500), TTL), ["dc-a"], "proxy-a's");
        b.try_grant("dc-a", "proxy-a", ms(7_000)).expect("grant");
        b.begin_term(2, ms(8_000));
        assert!(b.take_expired(ms(60_000), TTL).is_empty());
    }
}

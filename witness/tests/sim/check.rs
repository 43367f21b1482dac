//! The invariants, checked after every simulation step, and the trace hash
//! that tells whether two runs of a seed did the same thing.
//!
//! 1. **At most one site holds a valid lease at any simulated instant**,
//!    judged only on what the clients hold: a grant's interval is
//!    `[sent, sent + lease_ttl)` on the simulated clock, and grants to two
//!    different sites must never overlap.
//! 2. **Epochs name one site and never go backwards**: every witness's
//!    applied verdict maps each epoch to the same site as every other
//!    witness ever did, and within one process lifetime a witness's applied
//!    epoch never decreases (after a restart it replays from its store and
//!    may briefly show an older state, which is not a step backwards of
//!    what was committed).

use std::collections::BTreeMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;

use crate::cluster::{Grant, Live, WITNESSES};

/// What one witness looked like at the last step, to notice changes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
struct Seen {
    start: u64,
    epoch: u64,
    site: Option<String>,
    leader: bool,
    term: u64,
}

#[derive(Default)]
pub struct Checker {
    /// Grants already checked, per site: `(sent, until, epoch)`.
    by_site: BTreeMap<&'static str, Vec<(Duration, Duration, u64)>>,
    grants_checked: usize,
    /// The site each epoch named, and when it was first seen.
    pub epochs: BTreeMap<u64, String>,
    seen: [Seen; 3],
    trace: DefaultHasher,
    /// Simulated time of the last change of the highest epoch.
    pub last_activation_at: Option<Duration>,
    /// Print every traced event (`WITNESS_SIM_TRACE=1`), to find where two
    /// runs of a seed part.
    pub print_trace: bool,
}

impl Checker {
    /// Add an event to the trace hash.
    pub fn record(&mut self, at: Duration, event: impl Hash + std::fmt::Debug) {
        at.as_micros().hash(&mut self.trace);
        event.hash(&mut self.trace);
        if self.print_trace {
            println!("trace {:>12}us {event:?}", at.as_micros());
        }
    }

    /// The hash of everything recorded so far.
    pub fn trace_hash(&self) -> u64 {
        self.trace.finish()
    }

    /// The grants checked so far, per site.
    pub fn grants(&self, site: &str) -> &[(Duration, Duration, u64)] {
        self.by_site.get(site).map_or(&[], |v| v.as_slice())
    }

    /// Check the new grants and every running witness's applied verdict.
    pub fn check(&mut self, now: Duration, live: &Live, grants: &[Grant]) -> Result<(), String> {
        for g in &grants[self.grants_checked..] {
            for (site, held) in &self.by_site {
                if *site == g.site {
                    continue;
                }
                if let Some((sent, until, epoch)) =
                    held.iter().find(|(s, u, _)| g.sent < *u && *s < g.until)
                {
                    return Err(format!(
                        "TWO SITES HOLD A LEASE AT ONCE: {} holds [{:?}, {:?}) at epoch {epoch}, and \
                         {} was granted [{:?}, {:?}) at epoch {} (via {}, received at {:?})",
                        site, sent, until, g.site, g.sent, g.until, g.epoch, g.via, g.received
                    ));
                }
            }
            self.by_site
                .entry(g.site)
                .or_default()
                .push((g.sent, g.until, g.epoch));
            let event = ("grant", g.site, g.epoch, g.sent.as_micros(), g.via);
            self.record(g.received, event);
        }
        self.grants_checked = grants.len();

        for (i, node) in live.nodes.iter().enumerate() {
            let Some(node) = node else { continue };
            let applied = node.state.current();
            let verdict = &applied.state.verdict;
            let metrics = node.raft.metrics().borrow_watched().clone();
            let now_seen = Seen {
                start: live.starts[i],
                epoch: verdict.epoch,
                site: verdict.active_site.clone(),
                leader: metrics.state == ServerState::Leader,
                term: metrics.current_term,
            };
            let name = WITNESSES[i].host;
            if now_seen == self.seen[i] {
                continue;
            }
            let before = std::mem::replace(&mut self.seen[i], now_seen.clone());
            if before.start == now_seen.start && now_seen.epoch < before.epoch {
                return Err(format!(
                    "EPOCH WENT BACKWARDS on {name}: applied epoch {} after {} in the same process",
                    now_seen.epoch, before.epoch
                ));
            }
            if now_seen.epoch > 0 {
                let Some(site) = &now_seen.site else {
                    return Err(format!(
                        "{name} applied epoch {} with no active site",
                        now_seen.epoch
                    ));
                };
                match self.epochs.get(&now_seen.epoch) {
                    Some(known) if known != site => {
                        return Err(format!(
                            "EPOCH {} NAMES TWO SITES: {known} before, {site} on {name}",
                            now_seen.epoch
                        ));
                    }
                    Some(_) => {}
                    None => {
                        self.epochs.insert(now_seen.epoch, site.clone());
                        self.last_activation_at = Some(now);
                    }
                }
            }
            self.record(now, (name, &now_seen));
        }
        Ok(())
    }
}

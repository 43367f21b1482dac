//! [`Witnesses`]: the agent's connections to the witnesses it may talk to.
//!
//! Any witness will do (DESIGN.md §3.4): a follower forwards renewals,
//! claims and reports to the leader. So every call is tried on one
//! endpoint after another, starting with the one that answered last, each
//! attempt bounded by a timeout; an endpoint that failed loses its channel,
//! so its next use reconnects (a black-holed HTTP/2 connection would
//! otherwise hang every later call on it). HTTP/2 keepalives notice a dead
//! connection under an idle stream (the verdict watch) within a few
//! seconds.
//!
//! Nothing here decides anything; it only carries calls.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use witness_proto::witness_client::WitnessClient;

use crate::trust::{Dial, Trust};

/// Between two keepalive pings on an idle connection.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// A ping unanswered this long closes the connection (and ends a watch).
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on establishing a connection; each call has its own bound too.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The witness endpoints of one agent, with a lazily made channel each.
pub struct Witnesses {
    endpoints: Vec<String>,
    /// The agent's certificate; `None` when its file says `insecure = true`.
    trust: Option<Arc<Trust>>,
    /// Channels, and the certificate generation they were made with: after
    /// a reload, new connections present the new certificate.
    channels: Mutex<(u64, Vec<Option<Channel>>)>,
    preferred: AtomicUsize,
}

impl Witnesses {
    /// `endpoints` are `host:port` (validated by the agent's config).
    pub fn new(endpoints: &[String], trust: Option<Arc<Trust>>) -> Witnesses {
        Witnesses {
            endpoints: endpoints.to_vec(),
            trust,
            channels: Mutex::new((0, vec![None; endpoints.len()])),
            preferred: AtomicUsize::new(0),
        }
    }

    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// `host:port` of endpoint `i`.
    pub fn endpoint(&self, i: usize) -> &str {
        &self.endpoints[i % self.endpoints.len()]
    }

    /// Endpoint indices in the order to try them: the last one that
    /// answered first, then the others in turn.
    pub fn order(&self) -> Vec<usize> {
        let n = self.endpoints.len();
        let first = self.preferred.load(Ordering::Relaxed) % n.max(1);
        (0..n).map(|k| (first + k) % n).collect()
    }

    /// Remember that endpoint `i` answered.
    pub fn prefer(&self, i: usize) {
        self.preferred.store(i, Ordering::Relaxed);
    }

    /// A client for endpoint `i`, connecting lazily.
    pub fn client(&self, i: usize) -> Result<WitnessClient<Channel>, String> {
        let mut guard = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        let (generation, channels) = &mut *guard;
        let now = self.trust.as_ref().map_or(0, |t| t.generation());
        if *generation != now {
            channels.iter_mut().for_each(|c| *c = None);
            *generation = now;
        }
        if let Some(ch) = &channels[i] {
            return Ok(WitnessClient::new(ch.clone()));
        }
        let addr = &self.endpoints[i];
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("bad witness address {addr:?}: {e}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        let ch = crate::trust::conn::channel(endpoint, self.trust.clone(), Dial::AnyWitness);
        channels[i] = Some(ch.clone());
        Ok(WitnessClient::new(ch))
    }

    /// Drop endpoint `i`'s channel after a failure: its next use reconnects.
    pub fn forget(&self, i: usize) {
        let mut guard = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        guard.1[i] = None;
    }

    /// Try `call` on each endpoint in [`order`](Self::order), each attempt
    /// bounded by `per_attempt`, until one answers. Every failure is
    /// collected into the error.
    pub async fn call<T, F, Fut>(&self, per_attempt: Duration, mut call: F) -> Result<T, String>
    where
        F: FnMut(WitnessClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut errors = Vec::new();
        for i in self.order() {
            let client = match self.client(i) {
                Ok(c) => c,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            match tokio::time::timeout(per_attempt, call(client)).await {
                Ok(Ok(reply)) => {
                    self.prefer(i);
                    return Ok(reply.into_inner());
                }
                Ok(Err(status)) => {
                    errors.push(format!("{}: {}", self.endpoints[i], status.message()));
                }
                Err(_) => errors.push(format!(
                    "{}: no answer within {per_attempt:?}",
                    self.endpoints[i]
                )),
            }
            self.forget(i);
        }
        Err(errors.join("; "))
    }
}

//! The Admin service asked in-process over gRPC, for what `witnessctl`'s
//! JSON leaves out (e.g. `leader_since_ms`) and for polling too fast for a
//! process spawn per look (the failover benchmark polls every 10 ms).
//!
//! Every call is bounded by the timeout given at construction; a channel
//! that failed is dropped so the next call reconnects.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use witness_proto::admin_client::AdminClient;
use witness_proto::{StatusReply, StatusRequest};

/// A small Admin client over a runtime of its own.
pub struct Admin {
    runtime: tokio::runtime::Runtime,
    timeout: Duration,
    /// The lab operator's certificate.
    trust: Arc<witness::trust::Trust>,
    clients: Mutex<HashMap<String, AdminClient<Channel>>>,
}

impl Admin {
    /// A client whose every call (connection included) ends within
    /// `timeout`, presenting the operator certificate of cluster `e2e`.
    pub fn new(timeout: Duration) -> Admin {
        Admin::for_cluster(timeout, "e2e")
    }

    /// As [`Admin::new`], for the witnesses of `cluster`.
    pub fn for_cluster(timeout: Duration, cluster: &str) -> Admin {
        let files = jepsen::lab::pki::Pki::shared(cluster).operator();
        let trust = witness::trust::Trust::load(files, witness::trust::Expect::Admin)
            .unwrap_or_else(|e| panic!("the lab operator's certificate: {e}"));
        Admin {
            trust,
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime"),
            timeout,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// `Status` of the witness at `addr` (its own view with `local`, else
    /// the leader's through it), or `None` if it did not answer in time.
    pub fn status(&self, addr: &str, local: bool) -> Option<StatusReply> {
        let cached = self
            .clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(addr);
        let timeout = self.timeout;
        let trust = self.trust.clone();
        let (reply, client) = self.runtime.block_on(async move {
            let client = match cached {
                Some(c) => c,
                None => {
                    let ep = Endpoint::from_shared(format!("http://{addr}"))
                        .ok()?
                        .connect_timeout(timeout)
                        .tcp_nodelay(true);
                    AdminClient::new(witness::trust::conn::channel(
                        ep,
                        Some(trust.clone()),
                        witness::trust::Dial::AnyWitness,
                    ))
                }
            };
            let mut c = client.clone();
            let reply = tokio::time::timeout(timeout, c.status(StatusRequest { local }))
                .await
                .ok()?
                .ok()?;
            Some((reply.into_inner(), client))
        })?;
        // Kept only after a success: a failed channel reconnects next time.
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(addr.to_string(), client);
        Some(reply)
    }
}

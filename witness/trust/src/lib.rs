//! Trust: who may talk to a witness, proven by certificates (DESIGN.md §8).
//!
//! Every gRPC channel (peers, agents, operators) and the HTTP port run mutual
//! TLS with certificates issued by the cluster's own CA. A certificate carries
//! one role and one identity as a URI ([`identity`]); the TLS handshake
//! proves the caller holds its key, and each service checks the role on every
//! call (`witness::server::authz`):
//!
//! - `Raft` only from a `peer` whose node id is the message's sender and a
//!   member; a forged `AppendEntries`, `Vote` or `Propose` from anything else
//!   never reaches openraft. This is what makes the identity checks of
//!   `witness::raft::identity` (cluster id, incarnations — printed by nothing
//!   a stranger can read, but not secrets) a second line rather than the
//!   only one.
//! - `Witness` only from an `agent`; its site and name come from the
//!   certificate, so a script cannot renew leases as an agent it is not.
//! - `Admin` from a `viewer` (read) or an `operator` (write); the operator
//!   recorded in history is the certificate's.
//! - A follower forwarding a call to the leader presents its own `peer`
//!   certificate and names the original caller; the leader believes that name
//!   only from a member.
//!
//! Plaintext exists for a developer's laptop: a process with no TLS files
//! refuses to start unless its file says `insecure = true`, and then says so
//! at every start and in `witnessctl status`.
//!
//! Certificates and keys are re-read on SIGHUP and when the files change
//! ([`Trust::spawn_reloader`]); a reload that fails keeps the material in use
//! and says why. New connections use the new material; an existing
//! connection whose certificate the new CA or deny list no longer trusts is
//! refused on its next call.
//!
//! Not here: what each role may do (the services), certificate issuance
//! ([`certs`]).

pub mod certs;
pub mod conn;
pub mod identity;
pub mod pki;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

pub use conn::{Caller, ConnInfo, Dial, Incoming, Port};

/// A witness's Raft node id.
pub type NodeId = u64;

/// Seconds since the Unix epoch, on the system clock (what rustls checks
/// certificate validity against).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `unix_secs` as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn format_unix(unix_secs: i64) -> String {
    let (y, mo, d, h, mi, s) = witness_proto::civil_utc(unix_secs.max(0) as u64);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02} UTC")
}
pub use identity::{Identity, Principal, Role};
pub use pki::{Material, TlsFiles};

/// How often the files are checked for changes.
pub const RELOAD_POLL: Duration = Duration::from_secs(5);
/// At most one handshake-failure log line per this interval (a hostile or
/// misconfigured client must not flood the journal); the rest are counted.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// The status page and metrics warn this long before a certificate expires.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// What this process's own certificate must say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// A witness: a peer certificate with this cluster and node id.
    Peer { cluster: String, id: u64 },
    /// An agent: an agent certificate for this site and name.
    Agent { site: String, name: String },
    /// `witnessctl`: a viewer or operator certificate.
    Admin,
}

impl Expect {
    fn check(&self, own: &Identity) -> Result<(), String> {
        let ok = match (self, &own.principal) {
            (Expect::Peer { cluster, id }, Principal::Peer { id: got }) => {
                if cluster != &own.cluster {
                    return Err(format!(
                        "the certificate is for cluster {:?} but node.cluster = {cluster:?}",
                        own.cluster
                    ));
                }
                if got != id {
                    return Err(format!(
                        "the certificate is for witness node {got} but node.id = {id}; use the \
                         certificate made for this node (`witness certs peer --id {id}`)"
                    ));
                }
                true
            }
            (Expect::Agent { site, name }, Principal::Agent { site: s, name: n }) => {
                if s != site || n != name {
                    return Err(format!(
                        "the certificate is for agent {s}/{n} but this agent is {site}/{name}; \
                         use the certificate made for it (`witness certs agent --site {site} \
                         --name {name}`)"
                    ));
                }
                true
            }
            (Expect::Admin, Principal::Viewer { .. } | Principal::Operator { .. }) => true,
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            let wanted = match self {
                Expect::Peer { .. } => "a peer (witness) certificate",
                Expect::Agent { .. } => "an agent certificate",
                Expect::Admin => "a viewer or operator certificate",
            };
            Err(format!(
                "the certificate is {own} ({} role), but this process needs {wanted}",
                own.role()
            ))
        }
    }
}

/// The TLS material of one process, reloadable.
pub struct Trust {
    files: TlsFiles,
    expect: Expect,
    current: RwLock<Arc<Material>>,
    /// Bumped by every reload that changed something.
    generation: AtomicU64,
    /// Handshakes refused (bad certificate, timeout, too many at once).
    handshake_failures: AtomicU64,
    failure_log: Mutex<FailureLog>,
}

struct FailureLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust")
            .field("files", &self.files)
            .field("own", &self.current().own.identity)
            .finish_non_exhaustive()
    }
}

impl Trust {
    /// Load `files` and check that the certificate is what `expect` says.
    pub fn load(files: TlsFiles, expect: Expect) -> Result<Arc<Trust>, String> {
        let material = Self::load_checked(&files, &expect)?;
        Ok(Arc::new(Trust {
            files,
            expect,
            current: RwLock::new(Arc::new(material)),
            generation: AtomicU64::new(1),
            handshake_failures: AtomicU64::new(0),
            failure_log: Mutex::new(FailureLog {
                last: None,
                suppressed: 0,
            }),
        }))
    }

    fn load_checked(files: &TlsFiles, expect: &Expect) -> Result<Material, String> {
        let material = Material::load(files, crate::unix_now())?;
        expect
            .check(&material.own.identity)
            .map_err(|e| format!("tls.cert {}: {e}", files.cert.display()))?;
        Ok(material)
    }

    /// The material in use now.
    pub fn current(&self) -> Arc<Material> {
        // A poisoned lock means a panic while swapping one Arc for another;
        // the value is whole either way.
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Changes with every reload that changed the material.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// This process's identity.
    pub fn own(&self) -> Identity {
        self.current().own.identity.clone()
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Handshakes refused since start.
    pub fn handshake_failures(&self) -> u64 {
        self.handshake_failures.load(Ordering::Relaxed)
    }

    /// Re-read the files. `Ok(true)` when the material changed and is now in
    /// use; on error the old material stays in use.
    pub fn reload(&self) -> Result<bool, String> {
        let material = Self::load_checked(&self.files, &self.expect)?;
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if current.fingerprint == material.fingerprint {
            return Ok(false);
        }
        *current = Arc::new(material);
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(true)
    }

    /// Whether a caller accepted earlier is still trusted: its certificate
    /// has not expired since, and, if a reload since its handshake changed
    /// the CA or the deny list, they still accept it.
    pub fn still_trusts(&self, caller: &Caller) -> Result<(), String> {
        if crate::unix_now() >= caller.not_after {
            return Err(format!(
                "its certificate expired on {}",
                format_unix(caller.not_after)
            ));
        }
        if caller.generation == self.generation() {
            return Ok(());
        }
        self.current()
            .still_trusts(&caller.chain, crate::unix_now())
    }

    /// Reload on SIGHUP and whenever the files change, until `stop` turns
    /// true. Every outcome is logged.
    pub fn spawn_reloader(self: &Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let trust = self.clone();
        tokio::spawn(async move {
            #[cfg(unix)]
            let mut hup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            loop {
                #[cfg(unix)]
                let hangup = async {
                    match hup.as_mut() {
                        Some(h) => {
                            h.recv().await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                #[cfg(not(unix))]
                let hangup = std::future::pending::<()>();
                let why = tokio::select! {
                    _ = tokio::time::sleep(RELOAD_POLL) => "poll",
                    () = hangup => "SIGHUP",
                    _ = stop.wait_for(|s| *s) => return,
                };
                match trust.reload() {
                    Ok(true) => tracing::info!(
                        trigger = why,
                        identity = %trust.own(),
                        expires = %crate::format_unix(trust.current().own.not_after),
                        "TLS certificates reloaded; new connections use them"
                    ),
                    Ok(false) if why == "SIGHUP" => {
                        tracing::info!("SIGHUP: TLS certificates unchanged")
                    }
                    Ok(false) => {}
                    Err(e) => tracing::error!(
                        trigger = why,
                        "TLS reload failed, still using the previous certificates: {e}"
                    ),
                }
            }
        });
    }

    /// Count a refused handshake and log it, at most once per
    /// [`FAILURE_LOG_INTERVAL`].
    pub fn note_handshake_failure(&self, remote: SocketAddr, why: &str) {
        self.handshake_failures.fetch_add(1, Ordering::Relaxed);
        let mut log = self.failure_log.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if log
            .last
            .is_some_and(|t| now.duration_since(t) < FAILURE_LOG_INTERVAL)
        {
            log.suppressed += 1;
            return;
        }
        let suppressed = std::mem::take(&mut log.suppressed);
        log.last = Some(now);
        drop(log);
        tracing::warn!(
            %remote,
            suppressed,
            "TLS handshake refused: {why}"
        );
    }
}

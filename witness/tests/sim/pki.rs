//! The simulation's certificates: a CA for cluster `sim`, a peer
//! certificate per witness and an agent certificate per site's lease
//! client, so that every simulated connection is mutual TLS and every
//! request passes the same checks as in production (`server::authz`).
//!
//! They are made once, by `witness certs`' own code, into Cargo's
//! per-target scratch directory and reused by every seed's process and
//! every later run: a seed then replays over the same certificates. A set
//! that no longer loads (expired, damaged) is made again; two processes
//! making it at once both write into their own directory and the first
//! rename wins.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use witness::trust::certs;
use witness::trust::{Expect, Principal, TlsFiles, Trust};

/// The cluster name of every simulated witness.
pub const CLUSTER: &str = "sim";
/// Validity of the simulation's certificates.
const DAYS: u32 = 3650;

fn dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sim-pki");
        if !usable(&dir) {
            make(&dir);
        }
        dir
    })
}

/// Whether `dir` holds a complete set that loads today.
fn usable(dir: &Path) -> bool {
    principals()
        .into_iter()
        .all(|(principal, expect)| Trust::load(files_in(dir, &principal), expect).is_ok())
}

fn make(dir: &Path) {
    let parent = dir.parent().expect("the scratch directory has a parent");
    std::fs::create_dir_all(parent).expect("Cargo's scratch directory");
    let fresh = tempfile::Builder::new()
        .prefix("sim-pki-new-")
        .tempdir_in(parent)
        .expect("a directory for the simulation's certificates");
    let now = witness::trust::unix_now();
    certs::init_ca(fresh.path(), CLUSTER, DAYS, false, now).expect("the simulation's CA");
    for (principal, _) in principals() {
        certs::issue_into(fresh.path(), fresh.path(), principal, &[], DAYS, false, now)
            .expect("a simulation certificate");
    }
    // A set that no longer loads is moved aside, never deleted in place: a
    // process that loaded it keeps its open files.
    if dir.exists() && !usable(dir) {
        let aside = parent.join(format!("sim-pki-old-{}", std::process::id()));
        if std::fs::rename(dir, &aside).is_ok() {
            let _ = std::fs::remove_dir_all(&aside);
        }
    }
    // Renaming onto a directory that exists fails: another process put its
    // set in place first, and that one is used.
    if std::fs::rename(fresh.path(), dir).is_err() {
        assert!(usable(dir), "no usable certificates in {}", dir.display());
    }
}

/// Make (or check) the certificates now, in the process that spawns the
/// seeds' processes, so that they never race to make them.
pub fn prepare() {
    dir();
}

fn principals() -> Vec<(Principal, Expect)> {
    let mut all: Vec<(Principal, Expect)> = crate::cluster::WITNESSES
        .iter()
        .map(|w| (Principal::Peer { id: w.id }, peer_expect(w.id)))
        .collect();
    for site in &crate::cluster::SITES {
        all.push((
            Principal::Agent {
                site: site.name.into(),
                name: site.agent.into(),
            },
            Expect::Agent {
                site: site.name.into(),
                name: site.agent.into(),
            },
        ));
    }
    all
}

fn peer_expect(id: u64) -> Expect {
    Expect::Peer {
        cluster: CLUSTER.into(),
        id,
    }
}

fn files_in(dir: &Path, principal: &Principal) -> TlsFiles {
    let stem = certs::stem(principal);
    TlsFiles {
        ca: dir.join(certs::CA_CERT),
        cert: dir.join(format!("{stem}.pem")),
        key: dir.join(format!("{stem}.key")),
        deny: None,
    }
}

/// Witness `id`'s certificate files.
pub fn peer_files(id: u64) -> TlsFiles {
    files_in(dir(), &Principal::Peer { id })
}

/// Witness `id`'s certificate, loaded.
pub fn peer(id: u64) -> Arc<Trust> {
    Trust::load(peer_files(id), peer_expect(id)).expect("a simulated witness's certificate")
}

/// The certificate of `site`'s lease client `agent`, loaded.
pub fn agent(site: &str, name: &str) -> Arc<Trust> {
    let principal = Principal::Agent {
        site: site.into(),
        name: name.into(),
    };
    let expect = Expect::Agent {
        site: site.into(),
        name: name.into(),
    };
    Trust::load(files_in(dir(), &principal), expect).expect("a simulated agent's certificate")
}

//! Durable storage for a witness: the Raft log, the vote, the applied state's
//! snapshots, and the store's identity, in one sled database in `data_dir`.
//!
//! What it owns:
//! - [`Store`]: an opened data dir and its [`StoreMeta`] (cluster name and
//!   id, node id, the random [`Incarnation`] made with the store, the pending
//!   bootstrap). `witness init` creates one with [`Store::create`]; `witness
//!   run` opens it, or creates a joiner store in an empty dir, with
//!   [`Store::open_or_create_joiner`].
//! - [`LogStore`] (openraft's `RaftLogStorage`) and [`StateMachineStore`]
//!   (`RaftStateMachine`), each with a sled backend and an in-memory one (for
//!   tests and the simulation) behind the same type.
//! - [`StateReader`]: how the servers read the applied state.
//!
//! Invariants:
//! - **Nothing is acknowledged before it is on stable storage** (DESIGN.md §3,
//!   assumption (a)): a vote before `save_vote` returns, entries before the
//!   `IOFlushed` callback fires, snapshots, truncations, purges and metadata
//!   before their call returns. sled's `flush` alone is not enough on Linux
//!   (it ends in `sync_file_range`), so every such write goes through one
//!   `sync` that adds a real `fdatasync` of sled's data file.
//! - **A store is never silently reinitialised.** A data dir from another
//!   node or cluster, of an unknown format version, half-written or corrupt,
//!   is refused with a [`StoreError`] naming the path and what to do. Every
//!   value carries a CRC32 and the whole (small) store is verified at open,
//!   so damage is refused at startup instead of being served.
//!
//! What it does not do: decide anything (that is the state machine's
//! `apply`, in [`crate::state`]); talk to peers or check incarnations on the
//! wire (the Raft network does, using the membership stored here); keep the
//! applied state on disk entry by entry (it lives in memory and is rebuilt
//! from the last snapshot plus the committed log, which openraft re-applies
//! at start).
//!
//! [`Incarnation`]: crate::raft::types::Incarnation

mod kv;
mod log;
mod state_machine;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use self::kv::{Disk, Kv, TreeId, Write};
pub use self::log::LogStore;
pub use self::state_machine::{AppliedState, SnapshotBuilder, StateMachineStore, StateReader};
use crate::raft::types::{Incarnation, LogId, NodeId, Vote, WitnessNode};

/// The on-disk format this build reads and writes. Bump it on any change to
/// the layout or the encoding of stored values.
pub const STORE_FORMAT_VERSION: u32 = 1;

/// The key of [`StoreMeta`] in the meta tree.
const KEY_META: &[u8] = b"meta";

/// Who a store belongs to. Written last when a store is created, so a store
/// without it is recognisably incomplete.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoreMeta {
    /// [`STORE_FORMAT_VERSION`] of the build that created the store.
    pub format_version: u32,
    /// `node.cluster` from the node config.
    pub cluster_name: String,
    /// The random cluster id made by `witness init`; a joiner learns it on
    /// first contact ([`Store::set_cluster_id`]).
    pub cluster_id: Option<String>,
    /// `node.id` from the node config.
    pub node_id: NodeId,
    /// Made with the store and never changed: a node that loses its store
    /// comes back as a new incarnation, never as the old one.
    pub incarnation: Incarnation,
    /// When the store was created (wall clock; shown, never decided on).
    pub created_unix_ms: u64,
    /// Set by `witness init`, cleared once the initial policy is committed.
    pub bootstrap: Option<Bootstrap>,
}

impl StoreMeta {
    /// Metadata for a brand-new store: current format, a fresh incarnation,
    /// created now.
    pub fn new(
        cluster_name: &str,
        cluster_id: Option<String>,
        node_id: NodeId,
        bootstrap: Option<Bootstrap>,
    ) -> StoreMeta {
        let created_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        StoreMeta {
            format_version: STORE_FORMAT_VERSION,
            cluster_name: cluster_name.to_string(),
            cluster_id,
            node_id,
            incarnation: Incarnation::random(),
            created_unix_ms,
            bootstrap,
        }
    }
}

/// What `witness init` leaves for the first start of the bootstrapping node:
/// the initial voters and the cluster policy to commit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bootstrap {
    pub members: BTreeMap<NodeId, WitnessNode>,
    pub policy: crate::config::Policy,
    /// Set by `witness recover --force`: the state to carry into the new
    /// cluster incarnation instead of a fresh policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered: Option<Box<crate::state::Recovery>>,
}

/// Why a data dir cannot be used. Every variant names the path and says what
/// to do; none is ever resolved by reinitialising the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "data dir {} already holds a store; `witness init` runs once per cluster; \
         to join, start `witness run` with an empty data dir",
        path.display()
    )]
    AlreadyExists { path: PathBuf },

    #[error(
        "data dir {} was created for node {stored}, but this config says node.id = {configured}; \
         point data_dir at node {configured}'s own data dir",
        path.display()
    )]
    WrongNode {
        path: PathBuf,
        stored: NodeId,
        configured: NodeId,
    },

    #[error(
        "data dir {} belongs to cluster '{stored}', but this config says node.cluster = \
         '{configured}'; point data_dir at this cluster's data dir, or move it aside to join \
         '{configured}' as a new member",
        path.display()
    )]
    WrongCluster {
        path: PathBuf,
        stored: String,
        configured: String,
    },

    #[error(
        "data dir {} has store format version {found}, this witness understands \
         {STORE_FORMAT_VERSION}; upgrade witness or restore the matching version",
        path.display()
    )]
    UnsupportedVersion { path: PathBuf, found: u64 },

    #[error(
        "data dir {} is corrupt ({detail}); refusing to serve from it: restore it from a backup, \
         or move it aside and rejoin this node as a new incarnation (`witnessctl members remove`, \
         then add it again)",
        path.display()
    )]
    Corrupt { path: PathBuf, detail: String },

    #[error(
        "data dir {} is an incomplete store (no metadata): a previous `witness init` or first \
         start was interrupted, or it is not a witness data dir; move the directory aside and \
         start again",
        path.display()
    )]
    Incomplete { path: PathBuf },

    #[error(
        "data dir {} cannot be used: {reason}; set data_dir to a writable directory, or to a \
         path where one can be created",
        path.display()
    )]
    Unusable { path: PathBuf, reason: String },

    #[error(
        "data dir {} is in use by another process ({detail}); stop the other witness using it, \
         or give this node its own data_dir",
        path.display()
    )]
    Locked { path: PathBuf, detail: String },

    #[error(
        "data dir {} belongs to cluster id {stored}, but a peer offered cluster id {offered}; \
         this node is talking to another cluster: check the peer addresses in its config",
        path.display()
    )]
    ClusterIdMismatch {
        path: PathBuf,
        stored: String,
        offered: String,
    },

    #[error(
        "I/O error on data dir {}: {source}; check the disk and the permissions, then restart",
        path.display()
    )]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl StoreError {
    /// Classify an I/O error met while using the store: undecodable or
    /// CRC-failing data is corruption, the rest is I/O.
    fn from_io(path: &Path, e: io::Error) -> StoreError {
        if e.kind() == io::ErrorKind::InvalidData {
            StoreError::Corrupt {
                path: path.to_path_buf(),
                detail: e.to_string(),
            }
        } else {
            StoreError::Io {
                path: path.to_path_buf(),
                source: e,
            }
        }
    }
}

/// An opened data dir. Cloning shares it.
#[derive(Clone)]
pub struct Store {
    disk: Arc<Disk>,
    /// The metadata as last written; the lock also serialises meta writes.
    meta: Arc<Mutex<StoreMeta>>,
}

enum DirState {
    Absent,
    Empty,
    NonEmpty,
}

fn inspect(path: &Path) -> Result<DirState, StoreError> {
    let unusable = |reason: String| StoreError::Unusable {
        path: path.to_path_buf(),
        reason,
    };
    match std::fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(DirState::Absent),
        Err(e) => Err(unusable(e.to_string())),
        Ok(m) if !m.is_dir() => Err(unusable("it exists and is not a directory".into())),
        Ok(_) => {
            let mut entries = std::fs::read_dir(path).map_err(|e| unusable(e.to_string()))?;
            Ok(if entries.next().is_some() {
                DirState::NonEmpty
            } else {
                DirState::Empty
            })
        }
    }
}

/// How long opening waits for sled's file lock before reporting the store
/// as in use. sled releases the lock when the last of its background I/O
/// tasks (its own thread pool) drops the file, which can be a little after
/// the last handle was dropped; a store closed and reopened in the same
/// process (tests, the simulation) must not trip over that. Another live
/// process holds the lock far longer than this, and is then reported.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Open sled in `path`, turning its errors into [`StoreError`]s.
fn open_disk(path: &Path) -> Result<Arc<Disk>, StoreError> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match open_disk_once(path) {
            Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

fn open_disk_once(path: &Path) -> Result<Arc<Disk>, StoreError> {
    let p = || path.to_path_buf();
    // sled 0.34 can panic instead of returning an error on some damaged
    // files. A panic here would still stop the witness, but without saying
    // which directory or what to do; catch it and report it as corruption.
    let opened = std::panic::catch_unwind(|| Disk::open(path)).map_err(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "sled panicked".into());
        StoreError::Corrupt {
            path: p(),
            detail: format!("sled cannot open it: {what}"),
        }
    })?;
    match opened {
        Ok(disk) => Ok(Arc::new(disk)),
        Err(sled::Error::Io(e)) => {
            // sled reports a held lock as an `Other` I/O error with this text
            // (sled 0.34.7, config.rs `try_lock`).
            let msg = e.to_string();
            Err(if msg.contains("could not acquire lock") {
                StoreError::Locked {
                    path: p(),
                    detail: msg,
                }
            } else if matches!(
                e.kind(),
                io::ErrorKind::PermissionDenied
                    | io::ErrorKind::ReadOnlyFilesystem
                    | io::ErrorKind::NotADirectory
            ) {
                StoreError::Unusable {
                    path: p(),
                    reason: msg,
                }
            } else {
                StoreError::Io {
                    path: p(),
                    source: e,
                }
            })
        }
        Err(e) => Err(StoreError::Corrupt {
            path: p(),
            detail: format!("sled cannot open it: {e}"),
        }),
    }
}

/// Create `path` and any missing parents, and fsync the directory above each
/// one created so the new entries survive a power cut.
fn create_dir_durably(path: &Path) -> Result<(), StoreError> {
    let absolute = std::path::absolute(path).map_err(|e| StoreError::Unusable {
        path: path.to_path_buf(),
        reason: format!("cannot resolve it: {e}"),
    })?;
    let created: Vec<&Path> = absolute.ancestors().take_while(|a| !a.exists()).collect();
    std::fs::create_dir_all(&absolute).map_err(|e| StoreError::Unusable {
        path: path.to_path_buf(),
        reason: format!("cannot create it: {e}"),
    })?;
    for dir in created {
        if let Some(parent) = dir.parent() {
            kv::sync_dir(parent).map_err(|e| StoreError::Io {
                path: path.to_path_buf(),
                source: e,
            })?;
        }
    }
    Ok(())
}

impl Store {
    /// `witness init`: create a brand-new store; refuses if `data_dir` exists
    /// and is not empty.
    pub fn create(data_dir: &Path, meta: StoreMeta) -> Result<Store, StoreError> {
        assert_eq!(
            meta.format_version, STORE_FORMAT_VERSION,
            "a new store is always written in this build's format"
        );
        match inspect(data_dir)? {
            DirState::NonEmpty => {
                return Err(StoreError::AlreadyExists {
                    path: data_dir.to_path_buf(),
                });
            }
            DirState::Empty => {}
            DirState::Absent => create_dir_durably(data_dir)?,
        }
        let disk = open_disk(data_dir)?;
        // Everything else (sled's files, the empty trees) is durable first;
        // the metadata goes last, in one write. A crash anywhere before it
        // leaves a store without metadata, which opening refuses as
        // incomplete rather than mistaking it for a fresh joiner.
        disk.sync().map_err(|e| StoreError::Io {
            path: data_dir.to_path_buf(),
            source: e,
        })?;
        let store = Store {
            disk,
            meta: Arc::new(Mutex::new(meta.clone())),
        };
        store.write_meta(&meta)?;
        tracing::info!(
            path = %data_dir.display(),
            node = meta.node_id,
            incarnation = %meta.incarnation,
            "created store"
        );
        Ok(store)
    }

    /// `witness run`: open the existing store in `data_dir`, checking it was
    /// made for `node_id` in `cluster_name`; or, if `data_dir` is absent or
    /// empty, create a joiner store (new incarnation, no cluster id yet, no
    /// bootstrap). Returns the store and whether it was just created.
    pub fn open_or_create_joiner(
        data_dir: &Path,
        node_id: NodeId,
        cluster_name: &str,
    ) -> Result<(Store, bool), StoreError> {
        match inspect(data_dir)? {
            DirState::Absent | DirState::Empty => {
                let meta = StoreMeta::new(cluster_name, None, node_id, None);
                Ok((Store::create(data_dir, meta)?, true))
            }
            DirState::NonEmpty => Ok((
                Store::open_existing(data_dir, node_id, cluster_name)?,
                false,
            )),
        }
    }

    fn open_existing(
        path: &Path,
        node_id: NodeId,
        cluster_name: &str,
    ) -> Result<Store, StoreError> {
        // Do not let sled create a database in a directory that holds
        // something else (or the debris of an interrupted creation).
        if !path.join("db").is_file() {
            return Err(StoreError::Incomplete {
                path: path.to_path_buf(),
            });
        }
        let disk = open_disk(path)?;
        let meta = read_meta(&disk)?;
        if meta.node_id != node_id {
            return Err(StoreError::WrongNode {
                path: path.to_path_buf(),
                stored: meta.node_id,
                configured: node_id,
            });
        }
        if meta.cluster_name != cluster_name {
            return Err(StoreError::WrongCluster {
                path: path.to_path_buf(),
                stored: meta.cluster_name,
                configured: cluster_name.to_string(),
            });
        }
        verify(&disk).map_err(|e| StoreError::from_io(path, e))?;
        tracing::info!(
            path = %path.display(),
            node = meta.node_id,
            incarnation = %meta.incarnation,
            "opened store"
        );
        Ok(Store {
            disk,
            meta: Arc::new(Mutex::new(meta)),
        })
    }

    fn lock_meta(&self) -> MutexGuard<'_, StoreMeta> {
        // The guarded value is replaced only after its write succeeded, so a
        // panic elsewhere cannot leave it inconsistent with the disk.
        self.meta
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The store's metadata.
    pub fn meta(&self) -> StoreMeta {
        self.lock_meta().clone()
    }

    /// Durably write `meta` (blocks for an fsync).
    fn write_meta(&self, meta: &StoreMeta) -> Result<(), StoreError> {
        let io = |e| StoreError::Io {
            path: self.path().to_path_buf(),
            source: e,
        };
        let payload = kv::to_json(TreeId::Meta, KEY_META, meta).map_err(io)?;
        Kv::Disk(Arc::clone(&self.disk))
            .apply(vec![Write::Put {
                tree: TreeId::Meta,
                key: KEY_META.to_vec(),
                payload,
            }])
            .map_err(io)?;
        self.disk.sync().map_err(io)
    }

    /// Record the cluster id learned from the cluster (durable; blocks for an
    /// fsync). Refuses to change an existing, different id: that would mean
    /// this node is being talked to by another cluster.
    pub fn set_cluster_id(&self, id: &str) -> Result<(), StoreError> {
        let mut meta = self.lock_meta();
        match &meta.cluster_id {
            Some(stored) if stored == id => Ok(()),
            Some(stored) => Err(StoreError::ClusterIdMismatch {
                path: self.path().to_path_buf(),
                stored: stored.clone(),
                offered: id.to_string(),
            }),
            None => {
                let mut next = meta.clone();
                next.cluster_id = Some(id.to_string());
                self.write_meta(&next)?;
                *meta = next;
                Ok(())
            }
        }
    }

    /// Forget the bootstrap once its policy is committed (durable; blocks for
    /// an fsync).
    pub fn clear_bootstrap(&self) -> Result<(), StoreError> {
        let mut meta = self.lock_meta();
        if meta.bootstrap.is_none() {
            return Ok(());
        }
        let mut next = meta.clone();
        next.bootstrap = None;
        self.write_meta(&next)?;
        *meta = next;
        Ok(())
    }

    /// The data dir.
    pub fn path(&self) -> &Path {
        self.disk.path()
    }

    /// The Raft log storage of this store.
    pub fn log_store(&self) -> LogStore {
        LogStore::new(Kv::Disk(Arc::clone(&self.disk)))
    }

    /// The state machine of this store, starting from its persisted snapshot.
    pub fn state_machine(&self) -> Result<StateMachineStore, StoreError> {
        StateMachineStore::load(Kv::Disk(Arc::clone(&self.disk)))
            .map_err(|e| StoreError::from_io(self.path(), e))
    }
}

/// A store in memory that outlives the processes using it: the simulation's
/// data dir. A simulated restart builds a new [`LogStore`] and
/// [`StateMachineStore`] over the same memory and finds its log, vote and
/// snapshots as a real restart finds its disk (every write is "on stable
/// storage" as soon as it returns). Cloning shares it.
#[derive(Clone)]
pub struct MemoryStore {
    kv: Kv,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore { kv: Kv::memory() }
    }
}

impl MemoryStore {
    /// The Raft log storage over this memory.
    pub fn log_store(&self) -> LogStore {
        LogStore::new(self.kv.clone())
    }

    /// The state machine over this memory, starting from its latest
    /// snapshot, as after a restart (openraft re-applies the log after it).
    pub fn state_machine(&self) -> io::Result<StateMachineStore> {
        StateMachineStore::load(self.kv.clone())
    }
}

/// Read and check the metadata: present, of a known version, decodable.
fn read_meta(disk: &Arc<Disk>) -> Result<StoreMeta, StoreError> {
    let path = || disk.path().to_path_buf();
    let payload = Kv::Disk(Arc::clone(disk))
        .get(TreeId::Meta, KEY_META)
        .map_err(|e| StoreError::from_io(disk.path(), e))?
        .ok_or_else(|| StoreError::Incomplete { path: path() })?;
    // Read the version before the rest: a newer format may have fields this
    // build cannot decode, and that must be reported as a version problem,
    // not as corruption.
    let corrupt = |detail: String| StoreError::Corrupt {
        path: path(),
        detail,
    };
    let loose: serde_json::Value = serde_json::from_slice(&payload)
        .map_err(|e| corrupt(format!("store metadata is undecodable: {e}")))?;
    let version = loose
        .get("format_version")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| corrupt("store metadata has no format_version".into()))?;
    if version != u64::from(STORE_FORMAT_VERSION) {
        return Err(StoreError::UnsupportedVersion {
            path: path(),
            found: version,
        });
    }
    serde_json::from_value(loose)
        .map_err(|e| corrupt(format!("store metadata is undecodable: {e}")))
}

/// Check every stored value: its CRC, that it decodes, and the log's shape.
/// The store is small (a short log and one snapshot), so this is cheap, and
/// it turns damage into a refusal at startup rather than a failure mid-term.
fn verify(disk: &Arc<Disk>) -> io::Result<()> {
    let kv = Kv::Disk(Arc::clone(disk));
    // CRCs of everything, including keys this build does not interpret.
    for tree in TreeId::ALL {
        kv.range(tree, &[], None)?;
    }

    let mut last_purged: Option<LogId> = None;
    for (key, payload) in kv.range(TreeId::Raft, &[], None)? {
        match key.as_slice() {
            log::KEY_VOTE => {
                kv::from_json::<Vote>(TreeId::Raft, &key, &payload)?;
            }
            log::KEY_COMMITTED => {
                kv::from_json::<LogId>(TreeId::Raft, &key, &payload)?;
            }
            log::KEY_LAST_PURGED => {
                last_purged = Some(kv::from_json(TreeId::Raft, &key, &payload)?);
            }
            _ => return Err(kv::invalid(TreeId::Raft, &key, "unknown key")),
        }
    }

    // Raft requires a log without holes, and `purge` removes entries and
    // records `last_purged` in one atomic write, so no entry may sit at or
    // below it. (Whether the first entry is exactly last_purged + 1 is not
    // checked: refusing a healthy store would be worse than missing that.)
    let mut prev: Option<u64> = None;
    for (key, payload) in kv.range(TreeId::Log, &[], None)? {
        let index = log::decode_entry(&key, &payload)?.log_id.index;
        if let Some(p) = last_purged
            && index <= p.index
        {
            return Err(kv::invalid(
                TreeId::Log,
                &key,
                format!("entry survives a purge up to index {}", p.index),
            ));
        }
        if let Some(prev) = prev
            && index != prev + 1
        {
            return Err(kv::invalid(
                TreeId::Log,
                &key,
                format!("hole in the log after index {prev}"),
            ));
        }
        prev = Some(index);
    }

    // The snapshot decodes and agrees with its meta.
    StateMachineStore::load(kv).map(|_| ())
}

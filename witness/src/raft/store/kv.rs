//! The key-value layer under the log and the state machine: named trees,
//! CRC-sealed values, atomic multi-key writes, and a real fsync.
//!
//! Two backends share one interface so that the Raft code above never knows
//! which one it runs on: [`Disk`] (sled, production) and an in-memory map
//! (unit tests and the deterministic simulation, which must not do file I/O).
//! Both store the same sealed bytes, so the CRC checks run in tests too.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// sled's page cache. Its default is 1 GiB; a witness's whole store (a short
/// log plus a small state) fits in a few hundred KiB, so 4 MiB keeps the
/// footprint small without ever evicting the working set.
const CACHE_CAPACITY_BYTES: u64 = 4 * 1024 * 1024;

/// The trees of a store. Each is a separate sled tree (or map, in memory).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum TreeId {
    /// One key, `meta`: the [`StoreMeta`](super::StoreMeta).
    Meta,
    /// The Raft log: key = big-endian u64 index, value = JSON entry.
    Log,
    /// Raft's own durable variables: `vote`, `committed`, `last_purged`.
    Raft,
    /// The last snapshot: `meta` (JSON snapshot meta) and `data`.
    Snapshot,
}

impl TreeId {
    pub(super) const ALL: [TreeId; 4] = [TreeId::Meta, TreeId::Log, TreeId::Raft, TreeId::Snapshot];

    pub(super) fn name(self) -> &'static str {
        match self {
            TreeId::Meta => "meta",
            TreeId::Log => "log",
            TreeId::Raft => "raft",
            TreeId::Snapshot => "snapshot",
        }
    }

    fn slot(self) -> usize {
        self as usize
    }
}

/// A human-readable key for error messages: log keys as their index, the
/// other trees' keys as text.
pub(super) fn show_key(tree: TreeId, key: &[u8]) -> String {
    if tree == TreeId::Log
        && let Ok(bytes) = <[u8; 8]>::try_from(key)
    {
        return format!("index {}", u64::from_be_bytes(bytes));
    }
    match std::str::from_utf8(key) {
        Ok(s) if s.chars().all(|c| c.is_ascii_graphic()) => format!("'{s}'"),
        _ => format!(
            "0x{}",
            key.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
    }
}

/// An `InvalidData` error naming where the bad value sits.
pub(super) fn invalid(tree: TreeId, key: &[u8], what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "tree '{}', key {}: {what}",
            tree.name(),
            show_key(tree, key)
        ),
    )
}

// ---- sealing: every stored value is `crc32(payload) (4 bytes, BE) ++ payload`

/// Length of the CRC prefix.
const CRC_LEN: usize = 4;

pub(super) fn seal(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(CRC_LEN + payload.len());
    out.extend_from_slice(&crc32fast::hash(payload).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Check a stored value's CRC and return its payload.
pub(super) fn unseal(tree: TreeId, key: &[u8], value: &[u8]) -> io::Result<Vec<u8>> {
    let Some((crc, payload)) = value.split_first_chunk::<CRC_LEN>() else {
        return Err(invalid(
            tree,
            key,
            format!("value of {} bytes is too short", value.len()),
        ));
    };
    let stored = u32::from_be_bytes(*crc);
    let computed = crc32fast::hash(payload);
    if stored != computed {
        return Err(invalid(
            tree,
            key,
            format!("CRC mismatch (stored {stored:08x}, computed {computed:08x})"),
        ));
    }
    Ok(payload.to_vec())
}

/// Serialize `value` as a payload.
pub(super) fn to_json<T: Serialize>(tree: TreeId, key: &[u8], value: &T) -> io::Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| invalid(tree, key, format!("cannot encode: {e}")))
}

/// Decode a payload.
pub(super) fn from_json<T: DeserializeOwned>(
    tree: TreeId,
    key: &[u8],
    payload: &[u8],
) -> io::Result<T> {
    serde_json::from_slice(payload).map_err(|e| invalid(tree, key, format!("undecodable: {e}")))
}

/// One change in an atomic [`Kv::commit`]. Payloads are sealed by the `Kv`.
#[derive(Debug)]
pub(super) enum Write {
    Put {
        tree: TreeId,
        key: Vec<u8>,
        payload: Vec<u8>,
    },
    Delete {
        tree: TreeId,
        key: Vec<u8>,
    },
    /// Remove every key in `from..to` (`to = None`: to the end).
    DeleteRange {
        tree: TreeId,
        from: Vec<u8>,
        to: Option<Vec<u8>>,
    },
}

fn bounds(from: &[u8], to: Option<&[u8]>) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let end = match to {
        Some(to) => Bound::Excluded(to.to_vec()),
        None => Bound::Unbounded,
    };
    (Bound::Included(from.to_vec()), end)
}

fn is_empty_range(from: &[u8], to: Option<&[u8]>) -> bool {
    // BTreeMap::range panics on an inverted range; sled returns nothing. Both
    // backends must agree, so both short-cut it.
    to.is_some_and(|to| to <= from)
}

/// The in-memory backend's trees, indexed by [`TreeId`], holding the same
/// sealed bytes as sled would.
type MemTrees = [BTreeMap<Vec<u8>, Vec<u8>>; 4];

/// A store's key-value backend. Cloning shares it.
#[derive(Clone)]
pub(super) enum Kv {
    Disk(Arc<Disk>),
    Memory(Arc<Mutex<MemTrees>>),
}

impl Kv {
    pub(super) fn memory() -> Kv {
        Kv::Memory(Arc::default())
    }

    fn lock_memory(mem: &Mutex<MemTrees>) -> std::sync::MutexGuard<'_, MemTrees> {
        // A panic while holding the lock cannot leave a half-applied write:
        // every write below is computed before the map is touched. So a
        // poisoned lock still guards consistent data.
        mem.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The CRC-checked payload at `key`.
    pub(super) fn get(&self, tree: TreeId, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        let raw = match self {
            Kv::Disk(disk) => disk
                .tree(tree)
                .get(key)
                .map_err(sled_io)?
                .map(|v| v.to_vec()),
            Kv::Memory(mem) => Self::lock_memory(mem)[tree.slot()].get(key).cloned(),
        };
        raw.map(|v| unseal(tree, key, &v)).transpose()
    }

    /// CRC-checked `(key, payload)` pairs with keys in `from..to`, in order.
    pub(super) fn range(
        &self,
        tree: TreeId,
        from: &[u8],
        to: Option<&[u8]>,
    ) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if is_empty_range(from, to) {
            return Ok(Vec::new());
        }
        let raw: Vec<(Vec<u8>, Vec<u8>)> = match self {
            Kv::Disk(disk) => disk
                .tree(tree)
                .range(bounds(from, to))
                .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(sled_io))
                .collect::<io::Result<_>>()?,
            Kv::Memory(mem) => Self::lock_memory(mem)[tree.slot()]
                .range(bounds(from, to))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        raw.into_iter()
            .map(|(k, v)| unseal(tree, &k, &v).map(|p| (k, p)))
            .collect()
    }

    /// The CRC-checked last `(key, payload)` of `tree`.
    pub(super) fn last(&self, tree: TreeId) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
        let raw = match self {
            Kv::Disk(disk) => disk
                .tree(tree)
                .last()
                .map_err(sled_io)?
                .map(|(k, v)| (k.to_vec(), v.to_vec())),
            Kv::Memory(mem) => Self::lock_memory(mem)[tree.slot()]
                .last_key_value()
                .map(|(k, v)| (k.clone(), v.clone())),
        };
        raw.map(|(k, v)| unseal(tree, &k, &v).map(|p| (k, p)))
            .transpose()
    }

    /// Apply `writes` atomically and make them durable before returning.
    ///
    /// On disk the sled write and the fsync run on tokio's blocking pool: an
    /// fsync takes milliseconds, and stalling an async worker for that long
    /// would stall the gRPC server and Raft's timers sharing that thread.
    pub(super) async fn commit(&self, writes: Vec<Write>) -> io::Result<()> {
        match self {
            Kv::Disk(disk) => {
                let disk = Arc::clone(disk);
                tokio::task::spawn_blocking(move || {
                    disk.apply(writes)?;
                    disk.sync()
                })
                .await
                .map_err(|e| io::Error::other(format!("storage task failed: {e}")))?
            }
            Kv::Memory(_) => self.apply(writes),
        }
    }

    /// Apply `writes` atomically; readable at once, durable only after a
    /// later [`Disk::sync`]. Used by `append`, whose durability is signalled
    /// separately through openraft's `IOFlushed` callback.
    pub(super) fn apply(&self, writes: Vec<Write>) -> io::Result<()> {
        match self {
            Kv::Disk(disk) => disk.apply(writes),
            Kv::Memory(mem) => {
                let mut trees = Self::lock_memory(mem);
                for w in writes {
                    match w {
                        Write::Put { tree, key, payload } => {
                            trees[tree.slot()].insert(key, seal(&payload));
                        }
                        Write::Delete { tree, key } => {
                            trees[tree.slot()].remove(&key);
                        }
                        Write::DeleteRange { tree, from, to } => {
                            if is_empty_range(&from, to.as_deref()) {
                                continue;
                            }
                            let map = &mut trees[tree.slot()];
                            let doomed: Vec<Vec<u8>> = map
                                .range(bounds(&from, to.as_deref()))
                                .map(|(k, _)| k.clone())
                                .collect();
                            for k in doomed {
                                map.remove(&k);
                            }
                        }
                    }
                }
                Ok(())
            }
        }
    }
}

/// Turn a sled error into an `io::Error` for openraft.
pub(super) fn sled_io(e: sled::Error) -> io::Error {
    match e {
        sled::Error::Io(e) => e,
        other => io::Error::other(format!("sled: {other}")),
    }
}

/// An opened sled database in a data dir, plus what it takes to make its
/// writes really durable.
pub(super) struct Disk {
    path: PathBuf,
    db: sled::Db,
    trees: [sled::Tree; 4],
    /// Our own handle on sled's data file, used only for `fdatasync`.
    ///
    /// sled 0.34 keeps its whole log (every tree, every value small enough
    /// not to spill into `blobs/`) in one file, `<dir>/db`; `conf` is written
    /// once at creation, `snap.*` are its own recovery hints (rebuilt from
    /// the log if lost). Its `flush()` ends with `sync_file_range`, which
    /// writes the pages but does not make the file's metadata (its size) or
    /// the drive's cache durable, so a flushed write can vanish in a power
    /// cut. `fdatasync` on any descriptor of the same inode flushes that
    /// inode's dirty data and size metadata, whoever wrote them: the page
    /// cache and the journal are per inode, not per descriptor. A second
    /// descriptor is therefore as good as sled's own, which it does not
    /// expose. It does not disturb sled's lock either: sled locks with
    /// `flock`, which belongs to sled's open file description, and opening
    /// or closing another description neither takes nor drops it.
    db_file: File,
}

impl Disk {
    /// Open (creating if absent) the sled database in `path`.
    pub(super) fn open(path: &Path) -> Result<Disk, sled::Error> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(CACHE_CAPACITY_BYTES)
            // LowSpace (sled's default) compacts segments more eagerly. The
            // witness writes a few entries a second at most, so sled's
            // throughput is never the bottleneck (our fsync is), and a small
            // footprint on a shared svc node matters more.
            .mode(sled::Mode::LowSpace)
            .open()?;
        let open_tree = |t: TreeId| db.open_tree(t.name());
        let trees = [
            open_tree(TreeId::Meta)?,
            open_tree(TreeId::Log)?,
            open_tree(TreeId::Raft)?,
            open_tree(TreeId::Snapshot)?,
        ];
        let db_file = File::open(path.join("db"))?;
        let disk = Disk {
            path: path.to_path_buf(),
            db,
            trees,
            db_file,
        };
        // The files sled just created (conf, db, blobs/) must be findable
        // after a power cut before anything in them is acknowledged: fsync
        // `conf` and the directories that name them. Cheap, and done at
        // every open so a crash during an earlier creation is covered too.
        sync_file(&path.join("conf"))?;
        sync_dir(&path.join("blobs"))?;
        sync_dir(path)?;
        Ok(disk)
    }

    pub(super) fn tree(&self, tree: TreeId) -> &sled::Tree {
        &self.trees[tree.slot()]
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// The raw descriptor our fsync uses (the strace test looks for it).
    #[cfg(test)]
    pub(super) fn sync_fd(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.db_file.as_raw_fd()
    }

    /// Make every write sled has accepted so far durable. Everything that
    /// must survive a crash calls this before it is acknowledged.
    pub(super) fn sync(&self) -> io::Result<()> {
        // 1. Hand sled's in-memory buffers to the kernel (pwrite +
        //    sync_file_range): after this the bytes are in the file's pages.
        self.db.flush().map_err(sled_io)?;
        // 2. Values too large for a log segment (over ~128 KiB, e.g. a big
        //    snapshot) live in `blobs/<lsn>` files that sled writes without
        //    any sync. Sync all of them and their directory. There are few
        //    (usually none) and syncing a clean file is nearly free; syncing
        //    all rather than only new ones avoids racing sled's own writers.
        let blobs = self.path.join("blobs");
        let mut any_blob = false;
        for entry in std::fs::read_dir(&blobs)? {
            let entry = entry?;
            match File::open(entry.path()) {
                Ok(f) => f.sync_data()?,
                // sled's GC may remove an obsolete blob while we list.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            any_blob = true;
        }
        if any_blob {
            sync_dir(&blobs)?;
        }
        // 3. The real barrier: fdatasync of the data file (see `db_file`).
        self.db_file.sync_data()
    }

    /// Apply `writes` atomically (not yet durable).
    fn apply(&self, writes: Vec<Write>) -> io::Result<()> {
        // Group into one sled batch per tree; a batch is atomic within its
        // tree, and a transaction over several trees makes the whole set
        // atomic (only `purge` touches two trees).
        let mut batches: BTreeMap<TreeId, sled::Batch> = BTreeMap::new();
        for w in writes {
            match w {
                Write::Put { tree, key, payload } => {
                    batches.entry(tree).or_default().insert(key, seal(&payload));
                }
                Write::Delete { tree, key } => batches.entry(tree).or_default().remove(key),
                Write::DeleteRange { tree, from, to } => {
                    let batch = batches.entry(tree).or_default();
                    if is_empty_range(&from, to.as_deref()) {
                        continue;
                    }
                    // Writers are serialised by openraft (`&mut self`), so
                    // no key can appear in this range between scan and batch.
                    for key in self.tree(tree).range(bounds(&from, to.as_deref())).keys() {
                        batch.remove(key.map_err(sled_io)?);
                    }
                }
            }
        }
        let mut batches: Vec<(TreeId, sled::Batch)> = batches.into_iter().collect();
        match batches.len() {
            0 => Ok(()),
            1 => match batches.pop() {
                Some((tree, batch)) => self.tree(tree).apply_batch(batch).map_err(sled_io),
                None => Ok(()),
            },
            _ => {
                use sled::Transactional;
                let trees: Vec<&sled::Tree> = batches.iter().map(|(t, _)| self.tree(*t)).collect();
                trees
                    .as_slice()
                    .transaction(|views| {
                        for (view, (_, batch)) in views.iter().zip(&batches) {
                            view.apply_batch(batch)?;
                        }
                        Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
                    })
                    .map_err(|e| match e {
                        sled::transaction::TransactionError::Storage(e) => sled_io(e),
                        sled::transaction::TransactionError::Abort(()) => {
                            io::Error::other("sled transaction aborted")
                        }
                    })
            }
        }
    }
}

/// fsync a file's data.
fn sync_file(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_data()
}

/// fsync a directory, so the entries it holds (created or removed files)
/// survive a power cut.
pub(super) fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

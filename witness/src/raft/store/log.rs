//! The Raft log, vote and committed pointer behind openraft's
//! [`RaftLogStorage`]: one type, sled or memory underneath.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};

use openraft::OptionalSend;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};

use super::kv::{self, Kv, TreeId, Write};
use crate::raft::types::{Entry, LogId, TypeConfig, Vote};

pub(super) const KEY_VOTE: &[u8] = b"vote";
pub(super) const KEY_COMMITTED: &[u8] = b"committed";
pub(super) const KEY_LAST_PURGED: &[u8] = b"last_purged";

/// Log keys are big-endian indexes so that sled's byte order is log order.
pub(super) fn index_key(index: u64) -> Vec<u8> {
    index.to_be_bytes().to_vec()
}

/// Decode a log entry and check it sits under its own index: a value moved
/// to the wrong key would otherwise be served as a different entry.
pub(super) fn decode_entry(key: &[u8], payload: &[u8]) -> io::Result<Entry> {
    let entry: Entry = kv::from_json(TreeId::Log, key, payload)?;
    if key != index_key(entry.log_id.index).as_slice() {
        return Err(kv::invalid(
            TreeId::Log,
            key,
            format!("holds the entry of index {}", entry.log_id.index),
        ));
    }
    Ok(entry)
}

/// The Raft log storage. Cloning is cheap and shares the store (openraft
/// reads through a clone while it appends through the original).
///
/// Durability contract (openraft's, and DESIGN.md §3 assumption (a)):
/// `save_vote`, `save_committed`, `truncate_after` and `purge` return only
/// once on stable storage; `append` makes entries readable at once and calls
/// its `IOFlushed` callback only once they are on stable storage.
#[derive(Clone)]
pub struct LogStore {
    kv: Kv,
}

impl LogStore {
    pub(super) fn new(kv: Kv) -> LogStore {
        LogStore { kv }
    }

    /// A log store that lives in memory only: for tests and the simulation.
    pub fn memory() -> LogStore {
        LogStore::new(Kv::memory())
    }

    fn get_json<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        self.kv
            .get(TreeId::Raft, key)?
            .map(|p| kv::from_json(TreeId::Raft, key, &p))
            .transpose()
    }

    fn put_json<T: serde::Serialize>(key: &[u8], value: &T) -> io::Result<Write> {
        Ok(Write::Put {
            tree: TreeId::Raft,
            key: key.to_vec(),
            payload: kv::to_json(TreeId::Raft, key, value)?,
        })
    }
}

/// `[from, to)` of a `RangeBounds<u64>`, `to = None` meaning unbounded.
fn index_range(range: &impl RangeBounds<u64>) -> Option<(u64, Option<u64>)> {
    let from = match range.start_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let to = match range.end_bound() {
        Bound::Included(&i) => i.checked_add(1),
        Bound::Excluded(&i) => Some(i),
        Bound::Unbounded => None,
    };
    Some((from, to))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let Some((from, to)) = index_range(&range) else {
            return Ok(Vec::new());
        };
        // Synchronous read: the log is short (purged after each snapshot) and
        // sits in sled's cache, so this does not block for disk I/O.
        let to_key = to.map(index_key);
        self.kv
            .range(TreeId::Log, &index_key(from), to_key.as_deref())?
            .into_iter()
            .map(|(k, p)| decode_entry(&k, &p))
            .collect()
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.get_json(KEY_VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged: Option<LogId> = self.get_json(KEY_LAST_PURGED)?;
        let last = match self.kv.last(TreeId::Log)? {
            Some((k, p)) => Some(decode_entry(&k, &p)?.log_id),
            // An empty log ends where it was purged.
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        // A vote must never be forgotten (it would let this node vote twice
        // in one term), so this returns only after the fsync.
        self.kv.commit(vec![Self::put_json(KEY_VOTE, vote)?]).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Persisted so that a restart re-applies committed entries after the
        // last snapshot at once, instead of serving an older state until the
        // leader repeats the commit index.
        let write = match committed {
            Some(c) => Self::put_json(KEY_COMMITTED, &c)?,
            None => Write::Delete {
                tree: TreeId::Raft,
                key: KEY_COMMITTED.to_vec(),
            },
        };
        self.kv.commit(vec![write]).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        self.get_json(KEY_COMMITTED)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut writes = Vec::new();
        for entry in entries {
            let key = index_key(entry.log_id.index);
            let payload = kv::to_json(TreeId::Log, &key, &entry)?;
            writes.push(Write::Put {
                tree: TreeId::Log,
                key,
                payload,
            });
        }
        // Readable as soon as we return (openraft requires that); durable
        // only when the callback fires. The fsync runs off the caller's task
        // so Raft can keep replicating meanwhile (openraft's pipelining). A
        // later sync covers every earlier write, so callbacks completing out
        // of order are harmless: openraft keeps the highest flushed IO id.
        self.kv.apply(writes)?;
        match &self.kv {
            Kv::Disk(disk) => {
                let disk = std::sync::Arc::clone(disk);
                tokio::task::spawn_blocking(move || {
                    let synced = disk.sync();
                    // Release the store before acknowledging, so that whoever
                    // waits for the acknowledgement and then closes the store
                    // really closes it (sled's lock goes with the last handle).
                    drop(disk);
                    callback.io_completed(synced);
                });
            }
            Kv::Memory(_) => callback.io_completed(Ok(())),
        }
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |l| l.index + 1);
        tracing::debug!(from, "truncating the log");
        self.kv
            .commit(vec![Write::DeleteRange {
                tree: TreeId::Log,
                from: index_key(from),
                to: None,
            }])
            .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        tracing::debug!(upto = %log_id, "purging the log");
        // One atomic write over both trees: `last_purged` and the removal of
        // the entries it covers can never be seen apart, so the log never
        // shows a gap between last_purged and its first entry.
        let to = log_id.index.checked_add(1).map(index_key);
        self.kv
            .commit(vec![
                Self::put_json(KEY_LAST_PURGED, &log_id)?,
                Write::DeleteRange {
                    tree: TreeId::Log,
                    from: index_key(0),
                    to,
                },
            ])
            .await
    }
}

//! The applied state behind openraft's [`RaftStateMachine`], its snapshots,
//! and the read handle the servers use.
//!
//! The state itself lives in memory. It is made durable by the log (whose
//! committed prefix openraft re-applies at start) plus the last snapshot,
//! which the sled backend persists and loads back at open.

use std::io;
use std::sync::Arc;

use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, watch};

use super::kv::{self, Kv, TreeId, Write};
use crate::raft::types::{
    LogId, Snapshot, SnapshotData, SnapshotMeta, StoredMembership, TypeConfig,
};
use crate::state::{Response, WitnessState};

pub(super) const KEY_SNAPSHOT_META: &[u8] = b"meta";
pub(super) const KEY_SNAPSHOT_DATA: &[u8] = b"data";

/// The replicated state as of one log position: what the servers read.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AppliedState {
    /// The last entry applied; `None` before any.
    pub last_applied: Option<LogId>,
    /// The last membership applied.
    pub membership: StoredMembership,
    /// The witnesses' shared state.
    pub state: WitnessState,
}

/// Decode a snapshot payload and check it agrees with its meta.
pub(super) fn decode_snapshot(meta: &SnapshotMeta, data: &[u8]) -> io::Result<AppliedState> {
    let applied: AppliedState = kv::from_json(TreeId::Snapshot, KEY_SNAPSHOT_DATA, data)?;
    if applied.last_applied != meta.last_log_id || applied.membership != meta.last_membership {
        return Err(kv::invalid(
            TreeId::Snapshot,
            KEY_SNAPSHOT_DATA,
            format!(
                "snapshot data (last applied {:?}) does not match its meta (last log id {:?})",
                applied.last_applied, meta.last_log_id
            ),
        ));
    }
    Ok(applied)
}

/// The last snapshot, as persisted.
#[derive(Clone)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: SnapshotData,
}

/// Where snapshots are kept. Shared by the state machine and its builders,
/// which may run concurrently with `apply` and `install_snapshot`.
#[derive(Clone)]
struct Snapshots {
    kv: Kv,
    /// The current snapshot. A tokio mutex because it is held across the
    /// persisting await, so that compare, write and replace are one step.
    current: Arc<Mutex<Option<StoredSnapshot>>>,
}

impl Snapshots {
    /// Load the persisted snapshot, if any.
    fn load(kv: Kv) -> io::Result<(Snapshots, Option<AppliedState>)> {
        let meta = kv.get(TreeId::Snapshot, KEY_SNAPSHOT_META)?;
        let data = kv.get(TreeId::Snapshot, KEY_SNAPSHOT_DATA)?;
        let (current, applied) = match (meta, data) {
            (None, None) => (None, None),
            (Some(meta), Some(data)) => {
                let meta: SnapshotMeta = kv::from_json(TreeId::Snapshot, KEY_SNAPSHOT_META, &meta)?;
                let applied = decode_snapshot(&meta, &data)?;
                (Some(StoredSnapshot { meta, data }), Some(applied))
            }
            // Both keys are written in one atomic batch; one without the
            // other is damage, not a crash window.
            (Some(_), None) => {
                return Err(kv::invalid(TreeId::Snapshot, KEY_SNAPSHOT_DATA, "missing"));
            }
            (None, Some(_)) => {
                return Err(kv::invalid(TreeId::Snapshot, KEY_SNAPSHOT_META, "missing"));
            }
        };
        Ok((
            Snapshots {
                kv,
                current: Arc::new(Mutex::new(current)),
            },
            applied,
        ))
    }

    /// Persist `snap` (durably) and make it current, unless the current one
    /// is newer: a builder that captured an older state may finish after a
    /// newer snapshot was installed, and must not replace it.
    async fn replace(&self, snap: StoredSnapshot) -> io::Result<()> {
        let mut current = self.current.lock().await;
        if let Some(cur) = current.as_ref()
            && cur.meta.last_log_id > snap.meta.last_log_id
        {
            tracing::info!(
                kept = ?cur.meta.last_log_id,
                dropped = ?snap.meta.last_log_id,
                "a newer snapshot is already current; not replacing it"
            );
            return Ok(());
        }
        let meta = kv::to_json(TreeId::Snapshot, KEY_SNAPSHOT_META, &snap.meta)?;
        self.kv
            .commit(vec![
                Write::Put {
                    tree: TreeId::Snapshot,
                    key: KEY_SNAPSHOT_META.to_vec(),
                    payload: meta,
                },
                Write::Put {
                    tree: TreeId::Snapshot,
                    key: KEY_SNAPSHOT_DATA.to_vec(),
                    payload: snap.data.clone(),
                },
            ])
            .await?;
        *current = Some(snap);
        Ok(())
    }
}

/// The state machine storage. Owned by openraft; keep a [`StateReader`]
/// (from [`StateMachineStore::reader`]) before handing it over.
pub struct StateMachineStore {
    /// The applied state; the same `Arc` the watch channel publishes.
    applied: Arc<AppliedState>,
    published: Arc<watch::Sender<Arc<AppliedState>>>,
    snapshots: Snapshots,
}

impl StateMachineStore {
    /// A state machine whose snapshots live in memory only: for tests and
    /// the simulation.
    pub fn memory() -> StateMachineStore {
        // An empty in-memory store holds no snapshot, so loading cannot fail;
        // build it directly rather than through a fallible load.
        let snapshots = Snapshots {
            kv: Kv::memory(),
            current: Arc::new(Mutex::new(None)),
        };
        StateMachineStore::with(snapshots, AppliedState::default())
    }

    /// Open the state machine over `kv`, starting from its persisted
    /// snapshot (openraft then re-applies the committed log after it).
    pub(super) fn load(kv: Kv) -> io::Result<StateMachineStore> {
        let (snapshots, applied) = Snapshots::load(kv)?;
        Ok(StateMachineStore::with(
            snapshots,
            applied.unwrap_or_default(),
        ))
    }

    fn with(snapshots: Snapshots, applied: AppliedState) -> StateMachineStore {
        let applied = Arc::new(applied);
        let (tx, _rx) = watch::channel(Arc::clone(&applied));
        StateMachineStore {
            applied,
            published: Arc::new(tx),
            snapshots,
        }
    }

    /// A cheap cloneable read handle on the applied state.
    pub fn reader(&self) -> StateReader {
        StateReader {
            published: Arc::clone(&self.published),
        }
    }

    fn publish(&mut self, applied: AppliedState) {
        self.applied = Arc::new(applied);
        // `send_replace` publishes even when nobody subscribes yet.
        self.published.send_replace(Arc::clone(&self.applied));
    }
}

/// Read access to the applied state for the servers, without going through
/// openraft. It shows what this node has applied, which may lag the leader:
/// anything that must be current (a lease grant) first runs a read-index
/// round and waits until this node has applied up to it.
#[derive(Clone)]
pub struct StateReader {
    published: Arc<watch::Sender<Arc<AppliedState>>>,
}

impl StateReader {
    /// The latest applied state.
    pub fn current(&self) -> Arc<AppliedState> {
        Arc::clone(&self.published.borrow())
    }

    /// A receiver that sees every newly applied state (at least the latest).
    pub fn subscribe(&self) -> watch::Receiver<Arc<AppliedState>> {
        self.published.subscribe()
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok((self.applied.last_applied, self.applied.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        // Work on a copy and publish it whole: readers never see a batch
        // half-applied. The copy costs one clone of a small, bounded state
        // per batch, which buys lock-free readers.
        let mut next = (*self.applied).clone();
        let mut replies = Vec::new();
        let result = loop {
            let (entry, responder) = match entries.try_next().await {
                Ok(Some(item)) => item,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            };
            next.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => Response::Internal,
                EntryPayload::Normal(ref request) => next.state.apply(entry.log_id.index, request),
                EntryPayload::Membership(ref membership) => {
                    next.membership = StoredMembership::new(Some(entry.log_id), membership.clone());
                    Response::Internal
                }
            };
            if let Some(responder) = responder {
                replies.push((responder, response));
            }
        };
        // Publish before answering, so that a client who got its answer and
        // then reads through a `StateReader` sees its own write.
        self.publish(next);
        for (responder, response) in replies {
            responder.send(response);
        }
        result
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            applied: Arc::clone(&self.applied),
            snapshots: self.snapshots.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Self::SnapshotData,
    ) -> Result<(), io::Error> {
        let applied = decode_snapshot(meta, &snapshot)?;
        tracing::info!(last = ?meta.last_log_id, bytes = snapshot.len(), "installing snapshot");
        // Persist first: once the state machine reflects the snapshot,
        // openraft purges the log it replaces, so the snapshot must already
        // be on stable storage.
        self.snapshots
            .replace(StoredSnapshot {
                meta: meta.clone(),
                data: snapshot,
            })
            .await?;
        self.publish(applied);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        Ok(self
            .snapshots
            .current
            .lock()
            .await
            .as_ref()
            .map(|s| Snapshot {
                meta: s.meta.clone(),
                snapshot: s.data.clone(),
            }))
    }
}

/// Builds a snapshot of the state as it was when the builder was made,
/// while the state machine keeps applying.
pub struct SnapshotBuilder {
    applied: Arc<AppliedState>,
    snapshots: Snapshots,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let data = kv::to_json(TreeId::Snapshot, KEY_SNAPSHOT_DATA, &*self.applied)?;
        let meta = SnapshotMeta {
            last_log_id: self.applied.last_applied,
            last_membership: self.applied.membership.clone(),
        };
        tracing::info!(last = ?meta.last_log_id, bytes = data.len(), "built snapshot");
        self.snapshots
            .replace(StoredSnapshot {
                meta: meta.clone(),
                data: data.clone(),
            })
            .await?;
        Ok(Snapshot {
            meta,
            snapshot: data,
        })
    }
}

//! Storage tests: openraft's own suite on both backends, durability across
//! reopen, every refusal of a bad data dir, and the fsync proof.

use std::collections::BTreeSet;
use std::io;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use openraft::StorageError;
use openraft::storage::{
    IOFlushed, RaftLogReader, RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine, StorageHelper,
};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::testing::{blank_ent, log_id, membership_ent};
use openraft::type_config::TypeConfigExt;
use tempfile::TempDir;

use super::kv::{self, Disk, TreeId};
use super::*;
use crate::config::Policy;
use crate::raft::types::{Entry, LogId, TypeConfig, Vote, WitnessNode};
use crate::state::{Actor, Request};

const NODE: NodeId = 1;
const CLUSTER: &str = "mail-ha";

fn lid(term: u64, index: u64) -> LogId {
    log_id::<TypeConfig>(term, NODE, index)
}

fn blank(term: u64, index: u64) -> Entry {
    blank_ent::<TypeConfig>(term, NODE, index)
}

fn members(term: u64, index: u64, voters: &[NodeId]) -> Entry {
    membership_ent::<TypeConfig>(term, NODE, index, vec![voters.iter().copied().collect()])
}

fn set_policy(term: u64, index: u64, expected_version: u64) -> Entry {
    use openraft::entry::RaftEntry;
    Entry::new_normal(
        lid(term, index),
        Request::SetPolicy {
            policy: Box::new(Policy::default()),
            expected_version,
            by: Actor::Bootstrap,
            reason: "test".into(),
            at_unix_ms: 0,
        },
    )
}

fn bootstrap() -> Bootstrap {
    let node = WitnessNode {
        name: "svc1".into(),
        addr: "127.0.0.1:7400".into(),
        site: "dc-a".into(),
        incarnation: None,
    };
    Bootstrap {
        members: [(NODE, node)].into(),
        policy: Policy::default(),
        recovered: None,
    }
}

/// A fresh store for node 1 of `mail-ha`, made as `witness init` would.
fn init_store(dir: &Path) -> Store {
    let meta = StoreMeta::new(CLUSTER, Some("cid-1".into()), NODE, Some(bootstrap()));
    Store::create(dir, meta).expect("create store")
}

fn reopen(dir: &Path) -> Result<Store, StoreError> {
    Store::open_or_create_joiner(dir, NODE, CLUSTER).map(|(store, created)| {
        assert!(!created, "reopening must find the existing store");
        store
    })
}

/// Append and wait until openraft would consider the entries flushed.
async fn append(log: &mut LogStore, entries: Vec<Entry>) -> io::Result<()> {
    let (tx, rx) = TypeConfig::oneshot();
    log.append(entries, IOFlushed::signal(tx)).await?;
    rx.await
        .map_err(|_| io::Error::other("IOFlushed callback dropped"))?
}

async fn apply(sm: &mut StateMachineStore, entries: Vec<Entry>) -> io::Result<()> {
    sm.apply(futures::stream::iter(
        entries.into_iter().map(|e| Ok((e, None))),
    ))
    .await
}

fn run<F: std::future::Future<Output = T>, T>(f: F) -> T {
    TypeConfig::run(f)
}

fn data_dir(tmp: &TempDir) -> std::path::PathBuf {
    tmp.path().join("data")
}

// ---- openraft's storage suite ------------------------------------------

struct MemoryBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, ()> for MemoryBuilder {
    async fn build(&self) -> Result<((), LogStore, StateMachineStore), StorageError<TypeConfig>> {
        Ok(((), LogStore::memory(), StateMachineStore::memory()))
    }
}

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for SledBuilder {
    async fn build(
        &self,
    ) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<TypeConfig>> {
        let tmp = TempDir::new().map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        let store = init_store(&data_dir(&tmp));
        let sm = store.state_machine().map_err(|e| {
            StorageError::read(TypeConfig::err_from_error(&io::Error::other(e.to_string())))
        })?;
        Ok((tmp, store.log_store(), sm))
    }
}

/// The in-memory backend satisfies every requirement openraft's storage
/// test suite checks, so tests and the simulation run on a correct store.
#[test]
fn openraft_suite_passes_on_the_memory_backend() {
    run(async { Suite::test_all(MemoryBuilder).await }).expect("openraft storage suite");
}

/// The sled backend satisfies openraft's storage test suite, including the
/// re-application of persisted committed entries.
#[test]
fn openraft_suite_passes_on_the_sled_backend() {
    let started = std::time::Instant::now();
    run(async { Suite::test_all(SledBuilder).await }).expect("openraft storage suite");
    println!("openraft suite on sled took {:?}", started.elapsed());
}

// ---- durability across reopen --------------------------------------------

/// A vote, the log, the committed pointer and a snapshot all come back after
/// the store is closed and reopened (a crash-restart), and openraft's start
/// re-applies the committed entries after the snapshot.
#[test]
fn vote_log_committed_and_snapshot_survive_reopen() {
    let tmp = TempDir::new().expect("tempdir");
    let dir = data_dir(&tmp);
    let vote = Vote::new_committed(3, NODE);
    run(async {
        let store = init_store(&dir);
        let mut log = store.log_store();
        let mut sm = store.state_machine().expect("state machine");
        // Index 0 as openraft's `initialize` writes it: a log starts at 0.
        let entries = vec![
            blank(0, 0),
            members(1, 1, &[1, 2, 3]),
            set_policy(1, 2, 0),
            blank(3, 3),
            set_policy(3, 4, 1),
        ];
        append(&mut log, entries.clone()).await.expect("append");
        log.save_vote(&vote).await.expect("save vote");
        log.save_committed(Some(lid(3, 4)))
            .await
            .expect("save committed");
        // Snapshot after the first two entries; the last two are only in the log.
        apply(&mut sm, entries[..3].to_vec()).await.expect("apply");
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("snapshot");
        apply(&mut sm, entries[3..].to_vec()).await.expect("apply");
        assert_eq!(sm.reader().current().state.policy_version, 2);
    });

    run(async {
        let store = reopen(&dir).expect("reopen");
        let mut log = store.log_store();
        let mut sm = store.state_machine().expect("state machine");
        assert_eq!(log.read_vote().await.expect("vote"), Some(vote));
        assert_eq!(
            log.read_committed().await.expect("committed"),
            Some(lid(3, 4))
        );
        let got = log.try_get_log_entries(..).await.expect("entries");
        assert_eq!(
            got.iter().map(|e| e.log_id).collect::<Vec<_>>(),
            vec![lid(0, 0), lid(1, 1), lid(1, 2), lid(3, 3), lid(3, 4)]
        );
        // The state machine starts from the snapshot...
        let (applied, membership) = sm.applied_state().await.expect("applied");
        assert_eq!(applied, Some(lid(1, 2)));
        assert_eq!(membership.log_id(), &Some(lid(1, 1)));
        assert_eq!(sm.reader().current().state.policy_version, 1);
        let snap = sm
            .get_current_snapshot()
            .await
            .expect("snapshot")
            .expect("some snapshot");
        assert_eq!(snap.meta.last_log_id, Some(lid(1, 2)));
        // ...and openraft's startup re-applies the committed rest.
        let reader = sm.reader();
        let state = StorageHelper::new(&mut log, &mut sm)
            .with_id(NODE)
            .get_initial_state()
            .await
            .expect("initial state");
        assert_eq!(state.vote_ref(), &vote);
        assert_eq!(reader.current().last_applied, Some(lid(3, 4)));
        assert_eq!(reader.current().state.policy_version, 2);
    });
}

/// `truncate_after` and `purge` are durable: after reopen the removed
/// entries stay removed and `last_purged` is remembered.
#[test]
fn truncate_and_purge_survive_reopen() {
    let tmp = TempDir::new().expect("tempdir");
    let dir = data_dir(&tmp);
    run(async {
        let store = init_store(&dir);
        let mut log = store.log_store();
        append(&mut log, (1..=10).map(|i| blank(1, i)).collect())
            .await
            .expect("append");
        log.truncate_after(Some(lid(1, 7))).await.expect("truncate");
        log.purge(lid(1, 3)).await.expect("purge");
    });
    run(async {
        let store = reopen(&dir).expect("reopen");
        let mut log = store.log_store();
        let state = log.get_log_state().await.expect("log state");
        assert_eq!(state.last_purged_log_id, Some(lid(1, 3)));
        assert_eq!(state.last_log_id, Some(lid(1, 7)));
        let got = log.try_get_log_entries(..).await.expect("entries");
        assert_eq!(
            got.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
            vec![4, 5, 6, 7]
        );
    });
}

/// An installed snapshot is persisted: after reopen the state machine comes
/// back with the installed state and serves the same snapshot.
#[test]
fn installed_snapshot_survives_reopen() {
    let tmp = TempDir::new().expect("tempdir");
    let dir = data_dir(&tmp);
    let snapshot = run(async {
        // A leader's state machine (in memory) builds a snapshot...
        let mut leader = StateMachineStore::memory();
        apply(
            &mut leader,
            vec![members(1, 1, &[1, 2]), set_policy(1, 2, 0), blank(2, 3)],
        )
        .await
        .expect("apply");
        let snap = leader
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("build");
        // ...and this node installs it.
        let store = init_store(&dir);
        let mut sm = store.state_machine().expect("state machine");
        let changes = sm.reader().subscribe();
        sm.install_snapshot(&snap.meta, snap.snapshot.clone())
            .await
            .expect("install");
        assert!(
            changes.has_changed().expect("sender alive"),
            "install publishes the state"
        );
        snap
    });
    run(async {
        let store = reopen(&dir).expect("reopen");
        let mut sm = store.state_machine().expect("state machine");
        assert_eq!(
            sm.applied_state().await.expect("applied").0,
            Some(lid(2, 3))
        );
        let current = sm.reader().current();
        assert_eq!(current.state.policy_version, 1);
        assert_eq!(current.membership, snapshot.meta.last_membership);
        let got = sm
            .get_current_snapshot()
            .await
            .expect("snapshot")
            .expect("some snapshot");
        assert_eq!(got.meta, snapshot.meta);
        assert_eq!(got.snapshot, snapshot.snapshot);
    });
}

/// A snapshot built from an older state never replaces a newer current one
/// (a slow builder finishing after an install).
#[test]
fn an_older_snapshot_does_not_replace_a_newer_one() {
    run(async {
        let mut sm = StateMachineStore::memory();
        apply(&mut sm, vec![blank(1, 1)]).await.expect("apply");
        let mut old_builder = sm.get_snapshot_builder().await;
        apply(&mut sm, vec![blank(1, 2), blank(1, 3)])
            .await
            .expect("apply");
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("build new");
        old_builder.build_snapshot().await.expect("build old");
        let current = sm
            .get_current_snapshot()
            .await
            .expect("snapshot")
            .expect("some");
        assert_eq!(current.meta.last_log_id, Some(lid(1, 3)));
    });
}

/// `apply` runs the state machine's own `apply` on normal entries, records
/// memberships, and publishes the new state to readers and subscribers.
/// (openraft offers no public way to build an `ApplyResponder`, so the
/// replies are exercised by the integration tests through a real `Raft`.)
#[test]
fn apply_updates_the_state_and_notifies_readers() {
    run(async {
        let mut sm = StateMachineStore::memory();
        let reader = sm.reader();
        let mut changes = reader.subscribe();
        apply(
            &mut sm,
            vec![
                members(1, 1, &[1, 2, 3]),
                set_policy(1, 2, 0),
                set_policy(1, 3, 0),
            ],
        )
        .await
        .expect("apply");
        assert!(changes.has_changed().expect("sender alive"));
        let now = changes.borrow_and_update().clone();
        assert_eq!(now.last_applied, Some(lid(1, 3)));
        assert_eq!(
            now.state.policy_version, 1,
            "the stale second SetPolicy was rejected"
        );
        let voters: BTreeSet<NodeId> = now.membership.membership().voter_ids().collect();
        assert_eq!(voters, [1, 2, 3].into());
        assert_eq!(reader.current(), now);
    });
}

// ---- identity and metadata ------------------------------------------------

/// `witness run` on an absent data dir creates a joiner store (new
/// incarnation, no cluster id, no bootstrap); a second start opens the same
/// store with the same incarnation.
#[test]
fn an_empty_data_dir_becomes_a_joiner_and_keeps_its_incarnation() {
    let tmp = TempDir::new().expect("tempdir");
    let dir = data_dir(&tmp);
    let (store, created) = Store::open_or_create_joiner(&dir, 2, CLUSTER).expect("joiner");
    assert!(created);
    let meta = store.meta();
    assert_eq!((meta.node_id, meta.cluster_name.as_str()), (2, CLUSTER));
    assert_eq!(
        (meta.cluster_id.clone(), meta.bootstrap.clone()),
        (None, None)
    );
    assert_eq!(meta.format_version, STORE_FORMAT_VERSION);
    drop(store);
    let (again, created) = Store::open_or_create_joiner(&dir, 2, CLUSTER).expect("reopen");
    assert!(!created);
    assert_eq!(again.meta(), meta);

    // An existing but empty directory counts as empty.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    assert!(
        Store::open_or_create_joiner(&empty, 3, CLUSTER)
            .expect("joiner")
            .1
    );
}

/// Two stores never share an incarnation.
#[test]
fn each_store_gets_its_own_incarnation() {
    let tmp = TempDir::new().expect("tempdir");
    let a = init_store(&tmp.path().join("a"));
    let b = init_store(&tmp.path().join("b"));
    assert_ne!(a.meta().incarnation, b.meta().incarnation);
}

/// A joiner records the cluster id it learns, durably; a different id later
/// is refused rather than overwriting it.
#[test]
fn the_cluster_id_is_learned_once_and_never_changed() {
    let tmp = TempDir::new().expect("tempdir");
    let dir = data_dir(&tmp);
    let (store, _) = Store::open_or_create_joiner(&dir, NODE, CLUSTER).expect("joiner");
    store.set_cluster_id("cid-1").expect("learn id");
    store
        .set_cluster_id("cid-1")
        .expect("same id again is fine");
    let err = store
        .set_cluster_id("cid-2")
        .expect_err("different id refused");
    assert!(matches!(err, StoreError::ClusterIdMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains(&dir.display().to_string()),
        "{err}"
    );
    drop(store);
    assert_eq!(
        reopen(&dir).expect("reopen").meta().cluster_id.as_deref(),
        Some("cid-1")
    );
}

/// Clearing the bootstrap is durable.
#[test]
fn clearing_the_bootstrap_survives_reopen() {
    let tmp = TempDir::new().expect("tempdir");
    let dir = data_dir(&tmp);
    let store = init_store(&dir);
    assert_eq!(store.meta().bootstrap, Some(bootstrap()));
    store.clear_bootstrap().expect("clear");
    drop(store);
    assert_eq!(reopen(&dir).expect("reopen").meta().bootstrap, None);
}

// ---- refusals ----------------------------------------------------------------

fn assert_names_path(err: &StoreError, dir: &Path) {
    let text = err.to_string();
    assert!(
        text.contains(&dir.display().to_string()),
        "error must name {}: {text}",
        dir.display()
    );
}

/// `witness init` refuses a data dir that already holds anything.
#[test]
fn create_refuses_a_data_dir_that_holds_a_store() {
    let tmp = TempDir::new().expect("tempdir");
    let dir = data_dir(&tmp);
    drop(init_store(&dir));
    let meta = StoreMeta::new(CLUSTER, Some("cid-2".into()), NODE, Some(bootstrap()));
    let err = Store::create(&dir, meta).err().expect("refused");
    assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err}");
    assert_names_path(&err, &dir);
    assert!(
        err.to_string()
            .contains("witness init` runs once per cluster"),
        "{err}"
    );
    // ...and left the existing store alone.
    assert_eq!(
        reopen(&dir).expect("reopen").meta().cluster_id.as_deref(),
        Some("cid-1")
    );
}

/// A data dir made for another node id is refused.
#[test]
fn open_refuses_a_store_of_another_node() {
    let tmp = TempDir::new().expect("tempdir");
    let dir = data_dir(&tmp);
    drop(init_store(&dir));
    let err = Store::open_or_create_joiner(&dir, 3, CLUSTER)
        .err()
        .expect("refused");
    assert!(
        matches!(
            err,
            StoreError::WrongNode {
                stored: 1,
                configured: 3,
                ..
            }
        ),
        "{err}"
    );
    assert_names_path(&err, &dir);
    assert!(
        err.to_string()
            .contains("was created for node 1, but this config says node.id = 3")
    );
}

/// A data dir of another cluster is refused.
#[test]
fn open_refuses_a_store_of_another_cluster() {
    let tmp = TempDir::new().expect("tempdir");
    let dir = data_dir(&tmp);
    drop(init_store(&dir));
    let err = Store::open_or_create_joiner(&dir, NODE, "other")
        .err()
        .expect("refused");
    assert!(matches!(err, StoreError::WrongCluster { .. }), "{err}");
    assert_names_path(&err, &dir);
    assert!(err.to_string().contains("'mail-ha'") && err.to_string().contains("'other'"));
}

/// Open the raw sled database of a closed store (waiting, as the store
/// does, for sled's lock to be released by its background threads).
fn raw_open(dir: &Path) -> Arc<Disk> {
    open_disk(dir).expect("raw open")
}

/// Rewrite the raw value under `key` of `tree` in a closed store.
fn poke(dir: &Path, tree: TreeId, key: &[u8], f: impl FnOnce(Vec<u8>) -> Vec<u8>) {
    let disk = raw_open(dir);
    let old = disk
        .tree(tree)
        .get(key)
        .expect("get")
        .map(|v| v.to_vec())
        .unwrap_or_default();
    disk.tree(tree).insert(key, f(old)).expect("insert");
    disk.sync().expect("sync");
}

/// A store written by a newer (or unknown) format version is refused as a
/// version problem, even if this build cannot decode its metadata.
#[test]
fn open_refuses_an_unknown_format_version() {
    let tmp = TempDir::new().expect("tempdir");
    let dir = data_dir(&tmp);
    drop(init_store(&dir));
    poke(&dir, TreeId::Meta, KEY_META, |_| {
        kv::seal(br#"{"format_version":7,"something_new":{"x":1}}"#)
    });
    let err = reopen(&dir).err().expect("refused");
    assert!(
        matches!(err, StoreError::UnsupportedVersion { found: 7, .. }),
        "{err}"
    );
    assert_names_path(&err, &dir);
    assert!(
        err.to_string()
            .contains("format version 7, this witness understands 1"),
        "{err}"
    );
}

/// A flipped byte in a stored log entry is caught by its CRC at open: the
/// store is refused as corrupt, naming the path, the tree and the key.
#[test]
fn open_refuses_a_value_whose_crc_does_not_match() {
    let tmp = TempDir::new().expect("tempdir");
    let dir = data_dir(&tmp);
    closed_store_with_entries(&dir, 2);
    poke(&dir, TreeId::Log, &log::index_key(2), |mut v| {
        let last = v.len() - 2;
        v[last] ^= 0x01;
        v
    });
    let err = reopen(&dir).err().expect("refused");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert_names_path(&err, &dir);
    let text = err.to_string();
    assert!(
        text.contains("CRC mismatch") && text.contains("tree 'log', key index 2"),
        "{text}"
    );
}

/// Reads check CRCs too, so damage appearing while the store is open is an
/// error, never served: the error is `InvalidData` naming tree and key.
#[test]
fn a_read_of_a_damaged_value_is_invalid_data() {
    let tmp = TempDir::new().expect("tempdir");
    let dir = data_dir(&tmp);
    run(async {
        let store = init_store(&dir);
        let mut log = store.log_store();
        log.save_vote(&Vote::new(2, NODE)).await.expect("vote");
        store
            .disk
            .tree(TreeId::Raft)
            .insert(log::KEY_VOTE, kv::seal(b"{}")[..3].to_vec())
            .expect("poke");
        let err = log.read_vote().await.expect_err("damaged");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("tree 'raft', key 'vote'"), "{err}");
    });
}

/// A value with a valid CRC that does not decode is refused as corrupt.
#[test]
fn open_refuses_an_undecodable_value() {
    let tmp = TempDir::new().expect("tempdir");
    let dir = data_dir(&tmp);
    drop(init_store(&dir));
    poke(&dir, TreeId::Raft, log::KEY_VOTE, |_| kv::seal(b"not json"));
    let err = reopen(&dir).err().expect("refused");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("tree 'raft', key 'vote': undecodable"),
        "{err}"
    );
}

/// A log with a hole (an entry missing in the middle) is refused.
#[test]
fn open_refuses_a_log_with_a_hole() {
    let tmp = TempDir::new().expect("tempdir");
    let dir = data_dir(&tmp);
    closed_store_with_entries(&dir, 4);
    {
        let disk = raw_open(&dir);
        disk.tree(TreeId::Log)
            .remove(log::index_key(2))
            .expect("remove");
        disk.sync().expect("sync");
    }
    let err = reopen(&dir).err().expect("refused");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(
        err.to_string().contains("hole in the log after index 1"),
        "{err}"
    );
}

/// A store whose sled files exist but whose metadata was never written (a
/// crash during creation) is refused as incomplete, not taken for a joiner.
#[test]
fn open_refuses_a_store_without_metadata() {
    let tmp = TempDir::new().expect("tempdir");
    let dir = data_dir(&tmp);
    std::fs::create_dir(&dir).expect("mkdir");
    drop(Disk::open(&dir).expect("sled files only"));
    let err = reopen(&dir).err().expect("refused");
    assert!(matches!(err, StoreError::Incomplete { .. }), "{err}");
    assert_names_path(&err, &dir);
    assert!(
        err.to_string()
            .contains("move the directory aside and start again"),
        "{err}"
    );
}

/// A non-empty directory that is not a store is refused and left untouched
/// (no sled files are created in it).
#[test]
fn open_refuses_a_directory_that_is_not_a_store() {
    let tmp = TempDir::new().expect("tempdir");
    let dir = data_dir(&tmp);
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::write(dir.join("notes.txt"), "hello").expect("write");
    let err = reopen(&dir).err().expect("refused");
    assert!(matches!(err, StoreError::Incomplete { .. }), "{err}");
    let names: Vec<_> = std::fs::read_dir(&dir)
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("notes.txt")]);
}

/// A store with `n` log entries, closed.
fn closed_store_with_entries(dir: &Path, n: u64) {
    run(async {
        let store = init_store(dir);
        append(
            &mut store.log_store(),
            (1..=n).map(|i| blank(1, i)).collect(),
        )
        .await
        .expect("append");
    });
    // Wait until sled's background threads have let go of the files.
    drop(raw_open(dir));
}

/// Damage that sled itself detects when opening (here, its config file) is
/// refused as corruption, naming the path.
#[test]
fn open_refuses_a_store_sled_cannot_open() {
    let tmp = TempDir::new().expect("tempdir");
    let dir = data_dir(&tmp);
    closed_store_with_entries(&dir, 3);
    std::fs::write(dir.join("conf"), [0xa5; 40]).expect("write");
    let err = reopen(&dir).err().expect("refused");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert_names_path(&err, &dir);
    assert!(err.to_string().contains("sled cannot open it"), "{err}");
}

/// A data file overwritten with garbage is not taken for a fresh store:
/// sled recovers nothing from it, so the metadata is missing and the store
/// is refused as incomplete — never reinitialised.
#[test]
fn open_refuses_a_store_whose_data_file_is_garbage() {
    let tmp = TempDir::new().expect("tempdir");
    let dir = data_dir(&tmp);
    closed_store_with_entries(&dir, 3);
    let len = std::fs::metadata(dir.join("db")).expect("stat").len();
    std::fs::write(
        dir.join("db"),
        vec![0xa5; usize::try_from(len).expect("len")],
    )
    .expect("write");
    // sled's recovery hints would let it skip the damaged region.
    for f in std::fs::read_dir(&dir).expect("ls") {
        let path = f.expect("entry").path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("snap."))
        {
            std::fs::remove_file(path).expect("rm snap");
        }
    }
    let err = reopen(&dir).err().expect("refused");
    assert!(matches!(err, StoreError::Incomplete { .. }), "{err}");
    assert_names_path(&err, &dir);
}

/// A data dir that is a file, or cannot be created, is refused as unusable.
#[test]
fn a_data_dir_that_is_a_file_is_unusable() {
    let tmp = TempDir::new().expect("tempdir");
    let file = tmp.path().join("file");
    std::fs::write(&file, "x").expect("write");
    let err = Store::open_or_create_joiner(&file, NODE, CLUSTER)
        .err()
        .expect("refused");
    assert!(matches!(err, StoreError::Unusable { .. }), "{err}");
    assert_names_path(&err, &file);
    let meta = StoreMeta::new(CLUSTER, None, NODE, None);
    let below = file.join("data");
    let err = Store::create(&below, meta).err().expect("refused");
    assert!(matches!(err, StoreError::Unusable { .. }), "{err}");
    assert_names_path(&err, &below);
}

/// A data dir already opened by another witness process is refused while
/// that one holds it.
#[test]
fn a_store_in_use_is_refused() {
    let tmp = TempDir::new().expect("tempdir");
    let dir = data_dir(&tmp);
    let _first = init_store(&dir);
    let err = reopen(&dir).err().expect("refused");
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    assert_names_path(&err, &dir);
}

// ---- the fsync proof -----------------------------------------------------

const BEGIN_MARK: &str = "WITNESS-STRACE-APPEND-BEGIN";
const DONE_MARK: &str = "WITNESS-STRACE-APPEND-ACKED";

/// Helper for `an_append_is_fdatasynced_before_it_is_acknowledged`, run by it
/// under strace: appends one entry and prints a marker once the `IOFlushed`
/// callback has completed.
#[test]
#[ignore = "run under strace by an_append_is_fdatasynced_before_it_is_acknowledged"]
fn strace_helper_append_then_mark() {
    let tmp = TempDir::new().expect("tempdir");
    let store = init_store(&data_dir(&tmp));
    let fd = store.disk.sync_fd();
    run(async {
        let mut log = store.log_store();
        let (tx, rx) = TypeConfig::oneshot();
        println!("{BEGIN_MARK} fd={fd}");
        log.append(vec![blank(1, 1)], IOFlushed::signal(tx))
            .await
            .expect("append");
        rx.await.expect("callback").expect("flushed");
        println!("{DONE_MARK}");
    });
}

/// Proof that an appended entry is on stable storage before openraft is told
/// so: under strace, an `fdatasync`/`fsync` of sled's data file completes
/// after the append starts and before the `IOFlushed` acknowledgement.
#[test]
fn an_append_is_fdatasynced_before_it_is_acknowledged() {
    if Command::new("strace").arg("-V").output().is_err() {
        eprintln!("\n*** SKIPPED: strace not installed (apt-get install strace) ***\n");
        println!("SKIPPED: strace not installed (apt-get install strace)");
        return;
    }
    let tmp = TempDir::new().expect("tempdir");
    let trace = tmp.path().join("strace.out");
    let exe = std::env::current_exe().expect("test binary");
    let module = module_path!().split_once("::").map_or("", |(_, rest)| rest);
    let helper = format!("{module}::strace_helper_append_then_mark");
    let out = Command::new("strace")
        .args([
            "-f",
            "-y",
            "-s",
            "256",
            "-e",
            "trace=fdatasync,fsync,write",
            "-o",
        ])
        .arg(&trace)
        .arg(&exe)
        .args([
            "--exact",
            &helper,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .output()
        .expect("run strace");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(DONE_MARK),
        "helper under strace failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let trace = std::fs::read_to_string(&trace).expect("strace output");
    if let Err(why) = check_trace(&trace) {
        panic!("{why}\n--- strace output ---\n{trace}");
    }
}

/// Find, between the BEGIN and DONE marker writes, a completed fdatasync or
/// fsync of the helper's sync descriptor on sled's `db` file.
fn check_trace(trace: &str) -> Result<(), String> {
    let lines: Vec<&str> = trace.lines().collect();
    let begin = lines
        .iter()
        .position(|l| l.contains("write(") && l.contains(BEGIN_MARK))
        .ok_or("no BEGIN marker write in the trace")?;
    let fd: String = lines[begin]
        .split("fd=")
        .nth(1)
        .ok_or("BEGIN marker without fd")?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let done = (begin..lines.len())
        .find(|&i| lines[i].contains("write(") && lines[i].contains(DONE_MARK))
        .ok_or("no DONE marker write after BEGIN")?;
    let pid = |l: &str| l.split_whitespace().next().unwrap_or("").to_string();
    let mut pending: Vec<String> = Vec::new();
    for l in &lines[begin + 1..done] {
        for call in ["fdatasync(", "fsync("] {
            let Some(args) = l.split(call).nth(1) else {
                continue;
            };
            if !(args.starts_with(&format!("{fd}<")) && args.contains("/db>")) {
                continue;
            }
            if l.contains("<unfinished ...>") {
                pending.push(pid(l));
            } else if l.trim_end().ends_with("= 0") {
                return Ok(());
            }
        }
        if (l.contains("<... fdatasync resumed>") || l.contains("<... fsync resumed>"))
            && l.trim_end().ends_with("= 0")
            && pending.contains(&pid(l))
        {
            return Ok(());
        }
    }
    Err(format!(
        "no successful fdatasync/fsync of fd {fd} (sled's db file) between the append \
         (line {}) and its acknowledgement (line {})",
        begin + 1,
        done + 1
    ))
}

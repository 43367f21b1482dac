//! A running witness: its store, its Raft instance, its servers, and the
//! background tasks that keep the membership honest.
//!
//! Lifecycle (DESIGN.md §2a):
//! - [`init`] runs once, on one node, offline: it creates the store with a
//!   fresh cluster id, this node's incarnation and the bootstrap record
//!   (initial membership and policy). It refuses if a store exists.
//! - [`run`] opens the store. A bootstrapping node initialises Raft with the
//!   recorded membership and, once leader, commits the policy. A node with an
//!   empty store is a *joiner*: it creates its own incarnation, announces
//!   itself to its configured peers, and waits to be admitted. A node never
//!   initialises a cluster by itself, so a wiped node cannot start a second
//!   history.
//! - On shutdown a leader first hands leadership to the most up-to-date
//!   reachable voter, so a routine restart costs no election timeout.
//!
//! Membership changes are serialised through one lock and wait until the
//! current membership is committed (openraft #1351, #1885).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use openraft::async_runtime::WatchReceiver;
use openraft::{ChangeMembers, ServerState, SnapshotPolicy};
use tokio::sync::{Mutex, mpsc};
use witness_proto::{HelloRequest, hello_reply, raft_client::RaftClient};

use crate::config::{self, NodeConfig, Policy};
use crate::raft::identity::Identity;
use crate::raft::network::{NetContext, NetworkFactory, PeerTransport, PinRequest};
use crate::raft::store::{Bootstrap, STORE_FORMAT_VERSION, StateReader, Store, StoreMeta};
use crate::raft::types::{Incarnation, NodeId, Raft, WitnessNode};
use crate::state::{Actor, Request, Response};

/// How often a joiner announces itself to its peers while not admitted.
const HELLO_INTERVAL: Duration = Duration::from_secs(2);
/// How often the same "not admitted" explanation is repeated in the log.
const HELLO_LOG_EVERY: Duration = Duration::from_secs(30);
/// How often the bootstrap task checks whether it can commit the policy.
const BOOTSTRAP_POLL: Duration = Duration::from_millis(200);
/// How long to wait for a leadership hand-off at shutdown before stopping
/// anyway (the cluster then elects a leader on its own).
const HANDOFF_WAIT: Duration = Duration::from_secs(3);

/// Milliseconds since the Unix epoch, for records shown to people.
pub fn unix_ms() -> u64 {
    crate::clock::unix_ms()
}

/// What `witness init` did.
#[derive(Debug)]
pub struct InitReport {
    pub data_dir: PathBuf,
    pub cluster_id: String,
    pub incarnation: Incarnation,
    pub members: BTreeMap<NodeId, WitnessNode>,
}

/// `witness init`: create the cluster's first store on this node.
pub fn init(node: &NodeConfig, policy: &Policy) -> anyhow::Result<InitReport> {
    config::check_timers(&node.raft, policy)?;
    let members: BTreeMap<NodeId, WitnessNode> = node
        .peers
        .iter()
        .map(|p| {
            let node = WitnessNode {
                name: p.name.clone(),
                addr: p.addr.clone(),
                site: p.site.clone(),
                incarnation: None,
            };
            (p.id, node)
        })
        .collect();
    let incarnation = Incarnation::random();
    let mut members_with_self = members.clone();
    if let Some(me) = members_with_self.get_mut(&node.node.id) {
        // Our own incarnation is known now; the others are pinned on first contact.
        me.incarnation = Some(incarnation.clone());
    }
    let cluster_id = format!("{:032x}", rand::random::<u128>());
    let meta = StoreMeta {
        format_version: STORE_FORMAT_VERSION,
        cluster_name: node.node.cluster.clone(),
        cluster_id: Some(cluster_id.clone()),
        node_id: node.node.id,
        incarnation: incarnation.clone(),
        created_unix_ms: unix_ms(),
        bootstrap: Some(Bootstrap {
            members: members_with_self.clone(),
            policy: policy.clone(),
            recovered: None,
        }),
    };
    Store::create(&node.node.data_dir, meta)?;
    Ok(InitReport {
        data_dir: node.node.data_dir.clone(),
        cluster_id,
        incarnation,
        members: members_with_self,
    })
}

/// What `witness recover --force` did.
#[derive(Debug)]
pub struct RecoverReport {
    pub moved_to: PathBuf,
    pub previous_cluster_id: String,
    pub new_cluster_id: String,
    pub epoch_before: u64,
    pub epoch_after: u64,
    pub applied_index: u64,
}

/// `witness recover --force`: offline, on a stopped surviving node when only
/// a minority of witnesses survives. Moves the old store aside (never
/// deletes it), and creates a new cluster incarnation — a new cluster id,
/// this node as the only voter — seeded with the state this node had
/// committed, its epoch bumped by [`crate::state::RECOVERY_EPOCH_BUMP`] and
/// frozen. Witnesses of the old cluster are refused by the new one (another
/// cluster id), and every lease or directive of the old incarnation is stale
/// against the bumped epoch, so the old majority coming back cannot fork the
/// history agents act on.
pub async fn recover(
    node: &NodeConfig,
    operator: &str,
    reason: &str,
) -> anyhow::Result<RecoverReport> {
    use openraft::EntryPayload;
    use openraft::storage::{RaftLogReader, RaftLogStorage};
    if reason.trim().is_empty() {
        bail!("a forced recovery needs --reason; it is recorded in history");
    }
    let data_dir = node.node.data_dir.clone();
    let (recovered, meta) = {
        let (store, created) =
            Store::open_or_create_joiner(&data_dir, node.node.id, &node.node.cluster)?;
        if created {
            bail!(
                "{} held no store (an empty one was just created there); nothing to recover from",
                data_dir.display()
            );
        }
        let meta = store.meta();
        let mut log = store.log_store();
        let sm = store.state_machine()?;
        let applied = sm.reader().current();
        let mut state = applied.state.clone();
        let committed = log.read_committed().await?.map(|l| l.index);
        let from = applied.last_applied.map(|l| l.index + 1).unwrap_or(0);
        let mut last = applied.last_applied.map(|l| l.index).unwrap_or(0);
        if let Some(to) = committed.filter(|c| *c >= from) {
            let mut reader = log.get_log_reader().await;
            for entry in reader.try_get_log_entries(from..=to).await? {
                if let EntryPayload::Normal(req) = &entry.payload {
                    state.apply(entry.log_id.index, req);
                }
                last = entry.log_id.index;
            }
        }
        (Some((state, last)), meta)
    };
    let (state, applied_index) = recovered.ok_or_else(|| anyhow!("no state"))?;
    let previous_cluster_id = meta.cluster_id.clone().unwrap_or_default();
    let stamp = unix_ms();
    let moved_to = data_dir.with_file_name(format!(
        "{}.pre-recovery-{stamp}",
        data_dir
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default()
    ));
    std::fs::rename(&data_dir, &moved_to).with_context(|| {
        format!(
            "moving {} aside to {}",
            data_dir.display(),
            moved_to.display()
        )
    })?;
    let me = node.self_peer();
    let incarnation = Incarnation::random();
    let members = BTreeMap::from([(
        node.node.id,
        WitnessNode {
            name: me.name.clone(),
            addr: me.addr.clone(),
            site: me.site.clone(),
            incarnation: Some(incarnation.clone()),
        },
    )]);
    let new_cluster_id = format!("{:032x}", rand::random::<u128>());
    let epoch_before = state.verdict.epoch;
    let policy = state.policy.clone().unwrap_or_default();
    let recovery = crate::state::Recovery {
        state,
        previous_cluster_id: previous_cluster_id.clone(),
        by: Actor::Operator(operator.to_string()),
        reason: reason.to_string(),
        at_unix_ms: stamp,
    };
    let new_meta = StoreMeta {
        format_version: STORE_FORMAT_VERSION,
        cluster_name: meta.cluster_name.clone(),
        cluster_id: Some(new_cluster_id.clone()),
        node_id: node.node.id,
        incarnation,
        created_unix_ms: stamp,
        bootstrap: Some(Bootstrap {
            members,
            policy,
            recovered: Some(Box::new(recovery)),
        }),
    };
    Store::create(&data_dir, new_meta)?;
    Ok(RecoverReport {
        moved_to,
        previous_cluster_id,
        new_cluster_id,
        epoch_before,
        epoch_after: epoch_before.saturating_add(crate::state::RECOVERY_EPOCH_BUMP),
        applied_index,
    })
}

/// A running witness node, shared by its services.
pub struct Node {
    pub raft: Raft,
    pub identity: Arc<Identity>,
    pub net: Arc<NetContext>,
    /// This witness's certificates; `None` when its file says
    /// `insecure = true`.
    pub trust: Option<Arc<crate::trust::Trust>>,
    pub state: StateReader,
    pub config: NodeConfig,
    store: Option<Arc<Store>>,
    membership_lock: Mutex<()>,
    pub started: Instant,
    /// Origin of this node's monotonic clock ([`Node::now`]); tokio's clock,
    /// so the simulation controls it.
    pub clock_origin: tokio::time::Instant,
    /// Soft state: observation clock, the leader's lease book and driver.
    pub soft: std::sync::Mutex<crate::driver::Soft>,
    /// This witness's probes; `None` until started.
    prober: std::sync::Mutex<Option<crate::probe::Prober>>,
    /// Events counted for `/metrics` between scrapes.
    pub counters: crate::server::metrics::Counters,
    /// Admin writes and leadership transfers per caller.
    pub admin_limits: crate::server::limits::AdminLimits,
}

/// Errors of operator-facing node operations, mapped to gRPC codes by the
/// Admin service.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// This node is not the leader; retry on the leader (or let it forward).
    #[error("not the leader{}", leader.map(|l| format!(" (leader is node {l})")).unwrap_or_default())]
    NotLeader { leader: Option<NodeId> },
    /// The request is wrong; fix it and retry.
    #[error("{0}")]
    Invalid(String),
    /// The cluster cannot do it now (no quorum, change in flight); retry later.
    #[error("{0}")]
    Unavailable(String),
}

impl Node {
    /// What an operator must hear about this witness's own TLS, at `now_s`
    /// (Unix seconds): that it runs without TLS, or that its certificate or
    /// the cluster CA expires within [`crate::trust::EXPIRY_WARNING`] or
    /// has expired. Shown by `witnessctl status` and the status page.
    pub fn tls_warnings(&self, now_s: i64) -> Vec<String> {
        let name = &self.config.node.name;
        let Some(trust) = self.trust.as_deref() else {
            return vec![format!(
                "{name} runs without TLS (insecure = true): anyone who reaches its ports can act \
                 as a witness, an agent or an operator"
            )];
        };
        let material = trust.current();
        let soon = crate::trust::EXPIRY_WARNING.as_secs() as i64;
        let mut warnings = Vec::new();
        for (what, at) in [
            (format!("{name}'s certificate"), material.own.not_after),
            ("the cluster CA".to_string(), material.ca_not_after),
        ] {
            let left = at - now_s;
            if left <= 0 {
                warnings.push(format!(
                    "{what} expired on {}: reissue it with `witness certs` (it is reloaded \
                     without a restart)",
                    crate::clock::format_unix(at)
                ));
            } else if left <= soon {
                warnings.push(format!(
                    "{what} expires in {} day(s), on {}: reissue it with `witness certs` (it is \
                     reloaded without a restart)",
                    left / 86_400,
                    crate::clock::format_unix(at)
                ));
            }
        }
        warnings
    }

    /// Open the store, build Raft, start the background tasks. Servers are
    /// started by [`run`].
    pub async fn start(config: NodeConfig) -> anyhow::Result<Arc<Node>> {
        let (store, created) = Store::open_or_create_joiner(
            &config.node.data_dir,
            config.node.id,
            &config.node.cluster,
        )?;
        let store = Arc::new(store);
        let meta = store.meta();
        if created {
            tracing::info!(
                data_dir = %config.node.data_dir.display(),
                incarnation = %meta.incarnation,
                "empty data dir: starting as a joiner with a new store; waiting to be admitted"
            );
        }
        let persist = {
            let store = store.clone();
            Box::new(move |id: &str| store.set_cluster_id(id).map_err(|e| e.to_string()))
        };
        let identity = Identity::new(
            config.node.id,
            meta.incarnation.clone(),
            meta.cluster_name.clone(),
            meta.cluster_id.clone(),
            persist,
        );
        let log = store.log_store();
        let sm = store.state_machine()?;
        let report = if let Some(policy) = sm.reader().current().state.policy.as_ref() {
            Some(
                config::check_timers(&config.raft, policy)
                    .context("the committed cluster policy does not fit this node's Raft timers")?,
            )
        } else if let Some(b) = &meta.bootstrap {
            Some(config::check_timers(&config.raft, &b.policy)?)
        } else {
            None
        };
        if let Some(report) = report {
            tracing::info!(
                worst_case_failover = %humantime::format_duration(report.worst_case_failover),
                "timer check passed (details: `witness check-config`)"
            );
        }
        let trust = config.trust().map_err(|e| anyhow!(e))?;
        Self::start_with(
            config,
            identity,
            log,
            sm,
            Some(store),
            meta.bootstrap,
            PeerTransport {
                dialer: None,
                trust,
            },
        )
        .await
    }

    /// Start over any storage (the simulation and tests use memory stores).
    pub async fn start_with(
        config: NodeConfig,
        identity: Arc<Identity>,
        log: crate::raft::store::LogStore,
        sm: crate::raft::store::StateMachineStore,
        store: Option<Arc<Store>>,
        bootstrap: Option<Bootstrap>,
        transport: PeerTransport,
    ) -> anyhow::Result<Arc<Node>> {
        let raft_config = raft_config(&config)?;
        let mut log = log;
        let startup_last_log = {
            use openraft::storage::RaftLogStorage;
            let s = log.get_log_state().await.context("reading the log state")?;
            s.last_log_id.map(|l| l.index).unwrap_or(0)
        };
        let (pin_tx, pin_rx) = mpsc::unbounded_channel();
        let trust = transport.trust.clone();
        let net = NetContext::new(identity.clone(), pin_tx, config.raft.rpc_timeout, transport);
        let state = sm.reader();
        let raft = Raft::new(
            config.node.id,
            raft_config,
            NetworkFactory::new(net.clone()),
            log,
            sm,
        )
        .await
        .map_err(|e| anyhow!("starting Raft: {e}"))?;
        let node = Arc::new(Node {
            raft,
            identity,
            net,
            trust,
            state,
            config,
            store,
            membership_lock: Mutex::new(()),
            started: Instant::now(),
            clock_origin: tokio::time::Instant::now(),
            soft: std::sync::Mutex::new(crate::driver::Soft {
                startup_last_log,
                ..Default::default()
            }),
            prober: std::sync::Mutex::new(None),
            counters: Default::default(),
            admin_limits: Default::default(),
        });
        node.refresh_members();
        tokio::spawn(watch_membership(node.clone()));
        tokio::spawn(pin_incarnations(node.clone(), pin_rx));
        if let Some(bootstrap) = bootstrap {
            let initialized = node
                .raft
                .is_initialized()
                .await
                .map_err(|e| anyhow!("{e}"))?;
            if !initialized {
                let members: BTreeMap<NodeId, WitnessNode> = bootstrap.members.clone();
                node.raft
                    .initialize(members)
                    .await
                    .map_err(|e| anyhow!("initializing the cluster: {e}"))?;
                tracing::info!("cluster initialized with its bootstrap membership");
            }
            tokio::spawn(commit_bootstrap(node.clone(), bootstrap));
        }
        tokio::spawn(announce_until_admitted(node.clone()));
        tokio::spawn(crate::driver::track_observations(node.clone()));
        tokio::spawn(crate::driver::drive(node.clone()));
        Ok(node)
    }

    /// Start probing the sites of the committed policy and turning what this
    /// witness sees into observations.
    pub fn start_probing(
        self: &Arc<Self>,
        consul: Option<crate::config::ConsulAgentConfig>,
        transport: Arc<dyn crate::probe::Transport>,
    ) {
        let (policy_tx, policy_rx) = tokio::sync::watch::channel(None);
        let mut states = self.state.subscribe();
        tokio::spawn(async move {
            let mut last_version = u64::MAX;
            loop {
                let (version, policy) = {
                    let s = states.borrow_and_update();
                    (s.state.policy_version, s.state.policy.clone())
                };
                if version != last_version {
                    last_version = version;
                    if policy_tx.send(policy.map(Arc::new)).is_err() {
                        return;
                    }
                }
                if states.changed().await.is_err() {
                    return;
                }
            }
        });
        let prober = crate::probe::Prober::start(policy_rx, consul, transport);
        tokio::spawn(crate::driver::observe(self.clone(), prober.view()));
        *self.prober.lock().unwrap_or_else(|e| e.into_inner()) = Some(prober);
    }

    /// The latest local view of this witness's probes.
    pub fn local_view(&self) -> Option<Arc<crate::probe::LocalView>> {
        let p = self.prober.lock().unwrap_or_else(|e| e.into_inner());
        p.as_ref().map(|p| p.view().borrow().clone())
    }

    /// Every probe attempt's outcome and duration so far; `None` until
    /// probing starts.
    pub fn probe_stats(&self) -> Option<Arc<crate::probe::ProbeStats>> {
        let p = self.prober.lock().unwrap_or_else(|e| e.into_inner());
        p.as_ref().map(|p| p.stats())
    }

    /// Data dir of the store, when there is one on disk.
    pub fn data_dir(&self) -> Option<&Path> {
        self.store.as_ref().map(|s| s.path())
    }

    fn refresh_members(&self) {
        let metrics = self.raft.metrics().borrow_watched().clone();
        let members: BTreeMap<NodeId, WitnessNode> = metrics
            .membership_config
            .nodes()
            .map(|(id, n)| (*id, n.clone()))
            .collect();
        self.identity.set_members(members);
    }

    /// The known leader, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow_watched().current_leader
    }

    /// Is this node in the membership it knows (a voter or a learner)? A
    /// joiner that no cluster has admitted yet is not.
    pub fn is_member(&self) -> bool {
        self.raft
            .metrics()
            .borrow_watched()
            .membership_config
            .get_node(&self.config.node.id)
            .is_some()
    }

    /// Is this node the leader right now (by its own metrics)?
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow_watched().state == ServerState::Leader
    }

    /// Ready to serve: a member of an initialised cluster that knows its leader
    /// and has applied the policy. Returns the reason when not.
    pub fn readiness(&self) -> Result<(), String> {
        let m = self.raft.metrics().borrow_watched().clone();
        if let Err(e) = &m.running_state {
            return Err(format!("Raft stopped: {e}"));
        }
        if m.membership_config.get_node(&self.config.node.id).is_none() {
            return Err("not a member yet: waiting to be admitted by the cluster".into());
        }
        if m.current_leader.is_none() {
            return Err(
                "no leader known: waiting for an election (needs a majority of voters)".into(),
            );
        }
        if self.state.current().state.policy.is_none() {
            return Err("cluster policy not applied yet".into());
        }
        Ok(())
    }

    fn require_leader(&self) -> Result<(), NodeError> {
        if self.is_leader() {
            Ok(())
        } else {
            Err(NodeError::NotLeader {
                leader: self.leader(),
            })
        }
    }

    /// Wait until the latest membership is committed, so a change never
    /// starts from an uncommitted one (openraft #1885).
    async fn wait_membership_committed(&self) -> Result<(), NodeError> {
        let deadline = tokio::time::Instant::now() + self.config.raft.election_timeout_max * 4;
        let mut rx = self.raft.metrics();
        loop {
            {
                let m = rx.borrow_watched();
                if m.membership_config.log_id() == m.committed_membership_config.log_id() {
                    return Ok(());
                }
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return Err(NodeError::Unavailable(
                    "the current membership is not committed yet (no quorum?); retry when \
                     `witnessctl status` shows a leader and all voters reachable"
                        .into(),
                ));
            }
        }
    }

    /// Add a node as a learner, wait for it to catch up, then (unless
    /// `learner_only`) promote it to voter.
    pub async fn add_member(
        &self,
        id: NodeId,
        node: WitnessNode,
        learner_only: bool,
    ) -> Result<(), NodeError> {
        self.require_leader()?;
        let _serial = self.membership_lock.lock().await;
        self.wait_membership_committed().await?;
        let m = self
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .clone();
        if m.get_node(&id).is_some() {
            return Err(NodeError::Invalid(format!(
                "node {id} is already a member; to replace it (e.g. its store was lost) run \
                 `witnessctl members remove {id}` first"
            )));
        }
        if let Some((other, _)) = m.nodes().find(|(_, n)| n.addr == node.addr) {
            return Err(NodeError::Invalid(format!(
                "address {} is already used by member {other}",
                node.addr
            )));
        }
        let node = WitnessNode {
            incarnation: None,
            ..node
        };
        self.raft
            .add_learner(id, node, true)
            .await
            .map_err(|e| NodeError::Unavailable(format!("adding node {id} as learner: {e}")))?;
        tracing::info!(node = id, "added as learner and caught up");
        if learner_only {
            return Ok(());
        }
        self.promote_locked(id).await
    }

    /// Promote a learner to voter, once it has caught up.
    pub async fn promote_member(&self, id: NodeId) -> Result<(), NodeError> {
        self.require_leader()?;
        let _serial = self.membership_lock.lock().await;
        self.wait_membership_committed().await?;
        let m = self
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .clone();
        if m.get_node(&id).is_none() {
            return Err(NodeError::Invalid(format!(
                "node {id} is not a member; add it first with `witnessctl members add`"
            )));
        }
        if m.voter_ids().any(|v| v == id) {
            return Err(NodeError::Invalid(format!("node {id} is already a voter")));
        }
        self.promote_locked(id).await
    }

    async fn promote_locked(&self, id: NodeId) -> Result<(), NodeError> {
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(|e| NodeError::Unavailable(format!("promoting node {id} to voter: {e}")))?;
        tracing::info!(node = id, "promoted to voter");
        Ok(())
    }

    /// Remove a voter or learner from the cluster.
    pub async fn remove_member(&self, id: NodeId) -> Result<(), NodeError> {
        self.require_leader()?;
        let _serial = self.membership_lock.lock().await;
        self.wait_membership_committed().await?;
        let m = self
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .clone();
        if m.get_node(&id).is_none() {
            return Err(NodeError::Invalid(format!("node {id} is not a member")));
        }
        let voters: BTreeSet<NodeId> = m.voter_ids().collect();
        let change = if voters.contains(&id) {
            if voters.len() == 1 {
                return Err(NodeError::Invalid(format!(
                    "node {id} is the only voter; a cluster cannot remove its last voter"
                )));
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        self.raft
            .change_membership(change, false)
            .await
            .map_err(|e| NodeError::Unavailable(format!("removing node {id}: {e}")))?;
        tracing::info!(node = id, "removed from the cluster");
        Ok(())
    }

    /// Pin a member's incarnation on first contact (trust on first use).
    async fn pin(&self, pin: PinRequest) -> Result<(), NodeError> {
        self.require_leader()?;
        let _serial = self.membership_lock.lock().await;
        self.wait_membership_committed().await?;
        let m = self
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .clone();
        let Some(current) = m.get_node(&pin.node_id) else {
            return Ok(());
        };
        if current.incarnation.is_some() {
            return Ok(());
        }
        let node = WitnessNode {
            incarnation: Some(pin.incarnation.clone()),
            ..current.clone()
        };
        self.raft
            .change_membership(
                ChangeMembers::SetNodes(BTreeMap::from([(pin.node_id, node)])),
                false,
            )
            .await
            .map_err(|e| NodeError::Unavailable(format!("pinning node {}: {e}", pin.node_id)))?;
        tracing::info!(node = pin.node_id, incarnation = %pin.incarnation, "incarnation pinned");
        Ok(())
    }

    /// Commit a policy change made from `expected_version`.
    pub async fn set_policy(
        &self,
        policy: Policy,
        expected_version: u64,
        by: Actor,
        reason: String,
    ) -> Result<u64, NodeError> {
        self.require_leader()?;
        let req = Request::SetPolicy {
            policy: Box::new(policy),
            expected_version,
            by,
            reason,
            at_unix_ms: unix_ms(),
        };
        let resp = self
            .raft
            .client_write(req)
            .await
            .map_err(|e| NodeError::Unavailable(format!("committing the policy: {e}")))?;
        match resp.data {
            Response::PolicySet { version } => Ok(version),
            Response::Rejected(why) => Err(NodeError::Invalid(why)),
            other => Err(NodeError::Unavailable(format!(
                "unexpected response {other:?}"
            ))),
        }
    }

    /// Confirm leadership with a read-index round started now, and wait until
    /// the state machine has applied up to it. What is read afterwards is
    /// linearizable.
    pub async fn linearizable_barrier(&self) -> Result<(), NodeError> {
        match self
            .raft
            .ensure_linearizable(openraft::ReadPolicy::ReadIndex)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                if let Some(fwd) = e.forward_to_leader() {
                    Err(NodeError::NotLeader {
                        leader: fwd.leader_id,
                    })
                } else {
                    Err(NodeError::Unavailable(format!(
                        "read-index round failed: {e}"
                    )))
                }
            }
        }
    }

    /// Hand leadership to the most up-to-date voter, if this node leads.
    pub async fn hand_off_leadership(&self) {
        let m = self.raft.metrics().borrow_watched().clone();
        if m.state != ServerState::Leader {
            return;
        }
        let me = self.config.node.id;
        let Some(replication) = m.replication.as_ref() else {
            return;
        };
        let target = m
            .membership_config
            .voter_ids()
            .filter(|id| *id != me)
            .filter(|id| self.net.refusal(*id).is_none())
            .max_by_key(|id| replication.get(id).cloned().flatten().map(|l| l.index));
        let Some(to) = target else { return };
        tracing::info!(to, "shutting down: handing leadership over");
        if self.raft.trigger().transfer_leader(to).await.is_err() {
            return;
        }
        let mut rx = self.raft.metrics();
        let _ = tokio::time::timeout(HANDOFF_WAIT, async {
            loop {
                if rx.borrow_watched().current_leader.is_some_and(|l| l != me) {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }
}

/// openraft's config from the node's Raft timers.
fn raft_config(config: &NodeConfig) -> anyhow::Result<Arc<openraft::Config>> {
    let t = &config.raft;
    let ms = |d: Duration| d.as_millis() as u64;
    let c = openraft::Config {
        cluster_name: config.node.cluster.clone(),
        heartbeat_interval: ms(t.heartbeat_interval),
        election_timeout_min: ms(t.election_timeout_min),
        election_timeout_max: ms(t.election_timeout_max),
        install_snapshot_timeout: ms(t.rpc_timeout * 4),
        snapshot_policy: SnapshotPolicy::LogsSinceLast(t.snapshot_after_logs),
        max_in_snapshot_log_to_keep: t.keep_logs_after_snapshot,
        // Pre-vote: a node cut off for a while does not disrupt a healthy
        // leader with a higher term when it comes back (WAN links flap).
        enable_pre_vote: Some(true),
        ..Default::default()
    };
    Ok(Arc::new(
        c.validate().map_err(|e| anyhow!("Raft timers: {e}"))?,
    ))
}

/// Keep [`Identity`]'s membership copy current.
async fn watch_membership(node: Arc<Node>) {
    let mut rx = node.raft.metrics();
    let mut last = None;
    loop {
        let current = rx.borrow_watched().membership_config.clone();
        if last.as_ref() != Some(&current) {
            node.refresh_members();
            last = Some(current);
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Commit incarnation pins reported by the network layer (leader only).
async fn pin_incarnations(node: Arc<Node>, mut rx: mpsc::UnboundedReceiver<PinRequest>) {
    while let Some(pin) = rx.recv().await {
        if !node.is_leader() {
            continue;
        }
        let pinned = node
            .identity
            .member(pin.node_id)
            .and_then(|m| m.incarnation)
            .is_some();
        if pinned {
            continue;
        }
        if let Err(e) = node.pin(pin).await {
            tracing::debug!("pinning deferred: {e}");
        }
    }
}

/// On the bootstrapping node: once leader with the initial membership
/// committed, commit the policy (or, after a forced recovery, the recovered
/// state); then drop the bootstrap record.
async fn commit_bootstrap(node: Arc<Node>, bootstrap: Bootstrap) {
    loop {
        if node.state.current().state.policy.is_some() {
            if let Some(store) = &node.store
                && let Err(e) = store.clear_bootstrap()
            {
                tracing::error!("clearing the bootstrap record: {e}");
            }
            return;
        }
        if node.is_leader() && node.wait_membership_committed().await.is_ok() {
            let result = match &bootstrap.recovered {
                Some(r) => node
                    .raft
                    .client_write(Request::Recover(r.clone()))
                    .await
                    .map(|_| 0)
                    .map_err(|e| NodeError::Unavailable(e.to_string())),
                None => {
                    node.set_policy(
                        bootstrap.policy.clone(),
                        0,
                        Actor::Bootstrap,
                        "witness init".into(),
                    )
                    .await
                }
            };
            match result {
                Ok(_) if bootstrap.recovered.is_some() => {
                    tracing::error!(
                        "FORCED RECOVERY committed: this node alone is the new cluster incarnation, frozen; add witnesses back with `witnessctl members add`, then `witnessctl unfreeze`"
                    )
                }
                Ok(v) => tracing::info!(version = v, "cluster policy committed"),
                Err(e) => tracing::debug!("bootstrap entry not committed yet: {e}"),
            }
        }
        tokio::time::sleep(BOOTSTRAP_POLL).await;
    }
}

/// A node that is not (yet) a member tells its configured peers who it is and
/// logs what they answer, so an operator sees why it is not admitted.
async fn announce_until_admitted(node: Arc<Node>) {
    let mut last_logged: Option<(i32, Instant)> = None;
    loop {
        if node.identity.member(node.config.node.id).is_some() {
            return;
        }
        for peer in node
            .config
            .peers
            .iter()
            .filter(|p| p.id != node.config.node.id)
        {
            let Ok(channel) = node.net.channel(peer.id, &peer.addr) else {
                continue;
            };
            let req = HelloRequest {
                cluster_name: node.identity.cluster_name.clone(),
                node_id: node.config.node.id,
                incarnation: node.identity.incarnation.0.clone(),
                addr: node.config.node.advertise.clone(),
            };
            let mut client = RaftClient::new(channel);
            let call = client.hello(req);
            let Ok(Ok(reply)) = tokio::time::timeout(node.config.raft.rpc_timeout, call).await
            else {
                continue;
            };
            let reply = reply.into_inner();
            let admission = reply.admission;
            let repeat =
                last_logged.is_some_and(|(a, at)| a == admission && at.elapsed() < HELLO_LOG_EVERY);
            if repeat {
                continue;
            }
            match reply.admission() {
                hello_reply::Admission::IncarnationMismatch
                | hello_reply::Admission::OtherCluster => {
                    tracing::error!(peer = reply.replier_id, "not admitted: {}", reply.message)
                }
                hello_reply::Admission::NotAMember => {
                    tracing::warn!(peer = reply.replier_id, "not admitted: {}", reply.message)
                }
                _ => tracing::info!(peer = reply.replier_id, "{}", reply.message),
            }
            last_logged = Some((admission, Instant::now()));
        }
        tokio::time::sleep(HELLO_INTERVAL).await;
    }
}

/// Run a witness until `shutdown` resolves: open the store, serve gRPC and
/// HTTP, then hand off leadership and stop.
pub async fn run(config: NodeConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let grpc_addr: SocketAddr = config.node.listen;
    let http_addr: SocketAddr = config.node.http_listen;
    let grpc = tokio::net::TcpListener::bind(grpc_addr)
        .await
        .with_context(|| format!("binding gRPC listen address {grpc_addr} (node.listen)"))?;
    let http = tokio::net::TcpListener::bind(http_addr)
        .await
        .with_context(|| format!("binding HTTP listen address {http_addr} (node.http_listen)"))?;
    let plain_http = match config.node.plain_http_listen {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("binding the plaintext probe address {addr} (node.plain_http_listen)")
        })?),
        None => None,
    };
    let consul = match &config.consul {
        Some(section) if section.enabled => Some(section.resolve()?),
        _ => None,
    };
    let node = Node::start(config).await?;
    match &node.trust {
        Some(trust) => tracing::info!(
            identity = %trust.own(),
            expires = %crate::clock::format_unix(trust.current().own.not_after),
            "mutual TLS on the gRPC and HTTP ports"
        ),
        None => tracing::warn!(
            "INSECURE: this witness runs without TLS (tls.insecure = true): anyone who can reach \
             its ports can act as a witness, an agent or an operator. Never run it so outside a \
             developer's machine."
        ),
    }
    let transport = crate::probe::RealTransport::shared()
        .map_err(|e| anyhow!("starting the probe transport: {e}"))?;
    node.start_probing(consul, transport);
    tracing::info!(
        node = node.config.node.id,
        name = %node.config.node.name,
        site = %node.config.node.site,
        grpc = %grpc_addr,
        http = %http_addr,
        incarnation = %node.identity.incarnation,
        "witness started"
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    if let Some(trust) = &node.trust {
        trust.spawn_reloader(stop_rx.clone());
    }
    let servers = crate::server::serve(node.clone(), grpc, http, plain_http, stop_rx);
    tokio::pin!(servers);
    tokio::select! {
        res = &mut servers => {
            res?;
            bail!("servers stopped unexpectedly");
        }
        () = shutdown => {}
    }
    tracing::info!("shutdown requested");
    node.hand_off_leadership().await;
    let _ = stop_tx.send(true);
    if let Err(e) = node.raft.shutdown().await {
        tracing::warn!("Raft shutdown: {e}");
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), servers).await;
    tracing::info!("stopped");
    Ok(())
}

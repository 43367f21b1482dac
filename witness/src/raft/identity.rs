//! Who this node is, and who the members are: the checks every Raft message
//! passes before openraft sees it.
//!
//! Invariant: a Raft message is handed to openraft only if it carries this
//! cluster's id, is addressed to this node id *and* this store's incarnation
//! (or to an incarnation not pinned yet), and comes from the incarnation the
//! membership pins for the sender's id. A node whose store was wiped is a new
//! incarnation: it cannot vote, acknowledge an entry or confirm a read under
//! its old id, so a lost store can never help elect a leader or re-decide a
//! committed entry (DESIGN.md §3.9).
//!
//! Not here: the membership itself lives in the Raft log; this module keeps a
//! copy of the latest one for fast lookups, refreshed by the node runtime.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use witness_proto::{Refusal, refusal};

use crate::raft::types::{Incarnation, NodeId, WitnessNode};

/// Persists a cluster id learnt on first contact. Returns an error message
/// when it cannot (the store refuses to change an existing id).
pub type ClusterIdSink = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// This node's identity and its latest view of the membership.
pub struct Identity {
    pub node_id: NodeId,
    pub incarnation: Incarnation,
    pub cluster_name: String,
    cluster_id: RwLock<Option<String>>,
    persist_cluster_id: ClusterIdSink,
    members: RwLock<BTreeMap<NodeId, WitnessNode>>,
}

impl Identity {
    pub fn new(
        node_id: NodeId,
        incarnation: Incarnation,
        cluster_name: String,
        cluster_id: Option<String>,
        persist_cluster_id: ClusterIdSink,
    ) -> Arc<Self> {
        Arc::new(Self {
            node_id,
            incarnation,
            cluster_name,
            cluster_id: RwLock::new(cluster_id),
            persist_cluster_id,
            members: RwLock::new(BTreeMap::new()),
        })
    }

    /// The cluster id, once known (always, after `witness init` or first contact).
    pub fn cluster_id(&self) -> Option<String> {
        // A poisoned lock means a panic while holding it; the value is a plain
        // Option<String> that cannot be half-written, so reading it is sound.
        self.cluster_id
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replace the copy of the membership's nodes (called on every change).
    pub fn set_members(&self, members: BTreeMap<NodeId, WitnessNode>) {
        *self.members.write().unwrap_or_else(|e| e.into_inner()) = members;
    }

    /// The latest known record of member `id`.
    pub fn member(&self, id: NodeId) -> Option<WitnessNode> {
        self.members
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }

    /// All members in the latest known membership.
    pub fn members(&self) -> BTreeMap<NodeId, WitnessNode> {
        self.members
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Check an incoming Raft envelope. On success the message may be handed
    /// to openraft. A joiner (no cluster id yet) adopts the sender's cluster
    /// id durably before accepting anything.
    pub fn admit(
        &self,
        cluster_id: &str,
        from_id: NodeId,
        from_incarnation: &str,
        to_id: NodeId,
        to_incarnation: &str,
    ) -> Result<(), Refusal> {
        // Another cluster first: that is the whole story, whatever else differs.
        if let Some(mine) = self.cluster_id()
            && !cluster_id.is_empty()
            && mine != cluster_id
        {
            return Err(refuse(
                refusal::Kind::ClusterMismatch,
                format!(
                    "message from cluster {cluster_id} reached a node of cluster {mine}: two \
                     clusters share addresses (after `witness recover --force`, wipe the old \
                     cluster's witnesses and add them to the new one); check the peer lists and \
                     data dirs"
                ),
            ));
        }
        if to_id != self.node_id {
            return Err(refuse(
                refusal::Kind::WrongNode,
                format!(
                    "message for node {to_id} reached node {}: check the peer addresses in the \
                     membership (`witnessctl members list`)",
                    self.node_id
                ),
            ));
        }
        if !to_incarnation.is_empty() && to_incarnation != self.incarnation.0 {
            return Err(refuse(
                refusal::Kind::TargetIncarnationMismatch,
                format!(
                    "node {} has store incarnation {} but the cluster pinned {}: this node's data \
                     dir was wiped or replaced, so it may not vote or acknowledge under its old \
                     identity. To rejoin: `witnessctl members remove {}`, then `witnessctl members \
                     add` it again (it joins as a learner first)",
                    self.node_id,
                    self.incarnation,
                    Incarnation(to_incarnation.to_string()),
                    self.node_id
                ),
            ));
        }
        if let Some(pinned) = self.member(from_id).and_then(|m| m.incarnation)
            && pinned.0 != from_incarnation
        {
            return Err(refuse(
                refusal::Kind::SenderIncarnationMismatch,
                format!(
                    "node {from_id} speaks as incarnation {} but the membership pins {pinned}: its \
                     store was wiped or replaced. Remove it (`witnessctl members remove {from_id}`) \
                     and add it again",
                    Incarnation(from_incarnation.to_string())
                ),
            ));
        }
        self.check_cluster(cluster_id)
    }

    fn check_cluster(&self, cluster_id: &str) -> Result<(), Refusal> {
        let mut current = self.cluster_id.write().unwrap_or_else(|e| e.into_inner());
        match current.as_deref() {
            Some(mine) if mine == cluster_id => Ok(()),
            Some(mine) => Err(refuse(
                refusal::Kind::ClusterMismatch,
                format!(
                    "message from cluster {cluster_id} reached a node of cluster {mine}: two \
                     clusters share addresses; check the peer lists and data dirs"
                ),
            )),
            None if cluster_id.is_empty() => Err(refuse(
                refusal::Kind::ClusterMismatch,
                "sender has no cluster id".to_string(),
            )),
            None => {
                (self.persist_cluster_id)(cluster_id)
                    .map_err(|e| refuse(refusal::Kind::Unavailable, e))?;
                tracing::info!(cluster_id, "joined cluster on first contact");
                *current = Some(cluster_id.to_string());
                Ok(())
            }
        }
    }
}

/// Build a refusal.
pub fn refuse(kind: refusal::Kind, message: String) -> Refusal {
    Refusal {
        kind: kind as i32,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident(cluster: Option<&str>) -> Arc<Identity> {
        let id = Identity::new(
            2,
            Incarnation("b".repeat(32)),
            "test".into(),
            cluster.map(str::to_string),
            Box::new(|_| Ok(())),
        );
        id.set_members(BTreeMap::from([
            (
                1,
                WitnessNode {
                    name: "w1".into(),
                    addr: "a:1".into(),
                    site: "dc-a".into(),
                    incarnation: Some(Incarnation("a".repeat(32))),
                },
            ),
            (
                3,
                WitnessNode {
                    incarnation: None,
                    ..Default::default()
                },
            ),
        ]));
        id
    }

    fn kind(r: Result<(), Refusal>) -> Option<refusal::Kind> {
        r.err().map(|r| r.kind())
    }

    /// Every envelope check, table-driven: what is accepted and what is refused.
    #[test]
    fn admit_checks_cluster_target_and_sender() {
        use refusal::Kind::*;
        let a = "a".repeat(32);
        let b = "b".repeat(32);
        type Case<'a> = (
            &'a str,
            NodeId,
            &'a str,
            NodeId,
            &'a str,
            Option<refusal::Kind>,
        );
        let cases: Vec<Case> = vec![
            ("c1", 1, &a, 2, &b, None),
            ("c1", 1, &a, 2, "", None),
            ("c1", 3, "anything", 2, &b, None),
            ("c2", 1, &a, 2, &b, Some(ClusterMismatch)),
            ("c1", 1, &a, 9, &b, Some(WrongNode)),
            ("c1", 1, &a, 2, &a, Some(TargetIncarnationMismatch)),
            ("c1", 1, &b, 2, &b, Some(SenderIncarnationMismatch)),
        ];
        for (cluster, from, from_inc, to, to_inc, want) in cases {
            let id = ident(Some("c1"));
            assert_eq!(
                kind(id.admit(cluster, from, from_inc, to, to_inc)),
                want,
                "case {cluster} {from} {from_inc} {to} {to_inc}"
            );
        }
    }

    /// A joiner adopts the first cluster id it hears and refuses any other after.
    #[test]
    fn joiner_adopts_cluster_id_once() {
        let id = ident(None);
        let a = "a".repeat(32);
        assert_eq!(kind(id.admit("c1", 1, &a, 2, "")), None);
        assert_eq!(id.cluster_id().as_deref(), Some("c1"));
        assert_eq!(
            kind(id.admit("c2", 1, &a, 2, "")),
            Some(refusal::Kind::ClusterMismatch)
        );
    }
}

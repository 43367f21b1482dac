//! The openraft type configuration: what a node is, what the log carries.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::state::{Request, Response};

/// A witness's numeric id, fixed in its node config (`node.id`). Never reused
/// for a different store: a node that lost its store comes back as a new
/// [`Incarnation`] and must be removed and added again.
pub type NodeId = u64;

/// Random id created with a store (128 bits, lower-case hex). Peers pin each
/// member's incarnation in the membership and refuse Raft traffic from any
/// other, so a wiped node can never vote or acknowledge under its old identity.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Incarnation(pub String);

impl Incarnation {
    /// A fresh random incarnation.
    pub fn random() -> Self {
        Incarnation(format!("{:032x}", rand::random::<u128>()))
    }
}

impl fmt::Display for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The first 12 hex digits are plenty to tell incarnations apart in logs.
        f.write_str(self.0.get(..12).unwrap_or(&self.0))
    }
}

/// What the membership records about each member.
///
/// `incarnation` is `None` only between `witness init` (which cannot know its
/// peers' incarnations) and the leader's first successful contact with that
/// member, when the leader pins it with a membership entry (trust on first use).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WitnessNode {
    /// Human name (`node.name`), e.g. `svc1`.
    pub name: String,
    /// gRPC address peers and clients dial, `host:port`.
    pub addr: String,
    /// The site (failure domain) the node runs in.
    pub site: String,
    /// The member's pinned store incarnation.
    pub incarnation: Option<Incarnation>,
}

impl fmt::Display for WitnessNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{} ({})", self.name, self.addr, self.site)?;
        if let Some(inc) = &self.incarnation {
            write!(f, " inc {inc}")?;
        }
        Ok(())
    }
}

openraft::declare_raft_types!(
    /// Witness's Raft types: u64 node ids, [`WitnessNode`] members, and the
    /// replicated state machine's [`Request`]/[`Response`].
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = WitnessNode,
        // Tokio with a seedable RNG for election timeouts: random from OS
        // entropy in production, replayable in the simulation.
        AsyncRuntime = crate::raft::runtime::WitnessRuntime,
);

/// Snapshot payload: the serialized state machine (a witness's state is tiny,
/// so snapshots travel whole).
pub type SnapshotData = Vec<u8>;

pub type Raft = openraft::Raft<TypeConfig, crate::raft::store::StateMachineStore>;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;

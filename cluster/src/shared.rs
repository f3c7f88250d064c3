//! What the server, the proposer, the liveness monitor, compaction and the
//! membership code share: a leaf module, so that none of them depends on the
//! node that starts them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::Raft;
use starling_storage::{NodeId, TypeConfig};
use tokio::sync::watch;

use crate::network::Peers;

/// What the server, the proposer, the monitor and the membership code share.
pub(crate) struct Core {
    pub(crate) id: NodeId,
    pub(crate) raft: Raft<TypeConfig>,
    pub(crate) peers: Arc<Peers>,
    pub(crate) node_down_after: Duration,
    /// True once shutdown began.
    pub(crate) stopping: watch::Receiver<bool>,
    /// The members this node, as leader, finds silent for `node_down_after`;
    /// empty while it does not lead. Written by the liveness monitor at every
    /// look; the lock only guards the swap of a short list.
    pub(crate) silent: Mutex<Vec<NodeId>>,
    /// `has_quorum` as of the monitor's last look, for hot paths.
    pub(crate) quorum: std::sync::atomic::AtomicBool,
    /// Set while this node, as leader, steps down ([`crate::Node::step_down`]):
    /// it takes no new writes, so that the followers' leases run out and one
    /// of them is elected.
    pub(crate) stepping_down: std::sync::atomic::AtomicBool,
}

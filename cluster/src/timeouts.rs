//! Every deadline and period of the cluster crate, in one place, with why it
//! has the value it has. What an operator tunes is configuration instead
//! (`node_down_after`, `Tuning`).
//!
//! Raft's own timings are in `node::start::raft_config`: heartbeats every
//! 100 ms and elections after 500-1000 ms without one. openraft 0.9 gives
//! every AppendEntries the heartbeat interval as its deadline and offers no
//! separate setting, which is why the proposer bounds an entry's bytes
//! (`Tuning::max_batch_bytes`): a full batch and the follower's fsync must fit
//! in that interval.

use std::time::Duration;

// --- the node ---

/// How long shutdown waits for the store's files to close.
pub(crate) const CLOSE: Duration = Duration::from_secs(10);
/// How long shutdown waits for the server's open connections to finish.
pub(crate) const SERVER_STOP: Duration = Duration::from_secs(2);
/// How long a new node keeps asking to join before `Node::start` fails.
pub(crate) const JOIN: Duration = Duration::from_secs(60);
/// How long `Node::leave` keeps trying.
pub(crate) const LEAVE: Duration = Duration::from_secs(60);

// --- membership changes ---

/// How long the leader may spend on one step of a membership change: a new
/// learner catching up, or committing a change.
pub(crate) const MEMBERSHIP_STEP: Duration = Duration::from_secs(30);
/// A relayed membership request waits for the leader's steps (two of them,
/// and the relay's own round trip).
pub(crate) const MEMBERSHIP_RELAY: Duration = Duration::from_secs(65);
/// Pause between attempts while there is no leader or a change is in progress.
pub(crate) const MEMBERSHIP_RETRY_PAUSE: Duration = Duration::from_millis(200);

// --- proposals ---

/// The longest pause between two attempts to propose while no leader is
/// known; a leader change seen in the metrics ends it early.
pub(crate) const PROPOSE_RETRY_PAUSE: Duration = Duration::from_millis(50);

// --- the transport between members ---

/// How long a TCP connection to a member may take: on a LAN, far less; a
/// member that does not answer this fast is treated as unreachable.
pub(crate) const CONNECT: Duration = Duration::from_millis(500);
/// HTTP/2 keepalive of every member-to-member connection, both ways: a dead
/// peer's connection is noticed within a few heartbeats.
pub(crate) const H2_KEEPALIVE: Duration = Duration::from_secs(2);
/// A snapshot transfer may take this long, plus a second per 8 MiB.
pub(crate) const SNAPSHOT_BASE: Duration = Duration::from_secs(10);

// --- forwarding streams ---

/// How long opening a forwarding stream may take before the attempt counts as
/// failed.
pub(crate) const FORWARD_OPEN: Duration = Duration::from_secs(2);
/// Backoff between attempts to reopen a broken forwarding stream.
pub(crate) const FORWARD_BACKOFF_MIN: Duration = Duration::from_millis(50);
pub(crate) const FORWARD_BACKOFF_MAX: Duration = Duration::from_secs(1);

// --- periodic looks ---

/// How often the liveness monitor reads Raft's metrics: a tenth of the
/// smallest `node_down_after`'s election timeout.
pub(crate) const LIVENESS_CHECK_EVERY: Duration = Duration::from_millis(100);
/// How often the log's bytes are looked at: a load and a compare while the log
/// is small. At a few hundred MB/s of large messages, a second between looks
/// let the log overshoot its bound by as much again.
pub(crate) const COMPACTION_CHECK_EVERY: Duration = Duration::from_millis(200);

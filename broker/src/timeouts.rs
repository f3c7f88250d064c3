//! Every deadline and period of the broker, in one place, with why it has the
//! value it has. Those an operator tunes are configuration instead:
//! `[mqtt] slow_subscriber_timeout` and `[cluster] node_down_after_ms` (which
//! also bounds how long a proposal is retried across leader changes).

use std::time::Duration;

/// How long a closing connection waits for its acknowledgements, then its
/// Disconnect, to be committed: each is retried across a failover at most
/// this long before the connection lets go (the cluster cleans up after it).
pub(crate) const CLOSE: Duration = Duration::from_secs(5);
/// How long a node may take to apply a command the cluster committed before a
/// connection that must read it (CONNECT reads the resumed session) gives up.
pub(crate) const APPLY: Duration = Duration::from_secs(5);
/// How long a forwarded message may wait for the peer's acknowledgement. Equal
/// to the default `node_down_after`: longer, and a dead peer's routes are gone
/// before it times out anyway.
pub(crate) const FORWARD: Duration = Duration::from_secs(3);
/// How long a forwarding stream waits for room in a subscriber's mailbox that
/// has just filled before a QoS 0 message to it is dropped: long enough for a
/// connection task to be scheduled and drain a burst, short enough that a
/// stuck subscriber costs its stream this once per episode.
pub(crate) const FORWARD_BURST: Duration = Duration::from_millis(100);
/// How long a sync point (SUBACK, the PUBACK of a retained message) waits for
/// each node to apply what was committed; a node that misses it is not waited
/// for again until it answers.
pub(crate) const SYNC: Duration = Duration::from_secs(1);
/// How long a starting node waits for Raft to be ready: replaying a log of
/// `max_log_bytes` and finding a leader.
pub(crate) const READY: Duration = Duration::from_secs(60);
/// How often a node still waiting to be ready says what it waits for: often
/// enough that an operator watching the log sees it within a glance, rarely
/// enough that a minute's wait is six lines.
pub(crate) const READY_REPORT: Duration = Duration::from_secs(10);
/// How often connections are checked for an expired keepalive or a mailbox
/// over its bound for too long: one sweep for the whole node, no timer per
/// connection.
pub(crate) const EXPIRY_SWEEP: Duration = Duration::from_millis(250);
/// How often the leader looks again for silent peers not yet declared down.
pub(crate) const DECLARE_SILENT: Duration = Duration::from_millis(250);
/// How often counters kept by the cluster crate are copied into the metrics.
pub(crate) const METRICS_REFRESH: Duration = Duration::from_secs(1);
/// How often the TLS certificate, key and CA files are looked at for a change
/// (SIGHUP reads them at once): a renewed certificate is served within this.
pub(crate) const TLS_FILES: Duration = Duration::from_secs(5);
/// How long a leader that steps down waits for another node to be elected:
/// followers stand once its lease runs out (an election timeout, at most 1 s,
/// after its last heartbeat), and an election may take a few rounds.
pub(crate) const STEP_DOWN: Duration = Duration::from_secs(5);

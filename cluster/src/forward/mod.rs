//! Node-to-node forwarding: opaque frames (the broker's batches of publishes) sent
//! to a peer on one long-lived gRPC stream, and acknowledged once the peer's
//! [`ForwardHandler`] has taken them.
//!
//! Sending side ([`Forwarder`]): one task per peer owns a bounded queue and the
//! stream. It numbers frames, keeps those not yet acknowledged in a window, writes
//! whatever is queued in runs of consecutive frames (one gRPC message each, so a
//! busy stream costs little per frame), and when the stream breaks it reconnects
//! with backoff and sends the window again.
//!
//! Receiving side ([`forward_service`]): per sender stream it remembers the highest
//! seq handled, so a frame sent again after a reconnect is acknowledged without
//! being handled twice, and frames from one sender are handled in the order sent.
//! That memory lives as long as the service: if the receiving process restarts, a
//! frame it handled just before whose ack was lost is handled again.

mod receive;
mod send;

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

pub use receive::forward_service;
pub use send::{Forwarder, DEFAULT_BUFFER_BYTES};

/// The largest frame either end accepts. A bigger frame is refused by
/// [`Forwarder::send`]: once queued it could never be delivered, and would stall
/// every frame behind it.
pub const MAX_FRAME_BYTES: usize = 64 << 20;

/// Request metadata: the sending node's id.
const NODE_HEADER: &str = "x-starling-node";
/// Request metadata: a random id of the sender's stream, so that a sender that
/// restarts (and numbers its frames from 1 again) is not taken for a duplicate.
const STREAM_HEADER: &str = "x-starling-stream";

/// Frames handed to the gRPC stream but not yet encoded. The window, not this,
/// bounds what is in flight; this only lets the encoder take several at once.
const STAGED_FRAMES: usize = 128;
/// The receiver acknowledges at least every this many gRPC messages, even while
/// more are arriving; otherwise one ack covers everything handled so far.
const ACK_EVERY: usize = 64;
/// Frames handled per unit of the receiving task's cooperative budget.
const FRAMES_PER_BUDGET_UNIT: usize = 8;
/// At most this many frames, or about this many bytes, go in one gRPC message.
const RUN_FRAMES: usize = 512;
const RUN_BYTES: usize = 256 << 10;

/// Receives frames forwarded by peers. Supplied by the user of the cluster crate.
pub trait ForwardHandler: Send + Sync + 'static {
    /// Handles one frame from node `from`. It counts as accepted (the peer's
    /// sender gets its ack) when this returns `None`, or once the returned
    /// future resolves. Until then the stream from `from` takes no further
    /// frame: the acks it withholds are the sender's credit, so a receiver
    /// that needs time (room for a burst, a sync point) slows the sender down
    /// instead of blocking a thread or losing order.
    fn handle(&self, from: u64, frame: Bytes) -> Option<Hold>;
}

/// What a [`ForwardHandler`] returns to hold its stream until it resolves.
pub type Hold = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Why a frame was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// No address is known for the node ([`Forwarder::set_peer`] was not called, or
    /// the peer was removed).
    #[error("node {0} is not a known peer")]
    UnknownPeer(u64),
    /// The queue towards the node is full; the frame was not queued.
    #[error("the forwarding buffer towards node {0} is full")]
    BufferFull(u64),
    /// The node did not acknowledge in time. The frame stays queued and may still be
    /// delivered later.
    #[error("node {0} did not acknowledge the frame in time")]
    Timeout(u64),
    /// The frame is larger than [`MAX_FRAME_BYTES`]; it was not queued.
    #[error("a frame of {len} bytes for node {to} exceeds the limit")]
    TooLarge { to: u64, len: usize },
    /// The peer was removed, or the forwarder dropped, before the frame was
    /// acknowledged.
    #[error("the forwarding stream was closed")]
    Closed,
}

/// Counters of the sending side since the [`Forwarder`] was created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardStats {
    /// Frames written to a stream for the first time.
    pub sent: u64,
    /// Frames a peer acknowledged.
    pub acked: u64,
    /// Frames refused because the queue towards their peer was full.
    pub dropped: u64,
    /// Frames written again after a stream was re-opened.
    pub resent: u64,
    /// Streams that failed to open or broke.
    pub errors: u64,
    /// Sends whose caller stopped waiting for the ack ([`ForwardError::Timeout`]).
    pub timeouts: u64,
    /// One entry per known peer, by id.
    pub peers: Vec<PeerStats>,
}

/// The state of the stream towards one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStats {
    pub id: u64,
    /// Frames queued, not yet taken by the stream task.
    pub queued: usize,
    /// Frames taken by the stream task and not yet acknowledged.
    pub unacked: usize,
    /// Whether a stream is open right now.
    pub connected: bool,
    /// Frames written to it (each once, resends not counted), their bytes
    /// (resends counted: what went over the wire), frames it acknowledged,
    /// and its streams that broke.
    pub sent: u64,
    pub sent_bytes: u64,
    pub acked: u64,
    pub errors: u64,
}

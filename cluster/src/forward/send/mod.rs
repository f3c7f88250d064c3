//! The sending side: [`Forwarder`], one task per peer that owns a bounded
//! queue, the window of frames not yet acknowledged, and the stream.

mod peer;

use crate::timeouts;
use peer::PeerTask;

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use starling_proto::cluster::forward_client::ForwardClient;
use starling_proto::cluster::ForwardFrame;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::{Request, Status};
use tracing::{debug, info, warn, Instrument};

use super::{
    ForwardError, ForwardStats, PeerStats, MAX_FRAME_BYTES, NODE_HEADER, RUN_BYTES, RUN_FRAMES,
    STAGED_FRAMES, STREAM_HEADER,
};

/// The sending side: one stream per peer, opened when the first frame for that peer
/// is queued. Must be used within a Tokio runtime.
#[derive(Clone)]
pub struct Forwarder {
    inner: Arc<Inner>,
}

struct Inner {
    self_id: u64,
    /// How streams to peers start: source address and TLS (see
    /// `network::endpoint`).
    dialer: crate::tls::Dialer,
    buffer: usize,
    /// The most bytes of frames held for one peer.
    buffer_bytes: usize,
    congestion: Arc<Congestion>,
    /// Read on every send, written on membership changes.
    peers: RwLock<HashMap<u64, Peer>>,
    counters: Arc<Counters>,
}

/// The forwarder's handle on one peer's task. Dropping it stops the task, and the
/// frames it still holds fail with [`ForwardError::Closed`].
struct Peer {
    /// The peer's address; the task reconnects when it changes.
    addr: watch::Sender<String>,
    /// Frames for the task. Overflow: `send` fails with `BufferFull` and counts it.
    queue: mpsc::Sender<Outgoing>,
    shared: Arc<PeerShared>,
}

/// What the task reports about its peer.
struct PeerShared {
    /// What went to this peer so far: frames written (first time), their
    /// bytes, frames acknowledged, and streams that broke.
    sent: AtomicU64,
    sent_bytes: AtomicU64,
    acked: AtomicU64,
    errors: AtomicU64,
    unacked: AtomicUsize,
    /// Bytes of the frames queued or in the window: what this peer holds of
    /// this node's memory. Bounded by the forwarder's `buffer_bytes`.
    bytes: AtomicUsize,
    connected: AtomicBool,
    /// Frames in the queue, not yet taken by the task.
    queued: AtomicUsize,
    /// Whether this peer counts in [`Congestion::peers`].
    congested: AtomicBool,
    /// Queue lengths at which the peer starts and stops counting as congested.
    high: usize,
    low: usize,
    congestion: Arc<Congestion>,
}

/// How many connected peers have a long queue, and the signal that none has.
/// A peer that is not connected never counts: its queue fills and further frames
/// fail fast, as they should while the peer may be dead.
#[derive(Default)]
struct Congestion {
    peers: AtomicUsize,
    relieved: Notify,
}

impl PeerShared {
    /// Re-evaluates whether this peer is congested, with hysteresis between the
    /// high and low marks. Transitions happen by compare-and-swap, so the count
    /// stays right when several threads evaluate at once.
    fn update_congestion(&self) {
        let queued = self.queued.load(Ordering::Acquire);
        let connected = self.connected.load(Ordering::Acquire);
        let was = self.congested.load(Ordering::Acquire);
        let now = connected
            && if was {
                queued > self.low
            } else {
                queued >= self.high
            };
        if now == was
            || self
                .congested
                .compare_exchange(was, now, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return;
        }
        if now {
            self.congestion.peers.fetch_add(1, Ordering::AcqRel);
        } else if self.congestion.peers.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.congestion.relieved.notify_waiters();
        }
    }

    fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Release);
        self.update_congestion();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // A removed peer no longer holds anyone back.
        self.shared.set_connected(false);
    }
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    acked: AtomicU64,
    dropped: AtomicU64,
    resent: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// The bytes of frames held for one peer unless the caller says otherwise.
pub const DEFAULT_BUFFER_BYTES: usize = 64 << 20;

/// A frame in the queue, with the caller's end of its ack if it waits for one.
struct Outgoing {
    frame: Bytes,
    ack: Option<oneshot::Sender<()>>,
}

impl Forwarder {
    /// `buffer` is how many frames may wait in the queue towards each peer; as many
    /// again may be on the wire, awaiting their ack. Together they may hold at
    /// most [`DEFAULT_BUFFER_BYTES`].
    pub fn new(self_id: u64, buffer: usize) -> Forwarder {
        Forwarder::with_dialer(
            self_id,
            buffer,
            DEFAULT_BUFFER_BYTES,
            crate::tls::Dialer::default(),
        )
    }

    /// Like [`Forwarder::new`], with at most `buffer_bytes` of frames held for
    /// each peer (queued or awaiting their ack; a frame past it is refused as
    /// [`ForwardError::BufferFull`]), and streams dialed by `dialer` (from the
    /// node's cluster address, see [`crate::source_for`], with the cluster's
    /// TLS).
    pub fn with_dialer(
        self_id: u64,
        buffer: usize,
        buffer_bytes: usize,
        dialer: crate::tls::Dialer,
    ) -> Forwarder {
        Forwarder {
            inner: Arc::new(Inner {
                self_id,
                dialer,
                buffer: buffer.max(1),
                buffer_bytes: buffer_bytes.max(1),
                congestion: Arc::default(),
                peers: RwLock::default(),
                counters: Arc::default(),
            }),
        }
    }

    /// Where peer `id` listens (host:port); called on membership changes. A new
    /// address re-opens the stream; frames not yet acknowledged are sent again.
    pub fn set_peer(&self, id: u64, addr: String) {
        let mut peers = self
            .inner
            .peers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(peer) = peers.get(&id) {
            peer.addr.send_if_modified(|old| {
                let changed = *old != addr;
                *old = addr;
                changed
            });
            return;
        }
        let (queue, queue_rx) = mpsc::channel(self.inner.buffer);
        let (addr_tx, addr_rx) = watch::channel(addr);
        let buffer = self.inner.buffer;
        let shared = Arc::new(PeerShared {
            sent: AtomicU64::new(0),
            sent_bytes: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            unacked: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            connected: AtomicBool::new(false),
            queued: AtomicUsize::new(0),
            congested: AtomicBool::new(false),
            high: (buffer / 2).max(1),
            low: buffer / 4,
            congestion: self.inner.congestion.clone(),
        });
        let task = PeerTask::new(
            &self.inner,
            stream_epoch(),
            addr_rx,
            queue_rx,
            shared.clone(),
        );
        tokio::spawn(
            task.run()
                .instrument(tracing::info_span!("forward", peer = id)),
        );
        peers.insert(
            id,
            Peer {
                addr: addr_tx,
                queue,
                shared,
            },
        );
    }

    /// Forgets peer `id`; frames still queued for it fail with
    /// [`ForwardError::Closed`].
    pub fn remove_peer(&self, id: u64) {
        let removed = self
            .inner
            .peers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        drop(removed);
    }

    /// Queues `frame` for peer `to`; the future resolves Ok when the peer
    /// acknowledged it (its handler returned), Err if the peer is unknown, the buffer
    /// is full (counted, never blocks the caller), or no ack came within `timeout`.
    ///
    /// The frame is queued by this call, not when the future is first polled, so
    /// frames to one peer are handled in the order of the calls, and dropping the
    /// future does not withdraw the frame.
    pub fn send(
        &self,
        to: u64,
        frame: Bytes,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), ForwardError>> + Send + 'static {
        let deadline = Instant::now() + timeout;
        let queued = self.enqueue(to, frame);
        let counters = self.inner.counters.clone();
        async move {
            match tokio::time::timeout_at(deadline, queued?).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(ForwardError::Closed),
                Err(_) => {
                    bump(&counters.timeouts, 1);
                    Err(ForwardError::Timeout(to))
                }
            }
        }
    }

    /// Queues `frame` for peer `to` like [`Forwarder::send`], for a caller that
    /// does not wait for the ack: no future, no timer. Errors are those of queuing.
    pub fn send_detached(&self, to: u64, frame: Bytes) -> Result<(), ForwardError> {
        self.queue(to, frame, None)
    }

    fn enqueue(&self, to: u64, frame: Bytes) -> Result<oneshot::Receiver<()>, ForwardError> {
        let (ack, acked) = oneshot::channel();
        self.queue(to, frame, Some(ack))?;
        Ok(acked)
    }

    fn queue(
        &self,
        to: u64,
        frame: Bytes,
        ack: Option<oneshot::Sender<()>>,
    ) -> Result<(), ForwardError> {
        if frame.len() > MAX_FRAME_BYTES {
            return Err(ForwardError::TooLarge {
                to,
                len: frame.len(),
            });
        }
        let peers = self
            .inner
            .peers
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let peer = peers.get(&to).ok_or(ForwardError::UnknownPeer(to))?;
        let len = frame.len();
        // Counted before it is queued, so the task never takes it below zero;
        // refused past the byte bound as past the frame bound.
        let held = peer.shared.bytes.fetch_add(len, Ordering::AcqRel);
        if held > 0 && held + len > self.inner.buffer_bytes {
            peer.shared.bytes.fetch_sub(len, Ordering::AcqRel);
            bump(&self.inner.counters.dropped, 1);
            return Err(ForwardError::BufferFull(to));
        }
        peer.shared.queued.fetch_add(1, Ordering::AcqRel);
        let queued = peer.queue.try_send(Outgoing { frame, ack });
        if queued.is_err() {
            peer.shared.queued.fetch_sub(1, Ordering::AcqRel);
            peer.shared.bytes.fetch_sub(len, Ordering::AcqRel);
        }
        peer.shared.update_congestion();
        match queued {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                bump(&self.inner.counters.dropped, 1);
                Err(ForwardError::BufferFull(to))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(ForwardError::Closed),
        }
    }

    /// Whether a connected peer's queue is more than half full: senders that
    /// can wait (publishers, whose socket can stay unread) should, until
    /// [`Forwarder::relieved`], rather than have their frames refused later.
    pub fn is_congested(&self) -> bool {
        self.inner.congestion.peers.load(Ordering::Acquire) > 0
    }

    /// Resolves once no connected peer's queue is congested (at once if none is).
    pub async fn relieved(&self) {
        let congestion = &self.inner.congestion;
        loop {
            let relieved = congestion.relieved.notified();
            tokio::pin!(relieved);
            // Registered before the check, so a wake-up in between is not missed.
            relieved.as_mut().enable();
            if congestion.peers.load(Ordering::Acquire) == 0 {
                return;
            }
            relieved.await;
        }
    }

    /// Counters: frames sent, acked, dropped (buffer full), resent, errors; per
    /// peer queue depth.
    pub fn stats(&self) -> ForwardStats {
        let c = &self.inner.counters;
        let peers = self
            .inner
            .peers
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let mut peer_stats: Vec<PeerStats> = peers
            .iter()
            .map(|(&id, p)| PeerStats {
                id,
                queued: p.queue.max_capacity() - p.queue.capacity(),
                unacked: p.shared.unacked.load(Ordering::Relaxed),
                connected: p.shared.connected.load(Ordering::Relaxed),
                sent: p.shared.sent.load(Ordering::Relaxed),
                sent_bytes: p.shared.sent_bytes.load(Ordering::Relaxed),
                acked: p.shared.acked.load(Ordering::Relaxed),
                errors: p.shared.errors.load(Ordering::Relaxed),
            })
            .collect();
        peer_stats.sort_by_key(|p| p.id);
        ForwardStats {
            sent: c.sent.load(Ordering::Relaxed),
            acked: c.acked.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            resent: c.resent.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            timeouts: c.timeouts.load(Ordering::Relaxed),
            peers: peer_stats,
        }
    }
}

/// A random id for a new sender stream.
fn stream_epoch() -> u64 {
    static STREAMS: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    hasher.write_u128(now.as_nanos());
    hasher.write_u64(STREAMS.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// Why a stream attempt ended.
enum End {
    /// The peer was removed or the forwarder dropped.
    Removed,
    AddrChanged,
    Broken(StreamError),
}

#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("bad address: {0}")]
    Address(tonic::transport::Error),
    #[error("{0}")]
    Status(#[from] Status),
    #[error("no answer within {:?}", timeouts::FORWARD_OPEN)]
    OpenTimeout,
    #[error("closed by the peer")]
    ClosedByPeer,
    #[error("the request stream was dropped")]
    RequestClosed,
}

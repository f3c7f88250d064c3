//! The receiving side: the gRPC service that takes the frames peers forward,
//! hands them to the [`ForwardHandler`] in order, once each, and acknowledges.
//! A frame the handler holds ([`Hold`]) stops the stream until it resolves: no
//! later frame is read or acknowledged meanwhile, which is the sender's credit.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use starling_proto::cluster::forward_server::{Forward, ForwardServer};
use starling_proto::cluster::{ForwardAck, ForwardFrame};
use tokio_stream::Stream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, warn};

use bytes::Bytes;

use super::{
    ForwardHandler, Hold, ACK_EVERY, FRAMES_PER_BUDGET_UNIT, MAX_FRAME_BYTES, NODE_HEADER,
    STREAM_HEADER,
};

/// The gRPC service side: one long-lived bidirectional stream per peer. The peer's
/// node id comes in request metadata `x-starling-node`.
pub fn forward_service(handler: Arc<dyn ForwardHandler>) -> ForwardServer<impl Forward> {
    ForwardServer::new(ForwardService {
        handler,
        senders: Mutex::default(),
    })
    .max_decoding_message_size(MAX_FRAME_BYTES)
    .max_encoding_message_size(MAX_FRAME_BYTES)
}

struct ForwardService {
    handler: Arc<dyn ForwardHandler>,
    /// The latest sender stream of each peer. Locked only to look an entry up or to
    /// replace it, when streams open.
    senders: Mutex<HashMap<u64, Arc<SenderStream>>>,
}

/// What the receiver remembers of one sender stream.
struct SenderStream {
    epoch: u64,
    /// The highest seq handled, `None` before the first frame. Held while the
    /// handler runs: after a reconnect the old and the new gRPC stream of one sender
    /// may overlap for a moment, and each frame must still be handled once, in order.
    handled: Mutex<Option<u64>>,
}

impl ForwardService {
    fn sender_stream(&self, from: u64, epoch: u64) -> Arc<SenderStream> {
        let mut senders = self.senders.lock().unwrap_or_else(PoisonError::into_inner);
        match senders.get(&from) {
            Some(s) if s.epoch == epoch => s.clone(),
            _ => {
                let s = Arc::new(SenderStream {
                    epoch,
                    handled: Mutex::new(None),
                });
                senders.insert(from, s.clone());
                s
            }
        }
    }
}

#[tonic::async_trait]
impl Forward for ForwardService {
    type StreamStream = AckStream;

    async fn stream(
        &self,
        request: Request<Streaming<ForwardFrame>>,
    ) -> Result<Response<AckStream>, Status> {
        let from = metadata_u64(request.metadata(), NODE_HEADER)?;
        let epoch = metadata_u64(request.metadata(), STREAM_HEADER)?;
        debug!(from, epoch, "forward stream opened");
        Ok(Response::new(AckStream {
            from,
            sender: self.sender_stream(from, epoch),
            handler: self.handler.clone(),
            inbound: request.into_inner(),
            ack: None,
            held: None,
            done: false,
        }))
    }
}

fn metadata_u64(metadata: &MetadataMap, key: &str) -> Result<u64, Status> {
    metadata
        .get(key)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Status::invalid_argument(format!("missing or malformed {key}")))
}

/// The response of one forward stream. Polling it reads and handles the frames the
/// peer sent, so frames are taken only as fast as acks can be written back, and
/// reading stops when the peer goes away.
struct AckStream {
    from: u64,
    sender: Arc<SenderStream>,
    handler: Arc<dyn ForwardHandler>,
    inbound: Streaming<ForwardFrame>,
    /// The highest seq accepted and not yet acknowledged.
    ack: Option<u64>,
    /// A frame the handler holds, with the rest of its run.
    held: Option<Held>,
    done: bool,
}

/// Frame `seq`, accepted once `until` resolves; `rest` follow it from `seq + 1`.
struct Held {
    until: Hold,
    seq: u64,
    rest: std::vec::IntoIter<Bytes>,
}

impl AckStream {
    /// Handles the frames of one gRPC message, `run.seq` onwards.
    fn accept(&mut self, run: ForwardFrame) {
        self.handle_run(run.seq, run.frames.into_iter());
    }

    /// Handles `frames`, numbered from `first`, until one is held.
    fn handle_run(&mut self, first: u64, mut frames: std::vec::IntoIter<Bytes>) {
        // The lock is held while the handler runs; see `SenderStream::handled`.
        let mut handled = self
            .sender
            .handled
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut last = None;
        let mut next = Some(first);
        while let Some(frame) = frames.next() {
            // The numbers come from the peer: a run that would pass the
            // largest seq is cut there rather than wrapping around.
            let Some(seq) = next else {
                warn!(from = self.from, "forward run past the largest seq, cut");
                break;
            };
            next = seq.checked_add(1);
            match *handled {
                Some(h) if seq <= h => {
                    last = Some(seq);
                    continue;
                }
                Some(h) if Some(seq) != h.checked_add(1) => warn!(
                    from = self.from,
                    after = h,
                    got = seq,
                    "forward stream skipped frames"
                ),
                _ => {}
            }
            let hold = self.handler.handle(self.from, frame);
            *handled = Some(seq);
            if let Some(until) = hold {
                self.held = Some(Held {
                    until,
                    seq,
                    rest: frames,
                });
                break;
            }
            last = Some(seq);
        }
        if let Some(seq) = last {
            self.ack = Some(self.ack.map_or(seq, |a| a.max(seq)));
        }
    }

    /// Polls the held frame; true once it is accepted and the rest of its run
    /// handled (or held again).
    fn release(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(held) = self.held.as_mut() else {
            return true;
        };
        if held.until.as_mut().poll(cx).is_pending() {
            return false;
        }
        let Some(held) = self.held.take() else {
            return true;
        };
        self.ack = Some(self.ack.map_or(held.seq, |a| a.max(held.seq)));
        if let Some(next) = held.seq.checked_add(1) {
            self.handle_run(next, held.rest);
        }
        self.held.is_none()
    }
}

impl Drop for AckStream {
    fn drop(&mut self) {
        // The held frame counts as handled (a resend of it is skipped), so it
        // must finish even though its stream is gone; the frames after it were
        // not handled, and come again on the sender's next stream.
        if let (Some(held), Ok(runtime)) = (self.held.take(), tokio::runtime::Handle::try_current())
        {
            runtime.spawn(held.until);
        }
    }
}

impl Stream for AckStream {
    type Item = Result<ForwardAck, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let mut error = None;
        let mut taken = 0;
        while !this.done && taken < ACK_EVERY {
            if !this.release(cx) {
                break;
            }
            // Handling frames delivers to local connections: each few frames
            // cost this task some of its budget, so that a busy stream yields
            // its worker to the connections it feeds.
            let Poll::Ready(coop) = tokio::task::coop::poll_proceed(cx) else {
                break;
            };
            match Pin::new(&mut this.inbound).poll_next(cx) {
                Poll::Ready(Some(Ok(run))) => {
                    coop.made_progress();
                    let cost = run.frames.len() / FRAMES_PER_BUDGET_UNIT;
                    this.accept(run);
                    taken += 1;
                    for _ in 0..cost {
                        match tokio::task::coop::poll_proceed(cx) {
                            Poll::Ready(coop) => coop.made_progress(),
                            Poll::Pending => {
                                taken = ACK_EVERY;
                                break;
                            }
                        }
                    }
                }
                Poll::Ready(Some(Err(status))) => {
                    debug!(from = this.from, %status, "forward stream failed");
                    this.done = true;
                    error = Some(status);
                }
                Poll::Ready(None) => {
                    debug!(from = this.from, "forward stream closed");
                    this.done = true;
                }
                Poll::Pending => break,
            }
        }
        if let Some(seq) = this.ack.take() {
            return Poll::Ready(Some(Ok(ForwardAck { seq })));
        }
        match (this.done, error) {
            (_, Some(status)) => Poll::Ready(Some(Err(status))),
            (true, None) => Poll::Ready(None),
            (false, None) => {
                // The loop may have ended (its ack quota, the budget) right
                // after a frame was held: the hold must be polled before this
                // stream sleeps, or nothing would wake it when it resolves.
                if this.held.is_some() && this.release(cx) {
                    cx.waker().wake_by_ref();
                }
                Poll::Pending
            }
        }
    }
}

//! The task that owns the stream towards one peer: takes frames from the
//! queue, numbers them, writes them in runs, keeps the unacknowledged ones in a
//! window, and reopens a broken stream with backoff, sending the window again.

use super::*;

/// A frame taken from the queue: written (maybe) and not yet acknowledged.
struct InFlight {
    seq: u64,
    frame: Bytes,
    ack: Option<oneshot::Sender<()>>,
}

/// Owns the stream towards one peer.
pub(super) struct PeerTask {
    self_id: u64,
    dialer: crate::tls::Dialer,
    epoch: u64,
    addr: watch::Receiver<String>,
    /// The forwarder holds the other end.
    queue: mpsc::Receiver<Outgoing>,
    /// Consecutive seqs, oldest first.
    window: VecDeque<InFlight>,
    window_cap: usize,
    /// The seq the next frame taken from the queue gets.
    next_seq: u64,
    /// The seq of the next frame to write on the current stream.
    next_write: u64,
    /// The highest seq ever written, to tell a resend from a first send.
    written_max: u64,
    /// Whether the current stream got an ack; a stream that did resets the backoff.
    progressed: bool,
    counters: Arc<Counters>,
    shared: Arc<PeerShared>,
}

impl PeerTask {
    pub(super) fn new(
        inner: &Inner,
        epoch: u64,
        addr: watch::Receiver<String>,
        queue: mpsc::Receiver<Outgoing>,
        shared: Arc<PeerShared>,
    ) -> PeerTask {
        PeerTask {
            self_id: inner.self_id,
            dialer: inner.dialer.clone(),
            epoch,
            addr,
            queue,
            window: VecDeque::new(),
            window_cap: inner.buffer,
            next_seq: 1,
            next_write: 1,
            written_max: 0,
            progressed: false,
            counters: inner.counters.clone(),
            shared,
        }
    }

    pub(super) async fn run(mut self) {
        let mut backoff = timeouts::FORWARD_BACKOFF_MIN;
        let mut failures = 0u32;
        loop {
            if self.window.is_empty() {
                // Open a stream only when there is something to send.
                tokio::select! {
                    m = self.queue.recv() => match m {
                        Some(m) => self.push(m),
                        None => return,
                    },
                    r = self.addr.changed() => match r {
                        Ok(()) => continue,
                        Err(_) => return,
                    },
                }
            }
            let addr = self.addr.borrow_and_update().clone();
            self.progressed = false;
            let end = self.stream(&addr, failures).await;
            self.shared.set_connected(false);
            let error = match end {
                End::Removed => return,
                End::AddrChanged => {
                    backoff = timeouts::FORWARD_BACKOFF_MIN;
                    failures = 0;
                    continue;
                }
                End::Broken(e) => e,
            };
            bump(&self.counters.errors, 1);
            bump(&self.shared.errors, 1);
            if self.progressed {
                backoff = timeouts::FORWARD_BACKOFF_MIN;
                failures = 0;
            }
            if failures == 0 {
                warn!(%addr, error = %error, "forward stream to peer failed");
            } else {
                debug!(%addr, error = %error, failures, "forward stream to peer failed again");
            }
            failures = failures.saturating_add(1);
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                r = self.addr.changed() => if r.is_err() { return },
            }
            backoff = (backoff * 2).min(timeouts::FORWARD_BACKOFF_MAX);
        }
    }

    /// Opens a stream, sends the window again, then streams until something ends it.
    async fn stream(&mut self, addr: &str, failures: u32) -> End {
        let channel = match crate::network::endpoint(addr, &self.dialer) {
            Ok(endpoint) => endpoint.connect_lazy(),
            Err(e) => return End::Broken(StreamError::Address(e)),
        };
        let mut client = ForwardClient::new(channel)
            .max_decoding_message_size(MAX_FRAME_BYTES)
            .max_encoding_message_size(MAX_FRAME_BYTES);
        // Overflow: none; frames are only written when there is room (`pump`, and
        // `reserve` below), the window holds them meanwhile.
        let (out, out_rx) = mpsc::channel(STAGED_FRAMES);
        let mut request = Request::new(ReceiverStream::new(out_rx));
        let metadata = request.metadata_mut();
        metadata.insert(NODE_HEADER, MetadataValue::from(self.self_id));
        metadata.insert(STREAM_HEADER, MetadataValue::from(self.epoch));

        self.next_write = self.window.front().map_or(self.next_seq, |f| f.seq);
        if let Err(e) = self.pump(&out) {
            return End::Broken(e);
        }
        let open = tokio::time::timeout(timeouts::FORWARD_OPEN, client.stream(request));
        let mut acks = tokio::select! {
            r = open => match r {
                Ok(Ok(response)) => response.into_inner(),
                Ok(Err(status)) => return End::Broken(status.into()),
                Err(_) => return End::Broken(StreamError::OpenTimeout),
            },
            r = self.addr.changed() => return self.addr_changed(r),
        };
        self.shared.set_connected(true);
        if failures > 0 {
            info!(%addr, "forward stream to peer re-opened");
        } else {
            debug!(%addr, "forward stream to peer opened");
        }

        loop {
            if let Err(e) = self.pump(&out) {
                return End::Broken(e);
            }
            let room = self.window.len() < self.window_cap;
            let unwritten = self.next_write < self.next_seq;
            tokio::select! {
                biased;
                ack = acks.message() => match ack {
                    Ok(Some(ack)) => self.acked(ack.seq),
                    Ok(None) => return End::Broken(StreamError::ClosedByPeer),
                    Err(status) => return End::Broken(status.into()),
                },
                r = self.addr.changed() => return self.addr_changed(r),
                m = self.queue.recv(), if room => match m {
                    Some(m) => self.push(m),
                    None => return End::Removed,
                },
                permit = out.reserve(), if unwritten => match permit {
                    Ok(permit) => self.write(permit),
                    Err(_) => return End::Broken(StreamError::RequestClosed),
                },
            }
        }
    }

    fn addr_changed(&self, r: Result<(), watch::error::RecvError>) -> End {
        match r {
            Ok(()) => End::AddrChanged,
            Err(_) => End::Removed,
        }
    }

    /// Takes what is queued into the window and writes what fits, without waiting.
    fn pump(&mut self, out: &mpsc::Sender<ForwardFrame>) -> Result<(), StreamError> {
        while self.window.len() < self.window_cap {
            match self.queue.try_recv() {
                Ok(m) => self.push(m),
                // Empty, or removed: the `select!` in `stream` sees the latter.
                Err(_) => break,
            }
        }
        while self.next_write < self.next_seq {
            match out.try_reserve() {
                Ok(permit) => self.write(permit),
                Err(mpsc::error::TrySendError::Full(())) => break,
                Err(mpsc::error::TrySendError::Closed(())) => {
                    return Err(StreamError::RequestClosed)
                }
            }
        }
        Ok(())
    }

    fn push(&mut self, m: Outgoing) {
        self.shared.queued.fetch_sub(1, Ordering::AcqRel);
        self.shared.update_congestion();
        self.window.push_back(InFlight {
            seq: self.next_seq,
            frame: m.frame,
            ack: m.ack,
        });
        self.next_seq += 1;
        self.shared
            .unacked
            .store(self.window.len(), Ordering::Relaxed);
    }

    /// Writes the unwritten frames the window holds, from `next_write` on, as one
    /// run (up to [`RUN_FRAMES`] frames or about [`RUN_BYTES`]).
    fn write(&mut self, permit: mpsc::Permit<'_, ForwardFrame>) {
        let Some(front) = self.window.front() else {
            return;
        };
        let first = self.next_write;
        let start = (first - front.seq) as usize;
        let mut frames = Vec::new();
        let mut bytes = 0;
        for f in self.window.range(start..) {
            if frames.len() == RUN_FRAMES || (bytes > 0 && bytes + f.frame.len() > RUN_BYTES) {
                break;
            }
            bytes += f.frame.len();
            frames.push(f.frame.clone());
        }
        if frames.is_empty() {
            return;
        }
        let n = frames.len() as u64;
        permit.send(ForwardFrame { seq: first, frames });
        let last = first + n - 1;
        let resent = self.written_max.saturating_sub(first - 1).min(n);
        bump(&self.counters.resent, resent);
        bump(&self.counters.sent, n - resent);
        bump(&self.shared.sent, n - resent);
        bump(&self.shared.sent_bytes, bytes as u64);
        self.written_max = self.written_max.max(last);
        self.next_write = last + 1;
    }

    /// The peer handled every frame up to `seq`.
    fn acked(&mut self, seq: u64) {
        let mut n = 0;
        while let Some(front) = self.window.front() {
            // Never trust an ack for a frame not written on this stream.
            if front.seq > seq || front.seq >= self.next_write {
                break;
            }
            if let Some(f) = self.window.pop_front() {
                self.shared.bytes.fetch_sub(f.frame.len(), Ordering::AcqRel);
                // The caller may have stopped waiting; the frame was delivered anyway.
                if let Some(ack) = f.ack {
                    let _ = ack.send(());
                }
                n += 1;
            }
        }
        self.progressed |= n > 0;
        bump(&self.counters.acked, n);
        bump(&self.shared.acked, n);
        self.shared
            .unacked
            .store(self.window.len(), Ordering::Relaxed);
    }
}

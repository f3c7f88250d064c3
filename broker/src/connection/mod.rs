//! One MQTT connection: a task that owns its socket and buffers and `select!`s
//! over reading, its mailbox (deliveries, a grown queue, a request to stop) and
//! its pending proposals. It handles every packet already buffered, then flushes
//! its writes once. Keepalive is enforced by the registry's expiry sweep, which
//! stops the connection through its mailbox.

mod inbound;
pub mod outbound;

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, StreamExt};
use starling_proto::mqtt::{self, Packet, ProtocolVersion, QoS};
use std::future::Future;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tracing::Instrument;

use crate::registry::{Mailbox, Stop};
use crate::state::{Command, ConnId, Message, Owner, Reply, Target};
use crate::Shared;
use outbound::{Outbound, Stage};

/// An event about one connection, naming its peer and client id.
macro_rules! log {
    ($conn:expr, $level:ident, $($rest:tt)+) => {
        tracing::$level!(
            peer = %$conn.peer,
            client_id = $conn.client_id.as_deref().unwrap_or(""),
            $($rest)+
        )
    };
}
pub(crate) use log;

use crate::timeouts;
/// Answers a connection may owe its client (waiting on commits or on other
/// nodes) before it stops reading from it.
const MAX_OUTSTANDING: usize = 256;
/// Room made in the read buffer before each read.
const READ_CHUNK: usize = 4096;
/// A write buffer that grew past this is given back after the write.
const KEEP_WRITE_CAPACITY: usize = 4096;

/// The result of a proposal the connection waits for, delivered in the order
/// the proposals were made.
pub(crate) enum Completion {
    /// The session is ours: CONNACK.
    Connected { session_present: bool },
    /// Done, with nothing to send.
    Quiet,
    /// The connection lost its session before its command committed (taken
    /// over, or its node declared down): the command was refused, and the
    /// connection ends without answering.
    Stale,
    /// The client's subscriptions committed: answer, then send retained messages.
    Subscribed {
        answer: Packet,
        retained: Vec<(String, QoS)>,
    },
    /// Only a packet to send.
    Answer(Packet),
    /// PUBREC of a queued QoS 2 message committed: send PUBREL.
    Released(u16),
    /// The proposal failed: the node cannot serve this client now.
    Failed(String),
    /// A node that must deliver a message did not accept it: no answer.
    Unaccepted,
    /// The command could not be committed; `answer` says so to the client.
    Refused { answer: Packet, why: String },
}

/// Why a connection ended, which decides what happens to the will.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// DISCONNECT received: the will is discarded.
    Graceful,
    /// Socket closed, keepalive expired, protocol violation, node shutdown.
    Lost,
    /// The cluster ends the session, not this connection: another connection
    /// took it over, or this node was cut off (declared down, or without a
    /// quorum too long). Nothing is proposed; the will is the business of the
    /// command that ended the session (a takeover, `NodeDown`).
    TakenOver,
}

pub(crate) struct Connection {
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    rbuf: BytesMut,
    wbuf: BytesMut,
    conn: ConnId,
    version: Option<ProtocolVersion>,
    /// CONNACK was sent.
    connacked: bool,
    client_id: Option<Arc<str>>,
    persistent: bool,
    keep_alive: Option<Duration>,
    /// The window of messages sent to the client; allocated when the first
    /// QoS 1/2 message is (or, for a persistent session, at CONNECT).
    out: Option<Box<Outbound>>,
    /// Inbound QoS 2 packet ids awaiting PUBREL, for publishers whose session is
    /// clean (persistent publishers keep them in the replicated state).
    inbound_qos2: std::collections::BTreeSet<u16>,
    completions: Completions,
    /// Queued messages acknowledged since the last flush; committed in one command.
    acked: Vec<u64>,
    /// Deliveries from the router, and the signal that wakes this task.
    mailbox: Arc<Mailbox>,
    /// Resolves when the forwarder stops being congested; only while it is.
    relief: Option<BoxFuture<'static, ()>>,
    end: Option<End>,
}

/// Serves one accepted socket until it closes; `permit` is held until then.
///
/// An idle connection costs what this future holds, so it keeps nothing that a
/// connection does not need while idle: buffers are allocated while there is
/// something to read or write, and what runs only at the end is boxed.
pub(crate) fn serve(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
) -> impl Future<Output = ()> + Send + 'static {
    let conn = shared.next_conn_id();
    // At debug level: a span per connection costs a few hundred bytes while it
    // lives. Events worth seeing at info name the connection themselves (`log!`).
    let span = tracing::debug_span!("conn", %peer, client_id = tracing::field::Empty);
    let _ = stream.set_nodelay(true);
    let mailbox = Arc::new(Mailbox::new(
        shared.config.mailbox_capacity,
        shared.config.mailbox_capacity_bytes,
    ));
    shared
        .registry
        .set_deadline(&mailbox, Some(Instant::now() + timeouts::CONNECT));
    shared.registry.open(conn, mailbox.clone());
    shared.metrics.connections.inc();
    shared.metrics.connections_total.inc();
    // Boxed: a future holds what it captures twice (once as captured, once as
    // moved into its body), and the connection is most of an idle task.
    let mut connection = Box::new(Connection {
        out: None,
        shared,
        stream,
        peer,
        rbuf: BytesMut::new(),
        wbuf: BytesMut::new(),
        conn,
        version: None,
        connacked: false,
        client_id: None,
        persistent: false,
        keep_alive: None,
        inbound_qos2: Default::default(),
        completions: Completions::default(),
        acked: Vec::new(),
        mailbox,
        relief: None,
        end: None,
    });
    async move {
        connection.run().await;
        Box::pin(connection.close()).await;
        connection.shared.metrics.connections.dec();
        drop(permit);
    }
    .instrument(span)
}

/// The completions a connection waits for, in the order of its proposals. Holds
/// no allocation while nothing is pending.
#[derive(Default)]
struct Completions(Option<Box<FuturesOrdered<BoxFuture<'static, Completion>>>>);

impl Completions {
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |c| c.len())
    }

    fn push_back(&mut self, future: BoxFuture<'static, Completion>) {
        self.0
            .get_or_insert_with(|| Box::new(FuturesOrdered::new()))
            .push_back(future);
    }

    /// The oldest completion, if it is done.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Option<Completion> {
        let pending = self.0.as_mut()?;
        let done = match pending.poll_next_unpin(cx) {
            Poll::Ready(done) => done,
            Poll::Pending => None,
        };
        if pending.is_empty() {
            self.0 = None;
        }
        done
    }
}

/// What woke a connection task; several at once where several were ready.
#[derive(Default)]
struct Wakeup {
    readable: bool,
    attention: bool,
    completed: Option<Completion>,
}

impl Connection {
    async fn run(&mut self) {
        while self.end.is_none() {
            // While a peer node is not keeping up with what this node forwards to
            // it, clients are not read: publishers slow down to what the cluster
            // can carry instead of having their messages dropped.
            let congested = self.shared.forwarder.is_congested();
            if !congested {
                self.relief = None;
            } else if self.relief.is_none() {
                let shared = self.shared.clone();
                self.relief = Some(Box::pin(async move { shared.forwarder.relieved().await }));
            }
            // A client with many answers outstanding is not read until some
            // complete: flow control for publishers that outrun commits or slow
            // subscribers.
            let read = self.completions.len() < MAX_OUTSTANDING && !congested;
            // One poll of every source rather than a `select!` of futures: the
            // task of an idle connection holds no futures while it waits, and
            // what woke it is handled before the next await, so that its room
            // is not kept in the task either.
            let woken = std::future::poll_fn(|cx| self.poll_wakeup(cx, read)).await;
            let handled = self.on_wakeup(woken);
            self.take_mail();
            self.flush_acks();
            if !self.wbuf.is_empty() {
                // A client that stops reading must not hold this task (and the
                // publishers waiting on its mailbox) for longer than a slow
                // subscriber may.
                let slow_after = self.shared.config.slow_subscriber_after();
                match tokio::time::timeout(slow_after, self.stream.write_all(&self.wbuf)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "write failed");
                        self.end = Some(End::Lost);
                    }
                    Err(_) => self.close_lost(
                        "slow_subscriber",
                        &format!("the client read nothing for {slow_after:?}"),
                    ),
                }
                if self.wbuf.capacity() > KEEP_WRITE_CAPACITY {
                    self.wbuf = BytesMut::new();
                } else {
                    self.wbuf.clear();
                }
            }
            // Waiting for readiness does not count against the task's budget,
            // and a publisher's socket is always ready: each packet handled
            // counts here, so that a busy publisher yields its worker to the
            // subscribers it feeds before their mailboxes overflow.
            for _ in 0..handled.max(1) {
                tokio::task::coop::consume_budget().await;
            }
        }
    }

    /// Handles what woke the task; returns how many packets were read.
    fn on_wakeup(&mut self, woken: Wakeup) -> usize {
        if let Some(done) = woken.completed {
            self.complete(done);
        }
        if woken.attention {
            match self.mailbox.stopped() {
                Some(why) => self.stop(why),
                // The replicated queue may have grown.
                None if self.connacked => self.fill_window(),
                None => {}
            }
        }
        if woken.readable && self.end.is_none() {
            // The buffer is allocated once there is something to read.
            return self.read();
        }
        0
    }

    /// Polls what the task waits for: the socket (if `read`), the mailbox, the
    /// oldest pending completion and, while congested, relief. Ready with all
    /// of them that are ready, so that none starves the others.
    fn poll_wakeup(&mut self, cx: &mut Context<'_>, read: bool) -> Poll<Wakeup> {
        let mut woken = Wakeup::default();
        if read {
            match self.stream.poll_read_ready(cx) {
                Poll::Ready(Ok(())) => woken.readable = true,
                Poll::Ready(Err(e)) => {
                    tracing::debug!(error = %e, "socket error");
                    self.end = Some(End::Lost);
                    return Poll::Ready(woken);
                }
                Poll::Pending => {}
            }
        }
        woken.attention = self.mailbox.poll_attention(cx).is_ready();
        woken.completed = self.completions.poll_next(cx);
        let relieved = match self.relief.as_mut() {
            Some(relief) => relief.as_mut().poll(cx).is_ready(),
            None => false,
        };
        if woken.readable || woken.attention || woken.completed.is_some() || relieved {
            Poll::Ready(woken)
        } else {
            Poll::Pending
        }
    }

    /// Ends the connection as asked by the registry.
    fn stop(&mut self, why: Stop) {
        self.end = Some(match why {
            Stop::TakenOver => {
                log!(self, info, "session taken over by a new connection");
                End::TakenOver
            }
            Stop::NodeStopping => {
                tracing::debug!("node shutting down");
                End::Lost
            }
            Stop::CutOff => {
                log!(
                    self,
                    info,
                    "closing: this node is cut off from the cluster; the client moves on"
                );
                End::TakenOver
            }
            Stop::SlowSubscriber => {
                log!(
                    self,
                    info,
                    "disconnecting a subscriber that reads too slowly: its mailbox stayed full"
                );
                self.shared.metrics.disconnected("slow_subscriber");
                End::Lost
            }
            Stop::Expired => {
                if self.version.is_some() {
                    log!(self, info, "keepalive expired [MQTT-3.1.2-24]");
                } else {
                    log!(self, info, "no CONNECT in time");
                }
                End::Lost
            }
        });
    }

    /// Reads what the socket has and handles every complete packet.
    /// Returns how many packets were handled.
    fn read(&mut self) -> usize {
        self.rbuf.reserve(READ_CHUNK);
        let mut handled = 0;
        match self.stream.try_read_buf(&mut self.rbuf) {
            Ok(0) => {
                tracing::debug!("connection closed by the client");
                self.end = Some(End::Lost);
            }
            Ok(_) => handled = self.handle_input(),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => {
                tracing::debug!(error = %e, "socket error");
                self.end = Some(End::Lost);
            }
        }
        if self.rbuf.is_empty() {
            // Idle connections hold no read buffer.
            self.rbuf = BytesMut::new();
        }
        handled
    }

    /// Decodes and handles every complete packet in the read buffer.
    fn handle_input(&mut self) -> usize {
        let mut handled = 0;
        while self.end.is_none() {
            let max = self.shared.config.max_packet_size;
            match mqtt::decode(&mut self.rbuf, max, self.version) {
                Ok(Some(packet)) => {
                    handled += 1;
                    self.handle_packet(packet);
                }
                Ok(None) => break,
                Err(e) => {
                    self.decode_failed(e);
                    break;
                }
            }
        }
        if let (true, Some(keep_alive)) = (handled > 0, self.keep_alive) {
            let deadline = Instant::now() + keep_alive;
            self.shared
                .registry
                .set_deadline(&self.mailbox, Some(deadline));
        }
        handled
    }

    fn decode_failed(&mut self, e: mqtt::DecodeError) {
        if let mqtt::DecodeError::UnsupportedProtocolLevel(level) = e {
            if self.version.is_none() {
                log!(
                    self,
                    info,
                    level,
                    "unsupported protocol level [MQTT-3.1.2-2]"
                );
                self.shared.metrics.protocol_error("protocol_level");
                let connack = mqtt::ConnAck {
                    session_present: false,
                    code: mqtt::ConnectReturnCode::UnacceptableProtocolVersion,
                };
                self.send(&Packet::ConnAck(connack));
                self.end = Some(End::Lost);
                return;
            }
        }
        let reason = match e {
            mqtt::DecodeError::PacketTooLarge { .. } => "too_large",
            _ => "malformed",
        };
        log!(self, info, error = %e, "closing connection: bad packet");
        self.shared.metrics.protocol_error(reason);
        self.end = Some(End::Lost);
    }

    /// Encodes `packet` into the write buffer.
    fn send(&mut self, packet: &Packet) {
        let version = self.version.unwrap_or(ProtocolVersion::V3_1_1);
        if let Err(e) = mqtt::encode(packet, version, &mut self.wbuf) {
            // Only our own packets are encoded here; a failure is a broker bug.
            log!(self, error, error = %e, "cannot encode an outgoing packet");
            self.end = Some(End::Lost);
        }
    }

    fn violation(&mut self, what: &'static str) {
        log!(self, info, "closing connection: protocol violation: {what}");
        self.shared.metrics.protocol_error("violation");
        self.end = Some(End::Lost);
    }

    /// Answers `answer` once every other node with subscribers of `message` has
    /// accepted it; at once if there is none.
    ///
    /// When a node that must deliver it did not accept it, there is no answer:
    /// the connection ends, so that the client sends the message again when it
    /// reconnects [MQTT-4.4.0-1] instead of holding a packet id for ever.
    fn route_then_answer(&mut self, message: &Message, targets: Vec<Target>, answer: Packet) {
        match self.shared.route_to(message, targets) {
            None => self.send(&answer),
            Some(forwarded) => self.completions.push_back(Box::pin(async move {
                if forwarded.await {
                    Completion::Answer(answer)
                } else {
                    Completion::Unaccepted
                }
            })),
        }
    }

    /// Proposes `command` and maps its reply to a completion once committed.
    fn propose(
        &mut self,
        command: Command,
        then: impl FnOnce(Reply) -> Completion + Send + 'static,
    ) {
        self.propose_with(command, false, then);
    }

    /// Like [`Connection::propose`]; with `synced`, the completion waits until the
    /// command is applied on every node this one reaches.
    fn propose_with(
        &mut self,
        command: Command,
        synced: bool,
        then: impl FnOnce(Reply) -> Completion + Send + 'static,
    ) {
        self.propose_or_else(command, synced, move |reply| match reply {
            Ok(reply) => then(reply),
            Err(e) => Completion::Failed(e),
        });
    }

    /// Like [`Connection::propose_with`], for a caller that answers a failed
    /// proposal itself rather than closing the connection.
    fn propose_or_else(
        &mut self,
        command: Command,
        synced: bool,
        then: impl FnOnce(Result<Reply, String>) -> Completion + Send + 'static,
    ) {
        let shared = self.shared.clone();
        // Proposals must reach the proposer in the order the client sent its
        // packets. A future's first poll is where it enqueues; under tokio's
        // cooperative budget that poll could return Pending and the future be
        // polled again after later ones, reordering one publisher's messages.
        // `unconstrained` keeps the budget out of it.
        self.completions
            .push_back(Box::pin(tokio::task::unconstrained(async move {
                let reply = if synced {
                    shared.propose_synced(command).await
                } else {
                    shared.propose(command).await
                };
                then(reply.map_err(|e| e.to_string()))
            })));
    }

    fn complete(&mut self, done: Completion) {
        match done {
            Completion::Connected { session_present } => {
                self.send(&Packet::ConnAck(mqtt::ConnAck {
                    session_present,
                    code: mqtt::ConnectReturnCode::Accepted,
                }));
                self.connacked = true;
                self.connected();
            }
            Completion::Quiet => {}
            Completion::Stale => {
                log!(
                    self,
                    info,
                    "session lost to another connection before a commit"
                );
                self.end = Some(End::TakenOver);
            }
            Completion::Subscribed { answer, retained } => {
                self.send(&answer);
                self.send_retained(&retained);
            }
            Completion::Answer(answer) => self.send(&answer),
            Completion::Released(packet_id) => {
                let released = self
                    .out
                    .as_mut()
                    .and_then(|out| out.queued.get_mut(&packet_id));
                if let Some((_, stage)) = released {
                    *stage = Stage::AwaitComp;
                    self.send(&Packet::PubRel(packet_id));
                }
            }
            Completion::Refused { answer, why } => {
                log!(self, info, "refused: {why}");
                self.send(&answer);
            }
            Completion::Unaccepted => self.close_lost(
                "forward_failed",
                "another node did not take a message in time; the client resends it",
            ),
            Completion::Failed(e) => {
                if !self.connacked {
                    self.send(&Packet::ConnAck(mqtt::ConnAck {
                        session_present: false,
                        code: mqtt::ConnectReturnCode::ServerUnavailable,
                    }));
                }
                log!(self, warn, error = %e, "cannot commit, closing the connection");
                self.end = Some(End::Lost);
            }
        }
    }

    /// Ends the connection as lost (its will is due) for `reason`, counted in
    /// `starling_client_disconnects_total`, with a line saying `why`.
    pub(super) fn close_lost(&mut self, reason: &'static str, why: &str) {
        log!(self, info, reason, "closing the connection: {why}");
        self.shared.metrics.disconnected(reason);
        self.end = Some(End::Lost);
    }

    /// The session's owner as commands name it: this connection, once CONNECT
    /// named the client.
    fn owner(&self) -> Option<Owner> {
        Some(Owner {
            client_id: self.client_id.clone()?,
            conn: self.conn,
        })
    }

    /// The acknowledgements gathered since the last one, as one command.
    fn take_acks(&mut self) -> Option<Command> {
        if self.acked.is_empty() {
            return None;
        }
        let from = self.owner()?;
        let seqs = std::mem::take(&mut self.acked);
        Some(Command::Ack { from, seqs })
    }

    /// Commits the acknowledgements gathered in this round, in one command.
    fn flush_acks(&mut self) {
        let Some(command) = self.take_acks() else {
            return;
        };
        let shared = self.shared.clone();
        // Not awaited: if it is lost, the messages are sent again (with DUP),
        // which QoS 1 allows and QoS 2 subscribers recognise by packet id.
        tokio::spawn(async move {
            if let Err(e) = shared.propose(command).await {
                tracing::debug!(error = %e, "acknowledgements not committed");
            }
        });
    }

    /// Ends the session's connection in the replicated state and frees the
    /// connection's place in the registry.
    async fn close(&mut self) {
        let end = self.end.unwrap_or(End::Lost);
        // First, so that publishers waiting for room in it go on at once.
        self.mailbox.close();
        // Bounded like any write: a client that reads nothing keeps the
        // FIN's way blocked too.
        let _ = tokio::time::timeout(timeouts::CLOSE, self.stream.shutdown()).await;
        let shared = self.shared.clone();
        // Committed before the Disconnect, which ends this connection's right
        // to acknowledge anything for the session.
        if let Some(acks) = self.take_acks() {
            match tokio::time::timeout(timeouts::CLOSE, shared.propose(acks)).await {
                Ok(Ok(_)) => {}
                _ => tracing::debug!("acknowledgements not committed at close"),
            }
        }
        if let (Some(client_id), true) = (&self.client_id, end != End::TakenOver) {
            let command = Command::Disconnect {
                client_id: client_id.clone(),
                conn: self.conn,
                publish_will: end == End::Lost,
                sent_below: self
                    .out
                    .as_ref()
                    .filter(|_| self.persistent && self.connacked)
                    .map(|out| out.next_seq),
            };
            // The will, if any, is delivered by every node as it applies this.
            match tokio::time::timeout(timeouts::CLOSE, shared.propose(command)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => log!(self, warn, error = %e, "disconnect not committed"),
                Err(_) => log!(self, warn, "disconnect not committed in time"),
            }
        }
        shared.registry.close(self.client_id.as_ref(), self.conn);
        tracing::debug!(?end, "connection closed");
    }
}

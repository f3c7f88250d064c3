//! One MQTT connection: a task that owns its socket and buffers and `select!`s
//! over shutdown, reading, its mailbox, its queue, its pending proposals and its
//! keepalive deadline. It handles every packet already buffered, then flushes
//! its writes once.

mod inbound;
pub mod outbound;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, StreamExt};
use starling_proto::mqtt::{self, Packet, ProtocolVersion, Publish, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tracing::Instrument;

use crate::registry::{Delivery, MailboxReceiver};
use crate::state::{Command, ConnId, Message, Reply, Target};
use crate::Shared;
use outbound::{Outbound, Stage};

/// How long a new connection may take to send CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Answers a connection may owe its client (waiting on commits or on other
/// nodes) before it stops reading from it.
const MAX_OUTSTANDING: usize = 256;
/// How long a closing connection waits for its Disconnect to be committed.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The result of a proposal the connection waits for, delivered in the order
/// the proposals were made.
pub(crate) enum Completion {
    /// The session is ours: route the wills of a taken-over connection, CONNACK.
    Connected {
        session_present: bool,
        wills: Vec<Message>,
    },
    /// A message committed: route it to the direct subscribers, then answer.
    Published {
        message: Option<Message>,
        answer: Option<Packet>,
    },
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
}

/// Why a connection ended, which decides what happens to the will.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// DISCONNECT received: the will is discarded.
    Graceful,
    /// Socket closed, keepalive expired, protocol violation, node shutdown.
    Lost,
    /// Another connection took the session over; the will was handled then.
    TakenOver,
}

pub(crate) struct Connection {
    shared: Arc<Shared>,
    stream: TcpStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    conn: ConnId,
    version: Option<ProtocolVersion>,
    /// CONNACK was sent.
    connacked: bool,
    client_id: Option<Arc<str>>,
    persistent: bool,
    keep_alive: Option<Duration>,
    deadline: Instant,
    out: Outbound,
    /// Inbound QoS 2 packet ids awaiting PUBREL, for publishers whose session is
    /// clean (persistent publishers keep them in the replicated state).
    inbound_qos2: std::collections::HashSet<u16>,
    completions: FuturesOrdered<BoxFuture<'static, Completion>>,
    /// Queued messages acknowledged since the last flush; committed in one command.
    acked: Vec<u64>,
    mailbox: Option<MailboxReceiver>,
    wake: Arc<Notify>,
    kick: Arc<Notify>,
    end: Option<End>,
}

/// Serves one accepted socket until it closes.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    let conn = shared.next_conn_id();
    let span = tracing::info_span!("conn", %peer, client_id = tracing::field::Empty);
    async move {
        let _ = stream.set_nodelay(true);
        let kick = Arc::new(Notify::new());
        shared.registry.open(conn, kick.clone());
        shared.metrics.connections.inc();
        shared.metrics.connections_total.inc();
        let mut connection = Connection {
            out: Outbound::new(
                shared.config.max_inflight,
                shared.config.max_queued_messages,
            ),
            shared: shared.clone(),
            stream,
            rbuf: BytesMut::with_capacity(256),
            wbuf: BytesMut::new(),
            conn,
            version: None,
            connacked: false,
            client_id: None,
            persistent: false,
            keep_alive: None,
            deadline: Instant::now() + CONNECT_TIMEOUT,
            inbound_qos2: Default::default(),
            completions: FuturesOrdered::new(),
            acked: Vec::new(),
            mailbox: None,
            wake: Arc::new(Notify::new()),
            kick,
            end: None,
        };
        connection.run(&mut shutdown).await;
        connection.close().await;
        shared.metrics.connections.dec();
    }
    .instrument(span)
    .await
}

impl Connection {
    async fn run(&mut self, shutdown: &mut watch::Receiver<bool>) {
        while self.end.is_none() {
            let wake = self.wake.clone();
            let kick = self.kick.clone();
            tokio::select! {
                _ = shutdown.changed() => {
                    tracing::debug!("node shutting down");
                    self.end = Some(End::Lost);
                }
                _ = kick.notified() => {
                    tracing::info!("session taken over by a new connection");
                    self.end = Some(End::TakenOver);
                }
                // A client with many answers outstanding is not read until some
                // complete: flow control for publishers that outrun commits or
                // slow subscribers.
                read = self.stream.read_buf(&mut self.rbuf), if self.completions.len() < MAX_OUTSTANDING => match read {
                    Ok(0) => {
                        tracing::debug!("connection closed by the client");
                        self.end = Some(End::Lost);
                    }
                    Ok(_) => self.handle_input(),
                    Err(e) => {
                        tracing::debug!(error = %e, "socket error");
                        self.end = Some(End::Lost);
                    }
                },
                // Nothing is sent to the client before its CONNACK.
                Some(delivery) = recv(&mut self.mailbox), if self.connacked && self.out.can_park() => {
                    self.deliver(delivery);
                    while self.out.can_park() {
                        let Some(more) = self.mailbox.as_mut().and_then(|m| m.try_recv()) else {
                            break;
                        };
                        self.deliver(more);
                    }
                }
                _ = wake.notified(), if self.connacked => self.fill_window(),
                Some(done) = self.completions.next(), if !self.completions.is_empty() => {
                    self.complete(done);
                }
                _ = tokio::time::sleep_until(self.deadline) => {
                    if self.version.is_some() {
                        tracing::info!("keepalive expired [MQTT-3.1.2-24]");
                    } else {
                        tracing::info!("no CONNECT in time");
                    }
                    self.end = Some(End::Lost);
                }
            }
            self.flush_acks();
            if !self.wbuf.is_empty() {
                if let Err(e) = self.stream.write_all(&self.wbuf).await {
                    tracing::debug!(error = %e, "write failed");
                    self.end = Some(End::Lost);
                }
                self.wbuf.clear();
            }
        }
    }

    /// Decodes and handles every complete packet in the read buffer.
    fn handle_input(&mut self) {
        while self.end.is_none() {
            let max = self.shared.config.max_packet_size;
            match mqtt::decode(&mut self.rbuf, max, self.version) {
                Ok(Some(packet)) => {
                    if let Some(keep_alive) = self.keep_alive {
                        self.deadline = Instant::now() + keep_alive;
                    }
                    self.handle_packet(packet);
                }
                Ok(None) => return,
                Err(e) => {
                    self.decode_failed(e);
                    return;
                }
            }
        }
    }

    fn decode_failed(&mut self, e: mqtt::DecodeError) {
        if let mqtt::DecodeError::UnsupportedProtocolLevel(level) = e {
            if self.version.is_none() {
                tracing::info!(level, "unsupported protocol level [MQTT-3.1.2-2]");
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
        tracing::info!(error = %e, "closing connection: bad packet");
        self.shared.metrics.protocol_error(reason);
        self.end = Some(End::Lost);
    }

    /// Encodes `packet` into the write buffer.
    fn send(&mut self, packet: &Packet) {
        let version = self.version.unwrap_or(ProtocolVersion::V3_1_1);
        if let Err(e) = mqtt::encode(packet, version, &mut self.wbuf) {
            // Only our own packets are encoded here; a failure is a broker bug.
            tracing::error!(error = %e, "cannot encode an outgoing packet");
            self.end = Some(End::Lost);
        }
    }

    fn violation(&mut self, what: &'static str) {
        tracing::info!("closing connection: protocol violation: {what}");
        self.shared.metrics.protocol_error("violation");
        self.end = Some(End::Lost);
    }

    /// Answers `answer` once every other node with subscribers of `message` has
    /// accepted it; at once if there is none.
    fn route_then_answer(&mut self, message: &Message, targets: Vec<Target>, answer: Packet) {
        match self.shared.route_to(message, targets) {
            None => self.send(&answer),
            Some(forwarded) => self.completions.push_back(Box::pin(async move {
                forwarded.await;
                Completion::Answer(answer)
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
                match reply {
                    Ok(reply) => then(reply),
                    Err(e) => Completion::Failed(e.to_string()),
                }
            })));
    }

    fn complete(&mut self, done: Completion) {
        match done {
            Completion::Connected {
                session_present,
                wills,
            } => {
                for will in &wills {
                    self.shared.route_detached(will);
                }
                self.send(&Packet::ConnAck(mqtt::ConnAck {
                    session_present,
                    code: mqtt::ConnectReturnCode::Accepted,
                }));
                self.connacked = true;
                self.connected();
            }
            Completion::Published { message, answer } => {
                if let Some(message) = message {
                    self.shared.route_detached(&message);
                }
                if let Some(answer) = answer {
                    self.send(&answer);
                }
            }
            Completion::Subscribed { answer, retained } => {
                self.send(&answer);
                self.send_retained(&retained);
            }
            Completion::Answer(answer) => self.send(&answer),
            Completion::Released(packet_id) => {
                if let Some((_, stage)) = self.out.queued.get_mut(&packet_id) {
                    *stage = Stage::AwaitComp;
                    self.send(&Packet::PubRel(packet_id));
                }
            }
            Completion::Failed(e) => {
                if !self.connacked {
                    self.send(&Packet::ConnAck(mqtt::ConnAck {
                        session_present: false,
                        code: mqtt::ConnectReturnCode::ServerUnavailable,
                    }));
                }
                tracing::warn!(error = %e, "cannot commit, closing the connection");
                self.end = Some(End::Lost);
            }
        }
    }

    /// A message for this client from the router.
    fn deliver(&mut self, delivery: Delivery) {
        if delivery.qos == QoS::AtMostOnce {
            self.send_publish(&delivery.message, QoS::AtMostOnce, 0, false);
        } else {
            self.out.park(delivery);
            self.fill_window();
        }
    }

    fn send_publish(&mut self, message: &Message, qos: QoS, packet_id: u16, dup: bool) {
        let publish = Publish {
            dup,
            qos,
            retain: message.retain,
            topic: message.topic.clone(),
            packet_id,
            payload: message.payload.clone(),
        };
        self.shared
            .metrics
            .messages_sent
            .with_label_values(&[crate::metrics::qos_label(qos)])
            .inc();
        self.send(&Packet::Publish(publish));
    }

    /// Sends as many queued and parked messages as the window allows.
    fn fill_window(&mut self) {
        if let (true, Some(client_id)) = (self.persistent, self.client_id.clone()) {
            while self.out.room() > 0 {
                let batch =
                    self.shared
                        .machine
                        .queued(&client_id, self.out.next_seq, self.out.room());
                if batch.is_empty() {
                    break;
                }
                for (seq, queued) in batch {
                    let id = outbound::queue_packet_id(seq);
                    let stage = match (queued.qos, queued.released) {
                        (_, true) => Stage::AwaitComp,
                        (QoS::ExactlyOnce, false) => Stage::AwaitRec,
                        _ => Stage::AwaitAck,
                    };
                    if !self.out.send_queued(seq, stage) {
                        return;
                    }
                    if queued.released {
                        self.send(&Packet::PubRel(id));
                    } else {
                        let dup = seq < self.out.dup_below;
                        self.send_publish(&queued.message, queued.qos, id, dup);
                    }
                }
            }
        }
        while let Some((id, delivery)) = self.out.next_direct() {
            self.send_publish(&delivery.message, delivery.qos, id, false);
        }
    }

    /// Commits the acknowledgements gathered in this round, in one command.
    fn flush_acks(&mut self) {
        if self.acked.is_empty() {
            return;
        }
        let (Some(client_id), seqs) = (self.client_id.clone(), std::mem::take(&mut self.acked))
        else {
            return;
        };
        let shared = self.shared.clone();
        // Not awaited: if it is lost, the messages are sent again (with DUP),
        // which QoS 1 allows and QoS 2 subscribers recognise by packet id.
        tokio::spawn(async move {
            if let Err(e) = shared.propose(Command::Ack { client_id, seqs }).await {
                tracing::debug!(error = %e, "acknowledgements not committed");
            }
        });
    }

    /// Ends the session's connection in the replicated state and frees the
    /// connection's place in the registry.
    async fn close(&mut self) {
        let end = self.end.unwrap_or(End::Lost);
        self.flush_acks();
        let _ = self.stream.shutdown().await;
        let shared = self.shared.clone();
        if let (Some(client_id), true) = (&self.client_id, end != End::TakenOver) {
            let command = Command::Disconnect {
                client_id: client_id.clone(),
                conn: self.conn,
                publish_will: end == End::Lost,
                sent_below: (self.persistent && self.connacked).then_some(self.out.next_seq),
            };
            match tokio::time::timeout(CLOSE_TIMEOUT, shared.propose(command)).await {
                Ok(Ok(Reply::Disconnected { wills })) => {
                    for will in wills {
                        shared.route_detached(&will);
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "disconnect not committed"),
                Err(_) => tracing::warn!("disconnect not committed in time"),
            }
        }
        shared.registry.close(self.client_id.as_ref(), self.conn);
        tracing::debug!(?end, "connection closed");
    }
}

/// Receives from the mailbox once the client is connected; pending forever before.
async fn recv(mailbox: &mut Option<MailboxReceiver>) -> Option<Delivery> {
    match mailbox {
        Some(m) => m.recv().await,
        None => std::future::pending().await,
    }
}

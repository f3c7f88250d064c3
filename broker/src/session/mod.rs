//! One client's MQTT session on this node, as a state machine without IO.
//!
//! A [`Session`] takes events (bytes from the client, a delivery
//! from its mailbox, the outcome of a proposal or a forward, a request to stop,
//! a stalled write) and answers with bytes for the client (its transmit buffer)
//! and [`Action`]s for the connection task: commit this command, route this
//! message, expire me if the client stays silent this long. It reads the
//! replicated state and the node's health through a [`View`], and never waits:
//! everything that takes time comes back to it as an [`Event`], in the order it
//! was asked for.
//!
//! `crate::connection` is the shell around it: the socket, the mailbox, the
//! futures of proposals and forwards, the registry.

mod aliases;
mod inbound;
mod outbound;
#[cfg(test)]
mod tests;
mod window;

use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use starling_proto::mqtt::{self, ConnAck, Disconnect, Packet, ProtocolVersion, QoS, ReasonCode};

use crate::config::MqttConfig;
use crate::metrics::Metrics;
use crate::registry::{Delivery, Stop};
use crate::state::{Command, ConnId, Message, Owner, Queued, Reply, Target};
use aliases::Aliases;
use window::Window;

/// An event about one connection, naming its peer and client id.
macro_rules! log {
    ($session:expr, $level:ident, $($rest:tt)+) => {
        tracing::$level!(
            peer = %$session.peer,
            client_id = $session.client_id.as_deref().unwrap_or(""),
            $($rest)+
        )
    };
}
use log;

/// A transmit buffer that grew past this is given back once written.
const KEEP_TRANSMIT_CAPACITY: usize = 4096;

/// What a session reads of the node it runs on: the replicated state as this
/// node has applied it, the node's health, its settings and its metrics.
pub(crate) trait View {
    /// Whether this node can commit now (it had a quorum recently).
    fn has_quorum(&self) -> bool;
    /// Whether this node is fenced: declared down and not yet rejoined.
    fn is_fenced(&self) -> bool;
    fn config(&self) -> &MqttConfig;
    fn metrics(&self) -> &Metrics;
    /// Who receives a message on `topic` published at `qos` by `publisher`.
    fn targets(&self, topic: &str, qos: QoS, publisher: Option<&str>) -> Vec<Target>;
    /// The oldest sequence number queued for `client_id`.
    fn queue_head(&self, client_id: &str) -> Option<u64>;
    /// Queued messages below this were sent by an earlier connection.
    fn sent_below(&self, client_id: &str) -> u64;
    /// Up to `max` queued messages of `client_id` from sequence number `from`.
    fn queued(&self, client_id: &str, from: u64, max: usize) -> Vec<(u64, Queued)>;
    /// The retained messages whose topics match `filter`.
    fn retained_matching(&self, filter: &str) -> Vec<Message>;
    /// The wall clock, in milliseconds since the Unix epoch: when messages
    /// received now expire, and whether one expired.
    fn now_ms(&self) -> u64;
    /// The enhanced authentication method called `method`, if offered.
    fn authenticator(&self, method: &str) -> Option<&dyn crate::auth::Authenticator>;
    /// The users of the password file, if one is configured.
    fn passwords(&self) -> Option<Arc<crate::auth::PasswordFile>>;
    /// Whether clients that did not authenticate may connect.
    fn allow_anonymous(&self) -> bool;
    /// How many subscriptions `client_id`'s session holds.
    fn subscription_count(&self, client_id: &str) -> usize;
    /// Whether `client_id`'s session holds a subscription to `filter`.
    fn has_subscription(&self, client_id: &str, filter: &str) -> bool;
    /// The ACL rules, if an ACL file is configured.
    fn acl(&self) -> Option<Arc<crate::auth::acl::AclFile>>;
}

/// What the connection task does for its session.
#[derive(Debug)]
pub(crate) enum Action {
    /// Commit `command`; once `wait` is met, hand the reply back as
    /// [`Event::Committed`] with `then`.
    Propose {
        command: Command,
        wait: Wait,
        then: Then,
    },
    /// Commit `command`; nobody waits for it (acknowledgements of queued
    /// messages: if lost, they are sent again with DUP).
    Commit(Command),
    /// Deliver `message` to `targets` (those that read no queue), waiting for
    /// nobody.
    Route {
        message: Message,
        targets: Vec<Target>,
    },
    /// Deliver `message` to `targets`; hand back [`Event::Routed`] with
    /// `answer` once every node that must deliver it accepted it or one did not.
    RouteThenAnswer {
        message: Message,
        targets: Vec<Target>,
        answer: Packet,
    },
    /// End the connection unless the client sends something within this long.
    KeepAlive(Duration),
}

/// How long a proposal is waited for before its outcome comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Until the cluster committed it.
    Committed,
    /// Until this node and every node it reaches applied it: what a SUBACK and
    /// the PUBACK of a retained message promise.
    Synced,
    /// Until this node applied it too, for an outcome that reads the state.
    Applied,
}

/// What the session does with a proposal's outcome.
///
/// `Answer` holds a whole packet; one `Then` waits per outstanding proposal,
/// a few dozen at most per connection, so it is not boxed.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Then {
    /// CONNECT: answer CONNACK (with `properties`) and start sending.
    Connected {
        clean_start: bool,
        properties: Box<mqtt::Properties>,
    },
    /// A session mutation: send `answer`, unless the session was lost.
    Answer(Packet),
    /// SUBSCRIBE: answer SUBACK with `codes`, then send the retained messages
    /// of `accepted` as their Retain Handling asks; if nothing was committed,
    /// fail every filter.
    Subscribed {
        packet_id: u16,
        codes: Vec<ReasonCode>,
        accepted: Vec<(String, crate::state::Subscription)>,
    },
    /// UNSUBSCRIBE: answer UNSUBACK, with 0x11 for the filters of `codes`
    /// (those still Success) that had no subscription.
    Unsubscribed {
        packet_id: u16,
        codes: Vec<ReasonCode>,
    },
    /// The PUBREC of a queued QoS 2 message committed: send PUBREL.
    Released(u16),
    /// Nothing to send.
    Quiet,
}

/// Something that happened to a session, besides bytes from its client
/// ([`Session::input`]).
#[derive(Debug)]
pub(crate) enum Event {
    /// A message for the client from the router.
    Mail(Delivery),
    /// The client's replicated queue may have grown.
    QueueGrew,
    /// The outcome of [`Action::Propose`].
    Committed {
        then: Then,
        reply: Result<Reply, String>,
    },
    /// The outcome of [`Action::RouteThenAnswer`]: whether every node that must
    /// deliver the message accepted it.
    Routed { answer: Packet, accepted: bool },
    /// The node asks the connection to end.
    Stop(Stop),
    /// The client read nothing of what was written to it for this long.
    WriteStalled(Duration),
    /// The socket closed or failed.
    SocketClosed,
}

/// Why a connection ended, which decides what happens to the will.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// DISCONNECT received: the will is discarded.
    Graceful,
    /// DISCONNECT with reason 0x04 (MQTT 5): the will is published.
    GracefulWithWill,
    /// Socket closed, keepalive expired, protocol violation.
    Lost,
    /// Its node drains (stops cleanly): the will is published only if the
    /// client does not come back within `mqtt.drain_will_grace`.
    Drained,
    /// The cluster ends the session, not this connection: another connection
    /// took it over, or this node was cut off (declared down, or without a
    /// quorum too long). Nothing is proposed; the will is the business of the
    /// command that ended the session (a takeover, `NodeDown`).
    TakenOver,
}

/// A token bucket of PUBLISH packets: `max` a second, refilled as time goes,
/// holding at most a second's worth.
#[derive(Debug, Default)]
pub(crate) struct PublishRate {
    tokens: f64,
    at: u64,
}

impl PublishRate {
    /// Takes one token at `now` (ms); false when none is left.
    fn take(&mut self, max: u32, now: u64) -> bool {
        let max = f64::from(max);
        if self.at == 0 {
            self.tokens = max;
        } else {
            let elapsed = now.saturating_sub(self.at) as f64 / 1000.0;
            self.tokens = (self.tokens + elapsed * max).min(max);
        }
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What a closing connection still commits, in this order.
#[derive(Debug, Default)]
pub(crate) struct Closing {
    /// Messages of shared subscriptions the client never got: another
    /// member of their group gets them.
    pub redeliver: Vec<Delivery>,
    /// The acknowledgements gathered and not yet committed.
    pub acks: Option<Command>,
    /// The end of the session's connection in the replicated state.
    pub disconnect: Option<Command>,
}

/// One connection's MQTT session.
pub(crate) struct Session {
    peer: SocketAddr,
    conn: ConnId,
    version: Option<ProtocolVersion>,
    /// CONNACK was sent.
    connacked: bool,
    /// Some bytes came from the client: a connection that times out before
    /// CONNECT is a slow one rather than a silent one.
    heard: bool,
    client_id: Option<Arc<str>>,
    persistent: bool,
    keep_alive: Option<Duration>,
    /// The Session Expiry Interval of CONNECT (MQTT 5): a DISCONNECT may not
    /// raise it from 0 [MQTT-3.14.2-2].
    session_expiry: u32,
    /// The most QoS 1/2 messages the client takes unacknowledged (MQTT 5
    /// Receive Maximum; 65,535 before).
    client_receive_maximum: u16,
    /// The largest packet the client takes (MQTT 5 Maximum Packet Size).
    client_max_packet: Option<u32>,
    /// The client wants no Reason String or User Property on packets other
    /// than PUBLISH, CONNACK and DISCONNECT (Request Problem Information 0).
    no_problem_info: bool,
    /// The cluster's retained limit, from this node's configuration at
    /// CONNECT; committed with every retained message.
    retained_limit: Option<crate::state::RetainedLimit>,
    /// `mqtt.drain_will_grace`, from this node's configuration at CONNECT.
    drain_grace: u32,
    /// QoS 1/2 packet ids from the client not yet answered with PUBACK or
    /// PUBCOMP: at most our Receive Maximum (MQTT 5).
    unanswered: BTreeSet<u16>,
    /// Topic aliases both ways (MQTT 5).
    aliases: Option<Box<Aliases>>,
    /// A Session Expiry Interval the client's DISCONNECT set.
    new_session_expiry: Option<u32>,
    /// PUBLISH packets left in this second's allowance (`max_publish_rate`).
    rate: PublishRate,
    /// An enhanced authentication in progress (MQTT 5 section 4.12).
    auth: Option<Box<inbound::Authenticating>>,
    /// The method the client authenticated with, for re-authentication.
    auth_method: Option<String>,
    /// The user the client proved to be, with a password from the password
    /// file or by enhanced authentication; `None` for an anonymous client.
    username: Option<Arc<str>>,
    /// The window of messages sent to the client; allocated when the first
    /// QoS 1/2 message is (or, for a persistent session, at CONNECT).
    out: Option<Box<Window>>,
    /// Inbound QoS 2 packet ids awaiting PUBREL, for publishers whose session is
    /// clean (persistent publishers keep them in the replicated state).
    inbound_qos2: BTreeSet<u16>,
    /// Queued messages acknowledged since the last flush; committed in one command.
    acked: Vec<u64>,
    /// Bytes for the client.
    transmit: BytesMut,
    actions: VecDeque<Action>,
    end: Option<End>,
}

impl Session {
    pub fn new(conn: ConnId, peer: SocketAddr) -> Session {
        Session {
            peer,
            conn,
            version: None,
            connacked: false,
            heard: false,
            client_id: None,
            persistent: false,
            keep_alive: None,
            session_expiry: 0,
            client_receive_maximum: u16::MAX,
            client_max_packet: None,
            no_problem_info: false,
            retained_limit: None,
            drain_grace: 0,
            unanswered: BTreeSet::new(),
            aliases: None,
            new_session_expiry: None,
            rate: PublishRate::default(),
            auth: None,
            auth_method: None,
            username: None,
            out: None,
            inbound_qos2: BTreeSet::new(),
            acked: Vec::new(),
            transmit: BytesMut::new(),
            actions: VecDeque::new(),
            end: None,
        }
    }

    /// Why the connection ends, once it must.
    /// QoS 1/2 messages sent to the client and not yet acknowledged.
    pub fn inflight(&self) -> usize {
        self.out.as_ref().map_or(0, |out| out.inflight())
    }

    pub fn end(&self) -> Option<End> {
        self.end
    }

    /// The connection this session runs on.
    pub fn conn(&self) -> ConnId {
        self.conn
    }

    pub fn client_id(&self) -> Option<&Arc<str>> {
        self.client_id.as_ref()
    }

    /// Names the user after the client's TLS certificate, before CONNECT
    /// (`[tls] use_identity_as_username`): the handshake authenticated it, so
    /// CONNECT's username and password are not looked at.
    pub(crate) fn set_identity(&mut self, identity: Arc<str>) {
        self.username = Some(identity);
    }

    /// Whether the session takes messages from its mailbox now: not before
    /// CONNACK, not once ending, and not while its backlog is full (which makes
    /// publishers to it wait).
    pub fn wants_mail(&self) -> bool {
        self.connacked && self.end.is_none() && self.out.as_ref().is_none_or(|out| out.can_park())
    }

    /// The next thing the connection task must do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The bytes waiting for the client.
    pub fn transmit(&self) -> &[u8] {
        &self.transmit
    }

    /// Marks the transmit buffer written.
    pub fn transmitted(&mut self) {
        if self.transmit.capacity() > KEEP_TRANSMIT_CAPACITY {
            self.transmit = BytesMut::new();
        } else {
            self.transmit.clear();
        }
        if self.actions.is_empty() && self.actions.capacity() > 0 {
            // Idle sessions hold no action buffer.
            self.actions = VecDeque::new();
        }
    }

    /// Decodes and handles every complete packet in `input`. Returns how many
    /// packets were handled.
    pub fn input(&mut self, input: &mut BytesMut, view: &impl View) -> usize {
        self.heard |= !input.is_empty();
        let mut handled = 0;
        while self.end.is_none() {
            match mqtt::decode(input, view.config().max_packet_size, self.version) {
                Ok(Some(packet)) => {
                    handled += 1;
                    self.packet(packet, view);
                }
                Ok(None) => break,
                Err(e) => {
                    self.decode_failed(e, view);
                    break;
                }
            }
        }
        if let (true, Some(keep_alive), true) = (handled > 0, self.keep_alive, self.connacked) {
            self.actions.push_back(Action::KeepAlive(keep_alive));
        }
        handled
    }

    /// Handles one event.
    pub fn handle(&mut self, event: Event, view: &impl View) {
        match event {
            Event::Mail(delivery) => self.deliver(delivery, view),
            Event::QueueGrew => {
                if self.connacked {
                    self.fill_window(view);
                }
            }
            Event::Committed { then, reply } => self.committed(then, reply, view),
            Event::Routed { answer, accepted } => {
                if accepted {
                    self.send(&answer);
                } else {
                    self.close_lost(
                        "forward_failed",
                        "another node did not take a message in time; the client resends it",
                        ReasonCode::ServerBusy,
                        view,
                    );
                }
            }
            Event::Stop(why) => self.stop(why, view),
            Event::WriteStalled(after) => self.close_lost(
                "slow_subscriber",
                &format!("the client read nothing for {after:?}"),
                ReasonCode::QuotaExceeded,
                view,
            ),
            Event::SocketClosed => {
                tracing::debug!("connection closed by the client");
                self.end.get_or_insert(End::Lost);
            }
        }
    }

    /// Turns the acknowledgements gathered since the last flush into one
    /// [`Action::Commit`]: called once per round of events.
    pub fn flush(&mut self) {
        if let Some(acks) = self.take_acks() {
            self.actions.push_back(Action::Commit(acks));
        }
    }

    /// What the ending connection must still commit; `now` is the wall
    /// clock (ms since the epoch), when the connection ended.
    pub fn closing(&mut self, now: u64) -> Closing {
        let end = self.end.unwrap_or(End::Lost);
        let acks = self.take_acks();
        let disconnect = match (&self.client_id, end) {
            (_, End::TakenOver) | (None, _) => None,
            (Some(client_id), _) => Some(Command::Disconnect {
                client_id: client_id.clone(),
                conn: self.conn,
                publish_will: matches!(end, End::Lost | End::GracefulWithWill | End::Drained),
                sent_below: self
                    .out
                    .as_ref()
                    .filter(|_| self.persistent && self.connacked)
                    .map(|out| out.next_seq),
                session_expiry: self.new_session_expiry,
                at: now,
                will_grace: if end == End::Drained {
                    self.drain_grace
                } else {
                    0
                },
            }),
        };
        let redeliver = self
            .out
            .as_mut()
            .map(|out| out.take_shared())
            .unwrap_or_default();
        Closing {
            redeliver,
            acks,
            disconnect,
        }
    }

    fn committed(&mut self, then: Then, reply: Result<Reply, String>, view: &impl View) {
        let reply = match (then, reply) {
            (
                Then::Subscribed {
                    packet_id, codes, ..
                },
                Err(e),
            ) => {
                log!(
                    self,
                    info,
                    "SUBSCRIBE failed: subscription not committed: {e}"
                );
                let codes = vec![ReasonCode::UnspecifiedError; codes.len()];
                self.send(&Packet::SubAck(mqtt::SubAck {
                    packet_id,
                    codes,
                    properties: Default::default(),
                }));
                return;
            }
            (_, Err(e)) => return self.failed(&e),
            (_, Ok(Reply::NotOwner | Reply::Fenced)) => {
                log!(
                    self,
                    info,
                    "session lost to another connection before a commit"
                );
                self.end = Some(End::TakenOver);
                return;
            }
            (then, Ok(reply)) => (then, reply),
        };
        match reply {
            (
                Then::Connected {
                    clean_start,
                    properties,
                },
                Reply::Connected {
                    session_present, ..
                },
            ) => self.connected(session_present && !clean_start, *properties, view),
            (
                Then::Subscribed {
                    packet_id,
                    codes,
                    accepted,
                },
                Reply::Existed(existed),
            ) => {
                self.send(&Packet::SubAck(mqtt::SubAck {
                    packet_id,
                    codes,
                    properties: Default::default(),
                }));
                self.send_retained(&accepted, &existed, view);
            }
            (
                Then::Unsubscribed {
                    packet_id,
                    mut codes,
                },
                Reply::Existed(existed),
            ) => {
                let mut existed = existed.into_iter();
                for code in codes.iter_mut().filter(|c| **c == ReasonCode::Success) {
                    if existed.next() == Some(false) {
                        *code = ReasonCode::NoSubscriptionExisted;
                    }
                }
                self.send(&Packet::UnsubAck(mqtt::UnsubAck {
                    packet_id,
                    codes,
                    properties: Default::default(),
                }));
            }
            (then, Reply::RetainedFull) => {
                // Counted, and logged now and then with the other drops: a
                // flood of retained messages would log a line each.
                log!(
                    self,
                    debug,
                    "retained PUBLISH refused: the retained messages are at their limit"
                );
                view.metrics().dropped("retained_full");
                if let Then::Answer(mut answer) = then {
                    if let (true, Packet::PubAck(ack) | Packet::PubRec(ack)) =
                        (self.is_v5(), &mut answer)
                    {
                        // 3.1.1 cannot say why: acknowledged, as a denied one.
                        ack.reason = ReasonCode::QuotaExceeded;
                        ack.properties.reason_string =
                            Some("the retained messages are at their limit".into());
                    }
                    self.send(&answer);
                }
            }
            (Then::Answer(answer), _) => self.send(&answer),
            (Then::Released(packet_id), _) => self.released(packet_id),
            (Then::Quiet, _) => {}
            (then, reply) => self.failed(&format!("unexpected reply {reply:?} to {then:?}")),
        }
    }

    /// A proposal failed: this node cannot serve the client now.
    fn failed(&mut self, error: &str) {
        if !self.connacked {
            self.send(&Packet::ConnAck(ConnAck::new(
                false,
                ReasonCode::ServerUnavailable,
            )));
        } else {
            self.send_disconnect(ReasonCode::ServerBusy, "this node cannot commit now");
        }
        log!(self, warn, error, "cannot commit, closing the connection");
        self.end = Some(End::Lost);
    }

    /// Ends the connection as asked by the node.
    fn stop(&mut self, why: Stop, view: &impl View) {
        let (end, reason, text) = match why {
            Stop::TakenOver => {
                // A storm of CONNECTs with one client id would log a line
                // each: counted always, logged now and then.
                if let Some(total) = view.metrics().disconnected_quietly("taken_over") {
                    log!(
                        self,
                        info,
                        total,
                        "session taken over by a new connection (logged at most every 10 s; \
                         starling_client_disconnects_total{{reason=\"taken_over\"}} counts every one)"
                    );
                }
                let text = "another connection took the session over";
                (End::TakenOver, ReasonCode::SessionTakenOver, text)
            }
            Stop::NodeStopping => {
                tracing::debug!("node draining");
                let text = "this node is shutting down: connect to another";
                (End::Drained, ReasonCode::ServerShuttingDown, text)
            }
            Stop::CutOff => {
                log!(
                    self,
                    info,
                    "closing: this node is cut off from the cluster; the client moves on"
                );
                let text = "this node is cut off from the cluster: connect to another";
                (End::TakenOver, ReasonCode::UseAnotherServer, text)
            }
            Stop::SlowSubscriber => {
                log!(
                    self,
                    info,
                    "disconnecting a subscriber that reads too slowly: its mailbox stayed full"
                );
                view.metrics().disconnected("slow_subscriber");
                let text = "the client read too slowly: its backlog stayed full";
                (End::Lost, ReasonCode::QuotaExceeded, text)
            }
            Stop::Admin => {
                log!(self, info, "disconnected by an operator");
                view.metrics().disconnected("admin");
                let text = "disconnected by an operator";
                (End::Lost, ReasonCode::AdministrativeAction, text)
            }
            Stop::Expired => {
                let (reason, what) = match (self.version, self.heard) {
                    (Some(_), _) => ("keepalive_timeout", "keepalive expired [MQTT-3.1.2-24]"),
                    (None, false) => ("connect_timeout", "nothing received, no CONNECT in time"),
                    (None, true) => ("slow_connect", "CONNECT begun but not finished in time"),
                };
                // Sockets left open and silent come by the thousand from a
                // flood: counted always, logged now and then.
                if let Some(total) = view.metrics().disconnected_quietly(reason) {
                    log!(
                        self,
                        info,
                        reason,
                        total,
                        "closing: {what} (logged at most every 10 s for each reason; \
                         starling_client_disconnects_total counts every one)"
                    );
                }
                let text = "nothing from the client within its keepalive";
                (End::Lost, ReasonCode::KeepAliveTimeout, text)
            }
        };
        self.send_disconnect(reason, text);
        self.end = Some(end);
    }

    fn decode_failed(&mut self, e: mqtt::DecodeError, view: &impl View) {
        if let (mqtt::DecodeError::UnsupportedProtocolLevel(level), None) = (&e, self.version) {
            match view.metrics().protocol_error("protocol_level") {
                Some(total) => log!(
                    self,
                    info,
                    level,
                    total,
                    "unsupported protocol level [MQTT-3.1.2-2] (logged at most every 10 s; \
                     starling_protocol_errors_total counts every one)"
                ),
                None => log!(self, debug, level, "unsupported protocol level"),
            }
            // Answered as 3.1.1 demands (return code 0x01): MQTT 5 only allows
            // its 0x84 (section 3.1.2.2), and a client of a level we do not
            // know reads neither layout for sure.
            self.version = Some(ProtocolVersion::V3_1_1);
            self.send(&Packet::ConnAck(ConnAck::new(
                false,
                ReasonCode::UnsupportedProtocolVersion,
            )));
            self.end = Some(End::Lost);
            return;
        }
        let reason = match e {
            mqtt::DecodeError::PacketTooLarge { .. } => "too_large",
            _ => "malformed",
        };
        match view.metrics().protocol_error(reason) {
            Some(total) => log!(
                self,
                info,
                error = %e,
                reason,
                total,
                "closing connection: bad packet (logged at most every 10 s for each reason; \
                 starling_protocol_errors_total counts every one)"
            ),
            None => log!(self, debug, error = %e, "closing connection: bad packet"),
        }
        self.send_disconnect(e.reason_code(), &e.to_string());
        self.end = Some(End::Lost);
    }

    /// Encodes `packet` for the client; nothing once the connection is
    /// ending: after a DISCONNECT, nothing more may follow [MQTT-3.14.4-1].
    fn send(&mut self, packet: &Packet) {
        if self.end.is_some() {
            return;
        }
        let version = self.version.unwrap_or(ProtocolVersion::V3_1_1);
        match packet {
            Packet::PubAck(ack) | Packet::PubComp(ack) => {
                self.unanswered.remove(&ack.packet_id);
            }
            Packet::PubRec(ack) if ack.reason.is_error() => {
                self.unanswered.remove(&ack.packet_id);
            }
            _ => {}
        }
        if let Err(e) = mqtt::encode(packet, version, &mut self.transmit) {
            // Only our own packets are encoded here; a failure is a broker bug.
            log!(self, error, error = %e, "cannot encode an outgoing packet");
            self.end = Some(End::Lost);
        }
    }

    /// Tells an MQTT 5 client why the server closes the connection
    /// [MQTT-4.13.2-1]. Older protocols have no server DISCONNECT; nor is one
    /// sent before CONNACK, or twice.
    /// `why` goes with it as its Reason String, unless that would make the
    /// packet larger than the client takes [MQTT-3.14.2-3].
    fn send_disconnect(&mut self, reason: ReasonCode, why: &str) {
        if !(self.connacked
            && self.end.is_none()
            && self.version.is_some_and(ProtocolVersion::is_v5))
        {
            return;
        }
        let mut disconnect = Disconnect::new(reason);
        disconnect.properties.reason_string = Some(why.to_owned());
        let mut packet = Packet::Disconnect(disconnect);
        let len = mqtt::encoded_len(&packet, ProtocolVersion::V5).unwrap_or(usize::MAX);
        if self.client_max_packet.is_some_and(|max| len > max as usize) {
            packet = Packet::Disconnect(Disconnect::new(reason));
        }
        self.send(&packet);
    }

    /// A Protocol Error by the client: DISCONNECT 0x82 (MQTT 5) and close.
    fn violation(&mut self, what: &'static str, view: &impl View) {
        self.violation_with(what, ReasonCode::ProtocolError, view);
    }

    /// Closes the connection for a protocol violation, telling an MQTT 5
    /// client `reason`.
    fn violation_with(&mut self, what: &'static str, reason: ReasonCode, view: &impl View) {
        match view.metrics().protocol_error("violation") {
            Some(total) => log!(
                self,
                info,
                total,
                "closing connection: protocol violation: {what} (logged at most every 10 s; \
                 starling_protocol_errors_total counts every one)"
            ),
            None => log!(
                self,
                debug,
                "closing connection: protocol violation: {what}"
            ),
        }
        self.send_disconnect(reason, what);
        self.end = Some(End::Lost);
    }

    /// Ends the connection as lost (its will is due) for `reason`, counted in
    /// `starling_client_disconnects_total`, with a line saying `why`; an
    /// MQTT 5 client is told `code`.
    fn close_lost(&mut self, reason: &'static str, why: &str, code: ReasonCode, view: &impl View) {
        log!(self, info, reason, "closing the connection: {why}");
        view.metrics().disconnected(reason);
        self.send_disconnect(code, why);
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

    fn propose(&mut self, command: Command, wait: Wait, then: Then) {
        self.actions.push_back(Action::Propose {
            command,
            wait,
            then,
        });
    }
}

//! What a session does with each packet its client sends.

use std::sync::Arc;
use std::time::Duration;

use starling_proto::mqtt::topic::validate_topic_filter;
use starling_proto::mqtt::{
    ConnAck, Connect, ConnectReturnCode, Packet, Publish, QoS, SubAck, SubAckCode, Subscribe,
    Unsubscribe,
};

use super::window::Stage;
use super::{log, Action, End, Session, Then, View, Wait};
use crate::state::{Command, Message, Target};

impl Session {
    pub(super) fn packet(&mut self, packet: Packet, view: &impl View) {
        if self.version.is_none() {
            match packet {
                Packet::Connect(connect) => self.connect(connect, view),
                _ => self.violation("first packet is not CONNECT [MQTT-3.1.0-1]", view),
            }
            return;
        }
        match packet {
            Packet::Connect(_) => self.violation("second CONNECT [MQTT-3.1.0-2]", view),
            Packet::Publish(publish) => self.publish(publish, view),
            Packet::PubAck(id) => self.acknowledged(id, Stage::AwaitAck, view),
            Packet::PubRec(id) => self.received(id),
            Packet::PubRel(id) => self.release(id),
            Packet::PubComp(id) => self.acknowledged(id, Stage::AwaitComp, view),
            Packet::Subscribe(subscribe) => self.subscribe(subscribe, view),
            Packet::Unsubscribe(unsubscribe) => self.unsubscribe(unsubscribe),
            Packet::PingReq => self.send(&Packet::PingResp),
            Packet::Disconnect => {
                tracing::debug!("DISCONNECT received");
                self.end = Some(End::Graceful);
            }
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                self.violation("a packet only a server sends", view)
            }
        }
    }

    fn connect(&mut self, connect: Connect, view: &impl View) {
        self.version = Some(connect.protocol);
        let refuse = |this: &mut Session, code: ConnectReturnCode| {
            this.send(&Packet::ConnAck(ConnAck {
                session_present: false,
                code,
            }));
            this.end = Some(End::Lost);
        };
        if !view.has_quorum() || view.is_fenced() {
            log!(
                self,
                info,
                "refusing CONNECT: this node has no quorum or is rejoining"
            );
            refuse(self, ConnectReturnCode::ServerUnavailable);
            return;
        }
        let client_id: Arc<str> = if connect.client_id.is_empty() {
            if !connect.clean_session {
                log!(
                    self,
                    info,
                    "empty client id with a persistent session [MQTT-3.1.3-8]"
                );
                refuse(self, ConnectReturnCode::IdentifierRejected);
                return;
            }
            Arc::from(format!(
                "auto-{}-{}-{}",
                self.conn.node, self.conn.incarnation, self.conn.local
            ))
        } else {
            Arc::from(connect.client_id.as_str())
        };
        tracing::Span::current().record("client_id", &*client_id);
        // Until CONNACK the client gets the connect timeout, not its keepalive
        // [MQTT-3.1.2-24]: one and a half times it.
        self.keep_alive = (connect.keep_alive > 0)
            .then(|| Duration::from_millis(u64::from(connect.keep_alive) * 1500));
        let will = connect.will.map(|w| Message {
            topic: w.topic,
            payload: w.payload,
            qos: w.qos,
            retain: w.retain,
        });
        // The registry routes this client's deliveries here once the Connect is
        // applied (`Effect::Attach`), before anything queued after it wakes it.
        self.client_id = Some(client_id.clone());
        self.persistent = !connect.clean_session;
        let config = view.config();
        let command = Command::Connect {
            client_id,
            conn: self.conn,
            clean_session: connect.clean_session,
            will,
            max_queued_messages: u32::try_from(config.max_queued_messages).unwrap_or(u32::MAX),
            max_queued_bytes: config.max_queued_bytes,
        };
        // Applied here before CONNACK: on a follower the reply is the leader's,
        // and this node may apply the command a moment later. Read before its
        // Connect, the session is the previous connection's: its "sent below"
        // predates the takeover, so messages a connection lost with its node
        // had sent, and a QoS 2 subscriber had PUBREC'd, would go out again
        // without DUP [MQTT-3.3.1-1], reusing packet ids still in use
        // [MQTT-2.3.1-2]; and its queue head can be older than
        // acknowledgements already committed.
        let then = Then::Connected {
            clean_session: connect.clean_session,
        };
        self.propose(command, Wait::Applied, then);
    }

    /// CONNACK for an accepted CONNECT, and the start of sending.
    pub(super) fn connected(&mut self, session_present: bool, view: &impl View) {
        self.send(&Packet::ConnAck(ConnAck {
            session_present,
            code: ConnectReturnCode::Accepted,
        }));
        self.connacked = true;
        if let Some(keep_alive) = self.keep_alive {
            self.actions.push_back(Action::KeepAlive(keep_alive));
        }
        let Some(client_id) = self.client_id.clone() else {
            return;
        };
        if self.persistent {
            // This node has applied the Connect (`Wait::Applied`).
            let head = view.queue_head(&client_id).unwrap_or(0);
            let dup_below = view.sent_below(&client_id);
            let out = self.window(view);
            out.next_seq = head;
            out.dup_below = dup_below;
            self.fill_window(view);
        }
    }

    fn publish(&mut self, publish: Publish, view: &impl View) {
        view.metrics().received(publish.qos);
        if publish.qos > QoS::AtMostOnce && !view.has_quorum() {
            // The majority may already own this client's subscribers and
            // sessions: nothing is acknowledged here. The client sends it
            // again where it reconnects [MQTT-4.4.0-1].
            self.close_lost(
                "no_quorum",
                "a QoS 1/2 PUBLISH on a node without quorum",
                view,
            );
            return;
        }
        let message = Message {
            topic: publish.topic,
            payload: publish.payload,
            qos: publish.qos,
            retain: publish.retain,
        };
        let id = publish.packet_id;
        // Matched once: whether the message must be committed first, and, when
        // it need not, where it goes. A committed message is matched again after
        // the commit, against the state it was committed into.
        let targets = view.targets(&message.topic, message.qos);
        let needs_commit = message.retain || targets.iter().any(|t| t.queued);
        match message.qos {
            QoS::AtMostOnce => {
                let stored = needs_commit.then(|| message.clone());
                self.actions.push_back(Action::Route {
                    message: Message {
                        retain: false,
                        ..message
                    },
                    targets,
                });
                if let (Some(message), Some(from)) = (stored, self.owner()) {
                    // QoS 0 never waits on Raft: the message went out above; the
                    // retained copy is stored behind it, in order with this
                    // publisher's other proposals.
                    let command = Command::Publish {
                        message,
                        from,
                        qos2_packet_id: None,
                        deliver: false,
                    };
                    self.propose(command, Wait::Committed, Then::Quiet);
                }
            }
            QoS::AtLeastOnce => {
                self.publish_then_answer(message, targets, needs_commit, Packet::PubAck(id));
            }
            QoS::ExactlyOnce if self.persistent => {
                // The packet id awaiting PUBREL must survive a crash.
                self.commit_publish(message, Some(id), Packet::PubRec(id));
            }
            QoS::ExactlyOnce => {
                if !self.inbound_qos2.insert(id) {
                    // A resend before PUBREL: already published once [MQTT-4.3.3-2].
                    self.send(&Packet::PubRec(id));
                } else {
                    self.publish_then_answer(message, targets, needs_commit, Packet::PubRec(id));
                }
            }
        }
    }

    /// Publishes `message` and answers the publisher with `answer` once it is
    /// safe: after the commit when `needs_commit` (retained, or reaching a
    /// persistent session), else once every node with subscribers accepted it.
    fn publish_then_answer(
        &mut self,
        message: Message,
        targets: Vec<Target>,
        needs_commit: bool,
        answer: Packet,
    ) {
        if needs_commit {
            self.commit_publish(message, None, answer);
        } else {
            let message = Message {
                retain: false,
                ..message
            };
            self.actions.push_back(Action::RouteThenAnswer {
                message,
                targets,
                answer,
            });
        }
    }

    /// Commits `message` (with the inbound QoS 2 packet id of a persistent
    /// publisher, if any), then answers `answer`. Every node delivers the
    /// committed message to its own direct subscribers when it applies it
    /// (`deliver`); a retained one is answered only once every node it reaches
    /// serves it.
    fn commit_publish(&mut self, message: Message, qos2_packet_id: Option<u16>, answer: Packet) {
        let wait = if message.retain {
            Wait::Synced
        } else {
            Wait::Committed
        };
        let Some(from) = self.owner() else {
            return;
        };
        let command = Command::Publish {
            message,
            from,
            qos2_packet_id,
            deliver: true,
        };
        self.propose(command, wait, Then::Answer(answer));
    }

    fn release(&mut self, id: u16) {
        if self.persistent {
            let Some(from) = self.owner() else {
                return;
            };
            let command = Command::Release {
                from,
                packet_id: id,
            };
            self.propose(command, Wait::Committed, Then::Answer(Packet::PubComp(id)));
        } else {
            self.inbound_qos2.remove(&id);
            self.send(&Packet::PubComp(id));
        }
    }

    fn subscribe(&mut self, subscribe: Subscribe, view: &impl View) {
        let Some(client_id) = self.client_id.clone() else {
            return;
        };
        let mut codes = Vec::with_capacity(subscribe.filters.len());
        let mut accepted = Vec::new();
        for (filter, qos) in subscribe.filters {
            if validate_topic_filter(&filter).is_ok() {
                codes.push(SubAckCode::Granted(qos));
                accepted.push((filter, qos));
            } else {
                tracing::debug!(%filter, "invalid topic filter refused");
                codes.push(SubAckCode::Failure);
            }
        }
        let packet_id = subscribe.packet_id;
        if accepted.is_empty() {
            self.send(&Packet::SubAck(SubAck { packet_id, codes }));
            return;
        }
        if !view.has_quorum() {
            // Without a quorum nothing can be committed: every filter fails, and
            // the connection stays (it is closed once the node is cut off for
            // `node_down_after`, so that the client moves to the majority).
            log!(self, info, "SUBSCRIBE failed: this node has no quorum");
            let codes = vec![SubAckCode::Failure; codes.len()];
            self.send(&Packet::SubAck(SubAck { packet_id, codes }));
            return;
        }
        let command = Command::Subscribe {
            client_id,
            conn: self.conn,
            filters: accepted.clone(),
        };
        let then = Then::Subscribed {
            packet_id,
            codes,
            accepted,
        };
        self.propose(command, Wait::Synced, then);
    }

    fn unsubscribe(&mut self, unsubscribe: Unsubscribe) {
        let Some(client_id) = self.client_id.clone() else {
            return;
        };
        let packet_id = unsubscribe.packet_id;
        let command = Command::Unsubscribe {
            client_id,
            conn: self.conn,
            filters: unsubscribe.filters,
        };
        self.propose(
            command,
            Wait::Committed,
            Then::Answer(Packet::UnsubAck(packet_id)),
        );
    }
}

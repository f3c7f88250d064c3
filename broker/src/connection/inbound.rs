//! What a connection does with each packet its client sends.

use std::sync::Arc;
use std::time::Duration;

use starling_proto::mqtt::topic::validate_topic_filter;
use starling_proto::mqtt::{
    ConnAck, Connect, ConnectReturnCode, Packet, Publish, QoS, SubAck, SubAckCode, Subscribe,
    Unsubscribe,
};
use tokio::time::Instant;

use super::log;
use super::outbound::{Outbound, Stage};
use super::{Completion, Connection, End};
use crate::state::{Command, Message, Reply, Target};

use crate::timeouts;

impl Connection {
    pub(super) fn handle_packet(&mut self, packet: Packet) {
        if self.version.is_none() {
            match packet {
                Packet::Connect(connect) => self.connect(connect),
                _ => self.violation("first packet is not CONNECT [MQTT-3.1.0-1]"),
            }
            return;
        }
        match packet {
            Packet::Connect(_) => self.violation("second CONNECT [MQTT-3.1.0-2]"),
            Packet::Publish(publish) => self.publish(publish),
            Packet::PubAck(id) => self.acknowledged(id, Stage::AwaitAck),
            Packet::PubRec(id) => self.received(id),
            Packet::PubRel(id) => self.release(id),
            Packet::PubComp(id) => self.acknowledged(id, Stage::AwaitComp),
            Packet::Subscribe(subscribe) => self.subscribe(subscribe),
            Packet::Unsubscribe(unsubscribe) => self.unsubscribe(unsubscribe),
            Packet::PingReq => self.send(&Packet::PingResp),
            Packet::Disconnect => {
                tracing::debug!("DISCONNECT received");
                self.end = Some(End::Graceful);
            }
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                self.violation("a packet only a server sends")
            }
        }
    }

    fn connect(&mut self, connect: Connect) {
        let version = connect.protocol;
        self.version = Some(version);
        let refuse = |this: &mut Connection, code: ConnectReturnCode| {
            this.send(&Packet::ConnAck(ConnAck {
                session_present: false,
                code,
            }));
            this.end = Some(End::Lost);
        };
        if !self.shared.node.quorum_hint() || self.shared.registry.is_fenced() {
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
        self.keep_alive = (connect.keep_alive > 0)
            .then(|| Duration::from_millis(u64::from(connect.keep_alive) * 1500));
        // Until CONNACK the client gets the connect timeout, not its keepalive.
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
        let clean_session = connect.clean_session;
        let command = Command::Connect {
            client_id,
            conn: self.conn,
            clean_session,
            will,
            max_queued_messages: u32::try_from(self.shared.config.max_queued_messages)
                .unwrap_or(u32::MAX),
            max_queued_bytes: self.shared.config.max_queued_bytes,
        };
        self.propose_then_read(command, move |reply| match reply {
            Reply::Connected {
                session_present, ..
            } => Completion::Connected {
                session_present: session_present && !clean_session,
            },
            other => Completion::Failed(format!("unexpected reply to Connect: {other:?}")),
        });
    }

    /// Like [`Connection::propose`], but completes only once this node has
    /// applied the command too, for a completion that reads the replicated state.
    ///
    /// On a follower the reply is the leader's, and this node may apply the
    /// command a moment later. Read before its Connect, the session is the
    /// previous connection's: its "sent below" predates the takeover, so
    /// messages a connection lost with its node had sent, and a QoS 2
    /// subscriber had PUBREC'd, went out again without DUP [MQTT-3.3.1-1], as
    /// new messages reusing packet ids still in use [MQTT-2.3.1-2]; and its
    /// queue head can be older than acknowledgements already committed.
    fn propose_then_read(
        &mut self,
        command: Command,
        then: impl FnOnce(Reply) -> Completion + Send + 'static,
    ) {
        let shared = self.shared.clone();
        // `unconstrained` for the same reason as in `propose_with`: proposals
        // reach the proposer in the order the client sent its packets.
        self.completions
            .push_back(Box::pin(tokio::task::unconstrained(async move {
                let (applied, reply) = match shared.propose_counted(command).await {
                    Ok(done) => done,
                    Err(e) => return Completion::Failed(e.to_string()),
                };
                if !shared
                    .machine
                    .applied_reached(applied, timeouts::APPLY)
                    .await
                {
                    return Completion::Failed(format!(
                        "this node did not apply its own command within {:?}",
                        timeouts::APPLY
                    ));
                }
                then(reply)
            })));
    }

    /// Called once CONNACK has been sent for an accepted CONNECT.
    pub(super) fn connected(&mut self) {
        let deadline = self
            .keep_alive
            .map(|keep_alive| Instant::now() + keep_alive);
        self.shared.registry.set_deadline(&self.mailbox, deadline);
        let Some(client_id) = self.client_id.clone() else {
            return;
        };
        if self.persistent {
            // This node has applied the Connect (`propose_then_read`).
            let head = self.shared.machine.queue_head(&client_id).unwrap_or(0);
            let dup_below = self.shared.machine.sent_below(&client_id);
            let out = self.out();
            out.next_seq = head;
            out.dup_below = dup_below;
            self.fill_window();
        }
    }

    fn publish(&mut self, publish: Publish) {
        self.shared.metrics.received(publish.qos);
        if publish.qos > QoS::AtMostOnce && !self.shared.node.quorum_hint() {
            // The majority may already own this client's subscribers and
            // sessions: nothing is acknowledged here. The client sends it
            // again where it reconnects [MQTT-4.4.0-1].
            self.close_lost("no_quorum", "a QoS 1/2 PUBLISH on a node without quorum");
            return;
        }
        let message = Message {
            topic: publish.topic,
            payload: publish.payload,
            qos: publish.qos,
            retain: publish.retain,
        };
        let forwarded = Message {
            retain: false,
            ..message.clone()
        };
        let id = publish.packet_id;
        // Matched once: whether the message must be committed first, and, when
        // it need not, where it goes. A committed message is matched again after
        // the commit, against the state it was committed into.
        let targets = self.shared.machine.targets(&message.topic, message.qos);
        let needs_commit = message.retain || targets.iter().any(|t| t.queued);
        match message.qos {
            QoS::AtMostOnce => {
                self.shared.route_detached_to(&forwarded, targets);
                if let (true, Some(from)) = (needs_commit, self.owner()) {
                    // QoS 0 never waits on Raft: the message went out above; the
                    // retained copy is stored behind it, in order with this
                    // publisher's other proposals.
                    let command = Command::Publish {
                        message,
                        from,
                        qos2_packet_id: None,
                        deliver: false,
                    };
                    self.propose(command, |_| Completion::Quiet);
                }
            }
            QoS::AtLeastOnce => {
                self.publish_then_answer(
                    message,
                    forwarded,
                    targets,
                    needs_commit,
                    Packet::PubAck(id),
                );
            }
            QoS::ExactlyOnce if self.persistent => {
                // The packet id awaiting PUBREL must survive a crash.
                let synced = message.retain;
                let Some(from) = self.owner() else {
                    return;
                };
                let command = Command::Publish {
                    message,
                    from,
                    qos2_packet_id: Some(id),
                    deliver: true,
                };
                self.propose_with(command, synced, move |reply| {
                    answer_unless_stale(reply, Packet::PubRec(id))
                });
            }
            QoS::ExactlyOnce => {
                if !self.inbound_qos2.insert(id) {
                    // A resend before PUBREL: already published once [MQTT-4.3.3-2].
                    self.send(&Packet::PubRec(id));
                } else {
                    self.publish_then_answer(
                        message,
                        forwarded,
                        targets,
                        needs_commit,
                        Packet::PubRec(id),
                    );
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
        forwarded: Message,
        targets: Vec<Target>,
        needs_commit: bool,
        answer: Packet,
    ) {
        if needs_commit {
            // A retained message is served by every node once acknowledged.
            let synced = message.retain;
            let Some(from) = self.owner() else {
                return;
            };
            // Every node delivers the committed message to its own direct
            // subscribers when it applies it (`deliver`).
            let command = Command::Publish {
                message,
                from,
                qos2_packet_id: None,
                deliver: true,
            };
            self.propose_with(command, synced, move |reply| {
                answer_unless_stale(reply, answer)
            });
        } else {
            self.route_then_answer(&forwarded, targets, answer);
        }
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
            self.propose(command, move |reply| {
                answer_unless_stale(reply, Packet::PubComp(id))
            });
        } else {
            self.inbound_qos2.remove(&id);
            self.send(&Packet::PubComp(id));
        }
    }

    /// PUBACK (expecting `AwaitAck`) or PUBCOMP (expecting `AwaitComp`).
    fn acknowledged(&mut self, id: u16, expected: Stage) {
        // A window that was never allocated has nothing in flight.
        let Some(out) = self.out.as_deref_mut() else {
            tracing::debug!(packet_id = id, "acknowledgement of nothing in flight");
            return;
        };
        if Outbound::is_queue_id(id) {
            match out.queued.get(&id) {
                Some(&(seq, stage)) if stage == expected => {
                    out.queued.remove(&id);
                    self.acked.push(seq);
                }
                _ => tracing::debug!(packet_id = id, "acknowledgement of nothing in flight"),
            }
        } else if out.direct.get(&id) == Some(&expected) {
            out.direct.remove(&id);
        } else {
            tracing::debug!(packet_id = id, "acknowledgement of nothing in flight");
        }
        self.fill_window();
    }

    fn received(&mut self, id: u16) {
        // A window that was never allocated has nothing in flight.
        let Some(out) = self.out.as_deref_mut() else {
            return;
        };
        if Outbound::is_queue_id(id) {
            let Some(&(seq, Stage::AwaitRec)) = out.queued.get(&id) else {
                return;
            };
            out.queued.insert(id, (seq, Stage::Releasing));
            let Some(from) = self.owner() else {
                return;
            };
            // PUBREL only once the PUBREC is committed: a node resuming this
            // session must not send the PUBLISH again after the client forgot it.
            self.propose(Command::Received { from, seq }, move |reply| match reply {
                Reply::NotOwner => Completion::Stale,
                _ => Completion::Released(id),
            });
        } else if let Some(stage) = out.direct.get_mut(&id) {
            if *stage == Stage::AwaitRec {
                *stage = Stage::AwaitComp;
                self.send(&Packet::PubRel(id));
            }
        }
    }

    fn subscribe(&mut self, subscribe: Subscribe) {
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
        // Without a quorum nothing can be committed: every filter fails, and
        // the connection stays (it is closed once the node is cut off for
        // `node_down_after`, so that the client moves to the majority).
        let failed = SubAck {
            packet_id,
            codes: vec![SubAckCode::Failure; codes.len()],
        };
        if !self.shared.node.quorum_hint() {
            log!(self, info, "SUBSCRIBE failed: this node has no quorum");
            self.send(&Packet::SubAck(failed));
            return;
        }
        let command = Command::Subscribe {
            client_id,
            conn: self.conn,
            filters: accepted.clone(),
        };
        self.propose_or_else(command, true, move |reply| match reply {
            Ok(Reply::Done) => Completion::Subscribed {
                answer: Packet::SubAck(SubAck { packet_id, codes }),
                retained: accepted,
            },
            Ok(Reply::NotOwner | Reply::Fenced) => Completion::Stale,
            Ok(other) => Completion::Failed(format!("unexpected reply to Subscribe: {other:?}")),
            Err(e) => Completion::Refused {
                answer: Packet::SubAck(failed),
                why: format!("subscription not committed: {e}"),
            },
        });
    }

    /// Sends the retained messages matching newly accepted subscriptions, with
    /// retain = 1 [MQTT-3.3.1-6].
    pub(super) fn send_retained(&mut self, filters: &[(String, QoS)]) {
        let mut dropped = 0u64;
        for (filter, granted) in filters {
            for message in self.shared.machine.retained_matching(filter) {
                let qos = message.qos.min(*granted);
                // Bounded like any backlog of this client: what does not fit
                // behind the window is dropped and counted.
                if qos > QoS::AtMostOnce && !self.out().can_park() {
                    dropped += 1;
                    continue;
                }
                self.deliver(crate::registry::Delivery { message, qos });
            }
        }
        if dropped > 0 {
            log!(
                self,
                info,
                dropped,
                "retained messages over this client's backlog bound dropped"
            );
            self.shared
                .metrics
                .dropped_many("retained_backlog", dropped);
        }
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
        self.propose(command, move |reply| {
            answer_unless_stale(reply, Packet::UnsubAck(packet_id))
        });
    }
}

/// `answer` once a session mutation committed; nothing, and the end of the
/// connection, if the connection had lost its session by the time it did.
fn answer_unless_stale(reply: Reply, answer: Packet) -> Completion {
    match reply {
        Reply::NotOwner | Reply::Fenced => Completion::Stale,
        _ => Completion::Answer(answer),
    }
}

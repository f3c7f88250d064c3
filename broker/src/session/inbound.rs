//! What a session does with each packet its client sends.

use std::sync::Arc;
use std::time::Duration;

use starling_proto::mqtt::topic::{shared_subscription, validate_topic_filter};
use starling_proto::mqtt::{
    Ack, ConnAck, Connect, Disconnect, Packet, Properties, Publish, QoS, ReasonCode, SubAck,
    Subscribe, UnsubAck, Unsubscribe,
};

use super::aliases::Aliases;
use super::window::Stage;
use super::{log, Action, End, Session, Then, View, Wait};
use crate::auth::{Exchange, Step, Verdict};
use crate::config::MqttConfig;
use crate::state::{
    Arrival, Command, ConnInfo, Message, MessageProps, RetainedLimit, Subscription, Target, Via,
};

/// The prefix of shared subscriptions' filters (MQTT 5 section 4.8.2).
const SHARED_PREFIX: &str = "$share/";

/// Whether `topic` is in the tree the server publishes (`$SYS/...`), where
/// clients may not publish.
fn is_sys_topic(topic: &str) -> bool {
    topic == "$SYS" || topic.starts_with("$SYS/")
}

/// An enhanced authentication under way: its method, its exchange, and the
/// CONNECT it is for (none when the client re-authenticates).
pub(crate) struct Authenticating {
    method: String,
    exchange: Box<dyn Exchange>,
    connect: Option<Connect>,
}

impl Session {
    pub(super) fn packet(&mut self, packet: Packet, view: &impl View) {
        if self.version.is_none() {
            match packet {
                Packet::Connect(connect) => self.connect(connect, view),
                _ => self.violation("first packet is not CONNECT [MQTT-3.1.0-1]", view),
            }
            return;
        }
        if self.auth.as_ref().is_some_and(|a| a.connect.is_some())
            && !matches!(packet, Packet::Auth(_) | Packet::Disconnect(_))
        {
            return self.violation(
                "a packet other than AUTH during authentication [MQTT-4.12.0-4]",
                view,
            );
        }
        match packet {
            Packet::Connect(_) => self.violation("second CONNECT [MQTT-3.1.0-2]", view),
            Packet::Publish(publish) => self.publish(publish, view),
            Packet::PubAck(ack) => self.acknowledged(ack.packet_id, Stage::AwaitAck, view),
            // A failure in PUBREC ends the exchange there (MQTT 5 section 4.3.3).
            Packet::PubRec(ack) if ack.reason.is_error() => {
                self.acknowledged(ack.packet_id, Stage::AwaitRec, view)
            }
            Packet::PubRec(ack) => self.received(ack.packet_id),
            Packet::PubRel(ack) => self.release(ack.packet_id),
            Packet::PubComp(ack) => self.acknowledged(ack.packet_id, Stage::AwaitComp, view),
            Packet::Subscribe(subscribe) => self.subscribe(subscribe, view),
            Packet::Unsubscribe(unsubscribe) => self.unsubscribe(unsubscribe),
            Packet::PingReq => self.send(&Packet::PingResp),
            Packet::Disconnect(disconnect) => self.disconnect(disconnect, view),
            Packet::Auth(auth) => self.auth(auth, view),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                self.violation("a packet only a server sends", view)
            }
        }
    }

    pub(super) fn is_v5(&self) -> bool {
        self.version.is_some_and(|v| v.is_v5())
    }

    fn connect(&mut self, connect: Connect, view: &impl View) {
        self.version = Some(connect.protocol);
        let refuse = |this: &mut Session, code: ReasonCode| {
            this.send(&Packet::ConnAck(ConnAck::new(false, code)));
            this.end = Some(End::Lost);
        };
        if !view.has_quorum() || view.is_fenced() {
            log!(
                self,
                info,
                "refusing CONNECT: this node has no quorum or is rejoining"
            );
            refuse(self, ReasonCode::ServerUnavailable);
            return;
        }
        if let Some(method) = connect.properties.authentication_method.clone() {
            let Some(authenticator) = view.authenticator(&method) else {
                log!(self, info, %method, "refusing CONNECT: unknown authentication method");
                refuse(self, ReasonCode::BadAuthenticationMethod);
                return;
            };
            let exchange = authenticator.start(&connect.client_id);
            let data = connect.properties.authentication_data.clone();
            self.auth = Some(Box::new(Authenticating {
                method,
                exchange,
                connect: Some(connect),
            }));
            return self.auth_step(data.as_deref(), view);
        }
        if connect.properties.authentication_data.is_some() {
            return refuse(self, ReasonCode::ProtocolError);
        }
        self.accept(connect, Properties::default(), view);
    }

    /// AUTH from the client: the next step of an exchange under way, or the
    /// start of a re-authentication (0x19) with the method it connected with.
    fn auth(&mut self, auth: starling_proto::mqtt::Auth, view: &impl View) {
        let method = auth.properties.authentication_method.as_deref();
        let expected = match (&self.auth, auth.reason) {
            (Some(a), ReasonCode::ContinueAuthentication) => Some(a.method.as_str()),
            (None, ReasonCode::ReAuthenticate) if self.connacked => self.auth_method.as_deref(),
            _ => None,
        };
        if expected.is_none() || method != expected {
            return self.violation(
                "AUTH out of turn, or with another method [MQTT-4.12.0-2] [MQTT-4.12.1-1]",
                view,
            );
        }
        if self.auth.is_none() {
            let Some(authenticator) = method.and_then(|m| view.authenticator(m)) else {
                return self.violation("re-authentication with a method no longer offered", view);
            };
            let exchange = authenticator.start(self.client_id.as_deref().unwrap_or(""));
            self.auth = Some(Box::new(Authenticating {
                method: method.unwrap_or_default().to_owned(),
                exchange,
                connect: None,
            }));
        }
        self.auth_step(auth.properties.authentication_data.as_deref(), view);
    }

    /// Feeds `data` to the exchange under way and answers what it says.
    fn auth_step(&mut self, data: Option<&[u8]>, view: &impl View) {
        let Some(mut auth) = self.auth.take() else {
            return;
        };
        let properties = |data: Option<Vec<u8>>, method: &str| Properties {
            authentication_method: Some(method.to_owned()),
            authentication_data: data.map(bytes::Bytes::from),
            ..Properties::default()
        };
        match auth.exchange.step(data) {
            Step::Continue(data) => {
                let properties = properties(Some(data), &auth.method);
                self.send(&Packet::Auth(starling_proto::mqtt::Auth {
                    reason: ReasonCode::ContinueAuthentication,
                    properties: properties.into(),
                }));
                self.auth = Some(auth);
            }
            Step::Success { data, username } => {
                log!(self, info, %username, method = %auth.method, "authenticated");
                let properties = properties(data, &auth.method);
                self.auth_method = Some(auth.method.clone());
                self.username = Some(Arc::from(username));
                match auth.connect.take() {
                    Some(connect) => self.accept(connect, properties, view),
                    None => self.send(&Packet::Auth(starling_proto::mqtt::Auth {
                        reason: ReasonCode::Success,
                        properties: properties.into(),
                    })),
                }
            }
            Step::Failure(failure) => {
                log!(self, info, %failure, "authentication failed");
                view.metrics().disconnected("auth_failed");
                view.metrics().auth_failed("enhanced_auth");
                if self.connacked {
                    self.send_disconnect(failure.code, "re-authentication failed");
                } else {
                    self.send(&Packet::ConnAck(ConnAck::new(false, failure.code)));
                }
                self.end = Some(End::Lost);
            }
        }
    }

    /// Goes on with a CONNECT that passed authentication, if it asked for
    /// any; `properties` start CONNACK's (the last Authentication Data).
    fn accept(&mut self, connect: Connect, mut properties: Properties, view: &impl View) {
        self.retained_limit = Some(retained_limit(view.config()));
        self.drain_grace = u32::try_from(view.config().drain_will_grace).unwrap_or(u32::MAX);
        let v5 = connect.protocol.is_v5();
        let config = view.config();
        let refuse = |this: &mut Session, code: ReasonCode| {
            this.send(&Packet::ConnAck(ConnAck::new(false, code)));
            this.end = Some(End::Lost);
        };
        if let Some(will) = &connect.will {
            let refusal = if will.qos > config.max_qos() {
                Some(ReasonCode::QoSNotSupported)
            } else if will.retain && !config.retain_available {
                Some(ReasonCode::RetainNotSupported)
            } else if !payload_format_valid(&will.properties, &will.payload) {
                Some(ReasonCode::PayloadFormatInvalid)
            } else {
                None
            };
            if let Some(code) = refusal {
                log!(self, info, ?code, "refusing CONNECT: will not acceptable");
                refuse(self, code);
                return;
            }
        }
        if connect.client_id.len() > config.max_client_id_len {
            log!(
                self,
                info,
                len = connect.client_id.len(),
                "refusing CONNECT: client id too long"
            );
            view.metrics().protocol_error("client_id_too_long");
            refuse(self, ReasonCode::ClientIdentifierNotValid);
            return;
        }
        let client_id: Arc<str> = if connect.client_id.is_empty() {
            if !v5 && !connect.clean_session {
                log!(
                    self,
                    info,
                    "empty client id with a persistent session [MQTT-3.1.3-8]"
                );
                refuse(self, ReasonCode::ClientIdentifierNotValid);
                return;
            }
            let assigned: Arc<str> = Arc::from(format!(
                "auto-{}-{}-{}",
                self.conn.node, self.conn.incarnation, self.conn.local
            ));
            if v5 {
                properties.assigned_client_identifier = Some(assigned.to_string());
            }
            assigned
        } else {
            Arc::from(connect.client_id.as_str())
        };
        tracing::Span::current().record("client_id", tracing::field::display(&client_id));
        if !self.authenticate(&connect, &client_id, view) {
            return;
        }
        if let (Some(will), Some(acl)) = (&connect.will, view.acl()) {
            if !acl.check_publish(&client_id, self.username.as_deref(), &will.topic) {
                log!(self, info, topic = %will.topic, "refusing CONNECT: the ACL denies its will");
                view.metrics().auth_failed("will_denied");
                self.send(&Packet::ConnAck(ConnAck::new(
                    false,
                    ReasonCode::NotAuthorized,
                )));
                self.end = Some(End::Lost);
                return;
            }
        }
        let keep_alive = granted_keep_alive(connect.keep_alive, config.max_keepalive, v5);
        if v5 && keep_alive != connect.keep_alive {
            properties.server_keep_alive = Some(keep_alive);
        }
        // Until CONNACK the client gets the connect timeout, not its keepalive
        // [MQTT-3.1.2-24]: one and a half times it.
        self.keep_alive =
            (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500));
        let asked = &connect.properties;
        let session_expiry = if v5 {
            asked.session_expiry_interval.unwrap_or(0)
        } else if connect.clean_session {
            0
        } else {
            config.persistent_expiry()
        };
        self.session_expiry = session_expiry;
        if v5 {
            self.client_receive_maximum = asked.receive_maximum.unwrap_or(u16::MAX);
            self.client_max_packet = asked.maximum_packet_size;
            self.no_problem_info = asked.request_problem_information == Some(0);
            let theirs = asked.topic_alias_maximum.unwrap_or(0);
            if theirs > 0 || config.topic_alias_maximum > 0 {
                self.aliases = Some(Box::new(Aliases::new(config.topic_alias_maximum, theirs)));
            }
            advertise(&mut properties, config);
            if asked.request_response_information == Some(1) {
                properties.response_information = Some(format!("response/{client_id}"));
            }
        }
        let will_delay = connect
            .will
            .as_ref()
            .map_or(0, |w| w.properties.will_delay_interval.unwrap_or(0));
        let will = connect.will.map(|w| {
            let props = message_props(&w.properties);
            Message {
                props,
                ..Message::new(w.topic, w.payload, w.qos, w.retain)
            }
        });
        // The registry routes this client's deliveries here once the Connect is
        // applied (`Effect::Attach`), before anything queued after it wakes it.
        self.client_id = Some(client_id.clone());
        let command = Command::Connect {
            client_id,
            conn: self.conn,
            clean_start: connect.clean_session,
            session_expiry,
            will,
            will_delay,
            max_queued_messages: u32::try_from(config.max_queued_messages).unwrap_or(u32::MAX),
            max_queued_bytes: config.max_queued_bytes,
            info: ConnInfo {
                address: self.peer.to_string(),
                protocol: connect.protocol.level(),
                keep_alive,
                username: self.username.as_deref().map(str::to_owned),
                connected_at: view.now_ms(),
            },
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
            clean_start: connect.clean_session,
            properties: Box::new(properties),
        };
        self.propose(command, Wait::Applied, then);
    }

    /// Checks CONNECT's username and password against the password file,
    /// unless the client authenticated with enhanced authentication. Refuses
    /// the CONNECT (and returns false) for a wrong password or an unknown
    /// user (0x86; 3.1.1: 4), and for a client that did not authenticate
    /// where anonymous clients are not allowed (0x87; 3.1.1: 5).
    fn authenticate(&mut self, connect: &Connect, client_id: &str, view: &impl View) -> bool {
        if self.auth_method.is_some() {
            return true;
        }
        // A user named before CONNECT is the client certificate's (set_identity).
        if let Some(user) = &self.username {
            tracing::debug!(
                peer = %self.peer,
                client_id,
                username = %user,
                "authenticated by its client certificate"
            );
            return true;
        }
        let (reason, code) = match (&connect.username, view.passwords()) {
            (Some(user), Some(passwords)) => {
                let verdict = match &connect.password {
                    Some(password) => passwords.verify(user, password),
                    // Hashed all the same, so that it takes as long; never right.
                    None => match passwords.verify(user, b"") {
                        Verdict::UnknownUser => Verdict::UnknownUser,
                        _ => Verdict::WrongPassword,
                    },
                };
                match verdict {
                    Verdict::Ok => {
                        tracing::debug!(
                            peer = %self.peer,
                            client_id,
                            username = %user,
                            "authenticated with a password"
                        );
                        self.username = Some(Arc::from(user.as_str()));
                        return true;
                    }
                    Verdict::UnknownUser => ("unknown_user", ReasonCode::BadUserNameOrPassword),
                    Verdict::WrongPassword => ("wrong_password", ReasonCode::BadUserNameOrPassword),
                }
            }
            _ if view.allow_anonymous() => return true,
            _ => ("anonymous", ReasonCode::NotAuthorized),
        };
        tracing::info!(
            peer = %self.peer,
            client_id,
            username = connect.username.as_deref().unwrap_or(""),
            reason,
            "refusing CONNECT: not authenticated"
        );
        view.metrics().auth_failed(reason);
        self.send(&Packet::ConnAck(ConnAck::new(false, code)));
        self.end = Some(End::Lost);
        false
    }

    /// CONNACK for an accepted CONNECT, and the start of sending.
    pub(super) fn connected(
        &mut self,
        session_present: bool,
        properties: Properties,
        view: &impl View,
    ) {
        self.send(&Packet::ConnAck(ConnAck {
            session_present,
            code: ReasonCode::Success,
            properties: properties.into(),
        }));
        self.connacked = true;
        // The session outlives the connection, or is one that did.
        self.persistent = session_present || self.session_expiry > 0;
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
        let config = view.config();
        if config.max_publish_rate > 0 && !self.rate.take(config.max_publish_rate, view.now_ms()) {
            view.metrics().disconnected("publish_rate");
            return self.violation_with(
                "more PUBLISH packets per second than max_publish_rate",
                ReasonCode::MessageRateTooHigh,
                view,
            );
        }
        let id = publish.packet_id;
        let v5 = self.is_v5();
        // Past what this server takes: an MQTT 5 client was told in CONNACK
        // and is told why; a 3.1.1 client cannot be, and is disconnected as
        // Mosquitto does.
        if publish.qos > config.max_qos() {
            return self.violation_with(
                "PUBLISH above the Maximum QoS [MQTT-3.2.2-11]",
                ReasonCode::QoSNotSupported,
                view,
            );
        }
        if publish.retain && !config.retain_available {
            return self.violation_with(
                "retained PUBLISH where retain is not available [MQTT-3.2.2-14]",
                ReasonCode::RetainNotSupported,
                view,
            );
        }
        if v5 && publish.qos > QoS::AtMostOnce {
            self.unanswered.insert(id);
            if self.unanswered.len() > usize::from(config.receive_maximum) {
                return self.violation_with(
                    "more QoS 1/2 messages unanswered than Receive Maximum [MQTT-3.3.4-9]",
                    ReasonCode::ReceiveMaximumExceeded,
                    view,
                );
            }
        }
        let topic = match publish.properties.topic_alias {
            Some(alias) => {
                let aliases = self
                    .aliases
                    .get_or_insert_with(|| Box::new(Aliases::new(0, 0)));
                match aliases.resolve(publish.topic, alias) {
                    Ok(topic) => topic,
                    Err(code) => {
                        return self.violation_with(
                            "topic alias not valid [MQTT-3.3.2-8] [MQTT-3.3.2-10]",
                            code,
                            view,
                        )
                    }
                }
            }
            None => publish.topic,
        };
        if publish.qos > QoS::AtMostOnce && !view.has_quorum() {
            // The majority may already own this client's subscribers and
            // sessions: nothing is acknowledged here. The client sends it
            // again where it reconnects [MQTT-4.4.0-1].
            self.close_lost(
                "no_quorum",
                "a QoS 1/2 PUBLISH on a node without quorum",
                ReasonCode::UseAnotherServer,
                view,
            );
            return;
        }
        if v5 {
            let refusal = if !payload_format_valid(&publish.properties, &publish.payload) {
                Some(ReasonCode::PayloadFormatInvalid)
            } else if topic.starts_with(SHARED_PREFIX)
                || is_sys_topic(&topic)
                || !config.topic_within_limits(&topic)
            {
                Some(ReasonCode::TopicNameInvalid)
            } else {
                None
            };
            if let Some(code) = refusal {
                log!(self, debug, ?code, "PUBLISH refused");
                view.metrics().dropped("refused");
                let why = if code == ReasonCode::PayloadFormatInvalid {
                    "the payload is not the UTF-8 its Payload Format Indicator says"
                } else {
                    "clients may not publish to this topic"
                };
                let mut ack = Ack::with_reason(id, code);
                if !self.no_problem_info {
                    // Reason Strings only to a client that did not refuse
                    // them [MQTT-3.1.2-29].
                    ack.properties.reason_string = Some(why.to_owned());
                }
                match publish.qos {
                    QoS::AtMostOnce => self.violation_with(why, code, view),
                    QoS::AtLeastOnce => self.send(&Packet::PubAck(ack)),
                    QoS::ExactlyOnce => self.send(&Packet::PubRec(ack)),
                }
                return;
            }
        }
        if !v5 && is_sys_topic(&topic) {
            // Only the server publishes there. 3.1.1 cannot say why: dropped
            // and acknowledged, as a denied one.
            log!(self, debug, %topic, "PUBLISH to a $SYS topic dropped");
            view.metrics().dropped("refused");
            self.acknowledge_dropped(publish.qos, id);
            return;
        }
        if !v5 && !config.topic_within_limits(&topic) {
            // 3.1.1 cannot say why: dropped and acknowledged, as a denied one.
            log!(self, debug, %topic, "PUBLISH over the topic limits dropped");
            view.metrics().dropped("topic_limits");
            self.acknowledge_dropped(publish.qos, id);
            return;
        }
        if !self.acl_allows_publish(&topic, view) {
            log!(self, debug, %topic, "PUBLISH denied by the ACL");
            view.metrics().dropped("acl_denied");
            // MQTT 5 says why; 3.1.1 has no way to, and the message is
            // acknowledged as if delivered, as Mosquitto does.
            let reason = if v5 {
                ReasonCode::NotAuthorized
            } else {
                ReasonCode::Success
            };
            match publish.qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => self.send(&Packet::PubAck(Ack::with_reason(id, reason))),
                QoS::ExactlyOnce => {
                    if !reason.is_error() {
                        // Its PUBREL is answered like any other's.
                        self.inbound_qos2.insert(id);
                    }
                    self.send(&Packet::PubRec(Ack::with_reason(id, reason)));
                }
            }
            return;
        }
        let expires_at = publish
            .properties
            .message_expiry_interval
            .map(|secs| view.now_ms().saturating_add(u64::from(secs) * 1000));
        let message = Message {
            props: message_props(&publish.properties),
            expires_at,
            arrival: Arrival::now(Via::Local),
            ..Message::new(topic, publish.payload, publish.qos, publish.retain)
        };
        // Matched once: whether the message must be committed first, and, when
        // it need not, where it goes. A committed message is matched again after
        // the commit, against the state it was committed into.
        let targets = view.targets(&message.topic, message.qos, self.client_id.as_deref());
        let needs_commit = message.retain || targets.iter().any(|t| t.queued);
        // MQTT 5 may tell the publisher that nobody took it (section 3.4.2.1).
        let reason = if v5 && targets.is_empty() && !message.retain {
            ReasonCode::NoMatchingSubscribers
        } else {
            ReasonCode::Success
        };
        match message.qos {
            QoS::AtMostOnce => {
                let stored = needs_commit.then(|| message.clone());
                self.actions.push_back(Action::Route { message, targets });
                if let (Some(message), Some(from)) = (stored, self.owner()) {
                    // QoS 0 never waits on Raft: the message went out above; the
                    // retained copy is stored behind it, in order with this
                    // publisher's other proposals.
                    let command = Command::Publish {
                        retained_limit: self.retained_limit.filter(|_| message.retain),
                        message,
                        from,
                        qos2_packet_id: None,
                        deliver: false,
                    };
                    self.propose(command, Wait::Committed, Then::Quiet);
                }
            }
            QoS::AtLeastOnce => {
                let answer = Packet::PubAck(Ack::with_reason(id, reason));
                self.publish_then_answer(message, targets, needs_commit, answer);
            }
            QoS::ExactlyOnce if self.persistent => {
                // The packet id awaiting PUBREL must survive a crash.
                let answer = Packet::PubRec(Ack::with_reason(id, reason));
                self.commit_publish(message, Some(id), answer);
            }
            QoS::ExactlyOnce => {
                if !self.inbound_qos2.insert(id) {
                    // A resend before PUBREL: already published once [MQTT-4.3.3-2].
                    self.send(&Packet::PubRec(Ack::new(id)));
                } else {
                    let answer = Packet::PubRec(Ack::with_reason(id, reason));
                    self.publish_then_answer(message, targets, needs_commit, answer);
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
            retained_limit: self.retained_limit.filter(|_| message.retain),
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
            let answer = Packet::PubComp(Ack::new(id));
            self.propose(command, Wait::Committed, Then::Answer(answer));
        } else {
            let reason = if self.inbound_qos2.remove(&id) {
                ReasonCode::Success
            } else {
                ReasonCode::PacketIdentifierNotFound
            };
            self.send(&Packet::PubComp(Ack::with_reason(id, reason)));
        }
    }

    fn subscribe(&mut self, subscribe: Subscribe, view: &impl View) {
        let Some(client_id) = self.client_id.clone() else {
            return;
        };
        let config = view.config();
        let id = subscribe
            .properties
            .subscription_identifiers
            .first()
            .copied();
        let mut codes = Vec::with_capacity(subscribe.filters.len());
        let mut accepted = Vec::new();
        let held = if config.max_subscriptions > 0 {
            view.subscription_count(&client_id)
        } else {
            0
        };
        for (filter, mut options) in subscribe.filters {
            let shared = shared_subscription(&filter);
            if matches!(shared, Some(Ok(_))) && options.no_local {
                return self.violation("No Local on a shared subscription [MQTT-3.8.3-4]", view);
            }
            let code = if validate_topic_filter(&filter).is_err() || matches!(shared, Some(Err(_)))
            {
                tracing::debug!(%filter, "invalid topic filter refused");
                view.metrics().subscription_refused("invalid_filter");
                ReasonCode::TopicFilterInvalid
            } else if !config.topic_within_limits(&filter) {
                tracing::debug!(%filter, "topic filter over the topic limits refused");
                view.metrics().subscription_refused("topic_limits");
                ReasonCode::TopicFilterInvalid
            } else if shared.is_some() && !config.shared_subscriptions {
                view.metrics().subscription_refused("shared_unsupported");
                ReasonCode::SharedSubscriptionsNotSupported
            } else if !self.acl_allows_subscribe(&filter, view) {
                log!(self, debug, %filter, "SUBSCRIBE denied by the ACL");
                view.metrics().subscription_refused("not_authorized");
                ReasonCode::NotAuthorized
            } else if config.max_subscriptions > 0
                && held + accepted.len() >= config.max_subscriptions
                && !view.has_subscription(&client_id, &filter)
            {
                log!(self, debug, %filter, "SUBSCRIBE over max_subscriptions refused");
                view.metrics().dropped("max_subscriptions");
                view.metrics().subscription_refused("max_subscriptions");
                ReasonCode::QuotaExceeded
            } else {
                options.qos = options.qos.min(config.max_qos());
                accepted.push((filter, Subscription { options, id }));
                ReasonCode::granted(options.qos)
            };
            codes.push(code);
        }
        let packet_id = subscribe.packet_id;
        let suback = |codes| {
            Packet::SubAck(SubAck {
                packet_id,
                codes,
                properties: Default::default(),
            })
        };
        if accepted.is_empty() {
            self.send(&suback(codes));
            return;
        }
        if !view.has_quorum() {
            // Without a quorum nothing can be committed: every filter fails, and
            // the connection stays (it is closed once the node is cut off for
            // `node_down_after`, so that the client moves to the majority).
            log!(self, info, "SUBSCRIBE failed: this node has no quorum");
            let codes = vec![ReasonCode::UnspecifiedError; codes.len()];
            self.send(&suback(codes));
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
        let mut codes = Vec::with_capacity(unsubscribe.filters.len());
        let mut filters = Vec::new();
        for filter in unsubscribe.filters {
            if validate_topic_filter(&filter).is_ok() {
                codes.push(ReasonCode::Success);
                filters.push(filter);
            } else {
                codes.push(ReasonCode::TopicFilterInvalid);
            }
        }
        let packet_id = unsubscribe.packet_id;
        if filters.is_empty() {
            self.send(&Packet::UnsubAck(UnsubAck {
                packet_id,
                codes,
                properties: Default::default(),
            }));
            return;
        }
        let command = Command::Unsubscribe {
            client_id,
            conn: self.conn,
            filters,
        };
        let then = Then::Unsubscribed { packet_id, codes };
        self.propose(command, Wait::Committed, then);
    }

    fn disconnect(&mut self, disconnect: Disconnect, view: &impl View) {
        tracing::debug!(reason = ?disconnect.reason, "DISCONNECT received");
        if let Some(expiry) = disconnect.properties.session_expiry_interval {
            if self.session_expiry == 0 && expiry != 0 {
                return self.violation(
                    "DISCONNECT sets a Session Expiry Interval after CONNECT's 0 [MQTT-3.14.2-2]",
                    view,
                );
            }
            self.new_session_expiry = Some(expiry);
        }
        self.end = Some(
            if disconnect.reason == ReasonCode::DisconnectWithWillMessage {
                End::GracefulWithWill
            } else {
                End::Graceful
            },
        );
    }
}

impl Session {
    /// Whether the ACL, if any, lets this client publish to `topic`.
    /// Answers a 3.1.1 PUBLISH that is dropped as if it had been delivered:
    /// 3.1.1 has no way to say why not. A QoS 2 one's PUBREL is answered
    /// like any other's.
    fn acknowledge_dropped(&mut self, qos: QoS, id: u16) {
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(&Packet::PubAck(Ack::new(id))),
            QoS::ExactlyOnce => {
                self.inbound_qos2.insert(id);
                self.send(&Packet::PubRec(Ack::new(id)));
            }
        }
    }

    fn acl_allows_publish(&self, topic: &str, view: &impl View) -> bool {
        view.acl().is_none_or(|acl| {
            let client_id = self.client_id.as_deref().unwrap_or("");
            acl.check_publish(client_id, self.username.as_deref(), topic)
        })
    }

    /// Whether the ACL, if any, lets this client subscribe to `filter`
    /// (Mosquitto 2 does not check subscriptions; a filter no rule covers
    /// would only ever deliver what `check_receive` refuses).
    fn acl_allows_subscribe(&self, filter: &str, view: &impl View) -> bool {
        view.acl().is_none_or(|acl| {
            let client_id = self.client_id.as_deref().unwrap_or("");
            acl.check_subscribe(client_id, self.username.as_deref(), filter)
        })
    }

    /// Whether the ACL, if any, lets this client be sent a message on
    /// `topic`: checked for every delivery, retained ones included.
    pub(super) fn acl_allows_receive(&self, topic: &str, view: &impl View) -> bool {
        view.acl().is_none_or(|acl| {
            let client_id = self.client_id.as_deref().unwrap_or("");
            acl.check_receive(client_id, self.username.as_deref(), topic)
        })
    }
}

/// The keepalive a client gets: what it asked, held to `max` when that is a
/// limit (below 65,535). An MQTT 5 client that asked for none gets `max`
/// too, as it is told so; a 3.1.1 client that asked for none keeps none, as
/// it could not be told.
/// The retained limit a retained message is committed with.
fn retained_limit(config: &MqttConfig) -> RetainedLimit {
    RetainedLimit {
        messages: config.max_retained_messages,
        bytes: config.max_retained_bytes,
    }
}

fn granted_keep_alive(asked: u16, max: u16, v5: bool) -> u16 {
    match (asked, max) {
        (_, u16::MAX) => asked,
        (0, _) if v5 => max,
        (0, _) => 0,
        _ => asked.min(max),
    }
}

/// What CONNACK tells an MQTT 5 client of this server's limits: only what
/// differs from the specification's defaults, plus the packet size.
fn advertise(properties: &mut Properties, config: &MqttConfig) {
    if config.receive_maximum != u16::MAX {
        properties.receive_maximum = Some(config.receive_maximum.max(1));
    }
    if config.max_qos() < QoS::ExactlyOnce {
        properties.maximum_qos = Some(config.max_qos() as u8);
    }
    if !config.retain_available {
        properties.retain_available = Some(0);
    }
    properties.maximum_packet_size = u32::try_from(config.max_packet_size).ok();
    if config.topic_alias_maximum > 0 {
        properties.topic_alias_maximum = Some(config.topic_alias_maximum);
    }
    if !config.shared_subscriptions {
        properties.shared_subscription_available = Some(0);
    }
    properties.wildcard_subscription_available = Some(1);
    properties.subscription_identifier_available = Some(1);
}

/// The properties of a PUBLISH (or will) that travel with its message.
fn message_props(properties: &Properties) -> Option<Arc<MessageProps>> {
    let props = MessageProps {
        payload_format: properties.payload_format_indicator,
        content_type: properties.content_type.clone(),
        response_topic: properties.response_topic.clone(),
        correlation_data: properties.correlation_data.clone(),
        user_properties: properties.user_properties.clone(),
    };
    (props != MessageProps::default()).then(|| Arc::new(props))
}

/// A payload that says it is UTF-8 (Payload Format Indicator 1) must be
/// (MQTT 5 section 3.3.2.3.2).
fn payload_format_valid(properties: &Properties, payload: &[u8]) -> bool {
    properties.payload_format_indicator != Some(1) || std::str::from_utf8(payload).is_ok()
}

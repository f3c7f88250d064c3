//! Apply: `(state, command) -> (reply, effects)`.
//!
//! A pure function of the replicated state and the command: it reads no clock,
//! no node's configuration and no connection, and it does no IO. What a node
//! must do for its own clients because of a command (deliver a committed
//! message, wake a session, close a taken-over connection, stop serving) comes
//! back as [`Effect`]s, which every node carries out from its own applied log.
//! Besides the state, apply keeps the derived [`Index`] (routes and locations)
//! in step, since publish reads the routes it just changed.

use std::sync::Arc;

use super::command::{Command, ConnId, Effect, Message, Owner, Reply};
use super::{Index, NodeRecord, Queued, Route, Session, State};

/// The outcome of one command.
#[derive(Debug)]
pub(crate) struct Applied {
    pub(crate) reply: Reply,
    pub(crate) effects: Vec<Effect>,
    /// Messages a full queue turned away; counted by the proposer's node.
    pub(crate) queue_full: u32,
}

/// `term` is the Raft term of the entry that carries `command`.
pub(crate) fn apply(state: &mut State, index: &Index, term: u64, command: Command) -> Applied {
    let mut cx = Apply {
        state,
        index,
        term,
        effects: Vec::new(),
        queue_full: 0,
    };
    let reply = cx.command(command);
    Applied {
        reply,
        effects: cx.effects,
        queue_full: cx.queue_full,
    }
}

struct Apply<'a> {
    state: &'a mut State,
    index: &'a Index,
    term: u64,
    effects: Vec<Effect>,
    queue_full: u32,
}

impl Apply<'_> {
    fn command(&mut self, command: Command) -> Reply {
        match command {
            Command::Connect {
                client_id,
                conn,
                clean_session,
                will,
                max_queued_messages,
                max_queued_bytes,
            } => {
                let limits = (max_queued_messages, max_queued_bytes);
                self.connect(client_id, conn, clean_session, will, limits)
            }
            Command::Disconnect {
                client_id,
                conn,
                publish_will,
                sent_below,
            } => match self.state.sessions.get_mut(&client_id) {
                Some(s) if s.conn == Some(conn) => {
                    // Never lowered: a connection that resumed the session and
                    // ended before it re-sent everything an earlier connection
                    // sent must not make those messages look new.
                    if let Some(sent) = sent_below {
                        s.sent_below = Some(s.sent_below.unwrap_or(s.next_seq).max(sent));
                    }
                    let wills = self.end_connection(&client_id, publish_will);
                    Reply::Disconnected { wills }
                }
                _ => Reply::NotOwner,
            },
            Command::Subscribe {
                client_id,
                conn,
                filters,
            } => {
                let Some(session) = owned(self.state, &client_id, conn) else {
                    return Reply::NotOwner;
                };
                let persistent = !session.clean;
                for (filter, qos) in filters {
                    self.index
                        .insert_route(&filter, &client_id, Route { qos, persistent });
                    session.subscriptions.insert(filter, qos);
                }
                Reply::Done
            }
            Command::Unsubscribe {
                client_id,
                conn,
                filters,
            } => {
                let Some(session) = owned(self.state, &client_id, conn) else {
                    return Reply::NotOwner;
                };
                for filter in filters {
                    self.index.remove_route(&filter, &client_id);
                    session.subscriptions.remove(&filter);
                }
                Reply::Done
            }
            Command::Publish {
                message,
                from,
                qos2_packet_id,
                deliver,
            } => {
                let Some(session) = owned_by(self.state, &from) else {
                    return Reply::NotOwner;
                };
                if let Some(packet_id) = qos2_packet_id {
                    if !session.inbound.insert(packet_id) {
                        return Reply::Published { duplicate: true };
                    }
                }
                self.publish(message, deliver);
                Reply::Published { duplicate: false }
            }
            Command::Release { from, packet_id } => match owned_by(self.state, &from) {
                Some(session) => {
                    session.inbound.remove(&packet_id);
                    Reply::Done
                }
                None => Reply::NotOwner,
            },
            Command::Ack { from, seqs } => match owned_by(self.state, &from) {
                Some(session) => {
                    for seq in seqs {
                        if let Some(acked) = session.queue.remove(&seq) {
                            session.queued_bytes = session
                                .queued_bytes
                                .saturating_sub(payload_bytes(&acked.message));
                        }
                    }
                    Reply::Done
                }
                None => Reply::NotOwner,
            },
            Command::Received { from, seq } => match owned_by(self.state, &from) {
                Some(session) => {
                    if let Some(q) = session.queue.get_mut(&seq) {
                        q.released = true;
                    }
                    Reply::Done
                }
                None => Reply::NotOwner,
            },
            Command::NodeStarted { node, incarnation } => {
                if self
                    .state
                    .nodes
                    .get(&node)
                    .is_some_and(|n| n.incarnation > incarnation)
                {
                    // A stale announcement: a newer incarnation already started.
                    return Reply::Fenced;
                }
                let record = NodeRecord {
                    incarnation,
                    down: false,
                };
                self.state.nodes.insert(node, record);
                let wills = self.end_node_connections(node, |c| c.incarnation < incarnation);
                Reply::Disconnected { wills }
            }
            Command::NodeDown {
                node,
                incarnation,
                term,
            } => {
                if term != self.term {
                    // Proposed by a leader of another term: not its word now.
                    return Reply::Fenced;
                }
                match self.state.nodes.get_mut(&node) {
                    Some(record) if record.incarnation == incarnation && !record.down => {
                        record.down = true;
                    }
                    // Declared down already, or it came back as a newer
                    // incarnation since the leader looked: nothing to end.
                    _ => return Reply::Fenced,
                }
                let wills = self.end_node_connections(node, |c| c.incarnation <= incarnation);
                self.effects.push(Effect::NodeDown { node, incarnation });
                Reply::Disconnected { wills }
            }
        }
    }

    /// Ends every connection of `node` that `which` selects, as lost connections.
    /// Returns how many wills that published.
    fn end_node_connections(&mut self, node: u64, which: impl Fn(&ConnId) -> bool) -> u32 {
        let gone: Vec<Arc<str>> = self
            .state
            .sessions
            .iter()
            .filter(|(_, s)| s.conn.is_some_and(|c| c.node == node && which(&c)))
            .map(|(id, _)| id.clone())
            .collect();
        let mut wills = 0;
        for client_id in gone {
            if let Some(session) = self.state.sessions.get_mut(&client_id) {
                session.connection_vanished();
            }
            wills += self.end_connection(&client_id, true);
        }
        wills
    }

    fn connect(
        &mut self,
        client_id: Arc<str>,
        conn: ConnId,
        clean_session: bool,
        will: Option<Message>,
        (max_queued_messages, max_queued_bytes): (u32, u64),
    ) -> Reply {
        if self.state.is_fenced(conn) {
            return Reply::Fenced;
        }
        let mut old_will = None;
        let mut previous = None;
        let mut session_present = false;
        if let Some(old) = self.state.sessions.get_mut(&client_id) {
            if let Some(old_conn) = old.conn.take() {
                // Takeover: the old connection is lost as far as MQTT is concerned,
                // and what it sent is not known.
                previous = Some(old_conn);
                old.connection_vanished();
                old_will = old.will.take();
            }
            session_present = !clean_session && !old.clean;
        }
        if !session_present {
            self.remove_session(&client_id);
            self.state
                .sessions
                .insert(client_id.clone(), Box::new(Session::new(clean_session)));
        }
        if let Some(session) = self.state.sessions.get_mut(&client_id) {
            session.conn = Some(conn);
            session.will = will.map(Box::new);
            session.max_queued = max_queued_messages;
            session.max_queued_bytes = max_queued_bytes;
        }
        self.index.set_location(&client_id, Some(conn.node));
        self.effects.push(Effect::Attach {
            client_id: client_id.clone(),
            conn,
        });
        if let Some(will) = old_will {
            self.publish(*will, true);
        }
        if let Some(previous) = previous {
            self.effects.push(Effect::Kick(previous));
        }
        Reply::Connected {
            session_present,
            previous,
        }
    }

    /// The connection of `client_id` is gone: its will is published (if asked)
    /// and a clean session ends. Returns how many wills were published.
    fn end_connection(&mut self, client_id: &Arc<str>, publish_will: bool) -> u32 {
        let Some(session) = self.state.sessions.get_mut(client_id) else {
            return 0;
        };
        session.conn = None;
        let will = session.will.take().filter(|_| publish_will);
        let clean = session.clean;
        self.index.set_location(client_id, None);
        if clean {
            self.remove_session(client_id);
        }
        match will {
            Some(will) => {
                self.publish(*will, true);
                1
            }
            None => 0,
        }
    }

    fn remove_session(&mut self, client_id: &Arc<str>) {
        if let Some(old) = self.state.sessions.remove(client_id) {
            self.index.set_location(client_id, None);
            for filter in old.subscriptions.keys() {
                self.index.remove_route(filter, client_id);
            }
        }
    }

    /// Stores a retained message, queues `message` for every persistent session
    /// it reaches at QoS 1/2 (once per session, at the highest matching QoS) and,
    /// with `deliver`, asks every node to hand it to its direct subscribers.
    fn publish(&mut self, mut message: Message, deliver: bool) {
        if message.retain {
            if message.payload.is_empty() {
                self.state.retained.remove(&message.topic);
            } else {
                self.state
                    .retained
                    .insert(message.topic.clone(), message.clone());
            }
            // Forwarded copies carry retain = 0 [MQTT-3.3.1-9].
            message.retain = false;
        }
        let targets = self.index.targets(&message.topic, message.qos);
        let direct = targets.iter().any(|t| !t.queued);
        let queued: Vec<_> = targets.into_iter().filter(|t| t.queued).collect();
        if !queued.is_empty() {
            let shared = Arc::new(message.clone());
            for target in queued {
                let Some(session) = self.state.sessions.get_mut(&target.client_id) else {
                    continue;
                };
                let bytes = payload_bytes(&shared);
                if session.queue.len() >= session.max_queued as usize
                    || session.queued_bytes.saturating_add(bytes) > session.max_queued_bytes
                {
                    // Like Mosquitto: keep what is queued, drop the newcomer.
                    self.queue_full += 1;
                    continue;
                }
                session.queued_bytes += bytes;
                let seq = session.next_seq;
                session.next_seq += 1;
                session.queue.insert(
                    seq,
                    Queued {
                        message: shared.clone(),
                        qos: target.qos,
                        released: false,
                    },
                );
                self.effects.push(Effect::Wake(target.client_id));
            }
        }
        if deliver && direct {
            self.effects.push(Effect::Deliver(message));
        }
    }
}

/// What a message counts against a queue's byte limit.
fn payload_bytes(message: &Message) -> u64 {
    u64::try_from(message.payload.len()).unwrap_or(u64::MAX)
}

/// The session of `client_id` if `conn` owns it.
fn owned<'a>(state: &'a mut State, client_id: &str, conn: ConnId) -> Option<&'a mut Session> {
    state
        .sessions
        .get_mut(client_id)
        .map(|s| &mut **s)
        .filter(|s| s.conn == Some(conn))
}

fn owned_by<'a>(state: &'a mut State, from: &Owner) -> Option<&'a mut Session> {
    owned(state, &from.client_id, from.conn)
}

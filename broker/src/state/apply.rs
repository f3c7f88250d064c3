//! Apply: `(state, command) -> (reply, effects)`.
//!
//! A pure function of the replicated state and the command: it reads no clock
//! but the replicated one (`Command::Tick`), no node's configuration and no
//! connection, and it does no IO. What a node
//! must do for its own clients because of a command (deliver a committed
//! message, wake a session, close a taken-over connection, stop serving) comes
//! back as [`Effect`]s, which every node carries out from its own applied log.
//! Besides the state, apply keeps the derived [`Index`] (routes and locations)
//! in step, since publish reads the routes it just changed.

use std::sync::Arc;

use super::command::{
    Arrival, Command, ConnId, ConnInfo, Effect, Message, Owner, Reply, RetainedLimit, Via,
    NEVER_EXPIRES,
};
use super::{Index, NodeRecord, Pick, Queued, Route, Session, State};

/// What a new connection asks of its session.
struct Connecting {
    clean_start: bool,
    session_expiry: u32,
    will: Option<Message>,
    will_delay: u32,
    max_queued_messages: u32,
    max_queued_bytes: u64,
    info: ConnInfo,
}

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
                clean_start,
                session_expiry,
                will,
                will_delay,
                max_queued_messages,
                max_queued_bytes,
                info,
            } => {
                let connecting = Connecting {
                    clean_start,
                    session_expiry,
                    will,
                    will_delay,
                    max_queued_messages,
                    max_queued_bytes,
                    info,
                };
                self.connect(client_id, conn, connecting)
            }
            Command::Disconnect {
                client_id,
                conn,
                publish_will,
                sent_below,
                session_expiry,
                at,
                will_grace,
            } => match self.state.sessions.get_mut(&client_id) {
                Some(s) if s.conn == Some(conn) => {
                    // Never lowered: a connection that resumed the session and
                    // ended before it re-sent everything an earlier connection
                    // sent must not make those messages look new.
                    if let Some(sent) = sent_below {
                        s.sent_below = Some(s.sent_below.unwrap_or(s.next_seq).max(sent));
                    }
                    if let Some(expiry) = session_expiry {
                        s.expiry = expiry;
                    }
                    if will_grace > 0 {
                        // Drained: kept, and its will held back, for the
                        // grace; a new connection in that time is the
                        // client coming back, not a loss.
                        s.drained = true;
                        s.expiry = s.expiry.max(will_grace);
                        s.will_delay = s.will_delay.max(will_grace);
                    }
                    let ended = self.state.clock.max(at);
                    let wills = self.end_connection(&client_id, publish_will, ended);
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
                let mut existed = Vec::with_capacity(filters.len());
                for (filter, subscription) in filters {
                    let route = Route::new(&subscription, persistent);
                    self.index.insert_route(&filter, &client_id, route);
                    existed.push(session.subscriptions.insert(filter, subscription).is_some());
                }
                Reply::Existed(existed)
            }
            Command::Unsubscribe {
                client_id,
                conn,
                filters,
            } => {
                let Some(session) = owned(self.state, &client_id, conn) else {
                    return Reply::NotOwner;
                };
                let mut existed = Vec::with_capacity(filters.len());
                for filter in filters {
                    self.index.remove_route(&filter, &client_id);
                    existed.push(session.subscriptions.remove(&filter).is_some());
                }
                Reply::Existed(existed)
            }
            Command::Publish {
                message,
                from,
                qos2_packet_id,
                deliver,
                retained_limit,
            } => {
                if owned_by(self.state, &from).is_none() {
                    return Reply::NotOwner;
                }
                if message.retain && self.retained_over(&message, retained_limit) {
                    return Reply::RetainedFull;
                }
                let Some(session) = owned_by(self.state, &from) else {
                    return Reply::NotOwner;
                };
                if let Some(packet_id) = qos2_packet_id {
                    if !session.inbound.insert(packet_id) {
                        return Reply::Published { duplicate: true };
                    }
                }
                let publisher = Some(from.client_id.clone());
                self.publish(message, deliver, publisher);
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
            Command::Tick { now } => {
                self.tick(now);
                Reply::Done
            }
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
            Command::ReloadAuth => {
                self.effects.push(Effect::ReloadAuth);
                Reply::Done
            }
            Command::Kick { client_id } => {
                let conn = self.state.sessions.get(&client_id).and_then(|s| s.conn);
                if let Some(conn) = conn {
                    self.effects.push(Effect::AdminKick(conn));
                }
                Reply::Found(conn.is_some())
            }
            Command::DeleteSession { client_id } => match self.state.sessions.get(&client_id) {
                None => Reply::Found(false),
                Some(s) if s.conn.is_some() => Reply::InUse,
                Some(_) => {
                    // As if it expired: a will still waiting goes out now.
                    let will = self
                        .state
                        .sessions
                        .get_mut(&client_id)
                        .and_then(|s| s.will_due.and(s.will.take()));
                    self.remove_session(&client_id);
                    if let Some(will) = will {
                        self.publish(*will, true, None);
                    }
                    Reply::Found(true)
                }
            },
            Command::BrokerPublish { message } => {
                self.publish(message, true, None);
                Reply::Published { duplicate: false }
            }
            Command::DrainNode { node } => {
                self.ask_live_node(node, |incarnation| Effect::Drain { node, incarnation })
            }
            Command::StepDown { node } => {
                self.ask_live_node(node, |incarnation| Effect::StepDown { node, incarnation })
            }
            Command::ClearRetained { topic } => match self.state.retained.remove(&topic) {
                Some(old) => {
                    self.state.retained_bytes -= retained_bytes(&old);
                    Reply::Found(true)
                }
                None => Reply::Found(false),
            },
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
            wills += self.end_connection(&client_id, true, self.state.clock);
        }
        wills
    }

    fn connect(&mut self, client_id: Arc<str>, conn: ConnId, new: Connecting) -> Reply {
        if self.state.is_fenced(conn) {
            return Reply::Fenced;
        }
        let mut old_will = None;
        let mut previous = None;
        let mut session_present = false;
        if let Some(old) = self.state.sessions.get_mut(&client_id) {
            session_present = !new.clean_start && !old.clean;
            if let Some(old_conn) = old.conn.take() {
                // Takeover: the old connection is lost as far as MQTT is concerned,
                // and what it sent is not known.
                previous = Some(old_conn);
                old.connection_vanished();
                // A delayed will waits for the session to end or its delay to
                // pass; resuming the session cancels it [MQTT-3.1.3-9].
                if old.will_delay == 0 || !session_present {
                    old_will = old.will.take();
                }
            } else if old.will_due.is_some() && !session_present && !old.drained {
                // A delayed will of a session that ends here; unless its
                // node drained it, and this is the client coming back.
                old_will = old.will.take();
            }
        }
        if !session_present {
            self.remove_session(&client_id);
            self.state.sessions.insert(
                client_id.clone(),
                Box::new(Session::new(new.session_expiry)),
            );
        }
        if let Some(session) = self.state.sessions.get_mut(&client_id) {
            session.conn = Some(conn);
            session.ended_at = None;
            session.expiry = new.session_expiry;
            session.will = new.will.map(Box::new);
            session.will_delay = new.will_delay;
            session.will_due = None;
            session.drained = false;
            session.max_queued = new.max_queued_messages;
            session.max_queued_bytes = new.max_queued_bytes;
            *session.info = new.info;
        }
        self.index.set_location(&client_id, Some(conn.node));
        self.effects.push(Effect::Attach {
            client_id: client_id.clone(),
            conn,
        });
        if let Some(will) = old_will {
            self.publish(*will, true, None);
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
    /// at once or, with a Will Delay Interval, once that passes; a session
    /// with expiry 0 ends. Returns how many wills were published.
    /// `at` is when it ended, on the replicated clock or later.
    fn end_connection(&mut self, client_id: &Arc<str>, publish_will: bool, at: u64) -> u32 {
        let clock = at;
        let Some(session) = self.state.sessions.get_mut(client_id) else {
            return 0;
        };
        session.conn = None;
        session.ended_at = Some(clock);
        let ends = session.expiry == 0;
        self.index.set_location(client_id, None);
        let mut will = None;
        if publish_will && session.will.is_some() {
            if session.will_delay == 0 || ends {
                will = session.will.take();
            } else {
                session.will_due = Some(clock.saturating_add(secs(session.will_delay)));
            }
        } else {
            session.will = None;
        }
        if ends {
            self.remove_session(client_id);
        }
        match will {
            Some(will) => {
                self.publish(*will, true, None);
                1
            }
            None => 0,
        }
    }

    /// Moves the replicated clock to `now` and does what falls due by then:
    /// sessions past their expiry end (publishing a will still waiting),
    /// delayed wills are published, expired retained messages go, and so do
    /// expired messages queued for sessions that no connection is reading.
    fn tick(&mut self, now: u64) {
        let clock = self.state.clock.max(now);
        self.state.clock = clock;
        let mut ended = Vec::new();
        let mut wills = Vec::new();
        for (client_id, session) in &mut self.state.sessions {
            if session.conn.is_some() {
                continue;
            }
            let expired = session.expiry != NEVER_EXPIRES
                && session
                    .ended_at
                    .is_some_and(|at| at.saturating_add(secs(session.expiry)) <= clock);
            let will_due = session.will_due.is_some_and(|due| due <= clock);
            if (expired && session.will_due.is_some()) || will_due {
                session.will_due = None;
                if let Some(will) = session.will.take() {
                    wills.push(*will);
                }
            }
            if expired {
                ended.push(client_id.clone());
                continue;
            }
            let before = session.queue.len();
            let mut freed = 0;
            session.queue.retain(|_, q| {
                let keep = q.released || !q.message.expired(clock);
                if !keep {
                    freed += payload_bytes(&q.message);
                }
                keep
            });
            if session.queue.len() != before {
                session.queued_bytes = session.queued_bytes.saturating_sub(freed);
            }
        }
        for client_id in ended {
            self.remove_session(&client_id);
        }
        let mut freed = 0;
        self.state.retained.retain(|_, m| {
            let expired = m.expired(clock);
            if expired {
                freed += retained_bytes(m);
            }
            !expired
        });
        self.state.retained_bytes -= freed;
        for will in wills {
            self.publish(will, true, None);
        }
    }

    /// An operator's request to node `node`: the effect for its current
    /// incarnation (so a restarted node replaying its log does not act on it
    /// again), and `Found(false)` when it is no live node.
    fn ask_live_node(&mut self, node: u64, effect: impl FnOnce(u64) -> Effect) -> Reply {
        match self.state.nodes.get(&node) {
            Some(record) if !record.down => {
                self.effects.push(effect(record.incarnation));
                Reply::Found(true)
            }
            _ => Reply::Found(false),
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
    /// `publisher` is not sent it where it subscribed with No Local.
    fn publish(&mut self, mut message: Message, deliver: bool, publisher: Option<Arc<str>>) {
        // Live traffic from here on, if it was not before (a will).
        message.arrival = message.arrival.or_now(Via::Replicated);
        if message.retain {
            let old = if message.payload.is_empty() {
                self.state.retained.remove(&message.topic)
            } else {
                self.state.retained_bytes += retained_bytes(&message);
                // Sent later to new subscribers, which is no live delivery.
                let stored = Message {
                    arrival: Arrival::default(),
                    ..message.clone()
                };
                self.state.retained.insert(message.topic.clone(), stored)
            };
            if let Some(old) = old {
                self.state.retained_bytes -= retained_bytes(&old);
            }
        }
        // Shared subscriptions' members are chosen from the applied count, the
        // same on every node, so that they all agree on who gets it.
        let pick = Pick::Replicated(self.state.applied);
        let targets = self
            .index
            .targets(&message.topic, message.qos, publisher.as_deref(), pick);
        let direct = targets.iter().any(|t| !t.queued);
        let shared: Vec<_> = targets
            .iter()
            .filter(|t| t.shared.is_some() && !t.queued)
            .cloned()
            .collect();
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
                        // Live deliveries carry retain = 0 unless the
                        // subscription asked otherwise [MQTT-3.3.1-9].
                        retain: shared.retain && target.retain_as_published,
                        ids: target.ids,
                    },
                );
                self.effects.push(Effect::Wake(target.client_id));
            }
        }
        if deliver && direct {
            self.effects.push(Effect::Deliver {
                message,
                publisher,
                shared,
            });
        }
    }
}

impl Apply<'_> {
    /// Whether storing `message` as retained would take the retained
    /// messages over `limit`. Clearing one never does, and neither does
    /// replacing one with a message no bigger.
    fn retained_over(&self, message: &Message, limit: Option<RetainedLimit>) -> bool {
        let Some(limit) = limit else {
            return false;
        };
        if message.payload.is_empty() {
            return false;
        }
        let old = self.state.retained.get(&message.topic);
        let count = self.state.retained.len() as u64 + u64::from(old.is_none());
        let bytes = (self.state.retained_bytes + retained_bytes(message))
            .saturating_sub(old.map_or(0, retained_bytes));
        (limit.messages > 0 && count > limit.messages) || (limit.bytes > 0 && bytes > limit.bytes)
    }
}

/// What a retained message counts against `max_retained_bytes`.
pub(super) fn retained_bytes(message: &Message) -> u64 {
    (message.topic.len() + message.payload.len()) as u64
}

/// `seconds` in the clock's milliseconds.
fn secs(seconds: u32) -> u64 {
    u64::from(seconds) * 1000
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

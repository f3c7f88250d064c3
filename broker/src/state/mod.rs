//! The replicated MQTT state machine: the session registry, subscriptions,
//! retained messages, wills, the queues of persistent sessions and the inbound
//! QoS 2 packet ids awaiting PUBREL.
//!
//! Raft hands every node the same commands in the same order; [`MqttMachine`]
//! applies them deterministically. Apply also tells the node-local
//! [`Registry`](crate::registry::Registry) what concerns its own connections (a
//! queue grew, a connection was taken over), and keeps the subscription trie that
//! the publish hot path reads.

pub mod command;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use starling_proto::mqtt::QoS;
use starling_storage::StateMachine;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::topic::{filter_matches, SubscriptionTrie};
use crate::Recovered;
pub use command::{Command, ConnId, Message, Reply};

/// What the subscription trie stores per (filter, client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub qos: QoS,
    /// The subscriber's session outlives its connection: QoS 1/2 messages reach it
    /// through its replicated queue, never directly.
    pub persistent: bool,
}

impl Route {
    /// True when a message of `qos` reaches this subscriber through its queue.
    pub fn is_queued(&self, qos: QoS) -> bool {
        self.persistent && qos.min(self.qos) > QoS::AtMostOnce
    }
}

pub type Routes = SubscriptionTrie<Arc<str>, Route>;

/// One subscriber a message reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub client_id: Arc<str>,
    /// min(publish QoS, the highest matching subscription QoS).
    pub qos: QoS,
    /// Delivered through the client's replicated queue rather than directly.
    pub queued: bool,
}

/// One message in a persistent session's queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Queued {
    pub message: Arc<Message>,
    /// The QoS it is delivered at: min(publish QoS, subscription QoS).
    pub qos: QoS,
    /// PUBREC was received (QoS 2): only PUBREL remains to be sent.
    pub released: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Session {
    clean: bool,
    conn: Option<ConnId>,
    /// Boxed: most sessions have no will, and every session costs this struct.
    will: Option<Box<Message>>,
    subscriptions: BTreeMap<String, QoS>,
    /// Keyed by a sequence number that only grows; packet ids derive from it.
    queue: BTreeMap<u64, Queued>,
    next_seq: u64,
    /// Inbound QoS 2 packet ids whose PUBREL has not arrived.
    inbound: BTreeSet<u16>,
    /// Queued messages below this sequence number may have been sent before: a
    /// connection resuming the session sends them with DUP set [MQTT-3.3.1-1].
    /// It only grows. `None` (only in state written by earlier versions) means
    /// not known: every queued message may have been sent.
    sent_below: Option<u64>,
}

impl Session {
    fn new(clean: bool) -> Session {
        Session {
            clean,
            conn: None,
            will: None,
            subscriptions: BTreeMap::new(),
            queue: BTreeMap::new(),
            next_seq: 0,
            inbound: BTreeSet::new(),
            sent_below: Some(0),
        }
    }

    /// The connection ended without saying how far it got (its node died, or
    /// it was taken over): it may have sent any message queued so far, so all
    /// of them go out with DUP when sent again.
    ///
    /// Not "the head plus one window": messages the client acknowledged whose
    /// Ack was not committed stay in the queue without taking room in the
    /// window, acknowledgements leave gaps, and nodes may differ in
    /// `max_inflight`, so the old connection may have sent messages beyond
    /// that. Leaving out DUP on such a message, which a QoS 2 subscriber has
    /// PUBREC'd and is holding until PUBREL, reuses its packet id as if it were
    /// new [MQTT-2.3.1-2].
    fn connection_vanished(&mut self) {
        self.sent_below = Some(self.next_seq);
    }
}

/// What the cluster knows of one node.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct NodeRecord {
    /// The latest incarnation the node announced.
    incarnation: u64,
    /// That incarnation was declared down: its connections are refused.
    down: bool,
}

/// The replicated state. Ordered maps keep apply deterministic where it iterates.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    /// Boxed: a map node holds eleven entries, and its room for the ones it
    /// does not hold costs far less as pointers.
    sessions: BTreeMap<Arc<str>, Box<Session>>,
    retained: BTreeMap<Arc<str>, Message>,
    nodes: BTreeMap<u64, NodeRecord>,
    /// Commands applied so far: the same number on every node after the same
    /// commands, so nodes can tell each other how far they are.
    applied: u64,
}

impl State {
    /// True when commands of `conn` must be refused: its node incarnation was
    /// superseded by a newer one or declared down.
    fn is_fenced(&self, conn: ConnId) -> bool {
        self.nodes.get(&conn.node).is_some_and(|n| {
            conn.incarnation < n.incarnation || (conn.incarnation == n.incarnation && n.down)
        })
    }
}

pub struct MqttMachine {
    /// The replicated state. Locked by apply and by short reads of connections.
    state: Mutex<State>,
    /// Signalled after every apply, for [`MqttMachine::wait_applied`].
    applied_changed: Condvar,
    /// The applied count again, for tasks that wait for it without blocking a
    /// thread ([`MqttMachine::applied_reached`]). Sent to under the `state` lock.
    applied_watch: watch::Sender<u64>,
    /// Derived from the subscriptions in `state`; read on every publish, so it has
    /// its own lock and readers do not wait for queue updates.
    routes: RwLock<Routes>,
    /// Derived: the node each connected client is on, for routing.
    locations: RwLock<HashMap<Arc<str>, u64>>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    max_queued_messages: usize,
}

impl MqttMachine {
    pub fn new(registry: Arc<Registry>, metrics: Arc<Metrics>, max_queued: usize) -> Self {
        MqttMachine {
            state: Mutex::new(State::default()),
            applied_changed: Condvar::new(),
            applied_watch: watch::Sender::new(0),
            routes: RwLock::new(Routes::new()),
            locations: RwLock::new(HashMap::new()),
            registry,
            metrics,
            max_queued_messages: max_queued,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug already reported; the state is
        // still the last consistent one we wrote, so keep serving it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Calls `f` for every subscription matching `topic`.
    pub fn for_each_route(&self, topic: &str, f: impl FnMut(&Arc<str>, &Route)) {
        let routes = self.routes.read().unwrap_or_else(|e| e.into_inner());
        routes.for_each_match(topic, f);
    }

    /// Every client a message on `topic` at `qos` reaches: once per client, at the
    /// highest QoS of its matching subscriptions [MQTT-3.3.5-1].
    pub fn targets(&self, topic: &str, qos: QoS) -> Vec<Target> {
        let mut found: Vec<(Arc<str>, QoS, bool)> = Vec::new();
        self.for_each_route(topic, |client, route| {
            found.push((client.clone(), qos.min(route.qos), route.persistent));
        });
        if found.len() > 1 {
            found.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
            // After the sort the first entry of each client has its highest QoS.
            found.dedup_by(|later, first| later.0 == first.0);
        }
        found
            .into_iter()
            .map(|(client_id, qos, persistent)| Target {
                client_id,
                qos,
                queued: persistent && qos > QoS::AtMostOnce,
            })
            .collect()
    }

    /// The node `client_id` is connected to, if any.
    pub fn location(&self, client_id: &str) -> Option<u64> {
        let locations = self.locations.read().unwrap_or_else(|e| e.into_inner());
        locations.get(client_id).copied()
    }

    fn set_location(&self, client_id: &Arc<str>, node: Option<u64>) {
        let mut locations = self.locations.write().unwrap_or_else(|e| e.into_inner());
        match node {
            Some(node) => locations.insert(client_id.clone(), node),
            None => locations.remove(client_id),
        };
    }

    /// Retained messages whose topic matches `filter`.
    pub fn retained_matching(&self, filter: &str) -> Vec<Message> {
        self.lock()
            .retained
            .values()
            .filter(|m| filter_matches(filter, &m.topic))
            .cloned()
            .collect()
    }

    /// Up to `max` queued messages of `client_id` with a sequence number of at least
    /// `from`, in order.
    pub fn queued(&self, client_id: &str, from: u64, max: usize) -> Vec<(u64, Queued)> {
        let state = self.lock();
        let Some(session) = state.sessions.get(client_id) else {
            return Vec::new();
        };
        session
            .queue
            .range(from..)
            .take(max)
            .map(|(seq, q)| (*seq, q.clone()))
            .collect()
    }

    /// Queued messages of `client_id` below this sequence number may have been
    /// sent before: they are sent again with DUP set [MQTT-3.3.1-1].
    pub fn sent_below(&self, client_id: &str) -> u64 {
        self.lock()
            .sessions
            .get(client_id)
            .map_or(0, |s| s.sent_below.unwrap_or(s.next_seq))
    }

    /// The oldest sequence number still queued for `client_id`.
    pub fn queue_head(&self, client_id: &str) -> Option<u64> {
        let state = self.lock();
        let session = state.sessions.get(client_id)?;
        session.queue.keys().next().copied()
    }

    /// True when the cluster declared `node`'s current incarnation down.
    pub fn is_node_down(&self, node: u64) -> bool {
        self.lock().nodes.get(&node).is_some_and(|n| n.down)
    }

    /// How many commands this node has applied.
    pub fn applied(&self) -> u64 {
        self.lock().applied
    }

    /// Waits, without blocking a thread, until this node has applied `target`
    /// commands; false if `timeout` passed first.
    pub async fn applied_reached(&self, target: u64, timeout: Duration) -> bool {
        let mut applied = self.applied_watch.subscribe();
        let reached = tokio::time::timeout(timeout, applied.wait_for(|n| *n >= target)).await;
        matches!(reached, Ok(Ok(_)))
    }

    /// Blocks until this node has applied `target` commands, or `timeout` passed.
    /// Returns whether it got there. Call it off the async executor's hot path
    /// (`block_in_place`): it waits on a condition variable.
    pub fn wait_applied(&self, target: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        while state.applied < target {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = match self.applied_changed.wait_timeout(state, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        true
    }

    pub fn summary(&self) -> Recovered {
        let state = self.lock();
        Recovered {
            sessions: state.sessions.len(),
            subscriptions: state.sessions.values().map(|s| s.subscriptions.len()).sum(),
            retained: state.retained.len(),
            queued_messages: state.sessions.values().map(|s| s.queue.len()).sum(),
        }
    }

    fn apply_command(&self, state: &mut State, command: Command) -> Reply {
        match command {
            Command::Connect {
                client_id,
                conn,
                clean_session,
                will,
            } => self.connect(state, client_id, conn, clean_session, will),
            Command::Disconnect {
                client_id,
                conn,
                publish_will,
                sent_below,
            } => match state.sessions.get_mut(&client_id) {
                Some(s) if s.conn == Some(conn) => {
                    // Never lowered: a connection that resumed the session and
                    // ended before it re-sent everything an earlier connection
                    // sent must not make those messages look new.
                    if let Some(sent) = sent_below {
                        s.sent_below = Some(s.sent_below.unwrap_or(s.next_seq).max(sent));
                    }
                    Reply::Disconnected {
                        wills: self.end_connection(state, &client_id, publish_will),
                    }
                }
                _ => Reply::NotOwner,
            },
            Command::Subscribe {
                client_id,
                conn,
                filters,
            } => {
                let Some(session) = owned(state, &client_id, conn) else {
                    return Reply::NotOwner;
                };
                let persistent = !session.clean;
                let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
                for (filter, qos) in filters {
                    routes.insert(&filter, client_id.clone(), Route { qos, persistent });
                    session.subscriptions.insert(filter, qos);
                }
                Reply::Done
            }
            Command::Unsubscribe {
                client_id,
                conn,
                filters,
            } => {
                let Some(session) = owned(state, &client_id, conn) else {
                    return Reply::NotOwner;
                };
                let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
                for filter in filters {
                    routes.remove(&filter, &client_id);
                    session.subscriptions.remove(&filter);
                }
                Reply::Done
            }
            Command::Publish { message, inbound } => {
                if let Some((client_id, packet_id)) = inbound {
                    if let Some(session) = state.sessions.get_mut(&client_id) {
                        if !session.inbound.insert(packet_id) {
                            return Reply::Published { duplicate: true };
                        }
                    }
                }
                self.publish(state, message);
                Reply::Published { duplicate: false }
            }
            Command::Release {
                client_id,
                packet_id,
            } => {
                if let Some(session) = state.sessions.get_mut(&client_id) {
                    session.inbound.remove(&packet_id);
                }
                Reply::Done
            }
            Command::Ack { client_id, seqs } => {
                if let Some(session) = state.sessions.get_mut(&client_id) {
                    for seq in seqs {
                        session.queue.remove(&seq);
                    }
                }
                Reply::Done
            }
            Command::Received { client_id, seq } => {
                if let Some(q) = state
                    .sessions
                    .get_mut(&client_id)
                    .and_then(|s| s.queue.get_mut(&seq))
                {
                    q.released = true;
                }
                Reply::Done
            }
            Command::NodeStarted { node, incarnation } => {
                if state
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
                state.nodes.insert(node, record);
                let wills = self.end_node_connections(state, node, |c| c.incarnation < incarnation);
                Reply::Disconnected { wills }
            }
            Command::NodeDown { node } => {
                let mut fenced = None;
                if let Some(record) = state.nodes.get_mut(&node) {
                    record.down = true;
                    fenced = Some(record.incarnation);
                }
                let wills = self.end_node_connections(state, node, |_| true);
                if let Some(incarnation) = fenced {
                    self.registry.node_down(node, incarnation);
                }
                Reply::Disconnected { wills }
            }
        }
    }

    /// Ends every connection of `node` that `which` selects, as lost connections.
    fn end_node_connections(
        &self,
        state: &mut State,
        node: u64,
        which: impl Fn(&ConnId) -> bool,
    ) -> Vec<Message> {
        let gone: Vec<Arc<str>> = state
            .sessions
            .iter()
            .filter(|(_, s)| s.conn.is_some_and(|c| c.node == node && which(&c)))
            .map(|(id, _)| id.clone())
            .collect();
        let mut wills = Vec::new();
        for client_id in gone {
            if let Some(session) = state.sessions.get_mut(&client_id) {
                session.connection_vanished();
            }
            wills.extend(self.end_connection(state, &client_id, true));
        }
        wills
    }

    fn connect(
        &self,
        state: &mut State,
        client_id: Arc<str>,
        conn: ConnId,
        clean_session: bool,
        will: Option<Message>,
    ) -> Reply {
        if state.is_fenced(conn) {
            return Reply::Fenced;
        }
        let mut wills = Vec::new();
        let mut previous = None;
        let mut session_present = false;
        if let Some(old) = state.sessions.get_mut(&client_id) {
            if let Some(old_conn) = old.conn.take() {
                // Takeover: the old connection is lost as far as MQTT is concerned,
                // and what it sent is not known.
                previous = Some(old_conn);
                old.connection_vanished();
                if let Some(old_will) = old.will.take() {
                    wills.push(*old_will);
                }
            }
            session_present = !clean_session && !old.clean;
        }
        if !session_present {
            self.remove_session(state, &client_id);
            state
                .sessions
                .insert(client_id.clone(), Box::new(Session::new(clean_session)));
        }
        if let Some(session) = state.sessions.get_mut(&client_id) {
            session.conn = Some(conn);
            session.will = will.map(Box::new);
        }
        self.set_location(&client_id, Some(conn.node));
        for will in &wills {
            self.publish(state, will.clone());
        }
        if let Some(previous) = previous {
            self.registry.kick(previous);
        }
        Reply::Connected {
            session_present,
            previous,
            wills,
        }
    }

    /// The connection of `client_id` is gone: its will is published (if asked) and a
    /// clean session ends. Returns the published will.
    fn end_connection(
        &self,
        state: &mut State,
        client_id: &Arc<str>,
        publish_will: bool,
    ) -> Vec<Message> {
        let Some(session) = state.sessions.get_mut(client_id) else {
            return Vec::new();
        };
        session.conn = None;
        let will = session
            .will
            .take()
            .filter(|_| publish_will)
            .map(|will| *will);
        self.set_location(client_id, None);
        if session.clean {
            self.remove_session(state, client_id);
        }
        match will {
            Some(will) => {
                self.publish(state, will.clone());
                vec![will]
            }
            None => Vec::new(),
        }
    }

    fn remove_session(&self, state: &mut State, client_id: &Arc<str>) {
        if let Some(old) = state.sessions.remove(client_id) {
            self.set_location(client_id, None);
            let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
            for filter in old.subscriptions.keys() {
                routes.remove(filter, client_id);
            }
        }
    }

    /// Stores a retained message and queues `message` for every persistent session
    /// it reaches at QoS 1/2, once per session at the highest matching QoS.
    fn publish(&self, state: &mut State, mut message: Message) {
        if message.retain {
            if message.payload.is_empty() {
                state.retained.remove(&message.topic);
            } else {
                state
                    .retained
                    .insert(message.topic.clone(), message.clone());
            }
            // Forwarded copies carry retain = 0 [MQTT-3.3.1-9].
            message.retain = false;
        }
        let targets: Vec<Target> = self
            .targets(&message.topic, message.qos)
            .into_iter()
            .filter(|t| t.queued)
            .collect();
        if targets.is_empty() {
            return;
        }
        let message = Arc::new(message);
        for Target { client_id, qos, .. } in targets {
            let Some(session) = state.sessions.get_mut(&client_id) else {
                continue;
            };
            if session.queue.len() >= self.max_queued_messages {
                // Like Mosquitto: keep what is queued, drop the newcomer, count it.
                self.metrics.dropped("queue_full");
                continue;
            }
            let seq = session.next_seq;
            session.next_seq += 1;
            session.queue.insert(
                seq,
                Queued {
                    message: message.clone(),
                    qos,
                    released: false,
                },
            );
            self.registry.wake(&client_id);
        }
    }
}

/// The session of `client_id` if `conn` owns it.
fn owned<'a>(state: &'a mut State, client_id: &str, conn: ConnId) -> Option<&'a mut Session> {
    state
        .sessions
        .get_mut(client_id)
        .map(|s| &mut **s)
        .filter(|s| s.conn == Some(conn))
}

impl StateMachine for MqttMachine {
    /// Replies are postcard `(applied, Reply)`: the reply, and how many commands
    /// had been applied once this one was.
    fn apply(&self, command: &[u8]) -> Vec<u8> {
        let reply = match postcard::from_bytes::<Command>(command) {
            Ok(command) => {
                let mut state = self.lock();
                let reply = self.apply_command(&mut state, command);
                state.applied += 1;
                self.applied_changed.notify_all();
                self.applied_watch.send_replace(state.applied);
                (state.applied, reply)
            }
            Err(e) => {
                // Only our own nodes propose; a command we cannot read means
                // mismatched versions. Applying nothing keeps every node equal.
                tracing::error!(error = %e, "undecodable command in the raft log, skipped");
                let mut state = self.lock();
                state.applied += 1;
                self.applied_changed.notify_all();
                self.applied_watch.send_replace(state.applied);
                (state.applied, Reply::Done)
            }
        };
        postcard::to_allocvec(&reply).unwrap_or_default()
    }

    fn snapshot(&self) -> Vec<u8> {
        let state = self.lock();
        postcard::to_allocvec(&*state).unwrap_or_default()
    }

    fn restore(&self, snapshot: &[u8]) -> Result<(), String> {
        let restored: State = if snapshot.is_empty() {
            State::default()
        } else {
            postcard::from_bytes(snapshot).map_err(|e| e.to_string())?
        };
        let mut routes = Routes::new();
        for (client_id, session) in &restored.sessions {
            for (filter, qos) in &session.subscriptions {
                let route = Route {
                    qos: *qos,
                    persistent: !session.clean,
                };
                routes.insert(filter, client_id.clone(), route);
            }
        }
        let locations = restored
            .sessions
            .iter()
            .filter_map(|(id, s)| s.conn.map(|c| (id.clone(), c.node)))
            .collect();
        let mut state = self.lock();
        *state = restored;
        *self.routes.write().unwrap_or_else(|e| e.into_inner()) = routes;
        *self.locations.write().unwrap_or_else(|e| e.into_inner()) = locations;
        self.applied_changed.notify_all();
        self.applied_watch.send_replace(state.applied);
        Ok(())
    }
}

#[cfg(test)]
mod tests;

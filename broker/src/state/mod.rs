//! The replicated MQTT state machine: the session registry, subscriptions,
//! retained messages, wills, the queues of persistent sessions and the inbound
//! QoS 2 packet ids awaiting PUBREL.
//!
//! Raft hands every node the same commands in the same order; [`MqttMachine`]
//! applies them with the pure function in [`apply`], then hands the effects
//! of each command to this node's [`Dispatch`], which carries out what concerns
//! its own connections (deliver a committed message, wake a session, close a
//! taken-over connection). It also keeps the subscription trie that the publish
//! hot path reads.

mod apply;
pub mod command;
mod snapshot;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use starling_proto::mqtt::QoS;
use starling_storage::{SnapshotEncoder, StateMachine};
use tokio::sync::watch;

use crate::topic::{filter_matches, SubscriptionTrie};
use crate::Recovered;
pub use command::{Command, ConnId, Effect, Message, Owner, Reply};

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
    /// Shared by every session the message was queued for; a snapshot stores
    /// it once.
    #[serde(with = "snapshot::shared_message")]
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
    /// The most messages `queue` holds, as the connecting node asked.
    max_queued: u32,
    /// The payload bytes in `queue`, and the most it holds.
    queued_bytes: u64,
    max_queued_bytes: u64,
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
            max_queued: 0,
            queued_bytes: 0,
            max_queued_bytes: 0,
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
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
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

/// What a node derives from the replicated state for its hot path: the
/// subscription trie and where each connected client is. Kept in step by
/// apply; each part has its own lock so that publishers read it without
/// waiting for apply's other work.
#[derive(Default)]
pub(crate) struct Index {
    routes: RwLock<Routes>,
    locations: RwLock<HashMap<Arc<str>, u64>>,
}

impl Index {
    fn rebuild(state: &State) -> Index {
        let mut routes = Routes::new();
        for (client_id, session) in &state.sessions {
            for (filter, qos) in &session.subscriptions {
                let route = Route {
                    qos: *qos,
                    persistent: !session.clean,
                };
                routes.insert(filter, client_id.clone(), route);
            }
        }
        let locations = state
            .sessions
            .iter()
            .filter_map(|(id, s)| s.conn.map(|c| (id.clone(), c.node)))
            .collect();
        Index {
            routes: RwLock::new(routes),
            locations: RwLock::new(locations),
        }
    }

    fn insert_route(&self, filter: &str, client_id: &Arc<str>, route: Route) {
        let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
        routes.insert(filter, client_id.clone(), route);
    }

    fn remove_route(&self, filter: &str, client_id: &Arc<str>) {
        let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
        routes.remove(filter, client_id);
    }

    fn set_location(&self, client_id: &Arc<str>, node: Option<u64>) {
        let mut locations = self.locations.write().unwrap_or_else(|e| e.into_inner());
        match node {
            Some(node) => locations.insert(client_id.clone(), node),
            None => locations.remove(client_id),
        };
    }

    fn for_each_route(&self, topic: &str, f: impl FnMut(&Arc<str>, &Route)) {
        let routes = self.routes.read().unwrap_or_else(|e| e.into_inner());
        routes.for_each_match(topic, f);
    }

    /// Every client a message on `topic` at `qos` reaches: once per client, at the
    /// highest QoS of its matching subscriptions [MQTT-3.3.5-1].
    fn targets(&self, topic: &str, qos: QoS) -> Vec<Target> {
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
}

/// Carries out, on this node, the effects of each applied command. Called in
/// log order, right after the command is applied and before anyone waiting
/// for it learns that it was.
pub trait Dispatch: Send + Sync + 'static {
    fn dispatch(&self, machine: &MqttMachine, effects: Vec<Effect>);
}

pub struct MqttMachine {
    /// The replicated state. Locked by apply and by short reads of connections.
    state: Mutex<State>,
    /// The applied count again, for tasks that wait for it without blocking a
    /// thread ([`MqttMachine::applied_reached`]). Sent to under the `state` lock.
    applied_watch: watch::Sender<u64>,
    /// Derived from `state`; read on every publish.
    index: Index,
    dispatch: Arc<dyn Dispatch>,
}

impl MqttMachine {
    pub fn new(dispatch: Arc<dyn Dispatch>) -> Self {
        MqttMachine {
            state: Mutex::new(State::default()),
            applied_watch: watch::Sender::new(0),
            index: Index::default(),
            dispatch,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug already reported; the state is
        // still the last consistent one we wrote, so keep serving it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Calls `f` for every subscription matching `topic`.
    pub fn for_each_route(&self, topic: &str, f: impl FnMut(&Arc<str>, &Route)) {
        self.index.for_each_route(topic, f);
    }

    /// Every client a message on `topic` at `qos` reaches: once per client, at the
    /// highest QoS of its matching subscriptions [MQTT-3.3.5-1].
    pub fn targets(&self, topic: &str, qos: QoS) -> Vec<Target> {
        self.index.targets(topic, qos)
    }

    /// The node `client_id` is connected to, if any.
    pub fn location(&self, client_id: &str) -> Option<u64> {
        let locations = self
            .index
            .locations
            .read()
            .unwrap_or_else(|e| e.into_inner());
        locations.get(client_id).copied()
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

    /// The incarnation `node` last announced, unless it was declared down
    /// already: what the leader names when it declares the node down.
    pub fn live_incarnation(&self, node: u64) -> Option<u64> {
        let state = self.lock();
        let record = state.nodes.get(&node)?;
        (!record.down).then_some(record.incarnation)
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

    pub fn summary(&self) -> Recovered {
        let state = self.lock();
        Recovered {
            sessions: state.sessions.len(),
            subscriptions: state.sessions.values().map(|s| s.subscriptions.len()).sum(),
            retained: state.retained.len(),
            queued_messages: state.sessions.values().map(|s| s.queue.len()).sum(),
        }
    }

    /// Marks one more command applied and wakes whoever waits for that.
    fn count_applied(&self, state: &mut State) -> u64 {
        state.applied += 1;
        self.applied_watch.send_replace(state.applied);
        state.applied
    }
}

/// A reply as the proposer reads it: how many commands had been applied once
/// this one was, how many messages it turned away from full queues, and the
/// reply itself.
pub type Envelope = (u64, u32, Reply);

impl StateMachine for MqttMachine {
    /// Replies are a postcard [`Envelope`].
    fn apply(&self, term: u64, command: &[u8]) -> Vec<u8> {
        let envelope = match postcard::from_bytes::<Command>(command) {
            Ok(command) => {
                let apply::Applied {
                    reply,
                    effects,
                    queue_full,
                } = {
                    let mut state = self.lock();
                    apply::apply(&mut state, &self.index, term, command)
                };
                // Outside the state lock: delivering reads the routes and the
                // registry. Before the count moves, so that a connection
                // waiting for its command sees the effects done.
                if !effects.is_empty() {
                    self.dispatch.dispatch(self, effects);
                }
                let mut state = self.lock();
                (self.count_applied(&mut state), queue_full, reply)
            }
            Err(e) => {
                // Only our own nodes propose; a command we cannot read means
                // mismatched versions. Applying nothing keeps every node equal.
                tracing::error!(error = %e, "undecodable command in the raft log, skipped");
                let mut state = self.lock();
                (self.count_applied(&mut state), 0, Reply::Done)
            }
        };
        // Encoding plain data into a growable buffer cannot fail.
        postcard::to_allocvec(&envelope).unwrap_or_default()
    }

    fn snapshot(&self) -> SnapshotEncoder {
        // Copied under the lock, encoded later on another thread: apply and the
        // readers of connections wait for the copy, not for the encoding. The
        // copy shares payloads with the state (`Arc`, `Bytes`), so what it
        // costs is the maps, and the message table still finds each payload
        // once.
        let copy = self.lock().clone();
        Box::new(move || snapshot::encode(&copy))
    }

    fn restore(&self, bytes: &[u8]) -> Result<(), String> {
        let restored = if bytes.is_empty() {
            State::default()
        } else {
            snapshot::decode(bytes)?
        };
        let index = Index::rebuild(&restored);
        let mut state = self.lock();
        *state = restored;
        *self.index.routes.write().unwrap_or_else(|e| e.into_inner()) =
            index.routes.into_inner().unwrap_or_else(|e| e.into_inner());
        *self
            .index
            .locations
            .write()
            .unwrap_or_else(|e| e.into_inner()) = index
            .locations
            .into_inner()
            .unwrap_or_else(|e| e.into_inner());
        self.applied_watch.send_replace(state.applied);
        Ok(())
    }
}

#[cfg(test)]
mod tests;

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
mod views;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use starling_proto::mqtt::topic::shared_subscription;
use starling_proto::mqtt::QoS;
use starling_storage::{SnapshotEncoder, StateMachine};
use tokio::sync::watch;

use crate::topic::{filter_matches, SubscriptionTrie};
use crate::Recovered;
pub use command::{
    Arrival, Command, ConnId, ConnInfo, Effect, Message, MessageProps, Owner, Reply, RetainedLimit,
    Subscription, Via, NEVER_EXPIRES,
};
pub use views::{Census, Page, SessionView, SubscriptionView};

/// What the subscription trie stores per (filter, client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub qos: QoS,
    /// The subscriber's session outlives its connection: QoS 1/2 messages reach it
    /// through its replicated queue, never directly.
    pub persistent: bool,
    /// Not sent what the subscriber itself publishes (MQTT 5 No Local).
    pub no_local: bool,
    /// Sent with the retain flag as published (MQTT 5 Retain As Published).
    pub retain_as_published: bool,
    /// The MQTT 5 Subscription Identifier of the subscription.
    pub id: Option<u32>,
}

impl Route {
    pub fn new(subscription: &Subscription, persistent: bool) -> Route {
        Route {
            qos: subscription.options.qos,
            persistent,
            no_local: subscription.options.no_local,
            retain_as_published: subscription.options.retain_as_published,
            id: subscription.id,
        }
    }
}

impl Route {
    /// True when a message of `qos` reaches this subscriber through its queue.
    pub fn is_queued(&self, qos: QoS) -> bool {
        self.persistent && qos.min(self.qos) > QoS::AtMostOnce
    }
}

pub type Routes = SubscriptionTrie<Arc<str>, Route>;

/// Shared subscriptions' routes, keyed by (`$share/{group}/{filter}`, client).
type SharedRoutes = SubscriptionTrie<(Arc<str>, Arc<str>), Route>;

/// One subscriber a message reaches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub client_id: Arc<str>,
    /// min(publish QoS, the highest matching subscription QoS).
    pub qos: QoS,
    /// Delivered through the client's replicated queue rather than directly.
    pub queued: bool,
    /// Some matching subscription asked for Retain As Published.
    pub retain_as_published: bool,
    /// The Subscription Identifiers of every matching subscription
    /// [MQTT-3.3.4-3], in ascending order.
    pub ids: Vec<u32>,
    /// The shared subscription (`$share/{group}/{filter}`) it was chosen
    /// from, as the one member of its group that gets the message.
    pub shared: Option<Arc<str>>,
}

/// How a shared subscription's member is chosen where this node chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SharedStrategy {
    /// Each member in turn.
    #[default]
    RoundRobin,
    /// Any member, at random.
    Random,
    /// The same member while the group stays the same.
    Sticky,
}

/// Whether, and how, [`MqttMachine::targets`] chooses members of shared
/// subscriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// Not at all: only the other subscribers. For a node delivering a
    /// message whose shared members another node chose.
    None,
    /// By this node, as its strategy says: the publisher's node, for a
    /// message that is not committed.
    Local,
    /// From this seed, the same on every node: apply, for a committed message.
    Replicated(u64),
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
    /// Sent with the retain flag set (Retain As Published).
    pub retain: bool,
    /// The Subscription Identifiers it is sent with.
    pub ids: Vec<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Session {
    /// The session ends with its connection (Session Expiry Interval 0).
    clean: bool,
    /// Seconds the session outlives its connection ([`NEVER_EXPIRES`]: never).
    expiry: u32,
    /// When its connection ended, on the replicated clock; `None` while one
    /// is attached.
    ended_at: Option<u64>,
    conn: Option<ConnId>,
    /// Boxed: most sessions have no will, and every session costs this struct.
    will: Option<Box<Message>>,
    /// Seconds between the loss of the connection and the will.
    will_delay: u32,
    /// A will waiting for its delay to pass: published at this time on the
    /// replicated clock unless the session is resumed first.
    will_due: Option<u64>,
    subscriptions: BTreeMap<String, Subscription>,
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
    /// Its latest connection, for the admin API. Boxed: read only there.
    info: Box<ConnInfo>,
    /// Its connection ended because its node drained: a new connection
    /// within the grace discards the will instead of publishing it.
    drained: bool,
}

impl Session {
    fn new(expiry: u32) -> Session {
        Session {
            clean: expiry == 0,
            expiry,
            ended_at: None,
            conn: None,
            will: None,
            will_delay: 0,
            will_due: None,
            subscriptions: BTreeMap::new(),
            queue: BTreeMap::new(),
            next_seq: 0,
            inbound: BTreeSet::new(),
            max_queued: 0,
            queued_bytes: 0,
            max_queued_bytes: 0,
            sent_below: Some(0),
            info: Box::default(),
            drained: false,
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
    /// Bytes of `retained` (topics and payloads), for its limit; derived, so
    /// not in snapshots but counted again when one is restored.
    #[serde(skip)]
    retained_bytes: u64,
    nodes: BTreeMap<u64, NodeRecord>,
    /// The replicated clock: the latest `Tick` (ms since the Unix epoch).
    clock: u64,
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
    /// Shared subscriptions, under the filter they stand for, keyed by
    /// (`$share/{group}/{filter}`, client).
    shared: RwLock<SharedRoutes>,
    /// Whether `shared` holds any route: read on every publish without
    /// touching the lock, which most brokers never need.
    any_shared: std::sync::atomic::AtomicBool,
    /// This node's choices: the position of each shared subscription's turn.
    turns: Mutex<HashMap<Arc<str>, usize>>,
    /// [`SharedStrategy`] as a number.
    strategy: AtomicU8,
}

impl Index {
    fn rebuild(state: &State) -> Index {
        let index = Index::default();
        for (client_id, session) in &state.sessions {
            for (filter, subscription) in &session.subscriptions {
                let route = Route::new(subscription, !session.clean);
                index.insert_route(filter, client_id, route);
            }
        }
        let locations = state
            .sessions
            .iter()
            .filter_map(|(id, s)| s.conn.map(|c| (id.clone(), c.node)))
            .collect();
        *index.locations.write().unwrap_or_else(|e| e.into_inner()) = locations;
        index
    }

    fn insert_route(&self, filter: &str, client_id: &Arc<str>, route: Route) {
        match shared_subscription(filter) {
            Some(Ok((_, inner))) => {
                let mut shared = self.shared.write().unwrap_or_else(|e| e.into_inner());
                shared.insert(inner, (Arc::from(filter), client_id.clone()), route);
                self.any_shared.store(true, Ordering::Release);
            }
            // Never committed: sessions refuse such filters.
            Some(Err(_)) => {}
            None => {
                let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
                routes.insert(filter, client_id.clone(), route);
            }
        }
    }

    fn remove_route(&self, filter: &str, client_id: &Arc<str>) {
        match shared_subscription(filter) {
            Some(Ok((_, inner))) => {
                let mut shared = self.shared.write().unwrap_or_else(|e| e.into_inner());
                shared.remove(inner, &(Arc::from(filter), client_id.clone()));
                self.any_shared.store(!shared.is_empty(), Ordering::Release);
            }
            Some(Err(_)) => {}
            None => {
                let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
                routes.remove(filter, client_id);
            }
        }
    }

    /// One member of each shared subscription matching `topic`, chosen as
    /// `pick` says, without `except`. Connected members come first: an
    /// offline one would only queue the message, or lose it at QoS 0.
    fn shared_targets(
        &self,
        topic: &str,
        qos: QoS,
        pick: Pick,
        only: Option<&str>,
        except: Option<&str>,
    ) -> Vec<Target> {
        if pick == Pick::None || !self.any_shared.load(Ordering::Acquire) {
            return Vec::new();
        }
        let mut groups: BTreeMap<Arc<str>, Vec<(Arc<str>, Route)>> = BTreeMap::new();
        {
            let shared = self.shared.read().unwrap_or_else(|e| e.into_inner());
            if shared.is_empty() {
                return Vec::new();
            }
            shared.for_each_match(topic, |(share, client), route| {
                if only.is_some_and(|s| s != &**share) || except == Some(&**client) {
                    return;
                }
                groups
                    .entry(share.clone())
                    .or_default()
                    .push((client.clone(), *route));
            });
        }
        let locations = self.locations.read().unwrap_or_else(|e| e.into_inner());
        let mut chosen = Vec::with_capacity(groups.len());
        for (share, mut members) in groups {
            // Sorted, so that a replicated pick names the same member everywhere.
            members.sort_by(|a, b| a.0.cmp(&b.0));
            if members.iter().any(|m| locations.contains_key(&m.0)) {
                members.retain(|m| locations.contains_key(&m.0));
            }
            let turn = self.turn(&share, members.len(), pick);
            let (client_id, route) = members.swap_remove(turn);
            let qos = qos.min(route.qos);
            chosen.push(Target {
                client_id,
                qos,
                queued: route.persistent && qos > QoS::AtMostOnce,
                retain_as_published: route.retain_as_published,
                ids: route.id.into_iter().collect(),
                shared: Some(share),
            });
        }
        chosen
    }

    /// Which of `members` (at least one) gets the message.
    fn turn(&self, share: &Arc<str>, members: usize, pick: Pick) -> usize {
        let seed = match pick {
            Pick::Replicated(seed) => seed,
            Pick::None | Pick::Local => {
                let mut turns = self.turns.lock().unwrap_or_else(|e| e.into_inner());
                let turn = turns.entry(share.clone()).or_insert(0);
                match self.strategy() {
                    SharedStrategy::RoundRobin => *turn = turn.wrapping_add(1),
                    SharedStrategy::Random => *turn = random_index(),
                    SharedStrategy::Sticky => {}
                }
                u64::try_from(*turn).unwrap_or(0)
            }
        };
        usize::try_from(seed % u64::try_from(members).unwrap_or(1)).unwrap_or(0)
    }

    fn strategy(&self) -> SharedStrategy {
        match self.strategy.load(Ordering::Relaxed) {
            1 => SharedStrategy::Random,
            2 => SharedStrategy::Sticky,
            _ => SharedStrategy::RoundRobin,
        }
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
    /// highest QoS of its matching subscriptions [MQTT-3.3.5-1], with the
    /// identifiers of all of them; then one member of each matching shared
    /// subscription, as `pick` says (MQTT 5 section 4.8.2). `publisher` is left
    /// out where it subscribed with No Local [MQTT-3.8.3-3].
    fn targets(&self, topic: &str, qos: QoS, publisher: Option<&str>, pick: Pick) -> Vec<Target> {
        let mut found = self.unshared_targets(topic, qos, publisher);
        found.extend(self.shared_targets(topic, qos, pick, None, None));
        found
    }

    fn unshared_targets(&self, topic: &str, qos: QoS, publisher: Option<&str>) -> Vec<Target> {
        let mut found: Vec<Target> = Vec::new();
        self.for_each_route(topic, |client, route| {
            if route.no_local && publisher == Some(&**client) {
                return;
            }
            let qos = qos.min(route.qos);
            found.push(Target {
                client_id: client.clone(),
                qos,
                queued: route.persistent && qos > QoS::AtMostOnce,
                retain_as_published: route.retain_as_published,
                ids: route.id.into_iter().collect(),
                shared: None,
            });
        });
        if found.len() > 1 {
            found.sort_by(|a, b| a.client_id.cmp(&b.client_id).then(b.qos.cmp(&a.qos)));
            // After the sort the first entry of each client has its highest QoS.
            found.dedup_by(|later, first| {
                if later.client_id != first.client_id {
                    return false;
                }
                first.retain_as_published |= later.retain_as_published;
                first.ids.append(&mut later.ids);
                first.ids.sort_unstable();
                true
            });
        }
        found
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
    /// highest QoS of its matching subscriptions [MQTT-3.3.5-1]; `publisher`
    /// not where it subscribed with No Local.
    pub fn targets(
        &self,
        topic: &str,
        qos: QoS,
        publisher: Option<&str>,
        pick: Pick,
    ) -> Vec<Target> {
        self.index.targets(topic, qos, publisher, pick)
    }

    /// Another member of shared subscription `share` for a message on
    /// `topic` that `except` (a member that left) did not acknowledge.
    pub fn other_member(&self, share: &str, topic: &str, qos: QoS, except: &str) -> Option<Target> {
        self.index
            .shared_targets(topic, qos, Pick::Local, Some(share), Some(except))
            .pop()
    }

    /// How this node chooses members of shared subscriptions.
    pub fn set_shared_strategy(&self, strategy: SharedStrategy) {
        self.index.strategy.store(strategy as u8, Ordering::Relaxed);
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

    /// How many subscriptions `client_id`'s session holds.
    pub fn subscription_count(&self, client_id: &str) -> usize {
        self.lock()
            .sessions
            .get(client_id)
            .map_or(0, |s| s.subscriptions.len())
    }

    /// Whether `client_id`'s session holds a subscription to `filter`.
    pub fn has_subscription(&self, client_id: &str, filter: &str) -> bool {
        self.lock()
            .sessions
            .get(client_id)
            .is_some_and(|s| s.subscriptions.contains_key(filter))
    }

    /// The replicated clock: the latest tick applied (ms since the epoch).
    pub fn clock(&self) -> u64 {
        self.lock().clock
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

    /// How many retained messages the cluster holds, and their bytes (topics
    /// and payloads), as `mqtt.max_retained_messages` and
    /// `mqtt.max_retained_bytes` count them.
    pub fn retained_usage(&self) -> (usize, u64) {
        let state = self.lock();
        (state.retained.len(), state.retained_bytes)
    }

    /// Marks one more command applied and wakes whoever waits for that.
    fn count_applied(&self, state: &mut State) -> u64 {
        state.applied += 1;
        self.applied_watch.send_replace(state.applied);
        state.applied
    }
}

/// Reads the MQTT state out of a snapshot's bytes and writes it again, as
/// [`MqttMachine`] restores and takes snapshots: for the fuzz targets, which
/// cannot name the state.
pub(crate) fn snapshot_round_trip(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let state = snapshot::decode(bytes)?;
    snapshot::encode(&state)
}

/// A snapshot's bytes for a state with nothing in it, a seed for the fuzz
/// targets.
pub(crate) fn empty_snapshot() -> Vec<u8> {
    snapshot::encode(&State::default()).expect("an empty state encodes")
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
        let shared = index.shared.into_inner().unwrap_or_else(|e| e.into_inner());
        self.index
            .any_shared
            .store(!shared.is_empty(), Ordering::Release);
        *self.index.shared.write().unwrap_or_else(|e| e.into_inner()) = shared;
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

/// A number for a random pick, from the standard library's randomly keyed
/// hasher: nothing more is needed to spread messages over a group.
fn random_index() -> usize {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(crate::clock::now_ms());
    usize::try_from(hasher.finish() % (u64::from(u32::MAX) + 1)).unwrap_or(0)
}

#[cfg(test)]
mod tests;

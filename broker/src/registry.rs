//! The connections this node holds, by client id: how the router reaches a local
//! subscriber, and how the state machine wakes or closes one.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use starling_proto::mqtt::QoS;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::state::{ConnId, Message};

/// A message for one subscriber, at the QoS it is delivered with.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: Message,
    pub qos: QoS,
    /// The retain flag it is sent with: set for retained messages sent at
    /// subscribe, and for live ones only with Retain As Published.
    pub retain: bool,
    /// The Subscription Identifiers of the matching subscriptions.
    pub ids: Vec<u32>,
    /// The shared subscription it came through: unacknowledged when the
    /// connection ends, it goes to another member.
    pub shared: Option<Arc<str>>,
}

/// One local connection's mailbox: deliveries in the order they were routed,
/// and the one signal that wakes the connection task for anything (a delivery,
/// a grown replicated queue, a takeover).
///
/// The queue never refuses a message while the connection is open, so order
/// never depends on who waits; the bound is on its backlog: past `capacity`
/// messages or `capacity_bytes` payload bytes, QoS 0 messages are dropped (and
/// counted), and a publisher whose QoS 1/2 message went past it waits for room
/// before it is acknowledged, for at most the slow-subscriber timeout. A
/// mailbox over its bound for that long gets its connection stopped
/// ([`Stop::SlowSubscriber`], by [`Registry::expire`]), which closes it and
/// releases every publisher. Memory stays bounded by the publishers' windows.
///
/// An idle connection's mailbox holds no buffer: the queue allocates when the
/// first message arrives and lets its buffer go when a burst has drained.
pub struct Mailbox {
    queue: Mutex<VecDeque<Delivery>>,
    /// The queue's length, readable without the lock.
    len: AtomicUsize,
    /// The payload bytes in the queue, readable without the lock.
    bytes: AtomicUsize,
    /// QoS 1/2 messages the connection sent and the client has not yet
    /// acknowledged, as the connection task last saw it (for the admin API).
    inflight: AtomicUsize,
    capacity: usize,
    capacity_bytes: usize,
    /// Since when the backlog is over its bound, in milliseconds since the
    /// registry's epoch plus one; 0 while it is within.
    over_since_ms: AtomicU64,
    /// Set once the connection stops reading: later deliveries are refused.
    closed: AtomicBool,
    /// Why the connection must end, once it must ([`Stop`] as a number; 0: it
    /// need not).
    stop: AtomicU8,
    /// When the connection expires unless the client sends something: in
    /// milliseconds since the registry's epoch. Checked by [`Registry::expire`],
    /// so that idle connections need no timer of their own.
    deadline_ms: AtomicU64,
    /// Set when the connection task needs to look (a delivery, a grown queue, a
    /// stop); cleared when it does.
    attention: AtomicBool,
    /// The connection task, woken when `attention` is set. Smaller than a
    /// `Notify`, and needs no future held while waiting.
    waker: AtomicWaker,
    /// Wakes publishers waiting for room.
    room: Notify,
}

/// Why a connection is asked to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Stop {
    /// Another connection took its session over.
    TakenOver = 1,
    /// The node is shutting down, or cannot serve (fenced, without quorum).
    NodeStopping = 2,
    /// No packet within its keepalive (or no CONNECT in time).
    Expired = 3,
    /// It kept its mailbox over capacity for the slow-subscriber timeout.
    SlowSubscriber = 4,
    /// This node was declared down, or has been without a quorum too long:
    /// the cluster ended its sessions already, or nothing can be committed,
    /// so the connection ends without proposing anything.
    CutOff = 5,
    /// An operator disconnected the client through the admin API.
    Admin = 6,
}

impl Stop {
    fn from_u8(n: u8) -> Option<Stop> {
        match n {
            1 => Some(Stop::TakenOver),
            2 => Some(Stop::NodeStopping),
            3 => Some(Stop::Expired),
            4 => Some(Stop::SlowSubscriber),
            5 => Some(Stop::CutOff),
            6 => Some(Stop::Admin),
            _ => None,
        }
    }
}

/// A queue whose buffer grew past this many messages gives it back once empty.
const KEEP_QUEUE_CAPACITY: usize = 16;

impl Mailbox {
    pub fn new(capacity: usize, capacity_bytes: usize) -> Mailbox {
        Mailbox {
            queue: Mutex::new(VecDeque::new()),
            len: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            inflight: AtomicUsize::new(0),
            capacity: capacity.max(1),
            capacity_bytes: capacity_bytes.max(1),
            over_since_ms: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            stop: AtomicU8::new(0),
            deadline_ms: AtomicU64::new(u64::MAX),
            attention: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            room: Notify::new(),
        }
    }

    /// Appends `delivery`; false if the connection has stopped reading.
    fn push(&self, delivery: Delivery) -> bool {
        {
            let mut queue = lock(&self.queue);
            if self.closed.load(Ordering::Acquire) {
                return false;
            }
            self.bytes
                .fetch_add(delivery.message.payload.len(), Ordering::AcqRel);
            queue.push_back(delivery);
            self.len.fetch_add(1, Ordering::AcqRel);
        }
        self.wake();
        true
    }

    /// Takes the oldest delivery, if any. Called by the connection task only.
    /// Records how many QoS 1/2 messages the connection has unacknowledged.
    pub fn set_inflight(&self, n: usize) {
        self.inflight.store(n, Ordering::Relaxed);
    }

    pub fn pop(&self) -> Option<Delivery> {
        if self.len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let delivery = {
            let mut queue = lock(&self.queue);
            let delivery = queue.pop_front();
            if queue.is_empty() && queue.capacity() > KEEP_QUEUE_CAPACITY {
                *queue = VecDeque::new();
            }
            delivery
        };
        if let Some(delivery) = &delivery {
            self.len.fetch_sub(1, Ordering::AcqRel);
            self.bytes
                .fetch_sub(delivery.message.payload.len(), Ordering::AcqRel);
            if self.has_room() {
                self.over_since_ms.store(0, Ordering::Release);
                self.room.notify_waiters();
            }
        }
        delivery
    }

    /// True if a delivery is waiting.
    pub fn has_mail(&self) -> bool {
        self.len.load(Ordering::Acquire) > 0
    }

    /// Ready when something may need the connection task's attention; it may
    /// also be ready for nothing. Nothing is missed between checking and
    /// waiting: a signal given while nobody waits is kept for the next poll.
    /// Only the connection task polls this.
    pub fn poll_attention(&self, cx: &mut Context<'_>) -> Poll<()> {
        // Registered before the check, so a signal in between is not missed.
        self.waker.register(cx.waker());
        if self.attention.swap(false, Ordering::AcqRel) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Wakes the connection task: a delivery, a grown replicated queue, a stop.
    pub fn wake(&self) {
        self.attention.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Asks the connection to end; the first reason given is the one that counts.
    pub fn stop(&self, why: Stop) {
        let _ = self
            .stop
            .compare_exchange(0, why as u8, Ordering::AcqRel, Ordering::Acquire);
        self.wake();
    }

    /// Why the connection must end, if it must.
    pub fn stopped(&self) -> Option<Stop> {
        Stop::from_u8(self.stop.load(Ordering::Acquire))
    }

    /// The connection stops reading: refuses further deliveries and drops the
    /// waiting ones (its session decides what survives), releasing publishers.
    pub fn close(&self) {
        let dropped = {
            let mut queue = lock(&self.queue);
            self.closed.store(true, Ordering::Release);
            std::mem::take(&mut *queue)
        };
        self.len.store(0, Ordering::Release);
        self.bytes.store(0, Ordering::Release);
        self.over_since_ms.store(0, Ordering::Release);
        self.room.notify_waiters();
        drop(dropped);
    }

    fn has_room(&self) -> bool {
        self.len.load(Ordering::Acquire) <= self.capacity
            && self.bytes.load(Ordering::Acquire) <= self.capacity_bytes
    }

    /// Waits until the backlog is back within its capacity; false after `timeout`.
    pub async fn wait_for_room(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            // Registered before the check, so a wake-up in between is not missed.
            notified.as_mut().enable();
            if self.has_room() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.has_room();
            }
        }
    }
}

/// What [`Registry::deliver`] could not finish at once.
#[derive(Default)]
pub struct Undelivered {
    /// Clients not connected to this node.
    pub elsewhere: Vec<Arc<str>>,
    /// Mailboxes that took a QoS 1/2 message past their capacity: the publisher
    /// waits for room in them before it is acknowledged.
    pub blocked: Vec<Arc<Mailbox>>,
}

/// How to reach one local connection.
#[derive(Clone)]
pub struct ClientHandle {
    pub conn: ConnId,
    pub mailbox: Arc<Mailbox>,
}

pub struct Registry {
    node: u64,
    /// Changes when this node was declared down and starts a new incarnation.
    incarnation: AtomicU64,
    /// Notified when this node's incarnation was declared down by the cluster.
    fenced: Notify,
    /// Set from then until the node's new incarnation is committed.
    is_fenced: AtomicBool,
    /// The origin of connection deadlines.
    epoch: Instant,
    /// Client id -> its connection here. Locked for map operations only.
    clients: RwLock<HashMap<Arc<str>, ClientHandle>>,
    /// Every open connection, connected or not, for takeover and node-wide kicks.
    kicks: Mutex<HashMap<ConnId, Arc<Mailbox>>>,
}

impl Registry {
    pub fn new(node: u64, incarnation: u64) -> Registry {
        Registry {
            node,
            incarnation: AtomicU64::new(incarnation),
            fenced: Notify::new(),
            is_fenced: AtomicBool::new(false),
            epoch: Instant::now(),
            clients: RwLock::new(HashMap::new()),
            kicks: Mutex::new(HashMap::new()),
        }
    }

    pub fn node(&self) -> u64 {
        self.node
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation.load(Ordering::Acquire)
    }

    pub fn set_incarnation(&self, incarnation: u64) {
        self.incarnation.store(incarnation, Ordering::Release);
    }

    fn is_local(&self, conn: ConnId) -> bool {
        conn.node == self.node
    }

    /// Called by apply when incarnation `incarnation` of `node` was declared down.
    /// Only the current incarnation matters: replaying the log after a restart
    /// re-applies old declarations about earlier ones.
    pub fn node_down(&self, node: u64, incarnation: u64) {
        if node == self.node && incarnation == self.incarnation() {
            self.is_fenced.store(true, Ordering::Release);
            self.fenced.notify_one();
        }
    }

    /// True while this node is declared down and not yet back as a new
    /// incarnation: it must not serve.
    pub fn is_fenced(&self) -> bool {
        self.is_fenced.load(Ordering::Acquire)
    }

    /// This node is back under a new incarnation.
    pub fn unfence(&self) {
        self.is_fenced.store(false, Ordering::Release);
    }

    /// Resolves when this node learns that the cluster declared it down.
    pub async fn fenced(&self) {
        self.fenced.notified().await;
    }

    /// Closes every connection of this node, without publishing wills (the
    /// cluster already ended their sessions, or cannot commit anything now).
    pub fn kick_all(&self) {
        self.stop_all(Stop::CutOff);
    }

    /// Asks every connection of this node to end, for `why`.
    pub fn stop_all(&self, why: Stop) {
        for mailbox in lock(&self.kicks).values() {
            mailbox.stop(why);
        }
    }

    /// Sets when `mailbox`'s connection expires unless the client sends something.
    pub fn set_deadline(&self, mailbox: &Mailbox, at: Option<Instant>) {
        let ms = at.map_or(u64::MAX, |at| self.millis(at));
        mailbox.deadline_ms.store(ms, Ordering::Relaxed);
    }

    /// Asks every connection whose deadline has passed to end, and every one
    /// whose mailbox has been over its bound for `slow_after`. Called
    /// periodically by one task for the whole node.
    pub fn expire(&self, slow_after: Duration) {
        let now = self.millis(Instant::now());
        let slow_ms = u64::try_from(slow_after.as_millis()).unwrap_or(u64::MAX);
        for mailbox in lock(&self.kicks).values() {
            if mailbox.deadline_ms.load(Ordering::Relaxed) <= now {
                mailbox.stop(Stop::Expired);
            }
            let over = mailbox.over_since_ms.load(Ordering::Acquire);
            if over > 0 && now.saturating_sub(over - 1) >= slow_ms && mailbox.stopped().is_none() {
                mailbox.stop(Stop::SlowSubscriber);
            }
        }
    }

    /// The mailboxes here of those of `targets` that read no queue and are over
    /// their bound since less than `fresh`, each with how much of `fresh` is
    /// left: a burst worth waiting for, not a subscriber that stays slow.
    pub fn freshly_full(
        &self,
        targets: &[crate::state::Target],
        fresh: Duration,
    ) -> Vec<(Arc<Mailbox>, Duration)> {
        let clients = self.clients.read().unwrap_or_else(|e| e.into_inner());
        let now = self.millis(Instant::now());
        let fresh_ms = u64::try_from(fresh.as_millis()).unwrap_or(u64::MAX);
        let mut full = Vec::new();
        for target in targets.iter().filter(|t| !t.queued) {
            let Some(handle) = clients.get(&target.client_id) else {
                continue;
            };
            let mailbox = &handle.mailbox;
            if mailbox.has_room() {
                continue;
            }
            let over = mailbox.over_since_ms.load(Ordering::Acquire);
            let since = now.saturating_sub(over.saturating_sub(1));
            if over > 0 && since < fresh_ms {
                full.push((mailbox.clone(), Duration::from_millis(fresh_ms - since)));
            }
        }
        full
    }

    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// Registers a new connection's mailbox before it connects.
    pub fn open(&self, conn: ConnId, mailbox: Arc<Mailbox>) {
        lock(&self.kicks).insert(conn, mailbox);
    }

    /// Makes connection `conn`, if it is here and still open, the way to reach
    /// `client_id`. Called when its Connect is applied: the registry follows
    /// the committed owner of each session, never a connection still waiting
    /// for its Connect to commit.
    pub fn attach(&self, client_id: Arc<str>, conn: ConnId) {
        if !self.is_local(conn) {
            return;
        }
        let Some(mailbox) = lock(&self.kicks).get(&conn).cloned() else {
            // Closed before its Connect applied, or a connection of an
            // earlier run, met while replaying the log at start.
            return;
        };
        let mut clients = self.clients.write().unwrap_or_else(|e| e.into_inner());
        clients.insert(client_id, ClientHandle { conn, mailbox });
    }

    /// Forgets connection `conn`, and `client_id`'s entry if `conn` still owns it.
    pub fn close(&self, client_id: Option<&Arc<str>>, conn: ConnId) {
        lock(&self.kicks).remove(&conn);
        if let Some(client_id) = client_id {
            let mut clients = self.clients.write().unwrap_or_else(|e| e.into_inner());
            if clients.get(client_id).is_some_and(|h| h.conn == conn) {
                clients.remove(client_id);
            }
        }
    }

    /// Closes connection `conn` if this node holds it (session takeover).
    pub fn kick(&self, conn: ConnId) {
        self.stop(conn, Stop::TakenOver);
    }

    /// Asks connection `conn`, if this node holds it, to end for `why`.
    pub fn stop(&self, conn: ConnId, why: Stop) {
        if self.is_local(conn) {
            if let Some(mailbox) = lock(&self.kicks).get(&conn) {
                mailbox.stop(why);
            }
        }
    }

    /// Messages and payload bytes waiting in the mailbox of `client_id`'s
    /// connection, if this node holds it.
    pub fn mailbox_depth(&self, client_id: &str) -> Option<(usize, usize, usize)> {
        let clients = self.clients.read().unwrap_or_else(|e| e.into_inner());
        clients.get(client_id).map(|handle| {
            (
                handle.mailbox.len.load(Ordering::Relaxed),
                handle.mailbox.bytes.load(Ordering::Relaxed),
                handle.mailbox.inflight.load(Ordering::Relaxed),
            )
        })
    }

    /// Tells `client_id`'s connection, if here, that its queue grew.
    pub fn wake(&self, client_id: &str) {
        let clients = self.clients.read().unwrap_or_else(|e| e.into_inner());
        if let Some(handle) = clients.get(client_id) {
            handle.mailbox.wake();
        }
    }

    /// Hands each (client, delivery) to the client's connection if it is here.
    /// A QoS 0 delivery to a full mailbox is dropped and counted; a QoS 1/2 one is
    /// always delivered, and a mailbox it filled is handed back in
    /// [`Undelivered::blocked`] for the publisher to wait on.
    pub fn deliver(
        &self,
        targets: impl IntoIterator<Item = (Arc<str>, Delivery)>,
        metrics: &Metrics,
    ) -> Undelivered {
        let clients = self.clients.read().unwrap_or_else(|e| e.into_inner());
        let mut undelivered = Undelivered::default();
        for (client_id, delivery) in targets {
            let Some(handle) = clients.get(&client_id) else {
                undelivered.elsewhere.push(client_id);
                continue;
            };
            let mailbox = &handle.mailbox;
            if delivery.qos == QoS::AtMostOnce && !mailbox.has_room() {
                metrics.dropped("mailbox_full");
                continue;
            }
            if !mailbox.push(delivery) {
                // The connection is closing; its session decides what survives.
                continue;
            }
            if !mailbox.has_room() {
                // Stamped once, when the backlog first goes over; +1 keeps 0 free
                // for "within its bound".
                let now = self.millis(Instant::now()).saturating_add(1);
                let _ = mailbox.over_since_ms.compare_exchange(
                    0,
                    now,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
                if undelivered.blocked.iter().all(|b| !Arc::ptr_eq(b, mailbox)) {
                    undelivered.blocked.push(mailbox.clone());
                }
            }
        }
        undelivered
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Target;

    fn delivery() -> Delivery {
        Delivery {
            message: Message {
                topic: Arc::from("t"),
                payload: bytes::Bytes::from_static(b"x"),
                qos: QoS::AtMostOnce,
                retain: false,
                expires_at: None,
                arrival: Default::default(),
                props: None,
            },
            qos: QoS::AtMostOnce,
            ids: Vec::new(),
            retain: false,
            shared: None,
        }
    }

    fn target(client_id: &str) -> Target {
        Target {
            client_id: Arc::from(client_id),
            qos: QoS::AtMostOnce,
            queued: false,
            ids: Vec::new(),
            retain_as_published: false,
            shared: None,
        }
    }

    /// A registry with client "c" attached to a mailbox of capacity 2.
    fn registry() -> (Registry, Arc<Mailbox>) {
        let registry = Registry::new(1, 1);
        let mailbox = Arc::new(Mailbox::new(2, 1 << 20));
        let conn = ConnId {
            node: 1,
            incarnation: 1,
            local: 1,
        };
        registry.open(conn, mailbox.clone());
        registry.attach(Arc::from("c"), conn);
        (registry, mailbox)
    }

    #[test]
    fn a_mailbox_that_just_filled_is_a_burst_and_one_that_stays_full_is_not() {
        let (registry, mailbox) = registry();
        let metrics = Metrics::unregistered();
        let fresh = Duration::from_millis(200);
        assert!(registry.freshly_full(&[target("c")], fresh).is_empty());
        for _ in 0..3 {
            let undelivered = registry.deliver([(Arc::from("c"), delivery())], &metrics);
            assert!(undelivered.elsewhere.is_empty());
        }
        let full = registry.freshly_full(&[target("c"), target("elsewhere")], fresh);
        assert_eq!(full.len(), 1, "over its bound since just now");
        assert!(full[0].1 <= fresh);
        // A queued target reads no mailbox.
        let queued = Target {
            queued: true,
            ..target("c")
        };
        assert!(registry.freshly_full(&[queued], fresh).is_empty());
        std::thread::sleep(Duration::from_millis(30));
        assert!(
            registry
                .freshly_full(&[target("c")], Duration::from_millis(20))
                .is_empty(),
            "full for longer than that: not waited for again"
        );
        // Drained, then over again: a new episode.
        while mailbox.pop().is_some() {}
        for _ in 0..3 {
            registry.deliver([(Arc::from("c"), delivery())], &metrics);
        }
        assert_eq!(
            registry
                .freshly_full(&[target("c")], Duration::from_millis(20))
                .len(),
            1
        );
    }
}

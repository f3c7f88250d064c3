//! The connections this node holds, by client id: how the router reaches a local
//! subscriber, and how the state machine wakes or closes one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use starling_proto::mqtt::QoS;
use tokio::sync::{mpsc, Notify};

use crate::metrics::Metrics;
use crate::state::{ConnId, Message};

/// A message for one subscriber, at the QoS it is delivered with.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: Message,
    pub qos: QoS,
}

/// A connection's mailbox: deliveries in the order they were routed. The channel
/// itself never refuses a message, so order never depends on who waits; the
/// bound is on its backlog: past `capacity`, QoS 0 messages are dropped (and
/// counted), and a publisher whose QoS 1/2 message went past it waits for room
/// before it is acknowledged. Memory stays bounded by the publishers' windows.
#[derive(Clone)]
pub struct Mailbox {
    tx: mpsc::UnboundedSender<Delivery>,
    backlog: Arc<Backlog>,
}

/// How full one mailbox is, and the signal that it has room again.
pub struct Backlog {
    len: AtomicUsize,
    capacity: usize,
    room: Notify,
}

/// The connection's end of its [`Mailbox`].
pub struct MailboxReceiver {
    rx: mpsc::UnboundedReceiver<Delivery>,
    backlog: Arc<Backlog>,
}

impl Mailbox {
    pub fn new(capacity: usize) -> (Mailbox, MailboxReceiver) {
        let (tx, rx) = mpsc::unbounded_channel();
        let backlog = Arc::new(Backlog {
            len: AtomicUsize::new(0),
            capacity: capacity.max(1),
            room: Notify::new(),
        });
        let receiver = MailboxReceiver {
            rx,
            backlog: backlog.clone(),
        };
        (Mailbox { tx, backlog }, receiver)
    }
}

impl Backlog {
    fn has_room(&self) -> bool {
        self.len.load(Ordering::Acquire) <= self.capacity
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

impl MailboxReceiver {
    pub async fn recv(&mut self) -> Option<Delivery> {
        let delivery = self.rx.recv().await;
        self.taken(delivery.is_some());
        delivery
    }

    pub fn try_recv(&mut self) -> Option<Delivery> {
        let delivery = self.rx.try_recv().ok();
        self.taken(delivery.is_some());
        delivery
    }

    fn taken(&self, took: bool) {
        if took {
            let before = self.backlog.len.fetch_sub(1, Ordering::AcqRel);
            if before.saturating_sub(1) <= self.backlog.capacity {
                self.backlog.room.notify_waiters();
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
    pub blocked: Vec<Arc<Backlog>>,
}

/// How to reach one local connection.
#[derive(Clone)]
pub struct ClientHandle {
    pub conn: ConnId,
    /// Read by the connection task; see [`Mailbox`] for its bound.
    pub mailbox: Mailbox,
    /// Notified when the client's replicated queue grew.
    pub wake: Arc<Notify>,
}

pub struct Registry {
    node: u64,
    /// Changes when this node was declared down and starts a new incarnation.
    incarnation: AtomicU64,
    /// Notified when this node's incarnation was declared down by the cluster.
    fenced: Notify,
    /// Set from then until the node's new incarnation is committed.
    is_fenced: AtomicBool,
    /// Client id -> its connection here. Locked for map operations only.
    clients: RwLock<HashMap<Arc<str>, ClientHandle>>,
    /// Connection -> the signal that closes it (takeover).
    kicks: Mutex<HashMap<ConnId, Arc<Notify>>>,
}

impl Registry {
    pub fn new(node: u64, incarnation: u64) -> Registry {
        Registry {
            node,
            incarnation: AtomicU64::new(incarnation),
            fenced: Notify::new(),
            is_fenced: AtomicBool::new(false),
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
        for kick in lock(&self.kicks).values() {
            kick.notify_one();
        }
    }

    /// Registers a connection's kick signal before it connects.
    pub fn open(&self, conn: ConnId, kick: Arc<Notify>) {
        lock(&self.kicks).insert(conn, kick);
    }

    /// Makes `handle` the way to reach `client_id`.
    pub fn attach(&self, client_id: Arc<str>, handle: ClientHandle) {
        let mut clients = self.clients.write().unwrap_or_else(|e| e.into_inner());
        clients.insert(client_id, handle);
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
        if self.is_local(conn) {
            if let Some(kick) = lock(&self.kicks).get(&conn) {
                kick.notify_one();
            }
        }
    }

    /// Tells `client_id`'s connection, if here, that its queue grew.
    pub fn wake(&self, client_id: &str) {
        let clients = self.clients.read().unwrap_or_else(|e| e.into_inner());
        if let Some(handle) = clients.get(client_id) {
            handle.wake.notify_one();
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
            let backlog = &handle.mailbox.backlog;
            if delivery.qos == QoS::AtMostOnce && !backlog.has_room() {
                metrics.dropped("mailbox_full");
                continue;
            }
            backlog.len.fetch_add(1, Ordering::AcqRel);
            if handle.mailbox.tx.send(delivery).is_err() {
                // The connection is closing; its session decides what survives.
                backlog.len.fetch_sub(1, Ordering::AcqRel);
                continue;
            }
            if !backlog.has_room() && undelivered.blocked.iter().all(|b| !Arc::ptr_eq(b, backlog)) {
                undelivered.blocked.push(backlog.clone());
            }
        }
        undelivered
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

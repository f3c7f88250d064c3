//! The clients of a nemesis run, each writing what it does and sees into a
//! `history::Recorder`. All of them speak raw MQTT 3.1.1 (`raw`), so that the
//! packet ids, DUP flags and resends are exactly what is recorded:
//!
//! - publishers with persistent sessions, QoS 1 or 2, one topic each under
//!   `h/data/`, payloads the decimal sequence number, a window of messages in
//!   flight. When the connection ends, when acks stop coming (a paused or cut
//!   off node), or now and then for no reason, they connect to another node
//!   and first send again what was in flight: PUBLISH with DUP and the same
//!   packet id, or PUBREL for what had its PUBREC [MQTT-4.4.0-1];
//! - a retained writer: a publisher of `h/ret/0` with the retain flag, one
//!   message at a time, so values grow in acknowledgement order;
//! - subscribers with persistent sessions on `h/#` (QoS 2 or 1) that move to
//!   another node when the connection ends or pings go unanswered, and now and
//!   then take their session over from another node while the old connection
//!   is still open; now and then they stop reading for a while. A QoS 2
//!   PUBLISH whose packet id awaits PUBREL is not handed over twice
//!   [MQTT-4.3.3-2];
//! - retained readers: fresh clean-session clients that subscribe to
//!   `h/ret/0` on a random node and take the retained value;
//! - will clients: one-off client ids with a QoS 2 will on `h/will/<id>`,
//!   which live a moment and then either drop the socket or send DISCONNECT.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::check::{check, Kind};
use crate::history::{Event, Recorder};
use crate::nemesis::Rng;
use crate::raw::{self, kind, Connect, Raw, Read};

/// The retained topic the writer updates and the readers read.
pub const RETAINED_TOPIC: &str = "h/ret/0";
/// What the subscribers subscribe to: every data topic, the retained topic
/// and the wills.
pub const FILTER: &str = "h/#";
const WILL_PREFIX: &str = "h/will/";

/// How long one connection attempt may take, CONNACK included.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a client keeps looking for a node that takes it.
const GIVE_UP: Duration = Duration::from_secs(90);
/// A publisher whose oldest message has waited this long for its ack moves.
const ACK_TIMEOUT: Duration = Duration::from_secs(4);
/// A subscriber pings this often and moves when nothing came back for
/// `PING_TIMEOUT`.
const PING_EVERY: Duration = Duration::from_secs(1);
const PING_TIMEOUT: Duration = Duration::from_secs(4);
/// How long a stopping publisher keeps trying to get its acks.
const DRAIN: Duration = Duration::from_secs(30);

/// node id -> MQTT port.
pub type Nodes = Vec<(u64, u16)>;

/// Connects to some node other than `avoid` (unless it is the only one),
/// trying them in turn; the connection, the node and the session-present flag.
async fn connect_somewhere(
    nodes: &Nodes,
    rng: &mut Rng,
    avoid: Option<u64>,
    connect: &Connect,
) -> Option<(Raw, u64, bool)> {
    let deadline = Instant::now() + GIVE_UP;
    let mut at = rng.below(nodes.len() as u64) as usize;
    while Instant::now() < deadline {
        let (id, port) = nodes[at % nodes.len()];
        at += 1;
        if Some(id) == avoid && nodes.len() > 1 {
            continue;
        }
        if let Ok(Ok((conn, session_present, 0))) =
            tokio::time::timeout(CONNECT_TIMEOUT, Raw::try_connect_with(port, connect)).await
        {
            return Some((conn, id, session_present));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// What a publisher is told to do.
#[derive(Debug, Clone)]
pub struct PublisherSpec {
    pub client: String,
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    /// Messages in flight at most.
    pub window: usize,
    /// At most one new message per `pace`.
    pub pace: Duration,
}

struct InFlight {
    pkid: u16,
    /// PUBREC received (QoS 2): PUBREL is what goes again.
    received: bool,
    sent: Instant,
}

struct PublisherRun {
    spec: PublisherSpec,
    nodes: Nodes,
    recorder: Recorder,
    rng: Rng,
    stop: watch::Receiver<bool>,
    next_seq: u32,
    /// seq -> state, kept across connections: the session is persistent.
    in_flight: BTreeMap<u32, InFlight>,
    conns: u32,
}

/// Why a publisher's connection ended.
enum End {
    /// Connection lost, no acks, or a move by choice.
    Move,
    /// Stopped and nothing left in flight.
    Done,
}

impl PublisherRun {
    async fn run(mut self) {
        let mut node = None;
        let mut stopped_at: Option<Instant> = None;
        loop {
            if *self.stop.borrow() {
                let since = *stopped_at.get_or_insert_with(Instant::now);
                if self.in_flight.is_empty() || since.elapsed() > DRAIN {
                    break;
                }
            }
            let connect = Connect::v311(&self.spec.client).clean_session(false);
            let Some((conn, id, session_present)) =
                connect_somewhere(&self.nodes, &mut self.rng, node, &connect).await
            else {
                break;
            };
            node = Some(id);
            self.conns += 1;
            self.recorder.record(Event::Connect {
                t: self.recorder.now(),
                client: self.spec.client.clone(),
                node: id,
                conn: self.conns,
                clean: false,
                session_present,
            });
            if let End::Done = self.connection(conn, id).await {
                break;
            }
        }
        for (seq, _) in std::mem::take(&mut self.in_flight) {
            self.recorder.record(Event::Unknown {
                t: self.recorder.now(),
                client: self.spec.client.clone(),
                topic: self.spec.topic.clone(),
                seq,
            });
        }
    }

    fn publish_bytes(&self, seq: u32, pkid: u16, dup: bool) -> Vec<u8> {
        raw::publish(
            self.spec.topic.as_bytes(),
            self.spec.qos,
            self.spec.retain,
            dup,
            pkid,
            seq.to_string().as_bytes(),
        )
    }

    async fn connection(&mut self, mut conn: Raw, node: u64) -> End {
        // What was in flight goes first, in order.
        let seqs: Vec<u32> = self.in_flight.keys().copied().collect();
        for seq in seqs {
            let (pkid, received) = {
                let entry = self.in_flight.get_mut(&seq).expect("in flight");
                entry.sent = Instant::now();
                (entry.pkid, entry.received)
            };
            let bytes = if received {
                raw::pubrel(pkid)
            } else {
                self.recorder.record(Event::Resend {
                    t: self.recorder.now(),
                    client: self.spec.client.clone(),
                    node,
                    topic: self.spec.topic.clone(),
                    seq,
                });
                self.publish_bytes(seq, pkid, true)
            };
            if conn.try_send(&bytes).await.is_err() {
                return End::Move;
            }
        }
        let move_at = Instant::now()
            + self
                .rng
                .between(Duration::from_secs(5), Duration::from_secs(30));
        let mut next_send = Instant::now();
        loop {
            let stopping = *self.stop.borrow();
            if stopping && self.in_flight.is_empty() {
                let _ = conn.try_send(&raw::DISCONNECT).await;
                return End::Done;
            }
            let oldest = self.in_flight.values().map(|f| f.sent).min();
            if oldest.is_some_and(|sent| sent.elapsed() > ACK_TIMEOUT)
                || (!stopping && Instant::now() > move_at)
            {
                return End::Move;
            }
            if !stopping && self.in_flight.len() < self.spec.window && Instant::now() >= next_send {
                next_send = Instant::now() + self.spec.pace;
                let seq = self.next_seq;
                self.next_seq += 1;
                let pkid = u16::try_from(seq % 60_000 + 1).expect("below 60001");
                self.recorder.record(Event::Invoke {
                    t: self.recorder.now(),
                    client: self.spec.client.clone(),
                    node,
                    topic: self.spec.topic.clone(),
                    seq,
                    qos: self.spec.qos,
                    retain: self.spec.retain,
                });
                self.in_flight.insert(
                    seq,
                    InFlight {
                        pkid,
                        received: false,
                        sent: Instant::now(),
                    },
                );
                if conn
                    .try_send(&self.publish_bytes(seq, pkid, false))
                    .await
                    .is_err()
                {
                    return End::Move;
                }
            }
            let wait = next_send
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(5), Duration::from_millis(100));
            let packet = match conn.read(wait).await {
                Read::Packet(packet) => packet,
                Read::Timeout => continue,
                Read::Closed => return End::Move,
            };
            let pkid = match packet.kind() {
                kind::PUBACK | kind::PUBREC | kind::PUBCOMP if packet.body().len() >= 2 => {
                    packet.pkid()
                }
                _ => continue,
            };
            let Some(seq) = self
                .in_flight
                .iter()
                .find(|(_, f)| f.pkid == pkid)
                .map(|(seq, _)| *seq)
            else {
                continue;
            };
            let done = match (packet.kind(), self.spec.qos) {
                (kind::PUBACK, 1) | (kind::PUBCOMP, 2) => true,
                (kind::PUBREC, 2) => {
                    if let Some(entry) = self.in_flight.get_mut(&seq) {
                        entry.received = true;
                    }
                    if conn.try_send(&raw::pubrel(pkid)).await.is_err() {
                        return End::Move;
                    }
                    false
                }
                _ => false,
            };
            if done {
                self.in_flight.remove(&seq);
                self.recorder.record(Event::Ok {
                    t: self.recorder.now(),
                    client: self.spec.client.clone(),
                    node,
                    topic: self.spec.topic.clone(),
                    seq,
                });
            }
        }
    }
}

struct SubscriberRun {
    client: String,
    qos: u8,
    nodes: Nodes,
    recorder: Recorder,
    rng: Rng,
    stop: watch::Receiver<bool>,
    conns: u32,
    subscribed: bool,
    /// QoS 2 packet ids PUBREC was sent for and PUBREL not yet seen, kept
    /// across connections as the session is.
    awaiting_pubrel: HashSet<u16>,
}

impl SubscriberRun {
    async fn run(mut self) {
        let mut node = None;
        let mut old: Option<Raw> = None;
        while !*self.stop.borrow() {
            let connect = Connect::v311(&self.client)
                .clean_session(false)
                .keep_alive(10);
            let Some((mut conn, id, session_present)) =
                connect_somewhere(&self.nodes, &mut self.rng, node, &connect).await
            else {
                return;
            };
            // A takeover: the old connection stayed open until now.
            drop(old.take());
            node = Some(id);
            self.conns += 1;
            self.recorder.record(Event::Connect {
                t: self.recorder.now(),
                client: self.client.clone(),
                node: id,
                conn: self.conns,
                clean: false,
                session_present,
            });
            if !self.subscribed || !session_present {
                let sent = conn
                    .try_send(&raw::subscribe(1, &[(FILTER, self.qos)]))
                    .await;
                if sent.is_err() {
                    continue;
                }
            }
            if self.receive(&mut conn, id).await {
                // Moving by choice: take the session over before letting go.
                old = Some(conn);
            }
        }
    }

    /// Handles packets until the connection ends (false) or it is time to
    /// move while it still works (true).
    async fn receive(&mut self, conn: &mut Raw, node: u64) -> bool {
        let move_at = Instant::now()
            + self
                .rng
                .between(Duration::from_secs(4), Duration::from_secs(15));
        let mut pause_at = Instant::now()
            + self
                .rng
                .between(Duration::from_secs(2), Duration::from_secs(10));
        let mut last_heard = Instant::now();
        let mut next_ping = Instant::now() + PING_EVERY;
        loop {
            if *self.stop.borrow() {
                return false;
            }
            if Instant::now() > move_at {
                return true;
            }
            if Instant::now() > pause_at {
                // A slow application: nothing is read or acknowledged.
                let pause = self
                    .rng
                    .between(Duration::from_millis(300), Duration::from_secs(3));
                tokio::time::sleep(pause).await;
                pause_at = Instant::now()
                    + self
                        .rng
                        .between(Duration::from_secs(2), Duration::from_secs(10));
                last_heard = Instant::now();
            }
            if Instant::now() >= next_ping {
                next_ping = Instant::now() + PING_EVERY;
                if conn.try_send(&raw::PINGREQ).await.is_err() {
                    return false;
                }
            }
            if last_heard.elapsed() > PING_TIMEOUT {
                return false;
            }
            let packet = match conn.read(Duration::from_millis(100)).await {
                Read::Packet(packet) => packet,
                Read::Timeout => continue,
                Read::Closed => return false,
            };
            last_heard = Instant::now();
            let reply = match packet.kind() {
                kind::PUBLISH => self.delivered(&packet, node),
                kind::PUBREL if packet.body().len() >= 2 => {
                    self.awaiting_pubrel.remove(&packet.pkid());
                    Some(raw::pubcomp(packet.pkid()))
                }
                kind::SUBACK => {
                    if packet.body().get(2).is_none_or(|code| *code > 2) {
                        // 0x80: refused (a node without quorum, say). Try
                        // another node, which subscribes again.
                        self.subscribed = false;
                        return false;
                    }
                    self.subscribed = true;
                    self.recorder.record(Event::Subscribed {
                        t: self.recorder.now(),
                        client: self.client.clone(),
                        node,
                        filter: FILTER.to_owned(),
                    });
                    None
                }
                _ => None,
            };
            if let Some(reply) = reply {
                if conn.try_send(&reply).await.is_err() {
                    return false;
                }
            }
        }
    }

    /// Records a PUBLISH and returns the ack to send.
    fn delivered(&mut self, packet: &raw::RawPacket, node: u64) -> Option<Vec<u8>> {
        let publish = packet.publish();
        let fresh = publish.qos < 2 || self.awaiting_pubrel.insert(publish.pkid);
        let t = self.recorder.now();
        if let Some(of) = publish.topic.strip_prefix(WILL_PREFIX) {
            if fresh {
                self.recorder.record(Event::WillDelivery {
                    t,
                    client: self.client.clone(),
                    node,
                    conn: self.conns,
                    of: of.to_owned(),
                    qos: publish.qos,
                });
            }
        } else if let Some(seq) = std::str::from_utf8(&publish.payload)
            .ok()
            .and_then(|s| s.parse().ok())
        {
            self.recorder.record(Event::Delivery {
                t,
                client: self.client.clone(),
                node,
                conn: self.conns,
                topic: publish.topic.clone(),
                seq,
                qos: publish.qos,
                dup: publish.dup,
                retain: publish.retain,
                fresh,
            });
        }
        match publish.qos {
            1 => Some(raw::puback(publish.pkid)),
            2 => Some(raw::pubrec(publish.pkid)),
            _ => None,
        }
    }
}

/// Fresh clients reading the retained value, one after another.
async fn retained_reader(
    name: String,
    nodes: Nodes,
    recorder: Recorder,
    mut rng: Rng,
    stop: watch::Receiver<bool>,
) {
    let mut k = 0u32;
    while !*stop.borrow() {
        k += 1;
        let client = format!("{name}-{k}");
        let (node, port) = rng.pick(&nodes);
        let connect = Connect::v311(&client);
        if let Ok(Ok((mut conn, _, 0))) =
            tokio::time::timeout(CONNECT_TIMEOUT, Raw::try_connect_with(port, &connect)).await
        {
            let t_start = recorder.now();
            if conn
                .try_send(&raw::subscribe(1, &[(RETAINED_TOPIC, 1)]))
                .await
                .is_ok()
            {
                if let Some(value) = read_retained(&mut conn).await {
                    recorder.record(Event::RetainedRead {
                        t_start,
                        t: recorder.now(),
                        client,
                        node,
                        topic: RETAINED_TOPIC.to_owned(),
                        value,
                    });
                }
            }
            let _ = conn.try_send(&raw::DISCONNECT).await;
        }
        tokio::time::sleep(rng.between(Duration::from_millis(100), Duration::from_millis(500)))
            .await;
    }
}

/// How long a reader waits for the retained value after its SUBACK.
const RETAINED_WAIT: Duration = Duration::from_secs(10);

/// The retained value handed over after the SUBACK: `None` if no read
/// happened (no SUBACK, or the connection ended before a value came),
/// `Some(None)` if the SUBACK came and no retained value within
/// `RETAINED_WAIT`.
async fn read_retained(conn: &mut Raw) -> Option<Option<u32>> {
    let mut deadline = Instant::now() + CONNECT_TIMEOUT;
    let mut acked = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let packet = match conn.read(left).await {
            Read::Packet(packet) => packet,
            Read::Timeout => return acked.then_some(None),
            Read::Closed => return None,
        };
        match packet.kind() {
            kind::SUBACK => {
                if packet.body().get(2).is_none_or(|code| *code > 2) {
                    // Refused: no read happened.
                    return None;
                }
                acked = true;
                deadline = Instant::now() + RETAINED_WAIT;
            }
            kind::PUBLISH => {
                let publish = packet.publish();
                if publish.qos == 1 {
                    let _ = conn.try_send(&raw::puback(publish.pkid)).await;
                }
                if publish.retain {
                    let value = std::str::from_utf8(&publish.payload)
                        .ok()
                        .and_then(|s| s.parse().ok());
                    return Some(value);
                }
            }
            _ => {}
        }
    }
}

/// One-off clients with wills that live a moment and end either way.
async fn will_clients(nodes: Nodes, recorder: Recorder, mut rng: Rng, stop: watch::Receiver<bool>) {
    let mut k = 0u32;
    while !*stop.borrow() {
        k += 1;
        let client = format!("will-{k}");
        let topic = format!("{WILL_PREFIX}{client}");
        let (node, port) = rng.pick(&nodes);
        let connect = Connect::v311(&client).will(&topic, b"gone", 2, false);
        recorder.record(Event::WillConnect {
            t: recorder.now(),
            client: client.clone(),
            node,
            topic,
        });
        let attempt =
            tokio::time::timeout(CONNECT_TIMEOUT, Raw::try_connect_with(port, &connect)).await;
        let (accepted, clean) = match attempt {
            Ok(Ok((mut conn, _, 0))) => {
                let life = rng.between(Duration::from_millis(200), Duration::from_millis(1500));
                let closed = matches!(conn.read(life).await, Read::Closed);
                let clean = !closed && rng.chance(50);
                if clean {
                    let _ = conn.try_send(&raw::DISCONNECT).await;
                    // The broker closes after DISCONNECT; wait a little for it.
                    let _ = conn.read(Duration::from_millis(500)).await;
                }
                (true, clean)
            }
            _ => (false, false),
        };
        recorder.record(Event::WillEnd {
            t: recorder.now(),
            client,
            accepted,
            clean,
        });
        tokio::time::sleep(rng.between(Duration::from_millis(100), Duration::from_millis(800)))
            .await;
    }
}

/// The running clients of one nemesis run.
pub struct Workload {
    recorder: Recorder,
    /// Stops the publishers, readers and will clients.
    stop: watch::Sender<bool>,
    /// Stops the subscribers, once everything has drained.
    stop_subscribers: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    subscribers: Vec<JoinHandle<()>>,
}

/// How many subscribers `Workload::start` runs.
const SUBSCRIBERS: [(u8, &str); 3] = [(2, "sub-q2-a"), (2, "sub-q2-b"), (1, "sub-q1")];

impl Workload {
    /// Starts the subscribers, waits until each has its subscription, then
    /// starts everything else.
    pub async fn start(nodes: Nodes, recorder: &Recorder, seed: u64) -> Workload {
        let mut rng = Rng::new(seed ^ 0x5EED);
        let (stop, stop_rx) = watch::channel(false);
        let (stop_subscribers, subscribers_rx) = watch::channel(false);
        let mut subscribers = Vec::new();
        for (qos, client) in SUBSCRIBERS {
            let run = SubscriberRun {
                client: client.to_owned(),
                qos,
                nodes: nodes.clone(),
                recorder: recorder.clone(),
                rng: Rng::new(rng.next_u64()),
                stop: subscribers_rx.clone(),
                conns: 0,
                subscribed: false,
                awaiting_pubrel: HashSet::new(),
            };
            subscribers.push(tokio::spawn(run.run()));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let subscribed = recorder
                .events()
                .iter()
                .filter(|e| matches!(e, Event::Subscribed { .. }))
                .count();
            if subscribed >= SUBSCRIBERS.len() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "subscribers not subscribed in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let mut specs: Vec<PublisherSpec> = [(1, "p1"), (1, "p2"), (2, "p3"), (2, "p4")]
            .into_iter()
            .map(|(qos, name)| PublisherSpec {
                client: format!("pub-{name}"),
                topic: format!("h/data/{name}"),
                qos,
                retain: false,
                window: 5,
                pace: Duration::from_millis(60),
            })
            .collect();
        specs.push(PublisherSpec {
            client: "pub-retained".to_owned(),
            topic: RETAINED_TOPIC.to_owned(),
            qos: 1,
            retain: true,
            window: 1,
            pace: Duration::from_millis(150),
        });
        let mut tasks = Vec::new();
        for spec in specs {
            let run = PublisherRun {
                spec,
                nodes: nodes.clone(),
                recorder: recorder.clone(),
                rng: Rng::new(rng.next_u64()),
                stop: stop_rx.clone(),
                next_seq: 0,
                in_flight: BTreeMap::new(),
                conns: 0,
            };
            tasks.push(tokio::spawn(run.run()));
        }
        for name in ["reader-a", "reader-b"] {
            tasks.push(tokio::spawn(retained_reader(
                name.to_owned(),
                nodes.clone(),
                recorder.clone(),
                Rng::new(rng.next_u64()),
                stop_rx.clone(),
            )));
        }
        tasks.push(tokio::spawn(will_clients(
            nodes,
            recorder.clone(),
            Rng::new(rng.next_u64()),
            stop_rx,
        )));
        Workload {
            recorder: recorder.clone(),
            stop,
            stop_subscribers,
            tasks,
            subscribers,
        }
    }

    /// Stops publishing (publishers first get their acks, or give up after
    /// `DRAIN`), waits up to `quiet` for every acknowledged message to reach
    /// every subscriber, lets late duplicates and wills arrive, and stops the
    /// subscribers.
    pub async fn finish(self, quiet: Duration) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            task.await.expect("workload client");
        }
        let deadline = Instant::now() + quiet;
        while Instant::now() < deadline && check(&self.recorder.events()).count(Kind::Lost) > 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let _ = self.stop_subscribers.send(true);
        for task in self.subscribers {
            task.await.expect("subscriber");
        }
    }
}

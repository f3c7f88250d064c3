//! Clients that keep working while nodes die: they reconnect to another live
//! node when their connection ends, and keep the bookkeeping a test needs to
//! judge "nothing acknowledged lost, QoS 2 exactly once, in order".
//!
//! Payloads are decimal sequence numbers, one counter per publisher and topic.
//! The subscribers' side is in `subscribers`.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{MqttOptions, QoS};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::{self, Client};
use crate::raw::{self, kind, Connect, Raw, Read};

/// How long a client keeps trying to find a node that takes it.
pub const RECONNECT_DEADLINE: Duration = Duration::from_secs(20);
/// Pause between two connection attempts.
pub const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// The nodes clients may (re)connect to: node id -> MQTT port. A test removes a
/// node before it kills it and adds it back once it is ready again.
#[derive(Clone, Default)]
pub struct Live {
    /// Shared by the test and every roaming client; held only to read or
    /// change the map.
    nodes: Arc<Mutex<BTreeMap<u64, u16>>>,
}

impl Live {
    pub fn new(nodes: impl IntoIterator<Item = (u64, u16)>) -> Live {
        Live {
            nodes: Arc::new(Mutex::new(nodes.into_iter().collect())),
        }
    }

    pub fn add(&self, id: u64, port: u16) {
        self.nodes.lock().expect("live lock").insert(id, port);
    }

    pub fn remove(&self, id: u64) {
        self.nodes.lock().expect("live lock").remove(&id);
    }

    /// The first live node after `after` in id order, wrapping around; `after`
    /// itself only if it is the only one left.
    pub fn next_after(&self, after: u64) -> Option<(u64, u16)> {
        let nodes = self.nodes.lock().expect("live lock");
        nodes
            .range(after + 1..)
            .chain(nodes.range(..=after))
            .next()
            .map(|(id, port)| (*id, *port))
    }

    /// Node `id` if it is live, else the next live one.
    pub fn at_or_after(&self, id: u64) -> Option<(u64, u16)> {
        self.next_after(id.saturating_sub(1))
    }
}

pub fn payload(seq: u32) -> Vec<u8> {
    seq.to_string().into_bytes()
}

pub fn parse_seq(payload: &[u8]) -> Option<u32> {
    std::str::from_utf8(payload).ok()?.parse().ok()
}

/// What a subscriber received, per topic.
#[derive(Debug, Default)]
pub struct Deliveries {
    /// Sequence numbers handed to the application, in arrival order. QoS 1
    /// duplicates are in it; QoS 2 duplicates recognised by packet id are not.
    pub order: BTreeMap<String, Vec<u32>>,
    /// Anything the client saw that breaks the protocol or the test's plan.
    pub problems: Vec<String>,
    /// Connections made, the first one included.
    pub connections: u32,
}

impl Deliveries {
    pub fn record(&mut self, topic: &str, payload: &[u8]) {
        match parse_seq(payload) {
            Some(seq) => self.order.entry(topic.to_string()).or_default().push(seq),
            None => self
                .problems
                .push(format!("unexpected payload {payload:?} on {topic}")),
        }
    }

    /// The distinct sequence numbers received on `topic`.
    pub fn received(&self, topic: &str) -> BTreeSet<u32> {
        self.order
            .get(topic)
            .map(|seqs| seqs.iter().copied().collect())
            .unwrap_or_default()
    }

    /// How often each sequence number was handed over on `topic`, if more than once.
    pub fn duplicates(&self, topic: &str) -> BTreeMap<u32, usize> {
        let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
        for seq in self.order.get(topic).into_iter().flatten() {
            *counts.entry(*seq).or_default() += 1;
        }
        counts.retain(|_, count| *count > 1);
        counts
    }
}

/// A short description of a set, for failure messages.
pub fn summary(set: &BTreeSet<u32>) -> String {
    let first: Vec<_> = set.iter().take(12).collect();
    format!("{} messages, starting {first:?}", set.len())
}

/// Asserts that `subscriber` got every message of `acked` on `topic`, and that
/// the acknowledged ones arrived in publishing order the first time each was
/// seen. Only acknowledged messages count for the order: an unacknowledged one
/// may have been committed after the publisher moved on to another node.
pub fn assert_delivered_in_order(
    subscriber: &str,
    deliveries: &Deliveries,
    topic: &str,
    acked: &BTreeSet<u32>,
) {
    assert!(
        deliveries.problems.is_empty(),
        "{subscriber}: {:?}",
        deliveries.problems
    );
    let received = deliveries.received(topic);
    let missing: BTreeSet<u32> = acked.difference(&received).copied().collect();
    assert!(
        missing.is_empty(),
        "{subscriber} on {topic}: acknowledged but never delivered: {}; acknowledged {}; \
         received {} over {} connections",
        summary(&missing),
        summary(acked),
        summary(&received),
        deliveries.connections
    );
    let mut seen = HashSet::new();
    let mut last: Option<u32> = None;
    for seq in deliveries.order.get(topic).into_iter().flatten() {
        if !acked.contains(seq) || !seen.insert(*seq) {
            continue;
        }
        if let Some(last) = last {
            assert!(
                *seq > last,
                "{subscriber} on {topic}: message {seq} first delivered after {last}"
            );
        }
        last = Some(*seq);
    }
}

/// Waits until `done` holds, checking every 20 ms; false after `timeout`.
pub async fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Connects a rumqttc client, retrying while the cluster settles (a node may
/// answer CONNACK 3 until it has a leader again).
pub async fn connect_retry(options: impl Fn() -> MqttOptions) -> Client {
    let deadline = Instant::now() + RECONNECT_DEADLINE;
    loop {
        match Client::try_connect(options()).await {
            Ok(client) => return client,
            Err(e) => assert!(
                Instant::now() < deadline,
                "no node took the client within {RECONNECT_DEADLINE:?}: {e}"
            ),
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// Connects a raw client, retrying while the cluster settles; returns the
/// session-present flag.
pub async fn raw_connect_retry(port: u16, connect: &Connect) -> (Raw, bool) {
    let deadline = Instant::now() + RECONNECT_DEADLINE;
    loop {
        let why = match Raw::try_connect_with(port, connect).await {
            Ok((raw, session_present, 0)) => return (raw, session_present),
            Ok((_, _, code)) => format!("CONNACK {code}"),
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "node on port {port} did not take {} within {RECONNECT_DEADLINE:?}: {why}",
            connect.client_id
        );
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// Unacknowledged messages a publisher allows itself.
const WINDOW: usize = 10;
/// At most one new message per tick, so a test's message count stays bounded.
const PACE: Duration = Duration::from_millis(5);
/// Sequence numbers stay below this, so that `seq + 1` is a packet id.
const MAX_SEQ: u32 = 60_000;
/// How long a stopping publisher waits for its last acks.
const DRAIN: Duration = Duration::from_secs(3);

/// A raw publisher sending numbered messages at one QoS to one topic, with a
/// window of unacknowledged ones. When its connection ends it connects to the
/// next live node. In the default mode its session is clean and it goes on with
/// the next number: messages left unacknowledged are not sent again, so none
/// can arrive twice because of the publisher. Resending (`start_resending`) it
/// behaves as a real persistent-session client: it resumes its session and
/// first sends again what it had in flight, PUBLISH with DUP for what had no
/// PUBREC (or PUBACK) and PUBREL for what had [MQTT-4.4.0-1].
pub struct Publisher {
    /// Sequence numbers whose PUBACK (QoS 1) or PUBCOMP (QoS 2) arrived.
    acked: Arc<Mutex<BTreeSet<u32>>>,
    progress: watch::Receiver<usize>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Vec<String>>,
}

impl Publisher {
    /// Starts publishing from node `home` (or the next live one).
    pub fn start(live: &Live, home: u64, client_id: &str, topic: &str, qos: u8) -> Publisher {
        Publisher::spawn(live, home, client_id, topic, qos, false)
    }

    /// Like `start`, with a persistent session whose in-flight messages are
    /// sent again on every new connection.
    pub fn start_resending(
        live: &Live,
        home: u64,
        client_id: &str,
        topic: &str,
        qos: u8,
    ) -> Publisher {
        Publisher::spawn(live, home, client_id, topic, qos, true)
    }

    fn spawn(
        live: &Live,
        home: u64,
        client_id: &str,
        topic: &str,
        qos: u8,
        resend: bool,
    ) -> Publisher {
        assert!(qos == 1 || qos == 2, "only acknowledged QoS is tracked");
        let acked = Arc::new(Mutex::new(BTreeSet::new()));
        let (progress_tx, progress) = watch::channel(0usize);
        let (stop, stop_rx) = watch::channel(false);
        let run = PublisherRun {
            live: live.clone(),
            client_id: client_id.to_string(),
            topic: topic.to_string(),
            qos,
            acked: Arc::clone(&acked),
            progress: progress_tx,
            stop: stop_rx,
            next_seq: 0,
            resend,
            in_flight: BTreeMap::new(),
            problems: Vec::new(),
        };
        Publisher {
            acked,
            progress,
            stop,
            task: tokio::spawn(run.run(home)),
        }
    }

    /// How many messages have been acknowledged so far.
    pub fn acked_count(&self) -> usize {
        *self.progress.borrow()
    }

    /// Waits until `more` messages beyond the current count are acknowledged;
    /// panics after `timeout`: the cluster must keep taking messages.
    pub async fn wait_progress(&mut self, more: usize, timeout: Duration, when: &str) {
        let target = self.acked_count() + more;
        let reached = matches!(
            tokio::time::timeout(timeout, self.progress.wait_for(|acked| *acked >= target)).await,
            Ok(Ok(_))
        );
        assert!(
            reached,
            "publisher made no progress {when}: {} acknowledged, waited {timeout:?} for {target}",
            self.acked_count()
        );
    }

    /// Stops sending, waits for the acks still due, and returns the
    /// acknowledged sequence numbers.
    pub async fn finish(self) -> BTreeSet<u32> {
        let _ = self.stop.send(true);
        let problems = tokio::time::timeout(DRAIN + Duration::from_secs(7), self.task)
            .await
            .expect("publisher stops when told")
            .expect("publisher task");
        assert!(problems.is_empty(), "publisher: {problems:?}");
        let acked = self.acked.lock().expect("acked lock").clone();
        acked
    }
}

struct PublisherRun {
    live: Live,
    client_id: String,
    topic: String,
    qos: u8,
    acked: Arc<Mutex<BTreeSet<u32>>>,
    progress: watch::Sender<usize>,
    stop: watch::Receiver<bool>,
    next_seq: u32,
    /// A persistent session whose in-flight messages are sent again.
    resend: bool,
    /// Packet id -> (sequence number, PUBREC received) of the messages sent
    /// and not yet acknowledged. Kept across connections when resending.
    in_flight: BTreeMap<u16, (u32, bool)>,
    problems: Vec<String>,
}

impl PublisherRun {
    async fn run(mut self, home: u64) -> Vec<String> {
        let mut target = self.live.at_or_after(home);
        let mut failing_since: Option<Instant> = None;
        while !*self.stop.borrow() {
            let Some((node, port)) = target else {
                tokio::time::sleep(RETRY_PAUSE).await;
                target = self.live.at_or_after(home);
                continue;
            };
            let connect = Connect::v311(&self.client_id).clean_session(!self.resend);
            match Raw::try_connect_with(port, &connect).await {
                Ok((conn, _, 0)) => {
                    failing_since = None;
                    if self.connection(conn).await {
                        break;
                    }
                }
                Ok(_) | Err(_) => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > RECONNECT_DEADLINE {
                        self.problems.push(format!(
                            "no node took the publisher for {RECONNECT_DEADLINE:?}"
                        ));
                        break;
                    }
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
            target = self.live.next_after(node);
        }
        self.problems
    }

    /// Publishes over one connection until it ends (false) or the publisher has
    /// stopped and drained (true).
    async fn connection(&mut self, conn: Raw) -> bool {
        let Raw {
            mut reader,
            mut writer,
        } = conn;
        if !self.resend {
            self.in_flight.clear();
        }
        // What was in flight on the last connection goes first, in order.
        for (&pkid, &(seq, received)) in &self.in_flight {
            let again = if received {
                raw::pubrel(pkid)
            } else {
                raw::publish(
                    self.topic.as_bytes(),
                    self.qos,
                    false,
                    true,
                    pkid,
                    &payload(seq),
                )
            };
            if write(&mut writer, &again).await.is_err() {
                return false;
            }
        }
        let mut tick = tokio::time::interval(PACE);
        let mut stopping_since: Option<Instant> = None;
        loop {
            if stopping_since.is_none() && *self.stop.borrow() {
                stopping_since = Some(Instant::now());
            }
            if let Some(since) = stopping_since {
                if self.in_flight.is_empty() || since.elapsed() > DRAIN {
                    return true;
                }
            }
            tokio::select! {
                read = reader.read(Duration::from_secs(30)) => {
                    let packet = match read {
                        Read::Packet(packet) => packet,
                        Read::Closed | Read::Timeout => return false,
                    };
                    let reply = match (packet.kind(), self.qos) {
                        (kind::PUBACK, 1) | (kind::PUBCOMP, 2) => {
                            match self.in_flight.remove(&packet.pkid()) {
                                Some((seq, _)) => self.acknowledged(seq),
                                None => self.problems.push(format!("ack for unknown {packet:?}")),
                            }
                            None
                        }
                        (kind::PUBREC, 2) => {
                            if let Some((_, received)) = self.in_flight.get_mut(&packet.pkid()) {
                                *received = true;
                            }
                            Some(raw::pubrel(packet.pkid()))
                        }
                        _ => {
                            self.problems.push(format!("publisher got unexpected {packet:?}"));
                            None
                        }
                    };
                    if let Some(reply) = reply {
                        if write(&mut writer, &reply).await.is_err() {
                            return false;
                        }
                    }
                }
                _ = tick.tick() => {
                    if stopping_since.is_some() || self.in_flight.len() >= WINDOW || self.next_seq >= MAX_SEQ {
                        continue;
                    }
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    let pkid = u16::try_from(seq + 1).expect("MAX_SEQ keeps ids in range");
                    self.in_flight.insert(pkid, (seq, false));
                    let publish =
                        raw::publish(self.topic.as_bytes(), self.qos, false, false, pkid, &payload(seq));
                    if write(&mut writer, &publish).await.is_err() {
                        return false;
                    }
                }
            }
        }
    }

    fn acknowledged(&mut self, seq: u32) {
        let count = {
            let mut acked = self.acked.lock().expect("acked lock");
            acked.insert(seq);
            acked.len()
        };
        let _ = self.progress.send(count);
    }
}

async fn write(writer: &mut tokio::net::tcp::OwnedWriteHalf, bytes: &[u8]) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    writer.write_all(bytes).await
}

/// A clean-session watcher on node `port` subscribed to `filter` at QoS 1.
pub async fn watcher(port: u16, client_id: &str, filter: &str) -> Client {
    let mut watcher = connect_retry(|| client::options(port, client_id)).await;
    watcher.subscribe_ok(filter, QoS::AtLeastOnce).await;
    watcher
}

//! Persistent-session subscribers that follow the live nodes, recording what
//! they receive for `traffic`'s checks.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::{self, Client};
use crate::raw::{self, kind, Connect, Raw, Read};
use crate::traffic::{Deliveries, Live, RECONNECT_DEADLINE, RETRY_PAUSE};

/// A persistent-session subscriber that follows the live nodes: rumqttc for
/// QoS 0 and 1 subscriptions, raw packets for QoS 2, where the test must see
/// packet ids to apply the spec's duplicate rule itself.
pub struct Subscriber {
    deliveries: Arc<Mutex<Deliveries>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Subscriber {
    /// Connects to node `home` with clean_session = 0, subscribes to each
    /// filter at its QoS (all 2, or none 2) and keeps receiving, moving to the
    /// next live node whenever the connection ends.
    pub async fn start(
        live: &Live,
        home: u64,
        client_id: &str,
        filters: &[(&str, u8)],
    ) -> Subscriber {
        let deliveries = Arc::new(Mutex::new(Deliveries::default()));
        let (stop, stop_rx) = watch::channel(false);
        let (node, port) = live.at_or_after(home).expect("a live node");
        let exactly_once = filters.iter().all(|(_, qos)| *qos == 2);
        assert!(
            exactly_once || filters.iter().all(|(_, qos)| *qos < 2),
            "mixing QoS 2 with lower QoS filters is not supported"
        );
        let task = if exactly_once {
            let connect = Connect::v311(client_id).clean_session(false);
            let (mut conn, _) = Raw::connect(port, &connect).await;
            conn.subscribe(1, filters).await;
            let run = Qos2Run {
                live: live.clone(),
                connect,
                deliveries: Arc::clone(&deliveries),
                stop: stop_rx,
                awaiting_pubrel: HashSet::new(),
            };
            tokio::spawn(run.run(node, conn))
        } else {
            let mut client = Client::connect(client::persistent(port, client_id)).await;
            for (filter, qos) in filters {
                client.subscribe_ok(filter, client::qos(*qos)).await;
            }
            let run = Qos1Run {
                live: live.clone(),
                client_id: client_id.to_string(),
                deliveries: Arc::clone(&deliveries),
                stop: stop_rx,
            };
            tokio::spawn(run.run(node, client))
        };
        Subscriber {
            deliveries,
            stop,
            task,
        }
    }

    /// Whether every message of `acked` has arrived on `topic`, or there is
    /// a problem to report already: either way there is no point in waiting.
    pub fn done_waiting(&self, topic: &str, acked: &BTreeSet<u32>) -> bool {
        let deliveries = self.deliveries.lock().expect("deliveries lock");
        !deliveries.problems.is_empty() || acked.is_subset(&deliveries.received(topic))
    }

    /// Stops the client and returns what it received.
    pub async fn finish(self) -> Deliveries {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("subscriber stops when told")
            .expect("subscriber task");
        let deliveries = std::mem::take(&mut *self.deliveries.lock().expect("deliveries lock"));
        deliveries
    }
}

struct Qos1Run {
    live: Live,
    client_id: String,
    deliveries: Arc<Mutex<Deliveries>>,
    stop: watch::Receiver<bool>,
}

impl Qos1Run {
    async fn run(self, mut node: u64, first: Client) {
        let mut client = Some(first);
        loop {
            if let Some(mut connected) = client.take() {
                self.deliveries.lock().expect("deliveries lock").connections += 1;
                if self.receive(&mut connected).await {
                    return;
                }
            }
            // The connection ended: find another node.
            let deadline = Instant::now() + RECONNECT_DEADLINE;
            while client.is_none() {
                if *self.stop.borrow() {
                    return;
                }
                if Instant::now() > deadline {
                    self.problem(format!("no node took {} again", self.client_id));
                    return;
                }
                let Some((next, port)) = self.live.next_after(node) else {
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue;
                };
                node = next;
                match Client::try_connect(client::persistent(port, &self.client_id)).await {
                    Ok(reconnected) => {
                        if !reconnected.session_present {
                            self.problem(format!("session not present on node {node}"));
                        }
                        client = Some(reconnected);
                    }
                    Err(_) => tokio::time::sleep(RETRY_PAUSE).await,
                }
            }
        }
    }

    /// Records publishes until the connection ends (false) or the subscriber
    /// is stopped (true).
    async fn receive(&self, client: &mut Client) -> bool {
        loop {
            if *self.stop.borrow() {
                return true;
            }
            match client.try_recv_publish(Duration::from_millis(100)).await {
                Some(publish) => self.record(&publish.topic, &publish.payload),
                None if client.ended().is_some() => {
                    // Everything read before the end is already queued.
                    while let Some(publish) = client.try_recv_publish(Duration::ZERO).await {
                        self.record(&publish.topic, &publish.payload);
                    }
                    return false;
                }
                None => {}
            }
        }
    }

    fn record(&self, topic: &str, payload: &[u8]) {
        self.deliveries
            .lock()
            .expect("deliveries lock")
            .record(topic, payload);
    }

    fn problem(&self, problem: String) {
        self.deliveries
            .lock()
            .expect("deliveries lock")
            .problems
            .push(problem);
    }
}

/// The QoS 2 subscriber's side of the flow, with the state a client with a
/// persistent session keeps across connections: the packet ids it has sent
/// PUBREC for and not yet seen PUBREL for.
struct Qos2Run {
    live: Live,
    connect: Connect,
    deliveries: Arc<Mutex<Deliveries>>,
    stop: watch::Receiver<bool>,
    awaiting_pubrel: HashSet<u16>,
}

impl Qos2Run {
    async fn run(mut self, mut node: u64, first: Raw) {
        let mut conn = Some(first);
        loop {
            if let Some(connected) = conn.take() {
                self.deliveries.lock().expect("deliveries lock").connections += 1;
                if self.receive(connected).await {
                    return;
                }
            }
            let deadline = Instant::now() + RECONNECT_DEADLINE;
            while conn.is_none() {
                if *self.stop.borrow() {
                    return;
                }
                if Instant::now() > deadline {
                    self.problem(format!("no node took {} again", self.connect.client_id));
                    return;
                }
                let Some((next, port)) = self.live.next_after(node) else {
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue;
                };
                node = next;
                match Raw::try_connect_with(port, &self.connect).await {
                    Ok((reconnected, session_present, 0)) => {
                        if !session_present {
                            self.problem(format!("session not present on node {node}"));
                        }
                        conn = Some(reconnected);
                    }
                    Ok(_) | Err(_) => tokio::time::sleep(RETRY_PAUSE).await,
                }
            }
        }
    }

    /// Runs the flow until the connection ends (false) or the subscriber is
    /// stopped (true).
    async fn receive(&mut self, mut conn: Raw) -> bool {
        loop {
            if *self.stop.borrow() {
                return true;
            }
            let packet = match conn.read(Duration::from_millis(100)).await {
                Read::Packet(packet) => packet,
                Read::Timeout => continue,
                Read::Closed => return false,
            };
            let reply = match packet.kind() {
                kind::PUBLISH => {
                    let publish = packet.publish();
                    if publish.qos != 2 {
                        self.problem(format!(
                            "QoS {} delivery on a QoS 2 subscription",
                            publish.qos
                        ));
                    }
                    // A PUBLISH whose id awaits PUBREL is the same message again
                    // [MQTT-4.3.3-2]: acknowledge it, do not deliver it twice.
                    if self.awaiting_pubrel.insert(publish.pkid) {
                        self.deliveries
                            .lock()
                            .expect("deliveries lock")
                            .record(&publish.topic, &publish.payload);
                    } else if !publish.dup {
                        self.problem(format!(
                            "packet id {} reused before PUBCOMP without DUP",
                            publish.pkid
                        ));
                    }
                    raw::pubrec(publish.pkid)
                }
                kind::PUBREL => {
                    self.awaiting_pubrel.remove(&packet.pkid());
                    raw::pubcomp(packet.pkid())
                }
                _ => {
                    self.problem(format!("QoS 2 subscriber got unexpected {packet:?}"));
                    continue;
                }
            };
            if conn.try_send(&reply).await.is_err() {
                return false;
            }
        }
    }

    fn problem(&self, problem: String) {
        self.deliveries
            .lock()
            .expect("deliveries lock")
            .problems
            .push(problem);
    }
}

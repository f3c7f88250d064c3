//! What a broker acknowledged survives a crash (kill -9) and a clean shutdown
//! (SIGTERM): acknowledged QoS 1 messages arrive at least once, acknowledged QoS 2
//! messages exactly once, and sessions, subscriptions and retained messages are
//! still there after the restart.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::QoS;
use starling_testkit::client::{self, Client};
use starling_testkit::raw::{self, kind, Connect, Raw, Read};
use starling_testkit::Broker;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::watch;

/// Messages the publisher sends.
const N: u32 = 500;
/// Messages the publisher keeps unacknowledged at a time.
const WINDOW: u32 = 20;
/// The broker is killed once this many messages were acknowledged.
const KILL_AFTER: usize = 150;
/// Longest wait for `KILL_AFTER` acknowledgements.
const KILL_DEADLINE: Duration = Duration::from_secs(10);
/// Longest wait, after the restart, for every acknowledged message.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(15);

/// Packet id of message `seq` (ids start at 1).
fn pkid_of(seq: u32) -> u16 {
    u16::try_from(seq + 1).expect("N fits packet ids")
}

fn seq_of_payload(payload: &[u8]) -> u32 {
    std::str::from_utf8(payload)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unexpected payload {payload:?}"))
}

/// A raw publisher that sends `N` messages at `qos` on `topic` with at most
/// `WINDOW` unacknowledged, completing the QoS 2 flow itself. It stops at the
/// first socket error.
struct Publisher {
    /// Sequence numbers whose PUBACK (QoS 1) or PUBCOMP (QoS 2) arrived.
    acked: Arc<Mutex<BTreeSet<u32>>>,
    /// The number of acknowledged messages; closed when the connection ends.
    progress: watch::Receiver<usize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Publisher {
    async fn start(port: u16, client_id: &str, topic: &'static str, qos: u8) -> Publisher {
        let (conn, _) = Raw::connect(port, &Connect::v311(client_id)).await;
        let Raw { mut reader, writer } = conn;
        // The sender writes PUBLISH, the reader writes PUBREL: both share the socket.
        let writer = Arc::new(tokio::sync::Mutex::new(writer));
        let acked = Arc::new(Mutex::new(BTreeSet::new()));
        let (progress_tx, progress) = watch::channel(0usize);

        let reader_task = {
            let writer = Arc::clone(&writer);
            let acked = Arc::clone(&acked);
            tokio::spawn(async move {
                loop {
                    let packet = match reader.read(Duration::from_secs(60)).await {
                        Read::Packet(packet) => packet,
                        Read::Closed | Read::Timeout => return,
                    };
                    let done = match packet.kind() {
                        kind::PUBACK if qos == 1 => true,
                        kind::PUBREC if qos == 2 => {
                            if write(&writer, &raw::pubrel(packet.pkid())).await.is_err() {
                                return;
                            }
                            false
                        }
                        kind::PUBCOMP if qos == 2 => true,
                        _ => panic!("publisher got unexpected {packet:?}"),
                    };
                    if done {
                        let seq = u32::from(packet.pkid())
                            .checked_sub(1)
                            .expect("acks carry the ids we sent, all non-zero");
                        let count = {
                            let mut acked = acked.lock().expect("acked lock");
                            acked.insert(seq);
                            acked.len()
                        };
                        let _ = progress_tx.send(count);
                    }
                }
            })
        };

        let sender_task = {
            let mut progress = progress.clone();
            tokio::spawn(async move {
                for seq in 0..N {
                    // Wait for room in the window; stop when the reader has stopped.
                    let closed = progress
                        .wait_for(|acked| seq < *acked as u32 + WINDOW)
                        .await
                        .is_err();
                    if closed {
                        return;
                    }
                    let publish = raw::publish(
                        topic.as_bytes(),
                        qos,
                        false,
                        false,
                        pkid_of(seq),
                        seq.to_string().as_bytes(),
                    );
                    if write(&writer, &publish).await.is_err() {
                        return;
                    }
                }
            })
        };

        Publisher {
            acked,
            progress,
            tasks: vec![reader_task, sender_task],
        }
    }

    /// Waits until `count` messages were acknowledged, the publisher stopped, or
    /// the deadline passed.
    async fn wait_acked(&mut self, count: usize, timeout: Duration) {
        let _ =
            tokio::time::timeout(timeout, self.progress.wait_for(|acked| *acked >= count)).await;
    }

    /// Waits for both tasks to end (they do once the broker is gone) and returns
    /// the acknowledged sequence numbers.
    async fn finish(self) -> BTreeSet<u32> {
        for task in self.tasks {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("publisher stops after the broker died")
                .expect("publisher task");
        }
        let acked = self.acked.lock().expect("acked lock").clone();
        acked
    }
}

async fn write(writer: &tokio::sync::Mutex<OwnedWriteHalf>, bytes: &[u8]) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut writer = writer.lock().await;
    writer.write_all(bytes).await
}

fn summary(set: &BTreeSet<u32>) -> String {
    let first: Vec<_> = set.iter().take(10).collect();
    format!("{} messages, starting {first:?}", set.len())
}

#[tokio::test]
async fn kill9_loses_no_acknowledged_qos1_message() {
    let mut broker = Broker::start().await;
    let mut sub = Client::connect(client::persistent(broker.port, "durable-q1")).await;
    sub.subscribe_ok("dur/q1", QoS::AtLeastOnce).await;
    sub.disconnect().await;

    let mut publisher = Publisher::start(broker.port, "dur-pub-q1", "dur/q1", 1).await;
    publisher.wait_acked(KILL_AFTER, KILL_DEADLINE).await;
    broker.kill9();
    let acked = publisher.finish().await;
    assert!(
        !acked.is_empty(),
        "no message acknowledged before the crash: nothing to check"
    );

    broker.restart().await;
    let mut sub = Client::connect(client::persistent(broker.port, "durable-q1")).await;
    assert!(
        sub.session_present,
        "the persistent session survived the crash"
    );
    let mut received = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + RECOVERY_DEADLINE;
    while !acked.is_subset(&received) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match sub.try_recv_publish(left).await {
            Some(publish) => {
                assert_eq!(publish.topic, "dur/q1");
                received.insert(seq_of_payload(&publish.payload));
            }
            None => {
                let missing: BTreeSet<u32> = acked.difference(&received).copied().collect();
                panic!(
                    "acknowledged but lost: {}; acknowledged {}; received {}",
                    summary(&missing),
                    summary(&acked),
                    summary(&received)
                );
            }
        }
    }
}

/// A QoS 2 subscriber speaking raw packets, whose state survives reconnections
/// as the spec requires of a client with a persistent session: the packet ids
/// it has sent PUBREC for and not yet seen PUBREL for.
#[derive(Default)]
struct Qos2Subscriber {
    awaiting_pubrel: HashSet<u16>,
    /// Sequence numbers handed to the application, in delivery order.
    delivered: Vec<u32>,
    /// How often each sequence number was handed to the application.
    deliveries: HashMap<u32, u32>,
}

/// Runs the subscriber's side of the QoS 2 flow until the connection ends.
async fn run_qos2_subscriber(mut conn: Raw, state: Arc<Mutex<Qos2Subscriber>>) {
    loop {
        let packet = match conn.read(Duration::from_secs(60)).await {
            Read::Packet(packet) => packet,
            Read::Closed | Read::Timeout => return,
        };
        let reply = match packet.kind() {
            kind::PUBLISH => {
                let publish = packet.publish();
                assert_eq!(publish.qos, 2, "delivered at the subscription's QoS 2");
                let seq = seq_of_payload(&publish.payload);
                let mut state = state.lock().expect("subscriber lock");
                // A PUBLISH whose id awaits PUBREL is the same message again
                // [MQTT-4.3.3-2]: acknowledge it, do not deliver it twice.
                if state.awaiting_pubrel.insert(publish.pkid) {
                    state.delivered.push(seq);
                    *state.deliveries.entry(seq).or_default() += 1;
                }
                raw::pubrec(publish.pkid)
            }
            kind::PUBREL => {
                assert_eq!(packet.first_byte, 0x62, "PUBREL flags");
                state
                    .lock()
                    .expect("subscriber lock")
                    .awaiting_pubrel
                    .remove(&packet.pkid());
                raw::pubcomp(packet.pkid())
            }
            _ => panic!("subscriber got unexpected {packet:?}"),
        };
        if conn.try_send(&reply).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn kill9_delivers_acknowledged_qos2_messages_exactly_once() {
    let mut broker = Broker::start().await;
    let state = Arc::new(Mutex::new(Qos2Subscriber::default()));
    let connect = Connect::v311("durable-q2").clean_session(false);
    let (mut conn, _) = Raw::connect(broker.port, &connect).await;
    conn.subscribe(1, &[("dur/q2", 2)]).await;
    let online = tokio::spawn(run_qos2_subscriber(conn, Arc::clone(&state)));

    let mut publisher = Publisher::start(broker.port, "dur-pub-q2", "dur/q2", 2).await;
    publisher.wait_acked(KILL_AFTER, KILL_DEADLINE).await;
    broker.kill9();
    let acked = publisher.finish().await;
    assert!(
        !acked.is_empty(),
        "no message completed before the crash: nothing to check"
    );
    tokio::time::timeout(Duration::from_secs(10), online)
        .await
        .expect("subscriber sees the broker die")
        .expect("subscriber task");
    let before_crash = state.lock().expect("subscriber lock").delivered.len();

    broker.restart().await;
    let (conn, session_present) = Raw::connect(broker.port, &connect).await;
    assert!(session_present, "the persistent session survived the crash");
    let resumed = tokio::spawn(run_qos2_subscriber(conn, Arc::clone(&state)));

    let all_delivered = || {
        let state = state.lock().expect("subscriber lock");
        acked.iter().all(|seq| state.deliveries.contains_key(seq))
    };
    let waited = tokio::time::timeout(RECOVERY_DEADLINE, async {
        while !all_delivered() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // Give late duplicates a chance to show up before judging.
    tokio::time::sleep(Duration::from_secs(1)).await;
    if resumed.is_finished() {
        // Surfaces a failed assertion inside the subscriber.
        resumed.await.expect("subscriber task");
    } else {
        resumed.abort();
    }

    let state = state.lock().expect("subscriber lock");
    let delivered: BTreeSet<u32> = state.deliveries.keys().copied().collect();
    let missing: BTreeSet<u32> = acked.difference(&delivered).copied().collect();
    assert!(
        waited.is_ok() && missing.is_empty(),
        "PUBCOMP received but never delivered: {}",
        summary(&missing)
    );
    let duplicates: BTreeSet<u32> = state
        .deliveries
        .iter()
        .filter(|(_, count)| **count > 1)
        .map(|(seq, _)| *seq)
        .collect();
    assert!(
        duplicates.is_empty(),
        "delivered more than once: {} ({} delivered before the crash, {} in all)",
        summary(&duplicates),
        before_crash,
        state.delivered.len()
    );
}

/// A persistent subscriber on `keep/#` (offline), a QoS 1 message queued for it,
/// and a retained message.
async fn seed_state(broker: &Broker) {
    let mut sub = Client::connect(client::persistent(broker.port, "keeper")).await;
    sub.subscribe_ok("keep/#", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publisher = Client::connect(client::options(broker.port, "seeder")).await;
    publisher
        .publish("keep/queued", QoS::AtLeastOnce, false, "queued")
        .await;
    publisher
        .publish("retained/config", QoS::AtLeastOnce, true, "retained")
        .await;
    publisher.disconnect().await;
}

/// Checks what `seed_state` left after a restart.
async fn check_state(broker: &Broker) {
    let mut sub = Client::connect(client::persistent(broker.port, "keeper")).await;
    assert!(sub.session_present, "session present after restart");
    let queued = sub.recv_publish(raw::WAIT).await;
    assert_eq!(
        (queued.topic.as_str(), &queued.payload[..]),
        ("keep/queued", &b"queued"[..]),
        "the queued message"
    );

    // The subscription is in force without subscribing again.
    let mut publisher = Client::connect(client::options(broker.port, "after")).await;
    publisher
        .publish("keep/live", QoS::AtLeastOnce, false, "live")
        .await;
    let live = sub.recv_publish(raw::WAIT).await;
    assert_eq!(&live.payload[..], b"live", "subscription kept");

    let mut newcomer = Client::connect(client::options(broker.port, "newcomer")).await;
    newcomer.subscribe_ok("retained/#", QoS::AtLeastOnce).await;
    let retained = newcomer.recv_publish(raw::WAIT).await;
    assert_eq!(&retained.payload[..], b"retained");
    assert!(retained.retain, "sent as a retained message");
}

#[tokio::test]
async fn kill9_keeps_sessions_subscriptions_and_retained_messages() {
    let mut broker = Broker::start().await;
    seed_state(&broker).await;
    broker.kill9();
    broker.restart().await;
    check_state(&broker).await;
}

#[tokio::test]
async fn sigterm_exits_0_and_keeps_sessions_subscriptions_and_retained_messages() {
    let mut broker = Broker::start().await;
    seed_state(&broker).await;
    // A connected client must not hold the shutdown up.
    let connected = Client::connect(client::options(broker.port, "bystander")).await;
    let status = broker.terminate().await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );
    drop(connected);
    broker.restart().await;
    check_state(&broker).await;
}

#[tokio::test]
async fn restart_keeps_acknowledged_messages_of_a_slow_online_subscriber() {
    // The subscriber is online but acknowledges nothing: everything past the
    // in-flight window waits in its queue when the broker dies.
    let mut broker = Broker::start().await;
    let connect = Connect::v311("slow").clean_session(false);
    let (mut conn, _) = Raw::connect(broker.port, &connect).await;
    conn.subscribe(1, &[("dur/slow", 1)]).await;

    let mut publisher = Publisher::start(broker.port, "slow-pub", "dur/slow", 1).await;
    publisher.wait_acked(KILL_AFTER, KILL_DEADLINE).await;
    broker.kill9();
    let acked = publisher.finish().await;
    assert!(
        !acked.is_empty(),
        "no message acknowledged before the crash: nothing to check"
    );
    conn.expect_closed(raw::WAIT).await;

    broker.restart().await;
    let (mut conn, session_present) = Raw::connect(broker.port, &connect).await;
    assert!(session_present);
    let mut received = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + RECOVERY_DEADLINE;
    while !acked.is_subset(&received) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match conn.read(left).await {
            Read::Packet(packet) => {
                let publish = packet.publish();
                conn.send(&raw::puback(publish.pkid)).await;
                received.insert(seq_of_payload(&publish.payload));
            }
            other => {
                let missing: BTreeSet<u32> = acked.difference(&received).copied().collect();
                panic!(
                    "{other:?} with acknowledged messages missing: {}",
                    summary(&missing)
                );
            }
        }
    }
}

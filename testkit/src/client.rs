//! Well-behaved MQTT 3.1.1 clients, built on rumqttc.
//!
//! A task drives each client's event loop and forwards what arrives: PUBLISH
//! packets to one channel, every other packet (acks) to another. It stops at the
//! first error instead of polling again, because rumqttc reconnects on its own
//! when polled after an error and a test must see the disconnect.

use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Outgoing, Packet, Publish, QoS,
    SubscribeReasonCode,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// The default time to wait for something that should happen.
pub const WAIT: Duration = Duration::from_secs(5);

/// Options for a client of the broker on `port`: clean session, keepalive 30 s.
pub fn options(port: u16, client_id: &str) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_clean_session(true);
    options
}

/// Options for a persistent session (clean_session = 0).
pub fn persistent(port: u16, client_id: &str) -> MqttOptions {
    let mut options = options(port, client_id);
    options.set_clean_session(false);
    options
}

pub fn qos(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        _ => panic!("no QoS {level}"),
    }
}

pub fn level(qos: QoS) -> u8 {
    qos as u8
}

/// Why the event loop task stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// We sent DISCONNECT.
    Disconnected,
    /// The connection failed or the broker closed it.
    Error(String),
}

/// A connected rumqttc client and the task driving it.
pub struct Client {
    pub client: AsyncClient,
    /// The CONNACK's session-present flag.
    pub session_present: bool,
    publishes: mpsc::UnboundedReceiver<Publish>,
    acks: mpsc::UnboundedReceiver<Packet>,
    /// Acks read while waiting for a different one.
    stash: Vec<Packet>,
    ended: watch::Receiver<Option<Ended>>,
    /// `None` once the task has been stopped and awaited.
    task: Option<JoinHandle<()>>,
}

impl Client {
    /// Connects; panics unless the broker accepts within `WAIT`.
    pub async fn connect(options: MqttOptions) -> Client {
        match Client::try_connect(options).await {
            Ok(client) => client,
            Err(e) => panic!("MQTT connect failed: {e}"),
        }
    }

    /// Connects; returns the error if the broker refuses or does not answer.
    pub async fn try_connect(options: MqttOptions) -> Result<Client, String> {
        let (client, mut eventloop) = AsyncClient::new(options, 1000);
        // The first poll opens the socket, sends CONNECT and returns the CONNACK.
        let session_present = match tokio::time::timeout(WAIT, eventloop.poll()).await {
            Err(_) => return Err(format!("no CONNACK within {WAIT:?}")),
            Ok(Err(e)) => return Err(e.to_string()),
            Ok(Ok(Event::Incoming(Packet::ConnAck(connack)))) => connack.session_present,
            Ok(Ok(other)) => return Err(format!("expected CONNACK, got {other:?}")),
        };
        let (publish_tx, publishes) = mpsc::unbounded_channel();
        let (ack_tx, acks) = mpsc::unbounded_channel();
        let (ended_tx, ended) = watch::channel(None);
        let task = tokio::spawn(drive(eventloop, publish_tx, ack_tx, ended_tx));
        Ok(Client {
            client,
            session_present,
            publishes,
            acks,
            stash: Vec::new(),
            ended,
            task: Some(task),
        })
    }

    /// Subscribes and returns the SUBACK's return codes.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Vec<SubscribeReasonCode> {
        self.client
            .subscribe(filter, qos)
            .await
            .expect("queue SUBSCRIBE");
        match self.wait_ack(|p| matches!(p, Packet::SubAck(_))).await {
            Packet::SubAck(suback) => suback.return_codes,
            _ => unreachable!(),
        }
    }

    /// Subscribes and asserts the broker granted `qos`.
    pub async fn subscribe_ok(&mut self, filter: &str, qos: QoS) {
        let codes = self.subscribe(filter, qos).await;
        assert_eq!(
            codes,
            vec![SubscribeReasonCode::Success(qos)],
            "SUBACK for {filter}"
        );
    }

    /// Publishes and, for QoS 1 and 2, waits for PUBACK or PUBCOMP. Call it one
    /// message at a time: acks are matched by arrival, not by packet id.
    pub async fn publish(
        &mut self,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: impl Into<Vec<u8>>,
    ) {
        self.client
            .publish(topic, qos, retain, payload.into())
            .await
            .expect("queue PUBLISH");
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                self.wait_ack(|p| matches!(p, Packet::PubAck(_))).await;
            }
            QoS::ExactlyOnce => {
                self.wait_ack(|p| matches!(p, Packet::PubComp(_))).await;
            }
        }
    }

    /// The next incoming packet other than PUBLISH that `wanted` accepts.
    pub async fn wait_ack(&mut self, wanted: impl Fn(&Packet) -> bool) -> Packet {
        if let Some(at) = self.stash.iter().position(&wanted) {
            return self.stash.remove(at);
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.acks.recv()).await {
                Err(_) => panic!(
                    "expected ack not received within {WAIT:?} (ended: {:?})",
                    self.ended()
                ),
                Ok(None) => panic!("event loop stopped: {:?}", self.ended()),
                Ok(Some(packet)) if wanted(&packet) => return packet,
                Ok(Some(packet)) => self.stash.push(packet),
            }
        }
    }

    /// The next PUBLISH, or `None` after `timeout`.
    pub async fn try_recv_publish(&mut self, timeout: Duration) -> Option<Publish> {
        tokio::time::timeout(timeout, self.publishes.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next PUBLISH; panics after `timeout`.
    pub async fn recv_publish(&mut self, timeout: Duration) -> Publish {
        match self.try_recv_publish(timeout).await {
            Some(publish) => publish,
            None => panic!("no PUBLISH within {timeout:?} (ended: {:?})", self.ended()),
        }
    }

    /// Reads messages until one on `topic` whose text payload `wanted`
    /// accepts, and returns that payload; panics after `timeout`, naming the
    /// last payload seen on `topic`. Messages on other topics are skipped.
    pub async fn wait_for_text(
        &mut self,
        topic: &str,
        timeout: Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = None;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(publish) = self.try_recv_publish(left).await else {
                panic!("no acceptable {topic} within {timeout:?}; last seen: {last:?}");
            };
            if publish.topic != topic {
                continue;
            }
            let payload = String::from_utf8(publish.payload.to_vec()).expect("plain text");
            if wanted(&payload) {
                return payload;
            }
            last = Some(payload);
        }
    }

    /// Asserts that no PUBLISH arrives for `duration`.
    pub async fn assert_no_publish(&mut self, duration: Duration) {
        if let Some(publish) = self.try_recv_publish(duration).await {
            panic!("unexpected PUBLISH {publish:?}");
        }
    }

    /// Why the event loop stopped, if it did.
    pub fn ended(&self) -> Option<Ended> {
        self.ended.borrow().clone()
    }

    /// Asserts the connection is still up.
    pub fn assert_connected(&self) {
        assert_eq!(self.ended(), None, "client connection ended");
    }

    /// Sends DISCONNECT and waits until it is written and the socket closed.
    pub async fn disconnect(mut self) {
        self.client.disconnect().await.expect("queue DISCONNECT");
        let mut ended = self.ended.clone();
        let result = tokio::time::timeout(WAIT, ended.wait_for(|e| e.is_some())).await;
        match result {
            Ok(Ok(e)) => assert_eq!(*e, Some(Ended::Disconnected), "disconnect"),
            _ => panic!("DISCONNECT not sent within {WAIT:?}"),
        }
        // The task returns right after DISCONNECT; awaiting it closes the socket.
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(WAIT, task).await;
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Drives the event loop. `publish_tx` and `ack_tx` are read by the `Client`;
/// both are unbounded because a test reads them at its own pace and a test's
/// traffic is small.
async fn drive(
    mut eventloop: EventLoop,
    publish_tx: mpsc::UnboundedSender<Publish>,
    ack_tx: mpsc::UnboundedSender<Packet>,
    ended_tx: watch::Sender<Option<Ended>>,
) {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let _ = publish_tx.send(publish);
            }
            Ok(Event::Incoming(Packet::PingResp)) => {}
            Ok(Event::Incoming(packet)) => {
                let _ = ack_tx.send(packet);
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                let _ = ended_tx.send(Some(Ended::Disconnected));
                return;
            }
            Ok(Event::Outgoing(_)) => {}
            Err(e) => {
                let message = match e {
                    ConnectionError::Io(io) => format!("io: {io}"),
                    other => other.to_string(),
                };
                let _ = ended_tx.send(Some(Ended::Error(message)));
                return;
            }
        }
    }
}

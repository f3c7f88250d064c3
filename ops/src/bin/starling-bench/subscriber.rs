//! One subscriber: a connection that subscribes to one filter, acknowledges what it
//! receives (PUBACK, or PUBREC/PUBCOMP), and accounts for every stream it sees.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use starling_proto::mqtt::{Ack, Packet, Publish, QoS, Subscribe};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::{sleep_until, Instant};

use crate::client::{Client, ClientError, ConnectOpts};
use crate::payload::Header;
use crate::seq::SeqTracker;
use crate::shared::{Phase, Shared, Stats};

/// Packet id of our one SUBSCRIBE.
const SUBSCRIBE_ID: u16 = 1;

/// A stream: the publisher index and the topic it published on.
pub type StreamKey = (u32, Arc<str>);

#[derive(Debug)]
pub struct SubSpec {
    pub filter: String,
    pub qos: QoS,
    pub addr: SocketAddr,
    pub source: Option<IpAddr>,
    pub connect: ConnectOpts,
    /// The streams this subscriber should receive in full (empty when the
    /// publishers are not ours).
    pub expects: Vec<StreamKey>,
    /// Whether payload timestamps share our clock (publishers in this process).
    pub measure_latency: bool,
}

#[derive(Debug, Default)]
pub struct SubOutcome {
    pub streams: HashMap<StreamKey, SeqTracker>,
    /// Publish-to-receive latency in microseconds, of messages sent after warm-up.
    pub latency: Option<Histogram<u64>>,
    pub error: Option<String>,
}

/// Connects and subscribes, reports the connect latency (or failure) on `ready` once
/// SUBACK is in, then receives until the run is drained.
pub async fn run(
    spec: SubSpec,
    shared: Arc<Shared>,
    gate: Arc<Semaphore>,
    ready: mpsc::Sender<Result<Duration, String>>,
) -> SubOutcome {
    let mut receiver = Receiver {
        spec: &spec,
        shared: &shared,
        out: SubOutcome::default(),
        awaiting_rel: HashSet::new(),
        measure_from_ns: None,
        ready: Some(ready),
    };
    let result = receiver.connect_and_receive(gate).await;
    if let Err(e) = result {
        if let Some(ready) = receiver.ready.take() {
            let _ = ready.send(Err(e.to_string())).await;
        } else {
            Stats::add(&shared.stats.errors, 1);
        }
        receiver.out.error = Some(e.to_string());
    }
    receiver.out
}

struct Receiver<'a> {
    spec: &'a SubSpec,
    shared: &'a Shared,
    out: SubOutcome,
    /// QoS 2 packet ids received and not yet released: a repeat is not a new message.
    awaiting_rel: HashSet<u16>,
    /// Set once publishing has started; before that, whatever arrives is stale.
    measure_from_ns: Option<u64>,
    /// Taken once the subscription is acknowledged (or failed).
    ready: Option<mpsc::Sender<Result<Duration, String>>>,
}

impl Receiver<'_> {
    async fn connect_and_receive(&mut self, gate: Arc<Semaphore>) -> Result<(), ClientError> {
        let (mut client, latency) = {
            let Ok(_permit) = gate.acquire().await else {
                return Ok(());
            };
            let started = Instant::now();
            let (client, _) =
                Client::connect(self.spec.addr, self.spec.source, &self.spec.connect).await?;
            (client, started.elapsed())
        };
        client.queue(&Packet::Subscribe(Subscribe {
            packet_id: SUBSCRIBE_ID,
            filters: vec![(self.spec.filter.clone(), self.spec.qos.into())],
            properties: Default::default(),
        }))?;
        client.flush().await?;
        let suback_deadline = Instant::now() + self.spec.connect.timeout;
        let mut phase = self.shared.phase.subscribe();
        let mut drain_until = None;
        let mut sent = None;
        // The phase may have moved on while we connected.
        self.follow(&phase.borrow_and_update(), &mut drain_until, &mut sent);
        Stats::add(&self.shared.stats.connected, 1);
        let result = loop {
            let now = Instant::now();
            if self.ready.is_some() && now >= suback_deadline {
                break Err(ClientError::Timeout("SUBACK"));
            }
            if let Some(until) = drain_until {
                if now >= until || self.has_everything(sent.as_deref()) {
                    break Ok(());
                }
            }
            let mut wake = drain_until.unwrap_or(now + Duration::from_secs(3600));
            if self.ready.is_some() {
                wake = wake.min(suback_deadline);
            }
            if let Some(due) = client.ping_due() {
                wake = wake.min(due);
            }
            tokio::select! {
                read = client.read_more() => if let Err(e) = read { break Err(e) },
                changed = phase.changed() => {
                    if changed.is_err() {
                        break Ok(());
                    }
                    self.follow(&phase.borrow_and_update(), &mut drain_until, &mut sent);
                }
                () = sleep_until(wake) => {}
            }
            // `select!` may pick the read when the phase changed too. Publishing starts
            // only after the phase says so, so whatever was read must be judged by the
            // newest phase, or this run's first messages would pass for stale ones.
            if phase.has_changed().unwrap_or(false) {
                self.follow(&phase.borrow_and_update(), &mut drain_until, &mut sent);
            }
            if let Err(e) = self.handle_packets(&mut client, latency).await {
                break Err(e);
            }
            if client.ping_due().is_some_and(|due| Instant::now() >= due) {
                if let Err(e) = client.on_ping_due() {
                    break Err(e);
                }
            }
            if let Err(e) = client.flush().await {
                break Err(e);
            }
        };
        self.shared
            .stats
            .connected
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if result.is_ok() {
            client.disconnect().await;
        }
        result
    }

    /// Takes in a new phase of the run.
    fn follow(
        &mut self,
        phase: &Phase,
        drain_until: &mut Option<Instant>,
        sent: &mut Option<Arc<Vec<u64>>>,
    ) {
        match phase {
            Phase::Setup => {}
            Phase::Run { measure_from, .. } => {
                self.measure_from_ns = Some(self.shared.since_epoch_ns(*measure_from));
            }
            Phase::Drain { until, sent: s } => {
                *drain_until = Some(*until);
                sent.clone_from(s);
            }
        }
    }

    /// True when every expected stream has all of `sent[publisher]`.
    fn has_everything(&self, sent: Option<&Vec<u64>>) -> bool {
        let Some(sent) = sent else { return false };
        !self.spec.expects.is_empty()
            && self.spec.expects.iter().all(|key| {
                let want = sent.get(key.0 as usize).copied().unwrap_or(0);
                want == 0 || self.out.streams.get(key).is_some_and(|t| t.complete(want))
            })
    }

    async fn handle_packets(
        &mut self,
        client: &mut Client,
        connect_latency: Duration,
    ) -> Result<(), ClientError> {
        let now_ns = self.shared.since_epoch_ns(Instant::now());
        let (mut received, mut bytes, mut stale, mut errors) = (0, 0, 0, 0);
        while let Some(packet) = client.next_packet()? {
            match packet {
                Packet::Publish(publish) => {
                    if !self.acknowledge(client, &publish)? {
                        continue;
                    }
                    if self.measure_from_ns.is_none() {
                        stale += 1;
                        continue;
                    }
                    received += 1;
                    bytes += publish.payload.len() as u64;
                    if !self.account(&publish, now_ns) {
                        errors += 1;
                    }
                }
                Packet::PubRel(Ack { packet_id, .. }) => {
                    self.awaiting_rel.remove(&packet_id);
                    client.queue(&Packet::PubComp(Ack::new(packet_id)))?;
                }
                Packet::SubAck(ack) if ack.packet_id == SUBSCRIBE_ID => {
                    // 0x80 and above: refused (3.1.1 has 0x80 only, MQTT 5 says why).
                    if let Some(code) = ack.codes.iter().find(|code| code.is_error()) {
                        return Err(ClientError::Protocol(format!(
                            "subscription refused: {code:?}"
                        )));
                    }
                    if let Some(ready) = self.ready.take() {
                        let _ = ready.send(Ok(connect_latency)).await;
                    }
                }
                _ => errors += 1,
            }
        }
        let stats = &self.shared.stats;
        Stats::add(&stats.received, received);
        Stats::add(&stats.received_bytes, bytes);
        Stats::add(&stats.stale, stale);
        Stats::add(&stats.errors, errors);
        Ok(())
    }

    /// Queues the acknowledgement a publish needs; false if it is a QoS 2 repeat that
    /// was already counted.
    fn acknowledge(&mut self, client: &mut Client, publish: &Publish) -> Result<bool, ClientError> {
        match publish.qos {
            QoS::AtMostOnce => Ok(true),
            QoS::AtLeastOnce => {
                client.queue(&Packet::PubAck(Ack::new(publish.packet_id)))?;
                Ok(true)
            }
            QoS::ExactlyOnce => {
                client.queue(&Packet::PubRec(Ack::new(publish.packet_id)))?;
                Ok(self.awaiting_rel.insert(publish.packet_id))
            }
        }
    }

    /// Records a message against its stream; false if it carries no bench header.
    fn account(&mut self, publish: &Publish, now_ns: u64) -> bool {
        let Some(header) = Header::read(&publish.payload) else {
            return false;
        };
        self.out
            .streams
            .entry((header.publisher, publish.topic.clone()))
            .or_default()
            .record(header.seq);
        if self.spec.measure_latency && self.measure_from_ns.is_some_and(|m| header.sent_ns >= m) {
            let micros = now_ns.saturating_sub(header.sent_ns) / 1_000;
            // Auto-resizing, so that an idle subscriber costs little and a slow run
            // still fits; `record` grows it (`saturating_record` would clamp instead),
            // and can only fail if it cannot grow, in which case the sample is dropped.
            let _ = self
                .out
                .latency
                .get_or_insert_with(|| Histogram::new(3).expect("3 significant figures is valid"))
                .record(micros);
        }
        true
    }
}

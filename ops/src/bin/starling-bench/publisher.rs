//! One publisher: a connection that publishes numbered, timestamped messages on one
//! topic at its rate, keeping at most `inflight` QoS 1/2 flows open.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use starling_proto::mqtt::{Ack, Packet, Publish, QoS};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::{sleep_until, Instant};

use crate::client::{Client, ClientError, ConnectOpts};
use crate::payload::Header;
use crate::rate::RateLimiter;
use crate::shared::{Phase, Shared, Stats};

/// Most publishes written per flush: enough to amortise the syscall, few enough that
/// acks are read often.
const BATCH: usize = 256;

/// What every publisher of a run shares.
#[derive(Debug)]
pub struct PubConfig {
    pub qos: QoS,
    pub size: usize,
    pub inflight: u16,
    pub count: Option<u64>,
    /// Messages per second for this publisher; 0 for no limit.
    pub rate: f64,
    /// How long to wait for outstanding acks once publishing stops.
    pub drain: Duration,
}

#[derive(Debug)]
pub struct PubSpec {
    pub index: u32,
    pub topic: Arc<str>,
    pub addr: SocketAddr,
    pub source: Option<IpAddr>,
    pub connect: ConnectOpts,
}

#[derive(Debug, Default)]
pub struct PubOutcome {
    pub sent: u64,
    pub acked: u64,
    pub error: Option<String>,
}

/// Where an open QoS 1/2 flow stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// QoS 1, waiting for PUBACK.
    Ack,
    /// QoS 2, waiting for PUBREC.
    Rec,
    /// QoS 2, PUBREL sent, waiting for PUBCOMP.
    Comp,
}

/// Connects, reports the connect latency (or failure) on `ready`, waits for the run
/// to start, publishes, and waits for the acks of what it sent.
pub async fn run(
    spec: PubSpec,
    cfg: Arc<PubConfig>,
    shared: Arc<Shared>,
    gate: Arc<Semaphore>,
    ready: mpsc::Sender<Result<Duration, String>>,
) -> PubOutcome {
    let mut out = PubOutcome::default();
    let mut phase = shared.phase.subscribe();
    let connected = {
        // The gate only spaces out connection attempts; a closed gate means the run
        // is being torn down.
        let Ok(_permit) = gate.acquire().await else {
            return out;
        };
        let started = Instant::now();
        Client::connect(spec.addr, spec.source, &spec.connect)
            .await
            .map(|(client, ack)| (client, ack, started.elapsed()))
    };
    let (mut client, window) = match connected {
        Ok((client, ack, latency)) => {
            let _ = ready.send(Ok(latency)).await;
            // An MQTT 5 broker's Receive Maximum caps the window [MQTT-3.3.4-7].
            let window = ack
                .properties
                .receive_maximum
                .map_or(cfg.inflight, |max| max.min(cfg.inflight));
            (client, window)
        }
        Err(e) => {
            out.error = Some(e.to_string());
            let _ = ready.send(Err(e.to_string())).await;
            return out;
        }
    };
    Stats::add(&shared.stats.connected, 1);
    let stop_at = loop {
        match &*phase.borrow_and_update() {
            Phase::Setup => {}
            Phase::Run { stop_at, .. } => break Some(*stop_at),
            Phase::Drain { .. } => break None,
        }
        if phase.changed().await.is_err() {
            break None;
        }
    };
    let mut stopped = false;
    if let Some(stop_at) = stop_at {
        let mut flow = Flow {
            spec: &spec,
            cfg: &cfg,
            shared: &shared,
            inflight: HashMap::with_capacity(usize::from(window)),
            window,
            next_id: 0,
            out: &mut out,
            stopped: &mut stopped,
        };
        match flow.publish(&mut client, stop_at).await {
            Ok(()) => client.disconnect().await,
            Err(e) => {
                Stats::add(&shared.stats.errors, 1);
                out.error = Some(e.to_string());
            }
        }
    } else {
        client.disconnect().await;
    }
    if !stopped && stop_at.is_some() {
        shared.publisher_stopped();
    }
    shared
        .stats
        .connected
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    out
}

/// The state of one publisher's run.
struct Flow<'a> {
    spec: &'a PubSpec,
    cfg: &'a PubConfig,
    shared: &'a Shared,
    inflight: HashMap<u16, Stage>,
    /// QoS 1/2 publishes that may be unacknowledged at once: `--inflight`, or less
    /// if the broker's Receive Maximum says so.
    window: u16,
    next_id: u16,
    out: &'a mut PubOutcome,
    /// Set once this publisher has told `shared` it stopped publishing.
    stopped: &'a mut bool,
}

impl Flow<'_> {
    async fn publish(&mut self, client: &mut Client, stop_at: Instant) -> Result<(), ClientError> {
        let qos0 = self.cfg.qos == QoS::AtMostOnce;
        let window = usize::from(self.window);
        let limit = self.cfg.count.unwrap_or(u64::MAX);
        // Catching up after a stall may burst by a tenth of a second's worth.
        let burst = (self.cfg.rate / 10.0).ceil().max(1.0) as u64;
        let mut limiter = RateLimiter::new(self.cfg.rate, burst);
        let started = Instant::now();
        let mut scratch = BytesMut::new();
        let mut ack_deadline = None;
        loop {
            let now = Instant::now();
            if ack_deadline.is_none() && (now >= stop_at || self.out.sent >= limit) {
                *self.stopped = true;
                self.shared.publisher_stopped();
                ack_deadline = Some(now + self.cfg.drain);
            }
            if let Some(deadline) = ack_deadline {
                if self.inflight.is_empty() || now >= deadline {
                    return Ok(());
                }
            }
            let room = |inflight: usize| {
                if qos0 {
                    BATCH
                } else {
                    window.saturating_sub(inflight).min(BATCH)
                }
            };
            if ack_deadline.is_none() {
                let want = (room(self.inflight.len()) as u64).min(limit - self.out.sent);
                let n = limiter.take(now - started, want);
                let sent_ns = self.shared.since_epoch_ns(now);
                for _ in 0..n {
                    self.queue_publish(client, &mut scratch, sent_ns)?;
                }
                Stats::add(&self.shared.stats.sent, n);
            }
            if client.ping_due().is_some_and(|due| now >= due) {
                client.on_ping_due()?;
            }
            client.flush().await?;
            // Whether the window (and the count) would let another publish out now;
            // the rate limiter may still say no.
            let may_send =
                ack_deadline.is_none() && self.out.sent < limit && room(self.inflight.len()) > 0;
            if may_send && limiter.unlimited() {
                // More may go out at once: only pick up what acks have arrived, and
                // let the other clients on this thread have a turn.
                while client.try_read_more()? {}
                self.handle_packets(client)?;
                tokio::task::yield_now().await;
                continue;
            }
            if ack_deadline.is_none() && self.out.sent >= limit {
                // Done: the top of the loop turns to waiting for acks.
                continue;
            }
            let mut wake = ack_deadline.unwrap_or(stop_at);
            if may_send {
                if let Some(due) = limiter.next_due() {
                    wake = wake.min(started + due);
                }
            }
            if let Some(due) = client.ping_due() {
                wake = wake.min(due);
            }
            tokio::select! {
                read = client.read_more() => read?,
                () = sleep_until(wake) => {}
            }
            self.handle_packets(client)?;
        }
    }

    fn queue_publish(
        &mut self,
        client: &mut Client,
        scratch: &mut BytesMut,
        sent_ns: u64,
    ) -> Result<(), ClientError> {
        let header = Header {
            publisher: self.spec.index,
            seq: self.out.sent,
            sent_ns,
        };
        header.write(self.cfg.size, scratch);
        // `split` hands the bytes over without copying; once the encoder has copied
        // them into the write buffer and they are dropped, the scratch space is reused.
        let payload = scratch.split().freeze();
        let packet_id = match self.cfg.qos {
            QoS::AtMostOnce => 0,
            qos => {
                let id = self.allocate_id();
                let stage = if qos == QoS::AtLeastOnce {
                    Stage::Ack
                } else {
                    Stage::Rec
                };
                self.inflight.insert(id, stage);
                id
            }
        };
        client.queue(&Packet::Publish(Publish {
            dup: false,
            qos: self.cfg.qos,
            retain: false,
            topic: self.spec.topic.clone(),
            packet_id,
            payload,
            properties: Default::default(),
        }))?;
        self.out.sent += 1;
        Ok(())
    }

    /// The next packet id not in flight; the window is below 65535, so one is free.
    fn allocate_id(&mut self) -> u16 {
        loop {
            self.next_id = self.next_id.wrapping_add(1);
            if self.next_id != 0 && !self.inflight.contains_key(&self.next_id) {
                return self.next_id;
            }
        }
    }

    fn handle_packets(&mut self, client: &mut Client) -> Result<(), ClientError> {
        let mut acked = 0;
        let mut unexpected = 0;
        while let Some(packet) = client.next_packet()? {
            match packet {
                // MQTT 5 reason codes: below 0x80 (0x10 No Matching Subscribers
                // included) the broker took the message; from 0x80 it refused it,
                // which ends the flow too [MQTT-4.3.3-4] but is no acknowledgement.
                Packet::PubAck(Ack {
                    packet_id, reason, ..
                }) if self.inflight.get(&packet_id) == Some(&Stage::Ack) => {
                    self.inflight.remove(&packet_id);
                    if reason.is_error() {
                        unexpected += 1;
                    } else {
                        acked += 1;
                    }
                }
                Packet::PubRec(Ack {
                    packet_id, reason, ..
                }) if reason.is_error() && self.inflight.get(&packet_id) == Some(&Stage::Rec) => {
                    self.inflight.remove(&packet_id);
                    unexpected += 1;
                }
                // A repeated PUBREC (the broker resends it) gets PUBREL again.
                Packet::PubRec(Ack { packet_id, .. })
                    if matches!(
                        self.inflight.get(&packet_id),
                        Some(Stage::Rec | Stage::Comp)
                    ) =>
                {
                    self.inflight.insert(packet_id, Stage::Comp);
                    client.queue(&Packet::PubRel(Ack::new(packet_id)))?;
                }
                Packet::PubComp(Ack {
                    packet_id, reason, ..
                }) if self.inflight.get(&packet_id) == Some(&Stage::Comp) => {
                    self.inflight.remove(&packet_id);
                    if reason.is_error() {
                        unexpected += 1;
                    } else {
                        acked += 1;
                    }
                }
                _ => unexpected += 1,
            }
        }
        self.out.acked += acked;
        Stats::add(&self.shared.stats.acked, acked);
        Stats::add(&self.shared.stats.errors, unexpected);
        Ok(())
    }
}

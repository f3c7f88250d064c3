//! The well-behaved client measured during an attack: a subscriber and a
//! publisher on their own connections, one QoS 1 message at a time from one
//! to the other, each timed from the PUBLISH written to its delivery.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::raw::{self, kind, Connect, Raw, Read};

/// How long one probe message may take before it counts as lost.
pub const LOST_AFTER: Duration = Duration::from_secs(5);

/// What the probe saw.
#[derive(Debug, Clone, Default)]
pub struct ProbeStats {
    /// Messages published.
    pub sent: u64,
    /// Messages delivered to the subscriber and acknowledged to the publisher.
    pub delivered: u64,
    /// Times the probe had to connect again (a message lost, a connection
    /// closed or refused).
    pub reconnects: u64,
    /// The first thing that went wrong, if anything did.
    pub first_error: Option<String>,
    /// Publish-to-delivery times of the delivered messages, in microseconds.
    latencies_us: Vec<u64>,
}

impl ProbeStats {
    /// The `p`th percentile (0 to 100) of the delivery times; zero if none.
    pub fn percentile(&self, p: f64) -> Duration {
        if self.latencies_us.is_empty() {
            return Duration::ZERO;
        }
        let mut sorted = self.latencies_us.clone();
        sorted.sort_unstable();
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        let at = rank.clamp(1, sorted.len()) - 1;
        Duration::from_micros(sorted[at])
    }

    pub fn max(&self) -> Duration {
        Duration::from_micros(self.latencies_us.iter().copied().max().unwrap_or(0))
    }

    /// Messages published and never delivered (or never acknowledged).
    pub fn lost(&self) -> u64 {
        self.sent - self.delivered
    }

    fn failed(&mut self, error: String) {
        self.first_error.get_or_insert(error);
    }
}

/// The probe's two connections.
struct Pair {
    sub: Raw,
    publisher: Raw,
}

impl Pair {
    async fn open(port: u16, id: &str, topic: &str) -> Result<Pair, String> {
        let (mut sub, _, code) =
            Raw::try_connect_with(port, &Connect::v311(&format!("{id}-sub"))).await?;
        if code != 0 {
            return Err(format!("probe subscriber refused: CONNACK {code}"));
        }
        sub.try_send(&raw::subscribe(1, &[(topic, 1)]))
            .await
            .map_err(|e| format!("probe SUBSCRIBE: {e}"))?;
        match sub.read(LOST_AFTER).await {
            Read::Packet(p) if p.first_byte == 0x90 && p.body().get(2) == Some(&1) => {}
            other => return Err(format!("probe SUBSCRIBE not granted QoS 1: {other:?}")),
        }
        let (publisher, _, code) =
            Raw::try_connect_with(port, &Connect::v311(&format!("{id}-pub"))).await?;
        if code != 0 {
            return Err(format!("probe publisher refused: CONNACK {code}"));
        }
        Ok(Pair { sub, publisher })
    }

    /// Publishes message `seq` and waits for it on the subscriber, then for
    /// its PUBACK; returns the publish-to-delivery time.
    async fn round(&mut self, topic: &str, seq: u64) -> Result<Duration, String> {
        let pkid = (seq % u64::from(u16::MAX)) as u16 + 1;
        let payload = seq.to_be_bytes();
        let started = Instant::now();
        let deadline = started + LOST_AFTER;
        self.publisher
            .try_send(&raw::publish(
                topic.as_bytes(),
                1,
                false,
                false,
                pkid,
                &payload,
            ))
            .await
            .map_err(|e| format!("probe PUBLISH: {e}"))?;
        let delivered = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.sub.read(left).await {
                Read::Packet(p) if p.kind() == kind::PUBLISH => {
                    let got = p.publish();
                    if got.qos > 0 {
                        self.sub
                            .try_send(&raw::puback(got.pkid))
                            .await
                            .map_err(|e| format!("probe PUBACK: {e}"))?;
                    }
                    // An earlier message that was given up on may still come.
                    if got.payload == payload {
                        break started.elapsed();
                    }
                }
                Read::Packet(_) => {}
                Read::Closed => return Err("probe subscriber closed by the broker".into()),
                Read::Timeout => return Err(format!("probe message {seq} not delivered")),
            }
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.publisher.read(left).await {
                Read::Packet(p) if p.kind() == kind::PUBACK && p.pkid() == pkid => {
                    return Ok(delivered)
                }
                Read::Packet(_) => {}
                Read::Closed => return Err("probe publisher closed by the broker".into()),
                Read::Timeout => return Err(format!("probe message {seq} not acknowledged")),
            }
        }
    }
}

/// Runs the probe against the broker on `port` until `stop` turns true: one
/// message every `interval` (or as soon as the last one arrived, if it took
/// longer). `id` names its clients and its topic.
pub async fn run(
    port: u16,
    id: &str,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) -> ProbeStats {
    let topic = format!("probe/{id}");
    let mut stats = ProbeStats::default();
    let mut pair: Option<Pair> = None;
    let mut seq = 0u64;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !*stop.borrow() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let current = match pair.as_mut() {
            Some(current) => current,
            None => match Pair::open(port, id, &topic).await {
                Ok(opened) => pair.insert(opened),
                Err(e) => {
                    stats.reconnects += 1;
                    stats.failed(e);
                    continue;
                }
            },
        };
        seq += 1;
        stats.sent += 1;
        match current.round(&topic, seq).await {
            Ok(latency) => {
                stats.delivered += 1;
                stats
                    .latencies_us
                    .push(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
            }
            Err(e) => {
                stats.failed(e);
                stats.reconnects += 1;
                pair = None;
            }
        }
    }
    stats
}

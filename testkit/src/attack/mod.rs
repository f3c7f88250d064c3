//! Bad input at scale: attacks on a broker by many sockets at once, each run
//! for a bounded time while a well-behaved [`probe`] measures how the broker
//! goes on serving. Used by the black-box test `tests/attack.rs` (briefly, a
//! few sockets) and by the `starling-attack` tool behind `bench/attack` (at
//! scale, against Starling or another broker).
//!
//! Every attacker socket runs one operation after another until the
//! attack's time is up; every wait in an operation is bounded, and what is
//! still running a grace period after the end is aborted.

pub mod bad;
pub mod probe;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::raw::{self, kind, Connect, Raw, Read};
use bad::Before;
pub use probe::ProbeStats;

/// The classes of attack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attack {
    /// Malformed packets and protocol violations of every class
    /// ([`bad::cases`]), each on a new connection.
    Malformed,
    /// Sockets that connect and send nothing, and sockets that send CONNECT
    /// (keepalive 1 s) and then neither send nor read.
    HalfOpen,
    /// A CONNECT sent one byte at a time, a few hundred milliseconds apart.
    Slowloris,
    /// Fixed headers announcing a remaining length of 256 MiB, before and
    /// after CONNECT, followed by as much body as the broker takes.
    HugeLength,
    /// CONNECTs from many sockets with one client id: each takes the session
    /// over from the last.
    TakeoverStorm,
    /// SUBSCRIBEs of many distinct deep wildcard filters, over and over on
    /// new connections.
    SubscribeStorm,
    /// Retained QoS 1 messages to ever new topics.
    RetainedFlood,
}

impl Attack {
    pub const ALL: [Attack; 7] = [
        Attack::Malformed,
        Attack::HalfOpen,
        Attack::Slowloris,
        Attack::HugeLength,
        Attack::TakeoverStorm,
        Attack::SubscribeStorm,
        Attack::RetainedFlood,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Attack::Malformed => "malformed",
            Attack::HalfOpen => "half_open",
            Attack::Slowloris => "slowloris",
            Attack::HugeLength => "huge_length",
            Attack::TakeoverStorm => "takeover_storm",
            Attack::SubscribeStorm => "subscribe_storm",
            Attack::RetainedFlood => "retained_flood",
        }
    }

    pub fn from_name(name: &str) -> Option<Attack> {
        Attack::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// How an attack is run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The broker's MQTT port on 127.0.0.1.
    pub port: u16,
    /// Attacker sockets open at once (one task each).
    pub sockets: usize,
    /// How long attackers start new operations.
    pub duration: Duration,
    /// How long operations under way at the end may finish before they are
    /// aborted.
    pub grace: Duration,
    /// One probe message every this long.
    pub probe_interval: Duration,
    /// Names this run's client ids and topics, apart from any other run.
    pub nonce: String,
    /// Slowloris: the time between two bytes.
    pub slowloris_gap: Duration,
    /// How long a broker may take to close a connection it must close
    /// (a bad packet, a silent socket): past it the operation counts as
    /// left open.
    pub close_within: Duration,
    /// Subscription storm: levels of each filter (four times as many for one
    /// in ten), and filters per connection (sent ten to a SUBSCRIBE).
    pub filter_levels: usize,
    pub filters_per_connection: usize,
    /// Retained flood: payload bytes of each message.
    pub retained_payload: usize,
}

impl Settings {
    /// Settings for a short run against the broker on `port`.
    pub fn new(port: u16, sockets: usize, duration: Duration) -> Settings {
        Settings {
            port,
            sockets,
            duration,
            grace: Duration::from_secs(15),
            probe_interval: Duration::from_millis(20),
            nonce: format!("{}-{}", std::process::id(), port),
            slowloris_gap: Duration::from_millis(300),
            close_within: Duration::from_secs(12),
            filter_levels: 24,
            filters_per_connection: 100,
            retained_payload: 1024,
        }
    }
}

/// What the attackers did: operations begun, how they ended.
#[derive(Debug, Default)]
struct Tally {
    ops: AtomicU64,
    closed: AtomicU64,
    left_open: AtomicU64,
    errors: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
}

/// What an attack gave.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub attack: Attack,
    pub elapsed: Duration,
    /// Operations the attackers began: connections for most attacks,
    /// filters for the subscription storm, messages for the retained flood.
    pub ops: u64,
    /// Attacker connections the broker closed within `close_within`.
    pub closed: u64,
    /// Attacker connections the broker left open past `close_within` when
    /// it should have closed them.
    pub left_open: u64,
    /// Attacker connections refused or failed before their operation.
    pub errors: u64,
    /// Subscription storm: filters granted and refused; retained flood:
    /// messages acknowledged; takeover storm: CONNACKs accepted.
    pub accepted: u64,
    pub refused: u64,
    pub probe: ProbeStats,
}

/// Runs `attack` with `settings` while the probe measures, and returns what
/// both saw. Takes at most `duration + grace` and the probe's last message.
pub async fn run(attack: Attack, settings: &Settings) -> Outcome {
    let settings = Arc::new(settings.clone());
    let tally = Arc::new(Tally::default());
    let (stop_probe, stopped) = watch::channel(false);
    let probe_id = format!("probe-{}-{}", settings.nonce, attack.name());
    let probe = tokio::spawn({
        let (port, interval) = (settings.port, settings.probe_interval);
        async move { probe::run(port, &probe_id, interval, stopped).await }
    });
    let started = Instant::now();
    let deadline = started + settings.duration;
    let mut attackers = JoinSet::new();
    for task in 0..settings.sockets {
        let (settings, tally) = (settings.clone(), tally.clone());
        attackers.spawn(async move {
            let mut round = 0usize;
            while Instant::now() < deadline {
                tally.ops.fetch_add(1, Relaxed);
                let one = Attacker {
                    settings: &settings,
                    tally: &tally,
                    task,
                    round,
                };
                one.run(attack).await;
                round += 1;
            }
        });
    }
    let end = deadline + settings.grace;
    while tokio::time::timeout_at(end, attackers.join_next())
        .await
        .is_ok_and(|joined| joined.is_some())
    {}
    attackers.shutdown().await;
    let elapsed = started.elapsed();
    let _ = stop_probe.send(true);
    let probe = probe.await.unwrap_or_else(|e| {
        let mut failed = ProbeStats::default();
        failed.first_error = Some(format!("probe task failed: {e}"));
        failed
    });
    let count = |n: &AtomicU64| n.load(Relaxed);
    Outcome {
        attack,
        elapsed,
        ops: count(&tally.ops),
        closed: count(&tally.closed),
        left_open: count(&tally.left_open),
        errors: count(&tally.errors),
        accepted: count(&tally.accepted),
        refused: count(&tally.refused),
        probe,
    }
}

/// One operation of one attacker task.
struct Attacker<'a> {
    settings: &'a Settings,
    tally: &'a Tally,
    task: usize,
    round: usize,
}

impl Attacker<'_> {
    async fn run(&self, attack: Attack) {
        let result = match attack {
            Attack::Malformed => self.malformed().await,
            Attack::HalfOpen => self.half_open().await,
            Attack::Slowloris => self.slowloris().await,
            Attack::HugeLength => self.huge_length().await,
            Attack::TakeoverStorm => self.takeover().await,
            Attack::SubscribeStorm => self.subscribe_storm().await,
            Attack::RetainedFlood => self.retained_flood().await,
        };
        if result.is_err() {
            self.tally.errors.fetch_add(1, Relaxed);
            // A broker that refuses connections is not hammered in a loop.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn client_id(&self, what: &str) -> String {
        format!(
            "{what}-{}-{}-{}",
            self.settings.nonce, self.task, self.round
        )
    }

    /// Counts whether the broker closes `conn` within `close_within`.
    async fn expect_closed(&self, conn: &mut Raw) {
        if conn.closed_within(self.settings.close_within).await {
            self.tally.closed.fetch_add(1, Relaxed);
        } else {
            self.tally.left_open.fetch_add(1, Relaxed);
        }
    }

    /// A connection that sent `before`, accepted.
    async fn open(&self, before: Before) -> Result<Raw, String> {
        let id = self.client_id("bad");
        let connect = match before {
            Before::Nothing => return Raw::try_tcp(self.settings.port).await,
            Before::Connect311 => Connect::v311(&id).encode(),
            Before::Connect5 => bad::connect_v5(&id, &[]),
        };
        let mut conn = Raw::try_tcp(self.settings.port).await?;
        conn.try_send(&connect).await.map_err(|e| e.to_string())?;
        match conn.read(raw::WAIT).await {
            Read::Packet(p) if p.kind() == kind::CONNACK && p.body().get(1) == Some(&0) => Ok(conn),
            other => Err(format!("CONNECT not accepted: {other:?}")),
        }
    }

    async fn malformed(&self) -> Result<(), String> {
        let cases = bad::cases(&self.client_id("bad"));
        let case = &cases[(self.task + self.round) % cases.len()];
        let mut conn = self.open(case.before).await?;
        // The broker may close before it has read everything.
        let _ = conn.try_send(&case.bytes).await;
        self.expect_closed(&mut conn).await;
        Ok(())
    }

    async fn half_open(&self) -> Result<(), String> {
        let mut conn = Raw::try_tcp(self.settings.port).await?;
        if self.task % 2 == 1 {
            // CONNECT with a keepalive of 1 s, then nothing: not a byte sent,
            // not a byte read until the broker must have given up on it.
            let connect = Connect::v311(&self.client_id("mute")).keep_alive(1);
            conn.try_send(&connect.encode())
                .await
                .map_err(|e| e.to_string())?;
            tokio::time::sleep(Duration::from_millis(2_500)).await;
        }
        self.expect_closed(&mut conn).await;
        Ok(())
    }

    async fn slowloris(&self) -> Result<(), String> {
        // A long client id: the CONNECT takes longer to dribble than any
        // sensible connect timeout.
        let id = format!("{}-{}", self.client_id("slow"), "s".repeat(64));
        let bytes = Connect::v311(&id).encode();
        let mut conn = Raw::try_tcp(self.settings.port).await?;
        let started = Instant::now();
        for byte in &bytes {
            if conn.try_send(&[*byte]).await.is_err() {
                self.tally.closed.fetch_add(1, Relaxed);
                return Ok(());
            }
            // The gap between bytes, spent watching for the close.
            if let Read::Closed = conn.read(self.settings.slowloris_gap).await {
                self.tally.closed.fetch_add(1, Relaxed);
                return Ok(());
            }
            if started.elapsed() > self.settings.close_within {
                break;
            }
        }
        self.tally.left_open.fetch_add(1, Relaxed);
        Ok(())
    }

    async fn huge_length(&self) -> Result<(), String> {
        // 268,435,455: the largest remaining length there is.
        const MAX_LENGTH: [u8; 4] = [0xFF, 0xFF, 0xFF, 0x7F];
        let (before, first) = if self.task % 2 == 0 {
            (Before::Nothing, 0x10)
        } else {
            (Before::Connect311, 0x30)
        };
        let mut conn = self.open(before).await?;
        let mut header = vec![first];
        header.extend_from_slice(&MAX_LENGTH);
        header.extend(raw::string(b"huge/x"));
        if conn.try_send(&header).await.is_err() {
            self.tally.closed.fetch_add(1, Relaxed);
            return Ok(());
        }
        // As much of the body as the broker takes, up to 1 MiB.
        let chunk = vec![b'x'; 16 * 1024];
        for _ in 0..64 {
            let write = tokio::time::timeout(Duration::from_secs(1), conn.try_send(&chunk));
            if !matches!(write.await, Ok(Ok(()))) {
                break;
            }
        }
        self.expect_closed(&mut conn).await;
        Ok(())
    }

    async fn takeover(&self) -> Result<(), String> {
        // One client id for every socket; half of them persistent sessions.
        let id = format!("storm-{}", self.settings.nonce);
        let connect = Connect::v311(&id).clean_session(self.task % 2 == 0);
        let (mut conn, _, code) = Raw::try_connect_with(self.settings.port, &connect).await?;
        if code != 0 {
            self.tally.refused.fetch_add(1, Relaxed);
            return Ok(());
        }
        self.tally.accepted.fetch_add(1, Relaxed);
        // Long enough for the next socket to take the session over.
        if conn.closed_within(Duration::from_millis(100)).await {
            self.tally.closed.fetch_add(1, Relaxed);
        }
        Ok(())
    }

    async fn subscribe_storm(&self) -> Result<(), String> {
        let id = self.client_id("subs");
        let (mut conn, _, code) =
            Raw::try_connect_with(self.settings.port, &Connect::v311(&id)).await?;
        if code != 0 {
            return Err(format!("CONNACK {code}"));
        }
        let filters: Vec<String> = (0..self.settings.filters_per_connection)
            .map(|n| {
                // One filter in ten four times as deep: past the level limit
                // of a broker that has one.
                let levels = self.settings.filter_levels.max(4) * if n % 10 == 9 { 4 } else { 1 };
                let distinct = format!("{id}-{n}");
                if n % 2 == 0 {
                    // storm/<distinct>/+/+/.../#
                    let mut f = format!("storm/{distinct}");
                    f.push_str(&"/+".repeat(levels - 3));
                    f + "/#"
                } else {
                    // +/+/.../<distinct>/#: wildcards the matcher must walk
                    // for every topic deep enough.
                    let mut f = "+/".repeat(levels - 2);
                    f.push_str(&distinct);
                    f + "/#"
                }
            })
            .collect();
        let mut pkid = 0u16;
        for batch in filters.chunks(10) {
            pkid += 1;
            let wanted: Vec<(&str, u8)> = batch.iter().map(|f| (f.as_str(), 0)).collect();
            conn.try_send(&raw::subscribe(pkid, &wanted))
                .await
                .map_err(|e| e.to_string())?;
            match conn.read(raw::WAIT).await {
                Read::Packet(p) if p.first_byte == 0x90 => {
                    let codes = &p.body()[2.min(p.body().len())..];
                    let refused = codes.iter().filter(|c| **c >= 0x80).count() as u64;
                    self.tally.refused.fetch_add(refused, Relaxed);
                    self.tally
                        .accepted
                        .fetch_add(codes.len() as u64 - refused, Relaxed);
                }
                other => return Err(format!("no SUBACK: {other:?}")),
            }
        }
        let _ = conn.try_send(&raw::DISCONNECT).await;
        Ok(())
    }

    async fn retained_flood(&self) -> Result<(), String> {
        let id = self.client_id("retain");
        let (mut conn, _, code) =
            Raw::try_connect_with(self.settings.port, &Connect::v311(&id)).await?;
        if code != 0 {
            return Err(format!("CONNACK {code}"));
        }
        let payload = vec![b'r'; self.settings.retained_payload];
        // A hundred messages a connection, one at a time, each to a topic
        // of its own.
        for n in 1..=100u16 {
            let topic = format!("flood/{id}/{n}");
            conn.try_send(&raw::publish(topic.as_bytes(), 1, true, false, n, &payload))
                .await
                .map_err(|e| e.to_string())?;
            loop {
                match conn.read(raw::WAIT).await {
                    Read::Packet(p) if p.kind() == kind::PUBACK => break,
                    Read::Packet(_) => {}
                    other => return Err(format!("no PUBACK: {other:?}")),
                }
            }
            self.tally.accepted.fetch_add(1, Relaxed);
        }
        let _ = conn.try_send(&raw::DISCONNECT).await;
        Ok(())
    }
}

/// The counters (`*_total` series) in a Prometheus text exposition, by
/// series (`name{labels}`).
pub fn counters(exposition: &str) -> BTreeMap<String, f64> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let name = series.split('{').next()?;
            name.ends_with("_total")
                .then(|| Some((series.to_owned(), value.parse().ok()?)))
                .flatten()
        })
        .collect()
}

/// The series that went up between two readings of [`counters`], and by how
/// much.
pub fn moved(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> Vec<(String, u64)> {
    after
        .iter()
        .filter_map(|(series, value)| {
            let by = value - before.get(series).copied().unwrap_or(0.0);
            (by > 0.0).then(|| (series.clone(), by as u64))
        })
        .collect()
}

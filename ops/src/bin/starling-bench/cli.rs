//! The command line: a scenario and its options.

use clap::{Parser, ValueEnum};
use serde::Serialize;

/// An MQTT load generator for Starling (and any MQTT 3.1.1 or 5 broker on this
/// machine), over TCP or WebSocket.
///
/// Progress goes to stderr once a second; the summary to stdout, as a table and one
/// JSON line (only the JSON line with --json). Targets must be loopback addresses.
#[derive(Debug, Parser)]
#[command(name = "starling-bench", version)]
pub struct Cli {
    /// What to run.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Broker address HOST[:PORT], repeatable or comma separated; clients are spread
    /// over them round-robin.
    #[arg(
        long = "host",
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:1883"
    )]
    pub hosts: Vec<String>,
    /// Connections to open (conn).
    #[arg(short = 'c', long, value_name = "N")]
    pub connections: Option<usize>,
    /// Publishers (fanin, pub).
    #[arg(short = 'p', long, value_name = "N")]
    pub publishers: Option<usize>,
    /// Subscribers (fanout, sub).
    #[arg(short = 's', long, value_name = "N")]
    pub subscribers: Option<usize>,
    /// Publisher/subscriber pairs (pairs, latency).
    #[arg(short = 'n', long, value_name = "N")]
    pub pairs: Option<usize>,
    /// QoS of publishes and subscriptions.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Payload size in bytes; at least the 20-byte header (publisher, sequence, time).
    #[arg(long, default_value_t = 64, value_name = "BYTES")]
    pub size: usize,
    /// Clean sessions; with false, clients use fixed ids (PREFIX-sub-N, PREFIX-pub-N)
    /// so that a later run resumes their sessions.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub clean: bool,
    /// MQTT protocol level: 4 (MQTT 3.1.1) or 5 (MQTT 5.0).
    #[arg(long, value_enum, default_value_t = Protocol::V311)]
    pub protocol: Protocol,
    /// How MQTT is carried: plain TCP, or WebSocket (ws://HOST:PORT/mqtt, subprotocol
    /// "mqtt", one binary frame per packet).
    #[arg(long, value_enum, default_value_t = Transport::Tcp)]
    pub transport: Transport,
    /// Seconds to measure, after the warm-up.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    pub duration: f64,
    /// Seconds of load before measuring starts (not counted in rates or latency).
    #[arg(long, default_value_t = 0.0, value_name = "SECONDS")]
    pub warmup: f64,
    /// Messages per publisher, warm-up included; the run stops at this count or at
    /// the end of the duration, whichever comes first.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Messages per second per publisher (0: as fast as the window allows); for
    /// latency the total over all publishers (default 1000); for conn, connections
    /// opened per second (default 1000).
    #[arg(long, value_name = "PER_SEC")]
    pub rate: Option<f64>,
    /// Unacknowledged QoS 1/2 publishes a publisher may have outstanding.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    pub inflight: u16,
    /// Seconds, after the publishers stop, to wait for messages still on the way.
    #[arg(long, default_value_t = 2.0, value_name = "SECONDS")]
    pub drain: f64,
    /// Seconds to hold the connections open (conn).
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    pub hold: f64,
    /// Keep-alive interval sent in CONNECT; a PINGREQ goes out when a client has
    /// been quiet for half of it.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub keepalive: u16,
    /// Local addresses to bind client sockets to, as a comma list of addresses or
    /// FIRST-LAST ranges in 127.0.0.0/8 (more than one lifts the ~28k connections a
    /// single source address allows towards one broker port).
    #[arg(long, value_name = "RANGE")]
    pub source_ips: Option<String>,
    /// First level of every topic and the prefix of fixed client ids.
    #[arg(long, default_value = "bench", value_name = "NAME")]
    pub prefix: String,
    /// Topic to publish to (pub; `%i` is the publisher index) or filter to subscribe
    /// to (sub). Defaults: PREFIX/load/%i and PREFIX/load/#.
    #[arg(long, value_name = "TOPIC")]
    pub topic: Option<String>,
    /// Print only the JSON summary line on stdout.
    #[arg(long)]
    pub json: bool,
    /// Exit non-zero if any message was lost at QoS 1 or 2.
    #[arg(long)]
    pub expect_no_loss: bool,
    /// Process id of the broker under test: its resident memory (VmRSS) is read
    /// before connecting and while connections are held, to report memory per
    /// connection.
    #[arg(long, value_name = "PID")]
    pub watch_pid: Option<u32>,
    /// Seconds to wait for a connection (TCP, and the WebSocket handshake with
    /// --transport ws) and its CONNACK.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    pub connect_timeout: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Open many idle connections and hold them.
    Conn,
    /// Publishers only.
    Pub,
    /// Subscribers only.
    Sub,
    /// Many publishers, one wildcard subscriber.
    Fanin,
    /// One publisher, many subscribers on its topic.
    Fanout,
    /// Publisher/subscriber pairs on distinct topics.
    Pairs,
    /// A fixed total rate; publish-to-receive latency.
    Latency,
}

/// The MQTT protocol to speak, named by its CONNECT protocol level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
pub enum Protocol {
    /// MQTT 3.1.1.
    #[value(name = "4", alias = "3.1.1")]
    #[serde(rename = "3.1.1")]
    V311,
    /// MQTT 5.0.
    #[value(name = "5", alias = "5.0")]
    #[serde(rename = "5.0")]
    V5,
}

impl Protocol {
    /// The name shown in the summary table.
    pub fn label(self) -> &'static str {
        match self {
            Protocol::V311 => "MQTT 3.1.1",
            Protocol::V5 => "MQTT 5.0",
        }
    }

    pub fn version(self) -> starling_proto::mqtt::ProtocolVersion {
        match self {
            Protocol::V311 => starling_proto::mqtt::ProtocolVersion::V3_1_1,
            Protocol::V5 => starling_proto::mqtt::ProtocolVersion::V5,
        }
    }
}

/// What carries the MQTT bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// MQTT straight over TCP.
    Tcp,
    /// MQTT over WebSocket (MQTT 3.1.1 / 5.0 section 6), without TLS.
    Ws,
}

impl Transport {
    /// The name shown in the summary table.
    pub fn label(self) -> &'static str {
        match self {
            Transport::Tcp => "TCP",
            Transport::Ws => "WebSocket",
        }
    }
}

//! A history of what the clients of a fault-injection run did and saw, one
//! event per operation step, as `check` reads it.
//!
//! Every event carries `t`, microseconds since the run began on one clock
//! shared by all clients and the nemesis, so that "acknowledged before this
//! read started" and "a fault overlapped this connection" can be decided. A
//! history is written as JSON lines (one event a line) and read back the same
//! way, so that a run's history can be kept and checked again.

use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// One step of one client, or one fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A client's CONNECT was accepted (CONNACK 0) by `node`; `conn` counts
    /// that client's accepted connections from 1.
    Connect {
        t: u64,
        client: String,
        node: u64,
        conn: u32,
        clean: bool,
        session_present: bool,
    },
    /// A subscriber's SUBACK granted `filter`.
    Subscribed {
        t: u64,
        client: String,
        node: u64,
        filter: String,
    },
    /// A publisher sent message `seq` of `topic` for the first time.
    Invoke {
        t: u64,
        client: String,
        node: u64,
        topic: String,
        seq: u32,
        qos: u8,
        retain: bool,
    },
    /// The publisher sent the PUBLISH of `seq` again (DUP) on a new connection.
    Resend {
        t: u64,
        client: String,
        node: u64,
        topic: String,
        seq: u32,
    },
    /// PUBACK (QoS 1) or PUBCOMP (QoS 2) of `seq` arrived.
    Ok {
        t: u64,
        client: String,
        node: u64,
        topic: String,
        seq: u32,
    },
    /// The publisher stopped with `seq` still unacknowledged: it may or may
    /// not have been taken.
    Unknown {
        t: u64,
        client: String,
        topic: String,
        seq: u32,
    },
    /// A PUBLISH reached a subscriber. `fresh` is false for a QoS 2 PUBLISH
    /// whose packet id already awaited PUBREL: the client does not hand it to
    /// the application again [MQTT-4.3.3-2].
    Delivery {
        t: u64,
        client: String,
        node: u64,
        conn: u32,
        topic: String,
        seq: u32,
        qos: u8,
        dup: bool,
        retain: bool,
        fresh: bool,
    },
    /// A fresh client subscribed to a retained topic at `t_start` (just before
    /// its SUBSCRIBE went out) and was handed `value` (`None`: nothing within
    /// its wait).
    RetainedRead {
        t_start: u64,
        t: u64,
        client: String,
        node: u64,
        topic: String,
        value: Option<u32>,
    },
    /// A client with a will sent its CONNECT to `node`.
    WillConnect {
        t: u64,
        client: String,
        node: u64,
        topic: String,
    },
    /// How that client's connection ended: `accepted` if a CONNACK 0 came,
    /// `clean` if it sent DISCONNECT before closing (no will is due).
    WillEnd {
        t: u64,
        client: String,
        accepted: bool,
        clean: bool,
    },
    /// A subscriber received the will of `of` (a fresh delivery) at `qos`.
    WillDelivery {
        t: u64,
        client: String,
        node: u64,
        conn: u32,
        of: String,
        qos: u8,
    },
    /// The nemesis began a fault on `nodes`.
    FaultStart {
        t: u64,
        kind: String,
        nodes: Vec<u64>,
    },
    /// The nemesis healed the fault it began last.
    FaultEnd { t: u64, kind: String },
}

/// Where the clients of one run write their events; cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    started: Instant,
    /// Every client task and the nemesis append; held only to push or copy.
    events: Arc<Mutex<Vec<Event>>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            started: Instant::now(),
            events: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Microseconds since the run began.
    pub fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    pub fn record(&self, event: Event) {
        self.events.lock().expect("history lock").push(event);
    }

    /// A copy of the history so far.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().expect("history lock").clone()
    }
}

/// Writes `events` as JSON lines.
pub fn write_jsonl(path: &Path, events: &[Event]) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for event in events {
        serde_json::to_writer(&mut out, event)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// Reads a history written by `write_jsonl`.
pub fn read_jsonl(path: &Path) -> std::io::Result<Vec<Event>> {
    let file = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut events = Vec::new();
    for line in file.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        events.push(serde_json::from_str(&line)?);
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_round_trip() {
        let events = vec![
            Event::Invoke {
                t: 1,
                client: "p".into(),
                node: 2,
                topic: "h/data/p".into(),
                seq: 7,
                qos: 2,
                retain: false,
            },
            Event::RetainedRead {
                t_start: 3,
                t: 4,
                client: "r".into(),
                node: 1,
                topic: "h/ret".into(),
                value: None,
            },
            Event::FaultStart {
                t: 5,
                kind: "bridge".into(),
                nodes: vec![1, 2],
            },
        ];
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("history.jsonl");
        write_jsonl(&path, &events).expect("write");
        assert_eq!(read_jsonl(&path).expect("read"), events);
    }
}

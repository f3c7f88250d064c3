//! MQTT 3.1.1 spoken by hand over a TCP socket.
//!
//! The encoders write bytes straight from the spec's tables, independent of the
//! broker's codec, so that tests can send what no client library would (bad
//! flags, bad lengths, a second CONNECT) and see exactly what comes back (DUP
//! flags, packet ids).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Control packet types (the high nibble of the first byte).
pub mod kind {
    pub const CONNACK: u8 = 2;
    pub const PUBLISH: u8 = 3;
    pub const PUBACK: u8 = 4;
    pub const PUBREC: u8 = 5;
    pub const PUBREL: u8 = 6;
    pub const PUBCOMP: u8 = 7;
    pub const SUBACK: u8 = 9;
    pub const PINGRESP: u8 = 13;
}

/// The default time to wait for an expected packet.
pub const WAIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------- encoders

/// The variable-length "remaining length" encoding (spec 2.2.3).
pub fn remaining_length(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            return out;
        }
    }
}

/// A length-prefixed byte string (spec 1.5.3), also used for UTF-8 strings.
pub fn string(bytes: &[u8]) -> Vec<u8> {
    let len = u16::try_from(bytes.len()).expect("string too long");
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

/// A whole packet from its first byte and body.
pub fn packet(first_byte: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first_byte];
    out.extend(remaining_length(body.len()));
    out.extend_from_slice(body);
    out
}

/// A will announced in CONNECT.
#[derive(Debug, Clone)]
pub struct Will {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
}

/// The fields of a CONNECT; `Connect::v311` gives sensible defaults.
#[derive(Debug, Clone)]
pub struct Connect {
    pub protocol_name: Vec<u8>,
    pub level: u8,
    pub client_id: String,
    pub clean_session: bool,
    pub keep_alive: u16,
    pub will: Option<Will>,
    /// Bit 0 of the connect flags, which must be 0 [MQTT-3.1.2-3].
    pub reserved_flag: bool,
}

impl Connect {
    /// MQTT 3.1.1 ("MQTT", level 4), clean session, keepalive 60 s.
    pub fn v311(client_id: &str) -> Connect {
        Connect {
            protocol_name: b"MQTT".to_vec(),
            level: 4,
            client_id: client_id.to_string(),
            clean_session: true,
            keep_alive: 60,
            will: None,
            reserved_flag: false,
        }
    }

    pub fn clean_session(mut self, clean: bool) -> Connect {
        self.clean_session = clean;
        self
    }

    pub fn keep_alive(mut self, seconds: u16) -> Connect {
        self.keep_alive = seconds;
        self
    }

    pub fn will(mut self, topic: &str, payload: &[u8], qos: u8, retain: bool) -> Connect {
        self.will = Some(Will {
            topic: topic.to_string(),
            payload: payload.to_vec(),
            qos,
            retain,
        });
        self
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut flags = 0u8;
        if self.reserved_flag {
            flags |= 0x01;
        }
        if self.clean_session {
            flags |= 0x02;
        }
        if let Some(will) = &self.will {
            flags |= 0x04 | (will.qos << 3);
            if will.retain {
                flags |= 0x20;
            }
        }
        let mut body = string(&self.protocol_name);
        body.push(self.level);
        body.push(flags);
        body.extend_from_slice(&self.keep_alive.to_be_bytes());
        body.extend(string(self.client_id.as_bytes()));
        if let Some(will) = &self.will {
            body.extend(string(will.topic.as_bytes()));
            body.extend(string(&will.payload));
        }
        packet(0x10, &body)
    }
}

/// PUBLISH with every flag under the caller's control. `pkid` is written only
/// for QoS > 0.
pub fn publish(
    topic: &[u8],
    qos: u8,
    retain: bool,
    dup: bool,
    pkid: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut first = 0x30 | (qos << 1);
    if retain {
        first |= 0x01;
    }
    if dup {
        first |= 0x08;
    }
    let mut body = string(topic);
    if qos > 0 {
        body.extend_from_slice(&pkid.to_be_bytes());
    }
    body.extend_from_slice(payload);
    packet(first, &body)
}

pub fn puback(pkid: u16) -> Vec<u8> {
    packet(0x40, &pkid.to_be_bytes())
}

pub fn pubrec(pkid: u16) -> Vec<u8> {
    packet(0x50, &pkid.to_be_bytes())
}

pub fn pubrel(pkid: u16) -> Vec<u8> {
    packet(0x62, &pkid.to_be_bytes())
}

pub fn pubcomp(pkid: u16) -> Vec<u8> {
    packet(0x70, &pkid.to_be_bytes())
}

/// SUBSCRIBE with the mandatory flags 0b0010 [MQTT-3.8.1-1].
pub fn subscribe(pkid: u16, filters: &[(&str, u8)]) -> Vec<u8> {
    packet(0x82, &subscribe_body(pkid, filters))
}

pub fn subscribe_body(pkid: u16, filters: &[(&str, u8)]) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    for (filter, qos) in filters {
        body.extend(string(filter.as_bytes()));
        body.push(*qos);
    }
    body
}

/// UNSUBSCRIBE with the mandatory flags 0b0010 [MQTT-3.10.1-1].
pub fn unsubscribe(pkid: u16, filters: &[&str]) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    for filter in filters {
        body.extend(string(filter.as_bytes()));
    }
    packet(0xA2, &body)
}

pub const PINGREQ: [u8; 2] = [0xC0, 0x00];
pub const PINGRESP: [u8; 2] = [0xD0, 0x00];
pub const DISCONNECT: [u8; 2] = [0xE0, 0x00];

// ---------------------------------------------------------------- decoding

/// One packet as it came off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPacket {
    pub first_byte: u8,
    pub body: Vec<u8>,
}

/// The fields of a received PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub topic: String,
    pub qos: u8,
    pub dup: bool,
    pub retain: bool,
    /// 0 for QoS 0.
    pub pkid: u16,
    pub payload: Vec<u8>,
}

impl RawPacket {
    pub fn kind(&self) -> u8 {
        self.first_byte >> 4
    }

    /// The bytes after the fixed header.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The packet id of an ack (PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK).
    pub fn pkid(&self) -> u16 {
        assert!(self.body.len() >= 2, "no packet id in {self:?}");
        u16::from_be_bytes([self.body[0], self.body[1]])
    }

    /// (session present, return code) of a CONNACK.
    pub fn connack(&self) -> (bool, u8) {
        assert_eq!(self.kind(), kind::CONNACK, "expected CONNACK, got {self:?}");
        assert_eq!(self.first_byte, 0x20, "CONNACK flags must be 0");
        assert_eq!(self.body.len(), 2, "CONNACK remaining length must be 2");
        assert_eq!(self.body[0] & 0xFE, 0, "CONNACK reserved bits must be 0");
        (self.body[0] & 1 == 1, self.body[1])
    }

    /// (packet id, return codes) of a SUBACK.
    pub fn suback(&self) -> (u16, Vec<u8>) {
        assert_eq!(self.first_byte, 0x90, "expected SUBACK, got {self:?}");
        (self.pkid(), self.body[2..].to_vec())
    }

    pub fn publish(&self) -> Publish {
        assert_eq!(self.kind(), kind::PUBLISH, "expected PUBLISH, got {self:?}");
        let qos = (self.first_byte >> 1) & 3;
        assert!(qos < 3, "server sent QoS 3");
        let body = &self.body;
        let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
        let topic = String::from_utf8(body[2..2 + topic_len].to_vec()).expect("UTF-8 topic");
        let mut at = 2 + topic_len;
        let mut pkid = 0;
        if qos > 0 {
            pkid = u16::from_be_bytes([body[at], body[at + 1]]);
            at += 2;
        }
        Publish {
            topic,
            qos,
            dup: self.first_byte & 0x08 != 0,
            retain: self.first_byte & 0x01 != 0,
            pkid,
            payload: body[at..].to_vec(),
        }
    }
}

/// What a read gave.
#[derive(Debug)]
pub enum Read {
    Packet(RawPacket),
    /// The peer closed the connection (EOF or a reset).
    Closed,
    Timeout,
}

/// The reading half: a socket and what has been buffered from it.
pub struct Reader {
    read: OwnedReadHalf,
    buf: Vec<u8>,
}

impl Reader {
    /// A whole packet if one is buffered.
    fn parse(&mut self) -> Option<RawPacket> {
        let mut len = 0usize;
        let mut shift = 0;
        let mut at = 1;
        loop {
            let byte = *self.buf.get(at)?;
            len |= usize::from(byte & 0x7F) << shift;
            at += 1;
            if byte & 0x80 == 0 {
                break;
            }
            shift += 7;
            assert!(shift < 28, "server sent a malformed remaining length");
        }
        if self.buf.len() < at + len {
            return None;
        }
        let first_byte = self.buf[0];
        let body = self.buf[at..at + len].to_vec();
        self.buf.drain(..at + len);
        Some(RawPacket { first_byte, body })
    }

    /// The next packet, or `Closed`, or `Timeout` after `timeout`.
    pub async fn read(&mut self, timeout: Duration) -> Read {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(packet) = self.parse() {
                return Read::Packet(packet);
            }
            let mut chunk = [0u8; 8192];
            match tokio::time::timeout_at(deadline, self.read.read(&mut chunk)).await {
                Err(_) => return Read::Timeout,
                Ok(Ok(0)) | Ok(Err(_)) => return Read::Closed,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next packet; panics on close or timeout.
    pub async fn expect(&mut self, timeout: Duration) -> RawPacket {
        match self.read(timeout).await {
            Read::Packet(packet) => packet,
            Read::Closed => panic!("connection closed while a packet was expected"),
            Read::Timeout => panic!("no packet within {timeout:?}"),
        }
    }
}

/// A raw MQTT connection.
pub struct Raw {
    pub reader: Reader,
    pub writer: OwnedWriteHalf,
}

impl Raw {
    /// A TCP connection with nothing sent yet.
    pub async fn tcp(port: u16) -> Raw {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(("127.0.0.1", port)))
            .await
            .expect("TCP connect timed out")
            .expect("TCP connect");
        stream.set_nodelay(true).expect("nodelay");
        let (read, writer) = stream.into_split();
        Raw {
            reader: Reader {
                read,
                buf: Vec::new(),
            },
            writer,
        }
    }

    /// A TCP connection with nothing sent yet, or why there is none: for
    /// clients that must not panic when the broker refuses them.
    pub async fn try_tcp(port: u16) -> Result<Raw, String> {
        let stream = match tokio::time::timeout(WAIT, TcpStream::connect(("127.0.0.1", port))).await
        {
            Err(_) => return Err(format!("TCP connect to {port} timed out")),
            Ok(Err(e)) => return Err(format!("TCP connect to {port}: {e}")),
            Ok(Ok(stream)) => stream,
        };
        stream
            .set_nodelay(true)
            .map_err(|e| format!("nodelay: {e}"))?;
        let (read, writer) = stream.into_split();
        Ok(Raw {
            reader: Reader {
                read,
                buf: Vec::new(),
            },
            writer,
        })
    }

    /// Sends `connect` and returns the CONNACK's (session present, return code).
    pub async fn connect_with(port: u16, connect: &Connect) -> (Raw, bool, u8) {
        let mut raw = Raw::tcp(port).await;
        raw.send(&connect.encode()).await;
        let (session_present, code) = raw.expect(WAIT).await.connack();
        (raw, session_present, code)
    }

    /// Like `connect_with`, but a refused TCP connection, a connection closed
    /// before the CONNACK, or no CONNACK within `WAIT` is an `Err` instead of a
    /// panic: for clients that look for a node that will take them.
    pub async fn try_connect_with(port: u16, connect: &Connect) -> Result<(Raw, bool, u8), String> {
        let mut raw = Raw::try_tcp(port).await?;
        raw.try_send(&connect.encode())
            .await
            .map_err(|e| format!("send CONNECT: {e}"))?;
        match raw.read(WAIT).await {
            Read::Packet(packet) => {
                let (session_present, code) = packet.connack();
                Ok((raw, session_present, code))
            }
            Read::Closed => Err("connection closed before CONNACK".to_string()),
            Read::Timeout => Err(format!("no CONNACK within {WAIT:?}")),
        }
    }

    /// Connects and asserts the CONNACK accepts; returns the session-present flag.
    pub async fn connect(port: u16, connect: &Connect) -> (Raw, bool) {
        let (raw, session_present, code) = Raw::connect_with(port, connect).await;
        assert_eq!(code, 0, "CONNACK return code for {connect:?}");
        (raw, session_present)
    }

    /// Writes bytes; panics if the socket fails.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.try_send(bytes).await.expect("write to broker");
    }

    /// Writes bytes; the broker may already have closed the connection.
    pub async fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes).await?;
        self.writer.flush().await
    }

    pub async fn read(&mut self, timeout: Duration) -> Read {
        self.reader.read(timeout).await
    }

    pub async fn expect(&mut self, timeout: Duration) -> RawPacket {
        self.reader.expect(timeout).await
    }

    /// The next packet, which must be a PUBLISH.
    pub async fn expect_publish(&mut self, timeout: Duration) -> Publish {
        self.expect(timeout).await.publish()
    }

    /// Subscribes and asserts the SUBACK grants every filter its QoS.
    pub async fn subscribe(&mut self, pkid: u16, filters: &[(&str, u8)]) {
        self.send(&subscribe(pkid, filters)).await;
        let (got_pkid, codes) = self.expect(WAIT).await.suback();
        assert_eq!(got_pkid, pkid, "SUBACK packet id");
        let wanted: Vec<u8> = filters.iter().map(|(_, qos)| *qos).collect();
        assert_eq!(codes, wanted, "SUBACK return codes");
    }

    /// Asserts that nothing arrives and the connection stays open for `duration`.
    pub async fn expect_silence(&mut self, duration: Duration) {
        match self.read(duration).await {
            Read::Timeout => {}
            Read::Packet(packet) => panic!("unexpected packet {packet:?}"),
            Read::Closed => panic!("connection closed"),
        }
    }

    /// Whether the broker closes the connection within `timeout`; packets
    /// that arrive first are skipped.
    pub async fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read(left).await {
                Read::Closed => return true,
                Read::Packet(_) => {}
                Read::Timeout => return false,
            }
        }
    }

    /// Waits until the broker closes the connection; packets that arrive first
    /// are skipped. Panics if it is still open after `timeout`.
    pub async fn expect_closed(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read(left).await {
                Read::Closed => return,
                Read::Packet(_) => {}
                Read::Timeout => panic!("connection still open after {timeout:?}"),
            }
        }
    }
}

//! Malformed packets of every class, written byte by byte from the spec (MQTT
//! 3.1.1 and 5.0), each with what must come before it on its connection.

use crate::raw::{self, Connect};

/// What a bad packet follows on its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Before {
    /// Nothing: the bad bytes are the first the broker reads.
    Nothing,
    /// A valid MQTT 3.1.1 CONNECT, accepted.
    Connect311,
    /// A valid MQTT 5 CONNECT, accepted.
    Connect5,
}

/// One malformed packet or protocol violation.
#[derive(Debug, Clone)]
pub struct Bad {
    pub name: &'static str,
    pub before: Before,
    pub bytes: Vec<u8>,
}

/// The variable byte integer of MQTT 5 (the same encoding as the remaining
/// length).
fn varint(n: usize) -> Vec<u8> {
    raw::remaining_length(n)
}

/// An MQTT 5 CONNECT (clean start, keepalive 60 s) carrying `properties`.
pub fn connect_v5(client_id: &str, properties: &[u8]) -> Vec<u8> {
    let mut body = raw::string(b"MQTT");
    body.extend_from_slice(&[5, 0x02, 0, 60]);
    body.extend(varint(properties.len()));
    body.extend_from_slice(properties);
    body.extend(raw::string(client_id.as_bytes()));
    raw::packet(0x10, &body)
}

/// An MQTT 5 QoS 0 PUBLISH carrying `properties`.
fn publish_v5(topic: &[u8], properties: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut body = raw::string(topic);
    body.extend(varint(properties.len()));
    body.extend_from_slice(properties);
    body.extend_from_slice(payload);
    raw::packet(0x30, &body)
}

/// Every class of bad input, each a packet a conforming server must close
/// the connection for. `client_id` names the CONNECTs that are themselves
/// the bad packet.
pub fn cases(client_id: &str) -> Vec<Bad> {
    let bad = |name, before, bytes| Bad {
        name,
        before,
        bytes,
    };
    let mut name_mqtx = Connect::v311(client_id);
    name_mqtx.protocol_name = b"MQTX".to_vec();
    let mut level_9 = Connect::v311(client_id);
    level_9.level = 9;
    let mut reserved = Connect::v311(client_id);
    reserved.reserved_flag = true;
    let mut qos_3 = raw::string(b"bad/x");
    qos_3.extend_from_slice(&[0, 1, b'x']);
    // A PUBLISH announcing 16 MiB, above any sensible max_packet_size, with
    // the start of its body only.
    let mut oversized = vec![0x30];
    oversized.extend(raw::remaining_length(16 * 1024 * 1024));
    oversized.extend(raw::string(b"bad/big"));
    oversized.extend(std::iter::repeat_n(b'x', 4096));
    vec![
        bad(
            "reserved packet type 0",
            Before::Connect311,
            vec![0x00, 0x00],
        ),
        bad(
            "AUTH (type 15) in MQTT 3.1.1",
            Before::Connect311,
            vec![0xF0, 0x00],
        ),
        bad(
            "SUBSCRIBE with flags 0000 [MQTT-3.8.1-1]",
            Before::Connect311,
            raw::packet(0x80, &raw::subscribe_body(1, &[("a/b", 1)])),
        ),
        bad(
            "PUBREL with flags 0000 [MQTT-3.6.1-1]",
            Before::Connect311,
            raw::packet(0x60, &[0, 1]),
        ),
        bad(
            "remaining length of five bytes",
            Before::Connect311,
            vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F],
        ),
        bad(
            "ill-formed UTF-8 in a topic [MQTT-1.5.3-1]",
            Before::Connect311,
            raw::publish(b"bad/\xC3\x28", 0, false, false, 0, b"x"),
        ),
        bad(
            "wildcard in a PUBLISH topic [MQTT-3.3.2-2]",
            Before::Connect311,
            raw::publish(b"bad/+", 1, false, false, 3, b"x"),
        ),
        bad(
            "PUBLISH with QoS 3 [MQTT-3.3.1-4]",
            Before::Connect311,
            raw::packet(0x36, &qos_3),
        ),
        bad(
            "PUBLISH before CONNECT [MQTT-3.1.0-1]",
            Before::Nothing,
            raw::publish(b"bad/x", 0, false, false, 0, b"x"),
        ),
        bad(
            "second CONNECT [MQTT-3.1.0-2]",
            Before::Connect311,
            Connect::v311(client_id).encode(),
        ),
        bad(
            "protocol name MQTX [MQTT-3.1.2-1]",
            Before::Nothing,
            name_mqtx.encode(),
        ),
        bad(
            "protocol level 9 [MQTT-3.1.2-2]",
            Before::Nothing,
            level_9.encode(),
        ),
        bad(
            "CONNECT reserved flag set [MQTT-3.1.2-3]",
            Before::Nothing,
            reserved.encode(),
        ),
        bad(
            "MQTT 5 CONNECT with a property twice",
            Before::Nothing,
            connect_v5(client_id, &[0x11, 0, 0, 0, 10, 0x11, 0, 0, 0, 10]),
        ),
        bad(
            "MQTT 5 CONNECT with an unknown property",
            Before::Nothing,
            connect_v5(client_id, &[0x7F, 0]),
        ),
        bad(
            "MQTT 5 PUBLISH with Topic Alias 0 [MQTT-3.3.2-8]",
            Before::Connect5,
            publish_v5(b"bad/x", &[0x23, 0, 0], b"x"),
        ),
        bad(
            "PUBLISH over the maximum packet size",
            Before::Connect311,
            oversized,
        ),
    ]
}

//! Encode then decode gives the packet back, for MQTT 3.1.1 and 5.0.
//!
//! Two ways in, chosen by the first byte:
//! - bytes: whatever the decoder reads off the rest of the input is encoded in
//!   the version it was read as, and decoding that must give the same packet;
//! - structured: a valid packet built from the input (with the `arbitrary`
//!   crate's `Unstructured`) is encoded, and the decoder must give it back as
//!   the version can carry it (3.1.1 has no properties and fewer reason codes).
//!
//! Either way [`mqtt::encoded_len`] must be the length [`mqtt::encode`] writes.

#![no_main]

use std::sync::Arc;

use arbitrary::{Result, Unstructured};
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use starling_fuzz::Counting;
use starling_proto::mqtt::v5::VARINT_MAX;
use starling_proto::mqtt::{
    self, Ack, Auth, ConnAck, Connect, Disconnect, LastWill, Packet, Properties, Props,
    ProtocolVersion, Publish, QoS, ReasonCode, RetainHandling, SubAck, SubOptions, Subscribe,
    UnsubAck, Unsubscribe,
};

#[global_allocator]
static ALLOC: Counting = Counting;

const MAX: usize = 1024 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        from_bytes(rest);
    } else {
        let version = if mode & 2 == 0 {
            ProtocolVersion::V3_1_1
        } else {
            ProtocolVersion::V5
        };
        let _ = structured(&mut Unstructured::new(rest), version);
    }
});

fn encode(packet: &Packet, version: ProtocolVersion) -> Option<BytesMut> {
    let mut buf = BytesMut::new();
    match mqtt::encode(packet, version, &mut buf) {
        Ok(()) => {
            let len =
                mqtt::encoded_len(packet, version).expect("encoded_len of an encodable packet");
            assert_eq!(len, buf.len(), "encoded_len of {packet:?}");
            Some(buf)
        }
        Err(_) => {
            assert!(buf.is_empty(), "a failed encode left bytes behind");
            None
        }
    }
}

fn decode_one(mut buf: BytesMut, version: ProtocolVersion) -> Option<Packet> {
    let packet = mqtt::decode(&mut buf, MAX, Some(version)).ok()??;
    assert!(buf.is_empty(), "{} bytes left after {packet:?}", buf.len());
    Some(packet)
}

fn from_bytes(input: &[u8]) {
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let mut buf = BytesMut::from(input);
        let Ok(Some(packet)) = mqtt::decode(&mut buf, MAX, Some(version)) else {
            continue;
        };
        let version = match &packet {
            Packet::Connect(c) => c.protocol,
            _ => version,
        };
        let encoded = encode(&packet, version)
            .unwrap_or_else(|| panic!("a decoded packet does not encode: {packet:?}"));
        let again = decode_one(encoded.clone(), version)
            .unwrap_or_else(|| panic!("{packet:?} encodes as {encoded:?}, which does not decode"));
        assert_eq!(packet, again, "{version:?}");
    }
}

fn structured(u: &mut Unstructured, version: ProtocolVersion) -> Result<()> {
    let packet = packet(u, version)?;
    let Some(encoded) = encode(&packet, version) else {
        return Ok(());
    };
    let version = match &packet {
        Packet::Connect(c) => c.protocol,
        _ => version,
    };
    let mut buf = encoded.clone();
    let decoded = match mqtt::decode(&mut buf, MAX, Some(version)) {
        Ok(Some(decoded)) => decoded,
        other => panic!("{packet:?} encodes as {encoded:?}, which decodes as {other:?}"),
    };
    assert!(buf.is_empty(), "{} bytes left after {decoded:?}", buf.len());
    let expected = if version.is_v5() {
        packet
    } else {
        as_v3(packet)
    };
    assert_eq!(expected, decoded, "{version:?}");
    Ok(())
}

/// `packet` as it reads back from its 3.1.1 encoding: no properties, reason
/// codes through the return codes 3.1.1 has.
fn as_v3(packet: Packet) -> Packet {
    let none = Props::default;
    match packet {
        Packet::Connect(c) => Packet::Connect(Connect {
            will: c.will.map(|w| LastWill {
                properties: none(),
                ..w
            }),
            properties: none(),
            ..c
        }),
        Packet::ConnAck(c) => Packet::ConnAck(ConnAck {
            session_present: c.session_present,
            code: ReasonCode::from_connack_v3(c.code.connack_v3()).expect("a 3.1.1 code"),
            properties: none(),
        }),
        Packet::Publish(p) => Packet::Publish(Publish {
            properties: none(),
            ..p
        }),
        Packet::PubAck(a) => Packet::PubAck(Ack::new(a.packet_id)),
        Packet::PubRec(a) => Packet::PubRec(Ack::new(a.packet_id)),
        Packet::PubRel(a) => Packet::PubRel(Ack::new(a.packet_id)),
        Packet::PubComp(a) => Packet::PubComp(Ack::new(a.packet_id)),
        Packet::Subscribe(s) => Packet::Subscribe(Subscribe {
            filters: s
                .filters
                .into_iter()
                .map(|(f, o)| (f, SubOptions::from(o.qos)))
                .collect(),
            properties: none(),
            ..s
        }),
        Packet::SubAck(s) => Packet::SubAck(SubAck {
            codes: s
                .codes
                .into_iter()
                .map(|c| match c as u8 {
                    0..=2 => c,
                    _ => ReasonCode::UnspecifiedError,
                })
                .collect(),
            properties: none(),
            ..s
        }),
        Packet::Unsubscribe(x) => Packet::Unsubscribe(Unsubscribe {
            properties: none(),
            ..x
        }),
        Packet::UnsubAck(x) => Packet::UnsubAck(UnsubAck {
            packet_id: x.packet_id,
            codes: Vec::new(),
            properties: none(),
        }),
        Packet::Disconnect(_) => Packet::Disconnect(Disconnect::default()),
        other => other,
    }
}

// ---- building packets ----

/// Levels that make topics and filters collide, and a multi-byte character.
const LEVELS: &[&str] = &["a", "b", "", "$SYS", "sport", "\u{e9}t\u{e9}"];

fn text(u: &mut Unstructured) -> Result<String> {
    if u.ratio(1, 4)? {
        // Anything UTF-8 but U+0000, which MQTT forbids.
        let s: String = u.arbitrary()?;
        return Ok(s.replace('\0', ""));
    }
    Ok(LEVELS[u.choose_index(LEVELS.len())?].to_owned())
}

fn topic_name(u: &mut Unstructured) -> Result<String> {
    let n = u.int_in_range(1..=4)?;
    let mut levels = Vec::with_capacity(n);
    for _ in 0..n {
        levels.push(text(u)?.replace(['+', '#', '/'], ""));
    }
    Ok(non_empty(levels.join("/")))
}

/// Neither a topic name nor a filter may be empty [MQTT-4.7.3-1].
fn non_empty(s: String) -> String {
    if s.is_empty() {
        "t".to_owned()
    } else {
        s
    }
}

fn topic_filter(u: &mut Unstructured) -> Result<String> {
    let n = u.int_in_range(1..=4)?;
    let mut levels = Vec::with_capacity(n);
    for i in 0..n {
        levels.push(match u.int_in_range(0..=5)? {
            0 => "+".to_owned(),
            1 if i + 1 == n => "#".to_owned(),
            _ => text(u)?.replace(['+', '#', '/'], ""),
        });
    }
    Ok(non_empty(levels.join("/")))
}

fn bytes(u: &mut Unstructured) -> Result<Bytes> {
    let v: Vec<u8> = u.arbitrary()?;
    Ok(Bytes::from(v))
}

fn qos(u: &mut Unstructured) -> Result<QoS> {
    Ok(match u.int_in_range(0..=2)? {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    })
}

fn packet_id(u: &mut Unstructured) -> Result<u16> {
    u.int_in_range(1..=u16::MAX)
}

fn code(u: &mut Unstructured, allowed_in: &str) -> Result<ReasonCode> {
    let codes: Vec<ReasonCode> = (0..=u8::MAX)
        .filter_map(ReasonCode::from_u8)
        .filter(|c| c.allowed_in(allowed_in))
        .collect();
    Ok(codes[u.choose_index(codes.len())?])
}

fn flag(u: &mut Unstructured) -> Result<Option<u8>> {
    Ok(if u.ratio(1, 3)? {
        Some(u.int_in_range(0..=1)?)
    } else {
        None
    })
}

fn opt<T>(
    u: &mut Unstructured,
    f: impl FnOnce(&mut Unstructured) -> Result<T>,
) -> Result<Option<T>> {
    Ok(if u.ratio(1, 3)? { Some(f(u)?) } else { None })
}

fn nonzero_u16(u: &mut Unstructured) -> Result<u16> {
    u.int_in_range(1..=u16::MAX)
}

/// Which groups of properties a packet may carry (MQTT 5.0 section 2.2.2.2).
#[derive(Clone, Copy, PartialEq)]
enum Ctx {
    Connect,
    Will,
    ConnAck,
    Publish,
    Ack,
    Subscribe,
    SubAck,
    Unsubscribe,
    Disconnect,
    Auth,
}

fn props(u: &mut Unstructured, version: ProtocolVersion, ctx: Ctx) -> Result<Props> {
    if !version.is_v5() || u.ratio(1, 2)? {
        return Ok(Props::default());
    }
    let mut p = Properties::default();
    let n = u.int_in_range(0..=2)?;
    for _ in 0..n {
        p.user_properties.push((text(u)?, text(u)?));
    }
    if !matches!(
        ctx,
        Ctx::Connect | Ctx::Will | Ctx::Publish | Ctx::Subscribe | Ctx::Unsubscribe
    ) {
        p.reason_string = opt(u, text)?;
    }
    if matches!(ctx, Ctx::Publish | Ctx::Will) {
        p.payload_format_indicator = flag(u)?;
        p.message_expiry_interval = opt(u, |u| u.arbitrary())?;
        p.content_type = opt(u, text)?;
        p.response_topic = opt(u, topic_name)?;
        p.correlation_data = opt(u, bytes)?;
    }
    if ctx == Ctx::Publish {
        p.topic_alias = opt(u, nonzero_u16)?;
        let n = u.int_in_range(0..=2)?;
        for _ in 0..n {
            p.subscription_identifiers
                .push(u.int_in_range(1..=VARINT_MAX)?);
        }
    }
    if ctx == Ctx::Subscribe {
        if let Some(id) = opt(u, |u| u.int_in_range(1..=VARINT_MAX))? {
            p.subscription_identifiers.push(id);
        }
    }
    if ctx == Ctx::Will {
        p.will_delay_interval = opt(u, |u| u.arbitrary())?;
    }
    if matches!(ctx, Ctx::Connect | Ctx::ConnAck | Ctx::Disconnect) {
        p.session_expiry_interval = opt(u, |u| u.arbitrary())?;
    }
    if matches!(ctx, Ctx::Connect | Ctx::ConnAck | Ctx::Auth) {
        p.authentication_method = opt(u, text)?;
        p.authentication_data = opt(u, bytes)?;
    }
    if matches!(ctx, Ctx::Connect | Ctx::ConnAck) {
        p.receive_maximum = opt(u, nonzero_u16)?;
        p.topic_alias_maximum = opt(u, |u| u.arbitrary())?;
        p.maximum_packet_size = opt(u, |u| u.int_in_range(1..=u32::MAX))?;
    }
    if ctx == Ctx::Connect {
        p.request_problem_information = flag(u)?;
        p.request_response_information = flag(u)?;
    }
    if ctx == Ctx::ConnAck {
        p.assigned_client_identifier = opt(u, text)?;
        p.server_keep_alive = opt(u, |u| u.arbitrary())?;
        p.response_information = opt(u, text)?;
        p.maximum_qos = flag(u)?;
        p.retain_available = flag(u)?;
        p.wildcard_subscription_available = flag(u)?;
        p.subscription_identifier_available = flag(u)?;
        p.shared_subscription_available = flag(u)?;
    }
    if matches!(ctx, Ctx::ConnAck | Ctx::Disconnect) {
        p.server_reference = opt(u, text)?;
    }
    Ok(p.into())
}

fn ack(u: &mut Unstructured, version: ProtocolVersion, name: &str) -> Result<Ack> {
    Ok(Ack {
        packet_id: packet_id(u)?,
        reason: code(u, name)?,
        properties: props(u, version, Ctx::Ack)?,
    })
}

fn packet(u: &mut Unstructured, version: ProtocolVersion) -> Result<Packet> {
    Ok(match u.int_in_range(0..=14)? {
        0 => {
            let protocol = if version.is_v5() {
                ProtocolVersion::V5
            } else if u.arbitrary()? {
                ProtocolVersion::V3_1
            } else {
                ProtocolVersion::V3_1_1
            };
            let will = if u.arbitrary()? {
                Some(LastWill {
                    topic: Arc::from(topic_name(u)?),
                    payload: bytes(u)?,
                    qos: qos(u)?,
                    retain: u.arbitrary()?,
                    properties: props(u, protocol, Ctx::Will)?,
                })
            } else {
                None
            };
            let username = opt(u, text)?;
            // [MQTT-3.1.2-22]: no password without a user name in 3.1.1.
            let password = if username.is_some() || protocol != ProtocolVersion::V3_1_1 {
                opt(u, bytes)?
            } else {
                None
            };
            Packet::Connect(Connect {
                protocol,
                clean_session: u.arbitrary()?,
                keep_alive: u.arbitrary()?,
                client_id: text(u)?,
                will,
                username,
                password,
                properties: props(u, protocol, Ctx::Connect)?,
            })
        }
        1 => Packet::ConnAck(ConnAck {
            session_present: u.arbitrary()?,
            code: code(u, "CONNACK")?,
            properties: props(u, version, Ctx::ConnAck)?,
        }),
        2 => {
            let qos = qos(u)?;
            Packet::Publish(Publish {
                dup: qos != QoS::AtMostOnce && u.arbitrary()?,
                qos,
                retain: u.arbitrary()?,
                topic: Arc::from(topic_name(u)?),
                packet_id: if qos == QoS::AtMostOnce {
                    0
                } else {
                    packet_id(u)?
                },
                payload: bytes(u)?,
                properties: props(u, version, Ctx::Publish)?,
            })
        }
        3 => Packet::PubAck(ack(u, version, "PUBACK")?),
        4 => Packet::PubRec(ack(u, version, "PUBREC")?),
        5 => Packet::PubRel(ack(u, version, "PUBREL")?),
        6 => Packet::PubComp(ack(u, version, "PUBCOMP")?),
        7 => {
            let n = u.int_in_range(1..=4)?;
            let mut filters = Vec::with_capacity(n);
            for _ in 0..n {
                let options = SubOptions {
                    qos: qos(u)?,
                    no_local: version.is_v5() && u.arbitrary()?,
                    retain_as_published: version.is_v5() && u.arbitrary()?,
                    retain_handling: if version.is_v5() {
                        match u.int_in_range(0..=2)? {
                            0 => RetainHandling::Always,
                            1 => RetainHandling::IfNew,
                            _ => RetainHandling::Never,
                        }
                    } else {
                        RetainHandling::Always
                    },
                };
                filters.push((topic_filter(u)?, options));
            }
            Packet::Subscribe(Subscribe {
                packet_id: packet_id(u)?,
                filters,
                properties: props(u, version, Ctx::Subscribe)?,
            })
        }
        8 => {
            let n = u.int_in_range(0..=4)?;
            let mut codes = Vec::with_capacity(n);
            for _ in 0..n {
                codes.push(code(u, "SUBACK")?);
            }
            Packet::SubAck(SubAck {
                packet_id: packet_id(u)?,
                codes,
                properties: props(u, version, Ctx::SubAck)?,
            })
        }
        9 => {
            let n = u.int_in_range(1..=4)?;
            let mut filters = Vec::with_capacity(n);
            for _ in 0..n {
                filters.push(topic_filter(u)?);
            }
            Packet::Unsubscribe(Unsubscribe {
                packet_id: packet_id(u)?,
                filters,
                properties: props(u, version, Ctx::Unsubscribe)?,
            })
        }
        10 => {
            let n = u.int_in_range(0..=4)?;
            let mut codes = Vec::with_capacity(n);
            for _ in 0..n {
                codes.push(code(u, "UNSUBACK")?);
            }
            Packet::UnsubAck(UnsubAck {
                packet_id: packet_id(u)?,
                codes,
                properties: props(u, version, Ctx::SubAck)?,
            })
        }
        11 => Packet::PingReq,
        12 => Packet::PingResp,
        13 => Packet::Disconnect(Disconnect {
            reason: code(u, "DISCONNECT")?,
            properties: props(u, version, Ctx::Disconnect)?,
        }),
        _ => Packet::Auth(Auth {
            reason: code(u, "AUTH")?,
            properties: props(u, version, Ctx::Auth)?,
        }),
    })
}

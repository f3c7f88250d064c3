//! Properties: every valid packet survives encode then decode unchanged, and no
//! sequence of bytes makes the decoder panic.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use starling_proto::mqtt::{
    decode, encode, Ack, ConnAck, Connect, Disconnect, LastWill, Packet, Properties,
    ProtocolVersion, Publish, QoS, ReasonCode, SubAck, SubOptions, Subscribe, UnsubAck,
    Unsubscribe,
};

fn version() -> impl Strategy<Value = ProtocolVersion> {
    prop_oneof![Just(ProtocolVersion::V3_1), Just(ProtocolVersion::V3_1_1)]
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn packet_id() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

/// Any UTF-8 without U+0000, wildcards or control characters; may be empty.
fn text() -> impl Strategy<Value = String> {
    "[^\\x00-\\x1f+#]{0,12}"
}

/// A topic level without wildcards; may be empty ("a//b" is a valid topic).
fn level() -> impl Strategy<Value = String> {
    "[^\\x00-\\x1f+#/]{0,6}"
}

fn topic_name() -> impl Strategy<Value = Arc<str>> {
    proptest::collection::vec(level(), 1..5)
        .prop_map(|levels| levels.join("/"))
        .prop_filter("topic names are not empty", |t| !t.is_empty())
        .prop_map(Arc::from)
}

fn topic_filter() -> impl Strategy<Value = String> {
    let filter_level = prop_oneof![3 => level(), 1 => Just("+".to_string())];
    (proptest::collection::vec(filter_level, 1..5), any::<bool>())
        .prop_map(|(mut levels, multi)| {
            if multi {
                levels.push("#".into());
            }
            levels.join("/")
        })
        .prop_filter("topic filters are not empty", |f| !f.is_empty())
}

fn will() -> impl Strategy<Value = LastWill> {
    (topic_name(), bytes(32), qos(), any::<bool>()).prop_map(|(topic, payload, qos, retain)| {
        LastWill {
            topic,
            payload,
            qos,
            retain,
            properties: Properties::default().into(),
        }
    })
}

fn connect() -> impl Strategy<Value = Packet> {
    (
        version(),
        any::<bool>(),
        any::<u16>(),
        text(),
        proptest::option::of(will()),
        proptest::option::of(text()),
        proptest::option::of(bytes(16)),
    )
        .prop_map(
            |(protocol, clean_session, keep_alive, client_id, will, username, password)| {
                // MQTT 3.1.1 forbids a password without a user name.
                let username = match (&username, &password) {
                    (None, Some(_)) if protocol == ProtocolVersion::V3_1_1 => Some(String::new()),
                    _ => username,
                };
                Packet::Connect(Connect {
                    protocol,
                    clean_session,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties: Properties::default().into(),
                })
            },
        )
}

fn connack() -> impl Strategy<Value = Packet> {
    let code = prop_oneof![
        Just(ReasonCode::Success),
        Just(ReasonCode::UnsupportedProtocolVersion),
        Just(ReasonCode::ClientIdentifierNotValid),
        Just(ReasonCode::ServerUnavailable),
        Just(ReasonCode::BadUserNameOrPassword),
        Just(ReasonCode::NotAuthorized),
    ];
    (any::<bool>(), code)
        .prop_map(|(session_present, code)| Packet::ConnAck(ConnAck::new(session_present, code)))
}

fn publish() -> impl Strategy<Value = Packet> {
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        topic_name(),
        packet_id(),
        bytes(300),
    )
        .prop_map(|(qos, dup, retain, topic, packet_id, payload)| {
            let at_most_once = qos == QoS::AtMostOnce;
            Packet::Publish(Publish {
                dup: dup && !at_most_once,
                qos,
                retain,
                topic,
                packet_id: if at_most_once { 0 } else { packet_id },
                payload,
                properties: Properties::default().into(),
            })
        })
}

fn suback_code() -> impl Strategy<Value = ReasonCode> {
    prop_oneof![
        qos().prop_map(ReasonCode::granted),
        Just(ReasonCode::UnspecifiedError)
    ]
}

fn no_properties() -> Properties {
    Properties::default()
}

/// Any valid MQTT 3.1 / 3.1.1 packet.
fn packet() -> impl Strategy<Value = Packet> {
    prop_oneof![
        connect(),
        connack(),
        publish(),
        packet_id().prop_map(|id| Packet::PubAck(Ack::new(id))),
        packet_id().prop_map(|id| Packet::PubRec(Ack::new(id))),
        packet_id().prop_map(|id| Packet::PubRel(Ack::new(id))),
        packet_id().prop_map(|id| Packet::PubComp(Ack::new(id))),
        (
            packet_id(),
            proptest::collection::vec((topic_filter(), qos().prop_map(SubOptions::from)), 1..5)
        )
            .prop_map(|(packet_id, filters)| Packet::Subscribe(Subscribe {
                packet_id,
                filters,
                properties: no_properties().into(),
            })),
        (packet_id(), proptest::collection::vec(suback_code(), 1..5)).prop_map(
            |(packet_id, codes)| Packet::SubAck(SubAck {
                packet_id,
                codes,
                properties: no_properties().into(),
            })
        ),
        (packet_id(), proptest::collection::vec(topic_filter(), 1..5)).prop_map(
            |(packet_id, filters)| Packet::Unsubscribe(Unsubscribe {
                packet_id,
                filters,
                properties: no_properties().into(),
            })
        ),
        packet_id().prop_map(|packet_id| Packet::UnsubAck(UnsubAck {
            packet_id,
            codes: Vec::new(),
            properties: no_properties().into(),
        })),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        Just(Packet::Disconnect(Disconnect::default())),
    ]
}

/// What decoding `packet` encoded for `version` should give back.
fn expected_after_round_trip(packet: Packet, version: ProtocolVersion) -> Packet {
    match packet {
        // MQTT 3.1 has no session-present flag to carry.
        Packet::ConnAck(c) if version == ProtocolVersion::V3_1 => Packet::ConnAck(ConnAck {
            session_present: false,
            ..c
        }),
        other => other,
    }
}

proptest! {
    #[test]
    fn encode_then_decode_gives_the_packet_back(packet in packet(), version in version()) {
        let mut buf = BytesMut::new();
        encode(&packet, version, &mut buf).expect("valid packets encode");
        let encoded_len = buf.len();
        let decode_version = match &packet {
            Packet::Connect(_) => None,
            _ => Some(version),
        };
        let decoded = decode(&mut buf, encoded_len, decode_version);
        prop_assert_eq!(decoded, Ok(Some(expected_after_round_trip(packet, version))));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(
        input in proptest::collection::vec(any::<u8>(), 0..256),
        version in proptest::option::of(version()),
        max in 0usize..512,
    ) {
        let mut buf = BytesMut::from(&input[..]);
        while let Ok(Some(_)) = decode(&mut buf, max, version) {}
    }

    #[test]
    fn decoding_mutated_packets_never_panics(
        packet in packet(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        version in proptest::option::of(version()),
    ) {
        let mut buf = BytesMut::new();
        encode(&packet, ProtocolVersion::V3_1_1, &mut buf).expect("valid packets encode");
        for (index, byte) in flips {
            let i = index.index(buf.len());
            buf[i] ^= byte;
        }
        let before = buf.clone();
        if let Ok(None) = decode(&mut buf, usize::MAX, version) {
            prop_assert_eq!(buf, before, "Ok(None) changed the buffer");
        }
    }
}

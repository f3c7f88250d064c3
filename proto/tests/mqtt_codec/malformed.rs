//! Malformed packets, each refused with the error that names the rule it breaks.

use bytes::BytesMut;
use starling_proto::mqtt::topic::TopicError;
use starling_proto::mqtt::{decode, DecodeError, Packet, ProtocolVersion};

use super::{decode_err, decode_one, NO_LIMIT};

const V311: Option<ProtocolVersion> = Some(ProtocolVersion::V3_1_1);
const V31: Option<ProtocolVersion> = Some(ProtocolVersion::V3_1);

/// A PUBLISH with the given first byte, topic bytes and the rest of the body.
fn publish_bytes(first: u8, topic: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut bytes = vec![
        first,
        (2 + topic.len() + rest.len()) as u8,
        0,
        topic.len() as u8,
    ];
    bytes.extend_from_slice(topic);
    bytes.extend_from_slice(rest);
    bytes
}

/// A CONNECT with the given protocol name, level, flags and payload.
fn connect_bytes(name: &[u8], level: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = vec![0, name.len() as u8];
    body.extend_from_slice(name);
    body.extend_from_slice(&[level, flags, 0x00, 0x3C]);
    body.extend_from_slice(payload);
    let mut bytes = vec![0x10, body.len() as u8];
    bytes.extend_from_slice(&body);
    bytes
}

/// A 3.1.1 CONNECT with client id "c" followed by `rest`.
fn connect_v311(flags: u8, rest: &[u8]) -> Vec<u8> {
    let mut payload = vec![0x00, 0x01, b'c'];
    payload.extend_from_slice(rest);
    connect_bytes(b"MQTT", 4, flags, &payload)
}

fn subscribe_bytes(first: u8, body: &[u8]) -> Vec<u8> {
    let mut bytes = vec![first, body.len() as u8];
    bytes.extend_from_slice(body);
    bytes
}

#[test]
fn reserved_packet_types_0_and_15() {
    assert_eq!(
        decode_err(&[0x00, 0x00], V311),
        DecodeError::UnknownPacketType(0)
    );
    assert_eq!(
        decode_err(&[0xF0, 0x00], None),
        DecodeError::UnknownPacketType(15)
    );
    // Judged from the first byte alone.
    assert_eq!(
        decode_err(&[0xF0], None),
        DecodeError::UnknownPacketType(15)
    );
}

#[test]
fn mqtt_2_2_2_2_reserved_fixed_header_flags_are_malformed() {
    for (bytes, packet_type, flags) in [
        (&[0x11][..], "CONNECT", 1),
        (&[0x28, 0x02, 0x00, 0x00], "CONNACK", 8),
        (&[0x41, 0x02, 0x00, 0x01], "PUBACK", 1),
        (&[0x52, 0x02, 0x00, 0x01], "PUBREC", 2),
        (&[0x60, 0x02, 0x00, 0x01], "PUBREL", 0),
        (&[0x6A, 0x02, 0x00, 0x01], "PUBREL", 0b1010),
        (&[0x74, 0x02, 0x00, 0x01], "PUBCOMP", 4),
        (&[0x80], "SUBSCRIBE", 0),
        (&[0x83], "SUBSCRIBE", 3),
        (&[0x92], "SUBACK", 2),
        (&[0xA0], "UNSUBSCRIBE", 0),
        (&[0xB8], "UNSUBACK", 8),
        (&[0xC1, 0x00], "PINGREQ", 1),
        (&[0xDF, 0x00], "PINGRESP", 15),
        (&[0xE2, 0x00], "DISCONNECT", 2),
    ] {
        assert_eq!(
            decode_err(bytes, V311),
            DecodeError::ReservedFlags { packet_type, flags },
            "{bytes:02x?}"
        );
    }
    // Before CONNECT, 3.1.1's rules apply.
    assert_eq!(
        decode_err(&[0x6A], None),
        DecodeError::ReservedFlags {
            packet_type: "PUBREL",
            flags: 0b1010
        }
    );
    // MQTT 3.1 tolerates DUP on PUBREL, but nothing else.
    assert_eq!(
        decode_err(&[0x6B], V31),
        DecodeError::ReservedFlags {
            packet_type: "PUBREL",
            flags: 0b1011
        }
    );
    assert_eq!(
        decode_err(&[0xC8], V31),
        DecodeError::ReservedFlags {
            packet_type: "PINGREQ",
            flags: 0b1000
        }
    );
}

#[test]
fn mqtt_3_3_1_4_qos_3_is_malformed() {
    assert_eq!(
        decode_err(&publish_bytes(0x36, b"t", &[0, 1]), V311),
        DecodeError::InvalidQoS
    );
    assert_eq!(decode_err(&[0x3F], V31), DecodeError::InvalidQoS);
}

#[test]
fn mqtt_3_3_1_2_dup_with_qos_0_is_malformed() {
    assert_eq!(
        decode_err(&publish_bytes(0x38, b"t", b""), V311),
        DecodeError::DupWithQoS0
    );
}

#[test]
fn remaining_length_of_5_bytes_is_malformed() {
    let bytes = [0x30, 0x80, 0x80, 0x80, 0x80, 0x01];
    assert_eq!(
        decode_err(&bytes, V311),
        DecodeError::MalformedRemainingLength
    );
    assert_eq!(
        decode_err(&bytes[..5], V311),
        DecodeError::MalformedRemainingLength
    );
}

#[test]
fn packet_too_large_from_the_fixed_header_alone() {
    // PUBLISH, remaining length 128: 131 bytes in all; no body has arrived.
    let mut buf = BytesMut::from(&[0x30, 0x80, 0x01][..]);
    assert_eq!(
        decode(&mut buf, 100, V311),
        Err(DecodeError::PacketTooLarge {
            size: 131,
            max: 100
        })
    );
    // A packet exactly at the limit is allowed.
    let mut buf = BytesMut::from(&[0x30, 0x80, 0x01][..]);
    assert_eq!(decode(&mut buf, 131, V311), Ok(None));
    let mut buf = BytesMut::from(&[0xC0, 0x00][..]);
    assert_eq!(
        decode(&mut buf, 1, V311),
        Err(DecodeError::PacketTooLarge { size: 2, max: 1 })
    );
    // The largest remaining length: 268,435,460 bytes with its header.
    let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F][..]);
    let err = decode(&mut buf, 1 << 20, None);
    assert_eq!(
        err,
        Err(DecodeError::PacketTooLarge {
            size: 268_435_460,
            max: 1 << 20
        })
    );
}

#[test]
fn mqtt_1_5_3_1_ill_formed_utf8_is_malformed() {
    for topic in [
        &[0xC3, 0x28][..],
        &[0xFF],
        &[0xED, 0xA0, 0x80],
        &[b'a', 0x80],
    ] {
        assert_eq!(
            decode_err(&publish_bytes(0x30, topic, b""), V311),
            DecodeError::InvalidUtf8,
            "{topic:02x?}"
        );
    }
    // In the client id too.
    let bad_client_id = connect_bytes(b"MQTT", 4, 0x02, &[0x00, 0x01, 0xFF]);
    assert_eq!(decode_err(&bad_client_id, None), DecodeError::InvalidUtf8);
}

#[test]
fn mqtt_1_5_3_2_null_character_is_malformed() {
    assert_eq!(
        decode_err(&publish_bytes(0x30, b"a\0b", b""), V311),
        DecodeError::NullCharacter
    );
    let nul_username = connect_v311(0x82, &[0x00, 0x01, 0x00]);
    assert_eq!(decode_err(&nul_username, None), DecodeError::NullCharacter);
}

#[test]
fn mqtt_3_3_2_2_wildcard_in_topic_name_is_malformed() {
    for topic in [&b"a/+"[..], b"#", b"a/#", b"+"] {
        assert_eq!(
            decode_err(&publish_bytes(0x30, topic, b""), V311),
            DecodeError::WildcardInTopicName
        );
    }
    // The will topic is a topic name as well.
    let will = connect_v311(0x06, &[0x00, 0x01, b'#', 0x00, 0x00]);
    assert_eq!(decode_err(&will, None), DecodeError::WildcardInTopicName);
}

#[test]
fn mqtt_4_7_3_1_empty_topic_name_and_filter_are_malformed() {
    assert_eq!(
        decode_err(&publish_bytes(0x30, b"", b"x"), V311),
        DecodeError::EmptyTopicName
    );
    let subscribe = subscribe_bytes(0x82, &[0x00, 0x01, 0x00, 0x00, 0x00]);
    assert_eq!(decode_err(&subscribe, V311), DecodeError::EmptyTopicFilter);
    let unsubscribe = subscribe_bytes(0xA2, &[0x00, 0x01, 0x00, 0x00]);
    assert_eq!(
        decode_err(&unsubscribe, V311),
        DecodeError::EmptyTopicFilter
    );
}

#[test]
fn mqtt_4_7_1_2_and_4_7_1_3_misplaced_wildcards_in_filters_are_malformed() {
    let subscribe = subscribe_bytes(0x82, &[0x00, 0x01, 0x00, 0x02, b'a', b'#', 0x00]);
    assert_eq!(
        decode_err(&subscribe, V311),
        DecodeError::InvalidTopicFilter(TopicError::MisplacedMultiLevelWildcard)
    );
    let subscribe = subscribe_bytes(0x82, &[0x00, 0x01, 0x00, 0x03, b'a', b'+', b'/', 0x00]);
    assert_eq!(
        decode_err(&subscribe, V311),
        DecodeError::InvalidTopicFilter(TopicError::MisplacedSingleLevelWildcard)
    );
    let unsubscribe = subscribe_bytes(0xA2, &[0x00, 0x01, 0x00, 0x03, b'#', b'/', b'a']);
    assert_eq!(
        decode_err(&unsubscribe, V311),
        DecodeError::InvalidTopicFilter(TopicError::MisplacedMultiLevelWildcard)
    );
}

#[test]
fn mqtt_2_3_1_1_packet_id_0_is_malformed() {
    for (bytes, packet_type) in [
        (publish_bytes(0x32, b"t", &[0x00, 0x00]), "PUBLISH"),
        (publish_bytes(0x34, b"t", &[0x00, 0x00, b'x']), "PUBLISH"),
        (vec![0x40, 0x02, 0x00, 0x00], "PUBACK"),
        (vec![0x50, 0x02, 0x00, 0x00], "PUBREC"),
        (vec![0x62, 0x02, 0x00, 0x00], "PUBREL"),
        (vec![0x70, 0x02, 0x00, 0x00], "PUBCOMP"),
        (
            subscribe_bytes(0x82, &[0x00, 0x00, 0x00, 0x01, b't', 0x00]),
            "SUBSCRIBE",
        ),
        (subscribe_bytes(0x90, &[0x00, 0x00, 0x00]), "SUBACK"),
        (
            subscribe_bytes(0xA2, &[0x00, 0x00, 0x00, 0x01, b't']),
            "UNSUBSCRIBE",
        ),
        (vec![0xB0, 0x02, 0x00, 0x00], "UNSUBACK"),
    ] {
        assert_eq!(
            decode_err(&bytes, V311),
            DecodeError::ZeroPacketId { packet_type },
            "{bytes:02x?}"
        );
    }
}

#[test]
fn mqtt_3_1_2_1_unknown_protocol_name() {
    for name in [&b"MQTX"[..], b"mqtt", b"MQIsdp\0", b"", &[0xFF, 0xFE]] {
        let bytes = connect_bytes(name, 4, 0x02, &[0x00, 0x00]);
        assert_eq!(
            decode_err(&bytes, None),
            DecodeError::UnknownProtocolName,
            "{name:02x?}"
        );
    }
}

#[test]
fn mqtt_3_1_2_2_unsupported_protocol_level_consumes_the_packet() {
    // A CONNECT at a level after MQTT 5 (6), shaped like MQTT 5's (an empty
    // property list before the client id): its body cannot be read, yet the whole
    // packet is consumed.
    let mut bytes = connect_bytes(b"MQTT", 6, 0x02, &[0x00, 0x00, 0x00]);
    bytes.extend_from_slice(&[0xC0, 0x00]);
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(
        decode(&mut buf, NO_LIMIT, None),
        Err(DecodeError::UnsupportedProtocolLevel(6))
    );
    assert_eq!(
        &buf[..],
        [0xC0, 0x00],
        "the CONNECT must have been consumed"
    );

    for (name, level) in [
        (&b"MQTT"[..], 3),
        (b"MQIsdp", 4),
        (b"MQTT", 0),
        (b"MQIsdp", 5),
    ] {
        let bytes = connect_bytes(name, level, 0x02, &[0x00, 0x00]);
        assert_eq!(
            decode_err(&bytes, None),
            DecodeError::UnsupportedProtocolLevel(level)
        );
    }
}

#[test]
fn mqtt_3_1_2_3_connect_reserved_flag_is_malformed() {
    assert_eq!(
        decode_err(&connect_v311(0x03, &[]), None),
        DecodeError::ConnectReservedFlag
    );
    // MQTT 3.1 did not reserve the bit.
    let v31 = connect_bytes(b"MQIsdp", 3, 0x03, &[0x00, 0x01, b'c']);
    assert!(matches!(decode_one(&v31, None), Ok(Packet::Connect(c)) if c.clean_session));
}

#[test]
fn mqtt_3_1_2_11_13_15_will_qos_and_retain_need_the_will_flag() {
    assert_eq!(
        decode_err(&connect_v311(0x0A, &[]), None),
        DecodeError::WillFlagsInconsistent
    );
    assert_eq!(
        decode_err(&connect_v311(0x12, &[]), None),
        DecodeError::WillFlagsInconsistent
    );
    assert_eq!(
        decode_err(&connect_v311(0x22, &[]), None),
        DecodeError::WillFlagsInconsistent
    );
}

#[test]
fn mqtt_3_1_2_14_will_qos_3_is_malformed() {
    let bytes = connect_v311(0x1E, &[0x00, 0x01, b't', 0x00, 0x00]);
    assert_eq!(decode_err(&bytes, None), DecodeError::WillFlagsInconsistent);
}

#[test]
fn mqtt_3_1_2_22_password_without_username_is_malformed() {
    assert_eq!(
        decode_err(&connect_v311(0x42, &[0x00, 0x01, b'p']), None),
        DecodeError::PasswordWithoutUsername
    );
    // MQTT 3.1 had no such rule; the broker's authentication decides.
    let v31 = connect_bytes(b"MQIsdp", 3, 0x42, &[0x00, 0x01, b'c', 0x00, 0x01, b'p']);
    assert!(
        matches!(decode_one(&v31, None), Ok(Packet::Connect(c)) if c.username.is_none() && c.password.is_some())
    );
}

#[test]
fn connack_reserved_flags_and_codes_are_malformed() {
    assert_eq!(
        decode_err(&[0x20, 0x02, 0x02, 0x00], V311),
        DecodeError::ConnAckReservedFlags
    );
    assert_eq!(
        decode_err(&[0x20, 0x02, 0x80, 0x00], V311),
        DecodeError::ConnAckReservedFlags
    );
    assert_eq!(
        decode_err(&[0x20, 0x02, 0x00, 0x06], V311),
        DecodeError::InvalidConnectReturnCode(6)
    );
    assert_eq!(
        decode_err(&[0x20, 0x02, 0x00, 0xFF], V311),
        DecodeError::InvalidConnectReturnCode(255)
    );
}

#[test]
fn mqtt_3_8_3_3_subscribe_without_filters_is_malformed() {
    assert_eq!(
        decode_err(&[0x82, 0x02, 0x00, 0x01], V311),
        DecodeError::EmptySubscribe
    );
}

#[test]
fn mqtt_3_8_3_4_subscribe_reserved_bits_or_qos_3_are_malformed() {
    for options in [0x03, 0x04, 0x81, 0xFC] {
        let bytes = subscribe_bytes(0x82, &[0x00, 0x01, 0x00, 0x01, b't', options]);
        assert_eq!(
            decode_err(&bytes, V311),
            DecodeError::SubscribeReservedQoSBits(options),
            "{options:#04x}"
        );
    }
}

#[test]
fn mqtt_3_9_3_2_reserved_suback_codes_are_malformed() {
    for code in [0x03, 0x7F, 0x81, 0xFF] {
        let bytes = [0x90, 0x03, 0x00, 0x01, code];
        assert_eq!(
            decode_err(&bytes, V311),
            DecodeError::InvalidSubAckCode(code),
            "{code:#04x}"
        );
    }
}

#[test]
fn mqtt_3_10_3_2_unsubscribe_without_filters_is_malformed() {
    assert_eq!(
        decode_err(&[0xA2, 0x02, 0x00, 0x01], V311),
        DecodeError::EmptyUnsubscribe
    );
}

#[test]
fn fields_running_past_the_remaining_length_are_truncated() {
    // Topic length 5, but only 2 bytes of body follow it.
    assert_eq!(
        decode_err(&[0x30, 0x04, 0x00, 0x05, b'a', b'b'], V311),
        DecodeError::Truncated {
            packet_type: "PUBLISH"
        }
    );
    // QoS 1 PUBLISH with no room for its packet id.
    assert_eq!(
        decode_err(&publish_bytes(0x32, b"t", &[0x01]), V311),
        DecodeError::Truncated {
            packet_type: "PUBLISH"
        }
    );
    // CONNECT cut off before its client id.
    let mut cut = connect_v311(0x02, &[]);
    cut.truncate(cut.len() - 3);
    cut[1] -= 3;
    assert_eq!(
        decode_err(&cut, None),
        DecodeError::Truncated {
            packet_type: "CONNECT"
        }
    );
    // Will flag set, but the will is missing.
    assert_eq!(
        decode_err(&connect_v311(0x06, &[]), None),
        DecodeError::Truncated {
            packet_type: "CONNECT"
        }
    );
    // SUBSCRIBE whose last filter has no options byte.
    let subscribe = subscribe_bytes(0x82, &[0x00, 0x01, 0x00, 0x01, b't']);
    assert_eq!(
        decode_err(&subscribe, V311),
        DecodeError::Truncated {
            packet_type: "SUBSCRIBE"
        }
    );
    // Fixed-length packets are judged from the fixed header.
    assert_eq!(
        decode_err(&[0x40, 0x01], V311),
        DecodeError::Truncated {
            packet_type: "PUBACK"
        }
    );
    assert_eq!(
        decode_err(&[0x20, 0x00], V311),
        DecodeError::Truncated {
            packet_type: "CONNACK"
        }
    );
}

#[test]
fn bytes_after_the_last_field_are_trailing() {
    assert_eq!(
        decode_err(&[0xC0, 0x01], V311),
        DecodeError::TrailingBytes {
            packet_type: "PINGREQ",
            count: 1
        }
    );
    assert_eq!(
        decode_err(&[0xE0, 0x02], V311),
        DecodeError::TrailingBytes {
            packet_type: "DISCONNECT",
            count: 2
        }
    );
    assert_eq!(
        decode_err(&[0xB0, 0x03, 0x00, 0x01, 0x00], V311),
        DecodeError::TrailingBytes {
            packet_type: "UNSUBACK",
            count: 1
        }
    );
    let connect = connect_v311(0x02, &[0xAA, 0xBB]);
    assert_eq!(
        decode_err(&connect, None),
        DecodeError::TrailingBytes {
            packet_type: "CONNECT",
            count: 2
        }
    );
}

#[test]
fn errors_name_the_spec_statement() {
    assert!(DecodeError::InvalidQoS
        .to_string()
        .contains("[MQTT-3.3.1-4]"));
    assert!(DecodeError::UnsupportedProtocolLevel(5)
        .to_string()
        .contains("[MQTT-3.1.2-2]"));
    let filter =
        DecodeError::InvalidTopicFilter(TopicError::MisplacedSingleLevelWildcard).to_string();
    assert!(filter.contains("[MQTT-4.7.1-3]"), "{filter}");
}

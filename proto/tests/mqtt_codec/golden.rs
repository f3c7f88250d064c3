//! Golden byte vectors for all fourteen packet types, written out by hand from the
//! MQTT 3.1.1 and 3.1 specifications; each must decode to its packet and encode back
//! to exactly the same bytes.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use starling_proto::mqtt::{
    decode, encode, Ack, ConnAck, Connect, Disconnect, EncodeError, LastWill, Packet, Properties,
    ProtocolVersion, Publish, QoS, ReasonCode, SubAck, SubOptions, Subscribe, UnsubAck,
    Unsubscribe,
};

use super::{decode_one, encode_vec, NO_LIMIT};

const V311: ProtocolVersion = ProtocolVersion::V3_1_1;
const V31: ProtocolVersion = ProtocolVersion::V3_1;

/// Checks both directions: bytes -> packet and packet -> bytes.
fn golden(bytes: &[u8], packet: Packet, version: ProtocolVersion) {
    let decode_version = match packet {
        Packet::Connect(_) => None,
        _ => Some(version),
    };
    assert_eq!(
        decode_one(bytes, decode_version),
        Ok(packet.clone()),
        "decoding {bytes:02x?}"
    );
    assert_eq!(encode_vec(&packet, version), bytes, "encoding {packet:?}");
}

fn publish(
    qos: QoS,
    dup: bool,
    retain: bool,
    topic: &str,
    packet_id: u16,
    payload: &'static [u8],
) -> Packet {
    Packet::Publish(Publish {
        dup,
        qos,
        retain,
        topic: Arc::from(topic),
        packet_id,
        payload: Bytes::from_static(payload),
        properties: Properties::default().into(),
    })
}

pub fn full_connect_v311() -> (Vec<u8>, Packet) {
    #[rustfmt::skip]
    let bytes = vec![
        0x10, 0x20,                                     // CONNECT, remaining length 32
        0x00, 0x04, b'M', b'Q', b'T', b'T',             // protocol name
        0x04,                                           // level 4
        0xEE,                                           // user, password, will retain, will QoS 1, will, clean
        0x00, 0x3C,                                     // keep alive 60
        0x00, 0x03, b'a', b'b', b'c',                   // client id
        0x00, 0x03, b'w', b'/', b't',                   // will topic
        0x00, 0x03, b'b', b'y', b'e',                   // will payload
        0x00, 0x01, b'u',                               // user name
        0x00, 0x02, b'p', b'w',                         // password
    ];
    let packet = Packet::Connect(Connect {
        protocol: V311,
        clean_session: true,
        keep_alive: 60,
        client_id: "abc".into(),
        will: Some(LastWill {
            topic: Arc::from("w/t"),
            payload: Bytes::from_static(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties::default().into(),
        }),
        username: Some("u".into()),
        password: Some(Bytes::from_static(b"pw")),
        properties: Properties::default().into(),
    });
    (bytes, packet)
}

#[test]
fn connect_v311_with_will_and_credentials() {
    let (bytes, packet) = full_connect_v311();
    golden(&bytes, packet, V311);
}

#[test]
fn connect_v311_minimal_with_empty_client_id() {
    #[rustfmt::skip]
    let bytes = [
        0x10, 0x0C,
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04,
        0x02,                                           // clean session only
        0x00, 0x00,                                     // keep alive 0
        0x00, 0x00,                                     // empty client id
    ];
    let packet = Packet::Connect(Connect {
        protocol: V311,
        clean_session: true,
        keep_alive: 0,
        client_id: String::new(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default().into(),
    });
    golden(&bytes, packet, V311);
}

#[test]
fn connect_v31_mqisdp_level_3() {
    #[rustfmt::skip]
    let bytes = [
        0x10, 0x16,                                     // CONNECT, remaining length 22
        0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', // protocol name
        0x03,                                           // level 3
        0xC2,                                           // user, password, clean
        0x00, 0x0A,                                     // keep alive 10
        0x00, 0x02, b'c', b'1',                         // client id
        0x00, 0x01, b'u',                               // user name
        0x00, 0x01, b'p',                               // password
    ];
    let packet = Packet::Connect(Connect {
        protocol: V31,
        clean_session: true,
        keep_alive: 10,
        client_id: "c1".into(),
        will: None,
        username: Some("u".into()),
        password: Some(Bytes::from_static(b"p")),
        properties: Properties::default().into(),
    });
    golden(&bytes, packet, V31);
}

#[test]
fn connack() {
    let accepted = ConnAck::new(true, ReasonCode::Success);
    golden(&[0x20, 0x02, 0x01, 0x00], Packet::ConnAck(accepted), V311);
    let refused = ConnAck::new(false, ReasonCode::NotAuthorized);
    golden(&[0x20, 0x02, 0x00, 0x05], Packet::ConnAck(refused), V311);
    for (code, byte) in [
        (ReasonCode::UnsupportedProtocolVersion, 1),
        (ReasonCode::ClientIdentifierNotValid, 2),
        (ReasonCode::ServerUnavailable, 3),
        (ReasonCode::BadUserNameOrPassword, 4),
    ] {
        golden(
            &[0x20, 0x02, 0x00, byte],
            Packet::ConnAck(ConnAck::new(false, code)),
            V311,
        );
    }
}

#[test]
fn connack_v31_has_no_session_present_flag() {
    let packet = Packet::ConnAck(ConnAck::new(true, ReasonCode::Success));
    assert_eq!(encode_vec(&packet, V31), [0x20, 0x02, 0x00, 0x00]);
}

#[test]
fn publish_qos0() {
    let bytes = [0x30, 0x07, 0x00, 0x03, b'a', b'/', b'b', b'h', b'i'];
    golden(
        &bytes,
        publish(QoS::AtMostOnce, false, false, "a/b", 0, b"hi"),
        V311,
    );
}

#[test]
fn publish_qos1_dup_retain() {
    let bytes = [
        0x3B, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A, b'h', b'i',
    ];
    golden(
        &bytes,
        publish(QoS::AtLeastOnce, true, true, "a/b", 10, b"hi"),
        V311,
    );
}

#[test]
fn publish_qos2_empty_payload() {
    let bytes = [0x34, 0x07, 0x00, 0x03, b'a', b'/', b'b', 0x12, 0x34];
    golden(
        &bytes,
        publish(QoS::ExactlyOnce, false, false, "a/b", 0x1234, b""),
        V311,
    );
}

#[test]
fn publish_acks() {
    golden(&[0x40, 0x02, 0x00, 0x01], Packet::PubAck(Ack::new(1)), V311);
    golden(&[0x50, 0x02, 0x00, 0x02], Packet::PubRec(Ack::new(2)), V311);
    golden(&[0x62, 0x02, 0x00, 0x03], Packet::PubRel(Ack::new(3)), V311);
    golden(
        &[0x70, 0x02, 0xFF, 0xFF],
        Packet::PubComp(Ack::new(0xFFFF)),
        V311,
    );
}

#[test]
fn subscribe() {
    #[rustfmt::skip]
    let bytes = [
        0x82, 0x0C,                                     // SUBSCRIBE, flags 0b0010, remaining length 12
        0x00, 0x01,                                     // packet id 1
        0x00, 0x03, b'a', b'/', b'+', 0x01,             // "a/+" QoS 1
        0x00, 0x01, b'#', 0x02,                         // "#" QoS 2
    ];
    let packet = Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![
            ("a/+".into(), SubOptions::from(QoS::AtLeastOnce)),
            ("#".into(), SubOptions::from(QoS::ExactlyOnce)),
        ],
        properties: Properties::default().into(),
    });
    golden(&bytes, packet, V311);
}

#[test]
fn suback() {
    let bytes = [0x90, 0x06, 0x00, 0x01, 0x01, 0x80, 0x00, 0x02];
    let packet = Packet::SubAck(SubAck {
        packet_id: 1,
        codes: vec![
            ReasonCode::granted(QoS::AtLeastOnce),
            ReasonCode::UnspecifiedError,
            ReasonCode::granted(QoS::AtMostOnce),
            ReasonCode::granted(QoS::ExactlyOnce),
        ],
        properties: Properties::default().into(),
    });
    golden(&bytes, packet, V311);
}

#[test]
fn unsubscribe() {
    let bytes = [
        0xA2, 0x0A, 0x00, 0x02, 0x00, 0x03, b'a', b'/', b'+', 0x00, 0x01, b'#',
    ];
    let packet = Packet::Unsubscribe(Unsubscribe {
        packet_id: 2,
        filters: vec!["a/+".into(), "#".into()],
        properties: Properties::default().into(),
    });
    golden(&bytes, packet, V311);
}

/// A 3.1.1 UNSUBACK: the packet identifier alone.
fn unsuback_v311(packet_id: u16) -> Packet {
    Packet::UnsubAck(UnsubAck {
        packet_id,
        codes: Vec::new(),
        properties: Properties::default().into(),
    })
}

#[test]
fn unsuback() {
    golden(&[0xB0, 0x02, 0x00, 0x02], unsuback_v311(2), V311);
}

#[test]
fn ping_and_disconnect() {
    golden(&[0xC0, 0x00], Packet::PingReq, V311);
    golden(&[0xD0, 0x00], Packet::PingResp, V311);
    golden(
        &[0xE0, 0x00],
        Packet::Disconnect(Disconnect::default()),
        V311,
    );
}

#[test]
fn v31_packets_after_connect_use_the_same_layout() {
    golden(&[0x62, 0x02, 0x00, 0x03], Packet::PubRel(Ack::new(3)), V31);
    golden(
        &[0x30, 0x07, 0x00, 0x03, b'a', b'/', b'b', b'h', b'i'],
        publish(QoS::AtMostOnce, false, false, "a/b", 0, b"hi"),
        V31,
    );
    golden(&[0xC0, 0x00], Packet::PingReq, V31);
}

#[test]
fn v31_retransmissions_may_set_dup_on_pubrel_and_subscribe() {
    // MQTT 3.1 set DUP on retransmitted PUBREL / SUBSCRIBE / UNSUBSCRIBE.
    assert_eq!(
        decode_one(&[0x6A, 0x02, 0x00, 0x03], Some(V31)),
        Ok(Packet::PubRel(Ack::new(3)))
    );
    let subscribe = [0x8A, 0x06, 0x00, 0x01, 0x00, 0x01, b'#', 0x00];
    assert!(decode_one(&subscribe, Some(V31)).is_ok());
}

#[test]
fn payload_shares_the_read_buffer() {
    let mut buf = BytesMut::from(&[0x30, 0x07, 0x00, 0x03, b'a', b'/', b'b', b'h', b'i'][..]);
    let start = buf.as_ptr() as usize;
    let Some(Packet::Publish(p)) = decode(&mut buf, NO_LIMIT, Some(V311)).expect("valid") else {
        panic!("expected PUBLISH");
    };
    assert_eq!(p.payload.as_ptr() as usize, start + 7, "payload was copied");
}

/// A QoS 0 PUBLISH to "t" whose remaining length is exactly `remaining`.
fn publish_with_remaining(remaining: usize) -> Packet {
    let payload = Bytes::from(vec![0; remaining - 3]);
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: Arc::from("t"),
        packet_id: 0,
        payload,
        properties: Properties::default().into(),
    })
}

#[test]
fn remaining_length_boundaries_round_trip() {
    for (remaining, header) in [
        (127usize, &[0x30, 0x7F][..]),
        (128, &[0x30, 0x80, 0x01]),
        (16_383, &[0x30, 0xFF, 0x7F]),
        (16_384, &[0x30, 0x80, 0x80, 0x01]),
        (2_097_151, &[0x30, 0xFF, 0xFF, 0x7F]),
        (2_097_152, &[0x30, 0x80, 0x80, 0x80, 0x01]),
    ] {
        let packet = publish_with_remaining(remaining);
        let bytes = encode_vec(&packet, V311);
        assert_eq!(&bytes[..header.len()], header, "{remaining}");
        assert_eq!(bytes.len(), header.len() + remaining);
        assert_eq!(decode_one(&bytes, Some(V311)), Ok(packet), "{remaining}");
    }
}

#[test]
fn largest_remaining_length_decodes_from_the_header() {
    // 268,435,455 in four bytes: a valid header, so the decoder waits for the body.
    let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F][..]);
    assert_eq!(decode(&mut buf, NO_LIMIT, Some(V311)), Ok(None));
    assert_eq!(buf.len(), 5);
}

#[test]
fn encode_refuses_what_the_wire_cannot_carry() {
    let long = "a".repeat(65_536);
    let mut buf = BytesMut::from(&b"keep"[..]);
    let topic = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: Arc::from(long.as_str()),
        packet_id: 0,
        payload: Bytes::new(),
        properties: Properties::default().into(),
    });
    assert_eq!(
        encode(&topic, V311, &mut buf),
        Err(EncodeError::FieldTooLong {
            field: "topic name",
            len: 65_536
        })
    );
    let subscribe = Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: vec![(long, SubOptions::from(QoS::AtMostOnce))],
        properties: Properties::default().into(),
    });
    assert!(matches!(
        encode(&subscribe, V311, &mut buf),
        Err(EncodeError::FieldTooLong { .. })
    ));

    // One byte over the largest remaining length (the zeroed payload is not touched).
    let too_big = publish_with_remaining(268_435_456);
    assert_eq!(
        encode(&too_big, V311, &mut buf),
        Err(EncodeError::PacketTooLarge {
            remaining: 268_435_456
        })
    );
    assert_eq!(
        &buf[..],
        b"keep",
        "a failed encode must leave the buffer as it was"
    );
}

#[test]
fn mqtt_2_3_1_1_encode_refuses_packet_id_0() {
    let mut buf = BytesMut::new();
    for packet in [
        Packet::PubAck(Ack::new(0)),
        Packet::PubRec(Ack::new(0)),
        Packet::PubRel(Ack::new(0)),
        Packet::PubComp(Ack::new(0)),
        unsuback_v311(0),
        publish(QoS::AtLeastOnce, false, false, "t", 0, b""),
        Packet::Subscribe(Subscribe {
            packet_id: 0,
            filters: vec![("t".into(), SubOptions::from(QoS::AtMostOnce))],
            properties: Properties::default().into(),
        }),
        Packet::SubAck(SubAck {
            packet_id: 0,
            codes: vec![ReasonCode::UnspecifiedError],
            properties: Properties::default().into(),
        }),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 0,
            filters: vec!["t".into()],
            properties: Properties::default().into(),
        }),
    ] {
        assert!(
            matches!(
                encode(&packet, V311, &mut buf),
                Err(EncodeError::ZeroPacketId { .. })
            ),
            "{packet:?}"
        );
        assert!(buf.is_empty());
    }
}

#[test]
fn mqtt_3_3_1_2_encode_refuses_dup_with_qos_0() {
    let mut buf = BytesMut::new();
    let packet = publish(QoS::AtMostOnce, true, false, "t", 0, b"");
    assert_eq!(
        encode(&packet, V311, &mut buf),
        Err(EncodeError::DupWithQoS0)
    );
}

#[test]
fn encode_appends_after_existing_bytes() {
    let mut buf = BytesMut::from(&[0xC0, 0x00][..]);
    encode(&Packet::PubAck(Ack::new(7)), V311, &mut buf).expect("encodable");
    assert_eq!(&buf[..], [0xC0, 0x00, 0x40, 0x02, 0x00, 0x07]);
}

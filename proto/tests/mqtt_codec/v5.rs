//! MQTT 5.0: golden byte vectors for every packet type, written out by hand from
//! the packet layouts of the 5.0 specification (chapter 3) and its property table
//! (section 2.2.2.2); the same packets written toward a 3.1.1 client; encode /
//! decode round trips of generated packets; and malformed property lists and
//! options through the full decoder, with the reason code each one earns.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use starling_proto::mqtt::topic::validate_topic_filter;
use starling_proto::mqtt::v5::{PropertyContext, PropertyError, VARINT_MAX};
use starling_proto::mqtt::{
    decode, encode, encoded_len, Ack, Auth, ConnAck, Connect, DecodeError, Disconnect, EncodeError,
    LastWill, Packet, Properties, ProtocolVersion, Publish, QoS, ReasonCode, RetainHandling,
    SubAck, SubOptions, Subscribe, UnsubAck, Unsubscribe,
};

use super::golden::full_connect_v311;
use super::{decode_err, decode_one, encode_vec, NO_LIMIT};

const V5: ProtocolVersion = ProtocolVersion::V5;
const V311: ProtocolVersion = ProtocolVersion::V3_1_1;

/// CONNECT is decoded before a version is known; everything else as MQTT 5.
fn decode_version(packet: &Packet) -> Option<ProtocolVersion> {
    match packet {
        Packet::Connect(_) => None,
        _ => Some(V5),
    }
}

/// Checks both directions, bytes -> packet and packet -> bytes, and that
/// `encoded_len` agrees. Every vector here is under 128 bytes, so its second
/// byte is the whole remaining length, which is checked against the vector too.
fn golden(bytes: &[u8], packet: Packet) {
    assert_eq!(
        usize::from(bytes[1]),
        bytes.len() - 2,
        "remaining length of {bytes:02x?}"
    );
    assert_eq!(
        decode_one(bytes, decode_version(&packet)),
        Ok(packet.clone()),
        "decoding {bytes:02x?}"
    );
    assert_eq!(encode_vec(&packet, V5), bytes, "encoding {packet:?}");
    assert_eq!(
        encoded_len(&packet, V5),
        Ok(bytes.len()),
        "encoded_len of {packet:?}"
    );
}

/// A spelling the encoder does not use (it leaves out what it may), which must
/// still decode to `packet`.
fn decodes_to(bytes: &[u8], packet: Packet) {
    assert_eq!(
        usize::from(bytes[1]),
        bytes.len() - 2,
        "remaining length of {bytes:02x?}"
    );
    assert_eq!(
        decode_one(bytes, decode_version(&packet)),
        Ok(packet),
        "decoding {bytes:02x?}"
    );
}

fn user(name: &str, value: &str) -> (String, String) {
    (name.into(), value.into())
}

fn no_properties() -> Properties {
    Properties::default()
}

// ---------------------------------------------------------------------------
// a. Golden byte vectors (MQTT 5.0 chapter 3)
// ---------------------------------------------------------------------------

#[test]
fn connect_with_properties_and_will_properties() {
    #[rustfmt::skip]
    let bytes = [
        0x10, 0x58,                                     // CONNECT, remaining length 88
        0x00, 0x04, b'M', b'Q', b'T', b'T',             // protocol name
        0x05,                                           // level 5
        0xCE,                                           // user, password, will QoS 1, will, clean start
        0x00, 0x1E,                                     // keep alive 30
        0x1B,                                           // 27 bytes of properties
        0x11, 0x00, 0x00, 0x0E, 0x10,                   //   session expiry interval 3600
        0x17, 0x00,                                     //   request problem information 0
        0x19, 0x01,                                     //   request response information 1
        0x21, 0x00, 0x64,                               //   receive maximum 100
        0x22, 0x00, 0x0A,                               //   topic alias maximum 10
        0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v',       //   user property k = v
        0x27, 0x00, 0x00, 0x10, 0x00,                   //   maximum packet size 4096
        0x00, 0x04, b'c', b'l', b'i', b'1',             // client id
        0x1A,                                           // 26 bytes of will properties
        0x01, 0x01,                                     //   payload format indicator: UTF-8
        0x02, 0x00, 0x00, 0x00, 0x3C,                   //   message expiry interval 60
        0x03, 0x00, 0x04, b't', b'e', b'x', b't',       //   content type "text"
        0x18, 0x00, 0x00, 0x00, 0x0A,                   //   will delay interval 10
        0x26, 0x00, 0x01, b'w', 0x00, 0x01, b'1',       //   user property w = 1
        0x00, 0x03, b'w', b'/', b't',                   // will topic
        0x00, 0x03, b'b', b'y', b'e',                   // will payload
        0x00, 0x01, b'u',                               // user name
        0x00, 0x02, b'p', b'w',                         // password
    ];
    let packet = Packet::Connect(Connect {
        protocol: V5,
        clean_session: true,
        keep_alive: 30,
        client_id: "cli1".into(),
        will: Some(LastWill {
            topic: Arc::from("w/t"),
            payload: Bytes::from_static(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties {
                payload_format_indicator: Some(1),
                message_expiry_interval: Some(60),
                content_type: Some("text".into()),
                will_delay_interval: Some(10),
                user_properties: vec![user("w", "1")],
                ..Properties::default()
            }
            .into(),
        }),
        username: Some("u".into()),
        password: Some(Bytes::from_static(b"pw")),
        properties: Properties {
            session_expiry_interval: Some(3600),
            request_problem_information: Some(0),
            request_response_information: Some(1),
            receive_maximum: Some(100),
            topic_alias_maximum: Some(10),
            user_properties: vec![user("k", "v")],
            maximum_packet_size: Some(4096),
            ..Properties::default()
        }
        .into(),
    });
    golden(&bytes, packet);
}

#[test]
fn connect_with_authentication_method_and_password_without_user_name() {
    // MQTT 5 allows a password without a user name (section 3.1.2.9).
    #[rustfmt::skip]
    let bytes = [
        0x10, 0x25,                                     // CONNECT, remaining length 37
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05,       // "MQTT" level 5
        0x40,                                           // password only; clean start 0
        0x00, 0x00,                                     // keep alive 0
        0x15,                                           // 21 bytes of properties
        0x15, 0x00, 0x0D, b'S', b'C', b'R', b'A', b'M',
              b'-', b'S', b'H', b'A', b'-', b'2', b'5', b'6', // authentication method
        0x16, 0x00, 0x02, 0x01, 0x02,                   //   authentication data
        0x00, 0x00,                                     // empty client id
        0x00, 0x01, b'p',                               // password
    ];
    let packet = Packet::Connect(Connect {
        protocol: V5,
        clean_session: false,
        keep_alive: 0,
        client_id: String::new(),
        will: None,
        username: None,
        password: Some(Bytes::from_static(b"p")),
        properties: Properties {
            authentication_method: Some("SCRAM-SHA-256".into()),
            authentication_data: Some(Bytes::from_static(&[0x01, 0x02])),
            ..Properties::default()
        }
        .into(),
    });
    golden(&bytes, packet);
}

#[test]
fn connect_minimal() {
    #[rustfmt::skip]
    let bytes = [
        0x10, 0x0D,                                     // CONNECT, remaining length 13
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05,       // "MQTT" level 5
        0x02,                                           // clean start
        0x00, 0x3C,                                     // keep alive 60
        0x00,                                           // no properties
        0x00, 0x00,                                     // empty client id
    ];
    let packet = Packet::Connect(Connect {
        protocol: V5,
        clean_session: true,
        keep_alive: 60,
        client_id: String::new(),
        will: None,
        username: None,
        password: None,
        properties: no_properties().into(),
    });
    golden(&bytes, packet);
}

#[test]
fn connack_with_reason_code_and_properties() {
    #[rustfmt::skip]
    let bytes = [
        0x20, 0x24,                                     // CONNACK, remaining length 36
        0x00,                                           // session present 0
        0x00,                                           // reason code: Success
        0x21,                                           // 33 bytes of properties
        0x12, 0x00, 0x06, b'a', b'u', b't', b'o', b'-', b'1', // assigned client identifier
        0x13, 0x00, 0x3C,                               //   server keep alive 60
        0x21, 0x00, 0x14,                               //   receive maximum 20
        0x22, 0x00, 0x08,                               //   topic alias maximum 8
        0x24, 0x01,                                     //   maximum QoS 1
        0x25, 0x00,                                     //   retain available 0
        0x27, 0x00, 0x10, 0x00, 0x00,                   //   maximum packet size 1 MiB
        0x28, 0x01,                                     //   wildcard subscription available
        0x29, 0x01,                                     //   subscription identifiers available
        0x2A, 0x00,                                     //   shared subscription available 0
    ];
    let packet = Packet::ConnAck(ConnAck {
        session_present: false,
        code: ReasonCode::Success,
        properties: Properties {
            assigned_client_identifier: Some("auto-1".into()),
            server_keep_alive: Some(60),
            receive_maximum: Some(20),
            topic_alias_maximum: Some(8),
            maximum_qos: Some(1),
            retain_available: Some(0),
            maximum_packet_size: Some(1 << 20),
            wildcard_subscription_available: Some(1),
            subscription_identifier_available: Some(1),
            shared_subscription_available: Some(0),
            ..Properties::default()
        }
        .into(),
    });
    golden(&bytes, packet);
}

#[test]
fn connack_refusals_and_session_present() {
    // Session present, Success, an empty property list.
    golden(
        &[0x20, 0x03, 0x01, 0x00, 0x00],
        Packet::ConnAck(ConnAck::new(true, ReasonCode::Success)),
    );
    #[rustfmt::skip]
    let not_authorized = [
        0x20, 0x08,                                     // CONNACK, remaining length 8
        0x00, 0x87,                                     // no session; Not authorized
        0x05, 0x1F, 0x00, 0x02, b'n', b'o',             // reason string "no"
    ];
    golden(
        &not_authorized,
        Packet::ConnAck(ConnAck {
            session_present: false,
            code: ReasonCode::NotAuthorized,
            properties: Properties {
                reason_string: Some("no".into()),
                ..Properties::default()
            }
            .into(),
        }),
    );
    #[rustfmt::skip]
    let use_another_server = [
        0x20, 0x0C,                                     // CONNACK, remaining length 12
        0x00, 0x9C,                                     // Use another server
        0x09, 0x1C, 0x00, 0x06, b'b', b':', b'1', b'8', b'8', b'3', // server reference
    ];
    golden(
        &use_another_server,
        Packet::ConnAck(ConnAck {
            session_present: false,
            code: ReasonCode::UseAnotherServer,
            properties: Properties {
                server_reference: Some("b:1883".into()),
                ..Properties::default()
            }
            .into(),
        }),
    );
}

/// The PUBLISH of [`publish_with_every_property`], its properties in the
/// order the encoder writes them.
fn full_publish() -> (Vec<u8>, Packet) {
    #[rustfmt::skip]
    let bytes = vec![
        0x33, 0x3F,                                     // PUBLISH QoS 1 retain, remaining length 63
        0x00, 0x03, b'a', b'/', b'b',                   // topic
        0x00, 0x0A,                                     // packet id 10
        0x35,                                           // 53 bytes of properties
        0x01, 0x01,                                     //   payload format indicator: UTF-8
        0x02, 0x00, 0x00, 0x00, 0x78,                   //   message expiry interval 120
        0x03, 0x00, 0x0A, b't', b'e', b'x', b't', b'/',
              b'p', b'l', b'a', b'i', b'n',             //   content type "text/plain"
        0x08, 0x00, 0x05, b'r', b'e', b'p', b'l', b'y', //   response topic "reply"
        0x09, 0x00, 0x02, 0xCA, 0xFE,                   //   correlation data
        0x0B, 0xAC, 0x02,                               //   subscription identifier 300
        0x23, 0x00, 0x07,                               //   topic alias 7
        0x26, 0x00, 0x01, b'z', 0x00, 0x01, b'1',       //   user property z = 1
        0x26, 0x00, 0x01, b'a', 0x00, 0x01, b'2',       //   user property a = 2, after z
        b'h', b'i',                                     // payload
    ];
    let packet = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: true,
        topic: Arc::from("a/b"),
        packet_id: 10,
        payload: Bytes::from_static(b"hi"),
        properties: Properties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(120),
            content_type: Some("text/plain".into()),
            response_topic: Some("reply".into()),
            correlation_data: Some(Bytes::from_static(&[0xCA, 0xFE])),
            subscription_identifiers: vec![300],
            topic_alias: Some(7),
            user_properties: vec![user("z", "1"), user("a", "2")],
            ..Properties::default()
        }
        .into(),
    });
    (bytes, packet)
}

#[test]
fn publish_with_every_property() {
    let (bytes, packet) = full_publish();
    golden(&bytes, packet);
}

#[test]
fn publish_without_properties_and_with_several_subscription_identifiers() {
    let plain = [0x30, 0x05, 0x00, 0x01, b't', 0x00, b'x'];
    golden(
        &plain,
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: Arc::from("t"),
            packet_id: 0,
            payload: Bytes::from_static(b"x"),
            properties: no_properties().into(),
        }),
    );
    #[rustfmt::skip]
    let two_ids = [
        0x3C, 0x0D,                                     // PUBLISH QoS 2 DUP, remaining length 13
        0x00, 0x01, b't',                               // topic
        0x00, 0x05,                                     // packet id 5
        0x07,                                           // 7 bytes of properties
        0x0B, 0x01,                                     //   subscription identifier 1
        0x0B, 0xFF, 0xFF, 0xFF, 0x7F,                   //   subscription identifier 268,435,455
                                                        // empty payload
    ];
    golden(
        &two_ids,
        Packet::Publish(Publish {
            dup: true,
            qos: QoS::ExactlyOnce,
            retain: false,
            topic: Arc::from("t"),
            packet_id: 5,
            payload: Bytes::new(),
            properties: Properties {
                subscription_identifiers: vec![1, VARINT_MAX],
                ..Properties::default()
            }
            .into(),
        }),
    );
}

#[test]
fn publish_with_empty_topic_and_topic_alias() {
    #[rustfmt::skip]
    let bytes = [
        0x30, 0x07,                                     // PUBLISH QoS 0, remaining length 7
        0x00, 0x00,                                     // empty topic
        0x03, 0x23, 0x00, 0x07,                         // topic alias 7
        b'x',                                           // payload
    ];
    golden(
        &bytes,
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: Arc::from(""),
            packet_id: 0,
            payload: Bytes::from_static(b"x"),
            properties: Properties {
                topic_alias: Some(7),
                ..Properties::default()
            }
            .into(),
        }),
    );
}

#[test]
fn puback_short_form_reason_code_only_and_with_properties() {
    // Remaining length 2: Success, no properties (section 3.4.2.1).
    golden(&[0x40, 0x02, 0x00, 0x01], Packet::PubAck(Ack::new(1)));
    // Remaining length 3: a reason code and no properties.
    golden(
        &[0x40, 0x03, 0x00, 0x01, 0x10],
        Packet::PubAck(Ack::with_reason(1, ReasonCode::NoMatchingSubscribers)),
    );
    #[rustfmt::skip]
    let with_properties = [
        0x40, 0x14,                                     // PUBACK, remaining length 20
        0x00, 0x01,                                     // packet id 1
        0x87,                                           // Not authorized
        0x10,                                           // 16 bytes of properties
        0x1F, 0x00, 0x06, b'd', b'e', b'n', b'i', b'e', b'd', // reason string
        0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v',       //   user property k = v
    ];
    golden(
        &with_properties,
        Packet::PubAck(Ack {
            packet_id: 1,
            reason: ReasonCode::NotAuthorized,
            properties: Properties {
                reason_string: Some("denied".into()),
                user_properties: vec![user("k", "v")],
                ..Properties::default()
            }
            .into(),
        }),
    );
    // Success with properties: the reason code byte must be written.
    #[rustfmt::skip]
    let success_with_properties = [
        0x40, 0x0C,                                     // PUBACK, remaining length 12
        0x00, 0x02,                                     // packet id 2
        0x00,                                           // Success
        0x08, 0x1F, 0x00, 0x05, b'q', b'u', b'e', b'u', b'e', // reason string "queue"
    ];
    golden(
        &success_with_properties,
        Packet::PubAck(Ack {
            packet_id: 2,
            reason: ReasonCode::Success,
            properties: Properties {
                reason_string: Some("queue".into()),
                ..Properties::default()
            }
            .into(),
        }),
    );
    // Longer spellings of the same acknowledgements decode alike.
    decodes_to(&[0x40, 0x03, 0x00, 0x01, 0x00], Packet::PubAck(Ack::new(1)));
    decodes_to(
        &[0x40, 0x04, 0x00, 0x01, 0x00, 0x00],
        Packet::PubAck(Ack::new(1)),
    );
    decodes_to(
        &[0x40, 0x04, 0x00, 0x01, 0x10, 0x00],
        Packet::PubAck(Ack::with_reason(1, ReasonCode::NoMatchingSubscribers)),
    );
}

#[test]
fn pubrec_pubrel_pubcomp() {
    golden(&[0x50, 0x02, 0x00, 0x07], Packet::PubRec(Ack::new(7)));
    golden(
        &[0x50, 0x03, 0x00, 0x05, 0x10],
        Packet::PubRec(Ack::with_reason(5, ReasonCode::NoMatchingSubscribers)),
    );
    #[rustfmt::skip]
    let quota = [
        0x50, 0x0C,                                     // PUBREC, remaining length 12
        0x00, 0x06,                                     // packet id 6
        0x97,                                           // Quota exceeded
        0x08, 0x1F, 0x00, 0x05, b'q', b'u', b'o', b't', b'a', // reason string "quota"
    ];
    golden(
        &quota,
        Packet::PubRec(Ack {
            packet_id: 6,
            reason: ReasonCode::QuotaExceeded,
            properties: Properties {
                reason_string: Some("quota".into()),
                ..Properties::default()
            }
            .into(),
        }),
    );

    // PUBREL keeps its fixed-header flags 0b0010.
    golden(&[0x62, 0x02, 0x00, 0x05], Packet::PubRel(Ack::new(5)));
    golden(
        &[0x62, 0x03, 0x00, 0x05, 0x92],
        Packet::PubRel(Ack::with_reason(5, ReasonCode::PacketIdentifierNotFound)),
    );

    golden(&[0x70, 0x02, 0x00, 0x05], Packet::PubComp(Ack::new(5)));
    golden(
        &[0x70, 0x03, 0x00, 0x05, 0x92],
        Packet::PubComp(Ack::with_reason(5, ReasonCode::PacketIdentifierNotFound)),
    );
    #[rustfmt::skip]
    let with_user_property = [
        0x70, 0x0B,                                     // PUBCOMP, remaining length 11
        0x00, 0x09,                                     // packet id 9
        0x00,                                           // Success
        0x07, 0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // user property k = v
    ];
    golden(
        &with_user_property,
        Packet::PubComp(Ack {
            packet_id: 9,
            reason: ReasonCode::Success,
            properties: Properties {
                user_properties: vec![user("k", "v")],
                ..Properties::default()
            }
            .into(),
        }),
    );
}

fn v5_subscribe() -> (Vec<u8>, Packet) {
    #[rustfmt::skip]
    let bytes = vec![
        0x82, 0x21,                                     // SUBSCRIBE, flags 0b0010, remaining length 33
        0x00, 0x0A,                                     // packet id 10
        0x0A,                                           // 10 bytes of properties
        0x0B, 0xE8, 0x07,                               //   subscription identifier 1000
        0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v',       //   user property k = v
        0x00, 0x03, b'a', b'/', b'+', 0x05,             // "a/+": QoS 1, no local
        0x00, 0x03, b'b', b'/', b'#', 0x1A,             // "b/#": QoS 2, retain as published, retain handling 1
        0x00, 0x01, b'c', 0x20,                         // "c": QoS 0, retain handling 2
        0x00, 0x01, b'd', 0x2D,                         // "d": QoS 1, no local, retain as published, retain handling 2
    ];
    let options = |qos, no_local, retain_as_published, retain_handling| SubOptions {
        qos,
        no_local,
        retain_as_published,
        retain_handling,
    };
    let packet = Packet::Subscribe(Subscribe {
        packet_id: 10,
        filters: vec![
            (
                "a/+".into(),
                options(QoS::AtLeastOnce, true, false, RetainHandling::Always),
            ),
            (
                "b/#".into(),
                options(QoS::ExactlyOnce, false, true, RetainHandling::IfNew),
            ),
            (
                "c".into(),
                options(QoS::AtMostOnce, false, false, RetainHandling::Never),
            ),
            (
                "d".into(),
                options(QoS::AtLeastOnce, true, true, RetainHandling::Never),
            ),
        ],
        properties: Properties {
            subscription_identifiers: vec![1000],
            user_properties: vec![user("k", "v")],
            ..Properties::default()
        }
        .into(),
    });
    (bytes, packet)
}

#[test]
fn subscribe_with_subscription_identifier_and_options() {
    let (bytes, packet) = v5_subscribe();
    golden(&bytes, packet);
}

#[test]
fn suback_with_mixed_reason_codes() {
    #[rustfmt::skip]
    let bytes = [
        0x90, 0x0E,                                     // SUBACK, remaining length 14
        0x00, 0x0A,                                     // packet id 10
        0x05, 0x1F, 0x00, 0x02, b'n', b'o',             // reason string "no"
        0x00, 0x01, 0x02,                               // granted QoS 0, 1, 2
        0x8F,                                           // topic filter invalid
        0xA1,                                           // subscription identifiers not supported
        0x87,                                           // not authorized
    ];
    golden(
        &bytes,
        Packet::SubAck(SubAck {
            packet_id: 10,
            codes: vec![
                ReasonCode::Success,
                ReasonCode::GrantedQoS1,
                ReasonCode::GrantedQoS2,
                ReasonCode::TopicFilterInvalid,
                ReasonCode::SubscriptionIdentifiersNotSupported,
                ReasonCode::NotAuthorized,
            ],
            properties: Properties {
                reason_string: Some("no".into()),
                ..Properties::default()
            }
            .into(),
        }),
    );
    golden(
        &[0x90, 0x04, 0x00, 0x01, 0x00, 0x01],
        Packet::SubAck(SubAck {
            packet_id: 1,
            codes: vec![ReasonCode::granted(QoS::AtLeastOnce)],
            properties: no_properties().into(),
        }),
    );
}

#[test]
fn unsubscribe_with_user_property() {
    #[rustfmt::skip]
    let bytes = [
        0xA2, 0x12,                                     // UNSUBSCRIBE, flags 0b0010, remaining length 18
        0x00, 0x0B,                                     // packet id 11
        0x07, 0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // user property k = v
        0x00, 0x03, b'a', b'/', b'+',                   // "a/+"
        0x00, 0x01, b'#',                               // "#"
    ];
    golden(
        &bytes,
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 11,
            filters: vec!["a/+".into(), "#".into()],
            properties: Properties {
                user_properties: vec![user("k", "v")],
                ..Properties::default()
            }
            .into(),
        }),
    );
}

#[test]
fn unsuback_with_reason_codes() {
    #[rustfmt::skip]
    let bytes = [
        0xB0, 0x05,                                     // UNSUBACK, remaining length 5
        0x00, 0x0B,                                     // packet id 11
        0x00,                                           // no properties
        0x00,                                           // Success
        0x11,                                           // No subscription existed
    ];
    golden(
        &bytes,
        Packet::UnsubAck(UnsubAck {
            packet_id: 11,
            codes: vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted],
            properties: no_properties().into(),
        }),
    );
    #[rustfmt::skip]
    let with_reason_string = [
        0xB0, 0x09,                                     // UNSUBACK, remaining length 9
        0x00, 0x0C,                                     // packet id 12
        0x05, 0x1F, 0x00, 0x02, b'n', b'o',             // reason string "no"
        0x87,                                           // Not authorized
    ];
    golden(
        &with_reason_string,
        Packet::UnsubAck(UnsubAck {
            packet_id: 12,
            codes: vec![ReasonCode::NotAuthorized],
            properties: Properties {
                reason_string: Some("no".into()),
                ..Properties::default()
            }
            .into(),
        }),
    );
}

#[test]
fn disconnect_forms() {
    // No body: Normal disconnection (section 3.14.2.1).
    golden(&[0xE0, 0x00], Packet::Disconnect(Disconnect::default()));
    // A reason code alone.
    golden(
        &[0xE0, 0x01, 0x04],
        Packet::Disconnect(Disconnect::new(ReasonCode::DisconnectWithWillMessage)),
    );
    #[rustfmt::skip]
    let taken_over = [
        0xE0, 0x14,                                     // DISCONNECT, remaining length 20
        0x8E,                                           // Session taken over
        0x12,                                           // 18 bytes of properties
        0x11, 0x00, 0x00, 0x00, 0x00,                   //   session expiry interval 0
        0x1F, 0x00, 0x0A, b't', b'a', b'k', b'e', b'n',
              b' ', b'o', b'v', b'e', b'r',             //   reason string "taken over"
    ];
    golden(
        &taken_over,
        Packet::Disconnect(Disconnect {
            reason: ReasonCode::SessionTakenOver,
            properties: Properties {
                session_expiry_interval: Some(0),
                reason_string: Some("taken over".into()),
                ..Properties::default()
            }
            .into(),
        }),
    );
    #[rustfmt::skip]
    let moved = [
        0xE0, 0x08,                                     // DISCONNECT, remaining length 8
        0x9D,                                           // Server moved
        0x06, 0x1C, 0x00, 0x03, b'b', b':', b'2',       // server reference "b:2"
    ];
    golden(
        &moved,
        Packet::Disconnect(Disconnect {
            reason: ReasonCode::ServerMoved,
            properties: Properties {
                server_reference: Some("b:2".into()),
                ..Properties::default()
            }
            .into(),
        }),
    );
    // Longer spellings of Success, and a reason code with an empty list.
    decodes_to(
        &[0xE0, 0x01, 0x00],
        Packet::Disconnect(Disconnect::default()),
    );
    decodes_to(
        &[0xE0, 0x02, 0x00, 0x00],
        Packet::Disconnect(Disconnect::default()),
    );
    decodes_to(
        &[0xE0, 0x02, 0x04, 0x00],
        Packet::Disconnect(Disconnect::new(ReasonCode::DisconnectWithWillMessage)),
    );
}

#[test]
fn auth_continue_authentication() {
    #[rustfmt::skip]
    let bytes = [
        0xF0, 0x19,                                     // AUTH, remaining length 25
        0x18,                                           // Continue authentication
        0x17,                                           // 23 bytes of properties
        0x15, 0x00, 0x0D, b'S', b'C', b'R', b'A', b'M',
              b'-', b'S', b'H', b'A', b'-', b'2', b'5', b'6', // authentication method
        0x16, 0x00, 0x04, 0x01, 0x02, 0x03, 0x04,       //   authentication data
    ];
    golden(
        &bytes,
        Packet::Auth(Auth {
            reason: ReasonCode::ContinueAuthentication,
            properties: Properties {
                authentication_method: Some("SCRAM-SHA-256".into()),
                authentication_data: Some(Bytes::from_static(&[1, 2, 3, 4])),
                ..Properties::default()
            }
            .into(),
        }),
    );
    // No body: Success.
    golden(
        &[0xF0, 0x00],
        Packet::Auth(Auth {
            reason: ReasonCode::Success,
            properties: no_properties().into(),
        }),
    );
    #[rustfmt::skip]
    let reauthenticate = [
        0xF0, 0x0A,                                     // AUTH, remaining length 10
        0x19,                                           // Re-authenticate
        0x08, 0x15, 0x00, 0x05, b'P', b'L', b'A', b'I', b'N', // authentication method
    ];
    golden(
        &reauthenticate,
        Packet::Auth(Auth {
            reason: ReasonCode::ReAuthenticate,
            properties: Properties {
                authentication_method: Some("PLAIN".into()),
                ..Properties::default()
            }
            .into(),
        }),
    );
}

#[test]
fn pingreq_pingresp() {
    golden(&[0xC0, 0x00], Packet::PingReq);
    golden(&[0xD0, 0x00], Packet::PingResp);
}

// ---------------------------------------------------------------------------
// b. The same packets toward a 3.1.1 client
// ---------------------------------------------------------------------------

/// `packet` written for 3.1.1 is `bytes`, which a 3.1.1 peer reads as `read_back`.
fn down_level(packet: Packet, bytes: &[u8], read_back: Packet) {
    assert_eq!(encode_vec(&packet, V311), bytes, "encoding {packet:?}");
    assert_eq!(
        encoded_len(&packet, V311),
        Ok(bytes.len()),
        "encoded_len of {packet:?}"
    );
    assert_eq!(
        decode_one(bytes, Some(V311)),
        Ok(read_back),
        "decoding {bytes:02x?}"
    );
}

fn reason_string(text: &str) -> Properties {
    Properties {
        reason_string: Some(text.into()),
        user_properties: vec![user("k", "v")],
        ..Properties::default()
    }
}

#[test]
fn connack_toward_3_1_1_drops_properties_and_maps_the_reason_code() {
    down_level(
        Packet::ConnAck(ConnAck {
            session_present: true,
            code: ReasonCode::NotAuthorized,
            properties: reason_string("no").into(),
        }),
        &[0x20, 0x02, 0x01, 0x05],
        Packet::ConnAck(ConnAck::new(true, ReasonCode::NotAuthorized)),
    );
    down_level(
        Packet::ConnAck(ConnAck {
            session_present: false,
            code: ReasonCode::ServerUnavailable,
            properties: Properties {
                server_keep_alive: Some(10),
                ..reason_string("down")
            }
            .into(),
        }),
        &[0x20, 0x02, 0x00, 0x03],
        Packet::ConnAck(ConnAck::new(false, ReasonCode::ServerUnavailable)),
    );
    // The six codes 3.1.1 has, and 0x03 Server unavailable for the rest.
    for (code, byte) in [
        (ReasonCode::Success, 0),
        (ReasonCode::UnsupportedProtocolVersion, 1),
        (ReasonCode::ClientIdentifierNotValid, 2),
        (ReasonCode::ServerUnavailable, 3),
        (ReasonCode::BadUserNameOrPassword, 4),
        (ReasonCode::NotAuthorized, 5),
        (ReasonCode::UnspecifiedError, 3),
        (ReasonCode::MalformedPacket, 3),
        (ReasonCode::ProtocolError, 3),
        (ReasonCode::ImplementationSpecificError, 3),
        (ReasonCode::ServerBusy, 3),
        (ReasonCode::PacketTooLarge, 3),
        (ReasonCode::QuotaExceeded, 3),
        (ReasonCode::UseAnotherServer, 3),
        (ReasonCode::ServerMoved, 3),
        (ReasonCode::ConnectionRateExceeded, 3),
    ] {
        assert_eq!(code.connack_v3(), byte, "{code:?}");
        let read_back = ReasonCode::from_connack_v3(byte).expect("a 3.1.1 return code");
        down_level(
            Packet::ConnAck(ConnAck::new(false, code)),
            &[0x20, 0x02, 0x00, byte],
            Packet::ConnAck(ConnAck::new(false, read_back)),
        );
    }
    // MQTT 3.1 has no session-present flag either.
    let packet = Packet::ConnAck(ConnAck {
        session_present: true,
        code: ReasonCode::NotAuthorized,
        properties: reason_string("no").into(),
    });
    assert_eq!(
        encode_vec(&packet, ProtocolVersion::V3_1),
        [0x20, 0x02, 0x00, 0x05]
    );
}

#[test]
fn suback_toward_3_1_1_writes_every_failure_as_0x80() {
    down_level(
        Packet::SubAck(SubAck {
            packet_id: 10,
            codes: vec![
                ReasonCode::GrantedQoS1,
                ReasonCode::TopicFilterInvalid,
                ReasonCode::Success,
                ReasonCode::SubscriptionIdentifiersNotSupported,
                ReasonCode::GrantedQoS2,
                ReasonCode::NotAuthorized,
            ],
            properties: reason_string("no").into(),
        }),
        &[0x90, 0x08, 0x00, 0x0A, 0x01, 0x80, 0x00, 0x80, 0x02, 0x80],
        Packet::SubAck(SubAck {
            packet_id: 10,
            codes: vec![
                ReasonCode::GrantedQoS1,
                ReasonCode::UnspecifiedError,
                ReasonCode::Success,
                ReasonCode::UnspecifiedError,
                ReasonCode::GrantedQoS2,
                ReasonCode::UnspecifiedError,
            ],
            properties: no_properties().into(),
        }),
    );
}

#[test]
fn unsuback_toward_3_1_1_is_the_packet_identifier_alone() {
    down_level(
        Packet::UnsubAck(UnsubAck {
            packet_id: 11,
            codes: vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted],
            properties: reason_string("gone").into(),
        }),
        &[0xB0, 0x02, 0x00, 0x0B],
        Packet::UnsubAck(UnsubAck {
            packet_id: 11,
            codes: Vec::new(),
            properties: no_properties().into(),
        }),
    );
}

#[test]
fn acks_toward_3_1_1_drop_reason_code_and_properties() {
    let ack = |packet_id, reason| Ack {
        packet_id,
        reason,
        properties: reason_string("why").into(),
    };
    down_level(
        Packet::PubAck(ack(1, ReasonCode::NoMatchingSubscribers)),
        &[0x40, 0x02, 0x00, 0x01],
        Packet::PubAck(Ack::new(1)),
    );
    down_level(
        Packet::PubRec(ack(2, ReasonCode::QuotaExceeded)),
        &[0x50, 0x02, 0x00, 0x02],
        Packet::PubRec(Ack::new(2)),
    );
    down_level(
        Packet::PubRel(ack(3, ReasonCode::PacketIdentifierNotFound)),
        &[0x62, 0x02, 0x00, 0x03],
        Packet::PubRel(Ack::new(3)),
    );
    down_level(
        Packet::PubComp(ack(4, ReasonCode::Success)),
        &[0x70, 0x02, 0x00, 0x04],
        Packet::PubComp(Ack::new(4)),
    );
}

#[test]
fn disconnect_toward_3_1_1_has_no_body() {
    down_level(
        Packet::Disconnect(Disconnect {
            reason: ReasonCode::SessionTakenOver,
            properties: Properties {
                session_expiry_interval: Some(0),
                ..reason_string("taken over")
            }
            .into(),
        }),
        &[0xE0, 0x00],
        Packet::Disconnect(Disconnect::default()),
    );
}

#[test]
fn publish_toward_3_1_1_drops_its_properties() {
    let (_, packet) = full_publish();
    #[rustfmt::skip]
    let bytes = [
        0x33, 0x09,                                     // PUBLISH QoS 1 retain, remaining length 9
        0x00, 0x03, b'a', b'/', b'b',                   // topic
        0x00, 0x0A,                                     // packet id 10
        b'h', b'i',                                     // payload
    ];
    let Packet::Publish(publish) = packet.clone() else {
        unreachable!()
    };
    down_level(
        packet,
        &bytes,
        Packet::Publish(Publish {
            properties: no_properties().into(),
            ..publish
        }),
    );
}

#[test]
fn subscribe_and_unsubscribe_toward_3_1_1_keep_only_the_qos() {
    let (_, packet) = v5_subscribe();
    #[rustfmt::skip]
    let bytes = [
        0x82, 0x16,                                     // SUBSCRIBE, remaining length 22
        0x00, 0x0A,                                     // packet id 10
        0x00, 0x03, b'a', b'/', b'+', 0x01,             // "a/+" QoS 1
        0x00, 0x03, b'b', b'/', b'#', 0x02,             // "b/#" QoS 2
        0x00, 0x01, b'c', 0x00,                         // "c" QoS 0
        0x00, 0x01, b'd', 0x01,                         // "d" QoS 1
    ];
    let read_back = Packet::Subscribe(Subscribe {
        packet_id: 10,
        filters: vec![
            ("a/+".into(), SubOptions::from(QoS::AtLeastOnce)),
            ("b/#".into(), SubOptions::from(QoS::ExactlyOnce)),
            ("c".into(), SubOptions::from(QoS::AtMostOnce)),
            ("d".into(), SubOptions::from(QoS::AtLeastOnce)),
        ],
        properties: no_properties().into(),
    });
    down_level(packet, &bytes, read_back);

    let unsubscribe = Unsubscribe {
        packet_id: 11,
        filters: vec!["a/+".into(), "#".into()],
        properties: reason_string("ignored").into(),
    };
    down_level(
        Packet::Unsubscribe(unsubscribe.clone()),
        &[
            0xA2, 0x0A, 0x00, 0x0B, 0x00, 0x03, b'a', b'/', b'+', 0x00, 0x01, b'#',
        ],
        Packet::Unsubscribe(Unsubscribe {
            properties: no_properties().into(),
            ..unsubscribe
        }),
    );
}

#[test]
fn connect_in_3_1_1_leaves_properties_out() {
    let (bytes, packet) = full_connect_v311();
    let Packet::Connect(mut connect) = packet.clone() else {
        unreachable!()
    };
    connect.properties = Properties {
        session_expiry_interval: Some(60),
        receive_maximum: Some(5),
        ..Properties::default()
    }
    .into();
    if let Some(will) = &mut connect.will {
        will.properties = Properties {
            will_delay_interval: Some(30),
            ..Properties::default()
        }
        .into();
    }
    let with_properties = Packet::Connect(connect);
    // CONNECT is written in the version it names, whatever the one given.
    assert_eq!(encode_vec(&with_properties, V5), bytes);
    assert_eq!(encoded_len(&with_properties, V5), Ok(bytes.len()));
    assert_eq!(decode_one(&bytes, None), Ok(packet));
}

#[test]
fn auth_does_not_exist_before_mqtt_5() {
    let auth = Packet::Auth(Auth {
        reason: ReasonCode::ContinueAuthentication,
        properties: no_properties().into(),
    });
    for version in [V311, ProtocolVersion::V3_1] {
        let mut buf = BytesMut::from(&b"keep"[..]);
        assert_eq!(
            encode(&auth, version, &mut buf),
            Err(EncodeError::NotInVersion {
                packet_type: "AUTH"
            })
        );
        assert_eq!(&buf[..], b"keep", "a failed encode leaves the buffer");
        assert_eq!(
            encoded_len(&auth, version),
            Err(EncodeError::NotInVersion {
                packet_type: "AUTH"
            })
        );
    }
}

// ---------------------------------------------------------------------------
// c. Generated packets: encode then decode, whole and a byte at a time
// ---------------------------------------------------------------------------

/// xorshift64* (Vigna, 2016): small, deterministic, so a failure repeats.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    fn flag(&mut self) -> u8 {
        self.pick(&[0, 1])
    }

    /// Any u16, often one at an edge.
    fn u16(&mut self) -> u16 {
        if self.chance(30) {
            self.pick(&[0, 1, 127, 128, 255, 256, u16::MAX])
        } else {
            self.next() as u16
        }
    }

    fn nonzero_u16(&mut self) -> u16 {
        self.u16().max(1)
    }

    /// Any u32, often one at an edge.
    fn u32(&mut self) -> u32 {
        if self.chance(30) {
            self.pick(&[0, 1, 255, 65_535, 65_536, u32::MAX - 1, u32::MAX])
        } else {
            self.next() as u32
        }
    }

    /// A Subscription Identifier: 1 to 268,435,455, often at a varint boundary.
    fn subscription_identifier(&mut self) -> u32 {
        if self.chance(40) {
            self.pick(&[
                1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, VARINT_MAX,
            ])
        } else {
            1 + (self.next() % u64::from(VARINT_MAX)) as u32
        }
    }

    fn bytes(&mut self, max: usize) -> Bytes {
        let len = self.below(max + 1);
        (0..len)
            .map(|_| self.next() as u8)
            .collect::<Vec<_>>()
            .into()
    }

    /// Up to `max` characters from `alphabet`.
    fn string_of(&mut self, alphabet: &[char], max: usize) -> String {
        let len = self.below(max + 1);
        (0..len).map(|_| self.pick(alphabet)).collect()
    }

    /// Any text a string property may hold: UTF-8 of one to four bytes a
    /// character, no U+0000; may be empty.
    fn text(&mut self) -> String {
        self.string_of(TEXT, 10)
    }

    /// A valid topic name: not empty, no wildcards; levels may be empty.
    fn topic_name(&mut self) -> String {
        let levels = 1 + self.below(4);
        let name = (0..levels)
            .map(|_| self.string_of(LEVEL, 5))
            .collect::<Vec<_>>()
            .join("/");
        if name.is_empty() {
            "t".into()
        } else {
            name
        }
    }

    /// Mostly valid topic filters; sometimes any string at all, which MQTT 5
    /// leaves to the session to judge.
    fn topic_filter(&mut self) -> String {
        if self.chance(20) {
            return self.string_of(FILTER_ANYTHING, 8);
        }
        let levels = 1 + self.below(4);
        let mut levels: Vec<String> = (0..levels)
            .map(|_| {
                if self.chance(25) {
                    "+".into()
                } else {
                    self.string_of(LEVEL, 5)
                }
            })
            .collect();
        if self.chance(25) {
            levels.push("#".into());
        }
        let filter = levels.join("/");
        if filter.is_empty() {
            "#".into()
        } else {
            filter
        }
    }

    fn qos(&mut self) -> QoS {
        self.pick(&[QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce])
    }

    fn packet_id(&mut self) -> u16 {
        self.nonzero_u16()
    }
}

const TEXT: &[char] = &[
    'a', 'b', 'z', '0', '9', '/', ' ', '-', '_', '$', '+', '#', 'é', 'ß', '€', '日', '𝄞',
];
const LEVEL: &[char] = &['a', 'b', 'z', '0', '-', '_', '$', ' ', 'é', '€', '𝄞'];
const FILTER_ANYTHING: &[char] = &['a', '/', '+', '#', ' ', 'é', '𝄞'];

/// The properties each packet may carry, from the table of section 2.2.2.2.
fn allowed_ids(context: PropertyContext) -> &'static [u8] {
    use PropertyContext as P;
    match context {
        P::Connect => &[0x11, 0x15, 0x16, 0x17, 0x19, 0x21, 0x22, 0x26, 0x27],
        P::Will => &[0x01, 0x02, 0x03, 0x08, 0x09, 0x18, 0x26],
        P::ConnAck => &[
            0x11, 0x12, 0x13, 0x15, 0x16, 0x1A, 0x1C, 0x1F, 0x21, 0x22, 0x24, 0x25, 0x26, 0x27,
            0x28, 0x29, 0x2A,
        ],
        P::Publish => &[0x01, 0x02, 0x03, 0x08, 0x09, 0x0B, 0x23, 0x26],
        P::PubAck | P::PubRec | P::PubRel | P::PubComp | P::SubAck | P::UnsubAck => &[0x1F, 0x26],
        P::Subscribe => &[0x0B, 0x26],
        P::Unsubscribe => &[0x26],
        P::Disconnect => &[0x11, 0x1C, 0x1F, 0x26],
        P::Auth => &[0x15, 0x16, 0x1F, 0x26],
    }
}

/// Random properties allowed in `context`, each with a value it may have.
fn properties(rng: &mut Rng, context: PropertyContext) -> Properties {
    let mut p = Properties::default();
    // A third of the lists are empty, so the short forms come up.
    if rng.chance(33) {
        return p;
    }
    for &id in allowed_ids(context) {
        if !rng.chance(40) {
            continue;
        }
        match id {
            0x01 => p.payload_format_indicator = Some(rng.flag()),
            0x02 => p.message_expiry_interval = Some(rng.u32()),
            0x03 => p.content_type = Some(rng.text()),
            0x08 => p.response_topic = Some(rng.topic_name()),
            0x09 => p.correlation_data = Some(rng.bytes(16)),
            0x0B => {
                // Several in a PUBLISH (one per matching subscription), one in SUBSCRIBE.
                let count = if context == PropertyContext::Publish {
                    1 + rng.below(3)
                } else {
                    1
                };
                p.subscription_identifiers =
                    (0..count).map(|_| rng.subscription_identifier()).collect();
            }
            0x11 => p.session_expiry_interval = Some(rng.u32()),
            0x12 => p.assigned_client_identifier = Some(rng.text()),
            0x13 => p.server_keep_alive = Some(rng.u16()),
            0x15 => p.authentication_method = Some(rng.text()),
            0x16 => p.authentication_data = Some(rng.bytes(16)),
            0x17 => p.request_problem_information = Some(rng.flag()),
            0x18 => p.will_delay_interval = Some(rng.u32()),
            0x19 => p.request_response_information = Some(rng.flag()),
            0x1A => p.response_information = Some(rng.text()),
            0x1C => p.server_reference = Some(rng.text()),
            0x1F => p.reason_string = Some(rng.text()),
            0x21 => p.receive_maximum = Some(rng.nonzero_u16()),
            0x22 => p.topic_alias_maximum = Some(rng.u16()),
            0x23 => p.topic_alias = Some(rng.nonzero_u16()),
            0x24 => p.maximum_qos = Some(rng.flag()),
            0x25 => p.retain_available = Some(rng.flag()),
            0x26 => {
                let count = 1 + rng.below(3);
                p.user_properties = (0..count).map(|_| (rng.text(), rng.text())).collect();
            }
            0x27 => p.maximum_packet_size = Some(rng.u32().max(1)),
            0x28 => p.wildcard_subscription_available = Some(rng.flag()),
            0x29 => p.subscription_identifier_available = Some(rng.flag()),
            0x2A => p.shared_subscription_available = Some(rng.flag()),
            other => unreachable!("property {other:#04x} is not in the table"),
        }
    }
    p
}

/// Reason codes each packet may carry (section 2.4 and each packet's section).
const CONNACK_CODES: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];
const PUBACK_CODES: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
const PUBREL_CODES: &[u8] = &[0x00, 0x92];
const SUBACK_CODES: &[u8] = &[
    0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
];
const UNSUBACK_CODES: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
const DISCONNECT_CODES: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];
const AUTH_CODES: &[u8] = &[0x00, 0x18, 0x19];

fn reason(rng: &mut Rng, codes: &[u8]) -> ReasonCode {
    // Success half the time, so the short forms come up.
    let byte = if rng.chance(50) { 0 } else { rng.pick(codes) };
    ReasonCode::from_u8(byte).expect("a defined reason code")
}

fn random_ack(rng: &mut Rng, codes: &[u8], context: PropertyContext) -> Ack {
    Ack {
        packet_id: rng.packet_id(),
        reason: reason(rng, codes),
        properties: properties(rng, context).into(),
    }
}

fn random_will(rng: &mut Rng) -> LastWill {
    LastWill {
        topic: Arc::from(rng.topic_name()),
        payload: rng.bytes(24),
        qos: rng.qos(),
        retain: rng.chance(50),
        properties: properties(rng, PropertyContext::Will).into(),
    }
}

fn random_connect(rng: &mut Rng) -> Packet {
    Packet::Connect(Connect {
        protocol: V5,
        clean_session: rng.chance(50),
        keep_alive: rng.u16(),
        client_id: rng.text(),
        will: rng.chance(50).then(|| random_will(rng)),
        username: rng.chance(50).then(|| rng.text()),
        // MQTT 5 allows a password without a user name.
        password: rng.chance(50).then(|| rng.bytes(12)),
        properties: properties(rng, PropertyContext::Connect).into(),
    })
}

fn random_publish(rng: &mut Rng) -> Packet {
    let qos = rng.qos();
    let properties = properties(rng, PropertyContext::Publish);
    // With a Topic Alias the topic may be left empty.
    let topic = if properties.topic_alias.is_some() && rng.chance(50) {
        String::new()
    } else {
        rng.topic_name()
    };
    // Now and then a payload long enough for a two-byte remaining length.
    let payload = if rng.chance(5) {
        rng.bytes(3000)
    } else {
        rng.bytes(40)
    };
    Packet::Publish(Publish {
        dup: qos != QoS::AtMostOnce && rng.chance(30),
        qos,
        retain: rng.chance(30),
        topic: Arc::from(topic),
        packet_id: if qos == QoS::AtMostOnce {
            0
        } else {
            rng.packet_id()
        },
        payload,
        properties: properties.into(),
    })
}

fn random_codes(rng: &mut Rng, codes: &[u8]) -> Vec<ReasonCode> {
    let count = 1 + rng.below(4);
    (0..count)
        .map(|_| ReasonCode::from_u8(rng.pick(codes)).expect("a defined reason code"))
        .collect()
}

/// A random MQTT 5 packet of type `packet_type` (1 to 15).
fn random_packet_of(rng: &mut Rng, packet_type: u8) -> Packet {
    use PropertyContext as P;
    match packet_type {
        1 => random_connect(rng),
        2 => Packet::ConnAck(ConnAck {
            session_present: rng.chance(50),
            code: reason(rng, CONNACK_CODES),
            properties: properties(rng, P::ConnAck).into(),
        }),
        3 => random_publish(rng),
        4 => Packet::PubAck(random_ack(rng, PUBACK_CODES, P::PubAck)),
        5 => Packet::PubRec(random_ack(rng, PUBACK_CODES, P::PubRec)),
        6 => Packet::PubRel(random_ack(rng, PUBREL_CODES, P::PubRel)),
        7 => Packet::PubComp(random_ack(rng, PUBREL_CODES, P::PubComp)),
        8 => {
            let count = 1 + rng.below(4);
            let filters = (0..count)
                .map(|_| {
                    let options = SubOptions {
                        qos: rng.qos(),
                        no_local: rng.chance(50),
                        retain_as_published: rng.chance(50),
                        retain_handling: rng.pick(&[
                            RetainHandling::Always,
                            RetainHandling::IfNew,
                            RetainHandling::Never,
                        ]),
                    };
                    (rng.topic_filter(), options)
                })
                .collect();
            Packet::Subscribe(Subscribe {
                packet_id: rng.packet_id(),
                filters,
                properties: properties(rng, P::Subscribe).into(),
            })
        }
        9 => Packet::SubAck(SubAck {
            packet_id: rng.packet_id(),
            codes: random_codes(rng, SUBACK_CODES),
            properties: properties(rng, P::SubAck).into(),
        }),
        10 => {
            let count = 1 + rng.below(4);
            Packet::Unsubscribe(Unsubscribe {
                packet_id: rng.packet_id(),
                filters: (0..count).map(|_| rng.topic_filter()).collect(),
                properties: properties(rng, P::Unsubscribe).into(),
            })
        }
        11 => Packet::UnsubAck(UnsubAck {
            packet_id: rng.packet_id(),
            codes: random_codes(rng, UNSUBACK_CODES),
            properties: properties(rng, P::UnsubAck).into(),
        }),
        12 => Packet::PingReq,
        13 => Packet::PingResp,
        14 => Packet::Disconnect(Disconnect {
            reason: reason(rng, DISCONNECT_CODES),
            properties: properties(rng, P::Disconnect).into(),
        }),
        15 => Packet::Auth(Auth {
            reason: reason(rng, AUTH_CODES),
            properties: properties(rng, P::Auth).into(),
        }),
        other => unreachable!("packet type {other}"),
    }
}

fn random_packet(rng: &mut Rng) -> Packet {
    let packet_type = 1 + rng.below(15) as u8;
    random_packet_of(rng, packet_type)
}

/// Feeds `bytes` to the decoder one byte at a time: it must ask for more until
/// the last byte, leave the buffer as it was each time, then give the packet.
fn decode_byte_at_a_time(bytes: &[u8], version: Option<ProtocolVersion>) -> Packet {
    let mut buf = BytesMut::new();
    for (i, byte) in bytes.iter().enumerate() {
        buf.extend_from_slice(&[*byte]);
        let before = buf.clone();
        match decode(&mut buf, NO_LIMIT, version) {
            Ok(None) => {
                assert!(i + 1 < bytes.len(), "a whole packet gave Ok(None)");
                assert_eq!(buf, before, "Ok(None) changed the buffer");
            }
            Ok(Some(packet)) => {
                assert_eq!(
                    i + 1,
                    bytes.len(),
                    "decoded from {} bytes of {bytes:02x?}",
                    i + 1
                );
                assert!(buf.is_empty());
                return packet;
            }
            Err(e) => panic!("{e} after {} bytes of {bytes:02x?}", i + 1),
        }
    }
    panic!("{bytes:02x?} never decoded")
}

const GENERATED: usize = 20_000;

/// The property lists `packet` carries (CONNECT's and its will's).
fn property_lists(packet: &Packet) -> Vec<&Properties> {
    match packet {
        Packet::Connect(c) => {
            let mut lists: Vec<&Properties> = vec![&c.properties];
            lists.extend(c.will.as_ref().map(|will| &*will.properties));
            lists
        }
        Packet::ConnAck(c) => vec![&c.properties],
        Packet::Publish(p) => vec![&p.properties],
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            vec![&a.properties]
        }
        Packet::Subscribe(s) => vec![&s.properties],
        Packet::SubAck(s) => vec![&s.properties],
        Packet::Unsubscribe(u) => vec![&u.properties],
        Packet::UnsubAck(u) => vec![&u.properties],
        Packet::PingReq | Packet::PingResp => Vec::new(),
        Packet::Disconnect(d) => vec![&d.properties],
        Packet::Auth(a) => vec![&a.properties],
    }
}

#[test]
fn generated_packets_round_trip_whole_and_a_byte_at_a_time() {
    let mut rng = Rng::new(0x5EED_0F57_A211_E6C5);
    let mut seen = [0usize; 16];
    let (mut with_properties, mut user_properties, mut empty_topics, mut long) = (0, 0, 0, 0);
    for _ in 0..GENERATED {
        let packet = random_packet(&mut rng);
        let bytes = encode_vec(&packet, V5);
        seen[usize::from(bytes[0] >> 4)] += 1;
        let lists = property_lists(&packet);
        with_properties += usize::from(lists.iter().any(|p| !p.is_empty()));
        user_properties += usize::from(lists.iter().any(|p| p.user_properties.len() > 1));
        empty_topics += usize::from(matches!(&packet, Packet::Publish(p) if p.topic.is_empty()));
        long += usize::from(bytes[1] & 0x80 != 0);
        assert_eq!(
            encoded_len(&packet, V5),
            Ok(bytes.len()),
            "encoded_len of {packet:?}"
        );
        let version = decode_version(&packet);
        // Exactly at the size limit: allowed.
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(
            decode(&mut buf, bytes.len(), version),
            Ok(Some(packet.clone())),
            "decoding {bytes:02x?}"
        );
        assert!(buf.is_empty());
        assert_eq!(decode_byte_at_a_time(&bytes, version), packet);
        // One byte under the size: refused from the fixed header, with 0x95.
        let mut buf = BytesMut::from(&bytes[..]);
        let too_large = decode(&mut buf, bytes.len() - 1, version).expect_err("over the limit");
        assert_eq!(
            too_large,
            DecodeError::PacketTooLarge {
                size: bytes.len(),
                max: bytes.len() - 1
            }
        );
        assert_eq!(too_large.reason_code(), ReasonCode::PacketTooLarge);
    }
    // Every packet type, and the cases worth reaching, came up often enough.
    for (packet_type, count) in seen.iter().enumerate().skip(1) {
        assert!(*count > 500, "only {count} packets of type {packet_type}");
    }
    assert!(
        with_properties > GENERATED / 3,
        "{with_properties} with properties"
    );
    assert!(
        user_properties > 500,
        "{user_properties} with user properties"
    );
    assert!(empty_topics > 100, "{empty_topics} with an empty topic");
    assert!(long > 20, "{long} with a two-byte remaining length");
}

#[test]
fn a_generated_session_decodes_from_a_stream_in_random_chunks() {
    let mut rng = Rng::new(0xC0FF_EE00_D15C_0DE5);
    for _ in 0..20 {
        let mut packets = vec![random_connect(&mut rng)];
        for _ in 0..100 {
            let packet_type = 2 + rng.below(14) as u8;
            packets.push(random_packet_of(&mut rng, packet_type));
        }
        let mut stream = BytesMut::new();
        for packet in &packets {
            encode(packet, V5, &mut stream).expect("encodable");
        }
        let mut buf = BytesMut::new();
        let mut version = None;
        let mut decoded = Vec::new();
        let mut rest = &stream[..];
        while !rest.is_empty() {
            let chunk = (1 + rng.below(40)).min(rest.len());
            buf.extend_from_slice(&rest[..chunk]);
            rest = &rest[chunk..];
            while let Some(packet) = decode(&mut buf, NO_LIMIT, version).expect("a valid stream") {
                if let Packet::Connect(connect) = &packet {
                    version = Some(connect.protocol);
                }
                decoded.push(packet);
            }
        }
        assert!(buf.is_empty(), "{} bytes left over", buf.len());
        assert_eq!(decoded, packets);
    }
}

proptest! {
    #[test]
    fn decoding_arbitrary_bytes_as_mqtt_5_never_panics(
        input in proptest::collection::vec(any::<u8>(), 0..256),
        max in 0usize..512,
    ) {
        let mut buf = BytesMut::from(&input[..]);
        while let Ok(Some(_)) = decode(&mut buf, max, Some(V5)) {}
    }

    /// A generated packet with a few bytes changed: the decoder does not panic,
    /// leaves the buffer alone when it asks for more, and whatever it accepts
    /// encodes and decodes back to itself.
    #[test]
    fn decoding_mutated_mqtt_5_packets_never_panics(
        seed in any::<u64>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let packet = random_packet(&mut Rng::new(seed));
        let mut buf = BytesMut::from(&encode_vec(&packet, V5)[..]);
        for (index, byte) in flips {
            let i = index.index(buf.len());
            buf[i] ^= byte;
        }
        let before = buf.clone();
        let version = decode_version(&packet);
        match decode(&mut buf, NO_LIMIT, version) {
            Ok(None) => prop_assert_eq!(buf, before, "Ok(None) changed the buffer"),
            Ok(Some(decoded)) => {
                // Written in the version it was read in: a flipped first byte
                // can turn the CONNECT, read before any version, into another
                // packet, which 3.1.1's rules then governed.
                let protocol = version.unwrap_or(V311);
                let mut again = BytesMut::new();
                encode(&decoded, protocol, &mut again).expect("a decoded packet encodes");
                prop_assert_eq!(encoded_len(&decoded, protocol), Ok(again.len()));
                let redecoded = decode(&mut again, NO_LIMIT, version);
                prop_assert_eq!(redecoded, Ok(Some(decoded)));
            }
            Err(_) => {}
        }
    }
}

/// What a 3.1.1 peer reads from `packet` written toward it, or `None` where
/// 3.1.1 cannot carry it.
fn as_read_by_3_1_1(packet: &Packet) -> Option<Packet> {
    let valid_filter = |filter: &str| validate_topic_filter(filter).is_ok();
    Some(match packet.clone() {
        Packet::Connect(c) => {
            if c.password.is_some() && c.username.is_none() {
                return None;
            }
            Packet::Connect(Connect {
                protocol: V311,
                properties: no_properties().into(),
                will: c.will.map(|will| LastWill {
                    properties: no_properties().into(),
                    ..will
                }),
                ..c
            })
        }
        Packet::ConnAck(c) => Packet::ConnAck(ConnAck::new(
            c.session_present,
            ReasonCode::from_connack_v3(c.code.connack_v3()).expect("a 3.1.1 return code"),
        )),
        Packet::Publish(p) if p.topic.is_empty() => return None,
        Packet::Publish(p) => Packet::Publish(Publish {
            properties: no_properties().into(),
            ..p
        }),
        Packet::PubAck(a) => Packet::PubAck(Ack::new(a.packet_id)),
        Packet::PubRec(a) => Packet::PubRec(Ack::new(a.packet_id)),
        Packet::PubRel(a) => Packet::PubRel(Ack::new(a.packet_id)),
        Packet::PubComp(a) => Packet::PubComp(Ack::new(a.packet_id)),
        Packet::Subscribe(s) => {
            if !s.filters.iter().all(|(filter, _)| valid_filter(filter)) {
                return None;
            }
            Packet::Subscribe(Subscribe {
                packet_id: s.packet_id,
                filters: s
                    .filters
                    .into_iter()
                    .map(|(filter, options)| (filter, SubOptions::from(options.qos)))
                    .collect(),
                properties: no_properties().into(),
            })
        }
        Packet::SubAck(s) => Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            codes: s
                .codes
                .into_iter()
                .map(|code| {
                    if code.is_error() {
                        ReasonCode::UnspecifiedError
                    } else {
                        code
                    }
                })
                .collect(),
            properties: no_properties().into(),
        }),
        Packet::Unsubscribe(u) => {
            if !u.filters.iter().all(|filter| valid_filter(filter)) {
                return None;
            }
            Packet::Unsubscribe(Unsubscribe {
                properties: no_properties().into(),
                ..u
            })
        }
        Packet::UnsubAck(u) => Packet::UnsubAck(UnsubAck {
            packet_id: u.packet_id,
            codes: Vec::new(),
            properties: no_properties().into(),
        }),
        Packet::PingReq => Packet::PingReq,
        Packet::PingResp => Packet::PingResp,
        Packet::Disconnect(_) => Packet::Disconnect(Disconnect::default()),
        Packet::Auth(_) => return None,
    })
}

#[test]
fn generated_packets_written_toward_3_1_1_lose_only_what_it_cannot_say() {
    let mut rng = Rng::new(0x0311_0311_0311_0311);
    let mut checked = 0;
    for _ in 0..GENERATED {
        let packet = random_packet(&mut rng);
        let Some(expected) = as_read_by_3_1_1(&packet) else {
            continue;
        };
        // CONNECT is written in the version it names.
        let packet = match packet {
            Packet::Connect(c) => Packet::Connect(Connect {
                protocol: V311,
                ..c
            }),
            other => other,
        };
        let bytes = encode_vec(&packet, V311);
        assert_eq!(encoded_len(&packet, V311), Ok(bytes.len()), "{packet:?}");
        let version = match packet {
            Packet::Connect(_) => None,
            _ => Some(V311),
        };
        assert_eq!(
            decode_one(&bytes, version),
            Ok(expected),
            "{packet:?} as {bytes:02x?}"
        );
        checked += 1;
    }
    assert!(checked > GENERATED / 2, "only {checked} checked");
}

// ---------------------------------------------------------------------------
// d. Malformed properties and options through the full decoder
// ---------------------------------------------------------------------------

/// A packet with first byte `first` and `body` (under 128 bytes).
fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut bytes = vec![first, u8::try_from(body.len()).expect("a short body")];
    assert!(body.len() < 128);
    bytes.extend_from_slice(body);
    bytes
}

/// An MQTT 5 CONNECT with `flags`, the property list `properties` (its length
/// is put in front) and the payload `payload`.
fn connect_v5(flags: u8, properties: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, flags, 0x00, 0x3C];
    body.push(u8::try_from(properties.len()).expect("a short list"));
    body.extend_from_slice(properties);
    body.extend_from_slice(payload);
    packet(0x10, &body)
}

/// A QoS 0 PUBLISH to "t" with the property list `properties` (length first)
/// and payload "x".
fn publish_v5(properties: &[u8]) -> Vec<u8> {
    let mut body = vec![0x00, 0x01, b't'];
    body.push(u8::try_from(properties.len()).expect("a short list"));
    body.extend_from_slice(properties);
    body.push(b'x');
    packet(0x30, &body)
}

/// Decoding `bytes` fails on the property list with `error`, answered with `code`.
fn property_error(
    bytes: &[u8],
    version: Option<ProtocolVersion>,
    packet_type: &'static str,
    error: PropertyError,
    code: ReasonCode,
) {
    let e = decode_err(bytes, version);
    assert_eq!(
        e,
        DecodeError::Property { packet_type, error },
        "{bytes:02x?}"
    );
    assert_eq!(e.reason_code(), code, "{e}");
}

const MALFORMED: ReasonCode = ReasonCode::MalformedPacket;
const PROTOCOL_ERROR: ReasonCode = ReasonCode::ProtocolError;

#[test]
fn a_duplicate_property_is_a_protocol_error() {
    // Two Message Expiry Intervals in PUBLISH.
    property_error(
        &publish_v5(&[0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 2]),
        Some(V5),
        "PUBLISH",
        PropertyError::Duplicate(0x02),
        PROTOCOL_ERROR,
    );
    // Two Subscription Identifiers in SUBSCRIBE.
    #[rustfmt::skip]
    let subscribe = packet(0x82, &[
        0x00, 0x01,                                     // packet id 1
        0x04, 0x0B, 0x01, 0x0B, 0x02,                   // subscription identifiers 1 and 2
        0x00, 0x01, b't', 0x00,                         // "t" QoS 0
    ]);
    property_error(
        &subscribe,
        Some(V5),
        "SUBSCRIBE",
        PropertyError::Duplicate(0x0B),
        PROTOCOL_ERROR,
    );
    // Two Reason Strings in DISCONNECT; two Session Expiry Intervals in CONNECT.
    property_error(
        &packet(
            0xE0,
            &[0x80, 0x08, 0x1F, 0x00, 0x01, b'a', 0x1F, 0x00, 0x01, b'b'],
        ),
        Some(V5),
        "DISCONNECT",
        PropertyError::Duplicate(0x1F),
        PROTOCOL_ERROR,
    );
    property_error(
        &connect_v5(0x02, &[0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 1], &[0x00, 0x00]),
        None,
        "CONNECT",
        PropertyError::Duplicate(0x11),
        PROTOCOL_ERROR,
    );
}

#[test]
fn a_property_the_packet_may_not_carry_is_malformed() {
    // Session Expiry Interval in PUBLISH.
    property_error(
        &publish_v5(&[0x11, 0, 0, 0, 1]),
        Some(V5),
        "PUBLISH",
        PropertyError::NotAllowed {
            id: 0x11,
            context: PropertyContext::Publish,
        },
        MALFORMED,
    );
    // Topic Alias in CONNECT.
    property_error(
        &connect_v5(0x02, &[0x23, 0x00, 0x01], &[0x00, 0x00]),
        None,
        "CONNECT",
        PropertyError::NotAllowed {
            id: 0x23,
            context: PropertyContext::Connect,
        },
        MALFORMED,
    );
    // Will Delay Interval belongs in the will properties, not CONNECT's.
    property_error(
        &connect_v5(0x02, &[0x18, 0, 0, 0, 5], &[0x00, 0x00]),
        None,
        "CONNECT",
        PropertyError::NotAllowed {
            id: 0x18,
            context: PropertyContext::Connect,
        },
        MALFORMED,
    );
    // And Topic Alias in the will properties.
    #[rustfmt::skip]
    let will = connect_v5(0x06, &[], &[
        0x00, 0x00,                                     // empty client id
        0x03, 0x23, 0x00, 0x01,                         // will properties: topic alias 1
        0x00, 0x01, b'w', 0x00, 0x00,                   // will topic "w", empty payload
    ]);
    property_error(
        &will,
        None,
        "CONNECT",
        PropertyError::NotAllowed {
            id: 0x23,
            context: PropertyContext::Will,
        },
        MALFORMED,
    );
    // Reason String in SUBSCRIBE; Subscription Identifier in UNSUBSCRIBE.
    property_error(
        &packet(
            0x82,
            &[
                0x00, 0x01, 0x04, 0x1F, 0x00, 0x01, b'a', 0x00, 0x01, b't', 0x00,
            ],
        ),
        Some(V5),
        "SUBSCRIBE",
        PropertyError::NotAllowed {
            id: 0x1F,
            context: PropertyContext::Subscribe,
        },
        MALFORMED,
    );
    property_error(
        &packet(0xA2, &[0x00, 0x01, 0x02, 0x0B, 0x01, 0x00, 0x01, b't']),
        Some(V5),
        "UNSUBSCRIBE",
        PropertyError::NotAllowed {
            id: 0x0B,
            context: PropertyContext::Unsubscribe,
        },
        MALFORMED,
    );
}

#[test]
fn a_property_list_running_past_the_packet_is_malformed() {
    // The list says 5 bytes; the packet holds 3 after it.
    let bytes = packet(0x30, &[0x00, 0x01, b't', 0x05, 0x02, 0x00, 0x00]);
    property_error(
        &bytes,
        Some(V5),
        "PUBLISH",
        PropertyError::Truncated,
        MALFORMED,
    );
    // CONNACK: a list of 3 bytes with 2 left; and no property length at all.
    property_error(
        &packet(0x20, &[0x00, 0x00, 0x03, 0x21, 0x00]),
        Some(V5),
        "CONNACK",
        PropertyError::Truncated,
        MALFORMED,
    );
    property_error(
        &packet(0x20, &[0x00, 0x00]),
        Some(V5),
        "CONNACK",
        PropertyError::Truncated,
        MALFORMED,
    );
    // A property length of five bytes.
    property_error(
        &packet(0x30, &[0x00, 0x01, b't', 0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
        Some(V5),
        "PUBLISH",
        PropertyError::MalformedVarint,
        MALFORMED,
    );
}

#[test]
fn a_property_value_of_bad_length_is_malformed() {
    // A string whose length runs past its list, though the packet goes on.
    property_error(
        &publish_v5(&[0x03, 0x00, 0x05, b'a']),
        Some(V5),
        "PUBLISH",
        PropertyError::Truncated,
        MALFORMED,
    );
    // A four-byte integer with two bytes in its list.
    property_error(
        &publish_v5(&[0x02, 0x00, 0x00]),
        Some(V5),
        "PUBLISH",
        PropertyError::Truncated,
        MALFORMED,
    );
    // A user property with its name but no value.
    property_error(
        &publish_v5(&[0x26, 0x00, 0x01, b'k']),
        Some(V5),
        "PUBLISH",
        PropertyError::Truncated,
        MALFORMED,
    );
    // A string that is not UTF-8.
    property_error(
        &publish_v5(&[0x03, 0x00, 0x02, 0xC3, 0x28]),
        Some(V5),
        "PUBLISH",
        PropertyError::InvalidUtf8(0x03),
        MALFORMED,
    );
}

#[test]
fn a_property_value_out_of_range_is_a_protocol_error() {
    // Receive Maximum 0 in CONNECT.
    property_error(
        &connect_v5(0x02, &[0x21, 0x00, 0x00], &[0x00, 0x00]),
        None,
        "CONNECT",
        PropertyError::BadValue(0x21),
        PROTOCOL_ERROR,
    );
    // Payload Format Indicator 2 in PUBLISH.
    property_error(
        &publish_v5(&[0x01, 0x02]),
        Some(V5),
        "PUBLISH",
        PropertyError::BadValue(0x01),
        PROTOCOL_ERROR,
    );
    // Topic Alias 0 in PUBLISH; Subscription Identifier 0 in SUBSCRIBE.
    property_error(
        &publish_v5(&[0x23, 0x00, 0x00]),
        Some(V5),
        "PUBLISH",
        PropertyError::BadValue(0x23),
        PROTOCOL_ERROR,
    );
    property_error(
        &packet(
            0x82,
            &[0x00, 0x01, 0x02, 0x0B, 0x00, 0x00, 0x01, b't', 0x00],
        ),
        Some(V5),
        "SUBSCRIBE",
        PropertyError::BadValue(0x0B),
        PROTOCOL_ERROR,
    );
    // Maximum QoS 2 and Maximum Packet Size 0 in CONNACK.
    property_error(
        &packet(0x20, &[0x00, 0x00, 0x02, 0x24, 0x02]),
        Some(V5),
        "CONNACK",
        PropertyError::BadValue(0x24),
        PROTOCOL_ERROR,
    );
    property_error(
        &packet(0x20, &[0x00, 0x00, 0x05, 0x27, 0, 0, 0, 0]),
        Some(V5),
        "CONNACK",
        PropertyError::BadValue(0x27),
        PROTOCOL_ERROR,
    );
}

#[test]
fn an_unknown_property_identifier_is_malformed() {
    property_error(
        &publish_v5(&[0x7F, 0x00]),
        Some(V5),
        "PUBLISH",
        PropertyError::UnknownProperty(0x7F),
        MALFORMED,
    );
    property_error(
        &packet(0xE0, &[0x00, 0x02, 0x7F, 0x00]),
        Some(V5),
        "DISCONNECT",
        PropertyError::UnknownProperty(0x7F),
        MALFORMED,
    );
}

#[test]
fn retain_handling_3_is_a_protocol_error() {
    // "t" with options 0x30: QoS 0, retain handling 3.
    let bytes = packet(0x82, &[0x00, 0x01, 0x00, 0x00, 0x01, b't', 0x30]);
    let e = decode_err(&bytes, Some(V5));
    assert_eq!(e, DecodeError::RetainHandling);
    assert_eq!(e.reason_code(), PROTOCOL_ERROR);
}

#[test]
fn reserved_subscription_option_bits_are_malformed() {
    // Bits 6 and 7 are reserved; QoS 3 is malformed too.
    for options in [0x40, 0x80, 0xC1, 0x03] {
        let bytes = packet(0x82, &[0x00, 0x01, 0x00, 0x00, 0x01, b't', options]);
        let e = decode_err(&bytes, Some(V5));
        assert_eq!(
            e,
            DecodeError::SubscribeReservedQoSBits(options),
            "{options:#04x}"
        );
        assert_eq!(e.reason_code(), MALFORMED);
    }
    // The MQTT 5 option bits are reserved in 3.1.1.
    let bytes = packet(0x82, &[0x00, 0x01, 0x00, 0x01, b't', 0x04]);
    assert_eq!(
        decode_err(&bytes, Some(V311)),
        DecodeError::SubscribeReservedQoSBits(0x04)
    );
}

#[test]
fn an_unknown_reason_code_is_malformed() {
    for (bytes, packet_type, code) in [
        (vec![0x40, 0x03, 0x00, 0x01, 0x05], "PUBACK", 0x05),
        (vec![0x40, 0x03, 0x00, 0x01, 0xFF], "PUBACK", 0xFF),
        (vec![0x62, 0x03, 0x00, 0x01, 0x03], "PUBREL", 0x03),
        (vec![0x20, 0x03, 0x00, 0x7F, 0x00], "CONNACK", 0x7F),
        (vec![0x90, 0x04, 0x00, 0x01, 0x00, 0x03], "SUBACK", 0x03),
        (vec![0xB0, 0x04, 0x00, 0x01, 0x00, 0xFE], "UNSUBACK", 0xFE),
        (vec![0xE0, 0x01, 0x03], "DISCONNECT", 0x03),
        (vec![0xF0, 0x01, 0x20], "AUTH", 0x20),
    ] {
        let e = decode_err(&bytes, Some(V5));
        assert_eq!(
            e,
            DecodeError::InvalidReasonCode { packet_type, code },
            "{bytes:02x?}"
        );
        assert_eq!(e.reason_code(), MALFORMED);
    }
}

#[test]
fn auth_is_an_unknown_packet_type_before_mqtt_5() {
    let auth = [0xF0, 0x00];
    for version in [
        Some(V311),
        Some(ProtocolVersion::V3_1),
        None, // before CONNECT, 3.1.1's rules apply
    ] {
        assert_eq!(
            decode_err(&auth, version),
            DecodeError::UnknownPacketType(15),
            "{version:?}"
        );
    }
    assert_eq!(
        decode_one(&auth, Some(V5)),
        Ok(Packet::Auth(Auth {
            reason: ReasonCode::Success,
            properties: no_properties().into(),
        }))
    );
}

#[test]
fn an_empty_topic_needs_a_topic_alias() {
    // No properties at all.
    let bytes = packet(0x30, &[0x00, 0x00, 0x00, b'x']);
    let e = decode_err(&bytes, Some(V5));
    assert_eq!(e, DecodeError::EmptyTopicWithoutAlias);
    assert_eq!(e.reason_code(), PROTOCOL_ERROR);
    // QoS 1 with properties, none of them a Topic Alias.
    let bytes = packet(0x32, &[0x00, 0x00, 0x00, 0x07, 0x02, 0x01, 0x01]);
    assert_eq!(
        decode_err(&bytes, Some(V5)),
        DecodeError::EmptyTopicWithoutAlias
    );
    // In 3.1.1 the empty topic is malformed.
    let bytes = packet(0x30, &[0x00, 0x00, b'x']);
    assert_eq!(decode_err(&bytes, Some(V311)), DecodeError::EmptyTopicName);
}

#[test]
fn an_empty_topic_with_a_topic_alias_decodes() {
    #[rustfmt::skip]
    let bytes = packet(0x32, &[
        0x00, 0x00,                                     // empty topic
        0x00, 0x07,                                     // packet id 7
        0x03, 0x23, 0x00, 0x02,                         // topic alias 2
        b'p',                                           // payload
    ]);
    assert_eq!(
        decode_one(&bytes, Some(V5)),
        Ok(Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: Arc::from(""),
            packet_id: 7,
            payload: Bytes::from_static(b"p"),
            properties: Properties {
                topic_alias: Some(2),
                ..Properties::default()
            }
            .into(),
        }))
    );
}

#[test]
fn a_topic_name_with_a_wildcard_is_malformed_even_with_an_alias() {
    let bytes = packet(0x30, &[0x00, 0x01, b'#', 0x03, 0x23, 0x00, 0x02]);
    let e = decode_err(&bytes, Some(V5));
    assert_eq!(e, DecodeError::WildcardInTopicName);
    assert_eq!(e.reason_code(), MALFORMED);
}

#[test]
fn mqtt_5_leaves_topic_filters_to_the_session() {
    // "a#" and "b+" are not valid filters: an MQTT 5 server answers them with
    // 0x8F in SUBACK / UNSUBACK, so the decoder lets them through.
    #[rustfmt::skip]
    let subscribe = packet(0x82, &[
        0x00, 0x01, 0x00,                               // packet id 1, no properties
        0x00, 0x02, b'a', b'#', 0x01,                   // "a#" QoS 1
    ]);
    assert_eq!(
        decode_one(&subscribe, Some(V5)),
        Ok(Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![("a#".into(), SubOptions::from(QoS::AtLeastOnce))],
            properties: no_properties().into(),
        }))
    );
    let unsubscribe = packet(0xA2, &[0x00, 0x01, 0x00, 0x00, 0x02, b'b', b'+']);
    assert_eq!(
        decode_one(&unsubscribe, Some(V5)),
        Ok(Packet::Unsubscribe(Unsubscribe {
            packet_id: 1,
            filters: vec!["b+".into()],
            properties: no_properties().into(),
        }))
    );
    // Strings they must still be.
    let bad_utf8 = packet(0x82, &[0x00, 0x01, 0x00, 0x00, 0x01, 0xFF, 0x00]);
    assert_eq!(decode_err(&bad_utf8, Some(V5)), DecodeError::InvalidUtf8);
}

#[test]
fn subscribe_and_unsubscribe_still_need_a_filter() {
    assert_eq!(
        decode_err(&packet(0x82, &[0x00, 0x01, 0x00]), Some(V5)),
        DecodeError::EmptySubscribe
    );
    assert_eq!(
        decode_err(&packet(0xA2, &[0x00, 0x01, 0x00]), Some(V5)),
        DecodeError::EmptyUnsubscribe
    );
}

#[test]
fn mqtt_5_acknowledgements_are_too_long_for_3_1_1() {
    // A 3.1.1 PUBACK is exactly 2 bytes long; the reason code is trailing.
    assert_eq!(
        decode_err(&[0x40, 0x03, 0x00, 0x01, 0x10], Some(V311)),
        DecodeError::TrailingBytes {
            packet_type: "PUBACK",
            count: 1
        }
    );
    assert_eq!(
        decode_err(&[0xE0, 0x01, 0x04], Some(V311)),
        DecodeError::TrailingBytes {
            packet_type: "DISCONNECT",
            count: 1
        }
    );
}

#[test]
fn reserved_bits_still_break_mqtt_5_packets() {
    assert_eq!(
        decode_err(&[0x20, 0x03, 0x02, 0x00, 0x00], Some(V5)),
        DecodeError::ConnAckReservedFlags
    );
    assert_eq!(
        decode_err(&[0xF1, 0x00], Some(V5)),
        DecodeError::ReservedFlags {
            packet_type: "AUTH",
            flags: 1
        }
    );
    assert_eq!(
        decode_err(&connect_v5(0x03, &[], &[0x00, 0x00]), None),
        DecodeError::ConnectReservedFlag
    );
}

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;

fn decode(bytes: &[u8], context: PropertyContext) -> Result<Properties, PropertyError> {
    let mut buf = Bytes::copy_from_slice(bytes);
    let properties = Properties::decode(&mut buf, context)?;
    assert!(buf.is_empty(), "the list was read to its end");
    Ok(properties)
}

fn encode(properties: &Properties) -> Vec<u8> {
    let mut buf = BytesMut::new();
    properties.encode(&mut buf).expect("encodable");
    assert_eq!(buf.len(), properties.encoded_len().expect("length"));
    buf.to_vec()
}

// Golden bytes, from the property table (section 2.2.2.2) and the data
// representations of section 1.5.

#[test]
fn an_empty_list_is_one_zero_byte() {
    assert_eq!(encode(&Properties::default()), [0x00]);
    assert_eq!(
        decode(&[0x00], PropertyContext::Publish),
        Ok(Properties::default())
    );
}

#[test]
fn connect_properties_golden_bytes() {
    // Session Expiry Interval 60, Receive Maximum 20, Maximum Packet Size 1024,
    // Topic Alias Maximum 10, one user property "a" = "b".
    let bytes = [
        0x17, // 23 bytes of properties
        0x11, 0x00, 0x00, 0x00, 0x3C, // session expiry 60
        0x21, 0x00, 0x14, // receive maximum 20
        0x22, 0x00, 0x0A, // topic alias maximum 10
        0x26, 0x00, 0x01, b'a', 0x00, 0x01, b'b', // user property
        0x27, 0x00, 0x00, 0x04, 0x00, // maximum packet size 1024
    ];
    let expected = Properties {
        session_expiry_interval: Some(60),
        receive_maximum: Some(20),
        topic_alias_maximum: Some(10),
        user_properties: vec![("a".into(), "b".into())],
        maximum_packet_size: Some(1024),
        ..Properties::default()
    };
    assert_eq!(
        decode(&bytes, PropertyContext::Connect),
        Ok(expected.clone())
    );
    assert_eq!(encode(&expected), bytes);
}

#[test]
fn publish_properties_golden_bytes_with_repeated_subscription_identifiers() {
    let bytes = [
        0x0F, // 15 bytes
        0x01, 0x01, // payload format: UTF-8
        0x02, 0x00, 0x00, 0x0E, 0x10, // message expiry 3600
        0x0B, 0x01, // subscription identifier 1
        0x0B, 0x80, 0x01, // subscription identifier 128 (two-byte varint)
        0x23, 0x00, 0x05, // topic alias 5 (encoded after the identifiers)
    ];
    // The encoder writes properties in identifier order; the decoder takes any.
    let expected = Properties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(3600),
        subscription_identifiers: vec![1, 128],
        topic_alias: Some(5),
        ..Properties::default()
    };
    assert_eq!(bytes[0] as usize, bytes.len() - 1);
    assert_eq!(
        decode(&bytes, PropertyContext::Publish),
        Ok(expected.clone())
    );
    assert_eq!(encode(&expected), bytes);
}

#[test]
fn variable_byte_integers_match_the_table_of_section_1_5_5() {
    for (value, bytes) in [
        (0u32, vec![0x00]),
        (127, vec![0x7F]),
        (128, vec![0x80, 0x01]),
        (16_383, vec![0xFF, 0x7F]),
        (16_384, vec![0x80, 0x80, 0x01]),
        (2_097_151, vec![0xFF, 0xFF, 0x7F]),
        (2_097_152, vec![0x80, 0x80, 0x80, 0x01]),
        (VARINT_MAX, vec![0xFF, 0xFF, 0xFF, 0x7F]),
    ] {
        let mut buf = BytesMut::new();
        put_varint(&mut buf, value);
        assert_eq!(buf.to_vec(), bytes, "{value}");
        assert_eq!(varint_len(value), bytes.len());
        assert_eq!(read_varint(&mut Bytes::from(bytes)), Ok(value));
    }
    assert_eq!(
        read_varint(&mut Bytes::from_static(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01])),
        Err(PropertyError::MalformedVarint)
    );
}

// Malformed lists: 0x81.

#[test]
fn a_property_in_a_packet_that_may_not_carry_it_is_malformed() {
    // Topic Alias in CONNECT; Will Delay Interval in PUBLISH; Session Expiry in PUBLISH.
    for (bytes, context) in [
        (&[0x03, 0x23, 0x00, 0x01][..], PropertyContext::Connect),
        (&[0x05, 0x18, 0, 0, 0, 1][..], PropertyContext::Publish),
        (&[0x05, 0x11, 0, 0, 0, 1][..], PropertyContext::Publish),
        (&[0x02, 0x24, 0x01][..], PropertyContext::Connect),
    ] {
        let error = decode(bytes, context).expect_err("not allowed");
        assert!(matches!(error, PropertyError::NotAllowed { .. }), "{error}");
        assert_eq!(error.reason_code(), ReasonCode::MalformedPacket);
    }
}

#[test]
fn unknown_identifiers_and_bad_lengths_are_malformed() {
    for bytes in [
        &[0x02, 0x7F, 0x00][..],                   // identifier 0x7F is not defined
        &[0x05, 0x02, 0x00, 0x00][..],             // list longer than the packet
        &[0x03, 0x02, 0x00, 0x00][..],             // a u32 cut short
        &[0x04, 0x03, 0x00, 0x05, b'a'][..],       // a string longer than the list
        &[0x05, 0x03, 0x00, 0x02, 0xC3, 0x28][..], // invalid UTF-8
        &[0x04, 0x03, 0x00, 0x01, 0x00][..],       // U+0000 in a string
        &[0x05, 0x0B, 0xFF, 0xFF, 0xFF, 0xFF][..], // a varint of five bytes
    ] {
        let error = decode(bytes, PropertyContext::Publish).expect_err("malformed");
        assert_eq!(
            error.reason_code(),
            ReasonCode::MalformedPacket,
            "{bytes:?}: {error}"
        );
    }
}

// Protocol errors: 0x82.

#[test]
fn a_property_given_twice_is_a_protocol_error_except_those_that_may_repeat() {
    let twice = [0x0A, 0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 2];
    let error = decode(&twice, PropertyContext::Publish).expect_err("duplicate");
    assert_eq!(error, PropertyError::Duplicate(0x02));
    assert_eq!(error.reason_code(), ReasonCode::ProtocolError);

    let users = [
        0x0C, 0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'1', 0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'2',
    ];
    let mut users = users.to_vec();
    users[0] = (users.len() - 1) as u8;
    let p = decode(&users, PropertyContext::Connect).expect("user properties repeat");
    assert_eq!(
        p.user_properties,
        vec![("k".into(), "1".into()), ("k".into(), "2".into())]
    );

    let ids = [0x04, 0x0B, 0x01, 0x0B, 0x02];
    assert_eq!(
        decode(&ids, PropertyContext::Publish)
            .expect("several in PUBLISH")
            .subscription_identifiers,
        vec![1, 2]
    );
    assert_eq!(
        decode(&ids, PropertyContext::Subscribe),
        Err(PropertyError::Duplicate(0x0B)),
        "one in SUBSCRIBE"
    );
}

#[test]
fn values_out_of_range_are_protocol_errors() {
    for (bytes, context) in [
        (&[0x03, 0x21, 0x00, 0x00][..], PropertyContext::Connect), // receive maximum 0
        (&[0x05, 0x27, 0, 0, 0, 0][..], PropertyContext::Connect), // maximum packet size 0
        (&[0x03, 0x23, 0x00, 0x00][..], PropertyContext::Publish), // topic alias 0
        (&[0x02, 0x0B, 0x00][..], PropertyContext::Subscribe),     // subscription id 0
        (&[0x02, 0x17, 0x02][..], PropertyContext::Connect),       // request problem info 2
        (&[0x02, 0x01, 0x02][..], PropertyContext::Publish),       // payload format 2
    ] {
        let error = decode(bytes, context).expect_err("out of range");
        assert_eq!(
            error.reason_code(),
            ReasonCode::ProtocolError,
            "{bytes:?}: {error}"
        );
    }
}

#[test]
fn reason_codes_round_trip_and_errors_start_at_0x80() {
    for byte in 0..=u8::MAX {
        if let Some(code) = ReasonCode::from_u8(byte) {
            assert_eq!(code as u8, byte);
            assert_eq!(code.is_error(), byte >= 0x80);
        }
    }
    assert_eq!(
        ReasonCode::from_u8(0x93),
        Some(ReasonCode::ReceiveMaximumExceeded)
    );
    assert_eq!(ReasonCode::from_u8(0x95), Some(ReasonCode::PacketTooLarge));
    assert_eq!(ReasonCode::from_u8(0x03), None);
}

#[test]
fn a_string_too_long_for_the_wire_is_an_encode_error() {
    let p = Properties {
        reason_string: Some("x".repeat(70_000)),
        ..Properties::default()
    };
    assert!(p.encode(&mut BytesMut::new()).is_err());
}

fn text() -> impl Strategy<Value = String> {
    "[a-z0-9/ é]{0,12}"
}

fn publish_properties() -> impl Strategy<Value = Properties> {
    (
        proptest::option::of(0u8..=1),
        proptest::option::of(any::<u32>()),
        proptest::option::of(text()),
        proptest::option::of(text()),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
        proptest::collection::vec(1u32..=VARINT_MAX, 0..4),
        proptest::option::of(1u16..),
        proptest::collection::vec((text(), text()), 0..4),
    )
        .prop_map(
            |(format, expiry, content, response, correlation, ids, alias, users)| Properties {
                payload_format_indicator: format,
                message_expiry_interval: expiry,
                content_type: content,
                response_topic: response,
                correlation_data: correlation.map(Bytes::from),
                subscription_identifiers: ids,
                topic_alias: alias,
                user_properties: users,
                ..Properties::default()
            },
        )
}

fn connack_properties() -> impl Strategy<Value = Properties> {
    (
        proptest::option::of(any::<u32>()),
        proptest::option::of(text()),
        proptest::option::of(any::<u16>()),
        proptest::option::of(1u16..),
        proptest::option::of(1u32..),
        proptest::option::of(0u8..=1),
        proptest::option::of(0u8..=1),
        proptest::option::of(text()),
    )
        .prop_map(
            |(expiry, assigned, keep_alive, receive, max_packet, max_qos, retain, reason)| {
                Properties {
                    session_expiry_interval: expiry,
                    assigned_client_identifier: assigned,
                    server_keep_alive: keep_alive,
                    receive_maximum: receive,
                    maximum_packet_size: max_packet,
                    maximum_qos: max_qos,
                    retain_available: retain,
                    reason_string: reason,
                    ..Properties::default()
                }
            },
        )
}

proptest! {
    #[test]
    fn publish_properties_round_trip(p in publish_properties()) {
        prop_assert_eq!(decode(&encode(&p), PropertyContext::Publish), Ok(p));
    }

    #[test]
    fn connack_properties_round_trip(p in connack_properties()) {
        prop_assert_eq!(decode(&encode(&p), PropertyContext::ConnAck), Ok(p));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        for context in [
            PropertyContext::Connect,
            PropertyContext::Will,
            PropertyContext::ConnAck,
            PropertyContext::Publish,
            PropertyContext::Subscribe,
            PropertyContext::Disconnect,
            PropertyContext::Auth,
        ] {
            let _ = Properties::decode(&mut Bytes::from(bytes.clone()), context);
        }
    }
}

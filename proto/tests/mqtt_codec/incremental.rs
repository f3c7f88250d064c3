//! Incremental decoding: a stream that arrives a byte at a time yields the same
//! packets as one that arrives whole, and "need more bytes" never moves the buffer.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use starling_proto::mqtt::{
    decode, encode, Ack, ConnAck, Disconnect, Packet, Properties, ProtocolVersion, Publish, QoS,
    ReasonCode, SubAck, SubOptions, Subscribe, UnsubAck, Unsubscribe,
};

use super::golden::full_connect_v311;
use super::NO_LIMIT;

const V311: ProtocolVersion = ProtocolVersion::V3_1_1;

/// A session's worth of packets, CONNECT first, one of every type.
fn session() -> Vec<Packet> {
    let (_, connect) = full_connect_v311();
    let publish = |qos, packet_id, payload_len| {
        Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: Arc::from("sensors/kitchen/temp"),
            packet_id,
            payload: Bytes::from(vec![0x5A; payload_len]),
            properties: Properties::default().into(),
        })
    };
    vec![
        connect,
        Packet::ConnAck(ConnAck::new(false, ReasonCode::Success)),
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![("sensors/+/temp".into(), SubOptions::from(QoS::ExactlyOnce))],
            properties: Properties::default().into(),
        }),
        Packet::SubAck(SubAck {
            packet_id: 1,
            codes: vec![ReasonCode::granted(QoS::ExactlyOnce)],
            properties: Properties::default().into(),
        }),
        publish(QoS::AtMostOnce, 0, 0),
        publish(QoS::AtLeastOnce, 2, 300),
        Packet::PubAck(Ack::new(2)),
        publish(QoS::ExactlyOnce, 3, 20_000),
        Packet::PubRec(Ack::new(3)),
        Packet::PubRel(Ack::new(3)),
        Packet::PubComp(Ack::new(3)),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 4,
            filters: vec!["sensors/+/temp".into()],
            properties: Properties::default().into(),
        }),
        Packet::UnsubAck(UnsubAck {
            packet_id: 4,
            codes: Vec::new(),
            properties: Properties::default().into(),
        }),
        Packet::PingReq,
        Packet::PingResp,
        Packet::Disconnect(Disconnect::default()),
    ]
}

fn encode_all(packets: &[Packet]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    for packet in packets {
        encode(packet, V311, &mut buf).expect("encodable");
    }
    buf.to_vec()
}

/// Decodes everything `buf` holds, checking that `Ok(None)` leaves it untouched.
fn drain(buf: &mut BytesMut, version: &mut Option<ProtocolVersion>, out: &mut Vec<Packet>) {
    loop {
        let before = buf.clone();
        match decode(buf, NO_LIMIT, *version).expect("a valid stream") {
            Some(packet) => {
                if let Packet::Connect(c) = &packet {
                    *version = Some(c.protocol);
                }
                out.push(packet);
            }
            None => {
                assert_eq!(*buf, before, "Ok(None) changed the buffer");
                return;
            }
        }
    }
}

fn decode_in_chunks(stream: &[u8], chunk: usize) -> Vec<Packet> {
    let mut buf = BytesMut::new();
    let mut version = None;
    let mut out = Vec::new();
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        drain(&mut buf, &mut version, &mut out);
    }
    assert!(buf.is_empty(), "{} bytes left over", buf.len());
    out
}

#[test]
fn whole_stream_decodes_to_the_packets() {
    let packets = session();
    assert_eq!(decode_in_chunks(&encode_all(&packets), usize::MAX), packets);
}

#[test]
fn byte_at_a_time_yields_the_same_packets() {
    let packets = session();
    assert_eq!(decode_in_chunks(&encode_all(&packets), 1), packets);
}

#[test]
fn odd_sized_chunks_yield_the_same_packets() {
    let packets = session();
    let stream = encode_all(&packets);
    for chunk in [2, 3, 7, 64, 1000] {
        assert_eq!(
            decode_in_chunks(&stream, chunk),
            packets,
            "chunks of {chunk}"
        );
    }
}

#[test]
fn every_proper_prefix_of_a_packet_needs_more_bytes() {
    for packet in session() {
        let bytes = encode_all(std::slice::from_ref(&packet));
        let version = if matches!(packet, Packet::Connect(_)) {
            None
        } else {
            Some(V311)
        };
        for len in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..len]);
            assert_eq!(
                decode(&mut buf, NO_LIMIT, version),
                Ok(None),
                "{len} bytes of {packet:?}"
            );
            assert_eq!(&buf[..], &bytes[..len]);
        }
    }
}

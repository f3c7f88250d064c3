//! The MQTT 3.1 / 3.1.1 decoder and encoder.
//!
//! [`decode`] takes one packet off the front of a connection's read buffer, or says
//! it needs more bytes; [`encode`] appends one packet to a write buffer. Each packet
//! type has a small decode and encode function in a submodule, given the protocol
//! version so that MQTT 5's properties and reason codes can be added beside them.

mod connect;
mod error;
mod header;
mod publish;
mod read;
mod subscribe;
mod write;

use bytes::{Buf, BufMut, BytesMut};

pub use error::{DecodeError, EncodeError};
use header::{PacketType, MAX_REMAINING_LENGTH};
use read::Reader;

use super::packet::{Packet, ProtocolVersion};

/// Decodes one packet from the front of `buf`.
///
/// - `Ok(None)`: `buf` does not yet hold a whole packet; it is left untouched.
/// - `Ok(Some(packet))`: exactly that packet's bytes were consumed; binary fields
///   and payloads share `buf`'s memory rather than being copied.
/// - `Err(_)`: the peer broke the protocol (see [`DecodeError`]).
///
/// `max_packet_size` bounds the whole packet, fixed header included; a bigger packet
/// is refused as soon as its fixed header has arrived. `version` is `None` until
/// CONNECT has been accepted: packets are then judged by the rules of MQTT 3.1.1,
/// and CONNECT, whatever `version`, by the protocol it names itself.
pub fn decode(
    buf: &mut BytesMut,
    max_packet_size: usize,
    version: Option<ProtocolVersion>,
) -> Result<Option<Packet>, DecodeError> {
    let rules = version.unwrap_or(ProtocolVersion::V3_1_1);
    let Some(header) = header::parse(buf, rules)? else {
        return Ok(None);
    };
    let size = header.packet_size();
    if size > max_packet_size {
        return Err(DecodeError::PacketTooLarge {
            size,
            max: max_packet_size,
        });
    }
    if buf.len() < size {
        return Ok(None);
    }
    let mut frame = buf.split_to(size);
    frame.advance(header.len);
    let mut reader = Reader::new(frame.freeze(), header.packet_type.name());
    let packet = decode_body(header.packet_type, header.flags, rules, &mut reader)?;
    reader.finish()?;
    Ok(Some(packet))
}

fn decode_body(
    packet_type: PacketType,
    flags: u8,
    version: ProtocolVersion,
    r: &mut Reader,
) -> Result<Packet, DecodeError> {
    Ok(match packet_type {
        PacketType::Connect => Packet::Connect(connect::decode_connect(r)?),
        PacketType::ConnAck => Packet::ConnAck(connect::decode_connack(r, version)?),
        PacketType::Publish => Packet::Publish(publish::decode_publish(r, flags, version)?),
        PacketType::PubAck => Packet::PubAck(publish::decode_ack(r, version)?),
        PacketType::PubRec => Packet::PubRec(publish::decode_ack(r, version)?),
        PacketType::PubRel => Packet::PubRel(publish::decode_ack(r, version)?),
        PacketType::PubComp => Packet::PubComp(publish::decode_ack(r, version)?),
        PacketType::Subscribe => Packet::Subscribe(subscribe::decode_subscribe(r, version)?),
        PacketType::SubAck => Packet::SubAck(subscribe::decode_suback(r, version)?),
        PacketType::Unsubscribe => Packet::Unsubscribe(subscribe::decode_unsubscribe(r, version)?),
        PacketType::UnsubAck => Packet::UnsubAck(publish::decode_ack(r, version)?),
        PacketType::PingReq => Packet::PingReq,
        PacketType::PingResp => Packet::PingResp,
        PacketType::Disconnect => Packet::Disconnect,
    })
}

/// Appends `packet` to `buf` as `version` spells it; on error `buf` is unchanged.
///
/// CONNECT is written in the version its `protocol` field names. For MQTT 3.1 the
/// CONNACK session-present flag is not written (3.1 has none).
pub fn encode(
    packet: &Packet,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let start = buf.len();
    let result = encode_packet(packet, version, buf);
    if result.is_err() {
        buf.truncate(start);
    }
    result
}

fn encode_packet(
    packet: &Packet,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let packet_type = PacketType::of(packet);
    let flags = match packet {
        Packet::Publish(p) => publish::publish_flags(p)?,
        _ => packet_type.required_flags(),
    };
    let remaining = body_len(packet);
    if remaining > MAX_REMAINING_LENGTH {
        return Err(EncodeError::PacketTooLarge { remaining });
    }
    buf.reserve(1 + header::remaining_length_len(remaining) + remaining);
    buf.put_u8(((packet_type as u8) << 4) | flags);
    header::put_remaining_length(remaining, buf);
    let body_start = buf.len();
    write_body(packet, version, buf)?;
    debug_assert_eq!(
        buf.len() - body_start,
        remaining,
        "{} body length",
        packet_type.name()
    );
    Ok(())
}

fn body_len(packet: &Packet) -> usize {
    match packet {
        Packet::Connect(c) => connect::connect_len(c),
        Packet::ConnAck(_) => connect::CONNACK_LEN,
        Packet::Publish(p) => publish::publish_len(p),
        Packet::PubAck(_)
        | Packet::PubRec(_)
        | Packet::PubRel(_)
        | Packet::PubComp(_)
        | Packet::UnsubAck(_) => publish::ACK_LEN,
        Packet::Subscribe(s) => subscribe::subscribe_len(s),
        Packet::SubAck(s) => subscribe::suback_len(s),
        Packet::Unsubscribe(u) => subscribe::unsubscribe_len(u),
        Packet::PingReq | Packet::PingResp | Packet::Disconnect => 0,
    }
}

fn write_body(
    packet: &Packet,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    match packet {
        Packet::Connect(c) => connect::write_connect(c, buf),
        Packet::ConnAck(c) => {
            connect::write_connack(c, version, buf);
            Ok(())
        }
        Packet::Publish(p) => publish::write_publish(p, buf),
        Packet::PubAck(id) => publish::write_ack("PUBACK", *id, buf),
        Packet::PubRec(id) => publish::write_ack("PUBREC", *id, buf),
        Packet::PubRel(id) => publish::write_ack("PUBREL", *id, buf),
        Packet::PubComp(id) => publish::write_ack("PUBCOMP", *id, buf),
        Packet::UnsubAck(id) => publish::write_ack("UNSUBACK", *id, buf),
        Packet::Subscribe(s) => subscribe::write_subscribe(s, buf),
        Packet::SubAck(s) => subscribe::write_suback(s, buf),
        Packet::Unsubscribe(u) => subscribe::write_unsubscribe(u, buf),
        Packet::PingReq | Packet::PingResp | Packet::Disconnect => Ok(()),
    }
}

//! The MQTT 3.1 / 3.1.1 / 5.0 decoder and encoder.
//!
//! [`decode`] takes one packet off the front of a connection's read buffer, or says
//! it needs more bytes; [`encode`] appends one packet to a write buffer. Each packet
//! type has a small decode and encode function in a submodule, given the protocol
//! version: MQTT 5's properties and reason codes are read and written only when
//! it is 5.

mod connect;
mod disconnect;
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
/// and CONNECT, whatever `version`, by the protocol it names itself. A property
/// list that breaks MQTT 5's rules is an error whose
/// [`DecodeError::reason_code`] is 0x81 or 0x82.
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
    use PacketType as T;
    Ok(match packet_type {
        T::Connect => Packet::Connect(connect::decode_connect(r)?),
        T::ConnAck => Packet::ConnAck(connect::decode_connack(r, version)?),
        T::Publish => Packet::Publish(publish::decode_publish(r, flags, version)?),
        T::PubAck => Packet::PubAck(publish::decode_ack(r, packet_type, version)?),
        T::PubRec => Packet::PubRec(publish::decode_ack(r, packet_type, version)?),
        T::PubRel => Packet::PubRel(publish::decode_ack(r, packet_type, version)?),
        T::PubComp => Packet::PubComp(publish::decode_ack(r, packet_type, version)?),
        T::Subscribe => Packet::Subscribe(subscribe::decode_subscribe(r, version)?),
        T::SubAck => Packet::SubAck(subscribe::decode_suback(r, version)?),
        T::Unsubscribe => Packet::Unsubscribe(subscribe::decode_unsubscribe(r, version)?),
        T::UnsubAck => Packet::UnsubAck(subscribe::decode_unsuback(r, version)?),
        T::PingReq => Packet::PingReq,
        T::PingResp => Packet::PingResp,
        T::Disconnect => Packet::Disconnect(disconnect::decode_disconnect(r, version)?),
        T::Auth => Packet::Auth(disconnect::decode_auth(r)?),
    })
}

/// Appends `packet` to `buf` as `version` spells it; on error `buf` is unchanged.
///
/// CONNECT is written in the version its `protocol` field names. For MQTT 3.1 the
/// CONNACK session-present flag is not written (3.1 has none). Toward 3.1 / 3.1.1,
/// properties are left out and reason codes become the return codes those
/// versions have.
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

/// The bytes `packet` takes on the wire when written as `version` spells it.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> Result<usize, EncodeError> {
    let remaining = body_len(packet, version)?;
    Ok(1 + header::remaining_length_len(remaining) + remaining)
}

fn encode_packet(
    packet: &Packet,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let version = match packet {
        Packet::Connect(c) => c.protocol,
        _ => version,
    };
    let packet_type = PacketType::of(packet);
    let flags = match packet {
        Packet::Publish(p) => publish::publish_flags(p)?,
        _ => packet_type.required_flags(),
    };
    let remaining = body_len(packet, version)?;
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

fn body_len(packet: &Packet, version: ProtocolVersion) -> Result<usize, EncodeError> {
    match packet {
        Packet::Connect(c) => connect::connect_len(c),
        Packet::ConnAck(c) => connect::connack_len(c, version),
        Packet::Publish(p) => publish::publish_len(p, version),
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            publish::ack_len(a, version)
        }
        Packet::Subscribe(s) => subscribe::subscribe_len(s, version),
        Packet::SubAck(s) => subscribe::suback_len(s, version),
        Packet::Unsubscribe(u) => subscribe::unsubscribe_len(u, version),
        Packet::UnsubAck(u) => subscribe::unsuback_len(u, version),
        Packet::PingReq | Packet::PingResp => Ok(0),
        Packet::Disconnect(d) => disconnect::disconnect_len(d, version),
        Packet::Auth(a) => disconnect::auth_len(a, version),
    }
}

fn write_body(
    packet: &Packet,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    match packet {
        Packet::Connect(c) => connect::write_connect(c, buf),
        Packet::ConnAck(c) => connect::write_connack(c, version, buf),
        Packet::Publish(p) => publish::write_publish(p, version, buf),
        Packet::PubAck(a) => publish::write_ack("PUBACK", a, version, buf),
        Packet::PubRec(a) => publish::write_ack("PUBREC", a, version, buf),
        Packet::PubRel(a) => publish::write_ack("PUBREL", a, version, buf),
        Packet::PubComp(a) => publish::write_ack("PUBCOMP", a, version, buf),
        Packet::Subscribe(s) => subscribe::write_subscribe(s, version, buf),
        Packet::SubAck(s) => subscribe::write_suback(s, version, buf),
        Packet::Unsubscribe(u) => subscribe::write_unsubscribe(u, version, buf),
        Packet::UnsubAck(u) => subscribe::write_unsuback(u, version, buf),
        Packet::PingReq | Packet::PingResp => Ok(()),
        Packet::Disconnect(d) => disconnect::write_disconnect(d, version, buf),
        Packet::Auth(a) => disconnect::write_auth(a, buf),
    }
}

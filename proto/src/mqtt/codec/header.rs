//! The fixed header: packet type, flags and remaining length (MQTT 3.1.1 section 2.2).
//!
//! Everything that can be judged from the fixed header alone is judged here, before
//! the body is buffered: reserved types and flags, and the length of the packets
//! whose length is fixed.

use bytes::{BufMut, BytesMut};

use super::error::DecodeError;
use crate::mqtt::packet::{Packet, ProtocolVersion, QoS};

/// The largest remaining length four bytes of variable-length encoding can express.
pub(super) const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// PUBLISH fixed-header flag bits.
pub(super) const PUBLISH_DUP: u8 = 0b1000;
pub(super) const PUBLISH_RETAIN: u8 = 0b0001;

/// The fifteen control packet types (AUTH is MQTT 5's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PacketType {
    Connect = 1,
    ConnAck = 2,
    Publish = 3,
    PubAck = 4,
    PubRec = 5,
    PubRel = 6,
    PubComp = 7,
    Subscribe = 8,
    SubAck = 9,
    Unsubscribe = 10,
    UnsubAck = 11,
    PingReq = 12,
    PingResp = 13,
    Disconnect = 14,
    Auth = 15,
}

impl PacketType {
    fn from_u8(value: u8) -> Option<PacketType> {
        use PacketType::*;
        Some(match value {
            1 => Connect,
            2 => ConnAck,
            3 => Publish,
            4 => PubAck,
            5 => PubRec,
            6 => PubRel,
            7 => PubComp,
            8 => Subscribe,
            9 => SubAck,
            10 => Unsubscribe,
            11 => UnsubAck,
            12 => PingReq,
            13 => PingResp,
            14 => Disconnect,
            15 => Auth,
            _ => return None,
        })
    }

    pub(super) fn of(packet: &Packet) -> PacketType {
        use PacketType::*;
        match packet {
            Packet::Connect(_) => Connect,
            Packet::ConnAck(_) => ConnAck,
            Packet::Publish(_) => Publish,
            Packet::PubAck(_) => PubAck,
            Packet::PubRec(_) => PubRec,
            Packet::PubRel(_) => PubRel,
            Packet::PubComp(_) => PubComp,
            Packet::Subscribe(_) => Subscribe,
            Packet::SubAck(_) => SubAck,
            Packet::Unsubscribe(_) => Unsubscribe,
            Packet::UnsubAck(_) => UnsubAck,
            Packet::PingReq => PingReq,
            Packet::PingResp => PingResp,
            Packet::Disconnect(_) => Disconnect,
            Packet::Auth(_) => Auth,
        }
    }

    /// The name the specification uses, for error messages.
    pub(super) fn name(self) -> &'static str {
        use PacketType::*;
        match self {
            Connect => "CONNECT",
            ConnAck => "CONNACK",
            Publish => "PUBLISH",
            PubAck => "PUBACK",
            PubRec => "PUBREC",
            PubRel => "PUBREL",
            PubComp => "PUBCOMP",
            Subscribe => "SUBSCRIBE",
            SubAck => "SUBACK",
            Unsubscribe => "UNSUBSCRIBE",
            UnsubAck => "UNSUBACK",
            PingReq => "PINGREQ",
            PingResp => "PINGRESP",
            Disconnect => "DISCONNECT",
            Auth => "AUTH",
        }
    }

    /// The flags every packet but PUBLISH must carry [MQTT-2.2.2-1].
    pub(super) fn required_flags(self) -> u8 {
        match self {
            PacketType::PubRel | PacketType::Subscribe | PacketType::Unsubscribe => 0b0010,
            _ => 0,
        }
    }

    /// The remaining length of the packets whose length never varies. In
    /// MQTT 5 only the pings have one: acknowledgements and DISCONNECT may
    /// carry reason codes and properties.
    fn fixed_remaining_length(self, version: ProtocolVersion) -> Option<usize> {
        use PacketType::*;
        match (self, version.is_v5()) {
            (PingReq | PingResp, _) => Some(0),
            (_, true) => None,
            (ConnAck | PubAck | PubRec | PubRel | PubComp | UnsubAck, false) => Some(2),
            (Disconnect, false) => Some(0),
            _ => None,
        }
    }
}

/// A parsed fixed header.
#[derive(Debug, Clone, Copy)]
pub(super) struct FixedHeader {
    pub(super) packet_type: PacketType,
    pub(super) flags: u8,
    /// Bytes taken by the fixed header itself (2 to 5).
    pub(super) len: usize,
    pub(super) remaining: usize,
}

impl FixedHeader {
    /// The whole packet's size on the wire.
    pub(super) fn packet_size(&self) -> usize {
        self.len + self.remaining
    }
}

/// Reads the fixed header at the front of `buf` without consuming anything; `None`
/// if more bytes are needed to know it.
pub(super) fn parse(
    buf: &[u8],
    version: ProtocolVersion,
) -> Result<Option<FixedHeader>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let packet_type = PacketType::from_u8(first >> 4)
        .filter(|t| *t != PacketType::Auth || version.is_v5())
        .ok_or(DecodeError::UnknownPacketType(first >> 4))?;
    let flags = first & 0x0F;
    check_flags(packet_type, flags, version)?;

    let Some((remaining, length_bytes)) = parse_remaining_length(&buf[1..])? else {
        return Ok(None);
    };
    if let Some(expected) = packet_type.fixed_remaining_length(version) {
        let name = packet_type.name();
        if remaining < expected {
            return Err(DecodeError::Truncated { packet_type: name });
        }
        if remaining > expected {
            let count = remaining - expected;
            return Err(DecodeError::TrailingBytes {
                packet_type: name,
                count,
            });
        }
    }
    Ok(Some(FixedHeader {
        packet_type,
        flags,
        len: 1 + length_bytes,
        remaining,
    }))
}

fn check_flags(
    packet_type: PacketType,
    flags: u8,
    version: ProtocolVersion,
) -> Result<(), DecodeError> {
    if packet_type == PacketType::Publish {
        let qos = QoS::from_u8((flags >> 1) & 0b11).ok_or(DecodeError::InvalidQoS)?;
        if qos == QoS::AtMostOnce && flags & PUBLISH_DUP != 0 {
            return Err(DecodeError::DupWithQoS0);
        }
        return Ok(());
    }
    let required = packet_type.required_flags();
    // MQTT 3.1 sets DUP on a retransmitted PUBREL, SUBSCRIBE or UNSUBSCRIBE; 3.1.1
    // reserved that bit.
    let tolerated = if version == ProtocolVersion::V3_1 && required != 0 {
        PUBLISH_DUP
    } else {
        0
    };
    if flags & !tolerated != required {
        return Err(DecodeError::ReservedFlags {
            packet_type: packet_type.name(),
            flags,
        });
    }
    Ok(())
}

/// Decodes the variable-length remaining length; returns it and the bytes it took.
fn parse_remaining_length(buf: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut value = 0usize;
    for (i, &byte) in buf.iter().take(4).enumerate() {
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= 4 {
        Err(DecodeError::MalformedRemainingLength)
    } else {
        Ok(None)
    }
}

/// How many bytes the remaining length `len` takes on the wire.
pub(super) fn remaining_length_len(len: usize) -> usize {
    match len {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Writes a remaining length the caller has checked against [`MAX_REMAINING_LENGTH`].
pub(super) fn put_remaining_length(mut len: usize, buf: &mut BytesMut) {
    loop {
        let low = (len & 0x7F) as u8;
        len >>= 7;
        if len == 0 {
            buf.put_u8(low);
            return;
        }
        buf.put_u8(low | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_length_boundaries() {
        for (len, bytes) in [
            (0usize, &[0x00][..]),
            (127, &[0x7F]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xFF, 0x7F]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xFF, 0xFF, 0x7F]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (MAX_REMAINING_LENGTH, &[0xFF, 0xFF, 0xFF, 0x7F]),
        ] {
            let mut buf = BytesMut::new();
            put_remaining_length(len, &mut buf);
            assert_eq!(&buf[..], bytes, "{len}");
            assert_eq!(remaining_length_len(len), bytes.len(), "{len}");
            assert_eq!(parse_remaining_length(bytes), Ok(Some((len, bytes.len()))));
            assert_eq!(parse_remaining_length(&bytes[..bytes.len() - 1]), Ok(None));
        }
    }

    #[test]
    fn five_byte_remaining_length_is_malformed() {
        let five = [0x80, 0x80, 0x80, 0x80, 0x01];
        assert_eq!(
            parse_remaining_length(&five),
            Err(DecodeError::MalformedRemainingLength)
        );
        assert_eq!(
            parse_remaining_length(&five[..4]),
            Err(DecodeError::MalformedRemainingLength)
        );
    }

    #[test]
    fn every_packet_type_round_trips_through_its_number() {
        for n in 1..=15u8 {
            let packet_type = PacketType::from_u8(n).expect("1..=15 are packet types");
            assert_eq!(packet_type as u8, n);
        }
        assert_eq!(PacketType::from_u8(0), None);
    }

    #[test]
    fn auth_is_a_packet_type_only_in_mqtt_5() {
        let auth = [0xF0, 0x00];
        assert_eq!(
            parse(&auth, ProtocolVersion::V3_1_1).map(|h| h.is_some()),
            Err(DecodeError::UnknownPacketType(15))
        );
        let header = parse(&auth, ProtocolVersion::V5)
            .expect("valid")
            .expect("whole");
        assert_eq!(header.packet_type, PacketType::Auth);
    }
}

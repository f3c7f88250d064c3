//! PUBLISH and its acknowledgements PUBACK, PUBREC, PUBREL and PUBCOMP (MQTT 3.1.1
//! sections 3.3 to 3.7).
//!
//! The QoS and DUP flags were already judged from the fixed header; the body is the
//! topic, the packet identifier for QoS 1 and 2, and the payload, which is handed
//! out as a slice of the packet's buffer.

use bytes::{BufMut, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::header::{PUBLISH_DUP, PUBLISH_RETAIN};
use super::read::Reader;
use super::write::{prefixed_len, put_packet_id, put_prefixed};
use crate::mqtt::packet::{ProtocolVersion, Publish, QoS};

pub(super) fn decode_publish(
    r: &mut Reader,
    flags: u8,
    _version: ProtocolVersion,
) -> Result<Publish, DecodeError> {
    let qos = QoS::from_u8((flags >> 1) & 0b11).ok_or(DecodeError::InvalidQoS)?;
    let topic = r.topic_name()?;
    let packet_id = if qos == QoS::AtMostOnce {
        0
    } else {
        r.packet_id()?
    };
    Ok(Publish {
        dup: flags & PUBLISH_DUP != 0,
        qos,
        retain: flags & PUBLISH_RETAIN != 0,
        topic,
        packet_id,
        payload: r.rest(),
    })
}

/// The fixed-header flags of a PUBLISH.
pub(super) fn publish_flags(publish: &Publish) -> Result<u8, EncodeError> {
    if publish.dup && publish.qos == QoS::AtMostOnce {
        return Err(EncodeError::DupWithQoS0);
    }
    let mut flags = (publish.qos as u8) << 1;
    if publish.dup {
        flags |= PUBLISH_DUP;
    }
    if publish.retain {
        flags |= PUBLISH_RETAIN;
    }
    Ok(flags)
}

pub(super) fn publish_len(publish: &Publish) -> usize {
    let packet_id = if publish.qos == QoS::AtMostOnce { 0 } else { 2 };
    prefixed_len(publish.topic.len()) + packet_id + publish.payload.len()
}

pub(super) fn write_publish(publish: &Publish, buf: &mut BytesMut) -> Result<(), EncodeError> {
    put_prefixed(buf, "topic name", publish.topic.as_bytes())?;
    if publish.qos != QoS::AtMostOnce {
        put_packet_id(buf, "PUBLISH", publish.packet_id)?;
    }
    buf.put_slice(&publish.payload);
    Ok(())
}

/// The body of PUBACK, PUBREC, PUBREL, PUBCOMP and UNSUBACK: a packet identifier.
pub(super) fn decode_ack(r: &mut Reader, _version: ProtocolVersion) -> Result<u16, DecodeError> {
    r.packet_id()
}

pub(super) const ACK_LEN: usize = 2;

pub(super) fn write_ack(
    packet_type: &'static str,
    packet_id: u16,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    put_packet_id(buf, packet_type, packet_id)
}

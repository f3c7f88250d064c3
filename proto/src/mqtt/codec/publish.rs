//! PUBLISH and its acknowledgements PUBACK, PUBREC, PUBREL and PUBCOMP (MQTT 3.1.1
//! sections 3.3 to 3.7; MQTT 5.0 adds properties to PUBLISH, and a reason code
//! and properties to the acknowledgements).
//!
//! The QoS and DUP flags were already judged from the fixed header; the body is the
//! topic, the packet identifier for QoS 1 and 2, MQTT 5's properties, and the
//! payload, which is handed out as a slice of the packet's buffer.

use bytes::{BufMut, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::header::{PacketType, PUBLISH_DUP, PUBLISH_RETAIN};
use super::read::{check_topic_name, Reader};
use super::write::{prefixed_len, put_packet_id, put_prefixed};
use crate::mqtt::packet::{Ack, ProtocolVersion, Publish, QoS, ReasonCode};
use crate::mqtt::v5::{Properties, PropertyContext, Props};

pub(super) fn decode_publish(
    r: &mut Reader,
    flags: u8,
    version: ProtocolVersion,
) -> Result<Publish, DecodeError> {
    let qos = QoS::from_u8((flags >> 1) & 0b11).ok_or(DecodeError::InvalidQoS)?;
    let topic = if version.is_v5() {
        r.shared_string()?
    } else {
        r.topic_name()?
    };
    let packet_id = if qos == QoS::AtMostOnce {
        0
    } else {
        r.packet_id()?
    };
    let properties = if version.is_v5() {
        let properties = r.properties(PropertyContext::Publish)?;
        // An empty topic names the topic its alias stands for.
        if !(topic.is_empty() && properties.topic_alias.is_some()) {
            check_topic_name(&topic).map_err(|e| match e {
                DecodeError::EmptyTopicName => DecodeError::EmptyTopicWithoutAlias,
                other => other,
            })?;
        }
        Props::from(properties)
    } else {
        Props::default()
    };
    Ok(Publish {
        dup: flags & PUBLISH_DUP != 0,
        qos,
        retain: flags & PUBLISH_RETAIN != 0,
        topic,
        packet_id,
        payload: r.rest(),
        properties,
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

pub(super) fn publish_len(
    publish: &Publish,
    version: ProtocolVersion,
) -> Result<usize, EncodeError> {
    let packet_id = if publish.qos == QoS::AtMostOnce { 0 } else { 2 };
    let properties = if version.is_v5() {
        publish.properties.encoded_len()?
    } else {
        0
    };
    Ok(prefixed_len(publish.topic.len()) + packet_id + properties + publish.payload.len())
}

pub(super) fn write_publish(
    publish: &Publish,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    put_prefixed(buf, "topic name", publish.topic.as_bytes())?;
    if publish.qos != QoS::AtMostOnce {
        put_packet_id(buf, "PUBLISH", publish.packet_id)?;
    }
    if version.is_v5() {
        publish.properties.encode(buf)?;
    }
    buf.put_slice(&publish.payload);
    Ok(())
}

/// The property context of each acknowledgement type.
fn ack_context(packet_type: PacketType) -> PropertyContext {
    match packet_type {
        PacketType::PubAck => PropertyContext::PubAck,
        PacketType::PubRec => PropertyContext::PubRec,
        PacketType::PubRel => PropertyContext::PubRel,
        _ => PropertyContext::PubComp,
    }
}

/// The body of PUBACK, PUBREC, PUBREL and PUBCOMP: a packet identifier, then in
/// MQTT 5 a reason code and properties, each of which may be left out when the
/// rest is (a remaining length of 2 means Success, of 3 no properties).
pub(super) fn decode_ack(
    r: &mut Reader,
    packet_type: PacketType,
    version: ProtocolVersion,
) -> Result<Ack, DecodeError> {
    let packet_id = r.packet_id()?;
    if !version.is_v5() || r.is_empty() {
        return Ok(Ack::new(packet_id));
    }
    let reason = r.reason_code()?;
    let properties = if r.is_empty() {
        Properties::default()
    } else {
        r.properties(ack_context(packet_type))?
    };
    Ok(Ack {
        packet_id,
        reason,
        properties: properties.into(),
    })
}

pub(super) fn ack_len(ack: &Ack, version: ProtocolVersion) -> Result<usize, EncodeError> {
    Ok(match (version.is_v5(), ack.properties.is_empty()) {
        (false, _) => 2,
        (true, true) if ack.reason == ReasonCode::Success => 2,
        (true, true) => 3,
        (true, false) => 3 + ack.properties.encoded_len()?,
    })
}

pub(super) fn write_ack(
    packet_type: &'static str,
    ack: &Ack,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    put_packet_id(buf, packet_type, ack.packet_id)?;
    if version.is_v5() && (ack.reason != ReasonCode::Success || !ack.properties.is_empty()) {
        buf.put_u8(ack.reason as u8);
        if !ack.properties.is_empty() {
            ack.properties.encode(buf)?;
        }
    }
    Ok(())
}

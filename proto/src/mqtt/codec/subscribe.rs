//! SUBSCRIBE, SUBACK and UNSUBSCRIBE (MQTT 3.1.1 sections 3.8 to 3.10; UNSUBACK is an
//! ack like PUBACK and lives with them).

use bytes::{BufMut, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::read::Reader;
use super::write::{prefixed_len, put_packet_id, put_prefixed};
use crate::mqtt::packet::{ProtocolVersion, QoS, SubAck, SubAckCode, Subscribe, Unsubscribe};

/// The SUBACK return code for a refused subscription.
const SUBACK_FAILURE: u8 = 0x80;

pub(super) fn decode_subscribe(
    r: &mut Reader,
    _version: ProtocolVersion,
) -> Result<Subscribe, DecodeError> {
    let packet_id = r.packet_id()?;
    if r.is_empty() {
        return Err(DecodeError::EmptySubscribe);
    }
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.topic_filter()?;
        let options = r.u8()?;
        // The upper six bits are reserved in 3.1.1; MQTT 5 gives them meaning.
        let qos = match options & 0b1111_1100 {
            0 => QoS::from_u8(options),
            _ => None,
        }
        .ok_or(DecodeError::SubscribeReservedQoSBits(options))?;
        filters.push((filter, qos));
    }
    Ok(Subscribe { packet_id, filters })
}

pub(super) fn subscribe_len(subscribe: &Subscribe) -> usize {
    2 + subscribe
        .filters
        .iter()
        .map(|(filter, _)| prefixed_len(filter.len()) + 1)
        .sum::<usize>()
}

pub(super) fn write_subscribe(
    subscribe: &Subscribe,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    put_packet_id(buf, "SUBSCRIBE", subscribe.packet_id)?;
    for (filter, qos) in &subscribe.filters {
        put_prefixed(buf, "topic filter", filter.as_bytes())?;
        buf.put_u8(*qos as u8);
    }
    Ok(())
}

pub(super) fn decode_suback(
    r: &mut Reader,
    _version: ProtocolVersion,
) -> Result<SubAck, DecodeError> {
    let packet_id = r.packet_id()?;
    let mut codes = Vec::new();
    while !r.is_empty() {
        let code = match r.u8()? {
            SUBACK_FAILURE => SubAckCode::Failure,
            other => SubAckCode::Granted(
                QoS::from_u8(other).ok_or(DecodeError::InvalidSubAckCode(other))?,
            ),
        };
        codes.push(code);
    }
    Ok(SubAck { packet_id, codes })
}

pub(super) fn suback_len(suback: &SubAck) -> usize {
    2 + suback.codes.len()
}

/// Writes SUBACK. MQTT 3.1 had no failure code; 0x80 is written for it all the same,
/// as there is nothing else that could say so.
pub(super) fn write_suback(suback: &SubAck, buf: &mut BytesMut) -> Result<(), EncodeError> {
    put_packet_id(buf, "SUBACK", suback.packet_id)?;
    for code in &suback.codes {
        buf.put_u8(match code {
            SubAckCode::Granted(qos) => *qos as u8,
            SubAckCode::Failure => SUBACK_FAILURE,
        });
    }
    Ok(())
}

pub(super) fn decode_unsubscribe(
    r: &mut Reader,
    _version: ProtocolVersion,
) -> Result<Unsubscribe, DecodeError> {
    let packet_id = r.packet_id()?;
    if r.is_empty() {
        return Err(DecodeError::EmptyUnsubscribe);
    }
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(r.topic_filter()?);
    }
    Ok(Unsubscribe { packet_id, filters })
}

pub(super) fn unsubscribe_len(unsubscribe: &Unsubscribe) -> usize {
    2 + unsubscribe
        .filters
        .iter()
        .map(|filter| prefixed_len(filter.len()))
        .sum::<usize>()
}

pub(super) fn write_unsubscribe(
    unsubscribe: &Unsubscribe,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    put_packet_id(buf, "UNSUBSCRIBE", unsubscribe.packet_id)?;
    for filter in &unsubscribe.filters {
        put_prefixed(buf, "topic filter", filter.as_bytes())?;
    }
    Ok(())
}

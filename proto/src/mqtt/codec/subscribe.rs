//! SUBSCRIBE, SUBACK, UNSUBSCRIBE and UNSUBACK (MQTT 3.1.1 sections 3.8 to 3.11;
//! MQTT 5.0 adds properties to all four, subscription options, and a reason
//! code per filter to UNSUBACK).
//!
//! In MQTT 5 a topic filter is only checked to be a string here: a filter that
//! is not valid is answered with reason code 0x8F in SUBACK or UNSUBACK, not
//! by closing the connection, so the session judges it.

use bytes::{BufMut, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::read::Reader;
use super::write::{prefixed_len, put_packet_id, put_prefixed};
use crate::mqtt::packet::{
    ProtocolVersion, QoS, ReasonCode, RetainHandling, SubAck, SubOptions, Subscribe, UnsubAck,
    Unsubscribe,
};
use crate::mqtt::v5::{Properties, PropertyContext};

/// The SUBACK return code for a refused subscription before MQTT 5.
const SUBACK_FAILURE: u8 = 0x80;

// Subscription options (MQTT 5.0 section 3.8.3.1).
const NO_LOCAL: u8 = 0x04;
const RETAIN_AS_PUBLISHED: u8 = 0x08;
const RETAIN_HANDLING_SHIFT: u8 = 4;
const OPTIONS_RESERVED: u8 = 0xC0;

fn properties_if_v5(
    r: &mut Reader,
    version: ProtocolVersion,
    context: PropertyContext,
) -> Result<Properties, DecodeError> {
    if version.is_v5() {
        r.properties(context)
    } else {
        Ok(Properties::default())
    }
}

fn properties_len(properties: &Properties, version: ProtocolVersion) -> Result<usize, EncodeError> {
    if version.is_v5() {
        properties.encoded_len()
    } else {
        Ok(0)
    }
}

fn decode_options(byte: u8, version: ProtocolVersion) -> Result<SubOptions, DecodeError> {
    if !version.is_v5() {
        // The upper six bits are reserved in 3.1.1.
        return match byte & 0b1111_1100 {
            0 => QoS::from_u8(byte).map(SubOptions::from),
            _ => None,
        }
        .ok_or(DecodeError::SubscribeReservedQoSBits(byte));
    }
    if byte & OPTIONS_RESERVED != 0 {
        return Err(DecodeError::SubscribeReservedQoSBits(byte));
    }
    let qos = QoS::from_u8(byte & 0b11).ok_or(DecodeError::SubscribeReservedQoSBits(byte))?;
    let retain_handling = match (byte >> RETAIN_HANDLING_SHIFT) & 0b11 {
        0 => RetainHandling::Always,
        1 => RetainHandling::IfNew,
        2 => RetainHandling::Never,
        _ => return Err(DecodeError::RetainHandling),
    };
    Ok(SubOptions {
        qos,
        no_local: byte & NO_LOCAL != 0,
        retain_as_published: byte & RETAIN_AS_PUBLISHED != 0,
        retain_handling,
    })
}

fn options_byte(options: &SubOptions, version: ProtocolVersion) -> u8 {
    let mut byte = options.qos as u8;
    if version.is_v5() {
        if options.no_local {
            byte |= NO_LOCAL;
        }
        if options.retain_as_published {
            byte |= RETAIN_AS_PUBLISHED;
        }
        byte |= (options.retain_handling as u8) << RETAIN_HANDLING_SHIFT;
    }
    byte
}

pub(super) fn decode_subscribe(
    r: &mut Reader,
    version: ProtocolVersion,
) -> Result<Subscribe, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties = properties_if_v5(r, version, PropertyContext::Subscribe)?;
    if r.is_empty() {
        return Err(DecodeError::EmptySubscribe);
    }
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = if version.is_v5() {
            r.string()?
        } else {
            r.topic_filter()?
        };
        let options = decode_options(r.u8()?, version)?;
        filters.push((filter, options));
    }
    Ok(Subscribe {
        packet_id,
        filters,
        properties: properties.into(),
    })
}

pub(super) fn subscribe_len(
    subscribe: &Subscribe,
    version: ProtocolVersion,
) -> Result<usize, EncodeError> {
    Ok(2 + properties_len(&subscribe.properties, version)?
        + subscribe
            .filters
            .iter()
            .map(|(filter, _)| prefixed_len(filter.len()) + 1)
            .sum::<usize>())
}

pub(super) fn write_subscribe(
    subscribe: &Subscribe,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    put_packet_id(buf, "SUBSCRIBE", subscribe.packet_id)?;
    if version.is_v5() {
        subscribe.properties.encode(buf)?;
    }
    for (filter, options) in &subscribe.filters {
        put_prefixed(buf, "topic filter", filter.as_bytes())?;
        buf.put_u8(options_byte(options, version));
    }
    Ok(())
}

/// The reason codes of SUBACK or UNSUBACK, to the end of the packet.
fn decode_codes(r: &mut Reader) -> Result<Vec<ReasonCode>, DecodeError> {
    let mut codes = Vec::new();
    while !r.is_empty() {
        codes.push(r.reason_code()?);
    }
    Ok(codes)
}

pub(super) fn decode_suback(
    r: &mut Reader,
    version: ProtocolVersion,
) -> Result<SubAck, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties = properties_if_v5(r, version, PropertyContext::SubAck)?;
    let codes = if version.is_v5() {
        decode_codes(r)?
    } else {
        let mut codes = Vec::new();
        while !r.is_empty() {
            codes.push(match r.u8()? {
                SUBACK_FAILURE => ReasonCode::UnspecifiedError,
                other => ReasonCode::granted(
                    QoS::from_u8(other).ok_or(DecodeError::InvalidSubAckCode(other))?,
                ),
            });
        }
        codes
    };
    Ok(SubAck {
        packet_id,
        codes,
        properties: properties.into(),
    })
}

pub(super) fn suback_len(suback: &SubAck, version: ProtocolVersion) -> Result<usize, EncodeError> {
    Ok(2 + properties_len(&suback.properties, version)? + suback.codes.len())
}

/// Writes SUBACK. Before MQTT 5 every failure is 0x80 (MQTT 3.1 had no failure
/// code; 0x80 is written for it all the same, as nothing else could say so).
pub(super) fn write_suback(
    suback: &SubAck,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    put_packet_id(buf, "SUBACK", suback.packet_id)?;
    if version.is_v5() {
        suback.properties.encode(buf)?;
    }
    for code in &suback.codes {
        buf.put_u8(match (version.is_v5(), *code as u8) {
            (true, byte) | (false, byte @ 0..=2) => byte,
            (false, _) => SUBACK_FAILURE,
        });
    }
    Ok(())
}

pub(super) fn decode_unsubscribe(
    r: &mut Reader,
    version: ProtocolVersion,
) -> Result<Unsubscribe, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties = properties_if_v5(r, version, PropertyContext::Unsubscribe)?;
    if r.is_empty() {
        return Err(DecodeError::EmptyUnsubscribe);
    }
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(if version.is_v5() {
            r.string()?
        } else {
            r.topic_filter()?
        });
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        properties: properties.into(),
    })
}

pub(super) fn unsubscribe_len(
    unsubscribe: &Unsubscribe,
    version: ProtocolVersion,
) -> Result<usize, EncodeError> {
    Ok(2 + properties_len(&unsubscribe.properties, version)?
        + unsubscribe
            .filters
            .iter()
            .map(|filter| prefixed_len(filter.len()))
            .sum::<usize>())
}

pub(super) fn write_unsubscribe(
    unsubscribe: &Unsubscribe,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    put_packet_id(buf, "UNSUBSCRIBE", unsubscribe.packet_id)?;
    if version.is_v5() {
        unsubscribe.properties.encode(buf)?;
    }
    for filter in &unsubscribe.filters {
        put_prefixed(buf, "topic filter", filter.as_bytes())?;
    }
    Ok(())
}

pub(super) fn decode_unsuback(
    r: &mut Reader,
    version: ProtocolVersion,
) -> Result<UnsubAck, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties = properties_if_v5(r, version, PropertyContext::UnsubAck)?;
    let codes = if version.is_v5() {
        decode_codes(r)?
    } else {
        Vec::new()
    };
    Ok(UnsubAck {
        packet_id,
        codes,
        properties: properties.into(),
    })
}

pub(super) fn unsuback_len(
    unsuback: &UnsubAck,
    version: ProtocolVersion,
) -> Result<usize, EncodeError> {
    Ok(if version.is_v5() {
        2 + unsuback.properties.encoded_len()? + unsuback.codes.len()
    } else {
        2
    })
}

/// Writes UNSUBACK; before MQTT 5 it is the packet identifier alone.
pub(super) fn write_unsuback(
    unsuback: &UnsubAck,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    put_packet_id(buf, "UNSUBACK", unsuback.packet_id)?;
    if version.is_v5() {
        unsuback.properties.encode(buf)?;
        for code in &unsuback.codes {
            buf.put_u8(*code as u8);
        }
    }
    Ok(())
}

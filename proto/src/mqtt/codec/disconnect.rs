//! DISCONNECT and AUTH (MQTT 5.0 sections 3.14 and 3.15): a reason code and
//! properties, both of which may be left out (no byte at all means Success).
//! Before MQTT 5, DISCONNECT has no body and AUTH does not exist.

use bytes::{BufMut, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::read::Reader;
use crate::mqtt::packet::{Auth, Disconnect, ProtocolVersion, ReasonCode};
use crate::mqtt::v5::{Properties, PropertyContext};

/// A reason code and properties, each optional on the wire.
fn decode_reason_and_properties(
    r: &mut Reader,
    context: PropertyContext,
) -> Result<(ReasonCode, Properties), DecodeError> {
    if r.is_empty() {
        return Ok((ReasonCode::Success, Properties::default()));
    }
    let reason = r.reason_code()?;
    let properties = if r.is_empty() {
        Properties::default()
    } else {
        r.properties(context)?
    };
    Ok((reason, properties))
}

fn reason_and_properties_len(
    reason: ReasonCode,
    properties: &Properties,
) -> Result<usize, EncodeError> {
    Ok(match (reason, properties.is_empty()) {
        (ReasonCode::Success, true) => 0,
        (_, true) => 1,
        (_, false) => 1 + properties.encoded_len()?,
    })
}

fn write_reason_and_properties(
    reason: ReasonCode,
    properties: &Properties,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    if reason == ReasonCode::Success && properties.is_empty() {
        return Ok(());
    }
    buf.put_u8(reason as u8);
    if properties.is_empty() {
        Ok(())
    } else {
        properties.encode(buf)
    }
}

pub(super) fn decode_disconnect(
    r: &mut Reader,
    version: ProtocolVersion,
) -> Result<Disconnect, DecodeError> {
    if !version.is_v5() {
        return Ok(Disconnect::default());
    }
    let (reason, properties) = decode_reason_and_properties(r, PropertyContext::Disconnect)?;
    Ok(Disconnect {
        reason,
        properties: properties.into(),
    })
}

pub(super) fn disconnect_len(
    disconnect: &Disconnect,
    version: ProtocolVersion,
) -> Result<usize, EncodeError> {
    if !version.is_v5() {
        return Ok(0);
    }
    reason_and_properties_len(disconnect.reason, &disconnect.properties)
}

pub(super) fn write_disconnect(
    disconnect: &Disconnect,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    if !version.is_v5() {
        return Ok(());
    }
    write_reason_and_properties(disconnect.reason, &disconnect.properties, buf)
}

pub(super) fn decode_auth(r: &mut Reader) -> Result<Auth, DecodeError> {
    let (reason, properties) = decode_reason_and_properties(r, PropertyContext::Auth)?;
    Ok(Auth {
        reason,
        properties: properties.into(),
    })
}

pub(super) fn auth_len(auth: &Auth, version: ProtocolVersion) -> Result<usize, EncodeError> {
    if !version.is_v5() {
        return Err(EncodeError::NotInVersion {
            packet_type: "AUTH",
        });
    }
    reason_and_properties_len(auth.reason, &auth.properties)
}

pub(super) fn write_auth(auth: &Auth, buf: &mut BytesMut) -> Result<(), EncodeError> {
    write_reason_and_properties(auth.reason, &auth.properties, buf)
}

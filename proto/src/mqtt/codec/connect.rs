//! CONNECT and CONNACK (MQTT 3.1.1 sections 3.1 and 3.2; MQTT 3.1 sections 3.1,
//! 3.2; MQTT 5.0 sections 3.1 and 3.2, which add properties to both, to the
//! will, and a reason code to CONNACK).
//!
//! CONNECT is the one packet that says which protocol version the rest of the
//! connection speaks, so it is decoded without one.

use bytes::{BufMut, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::read::Reader;
use super::write::{prefixed_len, put_prefixed};
use crate::mqtt::packet::{ConnAck, Connect, LastWill, ProtocolVersion, QoS, ReasonCode};
use crate::mqtt::v5::{Properties, PropertyContext};

// CONNECT flag bits (section 3.1.2.3).
const RESERVED: u8 = 0x01;
const CLEAN_SESSION: u8 = 0x02;
const WILL: u8 = 0x04;
const WILL_QOS_SHIFT: u8 = 3;
const WILL_RETAIN: u8 = 0x20;
const PASSWORD: u8 = 0x40;
const USERNAME: u8 = 0x80;

/// CONNACK acknowledge flag (section 3.2.2.1).
const SESSION_PRESENT: u8 = 0x01;

pub(super) fn decode_connect(r: &mut Reader) -> Result<Connect, DecodeError> {
    let protocol = decode_protocol(r)?;
    let flags = r.u8()?;
    check_connect_flags(protocol, flags)?;
    let keep_alive = r.u16()?;
    let properties = if protocol.is_v5() {
        r.properties(PropertyContext::Connect)?
    } else {
        Properties::default()
    };
    let client_id = r.string()?;
    let will = if flags & WILL != 0 {
        let properties = if protocol.is_v5() {
            r.properties(PropertyContext::Will)?
        } else {
            Properties::default()
        };
        let topic = r.topic_name()?;
        let payload = r.binary()?;
        let qos = QoS::from_u8((flags >> WILL_QOS_SHIFT) & 0b11)
            .ok_or(DecodeError::WillFlagsInconsistent)?;
        Some(LastWill {
            topic,
            payload,
            qos,
            retain: flags & WILL_RETAIN != 0,
            properties: properties.into(),
        })
    } else {
        None
    };
    let username = if flags & USERNAME != 0 {
        Some(r.string()?)
    } else {
        None
    };
    let password = if flags & PASSWORD != 0 {
        Some(r.binary()?)
    } else {
        None
    };
    Ok(Connect {
        protocol,
        clean_session: flags & CLEAN_SESSION != 0,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties: properties.into(),
    })
}

/// The protocol name and level. An unknown name means "not MQTT at all" and gets no
/// CONNACK; a known name at a level we do not speak gets CONNACK 0x01 (0x84).
fn decode_protocol(r: &mut Reader) -> Result<ProtocolVersion, DecodeError> {
    let name = r.binary()?;
    let level = r.u8()?;
    match (&name[..], level) {
        (b"MQTT", 4) => Ok(ProtocolVersion::V3_1_1),
        (b"MQTT", 5) => Ok(ProtocolVersion::V5),
        (b"MQIsdp", 3) => Ok(ProtocolVersion::V3_1),
        (b"MQTT" | b"MQIsdp", _) => Err(DecodeError::UnsupportedProtocolLevel(level)),
        _ => Err(DecodeError::UnknownProtocolName),
    }
}

fn check_connect_flags(protocol: ProtocolVersion, flags: u8) -> Result<(), DecodeError> {
    // MQTT 3.1 left the bit unused rather than reserved.
    if protocol != ProtocolVersion::V3_1 && flags & RESERVED != 0 {
        return Err(DecodeError::ConnectReservedFlag);
    }
    let will_qos = (flags >> WILL_QOS_SHIFT) & 0b11;
    let will_inconsistent = if flags & WILL == 0 {
        will_qos != 0 || flags & WILL_RETAIN != 0
    } else {
        QoS::from_u8(will_qos).is_none()
    };
    if will_inconsistent {
        return Err(DecodeError::WillFlagsInconsistent);
    }
    if protocol == ProtocolVersion::V3_1_1 && flags & PASSWORD != 0 && flags & USERNAME == 0 {
        return Err(DecodeError::PasswordWithoutUsername);
    }
    Ok(())
}

pub(super) fn connect_len(connect: &Connect) -> Result<usize, EncodeError> {
    let v5 = connect.protocol.is_v5();
    let mut len = prefixed_len(connect.protocol.name().len()) + 1 + 1 + 2;
    if v5 {
        len += connect.properties.encoded_len()?;
    }
    len += prefixed_len(connect.client_id.len());
    if let Some(will) = &connect.will {
        len += prefixed_len(will.topic.len()) + prefixed_len(will.payload.len());
        if v5 {
            len += will.properties.encoded_len()?;
        }
    }
    if let Some(username) = &connect.username {
        len += prefixed_len(username.len());
    }
    if let Some(password) = &connect.password {
        len += prefixed_len(password.len());
    }
    Ok(len)
}

/// Writes the body of CONNECT in the version `connect.protocol` names.
pub(super) fn write_connect(connect: &Connect, buf: &mut BytesMut) -> Result<(), EncodeError> {
    let mut flags = 0;
    if connect.clean_session {
        flags |= CLEAN_SESSION;
    }
    if let Some(will) = &connect.will {
        flags |= WILL | ((will.qos as u8) << WILL_QOS_SHIFT);
        if will.retain {
            flags |= WILL_RETAIN;
        }
    }
    if connect.username.is_some() {
        flags |= USERNAME;
    }
    if connect.password.is_some() {
        flags |= PASSWORD;
    }
    put_prefixed(buf, "protocol name", connect.protocol.name().as_bytes())?;
    buf.put_u8(connect.protocol.level());
    buf.put_u8(flags);
    buf.put_u16(connect.keep_alive);
    let v5 = connect.protocol.is_v5();
    if v5 {
        connect.properties.encode(buf)?;
    }
    put_prefixed(buf, "client identifier", connect.client_id.as_bytes())?;
    if let Some(will) = &connect.will {
        if v5 {
            will.properties.encode(buf)?;
        }
        put_prefixed(buf, "will topic", will.topic.as_bytes())?;
        put_prefixed(buf, "will payload", &will.payload)?;
    }
    if let Some(username) = &connect.username {
        put_prefixed(buf, "user name", username.as_bytes())?;
    }
    if let Some(password) = &connect.password {
        put_prefixed(buf, "password", password)?;
    }
    Ok(())
}

pub(super) fn decode_connack(
    r: &mut Reader,
    version: ProtocolVersion,
) -> Result<ConnAck, DecodeError> {
    let ack_flags = r.u8()?;
    if ack_flags & !SESSION_PRESENT != 0 {
        return Err(DecodeError::ConnAckReservedFlags);
    }
    let session_present = ack_flags & SESSION_PRESENT != 0;
    if version.is_v5() {
        let code = r.reason_code()?;
        let properties = r.properties(PropertyContext::ConnAck)?;
        return Ok(ConnAck {
            session_present,
            code,
            properties: properties.into(),
        });
    }
    let byte = r.u8()?;
    let code =
        ReasonCode::from_connack_v3(byte).ok_or(DecodeError::InvalidConnectReturnCode(byte))?;
    Ok(ConnAck::new(session_present, code))
}

pub(super) fn connack_len(
    connack: &ConnAck,
    version: ProtocolVersion,
) -> Result<usize, EncodeError> {
    Ok(if version.is_v5() {
        2 + connack.properties.encoded_len()?
    } else {
        2
    })
}

/// Writes the body of CONNACK. MQTT 3.1 has no session-present flag; its first
/// byte is unused and written as 0. Before MQTT 5 the reason code is written as
/// the return code that means the same.
pub(super) fn write_connack(
    connack: &ConnAck,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let session_present = connack.session_present && version != ProtocolVersion::V3_1;
    buf.put_u8(if session_present { SESSION_PRESENT } else { 0 });
    if version.is_v5() {
        buf.put_u8(connack.code as u8);
        connack.properties.encode(buf)
    } else {
        buf.put_u8(connack.code.connack_v3());
        Ok(())
    }
}

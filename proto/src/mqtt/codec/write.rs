//! Field writers for the encoder: length-prefixed strings and binary data, packet
//! identifiers.
//!
//! Encoding runs in two passes: the caller first sums the body's length (to write the
//! fixed header before the body), then writes the fields with these helpers, which
//! refuse what the wire cannot carry.

use bytes::{BufMut, BytesMut};

use super::error::EncodeError;

/// The bytes a length-prefixed field of `len` bytes takes.
pub(super) fn prefixed_len(len: usize) -> usize {
    2 + len
}

/// Writes a 2-byte length, then `data`; `field` names it in the error.
pub(super) fn put_prefixed(
    buf: &mut BytesMut,
    field: &'static str,
    data: &[u8],
) -> Result<(), EncodeError> {
    let len = u16::try_from(data.len()).map_err(|_| EncodeError::FieldTooLong {
        field,
        len: data.len(),
    })?;
    buf.put_u16(len);
    buf.put_slice(data);
    Ok(())
}

/// Writes a packet identifier, which is never 0 [MQTT-2.3.1-1].
pub(super) fn put_packet_id(
    buf: &mut BytesMut,
    packet_type: &'static str,
    id: u16,
) -> Result<(), EncodeError> {
    if id == 0 {
        return Err(EncodeError::ZeroPacketId { packet_type });
    }
    buf.put_u16(id);
    Ok(())
}

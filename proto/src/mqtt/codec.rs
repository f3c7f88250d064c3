//! Placeholder: the decoder and encoder are being written.
use bytes::BytesMut;
use super::packet::{Packet, ProtocolVersion};

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {}
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {}

pub fn decode(_buf: &mut BytesMut, _max_packet_size: usize, _version: Option<ProtocolVersion>) -> Result<Option<Packet>, DecodeError> { Ok(None) }
pub fn encode(_packet: &Packet, _version: ProtocolVersion, _buf: &mut BytesMut) -> Result<(), EncodeError> { Ok(()) }

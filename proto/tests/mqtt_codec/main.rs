//! Tests of the MQTT codec through its public API: golden byte vectors written out
//! from the specification, malformed packets, incremental decoding and properties,
//! and MQTT 5 (`v5`).

mod golden;
mod incremental;
mod malformed;
mod props;
mod v5;

use bytes::BytesMut;
use starling_proto::mqtt::{decode, encode, DecodeError, Packet, ProtocolVersion};

/// A limit no test packet reaches unless it means to.
pub const NO_LIMIT: usize = usize::MAX;

/// Decodes `bytes`, which must hold exactly one packet (or fail to).
pub fn decode_one(bytes: &[u8], version: Option<ProtocolVersion>) -> Result<Packet, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let packet = decode(&mut buf, NO_LIMIT, version)?.expect("a whole packet was given");
    assert!(buf.is_empty(), "{} bytes left after {packet:?}", buf.len());
    Ok(packet)
}

/// Decodes `bytes` expecting an error, whether or not the whole packet has arrived.
pub fn decode_err(bytes: &[u8], version: Option<ProtocolVersion>) -> DecodeError {
    let mut buf = BytesMut::from(bytes);
    match decode(&mut buf, NO_LIMIT, version) {
        Err(e) => e,
        Ok(result) => panic!("expected an error for {bytes:02x?}, got {result:?}"),
    }
}

pub fn encode_vec(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode(packet, version, &mut buf).expect("encodable packet");
    buf.to_vec()
}

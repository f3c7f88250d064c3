//! The MQTT codec: typed packets ([`packet`]), topic validation ([`topic`]) and the
//! incremental decoder / encoder ([`codec`]).

pub mod codec;
pub mod packet;
pub mod topic;
pub mod v5;

pub use codec::{decode, encode, encoded_len, DecodeError, EncodeError};
pub use packet::*;

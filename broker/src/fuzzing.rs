//! Entry points for the fuzz targets in `fuzz/`: the decoders of what a peer
//! node sends (forwarded frames, commands in the Raft log, the MQTT state in a
//! snapshot), which are private to their modules. Not an API. Each decodes,
//! and what decodes must encode and decode again.

use crate::forward::Frame;
use crate::state::Command;

/// A forward frame, as [`crate::forward::Inbound`] reads it.
pub fn forward_frame(bytes: &[u8]) -> Result<(), postcard::Error> {
    let frame: Frame = postcard::from_bytes(bytes)?;
    let again = postcard::to_allocvec(&frame).expect("a decoded frame encodes");
    postcard::from_bytes::<Frame>(&again).expect("an encoded frame decodes");
    Ok(())
}

/// A command of the Raft log, as the state machine's apply reads it.
pub fn command(bytes: &[u8]) -> Result<(), postcard::Error> {
    let command: Command = postcard::from_bytes(bytes)?;
    let again = postcard::to_allocvec(&command).expect("a decoded command encodes");
    postcard::from_bytes::<Command>(&again).expect("an encoded command decodes");
    Ok(())
}

/// The MQTT state of a snapshot, as a restore reads it.
pub fn snapshot(bytes: &[u8]) -> Result<(), String> {
    let again = crate::state::snapshot_round_trip(bytes)?;
    crate::state::snapshot_round_trip(&again).expect("an encoded snapshot decodes");
    Ok(())
}

/// The bytes of a snapshot of an empty state, a seed for the snapshot decoder.
pub fn empty_snapshot() -> Vec<u8> {
    crate::state::empty_snapshot()
}

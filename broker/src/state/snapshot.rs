//! The bytes of the MQTT state in a Raft snapshot.
//!
//! ```text
//! [b"STSM"][u16 BE format][postcard State]
//! ```
//!
//! The format number changes whenever the layout of [`State`] does; a node
//! refuses a snapshot of any other format with an error that names both,
//! rather than reading it as something it is not. Snapshots written before
//! the header existed start with no magic and are refused the same way.

use super::State;

const MAGIC: &[u8; 4] = b"STSM";
/// 1: sessions carry their queue limit. 2: and their queue's bytes and byte limit.
pub(super) const FORMAT: u16 = 2;

pub(super) fn encode(state: &State) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_be_bytes());
    postcard::to_extend(state, out).map_err(|e| format!("cannot encode the MQTT state: {e}"))
}

pub(super) fn decode(bytes: &[u8]) -> Result<State, String> {
    let Some(rest) = bytes.strip_prefix(MAGIC.as_slice()) else {
        return Err(format!(
            "the MQTT state in this snapshot has no format header: it was written by \
             an older version of starling; this version reads format {FORMAT} only"
        ));
    };
    let (format, body) = match rest {
        [a, b, body @ ..] => (u16::from_be_bytes([*a, *b]), body),
        _ => return Err("the MQTT state in this snapshot is truncated".to_owned()),
    };
    if format != FORMAT {
        return Err(format!(
            "the MQTT state in this snapshot is format {format}; this version of \
             starling reads format {FORMAT} only"
        ));
    }
    postcard::from_bytes(body).map_err(|e| format!("unreadable MQTT state (format {FORMAT}): {e}"))
}

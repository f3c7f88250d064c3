//! The bytes of the MQTT state in a Raft snapshot.
//!
//! ```text
//! [b"STSM"][u16 BE format][u64 BE table length][postcard Vec<Message>][postcard State]
//! ```
//!
//! A message queued for many persistent sessions is one `Arc` in memory; the
//! snapshot keeps it that way: the table holds each queued message once, and
//! every queue entry names its message by its place in the table.
//!
//! The format number changes whenever the layout does; a node refuses a
//! snapshot of any other format with an error that names both, rather than
//! reading it as something it is not. Snapshots written before the header
//! existed start with no magic and are refused the same way.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use super::{Message, State};

const MAGIC: &[u8; 4] = b"STSM";
/// 1: sessions carry their queue limit. 2: and their queue's bytes and byte
/// limit. 3: queued messages are stored once, in a table. 4: MQTT 5 state
/// (expiry, wills with delay, subscription options). 5: sessions keep their
/// connection's details for the admin API. 6: and whether a drain ended it.
pub(super) const FORMAT: u16 = 6;

/// Queued messages met while writing one snapshot, each once.
#[derive(Default)]
struct Table {
    ids: HashMap<*const Message, u32>,
    messages: Vec<Arc<Message>>,
}

thread_local! {
    /// Set while this thread writes a snapshot ([`encode`]).
    static WRITING: RefCell<Option<Table>> = const { RefCell::new(None) };
    /// Set while this thread reads one ([`decode`]).
    static READING: RefCell<Option<Vec<Arc<Message>>>> = const { RefCell::new(None) };
}

/// Clears the thread's table when encoding or decoding ends, also by error.
struct Reset;

impl Drop for Reset {
    fn drop(&mut self) {
        WRITING.with(|w| w.borrow_mut().take());
        READING.with(|r| r.borrow_mut().take());
    }
}

/// Serde for `Queued::message`: its place in the snapshot's table.
pub(super) mod shared_message {
    use std::sync::Arc;

    use serde::de::Error as _;
    use serde::ser::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    use super::{Message, READING, WRITING};

    pub(in crate::state) fn serialize<S: Serializer>(
        message: &Arc<Message>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let id = WRITING.with(|w| {
            let mut writing = w.borrow_mut();
            let table = writing.as_mut()?;
            let next = u32::try_from(table.messages.len()).ok()?;
            let id = *table.ids.entry(Arc::as_ptr(message)).or_insert(next);
            if id == next {
                table.messages.push(message.clone());
            }
            Some(id)
        });
        match id {
            Some(id) => serializer.serialize_u32(id),
            None => Err(S::Error::custom(
                "a queued message is written only inside a snapshot, at most 2^32 of them",
            )),
        }
    }

    pub(in crate::state) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Arc<Message>, D::Error> {
        let id = u32::deserialize(deserializer)?;
        READING.with(|r| {
            r.borrow()
                .as_ref()
                .and_then(|table| table.get(usize::try_from(id).ok()?).cloned())
                .ok_or_else(|| D::Error::custom(format!("queued message {id} is not in the table")))
        })
    }
}

pub(super) fn encode(state: &State) -> Result<Vec<u8>, String> {
    let _reset = Reset;
    WRITING.with(|w| *w.borrow_mut() = Some(Table::default()));
    let body =
        postcard::to_allocvec(state).map_err(|e| format!("cannot encode the MQTT state: {e}"))?;
    let table = WRITING.with(|w| w.borrow_mut().take()).unwrap_or_default();
    let messages: Vec<&Message> = table.messages.iter().map(|m| &**m).collect();
    let table = postcard::to_allocvec(&messages)
        .map_err(|e| format!("cannot encode the queued messages: {e}"))?;
    let mut out = Vec::with_capacity(14 + table.len() + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_be_bytes());
    out.extend_from_slice(&(table.len() as u64).to_be_bytes());
    out.extend_from_slice(&table);
    out.extend_from_slice(&body);
    Ok(out)
}

pub(super) fn decode(bytes: &[u8]) -> Result<State, String> {
    let Some(rest) = bytes.strip_prefix(MAGIC.as_slice()) else {
        return Err(format!(
            "the MQTT state in this snapshot has no format header: it was written by \
             an older version of starling; this version reads format {FORMAT} only"
        ));
    };
    let truncated = || "the MQTT state in this snapshot is truncated".to_owned();
    let (format, rest) = match rest {
        [a, b, rest @ ..] => (u16::from_be_bytes([*a, *b]), rest),
        _ => return Err(truncated()),
    };
    if format != FORMAT {
        return Err(format!(
            "the MQTT state in this snapshot is format {format}; this version of \
             starling reads format {FORMAT} only"
        ));
    }
    let (len, rest) = rest.split_first_chunk::<8>().ok_or_else(truncated)?;
    let len = usize::try_from(u64::from_be_bytes(*len)).map_err(|_| truncated())?;
    if rest.len() < len {
        return Err(truncated());
    }
    let (table, body) = rest.split_at(len);
    let messages: Vec<Message> = postcard::from_bytes(table)
        .map_err(|e| format!("unreadable queued messages (format {FORMAT}): {e}"))?;
    let _reset = Reset;
    READING.with(|r| *r.borrow_mut() = Some(messages.into_iter().map(Arc::new).collect()));
    let mut state: State = postcard::from_bytes(body)
        .map_err(|e| format!("unreadable MQTT state (format {FORMAT}): {e}"))?;
    state.retained_bytes = state
        .retained
        .values()
        .map(super::apply::retained_bytes)
        .sum();
    Ok(state)
}

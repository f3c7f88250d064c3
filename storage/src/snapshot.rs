//! Snapshot bytes and their persistence.
//!
//! A snapshot's bytes (what is sent to a lagging follower) are a small header with
//! this layer's own metadata (the per-origin deduplication marks), followed by the
//! application's snapshot verbatim:
//!
//! ```text
//! [u32 BE header length][postcard Header][application snapshot bytes]
//! ```
//!
//! The header starts with its format number; format 1 had no replies of last
//! batches and is still read.
//!
//! The last snapshot is kept in the `snapshot` tree: its metadata and bytes in one
//! atomic batch, flushed before the snapshot is reported built or installed.

use serde::{Deserialize, Serialize};

use crate::state_machine::{LastBatch, Mark};
use crate::store::{decode, encode, get, Shared, StoreError};
use crate::types::{NodeId, SnapshotMeta};

const KEY_META: &[u8] = b"meta";
const KEY_DATA: &[u8] = b"data";

/// Bumped when the header changes incompatibly.
const FORMAT: u32 = 2;
/// The format before the replies of last batches were kept.
const FORMAT_NO_REPLIES: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Header {
    format: u32,
    marks: Vec<(NodeId, Mark)>,
    last_batches: Vec<(NodeId, LastBatch)>,
}

#[derive(Deserialize)]
struct HeaderNoReplies {
    format: u32,
    marks: Vec<(NodeId, Mark)>,
}

/// The decoded parts of a snapshot's bytes.
pub(crate) struct Body<'a> {
    pub(crate) marks: Vec<(NodeId, Mark)>,
    pub(crate) last_batches: Vec<(NodeId, LastBatch)>,
    pub(crate) app: &'a [u8],
}

impl<'a> Body<'a> {
    pub(crate) fn encode(
        marks: Vec<(NodeId, Mark)>,
        last_batches: Vec<(NodeId, LastBatch)>,
        app: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        let header = encode(
            "snapshot header",
            &Header {
                format: FORMAT,
                marks,
                last_batches,
            },
        )?;
        let len = u32::try_from(header.len())
            .map_err(|_| StoreError::corrupt("snapshot header", "longer than 4 GiB"))?;
        let mut out = Vec::with_capacity(4 + header.len() + app.len());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(app);
        Ok(out)
    }

    pub(crate) fn decode(bytes: &'a [u8]) -> Result<Body<'a>, StoreError> {
        let too_short = || StoreError::corrupt("snapshot", "truncated");
        let len_bytes: [u8; 4] = bytes
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(too_short)?;
        let header_end = usize::try_from(u32::from_be_bytes(len_bytes))
            .ok()
            .and_then(|len| len.checked_add(4))
            .ok_or_else(too_short)?;
        let header_bytes = bytes.get(4..header_end).ok_or_else(too_short)?;
        // Every format starts with its number.
        let (format, _) = postcard::take_from_bytes::<u32>(header_bytes)
            .map_err(|e| StoreError::corrupt("snapshot header", e))?;
        let (marks, last_batches) = match format {
            FORMAT => {
                let header: Header = decode("snapshot header", header_bytes)?;
                (header.marks, header.last_batches)
            }
            FORMAT_NO_REPLIES => {
                let header: HeaderNoReplies = decode("snapshot header", header_bytes)?;
                debug_assert_eq!(header.format, FORMAT_NO_REPLIES);
                (header.marks, Vec::new())
            }
            other => {
                return Err(StoreError::corrupt(
                    "snapshot",
                    format!("format {other} (this build reads {FORMAT_NO_REPLIES} and {FORMAT})"),
                ))
            }
        };
        Ok(Body {
            marks,
            last_batches,
            app: bytes.get(header_end..).ok_or_else(too_short)?,
        })
    }
}

/// The snapshot kept on disk.
pub(crate) struct StoredSnapshot {
    pub(crate) meta: SnapshotMeta,
    pub(crate) body: Vec<u8>,
}

pub(crate) fn load(shared: &Shared) -> Result<Option<StoredSnapshot>, StoreError> {
    let Some(meta) = get::<SnapshotMeta>(&shared.snapshot, KEY_META, "snapshot meta")? else {
        return Ok(None);
    };
    let body = shared
        .snapshot
        .get(KEY_DATA)?
        .ok_or_else(|| StoreError::corrupt("snapshot", "metadata without data"))?;
    Ok(Some(StoredSnapshot {
        meta,
        body: body.to_vec(),
    }))
}

/// Stores `meta` and `body` as the current snapshot and flushes, unless the stored
/// one is already newer. Returns whether it was stored. Blocking.
pub(crate) fn store(shared: &Shared, meta: &SnapshotMeta, body: &[u8]) -> Result<bool, StoreError> {
    {
        let _guard = shared
            .snapshot_write
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let current = get::<SnapshotMeta>(&shared.snapshot, KEY_META, "snapshot meta")?;
        if current.is_some_and(|c| c.last_log_id > meta.last_log_id) {
            return Ok(false);
        }
        let mut batch = sled::Batch::default();
        batch.insert(KEY_META, encode("snapshot meta", meta)?);
        batch.insert(KEY_DATA, body);
        shared.snapshot.apply_batch(batch)?;
    }
    // Logs up to this snapshot may be purged from now on: it must be durable first.
    shared.flush()?;
    Ok(true)
}

//! The deduplication marks: per origin node, the newest command applied and
//! the replies to its last batch. Kept by the state machine host, carried in
//! every snapshot.

use serde::{Deserialize, Serialize};

/// The newest command applied from one origin; anything at or below it is a
/// duplicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct Mark {
    pub(crate) incarnation: u64,
    pub(crate) seq: u64,
}

/// The replies to the last batch applied from one origin. A proposer that retries
/// a batch after a leader change (it cannot know whether the first attempt
/// committed) gets these replies again rather than empty ones; it has only one
/// batch in flight, so the last one is the only one it can retry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LastBatch {
    pub(crate) incarnation: u64,
    pub(crate) first_seq: u64,
    pub(crate) replies: Vec<Vec<u8>>,
}

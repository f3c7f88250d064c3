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
//! The last snapshot is kept in the file `snapshot`: `[8-byte magic][u32 LE meta
//! length][u32 LE crc32 of the rest][postcard SnapshotMeta][snapshot bytes]`,
//! replaced atomically (a temporary file renamed over it) and fsynced before the
//! snapshot is reported built or installed. Not in sled: sled keeps a value this
//! large as a blob file, and did not delete the blob of a replaced snapshot.
//!
//! openraft sees a snapshot as a file positioned at its first byte: this file
//! past its header when sending ([`open_body`]), and an unlinked spool file
//! while receiving ([`spool`]), so neither end holds a transfer in memory.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::error::{decode, encode, sync_dir, StoreError};
use crate::marks::{LastBatch, Mark};
use crate::shared::Shared;
use crate::types::{NodeId, SnapshotMeta};

/// The snapshot file, in the storage directory beside sled's files.
pub(crate) const FILE: &str = "snapshot";
const TMP_FILE: &str = "snapshot.tmp";
/// A snapshot being received; unlinked as soon as it is created.
const SPOOL_FILE: &str = "snapshot.recv";
/// The first bytes of the file; the last one is the format number.
const FILE_MAGIC: &[u8; 8] = b"STRSNAP\x01";
/// Magic, meta length, crc32.
const FILE_HEADER: usize = 16;

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

/// The snapshot file opened and its header read: the file is positioned at
/// the snapshot's first byte.
struct Opened {
    file: File,
    path: PathBuf,
    meta_bytes: Vec<u8>,
    crc: u32,
}

/// A snapshot file that cannot be used. The log before it may be purged, so
/// the node cannot do without it: open fails, naming the file.
fn unusable(path: &Path, why: &str) -> StoreError {
    StoreError::corrupt(
        "snapshot file",
        format!(
            "{}: {why}; the log it covers may be purged, so this node cannot rebuild its \
             state without it (restore the directory, or let this node join again with an \
             empty one)",
            path.display()
        ),
    )
}

impl Opened {
    /// Opens the snapshot file, if there is one, and reads its header. Blocking.
    fn open(dir: &Path) -> Result<Option<Opened>, StoreError> {
        let path = dir.join(FILE);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let file_len = file.metadata()?.len();
        let truncated = || unusable(&path, &format!("truncated ({file_len} bytes)"));
        let mut header = [0u8; FILE_HEADER];
        file.read_exact(&mut header).map_err(|_| truncated())?;
        if header[..7] != FILE_MAGIC[..7] {
            return Err(unusable(&path, "not a snapshot file"));
        }
        if header[7] != FILE_MAGIC[7] {
            return Err(unusable(
                &path,
                &format!(
                    "file format {} (this version reads {})",
                    header[7], FILE_MAGIC[7]
                ),
            ));
        }
        let word = |at: usize| {
            u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
        };
        let (meta_len, crc) = (u64::from(word(8)), word(12));
        if meta_len > file_len.saturating_sub(FILE_HEADER as u64) {
            return Err(truncated());
        }
        let mut meta_bytes = vec![0; meta_len as usize];
        file.read_exact(&mut meta_bytes).map_err(|_| truncated())?;
        Ok(Some(Opened {
            file,
            path,
            meta_bytes,
            crc,
        }))
    }

    /// The metadata, once the snapshot bytes `hasher` saw (after the
    /// metadata) match the file's checksum.
    fn checked_meta(&self, hasher: crc32fast::Hasher) -> Result<SnapshotMeta, StoreError> {
        if hasher.finalize() != self.crc {
            return Err(unusable(&self.path, "does not match its checksum"));
        }
        decode("snapshot meta", &self.meta_bytes)
    }

    fn hasher(&self) -> crc32fast::Hasher {
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&self.meta_bytes);
        hasher
    }
}

/// Deletes what a crash while a snapshot was written left of it: the
/// temporary file is renamed over the snapshot only once it is complete and
/// fsynced, so it is never the snapshot. Blocking.
pub(crate) fn remove_partial(dir: &Path) -> Result<(), StoreError> {
    let tmp = dir.join(TMP_FILE);
    match fs::metadata(&tmp) {
        Ok(meta) => {
            fs::remove_file(&tmp)?;
            sync_dir(dir)?;
            warn!(
                file = %tmp.display(),
                bytes = meta.len(),
                "removed a snapshot that a crash cut short while it was written; the previous \
                 snapshot and the log after it stand"
            );
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Opens the snapshot file, if there is one, checks it against its checksum
/// (reading it once, a buffer at a time) and returns its metadata with the file
/// positioned at the start of the snapshot bytes: what a leader streams to a
/// follower, never held whole in memory. Blocking.
pub(crate) fn open_body(dir: &Path) -> Result<Option<(SnapshotMeta, File)>, StoreError> {
    let Some(mut opened) = Opened::open(dir)? else {
        return Ok(None);
    };
    let body_start = opened.file.stream_position()?;
    let mut hasher = opened.hasher();
    let mut buf = vec![0; 256 << 10];
    loop {
        let n = opened.file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let meta = opened.checked_meta(hasher)?;
    opened.file.seek(SeekFrom::Start(body_start))?;
    Ok(Some((meta, opened.file)))
}

/// A file for a snapshot being received: written as its chunks arrive, read
/// back once to install it. Unlinked at once, so that nothing is left behind
/// whatever becomes of the transfer. Blocking.
pub(crate) fn spool(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(SPOOL_FILE);
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    fs::remove_file(&path)?;
    Ok(file)
}

/// The snapshot kept on disk.
pub(crate) struct StoredSnapshot {
    pub(crate) meta: SnapshotMeta,
    pub(crate) body: Vec<u8>,
}

/// Reads the snapshot file, if there is one. Blocking.
pub(crate) fn load(dir: &Path) -> Result<Option<StoredSnapshot>, StoreError> {
    let Some(mut opened) = Opened::open(dir)? else {
        return Ok(None);
    };
    let mut body = Vec::new();
    opened.file.read_to_end(&mut body)?;
    let mut hasher = opened.hasher();
    hasher.update(&body);
    Ok(Some(StoredSnapshot {
        meta: opened.checked_meta(hasher)?,
        body,
    }))
}

/// Stores `meta` and `body` as the current snapshot, durably, unless the stored
/// one is already newer. Returns the stored file, positioned at the snapshot's
/// first byte, if it was stored. Blocking.
pub(crate) fn store(
    shared: &Shared,
    meta: &SnapshotMeta,
    body: &[u8],
) -> Result<Option<File>, StoreError> {
    // Held across the write, so that two snapshots never share the temporary
    // file and an older one never replaces a newer one installed meanwhile.
    let mut current = shared
        .snapshot_write
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if current
        .as_ref()
        .is_some_and(|c| c.last_log_id > meta.last_log_id)
    {
        return Ok(None);
    }
    // Logs up to this snapshot may be purged from now on: it is durable first.
    let file = write_file(&shared.dir, meta, body)?;
    shared.flushes.fetch_add(1, Ordering::Relaxed);
    shared.snapshots.fetch_add(1, Ordering::Relaxed);
    *current = Some(meta.clone());
    Ok(Some(file))
}

/// Writes the snapshot file atomically: a temporary file, fsynced, renamed over
/// the old one, and the directory fsynced. Returns the file positioned at the
/// snapshot's first byte, to hand out without reading it back. Blocking.
pub(crate) fn write_file(dir: &Path, meta: &SnapshotMeta, body: &[u8]) -> Result<File, StoreError> {
    let meta_bytes = encode("snapshot meta", meta)?;
    let meta_len = u32::try_from(meta_bytes.len())
        .map_err(|_| StoreError::corrupt("snapshot meta", "longer than 4 GiB"))?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&meta_bytes);
    hasher.update(body);
    let mut header = [0u8; FILE_HEADER];
    header[..8].copy_from_slice(FILE_MAGIC);
    header[8..12].copy_from_slice(&meta_len.to_le_bytes());
    header[12..].copy_from_slice(&hasher.finalize().to_le_bytes());
    let tmp = dir.join(TMP_FILE);
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    file.write_all(&header)?;
    file.write_all(&meta_bytes)?;
    file.write_all(body)?;
    file.sync_all()?;
    fs::rename(&tmp, dir.join(FILE))?;
    sync_dir(dir)?;
    file.seek(SeekFrom::Start((FILE_HEADER + meta_bytes.len()) as u64))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_of_an_unknown_format_is_refused_not_misread() {
        let current = Body::encode(Vec::new(), Vec::new(), b"app").expect("encode");
        let body = Body::decode(&current).expect("decode");
        assert_eq!(body.app, b"app");
        // The format is the first byte of the header (a small postcard varint).
        let mut newer = current.clone();
        newer[4] = u8::try_from(FORMAT + 1).expect("small");
        let err = Body::decode(&newer).err().expect("refused").to_string();
        assert!(
            err.contains(&format!("format {}", FORMAT + 1)) && err.contains("this build reads"),
            "{err}"
        );
    }
}

//! The Raft log's entries in append-only segment files, outside sled.
//!
//! sled 0.34 writes any page larger than a quarter of its 512 KiB segments as a
//! blob file, and does not delete that file when the page is later replaced by
//! one that is not a blob, nor when it is emptied. A log of large entries
//! (batches of large messages) therefore kept every purged entry on disk: the
//! data directory grew by gigabytes a minute while the log itself stayed small.
//! So the entries live in files of about [`SEGMENT_BYTES`] each,
//! `log/<index of the first record, 20 digits>.seg`; a purge deletes whole files,
//! and where each entry sits is kept in memory, rebuilt by a scan at open.
//!
//! A file is [`MAGIC`] then records `[u32 LE length][u32 LE crc32][entry]`, the
//! entry postcard-encoded; its log id comes first, so the scan reads it without
//! decoding the payload. What makes that safe across a crash:
//! - appends are written at once and fsynced by the flusher ([`SyncTargets`])
//!   before openraft hears they are durable. At open, a record that does not
//!   check out (torn, or not after its predecessor) with nothing valid after
//!   it is the tail of a write a crash cut short: the file is cut there, with a
//!   warning naming it and the offset. If a valid entry follows it, in the
//!   same file or a later one, the damage is inside the log, where entries may
//!   have been acknowledged: open refuses, naming the file, the offset and the
//!   entries beyond, rather than drop them;
//! - a truncation is fsynced, with the deletion of the files after it, before it
//!   returns, so that no later append ends up next to stale records;
//! - a purge deletes files only after the caller made the purge point durable,
//!   so the log never comes back with a hole; entries at or below the purge
//!   point found at open (a file whose deletion was lost) are ignored.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::ops::Bound;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::warn;

use crate::error::{encode, StoreError};
use crate::types::{Entry, LogId};

/// The first bytes of every segment file; the last one is the format number.
const MAGIC: &[u8; 8] = b"STRLOG\0\x01";
/// Length and crc32 before each entry.
const RECORD_HEADER: u64 = 8;
/// A new file is started once the current one holds this many bytes. Small
/// enough that a purge frees space in steps far below the log's byte bound,
/// large enough that a busy node starts a file a second at most.
pub(crate) const SEGMENT_BYTES: u64 = 8 * 1024 * 1024;
const SUFFIX: &str = ".seg";

/// Where one entry is stored.
#[derive(Clone)]
pub(crate) struct Pos {
    log_id: LogId,
    /// Shared with readers, who may still read from a file that a purge has
    /// just unlinked.
    file: Arc<File>,
    offset: u64,
    len: u32,
}

impl Pos {
    fn record_bytes(&self) -> u64 {
        RECORD_HEADER + u64::from(self.len)
    }

    /// Reads and checks the entry. Blocking, but only a read of bytes that are
    /// usually still in the page cache.
    pub(crate) fn read(&self) -> Result<Entry, StoreError> {
        let mut buf = vec![0; RECORD_HEADER as usize + self.len as usize];
        self.file.read_exact_at(&mut buf, self.offset)?;
        let (len, crc, body) = split_record(&buf)
            .ok_or_else(|| StoreError::corrupt("log entry", "record header unreadable"))?;
        if len != self.len || crc32fast::hash(body) != crc {
            return Err(StoreError::corrupt(
                "log entry",
                format!("entry {} does not match its checksum", self.log_id),
            ));
        }
        let entry: Entry = crate::error::decode("log entry", body)?;
        if entry.log_id != self.log_id {
            return Err(StoreError::corrupt(
                "log entry",
                format!("entry {} stored where {} was", entry.log_id, self.log_id),
            ));
        }
        Ok(entry)
    }
}

fn split_record(buf: &[u8]) -> Option<(u32, u32, &[u8])> {
    let len = u32::from_le_bytes(buf.get(0..4)?.try_into().ok()?);
    let crc = u32::from_le_bytes(buf.get(4..8)?.try_into().ok()?);
    Some((len, crc, buf.get(8..)?))
}

struct Segment {
    /// Index of the first record written to it, which names the file.
    first: u64,
    path: PathBuf,
    file: Arc<File>,
    /// Where the next record goes.
    len: u64,
}

/// What the flusher must fsync so that everything appended so far is durable.
pub(crate) struct SyncTargets {
    files: Vec<Arc<File>>,
    dir: Option<PathBuf>,
}

impl SyncTargets {
    /// Blocking: fsyncs.
    pub(crate) fn sync(&self) -> io::Result<()> {
        for file in &self.files {
            file.sync_data()?;
        }
        if let Some(dir) = &self.dir {
            sync_dir(dir)?;
        }
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The segment files and where each entry is.
pub(crate) struct SegmentLog {
    dir: PathBuf,
    /// In log order; the last one takes the appends.
    segments: VecDeque<Segment>,
    /// The entries after the purge point, by index. openraft appends consecutive
    /// indexes; its conformance suite also appends with holes, which a map allows.
    entries: BTreeMap<u64, Pos>,
    /// Record bytes of `entries`.
    bytes: u64,
    /// Files written since the last sync other than the last one.
    unsynced: Vec<Arc<File>>,
    /// A file was created since the last sync, so the directory needs one too.
    dir_dirty: bool,
}

impl SegmentLog {
    /// Opens the files in `dir` (created if needed), ignoring entries at or below
    /// `purged`. Blocking: it reads every file once.
    pub(crate) fn open(dir: &Path, purged: Option<u64>) -> Result<SegmentLog, StoreError> {
        fs::create_dir_all(dir)?;
        let mut names = Vec::new();
        for item in fs::read_dir(dir)? {
            let path = item?.path();
            let first = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(SUFFIX))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(first) = first {
                names.push((first, path));
            }
        }
        names.sort_unstable();
        let mut log = SegmentLog {
            dir: dir.to_owned(),
            segments: VecDeque::new(),
            entries: BTreeMap::new(),
            bytes: 0,
            unsynced: Vec::new(),
            dir_dirty: false,
        };
        let mut changed = false;
        let mut cut = false;
        for (at, (first, path)) in names.iter().enumerate() {
            let file = Arc::new(OpenOptions::new().read(true).write(true).open(path)?);
            let scan = log.scan(&file, purged)?;
            let next_first = names.get(at + 1).map(|(next, _)| *next);
            // A file that holds only purged entries (a later file starts at or
            // below the purge point) may be damaged: it is deleted anyway.
            let all_purged = next_first.is_some_and(|n| purged.is_some_and(|p| n <= p + 1));
            if scan.valid_len < scan.file_len && !all_purged {
                let last = log.last_log_id();
                // Entries at or below the purge point may lie anywhere.
                let after = last.map(|l| l.index).max(purged);
                let mut beyond = valid_record_after(&file, scan.valid_len, after)?
                    .map(|found| (path.clone(), found));
                for (_, later) in &names[at + 1..] {
                    if beyond.is_some() {
                        break;
                    }
                    let later_file = File::open(later)?;
                    beyond = valid_record_after(&later_file, 0, after)?
                        .map(|found| (later.clone(), found));
                }
                if let Some((place, (offset, log_id))) = beyond {
                    return Err(StoreError::corrupt(
                        "raft log",
                        format!(
                            "{}: the record at byte {} does not check out (after entry {}), \
                             but entry {log_id} at byte {offset} of {} follows it: the damage is \
                             inside the log, not a write cut short by a crash, and the entries \
                             after it may have been acknowledged; refusing to start rather than \
                             drop them (restore the directory, or let this node join again with \
                             an empty one)",
                            path.display(),
                            scan.valid_len,
                            fmt_log_id(last),
                            place.display(),
                        ),
                    ));
                }
                warn!(
                    file = %path.display(),
                    offset = scan.valid_len,
                    bytes = scan.file_len,
                    last_entry = %fmt_log_id(last),
                    "raft log ends in a record that does not check out, with nothing valid \
                     after it, as a write cut short by a crash leaves it: cutting the file there \
                     (the leader sends the entries again)"
                );
                file.set_len(scan.valid_len)?;
                file.sync_all()?;
                changed = true;
                cut = true;
            }
            if scan.live {
                log.segments.push_back(Segment {
                    first: *first,
                    path: path.clone(),
                    file,
                    len: scan.valid_len,
                });
            } else {
                // Nothing after the purge point: a file whose deletion a crash
                // undid, or one created just before the crash.
                fs::remove_file(path)?;
                changed = true;
            }
            if cut {
                // Whatever follows a cut holds no valid record (checked above):
                // a file started just before the crash.
                for (_, path) in &names[at + 1..] {
                    fs::remove_file(path)?;
                }
                break;
            }
        }
        if changed {
            sync_dir(dir)?;
        }
        Ok(log)
    }

    /// Indexes the records of one file. Stops at the first that does not check
    /// out or does not follow the one before.
    fn scan(&mut self, file: &Arc<File>, purged: Option<u64>) -> Result<Scan, StoreError> {
        let file_len = file.metadata()?.len();
        let mut reader = io::BufReader::with_capacity(1 << 20, &**file);
        let mut magic = [0u8; 8];
        let header_ok = reader.read_exact(&mut magic).is_ok() && &magic == MAGIC;
        let mut scan = Scan {
            file_len,
            valid_len: if header_ok { MAGIC.len() as u64 } else { 0 },
            live: false,
        };
        if !header_ok {
            return Ok(scan);
        }
        let mut body = Vec::new();
        loop {
            let offset = scan.valid_len;
            let mut header = [0u8; RECORD_HEADER as usize];
            if offset + RECORD_HEADER > file_len || reader.read_exact(&mut header).is_err() {
                break;
            }
            let Some((len, crc, _)) = split_record(&header) else {
                break;
            };
            if offset + RECORD_HEADER + u64::from(len) > file_len {
                break;
            }
            body.resize(len as usize, 0);
            if reader.read_exact(&mut body).is_err() || crc32fast::hash(&body) != crc {
                break;
            }
            let Ok((log_id, _)) = postcard::take_from_bytes::<LogId>(&body) else {
                break;
            };
            let follows = self
                .entries
                .last_key_value()
                .is_none_or(|(last, _)| log_id.index > *last);
            if purged.is_some_and(|p| log_id.index <= p) {
                // Kept only until the whole file can go.
            } else if follows {
                if self.entries.is_empty() {
                    if let Some(p) = purged.filter(|p| log_id.index != p + 1) {
                        return Err(StoreError::corrupt(
                            "raft log",
                            format!("purged up to {p} but the next entry is {log_id}"),
                        ));
                    }
                }
                let pos = Pos {
                    log_id,
                    file: file.clone(),
                    offset,
                    len,
                };
                self.bytes += pos.record_bytes();
                self.entries.insert(log_id.index, pos);
                scan.live = true;
            } else {
                break;
            }
            scan.valid_len = offset + RECORD_HEADER + u64::from(len);
        }
        Ok(scan)
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    pub(crate) fn last_log_id(&self) -> Option<LogId> {
        self.entries.last_key_value().map(|(_, p)| p.log_id)
    }

    /// Writes the entries after the last one (readable at once, durable after
    /// the next sync). Blocking.
    pub(crate) fn append(
        &mut self,
        entries: impl IntoIterator<Item = Entry>,
    ) -> Result<(), StoreError> {
        let mut pending = Vec::new();
        let mut positions = Vec::new();
        for entry in entries {
            let previous = positions
                .last()
                .map(|p: &Pos| p.log_id)
                .or_else(|| self.last_log_id());
            if previous.is_some_and(|p| entry.log_id.index <= p.index) {
                return Err(StoreError::corrupt(
                    "raft log",
                    format!("append of {} after {previous:?}", entry.log_id),
                ));
            }
            let body = encode("log entry", &entry)?;
            let len = u32::try_from(body.len())
                .map_err(|_| StoreError::corrupt("log entry", "larger than 4 GiB"))?;
            let full = self
                .segments
                .back()
                .is_none_or(|s| s.len + pending.len() as u64 >= SEGMENT_BYTES);
            if full {
                self.write_pending(&mut pending, &mut positions)?;
                self.start_segment(entry.log_id.index)?;
            }
            let segment = self.segments.back().ok_or(StoreError::Closed)?;
            positions.push(Pos {
                log_id: entry.log_id,
                file: segment.file.clone(),
                offset: segment.len + pending.len() as u64,
                len,
            });
            pending.extend_from_slice(&len.to_le_bytes());
            pending.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
            pending.extend_from_slice(&body);
        }
        self.write_pending(&mut pending, &mut positions)
    }

    /// Writes `pending` at the end of the last file, then indexes `positions`.
    fn write_pending(
        &mut self,
        pending: &mut Vec<u8>,
        positions: &mut Vec<Pos>,
    ) -> Result<(), StoreError> {
        if pending.is_empty() {
            return Ok(());
        }
        let segment = self.segments.back_mut().ok_or(StoreError::Closed)?;
        segment.file.write_all_at(pending, segment.len)?;
        segment.len += pending.len() as u64;
        pending.clear();
        for pos in positions.drain(..) {
            self.bytes += pos.record_bytes();
            self.entries.insert(pos.log_id.index, pos);
        }
        Ok(())
    }

    fn start_segment(&mut self, first: u64) -> Result<(), StoreError> {
        let path = self.dir.join(format!("{first:020}{SUFFIX}"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        file.write_all_at(MAGIC, 0)?;
        if let Some(previous) = self.segments.back() {
            self.unsynced.push(previous.file.clone());
        }
        self.segments.push_back(Segment {
            first,
            path,
            file: Arc::new(file),
            len: MAGIC.len() as u64,
        });
        self.dir_dirty = true;
        Ok(())
    }

    /// Removes the entries from `index` on, durably before returning. Blocking.
    pub(crate) fn truncate(&mut self, index: u64) -> Result<(), StoreError> {
        let removed = self.entries.split_off(&index);
        let Some(cut) = removed.values().next() else {
            return Ok(());
        };
        if self.entries.is_empty() {
            self.bytes = 0;
            return self.remove_all();
        }
        self.bytes -= removed.values().map(Pos::record_bytes).sum::<u64>();
        let mut removed_files = false;
        while let Some(last) = self.segments.back_mut() {
            if Arc::ptr_eq(&last.file, &cut.file) {
                last.file.set_len(cut.offset)?;
                last.len = cut.offset;
                last.file.sync_all()?;
                break;
            }
            fs::remove_file(&last.path)?;
            self.segments.pop_back();
            removed_files = true;
        }
        if removed_files {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    fn remove_all(&mut self) -> Result<(), StoreError> {
        self.entries.clear();
        self.bytes = 0;
        for segment in self.segments.drain(..) {
            fs::remove_file(&segment.path)?;
        }
        sync_dir(&self.dir)?;
        Ok(())
    }

    /// Forgets the entries up to `index` and deletes the files that hold nothing
    /// else. The caller has made the purge point durable. Blocking.
    pub(crate) fn purge(&mut self, index: u64) -> Result<(), StoreError> {
        let kept = self.entries.split_off(&index.saturating_add(1));
        let purged = std::mem::replace(&mut self.entries, kept);
        self.bytes -= purged.values().map(Pos::record_bytes).sum::<u64>();
        // A file holds the indexes from its name up to the next file's name.
        while let Some(segment) = self.segments.front() {
            let done = match self.segments.get(1) {
                Some(next) => next.first <= index.saturating_add(1),
                None => self.entries.is_empty(),
            };
            if !done {
                break;
            }
            fs::remove_file(&segment.path)?;
            self.segments.pop_front();
        }
        Ok(())
    }

    /// Positions of the entries in the range, up to `max_bytes` of them (at
    /// least one), to read without holding the log.
    pub(crate) fn positions(&self, start: Bound<u64>, end: Bound<u64>, max_bytes: u64) -> Vec<Pos> {
        let mut out = Vec::new();
        if matches!((start, end), (Bound::Included(s) | Bound::Excluded(s), Bound::Included(e) | Bound::Excluded(e)) if s > e)
        {
            return out;
        }
        let mut bytes = 0u64;
        for pos in self.entries.range((start, end)).map(|(_, p)| p) {
            out.push(pos.clone());
            bytes += u64::from(pos.len);
            if bytes >= max_bytes {
                break;
            }
        }
        out
    }

    /// The highest index to purge so that at most `keep_bytes` of the entries up
    /// to `upto` stay; `None` if they fit already.
    pub(crate) fn purge_point(&self, upto: u64, keep_bytes: u64) -> Option<u64> {
        let mut kept = 0u64;
        for (index, pos) in self.entries.range(..=upto).rev() {
            kept += pos.record_bytes();
            if kept > keep_bytes {
                return Some(*index);
            }
        }
        None
    }

    /// Record bytes of the entries up to `index`.
    pub(crate) fn bytes_through(&self, index: u64) -> u64 {
        self.entries
            .range(..=index)
            .map(|(_, p)| p.record_bytes())
            .sum()
    }

    /// Takes what must be fsynced for every append so far to be durable.
    pub(crate) fn sync_targets(&mut self) -> SyncTargets {
        let mut files = std::mem::take(&mut self.unsynced);
        files.extend(self.segments.back().map(|s| s.file.clone()));
        let dir = std::mem::take(&mut self.dir_dirty).then(|| self.dir.clone());
        SyncTargets { files, dir }
    }
}

fn fmt_log_id(id: Option<LogId>) -> String {
    id.map_or_else(|| "none".to_owned(), |id| id.to_string())
}

/// The log id at the front of `body`, if it is after index `after`.
fn entry_after(body: &[u8], after: Option<u64>) -> Option<LogId> {
    let (log_id, _) = postcard::take_from_bytes::<LogId>(body).ok()?;
    after.is_none_or(|a| log_id.index > a).then_some(log_id)
}

/// The first record after byte `from` of `file` (not at `from` itself, which
/// does not check out) that checks out and holds an entry after index
/// `after`: its offset
/// and log id. Looks at every byte, since the damaged record's length may be
/// damaged too; candidates are filtered by their log id before their checksum
/// is computed. Reads the rest of the file into memory: it runs only once a
/// damaged record was found.
fn valid_record_after(
    file: &File,
    from: u64,
    after: Option<u64>,
) -> Result<Option<(u64, LogId)>, StoreError> {
    let len = file.metadata()?.len();
    let mut rest = vec![0; usize::try_from(len.saturating_sub(from)).unwrap_or(0)];
    file.read_exact_at(&mut rest, from)?;
    // Entries follow each other within this many bytes at most: one record
    // per index, each at least a header long.
    let window = rest.len() as u64 / RECORD_HEADER + 1;
    for start in 1..rest.len() {
        let Some((len, crc, body)) = rest.get(start..).and_then(split_record) else {
            break;
        };
        let Some(body) = body.get(..len as usize) else {
            continue;
        };
        let Some(log_id) = entry_after(body, after) else {
            continue;
        };
        if after.is_some_and(|a| log_id.index > a.saturating_add(window)) {
            continue;
        }
        if crc32fast::hash(body) == crc {
            return Ok(Some((from + start as u64, log_id)));
        }
    }
    Ok(None)
}

struct Scan {
    file_len: u64,
    /// Bytes up to the end of the last record that checks out.
    valid_len: u64,
    /// Whether it holds an entry after the purge point.
    live: bool,
}

#[cfg(test)]
mod tests;

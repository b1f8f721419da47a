//! A segment: one store file (batches back to back) and its index, named by the base offset,
//! zero-padded to 20 digits (`00000000000000000000.store`, `….index`).
//!
//! This file owns reading a segment: scanning batches from a position (recovery, `check`, the
//! sparse-index walk of a read) and the lazy loading of a sealed segment's index. Writing is the
//! appender's job (`log.rs`), which alone mutates the active segment.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::io::{Disk, File};
use crate::storage::format::{self, Batch, FormatError, HEADER_BYTES};
use crate::storage::index::{INDEX_BLOCK_BYTES, Index, IndexEntry};
use crate::types::Offset;

pub const STORE_SUFFIX: &str = "store";
pub const INDEX_SUFFIX: &str = "index";
/// The extension of a segment file being deleted (`<base>.store.<n>.deleted`): renamed out of
/// the way under the log's lock, then shrunk and removed in the background. Recovery removes
/// any left by a crash.
pub const DELETED_SUFFIX: &str = "deleted";

thread_local! {
    /// Makes each deleted file's name unique, so that a second deletion of a segment file of
    /// the same name never replaces a first one still being removed (the thread removing the
    /// first would then shrink a file a reader may still hold). Starts from the clock, so
    /// names differ from those a previous run left.
    static NEXT_DELETION: std::cell::Cell<u64> =
        std::cell::Cell::new(crate::io::now_ms() as u64);
}

/// A unique name for the segment file at `path` while it is being deleted.
pub fn deleted_path(path: &Path) -> PathBuf {
    let n = NEXT_DELETION.with(|next| {
        let n = next.get();
        next.set(n.wrapping_add(1));
        n
    });
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{n}.{DELETED_SUFFIX}"));
    path.with_file_name(name)
}

/// Whether `path` is a segment file being deleted (see [`DELETED_SUFFIX`]).
pub fn is_deleted_path(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == DELETED_SUFFIX)
}

/// Bytes read per DMA read while scanning.
const SCAN_CHUNK_BYTES: usize = 1 << 20;
/// Bytes read per DMA read when serving a read (the batch holding the offset is usually near).
const READ_CHUNK_BYTES: usize = 64 << 10;

pub fn store_path(dir: &Path, base: Offset) -> PathBuf {
    dir.join(format!("{:020}.{STORE_SUFFIX}", base.get()))
}

pub fn index_path(dir: &Path, base: Offset) -> PathBuf {
    dir.join(format!("{:020}.{INDEX_SUFFIX}", base.get()))
}

/// Parses `00000000000000000042.store` into offset 42.
pub fn parse_segment_name(path: &Path, suffix: &str) -> Option<Offset> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(suffix)?.strip_suffix('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok().map(Offset)
}

pub struct Segment {
    base: Offset,
    store_path: PathBuf,
    index_path: PathBuf,
    pub(crate) store: Rc<File>,
    pub(crate) index_file: Rc<File>,
    /// Logical end of the data in the store: everything below is valid batches.
    end: Cell<u64>,
    /// The offset after the last record.
    next_offset: Cell<Offset>,
    /// Timestamp of the newest batch (age retention); `i64::MIN` when empty.
    newest_timestamp_ms: Cell<i64>,
    /// `None` until first needed for a sealed segment (loaded lazily, so open time and memory
    /// do not grow with the number of segments).
    index: RefCell<Option<Index>>,
    sealed: Cell<bool>,
    /// The Raft index of the first batch, once read (replicated partitions).
    first_raft: Cell<Option<u64>>,
}

/// Where a keyed read starts.
#[derive(Copy, Clone, Debug)]
enum ReadFrom {
    /// Batches holding records at this offset or later (control batches skipped).
    Offset(Offset),
    /// Every batch with this Raft index or later.
    Raft(u64),
}

/// Where a segment's data ends.
#[derive(Copy, Clone, Debug)]
pub struct SegmentTail {
    /// Logical end of the data in the store.
    pub end: u64,
    /// The offset after the last record.
    pub next_offset: Offset,
    /// Timestamp of the newest batch, `i64::MIN` when empty.
    pub newest_timestamp_ms: i64,
}

/// Why a scan stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanStop {
    /// Zeros or the end of the file: clean end of data.
    End,
    /// Bytes at `position` are not a valid batch continuing the sequence.
    Invalid { position: u64, detail: String },
}

/// What a scan of a store found.
#[derive(Debug)]
pub struct Scan {
    pub end: u64,
    pub next_offset: Offset,
    pub newest_timestamp_ms: Option<i64>,
    /// Every batch seen: (position, header).
    pub batches: Vec<(u64, format::Header)>,
    pub stop: ScanStop,
    /// The last scanned batches' bytes, newest last, up to the requested amount (to warm the
    /// tail cache on open).
    pub tail: Vec<Batch>,
}

impl Segment {
    pub(crate) fn new(
        dir: &Path,
        base: Offset,
        files: (File, File),
        tail: SegmentTail,
        index: Option<Index>,
        sealed: bool,
    ) -> Segment {
        let (store, index_file) = files;
        let SegmentTail {
            end,
            next_offset,
            newest_timestamp_ms,
        } = tail;
        Segment {
            base,
            store_path: store_path(dir, base),
            index_path: index_path(dir, base),
            store: Rc::new(store),
            index_file: Rc::new(index_file),
            end: Cell::new(end),
            next_offset: Cell::new(next_offset),
            newest_timestamp_ms: Cell::new(newest_timestamp_ms),
            index: RefCell::new(index),
            sealed: Cell::new(sealed),
            first_raft: Cell::new(None),
        }
    }

    pub fn base(&self) -> Offset {
        self.base
    }

    pub fn end(&self) -> u64 {
        self.end.get()
    }

    pub fn next_offset(&self) -> Offset {
        self.next_offset.get()
    }

    pub fn newest_timestamp_ms(&self) -> i64 {
        self.newest_timestamp_ms.get()
    }

    pub fn is_sealed(&self) -> bool {
        self.sealed.get()
    }

    /// Closes the segment's files, if nothing else holds them.
    pub(crate) async fn close(self) {
        for file in [self.store, self.index_file] {
            if let Ok(file) = Rc::try_unwrap(file) {
                let _ = file.close().await;
            }
        }
    }

    pub fn store_path(&self) -> &Path {
        &self.store_path
    }

    pub fn index_path(&self) -> &Path {
        &self.index_path
    }

    pub(crate) fn set_tail(&self, end: u64, next_offset: Offset, newest_timestamp_ms: i64) {
        assert!(next_offset >= self.base);
        self.end.set(end);
        self.next_offset.set(next_offset);
        self.newest_timestamp_ms.set(newest_timestamp_ms);
    }

    pub(crate) fn set_sealed(&self, sealed: bool) {
        self.sealed.set(sealed);
    }

    /// Runs `f` on the loaded index (the active segment's is always loaded).
    pub(crate) fn with_index<R>(&self, f: impl FnOnce(&mut Index) -> R) -> R {
        let mut index = self.index.borrow_mut();
        f(index.as_mut().expect("index is loaded"))
    }

    /// Loads the index if it is not in memory. A damaged index is rebuilt from the store (and
    /// rewritten) — it is only an accelerator.
    pub(crate) async fn ensure_index(&self, interval_bytes: u64) -> Result<()> {
        if self.index.borrow().is_some() {
            return Ok(());
        }
        let size = self.index_file.size().await?;
        let data = self.index_file.read_at(0, size as usize).await?;
        let (mut index, damaged) = Index::decode(self.base, &data);
        let last_ok = match index.last() {
            Some(last) => self.entry_is_valid(last).await?,
            None => self.end.get() == 0,
        };
        if damaged || !last_ok {
            index = self.rebuild_index(interval_bytes).await?;
        }
        if self.index.borrow().is_none() {
            *self.index.borrow_mut() = Some(index);
        }
        Ok(())
    }

    /// Rebuilds the index by scanning the whole store, and writes it out (durably).
    pub(crate) async fn rebuild_index(&self, interval_bytes: u64) -> Result<Index> {
        let scan = scan_store(&self.store, 0, self.base, self.end.get(), 0).await?;
        if let ScanStop::Invalid { position, detail } = &scan.stop
            && *position < self.end.get()
        {
            return Err(Error::corrupt(&self.store_path, *position, detail.clone()));
        }
        let index = build_index(self.base, &scan.batches, interval_bytes);
        write_index_file(&self.index_file, &index).await?;
        Ok(index)
    }

    /// Whether the batch an index entry points at really starts there with that offset.
    pub(crate) async fn entry_is_valid(&self, entry: &IndexEntry) -> Result<bool> {
        if entry.position + HEADER_BYTES as u64 > self.end.get() {
            return Ok(false);
        }
        let head = self.store.read_at(entry.position, HEADER_BYTES).await?;
        let Ok(header) = format::decode_header(&head) else {
            return Ok(false);
        };
        if header.base_offset != entry.offset
            || entry.position + header.length as u64 > self.end.get()
        {
            return Ok(false);
        }
        let data = self
            .store
            .read_at(entry.position, header.length as usize)
            .await?;
        Ok(format::validate_batch(&data).is_ok())
    }

    /// Reads the batches holding offsets from `from` on, up to about `max_bytes` (at least one
    /// batch with records), stopping at `end` (a position) — the caller's durable end.
    pub(crate) async fn read_batches(
        &self,
        from: Offset,
        max_bytes: usize,
        end: u64,
        interval_bytes: u64,
    ) -> Result<Vec<Batch>> {
        self.read_keyed(ReadFrom::Offset(from), max_bytes, end, interval_bytes)
            .await
    }

    /// Reads every batch (control batches included) whose Raft index is `from` or later, up to
    /// about `max_bytes` (at least one), stopping at the position `end`.
    pub(crate) async fn read_raft_batches(
        &self,
        from: u64,
        max_bytes: usize,
        end: u64,
        interval_bytes: u64,
    ) -> Result<Vec<Batch>> {
        self.read_keyed(ReadFrom::Raft(from), max_bytes, end, interval_bytes)
            .await
    }

    async fn read_keyed(
        &self,
        from: ReadFrom,
        max_bytes: usize,
        end: u64,
        interval_bytes: u64,
    ) -> Result<Vec<Batch>> {
        self.ensure_index(interval_bytes).await?;
        let (mut pos, mut expected) = {
            let index = self.index.borrow();
            let entry = index.as_ref().and_then(|i| match from {
                ReadFrom::Offset(o) => i.lookup(o),
                ReadFrom::Raft(r) => i.lookup_raft_index(r),
            });
            match entry {
                Some(e) => (e.position, e.offset),
                None => (0, self.base),
            }
        };
        let mut window = Window::new(&self.store, end, READ_CHUNK_BYTES.max(max_bytes));
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while pos < end && bytes < max_bytes.max(1) {
            let head = window.at(pos, HEADER_BYTES).await?;
            let header = format::decode_header(&head).map_err(|e| self.corrupt_at(pos, e))?;
            let len = header.length as usize;
            let data = window.at(pos, len).await?;
            if data.len() < len {
                return Err(self.corrupt_at(
                    pos,
                    FormatError::Truncated {
                        needed: len,
                        have: data.len(),
                    },
                ));
            }
            let batch = self.parse_at(data, pos, expected)?;
            pos += len as u64;
            expected = batch.next_offset();
            let wanted = match from {
                ReadFrom::Offset(o) => batch.next_offset() > o && batch.record_count() > 0,
                ReadFrom::Raft(r) => batch.header().meta.raft_index >= r,
            };
            if wanted {
                bytes += batch.len();
                out.push(batch);
            }
        }
        Ok(out)
    }

    /// The Raft index of the segment's first batch; `None` while the segment is empty.
    pub(crate) async fn first_raft_index(&self) -> Result<Option<u64>> {
        if let Some(first) = self.first_raft.get() {
            return Ok(Some(first));
        }
        if self.end.get() == 0 {
            return Ok(None);
        }
        let head = self.store.read_at(0, HEADER_BYTES).await?;
        let header = format::decode_header(&head).map_err(|e| self.corrupt_at(0, e))?;
        self.first_raft.set(Some(header.meta.raft_index));
        Ok(Some(header.meta.raft_index))
    }

    fn parse_at(&self, bytes: Bytes, position: u64, expected: Offset) -> Result<Batch> {
        let batch = Batch::parse(bytes).map_err(|e| self.corrupt_at(position, e))?;
        if batch.base_offset() != expected {
            return Err(Error::corrupt(
                &self.store_path,
                position,
                format!(
                    "batch has base offset {}, expected {expected}",
                    batch.base_offset()
                ),
            ));
        }
        Ok(batch)
    }

    fn corrupt_at(&self, position: u64, e: FormatError) -> Error {
        Error::corrupt(&self.store_path, position, e.to_string())
    }

    /// Opens the files of an existing segment.
    pub(crate) async fn open_files(disk: &Disk, dir: &Path, base: Offset) -> Result<(File, File)> {
        let store = disk.open_rw(&store_path(dir, base)).await?;
        let index = disk.open_rw(&index_path(dir, base)).await?;
        Ok((store, index))
    }
}

/// Reads a file forward through a window of bytes, so a scan issues few large DMA reads.
struct Window<'a> {
    file: &'a File,
    limit: u64,
    chunk_bytes: usize,
    data: Bytes,
    data_pos: u64,
}

impl<'a> Window<'a> {
    fn new(file: &'a File, limit: u64, chunk_bytes: usize) -> Window<'a> {
        Window {
            file,
            limit,
            chunk_bytes,
            data: Bytes::new(),
            data_pos: 0,
        }
    }

    /// Bytes from `pos` on: at least `need` of them unless `limit` comes first.
    async fn at(&mut self, pos: u64, need: usize) -> Result<Bytes> {
        let need = (need as u64).min(self.limit.saturating_sub(pos)) as usize;
        let held = pos >= self.data_pos && pos <= self.data_pos + self.data.len() as u64;
        if !held || ((self.data_pos + self.data.len() as u64 - pos) as usize) < need {
            let want = (self.limit - pos).min(need.max(self.chunk_bytes) as u64) as usize;
            let read = self.file.read_at(pos, want).await?;
            self.data = Bytes::copy_from_slice(&read);
            self.data_pos = pos;
        }
        Ok(self.data.slice((pos - self.data_pos) as usize..))
    }
}

/// Scans batches in `store` from `position` (where offset `expected` starts) until zeros, the
/// end of the file (or `limit` when non-zero), or the first bytes that are not a valid batch
/// continuing the offset sequence. Keeps up to `tail_bytes` of the newest batches.
pub async fn scan_store(
    store: &File,
    mut position: u64,
    mut expected: Offset,
    limit: u64,
    tail_bytes: usize,
) -> Result<Scan> {
    let file_len = store.size().await?;
    let limit = if limit == 0 {
        file_len
    } else {
        limit.min(file_len)
    };
    let mut scan = Scan {
        end: position,
        next_offset: expected,
        newest_timestamp_ms: None,
        batches: Vec::new(),
        stop: ScanStop::End,
        tail: Vec::new(),
    };
    let mut window = Window::new(store, limit, SCAN_CHUNK_BYTES);
    let mut tail_len = 0usize;
    while position < limit {
        let invalid = |detail: String| ScanStop::Invalid { position, detail };
        let head = window.at(position, HEADER_BYTES).await?;
        let header = match format::decode_header(&head) {
            Ok(h) => h,
            Err(FormatError::End) => break,
            Err(e) => {
                scan.stop = invalid(e.to_string());
                break;
            }
        };
        let len = header.length as usize;
        if position + len as u64 > limit {
            scan.stop = invalid(format!(
                "batch of {len} bytes runs past the end of the file"
            ));
            break;
        }
        let bytes = window.at(position, len).await?;
        let batch = match Batch::parse(bytes) {
            Ok(b) => b,
            Err(e) => {
                scan.stop = invalid(e.to_string());
                break;
            }
        };
        if batch.base_offset() != expected {
            scan.stop = invalid(format!(
                "batch has base offset {}, expected {expected}",
                batch.base_offset()
            ));
            break;
        }
        scan.batches.push((position, *batch.header()));
        scan.newest_timestamp_ms = Some(batch.header().meta.timestamp_ms);
        expected = batch.next_offset();
        position += len as u64;
        scan.next_offset = expected;
        scan.end = position;
        if tail_bytes > 0 {
            tail_len += batch.len();
            scan.tail.push(batch);
            while tail_len > tail_bytes && scan.tail.len() > 1 {
                tail_len -= scan.tail.remove(0).len();
            }
        }
    }
    Ok(scan)
}

/// Builds a sparse index from scanned batches: an entry for the first batch, then one whenever
/// at least `interval_bytes` were written since the last entry.
pub fn build_index(base: Offset, batches: &[(u64, format::Header)], interval_bytes: u64) -> Index {
    let mut index = Index::new(base);
    let mut last_entry_pos: Option<u64> = None;
    for (pos, header) in batches {
        if last_entry_pos.is_none_or(|last| pos - last >= interval_bytes) {
            index.push(IndexEntry {
                offset: header.base_offset,
                position: *pos,
                raft_index: header.meta.raft_index,
            });
            last_entry_pos = Some(*pos);
        }
    }
    index
}

/// Writes the whole index (full blocks and the partial one), truncates the file to it, and
/// syncs it.
pub(crate) async fn write_index_file(file: &File, index: &Index) -> Result<()> {
    let blocks = index.encode_all_blocks();
    let total = blocks.len() * INDEX_BLOCK_BYTES;
    if total > 0 {
        let mut buf = file.alloc(total);
        for (i, block) in blocks.iter().enumerate() {
            buf.as_mut_slice()[i * INDEX_BLOCK_BYTES..(i + 1) * INDEX_BLOCK_BYTES]
                .copy_from_slice(block);
        }
        file.write_at(buf, 0).await?;
    }
    file.truncate(total as u64).await?;
    file.fdatasync().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_deleted_name_is_unique_and_never_a_segment_name() {
        let path = store_path(Path::new("/data/p0"), Offset(42));
        let (a, b) = (deleted_path(&path), deleted_path(&path));
        assert_ne!(a, b, "two deletions of one name do not collide");
        for deleted in [&a, &b] {
            assert_eq!(deleted.parent(), path.parent());
            assert!(is_deleted_path(deleted), "{}", deleted.display());
            assert_eq!(parse_segment_name(deleted, STORE_SUFFIX), None);
            assert_eq!(parse_segment_name(deleted, INDEX_SUFFIX), None);
        }
        assert!(!is_deleted_path(&path));
    }
}

//! The offline verifier behind `corelog check` (in the spirit of Kafka's `kafka-dump-log
//! --verify`): it reads a partition's segment files and reports what recovery would find,
//! without being recovery. It opens every segment file read-only through [`crate::io::Disk`]
//! and never changes one: no cut, no index rebuild, no deletion. (The one write it makes is
//! glommio's polled-I/O probe, a small file [`Disk::prepare_dir`] creates in the directory and
//! removes again; see `io/`. So the directory must be writable.)
//!
//! # What it verifies
//! For each segment, in base-offset order:
//! - every batch: header, length, CRC32C and record framing ([`format::validate_batch`]);
//! - offsets: each batch starts at the offset where the one before it ended, the first at the
//!   segment's base; each segment starts where the one before it ended (a gap or an overlap
//!   between segments is an error);
//! - the bytes after the last valid batch: zeros up to the end of the file (pre-allocated
//!   space), or a torn tail, or damage followed by more valid batches;
//! - the index: its blocks' checksums and order ([`Index::decode`]), and that every entry points
//!   at the start of a batch with the entry's offset and Raft index.
//!
//! Besides segments it reports an `.index` without its `.store`, a `truncate-after` marker (an
//! unfinished `truncate_after`), and lists every other file as ignored.
//!
//! # Errors and warnings
//! An **error** is data corruption: records that were acknowledged are damaged or missing, and
//! recovery would refuse to open the partition or would silently drop them. A **warning** is
//! something recovery repairs without losing acknowledged data: index damage (the index is an
//! accelerator, rebuilt from the store) or the torn tail of the last segment (an unfinished
//! flush, never acknowledged: recovery cuts it). Where the scan of a segment's batches stopped
//! at byte `P` (with `expected` the offset the next batch should have had):
//!
//! | what lies at `P` and after                                   | sealed segment | last segment |
//! |--------------------------------------------------------------|----------------|--------------|
//! | zeros to the end of the file                                 | ok             | ok           |
//! | a valid batch whose base offset is not `expected`            | error          | error        |
//! | invalid bytes or zeros, then a valid batch with offset ≥ `expected` | error   | error        |
//! | invalid bytes (bad CRC, framing, a batch cut by the file end) | error         | warning: torn tail, recovery cuts it |
//! | zeros, then non-zero bytes that are no batch                 | warning        | warning: recovery cuts them |
//!
//! and across segments: a sealed segment that does not end at the next segment's base offset
//! is an error (unless the segment already has an error, which explains it).
//!
//! # Exit codes of `corelog check`
//! `0`: no errors (warnings allowed) · `1`: at least one error · `2`: usage or I/O error (the
//! directory does not exist, a file cannot be read).
//!
//! # JSON (`corelog check --json`), version 1
//! ```text
//! { "version": 1,
//!   "partitions": [ { "dir", "status", "errors", "warnings",
//!                     "lowest_offset", "next_offset"        (null when there are no segments),
//!                     "batches", "records", "data_bytes",
//!                     "segments": [ { "file", "base_offset", "next_offset", "active",
//!                                     "batches", "control_batches", "records", "data_bytes",
//!                                     "file_bytes", "first_timestamp_ms", "last_timestamp_ms",
//!                                     "index_entries", "status", "issues" } ],
//!                     "issues", "other_files" } ],
//!   "summary": { "partitions", "segments", "batches", "records", "data_bytes",
//!                "errors", "warnings", "status" } }
//! ```
//! `status` is `"ok"`, `"warning"` or `"error"`; an issue is `{ "severity": "warning" | "error",
//! "file", "position" (a byte in that file, or null), "message" }`. A segment's counts cover its
//! valid batches up to the first problem; `next_offset` is the offset after the last of them.

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::{Serialize, Serializer};

use crate::error::{Error, Result};
use crate::io::{Disk, File};
use crate::storage::format::{self, FormatError, HEADER_BYTES, Header, MAGIC};
use crate::storage::index::{ENTRIES_PER_BLOCK, ENTRY_BYTES, INDEX_BLOCK_BYTES, Index, IndexEntry};
use crate::storage::segment::{
    INDEX_SUFFIX, STORE_SUFFIX, index_path, parse_segment_name, store_path,
};
use crate::types::Offset;

/// Version of the `--json` document's shape.
pub const JSON_VERSION: u32 = 1;
/// Bytes read per DMA read while scanning a store.
const SCAN_CHUNK_BYTES: usize = 1 << 20;
/// Index entries reported one by one per segment; the rest are counted in one line, so a
/// garbage index cannot flood the report.
const INDEX_ISSUES_MAX: usize = 10;
/// The largest index file read into memory. A 2 GiB segment indexed every 4 KiB needs 8 MiB;
/// anything this large is damage, not an index.
const INDEX_FILE_BYTES_MAX: u64 = 256 << 20;
/// The file an unfinished `truncate_after` leaves behind (mirrors the private constant of
/// `log.rs`): the cut offset as u64 LE, then the CRC32C of those 8 bytes.
const TRUNCATE_MARKER: &str = "truncate-after";
/// A replicated partition's Raft state (vote, committed, applied); see `raft::meta`.
const RAFT_META: &str = "raft-meta";
/// Name of the subdirectory of a data directory that holds one directory per partition.
const PARTITIONS_DIR: &str = "partitions";

/// How bad one finding is.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Recovery repairs it without losing acknowledged data.
    Warning,
    /// Data corruption.
    Error,
}

/// The verdict on a segment, a partition or a whole check: the worst severity found.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[default]
    Ok,
    Warning,
    Error,
}

impl From<Severity> for Status {
    fn from(s: Severity) -> Status {
        match s {
            Severity::Warning => Status::Warning,
            Severity::Error => Status::Error,
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Ok => "ok",
            Status::Warning => "warning",
            Status::Error => "error",
        })
    }
}

/// One finding, tied to a file of the partition directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Issue {
    pub severity: Severity,
    /// The file's name within the partition directory.
    pub file: String,
    /// The byte in that file where the problem is, when it has one.
    pub position: Option<u64>,
    pub message: String,
}

/// What one segment holds and what is wrong with it.
#[derive(Clone, Debug, Serialize)]
pub struct SegmentReport {
    /// The store file's name (`<base offset, 20 digits>.store`).
    pub file: String,
    #[serde(serialize_with = "offset_as_u64")]
    pub base_offset: Offset,
    /// The offset after the last valid batch (of the valid prefix, if there is damage).
    #[serde(serialize_with = "offset_as_u64")]
    pub next_offset: Offset,
    /// The last segment: the one the node appends to.
    pub active: bool,
    /// Valid batches, control batches included.
    pub batches: u64,
    pub control_batches: u64,
    pub records: u64,
    /// Bytes of valid batches: where the data ends in the store.
    pub data_bytes: u64,
    /// The store file's size (pre-allocated space included).
    pub file_bytes: u64,
    pub first_timestamp_ms: Option<i64>,
    pub last_timestamp_ms: Option<i64>,
    /// Entries in the valid prefix of the index.
    pub index_entries: u64,
    pub status: Status,
    pub issues: Vec<Issue>,
}

/// The check of one partition directory.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PartitionReport {
    pub status: Status,
    pub errors: usize,
    pub warnings: usize,
    /// The first segment's base offset; `None` without segments.
    #[serde(serialize_with = "opt_offset_as_u64")]
    pub lowest_offset: Option<Offset>,
    /// The last segment's next offset; `None` without segments.
    #[serde(serialize_with = "opt_offset_as_u64")]
    pub next_offset: Option<Offset>,
    pub batches: u64,
    pub records: u64,
    pub data_bytes: u64,
    /// In base-offset order.
    pub segments: Vec<SegmentReport>,
    /// Findings not about one segment's store (orphan index, truncate marker).
    pub issues: Vec<Issue>,
    /// Names of files and directories that are not segment files; ignored.
    pub other_files: Vec<String>,
}

/// Totals over every checked partition.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub partitions: usize,
    pub segments: usize,
    pub batches: u64,
    pub records: u64,
    pub data_bytes: u64,
    pub errors: usize,
    pub warnings: usize,
    pub status: Status,
}

impl Summary {
    pub fn of(reports: &[(PathBuf, PartitionReport)]) -> Summary {
        let mut s = Summary {
            partitions: reports.len(),
            ..Summary::default()
        };
        for (_, r) in reports {
            s.segments += r.segments.len();
            s.batches += r.batches;
            s.records += r.records;
            s.data_bytes += r.data_bytes;
            s.errors += r.errors;
            s.warnings += r.warnings;
            s.status = s.status.max(r.status);
        }
        s
    }
}

/// Checks one partition directory (its segment files), read-only.
pub async fn check_partition(dir: &Path) -> Result<PartitionReport> {
    require_dir(dir)?;
    let disk = Disk::new();
    // Must precede every other DMA open in this directory (glommio's polled-I/O probe).
    disk.prepare_dir(dir).await?;
    let listing = list_partition(&disk, dir)?;
    let mut report = PartitionReport {
        other_files: listing.other,
        ..PartitionReport::default()
    };
    for (i, &base) in listing.stores.iter().enumerate() {
        let next_base = listing.stores.get(i + 1).copied();
        let has_index = listing.indexes.binary_search(&base).is_ok();
        let segment = check_segment(&disk, dir, base, next_base.is_none(), has_index).await?;
        report.segments.push(segment);
    }
    check_continuity(&mut report.segments);
    for base in &listing.indexes {
        if listing.stores.binary_search(base).is_err() {
            report.issues.push(Issue {
                severity: Severity::Warning,
                file: file_name(&index_path(dir, *base)),
                position: None,
                message: "index without its store file; the next open deletes it".into(),
            });
        }
    }
    if let Some(issue) = check_truncate_marker(dir)? {
        report.issues.push(issue);
    }
    report.finish();
    Ok(report)
}

/// Checks a node's data directory: every `<data>/partitions/<p>/`, in partition order. A
/// directory without `partitions/` that holds segment files itself is checked as one
/// partition.
pub async fn check_data_dir(data_dir: &Path) -> Result<Vec<(PathBuf, PartitionReport)>> {
    require_dir(data_dir)?;
    let partitions = data_dir.join(PARTITIONS_DIR);
    if partitions.is_dir() {
        let mut dirs: Vec<PathBuf> = Disk::new()
            .list_dir(&partitions)?
            .into_iter()
            .filter(|p| p.is_dir())
            .collect();
        // Numeric partition names sort as numbers (2 before 10); others after, by name.
        dirs.sort_by_key(|p| {
            let name = file_name(p);
            (name.parse::<u64>().map_or(u64::MAX, |n| n), name)
        });
        let mut out = Vec::with_capacity(dirs.len());
        for dir in dirs {
            let report = check_partition(&dir).await?;
            out.push((dir, report));
        }
        return Ok(out);
    }
    let listing = list_partition(&Disk::new(), data_dir)?;
    if listing.stores.is_empty() && listing.indexes.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{} is not a corelog data directory: it has no `{PARTITIONS_DIR}` subdirectory and \
             no segment files (use --partition-dir for one partition's directory)",
            data_dir.display()
        )));
    }
    let report = check_partition(data_dir).await?;
    Ok(vec![(data_dir.to_path_buf(), report)])
}

/// Writes the human-readable report: a line per segment (and its issues), a closing line per
/// partition and one for everything.
pub fn write_text(out: &mut dyn Write, reports: &[(PathBuf, PartitionReport)]) -> io::Result<()> {
    for (dir, r) in reports {
        writeln!(out, "partition {}", dir.display())?;
        if r.segments.is_empty() {
            writeln!(out, "  no segments: the partition is empty")?;
        }
        for s in &r.segments {
            writeln!(
                out,
                "  {}  base {}  next {}  batches {}  records {}  bytes {}  index {}  time {}{}  {}",
                s.file,
                s.base_offset,
                s.next_offset,
                s.batches,
                s.records,
                s.data_bytes,
                s.index_entries,
                time_range(s.first_timestamp_ms, s.last_timestamp_ms),
                if s.active { "  active" } else { "" },
                s.status,
            )?;
            for issue in &s.issues {
                write_issue(out, issue)?;
            }
        }
        for issue in &r.issues {
            write_issue(out, issue)?;
        }
        for name in &r.other_files {
            writeln!(out, "  ignored: {name} (not a segment file)")?;
        }
        let offsets = match (r.lowest_offset, r.next_offset) {
            (Some(lo), Some(next)) => format!("offsets {lo}..{next}"),
            _ => "no offsets".to_string(),
        };
        writeln!(
            out,
            "partition {}: {}: {}, {offsets}, {}, {}, {}",
            dir.display(),
            r.status,
            plural(r.segments.len() as u64, "segment"),
            plural(r.records, "record"),
            plural(r.errors as u64, "error"),
            plural(r.warnings as u64, "warning"),
        )?;
    }
    let s = Summary::of(reports);
    writeln!(
        out,
        "checked {}, {}, {}: {}, {}: {}",
        plural(s.partitions as u64, "partition"),
        plural(s.segments as u64, "segment"),
        plural(s.records, "record"),
        plural(s.errors as u64, "error"),
        plural(s.warnings as u64, "warning"),
        s.status,
    )
}

/// Writes the report as one JSON document (shape in the module doc).
pub fn write_json(out: &mut dyn Write, reports: &[(PathBuf, PartitionReport)]) -> io::Result<()> {
    #[derive(Serialize)]
    struct JsonPartition<'a> {
        dir: String,
        #[serde(flatten)]
        report: &'a PartitionReport,
    }
    #[derive(Serialize)]
    struct JsonReport<'a> {
        version: u32,
        partitions: Vec<JsonPartition<'a>>,
        summary: Summary,
    }
    let doc = JsonReport {
        version: JSON_VERSION,
        partitions: reports
            .iter()
            .map(|(dir, report)| JsonPartition {
                // Lossy: a JSON string cannot hold a non-UTF-8 path, and a report must not fail.
                dir: dir.display().to_string(),
                report,
            })
            .collect(),
        summary: Summary::of(reports),
    };
    serde_json::to_writer_pretty(&mut *out, &doc)?;
    writeln!(out)
}

impl PartitionReport {
    /// Fills the statuses, counts and totals from the segments and issues.
    fn finish(&mut self) {
        for s in &mut self.segments {
            s.status = worst(&s.issues);
            self.batches += s.batches;
            self.records += s.records;
            self.data_bytes += s.data_bytes;
        }
        self.lowest_offset = self.segments.first().map(|s| s.base_offset);
        self.next_offset = self.segments.last().map(|s| s.next_offset);
        let all = self
            .segments
            .iter()
            .flat_map(|s| &s.issues)
            .chain(&self.issues);
        for issue in all {
            match issue.severity {
                Severity::Error => self.errors += 1,
                Severity::Warning => self.warnings += 1,
            }
            self.status = self.status.max(issue.severity.into());
        }
    }
}

impl SegmentReport {
    fn new(file: String, base: Offset, active: bool) -> SegmentReport {
        SegmentReport {
            file,
            base_offset: base,
            next_offset: base,
            active,
            batches: 0,
            control_batches: 0,
            records: 0,
            data_bytes: 0,
            file_bytes: 0,
            first_timestamp_ms: None,
            last_timestamp_ms: None,
            index_entries: 0,
            status: Status::Ok,
            issues: Vec::new(),
        }
    }

    fn add_batch(&mut self, h: &Header) {
        self.batches += 1;
        if h.is_control() {
            self.control_batches += 1;
        }
        self.records += h.record_count as u64;
        self.data_bytes += h.length as u64;
        self.first_timestamp_ms.get_or_insert(h.meta.timestamp_ms);
        self.last_timestamp_ms = Some(h.meta.timestamp_ms);
        self.next_offset = h.next_offset();
    }

    fn has_error(&self) -> bool {
        self.issues.iter().any(|i| i.severity == Severity::Error)
    }

    fn issue(&mut self, severity: Severity, position: Option<u64>, message: String) {
        self.issues.push(Issue {
            severity,
            file: self.file.clone(),
            position,
            message,
        });
    }
}

/// A partition directory's entries, sorted by base offset.
struct Listing {
    stores: Vec<Offset>,
    indexes: Vec<Offset>,
    other: Vec<String>,
}

fn list_partition(disk: &Disk, dir: &Path) -> Result<Listing> {
    let mut listing = Listing {
        stores: Vec::new(),
        indexes: Vec::new(),
        other: Vec::new(),
    };
    for path in disk.list_dir(dir)? {
        if let Some(base) = parse_segment_name(&path, STORE_SUFFIX) {
            listing.stores.push(base);
        } else if let Some(base) = parse_segment_name(&path, INDEX_SUFFIX) {
            listing.indexes.push(base);
        } else if file_name(&path) != TRUNCATE_MARKER
            && file_name(&path) != RAFT_META
            && !crate::storage::segment::is_deleted_path(&path)
        {
            listing.other.push(file_name(&path));
        }
    }
    listing.stores.sort();
    listing.indexes.sort();
    listing.other.sort();
    Ok(listing)
}

/// Checks one segment: its index, then its batches (checking index entries on the way), then
/// the bytes after the last valid batch.
async fn check_segment(
    disk: &Disk,
    dir: &Path,
    base: Offset,
    active: bool,
    has_index: bool,
) -> Result<SegmentReport> {
    let path = store_path(dir, base);
    let mut seg = SegmentReport::new(file_name(&path), base, active);
    let mut index_issues = Vec::new();
    let index = if has_index {
        load_index(disk, dir, base, &mut index_issues).await?
    } else {
        index_issues.push(Issue {
            severity: Severity::Warning,
            file: file_name(&index_path(dir, base)),
            position: None,
            message: "index file is missing; the next open creates and rebuilds it".into(),
        });
        Index::new(base)
    };
    seg.index_entries = index.len() as u64;

    let store = disk.open_read(&path).await?;
    let file_len = store.size().await?;
    seg.file_bytes = file_len;
    let mut reader = Chunks::new(&store, file_len);
    let mut entries = EntryCheck::new(index.entries(), file_name(&index_path(dir, base)));
    let (stop_pos, stop) = scan_batches(&mut reader, &mut seg, &mut entries).await?;
    let after = inspect_after(&mut reader, stop_pos, seg.next_offset).await?;
    store.close().await?;
    // Where valid batches resume after damage, entries pointing there are not what is wrong:
    // the data error already says it.
    if after.resumed.is_none() {
        entries.past_end(stop_pos);
    }

    if let Some((severity, message)) =
        tail_verdict(active, stop_pos, &stop, &after, seg.next_offset)
    {
        seg.issue(severity, Some(stop_pos), message);
    }
    if !active && has_index && index.is_empty() && index_issues.is_empty() && seg.batches > 0 {
        index_issues.push(Issue {
            severity: Severity::Warning,
            file: entries.file.clone(),
            position: None,
            message: "index of a sealed segment is empty; the next open rebuilds it".into(),
        });
    }
    seg.issues.extend(index_issues);
    seg.issues.extend(entries.into_issues());
    Ok(seg)
}

/// Why the scan of a store's batches stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Stop {
    /// The end of the file, or a zero header: the end of the data, if only zeros follow.
    End,
    /// Bytes that are not a valid batch.
    Invalid(String),
    /// A valid batch whose base offset does not continue the sequence.
    OffsetJump(Offset),
}

/// What lies after the position where the scan stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
struct After {
    /// One past the last non-zero byte at or after the stop (the stop itself when none).
    nonzero_end: u64,
    /// The first valid batch after the stop with a base offset at or above the expected one:
    /// data that would be lost by cutting there. (Lower offsets would be stale bytes of an
    /// older segment, e.g. a recycled file, not data of this one.)
    resumed: Option<(u64, Offset)>,
}

/// Scans batches from byte 0, counting them into `seg` and checking index entries against them,
/// until the first byte that is not a valid batch continuing the offset sequence.
async fn scan_batches(
    reader: &mut Chunks<'_>,
    seg: &mut SegmentReport,
    entries: &mut EntryCheck<'_>,
) -> Result<(u64, Stop)> {
    let mut pos = 0u64;
    while pos < reader.len {
        let head = reader.at(pos, HEADER_BYTES).await?;
        let header = match format::decode_header(&head) {
            Ok(h) => h,
            Err(FormatError::End) => return Ok((pos, Stop::End)),
            Err(e) => return Ok((pos, Stop::Invalid(e.to_string()))),
        };
        let bytes = reader.at(pos, header.length as usize).await?;
        if let Err(e) = format::validate_batch(&bytes) {
            return Ok((pos, Stop::Invalid(e.to_string())));
        }
        if header.base_offset != seg.next_offset {
            return Ok((pos, Stop::OffsetJump(header.base_offset)));
        }
        entries.batch_at(pos, &header);
        seg.add_batch(&header);
        pos += header.length as u64;
    }
    Ok((pos, Stop::End))
}

/// Reads from `from` to the end of the file: where non-zero bytes end, and whether a valid
/// batch (offset ≥ `expected`) lies anywhere after `from`.
async fn inspect_after(reader: &mut Chunks<'_>, from: u64, expected: Offset) -> Result<After> {
    let mut after = After {
        nonzero_end: from,
        resumed: None,
    };
    let mut pos = from;
    while pos < reader.len {
        let chunk = reader.at(pos, SCAN_CHUNK_BYTES).await?;
        let chunk_end = pos + chunk.len() as u64;
        // All-zero chunks (the usual pre-allocated space) need no byte-by-byte search.
        if !is_zero(&chunk) {
            if let Some(last) = chunk.iter().rposition(|&b| b != 0) {
                after.nonzero_end = pos + last as u64 + 1;
            }
            if after.resumed.is_none() {
                after.resumed = find_batch(reader, &chunk, pos, from, expected).await?;
            }
        }
        if chunk_end >= reader.len || chunk.len() <= MAGIC.len() {
            break;
        }
        // Overlap the next chunk so a magic split across two chunks is still seen.
        pos = chunk_end - (MAGIC.len() as u64 - 1);
    }
    Ok(after)
}

/// The first valid batch (offset ≥ `expected`) whose magic lies in `chunk` (which starts at
/// byte `chunk_pos`) after byte `from`.
async fn find_batch(
    reader: &mut Chunks<'_>,
    chunk: &[u8],
    chunk_pos: u64,
    from: u64,
    expected: Offset,
) -> Result<Option<(u64, Offset)>> {
    let mut i = 0;
    while let Some(found) = chunk[i..].windows(MAGIC.len()).position(|w| w == MAGIC) {
        let at = chunk_pos + (i + found) as u64;
        i += found + 1;
        if at <= from {
            continue;
        }
        let head = reader.at(at, HEADER_BYTES).await?;
        let Ok(header) = format::decode_header(&head) else {
            continue;
        };
        let bytes = reader.at(at, header.length as usize).await?;
        if format::validate_batch(&bytes).is_ok() && header.base_offset >= expected {
            return Ok(Some((at, header.base_offset)));
        }
    }
    Ok(None)
}

/// The decision table of the module doc: what the place where a segment's scan stopped means.
fn tail_verdict(
    active: bool,
    stop_pos: u64,
    stop: &Stop,
    after: &After,
    expected: Offset,
) -> Option<(Severity, String)> {
    let what = match stop {
        Stop::OffsetJump(found) if *found > expected => {
            return Some((
                Severity::Error,
                format!(
                    "batch has base offset {found}, expected {expected}: offsets \
                     {expected}..{found} are missing"
                ),
            ));
        }
        Stop::OffsetJump(found) => {
            return Some((
                Severity::Error,
                format!(
                    "batch has base offset {found}, expected {expected}: it repeats offsets \
                     this segment already holds"
                ),
            ));
        }
        Stop::Invalid(detail) => format!("invalid batch: {detail}"),
        Stop::End => "zeroed bytes".to_string(),
    };
    if let Some((at, offset)) = after.resumed {
        return Some((
            Severity::Error,
            format!(
                "{what}, but valid batches resume at byte {at} (offset {offset}): recovery \
                 would cut the data after the damage (bit rot, or, in the last segment close \
                 to its end, a crash during a multi-block group commit, whose batches were \
                 never acknowledged)"
            ),
        ));
    }
    let garbage_bytes = after.nonzero_end.saturating_sub(stop_pos);
    match (stop, active) {
        (Stop::End, _) if garbage_bytes == 0 => None,
        (Stop::Invalid(_), false) => Some((Severity::Error, what)),
        (Stop::End, false) => Some((
            Severity::Warning,
            format!(
                "{garbage_bytes} bytes of non-zero data after the last batch that are no batch \
                 (recovery ignores them)"
            ),
        )),
        _ => Some((
            Severity::Warning,
            format!(
                "torn tail: {what}. Recovery will cut {garbage_bytes} bytes at position \
                 {stop_pos}; offsets from {expected} on were never acknowledged"
            ),
        )),
    }
}

/// Sealed segments must end where the next one begins.
fn check_continuity(segments: &mut [SegmentReport]) {
    for i in 1..segments.len() {
        let (next_file, next_base) = (segments[i].file.clone(), segments[i].base_offset);
        let seg = &mut segments[i - 1];
        if seg.has_error() || seg.next_offset == next_base {
            continue;
        }
        let end = seg.next_offset;
        let message = if end < next_base {
            format!(
                "sealed segment ends at offset {end} but the next segment {next_file} starts at \
                 {next_base}: offsets {end}..{next_base} are missing"
            )
        } else {
            format!(
                "sealed segment runs to offset {end} but the next segment {next_file} starts at \
                 {next_base}: offsets {next_base}..{end} overlap"
            )
        };
        let position = seg.data_bytes;
        seg.issue(Severity::Error, Some(position), message);
    }
}

/// Reads and decodes a segment's index file; damage goes into `issues`.
async fn load_index(
    disk: &Disk,
    dir: &Path,
    base: Offset,
    issues: &mut Vec<Issue>,
) -> Result<Index> {
    let path = index_path(dir, base);
    let warn = |position: Option<u64>, message: String| Issue {
        severity: Severity::Warning,
        file: file_name(&path),
        position,
        message,
    };
    let file = disk.open_read(&path).await?;
    let size = file.size().await?;
    if size > INDEX_FILE_BYTES_MAX {
        file.close().await?;
        issues.push(warn(
            None,
            format!(
                "index file is {size} bytes, over the {INDEX_FILE_BYTES_MAX} bytes an index can \
                 need; not checked, the next open rebuilds it"
            ),
        ));
        return Ok(Index::new(base));
    }
    let bytes = if size == 0 {
        Bytes::new()
    } else {
        Bytes::copy_from_slice(&file.read_at(0, size as usize).await?)
    };
    file.close().await?;
    let (index, damaged) = Index::decode(base, &bytes);
    if damaged {
        // Decoding keeps whole blocks, so the first dropped block follows the kept entries.
        let block = index.len().div_ceil(ENTRIES_PER_BLOCK);
        issues.push(warn(
            Some((block * INDEX_BLOCK_BYTES) as u64),
            format!(
                "index block {block} is damaged (checksum, trailer or entry order); it and the \
                 blocks after it are ignored, and the next open rebuilds the index"
            ),
        ));
    }
    Ok(index)
}

/// Checks index entries against the batches as the scan meets them. Entries are ordered by
/// position, so one pass suffices.
struct EntryCheck<'a> {
    entries: &'a [IndexEntry],
    next: usize,
    file: String,
    issues: Vec<Issue>,
    not_shown: usize,
}

impl<'a> EntryCheck<'a> {
    fn new(entries: &'a [IndexEntry], file: String) -> EntryCheck<'a> {
        EntryCheck {
            entries,
            next: 0,
            file,
            issues: Vec::new(),
            not_shown: 0,
        }
    }

    /// The scan found a valid batch at store byte `pos`.
    fn batch_at(&mut self, pos: u64, h: &Header) {
        while let Some(e) = self.entries.get(self.next).copied() {
            if e.position > pos {
                break;
            }
            let k = self.next;
            self.next += 1;
            if e.position < pos {
                self.warn(
                    k,
                    format!(
                        "index entry {k} (offset {}) points at store byte {}, which is not the \
                         start of a batch",
                        e.offset, e.position
                    ),
                );
            } else if e.offset != h.base_offset {
                self.warn(
                    k,
                    format!(
                        "index entry {k} says offset {} at store byte {pos}, but the batch there \
                         has base offset {}",
                        e.offset, h.base_offset
                    ),
                );
            } else if e.raft_index != h.meta.raft_index {
                self.warn(
                    k,
                    format!(
                        "index entry {k} says Raft index {} at store byte {pos}, but the batch \
                         there has Raft index {}",
                        e.raft_index, h.meta.raft_index
                    ),
                );
            }
        }
    }

    /// The valid data ends at store byte `end`: entries not met point past it.
    fn past_end(&mut self, end: u64) {
        while let Some(e) = self.entries.get(self.next).copied() {
            let k = self.next;
            self.next += 1;
            self.warn(
                k,
                format!(
                    "index entry {k} (offset {}) points at store byte {}, past the end of the \
                     valid data at byte {end}",
                    e.offset, e.position
                ),
            );
        }
    }

    fn warn(&mut self, k: usize, message: String) {
        if self.issues.len() >= INDEX_ISSUES_MAX {
            self.not_shown += 1;
            return;
        }
        let position = (k / ENTRIES_PER_BLOCK * INDEX_BLOCK_BYTES
            + k % ENTRIES_PER_BLOCK * ENTRY_BYTES) as u64;
        self.issues.push(Issue {
            severity: Severity::Warning,
            file: self.file.clone(),
            position: Some(position),
            message,
        });
    }

    fn into_issues(mut self) -> Vec<Issue> {
        if self.not_shown > 0 {
            self.issues.push(Issue {
                severity: Severity::Warning,
                file: self.file.clone(),
                position: None,
                message: format!(
                    "{} more index entries disagree with the store; the next open rebuilds the \
                     index",
                    self.not_shown
                ),
            });
        }
        self.issues
    }
}

/// Reads a file forward in large chunks, so a scan issues few DMA reads.
struct Chunks<'a> {
    file: &'a File,
    len: u64,
    data: Bytes,
    data_pos: u64,
}

impl<'a> Chunks<'a> {
    fn new(file: &'a File, len: u64) -> Chunks<'a> {
        Chunks {
            file,
            len,
            data: Bytes::new(),
            data_pos: 0,
        }
    }

    /// `need` bytes from `pos`; fewer only where the file ends.
    async fn at(&mut self, pos: u64, need: usize) -> Result<Bytes> {
        let left = self.len.saturating_sub(pos);
        let need = (need as u64).min(left) as usize;
        if need == 0 {
            return Ok(Bytes::new());
        }
        let held_end = self.data_pos + self.data.len() as u64;
        if pos < self.data_pos || pos + need as u64 > held_end {
            let want = left.min(need.max(SCAN_CHUNK_BYTES) as u64) as usize;
            let read = self.file.read_at(pos, want).await?;
            self.data = Bytes::copy_from_slice(&read);
            self.data_pos = pos;
        }
        let start = (pos - self.data_pos) as usize;
        let end = (start + need).min(self.data.len());
        Ok(self.data.slice(start..end))
    }
}

/// Reads a `truncate-after` marker: an unfinished `truncate_after` the next open completes.
fn check_truncate_marker(dir: &Path) -> Result<Option<Issue>> {
    let path = dir.join(TRUNCATE_MARKER);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::from_io("reading", &path, e)),
    };
    let body = bytes.len().saturating_sub(4);
    let valid = (bytes.len() == 12 || (bytes.len() == 20 && bytes.starts_with(b"RAFT")))
        && crc32c::crc32c(&bytes[..body]).to_le_bytes() == bytes[body..];
    let issue = if valid {
        let message = if bytes.len() == 12 {
            let cut = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
            format!("an unfinished truncate_after: the next open removes offsets from {cut} on")
        } else {
            let keep = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
            match keep.checked_sub(1) {
                Some(k) => format!(
                    "an unfinished Raft truncation: the next open removes batches after Raft \
                     index {k}"
                ),
                None => "an unfinished Raft truncation: the next open removes every batch".into(),
            }
        };
        Issue {
            severity: Severity::Warning,
            file: TRUNCATE_MARKER.into(),
            position: None,
            message,
        }
    } else {
        // The marker is written atomically (rename), so a bad one is damage: open refuses it.
        Issue {
            severity: Severity::Error,
            file: TRUNCATE_MARKER.into(),
            position: Some(0),
            message: "truncate marker fails its checksum; the partition will not open".into(),
        }
    };
    Ok(Some(issue))
}

/// Refuses a path that is not an existing directory, before anything could create it.
fn require_dir(dir: &Path) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error::InvalidArgument(format!(
            "{} is not a directory",
            dir.display()
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::InvalidArgument(format!(
            "{} does not exist",
            dir.display()
        ))),
        Err(e) => Err(Error::from_io("inspecting", dir, e)),
    }
}

fn worst(issues: &[Issue]) -> Status {
    issues
        .iter()
        .map(|i| Status::from(i.severity))
        .max()
        .unwrap_or(Status::Ok)
}

fn is_zero(bytes: &[u8]) -> bool {
    // Word-sized compares: scanning a pre-allocated 1 GiB segment must stay fast.
    let words = bytes.chunks_exact(16);
    let rest = words.remainder();
    words
        .map(|w| u128::from_ne_bytes(w.try_into().expect("16 bytes")))
        .all(|w| w == 0)
        && rest.iter().all(|&b| b == 0)
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn write_issue(out: &mut dyn Write, issue: &Issue) -> io::Result<()> {
    match issue.position {
        Some(p) => writeln!(
            out,
            "    {}: {} at byte {p}: {}",
            issue.severity, issue.file, issue.message
        ),
        None => writeln!(
            out,
            "    {}: {}: {}",
            issue.severity, issue.file, issue.message
        ),
    }
}

fn time_range(first_ms: Option<i64>, last_ms: Option<i64>) -> String {
    match (first_ms, last_ms) {
        (Some(first), Some(last)) => format!("{}..{}", format_utc_ms(first), format_utc_ms(last)),
        _ => "-".to_string(),
    }
}

/// Milliseconds since the Unix epoch as an RFC 3339 UTC time (no date crate needed for this
/// one format).
fn format_utc_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000);
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        s / 3600,
        s % 3600 / 60,
        s % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01, computed in 400-year eras
/// (146 097 days each) that start on March 1st, so the leap day falls at the end of a year.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month as u32, day as u32)
}

fn offset_as_u64<S: Serializer>(offset: &Offset, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_u64(offset.get())
}

fn opt_offset_as_u64<S: Serializer>(
    offset: &Option<Offset>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match offset {
        Some(o) => s.serialize_some(&o.get()),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::format::{Batch, BatchMeta, encode_batch, encode_control};

    // ---- the decision table, without files ----

    fn after(nonzero_end: u64, resumed: Option<(u64, Offset)>) -> After {
        After {
            nonzero_end,
            resumed,
        }
    }

    fn invalid() -> Stop {
        Stop::Invalid("checksum mismatch".into())
    }

    #[test]
    fn zeros_to_the_end_of_the_file_are_a_clean_end_in_any_segment() {
        for active in [false, true] {
            assert_eq!(
                tail_verdict(active, 500, &Stop::End, &after(500, None), Offset(9)),
                None
            );
        }
    }

    #[test]
    fn an_invalid_batch_is_an_error_in_a_sealed_segment_and_a_torn_tail_in_the_last() {
        let (severity, message) =
            tail_verdict(false, 500, &invalid(), &after(560, None), Offset(9)).unwrap();
        assert_eq!(severity, Severity::Error);
        assert!(message.contains("checksum mismatch"), "{message}");

        let (severity, message) =
            tail_verdict(true, 500, &invalid(), &after(560, None), Offset(9)).unwrap();
        assert_eq!(severity, Severity::Warning);
        assert!(
            message.contains("will cut 60 bytes at position 500; offsets from 9 on"),
            "{message}"
        );
    }

    #[test]
    fn damage_followed_by_valid_data_is_an_error_even_in_the_last_segment() {
        for stop in [invalid(), Stop::End] {
            for active in [false, true] {
                let verdict = tail_verdict(
                    active,
                    500,
                    &stop,
                    &after(9000, Some((4096, Offset(20)))),
                    Offset(9),
                );
                let (severity, message) = verdict.unwrap();
                assert_eq!(severity, Severity::Error, "{stop:?} active={active}");
                assert!(
                    message.contains("resume at byte 4096 (offset 20)"),
                    "{message}"
                );
            }
        }
    }

    #[test]
    fn a_valid_batch_with_the_wrong_offset_is_an_error_either_way() {
        for active in [false, true] {
            let (severity, message) = tail_verdict(
                active,
                0,
                &Stop::OffsetJump(Offset(12)),
                &after(100, None),
                Offset(9),
            )
            .unwrap();
            assert_eq!(severity, Severity::Error);
            assert!(message.contains("offsets 9..12 are missing"), "{message}");
            let (severity, _) = tail_verdict(
                active,
                0,
                &Stop::OffsetJump(Offset(3)),
                &after(100, None),
                Offset(9),
            )
            .unwrap();
            assert_eq!(severity, Severity::Error);
        }
    }

    #[test]
    fn stray_bytes_after_zeros_are_a_warning() {
        let (severity, message) =
            tail_verdict(false, 500, &Stop::End, &after(4100, None), Offset(9)).unwrap();
        assert_eq!(severity, Severity::Warning);
        assert!(message.contains("3600 bytes of non-zero data"), "{message}");
        let (severity, message) =
            tail_verdict(true, 500, &Stop::End, &after(4100, None), Offset(9)).unwrap();
        assert_eq!(severity, Severity::Warning);
        assert!(message.contains("will cut 3600 bytes"), "{message}");
    }

    fn segment(base: u64, next: u64) -> SegmentReport {
        let mut s = SegmentReport::new(format!("{base:020}.store"), Offset(base), false);
        s.next_offset = Offset(next);
        s.data_bytes = (next - base) * 100;
        s
    }

    #[test]
    fn segments_must_continue_each_others_offsets() {
        let mut segs = vec![
            segment(0, 10),
            segment(10, 20),
            segment(25, 30),
            segment(28, 40),
        ];
        check_continuity(&mut segs);
        assert!(segs[0].issues.is_empty() && segs[3].issues.is_empty());
        assert_eq!(segs[1].issues.len(), 1);
        let gap = &segs[1].issues[0];
        assert_eq!(gap.severity, Severity::Error);
        assert_eq!(gap.position, Some(1000));
        assert!(
            gap.message.contains("offsets 20..25 are missing"),
            "{gap:?}"
        );
        assert!(segs[2].issues[0].message.contains("offsets 28..30 overlap"));
    }

    #[test]
    fn a_damaged_segment_gets_no_extra_gap_error() {
        let mut segs = vec![segment(0, 4), segment(10, 20)];
        segs[0].issue(Severity::Error, Some(400), "invalid batch".into());
        check_continuity(&mut segs);
        assert_eq!(segs[0].issues.len(), 1);
    }

    fn header_at(base: u64, raft_index: u64) -> Header {
        let meta = BatchMeta {
            raft_index,
            ..BatchMeta::default()
        };
        *Batch::parse(encode_batch(Offset(base), &[b"x"], meta))
            .unwrap()
            .header()
    }

    #[test]
    fn index_entries_must_point_at_batch_starts_with_their_offset_and_raft_index() {
        let entry = |offset, position, raft_index| IndexEntry {
            offset: Offset(offset),
            position,
            raft_index,
        };
        let entries = [
            entry(0, 0, 1),
            entry(1, 30, 2),  // inside the first batch
            entry(7, 61, 2),  // the batch there has offset 1
            entry(2, 122, 9), // the batch there has Raft index 3
            entry(5, 900, 6), // past the end
        ];
        let mut check = EntryCheck::new(&entries, "x.index".into());
        for (pos, (base, raft)) in [(0, (0, 1)), (61, (1, 2)), (122, (2, 3))] {
            check.batch_at(pos, &header_at(base, raft));
        }
        check.past_end(183);
        let issues = check.into_issues();
        let messages: Vec<&str> = issues.iter().map(|i| i.message.as_str()).collect();
        assert_eq!(issues.len(), 4, "{messages:#?}");
        assert!(messages[0].contains("not the start of a batch"));
        assert!(messages[1].contains("has base offset 1"));
        assert!(messages[2].contains("has Raft index 3"));
        assert!(messages[3].contains("past the end of the valid data at byte 183"));
        assert!(issues.iter().all(|i| i.severity == Severity::Warning));
        assert_eq!(
            issues[0].position,
            Some(16),
            "entry 1 is the second 16-byte slot"
        );
    }

    #[test]
    fn index_warnings_are_capped() {
        let entries: Vec<IndexEntry> = (0..300)
            .map(|i| IndexEntry {
                offset: Offset(i),
                position: i * 10,
                raft_index: 0,
            })
            .collect();
        let mut check = EntryCheck::new(&entries, "x.index".into());
        check.past_end(0);
        let issues = check.into_issues();
        assert_eq!(issues.len(), INDEX_ISSUES_MAX + 1);
        assert!(issues[INDEX_ISSUES_MAX].message.starts_with("290 more"));
        // Entry 258 is slot 3 of block 1.
        let mut check = EntryCheck::new(&entries, "x.index".into());
        check.warn(258, String::new());
        assert_eq!(check.issues[0].position, Some(4096 + 48));
    }

    #[test]
    fn timestamps_print_as_utc() {
        assert_eq!(format_utc_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_utc_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(format_utc_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(format_utc_ms(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn zero_detection_sees_a_single_byte_anywhere() {
        let mut buf = vec![0u8; 1000];
        assert!(is_zero(&buf));
        for at in [0, 15, 16, 999] {
            buf[at] = 1;
            assert!(!is_zero(&buf), "byte {at}");
            buf[at] = 0;
        }
    }

    // ---- hand-made segment files ----

    fn run<T>(fut: impl std::future::Future<Output = T>) -> T {
        crate::io::ensure_memlock(crate::io::memlock_bytes_wanted(1, 1 << 20))
            .expect("locked-memory limit");
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(1 << 20)
            .make()
            .expect("glommio executor")
            .run(fut)
    }

    /// A store of `count` one-record batches from `base` on (a control batch first when
    /// `control`), and a dense index of it. Returns the store bytes.
    fn write_segment(dir: &Path, base: u64, count: u64, control: bool) -> Vec<u8> {
        let meta = BatchMeta {
            timestamp_ms: 1_000,
            ..BatchMeta::default()
        };
        let mut store = Vec::new();
        let mut index = Index::new(Offset(base));
        if control {
            index.push(IndexEntry {
                offset: Offset(base),
                position: 0,
                raft_index: 0,
            });
            store.extend_from_slice(&encode_control(Offset(base), b"membership", meta));
        }
        for o in base..base + count {
            index.push(IndexEntry {
                offset: Offset(o),
                position: store.len() as u64,
                raft_index: 0,
            });
            store.extend_from_slice(&encode_batch(Offset(o), &[b"value"], meta));
        }
        std::fs::write(store_path(dir, Offset(base)), &store).unwrap();
        std::fs::write(
            index_path(dir, Offset(base)),
            index.encode_all_blocks().concat(),
        )
        .unwrap();
        store
    }

    #[test]
    fn a_healthy_hand_made_partition_counts_batches_records_and_control_batches() {
        let dir = crate::io::unit_test_dir("check-healthy");
        write_segment(&dir, 100, 5, true);
        let last = write_segment(&dir, 105, 3, false);
        let report = run(check_partition(&dir)).unwrap();
        assert_eq!(report.status, Status::Ok, "{report:#?}");
        assert_eq!(report.segments.len(), 2);
        let first = &report.segments[0];
        assert_eq!(
            (first.batches, first.control_batches, first.records),
            (6, 1, 5)
        );
        assert_eq!(first.next_offset, Offset(105));
        assert_eq!(first.index_entries, 6);
        assert_eq!(first.first_timestamp_ms, Some(1_000));
        assert!(!first.active && report.segments[1].active);
        assert_eq!(report.segments[1].data_bytes, last.len() as u64);
        assert_eq!(report.lowest_offset, Some(Offset(100)));
        assert_eq!(report.next_offset, Some(Offset(108)));
        assert_eq!(report.records, 8);
    }

    #[test]
    fn a_gap_between_segments_is_an_error_on_the_earlier_one() {
        let dir = crate::io::unit_test_dir("check-gap");
        let first = write_segment(&dir, 0, 4, false);
        write_segment(&dir, 6, 2, false);
        let report = run(check_partition(&dir)).unwrap();
        assert_eq!(report.status, Status::Error);
        assert_eq!(report.errors, 1);
        let issue = &report.segments[0].issues[0];
        assert_eq!(issue.file, "00000000000000000000.store");
        assert_eq!(issue.position, Some(first.len() as u64));
        assert!(
            issue.message.contains("offsets 4..6 are missing"),
            "{issue:?}"
        );
    }

    #[test]
    fn a_zeroed_hole_in_the_last_segment_before_valid_data_is_an_error() {
        let dir = crate::io::unit_test_dir("check-hole");
        let mut store = write_segment(&dir, 0, 6, false);
        let batch = store.len() / 6;
        store[2 * batch..3 * batch].fill(0);
        std::fs::write(store_path(&dir, Offset(0)), &store).unwrap();
        let report = run(check_partition(&dir)).unwrap();
        let issues = &report.segments[0].issues;
        assert_eq!(issues[0].severity, Severity::Error, "{issues:#?}");
        assert_eq!(issues[0].position, Some(2 * batch as u64));
        assert!(
            issues[0]
                .message
                .starts_with("zeroed bytes, but valid batches resume")
        );
        assert_eq!(report.errors, 1, "no index noise: {issues:#?}");
    }

    #[test]
    fn index_damage_with_valid_checksums_is_a_warning() {
        let dir = crate::io::unit_test_dir("check-index-lies");
        write_segment(&dir, 0, 3, false);
        // A self-consistent index (good CRC, ordered) whose second entry has the wrong offset.
        let mut index = Index::new(Offset(0));
        for (offset, position) in [(0, 0), (2, 65)] {
            index.push(IndexEntry {
                offset: Offset(offset),
                position,
                raft_index: 0,
            });
        }
        std::fs::write(
            index_path(&dir, Offset(0)),
            index.encode_all_blocks().concat(),
        )
        .unwrap();
        let report = run(check_partition(&dir)).unwrap();
        assert_eq!(report.status, Status::Warning, "{report:#?}");
        let issue = &report.segments[0].issues[0];
        assert_eq!(issue.file, "00000000000000000000.index");
        assert!(issue.message.contains("has base offset 1"), "{issue:?}");
    }

    #[test]
    fn orphan_index_missing_index_marker_and_foreign_files_are_reported_not_fatal() {
        let dir = crate::io::unit_test_dir("check-odd-files");
        write_segment(&dir, 0, 2, false);
        write_segment(&dir, 2, 2, false);
        std::fs::remove_file(index_path(&dir, Offset(2))).unwrap();
        std::fs::write(index_path(&dir, Offset(50)), [0u8; 4096]).unwrap();
        std::fs::write(dir.join("raft-meta"), b"meta").unwrap();
        std::fs::write(dir.join("notes.txt"), b"foreign").unwrap();
        // A deletion a crash interrupted (the node removes it at the next open): not foreign.
        std::fs::write(dir.join("00000000000000000000.store.deleted"), b"old").unwrap();
        let mut marker = 3u64.to_le_bytes().to_vec();
        marker.extend(crc32c::crc32c(&marker).to_le_bytes());
        std::fs::write(dir.join(TRUNCATE_MARKER), marker).unwrap();

        let report = run(check_partition(&dir)).unwrap();
        assert_eq!(report.status, Status::Warning, "{report:#?}");
        // `raft-meta` belongs to a replicated partition; anything else is foreign.
        assert_eq!(report.other_files, vec!["notes.txt".to_string()]);
        assert!(
            report.segments[1].issues[0]
                .message
                .contains("index file is missing")
        );
        let files: Vec<&str> = report.issues.iter().map(|i| i.file.as_str()).collect();
        assert_eq!(files, ["00000000000000000050.index", TRUNCATE_MARKER]);
        assert!(report.issues[1].message.contains("offsets from 3 on"));
    }

    #[test]
    fn an_empty_directory_is_an_empty_partition_but_not_a_data_directory() {
        let dir = crate::io::unit_test_dir("check-empty");
        let report = run(check_partition(&dir)).unwrap();
        assert_eq!(report.status, Status::Ok);
        assert!(report.segments.is_empty() && report.other_files.is_empty());
        assert_eq!(report.next_offset, None);

        let err = run(check_data_dir(&dir)).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        assert!(
            err.to_string().contains("not a corelog data directory"),
            "{err}"
        );
        assert!(
            std::fs::read_dir(&dir).unwrap().next().is_none(),
            "no probe file left behind"
        );
    }

    #[test]
    fn data_directory_partitions_are_checked_in_numeric_order() {
        let dir = crate::io::unit_test_dir("check-data-dir-order");
        for p in ["10", "2", "0"] {
            let part = dir.join(PARTITIONS_DIR).join(p);
            std::fs::create_dir_all(&part).unwrap();
            write_segment(&part, 0, 1, false);
        }
        let reports = run(check_data_dir(&dir)).unwrap();
        let names: Vec<String> = reports.iter().map(|(p, _)| file_name(p)).collect();
        assert_eq!(names, ["0", "2", "10"]);
        let summary = Summary::of(&reports);
        assert_eq!((summary.partitions, summary.records), (3, 3));

        let mut json = Vec::new();
        write_json(&mut json, &reports).unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(doc["summary"]["records"], 3);
        assert_eq!(doc["partitions"][2]["segments"][0]["base_offset"], 0);
    }
}

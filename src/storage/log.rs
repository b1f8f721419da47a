//! The log of one partition: ordered segments, the last one active, with group commit.
//!
//! # Durability contract
//! With `fsync = always` (the default) an append resolves only after its batch was written with
//! direct I/O **and** an `fdatasync` that started after that write completed has succeeded.
//! Appends resolve in offset order. Readers only ever see batches that are durable (with
//! `interval:MS`, that were written).
//!
//! # Write path (group commit)
//! `append*` encodes the batch (CRC32C included) into a bounded in-memory queue and waits. One
//! flusher task per log drains the queue: it copies up to `flush_bytes_max` of batches behind the
//! active segment's partial tail block into one aligned DMA buffer and issues **one** write. Once
//! the write completes, **one** `fdatasync` for it runs in a task of its own while the flusher
//! already writes the next group commit: a sync covers every write that completed before it was
//! issued, so it never waits for a later one, and the disk works on one commit's data while it
//! flushes the previous one's. Syncs are chained: each group commit publishes (becomes
//! readable) and acknowledges its appends only after its own sync *and* every earlier one. A
//! commit whose write had completed before the previous commit's sync started (same store) is
//! covered by that sync and issues none of its own, so on a slow disk the writes made while
//! one sync runs share the next.
//! The tail block (the last, partially filled 4 KiB block) is kept in memory and rewritten by
//! the next write; a rewrite carries identical bytes for everything already acknowledged, so a
//! torn rewrite — or one racing the previous commit's sync — can only damage new, unacked
//! bytes. Writes never overlap each other, so two writes of one block are never in flight
//! together.
//!
//! # Recovery (decision table)
//! | what open finds                                   | what it does                           |
//! |---------------------------------------------------|----------------------------------------|
//! | `*.index` without its `*.store`, `*.tmp` files    | delete them                            |
//! | sealed segment: batches from its last index entry  | trust it (cheap check: last batch only)|
//! | are valid and end at the next segment's base       |                                        |
//! | sealed segment: invalid batch or offset gap        | `Corrupt { segment, position }`        |
//! | active segment: index entry disagrees with store   | drop entries back to one that agrees   |
//! | active segment: invalid bytes after the last valid | cut there (torn tail of an unacked     |
//! | batch                                              | flush), zero the rest of the block     |
//! | a `truncate-after` marker                          | finish that truncation                 |
//!
//! Open reads each sealed segment's last index block and last batches, and the active
//! segment's unindexed tail, so open time does not grow with the total log size.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::sync::Semaphore;

use crate::error::{Error, Result};
use crate::io::{self, BLOCK_BYTES, Disk, File, align_down, align_up};
use crate::storage::config::{FsyncPolicy, LogConfig};
use crate::storage::format::{self, Batch, BatchMeta};
use crate::storage::index::{ENTRIES_PER_BLOCK, INDEX_BLOCK_BYTES, Index, IndexEntry};
use crate::storage::segment::{
    self, INDEX_SUFFIX, STORE_SUFFIX, Scan, ScanStop, Segment, SegmentTail, parse_segment_name,
    scan_store,
};
use crate::sync::{Event, OneshotSender, oneshot};
use crate::types::Offset;

/// Marks an unfinished `truncate_after`: it holds the first offset to remove.
const TRUNCATE_MARKER: &str = "truncate-after";
/// A Raft cut's marker starts with this tag, then holds `keep + 1` (0: nothing kept).
const RAFT_MARKER_TAG: [u8; 8] = *b"RAFT\0\0\0\0";

/// An unfinished cut, as recorded in the truncate marker.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Marker {
    /// `truncate_after`: the first offset to remove.
    Offset(Offset),
    /// `truncate_raft_after`: the Raft index of the last batch kept.
    RaftAfter(Option<u64>),
}
/// How many index entries open walks back before rebuilding the active index from scratch.
const INDEX_BACKTRACK_MAX: usize = 8;
/// Bytes per chunk handed out by [`LogReader`].
const READER_CHUNK_BYTES: usize = 1 << 20;

/// Told about every group commit (stats: the node records flush latency per partition).
pub trait LogObserver {
    /// One write (and, with `fsync = always`, the `fdatasync` that covers it: its own, or an
    /// earlier commit's that started after this write completed) of `batches` batches and
    /// `bytes` bytes took `duration`, from the write's start to the data being durable.
    fn flushed(&self, bytes: u64, batches: usize, duration: Duration);
}

/// One record read back from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub offset: Offset,
    pub value: Bytes,
}

/// An append whose offsets are assigned; [`AppendTicket::durable`] waits for its ack.
pub struct AppendTicket {
    base: Offset,
    /// The batch as queued (and as it will sit in the segment).
    batch: Bytes,
    done: crate::sync::OneshotReceiver<Result<Offset>>,
}

impl AppendTicket {
    /// The offset the batch's first record got (valid only if the append succeeds).
    pub fn base_offset(&self) -> Offset {
        self.base
    }

    /// The batch exactly as it is written: header (with the assigned base offset and the
    /// CRC) and records. A cheap clone of the queued bytes.
    pub fn batch(&self) -> Batch {
        Batch::from_encoded(self.batch.clone())
    }

    /// Resolves with the base offset once the batch is durable, or with why it failed.
    pub async fn durable(self) -> Result<Offset> {
        self.done.await.unwrap_or(Err(Error::Closed))
    }
}

/// A partition's log. A cheap handle (`Rc`): clone it into every task of the owning core.
#[derive(Clone)]
pub struct Log {
    shared: Rc<Shared>,
}

struct Shared {
    dir: PathBuf,
    config: LogConfig,
    disk: Disk,
    state: RefCell<State>,
    /// Appends were queued, or close was requested.
    work: Event,
    /// Queue space was freed.
    space: Event,
    /// Durable data advanced, or the log closed or stopped.
    committed: Event,
    /// The flusher exited.
    flusher_done: Event,
    /// Serialises everything that writes files: flushes, rolls, truncation, retention, close.
    io_lock: Semaphore,
    observer: RefCell<Option<Rc<dyn LogObserver>>>,
    /// The newest group commit whose `fdatasync` is pending or running; each waits for the
    /// one before it, so commits publish (and ack) in offset order.
    sync_tail: RefCell<Option<Rc<SyncLink>>>,
    /// Group-commit writes completed so far; each [`Written`] carries its number.
    writes_done: std::cell::Cell<u64>,
    /// The newest successful `fdatasync` of a group commit: the writes numbered up to this had
    /// completed when it started, so those to its store are durable.
    synced_through: RefCell<Option<(u64, std::rc::Weak<File>)>>,
    /// A failed write stops the log instead of handing the failed offsets out again
    /// ([`Log::stop_on_write_error`]).
    stop_on_write_error: std::cell::Cell<bool>,
    /// Stored batches encoded again because their base offset was not the one they got here
    /// ([`Log::submit_stored`]); logged at 1, 2, 4, 8, ... so a run of them cannot flood the
    /// log.
    stored_reencoded: std::cell::Cell<u64>,
}

/// Whether the `n`th occurrence of something (from 1) is logged: 1, 2, 4, 8, ...
fn log_occurrence(n: u64) -> bool {
    n.is_power_of_two()
}

/// One group commit's place in the `fdatasync` chain.
struct SyncLink {
    done: std::cell::Cell<bool>,
    finished: Event,
}

impl SyncLink {
    async fn wait(&self) {
        loop {
            let seen = self.finished.generation();
            if self.done.get() {
                return;
            }
            self.finished.wait(seen).await;
        }
    }

    fn finish(&self) {
        self.done.set(true);
        self.finished.notify();
    }
}

/// What a completed write leaves for its `fdatasync` and publication.
struct Written {
    /// Its number among completed writes ([`Shared::writes_done`]).
    seq: u64,
    store: Rc<File>,
    start: u64,
    new_end: u64,
    bytes: u64,
    started: Instant,
}

struct State {
    /// Oldest first; the last one is active. Never empty while open.
    segments: Vec<Rc<Segment>>,
    /// The active store's last partial block, `[align_down(end), end)`.
    tail: Vec<u8>,
    /// Store bytes of the active segment below this may hold garbage from a failed write; the
    /// next write covers them with zeros.
    dirty_until: u64,
    /// The active store is reserved (`fallocate`d) up to here.
    reserved: u64,
    /// The writer's view of the active segment: where the next write starts and which offset
    /// it continues. Ahead of the segment's (durable, readable) end while a written group
    /// commit waits for its `fdatasync`.
    written_end: u64,
    written_next: Offset,
    /// Batches written but not yet published (their `fdatasync` is pending).
    unpublished_batches: usize,
    /// The offset the next append gets.
    next_offset: Offset,
    /// Every offset below this is durable.
    durable: Offset,
    /// Replicated partitions: readers see only offsets below this (the Raft high watermark),
    /// set by [`Log::set_high_watermark`]. `None`: readers see everything durable.
    gate: Option<Offset>,
    queue: VecDeque<Pending>,
    queue_bytes: usize,
    /// Recent durable batches, oldest first, contiguous up to `durable`.
    cache: VecDeque<Batch>,
    cache_bytes: usize,
    /// Interval fsync: written but not yet synced data exists since this instant.
    unsynced_since: Option<Instant>,
    last_sync: Instant,
    stopped: Option<String>,
    closing: bool,
    closed: bool,
    flusher_running: bool,
}

struct Pending {
    batch: Bytes,
    base: Offset,
    next: Offset,
    timestamp_ms: i64,
    raft_index: u64,
    done: OneshotSender<Result<Offset>>,
}

impl State {
    fn active(&self) -> &Rc<Segment> {
        self.segments
            .last()
            .expect("a log always has an active segment")
    }

    fn lowest(&self) -> Offset {
        self.segments[0].base()
    }

    /// The end of what readers may see: durable, and below the high watermark if gated; never
    /// below the start of the log. A log reset past its gate (a Raft snapshot being installed:
    /// everything below the new start is gone, the gate moves once the batches are durable)
    /// reads as empty at its start, not as out of range everywhere.
    fn visible(&self) -> Offset {
        let end = match self.gate {
            Some(gate) => gate.min(self.durable),
            None => self.durable,
        };
        end.max(self.lowest())
    }

    fn out_of_range(&self, offset: Offset) -> Error {
        let lowest = self.lowest();
        Error::OffsetOutOfRange {
            offset,
            lowest,
            highest: (self.visible() > lowest).then(|| Offset(self.visible().get() - 1)),
        }
    }

    /// New appends are taken only while open and not stopped.
    fn writable(&self) -> Result<()> {
        self.not_stopped()?;
        if self.closing || self.closed {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// Queued appends are still written while closing, but never after a fatal error.
    fn not_stopped(&self) -> Result<()> {
        match &self.stopped {
            Some(reason) => Err(Error::Stopped {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    fn push_cache(&mut self, batch: Batch, max_bytes: usize) {
        self.cache_bytes += batch.len();
        self.cache.push_back(batch);
        while self.cache_bytes > max_bytes {
            match self.cache.pop_front() {
                Some(b) => self.cache_bytes -= b.len(),
                None => break,
            }
        }
    }
}

impl Log {
    /// Opens (recovering) or creates the log in `dir`.
    pub async fn open(dir: impl AsRef<Path>, config: LogConfig) -> Result<Log> {
        Log::open_with_disk(dir, config, Disk::new()).await
    }

    /// Like [`Log::open`] with a given [`Disk`] (tests inject faults this way).
    pub async fn open_with_disk(
        dir: impl AsRef<Path>,
        config: LogConfig,
        disk: Disk,
    ) -> Result<Log> {
        config.validate()?;
        // glommio's directory handles fail on relative paths (EBADF): anchor it here.
        let dir = std::path::absolute(dir.as_ref())
            .map_err(|e| Error::from_io("resolving", dir.as_ref(), e))?;
        disk.prepare_dir(&dir).await?;
        let recovered = recover(&dir, &config, &disk).await?;
        let durable = recovered.active_next;
        let mut state = State {
            segments: recovered.segments,
            tail: recovered.tail,
            dirty_until: 0,
            reserved: recovered.reserved,
            written_end: recovered.active_end,
            written_next: durable,
            unpublished_batches: 0,
            next_offset: durable,
            durable,
            gate: None,
            queue: VecDeque::new(),
            queue_bytes: 0,
            cache: VecDeque::new(),
            cache_bytes: 0,
            unsynced_since: None,
            last_sync: Instant::now(),
            stopped: None,
            closing: false,
            closed: false,
            flusher_running: true,
        };
        for batch in recovered.cache {
            state.push_cache(batch, config.tail_cache_bytes_max);
        }
        let shared = Rc::new(Shared {
            dir,
            config,
            disk,
            state: RefCell::new(state),
            work: Event::new(),
            space: Event::new(),
            committed: Event::new(),
            flusher_done: Event::new(),
            io_lock: Semaphore::new(1),
            observer: RefCell::new(None),
            sync_tail: RefCell::new(None),
            writes_done: std::cell::Cell::new(0),
            synced_through: RefCell::new(None),
            stop_on_write_error: std::cell::Cell::new(false),
            stored_reencoded: std::cell::Cell::new(0),
        });
        match recovered.truncate_marker {
            Some(Marker::Offset(cut)) => {
                let _permit = shared.lock().await?;
                if cut < shared.state.borrow().durable {
                    match shared.plan_cut(cut).await {
                        Ok(plan) => shared.apply_cut(plan).await?,
                        Err(Error::InvalidArgument(why)) => {
                            log::warn!("{}: ignoring truncate marker: {why}", shared.dir.display())
                        }
                        Err(e) => return Err(e),
                    }
                }
                shared.clear_truncate_marker().await?;
            }
            Some(Marker::RaftAfter(keep)) => {
                let _permit = shared.lock().await?;
                let plan = shared.plan_raft_cut(keep).await?;
                shared.apply_cut(plan).await?;
                shared.clear_truncate_marker().await?;
            }
            None => {}
        }
        glommio::spawn_local(flusher(shared.clone())).detach();
        Ok(Log { shared })
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    pub fn config(&self) -> &LogConfig {
        &self.shared.config
    }

    /// Reports every group commit to `observer`.
    pub fn set_observer(&self, observer: Rc<dyn LogObserver>) {
        *self.shared.observer.borrow_mut() = Some(observer);
    }

    /// Appends one record; resolves with its offset once durable.
    pub async fn append(&self, value: &[u8]) -> Result<Offset> {
        self.append_batch(&[value]).await
    }

    /// Appends records as one batch; resolves with the first record's offset once durable.
    pub async fn append_batch<V: AsRef<[u8]>>(&self, values: &[V]) -> Result<Offset> {
        let meta = BatchMeta {
            timestamp_ms: io::now_ms(),
            term: 0,
            raft_index: 0,
        };
        self.append_with_meta(values, meta).await
    }

    /// Appends records as one batch carrying the given header metadata (Raft term and index).
    pub async fn append_with_meta<V: AsRef<[u8]>>(
        &self,
        values: &[V],
        meta: BatchMeta,
    ) -> Result<Offset> {
        self.submit_batch(values, meta).await?.durable().await
    }

    /// Queues records as one batch and returns as soon as their offsets are assigned (after
    /// waiting for queue space); the ticket resolves once they are durable. Callers that must
    /// keep an order between batches (a connection's pipelined produce requests) submit one
    /// after the other and await the tickets concurrently.
    pub async fn submit_batch<V: AsRef<[u8]>>(
        &self,
        values: &[V],
        meta: BatchMeta,
    ) -> Result<AppendTicket> {
        if values.is_empty() {
            return Err(Error::InvalidArgument(
                "a batch needs at least one record".into(),
            ));
        }
        let len = format::batch_len(values);
        let count = values.len() as u64;
        self.shared
            .enqueue(len, meta, count, |base| {
                format::encode_batch(base, values, meta)
            })
            .await
    }

    /// Appends a control batch (no records, no offset), e.g. a Raft membership entry. Resolves
    /// with the offset the next record will get.
    pub async fn append_control(&self, payload: &[u8], meta: BatchMeta) -> Result<Offset> {
        let len = format::HEADER_BYTES + payload.len();
        self.shared
            .enqueue(len, meta, 0, |base| {
                format::encode_control(base, payload, meta)
            })
            .await?
            .durable()
            .await
    }

    /// The record at `offset`.
    pub async fn read(&self, offset: Offset) -> Result<Record> {
        let records = self.read_from(offset, 1).await?;
        match records.into_iter().next() {
            Some(r) if r.offset == offset => Ok(r),
            _ => Err(self.shared.state.borrow().out_of_range(offset)),
        }
    }

    /// Records from `offset` on, about `max_bytes` of them (whole batches; at least one record
    /// when `offset` is below the end). Empty when `offset` is the next offset to be written.
    pub async fn read_from(&self, offset: Offset, max_bytes: usize) -> Result<Vec<Record>> {
        let batches = self.read_batches(offset, max_bytes).await?;
        let mut out = Vec::new();
        for batch in &batches {
            for (o, value) in batch.records() {
                if o >= offset {
                    out.push(Record { offset: o, value });
                }
            }
        }
        Ok(out)
    }

    /// Validated batches holding offsets from `offset` on (the first may start before it),
    /// about `max_bytes` of them. Tail reads are served from memory.
    pub async fn read_batches(&self, offset: Offset, max_bytes: usize) -> Result<Vec<Batch>> {
        self.shared.read_batches(offset, max_bytes).await
    }

    /// Resolves once `offset` is readable (durable), or with `Closed`/`Stopped`.
    pub async fn wait_for(&self, offset: Offset) -> Result<()> {
        loop {
            let seen = self.shared.committed.generation();
            {
                let st = self.shared.state.borrow();
                if st.visible() > offset {
                    return Ok(());
                }
                if st.closed || st.closing {
                    return Err(Error::Closed);
                }
                if let Some(reason) = &st.stopped {
                    return Err(Error::Stopped {
                        reason: reason.clone(),
                    });
                }
            }
            self.shared.committed.wait(seen).await;
        }
    }

    /// The oldest offset still held.
    pub fn lowest_offset(&self) -> Offset {
        self.shared.state.borrow().lowest()
    }

    /// The newest durable offset, `None` when the log holds no records.
    pub fn highest_offset(&self) -> Option<Offset> {
        let st = self.shared.state.borrow();
        (st.visible() > st.lowest()).then(|| Offset(st.visible().get() - 1))
    }

    /// The end of what readers can see: the first offset that is not durable yet, or for a
    /// replicated partition the high watermark if that is lower.
    pub fn durable_offset(&self) -> Offset {
        self.shared.state.borrow().visible()
    }

    /// The first offset that is not durable yet, whatever the high watermark.
    pub fn written_offset(&self) -> Offset {
        self.shared.state.borrow().durable
    }

    /// Replicated partitions: readers see offsets below `offset` only (the Raft high
    /// watermark, advanced as entries commit). Wakes waiting readers.
    pub fn set_high_watermark(&self, offset: Offset) {
        self.shared.state.borrow_mut().gate = Some(offset);
        self.shared.committed.notify();
    }

    /// Queues an already encoded records body (a Raft entry's records) as one batch; see
    /// [`Log::submit_batch`]. The body is checked to hold exactly `count` records.
    pub async fn submit_records_body(
        &self,
        count: u32,
        body: &[u8],
        meta: BatchMeta,
    ) -> Result<AppendTicket> {
        if count == 0 {
            return Err(Error::InvalidArgument(
                "a batch needs at least one record".into(),
            ));
        }
        format::check_records_body(count, body)
            .map_err(|e| Error::InvalidArgument(format!("records body: {e}")))?;
        let len = format::HEADER_BYTES + body.len();
        self.shared
            .enqueue(len, meta, count as u64, |base| {
                format::encode_records_body(base, count, body, meta)
            })
            .await
    }

    /// Queues a records body built with [`format::HEADER_BYTES`] of room in front of it
    /// (`buf` = room + `count` records): the header is written into the room, so the records
    /// are not copied again on their way to the write buffer.
    pub async fn submit_in_place(
        &self,
        count: u32,
        buf: bytes::BytesMut,
        meta: BatchMeta,
    ) -> Result<AppendTicket> {
        if count == 0 {
            return Err(Error::InvalidArgument(
                "a batch needs at least one record".into(),
            ));
        }
        let body = buf.get(format::HEADER_BYTES..).ok_or_else(|| {
            Error::InvalidArgument("no room for a batch header before the records".into())
        })?;
        format::check_records_body(count, body)
            .map_err(|e| Error::InvalidArgument(format!("records body: {e}")))?;
        let len = buf.len();
        self.shared
            .enqueue(len, meta, count as u64, |base| {
                format::encode_in_place(buf, base, count, meta)
            })
            .await
    }

    /// Queues a records batch that is already encoded and checked (a [`Batch`] is parsed,
    /// CRC included, or made by this process), e.g. the leader's copy of a Raft entry as it
    /// arrived in AppendEntries: when its header names the offset it gets here, its bytes go to
    /// disk unchanged, with no copy and no second CRC. A batch whose base offset differs (it
    /// never should on a Raft follower, whose offsets follow the leader's) is encoded again
    /// with the offset it gets here, the rest of its header kept.
    pub async fn submit_stored(&self, batch: &Batch) -> Result<AppendTicket> {
        if batch.is_control() || batch.record_count() == 0 {
            return Err(Error::InvalidArgument(
                "a records batch needs at least one record".into(),
            ));
        }
        let header = *batch.header();
        let len = batch.len();
        let bytes = batch.bytes().clone();
        self.shared
            .enqueue(len, header.meta, u64::from(header.record_count), |base| {
                if base == header.base_offset {
                    return bytes;
                }
                let n = self.shared.stored_reencoded.get() + 1;
                self.shared.stored_reencoded.set(n);
                if log_occurrence(n) {
                    log::warn!(
                        "{}: a batch for offset {} lands at {}; encoding it again ({n} so far)",
                        self.shared.dir.display(),
                        header.base_offset,
                        base
                    );
                }
                format::encode_records_body(
                    base,
                    header.record_count,
                    &bytes[format::HEADER_BYTES..],
                    header.meta,
                )
            })
            .await
    }

    /// Makes a failed write stop the log (every later append fails with
    /// [`Error::Stopped`] until it is reopened), as a failed `fdatasync` does, instead of
    /// handing the failed batches' offsets out again. A Raft log needs this: the entries
    /// after a failed one must never take its place (a hole in the Raft log); the Raft store
    /// sets it.
    pub fn stop_on_write_error(&self) {
        self.shared.stop_on_write_error.set(true);
    }

    /// Queues a control batch (no records, no offset); the ticket resolves once durable.
    pub async fn submit_control(&self, payload: &[u8], meta: BatchMeta) -> Result<AppendTicket> {
        let len = format::HEADER_BYTES + payload.len();
        self.shared
            .enqueue(len, meta, 0, |base| {
                format::encode_control(base, payload, meta)
            })
            .await
    }

    /// Durable batches, control batches included, from the one with Raft index `from` on,
    /// about `max_bytes` of them (at least one if any exists). Ignores the high watermark: this
    /// is how the Raft log store reads its entries.
    pub async fn read_raft(&self, from: u64, max_bytes: usize) -> Result<Vec<Batch>> {
        self.shared.read_raft(from, max_bytes).await
    }

    /// The header of the newest durable batch, `None` when the log holds none.
    pub async fn last_batch_header(&self) -> Result<Option<format::Header>> {
        self.shared.last_batch_header().await
    }

    /// Removes every batch after the one with Raft index `keep` (Raft conflict resolution);
    /// `None` removes everything. Like [`Log::truncate_after`]: queued appends are made durable
    /// first, the cut is durable on return and finished by the next open after a crash.
    pub async fn truncate_raft_after(&self, keep: Option<u64>) -> Result<()> {
        let _permit = self.shared.lock().await?;
        self.shared.flush_queued().await;
        self.shared.state.borrow().writable()?;
        match self.shared.last_batch_header().await? {
            None => return Ok(()),
            Some(last) if keep.is_some_and(|k| last.meta.raft_index <= k) => return Ok(()),
            Some(_) => {}
        }
        let plan = self.shared.plan_raft_cut(keep).await?;
        if let CutPlan::Within { seg, position, .. } = &plan
            && Rc::ptr_eq(seg, self.shared.state.borrow().active())
            && *position == seg.end()
        {
            return Ok(());
        }
        self.shared
            .set_truncate_marker(Marker::RaftAfter(keep))
            .await?;
        self.shared.apply_cut(plan).await?;
        self.shared.clear_truncate_marker().await
    }

    /// Replicated partitions (whose retention goes through Raft): the Raft index up to which
    /// whole sealed segments break the size or age limits — the prefix retention would remove
    /// — or `None` when nothing would go.
    pub async fn retention_cut(
        &self,
        bytes_max: Option<u64>,
        age_ms: Option<u64>,
    ) -> Result<Option<u64>> {
        let segments: Vec<Rc<Segment>> = self.shared.state.borrow().segments.clone();
        let now = io::now_ms();
        let mut total: u64 = segments.iter().map(|s| s.end()).sum();
        let mut k = 0;
        while k + 1 < segments.len() {
            let too_big = bytes_max.is_some_and(|max| total > max);
            let too_old = age_ms.is_some_and(|ms| {
                segments[k].newest_timestamp_ms() < now.saturating_sub(ms as i64)
            });
            if !(too_big || too_old) {
                break;
            }
            total -= segments[k].end();
            k += 1;
        }
        if k == 0 {
            return Ok(None);
        }
        Ok(segments[k]
            .first_raft_index()
            .await?
            .and_then(|first| first.checked_sub(1)))
    }

    /// Removes whole sealed segments whose batches all have Raft indexes at or below `upto`
    /// (Raft log purge). The active segment is never removed.
    pub async fn purge_raft(&self, upto: u64) -> Result<usize> {
        let _permit = self.shared.lock().await?;
        let mut removed = 0;
        loop {
            let (first, second) = {
                let st = self.shared.state.borrow();
                if st.segments.len() < 2 {
                    break;
                }
                (st.segments[0].clone(), st.segments[1].clone())
            };
            match second.first_raft_index().await? {
                Some(next_first) if next_first <= upto.saturating_add(1) => {
                    self.shared.remove_oldest(first, Some(next_first)).await?;
                    removed += 1;
                }
                _ => break,
            }
        }
        if removed > 0 {
            self.shared.disk.sync_dir(&self.shared.dir).await?;
        }
        Ok(removed)
    }

    /// Bytes of appends queued and not yet durable (bounded by `queue_bytes_max`).
    pub fn queued_bytes(&self) -> usize {
        self.shared.state.borrow().queue_bytes
    }

    /// Number of segments (sealed and active).
    pub fn segment_count(&self) -> usize {
        self.shared.state.borrow().segments.len()
    }

    /// Bytes of batches held, over all segments.
    pub fn size_bytes(&self) -> u64 {
        self.shared
            .state
            .borrow()
            .segments
            .iter()
            .map(|s| s.end())
            .sum()
    }

    /// Removes whole sealed segments whose records are all below `lowest` (the active segment
    /// is never removed).
    pub async fn truncate(&self, lowest: Offset) -> Result<()> {
        let _permit = self.shared.lock().await?;
        loop {
            let victim = {
                let st = self.shared.state.borrow();
                let first = &st.segments[0];
                (st.segments.len() > 1 && first.next_offset() <= lowest).then(|| first.clone())
            };
            match victim {
                Some(seg) => self.shared.remove_oldest(seg, None).await?,
                None => break,
            }
        }
        self.shared.disk.sync_dir(&self.shared.dir).await
    }

    /// Removes every record after `offset` (Raft conflict resolution): `offset` stays, the next
    /// append gets `offset + 1`. The cut must fall at a batch boundary. Queued appends are made
    /// durable first. The cut is durable when this returns, and is finished by the next open if
    /// the process dies half-way.
    pub async fn truncate_after(&self, offset: Offset) -> Result<()> {
        let _permit = self.shared.lock().await?;
        self.shared.flush_queued().await;
        let cut = offset.plus(1);
        {
            let st = self.shared.state.borrow();
            st.writable()?;
            if cut < st.lowest() || cut > st.durable {
                return Err(st.out_of_range(offset));
            }
            if cut == st.durable {
                return Ok(());
            }
        }
        let plan = self.shared.plan_cut(cut).await?;
        self.shared.set_truncate_marker(Marker::Offset(cut)).await?;
        self.shared.apply_cut(plan).await?;
        self.shared.clear_truncate_marker().await
    }

    /// Applies size and age retention now; returns how many segments were removed.
    pub async fn apply_retention(&self) -> Result<usize> {
        let _permit = self.shared.lock().await?;
        self.shared.apply_retention_locked().await
    }

    /// A stream of the raw bytes of every segment's store, oldest first (snapshots, transfer).
    /// It covers the data durable when it was created.
    pub fn reader(&self) -> LogReader {
        let st = self.shared.state.borrow();
        LogReader {
            segments: st.segments.iter().map(|s| (s.clone(), s.end())).collect(),
            current: 0,
            position: 0,
        }
    }

    /// Makes everything queued durable, writes the indexes out, and stops the flusher. Appends
    /// and reads after this fail with `Closed`.
    pub async fn close(&self) -> Result<()> {
        {
            let mut st = self.shared.state.borrow_mut();
            if st.closed {
                return Ok(());
            }
            st.closing = true;
        }
        self.shared.work.notify();
        loop {
            let seen = self.shared.flusher_done.generation();
            if !self.shared.state.borrow().flusher_running {
                break;
            }
            self.shared.flusher_done.wait(seen).await;
        }
        let _permit = self.shared.lock().await?;
        self.shared.drain_syncs().await;
        let result = self.shared.persist_active_index(true).await;
        let result = match (result, self.shared.sync_if_unsynced().await) {
            (Ok(()), r) => r,
            (Err(e), _) => Err(e),
        };
        self.shared.state.borrow_mut().closed = true;
        self.shared.committed.notify();
        result
    }

    /// Removes every segment and starts again, empty, at `initial_offset`.
    pub async fn reset(&self) -> Result<()> {
        let _permit = self.shared.lock().await?;
        self.shared.flush_queued().await;
        self.shared.state.borrow().writable()?;
        let initial = self.shared.config.initial_offset;
        self.shared.replace_all_segments(initial).await
    }

    /// Removes every segment and starts again, empty, at `base` (installing a Raft snapshot).
    pub async fn reset_at(&self, base: Offset) -> Result<()> {
        let _permit = self.shared.lock().await?;
        self.shared.flush_queued().await;
        self.shared.state.borrow().writable()?;
        self.shared.replace_all_segments(base).await
    }

    /// Closes the log and deletes its directory.
    pub async fn remove(&self) -> Result<()> {
        self.close().await?;
        std::fs::remove_dir_all(&self.shared.dir)
            .map_err(|e| Error::from_io("removing", &self.shared.dir, e))
    }
}

/// How long a deleted segment's files wait, at most, for the readers that still hold the
/// segment (the seed's `Reader`, which sends snapshots, may hold it for a long time) to let
/// go, before they are removed anyway (without shrinking: the last reader's close then frees
/// the blocks, on its core).
const HELD_SEGMENT_WAIT_MAX: Duration = Duration::from_secs(600);
/// The first pause between two looks at whether a deleted segment was let go; it doubles up to
/// [`HELD_SEGMENT_POLL_MAX`].
const HELD_SEGMENT_POLL_MIN: Duration = Duration::from_millis(5);
const HELD_SEGMENT_POLL_MAX: Duration = Duration::from_secs(1);

/// Closes `seg`'s files once nothing else holds the segment, waiting until `deadline`; whether
/// it did. After that it gives up: the last reader to let go closes them.
async fn close_when_released(mut seg: Rc<Segment>, deadline: Instant) -> bool {
    let mut pause = HELD_SEGMENT_POLL_MIN;
    loop {
        match Rc::try_unwrap(seg) {
            Ok(owned) => {
                owned.close().await;
                return true;
            }
            Err(shared) if Instant::now() < deadline => {
                seg = shared;
                io::sleep(pause).await;
                pause = (pause * 2).min(HELD_SEGMENT_POLL_MAX);
            }
            Err(_) => return false,
        }
    }
}

impl Shared {
    async fn lock(&self) -> Result<glommio::sync::Permit<'_>> {
        self.io_lock
            .acquire_permit(1)
            .await
            .map_err(|_| Error::Closed)
    }

    async fn enqueue(
        &self,
        len: usize,
        meta: BatchMeta,
        count: u64,
        encode: impl FnOnce(Offset) -> Bytes,
    ) -> Result<AppendTicket> {
        let mut encode = Some(encode);
        if len > self.config.batch_bytes_max {
            return Err(Error::BatchTooLarge {
                bytes: len,
                max: self.config.batch_bytes_max,
            });
        }
        let ticket = loop {
            let seen = self.space.generation();
            if let Some(ticket) = self.try_enqueue(len, meta, count, &mut encode)? {
                break ticket;
            }
            self.space.wait(seen).await;
        };
        self.work.notify();
        Ok(ticket)
    }

    /// Queues the batch if the queue has room (an empty queue always has).
    fn try_enqueue(
        &self,
        len: usize,
        meta: BatchMeta,
        count: u64,
        encode: &mut Option<impl FnOnce(Offset) -> Bytes>,
    ) -> Result<Option<AppendTicket>> {
        {
            let mut st = self.state.borrow_mut();
            st.writable()?;
            if st.queue.is_empty() || st.queue_bytes + len <= self.config.queue_bytes_max {
                let base = st.next_offset;
                let next = base.plus(count);
                let encode = encode.take().expect("encoded once");
                let batch = encode(base);
                debug_assert_eq!(batch.len(), len);
                let (tx, rx) = oneshot();
                st.next_offset = next;
                st.queue_bytes += len;
                let queued = batch.clone();
                st.queue.push_back(Pending {
                    batch,
                    base,
                    next,
                    timestamp_ms: meta.timestamp_ms,
                    raft_index: meta.raft_index,
                    done: tx,
                });
                return Ok(Some(AppendTicket {
                    base,
                    batch: queued,
                    done: rx,
                }));
            }
        }
        Ok(None)
    }

    /// Writes out everything queued, in group commits, and waits until all of it is durable
    /// (or failed). The caller holds the io lock.
    async fn flush_queued(self: &Rc<Self>) {
        while !self.state.borrow().queue.is_empty() {
            self.flush_once().await;
        }
        self.drain_syncs().await;
    }

    /// Waits for every pending `fdatasync` and its publication.
    async fn drain_syncs(&self) {
        let last = self.sync_tail.borrow().clone();
        if let Some(link) = last {
            link.wait().await;
        }
    }

    /// One group commit: takes up to `flush_bytes_max` of queued batches and writes them. With
    /// `fsync = always` the `fdatasync`, publication and acks run in a task of their own, so
    /// the next commit's write overlaps this one's sync (a sync covers every write that
    /// completed before it was issued, so it never needs to wait for a later one). On a failed
    /// write, fails the batches not written and everything queued behind them (their offsets
    /// were assigned after the failed ones).
    async fn flush_once(self: &Rc<Self>) {
        let mut taken: VecDeque<Pending> = {
            let mut st = self.state.borrow_mut();
            let mut bytes = 0usize;
            let mut taken = VecDeque::new();
            while let Some(p) = st.queue.front() {
                if !taken.is_empty() && bytes + p.batch.len() > self.config.flush_bytes_max {
                    break;
                }
                bytes += p.batch.len();
                taken.push_back(st.queue.pop_front().expect("front exists"));
            }
            st.queue_bytes -= bytes;
            taken
        };
        if taken.is_empty() {
            return;
        }
        self.space.notify();
        if let Err(e) = self.write_pending(&mut taken).await {
            for p in taken {
                p.done.send(Err(e.clone()));
            }
            let queued: Vec<Pending> = {
                let mut st = self.state.borrow_mut();
                if self.stop_on_write_error.get() && st.stopped.is_none() {
                    let reason = format!("a write failed: {e}");
                    log::error!(
                        "{}: {reason}; this Raft log stops taking writes until it is reopened",
                        self.dir.display()
                    );
                    st.stopped = Some(reason);
                }
                st.queue_bytes = 0;
                st.next_offset = st.written_next;
                st.queue.drain(..).collect()
            };
            for p in queued {
                p.done.send(Err(e.clone()));
            }
            self.space.notify();
            self.committed.notify();
        }
    }

    /// Writes the batches into the active segment, rolling it when full. What was written
    /// leaves `rest`; on error, `rest` holds what was not.
    async fn write_pending(self: &Rc<Self>, rest: &mut VecDeque<Pending>) -> Result<()> {
        while !rest.is_empty() {
            let (fit, roll) = {
                let st = self.state.borrow();
                let seg = st.active();
                let mut end = st.written_end;
                let index_len = seg.with_index(|ix| ix.len()) + st.unpublished_batches;
                let mut j = 0;
                while j < rest.len() {
                    let len = rest[j].batch.len() as u64;
                    // Upper bound: every batch may take an index entry.
                    let entries = index_len + j + 1;
                    let index_bytes =
                        (entries.div_ceil(ENTRIES_PER_BLOCK) * INDEX_BLOCK_BYTES) as u64;
                    let too_big = end + len > self.config.segment_bytes_max
                        || index_bytes > self.config.index_bytes_max;
                    if too_big && (end > 0 || j > 0) {
                        break;
                    }
                    end += len;
                    j += 1;
                }
                (j, j == 0)
            };
            if roll {
                self.roll().await?;
                continue;
            }
            let chunk: Vec<Pending> = rest.drain(..fit).collect();
            match self.write_chunk(&chunk).await {
                Ok(written) => self.commit_written(chunk, written).await,
                Err(e) => {
                    for p in chunk.into_iter().rev() {
                        rest.push_front(p);
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// One write: the tail block + batches, zero-padded to the block size. Advances the
    /// writer's view of the segment; nothing is readable or acknowledged yet.
    async fn write_chunk(&self, chunk: &[Pending]) -> Result<Written> {
        let (store, start_pos, start, buf, new_end, new_tail, reserve) = {
            let mut st = self.state.borrow_mut();
            st.not_stopped()?;
            let seg = st.active().clone();
            let end = st.written_end;
            let start = align_down(end);
            assert_eq!(st.tail.len() as u64, end - start, "tail block out of sync");
            let payload: u64 = chunk.iter().map(|p| p.batch.len() as u64).sum();
            let new_end = end + payload;
            let write_end = align_up(new_end).max(st.dirty_until);
            let total = (write_end - start) as usize;
            // One buffer per write: `write_bytes_max` splits a large group commit into writes
            // that are all in flight at once.
            let piece = self
                .config
                .write_bytes_max
                .unwrap_or(total)
                .max(BLOCK_BYTES as usize);
            let mut pieces = Pieces::new(&seg.store, total, piece);
            pieces.put(&st.tail);
            let mut expected = st.written_next;
            for p in chunk {
                // Check what goes to disk right before it goes (STYLE: both sides of the disk).
                let header = format::decode_header(&p.batch).expect("queued batch has a header");
                assert_eq!(header.base_offset, expected, "batches out of offset order");
                assert_eq!(header.length as usize, p.batch.len());
                debug_assert!(format::validate_batch(&p.batch).is_ok());
                expected = p.next;
                pieces.put(&p.batch);
            }
            let tail_from = (align_down(new_end) - start) as usize;
            let new_tail = pieces.copy_range(tail_from, (new_end - start) as usize);
            // The rest of the last block (and any range a failed write may have dirtied) must
            // read as zeros: that is how recovery finds the end of the data.
            pieces.zero_rest();
            let buf = pieces;
            st.dirty_until = st.dirty_until.max(write_end);
            let reserve = (write_end > st.reserved).then(|| self.config.reserve_for(write_end));
            (
                seg.store.clone(),
                end,
                start,
                buf,
                new_end,
                new_tail,
                reserve,
            )
        };
        if let Some(reserve) = reserve {
            store.pre_allocate(reserve).await?;
            self.state.borrow_mut().reserved = reserve;
        }
        let started = Instant::now();
        let bytes = buf.total as u64;
        let writes = buf.bufs.into_iter().enumerate().map(|(i, b)| {
            let store = store.clone();
            async move { store.write_at(b, start + (i * buf.piece) as u64).await }
        });
        for result in futures::future::join_all(writes).await {
            result?;
        }
        let mut st = self.state.borrow_mut();
        st.written_end = new_end;
        st.written_next = chunk.last().expect("chunk is not empty").next;
        st.tail = new_tail;
        if st.dirty_until <= align_up(new_end) {
            st.dirty_until = 0;
        }
        st.unpublished_batches += chunk.len();
        let seq = self.writes_done.get() + 1;
        self.writes_done.set(seq);
        Ok(Written {
            seq,
            store,
            start: start_pos,
            new_end,
            bytes,
            started,
        })
    }

    /// Makes a written chunk durable as the policy says, then publishes and acks it, in
    /// offset order. With `fsync = always` this runs in a task chained behind the previous
    /// commit's.
    async fn commit_written(self: &Rc<Self>, chunk: Vec<Pending>, written: Written) {
        let link = Rc::new(SyncLink {
            done: std::cell::Cell::new(false),
            finished: Event::new(),
        });
        let prev = self.sync_tail.borrow_mut().replace(link.clone());
        let shared = self.clone();
        let task = async move {
            if let Some(prev) = prev {
                prev.wait().await;
            }
            let synced = match shared.state.borrow().not_stopped() {
                Ok(()) => None,
                Err(e) => Some(Err(e)),
            };
            let synced = match synced {
                Some(r) => r,
                None => shared.sync_for_policy(&written).await,
            };
            match synced {
                Ok(()) => {
                    let observer = shared.observer.borrow().clone();
                    if let Some(observer) = observer {
                        observer.flushed(written.bytes, chunk.len(), written.started.elapsed());
                    }
                    shared.publish(&chunk, written.start, written.new_end);
                    for p in chunk {
                        p.done.send(Ok(p.base));
                    }
                    // After the acks: index blocks are an accelerator; nobody waits for them.
                    shared.write_full_index_blocks().await;
                }
                Err(e) => {
                    shared.state.borrow_mut().unpublished_batches -= chunk.len();
                    for p in chunk {
                        p.done.send(Err(e.clone()));
                    }
                }
            }
            link.finish();
        };
        match self.config.fsync {
            FsyncPolicy::Always => {
                glommio::spawn_local(task).detach();
            }
            // Nothing to overlap: the write is the commit.
            FsyncPolicy::Interval(_) => task.await,
        }
    }

    /// `fdatasync` as the policy says. A failed sync stops the partition for good: the kernel
    /// may have dropped the dirty data, and retrying could report success for lost bytes.
    ///
    /// With `fsync = always`, one `fdatasync` serves every group commit whose write had
    /// completed when it started: a commit already covered by the previous commit's sync
    /// (same store, started after this write completed) needs none of its own. While one
    /// sync runs the flusher writes on, so on a slow disk the next sync covers all of those
    /// writes instead of each waiting for a sync of its own.
    async fn sync_for_policy(&self, written: &Written) -> Result<()> {
        let store = &*written.store;
        match self.config.fsync {
            FsyncPolicy::Always => {
                let covered = self
                    .synced_through
                    .borrow()
                    .as_ref()
                    .is_some_and(|(seq, synced)| {
                        *seq >= written.seq
                            && synced
                                .upgrade()
                                .is_some_and(|s| Rc::ptr_eq(&s, &written.store))
                    });
                if covered {
                    return Ok(());
                }
                let covers = self.writes_done.get();
                self.sync_or_stop(store).await?;
                let mut synced = self.synced_through.borrow_mut();
                if synced.as_ref().is_none_or(|(seq, _)| *seq < covers) {
                    *synced = Some((covers, Rc::downgrade(&written.store)));
                }
                Ok(())
            }
            FsyncPolicy::Interval(every) => {
                let due = {
                    let mut st = self.state.borrow_mut();
                    st.unsynced_since.get_or_insert_with(Instant::now);
                    st.last_sync.elapsed() >= every
                };
                if due {
                    self.sync_or_stop(store).await?;
                }
                Ok(())
            }
        }
    }

    async fn sync_or_stop(&self, store: &File) -> Result<()> {
        if let Err(e) = store.fdatasync().await {
            let reason = format!("fdatasync failed: {e}");
            log::error!(
                "{}: {reason}; the partition stops taking writes",
                self.dir.display()
            );
            self.state.borrow_mut().stopped = Some(reason.clone());
            self.committed.notify();
            return Err(Error::Stopped { reason });
        }
        let mut st = self.state.borrow_mut();
        st.unsynced_since = None;
        st.last_sync = Instant::now();
        Ok(())
    }

    async fn sync_if_unsynced(&self) -> Result<()> {
        let store = {
            let st = self.state.borrow();
            if st.unsynced_since.is_none() || st.stopped.is_some() {
                return Ok(());
            }
            st.active().store.clone()
        };
        self.sync_or_stop(&store).await
    }

    /// Makes durable batches visible: segment end, index entries, cache, waiters.
    fn publish(&self, chunk: &[Pending], start: u64, new_end: u64) {
        let mut st = self.state.borrow_mut();
        let seg = st.active().clone();
        assert_eq!(seg.end(), start, "group commits publish in order");
        let mut position = start;
        seg.with_index(|index| {
            for p in chunk {
                let due = index
                    .last()
                    .is_none_or(|e| position - e.position >= self.config.index_interval_bytes);
                if due {
                    index.push(IndexEntry {
                        offset: p.base,
                        position,
                        raft_index: p.raft_index,
                    });
                }
                position += p.batch.len() as u64;
            }
        });
        assert_eq!(position, new_end);
        let last = chunk.last().expect("chunk is not empty");
        seg.set_tail(new_end, last.next, last.timestamp_ms);
        st.unpublished_batches -= chunk.len();
        st.durable = last.next;
        for p in chunk {
            let batch = Batch::from_encoded(p.batch.clone());
            st.push_cache(batch, self.config.tail_cache_bytes_max);
        }
        drop(st);
        self.committed.notify();
    }

    /// Writes index blocks that filled up. The index is an accelerator: a failure is logged and
    /// retried with the next block, never fails an append.
    async fn write_full_index_blocks(&self) {
        if let Err(e) = self.persist_active_index(false).await {
            log::warn!(
                "{}: index write failed (it is rebuilt on open): {e}",
                self.dir.display()
            );
        }
    }

    /// Writes the active index's full blocks, and with `partial` also the last partial block,
    /// then syncs it when `partial` (seal and close).
    async fn persist_active_index(&self, partial: bool) -> Result<()> {
        let (seg, blocks, tail) = {
            let st = self.state.borrow();
            let seg = st.active().clone();
            let (blocks, tail) = seg.with_index(|ix| {
                (
                    ix.full_blocks_to_write(),
                    if partial { ix.partial_block() } else { None },
                )
            });
            (seg, blocks, tail)
        };
        for (block_no, block) in &blocks {
            write_block(&seg.index_file, *block_no, block).await?;
            seg.with_index(|ix| ix.mark_persisted(block_no + 1));
        }
        if let Some((block_no, block)) = &tail {
            write_block(&seg.index_file, *block_no, block).await?;
        }
        if partial {
            let bytes = seg.with_index(|ix| ix.file_bytes());
            seg.index_file.truncate(bytes).await?;
            self.sync_or_stop(&seg.index_file).await?;
        }
        Ok(())
    }

    /// Seals the active segment and opens a new one at the next offset.
    async fn roll(&self) -> Result<()> {
        // Seal only what is durable and published: wait for pending syncs.
        self.drain_syncs().await;
        self.state.borrow().not_stopped()?;
        let old = self.state.borrow().active().clone();
        self.persist_active_index(true).await?;
        self.sync_if_unsynced().await?;
        // Give back the pre-allocated space; the size change is made durable by the sync.
        old.store.truncate(align_up(old.end())).await?;
        self.sync_or_stop(&old.store).await?;
        let base = old.next_offset();
        let new = create_segment(&self.disk, &self.dir, &self.config, base).await?;
        {
            let mut st = self.state.borrow_mut();
            old.set_sealed(true);
            st.segments.push(Rc::new(new));
            st.tail.clear();
            st.dirty_until = 0;
            st.reserved = self.config.reserve_for(0);
            st.written_end = 0;
            st.written_next = base;
        }
        if let Err(e) = self.apply_retention_locked().await {
            log::warn!("{}: retention failed: {e}", self.dir.display());
        }
        Ok(())
    }

    async fn apply_retention_locked(&self) -> Result<usize> {
        let (bytes_max, age_ms) = (self.config.retention_bytes, self.config.retention_ms);
        if bytes_max.is_none() && age_ms.is_none() {
            return Ok(0);
        }
        let now = io::now_ms();
        let mut removed = 0;
        loop {
            let victim = {
                let st = self.state.borrow();
                let total: u64 = st.segments.iter().map(|s| s.end()).sum();
                let first = st.segments[0].clone();
                let too_big = bytes_max.is_some_and(|max| total > max);
                let too_old = age_ms
                    .is_some_and(|ms| first.newest_timestamp_ms() < now.saturating_sub(ms as i64));
                (st.segments.len() > 1 && (too_big || too_old)).then_some(first)
            };
            match victim {
                Some(seg) => {
                    self.remove_oldest(seg, None).await?;
                    removed += 1;
                }
                None => break,
            }
        }
        if removed > 0 {
            self.disk.sync_dir(&self.dir).await?;
        }
        Ok(removed)
    }

    /// Removes the oldest segment `seg` and drops its batches from the tail cache, which must
    /// never serve what the log no longer holds. `next_first_raft` (replicated logs) is the
    /// first Raft index of the segment after it: control batches take no offset, so one that
    /// ends `seg` shares its offset with the next segment's first batch and only its Raft
    /// index tells them apart.
    ///
    /// The store file is renamed out of the way before the log's state changes: if that
    /// fails, the segment stays, in memory and on disk, and the error says why (retention
    /// tries again at its next pass). Changed first, a segment whose file kept its name would
    /// come back below the log's start at the next open.
    async fn remove_oldest(&self, seg: Rc<Segment>, next_first_raft: Option<u64>) -> Result<()> {
        let files = self.rename_out(&seg).await?;
        {
            let mut st = self.state.borrow_mut();
            assert!(Rc::ptr_eq(&st.segments[0], &seg) && st.segments.len() > 1);
            st.segments.remove(0);
            let end = seg.next_offset();
            while let Some(front) = st.cache.front() {
                let removed = match next_first_raft {
                    Some(first) => front.header().meta.raft_index < first,
                    None => front.base_offset() < end,
                };
                if !removed {
                    break;
                }
                let len = front.len();
                st.cache.pop_front();
                st.cache_bytes -= len;
            }
        }
        self.finish_deleting(vec![(seg, files)]).await;
        Ok(())
    }

    /// Renames a segment's files out of the way ([`segment::deleted_path`]), store first, and
    /// returns their new names. Fails only when the store cannot be renamed, and then nothing
    /// was. Once the store is renamed the segment is gone for the next open, which also
    /// removes an index left behind (an orphan): an index that cannot be renamed is only
    /// logged.
    async fn rename_out(&self, seg: &Segment) -> Result<Vec<PathBuf>> {
        let mut renamed = Vec::with_capacity(2);
        if let Some(to) = self.rename_to_deleted(seg.store_path()).await? {
            renamed.push(to);
        }
        match self.rename_to_deleted(seg.index_path()).await {
            Ok(Some(to)) => renamed.push(to),
            Ok(None) => {}
            Err(e) => log::warn!("{e}; the next open removes the orphan index"),
        }
        Ok(renamed)
    }

    /// Renames `path` to a fresh [`segment::deleted_path`]: never over a file being deleted
    /// already (the remover would then shrink the new one, perhaps under a reader), however
    /// the names were chosen (they start from the clock). `None`: `path` does not exist.
    async fn rename_to_deleted(&self, path: &Path) -> Result<Option<PathBuf>> {
        let mut attempts = 0;
        loop {
            let to = segment::deleted_path(path);
            match self.disk.rename_to_new(path, &to).await {
                Ok(true) => return Ok(Some(to)),
                Ok(false) => return Ok(None),
                Err(Error::Io {
                    errno: Some(libc::EEXIST),
                    ..
                }) if attempts < 16 => attempts += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// Deletes the files of segments the log no longer holds, already renamed out of the way
    /// ([`Shared::rename_out`]), without stopping the core or the disk, and without waiting.
    ///
    /// Freeing a large file's blocks costs whichever thread drops its last reference, the
    /// name or the last open descriptor: 0.5 s for a 256 MiB segment on this machine's ext4
    /// (mounted with `discard`). Done on the core, every partition of it waited and a Raft
    /// leader could miss its heartbeats. So each segment's files were renamed (under the
    /// log's lock, so no new segment could take the name meanwhile), and the segment is closed,
    /// while still linked (cheap), once nothing reads it any more: at once, or, while readers
    /// hold it, by a task of this core that waits for them (up to [`HELD_SEGMENT_WAIT_MAX`])
    /// outside the lock. The process's remover thread then shrinks and removes the files
    /// ([`Disk::remove_files_in_background`]); recovery removes what a crash left.
    async fn finish_deleting(&self, segments: Vec<(Rc<Segment>, Vec<PathBuf>)>) {
        let mut doomed = Vec::with_capacity(2 * segments.len());
        for (seg, files) in segments {
            match Rc::try_unwrap(seg) {
                Ok(owned) => {
                    owned.close().await;
                    doomed.extend(files.into_iter().map(|path| (path, true)));
                }
                Err(held) => {
                    // Only a file nobody reads any more may be shrunk; until then its name
                    // stays, so that its blocks are not freed under the reader.
                    let disk = self.disk.clone();
                    glommio::spawn_local(async move {
                        let deadline = Instant::now() + HELD_SEGMENT_WAIT_MAX;
                        let released = close_when_released(held, deadline).await;
                        let files = files.into_iter().map(|path| (path, released)).collect();
                        disk.remove_files_in_background(files);
                    })
                    .detach();
                }
            }
        }
        self.disk.remove_files_in_background(doomed);
    }

    async fn read_batches(&self, offset: Offset, max_bytes: usize) -> Result<Vec<Batch>> {
        let (candidates, durable) = {
            let st = self.state.borrow();
            if st.closed {
                return Err(Error::Closed);
            }
            let visible = st.visible();
            if offset < st.lowest() || offset > visible {
                return Err(st.out_of_range(offset));
            }
            if offset == visible {
                return Ok(Vec::new());
            }
            if st.cache.front().is_some_and(|b| b.base_offset() <= offset) {
                // Binary search: a scan would cost every read the whole cache (16 MiB of small
                // batches is tens of thousands of them).
                let first = st.cache.partition_point(|b| b.next_offset() <= offset);
                let mut batches = collect_from(st.cache.range(first..), offset, max_bytes);
                batches.retain(|b| b.base_offset() < visible);
                return Ok(batches);
            }
            let first = st.segments.partition_point(|s| s.base() <= offset) - 1;
            let candidates: Vec<(Rc<Segment>, u64)> = st.segments[first..]
                .iter()
                .map(|s| (s.clone(), s.end()))
                .collect();
            (candidates, st.durable)
        };
        for (seg, end) in candidates {
            if seg.next_offset() <= offset && seg.is_sealed() {
                continue;
            }
            let mut batches = seg
                .read_batches(offset, max_bytes, end, self.config.index_interval_bytes)
                .await?;
            if !batches.is_empty() {
                let visible = self.state.borrow().visible();
                batches.retain(|b| b.base_offset() < visible);
                return Ok(batches);
            }
        }
        // Every durable offset lives in some segment: not finding it means damage.
        let st = self.state.borrow();
        Err(Error::corrupt(
            st.active().store_path(),
            0,
            format!("offset {offset} below the durable end {durable} was not found"),
        ))
    }

    async fn read_raft(&self, from: u64, max_bytes: usize) -> Result<Vec<Batch>> {
        let candidates: Vec<(Rc<Segment>, u64)> = {
            let st = self.state.borrow();
            if st.closed {
                return Err(Error::Closed);
            }
            if st
                .cache
                .front()
                .is_some_and(|b| b.header().meta.raft_index <= from)
            {
                let mut out = Vec::new();
                let mut bytes = 0usize;
                // Raft indexes rise through the cache: binary search, not a scan of it all.
                let first = st
                    .cache
                    .partition_point(|b| b.header().meta.raft_index < from);
                for b in st.cache.range(first..) {
                    bytes += b.len();
                    out.push(b.clone());
                    if bytes >= max_bytes {
                        break;
                    }
                }
                return Ok(out);
            }
            st.segments.iter().map(|s| (s.clone(), s.end())).collect()
        };
        // The newest segment starting at or before `from` (or the oldest, if `from` was purged).
        let mut start = 0;
        for (i, (seg, _)) in candidates.iter().enumerate().rev() {
            if seg
                .first_raft_index()
                .await?
                .is_some_and(|first| first <= from)
            {
                start = i;
                break;
            }
        }
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for (seg, end) in &candidates[start..] {
            if *end == 0 {
                continue;
            }
            let batches = seg
                .read_raft_batches(
                    from,
                    max_bytes.saturating_sub(bytes),
                    *end,
                    self.config.index_interval_bytes,
                )
                .await?;
            for b in batches {
                bytes += b.len();
                out.push(b);
            }
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(out)
    }

    async fn last_batch_header(&self) -> Result<Option<format::Header>> {
        let segments: Vec<Rc<Segment>> = {
            let st = self.state.borrow();
            if let Some(b) = st.cache.back() {
                return Ok(Some(*b.header()));
            }
            st.segments.clone()
        };
        for seg in segments.iter().rev() {
            let end = seg.end();
            if end == 0 {
                continue;
            }
            seg.ensure_index(self.config.index_interval_bytes).await?;
            let (pos, expected) = seg
                .with_index(|ix| ix.last().map(|e| (e.position, e.offset)))
                .unwrap_or((0, seg.base()));
            let scan = scan_store(&seg.store, pos, expected, end, 0).await?;
            if let Some((_, header)) = scan.batches.last() {
                return Ok(Some(*header));
            }
        }
        Ok(None)
    }

    /// Finds where the log must be cut so that the batch with Raft index `keep` is the last
    /// one (`None`: nothing stays), without changing anything. The caller holds the io lock.
    async fn plan_raft_cut(&self, keep: Option<u64>) -> Result<CutPlan> {
        let Some(keep) = keep else {
            return Ok(CutPlan::Everything);
        };
        let segments: Vec<Rc<Segment>> = self.state.borrow().segments.clone();
        let mut found = None;
        for (i, seg) in segments.iter().enumerate().rev() {
            if seg
                .first_raft_index()
                .await?
                .is_some_and(|first| first <= keep)
            {
                found = Some(i);
                break;
            }
        }
        let Some(i) = found else {
            return Ok(CutPlan::Everything);
        };
        let seg = segments[i].clone();
        let later = segments[i + 1..].to_vec();
        seg.ensure_index(self.config.index_interval_bytes).await?;
        let (pos, expected) = seg
            .with_index(|ix| ix.lookup_raft_index(keep).map(|e| (e.position, e.offset)))
            .unwrap_or((0, seg.base()));
        let scan = scan_store(&seg.store, pos, expected, seg.end(), 0).await?;
        let Some((position, header)) = scan.batches.iter().find(|(_, h)| h.meta.raft_index == keep)
        else {
            return Err(Error::corrupt(
                seg.store_path(),
                pos,
                format!("no batch has Raft index {keep}"),
            ));
        };
        Ok(CutPlan::Within {
            seg,
            later,
            cut: header.next_offset(),
            position: position + header.length as u64,
            timestamp_ms: header.meta.timestamp_ms,
        })
    }

    /// Finds where the log must be cut so that `cut` becomes the next offset, without changing
    /// anything. The caller holds the io lock.
    async fn plan_cut(&self, cut: Offset) -> Result<CutPlan> {
        let found = {
            let st = self.state.borrow();
            let n = st.segments.partition_point(|s| s.base() < cut);
            (n > 0).then(|| (st.segments[n - 1].clone(), st.segments[n..].to_vec()))
        };
        let Some((seg, later)) = found else {
            return Ok(CutPlan::Everything);
        };
        seg.ensure_index(self.config.index_interval_bytes).await?;
        let last = Offset(cut.get() - 1);
        let from = seg.with_index(|ix| ix.lookup(last).copied());
        let (pos, expected) = from.map_or((0, seg.base()), |e| (e.position, e.offset));
        let scan = scan_store(&seg.store, pos, expected, seg.end(), 0).await?;
        let holder = scan
            .batches
            .iter()
            .find(|(_, h)| h.base_offset <= last && last < h.next_offset());
        let Some((position, header)) = holder else {
            return Err(Error::corrupt(
                seg.store_path(),
                pos,
                format!("no batch holds offset {last}"),
            ));
        };
        if header.next_offset() != cut {
            return Err(Error::InvalidArgument(format!(
                "truncate_after({last}) falls inside the batch {}..{}: cuts must fall at batch \
                 boundaries",
                header.base_offset,
                header.next_offset()
            )));
        }
        Ok(CutPlan::Within {
            seg,
            later,
            cut,
            position: position + header.length as u64,
            timestamp_ms: header.meta.timestamp_ms,
        })
    }

    /// Carries out a cut: zeroes the store after the cut, drops later segments. The caller
    /// holds the io lock.
    async fn apply_cut(&self, plan: CutPlan) -> Result<()> {
        let CutPlan::Within {
            seg,
            later,
            cut,
            position: cut_pos,
            timestamp_ms,
        } = plan
        else {
            let base = self.state.borrow().segments[0].base();
            return self.replace_all_segments(base).await;
        };
        // The later segments go first, newest first, so that what keeps its name on disk is
        // always a log the next open accepts; the truncate marker then finishes the cut.
        let mut gone = Vec::with_capacity(later.len());
        for seg in later.iter().rev() {
            match self.rename_out(seg).await {
                Ok(files) => gone.push((seg.clone(), files)),
                Err(e) if gone.is_empty() => return Err(e),
                Err(e) => return Err(self.stop_after_partial_delete(e)),
            }
        }
        let stop_if_renamed = |e: Error| {
            if gone.is_empty() {
                e
            } else {
                self.stop_after_partial_delete(e)
            }
        };
        let tail = self
            .cut_store(&seg, cut_pos)
            .await
            .map_err(stop_if_renamed)?;
        seg.with_index(|ix| ix.truncate_at_position(cut_pos));
        let index_bytes = seg.with_index(|ix| ix.blocks_persisted() * INDEX_BLOCK_BYTES) as u64;
        seg.index_file
            .truncate(index_bytes)
            .await
            .map_err(stop_if_renamed)?;
        seg.set_tail(cut_pos, cut, timestamp_ms);
        seg.set_sealed(false);
        {
            let mut st = self.state.borrow_mut();
            let keep = st.segments.len() - later.len();
            st.segments.truncate(keep);
            st.tail = tail;
            st.dirty_until = 0;
            st.written_end = cut_pos;
            st.written_next = cut;
            st.next_offset = cut;
            st.durable = cut;
            // Control batches share offsets with their neighbours, so the cache cannot be cut
            // by offset alone; it refills from new appends.
            st.cache.clear();
            st.cache_bytes = 0;
        }
        drop(later);
        self.finish_deleting(gone).await;
        self.disk.sync_dir(&self.dir).await?;
        self.committed.notify();
        Ok(())
    }

    /// A deletion failed after some segments' files were renamed away. What keeps its name on
    /// disk is a log the next open accepts, but this log still holds the renamed segments in
    /// memory, and what it appended to one of them would be gone at the next open: it stops
    /// (appends fail) until it is reopened.
    fn stop_after_partial_delete(&self, e: Error) -> Error {
        let reason = format!("deleting segments failed half-way ({e}); reopen the log");
        log::error!("{}: {reason}", self.dir.display());
        self.state.borrow_mut().stopped = Some(reason.clone());
        Error::Stopped { reason }
    }

    /// Makes `end` the store's logical end on disk: zeroes the rest of its block, cuts the file
    /// after that block, re-reserves the segment's space and syncs. Returns the new tail block.
    async fn cut_store(&self, seg: &Segment, end: u64) -> Result<Vec<u8>> {
        let reserve = self.config.reserve_for(end);
        let tail = cut_store_file(&seg.store, end, reserve).await?;
        self.state.borrow_mut().reserved = reserve;
        if let Err(e) = seg.store.fdatasync().await {
            let reason = format!("fdatasync failed while truncating: {e}");
            self.state.borrow_mut().stopped = Some(reason.clone());
            return Err(Error::Stopped { reason });
        }
        Ok(tail)
    }

    /// Replaces every segment with one, empty, at `base`. Every old segment's files are
    /// renamed out of the way first (one at `base` too: a reader may still hold it), oldest
    /// first, so that what keeps its name on disk is always a log the next open accepts: a
    /// suffix of the old one. If the first rename fails, nothing changed and the error is
    /// returned; a failure after that stops the log ([`Shared::stop_after_partial_delete`]).
    async fn replace_all_segments(&self, base: Offset) -> Result<()> {
        let old: Vec<Rc<Segment>> = self.state.borrow().segments.clone();
        let mut gone = Vec::with_capacity(old.len());
        for seg in old {
            match self.rename_out(&seg).await {
                Ok(files) => gone.push((seg, files)),
                Err(e) if gone.is_empty() => return Err(e),
                Err(e) => return Err(self.stop_after_partial_delete(e)),
            }
        }
        let new = match create_segment(&self.disk, &self.dir, &self.config, base).await {
            Ok(new) => new,
            Err(e) => return Err(self.stop_after_partial_delete(e)),
        };
        {
            let mut st = self.state.borrow_mut();
            st.segments = vec![Rc::new(new)];
            st.tail.clear();
            st.dirty_until = 0;
            st.reserved = self.config.reserve_for(0);
            st.written_end = 0;
            st.written_next = base;
            st.next_offset = base;
            st.durable = base;
            st.cache.clear();
            st.cache_bytes = 0;
        }
        self.finish_deleting(gone).await;
        self.disk.sync_dir(&self.dir).await?;
        self.committed.notify();
        Ok(())
    }

    async fn set_truncate_marker(&self, marker: Marker) -> Result<()> {
        let mut bytes = match marker {
            Marker::Offset(cut) => cut.get().to_le_bytes().to_vec(),
            Marker::RaftAfter(keep) => {
                let mut b = RAFT_MARKER_TAG.to_vec();
                b.extend(keep.map_or(0, |k| k + 1).to_le_bytes());
                b
            }
        };
        bytes.extend(crc32c::crc32c(&bytes).to_le_bytes());
        self.disk
            .write_file_atomic(&self.dir.join(TRUNCATE_MARKER), &bytes)
            .await
    }

    async fn clear_truncate_marker(&self) -> Result<()> {
        self.disk.remove_file(&self.dir.join(TRUNCATE_MARKER))?;
        self.disk.sync_dir(&self.dir).await
    }
}

/// The flusher: one per log, runs group commits until the log closes.
async fn flusher(shared: Rc<Shared>) {
    let retention = shared.config.retention_bytes.is_some() || shared.config.retention_ms.is_some();
    let retention_every = Duration::from_millis(shared.config.retention_check_ms);
    let mut last_retention = Instant::now();
    loop {
        let seen = shared.work.generation();
        let (has_work, closing, unsynced_since) = {
            let st = shared.state.borrow();
            (!st.queue.is_empty(), st.closing, st.unsynced_since)
        };
        if has_work {
            if let Ok(_permit) = shared.lock().await {
                shared.flush_once().await;
            }
            continue;
        }
        if closing {
            break;
        }
        if retention && last_retention.elapsed() >= retention_every {
            if let Ok(_permit) = shared.lock().await
                && let Err(e) = shared.apply_retention_locked().await
            {
                log::warn!("{}: retention failed: {e}", shared.dir.display());
            }
            last_retention = Instant::now();
            continue;
        }
        // Sleep until work arrives, an interval fsync is due, or retention is due.
        let mut wake_in: Option<Duration> = None;
        if let (FsyncPolicy::Interval(every), Some(since)) = (shared.config.fsync, unsynced_since) {
            let due = every.saturating_sub(since.elapsed());
            if due.is_zero() {
                if let Ok(_permit) = shared.lock().await {
                    let _ = shared.sync_if_unsynced().await;
                }
                continue;
            }
            wake_in = Some(due);
        }
        if retention {
            let due = retention_every.saturating_sub(last_retention.elapsed());
            wake_in = Some(wake_in.map_or(due, |w| w.min(due)));
        }
        match wake_in {
            Some(d) => {
                futures_lite::future::or(shared.work.wait(seen), io::sleep(d)).await;
            }
            None => shared.work.wait(seen).await,
        }
    }
    shared.state.borrow_mut().flusher_running = false;
    shared.flusher_done.notify();
}

/// The bytes of one group commit, in write-sized DMA buffers filled in order.
struct Pieces {
    bufs: Vec<crate::io::WriteBuf>,
    piece: usize,
    total: usize,
    /// Bytes filled so far.
    at: usize,
}

impl Pieces {
    fn new(file: &File, total: usize, piece: usize) -> Pieces {
        let mut bufs = Vec::with_capacity(total.div_ceil(piece));
        let mut left = total;
        while left > 0 {
            let len = left.min(piece);
            bufs.push(file.alloc_unfilled(len));
            left -= len;
        }
        Pieces {
            bufs,
            piece,
            total,
            at: 0,
        }
    }

    fn put(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let (i, off) = (self.at / self.piece, self.at % self.piece);
            let buf = self.bufs[i].as_mut_slice();
            let n = data.len().min(buf.len() - off);
            buf[off..off + n].copy_from_slice(&data[..n]);
            data = &data[n..];
            self.at += n;
        }
    }

    fn copy_range(&mut self, from: usize, to: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(to - from);
        let mut at = from;
        while at < to {
            let (i, off) = (at / self.piece, at % self.piece);
            let buf = self.bufs[i].as_mut_slice();
            let n = (to - at).min(buf.len() - off);
            out.extend_from_slice(&buf[off..off + n]);
            at += n;
        }
        out
    }

    fn zero_rest(&mut self) {
        while self.at < self.total {
            let (i, off) = (self.at / self.piece, self.at % self.piece);
            let buf = self.bufs[i].as_mut_slice();
            buf[off..].fill(0);
            self.at += buf.len() - off;
        }
    }
}

fn collect_from<'a>(
    batches: impl Iterator<Item = &'a Batch>,
    offset: Offset,
    max_bytes: usize,
) -> Vec<Batch> {
    let mut out = Vec::new();
    let mut bytes = 0usize;
    for b in batches {
        if b.next_offset() <= offset || b.record_count() == 0 {
            continue;
        }
        out.push(b.clone());
        bytes += b.len();
        if bytes >= max_bytes {
            break;
        }
    }
    out
}

async fn write_block(file: &File, block_no: usize, block: &[u8]) -> Result<()> {
    let mut buf = file.alloc(INDEX_BLOCK_BYTES);
    buf.as_mut_slice().copy_from_slice(block);
    file.write_at(buf, (block_no * INDEX_BLOCK_BYTES) as u64)
        .await
}

/// Zeroes `store` after `end` within its block, cuts the file after that block and reserves
/// `reserve_bytes` again (without syncing). Returns the bytes of the new tail block.
async fn cut_store_file(store: &File, end: u64, reserve_bytes: u64) -> Result<Vec<u8>> {
    let start = align_down(end);
    let keep = (end - start) as usize;
    let mut tail = Vec::new();
    if keep > 0 {
        let block = store.read_at(start, BLOCK_BYTES as usize).await?;
        tail = block[..keep.min(block.len())].to_vec();
        tail.resize(keep, 0);
        let mut buf = store.alloc(BLOCK_BYTES as usize);
        buf.as_mut_slice()[..keep].copy_from_slice(&tail);
        store.write_at(buf, start).await?;
    }
    store.truncate(align_up(end)).await?;
    store.pre_allocate(reserve_bytes).await?;
    Ok(tail)
}

/// Creates a new, empty active segment and makes its directory entries durable.
async fn create_segment(
    disk: &Disk,
    dir: &Path,
    config: &LogConfig,
    base: Offset,
) -> Result<Segment> {
    let store_path = segment::store_path(dir, base);
    let index_path = segment::index_path(dir, base);
    let created = async {
        let store = disk.open_rw(&store_path).await?;
        store.truncate(0).await?;
        store.pre_allocate(config.reserve_for(0)).await?;
        let index = disk.open_rw(&index_path).await?;
        index.truncate(0).await?;
        disk.sync_dir(dir).await?;
        Ok::<_, Error>((store, index))
    }
    .await;
    match created {
        Ok((store, index)) => Ok(Segment::new(
            dir,
            base,
            (store, index),
            SegmentTail {
                end: 0,
                next_offset: base,
                newest_timestamp_ms: i64::MIN,
            },
            Some(Index::new(base)),
            false,
        )),
        Err(e) => {
            let _ = disk.remove_file(&store_path);
            let _ = disk.remove_file(&index_path);
            Err(e)
        }
    }
}

/// Where a `truncate_after` cuts.
enum CutPlan {
    /// `cut` is at or below the lowest offset: nothing stays.
    Everything,
    /// Cut `seg` at byte `position` (the end of the batch ending at `cut`), drop `later`.
    Within {
        seg: Rc<Segment>,
        later: Vec<Rc<Segment>>,
        cut: Offset,
        position: u64,
        timestamp_ms: i64,
    },
}

/// What recovery hands to the log.
struct Recovered {
    segments: Vec<Rc<Segment>>,
    tail: Vec<u8>,
    reserved: u64,
    active_end: u64,
    active_next: Offset,
    cache: Vec<Batch>,
    truncate_marker: Option<Marker>,
}

async fn recover(dir: &Path, config: &LogConfig, disk: &Disk) -> Result<Recovered> {
    let truncate_marker = read_truncate_marker(dir)?;
    let mut bases = Vec::new();
    let mut index_only = Vec::new();
    let mut leftovers = Vec::new();
    for path in disk.list_dir(dir)? {
        if let Some(base) = parse_segment_name(&path, STORE_SUFFIX) {
            bases.push(base);
        } else if let Some(base) = parse_segment_name(&path, INDEX_SUFFIX) {
            index_only.push((base, path));
        } else if path.extension().is_some_and(|e| e == "tmp") {
            disk.remove_file(&path)?;
        } else if segment::is_deleted_path(&path) {
            // A deletion a crash interrupted: nobody has these open.
            leftovers.push((path, true));
        }
    }
    disk.remove_files_in_background(leftovers);
    bases.sort();
    for (base, path) in index_only {
        if bases.binary_search(&base).is_err() {
            log::warn!("removing orphan index {}", path.display());
            disk.remove_file(&path)?;
        }
    }
    // An unfinished truncate_after: segments wholly past the cut go first (the cut itself is
    // redone once the log is open). A Raft cut is redone whole once the log is open.
    if let Some(Marker::Offset(cut)) = truncate_marker {
        let keep_from = bases.partition_point(|b| *b < cut).max(1);
        if bases.len() > keep_from || bases.first().is_some_and(|b| *b >= cut) {
            let drop_from = if bases.first().is_some_and(|b| *b >= cut) {
                0
            } else {
                keep_from
            };
            for base in bases.drain(drop_from..) {
                disk.remove_file(&segment::store_path(dir, base))?;
                disk.remove_file(&segment::index_path(dir, base))?;
            }
            disk.sync_dir(dir).await?;
        }
    }
    if bases.is_empty() {
        let base = match truncate_marker {
            Some(Marker::Offset(cut)) => cut,
            _ => config.initial_offset,
        };
        let seg = create_segment(disk, dir, config, base).await?;
        return Ok(Recovered {
            segments: vec![Rc::new(seg)],
            tail: Vec::new(),
            reserved: config.reserve_for(0),
            active_end: 0,
            active_next: base,
            cache: Vec::new(),
            truncate_marker: None,
        });
    }
    let mut segments = Vec::with_capacity(bases.len());
    for pair in bases.windows(2) {
        let seg = open_sealed(disk, dir, config, pair[0], pair[1]).await?;
        segments.push(Rc::new(seg));
    }
    let last = *bases.last().expect("not empty");
    let (active, tail, cache, reserved) = open_active(disk, dir, config, last).await?;
    let active_next = active.next_offset();
    let active_end = active.end();
    segments.push(Rc::new(active));
    Ok(Recovered {
        segments,
        tail,
        reserved,
        active_end,
        active_next,
        cache,
        truncate_marker,
    })
}

fn read_truncate_marker(dir: &Path) -> Result<Option<Marker>> {
    let path = dir.join(TRUNCATE_MARKER);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::from_io("reading", &path, e)),
    };
    let body = bytes.len().saturating_sub(4);
    if !(bytes.len() == 12 || bytes.len() == 20)
        || crc32c::crc32c(&bytes[..body]).to_le_bytes() != bytes[body..]
    {
        // Written atomically (rename), so a bad marker is damage, not a torn write.
        return Err(Error::corrupt(
            &path,
            0,
            "truncate marker fails its checksum",
        ));
    }
    if bytes.len() == 12 {
        let cut = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
        return Ok(Some(Marker::Offset(Offset(cut))));
    }
    if bytes[..8] != RAFT_MARKER_TAG {
        return Err(Error::corrupt(
            &path,
            0,
            "truncate marker has an unknown tag",
        ));
    }
    let keep = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    Ok(Some(Marker::RaftAfter(keep.checked_sub(1))))
}

/// Opens a sealed segment with the cheap check: its last index entry's batch and everything
/// after it must be valid and end exactly where the next segment begins.
async fn open_sealed(
    disk: &Disk,
    dir: &Path,
    config: &LogConfig,
    base: Offset,
    next_base: Offset,
) -> Result<Segment> {
    let (store, index_file) = Segment::open_files(disk, dir, base).await?;
    let index_size = index_file.size().await?;
    let last_entry = if index_size >= INDEX_BLOCK_BYTES as u64 {
        let block_no = (index_size / INDEX_BLOCK_BYTES as u64 - 1) as usize;
        let block = index_file
            .read_at((block_no * INDEX_BLOCK_BYTES) as u64, INDEX_BLOCK_BYTES)
            .await?;
        crate::storage::index::last_entry_of_block(base, &block, block_no)
    } else {
        None
    };
    let (start, expected) = last_entry.map_or((0, base), |e| (e.position, e.offset));
    let mut scan = scan_store(&store, start, expected, 0, 0).await?;
    if start > 0 && scan_is_broken(&scan, next_base) {
        // The index's last entry may be what is wrong: check from the start.
        scan = scan_store(&store, 0, base, 0, 0).await?;
    }
    let path = segment::store_path(dir, base);
    if let ScanStop::Invalid { position, detail } = &scan.stop {
        return Err(Error::corrupt(&path, *position, detail.clone()));
    }
    if scan.next_offset != next_base {
        return Err(Error::corrupt(
            &path,
            scan.end,
            format!(
                "sealed segment ends at offset {} but the next segment starts at {next_base}",
                scan.next_offset
            ),
        ));
    }
    let newest = scan.newest_timestamp_ms.unwrap_or(i64::MIN);
    let seg = Segment::new(
        dir,
        base,
        (store, index_file),
        SegmentTail {
            end: scan.end,
            next_offset: scan.next_offset,
            newest_timestamp_ms: newest,
        },
        None,
        true,
    );
    // Entries missing after the last one (e.g. a crash while sealing): rebuild now.
    let missing = segment::build_index(base, &scan.batches, config.index_interval_bytes).len() > 1;
    if last_entry.is_none() && scan.end > 0 || missing {
        let index = seg.rebuild_index(config.index_interval_bytes).await?;
        drop(index);
    }
    Ok(seg)
}

fn scan_is_broken(scan: &Scan, next_base: Offset) -> bool {
    matches!(scan.stop, ScanStop::Invalid { .. }) || scan.next_offset != next_base
}

/// Opens the active segment: validates its index against the store, scans the unindexed tail,
/// cuts a torn tail, and rebuilds the in-memory state the appender needs.
async fn open_active(
    disk: &Disk,
    dir: &Path,
    config: &LogConfig,
    base: Offset,
) -> Result<(Segment, Vec<u8>, Vec<Batch>, u64)> {
    let (store, index_file) = Segment::open_files(disk, dir, base).await?;
    let index_size = index_file.size().await?;
    let index_bytes = index_file.read_at(0, index_size as usize).await?;
    let (mut index, damaged) = Index::decode(base, &index_bytes);
    drop(index_bytes);
    if damaged {
        log::warn!(
            "{}: damaged index blocks dropped; rebuilding from the store",
            segment::index_path(dir, base).display()
        );
    }
    // Walk back from the last entry until one agrees with the store.
    let mut tries = 0;
    let (start, expected) = loop {
        let Some(e) = index.last().copied() else {
            break (0, base);
        };
        if tries < INDEX_BACKTRACK_MAX && entry_matches(&store, &e).await? {
            break (e.position, e.offset);
        }
        tries += 1;
        let cut = if tries >= INDEX_BACKTRACK_MAX {
            0
        } else {
            e.position
        };
        index.truncate_at_position(cut);
    };
    let scan = scan_store(&store, start, expected, 0, config.tail_cache_bytes_max).await?;
    let path = segment::store_path(dir, base);
    if let ScanStop::Invalid { position, detail } = &scan.stop {
        log::warn!(
            "{}: cutting torn tail at byte {position} ({detail}); offsets from {} on were never \
             acknowledged",
            path.display(),
            scan.next_offset
        );
    }
    // Index the scanned batches the index did not cover.
    for (pos, header) in &scan.batches {
        let due = index
            .last()
            .is_none_or(|e| *pos > e.position && pos - e.position >= config.index_interval_bytes);
        if due {
            index.push(IndexEntry {
                offset: header.base_offset,
                position: *pos,
                raft_index: header.meta.raft_index,
            });
        }
    }
    // Whatever lies past the end (a torn flush, an old failed write) must never come back.
    let reserved = config.reserve_for(scan.end);
    let tail = cut_store_file(&store, scan.end, reserved).await?;
    store.fdatasync().await?;
    index_file
        .truncate((index.blocks_persisted() * INDEX_BLOCK_BYTES) as u64)
        .await?;
    let (next, newest) = match scan.newest_timestamp_ms {
        Some(ts) => (scan.next_offset, ts),
        None => (expected, i64::MIN),
    };
    let seg = Segment::new(
        dir,
        base,
        (store, index_file),
        SegmentTail {
            end: scan.end,
            next_offset: next,
            newest_timestamp_ms: newest,
        },
        Some(index),
        false,
    );
    Ok((seg, tail, scan.tail, reserved))
}

async fn entry_matches(store: &File, e: &IndexEntry) -> Result<bool> {
    let head = store.read_at(e.position, format::HEADER_BYTES).await?;
    match format::decode_header(&head) {
        Ok(h) if h.base_offset == e.offset => {
            let data = store.read_at(e.position, h.length as usize).await?;
            Ok(format::validate_batch(&data).is_ok())
        }
        _ => Ok(false),
    }
}

/// Streams the raw store bytes of every segment (see [`Log::reader`]).
pub struct LogReader {
    segments: Vec<(Rc<Segment>, u64)>,
    current: usize,
    position: u64,
}

impl LogReader {
    /// The next chunk of bytes, `None` at the end. Chunks never span two segments.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        while let Some((seg, end)) = self.segments.get(self.current) {
            if self.position >= *end {
                self.current += 1;
                self.position = 0;
                continue;
            }
            let len = ((end - self.position) as usize).min(READER_CHUNK_BYTES);
            let data = seg.store.read_at(self.position, len).await?;
            if data.len() < len {
                return Err(Error::corrupt(
                    seg.store_path(),
                    self.position + data.len() as u64,
                    "store file is shorter than its data",
                ));
            }
            self.position += len as u64;
            return Ok(Some(Bytes::copy_from_slice(&data)));
        }
        Ok(None)
    }
}

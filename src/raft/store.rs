//! The Raft log store and state machine of one partition, both over the partition's [`Log`].
//!
//! The Raft log *is* the partition log: each entry is one batch in the segment files, written
//! once (DESIGN.md §3). A normal entry is a batch of records; blank and membership entries are
//! control batches (a Raft index, no offset). `append` queues the batches in the log's group
//! commit and reports `IOFlushed` only once their `fdatasync` is done; until then the entries
//! are served to readers from memory (openraft needs them readable as soon as `append`
//! returns).
//!
//! The state machine copies nothing: applying an entry advances the partition's high
//! watermark, and consumers only see offsets below it ([`Log::set_high_watermark`]).
//!
//! Small state lives in `raft-meta` beside the segments ([`Meta`]): the vote (written and
//! synced before `save_vote` returns), the committed and applied log ids and the last applied
//! membership. Committed and applied are written lazily — re-applying a committed entry only
//! moves the high watermark, so an old value costs a short re-apply at start, never
//! correctness. Membership changes and purges are written before they take effect.
//!
//! A failed append (its write or its `fdatasync`) fails its callback and stops the store's
//! appends for good: the log hands the failed entries' offsets out again, so a later append
//! written now would sit where the failed entries should be, a hole in the Raft log (openraft
//! learns of the failure only through the callback and may append again before it stops). The
//! failed entries are dropped from what the store serves; reopening the partition recovers
//! exactly what is durable.
//!
//! Purge is logical: the purged id is recorded and reads start after it, but the batches stay
//! (they are the partition's data; retention removes segments). Snapshots carry the retained
//! batches themselves ([`LogSnapshot`]).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, IOFlushed, LogState, RaftLogStorage, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta};
use serde::{Deserialize, Serialize};

use crate::Offset;
use crate::io::Disk;
use crate::raft::types::{
    AppendResponse, Entry, LogId, LogSnapshot, Membership, RecordBatch, SnapshotSource,
    StoredMembership, TypeConfig, Vote, check_snapshot_batches, log_id,
};
use crate::storage::{Batch, BatchMeta, Log};

/// Name of the Raft state file in a partition's directory.
pub const META_FILE: &str = "raft-meta";
/// First byte of a control batch's payload: what kind of Raft entry it is.
const CONTROL_BLANK: u8 = 0;
const CONTROL_MEMBERSHIP: u8 = 1;
/// Bytes read per `read_raft` call when collecting entries: at most this, and for a short
/// range about `ENTRY_BYTES_GUESS` per entry asked for. openraft reads single entries at start
/// (a binary search for each term's first entry over the whole log): reading 4 MiB for each
/// made a restart cost seconds per hundred thousand entries.
const READ_CHUNK_BYTES: usize = 4 << 20;
const ENTRY_BYTES_GUESS: usize = 4 << 10;
/// How often lazily written Raft state (committed, applied) is saved.
const META_SAVE_EVERY: Duration = Duration::from_millis(500);

type Snapshot = openraft::Snapshot<
    openraft::vote::leader_id_std::CommittedLeaderId<u64>,
    crate::raft::types::NodeId,
    crate::raft::types::Node,
    LogSnapshot,
>;

/// The small Raft state of a partition, stored in `raft-meta`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub vote: Option<Vote>,
    pub committed: Option<LogId>,
    pub purged: Option<LogId>,
    pub applied: Option<LogId>,
    pub membership: StoredMembership,
}

impl Meta {
    /// `[u32 CRC32C of the JSON][JSON]`.
    fn encode(&self) -> Vec<u8> {
        let json = serde_json::to_vec(self).expect("Raft state serializes");
        let mut out = crc32c::crc32c(&json).to_le_bytes().to_vec();
        out.extend(json);
        out
    }

    fn decode(path: &Path, bytes: &[u8]) -> crate::Result<Meta> {
        let corrupt = |why: String| crate::Error::corrupt(path, 0, why);
        if bytes.len() < 4 {
            return Err(corrupt("Raft state file is too short".into()));
        }
        let (crc, json) = bytes.split_at(4);
        if crc32c::crc32c(json).to_le_bytes() != crc {
            return Err(corrupt("Raft state file fails its checksum".into()));
        }
        serde_json::from_slice(json).map_err(|e| corrupt(format!("Raft state file: {e}")))
    }

    /// Reads `raft-meta` in `dir`; a missing file is a fresh partition.
    pub fn load(dir: &Path) -> crate::Result<Meta> {
        let path = dir.join(META_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => Meta::decode(&path, &bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Meta::default()),
            Err(e) => Err(crate::Error::from_io("reading", &path, e)),
        }
    }
}

/// What the log store and the state machine of one partition share (same core).
struct Shared {
    log: Log,
    disk: Disk,
    meta_path: PathBuf,
    meta: RefCell<Meta>,
    /// Lazily saved fields changed since the last save.
    meta_dirty: Cell<bool>,
    /// Serialises writes of `raft-meta`.
    meta_lock: glommio::sync::Semaphore,
    /// Why appends stopped: an earlier append failed (see the module docs).
    append_failed: RefCell<Option<String>>,
    /// Entries appended whose batches are not durable yet, with the append call's sequence.
    pending: RefCell<VecDeque<(u64, Entry)>>,
    append_seq: Cell<u64>,
    /// The newest durable entry's log id (`None`: the log holds no batch).
    durable_last: Cell<Option<LogId>>,
    /// Offsets below this are committed and applied: what consumers may see.
    high_watermark: Cell<Offset>,
    current_snapshot: RefCell<Option<Snapshot>>,
    closed: Cell<bool>,
    /// Where Raft latencies are recorded (the node's core stats), once set.
    stats: RefCell<Option<(Rc<crate::stats::CoreStats>, crate::types::Partition)>>,
    /// When each entry not yet applied was appended here (for `raft_commit`).
    appended_at: RefCell<VecDeque<(u64, Instant)>>,
}

impl Shared {
    fn record(&self, op: crate::stats::Op, since: Instant) {
        if let Some((stats, partition)) = &*self.stats.borrow() {
            stats.record_latency_since(op, Some(*partition), since);
        }
    }
}

impl Shared {
    /// Writes `raft-meta` now (atomically, synced).
    async fn save_meta(&self) -> io::Result<()> {
        let _permit = self
            .meta_lock
            .acquire_permit(1)
            .await
            .map_err(|_| io::Error::other("Raft state closed"))?;
        // Cleared before the write, so a change made while it is in flight marks it again;
        // set again if the write fails, so the next lazy save retries it.
        self.meta_dirty.set(false);
        let bytes = self.meta.borrow().encode();
        let written = self.disk.write_file_atomic(&self.meta_path, &bytes).await;
        if written.is_err() {
            self.meta_dirty.set(true);
        }
        written.map_err(to_io)
    }

    /// Stops appends after a failed one (the first reason is kept).
    fn fail_appends(&self, e: &crate::Error) {
        let mut failed = self.append_failed.borrow_mut();
        if failed.is_none() {
            log::error!(
                "{}: a Raft append failed, appends stop until the partition is reopened: {e}",
                self.meta_path.display()
            );
            *failed = Some(format!("an earlier Raft append failed: {e}"));
        }
    }

    /// The error for an append after a failed one, if one failed.
    fn appends_stopped(&self) -> Option<io::Error> {
        let reason = self.append_failed.borrow().clone()?;
        Some(to_io(crate::Error::Stopped { reason }))
    }

    fn last_log_id(&self) -> Option<LogId> {
        let last = match self.pending.borrow().back() {
            Some((_, e)) => Some(e.log_id),
            None => self.durable_last.get(),
        };
        let purged = self.meta.borrow().purged;
        match (last, purged) {
            (Some(l), Some(p)) if p.index > l.index => Some(p),
            (None, p) => p,
            (l, _) => l,
        }
    }

    /// Entries with indexes in `[start, end)` that the log holds.
    async fn entries(&self, start: u64, end: u64) -> io::Result<Vec<Entry>> {
        let start = match self.meta.borrow().purged {
            Some(p) => start.max(p.index + 1),
            None => start,
        };
        if start >= end {
            return Ok(Vec::new());
        }
        // Pending entries first: one that becomes durable while the log is read is then
        // found in one place or the other, never in neither.
        let pending: Vec<Entry> = self
            .pending
            .borrow()
            .iter()
            .filter(|(_, e)| e.log_id.index >= start && e.log_id.index < end)
            .map(|(_, e)| e.clone())
            .collect();
        let log_end = pending.first().map_or(end, |e| e.log_id.index);
        let mut out = Vec::new();
        let mut next = start;
        while next < log_end {
            let batches = self
                .log
                .read_raft(
                    next,
                    ((log_end - next) as usize)
                        .saturating_mul(ENTRY_BYTES_GUESS)
                        .min(READ_CHUNK_BYTES),
                )
                .await
                .map_err(to_io)?;
            if batches.is_empty() {
                break;
            }
            for batch in batches {
                let index = batch.header().meta.raft_index;
                if index < next {
                    continue;
                }
                if index >= log_end {
                    next = log_end;
                    break;
                }
                // The log may begin after `start` (entries never held or purged); after the
                // first entry found, indexes must be consecutive.
                if index != next && !out.is_empty() {
                    return Err(io::Error::other(format!(
                        "Raft log hole: expected index {next}, found {index}"
                    )));
                }
                out.push(entry_from_batch(&batch)?);
                next = index + 1;
            }
        }
        out.extend(pending);
        Ok(out)
    }

    /// The offset after the batch with Raft index `index` (the high watermark once it is
    /// applied).
    async fn end_offset_of(&self, index: u64) -> io::Result<Offset> {
        let batches = self.log.read_raft(index, 1).await.map_err(to_io)?;
        match batches.first() {
            Some(b) if b.header().meta.raft_index == index => Ok(b.next_offset()),
            _ => Err(io::Error::other(format!(
                "applied Raft index {index} is not in the log"
            ))),
        }
    }
}

/// Opens the Raft side of a partition whose log is open: returns its log store and state
/// machine (handles on the same state).
pub async fn open(log: Log, disk: Disk) -> crate::Result<(LogStore, StateMachine)> {
    // A failed write must stop the log: entries after it must not take its place.
    log.stop_on_write_error();
    let dir = log.dir().to_path_buf();
    let meta = Meta::load(&dir)?;
    let durable_last = log
        .last_batch_header()
        .await?
        .map(|h| log_id(h.meta.term, h.meta.raft_index));
    let shared = Rc::new(Shared {
        log: log.clone(),
        disk,
        meta_path: dir.join(META_FILE),
        meta: RefCell::new(meta),
        meta_dirty: Cell::new(false),
        meta_lock: glommio::sync::Semaphore::new(1),
        append_failed: RefCell::new(None),
        pending: RefCell::new(VecDeque::new()),
        append_seq: Cell::new(0),
        durable_last: Cell::new(durable_last),
        high_watermark: Cell::new(log.lowest_offset()),
        current_snapshot: RefCell::new(None),
        closed: Cell::new(false),
        stats: RefCell::new(None),
        appended_at: RefCell::new(VecDeque::new()),
    });
    let applied = shared.meta.borrow().applied;
    let hw = match applied {
        Some(a) if durable_last.is_some_and(|l| l.index >= a.index) => {
            shared.end_offset_of(a.index).await.map_err(io_to_error)?
        }
        _ => log.lowest_offset(),
    };
    shared.high_watermark.set(hw);
    log.set_high_watermark(hw);
    glommio::spawn_local(save_lazily(Rc::downgrade(&shared))).detach();
    Ok((
        LogStore {
            shared: shared.clone(),
        },
        StateMachine { shared },
    ))
}

/// Saves lazily written Raft state every [`META_SAVE_EVERY`] while the partition is open.
async fn save_lazily(shared: std::rc::Weak<Shared>) {
    loop {
        crate::io::sleep(META_SAVE_EVERY).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.closed.get() {
            return;
        }
        if shared.meta_dirty.get()
            && let Err(e) = shared.save_meta().await
        {
            log::warn!("{}: saving Raft state: {e}", shared.meta_path.display());
        }
    }
}

fn to_io(e: crate::Error) -> io::Error {
    io::Error::other(e)
}

fn io_to_error(e: io::Error) -> crate::Error {
    crate::Error::InvalidArgument(e.to_string())
}

/// Decodes a stored batch back into the Raft entry it holds.
fn entry_from_batch(batch: &Batch) -> io::Result<Entry> {
    let h = batch.header();
    let id = log_id(h.meta.term, h.meta.raft_index);
    if !batch.is_control() {
        return Ok(Entry::new_normal(
            id,
            RecordBatch::from_stored(batch.clone()),
        ));
    }
    let payload = batch.control_payload();
    match payload.first() {
        Some(&CONTROL_BLANK) => Ok(Entry::new_blank(id)),
        Some(&CONTROL_MEMBERSHIP) => {
            let m: Membership = serde_json::from_slice(&payload[1..]).map_err(|e| {
                io::Error::other(format!("membership entry {}: {e}", h.meta.raft_index))
            })?;
            Ok(Entry::new_membership(id, m))
        }
        _ => Err(io::Error::other(format!(
            "control batch at Raft index {} has an unknown kind",
            h.meta.raft_index
        ))),
    }
}

fn range_to_bounds<RB: RangeBounds<u64>>(range: &RB) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s + 1,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.saturating_add(1),
        Bound::Excluded(&e) => e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

/// Queues one entry's batch in the log; returns the ticket of its group commit.
async fn submit(log: &Log, entry: &mut Entry) -> crate::Result<crate::storage::AppendTicket> {
    let mut meta = BatchMeta {
        timestamp_ms: crate::io::now_ms(),
        term: entry.log_id.leader_id.term,
        raft_index: entry.log_id.index,
    };
    match &mut entry.payload {
        EntryPayload::Normal(d) => {
            meta.timestamp_ms = d.timestamp_ms;
            // A batch as the leader stored it is written as is when its header says this entry
            // (its CRC was checked when it arrived); anything else is encoded here.
            let stored = d.stored.as_ref().filter(|batch| {
                batch.header().meta == meta
                    && batch.record_count() == d.count
                    && !batch.is_control()
            });
            let ticket = if let Some(batch) = stored {
                log.submit_stored(batch).await?
            } else if let Some(room) = d.unsealed.take() {
                // A produce on the leader: seal the batch around the records in place, once
                // the body no longer shares the buffer (openraft did not clone the entry).
                // (If the append then fails, the entry is dropped with it: openraft stops the
                // group on a storage error, so the emptied body is never read.)
                d.body = bytes::Bytes::new();
                match room.try_into_mut() {
                    Ok(buf) => log.submit_in_place(d.count, buf, meta).await?,
                    Err(room) => {
                        d.body = room.slice(crate::storage::format::HEADER_BYTES..);
                        log.submit_records_body(d.count, &d.body, meta).await?
                    }
                }
            } else {
                log.submit_records_body(d.count, &d.body, meta).await?
            };
            d.base_offset = Some(ticket.base_offset());
            // Replication reads the still pending entry: it carries the stored form too.
            let batch = ticket.batch();
            d.body = batch.body();
            d.stored = Some(batch);
            Ok(ticket)
        }
        EntryPayload::Blank => log.submit_control(&[CONTROL_BLANK], meta).await,
        EntryPayload::Membership(m) => {
            let mut payload = vec![CONTROL_MEMBERSHIP];
            payload.extend(serde_json::to_vec(m).expect("membership serializes"));
            log.submit_control(&payload, meta).await
        }
    }
}

/// The partition's Raft log storage (and, cloned, its log reader).
#[derive(Clone)]
pub struct LogStore {
    shared: Rc<Shared>,
}

impl LogStore {
    /// The partition log under this store.
    pub fn log(&self) -> &Log {
        &self.shared.log
    }

    /// The id of the last entry this store holds (appended, durable or not; or the purged
    /// one when the log holds none after it).
    pub fn last_log_id(&self) -> Option<LogId> {
        self.shared.last_log_id()
    }

    /// Records Raft latencies (append, commit, apply) into `stats` for `partition`.
    pub fn set_stats(
        &self,
        stats: Rc<crate::stats::CoreStats>,
        partition: crate::types::Partition,
    ) {
        *self.shared.stats.borrow_mut() = Some((stats, partition));
    }

    /// Stops the lazy saver after writing the Raft state a last time.
    pub async fn close(&self) -> crate::Result<()> {
        self.shared.closed.set(true);
        self.shared.save_meta().await.map_err(io_to_error)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let (start, end) = range_to_bounds(&range);
        self.shared.entries(start, end).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.shared.meta.borrow().vote)
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, io::Error> {
        // Bound one replication message: at most 4096 entries per call.
        let end = end.min(start.saturating_add(4096));
        self.shared.entries(start, end).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        Ok(LogState {
            last_purged_log_id: self.shared.meta.borrow().purged,
            last_log_id: self.shared.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.shared.meta.borrow_mut().vote = Some(*vote);
        self.shared.save_meta().await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.shared.meta.borrow_mut().committed = committed;
        self.shared.meta_dirty.set(true);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.shared.meta.borrow().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        if let Some(e) = self.shared.appends_stopped() {
            return Err(e);
        }
        let seq = self.shared.append_seq.get() + 1;
        self.shared.append_seq.set(seq);
        let started = Instant::now();
        let mut last = None;
        for mut entry in entries {
            let ticket = match submit(&self.shared.log, &mut entry).await {
                Ok(ticket) => ticket,
                Err(e) => {
                    // Entries of this call queued before it may still be written.
                    self.shared.fail_appends(&e);
                    self.shared.pending.borrow_mut().retain(|(s, _)| *s != seq);
                    return Err(to_io(e));
                }
            };
            last = Some((ticket, entry.log_id));
            self.shared
                .appended_at
                .borrow_mut()
                .push_back((entry.log_id.index, started));
            self.shared.pending.borrow_mut().push_back((seq, entry));
        }
        let shared = self.shared.clone();
        glommio::spawn_local(async move {
            let result = match last {
                Some((ticket, id)) => ticket.durable().await.map(|_| Some(id)),
                None => Ok(None),
            };
            let result = match (result, shared.appends_stopped()) {
                (Ok(id), None) => {
                    if let Some(id) = id {
                        shared.durable_last.set(Some(id));
                        shared.record(crate::stats::Op::RaftAppend, started);
                    }
                    Ok(())
                }
                // Written after an earlier append failed (queued before that was known here):
                // never reported flushed.
                (Ok(_), Some(stopped)) => Err(stopped),
                (Err(e), _) => {
                    shared.fail_appends(&e);
                    Err(to_io(e))
                }
            };
            // Durable or failed, these entries are no longer pending.
            shared.pending.borrow_mut().retain(|(s, _)| *s > seq);
            callback.io_completed(result);
        })
        .detach();
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let keep = last_log_id.map(|l| l.index);
        self.shared
            .log
            .truncate_raft_after(keep)
            .await
            .map_err(to_io)?;
        self.shared.pending.borrow_mut().clear();
        if let Some(k) = keep {
            self.shared
                .appended_at
                .borrow_mut()
                .retain(|(i, _)| *i <= k);
        } else {
            self.shared.appended_at.borrow_mut().clear();
        }
        let last = self
            .shared
            .log
            .last_batch_header()
            .await
            .map_err(to_io)?
            .map(|h| log_id(h.meta.term, h.meta.raft_index));
        self.shared.durable_last.set(last);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        {
            let mut meta = self.shared.meta.borrow_mut();
            if meta.purged.is_some_and(|p| p.index >= log_id.index) {
                return Ok(());
            }
            meta.purged = Some(log_id);
        }
        self.shared.save_meta().await
    }
}

/// The partition's state machine: the high watermark.
#[derive(Clone)]
pub struct StateMachine {
    shared: Rc<Shared>,
}

impl StateMachine {
    /// Offsets below this are committed and applied.
    pub fn high_watermark(&self) -> Offset {
        self.shared.high_watermark.get()
    }

    /// The Raft index of the last applied entry.
    pub fn applied_index(&self) -> Option<u64> {
        self.shared.meta.borrow().applied.map(|a| a.index)
    }

    fn advance(&self, offset: Offset) {
        if offset > self.shared.high_watermark.get() {
            self.shared.high_watermark.set(offset);
            self.shared.log.set_high_watermark(offset);
        }
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = LogSnapshot;
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let meta = self.shared.meta.borrow();
        Ok((meta.applied, meta.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures::Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>>
            + Unpin
            + OptionalSend,
    {
        let started = Instant::now();
        let mut hw = self.shared.high_watermark.get();
        let mut membership_changed = false;
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            loop {
                let front = self.shared.appended_at.borrow().front().copied();
                match front {
                    Some((index, at)) if index <= entry.log_id.index => {
                        self.shared.appended_at.borrow_mut().pop_front();
                        if index == entry.log_id.index {
                            self.shared.record(crate::stats::Op::RaftCommit, at);
                        }
                    }
                    _ => break,
                }
            }
            let base = match &entry.payload {
                EntryPayload::Normal(d) => {
                    let base = d.base_offset.ok_or_else(|| {
                        io::Error::other(format!(
                            "entry {} reached apply without an offset",
                            entry.log_id
                        ))
                    })?;
                    hw = base.plus(d.count as u64);
                    base
                }
                EntryPayload::Blank => hw,
                EntryPayload::Membership(m) => {
                    self.shared.meta.borrow_mut().membership =
                        StoredMembership::new(Some(entry.log_id), m.clone());
                    membership_changed = true;
                    hw
                }
            };
            self.shared.meta.borrow_mut().applied = Some(entry.log_id);
            if let Some(responder) = responder {
                responder.send(AppendResponse {
                    base_offset: base.get(),
                });
            }
        }
        self.advance(hw);
        self.shared.record(crate::stats::Op::RaftApply, started);
        if membership_changed {
            self.shared.save_meta().await?;
        } else {
            self.shared.meta_dirty.set(true);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<
            openraft::vote::leader_id_std::CommittedLeaderId<u64>,
            crate::raft::types::NodeId,
            crate::raft::types::Node,
        >,
        snapshot: LogSnapshot,
    ) -> Result<(), io::Error> {
        let log = &self.shared.log;
        let batches = snapshot
            .clone()
            .into_batches()
            .await
            .map_err(io::Error::other)?;
        let mut parsed = Vec::with_capacity(batches.len());
        for bytes in &batches {
            parsed.push(
                Batch::parse(bytes.clone())
                    .map_err(|e| io::Error::other(format!("snapshot batch: {e}")))?,
            );
        }
        // The receiving connection checked this already (a bad snapshot is a bad request);
        // installing one would leave this log's offsets unlike the leader's.
        let headers: Vec<_> = parsed.iter().map(|b| *b.header()).collect();
        check_snapshot_batches(
            &headers,
            meta.last_log_id.map(|l| l.index),
            snapshot.end_offset,
        )
        .map_err(io::Error::other)?;
        let base = parsed
            .first()
            .map_or(Offset(snapshot.end_offset), |b| b.base_offset());
        log.reset_at(base).await.map_err(to_io)?;
        self.shared.pending.borrow_mut().clear();
        let mut last = None;
        for batch in &parsed {
            let mut entry = entry_from_batch(batch)?;
            last = Some(submit(log, &mut entry).await.map_err(to_io)?);
        }
        if let Some(ticket) = last {
            ticket.durable().await.map_err(to_io)?;
        }
        let hw = Offset(snapshot.end_offset);
        self.shared.durable_last.set(
            parsed
                .last()
                .map(|b| log_id(b.header().meta.term, b.header().meta.raft_index)),
        );
        self.shared.high_watermark.set(hw);
        log.set_high_watermark(hw);
        {
            let mut m = self.shared.meta.borrow_mut();
            m.applied = meta.last_log_id;
            m.membership = meta.last_membership.clone();
        }
        self.shared.save_meta().await?;
        *self.shared.current_snapshot.borrow_mut() = Some(Snapshot {
            meta: meta.clone(),
            snapshot,
        });
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        Ok(self.shared.current_snapshot.borrow().clone())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = LogSnapshot;

    /// A lazy snapshot: the log's batches up to the applied entry, read when sent.
    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        // The high watermark is the end of the applied entries (apply advances both).
        let (applied, membership) = {
            let m = self.shared.meta.borrow();
            (m.applied, m.membership.clone())
        };
        let end_offset = self.shared.high_watermark.get().get();
        let batches = Vec::new();
        let snapshot = Snapshot {
            meta: SnapshotMeta {
                last_log_id: applied,
                last_membership: membership,
            },
            snapshot: LogSnapshot {
                batches,
                source: applied.map(|a| SnapshotSource {
                    log: self.shared.log.clone(),
                    upto: a.index,
                }),
                end_offset,
            },
        };
        *self.shared.current_snapshot.borrow_mut() = Some(snapshot.clone());
        Ok(snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The records of a produce are copied once on the leader, into the buffer the batch is
    /// sealed in; a follower writes the leader's stored batch as it arrived. Both entries leave
    /// `submit` carrying their stored form (what replication then sends), and the log holds
    /// exactly those bytes.
    #[test]
    fn a_produce_is_sealed_in_place_and_a_replicated_batch_is_stored_unchanged() {
        let dir = crate::io::unit_test_dir("store-submit");
        crate::io::run_test_executor(async move {
            let log = Log::open(&dir, crate::storage::LogConfig::default())
                .await
                .unwrap();
            let records = RecordBatch::from_values(&[b"one".as_slice(), b"two"], 1_000);
            let body_at = records.body.as_ptr();
            let mut produced = Entry::new_normal(log_id(2, 1), records);
            let ticket = submit(&log, &mut produced).await.unwrap();
            ticket.durable().await.unwrap();
            let EntryPayload::Normal(leader) = &produced.payload else {
                unreachable!()
            };
            let sealed = leader
                .stored
                .clone()
                .expect("the entry carries its stored form");
            assert_eq!(
                sealed.body().as_ptr(),
                body_at,
                "the records were copied again"
            );
            assert!(leader.unsealed.is_none());
            assert_eq!(leader.body, sealed.body());
            assert_eq!(sealed.header().meta.raft_index, 1);

            // An entry whose buffer is shared (a clone of it lives) is copied instead, and the
            // clone keeps its records.
            let records = RecordBatch::from_values(&[b"four".as_slice()], 1_500);
            let mut cloned = Entry::new_normal(log_id(2, 3), records);
            let keep = cloned.clone();
            submit(&log, &mut cloned)
                .await
                .unwrap()
                .durable()
                .await
                .unwrap();
            let (EntryPayload::Normal(copied), EntryPayload::Normal(kept)) =
                (&cloned.payload, &keep.payload)
            else {
                unreachable!()
            };
            assert_eq!(copied.body, kept.body);
            assert_ne!(
                copied.body.as_ptr(),
                kept.body.as_ptr(),
                "a shared buffer was sealed"
            );
            assert_eq!(&kept.body[4..], b"four");

            // A batch as a follower receives it: the leader's bytes, for index 4.
            let theirs = crate::storage::format::encode_batch(
                Offset(3),
                &[b"three".as_slice()],
                BatchMeta {
                    timestamp_ms: 2_000,
                    term: 2,
                    raft_index: 4,
                },
            );
            let theirs = Batch::parse(theirs).unwrap();
            let mut replicated = Entry::new_normal(
                log_id(2, 4),
                RecordBatch {
                    timestamp_ms: 2_000,
                    count: 1,
                    body: theirs.body(),
                    base_offset: None,
                    stored: Some(theirs.clone()),
                    unsealed: None,
                },
            );
            let ticket = submit(&log, &mut replicated).await.unwrap();
            assert_eq!(
                ticket.batch().bytes().as_ptr(),
                theirs.bytes().as_ptr(),
                "the leader's batch was encoded again"
            );
            ticket.durable().await.unwrap();
            let on_disk = log.read_raft(1, 1 << 20).await.unwrap();
            assert_eq!(on_disk.len(), 3);
            assert_eq!(on_disk[0].bytes(), sealed.bytes());
            assert_eq!(on_disk[1].body(), copied.body);
            assert_eq!(
                on_disk[2].bytes(),
                theirs.bytes(),
                "the leader's bytes, unchanged"
            );
            log.close().await.unwrap();
        });
    }
}

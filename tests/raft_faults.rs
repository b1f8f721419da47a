//! The Raft log store (src/raft/store.rs) when the disk fails under it, driven directly like
//! tests/raft_store.rs (no processes, no openraft core): the store and its partition log are
//! opened over a fault-injecting `Disk` (`Disk::with_faults`, src/io/fault.rs).
//!
//! Fault model (the injector's): an injected write or `fdatasync` fails *before* touching the
//! file, with EIO; while the disk is "full" every write and allocation fails with ENOSPC.
//!
//! The contract under test (openraft's `RaftLogStorage::append`): the `IOFlushed` callback
//! reports success only once the entries are durable; a failure is reported, never success;
//! the log never holds a hole (an entry written after one that failed). And what a reopen finds:
//! every entry reported flushed, nothing of a failed write; after a failed `fdatasync` possibly
//! the entries of that group commit too (written, only their sync failed), but only whole.
//!
//! `raft-meta` (the vote) is written by `Disk::write_file_atomic` (src/io/mod.rs): the
//! temporary file's create, write and `fdatasync` and the rename go to glommio directly, not
//! through the injector, which reaches only the directory `fsync` after the rename
//! (`Disk::sync_dir`). The tests
//! below say which part of the vote write each fault hits.

mod common;

use std::io;
use std::path::Path;
use std::rc::Rc;

use bytes::Bytes;
use common::{RemoveOnSuccess, run, test_dir};
use corelog::Error;
use corelog::io::{Disk, Faults};
use corelog::raft::store::{self, LogStore, META_FILE, Meta, StateMachine};
use corelog::raft::types::{Entry, RecordBatch, TypeConfig, log_id};
use corelog::storage::{Log, LogConfig};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::type_config::TypeConfigExt;
use openraft::{EntryPayload, RaftLogReader};

/// A store write fault injected while an append is in flight.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum WriteFault {
    /// The disk is full: writes and allocations fail with ENOSPC.
    DiskFull,
    /// The next store write fails with EIO.
    WriteEio,
}

impl WriteFault {
    fn arm(self, faults: &Faults) {
        match self {
            WriteFault::DiskFull => faults.set_disk_full(true),
            WriteFault::WriteEio => faults.fail_writes(1, libc::EIO),
        }
    }

    fn clear(self, faults: &Faults) {
        match self {
            WriteFault::DiskFull => faults.set_disk_full(false),
            WriteFault::WriteEio => faults.fail_writes(0, libc::EIO),
        }
    }

    /// Whether `e` is the storage error this fault must surface as.
    fn is_its_error(self, e: &Error) -> bool {
        match self {
            WriteFault::DiskFull => matches!(e, Error::DiskFull { .. }),
            WriteFault::WriteEio => matches!(
                e,
                Error::Io {
                    errno: Some(libc::EIO),
                    ..
                }
            ),
        }
    }
}

/// Fault model: the group-commit write of an append fails (ENOSPC: the disk is full; or EIO),
/// then the disk works again.
#[test]
fn disk_full_during_append_fails_the_callback_and_a_reopen_finds_exactly_the_flushed_entries() {
    write_fault_during_append(WriteFault::DiskFull, "raft_faults_disk_full");
}

/// Fault model: the group-commit write of an append fails with EIO, then the disk works again.
#[test]
fn eio_write_during_append_fails_the_callback_and_a_reopen_finds_exactly_the_flushed_entries() {
    write_fault_during_append(WriteFault::WriteEio, "raft_faults_write_eio");
}

fn write_fault_during_append(fault: WriteFault, name: &str) {
    let dir = test_dir(name);
    let _cleanup = RemoveOnSuccess(dir.clone());
    run(|| async move {
        let faults = Rc::new(Faults::new());
        let (mut ls, _sm) = open_store(&dir, &faults).await;
        let log = ls.log().clone();
        let mut flushed = first_entries();
        expect_flushed(append(&mut ls, flushed.clone()).await, "before the fault");
        let written = log.written_offset();
        let writes = faults.writes();

        fault.arm(&faults);
        // Two appends back to back (as openraft issues them: each returns once queued): one
        // group commit, or the second queued behind the first. Both must fail.
        let (tx_a, rx_a) = TypeConfig::oneshot();
        ls.append(vec![normal(1, 6), normal(1, 7)], IOFlushed::signal(tx_a))
            .await
            .expect("an append is only queued when append returns");
        let (tx_b, rx_b) = TypeConfig::oneshot();
        ls.append(vec![normal(1, 8)], IOFlushed::signal(tx_b))
            .await
            .expect("an append is only queued when append returns");
        for (what, rx) in [("6..=7", rx_a), ("8", rx_b)] {
            match rx.await.expect("the IOFlushed callback was dropped") {
                Ok(()) => panic!("{fault:?}: the append of {what} was reported flushed"),
                Err(e) => assert!(
                    fault.is_its_error(storage_error(&e)),
                    "{fault:?}: the append of {what} failed with {e:?}"
                ),
            }
        }
        assert_eq!(
            faults.writes(),
            writes,
            "{fault:?}: a failed write hit the disk"
        );

        // Nothing of the failed appends is durable, in the log or in what the store reports.
        assert_eq!(log.written_offset(), written);
        assert_eq!(durable_indexes(&log).await, [1, 2, 3, 4, 5]);
        let state = ls.get_log_state().await.unwrap();
        assert_eq!(
            state.last_log_id,
            Some(log_id(1, 5)),
            "{fault:?}: the store still reports failed entries as its log"
        );
        assert_eq!(summary(&all_entries(&mut ls).await), summary(&flushed));

        fault.clear(&faults);
        close(&ls).await;

        // Reopen: exactly the entries reported flushed; appends work again.
        let (mut ls, _sm) = open_store(&dir, &faults).await;
        let state = ls.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(log_id(1, 5)));
        assert_eq!(summary(&all_entries(&mut ls).await), summary(&flushed));
        let more = vec![normal(2, 6), Entry::new_blank(log_id(2, 7)), normal(2, 8)];
        expect_flushed(append(&mut ls, more.clone()).await, "after reopen");
        flushed.extend(more);
        assert_eq!(summary(&all_entries(&mut ls).await), summary(&flushed));
        close(&ls).await;

        let (mut ls, _sm) = open_store(&dir, &faults).await;
        assert_eq!(summary(&all_entries(&mut ls).await), summary(&flushed));
        assert_eq!(
            ls.get_log_state().await.unwrap().last_log_id,
            Some(log_id(2, 8))
        );
        close(&ls).await;
    });
}

/// Fault model: an append's group-commit write fails, then the disk works again *on the same
/// store* (openraft learns of the failure asynchronously, through the callback, and may append
/// again before it has stopped). The next entries openraft would append follow the failed
/// ones (it believes those are in its log); written now they would land where the failed ones
/// should be, leaving a hole in the Raft log. They must be refused, never reported flushed,
/// and the log must stay exactly the durable entries.
#[test]
fn after_a_failed_enospc_append_the_store_refuses_appends_and_never_leaves_a_hole() {
    no_append_after_a_failed_one(WriteFault::DiskFull, "raft_faults_no_hole_enospc");
}

/// As above, for an EIO write.
#[test]
fn after_a_failed_eio_append_the_store_refuses_appends_and_never_leaves_a_hole() {
    no_append_after_a_failed_one(WriteFault::WriteEio, "raft_faults_no_hole_eio");
}

fn no_append_after_a_failed_one(fault: WriteFault, name: &str) {
    let dir = test_dir(name);
    let _cleanup = RemoveOnSuccess(dir.clone());
    run(|| async move {
        let faults = Rc::new(Faults::new());
        let (mut ls, _sm) = open_store(&dir, &faults).await;
        let log = ls.log().clone();
        let flushed = first_entries();
        expect_flushed(append(&mut ls, flushed.clone()).await, "before the fault");
        let written = log.written_offset();

        fault.arm(&faults);
        match append(&mut ls, vec![normal(1, 6), normal(1, 7)]).await {
            Appended::Failed(e) => assert!(fault.is_its_error(storage_error(&e)), "{e:?}"),
            other => panic!("{fault:?}: the append of 6..=7 resolved {other:?}"),
        }
        fault.clear(&faults);

        let writes = faults.writes();
        match append(&mut ls, vec![normal(1, 8), normal(1, 9)]).await {
            Appended::Refused(e) | Appended::Failed(e) => assert!(
                matches!(storage_error(&e), Error::Stopped { .. }),
                "{fault:?}: the append after a failed one was refused with {e:?}"
            ),
            Appended::Flushed => panic!(
                "{fault:?}: entries 8..=9 were reported flushed after 6..=7 failed (the log \
                 now holds {:?})",
                durable_indexes(&log).await
            ),
        }
        assert_eq!(
            faults.writes(),
            writes,
            "{fault:?}: the refused append was written"
        );
        assert_eq!(log.written_offset(), written);
        assert_eq!(durable_indexes(&log).await, [1, 2, 3, 4, 5]);
        close(&ls).await;

        // A reopen (what recovers the partition) finds exactly the flushed entries, without a
        // hole, and takes appends again.
        let (mut ls, _sm) = open_store(&dir, &faults).await;
        assert_eq!(
            ls.get_log_state().await.unwrap().last_log_id,
            Some(log_id(1, 5))
        );
        assert_eq!(summary(&all_entries(&mut ls).await), summary(&flushed));
        expect_flushed(append(&mut ls, vec![normal(2, 6)]).await, "after reopening");
        assert_eq!(durable_indexes(ls.log()).await, [1, 2, 3, 4, 5, 6]);
        close(&ls).await;
    });
}

/// Fault model: the `fdatasync` of an append's group commit fails (EIO). The kernel may have
/// dropped the written pages, so the partition stops for good (src/storage/log.rs,
/// `sync_or_stop`): the callback reports `Stopped`, later appends are refused with `Stopped`
/// without touching the disk, the entries durable before stay readable (from disk: no tail
/// cache), and a reopen finds every flushed entry, plus at most the failed group commit, whole.
#[test]
fn failed_fdatasync_during_append_stops_the_partition_and_durable_entries_stay_readable() {
    let dir = test_dir("raft_faults_fdatasync");
    let _cleanup = RemoveOnSuccess(dir.clone());
    run(|| async move {
        let faults = Rc::new(Faults::new());
        let (mut ls, _sm) = open_store(&dir, &faults).await;
        let log = ls.log().clone();
        let flushed = first_entries();
        expect_flushed(append(&mut ls, flushed.clone()).await, "before the fault");
        let written = log.written_offset();

        faults.fail_syncs(1);
        let unsynced = vec![normal(1, 6), normal(1, 7)];
        match append(&mut ls, unsynced.clone()).await {
            Appended::Failed(e) => assert!(
                matches!(storage_error(&e), Error::Stopped { .. }),
                "the append whose fdatasync failed failed with {e:?}"
            ),
            other => panic!("the append whose fdatasync failed resolved {other:?}"),
        }
        let (syncs, writes) = (faults.syncs(), faults.writes());
        for i in 0..3 {
            match append(&mut ls, vec![normal(1, 8 + i)]).await {
                Appended::Refused(e) | Appended::Failed(e) => assert!(
                    matches!(storage_error(&e), Error::Stopped { .. }),
                    "an append after the stop failed with {e:?}"
                ),
                Appended::Flushed => panic!("an append after the stop was reported flushed"),
            }
        }
        assert_eq!(faults.syncs(), syncs, "a stopped partition still syncs");
        assert_eq!(faults.writes(), writes, "a stopped partition still writes");
        assert!(matches!(
            log.wait_for(written).await,
            Err(Error::Stopped { .. })
        ));

        // Durable entries stay readable, from the disk (the tail cache is off).
        let reads = faults.reads();
        assert_eq!(log.written_offset(), written);
        assert_eq!(durable_indexes(&log).await, [1, 2, 3, 4, 5]);
        let durable = ls.try_get_log_entries(1..6).await.unwrap();
        assert_eq!(summary(&durable), summary(&flushed));
        assert!(
            faults.reads() > reads,
            "the durable entries were not read from disk"
        );
        assert_eq!(
            ls.get_log_state().await.unwrap().last_log_id,
            Some(log_id(1, 5)),
            "the store still reports the unsynced entries as its log"
        );
        assert_eq!(summary(&all_entries(&mut ls).await), summary(&flushed));
        ls.close().await.expect("raft-meta is still written");
        let _ = log.close().await;

        // Reopen: every flushed entry; the unsynced group commit was written (only its sync
        // failed), so it may be there too, but only whole (one write).
        let (mut ls, _sm) = open_store(&dir, &faults).await;
        let got = all_entries(&mut ls).await;
        assert!(got.len() >= flushed.len(), "flushed entries lost: {got:?}");
        let (durable, extra) = got.split_at(flushed.len());
        assert_eq!(summary(durable), summary(&flushed));
        assert!(
            extra.is_empty() || summary(extra) == summary(&unsynced),
            "after reopen, beyond the flushed entries: {:?}",
            summary(extra)
        );
        eprintln!(
            "fdatasync fault: {} entries of the unsynced group commit came back",
            extra.len()
        );
        let last = got.last().expect("entries").log_id;
        assert_eq!(ls.get_log_state().await.unwrap().last_log_id, Some(last));
        let next = normal(2, last.index + 1);
        expect_flushed(append(&mut ls, vec![next.clone()]).await, "after reopen");
        let mut want = got.clone();
        want.push(next);
        assert_eq!(summary(&all_entries(&mut ls).await), summary(&want));
        close(&ls).await;
    });
}

/// Fault model: the directory `fsync` of a `raft-meta` write fails (EIO). That is the only step
/// of the write the injector reaches, and it comes *after* the rename: `save_vote` reports the
/// error, but the new vote already replaced the old one in the directory (its durability across
/// a crash is unknown). A vote reported failed yet kept is the safe direction for Raft (a node
/// never votes below what it may have stored); the reverse (reported saved, then lost) could
/// let it vote twice in a term.
#[test]
fn failed_directory_fsync_of_save_vote_is_an_error_and_the_renamed_vote_is_kept() {
    let dir = test_dir("raft_faults_vote_dir_sync");
    let _cleanup = RemoveOnSuccess(dir.clone());
    run(|| async move {
        let faults = Rc::new(Faults::new());
        let (mut ls, _sm) = open_store(&dir, &faults).await;
        let v1 = openraft::impls::Vote::new(1, 1);
        ls.save_vote(&v1).await.expect("save the first vote");

        faults.fail_syncs(1);
        let syncs = faults.syncs();
        let v2 = openraft::impls::Vote::new(2, 3);
        let err = ls
            .save_vote(&v2)
            .await
            .expect_err("save_vote reported success although its directory fsync failed");
        assert!(
            matches!(
                storage_error(&err),
                Error::Io {
                    op: "syncing",
                    errno: Some(libc::EIO),
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(faults.syncs(), syncs, "the failed fsync reached the disk");
        assert_eq!(
            Meta::load(&dir).unwrap().vote,
            Some(v2),
            "raft-meta holds the vote renamed into place before the failed directory fsync"
        );
        assert!(!dir.join(format!("{META_FILE}.tmp")).exists());
        assert_eq!(ls.read_vote().await.unwrap(), Some(v2));
        close(&ls).await;

        let (mut ls, _sm) = open_store(&dir, &faults).await;
        assert_eq!(ls.read_vote().await.unwrap(), Some(v2));
        close(&ls).await;
    });
}

/// Fault model — *not* through the injector, which cannot reach these calls: the temporary
/// file of a `raft-meta` write cannot be created (a directory sits at its path, so creating
/// it fails with EISDIR; this works for root too, unlike permissions).
/// The write fails before the rename: `save_vote` reports the error and the file still holds
/// the previous vote, which is what a reopen reads.
#[test]
fn save_vote_failing_before_the_rename_keeps_the_previous_vote_on_disk() {
    let dir = test_dir("raft_faults_vote_tmp");
    let _cleanup = RemoveOnSuccess(dir.clone());
    run(|| async move {
        let faults = Rc::new(Faults::new());
        let (mut ls, _sm) = open_store(&dir, &faults).await;
        let v1 = openraft::impls::Vote::new(1, 1);
        ls.save_vote(&v1).await.expect("save the first vote");
        let before = std::fs::read(dir.join(META_FILE)).unwrap();

        let tmp = dir.join(format!("{META_FILE}.tmp"));
        std::fs::create_dir(&tmp).unwrap();
        let v2 = openraft::impls::Vote::new(2, 3);
        let err = ls
            .save_vote(&v2)
            .await
            .expect_err("save_vote reported success although its file could not be written");
        assert!(
            matches!(storage_error(&err), Error::Io { op: "creating", .. }),
            "{err:?}"
        );
        assert_eq!(
            std::fs::read(dir.join(META_FILE)).unwrap(),
            before,
            "raft-meta changed although the write failed"
        );
        assert_eq!(Meta::load(&dir).unwrap().vote, Some(v1));
        // The store keeps the newer vote in memory (the conservative side); openraft stops
        // on the error anyway. Closing writes raft-meta again, which fails the same way.
        assert_eq!(ls.read_vote().await.unwrap(), Some(v2));
        assert!(ls.close().await.is_err());
        ls.log().close().await.unwrap();
        std::fs::remove_dir(&tmp).unwrap();

        let (mut ls, _sm) = open_store(&dir, &faults).await;
        assert_eq!(ls.read_vote().await.unwrap(), Some(v1));
        // And a vote is saved again once the file can be written.
        ls.save_vote(&v2).await.expect("save the vote again");
        close(&ls).await;
        let (mut ls, _sm) = open_store(&dir, &faults).await;
        assert_eq!(ls.read_vote().await.unwrap(), Some(v2));
        close(&ls).await;
    });
}

// ---------------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------------

/// Small segments, no tail cache: reads after a fault go to the disk.
/// The committed log id is saved lazily (every 500 ms while it changes). A lazy save that
/// fails (its temporary file cannot be created, as above) is retried by the next one, without
/// waiting for another commit to mark the state changed.
#[test]
fn a_failed_lazy_raft_meta_save_is_retried_without_a_new_commit() {
    let dir = test_dir("raft_faults_lazy_retry");
    let _cleanup = RemoveOnSuccess(dir.clone());
    run(|| async move {
        let faults = Rc::new(Faults::new());
        let (mut ls, _sm) = open_store(&dir, &faults).await;
        let tmp = dir.join(format!("{META_FILE}.tmp"));
        std::fs::create_dir(&tmp).unwrap();
        let committed = Some(log_id(1, 5));
        ls.save_committed(committed).await.unwrap();
        // At least one lazy save runs and fails.
        corelog::io::sleep(std::time::Duration::from_millis(1200)).await;
        assert_ne!(Meta::load(&dir).unwrap().committed, committed);

        std::fs::remove_dir(&tmp).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while Meta::load(&dir).unwrap().committed != committed {
            assert!(
                std::time::Instant::now() < deadline,
                "the failed lazy save was never retried"
            );
            corelog::io::sleep(std::time::Duration::from_millis(50)).await;
        }
        close(&ls).await;
    });
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 1 << 20,
        preallocate_bytes: 64 << 10,
        tail_cache_bytes_max: 0,
        ..LogConfig::default()
    }
}

/// The log and its Raft store, both over the faulty disk.
async fn open_store(dir: &Path, faults: &Rc<Faults>) -> (LogStore, StateMachine) {
    let disk = Disk::with_faults(faults.clone());
    let log = Log::open_with_disk(dir, config(), disk.clone())
        .await
        .expect("open log");
    store::open(log, disk).await.expect("open raft store")
}

async fn close(ls: &LogStore) {
    ls.close().await.expect("close the raft store");
    ls.log().close().await.expect("close the log");
}

/// What became of one `LogStore::append`.
#[derive(Debug)]
enum Appended {
    /// `append` itself returned an error (nothing queued, no callback).
    Refused(io::Error),
    /// The callback reported the entries durable.
    Flushed,
    /// The callback reported an error.
    Failed(io::Error),
}

async fn append(ls: &mut LogStore, entries: Vec<Entry>) -> Appended {
    let (tx, rx) = TypeConfig::oneshot();
    if let Err(e) = ls.append(entries, IOFlushed::signal(tx)).await {
        return Appended::Refused(e);
    }
    match rx.await.expect("the IOFlushed callback was dropped") {
        Ok(()) => Appended::Flushed,
        Err(e) => Appended::Failed(e),
    }
}

fn expect_flushed(outcome: Appended, what: &str) {
    assert!(
        matches!(outcome, Appended::Flushed),
        "{what}: append resolved {outcome:?}"
    );
}

/// The storage error the store wrapped in an `io::Error`.
fn storage_error(e: &io::Error) -> &Error {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<Error>())
        .unwrap_or_else(|| panic!("not a storage error: {e:?}"))
}

fn normal(term: u64, index: u64) -> Entry {
    let value = format!("entry {index} of term {term}");
    Entry::new_normal(
        log_id(term, index),
        RecordBatch::from_values(&[value.as_bytes()], 1_000 + index as i64),
    )
}

/// Indexes 1..=5: a blank entry (a control batch), then four normal ones.
fn first_entries() -> Vec<Entry> {
    let mut entries = vec![Entry::new_blank(log_id(1, 1))];
    entries.extend((2..=5).map(|i| normal(1, i)));
    entries
}

/// (term, index, records body) of each entry.
fn summary(entries: &[Entry]) -> Vec<(u64, u64, Option<Bytes>)> {
    entries
        .iter()
        .map(|e| {
            let body = match &e.payload {
                EntryPayload::Normal(d) => Some(d.body.clone()),
                _ => None,
            };
            (e.log_id.leader_id.term, e.log_id.index, body)
        })
        .collect()
}

/// Every entry the store serves (durable or pending).
async fn all_entries(ls: &mut LogStore) -> Vec<Entry> {
    ls.try_get_log_entries(0..1_000)
        .await
        .expect("read the store's entries")
}

/// The Raft indexes of the durable batches in the log, in order.
async fn durable_indexes(log: &Log) -> Vec<u64> {
    let mut out = Vec::new();
    let mut next = 0;
    loop {
        let batches = log.read_raft(next, 1 << 20).await.expect("read_raft");
        let mut progressed = false;
        for b in batches {
            let index = b.header().meta.raft_index;
            if index >= next {
                out.push(index);
                next = index + 1;
                progressed = true;
            }
        }
        if !progressed {
            return out;
        }
    }
}

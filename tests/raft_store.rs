//! The partition's Raft log store and state machine (src/raft/store.rs) against openraft's own
//! storage conformance suite, on real files, plus the properties the suite does not cover:
//! entries are one batch each in the partition log, reads stop at the high watermark, and the
//! Raft state survives a reopen.

mod common;

use std::cell::Cell;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use corelog::Offset;
use corelog::io::Disk;
use corelog::raft::store::{self, LogStore, StateMachine};
use corelog::raft::types::{Entry, RecordBatch, TypeConfig, log_id};
use corelog::storage::{Log, LogConfig};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage, RaftStateMachine};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use openraft::{RaftLogReader, StorageError};

fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 64 << 10,
        preallocate_bytes: 64 << 10,
        ..LogConfig::default()
    }
}

async fn open_store(dir: PathBuf) -> (LogStore, StateMachine) {
    let log = Log::open(&dir, small_config()).await.expect("open log");
    store::open(log, Disk::new())
        .await
        .expect("open raft store")
}

struct Builder {
    root: PathBuf,
    next: AtomicUsize,
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, ()> for Builder {
    async fn build(&self) -> Result<((), LogStore, StateMachine), StorageError<TypeConfig>> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let dir = self.root.join(n.to_string());
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create dir");
        let (ls, sm) = open_store(dir).await;
        Ok(((), ls, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    let root = common::test_dir("raft_store_suite");
    let _cleanup = common::RemoveOnSuccess(root.clone());
    common::run(|| async move {
        Suite::test_all(Builder {
            root,
            next: AtomicUsize::new(0),
        })
        .await
        .expect("openraft storage suite");
    });
}

fn normal(term: u64, index: u64, values: &[&[u8]]) -> Entry {
    Entry::new_normal(
        log_id(term, index),
        RecordBatch::from_values(values, 1_000 + index as i64),
    )
}

async fn append_durably(ls: &mut LogStore, entries: Vec<Entry>) {
    let (tx, rx) = TypeConfig::oneshot();
    ls.append(entries, IOFlushed::signal(tx))
        .await
        .expect("append");
    rx.await.expect("callback").expect("flushed");
}

/// Entries become batches with dense offsets; control batches take none; consumers see only
/// applied offsets; truncation by Raft index and reopen keep all of it consistent.
#[test]
fn entries_are_batches_and_reads_stop_at_the_high_watermark() {
    let dir = common::test_dir("raft_store_batches");
    let _cleanup = common::RemoveOnSuccess(dir.clone());
    common::run(|| async move {
        let (mut ls, mut sm) = open_store(dir.clone()).await;
        let log = ls.log().clone();
        append_durably(
            &mut ls,
            vec![
                Entry::new_blank(log_id(1, 1)),
                normal(1, 2, &[b"a", b"b"]),
                normal(1, 3, &[b"c"]),
                Entry::new_blank(log_id(2, 4)),
                normal(2, 5, &[b"d", b"e", b"f"]),
            ],
        )
        .await;
        // Durable but not applied: invisible to consumers.
        assert_eq!(log.written_offset(), Offset(6));
        assert_eq!(log.durable_offset(), Offset(0));
        assert!(log.read_from(Offset(0), 1 << 20).await.unwrap().is_empty());

        // Apply through index 3: offsets 0..3 become visible.
        let entries = ls.try_get_log_entries(1..4).await.unwrap();
        assert_eq!(entries.len(), 3);
        let applied = entries.into_iter().map(|e| Ok((e, None)));
        sm.apply(futures::stream::iter(applied)).await.unwrap();
        assert_eq!(sm.high_watermark(), Offset(3));
        let records = log.read_from(Offset(0), 1 << 20).await.unwrap();
        let values: Vec<&[u8]> = records.iter().map(|r| &r.value[..]).collect();
        assert_eq!(values, [b"a" as &[u8], b"b", b"c"]);

        // Entries read back carry their offsets and bytes.
        let e5 = ls.try_get_log_entries(5..6).await.unwrap();
        match &e5[0].payload {
            openraft::EntryPayload::Normal(d) => {
                assert_eq!(d.base_offset, Some(Offset(3)));
                assert_eq!(d.count, 3);
            }
            other => panic!("expected a normal entry, got {other:?}"),
        }

        // A conflict cuts after index 4 (a control batch): offsets 3.. are gone, 3 is reused.
        ls.truncate_after(Some(log_id(2, 4))).await.unwrap();
        assert_eq!(log.written_offset(), Offset(3));
        append_durably(&mut ls, vec![normal(3, 5, &[b"g"])]).await;
        let e5 = ls.try_get_log_entries(5..6).await.unwrap();
        assert_eq!(e5[0].log_id, log_id(3, 5));
        ls.close().await.unwrap();
        log.close().await.unwrap();

        // Reopen: the applied point and the high watermark come back; the log state matches.
        let (mut ls, sm) = open_store(dir.clone()).await;
        assert_eq!(sm.high_watermark(), Offset(3));
        assert_eq!(ls.log().durable_offset(), Offset(3));
        let state = ls.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(log_id(3, 5)));
        let all = ls.try_get_log_entries(0..100).await.unwrap();
        let ids: Vec<_> = all.iter().map(|e| e.log_id.index).collect();
        assert_eq!(ids, [1, 2, 3, 4, 5]);
        ls.log().close().await.unwrap();
    });
}

/// Entries are readable as soon as `append` returns, before their group commit is durable.
#[test]
fn appended_entries_are_readable_before_they_are_durable() {
    let dir = common::test_dir("raft_store_pending");
    let _cleanup = common::RemoveOnSuccess(dir.clone());
    common::run(|| async move {
        let (mut ls, _sm) = open_store(dir.clone()).await;
        let flushed = std::rc::Rc::new(Cell::new(false));
        let (tx, rx) = TypeConfig::oneshot();
        ls.append(
            vec![normal(1, 1, &[b"x"]), normal(1, 2, &[b"y"])],
            IOFlushed::signal(tx),
        )
        .await
        .unwrap();
        let entries = ls.try_get_log_entries(1..3).await.unwrap();
        assert_eq!(entries.len(), 2);
        flushed.set(rx.await.unwrap().is_ok());
        assert!(flushed.get());
        let entries = ls.try_get_log_entries(1..3).await.unwrap();
        assert_eq!(entries.len(), 2, "durable entries are read from the log");
        ls.log().close().await.unwrap();
    });
}

/// A damaged `raft-meta` (vote, committed, applied) is refused with a typed corruption error
/// naming the file, never read as an empty state (that could vote twice in a term).
#[test]
fn a_damaged_raft_meta_file_is_refused_not_reset() {
    let dir = common::test_dir("raft_store_bad_meta");
    let _cleanup = common::RemoveOnSuccess(dir.clone());
    common::run(|| async move {
        let (mut ls, _sm) = open_store(dir.clone()).await;
        let vote = openraft::impls::Vote::new(3, 1);
        ls.save_vote(&vote).await.unwrap();
        ls.close().await.unwrap();
        ls.log().close().await.unwrap();
        let path = dir.join(store::META_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x20;
        std::fs::write(&path, &bytes).unwrap();
        let log = Log::open(&dir, small_config()).await.unwrap();
        match store::open(log.clone(), Disk::new()).await {
            Err(corelog::Error::Corrupt { .. }) => {}
            Err(e) => panic!("expected a corruption error, got {e}"),
            Ok(_) => panic!("a damaged raft-meta was accepted"),
        }
        log.close().await.unwrap();
    });
}

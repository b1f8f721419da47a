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
use corelog::raft::types::{Entry, LogSnapshot, RecordBatch, TypeConfig, log_id};
use corelog::storage::{Log, LogConfig};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine};
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

/// Retention through Raft (purge, then the segments go) leaves nothing of the removed
/// segments readable by Raft index — not even from the in-memory tail cache, which still held
/// them: a snapshot of the log, what a follower behind the retention point is sent, starts at
/// the first retained entry (a regression: it used to carry the whole log from index 0).
#[test]
fn a_snapshot_after_retention_holds_only_the_retained_segments() {
    let dir = common::test_dir("raft_store_retention_snapshot");
    let _cleanup = common::RemoveOnSuccess(dir.clone());
    common::run(|| async move {
        let (mut ls, mut sm) = open_store(dir.clone()).await;
        let log = ls.log().clone();
        let value = vec![7u8; 8 << 10];
        // Index 0 first, as a cluster's log starts (openraft's initial membership).
        let mut entries = vec![Entry::new_blank(log_id(0, 0))];
        entries.extend((1..=40).map(|i| normal(1, i, &[&value[..]])));
        append_durably(&mut ls, entries).await;
        let entries = ls.try_get_log_entries(0..41).await.unwrap();
        sm.apply(futures::stream::iter(
            entries.into_iter().map(|e| Ok((e, None))),
        ))
        .await
        .unwrap();
        let segments = log.segment_count();
        assert!(segments >= 4, "8 KiB entries fill several 64 KiB segments");

        ls.purge(log_id(1, 20)).await.unwrap();
        let removed = log.purge_raft(20).await.unwrap();
        assert!(removed >= 1, "segments wholly at or below index 20 go");
        assert_eq!(log.segment_count(), segments - removed);
        let first = log.read_raft(0, 1 << 20).await.unwrap()[0]
            .header()
            .meta
            .raft_index;
        assert!(
            (2..=21).contains(&first),
            "the log now starts inside the purge point, at {first}"
        );
        assert_eq!(
            log.lowest_offset(),
            Offset(first - 1),
            "index i holds offset i - 1"
        );

        let snapshot = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 40)));
        let batches = snapshot.snapshot.clone().into_batches().await.unwrap();
        let indexes: Vec<u64> = batches
            .iter()
            .map(|b| {
                corelog::storage::format::Batch::parse(b.clone())
                    .unwrap()
                    .header()
                    .meta
                    .raft_index
            })
            .collect();
        assert_eq!(indexes, (first..=40).collect::<Vec<_>>());
        assert_eq!(snapshot.snapshot.end_offset, 40, "index 40 holds offset 39");

        // A follower installs it: its log starts where the leader's retained log does, and
        // the next entry continues at the leader's offsets.
        let (mut ls2, mut sm2) = open_store(dir.join("follower")).await;
        let log2 = ls2.log().clone();
        sm2.install_snapshot(&snapshot.meta, snapshot.snapshot.clone())
            .await
            .unwrap();
        assert_eq!(log2.lowest_offset(), Offset(first - 1));
        assert_eq!(sm2.high_watermark(), Offset(40));
        ls2.purge(log_id(1, 40)).await.unwrap();
        append_durably(&mut ls2, vec![normal(1, 41, &[b"next"])]).await;
        let e41 = ls2.try_get_log_entries(41..42).await.unwrap();
        match &e41[0].payload {
            openraft::EntryPayload::Normal(d) => assert_eq!(d.base_offset, Some(Offset(40))),
            other => panic!("expected a normal entry, got {other:?}"),
        }

        // Retention may have removed every batch a snapshot covers: the snapshot is then only
        // its end offset, and the follower's log continues there, not at offset 0.
        let (mut ls3, mut sm3) = open_store(dir.join("empty")).await;
        let log3 = ls3.log().clone();
        let empty = LogSnapshot {
            end_offset: 960,
            ..LogSnapshot::default()
        };
        let meta = openraft::SnapshotMeta {
            last_log_id: Some(log_id(1, 148)),
            ..snapshot.meta.clone()
        };
        sm3.install_snapshot(&meta, empty).await.unwrap();
        assert_eq!(log3.lowest_offset(), Offset(960));
        assert_eq!(sm3.high_watermark(), Offset(960));
        ls3.purge(log_id(1, 148)).await.unwrap();
        append_durably(&mut ls3, vec![normal(1, 149, &[b"after"])]).await;
        let e149 = ls3.try_get_log_entries(149..150).await.unwrap();
        match &e149[0].payload {
            openraft::EntryPayload::Normal(d) => assert_eq!(d.base_offset, Some(Offset(960))),
            other => panic!("expected a normal entry, got {other:?}"),
        }

        // A snapshot whose batches do not end where it says is refused, not installed.
        let (_ls4, mut sm4) = open_store(dir.join("refused")).await;
        let wrong = LogSnapshot {
            batches,
            end_offset: 41,
            source: None,
        };
        let err = sm4
            .install_snapshot(&snapshot.meta, wrong)
            .await
            .expect_err("a snapshot ending at the wrong offset");
        assert!(err.to_string().contains("ends at offset 41"), "{err}");
        for l in [ls.log(), &log2, &log3, _ls4.log()] {
            l.close().await.unwrap();
        }
    });
}

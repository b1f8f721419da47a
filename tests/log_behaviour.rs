//! Behaviour of the log beyond the seed's API: group commit, backpressure, tail reads from
//! memory, long-poll readers, retention, control batches, open cost, truncation recovery.

mod common;

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use common::{run, test_dir};
use corelog::io::{Disk, Faults};
use corelog::storage::{BatchMeta, FsyncPolicy, Log, LogConfig};
use corelog::{Error, Offset};

fn faulty(faults: &Rc<Faults>) -> Disk {
    Disk::with_faults(faults.clone())
}

#[test]
fn group_commit_coalesces_concurrent_appends_into_few_fdatasyncs() {
    let dir = test_dir("group-commit");
    run(|| async move {
        let faults = Rc::new(Faults::new());
        let log = Log::open_with_disk(&dir, LogConfig::default(), faulty(&faults))
            .await
            .unwrap();
        let syncs_before = faults.syncs();
        let tasks: Vec<_> = (0..500u32)
            .map(|i| {
                let log = log.clone();
                glommio::spawn_local(async move { log.append(&i.to_le_bytes()).await.unwrap() })
            })
            .collect();
        let mut offsets = Vec::new();
        for t in tasks {
            offsets.push(t.await);
        }
        let syncs = faults.syncs() - syncs_before;
        offsets.sort();
        assert_eq!(offsets, (0..500).map(Offset).collect::<Vec<_>>());
        assert!(
            syncs < 50,
            "500 concurrent appends took {syncs} fdatasyncs: group commit is not coalescing"
        );
        log.close().await.unwrap();
    });
}

/// A log in `dir` on a disk whose every `fdatasync` takes 50 ms longer, writing one 3 KiB
/// record per group commit (`flush_bytes_max` 4 KiB); with its faults and config.
async fn open_with_slow_syncs(dir: &std::path::Path) -> (Log, Rc<Faults>, LogConfig) {
    let faults = Rc::new(Faults::new());
    faults.set_sync_delay(Duration::from_millis(50));
    let cfg = LogConfig {
        flush_bytes_max: 4 << 10,
        ..LogConfig::default()
    };
    let log = Log::open_with_disk(dir, cfg.clone(), faulty(&faults))
        .await
        .unwrap();
    (log, faults, cfg)
}

/// Appends of 60 records of 3000 bytes (record `i` filled with byte `i`), all queued at once.
fn append_60_records_at_once(log: &Log) -> Vec<glommio::Task<corelog::Result<Offset>>> {
    (0..60u32)
        .map(|i| {
            let log = log.clone();
            glommio::spawn_local(async move { log.append(&vec![i as u8; 3000]).await })
        })
        .collect()
}

/// On a slow disk one `fdatasync` serves every write that completed before it started: with
/// writes capped at one 3 KiB record each (`flush_bytes_max` 4 KiB) and every sync taking
/// 50 ms, 60 queued appends are 60 writes, which the flusher issues while the first sync
/// runs; the next sync covers those done by then. Before, each write waited for a sync of its
/// own (60 syncs, 3 s). Every append is acknowledged and survives a reopen.
#[test]
fn one_fdatasync_serves_every_write_completed_before_it_started() {
    let dir = test_dir("sync-coalesce");
    run(|| async move {
        let (log, faults, cfg) = open_with_slow_syncs(&dir).await;
        let syncs_before = faults.syncs();
        let writes_before = faults.writes();
        let tasks = append_60_records_at_once(&log);
        let mut offsets = Vec::new();
        for t in tasks {
            offsets.push(t.await.unwrap());
        }
        offsets.sort();
        assert_eq!(offsets, (0..60).map(Offset).collect::<Vec<_>>());
        let writes = faults.writes() - writes_before;
        let syncs = faults.syncs() - syncs_before;
        assert!(
            writes >= 60,
            "{writes} writes: one record per write expected"
        );
        // A loaded disk slows the writes too (each sync covers fewer): room for that.
        assert!(
            syncs <= 20,
            "{writes} writes took {syncs} fdatasyncs: a sync does not cover earlier writes"
        );
        log.close().await.unwrap();
        let log = Log::open(&dir, cfg).await.unwrap();
        for i in 0..60u64 {
            assert_eq!(log.read(Offset(i)).await.unwrap().value.len(), 3000);
        }
        log.close().await.unwrap();
    });
}

/// Fault model: the `fdatasync` that would cover many written group commits fails. None of
/// them is acknowledged: the acknowledged appends are a prefix of the offsets (before the
/// failure), every later append fails, and a reopen holds every acknowledged record.
#[test]
fn a_failed_sync_fails_every_commit_it_would_have_covered() {
    let dir = test_dir("sync-coalesce-fail");
    run(|| async move {
        let (log, faults, cfg) = open_with_slow_syncs(&dir).await;
        let syncs_before = faults.syncs();
        let tasks = append_60_records_at_once(&log);
        // The first sync is under way (in its delay) while the flusher writes the rest: the
        // next one, which would cover them, fails.
        while faults.syncs() == syncs_before {
            corelog::io::sleep(Duration::from_millis(1)).await;
        }
        faults.fail_syncs(1);
        let mut acked = Vec::new();
        let mut failed = 0;
        for t in tasks {
            match t.await {
                Ok(offset) => acked.push(offset),
                Err(_) => failed += 1,
            }
        }
        acked.sort();
        assert!(
            failed > 0,
            "every append was acknowledged past a failed sync"
        );
        assert_eq!(
            acked,
            (0..acked.len() as u64).map(Offset).collect::<Vec<_>>(),
            "acknowledged appends are not a prefix"
        );
        assert!(log.append(b"after").await.is_err(), "the log took writes");
        let _ = log.close().await;
        let log = Log::open(&dir, cfg).await.unwrap();
        for offset in &acked {
            assert_eq!(log.read(*offset).await.unwrap().value.len(), 3000);
        }
        log.close().await.unwrap();
    });
}

#[test]
fn appends_wait_for_queue_space_instead_of_growing_memory() {
    let dir = test_dir("backpressure");
    run(|| async move {
        let cfg = LogConfig {
            batch_bytes_max: 8 << 10,
            queue_bytes_max: 16 << 10,
            flush_bytes_max: 8 << 10,
            ..LogConfig::default()
        };
        let log = Log::open(&dir, cfg).await.unwrap();
        let tasks: Vec<_> = (0..200u32)
            .map(|_| {
                let log = log.clone();
                glommio::spawn_local(async move { log.append(&[9u8; 4000]).await.unwrap() })
            })
            .collect();
        let monitor = {
            let log = log.clone();
            glommio::spawn_local(async move {
                let mut max = 0;
                while log.durable_offset() < Offset(200) {
                    max = max.max(log.queued_bytes());
                    glommio::yield_if_needed().await;
                    glommio::executor().yield_task_queue_now().await;
                }
                max
            })
        };
        for t in tasks {
            t.await;
        }
        let max_queued = monitor.await;
        assert!(max_queued > 0, "the monitor never saw a queue");
        assert!(
            max_queued <= 16 << 10,
            "queue grew to {max_queued} bytes past its 16 KiB limit"
        );
        log.close().await.unwrap();
    });
}

#[test]
fn tail_reads_are_served_from_memory_and_older_reads_from_disk() {
    let dir = test_dir("tail-cache");
    run(|| async move {
        let faults = Rc::new(Faults::new());
        let cfg = LogConfig {
            tail_cache_bytes_max: 64 << 10,
            ..LogConfig::default()
        };
        let log = Log::open_with_disk(&dir, cfg, faulty(&faults))
            .await
            .unwrap();
        for i in 0..1000u32 {
            log.append(format!("{i:0>500}").as_bytes()).await.unwrap();
        }
        let reads = faults.reads();
        for i in 990..1000u64 {
            let r = log.read(Offset(i)).await.unwrap();
            assert_eq!(r.value, Bytes::from(format!("{i:0>500}")));
        }
        assert_eq!(faults.reads(), reads, "tail reads went to disk");
        let r = log.read(Offset(3)).await.unwrap();
        assert_eq!(r.value, Bytes::from(format!("{:0>500}", 3)));
        assert!(faults.reads() > reads, "an old read must come from disk");
        log.close().await.unwrap();
    });
}

#[test]
fn a_reader_at_the_end_waits_for_the_next_append_and_wakes_on_close() {
    let dir = test_dir("long-poll");
    run(|| async move {
        let log = Log::open(&dir, LogConfig::default()).await.unwrap();
        log.append(b"first").await.unwrap();
        let waiter = {
            let log = log.clone();
            glommio::spawn_local(async move {
                log.wait_for(Offset(1)).await.unwrap();
                log.read(Offset(1)).await.unwrap().value
            })
        };
        corelog::io::sleep(Duration::from_millis(30)).await;
        assert_eq!(log.durable_offset(), Offset(1));
        log.append(b"second").await.unwrap();
        assert_eq!(waiter.await, Bytes::from_static(b"second"));

        let closed = {
            let log = log.clone();
            glommio::spawn_local(async move { log.wait_for(Offset(50)).await })
        };
        corelog::io::sleep(Duration::from_millis(10)).await;
        log.close().await.unwrap();
        assert!(matches!(closed.await, Err(Error::Closed)));
    });
}

#[test]
fn size_retention_deletes_the_oldest_sealed_segments_but_never_the_active_one() {
    let dir = test_dir("retention-size");
    run(|| async move {
        let cfg = LogConfig {
            segment_bytes_max: 64 << 10,
            retention_bytes: Some(200 << 10),
            ..LogConfig::default()
        };
        let log = Log::open(&dir, cfg.clone()).await.unwrap();
        for _ in 0..1000 {
            log.append(&[5u8; 1000]).await.unwrap();
        }
        log.apply_retention().await.unwrap();
        assert!(
            log.size_bytes() <= (200 << 10) + (64 << 10),
            "{} bytes kept",
            log.size_bytes()
        );
        let lowest = log.lowest_offset();
        assert!(lowest > Offset(0));
        assert!(matches!(
            log.read(Offset(0)).await,
            Err(Error::OffsetOutOfRange { .. })
        ));
        assert_eq!(log.read(lowest).await.unwrap().value.len(), 1000);
        assert_eq!(log.highest_offset(), Some(Offset(999)));
        log.close().await.unwrap();
        let log = Log::open(&dir, cfg).await.unwrap();
        assert_eq!(log.lowest_offset(), lowest, "deletion is durable");
        log.close().await.unwrap();
    });
}

#[test]
fn age_retention_deletes_sealed_segments_older_than_retention_ms() {
    let dir = test_dir("retention-age");
    run(|| async move {
        let cfg = LogConfig {
            segment_bytes_max: 64 << 10,
            retention_ms: Some(1_000),
            retention_check_ms: 20,
            ..LogConfig::default()
        };
        let log = Log::open(&dir, cfg).await.unwrap();
        for _ in 0..300 {
            log.append(&[5u8; 1000]).await.unwrap();
        }
        // The log rolled (on a slow disk retention may already have removed early segments).
        assert!(log.segment_count() > 1 || log.lowest_offset() > Offset(0));
        // The flusher's periodic check removes them without being asked.
        let mut waited_ms = 0;
        while log.segment_count() > 1 && waited_ms < 5_000 {
            corelog::io::sleep(Duration::from_millis(20)).await;
            waited_ms += 20;
        }
        assert_eq!(log.segment_count(), 1, "sealed segments outlived retention");
        let lowest = log.lowest_offset();
        assert_eq!(log.read(lowest).await.unwrap().value.len(), 1000);
        assert_eq!(log.highest_offset(), Some(Offset(299)));
        log.close().await.unwrap();
    });
}

#[test]
fn control_batches_take_no_offset_and_survive_reopen() {
    let dir = test_dir("control");
    run(|| async move {
        let log = Log::open(&dir, LogConfig::default()).await.unwrap();
        log.append(b"a").await.unwrap();
        let meta = BatchMeta {
            timestamp_ms: 1,
            term: 2,
            raft_index: 3,
        };
        assert_eq!(
            log.append_control(b"membership", meta).await.unwrap(),
            Offset(1)
        );
        assert_eq!(log.append(b"b").await.unwrap(), Offset(1));
        log.close().await.unwrap();
        let log = Log::open(&dir, LogConfig::default()).await.unwrap();
        let records = log.read_from(Offset(0), 1 << 20).await.unwrap();
        let values: Vec<&[u8]> = records.iter().map(|r| &r.value[..]).collect();
        assert_eq!(values, vec![b"a".as_slice(), b"b".as_slice()]);
        assert_eq!(records[1].offset, Offset(1));
        log.close().await.unwrap();
    });
}

#[test]
fn batch_metadata_is_kept_in_the_header() {
    let dir = test_dir("meta");
    run(|| async move {
        let log = Log::open(&dir, LogConfig::default()).await.unwrap();
        let meta = BatchMeta {
            timestamp_ms: 1234,
            term: 7,
            raft_index: 99,
        };
        log.append_with_meta(&[b"x"], meta).await.unwrap();
        log.close().await.unwrap();
        let log = Log::open(&dir, LogConfig::default()).await.unwrap();
        let batches = log.read_batches(Offset(0), 1).await.unwrap();
        assert_eq!(batches[0].header().meta, meta);
        log.close().await.unwrap();
    });
}

#[test]
fn oversized_and_empty_batches_are_rejected_with_typed_errors() {
    let dir = test_dir("bad-batches");
    run(|| async move {
        let cfg = LogConfig {
            batch_bytes_max: 1024,
            ..LogConfig::default()
        };
        let log = Log::open(&dir, cfg).await.unwrap();
        let err = log.append(&[0u8; 2000]).await.unwrap_err();
        assert!(
            matches!(err, Error::BatchTooLarge { max: 1024, .. }),
            "{err:?}"
        );
        let none: [&[u8]; 0] = [];
        let err = log.append_batch(&none).await.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
        assert_eq!(log.append(b"ok").await.unwrap(), Offset(0));
        log.close().await.unwrap();
    });
}

#[test]
fn interval_fsync_acks_before_syncing_and_syncs_within_the_interval() {
    let dir = test_dir("fsync-interval");
    run(|| async move {
        let faults = Rc::new(Faults::new());
        let cfg = LogConfig {
            fsync: FsyncPolicy::Interval(Duration::from_millis(500)),
            ..LogConfig::default()
        };
        let log = Log::open_with_disk(&dir, cfg, faulty(&faults))
            .await
            .unwrap();
        corelog::io::sleep(Duration::from_millis(60)).await;
        let syncs = faults.syncs();
        log.append(b"one").await.unwrap();
        log.append(b"two").await.unwrap();
        let after_acks = faults.syncs();
        assert!(
            after_acks - syncs <= 1,
            "interval mode synced on every append"
        );
        // Within the interval (a starved timer may fire late: up to 5 s here).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while faults.syncs() == after_acks && after_acks == syncs {
            assert!(
                std::time::Instant::now() < deadline,
                "written data was never synced"
            );
            corelog::io::sleep(Duration::from_millis(20)).await;
        }
        log.close().await.unwrap();
    });
}

#[test]
fn open_reads_a_bounded_amount_whatever_the_log_size() {
    let dir = test_dir("open-cost");
    run(|| async move {
        let cfg = LogConfig {
            segment_bytes_max: 1 << 20,
            ..LogConfig::default()
        };
        let log = Log::open(&dir, cfg.clone()).await.unwrap();
        let value = [1u8; 1000];
        for _ in 0..16 {
            let batch: Vec<&[u8]> = vec![&value; 64];
            for _ in 0..16 {
                log.append_batch(&batch).await.unwrap();
            }
        }
        let size = log.size_bytes();
        let segments = log.segment_count() as u64;
        assert!(segments >= 16, "{segments} segments");
        log.close().await.unwrap();

        let faults = Rc::new(Faults::new());
        let log = Log::open_with_disk(&dir, cfg, faulty(&faults))
            .await
            .unwrap();
        let read = faults.read_bytes();
        // Per sealed segment: its last index block and the batches after its last entry;
        // plus the active segment's unindexed tail. Nowhere near the log's size.
        assert!(
            read < size / 4,
            "open read {read} bytes of a {size}-byte log ({segments} segments)"
        );
        let r = log.read(Offset(5)).await.unwrap();
        assert_eq!(r.value.len(), 1000);
        log.close().await.unwrap();
    });
}

#[test]
fn an_interrupted_truncate_after_is_finished_by_the_next_open() {
    let dir = test_dir("truncate-marker");
    run(|| async move {
        let cfg = LogConfig {
            segment_bytes_max: 64 << 10,
            ..LogConfig::default()
        };
        let log = Log::open(&dir, cfg.clone()).await.unwrap();
        for i in 0..300u32 {
            log.append(format!("{i:0>900}").as_bytes()).await.unwrap();
        }
        assert!(log.segment_count() > 2);
        log.close().await.unwrap();
        // The state a crash leaves between writing the marker and cutting: marker only.
        let cut = 100u64;
        let mut marker = cut.to_le_bytes().to_vec();
        marker.extend(crc32c::crc32c(&marker).to_le_bytes());
        std::fs::write(dir.join("truncate-after"), marker).unwrap();

        let log = Log::open(&dir, cfg.clone()).await.unwrap();
        assert_eq!(log.highest_offset(), Some(Offset(cut - 1)));
        assert!(!dir.join("truncate-after").exists());
        assert_eq!(log.append(b"new").await.unwrap(), Offset(cut));
        log.close().await.unwrap();
        let log = Log::open(&dir, cfg).await.unwrap();
        assert_eq!(
            log.read(Offset(cut)).await.unwrap().value,
            Bytes::from("new")
        );
        assert_eq!(
            log.read(Offset(cut - 1)).await.unwrap().value,
            Bytes::from(format!("{:0>900}", cut - 1))
        );
        log.close().await.unwrap();
    });
}

#[test]
fn truncated_records_never_come_back_after_reopen() {
    let dir = test_dir("truncate-after-durable");
    run(|| async move {
        let log = Log::open(&dir, LogConfig::default()).await.unwrap();
        for i in 0..50u32 {
            log.append(&i.to_le_bytes()).await.unwrap();
        }
        log.truncate_after(Offset(19)).await.unwrap();
        // Same sizes again: stale bytes at the same positions must not resurrect.
        log.append(&999u32.to_le_bytes()).await.unwrap();
        log.close().await.unwrap();
        let log = Log::open(&dir, LogConfig::default()).await.unwrap();
        assert_eq!(log.highest_offset(), Some(Offset(20)));
        assert_eq!(
            log.read(Offset(20)).await.unwrap().value,
            Bytes::copy_from_slice(&999u32.to_le_bytes())
        );
        log.close().await.unwrap();
    });
}

/// With `write_bytes_max`, a large group commit goes out as several writes (all in flight
/// together) and one fdatasync; every record reads back, before and after a reopen.
#[test]
fn a_group_commit_larger_than_the_write_size_is_split_into_writes_in_flight() {
    let dir = test_dir("split-writes");
    run(|| async move {
        let config = LogConfig {
            write_bytes_max: Some(16 << 10),
            flush_bytes_max: 256 << 10,
            ..LogConfig::default()
        };
        let faults = Rc::new(Faults::new());
        let log = Log::open_with_disk(&dir, config.clone(), faulty(&faults))
            .await
            .unwrap();
        let value = |i: u32| Bytes::from(vec![(i % 251) as u8; 1000 + (i as usize % 97)]);
        let (writes, syncs) = (faults.writes(), faults.syncs());
        let tasks: Vec<_> = (0..200u32)
            .map(|i| {
                let log = log.clone();
                glommio::spawn_local(async move { (i, log.append(&value(i)).await.unwrap()) })
            })
            .collect();
        let mut acked = Vec::new();
        for t in tasks {
            acked.push(t.await);
        }
        let (writes, syncs) = (faults.writes() - writes, faults.syncs() - syncs);
        assert!(
            writes > syncs,
            "{writes} writes for {syncs} fdatasyncs: ~200 KiB group commits were not split \
             into 16 KiB writes"
        );
        for (i, offset) in &acked {
            assert_eq!(log.read(*offset).await.unwrap().value, value(*i));
        }
        log.close().await.unwrap();
        let log = Log::open(&dir, config).await.unwrap();
        for (i, offset) in &acked {
            assert_eq!(log.read(*offset).await.unwrap().value, value(*i));
        }
        log.close().await.unwrap();
    });
}

/// A gated log (a Raft partition) reset past its high watermark, as installing a snapshot does
/// before the new batches are durable and the gate moves: a reader at the new start finds an
/// empty log, not "out of range" at every offset, and sees the records once the gate moves.
#[test]
fn a_log_reset_past_its_high_watermark_reads_as_empty_at_its_new_start() {
    let dir = test_dir("reset-past-gate");
    run(|| async move {
        let log = Log::open(&dir, LogConfig::default()).await.unwrap();
        for i in 0..10u32 {
            log.append(&i.to_le_bytes()).await.unwrap();
        }
        log.set_high_watermark(Offset(5));
        log.reset_at(Offset(100)).await.unwrap();
        assert_eq!(log.lowest_offset(), Offset(100));
        assert!(
            log.read_from(Offset(100), 1 << 20)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(log.highest_offset(), None);
        match log.read_from(Offset(5), 1 << 20).await {
            Err(Error::OffsetOutOfRange { lowest, .. }) => assert_eq!(lowest, Offset(100)),
            other => panic!("below the new start: {other:?}"),
        }
        for i in 100..103u32 {
            log.append(&i.to_le_bytes()).await.unwrap();
        }
        // Durable but above the gate: still invisible.
        assert!(
            log.read_from(Offset(100), 1 << 20)
                .await
                .unwrap()
                .is_empty()
        );
        log.set_high_watermark(Offset(103));
        let got = log.read_from(Offset(100), 1 << 20).await.unwrap();
        assert_eq!(
            got.iter().map(|r| r.offset).collect::<Vec<_>>(),
            vec![Offset(100), Offset(101), Offset(102)]
        );
        log.close().await.unwrap();
    });
}

/// A Raft follower writes the leader's stored batch: `submit_stored` puts its bytes on disk
/// unchanged when its header names the offset it gets (read back byte for byte, after a reopen
/// too), and encodes it again, keeping its term, index, timestamp and records, when it does
/// not (logs that disagree on offsets must not end up with a header that lies).
#[test]
fn a_stored_batch_is_written_byte_for_byte_when_its_offset_matches_and_re_encoded_when_not() {
    use corelog::storage::Batch;
    use corelog::storage::format::encode_batch;
    let dir = test_dir("submit-stored");
    run(|| async move {
        let log = Log::open(&dir, LogConfig::default()).await.unwrap();
        let meta = |index| BatchMeta {
            timestamp_ms: 1_700_000_000_000 + index as i64,
            term: 7,
            raft_index: index,
        };
        let first =
            Batch::parse(encode_batch(Offset(0), &[b"a".as_slice(), b"bb"], meta(1))).unwrap();
        let ticket = log.submit_stored(&first).await.unwrap();
        assert_eq!(ticket.base_offset(), Offset(0));
        assert_eq!(ticket.batch().bytes(), first.bytes(), "queued unchanged");
        assert_eq!(
            ticket.batch().bytes().as_ptr(),
            first.bytes().as_ptr(),
            "queued without a copy"
        );
        ticket.durable().await.unwrap();
        // Names offset 5, lands at 2.
        let elsewhere =
            Batch::parse(encode_batch(Offset(5), &[b"ccc".as_slice()], meta(2))).unwrap();
        let ticket = log.submit_stored(&elsewhere).await.unwrap();
        assert_eq!(ticket.base_offset(), Offset(2));
        let rewritten = ticket.batch();
        ticket.durable().await.unwrap();
        let check = |batches: Vec<Batch>| {
            assert_eq!(batches.len(), 2);
            assert_eq!(batches[0].bytes(), first.bytes(), "the first batch on disk");
            let h = batches[1].header();
            assert_eq!(h.base_offset, Offset(2));
            assert_eq!(h.meta, meta(2));
            assert_eq!(batches[1].body(), elsewhere.body());
            assert_eq!(batches[1].bytes(), rewritten.bytes());
        };
        check(log.read_raft(1, 1 << 20).await.unwrap());
        log.close().await.unwrap();
        let log = Log::open(&dir, LogConfig::default()).await.unwrap();
        check(log.read_raft(1, 1 << 20).await.unwrap());
        let control = Batch::parse(corelog::storage::format::encode_control(
            Offset(3),
            b"x",
            meta(3),
        ))
        .unwrap();
        assert!(matches!(
            log.submit_stored(&control).await,
            Err(Error::InvalidArgument(_))
        ));
        log.close().await.unwrap();
    });
}

//! The seed's (proglog) log tests, ported: store/index behaviour is exercised through the log,
//! plus the seed's log scenarios.

mod common;

use bytes::Bytes;
use common::{run, test_dir};
use corelog::storage::{Log, LogConfig};
use corelog::{Error, Offset};

fn small_segments() -> LogConfig {
    LogConfig {
        segment_bytes_max: 64 << 10,
        ..LogConfig::default()
    }
}

#[test]
fn append_then_read_returns_the_record() {
    let dir = test_dir("append-read");
    run(|| async move {
        let log = Log::open(&dir, LogConfig::default()).await.unwrap();
        let off = log.append(b"hello world").await.unwrap();
        assert_eq!(off, Offset(0));
        let rec = log.read(off).await.unwrap();
        assert_eq!(rec.value, Bytes::from_static(b"hello world"));
        assert_eq!(rec.offset, Offset(0));
        log.close().await.unwrap();
    });
}

#[test]
fn read_past_the_end_is_out_of_range() {
    let dir = test_dir("out-of-range");
    run(|| async move {
        let log = Log::open(&dir, LogConfig::default()).await.unwrap();
        log.append(b"a").await.unwrap();
        let err = log.read(Offset(1)).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::OffsetOutOfRange {
                    offset: Offset(1),
                    lowest: Offset(0),
                    highest: Some(Offset(0))
                }
            ),
            "{err:?}"
        );
        let err = log.read(Offset(5)).await.unwrap_err();
        assert!(matches!(err, Error::OffsetOutOfRange { .. }), "{err:?}");
        log.close().await.unwrap();
    });
}

#[test]
fn reopen_continues_at_the_next_offset_with_every_record_readable() {
    let dir = test_dir("reopen");
    run(|| async move {
        let log = Log::open(&dir, small_segments()).await.unwrap();
        for i in 0..3000u32 {
            let off = log.append(format!("record-{i}").as_bytes()).await.unwrap();
            assert_eq!(off, Offset(i as u64));
        }
        assert!(log.segment_count() > 1, "segments should have rolled");
        log.close().await.unwrap();

        let log = Log::open(&dir, small_segments()).await.unwrap();
        assert_eq!(log.lowest_offset(), Offset(0));
        assert_eq!(log.highest_offset(), Some(Offset(2999)));
        for i in (0..3000u64).step_by(7) {
            let rec = log.read(Offset(i)).await.unwrap();
            assert_eq!(rec.value, Bytes::from(format!("record-{i}")));
        }
        let off = log.append(b"after reopen").await.unwrap();
        assert_eq!(off, Offset(3000));
        log.close().await.unwrap();
    });
}

#[test]
fn segments_roll_at_segment_bytes_max() {
    let dir = test_dir("roll");
    run(|| async move {
        let cfg = small_segments();
        let log = Log::open(&dir, cfg.clone()).await.unwrap();
        let value = vec![7u8; 1000];
        for _ in 0..200 {
            log.append(&value).await.unwrap();
        }
        // 200 batches of 1060 bytes = 212,000 bytes in segments of at most 64 KiB.
        assert_eq!(log.segment_count(), 4);
        let stores: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "store"))
            .collect();
        assert_eq!(stores.len(), 4);
        for e in &stores {
            let name = e.file_name().into_string().unwrap();
            assert_eq!(name.len(), 20 + ".store".len(), "{name}");
        }
        log.close().await.unwrap();
    });
}

#[test]
fn segments_roll_when_the_index_is_full() {
    let dir = test_dir("roll-index");
    run(|| async move {
        // One index entry per batch, one 4 KiB block of 255 entries per segment.
        let cfg = LogConfig {
            index_bytes_max: 4096,
            index_interval_bytes: 1,
            ..LogConfig::default()
        };
        let log = Log::open(&dir, cfg.clone()).await.unwrap();
        for i in 0..600u32 {
            log.append(&i.to_le_bytes()).await.unwrap();
        }
        assert_eq!(log.segment_count(), 3, "255 + 255 + 90 batches");
        log.close().await.unwrap();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|x| x == "index") {
                assert!(std::fs::metadata(&path).unwrap().len() <= 4096, "{path:?}");
            }
        }
        let log = Log::open(&dir, cfg).await.unwrap();
        assert_eq!(
            log.read(Offset(300)).await.unwrap().value,
            Bytes::copy_from_slice(&300u32.to_le_bytes())
        );
        log.close().await.unwrap();
    });
}

#[test]
fn reader_streams_every_segments_bytes() {
    let dir = test_dir("reader");
    run(|| async move {
        let log = Log::open(&dir, small_segments()).await.unwrap();
        for i in 0..500u32 {
            log.append_batch(&[format!("a{i}"), format!("b{i}")])
                .await
                .unwrap();
        }
        let records = read_to_end(&mut log.reader(), Vec::new()).await;
        assert_eq!(records.len(), 1000);
        for (n, (off, value)) in records.into_iter().enumerate() {
            assert_eq!(off, Offset(n as u64), "offsets are dense, in order");
            let want = if n % 2 == 0 { "a" } else { "b" };
            assert_eq!(value, Bytes::from(format!("{want}{}", n / 2)));
        }
        log.close().await.unwrap();
    });
}

/// Reads `reader` to its end after the bytes already in `read`, and parses the bytes (batches
/// back to back) into their records.
async fn read_to_end(
    reader: &mut corelog::storage::LogReader,
    mut read: Vec<u8>,
) -> Vec<(Offset, Bytes)> {
    while let Some(chunk) = reader.next_chunk().await.unwrap() {
        read.extend_from_slice(&chunk);
    }
    let mut bytes = Bytes::from(read);
    let mut records = Vec::new();
    while !bytes.is_empty() {
        let batch = corelog::storage::Batch::parse(bytes.clone()).unwrap();
        records.extend(batch.records());
        bytes = bytes.slice(batch.len()..);
    }
    records
}

#[test]
fn truncate_removes_whole_segments_below_lowest() {
    let dir = test_dir("truncate");
    run(|| async move {
        let log = Log::open(&dir, small_segments()).await.unwrap();
        let value = vec![1u8; 1000];
        for _ in 0..200 {
            log.append(&value).await.unwrap();
        }
        let segments = log.segment_count();
        log.truncate(Offset(100)).await.unwrap();
        assert!(log.segment_count() < segments);
        let lowest = log.lowest_offset();
        assert!(
            lowest > Offset(0) && lowest <= Offset(100),
            "lowest {lowest}"
        );
        assert!(matches!(
            log.read(Offset(0)).await,
            Err(Error::OffsetOutOfRange { .. })
        ));
        assert_eq!(log.read(Offset(100)).await.unwrap().value.len(), 1000);
        log.close().await.unwrap();
        // The removal is durable.
        let log = Log::open(&dir, small_segments()).await.unwrap();
        assert_eq!(log.lowest_offset(), lowest);
        log.close().await.unwrap();
    });
}

/// Segments are deleted in the background once reads let go of them (src/storage/log.rs,
/// `delete_segments`). A reader that holds the oldest segments when truncate removes them
/// still reads every byte it was given; truncate waits for it only briefly; the removed
/// segments' files leave their names at once and are gone soon after.
#[test]
fn segments_removed_under_a_reader_stay_readable_to_it_and_their_files_go() {
    let dir = test_dir("remove-under-reader");
    let stores = |dir: &std::path::Path| {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension() == Some("store".as_ref()))
            .count()
    };
    let check_dir = dir.clone();
    run(|| async move {
        let log = Log::open(&dir, small_segments()).await.unwrap();
        for i in 0..200u32 {
            log.append(&vec![i as u8; 1000]).await.unwrap();
        }
        let before = stores(&check_dir);
        assert!(before > 2, "{before} segments");
        let mut reader = log.reader();
        let all = reader.next_chunk().await.unwrap().unwrap().to_vec();

        let started = std::time::Instant::now();
        log.truncate(Offset(100)).await.unwrap();
        let took = started.elapsed();
        // Renames and a directory sync, on a disk other tests keep busy: a bound far below
        // the 600 s a held segment may wait for its reader, which truncate must not wait out.
        assert!(
            took < std::time::Duration::from_secs(10),
            "truncate took {took:?}"
        );
        let after = stores(&check_dir);
        assert_eq!(
            after,
            log.segment_count(),
            "the removed segments' names are free"
        );
        assert!(after < before);

        let records = read_to_end(&mut reader, all).await;
        assert_eq!(
            records.len(),
            200,
            "the reader read every record it was given"
        );
        for (n, (off, value)) in records.into_iter().enumerate() {
            assert_eq!(off, Offset(n as u64));
            assert_eq!(value, Bytes::from(vec![n as u8; 1000]));
        }
        drop(reader);
        wait_for_no_deleted_files(&check_dir).await;
        log.close().await.unwrap();
    });
}

/// Segment files larger than a shrink step (8 MiB) are shrunk before removal, but only once no
/// reader holds them: while a reader holds 16 MiB segments that truncate removed, their files
/// stay whole under their `.deleted` names, the reader reads every byte, and once it lets go the
/// files are shrunk and removed.
#[test]
fn a_segment_still_held_by_a_reader_is_not_shrunk_under_it() {
    let dir = test_dir("no-shrink-under-reader");
    let check_dir = dir.clone();
    run(|| async move {
        let config = LogConfig {
            segment_bytes_max: 16 << 20,
            ..LogConfig::default()
        };
        let log = Log::open(&dir, config).await.unwrap();
        let value = |i: u64| vec![i as u8; 64 << 10];
        for i in 0..600u64 {
            log.append(&value(i)).await.unwrap();
        }
        assert!(log.segment_count() >= 3, "{} segments", log.segment_count());
        let mut reader = log.reader();
        let upto = Offset(400);
        log.truncate(upto).await.unwrap();
        assert!(log.lowest_offset() > Offset(0));
        // Longer than any read in flight: the files wait for the reader, whole.
        corelog::io::sleep(std::time::Duration::from_millis(300)).await;
        let held: Vec<(std::path::PathBuf, u64)> = std::fs::read_dir(&check_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.to_string_lossy().contains(".store.") && p.extension() == Some("deleted".as_ref())
            })
            .map(|p| {
                let len = std::fs::metadata(&p).unwrap().len();
                (p, len)
            })
            .collect();
        assert!(
            !held.is_empty(),
            "the removed segments' files are gone while a reader holds them"
        );
        for (path, len) in &held {
            assert!(
                *len > 12 << 20,
                "{} was shrunk to {len} bytes under the reader",
                path.display()
            );
        }
        let records = read_to_end(&mut reader, Vec::new()).await;
        assert_eq!(
            records.len(),
            600,
            "the reader read every record it was given"
        );
        for (n, (off, v)) in records.into_iter().enumerate() {
            assert_eq!(off, Offset(n as u64));
            assert_eq!(v, Bytes::from(value(n as u64)), "record {n}");
        }
        // Let go: the files are shrunk and removed.
        drop(reader);
        wait_for_no_deleted_files(&check_dir).await;
        log.close().await.unwrap();
    });
}

/// Retention does not free a deleted segment on the caller's thread: the append whose roll
/// removed a 128 MiB segment returns while the segment's store is still on disk under its
/// `.deleted` name, and soon it is gone. The log itself no longer holds the segment at once.
/// The process's remover thread shrinks each file 8 MiB every 20 ms, in order: a 1 GiB
/// ballast file queued first keeps it busy for 2.5 s, so that the segment's own 0.3 s cannot
/// end before a slow disk has finished the append.
#[test]
fn retention_leaves_freeing_a_deleted_segment_to_the_remover_thread() {
    let dir = test_dir("retention-in-background");
    let check_dir = dir.clone();
    run(|| async move {
        let config = LogConfig {
            segment_bytes_max: 128 << 20,
            retention_bytes: Some(64 << 20),
            ..LogConfig::default()
        };
        let log = Log::open(&dir, config).await.unwrap();
        let value = vec![7u8; 1 << 20];
        let removed_before = corelog::io::background_removal_stats().removed;
        let ballast = check_dir.with_extension("ballast");
        std::fs::File::create(&ballast)
            .unwrap()
            .set_len(1 << 30)
            .unwrap();
        corelog::io::Disk::new().remove_files_in_background(vec![(ballast.clone(), true)]);
        let mut appended = 0;
        while log.lowest_offset() == Offset(0) {
            log.append(&value).await.unwrap();
            appended += 1;
            assert!(appended < 200, "retention never removed the first segment");
        }
        let store = std::fs::read_dir(&check_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                p.to_string_lossy().contains(".store.") && p.extension() == Some("deleted".as_ref())
            })
            .expect("the removed segment's store was freed before the append returned");
        assert!(std::fs::metadata(&store).unwrap().len() > 0);
        wait_for_no_deleted_files(&check_dir).await;
        assert!(!ballast.exists());
        // The remover counts a file after unlinking it: the count may trail the directory.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let stats = corelog::io::background_removal_stats();
            if stats.removed >= removed_before + 2 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{stats:?}");
            corelog::io::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(log.segment_count(), 1);
        log.close().await.unwrap();
    });
}

/// Waits (up to 10 s) until `dir` holds no segment file being deleted.
async fn wait_for_no_deleted_files(dir: &std::path::Path) {
    let deleted = || {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension() == Some("deleted".as_ref()))
            .count()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while deleted() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "segment files being deleted were never removed"
        );
        corelog::io::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A deletion a crash interrupted leaves `<base>.store.deleted` files: the next open removes
/// them (in the background, a 40 MiB one shrunk step by step first), and the log is whole.
#[test]
fn segment_files_left_being_deleted_by_a_crash_are_removed_at_open() {
    let dir = test_dir("deleted-leftovers");
    let check_dir = dir.clone();
    run(|| async move {
        let log = Log::open(&dir, small_segments()).await.unwrap();
        for i in 0..10u32 {
            log.append(format!("r{i}").as_bytes()).await.unwrap();
        }
        log.close().await.unwrap();
        let big = dir.join("00000000000000000000.store.deleted");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(40 << 20)
            .unwrap();
        std::fs::write(dir.join("00000000000000000000.index.deleted"), b"old").unwrap();

        let log = Log::open(&dir, small_segments()).await.unwrap();
        wait_for_no_deleted_files(&check_dir).await;
        assert_eq!(log.read(Offset(9)).await.unwrap().value, Bytes::from("r9"));
        log.close().await.unwrap();
    });
}

#[test]
fn initial_offset_sets_the_first_offset_of_a_new_log() {
    let dir = test_dir("initial-offset");
    run(|| async move {
        let cfg = LogConfig {
            initial_offset: Offset(1_000_000),
            ..LogConfig::default()
        };
        let log = Log::open(&dir, cfg).await.unwrap();
        assert_eq!(log.highest_offset(), None);
        assert_eq!(log.append(b"x").await.unwrap(), Offset(1_000_000));
        log.close().await.unwrap();
    });
}

#[test]
fn reset_empties_the_log_and_remove_deletes_it() {
    let dir = test_dir("reset-remove");
    run(|| async move {
        let log = Log::open(&dir, small_segments()).await.unwrap();
        for _ in 0..100 {
            log.append(&[3u8; 1000]).await.unwrap();
        }
        log.reset().await.unwrap();
        assert_eq!(log.segment_count(), 1);
        assert_eq!(log.highest_offset(), None);
        assert_eq!(log.append(b"again").await.unwrap(), Offset(0));
        log.remove().await.unwrap();
        assert!(!dir.exists());
    });
}

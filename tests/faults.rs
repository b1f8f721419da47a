//! The storage engine's error paths, driven through the fault-injecting I/O seam
//! (`Disk::with_faults`) on real files.
//!
//! Fault model of the injector (see `src/io/fault.rs`): an injected write, `fdatasync`, read or
//! allocation fails *before* touching the file, with EIO or, while the disk is "full", ENOSPC.
//! The contract under test (DESIGN §2): an append resolves `Ok` only once its batch is durable;
//! a failed group commit fails every append in it (and queued behind it) and leaves nothing of
//! them readable; offsets stay dense; a failed `fdatasync` stops the partition for good while
//! durable data stays readable; after a reopen, every acknowledged record is there.

mod common;

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use common::{RemoveOnSuccess, run, test_dir};
use corelog::io::{Disk, Faults};
use corelog::storage::{Log, LogConfig, segment};
use corelog::{Error, Offset};
use futures_lite::future::zip;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Fault model: the single store write of one group commit fails with EIO; the disk is healthy
/// before and after.
#[test]
fn failed_write_fails_its_whole_group_commit_and_later_appends_reuse_the_offsets() {
    let dir = test_dir("faults-eio");
    let _cleanup = RemoveOnSuccess(dir.clone());
    run(|| async move {
        let faults = Rc::new(Faults::new());
        let log = open_faulty(&dir, small_config(), &faults).await;
        let mut acked: Vec<Vec<u8>> = Vec::new();
        for i in 0..10 {
            let v = format!("before-{i}").into_bytes();
            assert_eq!(log.append(&v).await.unwrap(), Offset(i));
            acked.push(v);
        }
        faults.fail_writes(1, libc::EIO);
        let writes_before = faults.writes();
        // Three appends queued together: one group commit, one failed write.
        let ((a, b), c) = zip(
            zip(
                log.append(b"lost-a"),
                log.append_batch(&[b"lost-b1", b"lost-b2"]),
            ),
            log.append(b"lost-c"),
        )
        .await;
        for r in [a, b, c] {
            assert!(
                matches!(
                    r,
                    Err(Error::Io {
                        errno: Some(libc::EIO),
                        ..
                    })
                ),
                "an append of the failed group commit resolved {r:?}"
            );
        }
        assert_eq!(
            faults.writes(),
            writes_before,
            "the failed write reached the disk"
        );
        assert_eq!(log.highest_offset(), Some(Offset(9)));
        for o in 10..14 {
            assert!(
                matches!(
                    log.read(Offset(o)).await,
                    Err(Error::OffsetOutOfRange { .. })
                ),
                "offset {o} of a failed append is readable"
            );
        }
        // The disk works again: the failed offsets are handed out again, densely.
        let v = b"after-0".to_vec();
        assert_eq!(log.append(&v).await.unwrap(), Offset(10));
        acked.push(v);
        let vs = [b"after-1".to_vec(), b"after-2".to_vec()];
        assert_eq!(log.append_batch(&vs).await.unwrap(), Offset(11));
        acked.extend(vs);
        expect_exactly(&log, &acked, "after the failed write").await;
        log.close().await.unwrap();

        let log = Log::open(&dir, small_config()).await.unwrap();
        expect_exactly(&log, &acked, "after reopen").await;
        log.close().await.unwrap();
    });
}

/// Fault model: the filesystem runs out of space (every write and allocation fails with
/// ENOSPC) for a while, then space returns.
#[test]
fn disk_full_fails_appends_with_disk_full_and_appends_resume_when_space_returns() {
    let dir = test_dir("faults-disk-full");
    let _cleanup = RemoveOnSuccess(dir.clone());
    run(|| async move {
        let faults = Rc::new(Faults::new());
        let log = open_faulty(&dir, small_config(), &faults).await;
        let mut acked: Vec<Vec<u8>> = Vec::new();
        for i in 0..5 {
            let v = vec![i as u8; 100 + i * 1000];
            log.append(&v).await.unwrap();
            acked.push(v);
        }
        faults.set_disk_full(true);
        let (a, b) = zip(
            log.append(b"no space"),
            log.append_batch(&[vec![1u8; 5000], vec![2u8; 10]]),
        )
        .await;
        let c = log.append(b"still no space").await;
        for r in [a, b, c] {
            assert!(
                matches!(r, Err(Error::DiskFull { .. })),
                "an append on a full disk resolved {r:?}"
            );
        }
        assert_eq!(
            log.highest_offset(),
            Some(Offset(4)),
            "nothing was acknowledged"
        );
        expect_exactly(&log, &acked, "while the disk is full").await;

        faults.set_disk_full(false);
        let v = b"space is back".to_vec();
        assert_eq!(log.append(&v).await.unwrap(), Offset(5));
        acked.push(v);
        let vs = [vec![9u8; 3000], vec![8u8; 7000]];
        assert_eq!(log.append_batch(&vs).await.unwrap(), Offset(6));
        acked.extend(vs);
        expect_exactly(&log, &acked, "after space returned").await;
        log.close().await.unwrap();

        let log = Log::open(&dir, small_config()).await.unwrap();
        expect_exactly(&log, &acked, "after reopen").await;
        log.close().await.unwrap();
    });
}

/// Fault model: the disk fills up exactly when the active segment is full, so sealing it works
/// but pre-allocating the next segment fails with ENOSPC. The arrangement: one index entry per
/// batch and 255 batches of 257 bytes fill a 64 KiB segment and exactly one index block (255
/// entries, already on disk), so the roll writes nothing before it allocates.
#[test]
fn disk_full_while_preallocating_the_next_segment_fails_the_append_and_the_next_one_rolls() {
    let dir = test_dir("faults-roll-disk-full");
    let _cleanup = RemoveOnSuccess(dir.clone());
    run(|| async move {
        let cfg = LogConfig {
            segment_bytes_max: 64 << 10,
            index_interval_bytes: 1,
            ..small_config()
        };
        let faults = Rc::new(Faults::new());
        let log = open_faulty(&dir, cfg.clone(), &faults).await;
        let value = |i: usize| {
            let mut v = vec![(i % 251) as u8; 197];
            v[..8].copy_from_slice(&(i as u64).to_le_bytes());
            v
        };
        let mut acked = Vec::new();
        for i in 0..255 {
            log.append(&value(i)).await.unwrap();
            acked.push(value(i));
        }
        assert_eq!(
            log.segment_count(),
            1,
            "255 batches of 257 bytes fit one segment"
        );

        faults.set_disk_full(true);
        let next_store = dir.join(format!("{:020}.store", 255));
        match log.append(&value(255)).await {
            Err(Error::DiskFull { op, path }) => {
                assert_eq!(op, "allocating", "the roll should fail at pre-allocation");
                assert_eq!(path, next_store);
            }
            other => panic!("an append that needs a roll on a full disk resolved {other:?}"),
        }
        assert!(
            !next_store.exists(),
            "the half-created segment was left behind"
        );
        assert_eq!(log.segment_count(), 1);
        assert_eq!(log.highest_offset(), Some(Offset(254)));
        expect_exactly(&log, &acked, "after the failed roll").await;

        faults.set_disk_full(false);
        assert_eq!(log.append(&value(255)).await.unwrap(), Offset(255));
        acked.push(value(255));
        assert_eq!(log.segment_count(), 2, "the next append rolls");
        expect_exactly(&log, &acked, "after the roll").await;
        log.close().await.unwrap();

        let log = Log::open(&dir, cfg).await.unwrap();
        assert_eq!(log.segment_count(), 2);
        expect_exactly(&log, &acked, "after reopen").await;
        log.close().await.unwrap();
    });
}

/// Fault model: one `fdatasync` of the store fails (EIO). The kernel may have dropped the dirty
/// data, so the partition must stop: no ack for that group commit, `Stopped` for every later
/// append, no retry. Data durable before stays readable, also from disk.
#[test]
fn failed_fdatasync_stops_the_partition_and_durable_data_stays_readable() {
    let dir = test_dir("faults-fsync");
    let _cleanup = RemoveOnSuccess(dir.clone());
    run(|| async move {
        // No tail cache: reads after the stop go to the disk.
        let cfg = LogConfig {
            tail_cache_bytes_max: 0,
            ..small_config()
        };
        let faults = Rc::new(Faults::new());
        let log = open_faulty(&dir, cfg.clone(), &faults).await;
        let mut acked = Vec::new();
        for i in 0..20 {
            let v = format!("durable-{i}").into_bytes();
            log.append(&v).await.unwrap();
            acked.push(v);
        }
        faults.fail_syncs(1);
        let lost: Vec<Vec<u8>> = vec![b"unsynced-a".to_vec(), b"b1".to_vec(), b"b2".to_vec()];
        let (a, b) = zip(
            log.append(&lost[0]),
            log.append_batch(&[&lost[1], &lost[2]]),
        )
        .await;
        for r in [a, b] {
            assert!(
                matches!(r, Err(Error::Stopped { .. } | Error::Io { .. })),
                "an append whose fdatasync failed resolved {r:?}"
            );
        }
        let syncs = faults.syncs();
        for _ in 0..3 {
            let r = log.append(b"after the stop").await;
            assert!(matches!(r, Err(Error::Stopped { .. })), "{r:?}");
        }
        let r = log.append_batch(&[b"x", b"y"]).await;
        assert!(matches!(r, Err(Error::Stopped { .. })), "{r:?}");
        assert_eq!(faults.syncs(), syncs, "a stopped partition still syncs");
        assert_eq!(log.highest_offset(), Some(Offset(19)));
        assert!(matches!(
            log.read(Offset(20)).await,
            Err(Error::OffsetOutOfRange { .. })
        ));
        assert!(matches!(
            log.wait_for(Offset(20)).await,
            Err(Error::Stopped { .. })
        ));
        expect_exactly(&log, &acked, "after the stop").await;
        let _ = log.close().await;

        // The unacked batches were written, so they may or may not be there, but whole.
        let log = Log::open(&dir, cfg).await.unwrap();
        let got = read_all(&log).await.unwrap();
        assert!(got.len() >= acked.len(), "acknowledged records lost");
        let (durable, extra) = got.split_at(acked.len());
        expect_values(durable, &acked, "after reopen");
        let extra: Vec<&[u8]> = extra.iter().map(|(_, v)| &v[..]).collect();
        assert!(
            extra.is_empty() || extra == [&lost[0][..]] || extra == [&lost[0], &lost[1], &lost[2]],
            "after reopen, beyond the acked records: {extra:?}"
        );
        let next = got.len() as u64;
        assert_eq!(log.append(b"works again").await.unwrap(), Offset(next));
        log.close().await.unwrap();
    });
}

/// Fault model: one read fails with EIO. The read reports `Error::Io` (not `Corrupt`, not an
/// empty result), and the next read works; at open, a failed read fails the open instead of
/// being taken for a torn tail and cutting the log.
#[test]
fn failed_read_is_an_io_error_and_never_cuts_the_log() {
    let dir = test_dir("faults-read");
    let _cleanup = RemoveOnSuccess(dir.clone());
    run(|| async move {
        let cfg = LogConfig {
            tail_cache_bytes_max: 0,
            ..small_config()
        };
        let faults = Rc::new(Faults::new());
        let log = open_faulty(&dir, cfg.clone(), &faults).await;
        let acked: Vec<Vec<u8>> = (0..30).map(|i| vec![i as u8; 50 * i]).collect();
        for v in &acked {
            log.append(v).await.unwrap();
        }
        faults.fail_reads(1);
        let r = log.read(Offset(3)).await;
        assert!(
            matches!(
                r,
                Err(Error::Io {
                    errno: Some(libc::EIO),
                    ..
                })
            ),
            "{r:?}"
        );
        assert_eq!(&log.read(Offset(3)).await.unwrap().value[..], &acked[3][..]);
        log.close().await.unwrap();

        for n in 1..=3 {
            faults.fail_reads(n);
            let r = Log::open_with_disk(&dir, cfg.clone(), Disk::with_faults(faults.clone())).await;
            assert!(
                matches!(r, Err(Error::Io { .. })),
                "open with {n} failing reads resolved {:?}",
                r.map(|_| ())
            );
            faults.fail_reads(0);
        }
        let log = Log::open(&dir, cfg).await.unwrap();
        expect_exactly(&log, &acked, "after failed opens").await;
        log.close().await.unwrap();
    });
}

/// Fault model: the real filesystem runs out of space. glommio reports that as
/// `GlommioError::EnhancedIoError` wrapping ENOSPC, and `src/io` turns it into an `io::Error`
/// with `.into()` before classifying it with `Error::from_io` — the conversion keeps the kind
/// (`StorageFull`) but drops the raw errno. Found when this machine's disk really filled up
/// during a run: `Log::open` failed with `Io { op: "allocating", kind: StorageFull,
/// errno: None, .. }` instead of `DiskFull`.
#[test]
fn real_enospc_reported_by_glommio_is_disk_full() {
    for errno in [libc::ENOSPC, libc::EDQUOT] {
        let path = Path::new("/data/00000000000000000000.store");
        let reported = glommio::GlommioError::<()>::EnhancedIoError {
            source: std::io::Error::from_raw_os_error(errno),
            op: "Writing",
            path: Some(path.to_path_buf()),
            fd: Some(7),
        };
        // What every `File` method in src/io/mod.rs does with a glommio error.
        let err = Error::from_io("writing", path, reported.into());
        assert!(
            matches!(err, Error::DiskFull { .. }),
            "errno {errno} became {err:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Concurrent appenders when a fault hits.
// ---------------------------------------------------------------------------------------------

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Fault {
    /// One or two store writes fail with EIO, while appends are in flight.
    WriteEio,
    /// The disk is full for a few milliseconds, while appends are in flight.
    DiskFull,
    /// One `fdatasync` fails: the partition stops. Armed while the writers pause, so that the
    /// appends it must fail are known: exactly those started after it was armed.
    SyncFails,
}

/// Fault model: several tasks append concurrently (so group commits hold many batches) and
/// one or two store writes fail with EIO after a random number of acks.
#[test]
fn concurrent_appends_either_ack_durably_or_fail_when_writes_fail() {
    concurrent_appends_under(Fault::WriteEio, "faults-concurrent-eio");
}

/// Fault model: several tasks append concurrently and the disk is full for a few milliseconds
/// after a random number of acks.
#[test]
fn concurrent_appends_either_ack_durably_or_fail_when_the_disk_fills_up() {
    concurrent_appends_under(Fault::DiskFull, "faults-concurrent-enospc");
}

/// Fault model: several tasks append concurrently and, after a random number of acks, the
/// next `fdatasync` fails, which stops the partition: no append started after that is acked.
#[test]
fn concurrent_appends_either_ack_durably_or_fail_when_fdatasync_fails() {
    concurrent_appends_under(Fault::SyncFails, "faults-concurrent-fsync");
}

const WRITERS: usize = 4;
const APPENDS_PER_WRITER: usize = 80;

/// What the writers and the fault injector share.
#[derive(Default)]
struct Progress {
    acks: Cell<u64>,
    failures: Cell<u64>,
    /// Appends started so far, over all writers (an append's start order).
    started: Cell<u64>,
    /// Appends completed so far (an append's completion order).
    completed: Cell<u64>,
    in_flight: Cell<u64>,
    /// Writers wait before their next append while set.
    paused: Cell<bool>,
    outcomes: RefCell<Vec<Outcome>>,
}

/// What became of one append.
struct Outcome {
    values: Vec<Vec<u8>>,
    result: corelog::Result<Offset>,
    started: u64,
    completed: u64,
}

fn concurrent_appends_under(fault: Fault, name: &str) {
    let seed = test_seed(name);
    let dir = test_dir(name);
    let _cleanup = RemoveOnSuccess(dir.clone());
    run(|| async move {
        let mut rng = StdRng::seed_from_u64(seed);
        let cfg = LogConfig {
            // Small segments roll under load; with a failing fdatasync, no roll (the index
            // sync of a roll is not the store's sync under test).
            segment_bytes_max: if fault == Fault::SyncFails {
                4 << 20
            } else {
                256 << 10
            },
            ..small_config()
        };
        let faults = Rc::new(Faults::new());
        let log = open_faulty(&dir, cfg.clone(), &faults).await;
        let progress = Rc::new(Progress::default());
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let rng = StdRng::seed_from_u64(rng.random());
            writers.push(glommio::spawn_local(writer(
                log.clone(),
                progress.clone(),
                w,
                rng,
            )));
        }
        let trigger_acks = rng.random_range(5..120u64);
        let eio_writes = rng.random_range(1..=2u32);
        let full_ms = rng.random_range(2..6u64);
        eprintln!(
            "{name}: fault {fault:?} after {trigger_acks} acks (eio writes {eio_writes}, \
             full for {full_ms} ms)"
        );
        let injector = {
            let (faults, p) = (faults.clone(), progress.clone());
            glommio::spawn_local(async move {
                wait_until(|| p.acks.get() >= trigger_acks).await;
                match fault {
                    Fault::WriteEio => faults.fail_writes(eio_writes, libc::EIO),
                    Fault::DiskFull => {
                        // Full until an append saw it (one flush can outlast a short window),
                        // then a little longer.
                        faults.set_disk_full(true);
                        wait_until(|| p.failures.get() > 0).await;
                        corelog::io::sleep(Duration::from_millis(full_ms)).await;
                        faults.set_disk_full(false);
                    }
                    Fault::SyncFails => {
                        p.paused.set(true);
                        wait_until(|| p.in_flight.get() == 0).await;
                        faults.fail_syncs(1);
                        p.paused.set(false);
                    }
                }
                p.started.get()
            })
        };
        let armed_at = injector.await;
        for w in writers {
            w.await;
        }

        let outcomes = progress.outcomes.take();
        let mut acked: Vec<(u64, &[Vec<u8>])> = Vec::new();
        let mut failed: Vec<&Outcome> = Vec::new();
        for o in &outcomes {
            match &o.result {
                Ok(base) => acked.push((base.get(), &o.values)),
                Err(e) => {
                    let expected = match fault {
                        Fault::WriteEio => matches!(
                            e,
                            Error::Io {
                                errno: Some(libc::EIO),
                                ..
                            }
                        ),
                        Fault::DiskFull => matches!(e, Error::DiskFull { .. }),
                        Fault::SyncFails => matches!(e, Error::Stopped { .. }),
                    };
                    assert!(expected, "{fault:?}: an append failed with {e:?}");
                    failed.push(o);
                }
            }
        }
        eprintln!(
            "{name}: {} appends acked, {} failed",
            acked.len(),
            failed.len()
        );
        assert!(
            !failed.is_empty(),
            "{fault:?}: the fault never hit an append"
        );
        if fault == Fault::SyncFails {
            for o in &outcomes {
                let after = o.started >= armed_at;
                assert_eq!(
                    o.result.is_err(),
                    after,
                    "the append started {}th (the fsync fault was armed at {armed_at}) \
                     resolved {:?}",
                    o.started,
                    o.result
                );
            }
        } else {
            let first_failure = failed.iter().map(|o| o.completed).min().unwrap();
            let later_acks = outcomes
                .iter()
                .filter(|o| o.result.is_ok() && o.completed > first_failure)
                .count();
            assert!(
                later_acks > 0,
                "{fault:?}: no append succeeded after the fault"
            );
        }

        // Acked batches tile the offsets densely from 0.
        acked.sort_by_key(|(base, _)| *base);
        let mut want: Vec<Vec<u8>> = Vec::new();
        for (base, values) in &acked {
            assert_eq!(
                *base,
                want.len() as u64,
                "{fault:?}: acked offsets have a gap"
            );
            want.extend(values.iter().cloned());
        }
        expect_exactly(&log, &want, "before close").await;
        let _ = log.close().await;

        let log = Log::open(&dir, cfg).await.unwrap();
        let got = read_all(&log).await.unwrap();
        assert!(got.len() >= want.len(), "{fault:?}: acked records lost");
        let (durable, extra) = got.split_at(want.len());
        expect_values(durable, &want, "after reopen");
        eprintln!("{name}: {} unacked records recovered", extra.len());
        if fault == Fault::SyncFails {
            // Written before the failed sync: may survive, but only as batches that were sent.
            let sent: HashSet<&[u8]> = failed
                .iter()
                .flat_map(|o| o.values.iter().map(|v| &v[..]))
                .collect();
            for (offset, v) in extra {
                assert!(
                    sent.contains(&v[..]),
                    "{fault:?}: unknown record at {offset}"
                );
            }
        } else {
            assert!(
                extra.is_empty(),
                "{fault:?}: {} records of failed appends came back",
                extra.len()
            );
        }
        let next = got.len() as u64;
        assert_eq!(log.append(b"after reopen").await.unwrap(), Offset(next));
        log.close().await.unwrap();
    });
}

/// One appending task: `APPENDS_PER_WRITER` batches, one at a time, each outcome recorded.
async fn writer(log: Log, p: Rc<Progress>, w: usize, mut rng: StdRng) {
    for seq in 0..APPENDS_PER_WRITER {
        wait_until(|| !p.paused.get()).await;
        let values = writer_values(&mut rng, w, seq);
        let started = p.started.get();
        p.started.set(started + 1);
        p.in_flight.set(p.in_flight.get() + 1);
        let result = log.append_batch(&values).await;
        p.in_flight.set(p.in_flight.get() - 1);
        let completed = p.completed.get();
        p.completed.set(completed + 1);
        let stopped = matches!(result, Err(Error::Stopped { .. }));
        let failed = result.is_err();
        let counter = if failed { &p.failures } else { &p.acks };
        counter.set(counter.get() + 1);
        p.outcomes.borrow_mut().push(Outcome {
            values,
            result,
            started,
            completed,
        });
        if stopped {
            return;
        }
        if failed {
            // Do not burn through the whole sequence while the disk is full.
            corelog::io::sleep(Duration::from_micros(500)).await;
        }
    }
}

/// Polls `done` every 200 µs on the executor's timer.
async fn wait_until(done: impl Fn() -> bool) {
    while !done() {
        corelog::io::sleep(Duration::from_micros(200)).await;
    }
}

/// One to three records, each naming its writer, sequence number and position, padded to a
/// random length (sometimes past a block).
fn writer_values(rng: &mut StdRng, writer: usize, seq: usize) -> Vec<Vec<u8>> {
    let records = rng.random_range(1..=3);
    (0..records)
        .map(|r| {
            let mut v = format!("w{writer}-s{seq}-r{r}:").into_bytes();
            let pad = if rng.random_bool(0.1) {
                rng.random_range(4096..10_000)
            } else {
                rng.random_range(0..600)
            };
            v.extend((0..pad).map(|_| rng.random::<u8>()));
            v
        })
        .collect()
}

/// Fault model: renaming a segment's store out of the way, the first step of deleting it,
/// fails once with EIO. The segment must stay, in memory and on disk: had the log's state
/// changed first, the file keeping its name would bring the records back below the log's
/// start at the next open.
#[test]
fn retention_that_cannot_rename_a_segment_keeps_it_and_a_reopen_agrees() {
    let dir = test_dir("faults-rename-retention");
    let _cleanup = RemoveOnSuccess(dir.clone());
    run(|| async move {
        let faults = Rc::new(Faults::new());
        let values = fill_segments(&dir, &faults).await;
        let cfg = LogConfig {
            retention_bytes: Some(150 << 10),
            ..segments_of_64k()
        };
        let log = open_faulty(&dir, cfg.clone(), &faults).await;
        let segments = log.segment_count();
        faults.fail_renames(1);
        let failed = log.apply_retention().await;
        expect_eio(&failed);
        assert_eq!(log.lowest_offset(), Offset(0), "the segment left the log");
        assert_eq!(log.segment_count(), segments);
        expect_exactly(&log, &values, "after the failed rename").await;

        let removed = log.apply_retention().await.unwrap();
        assert!(removed > 0);
        let start = log.lowest_offset();
        assert!(start > Offset(0));
        log.close().await.unwrap();

        let log = open_faulty(&dir, cfg, &faults).await;
        assert_eq!(
            log.lowest_offset(),
            start,
            "the reopened log starts elsewhere"
        );
        expect_suffix(&log, &values, start).await;
        log.close().await.unwrap();
    });
}

/// Fault model: a reset (what installing a Raft snapshot does) cannot rename the oldest
/// segment out of the way. The reset fails and leaves the log as it was, on disk too: a reset
/// that replaced the first segment before the others were gone would leave a log the next
/// open cannot read.
#[test]
fn a_reset_that_cannot_rename_a_segment_fails_and_leaves_the_log_whole() {
    let dir = test_dir("faults-rename-reset");
    let _cleanup = RemoveOnSuccess(dir.clone());
    run(|| async move {
        let faults = Rc::new(Faults::new());
        let (log, values) = filled_log_failing_a_rename_after(&dir, &faults, 0).await;
        let failed = log.reset().await;
        expect_eio(&failed);
        expect_exactly(&log, &values, "after the failed reset").await;
        log.close().await.unwrap();

        let log = open_faulty(&dir, segments_of_64k(), &faults).await;
        expect_exactly(&log, &values, "reopened after the failed reset").await;
        log.reset().await.unwrap();
        assert_eq!(log.segment_count(), 1);
        assert_eq!(log.highest_offset(), None);
        log.close().await.unwrap();
        let log = open_faulty(&dir, segments_of_64k(), &faults).await;
        assert_eq!(
            log.highest_offset(),
            None,
            "records came back after a reset"
        );
        log.close().await.unwrap();
    });
}

/// Fault model: a reset renames the first segment's files out of the way, then cannot rename
/// the second's. What keeps its name on disk is the rest of the old log, which the next open
/// accepts; the log in memory, which still holds the renamed segment, stops: an append into
/// it would be gone after a reopen.
#[test]
fn a_reset_that_fails_half_way_stops_the_log_and_a_reopen_finds_a_whole_log() {
    let dir = test_dir("faults-rename-reset-half");
    let _cleanup = RemoveOnSuccess(dir.clone());
    run(|| async move {
        let faults = Rc::new(Faults::new());
        // The first segment's store and index, then the second's store fails.
        let (log, values) = filled_log_failing_a_rename_after(&dir, &faults, 2).await;
        let failed = log.reset().await;
        assert!(matches!(failed, Err(Error::Stopped { .. })), "{failed:?}");
        let refused = log.append(b"after").await;
        assert!(matches!(refused, Err(Error::Stopped { .. })), "{refused:?}");
        let _ = log.close().await;

        let log = open_faulty(&dir, segments_of_64k(), &faults).await;
        let start = log.lowest_offset();
        assert!(start > Offset(0), "the first segment came back");
        expect_suffix(&log, &values, start).await;
        log.reset().await.unwrap();
        assert_eq!(log.highest_offset(), None);
        log.close().await.unwrap();
    });
}

/// Fault model: a truncation inside the first segment renames the newest later segment out of
/// the way, then cannot rename the next. The log stops; the next open finds the old log minus
/// its newest segment and finishes the cut from the truncate marker.
#[test]
fn a_cut_that_fails_half_way_stops_the_log_and_a_reopen_finishes_it() {
    let dir = test_dir("faults-rename-cut-half");
    let _cleanup = RemoveOnSuccess(dir.clone());
    run(|| async move {
        let faults = Rc::new(Faults::new());
        let (log, values) = filled_log_failing_a_rename_after(&dir, &faults, 2).await;
        let failed = log.truncate_after(Offset(10)).await;
        assert!(matches!(failed, Err(Error::Stopped { .. })), "{failed:?}");
        let _ = log.close().await;

        let log = open_faulty(&dir, segments_of_64k(), &faults).await;
        expect_exactly(&log, &values[..=10], "reopened after the failed cut").await;
        assert_eq!(log.segment_count(), 1);
        log.close().await.unwrap();
    });
}

/// A segment's files are renamed to `<name>.N.deleted` before they are removed, N from a
/// per-thread counter started from the clock. A name that is taken (a clock step back, a
/// leftover the remover has not reached) is never replaced: the rename takes the next N. Here
/// the next three names of the first segment's files are taken by decoys; truncating past it
/// renames around them, leaves them untouched, and the log keeps exactly its suffix.
#[test]
fn a_deleted_segment_name_already_taken_is_skipped_not_replaced() {
    let dir = test_dir("faults-rename-taken");
    let _cleanup = RemoveOnSuccess(dir.clone());
    run(|| async move {
        let faults = Rc::new(Faults::new());
        let values = fill_segments(&dir, &faults).await;
        let log = open_faulty(&dir, segments_of_64k(), &faults).await;
        let store = segment::store_path(&dir, Offset(0));
        let index = segment::index_path(&dir, Offset(0));
        // The counter is this thread's: the log, on this thread too, takes the next numbers.
        let probe = segment::deleted_path(&store);
        let probe = probe.file_name().unwrap().to_string_lossy().into_owned();
        let n: u64 = probe.rsplit('.').nth(1).unwrap().parse().unwrap();
        let mut decoys = Vec::new();
        for file in [&store, &index] {
            for m in n + 1..=n + 3 {
                let mut name = file.file_name().unwrap().to_os_string();
                name.push(format!(".{m}.deleted"));
                let decoy = dir.join(name);
                std::fs::write(&decoy, b"decoy").unwrap();
                decoys.push(decoy);
            }
        }
        let mut bases: Vec<u64> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().to_string_lossy().into_owned();
                name.strip_suffix(".store").and_then(|b| b.parse().ok())
            })
            .collect();
        bases.sort_unstable();
        let second = Offset(bases[1]);
        log.truncate(second).await.unwrap();
        assert_eq!(log.lowest_offset(), second);
        assert!(
            !store.exists() && !index.exists(),
            "segment 0 kept its names"
        );
        for decoy in &decoys {
            assert_eq!(
                std::fs::read(decoy).unwrap(),
                b"decoy",
                "{decoy:?} replaced"
            );
        }
        expect_suffix(&log, &values, second).await;
        log.close().await.unwrap();
        let log = open_faulty(&dir, segments_of_64k(), &faults).await;
        expect_suffix(&log, &values, second).await;
        log.close().await.unwrap();
    });
}

/// Fills five segments ([`fill_segments`]), opens the log again and arms one rename failure
/// after `ok` renames succeed.
async fn filled_log_failing_a_rename_after(
    dir: &Path,
    faults: &Rc<Faults>,
    ok: u32,
) -> (Log, Vec<Vec<u8>>) {
    let values = fill_segments(dir, faults).await;
    let log = open_faulty(dir, segments_of_64k(), faults).await;
    faults.fail_renames_after(ok, 1);
    (log, values)
}

/// The log holds exactly `values[start..]`, each at its offset.
async fn expect_suffix(log: &Log, values: &[Vec<u8>], start: Offset) {
    let got = read_all(log).await.unwrap();
    let kept = &values[start.get() as usize..];
    assert_eq!(got.len(), kept.len());
    for ((offset, value), (i, want)) in got.iter().zip(kept.iter().enumerate()) {
        assert_eq!(offset.get(), start.get() + i as u64);
        assert!(value[..] == want[..], "offset {offset:?} differs");
    }
}

/// `result` failed with EIO.
fn expect_eio<T: std::fmt::Debug>(result: &corelog::Result<T>) {
    assert!(
        matches!(
            result,
            Err(Error::Io {
                errno: Some(libc::EIO),
                ..
            })
        ),
        "expected an EIO error, got {result:?}"
    );
}

/// Segments of 64 KiB, no retention.
fn segments_of_64k() -> LogConfig {
    LogConfig {
        segment_bytes_max: 64 << 10,
        preallocate_bytes: 64 << 10,
        ..LogConfig::default()
    }
}

/// Appends 300 records of 1,000 bytes (five segments of 64 KiB) and closes the log.
async fn fill_segments(dir: &Path, faults: &Rc<Faults>) -> Vec<Vec<u8>> {
    let log = open_faulty(dir, segments_of_64k(), faults).await;
    let values: Vec<Vec<u8>> = (0..300u32)
        .map(|i| {
            let mut v = i.to_le_bytes().to_vec();
            v.resize(1000, (i % 251) as u8);
            v
        })
        .collect();
    for (i, v) in values.iter().enumerate() {
        assert_eq!(log.append(v).await.unwrap(), Offset(i as u64));
    }
    assert!(log.segment_count() >= 4, "{} segments", log.segment_count());
    log.close().await.unwrap();
    values
}

// ---------------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------------

/// Segments of 1 MiB: each log pre-allocates its active segment.
fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 1 << 20,
        ..LogConfig::default()
    }
}

async fn open_faulty(dir: &Path, cfg: LogConfig, faults: &Rc<Faults>) -> Log {
    Log::open_with_disk(dir, cfg, Disk::with_faults(faults.clone()))
        .await
        .unwrap()
}

/// The log holds exactly `values` at offsets 0.., byte for byte.
async fn expect_exactly(log: &Log, values: &[Vec<u8>], what: &str) {
    let got = read_all(log)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e:?}"));
    assert_eq!(got.len(), values.len(), "{what}: number of records");
    expect_values(&got, values, what);
    let highest = values.len().checked_sub(1).map(|h| Offset(h as u64));
    assert_eq!(log.highest_offset(), highest, "{what}");
}

fn expect_values(got: &[(Offset, Bytes)], values: &[Vec<u8>], what: &str) {
    for (i, ((offset, value), want)) in got.iter().zip(values).enumerate() {
        assert_eq!(*offset, Offset(i as u64), "{what}");
        assert!(value[..] == want[..], "{what}: offset {i} differs");
    }
}

async fn read_all(log: &Log) -> corelog::Result<Vec<(Offset, Bytes)>> {
    let mut out = Vec::new();
    let mut next = log.lowest_offset();
    loop {
        let records = log.read_from(next, 256 << 10).await?;
        if records.is_empty() {
            return Ok(out);
        }
        for r in records {
            assert_eq!(r.offset, next, "read_from skipped an offset");
            next = next.plus(1);
            out.push((r.offset, r.value));
        }
    }
}

fn test_seed(test: &str) -> u64 {
    let seed = std::env::var("CORELOG_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("{test}: seed {seed} (rerun with CORELOG_TEST_SEED={seed})");
    seed
}

//! Torn writes and bit flips on real files: what `Log::open` makes of a store or index that a
//! crash or the medium damaged.
//!
//! Every case starts from one cleanly closed log whose batches the test wrote itself (so it
//! knows every durable byte), copies its directory, damages the copy, and opens it. The
//! contract under test (DESIGN §2, recovery):
//! - the active segment's torn or corrupt tail is cut: open returns exactly the longest prefix
//!   of intact batches, never a damaged record, and the next append gets the next dense offset;
//! - damage inside a sealed segment is `Error::Corrupt`, at open or when the damaged offset is
//!   read, and is never returned as data;
//! - index files are only accelerators: damaged or missing ones are rebuilt from the store.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use common::{RemoveOnSuccess, run, test_dir};
use corelog::storage::format::{self, Batch, HEADER_BYTES};
use corelog::storage::index::Index;
use corelog::storage::{Log, LogConfig};
use corelog::{Error, Offset};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const BLOCK_BYTES: u64 = 4096;
/// Read size when walking a whole log.
const READ_BYTES_MAX: usize = 256 << 10;

// ---------------------------------------------------------------------------------------------
// Torn tails and bit flips in the active segment.
// ---------------------------------------------------------------------------------------------

/// Fault model: the process dies during a flush, so the active store ends at an arbitrary byte
/// (inside a header, inside a record, at a batch or block boundary, at 0); the file may also
/// still be pre-allocated, i.e. the cut is followed by zeros. Recovery must keep exactly the
/// batches whose bytes are all intact and drop the rest.
#[test]
fn torn_active_store_recovers_exactly_the_intact_prefix_of_batches() {
    let (seed, mut rng) = seeded_rng("torn_active_store");
    let dir = test_dir("crash-torn-tail");
    let _cleanup = RemoveOnSuccess(dir.clone());
    run(|| async move {
        let cfg = one_segment_config();
        let fixture = Fixture::build(&dir.join("pristine"), &cfg, &mut rng).await;
        let active = fixture.active_store();
        let data_end = fixture.data_end(active);
        let mut cuts: Vec<(u64, Option<u64>)> = Vec::new(); // (cut, zero-extend to)
        cuts.push((0, None));
        cuts.push((data_end, None));
        // Every interesting spot of a sample of batches: the boundary, inside the header,
        // exactly after the header, inside the first record, one byte short of the end.
        let active_batches: Vec<&Placed> = fixture.in_segment(active).collect();
        for _ in 0..7 {
            let b = active_batches[rng.random_range(0..active_batches.len())];
            let len = b.len();
            for delta in [
                0,
                1,
                13,
                HEADER_BYTES as u64,
                HEADER_BYTES as u64 + 6,
                len - 1,
            ] {
                cuts.push((b.position + delta.min(len - 1), None));
            }
        }
        // Block boundaries: where a flush's full blocks end.
        for _ in 0..5 {
            let blocks = data_end / BLOCK_BYTES;
            cuts.push((rng.random_range(1..=blocks) * BLOCK_BYTES, None));
        }
        // Cuts followed by zeros, as in a pre-allocated file.
        for _ in 0..6 {
            let cut = rng.random_range(0..data_end);
            let to = align_up(cut) + BLOCK_BYTES * rng.random_range(0..3u64);
            cuts.push((cut, Some(to.max(cut + 1))));
        }
        cuts.push((data_end - 1, Some(cfg.segment_bytes_max)));
        eprintln!("seed {seed}: {} cut points in {data_end} bytes", cuts.len());

        for (i, (cut, extend_to)) in cuts.into_iter().enumerate() {
            let what = format!("cut at {cut}, zero-extended to {extend_to:?}");
            let case = dir.join(format!("case-{i}"));
            let damaged = fixture.copy_with(&case, |store, bytes| {
                if store == active {
                    bytes.truncate(cut as usize);
                    if let Some(to) = extend_to {
                        bytes.resize(to as usize, 0);
                    }
                }
            });
            fixture
                .expect_recovery(&case, &cfg_variant(&cfg, i), &damaged, &what)
                .await;
            std::fs::remove_dir_all(&case).unwrap();
        }
    });
}

/// Fault model: a single bit flips on the medium (or a torn write leaves garbage) in the last
/// batches of the active segment — the part recovery scans, from the last index entry on — or
/// in the zeros just past the data. Recovery must cut at the first damaged batch.
#[test]
fn bit_flip_in_the_active_segments_tail_cuts_the_log_at_the_damaged_batch() {
    let (seed, mut rng) = seeded_rng("bit_flip_active_tail");
    let dir = test_dir("crash-flip-tail");
    let _cleanup = RemoveOnSuccess(dir.clone());
    run(|| async move {
        let cfg = one_segment_config();
        // Random batch sizes decide where the last index entry falls; rebuild (bounded) until
        // several batches follow it, so every seed tests the scan.
        let mut attempts = 0;
        let fixture = loop {
            attempts += 1;
            let pristine = dir.join("pristine");
            let _ = std::fs::remove_dir_all(&pristine);
            let fixture = Fixture::build(&pristine, &cfg, &mut rng).await;
            let active = fixture.active_store();
            let last_entry = fixture.last_index_position(active);
            let after = fixture
                .in_segment(active)
                .filter(|b| b.position >= last_entry)
                .count();
            if after >= 3 || attempts == 20 {
                break fixture;
            }
        };
        let active = fixture.active_store();
        let data_end = fixture.data_end(active);
        let last_entry = fixture.last_index_position(active);
        let scanned: Vec<&Placed> = fixture
            .in_segment(active)
            .filter(|b| b.position >= last_entry)
            .collect();
        assert!(
            scanned.len() >= 3,
            "the fixture should leave several batches after the last index entry"
        );
        let mut flips: Vec<u64> = Vec::new(); // bit positions
        // The batch the last index entry points at (recovery must walk the index back), the
        // last batch, and random bits of random scanned batches.
        flips.push(last_entry * 8 + rng.random_range(0..HEADER_BYTES as u64 * 8));
        let last = scanned.last().unwrap();
        flips.push((last.position + last.len() - 1) * 8 + rng.random_range(0..8));
        for _ in 0..12 {
            let b = scanned[rng.random_range(0..scanned.len())];
            flips.push(b.position * 8 + rng.random_range(0..b.len() * 8));
        }
        // Garbage right after the data: nothing is lost, the garbage is cut.
        flips.push((data_end + 9) * 8 + 3);
        eprintln!("seed {seed}: {} bit flips", flips.len());

        for (i, bit) in flips.into_iter().enumerate() {
            let what = format!("bit {} of byte {} flipped", bit % 8, bit / 8);
            let case = dir.join(format!("case-{i}"));
            let damaged = fixture.copy_with(&case, |store, bytes| {
                if store == active {
                    bytes[(bit / 8) as usize] ^= 1 << (bit % 8);
                }
            });
            fixture
                .expect_recovery(&case, &cfg_variant(&cfg, i), &damaged, &what)
                .await;
            std::fs::remove_dir_all(&case).unwrap();
        }
    });
}

/// Fault model: a bit flips in the active segment below its last index entry, where open does
/// not look (open time must not grow with the segment). The damage must surface as
/// `Error::Corrupt` when the batch is read, never as data.
#[test]
fn bit_flip_below_the_active_segments_last_index_entry_is_corrupt_on_read() {
    let (seed, mut rng) = seeded_rng("bit_flip_active_body");
    let dir = test_dir("crash-flip-active-body");
    let _cleanup = RemoveOnSuccess(dir.clone());
    run(|| async move {
        let cfg = one_segment_config();
        let fixture = Fixture::build(&dir.join("pristine"), &cfg, &mut rng).await;
        let active = fixture.active_store();
        let last_entry = fixture.last_index_position(active);
        let early: Vec<&Placed> = fixture
            .in_segment(active)
            .filter(|b| b.position + b.len() <= last_entry)
            .collect();
        eprintln!("seed {seed}");
        let mut found_on_read = 0;
        for i in 0..4 {
            let victim = early[rng.random_range(0..early.len())];
            let bit = victim.position * 8 + rng.random_range(0..victim.len() * 8);
            let case = dir.join(format!("case-{i}"));
            fixture.copy_with(&case, |store, bytes| {
                if store == active {
                    bytes[(bit / 8) as usize] ^= 1 << (bit % 8);
                }
            });
            let what = format!("bit {bit} (batch at {}) flipped", victim.position);
            let cfg = LogConfig {
                tail_cache_bytes_max: 0,
                ..cfg.clone()
            };
            match Log::open(&case, cfg).await {
                Err(e) => assert!(matches!(e, Error::Corrupt { .. }), "{what}: {e:?}"),
                Ok(log) => {
                    fixture
                        .expect_reads_never_return_damage(&log, &case, victim, &what)
                        .await;
                    log.close().await.unwrap();
                    found_on_read += 1;
                }
            }
            std::fs::remove_dir_all(&case).unwrap();
        }
        assert!(found_on_read > 0, "no case exercised the read path");
    });
}

// ---------------------------------------------------------------------------------------------
// Sealed segments.
// ---------------------------------------------------------------------------------------------

/// Fault model: one bit flips inside the data of a sealed segment (media corruption below the
/// durable point). That is never a torn tail: it must be `Error::Corrupt` naming the segment,
/// at open (when the cheap check of the segment's last batches sees it) or when the damaged
/// offset is read, while reads of the other segments keep working.
#[test]
fn bit_flip_in_a_sealed_segment_is_corrupt_at_open_or_on_read_never_data() {
    let (seed, mut rng) = seeded_rng("bit_flip_sealed");
    let dir = test_dir("crash-flip-sealed");
    let _cleanup = RemoveOnSuccess(dir.clone());
    run(|| async move {
        let cfg = LogConfig {
            segment_bytes_max: 64 << 10,
            ..LogConfig::default()
        };
        let fixture = Fixture::build(&dir.join("pristine"), &cfg, &mut rng).await;
        let sealed: Vec<u64> = fixture.segments[..fixture.segments.len() - 1].to_vec();
        assert!(sealed.len() >= 2, "the fixture should roll segments");
        let mut victims: Vec<&Placed> = Vec::new();
        for &seg in &sealed[..2] {
            let batches: Vec<&Placed> = fixture.in_segment(seg).collect();
            let last_entry = fixture.last_index_position(seg);
            victims.push(batches[0]); // first batch: only found by a read
            victims.push(batches[batches.len() - 1]); // last batch: the cheap check sees it
            victims.push(batches.iter().find(|b| b.position == last_entry).unwrap());
            if batches.len() > 2 {
                victims.push(batches[rng.random_range(1..batches.len() - 1)]);
            }
        }
        eprintln!("seed {seed}: {} sealed-segment flips", victims.len());
        let (mut corrupt_at_open, mut corrupt_on_read) = (0, 0);
        for (i, victim) in victims.into_iter().enumerate() {
            let bit = victim.position * 8 + rng.random_range(0..victim.len() * 8);
            let case = dir.join(format!("case-{i}"));
            fixture.copy_with(&case, |store, bytes| {
                if store == victim.segment {
                    bytes[(bit / 8) as usize] ^= 1 << (bit % 8);
                }
            });
            let what = format!(
                "bit {} of byte {} of segment {} (batch at {}) flipped",
                bit % 8,
                bit / 8,
                victim.segment,
                victim.position
            );
            let read_cfg = LogConfig {
                tail_cache_bytes_max: 0,
                ..cfg.clone()
            };
            match Log::open(&case, read_cfg).await {
                Err(Error::Corrupt {
                    segment, position, ..
                }) => {
                    corrupt_at_open += 1;
                    assert_eq!(segment, store_path(&case, victim.segment), "{what}");
                    assert_eq!(position, victim.position, "{what}: position of the damage");
                }
                Err(e) => panic!("{what}: open failed with {e:?}, expected Corrupt"),
                Ok(log) => {
                    corrupt_on_read += 1;
                    assert_eq!(
                        log.highest_offset(),
                        Some(Offset(fixture.next_offset() - 1)),
                        "{what}"
                    );
                    fixture
                        .expect_reads_never_return_damage(&log, &case, victim, &what)
                        .await;
                    log.close().await.unwrap();
                }
            }
            std::fs::remove_dir_all(&case).unwrap();
        }
        // The last batch of a sealed segment is always checked at open.
        assert!(corrupt_at_open >= 2, "only {corrupt_at_open} found at open");
        // The first batch of a segment is below its last index entry: found only by a read.
        assert!(
            corrupt_on_read >= 1,
            "no damage was left for a read to find"
        );
    });
}

// ---------------------------------------------------------------------------------------------
// Index files.
// ---------------------------------------------------------------------------------------------

/// Fault model: index files are written without `fdatasync` between seals, so a crash can
/// leave them missing, short, or with damaged blocks; media can flip their bits. The index is
/// an accelerator: open must rebuild it from the store and every record must read back.
#[test]
fn damaged_or_missing_index_files_are_rebuilt_and_every_record_reads_back() {
    let (seed, mut rng) = seeded_rng("damaged_index");
    let dir = test_dir("crash-index");
    let _cleanup = RemoveOnSuccess(dir.clone());
    run(|| async move {
        // An entry per batch, so each sealed index spans more than one block.
        let cfg = LogConfig {
            segment_bytes_max: 64 << 10,
            index_interval_bytes: 1,
            tail_cache_bytes_max: 0,
            ..LogConfig::default()
        };
        let fixture = Fixture::build_small_batches(&dir.join("pristine"), &cfg, &mut rng).await;
        let segs = fixture.segments.clone();
        assert!(segs.len() >= 3, "the fixture should roll segments");
        let active = fixture.active_store();
        let index_len = |seg: u64| {
            std::fs::metadata(index_path(&fixture.dir, seg))
                .unwrap()
                .len()
        };
        assert!(
            index_len(segs[0]) > BLOCK_BYTES,
            "a sealed index should span several blocks"
        );
        type Damage = Box<dyn Fn(&Path)>;
        let flip = |seg: u64, at: u64| -> Damage {
            Box::new(move |d: &Path| {
                let path = index_path(d, seg);
                let mut bytes = std::fs::read(&path).unwrap();
                bytes[at as usize] ^= 0x20;
                std::fs::write(&path, bytes).unwrap();
            })
        };
        let truncate = |seg: u64, len: u64| -> Damage {
            Box::new(move |d: &Path| {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(index_path(d, seg))
                    .unwrap();
                f.set_len(len).unwrap();
            })
        };
        let delete = |seg: u64| -> Damage {
            Box::new(move |d: &Path| std::fs::remove_file(index_path(d, seg)).unwrap())
        };
        let garbage = rng.random::<u64>();
        let cases: Vec<(String, Damage)> = vec![
            ("sealed index deleted".into(), delete(segs[0])),
            ("active index deleted".into(), delete(active)),
            ("every index deleted".into(), {
                let segs = segs.clone();
                Box::new(move |d: &Path| {
                    for &s in &segs {
                        std::fs::remove_file(index_path(d, s)).unwrap();
                    }
                })
            }),
            (
                "sealed index cut inside its first block".into(),
                truncate(segs[1], 100),
            ),
            (
                "sealed index cut to its first block".into(),
                truncate(segs[0], BLOCK_BYTES),
            ),
            (
                "active index cut inside a block".into(),
                truncate(active, 777),
            ),
            (
                "bit flipped in a sealed index's first block".into(),
                flip(segs[0], rng.random_range(0..BLOCK_BYTES)),
            ),
            (
                "bit flipped in a sealed index's last block".into(),
                flip(
                    segs[1],
                    index_len(segs[1]) - 1 - rng.random_range(0..BLOCK_BYTES),
                ),
            ),
            (
                "bit flipped in the active index".into(),
                flip(
                    active,
                    rng.random_range(0..index_len(active).min(BLOCK_BYTES)),
                ),
            ),
            ("sealed index replaced by garbage".into(), {
                let seg = segs[1];
                Box::new(move |d: &Path| {
                    let mut r = StdRng::seed_from_u64(garbage);
                    let bytes: Vec<u8> = (0..2 * BLOCK_BYTES).map(|_| r.random()).collect();
                    std::fs::write(index_path(d, seg), bytes).unwrap();
                })
            }),
        ];
        eprintln!("seed {seed}: {} index damages", cases.len());
        for (i, (what, damage)) in cases.into_iter().enumerate() {
            let case = dir.join(format!("case-{i}"));
            fixture.copy_with(&case, |_, _| {});
            damage(&case);
            let log = Log::open(&case, cfg.clone())
                .await
                .unwrap_or_else(|e| panic!("{what}: open failed: {e:?}"));
            expect_records(&log, &fixture.batches, &[], &what).await;
            let next = fixture.next_offset();
            let off = log.append(what.as_bytes()).await.unwrap();
            assert_eq!(off, Offset(next), "{what}");
            log.close().await.unwrap();
            // The rebuilt indexes were written out: each decodes cleanly and points at batches.
            for &seg in &fixture.segments {
                fixture.expect_index_file_is_sound(&case, seg, &what);
            }
            let log = Log::open(&case, cfg.clone()).await.unwrap();
            expect_records(&log, &fixture.batches, &[what.as_bytes()], &what).await;
            log.close().await.unwrap();
            std::fs::remove_dir_all(&case).unwrap();
        }
    });
}

/// Fault model: the process died between deleting a segment's store and its index (retention
/// deletes the store first), or while writing a temporary file. Open removes the leftovers.
#[test]
fn open_removes_an_index_without_its_store_and_leftover_tmp_files() {
    let dir = test_dir("crash-orphans");
    let _cleanup = RemoveOnSuccess(dir.clone());
    run(|| async move {
        let cfg = LogConfig {
            initial_offset: Offset(1000),
            ..one_segment_config()
        };
        let log = Log::open(&dir, cfg.clone()).await.unwrap();
        for i in 0..10u32 {
            log.append(format!("v{i}").as_bytes()).await.unwrap();
        }
        log.close().await.unwrap();
        let orphan_below = index_path(&dir, 0);
        let orphan_above = index_path(&dir, 99_999);
        let tmp = dir.join("truncate-after.tmp");
        std::fs::write(&orphan_below, vec![7u8; 4096]).unwrap();
        std::fs::write(&orphan_above, b"").unwrap();
        std::fs::write(&tmp, b"half").unwrap();

        let log = Log::open(&dir, cfg).await.unwrap();
        assert!(!orphan_below.exists(), "orphan index below the log remains");
        assert!(!orphan_above.exists(), "orphan index above the log remains");
        assert!(!tmp.exists(), "leftover .tmp file remains");
        assert!(store_path(&dir, 1000).exists() && index_path(&dir, 1000).exists());
        assert_eq!(log.lowest_offset(), Offset(1000));
        assert_eq!(log.highest_offset(), Some(Offset(1009)));
        for i in 0..10u64 {
            let rec = log.read(Offset(1000 + i)).await.unwrap();
            assert_eq!(rec.value, Bytes::from(format!("v{i}")));
        }
        assert_eq!(log.append(b"next").await.unwrap(), Offset(1010));
        log.close().await.unwrap();
    });
}

// ---------------------------------------------------------------------------------------------
// The fixture: a closed log whose every batch and byte position the test knows.
// ---------------------------------------------------------------------------------------------

/// One batch as written and acknowledged, and where it lies on disk.
#[derive(Clone, Debug)]
struct Placed {
    /// Base offset of the segment holding it (its store file's name).
    segment: u64,
    /// Byte position in that segment's store.
    position: u64,
    base: u64,
    values: Vec<Vec<u8>>,
}

impl Placed {
    fn len(&self) -> u64 {
        format::batch_len(&self.values) as u64
    }

    fn next(&self) -> u64 {
        self.base + self.values.len() as u64
    }
}

struct Fixture {
    dir: PathBuf,
    /// Base offsets of the segments, oldest first; the last is active.
    segments: Vec<u64>,
    batches: Vec<Placed>,
    /// Each store file's pristine bytes, by segment base.
    stores: HashMap<u64, Vec<u8>>,
}

impl Fixture {
    /// A log of varied batches: empty, small and block-spanning values, one to five records
    /// per batch, an all-zero value; it ends in many small batches so that several follow the
    /// last index entry.
    async fn build(dir: &Path, cfg: &LogConfig, rng: &mut StdRng) -> Fixture {
        let mut batches: Vec<Vec<Vec<u8>>> = Vec::new();
        for i in 0..150 {
            let records = rng.random_range(1..=5);
            let values = (0..records)
                .map(|r| {
                    let len = match (i + r) % 17 {
                        0 => 0,
                        1 => rng.random_range(4096..9000),
                        2 => 4096, // all zeros below
                        _ => rng.random_range(1..700),
                    };
                    if (i + r) % 17 == 2 {
                        vec![0u8; len]
                    } else {
                        random_bytes(rng, len)
                    }
                })
                .collect();
            batches.push(values);
        }
        for _ in 0..40 {
            let records = rng.random_range(1..=3);
            let values = (0..records)
                .map(|_| {
                    let len = rng.random_range(1..40);
                    random_bytes(rng, len)
                })
                .collect();
            batches.push(values);
        }
        Fixture::write(dir, cfg, batches).await
    }

    /// Many small batches (so an index with an entry per batch spans several blocks).
    async fn build_small_batches(dir: &Path, cfg: &LogConfig, rng: &mut StdRng) -> Fixture {
        let batches = (0..1600)
            .map(|_| {
                let records = rng.random_range(1..=3);
                (0..records)
                    .map(|_| {
                        let len = rng.random_range(0..120);
                        random_bytes(rng, len)
                    })
                    .collect()
            })
            .collect();
        Fixture::write(dir, cfg, batches).await
    }

    async fn write(dir: &Path, cfg: &LogConfig, batches: Vec<Vec<Vec<u8>>>) -> Fixture {
        let log = Log::open(dir, cfg.clone()).await.unwrap();
        let mut next = cfg.initial_offset.get();
        let mut written = Vec::new();
        for values in batches {
            let base = log.append_batch(&values).await.unwrap();
            assert_eq!(base, Offset(next), "offsets are dense");
            written.push((base.get(), values));
            next = written.last().map(|(b, v)| b + v.len() as u64).unwrap();
        }
        log.close().await.unwrap();
        Fixture::place(dir, written)
    }

    /// Finds every written batch in the store files (and checks they hold exactly them).
    fn place(dir: &Path, written: Vec<(u64, Vec<Vec<u8>>)>) -> Fixture {
        let segments = list_segments(dir);
        let mut written = written.into_iter();
        let mut batches = Vec::new();
        let mut stores = HashMap::new();
        for &seg in &segments {
            let bytes = std::fs::read(store_path(dir, seg)).unwrap();
            let mut pos = 0usize;
            while pos + HEADER_BYTES <= bytes.len()
                && bytes[pos..pos + HEADER_BYTES].iter().any(|&b| b != 0)
            {
                let batch = Batch::parse(Bytes::copy_from_slice(&bytes[pos..]))
                    .unwrap_or_else(|e| panic!("segment {seg} byte {pos}: {e}"));
                let (base, values) = written.next().expect("more batches on disk than written");
                assert_eq!(batch.base_offset(), Offset(base));
                let on_disk: Vec<Bytes> = batch.records().map(|(_, v)| v).collect();
                assert_eq!(on_disk, values, "batch {base} on disk");
                let placed = Placed {
                    segment: seg,
                    position: pos as u64,
                    base,
                    values,
                };
                pos += placed.len() as usize;
                batches.push(placed);
            }
            stores.insert(seg, bytes);
        }
        assert!(written.next().is_none(), "a written batch is not on disk");
        Fixture {
            dir: dir.to_path_buf(),
            segments,
            batches,
            stores,
        }
    }

    fn active_store(&self) -> u64 {
        *self.segments.last().unwrap()
    }

    fn in_segment(&self, seg: u64) -> impl Iterator<Item = &Placed> {
        self.batches.iter().filter(move |b| b.segment == seg)
    }

    fn data_end(&self, seg: u64) -> u64 {
        self.in_segment(seg)
            .last()
            .map_or(0, |b| b.position + b.len())
    }

    fn next_offset(&self) -> u64 {
        self.batches.last().map_or(0, |b| b.next())
    }

    /// The store position of the last entry in a segment's index file.
    fn last_index_position(&self, seg: u64) -> u64 {
        let bytes = std::fs::read(index_path(&self.dir, seg)).unwrap();
        let (index, damaged) = Index::decode(Offset(seg), &bytes);
        assert!(!damaged, "the pristine index of {seg} is damaged");
        index.last().expect("index has entries").position
    }

    /// Copies the log into `to`, letting `damage` change each store's bytes (by segment base);
    /// returns the active store's bytes as copied.
    fn copy_with(&self, to: &Path, mut damage: impl FnMut(u64, &mut Vec<u8>)) -> Vec<u8> {
        std::fs::create_dir_all(to).unwrap();
        let mut active = Vec::new();
        for entry in std::fs::read_dir(&self.dir).unwrap() {
            let path = entry.unwrap().path();
            let mut bytes = std::fs::read(&path).unwrap();
            if let Some(seg) = segment_of(&path, "store") {
                damage(seg, &mut bytes);
                if seg == self.active_store() {
                    active = bytes.clone();
                }
            }
            std::fs::write(to.join(path.file_name().unwrap()), bytes).unwrap();
        }
        active
    }

    /// Opens a copy whose active store now holds `damaged`, and checks that the log is exactly
    /// the longest prefix of intact batches, that the next append continues it densely, and
    /// that both survive another reopen.
    async fn expect_recovery(&self, dir: &Path, cfg: &LogConfig, damaged: &[u8], what: &str) {
        let active = self.active_store();
        let intact = |b: &Placed| {
            b.segment != active || {
                let (from, to) = (b.position as usize, (b.position + b.len()) as usize);
                let pristine = self.pristine_bytes(b);
                damaged.get(from..to) == Some(pristine)
            }
        };
        let kept = self.batches.iter().take_while(|b| intact(b)).count();
        let expected = &self.batches[..kept];
        let log = Log::open(dir, cfg.clone())
            .await
            .unwrap_or_else(|e| panic!("{what}: open failed: {e:?}"));
        expect_records(&log, expected, &[], what).await;
        let next = expected
            .last()
            .map_or(cfg.initial_offset.get(), |b| b.next());
        let values = [what.as_bytes(), b"second record"];
        let off = log.append_batch(&values).await.unwrap();
        assert_eq!(off, Offset(next), "{what}: the next append's offset");
        let back = log.read_from(off, 1 << 20).await.unwrap();
        assert_eq!(back.len(), 2, "{what}");
        assert_eq!(back[0].value, values[0], "{what}");
        assert_eq!(back[1].value, values[1], "{what}");
        log.close().await.unwrap();

        // The cut is final: nothing of the damaged tail comes back behind the new batch.
        let log = Log::open(dir, cfg.clone()).await.unwrap();
        expect_records(&log, expected, &values, what).await;
        log.close().await.unwrap();
    }

    /// A batch's bytes in the pristine store.
    fn pristine_bytes(&self, b: &Placed) -> &[u8] {
        let store = &self.stores[&b.segment];
        &store[b.position as usize..(b.position + b.len()) as usize]
    }

    /// Reads every offset of the log one by one: the damaged batch's offsets must be
    /// `Corrupt` (naming its segment); every other offset returns its exact value or, in the
    /// damaged segment only, `Corrupt`.
    async fn expect_reads_never_return_damage(
        &self,
        log: &Log,
        dir: &Path,
        victim: &Placed,
        what: &str,
    ) {
        for b in &self.batches {
            for (i, value) in b.values.iter().enumerate() {
                let offset = Offset(b.base + i as u64);
                match log.read(offset).await {
                    Ok(rec) => {
                        assert!(b.base != victim.base, "{what}: damaged {offset} was read");
                        assert_eq!(rec.offset, offset, "{what}");
                        assert_eq!(&rec.value[..], &value[..], "{what}: offset {offset}");
                    }
                    Err(Error::Corrupt { segment, .. }) if b.segment == victim.segment => {
                        assert_eq!(segment, store_path(dir, victim.segment), "{what}");
                    }
                    Err(e) => panic!("{what}: read of {offset} failed: {e:?}"),
                }
            }
        }
    }

    /// A segment's index file decodes without damage and each entry points at the start of a
    /// batch with that offset.
    fn expect_index_file_is_sound(&self, dir: &Path, seg: u64, what: &str) {
        let bytes = std::fs::read(index_path(dir, seg)).unwrap();
        let (index, damaged) = Index::decode(Offset(seg), &bytes);
        assert!(!damaged, "{what}: index of {seg} still damaged");
        assert!(!index.is_empty(), "{what}: index of {seg} is empty");
        for e in index.entries() {
            let hit = self
                .in_segment(seg)
                .any(|b| b.position == e.position && b.base == e.offset.get());
            let appended = seg == self.active_store() && e.position == self.data_end(seg);
            assert!(
                hit || appended,
                "{what}: index of {seg} has a wrong entry {e:?}"
            );
        }
    }
}

/// Reads the whole log and checks it holds exactly `expected` followed by records with the
/// values `then`, byte for byte, at dense offsets.
async fn expect_records(log: &Log, expected: &[Placed], then: &[&[u8]], what: &str) {
    let first = expected
        .first()
        .map_or(log.lowest_offset().get(), |b| b.base);
    let want: Vec<&[u8]> = expected
        .iter()
        .flat_map(|b| b.values.iter().map(|v| &v[..]))
        .chain(then.iter().copied())
        .collect();
    let got = read_all(log)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e:?}"));
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: {} records recovered, expected {}",
        got.len(),
        want.len()
    );
    for (i, ((offset, value), want_value)) in got.iter().zip(&want).enumerate() {
        assert_eq!(offset.get(), first + i as u64, "{what}");
        assert_eq!(&value[..], *want_value, "{what}: offset {offset}");
    }
    let highest = (!want.is_empty()).then(|| Offset(first + want.len() as u64 - 1));
    assert_eq!(log.highest_offset(), highest, "{what}");
}

async fn read_all(log: &Log) -> corelog::Result<Vec<(Offset, Bytes)>> {
    let mut out = Vec::new();
    let mut next = log.lowest_offset();
    loop {
        let records = log.read_from(next, READ_BYTES_MAX).await?;
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

/// Every batch in one segment (1 MiB), so cuts and flips hit the active segment.
fn one_segment_config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 1 << 20,
        ..LogConfig::default()
    }
}

/// Alternates between serving recovered data from the tail cache and from disk.
fn cfg_variant(cfg: &LogConfig, case: usize) -> LogConfig {
    LogConfig {
        tail_cache_bytes_max: if case.is_multiple_of(2) {
            0
        } else {
            cfg.tail_cache_bytes_max
        },
        ..cfg.clone()
    }
}

fn seeded_rng(test: &str) -> (u64, StdRng) {
    let seed = std::env::var("CORELOG_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("{test}: seed {seed} (rerun with CORELOG_TEST_SEED={seed})");
    (seed, StdRng::seed_from_u64(seed))
}

fn random_bytes(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    v
}

fn align_up(v: u64) -> u64 {
    v.div_ceil(BLOCK_BYTES) * BLOCK_BYTES
}

fn store_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.store"))
}

fn index_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.index"))
}

fn segment_of(path: &Path, suffix: &str) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(suffix)?.strip_suffix('.')?;
    (stem.len() == 20).then(|| stem.parse().ok()).flatten()
}

fn list_segments(dir: &Path) -> Vec<u64> {
    let mut segs: Vec<u64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| segment_of(&e.unwrap().path(), "store"))
        .collect();
    segs.sort();
    segs
}

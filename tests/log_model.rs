//! Model-based test of the log: random sequences of append / read / truncate / truncate_after
//! / reopen, each checked against a plain `Vec` model of what the log must hold.

mod common;

use bytes::Bytes;
use common::{run, test_dir};
use corelog::storage::{Log, LogConfig};
use corelog::{Error, Offset};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// What the log must hold: records from `lowest` on, and where batches end.
struct Model {
    lowest: u64,
    records: Vec<Bytes>, // records[i] has offset lowest + i
    batch_ends: Vec<u64>,
}

impl Model {
    fn next(&self) -> u64 {
        self.lowest + self.records.len() as u64
    }

    fn get(&self, offset: u64) -> Option<&Bytes> {
        offset
            .checked_sub(self.lowest)
            .and_then(|i| self.records.get(i as usize))
    }
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 64 << 10,
        index_interval_bytes: 1024,
        tail_cache_bytes_max: 32 << 10,
        ..LogConfig::default()
    }
}

fn random_value(rng: &mut StdRng) -> Bytes {
    let len = match rng.random_range(0..10) {
        0 => 0,
        1..=6 => rng.random_range(1..200),
        7 | 8 => rng.random_range(200..3000),
        _ => rng.random_range(3000..20_000),
    };
    Bytes::from((0..len).map(|_| rng.random::<u8>()).collect::<Vec<u8>>())
}

async fn check_everything(log: &Log, model: &Model) {
    assert_eq!(log.lowest_offset(), Offset(model.lowest), "lowest offset");
    let highest = (model.next() > model.lowest).then(|| Offset(model.next() - 1));
    assert_eq!(log.highest_offset(), highest, "highest offset");
    let mut offset = model.lowest;
    while offset < model.next() {
        let records = log.read_from(Offset(offset), 16 << 10).await.unwrap();
        assert!(!records.is_empty(), "read_from({offset}) returned nothing");
        for r in records {
            assert_eq!(r.offset, Offset(offset), "records are dense");
            assert_eq!(
                Some(&r.value),
                model.get(offset),
                "value at offset {offset}"
            );
            offset += 1;
        }
    }
    assert!(
        log.read_from(Offset(model.next()), 1 << 20)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn run_model(seed: u64, ops: usize) {
    println!("model seed {seed}");
    let dir = test_dir(&format!("model-{seed}"));
    let mut rng = StdRng::seed_from_u64(seed);
    let mut log = Log::open(&dir, config()).await.unwrap();
    let mut model = Model {
        lowest: 0,
        records: Vec::new(),
        batch_ends: Vec::new(),
    };
    for step in 0..ops {
        match rng.random_range(0..100) {
            // Append a batch.
            0..=39 => {
                let n = rng.random_range(1..6);
                let values: Vec<Bytes> = (0..n).map(|_| random_value(&mut rng)).collect();
                let off = log.append_batch(&values).await.unwrap();
                assert_eq!(off, Offset(model.next()), "step {step}: append offset");
                model.records.extend(values);
                model.batch_ends.push(model.next());
            }
            // Concurrent appends: offsets are dense and each append gets its own range.
            40..=49 => {
                let n = rng.random_range(2..12);
                let values: Vec<Bytes> = (0..n).map(|_| random_value(&mut rng)).collect();
                let tasks: Vec<_> = values
                    .iter()
                    .cloned()
                    .map(|v| {
                        let log = log.clone();
                        glommio::spawn_local(async move { log.append(&v).await.unwrap() })
                    })
                    .collect();
                let mut got = Vec::new();
                for (t, v) in tasks.into_iter().zip(values) {
                    got.push((t.await, v));
                }
                got.sort_by_key(|(o, _)| *o);
                for (o, v) in got {
                    assert_eq!(o, Offset(model.next()), "step {step}: concurrent offsets");
                    model.records.push(v);
                    model.batch_ends.push(model.next());
                }
            }
            // Read one record, in range or not.
            50..=64 => {
                let span = model.next() - model.lowest + 4;
                let offset = (model.lowest + rng.random_range(0..span)).saturating_sub(2);
                match (log.read(Offset(offset)).await, model.get(offset)) {
                    (Ok(r), Some(v)) => assert_eq!(&r.value, v, "step {step}: read {offset}"),
                    (Err(Error::OffsetOutOfRange { .. }), None) => {}
                    (got, want) => panic!("step {step}: read {offset}: {got:?}, want {want:?}"),
                }
            }
            // Drop whole segments below a random offset.
            65..=69 => {
                let target = model.lowest + rng.random_range(0..=model.records.len() as u64);
                log.truncate(Offset(target)).await.unwrap();
                let lowest = log.lowest_offset().get();
                assert!(
                    lowest >= model.lowest && lowest <= target.max(model.lowest),
                    "step {step}: truncate({target}) left lowest {lowest}"
                );
                model.records.drain(..(lowest - model.lowest) as usize);
                model.lowest = lowest;
                model.batch_ends.retain(|e| *e > lowest);
            }
            // Cut the tail at a batch boundary (Raft conflict resolution), or inside a batch.
            70..=79 => {
                let boundaries: Vec<u64> = model.batch_ends.clone();
                if boundaries.is_empty() {
                    continue;
                }
                let end = boundaries[rng.random_range(0..boundaries.len())];
                if rng.random_bool(0.2) {
                    // Inside a multi-record batch: refused, nothing changes.
                    let inside = model
                        .batch_ends
                        .windows(2)
                        .find(|w| w[1] - w[0] > 1)
                        .map(|w| w[0] + 1);
                    if let Some(mid) = inside {
                        let err = log.truncate_after(Offset(mid - 1)).await.unwrap_err();
                        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
                        continue;
                    }
                }
                log.truncate_after(Offset(end - 1)).await.unwrap();
                model.records.truncate((end - model.lowest) as usize);
                model.batch_ends.retain(|e| *e <= end);
                assert_eq!(log.highest_offset(), Some(Offset(end - 1)));
            }
            // Reopen.
            80..=89 => {
                log.close().await.unwrap();
                log = Log::open(&dir, config()).await.unwrap();
                check_everything(&log, &model).await;
            }
            // Sweep everything.
            _ => check_everything(&log, &model).await,
        }
    }
    check_everything(&log, &model).await;
    log.close().await.unwrap();
    let log = Log::open(&dir, config()).await.unwrap();
    check_everything(&log, &model).await;
    log.remove().await.unwrap();
}

#[test]
fn random_operations_match_the_vec_model_seed_1() {
    run(|| run_model(1, 400));
}

#[test]
fn random_operations_match_the_vec_model_seed_2() {
    run(|| run_model(2, 400));
}

#[test]
fn random_operations_match_the_vec_model_random_seed() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(3);
    run(|| run_model(seed, 400));
}

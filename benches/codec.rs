//! Microbenchmarks of the hot pure code, timed by a small loop of our own (no criterion): the
//! batch format (`storage::format`), the frame codec (`net::frame`) and the segment index lookup
//! (`storage::index`). Each codec figure stands beside a baseline measured in the same run: a
//! bare CRC32C over the same number of bytes for the batch codec ("validate costs N× a bare
//! CRC"), a plain copy of the same bytes for frame encoding.
//!
//! Method, per row: run the operation in doubling rounds for `WARMUP_MS` (which also estimates
//! its cost and so sizes a sample), then take `SAMPLES` timed samples of about `SAMPLE_MS` each.
//! A row reports the median time per operation and the spread: the 10th and 90th percentile
//! samples relative to the median. The samples of operations compared with each other (an
//! operation and its baseline) are interleaved, so that load from neighbours hits them alike.
//! Inputs and results go through `std::hint::black_box`, so the optimizer can neither
//! precompute the work nor delete it. Operations that consume their input (the frame decoder
//! takes frames off the read buffer) get a fresh copy of it outside the timed part. The process
//! is not pinned and the machine may be shared: read the spread before comparing two rows.
//!
//! `CORELOG_BENCH_QUICK=1` shortens every row to a few tens of milliseconds.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use corelog::net::frame::{FrameDecoder, Request, decode_request};
use corelog::proto::ProduceRequest;
use corelog::storage::format::{self, Batch, BatchMeta};
use corelog::storage::index::{Index, IndexEntry};
use corelog::types::Offset;
use rand::{RngExt, SeedableRng};

const WARMUP_MS: u64 = 100;
const WARMUP_MS_QUICK: u64 = 15;
/// Many short samples rather than a few long ones: on a shared machine a sample that the
/// scheduler interrupts is an outlier the median ignores, where a long sample would absorb it.
const SAMPLE_MS: u64 = 5;
const SAMPLE_MS_QUICK: u64 = 2;
const SAMPLES: usize = 41;
const SAMPLES_QUICK: usize = 9;

/// Record sizes and records per batch of the batch-codec rows (the shapes `benches/append.rs`
/// and loadgen use).
const RECORD_BYTES: [usize; 2] = [100, 1024];
const BATCH_RECORDS: [usize; 3] = [1, 16, 256];
/// Buffer sizes of the standalone CRC32C rows.
const CRC_BUFFER_BYTES: [usize; 3] = [1 << 10, 64 << 10, 1 << 20];

/// The large Produce frame: 16 records of 1 KiB.
const FRAME_RECORDS: usize = 16;
const FRAME_RECORD_BYTES: usize = 1024;
/// Large frames per decode buffer: about 0.5 MiB, what a few socket reads leave in the
/// connection's buffer, and small enough to stay in this machine's L2 cache.
const LARGE_FRAMES_PER_BUFFER: usize = 32;
/// The small frames: one 100-byte record each, many per buffer (pipelined small produces).
const SMALL_RECORD_BYTES: usize = 100;
const SMALL_FRAMES_PER_BUFFER: usize = 1024;

/// Entries of the index rows. A segment of 1 GiB with the default 4 KiB index interval holds
/// up to about 256k entries; 1M bounds it from above.
const INDEX_ENTRIES: [usize; 3] = [1_000, 100_000, 1_000_000];
/// Random lookup keys, drawn once per index and cycled through.
const INDEX_KEYS: usize = 1 << 16;
/// Records per batch between two index entries are drawn from 1..=this.
const INDEX_OFFSET_GAP_MAX: u64 = 64;

const SEED: u64 = 0xC0DE_C0DE;

fn main() {
    let quick = std::env::var("CORELOG_BENCH_QUICK").is_ok_and(|v| v == "1");
    let plan = Plan::new(quick);
    let started = Instant::now();
    println!(
        "corelog codec microbenchmarks ({}): per row {} ms warm-up, median of {} samples of ~{} ms; \
         spread = p10/p90 sample vs the median; GB = 10^9 bytes",
        if quick { "quick" } else { "full" },
        plan.warmup.as_millis(),
        plan.samples,
        plan.sample.as_millis(),
    );
    println!("cpu: {}", cpu_model());
    let mut rng = rand::rngs::StdRng::seed_from_u64(SEED);

    print_header("Baselines: CRC32C (crc32c::crc32c), a zero-copy record handle");
    crc_rows(&plan, &mut rng);
    print_header("Batch codec (storage::format); baseline = bare CRC32C over the batch's bytes");
    batch_rows(&plan, &mut rng);
    print_header(
        "Frame codec (net::frame); baselines: encode = copying the same bytes, \
         decode_request = framing alone",
    );
    frame_rows(&plan, &mut rng);
    print_header("Segment index lookup (storage::index::Index::lookup), random offsets");
    index_rows(&plan, &mut rng);

    println!("\ntotal {:.1} s", started.elapsed().as_secs_f64());
}

/// How long each row runs.
struct Plan {
    warmup: Duration,
    sample: Duration,
    samples: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        let pick = |full, fast| if quick { fast } else { full };
        Plan {
            warmup: Duration::from_millis(pick(WARMUP_MS, WARMUP_MS_QUICK)),
            sample: Duration::from_millis(pick(SAMPLE_MS, SAMPLE_MS_QUICK)),
            samples: if quick { SAMPLES_QUICK } else { SAMPLES },
        }
    }
}

/// Nanoseconds per operation over a row's samples.
#[derive(Copy, Clone, Debug)]
struct Timing {
    median_ns: f64,
    p10_ns: f64,
    p90_ns: f64,
}

/// One line of the table.
struct Row<'a> {
    name: &'a str,
    /// Bytes one operation processes, for GB/s (`None`: not a byte-stream operation).
    bytes: Option<usize>,
    timing: Timing,
    /// What the operation is compared with, over the same bytes.
    baseline: Option<Timing>,
}

// ---------------------------------------------------------------------------------------------
// The rows.

fn crc_rows(plan: &Plan, rng: &mut impl RngExt) {
    for len in CRC_BUFFER_BYTES {
        let buf = random_bytes(rng, len);
        let timing = measure(plan, time_each(|| crc32c::crc32c(black_box(&buf))));
        print_row(&Row {
            name: &format!("crc32c {}", size_name(len)),
            bytes: Some(len),
            timing,
            baseline: None,
        });
    }
    // The floor of every zero-copy record handle (`Records::next`, prost's `bytes` fields): one
    // atomic increment to make it, one decrement to drop it.
    let shared = Bytes::from(random_bytes(rng, 2 * SMALL_RECORD_BYTES));
    let _promoted = shared.clone();
    let timing = measure(
        plan,
        time_each(|| black_box(&shared).slice(SMALL_RECORD_BYTES..).len()),
    );
    print_row(&Row {
        name: "Bytes::slice + drop (one record handle)",
        bytes: None,
        timing,
        baseline: None,
    });
}

fn batch_rows(plan: &Plan, rng: &mut impl RngExt) {
    let meta = BatchMeta {
        timestamp_ms: 1_700_000_000_000,
        term: 3,
        raft_index: 42,
    };
    for record_bytes in RECORD_BYTES {
        for records in BATCH_RECORDS {
            let values: Vec<Bytes> = (0..records)
                .map(|_| Bytes::from(random_bytes(rng, record_bytes)))
                .collect();
            let encoded = format::encode_batch(Offset(1000), &values, meta);
            let len = encoded.len();
            let header = format::validate_batch(&encoded).expect("the batch just encoded");
            assert_eq!(header.record_count as usize, records);
            let shape = format!("{records} × {}", size_name(record_bytes));

            // The baseline first: what the CRC alone costs over this many bytes.
            let timings = measure_group(
                plan,
                vec![
                    Box::new(time_each(|| crc32c::crc32c(black_box(&encoded[..])))),
                    Box::new(time_each(|| {
                        format::encode_batch(black_box(Offset(1000)), black_box(&values[..]), meta)
                    })),
                    Box::new(time_each(|| {
                        format::validate_batch(black_box(&encoded[..]))
                    })),
                    Box::new(time_each(|| {
                        let batch =
                            Batch::parse(black_box(encoded.clone())).expect("a valid batch");
                        let mut value_bytes = 0;
                        for (offset, value) in batch.records() {
                            black_box(offset);
                            value_bytes += black_box(value).len();
                        }
                        value_bytes
                    })),
                ],
            );
            let [crc, encode, validate, parse_iterate] = timings[..] else {
                unreachable!("four operations were timed");
            };
            let rows = [
                (format!("crc32c {shape} ({len} B)"), crc, None),
                (format!("encode_batch {shape}"), encode, Some(crc)),
                (format!("validate_batch {shape}"), validate, Some(crc)),
                (
                    format!("Batch::parse + records() {shape}"),
                    parse_iterate,
                    Some(crc),
                ),
            ];
            for (name, timing, baseline) in rows {
                print_row(&Row {
                    name: &name,
                    bytes: Some(len),
                    timing,
                    baseline,
                });
            }
        }
    }
}

fn frame_rows(plan: &Plan, rng: &mut impl RngExt) {
    let large = produce(rng, FRAME_RECORDS, FRAME_RECORD_BYTES);
    let large_bytes = large.frame_bytes();
    let large_shape = format!("{FRAME_RECORDS} × {}", size_name(FRAME_RECORD_BYTES));
    let small = produce(rng, 1, SMALL_RECORD_BYTES);
    let small_bytes = small.frame_bytes();
    let small_shape = format!("1 × {}", size_name(SMALL_RECORD_BYTES));

    // Encoding appends to the connection's write buffer, cleared and reused between frames.
    let flat = random_bytes(rng, large_bytes);
    let mut copy_dst = BytesMut::with_capacity(large_bytes);
    let mut encode_dst = BytesMut::with_capacity(large_bytes);
    let [copy, encode_large] = measure_group(
        plan,
        vec![
            Box::new(time_each(|| {
                copy_dst.clear();
                copy_dst.extend_from_slice(black_box(&flat));
                black_box(copy_dst.len())
            })),
            Box::new(time_each(|| {
                encode_dst.clear();
                black_box(&large).encode(black_box(7), &mut encode_dst);
                black_box(encode_dst.len())
            })),
        ],
    )[..] else {
        unreachable!("two operations were timed");
    };
    let encode_small = measure(
        plan,
        time_each(|| {
            encode_dst.clear();
            black_box(&small).encode(black_box(7), &mut encode_dst);
            black_box(encode_dst.len())
        }),
    );

    let large_wire = wire(&large, LARGE_FRAMES_PER_BUFFER);
    let small_wire = wire(&small, SMALL_FRAMES_PER_BUFFER);
    let [split_large, decode_large] = measure_group(
        plan,
        vec![
            Box::new(decode_frames(&large_wire, false)),
            Box::new(decode_frames(&large_wire, true)),
        ],
    )[..] else {
        unreachable!("two operations were timed");
    };
    let [split_small, decode_small] = measure_group(
        plan,
        vec![
            Box::new(decode_frames(&small_wire, false)),
            Box::new(decode_frames(&small_wire, true)),
        ],
    )[..] else {
        unreachable!("two operations were timed");
    };

    let copy_name = format!("copy of the same bytes ({large_bytes} B)");
    let rows = [
        (copy_name, large_bytes, copy, None),
        (
            format!("Request::encode Produce {large_shape}"),
            large_bytes,
            encode_large,
            Some(copy),
        ),
        (
            format!("FrameDecoder::decode {large_shape}"),
            large_bytes,
            split_large,
            None,
        ),
        (
            format!("  + decode_request {large_shape}"),
            large_bytes,
            decode_large,
            Some(split_large),
        ),
        (
            format!("Request::encode Produce {small_shape}"),
            small_bytes,
            encode_small,
            None,
        ),
        (
            format!("FrameDecoder::decode {small_shape}, {SMALL_FRAMES_PER_BUFFER}/buf"),
            small_bytes,
            split_small,
            None,
        ),
        (
            format!("  + decode_request {small_shape}, {SMALL_FRAMES_PER_BUFFER}/buf"),
            small_bytes,
            decode_small,
            Some(split_small),
        ),
    ];
    for (name, bytes, timing, baseline) in rows {
        print_row(&Row {
            name: &name,
            bytes: Some(bytes),
            timing,
            baseline,
        });
    }
}

fn index_rows(plan: &Plan, rng: &mut impl RngExt) {
    for entries in INDEX_ENTRIES {
        let index = build_index(rng, entries);
        let end = index.last().expect("a non-empty index").offset.get() + INDEX_OFFSET_GAP_MAX;
        let keys: Vec<Offset> = (0..INDEX_KEYS)
            .map(|_| Offset(rng.random_range(0..end)))
            .collect();
        let name = grouped(entries);

        // Independent lookups overlap in the CPU: this is throughput. In the dependent chain,
        // each key depends on the previous result (through a mask that is zero at run time but
        // unknown to the compiler), so lookups run one after another: this is latency, what a
        // single read pays.
        let mut i = 0;
        let zero = black_box(0u64);
        let mut previous = 0u64;
        let mut j = 0;
        let [independent, dependent] = measure_group(
            plan,
            vec![
                Box::new(time_each(|| {
                    i = (i + 1) % INDEX_KEYS;
                    index.lookup(black_box(keys[i])).map(|e| e.position)
                })),
                Box::new(time_each(|| {
                    j = (j + 1) % INDEX_KEYS;
                    let key = Offset(keys[j].get() ^ (previous & zero));
                    previous = index.lookup(key).map_or(0, |e| e.position);
                    previous
                })),
            ],
        )[..] else {
            unreachable!("two operations were timed");
        };
        print_row(&Row {
            name: &format!("lookup, {name} entries, independent"),
            bytes: None,
            timing: independent,
            baseline: None,
        });
        print_row(&Row {
            name: &format!("lookup, {name} entries, dependent chain"),
            bytes: None,
            timing: dependent,
            baseline: None,
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Inputs.

fn random_bytes(rng: &mut impl RngExt, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    rng.fill(&mut bytes[..]);
    bytes
}

fn produce(rng: &mut impl RngExt, records: usize, record_bytes: usize) -> Request {
    Request::Produce(ProduceRequest {
        partition: 3,
        records: (0..records)
            .map(|_| Bytes::from(random_bytes(rng, record_bytes)))
            .collect(),
    })
}

/// `frames` copies of `request`, encoded back to back as they arrive from a socket.
fn wire(request: &Request, frames: usize) -> BytesMut {
    let mut buf = BytesMut::with_capacity(request.frame_bytes() * frames);
    for correlation_id in 1..=frames as u32 {
        request.encode(correlation_id, &mut buf);
    }
    let mut check = buf.clone();
    let mut decoder = FrameDecoder::default();
    let mut decoded = 0;
    while let Some(frame) = decoder.decode(&mut check).expect("valid frames") {
        assert_eq!(decode_request(&frame).expect("a valid request"), *request);
        decoded += 1;
    }
    assert_eq!(decoded, frames);
    buf
}

/// An index of `entries` batches: offsets advance by 1..=`INDEX_OFFSET_GAP_MAX` records, store
/// positions by one 4 KiB index interval each.
fn build_index(rng: &mut impl RngExt, entries: usize) -> Index {
    let mut index = Index::new(Offset(0));
    let mut offset = 0;
    for i in 0..entries as u64 {
        index.push(IndexEntry {
            offset: Offset(offset),
            position: i * 4096,
            raft_index: i + 1,
        });
        offset += rng.random_range(1..=INDEX_OFFSET_GAP_MAX);
    }
    index
}

// ---------------------------------------------------------------------------------------------
// The timing loop.

/// One timing round: `run(n)` performs about `n` operations and returns the time they took
/// (setup excluded) and how many it really performed.
type Round<'a> = Box<dyn FnMut(u64) -> (Duration, u64) + 'a>;

/// Times one operation.
fn measure(plan: &Plan, run: impl FnMut(u64) -> (Duration, u64)) -> Timing {
    measure_group(plan, vec![Box::new(run)])[0]
}

/// Times operations that are compared with each other (an operation and its baseline). Their
/// samples are interleaved, so a burst of load from a neighbour slows all of them alike
/// instead of skewing the ratio.
fn measure_group(plan: &Plan, mut runs: Vec<Round>) -> Vec<Timing> {
    let sizes: Vec<u64> = runs.iter_mut().map(|run| round_size(plan, run)).collect();
    let mut samples = vec![Vec::with_capacity(plan.samples); runs.len()];
    for _ in 0..plan.samples {
        for ((run, &n), samples) in runs.iter_mut().zip(&sizes).zip(&mut samples) {
            samples.push(per_op_ns(run(n)));
        }
    }
    samples
        .into_iter()
        .map(|mut samples| {
            samples.sort_by(f64::total_cmp);
            let quantile = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
            Timing {
                median_ns: quantile(0.5),
                p10_ns: quantile(0.1),
                p90_ns: quantile(0.9),
            }
        })
        .collect()
}

/// Warms `run` up in doubling rounds until the warm-up time is spent, and returns the number
/// of operations that fill one sample. The last round is the longest, so it gives the best
/// estimate of the cost of one operation.
fn round_size(plan: &Plan, run: &mut Round) -> u64 {
    let warmup_start = Instant::now();
    let mut n = 1;
    let mut estimate_ns;
    loop {
        let round = run(n);
        estimate_ns = per_op_ns(round);
        if warmup_start.elapsed() >= plan.warmup {
            break;
        }
        if round.0 < plan.sample {
            n *= 2;
        }
    }
    (plan.sample.as_nanos() as f64 / estimate_ns.max(0.1)).max(1.0) as u64
}

fn per_op_ns((spent, done): (Duration, u64)) -> f64 {
    assert!(done > 0, "a timing round performed no operation");
    spent.as_nanos() as f64 / done as f64
}

/// A `measure` round that calls `op` `n` times in a row.
fn time_each<R>(mut op: impl FnMut() -> R) -> impl FnMut(u64) -> (Duration, u64) {
    move |n| {
        let start = Instant::now();
        for _ in 0..n {
            black_box(op());
        }
        (start.elapsed(), n)
    }
}

/// A `measure` round that decodes whole copies of `wire` (made outside the timed part) until
/// about `n` frames were decoded; with `bodies`, each frame's body is decoded as a request too.
fn decode_frames(wire: &BytesMut, bodies: bool) -> impl FnMut(u64) -> (Duration, u64) {
    let mut decoder = FrameDecoder::default();
    move |n| {
        let mut spent = Duration::ZERO;
        let mut done = 0;
        while done < n {
            let mut buf = wire.clone();
            let start = Instant::now();
            while let Some(frame) = decoder.decode(black_box(&mut buf)).expect("valid frames") {
                if bodies {
                    black_box(decode_request(&frame).expect("a valid request"));
                } else {
                    black_box(frame);
                }
                done += 1;
            }
            spent += start.elapsed();
        }
        (spent, done)
    }
}

// ---------------------------------------------------------------------------------------------
// Output.

fn print_header(title: &str) {
    println!("\n{title}");
    println!(
        "{:<46} {:>9} {:>11} {:>15} {:>8} {:>9} {:>11} {:>7}",
        "operation", "bytes/op", "ns/op", "spread", "GB/s", "Mop/s", "baseline ns", "× base"
    );
}

fn print_row(row: &Row) {
    let t = row.timing;
    let spread = format!(
        "-{:.0}% / +{:.0}%",
        (1.0 - t.p10_ns / t.median_ns) * 100.0,
        (t.p90_ns / t.median_ns - 1.0) * 100.0
    );
    let gbps = row
        .bytes
        .map_or("-".into(), |b| format!("{:.2}", b as f64 / t.median_ns));
    let (baseline_ns, ratio) = row.baseline.map_or(("-".into(), "-".into()), |b| {
        (
            ns_text(b.median_ns),
            format!("{:.2}", t.median_ns / b.median_ns),
        )
    });
    println!(
        "{:<46} {:>9} {:>11} {:>15} {:>8} {:>9} {:>11} {:>7}",
        row.name,
        row.bytes.map_or("-".into(), grouped),
        ns_text(t.median_ns),
        spread,
        gbps,
        rate_text(1e3 / t.median_ns),
        baseline_ns,
        ratio,
    );
}

fn ns_text(ns: f64) -> String {
    if ns < 100.0 {
        format!("{ns:.1}")
    } else {
        grouped(ns.round() as usize)
    }
}

/// Millions of operations per second, with three significant digits down to 0.001.
fn rate_text(mops: f64) -> String {
    match mops {
        m if m >= 10.0 => format!("{m:.1}"),
        m if m >= 1.0 => format!("{m:.2}"),
        m => format!("{m:.3}"),
    }
}

/// `1234567` as `1,234,567`.
fn grouped(n: usize) -> String {
    let reversed: Vec<char> = n.to_string().chars().rev().collect();
    let groups: Vec<String> = reversed
        .chunks(3)
        .rev()
        .map(|group| group.iter().rev().collect())
        .collect();
    groups.join(",")
}

fn size_name(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 && b.trailing_zeros() >= 20 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b.trailing_zeros() >= 10 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

//! Storage benchmark: durable append throughput and latency of one partition's [`Log`] on one
//! core, beside raw O_DIRECT baselines of the same disk measured in the same run.
//!
//! What runs, in order, on one glommio executor pinned to CPU 0:
//! 1. Raw baselines with `DmaFile` directly: sequential writes of `flush_bytes_max` (the size of
//!    the log's group commits) into a pre-allocated file, without and with one `fdatasync` per
//!    write (and with it into blocks written before); then 4 KiB write + `fdatasync` latency
//!    into already-written blocks, into `fallocate`d (unwritten) blocks, and at a file-extending
//!    position.
//! 2. The log (`fsync = always`, default config) for every record size × records per
//!    `append_batch` × appending tasks in flight, each for a bounded time, in a fresh directory,
//!    each right after its own short raw baselines (the shared disk drifts a lot within a run).
//!    Per config: records/s, payload MB/s and its ratio to the adjacent baselines, append latency
//!    percentiles, write amplification, group commits (counted through `wait_for`), and the
//!    executor thread's CPU and run-queue time (is the log CPU-bound, or starved by neighbours?).
//! 3. One what-if row with a larger `flush_bytes_max`, then the sequential raw baselines again.
//!
//! Write amplification is disk bytes written per payload byte. The raw no-sync baseline decides
//! which counter is trustworthy: the first of `/proc/self/io`, the sum over
//! `/proc/self/task/*/io`, or the device's `/sys/dev/block/M:m/stat` that reads about 1.0 there.
//! The device counter also sees the ext4 journal and every other process on the disk, so it is
//! printed beside the chosen one.
//!
//! Data lives under `<target>/bench-data/` (a real filesystem: tmpfs has no O_DIRECT) and is
//! removed at the end. `CORELOG_BENCH_QUICK=1` shortens every phase to a few hundred ms.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use corelog::storage::{Log, LogConfig};
use glommio::io::{DmaFile, OpenOptions};
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;

/// Registered DMA memory of the executor: room for a few 1 MiB flush buffers. The hard
/// locked-memory limit of the target machines is 8 MiB, which bounds this.
const IO_MEMORY_BYTES: usize = 4 << 20;
/// Bytes written by each sequential raw baseline at the start and end of the run.
const RAW_TOTAL_BYTES: u64 = 256 << 20;
const RAW_TOTAL_BYTES_QUICK: u64 = 32 << 20;
/// Bytes written by the shorter raw baselines run right before each log configuration: the
/// shared disk drifts by a factor of several within a run, so each figure gets the baseline
/// measured next to it.
const RAW_ADJACENT_BYTES: u64 = 64 << 20;
const RAW_ADJACENT_BYTES_QUICK: u64 = 16 << 20;
/// The 4 KiB latency baselines stop at whichever limit comes first.
const LATENCY_SAMPLES_MAX: u64 = 2_000;
const LATENCY_SAMPLES_MAX_QUICK: u64 = 200;
const LATENCY_DURATION_MS: u64 = 1_500;
const LATENCY_DURATION_MS_QUICK: u64 = 300;
const SMALL_WRITE_BYTES: usize = 4096;
/// Size of the file that the "already written blocks" baseline overwrites in a cycle.
const PREWRITTEN_FILE_BYTES: u64 = 8 << 20;
/// How long each log configuration keeps appending.
const CONFIG_DURATION_MS: u64 = 2_000;
const CONFIG_DURATION_MS_QUICK: u64 = 300;
/// Payload issued per log configuration stops here, so that a fast disk neither rolls a
/// segment (1 GiB by default) mid-measurement nor fills the filesystem.
const CONFIG_PAYLOAD_BYTES_MAX: u64 = 768 << 20;
const RECORD_BYTES: [usize; 2] = [100, 1024];
const BATCH_RECORDS: [usize; 3] = [1, 16, 64];
const IN_FLIGHT_TASKS: [usize; 3] = [1, 16, 256];
/// The one configuration re-run with a larger group commit.
const WHAT_IF_SHAPE: Shape = Shape {
    record_bytes: 1024,
    batch: 64,
    tasks: 256,
    flush_bytes_max: 4 << 20,
};
/// Latencies are recorded in microseconds up to a minute.
const LATENCY_US_MAX: u64 = 60_000_000;
/// A write counter is trusted when the raw baseline (payload = bytes written) reads within this
/// range.
const RAW_RATIO_MIN: f64 = 0.98;
const RAW_RATIO_MAX: f64 = 1.05;
const SECTOR_BYTES: u64 = 512;
/// The targets for 1 KiB records.
const BANDWIDTH_RATIO_TARGET: f64 = 0.85;
const WA_TARGET: f64 = 1.10;
const MB: f64 = 1e6;

fn main() {
    let quick = std::env::var("CORELOG_BENCH_QUICK").is_ok_and(|v| v == "1");
    // Counted before the executor pins this thread to one CPU.
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    corelog::io::ensure_memlock(corelog::io::memlock_bytes_wanted(1, IO_MEMORY_BYTES))
        .expect("locked-memory limit");
    let executor = LocalExecutorBuilder::new(Placement::Fixed(0))
        .name("bench-append")
        .io_memory(IO_MEMORY_BYTES)
        .make()
        .expect("glommio executor");
    executor.run(run(Plan::new(quick, cores)));
}

/// The sizes of one run.
struct Plan {
    quick: bool,
    /// CPUs of the machine (the executor itself is pinned to one).
    cores: usize,
    raw_total_bytes: u64,
    raw_adjacent_bytes: u64,
    latency_samples_max: u64,
    latency_duration: Duration,
    config_duration: Duration,
}

impl Plan {
    fn new(quick: bool, cores: usize) -> Plan {
        let pick = |full, fast| if quick { fast } else { full };
        Plan {
            quick,
            cores,
            raw_total_bytes: pick(RAW_TOTAL_BYTES, RAW_TOTAL_BYTES_QUICK),
            raw_adjacent_bytes: pick(RAW_ADJACENT_BYTES, RAW_ADJACENT_BYTES_QUICK),
            latency_samples_max: pick(LATENCY_SAMPLES_MAX, LATENCY_SAMPLES_MAX_QUICK),
            latency_duration: Duration::from_millis(pick(
                LATENCY_DURATION_MS,
                LATENCY_DURATION_MS_QUICK,
            )),
            config_duration: Duration::from_millis(pick(
                CONFIG_DURATION_MS,
                CONFIG_DURATION_MS_QUICK,
            )),
        }
    }
}

async fn run(plan: Plan) {
    let root = bench_root();
    let _ = std::fs::remove_dir_all(&root);
    // Opens a non-empty probe file read-write first: otherwise glommio's polled-I/O probe
    // misfires and every later DMA read on this device fails with os error 95.
    corelog::io::Disk::new()
        .prepare_dir(&root)
        .await
        .expect("bench data directory must be on a filesystem with O_DIRECT");
    let counters = Counters::for_dir(&root);
    let flush_bytes = LogConfig::default().flush_bytes_max;
    print_machine(&root, &counters, &plan, flush_bytes);
    let bench = Bench {
        root: root.clone(),
        counters,
        plan,
        flush_bytes,
    };

    let source = bench.baselines().await;
    let results = bench.log_matrix(source).await;
    bench.what_if(source).await;
    println!("\n== raw baselines again (drift of the shared disk during the run)");
    print_raw_header();
    for spec in [
        bench.seq(bench.plan.raw_total_bytes, false, false),
        bench.seq(bench.plan.raw_total_bytes, true, false),
    ] {
        print_raw(&bench.raw(spec).await, source);
    }
    print_summary(&results, source);

    let _ = std::fs::remove_dir_all(&root);
    // Other runs may share `bench-data/`; remove it only when this run was the last user.
    if let Some(parent) = root.parent() {
        let _ = std::fs::remove_dir(parent);
    }
}

/// What every phase needs.
struct Bench {
    root: PathBuf,
    counters: Counters,
    plan: Plan,
    /// The log's group-commit size, and so the raw baselines' write size.
    flush_bytes: usize,
}

impl Bench {
    fn seq(&self, total_bytes: u64, sync_each: bool, prewritten: bool) -> Seq {
        Seq {
            write_bytes: self.flush_bytes,
            total_bytes,
            sync_each,
            prewritten,
        }
    }

    async fn raw(&self, seq: Seq) -> RawRun {
        raw_sequential(&self.root, &self.counters, seq).await
    }

    /// The raw baselines at the start of the run; returns the write counter to trust.
    async fn baselines(&self) -> Source {
        let total = self.plan.raw_total_bytes;
        println!("\n== raw baselines (glommio DmaFile, O_DIRECT, one write in flight)");
        let first = self.raw(self.seq(total, false, false)).await;
        let source = self.counters.choose_source(&first);
        print_raw_header();
        print_raw(&first, source);
        for spec in [self.seq(total, true, false), self.seq(total, true, true)] {
            print_raw(&self.raw(spec).await, source);
        }
        for kind in [
            SmallWrite::Overwrite,
            SmallWrite::Fallocated,
            SmallWrite::Extending,
        ] {
            let lat = small_write_latency(&self.root, &self.counters, kind, &self.plan).await;
            print_raw(&lat, source);
        }
        println!("write amplification source: {}", source.describe());
        source
    }

    /// Every log configuration, each right after its own short raw baselines.
    async fn log_matrix(&self, source: Source) -> Vec<LogRun> {
        println!(
            "\n== log: fsync=always, default LogConfig, {} ms per config, fresh directory each; \
             raw = {} MiB of 1 MiB writes (no sync / fdatasync each) measured right before it",
            self.plan.config_duration.as_millis(),
            self.plan.raw_adjacent_bytes >> 20
        );
        println!(
            "/raw, /sync: payload MB/s over those; WA: written bytes per payload byte; \
             KiB/cm, µs/cm: payload and time per group commit; cpu%, rq%: executor thread on a \
             CPU, and runnable but waiting for one"
        );
        print_log_header();
        let mut results = Vec::new();
        for record_bytes in RECORD_BYTES {
            for batch in BATCH_RECORDS {
                for tasks in IN_FLIGHT_TASKS {
                    let shape = Shape {
                        record_bytes,
                        batch,
                        tasks,
                        flush_bytes_max: self.flush_bytes,
                    };
                    results.push(self.log_config(shape, source).await);
                }
            }
        }
        results
    }

    /// One configuration after its adjacent raw baselines.
    async fn log_config(&self, shape: Shape, source: Source) -> LogRun {
        let adjacent = self.plan.raw_adjacent_bytes;
        let raw = self.raw(self.seq(adjacent, false, false)).await;
        let raw_sync = self.raw(self.seq(adjacent, true, false)).await;
        let mut r = run_log_config(&self.root, &self.counters, shape, &self.plan).await;
        r.raw_mb_s = raw.mb_s();
        r.raw_sync_mb_s = raw_sync.mb_s();
        print_log_row(&r, source);
        r
    }

    /// Not the default config, so not judged against the targets: whether a larger group commit
    /// (fewer `fdatasync`s per byte) closes the gap to the raw disk.
    async fn what_if(&self, source: Source) {
        println!(
            "\n== what-if (not the default): flush_bytes_max = {} MiB",
            WHAT_IF_SHAPE.flush_bytes_max >> 20
        );
        print_log_header();
        self.log_config(WHAT_IF_SHAPE, source).await;
    }
}

/// `<target>/bench-data/append-<pid>`: on the build's real filesystem, never tmpfs, and apart
/// from any concurrent run sharing the target directory.
fn bench_root() -> PathBuf {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR lies inside the target directory");
    target
        .join("bench-data")
        .join(format!("append-{}", std::process::id()))
}

fn print_machine(root: &Path, counters: &Counters, plan: &Plan, flush_bytes: usize) {
    let cores = plan.cores;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let fs = match corelog::io::filesystem_magic(root) {
        Ok(0xEF53) => "ext4".to_string(),
        Ok(0x5846_5342) => "xfs".to_string(),
        Ok(m) => format!("fs magic {m:#x}"),
        Err(e) => format!("unknown fs ({e})"),
    };
    println!(
        "corelog append benchmark{}",
        if plan.quick { " (QUICK)" } else { "" }
    );
    println!(
        "machine: {cores} cores, kernel {}, data {} on {fs}, device {}",
        kernel.trim(),
        root.display(),
        counters.device_name
    );
    println!(
        "one glommio executor on CPU 0, io_memory {} MiB; log flush_bytes_max {} KiB; MB = 10^6 bytes",
        IO_MEMORY_BYTES >> 20,
        flush_bytes >> 10
    );
}

// ---------------------------------------------------------------------------------------------
// Raw baselines

/// One raw baseline: what it wrote, how long it took, per-operation latency.
struct RawRun {
    name: String,
    payload_bytes: u64,
    elapsed: Duration,
    latency_us: Histogram<u64>,
    written: Written,
}

impl RawRun {
    fn mb_s(&self) -> f64 {
        self.payload_bytes as f64 / MB / self.elapsed.as_secs_f64()
    }
}

async fn open_dma(path: &Path) -> DmaFile {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .dma_open(path)
        .await
        .expect("open a bench file with O_DIRECT")
}

/// Writes one aligned buffer filled with `pattern` (non-zero, so no layer below can skip or
/// compress zero blocks) at `pos`.
async fn write_pattern(file: &DmaFile, pattern: &[u8], pos: u64) {
    let mut buf = file.alloc_dma_buffer(pattern.len());
    buf.as_bytes_mut().copy_from_slice(pattern);
    let written = file.write_at(buf, pos).await.expect("raw O_DIRECT write");
    assert_eq!(written, pattern.len(), "short raw write at {pos}");
}

/// One sequential raw baseline.
#[derive(Copy, Clone)]
struct Seq {
    write_bytes: usize,
    total_bytes: u64,
    /// One `fdatasync` after every write, like `fsync = always`.
    sync_each: bool,
    /// Overwrite blocks written before (what recycled segment files would give) instead of
    /// `fallocate`d ones (what the log's fresh segments are).
    prewritten: bool,
}

/// Sequential writes into a pre-allocated file, like the log's flushes into its pre-allocated
/// segment, one write in flight. Each write copies its bytes into a fresh DMA buffer, as the
/// log's flusher does (the log also zero-fills it first).
async fn raw_sequential(root: &Path, counters: &Counters, seq: Seq) -> RawRun {
    let path = root.join("raw-sequential");
    let file = open_dma(&path).await;
    // Reserve as much as the log reserves for a segment, so the extents the writes land in
    // look like the log's.
    let reserve_bytes = seq.total_bytes.max(LogConfig::default().segment_bytes_max);
    file.pre_allocate(reserve_bytes, false)
        .await
        .expect("pre-allocate the raw file");
    let pattern = pattern_bytes(seq.write_bytes, 1);
    if seq.prewritten {
        let mut pos = 0;
        while pos + seq.write_bytes as u64 <= seq.total_bytes {
            write_pattern(&file, &pattern, pos).await;
            pos += seq.write_bytes as u64;
        }
    }
    file.fdatasync().await.expect("sync the raw file");
    let mut latency_us = new_histogram();
    let before = counters.read();
    let start = Instant::now();
    let mut pos = 0;
    while pos + seq.write_bytes as u64 <= seq.total_bytes {
        let t = Instant::now();
        write_pattern(&file, &pattern, pos).await;
        if seq.sync_each {
            file.fdatasync().await.expect("raw fdatasync");
        }
        latency_us.saturating_record(micros(t.elapsed()));
        pos += seq.write_bytes as u64;
    }
    let elapsed = start.elapsed();
    // The no-sync run still ends durable, outside the timing, so its journal work does not
    // land in the next measurement.
    file.fdatasync().await.expect("raw fdatasync");
    let written = counters.read().since(&before);
    file.close().await.expect("close the raw file");
    let _ = std::fs::remove_file(&path);
    RawRun {
        name: format!(
            "{} KiB seq write{}{}",
            seq.write_bytes >> 10,
            if seq.sync_each { " + fdatasync" } else { "" },
            if seq.prewritten { ", written blk" } else { "" }
        ),
        payload_bytes: pos,
        elapsed,
        latency_us,
        written,
    }
}

/// Where a 4 KiB write lands; ext4 does different metadata work for each (DESIGN.md §2).
#[derive(Copy, Clone)]
enum SmallWrite {
    /// Into blocks written (and synced) before: no metadata changes.
    Overwrite,
    /// Into `fallocate`d, unwritten extents, as the log's segments are: the extent conversion
    /// is journaled.
    Fallocated,
    /// Past the end of the file: block allocation and the size change are journaled.
    Extending,
}

impl SmallWrite {
    fn name(self) -> &'static str {
        match self {
            SmallWrite::Overwrite => "4 KiB write+sync, written blocks",
            SmallWrite::Fallocated => "4 KiB write+sync, fallocated",
            SmallWrite::Extending => "4 KiB write+sync, extending",
        }
    }
}

/// 4 KiB write + `fdatasync` latency, sequential positions.
async fn small_write_latency(
    root: &Path,
    counters: &Counters,
    kind: SmallWrite,
    plan: &Plan,
) -> RawRun {
    let path = root.join("raw-small");
    let file = open_dma(&path).await;
    let blocks_max = plan.latency_samples_max;
    let cycle_blocks = match kind {
        SmallWrite::Overwrite => {
            let big = pattern_bytes(1 << 20, 2);
            let mut pos = 0;
            while pos < PREWRITTEN_FILE_BYTES {
                write_pattern(&file, &big, pos).await;
                pos += big.len() as u64;
            }
            PREWRITTEN_FILE_BYTES / SMALL_WRITE_BYTES as u64
        }
        SmallWrite::Fallocated => {
            file.pre_allocate(blocks_max * SMALL_WRITE_BYTES as u64, false)
                .await
                .expect("pre-allocate the small-write file");
            blocks_max
        }
        SmallWrite::Extending => blocks_max,
    };
    file.fdatasync().await.expect("sync the small-write file");
    let pattern = pattern_bytes(SMALL_WRITE_BYTES, 3);
    let mut latency_us = new_histogram();
    let before = counters.read();
    let start = Instant::now();
    let mut samples = 0u64;
    while samples < blocks_max && start.elapsed() < plan.latency_duration {
        let pos = (samples % cycle_blocks) * SMALL_WRITE_BYTES as u64;
        let t = Instant::now();
        write_pattern(&file, &pattern, pos).await;
        file.fdatasync().await.expect("small-write fdatasync");
        latency_us.saturating_record(micros(t.elapsed()));
        samples += 1;
    }
    let elapsed = start.elapsed();
    let written = counters.read().since(&before);
    file.close().await.expect("close the small-write file");
    let _ = std::fs::remove_file(&path);
    RawRun {
        name: kind.name().to_string(),
        payload_bytes: samples * SMALL_WRITE_BYTES as u64,
        elapsed,
        latency_us,
        written,
    }
}

fn print_raw_header() {
    println!(
        "{:<44} {:>6} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7}",
        "baseline", "ops", "MB/s", "p50 µs", "p99 µs", "max µs", "WA", "dev WA"
    );
}

fn print_raw(r: &RawRun, source: Source) {
    println!(
        "{:<44} {:>6} {:>8.1} {:>8} {:>8} {:>8} {:>7} {:>7}",
        r.name,
        r.latency_us.len(),
        r.mb_s(),
        r.latency_us.value_at_quantile(0.5),
        r.latency_us.value_at_quantile(0.99),
        r.latency_us.max(),
        ratio(r.written.by(source), r.payload_bytes),
        ratio(r.written.by(Source::Device), r.payload_bytes),
    );
}

// ---------------------------------------------------------------------------------------------
// The log

/// One log configuration.
#[derive(Copy, Clone)]
struct Shape {
    record_bytes: usize,
    /// Records per `append_batch` call.
    batch: usize,
    /// Concurrent appending tasks.
    tasks: usize,
    /// The log's group-commit size (the default, except in the what-if rows).
    flush_bytes_max: usize,
}

struct LogRun {
    shape: Shape,
    records: u64,
    elapsed: Duration,
    latency_us: Histogram<u64>,
    written: Written,
    /// The executor thread's scheduling during the config.
    cpu: CpuTime,
    /// Group commits seen (see [`count_commits`]).
    commits: u64,
    /// The adjacent raw baselines (MB/s), filled in by the caller.
    raw_mb_s: f64,
    raw_sync_mb_s: f64,
}

impl LogRun {
    fn payload_bytes(&self) -> u64 {
        self.records * self.shape.record_bytes as u64
    }

    fn records_s(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64()
    }

    fn mb_s(&self) -> f64 {
        self.payload_bytes() as f64 / MB / self.elapsed.as_secs_f64()
    }
}

/// Opens a fresh log, lets `shape.tasks` tasks append batches until the time (or payload) limit,
/// and closes it. Throughput counts from the first append to the last acknowledgement.
async fn run_log_config(root: &Path, counters: &Counters, shape: Shape, plan: &Plan) -> LogRun {
    let dir = root.join(format!(
        "log-{}b-x{}-t{}",
        shape.record_bytes, shape.batch, shape.tasks
    ));
    let config = LogConfig {
        flush_bytes_max: shape.flush_bytes_max,
        ..LogConfig::default()
    };
    let log = Log::open(&dir, config).await.expect("open the log");
    let values: Rc<Vec<Vec<u8>>> = Rc::new(
        (0..shape.batch)
            .map(|i| pattern_bytes(shape.record_bytes, 100 + i as u64))
            .collect(),
    );
    let latency_us = Rc::new(RefCell::new(new_histogram()));
    let records = Rc::new(Cell::new(0u64));
    let issued_bytes = Rc::new(Cell::new(0u64));
    let batch_payload = (shape.batch * shape.record_bytes) as u64;

    let before = counters.read();
    let cpu_before = CpuTime::of_this_thread();
    let commits = Rc::new(Cell::new(0u64));
    let monitor = glommio::spawn_local(count_commits(log.clone(), commits.clone()));
    let start = Instant::now();
    let deadline = start + plan.config_duration;
    let tasks: Vec<_> = (0..shape.tasks)
        .map(|_| {
            let (log, values) = (log.clone(), values.clone());
            let (latency_us, records, issued_bytes) =
                (latency_us.clone(), records.clone(), issued_bytes.clone());
            glommio::spawn_local(async move {
                while Instant::now() < deadline && issued_bytes.get() < CONFIG_PAYLOAD_BYTES_MAX {
                    issued_bytes.set(issued_bytes.get() + batch_payload);
                    let t = Instant::now();
                    log.append_batch(&values).await.expect("durable append");
                    latency_us
                        .borrow_mut()
                        .saturating_record(micros(t.elapsed()));
                    records.set(records.get() + values.len() as u64);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await;
    }
    let elapsed = start.elapsed();
    let cpu = CpuTime::of_this_thread().since(&cpu_before);
    let commits = commits.get();
    log.close().await.expect("close the log");
    monitor.await;
    let written = counters.read().since(&before);
    std::fs::remove_dir_all(&dir).expect("remove the config's log directory");
    let latency_us = latency_us.borrow().clone();
    LogRun {
        shape,
        records: records.get(),
        elapsed,
        latency_us,
        written,
        cpu,
        commits,
        raw_mb_s: 0.0,
        raw_sync_mb_s: 0.0,
    }
}

/// Counts group commits from outside the engine: every commit advances the durable offset and
/// wakes `wait_for`. Two commits between two wake-ups would count as one, but commits are
/// separated by a write and an `fdatasync`, and this task runs in between. Ends when the log
/// closes.
async fn count_commits(log: Log, commits: Rc<Cell<u64>>) {
    loop {
        let durable = log.durable_offset();
        if log.wait_for(durable).await.is_err() {
            return;
        }
        commits.set(commits.get() + 1);
    }
}

fn print_log_header() {
    println!(
        "{:>5} {:>5} {:>5} {:>9} {:>7} {:>7} {:>7} {:>6} {:>6} {:>7} {:>7} {:>7} {:>6} {:>6} {:>6} {:>6} {:>4} {:>4}",
        "rec B",
        "batch",
        "tasks",
        "records/s",
        "MB/s",
        "raw",
        "raw+syn",
        "/raw",
        "/sync",
        "p50 µs",
        "p99 µs",
        "max µs",
        "WA",
        "devWA",
        "KiB/cm",
        "µs/cm",
        "cpu%",
        "rq%"
    );
}

fn print_log_row(r: &LogRun, source: Source) {
    println!(
        "{:>5} {:>5} {:>5} {:>9.0} {:>7.1} {:>7.1} {:>7.1} {:>6.3} {:>6.3} {:>7} {:>7} {:>7} {:>6} {:>6} {:>6.0} {:>6.0} {:>4.0} {:>4.0}",
        r.shape.record_bytes,
        r.shape.batch,
        r.shape.tasks,
        r.records_s(),
        r.mb_s(),
        r.raw_mb_s,
        r.raw_sync_mb_s,
        r.mb_s() / r.raw_mb_s,
        r.mb_s() / r.raw_sync_mb_s,
        r.latency_us.value_at_quantile(0.5),
        r.latency_us.value_at_quantile(0.99),
        r.latency_us.max(),
        ratio(r.written.by(source), r.payload_bytes()),
        ratio(r.written.by(Source::Device), r.payload_bytes()),
        r.payload_bytes() as f64 / 1024.0 / r.commits.max(1) as f64,
        r.elapsed.as_micros() as f64 / r.commits.max(1) as f64,
        r.cpu.on_cpu_percent(r.elapsed),
        r.cpu.runqueue_percent(r.elapsed),
    );
}

/// The targets, judged on this run: bandwidth against each config's adjacent raw
/// baselines, write amplification by the chosen counter.
fn print_summary(results: &[LogRun], source: Source) {
    let spread = |f: fn(&LogRun) -> f64| {
        let mut v: Vec<f64> = results.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        match (v.first(), v.get(v.len() / 2), v.last()) {
            (Some(lo), Some(mid), Some(hi)) => format!("{lo:.0} / {mid:.0} / {hi:.0}"),
            _ => "-".to_string(),
        }
    };
    println!(
        "\n== the disk during the run: adjacent raw baselines min / median / max MB/s: \
         no sync {}, fdatasync each {}",
        spread(|r| r.raw_mb_s),
        spread(|r| r.raw_sync_mb_s)
    );
    println!("\n== targets (1 KiB records)");
    let kib: Vec<&LogRun> = results
        .iter()
        .filter(|r| r.shape.record_bytes == 1024)
        .collect();
    let best_by = |f: fn(&LogRun) -> f64| kib.iter().copied().max_by(|a, b| f(a).total_cmp(&f(b)));
    let verdict = |ok: bool| if ok { "MET" } else { "MISSED" };
    let sync_ratio = |r: &LogRun| r.mb_s() / r.raw_sync_mb_s;
    let raw_ratio = |r: &LogRun| r.mb_s() / r.raw_mb_s;
    if let Some(b) = best_by(sync_ratio) {
        println!(
            "bandwidth >= {BANDWIDTH_RATIO_TARGET} of raw 1 MiB write+fdatasync: best {:.3} \
             (batch {} x {} tasks, {:.1} of {:.1} MB/s): {}",
            sync_ratio(b),
            b.shape.batch,
            b.shape.tasks,
            b.mb_s(),
            b.raw_sync_mb_s,
            verdict(sync_ratio(b) >= BANDWIDTH_RATIO_TARGET)
        );
    }
    if let Some(b) = best_by(raw_ratio) {
        println!(
            "bandwidth >= {BANDWIDTH_RATIO_TARGET} of raw 1 MiB write, no sync: best {:.3} \
             (batch {} x {} tasks, {:.1} of {:.1} MB/s): {}",
            raw_ratio(b),
            b.shape.batch,
            b.shape.tasks,
            b.mb_s(),
            b.raw_mb_s,
            verdict(raw_ratio(b) >= BANDWIDTH_RATIO_TARGET)
        );
    }
    let wa = |r: &LogRun| r.written.by(source) as f64 / r.payload_bytes().max(1) as f64;
    let meeting: Vec<String> = kib
        .iter()
        .filter(|r| wa(r) <= WA_TARGET)
        .map(|r| format!("{}x{}", r.shape.batch, r.shape.tasks))
        .collect();
    println!(
        "write amplification <= {WA_TARGET} ({}): {} of {} configs (batch x tasks: {}); \
         lowest {:.3}",
        source.describe(),
        meeting.len(),
        kib.len(),
        meeting.join(" "),
        kib.iter().map(|r| wa(r)).fold(f64::INFINITY, f64::min)
    );
}

/// Scheduling of the executor thread, from `/proc/thread-self/schedstat`: time on a CPU and
/// time runnable but waiting for one (other processes on the shared cores).
#[derive(Copy, Clone, Default)]
struct CpuTime {
    on_cpu_ns: u64,
    runqueue_ns: u64,
}

impl CpuTime {
    fn of_this_thread() -> CpuTime {
        let text = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
        let mut fields = text
            .split_whitespace()
            .map(|f| f.parse::<u64>().unwrap_or(0));
        CpuTime {
            on_cpu_ns: fields.next().unwrap_or(0),
            runqueue_ns: fields.next().unwrap_or(0),
        }
    }

    fn since(&self, before: &CpuTime) -> CpuTime {
        CpuTime {
            on_cpu_ns: self.on_cpu_ns.saturating_sub(before.on_cpu_ns),
            runqueue_ns: self.runqueue_ns.saturating_sub(before.runqueue_ns),
        }
    }

    fn on_cpu_percent(&self, over: Duration) -> f64 {
        100.0 * self.on_cpu_ns as f64 / over.as_nanos().max(1) as f64
    }

    fn runqueue_percent(&self, over: Duration) -> f64 {
        100.0 * self.runqueue_ns as f64 / over.as_nanos().max(1) as f64
    }
}

// ---------------------------------------------------------------------------------------------
// Write counters

/// Where "bytes written to disk" comes from.
#[derive(Copy, Clone, PartialEq, Eq)]
enum Source {
    /// `/proc/self/io` `write_bytes`: the whole process, exited threads included.
    Process,
    /// `write_bytes` summed over `/proc/self/task/*/io`: live threads only.
    Threads,
    /// Sectors written to the data directory's block device: includes the filesystem journal
    /// and every other process writing to that device.
    Device,
}

impl Source {
    fn describe(self) -> &'static str {
        match self {
            Source::Process => "/proc/self/io write_bytes",
            Source::Threads => "sum of /proc/self/task/*/io write_bytes",
            Source::Device => "device sectors written (/sys/dev/block/M:m/stat; noisy)",
        }
    }
}

/// Bytes written during one measurement, by each source.
#[derive(Copy, Clone, Default)]
struct Written {
    process: u64,
    threads: u64,
    device: u64,
}

impl Written {
    fn by(&self, source: Source) -> u64 {
        match source {
            Source::Process => self.process,
            Source::Threads => self.threads,
            Source::Device => self.device,
        }
    }

    fn since(&self, before: &Written) -> Written {
        Written {
            process: self.process.saturating_sub(before.process),
            threads: self.threads.saturating_sub(before.threads),
            device: self.device.saturating_sub(before.device),
        }
    }
}

struct Counters {
    device_stat: PathBuf,
    device_name: String,
}

impl Counters {
    fn for_dir(dir: &Path) -> Counters {
        use std::os::unix::fs::MetadataExt;
        let dev = std::fs::metadata(dir)
            .expect("stat the bench directory")
            .dev();
        // The kernel's encoding of dev_t (see `major()`/`minor()` in glibc's sys/sysmacros.h).
        let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
        let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
        let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
        let device_name = std::fs::read_to_string(sys.join("uevent"))
            .ok()
            .and_then(|u| {
                u.lines()
                    .find_map(|l| l.strip_prefix("DEVNAME=").map(str::to_string))
            })
            .unwrap_or_else(|| format!("{major}:{minor}"));
        Counters {
            device_stat: sys.join("stat"),
            device_name,
        }
    }

    fn read(&self) -> Written {
        let threads = std::fs::read_dir("/proc/self/task")
            .map(|tasks| {
                tasks
                    .filter_map(|t| t.ok())
                    .filter_map(|t| proc_write_bytes(&t.path().join("io")))
                    .sum()
            })
            .unwrap_or(0);
        let device = std::fs::read_to_string(&self.device_stat)
            .ok()
            .and_then(|s| s.split_whitespace().nth(6)?.parse::<u64>().ok())
            .map_or(0, |sectors| sectors * SECTOR_BYTES);
        Written {
            process: proc_write_bytes(Path::new("/proc/self/io")).unwrap_or(0),
            threads,
            device,
        }
    }

    /// The first source that counts the raw baseline's bytes as written, about once each.
    fn choose_source(&self, raw: &RawRun) -> Source {
        let fits = |s: Source| {
            let r = raw.written.by(s) as f64 / raw.payload_bytes as f64;
            (RAW_RATIO_MIN..=RAW_RATIO_MAX).contains(&r)
        };
        let chosen = [Source::Process, Source::Threads, Source::Device]
            .into_iter()
            .find(|s| fits(*s));
        for s in [Source::Process, Source::Threads, Source::Device] {
            println!(
                "  check: raw baseline by {}: {}",
                s.describe(),
                ratio(raw.written.by(s), raw.payload_bytes)
            );
        }
        chosen.unwrap_or_else(|| {
            println!("  no source reads the raw baseline as ~1.0; using the device counter");
            Source::Device
        })
    }
}

fn proc_write_bytes(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("histogram bounds")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn ratio(written: u64, payload: u64) -> String {
    if payload == 0 {
        return "-".into();
    }
    format!("{:.3}", written as f64 / payload as f64)
}

/// `len` pseudo-random bytes (xorshift64): incompressible enough that no layer below can
/// shortcut the writes.
fn pattern_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

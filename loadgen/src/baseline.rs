//! `loadgen baseline`: this machine's ceilings, measured in one run, for the ratios the
//! README gives next to every figure.
//!
//! - **Disk** (glommio `DmaFile`, O_DIRECT, on the directory's filesystem, in a scratch
//!   file that is removed afterwards): sequential 1 MiB writes with [`WRITE_QUEUE_DEPTH`] in
//!   flight and no sync, into `fallocate`d never-written blocks and over written ones (raw
//!   write bandwidth: the better of the two); 1 MiB reads the same way (what a catch-up
//!   reader can get); 1 MiB writes each followed by `fdatasync`, one at a time, both kinds of
//!   blocks (what a durable group commit costs); the same in [`REPLICA_FILES`] files at once,
//!   one writer each (what three replicas sharing this disk can make durable together: a
//!   one-host cluster's ceiling); and 4 KiB write + `fdatasync` latency, one at a time, into
//!   written blocks (what the log's tail-block rewrite costs) and into fallocated ones.
//! - **Loopback TCP**: a plain std sender and receiver on 127.0.0.1 (each pinned to a CPU when
//!   `--cpuset` gives them), 256 KiB writes, for the duration.
//!
//! The ceiling for produce throughput is min(raw disk write bandwidth, loopback bandwidth).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::io::{DmaFile, OpenOptions};
use glommio::{LocalExecutorBuilder, Placement};
use serde::Serialize;

use crate::args::BaselineConfig;
use crate::stats::{self, LatencySummary};

/// The main scratch file's size (the first pass stops when it is full).
const FILE_BYTES: u64 = 2 << 30;
/// The scratch files for writes into never-written blocks (synced writes fill them slowly).
const FRESH_FILE_BYTES: u64 = 1 << 30;
/// Bytes per large write.
const LARGE_WRITE_BYTES: usize = 1 << 20;
/// Large writes in flight for the raw bandwidth figure.
const WRITE_QUEUE_DEPTH: usize = 4;
/// Synced writers at once for the shared-disk figure: a 3-replica cluster on one host.
pub const REPLICA_FILES: usize = 3;
/// Each of those writers' file (wrapped around if the duration outlasts it).
const REPLICA_FILE_BYTES: u64 = 256 << 20;
/// Bytes per small synced write.
const SMALL_WRITE_BYTES: usize = 4096;
/// Bytes per loopback write.
const LOOPBACK_CHUNK_BYTES: usize = 256 << 10;
/// Registered I/O memory of the disk executor (enough for the writes in flight).
const IO_MEMORY_BYTES: usize = 2 << 20;
const SCRATCH_NAME: &str = "loadgen-baseline.tmp";

#[derive(Debug, Clone, Serialize)]
pub struct DiskBaseline {
    /// Raw sequential write bandwidth: the better of the two no-sync figures below.
    pub write_mb_per_s: f64,
    /// 1 MiB O_DIRECT writes, no sync, `WRITE_QUEUE_DEPTH` in flight, into fallocated,
    /// never-written blocks (what a new segment gets).
    pub write_fallocated_mb_per_s: f64,
    /// The same over blocks written before (as fio measures, after laying out its file).
    pub write_rewrite_mb_per_s: f64,
    /// 1 MiB O_DIRECT sequential reads, `WRITE_QUEUE_DEPTH` in flight (what a catch-up
    /// reader can get from the disk).
    pub read_mb_per_s: f64,
    /// 1 MiB writes each followed by `fdatasync`, one at a time, into fallocated blocks: a
    /// durable group commit's cost on a new segment.
    pub write_sync_fallocated_mb_per_s: f64,
    pub write_sync_fallocated_latency_us: LatencySummary,
    /// The same over blocks written before.
    pub write_sync_rewrite_mb_per_s: f64,
    pub write_sync_rewrite_latency_us: LatencySummary,
    /// 1 MiB write + `fdatasync` each, one at a time in each of `REPLICA_FILES` fallocated
    /// files at once: MB/s made durable by all of them together. A cluster whose replicas
    /// share this disk writes every byte once per replica, so it can acknowledge at most this
    /// divided by the replicas.
    pub write_sync_fallocated_replica_files_mb_per_s: f64,
    /// 4 KiB write + `fdatasync` into blocks written before (the log's tail-block rewrite).
    pub sync_4k_rewrite_latency_us: LatencySummary,
    /// 4 KiB write + `fdatasync` into fallocated, never-written blocks.
    pub sync_4k_fallocated_latency_us: LatencySummary,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoopbackBaseline {
    pub mb_per_s: f64,
    pub bytes: u64,
    pub secs: f64,
}

/// `loadgen baseline --json` (version 1).
#[derive(Debug, Clone, Serialize)]
pub struct BaselineReport {
    pub version: u32,
    pub disk: DiskBaseline,
    pub loopback_tcp: LoopbackBaseline,
    /// min(disk write bandwidth, loopback bandwidth).
    pub ceiling_mb_per_s: f64,
    /// When it ran (seconds since the Unix epoch) and the host's load average then.
    pub unix_time_s: u64,
    pub load_average: Option<f64>,
    pub config: BaselineConfig,
}

/// Runs every measurement.
pub fn run(config: &BaselineConfig) -> Result<BaselineReport, String> {
    corelog::io::ensure_memlock(corelog::io::memlock_bytes_wanted(1, IO_MEMORY_BYTES))?;
    let first = config.cpus.as_ref().and_then(|c| c.first().copied());
    let second = config.cpus.as_ref().and_then(|c| c.get(1).copied());
    let dir = config.dir.clone();
    let duration = config.duration;
    let disk = LocalExecutorBuilder::new(placement(first))
        .name("loadgen-disk")
        .io_memory(IO_MEMORY_BYTES)
        .spawn(move || async move { disk(&dir, duration).await })
        .map_err(|e| format!("cannot start an executor: {e}"))?
        .join()
        .map_err(|e| format!("disk baseline failed: {e}"))??;
    let loopback = loopback(duration, first, second)?;
    Ok(BaselineReport {
        version: 1,
        ceiling_mb_per_s: disk.write_mb_per_s.min(loopback.mb_per_s),
        unix_time_s: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        load_average: crate::report::load_average(),
        disk,
        loopback_tcp: loopback,
        config: config.clone(),
    })
}

/// The report as text.
pub fn text(r: &BaselineReport) -> String {
    let d = &r.disk;
    let lat = |l: &LatencySummary| format!("p50 {} µs, p99 {} µs, max {} µs", l.p50, l.p99, l.max);
    format!(
        "baseline ({} per measurement, {}):\n  \
         disk 1 MiB writes, {WRITE_QUEUE_DEPTH} in flight, no sync, fallocated blocks: {:.0} MB/s\n  \
         disk 1 MiB writes, {WRITE_QUEUE_DEPTH} in flight, no sync, written blocks:    {:.0} MB/s\n  \
         disk 1 MiB reads, {WRITE_QUEUE_DEPTH} in flight:                           {:.0} MB/s\n  \
         disk 1 MiB write + fdatasync each, fallocated blocks:      {:.0} MB/s ({})\n  \
         disk 1 MiB write + fdatasync each, written blocks:         {:.0} MB/s ({})\n  \
         disk 1 MiB write + fdatasync, {REPLICA_FILES} files at once, fallocated: {:.0} MB/s in all\n  \
         disk 4 KiB write + fdatasync, written blocks:              {}\n  \
         disk 4 KiB write + fdatasync, fallocated blocks:           {}\n  \
         loopback TCP:                                             {:.0} MB/s\n  \
         ceiling = min(disk write {:.0}, loopback {:.0}):             {:.0} MB/s\n",
        humantime(r.config.duration),
        r.config.dir.display(),
        d.write_fallocated_mb_per_s,
        d.write_rewrite_mb_per_s,
        d.read_mb_per_s,
        d.write_sync_fallocated_mb_per_s,
        lat(&d.write_sync_fallocated_latency_us),
        d.write_sync_rewrite_mb_per_s,
        lat(&d.write_sync_rewrite_latency_us),
        d.write_sync_fallocated_replica_files_mb_per_s,
        lat(&d.sync_4k_rewrite_latency_us),
        lat(&d.sync_4k_fallocated_latency_us),
        r.loopback_tcp.mb_per_s,
        d.write_mb_per_s,
        r.loopback_tcp.mb_per_s,
        r.ceiling_mb_per_s
    )
}

fn humantime(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

fn placement(cpu: Option<usize>) -> Placement {
    cpu.map_or(Placement::Unbound, Placement::Fixed)
}

async fn disk(dir: &Path, duration: Duration) -> Result<DiskBaseline, String> {
    // glommio's polled-I/O probe must see a non-empty read-write file first (see corelog::io).
    corelog::io::Disk::new()
        .prepare_dir(dir)
        .await
        .map_err(|e| format!("--dir {}: {e}", dir.display()))?;
    let path = dir.join(SCRATCH_NAME);
    let result = disk_on(&path, duration).await;
    for p in [
        path.clone(),
        path.with_extension("fresh"),
        path.with_extension("fresh4k"),
    ]
    .into_iter()
    .chain((0..REPLICA_FILES).map(|k| replica_file(&path, k)))
    {
        let _ = std::fs::remove_file(p);
    }
    result
}

async fn disk_on(path: &Path, duration: Duration) -> Result<DiskBaseline, String> {
    let io = |what: &str, e: glommio::GlommioError<()>| format!("{what} {}: {e}", path.display());
    // One file for the no-sync passes, then synced writes over the blocks they wrote.
    let main = Scratch::create(path, FILE_BYTES)
        .await
        .map_err(|e| io("preparing", e))?;
    let fallocated = bandwidth(&main.file, FILE_BYTES, duration)
        .await
        .map_err(|e| io("writing", e))?;
    let written = fallocated.bytes.clamp(LARGE_WRITE_BYTES as u64, FILE_BYTES);
    let rewrite = bandwidth(&main.file, written, duration)
        .await
        .map_err(|e| io("writing", e))?;
    let read = read_bandwidth(&main.file, written, duration)
        .await
        .map_err(|e| io("reading", e))?;
    let (sync_rewrite_mb, sync_rewrite_lat) = synced_writes(&main.file, written, duration)
        .await
        .map_err(|e| io("writing", e))?;
    let rewrite_4k = small_syncs(&main.file, duration)
        .await
        .map_err(|e| io("writing", e))?;
    main.remove().await;
    // Fresh files for writes into never-written blocks.
    let fresh = Scratch::create(&path.with_extension("fresh"), FRESH_FILE_BYTES)
        .await
        .map_err(|e| io("preparing", e))?;
    let sync_fallocated = synced_writes(&fresh.file, FRESH_FILE_BYTES, duration).await;
    fresh.remove().await;
    let (sync_fallocated_mb, sync_fallocated_lat) =
        sync_fallocated.map_err(|e| io("writing", e))?;
    let fresh = Scratch::create(&path.with_extension("fresh4k"), FRESH_FILE_BYTES)
        .await
        .map_err(|e| io("preparing", e))?;
    let fallocated_4k = small_syncs(&fresh.file, duration).await;
    fresh.remove().await;
    let replica_files = replica_synced_writes(path, duration)
        .await
        .map_err(|e| io("writing", e))?;
    Ok(DiskBaseline {
        write_mb_per_s: fallocated.mb_per_s.max(rewrite.mb_per_s),
        write_fallocated_mb_per_s: fallocated.mb_per_s,
        write_rewrite_mb_per_s: rewrite.mb_per_s,
        read_mb_per_s: read,
        write_sync_fallocated_mb_per_s: sync_fallocated_mb,
        write_sync_fallocated_latency_us: sync_fallocated_lat,
        write_sync_rewrite_mb_per_s: sync_rewrite_mb,
        write_sync_rewrite_latency_us: sync_rewrite_lat,
        write_sync_fallocated_replica_files_mb_per_s: replica_files,
        sync_4k_rewrite_latency_us: rewrite_4k,
        sync_4k_fallocated_latency_us: fallocated_4k.map_err(|e| io("writing", e))?,
    })
}

/// A scratch file, fallocated to its size, removed by [`Scratch::remove`] (and by `disk`
/// if a measurement fails halfway).
struct Scratch {
    file: Rc<DmaFile>,
    path: PathBuf,
}

impl Scratch {
    async fn create(path: &Path, bytes: u64) -> glommio::Result<Scratch, ()> {
        let _ = std::fs::remove_file(path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .dma_open(path)
            .await?;
        let scratch = Scratch {
            file: Rc::new(file),
            path: path.to_path_buf(),
        };
        scratch.file.pre_allocate(bytes, false).await?;
        Ok(scratch)
    }

    async fn remove(self) {
        if let Ok(f) = Rc::try_unwrap(self.file) {
            let _ = f.close().await;
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

struct Bandwidth {
    mb_per_s: f64,
    bytes: u64,
}

/// Sequential 1 MiB writes, `WRITE_QUEUE_DEPTH` in flight, over the first `span` bytes,
/// until `duration` passes or (first pass) the span is written once.
async fn bandwidth(
    file: &Rc<DmaFile>,
    span: u64,
    duration: Duration,
) -> glommio::Result<Bandwidth, ()> {
    let start = Instant::now();
    let blocks = (span / LARGE_WRITE_BYTES as u64).max(1);
    let tasks: Vec<_> = (0..WRITE_QUEUE_DEPTH as u64)
        .map(|lane| {
            let file = file.clone();
            glommio::spawn_local(async move {
                let mut written = 0u64;
                let mut n = lane;
                while start.elapsed() < duration && n < blocks {
                    write_block(&file, n * LARGE_WRITE_BYTES as u64, LARGE_WRITE_BYTES).await?;
                    written += LARGE_WRITE_BYTES as u64;
                    n += WRITE_QUEUE_DEPTH as u64;
                }
                Ok::<u64, glommio::GlommioError<()>>(written)
            })
        })
        .collect();
    let mut bytes = 0;
    for t in tasks {
        bytes += t.await?;
    }
    Ok(Bandwidth {
        mb_per_s: bytes as f64 / start.elapsed().as_secs_f64() / 1e6,
        bytes,
    })
}

/// Sequential 1 MiB reads, `WRITE_QUEUE_DEPTH` in flight, over the first `span` bytes
/// (wrapping around), for `duration`; MB/s.
async fn read_bandwidth(
    file: &Rc<DmaFile>,
    span: u64,
    duration: Duration,
) -> glommio::Result<f64, ()> {
    let start = Instant::now();
    let blocks = (span / LARGE_WRITE_BYTES as u64).max(1);
    let tasks: Vec<_> = (0..WRITE_QUEUE_DEPTH as u64)
        .map(|lane| {
            let file = file.clone();
            glommio::spawn_local(async move {
                let mut read = 0u64;
                let mut n = lane;
                while start.elapsed() < duration {
                    let pos = (n % blocks) * LARGE_WRITE_BYTES as u64;
                    let got = file.read_at_aligned(pos, LARGE_WRITE_BYTES).await?;
                    read += got.len() as u64;
                    n += WRITE_QUEUE_DEPTH as u64;
                }
                Ok::<u64, glommio::GlommioError<()>>(read)
            })
        })
        .collect();
    let mut bytes = 0;
    for t in tasks {
        bytes += t.await?;
    }
    Ok(bytes as f64 / start.elapsed().as_secs_f64() / 1e6)
}

/// 1 MiB write + `fdatasync`, one at a time, sequential over the first `span` bytes.
async fn synced_writes(
    file: &DmaFile,
    span: u64,
    duration: Duration,
) -> glommio::Result<(f64, LatencySummary), ()> {
    let mut h = stats::new_histogram();
    let mut pos = 0u64;
    let mut bytes = 0u64;
    let start = Instant::now();
    while start.elapsed() < duration {
        let t = Instant::now();
        write_block(file, pos, LARGE_WRITE_BYTES).await?;
        file.fdatasync().await?;
        stats::record(&mut h, t.elapsed().as_micros() as u64, 1);
        bytes += LARGE_WRITE_BYTES as u64;
        pos = (pos + LARGE_WRITE_BYTES as u64) % span.max(LARGE_WRITE_BYTES as u64);
    }
    let mb_per_s = bytes as f64 / start.elapsed().as_secs_f64() / 1e6;
    Ok((mb_per_s, LatencySummary::of(&h)))
}

fn replica_file(path: &Path, k: usize) -> PathBuf {
    path.with_extension(format!("replica{k}"))
}

/// [`synced_writes`] in `REPLICA_FILES` fresh files at once, one task each; MB/s in all.
async fn replica_synced_writes(path: &Path, duration: Duration) -> glommio::Result<f64, ()> {
    let mut files = Vec::with_capacity(REPLICA_FILES);
    for k in 0..REPLICA_FILES {
        files.push(Scratch::create(&replica_file(path, k), REPLICA_FILE_BYTES).await?);
    }
    let tasks: Vec<_> = files
        .iter()
        .map(|f| {
            let file = f.file.clone();
            glommio::spawn_local(async move {
                synced_writes(&file, REPLICA_FILE_BYTES, duration)
                    .await
                    .map(|(mb_per_s, _)| mb_per_s)
            })
        })
        .collect();
    let mut results = Vec::with_capacity(REPLICA_FILES);
    for t in tasks {
        results.push(t.await);
    }
    for f in files {
        f.remove().await;
    }
    // Each writer's MB/s is over its own run, and they ran over the same span of time.
    results.into_iter().sum()
}

/// 4 KiB write + `fdatasync`, one at a time, advancing from the file's start.
async fn small_syncs(file: &DmaFile, duration: Duration) -> glommio::Result<LatencySummary, ()> {
    let mut h = stats::new_histogram();
    let mut pos = 0u64;
    let start = Instant::now();
    while start.elapsed() < duration {
        let t = Instant::now();
        write_block(file, pos, SMALL_WRITE_BYTES).await?;
        file.fdatasync().await?;
        stats::record(&mut h, t.elapsed().as_micros() as u64, 1);
        pos = (pos + SMALL_WRITE_BYTES as u64) % FRESH_FILE_BYTES;
    }
    Ok(LatencySummary::of(&h))
}

async fn write_block(file: &DmaFile, pos: u64, len: usize) -> glommio::Result<(), ()> {
    let mut buf = file.alloc_dma_buffer(len);
    // Non-zero contents, so no layer can take a shortcut for zeros.
    buf.as_bytes_mut().fill(0xA5);
    let written = file.write_at(buf, pos).await?;
    if written != len {
        return Err(glommio::GlommioError::IoError(std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            format!("short write: {written} of {len} bytes"),
        )));
    }
    Ok(())
}

/// Loopback TCP bandwidth: a sender and a receiver thread (pinned via single-CPU glommio
/// executors when CPUs are given; they only run blocking std socket code).
fn loopback(
    duration: Duration,
    sender_cpu: Option<usize>,
    receiver_cpu: Option<usize>,
) -> Result<LoopbackBaseline, String> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("loopback: binding: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("loopback: {e}"))?;
    let receiver = LocalExecutorBuilder::new(placement(receiver_cpu))
        .name("loadgen-recv")
        .spawn(move || async move {
            let (mut stream, _) = listener.accept()?;
            let mut buf = vec![0u8; LOOPBACK_CHUNK_BYTES];
            let mut bytes = 0u64;
            let mut first: Option<Instant> = None;
            loop {
                let n = stream.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                first.get_or_insert_with(Instant::now);
                bytes += n as u64;
            }
            let secs = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
            Ok::<_, std::io::Error>((bytes, secs))
        })
        .map_err(|e| format!("cannot start an executor: {e}"))?;
    let sender = LocalExecutorBuilder::new(placement(sender_cpu))
        .name("loadgen-send")
        .spawn(move || async move {
            let mut stream = TcpStream::connect(addr)?;
            let chunk = vec![0x5Au8; LOOPBACK_CHUNK_BYTES];
            let start = Instant::now();
            while start.elapsed() < duration {
                stream.write_all(&chunk)?;
            }
            stream.shutdown(std::net::Shutdown::Write)
        })
        .map_err(|e| format!("cannot start an executor: {e}"))?;
    sender
        .join()
        .map_err(|e| format!("loopback sender failed: {e}"))?
        .map_err(|e| format!("loopback sender: {e}"))?;
    let (bytes, secs) = receiver
        .join()
        .map_err(|e| format!("loopback receiver failed: {e}"))?
        .map_err(|e| format!("loopback receiver: {e}"))?;
    Ok(LoopbackBaseline {
        mb_per_s: if secs > 0.0 {
            bytes as f64 / secs / 1e6
        } else {
            0.0
        },
        bytes,
        secs,
    })
}

//! `corelog iotune --dir DIR --out FILE [--duration 30s]`: disk calibration in the spirit of
//! Seastar's iotune, measured with the node's own I/O path (glommio DMA through [`crate::io`]).
//!
//! What it measures, in a scratch file of [`SCRATCH_FILE_BYTES`] in DIR (removed afterwards):
//! sequential write bandwidth (each cell ends with one `fdatasync`) and read bandwidth for every
//! write size in [`WRITE_SIZES_BYTES`] at every queue depth in [`QUEUE_DEPTHS`], then
//! write + `fdatasync` latency percentiles at 4 KiB and at the chosen write size.
//!
//! How it chooses: `write_bytes` is the smallest size whose one-at-a-time write bandwidth is
//! within [`SATURATION_PERCENT`]% of the best one-at-a-time bandwidth (bigger writes only add
//! latency once the disk is saturated); `writes_in_flight` is the smallest queue depth that
//! gets within the same share of the best bandwidth at that size.
//!
//! The io-properties file (TOML, format [`IO_PROPERTIES_VERSION`]):
//! ```toml
//! version = 1
//! write_bytes = 1048576      # LogConfig::write_bytes_max: the largest single write
//! writes_in_flight = 2       # a group commit is up to this many such writes, issued together
//! [measured]                 # informational: duration_ms, write = [...], read = [...], sync = [...]
//! ```
//! `serve --io-properties FILE` reads only `version`, `write_bytes` and `writes_in_flight`, and
//! refuses the file (naming it and the key) when any is missing or out of range.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use glommio::{LocalExecutorBuilder, Placement};

use crate::io::{self, BLOCK_BYTES, Disk, File};

/// The io-properties format this build writes and reads.
pub const IO_PROPERTIES_VERSION: i64 = 1;
/// Write (and read) sizes measured.
pub const WRITE_SIZES_BYTES: [usize; 4] = [64 << 10, 256 << 10, 1 << 20, 4 << 20];
/// Queue depths measured: this many writes or reads submitted together.
pub const QUEUE_DEPTHS: [usize; 4] = [1, 2, 4, 8];
/// The scratch file: holds the largest size at the deepest queue without two writes of one
/// block in flight.
pub const SCRATCH_FILE_BYTES: u64 = 32 << 20;
/// A choice is "saturated" within this share of the best bandwidth.
pub const SATURATION_PERCENT: f64 = 90.0;
/// Accepted `write_bytes` in an io-properties file.
pub const WRITE_BYTES_MIN: usize = BLOCK_BYTES as usize;
pub const WRITE_BYTES_MAX: usize = 16 << 20;
/// Accepted `writes_in_flight` in an io-properties file.
pub const WRITES_IN_FLIGHT_MAX: usize = 64;
/// Accepted `--duration`.
pub const DURATION_MIN: Duration = Duration::from_millis(500);
pub const DURATION_MAX: Duration = Duration::from_secs(3600);
/// Latency samples kept per size.
const SYNC_SAMPLES_MAX: usize = 100_000;
/// Share of the budget spent on bandwidth cells; the rest measures sync latency.
const BANDWIDTH_BUDGET_PERCENT: u32 = 75;
/// io-properties files larger than this are not ours.
const IO_PROPERTIES_BYTES_MAX: u64 = 1 << 20;
const SCRATCH_FILE_NAME: &str = ".corelog-iotune";

/// `corelog iotune` flags.
#[derive(Args, Debug, Clone)]
pub struct IotuneArgs {
    /// Directory on the disk to measure (the data directory's filesystem).
    #[arg(long)]
    pub dir: PathBuf,
    /// Where to write the io-properties file.
    #[arg(long)]
    pub out: PathBuf,
    /// Time budget of the measurement, e.g. `30s`, `2s`, `500ms`, `1m`.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
}

/// What `serve --io-properties` applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoProperties {
    /// The appender's largest single write: `LogConfig::write_bytes_max`.
    pub write_bytes: usize,
    /// Writes worth keeping in flight on this disk.
    pub writes_in_flight: usize,
}

impl IoProperties {
    /// Reads and validates an io-properties file; errors name the file and the key.
    pub fn load(path: &Path) -> Result<IoProperties, String> {
        let name = path.display();
        let size = std::fs::metadata(path)
            .map_err(|e| format!("--io-properties {name}: cannot read: {e}"))?
            .len();
        if size > IO_PROPERTIES_BYTES_MAX {
            return Err(format!(
                "--io-properties {name}: {size} bytes is larger than {IO_PROPERTIES_BYTES_MAX}; \
                 not an io-properties file"
            ));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--io-properties {name}: cannot read: {e}"))?;
        IoProperties::parse(&text).map_err(|why| {
            format!("--io-properties {name}: {why}; run `corelog iotune --dir DIR --out {name}`")
        })
    }

    /// Parses the text of an io-properties file.
    pub fn parse(text: &str) -> Result<IoProperties, String> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| format!("not valid TOML: {}", e.message().trim()))?;
        let int = |key: &str| -> Result<i64, String> {
            match table.get(key) {
                Some(toml::Value::Integer(v)) => Ok(*v),
                Some(other) => Err(format!(
                    "key `{key}`: expected an integer, found {}",
                    other.type_str()
                )),
                None => Err(format!("key `{key}` is missing")),
            }
        };
        let version = int("version")?;
        if version != IO_PROPERTIES_VERSION {
            return Err(format!(
                "key `version`: {version} is not the supported version {IO_PROPERTIES_VERSION}"
            ));
        }
        let write_bytes = int("write_bytes")?;
        let write_bytes = usize::try_from(write_bytes)
            .ok()
            .filter(|b| {
                (WRITE_BYTES_MIN..=WRITE_BYTES_MAX).contains(b)
                    && (*b as u64).is_multiple_of(BLOCK_BYTES)
            })
            .ok_or_else(|| {
                format!(
                    "key `write_bytes`: {write_bytes} must be a multiple of {BLOCK_BYTES} between \
                     {WRITE_BYTES_MIN} and {WRITE_BYTES_MAX}"
                )
            })?;
        let in_flight = int("writes_in_flight")?;
        let writes_in_flight = usize::try_from(in_flight)
            .ok()
            .filter(|n| (1..=WRITES_IN_FLIGHT_MAX).contains(n))
            .ok_or_else(|| {
                format!(
                    "key `writes_in_flight`: {in_flight} must be between 1 and \
                     {WRITES_IN_FLIGHT_MAX}"
                )
            })?;
        Ok(IoProperties {
            write_bytes,
            writes_in_flight,
        })
    }
}

/// Bandwidth of one (size, depth) cell.
#[derive(Debug, Clone, Copy)]
pub struct Cell {
    pub size_bytes: usize,
    pub queue_depth: usize,
    pub mib_per_s: f64,
}

/// Write + `fdatasync` latency at one size, in microseconds.
#[derive(Debug, Clone, Copy)]
pub struct SyncLatency {
    pub size_bytes: usize,
    pub samples: usize,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// Everything one run measured, and what it chose.
#[derive(Debug, Clone)]
pub struct Calibration {
    pub writes: Vec<Cell>,
    pub reads: Vec<Cell>,
    pub sync: Vec<SyncLatency>,
    pub chosen: IoProperties,
    /// Why, in sentences, for the operator.
    pub reasons: Vec<String>,
    pub duration_ms: u64,
}

/// Parses `30s`, `500ms`, `2m` or a bare number of seconds, within [`DURATION_MIN`] and
/// [`DURATION_MAX`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a duration like 30s, 500ms or 2m"))?;
    let d = match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(format!("{text:?}: unit must be ms, s or m")),
    };
    if d < DURATION_MIN || d > DURATION_MAX {
        return Err(format!(
            "{text:?}: must be between {DURATION_MIN:?} and {DURATION_MAX:?}"
        ));
    }
    Ok(d)
}

/// Runs `corelog iotune`: measures, writes the file, prints the choice.
pub fn run_cli(args: &IotuneArgs) -> Result<u8, String> {
    std::fs::create_dir_all(&args.dir)
        .map_err(|e| format!("--dir {}: cannot create: {e}", args.dir.display()))?;
    io::ensure_memlock(io::memlock_bytes_wanted(1, crate::node::IO_MEMORY_BYTES))?;
    let executor = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(crate::node::IO_MEMORY_BYTES)
        .make()
        .map_err(|e| format!("cannot start the I/O executor (io_uring): {e}"))?;
    let dir = args.dir.clone();
    let budget = args.duration;
    let calibration = executor
        .run(async move { calibrate(&dir, budget).await })
        .map_err(|e| format!("--dir {}: {e}", args.dir.display()))?;
    let text = render(&calibration);
    let tmp = args.out.with_extension("tmp");
    std::fs::write(&tmp, &text)
        .and_then(|()| std::fs::rename(&tmp, &args.out))
        .map_err(|e| format!("--out {}: cannot write: {e}", args.out.display()))?;
    print_summary(&calibration, &args.out);
    Ok(0)
}

/// Measures the disk under `dir` within about `budget`.
pub async fn calibrate(dir: &Path, budget: Duration) -> crate::Result<Calibration> {
    let started = Instant::now();
    let disk = Disk::new();
    disk.prepare_dir(dir).await?;
    let path = dir.join(SCRATCH_FILE_NAME);
    let file = disk.open_rw(&path).await?;
    let result = measure(&file, budget).await;
    let _ = file.close().await;
    let _ = disk.remove_file(&path);
    let (writes, reads, sync) = result?;
    let (chosen, reasons) = choose(&writes);
    Ok(Calibration {
        writes,
        reads,
        sync,
        chosen,
        reasons,
        duration_ms: started.elapsed().as_millis() as u64,
    })
}

type Measured = (Vec<Cell>, Vec<Cell>, Vec<SyncLatency>);

async fn measure(file: &File, budget: Duration) -> crate::Result<Measured> {
    // Write the whole file once, so every cell writes over written blocks (as a recycled or
    // pre-written segment would) and reads find data.
    file.pre_allocate(SCRATCH_FILE_BYTES).await?;
    let fill = 4 << 20;
    let mut pos = 0;
    while pos < SCRATCH_FILE_BYTES {
        file.write_at(file.alloc(fill), pos).await?;
        pos += fill as u64;
    }
    file.fdatasync().await?;
    let cells = (WRITE_SIZES_BYTES.len() * QUEUE_DEPTHS.len() * 2) as u32;
    let cell_budget = budget * BANDWIDTH_BUDGET_PERCENT / 100 / cells;
    let mut writes = Vec::new();
    let mut reads = Vec::new();
    for size in WRITE_SIZES_BYTES {
        for depth in QUEUE_DEPTHS {
            writes.push(bandwidth_cell(file, size, depth, cell_budget, true).await?);
            reads.push(bandwidth_cell(file, size, depth, cell_budget, false).await?);
        }
    }
    let (chosen, _) = choose(&writes);
    let sync_budget = budget * (100 - BANDWIDTH_BUDGET_PERCENT) / 100 / 2;
    let mut sync = vec![sync_latency(file, BLOCK_BYTES as usize, sync_budget).await?];
    if chosen.write_bytes != BLOCK_BYTES as usize {
        sync.push(sync_latency(file, chosen.write_bytes, sync_budget).await?);
    }
    Ok((writes, reads, sync))
}

/// Sequential writes (or reads) of `size` bytes, `depth` submitted together, for `budget`.
/// A write cell ends with one `fdatasync`, so its bandwidth is durable bandwidth.
async fn bandwidth_cell(
    file: &File,
    size: usize,
    depth: usize,
    budget: Duration,
    write: bool,
) -> crate::Result<Cell> {
    assert!(
        (size * depth) as u64 <= SCRATCH_FILE_BYTES,
        "a round of {depth} x {size} bytes must fit the scratch file"
    );
    let started = Instant::now();
    let mut pos = 0u64;
    let mut bytes = 0u64;
    loop {
        let mut positions = Vec::with_capacity(depth);
        for _ in 0..depth {
            if pos + size as u64 > SCRATCH_FILE_BYTES {
                pos = 0;
            }
            positions.push(pos);
            pos += size as u64;
        }
        if write {
            let rounds = positions
                .iter()
                .map(|p| file.write_at(file.alloc(size), *p));
            for r in futures::future::join_all(rounds).await {
                r?;
            }
        } else {
            let rounds = positions.iter().map(|p| file.read_at(*p, size));
            for r in futures::future::join_all(rounds).await {
                r?;
            }
        }
        bytes += (size * depth) as u64;
        if started.elapsed() >= budget {
            break;
        }
    }
    if write {
        file.fdatasync().await?;
    }
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    Ok(Cell {
        size_bytes: size,
        queue_depth: depth,
        mib_per_s: bytes as f64 / (1 << 20) as f64 / seconds,
    })
}

/// One write of `size` bytes then `fdatasync`, repeated for `budget`.
async fn sync_latency(file: &File, size: usize, budget: Duration) -> crate::Result<SyncLatency> {
    let started = Instant::now();
    let mut samples_us = Vec::new();
    let mut pos = 0u64;
    while samples_us.is_empty()
        || (started.elapsed() < budget && samples_us.len() < SYNC_SAMPLES_MAX)
    {
        if pos + size as u64 > SCRATCH_FILE_BYTES {
            pos = 0;
        }
        let t = Instant::now();
        file.write_at(file.alloc(size), pos).await?;
        file.fdatasync().await?;
        samples_us.push(t.elapsed().as_micros() as u64);
        pos += size as u64;
    }
    samples_us.sort_unstable();
    let at = |q: usize| samples_us[(samples_us.len() - 1) * q / 100];
    Ok(SyncLatency {
        size_bytes: size,
        samples: samples_us.len(),
        p50_us: at(50),
        p90_us: at(90),
        p99_us: at(99),
        max_us: at(100),
    })
}

/// The rule of the module doc.
fn choose(writes: &[Cell]) -> (IoProperties, Vec<String>) {
    let mut reasons = Vec::new();
    let depth1: Vec<&Cell> = writes.iter().filter(|c| c.queue_depth == 1).collect();
    let best1 = depth1.iter().map(|c| c.mib_per_s).fold(0.0, f64::max);
    let write_bytes = depth1
        .iter()
        .find(|c| c.mib_per_s >= best1 * SATURATION_PERCENT / 100.0)
        .map_or(WRITE_SIZES_BYTES[WRITE_SIZES_BYTES.len() - 1], |c| {
            c.size_bytes
        });
    reasons.push(format!(
        "write_bytes = {write_bytes}: the smallest write that reaches {SATURATION_PERCENT}% of the \
         best one-at-a-time write bandwidth ({best1:.0} MiB/s); larger writes only make each \
         group commit wait longer"
    ));
    let at_size: Vec<&Cell> = writes
        .iter()
        .filter(|c| c.size_bytes == write_bytes)
        .collect();
    let best = at_size.iter().map(|c| c.mib_per_s).fold(0.0, f64::max);
    let writes_in_flight = at_size
        .iter()
        .find(|c| c.mib_per_s >= best * SATURATION_PERCENT / 100.0)
        .map_or(1, |c| c.queue_depth);
    reasons.push(format!(
        "writes_in_flight = {writes_in_flight}: the smallest queue depth that reaches \
         {SATURATION_PERCENT}% of the best bandwidth at that size ({best:.0} MiB/s)"
    ));
    (
        IoProperties {
            write_bytes,
            writes_in_flight,
        },
        reasons,
    )
}

/// The io-properties file's text.
pub fn render(c: &Calibration) -> String {
    use toml::Value;
    let cells = |cells: &[Cell]| {
        Value::Array(
            cells
                .iter()
                .map(|c| {
                    let mut t = toml::Table::new();
                    t.insert("size_bytes".into(), Value::Integer(c.size_bytes as i64));
                    t.insert("queue_depth".into(), Value::Integer(c.queue_depth as i64));
                    t.insert(
                        "mib_per_s".into(),
                        Value::Float((c.mib_per_s * 10.0).round() / 10.0),
                    );
                    Value::Table(t)
                })
                .collect(),
        )
    };
    let sync = Value::Array(
        c.sync
            .iter()
            .map(|s| {
                let mut t = toml::Table::new();
                for (k, v) in [
                    ("size_bytes", s.size_bytes as u64),
                    ("samples", s.samples as u64),
                    ("p50_us", s.p50_us),
                    ("p90_us", s.p90_us),
                    ("p99_us", s.p99_us),
                    ("max_us", s.max_us),
                ] {
                    t.insert(k.into(), Value::Integer(v as i64));
                }
                Value::Table(t)
            })
            .collect(),
    );
    let mut measured = toml::Table::new();
    measured.insert("duration_ms".into(), Value::Integer(c.duration_ms as i64));
    measured.insert("write".into(), cells(&c.writes));
    measured.insert("read".into(), cells(&c.reads));
    measured.insert("sync".into(), sync);
    let mut top = toml::Table::new();
    top.insert("version".into(), Value::Integer(IO_PROPERTIES_VERSION));
    top.insert(
        "write_bytes".into(),
        Value::Integer(c.chosen.write_bytes as i64),
    );
    top.insert(
        "writes_in_flight".into(),
        Value::Integer(c.chosen.writes_in_flight as i64),
    );
    top.insert("measured".into(), Value::Table(measured));
    let mut text = String::from(
        "# corelog io-properties, written by `corelog iotune`; read by \
         `corelog serve --io-properties`.\n",
    );
    for r in &c.reasons {
        text.push_str(&format!("# {r}\n"));
    }
    text.push_str(&top.to_string());
    text
}

fn print_summary(c: &Calibration, out: &Path) {
    println!("sequential bandwidth, MiB/s (write includes one fdatasync per cell / read):");
    print!("{:>10}", "size");
    for d in QUEUE_DEPTHS {
        print!("{:>16}", format!("depth {d}"));
    }
    println!();
    for size in WRITE_SIZES_BYTES {
        print!("{:>7} KiB", size >> 10);
        for d in QUEUE_DEPTHS {
            let get = |cells: &[Cell]| {
                cells
                    .iter()
                    .find(|c| c.size_bytes == size && c.queue_depth == d)
                    .map_or(0.0, |c| c.mib_per_s)
            };
            print!(
                "{:>16}",
                format!("{:.0} / {:.0}", get(&c.writes), get(&c.reads))
            );
        }
        println!();
    }
    for s in &c.sync {
        println!(
            "write + fdatasync of {} KiB: p50 {} us, p90 {} us, p99 {} us, max {} us ({} samples)",
            s.size_bytes >> 10,
            s.p50_us,
            s.p90_us,
            s.p99_us,
            s.max_us,
            s.samples
        );
    }
    for r in &c.reasons {
        println!("chose {r}");
    }
    println!(
        "note: serve makes write_bytes the appender's largest write and a group commit up to \
         writes_in_flight such writes, issued together before its one fdatasync"
    );
    println!(
        "wrote {} in {} ms; use it with `corelog serve --io-properties {}`",
        out.display(),
        c.duration_ms,
        out.display()
    );
}

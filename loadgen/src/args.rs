//! The command line: flags, their defaults, and their validation into a typed [`RunConfig`]
//! (or [`BaselineConfig`]). Every message names the flag to change.
//!
//! The flag names, defaults and the JSON `config` keys are a contract (issue 4): scripts and
//! the README's benchmark commands use them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use corelog::net::addr::Resolved;
use serde::Serialize;

use crate::record::{HEADER_BYTES, RECORD_BYTES_MAX};

/// The local dev node (`corelog serve` with no flags).
pub const ADDR_DEFAULT: &str = "127.0.0.1:7400";
/// The local dev node's certificates.
pub const TLS_DIR_DEFAULT: &str = "./corelog-data/tls";
/// Records per produce request at most.
pub const BATCH_RECORDS_MAX: usize = 100_000;
/// Produce requests one producer may keep in flight at most.
pub const IN_FLIGHT_MAX: usize = 4096;
/// Producers, and consumers, one run may have at most.
pub const CLIENTS_MAX: u32 = 100_000;
/// The longest run (duration + warm-up).
pub const RUN_SECS_MAX: u64 = 24 * 3600;
/// A produce request must fit in the node's default frame limit (16 MiB), with room for
/// the frame and protobuf overhead.
pub const BATCH_BYTES_MAX: usize = (16 << 20) - (64 << 10);
/// Per-record protobuf overhead in a produce request (tag + length varint).
const RECORD_FRAMING_BYTES: usize = 6;

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    version,
    about = "Measure a corelog node's throughput and latency, and check every record it serves",
    long_about = "Measure a corelog node's throughput and latency, and check every record it serves.\n\n\
        With no flags: a 10 s mixed produce/consume run (after 1 s of warm-up) against the local \
        dev node (127.0.0.1:7400, certificates in ./corelog-data/tls).\n\n\
        With --cluster: load a replicated cluster through its partitions' leaders; NOT_LEADER \
        answers are followed and reported as reroutes.\n\n\
        Exit codes: 0 the run finished and every record checked out; 1 violations (lost, \
        corrupt, duplicated or reordered records); 2 bad flags or the node could not be \
        reached; 3 no violations, but requests failed.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Measure this machine's ceilings: raw O_DIRECT write bandwidth and 4 KiB
    /// write+fdatasync latency on a directory's disk, and loopback TCP bandwidth.
    Baseline(BaselineArgs),
}

/// Where consumers start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum From {
    /// The partition's end when the run starts: consumers follow what this run produces (tail).
    End,
    /// The oldest record still held: consumers catch up through everything stored.
    Start,
    /// This offset.
    Offset(u64),
}

impl std::str::FromStr for From {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "end" => Ok(From::End),
            "start" => Ok(From::Start),
            n => n
                .parse()
                .map(From::Offset)
                .map_err(|_| format!("bad start {s:?}: expected `end`, `start` or an offset")),
        }
    }
}

/// How consumers read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsumeApi {
    /// Subscribe: the node pushes records, flow controlled by credits.
    Subscribe,
    /// Consume requests (long-poll), one in flight per consumer.
    Poll,
}

/// Which replica cluster consumers read from (`--consume-from`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsumeFrom {
    /// The partition's leader.
    Leader,
    /// The partition's other replicas, spread over the consumers (the leader when it has none).
    Follower,
}

/// Flags of a load run (the default command).
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Node(s) to load, IP:PORT or HOST:PORT, comma-separated or repeated. Each is loaded as an
    /// independent node (with `--cluster`: nodes of one cluster to ask for its partitions'
    /// leaders). A host name's addresses are tried in turn; the node's certificate must name
    /// the host.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = ADDR_DEFAULT,
        value_name = "HOST:PORT"
    )]
    pub addr: Vec<String>,
    /// Load a replicated cluster: `--addr` names one or more of its nodes; each partition is
    /// loaded once, produces go to its leader (from Metadata), and a NOT_LEADER answer sends
    /// the batch on to the leader it names (counted as a reroute, not an error: the batch was
    /// certainly not applied).
    #[arg(long)]
    pub cluster: bool,
    /// With `--cluster`: the replica consumers read from (every replica serves what is
    /// committed, at the same offsets).
    #[arg(long, value_enum)]
    pub consume_from: Option<ConsumeFrom>,
    /// Directory with `ca.pem` and the client certificate.
    #[arg(long, default_value = TLS_DIR_DEFAULT)]
    pub tls_dir: PathBuf,
    /// Which certificate in the TLS directory to present (`NAME.pem`, `NAME-key.pem`).
    #[arg(long, default_value = "client")]
    pub tls_name: String,
    /// Number of cores to run on (the first N online CPUs), one executor each. Default: all.
    #[arg(long, conflicts_with = "cpuset")]
    pub cores: Option<usize>,
    /// Exact CPUs to run on, e.g. `1` or `2,3`.
    #[arg(long, value_delimiter = ',')]
    pub cpuset: Option<Vec<usize>>,
    /// Partitions to load, e.g. `0`, `0,2`, `0-3`. Default: every partition of the node.
    #[arg(long, value_parser = parse_partitions)]
    pub partitions: Option<Partitions>,
    /// Producers in all, spread over cores and partitions. Default: one per partition.
    #[arg(long)]
    pub producers: Option<u32>,
    /// Consumers in all, spread over cores and partitions. Default: one per partition.
    #[arg(long)]
    pub consumers: Option<u32>,
    /// Bytes per record (at least 40: producer id, sequence, send time, checksum).
    #[arg(long, default_value_t = 1024)]
    pub record_bytes: usize,
    /// Records per produce request.
    #[arg(long, default_value_t = 16)]
    pub batch_records: usize,
    /// Produce requests each producer keeps in flight.
    #[arg(long, default_value_t = 8)]
    pub in_flight: usize,
    /// Records per second over all producers (open loop; latency measured from each batch's
    /// scheduled send time). Default: as fast as acknowledgements allow (closed loop).
    #[arg(long)]
    pub rate: Option<f64>,
    /// How long to measure, e.g. `10s`, `500ms`, `2m`.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Load before measuring, not counted in the figures (records are still checked).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Seed of the record padding bytes.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where consumers start: `end` (follow new records), `start` (catch up from the oldest
    /// record), or an offset.
    #[arg(long, default_value = "end")]
    pub from: From,
    /// How consumers read.
    #[arg(long, value_enum, default_value_t = ConsumeApi::Subscribe)]
    pub consume_api: ConsumeApi,
    /// Write every figure and the configuration as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write the produce latency distribution in HdrHistogram's percentile text format to
    /// FILE (milliseconds), end-to-end and consume beside it (`FILE.end_to_end.hgrm`, ...).
    #[arg(long, value_name = "FILE")]
    pub hgrm: Option<PathBuf>,
    /// Write a latency-by-percentile plot (SVG) to this file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
}

/// `loadgen baseline` flags.
#[derive(Args, Debug, Clone)]
pub struct BaselineArgs {
    /// A directory on the disk to measure (the node's data directory); a scratch file is
    /// written there and removed.
    #[arg(long, default_value = "./corelog-data")]
    pub dir: PathBuf,
    /// How long each measurement runs.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub duration: Duration,
    /// CPUs to run on: disk tests on the first, the loopback sender on the first and the
    /// receiver on the second (if given). Default: unpinned.
    #[arg(long, value_delimiter = ',')]
    pub cpuset: Option<Vec<usize>>,
    /// Write the figures as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// A list of partitions, ascending, without repeats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Partitions(pub Vec<u32>);

/// A validated load run.
#[derive(Debug, Clone, Serialize)]
pub struct RunConfig {
    /// Where each `--addr` node is reached: its first address (after discovery, the address
    /// that answered). In the report.
    pub addr: Vec<SocketAddr>,
    /// `--addr` resolved, in the same order: every address of each node, and the name its
    /// certificate must carry (the host of `HOST:PORT`, the IP address of `IP:PORT`).
    #[serde(skip)]
    pub resolved: Vec<Resolved>,
    /// `--addr` names nodes of one replicated cluster.
    pub cluster: bool,
    /// Cluster runs: the replica consumers read from.
    pub consume_from: Option<ConsumeFrom>,
    pub tls_dir: PathBuf,
    pub tls_name: String,
    /// CPUs, one executor pinned to each.
    pub cpus: Vec<usize>,
    /// Requested partitions (None: all of each node's).
    pub partitions: Option<Vec<u32>>,
    /// None: one per partition, known once the nodes are asked.
    pub producers: Option<u32>,
    pub consumers: Option<u32>,
    pub record_bytes: usize,
    pub batch_records: usize,
    pub in_flight: usize,
    /// Records per second over all producers; None: closed loop.
    pub rate: Option<f64>,
    #[serde(serialize_with = "as_secs")]
    pub duration: Duration,
    #[serde(serialize_with = "as_secs")]
    pub warmup: Duration,
    pub seed: u64,
    pub from: From,
    pub consume_api: ConsumeApi,
    pub json: Option<PathBuf>,
    pub hgrm: Option<PathBuf>,
    pub plot: Option<PathBuf>,
}

/// A validated `baseline` run.
#[derive(Debug, Clone, Serialize)]
pub struct BaselineConfig {
    pub dir: PathBuf,
    #[serde(serialize_with = "as_secs")]
    pub duration: Duration,
    pub cpus: Option<Vec<usize>>,
    pub json: Option<PathBuf>,
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl RunArgs {
    /// Checks the flags against each other and this host (`online_cpus`).
    pub fn validate(&self, online_cpus: &[usize]) -> Result<RunConfig, String> {
        let cpus = choose_cpus(self.cores, self.cpuset.as_deref(), online_cpus)?;
        if self.addr.is_empty() {
            return Err("--addr: give at least one node address".into());
        }
        if self.consume_from.is_some() && !self.cluster {
            return Err(
                "--consume-from needs --cluster (a standalone node has one replica)".into(),
            );
        }
        if !(HEADER_BYTES..=RECORD_BYTES_MAX).contains(&self.record_bytes) {
            return Err(format!(
                "--record-bytes {}: must be between {HEADER_BYTES} (the checked header) and \
                 {RECORD_BYTES_MAX}",
                self.record_bytes
            ));
        }
        if !(1..=BATCH_RECORDS_MAX).contains(&self.batch_records) {
            return Err(format!(
                "--batch-records {}: must be between 1 and {BATCH_RECORDS_MAX}",
                self.batch_records
            ));
        }
        let batch_bytes = self.batch_records * (self.record_bytes + RECORD_FRAMING_BYTES);
        if batch_bytes > BATCH_BYTES_MAX {
            return Err(format!(
                "--batch-records {} × --record-bytes {} = {batch_bytes} bytes per request: \
                 more than the node's 16 MiB frame limit allows ({BATCH_BYTES_MAX}); lower one",
                self.batch_records, self.record_bytes
            ));
        }
        if !(1..=IN_FLIGHT_MAX).contains(&self.in_flight) {
            return Err(format!(
                "--in-flight {}: must be between 1 and {IN_FLIGHT_MAX}",
                self.in_flight
            ));
        }
        for (flag, n) in [
            ("--producers", self.producers),
            ("--consumers", self.consumers),
        ] {
            if n.is_some_and(|n| n > CLIENTS_MAX) {
                return Err(format!("{flag}: at most {CLIENTS_MAX}"));
            }
        }
        if self.producers == Some(0) && self.consumers == Some(0) {
            return Err("--producers 0 --consumers 0: nothing to do".into());
        }
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(format!(
                    "--rate {rate}: must be a positive number of records per second"
                ));
            }
            if self.producers == Some(0) {
                return Err("--rate needs producers (--producers is 0)".into());
            }
        }
        if self.duration.is_zero() {
            return Err("--duration must be longer than 0".into());
        }
        if (self.duration + self.warmup).as_secs() > RUN_SECS_MAX {
            return Err(format!(
                "--duration + --warmup: at most {RUN_SECS_MAX} s in all"
            ));
        }
        if self.tls_name.is_empty() {
            return Err("--tls-name must not be empty".into());
        }
        for (flag, path) in [
            ("--json", &self.json),
            ("--hgrm", &self.hgrm),
            ("--plot", &self.plot),
        ] {
            if let Some(path) = path {
                check_output_path(flag, path)?;
            }
        }
        // Last: a host name is looked up (blocking), which the other checks need not wait for.
        let resolved = self
            .addr
            .iter()
            .map(|a| corelog::net::addr::resolve_blocking(a).map_err(|e| format!("--addr: {e}")))
            .collect::<Result<Vec<Resolved>, String>>()?;
        Ok(RunConfig {
            addr: resolved.iter().map(|r| r.addrs[0]).collect(),
            resolved,
            cluster: self.cluster,
            consume_from: self
                .cluster
                .then(|| self.consume_from.unwrap_or(ConsumeFrom::Leader)),
            tls_dir: self.tls_dir.clone(),
            tls_name: self.tls_name.clone(),
            cpus,
            partitions: self.partitions.clone().map(|p| p.0),
            producers: self.producers,
            consumers: self.consumers,
            record_bytes: self.record_bytes,
            batch_records: self.batch_records,
            in_flight: self.in_flight,
            rate: self.rate,
            duration: self.duration,
            warmup: self.warmup,
            seed: self.seed,
            from: self.from,
            consume_api: self.consume_api,
            json: self.json.clone(),
            hgrm: self.hgrm.clone(),
            plot: self.plot.clone(),
        })
    }
}

impl BaselineArgs {
    pub fn validate(&self, online_cpus: &[usize]) -> Result<BaselineConfig, String> {
        if self.duration.is_zero() || self.duration.as_secs() > RUN_SECS_MAX {
            return Err(format!(
                "--duration: must be between 1 ms and {RUN_SECS_MAX} s"
            ));
        }
        let cpus = match &self.cpuset {
            Some(set) => Some(choose_cpus(None, Some(set), online_cpus)?),
            None => None,
        };
        if let Some(path) = &self.json {
            check_output_path("--json", path)?;
        }
        Ok(BaselineConfig {
            dir: self.dir.clone(),
            duration: self.duration,
            cpus,
            json: self.json.clone(),
        })
    }
}

/// The CPUs to pin to: `--cpuset` as given (kept in the given order), the first `--cores`
/// online CPUs, or all of them.
fn choose_cpus(
    cores: Option<usize>,
    cpuset: Option<&[usize]>,
    online: &[usize],
) -> Result<Vec<usize>, String> {
    if online.is_empty() {
        return Err("no online CPUs found".into());
    }
    match (cpuset, cores) {
        (Some(set), _) => {
            if set.is_empty() {
                return Err("--cpuset is empty".into());
            }
            let mut seen = Vec::new();
            for &cpu in set {
                if !online.contains(&cpu) {
                    return Err(format!(
                        "--cpuset: CPU {cpu} is not online (online: {online:?})"
                    ));
                }
                if seen.contains(&cpu) {
                    return Err(format!("--cpuset: CPU {cpu} given twice"));
                }
                seen.push(cpu);
            }
            Ok(seen)
        }
        (None, Some(n)) => {
            if n == 0 || n > online.len() {
                return Err(format!(
                    "--cores {n}: must be between 1 and {} (online CPUs)",
                    online.len()
                ));
            }
            Ok(online[..n].to_vec())
        }
        (None, None) => Ok(online.to_vec()),
    }
}

/// Refuses an output file whose directory does not exist, before the run rather than after.
fn check_output_path(flag: &str, path: &Path) -> Result<(), String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(format!(
            "{flag} {}: directory {} does not exist",
            path.display(),
            dir.display()
        ));
    }
    if path.is_dir() {
        return Err(format!("{flag} {}: is a directory", path.display()));
    }
    Ok(())
}

/// `10s`, `500ms`, `2m`, `1h`, `250us`, or a bare number of seconds (`2.5`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("bad duration {s:?}: expected e.g. 10s, 500ms, 2m"))?;
    let secs_per_unit = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "bad duration unit {other:?} in {s:?}: use us, ms, s, m or h"
            ));
        }
    };
    let secs = value * secs_per_unit;
    if !secs.is_finite() || secs > RUN_SECS_MAX as f64 {
        return Err(format!(
            "duration {s:?} is too long (at most {RUN_SECS_MAX} s)"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `0`, `0,2`, `0-3`, `0-3,8`.
pub fn parse_partitions(s: &str) -> Result<Partitions, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("bad partition list {s:?}: expected e.g. 0 or 0,2 or 0-3");
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (
                a.trim().parse::<u32>().map_err(|_| bad())?,
                b.trim().parse::<u32>().map_err(|_| bad())?,
            ),
            None => {
                let p = part.parse::<u32>().map_err(|_| bad())?;
                (p, p)
            }
        };
        if lo > hi {
            return Err(format!("bad partition range {part:?}: {lo} > {hi}"));
        }
        if (hi - lo) as usize > 1 << 16 {
            return Err(format!("partition range {part:?} is too large"));
        }
        out.extend(lo..=hi);
    }
    if out.is_empty() {
        return Err("--partitions is empty".into());
    }
    out.sort_unstable();
    out.dedup();
    Ok(Partitions(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<RunConfig, String> {
        let mut argv = vec!["loadgen"];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        cli.run.validate(&[0, 1])
    }

    #[test]
    fn no_flags_is_a_ten_second_mixed_run_against_the_dev_node() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.addr, vec!["127.0.0.1:7400".parse().unwrap()]);
        assert_eq!(c.tls_dir, PathBuf::from("./corelog-data/tls"));
        assert_eq!(c.tls_name, "client");
        assert_eq!(c.duration, Duration::from_secs(10));
        assert_eq!(c.cpus, vec![0, 1]);
        assert_eq!(c.producers, None);
        assert_eq!(c.consumers, None);
        assert_eq!(c.rate, None);
        assert_eq!(c.from, From::End);
        assert!(!c.cluster);
        assert_eq!(c.consume_from, None);
    }

    #[test]
    fn cluster_runs_read_from_the_leader_unless_told_otherwise() {
        let c = parse(&["--cluster", "--addr", "127.0.0.1:1,127.0.0.1:2"]).unwrap();
        assert!(c.cluster);
        assert_eq!(c.addr.len(), 2);
        assert_eq!(c.consume_from, Some(ConsumeFrom::Leader));
        let c = parse(&["--cluster", "--consume-from", "follower"]).unwrap();
        assert_eq!(c.consume_from, Some(ConsumeFrom::Follower));
        let err = parse(&["--consume-from", "follower"]).unwrap_err();
        assert!(err.contains("--cluster"), "{err}");
    }

    #[test]
    fn addresses_take_ip_or_host_names() {
        let c = parse(&["--addr", "127.0.0.1:7401,[::1]:7402"]).unwrap();
        assert_eq!(
            c.addr,
            vec![
                "127.0.0.1:7401".parse::<SocketAddr>().unwrap(),
                "[::1]:7402".parse().unwrap()
            ]
        );
        assert_eq!(c.resolved.len(), 2);
        assert_eq!(c.resolved[0].addrs, vec![c.addr[0]]);
        assert_eq!(c.resolved[0].server_name.to_str(), "127.0.0.1");

        let c = parse(&["--cluster", "--addr", "localhost:7400"]).unwrap();
        assert_eq!(c.addr.len(), 1);
        assert!(
            c.addr[0].ip().is_loopback() && c.addr[0].port() == 7400,
            "{c:?}"
        );
        let r = &c.resolved[0];
        assert_eq!(r.addrs[0], c.addr[0]);
        assert!(
            r.addrs
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 7400),
            "{r:?}"
        );
        // The certificate name is the DNS name, not one of its addresses.
        assert_eq!(r.server_name.to_str(), "localhost");
        assert!(
            format!("{:?}", r.server_name).starts_with("DnsName"),
            "{r:?}"
        );
    }

    #[test]
    fn a_malformed_address_names_the_flag_and_the_address() {
        for (addr, why) in [
            ("localhost", "not HOST:PORT"),
            ("localhost:http", "not a port number"),
            ("bad host:7400", "bad host:7400"),
        ] {
            let err = parse(&["--addr", addr]).unwrap_err();
            assert!(err.contains("--addr"), "{addr}: {err}");
            assert!(err.contains(addr), "{addr}: {err}");
            assert!(err.contains(why), "{addr}: {err}");
        }
    }

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("2.5"), Ok(Duration::from_millis(2500)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("1e300").is_err());
    }

    #[test]
    fn partitions_take_lists_and_ranges() {
        assert_eq!(parse_partitions("3"), Ok(Partitions(vec![3])));
        assert_eq!(
            parse_partitions("4,0-2,1"),
            Ok(Partitions(vec![0, 1, 2, 4]))
        );
        assert!(parse_partitions("2-1").is_err());
        assert!(parse_partitions("x").is_err());
        assert!(parse_partitions("").is_err());
    }

    #[test]
    fn bad_values_name_the_flag() {
        for (args, flag) in [
            (&["--record-bytes", "8"][..], "--record-bytes"),
            (&["--batch-records", "0"][..], "--batch-records"),
            (&["--in-flight", "0"][..], "--in-flight"),
            (&["--rate", "0"][..], "--rate"),
            (&["--cores", "3"][..], "--cores"),
            (&["--cpuset", "7"][..], "--cpuset"),
            (&["--duration", "0s"][..], "--duration"),
            (
                &["--record-bytes", "1048576", "--batch-records", "100"][..],
                "--batch-records",
            ),
            (&["--producers", "0", "--consumers", "0"][..], "--producers"),
        ] {
            let err = parse(args).unwrap_err();
            assert!(err.contains(flag), "{args:?}: {err}");
        }
    }

    #[test]
    fn from_takes_end_start_or_an_offset() {
        assert_eq!("end".parse::<From>(), Ok(From::End));
        assert_eq!("start".parse::<From>(), Ok(From::Start));
        assert_eq!("42".parse::<From>(), Ok(From::Offset(42)));
        assert!("middle".parse::<From>().is_err());
    }
}

//! The node's configuration: `corelog serve` flags, validated once at start-up into a typed
//! [`NodeConfig`] with documented defaults. Messages name the flag to change.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, FromArgMatches};

use crate::storage::{FsyncPolicy, LogConfig};

/// Default client/peer port.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:7400";
/// Default stats HTTP port.
pub const STATS_LISTEN_DEFAULT: &str = "127.0.0.1:7401";
/// Default data directory.
pub const DATA_DIR_DEFAULT: &str = "./corelog-data";
/// Connections a node accepts at once, over all cores.
pub const CONNECTIONS_MAX_DEFAULT: usize = 4096;
/// Requests one connection may have in flight before the node stops reading from it.
pub const IN_FLIGHT_MAX_DEFAULT: usize = 1024;
/// Partitions a node may host.
pub const PARTITIONS_MAX: u32 = 4096;
/// The largest frame the protocol admits.
pub const FRAME_BYTES_LIMIT: u32 = 256 << 20;
pub const FRAME_BYTES_MAX_DEFAULT: u32 = 16 << 20;

/// `corelog serve` flags.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Data directory (partitions, TLS material, node metadata).
    #[arg(long, default_value = DATA_DIR_DEFAULT)]
    pub data_dir: PathBuf,
    /// Address of the one TLS port (clients and peers).
    #[arg(long, default_value = LISTEN_DEFAULT)]
    pub listen: SocketAddr,
    /// Address of the plain-HTTP stats endpoint (/metrics, /stats, /health).
    #[arg(long, default_value = STATS_LISTEN_DEFAULT)]
    pub stats_listen: SocketAddr,
    /// Number of cores to run on (the first N online CPUs). Default: all.
    #[arg(long, conflicts_with = "cpuset")]
    pub cores: Option<usize>,
    /// Exact CPUs to run on, e.g. `0,1`.
    #[arg(long, value_delimiter = ',')]
    pub cpuset: Option<Vec<usize>>,
    /// Partitions this node hosts; fixed at first start. Default: one per core.
    #[arg(long)]
    pub partitions: Option<u32>,
    /// Directory with `ca.pem`, `NAME.pem`, `NAME-key.pem` (see `corelog certs`).
    /// Default: a dev CA and certificates created under `<data-dir>/tls/`.
    #[arg(long)]
    pub tls_dir: Option<PathBuf>,
    /// Which certificate in the TLS directory is this node's.
    #[arg(long, default_value = "node")]
    pub tls_name: String,
    /// ACL file (`subject, object, action` lines). Without one, any certificate of the cluster
    /// CA may produce and consume; admin and replicate need a node certificate.
    #[arg(long)]
    pub acl: Option<PathBuf>,
    /// Segment size at which a partition's log rolls.
    #[arg(long, default_value_t = 1 << 30)]
    pub segment_bytes: u64,
    /// Delete the oldest segments of a partition beyond this many bytes.
    #[arg(long)]
    pub retention_bytes: Option<u64>,
    /// Delete segments whose newest record is older than this.
    #[arg(long)]
    pub retention_ms: Option<u64>,
    /// How often size/age retention runs.
    #[arg(long, default_value_t = 30_000)]
    pub retention_check_ms: u64,
    /// `always` (ack after fdatasync) or `interval:MS` (UNSAFE: ack after write).
    #[arg(long, default_value = "always")]
    pub fsync: FsyncPolicy,
    /// Largest frame accepted, in bytes.
    #[arg(long, default_value_t = FRAME_BYTES_MAX_DEFAULT)]
    pub frame_bytes_max: u32,
    /// Connections accepted at once, over all cores.
    #[arg(long, default_value_t = CONNECTIONS_MAX_DEFAULT)]
    pub connections_max: usize,
    /// This node's id in the cluster (a number ≥ 1, unique in the cluster, fixed at first
    /// start).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub node_id: u64,
    /// Run as a member of a replicated cluster: every partition is a Raft group. Without
    /// `--join`, a node with an empty data directory starts a new cluster of one. Fixed at
    /// first start (a standalone data directory stays standalone).
    #[arg(long)]
    pub cluster: bool,
    /// Join the running cluster one of whose nodes listens at HOST:PORT (implies `--cluster`):
    /// this node is added to every partition as a learner, caught up, then promoted to voter
    /// while a partition has fewer than `--replication-factor` voters.
    #[arg(long, value_name = "HOST:PORT")]
    pub join: Option<String>,
    /// The address other nodes and clients use to reach this node (default: `--listen`).
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise: Option<String>,
    /// Voters per partition: replication factor = min(cluster size, this).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=7))]
    pub replication_factor: u64,
    /// How long a starting cluster node waits for every partition to have a leader before
    /// `/health` reports it ready anyway (it keeps serving what it can).
    #[arg(long, default_value_t = 10_000)]
    pub leader_wait_ms: u64,
    /// Bytes of one Raft snapshot a node holds in memory: to receive it before installing
    /// it, or to send it (a follower behind the retention point gets the retained segments).
    /// A larger snapshot is refused, and the leader retries less and less often (1 s, doubling
    /// to 60 s); raise this on every node when retention keeps more than this per partition.
    #[arg(long, default_value_t = crate::net::conn::SNAPSHOT_BYTES_MAX_DEFAULT,
          value_parser = clap::value_parser!(u64).range(1 << 20..=1 << 40))]
    pub snapshot_bytes_max: u64,
    /// How often each core checks the leaders of its partitions (0: never). A node that leads
    /// at least two more of them than another caught-up voter (one holding what the leader
    /// held a moment before) hands one partition to the voter that leads the fewest.
    /// Partitions start led by the node that bootstrapped them; this spreads the leaders, and
    /// so the write load.
    #[arg(long, default_value_t = 10_000)]
    pub leader_balance_interval_ms: u64,
    /// Raft heartbeat interval.
    #[arg(long, default_value_t = 50, hide = true)]
    pub raft_heartbeat_ms: u64,
    /// Raft election timeout range (a follower that hears no leader for this long stands).
    #[arg(long, default_value_t = 250, hide = true)]
    pub raft_election_min_ms: u64,
    #[arg(long, default_value_t = 500, hide = true)]
    pub raft_election_max_ms: u64,
    /// TESTING ONLY: make the node misbehave so tools can prove they notice
    /// (`drop-record:N` skips every Nth record served to readers, `corrupt-record:N` flips a
    /// byte in it). Never use in production.
    #[arg(long, hide = true)]
    pub inject_fault: Option<ReadFault>,
    /// TESTING ONLY: after this many writes to a partition's log files, every further write
    /// and allocation of that partition fails with ENOSPC, as on a full disk. Never use in
    /// production.
    #[arg(long, hide = true)]
    pub inject_disk_full_after_writes: Option<u64>,
    /// TESTING ONLY: every `fdatasync` of a partition's log waits this many milliseconds
    /// first, as on a slow disk. Never use in production.
    #[arg(long, hide = true)]
    pub inject_sync_delay_ms: Option<u64>,
    /// TESTING ONLY: answer Raft peers as a node built before entries of kind STORED_BATCH
    /// did: refuse them as an unknown kind and never say it takes them. Never use in
    /// production.
    #[arg(long, hide = true)]
    pub inject_legacy_replication: bool,
    /// TOML file with any of these flags by long name (`data-dir = "/var/lib/corelog"`,
    /// `segment-bytes = 1073741824`); flags given on the command line override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// io-properties file written by `corelog iotune`: sets the appender's write size.
    #[arg(long)]
    pub io_properties: Option<PathBuf>,
}

/// A deliberate fault in what readers are served (see `--inject-fault`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFault {
    /// Leave out every Nth record served.
    DropRecord { every: u64 },
    /// Flip a byte of every Nth record served.
    CorruptRecord { every: u64 },
}

impl std::str::FromStr for ReadFault {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, n) = s.split_once(':').ok_or_else(|| {
            format!("bad fault {s:?}: expected drop-record:N or corrupt-record:N")
        })?;
        let every: u64 = n
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("bad fault period {n:?}: expected a positive number"))?;
        match kind {
            "drop-record" => Ok(ReadFault::DropRecord { every }),
            "corrupt-record" => Ok(ReadFault::CorruptRecord { every }),
            _ => Err(format!(
                "bad fault {kind:?}: expected drop-record or corrupt-record"
            )),
        }
    }
}

/// How the node gets its TLS material.
#[derive(Debug, Clone)]
pub enum TlsSource {
    /// A directory laid out by `corelog certs`.
    Dir { dir: PathBuf, name: String },
    /// Dev certificates created (once) under `<data>/tls/`.
    Dev { dir: PathBuf },
}

/// How a cluster node replicates (`--cluster`, `--join`).
#[derive(Debug, Clone)]
pub struct ReplicationConfig {
    /// A node of the running cluster to join through (`None`: bootstrap if new).
    pub join: Option<String>,
    /// The address other nodes use for this one; `None`: the bound listen address.
    pub advertise: Option<String>,
    pub replication_factor: usize,
    pub leader_wait_ms: u64,
    pub timing: crate::raft::group::RaftTiming,
    /// `--snapshot-bytes-max`: the largest snapshot one transfer may assemble.
    pub snapshot_bytes_max: u64,
    /// `--leader-balance-interval-ms`; `None`: no leader balancing.
    pub leader_balance_interval: Option<Duration>,
}

/// A validated node configuration.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: u64,
    /// `Some` when the node is a member of a replicated cluster.
    pub replication: Option<ReplicationConfig>,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub stats_listen: SocketAddr,
    /// CPUs to pin one executor each to.
    pub cpus: Vec<usize>,
    /// Requested partition count; the stored count wins after the first start.
    pub partitions: Option<u32>,
    pub tls: TlsSource,
    pub acl: Option<PathBuf>,
    pub log: LogConfig,
    pub frame_bytes_max: u32,
    pub connections_max: usize,
    pub in_flight_max: usize,
    /// Testing only: a deliberate fault in what readers are served.
    pub read_fault: Option<ReadFault>,
    /// Testing only: each partition's log sees a full disk after this many writes.
    pub disk_full_after_writes: Option<u64>,
    /// Testing only: each partition's log syncs this much slower.
    pub sync_delay: Option<Duration>,
    /// Testing only: play a node that does not know entries of kind STORED_BATCH.
    pub legacy_replication: bool,
    /// Writes in flight that `--io-properties` chose: a group commit is up to this many writes
    /// of `write_bytes` (`LogConfig::write_bytes_max`), issued together.
    pub writes_in_flight: Option<usize>,
}

impl NodeConfig {
    /// Validates `serve` flags against this host (`online_cpus`).
    pub fn from_args(args: &ServeArgs, online_cpus: &[usize]) -> Result<NodeConfig, String> {
        if online_cpus.is_empty() {
            return Err("no online CPUs found".into());
        }
        let cpus = match (&args.cpuset, args.cores) {
            (Some(set), _) => {
                if set.is_empty() {
                    return Err("--cpuset is empty".into());
                }
                for cpu in set {
                    if !online_cpus.contains(cpu) {
                        return Err(format!(
                            "--cpuset: CPU {cpu} is not online (online: {online_cpus:?})"
                        ));
                    }
                }
                let mut set = set.clone();
                set.sort_unstable();
                set.dedup();
                set
            }
            (None, Some(n)) => {
                if n == 0 || n > online_cpus.len() {
                    return Err(format!(
                        "--cores {n}: must be between 1 and {} (online CPUs)",
                        online_cpus.len()
                    ));
                }
                online_cpus[..n].to_vec()
            }
            (None, None) => online_cpus.to_vec(),
        };
        if let Some(p) = args.partitions
            && (p == 0 || p > PARTITIONS_MAX)
        {
            return Err(format!(
                "--partitions {p}: must be between 1 and {PARTITIONS_MAX}"
            ));
        }
        if args.frame_bytes_max < 1024 || args.frame_bytes_max > FRAME_BYTES_LIMIT {
            return Err(format!(
                "--frame-bytes-max {}: must be between 1024 and {FRAME_BYTES_LIMIT}",
                args.frame_bytes_max
            ));
        }
        if args.connections_max == 0 {
            return Err("--connections-max must be at least 1".into());
        }
        let replication = if args.cluster || args.join.is_some() {
            let timing = crate::raft::group::RaftTiming {
                heartbeat_ms: args.raft_heartbeat_ms,
                election_min_ms: args.raft_election_min_ms,
                election_max_ms: args.raft_election_max_ms,
            };
            crate::raft::group::raft_config(timing).map_err(|e| {
                format!("{e}: check --raft-heartbeat-ms / --raft-election-min-ms / -max-ms")
            })?;
            for (flag, addr) in [("--join", &args.join), ("--advertise", &args.advertise)] {
                if let Some(addr) = addr
                    && addr
                        .rsplit_once(':')
                        .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
                {
                    return Err(format!("{flag} {addr:?}: expected HOST:PORT"));
                }
            }
            Some(ReplicationConfig {
                join: args.join.clone(),
                advertise: args.advertise.clone(),
                replication_factor: args.replication_factor as usize,
                leader_wait_ms: args.leader_wait_ms,
                timing,
                snapshot_bytes_max: args.snapshot_bytes_max,
                leader_balance_interval: (args.leader_balance_interval_ms > 0)
                    .then(|| Duration::from_millis(args.leader_balance_interval_ms)),
            })
        } else {
            None
        };
        let log = LogConfig {
            segment_bytes_max: args.segment_bytes,
            retention_bytes: args.retention_bytes,
            retention_ms: args.retention_ms,
            retention_check_ms: args.retention_check_ms,
            fsync: args.fsync,
            // A produce request is one frame; the batch it becomes must fit the log's limit.
            // A batch adds a 56-byte header and 4 bytes per record, while each record costs at
            // least 2 bytes of protobuf framing: a batch is at most twice its frame + header.
            batch_bytes_max: (args.frame_bytes_max as usize * 2
                + crate::storage::format::HEADER_BYTES)
                .min(crate::storage::format::BATCH_BYTES_MAX),
            queue_bytes_max: (64 << 20usize).max(args.frame_bytes_max as usize * 2 + 64),
            ..LogConfig::default()
        };
        log.validate().map_err(|e| match e {
            crate::Error::InvalidArgument(msg) => format!(
                "{}: check --segment-bytes / --retention-* / --frame-bytes-max",
                msg.replace("segment_bytes_max", "--segment-bytes")
            ),
            other => other.to_string(),
        })?;
        let mut log = log;
        let mut writes_in_flight = None;
        if let Some(path) = &args.io_properties {
            let props = crate::tuning::iotune::IoProperties::load(path)?;
            // A group commit of up to `writes_in_flight` writes of `write_bytes`, all in flight
            // at once, then one fdatasync.
            log.write_bytes_max = Some(props.write_bytes);
            log.flush_bytes_max = props.write_bytes * props.writes_in_flight;
            writes_in_flight = Some(props.writes_in_flight);
            log.validate()
                .map_err(|e| format!("--io-properties {}: write_bytes: {e}", path.display()))?;
        }
        let tls = match &args.tls_dir {
            Some(dir) => TlsSource::Dir {
                dir: dir.clone(),
                name: args.tls_name.clone(),
            },
            None => TlsSource::Dev {
                dir: std::path::absolute(args.data_dir.join("tls"))
                    .map_err(|e| format!("--data-dir {}: {e}", args.data_dir.display()))?,
            },
        };
        let data_dir = std::path::absolute(&args.data_dir)
            .map_err(|e| format!("--data-dir {}: {e}", args.data_dir.display()))?;
        Ok(NodeConfig {
            node_id: args.node_id,
            replication,
            data_dir,
            listen: args.listen,
            stats_listen: args.stats_listen,
            cpus,
            partitions: args.partitions,
            tls,
            acl: args.acl.clone(),
            log,
            frame_bytes_max: args.frame_bytes_max,
            connections_max: args.connections_max,
            in_flight_max: IN_FLIGHT_MAX_DEFAULT,
            read_fault: args.inject_fault,
            disk_full_after_writes: args.inject_disk_full_after_writes,
            sync_delay: args.inject_sync_delay_ms.map(Duration::from_millis),
            legacy_replication: args.inject_legacy_replication,
            writes_in_flight,
        })
    }
}

/// Keys a config file may not hold: the file cannot name another file.
const CONFIG_KEYS_FORBIDDEN: &[&str] = &["config"];
/// A config file larger than this is refused (it holds a few dozen settings).
const CONFIG_FILE_BYTES_MAX: u64 = 1 << 20;

impl ServeArgs {
    /// Parses `serve` flags (`argv` starts with the subcommand name, `serve`) and, when they
    /// name `--config FILE`, merges the file under them: every key of the file is a `serve`
    /// flag by its long name, and a flag given on the command line wins over the file. Each
    /// key's value goes through the same parser as the flag, so the file accepts exactly what
    /// the command line accepts; an unknown key or a bad value is an error naming the file and
    /// the key.
    pub fn parse_with_config_file<I, T>(argv: I) -> Result<ServeArgs, String>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let argv: Vec<std::ffi::OsString> = argv.into_iter().map(Into::into).collect();
        let command = serve_command();
        let matches = command
            .clone()
            .try_get_matches_from(&argv)
            .map_err(|e| first_line(&e.to_string()))?;
        let args = ServeArgs::from_arg_matches(&matches).map_err(|e| first_line(&e.to_string()))?;
        let Some(path) = args.config.clone() else {
            return Ok(args);
        };
        let explicit: Vec<String> = command
            .get_arguments()
            .filter(|a| {
                matches.value_source(a.get_id().as_str())
                    == Some(clap::parser::ValueSource::CommandLine)
            })
            .filter_map(|a| a.get_long().map(str::to_string))
            .collect();
        let file_args = config_file_args(&command, &path, &explicit)?;
        // The file's flags first, then the command line's: no flag appears twice, because keys
        // given on the command line were left out of `file_args`.
        let mut merged: Vec<std::ffi::OsString> = vec!["serve".into()];
        merged.extend(file_args.into_iter().map(Into::into));
        merged.extend(argv.into_iter().skip(1));
        let matches = command.try_get_matches_from(merged).map_err(|e| {
            format!(
                "--config {}: {}",
                path.display(),
                first_line(&e.to_string())
            )
        })?;
        ServeArgs::from_arg_matches(&matches).map_err(|e| first_line(&e.to_string()))
    }
}

/// The clap command of `serve` alone, for parsing flags and config files the same way.
fn serve_command() -> clap::Command {
    use clap::Args as _;
    ServeArgs::augment_args(clap::Command::new("serve"))
}

/// Turns the config file at `path` into `--key value` flags, leaving out keys in `explicit`
/// (given on the command line) and keys that conflict with them.
fn config_file_args(
    command: &clap::Command,
    path: &std::path::Path,
    explicit: &[String],
) -> Result<Vec<String>, String> {
    let name = path.display();
    let size = std::fs::metadata(path)
        .map_err(|e| format!("--config {name}: cannot read: {e}"))?
        .len();
    if size > CONFIG_FILE_BYTES_MAX {
        return Err(format!(
            "--config {name}: {size} bytes is larger than {CONFIG_FILE_BYTES_MAX}; is it the right file?"
        ));
    }
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--config {name}: cannot read: {e}"))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        format!("--config {name}: not valid TOML: {}", e.message())
    })?;
    let valid: Vec<&str> = command
        .get_arguments()
        .filter(|a| !a.is_hide_set())
        .filter_map(|a| a.get_long())
        .filter(|l| !CONFIG_KEYS_FORBIDDEN.contains(l))
        .collect();
    let mut out = Vec::new();
    for (key, value) in &table {
        // Hidden flags (testing only) and `config` itself have no place in a config file.
        if !valid.contains(&key.as_str()) {
            return Err(format!(
                "--config {name}: unknown key `{key}` (keys are serve flags by long name: {})",
                valid.join(", ")
            ));
        }
        let flag_args = toml_value_args(key, value)
            .map_err(|why| format!("--config {name}: key `{key}`: {why}"))?;
        // Validate this key alone, so the message names it.
        let mut one: Vec<String> = vec!["serve".into()];
        one.extend(flag_args.iter().cloned());
        if let Err(e) = command.clone().try_get_matches_from(&one) {
            return Err(format!(
                "--config {name}: key `{key}`: {}",
                first_line(&e.to_string())
            ));
        }
        let overridden = explicit
            .iter()
            .any(|f| f == key || conflicting(command, f, key) || conflicting(command, key, f));
        if !overridden {
            out.extend(flag_args);
        }
    }
    Ok(out)
}

/// Whether the flag `a` declares a conflict with the flag `b` (clap records a conflict on the
/// side that declared it only).
fn conflicting(command: &clap::Command, a: &str, b: &str) -> bool {
    command
        .get_arguments()
        .find(|arg| arg.get_long() == Some(a))
        .is_some_and(|arg| {
            command
                .get_arg_conflicts_with(arg)
                .iter()
                .any(|c| c.get_long() == Some(b))
        })
}

/// The command-line form of one config-file value: `--key VALUE`; an array is the flag's
/// comma-separated list.
fn toml_value_args(key: &str, value: &toml::Value) -> Result<Vec<String>, String> {
    let scalar = |v: &toml::Value| -> Result<String, String> {
        match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            toml::Value::Boolean(b) => Ok(b.to_string()),
            other => Err(format!(
                "expected a string or a number, found {}",
                other.type_str()
            )),
        }
    };
    let text = match value {
        toml::Value::Array(items) => items
            .iter()
            .map(scalar)
            .collect::<Result<Vec<_>, _>>()?
            .join(","),
        other => scalar(other)?,
    };
    Ok(vec![format!("--{key}"), text])
}

/// clap's error messages carry usage lines and tips; the first line says what is wrong.
fn first_line(message: &str) -> String {
    message
        .lines()
        .next()
        .unwrap_or(message)
        .trim_start_matches("error: ")
        .to_string()
}

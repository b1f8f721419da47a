//! The `corelog` command line: `main` parses and sets up logging, [`run`] does the work and
//! returns the exit code. Exit codes: `0` success, `1` `check` found corruption, `2` usage or
//! any other error (one line on stderr).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgGroup, Args, Parser, Subcommand};
use corelog::cli::{self, CertsArgs, ClusterCommand, ConsumeArgs, ProduceArgs, ServersArgs};
use corelog::config::ServeArgs;
use corelog::storage::check::{self, PartitionReport, Summary};
use corelog::tuning::doctor::{self, DoctorArgs};
use corelog::tuning::iotune::{self, IotuneArgs};
use glommio::{LocalExecutorBuilder, Placement};

/// `check` found no corruption (warnings allowed).
const EXIT_OK: u8 = 0;
/// `check` found corruption.
const EXIT_CORRUPT: u8 = 1;
/// Bad usage, or an error that kept the command from doing its job.
const EXIT_FAILURE: u8 = 2;

/// Registered I/O memory of the executor `check` runs on. It reads one chunk at a time, so a
/// small pool is plenty (and fits the default locked-memory limits).
const CHECK_IO_MEMORY_BYTES: usize = 1 << 20;

#[derive(Parser)]
#[command(
    name = "corelog",
    version,
    about = "An io_uring, thread-per-core commit-log storage node"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the `serve` variant costs nothing worth boxing for.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Verify segment files offline, read-only.
    ///
    /// Checks every batch's checksum and framing, that offsets are dense within and across
    /// segments, and the indexes. Errors are data corruption; warnings are what recovery repairs
    /// without losing acknowledged data (index damage, the torn tail of the last segment).
    /// Exit code 0: no errors (warnings allowed); 1: corruption found; 2: usage or I/O error.
    Check(CheckArgs),
    /// Run a node: one executor per core, the TLS port, the stats endpoint.
    ///
    /// With no flags: data in ./corelog-data, port 127.0.0.1:7400, stats on 127.0.0.1:7401,
    /// every core, one partition per core, dev TLS certificates under <data-dir>/tls/.
    /// SIGINT/SIGTERM stop it gracefully (in-flight requests finish, logs are flushed).
    Serve(ServeArgs),
    /// Write a CA and node/client certificates (the CA is reused if present).
    Certs(CertsArgs),
    /// Append records (stdin lines, or --value) and print each offset once acknowledged.
    ///
    /// --addr may be any node of a cluster: the command follows the partition's leader.
    Produce(ProduceArgs),
    /// Print records of a partition from an offset.
    Consume(ConsumeArgs),
    /// Print the cluster's servers: the partitions each leads (and, in a replicated cluster,
    /// votes in and learns), as the node at --addr sees them.
    ///
    /// Standalone node: `id address leader partitions-led` under a header. Replicated cluster:
    /// `id address led voter learner` under a header, one line per node by id, lists
    /// comma-separated, `-` when empty. --json prints one JSON document instead.
    Servers(ServersArgs),
    /// Change a replicated cluster's membership: `leave` removes a node, `join` adds one.
    ///
    /// Needs the admin right: these commands present the `node` certificate by default.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Check this host and a data directory for running a node.
    ///
    /// One line per check: `PASS|WARN|FAIL  <check>: <found>; <meaning>`, then `    fix: <command>`
    /// for each WARN and FAIL. Exit code 0: no FAIL; 1: some check failed; 2: usage error.
    Doctor(DoctorArgs),
    /// Measure the disk with the node's I/O path and write an io-properties file for
    /// `serve --io-properties`.
    Iotune(IotuneArgs),
}

#[derive(Args)]
#[command(group(
    ArgGroup::new("target")
        .required(true)
        .args(["data_dir", "partition_dir"])
))]
struct CheckArgs {
    /// A node's data directory: checks every partitions/<p>/ in it (or the directory itself,
    /// if it holds segment files).
    #[arg(value_name = "DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Check this one partition directory instead.
    #[arg(long, value_name = "DIR")]
    partition_dir: Option<PathBuf>,
    /// Print the report as JSON (version 1; keys documented in storage::check).
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    // clap prints usage errors itself and exits with 2.
    let cli = Cli::parse();
    // A server tells what it is doing; one-shot commands only warn. openraft (through
    // `tracing`'s `log` feature) is chatty at info: only its warnings by default.
    let level = if matches!(cli.command, Command::Serve(_)) {
        "info,openraft=warn"
    } else {
        "warn"
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Runs a parsed command; `Err` is the one line to print before exiting with 2.
fn run(cli: Cli) -> Result<u8, String> {
    match cli.command {
        Command::Check(args) => run_check(args),
        Command::Serve(args) => serve_with_config_file(args),
        Command::Certs(args) => cli::certs(&args).map(|()| EXIT_OK),
        Command::Produce(args) => cli::produce(&args).map(|()| EXIT_OK),
        Command::Consume(args) => cli::consume(&args).map(|()| EXIT_OK),
        Command::Servers(args) => cli::servers(&args).map(|()| EXIT_OK),
        Command::Cluster { command } => cli::cluster(&command).map(|()| EXIT_OK),
        Command::Doctor(args) => doctor::run_cli(&args),
        Command::Iotune(args) => iotune::run_cli(&args),
    }
}

/// `serve`, with `--config FILE` merged under the command line's flags.
fn serve_with_config_file(args: ServeArgs) -> Result<u8, String> {
    let args = match args.config {
        // Re-parse the `serve` arguments to learn which flags the command line gave.
        Some(_) => ServeArgs::parse_with_config_file(
            std::env::args_os().skip_while(|a| a.as_os_str() != "serve"),
        )?,
        None => args,
    };
    cli::serve(&args).map(|()| EXIT_OK)
}

/// What `check` looks at.
enum CheckTarget {
    /// A node's data directory (or a bare directory of segment files).
    DataDir(PathBuf),
    /// One partition's directory.
    PartitionDir(PathBuf),
}

fn run_check(args: CheckArgs) -> Result<u8, String> {
    // clap's argument group already admits exactly one of the two; this keeps it a usage error.
    let target = match (args.data_dir, args.partition_dir) {
        (Some(dir), None) => CheckTarget::DataDir(dir),
        (None, Some(dir)) => CheckTarget::PartitionDir(dir),
        _ => return Err("give exactly one of DATA_DIR and --partition-dir".into()),
    };
    let reports = on_executor(async move {
        match target {
            CheckTarget::DataDir(dir) => check::check_data_dir(&dir).await,
            CheckTarget::PartitionDir(dir) => {
                check::check_partition(&dir).await.map(|r| vec![(dir, r)])
            }
        }
    })?
    .map_err(|e| e.to_string())?;
    print_reports(&reports, args.json)?;
    let corrupt = Summary::of(&reports).errors > 0;
    Ok(if corrupt { EXIT_CORRUPT } else { EXIT_OK })
}

fn print_reports(reports: &[(PathBuf, PartitionReport)], json: bool) -> Result<(), String> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let written = if json {
        check::write_json(&mut out, reports)
    } else {
        check::write_text(&mut out, reports)
    };
    written.map_err(|e| format!("writing the report: {e}"))
}

/// Runs `fut` on a single glommio executor on this thread.
fn on_executor<T>(fut: impl std::future::Future<Output = T>) -> Result<T, String> {
    corelog::io::ensure_memlock(corelog::io::memlock_bytes_wanted(1, CHECK_IO_MEMORY_BYTES))?;
    let executor = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(CHECK_IO_MEMORY_BYTES)
        .make()
        .map_err(|e| format!("cannot start the I/O executor (io_uring): {e}"))?;
    Ok(executor.run(fut))
}

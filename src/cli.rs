//! The `corelog` commands other than `check`: `serve`, `certs`, `produce`, `consume`,
//! `servers`. Each returns `Err(one line)` for `main` to print; client commands default to the
//! local dev node and its dev certificates.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use glommio::{LocalExecutorBuilder, Placement};

use crate::client::{Client, ClientConfig};
use crate::config::{DATA_DIR_DEFAULT, LISTEN_DEFAULT, NodeConfig, ServeArgs};

/// Registered I/O memory of a client command's executor.
const CLIENT_IO_MEMORY_BYTES: usize = 1 << 20;
/// Produce requests a `produce` command keeps in flight.
const PRODUCE_IN_FLIGHT_MAX: usize = 256;
/// Long-poll of `consume --follow`.
const FOLLOW_WAIT_MS: u64 = 1_000;
/// Bytes per consume request.
const CONSUME_BYTES_MAX: u32 = 1 << 20;

/// Flags every client command takes.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// The node's address.
    #[arg(long, default_value = LISTEN_DEFAULT)]
    pub addr: SocketAddr,
    /// Directory with `ca.pem` and the client certificate (default: the local dev node's).
    #[arg(long, default_value_t = default_tls_dir())]
    pub tls_dir: String,
    /// Which certificate in the TLS directory to present.
    #[arg(long, default_value = "client")]
    pub tls_name: String,
}

fn default_tls_dir() -> String {
    format!("{DATA_DIR_DEFAULT}/tls")
}

/// `corelog certs` flags.
#[derive(Args, Debug, Clone)]
pub struct CertsArgs {
    /// Where to write (and find an existing) CA and the certificates.
    #[arg(long)]
    pub out: PathBuf,
    /// A node certificate to issue (server and client auth); repeatable.
    #[arg(long = "node")]
    pub nodes: Vec<String>,
    /// A client certificate to issue; repeatable.
    #[arg(long = "client")]
    pub clients: Vec<String>,
    /// Extra DNS name or IP for node certificates; repeatable.
    #[arg(long = "san")]
    pub sans: Vec<String>,
}

/// `corelog produce` flags.
#[derive(Args, Debug, Clone)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[arg(long)]
    pub partition: u32,
    /// Produce this one value instead of reading lines from stdin.
    #[arg(long)]
    pub value: Option<String>,
}

/// Output format of `consume`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Each value on its own line.
    Raw,
    /// `{"offset":N,"value":"…"}` per line (`value_hex` instead when not UTF-8).
    Json,
}

/// `corelog consume` flags.
#[derive(Args, Debug, Clone)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[arg(long)]
    pub partition: u32,
    /// First offset to read.
    #[arg(long, default_value_t = 0)]
    pub from: u64,
    /// Stop after this many records.
    #[arg(long)]
    pub count: Option<u64>,
    /// Keep waiting for new records instead of stopping at the end.
    #[arg(long)]
    pub follow: bool,
    #[arg(long, value_enum, default_value_t = Format::Raw)]
    pub format: Format,
}

/// `corelog servers` flags.
#[derive(Args, Debug, Clone)]
pub struct ServersArgs {
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs a node until SIGINT/SIGTERM.
pub fn serve(args: &ServeArgs) -> Result<(), String> {
    crate::io::block_termination_signals();
    let config = NodeConfig::from_args(args, &crate::io::online_cpus())?;
    let cpus = config.cpus.clone();
    let node = crate::node::start(config)?;
    eprintln!(
        "corelog: serving {} partitions on {} (cores {:?}); stats on http://{}; TLS in {}",
        node.partitions,
        node.listen,
        cpus,
        node.stats_listen,
        node.tls_dir.display()
    );
    let trigger = node.shutdown_trigger();
    std::thread::spawn(move || {
        let sig = crate::io::wait_for_termination_signal();
        eprintln!("corelog: signal {sig}: shutting down (finishing in-flight requests)");
        trigger.fire();
    });
    node.join()
}

/// Writes a CA and certificates.
pub fn certs(args: &CertsArgs) -> Result<(), String> {
    if args.nodes.is_empty() && args.clients.is_empty() {
        return Err("name at least one --node NAME or --client NAME".into());
    }
    let report = crate::certs::write_certs(&args.out, &args.nodes, &args.clients, &args.sans)
        .map_err(|e| e.to_string())?;
    println!(
        "CA {} ({})",
        report.ca.cert.display(),
        if report.ca_created {
            "created"
        } else {
            "reused"
        }
    );
    for cert in &report.issued {
        println!(
            "{:?} {}: {} {}",
            cert.role,
            cert.name,
            cert.paths.cert.display(),
            cert.paths.key.display()
        );
    }
    Ok(())
}

/// Produces stdin lines (or `--value`) and prints each offset once acknowledged.
pub fn produce(args: &ProduceArgs) -> Result<(), String> {
    let args = args.clone();
    run_client(&args.client.clone(), move |client| async move {
        let client = Rc::new(client);
        if let Some(value) = &args.value {
            let r = client
                .produce(args.partition, vec![Bytes::from(value.clone())])
                .await
                .map_err(|e| e.to_string())?;
            println!("{}", r.base_offset);
            return Ok(());
        }
        let stdin = std::io::stdin();
        let mut in_flight = std::collections::VecDeque::new();
        let mut out = std::io::stdout().lock();
        for line in stdin.lock().lines() {
            let line = line.map_err(|e| format!("reading stdin: {e}"))?;
            let client = client.clone();
            let partition = args.partition;
            in_flight.push_back(glommio::spawn_local(async move {
                client.produce(partition, vec![Bytes::from(line)]).await
            }));
            if in_flight.len() >= PRODUCE_IN_FLIGHT_MAX {
                print_ack(&mut out, in_flight.pop_front()).await?;
            }
        }
        while !in_flight.is_empty() {
            print_ack(&mut out, in_flight.pop_front()).await?;
        }
        Ok(())
    })
}

async fn print_ack(
    out: &mut impl Write,
    task: Option<glommio::Task<Result<crate::proto::ProduceResponse, crate::client::ClientError>>>,
) -> Result<(), String> {
    let Some(task) = task else { return Ok(()) };
    let r = task.await.map_err(|e| e.to_string())?;
    writeln!(out, "{}", r.base_offset).map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())
}

/// Prints records from `--from` on.
pub fn consume(args: &ConsumeArgs) -> Result<(), String> {
    let args = args.clone();
    run_client(&args.client.clone(), move |client| async move {
        let mut next = args.from;
        let mut printed = 0u64;
        let mut out = std::io::stdout().lock();
        loop {
            if args.count.is_some_and(|c| printed >= c) {
                return Ok(());
            }
            let wait = if args.follow { FOLLOW_WAIT_MS } else { 0 };
            let resp = client
                .consume(
                    args.partition,
                    next,
                    CONSUME_BYTES_MAX,
                    Duration::from_millis(wait),
                )
                .await
                .map_err(|e| e.to_string())?;
            for r in &resp.records {
                if args.count.is_some_and(|c| printed >= c) {
                    break;
                }
                print_record(&mut out, args.format, r.offset, &r.value)?;
                printed += 1;
                next = r.offset + 1;
            }
            out.flush().map_err(|e| e.to_string())?;
            if resp.records.is_empty() && !args.follow && next >= resp.high_watermark {
                return Ok(());
            }
        }
    })
}

fn print_record(
    out: &mut impl Write,
    format: Format,
    offset: u64,
    value: &[u8],
) -> Result<(), String> {
    let res = match format {
        Format::Raw => out.write_all(value).and_then(|_| out.write_all(b"\n")),
        Format::Json => {
            let line = match std::str::from_utf8(value) {
                Ok(s) => serde_json::json!({ "offset": offset, "value": s }),
                Err(_) => {
                    let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
                    serde_json::json!({ "offset": offset, "value_hex": hex })
                }
            };
            writeln!(out, "{line}")
        }
    };
    res.map_err(|e| format!("writing stdout: {e}"))
}

/// Prints the cluster's servers.
pub fn servers(args: &ServersArgs) -> Result<(), String> {
    run_client(&args.client.clone(), |client| async move {
        let resp = client.get_servers().await.map_err(|e| e.to_string())?;
        println!(
            "{:<12} {:<24} {:<8} partitions led",
            "id", "address", "leader"
        );
        for s in resp.servers {
            let led: Vec<String> = s.partitions_led.iter().map(|p| p.to_string()).collect();
            println!(
                "{:<12} {:<24} {:<8} {}",
                s.id,
                s.rpc_addr,
                if s.is_leader { "yes" } else { "no" },
                led.join(",")
            );
        }
        Ok(())
    })
}

/// Connects a [`Client`] on a one-core executor and runs `f` with it.
fn run_client<F, Fut>(args: &ClientArgs, f: F) -> Result<(), String>
where
    F: FnOnce(Client) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + 'static,
{
    crate::io::ensure_memlock(crate::io::memlock_bytes_wanted(1, CLIENT_IO_MEMORY_BYTES))?;
    let config = ClientConfig::new(
        args.addr,
        std::path::Path::new(&args.tls_dir),
        &args.tls_name,
    )
    .map_err(|e| e.to_string())?;
    let handle = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(CLIENT_IO_MEMORY_BYTES)
        .name("corelog-client")
        .spawn(move || async move {
            let client = Client::connect(config).await.map_err(|e| e.to_string())?;
            f(client).await
        })
        .map_err(|e| format!("cannot start an executor: {e}"))?;
    handle
        .join()
        .map_err(|e| format!("client executor failed: {e}"))?
}

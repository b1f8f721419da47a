//! The `corelog` commands other than `check`: `serve`, `certs`, `produce`, `consume`,
//! `servers`, `cluster join|leave`. Each returns `Err(one line)` for `main` to print; client
//! commands default to the local dev node and its dev certificates.
//!
//! Which node a client command talks to:
//! - `produce`, `consume --consistency linearizable` and `cluster join|leave` go through
//!   [`ClusterClient`]: `--addr` may be any node of a cluster, and the command follows
//!   `NOT_LEADER` to each partition's leader (a standalone node leads everything).
//! - `consume` (local reads) and `servers` ask the node at `--addr` only: a follower answers
//!   from its own log below its high watermark, and with its own view of the membership.
//!
//! Output formats (stable; scripts may parse them):
//! - `produce`: one acknowledged offset per line, in input order.
//! - `servers`, standalone node: a header line, then `id address leader partitions-led`.
//! - `servers`, replicated cluster: a header line `id address led voter learner`, then one
//!   line per node ascending by id; columns separated by spaces, each list comma-separated
//!   ascending, `-` when empty. `--json`: see [`servers_json`].
//! - `cluster leave`: one line per partition, `partition P: node N removed`, `partition P: node
//!   N was not a member`, or `partition P: failed: <error>`; exit 2 if any failed.
//! - `cluster join`: one line per partition, `partition P: node N added as a voter|learner`,
//!   `partition P: node N was already a member, now a voter|learner`, or `partition P: failed:
//!   <error>`; exit 2 if any failed.
//! - "was a member" is as the node at `--addr` saw it just before the change.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use glommio::{LocalExecutorBuilder, Placement};

use crate::net::addr::Resolved;

use crate::client::cluster::ClusterClient;
use crate::client::{Client, ClientConfig, ClientError};
use crate::config::{DATA_DIR_DEFAULT, LISTEN_DEFAULT, NodeConfig, ServeArgs};
use crate::net::errors::ServerError;
use crate::proto::{ConsumeResponse, GetServersResponse, Server};

/// Registered I/O memory of a client command's executor.
const CLIENT_IO_MEMORY_BYTES: usize = 1 << 20;
/// Produce requests a `produce` command keeps in flight.
const PRODUCE_IN_FLIGHT_MAX: usize = 256;
/// Long-poll of `consume --follow`.
const FOLLOW_WAIT_MS: u64 = 1_000;
/// Bytes per consume request.
const CONSUME_BYTES_MAX: u32 = 1 << 20;
/// How long one `cluster join` request may take: the server answers once the new node has
/// caught up as a learner, which takes as long as copying the partition to it.
const JOIN_REQUEST_TIMEOUT_MS: u64 = 120_000;
/// Version of the `servers --json` document.
const SERVERS_JSON_VERSION: u32 = 1;

/// Flags every client command takes.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// The node's address, IP:PORT or HOST:PORT (any node of a cluster).
    #[arg(long, default_value = LISTEN_DEFAULT, value_name = "HOST:PORT")]
    pub addr: String,
    /// Directory with `ca.pem` and the certificate to present (default: the local dev node's).
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
    /// `local`: the node at --addr answers from its own log (a follower may lag the leader);
    /// `linearizable`: the partition's leader answers after confirming its leadership, so the
    /// read sees every record acknowledged before it.
    #[arg(long, value_enum, default_value_t = Consistency::Local)]
    pub consistency: Consistency,
}

/// Read consistency of `consume`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Read from the node at --addr, below its high watermark.
    Local,
    /// Read from the leader, through a read index (`ConsumeRequest.linearizable`).
    Linearizable,
}

/// `corelog servers` flags.
#[derive(Args, Debug, Clone)]
pub struct ServersArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// `corelog cluster` subcommands: membership changes, applied to every partition's Raft group.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum ClusterCommand {
    /// Remove a node from every partition's Raft group.
    ///
    /// A leader being removed hands leadership to another voter. Removing a node that is not a
    /// member of a partition succeeds and changes nothing, so the command can be run again
    /// after a partial failure. Prints `partition P: node N removed` (or `... was not a
    /// member`) per partition; exit code 2 if any partition failed.
    Leave(LeaveArgs),
    /// Add a running node to every partition's Raft group (`serve --join` does this by itself
    /// when a node starts; this re-adds one).
    ///
    /// The node is added as a learner, caught up, then made a voter while the partition has
    /// fewer voters than the replication factor. Prints `partition P: node N added as a
    /// voter|learner` (or `... was already a member, now a voter|learner`) per partition; exit
    /// code 2 if any partition failed.
    Join(JoinArgs),
}

/// `corelog cluster leave` flags.
#[derive(Args, Debug, Clone)]
// Membership changes need the `admin` right: under the default policy only node certificates
// have it, so these commands present the node certificate unless told otherwise.
#[command(mut_arg("tls_name", |a| a.default_value(crate::certs::DEV_NODE_NAME)))]
pub struct LeaveArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The node to remove (its `serve --node-id`).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub node_id: u64,
}

/// `corelog cluster join` flags.
#[derive(Args, Debug, Clone)]
#[command(mut_arg("tls_name", |a| a.default_value(crate::certs::DEV_NODE_NAME)))]
pub struct JoinArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The node to add (its `serve --node-id`).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub node_id: u64,
    /// The address the other nodes reach it at (its `serve --advertise`, or `--listen`).
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_host_port)]
    pub node_addr: String,
}

fn parse_host_port(s: &str) -> Result<String, String> {
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(s.to_string()),
        _ => Err(format!("{s:?}: expected HOST:PORT")),
    }
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
    let (config, resolved) = client_config(&args.client)?;
    on_client_executor(move || async move {
        let cluster = Rc::new(ClusterClient::new(config));
        learn_members(&cluster, &resolved).await?;
        if let Some(value) = &args.value {
            let r = cluster
                .produce(args.partition, vec![Bytes::from(value.clone())])
                .await
                .map_err(|e| e.to_string())?;
            println!("{}", r.base_offset);
            return Ok(());
        }
        let stdin = std::io::stdin();
        let mut lines = stdin.lock().lines();
        let mut out = std::io::stdout().lock();
        // The first record alone finds the leader and opens the connection to it: the ones
        // pipelined after it then travel on that one connection, appended in input order.
        let Some(first) = lines.next() else {
            return Ok(());
        };
        let first = first.map_err(|e| format!("reading stdin: {e}"))?;
        let r = cluster
            .produce(args.partition, vec![Bytes::from(first)])
            .await
            .map_err(|e| e.to_string())?;
        writeln!(out, "{}", r.base_offset).map_err(|e| e.to_string())?;
        let mut in_flight = std::collections::VecDeque::new();
        for line in lines {
            let line = line.map_err(|e| format!("reading stdin: {e}"))?;
            let cluster = cluster.clone();
            let partition = args.partition;
            in_flight.push_back(glommio::spawn_local(async move {
                cluster.produce(partition, vec![Bytes::from(line)]).await
            }));
            if in_flight.len() >= PRODUCE_IN_FLIGHT_MAX {
                print_ack(&mut out, in_flight.pop_front()).await?;
            }
        }
        while !in_flight.is_empty() {
            print_ack(&mut out, in_flight.pop_front()).await?;
        }
        out.flush().map_err(|e| e.to_string())
    })
}

async fn print_ack(
    out: &mut impl Write,
    task: Option<glommio::Task<Result<crate::proto::ProduceResponse, ClientError>>>,
) -> Result<(), String> {
    let Some(task) = task else { return Ok(()) };
    let r = task.await.map_err(|e| e.to_string())?;
    writeln!(out, "{}", r.base_offset).map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())
}

/// Prints records from `--from` on.
pub fn consume(args: &ConsumeArgs) -> Result<(), String> {
    let args = args.clone();
    let (partition, bytes) = (args.partition, CONSUME_BYTES_MAX);
    match args.consistency {
        Consistency::Local => run_client(&args.client.clone(), move |client| async move {
            let client = &client;
            consume_loop(&args, |offset, wait| {
                client.consume(partition, offset, bytes, wait)
            })
            .await
        }),
        Consistency::Linearizable => {
            let (config, resolved) = client_config(&args.client)?;
            on_client_executor(move || async move {
                let cluster = &ClusterClient::new(config);
                learn_members(cluster, &resolved).await?;
                consume_loop(&args, |offset, wait| {
                    cluster.consume(partition, offset, bytes, wait, true)
                })
                .await
            })
        }
    }
}

/// Reads with `fetch(offset, max_wait)` from `--from` on and prints the records, until
/// `--count` records or (without `--follow`) the high watermark.
async fn consume_loop<F, Fut>(args: &ConsumeArgs, mut fetch: F) -> Result<(), String>
where
    F: FnMut(u64, Duration) -> Fut,
    Fut: std::future::Future<Output = Result<ConsumeResponse, ClientError>>,
{
    let mut next = args.from;
    let mut printed = 0u64;
    let mut out = std::io::stdout().lock();
    loop {
        if args.count.is_some_and(|c| printed >= c) {
            return Ok(());
        }
        let wait = if args.follow { FOLLOW_WAIT_MS } else { 0 };
        let resp = fetch(next, Duration::from_millis(wait))
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

/// Prints the cluster's servers, as the node at `--addr` sees them.
pub fn servers(args: &ServersArgs) -> Result<(), String> {
    let json = args.json;
    run_client(&args.client.clone(), move |client| async move {
        let resp = client.get_servers().await.map_err(|e| e.to_string())?;
        let mut out = std::io::stdout().lock();
        let written = if json {
            writeln!(out, "{}", servers_json(&resp))
        } else if is_replicated(&resp) {
            write_cluster_servers(&mut out, &resp.servers)
        } else {
            write_standalone_servers(&mut out, &resp.servers)
        };
        written
            .and_then(|()| out.flush())
            .map_err(|e| format!("writing stdout: {e}"))
    })
}

/// `servers --json`, version 1: `{"version":1,"replicated":BOOL,"servers":[{"id":"1",
/// "rpc_addr":"HOST:PORT","is_leader":BOOL,"partitions_led":[..],"partitions_voter":[..],
/// "partitions_learner":[..]}, ..]}`, the fields of `GetServersResponse` by their proto names.
/// `replicated` is false for a standalone node (its voter and learner lists are empty).
pub fn servers_json(resp: &GetServersResponse) -> serde_json::Value {
    let servers: Vec<serde_json::Value> = resp
        .servers
        .iter()
        .map(|s| {
            serde_json::json!({
                "id": s.id,
                "rpc_addr": s.rpc_addr,
                "is_leader": s.is_leader,
                "partitions_led": s.partitions_led,
                "partitions_voter": s.partitions_voter,
                "partitions_learner": s.partitions_learner,
            })
        })
        .collect();
    serde_json::json!({
        "version": SERVERS_JSON_VERSION,
        "replicated": is_replicated(resp),
        "servers": servers,
    })
}

/// Every member of a replicated cluster votes in or learns some partition; a standalone node
/// reports neither.
fn is_replicated(resp: &GetServersResponse) -> bool {
    resp.servers
        .iter()
        .any(|s| !s.partitions_voter.is_empty() || !s.partitions_learner.is_empty())
}

/// The standalone table, unchanged since before replication (scripts read its last column).
fn write_standalone_servers(out: &mut impl Write, servers: &[Server]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<12} {:<24} {:<8} partitions led",
        "id", "address", "leader"
    )?;
    for s in servers {
        writeln!(
            out,
            "{:<12} {:<24} {:<8} {}",
            s.id,
            s.rpc_addr,
            if s.is_leader { "yes" } else { "no" },
            join_list(&s.partitions_led, "")
        )?;
    }
    Ok(())
}

/// The cluster table: `id address led voter learner`, one line per node (see the module doc).
fn write_cluster_servers(out: &mut impl Write, servers: &[Server]) -> std::io::Result<()> {
    let mut servers: Vec<&Server> = servers.iter().collect();
    servers.sort_by_key(|s| (s.id.parse::<u64>().unwrap_or(u64::MAX), s.id.clone()));
    writeln!(
        out,
        "{:<6} {:<24} {:<16} {:<16} learner",
        "id", "address", "led", "voter"
    )?;
    for s in servers {
        writeln!(
            out,
            "{:<6} {:<24} {:<16} {:<16} {}",
            s.id,
            s.rpc_addr,
            join_list(&s.partitions_led, "-"),
            join_list(&s.partitions_voter, "-"),
            join_list(&s.partitions_learner, "-")
        )?;
    }
    Ok(())
}

/// `0,1,5`, or `empty` when there are none.
fn join_list(partitions: &[u32], empty: &str) -> String {
    if partitions.is_empty() {
        return empty.to_string();
    }
    let items: Vec<String> = partitions.iter().map(|p| p.to_string()).collect();
    items.join(",")
}

/// Runs a `corelog cluster` subcommand.
pub fn cluster(command: &ClusterCommand) -> Result<(), String> {
    match command {
        ClusterCommand::Leave(args) => cluster_leave(args),
        ClusterCommand::Join(args) => cluster_join(args),
    }
}

/// Removes `--node-id` from every partition's group, through each partition's leader.
fn cluster_leave(args: &LeaveArgs) -> Result<(), String> {
    let (addr, node_id) = (args.client.addr.clone(), args.node_id);
    let (config, resolved) = client_config(&args.client)?;
    on_client_executor(move || async move {
        let cluster = ClusterClient::new(config);
        let partitions = membership_view(&cluster, &resolved, &addr, node_id).await?;
        let mut failed = Vec::new();
        for &(p, was_member) in &partitions {
            // Sent even where the view says "not a member": the view may lag the leader's.
            let outcome = match cluster.leave(p, node_id).await {
                Ok(()) if was_member => format!("node {node_id} removed"),
                Ok(()) => format!("node {node_id} was not a member"),
                Err(e) => {
                    fail_fast(&e)?;
                    failed.push(p);
                    format!("failed: {e}")
                }
            };
            print_partition_line(p, &outcome)?;
        }
        membership_result("removed from", node_id, partitions.len(), &failed)
    })
}

/// Adds `--node-id` at `--node-addr` to every partition's group, through each partition's
/// leader.
fn cluster_join(args: &JoinArgs) -> Result<(), String> {
    let (addr, node_id, node_addr) = (
        args.client.addr.clone(),
        args.node_id,
        args.node_addr.clone(),
    );
    let (mut config, resolved) = client_config(&args.client)?;
    config.request_timeout = Duration::from_millis(JOIN_REQUEST_TIMEOUT_MS);
    on_client_executor(move || async move {
        let cluster = ClusterClient::new(config);
        let partitions = membership_view(&cluster, &resolved, &addr, node_id).await?;
        let mut failed = Vec::new();
        for &(p, was_member) in &partitions {
            let outcome = match cluster.join(p, node_id, &node_addr).await {
                Ok(r) => {
                    let role = if r.voter { "voter" } else { "learner" };
                    if was_member {
                        format!("node {node_id} was already a member, now a {role}")
                    } else {
                        format!("node {node_id} added as a {role}")
                    }
                }
                Err(e) => {
                    fail_fast(&e)?;
                    failed.push(p);
                    format!("failed: {e}")
                }
            };
            print_partition_line(p, &outcome)?;
        }
        membership_result("added to", node_id, partitions.len(), &failed)
    })
}

/// Every partition of the cluster `addr` belongs to (every node hosts all of them), with
/// whether `node_id` is a member of its group as that node sees it. A standalone node is
/// refused: it has no membership to change.
async fn membership_view(
    cluster: &ClusterClient,
    resolved: &Resolved,
    addr: &str,
    node_id: u64,
) -> Result<Vec<(u32, bool)>, String> {
    let meta = learn_members(cluster, resolved).await?;
    if meta.partitions.iter().all(|p| p.members.is_empty()) {
        return Err(format!(
            "the node at {addr} is standalone (not started with --cluster or --join): it has \
             no cluster membership to change"
        ));
    }
    Ok(meta
        .partitions
        .iter()
        .map(|p| (p.partition, p.members.iter().any(|m| m.node_id == node_id)))
        .collect())
}

/// Asks the node at `addr` for its metadata and adds every member it knows of to `cluster`'s
/// seeds: a node that knows no leader (one that was removed, or is cut off) then does not stall
/// the command, which asks the others in turn.
async fn learn_members(
    cluster: &ClusterClient,
    node: &Resolved,
) -> Result<crate::proto::MetadataResponse, String> {
    cluster.add_resolved_seeds(node);
    let mut last = String::new();
    for addr in &node.addrs {
        let answer = match cluster.node(*addr).await {
            Ok(client) => client.metadata().await,
            Err(e) => Err(e),
        };
        match answer {
            Ok(meta) => {
                let members = meta
                    .partitions
                    .iter()
                    .flat_map(|p| &p.members)
                    .map(|m| m.addr.as_str());
                cluster.add_named_seeds(members).await;
                return Ok(meta);
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

/// Errors that every partition would answer the same way end the command at once.
fn fail_fast(e: &ClientError) -> Result<(), String> {
    match e {
        ClientError::Server(ServerError::Unauthorized { .. }) => Err(format!(
            "{e}: changing the membership needs the admin right; under the default policy only \
             a node certificate has it (--tls-name node, the default, from the cluster's \
             --tls-dir)"
        )),
        ClientError::Tls(_) => Err(e.to_string()),
        _ => Ok(()),
    }
}

fn print_partition_line(partition: u32, outcome: &str) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "partition {partition}: {outcome}")
        .and_then(|()| out.flush())
        .map_err(|e| format!("writing stdout: {e}"))
}

/// `Err` naming the partitions whose change failed, if any did.
fn membership_result(
    verb: &str,
    node_id: u64,
    partitions: usize,
    failed: &[u32],
) -> Result<(), String> {
    if failed.is_empty() {
        return Ok(());
    }
    let others = if failed.len() < partitions {
        "; the others succeeded"
    } else {
        ""
    };
    Err(format!(
        "node {node_id} was not {verb} partitions {} ({} of {partitions}{others}): run the \
         command again to retry",
        join_list(failed, "-"),
        failed.len(),
    ))
}

/// Connects a [`Client`] to `--addr` on a one-core executor and runs `f` with it.
fn run_client<F, Fut>(args: &ClientArgs, f: F) -> Result<(), String>
where
    F: FnOnce(Client) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + 'static,
{
    let (config, resolved) = client_config(args)?;
    on_client_executor(move || async move {
        // Each address of a host name in turn; the first that answers.
        let mut last = String::new();
        for addr in resolved.addrs {
            let mut config = config.clone();
            config.addr = addr;
            match Client::connect(config).await {
                Ok(client) => return f(client).await,
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    })
}

/// A client configuration for `--addr` (its first address; the others are tried by the
/// callers), and where `--addr` resolves. The certificate name is the host of a
/// `HOST:PORT` address.
fn client_config(args: &ClientArgs) -> Result<(ClientConfig, Resolved), String> {
    let resolved =
        crate::net::addr::resolve_blocking(&args.addr).map_err(|e| format!("--addr: {e}"))?;
    let mut config = ClientConfig::new(
        resolved.addrs[0],
        std::path::Path::new(&args.tls_dir),
        &args.tls_name,
    )
    .map_err(|e| e.to_string())?;
    config.server_name = resolved.server_name.clone();
    Ok((config, resolved))
}

/// Runs `f` on a one-core executor. Clients are `!Send`: `f` makes its own, and uses it within
/// this one run.
fn on_client_executor<F, Fut>(f: F) -> Result<(), String>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + 'static,
{
    crate::io::ensure_memlock(crate::io::memlock_bytes_wanted(1, CLIENT_IO_MEMORY_BYTES))?;
    let handle = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(CLIENT_IO_MEMORY_BYTES)
        .name("corelog-client")
        .spawn(f)
        .map_err(|e| format!("cannot start an executor: {e}"))?;
    handle
        .join()
        .map_err(|e| format!("client executor failed: {e}"))?
}

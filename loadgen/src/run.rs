//! A load run from start to end, on the main thread: ask each node (`--cluster`: the cluster,
//! for each partition's leader and replicas) for its partitions, build
//! the [`Plan`], start one pinned glommio executor per CPU (`load.rs`), start them all at
//! once, print a progress line a second, then merge the cores' results and judge what the
//! consumers saw against what the producers had acknowledged.
//!
//! A `--addr` node named `HOST:PORT` is reached at the first of its addresses that answers,
//! and its certificate is checked against the host name; cluster members advertised by host
//! name are looked up as `route.rs` says.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use std::net::SocketAddr;

use corelog::client::{Client, ClientConfig, ClientError};
use corelog::proto::{MetadataResponse, PartitionInfo};
use glommio::{LocalExecutorBuilder, Placement};

use crate::args::{From, RunConfig};
use crate::load::{self, CoreReport, Tick};
use crate::plan::{Plan, Replica, Shared, Target, Timeline};
use crate::report::{self, Progress, Report};
use crate::route::{self, Nodes};
use crate::stats::Measures;
use crate::verify::{self, Acked, Violations};

/// Registered I/O memory per executor: loadgen does no file I/O, only sockets.
const IO_MEMORY_BYTES: usize = 1 << 20;
/// How long the cores may take to connect before the run gives up.
const SETUP_TIMEOUT_MS: u64 = 30_000;
/// Time between the last core being ready and the start, so every core sees it coming.
const START_DELAY_MS: u64 = 20;
/// How long after a whole second the progress line waits for every core's tick.
const TICK_GRACE_MS: u64 = 500;
/// How often the main thread looks for ticks and finished cores.
const TICK_WAIT_MS: u64 = 100;
/// `--cluster`: how long to wait for every partition to have a leader before giving up.
const LEADER_WAIT_MS: u64 = 10_000;

/// Why a run could not be carried out (exit code 2).
#[derive(Debug)]
pub struct SetupError(pub String);

/// Runs the load described by `config`; returns the report (its `exit_code` says how it went).
pub fn run(mut config: RunConfig) -> Result<Report, SetupError> {
    let epoch = Instant::now();
    corelog::io::ensure_memlock(corelog::io::memlock_bytes_wanted(
        config.cpus.len(),
        IO_MEMORY_BYTES,
    ))
    .map_err(SetupError)?;
    let targets = if config.cluster {
        discover_cluster(&config)?
    } else {
        let (answered, metas) = discover(&config)?;
        // The cores connect, and the report names the node, where it answered.
        config.addr = answered;
        build_targets(&config, &metas)?
    };
    let producers = config.producers.unwrap_or(targets.len() as u32);
    let consumers = config.consumers.unwrap_or(targets.len() as u32);
    let plan = Arc::new(Plan::new(
        rand::random(),
        targets,
        config.cpus.len(),
        producers,
        consumers,
    ));
    let shared = Arc::new(Shared::new(&plan));
    let config = Arc::new(config);
    let (tx, rx) = mpsc::channel::<Tick>();
    let mut handles = Vec::new();
    for (index, &cpu) in config.cpus.iter().enumerate() {
        let (config, plan, core_shared, tx) =
            (config.clone(), plan.clone(), shared.clone(), tx.clone());
        let handle = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name("loadgen")
            .io_memory(IO_MEMORY_BYTES)
            .spawn(move || async move {
                let result = load::run_core(index, config, plan, core_shared.clone(), tx).await;
                core_shared.finished.fetch_add(1, Ordering::SeqCst);
                result
            });
        match handle {
            Ok(h) => handles.push(h),
            Err(e) => {
                shared.fail_setup(format!("cannot start an executor on CPU {cpu}: {e}"));
                break;
            }
        }
    }
    drop(tx);
    let cores = config.cpus.len();
    wait_until_ready(&shared, cores);
    if shared.aborted() {
        for h in handles {
            let _ = h.join();
        }
        let why = shared
            .setup_error
            .lock()
            .ok()
            .and_then(|e| e.clone())
            .unwrap_or_else(|| "setup failed".into());
        return Err(SetupError(why));
    }
    let timeline = Timeline::new(
        epoch,
        Instant::now() + Duration::from_millis(START_DELAY_MS),
        config.warmup,
        config.duration,
    );
    let _ = shared.timeline.set(timeline);
    println!("{}", report::banner(&config, &plan));
    show_progress(&config, &timeline, &shared, &rx, cores);
    let mut reports = Vec::new();
    for (core, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok(r)) => reports.push(r),
            Ok(Err(e)) => return Err(SetupError(format!("core {core}: {e}"))),
            Err(e) => return Err(SetupError(format!("core {core} failed: {e}"))),
        }
    }
    Ok(finish(&config, &plan, &timeline, reports))
}

/// Asks every node for its partitions, on a short-lived executor of its own; returns where
/// each node answered (the first of its addresses that accepts a connection) and what it said.
fn discover(config: &RunConfig) -> Result<(Vec<SocketAddr>, Vec<MetadataResponse>), SetupError> {
    let nodes = config.resolved.clone();
    let (tls_dir, tls_name) = (config.tls_dir.clone(), config.tls_name.clone());
    let handle = LocalExecutorBuilder::new(Placement::Unbound)
        .name("loadgen-discover")
        .io_memory(IO_MEMORY_BYTES)
        .spawn(move || async move {
            let (mut answered, mut metas) = (Vec::new(), Vec::new());
            for node in nodes {
                let mut client = Err(String::new());
                for &addr in &node.addrs {
                    let mut client_config =
                        ClientConfig::new(addr, &tls_dir, &tls_name).map_err(|e| {
                            format!(
                                "TLS material in {} (start the dev node with `corelog serve`, \
                                 which creates it, or give --tls-dir/--tls-name): {e}",
                                tls_dir.display()
                            )
                        })?;
                    client_config.server_name = node.server_name.clone();
                    client = Client::connect(client_config)
                        .await
                        .map(|c| (addr, c))
                        .map_err(|e| {
                            format!(
                                "cannot reach the node at {addr} (is `corelog serve` running?): {e}"
                            )
                        });
                    if client.is_ok() {
                        break;
                    }
                }
                let (addr, client) = client?;
                metas.push(
                    client
                        .metadata()
                        .await
                        .map_err(|e| format!("metadata from {addr}: {e}"))?,
                );
                answered.push(addr);
            }
            Ok::<_, String>((answered, metas))
        })
        .map_err(|e| SetupError(format!("cannot start an executor: {e}")))?;
    match handle.join() {
        Ok(r) => r.map_err(SetupError),
        Err(e) => Err(SetupError(format!("discovery failed: {e}"))),
    }
}

/// `--cluster`: asks the cluster for its partitions, each one's leader and replicas, on a
/// short-lived executor of its own; waits out a running election for up to
/// [`LEADER_WAIT_MS`].
fn discover_cluster(config: &RunConfig) -> Result<Vec<Target>, SetupError> {
    let resolved = config.resolved.clone();
    let (tls_dir, tls_name) = (config.tls_dir.clone(), config.tls_name.clone());
    let (wanted, from) = (config.partitions.clone(), config.from);
    let handle = LocalExecutorBuilder::new(Placement::Unbound)
        .name("loadgen-discover")
        .io_memory(IO_MEMORY_BYTES)
        .spawn(move || async move {
            let timeout = Duration::from_millis(load::REQUEST_TIMEOUT_MS);
            let seeds = route::seed_addrs(&resolved);
            let nodes = Nodes::new(&seeds, tls_dir.clone(), tls_name, timeout);
            for r in &resolved {
                nodes.remember(r);
            }
            let mut meta = None;
            let mut last_error = String::new();
            for addr in &seeds {
                match nodes.client(*addr).await {
                    Ok(c) => match c.metadata().await {
                        Ok(m) => {
                            meta = Some(m);
                            break;
                        }
                        Err(e) => last_error = format!("metadata from {addr}: {e}"),
                    },
                    Err(e @ ClientError::Tls(_)) => {
                        return Err(format!(
                            "TLS material in {} (give --tls-dir/--tls-name): {e}",
                            tls_dir.display()
                        ));
                    }
                    Err(e) => last_error = format!("cannot reach the node at {addr}: {e}"),
                }
            }
            let Some(meta) = meta else {
                return Err(format!("no node of the cluster answered: {last_error}"));
            };
            let have: Vec<u32> = meta.partitions.iter().map(|p| p.partition).collect();
            let partitions = wanted.unwrap_or_else(|| have.clone());
            let mut targets = Vec::new();
            for partition in partitions {
                if !have.contains(&partition) {
                    return Err(format!(
                        "--partitions: the cluster has no partition {partition} (it has {have:?})"
                    ));
                }
                targets.push(cluster_target(&nodes, partition, from).await?);
            }
            Ok::<_, String>(targets)
        })
        .map_err(|e| SetupError(format!("cannot start an executor: {e}")))?;
    let targets = match handle.join() {
        Ok(r) => r.map_err(SetupError)?,
        Err(e) => return Err(SetupError(format!("discovery failed: {e}"))),
    };
    if targets.is_empty() {
        return Err(SetupError("the cluster has no partitions to load".into()));
    }
    Ok(targets)
}

/// One cluster partition: its leader (waiting out an election), its replicas, and where
/// consumers start — with `--from end`, at the lowest high watermark of the replicas that
/// answer, so a consumer on any replica starts at or before this run's first record.
async fn cluster_target(nodes: &Nodes, partition: u32, from: From) -> Result<Target, String> {
    let deadline = Instant::now() + Duration::from_millis(LEADER_WAIT_MS);
    let leader = loop {
        if let Some(a) = nodes.find_leader(partition).await {
            break a;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "partition {partition} has no leader after {} s (`corelog servers` shows the \
                 cluster)",
                LEADER_WAIT_MS / 1000
            ));
        }
        corelog::io::sleep(Duration::from_millis(route::LEADER_RETRY_MS)).await;
    };
    let info = partition_info(nodes, leader, partition)
        .await
        .map_err(|e| format!("metadata from the leader of partition {partition}: {e}"))?;
    // Members whose name does not resolve are left out.
    let mut replicas = Vec::with_capacity(info.members.len());
    for m in &info.members {
        if let Some(addr) = nodes.resolve(&m.addr).await {
            replicas.push(Replica {
                node_id: m.node_id,
                addr,
                named: nodes.named(&m.addr),
            });
        }
    }
    let mut lowest_high = info.high_watermark;
    for r in replicas.iter().filter(|r| r.addr != leader) {
        if let Ok(i) = partition_info(nodes, r.addr, partition).await {
            lowest_high = lowest_high.min(i.high_watermark);
        }
    }
    let (low, high) = (info.log_start_offset, info.high_watermark);
    let start_offset = match from {
        From::End => lowest_high,
        From::Start => low,
        From::Offset(o) if (low..=high).contains(&o) => o,
        From::Offset(o) => {
            return Err(format!(
                "--from {o}: partition {partition} holds offsets {low}..{high}"
            ));
        }
    };
    Ok(Target {
        node: 0,
        addr: leader,
        partition,
        start_offset,
        end_offset_at_start: high,
        leader_id: info.leader_id.parse().ok(),
        replicas,
    })
}

/// `partition` as the node at `addr` sees it.
async fn partition_info(
    nodes: &Nodes,
    addr: SocketAddr,
    partition: u32,
) -> Result<PartitionInfo, String> {
    let meta = nodes
        .client(addr)
        .await
        .map_err(|e| e.to_string())?
        .metadata()
        .await
        .map_err(|e| e.to_string())?;
    meta.partitions
        .into_iter()
        .find(|p| p.partition == partition)
        .ok_or_else(|| format!("{addr} has no partition {partition}"))
}

/// The partitions under load, with where consumers start.
fn build_targets(
    config: &RunConfig,
    metas: &[MetadataResponse],
) -> Result<Vec<Target>, SetupError> {
    let mut targets = Vec::new();
    for (node, (addr, meta)) in config.addr.iter().zip(metas).enumerate() {
        let wanted: Vec<u32> = match &config.partitions {
            Some(list) => list.clone(),
            None => meta.partitions.iter().map(|p| p.partition).collect(),
        };
        for partition in wanted {
            let Some(info) = meta.partitions.iter().find(|p| p.partition == partition) else {
                let have: Vec<u32> = meta.partitions.iter().map(|p| p.partition).collect();
                return Err(SetupError(format!(
                    "--partitions: {addr} has no partition {partition} (it has {have:?})"
                )));
            };
            let (low, high) = (info.log_start_offset, info.high_watermark);
            let start_offset = match config.from {
                From::End => high,
                From::Start => low,
                From::Offset(o) if (low..=high).contains(&o) => o,
                From::Offset(o) => {
                    return Err(SetupError(format!(
                        "--from {o}: partition {partition} of {addr} holds offsets {low}..{high}"
                    )));
                }
            };
            targets.push(Target {
                node,
                addr: *addr,
                partition,
                start_offset,
                end_offset_at_start: high,
                leader_id: None,
                replicas: Vec::new(),
            });
        }
    }
    if targets.is_empty() {
        return Err(SetupError("the node has no partitions to load".into()));
    }
    Ok(targets)
}

fn wait_until_ready(shared: &Shared, cores: usize) {
    let deadline = Instant::now() + Duration::from_millis(SETUP_TIMEOUT_MS);
    while shared.ready.load(Ordering::SeqCst) < cores && !shared.aborted() {
        if Instant::now() >= deadline {
            shared.fail_setup(format!(
                "the cores did not connect within {} s",
                SETUP_TIMEOUT_MS / 1000
            ));
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Prints a line per second until every core has finished.
fn show_progress(
    config: &RunConfig,
    timeline: &Timeline,
    shared: &Shared,
    rx: &Receiver<Tick>,
    cores: usize,
) {
    let mut progress = Progress::new(config.warmup);
    let mut pending: BTreeMap<u64, (usize, Measures)> = BTreeMap::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(TICK_WAIT_MS)) {
            Ok(tick) => {
                let slot = pending
                    .entry(tick.second)
                    .or_insert_with(|| (0, Measures::default()));
                slot.0 += 1;
                slot.1.merge(&tick.measures);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        // Seconds in order, once every core's tick is in (or it is too late to wait).
        while let Some((&second, &(count, _))) = pending.first_key_value() {
            let stale = Instant::now()
                >= timeline.start
                    + Duration::from_secs(second)
                    + Duration::from_millis(TICK_GRACE_MS);
            if count < cores && !stale {
                break;
            }
            if let Some((_, m)) = pending.remove(&second) {
                println!("{}", progress.line(second, &m));
            }
        }
        if shared.finished.load(Ordering::SeqCst) >= cores {
            break;
        }
    }
}

/// Merges the cores' results, runs the final check, and builds the report.
fn finish(
    config: &RunConfig,
    plan: &Plan,
    timeline: &Timeline,
    reports: Vec<CoreReport>,
) -> Report {
    let mut window = Measures::default();
    let mut violations = Violations::default();
    let mut acked: HashMap<u32, Acked> = HashMap::new();
    let mut producers = Vec::new();
    let mut consumers = Vec::new();
    let mut sched = load::Sched::default();
    for r in reports {
        if let Some(s) = r.sched {
            sched.run_s += s.run_s;
            sched.runqueue_wait_s += s.runqueue_wait_s;
        }
        window.merge(&r.window);
        violations.merge(r.violations);
        producers.extend(r.producers);
        consumers.extend(r.consumers);
    }
    for p in &producers {
        acked.insert(
            p.id,
            Acked {
                sent: p.sent,
                failed: p.failed.clone(),
            },
        );
    }
    for c in &consumers {
        verify::final_check(&c.verifier, &acked, c.drained, &mut violations);
    }
    // With no producers, consumers that reached the end early end the window early.
    let mut window_end = timeline.measure_end;
    if plan.producers.is_empty()
        && consumers.iter().all(|c| c.drained)
        && let Some(last) = consumers.iter().map(|c| c.finished_at).max()
    {
        window_end = window_end.min(last.max(timeline.warm_end));
    }
    let measured = window_end.saturating_duration_since(timeline.warm_end);
    let mut report = report::build(
        config, plan, measured, &window, violations, &producers, &consumers,
    );
    report.loadgen_cores_run_s = sched.run_s;
    report.loadgen_cores_runqueue_wait_s = sched.runqueue_wait_s;
    report
}

//! Starting and stopping a node: one glommio executor pinned to each configured CPU, each
//! owning its partitions (`p % cores`), all listening on the one TLS port.
//!
//! Start-up order: host checks (locked memory, O_DIRECT on the data dir), the partition count
//! (fixed at first start in `<data>/node.toml`), TLS material (dev certificates created under
//! `<data>/tls/` when none are given), the ACL; then the ports are reserved on this thread (so
//! port 0 resolves once for every core), and the cores start. `start` returns once every core
//! has opened its partitions and listens, or with the first core's error.
//!
//! Data directory layout:
//! ```text
//! <data>/node.toml                 partition count (and node id), written at first start
//! <data>/partitions/<p>/           one partition's log (see storage::log)
//! <data>/tls/                      dev CA and certificates (when no --tls-dir is given)
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use glommio::channels::channel_mesh::{Full, MeshBuilder};
use glommio::net::TcpListener;
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};

use crate::config::{NodeConfig, TlsSource};
use crate::net::acl::Policy;
use crate::net::{server, tls};
use crate::raft::group::{Group, raft_config};
use crate::raft::network::{PeerNetworkFactory, PeerPool};
use crate::shard::{CoreMsg, MESH_CHANNEL_CAPACITY, NodeShared, Shard};
use crate::stats::CoreStats;
use crate::storage::Log;
use crate::types::Partition;

/// Registered I/O memory per executor.
pub const IO_MEMORY_BYTES: usize = 2 << 20;
/// How long a shutdown waits for open connections to finish their requests.
pub const SHUTDOWN_DRAIN_MS: u64 = 10_000;
/// How long start-up waits to learn whether a fixed port already has a listener.
const PORT_PROBE_MS: u64 = 300;
/// How often each core checks the shutdown flag.
const SHUTDOWN_POLL_MS: u64 = 20;
/// The node metadata file.
pub const NODE_META_FILE: &str = "node.toml";

/// A running node.
pub struct NodeHandle {
    pub listen: SocketAddr,
    pub stats_listen: SocketAddr,
    pub tls_dir: PathBuf,
    pub partitions: u32,
    shared: Arc<NodeShared>,
    threads: Vec<ExecutorJoinHandle<Result<(), String>>>,
    /// Held while the node runs: a second node on the same data directory is refused.
    _lock: std::fs::File,
}

/// Starts a node's graceful shutdown from any thread (a signal handler thread).
#[derive(Clone)]
pub struct ShutdownTrigger(Arc<NodeShared>);

impl ShutdownTrigger {
    pub fn fire(&self) {
        self.0.shutdown.store(true, Ordering::Relaxed);
    }
}

impl NodeHandle {
    pub fn shutdown_trigger(&self) -> ShutdownTrigger {
        ShutdownTrigger(self.shared.clone())
    }

    /// Starts a graceful shutdown: stop accepting, finish in-flight requests, flush, close.
    pub fn shutdown(&self) {
        self.shared.shutdown.store(true, Ordering::Relaxed);
    }

    /// Waits for every core to stop; the first core's error, if any.
    pub fn join(self) -> Result<(), String> {
        let mut first_err = None;
        for (core, t) in self.threads.into_iter().enumerate() {
            let res = match t.join() {
                Ok(r) => r,
                Err(e) => Err(format!("core {core} failed: {e}")),
            };
            if let Err(e) = res {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// Starts a node; returns once it serves on every core.
pub fn start(config: NodeConfig) -> Result<NodeHandle, String> {
    crate::io::ensure_memlock(crate::io::memlock_bytes_wanted(
        config.cpus.len(),
        IO_MEMORY_BYTES,
    ))?;
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        format!(
            "cannot create data directory {}: {e}",
            config.data_dir.display()
        )
    })?;
    crate::io::check_direct_io_filesystem(&config.data_dir).map_err(|e| e.to_string())?;
    check_io_uring_enabled()?;
    let lock = lock_data_dir(&config.data_dir)?;
    let meta = load_or_store_node_meta(
        &config.data_dir,
        config.partitions,
        config.cpus.len() as u32,
        config.node_id,
        config.replication.is_some(),
    )?;
    let partitions = meta.partitions;
    let (tls_dir, tls_name) = match &config.tls {
        TlsSource::Dir { dir, name } => (dir.clone(), name.clone()),
        TlsSource::Dev { dir } => {
            let dev = crate::certs::ensure_dev_certs(dir).map_err(|e| e.to_string())?;
            log::info!(
                "dev TLS certificates in {} (CA: ca.pem; client: client.pem/client-key.pem){}",
                dir.display(),
                if dev.created { ", created now" } else { "" }
            );
            (dir.clone(), "node".to_string())
        }
    };
    let server_tls = tls::server_config(&tls_dir, &tls_name).map_err(|e| e.to_string())?;
    let policy = Policy::from_acl_file(config.acl.as_deref()).map_err(|e| e.to_string())?;
    if config.acl.is_none() {
        log::warn!(
            "no --acl file: any certificate signed by the cluster CA may produce and consume; \
             an ACL file is recommended"
        );
    }
    // Reserve both ports here so port 0 resolves to one port that every core then shares.
    let (listen_reservation, listen) = reserve_port(config.listen)?;
    let (stats_reservation, stats_listen) = reserve_port(config.stats_listen)?;
    let cores = config.cpus.len();
    let peer_tls = match &config.replication {
        Some(_) => Some(tls::client_config(&tls_dir, &tls_name).map_err(|e| e.to_string())?),
        None => None,
    };
    let advertise = config
        .replication
        .as_ref()
        .and_then(|r| r.advertise.clone())
        .unwrap_or_else(|| listen.to_string());
    let shared = Arc::new(NodeShared {
        config: config.clone(),
        partitions,
        cores,
        server_tls,
        policy,
        shutdown: Default::default(),
        ready: Default::default(),
        listen,
        advertise,
        fresh: meta.fresh,
        peer_tls,
        cores_led: Default::default(),
    });
    let mesh: MeshBuilder<CoreMsg, Full> = MeshBuilder::full(cores, MESH_CHANNEL_CAPACITY);
    let (ready_tx, ready_rx) = crossbeam::channel::bounded::<(usize, Result<(), String>)>(cores);
    let mut threads = Vec::with_capacity(cores);
    for (core, cpu) in config.cpus.iter().copied().enumerate() {
        let core_shared = shared.clone();
        let mesh = mesh.clone();
        let ready_tx = ready_tx.clone();
        let spawned = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("corelog-core-{core}"))
            .io_memory(IO_MEMORY_BYTES)
            .spawn(move || async move {
                run_core(core, core_shared, mesh, stats_listen, ready_tx).await
            });
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                shared.shutdown.store(true, Ordering::Relaxed);
                return Err(format!(
                    "cannot start an executor on CPU {cpu}: {e} (is io_uring available? \
                     check `sysctl kernel.io_uring_disabled`)"
                ));
            }
        }
    }
    drop(ready_tx);
    let mut result = Ok(());
    for _ in 0..cores {
        match ready_rx.recv() {
            Ok((_, Ok(()))) => {}
            Ok((core, Err(e))) => {
                result = Err(format!("core {core}: {e}"));
                break;
            }
            Err(_) => {
                result = Err("a core stopped during start-up".into());
                break;
            }
        }
    }
    drop(listen_reservation);
    drop(stats_reservation);
    let handle = NodeHandle {
        listen,
        stats_listen,
        tls_dir,
        partitions,
        shared: shared.clone(),
        threads,
        _lock: lock,
    };
    match result {
        Ok(()) => {
            shared.ready.store(true, Ordering::Relaxed);
            Ok(handle)
        }
        Err(e) => {
            handle.shutdown();
            let _ = handle.join();
            Err(e)
        }
    }
}

/// One core's life: join the mesh, open its partitions, listen, serve until shutdown, drain.
async fn run_core(
    core: usize,
    shared: Arc<NodeShared>,
    mesh: MeshBuilder<CoreMsg, Full>,
    stats_listen: SocketAddr,
    ready: crossbeam::channel::Sender<(usize, Result<(), String>)>,
) -> Result<(), String> {
    // Join the mesh first: every core gets here even if its start-up fails later, so no core
    // waits forever for a peer.
    let (senders, mut receivers) = mesh
        .join()
        .await
        .map_err(|_| "cannot join the core mesh".to_string())?;
    let stats = Rc::new(CoreStats::new(core));
    let started = open_partitions(core, &shared, &stats).await;
    let logs = match started {
        Ok(logs) => logs,
        Err(e) => {
            let _ = ready.send((core, Err(e.clone())));
            return Err(e);
        }
    };
    let shard = Rc::new(Shard::new(core, shared.clone(), logs, stats.clone()));
    shard.set_senders(senders);
    if let Err(e) = start_groups(&shard).await {
        let _ = ready.send((core, Err(e.clone())));
        return Err(e);
    }
    for (_, rx) in receivers.streams() {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            while let Some(msg) = rx.recv().await {
                handle_core_msg(&shard, msg);
            }
        })
        .detach();
    }
    let listener = match TcpListener::bind(shared.listen) {
        Ok(l) => l,
        Err(e) => {
            let msg = format!("cannot listen on {}: {e}", shared.listen);
            let _ = ready.send((core, Err(msg.clone())));
            return Err(msg);
        }
    };
    crate::stats::spawn_stall_detector(stats.clone(), Default::default());
    if core == 0 {
        match TcpListener::bind(stats_listen) {
            Ok(l) => {
                let source = Rc::new(StatsSource {
                    shard: shard.clone(),
                });
                glommio::spawn_local(crate::stats::serve_stats(l, source)).detach();
            }
            Err(e) => {
                let msg = format!("cannot listen on {stats_listen} for stats: {e}");
                let _ = ready.send((core, Err(msg.clone())));
                return Err(msg);
            }
        }
    }
    let _ = ready.send((core, Ok(())));
    glommio::spawn_local(wait_for_leaders(shard.clone())).detach();
    glommio::spawn_local(join_cluster(shard.clone())).detach();
    {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            while !shard.node.shutting_down() {
                crate::io::sleep(Duration::from_millis(SHUTDOWN_POLL_MS)).await;
            }
            // Hand leadership off while this node still accepts connections and serves
            // peers: the new leader may need this node's vote or log.
            hand_off_leadership(&shard).await;
            shard.begin_shutdown();
        })
        .detach();
    }
    server::accept_loop(shard.clone(), listener).await;
    drain_connections(&shard).await;
    let groups: Vec<_> = shard.groups.borrow().values().cloned().collect();
    for group in groups {
        group.shutdown().await;
    }
    shard.stop_peers();
    wait_for_connections(&shard, 0, Duration::from_millis(PEER_CLOSE_MS)).await;
    let mut first_err = None;
    for (p, log) in &shard.logs {
        if let Err(e) = log.close().await {
            log::error!("partition {p}: close failed: {e}");
            first_err.get_or_insert(format!("partition {p}: {e}"));
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// Replicated nodes: starts the Raft group of each partition of this core, sharing one pool of
/// peer connections; a new node that is not joining becomes a cluster of one.
async fn start_groups(shard: &Rc<Shard>) -> Result<(), String> {
    let node = &shard.node;
    let Some(replication) = &node.config.replication else {
        return Ok(());
    };
    let tls = node
        .peer_tls
        .clone()
        .expect("replicated nodes have peer TLS");
    let pool = PeerPool::new(
        shard.core as u16,
        node.config.node_id,
        tls,
        node.config.frame_bytes_max as usize,
    );
    pool.set_snapshot_bytes_max(replication.snapshot_bytes_max);
    *shard.peer_pool.borrow_mut() = Some(pool.clone());
    let config = raft_config(replication.timing)?;
    for (p, log) in &shard.logs {
        let network = PeerNetworkFactory {
            pool: pool.clone(),
            partition: *p,
        };
        let group = Group::start(
            node.config.node_id,
            *p,
            log.clone(),
            network,
            config.clone(),
        )
        .await
        .map_err(|e| format!("partition {p}: starting Raft: {e}"))?;
        if node.fresh && replication.join.is_none() {
            group
                .bootstrap(&node.advertise)
                .await
                .map_err(|e| format!("partition {p}: bootstrapping: {e}"))?;
        }
        group.store.set_stats(shard.stats.clone(), *p);
        glommio::spawn_local(group.clone().report_metrics(shard.stats.clone())).detach();
        let log_config = &node.config.log;
        if log_config.retention_bytes.is_some() || log_config.retention_ms.is_some() {
            glommio::spawn_local(retention_loop(shard.clone(), group.clone())).detach();
        }
        shard.add_group(group);
    }
    if let Some(every) = replication.leader_balance_interval {
        // A target may be this far behind its leader (see raft::balance::caught_up): well inside
        // the minimum election timeout that openraft's target waits to catch up.
        let window = Duration::from_millis((replication.timing.election_min_ms / 4).clamp(1, 100));
        glommio::spawn_local(balance_leaders(shard.clone(), every, window)).detach();
    }
    Ok(())
}

/// How long a leader balancing transfer may take before the next check.
const BALANCE_TRANSFER_MS: u64 = 2_000;

/// Leader balancing for this core's groups (src/raft/balance.rs), every `every`: at most one
/// leadership transfer per check, to a voter at most `window` behind its leader.
async fn balance_leaders(shard: Rc<Shard>, every: Duration, window: Duration) {
    let me = shard.node.config.node_id;
    while sleep_unless_stopping(&shard, every).await {
        let groups: Vec<_> = shard.groups.borrow().values().cloned().collect();
        let held: Vec<_> = groups.iter().map(|g| g.last_log_index()).collect();
        if !sleep_unless_stopping(&shard, window).await {
            break;
        }
        let views: Vec<_> = groups
            .iter()
            .zip(held)
            .map(|(g, held)| g.balance_view(held))
            .collect();
        let Some((partition, to)) = crate::raft::balance::choose_transfer(me, &views) else {
            continue;
        };
        let Some(group) = groups.iter().find(|g| g.partition == partition) else {
            continue;
        };
        let led = views.iter().filter(|v| v.leader == Some(me)).count();
        log::info!(
            "partition {partition}: node {me} leads {led} of this core's {} partitions; \
             handing leadership to node {to}, which leads fewer",
            views.len()
        );
        if !group
            .transfer_leadership_to(to, Duration::from_millis(BALANCE_TRANSFER_MS))
            .await
        {
            log::info!("partition {partition}: node {to} did not take over; will check again");
        }
    }
}

/// Sleeps `every`, cut short by the shutdown; whether the node is still running.
async fn sleep_unless_stopping(shard: &Rc<Shard>, every: Duration) -> bool {
    futures_lite::future::or(crate::io::sleep(every), async {
        let seen = shard.shutdown.generation();
        if !shard.is_shutting_down() {
            shard.shutdown.wait(seen).await;
        }
    })
    .await;
    !shard.is_shutting_down()
}

/// Replicated partitions: size/age retention, through Raft, every `retention_check_ms`.
async fn retention_loop(shard: Rc<Shard>, group: Group) {
    let config = &shard.node.config.log;
    let every = Duration::from_millis(config.retention_check_ms);
    while sleep_unless_stopping(&shard, every).await {
        match group
            .apply_retention(config.retention_bytes, config.retention_ms)
            .await
        {
            Ok(0) => {}
            Ok(n) => log::info!(
                "partition {}: retention removed {n} segments",
                group.partition
            ),
            Err(e) => log::warn!("partition {}: retention: {e}", group.partition),
        }
    }
}

/// Counts this core as led once each of its partitions has a leader (replicated nodes), or
/// after `--leader-wait-ms`; `/health` reports ready when every core is.
async fn wait_for_leaders(shard: Rc<Shard>) {
    if let Some(replication) = &shard.node.config.replication {
        let deadline = Instant::now() + Duration::from_millis(replication.leader_wait_ms);
        loop {
            let leaderless: Vec<Partition> = shard
                .groups
                .borrow()
                .values()
                .filter(|g| g.leader().is_none())
                .map(|g| g.partition)
                .collect();
            if leaderless.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                log::warn!(
                    "core {}: partitions {leaderless:?} have no leader after {} ms; reporting \
                     ready anyway",
                    shard.core,
                    replication.leader_wait_ms
                );
                break;
            }
            crate::io::sleep(Duration::from_millis(20)).await;
        }
    }
    shard.node.cores_led.fetch_add(1, Ordering::Relaxed);
}

/// How long one join attempt may take (a learner is caught up before the answer).
const JOIN_REQUEST_TIMEOUT_MS: u64 = 120_000;
/// Pause between join attempts that failed.
const JOIN_RETRY_MS: u64 = 500;

/// `--join`: asks the cluster to add this node to each partition of this core it is not yet a
/// member of (so a node that stopped half-way through joining finishes on restart). Retries
/// until it succeeds or the node stops.
async fn join_cluster(shard: Rc<Shard>) {
    let node = shard.node.clone();
    let Some(join) = node
        .config
        .replication
        .as_ref()
        .and_then(|r| r.join.clone())
    else {
        return;
    };
    let me = node.config.node_id;
    let resolved = match crate::net::addr::resolve(join.as_str()).await {
        Ok(r) => r,
        Err(e) => {
            log::error!("--join: {e}");
            return;
        }
    };
    let addr = resolved.addrs[0];
    let tls = node
        .peer_tls
        .clone()
        .expect("replicated nodes have peer TLS");
    let config = crate::client::ClientConfig {
        addr,
        tls,
        server_name: resolved.server_name.clone(),
        frame_bytes_max: node.config.frame_bytes_max as usize,
        request_timeout: Duration::from_millis(JOIN_REQUEST_TIMEOUT_MS),
        connect_timeout: Duration::from_millis(crate::client::CONNECT_TIMEOUT_MS_DEFAULT),
    };
    let client = crate::client::cluster::ClusterClient::new(config);
    // Every address of a host name is a seed: one that refuses connections is passed over.
    client.add_resolved_seeds(&resolved);
    let groups: Vec<_> = shard.groups.borrow().values().cloned().collect();
    for group in groups {
        loop {
            if shard.is_shutting_down() {
                return;
            }
            if group.members().0.contains_key(&me) {
                break;
            }
            match client.join(group.partition.0, me, &node.advertise).await {
                Ok(r) => {
                    log::info!(
                        "partition {}: joined the cluster as a {}",
                        group.partition,
                        if r.voter { "voter" } else { "learner" }
                    );
                    break;
                }
                Err(e) => {
                    log::warn!("partition {}: joining through {join}: {e}", group.partition);
                    crate::io::sleep(Duration::from_millis(JOIN_RETRY_MS)).await;
                }
            }
        }
    }
}

/// How long a stopping node waits for each partition it leads to get a new leader.
const LEADER_HAND_OFF_MS: u64 = 3_000;

/// A stopping node first hands the leadership of its partitions to other voters, so writers
/// move on while it drains.
async fn hand_off_leadership(shard: &Rc<Shard>) {
    // A group whose only voter is this node has nobody to hand off to (nor to warn about).
    let groups: Vec<_> = shard
        .groups
        .borrow()
        .values()
        .filter(|g| g.members().1.iter().any(|v| *v != g.node_id))
        .cloned()
        .collect();
    let tasks: Vec<_> = groups
        .into_iter()
        .map(|g| {
            glommio::spawn_local(async move {
                if g.hand_off_leadership(Duration::from_millis(LEADER_HAND_OFF_MS))
                    .await
                {
                    log::warn!(
                        "partition {}: still the leader after {LEADER_HAND_OFF_MS} ms of \
                         hand-off; stopping anyway",
                        g.partition
                    );
                }
            })
        })
        .collect();
    for t in tasks {
        t.await;
    }
}

async fn open_partitions(
    core: usize,
    shared: &NodeShared,
    stats: &Rc<CoreStats>,
) -> Result<BTreeMap<Partition, Log>, String> {
    let mut logs = BTreeMap::new();
    for p in (0..shared.partitions).map(Partition) {
        if shared.owner_core(p) != core {
            continue;
        }
        let dir = partition_dir(&shared.config.data_dir, p);
        let mut config = shared.config.log.clone();
        if shared.config.replication.is_some() {
            // Replicated partitions apply retention through Raft (see `retention_loop`).
            config.retention_bytes = None;
            config.retention_ms = None;
        }
        let (full_after, sync_delay) = (
            shared.config.disk_full_after_writes,
            shared.config.sync_delay,
        );
        let disk = if full_after.is_some() || sync_delay.is_some() {
            let faults = Rc::new(crate::io::Faults::new());
            if let Some(n) = full_after {
                log::warn!("partition {p}: TESTING fault: the disk fills after {n} writes");
                faults.set_disk_full_after_writes(n);
            }
            if let Some(delay) = sync_delay {
                log::warn!("partition {p}: TESTING fault: every fdatasync waits {delay:?} first");
                faults.set_sync_delay(delay);
            }
            crate::io::Disk::with_faults(faults)
        } else {
            crate::io::Disk::new()
        };
        let log = Log::open_with_disk(&dir, config, disk)
            .await
            .map_err(|e| format!("partition {p}: {e}"))?;
        stats.add_partition(p);
        log.set_observer(Rc::new(FlushStats {
            stats: stats.clone(),
            partition: p,
        }));
        logs.insert(p, log);
    }
    Ok(logs)
}

fn handle_core_msg(shard: &Rc<Shard>, msg: CoreMsg) {
    match msg {
        CoreMsg::Connection { socket, kind, .. } => {
            let stream = socket.into_stream();
            glommio::spawn_local(crate::net::conn::serve(shard.clone(), stream, kind)).detach();
        }
        CoreMsg::Stats { reply } => {
            let _ = reply.send(shard.stats_snapshot());
        }
        CoreMsg::Partitions { reply } => {
            let _ = reply.send(shard.local_partition_infos());
        }
    }
}

/// Waits for this core's connections to finish, up to [`SHUTDOWN_DRAIN_MS`].
/// How long a stopping node waits for its peer connections to close once its groups stopped.
const PEER_CLOSE_MS: u64 = 1_000;

/// Waits for this core's client connections to finish, up to [`SHUTDOWN_DRAIN_MS`]; peer
/// connections stay up (and are served) until the Raft groups stop.
async fn drain_connections(shard: &Shard) {
    wait_for_connections(
        shard,
        shard.peer_connections.get(),
        Duration::from_millis(SHUTDOWN_DRAIN_MS),
    )
    .await;
}

/// Waits until at most `peers` connections (the peer ones) remain, or `limit` passed.
async fn wait_for_connections(shard: &Shard, peers: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    while shard.connections.get() > peers.min(shard.peer_connections.get()) {
        let seen = shard.connection_closed.generation();
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            log::warn!(
                "core {}: {} connections still open after {} ms; closing",
                shard.core,
                shard.connections.get(),
                limit.as_millis()
            );
            return;
        }
        futures_lite::future::or(shard.connection_closed.wait(seen), crate::io::sleep(left)).await;
    }
}

/// `<data>/partitions/<p>`.
pub fn partition_dir(data_dir: &Path, p: Partition) -> PathBuf {
    data_dir.join("partitions").join(p.0.to_string())
}

/// What `<data>/node.toml` fixes at first start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeMeta {
    pub partitions: u32,
    pub node_id: u64,
    pub replicated: bool,
    /// The file did not exist: this is the node's first start.
    pub fresh: bool,
}

/// The partition count, node id and mode (standalone or replicated) are fixed at first start:
/// stored in `<data>/node.toml`, checked after.
fn load_or_store_node_meta(
    data_dir: &Path,
    requested: Option<u32>,
    default: u32,
    node_id: u64,
    replicated: bool,
) -> Result<NodeMeta, String> {
    let path = data_dir.join(NODE_META_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let stored = parse_key(&text, "partitions")
                .and_then(|v| v.parse::<u32>().ok())
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{}: no valid `partitions = N` line", path.display()))?;
            if let Some(r) = requested
                && r != stored
            {
                return Err(format!(
                    "{} was created with {stored} partitions; --partitions {r} differs (the \
                     partition count is fixed at first start)",
                    data_dir.display()
                ));
            }
            let stored_id = parse_key(&text, "node_id").unwrap_or_else(|| "1".into());
            if stored_id != node_id.to_string() {
                return Err(format!(
                    "{} belongs to node {stored_id}; --node-id {node_id} differs (a node's id \
                     is fixed at first start)",
                    data_dir.display()
                ));
            }
            let stored_replicated = parse_key(&text, "replicated").is_some_and(|v| v == "true");
            if stored_replicated != replicated {
                let (was, now) = if stored_replicated {
                    ("a replicated cluster node", "without --cluster/--join")
                } else {
                    ("a standalone node", "with --cluster/--join")
                };
                return Err(format!(
                    "{} was created as {was}; it cannot be started {now} (the mode is fixed at \
                     first start)",
                    data_dir.display()
                ));
            }
            Ok(NodeMeta {
                partitions: stored,
                node_id,
                replicated,
                fresh: false,
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let partitions = requested.unwrap_or(default);
            let text = format!(
                "# corelog node metadata, written at first start. Do not edit.\n\
                 node_id = \"{node_id}\"\npartitions = {partitions}\nreplicated = {replicated}\n"
            );
            write_durably(&path, text.as_bytes())
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            Ok(NodeMeta {
                partitions,
                node_id,
                replicated,
                fresh: true,
            })
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// The value of `key = value` in node.toml, quotes removed.
fn parse_key(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (k, value) = line.split_once('=')?;
        (k.trim() == key).then(|| value.trim().trim_matches('"').to_string())
    })
}

fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
}

/// Refuses to start when io_uring is switched off by sysctl.
fn check_io_uring_enabled() -> Result<(), String> {
    match std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        Ok(v) if v.trim() != "0" => Err(format!(
            "io_uring is disabled (kernel.io_uring_disabled = {}); corelog needs it: run \
             `sysctl -w kernel.io_uring_disabled=0`",
            v.trim()
        )),
        // Absent on kernels before 6.6, where io_uring cannot be switched off this way.
        _ => Ok(()),
    }
}

/// Takes an exclusive lock on `<data>/LOCK`: two nodes must never share a data directory.
fn lock_data_dir(data_dir: &Path) -> Result<std::fs::File, String> {
    let path = data_dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(format!(
            "{} is in use by another corelog process (lock {})",
            data_dir.display(),
            path.display()
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(format!("cannot lock {}: {e}", path.display())),
    }
}

/// Binds (without listening) a SO_REUSEPORT socket to hold the port while the cores bind it.
/// A fixed port is first bound plainly, so a port another process (even another corelog
/// with SO_REUSEPORT) holds is refused instead of silently shared.
fn reserve_port(addr: SocketAddr) -> Result<(socket2::Socket, SocketAddr), String> {
    use socket2::{Domain, Protocol, Socket, Type};
    if addr.port() != 0 {
        // Something already accepting there (another corelog with SO_REUSEPORT would even let
        // us bind) means the port is taken. A plain bind probe would also trip over this
        // node's own TIME_WAIT connections after a restart, so probe by connecting instead.
        let mut probe = addr;
        if probe.ip().is_unspecified() {
            probe.set_ip(match addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        if std::net::TcpStream::connect_timeout(&probe, Duration::from_millis(PORT_PROBE_MS))
            .is_ok()
        {
            return Err(format!(
                "cannot bind {addr}: address already in use (something accepts connections there)"
            ));
        }
    }
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let reserve = || -> std::io::Result<(Socket, SocketAddr)> {
        let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
        // A restart must not wait for the previous run's TIME_WAIT connections.
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.bind(&addr.into())?;
        let local = s
            .local_addr()?
            .as_socket()
            .ok_or_else(|| std::io::Error::other("not an IP socket"))?;
        Ok((s, local))
    };
    reserve().map_err(|e| format!("cannot bind {addr}: {e}"))
}

/// Records each partition's group-commit latency as the `fsync` op.
struct FlushStats {
    stats: Rc<CoreStats>,
    partition: Partition,
}

impl crate::storage::LogObserver for FlushStats {
    fn flushed(&self, _bytes: u64, _batches: usize, duration: Duration) {
        let micros = duration.as_micros().min(u64::MAX as u128) as u64;
        self.stats
            .record_latency(crate::stats::Op::Fsync, Some(self.partition), micros);
    }
}

/// What the stats endpoint asks the node.
struct StatsSource {
    shard: Rc<Shard>,
}

impl crate::stats::StatsSource for StatsSource {
    async fn gather(&self) -> Vec<crate::stats::CoreSnapshot> {
        self.shard.all_snapshots().await
    }

    fn health(&self) -> crate::stats::Health {
        let node = &self.shard.node;
        if node.shutting_down() {
            crate::stats::Health::not_ready("shutting down")
        } else if !node.ready.load(Ordering::Relaxed) {
            crate::stats::Health::not_ready("starting")
        } else if node.cores_led.load(Ordering::Relaxed) < node.cores {
            crate::stats::Health::not_ready("waiting for partition leaders")
        } else {
            crate::stats::Health::ready()
        }
    }
}

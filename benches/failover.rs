//! Failover benchmark (issue 5): how long a partition takes no writes after its leader dies.
//!
//! Starts a 3-node cluster of real `corelog serve` processes (the binary cargo built for this
//! bench) on loopback with real TLS: one CA and certificates from `corelog certs`, node 1
//! `--cluster`, nodes 2 and 3 `--join` node 1, one partition, one core each, spread over CPUs
//! 0 and 1 with `--cpuset` — three nodes on this 2-core machine oversubscribe the cores, so
//! the figures include waiting for a CPU. A producer (its own glommio executor, unpinned)
//! writes to partition 0 continuously: [`WRITERS`] closed-loop tasks, each with one batch of
//! [`BATCH_RECORDS`] records in flight, sent to the node believed to lead, following
//! NOT_LEADER answers (certainly not applied: resent) and moving to the next node when a
//! connection fails (the batch's fate is then unknown: it is not counted as acknowledged).
//!
//! Each trial: kill -9 the leader of partition 0; the failover time is from the kill to the
//! first acknowledgement from another node; then restart the killed node on the same port and
//! data directory and wait until it holds everything the leader had when it came back. At the
//! end the producer stops and partition 0 is read from every node: every acknowledged record
//! must be at its acknowledged offset with its bytes, on every node.
//!
//! ```sh
//! cargo bench --bench failover                    # 20 trials
//! cargo bench --bench failover -- --quick         # 3 trials (also CORELOG_BENCH_QUICK=1)
//! cargo bench --bench failover -- --trials 50 --election-min-ms 150 --election-max-ms 300
//! ```
//!
//! Data lives under `<target>/tmp/failover-bench/` and is removed after a passing run; each
//! node's stderr goes to `n<ID>.log` there, at `RUST_LOG=warn` unless
//! `CORELOG_BENCH_NODE_LOG` names another filter (e.g. `info`).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use corelog::client::{Client, ClientConfig, ClientError};
use corelog::net::errors::ServerError;
use glommio::{LocalExecutorBuilder, Placement};

const TRIALS_DEFAULT: usize = 20;
const TRIALS_QUICK: usize = 3;
/// The nodes' Raft timing unless flags say otherwise (the node's own defaults).
const HEARTBEAT_MS_DEFAULT: u64 = 50;
const ELECTION_MIN_MS_DEFAULT: u64 = 250;
const ELECTION_MAX_MS_DEFAULT: u64 = 500;
const NODES: u64 = 3;
/// Concurrent writers, each with one produce request in flight.
const WRITERS: usize = 4;
const BATCH_RECORDS: usize = 4;
const RECORD_BYTES: usize = 128;
/// A produce request that gets no answer in this long counts as failed.
const REQUEST_TIMEOUT_MS: u64 = 2_000;
/// Pause before trying again when no node is known to lead.
const RETRY_MS: u64 = 5;
/// How long a node may take to print its serving line.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the cluster may take to elect a first leader, a write to succeed after a kill, or
/// a restarted node to catch up: past these the bench fails.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);
/// Load between trials before the next kill, so the producer is in full swing.
const STEADY_MS: u64 = 500;
const SEGMENT_BYTES: &str = "67108864";
const SERVING_PREFIX: &str = "corelog: serving ";
const IO_MEMORY_BYTES: usize = 1 << 20;

fn main() {
    let options = Options::parse();
    corelog::io::ensure_memlock(corelog::io::memlock_bytes_wanted(2, IO_MEMORY_BYTES))
        .expect("locked-memory limit");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("failover-bench");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the bench directory");
    println!(
        "failover: {} trials; 3 nodes on loopback, one partition, nodes pinned to CPUs 0, 1, 0 \
         (3 nodes on {} CPUs: oversubscribed); Raft heartbeat {} ms, election timeout {}..{} ms; \
         producer: {WRITERS} writers × {BATCH_RECORDS} records of {RECORD_BYTES} B, one request \
         in flight each",
        options.trials,
        corelog::io::online_cpus().len(),
        options.heartbeat_ms,
        options.election_min_ms,
        options.election_max_ms
    );
    let ex = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(IO_MEMORY_BYTES)
        .make()
        .expect("glommio executor");
    let ok = ex.run(run(options, dir.clone()));
    if ok {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("failover: FAILED; node logs kept in {}", dir.display());
        std::process::exit(1);
    }
}

/// Command-line options (after `cargo bench --bench failover --`; cargo's own `--bench` is
/// ignored).
struct Options {
    trials: usize,
    heartbeat_ms: u64,
    election_min_ms: u64,
    election_max_ms: u64,
}

impl Options {
    fn parse() -> Options {
        let quick = std::env::var_os("CORELOG_BENCH_QUICK").is_some();
        let mut o = Options {
            trials: if quick { TRIALS_QUICK } else { TRIALS_DEFAULT },
            heartbeat_ms: HEARTBEAT_MS_DEFAULT,
            election_min_ms: ELECTION_MIN_MS_DEFAULT,
            election_max_ms: ELECTION_MAX_MS_DEFAULT,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = |name: &str| -> u64 {
                args.next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("{name} needs a number"))
            };
            match arg.as_str() {
                "--quick" => o.trials = TRIALS_QUICK,
                "--trials" => o.trials = value("--trials") as usize,
                "--heartbeat-ms" => o.heartbeat_ms = value("--heartbeat-ms"),
                "--election-min-ms" => o.election_min_ms = value("--election-min-ms"),
                "--election-max-ms" => o.election_max_ms = value("--election-max-ms"),
                _ => {} // `--bench` and filters from cargo
            }
        }
        assert!(o.trials >= 1, "--trials must be at least 1");
        o
    }
}

/// What the producer tells the orchestrator.
#[derive(Default)]
struct Progress {
    /// Every acknowledged record: (offset, sequence).
    acked: Vec<(u64, u64)>,
    /// Every acknowledged batch: when, and which node answered.
    acks: Vec<(Instant, SocketAddr)>,
    /// NOT_LEADER answers followed.
    reroutes: u64,
    /// Requests whose outcome is unknown (connection broke, timeout, UNAVAILABLE).
    unknown: u64,
}

/// The cluster's processes.
struct Cluster {
    dir: PathBuf,
    tls: PathBuf,
    ports: HashMap<u64, u16>,
    children: HashMap<u64, Child>,
    timing: [String; 3],
}

impl Cluster {
    fn addr(&self, id: u64) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports[&id]))
    }

    /// Starts node `id` (node 1 bootstraps, the others join it) and waits for its serving line.
    fn start(&mut self, id: u64) {
        let data = self.dir.join(format!("n{id}"));
        let log_path = self.dir.join(format!("n{id}.log"));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open the node log");
        let seen_before = std::fs::metadata(&log_path).map_or(0, |m| m.len());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_corelog"));
        cmd.arg("serve")
            .args(["--data-dir", data.to_str().expect("utf-8 path")])
            .args(["--listen", &self.addr(id).to_string()])
            .args(["--stats-listen", "127.0.0.1:0"])
            .args(["--tls-dir", self.tls.to_str().expect("utf-8 path")])
            .args(["--tls-name", "node"])
            .args(["--node-id", &id.to_string()])
            .args(["--cpuset", &((id - 1) % 2).to_string()])
            .args(["--partitions", "1"])
            .args(["--segment-bytes", SEGMENT_BYTES])
            .args(["--raft-heartbeat-ms", &self.timing[0]])
            .args(["--raft-election-min-ms", &self.timing[1]])
            .args(["--raft-election-max-ms", &self.timing[2]]);
        if id == 1 {
            cmd.arg("--cluster");
        } else {
            cmd.args(["--join", &self.addr(1).to_string()]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .env(
                "RUST_LOG",
                std::env::var("CORELOG_BENCH_NODE_LOG").unwrap_or_else(|_| "warn".into()),
            );
        let child = cmd.spawn().expect("spawn corelog serve");
        self.children.insert(id, child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let mut text = String::new();
            if let Ok(mut f) = File::open(&log_path) {
                let _ = f.read_to_string(&mut text);
            }
            if text
                .get(seen_before as usize..)
                .is_some_and(|t| t.contains(SERVING_PREFIX))
            {
                return;
            }
            if let Some(Ok(Some(status))) = self.children.get_mut(&id).map(|c| c.try_wait()) {
                panic!(
                    "node {id} exited ({status}) before serving; see {}",
                    log_path.display()
                );
            }
            assert!(
                Instant::now() < deadline,
                "node {id} did not serve within {START_TIMEOUT:?}; see {}",
                log_path.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// kill -9 node `id` and reap it; returns when the signal was sent.
    fn kill9(&mut self, id: u64) -> Instant {
        let child = self.children.get_mut(&id).expect("node is running");
        let at = Instant::now();
        child.kill().expect("kill -9");
        let _ = child.wait();
        self.children.remove(&id);
        at
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The whole bench; returns whether every check passed.
async fn run(options: Options, dir: PathBuf) -> bool {
    let tls = dir.join("tls");
    let out = Command::new(env!("CARGO_BIN_EXE_corelog"))
        .args(["certs", "--out", tls.to_str().expect("utf-8 path")])
        .args(["--node", "node", "--client", "client"])
        .output()
        .expect("run corelog certs");
    assert!(out.status.success(), "corelog certs: {out:?}");
    let mut cluster = Cluster {
        dir: dir.clone(),
        tls: tls.clone(),
        ports: (1..=NODES).map(|id| (id, free_port())).collect(),
        children: HashMap::new(),
        timing: [
            options.heartbeat_ms.to_string(),
            options.election_min_ms.to_string(),
            options.election_max_ms.to_string(),
        ],
    };
    let addrs: Vec<SocketAddr> = (1..=NODES).map(|id| cluster.addr(id)).collect();
    for id in 1..=NODES {
        cluster.start(id);
    }
    let watcher = Watcher {
        tls: tls.clone(),
        clients: RefCell::new(HashMap::new()),
    };
    wait_for_voters(&watcher, &addrs).await;

    let progress = Arc::new(Mutex::new(Progress::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (progress, stop, tls, addrs) =
            (progress.clone(), stop.clone(), tls.clone(), addrs.clone());
        LocalExecutorBuilder::new(Placement::Unbound)
            .name("failover-producer")
            .io_memory(IO_MEMORY_BYTES)
            .spawn(move || async move { produce(tls, addrs, progress, stop).await })
            .expect("producer executor")
    };
    corelog::io::sleep(Duration::from_millis(STEADY_MS)).await;
    let started = Instant::now();

    let mut failovers_ms = Vec::new();
    for trial in 1..=options.trials {
        let (leader_id, leader) = current_leader(&watcher, &addrs).await;
        let seen = progress.lock().expect("progress").acks.len();
        let (reroutes0, unknown0) = {
            let p = progress.lock().expect("progress");
            (p.reroutes, p.unknown)
        };
        let killed_at = cluster.kill9(leader_id);
        let first = wait_for_ack(&progress, seen, killed_at, leader);
        let failover = first.0.duration_since(killed_at);
        failovers_ms.push(failover.as_secs_f64() * 1e3);
        let (reroutes, unknown) = {
            let p = progress.lock().expect("progress");
            (p.reroutes - reroutes0, p.unknown - unknown0)
        };
        let restart_at = Instant::now();
        cluster.start(leader_id);
        let serving_at = Instant::now();
        let caught_up = wait_caught_up(&watcher, &addrs, leader).await;
        println!(
            "trial {trial:>2}: killed node {leader_id} (leader) → first ack {:>7.1} ms after the \
             kill (node {}); {reroutes} reroutes, {unknown} writes of unknown outcome; restarted \
             and caught up in {:.2} s (serving after {:.2} s)",
            failover.as_secs_f64() * 1e3,
            addrs
                .iter()
                .position(|a| *a == first.1)
                .map_or(0, |i| i + 1),
            caught_up.duration_since(restart_at).as_secs_f64(),
            serving_at.duration_since(restart_at).as_secs_f64()
        );
        corelog::io::sleep(Duration::from_millis(STEADY_MS)).await;
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let _ = producer.join();

    let progress = std::mem::take(&mut *progress.lock().expect("progress"));
    println!(
        "failover (kill -9 → first acknowledged write) over {} trials: {}",
        failovers_ms.len(),
        summary(&failovers_ms)
    );
    println!(
        "Raft timing: heartbeat {} ms, election timeout {}..{} ms; producer: {} records \
         acknowledged in {:.1} s ({:.0} records/s through the failovers), {} reroutes, {} \
         writes of unknown outcome",
        options.heartbeat_ms,
        options.election_min_ms,
        options.election_max_ms,
        progress.acked.len(),
        elapsed.as_secs_f64(),
        progress.acked.len() as f64 / elapsed.as_secs_f64(),
        progress.reroutes,
        progress.unknown
    );
    verify(&watcher, &addrs, &progress.acked).await
}

/// Nearest-rank percentiles of `values` (ms); with 20 values p99 is the largest.
fn summary(values: &[f64]) -> String {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    format!(
        "p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms, min {:.1} ms",
        rank(0.50),
        rank(0.90),
        rank(0.99),
        v[v.len() - 1],
        v[0]
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The first acknowledgement after `killed_at` from a node other than `killed`.
fn wait_for_ack(
    progress: &Mutex<Progress>,
    mut from: usize,
    killed_at: Instant,
    killed: SocketAddr,
) -> (Instant, SocketAddr) {
    let deadline = killed_at + CONVERGE_TIMEOUT;
    loop {
        {
            let p = progress.lock().expect("progress");
            if let Some(hit) = p.acks[from..]
                .iter()
                .find(|(at, addr)| *at > killed_at && *addr != killed)
            {
                return *hit;
            }
            from = p.acks.len();
        }
        assert!(
            Instant::now() < deadline,
            "no write was acknowledged within {CONVERGE_TIMEOUT:?} of the kill"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The bench's own clients, for metadata and the final reads.
struct Watcher {
    tls: PathBuf,
    clients: RefCell<HashMap<SocketAddr, Rc<Client>>>,
}

impl Watcher {
    async fn client(&self, addr: SocketAddr) -> Result<Rc<Client>, ClientError> {
        if let Some(c) = self.clients.borrow().get(&addr) {
            return Ok(c.clone());
        }
        let config = ClientConfig::new(addr, &self.tls, "client")?;
        let client = Rc::new(Client::connect(config).await?);
        self.clients.borrow_mut().insert(addr, client.clone());
        Ok(client)
    }

    /// Partition 0 as the node at `addr` sees it: (leader id, high watermark, voters).
    async fn partition0(&self, addr: SocketAddr) -> Option<(Option<u64>, u64, usize)> {
        let meta = match self.client(addr).await {
            Ok(c) => c.metadata().await,
            Err(e) => Err(e),
        };
        let Ok(meta) = meta else {
            self.clients.borrow_mut().remove(&addr);
            return None;
        };
        let p = meta.partitions.into_iter().find(|p| p.partition == 0)?;
        let voters = p.members.iter().filter(|m| m.voter).count();
        Some((p.leader_id.parse().ok(), p.high_watermark, voters))
    }
}

async fn wait_for_voters(watcher: &Watcher, addrs: &[SocketAddr]) {
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        let mut ready = 0;
        for a in addrs {
            if let Some((Some(_), _, voters)) = watcher.partition0(*a).await
                && voters == addrs.len()
            {
                ready += 1;
            }
        }
        if ready == addrs.len() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the cluster did not form within {CONVERGE_TIMEOUT:?}"
        );
        corelog::io::sleep(Duration::from_millis(50)).await;
    }
}

/// The leader of partition 0 that a node names: its id and address.
async fn current_leader(watcher: &Watcher, addrs: &[SocketAddr]) -> (u64, SocketAddr) {
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        for a in addrs {
            if let Some((Some(id), _, _)) = watcher.partition0(*a).await
                && (1..=addrs.len() as u64).contains(&id)
            {
                return (id, addrs[id as usize - 1]);
            }
        }
        assert!(Instant::now() < deadline, "partition 0 has no leader");
        corelog::io::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the node at `addr` holds everything the leader had committed when it started
/// serving again; returns when it does.
async fn wait_caught_up(watcher: &Watcher, addrs: &[SocketAddr], addr: SocketAddr) -> Instant {
    let (_, leader) = current_leader(watcher, addrs).await;
    let target = loop {
        if let Some((_, hw, _)) = watcher.partition0(leader).await {
            break hw;
        }
        corelog::io::sleep(Duration::from_millis(20)).await;
    };
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        if let Some((_, hw, _)) = watcher.partition0(addr).await
            && hw >= target
        {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "{addr} did not catch up to offset {target} within {CONVERGE_TIMEOUT:?}"
        );
        corelog::io::sleep(Duration::from_millis(10)).await;
    }
}

/// The value of record `seq`: its sequence, then bytes that follow from it.
fn value_of(seq: u64) -> Bytes {
    let mut v = Vec::with_capacity(RECORD_BYTES);
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend((8..RECORD_BYTES).map(|i| (seq.wrapping_mul(31).wrapping_add(i as u64)) as u8));
    Bytes::from(v)
}

/// Reads partition 0 from every node; every acknowledged record must be at its offset.
async fn verify(watcher: &Watcher, addrs: &[SocketAddr], acked: &[(u64, u64)]) -> bool {
    let end = acked.iter().map(|(o, _)| o + 1).max().unwrap_or(0);
    let mut by_offset: Vec<(u64, u64)> = acked.to_vec();
    by_offset.sort_unstable();
    let mut ok = true;
    for (i, addr) in addrs.iter().enumerate() {
        let held = read_partition0(watcher, *addr, end).await;
        let bad = by_offset
            .iter()
            .filter(|(offset, seq)| held.get(*offset as usize) != Some(&value_of(*seq)))
            .count();
        println!(
            "verify: node {}: {} of {} acknowledged records at their offsets ({} records read)",
            i + 1,
            by_offset.len() - bad,
            by_offset.len(),
            held.len()
        );
        ok &= bad == 0;
    }
    if ok {
        println!("verify: no acknowledged record lost on any node");
    } else {
        println!("verify: ACKNOWLEDGED RECORDS LOST");
    }
    ok
}

/// Partition 0 of the node at `addr`, offsets 0.. up to at least `end` (waiting for it to
/// catch up).
async fn read_partition0(watcher: &Watcher, addr: SocketAddr, end: u64) -> Vec<Bytes> {
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    let mut out: Vec<Bytes> = Vec::new();
    while (out.len() as u64) < end {
        let next = out.len() as u64;
        let resp = match watcher.client(addr).await {
            Ok(c) => {
                c.consume(0, next, 1 << 20, Duration::from_millis(100))
                    .await
            }
            Err(e) => Err(e),
        };
        match resp {
            Ok(r) => {
                for rec in r.records {
                    assert_eq!(rec.offset, out.len() as u64, "{addr}: dense offsets");
                    out.push(rec.value);
                }
            }
            Err(e) => {
                watcher.clients.borrow_mut().remove(&addr);
                eprintln!("verify: read {addr} at {next}: {e}");
                corelog::io::sleep(Duration::from_millis(100)).await;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{addr}: holds {} records, fewer than the {end} acknowledged",
            out.len()
        );
    }
    out
}

/// The producer: [`WRITERS`] closed-loop writers sharing one route to the leader.
async fn produce(
    tls: PathBuf,
    addrs: Vec<SocketAddr>,
    progress: Arc<Mutex<Progress>>,
    stop: Arc<AtomicBool>,
) {
    let router = Rc::new(Router {
        tls,
        addrs,
        clients: RefCell::new(HashMap::new()),
        leader: Cell::new(None),
        next: Cell::new(0),
        seq: Cell::new(0),
    });
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| {
            let (router, progress, stop) = (router.clone(), progress.clone(), stop.clone());
            glommio::spawn_local(async move { router.write_until(&stop, &progress).await })
        })
        .collect();
    for w in writers {
        w.await;
    }
}

/// Where the producer sends: the node believed to lead, else the nodes in turn.
struct Router {
    tls: PathBuf,
    addrs: Vec<SocketAddr>,
    clients: RefCell<HashMap<SocketAddr, Rc<Client>>>,
    leader: Cell<Option<SocketAddr>>,
    next: Cell<usize>,
    seq: Cell<u64>,
}

impl Router {
    /// One writer: a batch at a time until `stop`.
    async fn write_until(&self, stop: &AtomicBool, progress: &Mutex<Progress>) {
        let mut batch = self.next_batch();
        while !stop.load(Ordering::SeqCst) {
            let addr = self.leader.get().unwrap_or_else(|| self.rotate());
            let client = match self.client(addr).await {
                Ok(c) => c,
                Err(_) => {
                    // Not connected: nothing was sent; try the next node.
                    self.failed(addr);
                    corelog::io::sleep(Duration::from_millis(RETRY_MS)).await;
                    continue;
                }
            };
            let values: Vec<Bytes> = batch.iter().map(|s| value_of(*s)).collect();
            match client.produce(0, values).await {
                Ok(r) => {
                    let now = Instant::now();
                    self.leader.set(Some(addr));
                    let mut p = progress.lock().expect("progress");
                    p.acks.push((now, addr));
                    p.acked.extend(
                        batch
                            .iter()
                            .enumerate()
                            .map(|(i, s)| (r.base_offset + i as u64, *s)),
                    );
                    drop(p);
                    batch = self.next_batch();
                }
                Err(ClientError::Server(ServerError::NotLeader { leader_addr, .. })) => {
                    // Certainly not applied: resend the same batch where the answer points.
                    progress.lock().expect("progress").reroutes += 1;
                    match leader_addr.and_then(|a| a.parse::<SocketAddr>().ok()) {
                        Some(l) if l != addr => self.leader.set(Some(l)),
                        _ => {
                            self.leader.set(None);
                            corelog::io::sleep(Duration::from_millis(RETRY_MS)).await;
                        }
                    }
                }
                Err(_) => {
                    // Maybe applied, maybe not: never counted as acknowledged. New sequences.
                    progress.lock().expect("progress").unknown += 1;
                    self.failed(addr);
                    batch = self.next_batch();
                }
            }
        }
    }

    fn next_batch(&self) -> Vec<u64> {
        let first = self.seq.get();
        self.seq.set(first + BATCH_RECORDS as u64);
        (first..first + BATCH_RECORDS as u64).collect()
    }

    fn rotate(&self) -> SocketAddr {
        let i = self.next.get();
        self.next.set(i + 1);
        self.addrs[i % self.addrs.len()]
    }

    fn failed(&self, addr: SocketAddr) {
        if self.leader.get() == Some(addr) {
            self.leader.set(None);
        }
        self.clients.borrow_mut().remove(&addr);
    }

    async fn client(&self, addr: SocketAddr) -> Result<Rc<Client>, ClientError> {
        if let Some(c) = self.clients.borrow().get(&addr) {
            return Ok(c.clone());
        }
        let mut config = ClientConfig::new(addr, &self.tls, "client")?;
        config.request_timeout = Duration::from_millis(REQUEST_TIMEOUT_MS);
        config.connect_timeout = Duration::from_millis(REQUEST_TIMEOUT_MS);
        let client = Rc::new(Client::connect(config).await?);
        let mut clients = self.clients.borrow_mut();
        Ok(clients.entry(addr).or_insert(client).clone())
    }
}

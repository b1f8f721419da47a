//! A replicated cluster of real `corelog serve` processes on loopback, for end-to-end tests.
//!
//! [`Cluster`]: nodes `1..=n` with data under one test directory (removed after a passing
//! test, once the nodes are killed) and one CA made by `corelog certs`. Node 1 bootstraps
//! (`--cluster`), the others join it (`--join`). A node keeps its port and data directory
//! across restarts; stopped nodes are kept for their stderr (printed if the test fails).
//! Optionally peers reach every node only through a [`Proxy`] of the test process, which can
//! cut it off ([`Cluster::isolate`]) and [`Cluster::heal`] it.
//!
//! One cluster runs at a time in a test binary: three or four debug-build nodes already
//! oversubscribe this machine's cores, and two clusters at once would turn every timeout
//! into a coin toss.
//!
//! The waits for voters and leaders use a [`ClusterClient`] on a glommio executor of their
//! own ([`super::run`]): call them outside one. Every wait here is bounded in time.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use corelog::client::ClientConfig;
use corelog::client::cluster::ClusterClient;

use super::RemoveOnSuccess;
use super::node::{NodeProcess, free_port, run_cli};
use super::proxy::Proxy;

/// How long a cluster may take to form or converge (voters, an agreed leader).
pub const CONVERGE: Duration = Duration::from_secs(60);

/// Held by every [`Cluster`] for its life.
static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A test cluster: see the module documentation.
pub struct Cluster {
    pub dir: PathBuf,
    pub tls: PathBuf,
    /// `--partitions` of every node.
    partitions: u32,
    /// Whether nodes get `--advertise` (always with proxies: the proxy's address).
    advertise: bool,
    /// Whether nodes advertise and join by `localhost:PORT` instead of `127.0.0.1:PORT`.
    host_names: bool,
    /// `--leader-balance-interval-ms` of every node: 0 (off) unless a test turns it on, so
    /// that leaders move only when a test makes them.
    leader_balance_ms: u64,
    /// `--replication-factor` of every node, if given.
    replication_factor: Option<u64>,
    /// More flags for every node.
    args: Vec<String>,
    ports: BTreeMap<u64, u16>,
    nodes: BTreeMap<u64, NodeProcess>,
    /// Nodes that were stopped, kept for their stderr (printed if the test fails).
    stopped: Vec<NodeProcess>,
    /// With proxies: each node advertises its proxy, so peers reach it only through it.
    proxies: Option<BTreeMap<u64, Proxy>>,
    /// Removes the test directory after a passing test (declared after the nodes: dropped
    /// after they are killed).
    _remove: RemoveOnSuccess,
    /// Held for the cluster's life (declared last: dropped after the nodes are killed).
    _one_at_a_time: MutexGuard<'static, ()>,
}

impl Cluster {
    /// A cluster of `partitions` partitions with data in `target/tmp/corelog-tests/NAME`, and
    /// its certificates (`node`, with the admin right, and `client`); no node runs yet.
    pub fn new(name: &str, partitions: u32) -> Cluster {
        // A test that failed while holding the lock poisons it; the next one may still run.
        let one_at_a_time = ONE_CLUSTER_AT_A_TIME
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let dir = super::test_dir(name);
        let tls = dir.join("tls");
        make_certs(&tls);
        Cluster {
            _remove: RemoveOnSuccess(dir.clone()),
            dir,
            tls,
            partitions,
            advertise: false,
            host_names: false,
            leader_balance_ms: 0,
            replication_factor: None,
            args: Vec::new(),
            ports: BTreeMap::new(),
            nodes: BTreeMap::new(),
            stopped: Vec::new(),
            proxies: None,
            _one_at_a_time: one_at_a_time,
        }
    }

    /// Peer traffic goes through a [`Proxy`] per node (set before starting nodes).
    pub fn with_proxies(mut self) -> Cluster {
        self.proxies = Some(BTreeMap::new());
        self.advertise = true;
        self
    }

    /// Every node gets `--advertise` (where it listens, or its proxy).
    pub fn with_advertise(mut self) -> Cluster {
        self.advertise = true;
        self
    }

    /// Nodes advertise themselves, and join node 1, as `localhost:PORT` (a host name, which
    /// `corelog certs` certificates carry), so peers and clients look names up and check
    /// certificates against the host name.
    pub fn with_host_names(mut self) -> Cluster {
        assert!(
            self.proxies.is_none(),
            "proxies advertise their own address"
        );
        self.advertise = true;
        self.host_names = true;
        self
    }

    /// Leader balancing every `ms` on every node (off by default in tests).
    pub fn with_leader_balance_ms(mut self, ms: u64) -> Cluster {
        self.leader_balance_ms = ms;
        self
    }

    /// `--replication-factor` of every node.
    pub fn with_replication_factor(mut self, n: u64) -> Cluster {
        self.replication_factor = Some(n);
        self
    }

    /// Election timeouts of every node (`--raft-election-min-ms`, `--raft-election-max-ms`).
    pub fn with_election_ms(self, min: u64, max: u64) -> Cluster {
        self.with_args(&[
            "--raft-election-min-ms",
            &min.to_string(),
            "--raft-election-max-ms",
            &max.to_string(),
        ])
    }

    /// More flags for every node (after the cluster's own).
    pub fn with_args(mut self, args: &[&str]) -> Cluster {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Where node `id` listens (clients of the test connect here, past any proxy).
    pub fn addr(&self, id: u64) -> SocketAddr {
        format!("127.0.0.1:{}", self.ports[&id]).parse().unwrap()
    }

    /// Where peers reach node `id`: its proxy, or where it listens.
    pub fn advertised(&self, id: u64) -> SocketAddr {
        match &self.proxies {
            Some(proxies) => proxies[&id].addr(),
            None => self.addr(id),
        }
    }

    pub fn pid(&self, id: u64) -> u32 {
        self.nodes[&id].pid()
    }

    /// The running nodes.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// Running node `id`.
    pub fn node(&self, id: u64) -> &NodeProcess {
        &self.nodes[&id]
    }

    /// The node stopped last.
    pub fn last_stopped(&self) -> &NodeProcess {
        self.stopped.last().expect("a stopped node")
    }

    /// The proxy in front of node `id`.
    pub fn proxy(&self, id: u64) -> &Proxy {
        &self.proxies.as_ref().expect("a cluster with proxies")[&id]
    }

    /// Starts node `id`, or restarts it on the same port and data directory: the first
    /// bootstraps (`--cluster`), the others join node 1.
    pub fn start(&mut self, id: u64) {
        self.start_with(id, &[]);
    }

    /// [`Cluster::start`] with more flags for this start of this node only.
    pub fn start_with(&mut self, id: u64, extra: &[&str]) {
        self.start_node(id, extra, true);
    }

    /// Restarts node `id` (not node 1) with `--cluster` instead of `--join`: a node that left
    /// stays out of the cluster (with `--join` it would join again).
    pub fn restart_without_join(&mut self, id: u64) {
        assert_ne!(id, 1, "node 1 bootstraps; it never joins");
        self.start_node(id, &[], false);
    }

    fn start_node(&mut self, id: u64, extra: &[&str], join: bool) {
        assert!(!self.nodes.contains_key(&id), "node {id} is running");
        let port = *self.ports.entry(id).or_insert_with(free_port);
        if let Some(proxies) = &mut self.proxies {
            let target: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            proxies.entry(id).or_insert_with(|| Proxy::start(target));
        }
        let data = self.dir.join(format!("n{id}"));
        let listen = format!("127.0.0.1:{port}");
        let advertise = if self.host_names {
            format!("localhost:{port}")
        } else {
            self.advertised(id).to_string()
        };
        let cpu = ((id - 1) % 2).to_string();
        let id_s = id.to_string();
        let partitions = self.partitions.to_string();
        let rf = self.replication_factor.map(|n| n.to_string());
        let balance = self.leader_balance_ms.to_string();
        let join = (id != 1 && join).then(|| {
            if self.host_names {
                format!("localhost:{}", self.ports[&1])
            } else {
                self.addr(1).to_string()
            }
        });
        let mut args = vec![
            "--tls-dir",
            self.tls.to_str().unwrap(),
            "--tls-name",
            "node",
            "--node-id",
            &id_s,
            "--cpuset",
            &cpu,
            "--partitions",
            &partitions,
            "--listen",
            &listen,
        ];
        if self.advertise {
            args.extend(["--advertise", &advertise]);
        }
        if let Some(rf) = &rf {
            args.extend(["--replication-factor", rf]);
        }
        args.extend(["--leader-balance-interval-ms", &balance]);
        args.extend(self.args.iter().map(String::as_str));
        args.extend_from_slice(extra);
        match &join {
            Some(addr) => args.extend(["--join", addr.as_str()]),
            // Node 1 bootstraps; a restarted node that is not fresh does nothing more.
            None => args.push("--cluster"),
        }
        let node = NodeProcess::start(&data, &args);
        self.nodes.insert(id, node);
    }

    /// Starts nodes `1..=n` (without waiting for them to become voters).
    pub fn start_nodes(&mut self, n: u64) {
        for id in 1..=n {
            self.start(id);
        }
    }

    /// kill -9 node `id`; returns when the process is gone.
    pub fn kill9(&mut self, id: u64) {
        let mut node = self.nodes.remove(&id).expect("a running node");
        node.kill9();
        self.stopped.push(node);
    }

    /// Sends SIGTERM to node `id` without waiting; [`Cluster::wait_stopped`] reaps it.
    pub fn send_sigterm(&mut self, id: u64) {
        let node = self.nodes.remove(&id).expect("a running node");
        node.send_sigterm();
        self.stopped.push(node);
    }

    /// Waits for the stopped node with process id `pid` to exit.
    pub fn wait_stopped(&mut self, pid: u32) -> ExitStatus {
        let node = self
            .stopped
            .iter_mut()
            .find(|n| n.pid() == pid)
            .expect("a stopped node");
        node.wait_exit()
    }

    /// A client that knows every running node.
    pub fn client(&self) -> ClusterClient {
        self.client_of(&self.ids())
    }

    /// A client that knows only nodes `ids` (until leaders it is pointed to add themselves).
    pub fn client_of(&self, ids: &[u64]) -> ClusterClient {
        self.client_as(ids, "client")
    }

    /// A client presenting certificate `name` (`node` may change membership: admin).
    pub fn client_as(&self, ids: &[u64], name: &str) -> ClusterClient {
        let config = ClientConfig::new(self.addr(ids[0]), &self.tls, name).unwrap();
        let client = ClusterClient::new(config);
        client.add_seeds(ids.iter().map(|id| self.addr(*id)));
        client
    }

    /// `corelog COMMAND --addr <node id> --tls-dir <the cluster's> EXTRA...`.
    pub fn cli(&self, command: &[&str], id: u64, extra: &[&str], stdin: &str) -> Output {
        let addr = self.addr(id).to_string();
        let mut args: Vec<&str> = command.to_vec();
        args.extend(["--addr", &addr, "--tls-dir", self.tls.to_str().unwrap()]);
        args.extend_from_slice(extra);
        run_cli(&args, None, stdin)
    }

    /// Waits until every partition has exactly `voters` as its voters, with no membership
    /// change in flight.
    ///
    /// GetServers counts a node as a voter as soon as the joint configuration that adds it is
    /// appended (openraft's voter ids are the union of the joint configs), so seeing every
    /// voter does not mean the change is over: were node 1 killed while partition P is at
    /// `[{1, 2}, {1, 2, 3}]`, P could never elect a leader again (the old config has no majority
    /// left). Join is idempotent and answers only when no other change is in flight, committing
    /// a configuration that is not joint: sending it again for the newest voter is the barrier.
    pub fn wait_for_voters(&self, voters: &[u64]) {
        let client = self.client();
        let admin = self.client_as(&self.ids(), "node");
        let newest = *voters.last().expect("at least one voter");
        let newest_addr = self.advertised(newest).to_string();
        let partitions = self.partitions;
        super::run(|| async move {
            let deadline = Instant::now() + CONVERGE;
            wait_for_voter_set(&client, partitions, voters, deadline).await;
            for p in 0..partitions {
                loop {
                    match admin.join(p, newest, &newest_addr).await {
                        Ok(r) => {
                            assert!(r.voter, "p{p}: node {newest} is not a voter: {r:?}");
                            break;
                        }
                        Err(e) => assert!(
                            Instant::now() < deadline,
                            "p{p}: the membership change never settled: {e}"
                        ),
                    }
                    corelog::io::sleep(Duration::from_millis(100)).await;
                }
            }
            // Still the same voters (a join cannot have changed them: it only adds).
            wait_for_voter_set(&client, partitions, voters, deadline).await;
        });
    }

    /// Waits until nodes `ask` all name the same leader of `partition`, one other than
    /// `not`, and returns it.
    pub fn wait_for_leader(&self, partition: u32, ask: &[u64], not: Option<u64>) -> u64 {
        let client = self.client_of(ask);
        let addrs: Vec<SocketAddr> = ask.iter().map(|id| self.addr(*id)).collect();
        super::run(|| async move {
            agreed_leader(&client, &addrs, partition, not, CONVERGE)
                .await
                .unwrap_or_else(|views| {
                    panic!(
                        "nodes {ask:?} never agreed on a leader of p{partition} other than \
                         {not:?}: {views}"
                    )
                })
        })
    }

    /// The leader of `partition` all nodes agree on, and one of its followers.
    pub fn leader_and_follower(&self, partition: u32) -> (u64, u64) {
        let all = self.ids();
        let leader = self.wait_for_leader(partition, &all, None);
        let follower = all
            .into_iter()
            .find(|id| *id != leader)
            .expect("a cluster of more than one node");
        (leader, follower)
    }

    /// Cuts node `id` off from its peers: its proxy refuses everything, and the other proxies
    /// refuse what it dials. Clients of the test still reach it at its listen address.
    pub fn isolate(&self, id: u64) {
        let proxies = self.proxies.as_ref().expect("a cluster with proxies");
        proxies[&id].cut();
        let pid = self.pid(id);
        for (other, proxy) in proxies {
            if *other != id {
                proxy.refuse_from(pid);
            }
        }
    }

    /// Ends every cut.
    pub fn heal(&self) {
        for proxy in self
            .proxies
            .as_ref()
            .expect("a cluster with proxies")
            .values()
        {
            proxy.heal();
        }
    }
}

/// `corelog certs` into `tls`: a CA, and certificates `node` (with the admin right) and
/// `client` signed by it.
pub fn make_certs(tls: &Path) {
    let out = run_cli(
        &[
            "certs",
            "--out",
            tls.to_str().unwrap(),
            "--node",
            "node",
            "--client",
            "client",
        ],
        None,
        "",
    );
    assert!(out.status.success(), "corelog certs: {out:?}");
}

/// Starts nodes `1..=n` and waits until all are voters of every partition.
pub fn start_cluster(mut cluster: Cluster, n: u64) -> Cluster {
    cluster.start_nodes(n);
    let voters: Vec<u64> = (1..=n).collect();
    cluster.wait_for_voters(&voters);
    cluster
}

/// Waits until each of partitions `0..partitions` has exactly voters `want` (ids, ascending),
/// as the client's first reachable seed sees them.
pub async fn wait_for_voter_set(
    client: &ClusterClient,
    partitions: u32,
    want: &[u64],
    deadline: Instant,
) {
    let want: Vec<String> = want.iter().map(|v| v.to_string()).collect();
    loop {
        let mut last = String::new();
        if let Ok(servers) = client.get_servers().await {
            let ok = (0..partitions).all(|p| {
                let mut have: Vec<String> = servers
                    .servers
                    .iter()
                    .filter(|s| s.partitions_voter.contains(&p))
                    .map(|s| s.id.clone())
                    .collect();
                have.sort();
                have == want
            });
            if ok {
                return;
            }
            last = format!("{servers:?}");
        }
        assert!(
            Instant::now() < deadline,
            "voters never became {want:?}; last servers: {last}"
        );
        corelog::io::sleep(Duration::from_millis(100)).await;
    }
}

/// The leader of `partition` that every node at `addrs` names, once they agree and it is not
/// `not`; `Err` (what each node said last) when they do not within `timeout`.
pub async fn agreed_leader(
    client: &ClusterClient,
    addrs: &[SocketAddr],
    partition: u32,
    not: Option<u64>,
    timeout: Duration,
) -> Result<u64, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut views = Vec::with_capacity(addrs.len());
        for addr in addrs {
            views.push(leader_seen_by(client, *addr, partition).await);
        }
        if let Some(Ok(Some(first))) = views.first()
            && views.iter().all(|v| matches!(v, Ok(Some(l)) if l == first))
            && Some(*first) != not
        {
            return Ok(*first);
        }
        if Instant::now() >= deadline {
            return Err(format!("{views:?}"));
        }
        corelog::io::sleep(Duration::from_millis(20)).await;
    }
}

/// The leader of `partition` as the node at `addr` sees it.
pub async fn leader_seen_by(
    client: &ClusterClient,
    addr: SocketAddr,
    partition: u32,
) -> Result<Option<u64>, String> {
    let node = client.node(addr).await.map_err(|e| e.to_string())?;
    let servers = node.get_servers().await.map_err(|e| e.to_string())?;
    Ok(servers
        .servers
        .iter()
        .find(|s| s.partitions_led.contains(&partition))
        .map(|s| s.id.parse().expect("numeric node ids")))
}

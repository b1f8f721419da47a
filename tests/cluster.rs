//! Replication end to end: real `corelog serve` processes on loopback forming a cluster over
//! real TLS (one Raft group per partition). Three or four nodes on this 2-core machine
//! oversubscribe the cores: fine for correctness; no timing here is a performance claim (the
//! failover times printed are for the reader, and asserted only against generous bounds).
//!
//! Faults, each test states its own model: kill -9 of a leader under load, a graceful SIGTERM
//! of a leader, a node joining and leaving, and a clean network partition made by TCP proxies
//! in the test process (`common::proxy`) that every node reaches its peers through.

mod common;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::cluster::{CONVERGE, Cluster, agreed_leader, start_cluster};
use common::node::run_cli;
use common::proxy::Proxy;
use corelog::client::cluster::ClusterClient;
use corelog::client::{Client, ClientConfig};

const PARTITIONS: u32 = 2;
/// How long a partition may go without a leader after its leader died: followers wait out
/// the leader lease (openraft: the 500 ms election timeout maximum) and a 250-500 ms election
/// timeout, then vote; the rest is slack for oversubscribed debug builds.
const FAILOVER_MAX: Duration = Duration::from_secs(15);
/// SIGTERM-and-restart rounds of the test that looks for writes stranded by a hand-off.
const SIGTERM_ROUNDS: usize = 10;
/// Records in each produce request of the background producers.
const RECORDS_PER_PRODUCE: usize = 5;
/// Pause after a failed produce before the next one (a producer does not spin on errors).
const PRODUCE_ERROR_BACKOFF: Duration = Duration::from_millis(20);
/// How long a leader may take to replace a connection to a follower that went silent without
/// closing: three heartbeat timeouts and 2 s of silence (`PEER_SILENCE_MS_MIN`), then a
/// dial; the rest is slack for debug builds on a loaded 2-core machine.
const SILENT_REDIAL_MAX: Duration = Duration::from_secs(20);

/// What was acknowledged: partition → offset → value.
type Acked = BTreeMap<u32, BTreeMap<u64, Bytes>>;

/// A cluster of [`PARTITIONS`] partitions whose nodes advertise their address and replicate
/// every partition to 3 nodes (`--replication-factor 3`).
fn new_cluster(name: &str) -> Cluster {
    Cluster::new(name, PARTITIONS)
        .with_advertise()
        .with_replication_factor(3)
}

/// Records an acknowledgement: `values` sit at `base_offset`, `base_offset + 1`, ... No
/// offset may be acknowledged twice with different records.
fn record_ack(acked: &mut Acked, partition: u32, base_offset: u64, values: Vec<Bytes>) {
    let records = acked.entry(partition).or_default();
    for (i, v) in values.into_iter().enumerate() {
        let offset = base_offset + i as u64;
        if let Some(old) = records.insert(offset, v.clone()) {
            assert_eq!(
                old, v,
                "p{partition} offset {offset} was acknowledged for two different records"
            );
        }
    }
}

/// Produces `batches` batches of `per_batch` records to every partition; returns what was
/// acknowledged. The cluster is healthy, but a starved debug node can miss heartbeats and
/// cause an election: a failed produce is sent again (as new records: the failed attempt may
/// or may not be in the log, and only acknowledged records are promised), until [`CONVERGE`].
fn produce(client: &ClusterClient, tag: &str, batches: usize, per_batch: usize) -> Acked {
    common::run(|| async {
        let deadline = Instant::now() + CONVERGE;
        let mut acked = Acked::new();
        let mut failures = Vec::new();
        for b in 0..batches {
            for p in 0..PARTITIONS {
                for attempt in 0.. {
                    let values: Vec<Bytes> = (0..per_batch)
                        .map(|i| Bytes::from(format!("{tag}-p{p}-b{b}-a{attempt}-r{i}")))
                        .collect();
                    match client.produce(p, values.clone()).await {
                        Ok(resp) => {
                            record_ack(&mut acked, p, resp.base_offset, values);
                            break;
                        }
                        Err(e) => {
                            assert!(
                                Instant::now() < deadline,
                                "produce p{p} batch {b}: {e}; earlier failures: {failures:?}"
                            );
                            failures.push(format!("p{p} batch {b}: {e}"));
                            corelog::io::sleep(PRODUCE_ERROR_BACKOFF).await;
                        }
                    }
                }
            }
        }
        if !failures.is_empty() {
            println!(
                "{tag}: {} produces failed and were sent again: {failures:?}",
                failures.len()
            );
        }
        acked
    })
}

fn merge(into: &mut Acked, from: Acked) {
    for (p, records) in from {
        for (offset, value) in records {
            record_ack(into, p, offset, vec![value]);
        }
    }
}

/// Producers writing to every partition until told to stop, from tasks of one executor
/// sharing one [`ClusterClient`]. A failed produce is not retried (its records may or may
/// not be in the log); only acknowledged records are promised.
struct Load {
    tag: String,
    acked: RefCell<Acked>,
    /// Failed produces: partition, kind of error ([`error_kind`]), message.
    failed: RefCell<Vec<(u32, String, String)>>,
    stop: Cell<bool>,
    /// After [`Load::mark`]: when the mark was set, and when the first produce to partition 0
    /// *sent* after it was acknowledged (an ack read after the mark for a produce sent before
    /// it may come from the old leader).
    mark: Cell<Option<Instant>>,
    first_ack_after_mark: Cell<Option<Instant>>,
    /// Records per produce, and bytes each record is padded to.
    shape: Cell<(usize, usize)>,
}

impl Load {
    fn new(tag: &str) -> Rc<Load> {
        Rc::new(Load {
            tag: tag.to_string(),
            acked: RefCell::new(Acked::new()),
            failed: RefCell::new(Vec::new()),
            stop: Cell::new(false),
            mark: Cell::new(None),
            first_ack_after_mark: Cell::new(None),
            shape: Cell::new((RECORDS_PER_PRODUCE, 0)),
        })
    }

    /// Produces of `records` records, each padded to `bytes` (default: small records).
    fn with_shape(self: Rc<Self>, records: usize, bytes: usize) -> Rc<Self> {
        self.shape.set((records, bytes));
        self
    }

    /// Starts `writers` producers per partition.
    fn start(
        self: &Rc<Self>,
        client: &Rc<ClusterClient>,
        writers: usize,
    ) -> Vec<glommio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        for p in 0..PARTITIONS {
            for w in 0..writers {
                let load = self.clone();
                let client = client.clone();
                let task =
                    glommio::spawn_local(async move { load.produce(&client, p, w).await }).detach();
                tasks.push(task);
            }
        }
        tasks
    }

    async fn produce(&self, client: &ClusterClient, partition: u32, writer: usize) {
        let mut n = 0u64;
        while !self.stop.get() {
            let (records, pad) = self.shape.get();
            let values: Vec<Bytes> = (0..records)
                .map(|i| {
                    let mut v = format!("{}-p{partition}-w{writer}-n{n}-r{i}", self.tag);
                    if v.len() < pad {
                        v.push_str(&".".repeat(pad - v.len()));
                    }
                    Bytes::from(v)
                })
                .collect();
            n += 1;
            let sent = Instant::now();
            match client.produce(partition, values.clone()).await {
                Ok(r) => {
                    assert_eq!(r.record_count as usize, values.len());
                    record_ack(
                        &mut self.acked.borrow_mut(),
                        partition,
                        r.base_offset,
                        values,
                    );
                    if partition == 0
                        && self.first_ack_after_mark.get().is_none()
                        && self.mark.get().is_some_and(|m| sent >= m)
                    {
                        self.first_ack_after_mark.set(Some(Instant::now()));
                    }
                }
                Err(e) => {
                    self.failed
                        .borrow_mut()
                        .push((partition, error_kind(&e), e.to_string()));
                    corelog::io::sleep(PRODUCE_ERROR_BACKOFF).await;
                }
            }
        }
    }

    /// How many produces failed, by kind of error.
    fn failures(&self) -> BTreeMap<String, usize> {
        let mut kinds = BTreeMap::new();
        for (_, kind, _) in self.failed.borrow().iter() {
            *kinds.entry(kind.clone()).or_default() += 1;
        }
        kinds
    }

    fn acked_count(&self, partition: u32) -> usize {
        self.acked.borrow().get(&partition).map_or(0, |r| r.len())
    }

    /// Waits until partition `partition` has `count` acknowledged records in all.
    async fn wait_for_acks(&self, partition: u32, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.acked_count(partition) < count {
            assert!(
                Instant::now() < deadline,
                "p{partition}: {} of {count} records acknowledged after {timeout:?}; last errors: {:?}",
                self.acked_count(partition),
                self.failed
                    .borrow()
                    .iter()
                    .rev()
                    .take(5)
                    .collect::<Vec<_>>()
            );
            corelog::io::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Starts the clock of [`Load::first_ack_after_mark`].
    fn mark(&self) -> Instant {
        let now = Instant::now();
        self.mark.set(Some(now));
        now
    }

    /// Waits for the first acknowledgement of a produce sent after the mark; returns the
    /// time from the mark to it.
    async fn wait_for_ack_after_mark(&self, timeout: Duration) -> Duration {
        let mark = self.mark.get().expect("mark() first");
        loop {
            if let Some(at) = self.first_ack_after_mark.get() {
                return at - mark;
            }
            assert!(
                mark.elapsed() < timeout,
                "no write to p0 acknowledged within {timeout:?}; last errors: {:?}",
                self.failed
                    .borrow()
                    .iter()
                    .rev()
                    .take(5)
                    .collect::<Vec<_>>()
            );
            corelog::io::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops the producers and waits for them.
    async fn stop(&self, tasks: Vec<glommio::task::JoinHandle<()>>) {
        self.stop.set(true);
        for t in tasks {
            t.await;
        }
    }
}

/// Everything node `addr` holds in `partition` below its high watermark, once it holds at
/// least `at_least` records. Errors (a node still starting) are retried until the deadline.
async fn read_all(
    client: &ClusterClient,
    addr: SocketAddr,
    partition: u32,
    at_least: u64,
) -> Vec<(u64, Bytes)> {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let last = match read_below_high_watermark(client, addr, partition).await {
            Ok(out) if out.len() as u64 >= at_least => return out,
            Ok(out) => format!("holds {} records", out.len()),
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "{addr} p{partition}: expected at least {at_least} records; last: {last}"
        );
        corelog::io::sleep(Duration::from_millis(50)).await;
    }
}

async fn read_below_high_watermark(
    client: &ClusterClient,
    addr: SocketAddr,
    partition: u32,
) -> Result<Vec<(u64, Bytes)>, String> {
    let mut out = Vec::new();
    let mut next = 0;
    loop {
        let resp = client
            .consume_from(addr, partition, next, 1 << 20)
            .await
            .map_err(|e| format!("consume at {next}: {e}"))?;
        for r in &resp.records {
            assert_eq!(r.offset, next, "{addr} p{partition}: offsets are dense");
            out.push((r.offset, r.value.clone()));
            next += 1;
        }
        if resp.records.is_empty() || next >= resp.high_watermark {
            return Ok(out);
        }
    }
}

/// Every node `ids` holds every acknowledged record at its offset, and any two nodes' logs
/// agree record for record on their common prefix (no offset holds two different records).
/// Returns each node's log.
fn assert_replicas_agree(
    cluster: &Cluster,
    ids: &[u64],
    acked: &Acked,
) -> BTreeMap<u64, BTreeMap<u32, Vec<(u64, Bytes)>>> {
    let client = cluster.client_of(ids);
    let nodes: Vec<(u64, SocketAddr)> = ids.iter().map(|id| (*id, cluster.addr(*id))).collect();
    common::run(|| async move {
        let mut logs: BTreeMap<u64, BTreeMap<u32, Vec<(u64, Bytes)>>> = BTreeMap::new();
        for p in 0..PARTITIONS {
            let records = acked.get(&p).cloned().unwrap_or_default();
            let end = records.keys().next_back().map_or(0, |o| o + 1);
            for (id, addr) in &nodes {
                let held = read_all(&client, *addr, p, end).await;
                for (offset, value) in &records {
                    let got = held.get(*offset as usize).map(|(_, v)| v);
                    assert_eq!(got, Some(value), "node {id} p{p} offset {offset}");
                }
                logs.entry(*id).or_default().insert(p, held);
            }
            for (a, log_a) in &logs {
                for (b, log_b) in logs.range(a + 1..) {
                    let (x, y) = (&log_a[&p], &log_b[&p]);
                    let n = x.len().min(y.len());
                    if let Some(i) = (0..n).find(|i| x[*i] != y[*i]) {
                        panic!(
                            "p{p} offset {i}: node {a} holds {:?}, node {b} holds {:?}",
                            x[i].1, y[i].1
                        );
                    }
                }
            }
        }
        logs
    })
}

/// Seeds for a client that outlives node `victim`: the other nodes first, so that requests
/// do not start at a dead node (each refused re-dial of it still fails a produce:
/// `a_produce_after_its_leader_died_is_not_failed_by_a_refused_reconnect`).
fn survivors_first(ids: &[u64], victim: u64) -> Vec<u64> {
    let mut seeds: Vec<u64> = ids.iter().copied().filter(|id| *id != victim).collect();
    seeds.push(victim);
    seeds
}

/// Whether partition 0's Raft counter `key`, summed over nodes `ids`, reaches 1 within 10 s.
/// Raft figures reach /stats with openraft's next metrics report (at most every 100 ms after
/// a change), so a test that has just seen the effect may read the count before it.
fn counter_reaches_one(cluster: &Cluster, ids: &[u64], key: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let sum: u64 = ids
            .iter()
            .map(|id| {
                cluster.node(*id).stats_json()["raft"]["0"][key]
                    .as_u64()
                    .unwrap_or_else(|| panic!("{key} on /stats"))
            })
            .sum();
        if sum >= 1 {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Three nodes: every partition elects a leader and all three become voters; 10,000
/// acknowledged records read back from every node with the same offsets and bytes.
#[test]
fn three_nodes_replicate_every_acknowledged_record() {
    let cluster = start_cluster(new_cluster("cluster_three_nodes"), 3);
    let client = cluster.client();
    let acked = produce(&client, "three", 50, 100);
    assert_eq!(acked.values().map(|m| m.len()).sum::<usize>(), 10_000);
    assert_replicas_agree(&cluster, &cluster.ids(), &acked);
}

/// Fault model: SIGKILL of partition 0's leader while producers have writes to both
/// partitions in flight (a process crash; the disk keeps what was fdatasync'd). A new leader
/// takes writes; the killed node restarts on its port and data directory, catches up, and
/// every node holds every acknowledged record at its offset, with no offset holding two
/// different records. Produces that failed during the failover may or may not be in the log.
#[test]
fn killing_the_leader_under_load_loses_no_acknowledged_record() {
    // Election timers well above the takeover's time (two heartbeats and a vote), so that a
    // timer election on a loaded machine does not win the race and leave no takeover to count.
    let mut cluster = start_cluster(
        new_cluster("cluster_kill_leader").with_election_ms(1_500, 2_000),
        3,
    );
    let all = cluster.ids();
    let leader = cluster.wait_for_leader(0, &all, None);
    let client = Rc::new(cluster.client());
    let survivors: Vec<u64> = all.iter().copied().filter(|id| *id != leader).collect();
    let survivors_client = cluster.client_of(&survivors);
    let survivors_addrs: Vec<SocketAddr> = survivors.iter().map(|id| cluster.addr(*id)).collect();
    let load = Load::new("kill");
    let (elected, failover) = common::run(|| async {
        let tasks = load.start(&client, 2);
        load.wait_for_acks(0, 200, CONVERGE).await;
        cluster.kill9(leader);
        let killed = load.mark();
        agreed_leader(
            &survivors_client,
            &survivors_addrs,
            0,
            Some(leader),
            FAILOVER_MAX,
        )
        .await
        .unwrap_or_else(|views| panic!("no new leader of p0 after the kill: {views}"));
        let elected = killed.elapsed();
        let failover = load.wait_for_ack_after_mark(FAILOVER_MAX).await;
        let after = load.acked_count(0) + 200;
        load.wait_for_acks(0, after, CONVERGE).await;
        load.stop(tasks).await;
        (elected, failover)
    });
    println!(
        "kill -9 of node {leader} (leader of p0): survivors agree on a new leader after {} ms, \
         first write acknowledged after {} ms; failed produces: {:?}",
        elected.as_millis(),
        failover.as_millis(),
        load.failures()
    );
    let mut acked = load.acked.take();
    // The survivors noticed that the leader's process was gone (its peer connections closed)
    // and one of them started an election at once instead of waiting out the leader lease
    // (src/raft/liveness.rs); the other granted its vote despite the lease it held (without
    // that, the first candidate would be refused and a timer election would decide). Each
    // reports its side on /stats.
    assert!(
        counter_reaches_one(&cluster, &survivors, "takeover_elections"),
        "no survivor started a takeover election after the leader's kill -9"
    );
    assert!(
        counter_reaches_one(&cluster, &survivors, "takeover_votes_granted"),
        "no survivor granted a takeover vote after the leader's kill -9"
    );

    cluster.start(leader);
    // The restarted node takes part again: a new round of writes reaches all three.
    merge(
        &mut acked,
        produce(&cluster.client(), "after-restart", 5, 20),
    );
    assert_replicas_agree(&cluster, &all, &acked);
}

/// The takeover after a leader's death does not wait for any election timer: with election
/// timeouts of 10–12 s (the follower's leader lease is the maximum, 12 s), the survivors agree
/// on a new leader well before the first timer could fire, and a write is acknowledged.
/// Without the voter's side of the takeover (conn.rs `raft_vote`: a vote while the leader is
/// gone counts as a leadership transfer) the surviving voter refuses the candidate for the
/// rest of its lease and no leader appears before ~10 s; without the candidate's side, no
/// election starts before the timers. The 8 s bound is for a loaded machine running debug
/// builds; the takeover itself takes two heartbeats and a vote (README: failover p99 ~150 ms).
#[test]
fn a_killed_leader_is_replaced_before_any_election_timer_fires() {
    let mut cluster = start_cluster(
        new_cluster("cluster_takeover").with_election_ms(10_000, 12_000),
        3,
    );
    let all = cluster.ids();
    let leader = cluster.wait_for_leader(0, &all, None);
    let survivors: Vec<u64> = all.iter().copied().filter(|id| *id != leader).collect();
    let client = cluster.client_of(&survivors);
    let addrs: Vec<SocketAddr> = survivors.iter().map(|id| cluster.addr(*id)).collect();
    // One executor for the client's whole life (its connections' tasks live in it).
    let (new_leader, took) = common::run(|| async {
        // A write before the kill: the survivors hold a fresh leader lease.
        client
            .produce(0, vec![Bytes::from_static(b"before")])
            .await
            .expect("produce before the kill");
        cluster.kill9(leader);
        let killed = Instant::now();
        let new_leader = agreed_leader(&client, &addrs, 0, Some(leader), Duration::from_secs(8))
            .await
            .unwrap_or_else(|views| {
                panic!(
                    "no new leader of p0 {} ms after the kill of node {leader} (election \
                     timers are 10-12 s): {views}",
                    killed.elapsed().as_millis()
                )
            });
        let took = killed.elapsed();
        client
            .produce(0, vec![Bytes::from_static(b"after")])
            .await
            .expect("produce after the takeover");
        (new_leader, took)
    });
    println!(
        "node {new_leader} leads p0 {} ms after the kill of node {leader}",
        took.as_millis()
    );
    let voter = survivors
        .iter()
        .copied()
        .find(|id| *id != new_leader)
        .unwrap();
    assert!(
        counter_reaches_one(&cluster, &[new_leader], "takeover_elections"),
        "the new leader ran a takeover"
    );
    assert!(
        counter_reaches_one(&cluster, &[voter], "takeover_votes_granted"),
        "node {voter} granted its vote despite its lease"
    );
}

/// Regression: with its first seed down, `ClusterClient::produce` never reached the cluster.
/// A failed connect to that seed (nothing was sent, so certainly not applied) ended the
/// produce as an outcome-unknown connection error instead of moving on to the next seed, and
/// every produce started again from the first seed. The same happened when a NotLeader hint
/// named the leader that had just died: produces failed until the survivors stopped naming it.
#[test]
fn a_produce_is_not_stuck_on_a_dead_first_seed() {
    let mut cluster = start_cluster(new_cluster("cluster_dead_first_seed"), 3);
    cluster.kill9(1);
    for p in 0..PARTITIONS {
        cluster.wait_for_leader(p, &[2, 3], Some(1));
    }
    let client = cluster.client_of(&[1, 2, 3]);
    common::run(|| async {
        for p in 0..PARTITIONS {
            let value = Bytes::from(format!("dead-first-seed-p{p}"));
            if let Err(e) = client.produce(p, vec![value]).await {
                panic!("produce to p{p} with seeds [dead, live, live]: {e}");
            }
        }
    });
}

/// Regression: a client that was talking to a leader which then died failed its next
/// produce with "connect: connection refused". Its cached connection to the dead node is
/// closed, re-dialing it was refused before anything was sent (certainly not applied), yet the
/// produce ended as an outcome-unknown connection error instead of moving on to the next node.
#[test]
fn a_produce_after_its_leader_died_is_not_failed_by_a_refused_reconnect() {
    let mut cluster = start_cluster(new_cluster("cluster_refused_reconnect"), 3);
    let leader = cluster.wait_for_leader(0, &cluster.ids(), None);
    let client = cluster.client();
    common::run(|| async {
        for p in 0..PARTITIONS {
            let value = Bytes::from(format!("before-p{p}"));
            client
                .produce(p, vec![value])
                .await
                .expect("healthy cluster");
        }
        cluster.kill9(leader);
        // Let the client's read loops see the connections end (a produce written before that
        // fails as outcome-unknown, rightly: the client cannot tell it never arrived). They
        // run on this executor as soon as it waits; 2 s leaves room for a starved machine.
        corelog::io::sleep(Duration::from_secs(2)).await;
        for p in 0..PARTITIONS {
            let value = Bytes::from(format!("after-p{p}"));
            if let Err(e) = client.produce(p, vec![value]).await {
                panic!("produce to p{p} after its leader node {leader} died: {e}");
            }
        }
    });
}

/// Node 4 joins a cluster of three whose replication factor is 4: it becomes a learner and
/// then a voter of every partition, and new records reach it. Then it leaves every partition
/// (the seed's TestMultipleNodes): no node counts it as a member any more, and records
/// produced after that never reach it.
#[test]
fn a_joining_node_becomes_a_voter_and_a_node_that_left_gets_no_new_records() {
    let mut cluster = start_cluster(
        new_cluster("cluster_join_leave").with_replication_factor(4),
        3,
    );
    let mut acked = produce(&cluster.client(), "before-join", 10, 10);

    cluster.start(4);
    let roles = node_roles_until_voter(&cluster, 4);
    println!("node 4 as node 1 saw it while joining: {roles:?}");
    cluster.wait_for_voters(&[1, 2, 3, 4]);
    merge(&mut acked, produce(&cluster.client(), "after-join", 10, 10));
    assert_replicas_agree(&cluster, &[1, 2, 3, 4], &acked);

    // Changing membership is an admin action: the node certificate has that right.
    let client = cluster.client_as(&[1, 2, 3], "node");
    let members: Vec<SocketAddr> = [1, 2, 3].iter().map(|id| cluster.addr(*id)).collect();
    common::run(|| async {
        for p in 0..PARTITIONS {
            client
                .leave(p, 4)
                .await
                .unwrap_or_else(|e| panic!("leave p{p}: {e}"));
        }
        // Every remaining node sees node 4 gone from every partition.
        let deadline = Instant::now() + CONVERGE;
        for addr in &members {
            loop {
                let node = client.node(*addr).await.expect("connect to a member");
                let servers = node.get_servers().await;
                let still = servers.as_ref().map_or(true, |s| {
                    s.servers.iter().any(|s| {
                        s.id == "4"
                            && (!s.partitions_voter.is_empty() || !s.partitions_learner.is_empty())
                    })
                });
                if !still {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{addr} still counts node 4 as a member: {servers:?}"
                );
                corelog::io::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    cluster.wait_for_voters(&[1, 2, 3]);

    let late = produce(&cluster.client_of(&[1, 2, 3]), "after-leave", 10, 10);
    merge(&mut acked, late.clone());
    assert_replicas_agree(&cluster, &[1, 2, 3], &acked);
    // Nodes 1-3 all hold the late records: had node 4 still been replicated to, it would have
    // them by now too. Look twice, a moment apart, to be sure none trickle in.
    let node4 = cluster.addr(4);
    let client = cluster.client_of(&[4]);
    common::run(|| async {
        for round in 0..2 {
            if round > 0 {
                corelog::io::sleep(Duration::from_millis(500)).await;
            }
            for (p, records) in &late {
                let first_late = *records.keys().next().expect("late records");
                let held = read_below_high_watermark(&client, node4, *p)
                    .await
                    .unwrap_or_else(|e| panic!("read node 4 p{p}: {e}"));
                assert!(
                    held.len() as u64 <= first_late,
                    "node 4 p{p} holds {} records; the first record produced after it left is \
                     at offset {first_late}",
                    held.len()
                );
                for (offset, value) in &held {
                    assert!(
                        !value.starts_with(b"after-leave"),
                        "node 4 p{p} got {value:?} at offset {offset} after it left"
                    );
                }
            }
        }
    });

    // Node 4 restarts (without --join, so it stays out) and then node 1, which led when node 4
    // left, dies. A client that knows only node 4 hears of no leader, or of node 1, which it
    // cannot reach: either way it learns the cluster's servers from node 4 and finds the new
    // leader within the first call, where it used to go back and forth between node 4 (and
    // node 1) until its leader wait ran out.
    cluster.kill9(4);
    cluster.restart_without_join(4);
    cluster.kill9(1);
    let via4 = cluster.client_of(&[4]);
    let survivors = cluster.client_of(&[2, 3]);
    let (addr2, addr3) = (cluster.addr(2), cluster.addr(3));
    common::run(|| async {
        for p in 0..PARTITIONS {
            let value = Bytes::from(format!("after-leave-through-node-4-p{p}"));
            let resp = via4
                .produce(p, vec![value.clone()])
                .await
                .unwrap_or_else(|e| panic!("p{p}, through a client that knows only node 4: {e}"));
            for addr in [addr2, addr3] {
                let deadline = Instant::now() + CONVERGE;
                loop {
                    let held = read_below_high_watermark(&survivors, addr, p)
                        .await
                        .unwrap_or_else(|e| panic!("read {addr} p{p}: {e}"));
                    if held
                        .iter()
                        .any(|(o, v)| *o == resp.base_offset && *v == value)
                    {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "{addr} p{p} never got offset {}",
                        resp.base_offset
                    );
                    corelog::io::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
}

/// A node that joins a cluster already at its replication factor (3) stays a learner of every
/// partition: a non-voting read replica, as in the seed. Every node agrees on its role, it
/// receives every record (readable from it at the leader's offsets), and it never becomes a
/// voter.
#[test]
fn a_node_joining_beyond_the_replication_factor_is_a_learner_that_gets_every_record() {
    let mut cluster = start_cluster(new_cluster("cluster_learner"), 3);
    let mut acked = produce(&cluster.client(), "before-learner", 10, 10);
    cluster.start(4);
    let client = cluster.client_of(&[1, 2, 3, 4]);
    let addrs: Vec<SocketAddr> = [1, 2, 3, 4].iter().map(|id| cluster.addr(*id)).collect();
    common::run(|| async {
        let deadline = Instant::now() + CONVERGE;
        for addr in &addrs {
            loop {
                let node = client.node(*addr).await.expect("connect");
                let servers = node.get_servers().await;
                let roles = servers.as_ref().ok().map(|s| {
                    let role = |id: &str| {
                        s.servers
                            .iter()
                            .find(|x| x.id == id)
                            .map(|x| (x.partitions_learner.len(), x.partitions_voter.len()))
                            .unwrap_or_default()
                    };
                    (role("1"), role("2"), role("3"), role("4"))
                });
                let all = PARTITIONS as usize;
                if roles == Some(((0, all), (0, all), (0, all), (all, 0))) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{addr} never saw nodes 1-3 as voters and node 4 as a learner of every \
                     partition (learner of, voter of): {roles:?}"
                );
                corelog::io::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    merge(
        &mut acked,
        produce(&cluster.client(), "with-learner", 10, 10),
    );
    assert_replicas_agree(&cluster, &[1, 2, 3, 4], &acked);
    let client = cluster.client_of(&[1]);
    let servers = common::run(|| async move { client.get_servers().await.expect("servers") });
    let four = servers
        .servers
        .iter()
        .find(|s| s.id == "4")
        .expect("node 4");
    assert!(
        four.partitions_voter.is_empty(),
        "node 4 became a voter: {four:?}"
    );
}

/// A follower whose disk is slow (every `fdatasync` 150 ms, three heartbeat intervals) is a
/// slow follower, not a dead one: the leader waits for its AppendEntries (openraft gives
/// every replication RPC the 50 ms heartbeat interval, after which the same entries were
/// sent again while the follower was still writing them), and its connection is not
/// re-dialed because heartbeats, answered only once earlier entries are durable, time out
/// in a row. It ends up holding every acknowledged record.
#[test]
fn a_follower_with_a_slow_disk_is_waited_for_not_timed_out_or_re_dialed() {
    let mut cluster = new_cluster("cluster_slow_follower");
    cluster.start(1);
    cluster.start(2);
    cluster.start_with(3, &["--inject-sync-delay-ms", "150"]);
    cluster.wait_for_voters(&[1, 2, 3]);
    let acked = produce(&cluster.client_of(&[1, 2]), "slow", 30, 20);
    assert_replicas_agree(&cluster, &[1, 2, 3], &acked);
    for id in [1, 2, 3] {
        let stderr = cluster.node(id).stderr();
        // An AppendEntries without entries (a probe of the replication stream) may time out
        // at the heartbeat's soft_ttl, 37.5 ms, under load even to a healthy follower; one
        // that carries entries waits 2 s and must not (before the fix: 50 ms, timed out).
        let timeouts: Vec<&str> = stderr
            .lines()
            .filter(|l| {
                l.contains("timeout after")
                    && l.contains("AppendEntries")
                    && !l.contains("timeout after 37.5ms")
            })
            .collect();
        assert!(
            timeouts.is_empty(),
            "node {id} timed out AppendEntries carrying entries to a slow follower: \
             {timeouts:#?}"
        );
        assert!(
            !stderr.contains("re-dialing"),
            "node {id} re-dialed a slow follower:\n{stderr}"
        );
    }
}

/// Fault model: one node's disk fills up under load (the testing-only
/// `--inject-disk-full-after-writes`: after that many writes every write and allocation of
/// each of its partition logs fails with ENOSPC). The cluster keeps acknowledging writes
/// through the other two nodes, the full node's process keeps answering, nothing
/// acknowledged is lost, and once restarted with space again the node recovers what it had
/// made durable and catches up to every record.
#[test]
fn a_node_whose_disk_fills_up_loses_nothing_and_catches_up_after_a_restart() {
    let mut cluster = new_cluster("cluster_disk_full");
    cluster.start(1);
    cluster.start(2);
    cluster.start_with(3, &["--inject-disk-full-after-writes", "40"]);
    cluster.wait_for_voters(&[1, 2, 3]);
    // Enough commits that node 3's partitions pass 40 writes each (a lagging node 3 is sent
    // several entries per write, so keep going until it reports the full disk).
    let mut acked = produce(&cluster.client(), "filling", 60, 5);
    let deadline = Instant::now() + CONVERGE;
    for round in 0.. {
        let full = cluster.node(3).stderr();
        if full.contains("disk full while writing") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 3 never hit its full disk; its log:\n{full}"
        );
        let tag = format!("filling-more-{round}");
        merge(&mut acked, produce(&cluster.client(), &tag, 20, 5));
    }
    // The others still take writes (whoever leads now), and the full node still answers.
    merge(
        &mut acked,
        produce(&cluster.client_of(&[1, 2]), "after-full", 10, 5),
    );
    assert_replicas_agree(&cluster, &[1, 2], &acked);
    let node3 = cluster.addr(3);
    let client = cluster.client_of(&[3]);
    let answered = common::run(|| async move {
        let node = client.node(node3).await.expect("connect to node 3");
        node.get_servers().await.map(|s| s.servers.len())
    });
    assert_eq!(answered.ok(), Some(3), "node 3 answers GetServers");
    // Its stopped groups answer the leader's RPCs as UNAVAILABLE (without waking openraft,
    // which would log every refused heartbeat as an error), and count them.
    let stopped = cluster.node(3).stats_json()["errors"]["raft_stopped"].as_u64();
    assert!(
        stopped.is_some_and(|n| n > 0),
        "node 3 answered no Raft RPC as stopped: {stopped:?}"
    );
    // A produce sent to node 3 itself is UNAVAILABLE (its group of p0 has stopped).
    let config = ClientConfig::new(node3, &cluster.tls, "client").unwrap();
    let answer = common::run(|| async move {
        let client = Client::connect(config).await.expect("connect to node 3");
        client
            .produce(0, vec![Bytes::from_static(b"to-node-3")])
            .await
    });
    match answer {
        Err(e) => assert!(e.to_string().contains("disk full"), "{e}"),
        Ok(r) => panic!("a produce on node 3's stopped group was acknowledged: {r:?}"),
    }
    let log = cluster.node(3).stderr();
    assert!(
        !log.contains("failed to send RaftMsg to RaftCore"),
        "node 3 called its stopped groups (openraft logged the refusals):\n{log}"
    );

    // Space again: node 3 restarts on its data directory and catches up.
    cluster.kill9(3);
    cluster.start(3);
    merge(
        &mut acked,
        produce(&cluster.client(), "after-restart", 5, 5),
    );
    assert_replicas_agree(&cluster, &[1, 2, 3], &acked);
}

/// Polls node 1 until node `id` is a voter of every partition; returns each distinct role
/// node 1 reported for it on the way (`(learner of, voter of)`), which should go from learner
/// to voter (a short learner phase may fall between two polls).
fn node_roles_until_voter(cluster: &Cluster, id: u64) -> Vec<(Vec<u32>, Vec<u32>)> {
    let client = cluster.client_of(&[1]);
    let id = id.to_string();
    common::run(|| async move {
        let deadline = Instant::now() + CONVERGE;
        let mut seen: Vec<(Vec<u32>, Vec<u32>)> = Vec::new();
        loop {
            if let Ok(servers) = client.get_servers().await {
                let role = servers
                    .servers
                    .iter()
                    .find(|s| s.id == id)
                    .map(|s| (s.partitions_learner.clone(), s.partitions_voter.clone()))
                    .unwrap_or_default();
                assert!(
                    role.0.iter().all(|p| !role.1.contains(p)),
                    "node {id} is both a learner and a voter: {role:?}"
                );
                if seen.last() != Some(&role) {
                    seen.push(role.clone());
                }
                if role.1.len() == PARTITIONS as usize {
                    return seen;
                }
            }
            assert!(
                Instant::now() < deadline,
                "node {id} never became a voter of every partition: {seen:?}"
            );
            corelog::io::sleep(Duration::from_millis(10)).await;
        }
    })
}

/// Fault model: a clean network partition. Partition 0's leader is cut off from both peers
/// (every connection between them closed, new ones refused, in both directions) while test
/// clients still reach every node directly. The majority elects a new leader and acknowledges
/// writes; writes sent straight to the isolated node are never acknowledged. After healing,
/// every node (the isolated one included) holds the same records at the same offsets, and
/// none of the writes the isolated node took while cut off survive anywhere.
#[test]
fn a_partitioned_leader_cannot_ack_writes_and_rejoins_with_the_majority_log() {
    let cluster = start_cluster(new_cluster("cluster_partition").with_proxies(), 3);
    let all = cluster.ids();
    let mut acked = produce(&cluster.client(), "before-cut", 10, 10);
    let old = cluster.wait_for_leader(0, &all, None);
    let majority: Vec<u64> = all.iter().copied().filter(|id| *id != old).collect();
    // The leader dials its followers at their advertised addresses: their proxies.
    assert!(
        majority.iter().all(|id| cluster.proxy(*id).forwarded() > 0),
        "peer traffic goes through the proxies"
    );

    // Writes straight to the isolated node, from the moment of the cut: it may still believe
    // it leads and append them, but can never commit them.
    let mut config = ClientConfig::new(cluster.addr(old), &cluster.tls, "client").unwrap();
    config.request_timeout = Duration::from_millis(1_500);
    let majority_client = cluster.client_of(&majority);
    let majority_addrs: Vec<SocketAddr> = majority.iter().map(|id| cluster.addr(*id)).collect();
    let (new, elected, refusals) = common::run(|| async {
        let direct = Client::connect(config)
            .await
            .expect("connect to the leader");
        cluster.isolate(old);
        let cut = Instant::now();
        let election = glommio::spawn_local(async move {
            let new = agreed_leader(&majority_client, &majority_addrs, 0, Some(old), CONVERGE)
                .await
                .unwrap_or_else(|views| panic!("the majority elected no leader of p0: {views}"));
            (new, cut.elapsed())
        })
        .detach();
        let mut refusals: BTreeMap<String, usize> = BTreeMap::new();
        for n in 0.. {
            if cut.elapsed() >= Duration::from_secs(4) {
                break;
            }
            let value = Bytes::from(format!("isolated-{n}"));
            match direct.produce(0, vec![value]).await {
                Ok(r) => panic!("the isolated node acknowledged a write: {r:?}"),
                Err(e) => *refusals.entry(error_kind(&e)).or_default() += 1,
            }
            corelog::io::sleep(Duration::from_millis(100)).await;
        }
        let (new, elected) = election.await.expect("the election task ran");
        (new, elected, refusals)
    });
    println!(
        "node {old} cut off: nodes {majority:?} agree on node {new} leading p0 after {} ms; \
         writes sent to node {old} meanwhile, all refused: {refusals:?}",
        elected.as_millis()
    );
    merge(
        &mut acked,
        produce(&cluster.client_of(&majority), "majority", 5, 10),
    );

    cluster.heal();
    merge(&mut acked, produce(&cluster.client(), "healed", 5, 10));
    let logs = assert_replicas_agree(&cluster, &all, &acked);
    for (id, partitions) in &logs {
        for (p, log) in partitions {
            if let Some((offset, value)) = log.iter().find(|(_, v)| v.starts_with(b"isolated-")) {
                panic!("node {id} p{p} offset {offset} holds {value:?}, never acknowledged");
            }
        }
    }
}

/// Fault model: a clean network partition of a follower, long enough for many election
/// timeouts. The node cut off (one that leads no partition) hears no leader, so its timers
/// fire again and again; with Pre-Vote it asks the voters whether they would elect it before
/// it raises its term, and nobody answers. When the network heals, its term is the one it had,
/// so nothing it sends deposes the leaders the majority kept: every partition keeps its leader
/// and term, on every node, and the follower catches up on what was written meanwhile.
///
/// Without Pre-Vote the isolated node raised its term at each timeout (about ten times here);
/// the first heartbeat answer carrying that term after healing made the leader step down and
/// the partition stopped taking writes until a new election.
#[test]
fn an_isolated_follower_rejoins_without_deposing_any_leader() {
    let cluster = start_cluster(new_cluster("cluster_rejoin").with_proxies(), 3);
    let all = cluster.ids();
    let mut acked = produce(&cluster.client(), "before-cut", 5, 10);
    let leaders: Vec<u64> = (0..PARTITIONS)
        .map(|p| cluster.wait_for_leader(p, &all, None))
        .collect();
    let isolated = all
        .iter()
        .copied()
        .find(|id| !leaders.contains(id))
        .expect("three nodes and two partitions: one node leads none");
    let majority: Vec<u64> = all.iter().copied().filter(|id| *id != isolated).collect();
    let terms = |id: u64| -> Vec<u64> {
        let doc = cluster.node(id).stats_json();
        (0..PARTITIONS)
            .map(|p| {
                doc["raft"][p.to_string()]["term"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("node {id} reports no term for p{p}: {doc}"))
            })
            .collect()
    };
    let before: Vec<u64> = (0..PARTITIONS as usize)
        .map(|p| terms(leaders[p])[p])
        .collect();

    cluster.isolate(isolated);
    // Ten or more election timeouts (250-500 ms) pass on the isolated node.
    let cut = Instant::now();
    merge(
        &mut acked,
        produce(&cluster.client_of(&majority), "majority", 5, 10),
    );
    std::thread::sleep(Duration::from_secs(5).saturating_sub(cut.elapsed()));
    assert_eq!(
        terms(isolated),
        before,
        "node {isolated}, cut off from its peers, raised its term"
    );
    cluster.heal();

    merge(&mut acked, produce(&cluster.client(), "healed", 5, 10));
    assert_replicas_agree(&cluster, &all, &acked);
    for p in 0..PARTITIONS {
        assert_eq!(
            cluster.wait_for_leader(p, &all, None),
            leaders[p as usize],
            "p{p} changed leader after node {isolated} rejoined"
        );
    }
    for id in &all {
        assert_eq!(
            terms(*id),
            before,
            "node {id}: a partition changed term after node {isolated} rejoined"
        );
    }
}

/// Nodes named by host name (`--advertise localhost:PORT`, `--join localhost:PORT`), as on
/// real hosts: nodes join through the name, and a client that knows only a follower (by IP)
/// follows its `NotLeader` hint, which names the leader as `localhost:PORT`, looking the name
/// up and checking the leader's certificate against it. The command line takes a host name
/// for `--addr` too. Fault model: none; this is about addressing.
#[test]
fn nodes_advertised_by_host_name_are_joined_and_followed() {
    let cluster = start_cluster(
        Cluster::new("cluster_host_names", 1)
            .with_host_names()
            .with_replication_factor(3),
        3,
    );
    let (leader, follower) = cluster.leader_and_follower(0);
    let servers = cluster.cli(&["servers"], follower, &["--json"], "");
    assert!(servers.status.success(), "{servers:?}");
    let doc: serde_json::Value = serde_json::from_slice(&servers.stdout).expect("servers --json");
    let leader_port = cluster.addr(leader).port();
    assert!(
        doc["servers"]
            .as_array()
            .expect("a list of servers")
            .iter()
            .any(|s| s["rpc_addr"] == format!("localhost:{leader_port}")),
        "the leader is known by its host name: {doc}"
    );

    // Only the follower, by IP: every produce is answered NOT_LEADER naming the leader's host.
    let config = ClientConfig::new(cluster.addr(follower), &cluster.tls, "client").unwrap();
    let (base, lookups) = common::run(|| async move {
        let client = ClusterClient::new(config);
        let base = client
            .produce(0, vec![Bytes::from_static(b"by-name")])
            .await
            .expect("the client follows a leader named by host")
            .base_offset;
        (base, client.lookups_made())
    });
    assert_eq!(lookups, 1, "the leader's host name is looked up once");
    let on_leader = common::run(|| {
        let client = cluster.client_of(&[leader]);
        let addr = cluster.addr(leader);
        async move {
            client
                .consume_from(addr, 0, base, 1 << 20)
                .await
                .expect("consume from the leader")
        }
    });
    assert_eq!(
        on_leader.records.first().map(|r| r.value.clone()),
        Some(Bytes::from_static(b"by-name")),
        "offset {base} on the leader"
    );

    // The command line, by host name, through the follower.
    let follower_by_name = format!("localhost:{}", cluster.addr(follower).port());
    let out = run_cli(
        &[
            "produce",
            "--partition",
            "0",
            "--addr",
            &follower_by_name,
            "--tls-dir",
            cluster.tls.to_str().unwrap(),
            "--value",
            "by-name-cli",
        ],
        None,
        "",
    );
    assert!(
        out.status.success(),
        "corelog produce --addr {follower_by_name}: {out:?}"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        (base + 1).to_string(),
        "the next offset"
    );
}

/// A rolling upgrade across the STORED_BATCH entry kind: node 3 plays a node built before it
/// (`--inject-legacy-replication`: it refuses the kind as unknown, as such a build does, and
/// never says it takes it). The leader sends it NORMAL entries and sends the leader's stored
/// batches only to peers that said they take them, so every replica holds every acknowledged
/// record at the same offsets. Before the negotiation, every AppendEntries carrying records was
/// refused by such a node, which then never caught up.
#[test]
fn a_node_that_does_not_know_stored_batches_is_sent_normal_entries() {
    let mut cluster = new_cluster("cluster_legacy_peer");
    cluster.start(1);
    cluster.start(2);
    cluster.start_with(3, &["--inject-legacy-replication"]);
    cluster.wait_for_voters(&[1, 2, 3]);
    let all = cluster.ids();
    // Whoever leads: the legacy node leads a partition only if elected; then it sends NORMAL
    // entries itself (it never stores kind STORED_BATCH from others).
    let acked = produce(&cluster.client(), "mixed", 20, 10);
    assert_replicas_agree(&cluster, &all, &acked);
    let refused = cluster.node(3).stats_json()["errors"]["bad_body"].as_u64();
    assert!(
        matches!(refused, None | Some(0)),
        "node 3 refused {refused:?} requests carrying entries it cannot take"
    );
}

/// Leader balancing: node 1 bootstraps every partition and leads them all; with
/// `--leader-balance-interval-ms` it hands partitions to the voters that lead fewer, until
/// the nodes lead counts that differ by at most one (here: the two partitions on two different
/// nodes), and then nothing moves. Writes go on throughout, following the leaders; every
/// acknowledged record is on every replica.
#[test]
fn leaders_spread_over_the_nodes_and_stay() {
    let cluster = start_cluster(
        new_cluster("cluster_balance").with_leader_balance_ms(300),
        3,
    );
    let all = cluster.ids();
    let mut acked = produce(&cluster.client(), "before", 3, 10);
    let leaders = |cluster: &Cluster| -> Vec<u64> {
        (0..PARTITIONS)
            .map(|p| cluster.wait_for_leader(p, &all, None))
            .collect()
    };
    let deadline = Instant::now() + CONVERGE;
    let spread = loop {
        merge(&mut acked, produce(&cluster.client(), "during", 1, 10));
        let now = leaders(&cluster);
        if now.iter().collect::<std::collections::BTreeSet<_>>().len() == now.len() {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "leaders never spread: {now:?} lead partitions 0..{PARTITIONS}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    println!("leaders of partitions 0..{PARTITIONS}: {spread:?}");
    // Ten more balancing intervals: balanced leaders stay where they are.
    std::thread::sleep(Duration::from_millis(3_000));
    assert_eq!(leaders(&cluster), spread, "balanced leaders moved again");
    merge(&mut acked, produce(&cluster.client(), "after", 3, 10));
    assert_replicas_agree(&cluster, &all, &acked);
}

/// Leaders spread while every partition takes writes without a pause. Under sustained writes
/// a follower is almost never holding the leader's last entry at the instant the balancer
/// looks; it must take a follower that held what the leader had a moment before, and the
/// transfer then waits for the rest (src/raft/balance.rs, `caught_up`). Requiring the whole
/// log at the instant of the check left node 1 leading everything until the writes paused:
/// measured with release builds under loadgen's max load (three partitions, 25 s), a leader
/// moved only once the load ended. This test's debug-build followers do catch up at some
/// checks, so without the change it passes too, only later; it holds the behaviour (leaders
/// spread while writes flow, writes keep being acknowledged, replicas agree), not that stall.
/// The rule itself is pinned by `raft::balance`'s unit test
/// `a_voter_that_held_what_the_leader_held_a_moment_ago_is_caught_up`, which fails without it.
#[test]
fn leaders_spread_while_every_partition_takes_writes() {
    // Enough writers that some produce is always in flight on every partition.
    const BALANCE_LOAD_WRITERS: usize = 8;
    let cluster = start_cluster(
        new_cluster("cluster_balance_load").with_leader_balance_ms(2_000),
        3,
    );
    let all = cluster.ids();
    let client = Rc::new(cluster.client());
    let asking = cluster.client();
    let addrs: Vec<SocketAddr> = all.iter().map(|id| cluster.addr(*id)).collect();
    // Large produces keep the followers' logs behind the leader's at almost every instant.
    let load = Load::new("balance").with_shape(64, 1024);
    let spread = common::run(|| async {
        let tasks = load.start(&client, BALANCE_LOAD_WRITERS);
        for p in 0..PARTITIONS {
            load.wait_for_acks(p, 50, CONVERGE).await;
        }
        let deadline = Instant::now() + CONVERGE;
        let spread = loop {
            let mut leaders = Vec::new();
            for p in 0..PARTITIONS {
                leaders.push(
                    agreed_leader(&asking, &addrs, p, None, CONVERGE)
                        .await
                        .unwrap_or_else(|views| panic!("no agreed leader of p{p}: {views}")),
                );
            }
            let distinct: std::collections::BTreeSet<_> = leaders.iter().collect();
            if distinct.len() == leaders.len() {
                break leaders;
            }
            assert!(
                Instant::now() < deadline,
                "leaders never spread under load: {leaders:?} lead partitions 0..{PARTITIONS}"
            );
            corelog::io::sleep(Duration::from_millis(100)).await;
        };
        // The writes went on all along: acknowledgements kept coming after the spread.
        for p in 0..PARTITIONS {
            let after = load.acked_count(p) + 50;
            load.wait_for_acks(p, after, CONVERGE).await;
        }
        load.stop(tasks).await;
        spread
    });
    println!(
        "leaders of partitions 0..{PARTITIONS} under load: {spread:?}; failed produces: {:?}",
        load.failures()
    );
    let acked = load.acked.take();
    assert_replicas_agree(&cluster, &all, &acked);
}

/// A connection from the leader to a follower that goes silent without closing is replaced
/// while the cluster is idle, on heartbeat timeouts alone.
///
/// Fault model: a silent partition of one connection. The follower's proxy stalls every
/// connection open through it (`Proxy::stall`: bytes swallowed both ways, no FIN, no reset),
/// which includes the leader's connection to the follower; new connections through it work.
/// The cluster is idle, so that connection carries only heartbeats. The leader must count
/// their timeouts and, after three in a row and 2 s without an answer, re-dial (it logs
/// "re-dialing" with the follower's address); a record produced afterwards then reaches the
/// follower over the new connection.
///
/// What it guards: openraft's heartbeat worker drops each heartbeat at a timer of its own
/// (`hard_ttl`, the 50 ms heartbeat interval), and a dropped call counts no timeout, so the
/// network's timeout must fire first (src/raft/network.rs, "Timeouts": `soft_ttl`). The wait
/// for the re-dial runs with the cluster idle because a produce would hide a failure:
/// AppendEntries carrying entries have a 2 s timeout of ours that openraft does not preempt,
/// and they re-dial by themselves. With the timeout at `hard_ttl` as before, this test passes
/// as well on this runtime: ours, armed microseconds after openraft's, expires in the same
/// pass of the reactor, and the runtime's timeout polls the wrapped call first, so every
/// heartbeat timeout was still counted (measured: 35 of 35). The unit test
/// `rpcs_openraft_drops_at_hard_ttl_time_out_here_first` pins the margin instead.
///
/// The follower stops hearing heartbeats, so its election timer would make it a
/// pre-candidate: its Pre-Votes travel over its own connections, through the other proxies,
/// which are not stalled, and the leader and the third node, which still hears the leader,
/// refuse them for their lease, so its term stays (an_isolated_follower_rejoins_without_
/// deposing_any_leader). Election timeouts of 10-12 s keep even that out of what is measured:
/// the follower stays a follower for several times what the re-dial takes, and the one
/// stalled connection is all that changes.
#[test]
fn a_silent_connection_to_an_idle_follower_is_re_dialed() {
    let cluster = start_cluster(
        Cluster::new("cluster_silent_follower", 1)
            .with_proxies()
            .with_replication_factor(3)
            .with_election_ms(10_000, 12_000),
        3,
    );
    let all = cluster.ids();
    let (leader, follower) = cluster.leader_and_follower(0);
    // The leader names a peer by the address it dials: the follower's proxy.
    let dialed = format!("peer {}:", cluster.advertised(follower));
    let client = cluster.client();
    let nodes: Vec<(u64, SocketAddr)> = all.iter().map(|id| (*id, cluster.addr(*id))).collect();
    let follower_addr = cluster.addr(follower);
    let (redialed, forwarded) = common::run(|| async {
        let before = produce_to_p0(&client, "before-stall", 5).await;
        for (id, addr) in &nodes {
            wait_until_held(&client, *id, *addr, &before, CONVERGE).await;
        }
        let proxy = cluster.proxy(follower);
        let forwarded = proxy.forwarded();
        proxy.stall();
        let stalled = Instant::now();
        // Idle: nothing is produced until the leader has re-dialed.
        loop {
            let log = cluster.node(leader).stderr();
            if log
                .lines()
                .any(|l| l.contains(&dialed) && l.contains("re-dialing"))
            {
                break;
            }
            if stalled.elapsed() >= SILENT_REDIAL_MAX {
                let lines: Vec<&str> = log.lines().collect();
                panic!(
                    "leader {leader} did not re-dial follower {follower} within {} s of its \
                     connection going silent (no line with {dialed:?} and \"re-dialing\"); \
                     the end of its log:\n{}",
                    SILENT_REDIAL_MAX.as_secs(),
                    lines[lines.len().saturating_sub(20)..].join("\n")
                );
            }
            corelog::io::sleep(Duration::from_millis(100)).await;
        }
        let redialed = stalled.elapsed();
        let after = produce_to_p0(&client, "after-stall", 1).await;
        wait_until_held(&client, follower, follower_addr, &after, SILENT_REDIAL_MAX).await;
        (redialed, proxy.forwarded() - forwarded)
    });
    println!(
        "leader {leader} re-dialed silent follower {follower} {} ms after the stall; {forwarded} \
         new connection(s) through its proxy since",
        redialed.as_millis()
    );
    assert!(
        forwarded > 0,
        "the record reached follower {follower} without a new connection through its proxy"
    );
}

/// Produces `count` records to partition 0, one produce per record, each retried until it is
/// acknowledged (a failed produce may or may not be in the log; only acknowledged records are
/// promised). Returns the acknowledged records and their offsets.
async fn produce_to_p0(client: &ClusterClient, tag: &str, count: usize) -> Vec<(u64, Bytes)> {
    let deadline = Instant::now() + CONVERGE;
    let mut acked = Vec::with_capacity(count);
    for i in 0..count {
        for attempt in 0.. {
            let value = Bytes::from(format!("{tag}-{i}-a{attempt}"));
            match client.produce(0, vec![value.clone()]).await {
                Ok(resp) => {
                    acked.push((resp.base_offset, value));
                    break;
                }
                Err(e) => {
                    assert!(Instant::now() < deadline, "produce {tag}-{i}: {e}");
                    corelog::io::sleep(PRODUCE_ERROR_BACKOFF).await;
                }
            }
        }
    }
    acked
}

/// Waits until node `id` (at `addr`) holds every record of `records` at its offset in
/// partition 0, below its high watermark.
async fn wait_until_held(
    client: &ClusterClient,
    id: u64,
    addr: SocketAddr,
    records: &[(u64, Bytes)],
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match read_below_high_watermark(client, addr, 0).await {
            Ok(held) => {
                let missing: Vec<u64> = records
                    .iter()
                    .filter(|(offset, value)| {
                        held.get(*offset as usize).map(|(_, v)| v) != Some(value)
                    })
                    .map(|(offset, _)| *offset)
                    .collect();
                if missing.is_empty() {
                    return;
                }
                format!("holds {} records, not offsets {missing:?}", held.len())
            }
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "node {id} p0 did not get the records within {} ms: {last}",
            timeout.as_millis()
        );
        corelog::io::sleep(Duration::from_millis(50)).await;
    }
}

/// What kind of failure `e` is, for a summary: its variant, and the server's error kind.
fn error_kind(e: &corelog::client::ClientError) -> String {
    use corelog::client::ClientError;
    match e {
        ClientError::Server(s) => format!("{s:?}")
            .split([' ', '{', '('])
            .next()
            .unwrap_or_default()
            .to_string(),
        ClientError::Connection { .. } => "Connection".into(),
        ClientError::Connect { .. } => "Connect".into(),
        ClientError::Tls(_) => "Tls".into(),
        ClientError::Timeout { .. } => "Timeout".into(),
        ClientError::Protocol { .. } => "Protocol".into(),
    }
}

/// SIGTERM of partition 0's leader while producers write: it hands leadership to another
/// voter before it stops (another node leads within a short time, and the node logs no failed
/// hand-off), exits 0, and no acknowledged record is lost; restarted, it holds them all too.
#[test]
fn sigterm_hands_leadership_off_and_loses_no_acknowledged_record() {
    let mut cluster = start_cluster(new_cluster("cluster_sigterm_leader"), 3);
    let all = cluster.ids();
    let leader = cluster.wait_for_leader(0, &all, None);
    let others: Vec<u64> = all.iter().copied().filter(|id| *id != leader).collect();
    let pid = cluster.pid(leader);
    let client = Rc::new(cluster.client());
    let others_client = cluster.client_of(&others);
    let others_addrs: Vec<SocketAddr> = others.iter().map(|id| cluster.addr(*id)).collect();
    let load = Load::new("term");
    let (new, handoff) = common::run(|| async {
        let tasks = load.start(&client, 2);
        load.wait_for_acks(0, 100, CONVERGE).await;
        cluster.send_sigterm(leader);
        let start = load.mark();
        let new = agreed_leader(&others_client, &others_addrs, 0, Some(leader), FAILOVER_MAX)
            .await
            .unwrap_or_else(|views| panic!("no new leader of p0 after SIGTERM: {views}"));
        let handoff = start.elapsed();
        load.wait_for_ack_after_mark(FAILOVER_MAX).await;
        let after = load.acked_count(0) + 100;
        load.wait_for_acks(0, after, CONVERGE).await;
        load.stop(tasks).await;
        (new, handoff)
    });
    let status = cluster.wait_stopped(pid);
    println!(
        "SIGTERM of node {leader} (leader of p0): node {new} leads after {} ms; failed \
         produces: {:?}; e.g. {:?}",
        handoff.as_millis(),
        load.failures(),
        load.failed.borrow().first()
    );
    assert!(status.success(), "the stopped node exits 0: {status:?}");
    let stderr = cluster.last_stopped().stderr();
    assert!(
        !stderr.contains("still the leader after"),
        "the hand-off failed:\n{stderr}"
    );
    let acked = load.acked.take();
    assert_replicas_agree(&cluster, &others, &acked);
    cluster.start(leader);
    assert_replicas_agree(&cluster, &all, &acked);
}

/// Regression (fixed: peers are served until the groups stop): a graceful stop stranded the produces in flight on the leader it stops.
/// On SIGTERM the node stops reading every connection (peer connections included) and stops
/// accepting new ones, and only then hands leadership off; after the hand-off the new leader
/// cannot reach it, so writes it had appended but not yet seen committed are never applied
/// here. Their clients wait until the drain gives up (`SHUTDOWN_DRAIN_MS`, 10 s) and the group's
/// shutdown fails them as outcome-unknown ("raft stopped").
#[test]
fn writes_in_flight_on_a_leader_stopped_by_sigterm_are_answered_promptly() {
    let mut cluster = start_cluster(new_cluster("cluster_sigterm_in_flight"), 3);
    let all = cluster.ids();
    // Whether a write is caught in flight depends on timing: a few rounds catch it with high
    // probability (about one round in five does on this machine).
    for round in 0..SIGTERM_ROUNDS {
        let leader = cluster.wait_for_leader(0, &all, None);
        let pid = cluster.pid(leader);
        let client = Rc::new(cluster.client_of(&survivors_first(&all, leader)));
        let load = Load::new(&format!("in-flight-{round}"));
        let stopped_in = common::run(|| async {
            // Many writers: some produce is in flight on the leader when it hands off.
            let tasks = load.start(&client, 8);
            load.wait_for_acks(0, 100, CONVERGE).await;
            cluster.send_sigterm(leader);
            let start = load.mark();
            load.wait_for_ack_after_mark(FAILOVER_MAX).await;
            load.stop(tasks).await;
            start.elapsed()
        });
        let status = cluster.wait_stopped(pid);
        assert!(status.success(), "{status:?}");
        let stranded: Vec<_> = load
            .failed
            .borrow()
            .iter()
            .filter(|(_, _, message)| message.contains("raft stopped"))
            .cloned()
            .collect();
        assert!(
            stranded.is_empty(),
            "round {round}: writes stranded on stopping node {leader}, answered after \
             {stopped_in:?}: {stranded:?}\n{}",
            cluster.last_stopped().stderr()
        );
        cluster.start(leader);
        cluster.wait_for_voters(&all);
    }
}

/// A TCP server on loopback that echoes what each connection sends (for the proxy's own
/// tests); its address.
fn start_echo_server() -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let echo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = echo.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in echo.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    target
}

/// The test harness itself: a cut proxy closes what it forwards and refuses new connections,
/// `refuse_from` singles out one process, and healing restores forwarding.
#[test]
fn the_test_proxy_forwards_cuts_and_heals() {
    use std::io::{Read, Write};
    let target = start_echo_server();
    let proxy = Proxy::start(target);
    let echoes = |stream: &mut std::net::TcpStream| -> bool {
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut got = [0u8; 4];
        stream.write_all(b"ping").is_ok() && stream.read_exact(&mut got).is_ok() && &got == b"ping"
    };
    let connect = || std::net::TcpStream::connect(proxy.addr()).unwrap();
    let mut before = connect();
    assert!(echoes(&mut before));
    proxy.cut();
    assert!(!echoes(&mut before), "a cut closes open connections");
    assert!(!echoes(&mut connect()), "a cut refuses new connections");
    proxy.heal();
    assert!(echoes(&mut connect()));
    let mut mine = connect();
    assert!(echoes(&mut mine));
    proxy.refuse_from(std::process::id());
    assert!(
        !echoes(&mut mine),
        "refuse_from closes that process's links"
    );
    assert!(!echoes(&mut connect()));
    proxy.heal();
    assert!(echoes(&mut connect()));
}

/// The test harness itself: a stalled proxy forwards nothing on the connections open at the
/// stall, in either direction, yet closes none of them (a read times out, it does not see an
/// end or a reset), and forwards new connections as usual.
#[test]
fn the_test_proxy_stalls_open_connections_silently_and_forwards_new_ones() {
    use std::io::{Read, Write};
    let target = start_echo_server();
    let proxy = Proxy::start(target);
    let connect = || {
        let stream = std::net::TcpStream::connect(proxy.addr()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        stream
    };
    let echoes = |stream: &mut std::net::TcpStream| -> bool {
        let mut got = [0u8; 4];
        stream.write_all(b"ping").is_ok() && stream.read_exact(&mut got).is_ok() && &got == b"ping"
    };
    let mut before = connect();
    assert!(echoes(&mut before));
    proxy.stall();
    for _ in 0..3 {
        before
            .write_all(b"ping")
            .expect("a stalled connection still takes writes");
        let mut got = [0u8; 4];
        match before.read(&mut got) {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            other => panic!("a stalled connection answered, ended or was reset: {other:?}"),
        }
    }
    assert!(echoes(&mut connect()), "a new connection is forwarded");
}

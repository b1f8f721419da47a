//! One core's share of the load: its own [`Client`] per node, its producers and consumers as
//! tasks on its glommio executor, and its measurements (never shared while running; merged
//! by the main thread at the end).
//!
//! **Producers.** Closed loop (no `--rate`): each keeps `--in-flight` produce requests
//! outstanding and measures each from its send. Open loop (`--rate`): batch *k* of a
//! producer is scheduled at `start + k × interval`; it is sent then, or as soon as an
//! in-flight slot frees, and its latency is measured from the *scheduled* time, so a stalled
//! node is charged for every request it delayed (coordinated omission, corrected as wrk2
//! does). Sends stop at the end of the window; batches scheduled but never sent are counted
//! (`unsent_scheduled`). A producer's requests go out in sequence order on one connection per
//! owner core, which the node keeps in order.
//!
//! **Consumers** read one partition from the plan's start offset, check every record (see
//! `verify.rs`), and measure end-to-end latency from the send time the record carries. They
//! stop once every producer is done and they have read up to the highest acknowledged
//! offset, or at the drain deadline; with no producers, at the end of the window or once
//! they reach the end the partition had at the start (`--from start`).
//!
//! **Cluster runs** (`--cluster`): producers send to their partition's leader and follow
//! NOT_LEADER answers, keeping their acknowledged records in sequence order; consumers read
//! from the leader or a follower and move on when their node fails (see `route.rs`).

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use corelog::client::{Client, ClientConfig, ClientError, Subscription};
use corelog::proto::ProduceResponse;
use corelog::proto::Record as WireRecord;
use glommio::sync::{Semaphore, StaticPermit};
use rand::{RngCore, SeedableRng};

use crate::args::{ConsumeApi, ConsumeFrom, From, RunConfig};
use crate::plan::{Assignment, Plan, Shared, Target, Timeline};
use crate::record::{self, Header};
use crate::route::{self, Nodes, ReadFrom, Route};
use crate::stats::{self, Measures};
use crate::verify::{PartitionVerifier, Ranges, VerifierOutcome, Violations};

/// How long a request may wait for its answer before it counts as failed.
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// How long consumers may take, once producers are done, to read every acknowledged record.
pub const DRAIN_TIMEOUT_MS: u64 = 10_000;
/// How often idle consumers look at the clock and the stop conditions.
const CHECK_INTERVAL_MS: u64 = 50;
/// Bytes of records per consume response or subscription event.
const FETCH_BYTES_MAX: u32 = 1 << 20;
/// Subscription events the node may push ahead of the consumer.
const SUBSCRIBE_CREDITS: u32 = 8;
/// Pause before a consumer retries after an error.
const RETRY_DELAY_MS: u64 = 100;
/// Extra padding bytes, so consecutive records do not carry identical filler.
const PADDING_SPREAD_BYTES: usize = 4096;

/// What one core sends the main thread once a second.
pub struct Tick {
    pub second: u64,
    pub measures: Measures,
}

/// What a producer leaves behind for the final check.
#[derive(Debug, Clone)]
pub struct ProducerOutcome {
    pub id: u32,
    pub target: usize,
    /// Sequences `0..sent` were sent.
    pub sent: u64,
    /// Sequences whose batch was not acknowledged.
    pub failed: Ranges,
    pub acked_records: u64,
    /// One past the highest offset acknowledged to it.
    pub acked_end: Option<u64>,
    /// Open loop: batches whose scheduled time came before the end but were never sent
    /// because every in-flight slot was taken.
    pub unsent_scheduled: u64,
    /// Cluster runs: NOT_LEADER answers followed (the batch resent to the leader).
    pub reroutes: u64,
}

/// What a consumer leaves behind.
#[derive(Debug, Clone)]
pub struct ConsumerOutcome {
    pub verifier: VerifierOutcome,
    /// Whether it read everything it had to before stopping.
    pub drained: bool,
    /// When it stopped.
    pub finished_at: Instant,
    pub other_runs: u64,
}

/// One core's results.
pub struct CoreReport {
    /// This core's thread: time on the CPU and time runnable but waiting for it (another
    /// process had the CPU), from /proc/thread-self/schedstat.
    pub sched: Option<Sched>,
    pub window: Measures,
    pub violations: Violations,
    pub producers: Vec<ProducerOutcome>,
    pub consumers: Vec<ConsumerOutcome>,
}

/// One core's state, shared by its tasks.
struct Core {
    config: Arc<RunConfig>,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    timeline: Timeline,
    /// Measurements in the window (the final report).
    window: RefCell<Measures>,
    /// Measurements since the last progress tick.
    interval: RefCell<Measures>,
    violations: RefCell<Violations>,
    padding: Vec<u8>,
}

/// Runs core `index`'s share of the plan; returns once its producers and consumers are done.
pub async fn run_core(
    index: usize,
    config: Arc<RunConfig>,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    ticks: Sender<Tick>,
) -> Result<CoreReport, String> {
    let clients = match connect(index, &config, &plan).await {
        Ok(c) => c,
        Err(e) => {
            shared.fail_setup(e.clone());
            return Err(e);
        }
    };
    shared.ready.fetch_add(1, Ordering::SeqCst);
    let timeline = loop {
        if shared.aborted() {
            return Err("stopped: another core failed to start".into());
        }
        if let Some(t) = shared.timeline.get() {
            break *t;
        }
        glommio::timer::sleep(Duration::from_millis(1)).await;
    };
    let mut padding = vec![0u8; config.record_bytes + PADDING_SPREAD_BYTES];
    rand::rngs::StdRng::seed_from_u64(config.seed).fill_bytes(&mut padding);
    let core = Rc::new(Core {
        config: config.clone(),
        plan: plan.clone(),
        shared: shared.clone(),
        timeline,
        window: RefCell::new(Measures::default()),
        interval: RefCell::new(Measures::default()),
        violations: RefCell::new(Violations::default()),
        padding,
    });
    sleep_until(timeline.start).await;
    let ticker = glommio::spawn_local(tick_loop(core.clone(), ticks));
    let producers: Vec<_> = plan
        .producers
        .iter()
        .filter(|a| a.core == index)
        .map(|&a| {
            let sender = match &clients {
                Clients::Nodes(c) => ProduceTo::Node(c[plan.targets[a.target].node].clone()),
                Clients::Cluster(nodes) => ProduceTo::Cluster(nodes.clone()),
            };
            glommio::spawn_local(run_producer(core.clone(), sender, a))
        })
        .collect();
    let consumers: Vec<_> = plan
        .consumers
        .iter()
        .filter(|a| a.core == index)
        .map(|&a| {
            let target = &plan.targets[a.target];
            let read = match &clients {
                Clients::Nodes(c) => ReadFrom::Node(c[target.node].clone()),
                Clients::Cluster(nodes) => ReadFrom::Cluster {
                    nodes: nodes.clone(),
                    partition: target.partition,
                    leader: config.consume_from != Some(ConsumeFrom::Follower),
                    replicas: read_replicas(&config, target, a.id),
                    next: 0,
                    current: None,
                },
            };
            glommio::spawn_local(run_consumer(core.clone(), read, a))
        })
        .collect();
    let floors: Vec<u64> = plan
        .targets
        .iter()
        .map(|t| consumer_floor(&config, t))
        .collect();
    let mut producer_outcomes = Vec::new();
    for p in producers {
        let outcome: ProducerOutcome = p.await;
        producer_outcomes.push(outcome);
    }
    for outcome in &producer_outcomes {
        shared.producer_done(
            outcome.target,
            outcome.acked_end,
            &floors,
            Duration::from_millis(DRAIN_TIMEOUT_MS),
        );
    }
    let mut consumer_outcomes = Vec::new();
    for c in consumers {
        consumer_outcomes.push(c.await);
    }
    ticker.cancel().await;
    let sched = Sched::of_this_thread();
    let window = core.window.borrow().clone();
    let violations = core.violations.borrow().clone();
    Ok(CoreReport {
        sched,
        window,
        violations,
        producers: producer_outcomes,
        consumers: consumer_outcomes,
    })
}

/// Scheduler times of a thread, in seconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sched {
    pub run_s: f64,
    pub runqueue_wait_s: f64,
}

impl Sched {
    /// The calling thread's times so far (Linux schedstat: run ns, wait ns, timeslices).
    fn of_this_thread() -> Option<Sched> {
        let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
        let mut fields = text.split_whitespace().map(|f| f.parse::<f64>().ok());
        let run = fields.next()??;
        let wait = fields.next()??;
        Some(Sched {
            run_s: run / 1e9,
            runqueue_wait_s: wait / 1e9,
        })
    }
}

/// Where consumers of `target` must read up to at least, whatever the producers did.
fn consumer_floor(config: &RunConfig, target: &Target) -> u64 {
    match config.from {
        From::End => target.start_offset,
        From::Start | From::Offset(_) => target.end_offset_at_start.max(target.start_offset),
    }
}

/// What a core's producers and consumers send with: one client per `--addr` node, or (with
/// `--cluster`) the cluster's nodes, each producer following its partition's leader.
enum Clients {
    Nodes(Vec<Rc<Client>>),
    Cluster(Rc<Nodes>),
}

/// Where one producer sends.
enum ProduceTo {
    Node(Rc<Client>),
    Cluster(Rc<Nodes>),
}

/// Cluster runs: the replicas consumer `id` of `target` reads from, in turn (the first is the
/// leader when the run started, unless `--consume-from follower`).
fn read_replicas(config: &RunConfig, target: &Target, id: u32) -> Vec<SocketAddr> {
    target.read_replicas(config.consume_from.unwrap_or(ConsumeFrom::Leader), id)
}

/// This core's clients, with connections to every owner core its producers and consumers will
/// use already open (so no two tasks race to open the same one, and the start is not skewed).
async fn connect(index: usize, config: &RunConfig, plan: &Plan) -> Result<Clients, String> {
    if config.cluster {
        return connect_cluster(index, config, plan)
            .await
            .map(Clients::Cluster);
    }
    let mut clients = Vec::new();
    for (node, addr) in config.addr.iter().enumerate() {
        let mut client_config = ClientConfig::new(*addr, &config.tls_dir, &config.tls_name)
            .map_err(|e| {
                format!(
                    "TLS material in {} (start the dev node with `corelog serve`, which creates \
                     it, or give --tls-dir/--tls-name): {e}",
                    config.tls_dir.display()
                )
            })?;
        // The host of a `HOST:PORT` node: what its certificate names.
        client_config.server_name = config.resolved[node].server_name.clone();
        client_config.request_timeout = Duration::from_millis(REQUEST_TIMEOUT_MS);
        let client = Client::connect(client_config)
            .await
            .map_err(|e| format!("cannot reach the node at {addr}: {e}"))?;
        let meta = client
            .metadata()
            .await
            .map_err(|e| format!("metadata from {addr}: {e}"))?;
        let used = plan
            .producers
            .iter()
            .chain(plan.consumers.iter())
            .filter(|a| a.core == index && plan.targets[a.target].node == node);
        let mut cores: Vec<u16> = used
            .filter_map(|a| {
                let partition = plan.targets[a.target].partition;
                meta.partitions
                    .iter()
                    .find(|p| p.partition == partition)
                    .map(|p| p.owner_core as u16)
            })
            .collect();
        cores.sort_unstable();
        cores.dedup();
        for c in cores {
            client
                .connection(c)
                .await
                .map_err(|e| format!("cannot connect to core {c} of {addr}: {e}"))?;
        }
        clients.push(Rc::new(client));
    }
    Ok(Clients::Nodes(clients))
}

/// `--cluster`: clients of the nodes this core starts on (each partition's leader, and the
/// replicas its consumers read), with the owner-core connections open.
async fn connect_cluster(
    index: usize,
    config: &RunConfig,
    plan: &Plan,
) -> Result<Rc<Nodes>, String> {
    let nodes = Rc::new(Nodes::new(
        &route::seed_addrs(&config.resolved),
        config.tls_dir.clone(),
        config.tls_name.clone(),
        Duration::from_millis(REQUEST_TIMEOUT_MS),
    ));
    for r in &config.resolved {
        nodes.remember(r);
    }
    let mut used: Vec<(SocketAddr, u32)> = Vec::new();
    for a in plan.producers.iter().filter(|a| a.core == index) {
        let t = &plan.targets[a.target];
        used.push((t.addr, t.partition));
    }
    for a in plan.consumers.iter().filter(|a| a.core == index) {
        let t = &plan.targets[a.target];
        used.push((read_replicas(config, t, a.id)[0], t.partition));
    }
    for t in &plan.targets {
        // Members named by host as discovery resolved them: no lookup on this core.
        for n in t.replicas.iter().filter_map(|r| r.named.as_ref()) {
            nodes.adopt(n);
        }
        nodes.learn(t.replicas.iter().map(|r| r.addr));
    }
    used.sort_unstable();
    used.dedup();
    for (addr, partition) in used {
        let client = nodes
            .client(addr)
            .await
            .map_err(|e| format!("cannot reach the node at {addr}: {e}"))?;
        let meta = client
            .metadata()
            .await
            .map_err(|e| format!("metadata from {addr}: {e}"))?;
        if let Some(p) = meta.partitions.iter().find(|p| p.partition == partition) {
            client
                .connection(p.owner_core as u16)
                .await
                .map_err(|e| format!("cannot connect to core {} of {addr}: {e}", p.owner_core))?;
        }
    }
    Ok(nodes)
}

/// Sends this core's interval measurements to the main thread at each whole second of the
/// run.
async fn tick_loop(core: Rc<Core>, ticks: Sender<Tick>) {
    let start = core.timeline.start;
    for second in 1u64.. {
        sleep_until(start + Duration::from_secs(second)).await;
        let measures = {
            let mut interval = core.interval.borrow_mut();
            let m = interval.clone();
            interval.reset();
            m
        };
        let tick = Tick { second, measures };
        if ticks.send(tick).is_err() {
            return;
        }
    }
}

async fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        glommio::timer::sleep(t - now).await;
    }
}

/// The short name of an error, for `errors_by_kind`.
pub fn error_kind(e: &ClientError) -> String {
    match e {
        ClientError::Server(s) => s.code().as_str_name().to_ascii_lowercase(),
        ClientError::Connection { .. } => "connection".into(),
        ClientError::Connect { .. } => "connect".into(),
        ClientError::Tls(_) => "tls".into(),
        ClientError::Timeout { .. } => "timeout".into(),
        ClientError::Protocol { .. } => "protocol".into(),
    }
}

impl Core {
    fn error(&self, kind: &str) {
        self.window.borrow_mut().error(kind);
        self.interval.borrow_mut().error(kind);
    }

    /// A batch of `records` scheduled at `intended` was acknowledged at `now`.
    fn acked(&self, intended: Instant, now: Instant, records: u64, bytes: u64) {
        let us = now.saturating_duration_since(intended).as_micros() as u64;
        let tl = &self.timeline;
        {
            let mut w = self.window.borrow_mut();
            if tl.in_window(intended) {
                stats::record(&mut w.produce.latency, us, records);
            }
            if tl.in_window(now) {
                w.produce.records += records;
                w.produce.bytes += bytes;
            }
        }
        let mut i = self.interval.borrow_mut();
        stats::record(&mut i.produce.latency, us, records);
        i.produce.records += records;
        i.produce.bytes += bytes;
    }

    /// A consumer received `records` records of `bytes` bytes at `now`, `asked_at` being when
    /// it asked for them.
    fn consumed(&self, asked_at: Option<Instant>, now: Instant, records: u64, bytes: u64) {
        let us = asked_at.map(|a| now.saturating_duration_since(a).as_micros() as u64);
        {
            let mut w = self.window.borrow_mut();
            if self.timeline.in_window(now) {
                w.consume.records += records;
                w.consume.bytes += bytes;
                if let Some(us) = us {
                    stats::record(&mut w.consume.latency, us, 1);
                }
            }
        }
        let mut i = self.interval.borrow_mut();
        i.consume.records += records;
        i.consume.bytes += bytes;
        if let Some(us) = us {
            stats::record(&mut i.consume.latency, us, 1);
        }
    }

    /// A record of this run, sent at `sent`, reached a consumer at `now`.
    fn delivered(&self, sent: Instant, now: Instant, bytes: u64) {
        let us = now.saturating_duration_since(sent).as_micros() as u64;
        {
            let mut w = self.window.borrow_mut();
            if self.timeline.in_window(sent) {
                stats::record(&mut w.end_to_end.latency, us, 1);
                w.end_to_end.records += 1;
                w.end_to_end.bytes += bytes;
            }
        }
        let mut i = self.interval.borrow_mut();
        stats::record(&mut i.end_to_end.latency, us, 1);
        i.end_to_end.records += 1;
        i.end_to_end.bytes += bytes;
    }

    fn violations_found(&self, n: u64) {
        if n > 0 {
            self.window.borrow_mut().violations += n;
            self.interval.borrow_mut().violations += n;
        }
    }
}

struct ProducerState {
    failed: Ranges,
    acked_records: u64,
    acked_end: Option<u64>,
    /// The highest first sequence of a batch acknowledged so far.
    max_acked_first: Option<u64>,
    /// Cluster runs: the route to the leader (see `route.rs`).
    route: Route,
    /// Cluster runs: a request failed or was refused since the route was last settled.
    route_broken: bool,
    /// Cluster runs: batches refused with NOT_LEADER, by first sequence, to resend in order.
    refused: BTreeMap<u64, Sent>,
    /// NOT_LEADER answers followed.
    reroutes: u64,
}

impl ProducerState {
    /// Cluster runs: whether the route must be settled before the next send.
    fn needs_settle(&self) -> bool {
        self.route_broken || self.route.leader.is_none() || !self.refused.is_empty()
    }
}

/// A batch sent: what an answer is booked against.
struct Sent {
    first: u64,
    count: u64,
    bytes: u64,
    /// When it was due (closed loop: first sent); its latency runs from here.
    intended: Instant,
    /// Cluster runs: the records, to resend after NOT_LEADER (empty otherwise).
    records: Vec<Bytes>,
}

/// Where one request went: the node (cluster runs) and the cluster's clients.
type Via = Option<(SocketAddr, Rc<Nodes>)>;

/// An in-flight slot and where to send in it.
struct Slot {
    permit: StaticPermit,
    client: Rc<Client>,
    via: Via,
}

async fn run_producer(core: Rc<Core>, sender: ProduceTo, a: Assignment) -> ProducerOutcome {
    let config = &core.config;
    let tl = core.timeline;
    let target = &core.plan.targets[a.target];
    let partition = target.partition;
    let batch = config.batch_records as u64;
    let producers = core.plan.producers.len() as f64;
    // Open loop: the time between two batches of this producer.
    let interval = config
        .rate
        .map(|rate| Duration::from_secs_f64(batch as f64 * producers / rate));
    let permits = Rc::new(Semaphore::new(config.in_flight as u64));
    let mut route = Route::default();
    if let ProduceTo::Cluster(nodes) = &sender
        && let Ok(c) = nodes.client(target.addr).await
    {
        route.leader = Some((target.addr, c));
    }
    let state = Rc::new(RefCell::new(ProducerState {
        failed: Ranges::default(),
        acked_records: 0,
        acked_end: None,
        max_acked_first: None,
        route,
        route_broken: false,
        refused: BTreeMap::new(),
        reroutes: 0,
    }));
    // A cluster producer keeps looking for a leader until one request timeout past the end.
    let settle_deadline = tl.measure_end + Duration::from_millis(REQUEST_TIMEOUT_MS);
    // Producers' schedules are spread evenly over one interval, so they do not all send at
    // the same instants.
    let phase = f64::from(a.id) / producers;
    let mut seq = 0u64;
    let mut unsent_scheduled = 0u64;
    for k in 0u64.. {
        let scheduled = interval.map(|iv| tl.start + iv.mul_f64(k as f64 + phase));
        if let Some(s) = scheduled {
            if s >= tl.measure_end {
                break;
            }
            sleep_until(s).await;
        }
        if Instant::now() < tl.measure_end
            && let Some(slot) =
                next_slot(&core, &sender, partition, &permits, &state, settle_deadline).await
            && Instant::now() < tl.measure_end
        {
            let intended = scheduled.unwrap_or_else(Instant::now);
            let records = build_batch(&core, a.id, seq, batch, tl.ns_of(intended));
            let sent = Sent {
                first: seq,
                count: batch,
                bytes: records.iter().map(|r| r.len() as u64).sum(),
                intended,
                records: if slot.via.is_some() {
                    records.clone()
                } else {
                    Vec::new()
                },
            };
            seq += batch;
            let (core2, state2) = (core.clone(), state.clone());
            glommio::spawn_local(async move {
                let result = slot.client.produce(partition, records).await;
                answered(&core2, &state2, sent, slot.via, result);
                drop(slot.permit);
            })
            .detach();
            continue;
        }
        if let (Some(iv), Some(s)) = (interval, scheduled) {
            // Scheduled in the window, never sent: the node was too slow for the rate.
            let left = tl.measure_end.saturating_duration_since(s);
            unsent_scheduled = (left.as_secs_f64() / iv.as_secs_f64()).ceil() as u64;
        }
        break;
    }
    // Every request ends: answered, or failed by the client's request timeout.
    drop(permits.acquire_permit(config.in_flight as u64).await);
    // Batches refused at the very end are still resent (in order) once a leader is known.
    if let ProduceTo::Cluster(nodes) = &sender
        && !state.borrow().refused.is_empty()
    {
        settle(&core, nodes, partition, &permits, &state, settle_deadline).await;
    }
    let st = state.borrow();
    ProducerOutcome {
        id: a.id,
        target: a.target,
        sent: seq,
        failed: st.failed.clone(),
        acked_records: st.acked_records,
        acked_end: st.acked_end,
        unsent_scheduled,
        reroutes: st.reroutes,
    }
}

/// Waits for an in-flight slot; in a cluster run, settles a broken route first. `None`: stop
/// (no leader found before `deadline`).
async fn next_slot(
    core: &Core,
    sender: &ProduceTo,
    partition: u32,
    permits: &Rc<Semaphore>,
    state: &RefCell<ProducerState>,
    deadline: Instant,
) -> Option<Slot> {
    loop {
        if let ProduceTo::Cluster(nodes) = sender
            && state.borrow().needs_settle()
            && !settle(core, nodes, partition, permits, state, deadline).await
        {
            return None;
        }
        let permit = permits.clone().acquire_static_permit(1).await.ok()?;
        match sender {
            ProduceTo::Node(client) => {
                return Some(Slot {
                    permit,
                    client: client.clone(),
                    via: None,
                });
            }
            ProduceTo::Cluster(nodes) => {
                let st = state.borrow();
                if !st.needs_settle()
                    && let Some((addr, client)) = &st.route.leader
                {
                    return Some(Slot {
                        permit,
                        client: client.clone(),
                        via: Some((*addr, nodes.clone())),
                    });
                }
                // The route broke while this producer waited for the slot: settle it first.
            }
        }
    }
}

/// Cluster runs: repairs the route (see `route.rs`). Waits until nothing is in flight, finds
/// the leader, and resends the refused batches one at a time, oldest first. Returns false if no
/// leader was found before `deadline` (the batches still refused then count as failed).
async fn settle(
    core: &Core,
    nodes: &Rc<Nodes>,
    partition: u32,
    permits: &Semaphore,
    state: &RefCell<ProducerState>,
    deadline: Instant,
) -> bool {
    // A permit (released on return), not `acquire`, which would keep the units for good.
    let Ok(_everything) = permits.acquire_permit(core.config.in_flight as u64).await else {
        return false;
    };
    loop {
        if Instant::now() >= deadline {
            let refused = std::mem::take(&mut state.borrow_mut().refused);
            for (first, sent) in refused {
                core.error("not_leader");
                state
                    .borrow_mut()
                    .failed
                    .insert(first, first + sent.count - 1);
            }
            return false;
        }
        let leader = state.borrow().route.leader.clone();
        let (addr, client) = match leader {
            Some(l) => l,
            None => {
                // A hint naming a host is looked up (once per core: `Nodes::resolve`).
                let hint = state.borrow_mut().route.take_hint();
                let hinted = match hint {
                    Some((name, by)) => nodes.resolve(&name).await.filter(|a| Some(*a) != by),
                    None => None,
                };
                let addr = match hinted {
                    Some(a) => Some(a),
                    None => nodes.find_leader(partition).await,
                };
                let found = match addr {
                    Some(a) => match nodes.client(a).await {
                        Ok(c) => Some((a, c)),
                        Err(_) => {
                            nodes.forget(a);
                            None
                        }
                    },
                    None => None,
                };
                match found {
                    Some(l) => {
                        state.borrow_mut().route.leader = Some(l.clone());
                        l
                    }
                    None => {
                        glommio::timer::sleep(Duration::from_millis(route::LEADER_RETRY_MS)).await;
                        continue;
                    }
                }
            }
        };
        state.borrow_mut().route_broken = false;
        let refused = std::mem::take(&mut state.borrow_mut().refused);
        if refused.is_empty() {
            return true;
        }
        let mut resend = Vec::with_capacity(refused.len());
        for (first, sent) in refused {
            if state.borrow().max_acked_first.is_some_and(|m| m > first) {
                // A later batch was acknowledged meanwhile: resending this one would put
                // acknowledged records out of order. It was certainly not applied; it failed.
                core.error("not_leader");
                state
                    .borrow_mut()
                    .failed
                    .insert(first, first + sent.count - 1);
            } else {
                resend.push(sent);
            }
        }
        // All at once, oldest first, on the leader's one connection (sent in this order, as
        // a producer's batches always are), then booked in the same order. One refused again
        // goes back to `refused`; a later one acknowledged meanwhile then fails it on the next
        // pass (above), so acknowledged records stay in order.
        let results = futures::future::join_all(
            resend
                .iter()
                .map(|sent| client.produce(partition, sent.records.clone())),
        )
        .await;
        for (sent, result) in resend.into_iter().zip(results) {
            answered(core, state, sent, Some((addr, nodes.clone())), result);
        }
    }
}

/// Books the answer to one produce request.
fn answered(
    core: &Core,
    state: &RefCell<ProducerState>,
    sent: Sent,
    via: Via,
    result: Result<ProduceResponse, ClientError>,
) {
    let now = Instant::now();
    let mut st = state.borrow_mut();
    let last = sent.first + sent.count - 1;
    match result {
        Ok(resp) if u64::from(resp.record_count) == sent.count => {
            core.acked(sent.intended, now, sent.count, sent.bytes);
            st.acked_records += sent.count;
            let end = resp.base_offset + sent.count;
            st.acked_end = Some(st.acked_end.map_or(end, |e| e.max(end)));
            st.max_acked_first = Some(st.max_acked_first.map_or(sent.first, |m| m.max(sent.first)));
        }
        Ok(_) => {
            // The node says it appended a different number of records than sent: treat the
            // batch as unacknowledged and say so.
            core.error("ack_record_count_mismatch");
            st.failed.insert(sent.first, last);
        }
        Err(e) => match (via, route::not_leader_hint(&e)) {
            (Some((addr, _)), Some(hint)) => {
                // Certainly not applied: resend it to the leader, in order (`settle`).
                st.reroutes += 1;
                st.route.not_leader(addr, hint);
                st.route_broken = true;
                st.refused.insert(sent.first, sent);
            }
            (via, _) => {
                core.error(&error_kind(&e));
                st.failed.insert(sent.first, last);
                if let Some((addr, nodes)) = via {
                    st.route.broken(addr);
                    st.route_broken = true;
                    if matches!(
                        e,
                        ClientError::Connection { .. }
                            | ClientError::Connect { .. }
                            | ClientError::Timeout { .. }
                    ) {
                        nodes.forget(addr);
                    }
                }
            }
        },
    }
}

/// `count` records of producer `producer` from sequence `first`, in one allocation.
fn build_batch(core: &Core, producer: u32, first: u64, count: u64, sent_ns: u64) -> Vec<Bytes> {
    let size = core.config.record_bytes;
    let mut buf = BytesMut::with_capacity(size * count as usize);
    for seq in first..first + count {
        let header = Header {
            run_id: core.plan.run_id,
            producer,
            seq,
            sent_ns,
        };
        let at = (seq as usize).wrapping_mul(61) % PADDING_SPREAD_BYTES;
        record::encode(&mut buf, &header, size, &core.padding[at..]);
    }
    let mut all = buf.freeze();
    (0..count).map(|_| all.split_to(size)).collect()
}

/// Whether a consumer is done: `Some(drained)` to stop.
fn consumer_done(core: &Core, target: usize, next_offset: u64) -> Option<bool> {
    let shared = &core.shared;
    if shared.aborted() {
        return Some(false);
    }
    let now = Instant::now();
    if core.plan.producers.is_empty() {
        let t = &core.plan.targets[target];
        if core.config.from != From::End && next_offset >= consumer_floor(&core.config, t) {
            return Some(true);
        }
        if now >= core.timeline.measure_end {
            return Some(core.config.from == From::End);
        }
        return None;
    }
    if let Some(ends) = shared.end_offsets.get() {
        if next_offset >= ends[target] {
            return Some(true);
        }
        if shared.drain_deadline.get().is_some_and(|d| now >= *d) {
            return Some(false);
        }
    }
    // A backstop: producers end within a request timeout of the window's end.
    let hard = core.timeline.measure_end
        + Duration::from_millis(REQUEST_TIMEOUT_MS + DRAIN_TIMEOUT_MS + 5_000);
    if now >= hard {
        return Some(false);
    }
    None
}

async fn run_consumer(core: Rc<Core>, mut read: ReadFrom, a: Assignment) -> ConsumerOutcome {
    let target = &core.plan.targets[a.target];
    let mut verifier = PartitionVerifier::new(
        core.plan.run_id,
        target.label(),
        target.start_offset,
        &core.plan.producers_of(a.target),
    );
    let drained = match core.config.consume_api {
        ConsumeApi::Subscribe => subscribe_loop(&core, &mut read, a, &mut verifier).await,
        ConsumeApi::Poll => poll_loop(&core, &mut read, a, &mut verifier).await,
    };
    let other_runs = verifier.other_runs;
    ConsumerOutcome {
        verifier: verifier.into_outcome(),
        drained,
        finished_at: Instant::now(),
        other_runs,
    }
}

/// Reads with a subscription; returns whether the consumer drained.
async fn subscribe_loop(
    core: &Core,
    read: &mut ReadFrom,
    a: Assignment,
    verifier: &mut PartitionVerifier,
) -> bool {
    let partition = core.plan.targets[a.target].partition;
    let mut sub: Option<Subscription> = None;
    // When each outstanding credit was granted, oldest first, and when the consumer was done
    // with the previous event: an event's latency runs from the later of the two (when the
    // consumer was ready for it and the node allowed to send it) to its arrival.
    let mut granted: VecDeque<Instant> = VecDeque::new();
    let mut ready_at = Instant::now();
    let drained = loop {
        if let Some(drained) = consumer_done(core, a.target, verifier.next_offset()) {
            break drained;
        }
        let Some(s) = &sub else {
            let next = verifier.next_offset();
            let result = match read.client().await {
                Ok(client) => {
                    client
                        .subscribe(partition, next, FETCH_BYTES_MAX, SUBSCRIBE_CREDITS)
                        .await
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(s) => {
                    ready_at = Instant::now();
                    granted = (0..SUBSCRIBE_CREDITS).map(|_| ready_at).collect();
                    sub = Some(s);
                }
                Err(e) => {
                    core.error(&error_kind(&e));
                    read.failed();
                    glommio::timer::sleep(Duration::from_millis(RETRY_DELAY_MS)).await;
                }
            }
            continue;
        };
        let event = futures_lite::future::or(async { Some(s.next().await) }, async {
            glommio::timer::sleep(Duration::from_millis(CHECK_INTERVAL_MS)).await;
            None
        })
        .await;
        match event {
            None => {}
            Some(Ok(event)) => {
                let now = Instant::now();
                let asked = granted.pop_front().map(|g| g.max(ready_at));
                s.grant(1);
                granted.push_back(now);
                check_records(core, verifier, &event.records, asked, now);
                ready_at = Instant::now();
            }
            Some(Err(e)) => {
                core.error(&error_kind(&e));
                sub = None;
                read.failed();
                glommio::timer::sleep(Duration::from_millis(RETRY_DELAY_MS)).await;
            }
        }
    };
    if let Some(s) = sub {
        s.cancel();
    }
    drained
}

/// Reads with long-polling consume requests; returns whether the consumer drained.
async fn poll_loop(
    core: &Core,
    read: &mut ReadFrom,
    a: Assignment,
    verifier: &mut PartitionVerifier,
) -> bool {
    let partition = core.plan.targets[a.target].partition;
    loop {
        if let Some(drained) = consumer_done(core, a.target, verifier.next_offset()) {
            return drained;
        }
        let asked = Instant::now();
        let result = match read.client().await {
            Ok(client) => {
                client
                    .consume(
                        partition,
                        verifier.next_offset(),
                        FETCH_BYTES_MAX,
                        Duration::from_millis(CHECK_INTERVAL_MS),
                    )
                    .await
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(resp) => {
                let now = Instant::now();
                if !resp.records.is_empty() {
                    check_records(core, verifier, &resp.records, Some(asked), now);
                }
            }
            Err(e) => {
                core.error(&error_kind(&e));
                read.failed();
                glommio::timer::sleep(Duration::from_millis(RETRY_DELAY_MS)).await;
            }
        }
    }
}

/// Verifies and measures the records of one response or event.
fn check_records(
    core: &Core,
    verifier: &mut PartitionVerifier,
    records: &[WireRecord],
    asked: Option<Instant>,
    now: Instant,
) {
    let bytes: u64 = records.iter().map(|r| r.value.len() as u64).sum();
    core.consumed(asked, now, records.len() as u64, bytes);
    let mut violations = core.violations.borrow_mut();
    let before = violations.total();
    for r in records {
        if let Some(ours) = verifier.observe(r.offset, &r.value, &mut violations) {
            let sent = core.timeline.instant_of(ours.header.sent_ns);
            core.delivered(sent, now, r.value.len() as u64);
        }
    }
    let found = violations.total() - before;
    drop(violations);
    core.violations_found(found);
}

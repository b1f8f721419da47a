//! Cluster mode (`--cluster`): which node each request goes to.
//!
//! [`Nodes`] is one core's clients, one per node of the cluster it has talked to, so all of a
//! producer's requests to a node travel on one connection, in order. [`Route`] is one
//! producer's belief about its partition's leader; [`ReadFrom`] is where one consumer reads.
//!
//! Produces go to the believed leader. A NOT_LEADER answer means the batch was certainly not
//! applied: it is resent to the leader the answer names (or, when it names none, to the one
//! Metadata names once an election is over) — a *reroute*, counted apart, not an error.
//! Anything else that breaks the route (the connection, a timeout, UNAVAILABLE) leaves the
//! batch's fate unknown: it counts as failed, and the leader is looked up again.
//!
//! Order: a producer's acknowledged records must land in sequence order (the verifier checks
//! that). A resend could overtake batches still in flight, so a broken route is a barrier
//! (`load.rs`): the producer stops sending, waits for every request in flight, finds the
//! leader, then resends the refused batches one at a time in sequence order before it goes
//! on. A refused batch older than a batch acknowledged meanwhile (a node refused it, then
//! became leader and accepted a later one) is not resent, as that would reorder acknowledged
//! records: it counts as failed (`not_leader`).
//!
//! Consumers may read from any replica: a follower serves what is committed below its own high
//! watermark, at the same offsets as the leader. A consumer whose node fails moves to another
//! replica (`--consume-from follower`) or to the current leader (`leader`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use corelog::client::{Client, ClientConfig, ClientError};
use corelog::net::errors::ServerError;
use corelog::proto::PartitionInfo;

/// Pause between two rounds of asking every known node for a partition's leader.
pub const LEADER_RETRY_MS: u64 = 20;

/// One core's clients of the cluster's nodes (see the module doc).
pub struct Nodes {
    tls_dir: PathBuf,
    tls_name: String,
    request_timeout: Duration,
    clients: RefCell<HashMap<SocketAddr, Rc<Client>>>,
    /// Every node address heard of (seeds and group members), in the order first heard of.
    known: RefCell<Vec<SocketAddr>>,
    /// Where the next leader lookup starts in `known`, so a dead node is not always asked first.
    cursor: RefCell<usize>,
}

impl Nodes {
    pub fn new(
        seeds: &[SocketAddr],
        tls_dir: PathBuf,
        tls_name: String,
        request_timeout: Duration,
    ) -> Nodes {
        Nodes {
            tls_dir,
            tls_name,
            request_timeout,
            clients: RefCell::new(HashMap::new()),
            known: RefCell::new(seeds.to_vec()),
            cursor: RefCell::new(0),
        }
    }

    /// The client of the node at `addr`, connecting if needed.
    pub async fn client(&self, addr: SocketAddr) -> Result<Rc<Client>, ClientError> {
        if let Some(c) = self.clients.borrow().get(&addr) {
            return Ok(c.clone());
        }
        let mut config = ClientConfig::new(addr, &self.tls_dir, &self.tls_name)?;
        config.request_timeout = self.request_timeout;
        let client = Rc::new(Client::connect(config).await?);
        self.learn([addr]);
        // Another task may have connected meanwhile: keep the first, so one connection
        // carries every request to that node.
        let mut clients = self.clients.borrow_mut();
        Ok(clients.entry(addr).or_insert(client).clone())
    }

    /// Drops the client of `addr` (its connection broke): the next use connects anew.
    pub fn forget(&self, addr: SocketAddr) {
        self.clients.borrow_mut().remove(&addr);
    }

    /// Adds node addresses to the ones asked when no leader is known.
    pub fn learn(&self, addrs: impl IntoIterator<Item = SocketAddr>) {
        let mut known = self.known.borrow_mut();
        for a in addrs {
            if !known.contains(&a) {
                known.push(a);
            }
        }
    }

    /// Asks the known nodes in turn who leads `partition`; `None` when none of them knows
    /// (an election is running, or no node answers). One round, no waiting.
    pub async fn find_leader(&self, partition: u32) -> Option<SocketAddr> {
        let known = self.known.borrow().clone();
        let start = {
            let mut cursor = self.cursor.borrow_mut();
            *cursor += 1;
            *cursor
        };
        for i in 0..known.len() {
            let addr = known[(start + i) % known.len()];
            let Ok(client) = self.client(addr).await else {
                self.forget(addr);
                continue;
            };
            let meta = match client.metadata().await {
                Ok(m) => m,
                Err(_) => {
                    self.forget(addr);
                    continue;
                }
            };
            let Some(info) = meta.partitions.iter().find(|p| p.partition == partition) else {
                continue;
            };
            self.learn(member_addrs(info));
            if let Some(leader) = leader_addr(info) {
                return Some(leader);
            }
        }
        None
    }
}

/// The addresses of a partition's Raft group members.
pub fn member_addrs(info: &PartitionInfo) -> Vec<SocketAddr> {
    info.members
        .iter()
        .filter_map(|m| m.addr.parse().ok())
        .collect()
}

/// The address of the partition's leader, as this node's metadata names it.
pub fn leader_addr(info: &PartitionInfo) -> Option<SocketAddr> {
    let id: u64 = info.leader_id.parse().ok()?;
    info.members
        .iter()
        .find(|m| m.node_id == id)
        .and_then(|m| m.addr.parse().ok())
}

/// The leader a NOT_LEADER answer names, if it names one.
pub fn not_leader_hint(e: &ClientError) -> Option<Option<SocketAddr>> {
    match e {
        ClientError::Server(ServerError::NotLeader { leader_addr, .. }) => {
            Some(leader_addr.as_deref().and_then(|a| a.parse().ok()))
        }
        _ => None,
    }
}

/// One producer's route to its partition's leader.
#[derive(Default)]
pub struct Route {
    /// The node believed to lead, and its client; `None` once that belief broke.
    pub leader: Option<(SocketAddr, Rc<Client>)>,
    /// Where a NOT_LEADER answer said the leader is.
    pub hint: Option<SocketAddr>,
}

impl Route {
    /// A request sent to `sent_to` was refused with NOT_LEADER naming `hint`.
    pub fn not_leader(&mut self, sent_to: SocketAddr, hint: Option<SocketAddr>) {
        if self.leader.as_ref().is_some_and(|(a, _)| *a == sent_to) {
            self.leader = None;
            self.hint = hint.filter(|h| *h != sent_to);
        }
    }

    /// A request sent to `sent_to` failed some other way (connection, timeout, UNAVAILABLE).
    pub fn broken(&mut self, sent_to: SocketAddr) {
        if self.leader.as_ref().is_some_and(|(a, _)| *a == sent_to) {
            self.leader = None;
            self.hint = None;
        }
    }
}

/// Where a consumer reads: one fixed node, or a replica of a cluster partition that changes
/// when it fails.
pub enum ReadFrom {
    Node(Rc<Client>),
    Cluster {
        nodes: Rc<Nodes>,
        partition: u32,
        /// Read from the leader (looked up again after a failure) rather than `replicas`.
        leader: bool,
        /// The replicas to read from, in turn (a leader reader: the leader at the start).
        replicas: Vec<SocketAddr>,
        next: usize,
        current: Option<(SocketAddr, Rc<Client>)>,
    },
}

impl ReadFrom {
    /// The client to read with now.
    pub async fn client(&mut self) -> Result<Rc<Client>, ClientError> {
        match self {
            ReadFrom::Node(c) => Ok(c.clone()),
            ReadFrom::Cluster {
                nodes,
                partition,
                leader,
                replicas,
                next,
                current,
            } => {
                if let Some((_, c)) = current {
                    return Ok(c.clone());
                }
                // The first pick is the plan's; after a failure, a leader reader asks who leads
                // now and a follower reader takes the next replica.
                let addr = if *leader && *next > 0 {
                    match nodes.find_leader(*partition).await {
                        Some(a) => a,
                        None => {
                            return Err(ClientError::Server(ServerError::NotLeader {
                                leader_hint: None,
                                leader_addr: None,
                            }));
                        }
                    }
                } else {
                    replicas[*next % replicas.len()]
                };
                *next += 1;
                let client = nodes
                    .client(addr)
                    .await
                    .inspect_err(|_| nodes.forget(addr))?;
                *current = Some((addr, client.clone()));
                Ok(client)
            }
        }
    }

    /// Reading failed: a cluster consumer moves on (another replica, or the current leader).
    pub fn failed(&mut self) {
        if let ReadFrom::Cluster { nodes, current, .. } = self
            && let Some((addr, _)) = current.take()
        {
            nodes.forget(addr);
        }
    }
}

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
//! leader, then resends the refused batches in sequence order, all at once on the leader's
//! connection as its batches always travel (one at a time, they cost a commit each: 32 in
//! flight took about 0.4 s to resend after a leader move), before it goes on. A refused
//! batch older than a batch acknowledged meanwhile (a node refused it, then became leader
//! and accepted a later one) is not resent, as that would reorder acknowledged records: it
//! counts as failed (`not_leader`).
//!
//! Consumers may read from any replica: a follower serves what is committed below its own high
//! watermark, at the same offsets as the leader. A consumer whose node fails moves to another
//! replica (`--consume-from follower`) or to the current leader (`leader`).
//!
//! Names: nodes are named by the addresses they advertise (group members in Metadata, the
//! leader in a NOT_LEADER answer), `IP:PORT` or `HOST:PORT`, as with the client library. An
//! `IP:PORT` name is used as is, without a lookup. A host name is looked up on first use, on
//! glommio's blocking pool ([`corelog::net::addr::resolve`]), then cached; of several
//! addresses, the first that accepts a connection is kept. The members discovery resolved are
//! handed to every core with their lookups ([`Named`]), so a core looks up only names new to
//! it (a leader hint naming a node that joined since). The node's certificate is checked
//! against the host name (against the IP address for `IP:PORT`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use corelog::client::{Client, ClientConfig, ClientError};
use corelog::net::addr::Resolved;
use corelog::net::errors::ServerError;
use corelog::proto::PartitionInfo;

/// Pause between two rounds of asking every known node for a partition's leader.
pub const LEADER_RETRY_MS: u64 = 20;

/// A node named by a host name, as one core's [`Nodes`] learnt it, so that another core's
/// starts with it (no lookup of its own, and the same address).
#[derive(Debug, Clone)]
pub struct Named {
    /// As the node advertises itself: `HOST:PORT`.
    pub name: String,
    /// Where it was reached.
    pub addr: SocketAddr,
    /// The lookup: every address of the name, and the certificate name (the host).
    pub lookup: Resolved,
}

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
    /// The certificate name of each address learnt from a `HOST:PORT` name, kept as the lookup
    /// that gave it (its `server_name`); an address not here is checked against its IP.
    names: RefCell<HashMap<SocketAddr, Resolved>>,
    /// Each `HOST:PORT` name looked up, and the address its node is reached at.
    looked_up: RefCell<HashMap<String, SocketAddr>>,
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
            names: RefCell::new(HashMap::new()),
            looked_up: RefCell::new(HashMap::new()),
        }
    }

    /// The client of the node at `addr`, connecting if needed. The node's certificate must
    /// name the host `addr` was learnt from, or else `addr`'s IP address.
    pub async fn client(&self, addr: SocketAddr) -> Result<Rc<Client>, ClientError> {
        if let Some(c) = self.clients.borrow().get(&addr) {
            return Ok(c.clone());
        }
        let mut config = ClientConfig::new(addr, &self.tls_dir, &self.tls_name)?;
        config.request_timeout = self.request_timeout;
        if let Some(lookup) = self.names.borrow().get(&addr) {
            config.server_name = lookup.server_name.clone();
        }
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

    /// Records the certificate name of each of `r`'s addresses, if `r` is a host name's lookup
    /// (an `IP:PORT` address is checked against its IP anyway).
    pub fn remember(&self, r: &Resolved) {
        if r.server_name.to_str().parse::<IpAddr>().is_ok() {
            return;
        }
        let mut names = self.names.borrow_mut();
        for a in &r.addrs {
            names.insert(*a, r.clone());
        }
    }

    /// Starts with a node another core's `Nodes` learnt ([`Nodes::named`]): no lookup here.
    pub fn adopt(&self, n: &Named) {
        self.remember(&n.lookup);
        self.looked_up.borrow_mut().insert(n.name.clone(), n.addr);
    }

    /// The host-named node `name` as this `Nodes` resolved it; `None` for an `IP:PORT` name or
    /// one not (successfully) resolved yet.
    pub fn named(&self, name: &str) -> Option<Named> {
        let addr = *self.looked_up.borrow().get(name)?;
        let lookup = self.names.borrow().get(&addr)?.clone();
        Some(Named {
            name: name.to_string(),
            addr,
            lookup,
        })
    }

    /// Where the node named `name` (`IP:PORT` or `HOST:PORT`) is reached; `None` if the name
    /// does not resolve. `IP:PORT` is that address, at once. A host name is looked up the first
    /// time (on the blocking pool), its certificate name remembered; of several addresses, the
    /// first with a client or else the first that accepts a connection is kept (if none does,
    /// the first is returned and the name is looked up again next time).
    pub async fn resolve(&self, name: &str) -> Option<SocketAddr> {
        if let Ok(addr) = name.parse::<SocketAddr>() {
            return Some(addr);
        }
        if let Some(addr) = self.looked_up.borrow().get(name) {
            return Some(*addr);
        }
        let lookup = corelog::net::addr::resolve(name).await.ok()?;
        self.remember(&lookup);
        let reached = if let [only] = lookup.addrs[..] {
            Some(only)
        } else {
            self.reach_one(&lookup.addrs).await
        };
        match reached {
            Some(addr) => {
                self.looked_up.borrow_mut().insert(name.to_string(), addr);
                Some(addr)
            }
            None => lookup.addrs.first().copied(),
        }
    }

    /// The first of `addrs` with a client, else the first that accepts a connection.
    async fn reach_one(&self, addrs: &[SocketAddr]) -> Option<SocketAddr> {
        if let Some(a) = addrs.iter().find(|a| self.clients.borrow().contains_key(a)) {
            return Some(*a);
        }
        for &a in addrs {
            if self.client(a).await.is_ok() {
                return Some(a);
            }
        }
        None
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
            let members = self.member_addrs(info).await;
            self.learn(members);
            if let Some(leader) = self.leader_addr(info).await {
                return Some(leader);
            }
        }
        None
    }

    /// Where a partition's Raft group members are reached (members whose name does not
    /// resolve are left out).
    pub async fn member_addrs(&self, info: &PartitionInfo) -> Vec<SocketAddr> {
        let mut addrs = Vec::with_capacity(info.members.len());
        for m in &info.members {
            if let Some(a) = self.resolve(&m.addr).await {
                addrs.push(a);
            }
        }
        addrs
    }

    /// Where the partition's leader, as this node's metadata names it, is reached.
    pub async fn leader_addr(&self, info: &PartitionInfo) -> Option<SocketAddr> {
        let id: u64 = info.leader_id.parse().ok()?;
        let leader = info.members.iter().find(|m| m.node_id == id)?;
        self.resolve(&leader.addr).await
    }
}

/// Every address of the `--addr` nodes, in order, each once: the seeds of a cluster run.
pub fn seed_addrs(resolved: &[Resolved]) -> Vec<SocketAddr> {
    let mut seeds: Vec<SocketAddr> = Vec::new();
    for a in resolved.iter().flat_map(|r| &r.addrs) {
        if !seeds.contains(a) {
            seeds.push(*a);
        }
    }
    seeds
}

/// The leader a NOT_LEADER answer names (`IP:PORT` or `HOST:PORT`), if it names one.
pub fn not_leader_hint(e: &ClientError) -> Option<Option<String>> {
    match e {
        ClientError::Server(ServerError::NotLeader { leader_addr, .. }) => {
            Some(leader_addr.clone())
        }
        _ => None,
    }
}

/// One producer's route to its partition's leader.
#[derive(Default)]
pub struct Route {
    /// The node believed to lead, and its client; `None` once that belief broke.
    pub leader: Option<(SocketAddr, Rc<Client>)>,
    /// Where a NOT_LEADER answer said the leader is, as it named it (`IP:PORT` or
    /// `HOST:PORT`; resolved with [`Nodes::resolve`]).
    pub hint: Option<String>,
    /// The node whose NOT_LEADER answer gave `hint`: a hint that resolves to it is no hint.
    pub hinted_by: Option<SocketAddr>,
}

impl Route {
    /// A request sent to `sent_to` was refused with NOT_LEADER naming `hint`.
    pub fn not_leader(&mut self, sent_to: SocketAddr, hint: Option<String>) {
        if self.leader.as_ref().is_some_and(|(a, _)| *a == sent_to) {
            self.leader = None;
            let sent_to_name = sent_to.to_string();
            self.hint = hint.filter(|h| *h != sent_to_name);
            self.hinted_by = Some(sent_to);
        }
    }

    /// A request sent to `sent_to` failed some other way (connection, timeout, UNAVAILABLE).
    pub fn broken(&mut self, sent_to: SocketAddr) {
        if self.leader.as_ref().is_some_and(|(a, _)| *a == sent_to) {
            self.leader = None;
            self.hint = None;
            self.hinted_by = None;
        }
    }

    /// The hint to follow, if any, and the node that gave it (a hint that resolves to that
    /// node is no hint).
    pub fn take_hint(&mut self) -> Option<(String, Option<SocketAddr>)> {
        let by = self.hinted_by.take();
        Some((self.hint.take()?, by))
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

#[cfg(test)]
mod tests {
    use super::*;

    use corelog::net::addr::resolve_blocking;

    fn nodes() -> Nodes {
        Nodes::new(
            &[],
            PathBuf::from("/nonexistent/loadgen-route-tests"),
            "client".into(),
            Duration::from_secs(1),
        )
    }

    fn on_executor<T>(f: impl std::future::Future<Output = T>) -> T {
        corelog::io::ensure_memlock(corelog::io::memlock_bytes_wanted(1, 1 << 20))
            .expect("locked-memory limit");
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(1 << 20)
            .make()
            .expect("glommio executor")
            .run(f)
    }

    #[test]
    fn ip_names_are_used_as_they_are_and_host_names_are_looked_up() {
        let (ip, host, bad, names, looked_up) = on_executor(async {
            let nodes = nodes();
            let ip = nodes.resolve("127.0.0.1:7401").await;
            let host = nodes.resolve("localhost:1").await;
            let bad = (
                nodes.resolve("no-port").await,
                nodes.resolve("bad host:1").await,
            );
            let names: Vec<(SocketAddr, String)> = nodes
                .names
                .borrow()
                .iter()
                .map(|(a, r)| (*a, r.server_name.to_str().into_owned()))
                .collect();
            let looked_up = nodes.looked_up.borrow().clone();
            (ip, host, bad, names, looked_up)
        });
        assert_eq!(ip, Some("127.0.0.1:7401".parse().unwrap()));
        let host = host.expect("localhost resolves");
        assert!(host.ip().is_loopback() && host.port() == 1, "{host}");
        assert_eq!(bad, (None, None));
        // Only the host name's addresses get a certificate name: the host.
        let lookup = resolve_blocking("localhost:1").unwrap();
        assert_eq!(names.len(), lookup.addrs.len(), "{names:?}");
        assert!(
            names
                .iter()
                .all(|(a, n)| lookup.addrs.contains(a) && n == "localhost"),
            "{names:?}"
        );
        // One address: kept at once. Several: the first that accepts a connection (none does
        // here: no node, and no TLS material), so the name is looked up again next time.
        if lookup.addrs.len() == 1 {
            assert_eq!(looked_up.get("localhost:1"), Some(&host));
        }
        assert!(!looked_up.contains_key("127.0.0.1:7401"));
    }

    #[test]
    fn a_node_learnt_on_another_core_needs_no_lookup() {
        let addr: SocketAddr = "127.0.0.1:7402".parse().unwrap();
        // `.invalid` never resolves (RFC 6761): only the adopted entry can answer.
        let named = Named {
            name: "node2.invalid:7402".into(),
            addr,
            lookup: Resolved {
                addrs: vec![addr],
                server_name: resolve_blocking("localhost:7402").unwrap().server_name,
            },
        };
        let (resolved, again) = on_executor(async {
            let nodes = nodes();
            nodes.adopt(&named);
            (
                nodes.resolve("node2.invalid:7402").await,
                nodes.named("node2.invalid:7402"),
            )
        });
        assert_eq!(resolved, Some(addr));
        let again = again.expect("the name is known");
        assert_eq!(
            (again.name.as_str(), again.addr),
            ("node2.invalid:7402", addr)
        );
        assert_eq!(again.lookup.server_name.to_str(), "localhost");
    }

    #[test]
    fn seeds_are_every_address_once_in_order() {
        let a = resolve_blocking("127.0.0.1:1").unwrap();
        let b = resolve_blocking("127.0.0.1:2").unwrap();
        assert_eq!(
            seed_addrs(&[a.clone(), b.clone(), a.clone()]),
            vec![a.addrs[0], b.addrs[0]]
        );
    }

    #[test]
    fn a_not_leader_hint_is_the_name_the_node_gave() {
        let not_leader = |addr: Option<&str>| {
            ClientError::Server(ServerError::NotLeader {
                leader_hint: None,
                leader_addr: addr.map(str::to_string),
            })
        };
        assert_eq!(
            not_leader_hint(&not_leader(Some("localhost:7401"))),
            Some(Some("localhost:7401".to_string()))
        );
        assert_eq!(
            not_leader_hint(&not_leader(Some("127.0.0.1:7401"))),
            Some(Some("127.0.0.1:7401".to_string()))
        );
        assert_eq!(not_leader_hint(&not_leader(None)), Some(None));
        assert_eq!(
            not_leader_hint(&ClientError::Server(ServerError::Unavailable {
                message: String::new()
            })),
            None
        );
    }
}

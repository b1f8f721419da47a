//! A replicated cluster behind one handle: routes each partition's requests to its leader.
//!
//! [`ClusterClient`] keeps a [`Client`] per node it has talked to and a cache of partition
//! leaders. A `NotLeader` answer (certainly not applied) moves the partition to the named
//! leader and resends; when no leader is known yet (an election is running) it learns the
//! cluster's servers from that node (once per request), waits a little and asks again,
//! going round the nodes it knows. A broken connection to the leader forgets it (the next attempt asks another
//! node); a produce is resent only when the server said it certainly was not applied.
//!
//! Nodes are named by the addresses they advertise, `IP:PORT` or `HOST:PORT`. A host name is
//! looked up off the core ([`crate::net::addr::resolve`]), its addresses are tried in turn,
//! and the node's certificate is checked against the host name.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustls_pki_types::ServerName;

use crate::client::{Client, ClientConfig, ClientError};
use crate::net::addr::{LOOKUP_TTL, Lookups, Resolved};
use crate::net::errors::ServerError;
use crate::net::frame::{Request, Response};
use crate::proto::{
    ConsumeRequest, ConsumeResponse, GetServersResponse, JoinRequest, JoinResponse, LeaveRequest,
    ProduceRequest, ProduceResponse,
};

/// How long a request keeps following leaders and waiting out elections.
pub const LEADER_WAIT_MS_DEFAULT: u64 = 10_000;
/// Pause before asking again when no leader is known.
const NO_LEADER_BACKOFF_MS: u64 = 50;

/// See the module doc.
pub struct ClusterClient {
    template: ClientConfig,
    /// Nodes to ask when no leader is known, in order.
    seeds: RefCell<Vec<SocketAddr>>,
    nodes: RefCell<HashMap<SocketAddr, Rc<Client>>>,
    /// One connect at a time per node: requests sent in order must share one connection.
    connecting: RefCell<HashMap<SocketAddr, Rc<glommio::sync::Semaphore>>>,
    leaders: RefCell<HashMap<u32, SocketAddr>>,
    /// The certificate name of each address learnt from a `HOST:PORT` name (the IP address
    /// otherwise).
    names: RefCell<HashMap<SocketAddr, ServerName<'static>>>,
    /// Host names looked up, kept for [`LOOKUP_TTL`].
    lookups: Lookups,
    /// How long one request may spend finding a leader.
    pub leader_wait: Duration,
}

impl ClusterClient {
    /// A client for the cluster that `config.addr` belongs to (more seeds may be added).
    pub fn new(config: ClientConfig) -> ClusterClient {
        let mut names = HashMap::new();
        if let ServerName::DnsName(_) = config.server_name {
            names.insert(config.addr, config.server_name.clone());
        }
        ClusterClient {
            seeds: RefCell::new(vec![config.addr]),
            template: config,
            nodes: RefCell::new(HashMap::new()),
            connecting: RefCell::new(HashMap::new()),
            leaders: RefCell::new(HashMap::new()),
            names: RefCell::new(names),
            lookups: Lookups::new(LOOKUP_TTL),
            leader_wait: Duration::from_millis(LEADER_WAIT_MS_DEFAULT),
        }
    }

    /// Adds nodes to try when no leader is known.
    pub fn add_seeds(&self, addrs: impl IntoIterator<Item = SocketAddr>) {
        let mut seeds = self.seeds.borrow_mut();
        for a in addrs {
            if !seeds.contains(&a) {
                seeds.push(a);
            }
        }
    }

    /// Adds a node's resolved addresses to the seeds, remembering the name its certificate
    /// must carry.
    pub fn add_resolved_seeds(&self, resolved: &Resolved) {
        self.remember_name(resolved);
        self.add_seeds(resolved.addrs.iter().copied());
    }

    fn remember_name(&self, resolved: &Resolved) {
        if let ServerName::DnsName(_) = resolved.server_name {
            let mut names = self.names.borrow_mut();
            for a in &resolved.addrs {
                names.insert(*a, resolved.server_name.clone());
            }
        }
    }

    /// Adds the nodes named `addrs` (`IP:PORT` or `HOST:PORT`) to the seeds. Best effort: a
    /// name that does not resolve adds nothing.
    pub async fn add_named_seeds(&self, addrs: impl IntoIterator<Item = &str>) {
        for addr in addrs {
            match self.lookups.resolve(addr).await {
                Ok(resolved) => self.add_resolved_seeds(&resolved),
                Err(e) => log::debug!("cluster client: {e}"),
            }
        }
    }

    /// Where the node named `addr` (`IP:PORT` or `HOST:PORT`, as a `NotLeader` hint names it)
    /// is reached: the first of its addresses already connected, else the first that accepts
    /// a connection. `None` if none does (or the name does not resolve); a host name is then
    /// looked up afresh next time.
    async fn reach(&self, addr: &str) -> Option<SocketAddr> {
        let resolved = match self.lookups.resolve(addr).await {
            Ok(r) => r,
            Err(e) => {
                log::debug!("cluster client: {e}");
                return None;
            }
        };
        self.remember_name(&resolved);
        if let Some(a) = resolved
            .addrs
            .iter()
            .find(|a| self.nodes.borrow().contains_key(a))
        {
            return Some(*a);
        }
        for a in resolved.addrs {
            if self.node(a).await.is_ok() {
                return Some(a);
            }
        }
        self.lookups.forget(addr);
        None
    }

    /// Host-name lookups made so far (each name once per [`LOOKUP_TTL`] while it answers).
    pub fn lookups_made(&self) -> u64 {
        self.lookups.made()
    }

    /// The client of the node at `addr`, connecting if needed.
    pub async fn node(&self, addr: SocketAddr) -> Result<Rc<Client>, ClientError> {
        if let Some(c) = self.nodes.borrow().get(&addr) {
            return Ok(c.clone());
        }
        let gate = self
            .connecting
            .borrow_mut()
            .entry(addr)
            .or_insert_with(|| Rc::new(glommio::sync::Semaphore::new(1)))
            .clone();
        let _connecting = gate
            .acquire_permit(1)
            .await
            .map_err(|e| ClientError::Connection {
                addr: addr.to_string(),
                message: format!("connect: {e}"),
            })?;
        if let Some(c) = self.nodes.borrow().get(&addr) {
            return Ok(c.clone());
        }
        let mut config = self.template.clone();
        config.addr = addr;
        config.server_name = self
            .names
            .borrow()
            .get(&addr)
            .cloned()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        let client = Rc::new(Client::connect(config).await?);
        self.nodes.borrow_mut().insert(addr, client.clone());
        Ok(client)
    }

    /// The node believed to lead `partition` (a seed when unknown).
    pub fn leader_of(&self, partition: u32, attempt: usize) -> SocketAddr {
        if let Some(a) = self.leaders.borrow().get(&partition) {
            return *a;
        }
        let seeds = self.seeds.borrow();
        seeds[attempt % seeds.len()]
    }

    /// Appends `records` to `partition` on its leader; resolves once committed.
    pub async fn produce(
        &self,
        partition: u32,
        records: Vec<Bytes>,
    ) -> Result<ProduceResponse, ClientError> {
        let request = Request::Produce(ProduceRequest { partition, records });
        match self.call_leader(partition, request, false).await? {
            Response::Produce(r) => Ok(r),
            other => Err(unexpected(&other)),
        }
    }

    /// Reads from `partition`: from the leader with `linearizable` (a read index), else from
    /// whichever node answers (below its high watermark).
    pub async fn consume(
        &self,
        partition: u32,
        offset: u64,
        max_bytes: u32,
        max_wait: Duration,
        linearizable: bool,
    ) -> Result<ConsumeResponse, ClientError> {
        let request = Request::Consume(ConsumeRequest {
            partition,
            offset,
            max_bytes,
            max_wait_ms: max_wait.as_millis().min(u32::MAX as u128) as u32,
            linearizable,
        });
        match self.call_leader(partition, request, true).await? {
            Response::Consume(r) => Ok(r),
            other => Err(unexpected(&other)),
        }
    }

    /// Reads `partition` from the node at `addr` (no routing: a follower answers from its own
    /// log below its high watermark).
    pub async fn consume_from(
        &self,
        addr: SocketAddr,
        partition: u32,
        offset: u64,
        max_bytes: u32,
    ) -> Result<ConsumeResponse, ClientError> {
        let node = self.node(addr).await?;
        node.consume(partition, offset, max_bytes, Duration::ZERO)
            .await
    }

    /// Adds node `node_id` (reachable at `addr`) to `partition`'s group: learner, caught up,
    /// then voter while the group has fewer voters than its replication factor.
    pub async fn join(
        &self,
        partition: u32,
        node_id: u64,
        addr: &str,
    ) -> Result<JoinResponse, ClientError> {
        let request = Request::Join(JoinRequest {
            partition,
            node_id,
            addr: addr.to_string(),
        });
        match self.call_leader(partition, request, true).await? {
            Response::Join(r) => Ok(r),
            other => Err(unexpected(&other)),
        }
    }

    /// Removes node `node_id` from `partition`'s group.
    pub async fn leave(&self, partition: u32, node_id: u64) -> Result<(), ClientError> {
        let request = Request::Leave(LeaveRequest { partition, node_id });
        match self.call_leader(partition, request, true).await? {
            Response::Leave(_) => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Adds every server `node` lists (GetServers) to the seeds. Best effort: an address that
    /// does not resolve, and a node that does not answer, add nothing. Whether `node`
    /// answered.
    async fn discover(&self, node: &Client) -> bool {
        match node.get_servers().await {
            Ok(servers) => {
                self.add_named_seeds(servers.servers.iter().map(|s| s.rpc_addr.as_str()))
                    .await;
                true
            }
            Err(_) => false,
        }
    }

    /// [`ClusterClient::discover`] from the first seed other than `except` that answers.
    async fn discover_from_seeds(&self, except: SocketAddr) {
        let seeds = self.seeds.borrow().clone();
        for seed in seeds.into_iter().filter(|s| *s != except) {
            if let Ok(node) = self.node(seed).await
                && self.discover(&node).await
            {
                return;
            }
        }
    }

    /// The cluster's servers, as the first reachable seed sees them.
    pub async fn get_servers(&self) -> Result<GetServersResponse, ClientError> {
        let seeds = self.seeds.borrow().clone();
        let mut last = None;
        for addr in seeds {
            match self.node(addr).await {
                Ok(node) => match node.get_servers().await {
                    Ok(r) => return Ok(r),
                    Err(e) => last = Some(e),
                },
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one seed"))
    }

    /// Sends `request` to `partition`'s leader, following NotLeader and waiting out
    /// elections for up to [`ClusterClient::leader_wait`].
    async fn call_leader(
        &self,
        partition: u32,
        request: Request,
        idempotent: bool,
    ) -> Result<Response, ClientError> {
        let deadline = Instant::now() + self.leader_wait;
        let mut attempt = 0;
        let mut discovered = false;
        loop {
            let addr = self.leader_of(partition, attempt);
            attempt += 1;
            let node = match self.node(addr).await {
                Ok(node) => node,
                Err(e) => {
                    // Nothing was sent (certainly not applied): forget that node as the leader
                    // and try the next one. It may be a leader that died, named by the only
                    // other node this client knows: learn the servers from a node that answers
                    // (once per request).
                    self.leaders.borrow_mut().remove(&partition);
                    if !discovered {
                        discovered = true;
                        self.discover_from_seeds(addr).await;
                    }
                    if Instant::now() + Duration::from_millis(NO_LEADER_BACKOFF_MS) >= deadline {
                        return Err(e);
                    }
                    crate::io::sleep(Duration::from_millis(NO_LEADER_BACKOFF_MS)).await;
                    continue;
                }
            };
            let result = node
                .call_partition(partition, request.clone(), idempotent)
                .await;
            let retry_after = match &result {
                Err(ClientError::Server(ServerError::NotLeader { leader_addr, .. })) => {
                    let hinted = match leader_addr.as_deref() {
                        Some(hint) => self.reach(hint).await,
                        None => None,
                    };
                    match hinted {
                        Some(leader) if leader != addr => {
                            self.add_seeds([leader]);
                            self.leaders.borrow_mut().insert(partition, leader);
                            Duration::ZERO
                        }
                        _ => {
                            self.leaders.borrow_mut().remove(&partition);
                            // The node knows no leader: learn the cluster's other nodes from
                            // it (once per request), so that the next attempts can ask them.
                            // A client that knows only a node removed from the cluster would
                            // otherwise ask nothing else.
                            if !discovered {
                                discovered = true;
                                self.discover(&node).await;
                            }
                            Duration::from_millis(NO_LEADER_BACKOFF_MS)
                        }
                    }
                }
                Err(ClientError::Server(ServerError::Unavailable { .. })) => {
                    self.leaders.borrow_mut().remove(&partition);
                    // A produce may or may not have been applied: the caller decides.
                    if !idempotent {
                        return result;
                    }
                    Duration::from_millis(NO_LEADER_BACKOFF_MS)
                }
                Err(
                    e @ (ClientError::Connection { .. }
                    | ClientError::Connect { .. }
                    | ClientError::Timeout { .. }),
                ) => {
                    self.leaders.borrow_mut().remove(&partition);
                    self.nodes.borrow_mut().remove(&addr);
                    if !idempotent && !e.certainly_not_applied() {
                        return result;
                    }
                    Duration::from_millis(NO_LEADER_BACKOFF_MS)
                }
                Ok(_) => {
                    self.leaders.borrow_mut().insert(partition, addr);
                    return result;
                }
                Err(_) => return result,
            };
            if Instant::now() + retry_after >= deadline {
                return result;
            }
            if !retry_after.is_zero() {
                crate::io::sleep(retry_after).await;
            }
        }
    }
}

fn unexpected(response: &Response) -> ClientError {
    ClientError::Protocol {
        addr: String::new(),
        message: format!("unexpected response {:?}", response.kind()),
    }
}

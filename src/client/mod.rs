//! The client library: what the CLI, `loadgen` and the tests use to talk to a node.
//!
//! - [`Connection`]: one TLS connection to one core of a node, pipelined — any number of
//!   requests in flight, matched to responses by correlation id.
//! - [`Client`]: a node's partitions behind one handle. It learns which core owns which
//!   partition (Metadata), keeps one connection per owner core, follows `WrongCore`, and
//!   retries only what is safe to retry: reads always; a produce only when the server said it
//!   certainly was not applied (see `ServerError::certainly_not_applied`).
//!
//! Runs on a glommio executor (it is `!Send`, like everything on a core).

pub mod cluster;
mod connection;

pub use connection::{Connection, Subscription};

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use glommio::sync::Semaphore;

use crate::net::errors::ServerError;
use crate::net::frame::{FRAME_BYTES_MAX_DEFAULT, Request, Response};
use crate::net::preamble::ConnKind;
use crate::proto::{
    ConsumeRequest, ConsumeResponse, GetServersRequest, GetServersResponse, MetadataRequest,
    MetadataResponse, ProduceRequest, ProduceResponse, SubscribeRequest,
};

/// How many times a request is re-sent after WrongCore or a lost connection.
const RETRIES_MAX: usize = 3;
/// Default time a request may wait for its response.
pub const REQUEST_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// Default time to connect and finish the TLS handshake.
pub const CONNECT_TIMEOUT_MS_DEFAULT: u64 = 10_000;

/// Why a request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error.
    #[error("{0}")]
    Server(#[from] ServerError),
    /// Connecting, TLS, or the connection broke. A produce in flight may or may not have been
    /// applied.
    #[error("connection to {addr}: {message}")]
    Connection { addr: String, message: String },
    /// No connection could be opened for the request: it was never sent.
    #[error("cannot connect to {addr}: {message}")]
    Connect { addr: String, message: String },
    /// TLS material could not be loaded.
    #[error("TLS: {0}")]
    Tls(String),
    /// No response in time. A produce may or may not have been applied.
    #[error("no response from {addr} within {timeout_ms} ms")]
    Timeout { addr: String, timeout_ms: u64 },
    /// The server sent something this client cannot make sense of.
    #[error("protocol error from {addr}: {message}")]
    Protocol { addr: String, message: String },
}

impl ClientError {
    /// Whether the request certainly had no effect on the server.
    pub fn certainly_not_applied(&self) -> bool {
        match self {
            ClientError::Server(e) => e.certainly_not_applied(),
            ClientError::Tls(_) | ClientError::Connect { .. } => true,
            _ => false,
        }
    }
}

/// How to reach a node.
#[derive(Clone)]
pub struct ClientConfig {
    pub addr: SocketAddr,
    pub tls: Arc<rustls::ClientConfig>,
    /// The name the server's certificate is checked against.
    pub server_name: rustls_pki_types::ServerName<'static>,
    pub frame_bytes_max: usize,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
}

impl ClientConfig {
    /// A config for `addr` using `NAME.pem` / `NAME-key.pem` and `ca.pem` from `tls_dir`.
    pub fn new(addr: SocketAddr, tls_dir: &Path, name: &str) -> Result<ClientConfig, ClientError> {
        let tls = crate::net::tls::client_config(tls_dir, name)
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        // Dev and `corelog certs` certificates carry localhost and the loopback addresses.
        let server_name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
        Ok(ClientConfig {
            addr,
            tls,
            server_name,
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
            request_timeout: Duration::from_millis(REQUEST_TIMEOUT_MS_DEFAULT),
            connect_timeout: Duration::from_millis(CONNECT_TIMEOUT_MS_DEFAULT),
        })
    }
}

/// A node's partitions behind one handle (see the module doc).
pub struct Client {
    config: ClientConfig,
    connections: RefCell<HashMap<u16, Rc<Connection>>>,
    /// One connect at a time per core (see [`Client::connection`]).
    connecting: RefCell<HashMap<u16, Rc<Semaphore>>>,
    /// partition → owner core, from the last Metadata.
    owners: RefCell<HashMap<u32, u16>>,
}

impl Client {
    /// Connects to core 0 and reads the partition map.
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        let client = Client {
            config,
            connections: RefCell::new(HashMap::new()),
            connecting: RefCell::new(HashMap::new()),
            owners: RefCell::new(HashMap::new()),
        };
        client.refresh_metadata().await?;
        Ok(client)
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Re-reads which core owns which partition.
    pub async fn refresh_metadata(&self) -> Result<MetadataResponse, ClientError> {
        let meta = self.metadata().await?;
        let mut owners = self.owners.borrow_mut();
        owners.clear();
        for p in &meta.partitions {
            owners.insert(p.partition, p.owner_core as u16);
        }
        Ok(meta)
    }

    /// The node's metadata (asked on any core).
    pub async fn metadata(&self) -> Result<MetadataResponse, ClientError> {
        match self
            .call_core(0, Request::Metadata(MetadataRequest {}), true)
            .await?
        {
            Response::Metadata(m) => Ok(m),
            other => Err(self.unexpected(&other)),
        }
    }

    /// The cluster's servers.
    pub async fn get_servers(&self) -> Result<GetServersResponse, ClientError> {
        match self
            .call_core(0, Request::GetServers(GetServersRequest {}), true)
            .await?
        {
            Response::GetServers(m) => Ok(m),
            other => Err(self.unexpected(&other)),
        }
    }

    /// Appends `records` to `partition` as one batch; resolves once durable.
    pub async fn produce(
        &self,
        partition: u32,
        records: Vec<Bytes>,
    ) -> Result<ProduceResponse, ClientError> {
        let request = Request::Produce(ProduceRequest { partition, records });
        match self.call_partition(partition, request, false).await? {
            Response::Produce(r) => Ok(r),
            other => Err(self.unexpected(&other)),
        }
    }

    /// Reads records from `offset`, waiting up to `max_wait` for some to arrive.
    pub async fn consume(
        &self,
        partition: u32,
        offset: u64,
        max_bytes: u32,
        max_wait: Duration,
    ) -> Result<ConsumeResponse, ClientError> {
        let request = Request::Consume(ConsumeRequest {
            partition,
            offset,
            max_bytes,
            max_wait_ms: max_wait.as_millis().min(u32::MAX as u128) as u32,
            linearizable: false,
        });
        match self.call_partition(partition, request, true).await? {
            Response::Consume(r) => Ok(r),
            other => Err(self.unexpected(&other)),
        }
    }

    /// Opens a subscription: the server pushes committed records from `offset` on, one event
    /// per credit.
    pub async fn subscribe(
        &self,
        partition: u32,
        offset: u64,
        max_bytes: u32,
        credits: u32,
    ) -> Result<Subscription, ClientError> {
        let core = self.owner(partition);
        let conn = self.connection(core).await?;
        conn.subscribe(SubscribeRequest {
            partition,
            offset,
            max_bytes,
            credits,
        })
        .await
    }

    /// The connection to `core`, opening it if needed.
    ///
    /// Concurrent callers wait for one connect instead of each opening a connection: requests
    /// sent in order must travel on one connection to be appended in that order. The gate wakes
    /// its waiters first come, first served, so they send in the order they asked.
    pub async fn connection(&self, core: u16) -> Result<Rc<Connection>, ClientError> {
        if let Some(c) = self.open_connection(core) {
            return Ok(c);
        }
        let gate = self
            .connecting
            .borrow_mut()
            .entry(core)
            .or_insert_with(|| Rc::new(Semaphore::new(1)))
            .clone();
        let _connecting = gate
            .acquire_permit(1)
            .await
            .map_err(|e| ClientError::Connection {
                addr: self.config.addr.to_string(),
                message: format!("connect: {e}"),
            })?;
        if let Some(c) = self.open_connection(core) {
            return Ok(c);
        }
        let conn = Rc::new(Connection::connect(&self.config, core, ConnKind::Client).await?);
        self.connections.borrow_mut().insert(core, conn.clone());
        Ok(conn)
    }

    fn open_connection(&self, core: u16) -> Option<Rc<Connection>> {
        self.connections
            .borrow()
            .get(&core)
            .filter(|c| !c.is_closed())
            .cloned()
    }

    fn owner(&self, partition: u32) -> u16 {
        self.owners.borrow().get(&partition).copied().unwrap_or(0)
    }

    pub(crate) async fn call_partition(
        &self,
        partition: u32,
        request: Request,
        idempotent: bool,
    ) -> Result<Response, ClientError> {
        let mut attempt = 0;
        loop {
            let core = self.owner(partition);
            let result = self.call_core(core, request.clone(), idempotent).await;
            attempt += 1;
            match result {
                Err(ClientError::Server(ServerError::WrongCore { core, .. }))
                    if attempt < RETRIES_MAX =>
                {
                    // Certainly not applied: move the partition and resend.
                    self.owners.borrow_mut().insert(partition, core as u16);
                    let _ = self.refresh_metadata().await;
                }
                other => return other,
            }
        }
    }

    async fn call_core(
        &self,
        core: u16,
        request: Request,
        idempotent: bool,
    ) -> Result<Response, ClientError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let conn = self.connection(core).await;
            let result = match conn {
                Ok(conn) => conn.request(request.clone()).await,
                // Never sent: safe to retry whatever the request.
                Err(ClientError::Connection { addr, message }) => {
                    Err(ClientError::Connect { addr, message })
                }
                Err(e) => Err(e),
            };
            match result {
                Err(ClientError::Connect { .. }) if attempt < RETRIES_MAX => {
                    self.connections.borrow_mut().remove(&core);
                }
                Err(e @ ClientError::Connection { .. }) if attempt < RETRIES_MAX => {
                    // A read is safe to resend; a produce only if it never left.
                    if !idempotent {
                        return Err(e);
                    }
                    self.connections.borrow_mut().remove(&core);
                }
                Ok(Response::Error(err)) => return Err(ServerError::from_response(&err).into()),
                other => return other,
            }
        }
    }

    fn unexpected(&self, response: &Response) -> ClientError {
        ClientError::Protocol {
            addr: self.config.addr.to_string(),
            message: format!("unexpected response {:?}", response.kind()),
        }
    }
}

//! One pipelined TLS connection to one core of a node.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;

use super::{ClientConfig, ClientError};
use crate::io::net::TcpIo;
use crate::net::errors::ServerError;
use crate::net::frame::{
    self, CORRELATION_ID_CONNECTION, FrameDecoder, Request, Response, decode_response,
};
use crate::net::preamble::{ConnKind, Preamble};
use crate::proto::{SubscribeCancel, SubscribeCredit, SubscribeEvent, SubscribeRequest};
use crate::sync::{Event, OneshotSender, oneshot};

/// Bytes read from the socket at a time.
const READ_CHUNK_BYTES: usize = 64 << 10;

/// A pipelined connection: `request` may be called from many tasks at once.
pub struct Connection {
    inner: Rc<Inner>,
}

struct Inner {
    addr: String,
    request_timeout: Duration,
    next_id: Cell<u32>,
    outbox: RefCell<VecDeque<Bytes>>,
    outbox_ready: Event,
    pending: RefCell<HashMap<u32, OneshotSender<Result<Response, ClientError>>>>,
    subscriptions: RefCell<HashMap<u32, Rc<SubState>>>,
    closed: RefCell<Option<ClientError>>,
    /// The glommio executor whose tasks read and write the socket. Once it has ended (a
    /// program that runs one executor after another), nothing would ever answer: the
    /// connection counts as closed anywhere else.
    executor: usize,
}

struct SubState {
    events: RefCell<VecDeque<Result<SubscribeEvent, ClientError>>>,
    arrived: Event,
    ended: Cell<bool>,
}

impl Connection {
    /// Connects to `core` of the node: TCP, the preamble, then TLS.
    pub async fn connect(
        config: &ClientConfig,
        core: u16,
        kind: ConnKind,
    ) -> Result<Connection, ClientError> {
        let addr = config.addr.to_string();
        let conn_err = |message: String| ClientError::Connection {
            addr: addr.clone(),
            message,
        };
        let mut stream = TcpStream::connect_timeout(config.addr, config.connect_timeout)
            .await
            .map_err(|e| conn_err(format!("connect: {e}")))?;
        let _ = stream.set_nodelay(true);
        stream
            .write_all(&Preamble::new(kind, core).encode())
            .await
            .map_err(|e| conn_err(format!("preamble: {e}")))?;
        let connector = futures_rustls::TlsConnector::from(config.tls.clone());
        let handshake = futures_lite::future::or(
            async {
                Some(
                    connector
                        .connect(config.server_name.clone(), TcpIo::new(stream))
                        .await,
                )
            },
            async {
                crate::io::sleep(config.connect_timeout).await;
                None
            },
        )
        .await;
        let tls = match handshake {
            Some(Ok(tls)) => tls,
            Some(Err(e)) => return Err(conn_err(format!("TLS handshake: {e}"))),
            None => return Err(conn_err("TLS handshake timed out".into())),
        };
        let (reader, writer) = tls.split();
        let inner = Rc::new(Inner {
            addr,
            request_timeout: config.request_timeout,
            next_id: Cell::new(1),
            outbox: RefCell::new(VecDeque::new()),
            outbox_ready: Event::new(),
            pending: RefCell::new(HashMap::new()),
            subscriptions: RefCell::new(HashMap::new()),
            closed: RefCell::new(None),
            executor: glommio::executor().id(),
        });
        glommio::spawn_local(write_loop(inner.clone(), writer)).detach();
        glommio::spawn_local(read_loop(
            inner.clone(),
            reader,
            FrameDecoder::new(config.frame_bytes_max),
        ))
        .detach();
        Ok(Connection { inner })
    }

    /// Whether the connection broke or was closed, or belongs to another glommio executor
    /// than the one running the caller (see [`Connection::request`]).
    pub fn is_closed(&self) -> bool {
        self.inner.closed.borrow().is_some() || self.foreign().is_some()
    }

    /// The error for using this connection from an executor other than the one it was opened
    /// on: its I/O tasks run there (or ran, if it ended), so a request sent from here might
    /// never be answered.
    fn foreign(&self) -> Option<ClientError> {
        (glommio::executor().id() != self.inner.executor).then(|| ClientError::Connection {
            addr: self.inner.addr.clone(),
            message: "the connection was opened on another executor; open a new one on this \
                      one"
            .into(),
        })
    }

    /// Sends a request and waits for its response (an error response comes back as
    /// `Ok(Response::Error(..))`).
    pub async fn request(&self, request: Request) -> Result<Response, ClientError> {
        let inner = &self.inner;
        if let Some(e) = inner.closed.borrow().clone().or_else(|| self.foreign()) {
            return Err(e);
        }
        let id = inner.next_id();
        let (tx, rx) = oneshot();
        inner.pending.borrow_mut().insert(id, tx);
        inner.send(&request, id);
        let timeout = inner.request_timeout;
        let answered = futures_lite::future::or(async { Some(rx.await) }, async {
            crate::io::sleep(timeout).await;
            None
        })
        .await;
        match answered {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(inner.closed_error()),
            None => {
                inner.pending.borrow_mut().remove(&id);
                Err(ClientError::Timeout {
                    addr: inner.addr.clone(),
                    timeout_ms: timeout.as_millis() as u64,
                })
            }
        }
    }

    /// Opens a subscription (see [`Subscription`]).
    pub async fn subscribe(&self, request: SubscribeRequest) -> Result<Subscription, ClientError> {
        let inner = &self.inner;
        if let Some(e) = inner.closed.borrow().clone().or_else(|| self.foreign()) {
            return Err(e);
        }
        let id = inner.next_id();
        let state = Rc::new(SubState {
            events: RefCell::new(VecDeque::new()),
            arrived: Event::new(),
            ended: Cell::new(false),
        });
        inner.subscriptions.borrow_mut().insert(id, state.clone());
        inner.send(&Request::Subscribe(request), id);
        Ok(Subscription {
            inner: inner.clone(),
            id,
            state,
        })
    }

    /// Closes the connection (requests in flight fail).
    pub fn close(&self) {
        self.inner.fail_all(ClientError::Connection {
            addr: self.inner.addr.clone(),
            message: "closed by the client".into(),
        });
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.close();
    }
}

/// Records pushed by the server: one event per credit granted.
pub struct Subscription {
    inner: Rc<Inner>,
    id: u32,
    state: Rc<SubState>,
}

impl Subscription {
    /// The next event; an error ends the subscription.
    pub async fn next(&self) -> Result<SubscribeEvent, ClientError> {
        loop {
            let seen = self.state.arrived.generation();
            if let Some(event) = self.state.events.borrow_mut().pop_front() {
                return event;
            }
            if self.state.ended.get() {
                return Err(self.inner.closed_error());
            }
            self.state.arrived.wait(seen).await;
        }
    }

    /// Lets the server push `credits` more events.
    pub fn grant(&self, credits: u32) {
        self.inner.send(
            &Request::SubscribeCredit(SubscribeCredit { credits }),
            self.id,
        );
    }

    /// Ends the subscription.
    pub fn cancel(&self) {
        self.inner
            .send(&Request::SubscribeCancel(SubscribeCancel {}), self.id);
    }
}

impl Inner {
    fn next_id(&self) -> u32 {
        let id = self.next_id.get();
        let next = id.wrapping_add(1);
        self.next_id.set(if next == CORRELATION_ID_CONNECTION {
            1
        } else {
            next
        });
        id
    }

    /// Queues the request's frame (its pieces stay together: one task pushes them at once).
    fn send(&self, request: &Request, id: u32) {
        self.outbox.borrow_mut().extend(request.encode_pieces(id));
        self.outbox_ready.notify();
    }

    fn closed_error(&self) -> ClientError {
        self.closed
            .borrow()
            .clone()
            .unwrap_or_else(|| ClientError::Connection {
                addr: self.addr.clone(),
                message: "connection closed".into(),
            })
    }

    /// Marks the connection closed and fails everything waiting on it.
    fn fail_all(&self, err: ClientError) {
        {
            let mut closed = self.closed.borrow_mut();
            if closed.is_some() {
                return;
            }
            *closed = Some(err.clone());
        }
        let pending: Vec<_> = self.pending.borrow_mut().drain().collect();
        for (_, tx) in pending {
            tx.send(Err(err.clone()));
        }
        let subs: Vec<_> = self.subscriptions.borrow_mut().drain().collect();
        for (_, sub) in subs {
            sub.ended.set(true);
            sub.arrived.notify();
        }
        self.outbox_ready.notify();
    }

    fn deliver(&self, frame: frame::Frame) {
        let id = frame.correlation_id;
        let response = match decode_response(&frame) {
            Ok(r) => r,
            Err(e) => {
                self.fail_all(ClientError::Protocol {
                    addr: self.addr.clone(),
                    message: e.to_string(),
                });
                return;
            }
        };
        if id == CORRELATION_ID_CONNECTION {
            // A connection-level error (connection limit, malformed frame): the server closes.
            let message = match &response {
                Response::Error(e) => ServerError::from_response(e).to_string(),
                other => format!("unexpected {:?} on correlation id 0", other.kind()),
            };
            self.fail_all(ClientError::Connection {
                addr: self.addr.clone(),
                message,
            });
            return;
        }
        let sub = self.subscriptions.borrow().get(&id).cloned();
        if let Some(sub) = sub {
            match response {
                Response::SubscribeEvent(event) => sub.events.borrow_mut().push_back(Ok(event)),
                Response::Error(e) => {
                    let err = ServerError::from_response(&e).into();
                    sub.events.borrow_mut().push_back(Err(err));
                    sub.ended.set(true);
                    self.subscriptions.borrow_mut().remove(&id);
                }
                Response::SubscribeCancel(_) => {
                    sub.ended.set(true);
                    self.subscriptions.borrow_mut().remove(&id);
                }
                _ => {}
            }
            sub.arrived.notify();
            return;
        }
        if let Some(tx) = self.pending.borrow_mut().remove(&id) {
            tx.send(Ok(response));
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(inner: Rc<Inner>, mut writer: W) {
    let mut buf = BytesMut::new();
    loop {
        let seen = inner.outbox_ready.generation();
        if inner.closed.borrow().is_some() {
            break;
        }
        let frames: Vec<Bytes> = inner.outbox.borrow_mut().drain(..).collect();
        if frames.is_empty() {
            inner.outbox_ready.wait(seen).await;
            continue;
        }
        if let Err(e) = crate::net::write::write_frames(&mut writer, &mut buf, &frames).await {
            inner.fail_all(ClientError::Connection {
                addr: inner.addr.clone(),
                message: format!("write: {e}"),
            });
            break;
        }
    }
    let _ = writer.close().await;
}

async fn read_loop<R: AsyncRead + Unpin>(
    inner: Rc<Inner>,
    mut reader: R,
    mut decoder: FrameDecoder,
) {
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    loop {
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => inner.deliver(frame),
                Ok(None) => break,
                Err(e) => {
                    inner.fail_all(ClientError::Protocol {
                        addr: inner.addr.clone(),
                        message: e.to_string(),
                    });
                    return;
                }
            }
        }
        if inner.closed.borrow().is_some() {
            return;
        }
        let read = futures_lite::future::or(async { Some(reader.read(&mut chunk).await) }, async {
            // Wake when the connection is closed locally.
            loop {
                let seen = inner.outbox_ready.generation();
                if inner.closed.borrow().is_some() {
                    return None;
                }
                inner.outbox_ready.wait(seen).await;
            }
        })
        .await;
        match read {
            Some(Ok(0)) => {
                inner.fail_all(ClientError::Connection {
                    addr: inner.addr.clone(),
                    message: "closed by the server".into(),
                });
                return;
            }
            Some(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Some(Err(e)) => {
                inner.fail_all(ClientError::Connection {
                    addr: inner.addr.clone(),
                    message: format!("read: {e}"),
                });
                return;
            }
            None => return,
        }
    }
}

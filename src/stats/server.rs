//! The stats HTTP endpoint: `GET /metrics`, `GET /stats`, `GET /health` on `--stats-listen`.
//!
//! hyper 1 serves HTTP/1.1 over a glommio `TcpStream` through [`HyperStream`], a small adapter
//! from futures-io's `AsyncRead`/`AsyncWrite` to hyper's `rt::Read`/`rt::Write`. hyper fits: its
//! HTTP/1 server needs no executor and no `Send`, so a connection is one `!Send` future run with
//! `glommio::spawn_local`, and it parses requests strictly (400 on garbage, 431 on oversized
//! headers) so this module writes no protocol code.
//!
//! One thing hyper cannot do here is time: its timers must be `Send + Sync` and glommio's are
//! per core. So hyper's own header timeout is off and each connection instead runs under one
//! deadline ([`STATS_CONNECTION_DEADLINE_MS`]) covering reading the request, gathering and
//! writing the response; keep-alive is off (every response says `connection: close`), so a
//! connection is one request and the deadline is a per-request timeout that a slow or idle
//! client cannot extend.
//!
//! Limits: at most [`STATS_CONNECTIONS_MAX`] connections at once (more are accepted and closed
//! at once, without a response: the endpoint is for a scraper and an operator, not a crowd);
//! request head at most [`STATS_REQUEST_BYTES_MAX`] and [`STATS_HEADERS_MAX`] headers (a
//! request body is never read); gathering the cores' snapshots at most
//! [`STATS_GATHER_TIMEOUT_MS`] (then 503: a core that does not answer is itself news).
//!
//! Routes: `/metrics` (Prometheus text 0.0.4, see [`super::prometheus`]), `/stats` (JSON, see
//! [`super::json`]), `/health` (200 `{"status":"ok",…}` when the node is ready, else 503
//! `{"status":"unavailable",…}`). Any other path is 404; a known path with a method other than
//! GET is 405 with `allow: GET`.
//!
//! Cost: the merge and rendering run on the core serving the endpoint, once per request (a
//! histogram merge is a pass over its counts: well under a millisecond for a few cores).

use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::net::{TcpListener, TcpStream};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};

use super::core_stats::CoreSnapshot;
use super::json::render_json;
use super::node_stats::merge;
use super::prometheus::{self, render_prometheus};

/// Stats connections served at once.
pub const STATS_CONNECTIONS_MAX: usize = 16;
/// Time a connection may take, from accept to the last byte of the response, in milliseconds.
pub const STATS_CONNECTION_DEADLINE_MS: u64 = 10_000;
/// Time the cores may take to send their snapshots, in milliseconds.
pub const STATS_GATHER_TIMEOUT_MS: u64 = 5_000;
/// The largest request head (request line and headers) read, in bytes.
pub const STATS_REQUEST_BYTES_MAX: usize = 16 * 1024;
/// The smallest [`StatsServerConfig::request_bytes_max`] hyper accepts, in bytes.
pub const STATS_REQUEST_BYTES_MIN: usize = 8 * 1024;
/// Headers a request may carry.
pub const STATS_HEADERS_MAX: usize = 32;
/// Pause after a failed accept (e.g. out of file descriptors), so the loop does not spin.
const ACCEPT_RETRY_MS: u64 = 100;
/// Bytes read from the socket per read call.
const READ_CHUNK_BYTES: usize = 4096;

/// Whether the node is ready to serve, as `/health` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    pub ready: bool,
    /// A short explanation, shown in the response either way.
    pub message: String,
}

impl Health {
    /// Ready to serve.
    pub fn ready() -> Health {
        Health {
            ready: true,
            message: "ready".to_string(),
        }
    }

    /// Not ready, because of `why` (e.g. "starting", "shutting down").
    pub fn not_ready(why: impl Into<String>) -> Health {
        Health {
            ready: false,
            message: why.into(),
        }
    }
}

/// Where the endpoint gets its numbers: implemented by the node, which knows its cores.
pub trait StatsSource {
    /// Every core's [`CoreSnapshot`], taken now (typically: ask each core over its channel to
    /// run `CoreStats::snapshot` and send the result back; leave out a core that cannot
    /// answer). Called once per `/metrics` or `/stats` request, on the core running
    /// [`serve_stats`]; if it takes longer than [`StatsServerConfig::gather_timeout_ms`] the
    /// request gets a 503. Implement it as `async fn gather(&self) -> Vec<CoreSnapshot>`.
    fn gather(&self) -> impl Future<Output = Vec<CoreSnapshot>>;

    /// Whether the node is ready, for `/health`. Must not block.
    fn health(&self) -> Health;
}

/// Limits of the endpoint; [`Default`] gives the `STATS_*` constants.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct StatsServerConfig {
    pub connections_max: usize,
    pub connection_deadline_ms: u64,
    pub gather_timeout_ms: u64,
    /// At least [`STATS_REQUEST_BYTES_MIN`].
    pub request_bytes_max: usize,
}

impl Default for StatsServerConfig {
    fn default() -> StatsServerConfig {
        StatsServerConfig {
            connections_max: STATS_CONNECTIONS_MAX,
            connection_deadline_ms: STATS_CONNECTION_DEADLINE_MS,
            gather_timeout_ms: STATS_GATHER_TIMEOUT_MS,
            request_bytes_max: STATS_REQUEST_BYTES_MAX,
        }
    }
}

/// Serves the stats endpoint on `listener` with the default limits, until the returned future
/// is dropped (cancel the task that runs it on shutdown). Runs on the current core; connection
/// tasks are spawned there too.
pub async fn serve_stats<S: StatsSource + 'static>(listener: TcpListener, source: Rc<S>) {
    serve_stats_with(listener, source, StatsServerConfig::default()).await
}

/// [`serve_stats`] with explicit limits.
pub async fn serve_stats_with<S: StatsSource + 'static>(
    listener: TcpListener,
    source: Rc<S>,
    config: StatsServerConfig,
) {
    assert!(
        config.connections_max >= 1
            && config.connection_deadline_ms >= 1
            && config.gather_timeout_ms >= 1
            && config.request_bytes_max >= STATS_REQUEST_BYTES_MIN,
        "invalid stats server limits: {config:?}"
    );
    let open = Rc::new(Cell::new(0usize));
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(e) => {
                log::warn!("stats endpoint: accept failed: {e}");
                crate::io::sleep(Duration::from_millis(ACCEPT_RETRY_MS)).await;
                continue;
            }
        };
        if open.get() >= config.connections_max {
            log::debug!(
                "stats endpoint: {} connections open, closing a new one",
                open.get()
            );
            drop(stream);
            continue;
        }
        let slot = ConnectionSlot::take(&open);
        let source = source.clone();
        glommio::spawn_local(async move {
            let _slot = slot;
            serve_connection(stream, source, config).await;
        })
        .detach();
    }
}

/// Counts a connection as open for as long as it lives, even if its task is cancelled.
struct ConnectionSlot(Rc<Cell<usize>>);

impl ConnectionSlot {
    fn take(open: &Rc<Cell<usize>>) -> ConnectionSlot {
        open.set(open.get() + 1);
        ConnectionSlot(open.clone())
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

async fn serve_connection<S: StatsSource + 'static>(
    stream: TcpStream,
    source: Rc<S>,
    config: StatsServerConfig,
) {
    let service = service_fn(move |request: Request<Incoming>| {
        let source = source.clone();
        async move { Ok::<_, Infallible>(respond(&*source, &request, &config).await) }
    });
    let connection = http1::Builder::new()
        .keep_alive(false)
        .header_read_timeout(None::<Duration>)
        .max_buf_size(config.request_bytes_max)
        .max_headers(STATS_HEADERS_MAX)
        .serve_connection(HyperStream::new(stream), service);
    let deadline = Duration::from_millis(config.connection_deadline_ms);
    let outcome = futures_lite::future::or(async { Some(connection.await) }, async {
        crate::io::sleep(deadline).await;
        None
    })
    .await;
    match outcome {
        Some(Ok(())) => {}
        // A client that sends garbage or hangs up early: hyper already answered or there is no
        // one to answer. Not the node's problem, so not a warning.
        Some(Err(e)) => log::debug!("stats endpoint: connection ended: {e}"),
        None => log::debug!("stats endpoint: connection exceeded its {deadline:?} deadline"),
    }
}

enum Route {
    Metrics,
    Stats,
    Health,
}

async fn respond<S: StatsSource>(
    source: &S,
    request: &Request<Incoming>,
    config: &StatsServerConfig,
) -> Response<Full<Bytes>> {
    let route = match request.uri().path() {
        "/metrics" => Route::Metrics,
        "/stats" => Route::Stats,
        "/health" => Route::Health,
        _ => {
            return text(
                StatusCode::NOT_FOUND,
                "not found: try /metrics, /stats or /health\n",
            );
        }
    };
    if request.method() != Method::GET {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET is allowed\n");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return response;
    }
    match route {
        Route::Health => {
            let health = source.health();
            let (status, word) = if health.ready {
                (StatusCode::OK, "ok")
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            };
            let body = serde_json::json!({ "status": word, "message": health.message });
            with_body(status, "application/json", format!("{body}\n"))
        }
        Route::Metrics | Route::Stats => {
            let snapshots = match gather(source, config.gather_timeout_ms).await {
                Some(snapshots) => snapshots,
                None => {
                    let why = format!(
                        "the cores did not send their stats within {} ms\n",
                        config.gather_timeout_ms
                    );
                    return text(StatusCode::SERVICE_UNAVAILABLE, why);
                }
            };
            let mut node = merge(&snapshots);
            node.file_removals = crate::io::background_removal_stats();
            match route {
                Route::Metrics => with_body(
                    StatusCode::OK,
                    prometheus::CONTENT_TYPE,
                    render_prometheus(&node),
                ),
                _ => with_body(StatusCode::OK, "application/json", render_json(&node)),
            }
        }
    }
}

/// The cores' snapshots, or `None` if they take longer than `timeout_ms`.
async fn gather<S: StatsSource>(source: &S, timeout_ms: u64) -> Option<Vec<CoreSnapshot>> {
    futures_lite::future::or(async { Some(source.gather().await) }, async {
        crate::io::sleep(Duration::from_millis(timeout_ms)).await;
        None
    })
    .await
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    with_body(status, "text/plain; charset=utf-8", body.into())
}

fn with_body(
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Every answer is computed now; a cached copy would be a lie.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A glommio `TcpStream` as hyper's I/O: futures-io `AsyncRead`/`AsyncWrite` mapped onto
/// `hyper::rt::Read`/`Write`. Reads go through a small buffer and `ReadBufCursor::put_slice`:
/// one extra copy of a request head, which keeps `unsafe` out of this module.
pub struct HyperStream {
    stream: TcpStream,
    scratch: Box<[u8]>,
}

impl HyperStream {
    pub fn new(stream: TcpStream) -> HyperStream {
        HyperStream {
            stream,
            scratch: vec![0u8; READ_CHUNK_BYTES].into_boxed_slice(),
        }
    }
}

impl hyper::rt::Read for HyperStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let want = buf.remaining().min(this.scratch.len());
        match Pin::new(&mut this.stream).poll_read(cx, &mut this.scratch[..want]) {
            Poll::Ready(Ok(n)) => {
                buf.put_slice(&this.scratch[..n]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl hyper::rt::Write for HyperStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_close(cx)
    }
}

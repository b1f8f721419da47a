//! The stats endpoint over real HTTP: `serve_stats` on a glommio executor bound to
//! 127.0.0.1:0, a fake `StatsSource` holding two cores' snapshots, and plain
//! `std::net::TcpStream` clients on the test thread.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use corelog::Partition;
use corelog::stats::{
    CoreSnapshot, CoreStats, Health, Op, StatsServerConfig, StatsSource, serve_stats_with,
};
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};

/// How long a test client waits for any answer.
const CLIENT_TIMEOUT_MS: u64 = 5_000;

/// Two cores' worth of recorded stats, served from memory.
struct FakeSource {
    snapshots: Vec<CoreSnapshot>,
    ready: Arc<AtomicBool>,
    /// When set, `gather` never finishes (a core that does not answer).
    hang: bool,
}

impl StatsSource for FakeSource {
    async fn gather(&self) -> Vec<CoreSnapshot> {
        if self.hang {
            std::future::pending::<()>().await;
        }
        self.snapshots.clone()
    }

    fn health(&self) -> Health {
        if self.ready.load(Ordering::Relaxed) {
            Health::ready()
        } else {
            Health::not_ready("starting")
        }
    }
}

fn recorded_snapshots() -> Vec<CoreSnapshot> {
    let a = CoreStats::new(0);
    let b = CoreStats::new(1);
    a.add_partition(Partition(0));
    b.add_partition(Partition(1));
    for v in 1..=500 {
        a.record_latency(Op::Produce, Some(Partition(0)), v);
        b.record_latency(Op::Produce, Some(Partition(1)), v + 500);
    }
    a.record_latency(Op::Fsync, Some(Partition(0)), 80);
    b.record_latency(Op::Metadata, None, 15);
    a.record_in(Partition(0), 4, 400);
    b.record_out(Partition(1), 2, 64);
    b.record_error("not_leader");
    a.connection_opened();
    b.bad_preamble();
    vec![a.snapshot(), b.snapshot()]
}

/// A stats server on its own thread and executor; stops when dropped.
struct Server {
    addr: SocketAddr,
    ready: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(config: StatsServerConfig, hang: bool) -> Server {
        let ready = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let thread = {
            let ready = ready.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                corelog::io::ensure_memlock(corelog::io::memlock_bytes_wanted(1, 1 << 20))
                    .expect("locked-memory limit");
                let ex = LocalExecutorBuilder::new(Placement::Unbound)
                    .io_memory(1 << 20)
                    .make()
                    .expect("glommio executor");
                ex.run(async move {
                    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
                    addr_tx
                        .send(listener.local_addr().expect("local addr"))
                        .expect("send addr");
                    let source = Rc::new(FakeSource {
                        snapshots: recorded_snapshots(),
                        ready,
                        hang,
                    });
                    let serve = serve_stats_with(listener, source, config);
                    let stopped = async {
                        while !stop.load(Ordering::Relaxed) {
                            glommio::timer::sleep(Duration::from_millis(10)).await;
                        }
                    };
                    futures_lite::future::or(serve, stopped).await;
                });
            })
        };
        let addr = addr_rx
            .recv_timeout(Duration::from_millis(CLIENT_TIMEOUT_MS))
            .expect("server started");
        Server {
            addr,
            ready,
            stop,
            thread: Some(thread),
        }
    }

    fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(self.addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_millis(CLIENT_TIMEOUT_MS)))
            .expect("read timeout");
        stream
    }

    /// Sends `request` verbatim and reads the whole answer (the server closes after one).
    fn raw(&self, request: &[u8]) -> Reply {
        let mut stream = self.connect();
        stream.write_all(request).expect("write request");
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes).expect("read response");
        Reply::parse(&bytes)
    }

    fn request(&self, method: &str, path: &str) -> Reply {
        let request = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        self.raw(request.as_bytes())
    }

    fn get(&self, path: &str) -> Reply {
        self.request("GET", path)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn parse(bytes: &[u8]) -> Reply {
        let text = String::from_utf8(bytes.to_vec()).expect("UTF-8 response");
        let (head, body) = text.split_once("\r\n\r\n").expect("response head");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().expect("status line");
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line}"));
        let headers = lines
            .map(|l| {
                let (k, v) = l.split_once(':').expect("header line");
                (k.trim().to_ascii_lowercase(), v.trim().to_string())
            })
            .collect();
        Reply {
            status,
            headers,
            body: body.to_string(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[test]
fn metrics_is_prometheus_text_with_histograms_and_counters() {
    let server = Server::start(StatsServerConfig::default(), false);
    let reply = server.get("/metrics");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        reply
            .header("content-type")
            .is_some_and(|v| v.starts_with("text/plain; version=0.0.4")),
        "{reply:?}"
    );
    assert_eq!(reply.header("connection"), Some("close"));
    let content_length: usize = reply
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .expect("content-length");
    assert_eq!(content_length, reply.body.len());
    let body = &reply.body;
    assert!(body.contains("# TYPE corelog_op_latency_seconds histogram\n"));
    assert!(body.contains(
        "corelog_op_latency_seconds_bucket{op=\"produce\",partition=\"0\",le=\"+Inf\"} 500\n"
    ));
    assert!(body.contains(
        "corelog_op_latency_seconds_bucket{op=\"produce\",partition=\"1\",le=\"0.001\"} 500\n"
    ));
    assert!(body.contains("corelog_op_latency_seconds_count{op=\"metadata\"} 1\n"));
    assert!(body.contains("# TYPE corelog_bytes_in_total counter\n"));
    assert!(body.contains("corelog_bytes_in_total{partition=\"0\"} 400\n"));
    assert!(body.contains("corelog_errors_total{kind=\"not_leader\"} 1\n"));
    assert!(body.contains("corelog_bad_preambles_total{core=\"1\"} 1\n"));
}

#[test]
fn stats_is_json_with_merged_and_per_partition_percentiles() {
    let server = Server::start(StatsServerConfig::default(), false);
    let reply = server.get("/stats");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let doc: serde_json::Value = serde_json::from_str(&reply.body).expect("valid JSON");
    let produce = &doc["ops"]["produce"];
    for key in ["count", "p50", "p90", "p99", "p999", "p9999", "max", "mean"] {
        assert!(produce["merged"].get(key).is_some(), "merged lacks {key}");
        assert!(
            produce["partitions"]["0"].get(key).is_some(),
            "p0 lacks {key}"
        );
    }
    assert_eq!(produce["merged"]["count"], 1000);
    assert_eq!(produce["merged"]["p50"], 500);
    assert_eq!(produce["merged"]["p99"], 990);
    assert_eq!(produce["merged"]["max"], 1000);
    assert_eq!(produce["partitions"]["1"]["p50"], 750);
    assert_eq!(doc["ops"]["fsync"]["merged"]["count"], 1);
    assert_eq!(doc["partitions"]["0"]["bytes_in"], 400);
    assert_eq!(doc["partitions"]["1"]["records_out"], 2);
    assert_eq!(doc["errors"]["not_leader"], 1);
    assert_eq!(doc["connections"]["open"], 1);
    assert_eq!(doc["bad_preambles"], 1);
    assert_eq!(doc["cores"].as_array().map(Vec::len), Some(2));
}

#[test]
fn health_is_200_when_ready_and_503_when_not() {
    let server = Server::start(StatsServerConfig::default(), false);
    let reply = server.get("/health");
    assert_eq!(reply.status, 200, "{reply:?}");
    let doc: serde_json::Value = serde_json::from_str(&reply.body).expect("valid JSON");
    assert_eq!(doc["status"], "ok");

    server.ready.store(false, Ordering::Relaxed);
    let reply = server.get("/health");
    assert_eq!(reply.status, 503, "{reply:?}");
    let doc: serde_json::Value = serde_json::from_str(&reply.body).expect("valid JSON");
    assert_eq!(doc["status"], "unavailable");
    assert_eq!(doc["message"], "starting");
}

#[test]
fn unknown_paths_are_404_and_other_methods_405() {
    let server = Server::start(StatsServerConfig::default(), false);
    assert_eq!(server.get("/").status, 404);
    assert_eq!(server.get("/metrics/extra").status, 404);
    let reply = server.request("POST", "/metrics");
    assert_eq!(reply.status, 405, "{reply:?}");
    assert_eq!(reply.header("allow"), Some("GET"));
    assert_eq!(server.request("DELETE", "/stats").status, 405);
    assert_eq!(server.request("PUT", "/health").status, 405);
    // A query string does not change the route.
    assert_eq!(server.get("/health?verbose=1").status, 200);
}

#[test]
fn garbage_and_oversized_requests_are_refused_and_the_server_keeps_serving() {
    let server = Server::start(StatsServerConfig::default(), false);
    let reply = server.raw(b"\x16\x03\x01 this is not http\r\n\r\n");
    assert_eq!(reply.status, 400, "{reply:?}");

    let huge = format!(
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: {}\r\n\r\n",
        "a".repeat(corelog::stats::STATS_REQUEST_BYTES_MAX * 2)
    );
    let mut stream = server.connect();
    // The server may close before reading it all; a failed write is part of the refusal.
    let _ = stream.write_all(huge.as_bytes());
    let mut bytes = Vec::new();
    let _ = stream.read_to_end(&mut bytes);
    if !bytes.is_empty() {
        assert_eq!(Reply::parse(&bytes).status, 431);
    }

    assert_eq!(server.get("/health").status, 200);
}

#[test]
fn a_source_that_does_not_answer_gives_503_within_the_gather_timeout() {
    let config = StatsServerConfig {
        gather_timeout_ms: 200,
        ..StatsServerConfig::default()
    };
    let server = Server::start(config, true);
    let started = Instant::now();
    let reply = server.get("/stats");
    assert_eq!(reply.status, 503, "{reply:?}");
    assert!(started.elapsed() < Duration::from_millis(CLIENT_TIMEOUT_MS));
    assert_eq!(server.get("/health").status, 200, "health needs no gather");
}

#[test]
fn an_idle_connection_is_closed_at_the_deadline() {
    let config = StatsServerConfig {
        connection_deadline_ms: 200,
        ..StatsServerConfig::default()
    };
    let server = Server::start(config, false);
    let mut stream = server.connect();
    // Half a request, then silence: a slow client must not hold the connection.
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\n")
        .expect("write");
    let started = Instant::now();
    let mut bytes = Vec::new();
    let read = stream.read_to_end(&mut bytes);
    assert!(
        read.is_ok(),
        "closed by the server, not by our timeout: {read:?}"
    );
    assert!(bytes.is_empty(), "no response to half a request");
    assert!(started.elapsed() < Duration::from_millis(CLIENT_TIMEOUT_MS));
}

#[test]
fn connections_beyond_the_limit_are_closed_and_slots_free_up() {
    let config = StatsServerConfig {
        connections_max: 1,
        // Long enough that the refused connection below surely comes while it is held.
        connection_deadline_ms: 2_000,
        ..StatsServerConfig::default()
    };
    let server = Server::start(config, false);
    // The first connection sends nothing and holds the only slot until its deadline.
    let holder = server.connect();
    std::thread::sleep(Duration::from_millis(50));
    let mut refused = server.connect();
    let mut bytes = Vec::new();
    let _ = refused.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    let read = refused.read_to_end(&mut bytes);
    assert!(
        read.is_err() || bytes.is_empty(),
        "over the limit: closed without an answer, got {bytes:?}"
    );
    // Once the holder's deadline passes, its slot is free again (until then each attempt is
    // closed unanswered).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut stream = server.connect();
        let _ = stream.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut bytes = Vec::new();
        if stream.read_to_end(&mut bytes).is_ok() && !bytes.is_empty() {
            assert_eq!(Reply::parse(&bytes).status, 200);
            break;
        }
        assert!(Instant::now() < deadline, "the held slot never freed up");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(holder);
}

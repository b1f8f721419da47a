//! Real `corelog` processes for end-to-end tests, and the clients that talk to them.
//!
//! - [`NodeProcess`]: `corelog serve` (the binary cargo built for this test run) on loopback,
//!   port 0, with a data directory under `target/`. It is killed with SIGKILL when dropped, so
//!   a failing test leaves no process behind; on a failing test its stderr is printed.
//!   [`TestNode`] is one in its own test directory, removed after a passing test.
//! - The library [`Client`] on a glommio executor ([`super::run`]) for well-behaved traffic,
//!   with [`produce_values`], [`verify_acked`] and [`assert_still_serves`] to show that nothing
//!   acknowledged was lost.
//! - [`RawConn`]: a blocking TCP + preamble + rustls connection (`StreamOwned`) that writes
//!   arbitrary bytes and decodes response frames with the crate's own `FrameDecoder`, for
//!   byte-level tests.
//! - [`http_get`] for the stats endpoint, [`run_cli`] for the client commands, and
//!   [`wait_until_port_reusable`] for the one test on the fixed default ports.
//!
//! Every wait here is bounded in time, every loop in count.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use corelog::client::{Client, ClientConfig};
use corelog::net::errors::ServerError;
use corelog::net::frame::{self, Frame, FrameDecoder, Request, Response};
use corelog::net::preamble::{ConnKind, Preamble};
use rustls::{ClientConnection, RootCertStore, StreamOwned};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// How long a node may take to print its "serving" line.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node may take to exit after a signal.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(20);
/// Socket read/write timeout of raw connections and HTTP requests: a test never hangs on I/O.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client command may run.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(30);
/// The line `corelog serve` prints once it serves.
pub const SERVING_PREFIX: &str = "corelog: serving ";
/// Consume requests [`verify_acked`] may send per partition before giving up.
const VERIFY_READS_MAX: usize = 10_000;

/// The `corelog` binary cargo built for this test run.
pub fn corelog_bin() -> &'static str {
    env!("CARGO_BIN_EXE_corelog")
}

/// The flags every test node gets, unless `extra` names them itself.
fn standard_args(data_dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["serve".to_string()];
    let defaults = [
        ("--data-dir", data_dir.display().to_string()),
        ("--listen", "127.0.0.1:0".to_string()),
        ("--stats-listen", "127.0.0.1:0".to_string()),
        ("--segment-bytes", "1048576".to_string()),
    ];
    for (flag, value) in defaults {
        if !extra.contains(&flag) {
            args.push(flag.to_string());
            args.push(value);
        }
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// A `corelog serve` process that has printed its serving line.
pub struct NodeProcess {
    child: Child,
    status: Option<ExitStatus>,
    stderr: Arc<Mutex<String>>,
    pub listen: SocketAddr,
    pub stats: SocketAddr,
    pub tls_dir: PathBuf,
    pub partitions: u32,
    pub cores: usize,
}

/// A node that exited before it served.
#[derive(Debug)]
pub struct StartFailed {
    pub status: Option<ExitStatus>,
    pub stderr: String,
}

impl NodeProcess {
    /// Starts `corelog serve --data-dir DATA_DIR` on loopback port 0 with 1 MiB segments, plus
    /// `extra`; panics (with the node's stderr) if it does not come up.
    pub fn start(data_dir: &Path, extra: &[&str]) -> NodeProcess {
        match NodeProcess::try_start(data_dir, extra) {
            Ok(node) => node,
            Err(e) => panic!(
                "corelog serve {extra:?} did not start ({:?}):\n{}",
                e.status, e.stderr
            ),
        }
    }

    /// Like [`NodeProcess::start`], but a node that exits instead of serving is an `Err`.
    pub fn try_start(data_dir: &Path, extra: &[&str]) -> Result<NodeProcess, StartFailed> {
        let mut cmd = Command::new(corelog_bin());
        cmd.args(standard_args(data_dir, extra));
        NodeProcess::spawn(cmd)
    }

    /// Spawns `cmd` (a `corelog serve` command line) and waits for its serving line.
    pub fn spawn(mut cmd: Command) -> Result<NodeProcess, StartFailed> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env("RUST_LOG", "warn");
        let mut child = cmd.spawn().expect("spawn corelog serve");
        let pipe = child.stderr.take().expect("stderr is piped");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (line_tx, line_rx) = mpsc::channel::<String>();
        {
            let stderr = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if line.starts_with(SERVING_PREFIX) {
                        let _ = line_tx.send(line.clone());
                    }
                    let mut all = stderr.lock().unwrap_or_else(|e| e.into_inner());
                    all.push_str(&line);
                    all.push('\n');
                }
            });
        }
        let line = match line_rx.recv_timeout(START_TIMEOUT) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // stderr closed: the process is exiting.
                let status = wait_timeout(&mut child, EXIT_TIMEOUT);
                if status.is_none() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                let stderr = stderr.lock().unwrap_or_else(|e| e.into_inner()).clone();
                return Err(StartFailed { status, stderr });
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = stderr.lock().unwrap_or_else(|e| e.into_inner()).clone();
                panic!("no serving line within {START_TIMEOUT:?}:\n{stderr}");
            }
        };
        let serving = parse_serving_line(&line)
            .unwrap_or_else(|| panic!("cannot parse the serving line {line:?}"));
        Ok(NodeProcess {
            child,
            status: None,
            stderr,
            listen: serving.listen,
            stats: serving.stats,
            tls_dir: serving.tls_dir,
            partitions: serving.partitions,
            cores: serving.cores,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the node printed on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// kill -9, and reap it.
    pub fn kill9(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }

    /// Sends SIGTERM without waiting.
    pub fn send_sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", self.pid());
    }

    /// Waits for the process to exit; panics after [`EXIT_TIMEOUT`] (the process is then killed).
    pub fn wait_exit(&mut self) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        match wait_timeout(&mut self.child, EXIT_TIMEOUT) {
            Some(status) => {
                self.status = Some(status);
                status
            }
            None => {
                self.kill9();
                panic!(
                    "node {} did not exit within {EXIT_TIMEOUT:?}:\n{}",
                    self.pid(),
                    self.stderr()
                );
            }
        }
    }

    /// SIGTERM, then wait for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        if self.status.is_none() {
            self.send_sigterm();
        }
        self.wait_exit()
    }

    /// The node's resident set size, from `/proc/PID/status`.
    pub fn rss_bytes(&self) -> u64 {
        rss_bytes_of(self.pid()).expect("VmRSS in /proc/PID/status")
    }

    /// A client configuration presenting certificate `name` from the node's TLS directory.
    pub fn client_config(&self, name: &str) -> ClientConfig {
        ClientConfig::new(self.listen, &self.tls_dir, name).expect("client config")
    }

    /// `GET path` on the stats endpoint.
    pub fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.stats, path)
    }

    /// The `/stats` JSON document.
    pub fn stats_json(&self) -> serde_json::Value {
        let (status, body) = self.http_get("/stats");
        assert_eq!(status, 200, "/stats: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/stats is not JSON ({e}): {body}"))
    }

    /// A raw connection to `core` with the node's dev `client` certificate.
    pub fn raw(&self, core: u16) -> RawConn {
        let tls = corelog::net::tls::client_config(&self.tls_dir, "client").expect("tls config");
        RawConn::open(self.listen, core, tls).expect("raw connection")
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("--- stderr of node {} ---\n{}", self.pid(), self.stderr());
        }
    }
}

struct Serving {
    partitions: u32,
    listen: SocketAddr,
    cores: usize,
    stats: SocketAddr,
    tls_dir: PathBuf,
}

/// `corelog: serving N partitions on ADDR (cores [..]); stats on http://ADDR; TLS in DIR`.
fn parse_serving_line(line: &str) -> Option<Serving> {
    let rest = line.strip_prefix(SERVING_PREFIX)?;
    let (partitions, rest) = rest.split_once(" partitions on ")?;
    let (listen, rest) = rest.split_once(" (cores [")?;
    let (cores, rest) = rest.split_once("]); stats on http://")?;
    let (stats, tls_dir) = rest.split_once("; TLS in ")?;
    Some(Serving {
        partitions: partitions.parse().ok()?,
        listen: listen.parse().ok()?,
        cores: cores.split(',').filter(|c| !c.trim().is_empty()).count(),
        stats: stats.parse().ok()?,
        tls_dir: PathBuf::from(tls_dir),
    })
}

/// The resident set size of process `pid`, from `/proc/PID/status`.
pub fn rss_bytes_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Polls `child` for an exit until `timeout`.
fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `corelog ARGS` (a client command) in `cwd` with `stdin`, killing it after
/// [`CLI_TIMEOUT`].
pub fn run_cli(args: &[&str], cwd: Option<&Path>, stdin: &str) -> Output {
    let mut cmd = Command::new(corelog_bin());
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let mut child = cmd.spawn().expect("spawn corelog");
    let mut input = child.stdin.take().expect("stdin is piped");
    let stdin = stdin.to_string();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(stdin.as_bytes());
    });
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout is piped")));
    let err = drain(Box::new(child.stderr.take().expect("stderr is piped")));
    let status = match wait_timeout(&mut child, CLI_TIMEOUT) {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("corelog {args:?} did not finish within {CLI_TIMEOUT:?}");
        }
    };
    let _ = writer.join();
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// `GET path` over plain HTTP/1.1: the status and the body (read by its `Content-Length`, or
/// its chunks, or to EOF).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect to stats");
    stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    stream.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("send HTTP request");
    let mut response = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    let mut head_end = None;
    for _ in 0..100_000 {
        if head_end.is_none() {
            head_end = response
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|p| p + 4);
        }
        if let Some(end) = head_end {
            let head = String::from_utf8_lossy(&response[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            let complete = match length {
                Some(length) => response.len() >= end + length,
                None => response.ends_with(b"0\r\n\r\n"),
            };
            if complete {
                break;
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("reading the HTTP response to GET {path}: {e}"),
        }
    }
    drop(stream);
    let text = String::from_utf8(response).expect("HTTP response is UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP header end");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {head:?}"));
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    for _ in 0..1_000_000 {
        let Some((size, rest)) = body.split_once("\r\n") else {
            break;
        };
        let size = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

/// Fails at once if something listens on local TCP `port` (tests that need the default
/// ports call it). TIME_WAIT left by an earlier run is fine: the node binds over it
/// (`serve_restarts_on_the_same_fixed_ports_right_after_a_graceful_shutdown`).
pub fn wait_until_port_reusable(port: u16) {
    const LISTEN: &str = "0A";
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let listening = table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local_port = fields
            .get(1)
            .and_then(|f| f.rsplit(':').next())
            .and_then(|p| u16::from_str_radix(p, 16).ok());
        local_port == Some(port) && fields.get(3) == Some(&LISTEN)
    });
    assert!(!listening, "something else listens on port {port}");
}

/// A loopback port that was free a moment ago (for tests that need fixed ports: a cluster's
/// nodes, which restart on the same address).
///
/// Taken from below the kernel's ephemeral range, not by binding port 0: a port from that
/// range can be handed to an outgoing connection (of this test, or of any other running at
/// the same time) between this call and the node binding it, and the node would then fail to
/// start. Each process walks its own sequence from a random start, so two calls in one test
/// binary never return the same port.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOWEST: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let span = ephemeral_low.saturating_sub(LOWEST);
    if span < 1_000 {
        return std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
    }
    let seed = std::process::id().wrapping_mul(7_919)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
    let _ = NEXT.compare_exchange(0, seed | 1, Ordering::Relaxed, Ordering::Relaxed);
    for _ in 0..span {
        let port = (LOWEST + NEXT.fetch_add(1, Ordering::Relaxed) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {LOWEST}..{ephemeral_low}");
}

/// One acknowledged record: where the node put it and what it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acked {
    pub partition: u32,
    pub offset: u64,
    pub value: Bytes,
}

/// Produces each value as its own batch, in order, and returns what was acknowledged.
pub async fn produce_values(client: &Client, partition: u32, values: &[Bytes]) -> Vec<Acked> {
    let mut acked = Vec::with_capacity(values.len());
    for value in values {
        let r = client
            .produce(partition, vec![value.clone()])
            .await
            .unwrap_or_else(|e| panic!("produce to partition {partition}: {e}"));
        assert_eq!(r.record_count, 1);
        acked.push(Acked {
            partition,
            offset: r.base_offset,
            value: value.clone(),
        });
    }
    acked
}

/// Reads partition `partition` from offset 0 to its high watermark.
pub async fn read_partition(client: &Client, partition: u32) -> BTreeMap<u64, Bytes> {
    let mut records = BTreeMap::new();
    let mut next = 0;
    for _ in 0..VERIFY_READS_MAX {
        let resp = client
            .consume(partition, next, 1 << 20, Duration::ZERO)
            .await
            .unwrap_or_else(|e| panic!("consume partition {partition} at {next}: {e}"));
        for r in &resp.records {
            assert_eq!(r.offset, next, "partition {partition}: offsets are dense");
            records.insert(r.offset, r.value.clone());
            next = r.offset + 1;
        }
        if next >= resp.high_watermark {
            assert_eq!(
                next, resp.high_watermark,
                "partition {partition}: read past the end"
            );
            return records;
        }
        assert!(
            !resp.records.is_empty(),
            "partition {partition}: no records at {next} below the high watermark"
        );
    }
    panic!("partition {partition}: more than {VERIFY_READS_MAX} reads");
}

/// Every acknowledged record reads back byte-identical at its offset.
pub async fn verify_acked(client: &Client, acked: &[Acked]) {
    let mut partitions: Vec<u32> = acked.iter().map(|a| a.partition).collect();
    partitions.sort_unstable();
    partitions.dedup();
    for p in partitions {
        let stored = read_partition(client, p).await;
        for a in acked.iter().filter(|a| a.partition == p) {
            let got = stored.get(&a.offset).unwrap_or_else(|| {
                panic!(
                    "acknowledged record at partition {p} offset {} is missing ({} records stored)",
                    a.offset,
                    stored.len()
                )
            });
            assert_eq!(got, &a.value, "partition {p} offset {}", a.offset);
        }
    }
}

/// The node still serves a well-behaved client: a new record on every partition is
/// acknowledged, and every record acknowledged so far (the new ones included) reads back
/// byte-identical. Adds the new records to `acked`.
pub fn assert_still_serves(node: &NodeProcess, acked: &mut Vec<Acked>, tag: &str) {
    let config = node.client_config("client");
    let partitions = node.partitions;
    let tag = tag.to_string();
    let before = std::mem::take(acked);
    *acked = super::run(|| async move {
        let client = Client::connect(config)
            .await
            .expect("a good client connects");
        let mut all = before;
        for p in 0..partitions {
            let value = Bytes::from(format!("{tag}-still-serving-p{p}"));
            all.extend(produce_values(&client, p, &[value]).await);
        }
        verify_acked(&client, &all).await;
        all
    });
}

/// Produces `count` records to every partition of the node with the library client.
pub fn seed_records(node: &NodeProcess, count: usize, tag: &str) -> Vec<Acked> {
    let config = node.client_config("client");
    let partitions = node.partitions;
    let tag = tag.to_string();
    super::run(|| async move {
        let client = Client::connect(config).await.expect("connect");
        let mut acked = Vec::new();
        for p in 0..partitions {
            let values: Vec<Bytes> = (0..count)
                .map(|i| Bytes::from(format!("{tag}-p{p}-{i}")))
                .collect();
            acked.extend(produce_values(&client, p, &values).await);
        }
        acked
    })
}

/// A rustls client configuration trusting `ca_pem`, presenting `cert_and_key` if given.
pub fn tls_config(
    ca_pem: &Path,
    cert_and_key: Option<(&Path, &Path)>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_pem).expect("read CA") {
        roots.add(cert.expect("CA PEM")).expect("add CA");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("TLS 1.3")
    .with_root_certificates(roots);
    let config = match cert_and_key {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .expect("read certificate")
                .map(|c| c.expect("certificate PEM"))
                .collect();
            let key = PrivateKeyDer::from_pem_file(key).expect("read key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client certificate")
        }
    };
    Arc::new(config)
}

/// A TCP connection to `addr` with [`IO_TIMEOUT`] on reads and writes.
pub fn tcp(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("TCP connect");
    stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    stream.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

/// Reads from a plain socket until EOF (or a reset) and returns what arrived; panics if the
/// server keeps it open past [`IO_TIMEOUT`].
pub fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    for _ in 0..10_000 {
        match stream.read(&mut chunk) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return got,
            // Signals (glommio's, in other test threads) interrupt blocking reads.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("the server did not close the connection: {e}"),
        }
    }
    panic!("the server kept sending");
}

/// How a raw connection ended when the test expected it to end.
#[derive(Debug)]
pub enum Ending {
    /// The server closed it (TLS close_notify or TCP EOF).
    Closed,
    /// TLS or the socket failed (an alert, a reset).
    Failed(io::Error),
}

/// One blocking mutual-TLS connection to one core, for writing arbitrary bytes.
pub struct RawConn {
    pub stream: StreamOwned<ClientConnection, TcpStream>,
    decoder: FrameDecoder,
    buf: BytesMut,
}

impl RawConn {
    /// TCP, the client preamble for `core`, then the TLS handshake (driven to completion).
    pub fn open(addr: SocketAddr, core: u16, tls: Arc<rustls::ClientConfig>) -> io::Result<Self> {
        RawConn::open_kind(addr, ConnKind::Client, core, tls)
    }

    /// Writes `bytes` inside TLS.
    pub fn write_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Writes one frame with any kind byte and body.
    pub fn send_frame(&mut self, kind: u8, corr: u32, body: &[u8]) -> io::Result<()> {
        let mut frame = Vec::with_capacity(frame::FRAME_HEADER_BYTES + body.len());
        frame.extend_from_slice(&(5 + body.len() as u32).to_be_bytes());
        frame.push(kind);
        frame.extend_from_slice(&corr.to_be_bytes());
        frame.extend_from_slice(body);
        self.write_bytes(&frame)
    }

    /// Writes one well-formed request.
    pub fn send(&mut self, corr: u32, request: &Request) -> io::Result<()> {
        let mut buf = BytesMut::new();
        request.encode(corr, &mut buf);
        self.write_bytes(&buf)
    }

    /// The next frame, or `None` once the server closed the connection cleanly.
    pub fn read_frame(&mut self) -> io::Result<Option<Frame>> {
        let mut chunk = vec![0u8; 64 << 10];
        for _ in 0..100_000 {
            if let Some(frame) = self
                .decoder
                .decode(&mut self.buf)
                .map_err(io::Error::other)?
            {
                return Ok(Some(frame));
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(None),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other("no complete frame after many reads"))
    }

    /// The next response: its correlation id and body. Panics on EOF or an error.
    pub fn recv(&mut self) -> (u32, Response) {
        let frame = self
            .read_frame()
            .expect("read a response frame")
            .expect("a response frame, not the end of the connection");
        let response = frame::decode_response(&frame).expect("a valid response frame");
        (frame.correlation_id, response)
    }

    /// Sends `request` and returns the response to it (nothing else may be in flight).
    pub fn call(&mut self, corr: u32, request: &Request) -> Response {
        self.send(corr, request).expect("send a request");
        let (got, response) = self.recv();
        assert_eq!(
            got, corr,
            "the response carries the request's correlation id"
        );
        response
    }

    /// Reads until the connection ends, asserting that no frame arrives first.
    pub fn expect_end(&mut self) -> Ending {
        match self.read_frame() {
            Ok(None) => Ending::Closed,
            Ok(Some(frame)) => panic!("expected the connection to end, got {frame:?}"),
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                panic!("the server kept the connection open past {IO_TIMEOUT:?}")
            }
            Err(e) => Ending::Failed(e),
        }
    }

    /// Sends TLS close_notify and shuts the TCP sending side: the server sees EOF.
    pub fn close_write(&mut self) {
        self.stream.conn.send_close_notify();
        let _ = self.stream.flush();
        let _ = self.stream.sock.shutdown(Shutdown::Write);
    }
}

/// The server error in `response`, which must be an Error frame.
pub fn server_error(response: &Response) -> ServerError {
    match response {
        Response::Error(e) => ServerError::from_response(e),
        other => panic!("expected an error response, got {other:?}"),
    }
}

/// Whether the node's `/stats` counts at least `at_least` errors of `kind`.
pub fn error_count(node: &NodeProcess, kind: &str) -> u64 {
    node.stats_json()["errors"][kind].as_u64().unwrap_or(0)
}

/// A node started for one test in its own directory under `target/`: the process is killed
/// first, then the directory is removed (kept when the test fails).
pub struct TestNode {
    pub node: NodeProcess,
    pub dir: PathBuf,
    _remove: super::RemoveOnSuccess,
}

impl TestNode {
    /// Starts a node with data in `target/tmp/corelog-tests/NAME/data`.
    pub fn start(name: &str, extra: &[&str]) -> TestNode {
        let dir = super::test_dir(name);
        let node = NodeProcess::start(&dir.join("data"), extra);
        TestNode {
            node,
            _remove: super::RemoveOnSuccess(dir.clone()),
            dir,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }
}

impl std::ops::Deref for TestNode {
    type Target = NodeProcess;
    fn deref(&self) -> &NodeProcess {
        &self.node
    }
}

impl std::ops::DerefMut for TestNode {
    fn deref_mut(&mut self) -> &mut NodeProcess {
        &mut self.node
    }
}

impl RawConn {
    /// Like [`RawConn::open`], with preamble kind `kind`: [`ConnKind::Peer`] opens a peer
    /// connection, as another node's Raft transport does (only peer frames are accepted on it).
    pub fn open_kind(
        addr: SocketAddr,
        kind: ConnKind,
        core: u16,
        tls: Arc<rustls::ClientConfig>,
    ) -> io::Result<Self> {
        let mut sock = tcp(addr);
        sock.write_all(&Preamble::new(kind, core).encode())?;
        let name = ServerName::IpAddress(addr.ip().into());
        let mut conn = ClientConnection::new(tls, name).map_err(io::Error::other)?;
        for _ in 0..100 {
            if !conn.is_handshaking() {
                break;
            }
            match conn.complete_io(&mut sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if conn.is_handshaking() {
            return Err(io::Error::other("TLS handshake did not finish"));
        }
        Ok(RawConn {
            stream: StreamOwned::new(conn, sock),
            decoder: FrameDecoder::default(),
            buf: BytesMut::new(),
        })
    }
}

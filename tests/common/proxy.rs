//! A TCP forwarder on loopback that a test can cut, to simulate network partitions between
//! real node processes.
//!
//! [`Proxy::start`] listens on `127.0.0.1:0` and forwards every connection to one target
//! (a node's real listen address); a node started with `--advertise <proxy address>` is then
//! reached by its peers only through its proxy. Bytes are copied as they come (preamble and TLS
//! alike: the proxy never looks inside).
//!
//! Fault model: a cut is a clean, immediate partition. [`Proxy::cut`] closes every forwarded
//! connection (both sides see a reset or EOF) and refuses new ones (accepted, then closed at
//! once) until [`Proxy::heal`]. A node's own proxy only carries what its peers send *to* it;
//! what it dials goes through its peers' proxies, so isolating a node takes both
//! [`Proxy::cut`] on its proxy and [`Proxy::refuse_from`] (its process id) on every other
//! proxy. The dialing process of a connection is found through `/proc` (the socket's inode in
//! `/proc/net/tcp`, then the owner's `/proc/PID/fd`), so it works for any process on this
//! machine without the nodes' help.
//!
//! Fault model of a stall: a silent partition of the connections open now, as when a network
//! blackholes their packets while both hosts keep their sockets. [`Proxy::stall`] makes every
//! forwarded connection stop forwarding in both directions: the proxy keeps reading both
//! sockets and discards what it reads, so neither side's writes block or fail, nothing
//! arrives, and nothing is closed or reset (an end of stream or an error on one side is not
//! passed on either; the other side's socket stays open until the proxy is dropped). Only
//! timeouts can tell such a connection from a quiet one. Connections accepted after the stall
//! are forwarded as usual, so a peer that re-dials gets through; a stalled connection never
//! recovers ([`Proxy::heal`] ends cuts, not stalls).
//!
//! Threads: one accepting, two per forwarded connection (one per direction). Every socket
//! operation has a timeout or is ended by a shutdown, so dropping the proxy ends them all.

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// Time to connect to the target.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Forwarded connections kept at once; more are refused.
const LINKS_MAX: usize = 256;
/// Bytes copied per read.
const COPY_BUFFER_BYTES: usize = 64 << 10;

/// See the module doc.
pub struct Proxy {
    listen: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

struct Shared {
    target: SocketAddr,
    listen_port: u16,
    /// Refuse everything (and the links were closed when it was set).
    cut: AtomicBool,
    /// Processes whose connections are refused.
    refused_pids: Mutex<BTreeSet<u32>>,
    links: Mutex<Vec<Link>>,
    stop: AtomicBool,
    /// Connections forwarded so far (tests may check that traffic really went through).
    forwarded: AtomicUsize,
}

/// One forwarded connection: both sockets (clones, to shut them down) and the dialer's port.
struct Link {
    inbound: TcpStream,
    outbound: TcpStream,
    /// The dialer's local port: identifies its socket in `/proc/net/tcp`.
    peer_port: u16,
    /// Pump threads still running (0: the link is over).
    pumps: Arc<AtomicUsize>,
    /// Set by [`Proxy::stall`]: the pumps discard what they read and pass nothing on.
    stalled: Arc<AtomicBool>,
}

impl Link {
    fn close(&self) {
        let _ = self.inbound.shutdown(Shutdown::Both);
        let _ = self.outbound.shutdown(Shutdown::Both);
    }
}

impl Proxy {
    /// Starts forwarding connections on a fresh loopback port to `target`.
    pub fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy: bind 127.0.0.1:0");
        let listen = listener.local_addr().expect("proxy: local address");
        let shared = Arc::new(Shared {
            target,
            listen_port: listen.port(),
            cut: AtomicBool::new(false),
            refused_pids: Mutex::new(BTreeSet::new()),
            links: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            forwarded: AtomicUsize::new(0),
        });
        let accept = {
            let shared = shared.clone();
            std::thread::spawn(move || accept_loop(listener, shared))
        };
        Proxy {
            listen,
            shared,
            accept: Some(accept),
        }
    }

    /// The address to give out instead of the target's.
    pub fn addr(&self) -> SocketAddr {
        self.listen
    }

    /// Connections forwarded so far.
    pub fn forwarded(&self) -> usize {
        self.shared.forwarded.load(Ordering::Relaxed)
    }

    /// Closes every forwarded connection and refuses new ones until [`Proxy::heal`].
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        for link in self.shared.links().drain(..) {
            link.close();
        }
    }

    /// Stops forwarding on every connection open now, in both directions, without closing
    /// any; new connections are forwarded as usual (see the module doc).
    pub fn stall(&self) {
        for link in self.shared.links().iter() {
            link.stalled.store(true, Ordering::SeqCst);
        }
    }

    /// Closes the connections process `pid` opened through this proxy and refuses its new ones
    /// until [`Proxy::heal`].
    pub fn refuse_from(&self, pid: u32) {
        self.shared.refused_pids().insert(pid);
        let refused = BTreeSet::from([pid]);
        self.shared.links().retain(|link| {
            let keep = !dialed_by_any(&refused, link.peer_port, self.shared.listen_port);
            if !keep {
                link.close();
            }
            keep
        });
    }

    /// Forwards everything again (connections closed by the cut stay closed: peers re-dial).
    pub fn heal(&self) {
        self.shared.refused_pids().clear();
        self.shared.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accepting thread.
        let _ = TcpStream::connect_timeout(&self.listen, CONNECT_TIMEOUT);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        for link in self.shared.links().drain(..) {
            link.close();
        }
    }
}

impl Shared {
    fn links(&self) -> MutexGuard<'_, Vec<Link>> {
        self.links.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn refused_pids(&self) -> MutexGuard<'_, BTreeSet<u32>> {
        self.refused_pids.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a connection from local port `peer_port` may be forwarded now.
    fn admits(&self, peer_port: u16) -> bool {
        if self.cut.load(Ordering::SeqCst) {
            return false;
        }
        let refused = self.refused_pids().clone();
        refused.is_empty() || !dialed_by_any(&refused, peer_port, self.listen_port)
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let inbound = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) if shared.stop.load(Ordering::SeqCst) => return,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let peer_port = inbound.peer_addr().map_or(0, |a| a.port());
        if !shared.admits(peer_port) {
            // Refused: the dialer sees the connection close before any byte.
            let _ = inbound.shutdown(Shutdown::Both);
            continue;
        }
        let outbound = match TcpStream::connect_timeout(&shared.target, CONNECT_TIMEOUT) {
            Ok(stream) => stream,
            Err(_) => {
                // The target is down: so is the proxied address.
                let _ = inbound.shutdown(Shutdown::Both);
                continue;
            }
        };
        let _ = inbound.set_nodelay(true);
        let _ = outbound.set_nodelay(true);
        let mut links = shared.links();
        links.retain(|l| l.pumps.load(Ordering::SeqCst) > 0);
        // Again under the lock `cut` and `refuse_from` drain under: a cut that came while
        // this connection was being dialed either shows here or closes it after the push.
        if links.len() >= LINKS_MAX || !shared.admits(peer_port) {
            let _ = inbound.shutdown(Shutdown::Both);
            let _ = outbound.shutdown(Shutdown::Both);
            continue;
        }
        let (Ok(in_read), Ok(out_read), Ok(in_keep), Ok(out_keep)) = (
            inbound.try_clone(),
            outbound.try_clone(),
            inbound.try_clone(),
            outbound.try_clone(),
        ) else {
            continue;
        };
        let pumps = Arc::new(AtomicUsize::new(2));
        let stalled = Arc::new(AtomicBool::new(false));
        spawn_pump(in_read, outbound, pumps.clone(), stalled.clone());
        spawn_pump(out_read, inbound, pumps.clone(), stalled.clone());
        links.push(Link {
            inbound: in_keep,
            outbound: out_keep,
            peer_port,
            pumps,
            stalled,
        });
        shared.forwarded.fetch_add(1, Ordering::Relaxed);
    }
}

/// Copies `from` to `to` until either side ends, then ends both. Once `stalled`, it discards
/// what it reads and, when `from` ends, leaves `to` as it is (see the module doc).
fn spawn_pump(
    mut from: TcpStream,
    mut to: TcpStream,
    pumps: Arc<AtomicUsize>,
    stalled: Arc<AtomicBool>,
) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; COPY_BUFFER_BYTES];
        loop {
            let read = from.read(&mut buf);
            if stalled.load(Ordering::SeqCst) {
                match read {
                    Ok(n) if n > 0 => continue,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    // `from` ended: a blackholed link carries no FIN or reset either.
                    _ => break,
                }
            }
            match read {
                Ok(0) => {
                    // A clean half-close travels on; the other pump ends the rest.
                    let _ = to.shutdown(Shutdown::Write);
                    break;
                }
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        let _ = from.shutdown(Shutdown::Both);
                        let _ = to.shutdown(Shutdown::Both);
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    let _ = from.shutdown(Shutdown::Both);
                    let _ = to.shutdown(Shutdown::Both);
                    break;
                }
            }
        }
        pumps.fetch_sub(1, Ordering::SeqCst);
    });
}

/// Whether the loopback connection from local port `peer_port` to port `to_port` was dialed by
/// one of `pids`: its socket inode, from `/proc/net/tcp`, is among their open files.
fn dialed_by_any(pids: &BTreeSet<u32>, peer_port: u16, to_port: u16) -> bool {
    let Some(inode) = socket_inode(peer_port, to_port) else {
        return false;
    };
    let wanted = format!("socket:[{inode}]");
    pids.iter().any(|pid| {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            return false;
        };
        fds.flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == &*wanted)
        })
    })
}

/// The inode of the IPv4 TCP socket whose local port is `local_port` and remote port is
/// `remote_port`.
fn socket_inode(local_port: u16, remote_port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let port_of = |field: &str| {
        field
            .rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local = port_of(fields.get(1)?)?;
        let remote = port_of(fields.get(2)?)?;
        (local == local_port && remote == remote_port)
            .then(|| fields.get(9)?.parse().ok())
            .flatten()
    })
}

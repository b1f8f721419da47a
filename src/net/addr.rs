//! Node addresses as operators write them: `IP:PORT` (`[v6]:PORT`) or `HOST:PORT`.
//!
//! An address becomes the socket addresses to try, in the system resolver's order, and the
//! name the node's certificate must carry: the IP address for `IP:PORT`, the host name
//! otherwise (certificates made for a host list its DNS name, not necessarily its addresses).
//! An `IP:PORT` address needs no lookup. A host name goes through the system resolver
//! (`getaddrinfo`), which blocks: [`resolve`] runs it on the executor's blocking pool so a core
//! keeps serving meanwhile.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use rustls_pki_types::ServerName;

/// How long a client keeps a host name's addresses (a DNS answer's lifetime is not visible
/// through `getaddrinfo`; this bounds how stale one can be).
pub const LOOKUP_TTL: Duration = Duration::from_secs(10);

/// Where a node can be reached and what its certificate must name.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// To try in this order (at least one).
    pub addrs: Vec<SocketAddr>,
    pub server_name: ServerName<'static>,
}

/// An `IP:PORT` address as is, without a lookup; `None` for a host name.
pub fn literal(addr: &str) -> Option<Resolved> {
    let socket_addr = addr.parse::<SocketAddr>().ok()?;
    Some(Resolved {
        addrs: vec![socket_addr],
        server_name: ServerName::IpAddress(socket_addr.ip().into()),
    })
}

/// The host name of a `HOST:PORT` address, checked: a valid DNS name and a port.
fn host_name(addr: &str) -> Result<ServerName<'static>, String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("address {addr:?} is not HOST:PORT"))?;
    port.parse::<u16>()
        .map_err(|_| format!("address {addr:?}: {port:?} is not a port number"))?;
    ServerName::try_from(host.to_string()).map_err(|e| format!("address {addr:?}: {e}"))
}

/// Resolves `addr` on this thread (blocking for a host name). For command-line tools and
/// start-up; a serving core uses [`resolve`].
pub fn resolve_blocking(addr: &str) -> Result<Resolved, String> {
    if let Some(resolved) = literal(addr) {
        return Ok(resolved);
    }
    let server_name = host_name(addr)?;
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {addr:?}: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("{addr:?} resolves to no address"));
    }
    Ok(Resolved { addrs, server_name })
}

/// [`resolve_blocking`] with a host name's lookup on the executor's blocking pool. Needs a
/// glommio executor.
pub async fn resolve(addr: &str) -> Result<Resolved, String> {
    if let Some(resolved) = literal(addr) {
        return Ok(resolved);
    }
    // Checked before the lookup: a malformed address costs no trip to the pool.
    host_name(addr)?;
    let owned = addr.to_string();
    glommio::executor()
        .spawn_blocking(move || resolve_blocking(&owned))
        .await
}

/// Host-name lookups kept for a while: a client that follows `NotLeader` hints by name asks
/// the resolver (a trip to the blocking pool) once per name per TTL, not once per hint.
/// `IP:PORT` names are never stored: they need no lookup.
pub struct Lookups {
    ttl: Duration,
    entries: RefCell<HashMap<String, (Instant, Resolved)>>,
    /// Lookups made through the resolver (for tests and debugging).
    made: Cell<u64>,
}

impl Lookups {
    pub fn new(ttl: Duration) -> Lookups {
        Lookups {
            ttl,
            entries: RefCell::new(HashMap::new()),
            made: Cell::new(0),
        }
    }

    /// `addr` resolved: as is for `IP:PORT`, from the cache while fresh, else looked up (off
    /// the core, see [`resolve`]) and kept. A failed lookup is not kept.
    pub async fn resolve(&self, addr: &str) -> Result<Resolved, String> {
        self.resolve_with(addr, |a| async move { resolve(&a).await })
            .await
    }

    async fn resolve_with<F, Fut>(&self, addr: &str, lookup: F) -> Result<Resolved, String>
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = Result<Resolved, String>>,
    {
        if let Some(resolved) = literal(addr) {
            return Ok(resolved);
        }
        if let Some((at, resolved)) = self.entries.borrow().get(addr)
            && at.elapsed() < self.ttl
        {
            return Ok(resolved.clone());
        }
        self.made.set(self.made.get() + 1);
        let resolved = lookup(addr.to_string()).await?;
        self.entries
            .borrow_mut()
            .insert(addr.to_string(), (Instant::now(), resolved.clone()));
        Ok(resolved)
    }

    /// Drops what is kept for `addr` (none of its addresses answered: the host may have
    /// moved), so the next use looks it up again.
    pub fn forget(&self, addr: &str) {
        self.entries.borrow_mut().remove(addr);
    }

    /// Lookups made through the resolver so far.
    pub fn made(&self) -> u64 {
        self.made.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_addresses_need_no_lookup_and_are_the_certificate_name() {
        let r = resolve_blocking("127.0.0.1:7400").unwrap();
        assert_eq!(r.addrs, ["127.0.0.1:7400".parse::<SocketAddr>().unwrap()]);
        assert!(matches!(r.server_name, ServerName::IpAddress(_)));
        let r = resolve_blocking("[::1]:7400").unwrap();
        assert_eq!(r.addrs, ["[::1]:7400".parse::<SocketAddr>().unwrap()]);
        assert!(matches!(r.server_name, ServerName::IpAddress(_)));
    }

    #[test]
    fn host_names_are_looked_up_and_are_the_certificate_name() {
        let r = resolve_blocking("localhost:7400").unwrap();
        assert!(!r.addrs.is_empty());
        assert!(
            r.addrs
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 7400),
            "{r:?}"
        );
        assert_eq!(
            r.server_name,
            ServerName::try_from("localhost".to_string()).unwrap()
        );
    }

    #[test]
    fn malformed_addresses_are_refused_with_the_reason() {
        for (addr, why) in [
            ("no-port", "not HOST:PORT"),
            ("localhost:http", "not a port number"),
            ("localhost:70000", "not a port number"),
            ("bad host:7400", "address \"bad host:7400\""),
        ] {
            let e = resolve_blocking(addr).unwrap_err();
            assert!(e.contains(why), "{addr}: {e}");
        }
    }

    #[test]
    fn the_async_lookup_runs_on_the_blocking_pool_and_agrees() {
        crate::io::ensure_memlock(crate::io::memlock_bytes_wanted(1, 1 << 20))
            .expect("locked-memory limit");
        let (literal, named, bad) = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(1 << 20)
            .make()
            .expect("glommio executor")
            .run(async {
                (
                    resolve("127.0.0.1:1").await,
                    resolve("localhost:1").await,
                    resolve("no-port").await,
                )
            });
        assert_eq!(literal, resolve_blocking("127.0.0.1:1"));
        assert_eq!(named, resolve_blocking("localhost:1"));
        assert!(bad.is_err());
    }

    #[test]
    fn lookups_are_kept_for_their_ttl_and_forgotten_on_demand() {
        let answer = || Resolved {
            addrs: vec!["127.0.0.1:7400".parse().unwrap()],
            server_name: ServerName::try_from("node-a.example".to_string()).unwrap(),
        };
        let lookup = |_: String| async move { Ok(answer()) };
        futures::executor::block_on(async {
            let cache = Lookups::new(Duration::from_secs(3600));
            // An IP address is never looked up nor kept.
            assert_eq!(
                cache.resolve_with("127.0.0.1:1", lookup).await,
                resolve_blocking("127.0.0.1:1")
            );
            assert_eq!(cache.made(), 0);
            // A name is looked up once, then served from the cache.
            for _ in 0..3 {
                assert_eq!(
                    cache.resolve_with("node-a:7400", lookup).await,
                    Ok(answer())
                );
            }
            assert_eq!(cache.made(), 1);
            // A failed lookup is not kept.
            let failing = |_: String| async move { Err::<Resolved, _>("no such host".into()) };
            assert!(cache.resolve_with("node-b:7400", failing).await.is_err());
            assert_eq!(
                cache.resolve_with("node-b:7400", lookup).await,
                Ok(answer())
            );
            assert_eq!(cache.made(), 3);
            // Forgetting a name makes the next use look it up again.
            cache.forget("node-a:7400");
            cache.resolve_with("node-a:7400", lookup).await.unwrap();
            assert_eq!(cache.made(), 4);
            // An entry older than the TTL is looked up again.
            let short = Lookups::new(Duration::ZERO);
            short.resolve_with("node-a:7400", lookup).await.unwrap();
            short.resolve_with("node-a:7400", lookup).await.unwrap();
            assert_eq!(short.made(), 2);
        });
    }
}

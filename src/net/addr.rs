//! Node addresses as operators write them: `IP:PORT` (`[v6]:PORT`) or `HOST:PORT`.
//!
//! An address becomes the socket addresses to try, in the system resolver's order, and the
//! name the node's certificate must carry: the IP address for `IP:PORT`, the host name
//! otherwise (certificates made for a host list its DNS name, not necessarily its addresses).
//! An `IP:PORT` address needs no lookup. A host name goes through the system resolver
//! (`getaddrinfo`), which blocks: [`resolve`] runs it on the executor's blocking pool so a core
//! keeps serving meanwhile.

use std::net::{SocketAddr, ToSocketAddrs};

use rustls_pki_types::ServerName;

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
}

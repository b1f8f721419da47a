//! Accepting on the one port: every core listens on the same address (SO_REUSEPORT), reads the
//! plaintext preamble of each connection it accepts, and serves it or hands it to the core the
//! preamble names. TLS then runs on that core, so steady-state traffic never crosses cores.

use std::rc::Rc;
use std::time::Duration;

use futures::io::AsyncReadExt;
use glommio::net::{TcpListener, TcpStream};

use crate::io::net::HandoffSocket;
use crate::net::conn;
use crate::net::preamble::{PREAMBLE_BYTES, Preamble};
use crate::shard::{CoreMsg, Shard};

/// How long a new connection may take to send its preamble.
pub const PREAMBLE_TIMEOUT_MS: u64 = 5_000;

/// Accepts until the core shuts down.
pub async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        let seen = shard.shutdown.generation();
        if shard.is_shutting_down() {
            return;
        }
        let accepted =
            futures_lite::future::or(async { Some(listener.shared_accept().await) }, async {
                shard.shutdown.wait(seen).await;
                None
            })
            .await;
        match accepted {
            None => return,
            Some(Ok(socket)) => {
                let stream = socket.bind_to_executor();
                glommio::spawn_local(route(shard.clone(), stream)).detach();
            }
            Some(Err(e)) => {
                // EMFILE and friends: say so and back off instead of spinning.
                log::warn!("core {}: accept failed: {e}", shard.core);
                shard.stats.record_error("accept");
                crate::io::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Reads the preamble and sends the connection where it belongs. A bad or missing preamble
/// closes the connection without a reply.
async fn route(shard: Rc<Shard>, mut stream: TcpStream) {
    let mut bytes = [0u8; PREAMBLE_BYTES];
    let read =
        futures_lite::future::or(async { Some(stream.read_exact(&mut bytes).await) }, async {
            crate::io::sleep(Duration::from_millis(PREAMBLE_TIMEOUT_MS)).await;
            None
        })
        .await;
    if !matches!(read, Some(Ok(()))) {
        shard.stats.bad_preamble();
        return;
    }
    let preamble = match Preamble::decode(&bytes) {
        Ok(p) if (p.core as usize) < shard.node.cores => p,
        _ => {
            shard.stats.bad_preamble();
            return;
        }
    };
    let target = preamble.core as usize;
    if target == shard.core {
        conn::serve(shard, stream, preamble.kind).await;
        return;
    }
    let peer = stream.peer_addr().ok();
    let socket = match HandoffSocket::from_stream(&stream) {
        Ok(s) => s,
        Err(e) => {
            log::warn!("core {}: cannot hand a connection over: {e}", shard.core);
            return;
        }
    };
    drop(stream);
    let msg = CoreMsg::Connection {
        socket,
        kind: preamble.kind,
        peer,
    };
    if let Err(e) = shard.send_to(target, msg).await {
        log::warn!("core {}: {e}", shard.core);
    }
}

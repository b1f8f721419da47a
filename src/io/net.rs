//! TCP sockets under TLS: [`TcpIo`], and moving an accepted connection between cores.
//!
//! ## [`TcpIo`]
//!
//! What rustls does to a plain glommio `TcpStream` on a busy connection:
//! - it reads at most 4 KiB per `read` (rustls' deframer asks for that much), so a replica
//!   receiving 100 MB/s made ~25,000 read syscalls a second;
//! - it hands its encrypted records to `write_vectored`, which glommio does not implement: the
//!   default writes only the first slice, one 16 KiB record per syscall.
//!
//! `TcpIo` reads up to [`READ_BUFFER_BYTES`] per syscall into a buffer and serves the small
//! reads from it (one more copy, far cheaper than the syscalls), and writes all the slices it
//! is given with one `sendmsg`, falling back to the stream's own `poll_write` (which registers
//! for writability) when the socket is full.
//!
//! A connection holds a read buffer only while it has bytes to read: when a read finds the
//! socket empty (the connection waits), an emptied buffer goes back to its core's pool, and
//! the next read takes one from there. Memory follows the connections that are busy at once,
//! not the ones open (4,096 idle clients hold none), and a busy connection pays neither an
//! allocation nor zeroing per wait.
//!
//! ## Moving a connection between cores
//!
//! Any core may accept a connection (the listening sockets share the port with SO_REUSEPORT);
//! it reads the plaintext preamble, which names the core that owns the connection's work, and
//! hands the socket over. A glommio `TcpStream` is bound to its executor and not `Send`, so
//! the socket travels as a duplicated file descriptor ([`HandoffSocket`]) and is adopted by the
//! target core's executor.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::io::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

/// Bytes [`TcpIo`] asks the kernel for per read: 16 TLS records. A connection holds such a
/// buffer only while it has bytes to read (module docs).
pub const READ_BUFFER_BYTES: usize = 64 << 10;

/// Read buffers a core keeps for its next busy connections (4 MiB); beyond that, a returned
/// buffer is freed.
const READ_BUFFERS_POOLED_MAX: usize = 64;

thread_local! {
    /// This core's spare read buffers (each executor is one thread).
    static READ_BUFFERS: std::cell::RefCell<Vec<Box<[u8]>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

fn take_read_buffer() -> Box<[u8]> {
    READ_BUFFERS
        .with(|pool| pool.borrow_mut().pop())
        .unwrap_or_else(|| vec![0; READ_BUFFER_BYTES].into_boxed_slice())
}

fn give_back_read_buffer(buf: Box<[u8]>) {
    READ_BUFFERS.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < READ_BUFFERS_POOLED_MAX {
            pool.push(buf);
        }
    });
}

/// Slices [`TcpIo`] passes to one `sendmsg` (the kernel's limit is 1024).
const WRITE_SLICES_MAX: usize = 64;

/// A connected TCP stream with large reads and real vectored writes (module docs).
pub struct TcpIo {
    stream: TcpStream,
    /// Only while the connection has bytes to read (module docs).
    buf: Option<Box<[u8]>>,
    /// `buf[start..end]` is read but not yet handed out.
    start: usize,
    end: usize,
}

impl TcpIo {
    pub fn new(stream: TcpStream) -> TcpIo {
        TcpIo {
            stream,
            buf: None,
            start: 0,
            end: 0,
        }
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Whether this connection holds a read buffer now.
    pub fn holds_read_buffer(&self) -> bool {
        self.buf.is_some()
    }
}

impl Drop for TcpIo {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            give_back_read_buffer(buf);
        }
    }
}

impl AsyncRead for TcpIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.start == this.end {
            if out.len() >= READ_BUFFER_BYTES {
                return Pin::new(&mut this.stream).poll_read(cx, out);
            }
            let buf = this.buf.get_or_insert_with(take_read_buffer);
            match Pin::new(&mut this.stream).poll_read(cx, buf) {
                Poll::Ready(read) => {
                    this.start = 0;
                    this.end = read?;
                }
                Poll::Pending => {
                    // Nothing to read: the connection waits without a buffer.
                    if let Some(buf) = this.buf.take() {
                        give_back_read_buffer(buf);
                    }
                    return Poll::Pending;
                }
            }
        }
        let buf = this.buf.as_deref().expect("bytes are held in a buffer");
        let n = out.len().min(this.end - this.start);
        out[..n].copy_from_slice(&buf[this.start..this.start + n]);
        this.start += n;
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for TcpIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let slices = &bufs[..bufs.len().min(WRITE_SLICES_MAX)];
        // SAFETY: an all-zero msghdr is valid (no name, no control data); `IoSlice` is
        // guaranteed ABI-compatible with `iovec` on Unix, and `slices` outlives the call.
        let sent = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = slices.as_ptr() as *mut libc::iovec;
            msg.msg_iovlen = slices.len() as _;
            libc::sendmsg(
                this.stream.as_raw_fd(),
                &msg,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if sent >= 0 {
            return Poll::Ready(Ok(sent as usize));
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::WouldBlock {
            return Poll::Ready(Err(err));
        }
        // The socket is full: glommio's write registers for writability (or gets through).
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &**b);
        Pin::new(&mut this.stream).poll_write(cx, first)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_close(cx)
    }
}

/// A connected TCP socket on its way to another core. Dropping it closes the socket.
#[derive(Debug)]
pub struct HandoffSocket(OwnedFd);

impl HandoffSocket {
    /// Duplicates the stream's socket so it can outlive `stream`; the caller then drops
    /// `stream`. The stream must have no I/O in flight (true between two awaited reads).
    pub fn from_stream(stream: &TcpStream) -> std::io::Result<HandoffSocket> {
        // SAFETY: `as_raw_fd` is a valid open socket owned by `stream` for this call; `dup`
        // returns a new descriptor (or -1, checked) that we own exclusively from here on.
        let fd = unsafe { libc::dup(stream.as_raw_fd()) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by `dup`, is open, and nothing else owns it.
        Ok(HandoffSocket(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Adopts the socket on the current executor.
    pub fn into_stream(self) -> TcpStream {
        let fd = self.0.into_raw_fd();
        // SAFETY: `fd` is an open, connected TCP socket whose ownership we give up here; the
        // new `TcpStream` becomes its only owner and closes it on drop.
        unsafe { TcpStream::from_raw_fd(fd) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::{AsyncReadExt, AsyncWriteExt};
    use glommio::net::TcpListener;

    use crate::io::run_test_executor as run;

    fn pooled_read_buffers() -> usize {
        READ_BUFFERS.with(|pool| pool.borrow().len())
    }

    /// A connection waiting for bytes holds no read buffer: it went back to the core's pool,
    /// the next read takes that same buffer again, and a dropped connection returns its own.
    #[test]
    fn a_waiting_connection_gives_its_read_buffer_back_to_the_core() {
        run(async {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let mut client = TcpIo::new(TcpStream::connect(addr).await.unwrap());
            let mut server = TcpIo::new(listener.accept().await.unwrap());
            assert!(
                !server.holds_read_buffer(),
                "no buffer before the first read"
            );
            let pooled = pooled_read_buffers();

            client.write_all(b"hello world").await.unwrap();
            let mut small = [0u8; 5];
            server.read_exact(&mut small).await.unwrap();
            assert_eq!(&small, b"hello");
            assert!(
                server.holds_read_buffer(),
                "unread bytes stay in the buffer"
            );

            // The rest is served from the buffer, then the next read waits: the buffer goes
            // back to the pool while the connection waits.
            let mut rest = [0u8; 6];
            server.read_exact(&mut rest).await.unwrap();
            assert_eq!(&rest, b" world");
            let mut waiting = [0u8; 8];
            let idle = futures_lite::future::poll_once(server.read(&mut waiting)).await;
            assert!(idle.is_none(), "nothing was sent: the read waits");
            assert!(!server.holds_read_buffer());
            assert_eq!(pooled_read_buffers(), pooled + 1);

            // Reading again takes a buffer from the pool rather than allocating one.
            client.write_all(b"again").await.unwrap();
            let mut again = [0u8; 5];
            server.read_exact(&mut again).await.unwrap();
            assert_eq!(&again, b"again");
            assert!(server.holds_read_buffer());
            assert_eq!(pooled_read_buffers(), pooled);
            drop(server);
            assert_eq!(
                pooled_read_buffers(),
                pooled + 1,
                "a closed connection returns it"
            );
        });
    }

    /// 32 MiB in many slices through loopback (far more than the socket buffers hold, so the
    /// writer meets a full socket and must wait for writability), read back in small reads:
    /// every byte arrives once, in order.
    #[test]
    fn vectored_writes_and_buffered_reads_carry_every_byte_in_order() {
        run(async {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let pattern = |i: usize| -> Vec<u8> {
                (0..1000 + i % 3000).map(|j| (i * 31 + j) as u8).collect()
            };
            let pieces: Vec<Vec<u8>> = (0..14_000).map(pattern).collect();
            let expected: Vec<u8> = pieces.concat();
            let total = expected.len();
            let piece_count = pieces.len();
            assert!(total > 32 << 20);
            let writer = glommio::spawn_local(async move {
                let mut io = TcpIo::new(TcpStream::connect(addr).await.unwrap());
                let (mut i, mut at) = (0, 0);
                let mut writes = 0;
                while i < pieces.len() {
                    let slices: Vec<IoSlice<'_>> = std::iter::once(IoSlice::new(&pieces[i][at..]))
                        .chain(pieces[i + 1..].iter().map(|p| IoSlice::new(p)))
                        .take(200)
                        .collect();
                    let n = io.write_vectored(&slices).await.unwrap();
                    writes += 1;
                    (i, at) = crate::net::write::advance(&pieces, (i, at), n);
                }
                io.close().await.unwrap();
                writes
            });
            let mut io = TcpIo::new(listener.accept().await.unwrap());
            let mut got = Vec::with_capacity(total);
            let mut chunk = vec![0u8; 4096];
            loop {
                let n = io.read(&mut chunk).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&chunk[..n]);
                if got.len() % (1 << 20) < 4096 {
                    // A slow reader now and then, so the writer finds the socket full.
                    crate::io::sleep(std::time::Duration::from_millis(1)).await;
                }
            }
            let writes = writer.await;
            assert_eq!(got.len(), total);
            assert!(got == expected, "the bytes differ");
            assert!(
                writes < piece_count / 4,
                "{writes} writes for {piece_count} pieces: the slices were not written together"
            );
        });
    }
}

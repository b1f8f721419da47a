//! Moving an accepted TCP connection between cores.
//!
//! Any core may accept a connection (the listening sockets share the port with SO_REUSEPORT);
//! it reads the plaintext preamble, which names the core that owns the connection's work, and
//! hands the socket over. A glommio `TcpStream` is bound to its executor and not `Send`, so
//! the socket travels as a duplicated file descriptor ([`HandoffSocket`]) and is adopted by the
//! target core's executor.

use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};

use glommio::net::TcpStream;

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

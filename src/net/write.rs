//! Writing queued frames to a (TLS) stream, shared by the server's and the client's
//! connections.
//!
//! Small frames (acks, heartbeats, small responses) are coalesced into one buffer, so many go
//! out in one TLS record and one syscall. A large frame (a replication batch, a consume
//! response) is written as it is: TLS copies it into its records anyway, and copying it into
//! the coalescing buffer first was a quarter of the memory copying a replicating leader did.

use bytes::{Bytes, BytesMut};
use futures::io::{AsyncWrite, AsyncWriteExt};

/// Frames at least this large are written directly instead of being coalesced.
pub const COALESCE_BELOW_BYTES: usize = 16 << 10;

/// Writes `frames` in order (small ones through `buf`), then flushes.
pub async fn write_frames<'a, W: AsyncWrite + Unpin>(
    writer: &mut W,
    buf: &mut BytesMut,
    frames: impl IntoIterator<Item = &'a Bytes>,
) -> std::io::Result<()> {
    buf.clear();
    for frame in frames {
        if frame.len() < COALESCE_BELOW_BYTES {
            buf.extend_from_slice(frame);
            continue;
        }
        if !buf.is_empty() {
            writer.write_all(buf).await?;
            buf.clear();
        }
        writer.write_all(frame).await?;
    }
    if !buf.is_empty() {
        writer.write_all(buf).await?;
        buf.clear();
    }
    writer.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records every `write` call the stream receives.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
        flushes: usize,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.writes.push(buf.to_vec());
            std::task::Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            self.flushes += 1;
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_close(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn small_frames_are_coalesced_large_ones_written_as_they_are_in_order() {
        let small = |b: u8| Bytes::from(vec![b; 10]);
        let large = Bytes::from(vec![9u8; COALESCE_BELOW_BYTES]);
        let frames = [small(1), small(2), large.clone(), small(3)];
        let mut out = Recorder::default();
        let mut buf = BytesMut::new();
        futures::executor::block_on(write_frames(&mut out, &mut buf, &frames)).unwrap();
        let expected: Vec<Vec<u8>> = vec![
            [small(1), small(2)].concat(),
            large.to_vec(),
            small(3).to_vec(),
        ];
        assert_eq!(out.writes, expected);
        assert_eq!(out.flushes, 1);
        assert_eq!(
            out.writes.concat(),
            frames.concat(),
            "the stream is unchanged"
        );
    }
}

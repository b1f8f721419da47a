//! Writing queued frames to a (TLS) stream, shared by the server's and the client's
//! connections.
//!
//! Small frames (acks, heartbeats, small responses) are coalesced into one buffer. A large
//! frame or frame piece (a replication batch's entry body, a consume response) is passed as it
//! is: TLS copies it into its records anyway, and copying it into the coalescing buffer first
//! was a quarter of the memory copying a replicating leader did. Everything goes to the stream
//! as vectored writes, so TLS makes records of up to its buffer limit at a time and the socket
//! (`io::net::TcpIo`) sends them with one syscall.

use std::io::IoSlice;

use bytes::{Bytes, BytesMut};
use futures::io::{AsyncWrite, AsyncWriteExt};

/// Frames at least this large are written directly instead of being coalesced.
pub const COALESCE_BELOW_BYTES: usize = 16 << 10;

/// Slices per vectored write.
const SLICES_PER_WRITE: usize = 64;

/// Writes `frames` in order (small ones coalesced through `buf`, which keeps its capacity
/// from call to call), then flushes.
pub async fn write_frames<'a, W: AsyncWrite + Unpin>(
    writer: &mut W,
    buf: &mut BytesMut,
    frames: impl IntoIterator<Item = &'a Bytes>,
) -> std::io::Result<()> {
    /// A run of coalesced frames in `buf`, or a large frame passed as it is.
    enum Piece<'f> {
        Coalesced(std::ops::Range<usize>),
        Frame(&'f Bytes),
    }
    buf.clear();
    let mut runs: Vec<Piece<'a>> = Vec::new();
    let mut run_start = 0;
    for frame in frames {
        if frame.len() < COALESCE_BELOW_BYTES {
            buf.extend_from_slice(frame);
            continue;
        }
        if buf.len() > run_start {
            runs.push(Piece::Coalesced(run_start..buf.len()));
            run_start = buf.len();
        }
        runs.push(Piece::Frame(frame));
    }
    if buf.len() > run_start {
        runs.push(Piece::Coalesced(run_start..buf.len()));
    }
    let pieces: Vec<&[u8]> = runs
        .iter()
        .map(|run| match run {
            Piece::Coalesced(range) => &buf[range.clone()],
            Piece::Frame(frame) => &frame[..],
        })
        .collect();
    write_all_pieces(writer, &pieces).await?;
    writer.flush().await
}

/// Writes every byte of `pieces`, in order, with vectored writes.
async fn write_all_pieces<W: AsyncWrite + Unpin>(
    writer: &mut W,
    pieces: &[&[u8]],
) -> std::io::Result<()> {
    let (mut i, mut at) = (0, 0);
    while i < pieces.len() {
        let slices: Vec<IoSlice<'_>> = std::iter::once(IoSlice::new(&pieces[i][at..]))
            .chain(pieces[i + 1..].iter().map(|p| IoSlice::new(p)))
            .take(SLICES_PER_WRITE)
            .collect();
        let n = writer.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        (i, at) = advance(pieces, (i, at), n);
    }
    Ok(())
}

/// The position (piece, byte within it) `n` bytes after `(i, at)` in `pieces`.
pub(crate) fn advance<P: AsRef<[u8]>>(
    pieces: &[P],
    (mut i, mut at): (usize, usize),
    mut n: usize,
) -> (usize, usize) {
    while n > 0 {
        let left = pieces[i].as_ref().len() - at;
        if n < left {
            return (i, at + n);
        }
        n -= left;
        i += 1;
        at = 0;
    }
    (i, at)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records every write call the stream receives: the slices it was given, and how many
    /// bytes it took (at most `take_max` per call).
    struct Recorder {
        calls: Vec<Vec<(usize, Vec<u8>)>>,
        taken: Vec<u8>,
        take_max: usize,
        flushes: usize,
    }

    impl Recorder {
        fn new(take_max: usize) -> Recorder {
            Recorder {
                calls: Vec::new(),
                taken: Vec::new(),
                take_max,
                flushes: 0,
            }
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(buf)])
        }
        fn poll_write_vectored(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.calls.push(
                bufs.iter()
                    .map(|b| (b.as_ptr() as usize, b.to_vec()))
                    .collect(),
            );
            let all: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            let n = all.len().min(self.take_max);
            self.taken.extend_from_slice(&all[..n]);
            std::task::Poll::Ready(Ok(n))
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

    fn frames() -> (Vec<Bytes>, Bytes) {
        let small = |b: u8| Bytes::from(vec![b; 10]);
        let large = Bytes::from(vec![9u8; COALESCE_BELOW_BYTES]);
        (vec![small(1), small(2), large.clone(), small(3)], large)
    }

    #[test]
    fn small_frames_are_coalesced_large_ones_passed_as_they_are_in_one_vectored_write() {
        let (frames, large) = frames();
        let mut out = Recorder::new(usize::MAX);
        let mut buf = BytesMut::new();
        futures::executor::block_on(write_frames(&mut out, &mut buf, &frames)).unwrap();
        assert_eq!(out.calls.len(), 1, "one write for everything");
        let slices: Vec<&Vec<u8>> = out.calls[0].iter().map(|(_, b)| b).collect();
        assert_eq!(
            slices,
            vec![
                &[frames[0].clone(), frames[1].clone()].concat(),
                &large.to_vec(),
                &frames[3].to_vec()
            ]
        );
        assert_eq!(
            out.calls[0][1].0,
            large.as_ptr() as usize,
            "the large frame is not copied"
        );
        assert_eq!(out.taken, frames.concat(), "the stream is unchanged");
        assert_eq!(out.flushes, 1);
        // The coalescing buffer is reused by the next call, not given away.
        let (ptr, capacity) = (buf.as_ptr(), buf.capacity());
        assert!(capacity >= 30);
        futures::executor::block_on(write_frames(&mut out, &mut buf, &frames)).unwrap();
        assert_eq!((buf.as_ptr(), buf.capacity()), (ptr, capacity));
    }

    #[test]
    fn partial_writes_resume_where_they_stopped() {
        let (frames, _) = frames();
        for take_max in [7, 20, 4096, COALESCE_BELOW_BYTES + 3] {
            let mut out = Recorder::new(take_max);
            let mut buf = BytesMut::new();
            futures::executor::block_on(write_frames(&mut out, &mut buf, &frames)).unwrap();
            assert_eq!(out.taken, frames.concat(), "take_max {take_max}");
            assert_eq!(out.flushes, 1);
        }
    }
}

//! The frame codec: pure functions between bytes and frames, no I/O. The connection code reads
//! socket bytes into a `BytesMut`, calls [`FrameDecoder::decode`] until it returns `None`, and
//! writes what [`encode_frame`] appends.
//!
//! Format (docs/PROTOCOL.md, "Framing"), all integers big-endian:
//!
//! ```text
//! offset  size    field
//! 0       4       length          bytes after this field: 5 + body length
//! 4       1       kind            FrameKind: which message the body holds
//! 5       4       correlation id  chosen by the client, echoed on every response frame
//! 9       length-5  body          one protobuf message of proto/corelog.proto
//! ```
//!
//! Invariants:
//! - A frame's size is `4 + length`; one over the decoder's `frame_bytes_max` is refused as soon
//!   as its 9-byte header is in, before any of its body is waited for or allocated.
//! - A decoded body is a zero-copy slice of the read buffer, and so are the `bytes` fields
//!   prost decodes from it (build.rs maps them to `bytes::Bytes`).
//! - After a fatal error ([`FrameError::is_fatal`]) the framing is lost: the caller answers if
//!   it can and closes the connection. After any other error the offending frame has been
//!   consumed and decoding continues with the next one.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;

use crate::proto::{
    ConsumeRequest, ConsumeResponse, ErrorResponse, GetServersRequest, GetServersResponse,
    JoinRequest, JoinResponse, LeaveRequest, LeaveResponse, MetadataRequest, MetadataResponse,
    ProduceRequest, ProduceResponse, RaftAppendRequest, RaftAppendResponse, RaftSnapshotRequest,
    RaftSnapshotResponse, RaftTransferLeaderRequest, RaftTransferLeaderResponse, RaftVoteRequest,
    RaftVoteResponse, SubscribeCancel, SubscribeCancelResponse, SubscribeCredit, SubscribeEvent,
    SubscribeRequest,
};

/// Size of the length field.
pub const FRAME_LENGTH_BYTES: usize = 4;
/// Size of the fixed header: length, kind, correlation id.
pub const FRAME_HEADER_BYTES: usize = FRAME_LENGTH_BYTES + 1 + 4;
/// The smallest valid length field: a kind and a correlation id, empty body.
pub const FRAME_LENGTH_MIN: u32 = (FRAME_HEADER_BYTES - FRAME_LENGTH_BYTES) as u32;

/// Default limit on one frame's size, header included (`--frame-bytes-max`).
pub const FRAME_BYTES_MAX_DEFAULT: usize = 16 << 20;
/// The lowest `frame_bytes_max` a node or client may configure: room for any error answer.
pub const FRAME_BYTES_MAX_MIN: usize = 1 << 10;
/// The highest `frame_bytes_max` a node or client may configure: one frame is buffered whole,
/// so this bounds the memory one connection can pin.
pub const FRAME_BYTES_MAX_LIMIT: usize = 1 << 30;

/// Correlation id 0 belongs to the server: an Error frame with id 0 is about the connection,
/// not a request, and the server closes the connection after sending it. Requests use 1..
pub const CORRELATION_ID_CONNECTION: u32 = 0;

/// Frame kinds 0x40..=0x7E are peer (Raft) requests, sent only on peer connections; their
/// responses are the kind | 0x80 (0xC0..=0xFE). 0x40..=0x43 are assigned, the rest stay free
/// for later peer messages. 0x7F stays unused because 0x7F | 0x80 is [`FrameKind::Error`].
pub const PEER_REQUEST_KINDS: std::ops::RangeInclusive<u8> = 0x40..=0x7E;

/// Which message a frame's body holds. A response kind is its request kind | 0x80.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    Produce = 0x01,
    Consume = 0x02,
    Subscribe = 0x03,
    /// Grants credits to the subscription with the same correlation id; has no response.
    SubscribeCredit = 0x04,
    SubscribeCancel = 0x05,
    Metadata = 0x06,
    GetServers = 0x07,
    /// Admin: add a node to a partition's Raft group.
    Join = 0x08,
    /// Admin: remove a node from a partition's Raft group.
    Leave = 0x09,

    /// Peer: Raft AppendEntries.
    RaftAppend = 0x40,
    /// Peer: Raft RequestVote or Pre-Vote.
    RaftVote = 0x41,
    /// Peer: one chunk of a full Raft snapshot.
    RaftSnapshot = 0x42,
    /// Peer: Raft TransferLeader.
    RaftTransferLeader = 0x43,

    ProduceResponse = 0x81,
    ConsumeResponse = 0x82,
    /// Records pushed on a subscription, one per credit.
    SubscribeEvent = 0x83,
    SubscribeCancelResponse = 0x85,
    MetadataResponse = 0x86,
    GetServersResponse = 0x87,
    JoinResponse = 0x88,
    LeaveResponse = 0x89,

    RaftAppendResponse = 0xC0,
    RaftVoteResponse = 0xC1,
    RaftSnapshotResponse = 0xC2,
    RaftTransferLeaderResponse = 0xC3,

    /// An `ErrorResponse`: answers any request, or ends a subscription.
    Error = 0xFF,
}

impl FrameKind {
    pub const ALL: [FrameKind; 26] = [
        FrameKind::Produce,
        FrameKind::Consume,
        FrameKind::Subscribe,
        FrameKind::SubscribeCredit,
        FrameKind::SubscribeCancel,
        FrameKind::Metadata,
        FrameKind::GetServers,
        FrameKind::Join,
        FrameKind::Leave,
        FrameKind::RaftAppend,
        FrameKind::RaftVote,
        FrameKind::RaftSnapshot,
        FrameKind::RaftTransferLeader,
        FrameKind::ProduceResponse,
        FrameKind::ConsumeResponse,
        FrameKind::SubscribeEvent,
        FrameKind::SubscribeCancelResponse,
        FrameKind::MetadataResponse,
        FrameKind::GetServersResponse,
        FrameKind::JoinResponse,
        FrameKind::LeaveResponse,
        FrameKind::RaftAppendResponse,
        FrameKind::RaftVoteResponse,
        FrameKind::RaftSnapshotResponse,
        FrameKind::RaftTransferLeaderResponse,
        FrameKind::Error,
    ];

    pub fn from_u8(byte: u8) -> Option<FrameKind> {
        FrameKind::ALL.into_iter().find(|k| *k as u8 == byte)
    }

    /// Whether a client sends this kind (the high bit is clear).
    pub fn is_request(self) -> bool {
        (self as u8) & 0x80 == 0
    }

    /// Whether this is a peer (Raft) kind, request or response: those travel only on peer
    /// connections.
    pub fn is_peer(self) -> bool {
        PEER_REQUEST_KINDS.contains(&((self as u8) & 0x7F))
    }
}

/// One decoded frame. `body` shares the read buffer's memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub correlation_id: u32,
    pub body: Bytes,
}

/// Why bytes or a body could not be decoded. The variants carry the correlation id whenever
/// the header was readable, so the server can answer the request it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fatal: answer FRAME_TOO_LARGE with `correlation_id`, then close.
    #[error("frame of {frame_bytes} bytes exceeds the limit of {frame_bytes_max} bytes")]
    TooLarge {
        frame_bytes: u64,
        frame_bytes_max: u64,
        correlation_id: u32,
    },

    /// Fatal: the length field cannot even hold a kind and a correlation id.
    #[error("malformed frame: length field {length} is below the minimum of {FRAME_LENGTH_MIN}")]
    Malformed { length: u32 },

    /// The frame was consumed; answer BAD_REQUEST and keep the connection.
    #[error("unknown frame kind 0x{kind:02x}")]
    UnknownKind { kind: u8, correlation_id: u32 },

    /// A known kind that goes the other way (a response sent to the server, or a request sent
    /// to a client). The frame was consumed; answer BAD_REQUEST and keep the connection.
    #[error("frame kind {kind:?} (0x{:02x}) is not expected in this direction", *.kind as u8)]
    UnexpectedKind {
        kind: FrameKind,
        correlation_id: u32,
    },

    /// The body is not a valid protobuf message of the frame's kind. The frame was consumed;
    /// answer BAD_REQUEST and keep the connection.
    #[error("invalid {kind:?} body: {source}")]
    BadBody {
        kind: FrameKind,
        correlation_id: u32,
        source: prost::DecodeError,
    },

    /// Fatal: a request used correlation id 0, which is reserved for connection-level errors.
    /// Answer BAD_REQUEST on id 0, then close.
    #[error("{kind:?} request uses correlation id 0, which is reserved for the server")]
    ReservedCorrelationId { kind: FrameKind },
}

impl FrameError {
    /// Whether the connection must close: the stream of frames cannot be followed any more,
    /// or the peer broke a rule that makes its later frames ambiguous.
    pub fn is_fatal(&self) -> bool {
        match self {
            FrameError::TooLarge { .. }
            | FrameError::Malformed { .. }
            | FrameError::ReservedCorrelationId { .. } => true,
            FrameError::UnknownKind { .. }
            | FrameError::UnexpectedKind { .. }
            | FrameError::BadBody { .. } => false,
        }
    }

    /// The correlation id to answer on: the offending frame's, or
    /// [`CORRELATION_ID_CONNECTION`] when there is none.
    pub fn correlation_id(&self) -> u32 {
        match self {
            FrameError::TooLarge { correlation_id, .. }
            | FrameError::UnknownKind { correlation_id, .. }
            | FrameError::UnexpectedKind { correlation_id, .. }
            | FrameError::BadBody { correlation_id, .. } => *correlation_id,
            FrameError::Malformed { .. } | FrameError::ReservedCorrelationId { .. } => {
                CORRELATION_ID_CONNECTION
            }
        }
    }
}

/// Splits a stream of bytes into frames. Keeps no state between calls besides its limit: all
/// partial input stays in the caller's buffer.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct FrameDecoder {
    frame_bytes_max: usize,
}

impl Default for FrameDecoder {
    fn default() -> FrameDecoder {
        FrameDecoder::new(FRAME_BYTES_MAX_DEFAULT)
    }
}

impl FrameDecoder {
    /// `frame_bytes_max` comes from validated config: outside
    /// [`FRAME_BYTES_MAX_MIN`]..=[`FRAME_BYTES_MAX_LIMIT`] is a programmer error.
    pub fn new(frame_bytes_max: usize) -> FrameDecoder {
        assert!(
            (FRAME_BYTES_MAX_MIN..=FRAME_BYTES_MAX_LIMIT).contains(&frame_bytes_max),
            "frame_bytes_max = {frame_bytes_max} must be between {FRAME_BYTES_MAX_MIN} and \
             {FRAME_BYTES_MAX_LIMIT}: validate config before building a decoder"
        );
        FrameDecoder { frame_bytes_max }
    }

    pub fn frame_bytes_max(&self) -> usize {
        self.frame_bytes_max
    }

    /// The size of the frame `buf` begins with, header included, when its header is complete,
    /// the frame is within the limit and `buf` does not hold all of it yet (what
    /// [`FrameDecoder::decode`] waits for); `None` otherwise.
    pub fn incomplete_frame_bytes(&self, buf: &[u8]) -> Option<usize> {
        let length = read_u32(buf, 0)?;
        if length < FRAME_LENGTH_MIN || buf.len() < FRAME_HEADER_BYTES {
            return None;
        }
        let frame_bytes = FRAME_LENGTH_BYTES as u64 + u64::from(length);
        (frame_bytes <= self.frame_bytes_max as u64 && (buf.len() as u64) < frame_bytes)
            .then_some(frame_bytes as usize)
    }

    /// Takes the next complete frame off the front of `buf`, or returns `Ok(None)` (leaving
    /// `buf` as it is) when more bytes are needed. Call it again after every read until it
    /// returns `None`: one read may carry many frames.
    ///
    /// On a fatal error `buf` is left as it is and the decoder must not be called again for
    /// this connection; on a non-fatal one the bad frame has been removed from `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some(length) = read_u32(buf, 0) else {
            return Ok(None);
        };
        if length < FRAME_LENGTH_MIN {
            return Err(FrameError::Malformed { length });
        }
        // The header is in the same small write as the length in practice; waiting for it
        // lets a refusal name the request it refuses.
        let (Some(&kind_byte), Some(correlation_id)) = (
            buf.get(FRAME_LENGTH_BYTES),
            read_u32(buf, FRAME_LENGTH_BYTES + 1),
        ) else {
            return Ok(None);
        };
        let frame_bytes = FRAME_LENGTH_BYTES as u64 + u64::from(length);
        if frame_bytes > self.frame_bytes_max as u64 {
            return Err(FrameError::TooLarge {
                frame_bytes,
                frame_bytes_max: self.frame_bytes_max as u64,
                correlation_id,
            });
        }
        // Cannot truncate: frame_bytes <= frame_bytes_max, a usize.
        let frame_bytes = frame_bytes as usize;
        if buf.len() < frame_bytes {
            return Ok(None);
        }
        let mut frame = buf.split_to(frame_bytes);
        frame.advance(FRAME_HEADER_BYTES);
        let body = frame.freeze();
        let kind = FrameKind::from_u8(kind_byte).ok_or(FrameError::UnknownKind {
            kind: kind_byte,
            correlation_id,
        })?;
        Ok(Some(Frame {
            kind,
            correlation_id,
            body,
        }))
    }
}

/// The size of the frame that would carry `body`, header included: compare it with the
/// peer's `frame_bytes_max` before sending.
pub fn frame_bytes(body: &impl Message) -> usize {
    FRAME_HEADER_BYTES + body.encoded_len()
}

/// Appends one frame to `dst`. Callers bound bodies far below 4 GiB (by `frame_bytes_max`), so
/// a body whose length does not fit the length field is a programmer error.
pub fn encode_frame(kind: FrameKind, correlation_id: u32, body: &impl Message, dst: &mut BytesMut) {
    let body_bytes = body.encoded_len();
    let length = u32::try_from(FRAME_LENGTH_MIN as usize + body_bytes)
        .unwrap_or_else(|_| panic!("{kind:?} body of {body_bytes} bytes overflows the u32 length"));
    dst.reserve(FRAME_HEADER_BYTES + body_bytes);
    dst.put_u32(length);
    dst.put_u8(kind as u8);
    dst.put_u32(correlation_id);
    body.encode(dst)
        .expect("BytesMut grows to fit any message, and room was reserved");
}

/// Entry bodies at least this large go out as pieces of their own (see
/// [`Request::encode_pieces`]); smaller ones are copied with the rest of the frame.
pub const SHARED_BODY_MIN_BYTES: usize = crate::net::write::COALESCE_BELOW_BYTES;
/// `RaftEntry`'s field numbers of `body` and `batch` (proto/corelog.proto).
const ENTRY_BODY_FIELD: u32 = 6;
const ENTRY_BATCH_FIELD: u32 = 8;

/// An AppendEntries frame as pieces whose concatenation is exactly what [`encode_frame`]
/// writes (prost's field order: fields 1–4, each entry of field 5, field 6), with every
/// entry's records of at least [`SHARED_BODY_MIN_BYTES`] (a stored `batch`, or a normal
/// `body`) a piece of its own: the entry's `Bytes`, shared rather than copied. A leader sends
/// each entry to every follower, so prost copying each body into each follower's frame was a
/// copy per follower of all it replicates.
fn encode_append_pieces(correlation_id: u32, m: &RaftAppendRequest) -> Vec<Bytes> {
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, message};
    const ENTRIES_FIELD: u32 = 5;
    const LEADER_COMMIT_FIELD: u32 = 6;
    // Fields 1–4 (no entry is cloned).
    let head = RaftAppendRequest {
        partition: m.partition,
        from_node: m.from_node,
        vote: m.vote,
        prev_log_id: m.prev_log_id,
        entries: Vec::new(),
        leader_commit: None,
    };
    let body_bytes = m.encoded_len();
    let length = u32::try_from(FRAME_LENGTH_MIN as usize + body_bytes).unwrap_or_else(|_| {
        panic!("RaftAppend body of {body_bytes} bytes overflows the u32 length")
    });
    let mut pieces = Vec::new();
    let mut buf = BytesMut::with_capacity(FRAME_HEADER_BYTES + head.encoded_len() + 256);
    buf.put_u32(length);
    buf.put_u8(FrameKind::RaftAppend as u8);
    buf.put_u32(correlation_id);
    head.encode(&mut buf)
        .expect("BytesMut grows to fit any message");
    for entry in &m.entries {
        let Some((field, shared)) = shared_tail(entry) else {
            message::encode(ENTRIES_FIELD, entry, &mut buf);
            continue;
        };
        let rest = without_tail(entry, field);
        let shared_field = prost::encoding::key_len(field)
            + encoded_len_varint(shared.len() as u64)
            + shared.len();
        let entry_len = rest.encoded_len() + shared_field;
        encode_key(ENTRIES_FIELD, WireType::LengthDelimited, &mut buf);
        encode_varint(entry_len as u64, &mut buf);
        rest.encode(&mut buf)
            .expect("BytesMut grows to fit any message");
        encode_key(field, WireType::LengthDelimited, &mut buf);
        encode_varint(shared.len() as u64, &mut buf);
        pieces.push(buf.split().freeze());
        pieces.push(shared.clone());
    }
    if let Some(commit) = &m.leader_commit {
        message::encode(LEADER_COMMIT_FIELD, commit, &mut buf);
    }
    if !buf.is_empty() {
        pieces.push(buf.freeze());
    }
    pieces
}

/// The entry's last encoded field, when it is records worth sharing: its field number and
/// its bytes. prost writes fields in number order and skips empty ones, so `batch` (8) is last
/// when set, and `body` (6) when `membership_json` (7) and `batch` are empty.
fn shared_tail(e: &crate::proto::RaftEntry) -> Option<(u32, &Bytes)> {
    if !e.batch.is_empty() {
        return (e.batch.len() >= SHARED_BODY_MIN_BYTES).then_some((ENTRY_BATCH_FIELD, &e.batch));
    }
    (e.body.len() >= SHARED_BODY_MIN_BYTES && e.membership_json.is_empty())
        .then_some((ENTRY_BODY_FIELD, &e.body))
}

/// `e` without its shared tail field (`field`, from [`shared_tail`]).
fn without_tail(e: &crate::proto::RaftEntry, field: u32) -> crate::proto::RaftEntry {
    let mut rest = e.clone();
    if field == ENTRY_BATCH_FIELD {
        rest.batch = Bytes::new();
    } else {
        rest.body = Bytes::new();
    }
    rest
}

/// A request body, decoded by its frame kind.
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    Produce(ProduceRequest),
    Consume(ConsumeRequest),
    Subscribe(SubscribeRequest),
    SubscribeCredit(SubscribeCredit),
    SubscribeCancel(SubscribeCancel),
    Metadata(MetadataRequest),
    GetServers(GetServersRequest),
    Join(JoinRequest),
    Leave(LeaveRequest),
    RaftAppend(RaftAppendRequest),
    RaftVote(RaftVoteRequest),
    RaftSnapshot(RaftSnapshotRequest),
    RaftTransferLeader(RaftTransferLeaderRequest),
}

impl Request {
    pub fn kind(&self) -> FrameKind {
        match self {
            Request::Produce(_) => FrameKind::Produce,
            Request::Consume(_) => FrameKind::Consume,
            Request::Subscribe(_) => FrameKind::Subscribe,
            Request::SubscribeCredit(_) => FrameKind::SubscribeCredit,
            Request::SubscribeCancel(_) => FrameKind::SubscribeCancel,
            Request::Metadata(_) => FrameKind::Metadata,
            Request::GetServers(_) => FrameKind::GetServers,
            Request::Join(_) => FrameKind::Join,
            Request::Leave(_) => FrameKind::Leave,
            Request::RaftAppend(_) => FrameKind::RaftAppend,
            Request::RaftVote(_) => FrameKind::RaftVote,
            Request::RaftSnapshot(_) => FrameKind::RaftSnapshot,
            Request::RaftTransferLeader(_) => FrameKind::RaftTransferLeader,
        }
    }

    /// Appends this request as one frame. `correlation_id` must not be 0.
    pub fn encode(&self, correlation_id: u32, dst: &mut BytesMut) {
        assert_ne!(
            correlation_id, CORRELATION_ID_CONNECTION,
            "correlation id 0 is reserved for the server"
        );
        let kind = self.kind();
        match self {
            Request::Produce(m) => encode_frame(kind, correlation_id, m, dst),
            Request::Consume(m) => encode_frame(kind, correlation_id, m, dst),
            Request::Subscribe(m) => encode_frame(kind, correlation_id, m, dst),
            Request::SubscribeCredit(m) => encode_frame(kind, correlation_id, m, dst),
            Request::SubscribeCancel(m) => encode_frame(kind, correlation_id, m, dst),
            Request::Metadata(m) => encode_frame(kind, correlation_id, m, dst),
            Request::GetServers(m) => encode_frame(kind, correlation_id, m, dst),
            Request::Join(m) => encode_frame(kind, correlation_id, m, dst),
            Request::Leave(m) => encode_frame(kind, correlation_id, m, dst),
            Request::RaftAppend(m) => encode_frame(kind, correlation_id, m, dst),
            Request::RaftVote(m) => encode_frame(kind, correlation_id, m, dst),
            Request::RaftSnapshot(m) => encode_frame(kind, correlation_id, m, dst),
            Request::RaftTransferLeader(m) => encode_frame(kind, correlation_id, m, dst),
        }
    }

    /// This request's frame as pieces to write in order: one buffer, except that an
    /// AppendEntries frame shares its entries' large records (bodies or stored batches)
    /// instead of copying them
    /// ([`SHARED_BODY_MIN_BYTES`]). The pieces' concatenation is what [`Request::encode`]
    /// writes.
    pub fn encode_pieces(&self, correlation_id: u32) -> Vec<Bytes> {
        match self {
            Request::RaftAppend(m) if m.entries.iter().any(|e| shared_tail(e).is_some()) => {
                assert_ne!(
                    correlation_id, CORRELATION_ID_CONNECTION,
                    "correlation id 0 is reserved for the server"
                );
                encode_append_pieces(correlation_id, m)
            }
            _ => {
                let mut buf = BytesMut::with_capacity(self.frame_bytes());
                self.encode(correlation_id, &mut buf);
                vec![buf.freeze()]
            }
        }
    }

    /// The size of this request's frame, header included.
    pub fn frame_bytes(&self) -> usize {
        match self {
            Request::Produce(m) => frame_bytes(m),
            Request::Consume(m) => frame_bytes(m),
            Request::Subscribe(m) => frame_bytes(m),
            Request::SubscribeCredit(m) => frame_bytes(m),
            Request::SubscribeCancel(m) => frame_bytes(m),
            Request::Metadata(m) => frame_bytes(m),
            Request::GetServers(m) => frame_bytes(m),
            Request::Join(m) => frame_bytes(m),
            Request::Leave(m) => frame_bytes(m),
            Request::RaftAppend(m) => frame_bytes(m),
            Request::RaftVote(m) => frame_bytes(m),
            Request::RaftSnapshot(m) => frame_bytes(m),
            Request::RaftTransferLeader(m) => frame_bytes(m),
        }
    }
}

/// A response body, decoded by its frame kind.
#[derive(Clone, Debug, PartialEq)]
pub enum Response {
    Produce(ProduceResponse),
    Consume(ConsumeResponse),
    SubscribeEvent(SubscribeEvent),
    SubscribeCancel(SubscribeCancelResponse),
    Metadata(MetadataResponse),
    GetServers(GetServersResponse),
    Join(JoinResponse),
    Leave(LeaveResponse),
    RaftAppend(RaftAppendResponse),
    RaftVote(RaftVoteResponse),
    RaftSnapshot(RaftSnapshotResponse),
    RaftTransferLeader(RaftTransferLeaderResponse),
    Error(ErrorResponse),
}

impl Response {
    pub fn kind(&self) -> FrameKind {
        match self {
            Response::Produce(_) => FrameKind::ProduceResponse,
            Response::Consume(_) => FrameKind::ConsumeResponse,
            Response::SubscribeEvent(_) => FrameKind::SubscribeEvent,
            Response::SubscribeCancel(_) => FrameKind::SubscribeCancelResponse,
            Response::Metadata(_) => FrameKind::MetadataResponse,
            Response::GetServers(_) => FrameKind::GetServersResponse,
            Response::Join(_) => FrameKind::JoinResponse,
            Response::Leave(_) => FrameKind::LeaveResponse,
            Response::RaftAppend(_) => FrameKind::RaftAppendResponse,
            Response::RaftVote(_) => FrameKind::RaftVoteResponse,
            Response::RaftSnapshot(_) => FrameKind::RaftSnapshotResponse,
            Response::RaftTransferLeader(_) => FrameKind::RaftTransferLeaderResponse,
            Response::Error(_) => FrameKind::Error,
        }
    }

    /// Appends this response as one frame carrying the request's correlation id.
    pub fn encode(&self, correlation_id: u32, dst: &mut BytesMut) {
        let kind = self.kind();
        match self {
            Response::Produce(m) => encode_frame(kind, correlation_id, m, dst),
            Response::Consume(m) => encode_frame(kind, correlation_id, m, dst),
            Response::SubscribeEvent(m) => encode_frame(kind, correlation_id, m, dst),
            Response::SubscribeCancel(m) => encode_frame(kind, correlation_id, m, dst),
            Response::Metadata(m) => encode_frame(kind, correlation_id, m, dst),
            Response::GetServers(m) => encode_frame(kind, correlation_id, m, dst),
            Response::Join(m) => encode_frame(kind, correlation_id, m, dst),
            Response::Leave(m) => encode_frame(kind, correlation_id, m, dst),
            Response::RaftAppend(m) => encode_frame(kind, correlation_id, m, dst),
            Response::RaftVote(m) => encode_frame(kind, correlation_id, m, dst),
            Response::RaftSnapshot(m) => encode_frame(kind, correlation_id, m, dst),
            Response::RaftTransferLeader(m) => encode_frame(kind, correlation_id, m, dst),
            Response::Error(m) => encode_frame(kind, correlation_id, m, dst),
        }
    }

    /// The size of this response's frame, header included.
    pub fn frame_bytes(&self) -> usize {
        match self {
            Response::Produce(m) => frame_bytes(m),
            Response::Consume(m) => frame_bytes(m),
            Response::SubscribeEvent(m) => frame_bytes(m),
            Response::SubscribeCancel(m) => frame_bytes(m),
            Response::Metadata(m) => frame_bytes(m),
            Response::GetServers(m) => frame_bytes(m),
            Response::Join(m) => frame_bytes(m),
            Response::Leave(m) => frame_bytes(m),
            Response::RaftAppend(m) => frame_bytes(m),
            Response::RaftVote(m) => frame_bytes(m),
            Response::RaftSnapshot(m) => frame_bytes(m),
            Response::RaftTransferLeader(m) => frame_bytes(m),
            Response::Error(m) => frame_bytes(m),
        }
    }
}

/// Decodes a frame a client sent. Response kinds are `UnexpectedKind`, correlation id 0 is
/// `ReservedCorrelationId`, an invalid body is `BadBody`.
pub fn decode_request(frame: &Frame) -> Result<Request, FrameError> {
    let Frame {
        kind,
        correlation_id,
        ref body,
    } = *frame;
    if kind.is_request() && correlation_id == CORRELATION_ID_CONNECTION {
        return Err(FrameError::ReservedCorrelationId { kind });
    }
    let bad_body = |source| FrameError::BadBody {
        kind,
        correlation_id,
        source,
    };
    let body = body.clone();
    let request = match kind {
        FrameKind::Produce => Request::Produce(ProduceRequest::decode(body).map_err(bad_body)?),
        FrameKind::Consume => Request::Consume(ConsumeRequest::decode(body).map_err(bad_body)?),
        FrameKind::Subscribe => {
            Request::Subscribe(SubscribeRequest::decode(body).map_err(bad_body)?)
        }
        FrameKind::SubscribeCredit => {
            Request::SubscribeCredit(SubscribeCredit::decode(body).map_err(bad_body)?)
        }
        FrameKind::SubscribeCancel => {
            Request::SubscribeCancel(SubscribeCancel::decode(body).map_err(bad_body)?)
        }
        FrameKind::Metadata => Request::Metadata(MetadataRequest::decode(body).map_err(bad_body)?),
        FrameKind::GetServers => {
            Request::GetServers(GetServersRequest::decode(body).map_err(bad_body)?)
        }
        FrameKind::Join => Request::Join(JoinRequest::decode(body).map_err(bad_body)?),
        FrameKind::Leave => Request::Leave(LeaveRequest::decode(body).map_err(bad_body)?),
        FrameKind::RaftAppend => {
            Request::RaftAppend(RaftAppendRequest::decode(body).map_err(bad_body)?)
        }
        FrameKind::RaftVote => Request::RaftVote(RaftVoteRequest::decode(body).map_err(bad_body)?),
        FrameKind::RaftSnapshot => {
            Request::RaftSnapshot(RaftSnapshotRequest::decode(body).map_err(bad_body)?)
        }
        FrameKind::RaftTransferLeader => {
            Request::RaftTransferLeader(RaftTransferLeaderRequest::decode(body).map_err(bad_body)?)
        }
        FrameKind::ProduceResponse
        | FrameKind::ConsumeResponse
        | FrameKind::SubscribeEvent
        | FrameKind::SubscribeCancelResponse
        | FrameKind::MetadataResponse
        | FrameKind::GetServersResponse
        | FrameKind::JoinResponse
        | FrameKind::LeaveResponse
        | FrameKind::RaftAppendResponse
        | FrameKind::RaftVoteResponse
        | FrameKind::RaftSnapshotResponse
        | FrameKind::RaftTransferLeaderResponse
        | FrameKind::Error => {
            return Err(FrameError::UnexpectedKind {
                kind,
                correlation_id,
            });
        }
    };
    Ok(request)
}

/// Decodes a frame the server sent. Request kinds are `UnexpectedKind`, an invalid body is
/// `BadBody`.
pub fn decode_response(frame: &Frame) -> Result<Response, FrameError> {
    let Frame {
        kind,
        correlation_id,
        ref body,
    } = *frame;
    let bad_body = |source| FrameError::BadBody {
        kind,
        correlation_id,
        source,
    };
    let body = body.clone();
    let response = match kind {
        FrameKind::ProduceResponse => {
            Response::Produce(ProduceResponse::decode(body).map_err(bad_body)?)
        }
        FrameKind::ConsumeResponse => {
            Response::Consume(ConsumeResponse::decode(body).map_err(bad_body)?)
        }
        FrameKind::SubscribeEvent => {
            Response::SubscribeEvent(SubscribeEvent::decode(body).map_err(bad_body)?)
        }
        FrameKind::SubscribeCancelResponse => {
            Response::SubscribeCancel(SubscribeCancelResponse::decode(body).map_err(bad_body)?)
        }
        FrameKind::MetadataResponse => {
            Response::Metadata(MetadataResponse::decode(body).map_err(bad_body)?)
        }
        FrameKind::GetServersResponse => {
            Response::GetServers(GetServersResponse::decode(body).map_err(bad_body)?)
        }
        FrameKind::JoinResponse => Response::Join(JoinResponse::decode(body).map_err(bad_body)?),
        FrameKind::LeaveResponse => Response::Leave(LeaveResponse::decode(body).map_err(bad_body)?),
        FrameKind::RaftAppendResponse => {
            Response::RaftAppend(RaftAppendResponse::decode(body).map_err(bad_body)?)
        }
        FrameKind::RaftVoteResponse => {
            Response::RaftVote(RaftVoteResponse::decode(body).map_err(bad_body)?)
        }
        FrameKind::RaftSnapshotResponse => {
            Response::RaftSnapshot(RaftSnapshotResponse::decode(body).map_err(bad_body)?)
        }
        FrameKind::RaftTransferLeaderResponse => Response::RaftTransferLeader(
            RaftTransferLeaderResponse::decode(body).map_err(bad_body)?,
        ),
        FrameKind::Error => Response::Error(ErrorResponse::decode(body).map_err(bad_body)?),
        FrameKind::Produce
        | FrameKind::Consume
        | FrameKind::Subscribe
        | FrameKind::SubscribeCredit
        | FrameKind::SubscribeCancel
        | FrameKind::Metadata
        | FrameKind::GetServers
        | FrameKind::Join
        | FrameKind::Leave
        | FrameKind::RaftAppend
        | FrameKind::RaftVote
        | FrameKind::RaftSnapshot
        | FrameKind::RaftTransferLeader => {
            return Err(FrameError::UnexpectedKind {
                kind,
                correlation_id,
            });
        }
    };
    Ok(response)
}

/// The big-endian u32 at `at`, if `buf` holds it.
fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    let bytes = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{
        RaftEntry, RaftEntryKind, RaftLogId, RaftSnapshotMeta, RaftTransferLeaderResult, RaftVote,
        Record, Server,
    };
    use rand::{RngExt, SeedableRng};

    fn produce(partition: u32, records: &[&[u8]]) -> Request {
        Request::Produce(ProduceRequest {
            partition,
            records: records.iter().map(|r| Bytes::copy_from_slice(r)).collect(),
        })
    }

    fn every_request() -> Vec<Request> {
        vec![
            produce(1, &[b"hi", b"", &[0xFF; 300]]),
            Request::Consume(ConsumeRequest {
                partition: 2,
                offset: 1 << 40,
                max_bytes: 1 << 20,
                max_wait_ms: 500,
                linearizable: true,
            }),
            Request::Join(JoinRequest {
                partition: 1,
                node_id: 4,
                addr: "127.0.0.1:7404".into(),
            }),
            Request::Leave(LeaveRequest {
                partition: 1,
                node_id: 4,
            }),
            Request::Subscribe(SubscribeRequest {
                partition: 3,
                offset: 7,
                max_bytes: 4096,
                credits: 8,
            }),
            Request::SubscribeCredit(SubscribeCredit { credits: 4 }),
            Request::SubscribeCancel(SubscribeCancel {}),
            Request::Metadata(MetadataRequest {}),
            Request::GetServers(GetServersRequest {}),
            Request::RaftAppend(RaftAppendRequest {
                partition: 4,
                from_node: 1,
                vote: Some(vote(3, 1, true)),
                prev_log_id: Some(log_id(2, 9)),
                entries: vec![
                    RaftEntry {
                        term: 3,
                        index: 10,
                        kind: RaftEntryKind::Normal as i32,
                        timestamp_ms: 1_700_000_000_000,
                        count: 1,
                        body: Bytes::from_static(b"\x02\0\0\0hi"),
                        membership_json: Bytes::new(),
                        batch: Bytes::new(),
                    },
                    RaftEntry {
                        term: 3,
                        index: 11,
                        kind: RaftEntryKind::Blank as i32,
                        ..RaftEntry::default()
                    },
                ],
                leader_commit: None,
            }),
            Request::RaftVote(RaftVoteRequest {
                partition: 4,
                from_node: 2,
                vote: Some(vote(4, 2, false)),
                last_log_id: Some(log_id(3, 11)),
                leadership_transfer: true,
                pre_vote: true,
            }),
            Request::RaftSnapshot(RaftSnapshotRequest {
                partition: 4,
                from_node: 1,
                transfer_id: 77,
                chunk_index: 0,
                vote: Some(vote(3, 1, true)),
                meta: Some(RaftSnapshotMeta {
                    last_log_id: Some(log_id(3, 11)),
                    membership_log_id: Some(log_id(1, 0)),
                    membership_json: Bytes::from_static(b"{}"),
                }),
                batches: vec![Bytes::from_static(b"batch")],
                last: true,
                end_offset: Some(960),
                snapshot_bytes: Some(5),
            }),
            Request::RaftTransferLeader(RaftTransferLeaderRequest {
                partition: 4,
                from_node: 1,
                from_leader: Some(vote(3, 1, true)),
                to_node_id: 2,
                last_log_id: None,
            }),
        ]
    }

    fn vote(term: u64, node_id: u64, committed: bool) -> RaftVote {
        RaftVote {
            term,
            node_id,
            committed,
        }
    }

    fn log_id(term: u64, index: u64) -> RaftLogId {
        RaftLogId { term, index }
    }

    fn every_response() -> Vec<Response> {
        let records = vec![
            Record {
                value: Bytes::from_static(b"a"),
                offset: 10,
            },
            Record {
                value: Bytes::from_static(b"bc"),
                offset: 11,
            },
        ];
        vec![
            Response::Produce(ProduceResponse {
                base_offset: 42,
                record_count: 3,
            }),
            Response::Consume(ConsumeResponse {
                records: records.clone(),
                high_watermark: 12,
                log_start_offset: 0,
            }),
            Response::SubscribeEvent(SubscribeEvent {
                records,
                high_watermark: 12,
            }),
            Response::SubscribeCancel(SubscribeCancelResponse {}),
            Response::Metadata(MetadataResponse {
                node_id: "node-1".into(),
                cores: 4,
                partitions: vec![crate::proto::PartitionInfo {
                    partition: 0,
                    owner_core: 1,
                    leader_id: "node-1".into(),
                    log_start_offset: 0,
                    high_watermark: 12,
                    members: vec![crate::proto::Member {
                        node_id: 1,
                        addr: "127.0.0.1:7400".into(),
                        voter: true,
                    }],
                }],
            }),
            Response::GetServers(GetServersResponse {
                servers: vec![Server {
                    id: "node-1".into(),
                    rpc_addr: "127.0.0.1:7400".into(),
                    is_leader: true,
                    partitions_led: vec![0, 1],
                    partitions_voter: vec![0, 1],
                    partitions_learner: vec![2],
                }],
            }),
            Response::Join(JoinResponse { voter: true }),
            Response::Leave(LeaveResponse {}),
            Response::RaftAppend(RaftAppendResponse {
                result: crate::proto::RaftAppendResult::PartialSuccess as i32,
                matched: Some(log_id(3, 10)),
                higher_vote: None,
                stored_batches: true,
            }),
            Response::RaftVote(RaftVoteResponse {
                vote: Some(vote(4, 2, false)),
                vote_granted: true,
                last_log_id: None,
            }),
            Response::RaftSnapshot(RaftSnapshotResponse {
                vote: Some(vote(3, 1, true)),
            }),
            Response::RaftTransferLeader(RaftTransferLeaderResponse {
                result: RaftTransferLeaderResult::VoteChanged as i32,
                expected_vote: Some(vote(3, 1, true)),
                actual_vote: Some(vote(5, 3, false)),
                expected_log_id: None,
                actual_log_id: None,
            }),
            Response::Error(crate::net::errors::wrong_core(crate::Partition(1), 2)),
        ]
    }

    fn encoded_requests(requests: &[Request]) -> BytesMut {
        let mut buf = BytesMut::new();
        for (i, request) in requests.iter().enumerate() {
            request.encode(i as u32 + 1, &mut buf);
        }
        buf
    }

    fn decode_all(buf: &mut BytesMut) -> Vec<Frame> {
        let mut decoder = FrameDecoder::default();
        let mut frames = Vec::new();
        while let Some(frame) = decoder.decode(buf).expect("valid frames") {
            frames.push(frame);
        }
        frames
    }

    #[test]
    fn documented_produce_frame_has_these_exact_bytes() {
        // docs/PROTOCOL.md, "Framing": the hex example must stay true.
        let mut buf = BytesMut::new();
        produce(1, &[b"hi"]).encode(7, &mut buf);
        assert_eq!(
            &buf[..],
            &[
                0x00, 0x00, 0x00, 0x0B, 0x01, 0x00, 0x00, 0x00, 0x07, 0x08, 0x01, 0x12, 0x02, 0x68,
                0x69
            ]
        );
        let mut buf = BytesMut::new();
        Response::Produce(ProduceResponse {
            base_offset: 42,
            record_count: 1,
        })
        .encode(7, &mut buf);
        assert_eq!(
            &buf[..],
            &[
                0x00, 0x00, 0x00, 0x09, 0x81, 0x00, 0x00, 0x00, 0x07, 0x08, 0x2A, 0x10, 0x01
            ]
        );
    }

    #[test]
    fn every_request_round_trips() {
        for request in every_request() {
            let mut buf = BytesMut::new();
            request.encode(99, &mut buf);
            assert_eq!(buf.len(), request.frame_bytes());
            let frame = FrameDecoder::default().decode(&mut buf).unwrap().unwrap();
            assert!(buf.is_empty());
            assert_eq!((frame.kind, frame.correlation_id), (request.kind(), 99));
            assert_eq!(decode_request(&frame).unwrap(), request);
        }
    }

    #[test]
    fn every_response_round_trips() {
        for response in every_response() {
            let mut buf = BytesMut::new();
            response.encode(u32::MAX, &mut buf);
            assert_eq!(buf.len(), response.frame_bytes());
            let frame = FrameDecoder::default().decode(&mut buf).unwrap().unwrap();
            assert!(buf.is_empty());
            assert_eq!(
                (frame.kind, frame.correlation_id),
                (response.kind(), u32::MAX)
            );
            assert_eq!(decode_response(&frame).unwrap(), response);
        }
    }

    #[test]
    fn response_kinds_are_request_kinds_with_the_high_bit() {
        let pairs = [
            (FrameKind::Produce, FrameKind::ProduceResponse),
            (FrameKind::Consume, FrameKind::ConsumeResponse),
            (FrameKind::Subscribe, FrameKind::SubscribeEvent),
            (
                FrameKind::SubscribeCancel,
                FrameKind::SubscribeCancelResponse,
            ),
            (FrameKind::Metadata, FrameKind::MetadataResponse),
            (FrameKind::GetServers, FrameKind::GetServersResponse),
            (FrameKind::RaftAppend, FrameKind::RaftAppendResponse),
            (FrameKind::RaftVote, FrameKind::RaftVoteResponse),
            (FrameKind::RaftSnapshot, FrameKind::RaftSnapshotResponse),
            (
                FrameKind::RaftTransferLeader,
                FrameKind::RaftTransferLeaderResponse,
            ),
        ];
        for (request, response) in pairs {
            assert_eq!(request as u8 | 0x80, response as u8);
            assert!(request.is_request() && !response.is_request());
        }
        assert!(!FrameKind::Error.is_request());
    }

    #[test]
    fn every_kind_byte_decodes_to_itself() {
        for kind in FrameKind::ALL {
            assert_eq!(FrameKind::from_u8(kind as u8), Some(kind));
        }
        let mut known = 0;
        for byte in 0..=u8::MAX {
            if let Some(kind) = FrameKind::from_u8(byte) {
                assert_eq!(kind as u8, byte);
                known += 1;
            }
        }
        assert_eq!(known, FrameKind::ALL.len(), "ALL lists every kind once");
        assert_eq!(FrameKind::from_u8(0), None);
    }

    #[test]
    fn peer_kinds_sit_in_the_peer_range_and_client_kinds_do_not() {
        for kind in FrameKind::ALL {
            let byte = kind as u8 & 0x7F;
            assert_eq!(
                kind.is_peer(),
                PEER_REQUEST_KINDS.contains(&byte),
                "{kind:?}"
            );
        }
        let peer: Vec<_> = FrameKind::ALL.into_iter().filter(|k| k.is_peer()).collect();
        assert_eq!(peer.len(), 8, "four peer requests and their responses");
        assert!(!FrameKind::Error.is_peer());
        // The rest of the range stays free for later peer messages.
        for byte in 0x44..=0x7E {
            assert_eq!(FrameKind::from_u8(byte), None);
            assert_eq!(FrameKind::from_u8(byte | 0x80), None);
        }
    }

    #[test]
    fn peer_requests_and_responses_decode_only_in_their_direction() {
        for request in every_request().into_iter().filter(|r| r.kind().is_peer()) {
            let mut buf = BytesMut::new();
            request.encode(5, &mut buf);
            let frame = FrameDecoder::default().decode(&mut buf).unwrap().unwrap();
            assert!(matches!(
                decode_response(&frame),
                Err(FrameError::UnexpectedKind { .. })
            ));
        }
        for response in every_response().into_iter().filter(|r| r.kind().is_peer()) {
            let mut buf = BytesMut::new();
            response.encode(5, &mut buf);
            let frame = FrameDecoder::default().decode(&mut buf).unwrap().unwrap();
            assert!(matches!(
                decode_request(&frame),
                Err(FrameError::UnexpectedKind { .. })
            ));
        }
    }

    #[test]
    fn decoder_fed_byte_by_byte_yields_each_frame_once_complete() {
        let requests = every_request();
        let wire = encoded_requests(&requests);
        let mut decoder = FrameDecoder::default();
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        for &byte in wire.iter() {
            buf.put_u8(byte);
            while let Some(frame) = decoder.decode(&mut buf).unwrap() {
                decoded.push(decode_request(&frame).unwrap());
            }
        }
        assert!(buf.is_empty());
        assert_eq!(decoded, requests);
    }

    #[test]
    fn many_frames_in_one_buffer_decode_in_order() {
        let requests: Vec<Request> = (0..100).map(|p| produce(p, &[b"x"])).collect();
        let mut buf = encoded_requests(&requests);
        let frames = decode_all(&mut buf);
        assert!(buf.is_empty());
        let ids: Vec<u32> = frames.iter().map(|f| f.correlation_id).collect();
        assert_eq!(ids, (1..=100).collect::<Vec<u32>>());
        let decoded: Vec<Request> = frames.iter().map(|f| decode_request(f).unwrap()).collect();
        assert_eq!(decoded, requests);
    }

    #[test]
    fn body_and_record_values_share_the_read_buffer() {
        let mut buf = BytesMut::new();
        produce(0, &[&[7u8; 1000]]).encode(1, &mut buf);
        let start = buf.as_ptr() as usize;
        let end = start + buf.len();
        let frame = FrameDecoder::default().decode(&mut buf).unwrap().unwrap();
        let Request::Produce(request) = decode_request(&frame).unwrap() else {
            panic!("not a produce");
        };
        let value = request.records[0].as_ptr() as usize;
        assert!((start..end).contains(&value), "the record value was copied");
    }

    /// An AppendEntries request whose entries have these body sizes (0: a blank entry; a
    /// membership entry in the middle), with or without the optional log ids.
    fn append_with_bodies(bodies: &[usize], with_ids: bool) -> RaftAppendRequest {
        let mut entries: Vec<RaftEntry> = bodies
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                let records = Bytes::from(vec![i as u8; len]);
                match (len, i % 2) {
                    (0, _) => RaftEntry {
                        term: 3,
                        index: 10 + i as u64,
                        kind: RaftEntryKind::Blank as i32,
                        ..RaftEntry::default()
                    },
                    // Every other entry as a stored batch (the frame does not look inside).
                    (_, 1) => RaftEntry {
                        term: 3,
                        index: 10 + i as u64,
                        kind: RaftEntryKind::StoredBatch as i32,
                        batch: records,
                        ..RaftEntry::default()
                    },
                    _ => RaftEntry {
                        term: 3,
                        index: 10 + i as u64,
                        kind: RaftEntryKind::Normal as i32,
                        timestamp_ms: 1_700_000_000_000 + i as i64,
                        count: 1,
                        body: records,
                        ..RaftEntry::default()
                    },
                }
            })
            .collect();
        if entries.len() > 1 {
            entries.insert(
                1,
                RaftEntry {
                    term: 3,
                    index: 99,
                    kind: RaftEntryKind::Membership as i32,
                    membership_json: Bytes::from_static(b"{\"configs\":[[1,2,3]]}"),
                    ..RaftEntry::default()
                },
            );
        }
        RaftAppendRequest {
            partition: 7,
            from_node: 2,
            vote: Some(vote(3, 2, true)),
            prev_log_id: with_ids.then(|| log_id(3, 9)),
            entries,
            leader_commit: with_ids.then(|| log_id(2, 8)),
        }
    }

    #[test]
    fn append_pieces_are_the_encoded_frame_and_share_the_large_bodies_and_batches() {
        let big = SHARED_BODY_MIN_BYTES;
        let cases: &[&[usize]] = &[
            &[],
            &[10],
            &[big],
            &[big - 1, big],
            &[big, 0, 100, big * 3, 300_000],
            &[10, big, big, 5, 0, big * 2],
            &[0, 0],
        ];
        for bodies in cases {
            for with_ids in [false, true] {
                let request = Request::RaftAppend(append_with_bodies(bodies, with_ids));
                let mut whole = BytesMut::new();
                request.encode(42, &mut whole);
                let pieces = request.encode_pieces(42);
                assert_eq!(
                    pieces.concat(),
                    whole.to_vec(),
                    "{bodies:?} with_ids={with_ids}: the pieces are the frame"
                );
                let Request::RaftAppend(m) = &request else {
                    unreachable!()
                };
                let large: Vec<&Bytes> = m
                    .entries
                    .iter()
                    .flat_map(|e| [&e.body, &e.batch])
                    .filter(|b| b.len() >= big)
                    .collect();
                for body in &large {
                    assert!(
                        pieces
                            .iter()
                            .any(|p| p.as_ptr() == body.as_ptr() && p.len() == body.len()),
                        "{bodies:?}: a body of {} bytes was copied",
                        body.len()
                    );
                }
                let expected_pieces = if large.is_empty() {
                    1
                } else {
                    2 * large.len() + 1
                };
                assert!(
                    pieces.len() <= expected_pieces,
                    "{bodies:?}: {} pieces",
                    pieces.len()
                );
                let mut buf = BytesMut::from(&pieces.concat()[..]);
                let frame = FrameDecoder::default().decode(&mut buf).unwrap().unwrap();
                assert_eq!(decode_request(&frame).unwrap(), request);
            }
        }
    }

    #[test]
    fn an_incomplete_frame_says_its_size_once_its_header_is_in() {
        let mut whole = BytesMut::new();
        produce(1, &[&[7u8; 1000][..]]).encode(5, &mut whole);
        let decoder = FrameDecoder::default();
        for cut in 0..=whole.len() {
            let expected = (cut >= FRAME_HEADER_BYTES && cut < whole.len()).then_some(whole.len());
            assert_eq!(
                decoder.incomplete_frame_bytes(&whole[..cut]),
                expected,
                "{cut} bytes"
            );
        }
        // Over the limit or under the minimum length: decode refuses it, so no size.
        let mut huge = BytesMut::new();
        huge.put_u32(u32::MAX - 4);
        huge.put_u8(FrameKind::Produce as u8);
        huge.put_u32(9);
        assert_eq!(decoder.incomplete_frame_bytes(&huge), None);
        let mut tiny = huge.clone();
        tiny[..4].copy_from_slice(&1u32.to_be_bytes());
        assert_eq!(decoder.incomplete_frame_bytes(&tiny), None);
    }

    #[test]
    fn truncated_frame_returns_none_and_keeps_the_bytes() {
        let mut whole = BytesMut::new();
        produce(1, &[b"hello"]).encode(5, &mut whole);
        for cut in 0..whole.len() {
            let mut buf = BytesMut::from(&whole[..cut]);
            assert_eq!(
                FrameDecoder::default().decode(&mut buf),
                Ok(None),
                "cut {cut}"
            );
            assert_eq!(buf.len(), cut);
        }
    }

    #[test]
    fn length_over_the_max_is_refused_before_the_body_arrives() {
        let mut decoder = FrameDecoder::new(FRAME_BYTES_MAX_MIN);
        let mut buf = BytesMut::new();
        // With the length field itself, one byte over the limit.
        buf.put_u32((FRAME_BYTES_MAX_MIN - FRAME_LENGTH_BYTES + 1) as u32);
        buf.put_u8(FrameKind::Produce as u8);
        buf.put_u32(77);
        assert_eq!(
            decoder.decode(&mut buf),
            Err(FrameError::TooLarge {
                frame_bytes: FRAME_BYTES_MAX_MIN as u64 + 1,
                frame_bytes_max: FRAME_BYTES_MAX_MIN as u64,
                correlation_id: 77,
            })
        );
        let err = decoder.decode(&mut buf).unwrap_err();
        assert!(err.is_fatal());
        assert_eq!(err.correlation_id(), 77);
    }

    #[test]
    fn huge_length_is_refused_without_allocating() {
        let mut buf = BytesMut::new();
        buf.put_u32(u32::MAX);
        buf.put_u8(FrameKind::Produce as u8);
        buf.put_u32(1);
        let capacity = buf.capacity();
        assert!(matches!(
            FrameDecoder::default().decode(&mut buf),
            Err(FrameError::TooLarge { frame_bytes, .. }) if frame_bytes == u32::MAX as u64 + 4
        ));
        assert_eq!(buf.capacity(), capacity);
    }

    #[test]
    fn frame_of_exactly_the_max_is_accepted() {
        let max = FRAME_BYTES_MAX_MIN;
        let mut buf = BytesMut::new();
        buf.put_u32((max - FRAME_LENGTH_BYTES) as u32);
        buf.put_u8(FrameKind::Metadata as u8);
        buf.put_u32(1);
        // Field 15 (unknown to MetadataRequest, so skipped), length-delimited, padding the
        // body to the limit: tag 0x7A, 2-byte length varint.
        let padding = max - FRAME_HEADER_BYTES - 3;
        buf.put_u8(0x7A);
        buf.put_u8((padding as u8 & 0x7F) | 0x80);
        buf.put_u8((padding >> 7) as u8);
        buf.put_bytes(0, padding);
        let frame = FrameDecoder::new(max).decode(&mut buf).unwrap().unwrap();
        assert_eq!(frame.body.len(), max - FRAME_HEADER_BYTES);
        assert_eq!(
            decode_request(&frame),
            Ok(Request::Metadata(MetadataRequest {}))
        );
    }

    #[test]
    fn zero_and_short_lengths_are_malformed() {
        for length in 0..FRAME_LENGTH_MIN {
            let mut buf = BytesMut::new();
            buf.put_u32(length);
            let err = FrameDecoder::default().decode(&mut buf).unwrap_err();
            assert_eq!(err, FrameError::Malformed { length });
            assert!(err.is_fatal());
            assert_eq!(err.correlation_id(), CORRELATION_ID_CONNECTION);
        }
    }

    #[test]
    fn empty_body_is_a_valid_frame() {
        let mut buf = BytesMut::new();
        Request::Metadata(MetadataRequest {}).encode(3, &mut buf);
        assert_eq!(&buf[..], &[0, 0, 0, 5, 0x06, 0, 0, 0, 3]);
        let frame = FrameDecoder::default().decode(&mut buf).unwrap().unwrap();
        assert!(frame.body.is_empty());
    }

    #[test]
    fn unknown_kind_is_consumed_and_decoding_continues() {
        let mut buf = BytesMut::new();
        buf.put_u32(FRAME_LENGTH_MIN + 2);
        buf.put_u8(0x7E);
        buf.put_u32(11);
        buf.put_slice(b"??");
        produce(1, &[b"next"]).encode(12, &mut buf);
        let mut decoder = FrameDecoder::default();
        let err = decoder.decode(&mut buf).unwrap_err();
        assert_eq!(
            err,
            FrameError::UnknownKind {
                kind: 0x7E,
                correlation_id: 11
            }
        );
        assert!(!err.is_fatal());
        assert_eq!(err.correlation_id(), 11);
        let next = decoder.decode(&mut buf).unwrap().unwrap();
        assert_eq!(next.correlation_id, 12);
        assert!(buf.is_empty());
    }

    #[test]
    fn garbage_body_is_bad_body_and_not_fatal() {
        // Field 2 (records), length-delimited, claims 5 bytes but the body ends.
        let mut buf = BytesMut::new();
        buf.put_u32(FRAME_LENGTH_MIN + 2);
        buf.put_u8(FrameKind::Produce as u8);
        buf.put_u32(8);
        buf.put_slice(&[0x12, 0x05]);
        let frame = FrameDecoder::default().decode(&mut buf).unwrap().unwrap();
        let err = decode_request(&frame).unwrap_err();
        assert!(
            matches!(
                err,
                FrameError::BadBody {
                    kind: FrameKind::Produce,
                    correlation_id: 8,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(!err.is_fatal());
        assert_eq!(err.correlation_id(), 8);
    }

    #[test]
    fn responses_sent_to_the_server_are_unexpected() {
        let mut buf = BytesMut::new();
        encode_frame(
            FrameKind::ProduceResponse,
            4,
            &ProduceResponse::default(),
            &mut buf,
        );
        let frame = FrameDecoder::default().decode(&mut buf).unwrap().unwrap();
        let err = decode_request(&frame).unwrap_err();
        assert_eq!(
            err,
            FrameError::UnexpectedKind {
                kind: FrameKind::ProduceResponse,
                correlation_id: 4
            }
        );
        assert!(!err.is_fatal());
    }

    #[test]
    fn requests_sent_to_the_client_are_unexpected() {
        let mut buf = BytesMut::new();
        produce(1, &[b"x"]).encode(4, &mut buf);
        let frame = FrameDecoder::default().decode(&mut buf).unwrap().unwrap();
        assert!(matches!(
            decode_response(&frame),
            Err(FrameError::UnexpectedKind {
                kind: FrameKind::Produce,
                ..
            })
        ));
    }

    #[test]
    fn request_with_correlation_id_zero_is_fatal() {
        let mut buf = BytesMut::new();
        encode_frame(FrameKind::Consume, 0, &ConsumeRequest::default(), &mut buf);
        let frame = FrameDecoder::default().decode(&mut buf).unwrap().unwrap();
        let err = decode_request(&frame).unwrap_err();
        assert_eq!(
            err,
            FrameError::ReservedCorrelationId {
                kind: FrameKind::Consume
            }
        );
        assert!(err.is_fatal());
    }

    #[test]
    fn error_frames_on_correlation_id_zero_decode_on_the_client() {
        let mut buf = BytesMut::new();
        Response::Error(crate::net::errors::overloaded("too many connections")).encode(0, &mut buf);
        let frame = FrameDecoder::default().decode(&mut buf).unwrap().unwrap();
        assert_eq!(frame.correlation_id, CORRELATION_ID_CONNECTION);
        assert!(matches!(decode_response(&frame), Ok(Response::Error(_))));
    }

    #[test]
    #[should_panic(expected = "frame_bytes_max")]
    fn decoder_refuses_a_limit_below_the_minimum() {
        let _ = FrameDecoder::new(FRAME_HEADER_BYTES);
    }

    /// Fault model: a peer sends arbitrary bytes in arbitrary chunks. The decoder and body
    /// decoders must never panic, never take more than what they return, and give the same
    /// frames however the bytes are split.
    #[test]
    fn random_bytes_never_panic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0xC0DE_F4A3);
        for round in 0..2_000 {
            let mut wire = BytesMut::new();
            // Half the rounds start from valid frames and flip some bytes; the rest are noise.
            if round % 2 == 0 {
                let requests = every_request();
                wire = encoded_requests(&requests);
                for _ in 0..rng.random_range(0..4) {
                    let i = rng.random_range(0..wire.len());
                    wire[i] = rng.random();
                }
            } else {
                let len = rng.random_range(0..64);
                for _ in 0..len {
                    wire.put_u8(rng.random());
                }
                // Make small lengths likely, so kinds and bodies get exercised too.
                if wire.len() >= 4 && rng.random_bool(0.7) {
                    let length = rng.random_range(0..=wire.len() as u32);
                    wire[..4].copy_from_slice(&length.to_be_bytes());
                }
            }
            let whole = decode_lossy(&mut wire.clone(), usize::MAX);
            let chunked = decode_lossy(&mut wire, rng.random_range(1..8));
            assert_eq!(whole, chunked, "round {round}");
        }
    }

    /// Decodes `wire`, fed `chunk` bytes at a time, until a fatal error or the end; returns
    /// what came out, as debug strings.
    fn decode_lossy(wire: &mut BytesMut, chunk: usize) -> Vec<String> {
        let mut decoder = FrameDecoder::new(FRAME_BYTES_MAX_MIN);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        while !wire.is_empty() || !buf.is_empty() {
            let take = chunk.min(wire.len());
            if take == 0 && out.last().is_some_and(|s: &String| s == "need more") {
                break;
            }
            buf.put(wire.split_to(take));
            loop {
                let before = buf.len();
                match decoder.decode(&mut buf) {
                    Ok(Some(frame)) => {
                        assert!(buf.len() < before);
                        out.push(format!("{:?}", decode_request(&frame)));
                        out.push(format!("{:?}", decode_response(&frame)));
                    }
                    Ok(None) => {
                        assert_eq!(buf.len(), before);
                        if wire.is_empty() {
                            out.push("need more".into());
                        }
                        break;
                    }
                    Err(err) if err.is_fatal() => {
                        assert_eq!(buf.len(), before);
                        out.push(format!("fatal {err:?}"));
                        return out;
                    }
                    Err(err) => {
                        assert!(buf.len() < before);
                        out.push(format!("{err:?}"));
                    }
                }
            }
        }
        out
    }
}

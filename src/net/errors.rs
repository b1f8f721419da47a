//! Error responses, both ways: the server turns engine and network failures into
//! [`ErrorResponse`] bodies (frame kind 0xFF), and a client turns a received `ErrorResponse` back
//! into a typed [`ServerError`] it can act on.
//!
//! Contract (docs/PROTOCOL.md, "Errors"): the `code` and its typed fields are the interface;
//! `message` is one line for humans. For codes with typed fields the server puts the whole
//! human sentence in `message` (so a client in another language can print it as is); for the
//! others `message` is the detail that follows the code's name. Server file paths never go on
//! the wire: the node logs the full engine error itself.
//!
//! [`ServerError::to_response`] and [`ServerError::from_response`] are inverse: every
//! constructor below is `ServerError::… .to_response()`.

use crate::error::Error;
use crate::net::frame::FrameError;
use crate::proto::{ErrorCode, ErrorResponse};
use crate::types::{Offset, Partition};

/// A `message` from the wire is cut to this many characters before it is shown.
pub const ERROR_MESSAGE_CHARS_MAX: usize = 1024;

/// An error the server answered with, decoded into what a client acts on. `Display` is one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerError {
    #[error("offset {offset} is out of range (lowest {lowest}, highest {})", fmt_highest(*.highest))]
    OffsetOutOfRange {
        offset: Offset,
        lowest: Offset,
        /// The last readable offset, `None` when the partition holds no records.
        highest: Option<Offset>,
    },

    #[error("this node is not the leader{}", fmt_leader(.leader_hint, .leader_addr))]
    NotLeader {
        leader_hint: Option<String>,
        leader_addr: Option<String>,
    },

    #[error("partition {partition} is owned by core {core}: connect to core {core}")]
    WrongCore { partition: Partition, core: u32 },

    #[error("not authorized: {action} on {object}")]
    Unauthorized { action: String, object: String },

    #[error("frame of {frame_bytes} bytes exceeds the server's limit of {frame_bytes_max} bytes")]
    FrameTooLarge {
        frame_bytes: u64,
        frame_bytes_max: u64,
    },

    #[error("bad request: {message}")]
    BadRequest { message: String },

    #[error("server overloaded: {message}")]
    Overloaded { message: String },

    #[error("server disk full: {message}")]
    DiskFull { message: String },

    #[error("unavailable: {message}")]
    Unavailable { message: String },

    #[error("partition {partition} does not exist on this node")]
    UnknownPartition { partition: Partition },

    #[error("corrupt data on the server: {message}")]
    Corrupt { message: String },

    #[error("internal server error: {message}")]
    Internal { message: String },

    /// A code this build does not know (a newer server), or ERROR_CODE_UNSPECIFIED.
    #[error("server error (code {code}): {message}")]
    Unknown { code: i32, message: String },
}

/// What a client should do about a [`ServerError`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Advice {
    /// Retrying the same request will fail the same way: fix it, or report the error.
    Fail,
    /// Retry later, with backoff.
    RetryAfterBackoff,
    /// Send the partition's requests on a connection to this core of the same node.
    ReconnectToCore(u32),
    /// Send the request to the leader, if known; otherwise refresh metadata and retry later.
    FollowLeader { leader_addr: Option<String> },
}

impl ServerError {
    /// Decodes an error response. Never fails: an unknown code becomes [`ServerError::Unknown`].
    /// Text from the wire is made one short printable line.
    pub fn from_response(response: &ErrorResponse) -> ServerError {
        let message = || one_line(&response.message);
        let non_empty = |s: &str| (!s.is_empty()).then(|| one_line(s));
        let Ok(code) = ErrorCode::try_from(response.code) else {
            return ServerError::Unknown {
                code: response.code,
                message: message(),
            };
        };
        match code {
            ErrorCode::OffsetOutOfRange => ServerError::OffsetOutOfRange {
                offset: Offset(response.offset),
                lowest: Offset(response.lowest),
                highest: response.has_highest.then_some(Offset(response.highest)),
            },
            ErrorCode::NotLeader => ServerError::NotLeader {
                leader_hint: non_empty(&response.leader_hint),
                leader_addr: non_empty(&response.leader_addr),
            },
            ErrorCode::WrongCore => ServerError::WrongCore {
                partition: Partition(response.partition),
                core: response.core,
            },
            ErrorCode::Unauthorized => ServerError::Unauthorized {
                action: one_line(&response.action),
                object: one_line(&response.object),
            },
            ErrorCode::FrameTooLarge => ServerError::FrameTooLarge {
                frame_bytes: response.frame_bytes,
                frame_bytes_max: response.frame_bytes_max,
            },
            ErrorCode::BadRequest => ServerError::BadRequest { message: message() },
            ErrorCode::Overloaded => ServerError::Overloaded { message: message() },
            ErrorCode::DiskFull => ServerError::DiskFull { message: message() },
            ErrorCode::Unavailable => ServerError::Unavailable { message: message() },
            ErrorCode::UnknownPartition => ServerError::UnknownPartition {
                partition: Partition(response.partition),
            },
            ErrorCode::Corrupt => ServerError::Corrupt { message: message() },
            ErrorCode::Internal => ServerError::Internal { message: message() },
            ErrorCode::Unspecified => ServerError::Unknown {
                code: response.code,
                message: message(),
            },
        }
    }

    /// The response body that carries this error.
    pub fn to_response(&self) -> ErrorResponse {
        let mut response = ErrorResponse {
            code: self.code() as i32,
            message: self.to_string(),
            ..ErrorResponse::default()
        };
        match self {
            ServerError::OffsetOutOfRange {
                offset,
                lowest,
                highest,
            } => {
                response.offset = offset.get();
                response.lowest = lowest.get();
                response.highest = highest.map_or(0, Offset::get);
                response.has_highest = highest.is_some();
            }
            ServerError::NotLeader {
                leader_hint,
                leader_addr,
            } => {
                response.leader_hint = leader_hint.clone().unwrap_or_default();
                response.leader_addr = leader_addr.clone().unwrap_or_default();
            }
            ServerError::WrongCore { partition, core } => {
                response.partition = partition.0;
                response.core = *core;
            }
            ServerError::Unauthorized { action, object } => {
                response.action = action.clone();
                response.object = object.clone();
            }
            ServerError::FrameTooLarge {
                frame_bytes,
                frame_bytes_max,
            } => {
                response.frame_bytes = *frame_bytes;
                response.frame_bytes_max = *frame_bytes_max;
            }
            ServerError::UnknownPartition { partition } => response.partition = partition.0,
            ServerError::Unknown { code, message } => {
                response.code = *code;
                response.message = message.clone();
            }
            ServerError::BadRequest { message }
            | ServerError::Overloaded { message }
            | ServerError::DiskFull { message }
            | ServerError::Unavailable { message }
            | ServerError::Corrupt { message }
            | ServerError::Internal { message } => response.message = message.clone(),
        }
        response
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            ServerError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
            ServerError::NotLeader { .. } => ErrorCode::NotLeader,
            ServerError::WrongCore { .. } => ErrorCode::WrongCore,
            ServerError::Unauthorized { .. } => ErrorCode::Unauthorized,
            ServerError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            ServerError::BadRequest { .. } => ErrorCode::BadRequest,
            ServerError::Overloaded { .. } => ErrorCode::Overloaded,
            ServerError::DiskFull { .. } => ErrorCode::DiskFull,
            ServerError::Unavailable { .. } => ErrorCode::Unavailable,
            ServerError::UnknownPartition { .. } => ErrorCode::UnknownPartition,
            ServerError::Corrupt { .. } => ErrorCode::Corrupt,
            ServerError::Internal { .. } => ErrorCode::Internal,
            ServerError::Unknown { .. } => ErrorCode::Unspecified,
        }
    }

    /// What to do next (docs/PROTOCOL.md, "Errors").
    pub fn advice(&self) -> Advice {
        match self {
            ServerError::WrongCore { core, .. } => Advice::ReconnectToCore(*core),
            ServerError::NotLeader { leader_addr, .. } => Advice::FollowLeader {
                leader_addr: leader_addr.clone(),
            },
            ServerError::Overloaded { .. }
            | ServerError::DiskFull { .. }
            | ServerError::Unavailable { .. } => Advice::RetryAfterBackoff,
            ServerError::OffsetOutOfRange { .. }
            | ServerError::Unauthorized { .. }
            | ServerError::FrameTooLarge { .. }
            | ServerError::BadRequest { .. }
            | ServerError::UnknownPartition { .. }
            | ServerError::Corrupt { .. }
            | ServerError::Internal { .. }
            | ServerError::Unknown { .. } => Advice::Fail,
        }
    }

    /// Whether the request certainly had no effect, so resending it (elsewhere, later, or
    /// fixed) cannot duplicate records. False means a Produce may or may not have been
    /// appended; reads are always safe to resend.
    pub fn certainly_not_applied(&self) -> bool {
        match self {
            ServerError::OffsetOutOfRange { .. }
            | ServerError::NotLeader { .. }
            | ServerError::WrongCore { .. }
            | ServerError::Unauthorized { .. }
            | ServerError::FrameTooLarge { .. }
            | ServerError::BadRequest { .. }
            | ServerError::Overloaded { .. }
            | ServerError::UnknownPartition { .. } => true,
            ServerError::DiskFull { .. }
            | ServerError::Unavailable { .. }
            | ServerError::Corrupt { .. }
            | ServerError::Internal { .. }
            | ServerError::Unknown { .. } => false,
        }
    }
}

impl From<&ErrorResponse> for ServerError {
    fn from(response: &ErrorResponse) -> ServerError {
        ServerError::from_response(response)
    }
}

impl From<ErrorResponse> for ServerError {
    fn from(response: ErrorResponse) -> ServerError {
        ServerError::from_response(&response)
    }
}

/// The response for a storage engine error. The node logs `err` in full; the wire gets no
/// file paths.
pub fn from_engine(err: &Error) -> ErrorResponse {
    let error = match err {
        Error::OffsetOutOfRange {
            offset,
            lowest,
            highest,
        } => ServerError::OffsetOutOfRange {
            offset: *offset,
            lowest: *lowest,
            highest: *highest,
        },
        Error::DiskFull { op, .. } => ServerError::DiskFull {
            message: format!("no space left while {op}"),
        },
        Error::Corrupt {
            segment,
            position,
            detail,
        } => ServerError::Corrupt {
            message: format!(
                "{detail} at byte {position} of segment {}",
                segment
                    .file_name()
                    .map_or_else(|| "?".into(), |name| name.to_string_lossy())
            ),
        },
        Error::Io { op, message, .. } => ServerError::Unavailable {
            message: format!("I/O error while {op}: {message}"),
        },
        Error::Stopped { reason } => ServerError::Unavailable {
            message: format!("partition stopped after a fatal error: {reason}"),
        },
        Error::BatchTooLarge { bytes, max } => ServerError::BadRequest {
            message: format!("batch of {bytes} bytes exceeds the limit of {max} bytes"),
        },
        Error::InvalidArgument(detail) => ServerError::BadRequest {
            message: detail.clone(),
        },
        Error::Closed => ServerError::Unavailable {
            message: "partition is closed (node shutting down)".into(),
        },
    };
    error.to_response()
}

/// The response for a frame the decoder refused: FRAME_TOO_LARGE or BAD_REQUEST. Answer it
/// on [`FrameError::correlation_id`]; close afterwards if [`FrameError::is_fatal`].
pub fn from_frame_error(err: &FrameError) -> ErrorResponse {
    match err {
        FrameError::TooLarge {
            frame_bytes,
            frame_bytes_max,
            ..
        } => frame_too_large(*frame_bytes, *frame_bytes_max),
        FrameError::Malformed { .. }
        | FrameError::UnknownKind { .. }
        | FrameError::UnexpectedKind { .. }
        | FrameError::BadBody { .. }
        | FrameError::ReservedCorrelationId { .. } => bad_request(err.to_string()),
    }
}

pub fn offset_out_of_range(
    offset: Offset,
    lowest: Offset,
    highest: Option<Offset>,
) -> ErrorResponse {
    ServerError::OffsetOutOfRange {
        offset,
        lowest,
        highest,
    }
    .to_response()
}

/// `partition` is owned by `core` of this node.
pub fn wrong_core(partition: Partition, core: u32) -> ErrorResponse {
    ServerError::WrongCore { partition, core }.to_response()
}

/// `leader_hint` is the leader's node id, `leader_addr` its host:port; `None` when unknown.
pub fn not_leader(leader_hint: Option<&str>, leader_addr: Option<&str>) -> ErrorResponse {
    ServerError::NotLeader {
        leader_hint: leader_hint.map(str::to_string),
        leader_addr: leader_addr.map(str::to_string),
    }
    .to_response()
}

/// The ACL denied `action` (`produce`, `consume`, `admin`, `replicate`) on `object`
/// (`partition 3`, `cluster`).
pub fn unauthorized(action: &str, object: &str) -> ErrorResponse {
    ServerError::Unauthorized {
        action: action.to_string(),
        object: object.to_string(),
    }
    .to_response()
}

pub fn frame_too_large(frame_bytes: u64, frame_bytes_max: u64) -> ErrorResponse {
    ServerError::FrameTooLarge {
        frame_bytes,
        frame_bytes_max,
    }
    .to_response()
}

pub fn bad_request(message: impl Into<String>) -> ErrorResponse {
    ServerError::BadRequest {
        message: message.into(),
    }
    .to_response()
}

/// A limit was hit (in-flight requests, connections, queued bytes); nothing was done.
pub fn overloaded(message: impl Into<String>) -> ErrorResponse {
    ServerError::Overloaded {
        message: message.into(),
    }
    .to_response()
}

pub fn unknown_partition(partition: Partition) -> ErrorResponse {
    ServerError::UnknownPartition { partition }.to_response()
}

pub fn unavailable(message: impl Into<String>) -> ErrorResponse {
    ServerError::Unavailable {
        message: message.into(),
    }
    .to_response()
}

/// The answer on a peer connection until replication lands.
pub fn replication_not_enabled() -> ErrorResponse {
    unavailable("replication not enabled on this node")
}

pub fn internal(message: impl Into<String>) -> ErrorResponse {
    ServerError::Internal {
        message: message.into(),
    }
    .to_response()
}

fn fmt_highest(highest: Option<Offset>) -> String {
    match highest {
        Some(h) => h.to_string(),
        None => "none: partition is empty".to_string(),
    }
}

fn fmt_leader(leader_hint: &Option<String>, leader_addr: &Option<String>) -> String {
    match (leader_hint, leader_addr) {
        (Some(id), Some(addr)) => format!("; the leader is {id} at {addr}"),
        (Some(id), None) => format!("; the leader is {id}"),
        (None, Some(addr)) => format!("; the leader is at {addr}"),
        (None, None) => "; the leader is not known yet".to_string(),
    }
}

/// Untrusted text made safe to print on one line: control characters (newlines, terminal
/// escapes) become spaces, and it is cut at [`ERROR_MESSAGE_CHARS_MAX`].
fn one_line(text: &str) -> String {
    let mut line: String = text
        .chars()
        .take(ERROR_MESSAGE_CHARS_MAX)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().nth(ERROR_MESSAGE_CHARS_MAX).is_some() {
        line.push('…');
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn every_server_error() -> Vec<ServerError> {
        vec![
            ServerError::OffsetOutOfRange {
                offset: Offset(100),
                lowest: Offset(10),
                highest: Some(Offset(99)),
            },
            ServerError::OffsetOutOfRange {
                offset: Offset(5),
                lowest: Offset(0),
                highest: None,
            },
            ServerError::NotLeader {
                leader_hint: Some("node-2".into()),
                leader_addr: Some("10.0.0.2:7400".into()),
            },
            ServerError::NotLeader {
                leader_hint: None,
                leader_addr: None,
            },
            ServerError::WrongCore {
                partition: Partition(7),
                core: 3,
            },
            ServerError::Unauthorized {
                action: "produce".into(),
                object: "partition 7".into(),
            },
            ServerError::FrameTooLarge {
                frame_bytes: 20 << 20,
                frame_bytes_max: 16 << 20,
            },
            ServerError::BadRequest {
                message: "no records".into(),
            },
            ServerError::Overloaded {
                message: "1024 requests in flight".into(),
            },
            ServerError::DiskFull {
                message: "no space left while writing".into(),
            },
            ServerError::Unavailable {
                message: "shutting down".into(),
            },
            ServerError::UnknownPartition {
                partition: Partition(42),
            },
            ServerError::Corrupt {
                message: "bad crc".into(),
            },
            ServerError::Internal {
                message: "bug".into(),
            },
            ServerError::Unknown {
                code: 999,
                message: "from the future".into(),
            },
        ]
    }

    #[test]
    fn every_server_error_round_trips_through_its_response() {
        for error in every_server_error() {
            let response = error.to_response();
            assert_eq!(ServerError::from_response(&response), error, "{response:?}");
        }
    }

    #[test]
    fn every_server_error_displays_as_one_line() {
        for error in every_server_error() {
            let line = error.to_string();
            assert!(!line.is_empty() && !line.contains('\n'), "{line:?}");
        }
    }

    #[test]
    fn offset_out_of_range_carries_its_fields() {
        let response = offset_out_of_range(Offset(100), Offset(10), Some(Offset(99)));
        assert_eq!(response.code(), ErrorCode::OffsetOutOfRange);
        assert_eq!(
            (response.offset, response.lowest, response.highest),
            (100, 10, 99)
        );
        assert!(response.has_highest);
        assert_eq!(
            response.message,
            "offset 100 is out of range (lowest 10, highest 99)"
        );

        let empty = offset_out_of_range(Offset(5), Offset(0), None);
        assert!(!empty.has_highest);
        assert_eq!(empty.highest, 0);
    }

    #[test]
    fn engine_errors_map_to_their_codes() {
        let io = Error::Io {
            op: "reading",
            path: PathBuf::from("/data/partitions/0/00000000000000000000.log"),
            kind: std::io::ErrorKind::Other,
            errno: Some(libc::EIO),
            message: "Input/output error (os error 5)".into(),
        };
        let cases = [
            (
                Error::OffsetOutOfRange {
                    offset: Offset(9),
                    lowest: Offset(0),
                    highest: Some(Offset(8)),
                },
                ErrorCode::OffsetOutOfRange,
            ),
            (
                Error::DiskFull {
                    op: "writing",
                    path: PathBuf::from("/data/x"),
                },
                ErrorCode::DiskFull,
            ),
            (
                Error::corrupt(
                    "/data/partitions/0/00000000000000000000.log",
                    4096,
                    "bad crc",
                ),
                ErrorCode::Corrupt,
            ),
            (io, ErrorCode::Unavailable),
            (
                Error::Stopped {
                    reason: "fdatasync failed".into(),
                },
                ErrorCode::Unavailable,
            ),
            (
                Error::BatchTooLarge {
                    bytes: 20 << 20,
                    max: 16 << 20,
                },
                ErrorCode::BadRequest,
            ),
            (
                Error::InvalidArgument("empty batch".into()),
                ErrorCode::BadRequest,
            ),
            (Error::Closed, ErrorCode::Unavailable),
        ];
        for (err, code) in cases {
            let response = from_engine(&err);
            assert_eq!(response.code(), code, "{err}");
            assert!(!response.message.is_empty(), "{err}");
        }
    }

    #[test]
    fn engine_offset_out_of_range_keeps_its_fields() {
        let err = Error::OffsetOutOfRange {
            offset: Offset(3),
            lowest: Offset(0),
            highest: None,
        };
        assert_eq!(
            ServerError::from_response(&from_engine(&err)),
            ServerError::OffsetOutOfRange {
                offset: Offset(3),
                lowest: Offset(0),
                highest: None,
            }
        );
    }

    #[test]
    fn engine_errors_put_no_directories_on_the_wire() {
        let errors = [
            Error::DiskFull {
                op: "writing",
                path: PathBuf::from("/secret/data/x"),
            },
            Error::corrupt("/secret/data/00000000000000000000.log", 1, "bad crc"),
            Error::from_io(
                "syncing",
                "/secret/data/x",
                std::io::Error::from_raw_os_error(libc::EIO),
            ),
        ];
        for err in errors {
            let message = from_engine(&err).message;
            assert!(!message.contains("/secret"), "{message}");
        }
    }

    #[test]
    fn network_constructors_set_code_and_fields() {
        let r = wrong_core(Partition(7), 3);
        assert_eq!(
            (r.code(), r.core, r.partition),
            (ErrorCode::WrongCore, 3, 7)
        );
        assert_eq!(
            r.message,
            "partition 7 is owned by core 3: connect to core 3"
        );

        let r = not_leader(Some("node-2"), Some("10.0.0.2:7400"));
        assert_eq!(r.code(), ErrorCode::NotLeader);
        assert_eq!(
            (r.leader_hint.as_str(), r.leader_addr.as_str()),
            ("node-2", "10.0.0.2:7400")
        );

        let r = unauthorized("produce", "partition 7");
        assert_eq!(r.code(), ErrorCode::Unauthorized);
        assert_eq!(r.message, "not authorized: produce on partition 7");

        let r = frame_too_large(17 << 20, 16 << 20);
        assert_eq!(
            (r.code(), r.frame_bytes, r.frame_bytes_max),
            (ErrorCode::FrameTooLarge, 17 << 20, 16 << 20)
        );

        assert_eq!(bad_request("x").code(), ErrorCode::BadRequest);
        assert_eq!(overloaded("x").code(), ErrorCode::Overloaded);
        assert_eq!(unavailable("x").code(), ErrorCode::Unavailable);
        assert_eq!(internal("x").code(), ErrorCode::Internal);
        assert_eq!(replication_not_enabled().code(), ErrorCode::Unavailable);
        let r = unknown_partition(Partition(42));
        assert_eq!((r.code(), r.partition), (ErrorCode::UnknownPartition, 42));
    }

    #[test]
    fn bad_request_message_is_the_bare_detail() {
        let response = bad_request("no records");
        assert_eq!(response.message, "no records");
        assert_eq!(
            ServerError::from_response(&response).to_string(),
            "bad request: no records"
        );
    }

    #[test]
    fn frame_errors_map_to_frame_too_large_or_bad_request() {
        let too_large = FrameError::TooLarge {
            frame_bytes: 17 << 20,
            frame_bytes_max: 16 << 20,
            correlation_id: 9,
        };
        assert_eq!(
            from_frame_error(&too_large).code(),
            ErrorCode::FrameTooLarge
        );
        let unknown = FrameError::UnknownKind {
            kind: 0x09,
            correlation_id: 9,
        };
        let response = from_frame_error(&unknown);
        assert_eq!(response.code(), ErrorCode::BadRequest);
        assert_eq!(response.message, "unknown frame kind 0x09");
    }

    #[test]
    fn unknown_and_unspecified_codes_decode_as_unknown() {
        for code in [0, 13, -1, i32::MAX] {
            let response = ErrorResponse {
                code,
                message: "m".into(),
                ..ErrorResponse::default()
            };
            assert_eq!(
                ServerError::from_response(&response),
                ServerError::Unknown {
                    code,
                    message: "m".into()
                }
            );
        }
    }

    #[test]
    fn hostile_message_text_is_made_one_short_line() {
        let response = ErrorResponse {
            code: ErrorCode::BadRequest as i32,
            message: format!("a\nb\r\x1b[31mc{}", "x".repeat(5000)),
            ..ErrorResponse::default()
        };
        let line = ServerError::from_response(&response).to_string();
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(line.starts_with("bad request: a b  [31mc"), "{line:?}");
        assert!(line.chars().count() <= ERROR_MESSAGE_CHARS_MAX + 20);
        assert!(line.ends_with('…'));
    }

    #[test]
    fn advice_follows_the_protocol_table() {
        let advice = |e: &ServerError| e.advice();
        for error in every_server_error() {
            let expected = match error.code() {
                ErrorCode::WrongCore => Advice::ReconnectToCore(3),
                ErrorCode::NotLeader => Advice::FollowLeader {
                    leader_addr: match &error {
                        ServerError::NotLeader { leader_addr, .. } => leader_addr.clone(),
                        _ => unreachable!(),
                    },
                },
                ErrorCode::Overloaded | ErrorCode::DiskFull | ErrorCode::Unavailable => {
                    Advice::RetryAfterBackoff
                }
                _ => Advice::Fail,
            };
            assert_eq!(advice(&error), expected, "{error}");
        }
    }

    #[test]
    fn only_errors_raised_before_the_log_are_certainly_not_applied() {
        for error in every_server_error() {
            let before_the_log = !matches!(
                error.code(),
                ErrorCode::DiskFull
                    | ErrorCode::Unavailable
                    | ErrorCode::Corrupt
                    | ErrorCode::Internal
                    | ErrorCode::Unspecified
            );
            assert_eq!(error.certainly_not_applied(), before_the_log, "{error}");
        }
    }
}

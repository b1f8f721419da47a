//! The storage engine's error type: operating errors are values with fields, so callers (the
//! network layer, the CLI) can map each to a typed response or a one-line message.

use std::io;
use std::path::PathBuf;

use crate::types::Offset;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every error the storage engine returns. `Clone`, because one failed group commit fails
/// every append that was waiting on it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The offset is below the oldest retained record or beyond the next offset to be written.
    /// `highest` is the last readable offset, `None` when the log holds no records.
    #[error("offset {offset} is out of range (lowest {lowest}, highest {})", fmt_highest(*.highest))]
    OffsetOutOfRange {
        offset: Offset,
        lowest: Offset,
        highest: Option<Offset>,
    },

    /// Bytes on disk failed validation (checksum, framing or offset sequence).
    #[error("corrupt data in {} at byte {position}: {detail}", segment.display())]
    Corrupt {
        segment: PathBuf,
        position: u64,
        detail: String,
    },

    /// The filesystem has no space left (ENOSPC or EDQUOT). Nothing of the failed append was
    /// acknowledged; appends work again once space returns.
    #[error("disk full while {op} {}", path.display())]
    DiskFull { op: &'static str, path: PathBuf },

    /// Any other I/O failure.
    #[error("I/O error while {op} {}: {message}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        kind: io::ErrorKind,
        errno: Option<i32>,
        message: String,
    },

    /// The partition stopped taking writes after a fatal error (a failed `fdatasync`: the
    /// kernel may have dropped dirty pages, so nothing after it can be trusted to be durable).
    /// Reads of data that was durable before keep working.
    #[error("partition stopped after a fatal error: {reason}")]
    Stopped { reason: String },

    /// A batch larger than the configured limit.
    #[error("batch of {bytes} bytes exceeds the limit of {max} bytes")]
    BatchTooLarge { bytes: usize, max: usize },

    /// The caller asked for something the log cannot do (bad config, a cut inside a batch...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The log was closed.
    #[error("log is closed")]
    Closed,
}

fn fmt_highest(highest: Option<Offset>) -> String {
    match highest {
        Some(h) => h.to_string(),
        None => "none: log is empty".to_string(),
    }
}

impl Error {
    /// Classifies an I/O error: ENOSPC and EDQUOT become `DiskFull`, everything else `Io`.
    pub fn from_io(op: &'static str, path: impl Into<PathBuf>, err: io::Error) -> Error {
        let path = path.into();
        // glommio's errors keep the kind but can lose the errno on the way to io::Error.
        let full = matches!(
            err.kind(),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
        );
        match err.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => Error::DiskFull { op, path },
            _ if full => Error::DiskFull { op, path },
            errno => Error::Io {
                op,
                path,
                kind: err.kind(),
                errno,
                message: err.to_string(),
            },
        }
    }

    pub fn corrupt(segment: impl Into<PathBuf>, position: u64, detail: impl Into<String>) -> Error {
        Error::Corrupt {
            segment: segment.into(),
            position,
            detail: detail.into(),
        }
    }
}

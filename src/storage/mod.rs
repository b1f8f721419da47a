//! The storage engine: a partition's log of segments, written with direct I/O through io_uring
//! and group commit. File access goes only through [`crate::io`].
//!
//! - [`format`]: the batch format (version 1) and its CRC32C checks — pure functions.
//! - [`index`]: the sparse, self-checking segment index.
//! - [`segment`]: one store + index pair; scanning and reading.
//! - [`log`]: the partition log: append with group commit, reads, recovery, truncation,
//!   retention.
//! - [`check`]: the offline verifier behind `corelog check`.

pub mod check;
pub mod config;
pub mod format;
pub mod index;
pub mod log;
pub mod segment;

pub use config::{FsyncPolicy, LogConfig};
pub use format::{Batch, BatchMeta};
pub use log::{AppendTicket, Log, LogObserver, LogReader, Record};

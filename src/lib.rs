//! corelog: an io_uring, thread-per-core commit-log storage node.
//!
//! Modules by subsystem: [`io`] is the only one that touches files and timers; [`storage`] is
//! the segmented log; [`error`] and [`types`] are shared vocabulary.

pub mod certs;
pub mod cli;
pub mod client;
pub mod config;
pub mod error;
pub mod io;
pub mod net;
pub mod node;
pub mod raft;
pub mod shard;
pub mod stats;
pub mod storage;
pub mod sync;
pub mod tuning;
pub mod types;

pub use error::{Error, Result};
pub use types::{Offset, Partition};

/// Messages generated from `proto/corelog.proto`.
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/corelog.v1.rs"));
}

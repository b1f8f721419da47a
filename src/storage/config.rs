//! The log's configuration: validated once, at open, with messages that say what to change.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::io::BLOCK_BYTES;
use crate::storage::format::{BATCH_BYTES_MAX, HEADER_BYTES};
use crate::types::Offset;

/// When an append counts as done.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Every group commit ends with `fdatasync`; an append resolves only once its bytes are
    /// durable. The default.
    Always,
    /// Appends resolve once written (O_DIRECT: in the device, not yet flushed from its cache);
    /// `fdatasync` runs at most this often. **Unsafe**: a power loss can drop acknowledged
    /// records. For benchmarks and for replicas that can refetch.
    Interval(Duration),
}

impl std::str::FromStr for FsyncPolicy {
    type Err = String;

    /// `always` or `interval:MS`.
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        if s == "always" {
            return Ok(FsyncPolicy::Always);
        }
        if let Some(ms) = s.strip_prefix("interval:") {
            let ms: u64 = ms
                .parse()
                .map_err(|_| format!("bad fsync interval {ms:?}: expected milliseconds"))?;
            if ms == 0 {
                return Err("fsync interval must be at least 1 ms (or use `always`)".into());
            }
            return Ok(FsyncPolicy::Interval(Duration::from_millis(ms)));
        }
        Err(format!(
            "bad fsync policy {s:?}: expected `always` or `interval:MS`"
        ))
    }
}

/// Limits and policies of one partition's log. Every field has a documented default.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// A segment rolls when its store would grow past this. Default 1 GiB; 64 KiB to 2 GiB.
    pub segment_bytes_max: u64,
    /// A segment rolls when its index would grow past this. Default 10 MiB.
    pub index_bytes_max: u64,
    /// Store bytes between two index entries (sparse index). Default 4 KiB.
    pub index_interval_bytes: u64,
    /// The offset of the first record of a new log. Default 0.
    pub initial_offset: Offset,
    /// Delete the oldest sealed segments while the log is larger than this. Default: none.
    pub retention_bytes: Option<u64>,
    /// Delete sealed segments whose newest batch is older than this. Default: none.
    pub retention_ms: Option<u64>,
    /// How often to check age retention. Default 30 s.
    pub retention_check_ms: u64,
    pub fsync: FsyncPolicy,
    /// The largest batch `append_batch` takes. Default 16 MiB.
    pub batch_bytes_max: usize,
    /// The most bytes one group commit writes (its writes + one `fdatasync`). Default 1 MiB.
    pub flush_bytes_max: usize,
    /// The largest single write: a group commit larger than this is issued as several writes
    /// of at most this size, all in flight at once (disjoint blocks), before its one
    /// `fdatasync`. `corelog iotune` measures the best size and count for a device
    /// (`--io-properties`). Default: `None` — one write per group commit.
    pub write_bytes_max: Option<usize>,
    /// Appends queued beyond this wait (backpressure). Default 64 MiB.
    pub queue_bytes_max: usize,
    /// Recent batches kept in memory so tail reads do no disk I/O. Default 16 MiB.
    pub tail_cache_bytes_max: usize,
    /// The active segment's store is reserved (`fallocate`) this far ahead of its data, so
    /// appends write into allocated extents (cheaper to sync than extending the file) without
    /// a whole segment's worth of disk held by every partition. Default 64 MiB.
    pub preallocate_bytes: u64,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            segment_bytes_max: 1 << 30,
            index_bytes_max: 10 << 20,
            index_interval_bytes: 4096,
            initial_offset: Offset(0),
            retention_bytes: None,
            retention_ms: None,
            retention_check_ms: 30_000,
            fsync: FsyncPolicy::Always,
            batch_bytes_max: 16 << 20,
            flush_bytes_max: 1 << 20,
            write_bytes_max: None,
            queue_bytes_max: 64 << 20,
            tail_cache_bytes_max: 16 << 20,
            preallocate_bytes: 64 << 20,
        }
    }
}

/// Store positions are kept as u32 in the index.
pub const SEGMENT_BYTES_LIMIT: u64 = 2 << 30;
pub const SEGMENT_BYTES_MIN: u64 = 64 << 10;

impl LogConfig {
    /// How far to reserve a store whose data ends at `end`.
    pub fn reserve_for(&self, end: u64) -> u64 {
        (crate::io::align_up(end) + self.preallocate_bytes).min(self.segment_bytes_max.max(end))
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::InvalidArgument(msg));
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_LIMIT).contains(&self.segment_bytes_max) {
            return bad(format!(
                "segment_bytes_max = {} must be between {SEGMENT_BYTES_MIN} and {SEGMENT_BYTES_LIMIT}",
                self.segment_bytes_max
            ));
        }
        if self.index_bytes_max < BLOCK_BYTES {
            return bad(format!(
                "index_bytes_max = {} must be at least {BLOCK_BYTES}",
                self.index_bytes_max
            ));
        }
        if self.index_interval_bytes == 0 {
            return bad("index_interval_bytes must be at least 1".into());
        }
        if self.batch_bytes_max <= HEADER_BYTES || self.batch_bytes_max > BATCH_BYTES_MAX {
            return bad(format!(
                "batch_bytes_max = {} must be between {} and {BATCH_BYTES_MAX}",
                self.batch_bytes_max,
                HEADER_BYTES + 1
            ));
        }
        if let Some(w) = self.write_bytes_max
            && (w < BLOCK_BYTES as usize || !(w as u64).is_multiple_of(BLOCK_BYTES))
        {
            return bad(format!(
                "write_bytes_max = {w} must be a multiple of {BLOCK_BYTES} (at least one block)"
            ));
        }
        if self.flush_bytes_max < BLOCK_BYTES as usize {
            return bad(format!(
                "flush_bytes_max = {} must be at least {BLOCK_BYTES}",
                self.flush_bytes_max
            ));
        }
        if self.queue_bytes_max < self.batch_bytes_max {
            return bad(format!(
                "queue_bytes_max = {} must be at least batch_bytes_max = {}",
                self.queue_bytes_max, self.batch_bytes_max
            ));
        }
        if self.initial_offset.get() > u64::MAX / 2 {
            return bad(format!(
                "initial_offset = {} is too large",
                self.initial_offset
            ));
        }
        if self.preallocate_bytes < BLOCK_BYTES {
            return bad(format!(
                "preallocate_bytes = {} must be at least {BLOCK_BYTES}",
                self.preallocate_bytes
            ));
        }
        if self.retention_check_ms == 0 {
            return bad("retention_check_ms must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsync_policy_parses_the_documented_forms() {
        assert_eq!("always".parse::<FsyncPolicy>(), Ok(FsyncPolicy::Always));
        assert_eq!(
            "interval:250".parse::<FsyncPolicy>(),
            Ok(FsyncPolicy::Interval(Duration::from_millis(250)))
        );
        assert!("interval:0".parse::<FsyncPolicy>().is_err());
        assert!("sometimes".parse::<FsyncPolicy>().is_err());
    }

    #[test]
    fn invalid_limits_are_rejected_with_the_key_named() {
        let cfg = LogConfig {
            segment_bytes_max: 100,
            ..LogConfig::default()
        };
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("segment_bytes_max"), "{err}");
        assert!(LogConfig::default().validate().is_ok());
    }
}

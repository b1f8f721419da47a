//! Statistics: each core records its own, the stats endpoint merges them on request.
//!
//! - [`CoreStats`] (`core_stats.rs`): one per core, shared on that core through `Rc`. Latency
//!   hdrhistograms per ([`Op`], partition), counters per partition (bytes and records in and
//!   out), errors by kind, connections, bad preambles, reactor stalls, and the [`RaftState`] of
//!   each partition the Raft layer reports. Recording takes no lock and no atomic: cores share
//!   nothing.
//! - [`Op`] (`op.rs`): the recorded operations, one line each.
//! - [`spawn_stall_detector`] (`stall.rs`): a task per core that measures how late a periodic
//!   timer fires — "something held the core", which is what a stall is on a cooperative
//!   executor.
//! - [`CoreStats::snapshot`] gives a [`CoreSnapshot`]: owned and `Send`, so it can cross to the
//!   core serving the endpoint. [`merge`] (`node_stats.rs`) turns every core's snapshot into
//!   [`NodeStats`]: merged, per-partition and per-core views.
//! - [`render_json`] (`json.rs`, `/stats`) and [`render_prometheus`] (`prometheus.rs`,
//!   `/metrics`) write the two formats; their module docs give the shapes.
//! - [`serve_stats`] (`server.rs`): the HTTP endpoint (hyper 1 over glommio), reading through a
//!   [`StatsSource`] that the node implements.
//!
//! Everything is cumulative since start. Latencies are in microseconds everywhere except
//! Prometheus, whose convention is seconds.

mod core_stats;
mod json;
mod node_stats;
mod op;
mod prometheus;
mod server;
mod stall;

pub use core_stats::{
    ConnectionCounters, CoreSnapshot, CoreStats, LATENCY_SIGNIFICANT_DIGITS, LATENCY_US_MAX,
    LATENCY_US_MIN, LatencyKey, LogGauges, PartitionCounters, RaftState, ReactorStats,
    new_latency_histogram, record_latency_us,
};
pub use json::{LatencySummary, render_json};
pub use node_stats::{CoreView, NodeStats, OpLatency, merge};
pub use op::{Op, Scope};
pub use prometheus::{BUCKETS_US, CONTENT_TYPE as PROMETHEUS_CONTENT_TYPE, render_prometheus};
pub use server::{
    Health, HyperStream, STATS_CONNECTION_DEADLINE_MS, STATS_CONNECTIONS_MAX,
    STATS_GATHER_TIMEOUT_MS, STATS_HEADERS_MAX, STATS_REQUEST_BYTES_MAX, STATS_REQUEST_BYTES_MIN,
    StatsServerConfig, StatsSource, serve_stats, serve_stats_with,
};
pub use stall::{
    STALL_THRESHOLD_MS, STALL_TICK_INTERVAL_MS, StallDetectorConfig, run_stall_detector,
    spawn_stall_detector,
};

//! Replication: one openraft group per partition (see DESIGN.md §3).

pub mod balance;
pub mod group;
pub mod liveness;
pub mod network;
pub mod rt;
pub mod store;
pub mod types;
pub mod wire;
